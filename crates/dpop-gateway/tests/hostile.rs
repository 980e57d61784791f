//! Hostile clients against the gateway, on real sockets: fields the gateway vouches for
//! cannot be smuggled to the upstream in other parts of the request.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{Caller, Running};
use dpop_test::{MockIssuer, RawRequest, RawUpstream};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

/// `Authorization` and `DPoP` lines for `method` on `http://ADDR{path}`, for a token of
/// subject `alice`.
fn credentials(issuer: &MockIssuer, gw: &Running, method: &str, path: &str) -> String {
    let caller = Caller::minted(issuer, |_, spec| spec.sub = "alice".into());
    let proof = caller.proof(method, &gw.url(path));
    format!(
        "Authorization: {}\r\nDPoP: {proof}\r\n",
        caller.authorization()
    )
}

/// Reads from `stream` until `needle` has arrived (or the peer closes, or 5 s pass).
async fn read_until(stream: &mut TcpStream, needle: &[u8]) -> Vec<u8> {
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        let mut chunk = [0u8; 4096];
        while !buf.windows(needle.len()).any(|w| w == needle) {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    buf
}

/// An upstream that answers every request with what it received after the head (the
/// chunked body and its trailer section), as the response body.
async fn body_echo_upstream() -> RawUpstream {
    RawUpstream::start(|mut req: RawRequest| async move {
        let mut body = req.body_start;
        let mut chunk = [0u8; 4096];
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            // The last chunk, then the trailer section up to its blank line.
            let complete =
                |b: &[u8]| b.windows(3).any(|w| w == b"0\r\n") && b.ends_with(b"\r\n\r\n");
            while !complete(&body) {
                match req.stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => body.extend_from_slice(&chunk[..n]),
                }
            }
        })
        .await;
        let mut reply =
            format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", body.len()).into_bytes();
        reply.extend_from_slice(&body);
        let _ = req.stream.write_all(&reply).await;
    })
    .await
    .unwrap()
}

/// Request trailers are a second header section the client controls: identity and
/// forwarding fields in them would reach the upstream beside the ones the gateway set.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_trailers_cannot_carry_fields_the_gateway_vouches_for() {
    let issuer = MockIssuer::start().await.unwrap();
    let upstream = body_echo_upstream().await;
    let gw = Running::start(&issuer, &upstream.url(), "").await;
    let mut stream = TcpStream::connect(gw.addr).await.unwrap();
    let head = format!(
        "POST /upload HTTP/1.1\r\nHost: {}\r\n{}Transfer-Encoding: chunked\r\n\
         Trailer: x-dpop-subject, x_dpop_subject, x-forwarded-for, x-http-method-override, x-checksum\r\n\r\n",
        gw.addr,
        credentials(&issuer, &gw, "POST", "/upload"),
    );
    let body = "5\r\nhello\r\n0\r\nx-dpop-subject: admin\r\nx_dpop_subject: admin\r\n\
                x-forwarded-for: 10.6.6.6\r\nx-http-method-override: DELETE\r\n\
                x-checksum: 42\r\n\r\n";
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(body.as_bytes()).await.unwrap();
    let reply = read_until(&mut stream, b"\r\n\r\n").await;
    let head_end = reply.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let len: usize = String::from_utf8_lossy(&reply[..head_end])
        .lines()
        .find_map(|l| {
            l.strip_prefix("content-length: ")
                .map(|v| v.parse().unwrap())
        })
        .unwrap_or_else(|| panic!("{}", String::from_utf8_lossy(&reply)));
    let mut reply = reply;
    while reply.len() < head_end + len {
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await.unwrap();
        assert!(n > 0);
        reply.extend_from_slice(&chunk[..n]);
    }
    let text = String::from_utf8_lossy(&reply).to_ascii_lowercase();
    assert!(text.starts_with("http/1.1 200"), "{text}");
    let forwarded = &text[head_end..];
    assert!(forwarded.contains("hello"), "{forwarded}");
    for smuggled in [
        "x-dpop-subject",
        "x_dpop_subject",
        "x-forwarded-for",
        "x-http-method-override",
    ] {
        assert!(!forwarded.contains(smuggled), "{smuggled} in {forwarded:?}");
    }
    // An end-to-end trailer the gateway has no say in still passes.
    assert!(forwarded.contains("x-checksum: 42"), "{forwarded:?}");
}

/// Whether a request on a new connection to `addr` gets a status line within `secs`.
async fn answered_within(addr: SocketAddr, secs: u64) -> bool {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let head = format!("GET /x HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream.write_all(head.as_bytes()).await.unwrap();
        read_until(&mut stream, b"HTTP/1.1 ").await
    };
    tokio::time::timeout(Duration::from_secs(secs), exchange)
        .await
        .is_ok_and(|reply| reply.starts_with(b"HTTP/1.1 "))
}

