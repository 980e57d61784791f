//! The shutdown signal, and SIGHUP kept from ending a server.

/// Resolves on SIGTERM (what orchestrators send) or Ctrl-C, whichever comes first. If
/// SIGTERM cannot be watched, only Ctrl-C ends the wait.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}

/// From now on SIGHUP no longer ends the process (its default action): call it first
/// thing on the runtime, so that a `systemctl reload` during start-up cannot stop a
/// server. A process that reloads on SIGHUP (`reloads`) listens for it later on its own;
/// one that does not logs each SIGHUP as ignored, naming `what` it is. Must be called
/// inside a Tokio runtime; where signals cannot be watched it does nothing.
pub fn hold_hangup(what: &'static str, reloads: bool) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        // Once a SIGHUP stream exists, the process's handler stays installed for good.
        let Ok(mut hangup) = signal(SignalKind::hangup()) else {
            return;
        };
        if reloads {
            return;
        }
        tokio::spawn(async move {
            while hangup.recv().await.is_some() {
                tracing::warn!(
                    target: "dpop::server",
                    "SIGHUP ignored: {what} does not reload its configuration; restart it to apply a change"
                );
            }
        });
    }
    #[cfg(not(unix))]
    let _ = (what, reloads);
}

/// A periodic tick that SIGHUP can cut short: what a reload loop waits on (a file poll
/// every `period`, and a reload now on SIGHUP).
#[derive(Debug)]
pub struct TickOrHangup {
    tick: tokio::time::Interval,
    #[cfg(unix)]
    hangup: Option<tokio::signal::unix::Signal>,
}

impl TickOrHangup {
    /// The first tick comes one `period` from now. With `hangup`, SIGHUP is listened for
    /// from this call on (so its default action no longer ends the process); if it cannot
    /// be, `cannot_listen` is told why and only the ticks remain. Must be called inside a
    /// Tokio runtime.
    pub fn new(
        period: core::time::Duration,
        hangup: bool,
        cannot_listen: impl FnOnce(&std::io::Error),
    ) -> Self {
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        #[cfg(unix)]
        let hangup = hangup
            .then(|| {
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
                    .map_err(|e| cannot_listen(&e))
                    .ok()
            })
            .flatten();
        #[cfg(not(unix))]
        let _ = (hangup, cannot_listen);
        Self {
            tick,
            #[cfg(unix)]
            hangup,
        }
    }

    /// Waits for the next tick (`false`) or SIGHUP (`true`).
    pub async fn next(&mut self) -> bool {
        #[cfg(unix)]
        {
            let hangup = async {
                match self.hangup.as_mut() {
                    Some(h) => h.recv().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = self.tick.tick() => false,
                Some(()) = hangup => true,
            }
        }
        #[cfg(not(unix))]
        {
            self.tick.tick().await;
            false
        }
    }
}
