//! The direct exchange ([`crate::direct`]) through the pool, against an upstream that
//! answers with the exact bytes each test gives it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Uri};
use http_body_util::{BodyExt as _, Empty, Full};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use crate::pool::{BodyError, Http1Pool, PoolError, later, plain_pool};

use crate::direct::{self, ExchangeError};
use crate::h1::H1Error;

/// What the scripted upstream does with one request.
#[derive(Clone)]
enum Step {
    /// Writes these bytes, each piece a separate write a little after the previous.
    Answer(Vec<&'static [u8]>),
    /// Writes these bytes, then closes the connection.
    AnswerThenClose(&'static [u8]),
    /// Writes the first bytes, then the second ones 20 ms later (nobody asked for them).
    AnswerThenStray(&'static [u8], &'static [u8]),
    /// Writes these bytes, then closes the connection 30 ms later.
    AnswerThenCloseLater(&'static [u8]),
    /// Closes the connection without answering.
    Close,
    /// Never answers, and keeps the connection open.
    Silent,
}

/// An upstream on a loopback port that answers the `n`th request it reads (over all its
/// connections) with `script[n]` (the last step repeats); counts connections and
/// requests, and keeps the request heads.
struct Upstream {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    requests: Arc<AtomicUsize>,
    heads: Arc<std::sync::Mutex<Vec<String>>>,
}

async fn upstream(script: Vec<Step>) -> Upstream {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let requests = Arc::new(AtomicUsize::new(0));
    let heads = Arc::new(std::sync::Mutex::new(Vec::new()));
    let (c, r, h) = (
        Arc::clone(&connections),
        Arc::clone(&requests),
        Arc::clone(&heads),
    );
    let script = Arc::new(script);
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            c.fetch_add(1, Ordering::SeqCst);
            let (r, h, script) = (Arc::clone(&r), Arc::clone(&h), Arc::clone(&script));
            tokio::spawn(serve(socket, r, h, script));
        }
    });
    Upstream {
        addr,
        connections,
        requests,
        heads,
    }
}

async fn serve(
    mut socket: TcpStream,
    requests: Arc<AtomicUsize>,
    heads: Arc<std::sync::Mutex<Vec<String>>>,
    script: Arc<Vec<Step>>,
) {
    let mut pending = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let end = loop {
            if let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
                break end + 4;
            }
            match socket.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => pending.extend_from_slice(&buf[..n]),
            }
        };
        let head: Vec<u8> = pending.drain(..end).collect();
        heads
            .lock()
            .unwrap()
            .push(String::from_utf8_lossy(&head).into_owned());
        let n = requests.fetch_add(1, Ordering::SeqCst);
        let step = script[n.min(script.len() - 1)].clone();
        match step {
            Step::Answer(pieces) => {
                for piece in pieces {
                    if socket.write_all(piece).await.is_err() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }
            Step::AnswerThenClose(bytes) => {
                let _ = socket.write_all(bytes).await;
                return;
            }
            Step::AnswerThenCloseLater(bytes) => {
                let _ = socket.write_all(bytes).await;
                tokio::time::sleep(Duration::from_millis(30)).await;
                return;
            }
            Step::AnswerThenStray(answer, stray) => {
                let _ = socket.write_all(answer).await;
                tokio::time::sleep(Duration::from_millis(20)).await;
                let _ = socket.write_all(stray).await;
            }
            Step::Close => return,
            Step::Silent => std::future::pending::<()>().await,
        }
    }
}

const OK: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";

fn pool(addr: SocketAddr) -> (Http1Pool<Empty<Bytes>>, Uri) {
    plain_pool(addr)
}

fn request(method: &str, addr: SocketAddr) -> Request<Empty<Bytes>> {
    Request::builder()
        .method(method)
        .uri("/r")
        .header(http::header::HOST, addr.to_string())
        .body(Empty::new())
        .unwrap()
}

/// Sends `method` and reads the whole response: status, body, trailers.
async fn send(
    pool: &Http1Pool<Empty<Bytes>>,
    url: &Uri,
    method: &str,
    addr: SocketAddr,
) -> Result<(u16, Bytes, Option<http::HeaderMap>), String> {
    let response = pool
        .request(url, request(method, addr), later())
        .await
        .map_err(|e| format!("request: {e:?}"))?;
    let status = response.status().as_u16();
    let collected = response
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("body: {e:?}"))?;
    let trailers = collected.trailers().cloned();
    Ok((status, collected.to_bytes(), trailers))
}

