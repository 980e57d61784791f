//! dpop-discovery against issuers on loopback: the mock issuer of `dpop-test` (RFC 8414
//! metadata, JWKS, rotation, oversized documents) and small in-test servers for
//! metadata that names another issuer or spells it with a trailing slash.
#![allow(
    missing_docs,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use dpop_core::jwt::{self, MAX_JWKS_BYTES};
use dpop_discovery::{
    DiscoveryError, EndpointUrl, FetchError, Fetcher, IssuerUrl, JwksError, JwksTimings, KeySource,
    Metadata, RemoteJwks, UrlError,
};
use dpop_test::{MockIssuer, Serving};
use serde_json::{Value, json};

fn fetcher(timeout_secs: u64) -> Fetcher {
    Fetcher::new(Duration::from_secs(timeout_secs)).unwrap()
}

fn timings(min_refresh_secs: u64, missing_keys_secs: u64) -> JwksTimings {
    let mut t = JwksTimings::default();
    t.min_refresh_interval = Duration::from_secs(min_refresh_secs);
    t.missing_keys_retry_interval = Duration::from_secs(missing_keys_secs);
    t
}

fn discovering(mock: &MockIssuer, timings: JwksTimings) -> RemoteJwks {
    let issuer = IssuerUrl::parse(mock.url()).unwrap();
    RemoteJwks::new(KeySource::Discover(issuer), fetcher(20), timings)
}

/// Moves Tokio's clock (what the key cache reads) forward, then lets it run again.
async fn advance(secs: u64) {
    tokio::time::pause();
    tokio::time::advance(Duration::from_secs(secs)).await;
    tokio::time::resume();
}

/// A server on loopback answering `GET path` with `body` (JSON) and 404 elsewhere,
/// counting requests.
struct Documents {
    url: String,
    hits: Arc<AtomicUsize>,
    _task: tokio::task::JoinHandle<()>,
}

async fn serve_documents(
    documents: impl Fn(&str) -> Option<Value> + Send + Sync + 'static,
) -> Documents {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&hits);
    let documents = Arc::new(documents);
    let app = axum::Router::new().fallback(move |uri: axum::http::Uri| {
        let documents = Arc::clone(&documents);
        let counter = Arc::clone(&counter);
        async move {
            counter.fetch_add(1, Ordering::Relaxed);
            match documents(uri.path()) {
                Some(doc) => Ok(axum::Json(doc)),
                None => Err(axum::http::StatusCode::NOT_FOUND),
            }
        }
    });
    let task = tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    Documents {
        url,
        hits,
        _task: task,
    }
}

#[tokio::test]
async fn keys_are_refreshed_when_stale() {
    let mock = MockIssuer::start().await.unwrap();
    let keys = discovering(&mock, timings(30, 1));
    assert!(!keys.is_ready());
    let first = keys.keys().await.unwrap();
    assert!(keys.is_ready());
    assert_eq!(mock.jwks_fetches(), 1);
    advance(299).await;
    let again = keys.keys().await.unwrap();
    assert!(Arc::ptr_eq(&first, &again), "cached");
    assert_eq!(mock.jwks_fetches(), 1);
    let new_kid = mock.rotate_key();
    advance(2).await;
    let fresh = keys.keys().await.unwrap();
    assert_eq!(mock.jwks_fetches(), 2);
    assert!(fresh.has_kid(&new_kid) && !first.has_kid(&new_kid));
}

