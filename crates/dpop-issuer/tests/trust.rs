//! Token exchange (RFC 8693) of external workload JWTs from trusted issuers (`[[trust]]`),
//! against a mock external issuer on loopback (discovery, JWKS).

use dpop_core::PrivateKey;
use dpop_test::{MockIssuer, TokenSpec};
use serde_json::{Map, Value, json};

use crate::support::*;

db_tests!(
    external_token_exchanged_for_a_workload_token,
    external_token_refusals,
    rule_clients_and_audiences,
    bound_external_token_needs_its_key,
    external_issuer_down,
);

/// The `aud` the trusted issuer's tokens must carry.
const TRUST_AUD: &str = "https://issuer.test";

fn trust_toml(ci: &MockIssuer) -> String {
    format!(
        r#"
[[trust]]
name = "ci"
issuer = "{iss}"
audience = "{TRUST_AUD}"
max_lifetime_secs = 900

[[trust.rules]]
claims = {{ repository = "acme/shop", ref = "refs/heads/*" }}
workload = "shop-deployer"
scopes = ["read", "write"]
clients = ["public"]

[[trust.rules]]
claims = {{ repository = "acme/other" }}
workload = "other-deployer"
scopes = ["read"]
audiences = ["{OTHER_API}"]
clients = ["svc2"]

[[trust.rules]]
claims = {{ "/environment/name" = "prod", repository = "acme/*" }}
workload = "any-prod"
scopes = ["read"]
"#,
        iss = ci.url()
    )
}

async fn start(db: &Db, ci: &MockIssuer, more: &str) -> TestIssuer {
    TestIssuer::start_with(
        db,
        Setup {
            extra: format!("{}{more}", trust_toml(ci)),
            ..Setup::default()
        },
    )
    .await
}

/// A CI job token from `ci` at the test time, with `claims` merged in.
fn job_token(it: &TestIssuer, ci: &MockIssuer, claims: &Value) -> String {
    let extra: Map<String, Value> = claims.as_object().cloned().unwrap_or_default();
    ci.mint(&TokenSpec {
        sub: "repo:acme/shop:ref:refs/heads/main".into(),
        aud: TRUST_AUD.into(),
        typ: Some("JWT".into()),
        now: Some(it.clock.secs()),
        lifetime_secs: 600,
        extra,
        ..TokenSpec::default()
    })
}

fn shop_claims() -> Value {
    json!({ "repository": "acme/shop", "ref": "refs/heads/main" })
}

async fn exchange_jwt(
    it: &TestIssuer,
    auth: &Auth,
    key: Option<&PrivateKey>,
    token: &str,
    form: &[(&str, &str)],
) -> Resp {
    let mut all = vec![
        ("grant_type", GRANT_EXCHANGE),
        ("subject_token", token),
        ("subject_token_type", TT_JWT),
    ];
    all.extend_from_slice(form);
    it.token(auth, key, &all).await
}

async fn external_token_exchanged_for_a_workload_token(db: Db) {
    let ci = MockIssuer::start().await.unwrap();
    let it = start(&db, &ci, "").await;
    let k = key();
    let job = job_token(&it, &ci, &shop_claims());

    let body = exchange_jwt(&it, &public("public"), Some(&k), &job, &[])
        .await
        .ok();
    assert_eq!(body["issued_token_type"], json!(TT_ACCESS));
    assert_eq!(body["token_type"], json!("DPoP"));
    assert_eq!(body["scope"], json!("read write"));
    let jwt = it.verify(body["access_token"].as_str().unwrap(), API).await;
    let c = &jwt.claims;
    assert_eq!(c["sub"], json!("shop-deployer"));
    assert_eq!(c["client_id"], json!("public"));
    assert_eq!(c["aud"], json!(API));
    assert_eq!(c["scope"], json!("read write"));
    assert_eq!(c["cnf"]["jkt"], json!(jkt(&k)));
    assert_eq!(c["iss"], json!(it.url));
    assert!(c.get("act").is_none());

    // A subset of the rule's scopes; never more.
    let body = exchange_jwt(&it, &public("public"), Some(&k), &job, &[("scope", "read")])
        .await
        .ok();
    assert_eq!(body["scope"], json!("read"));
    exchange_jwt(
        &it,
        &public("public"),
        Some(&k),
        &job,
        &[("scope", "read admin")],
    )
    .await
    .err(400, "invalid_scope");

    // The public client got a key-bound refresh token for the workload.
    let rt = body["refresh_token"].as_str().expect("refresh_token");
    let refreshed = it.refresh(&public("public"), Some(&k), rt, &[]).await.ok();
    let c = decode(refreshed["access_token"].as_str().unwrap()).1;
    assert_eq!(c["sub"], json!("shop-deployer"));
    assert_eq!(c["scope"], json!("read"));
    it.refresh(
        &public("public"),
        Some(&key()),
        refreshed["refresh_token"].as_str().unwrap(),
        &[],
    )
    .await
    .err(400, "invalid_grant");

    // A JSON-pointer rule, open to any client with the grant.
    let prod = job_token(
        &it,
        &ci,
        &json!({ "repository": "acme/tools", "environment": { "name": "prod" } }),
    );
    let body = exchange_jwt(&it, &basic("svc"), Some(&k), &prod, &[])
        .await
        .ok();
    let c = decode(body["access_token"].as_str().unwrap()).1;
    assert_eq!(c["sub"], json!("any-prod"));
    assert_eq!(c["client_id"], json!("svc"));
    assert_eq!(c["scope"], json!("read"));
}

