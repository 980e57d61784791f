//! The real token sources against a mock authorization server on loopback: RFC 8414
//! discovery, JWT verification, key rotation with rate-limited refresh, introspection.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use dpop_core::{
    Algorithm, MemoryReplayStore, PrivateKey, ProofBuilder, Reason, SystemRandomSource,
};
use dpop_test::{MockIssuer, TokenSpec};
use dpop_tower::{
    DpopEvents, DpopLayer, DpopSettings, HtuSource, IntrospectionConfig, IntrospectionSource,
    JwksSource, JwksSourceConfig, NoEvents, Outcome, TokenSource,
};
use http::{Request, Response};
use tower::{Layer, Service, ServiceExt};

const AUD: &str = "https://api.example.com";

use dpop_test::now;

#[derive(Default)]
struct Reasons(std::sync::Mutex<Vec<Outcome>>);
impl DpopEvents for Reasons {
    fn outcome(&self, o: Outcome, _: Duration) {
        self.0.lock().unwrap().push(o);
    }
}

async fn call(
    layer: &DpopLayer<MemoryReplayStore>,
    key: &PrivateKey,
    token: &str,
) -> Response<String> {
    let proof = ProofBuilder::new("GET", &format!("{AUD}/v1/items"))
        .unwrap()
        .access_token(token)
        .sign(key, &SystemRandomSource, now())
        .unwrap();
    let req = Request::builder()
        .uri("/v1/items")
        .header("authorization", format!("DPoP {token}"))
        .header("dpop", proof)
        .body(String::new())
        .unwrap();
    let mut svc = layer.layer(tower::service_fn(|_req: Request<String>| async {
        Ok::<_, Infallible>(Response::new("ok".to_owned()))
    }));
    svc.ready().await.unwrap().call(req).await.unwrap()
}

fn layer(
    tokens: Arc<dyn TokenSource>,
    events: Arc<Reasons>,
    cache: bool,
) -> DpopLayer<MemoryReplayStore> {
    let mut s = DpopSettings::new(HtuSource::PublicUrl(AUD.into()));
    s.events = events;
    if !cache {
        s.token_cache_ttl = Duration::ZERO;
    }
    DpopLayer::new(s, tokens, MemoryReplayStore::with_capacity(1000)).unwrap()
}

#[tokio::test]
async fn jwt_tokens_via_discovery_and_rotation() {
    let issuer = MockIssuer::start().await.unwrap();
    let key = PrivateKey::generate(Algorithm::Es256).unwrap();
    let mut config = JwksSourceConfig::new(issuer.url(), AUD);
    config.min_refresh_interval = Duration::from_secs(1);
    let jwks = Arc::new(JwksSource::new(config, Arc::new(NoEvents)).unwrap());
    assert!(!jwks.is_ready(), "no keys before the first fetch");
    jwks.refresh().await.unwrap();
    assert!(jwks.is_ready());
    let events = Arc::new(Reasons::default());
    let layer = layer(jwks.clone(), events.clone(), false);

    let token = issuer.mint(&TokenSpec::bound(AUD, key.thumbprint().as_str()));
    assert_eq!(call(&layer, &key, &token).await.status(), 200);
    let fetches = issuer.jwks_fetches();

    // The issuer rotates its key: a token with the new kid triggers one refresh (once the
    // minimum interval since the last fetch has passed).
    issuer.rotate_key();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let token = issuer.mint(&TokenSpec::bound(AUD, key.thumbprint().as_str()));
    assert_eq!(call(&layer, &key, &token).await.status(), 200);
    assert_eq!(issuer.jwks_fetches(), fetches + 1);

    // Tokens naming unknown kids do not make the gateway hammer the issuer.
    for i in 0..5 {
        let forged = issuer.sign_compact(
            &serde_json::json!({"alg": "ES256", "typ": "at+jwt", "kid": format!("ghost-{i}")}),
            &serde_json::json!({"iss": issuer.url(), "aud": AUD, "exp": now().as_secs() + 60, "cnf": {"jkt": key.thumbprint().as_str()}}),
        );
        let r = call(&layer, &key, &forged).await;
        assert_eq!(r.status(), 401);
    }
    assert_eq!(
        issuer.jwks_fetches(),
        fetches + 1,
        "refresh on unknown kid is rate-limited"
    );
    assert_eq!(
        *events.0.lock().unwrap().last().unwrap(),
        Outcome::Rejected(Reason::TokenUnknownKey)
    );

    // Wrong audience and expired tokens.
    let wrong_aud = issuer.mint(&TokenSpec::bound(
        "https://other.example.com",
        key.thumbprint().as_str(),
    ));
    assert_eq!(call(&layer, &key, &wrong_aud).await.status(), 401);
    assert_eq!(
        *events.0.lock().unwrap().last().unwrap(),
        Outcome::Rejected(Reason::TokenAudienceMismatch)
    );
    let expired = issuer.mint(&TokenSpec {
        lifetime_secs: -120,
        ..TokenSpec::bound(AUD, key.thumbprint().as_str())
    });
    assert_eq!(call(&layer, &key, &expired).await.status(), 401);
    assert_eq!(
        *events.0.lock().unwrap().last().unwrap(),
        Outcome::Rejected(Reason::TokenExpired)
    );
}

