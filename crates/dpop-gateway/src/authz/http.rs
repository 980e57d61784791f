//! Envoy's ext_authz over HTTP, and forward-auth (nginx `auth_request`, Traefik
//! `ForwardAuth`, Caddy `forward_auth`), on one HTTP/1.1 listener.
//!
//! Each request on the listener is one of three things:
//!
//! - **A forward-auth check**: it carries `X-Forwarded-Uri` or `X-Original-URI`. These
//!   headers say which request the proxy wants judged, so they are believed only from a
//!   peer in `trusted_proxies`; from anyone else the answer is a bare 403, counted in
//!   `dpop_authz_untrusted_callers_total`. The proxy must report the original method
//!   (`X-Forwarded-Method` or `X-Original-Method`: nginx's subrequest is always a GET,
//!   so without it every request would be judged as a GET), the URI (origin form, as the
//!   client sent it, with its query), the host (`X-Forwarded-Host`, exactly one value)
//!   and the scheme (`X-Forwarded-Proto`, `http` or `https`). A report that lacks one of
//!   them, repeats one, or names two different values in the `Forwarded` and `Original`
//!   spellings is refused with 403 and a log line naming the header: guessing would
//!   judge another request than the one forwarded. The disagreement rule matters: the
//!   proxies pass the client's headers on, so a client can add the spelling its proxy
//!   does not set (`X-Forwarded-Uri` through nginx, `X-Original-URI` through Traefik). The answer is 200 with the identity
//!   headers and a fresh `DPoP-Nonce`, or a refusal whose status is 401 or 403 only:
//!   nginx turns any other status into a 500, so a 400 becomes 401 (the RFC 6750 error
//!   code stays in `WWW-Authenticate`) and a 429 or 5xx (store down, keys not loaded)
//!   becomes 403, keeping `Retry-After`.
//! - **An Envoy HTTP check**: any other request. Its own method, target (after
//!   `[authz] path_prefix`, which it must start with on a segment boundary, else 403)
//!   and `Host` are the original request's. Envoy does not report the scheme: it is the
//!   one `X-Forwarded-Proto` states when the peer is in `trusted_proxies` (list it in
//!   Envoy's `allowed_headers`), else the public URLs' scheme when they all share one,
//!   else `http`. The answer is 200 with the identity headers (for Envoy's
//!   `allowed_upstream_headers`), `x-envoy-auth-headers-to-remove` naming the
//!   credentials and forged identity headers to drop, and `DPoP-Nonce` (for
//!   `allowed_client_headers_on_success`); or the layer's refusal as it is, which Envoy
//!   passes to the client. Envoy's `allowed_headers` must not list the forward-auth
//!   headers (`x-forwarded-uri`, `x-original-uri`, …): a client could then send one and
//!   have its own report judged, when Envoy is a trusted proxy.
//! - **The RFC 9728 document**: a `GET` or `HEAD` of `/.well-known/oauth-protected-resource`
//!   (or its path-suffixed form) that is not a forward-auth check, so a proxy can route
//!   that path to the authorizer. Without a `path_prefix` such a request cannot be told
//!   apart from an Envoy check of that path: the answer is then both (the document, with
//!   the headers of an allow).
//!
//! A header spelt like one of the forwarding headers with `_` for `-`
//! (`X_Forwarded_Uri`) is never read as that header, and never ignored either: CGI,
//! Rack, WSGI and PHP read both spellings alike, so the application could see another
//! URI or host than the one judged. Such a request is refused (403 in forward-auth, 400
//! for Envoy); it does not make a request a forward-auth check.
//!
//! Each check is bounded by `request_timeout` and denied when it runs out; connections
//! are bounded by `max_connections` (a slot is taken before accepting) and request heads
//! by `max_header_bytes`. Request bodies are never read.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::request::Parts;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};

use super::reload::{AuthzGeneration, AuthzReloader};
use super::{Allowed, Authorizer, Decision, Denied, OriginalRequest};
use crate::accept::{Accepting, next_until};
use crate::config::AuthzConfig;
use crate::server::{drive, http1_settings};

/// The headers that make a request a forward-auth check.
const FORWARD_AUTH_URI: [&str; 2] = ["x-forwarded-uri", "x-original-uri"];

