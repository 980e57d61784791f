//! [`StaticKeys`]: JWT access tokens checked against keys the caller supplies, for
//! services that load their issuer's keys themselves (from a file, a secret store, a
//! build-time constant). Nothing is fetched.

use std::fmt;

use dpop_core::jwt::{self, AccessToken, JwkSet, JwtValidation};
use dpop_core::{Error, UnixTime};

use crate::tokens::{BoxFuture, TokenVerifier};

/// Verifies JWT access tokens with a fixed [`JwkSet`]. A token signed by a key that is
/// not in the set is refused (`invalid_token`); to follow key rotation, build a new layer
/// or use a source that fetches the issuer's keys.
pub struct StaticKeys {
    keys: JwkSet,
    validation: JwtValidation,
}

impl StaticKeys {
    /// Tokens signed by one of `keys` and meeting `validation` (issuer, audience,
    /// algorithms, leeway, `typ`).
    #[must_use]
    pub fn new(keys: JwkSet, validation: JwtValidation) -> Self {
        Self { keys, validation }
    }
}

impl fmt::Debug for StaticKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StaticKeys")
            .field("keys", &self.keys.len())
            .field("issuer", &self.validation.issuer)
            .field("audience", &self.validation.audience)
            .finish_non_exhaustive()
    }
}

impl TokenVerifier for StaticKeys {
    fn verify<'a>(
        &'a self,
        token: &'a str,
        now: UnixTime,
    ) -> BoxFuture<'a, Result<AccessToken, Error>> {
        let result = jwt::verify_access_token(token, &self.keys, &self.validation, now)
            .map_err(Error::Token);
        Box::pin(std::future::ready(result))
    }

    fn is_ready(&self) -> bool {
        !self.keys.is_empty()
    }
}
