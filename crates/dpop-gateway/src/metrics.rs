//! Prometheus metrics for the admin listener's `/metrics`.

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use dpop_server::http::{DEFAULT_ROUTE, HttpMetrics};
use dpop_tower::{DpopEvents, Outcome};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ThreadLabels {
    thread: String,
}

/// The `http_route` label of each route, by route id (names from the configuration,
/// never request paths), and `default` for requests that matched no route.
#[derive(Clone, Debug)]
pub(crate) struct RouteLabels {
    routes: Arc<[Arc<str>]>,
    default: Arc<str>,
}

impl RouteLabels {
    pub(crate) fn new(names: &[String]) -> Self {
        Self {
            routes: names.iter().map(|r| Arc::from(r.as_str())).collect(),
            default: Arc::from(DEFAULT_ROUTE),
        }
    }

    /// The label of the route with this id.
    pub(crate) fn get(&self, id: Option<usize>) -> &Arc<str> {
        id.and_then(|i| self.routes.get(i)).unwrap_or(&self.default)
    }
}

/// The gateway's metrics, fed by the DPoP layer's events and the proxy.
#[derive(Debug)]
pub struct Metrics {
    registry: Arc<Registry>,
    requests: Family<OutcomeLabels, Counter>,
    verification: Histogram,
    iat_offset: Histogram,
    nonce_challenges: Counter,
    replays: Counter,
    jwks_refreshes: Family<ResultLabels, Counter>,
    upstream: Family<ResultLabels, Counter<u64, AtomicU64>>,
    /// `upstream`'s `ok` series, counted for nearly every request: held once it exists
    /// rather than looked up (hashed, under the family's lock) each time.
    upstream_ok: OnceLock<Counter<u64, AtomicU64>>,
    authz_untrusted_callers: Counter,
    authz_refused: Family<ReasonLabels, Counter>,
    config_generation: Gauge,
    config_reload_failures: Counter,
    config_loaded_at: Gauge<f64, AtomicU64>,
    serving_connections: Family<ThreadLabels, Gauge>,
    http: HttpMetrics,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric. The `http_route` labels come from the configuration each
    /// request was served with (they change with a reload).
    #[must_use]
    pub fn new() -> Self {
        let mut root = Registry::default();
        // The OpenTelemetry names go without a prefix, the DPoP series under `dpop_`.
        let http = HttpMetrics::register(&mut root);
        let registry = root.sub_registry_with_prefix("dpop");
        let requests = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "requests",
            "Requests by DPoP outcome and reason code",
            requests.clone(),
        );
        let verification = Histogram::new([
            0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.25, 1.0,
        ]);
        registry.register(
            "verification_seconds",
            "Time to authenticate a request (token, proof, replay record)",
            verification.clone(),
        );
        let iat_offset = Histogram::new([
            -60.0, -30.0, -10.0, -5.0, -2.0, -1.0, 0.0, 1.0, 2.0, 5.0, 10.0, 15.0,
        ]);
        registry.register(
            "iat_offset_seconds",
            "Proof iat minus server time (client clock skew)",
            iat_offset.clone(),
        );
        let nonce_challenges = Counter::default();
        registry.register(
            "nonce_challenges",
            "use_dpop_nonce challenges sent",
            nonce_challenges.clone(),
        );
        let replays = Counter::default();
        registry.register("replays", "Replayed proofs refused", replays.clone());
        let jwks_refreshes = Family::<ResultLabels, Counter>::default();
        registry.register(
            "jwks_refreshes",
            "Fetches of the issuer's keys",
            jwks_refreshes.clone(),
        );
        let upstream = Family::<ResultLabels, Counter<u64, AtomicU64>>::default();
        registry.register(
            "upstream_responses",
            "Upstream results (ok, error, timeout)",
            upstream.clone(),
        );
        let authz_untrusted_callers = Counter::default();
        registry.register(
            "authz_untrusted_callers",
            "Forward-auth checks refused because the caller is not in trusted_proxies",
            authz_untrusted_callers.clone(),
        );
        let authz_refused = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "authz_refused",
            "Checks the authorizer refused before or around the DPoP checks (an incomplete or contradictory report, a forged identity header, a time-out), by reason",
            authz_refused.clone(),
        );
        let config_generation = Gauge::default();
        config_generation.set(1);
        registry.register(
            "config_generation",
            "The configuration in force: 1 as started, one more per applied reload",
            config_generation.clone(),
        );
        let config_reload_failures = Counter::default();
        registry.register(
            "config_reload_failures",
            "Configuration reloads refused (the configuration in force stayed)",
            config_reload_failures.clone(),
        );
        let config_loaded_at = Gauge::<f64, AtomicU64>::default();
        config_loaded_at.set(unix_now());
        registry.register(
            "config_last_reload_success_timestamp_seconds",
            "When the configuration in force was loaded (start-up or the last applied reload), Unix time",
            config_loaded_at.clone(),
        );
        let serving_connections = Family::<ThreadLabels, Gauge>::default();
        registry.register(
            "serving_thread_connections",
            "Client connections each gateway serving thread holds now (a thread hands a new connection to the one with the fewest when that one has at least two fewer)",
            serving_connections.clone(),
        );
        Self {
            registry: Arc::new(root),
            requests,
            verification,
            iat_offset,
            nonce_challenges,
            replays,
            jwks_refreshes,
            upstream,
            upstream_ok: OnceLock::new(),
            authz_untrusted_callers,
            authz_refused,
            config_generation,
            config_reload_failures,
            config_loaded_at,
            serving_connections,
            http,
        }
    }

    /// Records an applied reload: `generation` is in force from now on.
    pub(crate) fn config_applied(&self, generation: u64) {
        self.config_generation
            .set(i64::try_from(generation).unwrap_or(i64::MAX));
        self.config_loaded_at.set(unix_now());
    }

    /// The gauge of the connections serving thread `thread` holds.
    pub(crate) fn serving_thread_connections(&self, thread: usize) -> Gauge {
        self.serving_connections
            .get_or_create(&ThreadLabels {
                thread: thread.to_string(),
            })
            .clone()
    }

    /// Counts a refused reload.
    pub(crate) fn config_reload_failed(&self) {
        self.config_reload_failures.inc();
    }

    /// The OpenTelemetry-named HTTP series.
    pub(crate) fn http(&self) -> &HttpMetrics {
        &self.http
    }

    /// The Prometheus text exposition.
    #[must_use]
    pub fn render(&self) -> String {
        dpop_server::metrics::encode(&self.registry)
    }

    /// The registry, for the admin listener's `/metrics`.
    pub(crate) fn registry(&self) -> Arc<Registry> {
        Arc::clone(&self.registry)
    }

    /// Counts a forward-auth check from a caller outside `trusted_proxies`.
    pub(crate) fn authz_untrusted_caller(&self) {
        self.authz_untrusted_callers.inc();
    }

    /// Counts a check the authorizer refused outside the DPoP layer.
    pub(crate) fn authz_refused(&self, reason: &'static str) {
        self.authz_refused
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    /// Counts an upstream result.
    pub fn upstream(&self, result: &'static str) {
        if result == "ok" {
            self.upstream_ok
                .get_or_init(|| {
                    self.upstream
                        .get_or_create(&ResultLabels { result: "ok" })
                        .clone()
                })
                .inc();
        } else {
            self.upstream.get_or_create(&ResultLabels { result }).inc();
        }
    }
}

