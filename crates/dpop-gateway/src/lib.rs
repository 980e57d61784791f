//! # dpop-gateway
//!
//! A reverse proxy that enforces DPoP (RFC 9449) in front of any HTTP API, in any
//! language, with no change to the API. It runs the `dpop-tower` layer over pooled
//! upstream connections (its own HTTP/1.1 exchange for requests without a body, hyper's
//! client for the rest): requests whose token and proof pass are forwarded with the verified
//! identity in headers (`X-DPoP-Subject`, `X-DPoP-Client-Id`, `X-DPoP-Jkt`,
//! `X-DPoP-Scopes` by default; clients cannot set them), everything else is refused
//! exactly as RFC 9449 §7 and RFC 6750 describe.
//!
//! Run it with `dpop gateway --listen ADDR --upstream URL --issuer ISSUER_URL --audience AUD`
//! or `dpop gateway --config FILE` (see `examples/gateway.toml`). Embedded, the
//! configuration comes from [`GatewayConfig::from_toml`] or [`GatewayConfig::from_file`],
//! validated as a whole at load; a program that sets values over a file (the `dpop`
//! command's flags) reads it into [`GatewaySettings`] first. [`Gateway::bind`] then
//! opens the listeners; the admin listener (`/healthz`, `/readyz`, `/metrics`), logging
//! and the shutdown signal are `dpop-server`'s, shared with the issuer.
//!
//! WebSocket upgrades, server-sent events, streamed bodies and gRPC pass through after
//! the DPoP check on the opening request, each for at most its route's `max_stream_secs`
//! (see `docs/gateway-streams.md`).
//!
//! Upstreams are `http://` or `https://` (the system's roots or a configured CA, an
//! optional client certificate), HTTP/1.1 or HTTP/2, one default and any number per
//! route (`docs/gateway-upstreams.md`).
//!
//! The listener speaks plain HTTP/1.1 (with h2c beside it when `h2c = true`), or TLS
//! with `[tls]` (rustls, TLS 1.2 and 1.3, ALPN `h2` and `http/1.1`): the certificate is
//! reloaded when its files change or on SIGHUP, without dropping connections, and client
//! certificates can be required, forwarded as identity headers and bound to tokens
//! (RFC 8705 `cnf.x5t#S256`). It can equally sit behind a TLS terminator (set
//! `public_url`). See `docs/gateway-tls.md`.
//!
//! It does not issue tokens.

mod accept;
mod access_log;
mod authz;
mod balance;
mod config;
mod deadline;
mod direct;
mod enforce;
mod error;
mod h1;
mod idle;
mod metrics;
mod pem;
mod pool;
mod proxy;
mod reload;
mod server;
mod store;
mod stream;
mod supervise;
mod tls;
mod upstream;

pub use crate::authz::Authz;
pub use crate::config::{
    AuthzConfig, ClientAuthConfig, ClientCertFiles, EnforcementConfig, GatewayConfig,
    GatewaySettings, IdentityHeaders, ReplayStoreConfig, TlsConfig, TokenCheck, UpstreamConfig,
    UpstreamTls,
};
pub use crate::error::GatewayError;
pub use crate::metrics::Metrics;
pub use crate::proxy::{Body, Proxy};
pub use crate::server::Gateway;
pub use crate::store::GatewayStore;

/// Entry points for fuzzers and the seed-corpus test. Not a stable API.
#[doc(hidden)]
pub mod internal {
    /// Fuzzing harnesses: each takes arbitrary bytes and must never panic.
    pub mod fuzzing {
        /// Reads arbitrary bytes as an upstream's HTTP/1.1 response with the gateway's
        /// own codec, whole and in small pieces, and checks that both read the same.
        pub fn h1_response(data: &[u8]) {
            crate::h1::fuzzing::response(data);
        }
    }
}
