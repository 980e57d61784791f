//! Long-lived exchanges: WebSocket tunnels and response bodies without a declared length
//! (server-sent events, streamed downloads, gRPC streams), each ended when its route's
//! `max_stream_secs` runs out. A proof authorises opening the stream, not unbounded
//! traffic on it. See `docs/gateway-streams.md`.
//!
//! A WebSocket tunnel ends with a Close frame (1008, policy violation) sent to the client
//! at a frame boundary of the upstream's byte stream, found by reading RFC 6455 frame
//! headers as they pass (no message is buffered), and a masked Close (1001, going away)
//! sent to the upstream at a boundary of the client's; then both are shut down.
//! A streamed response body ends cleanly for `text/event-stream` (the client reconnects
//! with a fresh proof) and is aborted otherwise, so the client sees an incomplete body
//! rather than a short one that looks complete.

use std::future::Future as _;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::HeaderMap;
use http::header::{self, HeaderValue};
use hyper::body::{Body as HttpBody, Frame, SizeHint};
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::time::{Instant, Sleep};

use crate::balance::Held;

/// The error a streamed response body ends with when its lifetime runs out (hyper then
/// aborts the response, so the client sees it incomplete).
#[derive(Debug, thiserror::Error)]
#[error("stream lifetime (max_stream_secs) ended")]
pub(crate) struct LifetimeEnded;

/// Errors of a forwarded body.
pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The client connection's slot under `max_connections`, carried in each request's
/// extensions so that a WebSocket tunnel, which outlives the HTTP connection it was
/// upgraded from, keeps the slot until it ends.
#[derive(Clone, Debug)]
pub(crate) struct ConnectionSlot(
    #[expect(dead_code, reason = "held, never read")] pub(crate) Arc<Held>,
);

/// How long a tunnel may take to finish the upstream frame in flight and deliver the
/// Close frame once its lifetime has ended, before it is cut without one.
const CLOSE_GRACE: Duration = Duration::from_secs(10);

/// The Close frame's reason, sent with status 1008.
const CLOSE_REASON: &[u8] = b"stream lifetime ended";

/// Whether `headers` contain `token` in the comma-separated lists of `name`, ignoring
/// ASCII case and parameters.
pub(crate) fn has_token(headers: &HeaderMap, name: &header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| {
            t.split(';')
                .next()
                .is_some_and(|t| t.trim().eq_ignore_ascii_case(token))
        })
}

/// An RFC 6455 §4.1 opening handshake: HTTP/1.1 `GET` with `Connection: upgrade` and
/// `Upgrade: websocket`. Any other upgrade (`h2c`, `TLS/1.0`, …) is not forwarded.
pub(crate) fn is_websocket_upgrade<B>(req: &http::Request<B>) -> bool {
    let h = req.headers();
    h.contains_key(header::UPGRADE)
        && req.method() == http::Method::GET
        && req.version() == http::Version::HTTP_11
        && has_token(h, &header::UPGRADE, "websocket")
        && has_token(h, &header::CONNECTION, "upgrade")
}

/// Whether an upstream's 101 switched to WebSocket.
pub(crate) fn upgraded_to_websocket(headers: &HeaderMap) -> bool {
    has_token(headers, &header::UPGRADE, "websocket")
}

/// Sets the upgrade fields of a WebSocket handshake (after hop-by-hop removal).
pub(crate) fn set_websocket_upgrade(headers: &mut HeaderMap) {
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
}

/// Follows the frame boundaries of a WebSocket byte stream (RFC 6455 §5.2) by reading
/// each frame header (2 to 14 bytes) and skipping its payload, without buffering.
#[derive(Debug, Default)]
pub(crate) struct FrameTracker {
    header: [u8; 14],
    have: usize,
    payload_left: u64,
    saw_close: bool,
}

impl FrameTracker {
    /// Between two frames.
    pub(crate) fn at_boundary(&self) -> bool {
        self.have == 0 && self.payload_left == 0
    }

    /// A Close frame has passed (the tracked side has started the closing handshake).
    pub(crate) fn saw_close(&self) -> bool {
        self.saw_close
    }

