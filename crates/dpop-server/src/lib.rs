//! # dpop-server
//!
//! What the DPoP gateway and the DPoP issuer have in common as server processes, so that
//! operators probe, scrape and stop them the same way:
//!
//! - [`admin`]: the admin listener, `/healthz`, `/readyz` (answered by the process's own
//!   readiness check) and `/metrics` (a prometheus-client [`Registry`] as OpenMetrics
//!   text), with a bounded number of connections and bounded connection times;
//! - [`logging`]: the `tracing` subscriber, text or JSON lines on stderr;
//! - [`http`]: the access log's target and the OpenTelemetry-named HTTP metrics
//!   (`http_server_request_duration_seconds`, `http_server_active_requests`,
//!   `http_client_request_duration_seconds`);
//! - [`telemetry`]: OpenTelemetry request spans exported over OTLP when the `OTEL_*`
//!   variables ask for it (feature `otel`), W3C trace context in and out;
//! - [`signal`]: the future that resolves on SIGTERM or Ctrl-C;
//! - [`files`]: the permission rule for private key files.
//!
//! It knows nothing of DPoP or OAuth, and it does not serve the processes' public
//! listeners: their connection handling (limits, drain) is their own.
//!
//! ```no_run
//! use std::sync::Arc;
//!
//! use dpop_server::{LogFormat, Readiness};
//! use prometheus_client::registry::Registry;
//!
//! # async fn run() -> std::io::Result<()> {
//! dpop_server::init_logging(LogFormat::Text);
//! let registry = Arc::new(Registry::with_prefix("my_service"));
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:9090").await?;
//! let admin = tokio::spawn(dpop_server::admin::serve(listener, registry, || async {
//!     Readiness::text(true, "ready\n")
//! }));
//! dpop_server::shutdown_signal().await;
//! admin.abort();
//! # Ok(())
//! # }
//! ```
//!
//! [`Registry`]: prometheus_client::registry::Registry

pub mod admin;
pub mod files;
pub mod http;
pub mod logging;
pub mod metrics;
pub mod signal;
pub mod telemetry;

pub use crate::admin::Readiness;
pub use crate::http::{ACCESS_TARGET, HttpMetrics};
pub use crate::logging::{LogFormat, init_logging};
pub use crate::signal::{TickOrHangup, hold_hangup, shutdown_signal};
