//! `dpop authz` as Envoy's gRPC ext_authz sees it: a tonic client sends `CheckRequest`s
//! (headers as Envoy's `headers` map, comma-merged, or as `header_map` with
//! `encode_raw_headers`) to an authorizer started in-process, and every answer is
//! compared whole with the `CheckResponse` Envoy must get.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::authz::{
    AuthzHarness, GRPC, HOST, Reported, authz_text, authz_text_for, check, client, merged, raw,
};
use common::{AUD, Caller, skip_without_redis};
use dpop_core::{Algorithm, PrivateKey};
use dpop_test::{MockIssuer, RedisCluster, RedisSentinel, RedisServer, TokenSpec, free_port};
use envoy_types::pb::envoy::config::core::v3::header_value_option::HeaderAppendAction;
use envoy_types::pb::envoy::config::core::v3::{HeaderValue, HeaderValueOption};
use envoy_types::pb::envoy::service::auth::v3::attribute_context::Request;
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use envoy_types::pb::envoy::service::auth::v3::{
    AttributeContext, CheckRequest, CheckResponse, DeniedHttpResponse, OkHttpResponse,
};
use envoy_types::pb::envoy::r#type::v3::HttpStatus;
use envoy_types::pb::google::protobuf::{BoolValue, Struct, Value, value::Kind};
use envoy_types::pb::google::rpc::Status;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tonic::transport::Channel;

const ALGS: &str = r#"algs="ES256 ES384 EdDSA Ed25519 PS256 RS256""#;
const METADATA: &str =
    r#"resource_metadata="https://api.example.com/.well-known/oauth-protected-resource""#;
/// The table shared with dpop-core's unit test of the target parser.
const HOSTILE: &str = include_str!("../../dpop-core/tests/vectors/hostile-targets.txt");
/// The identity header names the authorizer never sets in these tests (no client
/// certificates): always removed upstream.
const CERT_HEADERS: [&str; 2] = ["x-dpop-client-cert-subject", "x-dpop-client-cert-sha256"];

const ROUTES: &str = r#"
[[routes]]
path_prefix = "/public"
dpop = "off"

[[routes]]
path_prefix = "/nonce"
nonce = true
"#;

/// Checks `request`, expecting the allow for `caller` with its identity.
async fn assert_allowed(
    client: &mut AuthorizationClient<Channel>,
    request: CheckRequest,
    caller: &Caller,
) {
    assert_eq!(check(client, request).await, allowed_identity(caller, &[]));
}

/// The value of header `name` in a denial, if `r` is one and has it.
fn denied_header(r: &CheckResponse, name: &str) -> Option<String> {
    let Some(HttpResponse::DeniedResponse(d)) = &r.http_response else {
        panic!("not a denial: {r:?}");
    };
    d.headers
        .iter()
        .filter_map(|h| h.header.as_ref())
        .find(|h| h.key == name)
        .map(|h| h.value.clone())
}

/// Whether Envoy would let the request through.
fn is_ok(r: &CheckResponse) -> bool {
    r.status.as_ref().is_none_or(|s| s.code == 0)
}

// ---- The answers expected --------------------------------------------------------------

fn option(name: &str, value: &str) -> HeaderValueOption {
    #[allow(deprecated)]
    HeaderValueOption {
        header: Some(HeaderValue {
            key: name.to_owned(),
            value: value.to_owned(),
            raw_value: Vec::new(),
        }),
        append: Some(BoolValue { value: false }),
        append_action: HeaderAppendAction::OverwriteIfExistsOrAdd as i32,
        keep_empty_value: false,
    }
}

