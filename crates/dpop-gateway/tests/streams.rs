//! Streams through the gateway, on real sockets: WebSocket upgrades checked by DPoP and
//! tunnelled until their lifetime ends with a Close 1008 at a frame boundary; server-sent
//! events and request bodies passed through unbuffered; the upstream's status line in the
//! client's protocol; `TE: trailers` forwarded and other upgrades removed.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Caller, Running};
use dpop_test::tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use dpop_test::tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use dpop_test::tokio_tungstenite::tungstenite::{self, Message};
use dpop_test::tokio_tungstenite::{MaybeTlsStream, WebSocketStream, client_async};
use dpop_test::tonic::metadata::MetadataValue;
use dpop_test::tonic::{Code, Request};
use dpop_test::{
    ECHO_COUNT_TRAILER, EchoRequest, GrpcEchoClient, GrpcEchoUpstream, MockIssuer, RawRequest,
    RawUpstream, TestUpstream, WsEchoUpstream, raw_exchange,
};
use futures_util::{SinkExt as _, StreamExt as _};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::sync::Notify;

/// A gateway in front of the upstream at `url` with `rest` in its configuration, and a
/// caller with a token for it (from the issuer returned with them).
async fn gateway_for(url: &str, rest: &str) -> (MockIssuer, Running, Caller) {
    let issuer = MockIssuer::start().await.unwrap();
    let gw = Running::start(&issuer, url, rest).await;
    let caller = Caller::scoped(&issuer, "read");
    (issuer, gw, caller)
}

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Opens `ws://ADDR/path` through the gateway with `headers`.
async fn ws_connect(
    gw: &Running,
    path: &str,
    headers: &[(&str, String)],
) -> Result<Ws, tungstenite::Error> {
    let mut req = format!("ws://{}{path}", gw.addr)
        .into_client_request()
        .unwrap();
    for (name, value) in headers {
        req.headers_mut().insert(
            http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            http::HeaderValue::from_str(value).unwrap(),
        );
    }
    let tcp = TcpStream::connect(gw.addr).await.unwrap();
    let (ws, resp) = client_async(req, MaybeTlsStream::Plain(tcp)).await?;
    assert_eq!(resp.status(), 101);
    Ok(ws)
}

/// A WebSocket connection through the gateway, with a proof for `GET` on the `http`
/// form of its URL.
async fn ws_open(gw: &Running, caller: &Caller, path: &str) -> Ws {
    let headers = caller.headers("GET", &gw.url(path));
    ws_connect(gw, path, &headers).await.unwrap()
}

/// The next message, within `secs` seconds.
async fn next(ws: &mut Ws, secs: u64) -> Message {
    tokio::time::timeout(Duration::from_secs(secs), ws.next())
        .await
        .expect("a message in time")
        .expect("the stream goes on")
        .expect("a well-formed message")
}