/// On an h2c listener the first bytes choose HTTP/1.1 or HTTP/2, and HTTP/1.1's header
/// read timeout only starts after that: a client that connects and sends nothing (or
/// only the start of the HTTP/2 preface) must not keep its connection slot for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_h2c_connection_does_not_keep_its_slot() {
    let issuer = MockIssuer::start().await.unwrap();
    let upstream = dpop_test::TestUpstream::start().await.unwrap();
    let gw = Running::start(
        &issuer,
        &upstream.url(),
        "h2c = true\n[limits]\nmax_connections = 1\nhandshake_timeout_secs = 1\n",
    )
    .await;
    for opening in [&b""[..], b"PRI * HTTP/2.0\r\n"] {
        let mut silent = TcpStream::connect(gw.addr).await.unwrap();
        silent.write_all(opening).await.unwrap();
        assert!(
            answered_within(gw.addr, 8).await,
            "a connection that sent {opening:?} and went quiet holds the only slot"
        );
        drop(silent);
    }
}

/// RFC 9113 §8.2.3: an HTTP/2 client may split `Cookie` into several fields, which must
/// be joined with `; ` before an HTTP/1.1 hop; an HTTP/1.1 server that reads only the
/// first line, or joins them with `,` as for other fields, would see other cookies than
/// the client sent. The upstream also never sees the client's `Host` or `:authority`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_cookie_fields_reach_an_http1_upstream_as_one() {
    use http_body_util::Empty;

    let issuer = MockIssuer::start().await.unwrap();
    let upstream = dpop_test::TestUpstream::start().await.unwrap();
    let gw = Running::start(&issuer, &upstream.url(), "h2c = true\n").await;
    let (mut send, _ended) = h2c_client(gw.addr).await;
    let url = format!("http://{}/items", gw.addr);
    let lines = credentials(&issuer, &gw, "GET", "/items");
    let mut req = http::Request::get(&url)
        .header("cookie", "session=abc")
        .header("cookie", "csrf=xyz")
        .header("host", "evil.example");
    for line in lines.lines() {
        let (name, value) = line.split_once(": ").unwrap();
        req = req.header(name, value);
    }
    let req = req.body(Empty::<bytes::Bytes>::new()).unwrap();
    send.ready().await.unwrap();
    let status = send.send_request(req).await.unwrap().status();
    assert_eq!(status, 200);
    let seen = upstream.last_request().unwrap();
    assert_eq!(seen.header_values("cookie"), ["session=abc; csrf=xyz"]);
    assert_eq!(seen.header_values("host"), [upstream.addr().to_string()]);
}

/// An h2c connection to `addr` whose driver runs in the background; the handle resolves
/// when the connection has ended (after the gateway's GOAWAY, say).
async fn h2c_client(
    addr: SocketAddr,
) -> (
    hyper::client::conn::http2::SendRequest<http_body_util::Empty<bytes::Bytes>>,
    tokio::task::JoinHandle<()>,
) {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let (send, conn) = hyper::client::conn::http2::handshake(
        TokioExecutor::new(),
        TokioIo::new(TcpStream::connect(addr).await.unwrap()),
    )
    .await
    .unwrap();
    let ended = tokio::spawn(async move {
        let _ = conn.await;
    });
    (send, ended)
}

/// HTTP/2 has no idle timeout of its own: a client that made one request and then only
/// keeps the connection open (its HTTP/2 stack answers the gateway's pings) must not keep
/// its connection slot for good. After `idle_timeout_secs` the gateway sends GOAWAY and
/// the slot goes to the next client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_http2_connection_is_closed_after_the_idle_timeout() {
    let issuer = MockIssuer::start().await.unwrap();
    let upstream = dpop_test::TestUpstream::start().await.unwrap();
    let gw = Running::start(
        &issuer,
        &upstream.url(),
        "h2c = true\n[limits]\nmax_connections = 1\nidle_timeout_secs = 1\n",
    )
    .await;
    let (mut send, ended) = h2c_client(gw.addr).await;
    let req = http::Request::get(format!("http://{}/items", gw.addr))
        .body(http_body_util::Empty::new())
        .unwrap();
    send.ready().await.unwrap();
    let status = send.send_request(req).await.unwrap().status();
    assert_eq!(status, 401);
    // The client keeps its side open (`send` is alive) and does nothing more.
    let ended = tokio::time::timeout(Duration::from_secs(6), ended).await;
    assert!(ended.is_ok(), "the idle HTTP/2 connection is still open");
    assert!(
        answered_within(gw.addr, 5).await,
        "the idle connection's slot was not given back"
    );
    drop(send);
}

