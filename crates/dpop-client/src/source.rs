//! Where the middleware gets its access token: the [`TokenSource`] trait and the fixed
//! [`StaticToken`]. Below both the middleware and the OAuth token sources
//! ([`crate::tokens`]), so neither imports the other's types.

use std::fmt;
use std::sync::Arc;

use crate::error::ClientError;

/// Where the middleware gets its access token.
#[async_trait::async_trait]
pub trait TokenSource: Send + Sync + fmt::Debug {
    /// A token valid for a while yet.
    ///
    /// # Errors
    /// [`ClientError`] when no token can be had.
    async fn token(&self) -> Result<Arc<str>, ClientError>;

    /// The server refused `token`: do not hand it out again.
    fn invalidate(&self, token: &str) {
        let _ = token;
    }

    /// Whether [`TokenSource::invalidate`] can lead to a different token (a request
    /// refused with `invalid_token` is retried only then).
    fn renews(&self) -> bool {
        true
    }
}

/// One token, given by the caller (from a file, a variable, another tool).
#[derive(Clone)]
pub struct StaticToken(Arc<str>);

impl fmt::Debug for StaticToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("StaticToken(<redacted>)")
    }
}

impl StaticToken {
    /// The token.
    #[must_use]
    pub fn new(token: &str) -> Self {
        Self(token.trim().into())
    }
}

#[async_trait::async_trait]
impl TokenSource for StaticToken {
    async fn token(&self) -> Result<Arc<str>, ClientError> {
        Ok(Arc::clone(&self.0))
    }

    fn renews(&self) -> bool {
        false
    }
}
