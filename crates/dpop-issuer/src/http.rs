//! The HTTP surface: routes, form parsing, the token endpoint's DPoP check, responses.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State as AxumState};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use dpop_core::{Error as DpopError, NonceValidator as _, RfcError, Role, VerifiedProof};

use crate::State;
use crate::config::{AuthMethod, DpopMode, GRANTS};
use crate::error::{ErrorCode, OAuthError};

type Shared = Arc<State>;

/// Longest time one request may take, body included.
const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(15);

/// The routes, under the issuer's path.
pub(crate) fn router(state: Shared) -> Router {
    let base = issuer_path(&state.config.issuer);
    let limit = state.config.max_body_bytes;
    Router::new()
        .route(
            &format!("/.well-known/oauth-authorization-server{base}"),
            get(metadata),
        )
        .route(
            &format!("{base}/.well-known/openid-configuration"),
            get(metadata),
        )
        .route(&format!("{base}/jwks"), get(jwks))
        .route(&format!("{base}/token"), post(token))
        .route(
            &format!("{base}/introspect"),
            post(crate::introspect::introspect),
        )
        .route(&format!("{base}/revoke"), post(crate::introspect::revoke))
        .route(&format!("{base}/healthz"), get(|| async { "ok\n" }))
        .route(&format!("{base}/readyz"), get(ready))
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&state),
            with_client_address,
        ))
        .layer(DefaultBodyLimit::max(limit))
        .layer(axum::middleware::map_response(too_large_as_oauth_error))
        // A request that takes longer (a slow client, a stalled database) is answered
        // 503 instead of holding its connection and memory.
        .layer(
            tower::ServiceBuilder::new()
                .layer(axum::error_handling::HandleErrorLayer::new(
                    |_: tower::BoxError| async {
                        OAuthError::new(
                            ErrorCode::TemporarilyUnavailable,
                            "the request took too long; retry later",
                        )
                    },
                ))
                .timeout(REQUEST_TIMEOUT),
        )
        .with_state(state)
}

/// Runs the request knowing the client's address (the peer, or what a trusted proxy
/// says), for the failed-authentication limits. Without a peer address (the router
/// served without connection info), only the per-client-id limit applies.
async fn with_client_address(
    AxumState(state): AxumState<Shared>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let address = request
        .extensions()
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| {
            crate::client_auth::client_address_of(
                &state.config.auth_limits,
                c.0.ip(),
                request.headers(),
            )
        });
    crate::client_auth::with_client_address(address, next.run(request)).await
}

/// A body over `max_body_bytes` is refused by axum with a bare 413; clients get the
/// usual OAuth JSON error (still 413) instead.
async fn too_large_as_oauth_error(response: Response) -> Response {
    if response.status() != StatusCode::PAYLOAD_TOO_LARGE {
        return response;
    }
    let mut r = OAuthError::invalid_request("the request body is larger than the server accepts")
        .into_response();
    *r.status_mut() = StatusCode::PAYLOAD_TOO_LARGE;
    r
}

/// The path part of the issuer identifier ("" for `https://host`).
fn issuer_path(issuer: &str) -> String {
    let rest = issuer.split_once("://").map_or(issuer, |(_, r)| r);
    rest.find('/')
        .and_then(|i| rest.get(i..))
        .unwrap_or("")
        .trim_end_matches('/')
        .to_owned()
}

async fn ready(AxumState(state): AxumState<Shared>) -> Response {
    crate::readiness(&state).await.into_http().into_response()
}

fn no_store(mut response: Response) -> Response {
    let h = response.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    response
}

