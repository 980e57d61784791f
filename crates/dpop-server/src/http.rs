//! What every server process says about the HTTP requests it serves, in the names
//! operators already know: the access log (one line per request at the `tracing` target
//! [`ACCESS_TARGET`]) and the OpenTelemetry HTTP semantic-convention metrics as
//! Prometheus names ([`HttpMetrics`]).
//!
//! Label values come from fixed sets: the method is one of the standard methods or
//! `_OTHER` ([`method_label`]), the route is a name from the configuration (a route's
//! path prefix, an issuer endpoint), never a request's path, and the status code is a
//! number from 100 to 599 (any other status an upstream sends is counted as 0). A client
//! cannot grow the series.

use std::sync::Arc;
use std::time::Duration;

use http::Method;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

/// The `tracing` target of access-log lines: `RUST_LOG=dpop::access=off` silences them,
/// `RUST_LOG=warn,dpop::access=info` keeps only them beside warnings.
pub const ACCESS_TARGET: &str = "dpop::access";

/// The route label of a request that matched no configured route.
pub const DEFAULT_ROUTE: &str = "default";

/// The method as a label: the standard methods by name, anything else `_OTHER`
/// (OpenTelemetry's rule, so a client inventing methods cannot add series).
#[must_use]
pub fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::CONNECT => "CONNECT",
        Method::OPTIONS => "OPTIONS",
        Method::TRACE => "TRACE",
        Method::PATCH => "PATCH",
        _ => "_OTHER",
    }
}

/// The OpenTelemetry default buckets for HTTP durations, in seconds.
const DURATION_BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];

fn duration_histogram() -> Histogram {
    Histogram::new(DURATION_BUCKETS)
}

#[derive(Clone, Debug, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    http_request_method: &'static str,
    http_response_status_code: u16,
    http_route: Arc<str>,
}

/// Two words rather than every byte of the three values: the family hashes a label set
/// (with SipHash, which costs by the byte) twice for every request, and the sets are few.
/// Equal sets hash equally, as `Eq` requires, since both words come from the values; sets
/// that share them (the same status, method length and route end) are told apart by `Eq`.
impl std::hash::Hash for RequestLabels {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        let (method, route) = (
            self.http_request_method.as_bytes(),
            self.http_route.as_bytes(),
        );
        let mut tail = [0_u8; 8];
        let end = route
            .get(route.len().saturating_sub(8)..)
            .unwrap_or_default();
        if let Some(slot) = tail.get_mut(..end.len()) {
            slot.copy_from_slice(end);
        }
        let first = u64::from(method.first().copied().unwrap_or(0));
        state.write_u64(
            u64::from(self.http_response_status_code)
                | first << 16
                | (method.len() as u64) << 24
                | (route.len() as u64) << 32,
        );
        state.write_u64(u64::from_le_bytes(tail));
    }
}

type DurationFamily = Family<RequestLabels, Histogram, fn() -> Histogram>;

/// `http_server_request_duration_seconds`, `http_server_active_requests` and
/// `http_client_request_duration_seconds` (the calls a process makes on a request's
/// behalf: the gateway's upstream), registered without a prefix beside the process's
/// own series. Cheap to clone (shared series).
#[derive(Clone, Debug)]
pub struct HttpMetrics {
    server: DurationFamily,
    client: DurationFamily,
    active: Gauge<i64, std::sync::atomic::AtomicI64>,
}

impl HttpMetrics {
    /// Registers the series in `registry`, which must have no prefix for the names to
    /// be the conventional ones.
    #[must_use]
    pub fn register(registry: &mut Registry) -> Self {
        let server = DurationFamily::new_with_constructor(duration_histogram);
        registry.register_with_unit(
            "http_server_request_duration",
            "Duration of HTTP server requests, by method, status code and configured route",
            Unit::Seconds,
            server.clone(),
        );
        let client = DurationFamily::new_with_constructor(duration_histogram);
        registry.register_with_unit(
            "http_client_request_duration",
            "Duration of HTTP requests made for a request (the upstream, to its response head), by method, status code and configured route",
            Unit::Seconds,
            client.clone(),
        );
        let active = Gauge::default();
        registry.register(
            "http_server_active_requests",
            "HTTP server requests in flight",
            active.clone(),
        );
        Self {
            server,
            client,
            active,
        }
    }

    /// Counts a request in flight until the guard is dropped.
    #[must_use]
    pub fn active(&self) -> ActiveRequest {
        self.active.inc();
        ActiveRequest(self.active.clone())
    }

