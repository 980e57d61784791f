//! Forwarding to the upstream: pooled connections, streamed bodies, hop-by-hop headers
//! removed, forwarding and identity headers set, failures turned into 502/504 without
//! internal detail.

use std::convert::Infallible;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use dpop_tower::{AuthorizedTarget, ClientCertificate, DpopIdentity, PeerAddr};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Uri};
use http_body_util::BodyExt as _;
use http_body_util::combinators::BoxBody;
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::config::{GatewayConfig, IdentityHeaders};
use crate::metrics::Metrics;

/// The response body type of the gateway.
pub type Body = BoxBody<Bytes, hyper::Error>;

/// RFC 9110 §7.6.1: connection-specific fields a proxy must not forward.
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

pub(crate) fn empty(status: StatusCode) -> Response<Body> {
    let mut r = Response::new(Body::default());
    *r.status_mut() = status;
    r
}

fn remove_hop_by_hop(headers: &mut HeaderMap) {
    // Fields named in Connection are hop-by-hop too.
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for name in named.iter().chain(HOP_BY_HOP.iter()) {
        headers.remove(name);
    }
}

/// Headers the gateway sets or vouches for. A client-sent header whose name equals one
/// of these once `_` is read as `-` is removed too: CGI, Rack, WSGI and PHP turn both
/// `X-DPoP-Subject` and `X_DPoP_Subject` into `HTTP_X_DPOP_SUBJECT`.
const MANAGED: [&str; 5] = [
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "authorization",
    "dpop",
];

/// Headers that make common frameworks run another method or route another path than the
/// request line says (Rack, Symfony, Laravel, IIS URL Rewrite): the gateway judged the
/// request line, so these never reach the upstream, whoever sends them.
const OVERRIDES: [&str; 9] = [
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
    "x-original-url",
    "x-rewrite-url",
    "x-original-uri",
    "x-forwarded-uri",
    "x-envoy-original-path",
    // The gateway never reads RFC 7239 `Forwarded`; passed on, it could name another
    // host or scheme than the one the proof was checked against.
    "forwarded",
];

/// Headers that claim where the request came from or was addressed to. Believed only
/// from a trusted proxy, as for the `htu`; from anyone else they are removed.
const CLAIMS: [&str; 19] = [
    "x-forwarded-host",
    "x-forwarded-prefix",
    "x-forwarded-port",
    "x-forwarded-server",
    "x-forwarded-ssl",
    "x-forwarded-scheme",
    "x-forwarded-protocol",
    "x-forwarded",
    "x-url-scheme",
    "front-end-https",
    "forwarded-for",
    "x-real-ip",
    "true-client-ip",
    "client-ip",
    "x-client-ip",
    "x-cluster-client-ip",
    "x-original-host",
    "x-host",
    "x-original-forwarded-for",
];

/// The first element of the comma-separated list in the field lines of `name`.
fn first_value(headers: &HeaderMap, name: &str) -> Option<HeaderValue> {
    let first = headers.get(name)?.to_str().ok()?.split(',').next()?.trim();
    HeaderValue::from_str(first)
        .ok()
        .filter(|_| !first.is_empty())
}

/// Removes every header whose name has a `_` and reads as one of `names` with `_` as `-`.
fn remove_underscore_aliases(headers: &mut HeaderMap, names: &[String]) {
    let aliases: Vec<HeaderName> = headers
        .keys()
        .filter(|k| k.as_str().contains('_'))
        .filter(|k| {
            let dashed = k.as_str().replace('_', "-");
            names.contains(&dashed)
        })
        .cloned()
        .collect();
    for name in aliases {
        headers.remove(name);
    }
}

struct Settings {
    base: Uri,
    base_path: String,
    strip_authorization: bool,
    strip_dpop: bool,
    identity: IdentityHeaders,
    identity_names: Vec<HeaderName>,
    /// Lower-case names (`-` form) of every header the gateway manages.
    managed_names: Vec<String>,
    client_scheme: HeaderValue,
    timeout: Duration,
    trusted_proxies: Vec<ipnet::IpNet>,
}

/// The upstream-facing service at the bottom of the gateway stack.
#[derive(Clone)]
pub struct Proxy {
    client: Client<HttpConnector, Incoming>,
    settings: Arc<Settings>,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy")
            .field("upstream", &self.settings.base)
            .finish_non_exhaustive()
    }
}