/// A response body still streaming keeps its request in flight: past the idle timeout
/// the connection has had no GOAWAY and still takes new requests, however long the stream
/// lasts (`max_stream_secs` bounds that). Once it has ended, the connection is idle and
/// closed like any other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streaming_http2_response_outlives_the_idle_timeout() {
    use http_body_util::BodyExt as _;

    let issuer = MockIssuer::start().await.unwrap();
    let upstream = RawUpstream::start(|mut req: RawRequest| async move {
        let s = &mut req.stream;
        let _ = s
            .write_all(
                b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\
                  transfer-encoding: chunked\r\n\r\n9\r\ndata: a\n\n\r\n",
            )
            .await;
        tokio::time::sleep(Duration::from_secs(3)).await;
        let _ = s.write_all(b"9\r\ndata: b\n\n\r\n0\r\n\r\n").await;
        let _ = s.flush().await;
        tokio::time::sleep(Duration::from_secs(1)).await;
    })
    .await
    .unwrap();
    let gw = Running::start(
        &issuer,
        &upstream.url(),
        "h2c = true\n[limits]\nmax_connections = 1\nidle_timeout_secs = 1\n",
    )
    .await;
    let (mut send, ended) = h2c_client(gw.addr).await;
    let mut req = http::Request::get(format!("http://{}/events", gw.addr));
    for line in credentials(&issuer, &gw, "GET", "/events").lines() {
        let (name, value) = line.split_once(": ").unwrap();
        req = req.header(name, value);
    }
    let req = req.body(http_body_util::Empty::new()).unwrap();
    send.ready().await.unwrap();
    let started = std::time::Instant::now();
    let response = send.send_request(req).await.unwrap();
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(&first[..], b"data: a\n\n");
    // Past the idle timeout with the stream open: the connection has had no GOAWAY and
    // takes another request.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let another = http::Request::get(format!("http://{}/items", gw.addr))
        .body(http_body_util::Empty::new())
        .unwrap();
    send.ready().await.unwrap();
    let status = send.send_request(another).await.unwrap().status();
    assert_eq!(status, 401);
    let rest = tokio::time::timeout(Duration::from_secs(10), body.collect())
        .await
        .expect("the stream ends")
        .expect("the stream is not cut by the idle timeout")
        .to_bytes();
    assert_eq!(&rest[..], b"data: b\n\n");
    assert!(
        started.elapsed() >= Duration::from_millis(2500),
        "the stream lasted longer than the idle timeout"
    );
    assert!(
        !ended.is_finished(),
        "the connection closed under its stream"
    );
    // Now nothing is in flight: the connection is idle and its slot given back.
    let ended = tokio::time::timeout(Duration::from_secs(6), ended).await;
    assert!(ended.is_ok(), "the idle HTTP/2 connection is still open");
    assert!(
        answered_within(gw.addr, 5).await,
        "the idle connection's slot was not given back"
    );
    drop(send);
}

/// Reads one response to a request of `method` from `stream`: its head, and its body by
/// `content-length` (none for HEAD).
async fn read_response(stream: &mut TcpStream, method: &str) -> (String, Vec<u8>) {
    let mut reply = read_until(stream, b"\r\n\r\n").await;
    let head_end = reply
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no head: {:?}", String::from_utf8_lossy(&reply)))
        + 4;
    let head = String::from_utf8_lossy(&reply[..head_end]).to_ascii_lowercase();
    let len: usize = if method == "HEAD" {
        0
    } else {
        head.lines()
            .find_map(|l| {
                l.strip_prefix("content-length: ").map(|v| {
                    v.parse().unwrap_or_else(|_| {
                        panic!("a Content-Length that is not one number: {v:?}")
                    })
                })
            })
            .unwrap_or(0)
    };
    while reply.len() < head_end + len {
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await.unwrap();
        assert!(n > 0, "closed in the body");
        reply.extend_from_slice(&chunk[..n]);
    }
    (head, reply[head_end..].to_vec())
}

/// Through a gateway in front of `upstream`: a `first` request, then a GET on the same
/// client connection (so on the same serving thread and its pool), each answered 200;
/// the GET's body.
async fn then_get(issuer: &MockIssuer, upstream: &str, first: &str) -> String {
    let gw = Running::start(issuer, upstream, "").await;
    let mut stream = TcpStream::connect(gw.addr).await.unwrap();
    let request = |method: &str| {
        format!(
            "{method} /r HTTP/1.1\r\nHost: {}\r\n{}\r\n",
            gw.addr,
            credentials(issuer, &gw, method, "/r")
        )
    };
    stream.write_all(request(first).as_bytes()).await.unwrap();
    let (head, _) = read_response(&mut stream, first).await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    stream.write_all(request("GET").as_bytes()).await.unwrap();
    let (head, body) = read_response(&mut stream, "GET").await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    String::from_utf8_lossy(&body).into_owned()
}