/// The forwarding headers the authorizer reads. Their `_` spellings are refused.
const READ_FORWARDING: [&str; 6] = [
    "x-forwarded-method",
    "x-original-method",
    "x-forwarded-uri",
    "x-original-uri",
    "x-forwarded-host",
    "x-forwarded-proto",
];

/// Headers a forward-auth proxy adds about the client's request, dropped before the
/// request is judged (the judged request has its method, URI, host and scheme from them
/// already; the layer never reads forwarding headers of the authorizer's requests).
/// (`X-Original-URL` is not one: no proxy sends it in a check, and an application may
/// route by it, so a client's is judged and refused.)
const FORWARDING: [&str; 12] = [
    "x-forwarded-method",
    "x-original-method",
    "x-forwarded-uri",
    "x-original-uri",
    "x-forwarded-host",
    "x-forwarded-proto",
    "x-forwarded-port",
    "x-forwarded-prefix",
    "x-forwarded-server",
    "x-forwarded-for",
    "x-real-ip",
    "forwarded",
];

/// The header Envoy's HTTP ext_authz reads the headers to remove upstream from.
const ENVOY_REMOVE: &str = "x-envoy-auth-headers-to-remove";

type Body = Full<Bytes>;

/// Serves checks on `listener` until `stop` turns true, then lets in-flight checks
/// finish. Each check takes the configuration in force from `current` when it starts and
/// keeps it to the end; the listener's own settings are `config`'s, as started.
pub(crate) async fn serve(
    listener: TcpListener,
    current: Arc<AuthzReloader>,
    config: Arc<AuthzConfig>,
    mut stop: watch::Receiver<bool>,
) {
    let limit = Arc::new(Semaphore::new(config.enforcement.max_connections));
    let mut builder = http1::Builder::new();
    http1_settings!(builder, config);
    // Connections watch this to start their graceful shutdown; each holds a receiver,
    // so `closed()` resolves when the last one has ended.
    let (drain, draining) = watch::channel(false);
    while let Some((permit, stream, peer)) =
        next_until(&listener, &limit, &mut stop, Accepting::AuthzHttp).await
    {
        let current = Arc::clone(&current);
        let svc = service_fn(move |req: Request<Incoming>| {
            // One atomic load and count: this check's configuration, to its end.
            let checks = Checks {
                now: current.current(),
            };
            let span = dpop_server::telemetry::request_span(&req, Some(peer.ip()), None);
            let answer = async move {
                let response = checks.answer(req, peer).await;
                dpop_server::telemetry::record_status(&tracing::Span::current(), response.status());
                Ok::<_, Infallible>(response)
            };
            tracing::Instrument::instrument(answer, span)
        });
        let conn = builder.serve_connection(TokioIo::new(stream), svc);
        let conn_stop = draining.clone();
        tokio::spawn(async move {
            drive(
                conn,
                conn_stop,
                |c| c.graceful_shutdown(),
                std::future::pending(),
            )
            .await;
            drop(permit);
        });
    }
    drop(listener);
    drop(draining);
    let _ = drain.send(true);
    // The caller bounds the drain by the drain timeout.
    drain.closed().await;
}

/// Why a request was refused before the layer saw it: the metric's reason and what the
/// log says.
struct Refusal {
    reason: &'static str,
    detail: String,
}

impl Refusal {
    fn new(reason: &'static str, detail: impl Into<String>) -> Self {
        Self {
            reason,
            detail: detail.into(),
        }
    }
}

/// One check, with the configuration in force when it started.
struct Checks {
    now: Arc<AuthzGeneration>,
}

impl Checks {
    fn authorizer(&self) -> &Authorizer {
        self.now.state().authorizer()
    }

    fn config(&self) -> &AuthzConfig {
        self.now.state().config()
    }

    fn trusted(&self, peer: SocketAddr) -> bool {
        let ip = peer.ip().to_canonical();
        self.config()
            .enforcement
            .trusted_proxies
            .iter()
            .any(|net| net.contains(&ip))
    }

    /// Answers one request on the listener.
    async fn answer(&self, req: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
        // The body is never read: checks are about the request head.
        let (parts, _body) = req.into_parts();
        let forward_auth = FORWARD_AUTH_URI
            .iter()
            .any(|name| parts.headers.contains_key(*name));
        if forward_auth {
            self.forward_auth(parts, peer).await
        } else {
            self.envoy(parts, peer).await
        }
    }

