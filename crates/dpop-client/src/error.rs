//! The client's errors.

/// Why a request or a token could not be obtained.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The key could not be loaded (the message says which file or variable and how to
    /// fix it).
    #[error("{0}")]
    Key(String),
    /// A proof could not be made (bad URL or method, signer failure).
    #[error("cannot create a DPoP proof: {0}")]
    Proof(String),
    /// The server asked for a retry (new nonce, clock correction) but the request body is
    /// a stream that cannot be sent twice.
    #[error(
        "the server asked to retry the request ({0}) but its body is a stream that cannot be sent again; \
         use a body built from bytes"
    )]
    BodyNotReplayable(&'static str),
    /// The HTTP exchange failed.
    #[error("HTTP: {0}")]
    Http(#[from] reqwest::Error),
    /// The issuer's metadata is missing or unusable.
    #[error("issuer metadata: {0}")]
    Metadata(String),
    /// The issuer's metadata could not be found (its URLs unreachable, answering an
    /// error, or with documents that do not pass); see
    /// [`DiscoveryError::unreachable`](dpop_discovery::DiscoveryError::unreachable).
    #[error("issuer metadata: {0}")]
    Discovery(dpop_discovery::DiscoveryError),
    /// The token endpoint refused the request.
    #[error("the token endpoint refused the request: {error}{}", description.as_deref().map(|d| format!(" ({d})")).unwrap_or_default())]
    TokenEndpoint {
        /// HTTP status.
        status: u16,
        /// The RFC 6749 `error` code.
        error: String,
        /// `error_description`, if any.
        description: Option<String>,
    },
    /// The token response is not what RFC 6749 §5.1 describes.
    #[error("the token endpoint's response is unusable: {0}")]
    TokenResponse(String),
    /// A token request failed less than a second ago (the message is its error); it is
    /// not repeated for every caller that was waiting on it.
    #[error("no access token: the token request just failed: {0}")]
    TokenUnavailable(String),
    /// A [`TokenStore`](crate::TokenStore) could not be read or written (the message
    /// says which and why, never a token).
    #[error("token store: {0}")]
    TokenStore(String),
    /// A subject token could not be read.
    #[error("subject token: {0}")]
    SubjectToken(String),
}
