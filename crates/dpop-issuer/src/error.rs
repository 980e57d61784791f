//! Errors: [`ConfigError`] and [`IssuerError`] for starting and operating the issuer,
//! [`OAuthError`] for what a client sees (RFC 6749 §5.2, RFC 7009, RFC 7662, RFC 9449 §12.2).
//! Its code is dpop-core's [`RfcError`], whose one mapping gives each code its status.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
pub use dpop_core::RfcError;
use dpop_core::Role;

/// The configuration is unusable.
#[derive(Clone, Debug, thiserror::Error)]
#[error("{message}")]
pub struct ConfigError {
    message: String,
}

impl ConfigError {
    pub(crate) fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
        }
    }

    /// The message.
    #[must_use]
    pub fn message(&self) -> &str {
        &self.message
    }
}

/// The issuer cannot start or an operation on its state failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IssuerError {
    /// The configuration is unusable.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The database failed or is unreachable.
    #[error("database: {0}")]
    Store(#[from] StoreError),
    /// Signing keys could not be created, read or used.
    #[error("signing keys: {0}")]
    Keys(String),
    /// The listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: std::net::SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// An operation named an unknown client.
    #[error("no client {0:?} in the configuration")]
    UnknownClient(String),
}

/// A database operation failed.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct StoreError(pub(crate) String);

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        Self(e.to_string())
    }
}

impl From<sqlx::migrate::MigrateError> for StoreError {
    fn from(e: sqlx::migrate::MigrateError) -> Self {
        Self(format!("migration failed: {e}"))
    }
}

/// An error response: `{"error": …, "error_description": …}` with the right status and
/// headers.
#[derive(Debug, Clone)]
pub struct OAuthError {
    /// The code.
    pub code: RfcError,
    /// A description for the client developer: never secrets or token contents.
    pub description: String,
    /// A fresh nonce for `use_dpop_nonce`.
    pub nonce: Option<String>,
    /// Seconds for `Retry-After` (`slow_down`; `temporarily_unavailable` says 5 without).
    pub retry_after: Option<u64>,
}

impl OAuthError {
    /// An error with a description.
    #[must_use]
    pub fn new(code: RfcError, description: impl Into<String>) -> Self {
        Self {
            code,
            description: description.into(),
            nonce: None,
            retry_after: None,
        }
    }

    pub(crate) fn slow_down(retry_after: u64) -> Self {
        Self {
            retry_after: Some(retry_after.max(1)),
            ..Self::new(
                RfcError::SlowDown,
                "too many failed client authentication attempts; retry after the time in Retry-After",
            )
        }
    }

    pub(crate) fn invalid_request(d: impl Into<String>) -> Self {
        Self::new(RfcError::InvalidRequest, d)
    }

    pub(crate) fn invalid_client(d: impl Into<String>) -> Self {
        Self::new(RfcError::InvalidClient, d)
    }

    pub(crate) fn invalid_grant(d: impl Into<String>) -> Self {
        Self::new(RfcError::InvalidGrant, d)
    }

    pub(crate) fn unavailable(e: &StoreError) -> Self {
        tracing::error!(target: "dpop::issuer", error = %e, "database error");
        Self::new(
            RfcError::TemporarilyUnavailable,
            "the authorization server's storage is unavailable; retry later",
        )
    }

    pub(crate) fn server_error(what: &str) -> Self {
        tracing::error!(target: "dpop::issuer", error = what, "internal error");
        Self::new(RfcError::ServerError, "internal error")
    }
}

impl From<StoreError> for OAuthError {
    fn from(e: StoreError) -> Self {
        Self::unavailable(&e)
    }
}

impl IntoResponse for OAuthError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({
            "error": self.code.as_str(),
            "error_description": self.description,
        });
        let status = StatusCode::from_u16(self.code.status(Role::AuthorizationServer))
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut response = (status, axum::Json(body)).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
        if self.code == RfcError::InvalidClient {
            // RFC 6749 §5.2: 401 with the scheme the client may use.
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"dpop-issuer\""),
            );
        }
        if let Some(secs) = self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        } else if self.code == RfcError::TemporarilyUnavailable {
            headers.insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
        }
        if let Some(nonce) = self
            .nonce
            .as_deref()
            .and_then(|n| HeaderValue::from_str(n).ok())
        {
            headers.insert("dpop-nonce", nonce);
        }
        // For the access log: the code, never the description (it may quote input).
        response.extensions_mut().insert(self.code);
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slow_down_is_429_with_retry_after() {
        let r = OAuthError::slow_down(15).into_response();
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(r.headers()[header::RETRY_AFTER], "15");
        assert_eq!(r.headers()[header::CACHE_CONTROL], "no-store");
        assert!(r.headers().get(header::WWW_AUTHENTICATE).is_none());
        // Never "retry at once".
        let r = OAuthError::slow_down(0).into_response();
        assert_eq!(r.headers()[header::RETRY_AFTER], "1");
        let r = OAuthError::new(RfcError::TemporarilyUnavailable, "down").into_response();
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(r.headers()[header::RETRY_AFTER], "5");
        assert_eq!(RfcError::SlowDown.as_str(), "slow_down");
    }

    #[test]
    fn every_code_answers_with_its_status() {
        let status = |code| OAuthError::new(code, "x").into_response().status();
        for code in [
            RfcError::InvalidRequest,
            RfcError::InvalidGrant,
            RfcError::UnauthorizedClient,
            RfcError::UnsupportedGrantType,
            RfcError::InvalidScope,
            RfcError::InvalidTarget,
            RfcError::InvalidDpopProof,
            RfcError::UseDpopNonce,
            RfcError::UnsupportedTokenType,
        ] {
            assert_eq!(status(code), StatusCode::BAD_REQUEST, "{code}");
        }
        let r = OAuthError::invalid_client("x").into_response();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        assert!(r.headers().get(header::WWW_AUTHENTICATE).is_some());
        assert_eq!(
            status(RfcError::TemporarilyUnavailable),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(status(RfcError::SlowDown), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(
            status(RfcError::ServerError),
            StatusCode::INTERNAL_SERVER_ERROR
        );
    }
}