    /// Counts and logs a refusal outside the layer, and answers it with `status`.
    fn refuse(&self, refusal: &Refusal, status: StatusCode, peer: SocketAddr) -> Response<Body> {
        self.authorizer().metrics().authz_refused(refusal.reason);
        tracing::warn!(target: "dpop::authz", %peer, reason = refusal.reason, status = status.as_u16(), "check refused: {}", refusal.detail);
        denied(Denied::bare(status))
    }

    /// A forward-auth check: the original request as the proxy's headers report it.
    async fn forward_auth(&self, parts: Parts, peer: SocketAddr) -> Response<Body> {
        if !self.trusted(peer) {
            // No detail: the caller may be a client that reached the authorizer directly.
            self.authorizer().metrics().authz_untrusted_caller();
            tracing::warn!(target: "dpop::authz", %peer, "forward-auth check refused: the caller is not in trusted_proxies");
            return empty(StatusCode::FORBIDDEN);
        }
        let original = match forward_auth_request(parts) {
            Ok(o) => o,
            Err(refusal) => return self.refuse(&refusal, StatusCode::FORBIDDEN, peer),
        };
        let decision = match self.decide(original).await {
            Ok(d) => d,
            Err(refusal) => return self.refuse(&refusal, StatusCode::FORBIDDEN, peer),
        };
        match decision {
            Decision::Allow(allowed) if !allowed.forged_identity.is_empty() => {
                // The proxy forwards the client's headers as they are and cannot be told
                // to remove one: a client-sent identity header (in any spelling) would
                // reach the application beside, or instead of, the one copied from this
                // answer. Refused rather than trusted to proxy configuration.
                let names = allowed
                    .forged_identity
                    .iter()
                    .map(HeaderName::as_str)
                    .collect::<Vec<_>>()
                    .join(", ");
                let refusal = Refusal::new(
                    "forged_identity",
                    format!(
                        "the request carries identity headers only the authorizer may set: {names}"
                    ),
                );
                self.refuse(&refusal, StatusCode::FORBIDDEN, peer)
            }
            Decision::Allow(allowed) => allow(allowed, None),
            Decision::Deny(mut d) => {
                // nginx's auth_request passes 401 and 403 only (anything else is a 500).
                d.status = match d.status {
                    StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => d.status,
                    StatusCode::BAD_REQUEST => StatusCode::UNAUTHORIZED,
                    _ => StatusCode::FORBIDDEN,
                };
                denied(d)
            }
        }
    }

