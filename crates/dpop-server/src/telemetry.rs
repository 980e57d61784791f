//! OpenTelemetry traces: one server span per request, exported over OTLP.
//!
//! Off unless the process environment asks for it with the standard variables
//! (`OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, and not
//! `OTEL_SDK_DISABLED=true` or `OTEL_TRACES_EXPORTER=none`), and only in a build with the
//! `otel` feature. When off, [`request_span`] returns a disabled span and nothing here
//! costs more than a flag read: no exporter, no thread, no connection.
//!
//! When on:
//! - spans go over OTLP/HTTP with protobuf bodies (`OTEL_EXPORTER_OTLP_PROTOCOL` unset or
//!   `http/protobuf`; `grpc` and `http/json` are refused at start-up, not silently
//!   replaced), batched on the SDK's own thread with a bounded queue
//!   (`OTEL_BSP_MAX_QUEUE_SIZE`, `OTEL_BSP_SCHEDULE_DELAY`, …): a slow or unreachable
//!   collector never holds a request up; a full queue drops spans, logged once when
//!   dropping starts and with the total at shutdown;
//! - the sampler is `OTEL_TRACES_SAMPLER` / `OTEL_TRACES_SAMPLER_ARG` (default
//!   `parentbased_always_on`); the resource is `OTEL_RESOURCE_ATTRIBUTES` and
//!   `OTEL_SERVICE_NAME`, `service.name` defaulting to the process's own name;
//! - an incoming W3C `traceparent` / `tracestate` continues the caller's trace: the span
//!   is a child of the caller's, and the local sampler decides (a `parentbased_*` sampler
//!   follows the caller's sampled flag, any other ignores it);
//! - JSON log lines written inside a request carry its `trace_id` and `span_id`.
//!
//! Span attributes are the HTTP semantic conventions and the DPoP outcome; never a
//! token, a proof, a query string or a header value other than `Host`. Log events are
//! not copied into spans.

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use http::{HeaderMap, Method, StatusCode};

use tracing::field::Empty;

use crate::logging::LogFormat;

/// Set once the span exporter is installed.
static ENABLED: AtomicBool = AtomicBool::new(false);

/// The target of the request spans.
pub const SPAN_TARGET: &str = "dpop::request";

/// How long [`Telemetry::shutdown`] waits for the last spans to reach the collector.
pub const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// Why tracing cannot start as the environment asks.
#[derive(Debug)]
#[non_exhaustive]
pub struct TelemetryError(String);

impl std::fmt::Display for TelemetryError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TelemetryError {}

/// What the `OTEL_*` variables ask for.
#[derive(Debug, PartialEq, Eq)]
enum Wanted {
    Off,
    /// OTLP over HTTP/protobuf.
    Otlp,
}

/// Reads the switch variables through `var` (the process environment, or a test's map).
fn wanted(var: impl Fn(&str) -> Option<String>) -> Result<Wanted, TelemetryError> {
    let set = |name: &str| var(name).filter(|v| !v.trim().is_empty());
    if set("OTEL_SDK_DISABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("true")) {
        return Ok(Wanted::Off);
    }
    match set("OTEL_TRACES_EXPORTER").as_deref().map(str::trim) {
        None | Some("otlp") => {}
        Some("none") => return Ok(Wanted::Off),
        Some(other) => {
            return Err(TelemetryError(format!(
                "OTEL_TRACES_EXPORTER={other} is not supported: only otlp (or none)"
            )));
        }
    }
    if set("OTEL_EXPORTER_OTLP_ENDPOINT").is_none()
        && set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").is_none()
    {
        return Ok(Wanted::Off);
    }
    let protocol =
        set("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL").or_else(|| set("OTEL_EXPORTER_OTLP_PROTOCOL"));
    match protocol.as_deref().map(str::trim) {
        None | Some("http/protobuf") => Ok(Wanted::Otlp),
        Some(other) => Err(TelemetryError(format!(
            "OTEL_EXPORTER_OTLP_PROTOCOL={other} is not supported: only http/protobuf"
        ))),
    }
}

