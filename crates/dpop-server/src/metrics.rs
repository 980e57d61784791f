//! Prometheus metrics as the admin listener serves them.

use prometheus_client::registry::Registry;

/// The content type of [`encode`]'s output (OpenMetrics 1.0 text).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Every metric of `registry` in the OpenMetrics text format.
#[must_use]
pub fn encode(registry: &Registry) -> String {
    let mut out = String::new();
    // Writing into a String cannot fail; a metric that fails to encode itself would leave
    // a partial exposition, which scrapers reject as a whole.
    if prometheus_client::encoding::text::encode(&mut out, registry).is_err() {
        tracing::warn!(target: "dpop::admin", "a metric could not be encoded");
    }
    out
}

#[cfg(test)]
mod tests {
    use prometheus_client::metrics::counter::Counter;

    use super::*;

    #[test]
    fn encodes_the_registered_metrics() {
        let mut registry = Registry::with_prefix("test");
        let c: Counter = Counter::default();
        registry.register("things", "Things seen", c.clone());
        c.inc();
        let text = encode(&registry);
        assert!(text.contains("# TYPE test_things counter"), "{text}");
        assert!(text.contains("test_things_total 1"), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
