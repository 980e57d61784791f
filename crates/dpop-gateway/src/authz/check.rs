//! The authorizer's one decision: the request a proxy reports, rebuilt and run through
//! the same DPoP layer as the gateway's, turned into an allow (with what the upstream
//! and the client receive) or a denial (with the status and challenge headers). Every
//! protocol adapter (Envoy gRPC, Envoy HTTP, forward-auth) calls [`Authorizer::check`]
//! and only translates its answer.

use std::convert::Infallible;
use std::future::{Ready, ready};
use std::task::{Context, Poll};

use bytes::Bytes;
use dpop_core::Reason;
use dpop_tower::{AuthorizedTarget, DpopEvents, DpopIdentity, DpopLayer, DpopService, Outcome};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri};
use tower::{Layer as _, Service, ServiceExt as _};

use std::sync::Arc;
use std::time::Instant;

use dpop_server::http::method_label;

use crate::access_log::{self, Caller, Line, outcome_fields};
use crate::config::IdentityHeaders;
use crate::metrics::{Metrics, RouteLabels};
use crate::proxy::{IdentityNames, OVERRIDES, identity_values};
use crate::store::GatewayStore;

/// The request as the proxy in front received it from the client.
pub(crate) struct OriginalRequest {
    /// The method, as sent.
    pub method: String,
    /// `http` or `https`: how the client reached the proxy.
    pub scheme: String,
    /// The host (and port) the client addressed.
    pub authority: String,
    /// The request target in origin form, with its query, exactly as the client sent it
    /// (before the proxy decoded or normalised anything).
    pub path_and_query: String,
    /// The client's header fields. A field Envoy merged from several lines arrives as one
    /// comma-joined value: [`OriginalRequest::split_merged`] undoes that for the fields
    /// where several lines must be refused.
    pub headers: HeaderMap,
}