/// `true` when request spans are exported.
#[must_use]
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// The running exporter; [`Telemetry::shutdown`] (or dropping it) flushes the spans
/// still queued, waiting at most [`SHUTDOWN_TIMEOUT`]. Call it outside an async
/// runtime, after serving has stopped.
#[derive(Debug, Default)]
pub struct Telemetry {
    #[cfg(feature = "otel")]
    provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

impl Telemetry {
    /// Flushes and stops the exporter (bounded by [`SHUTDOWN_TIMEOUT`]).
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        #[cfg(feature = "otel")]
        if let Some(provider) = self.provider.take() {
            ENABLED.store(false, Ordering::Relaxed);
            if let Err(e) = provider.shutdown_with_timeout(SHUTDOWN_TIMEOUT) {
                tracing::warn!(target: "dpop::telemetry", error = %e, "trace exporter did not flush");
            }
        }
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Installs the log subscriber as [`crate::init_logging`] does and, when the
/// environment asks for it (see the module documentation), the span exporter, with
/// `service_name` as `service.name` unless `OTEL_SERVICE_NAME` or
/// `OTEL_RESOURCE_ATTRIBUTES` names one. Call it before starting an async runtime.
///
/// # Errors
/// An `OTEL_*` setting this build cannot honour (another protocol or exporter), or an
/// exporter that cannot be built (a malformed endpoint).
pub fn init(format: LogFormat, service_name: &'static str) -> Result<Telemetry, TelemetryError> {
    let env = |name: &str| std::env::var(name).ok();
    match wanted(env)? {
        Wanted::Off => {
            crate::logging::init_logging(format);
            Ok(Telemetry::default())
        }
        Wanted::Otlp => start(format, service_name, env),
    }
}

#[cfg(not(feature = "otel"))]
fn start(
    format: LogFormat,
    _service_name: &'static str,
    _env: impl Fn(&str) -> Option<String>,
) -> Result<Telemetry, TelemetryError> {
    crate::logging::init_logging(format);
    tracing::warn!(target: "dpop::telemetry", "OTEL_EXPORTER_OTLP_ENDPOINT is set but this build has no OpenTelemetry exporter (feature otel): no traces are exported");
    Ok(Telemetry::default())
}

#[cfg(feature = "otel")]
fn start(
    format: LogFormat,
    service_name: &'static str,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Telemetry, TelemetryError> {
    use opentelemetry::trace::TracerProvider as _;
    use opentelemetry_sdk::resource::{
        EnvResourceDetector, SdkProvidedResourceDetector, TelemetryResourceDetector,
    };
    use tracing_subscriber::Layer as _;
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;

    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .build()
        .map_err(|e| TelemetryError(format!("cannot set up the OTLP trace exporter: {e}")))?;
    let named = env("OTEL_SERVICE_NAME").is_some_and(|v| !v.trim().is_empty())
        || env("OTEL_RESOURCE_ATTRIBUTES").is_some_and(|v| v.contains("service.name="));
    // SdkProvidedResourceDetector reads OTEL_SERVICE_NAME and names an unnamed service
    // "unknown_service": used only when the environment names the service.
    let resource = opentelemetry_sdk::Resource::builder_empty().with_detectors(&[
        Box::new(TelemetryResourceDetector),
        Box::new(EnvResourceDetector::new()),
    ]);
    let resource = if named {
        resource.with_detector(Box::new(SdkProvidedResourceDetector))
    } else {
        resource.with_service_name(service_name)
    }
    .build();
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build();
    let tracer = provider.tracer("dpop");
    // Spans only: log events (refusal details among them) stay in the log.
    let otel = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_location(false)
        .with_threads(false)
        .with_target(false)
        .with_level(false)
        .with_filter(tracing_subscriber::filter::filter_fn(|m| {
            m.is_span() && m.target() == SPAN_TARGET
        }));
    let installed = tracing_subscriber::registry()
        .with(crate::logging::fmt_layer(
            format,
            Some(SPAN_TARGET),
            Some(otel::current_ids),
        ))
        .with(otel)
        .try_init();
    if installed.is_err() {
        // Another subscriber was installed first: spans would not reach the exporter.
        let _ = provider.shutdown_with_timeout(Duration::from_millis(1));
        tracing::warn!(target: "dpop::telemetry", "a log subscriber was already installed: no traces are exported");
        return Ok(Telemetry::default());
    }
    ENABLED.store(true, Ordering::Relaxed);
    tracing::info!(target: "dpop::telemetry", "exporting traces over OTLP/HTTP");
    Ok(Telemetry {
        provider: Some(provider),
    })
}

/// The host of the request's URI or `Host` field (no port), for `server.address`.
/// Longest value of an attribute taken from a request (the path, the host): a client
/// cannot make spans, and the exporter's queue, as large as the header limit allows.
const MAX_ATTRIBUTE_BYTES: usize = 512;

/// `value` cut to at most [`MAX_ATTRIBUTE_BYTES`], at a character boundary.
fn bounded(value: &str) -> &str {
    if value.len() <= MAX_ATTRIBUTE_BYTES {
        return value;
    }
    let mut end = MAX_ATTRIBUTE_BYTES;
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    value.get(..end).unwrap_or_default()
}

fn server_address<B>(req: &http::Request<B>) -> Option<&str> {
    if let Some(host) = req.uri().host() {
        return Some(host);
    }
    let host = req.headers().get(http::header::HOST)?.to_str().ok()?;
    match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) && !name.is_empty() => {
            Some(name)
        }
        _ => Some(host),
    }
}

