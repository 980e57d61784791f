//! A serving thread's HTTP/1.1 connections to its upstreams.
//!
//! hyper-util's pooled client is made for a process whose runtime moves tasks between
//! threads: its idle connections sit behind a lock in a map keyed by a hash of scheme and
//! authority, and every response spawns a task that waits for its connection to be free
//! again. A serving thread of the gateway only ever uses its own connections (see
//! `server.rs`), so this pool keeps them in a short list per authority, takes its lock
//! uncontended, and puts a connection back when the response body that used it ends.
//! HTTP/2 upstreams keep hyper-util's client: one connection carries many streams there.
//! [`UpstreamClient`] is either, per connection setting; [`client`] makes it.
//!
//! A connection is reused only when hyper says it is ready for the next request (the
//! previous response was read to its end), and never once it has been idle for
//! [`IDLE_TIMEOUT`]. A request that could not be written on a reused connection (the
//! upstream closed it meanwhile) is sent once more on a new one, as hyper-util's client
//! does; a request that was written is never sent twice (one that met a reset there is
//! answered 502, as with hyper-util's client).

use std::error::Error as StdError;
use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::uri::Authority;
use http::{Request, Response, Uri};
use hyper::body::{Body as HttpBody, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::time::Instant;

use crate::direct::{self, ExchangeError};
use crate::idle::{IDLE_TIMEOUT, IdleList, MAX_IDLE};
use crate::upstream::{ConnectError, UpstreamConnector};

/// The pooled client every upstream of one connection setting shares (on one serving
/// thread): the gateway's own HTTP/1.1 pool ([`Http1Pool`]), or hyper-util's client for
/// HTTP/2, whose one connection carries many streams.
pub(crate) enum UpstreamClient<B: Send + 'static> {
    Http1(Http1Pool<B>),
    /// Boxed: hyper-util's client is large, the pool a pointer.
    Http2(Box<Client<UpstreamConnector, B>>),
}

impl<B: Send + 'static> Clone for UpstreamClient<B> {
    fn clone(&self) -> Self {
        match self {
            Self::Http1(pool) => Self::Http1(pool.clone()),
            Self::Http2(client) => Self::Http2(Box::new((**client).clone())),
        }
    }
}

impl<B> UpstreamClient<B>
where
    B: hyper::body::Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    /// Sends `req` (origin-form target, `Host` set for HTTP/1.1) to the upstream at
    /// `upstream` (its scheme and authority) and returns the response head, unless `at`
    /// passes first (connecting included).
    ///
    /// # Errors
    /// When no connection could be made, the exchange failed before a response head, or
    /// the time ran out ([`PoolError::Timeout`]).
    pub(crate) async fn request(
        &self,
        upstream: &Uri,
        mut req: Request<B>,
        at: Instant,
    ) -> Result<Response<PooledBody<B>>, PoolError> {
        match self {
            Self::Http1(pool) => pool.request(upstream, req, at).await,
            Self::Http2(client) => {
                // hyper-util's client takes the scheme and authority from the URI.
                let mut parts = req.uri().clone().into_parts();
                parts.scheme = upstream.scheme().cloned();
                parts.authority = upstream.authority().cloned();
                *req.uri_mut() = Uri::from_parts(parts).map_err(|_| PoolError::Uri)?;
                match tokio::time::timeout_at(at, client.request(req)).await {
                    Ok(Ok(response)) => Ok(response.map(PooledBody::unpooled)),
                    Ok(Err(e)) => Err(PoolError::Http2(e)),
                    Err(_) => Err(PoolError::Timeout),
                }
            }
        }
    }
}

/// A pooled client over `connector`, sending bodies of type `B`.
pub(crate) fn client<B>(connector: UpstreamConnector) -> UpstreamClient<B>
where
    B: hyper::body::Body + Send + 'static + Unpin,
    B::Data: Send,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    if !connector.http2() {
        return UpstreamClient::Http1(Http1Pool::new(connector));
    }
    UpstreamClient::Http2(Box::new(
        Client::builder(TokioExecutor::new())
            .pool_idle_timeout(IDLE_TIMEOUT)
            .pool_max_idle_per_host(MAX_IDLE)
            .http2_only(true)
            .build(connector),
    ))
}