fn assert_lifetime_close(msg: &Message) {
    match msg {
        Message::Close(Some(frame)) => {
            assert_eq!(frame.code, CloseCode::Policy, "{frame:?}");
            assert_eq!(frame.reason.as_str(), "stream lifetime ended");
        }
        other => panic!("expected Close 1008, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_message_round_trips_after_a_dpop_checked_upgrade() {
    let upstream = WsEchoUpstream::start().await.unwrap();
    let (_issuer, gw, caller) = gateway_for(&upstream.url(), "").await;

    let mut ws = ws_open(&gw, &caller, "/ws/chat?room=1").await;
    ws.send(Message::text("hello")).await.unwrap();
    assert_eq!(next(&mut ws, 5).await, Message::text("hello"));
    ws.send(Message::binary(vec![7u8; 70_000])).await.unwrap();
    assert_eq!(next(&mut ws, 5).await, Message::binary(vec![7u8; 70_000]));
    assert_eq!(upstream.handshakes(), 1);
    assert_eq!(upstream.last_path().as_deref(), Some("/ws/chat?room=1"));

    // A client closing ends the tunnel and the upstream's side with it.
    ws.close(None).await.unwrap();
    assert!(upstream.wait_closed(1, Duration::from_secs(5)).await);
    assert_eq!(
        upstream.close_codes(),
        [1005],
        "the client's own Close passed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_without_a_valid_proof_is_refused_and_never_forwarded() {
    let upstream = WsEchoUpstream::start().await.unwrap();
    let (_issuer, gw, caller) = gateway_for(&upstream.url(), "").await;

    let refused = |e: tungstenite::Error| match e {
        tungstenite::Error::Http(resp) => resp,
        other => panic!("expected an HTTP refusal, got {other:?}"),
    };
    // No proof.
    let e = ws_connect(&gw, "/ws", &[("authorization", caller.authorization())])
        .await
        .unwrap_err();
    let resp = refused(e);
    assert_eq!(resp.status(), 401);
    let challenge = resp.headers()["www-authenticate"].to_str().unwrap();
    assert!(
        challenge.starts_with(r#"DPoP error="invalid_dpop_proof""#),
        "{challenge}"
    );
    // The handshake is a GET: a proof for another method does not open it.
    let wrong = caller.headers("POST", &gw.url("/ws"));
    let resp = refused(ws_connect(&gw, "/ws", &wrong).await.unwrap_err());
    assert_eq!(resp.status(), 401);
    // A proof used once is a replay the second time.
    let headers = caller.headers("GET", &gw.url("/ws"));
    drop(ws_connect(&gw, "/ws", &headers).await.unwrap());
    let resp = refused(ws_connect(&gw, "/ws", &headers).await.unwrap_err());
    assert_eq!(resp.status(), 401);
    assert_eq!(upstream.handshakes(), 1, "only the valid upgrade arrived");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_is_closed_with_1008_when_its_lifetime_ends() {
    let upstream = WsEchoUpstream::start().await.unwrap();
    let (_issuer, gw, caller) = gateway_for(
        &upstream.url(),
        "[[routes]]\npath_prefix = \"/ws\"\nmax_stream_secs = 1\n",
    )
    .await;

    let start = Instant::now();
    let mut ws = ws_open(&gw, &caller, "/ws").await;
    ws.send(Message::text("ping")).await.unwrap();
    assert_eq!(next(&mut ws, 5).await, Message::text("ping"));
    let close = next(&mut ws, 5).await;
    let elapsed = start.elapsed();
    assert_lifetime_close(&close);
    assert!(
        elapsed >= Duration::from_millis(900) && elapsed < Duration::from_secs(4),
        "{elapsed:?}"
    );
    assert!(
        upstream.wait_closed(1, Duration::from_secs(5)).await,
        "the upstream's side is closed too"
    );
    assert_eq!(
        upstream.close_codes(),
        [1001],
        "going away, at a frame boundary"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lifetime_close_waits_for_the_upstream_frame_in_flight() {
    let upstream = WsEchoUpstream::start().await.unwrap();
    let (_issuer, gw, caller) = gateway_for(
        &upstream.url(),
        "[[routes]]\npath_prefix = \"/ws\"\nmax_stream_secs = 1\n",
    )
    .await;

    let mut ws = ws_open(&gw, &caller, "/ws").await;
    // Half of a 1 MiB frame now, the rest 1.5 s later: the lifetime ends mid-frame.
    ws.send(Message::text("slow:1048576:1500")).await.unwrap();
    match next(&mut ws, 5).await {
        Message::Binary(b) => {
            assert_eq!(b.len(), 1_048_576);
            assert!(b.iter().all(|&x| x == b'w'));
        }
        other => panic!("expected the whole frame, got {other:?}"),
    }
    assert_lifetime_close(&next(&mut ws, 5).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_answered_without_101_is_relayed_as_a_response() {
    let upstream = TestUpstream::start().await.unwrap();
    let (_issuer, gw, caller) = gateway_for(&upstream.url(), "").await;

    let e = ws_open_err(&gw, &caller).await;
    let tungstenite::Error::Http(resp) = e else {
        panic!("expected the upstream's answer, got {e:?}")
    };
    assert_eq!(resp.status(), 200);
    let seen = upstream.last_request().unwrap();
    assert_eq!(seen.header("upgrade"), Some("websocket"));
    assert_eq!(seen.header("connection"), Some("upgrade"));
    assert!(seen.header("sec-websocket-key").is_some(), "{seen:?}");
    assert_eq!(seen.header("sec-websocket-version"), Some("13"));
}

async fn ws_open_err(gw: &Running, caller: &Caller) -> tungstenite::Error {
    let headers = caller.headers("GET", &gw.url("/ws"));
    ws_connect(gw, "/ws", &headers).await.unwrap_err()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_tunnel_keeps_its_connection_slot() {
    let upstream = WsEchoUpstream::start().await.unwrap();
    let (_issuer, gw, caller) =
        gateway_for(&upstream.url(), "[limits]\nmax_connections = 1\n").await;

    let mut ws = ws_open(&gw, &caller, "/ws").await;
    ws.send(Message::text("a")).await.unwrap();
    assert_eq!(next(&mut ws, 5).await, Message::text("a"));
    // The only slot is the tunnel's: a second connection waits.
    let waiting = tokio::spawn({
        let url = gw.url("/ws");
        let headers = caller.headers("GET", &url);
        async move {
            let h: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
            dpop_test::http_request("GET", &url, &h, b"").await
        }
    });
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(
        !waiting.is_finished(),
        "served while the tunnel held the slot"
    );
    // The client goes away without a Close: the tunnel ends and frees the slot.
    drop(ws);
    let r = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("served once the tunnel ended")
        .unwrap()
        .unwrap();
    // The echo upstream speaks WebSocket only: any answer shows the request got through.
    assert!(r.status > 0);
    assert!(upstream.wait_closed(1, Duration::from_secs(5)).await);
}

/// Reads from `stream` into `buf` until it contains `needle`, within `secs` seconds.
async fn read_until(stream: &mut TcpStream, buf: &mut Vec<u8>, needle: &[u8], secs: u64) {
    let found = tokio::time::timeout(Duration::from_secs(secs), async {
        let mut chunk = [0u8; 4096];
        while !buf.windows(needle.len()).any(|w| w == needle) {
            let n = stream.read(&mut chunk).await.unwrap();
            assert!(n > 0, "closed before {:?}", String::from_utf8_lossy(needle));
            buf.extend_from_slice(&chunk[..n]);
        }
    })
    .await;
    assert!(
        found.is_ok(),
        "no {:?} in time; got {:?}",
        String::from_utf8_lossy(needle),
        String::from_utf8_lossy(buf)
    );
}

/// Sends a request head for `path` with DPoP credentials and `extra` lines.
async fn send_head(
    gw: &Running,
    caller: &Caller,
    method: &str,
    path: &str,
    extra: &str,
) -> TcpStream {
    let mut stream = TcpStream::connect(gw.addr).await.unwrap();
    let [(_, auth), (_, proof)] = caller.headers(method, &gw.url(path));
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: {auth}\r\nDPoP: {proof}\r\n{extra}\r\n",
        gw.addr
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream
}

/// An upstream answering with a chunked body: the head with `content_type`, then one
/// chunk per `next` notification, with `events` chunks in all, then the end.
async fn lock_step_upstream(
    content_type: &'static str,
    events: usize,
    next: Arc<Notify>,
) -> RawUpstream {
    RawUpstream::start(move |mut req: RawRequest| {
        let next = next.clone();
        async move {
            let head = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: {content_type}\r\ntransfer-encoding: chunked\r\n\r\n"
            );
            if req.stream.write_all(head.as_bytes()).await.is_err() {
                return;
            }
            for i in 0..events {
                let event = format!("data: event-{i}\n\n");
                let chunk = format!("{:x}\r\n{event}\r\n", event.len());
                if req.stream.write_all(chunk.as_bytes()).await.is_err() {
                    return;
                }
                next.notified().await;
            }
            let _ = req.stream.write_all(b"0\r\n\r\n").await;
            // Keep the connection until the gateway is done with it.
            let mut rest = Vec::new();
            let _ = req.stream.read_to_end(&mut rest).await;
        }
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_sent_events_arrive_one_by_one_and_outlive_the_request_timeout() {
    let next = Arc::new(Notify::new());
    let upstream = lock_step_upstream("text/event-stream", 3, next.clone()).await;
    let (_issuer, gw, caller) =
        gateway_for(&upstream.url(), "[limits]\nrequest_timeout_secs = 1\n").await;

    let start = Instant::now();
    let mut stream = send_head(&gw, &caller, "GET", "/events", "").await;
    let mut buf = Vec::new();
    for i in 0..3 {
        // The upstream sends event i+1 only once event i is here: nothing is buffered.
        read_until(
            &mut stream,
            &mut buf,
            format!("data: event-{i}").as_bytes(),
            5,
        )
        .await;
        tokio::time::sleep(Duration::from_millis(600)).await;
        next.notify_one();
    }
    read_until(&mut stream, &mut buf, b"0\r\n\r\n", 5).await;
    assert!(
        start.elapsed() > Duration::from_secs(1),
        "longer than request_timeout"
    );
    let text = String::from_utf8_lossy(&buf);
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    assert!(text.contains("content-type: text/event-stream"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_past_its_lifetime_ends_cleanly_for_events_and_incomplete_otherwise() {
    let next = Arc::new(Notify::new());
    let events = lock_step_upstream("text/event-stream", 2, next.clone()).await;
    let (issuer, gw, caller) = gateway_for(&events.url(), "[limits]\nmax_stream_secs = 1\n").await;
    let mut stream = send_head(&gw, &caller, "GET", "/events", "").await;
    let mut buf = Vec::new();
    read_until(&mut stream, &mut buf, b"data: event-0", 5).await;
    // The upstream never sends more; the lifetime ends the body with its last chunk.
    read_until(&mut stream, &mut buf, b"\r\n0\r\n\r\n", 5).await;

    let other = Arc::new(Notify::new());
    let download = lock_step_upstream("application/octet-stream", 2, other.clone()).await;
    let gw = Running::start(&issuer, &download.url(), "[limits]\nmax_stream_secs = 1\n").await;
    let mut stream = send_head(&gw, &caller, "GET", "/file", "").await;
    let mut buf = Vec::new();
    read_until(&mut stream, &mut buf, b"data: event-0", 5).await;
    // Aborted: the connection closes without the last chunk.
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut rest))
        .await
        .expect("closed in time")
        .ok();
    buf.extend_from_slice(&rest);
    let text = String::from_utf8_lossy(&buf);
    assert!(!text.contains("\r\n0\r\n\r\n"), "looks complete: {text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_body_reaches_the_upstream_while_the_client_still_sends() {
    let got_first = Arc::new(Notify::new());
    let seen = got_first.clone();
    let upstream = RawUpstream::start(move |mut req: RawRequest| {
        let seen = seen.clone();
        async move {
            let mut body = req.body_start;
            let mut chunk = [0u8; 4096];
            let mut told = false;
            while !body.ends_with(b"0\r\n\r\n") {
                if !told && body.windows(5).any(|w| w == b"first") {
                    seen.notify_one();
                    told = true;
                }
                match req.stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => body.extend_from_slice(&chunk[..n]),
                }
            }
            let ok = String::from_utf8_lossy(&body).contains("last");
            let status = if ok { "200 OK" } else { "400 Bad Request" };
            let _ = req
                .stream
                .write_all(format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\n\r\n").as_bytes())
                .await;
        }
    })
    .await
    .unwrap();
    let (_issuer, gw, caller) = gateway_for(&upstream.url(), "").await;

    let mut stream = send_head(
        &gw,
        &caller,
        "POST",
        "/upload",
        "transfer-encoding: chunked\r\n",
    )
    .await;
    stream.write_all(b"5\r\nfirst\r\n").await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), got_first.notified())
        .await
        .expect("the first chunk reached the upstream before the body ended");
    stream.write_all(b"4\r\nlast\r\n0\r\n\r\n").await.unwrap();
    let mut buf = Vec::new();
    read_until(&mut stream, &mut buf, b"\r\n\r\n", 5).await;
    assert!(
        buf.starts_with(b"HTTP/1.1 200 OK\r\n"),
        "{:?}",
        String::from_utf8_lossy(&buf)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_1_0_status_line_reaches_the_client_as_http_1_1() {
    let upstream = RawUpstream::answering(b"HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\nok")
        .await
        .unwrap();
    let (_issuer, gw, caller) = gateway_for(&upstream.url(), "").await;
    let [(_, auth), (_, proof)] = caller.headers("GET", &gw.url("/old"));
    let r = raw_exchange(
        gw.addr,
        b"GET",
        b"/old",
        &[("authorization", &auth), ("dpop", &proof)],
    )
    .await;
    assert!(r.text.starts_with("HTTP/1.1 200 OK\r\n"), "{}", r.text);
    assert!(r.text.ends_with("\r\n\r\nok"), "{}", r.text);
    assert_eq!(upstream.connections(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn te_trailers_is_forwarded_and_other_upgrades_are_not() {
    let upstream = TestUpstream::start().await.unwrap();
    let (_issuer, gw, caller) = gateway_for(&upstream.url(), "").await;
    let get = async |extra: &[(&str, &str)]| {
        let [(_, auth), (_, proof)] = caller.headers("GET", &gw.url("/rpc"));
        let mut h = vec![("authorization", auth.as_str()), ("dpop", proof.as_str())];
        h.extend_from_slice(extra);
        let r = raw_exchange(gw.addr, b"GET", b"/rpc", &h).await;
        assert_eq!(r.status, 200, "{}", r.text);
        upstream.last_request().unwrap()
    };

    let seen = get(&[("te", "trailers, deflate;q=0.5")]).await;
    assert_eq!(seen.header_values("te"), ["trailers"]);
    let seen = get(&[("te", "deflate")]).await;
    assert!(seen.header("te").is_none(), "{seen:?}");

    let seen = get(&[
        ("connection", "Upgrade, HTTP2-Settings"),
        ("upgrade", "h2c"),
        ("http2-settings", "AAMAAABkAARAAAAAAAIAAAAA"),
    ])
    .await;
    for name in ["upgrade", "http2-settings"] {
        assert!(seen.header(name).is_none(), "{name}: {seen:?}");
    }
    assert!(
        !seen
            .header_values("connection")
            .iter()
            .any(|v| v.to_ascii_lowercase().contains("upgrade")),
        "{seen:?}"
    );
    let seen = get(&[("connection", "upgrade"), ("upgrade", "TLS/1.0")]).await;
    assert!(seen.header("upgrade").is_none(), "{seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trailers_pass_through_to_a_client_that_accepts_them() {
    let upstream = RawUpstream::start(|mut req: RawRequest| async move {
        let te = req
            .head
            .to_ascii_lowercase()
            .contains("\r\nte: trailers\r\n");
        let reply = format!(
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ntrailer: x-checksum\r\n\r\n\
             5\r\nhello\r\n0\r\nx-checksum: te-{te}\r\n\r\n"
        );
        let _ = req.stream.write_all(reply.as_bytes()).await;
        let mut rest = Vec::new();
        let _ = req.stream.read_to_end(&mut rest).await;
    })
    .await
    .unwrap();
    let (_issuer, gw, caller) = gateway_for(&upstream.url(), "").await;

    let mut stream = send_head(&gw, &caller, "GET", "/sum", "te: trailers\r\n").await;
    let mut buf = Vec::new();
    read_until(&mut stream, &mut buf, b"te-true\r\n\r\n", 5).await;
    let text = String::from_utf8_lossy(&buf);
    assert!(
        text.to_ascii_lowercase()
            .contains("\r\n0\r\nx-checksum: te-true\r\n"),
        "{text}"
    );
}

/// `request` with DPoP credentials for a gRPC call to `method` (a POST to its path).
fn grpc_request<T>(gw: &Running, caller: &Caller, method: &str, request: T) -> Request<T> {
    let mut r = Request::new(request);
    for (name, value) in caller.headers("POST", &gw.url(method)) {
        r.metadata_mut()
            .insert(name, MetadataValue::try_from(value.as_str()).unwrap());
    }
    r
}

fn echo(message: &str, repeat: u32) -> EchoRequest {
    EchoRequest {
        message: message.into(),
        repeat,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_calls_pass_the_gateway_with_trailers_and_refusals_are_unauthenticated() {
    let issuer = MockIssuer::start().await.unwrap();
    let upstream = GrpcEchoUpstream::start().await.unwrap();
    let gw = Running::with_upstream(
        &issuer,
        &format!("{{ url = \"{}\", http2 = true }}", upstream.url()),
        "h2c = true\n",
    )
    .await;
    let caller = Caller::scoped(&issuer, "read");
    let mut client = GrpcEchoClient::new(&format!("http://{}", gw.addr));

    let unary = "/dpop.test.Echo/Unary";
    let reply = client
        .unary(grpc_request(&gw, &caller, unary, echo("hi", 0)))
        .await
        .unwrap();
    assert_eq!(reply.get_ref().message, "hi");
    let seen = upstream.requests();
    let last = seen.last().unwrap();
    assert_eq!(last.get("te").unwrap(), "trailers");
    assert_eq!(last.get("x-dpop-subject").unwrap(), "user-1");
    assert!(last.get("dpop").is_none());

    // Refused: HTTP 401 with the challenge, which gRPC clients read as UNAUTHENTICATED.
    let mut bare = Request::new(echo("hi", 0));
    bare.metadata_mut().insert(
        "authorization",
        MetadataValue::try_from(caller.authorization().as_str()).unwrap(),
    );
    let e = client.unary(bare).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    assert_eq!(upstream.requests().len(), 1, "nothing forwarded");

    let stream = "/dpop.test.Echo/ServerStream";
    let mut replies = client
        .server_stream(grpc_request(&gw, &caller, stream, echo("tick", 3)))
        .await
        .unwrap()
        .into_inner();
    let mut n = 0;
    while let Some(m) = replies.message().await.unwrap() {
        assert_eq!((m.message.as_str(), m.index), ("tick", n));
        n += 1;
    }
    assert_eq!(n, 3);
    let trailers = replies.trailers().await.unwrap().expect("trailers");
    assert_eq!(trailers.get(ECHO_COUNT_TRAILER).unwrap(), "3");

    let collect = "/dpop.test.Echo/Collect";
    let words = futures_util::stream::iter(["a", "b"].map(|w| echo(w, 0)));
    let reply = client
        .collect(grpc_request(&gw, &caller, collect, words))
        .await
        .unwrap();
    assert_eq!(reply.get_ref().message, "a b");
}
