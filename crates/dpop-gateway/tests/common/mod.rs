//! Fixtures shared by the gateway's integration tests: a gateway started in-process on
//! free loopback ports from TOML text, and a caller holding a client key and an access
//! token bound to it, minted by dpop-test's mock issuer.

// Each test binary compiles this module on its own and uses only part of it; what one
// binary leaves unused is not dead code.
#![allow(dead_code)]

pub(crate) mod authz;

use std::net::SocketAddr;

use bytes::Bytes;
use dpop_core::{Algorithm, PrivateKey, ProofBuilder, SystemRandomSource};
use dpop_gateway::{Gateway, GatewayConfig, GatewayError};
use dpop_test::{HttpResponse, MockIssuer, TokenSpec, free_port, http_request};
use http::Request;
use http_body_util::Empty;
use tokio::sync::oneshot;

/// The audience every gateway here accepts and every token names.
pub(crate) const AUD: &str = "https://api.example.com";

/// `text` as a TOML basic string (for URLs, which need no escapes).
pub(crate) fn quoted(text: &str) -> String {
    format!("\"{text}\"")
}

/// The configuration text of a gateway on `127.0.0.1:port`, accepting that host, for
/// `issuer`'s tokens, with `upstream` (a TOML value, or an `[upstream]` table written
/// before everything else that is not top-level) and then `rest`.
pub(crate) fn config_text(port: u16, issuer: &MockIssuer, upstream: &str, rest: &str) -> String {
    text(port, None, issuer, upstream, rest)
}

fn text(port: u16, admin: Option<u16>, issuer: &MockIssuer, upstream: &str, rest: &str) -> String {
    let admin = admin.map_or(String::new(), |p| {
        format!("admin_listen = \"127.0.0.1:{p}\"\n")
    });
    let (top, table) = if upstream.starts_with('[') {
        (String::new(), format!("{upstream}\n"))
    } else {
        (format!("upstream = {upstream}\n"), String::new())
    };
    format!(
        "listen = \"127.0.0.1:{port}\"\n{admin}{top}issuer = \"{}\"\naudience = \"{AUD}\"\n\
         allowed_hosts = [\"127.0.0.1:{port}\"]\n{table}{rest}",
        issuer.url()
    )
}

/// Skips (or, with `DPOP_TEST_REQUIRE_REDIS_TOPOLOGIES` set as in CI, fails) a test of a
/// Redis Cluster or Sentinel set-up without redis-server and redis-cli.
pub(crate) fn skip_without_redis() {
    let why = "no redis-server or redis-cli (DPOP_TEST_REDIS_SERVER or PATH)";
    assert!(
        std::env::var_os("DPOP_TEST_REQUIRE_REDIS_TOPOLOGIES").is_none_or(|v| v.is_empty()),
        "{why}"
    );
    eprintln!("skipped: {why}");
}

/// A gateway serving in this process; stopped when dropped.
pub(crate) struct Running {
    /// Where it listens.
    pub(crate) addr: SocketAddr,
    /// Where its admin listener is, if it has one.
    pub(crate) admin: Option<SocketAddr>,
    _stop: oneshot::Sender<()>,
}

impl Running {
    /// A gateway in front of the upstream at `url`, with `rest` appended to its
    /// configuration.
    pub(crate) async fn start(issuer: &MockIssuer, url: &str, rest: &str) -> Self {
        Self::with_upstream(issuer, &quoted(url), rest).await
    }

    /// As [`Running::start`], with an admin listener on another free port.
    pub(crate) async fn with_admin(issuer: &MockIssuer, url: &str, rest: &str) -> Self {
        Self::bind(issuer, &quoted(url), Some(free_port()), rest)
            .await
            .unwrap()
    }

    /// As [`Running::start`], with `upstream` as a TOML value or `[upstream]` table.
    pub(crate) async fn with_upstream(issuer: &MockIssuer, upstream: &str, rest: &str) -> Self {
        Self::try_with_upstream(issuer, upstream, rest)
            .await
            .unwrap()
    }

    /// As [`Running::with_upstream`], returning what stops the start.
    pub(crate) async fn try_with_upstream(
        issuer: &MockIssuer,
        upstream: &str,
        rest: &str,
    ) -> Result<Self, GatewayError> {
        Self::bind(issuer, upstream, None, rest).await
    }

