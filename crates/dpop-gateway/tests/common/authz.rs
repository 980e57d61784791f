//! Fixtures for the authorizer's tests, whatever the protocol: an [`Authz`] started
//! in-process from TOML text ([`AuthzHarness`]), and the original request a proxy
//! reports ([`Reported`]), with a token and a fresh proof for its method and URL.

use std::net::SocketAddr;

use dpop_core::{ProofBuilder, SystemRandomSource};
use dpop_gateway::{Authz, GatewayError, GatewaySettings};
use dpop_test::MockIssuer;
use tokio::sync::oneshot;

use super::{AUD, Caller};

/// The host clients address in these tests (the only allowed one in [`authz_text`]).
pub(crate) const HOST: &str = "api.example.com";

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

    /// `http://` + the gRPC listener, for a tonic client.
    pub(crate) fn grpc_url(&self) -> String {
        format!("http://{}", self.grpc.expect("no gRPC listener"))
    }

    /// `http://` + the HTTP listener + `path`.
    pub(crate) fn http_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.http.expect("no HTTP listener"))
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
        let proof = proof_for(caller, method, &r.htu(), nonce);
        r.header("authorization", &caller.authorization())
            .header("dpop", &proof)
    }

    /// With one more header line.
    pub(crate) fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
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

/// A proof by `caller` for `method` on `htu`, bound to its token, with `nonce`.
pub(crate) fn proof_for(caller: &Caller, method: &str, htu: &str, nonce: Option<&str>) -> String {
    let mut builder = ProofBuilder::new(method, htu)
        .unwrap()
        .access_token(&caller.token);
    if let Some(n) = nonce {
        builder = builder.nonce(n).unwrap();
    }
    builder
        .sign(&caller.key, &SystemRandomSource, dpop_test::now())
        .unwrap()
}
