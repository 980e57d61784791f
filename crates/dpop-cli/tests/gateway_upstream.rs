//! A hostile upstream behind the real `dpop gateway`: answers whose framing is ambiguous,
//! protocol switches nobody asked for, endless interim answers, bodies cut short and
//! bytes sent past an answer. What the client sees is a 502 (or a response it can tell
//! is incomplete), never another answer than its own, and the next request is served.
//!
//! The gateway runs one serving thread, so that every request goes through the same
//! connection pool and a connection the upstream tainted would be the next one taken.

use std::time::Duration;

use dpop_test::{MockIssuer, RawRequest, RawResponse, RawUpstream, raw_exchange, send_raw};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use super::{Caller, Gw, Launch, config_file};

/// What the upstream answers to `GET /case/N` (each on its own connection), and to any
/// other path: `fine`.
const CASES: [(&str, &[u8]); 6] = [
    (
        "Content-Length and Transfer-Encoding",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
    ),
    (
        "two different Content-Length values",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok",
    ),
    (
        "a transfer coding before chunked",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
    ),
    (
        "101 to a request that asked for no upgrade",
        b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\nframes",
    ),
    (
        "a field name with a space",
        b"HTTP/1.1 200 OK\r\nX Smuggle: 1\r\nContent-Length: 2\r\n\r\nok",
    ),
    (
        "a head cut before its end",
        b"HTTP/1.1 200 OK\r\nContent-Le",
    ),
];

