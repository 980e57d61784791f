//! Fixtures for the authorizer's tests, whatever the protocol: an [`Authz`] started
//! in-process from TOML text with any of its HTTP, gRPC and admin listeners
//! ([`AuthzHarness`]), the original request a proxy reports to the gRPC listener
//! ([`Reported`]), and the forward-auth header sets each proxy sends to the HTTP one
//! ([`ForwardAuth`]). Tokens and proofs come from [`Caller`].

use std::collections::HashMap;
use std::net::SocketAddr;

use dpop_gateway::{Authz, GatewayError, GatewaySettings};
use dpop_test::{HttpResponse, MockIssuer, http_get, raw_exchange_exact};
use envoy_types::pb::envoy::config::core::v3::{HeaderMap, HeaderValue};
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Request};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest, CheckResponse};
use tokio::sync::oneshot;
use tonic::transport::Channel;

use super::{AUD, Caller};

/// The host clients address in these tests (the only allowed one in [`authz_text`]).
pub(crate) const HOST: &str = "api.example.com";

/// An HTTP listener (forward-auth, Envoy HTTP) and an admin listener, on free ports.
pub(crate) const HTTP_AND_ADMIN: &str = "listen = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"";

/// A gRPC listener (Envoy ext_authz) on a free port.
pub(crate) const GRPC: &str = "grpc_listen = \"127.0.0.1:0\"";

/// The configuration text of an authorizer for `issuer`'s tokens at audience [`AUD`],
/// allowing [`HOST`], with `listeners` (e.g. `grpc_listen = "127.0.0.1:0"`) and then
/// `rest` (more top-level keys first, then tables).
pub(crate) fn authz_text(issuer: &MockIssuer, listeners: &str, rest: &str) -> String {
    authz_text_for(issuer.url(), listeners, rest)
}

/// As [`authz_text`], trusting the issuer at `issuer_url` (which may be unreachable).
pub(crate) fn authz_text_for(issuer_url: &str, listeners: &str, rest: &str) -> String {
    format!(
        "{listeners}\nissuer = \"{issuer_url}\"\naudience = \"{AUD}\"\n\
         allowed_hosts = [\"{HOST}\"]\n{rest}"
    )
}

/// An authorizer serving in this process; stopped (gracefully) when dropped.
pub(crate) struct AuthzHarness {
    /// The HTTP listener (forward-auth, Envoy HTTP), if configured.
    pub(crate) http: Option<SocketAddr>,
    /// The gRPC listener (Envoy ext_authz), if configured.
    pub(crate) grpc: Option<SocketAddr>,
    /// The admin listener, if configured.
    pub(crate) admin: Option<SocketAddr>,
    _stop: oneshot::Sender<()>,
}

impl AuthzHarness {
    /// Starts an authorizer from `text` (listeners on port 0 get free ports).
    pub(crate) async fn start(text: &str) -> Self {
        Self::try_start(text)
            .await
            .unwrap_or_else(|e| panic!("authorizer did not start: {e}\n{text}"))
    }

    /// As [`AuthzHarness::start`], returning what stops the start.
    pub(crate) async fn try_start(text: &str) -> Result<Self, GatewayError> {
        let config = GatewaySettings::from_toml(text)?.validate_authz()?;
        let authz = Authz::bind(config).await?;
        let (http, grpc, admin) = (authz.http_addr(), authz.grpc_addr(), authz.admin_addr());
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(authz.serve(async move {
            let _ = stopped.await;
        }));
        Ok(Self {
            http,
            grpc,
            admin,
            _stop: stop,
        })
    }

    /// An authorizer for `issuer`'s tokens with an HTTP and an admin listener, and `rest`
    /// (top-level keys first, then tables).
    pub(crate) async fn http(issuer: &MockIssuer, rest: &str) -> Self {
        Self::start(&authz_text(issuer, HTTP_AND_ADMIN, rest)).await
    }

