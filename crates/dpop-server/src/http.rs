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

use core::cell::RefCell;
use std::sync::Arc;
use std::time::Duration;

use http::Method;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};
use thread_local::ThreadLocal;

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
#[derive(Clone)]
pub struct HttpMetrics {
    server: DurationFamily,
    client: DurationFamily,
    active: Gauge<i64, std::sync::atomic::AtomicI64>,
    /// Each thread's handles on the series it has observed, shared by the clones.
    handles: Arc<ThreadLocal<RefCell<Handles>>>,
}

impl std::fmt::Debug for HttpMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Not the handles: they are the calling thread's, and repeat the families.
        f.debug_struct("HttpMetrics")
            .field("server", &self.server)
            .field("client", &self.client)
            .field("active", &self.active)
            .finish_non_exhaustive()
    }
}

/// Most series a thread keeps a handle on. A series found in the family when the list is
/// full takes the place of a handle not used since the replacement before reached it
/// (a second chance, as a clock replaces pages), so the series a thread counts often
/// keep theirs, whatever it counted once (other routes, a configuration since reloaded).
const MAX_HANDLES: usize = 32;

/// A thread's handles on the series it has observed, found again by comparing the few
/// label values in a short list: a series seen before is counted without hashing its
/// labels and without the family's lock (two of each per proxied request otherwise).
/// A handle shares its histogram with the family's series, so what is observed through it
/// is what the family encodes, for as long as the family keeps the series: nothing may
/// remove series from these families (`Family::remove`, `Family::clear`).
#[derive(Debug, Default)]
struct Handles {
    list: Vec<Handle>,
    /// Where a full list looks first for a handle to replace.
    hand: usize,
}

