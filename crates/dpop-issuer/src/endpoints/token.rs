//! `POST /token`: the form, the DPoP proof, client authentication, the grant, and the
//! answer (with a fresh nonce when the proof's is due for renewal).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State as AxumState;
use axum::http::{HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use dpop_core::NonceValidator as _;

use crate::access_log::TokenFacts;
use crate::config::{DpopRequirement, GRANTS};
use crate::error::{OAuthError, RfcError};
use crate::form::Form;
use crate::proof::{TokenProof, proof_required, token_proof};
use crate::response::{TokenResponse, no_store};
use crate::state::IssuerState;
use crate::{client_auth, grants};

/// `POST /token`.
pub(super) async fn token(
    AxumState(state): AxumState<Arc<IssuerState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let started = std::time::Instant::now();
    let mut client_id = None;
    let outcome = token_inner(&state, &headers, &body, &mut client_id).await;
    let grant = form_urlencoded::parse(&body)
        .find(|(k, _)| k == "grant_type")
        .map(|(_, v)| v.into_owned());
    let result = match &outcome {
        Ok(_) => "issued",
        Err(e) => e.code.as_str(),
    };
    let grant = known_grant(grant.as_deref());
    state.metrics.token(grant, result, started.elapsed());
    let mut response = match outcome {
        Ok((response, nonce)) => {
            let mut r = no_store(axum::Json(response).into_response());
            if let Some(n) = nonce.and_then(|n| HeaderValue::from_str(&n).ok()) {
                r.headers_mut().insert("dpop-nonce", n);
            }
            r
        }
        Err(e) => {
            tracing::info!(target: "dpop::issuer", error = e.code.as_str(), description = %e.description, "token request refused");
            e.into_response()
        }
    };
    response
        .extensions_mut()
        .insert(TokenFacts { grant, client_id });
    response
}

/// `grant_type` as a label: one of the supported grants, or `other`.
fn known_grant(grant: Option<&str>) -> &'static str {
    grant
        .and_then(|g| GRANTS.iter().find(|k| **k == g).copied())
        .unwrap_or("other")
}

async fn token_inner(
    state: &IssuerState,
    headers: &HeaderMap,
    body: &[u8],
    client_id: &mut Option<String>,
) -> Result<(TokenResponse, Option<String>), OAuthError> {
    let form = Form::parse(headers, body)?;
    let grant = form.require("grant_type")?.to_owned();
    let claimed = client_auth::claimed_client(state, headers, &form)?;
    // With a proof, the proof comes first, so a nonce round trip costs no password
    // hashing. Without one, whether the client may go without is its own business: it
    // is told only once it has authenticated, so that an unknown id, a client that may
    // skip DPoP and one that may not answer a wrong credential alike, in the same time
    // (an unknown id's secret goes through the stand-in Argon2 check). A request that
    // names a client without a credential (`client_id` only) can only be a public
    // client's, and public clients always need a proof: refused as such whatever the id.
    let proof = token_proof(state, headers).await?;
    if proof.is_none() && client_auth::names_client_only(headers, &form)? {
        return Err(proof_required());
    }
    let client = client_auth::authenticate(state, headers, &form, claimed).await?;
    *client_id = Some(client.id.clone());
    dpop_server::telemetry::record_identity(None, None, Some(&client.id));
    if proof.is_none() && client.dpop == DpopRequirement::Required {
        return Err(proof_required());
    }
    // Keys read longer ago than the maintenance interval (maintenance behind) are read
    // again before one signs: a key retired meanwhile must not go on signing.
    state
        .keys
        .reload_if_older(
            &state.store,
            state.now()?,
            crate::keys::MAINTENANCE_INTERVAL,
        )
        .await
        .map_err(|e| {
            tracing::error!(target: "dpop::issuer", error = %e, "cannot read the signing keys");
            OAuthError::new(
                RfcError::TemporarilyUnavailable,
                "the authorization server's keys are unavailable; retry later",
            )
        })?;
    if !GRANTS.contains(&grant.as_str()) {
        return Err(OAuthError::new(
            RfcError::UnsupportedGrantType,
            format!("the grant type {grant:?} is not supported"),
        ));
    }
    if !client.grants.contains(&grant) {
        return Err(OAuthError::new(
            RfcError::UnauthorizedClient,
            format!("this client may not use the {grant} grant"),
        ));
    }
    let response = grants::run(state, client, &grant, &form, proof.as_ref()).await?;
    tracing::info!(
        target: "dpop::issuer",
        client_id = %client.id,
        grant = %grant,
        token_type = response.token_type,
        jkt = proof.as_ref().map_or("", |p| p.jkt().as_str()),
        "token issued"
    );
    Ok((response, next_nonce(state, proof.as_ref())))
}

/// A fresh nonce for a successful response when the proof's nonce is due for renewal.
fn next_nonce(state: &IssuerState, proof: Option<&TokenProof>) -> Option<String> {
    let proof = proof?;
    if !proof.should_renew_nonce() {
        return None;
    }
    let now = state.clock.now()?;
    state.nonces.as_ref()?.issue(now).ok()
}