#[tokio::test]
async fn a_chunked_body_in_many_pieces_arrives_whole_with_its_trailers_and_the_connection_is_reused()
 {
    let up = upstream(vec![Step::Answer(vec![
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: x-sum\r\n\r\n",
        b"5\r\nhel",
        b"lo\r\n",
        b"6;ext=1\r\n world\r\n0\r\n",
        b"x-sum: 42\r\n\r\n",
    ])])
    .await;
    let (pool, url) = pool(up.addr);
    for _ in 0..3 {
        let (status, body, trailers) = send(&pool, &url, "GET", up.addr).await.unwrap();
        assert_eq!((status, &body[..]), (200, &b"hello world"[..]));
        assert_eq!(trailers.unwrap()["x-sum"], "42");
    }
    assert_eq!(up.connections.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn the_request_head_carries_the_method_target_and_fields() {
    let up = upstream(vec![Step::Answer(vec![OK])]).await;
    let (pool, url) = pool(up.addr);
    send(&pool, &url, "DELETE", up.addr).await.unwrap();
    let heads = up.heads.lock().unwrap().clone();
    assert_eq!(
        heads,
        [format!("DELETE /r HTTP/1.1\r\nhost: {}\r\n\r\n", up.addr)]
    );
}

#[tokio::test]
async fn interim_answers_are_skipped_and_an_unusual_reason_is_kept() {
    let up = upstream(vec![Step::Answer(vec![
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n",
        b"HTTP/1.1 201 Made It\r\nContent-Length: 2\r\n\r\nok",
    ])])
    .await;
    let (pool, url) = pool(up.addr);
    let response = pool
        .request(&url, request("GET", up.addr), later())
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    assert!(!response.headers().contains_key("link"));
    let reason = response
        .extensions()
        .get::<hyper::ext::ReasonPhrase>()
        .unwrap();
    assert_eq!(reason.as_bytes(), b"Made It");
    assert_eq!(
        response.into_body().collect().await.unwrap().to_bytes(),
        "ok"
    );
}

#[tokio::test]
async fn a_head_answer_has_no_body_whatever_its_length() {
    let up = upstream(vec![Step::Answer(vec![
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n",
    ])])
    .await;
    let (pool, url) = pool(up.addr);
    for _ in 0..2 {
        let response = pool
            .request(&url, request("HEAD", up.addr), later())
            .await
            .unwrap();
        assert_eq!(response.headers()["content-length"], "5");
        let body = response.into_body();
        assert!(hyper::body::Body::is_end_stream(&body));
        assert!(body.collect().await.unwrap().to_bytes().is_empty());
    }
    // A length announced for a body that is not to come: each on a connection of its
    // own (see the test below).
    assert_eq!(up.connections.load(Ordering::SeqCst), 2);
}

/// A HEAD answer that announces no body keeps its connection.
#[tokio::test]
async fn a_head_answer_that_announces_no_body_keeps_its_connection() {
    let up = upstream(vec![Step::Answer(vec![
        b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
    ])])
    .await;
    let (pool, url) = pool(up.addr);
    for _ in 0..2 {
        let (status, body, _) = send(&pool, &url, "HEAD", up.addr).await.unwrap();
        assert_eq!((status, body.len()), (200, 0));
    }
    assert_eq!(up.connections.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_body_until_close_is_read_to_the_close_and_its_connection_not_reused() {
    let up = upstream(vec![Step::AnswerThenClose(
        b"HTTP/1.1 200 OK\r\nX: y\r\n\r\nall of this",
    )])
    .await;
    let (pool, url) = pool(up.addr);
    for _ in 0..2 {
        let (_, body, _) = send(&pool, &url, "GET", up.addr).await.unwrap();
        assert_eq!(body, "all of this");
    }
    assert_eq!(up.connections.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_connection_with_bytes_past_the_answer_is_not_reused() {
    let up = upstream(vec![Step::Answer(vec![
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nno",
    ])])
    .await;
    let (pool, url) = pool(up.addr);
    for _ in 0..2 {
        let (_, body, _) = send(&pool, &url, "GET", up.addr).await.unwrap();
        assert_eq!(body, "ok");
    }
    assert_eq!(up.connections.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn answers_whose_framing_is_ambiguous_are_errors() {
    for (wire, expected) in [
        (
            &b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"[..],
            H1Error::LengthAndTransferEncoding,
        ),
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok",
            H1Error::ContentLength("2, 3".into()),
        ),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            H1Error::TransferCoding("gzip, chunked".into()),
        ),
        (
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n",
            H1Error::UnaskedSwitch,
        ),
    ] {
        let up = upstream(vec![Step::Answer(vec![wire])]).await;
        let (pool, url) = pool(up.addr);
        match pool.request(&url, request("GET", up.addr), later()).await {
            Err(PoolError::Direct(ExchangeError::Response(e))) => assert_eq!(e, expected),
            other => panic!("{other:?}"),
        }
    }
}

#[tokio::test]
async fn a_body_cut_short_or_malformed_is_an_error_and_its_connection_is_dropped() {
    for wire in [
        &b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort"[..],
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloX\r\n0\r\n\r\n",
    ] {
        let up = upstream(vec![Step::AnswerThenClose(wire), Step::Answer(vec![OK])]).await;
        let (pool, url) = pool(up.addr);
        let response = pool
            .request(&url, request("GET", up.addr), later())
            .await
            .unwrap();
        match response.into_body().collect().await {
            Err(BodyError::Direct(
                ExchangeError::Truncated | ExchangeError::Response(H1Error::ChunkEnd),
            )) => {}
            other => panic!("{:?}: {other:?}", String::from_utf8_lossy(wire)),
        }
        assert_eq!(send(&pool, &url, "GET", up.addr).await.unwrap().1, "ok");
        assert_eq!(up.connections.load(Ordering::SeqCst), 2);
    }
}

/// The upstream closes a kept connection as the next request arrives: the request is
/// sent again on a new connection when its method allows it, and fails otherwise (the
/// upstream may have acted on it).
#[tokio::test]
async fn an_unanswered_request_on_a_reused_connection_is_resent_only_when_idempotent() {
    for (method, resent) in [
        ("GET", true),
        ("PUT", true),
        ("POST", false),
        ("PATCH", false),
    ] {
        let up = upstream(vec![
            Step::Answer(vec![OK]),
            Step::Close,
            Step::Answer(vec![OK]),
        ])
        .await;
        let (pool, url) = pool(up.addr);
        assert_eq!(send(&pool, &url, "GET", up.addr).await.unwrap().1, "ok");
        let second = send(&pool, &url, method, up.addr).await;
        if resent {
            assert_eq!(second.unwrap().1, "ok", "{method}");
            assert_eq!(up.requests.load(Ordering::SeqCst), 3, "{method}");
        } else {
            let e = second.unwrap_err();
            assert!(e.contains("NotAnswered"), "{method}: {e}");
            assert_eq!(up.requests.load(Ordering::SeqCst), 2, "{method}");
        }
        let connections = if resent { 2 } else { 1 };
        assert_eq!(
            up.connections.load(Ordering::SeqCst),
            connections,
            "{method}"
        );
    }
}

#[tokio::test]
async fn a_fresh_connection_that_closes_unanswered_is_not_retried() {
    let up = upstream(vec![Step::Close]).await;
    let (pool, url) = pool(up.addr);
    let e = send(&pool, &url, "GET", up.addr).await.unwrap_err();
    assert!(e.contains("NotAnswered"), "{e}");
    assert_eq!(up.requests.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn an_answer_cut_inside_its_head_is_truncated_not_unanswered() {
    let up = upstream(vec![
        Step::AnswerThenClose(b"HTTP/1.1 200 OK\r\nContent-"),
        Step::Answer(vec![OK]),
    ])
    .await;
    let (pool, url) = pool(up.addr);
    match pool.request(&url, request("GET", up.addr), later()).await {
        Err(PoolError::Direct(ExchangeError::Truncated)) => {}
        other => panic!("{other:?}"),
    }
    assert_eq!(up.requests.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn requests_with_a_body_or_an_upgrade_take_hypers_connection() {
    let up = upstream(vec![Step::Answer(vec![OK])]).await;
    let (pool, url) = plain_pool::<Full<Bytes>>(up.addr);
    let req = Request::post("/r")
        .header(http::header::HOST, up.addr.to_string())
        .body(Full::new(Bytes::from_static(b"payload")))
        .unwrap();
    assert!(!direct::eligible(&req));
    let response = pool.request(&url, req, later()).await.unwrap();
    assert_eq!(
        response.into_body().collect().await.unwrap().to_bytes(),
        "ok"
    );
    let heads = up.heads.lock().unwrap().clone();
    assert!(heads[0].contains("content-length: 7\r\n"), "{heads:?}");

    let upgrade = Request::get("/r")
        .header(http::header::UPGRADE, "websocket")
        .body(Empty::<Bytes>::new())
        .unwrap();
    assert!(!direct::eligible(&upgrade));
    let declared = Request::get("/r")
        .header(http::header::CONTENT_LENGTH, "3")
        .body(Empty::<Bytes>::new())
        .unwrap();
    assert!(!direct::eligible(&declared));
    let zero = Request::get("/r")
        .header(http::header::CONTENT_LENGTH, "0")
        .body(Empty::<Bytes>::new())
        .unwrap();
    assert!(direct::eligible(&zero));
}

/// The upstream closes a kept connection while it is idle, and the runtime has seen the
/// close by the time the next request comes: that request, a POST which is never sent
/// twice, goes on a new connection and is answered.
#[tokio::test]
async fn an_idle_connection_the_upstream_closed_is_not_taken() {
    let up = upstream(vec![Step::AnswerThenClose(OK), Step::Answer(vec![OK])]).await;
    let (pool, url) = pool(up.addr);
    assert_eq!(send(&pool, &url, "GET", up.addr).await.unwrap().1, "ok");
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(send(&pool, &url, "POST", up.addr).await.unwrap().1, "ok");
    assert_eq!(up.connections.load(Ordering::SeqCst), 2);
    assert_eq!(up.requests.load(Ordering::SeqCst), 2);
}

/// Bytes that arrive on an idle connection after its answer (here a body sent after a
/// HEAD answer) end it: read as the next request's answer, they would hand one client
/// what the upstream sent for another.
#[tokio::test]
async fn an_idle_connection_that_received_bytes_is_not_taken() {
    let up = upstream(vec![
        Step::AnswerThenStray(
            b"HTTP/1.1 200 OK\r\nContent-Length: 30\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nstolen",
        ),
        Step::Answer(vec![OK]),
    ])
    .await;
    let (pool, url) = pool(up.addr);
    let (status, body, _) = send(&pool, &url, "HEAD", up.addr).await.unwrap();
    assert_eq!((status, body.len()), (200, 0));
    tokio::time::sleep(Duration::from_millis(60)).await;
    assert_eq!(send(&pool, &url, "GET", up.addr).await.unwrap().1, "ok");
    assert_eq!(up.connections.load(Ordering::SeqCst), 2);
}

/// The same over TLS, the stray bytes sent right behind the answer (two records, one
/// flush): whether they come in the answer's read or wait decrypted in the TLS layer, the
/// connection is not taken again.
#[tokio::test]
async fn an_idle_tls_connection_holding_decrypted_bytes_is_not_taken() {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};

    let ca = dpop_test::TestCa::new("direct tests");
    let leaf = ca.server(&["127.0.0.1"]);
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![CertificateDer::from(leaf.cert_der.clone())],
        PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).unwrap(),
    )
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&connections);
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            let n = counted.fetch_add(1, Ordering::SeqCst);
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(socket).await else {
                    return;
                };
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tls.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(k) => head.extend_from_slice(&buf[..k]),
                    }
                }
                if n == 0 {
                    // Two records, one flush: they leave in one segment.
                    let _ = tls
                        .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 30\r\n\r\n")
                        .await;
                    let _ = tls
                        .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nstolen")
                        .await;
                } else {
                    let _ = tls.write_all(OK).await;
                }
                let _ = tls.flush().await;
                let mut rest = [0u8; 1024];
                while matches!(tls.read(&mut rest).await, Ok(k) if k > 0) {}
            });
        }
    });
    let url: Uri = format!("https://{addr}").parse().unwrap();
    let upstream_config = crate::config::UpstreamConfig {
        url: url.clone(),
        tls: Some(crate::config::UpstreamTls {
            ca_file: Some(ca.ca_file()),
            server_name: None,
            client_cert: None,
        }),
        http2: false,
    };
    let connector = crate::upstream::connector(
        &upstream_config,
        &mut crate::upstream::SystemRoots::default(),
    )
    .unwrap();
    let pool: Http1Pool<Empty<Bytes>> = Http1Pool::new(connector);
    let (status, body, _) = send(&pool, &url, "HEAD", addr).await.unwrap();
    assert_eq!((status, body.len()), (200, 0));
    tokio::time::sleep(Duration::from_millis(30)).await;
    assert_eq!(send(&pool, &url, "GET", addr).await.unwrap().1, "ok");
    assert_eq!(connections.load(Ordering::SeqCst), 2);
}

