//! Upstreams for stream tests: a WebSocket echo server, and a raw TCP server whose
//! connections a test scripts byte by byte (server-sent events sent in lock-step, an
//! `HTTP/1.0` status line, a request body read while the client is still sending).

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::{SinkExt as _, StreamExt as _};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::task::{JoinHandle, JoinSet};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};

/// A loopback accept loop owning its connections: dropping the handle stops all.
#[derive(Debug)]
struct Loop {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Drop for Loop {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn accept_loop<F, Fut>(handle: F) -> io::Result<Loop>
where
    F: Fn(TcpStream) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
    let addr = listener.local_addr()?;
    let task = tokio::spawn(async move {
        let mut conns = JoinSet::new();
        while let Ok((stream, _)) = listener.accept().await {
            let _ = stream.set_nodelay(true);
            conns.spawn(handle(stream));
        }
    });
    Ok(Loop { addr, task })
}

#[derive(Debug, Default)]
struct WsCounters {
    handshakes: AtomicU64,
    closed: AtomicU64,
    close_codes: std::sync::Mutex<Vec<u16>>,
    changed: Notify,
}

/// A WebSocket server that echoes every text and binary message. A text message
/// `slow:N:MS` is answered instead with one binary frame of `N` bytes, of which half is
/// sent, then the rest after `MS` milliseconds: a frame in flight for a while. It counts
/// completed handshakes, connections that ended (closed by either side) and the status
/// codes of the Close frames it received.
#[derive(Debug)]
pub struct WsEchoUpstream {
    server: Loop,
    counters: Arc<WsCounters>,
    last_path: Arc<std::sync::Mutex<Option<String>>>,
}

impl WsEchoUpstream {
    /// Starts the server on a free loopback port.
    ///
    /// # Errors
    /// When no port can be bound.
    pub async fn start() -> io::Result<Self> {
        let counters = Arc::new(WsCounters::default());
        let last_path = Arc::new(std::sync::Mutex::new(None));
        let (c, p) = (counters.clone(), last_path.clone());
        let server = accept_loop(move |stream| ws_echo(stream, c.clone(), p.clone())).await?;
        Ok(Self {
            server,
            counters,
            last_path,
        })
    }

    /// `http://ADDR`, the gateway's `upstream`.
    #[must_use]
    pub fn url(&self) -> String {
        format!("http://{}", self.server.addr)
    }

    /// WebSocket handshakes completed.
    #[must_use]
    pub fn handshakes(&self) -> u64 {
        self.counters.handshakes.load(Ordering::SeqCst)
    }

    /// WebSocket connections that have ended.
    #[must_use]
    pub fn closed(&self) -> u64 {
        self.counters.closed.load(Ordering::SeqCst)
    }

    /// The status codes of the Close frames received (1005 for a Close without one).
    #[must_use]
    pub fn close_codes(&self) -> Vec<u16> {
        self.counters
            .close_codes
            .lock()
            .map(|c| c.clone())
            .unwrap_or_default()
    }

    /// The request target of the last handshake.
    #[must_use]
    pub fn last_path(&self) -> Option<String> {
        self.last_path.lock().ok().and_then(|p| p.clone())
    }

    /// Waits until at least `n` connections have ended, or `timeout` passes; returns
    /// whether they had.
    pub async fn wait_closed(&self, n: u64, timeout: Duration) -> bool {
        tokio::time::timeout(timeout, async {
            loop {
                let changed = self.counters.changed.notified();
                if self.closed() >= n {
                    return;
                }
                changed.await;
            }
        })
        .await
        .is_ok()
    }
}

#[expect(
    clippy::result_large_err,
    reason = "tungstenite's handshake callback returns its own response type"
)]
async fn ws_echo(
    stream: TcpStream,
    counters: Arc<WsCounters>,
    last_path: Arc<std::sync::Mutex<Option<String>>>,
) {
    let record = |req: &Request, resp: Response| {
        if let Ok(mut p) = last_path.lock() {
            *p = Some(req.uri().to_string());
        }
        Ok(resp)
    };
    let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(stream, record).await else {
        return;
    };
    counters.handshakes.fetch_add(1, Ordering::SeqCst);
    while let Some(Ok(msg)) = ws.next().await {
        let reply = match msg {
            Message::Text(t) if t.starts_with("slow:") => {
                let mut parts = t.split(':').skip(1).map(|n| n.parse::<u64>().unwrap_or(0));
                let (len, ms) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
                if slow_frame(ws.get_mut(), len, ms).await.is_err() {
                    break;
                }
                continue;
            }
            Message::Text(_) | Message::Binary(_) => msg,
            Message::Close(frame) => {
                let code = frame.map_or(1005, |f| u16::from(f.code));
                if let Ok(mut codes) = counters.close_codes.lock() {
                    codes.push(code);
                }
                break;
            }
            _ => continue,
        };
        if ws.send(reply).await.is_err() {
            break;
        }
    }
    let _ = ws.close(None).await;
    counters.closed.fetch_add(1, Ordering::SeqCst);
    counters.changed.notify_waiters();
}

