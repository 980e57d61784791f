//! Clock skew: a proof refused as `invalid_dpop_proof` by a server whose `Date` is 5 s or
//! more away teaches the client that origin's offset; the request is retried once with a
//! corrected `iat`, and later requests to that origin start corrected.

use dpop_client::{DpopMiddleware, Grant, OAuthTokens};
use dpop_core::Algorithm;

use crate::support::{Api, ApiOptions, Issuer, client_key, http_client, jws_claims, now_secs};

/// The server clocks here run two minutes ahead: far outside the 60 s proof window.
const AHEAD: u64 = 120;
/// Or behind, far outside the 15 s leeway for proofs from the future.
const BEHIND: u64 = 90;

/// `iat` is within a few seconds of `expected` (the test itself takes time).
#[track_caller]
fn assert_near(iat: u64, expected: u64) {
    assert!(
        iat.abs_diff(expected) <= 5,
        "iat {iat} is not near {expected}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_clock_ahead_is_learned_once_and_kept_for_its_origin() {
    let api = Api::start(ApiOptions {
        clock_offset: AHEAD as i64,
        ..ApiOptions::default()
    })
    .await;
    let other = Api::start(ApiOptions::default()).await;
    let (key, _) = client_key();
    let client = http_client(DpopMiddleware::new(key));

    let r = client.get(api.at("/v1/items")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let now = now_secs();
    let seen = api.seen();
    assert_eq!(seen.len(), 2, "one retry: {seen:#?}");
    assert_eq!(
        (
            seen[0].status,
            seen[0].error.as_deref(),
            seen[0].reason.as_deref()
        ),
        (401, Some("invalid_dpop_proof"), Some("iat_too_old"))
    );
    assert_near(seen[0].iat(), now);
    assert_eq!(seen[1].status, 200);
    assert_near(seen[1].iat(), now + AHEAD);

    // The offset is kept: the next request to that origin succeeds the first time.
    api.log.clear();
    let r = client
        .post(api.at("/v1/items"))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let seen = api.seen();
    assert_eq!(
        seen.len(),
        1,
        "the corrected iat is used at once: {seen:#?}"
    );
    assert_eq!(seen[0].status, 200);
    assert_near(seen[0].iat(), now_secs() + AHEAD);

    // Only for that origin: a server whose clock agrees gets the local time.
    let r = client.get(other.at("/v1/items")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let seen = other.seen();
    assert_eq!(seen.len(), 1);
    assert_near(seen[0].iat(), now_secs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_learned_offset_is_unlearned_when_the_server_clock_is_fixed() {
    let api = Api::start(ApiOptions {
        clock_offset: AHEAD as i64,
        ..ApiOptions::default()
    })
    .await;
    let (key, _) = client_key();
    let client = http_client(DpopMiddleware::new(key));
    let r = client.get(api.at("/v1/items")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(api.log.len(), 2);

    // The operator fixes the server's clock: the corrected iat is now two minutes in the
    // future, and the server's Date agrees with ours. The client must notice that its
    // offset is wrong (not only that the server differs from its local clock).
    api.set_clock_offset(0);
    api.log.clear();
    let r = client.get(api.at("/v1/items")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let seen = api.seen();
    assert_eq!(seen.len(), 2, "{seen:#?}");
    assert_eq!(seen[0].reason.as_deref(), Some("iat_in_future"));
    assert_near(seen[1].iat(), now_secs());

    api.log.clear();
    let r = client.get(api.at("/v1/items")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(api.log.len(), 1, "{:#?}", api.seen());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_clock_behind_is_learned_too() {
    let api = Api::start(ApiOptions {
        clock_offset: -(BEHIND as i64),
        ..ApiOptions::default()
    })
    .await;
    let (key, _) = client_key();
    let client = http_client(DpopMiddleware::new(key));
    for _ in 0..2 {
        let r = client.get(api.at("/v1/items")).send().await.unwrap();
        assert_eq!(r.status(), 200);
    }
    let seen = api.seen();
    assert_eq!(seen.len(), 3, "one retry, then none: {seen:#?}");
    assert_eq!(seen[0].reason.as_deref(), Some("iat_in_future"));
    assert_near(seen[1].iat(), now_secs() - BEHIND);
    assert_near(seen[2].iat(), now_secs() - BEHIND);
    assert_eq!((seen[1].status, seen[2].status), (200, 200));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proof_refused_for_another_reason_with_an_agreeing_clock_is_not_retried() {
    // The server only takes EdDSA proofs; its clock agrees with ours.
    let api = Api::start(ApiOptions {
        algorithms: Some(vec![Algorithm::EdDsa]),
        ..ApiOptions::default()
    })
    .await;
    let (key, _) = client_key();
    let client = http_client(DpopMiddleware::new(key));
    let r = client.get(api.at("/v1/items")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let seen = api.seen();
    assert_eq!(seen.len(), 1, "{seen:#?}");
    assert_eq!(seen[0].reason.as_deref(), Some("alg_not_allowed"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_skew_correction_is_tried_once() {
    // Clock ahead *and* an algorithm the server refuses: the correction cannot help, so
    // after one corrected attempt the refusal goes back to the caller.
    let api = Api::start(ApiOptions {
        clock_offset: AHEAD as i64,
        algorithms: Some(vec![Algorithm::EdDsa]),
        ..ApiOptions::default()
    })
    .await;
    let (key, _) = client_key();
    let client = http_client(DpopMiddleware::new(key));
    let r = client.get(api.at("/v1/items")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let seen = api.seen();
    assert_eq!(seen.len(), 2, "{seen:#?}");
    assert_near(seen[1].iat(), now_secs() + AHEAD);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skew_and_nonce_at_the_token_endpoint_each_cost_one_retry() {
    let issuer = Issuer::start_ahead("", AHEAD).await;
    let (key, _) = client_key();
    let dpop = DpopMiddleware::new(key);
    let tokens = OAuthTokens::new(
        issuer.secret_request("svc", Grant::ClientCredentials),
        &dpop,
    )
    .unwrap();
    let response = tokens.fetch().await.unwrap();
    let now = now_secs();
    // The issuer's token is stamped with its own clock.
    let iat = jws_claims(&response.access_token)["iat"].as_u64().unwrap();
    assert_near(iat, now + AHEAD);

    let calls = issuer.token_calls();
    assert_eq!(calls.len(), 3, "{calls:#?}");
    // 1: iat two minutes old by the issuer's clock; 2: corrected, but no nonce yet;
    // 3: corrected, with the nonce.
    assert_eq!(
        (calls[0].status, calls[0].error.as_deref()),
        (400, Some("invalid_dpop_proof"))
    );
    assert_near(calls[0].iat(), now);
    assert_eq!(
        (calls[1].status, calls[1].error.as_deref()),
        (400, Some("use_dpop_nonce"))
    );
    assert_near(calls[1].iat(), now + AHEAD);
    assert_eq!(calls[2].status, 200);
    assert_eq!(calls[2].claim("nonce"), calls[1].nonce_sent.as_deref());

    // Both are remembered: the next token request needs one request.
    tokens.fetch().await.unwrap();
    let calls = issuer.token_calls();
    assert_eq!(calls.len(), 4, "{calls:#?}");
    assert_eq!(calls[3].status, 200);
    assert_near(calls[3].iat(), now_secs() + AHEAD);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_key_jwt_assertions_follow_the_corrected_clock() {
    let issuer = Issuer::start_ahead("", AHEAD).await;
    let (key, jkt) = client_key();
    let dpop = DpopMiddleware::new(key);
    let auth = dpop_client::ClientAuth::PrivateKeyJwt {
        client_id: "keyed".to_owned(),
        key: dpop_client::ClientKey::from_text(&issuer.client_key_pem).unwrap(),
    };
    let tokens = OAuthTokens::new(
        dpop_client::TokenRequest::new(&issuer.url, auth, Grant::ClientCredentials),
        &dpop,
    )
    .unwrap();
    let response = tokens.fetch().await.unwrap();
    assert_eq!(
        jws_claims(&response.access_token)["cnf"]["jkt"],
        jkt.as_str()
    );

    let calls = issuer.token_calls();
    assert_eq!(calls.len(), 3, "skew, nonce, success: {calls:#?}");
    assert_eq!(calls[2].status, 200);
    // A new assertion for every attempt (its jti is single-use), dated like the proof:
    // an assertion made before the correction would have expired by the issuer's clock.
    let assertions: Vec<_> = calls
        .iter()
        .map(|c| jws_claims(&c.form("client_assertion").unwrap()))
        .collect();
    assert_ne!(assertions[1]["jti"], assertions[2]["jti"]);
    assert_ne!(assertions[0]["jti"], assertions[1]["jti"]);
    let now = now_secs();
    assert_near(assertions[0]["iat"].as_u64().unwrap(), now);
    assert_near(assertions[2]["iat"].as_u64().unwrap(), now + AHEAD);
    assert_near(calls[2].iat(), now + AHEAD);
}