/// After a burst, the connections at the bottom of the idle list are not left open once
/// the upstream has closed them: the end of a later response looks at the oldest.
#[tokio::test]
async fn the_oldest_idle_connection_is_closed_once_the_upstream_closed_it() {
    let up = upstream(vec![
        Step::AnswerThenCloseLater(OK),
        Step::Answer(vec![b"", OK]),
    ])
    .await;
    let (pool, url) = pool(up.addr);
    let (a, b) = tokio::join!(
        send(&pool, &url, "GET", up.addr),
        send(&pool, &url, "GET", up.addr)
    );
    assert_eq!(
        (a.unwrap().1, b.unwrap().1),
        (Bytes::from("ok"), Bytes::from("ok"))
    );
    assert_eq!(up.connections.load(Ordering::SeqCst), 2);
    assert_eq!(pool.direct_idle(), 2);
    tokio::time::sleep(Duration::from_millis(80)).await;
    // Takes the newest (open) connection; its end looks at the oldest (closed since).
    assert_eq!(send(&pool, &url, "GET", up.addr).await.unwrap().1, "ok");
    assert_eq!(pool.direct_idle(), 1);
    assert_eq!(up.connections.load(Ordering::SeqCst), 2);
}

/// The upstream time limit runs on a timer the connection keeps: moved earlier than the
/// previous request's limit, it still cuts a request that gets no answer at its own
/// limit, which is neither sent again nor leaves its connection to be reused.
#[tokio::test]
async fn an_answer_later_than_the_limit_is_a_timeout_and_its_connection_is_closed() {
    let up = upstream(vec![
        Step::Answer(vec![OK]),
        Step::Silent,
        Step::Answer(vec![OK]),
    ])
    .await;
    let (pool, url) = pool(up.addr);
    assert_eq!(send(&pool, &url, "GET", up.addr).await.unwrap().0, 200);
    cut_at_100_ms(&pool, &url, request("GET", up.addr)).await;
    assert_eq!(send(&pool, &url, "GET", up.addr).await.unwrap().0, 200);
    assert_eq!(up.requests.load(Ordering::SeqCst), 3, "nothing sent twice");
    assert_eq!(up.connections.load(Ordering::SeqCst), 2);
}

