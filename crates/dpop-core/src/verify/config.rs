//! [`VerifierConfig`] and its typestate builder: algorithms, then nonce policy.

use core::fmt;
use core::time::Duration;
use std::sync::Arc;

use crate::alg::{Algorithm, DEFAULT_ALGORITHMS};
use crate::error::Error;
use crate::nonce::NonceValidator;

/// Where a proof's creation time comes from (RFC 9449 §11.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Freshness {
    /// `iat` must lie inside `[now - max_age, now + future_leeway]`.
    Iat,
    /// The server nonce's issue time bounds the proof's age; `iat` is only type-checked.
    /// For clients with unreliable clocks. Requires a nonce scheme that reports issue
    /// times (such as [`crate::StatelessNonces`]).
    Nonce,
}

/// Verifier settings. Security-critical choices (algorithms, nonces) go through
/// [`VerifierConfig::builder`]; the tunables are public fields.
#[derive(Clone)]
#[non_exhaustive]
pub struct VerifierConfig {
    pub(super) algorithms: Vec<Algorithm>,
    pub(super) nonces: Option<Arc<dyn NonceValidator>>,
    /// Largest `DPoP` header value accepted, checked before any parsing. Defaults to
    /// [`Algorithm::max_proof_bytes_for`] the allowed algorithms: 8192
    /// ([`crate::DEFAULT_MAX_PROOF_BYTES`]) unless an ML-DSA algorithm is allowed, then 12288
    /// (ML-DSA-44, ML-DSA-65) or 16384 (ML-DSA-87).
    pub max_proof_bytes: usize,
    /// Oldest accepted `iat`, relative to server time. Defaults to 60 s.
    pub max_age: Duration,
    /// Largest accepted lead of `iat` over server time (client clock skew). Defaults to 15 s.
    pub future_leeway: Duration,
    /// Longest accepted `jti`, in bytes (RFC 9449 §11.1 memory bound). Defaults to 256.
    pub max_jti_bytes: usize,
    /// Source of proof freshness. Defaults to [`Freshness::Iat`].
    pub freshness: Freshness,
    /// `crit` header parameters the caller processes itself. Defaults to none, so any
    /// `crit` is refused.
    pub understood_crit: Vec<String>,
    /// Distinct proof headers (one per client key, typically) whose verdict is kept, so
    /// a client's repeated header is not re-parsed; 0 disables. Defaults to 4096.
    pub header_cache_capacity: usize,
}

impl fmt::Debug for VerifierConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerifierConfig")
            .field("algorithms", &self.algorithms)
            .field("nonces", &self.nonces.is_some())
            .field("max_proof_bytes", &self.max_proof_bytes)
            .field("max_age", &self.max_age)
            .field("future_leeway", &self.future_leeway)
            .field("max_jti_bytes", &self.max_jti_bytes)
            .field("freshness", &self.freshness)
            .field("understood_crit", &self.understood_crit)
            .field("header_cache_capacity", &self.header_cache_capacity)
            .finish()
    }
}

/// Builder state: choose the allowed algorithms.
#[derive(Debug)]
#[non_exhaustive]
pub struct WantsAlgorithms;

/// Builder state: choose the nonce policy.
#[derive(Debug)]
pub struct WantsNonces {
    algorithms: Vec<Algorithm>,
}

/// Typestate builder for [`VerifierConfig`]: algorithms, then nonce policy.
#[doc(alias = "ConfigBuilder")]
#[derive(Debug)]
pub struct VerifierConfigBuilder<S> {
    state: S,
}

impl VerifierConfig {
    /// Starts building a configuration.
    #[must_use]
    pub fn builder() -> VerifierConfigBuilder<WantsAlgorithms> {
        VerifierConfigBuilder {
            state: WantsAlgorithms,
        }
    }

    /// The allowed algorithms, for `algs` in challenges and metadata.
    #[must_use]
    pub fn algorithms(&self) -> &[Algorithm] {
        &self.algorithms
    }
}

impl VerifierConfigBuilder<WantsAlgorithms> {
    /// ES256, ES384, EdDSA/Ed25519, PS256 and RS256.
    #[must_use]
    pub fn with_default_algorithms(self) -> VerifierConfigBuilder<WantsNonces> {
        VerifierConfigBuilder {
            state: WantsNonces {
                algorithms: DEFAULT_ALGORITHMS.to_vec(),
            },
        }
    }

    /// Exactly `algorithms` (duplicates removed, order kept).
    ///
    /// # Errors
    /// [`Error::ApiMisuse`] when the list is empty.
    pub fn with_algorithms(
        self,
        algorithms: &[Algorithm],
    ) -> Result<VerifierConfigBuilder<WantsNonces>, Error> {
        let mut list: Vec<Algorithm> = Vec::new();
        for alg in algorithms {
            if !list.contains(alg) {
                list.push(*alg);
            }
        }
        if list.is_empty() {
            return Err(Error::ApiMisuse("at least one algorithm must be allowed"));
        }
        Ok(VerifierConfigBuilder {
            state: WantsNonces { algorithms: list },
        })
    }
}

impl VerifierConfigBuilder<WantsNonces> {
    /// Every proof must carry a nonce accepted by `nonces` (RFC 9449 §8, §9).
    pub fn with_nonces(self, nonces: Arc<dyn NonceValidator>) -> VerifierConfig {
        self.finish(Some(nonces))
    }

    /// No server nonces; any `nonce` claim is ignored.
    #[must_use]
    pub fn without_nonces(self) -> VerifierConfig {
        self.finish(None)
    }

    fn finish(self, nonces: Option<Arc<dyn NonceValidator>>) -> VerifierConfig {
        VerifierConfig {
            max_proof_bytes: Algorithm::max_proof_bytes_for(&self.state.algorithms),
            algorithms: self.state.algorithms,
            nonces,
            max_age: Duration::from_secs(60),
            future_leeway: Duration::from_secs(15),
            max_jti_bytes: 256,
            freshness: Freshness::Iat,
            understood_crit: Vec::new(),
            header_cache_capacity: 4096,
        }
    }
}
