//! Token sources against the real issuer (nonces on at its token endpoint): client
//! credentials with a secret or `private_key_jwt`, token exchange with a subject token
//! from a file, a value or an environment variable, refresh tokens, the endpoint from the
//! issuer's metadata; tokens cached, renewed before they expire, by one token request
//! however many requests wait.

use std::sync::Arc;
use std::time::{Duration, Instant};

use dpop_client::{
    ClientAuth, ClientError, ClientKey, DpopMiddleware, Grant, OAuthTokens, SubjectToken,
    TokenRequest, TokenSource as _,
};
use dpop_test::{MockIssuer, TokenSpec};
use serde_json::json;

use crate::support::{
    API, Api, ApiOptions, CHILD_PASSED, GRANT_EXCHANGE, Issuer, SECRET, Seen, TT_ACCESS, TT_JWT,
    TempDir, client_key, es256, http_client, is_child, jws_claims, run_child,
};

/// The successful token requests the issuer answered.
fn issued(issuer: &Issuer) -> Vec<Seen> {
    issuer
        .token_calls()
        .into_iter()
        .filter(|s| s.status == 200)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_credentials_with_a_secret() {
    let issuer = Issuer::start("").await;
    let (key, jkt) = client_key();
    let dpop = DpopMiddleware::new(key);
    let mut request = issuer.secret_request("svc", Grant::ClientCredentials);
    request.scope = Some("read write".to_owned());
    request.audiences = vec![API.to_owned()];
    let tokens = OAuthTokens::new(request, &dpop).unwrap();
    let response = tokens.fetch().await.unwrap();

    assert_eq!(response.token_type, "DPoP");
    assert_eq!(response.expires_in, Some(300));
    assert!(response.refresh_token.is_none());
    assert_eq!(response.json["token_type"], "DPoP");
    let claims = jws_claims(&response.access_token);
    assert_eq!(claims["cnf"]["jkt"], jkt.as_str());
    assert_eq!(claims["client_id"], "svc");
    assert_eq!(claims["scope"], "read write");
    assert_eq!(claims["iss"], issuer.url.as_str());

    // The endpoint came from the metadata; the secret went as Basic credentials.
    let all = issuer.log.all();
    assert_eq!(all[0].method, "GET");
    assert_eq!(all[0].uri, "/.well-known/oauth-authorization-server");
    let ok = issued(&issuer);
    assert_eq!(ok.len(), 1);
    assert!(ok[0].header("authorization").unwrap().starts_with("Basic "));
    assert_eq!(
        ok[0].form("grant_type").as_deref(),
        Some("client_credentials")
    );
    assert_eq!(ok[0].form("scope").as_deref(), Some("read write"));
    assert_eq!(ok[0].form("audience").as_deref(), Some(API));
    assert_eq!(ok[0].form("client_secret"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_key_jwt_with_the_clients_own_key() {
    let issuer = Issuer::start("").await;
    let (key, jkt) = client_key();
    let client_key = ClientKey::from_text(&issuer.client_key_pem).unwrap();
    assert_ne!(client_key.thumbprint().as_str(), jkt);
    let dpop = DpopMiddleware::new(key);
    let auth = ClientAuth::PrivateKeyJwt {
        client_id: "keyed".to_owned(),
        key: client_key,
    };
    let tokens = OAuthTokens::new(
        TokenRequest::new(&issuer.url, auth, Grant::ClientCredentials),
        &dpop,
    )
    .unwrap();
    let response = tokens.fetch().await.unwrap();
    let claims = jws_claims(&response.access_token);
    // Bound to the DPoP key, not to the key that authenticated the client.
    assert_eq!(claims["cnf"]["jkt"], jkt.as_str());
    assert_eq!(claims["client_id"], "keyed");

    let ok = issued(&issuer);
    assert_eq!(ok.len(), 1);
    assert_eq!(ok[0].header("authorization"), None);
    assert_eq!(ok[0].form("client_id").as_deref(), Some("keyed"));
    let assertion = ok[0].form("client_assertion").unwrap();
    let a = jws_claims(&assertion);
    assert_eq!(
        (a["iss"].as_str(), a["sub"].as_str()),
        (Some("keyed"), Some("keyed"))
    );
    assert_eq!(a["aud"], format!("{}/token", issuer.url));
    // Every attempt (the nonce challenge too) has its own assertion: jti is single-use.
    let calls = issuer.token_calls();
    assert_eq!(calls.len(), 2);
    assert_ne!(
        calls[0].form("client_assertion"),
        calls[1].form("client_assertion")
    );
}

/// `[[trust]]` for tokens of `ci`, exchangeable by the `public` client, which gets a
/// refresh grant for them (`outlive_subject`).
fn trust_toml(ci: &MockIssuer) -> String {
    format!(
        r#"
[[trust]]
name = "ci"
issuer = "{iss}"
audience = "https://issuer.test"

[[trust.rules]]
claims = {{ repository = "acme/shop" }}
workload = "shop-deployer"
scopes = ["read"]
clients = ["public"]
outlive_subject = true
"#,
        iss = ci.url()
    )
}

fn job_token(ci: &MockIssuer) -> String {
    let extra = json!({ "repository": "acme/shop" });
    ci.mint(&TokenSpec {
        sub: "repo:acme/shop:ref:refs/heads/main".into(),
        aud: "https://issuer.test".into(),
        typ: Some("JWT".into()),
        extra: extra.as_object().cloned().unwrap_or_default(),
        ..TokenSpec::default()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_exchange_with_a_subject_token_from_a_file() {
    let ci = MockIssuer::start().await.unwrap();
    let issuer = Issuer::start(&trust_toml(&ci)).await;
    let dir = TempDir::new("subject");
    let job = job_token(&ci);
    let path = dir.write("job-token", &format!("{job}\n"), 0o600);

    let (key, jkt) = client_key();
    let dpop = DpopMiddleware::new(key);
    let grant = Grant::TokenExchange {
        subject: SubjectToken::File(path.clone()),
        subject_type: TT_JWT.to_owned(),
    };
    let auth = ClientAuth::Public {
        client_id: "public".to_owned(),
    };
    let tokens = OAuthTokens::new(TokenRequest::new(&issuer.url, auth, grant), &dpop).unwrap();
    let response = tokens.fetch().await.unwrap();
    let claims = jws_claims(&response.access_token);
    assert_eq!(claims["sub"], "shop-deployer");
    assert_eq!(claims["cnf"]["jkt"], jkt.as_str());
    assert!(
        response.refresh_token.is_some(),
        "public has the refresh grant"
    );

    let ok = issued(&issuer);
    assert_eq!(ok.len(), 1);
    assert_eq!(ok[0].form("grant_type").as_deref(), Some(GRANT_EXCHANGE));
    assert_eq!(
        ok[0].form("subject_token").as_deref(),
        Some(job.as_str()),
        "trimmed"
    );
    assert_eq!(ok[0].form("subject_token_type").as_deref(), Some(TT_JWT));
    assert_eq!(ok[0].form("client_id").as_deref(), Some("public"));

    // The file is read at every exchange (a rotated job token is picked up); an empty
    // or missing one is an error before any token request.
    std::fs::write(&path, "  \n").unwrap();
    let err = tokens.fetch().await.unwrap_err();
    assert!(matches!(err, ClientError::SubjectToken(_)), "{err:?}");
    std::fs::remove_file(&path).unwrap();
    let err = tokens.fetch().await.unwrap_err();
    assert!(
        matches!(&err, ClientError::SubjectToken(m) if m.contains("job-token")),
        "{err:?}"
    );
    assert_eq!(
        issuer.token_calls().len(),
        2,
        "nothing sent for an unusable subject token"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_exchange_with_a_subject_token_and_a_key_from_the_environment() {
    let env = |name: &str| std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set"));
    if is_child() {
        // Run by the parent below with the variables set.
        let key = ClientKey::from_env("DPOP_TEST_KEY").unwrap();
        assert_eq!(key.thumbprint().as_str(), env("DPOP_TEST_JKT"));
        let dpop = DpopMiddleware::new(key);
        let grant = Grant::TokenExchange {
            subject: SubjectToken::Env("DPOP_TEST_SUBJECT_TOKEN".to_owned()),
            subject_type: TT_ACCESS.to_owned(),
        };
        // A client that may act for svc: exchanging this issuer's own tokens takes an
        // authenticated client.
        let auth = ClientAuth::Secret {
            client_id: "delegate".to_owned(),
            secret: Arc::new(SECRET.to_owned().into()),
        };
        let request = TokenRequest::new(&env("DPOP_TEST_ISSUER"), auth, grant);
        let tokens = OAuthTokens::new(request, &dpop).unwrap();
        let response = tokens.fetch().await.unwrap();
        let claims = jws_claims(&response.access_token);
        assert_eq!(claims["sub"], "svc");
        assert_eq!(claims["client_id"], "delegate");
        assert_eq!(claims["act"]["sub"], "delegate");
        assert_eq!(claims["cnf"]["jkt"], env("DPOP_TEST_JKT"));
        eprintln!("{CHILD_PASSED}");
        return;
    }

    let issuer = Issuer::start("").await;
    let key = es256();
    let pem = key.to_pkcs8_pem().unwrap().to_string();
    let jkt = key.thumbprint().as_str().to_owned();
    // The subject: an access token of `svc`, bound to the same key.
    let dpop = DpopMiddleware::new(ClientKey::from_private_key(key));
    let svc = OAuthTokens::new(
        issuer.secret_request("svc", Grant::ClientCredentials),
        &dpop,
    )
    .unwrap();
    let subject = svc.token().await.unwrap().to_string();

    let vars = [
        ("DPOP_TEST_ISSUER", issuer.url.clone()),
        ("DPOP_TEST_KEY", pem),
        ("DPOP_TEST_JKT", jkt),
        ("DPOP_TEST_SUBJECT_TOKEN", subject.clone()),
    ];
    tokio::task::spawn_blocking(move || {
        let vars: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
        run_child(
            "tokens::token_exchange_with_a_subject_token_and_a_key_from_the_environment",
            &vars,
        );
    })
    .await
    .unwrap();

    let ok = issued(&issuer);
    assert_eq!(
        ok.len(),
        2,
        "svc's token, then the child's exchange: {ok:#?}"
    );
    assert_eq!(ok[1].form("grant_type").as_deref(), Some(GRANT_EXCHANGE));
    assert_eq!(ok[1].form("subject_token"), Some(subject));
    assert_eq!(ok[1].form("subject_token_type").as_deref(), Some(TT_ACCESS));

    // An unset variable is a clear error, before any request.
    let grant = Grant::TokenExchange {
        subject: SubjectToken::Env("DPOP_CLIENT_TEST_SURELY_UNSET".to_owned()),
        subject_type: TT_ACCESS.to_owned(),
    };
    let auth = ClientAuth::Public {
        client_id: "public".to_owned(),
    };
    let tokens = OAuthTokens::new(TokenRequest::new(&issuer.url, auth, grant), &dpop).unwrap();
    let err = tokens.fetch().await.unwrap_err();
    assert!(
        matches!(&err, ClientError::SubjectToken(m) if m.contains("DPOP_CLIENT_TEST_SURELY_UNSET")),
        "{err:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_cached_and_renewed_before_they_expire() {
    let issuer = Issuer::start("").await;
    let (key, _) = client_key();
    let dpop = DpopMiddleware::new(key);
    // `short` tokens live 2 s: renewed a fifth of that early.
    let tokens = OAuthTokens::new(
        issuer.secret_request("short", Grant::ClientCredentials),
        &dpop,
    )
    .unwrap();
    let t0 = Instant::now();
    let first = tokens.token().await.unwrap();
    assert!(
        t0.elapsed() < Duration::from_secs(1),
        "the issuer is too slow for this test"
    );
    assert_eq!(tokens.token().await.unwrap(), first, "cached");
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(
        tokens.token().await.unwrap(),
        first,
        "still fresh after 1 s"
    );
    assert_eq!(tokens.fetches(), 1);

    tokio::time::sleep_until((t0 + Duration::from_millis(1700)).into()).await;
    let asked = t0.elapsed();
    let second = tokens.token().await.unwrap();
    assert_ne!(second, first);
    assert_eq!(tokens.fetches(), 2);
    assert!(
        asked < Duration::from_secs(2),
        "renewed {asked:?} after the first request, before its 2 s ran out"
    );
    assert_eq!(issued(&issuer).len(), 2);
}

/// 50 requests at once through a middleware with `tokens`, all expected to succeed;
/// returns the `Authorization` values the resource saw.
async fn fifty_at_once(api: &Api, dpop: DpopMiddleware) -> Vec<String> {
    let before = api.log.len();
    let client = http_client(dpop);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..50 {
        let client = client.clone();
        let url = api.at(&format!("/v1/items/{i}"));
        tasks.spawn(async move { client.get(url).send().await.map(|r| r.status()) });
    }
    while let Some(status) = tasks.join_next().await {
        assert_eq!(status.unwrap().unwrap(), 200);
    }
    let seen = api.seen();
    assert_eq!(seen.len() - before, 50, "no request needed a retry");
    seen[before..]
        .iter()
        .map(|s| s.header("authorization").unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_requests_without_a_token_perform_one_token_request() {
    let issuer = Issuer::start("").await;
    let api = Api::start(ApiOptions::default()).await;
    let (key, jkt) = client_key();
    let dpop = DpopMiddleware::new(key);
    let tokens = Arc::new(
        OAuthTokens::new(
            issuer.secret_request("svc", Grant::ClientCredentials),
            &dpop,
        )
        .unwrap(),
    );
    let auths = fifty_at_once(&api, dpop.with_tokens(Arc::clone(&tokens) as _)).await;
    assert_eq!(tokens.fetches(), 1);
    // One token request: a nonce challenge and its retry.
    let calls = issuer.token_calls();
    assert_eq!(calls.len(), 2, "{calls:#?}");
    assert_eq!(issued(&issuer).len(), 1);
    let token = auths[0].strip_prefix("DPoP ").unwrap();
    assert_eq!(jws_claims(token)["cnf"]["jkt"], jkt.as_str());
    assert!(auths.iter().all(|a| a == &auths[0]), "one token for all");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_token_request_is_not_repeated_for_every_waiting_caller() {
    let issuer = Issuer::start("").await;
    let api = Api::start(ApiOptions::default()).await;
    let (key, _) = client_key();
    let dpop = DpopMiddleware::new(key);
    let auth = ClientAuth::Secret {
        client_id: "svc".to_owned(),
        secret: Arc::new("not-the-secret-of-svc".to_owned().into()),
    };
    let tokens = Arc::new(
        OAuthTokens::new(
            TokenRequest::new(&issuer.url, auth, Grant::ClientCredentials),
            &dpop,
        )
        .unwrap(),
    );
    let client = http_client(dpop.with_tokens(Arc::clone(&tokens) as _));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..50 {
        let client = client.clone();
        let url = api.at(&format!("/v1/items/{i}"));
        tasks.spawn(async move { client.get(url).send().await.map(|r| r.status()) });
    }
    let mut errors = Vec::new();
    while let Some(r) = tasks.join_next().await {
        errors.push(format!("{:#}", r.unwrap().unwrap_err()));
    }
    // One failing token request (a nonce challenge and its retry), not fifty.
    assert_eq!(tokens.fetches(), 1, "{errors:#?}");
    assert_eq!(issuer.token_calls().len(), 2);
    assert!(
        errors.iter().all(|e| e.contains("invalid_client")),
        "{errors:#?}"
    );
    assert_eq!(api.log.len(), 0, "no request reached the API");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_refresh_under_50_concurrent_requests_performs_one_token_request() {
    let issuer = Issuer::start("").await;
    let api = Api::start(ApiOptions::default()).await;
    let (key, _) = client_key();
    let dpop = DpopMiddleware::new(key);
    let tokens = Arc::new(
        OAuthTokens::new(
            issuer.secret_request("short", Grant::ClientCredentials),
            &dpop,
        )
        .unwrap(),
    );
    let dpop = dpop.with_tokens(Arc::clone(&tokens) as _);
    let client = http_client(dpop.clone());
    let r = client.get(api.at("/v1/first")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let first = api.seen()[0].header("authorization").unwrap().to_owned();
    assert_eq!(tokens.fetches(), 1);
    let calls_before = issuer.token_calls().len();

    // Past the renewal point of the 2 s token.
    tokio::time::sleep(Duration::from_millis(1700)).await;
    let auths = fifty_at_once(&api, dpop).await;
    assert_eq!(tokens.fetches(), 2, "one renewal for 50 waiting requests");
    let calls = issuer.token_calls();
    assert_eq!(
        calls.len() - calls_before,
        1,
        "one token request, the issuer's nonce already known: {calls:#?}"
    );
    assert_eq!(calls.last().unwrap().status, 200);
    assert!(
        auths.iter().all(|a| a == &auths[0]),
        "one new token for all"
    );
    assert_ne!(auths[0], first);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_token_renews_the_access_token() {
    let ci = MockIssuer::start().await.unwrap();
    let issuer = Issuer::start(&trust_toml(&ci)).await;
    let (key, jkt) = client_key();
    let dpop = DpopMiddleware::new(key);
    // `public` exchanges a CI job token and gets a (key-bound) refresh token with its
    // 2-second access token.
    let grant = Grant::TokenExchange {
        subject: SubjectToken::Value(Arc::new(job_token(&ci).into())),
        subject_type: TT_JWT.to_owned(),
    };
    let auth = ClientAuth::Public {
        client_id: "public".to_owned(),
    };
    let tokens = OAuthTokens::new(TokenRequest::new(&issuer.url, auth, grant), &dpop).unwrap();
    let first = tokens.token().await.unwrap();
    tokio::time::sleep(Duration::from_millis(1700)).await;
    let second = tokens.token().await.unwrap();
    let third = tokens.token().await.unwrap();
    assert_ne!(first, second);
    assert_eq!(second, third);
    assert_eq!(tokens.fetches(), 2);
    assert_eq!(jws_claims(&second)["cnf"]["jkt"], jkt.as_str());

    let ok = issued(&issuer);
    let grants: Vec<_> = ok.iter().map(|s| s.form("grant_type").unwrap()).collect();
    assert_eq!(grants, [GRANT_EXCHANGE, "refresh_token"]);
    let refresh = &ok[1];
    let issued_rt = ok[0].response.as_ref().unwrap()["refresh_token"]
        .as_str()
        .unwrap();
    assert_eq!(refresh.form("refresh_token").as_deref(), Some(issued_rt));
    assert_eq!(refresh.form("client_id").as_deref(), Some("public"));
    // No scope or audience narrowing on a refresh.
    assert_eq!(refresh.form("scope"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_refresh_token_falls_back_to_the_grant() {
    let ci = MockIssuer::start().await.unwrap();
    let issuer = Issuer::start(&trust_toml(&ci)).await;
    let (key, _) = client_key();
    let dpop = DpopMiddleware::new(key);
    let grant = Grant::TokenExchange {
        subject: SubjectToken::Value(Arc::new(job_token(&ci).into())),
        subject_type: TT_JWT.to_owned(),
    };
    let auth = ClientAuth::Public {
        client_id: "public".to_owned(),
    };
    let tokens = OAuthTokens::new(TokenRequest::new(&issuer.url, auth, grant), &dpop).unwrap();
    let first = tokens.token().await.unwrap();

    // The refresh token is revoked behind the client's back.
    let rt = issued(&issuer)[0].response.as_ref().unwrap()["refresh_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let revoked = reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .post(format!("{}/revoke", issuer.url))
        .form(&[("token", rt.as_str()), ("client_id", "public")])
        .send()
        .await
        .unwrap();
    assert_eq!(revoked.status(), 200);

    tokio::time::sleep(Duration::from_millis(1700)).await;
    let second = tokens.token().await.unwrap();
    assert_ne!(first, second);
    let calls = issuer.token_calls();
    let last_two: Vec<_> = calls[calls.len() - 2..]
        .iter()
        .map(|s| (s.form("grant_type").unwrap(), s.status, s.error.clone()))
        .collect();
    assert_eq!(
        last_two,
        [
            (
                "refresh_token".to_owned(),
                400,
                Some("invalid_grant".to_owned())
            ),
            (GRANT_EXCHANGE.to_owned(), 200, None),
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unusable_metadata_and_responses_are_clear_errors() {
    let (key, _) = client_key();
    let dpop = DpopMiddleware::new(key);
    let public = || ClientAuth::Public {
        client_id: "cli".to_owned(),
    };
    let fetch = |url: &str| {
        let tokens = OAuthTokens::new(
            TokenRequest::new(url, public(), Grant::ClientCredentials),
            &dpop,
        )
        .unwrap();
        async move { tokens.fetch().await.unwrap_err() }
    };

    // No metadata at all.
    let api = Api::start(ApiOptions::default()).await;
    let err = fetch(&api.url).await;
    assert!(
        matches!(&err, ClientError::Discovery(e) if e.to_string().contains("no metadata")),
        "{err:?}"
    );
    // Metadata naming another issuer (RFC 8414 §3.3).
    let api = Api::start(ApiOptions {
        metadata: true,
        metadata_issuer: Some("https://evil.example".to_owned()),
        ..ApiOptions::default()
    })
    .await;
    let err = fetch(&api.url).await;
    assert!(
        matches!(&err, ClientError::Discovery(e) if e.to_string().contains("RFC 8414")),
        "{err:?}"
    );
    assert!(
        api.seen().iter().all(|s| s.method == "GET"),
        "no token request"
    );
    // A token that is not DPoP-bound (RFC 9449 §5).
    let api = Api::start(ApiOptions {
        metadata: true,
        token_response: Some(json!({ "access_token": "abc", "token_type": "Bearer" })),
        ..ApiOptions::default()
    })
    .await;
    let err = fetch(&api.url).await;
    assert!(
        matches!(&err, ClientError::TokenResponse(m) if m.contains("not DPoP")),
        "{err:?}"
    );
    // A refusal keeps the code and description.
    let issuer = Issuer::start("").await;
    let auth = ClientAuth::Secret {
        client_id: "svc".to_owned(),
        secret: Arc::new("wrong".to_owned().into()),
    };
    let tokens = OAuthTokens::new(
        TokenRequest::new(&issuer.url, auth, Grant::ClientCredentials),
        &dpop,
    )
    .unwrap();
    let err = tokens.fetch().await.unwrap_err();
    match &err {
        ClientError::TokenEndpoint {
            status,
            error,
            description,
        } => {
            assert_eq!((*status, error.as_str()), (401, "invalid_client"));
            assert!(description.is_some());
        }
        other => panic!("{other:?}"),
    }
}
