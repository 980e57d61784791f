//! The gateway's TLS listener, started in-process with certificates from a test CA and
//! reached by real rustls clients speaking HTTP/1.1 or HTTP/2 (ALPN), and its plain
//! listener speaking h2c: full DPoP requests reach the upstream with an `https` `htu`;
//! client certificates are verified, forwarded as identity headers and bound to tokens
//! (RFC 8705); the certificate is reloaded without dropping connections; handshakes are
//! bounded in time.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{AUD, Caller, Running, config_text, quoted};
use dpop_core::jwt::CertThumbprint;
use dpop_gateway::{Gateway, GatewayConfig, GatewayError};
use dpop_test::{CertFiles, MockIssuer, TestCa, TestUpstream, free_port};
use http::{Request, StatusCode};
use http_body_util::Empty;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

/// `[tls]` for `server`, with `more` lines in the section.
fn tls_section(server: &CertFiles, more: &str) -> String {
    format!(
        "[tls]\ncert_file = {:?}\nkey_file = {:?}\n{more}",
        server.cert_file, server.key_file
    )
}

/// A caller whose token is bound to its key and, with `cert`, to that certificate too.
fn caller(issuer: &MockIssuer, cert: Option<&CertFiles>) -> Caller {
    Caller::minted(issuer, |key, spec| {
        if let Some(cert) = cert {
            let x5t = CertThumbprint::of_der(&cert.cert_der);
            spec.extra.insert(
                "cnf".into(),
                serde_json::json!({"jkt": key.thumbprint().as_str(), "x5t#S256": x5t.as_str()}),
            );
        }
    })
}

