//! The HTTP endpoints, one module each, and the router that serves them under the
//! issuer's path with the limits every request is held to (body size, time).

mod introspect;
mod metadata;
mod revoke;
mod token;

use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, State as AxumState};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use crate::access_log::{RequestLog, log_request};
use crate::error::{OAuthError, RfcError};
use crate::state::IssuerState;

/// What every handler is given.
type Shared = Arc<IssuerState>;

/// Longest time one request may take, body included.
const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(15);

/// The routes, under the issuer's path.
pub(crate) fn router(state: Shared) -> Router {
    let base = issuer_path(&state.config.issuer);
    let limit = state.config.max_body_bytes;
    Router::new()
        .route(
            &format!("/.well-known/oauth-authorization-server{base}"),
            get(metadata::metadata),
        )
        .route(
            &format!("{base}/.well-known/openid-configuration"),
            get(metadata::metadata),
        )
        .route(&format!("{base}/jwks"), get(metadata::jwks))
        .route(&format!("{base}/token"), post(token::token))
        .route(&format!("{base}/introspect"), post(introspect::introspect))
        .route(&format!("{base}/revoke"), post(revoke::revoke))
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
                            RfcError::TemporarilyUnavailable,
                            "the request took too long; retry later",
                        )
                    },
                ))
                .timeout(REQUEST_TIMEOUT),
        )
        // The line and the duration cover every answer, time-outs included.
        .layer(axum::middleware::from_fn_with_state(
            RequestLog::new(&base, Arc::clone(&state)),
            log_request,
        ))
        // Outermost: the span covers the access line too (its trace id is in the line).
        .layer(axum::middleware::from_fn(traced))
        .with_state(state)
}

/// Runs the request inside its server span (when tracing is on), named by the endpoint
/// it matched.
async fn traced(request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let peer = request
        .extensions()
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0.ip());
    let route = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map(|m| m.as_str().to_owned());
    let span = dpop_server::telemetry::request_span(&request, peer, route.as_deref());
    let response = tracing::Instrument::instrument(next.run(request), span.clone()).await;
    dpop_server::telemetry::record_status(&span, response.status());
    response
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
            crate::auth_limits::client_address_of(
                &state.config.auth_limits,
                c.0.ip(),
                request.headers(),
            )
        });
    crate::auth_limits::with_client_address(address, next.run(request)).await
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

/// `{issuer}/readyz`.
async fn ready(AxumState(state): AxumState<Shared>) -> Response {
    state.readiness().await.into_http().into_response()
}
