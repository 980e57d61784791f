//! The real token sources against a mock authorization server on loopback: RFC 8414
//! discovery, JWT verification, key rotation with rate-limited refresh, introspection.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use dpop_core::{
    Algorithm, MemoryReplayStore, PrivateKey, ProofBuilder, Reason, SystemRandomSource,
};
use dpop_test::{MockIssuer, Serving, TokenSpec};
use dpop_tower::{
    DpopEvents, DpopLayer, DpopSettings, HtuSource, IntrospectionConfig, IntrospectionSource,
    JwksSource, JwksSourceConfig, NoEvents, Outcome, TokenVerifier,
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
    tokens: Arc<dyn TokenVerifier>,
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

fn layer_for(tokens: Arc<dyn TokenVerifier>) -> DpopLayer<MemoryReplayStore> {
    layer(tokens, Arc::new(Reasons::default()), false)
}

// ---- What the issuer sends is bounded ----

/// A source that discovers `issuer`'s keys, fetches again at once while it has none, and
/// waits up to 20 s for an answer (so that only a bounded read answers quickly).
fn discovering(issuer: &MockIssuer) -> Arc<JwksSource> {
    let mut config = JwksSourceConfig::new(issuer.url(), AUD);
    config.missing_keys_retry_interval = Duration::ZERO;
    config.http_timeout = Duration::from_secs(20);
    Arc::new(JwksSource::new(config, Arc::new(NoEvents)).unwrap())
}

fn unavailable_reason(e: dpop_core::Error) -> &'static str {
    match e {
        dpop_core::Error::TokenSourceUnavailable(why) => why,
        other => panic!("not TokenSourceUnavailable: {other:?}"),
    }
}

/// Metadata larger than 64 KiB is refused, whether announced by `Content-Length` or
/// streamed without end; requests get 503 until the issuer serves a sane document.
#[tokio::test]
async fn oversized_metadata_is_refused_until_the_issuer_behaves() {
    let issuer = MockIssuer::start().await.unwrap();
    let key = PrivateKey::generate(Algorithm::Es256).unwrap();
    let token = issuer.mint(&TokenSpec::bound(AUD, key.thumbprint().as_str()));
    let jwks = discovering(&issuer);
    let layer = layer_for(jwks.clone());

    issuer.serve_metadata(Serving::Padded(100 * 1024));
    assert_eq!(call(&layer, &key, &token).await.status(), 503);
    let why = unavailable_reason(jwks.refresh().await.unwrap_err());
    assert!(why.contains("metadata"), "{why}");

    issuer.serve_metadata(Serving::PaddedEndless(100 * 1024));
    let started = std::time::Instant::now();
    assert_eq!(call(&layer, &key, &token).await.status(), 503);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "refused after {:?}: the body was read past the limit",
        started.elapsed()
    );
    assert_eq!(issuer.jwks_fetches(), 0);

    issuer.serve_metadata(Serving::Normal);
    assert_eq!(call(&layer, &key, &token).await.status(), 200);
}

/// A JWK set larger than the core's limit is refused as soon as the limit is passed, not
/// after reading all of it; requests get 503 until the issuer serves a sane set.
#[tokio::test]
async fn oversized_jwks_is_refused_without_reading_it_all() {
    let issuer = MockIssuer::start().await.unwrap();
    let key = PrivateKey::generate(Algorithm::Es256).unwrap();
    let token = issuer.mint(&TokenSpec::bound(AUD, key.thumbprint().as_str()));
    let jwks = discovering(&issuer);
    let layer = layer_for(jwks.clone());

    issuer.serve_jwks(Serving::PaddedEndless(dpop_core::jwt::MAX_JWKS_BYTES));
    let started = std::time::Instant::now();
    assert_eq!(call(&layer, &key, &token).await.status(), 503);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "refused after {:?}: the body was read past the limit",
        started.elapsed()
    );
    issuer.serve_jwks(Serving::Padded(dpop_core::jwt::MAX_JWKS_BYTES));
    assert_eq!(call(&layer, &key, &token).await.status(), 503);
    assert!(!jwks.is_ready());

    issuer.serve_jwks(Serving::Normal);
    assert_eq!(call(&layer, &key, &token).await.status(), 200);
    assert!(jwks.is_ready());
}

/// Keys are only fetched over https, or over http from a loopback address: a configured
/// `jwks_uri` or issuer over plain http elsewhere is refused at construction, a
/// discovered one when it is discovered.
#[tokio::test]
async fn jwks_uri_over_plain_http_to_another_host_is_refused() {
    let mut config = JwksSourceConfig::new("https://as.example.com", AUD);
    config.jwks_uri = Some("http://as.example.com/jwks".to_owned());
    assert!(JwksSource::new(config, Arc::new(NoEvents)).is_err());
    let plain = JwksSourceConfig::new("http://as.example.com", AUD);
    assert!(JwksSource::new(plain, Arc::new(NoEvents)).is_err());
    for fine in [
        "https://as.example.com/jwks",
        "http://127.0.0.1:8080/jwks",
        "http://localhost/jwks",
        "http://[::1]:8080/jwks",
    ] {
        let mut config = JwksSourceConfig::new("https://as.example.com", AUD);
        config.jwks_uri = Some(fine.to_owned());
        assert!(
            JwksSource::new(config, Arc::new(NoEvents)).is_ok(),
            "{fine}"
        );
    }

    let issuer = MockIssuer::start().await.unwrap();
    let key = PrivateKey::generate(Algorithm::Es256).unwrap();
    let token = issuer.mint(&TokenSpec::bound(AUD, key.thumbprint().as_str()));
    let jwks = discovering(&issuer);
    let layer = layer_for(jwks.clone());
    issuer.advertise_jwks_uri(Some("http://keys.example.com/jwks"));
    assert_eq!(call(&layer, &key, &token).await.status(), 503);
    let why = unavailable_reason(jwks.refresh().await.unwrap_err());
    assert!(why.contains("https"), "{why}");

    issuer.advertise_jwks_uri(None);
    assert_eq!(call(&layer, &key, &token).await.status(), 200);
}

/// The introspection endpoint receives the client secret and every token: plain http is
/// refused unless it stays on this machine.
#[test]
fn introspection_endpoint_over_plain_http_to_another_host_is_refused() {
    let config = |endpoint: &str| IntrospectionConfig::new(endpoint, "rs", "secret");
    assert!(IntrospectionSource::new(config("http://as.example.com/introspect")).is_err());
    assert!(IntrospectionSource::new(config("https://user:pw@as.example.com/i")).is_err());
    assert!(IntrospectionSource::new(config("https://as.example.com/introspect")).is_ok());
    assert!(IntrospectionSource::new(config("http://127.0.0.1:9/introspect")).is_ok());
}