    /// A served request: its method (as [`method_label`] gives it), status, route label
    /// and duration.
    pub fn server(&self, method: &'static str, status: u16, route: &Arc<str>, elapsed: Duration) {
        observe(&self.server, method, status, route, elapsed);
    }

    /// A request made to serve one (the upstream call), labelled as [`Self::server`].
    pub fn client(&self, method: &'static str, status: u16, route: &Arc<str>, elapsed: Duration) {
        observe(&self.client, method, status, route, elapsed);
    }
}

fn observe(
    family: &DurationFamily,
    method: &'static str,
    status: u16,
    route: &Arc<str>,
    elapsed: Duration,
) {
    // hyper takes any three-digit status from an upstream: what is not HTTP's own
    // (100 to 599) is one label value, so an upstream cannot grow the series.
    let status = if (100..600).contains(&status) {
        status
    } else {
        0
    };
    family
        .get_or_create(&RequestLabels {
            http_request_method: method,
            http_response_status_code: status,
            http_route: Arc::clone(route),
        })
        .observe(elapsed.as_secs_f64());
}

/// One request counted in `http_server_active_requests`.
#[derive(Debug)]
pub struct ActiveRequest(Gauge<i64, std::sync::atomic::AtomicI64>);

impl Drop for ActiveRequest {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_sets_are_told_apart_and_equal_ones_hash_alike() {
        use std::hash::BuildHasher as _;
        let hasher = std::collections::hash_map::RandomState::new();
        let set = |method, status, route: &str| RequestLabels {
            http_request_method: method,
            http_response_status_code: status,
            http_route: Arc::from(route),
        };
        // Equal sets from separate allocations hash alike.
        let a = set("GET", 200, "/api/orders");
        assert_eq!(
            hasher.hash_one(&a),
            hasher.hash_one(set("GET", 200, "/api/orders"))
        );
        // The first two share both words (same status, method length and first byte,
        // route length and end), the others differ from them in one value each: every
        // set is still its own series, counted apart.
        let mut registry = Registry::default();
        let metrics = HttpMetrics::register(&mut registry);
        let same_words = [
            set("GET", 200, "/v1/api/orders"),
            set("GET", 200, "/v2/api/orders"),
            set("GET", 201, "/v1/api/orders"),
            set("PUT", 200, "/v1/api/orders"),
            set("GET", 200, "default"),
            set("GET", 200, ""),
        ];
        for (i, labels) in same_words.iter().enumerate() {
            for _ in 0..=i {
                metrics.server(
                    labels.http_request_method,
                    labels.http_response_status_code,
                    &labels.http_route,
                    Duration::from_millis(1),
                );
            }
        }
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        for (i, labels) in same_words.iter().enumerate() {
            let line = format!(
                "http_server_request_duration_seconds_count{{http_request_method=\"{}\",http_response_status_code=\"{}\",http_route=\"{}\"}} {}\n",
                labels.http_request_method,
                labels.http_response_status_code,
                labels.http_route,
                i + 1
            );
            assert!(text.contains(&line), "{line} not in\n{text}");
        }
    }

    #[test]
    fn methods_are_a_fixed_set() {
        assert_eq!(method_label(&Method::GET), "GET");
        assert_eq!(method_label(&Method::PATCH), "PATCH");
        let invented = Method::from_bytes(b"BREW").unwrap();
        assert_eq!(method_label(&invented), "_OTHER");
    }

    #[test]
    fn the_conventional_names_and_labels() {
        let mut registry = Registry::default();
        let m = HttpMetrics::register(&mut registry);
        let route: Arc<str> = Arc::from("/api/");
        {
            let _active = m.active();
            let text = crate::metrics::encode(&registry);
            assert!(text.contains("http_server_active_requests 1"), "{text}");
        }
        m.server("GET", 200, &route, Duration::from_millis(3));
        m.client("GET", 200, &route, Duration::from_millis(2));
        let text = crate::metrics::encode(&registry);
        assert!(text.contains("http_server_active_requests 0"), "{text}");
        assert!(
            text.contains("# TYPE http_server_request_duration_seconds histogram"),
            "{text}"
        );
        assert!(
            text.contains(r#"http_server_request_duration_seconds_count{http_request_method="GET",http_response_status_code="200",http_route="/api/"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"http_client_request_duration_seconds_bucket{le="0.005",http_request_method="GET",http_response_status_code="200",http_route="/api/"} 1"#),
            "{text}"
        );
    }
}