/// Seventeen interim answers (one more than the gateway reads past) before the final one.
fn too_many_interim() -> Vec<u8> {
    let mut wire = b"HTTP/1.1 100 Continue\r\n\r\n".repeat(17);
    wire.extend_from_slice(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
    wire
}

/// The path of the request line of `head`.
fn path(head: &str) -> &str {
    head.split(' ').nth(1).unwrap_or_default()
}

/// What the upstream writes for a request to `target`, and whether it keeps the
/// connection afterwards: `fine` for any path but `/case/…`, whose bytes are followed by
/// the close.
fn reply(target: &str) -> (Vec<u8>, bool) {
    let wire = match target.strip_prefix("/case/") {
        Some("interim") => too_many_interim(),
        Some("truncated") => b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc".to_vec(),
        Some(n) => n
            .parse::<usize>()
            .ok()
            .and_then(|n| CASES.get(n))
            .map_or_else(Vec::new, |(_, wire)| wire.to_vec()),
        None => return (FINE.to_vec(), true),
    };
    (wire, false)
}

const FINE: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nfine";

/// Answers every request head on the connection as [`reply`] says, until a reply that
/// closes or the gateway's close.
async fn answer(mut req: RawRequest) {
    loop {
        let (wire, keep) = reply(path(&req.head));
        if req.stream.write_all(&wire).await.is_err() || !keep {
            return;
        }
        match RawRequest::read(req.stream, req.body_start).await {
            Some(next) => req = next,
            None => return,
        }
    }
}

async fn start(issuer: &MockIssuer, upstream: &str) -> (Gw, crate::common::TempFile) {
    let launch = Launch::bare();
    let file = config_file(&launch, issuer, upstream, "[limits]\nworkers = 1\n");
    let gw = launch.arg("--config").arg(file.path()).start().await;
    (gw, file)
}

/// A gateway in front of the upstream that [`answer`]s, and a client of it.
struct Scripted {
    gw: Gw,
    caller: Caller,
    _file: crate::common::TempFile,
    _upstream: RawUpstream,
    _issuer: MockIssuer,
}

impl Scripted {
    async fn start() -> Self {
        let issuer = MockIssuer::start().await.unwrap();
        let upstream = RawUpstream::start(answer).await.unwrap();
        let (gw, file) = start(&issuer, &upstream.url()).await;
        let caller = Caller::new(&issuer, "");
        Self {
            gw,
            caller,
            _file: file,
            _upstream: upstream,
            _issuer: issuer,
        }
    }
}

/// `GET target` with a fresh proof from `caller`, on a new client connection, read until
/// the gateway closes it.
async fn get(gw: &Gw, caller: &Caller, target: &str) -> RawResponse {
    exchange(gw, caller, "GET", target).await
}

/// `method target` without a body, as [`get`].
async fn exchange(gw: &Gw, caller: &Caller, method: &str, target: &str) -> RawResponse {
    let proof = caller.proof(method, &format!("{}{target}", gw.htu_base), None);
    let authorization = caller.authorization();
    raw_exchange(
        gw.addr(),
        method.as_bytes(),
        target.as_bytes(),
        &[("Authorization", &authorization), ("DPoP", &proof)],
    )
    .await
}

/// `POST target` with `body` and a fresh proof from `caller`, on a new client
/// connection: everything the gateway sent until it closed the connection. (A request
/// with a body, whose answer hyper's client reads, where [`get`]'s is read by the
/// gateway's own.)
async fn post(gw: &Gw, caller: &Caller, target: &str, body: &str) -> String {
    let proof = caller.proof("POST", &format!("{}{target}", gw.htu_base), None);
    let request = format!(
        "POST {target} HTTP/1.1\r\nHost: {}\r\nAuthorization: {}\r\nDPoP: {proof}\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        gw.addr(),
        caller.authorization(),
        body.len()
    );
    let (out, ended) = send_raw(gw.addr(), request.as_bytes()).await;
    if let Err(e) = ended {
        panic!("the gateway closes the connection: {e}");
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The body of a complete `Content-Length` response (`None` when the response is not
/// one, or its body is not all there).
fn whole_body(r: &RawResponse) -> Option<&str> {
    let (_, body) = r.text.split_once("\r\n\r\n")?;
    let length: usize = r.header("content-length")?.parse().ok()?;
    (body.len() == length).then_some(body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_an_upstream_frames_ambiguously_are_502_and_the_next_request_is_served() {
    let scripted = Scripted::start().await;
    let (gw, caller) = (&scripted.gw, &scripted.caller);

    let cases = CASES
        .iter()
        .enumerate()
        .map(|(n, (what, _))| (format!("/case/{n}"), *what))
        .chain([("/case/interim".to_owned(), "seventeen interim answers")]);
    for (target, what) in cases {
        let r = get(gw, caller, &target).await;
        assert_eq!(
            r.status,
            502,
            "{what}: {:?}\n{}",
            r.text,
            gw.process.output()
        );
        assert_eq!(whole_body(&r), Some(""), "{what}: {:?}", r.text);
        for leaked in ["smuggle", "upgrade", "websocket"] {
            assert!(
                !r.text.to_ascii_lowercase().contains(leaked),
                "{what}: {leaked} reached the client: {:?}",
                r.text
            );
        }
        let next = get(gw, caller, "/after").await;
        assert_eq!(
            whole_body(&next),
            Some("fine"),
            "after {what}: {:?}",
            next.text
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_the_upstream_cuts_short_never_looks_complete_to_the_client() {
    let scripted = Scripted::start().await;
    let (gw, caller) = (&scripted.gw, &scripted.caller);

    let target = "/case/truncated";
    let proof = caller.proof("GET", &format!("{}{target}", gw.htu_base), None);
    let request = format!(
        "GET {target} HTTP/1.1\r\nHost: {}\r\nAuthorization: {}\r\nDPoP: {proof}\r\nConnection: close\r\n\r\n",
        gw.addr(),
        caller.authorization()
    );
    let mut stream = tokio::net::TcpStream::connect(gw.addr()).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let ended = tokio::time::timeout(Duration::from_secs(20), stream.read_to_end(&mut out))
        .await
        .expect("the gateway ends the connection");
    let text = String::from_utf8_lossy(&out);
    // The head may have gone out before the body was cut. Then the client is told 10
    // bytes and gets fewer before the connection ends (a chunked answer would end
    // without its last chunk), or the connection is reset: either way it can tell the
    // answer from a whole one.
    if let Some((head, body)) = text.split_once("\r\n\r\n") {
        assert!(head.starts_with("HTTP/1.1 200"), "{text:?}");
        let r = RawResponse {
            status: 200,
            text: text.clone().into_owned(),
        };
        assert_eq!(whole_body(&r), None, "{text:?}");
        if r.header("transfer-encoding").is_some() {
            assert!(
                !body.ends_with("0\r\n\r\n"),
                "a cut body ended as complete: {text:?}"
            );
        } else {
            assert_eq!(r.header("content-length"), Some("10"), "{text:?}");
        }
    } else {
        assert!(
            ended.is_err() || !text.contains("abc"),
            "{ended:?} {text:?}"
        );
    }
    let next = get(gw, caller, "/after").await;
    assert_eq!(whole_body(&next), Some("fine"), "{:?}", next.text);
}

/// An upstream that answers each request with `first`, and sends a second, unasked
/// answer on the same connection, at once or `delay` later (after the gateway has put
/// the connection back among its idle ones).
async fn stray_upstream(delay: Duration) -> RawUpstream {
    RawUpstream::start(move |mut req: RawRequest| async move {
        let _ = req
            .stream
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfirst")
            .await;
        let _ = req.stream.flush().await;
        tokio::time::sleep(delay).await;
        let _ = req
            .stream
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nsmuggled")
            .await;
        let _ = req.stream.flush().await;
        // Held open: the connection looks reusable.
        let mut rest = [0u8; 1024];
        let _ = tokio::time::timeout(Duration::from_secs(10), req.stream.read(&mut rest)).await;
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_an_upstream_sends_past_its_answer_never_answer_another_client() {
    let issuer = MockIssuer::start().await.unwrap();
    let caller = Caller::new(&issuer, "");
    for delay in [Duration::ZERO, Duration::from_millis(100)] {
        let upstream = stray_upstream(delay).await;
        let (gw, _file) = start(&issuer, &upstream.url()).await;
        for i in 0..5 {
            let r = get(&gw, &caller, &format!("/n/{i}")).await;
            assert_eq!(
                whole_body(&r),
                Some("first"),
                "request {i}, stray answer {delay:?} later: {:?}\n{}",
                r.text,
                gw.process.output()
            );
            // Let a late stray answer arrive on the idle connection before the next request.
            tokio::time::sleep(delay * 2).await;
        }
        assert_eq!(
            upstream.connections(),
            5,
            "a connection with bytes past its answer was taken again ({delay:?})"
        );
    }
}

/// An upstream that closes a connection while it is idle (its `FIN` after the answer):
/// the gateway closes its side within a couple of seconds, with no request to that
/// upstream to notice, so nothing stays in `CLOSE_WAIT`; and the next request is served
/// on a new connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_the_upstream_closes_while_idle_is_closed_by_the_gateway() {
    let (seen, mut closes) = tokio::sync::mpsc::unbounded_channel();
    let upstream = RawUpstream::start(move |mut req: RawRequest| {
        let seen = seen.clone();
        async move {
            if req.stream.write_all(FINE).await.is_err() {
                return;
            }
            let _ = req.stream.shutdown().await;
            // Ends with 0 only once the gateway has closed its side.
            let waited = tokio::time::Instant::now();
            let mut rest = [0u8; 64];
            let read = tokio::time::timeout(Duration::from_secs(20), req.stream.read(&mut rest))
                .await
                .map(|r| r.map_err(|e| e.kind()));
            let _ = seen.send((read, waited.elapsed()));
        }
    })
    .await
    .unwrap();
    let issuer = MockIssuer::start().await.unwrap();
    let (gw, _file) = start(&issuer, &upstream.url()).await;
    let caller = Caller::new(&issuer, "");
    let first = get(&gw, &caller, "/one").await;
    assert_eq!(whole_body(&first), Some("fine"), "{:?}", first.text);
    let (read, after) = closes.recv().await.unwrap();
    assert!(
        matches!(read, Ok(Ok(0))) && after < Duration::from_secs(10),
        "the gateway kept the connection the upstream closed: {read:?} after {after:?}\n{}",
        gw.process.output()
    );
    let second = get(&gw, &caller, "/two").await;
    assert_eq!(whole_body(&second), Some("fine"), "{:?}", second.text);
    assert_eq!(upstream.connections(), 2);
}

/// Answers to requests with a body are read by hyper's client, not the gateway's own, and
/// are held to the same framing rules: an answer chunked with a `Content-Length` beside
/// it is a 502, never relayed with the length cutting the body short; a `Content-Length`
/// of `2, 2` reaches the client as `2`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_to_requests_with_a_body_are_framed_as_strictly() {
    let issuer = MockIssuer::start().await.unwrap();
    let upstream = RawUpstream::start(|mut req: RawRequest| async move {
        let wire: &[u8] = if path(&req.head) == "/both" {
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 2\r\n\
              Connection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
        } else {
            b"HTTP/1.1 200 OK\r\nContent-Length: 2, 2\r\nConnection: close\r\n\r\nok"
        };
        let _ = req.stream.write_all(wire).await;
    })
    .await
    .unwrap();
    let (gw, _file) = start(&issuer, &upstream.url()).await;
    let caller = Caller::new(&issuer, "");
    let both = post(&gw, &caller, "/both", "hi").await;
    assert!(
        both.starts_with("HTTP/1.1 502") && !both.contains("\r\n\r\nhe"),
        "{both:?}\n{}",
        gw.process.output()
    );
    let listed = post(&gw, &caller, "/listed", "hi").await;
    let (head, body) = listed.split_once("\r\n\r\n").unwrap_or_default();
    let head = head.to_ascii_lowercase();
    let lengths: Vec<_> = head
        .lines()
        .filter(|l| l.starts_with("content-length:"))
        .collect();
    assert!(head.starts_with("http/1.1 200"), "{listed:?}");
    assert_eq!(lengths, ["content-length: 2"], "{listed:?}");
    assert_eq!(body, "ok");
}

/// A careless upstream that sends a body with its answer to a HEAD, 100 ms after the head
/// (the body itself a response: an uploaded file, say). The next request, another
/// client's, gets its own answer, on a connection of its own, never that body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_body_to_a_head_never_answers_another_client() {
    let issuer = MockIssuer::start().await.unwrap();
    let upstream = RawUpstream::late_body_to_head(Duration::from_millis(100), FINE)
        .await
        .unwrap();
    let (gw, _file) = start(&issuer, &upstream.url()).await;
    let caller = Caller::new(&issuer, "");
    let head = exchange(&gw, &caller, "HEAD", "/file").await;
    assert_eq!(head.status, 200, "{:?}", head.text);
    let next = get(&gw, &caller, "/after").await;
    assert_eq!(
        whole_body(&next),
        Some("fine"),
        "{:?}\n{}",
        next.text,
        gw.process.output()
    );
    assert_eq!(
        upstream.connections(),
        2,
        "the HEAD's connection was taken again"
    );
}
