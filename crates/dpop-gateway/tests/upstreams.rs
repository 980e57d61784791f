//! Upstream connections through real TLS handshakes: an https upstream with a private CA,
//! a server name override, client certificates (mutual TLS), HTTP/2 over TLS and h2c, an
//! upstream per route; and what stops the gateway at start-up (a certificate that does
//! not verify, a key that does not match, an upstream without HTTP/2) or turns a request
//! into 502 (a refused handshake).

mod common;

use std::net::SocketAddr;
use std::path::Path;

use common::{Caller, Running, quoted};
use dpop_gateway::GatewayError;
use dpop_test::{MockIssuer, TestCa, TestUpstream, free_port};

/// `path` as a TOML string.
fn toml_path(path: &Path) -> String {
    format!("{:?}", path.display().to_string())
}

/// `{ url = "URL", ca_file = "CA_FILE"MORE }`: an upstream trusting the CAs in `ca_file`,
/// with `more` settings (each after a comma).
fn trusting(url: &str, ca_file: &Path, more: &str) -> String {
    format!(
        "{{ url = \"{url}\", ca_file = {}{more} }}",
        toml_path(ca_file)
    )
}

/// An https upstream with a certificate for `names` from `ca`.
async fn https_upstream(ca: &TestCa, names: &[&str]) -> TestUpstream {
    TestUpstream::builder()
        .tls(&ca.server(names))
        .start()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_upstream_with_a_private_ca_gets_the_request() {
    let issuer = MockIssuer::start().await.unwrap();
    let ca = TestCa::new("upstream ca");
    let upstream = https_upstream(&ca, &["127.0.0.1"]).await;
    let gw = Running::try_with_upstream(
        &issuer,
        &format!(
            "[upstream]\nurl = \"{}/api\"\nca_file = {}",
            upstream.url(),
            toml_path(&ca.ca_file())
        ),
        "",
    )
    .await
    .unwrap();
    let r = Caller::new(&issuer).get(&gw, "/v1/items?page=2").await;
    assert_eq!(r.status, 200, "{r:?}");
    let seen = upstream.last_request().unwrap();
    assert_eq!(seen.path, "/api/v1/items?page=2");
    assert_eq!(seen.version, "HTTP/1.1");
    assert!(seen.header("x-dpop-subject").is_some(), "{seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_certificate_from_an_unknown_ca_stops_the_start() {
    let issuer = MockIssuer::start().await.unwrap();
    let ca = TestCa::new("upstream ca");
    let upstream = https_upstream(&ca, &["127.0.0.1"]).await;
    // The system's roots do not know the private CA.
    let e = Running::try_with_upstream(&issuer, &quoted(&upstream.url()), "")
        .await
        .err()
        .expect("refused");
    assert!(matches!(e, GatewayError::Upstream(_)), "{e:?}");
    let e = e.to_string();
    assert!(e.contains(&upstream.url()), "names the upstream: {e}");
    assert!(
        e.contains("certificate") && e.contains("UnknownIssuer"),
        "{e}"
    );
    // Another CA's file does not help either.
    let other = TestCa::new("other ca");
    let e = Running::try_with_upstream(
        &issuer,
        &trusting(&upstream.url(), &other.ca_file(), ""),
        "",
    )
    .await
    .err()
    .expect("refused")
    .to_string();
    assert!(
        e.contains("certificate") && e.contains("UnknownIssuer"),
        "{e}"
    );
    assert_eq!(upstream.request_count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_name_sets_the_name_the_certificate_must_carry() {
    let issuer = MockIssuer::start().await.unwrap();
    let ca = TestCa::new("upstream ca");
    let upstream = https_upstream(&ca, &["api.internal"]).await;
    let ca_file = ca.ca_file();
    let gw = Running::try_with_upstream(
        &issuer,
        &trusting(
            &upstream.url(),
            &ca_file,
            ", server_name = \"api.internal\"",
        ),
        "",
    )
    .await
    .unwrap();
    let r = Caller::new(&issuer).get(&gw, "/named").await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(upstream.last_request().unwrap().path, "/named");

    // Without it, the certificate is checked against 127.0.0.1 and does not match.
    let e = Running::try_with_upstream(&issuer, &trusting(&upstream.url(), &ca_file, ""), "")
        .await
        .err()
        .expect("refused")
        .to_string();
    assert!(e.contains(&upstream.url()), "{e}");
    assert!(e.contains("certificate not valid for name"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_reaches_an_upstream_that_requires_one() {
    let issuer = MockIssuer::start().await.unwrap();
    let server_ca = TestCa::new("upstream ca");
    let client_ca = TestCa::new("mesh ca");
    let upstream = TestUpstream::builder()
        .tls(&server_ca.server(&["127.0.0.1"]))
        .require_client_cert(&client_ca)
        .start()
        .await
        .unwrap();
    let client = client_ca.client("gateway");
    let ca_file = server_ca.ca_file();
    let gw = Running::try_with_upstream(
        &issuer,
        &format!(
            "[upstream]\nurl = \"{}\"\nca_file = {}\nclient_cert_file = {}\nclient_key_file = {}",
            upstream.url(),
            toml_path(&ca_file),
            toml_path(&client.cert_file),
            toml_path(&client.key_file)
        ),
        "",
    )
    .await
    .unwrap();
    let caller = Caller::new(&issuer);
    let r = caller.get(&gw, "/mtls").await;
    assert_eq!(r.status, 200, "{r:?}");
    let seen = upstream.last_request().unwrap();
    assert_eq!(
        seen.client_cert.as_deref(),
        Some(client.cert_der.as_slice())
    );

    // Without a client certificate the upstream refuses the handshake: 502, and the
    // cause stays in the log.
    let gw = Running::try_with_upstream(&issuer, &trusting(&upstream.url(), &ca_file, ""), "")
        .await
        .unwrap();
    let r = caller.get(&gw, "/no-cert").await;
    assert_eq!(r.status, 502, "{r:?}");
    assert!(r.body.is_empty(), "no detail in the body: {r:?}");
    assert_eq!(upstream.request_count(), 1, "nothing more reached it");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unusable_certificate_and_key_files_are_configuration_errors() {
    let issuer = MockIssuer::start().await.unwrap();
    let ca = TestCa::new("mesh ca");
    let (a, b) = (ca.client("a"), ca.client("b"));
    let url = "https://127.0.0.1:1";
    let with = |cert: &Path, key: &Path| {
        let files = format!(
            ", client_cert_file = {}, client_key_file = {}",
            toml_path(cert),
            toml_path(key)
        );
        trusting(url, &ca.ca_file(), &files)
    };
    let expect_config = |r: Result<Running, GatewayError>| match r {
        Err(GatewayError::Config(m)) => m,
        Err(other) => panic!("not a configuration error: {other:?}"),
        Ok(_) => panic!("accepted"),
    };
    // A key that is not the certificate's.
    let e = expect_config(
        Running::try_with_upstream(&issuer, &with(&a.cert_file, &b.key_file), "").await,
    );
    assert!(
        e.contains("client_key_file") && e.contains(&b.key_file.display().to_string()),
        "{e}"
    );
    assert!(e.contains("does not match the certificate"), "{e}");
    // A key file holding a certificate (private, so its content is what is refused), a
    // certificate file holding a key.
    let cert_as_key = ca.dir().join("cert-as-key.pem");
    std::fs::write(&cert_as_key, &a.cert_pem).unwrap();
    std::fs::set_permissions(
        &cert_as_key,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let e = expect_config(
        Running::try_with_upstream(&issuer, &with(&a.cert_file, &cert_as_key), "").await,
    );
    assert!(
        e.contains("client_key_file") && e.contains("private key"),
        "{e}"
    );
    let e = expect_config(
        Running::try_with_upstream(&issuer, &with(&a.key_file, &a.key_file), "").await,
    );
    assert!(
        e.contains("client_cert_file") && e.contains("no CERTIFICATE block"),
        "{e}"
    );
    // A CA file that is missing, or is no certificate.
    let missing = ca.dir().join("missing.pem");
    let e =
        expect_config(Running::try_with_upstream(&issuer, &trusting(url, &missing, ""), "").await);
    assert!(e.contains("ca_file") && e.contains("missing.pem"), "{e}");
    let e = expect_config(
        Running::try_with_upstream(&issuer, &trusting(url, &a.key_file, ""), "").await,
    );
    assert!(
        e.contains("ca_file") && e.contains("no CERTIFICATE block"),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_upstreams_over_tls_and_h2c() {
    let issuer = MockIssuer::start().await.unwrap();
    let caller = Caller::new(&issuer);
    let ca = TestCa::new("upstream ca");
    let tls = TestUpstream::builder()
        .tls(&ca.server(&["127.0.0.1"]))
        .http2_only()
        .start()
        .await
        .unwrap();
    let gw = Running::try_with_upstream(
        &issuer,
        &trusting(&tls.url(), &ca.ca_file(), ", http2 = true"),
        "",
    )
    .await
    .unwrap();
    for path in ["/h2/a", "/h2/b"] {
        let r = caller.get(&gw, path).await;
        assert_eq!(r.status, 200, "{r:?}");
    }
    let seen = tls.requests();
    assert_eq!(seen.len(), 2);
    assert!(seen.iter().all(|r| r.version == "HTTP/2.0"), "{seen:?}");
    assert!(seen[0].header("x-dpop-jkt").is_some(), "{seen:?}");

    let h2c = TestUpstream::builder().http2_only().start().await.unwrap();
    let gw = Running::try_with_upstream(
        &issuer,
        &format!("{{ url = \"{}\", http2 = true }}", h2c.url()),
        "",
    )
    .await
    .unwrap();
    let r = caller.get(&gw, "/h2c").await;
    assert_eq!(r.status, 200, "{r:?}");
    let seen = h2c.last_request().unwrap();
    assert_eq!(
        (seen.path.as_str(), seen.version.as_str()),
        ("/h2c", "HTTP/2.0")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_against_an_http1_only_upstream_stops_the_start() {
    let issuer = MockIssuer::start().await.unwrap();
    let ca = TestCa::new("upstream ca");
    let tls = https_upstream(&ca, &["127.0.0.1"]).await;
    let r = Running::try_with_upstream(
        &issuer,
        &trusting(&tls.url(), &ca.ca_file(), ", http2 = true"),
        "",
    )
    .await;
    let Err(GatewayError::Upstream(e)) = r else {
        panic!("not refused as an upstream error");
    };
    assert!(
        e.contains(&tls.url()) && e.contains("does not speak HTTP/2"),
        "{e}"
    );

    let plain = TestUpstream::start().await.unwrap();
    let r = Running::try_with_upstream(
        &issuer,
        &format!("{{ url = \"{}\", http2 = true }}", plain.url()),
        "",
    )
    .await;
    let Err(GatewayError::Upstream(e)) = r else {
        panic!("not refused as an upstream error");
    };
    assert!(
        e.contains(&plain.url()) && e.contains("does not speak HTTP/2"),
        "{e}"
    );
    assert_eq!(tls.request_count() + plain.request_count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_upstream_is_a_warning_then_502() {
    let issuer = MockIssuer::start().await.unwrap();
    let ca = TestCa::new("upstream ca");
    let port = free_port();
    let gw = Running::try_with_upstream(
        &issuer,
        &trusting(
            &format!("https://127.0.0.1:{port}"),
            &ca.ca_file(),
            ", http2 = true",
        ),
        "",
    )
    .await
    .unwrap();
    let caller = Caller::new(&issuer);
    let r = caller.get(&gw, "/down").await;
    assert_eq!(r.status, 502, "{r:?}");
    assert!(r.body.is_empty(), "{r:?}");
    // It comes up speaking HTTP/1.1 only: the handshake fails on ALPN, still 502.
    let upstream = TestUpstream::builder()
        .listen(SocketAddr::from(([127, 0, 0, 1], port)))
        .tls(&ca.server(&["127.0.0.1"]))
        .start()
        .await
        .unwrap();
    let r = caller.get(&gw, "/h1-only").await;
    assert_eq!(r.status, 502, "{r:?}");
    assert!(r.body.is_empty(), "{r:?}");
    assert_eq!(upstream.request_count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_goes_to_its_own_upstream_with_its_path_prefix() {
    let issuer = MockIssuer::start().await.unwrap();
    let ca = TestCa::new("billing ca");
    let default = TestUpstream::start().await.unwrap();
    let billing = https_upstream(&ca, &["127.0.0.1"]).await;
    let gw = Running::try_with_upstream(
        &issuer,
        &quoted(&default.url()),
        &format!(
            "[[routes]]\npath_prefix = \"/v1\"\n\n\
             [[routes]]\npath_prefix = \"/billing\"\n\
             upstream = {{ url = \"{}/v2\", ca_file = {} }}\n\n\
             [[routes]]\npath_prefix = \"/billing/public\"\ndpop = \"off\"\n",
            billing.url(),
            toml_path(&ca.ca_file())
        ),
    )
    .await
    .unwrap();
    let caller = Caller::new(&issuer);
    for path in [
        "/billing/invoices?n=1",
        "/billing",
        "/v1/items",
        "/other",
        "/billing/public/x",
        "/billingx",
    ] {
        let r = caller.get(&gw, path).await;
        assert_eq!(r.status, 200, "{path}: {r:?}");
    }
    let paths =
        |u: &TestUpstream| -> Vec<String> { u.requests().into_iter().map(|r| r.path).collect() };
    assert_eq!(paths(&billing), ["/v2/billing/invoices?n=1", "/v2/billing"]);
    // A longer route without its own upstream goes to the default, as does every
    // request no route with an upstream matched.
    assert_eq!(
        paths(&default),
        ["/v1/items", "/other", "/billing/public/x", "/billingx"]
    );
}