/// A denial: `grpc` code, the HTTP status and reason phrase, the headers in order.
fn denied(grpc: i32, status: u16, reason: &str, headers: &[(&str, &str)]) -> CheckResponse {
    CheckResponse {
        status: Some(Status {
            code: grpc,
            message: format!("{status} {reason}"),
            details: Vec::new(),
        }),
        dynamic_metadata: None,
        http_response: Some(HttpResponse::DeniedResponse(DeniedHttpResponse {
            status: Some(HttpStatus {
                code: i32::from(status),
            }),
            headers: headers.iter().map(|(n, v)| option(n, v)).collect(),
            body: String::new(),
        })),
    }
}

fn challenge(code: &str, description: &str) -> String {
    format!(r#"DPoP error="{code}", error_description="{description}", {ALGS}"#)
}

/// 401 with the DPoP challenge (and the metadata URL), `no-store`.
fn unauthorized(code: &str, description: &str) -> CheckResponse {
    let www = format!("{}, {METADATA}", challenge(code, description));
    denied(
        7,
        401,
        "Unauthorized",
        &[("www-authenticate", &www), ("cache-control", "no-store")],
    )
}

/// 400 `invalid_request` with the DPoP challenge, `no-store`.
fn bad_request(description: &str) -> CheckResponse {
    let www = challenge("invalid_request", description);
    denied(
        7,
        400,
        "Bad Request",
        &[("www-authenticate", &www), ("cache-control", "no-store")],
    )
}

/// A refusal without challenge (the report itself is unusable).
fn bare(status: u16, reason: &str) -> CheckResponse {
    denied(7, status, reason, &[("cache-control", "no-store")])
}

/// An allow: headers set upstream, removed upstream (given in any order: the answer
/// sorts them), set on the client's response, and the metadata.
fn allowed(
    set: &[(&str, &str)],
    remove: &[&str],
    to_client: &[(&str, &str)],
    metadata: &[(&str, &str)],
) -> CheckResponse {
    let fields: HashMap<String, Value> = metadata
        .iter()
        .map(|(k, v)| {
            (
                (*k).to_owned(),
                Value {
                    kind: Some(Kind::StringValue((*v).to_owned())),
                },
            )
        })
        .collect();
    let mut sorted: Vec<String> = remove.iter().map(|n| (*n).to_owned()).collect();
    sorted.sort_unstable();
    CheckResponse {
        status: Some(Status::default()),
        dynamic_metadata: (!fields.is_empty()).then_some(Struct { fields }),
        http_response: Some(HttpResponse::OkResponse(OkHttpResponse {
            headers: set.iter().map(|(n, v)| option(n, v)).collect(),
            headers_to_remove: sorted,
            response_headers_to_add: to_client.iter().map(|(n, v)| option(n, v)).collect(),
            ..OkHttpResponse::default()
        })),
    }
}

/// The allow for `caller` (token scope `read`): identity set, credentials removed.
fn allowed_identity(caller: &Caller, forged: &[&str]) -> CheckResponse {
    let jkt = caller.key.thumbprint();
    let mut remove = vec!["authorization", "dpop"];
    remove.extend_from_slice(forged);
    remove.extend_from_slice(&CERT_HEADERS);
    allowed(
        &[
            ("x-dpop-subject", "user-1"),
            ("x-dpop-client-id", "client-1"),
            ("x-dpop-jkt", jkt.as_str()),
            ("x-dpop-scopes", "read"),
        ],
        &remove,
        &[],
        &[
            ("sub", "user-1"),
            ("client_id", "client-1"),
            ("jkt", jkt.as_str()),
        ],
    )
}

async fn start(issuer: &MockIssuer, rest: &str) -> AuthzHarness {
    AuthzHarness::start(&authz_text(issuer, GRPC, &format!("{rest}\n{ROUTES}"))).await
}

/// An authorizer with [`ROUTES`], Envoy's connection to it, and a caller with scope
/// `read`.
async fn setup() -> (
    MockIssuer,
    AuthzHarness,
    AuthorizationClient<Channel>,
    Caller,
) {
    let issuer = MockIssuer::start().await.unwrap();
    let authz = start(&issuer, "").await;
    let envoy = client(&authz).await;
    let caller = Caller::scoped(&issuer, "read");
    (issuer, authz, envoy, caller)
}

// ---- Tests -----------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_valid_dpop_request_is_allowed_with_the_identity() {
    let (_issuer, _authz, mut envoy, caller) = setup().await;

    let r = Reported::dpop(&caller, "GET", "/v1/items?page=2");
    assert_allowed(&mut envoy, merged(&r), &caller).await;
    let r = Reported::dpop(&caller, "POST", "/v1/items");
    assert_allowed(&mut envoy, raw(&r), &caller).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_sent_identity_headers_are_overwritten_or_removed() {
    let (_issuer, _authz, mut envoy, caller) = setup().await;

    // The header the authorizer sets is overwritten (append false); other spellings of
    // it, and identity headers it does not set, are removed.
    let r = Reported::dpop(&caller, "GET", "/v1/items")
        .header("x-dpop-subject", "admin")
        .header("x_dpop_subject", "admin")
        .header("x-dpop-client-cert-subject", "CN=admin");
    assert_eq!(
        check(&mut envoy, merged(&r)).await,
        allowed_identity(&caller, &["x_dpop_subject"])
    );
    // Spelt in capitals (as a raw header map may carry it): the same name.
    let r = Reported::dpop(&caller, "GET", "/v1/items")
        .header("X-DPoP-Subject", "admin")
        .header("X_DPoP_Client_Id", "admin");
    assert_eq!(
        check(&mut envoy, raw(&r)).await,
        allowed_identity(&caller, &["x_dpop_client_id"])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_nonce_challenge_round_trip() {
    let (_issuer, _authz, mut envoy, caller) = setup().await;

    let r = Reported::dpop(&caller, "GET", "/nonce/x");
    let first = check(&mut envoy, merged(&r)).await;
    let nonce =
        denied_header(&first, "dpop-nonce").unwrap_or_else(|| panic!("no DPoP-Nonce: {first:?}"));
    assert!(nonce.len() >= 16, "{nonce}");
    let www = format!(
        "{}, {METADATA}",
        challenge("use_dpop_nonce", "Server requires nonce in DPoP proof")
    );
    assert_eq!(
        first,
        denied(
            7,
            401,
            "Unauthorized",
            &[
                ("www-authenticate", &www),
                ("dpop-nonce", &nonce),
                ("cache-control", "no-store"),
            ]
        )
    );

    let retry = Reported::dpop_with_nonce(&caller, "GET", "/nonce/x", Some(&nonce));
    assert_allowed(&mut envoy, merged(&retry), &caller).await;
    // A made-up nonce is refused with a fresh one.
    let forged =
        Reported::dpop_with_nonce(&caller, "GET", "/nonce/x", Some("AAAAAAAAAAAAAAAAAAAAAA"));
    let r = check(&mut envoy, merged(&forged)).await;
    assert!(!is_ok(&r), "{r:?}");
    let Some(HttpResponse::DeniedResponse(d)) = &r.http_response else {
        panic!("not a denial: {r:?}");
    };
    assert_eq!(d.status.as_ref().map(|s| s.code), Some(401));
    assert!(
        denied_header(&r, "dpop-nonce").is_some_and(|n| !n.is_empty()),
        "{r:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_proof_is_refused() {
    let (_issuer, authz, mut envoy, caller) = setup().await;

    let r = Reported::dpop(&caller, "GET", "/v1/items");
    assert_allowed(&mut envoy, merged(&r), &caller).await;
    let replay = unauthorized("invalid_dpop_proof", "DPoP proof was already used");
    assert_eq!(check(&mut envoy, merged(&r)).await, replay);
    // Over another connection, and as a raw header map: still the same proof.
    let mut other = client(&authz).await;
    assert_eq!(check(&mut other, raw(&r)).await, replay);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proof_replayed_through_a_second_authorizer_sharing_redis_is_refused() {
    let Some(url) = std::env::var("DPOP_TEST_REDIS_URL")
        .ok()
        .filter(|u| !u.is_empty())
    else {
        eprintln!("skipped: DPOP_TEST_REDIS_URL not set");
        return;
    };
    let issuer = MockIssuer::start().await.unwrap();
    let store = format!("replay_store = \"{url}\"");
    let first = start(&issuer, &store).await;
    let second = start(&issuer, &store).await;
    let caller = Caller::scoped(&issuer, "read");

    let r = Reported::dpop(&caller, "GET", "/v1/items");
    assert_allowed(&mut client(&first).await, merged(&r), &caller).await;
    assert_eq!(
        check(&mut client(&second).await, merged(&r)).await,
        unauthorized("invalid_dpop_proof", "DPoP proof was already used")
    );
}

/// Two authorizers on one replay store URL: a proof allowed by the first is refused by
/// the second, for several proofs (so that, on a cluster, several slots are used).
async fn assert_replays_shared(issuer: &MockIssuer, replay_store: &str) {
    let store = format!("replay_store = \"{replay_store}\"");
    let first = start(issuer, &store).await;
    let second = start(issuer, &store).await;
    let caller = Caller::scoped(issuer, "read");
    let (mut a, mut b) = (client(&first).await, client(&second).await);
    for i in 0..6 {
        let r = Reported::dpop(&caller, "GET", "/v1/items");
        let (allow, replay) = if i % 2 == 0 {
            (&mut a, &mut b)
        } else {
            (&mut b, &mut a)
        };
        assert_allowed(allow, merged(&r), &caller).await;
        assert_eq!(
            check(replay, merged(&r)).await,
            unauthorized("invalid_dpop_proof", "DPoP proof was already used"),
            "{replay_store}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorizers_on_a_redis_cluster_share_replays() {
    let Some(cluster) = RedisCluster::spawn().await.unwrap() else {
        return skip_without_redis();
    };
    let issuer = MockIssuer::start().await.unwrap();
    assert_replays_shared(&issuer, &cluster.url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorizers_on_redis_sentinel_share_replays() {
    let Some(set) = RedisSentinel::spawn("dpopauthz").await.unwrap() else {
        return skip_without_redis();
    };
    let issuer = MockIssuer::start().await.unwrap();
    assert_replays_shared(&issuer, &set.url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stolen_tokens_and_downgrades_are_refused() {
    let (issuer, _authz, mut envoy, caller) = setup().await;

    // The token with a proof by another key.
    let thief = Caller {
        key: PrivateKey::generate(Algorithm::Es256).unwrap(),
        token: caller.token.clone(),
    };
    let r = Reported::dpop(&thief, "GET", "/v1/items");
    assert_eq!(
        check(&mut envoy, merged(&r)).await,
        unauthorized("invalid_token", "Invalid DPoP key binding")
    );

    // The DPoP-bound token as a Bearer token, with and without a proof.
    let bearer = format!("Bearer {}", caller.token);
    let downgrade = unauthorized(
        "invalid_token",
        "DPoP-bound access token presented as a Bearer token",
    );
    let r = Reported::new("GET", "/v1/items").header("authorization", &bearer);
    assert_eq!(check(&mut envoy, merged(&r)).await, downgrade);
    let r = Reported::dpop(&caller, "GET", "/v1/items").replacing("authorization", &bearer);
    assert!(!is_ok(&check(&mut envoy, merged(&r)).await));

    // No credentials at all.
    let r = Reported::new("GET", "/v1/items");
    let www = format!("DPoP {ALGS}, {METADATA}");
    assert_eq!(
        check(&mut envoy, merged(&r)).await,
        denied(
            7,
            401,
            "Unauthorized",
            &[("www-authenticate", &www), ("cache-control", "no-store")]
        )
    );

    // A token for another audience.
    let key = PrivateKey::generate(Algorithm::Es256).unwrap();
    let mut spec = TokenSpec::bound("https://elsewhere.example", key.thumbprint().as_str());
    spec.scope = Some("read".into());
    let other = Caller {
        token: issuer.mint(&spec),
        key,
    };
    let r = Reported::dpop(&other, "GET", "/v1/items");
    assert_eq!(
        check(&mut envoy, merged(&r)).await,
        unauthorized("invalid_token", "Invalid access token")
    );
    let _ = AUD;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proof_for_another_request_is_refused() {
    let (_issuer, _authz, mut envoy, caller) = setup().await;
    let mismatch = unauthorized(
        "invalid_dpop_proof",
        "DPoP proof does not match the request method and URI",
    );

    // Another URL.
    let elsewhere = caller.proof("GET", &format!("https://{HOST}/v1/other"));
    let r = Reported::dpop(&caller, "GET", "/v1/items").replacing("dpop", &elsewhere);
    assert_eq!(check(&mut envoy, merged(&r)).await, mismatch);
    // Another method.
    let post = caller.proof("POST", &format!("https://{HOST}/v1/items"));
    let r = Reported::dpop(&caller, "GET", "/v1/items").replacing("dpop", &post);
    assert_eq!(check(&mut envoy, merged(&r)).await, mismatch);
    // Another scheme: the proof names https, the client used http.
    let mut r = Reported::dpop(&caller, "GET", "/v1/items");
    r.scheme = "http".into();
    let mut expected = mismatch.clone();
    if let Some(HttpResponse::DeniedResponse(d)) = &mut expected.http_response {
        d.headers[0] = option(
            "www-authenticate",
            &format!(
                r#"{}, resource_metadata="http://{HOST}/.well-known/oauth-protected-resource""#,
                challenge(
                    "invalid_dpop_proof",
                    "DPoP proof does not match the request method and URI"
                )
            ),
        );
    }
    assert_eq!(check(&mut envoy, merged(&r)).await, expected);
    // Another host, with a proof for it: not a host this authorizer serves.
    let mut r = Reported::new("GET", "/v1/items");
    r.host = "evil.example.com".into();
    let proof = caller.proof("GET", &r.htu());
    let r = r
        .header("authorization", &caller.authorization())
        .header("dpop", &proof);
    assert_eq!(
        check(&mut envoy, merged(&r)).await,
        bad_request("The request is for a host this server does not serve")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn merged_proofs_and_authorizations_are_refused() {
    let (_issuer, _authz, mut envoy, caller) = setup().await;
    let multiple_proofs = bad_request("Multiple DPoP proofs in the request");

    // Two proof lines: merged by Envoy into `p1,p2`, or two entries of the raw map.
    let r = Reported::dpop(&caller, "GET", "/v1/items");
    let second = caller.proof("GET", &r.htu());
    let two = r.clone().header("dpop", &second);
    assert_eq!(check(&mut envoy, merged(&two)).await, multiple_proofs);
    assert_eq!(check(&mut envoy, raw(&two)).await, multiple_proofs);
    // The same proof twice, and a trailing comma.
    let proof = r.get("dpop").unwrap().to_owned();
    let twice = r.clone().header("dpop", &proof);
    assert_eq!(check(&mut envoy, merged(&twice)).await, multiple_proofs);
    let trailing = r.clone().replacing("dpop", &format!("{proof},"));
    assert_eq!(check(&mut envoy, merged(&trailing)).await, multiple_proofs);

    // Two Authorization lines.
    let multiple_auth = bad_request("Multiple methods used to include access token");
    let fresh = Reported::dpop(&caller, "GET", "/v1/items");
    let two = fresh
        .clone()
        .header("authorization", &format!("Bearer {}", caller.token));
    assert_eq!(check(&mut envoy, merged(&two)).await, multiple_auth);
    assert_eq!(check(&mut envoy, raw(&two)).await, multiple_auth);
    // Nothing of this was recorded: the valid request still passes once.
    assert_allowed(&mut envoy, merged(&fresh), &caller).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_paths_are_refused() {
    let (_issuer, _authz, mut envoy, caller) = setup().await;
    let table = dpop_core::internal::vectors::target_table(HOSTILE).unwrap();
    let mut hostile = 0;
    for (expected, target) in table {
        // A protobuf string holds UTF-8 only; Envoy would have refused the rest.
        let target = String::from_utf8_lossy(&target).into_owned();
        if expected == "ok" {
            let r = Reported::dpop(&caller, "GET", &target);
            let got = check(&mut envoy, merged(&r)).await;
            assert!(is_ok(&got), "{target:?}: {got:?}");
            continue;
        }
        hostile += 1;
        // Without credentials, with a proof for the target as sent, on the `off` route,
        // and with the headers as a raw map: each a 400, never OK.
        let mut reports = vec![Reported::new("GET", &target)];
        if dpop_core::Htu::parse(&Reported::new("GET", &target).htu()).is_ok() {
            reports.push(Reported::dpop(&caller, "GET", &target));
        }
        if target.starts_with('/') {
            reports.push(Reported::new("GET", &format!("/public{target}")));
        }
        for r in &reports {
            for request in [merged(r), raw(r)] {
                let got = check(&mut envoy, request).await;
                assert!(!is_ok(&got), "{:?} allowed: {got:?}", r.path);
                let Some(HttpResponse::DeniedResponse(d)) = &got.http_response else {
                    panic!("{:?}: {got:?}", r.path);
                };
                assert_eq!(
                    d.status.as_ref().map(|s| s.code),
                    Some(400),
                    "{:?}: {got:?}",
                    r.path
                );
                assert_eq!(got.status.as_ref().map(|s| s.code), Some(7));
            }
        }
    }
    assert!(hostile >= 40, "{hostile} hostile targets");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unusable_reports_are_refused_with_400() {
    let (_issuer, _authz, mut envoy, caller) = setup().await;
    let bad = bare(400, "Bad Request");

    // No attributes, no request, no http.
    assert_eq!(check(&mut envoy, CheckRequest::default()).await, bad);
    let no_http = CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(Request::default()),
            ..AttributeContext::default()
        }),
    };
    assert_eq!(check(&mut envoy, no_http).await, bad);
    // An empty method, host or path.
    let valid = Reported::dpop(&caller, "GET", "/v1/items");
    for blank in 0..3 {
        let mut r = valid.clone();
        match blank {
            0 => r.method.clear(),
            1 => r.host.clear(),
            _ => r.path.clear(),
        }
        assert_eq!(check(&mut envoy, merged(&r)).await, bad, "{r:?}");
    }
    // A header name or value that is not HTTP; a method, scheme or path that is not.
    for (name, value) in [("bad name", "x"), ("x-ok", "a\nb"), ("x-ok", "a\0b")] {
        let r = valid.clone().header(name, value);
        assert_eq!(
            check(&mut envoy, merged(&r)).await,
            bad,
            "{name:?}: {value:?}"
        );
        assert_eq!(check(&mut envoy, raw(&r)).await, bad, "{name:?}: {value:?}");
    }
    for mutate in [
        |r: &mut Reported| r.method = "G T".into(),
        |r: &mut Reported| r.scheme = "ftp".into(),
        |r: &mut Reported| r.path = "v1/items".into(),
        |r: &mut Reported| r.host = "api.example.com/evil".into(),
    ] {
        let mut r = valid.clone();
        mutate(&mut r);
        assert_eq!(check(&mut envoy, merged(&r)).await, bad, "{r:?}");
    }
    // Headers beyond limits.max_header_bytes (16 KiB by default).
    let big = valid.clone().header("x-big", &"a".repeat(17 * 1024));
    assert_eq!(
        check(&mut envoy, merged(&big)).await,
        bare(431, "Request Header Fields Too Large")
    );
    // A message beyond the gRPC bound (4 × 16 KiB + 64 KiB) is a gRPC error, which
    // Envoy with failure_mode_allow: false turns into a denial.
    let huge = valid.clone().header("x-huge", &"a".repeat(200 * 1024));
    let err = envoy.check(merged(&huge)).await.unwrap_err();
    assert_ne!(err.code(), tonic::Code::Ok, "{err:?}");
    // The connection still serves, and the valid request was never recorded.
    assert_allowed(&mut envoy, merged(&valid), &caller).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_off_route_passes_without_identity_and_keeps_credentials() {
    let (_issuer, _authz, mut envoy, caller) = setup().await;

    let r = Reported::dpop(&caller, "GET", "/public/page").header("x-dpop-subject", "admin");
    let mut remove = vec![
        "x-dpop-subject",
        "x-dpop-client-id",
        "x-dpop-jkt",
        "x-dpop-scopes",
    ];
    remove.extend_from_slice(&CERT_HEADERS);
    let expected = allowed(&[], &remove, &[], &[]);
    assert_eq!(check(&mut envoy, merged(&r)).await, expected);
    // Without credentials too.
    let r = Reported::new("GET", "/public/page");
    assert_eq!(check(&mut envoy, merged(&r)).await, expected);
    // The RFC 9728 document passes without identity (the proxy's upstream, or a route to
    // the authorizer's own document, answers it).
    let r = Reported::new("GET", "/.well-known/oauth-protected-resource");
    assert_eq!(check(&mut envoy, merged(&r)).await, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_store_that_is_down_is_a_503_denial() {
    let Some(mut redis) = RedisServer::spawn().await.unwrap() else {
        eprintln!("skipped: no redis-server (DPOP_TEST_REDIS_SERVER)");
        return;
    };
    let issuer = MockIssuer::start().await.unwrap();
    let authz = start(
        &issuer,
        &format!(
            "replay_store = \"{}\"\n[replay]\nredis_timeout_ms = 200\n",
            redis.url()
        ),
    )
    .await;
    let mut envoy = client(&authz).await;
    let caller = Caller::scoped(&issuer, "read");
    let r = Reported::dpop(&caller, "GET", "/v1/items");
    assert_allowed(&mut envoy, merged(&r), &caller).await;

    redis.stop().unwrap();
    let r = Reported::dpop(&caller, "GET", "/v1/items");
    let got = check(&mut envoy, merged(&r)).await;
    assert_eq!(got, unavailable(), "{got:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_issuer_is_a_503_denial() {
    let issuer = MockIssuer::start().await.unwrap();
    let nowhere = format!("http://127.0.0.1:{}", free_port());
    let authz = AuthzHarness::start(&authz_text_for(&nowhere, GRPC, "")).await;
    let mut envoy = client(&authz).await;
    let caller = Caller::scoped(&issuer, "read");
    let r = Reported::dpop(&caller, "GET", "/v1/items");
    let got = check(&mut envoy, merged(&r)).await;
    assert_eq!(got, unavailable(), "{got:?}");
}

/// 503 from the authorizer's own request timeout: `UNAVAILABLE`, no `Retry-After`.
fn timed_out() -> CheckResponse {
    denied(
        14,
        503,
        "Service Unavailable",
        &[("cache-control", "no-store")],
    )
}

/// 503 as the layer sends it when it cannot verify: `UNAVAILABLE`.
fn unavailable() -> CheckResponse {
    denied(
        14,
        503,
        "Service Unavailable",
        &[("retry-after", "1"), ("cache-control", "no-store")],
    )
}

/// A TCP relay to `target` that can be frozen: connections stay open, nothing passes.
struct Relay {
    addr: std::net::SocketAddr,
    frozen: Arc<AtomicBool>,
}

impl Relay {
    async fn start(target: std::net::SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let frozen = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&frozen);
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(target).await else {
                    continue;
                };
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                tokio::spawn(Self::pump(cr, sw, Arc::clone(&flag)));
                tokio::spawn(Self::pump(sr, cw, Arc::clone(&flag)));
            }
        });
        Self { addr, frozen }
    }

    async fn pump(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, frozen: Arc<AtomicBool>) {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = match from.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            while frozen.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            if to.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    }

    fn freeze(&self) {
        self.frozen.store(true, Ordering::SeqCst);
    }
}

/// An authorizer whose Redis answers only while `relay` is not frozen; each Redis
/// command may wait 10 s, each check only `request_timeout_secs = 1`.
async fn with_stalling_store(
    issuer: &MockIssuer,
    rest: &str,
) -> Option<(AuthzHarness, Relay, RedisServer)> {
    let Some(redis) = RedisServer::spawn().await.unwrap() else {
        eprintln!("skipped: no redis-server (DPOP_TEST_REDIS_SERVER)");
        return None;
    };
    let relay = Relay::start(redis.addr()).await;
    let authz = start(
        issuer,
        &format!(
            "replay_store = \"redis://{}\"\n{rest}\n[replay]\nredis_timeout_ms = 10000\n\
             [limits]\nrequest_timeout_secs = 1\n",
            relay.addr
        ),
    )
    .await;
    Some((authz, relay, redis))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_check_slower_than_the_request_timeout_is_a_503_denial() {
    let issuer = MockIssuer::start().await.unwrap();
    let Some((authz, relay, _redis)) = with_stalling_store(&issuer, "").await else {
        return;
    };
    let mut envoy = client(&authz).await;
    let caller = Caller::scoped(&issuer, "read");
    let r = Reported::dpop(&caller, "GET", "/v1/items");
    assert_allowed(&mut envoy, merged(&r), &caller).await;

    relay.freeze();
    let r = Reported::dpop(&caller, "GET", "/v1/items");
    let started = Instant::now();
    let got = check(&mut envoy, merged(&r)).await;
    let took = started.elapsed();
    // The authorizer's own bound (bare 503), not the store's 10 s timeout (which would
    // answer with Retry-After).
    assert_eq!(got, timed_out());
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(5),
        "{took:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_lets_checks_in_flight_finish_and_refuses_new_connections() {
    let issuer = MockIssuer::start().await.unwrap();
    let Some((authz, relay, _redis)) = with_stalling_store(&issuer, "").await else {
        return;
    };
    let grpc = authz.grpc.unwrap();
    let mut envoy = client(&authz).await;
    let caller = Caller::scoped(&issuer, "read");
    relay.freeze();
    let r = Reported::dpop(&caller, "GET", "/v1/items");
    let in_flight = tokio::spawn(async move { envoy.check(merged(&r)).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(authz);
    // The check in flight is answered (by the request timeout), not cut off.
    let got = in_flight.await.unwrap().unwrap().into_inner();
    assert_eq!(got, timed_out());
    // The listener is closed.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(TcpStream::connect(grpc).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_max_connections_wait_for_a_slot() {
    let issuer = MockIssuer::start().await.unwrap();
    let authz = start(&issuer, "[limits]\nmax_connections = 1\n").await;
    let caller = Caller::scoped(&issuer, "read");
    let mut first = client(&authz).await;
    let r = Reported::dpop(&caller, "GET", "/v1/items");
    assert_allowed(&mut first, merged(&r), &caller).await;

    // A second connection is not served while the first holds the only slot...
    let second = Reported::dpop(&caller, "GET", "/v1/items");
    let url = authz.grpc_url();
    let waiting = tokio::spawn(async move {
        let mut envoy = AuthorizationClient::connect(url).await.unwrap();
        envoy.check(merged(&second)).await
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!waiting.is_finished(), "served past max_connections");
    // ...and is once the first closes.
    drop(first);
    let got = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("still waiting after the first connection closed")
        .unwrap()
        .unwrap()
        .into_inner();
    assert_eq!(got, allowed_identity(&caller, &[]));
}
