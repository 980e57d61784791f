//! The gateway's server, started from the library in-process in front of dpop-test's echo
//! upstream, with tokens from its mock issuer: a DPoP request is forwarded, a missing
//! proof gets the RFC 9449 challenge, hostile request targets are refused with nothing
//! forwarded, and the admin listener answers `/healthz`.

mod common;

use std::net::SocketAddr;

use common::{Caller, Running};
use dpop_core::{Algorithm, PrivateKey, ProofBuilder, SystemRandomSource};
use dpop_test::{HttpResponse, MockIssuer, TestUpstream, TokenSpec, http_request, raw_exchange};

const ALGS: &str = r#"algs="ES256 ES384 EdDSA Ed25519 PS256 RS256""#;

/// The hostile-target table of dpop-core, also run through the parser, the layer and the
/// `dpop gateway` binary.
const HOSTILE: &str = include_str!("../../dpop-core/tests/vectors/hostile-targets.txt");

async fn send(method: &str, url: &str, headers: &[(&str, &str)]) -> HttpResponse {
    http_request(method, url, headers, b"").await.unwrap()
}

/// `GET target` byte for byte: the status and the whole reply.
async fn raw_get(addr: SocketAddr, target: &[u8], headers: &[(&str, &str)]) -> (u16, String) {
    let r = raw_exchange(addr, b"GET", target, headers).await;
    (r.status, r.text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dpop_request_is_forwarded_with_the_identity() {
    let issuer = MockIssuer::start().await.unwrap();
    let upstream = TestUpstream::start().await.unwrap();
    let gw = Running::start(&issuer, &upstream.url(), "").await;
    let caller = Caller::scoped(&issuer, "read");

    let url = gw.url("/v1/items?page=2");
    let proof = caller.proof("GET", &url);
    let auth = caller.authorization();
    let r = send(
        "GET",
        &url,
        &[
            ("authorization", &auth),
            ("dpop", &proof),
            ("x-dpop-subject", "admin"),
        ],
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.header("www-authenticate").is_none(), "{r:?}");
    assert_eq!(r.json().unwrap()["path"], "/v1/items?page=2");

    let seen = upstream.requests();
    assert_eq!(seen.len(), 1, "{seen:?}");
    let got = &seen[0];
    assert_eq!(
        (got.method.as_str(), got.path.as_str()),
        ("GET", "/v1/items?page=2")
    );
    assert_eq!(
        got.header_values("x-dpop-subject"),
        ["user-1"],
        "spoof replaced"
    );
    assert_eq!(got.header_values("x-dpop-client-id"), ["client-1"]);
    assert_eq!(
        got.header_values("x-dpop-jkt"),
        [caller.key.thumbprint().as_str()]
    );
    assert_eq!(got.header_values("x-dpop-scopes"), ["read"]);
    assert!(got.header("authorization").is_none(), "{got:?}");
    assert!(got.header("dpop").is_none(), "{got:?}");

    // The same proof again is a replay.
    let r = send("GET", &url, &[("authorization", &auth), ("dpop", &proof)]).await;
    assert_eq!(r.status, 401, "{r:?}");
    assert_eq!(
        r.header("www-authenticate"),
        Some(
            format!(
                r#"DPoP error="invalid_dpop_proof", error_description="DPoP proof was already used", {ALGS}, {}"#,
                gw.metadata_param()
            )
            .as_str()
        )
    );
    assert_eq!(upstream.requests().len(), 1, "nothing more forwarded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_proof_is_refused_with_the_challenge() {
    let issuer = MockIssuer::start().await.unwrap();
    let upstream = TestUpstream::start().await.unwrap();
    let gw = Running::start(&issuer, &upstream.url(), "").await;
    let caller = Caller::scoped(&issuer, "read");
    let url = gw.url("/v1/items");

    // The DPoP scheme without a proof.
    let auth = caller.authorization();
    let r = send("GET", &url, &[("authorization", &auth)]).await;
    assert_eq!(r.status, 401, "{r:?}");
    assert_eq!(
        r.header("www-authenticate"),
        Some(
            format!(
                r#"DPoP error="invalid_dpop_proof", error_description="DPoP proof required", {ALGS}, {}"#,
                gw.metadata_param()
            )
            .as_str()
        )
    );

    // No credentials at all: the bare challenge.
    let r = send("GET", &url, &[]).await;
    assert_eq!(r.status, 401, "{r:?}");
    assert_eq!(
        r.header("www-authenticate"),
        Some(format!("DPoP {ALGS}, {}", gw.metadata_param()).as_str())
    );
    assert!(r.body.is_empty(), "{r:?}");

    assert!(upstream.requests().is_empty(), "nothing forwarded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protected_resource_metadata_is_served_without_dpop() {
    let issuer = MockIssuer::start().await.unwrap();
    let upstream = TestUpstream::start().await.unwrap();
    let gw = Running::start(
        &issuer,
        &upstream.url(),
        "[resource_metadata]\nresource_name = \"Items API\"\n\
         resource_documentation = \"https://docs.example.com/items\"\nmax_age_secs = 600\n\
         [[routes]]\npath_prefix = \"/v1\"\nscopes = [\"read\", \"write\"]\n\
         [[routes]]\npath_prefix = \"/mcp\"\nscopes = [\"tools\"]\nresource = true\n",
    )
    .await;
    let url = gw.url("/.well-known/oauth-protected-resource");
    let r = send("GET", &url, &[]).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.header("cache-control"), Some("max-age=600"));
    assert_eq!(
        String::from_utf8(r.body.clone()).unwrap(),
        format!(
            concat!(
                r#"{{"resource":"http://{}","authorization_servers":["{}"],"#,
                r#""scopes_supported":["read","tools","write"],"bearer_methods_supported":["header"],"#,
                r#""dpop_signing_alg_values_supported":["ES256","ES384","EdDSA","Ed25519","PS256","RS256"],"#,
                r#""dpop_bound_access_tokens_required":true,"resource_name":"Items API","#,
                r#""resource_documentation":"https://docs.example.com/items"}}"#
            ),
            gw.addr,
            issuer.url()
        )
    );
    // A route that is a resource of its own: its document and its challenges.
    let r = send("GET", &format!("{url}/mcp"), &[]).await;
    assert_eq!(r.status, 200, "{r:?}");
    let doc = r.json().unwrap();
    assert_eq!(doc["resource"], format!("http://{}/mcp", gw.addr));
    assert_eq!(doc["scopes_supported"], serde_json::json!(["tools"]));
    let r = send("GET", &gw.url("/mcp/sse"), &[]).await;
    assert_eq!(
        r.header("www-authenticate"),
        Some(
            format!(
                r#"DPoP {ALGS}, resource_metadata="http://{}/.well-known/oauth-protected-resource/mcp""#,
                gw.addr
            )
            .as_str()
        )
    );
    let r = send("POST", &url, &[]).await;
    assert_eq!(r.status, 405, "{r:?}");
    assert_eq!(r.header("allow"), Some("GET, HEAD"));
    // A host the gateway does not serve is never reflected.
    let r = send("GET", &url, &[("host", "evil.example")]).await;
    assert_eq!(r.status, 400, "{r:?}");
    assert!(r.body.is_empty(), "{r:?}");
    // 403 insufficient_scope names what is missing, with the metadata URL.
    let caller = Caller::scoped(&issuer, "read");
    let items = gw.url("/v1/items");
    let proof = caller.proof("GET", &items);
    let r = send(
        "GET",
        &items,
        &[("authorization", &caller.authorization()), ("dpop", &proof)],
    )
    .await;
    assert_eq!(r.status, 403, "{r:?}");
    assert_eq!(
        r.header("www-authenticate"),
        Some(
            format!(
                r#"DPoP error="insufficient_scope", error_description="The access token lacks a required scope", {ALGS}, scope="write", {}"#,
                gw.metadata_param()
            )
            .as_str()
        )
    );
    assert!(upstream.requests().is_empty(), "nothing forwarded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_targets_are_refused_and_never_forwarded() {
    let issuer = MockIssuer::start().await.unwrap();
    let upstream = TestUpstream::start().await.unwrap();
    // A route without DPoP too: the target check comes before any route's rules.
    let gw = Running::start(
        &issuer,
        &upstream.url(),
        "[[routes]]\npath_prefix = \"/public\"\ndpop = \"off\"\n",
    )
    .await;
    let caller = Caller::scoped(&issuer, "read");
    let auth = caller.authorization();
    let table = dpop_core::internal::vectors::target_table(HOSTILE).unwrap();
    let hostile: Vec<_> = table.iter().filter(|(e, _)| e != "ok").collect();
    assert!(hostile.len() > 20, "the table has hostile targets");
    for (expected, target) in hostile {
        let shown = String::from_utf8_lossy(target);
        let (status, text) = raw_get(gw.addr, target, &[]).await;
        assert_eq!(status, 400, "{shown:?} ({expected}): {text}");
        // With credentials and a proof for the target as sent, still refused.
        let htu = format!("http://{}{}", gw.addr, shown);
        let proof = match ProofBuilder::new("GET", &htu) {
            Ok(b) => b
                .access_token(&caller.token)
                .sign(&caller.key, &SystemRandomSource, dpop_test::now())
                .unwrap(),
            Err(_) => caller.proof("GET", &gw.url("/v1")),
        };
        let (status, text) = raw_get(
            gw.addr,
            target,
            &[("authorization", &auth), ("dpop", &proof)],
        )
        .await;
        assert_eq!(
            status, 400,
            "{shown:?} ({expected}) with credentials: {text}"
        );
    }
    assert!(upstream.requests().is_empty(), "{:?}", upstream.requests());

    // A canonical target on the open route passes: the refusals were the targets'.
    let (status, text) = raw_get(gw.addr, b"/public/a", &[]).await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(upstream.requests().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_listener_answers_healthz() {
    let issuer = MockIssuer::start().await.unwrap();
    let upstream = TestUpstream::start().await.unwrap();
    let gw = Running::with_admin(&issuer, &upstream.url(), "").await;
    let admin = gw.admin.unwrap();
    let r = send("GET", &format!("http://{admin}/healthz"), &[]).await;
    assert_eq!((r.status, r.text().as_str()), (200, "ok\n"), "{r:?}");
    assert!(r.header("www-authenticate").is_none());
    // The admin paths are not served on the proxy listener: there they need DPoP.
    let r = send("GET", &gw.url("/healthz"), &[]).await;
    assert_eq!(r.status, 401, "{r:?}");
    assert!(upstream.requests().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ml_dsa_87_proof_passes_only_where_ml_dsa_is_allowed() {
    let issuer = MockIssuer::start().await.unwrap();
    let upstream = TestUpstream::start().await.unwrap();
    let key = PrivateKey::generate(Algorithm::MlDsa87).unwrap();
    let token = issuer.mint(&TokenSpec::bound(common::AUD, key.thumbprint().as_str()));
    let caller = Caller { key, token };

    let allowed = Running::start(
        &issuer,
        &upstream.url(),
        r#"algorithms = ["ES256", "ML-DSA-87"]"#,
    )
    .await;
    let url = allowed.url("/v1/items");
    let [(_, auth), (_, proof)] = caller.headers("GET", &url);
    assert!(
        proof.len() > dpop_core::DEFAULT_MAX_PROOF_BYTES,
        "{}",
        proof.len()
    );
    let r = send("GET", &url, &[("authorization", &auth), ("dpop", &proof)]).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(upstream.requests().len(), 1);

    // The default algorithms: the same kind of proof is refused (by its size, before it
    // is parsed) and nothing is forwarded.
    let default = Running::start(&issuer, &upstream.url(), "").await;
    let r = caller.get(&default, "/v1/items").await;
    assert_eq!(r.status, 401, "{r:?}");
    let challenge = r.header("www-authenticate").unwrap_or_default();
    assert!(
        challenge.contains(r#"error="invalid_dpop_proof""#) && challenge.contains(ALGS),
        "{challenge}"
    );
    assert_eq!(upstream.requests().len(), 1, "nothing more forwarded");
}

/// The `dpop_serving_thread_connections` gauges, by thread.
async fn connections_per_thread(admin: SocketAddr) -> Vec<i64> {
    let r = send("GET", &format!("http://{admin}/metrics"), &[]).await;
    assert_eq!(r.status, 200, "{r:?}");
    let mut counts: Vec<(usize, i64)> = r
        .text()
        .lines()
        .filter_map(|line| {
            let rest = line.strip_prefix("dpop_serving_thread_connections{thread=\"")?;
            let (thread, value) = rest.split_once("\"} ")?;
            Some((thread.parse().unwrap(), value.parse().unwrap()))
        })
        .collect();
    counts.sort_unstable();
    counts.into_iter().map(|(_, n)| n).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_connections_go_to_the_serving_thread_with_the_fewest() {
    let issuer = MockIssuer::start().await.unwrap();
    let upstream = TestUpstream::start().await.unwrap();
    let gw = Running::with_admin(&issuer, &upstream.url(), "[limits]\nworkers = 3\n").await;
    let admin = gw.admin.unwrap();
    assert_eq!(connections_per_thread(admin).await, [0, 0, 0]);

    // A burst of connections, opened together; each gets an answer (a 401) and stays open.
    let opened = (0..30).map(|_| async {
        let mut stream = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
        let request = format!("GET /v1/items HTTP/1.1\r\nHost: {}\r\n\r\n", gw.addr);
        tokio::io::AsyncWriteExt::write_all(&mut stream, request.as_bytes())
            .await
            .unwrap();
        let mut reply = [0u8; 12];
        tokio::io::AsyncReadExt::read_exact(&mut stream, &mut reply)
            .await
            .unwrap();
        assert_eq!(&reply, b"HTTP/1.1 401");
        stream
    });
    let streams = futures_util::future::join_all(opened).await;
    let counts = connections_per_thread(admin).await;
    assert_eq!(counts.iter().sum::<i64>(), 30, "{counts:?}");
    let (least, most) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
    assert!(most - least <= 2, "unbalanced: {counts:?}");

    // Closed connections are no longer counted.
    drop(streams);
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let counts = connections_per_thread(admin).await;
        if counts == [0, 0, 0] {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{counts:?}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// `GET path` on the client connection `sender` (kept alive between requests) with a
/// fresh proof: the status and how long the answer took.
async fn timed_get(
    sender: &mut hyper::client::conn::http1::SendRequest<http_body_util::Empty<bytes::Bytes>>,
    gw: &Running,
    caller: &Caller,
    path: &str,
) -> (u16, std::time::Duration) {
    let started = std::time::Instant::now();
    let mut req = caller.request("GET", path, &gw.url(path));
    req.headers_mut()
        .insert(http::header::HOST, gw.addr.to_string().parse().unwrap());
    sender.ready().await.unwrap();
    let response = sender.send_request(req).await.unwrap();
    let status = response.status().as_u16();
    http_body_util::BodyExt::collect(response.into_body())
        .await
        .unwrap();
    (status, started.elapsed())
}

/// The request time limit runs on a timer that each client connection keeps for its
/// next request. Every request on one kept-alive connection gets the whole limit: one
/// that outlasts it is a 504 at the limit, and neither that nor a limit that passed
/// while the connection sat idle cuts the next request short.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_request_of_a_kept_alive_connection_gets_the_whole_request_limit() {
    use std::time::Duration;

    let issuer = MockIssuer::start().await.unwrap();
    let upstream = TestUpstream::start().await.unwrap();
    let gw = Running::start(
        &issuer,
        &upstream.url(),
        "[limits]\nrequest_timeout_secs = 1\n",
    )
    .await;
    let caller = Caller::new(&issuer);
    let tcp = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
            .await
            .unwrap();
    let conn = tokio::spawn(conn);

    let (status, _) = timed_get(&mut sender, &gw, &caller, "/v1/items").await;
    assert_eq!(status, 200);
    let (status, took) = timed_get(&mut sender, &gw, &caller, "/slow?ms=3000").await;
    assert_eq!(status, 504);
    assert!(
        took >= Duration::from_millis(950) && took < Duration::from_millis(2500),
        "504 after {took:?}, not at the 1 s limit"
    );
    let (status, took) = timed_get(&mut sender, &gw, &caller, "/slow?ms=300").await;
    assert_eq!(status, 200, "after {took:?}");
    // Idle past that request's limit: the kept timer fires with nobody waiting.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (status, took) = timed_get(&mut sender, &gw, &caller, "/slow?ms=300").await;
    assert_eq!(status, 200, "after {took:?}");
    let (status, took) = timed_get(&mut sender, &gw, &caller, "/slow?ms=3000").await;
    assert_eq!(status, 504);
    assert!(took < Duration::from_millis(2500), "504 after {took:?}");
    assert!(!conn.is_finished(), "one connection throughout");
}