/// HTTP/1.1 connections to the upstreams of one connection setting (plain or TLS).
pub(crate) struct Http1Pool<B> {
    inner: Arc<Inner<B>>,
}

impl<B> Clone for Http1Pool<B> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

struct Inner<B> {
    connector: UpstreamConnector,
    /// Idle hyper connections (requests with a body, WebSocket handshakes).
    idle: Arc<IdleList<SendRequest<B>>>,
    /// Idle connections of requests without a body ([`crate::direct`]).
    direct: Arc<direct::Idle>,
}

/// Why a request got no response head.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PoolError {
    /// The upstream's URL has no scheme or authority (configuration requires both).
    #[error("the upstream URL has no scheme or authority")]
    Uri,
    /// No connection could be made.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// The HTTP/1.1 handshake or the exchange failed.
    #[error("upstream connection: {0}")]
    Http(#[from] hyper::Error),
    /// The exchange of a request without a body failed.
    #[error(transparent)]
    Direct(ExchangeError),
    /// hyper-util's HTTP/2 client failed.
    #[error(transparent)]
    Http2(hyper_util::client::legacy::Error),
    /// No response head before the upstream time limit.
    #[error("the upstream did not answer in time")]
    Timeout,
}

impl From<ExchangeError> for PoolError {
    fn from(e: ExchangeError) -> Self {
        match e {
            ExchangeError::TimedOut => Self::Timeout,
            e => Self::Direct(e),
        }
    }
}

impl<B> Http1Pool<B>
where
    B: HttpBody + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    pub(crate) fn new(connector: UpstreamConnector) -> Self {
        Self {
            inner: Arc::new(Inner {
                connector,
                idle: Arc::default(),
                direct: Arc::default(),
            }),
        }
    }

    /// Sends `req` (origin-form target, `Host` already set) on an idle connection to
    /// `upstream`'s authority, or on a new one to `upstream`, and returns the response
    /// head unless `at` passes first.
    pub(crate) async fn request(
        &self,
        upstream: &Uri,
        req: Request<B>,
        at: Instant,
    ) -> Result<Response<PooledBody<B>>, PoolError> {
        let authority = upstream.authority().ok_or(PoolError::Uri)?;
        if upstream.scheme().is_none() {
            return Err(PoolError::Uri);
        }
        if direct::eligible(&req) {
            return self.request_direct(upstream, authority, req, at).await;
        }
        tokio::time::timeout_at(at, self.request_hyper(upstream, authority, req))
            .await
            .unwrap_or(Err(PoolError::Timeout))
    }

    /// Sends a request through hyper's client connection.
    async fn request_hyper(
        &self,
        upstream: &Uri,
        authority: &Authority,
        mut req: Request<B>,
    ) -> Result<Response<PooledBody<B>>, PoolError> {
        let mut reused = true;
        loop {
            let mut sender = match self.inner.idle.checkout(authority, usable) {
                Some(sender) => sender,
                None => {
                    reused = false;
                    // Boxed: the connect and handshake futures are over 1.5 KB, which would
                    // otherwise be part of every request's future (and copied each time
                    // it is boxed), though most requests find an idle connection.
                    Box::pin(self.connect(upstream)).await?
                }
            };
            match sender.try_send_request(req).await {
                Ok(response) => {
                    let checkin = Checkin {
                        pool: Arc::downgrade(&self.inner),
                        authority: authority.clone(),
                        sender,
                    };
                    return Ok(response.map(|body| PooledBody::new(body, Some(checkin))));
                }
                Err(mut e) => match e.take_message() {
                    // Never written: the upstream closed the idle connection first.
                    Some(unsent) if reused => req = unsent,
                    _ => return Err(PoolError::Http(e.into_error())),
                },
            }
        }
    }

    /// Sends a request without a body on this thread's own connection ([`crate::direct`]):
    /// once more on a new connection when a reused one closed without answering and the
    /// method is idempotent.
    async fn request_direct(
        &self,
        upstream: &Uri,
        authority: &Authority,
        req: Request<B>,
        at: Instant,
    ) -> Result<Response<PooledBody<B>>, PoolError> {
        let (mut parts, _empty) = req.into_parts();
        if !parts.headers.contains_key(http::header::HOST) {
            // As hyper's client does: HTTP/1.1 requires the field.
            let host =
                http::HeaderValue::from_str(authority.as_str()).map_err(|_| PoolError::Uri)?;
            parts.headers.insert(http::header::HOST, host);
        }
        let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        let mut reuse = true;
        loop {
            let (mut conn, reused) =
                match reuse.then(|| direct::checkout(&self.inner.direct, authority)) {
                    Some(Some(conn)) => (conn, true),
                    _ => {
                        // Boxed, as for hyper's connections: most requests find an idle one.
                        let connect = self.inner.connector.clone().connect(upstream.clone());
                        let stream = tokio::time::timeout_at(at, Box::pin(connect))
                            .await
                            .map_err(|_| PoolError::Timeout)??;
                        (direct::Conn::new(stream), false)
                    }
                };
            match conn
                .exchange(&parts.method, target, &parts.headers, at)
                .await
            {
                Ok((head, framing)) => {
                    let home = direct::Home {
                        idle: Arc::downgrade(&self.inner.direct),
                        authority: authority.clone(),
                    };
                    let body = direct::Body::new(conn, &head, framing, home);
                    let mut response = Response::new(PooledBody {
                        source: Source::Direct(body),
                    });
                    *response.status_mut() = head.status;
                    *response.version_mut() = head.version;
                    *response.headers_mut() = head.headers;
                    if let Some(reason) = head.reason
                        && let Ok(reason) = hyper::ext::ReasonPhrase::try_from(reason)
                    {
                        response.extensions_mut().insert(reason);
                    }
                    return Ok(response);
                }
                Err(e) if reused && e.not_answered() && direct::idempotent(&parts.method) => {
                    tracing::debug!(target: "dpop::proxy", error = %e, "reused upstream connection closed unanswered; sending the request on a new one");
                    reuse = false;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    async fn connect(&self, uri: &Uri) -> Result<SendRequest<B>, PoolError> {
        let stream = self.inner.connector.clone().connect(uri.clone()).await?;
        let (mut sender, conn) = http1::Builder::new().handshake(stream).await?;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(target: "dpop::proxy", error = %e, "upstream connection ended with an error");
            }
        });
        sender.ready().await?;
        Ok(sender)
    }
}

