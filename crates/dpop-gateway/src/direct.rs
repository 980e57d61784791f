//! A request without a body, sent to an HTTP/1.1 upstream from the request's own task.
//!
//! The pool ([`crate::pool`]) sends most requests this way: no body to stream, no
//! upgrade. The request's future writes the head ([`crate::h1`]), reads the response
//! head, and the response body ([`Body`]) reads the rest from the same connection while
//! the client takes it, then puts the connection back in the pool when the response has
//! ended cleanly (HTTP/1.1, not `Connection: close`, nothing read past its end). There is
//! no task per connection and nothing crosses a channel. Requests with a body and
//! WebSocket handshakes go through hyper's client connection as before.
//!
//! An idle connection has no task of its own watching it: the upstream closing it is seen
//! when the connection is next taken, or by the pool's sweep ([`crate::idle`]) within a
//! second, whichever comes first: the socket is readable then ([`Conn::still_open`]). A
//! request written on a connection the upstream closed meanwhile, and answered with
//! nothing at all, is sent again on a new connection when its method is idempotent
//! (RFC 9110 §9.2.2), as nginx's `proxy_next_upstream error` does; otherwise it fails
//! (502), because the upstream may have acted on it.

use std::future::Future as _;
use std::io;
use std::pin::Pin;
use std::sync::Weak;
use std::task::{Context, Poll, Waker, ready};

use bytes::{Bytes, BytesMut};
use dpop_uring::{BatchedStream, Batcher};
use http::uri::Authority;
use http::{HeaderMap, Method};
use hyper::body::{Body as HttpBody, Frame, SizeHint};
use hyper_rustls::MaybeHttpsStream;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWriteExt as _, ReadBuf};
use tokio::time::Instant;
use tokio_util::either::Either;

use crate::deadline::Deadline;
use crate::h1::{self, Chunked, Decoded, FinalHead, Framing, H1Error, Head};
use crate::idle::IdleList;
use crate::upstream::Stream;

/// How much room a read gets in the connection's buffer.
const READ_SIZE: usize = 8192;
/// The most a connection keeps allocated for writing request heads, and for reading,
/// between requests.
const KEPT: usize = 16 * 1024;

/// Why an exchange or a response body failed. The connection is closed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ExchangeError {
    /// Nothing of a response arrived: the request could not be written, or the upstream
    /// closed the connection (or reset it) before answering.
    #[error("the upstream closed the connection without answering{}", cause(.0))]
    NotAnswered(Option<io::Error>),
    /// The upstream closed the connection in the middle of a response.
    #[error("the upstream closed the connection in the middle of a response")]
    Truncated,
    #[error("upstream connection: {0}")]
    Io(io::Error),
    #[error("upstream response: {0}")]
    Response(#[from] H1Error),
    /// No response head before the upstream time limit.
    #[error("the upstream did not answer in time")]
    TimedOut,
}

fn cause(e: &Option<io::Error>) -> String {
    e.as_ref().map(|e| format!(": {e}")).unwrap_or_default()
}

impl ExchangeError {
    /// Whether the request may be sent again on another connection (when its method is
    /// idempotent).
    pub(crate) fn not_answered(&self) -> bool {
        matches!(self, Self::NotAnswered(_))
    }
}

/// Whether a request can take this path: no body (and no framing field that says
/// otherwise), no upgrade, not `CONNECT`.
pub(crate) fn eligible<B: HttpBody>(req: &http::Request<B>) -> bool {
    let headers = req.headers();
    req.body().is_end_stream()
        && req.method() != Method::CONNECT
        && !headers.contains_key(http::header::UPGRADE)
        && !headers.contains_key(http::header::TRANSFER_ENCODING)
        && headers
            .get_all(http::header::CONTENT_LENGTH)
            .iter()
            .all(|v| v.as_bytes() == b"0")
}

/// Whether a request with this method may be sent again when no answer came
/// (RFC 9110 §9.2.2).
pub(crate) fn idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

/// One HTTP/1.1 connection to an upstream, with what has been read from it and not yet
/// used. Boxed: a TLS connection's state is over a kilobyte, and the connection moves
/// from the pool into the exchange, into the response body and back.
pub(crate) struct Conn(Box<ConnState>);

/// The connection as the exchange reads and writes it.
type Io = Either<BatchedStream, TokioIo<Stream>>;

struct ConnState {
    io: Io,
    buf: BytesMut,
    out: Vec<u8>,
    /// The upstream time limit's timer, kept for the connection's next request.
    deadline: Deadline,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn")
            .field("buffered", &self.0.buf.len())
            .finish_non_exhaustive()
    }
}

