//! Why a store could not be set up, and how Redis errors are described without secrets.

use core::time::Duration;

use dpop_core::ReplayStoreError;
use redis::{ErrorKind, RedisError};

/// Why [`RedisReplayStore::connect`](crate::RedisReplayStore::connect) failed. A gateway
/// that gets one should refuse to start, or report itself not ready.
///
/// No variant holds a password: URLs are shown as `redis://user:***@host`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RedisStoreError {
    /// The settings were refused before any connection was tried: the operator's fault.
    #[error("invalid Redis replay store settings: {0}")]
    InvalidConfig(String),
    /// Redis could not be reached or refused the connection: it is down, the address is
    /// wrong, the credentials were rejected, or the TLS handshake failed. With Sentinel, the
    /// reason ends with what each sentinel answered to a `PING` of its own, e.g.
    /// `(sentinel 10.0.0.5:26379: Redis answered with error NOAUTH)`.
    #[error("could not connect to Redis at {url}: {reason}")]
    Connect {
        /// The server URL, password hidden.
        url: String,
        /// What went wrong, e.g. `I/O error: Connection refused (os error 111)`.
        reason: String,
    },
    /// No connection was made within
    /// [`connect_timeout`](crate::RedisStoreConfig::connect_timeout). (With Sentinel, a
    /// search for the primary that runs out of time is a [`Connect`](Self::Connect) error
    /// whose reason says what each sentinel answered.)
    #[error("could not connect to Redis at {url} within {timeout:?}")]
    ConnectTimeout {
        /// The server URL, password hidden.
        url: String,
        /// The time allowed.
        timeout: Duration,
    },
}

/// The replay store error for a failed command: a time-out is reported as such, anything
/// else as [`ReplayStoreError::Unavailable`].
pub(crate) fn store_error(err: &RedisError) -> ReplayStoreError {
    if err.is_timeout() {
        ReplayStoreError::Timeout
    } else {
        ReplayStoreError::Unavailable(describe(err))
    }
}

/// Names the kind of failure without repeating anything that could hold a secret.
///
/// Errors the server sent are reduced to their code (`NOAUTH`, `WRONGPASS`, `READONLY`,
/// `OOM`, ...): their free text is the server's, and a server or proxy that does not know a
/// command may echo its arguments, which for `AUTH` are the credentials. Errors raised in
/// this process (I/O, TLS, configuration) are the client library's own text, which names
/// no credentials.
pub(crate) fn describe(err: &RedisError) -> String {
    match err.kind() {
        ErrorKind::Server(_) | ErrorKind::Extension => match err.code() {
            Some(code) => {
                // A code is one word; the cap only guards against a server sending a novel.
                let code: String = code.chars().take(32).collect();
                format!("Redis answered with error {code}")
            }
            None => "Redis answered with an error".to_owned(),
        },
        _ => err.to_string(),
    }
}
