//! Serving threads and tasks watched until shutdown: one that ends before the server is
//! told to stop (a panic: they only return once told to) ends the server with an error
//! instead of leaving the port half served.

use std::future::Future;
use std::panic::AssertUnwindSafe;

use tokio::sync::mpsc;

use crate::error::GatewayError;

/// How one serving thread ended.
#[derive(Debug)]
pub(crate) struct Ended {
    name: String,
    returned: bool,
}

impl Ended {
    /// The error for a thread that ended when it should not have.
    fn error(&self) -> GatewayError {
        let how = if self.returned { "stopped" } else { "panicked" };
        GatewayError::Serving(format!("serving thread {} {how}", self.name))
    }
}

/// Starts `run` on a thread named `name`; how it ends (returned or panicked) is sent on
/// `ended`.
///
/// # Errors
/// When the thread cannot be started.
pub(crate) fn spawn(
    name: String,
    ended: mpsc::UnboundedSender<Ended>,
    run: impl FnOnce() + Send + 'static,
) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name(name.clone())
        .spawn(move || {
            let returned = std::panic::catch_unwind(AssertUnwindSafe(run)).is_ok();
            let _ = ended.send(Ended { name, returned });
        })
        .map(drop)
}

/// Waits for `shutdown`.
///
/// # Errors
/// When a thread reports on `ended` first.
pub(crate) async fn until_shutdown(
    shutdown: impl Future<Output = ()>,
    ended: &mut mpsc::UnboundedReceiver<Ended>,
) -> Result<(), GatewayError> {
    tokio::select! {
        () = shutdown => Ok(()),
        Some(e) = ended.recv() => Err(e.error()),
    }
}

/// Waits for the `running` threads to end after they were told to stop.
///
/// # Errors
/// When one of them panicked.
pub(crate) async fn stopped(
    mut running: usize,
    ended: &mut mpsc::UnboundedReceiver<Ended>,
) -> Result<(), GatewayError> {
    let mut failed = Ok(());
    while running > 0 {
        let Some(e) = ended.recv().await else { break };
        running -= 1;
        if !e.returned && failed.is_ok() {
            failed = Err(e.error());
        }
    }
    failed
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn a_thread_that_panics_before_shutdown_ends_serving() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        spawn("t-0".into(), tx.clone(), || {
            std::thread::sleep(Duration::from_secs(60));
        })
        .unwrap();
        spawn("t-1".into(), tx, || panic!("boom")).unwrap();
        let e = until_shutdown(std::future::pending(), &mut rx)
            .await
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "serving stopped: serving thread t-1 panicked"
        );
    }

    #[tokio::test]
    async fn threads_that_return_after_shutdown_are_fine_and_a_panic_while_stopping_is_not() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let (go, wait) = std::sync::mpsc::channel::<()>();
        spawn("t-0".into(), tx.clone(), move || {
            let _ = wait.recv();
        })
        .unwrap();
        until_shutdown(async {}, &mut rx).await.unwrap();
        drop(go);
        stopped(1, &mut rx).await.unwrap();
        spawn("t-1".into(), tx, || panic!("boom")).unwrap();
        let e = stopped(1, &mut rx).await.unwrap_err();
        assert!(e.to_string().contains("t-1 panicked"), "{e}");
    }
}