    /// The HTTP listener's address.
    pub(crate) fn http_addr(&self) -> SocketAddr {
        self.http.expect("no HTTP listener")
    }

    /// `http://` + the gRPC listener, for a tonic client.
    pub(crate) fn grpc_url(&self) -> String {
        format!("http://{}", self.grpc.expect("no gRPC listener"))
    }

    /// `http://` + the HTTP listener + `path`.
    pub(crate) fn http_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.http_addr())
    }

    /// `method target` on the HTTP listener with `headers`, byte for byte.
    pub(crate) async fn send(
        &self,
        method: &str,
        target: &[u8],
        headers: &[(&str, &[u8])],
    ) -> HttpResponse {
        raw_exchange_exact(self.http_addr(), method.as_bytes(), target, headers).await
    }

    /// The admin listener's `/metrics` text.
    pub(crate) async fn metrics(&self) -> String {
        let admin = self.admin.expect("no admin listener");
        let r = http_get(&format!("http://{admin}/metrics")).await.unwrap();
        assert_eq!(r.status, 200, "{r:?}");
        r.text()
    }

    /// The value of the metric line starting with `series` (name and labels), 0 when
    /// there is none yet.
    pub(crate) async fn metric(&self, series: &str) -> u64 {
        self.metrics()
            .await
            .lines()
            .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
            .unwrap_or(0)
    }
}

/// The request a proxy reports: what the client sent it.
#[derive(Clone, Debug)]
pub(crate) struct Reported {
    /// The method, as sent.
    pub(crate) method: String,
    /// `http` or `https`.
    pub(crate) scheme: String,
    /// The host (and port) the client addressed.
    pub(crate) host: String,
    /// The raw request target, with its query.
    pub(crate) path: String,
    /// The client's headers, in order, repeated names as separate entries.
    pub(crate) headers: Vec<(String, String)>,
}

impl Reported {
    /// `method` on `https://HOST{path}`, without headers.
    pub(crate) fn new(method: &str, path: &str) -> Self {
        Self {
            method: method.to_owned(),
            scheme: "https".to_owned(),
            host: HOST.to_owned(),
            path: path.to_owned(),
            headers: Vec::new(),
        }
    }

    /// `method` on `https://HOST{path}` by `caller`: its token and a fresh proof for this
    /// method and URL (the `htu` is the URL without its query).
    pub(crate) fn dpop(caller: &Caller, method: &str, path: &str) -> Self {
        Self::dpop_with_nonce(caller, method, path, None)
    }

    /// As [`Reported::dpop`], the proof carrying `nonce`.
    pub(crate) fn dpop_with_nonce(
        caller: &Caller,
        method: &str,
        path: &str,
        nonce: Option<&str>,
    ) -> Self {
        let r = Self::new(method, path);
        let proof = caller.proof_with_nonce(method, &r.htu(), nonce);
        r.header("authorization", &caller.authorization())
            .header("dpop", &proof)
    }

    /// With one more header line.
    pub(crate) fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    /// With `name`'s lines replaced by one carrying `value`.
    pub(crate) fn replacing(self, name: &str, value: &str) -> Self {
        self.without(name).header(name, value)
    }

    /// Without any header line named `name` (ASCII case-insensitive).
    pub(crate) fn without(mut self, name: &str) -> Self {
        self.headers.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
        self
    }