impl Proxy {
    /// A proxy to `config.upstream`.
    #[must_use]
    pub fn new(config: &GatewayConfig, metrics: Arc<Metrics>) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(5)));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(256)
            .build(connector);
        let id = &config.identity_headers;
        let identity_names: Vec<HeaderName> = [
            &id.subject,
            &id.client_id,
            &id.jkt,
            &id.scopes,
            &id.client_cert_subject,
            &id.client_cert_thumbprint,
        ]
        .into_iter()
        .filter(|n| !n.is_empty())
        .filter_map(|n| HeaderName::from_bytes(n.as_bytes()).ok())
        .collect();
        let managed_names = identity_names
            .iter()
            .map(|n| n.as_str().to_owned())
            .chain(
                MANAGED
                    .iter()
                    .chain(&OVERRIDES)
                    .chain(&CLAIMS)
                    .map(|n| (*n).to_owned()),
            )
            .collect();
        let client_scheme = match config.public_urls.first() {
            Some(u) if u.starts_with("https://") => HeaderValue::from_static("https"),
            _ if config.tls.is_some() => HeaderValue::from_static("https"),
            _ => HeaderValue::from_static("http"),
        };
        let base_path = config.upstream.path().trim_end_matches('/').to_owned();
        let settings = Settings {
            base: config.upstream.clone(),
            base_path,
            strip_authorization: config.strip_authorization,
            strip_dpop: config.strip_dpop,
            identity: config.identity_headers.clone(),
            identity_names,
            managed_names,
            client_scheme,
            timeout: config.upstream_timeout,
            trusted_proxies: config.trusted_proxies.clone(),
        };
        Self {
            client,
            settings: Arc::new(settings),
            metrics,
        }
    }

    /// The upstream URI for `target`, the exact target the layer authorised.
    fn upstream_uri(&self, target: &AuthorizedTarget) -> Option<Uri> {
        let s = &self.settings;
        let path = format!("{}{}", s.base_path, target.as_str());
        Uri::builder()
            .scheme(s.base.scheme()?.clone())
            .authority(s.base.authority()?.clone())
            .path_and_query(path)
            .build()
            .ok()
    }

    fn prepare(&self, req: &mut Request<Incoming>) -> Option<()> {
        let s = &self.settings;
        let peer: Option<IpAddr> = req.extensions().get::<PeerAddr>().map(|p| p.0.ip());
        let identity = req.extensions_mut().remove::<DpopIdentity>();
        let client_cert = req.extensions_mut().remove::<ClientCertificate>();
        // Forward exactly what the layer judged; without its verdict nothing is forwarded.
        let target = req.extensions_mut().remove::<AuthorizedTarget>()?;
        *req.uri_mut() = self.upstream_uri(&target)?;
        let headers = req.headers_mut();
        remove_hop_by_hop(headers);
        remove_underscore_aliases(headers, &s.managed_names);
        for name in OVERRIDES {
            headers.remove(name);
        }
        // Where the request came from and what it addressed is only believed from a
        // trusted proxy (as for the htu); from anyone else it would reach the upstream as
        // if the gateway vouched for it.
        let trusted = peer.is_some_and(|ip| {
            s.trusted_proxies
                .iter()
                .any(|n| n.contains(&ip.to_canonical()))
        });
        if trusted {
            // The first value is the one the layer used; forward that one only.
            for name in ["x-forwarded-host", "x-forwarded-proto"] {
                match first_value(headers, name) {
                    Some(first) => {
                        headers.insert(HeaderName::from_static(name), first);
                    }
                    None => {
                        headers.remove(name);
                    }
                }
            }
        } else {
            for name in CLAIMS {
                headers.remove(name);
            }
            headers.remove("x-forwarded-for");
            headers.remove("x-forwarded-proto");
        }
        headers.remove(header::HOST);
        // Credentials the gateway checked are replaced by the identity. Where it did not
        // vouch for the request (an `off` route, a report-only failure) they pass through,
        // so an upstream that still authenticates on its own keeps working during roll-out.
        let vouched = identity.is_some();
        if s.strip_authorization && vouched {
            headers.remove(header::AUTHORIZATION);
        }
        if s.strip_dpop && vouched {
            headers.remove("dpop");
        }
        // Identity headers come only from the gateway, never from the client.
        for name in &s.identity_names {
            headers.remove(name);
        }
        if let Some(ip) = peer {
            // RFC 9110 §5.3: repeated field lines are one list, in order; keep them all.
            let mut hops: Vec<&str> = headers
                .get_all("x-forwarded-for")
                .iter()
                .filter_map(|v| v.to_str().ok())
                .collect();
            let peer = ip.to_canonical().to_string();
            hops.push(&peer);
            let value = hops.join(", ");
            if let Ok(v) = HeaderValue::from_str(&value) {
                headers.insert("x-forwarded-for", v);
            }
        }
        if !headers.contains_key("x-forwarded-proto") {
            headers.insert("x-forwarded-proto", s.client_scheme.clone());
        }
        // Set only from the certificate the TLS handshake verified.
        if let Some(cert) = client_cert {
            let thumbprint = Some(cert.thumbprint.as_str().to_owned());
            for (name, value) in [
                (&s.identity.client_cert_thumbprint, thumbprint),
                (&s.identity.client_cert_subject, cert.subject),
            ] {
                if let (false, Ok(n), Some(Ok(v))) = (
                    name.is_empty(),
                    HeaderName::from_bytes(name.as_bytes()),
                    value.map(|v| HeaderValue::from_str(&v)),
                ) {
                    headers.insert(n, v);
                }
            }
        }
        if let Some(id) = identity {
            let mut set = |name: &str, value: Option<String>| {
                if name.is_empty() {
                    return;
                }
                if let (Ok(n), Some(Ok(v))) = (
                    HeaderName::from_bytes(name.as_bytes()),
                    value.map(|v| HeaderValue::from_str(&v)),
                ) {
                    headers.insert(n, v);
                }
            };
            set(&s.identity.subject, id.subject);
            set(&s.identity.client_id, id.client_id);
            set(&s.identity.jkt, id.jkt.map(|j| j.as_str().to_owned()));
            set(
                &s.identity.scopes,
                Some(id.scopes.join(" ")).filter(|s| !s.is_empty()),
            );
        }
        Some(())
    }

    async fn forward(self, mut req: Request<Incoming>) -> Response<Body> {
        if self.prepare(&mut req).is_none() {
            return empty(StatusCode::BAD_REQUEST);
        }
        // The upstream client speaks HTTP/1.1, whatever the client spoke to the gateway.
        *req.version_mut() = http::Version::HTTP_11;
        match tokio::time::timeout(self.settings.timeout, self.client.request(req)).await {
            Ok(Ok(mut resp)) => {
                self.metrics.upstream("ok");
                remove_hop_by_hop(resp.headers_mut());
                resp.map(|b| b.boxed())
            }
            Ok(Err(e)) => {
                self.metrics.upstream("error");
                tracing::warn!(target: "dpop::proxy", error = %e, "upstream request failed");
                empty(StatusCode::BAD_GATEWAY)
            }
            Err(_) => {
                self.metrics.upstream("timeout");
                tracing::warn!(target: "dpop::proxy", "upstream did not answer in time");
                empty(StatusCode::GATEWAY_TIMEOUT)
            }
        }
    }
}

impl tower::Service<Request<Incoming>> for Proxy {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Incoming>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move { Ok(this.forward(req).await) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn underscore_spellings_of_managed_headers_go() {
        let mut h = HeaderMap::new();
        for name in [
            "x_dpop_subject",
            "X_DPoP_Client_Id",
            "x-dpop_jkt",
            "x_forwarded_for",
            "dpop_",
            "x_other",
            "authorization",
        ] {
            h.insert(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                "1".parse().unwrap(),
            );
        }
        let names: Vec<String> = [
            "x-dpop-subject",
            "x-dpop-client-id",
            "x-dpop-jkt",
            "x-forwarded-for",
            "dpop",
        ]
        .map(str::to_owned)
        .to_vec();
        remove_underscore_aliases(&mut h, &names);
        let mut left: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        left.sort_unstable();
        assert_eq!(left, ["authorization", "dpop_", "x_other"]);
    }

    #[test]
    fn hop_by_hop_and_connection_listed_headers_go() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, "close, x-secret".parse().unwrap());
        h.insert("x-secret", "1".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert(header::TE, "trailers".parse().unwrap());
        h.insert("x-kept", "1".parse().unwrap());
        remove_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-kept"));
    }
}