    /// The payload length once the header so far is complete.
    fn header_done(&self) -> Option<u64> {
        let (b1, len7) = match self.header.get(..self.have)? {
            [_, b1, ..] => (*b1, *b1 & 0x7f),
            _ => return None,
        };
        let ext = match len7 {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        let mask = if b1 & 0x80 == 0 { 0 } else { 4 };
        if self.have < 2 + ext + mask {
            return None;
        }
        let ext_bytes = self.header.get(2..2 + ext)?;
        Some(match len7 {
            126 | 127 => ext_bytes.iter().fold(0u64, |n, b| (n << 8) | u64::from(*b)),
            n => u64::from(n),
        })
    }

    /// Follows `bytes`; with `stop_at_boundary`, only up to the first frame boundary
    /// reached inside them. Returns how many bytes were followed.
    pub(crate) fn feed(&mut self, bytes: &[u8], stop_at_boundary: bool) -> usize {
        let mut rest = bytes;
        while let Some((&first, tail)) = rest.split_first() {
            if self.payload_left > 0 {
                let take = usize::try_from(self.payload_left)
                    .unwrap_or(usize::MAX)
                    .min(rest.len());
                self.payload_left -= take as u64;
                rest = rest.get(take..).unwrap_or_default();
            } else {
                let Some(slot) = self.header.get_mut(self.have) else {
                    // Unreachable: a header is complete at 14 bytes at most.
                    self.have = 0;
                    continue;
                };
                *slot = first;
                self.have += 1;
                rest = tail;
                let Some(len) = self.header_done() else {
                    continue;
                };
                if self.header[0] & 0x0f == 0x8 {
                    self.saw_close = true;
                }
                self.have = 0;
                self.payload_left = len;
            }
            if stop_at_boundary && self.at_boundary() {
                break;
            }
        }
        bytes.len() - rest.len()
    }
}

/// A Close frame with `code` and `reason` (at most 123 bytes, RFC 6455 §5.5), unmasked
/// (server to client) or masked with `mask` (client to server, §5.3).
pub(crate) fn close_frame(code: u16, reason: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    let reason = reason.get(..reason.len().min(123)).unwrap_or_default();
    let mut payload = Vec::with_capacity(2 + reason.len());
    payload.extend_from_slice(&code.to_be_bytes());
    payload.extend_from_slice(reason);
    let len = u8::try_from(payload.len()).unwrap_or(125);
    let mut f = Vec::with_capacity(6 + payload.len());
    f.push(0x88);
    match mask {
        None => {
            f.push(len);
            f.extend_from_slice(&payload);
        }
        Some(key) => {
            f.push(0x80 | len);
            f.extend_from_slice(&key);
            f.extend(payload.iter().zip(key.iter().cycle()).map(|(b, k)| b ^ k));
        }
    }
    f
}

/// Which way bytes flow, and so which Close frame ends that way.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Direction {
    /// Upstream to client: Close 1008 (policy violation), unmasked.
    ToClient,
    /// Client to upstream: Close 1001 (going away), masked as a client's frames must be.
    ToUpstream,
}

impl Direction {
    fn close(self) -> std::io::Result<Vec<u8>> {
        Ok(match self {
            Self::ToClient => close_frame(1008, CLOSE_REASON, None),
            Self::ToUpstream => {
                // RFC 6455 §5.3: masking keys must be unpredictable.
                let mut key = [0u8; 4];
                aws_lc_rs::rand::fill(&mut key)
                    .map_err(|_| std::io::Error::other("no randomness"))?;
                close_frame(1001, CLOSE_REASON, Some(key))
            }
        })
    }
}

/// How one direction of a tunnel ended.
#[derive(Debug, PartialEq, Eq)]
enum End {
    /// The sending side closed its connection.
    SourceClosed,
    /// The lifetime ended and the Close frame went out.
    LifetimeEnded,
}