/// Whether a hyper connection may carry the next request: the previous response was
/// read to its end, and the connection's task has not seen it close.
fn usable<B>(sender: &mut SendRequest<B>) -> bool {
    sender.is_ready()
}

/// What goes back to the pool once a response has been read to its end.
struct Checkin<B> {
    /// Weak: a response still streaming after its configuration was reloaded away does
    /// not keep that configuration's pool alive.
    pool: Weak<Inner<B>>,
    authority: Authority,
    sender: SendRequest<B>,
}

impl<B: Send + 'static> Checkin<B> {
    fn put_back(self) {
        let Some(pool) = self.pool.upgrade() else {
            return;
        };
        let Self {
            authority,
            mut sender,
            ..
        } = self;
        if sender.is_ready() {
            pool.idle.checkin(authority, sender, usable);
        } else if !sender.is_closed()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            // The connection has not yet seen the end of the response it read: wait for
            // it off this request's path.
            runtime.spawn(async move {
                if sender.ready().await.is_ok() {
                    pool.idle.checkin(authority, sender, usable);
                }
            });
        }
    }
}

/// An upstream response's body, which returns its connection to the pool when it has
/// been read to its end (and closes it when dropped before).
pub(crate) struct PooledBody<B: Send + 'static> {
    source: Source<B>,
}

enum Source<B: Send + 'static> {
    /// From hyper's client connection.
    Hyper {
        inner: Incoming,
        checkin: Option<Checkin<B>>,
    },
    /// Read by the request's task itself ([`crate::direct`]).
    Direct(direct::Body),
}

/// Why a response body could not be read to its end.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BodyError {
    #[error(transparent)]
    Hyper(#[from] hyper::Error),
    #[error(transparent)]
    Direct(#[from] ExchangeError),
}

impl<B: Send + 'static> PooledBody<B> {
    fn new(inner: Incoming, checkin: Option<Checkin<B>>) -> Self {
        Self {
            source: Source::Hyper { inner, checkin },
        }
    }

    /// A body from a client that pools its connections itself.
    pub(crate) fn unpooled(inner: Incoming) -> Self {
        Self::new(inner, None)
    }
}