/// An upstream that answers with a head of about 40 KB (the gateway's read buffer grows
/// past what an idle connection keeps), its body, and one byte more; if another request
/// comes on that connection, it answers it with what makes that byte a whole response.
/// Through the gateway, the next request on the same client connection (so on the same
/// serving thread and its pool) gets its own answer, on a connection of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_an_upstream_sends_past_an_answer_never_answer_the_next_request() {
    let issuer = MockIssuer::start().await.unwrap();
    let upstream = RawUpstream::start(|mut req: RawRequest| async move {
        let mut first = b"HTTP/1.1 200 OK\r\nX-Big: ".to_vec();
        first.extend(std::iter::repeat_n(b'a', 40_000));
        first.extend_from_slice(b"\r\nContent-Length: 2\r\n\r\nokH");
        let _ = req.stream.write_all(&first).await;
        if let Some(mut next) = RawRequest::read(req.stream, Vec::new()).await {
            let _ = next
                .stream
                .write_all(b"TTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nsmuggled")
                .await;
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
    })
    .await
    .unwrap();
    assert_eq!(then_get(&issuer, &upstream.url(), "GET").await, "ok");
    assert_eq!(
        upstream.connections(),
        2,
        "the first connection was not reused"
    );
}

/// A careless (not hostile) upstream that sends a body with its answer to a HEAD, 20 ms
/// after the head, and serves each request on the connection in turn; the body is
/// itself a response, say a file someone uploaded. Through the gateway, the next request
/// on the same client connection gets its own answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_body_to_a_head_never_answers_the_next_request() {
    let issuer = MockIssuer::start().await.unwrap();
    let upstream = RawUpstream::late_body_to_head(
        Duration::from_millis(20),
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
    )
    .await
    .unwrap();
    assert_eq!(then_get(&issuer, &upstream.url(), "HEAD").await, "ok");
}

/// Through a gateway in front of `upstream`, a GET (whose answer the gateway's own client
/// reads) and a POST with a body (hyper's client), each on a connection of its own: the
/// method, the answer's head (lower case) and its body.
async fn get_and_post(issuer: &MockIssuer, upstream: &str) -> Vec<(&'static str, String, Vec<u8>)> {
    let gw = Running::start(issuer, upstream, "").await;
    let mut answers = Vec::new();
    for (method, body) in [("GET", ""), ("POST", "hi")] {
        let mut stream = TcpStream::connect(gw.addr).await.unwrap();
        let request = format!(
            "{method} /r HTTP/1.1\r\nHost: {}\r\n{}Content-Length: {}\r\n\r\n{body}",
            gw.addr,
            credentials(issuer, &gw, method, "/r"),
            body.len()
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        let (head, body) = read_response(&mut stream, method).await;
        answers.push((method, head, body));
    }
    answers
}

/// An upstream that writes its `Content-Length` as `2, 2` (which a recipient may accept,
/// RFC 9110 §8.6, and an HTTP/2 client may refuse). Whichever way the gateway read the
/// answer, its own for a GET or hyper's client for a request with a body, the client
/// sees one form of the length: `2`, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listed_content_length_reaches_the_client_as_one_number() {
    let issuer = MockIssuer::start().await.unwrap();
    let upstream = RawUpstream::answering(
        b"HTTP/1.1 200 OK\r\nContent-Length: 2, 2\r\nConnection: close\r\n\r\nok",
    )
    .await
    .unwrap();
    for (method, head, body) in get_and_post(&issuer, &upstream.url()).await {
        assert!(head.starts_with("http/1.1 200"), "{method}: {head}");
        let lengths: Vec<_> = head
            .lines()
            .filter(|l| l.starts_with("content-length:"))
            .collect();
        assert_eq!(lengths, ["content-length: 2"], "{method}: {head}");
        assert_eq!(body, b"ok", "{method}");
    }
}

/// An upstream that frames its answer both ways, chunked with a `Content-Length` beside
/// it (`2` where the chunks carry five bytes). Through the gateway, whichever client read
/// the answer (its own for a GET, hyper's for a request with a body), it is refused with
/// 502, never relayed with the length cutting the body short.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_length_beside_a_chunked_coding_is_refused_on_every_path() {
    let issuer = MockIssuer::start().await.unwrap();
    let upstream = RawUpstream::answering(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 2\r\n\
                  Connection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    )
    .await
    .unwrap();
    for (method, head, _) in get_and_post(&issuer, &upstream.url()).await {
        assert!(head.starts_with("http/1.1 502"), "{method}: {head}");
    }
}
