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
    exchanged_token_expires_no_later_than_the_job_token,
    no_refresh_grant_from_a_job_token_by_default,
    outlive_subject_gives_the_client_lifetime_and_a_refresh_grant,
    job_token_never_becomes_a_refresh_grant_through_another_exchange,
);

/// The `aud` the trusted issuer's tokens must carry.
const TRUST_AUD: &str = "https://issuer.test";

/// The trust of these tests. The `shop-deployer` rule lets its grants outlive the job
/// token when `outlive` is set; the other rules never do.
fn trust_toml(ci: &MockIssuer, outlive: bool) -> String {
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
outlive_subject = {outlive}

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
    start_trust(db, ci, false, more).await
}

/// [`start`] with `outlive_subject` on the `shop-deployer` rule.
async fn start_outliving(db: &Db, ci: &MockIssuer) -> TestIssuer {
    start_trust(db, ci, true, "").await
}

async fn start_trust(db: &Db, ci: &MockIssuer, outlive: bool, more: &str) -> TestIssuer {
    TestIssuer::start_with(
        db,
        Setup {
            extra: format!("{}{more}", trust_toml(ci, outlive)),
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
    // The shop's grants may outlive its job token: a refresh grant is started below.
    let it = start_outliving(&db, &ci).await;
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

/// The `exp` of a compact JWT, not verified.
fn exp_of(token: &str) -> u64 {
    decode(token).1["exp"].as_u64().expect("exp")
}

fn prod_claims() -> Value {
    json!({ "repository": "acme/tools", "environment": { "name": "prod" } })
}

/// By default the token issued for a job token expires no later than the job token,
/// whatever the client's access-token lifetime (300 s here).
async fn exchanged_token_expires_no_later_than_the_job_token(db: Db) {
    let ci = MockIssuer::start().await.unwrap();
    let it = start(&db, &ci, "").await;
    let k = key();
    // Job tokens of 600 s.
    let shop = job_token(&it, &ci, &shop_claims());
    let prod = job_token(&it, &ci, &prod_claims());
    let job_exp = exp_of(&shop);

    // Early in the job, the client's lifetime is the tighter bound.
    let body = exchange_jwt(&it, &public("public"), Some(&k), &shop, &[])
        .await
        .ok();
    assert_eq!(body["expires_in"], json!(300));
    assert_eq!(
        exp_of(body["access_token"].as_str().unwrap()),
        it.clock.secs() + 300
    );

    // 100 s before the job token expires: the new token ends with it.
    it.clock.advance(500);
    let body = exchange_jwt(&it, &public("public"), Some(&k), &shop, &[])
        .await
        .ok();
    assert_eq!(body["expires_in"], json!(100), "{body}");
    let access = body["access_token"].as_str().unwrap();
    assert_eq!(exp_of(access), job_exp);
    assert_eq!(it.verify(access, API).await.expires_at.as_secs(), job_exp);
    // The same for a confidential client that may refresh, under a rule open to any
    // client.
    let body = exchange_jwt(&it, &basic("svc"), Some(&k), &prod, &[])
        .await
        .ok();
    assert_eq!(body["expires_in"], json!(100), "{body}");
    assert_eq!(
        exp_of(body["access_token"].as_str().unwrap()),
        exp_of(&prod)
    );

    // Past its exp, within the verifier's clock leeway: no time is left to grant.
    it.clock.advance(110);
    exchange_jwt(&it, &public("public"), Some(&k), &shop, &[])
        .await
        .err(400, "invalid_grant");
}

/// By default exchanging a job token starts no refresh grant, even for clients that
/// have the refresh_token grant (and `refresh_from_exchange`, which is about this
/// issuer's own tokens).
async fn no_refresh_grant_from_a_job_token_by_default(db: Db) {
    let ci = MockIssuer::start().await.unwrap();
    let it = start(&db, &ci, "").await;
    let k = key();
    let shop = job_token(&it, &ci, &shop_claims());
    let prod = job_token(&it, &ci, &prod_claims());
    let bound = job_token(
        &it,
        &ci,
        &json!({ "repository": "acme/shop", "ref": "refs/heads/main", "cnf": { "jkt": jkt(&k) } }),
    );
    for (auth, job) in [
        (public("public"), &shop),
        (public("public"), &bound),
        (basic("svc"), &prod),
    ] {
        let body = exchange_jwt(&it, &auth, Some(&k), job, &[]).await.ok();
        assert!(body.get("refresh_token").is_none(), "{auth:?}: {body}");
    }
    assert_eq!(db.count("SELECT COUNT(*) FROM refresh_families").await, 0);
    assert_eq!(db.count("SELECT COUNT(*) FROM refresh_tokens").await, 0);
}

/// A rule with `outlive_subject`: the client's full access-token lifetime and, for a
/// client with the refresh_token grant, a refresh grant that goes on after the job token
/// has expired. The rules without it are unaffected.
async fn outlive_subject_gives_the_client_lifetime_and_a_refresh_grant(db: Db) {
    let ci = MockIssuer::start().await.unwrap();
    let it = start_outliving(&db, &ci).await;
    let k = key();
    let shop = job_token(&it, &ci, &shop_claims());
    let prod = job_token(&it, &ci, &prod_claims());
    let job_exp = exp_of(&shop);

    it.clock.advance(500);
    let body = exchange_jwt(&it, &public("public"), Some(&k), &shop, &[])
        .await
        .ok();
    assert_eq!(body["expires_in"], json!(300));
    let access = body["access_token"].as_str().unwrap();
    assert_eq!(exp_of(access), it.clock.secs() + 300);
    assert!(exp_of(access) > job_exp);
    let rt = body["refresh_token"].as_str().expect("a refresh token");
    // A rule without the setting keeps the default, on the same issuer.
    let other = exchange_jwt(&it, &basic("svc"), Some(&k), &prod, &[])
        .await
        .ok();
    assert_eq!(other["expires_in"], json!(100), "{other}");
    assert!(other.get("refresh_token").is_none(), "{other}");
    assert_eq!(db.count("SELECT COUNT(*) FROM refresh_families").await, 1);

    // The job token has expired; the refresh grant lives on, bound to the key.
    it.clock.advance(200);
    exchange_jwt(&it, &public("public"), Some(&k), &shop, &[])
        .await
        .err(400, "invalid_grant");
    let refreshed = it.refresh(&public("public"), Some(&k), rt, &[]).await.ok();
    let c = decode(refreshed["access_token"].as_str().unwrap()).1;
    assert_eq!(c["sub"], json!("shop-deployer"));
    assert_eq!(c["exp"], json!(it.clock.secs() + 300));
    assert_eq!(c["cnf"]["jkt"], json!(jkt(&k)));
}

/// A token issued for a job token under a rule without `outlive_subject` ends with the
/// job token however it is exchanged again: by its own client or by one acting for it,
/// both with `refresh_from_exchange`, it never starts a refresh grant.
async fn job_token_never_becomes_a_refresh_grant_through_another_exchange(db: Db) {
    let ci = MockIssuer::start().await.unwrap();
    let it = start(&db, &ci, "").await;
    let k = key();
    let job = job_token(&it, &ci, &prod_claims());
    let job_exp = exp_of(&job);
    let first = exchange_jwt(&it, &basic("svc"), Some(&k), &job, &[])
        .await
        .ok();
    assert!(first.get("refresh_token").is_none(), "{first}");
    let own = first["access_token"].as_str().unwrap().to_owned();
    // svc down-scopes it, svc2 acts for svc, and svc exchanges the result once more.
    let again = it.exchange(&basic("svc"), Some(&k), &own, &[]).await.ok();
    assert!(again.get("refresh_token").is_none(), "{again}");
    let delegated = it.exchange(&basic("svc2"), Some(&k), &own, &[]).await.ok();
    assert!(delegated.get("refresh_token").is_none(), "{delegated}");
    let delegated = delegated["access_token"].as_str().unwrap().to_owned();
    let third = it
        .exchange(&basic("svc2"), Some(&k), &delegated, &[])
        .await
        .ok();
    assert!(third.get("refresh_token").is_none(), "{third}");
    for body in [&again, &third] {
        assert!(exp_of(body["access_token"].as_str().unwrap()) <= job_exp);
    }
    assert_eq!(db.count("SELECT COUNT(*) FROM refresh_families").await, 0);
}

/// `outlive_subject` is for workloads that refresh: a rule none of whose clients has the
/// refresh_token grant is refused at load.
#[test]
fn outlive_subject_needs_a_client_that_can_refresh() {
    let parse = |clients: &str, rule_clients: &str| {
        let text = format!(
            r#"
issuer = "https://issuer.example"
{clients}
[[trust]]
name = "ci"
issuer = "https://ci.example"
audience = "https://issuer.example"

[[trust.rules]]
claims = {{ repository = "acme/shop" }}
workload = "shop"
scopes = ["read"]
clients = [{rule_clients}]
outlive_subject = true
"#
        );
        dpop_issuer::IssuerConfig::from_toml(
            &text,
            &std::env::temp_dir(),
            &std::collections::BTreeMap::new(),
        )
        .map_err(|e| e.message().to_owned())
    };
    let client = |id: &str, grants: &[&str]| {
        ClientFixture::public(id)
            .grants(grants.iter().copied())
            .audiences([API])
            .render()
    };
    let exchange_only = client("x", &[GRANT_EXCHANGE]);
    let refreshing = client("y", &[GRANT_EXCHANGE, GRANT_REFRESH]);
    let both = format!("{exchange_only}{refreshing}");

    for (clients, rule_clients) in [
        (exchange_only.as_str(), "\"x\""),
        (exchange_only.as_str(), ""),
        (both.as_str(), "\"x\""),
    ] {
        let e = parse(clients, rule_clients).expect_err(rule_clients);
        assert_eq!(
            e,
            "trust \"ci\": rule for workload \"shop\" sets outlive_subject, but none of its \
             clients has the refresh_token grant (remove the setting: tokens then end with the \
             subject token)"
        );
    }
    for (clients, rule_clients) in [
        (refreshing.as_str(), "\"y\""),
        (both.as_str(), "\"x\", \"y\""),
        (both.as_str(), ""),
    ] {
        let config = parse(clients, rule_clients).unwrap_or_else(|e| panic!("{e}"));
        assert!(config.trust[0].rules[0].outlive_subject);
    }
}