/// Relays frames one way; when `deadline` passes, finishes the frame in flight, sends
/// this direction's Close (unless the sender has already sent one) and shuts the
/// receiving side down.
async fn relay_frames<R, W>(
    from: &mut R,
    to: &mut W,
    deadline: Instant,
    direction: Direction,
) -> std::io::Result<End>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut tracker = FrameTracker::default();
    let mut buf = vec![0u8; 16 * 1024];
    let expired = tokio::time::sleep_until(deadline);
    tokio::pin!(expired);
    loop {
        let n = tokio::select! {
            biased;
            () = &mut expired => break,
            n = from.read(&mut buf) => n?,
        };
        let Some(chunk) = buf.get(..n).filter(|c| !c.is_empty()) else {
            to.shutdown().await?;
            return Ok(End::SourceClosed);
        };
        tracker.feed(chunk, false);
        to.write_all(chunk).await?;
    }
    // Never in the middle of a frame: the receiver could not parse what follows.
    while !tracker.at_boundary() {
        let n = from.read(&mut buf).await?;
        let Some(chunk) = buf.get(..n).filter(|c| !c.is_empty()) else {
            to.shutdown().await?;
            return Ok(End::SourceClosed);
        };
        let k = tracker.feed(chunk, true);
        to.write_all(chunk.get(..k).unwrap_or_default()).await?;
    }
    if !tracker.saw_close() {
        to.write_all(&direction.close()?).await?;
    }
    to.flush().await?;
    to.shutdown().await?;
    Ok(End::LifetimeEnded)
}

/// Runs a WebSocket tunnel between the client (once its side of the upgrade completes)
/// and the upstream, for at most `lifetime` (and [`CLOSE_GRACE`] to close), holding the
/// client connection's slot throughout.
pub(crate) async fn tunnel(
    client: OnUpgrade,
    upstream: OnUpgrade,
    lifetime: Duration,
    slot: Option<ConnectionSlot>,
) {
    let _slot = slot;
    let deadline = Instant::now() + lifetime;
    let (client, upstream) = match tokio::try_join!(client, upstream) {
        Ok(both) => both,
        Err(e) => {
            tracing::debug!(target: "dpop::stream", error = %e, "websocket upgrade did not complete");
            return;
        }
    };
    let ended =
        tokio::time::timeout_at(deadline + CLOSE_GRACE, relay(client, upstream, deadline)).await;
    match ended {
        Ok(Ok(End::LifetimeEnded)) => {
            tracing::info!(target: "dpop::stream", lifetime_secs = lifetime.as_secs(), "websocket closed: stream lifetime ended");
        }
        Ok(Ok(End::SourceClosed)) => {}
        Ok(Err(e)) => {
            tracing::debug!(target: "dpop::stream", error = %e, "websocket tunnel ended with an error");
        }
        Err(_) => {
            tracing::info!(target: "dpop::stream", "websocket cut: stream lifetime ended and the close did not finish in time");
        }
    }
    // Dropping both sides closes both connections.
}

/// Both directions; ends when the upstream's side does (a client that stops sending may
/// still be receiving), when either connection fails, or when the lifetime has ended
/// both.
async fn relay(client: Upgraded, upstream: Upgraded, deadline: Instant) -> std::io::Result<End> {
    let (mut client_read, mut client_write) = tokio::io::split(TokioIo::new(client));
    let (mut up_read, mut up_write) = tokio::io::split(TokioIo::new(upstream));
    let to_client = relay_frames(
        &mut up_read,
        &mut client_write,
        deadline,
        Direction::ToClient,
    );
    let to_upstream = relay_frames(
        &mut client_read,
        &mut up_write,
        deadline,
        Direction::ToUpstream,
    );
    tokio::pin!(to_client, to_upstream);
    tokio::select! {
        end = &mut to_client => {
            if matches!(end, Ok(End::LifetimeEnded)) {
                // The upstream gets its Close too, at a client-frame boundary.
                let _ = to_upstream.await;
            }
            end
        }
        end = &mut to_upstream => match end {
            // The client stopped sending (or its Close went out at the lifetime's end):
            // the upstream may still answer.
            Ok(_) => to_client.await,
            // The client is gone: so is the tunnel.
            Err(e) => Err(e),
        },
    }
}