    async fn bind(
        issuer: &MockIssuer,
        upstream: &str,
        admin_port: Option<u16>,
        rest: &str,
    ) -> Result<Self, GatewayError> {
        let port = free_port();
        Self::from_text(&text(port, admin_port, issuer, upstream, rest), admin_port).await
    }

    /// A gateway from the whole configuration `text` (its `listen` on a free port), with
    /// its admin listener on `admin_port` if the text sets one there.
    pub(crate) async fn from_text(
        text: &str,
        admin_port: Option<u16>,
    ) -> Result<Self, GatewayError> {
        let config = GatewayConfig::from_toml(text)?;
        let gateway = Gateway::bind(config).await?;
        let addr = gateway.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(gateway.serve(async move {
            let _ = stopped.await;
        }));
        Ok(Self {
            addr,
            admin: admin_port.map(|p| SocketAddr::from(([127, 0, 0, 1], p))),
            _stop: stop,
        })
    }

    /// `http://ADDR{path}`: also the `htu` a WebSocket client signs for `ws://`.
    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// `https://ADDR{path}`.
    pub(crate) fn https(&self, path: &str) -> String {
        format!("https://{}{path}", self.addr)
    }

    /// `resource_metadata="…"`: the RFC 9728 document URL every challenge carries.
    pub(crate) fn metadata_param(&self) -> String {
        format!(
            r#"resource_metadata="http://{}/.well-known/oauth-protected-resource""#,
            self.addr
        )
    }
}

/// A client key and an access token bound to it.
pub(crate) struct Caller {
    /// The client's key.
    pub(crate) key: PrivateKey,
    /// The access token, bound to `key`.
    pub(crate) token: String,
}

impl Caller {
    /// A token bound to a fresh ES256 key, with no scope.
    pub(crate) fn new(issuer: &MockIssuer) -> Self {
        Self::minted(issuer, |_, _| {})
    }

    /// A token with `scope`.
    pub(crate) fn scoped(issuer: &MockIssuer, scope: &str) -> Self {
        Self::minted(issuer, |_, spec| spec.scope = Some(scope.into()))
    }

    /// A token bound to a fresh ES256 key, with its claims changed by `adjust` (given
    /// the key) before it is minted.
    pub(crate) fn minted(
        issuer: &MockIssuer,
        adjust: impl FnOnce(&PrivateKey, &mut TokenSpec),
    ) -> Self {
        let key = PrivateKey::generate(Algorithm::Es256).unwrap();
        let mut spec = TokenSpec::bound(AUD, key.thumbprint().as_str());
        adjust(&key, &mut spec);
        let token = issuer.mint(&spec);
        Self { key, token }
    }

    /// `DPoP TOKEN`.
    pub(crate) fn authorization(&self) -> String {
        format!("DPoP {}", self.token)
    }

    /// A fresh proof for `method` on `htu`, bound to the token.
    pub(crate) fn proof(&self, method: &str, htu: &str) -> String {
        self.proof_with_nonce(method, htu, None)
    }

    /// As [`Caller::proof`], carrying `nonce`.
    pub(crate) fn proof_with_nonce(&self, method: &str, htu: &str, nonce: Option<&str>) -> String {
        let mut builder = ProofBuilder::new(method, htu)
            .unwrap()
            .access_token(&self.token);
        if let Some(n) = nonce {
            builder = builder.nonce(n).unwrap();
        }
        builder
            .sign(&self.key, &SystemRandomSource, dpop_test::now())
            .unwrap()
    }

    /// `Authorization` and a proof for `method` on `htu`.
    pub(crate) fn headers(&self, method: &str, htu: &str) -> [(&'static str, String); 2] {
        [
            ("authorization", self.authorization()),
            ("dpop", self.proof(method, htu)),
        ]
    }

    /// `method uri` with the token and a fresh proof for `htu`.
    pub(crate) fn request(&self, method: &str, uri: &str, htu: &str) -> Request<Empty<Bytes>> {
        Request::builder()
            .method(method)
            .uri(uri)
            .header("authorization", self.authorization())
            .header("dpop", self.proof(method, htu))
            .body(Empty::new())
            .unwrap()
    }

    /// `GET path` at `gw` with a fresh proof.
    pub(crate) async fn get(&self, gw: &Running, path: &str) -> HttpResponse {
        let url = gw.url(path);
        let [(_, auth), (_, proof)] = self.headers("GET", &url);
        http_request(
            "GET",
            &url,
            &[("authorization", &auth), ("dpop", &proof)],
            b"",
        )
        .await
        .unwrap()
    }
}