async fn metadata(AxumState(state): AxumState<Shared>) -> Response {
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
        "token_endpoint_auth_signing_alg_values_supported": crate::client_auth::ASSERTION_ALGS,
        "introspection_endpoint_auth_methods_supported": secret_methods,
        "introspection_endpoint_auth_signing_alg_values_supported": crate::client_auth::ASSERTION_ALGS,
        "revocation_endpoint_auth_methods_supported": [
            "client_secret_basic", "client_secret_post", "private_key_jwt", "none"
        ],
        "revocation_endpoint_auth_signing_alg_values_supported": crate::client_auth::ASSERTION_ALGS,
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

async fn jwks(AxumState(state): AxumState<Shared>) -> Response {
    // Read from the database each time, so a key another instance just published is
    // served at once; the loaded set is the fallback when the database is down.
    let fresh = match state.clock.now() {
        Some(now) => state
            .store
            .published_keys(now)
            .await
            .ok()
            .map(|records| crate::keys::jwks_json(&records)),
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

/// A parsed `application/x-www-form-urlencoded` body.
#[derive(Debug, Default)]
pub(crate) struct Form {
    single: BTreeMap<String, String>,
    multi: BTreeMap<String, Vec<String>>,
}

/// Parameters that may repeat (RFC 8707 `resource`, RFC 8693 `audience`).
const REPEATABLE: [&str; 2] = ["resource", "audience"];

impl Form {
    /// Parses the body; a non-repeatable parameter given twice is refused (RFC 6749 §3.2).
    pub(crate) fn parse(headers: &HeaderMap, body: &[u8]) -> Result<Self, OAuthError> {
        let ct = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let mime = ct.split(';').next().unwrap_or("").trim();
        if !mime.eq_ignore_ascii_case("application/x-www-form-urlencoded") {
            return Err(OAuthError::invalid_request(
                "the body must be application/x-www-form-urlencoded",
            ));
        }
        let mut form = Self::default();
        for (k, v) in form_urlencoded::parse(body) {
            let k = k.into_owned();
            let v = v.into_owned();
            if REPEATABLE.contains(&k.as_str()) {
                form.multi.entry(k).or_default().push(v);
                continue;
            }
            match form.single.entry(k) {
                std::collections::btree_map::Entry::Occupied(e) => {
                    return Err(OAuthError::invalid_request(format!(
                        "the parameter {} is repeated",
                        e.key()
                    )));
                }
                std::collections::btree_map::Entry::Vacant(e) => {
                    e.insert(v);
                }
            }
        }
        Ok(form)
    }

    /// A parameter, treating an empty value as absent (RFC 6749 §3.1).
    pub(crate) fn get(&self, name: &str) -> Option<&str> {
        self.single
            .get(name)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    /// A required parameter.
    pub(crate) fn require(&self, name: &str) -> Result<&str, OAuthError> {
        self.get(name)
            .ok_or_else(|| OAuthError::invalid_request(format!("the parameter {name} is missing")))
    }

    /// Every value of a repeatable parameter.
    pub(crate) fn all(&self, name: &str) -> &[String] {
        self.multi.get(name).map_or(&[], Vec::as_slice)
    }
}

/// The successful token response (RFC 6749 §5.1, RFC 8693 §2.2.1).
#[derive(Debug, serde::Serialize)]
pub(crate) struct TokenResponse {
    pub(crate) access_token: String,
    pub(crate) token_type: &'static str,
    pub(crate) expires_in: u64,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub(crate) scope: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) refresh_token: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) issued_token_type: Option<&'static str>,
}

/// Verifies the request's DPoP proof at the token endpoint and records it. `Ok(None)`:
/// the request has no proof.
async fn token_proof(
    state: &State,
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
        .record_async(&state.store)
        .await
        .map_err(|e| proof_error(state, &e, now))?;
    Ok(Some(proof))
}

/// The answer to a token request without a proof from a client that must send one.
fn proof_required() -> OAuthError {
    OAuthError::new(
        ErrorCode::InvalidDpopProof,
        "this client must send a DPoP proof (RFC 9449) with every token request",
    )
}

/// Maps a proof failure to the token endpoint's error (RFC 9449 §5, §8).
pub(crate) fn proof_error(state: &State, e: &DpopError, now: dpop_core::UnixTime) -> OAuthError {
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

/// A fresh nonce for a successful response when the proof's nonce is due for renewal.
fn next_nonce(state: &State, proof: Option<&VerifiedProof>) -> Option<String> {
    let proof = proof?;
    if !proof.should_renew_nonce() {
        return None;
    }
    let now = state.clock.now()?;
    state.nonces.as_ref()?.issue(now).ok()
}

/// `POST /token`.
async fn token(AxumState(state): AxumState<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    let started = std::time::Instant::now();
    let outcome = token_inner(&state, &headers, &body).await;
    let grant = form_urlencoded::parse(&body)
        .find(|(k, _)| k == "grant_type")
        .map(|(_, v)| v.into_owned());
    let result = match &outcome {
        Ok(_) => "issued",
        Err(e) => e.code.as_str(),
    };
    state
        .metrics
        .token(grant.as_deref(), result, started.elapsed());
    match outcome {
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
    }
}

async fn token_inner(
    state: &State,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(TokenResponse, Option<String>), OAuthError> {
    let form = Form::parse(headers, body)?;
    let grant = form.require("grant_type")?.to_owned();
    let claimed = crate::client_auth::claimed_client(state, headers, &form)?;
    // With a proof, the proof comes first, so a nonce round trip costs no password
    // hashing. Without one, whether the client may go without is its own business: it
    // is told only once it has authenticated, so that an unknown id, a client that may
    // skip DPoP and one that may not answer a wrong credential alike, in the same time
    // (an unknown id's secret goes through the stand-in Argon2 check). A request that
    // names a client without a credential (`client_id` only) can only be a public
    // client's, and public clients always need a proof: refused as such whatever the id.
    let proof = token_proof(state, headers).await?;
    if proof.is_none() && crate::client_auth::names_client_only(headers, &form)? {
        return Err(proof_required());
    }
    let client = crate::client_auth::authenticate(state, headers, &form, claimed).await?;
    if proof.is_none() && client.dpop == DpopMode::Required {
        return Err(proof_required());
    }
    // Keys read longer ago than the maintenance interval (maintenance behind) are read
    // again before one signs: a key retired meanwhile must not go on signing.
    state
        .keys
        .reload_if_older(&state.store, state.now()?, crate::MAINTENANCE_INTERVAL)
        .await
        .map_err(|e| {
            tracing::error!(target: "dpop::issuer", error = %e, "cannot read the signing keys");
            OAuthError::new(
                ErrorCode::TemporarilyUnavailable,
                "the authorization server's keys are unavailable; retry later",
            )
        })?;
    if !GRANTS.contains(&grant.as_str()) {
        return Err(OAuthError::new(
            ErrorCode::UnsupportedGrantType,
            format!("the grant type {grant:?} is not supported"),
        ));
    }
    if !client.grants.contains(&grant) {
        return Err(OAuthError::new(
            ErrorCode::UnauthorizedClient,
            format!("this client may not use the {grant} grant"),
        ));
    }
    let response = crate::grants::run(state, client, &grant, &form, proof.as_ref()).await?;
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