impl<B: Send + 'static> Source<B> {
    fn ended(&mut self) {
        if let Self::Hyper { checkin, .. } = self
            && let Some(checkin) = checkin.take()
        {
            checkin.put_back();
        }
    }
}

impl<B: Send + 'static> HttpBody for PooledBody<B> {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match &mut self.source {
            Source::Direct(body) => Pin::new(body).poll_frame(cx).map_err(Into::into),
            Source::Hyper { inner, checkin } => {
                let polled = Pin::new(&mut *inner).poll_frame(cx);
                match &polled {
                    Poll::Ready(None) => self.source.ended(),
                    Poll::Ready(Some(Ok(_))) if inner.is_end_stream() => self.source.ended(),
                    // An error leaves the connection in no state to reuse.
                    Poll::Ready(Some(Err(_))) => *checkin = None,
                    _ => {}
                }
                polled.map_err(Into::into)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.source {
            Source::Hyper { inner, .. } => inner.is_end_stream(),
            Source::Direct(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.source {
            Source::Hyper { inner, .. } => inner.size_hint(),
            Source::Direct(body) => body.size_hint(),
        }
    }
}

impl<B: Send + 'static> Drop for PooledBody<B> {
    fn drop(&mut self) {
        // A body nobody read because it was empty (a 204, a HEAD answer, a
        // `Content-Length: 0`) is at its end too. (A direct body that ended has put its
        // connection back already.)
        if let Source::Hyper { inner, .. } = &self.source
            && inner.is_end_stream()
        {
            self.source.ended();
        }
    }
}

impl<B: Send + 'static> std::fmt::Debug for PooledBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let pooled = match &self.source {
            Source::Hyper { checkin, .. } => checkin.is_some(),
            Source::Direct(_) => true,
        };
        f.debug_struct("PooledBody")
            .field("pooled", &pooled)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod direct_tests;

#[cfg(test)]
impl<B> Http1Pool<B> {
    /// The idle connections of requests without a body.
    pub(crate) fn direct_idle(&self) -> usize {
        self.inner.direct.len()
    }
}

/// A time limit no test request reaches.
#[cfg(test)]
pub(crate) fn later() -> Instant {
    Instant::now() + std::time::Duration::from_secs(30)
}

