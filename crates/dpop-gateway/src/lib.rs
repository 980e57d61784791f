//! # dpop-gateway
//!
//! A reverse proxy that enforces DPoP (RFC 9449) in front of any HTTP API, in any
//! language, with no change to the API. It runs the `dpop-tower` layer over a pooled
//! hyper client: requests whose token and proof pass are forwarded with the verified
//! identity in headers (`X-DPoP-Subject`, `X-DPoP-Client-Id`, `X-DPoP-Jkt`,
//! `X-DPoP-Scopes` by default; clients cannot set them), everything else is refused
//! exactly as RFC 9449 §7 and RFC 6750 describe.
//!
//! Run it with `dpop gateway --listen ADDR --upstream URL --issuer ISSUER_URL --audience AUD`
//! or `dpop gateway --config FILE` (see `examples/gateway.toml`).
//!
//! It does not terminate TLS (put it behind your TLS terminator and set `public_url`),
//! connect to TLS upstreams, or issue tokens.

mod config;
mod error;
mod metrics;
mod proxy;
mod server;
mod store;

pub use crate::config::{
    GatewayArgs, GatewayConfig, IdentityHeaders, ReplayStoreConfig, TokenCheck,
};
pub use crate::error::GatewayError;
pub use crate::metrics::Metrics;
pub use crate::proxy::{Body, Proxy};
pub use crate::server::Gateway;
pub use crate::store::GatewayStore;

/// Installs the log subscriber: text or JSON lines, level from `RUST_LOG` (default `info`).
/// Logs never contain tokens, proofs or keys: the layer logs reason codes, methods and
/// paths (without query strings) only.
pub fn init_logging(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

/// Waits for SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}