/// Whether a response body is a stream the lifetime applies to: server-sent events, or
/// any body whose length the upstream did not declare (chunked, close-delimited). A body
/// of declared length is one bounded response and is left as it is, at no cost.
pub(crate) fn is_stream<B: HttpBody>(headers: &HeaderMap, body: &B) -> bool {
    body.size_hint().exact().is_none() || is_event_stream(headers)
}

fn is_event_stream(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|t| t.trim().eq_ignore_ascii_case("text/event-stream"))
}

/// A response body that ends when its lifetime does: cleanly for server-sent events
/// (the client reconnects with a fresh proof; a partly sent event is discarded by the
/// client, as the event-stream format requires), with an error otherwise.
///
/// The timer is armed only once the body waits for the upstream: a body that streams
/// straight through costs a clock read per frame, no timer.
pub(crate) struct Limited<B> {
    inner: B,
    deadline: Instant,
    timer: Option<Pin<Box<Sleep>>>,
    event_stream: bool,
    ended: bool,
}

impl<B> Limited<B> {
    pub(crate) fn new(inner: B, headers: &HeaderMap, lifetime: Duration) -> Self {
        Self {
            inner,
            deadline: Instant::now() + lifetime,
            timer: None,
            event_stream: is_event_stream(headers),
            ended: false,
        }
    }

    fn expire(&mut self) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.ended = true;
        tracing::info!(target: "dpop::stream", event_stream = self.event_stream, "response stream ended: stream lifetime ended");
        Poll::Ready(if self.event_stream {
            None
        } else {
            Some(Err(LifetimeEnded.into()))
        })
    }
}

