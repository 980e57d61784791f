//! The one accept loop every in-process server here uses: HTTP/1.1 with keep-alive on
//! a loopback listener, each connection in a task owned by the loop, so that dropping
//! the handle closes the listener and every open connection at once.

use std::error::Error as StdError;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::{Body, Incoming};
use hyper::rt::{Read, Write};
use hyper::server::conn::{http1, http2};
use hyper::service::Service;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};

/// A running server. Dropping it stops the server: the listener closes and every
/// connection, idle or in the middle of a request, is cut. A peer holding a keep-alive
/// connection sees it closed, as it would if the server process died.
#[derive(Debug)]
pub struct ServerHandle {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl ServerHandle {
    /// The address the server listens on.
    #[must_use]
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ADDR` (no trailing slash).
    #[must_use]
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Waits until the server stops (it only stops when aborted, so in practice this
    /// serves forever: the load generator's `upstream` and `issuer` commands use it).
    pub async fn serve_forever(mut self) {
        let _ = (&mut self.task).await;
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Serves `service` over HTTP/1.1 on `addr` (use port 0 for a free port). The listener
/// is bound before this returns, so the server accepts connections as soon as it does.
///
/// Must be called within a Tokio runtime; the server runs on that runtime.
///
/// # Errors
/// When the address cannot be bound.
pub async fn serve<S, B>(addr: SocketAddr, service: S) -> io::Result<ServerHandle>
where
    S: Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn StdError + Send + Sync>>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    serve_on(TcpListener::bind(addr).await?, service)
}

/// Serves `service` on an already bound listener (for servers that must know their own
/// address before they serve, like the issuer whose URL goes into its documents).
pub(crate) fn serve_on<S, B>(listener: TcpListener, service: S) -> io::Result<ServerHandle>
where
    S: Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn StdError + Send + Sync>>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    let plain = ConnectionOptions {
        tls: None,
        http2_only: false,
    };
    serve_connections(listener, plain, move |_| service.clone())
}

/// How [`serve_connections`] speaks on each connection.
pub(crate) struct ConnectionOptions {
    /// TLS on every connection (with or without client certificates, as configured).
    pub(crate) tls: Option<Arc<rustls::ServerConfig>>,
    /// HTTP/2 only (h2c prior knowledge without TLS); otherwise HTTP/1.1 only.
    pub(crate) http2_only: bool,
}

/// As [`serve_on`], with TLS and HTTP/2 as `options` say and a service made per
/// connection by `make`, given the DER of the client certificate the peer presented.
/// A failed TLS handshake closes the connection and nothing else.
pub(crate) fn serve_connections<F, S, B>(
    listener: TcpListener,
    options: ConnectionOptions,
    make: F,
) -> io::Result<ServerHandle>
where
    F: Fn(Option<Vec<u8>>) -> S + Clone + Send + 'static,
    S: Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn StdError + Send + Sync>>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    let addr = listener.local_addr()?;
    let acceptor = options.tls.map(tokio_rustls::TlsAcceptor::from);
    let http2_only = options.http2_only;
    let task = tokio::spawn(async move {
        // Owned by this task: when the task is aborted, dropping the set aborts every
        // connection task too.
        let mut connections = JoinSet::new();
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                // Out of file descriptors or a connection reset before accept: back off
                // briefly rather than spin.
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            };
            // Small request/response exchanges: do not let Nagle delay them.
            let _ = stream.set_nodelay(true);
            let acceptor = acceptor.clone();
            let make = make.clone();
            connections.spawn(async move {
                match acceptor {
                    None => serve_io(TokioIo::new(stream), http2_only, make(None)).await,
                    Some(acceptor) => {
                        let Ok(tls) = acceptor.accept(stream).await else {
                            return;
                        };
                        let cert = tls
                            .get_ref()
                            .1
                            .peer_certificates()
                            .and_then(|c| c.first())
                            .map(|c| c.as_ref().to_vec());
                        serve_io(TokioIo::new(tls), http2_only, make(cert)).await;
                    }
                }
            });
            while connections.try_join_next().is_some() {}
        }
    });
    Ok(ServerHandle { addr, task })
}

async fn serve_io<I, S, B>(io: I, http2_only: bool, service: S)
where
    I: Read + Write + Unpin + Send + 'static,
    S: Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn StdError + Send + Sync>>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    if http2_only {
        let _ = http2::Builder::new(TokioExecutor::new())
            .serve_connection(io, service)
            .await;
    } else {
        let _ = http1::Builder::new().serve_connection(io, service).await;
    }
}
