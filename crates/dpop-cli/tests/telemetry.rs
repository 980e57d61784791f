//! OpenTelemetry traces of `dpop gateway`: the real binary, with `OTEL_*` pointing at an
//! in-process OTLP/HTTP collector ([`TestCollector`]), between a [`MockIssuer`] and an
//! echo [`TestUpstream`]. What is asserted is what a collector and an upstream see: the
//! spans and their attributes, the `traceparent` the upstream receives, the ids in the
//! JSON log, and no credential anywhere in a span. Without the `otel` feature there is
//! nothing to test.

#![cfg(feature = "otel")]

use std::time::Duration;

use dpop_test::{CollectedSpan, Gateway, MockIssuer, TestCollector, TestUpstream, free_port};

use dpop_core::{Algorithm, PrivateKey};

use crate::common::{
    DPOP, SVC_SECRET, gateway_command, gateway_flags, issuer_command, loopback_host_rule, p,
    send_dpop, spawn_server,
};
use crate::gateway::Caller;
use crate::issuer::{IssuerSetup, token_response};

/// The variables that could turn tracing on from the caller's shell.
const OTEL_VARS: [&str; 10] = [
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_PROTOCOL",
    "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
    "OTEL_SDK_DISABLED",
    "OTEL_TRACES_EXPORTER",
    "OTEL_TRACES_SAMPLER",
    "OTEL_TRACES_SAMPLER_ARG",
    "OTEL_SERVICE_NAME",
    "OTEL_RESOURCE_ATTRIBUTES",
];

/// The client's own trace context.
const CLIENT_TRACE: &str = "0af7651916cd43dd8448eb211c80319c";
const CLIENT_SPAN: &str = "b7ad6b7169203331";

fn client_traceparent() -> String {
    format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-01")
}

/// `dpop gateway --log-json` in front of `upstream` for `issuer`'s tokens, with `env` as
/// its only `OTEL_*` settings and short batch delays.
async fn gateway(
    issuer: &MockIssuer,
    upstream: &TestUpstream,
    env: &[(&str, &str)],
) -> (Gateway, String) {
    let port = free_port();
    let mut cmd = gateway_command();
    for name in OTEL_VARS {
        cmd.env_remove(name);
    }
    let args = gateway_flags(&upstream.url(), issuer.url());
    cmd.args(["--listen", &format!("127.0.0.1:{port}"), "--log-json"])
        .args(&args)
        .args(loopback_host_rule(&args, port))
        .env("OTEL_BSP_SCHEDULE_DELAY", "100");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let gw = spawn_server(cmd, port, Duration::from_secs(30), "dpop gateway").await;
    let url = format!("http://{}", gw.addr());
    (gw, url)
}

/// The span whose `url.path` is `path`.
fn span_for<'a>(spans: &'a [CollectedSpan], path: &str) -> &'a CollectedSpan {
    spans
        .iter()
        .find(|s| s.attribute("url.path") == Some(path))
        .unwrap_or_else(|| panic!("no span for {path}: {spans:#?}"))
}