#[tokio::test]
async fn unknown_kid_refetches_at_most_once_per_min_refresh_interval() {
    let mock = MockIssuer::start().await.unwrap();
    let keys = discovering(&mock, timings(30, 1));
    let seen = keys.keys().await.unwrap();
    assert_eq!(mock.jwks_fetches(), 1);
    // Right after a fetch: rate-limited, nothing fetched.
    assert!(keys.after_unknown_kid(&seen).await.unwrap().is_none());
    assert_eq!(mock.jwks_fetches(), 1);
    // Later, one fetch; many callers at once still make one.
    let kid = mock.rotate_key();
    advance(31).await;
    let (a, b, c) = tokio::join!(
        keys.after_unknown_kid(&seen),
        keys.after_unknown_kid(&seen),
        keys.after_unknown_kid(&seen)
    );
    for newer in [a, b, c] {
        assert!(newer.unwrap().unwrap().has_kid(&kid));
    }
    assert_eq!(mock.jwks_fetches(), 2);
    let now = keys.current().unwrap();
    assert!(keys.after_unknown_kid(&now).await.unwrap().is_none());
    assert_eq!(mock.jwks_fetches(), 2);
}

#[tokio::test]
async fn missing_keys_are_retried_with_back_off() {
    let port = dpop_test::free_port();
    let issuer = IssuerUrl::parse(&format!("http://127.0.0.1:{port}")).unwrap();
    let keys = RemoteJwks::new(KeySource::Discover(issuer), fetcher(5), timings(30, 2));
    let err = keys.keys().await.unwrap_err();
    assert!(err.to_string().contains("cannot discover"), "{err}");
    // Within 2 s: the last error, no new attempt.
    let err = keys.keys().await.unwrap_err();
    assert!(
        matches!(&err, JwksError::NotLoaded { last: Some(m) } if m.contains("cannot discover")),
        "{err:?}"
    );
    assert!(err.to_string().contains("retrying"), "{err}");
    // After 2 s another attempt fails; then the wait is 4 s.
    advance(3).await;
    assert!(matches!(keys.keys().await, Err(JwksError::Discovery(_))));
    advance(3).await;
    assert!(matches!(
        keys.keys().await,
        Err(JwksError::NotLoaded { .. })
    ));
    advance(2).await;
    assert!(matches!(keys.keys().await, Err(JwksError::Discovery(_))));
}

#[tokio::test]
async fn oversized_documents_are_refused() {
    let mock = MockIssuer::start().await.unwrap();
    let keys = discovering(&mock, timings(30, 0));
    mock.serve_metadata(Serving::Padded(100 * 1024));
    let err = keys.keys().await.unwrap_err();
    assert!(err.is_too_large(), "{err:?}");
    mock.serve_metadata(Serving::PaddedEndless(100 * 1024));
    let started = std::time::Instant::now();
    let err = keys.keys().await.unwrap_err();
    assert!(err.is_too_large(), "{err:?}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "read past the limit"
    );
    mock.serve_metadata(Serving::Normal);

    mock.serve_jwks(Serving::Padded(MAX_JWKS_BYTES));
    let err = keys.keys().await.unwrap_err();
    assert!(
        matches!(&err, JwksError::Fetch(FetchError::TooLarge { limit, .. }) if *limit == MAX_JWKS_BYTES),
        "{err:?}"
    );
    mock.serve_jwks(Serving::PaddedEndless(MAX_JWKS_BYTES));
    let started = std::time::Instant::now();
    assert!(keys.keys().await.unwrap_err().is_too_large());
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "read past the limit"
    );
    assert!(!keys.is_ready());
    mock.serve_jwks(Serving::Normal);
    keys.keys().await.unwrap();
}