// Not derived: the headers carry the access token and the proof. Names only.
impl std::fmt::Debug for OriginalRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OriginalRequest")
            .field("method", &self.method)
            .field("scheme", &self.scheme)
            .field("authority", &self.authority)
            .field("path_and_query", &self.path_and_query)
            .field("headers", &self.headers.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl OriginalRequest {
    /// Envoy joins repeated header lines with `,`. A DPoP proof or an `Authorization`
    /// value for `DPoP`/`Bearer` never contains one, so a comma means several lines were
    /// sent: they are split again, and the layer refuses them as it refuses repeated
    /// lines (`multiple_proofs`, `multiple_authorizations`).
    pub(crate) fn split_merged(&mut self) {
        for name in [header::AUTHORIZATION, HeaderName::from_static("dpop")] {
            let merged: Vec<HeaderValue> = self.headers.get_all(&name).iter().cloned().collect();
            if !merged.iter().any(|v| v.as_bytes().contains(&b',')) {
                continue;
            }
            self.headers.remove(&name);
            for value in merged {
                for part in value.as_bytes().split(|&b| b == b',') {
                    let part = part.trim_ascii();
                    // An empty element is still an element: keep it, so `a,` is two.
                    let v = HeaderValue::from_bytes(part)
                        .unwrap_or_else(|_| HeaderValue::from_static(""));
                    self.headers.append(name.clone(), v);
                }
            }
        }
    }
}

/// What the authorizer answers.
#[derive(Debug)]
pub(crate) enum Decision {
    /// Let the request through, changed as [`Allowed`] says.
    Allow(Allowed),
    /// Answer the client with this instead.
    Deny(Denied),
}

/// A request the layer let through.
#[derive(Debug, Default)]
pub(crate) struct Allowed {
    /// Headers to set on the upstream request (replacing any of the same name).
    pub upstream_headers: Vec<(HeaderName, HeaderValue)>,
    /// Headers to remove from the upstream request: the credentials the authorizer
    /// checked (when configured to strip them), and every identity header name the
    /// authorizer does not set, in whatever spelling the client sent it.
    pub remove: Vec<HeaderName>,
    /// Headers for the client's response (a fresh `DPoP-Nonce` when one is due).
    pub response_headers: Vec<(HeaderName, HeaderValue)>,
    /// The verified caller (`None` on an `off` route, the metadata document, or a
    /// report-only route whose check failed).
    pub identity: Option<DpopIdentity>,
    /// Client-sent header names that must not reach the upstream: those spelt like an
    /// identity header, and those that make common frameworks run another method or
    /// route another path than the one judged ([`OVERRIDES`]), in any spelling (`-`,
    /// `_`, any case). Adapters that cannot remove headers upstream refuse such requests.
    pub forged_identity: Vec<HeaderName>,
}

/// A refusal, as the client should receive it.
#[derive(Debug)]
pub(crate) struct Denied {
    /// The status (401, 403, 400, 503, …) the layer chose.
    pub status: StatusCode,
    /// `WWW-Authenticate`, `DPoP-Nonce`, `Retry-After`, and always
    /// `Cache-Control: no-store`.
    pub headers: HeaderMap,
    /// The body (empty: the RFC error code travels in the challenge).
    pub body: Bytes,
}

impl Denied {
    /// A refusal without challenge: for requests the layer never saw (a target or method
    /// that cannot even be parsed).
    pub(crate) fn bare(status: StatusCode) -> Self {
        let mut headers = HeaderMap::new();
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        Self {
            status,
            headers,
            body: Bytes::new(),
        }
    }
}

/// The inner service of the layer: reaching it is the layer's permission. It answers
/// with what the layer attached to the request.
#[derive(Clone, Copy, Debug)]
struct Pass;

/// What [`Pass`] saw: the layer's verdict.
#[derive(Clone, Debug)]
struct Passed {
    identity: Option<DpopIdentity>,
    target: AuthorizedTarget,
}

impl Service<Request<()>> for Pass {
    type Response = Response<()>;
    type Error = Infallible;
    type Future = Ready<Result<Response<()>, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<()>) -> Self::Future {
        let mut response = Response::new(());
        // Without the layer's target nothing passed through it.
        if let Some(target) = req.extensions().get::<AuthorizedTarget>() {
            response.extensions_mut().insert(Passed {
                identity: req.extensions().get::<DpopIdentity>().cloned(),
                target: target.clone(),
            });
        }
        ready(Ok(response))
    }
}

/// The decision maker shared by the listeners.
pub(crate) struct Authorizer {
    service: DpopService<Pass, GatewayStore>,
    layer: DpopLayer<GatewayStore>,
    identity: IdentityNames,
    /// The identity header names, normalised (lower case, `_` as `-`).
    identity_names: Vec<String>,
    strip_authorization: bool,
    strip_dpop: bool,
    metrics: Arc<Metrics>,
    /// The `http_route` label of each of this configuration's routes.
    routes: RouteLabels,
    /// `log_requests`: one access-log line per check.
    log_requests: bool,
}

impl std::fmt::Debug for Authorizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authorizer").finish_non_exhaustive()
    }
}

impl Authorizer {
    pub(crate) fn new(
        layer: DpopLayer<GatewayStore>,
        identity: IdentityHeaders,
        strip_authorization: bool,
        strip_dpop: bool,
        metrics: Arc<Metrics>,
        routes: RouteLabels,
        log_requests: bool,
    ) -> Self {
        let identity = IdentityNames::new(&identity);
        // Field names are lower case already; `_` is read as `-`.
        let identity_names = identity
            .all()
            .map(|n| n.as_str().replace('_', "-"))
            .collect();
        Self {
            service: layer.layer(Pass),
            layer,
            identity,
            identity_names,
            strip_authorization,
            strip_dpop,
            metrics,
            routes,
            log_requests,
        }
    }

