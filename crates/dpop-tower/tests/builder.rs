//! The builder protecting an axum router (JWKS from a mock issuer, or keys the caller
//! supplies), and `DpopIdentity` as an axum extractor.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use dpop_core::jwt::JwkSet;
use dpop_core::{Algorithm, PrivateKey, ProofBuilder, SystemRandomSource};
use dpop_test::{MockIssuer, TokenSpec, now};
use dpop_tower::{
    ConfigError, DpopEvents, DpopIdentity, DpopLayer, DpopMode, Outcome, Route, RoutePolicy, Routes,
};
use http::{Request, StatusCode};
use http_body_util::BodyExt as _;
use tower::ServiceExt as _;

const AUD: &str = "https://api.example.com";

#[derive(Default)]
struct Events {
    outcomes: Mutex<Vec<Outcome>>,
    key_fetches: AtomicUsize,
}

impl DpopEvents for Events {
    fn outcome(&self, outcome: Outcome, _elapsed: Duration) {
        self.outcomes.lock().unwrap().push(outcome);
    }
    fn jwks_refresh(&self, ok: bool) {
        assert!(ok);
        self.key_fetches.fetch_add(1, Ordering::SeqCst);
    }
}

async fn whoami(id: DpopIdentity) -> String {
    format!("{} {:?}", id.subject.unwrap_or_default(), id.scheme)
}

async fn maybe(id: Option<DpopIdentity>) -> String {
    id.and_then(|id| id.subject)
        .unwrap_or_else(|| "nobody".into())
}

fn request(path: &str, key: &PrivateKey, token: &str) -> Request<axum::body::Body> {
    let proof = ProofBuilder::new("GET", &format!("{AUD}{path}"))
        .unwrap()
        .access_token(token)
        .sign(key, &SystemRandomSource, now())
        .unwrap();
    Request::builder()
        .uri(path)
        .header("authorization", format!("DPoP {token}"))
        .header("dpop", proof)
        .body(axum::body::Body::empty())
        .unwrap()
}

async fn send(app: &Router, req: Request<axum::body::Body>) -> (StatusCode, String) {
    let response = app.clone().oneshot(req).await.unwrap();
    let status = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8(body.to_vec()).unwrap())
}