/// The JSON log line whose `fields.message` is `message`.
fn log_line(log: &str, message: &str) -> serde_json::Value {
    log.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["fields"]["message"] == message)
        .unwrap_or_else(|| panic!("no log line {message:?}:\n{log}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_are_traced_and_the_upstream_continues_the_gateways_span() {
    let collector = TestCollector::start().await.unwrap();
    let issuer = MockIssuer::start().await.unwrap();
    let upstream = TestUpstream::start().await.unwrap();
    let (mut gw, url) = gateway(
        &issuer,
        &upstream,
        &[("OTEL_EXPORTER_OTLP_ENDPOINT", &collector.url())],
    )
    .await;
    let caller = Caller::new(&issuer, "read");

    // Accepted, with the client's own trace context, and a query string that must not
    // reach a span.
    let ok_proof = caller.proof("GET", &format!("{url}/v1/ok"), None);
    let traceparent = client_traceparent();
    let r = send_dpop(
        "GET",
        &format!("{url}/v1/ok?access_token=not-a-header"),
        &caller.authorization(),
        &ok_proof,
        &[
            ("traceparent", traceparent.as_str()),
            ("tracestate", "vendor=client"),
        ],
        b"",
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}\n{}", gw.output());

    // Refused: a real proof, for another URL.
    let bad_proof = caller.proof("GET", &format!("{url}/v1/other"), None);
    let r = send_dpop(
        "GET",
        &format!("{url}/v1/refused"),
        &caller.authorization(),
        &bad_proof,
        &[],
        b"",
    )
    .await;
    assert_eq!(r.status, 401, "{r:?}");

    // SIGTERM flushes what the batch has not sent yet.
    let status = gw.terminate(Duration::from_secs(15)).await.unwrap();
    assert!(status.success(), "{status:?}\n{}", gw.output());
    let spans = collector.wait_for_spans(2, Duration::from_secs(10)).await;
    assert_eq!(spans.len(), 2, "one span per request: {spans:#?}");

    let ok = span_for(&spans, "/v1/ok");
    assert_eq!(ok.service_name, "dpop-gateway");
    assert_eq!(ok.kind, 2, "SPAN_KIND_SERVER");
    assert_eq!(ok.name, "GET");
    // The client's trace is continued: same trace, the client's span as parent.
    assert_eq!(ok.trace_id, CLIENT_TRACE);
    assert_eq!(ok.parent_span_id, CLIENT_SPAN);
    for (key, value) in [
        ("http.request.method", "GET"),
        ("http.response.status_code", "200"),
        ("server.address", "127.0.0.1"),
        ("client.address", "127.0.0.1"),
        ("dpop.outcome", "accepted"),
        ("dpop.jkt", caller.jkt()),
        ("enduser.id", "user-1"),
        ("oauth.client_id", "client-1"),
    ] {
        assert_eq!(ok.attribute(key), Some(value), "{key}: {ok:#?}");
    }
    assert!(ok.attribute("dpop.reason").is_none(), "{ok:#?}");

    // The upstream's trace context names the gateway's span, once; the caller's trace
    // state goes on with the trace it belongs to.
    let got = upstream.last_request().unwrap();
    assert_eq!(got.path, "/v1/ok?access_token=not-a-header");
    assert_eq!(
        got.header_values("traceparent"),
        [format!("00-{CLIENT_TRACE}-{}-01", ok.span_id)]
    );
    assert_eq!(got.header_values("tracestate"), ["vendor=client"]);

    let refused = span_for(&spans, "/v1/refused");
    assert_eq!(
        refused.parent_span_id, "",
        "no traceparent sent: a new trace"
    );
    assert_ne!(refused.trace_id, CLIENT_TRACE);
    for (key, value) in [
        ("http.response.status_code", "401"),
        ("dpop.outcome", "rejected"),
        ("dpop.reason", "htu_mismatch"),
    ] {
        assert_eq!(refused.attribute(key), Some(value), "{key}: {refused:#?}");
    }
    assert!(refused.attribute("dpop.jkt").is_none() && refused.attribute("enduser.id").is_none());

    // Nothing secret, and no query string, in any attribute.
    let signature = |jws: &str| jws.rsplit('.').next().unwrap().to_owned();
    for span in &spans {
        for (key, value) in &span.attributes {
            for secret in [&caller.token, &ok_proof, &bad_proof] {
                assert!(
                    !value.contains(secret.as_str()) && !value.contains(&signature(secret)),
                    "{key} carries a credential"
                );
            }
            assert!(!value.contains("access_token"), "{key}={value}");
        }
    }

    // The refusal's log line carries the ids of the refused request's span.
    let log = gw.output();
    let line = log_line(&log, "request refused");
    assert_eq!(line["trace_id"], refused.trace_id.as_str(), "{line}");
    assert_eq!(line["span_id"], refused.span_id.as_str(), "{line}");
    assert!(!log.contains(&caller.token) && !log.contains(&ok_proof));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn off_means_no_exporter_and_the_trace_context_passes_through() {
    let collector = TestCollector::start().await.unwrap();
    let issuer = MockIssuer::start().await.unwrap();
    let upstream = TestUpstream::start().await.unwrap();
    let endpoint = collector.url();
    let caller = Caller::new(&issuer, "read");
    for env in [
        vec![
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
            ("OTEL_SDK_DISABLED", "true"),
        ],
        vec![
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
            ("OTEL_TRACES_EXPORTER", "none"),
        ],
        // Only a service name: no endpoint, no exporter.
        vec![("OTEL_SERVICE_NAME", "gw")],
    ] {
        let (mut gw, url) = gateway(&issuer, &upstream, &env).await;
        let traceparent = client_traceparent();
        let proof = caller.proof("GET", &format!("{url}/v1/ok"), None);
        let r = send_dpop(
            "GET",
            &format!("{url}/v1/ok"),
            &caller.authorization(),
            &proof,
            &[("traceparent", traceparent.as_str())],
            b"",
        )
        .await;
        assert_eq!(r.status, 200, "{env:?}: {r:?}");
        // The gateway takes no part in traces: the client's context goes on unchanged.
        let got = upstream.last_request().unwrap();
        assert_eq!(
            got.header_values("traceparent"),
            [traceparent.as_str()],
            "{env:?}"
        );
        let bad = caller.proof("GET", &format!("{url}/v1/other"), None);
        let r = send_dpop(
            "GET",
            &format!("{url}/v1/refused"),
            &caller.authorization(),
            &bad,
            &[],
            b"",
        )
        .await;
        assert_eq!(r.status, 401);
        gw.terminate(Duration::from_secs(15)).await.unwrap();
        let line = log_line(&gw.output(), "request refused");
        assert!(line.get("trace_id").is_none(), "{env:?}: {line}");
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        collector.connections(),
        0,
        "nothing may connect to the collector"
    );
}

#[test]
fn an_unsupported_exporter_setting_is_a_usage_error() {
    for (name, value, needle) in [
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc", "only http/protobuf"),
        ("OTEL_TRACES_EXPORTER", "zipkin", "only otlp"),
    ] {
        let out = std::process::Command::new(DPOP)
            .args([
                "gateway",
                "--listen",
                "127.0.0.1:1",
                "--upstream",
                "http://127.0.0.1:2",
            ])
            .args([
                "--issuer",
                "https://as.example.com",
                "--audience",
                "https://api.example.com",
            ])
            .args(["--allowed-host", "127.0.0.1:1"])
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:3")
            .env(name, value)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{name}={value}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(needle), "{name}={value}: {stderr}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_collector_costs_requests_nothing() {
    // A collector that accepts connections and never answers, and one that refuses them.
    let blackhole = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let blackhole_url = format!("http://{}", blackhole.local_addr().unwrap());
    let held = tokio::spawn(async move {
        let mut streams = Vec::new();
        while let Ok((s, _)) = blackhole.accept().await {
            streams.push(s);
        }
    });
    let refused_url = format!("http://127.0.0.1:{}", free_port());
    let issuer = MockIssuer::start().await.unwrap();
    let upstream = TestUpstream::start().await.unwrap();
    let caller = Caller::new(&issuer, "read");
    for endpoint in [&blackhole_url, &refused_url] {
        let (mut gw, url) = gateway(
            &issuer,
            &upstream,
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint),
                ("OTEL_BSP_MAX_QUEUE_SIZE", "4"),
            ],
        )
        .await;
        let started = std::time::Instant::now();
        for i in 0..20 {
            let path = format!("/v1/n{i}");
            let proof = caller.proof("GET", &format!("{url}{path}"), None);
            let r = send_dpop(
                "GET",
                &format!("{url}{path}"),
                &caller.authorization(),
                &proof,
                &[],
                b"",
            )
            .await;
            assert_eq!(r.status, 200, "{endpoint}: {r:?}");
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{endpoint}: requests waited for the collector: {:?}",
            started.elapsed()
        );
        // Shutdown waits for the collector a bounded time (5 s), then exits.
        let stopping = std::time::Instant::now();
        let status = gw.terminate(Duration::from_secs(30)).await.unwrap();
        assert!(status.success(), "{endpoint}: {status:?}\n{}", gw.output());
        assert!(
            stopping.elapsed() < Duration::from_secs(12),
            "{endpoint}: shutdown took {:?}",
            stopping.elapsed()
        );
        // A queue of 4 for 20 requests while the first export hangs: dropping is said
        // once, and counted at shutdown.
        if endpoint == &blackhole_url {
            let log = gw.output();
            assert_eq!(
                log.matches("BatchSpanProcessor.SpanDroppingStarted")
                    .count(),
                1,
                "{log}"
            );
            assert!(log.contains("BatchSpanProcessor.SpansDropped"), "{log}");
        }
    }
    held.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issuer_token_requests_are_traced() {
    let collector = TestCollector::start().await.unwrap();
    let setup = IssuerSetup::new();
    let config = setup.config();
    let mut cmd = issuer_command(&["--config", p(&config)]);
    for name in OTEL_VARS {
        cmd.env_remove(name);
    }
    cmd.env("OTEL_EXPORTER_OTLP_ENDPOINT", collector.url())
        .env("OTEL_BSP_SCHEDULE_DELAY", "100");
    let mut issuer = spawn_server(cmd, setup.port(), Duration::from_secs(30), "dpop issuer").await;
    let key = PrivateKey::generate(Algorithm::Es256).unwrap();
    let r = token_response(&setup.url(), &key, "read").await;
    assert_eq!(r.status, 200, "{r:?}");
    let token = r.json().unwrap()["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    issuer.terminate(Duration::from_secs(15)).await.unwrap();

    let spans = collector.wait_for_spans(1, Duration::from_secs(10)).await;
    let tokens: Vec<&CollectedSpan> = spans
        .iter()
        .filter(|s| s.attribute("http.route") == Some("/token"))
        .collect();
    let issued = tokens
        .iter()
        .find(|s| s.attribute("http.response.status_code") == Some("200"))
        .unwrap_or_else(|| panic!("no span for the issued token: {spans:#?}"));
    assert_eq!(issued.service_name, "dpop-issuer");
    assert_eq!(issued.name, "POST /token");
    for (key_name, value) in [
        ("http.request.method", "POST"),
        ("url.path", "/token"),
        ("dpop.outcome", "accepted"),
        ("dpop.jkt", key.thumbprint().as_str()),
        ("oauth.client_id", "svc"),
    ] {
        assert_eq!(
            issued.attribute(key_name),
            Some(value),
            "{key_name}: {issued:#?}"
        );
    }
    // A nonce challenge first, if the issuer asks for one: refused with its reason.
    for challenged in tokens
        .iter()
        .filter(|s| s.attribute("http.response.status_code") == Some("400"))
    {
        assert_eq!(challenged.attribute("dpop.outcome"), Some("rejected"));
        assert!(
            challenged
                .attribute("dpop.reason")
                .is_some_and(|r| r.starts_with("nonce")),
            "{challenged:#?}"
        );
    }
    let signature = token.rsplit('.').next().unwrap();
    for span in &spans {
        for (k, v) in &span.attributes {
            assert!(
                !v.contains(signature) && !v.contains(SVC_SECRET),
                "{k} carries a secret"
            );
        }
    }
}