#[tokio::test]
async fn plain_http_to_another_host_is_refused() {
    assert_eq!(
        IssuerUrl::parse("http://as.example.com"),
        Err(UrlError::HttpNotLoopback)
    );
    assert_eq!(
        EndpointUrl::parse("http://keys.example.com/jwks"),
        Err(UrlError::HttpNotLoopback)
    );
    // A discovered jwks_uri is held to the same rule.
    let mock = MockIssuer::start().await.unwrap();
    let keys = discovering(&mock, timings(30, 0));
    mock.advertise_jwks_uri(Some("http://keys.example.com/jwks"));
    let err = keys.keys().await.unwrap_err();
    assert!(
        matches!(
            &err,
            JwksError::Discovery(DiscoveryError::BadEndpoint {
                field: "jwks_uri",
                error: UrlError::HttpNotLoopback,
                ..
            })
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("https"), "{err}");
    assert_eq!(mock.jwks_fetches(), 0);
    mock.advertise_jwks_uri(None);
    keys.keys().await.unwrap();
}

#[tokio::test]
async fn metadata_naming_another_issuer_is_refused() {
    let server = serve_documents(|path| {
        (path == "/.well-known/oauth-authorization-server").then(
            || json!({"issuer": "https://evil.example", "jwks_uri": "https://evil.example/jwks"}),
        )
    })
    .await;
    let issuer = IssuerUrl::parse(&server.url).unwrap();
    let err = Metadata::discover(&fetcher(5), &issuer).await.unwrap_err();
    let DiscoveryError::IssuerMismatch {
        found, expected, ..
    } = &err
    else {
        panic!("{err:?}");
    };
    assert_eq!(found, "https://evil.example");
    assert_eq!(expected, &server.url);
    assert!(err.to_string().contains("RFC 8414"), "{err}");
    // The first document decides: OpenID discovery is not asked after a mismatch.
    assert_eq!(server.hits.load(Ordering::Relaxed), 1);
}

/// `http://host/` and `http://host` are one issuer: configured either way, with metadata
/// spelling it either way, discovery succeeds and finds the same keys; tokens whose
/// `iss` is spelt either way verify.
#[tokio::test]
async fn a_trailing_slash_names_the_same_issuer() {
    let mock = MockIssuer::start().await.unwrap();
    let jwks = mock.jwks();
    // The metadata and the keys on one server, so the issuer is its own URL.
    for (configured, published) in [("/", ""), ("", "/"), ("/", "/"), ("", "")] {
        let jwks = jwks.clone();
        let base = Arc::new(std::sync::OnceLock::<String>::new());
        let shared = Arc::clone(&base);
        let server = serve_documents(move |path| {
            let base = shared.get()?;
            match path {
                "/jwks" => Some(jwks.clone()),
                "/.well-known/oauth-authorization-server" => Some(json!({
                    "issuer": format!("{base}{published}"),
                    "jwks_uri": format!("{base}/jwks"),
                })),
                _ => None,
            }
        })
        .await;
        base.set(server.url.clone()).unwrap();
        let issuer = IssuerUrl::parse(&format!("{}{configured}", server.url)).unwrap();
        assert_eq!(issuer.as_str(), server.url);
        let meta = Metadata::discover(&fetcher(5), &issuer).await.unwrap();
        assert_eq!(
            meta.jwks_uri().unwrap().as_str(),
            format!("{}/jwks", server.url)
        );
        let keys = RemoteJwks::new(KeySource::Discover(issuer), fetcher(5), timings(30, 0));
        let set = keys.keys().await.unwrap();
        assert!(set.has_kid(&mock.kid()), "{configured:?} {published:?}");
    }

    // `iss` spelt with or without the slash verifies against either spelling.
    let set = RemoteJwks::new(
        KeySource::Uri(EndpointUrl::parse(&mock.jwks_uri()).unwrap()),
        fetcher(5),
        timings(30, 0),
    )
    .keys()
    .await
    .unwrap();
    let now = dpop_test::now();
    for (iss, expected) in [("", "/"), ("/", ""), ("/", "/")] {
        let token = mock.sign_compact(
            &json!({"alg": "ES256", "typ": "JWT", "kid": mock.kid()}),
            &json!({
                "iss": format!("{}{iss}", mock.url()),
                "aud": "https://api.example.com",
                "exp": now.as_secs() + 60,
            }),
        );
        let validation = jwt::JwtValidation::new(
            &format!("{}{expected}", mock.url()),
            Some("https://api.example.com"),
        );
        jwt::verify_jwt(&token, &set, &validation, now)
            .unwrap_or_else(|e| panic!("iss {iss:?}, expected {expected:?}: {e}"));
    }
}
