//! The authorizer's HTTP listener, as the proxies call it: forward-auth with nginx's
//! (`X-Original-*`) and Traefik's / Caddy's (`X-Forwarded-*`) headers, and Envoy's HTTP
//! ext_authz (the request itself, below a path prefix). Every answer is checked as the
//! proxy reads it: status, identity headers, headers to remove, challenges.

mod common;

use common::Caller;
use common::authz_http::{AuthzRunning, ForwardAuth, HOST, as_bytes, exchange, values};
use dpop_core::{ProofBuilder, SystemRandomSource};
use dpop_test::{HttpResponse, MockIssuer, RedisServer};

const HOSTILE: &str = include_str!("../../dpop-core/tests/vectors/hostile-targets.txt");

/// Trusting the loopback address the tests call from.
const TRUSTED: &str = "trusted_proxies = [\"127.0.0.1\"]\n";

/// A forward-auth check of `method uri` on `https://HOST`, reported `style`'s way, at
/// the proxy's own target `target`, with the client's `extra` headers.
async fn forward_auth(
    authz: &AuthzRunning,
    style: ForwardAuth,
    target: &str,
    method: &str,
    uri: &str,
    extra: &[(&'static str, String)],
) -> HttpResponse {
    let mut headers = style.headers(method, uri, "https", HOST);
    headers.push(("host", format!("{}", authz.addr)));
    headers.extend(extra.iter().cloned());
    // nginx's subrequest and Traefik's and Caddy's checks are GETs.
    authz
        .send("GET", target.as_bytes(), &as_bytes(&headers))
        .await
}

/// `Authorization` and a fresh proof for `method` on `htu`.
fn credentials(caller: &Caller, method: &str, htu: &str) -> Vec<(&'static str, String)> {
    caller.headers(method, htu).to_vec()
}

fn https(path: &str) -> String {
    format!("https://{HOST}{path}")
}

fn assert_identity(r: &HttpResponse, caller: &Caller, scope: &str) {
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(values(r, "x-dpop-subject"), ["user-1"], "{r:?}");
    assert_eq!(values(r, "x-dpop-client-id"), ["client-1"], "{r:?}");
    assert_eq!(
        values(r, "x-dpop-jkt"),
        [caller.key.thumbprint().as_str()],
        "{r:?}"
    );
    assert_eq!(values(r, "x-dpop-scopes"), [scope], "{r:?}");
    assert!(r.header("www-authenticate").is_none(), "{r:?}");
    assert!(r.body.is_empty(), "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forward_auth_allows_a_valid_request_with_the_identity_headers() {
    let issuer = MockIssuer::start().await.unwrap();
    let authz = AuthzRunning::start(&issuer, TRUSTED).await;
    let caller = Caller::scoped(&issuer, "read");
    // nginx: the subrequest's own target is the auth location.
    let uri = "/v1/items?page=2";
    let r = forward_auth(
        &authz,
        ForwardAuth::Nginx,
        "/_dpop_auth",
        "POST",
        uri,
        &credentials(&caller, "POST", &https(uri)),
    )
    .await;
    assert_identity(&r, &caller, "read");
    // Traefik: X-Forwarded-*, the check at the configured address.
    let r = forward_auth(
        &authz,
        ForwardAuth::Forwarded,
        "/",
        "DELETE",
        "/v1/items/7",
        &credentials(&caller, "DELETE", &https("/v1/items/7")),
    )
    .await;
    assert_identity(&r, &caller, "read");
    // Caddy: the same headers, its own target carrying the original query (ignored:
    // X-Forwarded-Uri is the one judged).
    let r = forward_auth(
        &authz,
        ForwardAuth::Forwarded,
        "/authz?page=2",
        "GET",
        uri,
        &credentials(&caller, "GET", &https(uri)),
    )
    .await;
    assert_identity(&r, &caller, "read");
    // The method judged is the reported one, not the check's own GET.
    let r = forward_auth(
        &authz,
        ForwardAuth::Forwarded,
        "/",
        "PUT",
        uri,
        &credentials(&caller, "GET", &https(uri)),
    )
    .await;
    assert_eq!(r.status, 401, "{r:?}");
    // Both spellings present and equal: fine.
    let mut extra = credentials(&caller, "GET", &https(uri));
    extra.push(("x-forwarded-method", "GET".into()));
    extra.push(("x-forwarded-uri", uri.into()));
    let r = forward_auth(&authz, ForwardAuth::Nginx, "/", "GET", uri, &extra).await;
    assert_identity(&r, &caller, "read");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_caller_gets_a_bare_403_and_is_counted() {
    let issuer = MockIssuer::start().await.unwrap();
    // The tests call from 127.0.0.1, which is not the trusted proxy here.
    let authz = AuthzRunning::start(&issuer, "trusted_proxies = [\"192.0.2.1\"]\n").await;
    let series = "dpop_authz_untrusted_callers_total";
    assert_eq!(authz.metric(series).await, 0);
    let caller = Caller::new(&issuer);
    for style in [ForwardAuth::Nginx, ForwardAuth::Forwarded] {
        let r = forward_auth(
            &authz,
            style,
            "/",
            "GET",
            "/v1/items",
            &credentials(&caller, "GET", &https("/v1/items")),
        )
        .await;
        assert_eq!(r.status, 403, "{style:?}: {r:?}");
        assert!(r.body.is_empty(), "{r:?}");
        assert!(r.header("www-authenticate").is_none(), "{r:?}");
        assert!(r.header("x-dpop-subject").is_none(), "{r:?}");
    }
    assert_eq!(authz.metric(series).await, 2);
    // Only the URI header makes a forward-auth check, in any case.
    let r = authz
        .send(
            "GET",
            b"/",
            &[("Host", HOST.as_bytes()), ("X-FORWARDED-URI", b"/v1")],
        )
        .await;
    assert_eq!(r.status, 403, "{r:?}");
    assert_eq!(authz.metric(series).await, 3);
    // The `_` spelling is not the header: it does not make a forward-auth check (not
    // counted), and is not ignored either: refused.
    let r = authz
        .send(
            "GET",
            b"/v1/items",
            &[("Host", HOST.as_bytes()), ("x_forwarded_uri", b"/v1/other")],
        )
        .await;
    assert_eq!(r.status, 400, "{r:?}");
    assert_eq!(authz.metric(series).await, 3);
    assert_eq!(
        authz
            .metric("dpop_authz_refused_total{reason=\"lookalike_header\"}")
            .await,
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_incomplete_or_contradictory_report_is_refused_with_403() {
    let issuer = MockIssuer::start().await.unwrap();
    let authz = AuthzRunning::start(&issuer, TRUSTED).await;
    let caller = Caller::new(&issuer);
    let uri = "/v1/items";
    let full = |style: ForwardAuth| {
        let mut h = style.headers("GET", uri, "https", HOST);
        h.extend(credentials(&caller, "GET", &https(uri)));
        h
    };
    // The complete report passes: each refusal below is the change's.
    let r = authz
        .send("GET", b"/", &as_bytes(&full(ForwardAuth::Nginx)))
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    type Change = fn(&mut Vec<(&'static str, String)>);
    let cases: [(&str, Change); 11] = [
        ("missing_method", |h| {
            h.retain(|(n, _)| *n != "x-original-method");
        }),
        ("missing_host", |h| {
            h.retain(|(n, _)| *n != "x-forwarded-host")
        }),
        ("missing_proto", |h| {
            h.retain(|(n, _)| *n != "x-forwarded-proto");
        }),
        ("bad_forwarding_header", |h| {
            h.push(("x-forwarded-host", "evil.example.com".into()));
        }),
        ("bad_forwarding_header", |h| {
            for (n, v) in h.iter_mut() {
                if *n == "x-forwarded-host" {
                    *v = format!("{HOST}, evil.example.com");
                }
            }
        }),
        ("bad_forwarding_header", |h| {
            for (n, v) in h.iter_mut() {
                if *n == "x-forwarded-proto" {
                    *v = "ftp".into();
                }
            }
        }),
        ("bad_forwarding_header", |h| {
            h.push(("x-original-uri", "/v1/other".into()));
        }),
        ("conflicting_headers", |h| {
            h.push(("x-forwarded-uri", "/v1/other".into()));
        }),
        ("conflicting_headers", |h| {
            h.push(("x-forwarded-method", "POST".into()));
        }),
        ("lookalike_header", |h| {
            h.push(("x_forwarded_host", "evil.example.com".into()));
        }),
        ("lookalike_header", |h| {
            h.push(("x_original_uri", "/v1/admin".into()));
        }),
    ];
    for (reason, change) in cases {
        let mut h = full(ForwardAuth::Nginx);
        change(&mut h);
        let series = format!("dpop_authz_refused_total{{reason=\"{reason}\"}}");
        let before = authz.metric(&series).await;
        let r = authz.send("GET", b"/", &as_bytes(&h)).await;
        assert_eq!(r.status, 403, "{reason}: {h:?} {r:?}");
        assert!(r.header("x-dpop-subject").is_none(), "{r:?}");
        assert!(r.body.is_empty(), "{r:?}");
        assert_eq!(authz.metric(&series).await, before + 1, "{reason}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nonce_challenge_round_trips_through_forward_auth() {
    let issuer = MockIssuer::start().await.unwrap();
    let authz = AuthzRunning::start(&issuer, &format!("{TRUSTED}[nonce]\nrequire = true\n")).await;
    let caller = Caller::new(&issuer);
    let uri = "/v1/items";
    let r = forward_auth(
        &authz,
        ForwardAuth::Nginx,
        "/",
        "GET",
        uri,
        &credentials(&caller, "GET", &https(uri)),
    )
    .await;
    assert_eq!(r.status, 401, "{r:?}");
    assert!(
        r.header("www-authenticate")
            .is_some_and(|c| c.contains("use_dpop_nonce")),
        "{r:?}"
    );
    assert_eq!(r.header("cache-control"), Some("no-store"), "{r:?}");
    let nonce = r.header("dpop-nonce").expect("a nonce").to_owned();
    let proof = ProofBuilder::new("GET", &https(uri))
        .unwrap()
        .access_token(&caller.token)
        .nonce(&nonce)
        .unwrap()
        .sign(&caller.key, &SystemRandomSource, dpop_test::now())
        .unwrap();
    let r = forward_auth(
        &authz,
        ForwardAuth::Forwarded,
        "/",
        "GET",
        uri,
        &[
            ("authorization", caller.authorization()),
            ("dpop", proof.clone()),
        ],
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(values(&r, "x-dpop-subject"), ["user-1"]);
    // The same proof again: a replay.
    let r = forward_auth(
        &authz,
        ForwardAuth::Forwarded,
        "/",
        "GET",
        uri,
        &[("authorization", caller.authorization()), ("dpop", proof)],
    )
    .await;
    assert_eq!(r.status, 401, "{r:?}");
    assert!(r.header("x-dpop-subject").is_none(), "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_is_refused_in_both_modes() {
    let issuer = MockIssuer::start().await.unwrap();
    let authz = AuthzRunning::start(&issuer, TRUSTED).await;
    let caller = Caller::new(&issuer);
    let creds = credentials(&caller, "GET", &https("/v1/items"));
    let fa = |creds: Vec<(&'static str, String)>| {
        let authz = &authz;
        async move { forward_auth(authz, ForwardAuth::Nginx, "/", "GET", "/v1/items", &creds).await }
    };
    assert_eq!(fa(creds.clone()).await.status, 200);
    let r = fa(creds.clone()).await;
    assert_eq!(r.status, 401, "{r:?}");
    assert!(
        r.header("www-authenticate")
            .is_some_and(|c| c.contains("invalid_dpop_proof")),
        "{r:?}"
    );
    // Envoy HTTP: the same proof through the other protocol is the same replay.
    let mut h = creds;
    h.push(("host", HOST.into()));
    h.push(("x-forwarded-proto", "https".into()));
    let r = authz.send("GET", b"/v1/items", &as_bytes(&h)).await;
    assert_eq!(r.status, 401, "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_400_class_refusal_is_a_401_in_forward_auth_and_a_400_for_envoy() {
    let issuer = MockIssuer::start().await.unwrap();
    let authz = AuthzRunning::start(&issuer, TRUSTED).await;
    let caller = Caller::new(&issuer);
    let other = "other.example.com";
    let htu = format!("https://{other}/v1/items");
    let mut h = ForwardAuth::Forwarded.headers("GET", "/v1/items", "https", other);
    h.extend(credentials(&caller, "GET", &htu));
    let r = authz.send("GET", b"/", &as_bytes(&h)).await;
    assert_eq!(r.status, 401, "{r:?}");
    let challenge = r.header("www-authenticate").unwrap_or_default();
    assert!(challenge.contains("invalid_request"), "{r:?}");
    assert_eq!(r.header("cache-control"), Some("no-store"), "{r:?}");
    // Envoy: the layer's status as it is.
    let mut h = credentials(&caller, "GET", &htu);
    h.push(("host", other.into()));
    h.push(("x-forwarded-proto", "https".into()));
    let r = authz.send("GET", b"/v1/items", &as_bytes(&h)).await;
    assert_eq!(r.status, 400, "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_store_that_is_down_is_a_403_in_forward_auth_and_a_503_for_envoy() {
    let issuer = MockIssuer::start().await.unwrap();
    let Some(mut redis) = RedisServer::spawn().await.unwrap() else {
        eprintln!("skipped: no redis-server (set DPOP_TEST_REDIS_SERVER or PATH)");
        return;
    };
    let authz = AuthzRunning::start(
        &issuer,
        &format!("{TRUSTED}replay_store = \"{}\"\n", redis.url()),
    )
    .await;
    let caller = Caller::new(&issuer);
    let uri = "/v1/items";
    let fa = |caller: &Caller| {
        let creds = credentials(caller, "GET", &https(uri));
        let authz = &authz;
        async move { forward_auth(authz, ForwardAuth::Nginx, "/", "GET", uri, &creds).await }
    };
    assert_eq!(fa(&caller).await.status, 200);
    redis.stop().unwrap();
    let r = fa(&caller).await;
    assert_eq!(r.status, 403, "{r:?}");
    assert_eq!(r.header("retry-after"), Some("1"), "kept: {r:?}");
    assert!(r.header("x-dpop-subject").is_none(), "{r:?}");
    let mut h = credentials(&caller, "GET", &https(uri));
    h.push(("host", HOST.into()));
    h.push(("x-forwarded-proto", "https".into()));
    let r = authz.send("GET", uri.as_bytes(), &as_bytes(&h)).await;
    assert_eq!(r.status, 503, "{r:?}");
    assert_eq!(r.header("retry-after"), Some("1"), "{r:?}");
    assert!(r.header("x-dpop-subject").is_none(), "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_sent_identity_header_is_refused_in_forward_auth_and_removed_for_envoy() {
    let issuer = MockIssuer::start().await.unwrap();
    let authz = AuthzRunning::start(&issuer, TRUSTED).await;
    let caller = Caller::new(&issuer);
    let uri = "/v1/items";
    for forged in ["x-dpop-subject", "x_dpop_subject", "X-DPoP-Client-Id"] {
        let mut extra = credentials(&caller, "GET", &https(uri));
        extra.push((forged, "admin".into()));
        let r = forward_auth(&authz, ForwardAuth::Forwarded, "/", "GET", uri, &extra).await;
        assert_eq!(r.status, 403, "{forged}: {r:?}");
        assert!(r.header("x-dpop-subject").is_none(), "{r:?}");
    }
    assert_eq!(
        authz
            .metric("dpop_authz_refused_total{reason=\"forged_identity\"}")
            .await,
        3
    );
    // Envoy can remove headers: the forged spelling is listed for removal, the real
    // name is set from the token.
    let mut h = credentials(&caller, "GET", &https(uri));
    h.push(("host", HOST.into()));
    h.push(("x-forwarded-proto", "https".into()));
    h.push(("x_dpop_subject", "admin".into()));
    let r = authz.send("GET", uri.as_bytes(), &as_bytes(&h)).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(values(&r, "x-dpop-subject"), ["user-1"]);
    let remove = r
        .header("x-envoy-auth-headers-to-remove")
        .unwrap_or_default();
    assert!(remove.split(',').any(|n| n == "x_dpop_subject"), "{remove}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_http_checks_below_the_path_prefix() {
    let issuer = MockIssuer::start().await.unwrap();
    let authz = AuthzRunning::start(
        &issuer,
        &format!("{TRUSTED}[authz]\npath_prefix = \"/check\"\n"),
    )
    .await;
    let caller = Caller::scoped(&issuer, "read");
    let uri = "/v1/items?page=2";
    let mut h = credentials(&caller, "POST", &https(uri));
    h.push(("host", HOST.into()));
    h.push(("x-forwarded-proto", "https".into()));
    let r = authz
        .send("POST", format!("/check{uri}").as_bytes(), &as_bytes(&h))
        .await;
    assert_identity(&r, &caller, "read");
    let remove: Vec<&str> = r
        .header("x-envoy-auth-headers-to-remove")
        .unwrap_or_default()
        .split(',')
        .collect();
    assert!(
        remove.contains(&"authorization") && remove.contains(&"dpop"),
        "{remove:?}"
    );
    assert!(!remove.contains(&"x-dpop-subject"), "{remove:?}");
    // Outside the prefix, or not on a segment boundary: not a check, refused.
    for target in ["/v1/items", "/checkv1/items", "/check", "/chec/v1/items"] {
        let mut h = credentials(&caller, "GET", &https("/v1/items"));
        h.push(("host", HOST.into()));
        let r = authz.send("GET", target.as_bytes(), &as_bytes(&h)).await;
        assert_eq!(r.status, 403, "{target}: {r:?}");
        assert!(r.header("x-dpop-subject").is_none(), "{r:?}");
    }
    // Without credentials: the layer's own challenge, as Envoy passes it on.
    let r = authz
        .send("GET", b"/check/v1/items", &[("host", HOST.as_bytes())])
        .await;
    assert_eq!(r.status, 401, "{r:?}");
    assert!(r.header("www-authenticate").is_some(), "{r:?}");
    // Without a trusted X-Forwarded-Proto the scheme is http: a proof for https fails.
    let mut h = credentials(&caller, "GET", &https("/v1/items"));
    h.push(("host", HOST.into()));
    let r = authz.send("GET", b"/check/v1/items", &as_bytes(&h)).await;
    assert_eq!(r.status, 401, "{r:?}");
    let mut h = credentials(&caller, "GET", &format!("http://{HOST}/v1/items"));
    h.push(("host", HOST.into()));
    let r = authz.send("GET", b"/check/v1/items", &as_bytes(&h)).await;
    assert_eq!(r.status, 200, "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_http_from_an_untrusted_peer_ignores_its_forwarded_proto() {
    let issuer = MockIssuer::start().await.unwrap();
    let authz = AuthzRunning::start(&issuer, "").await;
    let caller = Caller::new(&issuer);
    let mut h = credentials(&caller, "GET", &https("/v1/items"));
    h.push(("host", HOST.into()));
    h.push(("x-forwarded-proto", "https".into()));
    let r = authz.send("GET", b"/v1/items", &as_bytes(&h)).await;
    assert_eq!(r.status, 401, "{r:?}");
    let mut h = credentials(&caller, "GET", &format!("http://{HOST}/v1/items"));
    h.push(("host", HOST.into()));
    h.push(("x-forwarded-proto", "https".into()));
    let r = authz.send("GET", b"/v1/items", &as_bytes(&h)).await;
    assert_eq!(r.status, 200, "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_targets_are_denied_in_both_modes() {
    let issuer = MockIssuer::start().await.unwrap();
    let authz = AuthzRunning::start(
        &issuer,
        &format!("{TRUSTED}[authz]\npath_prefix = \"/check\"\n"),
    )
    .await;
    let caller = Caller::new(&issuer);
    let table = dpop_core::internal::vectors::target_table(HOSTILE).unwrap();
    let proof_for = |target: &[u8]| {
        let htu = format!("https://{HOST}{}", String::from_utf8_lossy(target));
        match ProofBuilder::new("GET", &htu) {
            Ok(b) => b
                .access_token(&caller.token)
                .sign(&caller.key, &SystemRandomSource, dpop_test::now())
                .unwrap(),
            Err(_) => caller.proof("GET", &https("/v1")),
        }
    };
    let auth = caller.authorization();
    let (mut forward_auth_cases, mut envoy_cases) = (0, 0);
    for (expected, target) in &table {
        let shown = String::from_utf8_lossy(target);
        let ok = expected == "ok";
        let proof = proof_for(target);
        // Forward-auth: the target in X-Forwarded-Uri (where a header can hold it).
        if http::HeaderValue::from_bytes(target).is_ok() {
            forward_auth_cases += 1;
            let headers: Vec<(&str, &[u8])> = vec![
                ("x-forwarded-method", b"GET"),
                ("x-forwarded-uri", target),
                ("x-forwarded-host", HOST.as_bytes()),
                ("x-forwarded-proto", b"https"),
                ("authorization", auth.as_bytes()),
                ("dpop", proof.as_bytes()),
            ];
            let r = authz.send("GET", b"/", &headers).await;
            if ok {
                assert_eq!(r.status, 200, "forward-auth {shown:?}: {r:?}");
            } else {
                assert!(
                    [401, 403].contains(&r.status),
                    "forward-auth {shown:?} ({expected}): {r:?}"
                );
                assert!(r.header("x-dpop-subject").is_none(), "{r:?}");
            }
        }
        // Envoy: the target after the prefix, sent as it is.
        envoy_cases += 1;
        let mut envoy_target = b"/check".to_vec();
        envoy_target.extend_from_slice(target);
        let proof = proof_for(target);
        let r = exchange(
            authz.addr,
            b"GET",
            &envoy_target,
            &[
                ("host", HOST.as_bytes()),
                ("x-forwarded-proto", b"https"),
                ("authorization", auth.as_bytes()),
                ("dpop", proof.as_bytes()),
            ],
        )
        .await;
        if ok {
            assert_eq!(r.status, 200, "envoy {shown:?}: {r:?}");
        } else {
            assert_ne!(r.status, 200, "envoy {shown:?} ({expected}): {r:?}");
            assert!(r.header("x-dpop-subject").is_none(), "{r:?}");
        }
    }
    assert!(
        forward_auth_cases > 60 && envoy_cases > 60,
        "{forward_auth_cases} {envoy_cases}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metadata_document_is_served() {
    let issuer = MockIssuer::start().await.unwrap();
    // With a path prefix, a request for the document is told apart from a check.
    let authz = AuthzRunning::start(
        &issuer,
        &format!("{TRUSTED}[authz]\npath_prefix = \"/check\"\n"),
    )
    .await;
    let r = authz
        .send(
            "GET",
            b"/.well-known/oauth-protected-resource",
            &[("host", HOST.as_bytes())],
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    let doc = r.json().unwrap();
    assert_eq!(doc["authorization_servers"][0], issuer.url(), "{doc}");
    assert!(doc["resource"].as_str().unwrap().contains(HOST), "{doc}");
    // Not for another method, nor another path outside the prefix.
    let r = authz
        .send(
            "POST",
            b"/.well-known/oauth-protected-resource",
            &[("host", HOST.as_bytes())],
        )
        .await;
    assert_eq!(r.status, 403, "{r:?}");
    // A forward-auth check of that path is a check: allowed without identity (the
    // layer lets GET of the document through), no document body.
    let h = ForwardAuth::Nginx.headers(
        "GET",
        "/.well-known/oauth-protected-resource",
        "https",
        HOST,
    );
    let r = authz.send("GET", b"/", &as_bytes(&h)).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.body.is_empty(), "{r:?}");
    assert!(r.header("x-dpop-subject").is_none(), "{r:?}");

    // Without a prefix: the document, with the headers of an allow for Envoy (a
    // client-sent identity header is removed).
    let authz = AuthzRunning::start(&issuer, TRUSTED).await;
    let r = authz
        .send(
            "GET",
            b"/.well-known/oauth-protected-resource",
            &[("host", HOST.as_bytes()), ("x-dpop-subject", b"admin")],
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json().unwrap()["authorization_servers"][0], issuer.url());
    let remove = r
        .header("x-envoy-auth-headers-to-remove")
        .unwrap_or_default();
    assert!(remove.split(',').any(|n| n == "x-dpop-subject"), "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_check_that_outlasts_the_request_timeout_is_denied() {
    let issuer = MockIssuer::start().await.unwrap();
    // An introspection endpoint that accepts and never answers.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}/introspect", silent.local_addr().unwrap());
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            open.push(s);
        }
    });
    let authz = AuthzRunning::start(
        &issuer,
        &format!(
            "{TRUSTED}[introspection]\nendpoint = \"{endpoint}\"\nclient_id = \"authz\"\n\
             client_secret = \"s3cret\"\n[limits]\nrequest_timeout_secs = 1\n"
        ),
    )
    .await;
    let key = dpop_core::PrivateKey::generate(dpop_core::Algorithm::Es256).unwrap();
    let token = "opaque-token-1";
    let proof = |method: &str, htu: &str| {
        ProofBuilder::new(method, htu)
            .unwrap()
            .access_token(token)
            .sign(&key, &SystemRandomSource, dpop_test::now())
            .unwrap()
    };
    let uri = "/v1/items";
    let started = std::time::Instant::now();
    let creds = vec![
        ("authorization", format!("DPoP {token}")),
        ("dpop", proof("GET", &https(uri))),
    ];
    let r = forward_auth(&authz, ForwardAuth::Nginx, "/", "GET", uri, &creds).await;
    assert_eq!(r.status, 403, "{r:?}");
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    let mut h = vec![
        ("authorization", format!("DPoP {token}")),
        ("dpop", proof("GET", &https(uri))),
        ("host", HOST.into()),
        ("x-forwarded-proto", "https".into()),
    ];
    h.push(("x-request-id", "1".into()));
    let r = authz.send("GET", uri.as_bytes(), &as_bytes(&h)).await;
    assert_eq!(r.status, 503, "{r:?}");
    assert!(r.header("x-dpop-subject").is_none(), "{r:?}");
    assert_eq!(
        authz
            .metric("dpop_authz_refused_total{reason=\"timeout\"}")
            .await,
        2
    );
    held.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_max_connections_wait_for_a_slot() {
    let issuer = MockIssuer::start().await.unwrap();
    let authz = AuthzRunning::start(&issuer, "[limits]\nmax_connections = 1\n").await;
    let host: &[(&str, &[u8])] = &[("host", HOST.as_bytes())];
    let doc = b"/.well-known/oauth-protected-resource";
    assert_eq!(authz.send("GET", doc, host).await.status, 200);
    // One silent connection holds the only slot: the next check is not answered...
    let silent = tokio::net::TcpStream::connect(authz.addr).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let waiting = tokio::spawn({
        let addr = authz.addr;
        async move {
            exchange(
                addr,
                b"GET",
                b"/.well-known/oauth-protected-resource",
                &[("host", HOST.as_bytes())],
            )
            .await
        }
    });
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert!(!waiting.is_finished(), "answered beyond max_connections");
    // ...until it closes.
    drop(silent);
    let r = tokio::time::timeout(std::time::Duration::from_secs(5), waiting)
        .await
        .expect("answered once the slot is free")
        .unwrap();
    assert_eq!(r.status, 200, "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_stop_idle_connections_are_closed_and_no_new_one_is_accepted() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let issuer = MockIssuer::start().await.unwrap();
    let authz = AuthzRunning::start(&issuer, "").await;
    let addr = authz.addr;
    // A kept-alive connection, idle after one answer.
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    conn.write_all(
        format!("GET /.well-known/oauth-protected-resource HTTP/1.1\r\nHost: {HOST}\r\n\r\n")
            .as_bytes(),
    )
    .await
    .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = conn.read(&mut buf).await.unwrap();
    assert!(
        buf[..n].starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&buf[..n])
    );
    drop(authz);
    // The idle connection is closed at once (well within the drain timeout)...
    let mut rest = Vec::new();
    let read = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        conn.read_to_end(&mut rest),
    )
    .await;
    assert!(read.is_ok(), "the idle connection was not closed on stop");
    // ...and the listener is gone.
    let mut refused = false;
    for _ in 0..50 {
        if tokio::net::TcpStream::connect(addr).await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(refused, "still accepting after stop");
}
