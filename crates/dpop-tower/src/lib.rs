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
//! It does not terminate TLS, proxy requests (see `dpop-gateway`), or issue tokens.
//!
//! Features (both on by default): `jwks` ([`JwksSource`]: JWTs against the issuer's
//! discovered keys) and `introspection` ([`IntrospectionSource`]: RFC 7662). Without
//! them the crate has no HTTP client; bring your own [`TokenSource`].
//!
//! ```no_run
//! use std::sync::Arc;
//! use dpop_core::MemoryReplayStore;
//! use dpop_tower::{DpopIdentity, DpopLayer, DpopSettings, HtuSource, JwksSource, JwksSourceConfig, NoEvents};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let tokens = JwksSource::new(JwksSourceConfig::new("https://as.example.com", "https://api.example.com"), Arc::new(NoEvents))?;
//! let settings = DpopSettings::new(HtuSource::PublicUrl("https://api.example.com".into()));
//! let layer = DpopLayer::new(settings, Arc::new(tokens), MemoryReplayStore::with_capacity(1 << 20))?;
//! let app: axum::Router = axum::Router::new()
//!     .route("/v1/items", axum::routing::get(|id: axum::Extension<DpopIdentity>| async move { format!("hello {:?}", id.subject) }))
//!     .layer(layer);
//! # let _ = app; Ok(()) }
//! ```

mod config;
mod events;
mod future;
mod identity;
mod layer;
mod response;
mod service;
mod tokens;

pub use crate::config::{DpopMode, HtuSource, Route, RoutePolicy, Routes};
pub use crate::events::{DpopEvents, NoEvents, Outcome};
pub use crate::future::ResponseFuture;
pub use crate::identity::{AuthorizedTarget, DpopIdentity, PeerAddr, Scheme};
pub use crate::layer::{ConfigError, DpopLayer, DpopSettings};
pub use crate::service::DpopService;
pub use crate::tokens::{BoxFuture, TokenSource};
#[cfg(feature = "introspection")]
pub use crate::tokens::{IntrospectionConfig, IntrospectionSource};
#[cfg(feature = "jwks")]
pub use crate::tokens::{JwksSource, JwksSourceConfig};
pub use dpop_core::SystemClock;