/// The server span of one request (target [`SPAN_TARGET`]), continuing the caller's
/// trace from `traceparent` / `tracestate`, or a disabled span when tracing is off.
/// `peer` is the connection's peer (`client.address`), `route` the route template or
/// endpoint when known up front. Run the request's future inside it
/// (`Instrument::instrument`); record the result with [`record_status`],
/// [`record_outcome`], [`record_identity`].
#[must_use]
pub fn request_span<B>(
    req: &http::Request<B>,
    peer: Option<IpAddr>,
    route: Option<&str>,
) -> tracing::Span {
    if !enabled() {
        return tracing::Span::none();
    }
    let method = crate::http::method_label(req.method());
    let span = tracing::info_span!(
        target: SPAN_TARGET,
        "request",
        otel.name = method,
        otel.kind = "server",
        otel.status_code = Empty,
        http.request.method = method,
        url.path = bounded(req.uri().path()),
        http.route = Empty,
        http.response.status_code = Empty,
        server.address = server_address(req).map(bounded),
        client.address = peer.map(|ip| tracing::field::display(ip.to_canonical())),
        dpop.outcome = Empty,
        dpop.reason = Empty,
        dpop.jkt = Empty,
        enduser.id = Empty,
        oauth.client_id = Empty,
    );
    if let Some(route) = route {
        record_route(&span, route, req.method());
    }
    #[cfg(feature = "otel")]
    otel::continue_trace(&span, req.headers());
    span
}

/// Sets `http.route` and the span name (`METHOD route`).
pub fn record_route(span: &tracing::Span, route: &str, method: &Method) {
    span.record("http.route", route);
    span.record(
        "otel.name",
        format!("{} {route}", crate::http::method_label(method)),
    );
}

/// Sets `url.path` to the canonical path the server acted on (replacing the path as
/// sent).
pub fn record_path(span: &tracing::Span, path: &str) {
    span.record("url.path", bounded(path));
}

/// Sets `http.response.status_code`, and the span status to error for a 5xx.
pub fn record_status(span: &tracing::Span, status: StatusCode) {
    span.record("http.response.status_code", status.as_u16());
    if status.is_server_error() {
        span.record("otel.status_code", "ERROR");
    }
}