impl Conn {
    /// A connection for exchanges: a plain-TCP one's request heads go out in the serving
    /// thread's batch of writes (see `dpop_uring`) when the thread has a batcher, which
    /// it has unless `[limits] io_uring` is off or the kernel refused it.
    pub(crate) fn new(stream: Stream) -> Self {
        Self(Box::new(ConnState {
            io: match (stream, Batcher::current()) {
                (MaybeHttpsStream::Http(tcp), Some(batcher)) => {
                    Either::Left(BatchedStream::with_batcher(tcp.into_inner(), batcher))
                }
                (other, _) => Either::Right(TokioIo::new(other)),
            },
            buf: BytesMut::new(),
            out: Vec::new(),
            deadline: Deadline::default(),
        }))
    }

    /// Whether an idle connection may still carry a request: nothing has arrived on it
    /// since its last response (the upstream closing it, or bytes nobody asked for, end
    /// it). One read of a byte, which costs no system call while the socket is not
    /// readable (Tokio tracks its readiness) and which also sees what a TLS layer has
    /// already decrypted but not handed over (records that carry no data, a session
    /// ticket, are consumed). Run outside Tokio's co-operative budget: a task that has
    /// spent it would otherwise be told `Pending` without anything being looked at.
    ///
    /// Bytes or a close that the kernel holds but the runtime has not yet been told of
    /// are seen when the next response is read (it fails, and the request is resent if
    /// nothing of an answer came and its method allows), as with hyper and nginx, whose
    /// idle connections also learn of them through readiness events. Bytes that make a
    /// whole response would be taken as that answer: the one case where an upstream
    /// sends some late, a body to an answer that was to have none, keeps its connection
    /// out of the pool ([`h1::keep_alive`]).
    fn still_open(&mut self) -> bool {
        let state = &mut *self.0;
        let mut byte = [0u8; 1];
        let mut probe = ReadBuf::new(&mut byte);
        let read = std::future::poll_fn(|cx| {
            Poll::Ready(Pin::new(&mut state.io).poll_read(cx, &mut probe))
        });
        let read = std::pin::pin!(tokio::task::coop::unconstrained(read));
        let mut cx = Context::from_waker(Waker::noop());
        matches!(read.poll(&mut cx), Poll::Ready(Poll::Pending))
    }

    /// Writes the request head and reads the final response head, informational (1xx)
    /// responses skipped, unless `at` passes first.
    ///
    /// # Errors
    /// See [`ExchangeError`]; the connection is then dropped.
    pub(crate) async fn exchange(
        &mut self,
        method: &Method,
        target: &str,
        headers: &HeaderMap,
        at: Instant,
    ) -> Result<(Head, Framing), ExchangeError> {
        // Taken out for the exchange: a connection whose exchange is dropped half-way is
        // dropped with it.
        let mut deadline = std::mem::take(&mut self.0.deadline);
        let exchanged = deadline
            .limit(at, self.exchange_untimed(method, target, headers))
            .await;
        self.0.deadline = deadline;
        exchanged.unwrap_or(Err(ExchangeError::TimedOut))
    }

    async fn exchange_untimed(
        &mut self,
        method: &Method,
        target: &str,
        headers: &HeaderMap,
    ) -> Result<(Head, Framing), ExchangeError> {
        let state = &mut *self.0;
        state.out.clear();
        h1::encode_request(method, target, headers, &mut state.out);
        let written = async {
            state.io.write_all(&state.out).await?;
            state.io.flush().await
        };
        written
            .await
            .map_err(|e| ExchangeError::NotAnswered(Some(e)))?;
        if state.out.capacity() > KEPT {
            // An idle connection does not keep the largest head it ever wrote.
            state.out = Vec::new();
        }
        let mut final_head = FinalHead::default();
        loop {
            if let Some(found) = final_head.read(&mut state.buf, method)? {
                return Ok(found);
            }
            let answered = final_head.interim_seen() || !state.buf.is_empty();
            match std::future::poll_fn(|cx| state.poll_fill(cx)).await {
                Ok(0) if answered => return Err(ExchangeError::Truncated),
                Ok(0) => return Err(ExchangeError::NotAnswered(None)),
                Ok(_) => {}
                Err(e) if answered => return Err(ExchangeError::Io(e)),
                Err(e) => return Err(ExchangeError::NotAnswered(Some(e))),
            }
        }
    }
}

impl ConnState {
    /// Reads what the upstream has sent into the buffer: the count, 0 at its end.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.buf.capacity() - self.buf.len() < READ_SIZE / 2 {
            self.buf.reserve(READ_SIZE);
        }
        tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.buf)
    }
}

/// The idle connections of one connection setting.
pub(crate) type Idle = IdleList<Conn>;

