//! Trusted issuers end to end against a mock issuer: verification, rules, key
//! fetching and caching, configuration checks.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use dpop_core::jwt::TokenError;
use dpop_core::{Algorithm, Jkt, PrivateKey};
use dpop_test::MockIssuer;
use serde::Deserialize;
use serde_json::{Value, json};

use super::config::DEFAULT_TRUST_ALGORITHMS;
use super::*;

const AUD: &str = "https://issuer.example.com";
const NOW: u64 = 1_700_000_000;
const JKT: &str = "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I";

fn now() -> UnixTime {
    UnixTime::from_secs(NOW)
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

fn rule(claims: &[(&str, &str)], workload: &str) -> TrustRule {
    TrustRule {
        claims: claims
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        workload: workload.to_owned(),
        scopes: vec!["deploy".to_owned()],
        audiences: Vec::new(),
        clients: Vec::new(),
        outlive_subject: false,
    }
}

fn config(issuer: &str, rules: Vec<TrustRule>) -> TrustConfig {
    TrustConfig {
        name: "ci".to_owned(),
        issuer: issuer.to_owned(),
        jwks_uri: None,
        audience: AUD.to_owned(),
        algorithms: None,
        max_lifetime_secs: 3600,
        rules,
    }
}

fn trusted(mock: &MockIssuer, rules: Vec<TrustRule>) -> TrustedIssuers {
    TrustedIssuers::new(vec![config(mock.url(), rules)], http()).unwrap()
}

/// A GitHub-Actions-like job token, with Kubernetes-like nested claims too.
fn claims(mock: &MockIssuer) -> Value {
    json!({
        "iss": mock.url(),
        "aud": AUD,
        "sub": "repo:acme/app:ref:refs/tags/v1.2.3",
        "repository": "acme/app",
        "ref": "refs/tags/v1.2.3",
        "run_attempt": 1,
        "groups": ["dev", "release-managers"],
        "kubernetes.io": {"namespace": "prod", "serviceaccount": {"name": "deployer"}},
        "iat": NOW,
        "nbf": NOW,
        "exp": NOW + 600,
        "jti": "job-1",
    })
}

fn sign_with_kid(mock: &MockIssuer, kid: &str, claims: &Value) -> String {
    mock.sign_compact(&json!({"alg": "ES256", "typ": "JWT", "kid": kid}), claims)
}

fn sign(mock: &MockIssuer, claims: &Value) -> String {
    sign_with_kid(mock, &mock.kid(), claims)
}

fn with(mock: &MockIssuer, f: impl FnOnce(&mut Value)) -> String {
    let mut c = claims(mock);
    f(&mut c);
    sign(mock, &c)
}

/// Moves Tokio's clock (what the key cache reads) forward, then lets it run again.
async fn advance(secs: u64) {
    tokio::time::pause();
    tokio::time::advance(Duration::from_secs(secs)).await;
    tokio::time::resume();
}

#[tokio::test]
async fn matching_token_gives_the_external_subject() {
    let mock = MockIssuer::start().await.unwrap();
    let mut r = rule(&[("repository", "acme/app")], "spiffe://acme/app");
    r.audiences = vec!["https://api.acme.example".to_owned()];
    r.clients = vec!["ci-runner".to_owned()];
    r.scopes = vec!["deploy".to_owned(), "read".to_owned()];
    let t = trusted(&mock, vec![r]);
    assert!(!t.is_empty());
    let token = with(&mock, |c| c["cnf"] = json!({"jkt": JKT}));
    let subject = t.verify(&token, now()).await.unwrap();
    assert_eq!(
        subject,
        ExternalSubject {
            trust: "ci".to_owned(),
            issuer: mock.url().to_owned(),
            subject: Some("repo:acme/app:ref:refs/tags/v1.2.3".to_owned()),
            workload: "spiffe://acme/app".to_owned(),
            scopes: vec!["deploy".to_owned(), "read".to_owned()],
            audiences: vec!["https://api.acme.example".to_owned()],
            clients: vec!["ci-runner".to_owned()],
            expires_at: UnixTime::from_secs(NOW + 600),
            outlive_subject: false,
            jti: Some("job-1".to_owned()),
            jkt: Some(Jkt::parse(JKT).unwrap()),
        }
    );
    // Keys are cached: a second token costs no fetch.
    let again = t.verify(&sign(&mock, &claims(&mock)), now()).await.unwrap();
    assert_eq!(again.jkt, None);
    assert_eq!(mock.jwks_fetches(), 1);
    assert!(format!("{t:?}").contains("\"ci\""));
}

#[tokio::test]
async fn wildcard_pointer_and_array_claims_match() {
    let mock = MockIssuer::start().await.unwrap();
    let t = trusted(
        &mock,
        vec![rule(
            &[
                ("ref", "refs/tags/v*"),
                ("sub", "repo:acme/*:ref:*"),
                ("/kubernetes.io/namespace", "prod"),
                ("/kubernetes.io/serviceaccount/name", "deploy*"),
                ("groups", "release-*"),
                ("/groups/0", "dev"),
            ],
            "release",
        )],
    );
    assert_eq!(
        t.verify(&sign(&mock, &claims(&mock)), now())
            .await
            .unwrap()
            .workload,
        "release"
    );
    // Each constraint on its own refuses a token that misses it.
    let refused: [fn(&mut Value); 6] = [
        |c| c["ref"] = "refs/heads/main".into(),
        |c| c["sub"] = "repo:evil/app:ref:refs/tags/v1".into(),
        |c| c["kubernetes.io"]["namespace"] = "dev".into(),
        |c| c["kubernetes.io"]["serviceaccount"] = json!({"name": 1}),
        |c| c["groups"] = json!(["dev", "ops"]),
        |c| c["groups"] = json!("release-managers"),
    ];
    for (i, f) in refused.into_iter().enumerate() {
        assert!(
            matches!(
                t.verify(&with(&mock, f), now()).await,
                Err(TrustError::NoRuleMatched)
            ),
            "case {i}"
        );
    }
}

#[tokio::test]
async fn first_matching_rule_wins() {
    let mock = MockIssuer::start().await.unwrap();
    let token = sign(&mock, &claims(&mock));
    let narrow = rule(
        &[("repository", "acme/app"), ("ref", "refs/tags/*")],
        "release",
    );
    let mut broad = rule(&[("repository", "acme/*")], "any-acme");
    broad.outlive_subject = true;
    let t = trusted(&mock, vec![narrow.clone(), broad.clone()]);
    let subject = t.verify(&token, now()).await.unwrap();
    assert_eq!(subject.workload, "release");
    assert!(!subject.outlive_subject, "the matching rule's setting");
    let t = trusted(&mock, vec![broad, narrow]);
    let subject = t.verify(&token, now()).await.unwrap();
    assert_eq!(subject.workload, "any-acme");
    assert!(subject.outlive_subject);
}

#[tokio::test]
async fn no_rule_matched() {
    let mock = MockIssuer::start().await.unwrap();
    let t = trusted(
        &mock,
        vec![
            rule(&[("repository", "acme/other")], "other"),
            // A number never matches, even when its text would.
            rule(&[("repository", "acme/app"), ("run_attempt", "1")], "n"),
            rule(&[("missing", "*x")], "missing"),
        ],
    );
    assert!(matches!(
        t.verify(&sign(&mock, &claims(&mock)), now()).await,
        Err(TrustError::NoRuleMatched)
    ));
}

#[tokio::test]
async fn registered_claims_are_enforced() {
    let mock = MockIssuer::start().await.unwrap();
    let t = trusted(&mock, vec![rule(&[("repository", "acme/app")], "w")]);
    let refused = async |token: String| t.verify(&token, now()).await.unwrap_err();
    assert!(matches!(
        refused(with(&mock, |c| c["aud"] = "https://other.example".into())).await,
        TrustError::Invalid(TokenError::AudienceMismatch)
    ));
    assert!(matches!(
        refused(with(&mock, |c| {
            c.as_object_mut().unwrap().remove("aud");
        }))
        .await,
        TrustError::Invalid(TokenError::MissingClaim("aud"))
    ));
    assert!(matches!(
        refused(with(&mock, |c| c["exp"] = (NOW - 31).into())).await,
        TrustError::Invalid(TokenError::Expired { .. })
    ));
    assert!(matches!(
        refused(with(&mock, |c| c["nbf"] = (NOW + 31).into())).await,
        TrustError::Invalid(TokenError::NotYetValid)
    ));
    assert!(matches!(
        refused(with(&mock, |c| c["sub"] = json!(42))).await,
        TrustError::Invalid(TokenError::ClaimInvalid("sub"))
    ));
    assert!(matches!(
        refused(with(&mock, |c| c["cnf"] = json!({"jkt": "short"}))).await,
        TrustError::Invalid(TokenError::ClaimInvalid("cnf.jkt"))
    ));
    // Explicit types other than JWT / at+jwt (a DPoP proof, say) are refused.
    let typ = mock.sign_compact(
        &json!({"alg": "ES256", "typ": "dpop+jwt", "kid": mock.kid()}),
        &claims(&mock),
    );
    assert!(matches!(
        refused(typ).await,
        TrustError::Invalid(TokenError::TypInvalid)
    ));
    // The alg allow-list is the trust's.
    let mut strict = config(mock.url(), vec![rule(&[("repository", "acme/app")], "w")]);
    strict.algorithms = Some(vec!["RS256".to_owned()]);
    let strict = TrustedIssuers::new(vec![strict], http()).unwrap();
    assert!(matches!(
        strict.verify(&sign(&mock, &claims(&mock)), now()).await,
        Err(TrustError::Invalid(TokenError::AlgNotAllowed))
    ));
}

#[tokio::test]
async fn unknown_issuer_or_unreadable_token() {
    let mock = MockIssuer::start().await.unwrap();
    let t = trusted(&mock, vec![rule(&[("repository", "acme/app")], "w")]);
    let other = with(&mock, |c| c["iss"] = "https://evil.example".into());
    assert!(matches!(
        t.verify(&other, now()).await,
        Err(TrustError::UnknownIssuer)
    ));
    let no_iss = with(&mock, |c| {
        c.as_object_mut().unwrap().remove("iss");
    });
    let dup_iss = format!(
        "e30.{}.sig",
        dpop_test::b64url(format!(r#"{{"iss":"{0}","iss":"{0}"}}"#, mock.url()).as_bytes())
    );
    for token in [
        no_iss.as_str(),
        dup_iss.as_str(),
        "",
        "a.b",
        "a.b.c.d",
        "a.!!!.c",
        &"a".repeat(MAX_TOKEN_BYTES + 1),
    ] {
        assert!(matches!(
            t.verify(token, now()).await,
            Err(TrustError::UnknownIssuer)
        ));
    }
    // Nothing was fetched for any of them.
    assert_eq!(mock.jwks_fetches(), 0);
    assert!(TrustedIssuers::new(Vec::new(), http()).unwrap().is_empty());
}

#[tokio::test]
async fn expired_and_too_long_lived() {
    let mock = MockIssuer::start().await.unwrap();
    let t = trusted(&mock, vec![rule(&[("repository", "acme/app")], "w")]);
    assert!(matches!(
        t.verify(&with(&mock, |c| c["exp"] = (NOW - 60).into()), now())
            .await,
        Err(TrustError::Invalid(TokenError::Expired { .. }))
    ));
    // exp - iat = 3601 > 3600.
    assert!(matches!(
        t.verify(&with(&mock, |c| c["exp"] = (NOW + 3601).into()), now())
            .await,
        Err(TrustError::TooLongLived)
    ));
    // Old iat, long-lived token still in its validity window.
    assert!(matches!(
        t.verify(
            &with(&mock, |c| {
                c["iat"] = (NOW - 7200).into();
                c["nbf"] = (NOW - 7200).into();
            }),
            now()
        )
        .await,
        Err(TrustError::TooLongLived)
    ));
    // Exactly the maximum is accepted.
    t.verify(&with(&mock, |c| c["exp"] = (NOW + 3600).into()), now())
        .await
        .unwrap();
    // Without iat the lifetime is unknown: refused.
    assert!(matches!(
        t.verify(
            &with(&mock, |c| {
                c.as_object_mut().unwrap().remove("iat");
            }),
            now()
        )
        .await,
        Err(TrustError::Invalid(TokenError::MissingClaim("iat")))
    ));
}

#[tokio::test]
async fn bad_signature_with_the_same_kid() {
    let mock = MockIssuer::start().await.unwrap();
    let t = trusted(&mock, vec![rule(&[("repository", "acme/app")], "w")]);
    let forger = PrivateKey::generate(Algorithm::Es256).unwrap();
    let forged = dpop_test::sign_compact(
        &forger,
        &json!({"alg": "ES256", "typ": "JWT", "kid": mock.kid()}),
        &claims(&mock),
    )
    .unwrap();
    assert!(matches!(
        t.verify(&forged, now()).await,
        Err(TrustError::Invalid(TokenError::SignatureInvalid))
    ));
}

#[tokio::test]
async fn rotation_is_picked_up_on_unknown_kid_at_most_every_30_s() {
    let mock = MockIssuer::start().await.unwrap();
    let t = trusted(&mock, vec![rule(&[("repository", "acme/app")], "w")]);
    t.verify(&sign(&mock, &claims(&mock)), now()).await.unwrap();
    assert_eq!(mock.jwks_fetches(), 1);

    // A new key right after a fetch: the refresh is rate-limited.
    mock.rotate_key_and_drop_old();
    let rotated = sign(&mock, &claims(&mock));
    assert!(matches!(
        t.verify(&rotated, now()).await,
        Err(TrustError::Invalid(TokenError::UnknownKey))
    ));
    assert_eq!(mock.jwks_fetches(), 1);

    // 30 s later the unknown kid triggers one refresh, and the token verifies.
    advance(31).await;
    t.verify(&rotated, now()).await.unwrap();
    assert_eq!(mock.jwks_fetches(), 2);

    // Another unknown kid within 30 s does not fetch again (random kids cannot
    // hammer the issuer), whether the kid is real or not.
    mock.rotate_key();
    let rotated_again = sign(&mock, &claims(&mock));
    let random_kid = sign_with_kid(&mock, "no-such-key", &claims(&mock));
    for token in [&rotated_again, &random_kid, &rotated_again] {
        assert!(matches!(
            t.verify(token, now()).await,
            Err(TrustError::Invalid(TokenError::UnknownKey))
        ));
    }
    assert_eq!(mock.jwks_fetches(), 2);
    // Known keys keep working meanwhile.
    t.verify(&rotated, now()).await.unwrap();
    advance(31).await;
    t.verify(&rotated_again, now()).await.unwrap();
    assert_eq!(mock.jwks_fetches(), 3);
}

#[tokio::test]
async fn keys_are_refreshed_after_five_minutes() {
    let mock = MockIssuer::start().await.unwrap();
    let t = trusted(&mock, vec![rule(&[("repository", "acme/app")], "w")]);
    let token = sign(&mock, &claims(&mock));
    t.verify(&token, now()).await.unwrap();
    advance(299).await;
    t.verify(&token, now()).await.unwrap();
    assert_eq!(mock.jwks_fetches(), 1);
    advance(2).await;
    t.verify(&token, now()).await.unwrap();
    assert_eq!(mock.jwks_fetches(), 2);
}

#[tokio::test]
async fn concurrent_first_use_fetches_once() {
    let mock = MockIssuer::start().await.unwrap();
    let t = trusted(&mock, vec![rule(&[("repository", "acme/app")], "w")]);
    let token = sign(&mock, &claims(&mock));
    let (a, b, c, d) = tokio::join!(
        t.verify(&token, now()),
        t.verify(&token, now()),
        t.verify(&token, now()),
        t.verify(&token, now())
    );
    for r in [a, b, c, d] {
        r.unwrap();
    }
    assert_eq!(mock.jwks_fetches(), 1);
}

#[tokio::test]
async fn jwks_endpoint_down_is_unavailable() {
    // The issuer is gone before the first fetch.
    let mock = MockIssuer::start().await.unwrap();
    let token = sign(&mock, &claims(&mock));
    let t = trusted(&mock, vec![rule(&[("repository", "acme/app")], "w")]);
    drop(mock);
    let err = t.verify(&token, now()).await.unwrap_err();
    let TrustError::Unavailable(msg) = &err else {
        panic!("{err:?}");
    };
    assert!(
        msg.contains("trust \"ci\"") && msg.contains("cannot discover"),
        "{msg}"
    );
    // Retried only after a pause; meanwhile the same error, without a request.
    let err = t.verify(&token, now()).await.unwrap_err();
    assert!(
        matches!(&err, TrustError::Unavailable(m) if m.contains("cannot discover") && m.contains("retrying")),
        "{err:?}"
    );

    // A configured jwks_uri that answers 404.
    let mock = MockIssuer::start().await.unwrap();
    let mut c = config(mock.url(), vec![rule(&[("repository", "acme/app")], "w")]);
    c.jwks_uri = Some(format!("{}/no-such-path", mock.url()));
    let t = TrustedIssuers::new(vec![c], http()).unwrap();
    let err = t
        .verify(&sign(&mock, &claims(&mock)), now())
        .await
        .unwrap_err();
    let TrustError::Unavailable(msg) = &err else {
        panic!("{err:?}");
    };
    assert!(msg.contains("404"), "{msg}");
    // A configured jwks_uri is used as is (no discovery).
    let mut c = config(mock.url(), vec![rule(&[("repository", "acme/app")], "w")]);
    c.jwks_uri = Some(mock.jwks_uri());
    let t = TrustedIssuers::new(vec![c], http()).unwrap();
    t.verify(&sign(&mock, &claims(&mock)), now()).await.unwrap();
}

#[tokio::test]
async fn stale_keys_survive_an_unreachable_issuer() {
    let mock = MockIssuer::start().await.unwrap();
    let t = trusted(&mock, vec![rule(&[("repository", "acme/app")], "w")]);
    let token = sign(&mock, &claims(&mock));
    t.verify(&token, now()).await.unwrap();
    drop(mock);
    advance(301).await;
    // The refresh fails; the keys we have still verify.
    t.verify(&token, now()).await.unwrap();
    assert!(
        t.trusts[0].jwks.last_error().await.is_some(),
        "a refresh was attempted"
    );
}

#[test]
fn validate_messages() {
    let base = || {
        config(
            "https://token.actions.githubusercontent.com",
            vec![rule(&[("repository", "acme/app")], "w")],
        )
    };
    base().validate().unwrap();
    let err = |f: &dyn Fn(&mut TrustConfig)| {
        let mut c = base();
        f(&mut c);
        c.validate().unwrap_err()
    };
    assert_eq!(
        err(&|c| c.name = " ".into()),
        "a trust (issuer \"https://token.actions.githubusercontent.com\") has an empty name"
    );
    assert_eq!(
        err(&|c| c.issuer = "http://gitlab.example.com".into()),
        "trust \"ci\": issuer \"http://gitlab.example.com\" must use https (http is accepted only for 127.0.0.1, localhost and [::1])"
    );
    assert!(
        err(&|c| c.issuer = "not a url".into())
            .starts_with("trust \"ci\": issuer \"not a url\" is not a URL")
    );
    assert_eq!(
        err(&|c| c.issuer = "ftp://x.example".into()),
        "trust \"ci\": issuer \"ftp://x.example\" has scheme \"ftp\", not https"
    );
    assert_eq!(
        err(&|c| c.issuer = "https://x.example/?a=b".into()),
        "trust \"ci\": issuer \"https://x.example/?a=b\" must not have a query"
    );
    assert_eq!(
        err(&|c| c.issuer = "https://u:p@x.example".into()),
        "trust \"ci\": issuer \"https://u:p@x.example\" must not contain credentials"
    );
    assert_eq!(
        err(&|c| c.jwks_uri = Some("http://10.0.0.1/jwks".into())),
        "trust \"ci\": jwks_uri \"http://10.0.0.1/jwks\" must use https (http is accepted only for 127.0.0.1, localhost and [::1])"
    );
    assert_eq!(
        err(&|c| c.jwks_uri = Some("https://x.example/jwks#k".into())),
        "trust \"ci\": jwks_uri \"https://x.example/jwks#k\" must not have a fragment"
    );
    assert_eq!(
        err(&|c| c.audience = String::new()),
        "trust \"ci\": audience is empty"
    );
    assert_eq!(
        err(&|c| c.algorithms = Some(vec!["ES256".into(), "HS256".into()])),
        "trust \"ci\": unknown or forbidden algorithm \"HS256\" (asymmetric JWS names such as RS256, ES256, EdDSA)"
    );
    assert_eq!(
        err(&|c| c.algorithms = Some(Vec::new())),
        "trust \"ci\": algorithms is empty (omit it for the defaults)"
    );
    assert_eq!(
        err(&|c| c.max_lifetime_secs = 0),
        "trust \"ci\": max_lifetime_secs is 0, must be between 1 and 86400"
    );
    assert_eq!(
        err(&|c| c.max_lifetime_secs = 86_401),
        "trust \"ci\": max_lifetime_secs is 86401, must be between 1 and 86400"
    );
    assert_eq!(
        err(&|c| c.rules.clear()),
        "trust \"ci\": has no rules (at least one [[trust.rules]] is needed)"
    );
    assert_eq!(
        err(&|c| c.rules.push(rule(&[], "w2"))),
        "trust \"ci\": rule 2: workload \"w2\": claims is empty (a rule must constrain the subject token)"
    );
    assert_eq!(
        err(&|c| c.rules[0].workload = " ".into()),
        "trust \"ci\": rule 1: workload is empty"
    );
    assert_eq!(
        err(&|c| c.rules[0] = rule(&[("repository", "*"), ("ref", "**")], "w")),
        "trust \"ci\": rule 1: workload \"w\": every claim pattern is a bare wildcard, which matches any token of the issuer"
    );
    assert_eq!(
        err(&|c| c.rules[0] = rule(&[("/a~b", "x")], "w")),
        "trust \"ci\": rule 1: workload \"w\": claim \"/a~b\" is not a JSON pointer: `~` must be followed by 0 or 1 (RFC 6901)"
    );
    assert_eq!(
        err(&|c| c.rules[0].scopes = vec!["read write".into()]),
        "trust \"ci\": rule 1: workload \"w\": scope \"read write\" is not a scope token (RFC 6749 §3.3)"
    );
    assert_eq!(
        err(&|c| c.rules[0].audiences = vec![String::new()]),
        "trust \"ci\": rule 1: workload \"w\": an audience is empty"
    );
    assert_eq!(
        err(&|c| c.rules[0].clients = vec![String::new()]),
        "trust \"ci\": rule 1: workload \"w\": a client id is empty"
    );
    // Loopback http is fine (local issuers, tests).
    for issuer in [
        "http://127.0.0.1:8080",
        "http://localhost",
        "http://[::1]:9000/x",
    ] {
        let mut c = base();
        c.issuer = issuer.into();
        c.validate().unwrap();
    }
}

#[test]
fn duplicate_names_or_issuers_are_refused() {
    let a = config("https://a.example", vec![rule(&[("sub", "x")], "w")]);
    let mut b = config("https://b.example", vec![rule(&[("sub", "x")], "w")]);
    assert_eq!(
        TrustedIssuers::new(vec![a.clone(), b.clone()], http()).unwrap_err(),
        "trust \"ci\" is defined twice"
    );
    b.name = "other".into();
    TrustedIssuers::new(vec![a.clone(), b.clone()], http()).unwrap();
    b.issuer = a.issuer.clone();
    assert_eq!(
        TrustedIssuers::new(vec![a, b], http()).unwrap_err(),
        "trust \"other\": issuer \"https://a.example\" is already trusted by another entry"
    );
}

#[test]
fn toml_tables_parse_with_defaults() {
    #[derive(Debug, Deserialize)]
    struct File {
        trust: Vec<TrustConfig>,
    }
    let file: File = toml::from_str(
        r#"
        [[trust]]
        name = "github"
        issuer = "https://token.actions.githubusercontent.com"
        audience = "https://issuer.example.com"

        [[trust.rules]]
        claims = { repository = "acme/app", ref = "refs/tags/v*" }
        workload = "acme-app-release"
        scopes = ["deploy"]

        [[trust]]
        name = "k8s"
        issuer = "https://kubernetes.default.svc"
        jwks_uri = "https://10.0.0.1:6443/openid/v1/jwks"
        audience = "https://issuer.example.com"
        algorithms = ["RS256"]
        max_lifetime_secs = 7200

        [[trust.rules]]
        claims = { "/kubernetes.io/namespace" = "prod" }
        workload = "prod-deployer"
        scopes = ["deploy", "read"]
        audiences = ["https://api.example.com"]
        clients = ["ci"]
        outlive_subject = true
        "#,
    )
    .unwrap();
    let [gh, k8s] = file.trust.as_slice() else {
        panic!("two trusts");
    };
    assert_eq!(gh.max_lifetime_secs, 3600);
    assert_eq!(gh.jwks_uri, None);
    assert_eq!(gh.algorithms, None);
    assert!(gh.rules[0].audiences.is_empty() && gh.rules[0].clients.is_empty());
    assert_eq!(k8s.max_lifetime_secs, 7200);
    assert_eq!(k8s.rules[0].clients, vec!["ci"]);
    assert!(!gh.rules[0].outlive_subject && k8s.rules[0].outlive_subject);
    let t = TrustedIssuers::new(file.trust.clone(), http()).unwrap();
    assert_eq!(
        t.trusts[0].validation.algorithms,
        DEFAULT_TRUST_ALGORITHMS.to_vec()
    );
    assert_eq!(t.trusts[1].validation.algorithms, vec![Algorithm::Rs256]);
    // Unknown fields are refused.
    let typo = toml::from_str::<File>(
        r#"
        [[trust]]
        name = "x"
        issuer = "https://x.example"
        audience = "a"
        max_lifetime = 10
        rules = []
        "#,
    );
    assert!(typo.unwrap_err().to_string().contains("max_lifetime"));
}