/// Sets `dpop.outcome` and, when the request was (or would have been) refused,
/// `dpop.reason` (a stable reason code) on the current span.
pub fn record_outcome(outcome: &'static str, reason: Option<&'static str>) {
    let span = tracing::Span::current();
    span.record("dpop.outcome", outcome);
    if let Some(reason) = reason {
        span.record("dpop.reason", reason);
    }
}

/// Sets `dpop.jkt`, `enduser.id` (the token's `sub`) and `oauth.client_id` on the
/// current span, where known.
pub fn record_identity(jkt: Option<&str>, subject: Option<&str>, client_id: Option<&str>) {
    let span = tracing::Span::current();
    if let Some(jkt) = jkt {
        span.record("dpop.jkt", jkt);
    }
    if let Some(sub) = subject {
        span.record("enduser.id", sub);
    }
    if let Some(client_id) = client_id {
        span.record("oauth.client_id", client_id);
    }
}

/// The W3C trace context fields.
pub const TRACE_HEADERS: [&str; 2] = ["traceparent", "tracestate"];

/// Replaces the trace context in `headers` (a request going on to another service) with
/// the current span's, so `traceparent` names this hop. Does nothing when tracing is
/// off: the process then takes no part in traces and forwards the fields as they came.
pub fn propagate(headers: &mut HeaderMap) {
    if !enabled() {
        return;
    }
    for name in TRACE_HEADERS {
        headers.remove(name);
    }
    #[cfg(feature = "otel")]
    otel::inject(&tracing::Span::current(), headers);
}

