//! The gateway's error type.

/// Why the gateway could not start or stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GatewayError {
    /// A configuration value is wrong.
    #[error("configuration: {0}")]
    Config(String),
    /// A listener could not be opened.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: std::net::SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// The replay store could not be reached at start-up.
    #[error("replay store: {0}")]
    ReplayStore(String),
    /// An upstream refused the gateway at start-up: its certificate did not verify, or
    /// it does not speak HTTP/2 where `http2 = true`. The message names the upstream.
    #[error("{0}")]
    Upstream(String),
    /// Serving stopped: a serving thread (or listener task) could not start, or ended
    /// (panicked) while the server was running. The message names it.
    #[error("serving stopped: {0}")]
    Serving(String),
    /// The token source could not be set up.
    #[error("token source: {0}")]
    Tokens(String),
}
