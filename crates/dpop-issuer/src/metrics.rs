//! Prometheus metrics, served on the admin listener's `/metrics`. Label values come from
//! fixed sets (grant names, RFC error codes), never from requests, so a caller cannot
//! grow the series.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TokenLabels {
    grant: &'static str,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

/// The issuer's metrics.
#[derive(Debug)]
pub(crate) struct Metrics {
    registry: Arc<Registry>,
    http: dpop_server::HttpMetrics,
    tokens: Family<TokenLabels, Counter>,
    token_seconds: Histogram,
    introspections: Family<ResultLabels, Counter>,
    revocations: Family<ResultLabels, Counter>,
}

impl Metrics {
    pub(crate) fn new() -> Self {
        let mut root = Registry::default();
        // The OpenTelemetry names go without a prefix, the issuer's own under
        // `dpop_issuer_`.
        let http = dpop_server::HttpMetrics::register(&mut root);
        let registry = root.sub_registry_with_prefix("dpop_issuer");
        let tokens = Family::<TokenLabels, Counter>::default();
        registry.register(
            "token_requests",
            "Token requests by grant and result (issued, or the RFC error code)",
            tokens.clone(),
        );
        let token_seconds = Histogram::new([
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
        ]);
        registry.register(
            "token_request_seconds",
            "Time to answer a token request",
            token_seconds.clone(),
        );
        let introspections = Family::<ResultLabels, Counter>::default();
        registry.register(
            "introspections",
            "Introspection requests by result (active, inactive, or the error code)",
            introspections.clone(),
        );
        let revocations = Family::<ResultLabels, Counter>::default();
        registry.register(
            "revocations",
            "Revocation requests by result (ok, or the error code)",
            revocations.clone(),
        );
        Self {
            registry: Arc::new(root),
            http,
            tokens,
            token_seconds,
            introspections,
            revocations,
        }
    }

    /// Counts a token request; `grant` is one of the known grants or `other`.
    pub(crate) fn token(&self, grant: &'static str, result: &'static str, elapsed: Duration) {
        self.tokens
            .get_or_create(&TokenLabels { grant, result })
            .inc();
        self.token_seconds.observe(elapsed.as_secs_f64());
    }

    pub(crate) fn introspection(&self, result: &'static str) {
        self.introspections
            .get_or_create(&ResultLabels { result })
            .inc();
    }

    pub(crate) fn revocation(&self, result: &'static str) {
        self.revocations
            .get_or_create(&ResultLabels { result })
            .inc();
    }

    /// `http_server_*`, with the endpoints as routes.
    pub(crate) fn http(&self) -> &dpop_server::HttpMetrics {
        &self.http
    }

    /// The registry, for the admin listener's `/metrics`.
    pub(crate) fn registry(&self) -> Arc<Registry> {
        Arc::clone(&self.registry)
    }
}
