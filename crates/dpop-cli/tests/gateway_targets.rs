//! One canonical request target, end to end through the real `dpop gateway`: the
//! hostile-target table of dpop-core (`tests/vectors/hostile-targets.txt`) is sent byte
//! for byte to a gateway with `off`, `required`, nonce, `report_only`, `allow_bearer` and
//! method-limited routes in front of an upstream mounted below a path prefix. Every
//! hostile target must be refused with nothing forwarded; every canonical one must reach
//! the upstream as exactly the path that was authorised.

use dpop_test::{MockIssuer, RawResponse as Raw, TestUpstream, raw_exchange as exchange};

use super::{Caller, Gw, Launch, config_file};
use crate::common::{send, www};

/// The table shared with dpop-core's unit test of the parser.
const TABLE: &str = include_str!("../../dpop-core/tests/vectors/hostile-targets.txt");

/// More hostile targets, aimed at the `report_only`, `allow_bearer`, method-limited and
/// dangerous routes of this test's configuration.
const MORE: [&[u8]; 17] = [
    b"/v1/admin.json",
    b"/healthcheck.json",
    b"/v1/adm%C4%B0n/users",
    b"/v1/admin::$INDEX_ALLOCATION/users",
    b"/V1/admin/users",
    b"/v1/ADMIN/users",
    b"/HealthCheck",
    b"/shadow/../v1/admin/users",
    b"/shadow/%2e%2e/v1/admin/users",
    b"/legacy/../v1/admin/users",
    b"/legacy/%2E%2E/v1/admin",
    b"/v1/write/../admin/users",
    b"/v1/writ%65",
    b"/files/../v1/admin/users",
    b"/files/%2e%2e/v1/admin/users",
    b"/files%2F..%2Fv1/admin",
    b"/shadow;x/../v1/admin",
];

const ROUTES: &str = r#"
[nonce]
require = false

[[routes]]
path_prefix = "/healthcheck"
dpop = "off"

[[routes]]
path_prefix = "/v1"
scopes = ["api"]

[[routes]]
path_prefix = "/v1/admin"
nonce = true
scopes = ["api", "admin"]

[[routes]]
path_prefix = "/v1/write"
methods = ["POST"]
scopes = ["api", "write"]

[[routes]]
path_prefix = "/shadow"
dpop = "report_only"

[[routes]]
path_prefix = "/legacy"
dpop = "allow_bearer"

[[routes]]
path_prefix = "/files"
dangerous_forward_encoded_slashes = true
"#;

/// `(expected, target bytes)` for each line of the table.
fn table() -> Vec<(String, Vec<u8>)> {
    dpop_core::internal::vectors::target_table(TABLE).unwrap()
}

/// A DPoP request for `target` by `caller`, answering one nonce challenge.
async fn dpop(gw: &Gw, caller: &Caller, method: &str, target: &str) -> Raw {
    let path = target.split('?').next().unwrap();
    let htu = format!("{}{path}", gw.htu_base);
    let mut nonce: Option<String> = None;
    for _ in 0..2 {
        let proof = caller.proof(method, &htu, nonce.as_deref());
        let auth = caller.authorization();
        let r = exchange(
            gw.addr(),
            method.as_bytes(),
            target.as_bytes(),
            &[("Authorization", &auth), ("DPoP", &proof)],
        )
        .await;
        match r.header("dpop-nonce") {
            Some(n) if r.status == 401 => nonce = Some(n.to_owned()),
            _ => return r,
        }
    }
    panic!("two nonce challenges for {target}")
}

async fn start(issuer: &MockIssuer, upstream: &TestUpstream) -> (Gw, super::TempFile) {
    let launch = Launch::bare();
    // The upstream is mounted below /base: what it receives is /base + the target.
    let file = config_file(&launch, issuer, &format!("{}/base", upstream.url()), ROUTES);
    let gw = launch.arg("--config").arg(file.path()).start().await;
    (gw, file)
}