impl DpopEvents for Metrics {
    fn outcome(&self, outcome: Outcome, elapsed: Duration) {
        let (name, reason) = match outcome {
            Outcome::Accepted => ("accepted", ""),
            Outcome::AcceptedBearer => ("accepted_bearer", ""),
            Outcome::Rejected(r) => ("rejected", r.as_str()),
            Outcome::WouldReject(r) => ("would_reject", r.as_str()),
            Outcome::FailedOpen(r) => ("failed_open", r.as_str()),
            _ => ("other", ""),
        };
        // The request's span (when traced) carries the same names as the metric.
        dpop_server::telemetry::record_outcome(name, Some(reason).filter(|r| !r.is_empty()));
        if matches!(
            outcome,
            Outcome::Rejected(dpop_core::Reason::Replay)
                | Outcome::WouldReject(dpop_core::Reason::Replay)
        ) {
            self.replays.inc();
        }
        self.requests
            .get_or_create(&OutcomeLabels {
                outcome: name,
                reason,
            })
            .inc();
        self.verification.observe(elapsed.as_secs_f64());
    }

    fn proof_accepted(&self, iat_offset_secs: i64) {
        #[expect(clippy::cast_precision_loss, reason = "offsets are small")]
        self.iat_offset.observe(iat_offset_secs as f64);
    }

    fn nonce_challenge(&self) {
        self.nonce_challenges.inc();
    }

    fn jwks_refresh(&self, ok: bool) {
        self.jwks_refreshes
            .get_or_create(&ResultLabels {
                result: if ok { "ok" } else { "error" },
            })
            .inc();
    }
}

/// Seconds since the Unix epoch, now.
fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}