/// The kept timer fires while its connection is idle, past the previous limit; the next
/// request on that connection gets its own full limit.
#[tokio::test]
async fn a_limit_that_passed_while_the_connection_was_idle_does_not_cut_the_next_request() {
    let up = upstream(vec![Step::Answer(vec![OK])]).await;
    let (pool, url) = pool(up.addr);
    let limit = tokio::time::Instant::now() + Duration::from_millis(50);
    let response = pool.request(&url, request("GET", up.addr), limit).await;
    let body = response.unwrap().into_body().collect().await.unwrap();
    assert_eq!(body.to_bytes(), "ok");
    tokio::time::sleep(Duration::from_millis(150)).await;
    for _ in 0..2 {
        assert_eq!(send(&pool, &url, "GET", up.addr).await.unwrap().0, 200);
    }
    assert_eq!(up.connections.load(Ordering::SeqCst), 1);
}

/// A request with a body goes through hyper's connection, under the same limit.
#[tokio::test]
async fn a_request_with_a_body_that_gets_no_answer_in_time_is_a_timeout() {
    let up = upstream(vec![Step::Silent]).await;
    let (pool, url) = plain_pool::<Full<Bytes>>(up.addr);
    let post = Request::post("/r")
        .header(http::header::HOST, up.addr.to_string())
        .body(Full::new(Bytes::from_static(b"body")))
        .unwrap();
    cut_at_100_ms(&pool, &url, post).await;
    assert_eq!(pool.direct_idle(), 0);
}

