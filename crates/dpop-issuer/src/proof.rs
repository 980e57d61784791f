//! The DPoP proof of a token request (RFC 9449 §4.3, §5, §8): verified against
//! `POST {issuer}/token` with the issuer's nonces, recorded in the database's replay
//! table, and its failures mapped to the token endpoint's errors; later, the check that
//! it was signed by the key a refresh token or subject token is bound to.

use axum::http::{HeaderMap, HeaderValue};
use dpop_core::{
    Error as DpopError, Jkt, NonceValidator as _, ProofRequest, Role, UnixTime, VerifiedProof,
};

use crate::error::{OAuthError, RfcError};
use crate::state::IssuerState;

/// A token request's proof, verified against `POST {issuer}/token` and recorded.
#[derive(Debug)]
pub(crate) struct TokenProof {
    proof: VerifiedProof,
    /// The `DPoP` header as sent, for [`check_bound_key`].
    header: Vec<u8>,
    /// The time it was verified at, so that checking it again gives the same verdict
    /// on everything but the key.
    verified_at: UnixTime,
}

impl TokenProof {
    /// The proof key's thumbprint: what an issued token is bound to (`cnf.jkt`).
    pub(crate) fn jkt(&self) -> &Jkt {
        self.proof.jkt()
    }

    /// The client should get a fresh nonce with the response.
    pub(crate) fn should_renew_nonce(&self) -> bool {
        self.proof.should_renew_nonce()
    }
}

/// Verifies the request's DPoP proof at the token endpoint and records it. `Ok(None)`:
/// the request has no proof.
pub(crate) async fn token_proof(
    state: &IssuerState,
    headers: &HeaderMap,
) -> Result<Option<TokenProof>, OAuthError> {
    let values: Vec<&[u8]> = headers
        .get_all("dpop")
        .iter()
        .map(HeaderValue::as_bytes)
        .collect();
    // The verifier accepts exactly one header: once it has, the first is the proof.
    let Some(&header) = values.first() else {
        return Ok(None);
    };
    let now = state.now()?;
    let request = ProofRequest::new("POST", &state.token_htu);
    let proof = match state.verifier.verify(values, &request, now) {
        Ok(p) => p,
        Err(e) => return Err(proof_error(state, &e, now)),
    };
    let proof = proof
        .record_async(&state.store)
        .await
        .map_err(|e| proof_error(state, &e, now))?;
    dpop_server::telemetry::record_outcome("accepted", None);
    dpop_server::telemetry::record_identity(Some(proof.jkt().as_str()), None, None);
    Ok(Some(TokenProof {
        proof,
        header: header.to_vec(),
        verified_at: now,
    }))
}

/// Checks that a token request's proof is signed by `bound`, the key an earlier step
/// bound what the request presents to (`what`: a public client's refresh token, a
/// DPoP-bound subject token; RFC 9449 §5). The proof must also be there: without one
/// the answer is `invalid_dpop_proof`, with another key's `invalid_grant`.
///
/// The proof is checked again by the verifier, with `bound` as the expected key
/// ([`ProofRequest::with_expected_jkt`]) and at the time it was first verified: the
/// key comparison is the verifier's, and every other check gives the verdict it gave
/// before. Its replay record was made then; this check records nothing.
pub(crate) fn check_bound_key(
    state: &IssuerState,
    proof: Option<&TokenProof>,
    bound: &Jkt,
    what: &str,
) -> Result<(), OAuthError> {
    let Some(proof) = proof else {
        return Err(OAuthError::new(
            RfcError::InvalidDpopProof,
            format!("{what} is DPoP-bound: send a proof from its key"),
        ));
    };
    let request = ProofRequest::new("POST", &state.token_htu).with_expected_jkt(bound);
    match state
        .verifier
        .verify([proof.header.as_slice()], &request, proof.verified_at)
    {
        Ok(_recorded_before) => Ok(()),
        Err(DpopError::KeyMismatch) => Err(OAuthError::invalid_grant(format!(
            "{what} is bound to another DPoP key than this request's proof"
        ))),
        Err(e) => Err(proof_error(state, &e, proof.verified_at)),
    }
}

/// The answer to a token request without a proof from a client that must send one.
pub(crate) fn proof_required() -> OAuthError {
    dpop_server::telemetry::record_outcome(
        "rejected",
        Some(dpop_core::Reason::ProofMissing.as_str()),
    );
    OAuthError::new(
        RfcError::InvalidDpopProof,
        "this client must send a DPoP proof (RFC 9449) with every token request",
    )
}

/// Maps a proof failure to the token endpoint's error (RFC 9449 §5, §8).
pub(crate) fn proof_error(state: &IssuerState, e: &DpopError, now: UnixTime) -> OAuthError {
    if matches!(e, DpopError::ReplayStore(_)) {
        tracing::error!(target: "dpop::issuer", error = %e, "replay store failed");
        return OAuthError::new(
            RfcError::TemporarilyUnavailable,
            "the authorization server's storage is unavailable; retry later",
        );
    }
    dpop_server::telemetry::record_outcome("rejected", Some(e.reason().as_str()));
    let response = e.response(Role::AuthorizationServer);
    tracing::info!(target: "dpop::rejection", reason = e.reason().as_str(), "token request proof refused");
    if response.error == Some(RfcError::UseDpopNonce) {
        let mut err = OAuthError::new(RfcError::UseDpopNonce, e.description());
        err.nonce = state.nonces.as_ref().and_then(|n| n.issue(now).ok());
        return err;
    }
    OAuthError::new(RfcError::InvalidDpopProof, e.description())
}
