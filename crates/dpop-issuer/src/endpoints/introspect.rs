//! `POST /introspect`: token introspection (RFC 7662).
//!
//! Introspection extension: a resource server may add the request's DPoP proof (`dpop`),
//! method (`htm`) and URL (`htu`). The issuer then also verifies the proof against the
//! token (`ath`, `cnf.jkt`, method, URL, freshness) and records it against replay, so a
//! thin resource server delegates every DPoP check in one call. When that check fails,
//! the answer is `active: false` with `dpop_error` and `dpop_error_description`; a
//! caller that only reads `active` fails closed.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State as AxumState;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use dpop_core::jwt::VerifiedJwt;
use dpop_core::{Htu, Role, UnixTime};
use serde_json::{Map, Value, json};

use crate::client_auth;
use crate::config::Client;
use crate::error::{OAuthError, RfcError};
use crate::form::Form;
use crate::grants;
use crate::response::json_no_store;
use crate::state::IssuerState;
use crate::store::secs;
use crate::tokens::{self, Inactive};

fn inactive() -> Value {
    json!({ "active": false })
}

/// `POST /introspect`.
pub(super) async fn introspect(
    AxumState(state): AxumState<Arc<IssuerState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    match introspect_inner(&state, &headers, &body).await {
        Ok(v) => {
            let active = v.get("active").and_then(Value::as_bool) == Some(true);
            state
                .metrics
                .introspection(if active { "active" } else { "inactive" });
            json_no_store(&v)
        }
        Err(e) => {
            state.metrics.introspection(e.code.as_str());
            e.into_response()
        }
    }
}

async fn introspect_inner(
    state: &IssuerState,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Value, OAuthError> {
    let form = Form::parse(headers, body)?;
    let client = client_auth::authenticate_caller(state, headers, &form).await?;
    let token = form.require("token")?;
    let now = state.now()?;
    let dpop = match (form.get("dpop"), form.get("htm"), form.get("htu")) {
        (None, None, None) => None,
        (Some(p), Some(m), Some(u)) => Some((p, m, u)),
        _ => {
            return Err(OAuthError::invalid_request(
                "dpop, htm and htu go together: send all three or none",
            ));
        }
    };
    if !client.introspection {
        // Clients may still introspect their own refresh tokens (below); anything else
        // needs the introspection permission.
        if dpop.is_none()
            && let Some(v) = refresh_claims(state, client, token, now).await?
        {
            return Ok(v);
        }
        return Err(OAuthError::new(
            RfcError::UnauthorizedClient,
            "this client may not introspect tokens",
        ));
    }
    if token.starts_with(tokens::REFRESH_PREFIX) {
        if dpop.is_some() {
            return Ok(inactive());
        }
        return Ok(refresh_claims(state, client, token, now)
            .await?
            .unwrap_or_else(inactive));
    }
    let jwt = match tokens::verify_own(state, token, now).await {
        Ok(j) => j,
        Err(Inactive::Store(e)) => return Err(e.into()),
        Err(Inactive::Revoked | Inactive::Invalid(_)) => return Ok(inactive()),
    };
    if let Some((proof, htm, htu)) = dpop
        && let Err((code, description)) =
            check_rs_proof(state, &jwt, token, proof, htm, htu, now).await?
    {
        return Ok(json!({
            "active": false,
            "dpop_error": code,
            "dpop_error_description": description,
        }));
    }
    Ok(access_claims(&jwt))
}

/// The RFC 7662 response for an active access token: its claims plus `active` and
/// `token_type`, without the issuer's own bookkeeping (the lineage, already checked).
fn access_claims(jwt: &VerifiedJwt) -> Value {
    let mut out = Map::new();
    out.insert("active".to_owned(), true.into());
    let bound = jwt.claims.get("cnf").is_some();
    out.insert(
        "token_type".to_owned(),
        if bound { "DPoP" } else { "Bearer" }.into(),
    );
    for (k, v) in &jwt.claims {
        if k != tokens::LINEAGE_CLAIM {
            out.insert(k.clone(), v.clone());
        }
    }
    Value::Object(out)
}

/// Verifies a resource server's proof for `token`; `Ok(Err(..))` is a refusal to report.
async fn check_rs_proof(
    state: &IssuerState,
    jwt: &VerifiedJwt,
    token: &str,
    proof: &str,
    htm: &str,
    htu: &str,
    now: UnixTime,
) -> Result<Result<(), (&'static str, String)>, OAuthError> {
    let Ok(Some(jkt)) = jwt.jkt() else {
        return Ok(Err((
            "invalid_token",
            "the access token is not DPoP-bound".to_owned(),
        )));
    };
    let Ok(htu) = Htu::parse(htu) else {
        return Err(OAuthError::invalid_request(
            "htu is not an absolute http(s) URL",
        ));
    };
    let request = dpop_core::ProofRequest::new(htm, &htu).with_access_token(token, &jkt);
    let refused = |e: &dpop_core::Error| {
        let code = e
            .response(Role::ResourceServer)
            .error
            .unwrap_or(RfcError::InvalidDpopProof)
            .as_str();
        Err((code, e.description().to_owned()))
    };
    let unrecorded = match state.rs_verifier.verify([proof.as_bytes()], &request, now) {
        Ok(p) => p,
        Err(e) => return Ok(refused(&e)),
    };
    match unrecorded.record_async(&state.store).await {
        Ok(_) => Ok(Ok(())),
        Err(dpop_core::Error::ReplayStore(e)) => Err(OAuthError::new(
            RfcError::TemporarilyUnavailable,
            format!("the replay store is unavailable: {e}"),
        )),
        Err(e) => Ok(refused(&e)),
    }
}

/// Introspection of a refresh token, answered only to the client it was issued to. A
/// grant derived by exchange is inactive once anything it derives from is revoked, or
/// once the configuration no longer allows the delegation (as its refresh would be
/// refused).
async fn refresh_claims(
    state: &IssuerState,
    client: &Client,
    token: &str,
    now: UnixTime,
) -> Result<Option<Value>, OAuthError> {
    if !token.starts_with(tokens::REFRESH_PREFIX) {
        return Ok(None);
    }
    let Some(r) = state
        .store
        .find_refresh(&tokens::refresh_hash(token))
        .await?
    else {
        return Ok(Some(inactive()));
    };
    let live = r.client_id == client.id
        && r.used_at.is_none()
        && r.family_revoked_at.is_none()
        && r.expires_at > secs(now)
        && r.family_expires_at > secs(now);
    if !live {
        return Ok(Some(inactive()));
    }
    let lineage = state.store.family_lineage(&r.family_id).await?;
    if !grants::delegation_allowed(client, &lineage)
        || grants::grant_revoked(state, &r, &lineage).await?
    {
        return Ok(Some(inactive()));
    }
    let mut v = json!({
        "active": true,
        "token_type": "refresh_token",
        "client_id": r.client_id,
        "sub": r.subject,
        "scope": r.scope,
        "iat": r.created_at,
        "exp": r.expires_at,
        "iss": state.config.issuer,
    });
    if let (Some(o), Some(jkt)) = (v.as_object_mut(), r.jkt) {
        o.insert("cnf".to_owned(), json!({ "jkt": jkt }));
    }
    Ok(Some(v))
}
