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