    /// An Envoy HTTP check: this request is the original one, below `path_prefix`.
    async fn envoy(&self, parts: Parts, peer: SocketAddr) -> Response<Body> {
        if let Some(name) = lookalike(&parts.headers) {
            let refusal = Refusal::new(
                "lookalike_header",
                format!("{name} is spelt like a forwarding header the authorizer reads"),
            );
            return self.refuse(&refusal, StatusCode::BAD_REQUEST, peer);
        }
        let metadata_method = parts.method == Method::GET || parts.method == Method::HEAD;
        let target = parts.uri.path_and_query().map_or("", |pq| pq.as_str());
        if parts.uri.scheme().is_some() || parts.uri.authority().is_some() {
            let refusal = Refusal::new("bad_target", "the request target is not in origin form");
            return self.refuse(&refusal, StatusCode::BAD_REQUEST, peer);
        }
        let prefix = self.config().path_prefix.as_str();
        let path_and_query = if prefix.is_empty() {
            target.to_owned()
        } else {
            match target.strip_prefix(prefix) {
                Some(rest) if rest.starts_with('/') => rest.to_owned(),
                _ => {
                    // Not a check: a request for the document is answered, any other
                    // refused.
                    if metadata_method && let Some(doc) = self.metadata(&parts, peer) {
                        return doc.map(Full::new);
                    }
                    let refusal = Refusal::new(
                        "path_prefix",
                        format!("the request path is not below path_prefix {prefix:?}"),
                    );
                    return self.refuse(&refusal, StatusCode::FORBIDDEN, peer);
                }
            }
        };
        // Without a prefix a request for the document may also be Envoy checking that
        // path: it gets both the document and the headers of an allow.
        let document = (prefix.is_empty() && metadata_method)
            .then(|| self.metadata(&parts, peer))
            .flatten();
        let mut host = parts.headers.get_all(header::HOST).iter();
        let authority = match (host.next().map(HeaderValue::to_str), host.next()) {
            (Some(Ok(h)), None) => h.to_owned(),
            _ => {
                let refusal = Refusal::new("bad_host", "the request needs exactly one Host");
                return self.refuse(&refusal, StatusCode::BAD_REQUEST, peer);
            }
        };
        let scheme = if self.trusted(peer) && parts.headers.contains_key("x-forwarded-proto") {
            match scheme_of(&parts.headers) {
                Ok(s) => s,
                Err(refusal) => return self.refuse(&refusal, StatusCode::BAD_REQUEST, peer),
            }
        } else {
            self.now
                .state()
                .public_scheme()
                .unwrap_or("http")
                .to_owned()
        };
        let mut headers = parts.headers;
        headers.remove(header::HOST);
        let original = OriginalRequest {
            method: parts.method.as_str().to_owned(),
            scheme,
            authority,
            path_and_query,
            headers,
        };
        let decision = match self.decide(original).await {
            Ok(d) => d,
            Err(refusal) => return self.refuse(&refusal, StatusCode::SERVICE_UNAVAILABLE, peer),
        };
        match decision {
            Decision::Allow(allowed) => match document {
                Some(doc) if doc.status() != StatusCode::OK => doc.map(Full::new),
                doc => allow(allowed, doc),
            },
            Decision::Deny(d) => denied(d),
        }
    }

    /// The RFC 9728 document, when `parts` asks for it.
    fn metadata(&self, parts: &Parts, peer: SocketAddr) -> Option<Response<Bytes>> {
        let mut req = Request::new(());
        *req.method_mut() = parts.method.clone();
        *req.uri_mut() = parts.uri.clone();
        *req.headers_mut() = parts.headers.clone();
        req.extensions_mut().insert(dpop_tower::PeerAddr(peer));
        self.authorizer().layer().metadata_response(&req)
    }

    /// The authorizer's decision within `request_timeout`.
    async fn decide(&self, mut original: OriginalRequest) -> Result<Decision, Refusal> {
        // A proof or an `Authorization` value never holds a comma: one that does was
        // merged from several lines by a proxy, and is refused as several.
        original.split_merged();
        let timeout = self.config().enforcement.request_timeout;
        tokio::time::timeout(timeout, self.authorizer().check(original))
            .await
            .map_err(|_| {
                Refusal::new(
                    "timeout",
                    format!(
                        "the check took longer than request_timeout ({} s)",
                        timeout.as_secs()
                    ),
                )
            })
    }
}

/// The original request of a forward-auth check, from the proxy's headers.
fn forward_auth_request(parts: Parts) -> Result<OriginalRequest, Refusal> {
    if let Some(name) = lookalike(&parts.headers) {
        return Err(Refusal::new(
            "lookalike_header",
            format!(
                "{name} is spelt like a forwarding header the authorizer reads; applications reading both spellings alike could see another request than the one judged"
            ),
        ));
    }
    let h = &parts.headers;
    let method = agreeing(h, "x-forwarded-method", "x-original-method")?.ok_or_else(|| {
        Refusal::new(
            "missing_method",
            "the proxy sent no X-Forwarded-Method or X-Original-Method: its configuration must send the client's method (nginx: proxy_set_header X-Original-Method $request_method), or every request would be judged as the proxy's own GET",
        )
    })?;
    let uri = agreeing(h, "x-forwarded-uri", "x-original-uri")?
        .ok_or_else(|| Refusal::new("missing_uri", "X-Forwarded-Uri / X-Original-URI is empty"))?;
    let host = single(h, "x-forwarded-host")?.ok_or_else(|| {
        Refusal::new(
            "missing_host",
            "the proxy sent no X-Forwarded-Host (nginx: proxy_set_header X-Forwarded-Host $http_host)",
        )
    })?;
    if host.is_empty() || host.contains(',') {
        return Err(Refusal::new(
            "bad_forwarding_header",
            "X-Forwarded-Host must hold exactly one host",
        ));
    }
    if !h.contains_key("x-forwarded-proto") {
        return Err(Refusal::new(
            "missing_proto",
            "the proxy sent no X-Forwarded-Proto (nginx: proxy_set_header X-Forwarded-Proto $scheme)",
        ));
    }
    let scheme = scheme_of(h)?;
    let (method, path_and_query, authority) = (method.to_owned(), uri.to_owned(), host.to_owned());
    let mut headers = parts.headers;
    for name in FORWARDING {
        headers.remove(name);
    }
    headers.remove(header::HOST);
    Ok(OriginalRequest {
        method,
        scheme,
        authority,
        path_and_query,
        headers,
    })
}

