//! What a verification gives: [`UnrecordedProof`], then [`VerifiedProof`] once the
//! replay record is made; [`Observer`] for diagnostics along the way.

use std::sync::Arc;

use super::check::Check;
use super::header_cache::Header;
use crate::alg::Algorithm;
use crate::error::Error;
use crate::htu::Htu;
use crate::jwk::{Jkt, PublicJwk};
use crate::replay::{AsyncReplayStore, Insert, ReplayKey, ReplayStore};
use crate::time::UnixTime;

/// Receives the progress of a verification (for diagnostics). The hot path uses a no-op.
pub trait Observer {
    /// `check` passed.
    fn passed(&mut self, check: Check);
    /// `check` was not run because the request gave nothing to compare with.
    fn skipped(&mut self, check: Check);
}

pub(super) struct NoObserver;

impl Observer for NoObserver {
    #[inline]
    fn passed(&mut self, _: Check) {}
    #[inline]
    fn skipped(&mut self, _: Check) {}
}

/// A proof that passed every check except replay. Record it with
/// [`UnrecordedProof::record`] (or [`UnrecordedProof::record_async`]) to obtain the
/// [`VerifiedProof`] the rest of a server works with.
#[must_use = "a proof is not verified until its replay record succeeds"]
#[derive(Debug)]
pub struct UnrecordedProof {
    pub(super) proof: VerifiedProof,
    /// The `now` the checks ran at: the replay record is made on the same time.
    pub(super) verified_at: UnixTime,
}

impl UnrecordedProof {
    /// The replay key (SHA-256 of `jkt` and `jti`).
    #[must_use]
    pub fn replay_key(&self) -> &ReplayKey {
        &self.proof.replay_key
    }

    /// How long the replay record must be kept: the end of the proof's acceptance window.
    #[must_use]
    pub fn replay_expires_at(&self) -> UnixTime {
        self.proof.replay_expires_at
    }

    /// The proof's `iat` (for clock-skew metrics before the record is made).
    #[must_use]
    pub fn iat(&self) -> UnixTime {
        self.proof.iat
    }

    /// The proof key's thumbprint.
    #[must_use]
    pub fn jkt(&self) -> &Jkt {
        self.proof.jwk.jwk.thumbprint()
    }

    /// The client should get a fresh nonce on this response.
    #[must_use]
    pub fn should_renew_nonce(&self) -> bool {
        self.proof.nonce_renew
    }

    /// The time the proof was verified at (the `now` given to [`crate::Verifier::verify`],
    /// or the clock's reading in [`crate::Verifier::verify_with_clock`]).
    #[must_use]
    pub fn verified_at(&self) -> UnixTime {
        self.verified_at
    }

    /// Records the proof in `store`; a proof seen before is refused. The store is given
    /// the time the proof was verified at, so the record and the checks agree on what
    /// time it is.
    ///
    /// # Errors
    /// [`Error::Replay`] for a repeat; [`Error::ReplayStore`] when the store cannot
    /// record it (the request must then be refused: fail closed).
    pub fn record<S: ReplayStore + ?Sized>(self, store: &S) -> Result<VerifiedProof, Error> {
        let proof = &self.proof;
        match store.insert_if_absent(
            &proof.replay_key,
            proof.replay_expires_at,
            self.verified_at,
        )? {
            Insert::Inserted => Ok(self.proof),
            Insert::AlreadyPresent => Err(Error::Replay),
        }
    }

    /// [`UnrecordedProof::record`] for asynchronous stores (e.g. Redis).
    ///
    /// # Errors
    /// As [`UnrecordedProof::record`].
    pub async fn record_async<S: AsyncReplayStore + ?Sized>(
        self,
        store: &S,
    ) -> Result<VerifiedProof, Error> {
        let proof = &self.proof;
        match store
            .insert_if_absent(&proof.replay_key, proof.replay_expires_at, self.verified_at)
            .await?
        {
            Insert::Inserted => Ok(self.proof),
            Insert::AlreadyPresent => Err(Error::Replay),
        }
    }

    pub(crate) fn into_unrecorded_inner(self) -> VerifiedProof {
        self.proof
    }
}

/// A proof that passed every check of RFC 9449 §4.3, including replay. Only the
/// verifier can make one, so code that takes it cannot skip a check.
#[derive(Debug)]
pub struct VerifiedProof {
    pub(super) alg: Algorithm,
    pub(super) jwk: Arc<Header>,
    pub(super) jti: String,
    pub(super) iat: UnixTime,
    pub(super) htm: String,
    pub(super) htu: Htu,
    pub(super) nonce_renew: bool,
    pub(super) replay_key: ReplayKey,
    pub(super) replay_expires_at: UnixTime,
}

impl VerifiedProof {
    /// The proof key's thumbprint: bind issued tokens to it (`cnf.jkt`).
    #[must_use]
    pub fn jkt(&self) -> &Jkt {
        self.jwk.jwk.thumbprint()
    }

    /// The proof's public key.
    #[must_use]
    pub fn jwk(&self) -> &PublicJwk {
        &self.jwk.jwk
    }

    /// The signature algorithm.
    #[must_use]
    pub fn algorithm(&self) -> Algorithm {
        self.alg
    }

    /// The proof's `jti`.
    #[must_use]
    pub fn jti(&self) -> &str {
        &self.jti
    }

    /// The proof's `iat`.
    #[must_use]
    pub fn iat(&self) -> UnixTime {
        self.iat
    }

    /// The proof's `htm`.
    #[must_use]
    pub fn htm(&self) -> &str {
        &self.htm
    }

    /// The proof's `htu`, normalised.
    #[must_use]
    pub fn htu(&self) -> &Htu {
        &self.htu
    }

    /// The client should get a fresh nonce on this response (RFC 9449 §8.2).
    #[must_use]
    pub fn should_renew_nonce(&self) -> bool {
        self.nonce_renew
    }

    /// The replay key that was recorded.
    #[must_use]
    pub fn replay_key(&self) -> &ReplayKey {
        &self.replay_key
    }

    /// The end of the proof's acceptance window.
    #[must_use]
    pub fn replay_expires_at(&self) -> UnixTime {
        self.replay_expires_at
    }
}