async fn external_token_refusals(db: Db) {
    let ci = MockIssuer::start().await.unwrap();
    let untrusted = MockIssuer::start().await.unwrap();
    let it = start(&db, &ci, "").await;
    let k = key();
    let auth = public("public");
    let now = it.clock.secs();

    let cases: Vec<(&str, String)> = vec![
        (
            "no rule matches",
            job_token(
                &it,
                &ci,
                &json!({ "repository": "acme/evil", "ref": "refs/heads/main" }),
            ),
        ),
        (
            "a rule's claim does not match",
            job_token(
                &it,
                &ci,
                &json!({ "repository": "acme/shop", "ref": "refs/tags/v1" }),
            ),
        ),
        (
            "a claim is missing",
            job_token(&it, &ci, &json!({ "repository": "acme/shop" })),
        ),
        (
            "untrusted issuer",
            job_token(&it, &untrusted, &shop_claims()),
        ),
        (
            "wrong aud",
            job_token(
                &it,
                &ci,
                &json!({ "repository": "acme/shop", "ref": "refs/heads/main", "aud": "https://someone-else.example" }),
            ),
        ),
        (
            "expired",
            job_token(
                &it,
                &ci,
                &json!({ "repository": "acme/shop", "ref": "refs/heads/main", "iat": now - 700, "exp": now - 100 }),
            ),
        ),
        (
            "lives too long",
            job_token(
                &it,
                &ci,
                &json!({ "repository": "acme/shop", "ref": "refs/heads/main", "exp": now + 3600 }),
            ),
        ),
        ("garbage", "garbage".to_owned()),
    ];
    for (what, token) in cases {
        let r = exchange_jwt(&it, &auth, Some(&k), &token, &[]).await;
        assert_eq!(r.status, 400, "{what}: {}", r.body);
        r.err(400, "invalid_grant");
    }

    // Signed by a key the issuer does not publish, under its kid.
    let (_, claims) = decode(&job_token(&it, &ci, &shop_claims()));
    let forged = dpop_test::sign_compact(
        &key(),
        &json!({ "alg": "ES256", "typ": "JWT", "kid": ci.kid() }),
        &claims,
    )
    .unwrap();
    exchange_jwt(&it, &auth, Some(&k), &forged, &[])
        .await
        .err(400, "invalid_grant");

    // The same good token is accepted.
    let job = job_token(&it, &ci, &shop_claims());
    exchange_jwt(&it, &auth, Some(&k), &job, &[]).await.ok();
}

async fn rule_clients_and_audiences(db: Db) {
    let ci = MockIssuer::start().await.unwrap();
    let it = start(&db, &ci, "").await;
    let k = key();
    let shop = job_token(&it, &ci, &shop_claims());
    let other = job_token(&it, &ci, &json!({ "repository": "acme/other" }));
    // Each rule names the clients that may present its tokens.
    exchange_jwt(&it, &basic("svc2"), Some(&k), &shop, &[])
        .await
        .err(400, "invalid_grant");
    exchange_jwt(&it, &public("public"), Some(&k), &other, &[])
        .await
        .err(400, "invalid_grant");
    // The rule's audiences replace the client's.
    let body = exchange_jwt(&it, &basic("svc2"), Some(&k), &other, &[])
        .await
        .ok();
    let c = decode(body["access_token"].as_str().unwrap()).1;
    assert_eq!(c["sub"], json!("other-deployer"));
    assert_eq!(c["aud"], json!(OTHER_API));
    exchange_jwt(&it, &basic("svc2"), Some(&k), &other, &[("resource", API)])
        .await
        .err(400, "invalid_target");
    // Without the token-exchange grant, nothing.
    exchange_jwt(&it, &basic("cc-only"), Some(&k), &shop, &[])
        .await
        .err(400, "unauthorized_client");
}

async fn bound_external_token_needs_its_key(db: Db) {
    let ci = MockIssuer::start().await.unwrap();
    let it = start(&db, &ci, "").await;
    let k = key();
    let bound = job_token(
        &it,
        &ci,
        &json!({ "repository": "acme/shop", "ref": "refs/heads/main", "cnf": { "jkt": jkt(&k) } }),
    );
    exchange_jwt(&it, &public("public"), Some(&key()), &bound, &[])
        .await
        .err(400, "invalid_grant");
    let body = exchange_jwt(&it, &public("public"), Some(&k), &bound, &[])
        .await
        .ok();
    assert_eq!(
        decode(body["access_token"].as_str().unwrap()).1["cnf"]["jkt"],
        json!(jkt(&k))
    );
}

async fn external_issuer_down(db: Db) {
    let ci = MockIssuer::start().await.unwrap();
    let down = format!("http://127.0.0.1:{}", dpop_test::free_port());
    let more = format!(
        r#"
[[trust]]
name = "down"
issuer = "{down}"
jwks_uri = "{down}/jwks"
audience = "{TRUST_AUD}"

[[trust.rules]]
claims = {{ repository = "acme/shop" }}
workload = "w"
scopes = ["read"]
"#
    );
    let it = start(&db, &ci, &more).await;
    let k = key();
    let signer = key();
    let now = it.clock.secs();
    let token = dpop_test::sign_compact(
        &signer,
        &json!({ "alg": "ES256", "typ": "JWT" }),
        &json!({ "iss": down, "aud": TRUST_AUD, "iat": now, "exp": now + 60, "repository": "acme/shop" }),
    )
    .unwrap();
    let r = exchange_jwt(&it, &public("public"), Some(&k), &token, &[]).await;
    r.err(503, "temporarily_unavailable");
    assert!(r.header("retry-after").is_some());
}