/// Every hostile target, on every kind of route, is refused (by the HTTP parser or with
/// 400 `invalid_request`), reaches nothing, and is counted as `non_canonical_target`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_targets_are_refused_and_never_forwarded() {
    let issuer = MockIssuer::start().await.unwrap();
    let upstream = TestUpstream::start().await.unwrap();
    let (gw, _file) = start(&issuer, &upstream).await;
    let caller = Caller::new(&issuer, "api");
    let hostile: Vec<Vec<u8>> = table()
        .into_iter()
        .filter(|(expected, _)| expected != "ok")
        .map(|(_, t)| t)
        .chain(MORE.iter().map(|t| t.to_vec()))
        .collect();
    assert!(hostile.len() >= 40, "{} hostile targets", hostile.len());
    let mut refused_by_us = 0;
    for target in &hostile {
        let shown = String::from_utf8_lossy(target);
        // Without credentials, and with a valid token and a proof for the target as sent.
        let bare = exchange(gw.addr(), b"GET", target, &[]).await;
        assert_eq!(bare.status, 400, "{shown:?}: {}", bare.text);
        if bare.header("www-authenticate").is_some() {
            refused_by_us += 1;
            assert!(
                bare.header("www-authenticate")
                    .unwrap()
                    .contains(r#"error="invalid_request""#),
                "{shown:?}: {}",
                bare.text
            );
        }
        let htu = format!("{}{}", gw.htu_base, shown.split('?').next().unwrap());
        if let Ok(url) = dpop_core::Htu::parse(&htu) {
            let proof = caller.proof("GET", url.as_str(), None);
            let auth = caller.authorization();
            let r = exchange(
                gw.addr(),
                b"GET",
                target,
                &[("Authorization", &auth), ("DPoP", &proof)],
            )
            .await;
            assert_eq!(r.status, 400, "{shown:?} with credentials: {}", r.text);
        }
        assert_eq!(
            upstream.request_count(),
            0,
            "{shown:?} reached the upstream: {:?}",
            upstream.requests()
        );
    }
    assert!(
        refused_by_us >= 40,
        "only {refused_by_us} refused by the gateway itself"
    );
    let metrics = send("GET", &format!("{}/metrics", gw.admin), &[], b"")
        .await
        .text();
    let line = metrics
        .lines()
        .find(|l| {
            l.starts_with(
                r#"dpop_requests_total{outcome="rejected",reason="non_canonical_target"}"#,
            )
        })
        .unwrap_or_else(|| panic!("no non_canonical_target count:\n{metrics}"));
    let count: u64 = line.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(count >= refused_by_us, "{line}");
}

/// Every canonical target of the table reaches the upstream as exactly the path that was
/// authorised (below the upstream's prefix), and its query as sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canonical_targets_reach_the_upstream_unchanged() {
    let issuer = MockIssuer::start().await.unwrap();
    let upstream = TestUpstream::start().await.unwrap();
    let (gw, _file) = start(&issuer, &upstream).await;
    let admin = Caller::new(&issuer, "api admin");
    for (expected, target) in table() {
        if expected != "ok" {
            continue;
        }
        let target = String::from_utf8(target).unwrap();
        upstream.clear();
        let r = dpop(&gw, &admin, "GET", &target).await;
        assert_eq!(r.status, 200, "{target}: {}", r.text);
        let seen: Vec<String> = upstream.requests().into_iter().map(|r| r.path).collect();
        assert_eq!(seen, [format!("/base{target}")], "{target}");
    }
    // The dangerous route forwards a non-canonical target as sent, when its normal form
    // stays on that route; the proof is checked against the normal form.
    upstream.clear();
    let r = dpop(&gw, &admin, "GET", "/files/a%2Fb").await;
    assert_eq!(r.status, 200, "{}", r.text);
    let seen: Vec<String> = upstream.requests().into_iter().map(|r| r.path).collect();
    assert_eq!(seen, ["/base/files/a%2Fb"]);
}

/// Methods compare exactly: `post` does not dodge a rule written for `POST`, and a token
/// without the rule's scope is refused for `POST`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lower_case_methods_do_not_dodge_method_rules() {
    let issuer = MockIssuer::start().await.unwrap();
    let upstream = TestUpstream::start().await.unwrap();
    let (gw, _file) = start(&issuer, &upstream).await;
    let api_only = Caller::new(&issuer, "api");
    for method in ["post", "Post", "pOST"] {
        let r = dpop(&gw, &api_only, method, "/v1/write/items").await;
        assert_eq!(r.status, 400, "{method}: {}", r.text);
        assert!(
            r.header("www-authenticate")
                .unwrap()
                .contains("invalid_request")
        );
    }
    let r = dpop(&gw, &api_only, "POST", "/v1/write/items").await;
    assert_eq!(r.status, 403, "{}", r.text);
    assert_eq!(upstream.request_count(), 0);
    let writer = Caller::new(&issuer, "api write");
    let r = dpop(&gw, &writer, "POST", "/v1/write/items").await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(upstream.request_count(), 1);
}

/// A host the gateway does not serve is refused before any proof check, so a proof and
/// token captured at another service cannot be replayed here under that service's name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_hosts_are_refused_before_the_proof_check() {
    let issuer = MockIssuer::start().await.unwrap();
    let upstream = TestUpstream::start().await.unwrap();
    let (gw, _file) = start(&issuer, &upstream).await;
    let caller = Caller::new(&issuer, "api");
    // A proof made for another service, sent with that service's Host.
    let proof = caller.proof("GET", "http://other.example/v1/items", None);
    let auth = caller.authorization();
    let url = format!("{}/v1/items", gw.url);
    let r = send(
        "GET",
        &url,
        &[
            ("host", "other.example"),
            ("authorization", &auth),
            ("dpop", &proof),
        ],
        b"",
    )
    .await;
    assert_eq!(r.status, 400, "{r:?}");
    assert!(www(&r).contains("invalid_request"), "{}", www(&r));
    assert_eq!(upstream.request_count(), 0);
    let metrics = send("GET", &format!("{}/metrics", gw.admin), &[], b"")
        .await
        .text();
    assert!(
        metrics.contains(r#"dpop_requests_total{outcome="rejected",reason="host_not_allowed"} 1"#),
        "{metrics}"
    );
}