/// A connection to `authority` that may carry a request (see [`Conn::still_open`]).
pub(crate) fn checkout(idle: &Idle, authority: &Authority) -> Option<Conn> {
    idle.checkout(authority, Conn::still_open)
}

/// Where a connection goes back to once its response has ended cleanly.
pub(crate) struct Home {
    /// Weak: a response still streaming after its configuration was reloaded away does
    /// not keep that configuration's pool alive.
    pub(crate) idle: Weak<Idle>,
    pub(crate) authority: Authority,
}

/// A response body read from the connection it arrived on.
pub(crate) struct Body {
    conn: Option<Conn>,
    state: State,
    keep_alive: bool,
    home: Option<Home>,
}

enum State {
    Length(u64),
    Chunked(Chunked),
    Close,
    /// Ended (or failed): the connection is back in the pool or closed.
    Done,
}

impl Body {
    /// The body of `head`, framed as `framing`, on `conn`; the connection goes back to
    /// `home` when the body ends cleanly (at once when there is none).
    pub(crate) fn new(conn: Conn, head: &Head, framing: Framing, home: Home) -> Self {
        let state = match framing {
            Framing::Empty => State::Length(0),
            Framing::Length(n) => State::Length(n),
            Framing::Chunked => State::Chunked(Chunked::default()),
            Framing::Close => State::Close,
        };
        let mut body = Self {
            conn: Some(conn),
            state,
            keep_alive: h1::keep_alive(head, framing),
            home: Some(home),
        };
        if matches!(body.state, State::Length(0)) {
            body.ended();
        }
        body
    }

    /// The body has been read to its end: the connection goes back to the pool if it
    /// may carry another request and nothing was read past the response.
    fn ended(&mut self) {
        self.state = State::Done;
        let (Some(mut conn), Some(home)) = (self.conn.take(), self.home.take()) else {
            return;
        };
        if !self.keep_alive || !conn.0.buf.is_empty() {
            return;
        }
        if conn.0.buf.capacity() > KEPT {
            // The frames handed out share the buffer's allocation: an idle connection
            // does not keep a large one alive.
            conn.0.buf = BytesMut::new();
        }
        if let Some(idle) = home.idle.upgrade() {
            idle.checkin(home.authority, conn, Conn::still_open);
        }
    }

    fn failed(&mut self, e: ExchangeError) -> Poll<Option<Result<Frame<Bytes>, ExchangeError>>> {
        self.state = State::Done;
        self.conn = None;
        Poll::Ready(Some(Err(e)))
    }
}

impl HttpBody for Body {
    type Data = Bytes;
    type Error = ExchangeError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ExchangeError>>> {
        let this = &mut *self;
        loop {
            let Some(Conn(conn)) = this.conn.as_mut() else {
                return Poll::Ready(None);
            };
            match &mut this.state {
                State::Done => return Poll::Ready(None),
                State::Length(left) => {
                    if !conn.buf.is_empty() {
                        let take = usize::try_from(*left)
                            .map_or(conn.buf.len(), |l| l.min(conn.buf.len()));
                        let data = conn.buf.split_to(take).freeze();
                        *left -= take as u64;
                        if *left == 0 {
                            this.ended();
                        }
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                }
                State::Chunked(chunked) => match chunked.decode(&mut conn.buf) {
                    Ok(Decoded::Data(data)) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                    Ok(Decoded::Trailers(trailers)) => {
                        this.ended();
                        return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
                    }
                    Ok(Decoded::End) => {
                        this.ended();
                        return Poll::Ready(None);
                    }
                    Ok(Decoded::NeedMore) => {}
                    Err(e) => return this.failed(e.into()),
                },
                State::Close => {
                    if !conn.buf.is_empty() {
                        let data = conn.buf.split().freeze();
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                }
            }
            match ready!(conn.poll_fill(cx)) {
                Ok(0) if matches!(this.state, State::Close) => {
                    this.state = State::Done;
                    this.conn = None;
                    return Poll::Ready(None);
                }
                Ok(0) => return this.failed(ExchangeError::Truncated),
                Ok(_) => {}
                Err(e) => return this.failed(ExchangeError::Io(e)),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.state, State::Done | State::Length(0))
    }

    fn size_hint(&self) -> SizeHint {
        match self.state {
            State::Length(n) => SizeHint::with_exact(n),
            State::Done => SizeHint::with_exact(0),
            State::Chunked(_) | State::Close => SizeHint::default(),
        }
    }
}

impl std::fmt::Debug for Body {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Body")
            .field("ended", &matches!(self.state, State::Done))
            .finish_non_exhaustive()
    }
}