#[derive(Debug)]
struct Handle {
    /// Used since the replacement last passed it.
    used: bool,
    client: bool,
    method: &'static str,
    status: u16,
    route: Arc<str>,
    histogram: Histogram,
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
            handles: Arc::new(ThreadLocal::new()),
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
        self.observe(false, method, status, route, elapsed);
    }

    /// A request made to serve one (the upstream call), labelled as [`Self::server`].
    pub fn client(&self, method: &'static str, status: u16, route: &Arc<str>, elapsed: Duration) {
        self.observe(true, method, status, route, elapsed);
    }

    fn observe(
        &self,
        client: bool,
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
        let seconds = elapsed.as_secs_f64();
        let mut handles = self.handles.get_or_default().borrow_mut();
        if let Some(handle) = handles.list.iter_mut().find(|h| {
            h.client == client
                && h.status == status
                && h.method == method
                && (Arc::ptr_eq(&h.route, route) || *h.route == **route)
        }) {
            handle.used = true;
            handle.histogram.observe(seconds);
            return;
        }
        let family = if client { &self.client } else { &self.server };
        let histogram = family
            .get_or_create(&RequestLabels {
                http_request_method: method,
                http_response_status_code: status,
                http_route: Arc::clone(route),
            })
            .clone();
        histogram.observe(seconds);
        let handle = Handle {
            used: false,
            client,
            method,
            status,
            route: Arc::clone(route),
            histogram,
        };
        if handles.list.len() < MAX_HANDLES {
            handles.list.push(handle);
            return;
        }
        // At most two turns: the first clears every mark it passes.
        let Handles { list, hand } = &mut *handles;
        for _ in 0..2 * MAX_HANDLES {
            let at = *hand;
            *hand = (at + 1) % MAX_HANDLES;
            if let Some(slot) = list.get_mut(at) {
                if slot.used {
                    slot.used = false;
                } else {
                    *slot = handle;
                    return;
                }
            }
        }
    }
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

    /// Counts of `http_server_request_duration_seconds` by route, from the text encoding.
    fn server_counts(registry: &Registry) -> std::collections::BTreeMap<String, u64> {
        let text = crate::metrics::encode(registry);
        text.lines()
            .filter_map(|l| l.strip_prefix("http_server_request_duration_seconds_count{"))
            .filter_map(|l| {
                let (labels, n) = l.rsplit_once("} ")?;
                let route = labels.split("http_route=\"").nth(1)?.strip_suffix('"')?;
                Some((route.to_owned(), n.parse().ok()?))
            })
            .collect()
    }

    #[test]
    fn every_series_is_counted_whichever_clone_or_thread_observes_it() {
        let mut registry = Registry::default();
        let metrics = HttpMetrics::register(&mut registry);
        // More series than a thread keeps handles on, observed from four threads through
        // clones, each route both as one shared allocation and as a new equal one.
        let routes: Vec<Arc<str>> = (0..MAX_HANDLES * 2)
            .map(|i| Arc::from(format!("/r{i}")))
            .collect();
        std::thread::scope(|scope| {
            for _ in 0..4 {
                let (metrics, routes) = (metrics.clone(), &routes);
                scope.spawn(move || {
                    for _ in 0..3 {
                        for route in routes {
                            metrics.server("GET", 200, route, Duration::from_millis(1));
                            let equal: Arc<str> = Arc::from(&**route);
                            metrics.server("GET", 200, &equal, Duration::from_millis(1));
                        }
                    }
                });
            }
        });
        let counts = server_counts(&registry);
        assert_eq!(counts.len(), routes.len(), "{counts:?}");
        for route in &routes {
            assert_eq!(counts.get(&**route), Some(&24), "{route}: {counts:?}");
        }
        // A label value that differs in one place is its own series, also for a thread
        // that has a handle on the others.
        metrics.server("GET", 201, &routes[0], Duration::from_millis(1));
        metrics.server("PUT", 200, &routes[0], Duration::from_millis(1));
        metrics.client("GET", 200, &routes[0], Duration::from_millis(1));
        metrics.server("GET", 200, &routes[0], Duration::from_millis(1));
        let text = crate::metrics::encode(&registry);
        for line in [
            r#"http_server_request_duration_seconds_count{http_request_method="GET",http_response_status_code="201",http_route="/r0"} 1"#,
            r#"http_server_request_duration_seconds_count{http_request_method="PUT",http_response_status_code="200",http_route="/r0"} 1"#,
            r#"http_client_request_duration_seconds_count{http_request_method="GET",http_response_status_code="200",http_route="/r0"} 1"#,
            r#"http_server_request_duration_seconds_count{http_request_method="GET",http_response_status_code="200",http_route="/r0"} 25"#,
        ] {
            assert!(text.contains(line), "{line} not in\n{text}");
        }
        // Statuses outside 100-599 are one series, 0, through a handle too.
        for status in [42, 600, 999, 42] {
            metrics.server("GET", status, &routes[1], Duration::from_millis(1));
        }
        let text = crate::metrics::encode(&registry);
        let zero = r#"http_server_request_duration_seconds_count{http_request_method="GET",http_response_status_code="0",http_route="/r1"} 4"#;
        assert!(text.contains(zero), "{zero} not in\n{text}");
    }

    #[test]
    fn a_full_list_of_handles_makes_room_and_keeps_the_series_counted_often() {
        let mut registry = Registry::default();
        let metrics = HttpMetrics::register(&mut registry);
        let routes: Vec<Arc<str>> = (0..MAX_HANDLES + 8)
            .map(|i| Arc::from(format!("/r{i}")))
            .collect();
        for route in &routes {
            metrics.server("GET", 200, route, Duration::from_millis(1));
        }
        let held = |metrics: &HttpMetrics| -> Vec<String> {
            let handles = metrics.handles.get_or_default().borrow();
            handles.list.iter().map(|h| h.route.to_string()).collect()
        };
        let now = held(&metrics);
        assert_eq!(now.len(), MAX_HANDLES);
        // None had been used again: the eight newest took the places of the eight oldest.
        for (i, route) in routes.iter().enumerate() {
            assert_eq!(now.contains(&route.to_string()), i >= 8, "{route}: {now:?}");
        }
        // A series counted between newcomers keeps its handle (the same place in the
        // list): /r8 is used again after each of 40 new series, all taking the others'
        // places.
        let place = |now: &[String]| now.iter().position(|r| r == "/r8");
        let before = place(&now);
        let newcomers: Vec<Arc<str>> = (0..40).map(|i| Arc::from(format!("/n{i}"))).collect();
        for newcomer in &newcomers {
            metrics.server("GET", 200, &routes[8], Duration::from_millis(1));
            metrics.server("GET", 200, newcomer, Duration::from_millis(1));
        }
        let now = held(&metrics);
        assert_eq!(now.len(), MAX_HANDLES);
        assert!(before.is_some() && place(&now) == before, "{now:?}");
        assert!(now.contains(&"/n39".to_owned()), "{now:?}");
        // Counted once each, whether through a handle or the family.
        metrics.server("GET", 200, &routes[0], Duration::from_millis(1));
        let counts = server_counts(&registry);
        assert_eq!(counts.get("/r0"), Some(&2));
        assert_eq!(counts.get("/r8"), Some(&41));
        assert!(
            routes[1..]
                .iter()
                .filter(|r| &***r != "/r8")
                .all(|r| counts.get(&**r) == Some(&1)),
            "{counts:?}"
        );
        assert!(
            newcomers.iter().all(|r| counts.get(&**r) == Some(&1)),
            "{counts:?}"
        );
        assert!(held(&metrics).contains(&"/r0".to_owned()));
        // The handles are not in the Debug output (they are the calling thread's).
        assert!(!format!("{metrics:?}").contains("handles"));
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
