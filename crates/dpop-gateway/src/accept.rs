//! The accept step every listener here shares (the gateway's, the authorizer's HTTP and
//! gRPC ones): a connection slot first, then a connection, until told to stop.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};

/// How long to pause after a failed accept (out of file descriptors, a connection reset
/// before it was taken) before trying again, so a persistent failure does not spin.
const ACCEPT_RETRY: Duration = Duration::from_millis(50);

/// Which listener accepts: where its accept failures are logged.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Accepting {
    /// The gateway's listener.
    Gateway,
    /// The authorizer's HTTP listener.
    AuthzHttp,
    /// The authorizer's gRPC listener.
    AuthzGrpc,
}

impl Accepting {
    fn failed(self, error: &std::io::Error) {
        match self {
            Self::Gateway => {
                tracing::warn!(target: "dpop::gateway", error = %error, "accept failed");
            }
            Self::AuthzHttp => {
                tracing::warn!(target: "dpop::authz", error = %error, "accept failed")
            }
            Self::AuthzGrpc => {
                tracing::warn!(target: "dpop::authz", error = %error, "gRPC accept failed");
            }
        }
    }
}

/// The next connection on `listener` with the slot it holds, `TCP_NODELAY` set; `None`
/// once `stop` resolves or `slots` is closed. The slot is taken first: past the limit,
/// new connections wait in the kernel's backlog instead of being accepted and starved.
/// A failed accept is logged, and retried after a short pause.
pub(crate) async fn next_connection<S: Future<Output = ()>>(
    listener: &TcpListener,
    slots: &Arc<Semaphore>,
    mut stop: Pin<&mut S>,
    accepting: Accepting,
) -> Option<(OwnedSemaphorePermit, TcpStream, SocketAddr)> {
    loop {
        let permit = tokio::select! {
            p = Arc::clone(slots).acquire_owned() => p.ok()?,
            () = stop.as_mut() => return None,
        };
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = stop.as_mut() => return None,
        };
        match accepted {
            Ok((stream, peer)) => {
                let _ = stream.set_nodelay(true);
                return Some((permit, stream, peer));
            }
            Err(e) => {
                accepting.failed(&e);
                // The slot is given back after the pause, then taken again.
                tokio::time::sleep(ACCEPT_RETRY).await;
            }
        }
    }
}

/// As [`next_connection`], until `stop` turns true (or its sender is gone).
pub(crate) async fn next_until(
    listener: &TcpListener,
    slots: &Arc<Semaphore>,
    stop: &mut watch::Receiver<bool>,
    accepting: Accepting,
) -> Option<(OwnedSemaphorePermit, TcpStream, SocketAddr)> {
    next_connection(listener, slots, std::pin::pin!(stopped(stop)), accepting).await
}

/// Resolves when `stop` turns true (the drain starts) or its sender is gone.
pub(crate) async fn stopped(stop: &mut watch::Receiver<bool>) {
    // The guard `wait_for` returns is dropped here, not held across an await.
    let _ = stop.wait_for(|s| *s).await;
}
