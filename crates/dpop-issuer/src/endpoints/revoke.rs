//! `POST /revoke`: token revocation (RFC 7009). A refresh token revokes its whole
//! family; an access token its `jti`. Only the client a token was issued to revokes it.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State as AxumState;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::client_auth;
use crate::error::{OAuthError, RfcError};
use crate::form::Form;
use crate::state::IssuerState;
use crate::store::secs;
use crate::tokens::{self, Inactive};

/// `POST /revoke`.
pub(super) async fn revoke(
    AxumState(state): AxumState<Arc<IssuerState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let outcome = revoke_inner(&state, &headers, &body).await;
    state.metrics.revocation(match &outcome {
        Ok(()) => "ok",
        Err(e) => e.code.as_str(),
    });
    match outcome {
        Ok(()) => {
            let mut r = StatusCode::OK.into_response();
            r.headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            r
        }
        Err(e) => e.into_response(),
    }
}

async fn revoke_inner(
    state: &IssuerState,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(), OAuthError> {
    let form = Form::parse(headers, body)?;
    let client = client_auth::authenticate_caller(state, headers, &form).await?;
    let token = form.require("token")?;
    let now = state.now()?;
    if let Some(hint) = form.get("token_type_hint")
        && hint != "access_token"
        && hint != "refresh_token"
    {
        return Err(OAuthError::new(
            RfcError::UnsupportedTokenType,
            format!("token_type_hint {hint:?} is not a token type this server revokes"),
        ));
    }
    if token.starts_with(tokens::REFRESH_PREFIX) {
        if let Some(r) = state
            .store
            .find_refresh(&tokens::refresh_hash(token))
            .await?
        {
            if r.client_id != client.id {
                return Err(OAuthError::new(
                    RfcError::UnauthorizedClient,
                    "the token was issued to another client",
                ));
            }
            state.store.revoke_family(&r.family_id, now).await?;
            tracing::info!(target: "dpop::issuer", client_id = %client.id, family = %r.family_id, "refresh token family revoked");
        }
        return Ok(());
    }
    // Access tokens: RFC 7009 §2.2, an invalid or unknown token is not an error.
    let jwt = match tokens::verify_own(state, token, now).await {
        Ok(j) => j,
        Err(Inactive::Store(e)) => return Err(e.into()),
        Err(Inactive::Revoked | Inactive::Invalid(_)) => return Ok(()),
    };
    if jwt.str_claim("client_id") != Some(client.id.as_str()) {
        return Err(OAuthError::new(
            RfcError::UnauthorizedClient,
            "the token was issued to another client",
        ));
    }
    let jti = jwt.str_claim("jti").unwrap_or("");
    state
        .store
        .revoke_access_token(jti, &client.id, secs(jwt.expires_at), now)
        .await?;
    tracing::info!(target: "dpop::issuer", client_id = %client.id, "access token revoked");
    Ok(())
}