/// Sends `req` with a limit 100 ms away, which it must not meet: a timeout, at the limit.
async fn cut_at_100_ms<B>(pool: &Http1Pool<B>, url: &Uri, req: Request<B>)
where
    B: hyper::body::Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let started = tokio::time::Instant::now();
    match pool
        .request(url, req, started + Duration::from_millis(100))
        .await
    {
        Err(PoolError::Timeout) => {}
        Ok(response) => panic!("answered: {response:?}"),
        Err(e) => panic!("{e:?}"),
    }
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(95) && took < Duration::from_secs(2),
        "cut after {took:?}"
    );
}

/// A test's upstream answer made at run time (the scripted upstream writes static bytes).
fn leaked(v: Vec<u8>) -> &'static [u8] {
    Box::leak(v.into_boxed_slice())
}

/// A response with a large head (the read buffer grew past `KEPT`, which an idle
/// connection does not keep) followed in the same write by bytes past its end: the
/// connection is not reused, as after a small head.
#[tokio::test]
async fn bytes_past_an_answer_with_a_large_head_keep_its_connection_out_of_the_pool() {
    for filler in [1_000usize, 40_000, 100_000] {
        let mut wire = b"HTTP/1.1 200 OK\r\nX-Big: ".to_vec();
        wire.extend(std::iter::repeat_n(b'a', filler));
        wire.extend_from_slice(
            b"\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nno",
        );
        let up = upstream(vec![Step::Answer(vec![leaked(wire)])]).await;
        let (pool, url) = pool(up.addr);
        let (_, body, _) = send(&pool, &url, "GET", up.addr).await.unwrap();
        assert_eq!(body, "ok");
        assert_eq!(
            pool.direct_idle(),
            0,
            "filler {filler}: pooled with unread bytes"
        );
    }
}

