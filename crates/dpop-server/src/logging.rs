//! The log subscriber of the server processes.

mod fast;

/// How log lines are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum LogFormat {
    /// Human-readable lines (coloured when stderr is a terminal). The default.
    #[default]
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

impl LogFormat {
    /// The format a configuration names: `text` or `json`.
    #[must_use]
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "text" => Some(Self::Text),
            "json" => Some(Self::Json),
            _ => None,
        }
    }

    /// The name [`LogFormat::from_name`] reads.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::Text => "text",
            Self::Json => "json",
        }
    }
}

/// Installs the log subscriber: `format` lines on stderr, level from `RUST_LOG` (default
/// `info`), no span export (see [`crate::telemetry::init`]). Does nothing when a subscriber is already installed. The processes log
/// reason codes, methods and paths (without query strings), never tokens, proofs or
/// keys.
pub fn init_logging(format: LogFormat) {
    // One global filter, not the per-layer one of `fmt_layer`: with the per-layer filter
    // as the only layer, some events at the first use of their call site on a process
    // were lost (the issuer's replay refusal, seen in the multi-instance tests).
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_timer(fast::UtcMicros)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.fmt_fields(fast::Fields).try_init(),
        LogFormat::Json => builder
            .json()
            .event_format(fast::JsonLines::new())
            .try_init(),
    };
}

#[cfg(feature = "otel")]
/// The trace and span ids of the current span, when it is traced.
pub(crate) type CurrentIds = fn() -> Option<(String, String)>;

#[cfg(feature = "otel")]
/// The log layer beside the trace exporter ([`crate::telemetry::init`]), filtered by
/// `RUST_LOG` on its own (so the exporter's layer sees spans the log leaves out). Spans of target `skip_spans_of` are left out
/// (their fields stay out of the lines, which keep their shape). With `ids`, JSON lines
/// written inside a traced span start with its `trace_id` and `span_id`.
pub(crate) fn fmt_layer<S>(
    format: LogFormat,
    skip_spans_of: Option<&'static str>,
    ids: Option<CurrentIds>,
) -> Box<dyn tracing_subscriber::Layer<S> + Send + Sync>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    use tracing_subscriber::Layer as _;
    use tracing_subscriber::filter::FilterExt as _;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"))
        .and(tracing_subscriber::filter::filter_fn(move |m| {
            !(m.is_span() && Some(m.target()) == skip_spans_of)
        }));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let layer = tracing_subscriber::fmt::layer()
        .with_ansi(ansi)
        .with_timer(fast::UtcMicros)
        .with_writer(std::io::stderr);
    match (format, ids) {
        (LogFormat::Text, _) => layer.fmt_fields(fast::Fields).with_filter(filter).boxed(),
        (LogFormat::Json, Some(ids)) => layer
            .json()
            .event_format(TraceIds {
                inner: fast::JsonLines::new(),
                ids,
            })
            .with_filter(filter)
            .boxed(),
        (LogFormat::Json, None) => layer
            .json()
            .event_format(fast::JsonLines::new())
            .with_filter(filter)
            .boxed(),
    }
}

#[cfg(feature = "otel")]
/// A JSON event format whose lines begin with `"trace_id"` and `"span_id"` when the
/// event is inside a traced span.
struct TraceIds<F> {
    inner: F,
    ids: CurrentIds,
}

#[cfg(feature = "otel")]
impl<S, N, F> tracing_subscriber::fmt::FormatEvent<S, N> for TraceIds<F>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'a> tracing_subscriber::fmt::FormatFields<'a> + 'static,
    F: tracing_subscriber::fmt::FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &tracing_subscriber::fmt::FmtContext<'_, S, N>,
        mut writer: tracing_subscriber::fmt::format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let Some((trace_id, span_id)) = (self.ids)() else {
            return self.inner.format_event(ctx, writer, event);
        };
        let mut line = String::new();
        self.inner.format_event(
            ctx,
            tracing_subscriber::fmt::format::Writer::new(&mut line),
            event,
        )?;
        match line.strip_prefix('{') {
            Some(rest) => write!(
                writer,
                "{{\"trace_id\":\"{trace_id}\",\"span_id\":\"{span_id}\",{rest}"
            ),
            None => writer.write_str(&line),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_by_name() {
        assert_eq!(LogFormat::from_name("text"), Some(LogFormat::Text));
        assert_eq!(LogFormat::from_name("json"), Some(LogFormat::Json));
        assert_eq!(LogFormat::from_name("JSON"), None);
        assert_eq!(LogFormat::default(), LogFormat::Text);
        for f in [LogFormat::Text, LogFormat::Json] {
            assert_eq!(LogFormat::from_name(f.name()), Some(f));
        }
    }
}