#[cfg(feature = "otel")]
mod otel {
    use http::{HeaderMap, HeaderName, HeaderValue};
    use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator as _};
    use opentelemetry::trace::TraceContextExt as _;
    use opentelemetry_sdk::propagation::TraceContextPropagator;
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;

    struct Extract<'a>(&'a HeaderMap);

    impl Extractor for Extract<'_> {
        fn get(&self, key: &str) -> Option<&str> {
            // One field line each: a repeated traceparent is invalid (W3C Trace Context
            // §3.2), and the propagator then starts a new trace.
            let mut values = self.0.get_all(key).iter();
            let first = values.next()?;
            if values.next().is_some() {
                return None;
            }
            first.to_str().ok()
        }

        fn keys(&self) -> Vec<&str> {
            self.0.keys().map(HeaderName::as_str).collect()
        }
    }

    struct Inject<'a>(&'a mut HeaderMap);

    impl Injector for Inject<'_> {
        fn set(&mut self, key: &str, value: String) {
            if let (Ok(name), Ok(value)) = (
                HeaderName::from_bytes(key.as_bytes()),
                HeaderValue::from_str(&value),
            ) {
                self.0.insert(name, value);
            }
        }
    }

    /// Makes `span` a child of the caller's span named in `headers`, if any.
    pub(super) fn continue_trace(span: &tracing::Span, headers: &HeaderMap) {
        if !headers.contains_key("traceparent") {
            return;
        }
        let cx = TraceContextPropagator::new().extract(&Extract(headers));
        if cx.span().span_context().is_valid() {
            let _ = span.set_parent(cx);
        }
    }

    /// Writes `span`'s trace context into `headers`.
    pub(super) fn inject(span: &tracing::Span, headers: &mut HeaderMap) {
        let cx = span.context();
        if cx.span().span_context().is_valid() {
            TraceContextPropagator::new().inject_context(&cx, &mut Inject(headers));
        }
    }

    /// The trace and span ids of the current span, when it is traced.
    pub(super) fn current_ids() -> Option<(String, String)> {
        let cx = tracing::Span::current().context();
        let span = cx.span();
        let sc = span.span_context();
        sc.is_valid()
            .then(|| (sc.trace_id().to_string(), sc.span_id().to_string()))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn wanted_with(vars: &[(&str, &str)]) -> Result<Wanted, TelemetryError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        wanted(|name| map.get(name).cloned())
    }

    #[test]
    fn the_environment_turns_tracing_on_and_off() {
        let endpoint = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318");
        assert_eq!(wanted_with(&[]).unwrap(), Wanted::Off);
        assert_eq!(
            wanted_with(&[("OTEL_EXPORTER_OTLP_ENDPOINT", " ")]).unwrap(),
            Wanted::Off
        );
        assert_eq!(wanted_with(&[endpoint]).unwrap(), Wanted::Otlp);
        assert_eq!(
            wanted_with(&[(
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                "http://c:4318/v1/traces"
            )])
            .unwrap(),
            Wanted::Otlp
        );
        assert_eq!(
            wanted_with(&[endpoint, ("OTEL_SDK_DISABLED", "TRUE")]).unwrap(),
            Wanted::Off
        );
        assert_eq!(
            wanted_with(&[endpoint, ("OTEL_SDK_DISABLED", "false")]).unwrap(),
            Wanted::Otlp
        );
        assert_eq!(
            wanted_with(&[endpoint, ("OTEL_TRACES_EXPORTER", "none")]).unwrap(),
            Wanted::Off
        );
        assert_eq!(
            wanted_with(&[endpoint, ("OTEL_TRACES_EXPORTER", "otlp")]).unwrap(),
            Wanted::Otlp
        );
        assert_eq!(
            wanted_with(&[endpoint, ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")]).unwrap(),
            Wanted::Otlp
        );
        for (name, value, needle) in [
            (
                "OTEL_TRACES_EXPORTER",
                "zipkin",
                "OTEL_TRACES_EXPORTER=zipkin",
            ),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc", "only http/protobuf"),
            (
                "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
                "http/json",
                "only http/protobuf",
            ),
        ] {
            let e = wanted_with(&[endpoint, (name, value)])
                .unwrap_err()
                .to_string();
            assert!(e.contains(needle), "{e}");
        }
    }

    #[test]
    fn request_values_are_bounded_at_a_character_boundary() {
        let short = "/v1/items";
        assert_eq!(bounded(short), short);
        let long = format!("/{}", "é".repeat(400));
        let cut = bounded(&long);
        assert!(cut.len() <= MAX_ATTRIBUTE_BYTES && cut.len() >= MAX_ATTRIBUTE_BYTES - 1);
        assert!(long.starts_with(cut));
    }

    #[test]
    fn server_address_is_the_host_without_port() {
        let host = |h: &str| {
            let req = http::Request::builder()
                .uri("/")
                .header("host", h)
                .body(())
                .unwrap();
            server_address(&req).map(str::to_owned)
        };
        assert_eq!(
            host("api.example.com:8443").as_deref(),
            Some("api.example.com")
        );
        assert_eq!(host("api.example.com").as_deref(), Some("api.example.com"));
        assert_eq!(host("[::1]:8080").as_deref(), Some("[::1]"));
        let req = http::Request::builder()
            .uri("https://h.example/x")
            .body(())
            .unwrap();
        assert_eq!(server_address(&req), Some("h.example"));
    }

    #[test]
    fn methods_outside_the_registry_are_other() {
        assert_eq!(crate::http::method_label(&Method::GET), "GET");
        assert_eq!(crate::http::method_label(&Method::PATCH), "PATCH");
        assert_eq!(
            crate::http::method_label(&Method::from_bytes(b"BREW").unwrap()),
            "_OTHER"
        );
    }

    #[test]
    fn off_means_disabled_spans_and_untouched_headers() {
        assert!(!enabled());
        let req = http::Request::builder()
            .uri("/a?b")
            .header(
                "traceparent",
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            )
            .body(())
            .unwrap();
        assert!(request_span(&req, None, Some("/token")).is_disabled());
        let mut headers = req.headers().clone();
        propagate(&mut headers);
        assert_eq!(&headers, req.headers());
    }
}