#[tokio::test]
async fn jwks_builder_protects_an_axum_router_and_reports_to_one_hook() {
    let issuer = MockIssuer::start().await.unwrap();
    let key = PrivateKey::generate(Algorithm::Es256).unwrap();
    let events = Arc::new(Events::default());
    let dpop = DpopLayer::jwks(issuer.url(), AUD)
        .public_url(AUD)
        .events(events.clone())
        .build()
        .await
        .unwrap();
    // The keys were fetched when the layer was built, and reported to the same hook.
    assert_eq!(issuer.jwks_fetches(), 1);
    assert_eq!(events.key_fetches.load(Ordering::SeqCst), 1);
    let app = Router::new().route("/v1/me", get(whoami)).layer(dpop);

    let token = issuer.mint(&TokenSpec::bound(AUD, key.thumbprint().as_str()));
    assert_eq!(
        send(&app, request("/v1/me", &key, &token)).await,
        (StatusCode::OK, "user-1 Dpop".into())
    );
    let no_credentials = Request::get("/v1/me")
        .body(axum::body::Body::empty())
        .unwrap();
    assert_eq!(send(&app, no_credentials).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(
        *events.outcomes.lock().unwrap(),
        [
            Outcome::Accepted,
            Outcome::Rejected(dpop_core::Reason::CredentialsMissing)
        ]
    );
    assert_eq!(issuer.jwks_fetches(), 1);
}

#[tokio::test]
async fn static_keys_need_no_fetch_and_replays_are_refused_by_default() {
    let issuer = MockIssuer::start().await.unwrap();
    let key = PrivateKey::generate(Algorithm::Es256).unwrap();
    let keys = JwkSet::from_json(&issuer.jwks().to_string()).unwrap();
    let dpop = DpopLayer::with_keys(keys, issuer.url(), AUD)
        .public_url(AUD)
        .build()
        .unwrap();
    assert!(dpop.tokens().is_ready());
    let app = Router::new().route("/v1/me", get(whoami)).layer(dpop);

    let token = issuer.mint(&TokenSpec::bound(AUD, key.thumbprint().as_str()));
    let req = request("/v1/me", &key, &token);
    let replay = Request::get("/v1/me")
        .header("authorization", req.headers()["authorization"].clone())
        .header("dpop", req.headers()["dpop"].clone())
        .body(axum::body::Body::empty())
        .unwrap();
    assert_eq!(send(&app, req).await.0, StatusCode::OK);
    // The default in-memory replay store remembers the proof.
    assert_eq!(send(&app, replay).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(issuer.jwks_fetches(), 0);

    // A token from a key outside the set is refused.
    issuer.rotate_key_and_drop_old();
    let token = issuer.mint(&TokenSpec::bound(AUD, key.thumbprint().as_str()));
    assert_eq!(
        send(&app, request("/v1/me", &key, &token)).await.0,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn the_host_rule_has_no_default_and_an_unreachable_issuer_fails_the_build() {
    let issuer = MockIssuer::start().await.unwrap();
    let keys = JwkSet::from_json(&issuer.jwks().to_string()).unwrap();
    assert!(matches!(
        DpopLayer::with_keys(keys, issuer.url(), AUD).build(),
        Err(ConfigError::NoHostRule)
    ));
    assert!(matches!(
        DpopLayer::jwks("http://127.0.0.1:1", AUD)
            .public_url(AUD)
            .build()
            .await,
        Err(ConfigError::Tokens(
            dpop_core::Error::TokenSourceUnavailable(_)
        ))
    ));
}

#[tokio::test]
async fn the_extractor_refuses_with_500_when_there_is_no_verified_identity() {
    let issuer = MockIssuer::start().await.unwrap();
    let key = PrivateKey::generate(Algorithm::Es256).unwrap();
    let keys = JwkSet::from_json(&issuer.jwks().to_string()).unwrap();
    let routes = Routes::default()
        .route(Route::new("/public", RoutePolicy::new(DpopMode::Off)))
        .route(Route::new(
            "/shadow",
            RoutePolicy::new(DpopMode::ReportOnly),
        ));
    let dpop = DpopLayer::with_keys(keys, issuer.url(), AUD)
        .public_url(AUD)
        .routes(routes)
        .build()
        .unwrap();
    let app = Router::new()
        .route("/public/me", get(whoami))
        .route("/public/maybe", get(maybe))
        .route("/shadow/maybe", get(maybe))
        .layer(dpop)
        .route("/outside/me", get(whoami))
        .route("/outside/maybe", get(maybe));
    let empty = |path: &str| Request::get(path).body(axum::body::Body::empty()).unwrap();

    // No layer in front of the handler: never an anonymous identity, with or without Option.
    for path in ["/outside/me", "/outside/maybe"] {
        assert_eq!(
            send(&app, empty(path)).await,
            (StatusCode::INTERNAL_SERVER_ERROR, String::new()),
            "{path}"
        );
    }
    // A route the layer lets through unverified: `DpopIdentity` refuses, `Option` is None.
    assert_eq!(
        send(&app, empty("/public/me")).await,
        (StatusCode::INTERNAL_SERVER_ERROR, String::new())
    );
    assert_eq!(
        send(&app, empty("/public/maybe")).await,
        (StatusCode::OK, "nobody".into())
    );
    assert_eq!(
        send(&app, empty("/shadow/maybe")).await,
        (StatusCode::OK, "nobody".into())
    );
    // Report-only with a valid proof: the identity is there.
    let token = issuer.mint(&TokenSpec::bound(AUD, key.thumbprint().as_str()));
    assert_eq!(
        send(&app, request("/shadow/maybe", &key, &token)).await,
        (StatusCode::OK, "user-1".into())
    );
}

/// The `rust` blocks of the README's tower section are the crate docs' doc tests (which
/// are compiled), without their hidden lines: the two cannot drift apart.
#[test]
fn readme_snippets_are_the_compiled_crate_doc_snippets() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
    let readme = std::fs::read_to_string(format!("{root}/README.md")).unwrap();
    let lib = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/src/lib.rs")).unwrap();
    let section = readme
        .split("### Rust services: the tower layer")
        .nth(1)
        .and_then(|rest| rest.split("\n### ").next())
        .unwrap();
    // The code between each opening `fence` and the next closing fence.
    let blocks = |text: &str, fence: &str| -> Vec<String> {
        text.split(fence)
            .skip(1)
            .map(|b| b.split("```").next().unwrap().to_owned())
            .collect()
    };
    let readme_blocks = blocks(section, "```rust\n");
    let docs: String = lib
        .lines()
        .filter_map(|l| l.strip_prefix("//!"))
        .map(|l| l.strip_prefix(' ').unwrap_or(l))
        .filter(|l| !l.starts_with("# "))
        .map(|l| format!("{l}\n"))
        .collect();
    assert_eq!(readme_blocks.len(), 2);
    assert_eq!(readme_blocks, blocks(&docs, "```no_run\n"));
}