/// A rustls client trusting `ca`, offering `alpn`, presenting `cert` if given.
fn client_config(
    ca: &TestCa,
    cert: Option<&CertFiles>,
    alpn: &[&[u8]],
) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from(ca.cert_der().to_vec()))
        .unwrap();
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots);
    let mut config = match cert {
        None => builder.with_no_client_auth(),
        Some(c) => builder
            .with_client_auth_cert(
                vec![CertificateDer::from(c.cert_der.clone())],
                PrivateKeyDer::from_pem_slice(c.key_pem.as_bytes()).unwrap(),
            )
            .unwrap(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

async fn connect(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    tokio_rustls::TlsConnector::from(config)
        .connect(ServerName::try_from("127.0.0.1").unwrap(), tcp)
        .await
}

/// The DER of the certificate the server presented.
fn served_cert(stream: &TlsStream<TcpStream>) -> Vec<u8> {
    stream.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

type H1 = http1::SendRequest<Empty<Bytes>>;
type H2 = http2::SendRequest<Empty<Bytes>>;

async fn h1<T>(io: T) -> H1
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (send, conn) = http1::handshake(TokioIo::new(io)).await.unwrap();
    tokio::spawn(conn);
    send
}

async fn h2<T>(io: T) -> Result<H2, hyper::Error>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (send, conn) = http2::handshake(TokioExecutor::new(), TokioIo::new(io)).await?;
    tokio::spawn(conn);
    Ok(send)
}

async fn status1(send: &mut H1, req: Request<Empty<Bytes>>) -> StatusCode {
    send.ready().await.unwrap();
    send.send_request(req).await.unwrap().status()
}

async fn status2(send: &mut H2, req: Request<Empty<Bytes>>) -> StatusCode {
    send.ready().await.unwrap();
    send.send_request(req).await.unwrap().status()
}

/// A TLS server certificate for loopback.
fn server_cert(ca: &TestCa) -> CertFiles {
    ca.server(&["127.0.0.1", "localhost"])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_and_http2_over_tls_reach_the_upstream_with_an_https_htu() {
    let issuer = MockIssuer::start().await.unwrap();
    let upstream = TestUpstream::start().await.unwrap();
    let ca = TestCa::new("gateway test ca");
    let server = server_cert(&ca);
    let gw = Running::start(&issuer, &upstream.url(), &tls_section(&server, "")).await;
    let caller = caller(&issuer, None);
    let url = gw.https("/v1/items?x=1");

    // HTTP/1.1 (ALPN http/1.1).
    let tls = connect(gw.addr, client_config(&ca, None, &[b"http/1.1"]))
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    assert_eq!(served_cert(&tls), server.cert_der);
    let mut send = h1(tls).await;
    let mut req = caller.request("GET", "/v1/items?x=1", &url);
    req.headers_mut()
        .insert("host", gw.addr.to_string().parse().unwrap());
    assert_eq!(status1(&mut send, req).await, StatusCode::OK);
    // A proof made for http:// is refused on the TLS listener.
    let mut req = caller.request("GET", "/v1/items", &format!("http://{}/v1/items", gw.addr));
    req.headers_mut()
        .insert("host", gw.addr.to_string().parse().unwrap());
    assert_eq!(status1(&mut send, req).await, StatusCode::UNAUTHORIZED);

    // HTTP/2 (ALPN h2), on one connection: two requests, then a wrong scheme.
    let tls = connect(gw.addr, client_config(&ca, None, &[b"h2", b"http/1.1"]))
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let mut send = h2(tls).await.unwrap();
    assert_eq!(
        status2(&mut send, caller.request("GET", &url, &url)).await,
        StatusCode::OK
    );
    let post = gw.https("/v1/orders");
    assert_eq!(
        status2(&mut send, caller.request("POST", &post, &post)).await,
        StatusCode::OK
    );
    let http_htu = format!("http://{}/v1/items", gw.addr);
    assert_eq!(
        status2(
            &mut send,
            caller.request("GET", &gw.https("/v1/items"), &http_htu)
        )
        .await,
        StatusCode::UNAUTHORIZED
    );
    // An :authority this gateway does not serve is refused before any proof check, as
    // a Host would be over HTTP/1.1, even with a proof made for that host.
    let other = "https://other.example/v1/items";
    assert_eq!(
        status2(&mut send, caller.request("GET", other, other)).await,
        StatusCode::BAD_REQUEST
    );
    let tls = connect(gw.addr, client_config(&ca, None, &[b"http/1.1"]))
        .await
        .unwrap();
    let mut send1 = h1(tls).await;
    let mut req = caller.request("GET", "/v1/items", other);
    req.headers_mut()
        .insert("host", "other.example".parse().unwrap());
    assert_eq!(status1(&mut send1, req).await, StatusCode::BAD_REQUEST);

    let seen = upstream.requests();
    assert_eq!(seen.len(), 3, "{seen:?}");
    assert_eq!(seen[0].path, "/v1/items?x=1");
    assert_eq!(seen[2].method, "POST");
    for r in &seen {
        assert_eq!(r.header("x-forwarded-proto"), Some("https"), "{r:?}");
        assert_eq!(
            r.header("x-dpop-jkt"),
            Some(caller.key.thumbprint().as_str())
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_is_spoken_only_when_enabled() {
    let issuer = MockIssuer::start().await.unwrap();
    let upstream = TestUpstream::start().await.unwrap();
    let caller = caller(&issuer, None);

    let gw = Running::start(&issuer, &upstream.url(), "h2c = true\n").await;
    let url = format!("http://{}/v1/items", gw.addr);
    let mut send = h2(TcpStream::connect(gw.addr).await.unwrap())
        .await
        .unwrap();
    assert_eq!(
        status2(&mut send, caller.request("GET", &url, &url)).await,
        StatusCode::OK
    );
    // HTTP/1.1 still works beside it, with upgrades allowed through to the layer.
    let mut send = h1(TcpStream::connect(gw.addr).await.unwrap()).await;
    let mut req = caller.request("GET", "/v1/items", &url);
    req.headers_mut()
        .insert("host", gw.addr.to_string().parse().unwrap());
    assert_eq!(status1(&mut send, req).await, StatusCode::OK);
    assert_eq!(upstream.requests().len(), 2);

    // Without h2c the prior-knowledge preface is not HTTP/1.1: no request gets through.
    let plain = Running::start(&issuer, &upstream.url(), "").await;
    let url = format!("http://{}/v1/items", plain.addr);
    let refused = match h2(TcpStream::connect(plain.addr).await.unwrap()).await {
        Err(_) => true,
        Ok(mut send) => match send.ready().await {
            Err(_) => true,
            Ok(()) => send
                .send_request(caller.request("GET", &url, &url))
                .await
                .is_err(),
        },
    };
    assert!(refused, "h2c spoken although not enabled");
    assert_eq!(upstream.requests().len(), 2, "nothing more forwarded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn required_client_certificates_are_verified_and_forwarded() {
    let issuer = MockIssuer::start().await.unwrap();
    let upstream = TestUpstream::start().await.unwrap();
    let ca = TestCa::new("gateway test ca");
    let server = server_cert(&ca);
    let workload = ca.client("workload-1");
    let rest = tls_section(
        &server,
        &format!(
            "client_ca_file = {:?}\nclient_auth = \"required\"\n",
            ca.ca_file()
        ),
    );
    let gw = Running::start(&issuer, &upstream.url(), &rest).await;
    let caller = caller(&issuer, None);
    let url = gw.https("/v1/items");

    // Without a certificate: no request gets through (TLS 1.3 reports the refusal
    // after the client's side of the handshake, so look at the request).
    let failed = match connect(gw.addr, client_config(&ca, None, &[b"http/1.1"])).await {
        Err(_) => true,
        Ok(tls) => {
            let (mut send, conn) = http1::handshake(TokioIo::new(tls)).await.unwrap();
            tokio::spawn(conn);
            let mut req = caller.request("GET", "/v1/items", &url);
            req.headers_mut()
                .insert("host", gw.addr.to_string().parse().unwrap());
            send.send_request(req).await.is_err()
        }
    };
    assert!(failed, "a handshake without a client certificate must fail");
    // A certificate from another CA fails too.
    let stranger = TestCa::new("other ca").client("intruder");
    let failed = match connect(gw.addr, client_config(&ca, Some(&stranger), &[b"h2"])).await {
        Err(_) => true,
        Ok(tls) => match h2(tls).await {
            Err(_) => true,
            Ok(mut send) => send
                .send_request(caller.request("GET", &url, &url))
                .await
                .is_err(),
        },
    };
    assert!(failed, "a certificate of another CA must be refused");
    assert!(upstream.requests().is_empty());

    // With the certificate: forwarded with its identity; forged headers are removed.
    let tls = connect(gw.addr, client_config(&ca, Some(&workload), &[b"http/1.1"]))
        .await
        .unwrap();
    let mut send = h1(tls).await;
    let mut req = caller.request("GET", "/v1/items", &url);
    let h = req.headers_mut();
    h.insert("host", gw.addr.to_string().parse().unwrap());
    h.insert("x-dpop-client-cert-subject", "CN=admin".parse().unwrap());
    h.insert("x_dpop_client_cert_sha256", "forged".parse().unwrap());
    h.insert("x-dpop-client-cert-sha256", "forged".parse().unwrap());
    assert_eq!(status1(&mut send, req).await, StatusCode::OK);
    let seen = upstream.requests();
    assert_eq!(seen.len(), 1);
    let thumbprint = CertThumbprint::of_der(&workload.cert_der);
    assert_eq!(
        seen[0].header_values("x-dpop-client-cert-sha256"),
        [thumbprint.as_str()]
    );
    assert_eq!(
        seen[0].header_values("x-dpop-client-cert-subject"),
        ["CN=workload-1"]
    );
    assert!(
        seen[0].header("x_dpop_client_cert_sha256").is_none(),
        "{:?}",
        seen[0]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_bound_tokens_need_their_certificate() {
    let issuer = MockIssuer::start().await.unwrap();
    let upstream = TestUpstream::start().await.unwrap();
    let ca = TestCa::new("gateway test ca");
    let server = server_cert(&ca);
    let workload = ca.client("workload-1");
    let other = ca.client("workload-2");
    let rest = tls_section(
        &server,
        &format!(
            "client_ca_file = {:?}\nclient_auth = \"optional\"\n\n\
             [[routes]]\npath_prefix = \"/mtls\"\nclient_cert = \"required\"\n",
            ca.ca_file()
        ),
    );
    let gw = Running::start(&issuer, &upstream.url(), &rest).await;
    let bound = caller(&issuer, Some(&workload));
    let plain = caller(&issuer, None);
    let url = gw.https("/v1/items");
    let mtls = gw.https("/mtls/x");

    // The right certificate.
    let tls = connect(gw.addr, client_config(&ca, Some(&workload), &[b"h2"]))
        .await
        .unwrap();
    let mut send = h2(tls).await.unwrap();
    assert_eq!(
        status2(&mut send, bound.request("GET", &url, &url)).await,
        StatusCode::OK
    );
    assert_eq!(
        status2(&mut send, plain.request("GET", &mtls, &mtls)).await,
        StatusCode::OK
    );
    assert_eq!(upstream.requests().len(), 2);

    // Another certificate of the same CA: 401 invalid_token.
    let tls = connect(gw.addr, client_config(&ca, Some(&other), &[b"h2"]))
        .await
        .unwrap();
    let mut send = h2(tls).await.unwrap();
    send.ready().await.unwrap();
    let r = send
        .send_request(bound.request("GET", &url, &url))
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let challenge = r.headers()["www-authenticate"].to_str().unwrap();
    assert!(
        challenge.contains(r#"error="invalid_token""#)
            && challenge.contains("bound to a client certificate"),
        "{challenge}"
    );

    // No certificate (optional client auth): 401 too, and the mTLS route says 400.
    let tls = connect(gw.addr, client_config(&ca, None, &[b"h2"]))
        .await
        .unwrap();
    let mut send = h2(tls).await.unwrap();
    assert_eq!(
        status2(&mut send, bound.request("GET", &url, &url)).await,
        StatusCode::UNAUTHORIZED
    );
    send.ready().await.unwrap();
    let r = send
        .send_request(plain.request("GET", &mtls, &mtls))
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let challenge = r.headers()["www-authenticate"].to_str().unwrap();
    assert!(
        challenge.contains(r#"error="invalid_request""#),
        "{challenge}"
    );
    // An unbound token without a certificate is fine elsewhere.
    assert_eq!(
        status2(&mut send, plain.request("GET", &url, &url)).await,
        StatusCode::OK
    );
    assert_eq!(
        upstream.requests().len(),
        3,
        "refused requests were not forwarded"
    );
}

/// Overwrites `to`'s files with `from`'s (keeping `to`'s paths).
fn replace_files(from: &CertFiles, to: &CertFiles) {
    std::fs::write(&to.key_file, &from.key_pem).unwrap();
    std::fs::write(&to.cert_file, &from.cert_pem).unwrap();
}

async fn served_now(addr: SocketAddr, ca: &TestCa) -> Vec<u8> {
    served_cert(
        &connect(addr, client_config(ca, None, &[b"http/1.1"]))
            .await
            .unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_certificate_is_reloaded_without_dropping_connections() {
    let issuer = MockIssuer::start().await.unwrap();
    let upstream = TestUpstream::start().await.unwrap();
    let ca = TestCa::new("gateway test ca");
    let first = server_cert(&ca);
    let gw = Running::start(
        &issuer,
        &upstream.url(),
        &tls_section(&first, "reload_interval_secs = 1\n"),
    )
    .await;
    let caller = caller(&issuer, None);
    let url = gw.https("/v1/items");
    let get = |caller: &Caller| {
        let mut req = caller.request("GET", "/v1/items", &url);
        req.headers_mut()
            .insert("host", gw.addr.to_string().parse().unwrap());
        req
    };

    let tls = connect(gw.addr, client_config(&ca, None, &[b"http/1.1"]))
        .await
        .unwrap();
    assert_eq!(served_cert(&tls), first.cert_der);
    let mut kept = h1(tls).await;
    assert_eq!(status1(&mut kept, get(&caller)).await, StatusCode::OK);

    // A new certificate (new serial, new key) in the same files.
    let second = server_cert(&ca);
    assert_ne!(second.cert_der, first.cert_der);
    replace_files(&second, &first);
    let deadline = Instant::now() + Duration::from_secs(10);
    while served_now(gw.addr, &ca).await != second.cert_der {
        assert!(
            Instant::now() < deadline,
            "the new certificate was not picked up"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The connection opened before the reload still works.
    assert_eq!(status1(&mut kept, get(&caller)).await, StatusCode::OK);

    // A mismatched pair (the third certificate with the second's key) is refused: the
    // second stays in use.
    let third = server_cert(&ca);
    std::fs::write(&first.cert_file, &third.cert_pem).unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(served_now(gw.addr, &ca).await, second.cert_der);
    // Unparsable files too.
    std::fs::write(&first.key_file, "not a key").unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(served_now(gw.addr, &ca).await, second.cert_der);
    assert_eq!(status1(&mut kept, get(&caller)).await, StatusCode::OK);
    // Repaired: picked up.
    std::fs::write(&first.key_file, &third.key_pem).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while served_now(gw.addr, &ca).await != third.cert_der {
        assert!(
            Instant::now() < deadline,
            "the repaired pair was not picked up"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_client_is_dropped_after_the_handshake_timeout() {
    let issuer = MockIssuer::start().await.unwrap();
    let upstream = TestUpstream::start().await.unwrap();
    let ca = TestCa::new("gateway test ca");
    let server = server_cert(&ca);
    let rest = format!(
        "[limits]\nhandshake_timeout_secs = 1\nmax_connections = 1\n\n{}",
        tls_section(&server, "")
    );
    let gw = Running::start(&issuer, &upstream.url(), &rest).await;
    let started = Instant::now();
    let mut silent = TcpStream::connect(gw.addr).await.unwrap();
    // The one connection slot is the silent client's: a second client waits for it.
    let waiting = tokio::spawn({
        let config = client_config(&ca, None, &[b"http/1.1"]);
        let addr = gw.addr;
        async move {
            let tls = connect(addr, config).await;
            (tls.is_ok(), Instant::now())
        }
    });
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(5), silent.read(&mut buf))
        .await
        .expect("the silent connection was not closed")
        .unwrap_or(0);
    assert_eq!(n, 0, "closed without a byte");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900),
        "closed too early: {took:?}"
    );
    let (ok, at) = waiting.await.unwrap();
    assert!(ok, "the next client is served once the slot is free");
    assert!(at.duration_since(started) >= Duration::from_millis(900));
    let _ = silent.shutdown().await;
}

#[tokio::test]
async fn bad_certificate_files_are_configuration_errors_naming_the_file() {
    let issuer = MockIssuer::start().await.unwrap();
    let upstream = TestUpstream::start().await.unwrap();
    let ca = TestCa::new("gateway test ca");
    let a = server_cert(&ca);
    let b = server_cert(&ca);
    let missing = ca.dir().join("missing.pem");
    let garbage = ca.dir().join("garbage.pem");
    std::fs::write(&garbage, "hello").unwrap();
    // Private, so that its content is what is refused when it is named as a key.
    std::fs::set_permissions(
        &garbage,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let cases: Vec<(String, String)> = vec![
        (
            format!(
                "[tls]\ncert_file = {:?}\nkey_file = {:?}\n",
                a.cert_file, b.key_file
            ),
            format!("{}: the private key does not match", b.key_file.display()),
        ),
        (
            format!(
                "[tls]\ncert_file = {missing:?}\nkey_file = {:?}\n",
                a.key_file
            ),
            format!("cannot read {}", missing.display()),
        ),
        (
            format!(
                "[tls]\ncert_file = {garbage:?}\nkey_file = {:?}\n",
                a.key_file
            ),
            format!("{}: no CERTIFICATE block", garbage.display()),
        ),
        (
            format!(
                "[tls]\ncert_file = {:?}\nkey_file = {garbage:?}\n",
                a.cert_file
            ),
            format!("{}: no private key", garbage.display()),
        ),
        (
            tls_section(&a, &format!("client_ca_file = {garbage:?}\n")),
            format!("{}: no CERTIFICATE block", garbage.display()),
        ),
    ];
    for (rest, expected) in cases {
        let text = config_text(free_port(), &issuer, &quoted(&upstream.url()), &rest);
        let e = match Gateway::bind(GatewayConfig::from_toml(&text).unwrap()).await {
            Err(e) => e,
            Ok(_) => panic!("{rest}: accepted"),
        };
        assert!(matches!(e, GatewayError::Config(_)), "{e:?}");
        assert!(e.to_string().contains(&expected), "{rest}: {e}");
    }
    // Settings refused at load.
    for (rest, expected) in [
        ("[tls]\ncert_file = \"c.pem\"\n", "tls.key_file"),
        (
            "h2c = true\n[tls]\ncert_file = \"c\"\nkey_file = \"k\"\n",
            "h2c",
        ),
        (
            "[tls]\ncert_file = \"c\"\nkey_file = \"k\"\nclient_auth = \"optional\"\n",
            "client_ca_file",
        ),
        (
            "[tls]\ncert_file = \"c\"\nkey_file = \"k\"\nclient_ca_file = \"ca\"\nclient_auth = \"maybe\"\n",
            "client_auth",
        ),
        (
            "[[routes]]\npath_prefix = \"/x\"\nclient_cert = \"required\"\n",
            "client_ca_file",
        ),
        (
            "[limits]\nmax_concurrent_streams = 0\n",
            "max_concurrent_streams",
        ),
        (
            "[limits]\nhandshake_timeout_secs = 0\n",
            "handshake_timeout_secs",
        ),
    ] {
        let text = config_text(free_port(), &issuer, &quoted(&upstream.url()), rest);
        let e = GatewayConfig::from_toml(&text).unwrap_err().to_string();
        assert!(e.contains(expected), "{rest}: {e}");
    }
    // An http:// public URL on a TLS listener no proxy fronts.
    let text = format!(
        "listen = \"127.0.0.1:1\"\nupstream = \"{}\"\nissuer = \"{}\"\naudience = \"{AUD}\"\n\
         public_url = \"http://api.example.com\"\n[tls]\ncert_file = \"c\"\nkey_file = \"k\"\n",
        upstream.url(),
        issuer.url()
    );
    let e = GatewayConfig::from_toml(&text).unwrap_err().to_string();
    assert!(e.contains("public_url") && e.contains("https"), "{e}");
}

/// HTTP/2 has no header read timeout: a client that completes the handshake with ALPN
/// `h2` and then sends nothing must not keep its connection slot for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_http2_connection_does_not_keep_its_slot() {
    let issuer = MockIssuer::start().await.unwrap();
    let upstream = TestUpstream::start().await.unwrap();
    let ca = TestCa::new("silent ca");
    let server = server_cert(&ca);
    let rest = format!(
        "{}\n[limits]\nmax_connections = 1\nhandshake_timeout_secs = 1\n",
        tls_section(&server, "")
    );
    let gw = Running::start(&issuer, &upstream.url(), &rest).await;
    let silent = connect(gw.addr, client_config(&ca, None, &[b"h2"]))
        .await
        .unwrap();
    assert_eq!(silent.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let caller = caller(&issuer, None);
    let url = gw.https("/v1/items");
    let next = async {
        let stream = connect(gw.addr, client_config(&ca, None, &[b"http/1.1"]))
            .await
            .unwrap();
        let mut send = h1(stream).await;
        let mut req = caller.request("GET", "/v1/items", &url);
        req.headers_mut()
            .insert("host", gw.addr.to_string().parse().unwrap());
        status1(&mut send, req).await
    };
    let status = tokio::time::timeout(Duration::from_secs(8), next).await;
    assert_eq!(
        status.ok(),
        Some(StatusCode::OK),
        "a silent HTTP/2 connection holds the only slot"
    );
    drop(silent);
}

/// True when a handshake with `cert` and a request over it get through to the gateway.
async fn admitted(
    addr: SocketAddr,
    ca: &TestCa,
    cert: &CertFiles,
    caller: &Caller,
    url: &str,
) -> bool {
    let Ok(tls) = connect(addr, client_config(ca, Some(cert), &[b"http/1.1"])).await else {
        return false;
    };
    let Ok((mut send, conn)) = http1::handshake(TokioIo::new(tls)).await else {
        return false;
    };
    tokio::spawn(conn);
    let mut req = caller.request("GET", "/v1/items", url);
    req.headers_mut()
        .insert("host", addr.to_string().parse().unwrap());
    matches!(send.send_request(req).await, Ok(r) if r.status() == StatusCode::OK)
}

/// The client CA bundle is re-read like the certificate: a CA taken out of it is
/// refused from the next handshake on, a new one admitted, and a bad bundle changes
/// nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_cas_are_reloaded() {
    let issuer = MockIssuer::start().await.unwrap();
    let upstream = TestUpstream::start().await.unwrap();
    let ca = TestCa::new("gateway test ca");
    let server = server_cert(&ca);
    let (old_ca, new_ca) = (
        TestCa::new("retiring client ca"),
        TestCa::new("new client ca"),
    );
    let (old_client, new_client) = (old_ca.client("old-workload"), new_ca.client("new-workload"));
    let bundle = std::env::temp_dir().join(format!("dpop-client-cas-{}.pem", std::process::id()));
    std::fs::copy(old_ca.ca_file(), &bundle).unwrap();
    let rest = tls_section(
        &server,
        &format!(
            "client_ca_file = {bundle:?}\nclient_auth = \"required\"\nreload_interval_secs = 1\n"
        ),
    );
    let gw = Running::start(&issuer, &upstream.url(), &rest).await;
    let caller = caller(&issuer, None);
    let url = gw.https("/v1/items");
    assert!(admitted(gw.addr, &ca, &old_client, &caller, &url).await);
    assert!(!admitted(gw.addr, &ca, &new_client, &caller, &url).await);

    std::fs::copy(new_ca.ca_file(), &bundle).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !admitted(gw.addr, &ca, &new_client, &caller, &url).await {
        assert!(
            Instant::now() < deadline,
            "the new client CA was not picked up"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        !admitted(gw.addr, &ca, &old_client, &caller, &url).await,
        "a client of the CA taken out of the bundle still gets in"
    );

    // A bundle that is not PEM: refused, the CAs in use stay.
    std::fs::write(&bundle, "not a certificate").unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(admitted(gw.addr, &ca, &new_client, &caller, &url).await);
    assert!(!admitted(gw.addr, &ca, &old_client, &caller, &url).await);
    let _ = std::fs::remove_file(&bundle);
}
