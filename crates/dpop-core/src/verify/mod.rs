//! Verifying DPoP proofs: every check of RFC 9449 §4.3.
//!
//! Order matters for cost and for side effects, not for correctness (§4.3 lets checks
//! run in any order): bounds and syntax first, then the header (`typ`, `alg`, `crit`,
//! `jwk`), then the claims against the request, time, nonce, `ath` and key binding, and
//! only then the signature, the one expensive step. The replay record comes last, in a
//! separate step ([`UnrecordedProof::record`]), so a proof that fails any check never
//! reaches the replay store.

mod check;
mod config;
mod header_cache;
mod outcome;
mod request;

use std::sync::Arc;

use crate::error::Error;
use crate::nonce::NonceValidator;
use crate::time::{Clock, UnixTime};

pub use self::check::Check;
pub use self::config::{
    Freshness, VerifierConfig, VerifierConfigBuilder, WantsAlgorithms, WantsNonces,
};
use self::header_cache::HeaderCache;
use self::outcome::NoObserver;
pub use self::outcome::{Observer, UnrecordedProof, VerifiedProof};
pub use self::request::ProofRequest;

/// Checks DPoP proofs against a [`VerifierConfig`]. Cheap to share across threads.
#[derive(Clone, Debug)]
pub struct Verifier {
    config: Arc<VerifierConfig>,
    headers: Arc<HeaderCache>,
}

impl Verifier {
    /// A verifier for `config`.
    ///
    /// # Errors
    /// [`Error::ApiMisuse`] for inconsistent settings (nonce freshness without nonces,
    /// zero limits).
    pub fn new(config: VerifierConfig) -> Result<Self, Error> {
        if config.freshness == Freshness::Nonce && config.nonces.is_none() {
            return Err(Error::ApiMisuse("Freshness::Nonce needs a nonce scheme"));
        }
        if config.max_proof_bytes == 0 || config.max_jti_bytes == 0 {
            return Err(Error::ApiMisuse(
                "max_proof_bytes and max_jti_bytes must be positive",
            ));
        }
        if config.max_age.is_zero() {
            return Err(Error::ApiMisuse("max_age must be positive"));
        }
        let headers = Arc::new(HeaderCache::new(config.header_cache_capacity));
        Ok(Self {
            config: Arc::new(config),
            headers,
        })
    }

    /// The configuration.
    #[must_use]
    pub fn config(&self) -> &VerifierConfig {
        &self.config
    }

    /// The nonce scheme, when the verifier requires nonces: adapters use it to issue
    /// `DPoP-Nonce` values.
    #[must_use]
    pub fn nonces(&self) -> Option<&Arc<dyn NonceValidator>> {
        self.config.nonces.as_ref()
    }
    /// Verifies the `DPoP` header values of one request (pass every value: more than
    /// one is refused) against `request` at time `now`.
    ///
    /// # Errors
    /// The first failed check, as an [`Error`] with a stable [`crate::Reason`].
    pub fn verify<'h, I>(
        &self,
        dpop_headers: I,
        request: &ProofRequest<'_>,
        now: UnixTime,
    ) -> Result<UnrecordedProof, Error>
    where
        I: IntoIterator<Item = &'h [u8]>,
    {
        self.verify_observed(dpop_headers, request, now, &mut NoObserver)
    }

    /// [`Verifier::verify`] with the time from `clock`.
    ///
    /// # Errors
    /// [`Error::NoClock`] when the clock has no time; otherwise as [`Verifier::verify`].
    pub fn verify_with_clock<'h, I>(
        &self,
        dpop_headers: I,
        request: &ProofRequest<'_>,
        clock: &dyn Clock,
    ) -> Result<UnrecordedProof, Error>
    where
        I: IntoIterator<Item = &'h [u8]>,
    {
        let now = clock.now().ok_or(Error::NoClock)?;
        self.verify(dpop_headers, request, now)
    }
}
