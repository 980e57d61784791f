//! The log subscriber of the server processes.

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
/// `info`). Does nothing when a subscriber is already installed. The processes log
/// reason codes, methods and paths (without query strings), never tokens, proofs or
/// keys.
pub fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
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
