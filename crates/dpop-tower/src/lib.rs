//! # dpop-tower
//!
//! A [tower] `Layer` that enforces DPoP (RFC 9449) in front of any service: axum
//! routers, plain hyper services, or anything else speaking `http::Request`.
//!
//! For each request it finds the route's policy, checks the access token (a JWT against
//! the issuer's keys, or an opaque token through introspection; verified tokens are
//! cached by their hash), verifies the `DPoP` proof with every check of RFC 9449 §4.3
//! (including `ath` and the `cnf.jkt` binding), records the proof in a replay store
//! (in memory, or shared through Redis with `dpop-redis`), and passes the verified
//! [`DpopIdentity`] to the service as a request extension. Refusals follow RFC 9449 §7
//! and RFC 6750 exactly: status, `WWW-Authenticate` challenges (with `algs`, and a
//! `Bearer` challenge only where a route allows Bearer tokens), `DPoP-Nonce` when a nonce
//! is needed, and an empty body. The reason code goes to logs (target
//! `dpop::rejection`) and metrics ([`DpopEvents`]), never into the response.
//!
//! With [`ResourceMetadata`] set, it also speaks RFC 9728: every 401 and 403 challenge
//! carries `resource_metadata`, and [`DpopLayer::metadata_response`] answers
//! [`WELL_KNOWN_PATH`] with the protected resource metadata document.
//!
//! It does not terminate TLS, proxy requests (see `dpop-gateway`), or issue tokens.
//!
//! Features (both on by default): `jwks` ([`JwksSource`]: JWTs against the issuer's
//! discovered keys) and `introspection` ([`IntrospectionSource`]: RFC 7662). Without
//! them the crate has no HTTP client; bring your own [`TokenVerifier`].
//!
//! ## Protecting an axum router
//!
//! Tokens checked with the issuer's published keys, the `htu` host fixed by the public
//! URL, proofs remembered in memory (one instance; see
//! [`DpopLayerBuilder::replay_store`] for Redis), DPoP required on every route:
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use axum::{Router, routing::get};
//! use dpop_tower::{DpopIdentity, DpopLayer};
//!
//! async fn items(caller: DpopIdentity) -> String {
//!     format!("items for {}", caller.subject.unwrap_or_default())
//! }
//!
//! let dpop = DpopLayer::jwks("https://as.example.com", "https://api.example.com")
//!     .public_url("https://api.example.com")
//!     .build()
//!     .await?;
//! let app: Router = Router::new().route("/v1/items", get(items)).layer(dpop);
//! # let _ = app;
//! # Ok(()) }
//! ```
//!
//! ## The verified caller in a handler
//!
//! With the `axum` feature, [`DpopIdentity`] is an extractor. Here the keys come from
//! the caller ([`DpopLayer::with_keys`], no `jwks` feature needed) and one route is
//! open:
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use axum::{Router, routing::get};
//! use dpop_core::jwt::JwkSet;
//! use dpop_tower::{DpopIdentity, DpopLayer, DpopMode, Route, RoutePolicy, Routes};
//!
//! // The handler runs only for a verified caller; without the layer in front it is a 500.
//! async fn orders(caller: DpopIdentity) -> String {
//!     format!("orders of {:?} (key {:?})", caller.subject, caller.jkt)
//! }
//!
//! // `None` where the route lets callers through unverified (here: `off`).
//! async fn docs(caller: Option<DpopIdentity>) -> &'static str {
//!     if caller.is_some() { "docs, signed in" } else { "docs" }
//! }
//!
//! // Keys the service loads itself: nothing is fetched.
//! let keys = JwkSet::from_json(&std::fs::read_to_string("issuer-keys.json")?)?;
//! let dpop = DpopLayer::with_keys(keys, "https://as.example.com", "https://api.example.com")
//!     .public_url("https://api.example.com")
//!     .routes(Routes::default().route(Route::new("/docs", RoutePolicy::new(DpopMode::Off))))
//!     .build()?;
//! let app: Router = Router::new()
//!     .route("/v1/orders", get(orders))
//!     .route("/docs", get(docs))
//!     .layer(dpop);
//! # let _ = app;
//! # Ok(()) }
//! ```
//!
//! For tokens checked by introspection, a shared replay store or other settings, see
//! [`DpopLayer::builder`], [`DpopLayerBuilder`] and [`DpopSettings`]; every default is
//! documented there and is the strict choice.

mod builder;
mod config;
mod error;
mod events;
#[cfg(feature = "axum")]
mod extract;
mod future;
mod identity;
mod keys;
mod layer;
mod metadata;
mod response;
mod service;
mod settings;
mod state;
mod tokens;

pub use crate::builder::DpopLayerBuilder;
pub use crate::config::{DpopMode, HtuSource, Route, RoutePolicy, Routes};
pub use crate::error::ConfigError;
pub use crate::events::{DpopEvents, NoEvents, Outcome};
#[cfg(feature = "axum")]
pub use crate::extract::IdentityRejection;
pub use crate::future::ResponseFuture;
pub use crate::identity::{AuthorizedTarget, ClientCertificate, DpopIdentity, PeerAddr, Scheme};
pub use crate::keys::StaticKeys;
pub use crate::layer::DpopLayer;
pub use crate::metadata::{ResourceMetadata, WELL_KNOWN_PATH};
pub use crate::service::DpopService;
pub use crate::settings::DpopSettings;
pub use crate::tokens::{BoxFuture, TokenVerifier};
#[cfg(feature = "introspection")]
pub use crate::tokens::{IntrospectionConfig, IntrospectionSource};
#[cfg(feature = "jwks")]
pub use crate::tokens::{JwksSource, JwksSourceConfig};
pub use dpop_core::SystemClock;