#[tokio::test]
async fn unreachable_issuer_is_503() {
    let key = PrivateKey::generate(Algorithm::Es256).unwrap();
    let port = dpop_test::free_port();
    let jwks = Arc::new(
        JwksSource::new(
            JwksSourceConfig::new(&format!("http://127.0.0.1:{port}"), AUD),
            Arc::new(NoEvents),
        )
        .unwrap(),
    );
    assert!(jwks.refresh().await.is_err());
    let events = Arc::new(Reasons::default());
    let layer = layer(jwks, events.clone(), true);
    let r = call(&layer, &key, "eyJhbGciOiJFUzI1NiJ9.e30.c2ln").await;
    assert_eq!(r.status(), 503);
    assert_eq!(
        *events.0.lock().unwrap().last().unwrap(),
        Outcome::Rejected(Reason::TokenSourceUnavailable)
    );
}

#[tokio::test]
async fn opaque_tokens_via_introspection() {
    let issuer = MockIssuer::start().await.unwrap();
    let key = PrivateKey::generate(Algorithm::Es256).unwrap();
    let config = IntrospectionConfig::new(
        &issuer.introspection_endpoint(),
        issuer.introspection_client_id(),
        issuer.introspection_client_secret(),
    );
    let events = Arc::new(Reasons::default());
    let layer = layer(
        Arc::new(IntrospectionSource::new(config).unwrap()),
        events.clone(),
        false,
    );
    let token = "opaque-token-1";
    issuer.register_opaque(token, &TokenSpec::bound(AUD, key.thumbprint().as_str()));
    assert_eq!(call(&layer, &key, token).await.status(), 200);
    // Another key cannot use it.
    let thief = PrivateKey::generate(Algorithm::Es256).unwrap();
    assert_eq!(call(&layer, &thief, token).await.status(), 401);
    assert_eq!(
        *events.0.lock().unwrap().last().unwrap(),
        Outcome::Rejected(Reason::KeyMismatch)
    );
    // Revoked: introspection says inactive.
    issuer.revoke(token);
    assert_eq!(call(&layer, &key, token).await.status(), 401);
    assert_eq!(
        *events.0.lock().unwrap().last().unwrap(),
        Outcome::Rejected(Reason::TokenInactive)
    );
    // Wrong client credentials for the endpoint: the gateway cannot check tokens (503).
    let bad = IntrospectionConfig::new(
        &issuer.introspection_endpoint(),
        issuer.introspection_client_id(),
        "wrong",
    );
    let layer = layer_for(Arc::new(IntrospectionSource::new(bad).unwrap()));
    issuer.register_opaque(
        "opaque-token-2",
        &TokenSpec::bound(AUD, key.thumbprint().as_str()),
    );
    assert_eq!(call(&layer, &key, "opaque-token-2").await.status(), 503);
}

fn layer_for(tokens: Arc<dyn TokenSource>) -> DpopLayer<MemoryReplayStore> {
    layer(tokens, Arc::new(Reasons::default()), false)
}