    /// The check's access-log line and `http_server_request_duration_seconds`
    /// observation: the status the client gets (200 when allowed), the outcome and
    /// reason the layer left, and the canonical path it judged.
    fn observe(
        &self,
        method: Option<&Method>,
        started: Instant,
        status: StatusCode,
        outcome: Option<&Outcome>,
        target: Option<&AuthorizedTarget>,
        identity: Option<&DpopIdentity>,
    ) {
        let elapsed = started.elapsed();
        let route = self.routes.get(target.and_then(AuthorizedTarget::route_id));
        let method = method.map_or("_OTHER", method_label);
        self.metrics
            .http()
            .server(method, status.as_u16(), route, elapsed);
        if !self.log_requests {
            return;
        }
        let (outcome, reason) = outcome_fields(outcome);
        let caller = identity.map(Caller::of);
        access_log::line(&Line {
            peer: None,
            method,
            path: target.map(AuthorizedTarget::path),
            status: status.as_u16(),
            elapsed,
            outcome,
            reason,
            caller: caller.as_ref(),
            route,
            upstream: None,
            upstream_elapsed: None,
        });
    }

    /// The layer (for readiness and the RFC 9728 document).
    pub(crate) fn layer(&self) -> &DpopLayer<GatewayStore> {
        &self.layer
    }

    /// The metrics the layer's events go to.
    pub(crate) fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Judges `original` exactly as the gateway would judge it arriving on its listener
    /// with that scheme and host: canonical target, route, token, proof against the
    /// `htu` rebuilt from the reported scheme, host and path, replay record, nonce.
    pub(crate) async fn check(&self, original: OriginalRequest) -> Decision {
        let started = Instant::now();
        let Some(request) = rebuild(&original) else {
            // Not even an HTTP request: the layer's rule for targets it cannot parse.
            tracing::info!(target: "dpop::rejection", reason = Reason::NonCanonicalTarget.as_str(), status = 400, method = %original.method.escape_debug(), "request refused: the reported method, host or target is not valid HTTP");
            let outcome = Outcome::Rejected(Reason::NonCanonicalTarget);
            self.metrics.outcome(outcome, started.elapsed());
            self.observe(
                None,
                started,
                StatusCode::BAD_REQUEST,
                Some(&outcome),
                None,
                None,
            );
            return Decision::Deny(Denied::bare(StatusCode::BAD_REQUEST));
        };
        let forged_identity: Vec<HeaderName> = original
            .headers
            .keys()
            .filter(|k| {
                let normal = k.as_str().replace('_', "-");
                self.identity_names.contains(&normal) || OVERRIDES.contains(&normal.as_str())
            })
            .cloned()
            .collect();
        let method = request.method().clone();
        let response = match self.service.clone().oneshot(request).await {
            Ok(r) => r,
            Err(never) => match never {},
        };
        let (parts, ()) = response.into_parts();
        let Some(passed) = parts.extensions.get::<Passed>().cloned() else {
            let mut headers = HeaderMap::new();
            for name in [
                header::WWW_AUTHENTICATE,
                HeaderName::from_static("dpop-nonce"),
                header::RETRY_AFTER,
            ] {
                for v in parts.headers.get_all(&name) {
                    headers.append(name.clone(), v.clone());
                }
            }
            headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            self.observe(
                Some(&method),
                started,
                parts.status,
                parts.extensions.get::<Outcome>(),
                parts.extensions.get::<AuthorizedTarget>(),
                None,
            );
            return Decision::Deny(Denied {
                status: parts.status,
                headers,
                body: Bytes::new(),
            });
        };
        let mut allowed = Allowed {
            forged_identity,
            ..Allowed::default()
        };
        if let Some(nonce) = parts.headers.get("dpop-nonce") {
            allowed
                .response_headers
                .push((HeaderName::from_static("dpop-nonce"), nonce.clone()));
        }
        // Credentials the authorizer checked are replaced by the identity; where it did
        // not vouch (an `off` route, a report-only failure) they pass, as in the gateway.
        let vouched = passed.identity.is_some();
        if vouched && self.strip_authorization {
            allowed.remove.push(header::AUTHORIZATION);
        }
        if vouched && self.strip_dpop {
            allowed.remove.push(HeaderName::from_static("dpop"));
        }
        if let Some(id) = passed.identity.clone() {
            dpop_server::telemetry::record_identity(
                id.jkt.as_ref().map(|j| j.as_str()),
                id.subject.as_deref(),
                id.client_id.as_deref(),
            );
            allowed.upstream_headers = identity_values(&self.identity, id);
        }
        // Identity headers come only from the authorizer: every client-sent spelling
        // the authorizer does not overwrite is removed.
        for name in &allowed.forged_identity {
            if !allowed.upstream_headers.iter().any(|(n, _)| n == name) {
                allowed.remove.push(name.clone());
            }
        }
        for name in &self.identity_names {
            if let Ok(n) = HeaderName::from_bytes(name.as_bytes())
                && !allowed.upstream_headers.iter().any(|(set, _)| *set == n)
                && !allowed.remove.contains(&n)
            {
                allowed.remove.push(n);
            }
        }
        self.observe(
            Some(&method),
            started,
            StatusCode::OK,
            parts.extensions.get::<Outcome>(),
            Some(&passed.target),
            passed.identity.as_ref(),
        );
        allowed.identity = passed.identity;
        Decision::Allow(allowed)
    }
}

