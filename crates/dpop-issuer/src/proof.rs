//! The DPoP proof of a token request (RFC 9449 §4.3, §5, §8): verified against
//! `POST {issuer}/token` with the issuer's nonces, recorded in the database's replay
//! table, and its failures mapped to the token endpoint's errors.

use axum::http::{HeaderMap, HeaderValue};
use dpop_core::{Error as DpopError, NonceValidator as _, RfcError, Role, UnixTime, VerifiedProof};

use crate::error::{ErrorCode, OAuthError};
use crate::state::IssuerState;

/// Verifies the request's DPoP proof at the token endpoint and records it. `Ok(None)`:
/// the request has no proof.
pub(crate) async fn token_proof(
    state: &IssuerState,
    headers: &HeaderMap,
) -> Result<Option<VerifiedProof>, OAuthError> {
    let values: Vec<&[u8]> = headers
        .get_all("dpop")
        .iter()
        .map(HeaderValue::as_bytes)
        .collect();
    if values.is_empty() {
        return Ok(None);
    }
    let now = state.now()?;
    let request = dpop_core::ProofRequest::new("POST", &state.token_htu);
    let proof = match state.verifier.verify(values, &request, now) {
        Ok(p) => p,
        Err(e) => return Err(proof_error(state, &e, now)),
    };
    let proof = proof
        .record_async(&state.store, now)
        .await
        .map_err(|e| proof_error(state, &e, now))?;
    Ok(Some(proof))
}

/// The answer to a token request without a proof from a client that must send one.
pub(crate) fn proof_required() -> OAuthError {
    OAuthError::new(
        ErrorCode::InvalidDpopProof,
        "this client must send a DPoP proof (RFC 9449) with every token request",
    )
}

/// Maps a proof failure to the token endpoint's error (RFC 9449 §5, §8).
pub(crate) fn proof_error(state: &IssuerState, e: &DpopError, now: UnixTime) -> OAuthError {
    if matches!(e, DpopError::ReplayStore(_)) {
        tracing::error!(target: "dpop::issuer", error = %e, "replay store failed");
        return OAuthError::new(
            ErrorCode::TemporarilyUnavailable,
            "the authorization server's storage is unavailable; retry later",
        );
    }
    let response = e.response(Role::AuthorizationServer);
    tracing::info!(target: "dpop::rejection", reason = e.reason().as_str(), "token request proof refused");
    if response.error == Some(RfcError::UseDpopNonce) {
        let mut err = OAuthError::new(ErrorCode::UseDpopNonce, e.description());
        err.nonce = state.nonces.as_ref().and_then(|n| n.issue(now).ok());
        return err;
    }
    OAuthError::new(ErrorCode::InvalidDpopProof, e.description())
}