/// With `allowed_hosts`, a `Host` that is the allowed one in another spelling (a
/// zero-padded port) is normalised and accepted with the proof made for the
/// normal form, and near misses of it are refused before the proof check, whether or not
/// they look like the normal form byte for byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spellings_of_the_allowed_host_are_normalised_and_near_misses_refused() {
    let issuer = MockIssuer::start().await.unwrap();
    let upstream = TestUpstream::start().await.unwrap();
    let (gw, _file) = start(&issuer, &upstream).await;
    let caller = Caller::new(&issuer, "api");
    let port = gw.addr().port();
    let url = format!("{}/v1/items", gw.url);
    let with_host = |host: String| {
        let proof = caller.proof("GET", &format!("http://127.0.0.1:{port}/v1/items"), None);
        let auth = caller.authorization();
        let url = url.clone();
        async move {
            send(
                "GET",
                &url,
                &[("host", &host), ("authorization", &auth), ("dpop", &proof)],
                b"",
            )
            .await
        }
    };
    for good in [format!("127.0.0.1:{port}"), format!("127.0.0.1:0{port}")] {
        let r = with_host(good.clone()).await;
        assert_eq!(r.status, 200, "{good}: {r:?}");
    }
    let forwarded = upstream.request_count();
    for bad in [
        format!("127.0.0.1:{port}0"),
        format!("127.0.0.1:{}", port + 1),
        format!("127.0.0.2:{port}"),
        format!("127.0.0.1.:{port}"),
        format!("127.0.0.1.evil:{port}"),
        format!("u@127.0.0.1:{port}"),
        "127.0.0.1".to_owned(),
    ] {
        let r = with_host(bad.clone()).await;
        assert_eq!(r.status, 400, "{bad}: {r:?}");
        assert!(www(&r).contains("invalid_request"), "{bad}: {}", www(&r));
    }
    assert_eq!(upstream.request_count(), forwarded);
}

/// Identity headers spelt with `_` never reach the upstream: CGI-style servers read
/// `X_DPoP_Subject` as `X-DPoP-Subject`. Nor do method and path overrides (the gateway
/// judged the request line), nor what a client that is not a trusted proxy claims about
/// where the request came from or went (`X-Forwarded-*`, `Forwarded`, `X-Real-IP`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn underscore_identity_headers_are_stripped() {
    let issuer = MockIssuer::start().await.unwrap();
    let upstream = TestUpstream::start().await.unwrap();
    let (gw, _file) = start(&issuer, &upstream).await;
    let caller = Caller::new(&issuer, "api");
    // On a DPoP route and on an `off` route alike.
    for path in ["/v1/items", "/healthcheck"] {
        upstream.clear();
        let (r, _) = gw
            .dpop(
                &caller,
                "GET",
                path,
                None,
                &[
                    ("X_DPoP_Subject", "admin"),
                    ("x_dpop_scopes", "admin"),
                    ("X-DPoP_Client_Id", "root"),
                    ("X_Forwarded_Proto", "https"),
                    ("X-Forwarded-Host", "admin.internal"),
                    ("Forwarded", "host=admin.internal;proto=https"),
                    ("X-Forwarded-Prefix", "/admin"),
                    ("X-Real-IP", "10.0.0.1"),
                    ("X-HTTP-Method-Override", "DELETE"),
                    ("X-Method-Override", "DELETE"),
                    ("X-Original-URL", "/v1/admin/users"),
                    ("X-Rewrite-URL", "/v1/admin/users"),
                    ("X-Forwarded-For", "10.9.9.9"),
                    ("X-Forwarded-Ssl", "on"),
                    ("True-Client-IP", "10.0.0.2"),
                    ("X-Original-URI", "/v1/admin/users"),
                ],
                b"",
            )
            .await;
        assert_eq!(r.status, 200, "{path}: {r:?}");
        let got = upstream.requests().pop().unwrap();
        for name in [
            "x-forwarded-host",
            "forwarded",
            "x-forwarded-prefix",
            "x-real-ip",
            "x-http-method-override",
            "x-method-override",
            "x-original-url",
            "x-rewrite-url",
            "x-forwarded-ssl",
            "true-client-ip",
            "x-original-uri",
        ] {
            assert!(
                got.header(name).is_none(),
                "{path}: {name} reached the upstream: {got:?}"
            );
        }
        // From a peer that is not a trusted proxy, only the peer itself is vouched for.
        assert_eq!(
            got.header_values("x-forwarded-for"),
            ["127.0.0.1"],
            "{path}"
        );
        assert_eq!(got.header_values("x-forwarded-proto"), ["http"], "{path}");
        for (name, value) in &got.headers {
            assert!(
                !name.contains('_'),
                "{path}: {name}: {value} reached the upstream: {got:?}"
            );
        }
    }
}