/// A pool for plain HTTP/1.1 to the upstream at `addr`, and the upstream's URL.
#[cfg(test)]
pub(crate) fn plain_pool<B>(addr: std::net::SocketAddr) -> (Http1Pool<B>, Uri)
where
    B: HttpBody + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    let url: Uri = format!("http://{addr}").parse().unwrap();
    let config = crate::config::UpstreamConfig {
        url: url.clone(),
        tls: None,
        http2: false,
    };
    let roots = &mut crate::upstream::SystemRoots::default();
    let connector = crate::upstream::connector(&config, roots).unwrap();
    (Http1Pool::new(connector), url)
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use http_body_util::{BodyExt as _, Empty, Full};
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;

    const OK: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";

    /// How the test upstream answers each request of a connection.
    #[derive(Clone, Copy)]
    enum Answer {
        /// `200 ok`, and the connection stays open.
        KeepAlive,
        /// `200 ok`, then the connection is closed without saying so in the response.
        ThenClose,
        /// The same, but 20 ms after the response.
        ThenCloseLater,
        /// `Connection: close` in the response.
        SayClose,
        /// The head and one chunk of a chunked body, and then nothing.
        Unfinished,
    }

    /// An upstream on a loopback port; counts the connections it accepted.
    async fn upstream(answer: Answer) -> (SocketAddr, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = Arc::clone(&accepted);
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    // Each request head in turn; what was read past one is where the
                    // next is looked for.
                    let mut left = Vec::new();
                    while let Some(req) = dpop_test::RawRequest::read(socket, left).await {
                        (socket, left) = (req.stream, req.body_start);
                        let response: &[u8] = match answer {
                            Answer::KeepAlive | Answer::ThenClose | Answer::ThenCloseLater => OK,
                            Answer::SayClose => {
                                b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok"
                            }
                            Answer::Unfinished => {
                                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n"
                            }
                        };
                        if socket.write_all(response).await.is_err() {
                            return;
                        }
                        match answer {
                            Answer::KeepAlive => {}
                            Answer::ThenClose | Answer::SayClose => return,
                            Answer::ThenCloseLater => {
                                tokio::time::sleep(Duration::from_millis(20)).await;
                                return;
                            }
                            Answer::Unfinished => std::future::pending::<()>().await,
                        }
                    }
                });
            }
        });
        (addr, accepted)
    }

    /// Accepts one connection, reads one request head from it and answers `200 ok`; the
    /// connection and the head.
    async fn answer_one(listener: &tokio::net::TcpListener) -> (tokio::net::TcpStream, String) {
        let (socket, _) = listener.accept().await.unwrap();
        let mut req = dpop_test::RawRequest::read(socket, Vec::new())
            .await
            .expect("a request head");
        req.stream.write_all(OK).await.unwrap();
        (req.stream, req.head)
    }

    fn pool(addr: SocketAddr) -> (Http1Pool<Empty<Bytes>>, Uri) {
        plain_pool(addr)
    }

    fn get(addr: SocketAddr) -> Request<Empty<Bytes>> {
        Request::get("/x?y=1")
            .header(http::header::HOST, addr.to_string())
            .body(Empty::new())
            .unwrap()
    }

    /// Sends a GET and reads its body to the end.
    async fn fetch(pool: &Http1Pool<Empty<Bytes>>, url: &Uri, addr: SocketAddr) -> Bytes {
        let response = pool.request(url, get(addr), later()).await.unwrap();
        assert_eq!(response.status(), 200);
        response.into_body().collect().await.unwrap().to_bytes()
    }

    /// The connections the upstream accepted for `requests` GETs one after another.
    async fn connections_for(answer: Answer, requests: usize) -> usize {
        let (addr, accepted) = upstream(answer).await;
        let (pool, url) = pool(addr);
        for _ in 0..requests {
            assert_eq!(fetch(&pool, &url, addr).await, "ok");
        }
        accepted.load(Ordering::SeqCst)
    }

    #[tokio::test]
    async fn requests_one_after_another_share_one_connection() {
        assert_eq!(connections_for(Answer::KeepAlive, 5).await, 1);
    }

    #[tokio::test]
    async fn requests_at_the_same_time_each_get_a_connection_and_they_are_kept() {
        let (addr, accepted) = upstream(Answer::KeepAlive).await;
        let (pool, url) = pool(addr);
        for _ in 0..2 {
            let (a, b, c) = tokio::join!(
                fetch(&pool, &url, addr),
                fetch(&pool, &url, addr),
                fetch(&pool, &url, addr)
            );
            assert_eq!((a, b, c), (Bytes::from("ok"), "ok".into(), "ok".into()));
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn a_connection_the_upstream_closed_is_replaced_without_an_error() {
        let (addr, accepted) = upstream(Answer::ThenClose).await;
        let (pool, url) = pool(addr);
        for n in 1..=4 {
            assert_eq!(fetch(&pool, &url, addr).await, "ok");
            // Immediately, before the close may have been seen, and after it.
            if n % 2 == 0 {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 4);
    }

    /// The upstream's close arrives while the connection is idle but before the gateway
    /// has seen it (the serving thread is busy), and every connection closes after its
    /// first answer. A request without a body meets the dead connection and, its method
    /// being idempotent, is sent again on a new one: no request fails, and no dead
    /// connection is used twice.
    #[tokio::test(flavor = "current_thread")]
    async fn a_connection_closed_unseen_costs_a_bodiless_get_nothing() {
        let (addr, accepted) = upstream(Answer::ThenCloseLater).await;
        let (pool, url) = pool(addr);
        assert_eq!(fetch(&pool, &url, addr).await, "ok");
        // Blocks this runtime's only thread: nothing can notice the close.
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(fetch(&pool, &url, addr).await, "ok");
        assert_eq!(fetch(&pool, &url, addr).await, "ok");
        assert_eq!(accepted.load(Ordering::SeqCst), 3);
    }

    /// The same with a body, which goes through hyper's connection: the request written
    /// on the dead connection fails, as with hyper-util's client (a request that may
    /// have reached the upstream is never sent twice), and that connection is not reused.
    #[tokio::test(flavor = "current_thread")]
    async fn a_connection_closed_unseen_fails_at_most_one_request_with_a_body() {
        let (addr, accepted) = upstream(Answer::ThenCloseLater).await;
        let (pool, url) = plain_pool::<Full<Bytes>>(addr);
        let post = || {
            Request::post("/x")
                .header(http::header::HOST, addr.to_string())
                .body(Full::new(Bytes::from_static(b"body")))
                .unwrap()
        };
        let read = |r: Response<PooledBody<Full<Bytes>>>| async move {
            r.into_body().collect().await.unwrap().to_bytes()
        };
        assert_eq!(
            read(pool.request(&url, post(), later()).await.unwrap()).await,
            "ok"
        );
        std::thread::sleep(Duration::from_millis(100));
        match pool.request(&url, post(), later()).await {
            Ok(r) => assert_eq!(read(r).await, "ok"),
            Err(PoolError::Http(_)) => {}
            Err(e) => panic!("{e:?}"),
        }
        assert_eq!(
            read(pool.request(&url, post(), later()).await.unwrap()).await,
            "ok"
        );
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    /// An upstream that closes a connection while it is idle: the pool closes its side
    /// within a sweep, with no request to that upstream to notice (nothing is left in
    /// `CLOSE_WAIT`), and forgets the connection.
    #[tokio::test(flavor = "current_thread")]
    async fn a_connection_the_upstream_closes_while_idle_is_closed_without_a_request() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (closed_tx, closed) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let (mut socket, _) = answer_one(&listener).await;
            // The upstream's close of an idle connection (its FIN), then a wait for the
            // pool's: the read ends (0) only once the pool has closed its side.
            socket.shutdown().await.unwrap();
            let mut buf = [0u8; 64];
            let _ = closed_tx.send(socket.read(&mut buf).await.map_err(|e| e.kind()));
        });
        let (pool, url) = pool(addr);
        assert_eq!(fetch(&pool, &url, addr).await, "ok");
        assert_eq!(pool.direct_idle(), 1);
        // About one sweep; the bound leaves room for a loaded machine.
        let seen = tokio::time::timeout(Duration::from_secs(10), closed).await;
        assert!(matches!(seen, Ok(Ok(Ok(0)))), "{seen:?}");
        assert_eq!(pool.direct_idle(), 0);
    }

    #[tokio::test]
    async fn a_response_that_says_close_is_not_reused() {
        assert_eq!(connections_for(Answer::SayClose, 3).await, 3);
    }

    #[tokio::test]
    async fn a_body_dropped_before_its_end_takes_its_connection_with_it() {
        let (addr, accepted) = upstream(Answer::Unfinished).await;
        let (pool, url) = pool(addr);
        for n in 1..=2 {
            let mut body = pool
                .request(&url, get(addr), later())
                .await
                .unwrap()
                .into_body();
            let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
            assert_eq!(first, "ok");
            drop(body);
            assert_eq!(accepted.load(Ordering::SeqCst), n);
        }
    }

    #[tokio::test]
    async fn the_request_goes_in_origin_form_with_its_query() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = tokio::spawn(async move { answer_one(&listener).await.1 });
        let (pool, url) = pool(addr);
        assert_eq!(fetch(&pool, &url, addr).await, "ok");
        let head = seen.await.unwrap();
        assert!(head.starts_with("GET /x?y=1 HTTP/1.1\r\n"), "{head}");
        assert!(
            head.to_ascii_lowercase()
                .contains(&format!("host: {addr}\r\n")),
            "{head}"
        );
    }

    #[tokio::test]
    async fn an_upstream_nobody_listens_on_is_a_connect_error() {
        let addr = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let (pool, url) = pool(addr);
        match pool.request(&url, get(addr), later()).await {
            Err(PoolError::Connect(ConnectError::Connect(_))) => {}
            other => panic!("{other:?}"),
        }
    }
}