/// The request the layer judges: HTTP/2-shaped (absolute URI with the reported scheme
/// and host, so the layer's `htu` rule reads them from the URI and nothing else), the
/// client's headers without `Host` and pseudo-headers. `None` when the method, scheme,
/// host or target is not valid HTTP.
fn rebuild(original: &OriginalRequest) -> Option<Request<()>> {
    let method = Method::from_bytes(original.method.as_bytes()).ok()?;
    // A CONNECT's target is an authority, never the origin-form path a proxy reports
    // for it (Caddy reports `/`): what would be judged is not what is forwarded.
    if method == Method::CONNECT {
        return None;
    }
    let scheme = match original.scheme.to_ascii_lowercase().as_str() {
        "http" => "http",
        "https" => "https",
        _ => return None,
    };
    if !original.path_and_query.starts_with('/') {
        return None;
    }
    let uri = Uri::builder()
        .scheme(scheme)
        .authority(original.authority.as_str())
        .path_and_query(original.path_and_query.as_str())
        .build()
        .ok()?;
    // `Uri` accepts a little more than RFC 3986 in the path (it keeps some bytes as
    // they are); the layer checks the target it gets, and it must be the one reported.
    if uri.path_and_query().map(|p| p.as_str()) != Some(original.path_and_query.as_str()) {
        return None;
    }
    let mut request = Request::new(());
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.version_mut() = http::Version::HTTP_2;
    let headers = request.headers_mut();
    for (name, value) in &original.headers {
        if name != header::HOST {
            headers.append(name.clone(), value.clone());
        }
    }
    Some(request)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn original(method: &str, headers: &[(&'static str, &str)]) -> OriginalRequest {
        let mut map = HeaderMap::new();
        for (n, v) in headers {
            map.append(*n, HeaderValue::from_str(v).unwrap());
        }
        OriginalRequest {
            method: method.to_owned(),
            scheme: "https".to_owned(),
            authority: "api.example.com".to_owned(),
            path_and_query: "/items".to_owned(),
            headers: map,
        }
    }

    #[test]
    fn debug_never_shows_credentials() {
        let o = original(
            "GET",
            &[
                ("authorization", "DPoP secret-token-value"),
                ("dpop", "secret-proof-value"),
            ],
        );
        let debug = format!("{o:?}");
        assert!(!debug.contains("secret-token-value"), "{debug}");
        assert!(!debug.contains("secret-proof-value"), "{debug}");
        assert!(
            debug.contains("authorization") && debug.contains("dpop"),
            "{debug}"
        );
    }

    #[test]
    fn connect_is_never_rebuilt() {
        assert!(rebuild(&original("CONNECT", &[])).is_none());
        assert!(rebuild(&original("GET", &[])).is_some());
    }
}