/// `X-Forwarded-Proto`: one value, `http` or `https` (any case).
fn scheme_of(headers: &HeaderMap) -> Result<String, Refusal> {
    match single(headers, "x-forwarded-proto")? {
        Some(p) if p.eq_ignore_ascii_case("http") || p.eq_ignore_ascii_case("https") => {
            Ok(p.to_ascii_lowercase())
        }
        _ => Err(Refusal::new(
            "bad_forwarding_header",
            "X-Forwarded-Proto must be one value, http or https",
        )),
    }
}

/// The one value of `name`: `None` when absent; refused when repeated or not text.
fn single<'a>(headers: &'a HeaderMap, name: &'static str) -> Result<Option<&'a str>, Refusal> {
    let mut values = headers.get_all(name).iter();
    let Some(first) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(Refusal::new(
            "bad_forwarding_header",
            format!("{name} is repeated"),
        ));
    }
    first.to_str().map(Some).map_err(|_| {
        Refusal::new(
            "bad_forwarding_header",
            format!("{name} is not visible ASCII"),
        )
    })
}

/// The value of `a` or `b` (two spellings of one thing); refused when both are present
/// and differ.
fn agreeing<'a>(
    headers: &'a HeaderMap,
    a: &'static str,
    b: &'static str,
) -> Result<Option<&'a str>, Refusal> {
    match (single(headers, a)?, single(headers, b)?) {
        (Some(x), Some(y)) if x != y => Err(Refusal::new(
            "conflicting_headers",
            format!("{a} and {b} name different values"),
        )),
        (Some(v), _) | (None, Some(v)) => Ok(Some(v)),
        (None, None) => Ok(None),
    }
}

/// A header whose name is one the authorizer reads with `_` in place of `-`.
fn lookalike(headers: &HeaderMap) -> Option<&HeaderName> {
    headers.keys().find(|name| {
        let name = name.as_str();
        name.contains('_') && READ_FORWARDING.contains(&name.replace('_', "-").as_str())
    })
}

/// 200: the identity headers for the upstream, the headers to remove (Envoy), the
/// client's `DPoP-Nonce`; with the RFC 9728 document when one was asked for.
fn allow(allowed: Allowed, document: Option<Response<Bytes>>) -> Response<Body> {
    let mut response = match document {
        Some(doc) => doc.map(Full::new),
        None => {
            let mut r = Response::new(Full::new(Bytes::new()));
            r.headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            r
        }
    };
    *response.status_mut() = StatusCode::OK;
    let headers = response.headers_mut();
    for (name, value) in allowed
        .upstream_headers
        .into_iter()
        .chain(allowed.response_headers)
    {
        headers.insert(name, value);
    }
    if !allowed.remove.is_empty() {
        let list = allowed
            .remove
            .iter()
            .map(HeaderName::as_str)
            .collect::<Vec<_>>()
            .join(",");
        // Header names are tokens: the list is always a valid value.
        if let Ok(v) = HeaderValue::from_str(&list) {
            headers.insert(HeaderName::from_static(ENVOY_REMOVE), v);
        }
    }
    response
}

/// The refusal as it is.
fn denied(d: Denied) -> Response<Body> {
    let mut response = Response::new(Full::new(d.body));
    *response.status_mut() = d.status;
    *response.headers_mut() = d.headers;
    response
}

/// `status`, no headers beyond `Cache-Control: no-store`, no body.
fn empty(status: StatusCode) -> Response<Body> {
    denied(Denied::bare(status))
}
