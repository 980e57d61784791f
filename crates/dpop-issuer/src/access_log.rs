//! One access-log line (target `dpop::access`) and one
//! `http_server_request_duration_seconds` observation per request: the endpoint (the
//! route label), the method, the status, the OAuth error code of a refusal, the
//! duration and, at the token endpoint, the grant type and the authenticated client.
//! Never the form, a token, a proof, a secret or the query string.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{ConnectInfo, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use dpop_server::http::method_label;

use crate::error::RfcError;
use crate::metrics::Metrics;
use crate::state::IssuerState;

/// What the token endpoint adds to its response for the access log.
#[derive(Clone, Debug)]
pub(crate) struct TokenFacts {
    /// One of the supported grants, or `other`.
    pub(crate) grant: &'static str,
    /// The authenticated client, when authentication got that far.
    pub(crate) client_id: Option<String>,
}

/// The endpoints, as logged and labelled.
const ENDPOINTS: [&str; 9] = [
    "metadata",
    "openid_configuration",
    "jwks",
    "token",
    "introspect",
    "revoke",
    "healthz",
    "readyz",
    "other",
];

/// The access log of the issuer's router.
#[derive(Clone, Debug)]
pub(crate) struct RequestLog {
    /// The issuer identifier's path ("" for `https://host`).
    base: Arc<str>,
    /// RFC 8414's path, inserted before the issuer's.
    metadata: Arc<str>,
    labels: Arc<[Arc<str>; ENDPOINTS.len()]>,
    state: Arc<IssuerState>,
    enabled: bool,
}

impl RequestLog {
    pub(crate) fn new(base: &str, state: Arc<IssuerState>) -> Self {
        Self {
            base: Arc::from(base),
            metadata: Arc::from(format!("/.well-known/oauth-authorization-server{base}")),
            labels: Arc::new(ENDPOINTS.map(Arc::from)),
            enabled: state.config.log_requests,
            state,
        }
    }

    fn metrics(&self) -> &Metrics {
        &self.state.metrics
    }

    /// The endpoint `path` names, as an index into [`ENDPOINTS`].
    fn endpoint(&self, path: &str) -> usize {
        let name = if path == &*self.metadata {
            "metadata"
        } else {
            match path.strip_prefix(&*self.base) {
                Some("/.well-known/openid-configuration") => "openid_configuration",
                Some("/jwks") => "jwks",
                Some("/token") => "token",
                Some("/introspect") => "introspect",
                Some("/revoke") => "revoke",
                Some("/healthz") => "healthz",
                Some("/readyz") => "readyz",
                _ => "other",
            }
        };
        ENDPOINTS
            .iter()
            .position(|e| *e == name)
            .unwrap_or(ENDPOINTS.len() - 1)
    }
}

/// The middleware: times the request and logs its answer.
pub(crate) async fn log_request(
    State(log): State<RequestLog>,
    request: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let method = request.method().clone();
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0);
    let index = log.endpoint(request.uri().path());
    let active = log.metrics().http().active();
    let mut response = next.run(request).await;
    drop(active);
    let elapsed = started.elapsed();
    let status = response.status().as_u16();
    let Some(label) = log.labels.get(index) else {
        return response;
    };
    log.metrics()
        .http()
        .server(method_label(&method), status, label, elapsed);
    let extensions = response.extensions_mut();
    let error = extensions.remove::<RfcError>();
    let token = extensions.remove::<TokenFacts>();
    if log.enabled {
        tracing::info!(
            target: "dpop::access",
            peer = peer.map(tracing::field::display),
            method = method.as_str(),
            endpoint = &**label,
            status,
            error = error.map(RfcError::as_str),
            duration_ms = (elapsed.as_secs_f64() * 1_000_000.0).round() / 1000.0,
            grant_type = token.as_ref().map(|t| t.grant),
            client_id = token.as_ref().and_then(|t| t.client_id.as_deref()),
            "request"
        );
    }
    response
}