impl<B> HttpBody for Limited<B>
where
    B: HttpBody<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.ended {
            return Poll::Ready(None);
        }
        let expired = match self.timer.as_mut() {
            Some(timer) => timer.as_mut().poll(cx).is_ready(),
            None => Instant::now() >= self.deadline,
        };
        if expired {
            return self.expire();
        }
        let polled = Pin::new(&mut self.inner)
            .poll_frame(cx)
            .map(|f| f.map(|r| r.map_err(Into::into)));
        if polled.is_pending() && self.timer.is_none() {
            let mut timer = Box::pin(tokio::time::sleep_until(self.deadline));
            if timer.as_mut().poll(cx).is_ready() {
                return self.expire();
            }
            self.timer = Some(timer);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.ended || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(fin_opcode: u8, mask: bool, len: usize) -> Vec<u8> {
        let mut f = vec![fin_opcode];
        let m = if mask { 0x80 } else { 0 };
        match len {
            0..=125 => f.push(m | len as u8),
            126..=0xffff => {
                f.push(m | 126);
                f.extend_from_slice(&(len as u16).to_be_bytes());
            }
            _ => {
                f.push(m | 127);
                f.extend_from_slice(&(len as u64).to_be_bytes());
            }
        }
        if mask {
            f.extend_from_slice(&[1, 2, 3, 4]);
        }
        f.extend(std::iter::repeat_n(b'x', len));
        f
    }

    #[test]
    fn boundaries_are_found_across_any_split() {
        let frames = [
            frame(0x81, false, 5),
            frame(0x82, false, 300),
            frame(0x02, true, 70_000),
            frame(0x89, false, 0),
            frame(0x80, false, 126),
        ];
        let stream: Vec<u8> = frames.concat();
        let ends: Vec<usize> = frames
            .iter()
            .scan(0, |at, f| {
                *at += f.len();
                Some(*at)
            })
            .collect();
        for chunk in [1, 2, 3, 7, 13, 1000, stream.len()] {
            let mut t = FrameTracker::default();
            let mut seen = Vec::new();
            let mut at = 0;
            for c in stream.chunks(chunk) {
                let mut rest = c;
                while !rest.is_empty() {
                    let k = t.feed(rest, true);
                    at += k;
                    rest = &rest[k..];
                    if t.at_boundary() {
                        seen.push(at);
                    }
                }
            }
            assert_eq!(seen, ends, "chunk size {chunk}");
            assert!(!t.saw_close());
        }
        let mut t = FrameTracker::default();
        assert_eq!(t.feed(&frame(0x81, false, 10)[..5], false), 5);
        assert!(!t.at_boundary());
    }

    #[test]
    fn a_close_frame_is_noticed_and_ours_is_well_formed() {
        let mut t = FrameTracker::default();
        let ours = close_frame(1008, CLOSE_REASON, None);
        assert_eq!(t.feed(&ours, false), ours.len());
        assert!(t.at_boundary() && t.saw_close());
        assert_eq!(
            &ours[..4],
            &[0x88, 2 + CLOSE_REASON.len() as u8, 0x03, 0xf0]
        );
        assert_eq!(close_frame(1000, &[b'a'; 200], None).len(), 2 + 2 + 123);
        // Masked: the key follows the length, the payload is XORed with it.
        let key = [0x11, 0x22, 0x33, 0x44];
        let masked = close_frame(1001, b"x", Some(key));
        assert_eq!(
            masked,
            [
                0x88,
                0x83,
                0x11,
                0x22,
                0x33,
                0x44,
                0x03 ^ 0x11,
                0xe9 ^ 0x22,
                b'x' ^ 0x33
            ]
        );
        let mut t = FrameTracker::default();
        assert_eq!(t.feed(&masked, true), masked.len());
        assert!(t.at_boundary() && t.saw_close());
    }

    /// Frames of `body` until it ends or fails: (data frames, whether it failed).
    async fn drain<B>(mut body: Limited<B>) -> (usize, bool)
    where
        B: HttpBody<Data = Bytes> + Unpin,
        B::Error: Into<BoxError>,
    {
        use http_body_util::BodyExt as _;
        let mut frames = 0;
        loop {
            match body.frame().await {
                None => return (frames, false),
                Some(Err(e)) => {
                    assert!(e.is::<LifetimeEnded>(), "{e}");
                    return (frames, true);
                }
                Some(Ok(_)) => frames += 1,
            }
        }
    }

    fn headers(content_type: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_str(content_type).unwrap(),
        );
        h
    }

    #[tokio::test]
    async fn a_streamed_body_ends_at_its_lifetime_whether_it_waits_or_not() {
        let lifetime = Duration::from_millis(50);
        // Never waits: the deadline is read from the clock on every frame.
        let busy = || {
            http_body_util::StreamBody::new(futures_util::stream::repeat_with(|| {
                Ok::<_, std::convert::Infallible>(Frame::data(Bytes::from_static(b"x")))
            }))
        };
        // Always waits: the timer ends it.
        let idle = || {
            http_body_util::StreamBody::new(futures_util::stream::pending::<
                Result<Frame<Bytes>, std::convert::Infallible>,
            >())
        };
        let start = Instant::now();
        let octets = headers("application/octet-stream");
        let events = headers("text/event-stream; charset=utf-8");
        let busy_bytes = tokio::spawn(drain(Limited::new(busy(), &octets, lifetime)));
        let (frames, failed) = busy_bytes.await.unwrap();
        assert!(frames > 0 && failed, "aborted after streaming");
        let (_, failed) = drain(Limited::new(busy(), &events, lifetime)).await;
        assert!(!failed, "an event stream ends cleanly");
        assert_eq!(
            drain(Limited::new(idle(), &octets, lifetime)).await,
            (0, true)
        );
        assert_eq!(
            drain(Limited::new(idle(), &events, lifetime)).await,
            (0, false)
        );
        assert!(start.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn only_websocket_upgrades_are_recognised() {
        let req = |method: &str, upgrade: &str, connection: &str| {
            http::Request::builder()
                .method(method)
                .header("upgrade", upgrade)
                .header("connection", connection)
                .body(())
                .unwrap()
        };
        assert!(is_websocket_upgrade(&req(
            "GET",
            "WebSocket",
            "keep-alive, Upgrade"
        )));
        assert!(!is_websocket_upgrade(&req("POST", "websocket", "upgrade")));
        assert!(!is_websocket_upgrade(&req("GET", "h2c", "upgrade")));
        assert!(!is_websocket_upgrade(&req(
            "GET",
            "websocket",
            "keep-alive"
        )));
        let mut h2 = req("GET", "websocket", "upgrade");
        *h2.version_mut() = http::Version::HTTP_2;
        assert!(!is_websocket_upgrade(&h2));
    }
}