/// The same for a HEAD answer with a large head that (wrongly) carries a body, the rest
/// of which arrives a moment later: the next request, on a connection of its own, gets
/// its own answer, not what the upstream wrote after the first.
#[tokio::test]
async fn a_head_answer_with_a_large_head_and_a_stray_body_does_not_answer_the_next_request() {
    let mut first = b"HTTP/1.1 200 OK\r\nX-Big: ".to_vec();
    first.extend(std::iter::repeat_n(b'a', 40_000));
    first.extend_from_slice(b"\r\nContent-Length: 47\r\n\r\n");
    first.extend_from_slice(b"X"); // the first byte of the body the upstream sends for HEAD
    let rest: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nsmuggled";
    let up = upstream(vec![
        Step::Answer(vec![leaked(first), rest]),
        Step::Answer(vec![OK]),
    ])
    .await;
    let (pool, url) = pool(up.addr);
    let (status, body, _) = send(&pool, &url, "HEAD", up.addr).await.unwrap();
    assert_eq!((status, body.len()), (200, 0));
    let (_, second, _) = send(&pool, &url, "GET", up.addr).await.unwrap();
    assert_eq!(second, "ok", "the GET got another answer's bytes");
}

/// An answer without a body (to a HEAD, a 304) whose upstream sends one anyway, a
/// moment after the head, the next request made at once, before anything shows on the
/// idle connection: that request gets its own answer, not the body.
#[tokio::test]
async fn a_late_body_to_a_head_or_a_304_does_not_answer_the_next_request() {
    let cases: [(&str, &'static [u8], u16); 2] = [
        (
            "HEAD",
            b"HTTP/1.1 200 OK\r\nContent-Length: 44\r\n\r\n",
            200,
        ),
        (
            "GET",
            b"HTTP/1.1 304 Not Modified\r\nContent-Length: 44\r\n\r\n",
            304,
        ),
    ];
    for (method, head, status) in cases {
        let up = upstream(vec![
            Step::AnswerThenStray(head, b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nstolen"),
            Step::Answer(vec![OK]),
        ])
        .await;
        let (pool, url) = pool(up.addr);
        let (got, body, _) = send(&pool, &url, method, up.addr).await.unwrap();
        assert_eq!((got, body.len()), (status, 0));
        assert_eq!(
            send(&pool, &url, "GET", up.addr).await.unwrap().1,
            "ok",
            "{method}"
        );
    }
}