    /// The first value of `name`.
    pub(crate) fn get(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// `scheme://host/path` without the query: the `htu` a client signs.
    pub(crate) fn htu(&self) -> String {
        let path = self.path.split('?').next().unwrap_or_default();
        format!("{}://{}{path}", self.scheme, self.host)
    }
}

/// How a proxy reports the original request in a forward-auth check.
#[derive(Clone, Copy, Debug)]
pub(crate) enum ForwardAuth {
    /// nginx `auth_request` with the shipped snippet: `X-Original-Method`,
    /// `X-Original-URI`, `X-Forwarded-Host`, `X-Forwarded-Proto`.
    Nginx,
    /// Traefik `ForwardAuth` and Caddy `forward_auth`: `X-Forwarded-Method`, `-Uri`,
    /// `-Host`, `-Proto`, `-For`.
    Forwarded,
}

impl ForwardAuth {
    /// The forwarding headers for the client's `method uri` on `scheme://host`.
    pub(crate) fn headers(
        self,
        method: &str,
        uri: &str,
        scheme: &str,
        host: &str,
    ) -> Vec<(&'static str, String)> {
        let (m, u) = match self {
            Self::Nginx => ("x-original-method", "x-original-uri"),
            Self::Forwarded => ("x-forwarded-method", "x-forwarded-uri"),
        };
        let mut h = vec![
            (m, method.to_owned()),
            (u, uri.to_owned()),
            ("x-forwarded-host", host.to_owned()),
            ("x-forwarded-proto", scheme.to_owned()),
        ];
        if matches!(self, Self::Forwarded) {
            h.push(("x-forwarded-for", "198.51.100.7".to_owned()));
        }
        h
    }
}

/// `(name, value)` pairs as the byte slices [`AuthzHarness::send`] takes.
pub(crate) fn as_bytes<'a>(headers: &'a [(&'a str, String)]) -> Vec<(&'a str, &'a [u8])> {
    headers.iter().map(|(n, v)| (*n, v.as_bytes())).collect()
}

// ---- Envoy's side of the gRPC listener ---------------------------------------------------

/// The check Envoy sends by default: header names lower-cased, repeated lines merged
/// with `,`, pseudo-headers included in the map.
pub(crate) fn merged(r: &Reported) -> CheckRequest {
    let mut headers: HashMap<String, String> = HashMap::new();
    for (name, value) in &r.headers {
        headers
            .entry(name.to_ascii_lowercase())
            .and_modify(|v| {
                v.push(',');
                v.push_str(value);
            })
            .or_insert_with(|| value.clone());
    }
    headers.insert(":method".into(), r.method.clone());
    headers.insert(":path".into(), r.path.clone());
    headers.insert(":authority".into(), r.host.clone());
    headers.insert(":scheme".into(), r.scheme.clone());
    with_http(HttpRequest {
        method: r.method.clone(),
        scheme: r.scheme.clone(),
        host: r.host.clone(),
        path: r.path.clone(),
        headers,
        protocol: "HTTP/1.1".into(),
        size: -1,
        ..HttpRequest::default()
    })
}

/// The check with `encode_raw_headers: true`: every line as sent, values in `raw_value`.
pub(crate) fn raw(r: &Reported) -> CheckRequest {
    let line = |key: &str, value: &str| HeaderValue {
        key: key.to_owned(),
        value: String::new(),
        raw_value: value.as_bytes().to_vec(),
    };
    let mut lines = vec![
        line(":authority", &r.host),
        line(":path", &r.path),
        line(":method", &r.method),
        line(":scheme", &r.scheme),
    ];
    lines.extend(r.headers.iter().map(|(n, v)| line(n, v)));
    with_http(HttpRequest {
        method: r.method.clone(),
        scheme: r.scheme.clone(),
        host: r.host.clone(),
        path: r.path.clone(),
        header_map: Some(HeaderMap { headers: lines }),
        protocol: "HTTP/2".into(),
        size: -1,
        ..HttpRequest::default()
    })
}

pub(crate) fn with_http(http: HttpRequest) -> CheckRequest {
    CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(Request {
                time: None,
                http: Some(http),
            }),
            ..AttributeContext::default()
        }),
    }
}

pub(crate) async fn client(authz: &AuthzHarness) -> AuthorizationClient<Channel> {
    AuthorizationClient::connect(authz.grpc_url())
        .await
        .unwrap()
}

pub(crate) async fn check(
    client: &mut AuthorizationClient<Channel>,
    request: CheckRequest,
) -> CheckResponse {
    client.check(request).await.unwrap().into_inner()
}