/// One unmasked binary frame of `len` bytes, written in two halves `ms` apart.
async fn slow_frame(stream: &mut TcpStream, len: u64, ms: u64) -> io::Result<()> {
    let mut frame = vec![0x82, 127];
    frame.extend_from_slice(&len.to_be_bytes());
    let payload = vec![b'w'; usize::try_from(len).unwrap_or(0)];
    let half = payload.len() / 2;
    frame.extend_from_slice(payload.get(..half).unwrap_or_default());
    stream.write_all(&frame).await?;
    stream.flush().await?;
    tokio::time::sleep(Duration::from_millis(ms)).await;
    stream
        .write_all(payload.get(half..).unwrap_or_default())
        .await?;
    stream.flush().await
}

/// A request accepted by a [`RawUpstream`]: its head as text, and the connection to
/// answer on, with any bytes read past the head.
#[derive(Debug)]
pub struct RawRequest {
    /// Request line and header lines, up to the blank line.
    pub head: String,
    /// Bytes read after the head (the start of the body).
    pub body_start: Vec<u8>,
    /// The connection.
    pub stream: TcpStream,
}

impl RawRequest {
    /// The next request head on `stream`, after the bytes already read from it
    /// (`buf`: what a previous request left past its head, say); `None` when the
    /// connection ends first.
    pub async fn read(mut stream: TcpStream, mut buf: Vec<u8>) -> Option<Self> {
        let mut chunk = [0u8; 4096];
        let end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => buf.extend_from_slice(chunk.get(..n).unwrap_or_default()),
            }
        };
        let body_start = buf.split_off(end);
        Some(Self {
            head: String::from_utf8_lossy(&buf).into_owned(),
            body_start,
            stream,
        })
    }
}

/// A TCP server that reads one request head per connection and hands the connection to
/// a test's handler, which writes whatever bytes it wants.
#[derive(Debug)]
pub struct RawUpstream {
    server: Loop,
    connections: Arc<AtomicU64>,
}

impl RawUpstream {
    /// Starts the server on a free loopback port with `handler` for every request.
    ///
    /// # Errors
    /// When no port can be bound.
    pub async fn start<F, Fut>(handler: F) -> io::Result<Self>
    where
        F: Fn(RawRequest) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let handler = Arc::new(handler);
        let connections = Arc::new(AtomicU64::new(0));
        let count = connections.clone();
        let server = accept_loop(move |stream| {
            let handler = handler.clone();
            count.fetch_add(1, Ordering::SeqCst);
            async move {
                if let Some(req) = RawRequest::read(stream, Vec::new()).await {
                    handler(req).await;
                }
            }
        })
        .await?;
        Ok(Self {
            server,
            connections,
        })
    }

    /// An upstream that answers the first request on each connection with `wire`, as it
    /// is, and then leaves the connection (to be closed when the test ends, or by the
    /// peer).
    ///
    /// # Errors
    /// When no port can be bound.
    pub async fn answering(wire: &'static [u8]) -> io::Result<Self> {
        Self::start(move |mut req: RawRequest| async move {
            let _ = req.stream.write_all(wire).await;
        })
        .await
    }

    /// A careless (not hostile) upstream that sends a body with its answer to a HEAD:
    /// the head announces 44 bytes, and `delay` later comes a complete response whose
    /// body is `stolen` (the body being, say, an uploaded file that reads as one). Every
    /// other request on the connection is answered `answer`, in turn.
    ///
    /// # Errors
    /// When no port can be bound.
    pub async fn late_body_to_head(delay: Duration, answer: &'static [u8]) -> io::Result<Self> {
        Self::start(move |req: RawRequest| async move {
            let mut next = Some(req);
            while let Some(mut req) = next.take() {
                if req.head.starts_with("HEAD ") {
                    let _ = req
                        .stream
                        .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 44\r\n\r\n")
                        .await;
                    tokio::time::sleep(delay).await;
                    let _ = req
                        .stream
                        .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nstolen")
                        .await;
                } else if req.stream.write_all(answer).await.is_err() {
                    return;
                }
                next = RawRequest::read(req.stream, req.body_start).await;
            }
        })
        .await
    }

    /// `http://ADDR`, the gateway's `upstream`.
    #[must_use]
    pub fn url(&self) -> String {
        format!("http://{}", self.server.addr)
    }

    /// Connections accepted.
    #[must_use]
    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::SeqCst)
    }
}
