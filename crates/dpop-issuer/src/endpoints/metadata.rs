//! RFC 8414 authorization server metadata (also served as `openid-configuration`) and
//! the JWK set of the signing keys.

use std::sync::Arc;

use axum::extract::State as AxumState;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};

use crate::client_auth::ASSERTION_ALGS;
use crate::config::{AuthMethod, GRANTS};
use crate::keys;
use crate::state::IssuerState;

/// `GET /.well-known/oauth-authorization-server{path}` and
/// `GET {issuer}/.well-known/openid-configuration`.
pub(super) async fn metadata(AxumState(state): AxumState<Arc<IssuerState>>) -> Response {
    let c = &state.config;
    let iss = &c.issuer;
    let secret_methods = [
        "client_secret_basic",
        "client_secret_post",
        "private_key_jwt",
    ];
    let scopes: std::collections::BTreeSet<&str> = c
        .clients
        .values()
        .flat_map(|cl| cl.scopes.iter().map(String::as_str))
        .chain(c.trust.iter().flat_map(|t| {
            t.rules
                .iter()
                .flat_map(|r| r.scopes.iter().map(String::as_str))
        }))
        .collect();
    let algs: Vec<&str> = c.dpop.algorithms.iter().map(|a| a.name()).collect();
    let body = serde_json::json!({
        "issuer": iss,
        "token_endpoint": format!("{iss}/token"),
        "jwks_uri": format!("{iss}/jwks"),
        "introspection_endpoint": format!("{iss}/introspect"),
        "revocation_endpoint": format!("{iss}/revoke"),
        "grant_types_supported": GRANTS,
        "response_types_supported": [],
        "scopes_supported": scopes,
        "token_endpoint_auth_methods_supported": [
            AuthMethod::ClientSecretBasic.as_str(),
            AuthMethod::ClientSecretPost.as_str(),
            AuthMethod::PrivateKeyJwt.as_str(),
            AuthMethod::None.as_str(),
        ],
        "token_endpoint_auth_signing_alg_values_supported": ASSERTION_ALGS,
        "introspection_endpoint_auth_methods_supported": secret_methods,
        "introspection_endpoint_auth_signing_alg_values_supported": ASSERTION_ALGS,
        "revocation_endpoint_auth_methods_supported": [
            "client_secret_basic", "client_secret_post", "private_key_jwt", "none"
        ],
        "revocation_endpoint_auth_signing_alg_values_supported": ASSERTION_ALGS,
        "dpop_signing_alg_values_supported": algs,
        "token_endpoint_dpop_nonce_required": c.dpop.nonce,
    });
    let mut r = axum::Json(body).into_response();
    r.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=300"),
    );
    r
}

/// `GET {issuer}/jwks`.
pub(super) async fn jwks(AxumState(state): AxumState<Arc<IssuerState>>) -> Response {
    // Read from the database each time, so a key another instance just published is
    // served at once; the loaded set is the fallback when the database is down.
    let fresh = match state.clock.now() {
        Some(now) => state
            .store
            .published_keys(now)
            .await
            .ok()
            .map(|records| keys::jwks_json(&records)),
        None => None,
    };
    let body = fresh.unwrap_or_else(|| state.keys.current().jwks_json.clone());
    let mut r = (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/jwk-set+json"),
        )],
        body,
    )
        .into_response();
    // Short: resource servers must see a new key soon after a rotation.
    r.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=60"),
    );
    r
}
