//! Process setup: the issuer, the gateway, the sample API and the stand-in CI system on
//! loopback ports, and the clients that go through them.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::routing::{get, post};
use base64::Engine as _;
use dpop_client::{ClientAuth, ClientKey, DpopMiddleware, Grant, OAuthTokens, TokenRequest};
use dpop_core::{Algorithm, PrivateKey, RandomSource as _, SystemRandomSource};
use serde_json::json;
use tokio::net::TcpListener;

use super::ci::CiSystem;
use crate::error::CliError;

const API_AUD: &str = "https://api.demo.example";

pub(super) fn failed(what: &str) -> impl Fn(&dyn std::fmt::Display) -> CliError + '_ {
    move |e| CliError::failed(format!("demo setup failed ({what}): {e}"))
}

pub(super) fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

pub(super) fn random_secret() -> Result<String, CliError> {
    let mut bytes = [0_u8; 24];
    SystemRandomSource
        .fill(&mut bytes)
        .map_err(|e| failed("randomness")(&e))?;
    Ok(b64(&bytes))
}

/// A temporary directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Result<Self, CliError> {
        let path = std::env::temp_dir().join(format!(
            "dpop-demo-{}-{}",
            std::process::id(),
            random_secret()?.get(..8).unwrap_or("x")
        ));
        let mut b = std::fs::DirBuilder::new();
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut b, 0o700);
        b.recursive(true)
            .create(&path)
            .map_err(|e| failed("temporary directory")(&e))?;
        Ok(Self(path))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub(super) async fn listen() -> Result<(TcpListener, SocketAddr), CliError> {
    let l = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| failed("listen")(&e))?;
    let a = l.local_addr().map_err(|e| failed("listen")(&e))?;
    Ok((l, a))
}

pub(super) fn spawn_router(listener: TcpListener, router: axum::Router) {
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
}

/// The sample API: what the gateway protects. It sees only the verified identity.
fn sample_api() -> axum::Router {
    let caller = |h: &http::HeaderMap| {
        h.get("x-dpop-subject")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("?")
            .to_owned()
    };
    axum::Router::new()
        .route(
            "/v1/items",
            get(move |h: http::HeaderMap| async move {
                axum::Json(json!({"items": ["apple", "pear"], "caller": caller(&h)}))
            }),
        )
        .route(
            "/v1/deploy",
            post(move |h: http::HeaderMap| async move {
                axum::Json(json!({"deployed": "shop v42", "by": caller(&h)}))
            }),
        )
}

/// What the demo's client saw on the wire (the middleware's retries included).
#[derive(Clone, Debug, Default)]
pub(super) struct Seen {
    pub(super) statuses: Vec<(u16, String)>,
    pub(super) last_request: Option<(String, reqwest::header::HeaderMap)>,
    pub(super) nonce: Option<String>,
}

/// Records each exchange below the DPoP middleware.
#[derive(Clone, Debug, Default)]
pub(super) struct Recorder(Arc<Mutex<Seen>>);

impl Recorder {
    pub(super) fn take(&self) -> Seen {
        self.0
            .lock()
            .map(|mut s| std::mem::take(&mut *s))
            .unwrap_or_default()
    }
}

pub(super) fn challenge_error(headers: &reqwest::header::HeaderMap) -> String {
    headers
        .get("www-authenticate")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| dpop_core::challenge::parse(v).ok())
        .and_then(|cs| cs.into_iter().find_map(|c| c.error().map(str::to_owned)))
        .unwrap_or_default()
}

#[async_trait::async_trait]
impl reqwest_middleware::Middleware for Recorder {
    async fn handle(
        &self,
        req: reqwest::Request,
        extensions: &mut http::Extensions,
        next: reqwest_middleware::Next<'_>,
    ) -> reqwest_middleware::Result<reqwest::Response> {
        let sent = (req.url().to_string(), req.headers().clone());
        let response = next.run(req, extensions).await?;
        if let Ok(mut s) = self.0.lock() {
            s.statuses.push((
                response.status().as_u16(),
                challenge_error(response.headers()),
            ));
            s.last_request = Some(sent);
            if let Some(n) = response
                .headers()
                .get("dpop-nonce")
                .and_then(|v| v.to_str().ok())
            {
                s.nonce = Some(n.to_owned());
            }
        }
        Ok(response)
    }
}

/// Everything the scenarios need.
pub(super) struct System {
    _dir: TempDir,
    pub(super) dir: PathBuf,
    pub(super) issuer_url: String,
    pub(super) gateway_url: String,
    pub(super) issuer_config: dpop_issuer::IssuerConfig,
    pub(super) billing_secret: String,
    pub(super) ci: CiSystem,
    pub(super) plain: reqwest::Client,
}

pub(super) async fn start() -> Result<System, CliError> {
    let dir = TempDir::new()?;
    let path = dir.0.clone();
    let ci = CiSystem::start().await?;

    // The sample API.
    let (api_listener, api_addr) = listen().await?;
    spawn_router(api_listener, sample_api());

    // The issuer.
    let (issuer_listener, issuer_addr) = listen().await?;
    let issuer_url = format!("http://{issuer_addr}");
    let billing_secret = random_secret()?;
    let gateway_secret = random_secret()?;
    let env: BTreeMap<String, String> = [
        ("BILLING".to_owned(), billing_secret.clone()),
        ("GATEWAY".to_owned(), gateway_secret.clone()),
    ]
    .into();
    let issuer_toml = format!(
        r#"
issuer = "{issuer_url}"
listen = "{issuer_addr}"
data_dir = "issuer"

[[clients]]
id = "billing"
secret = "env:BILLING"
grants = ["client_credentials"]
scopes = ["items:read"]
audiences = ["{API_AUD}"]

[[clients]]
id = "ci"
grants = ["urn:ietf:params:oauth:grant-type:token-exchange"]
audiences = ["{API_AUD}"]

[[clients]]
id = "gateway"
secret = "env:GATEWAY"
grants = []
introspection = true

[[trust]]
name = "ci"
issuer = "{ci_url}"
audience = "{issuer_url}"

[[trust.rules]]
claims = {{ repository = "acme/shop", ref = "refs/heads/main" }}
workload = "shop-deployer"
scopes = ["deploy"]
clients = ["ci"]
"#,
        ci_url = ci.url
    );
    let issuer_config = dpop_issuer::IssuerConfig::from_toml(&issuer_toml, &path, &env)
        .map_err(|e| failed("issuer configuration")(&e))?;
    let issuer = dpop_issuer::Issuer::open(
        dpop_issuer::IssuerConfig::from_toml(&issuer_toml, &path, &env)
            .map_err(|e| failed("issuer configuration")(&e))?,
    )
    .await
    .map_err(|e| failed("issuer")(&e))?;
    tokio::spawn(async move {
        let _ = issuer
            .serve_on(issuer_listener, std::future::pending())
            .await;
    });

    // The gateway, checking tokens by introspection so revocation shows at once. Its
    // port is chosen first, since clients' proofs name it (`allowed_hosts`).
    let gateway_port = {
        let (probe, addr) = listen().await?;
        drop(probe);
        addr.port()
    };
    let gateway_config = dpop_gateway::GatewayConfig::from_toml(&format!(
        r#"listen = "127.0.0.1:{gateway_port}"
allowed_hosts = ["127.0.0.1:{gateway_port}"]
upstream = "http://{api_addr}"
issuer = "{issuer_url}"
audience = "{API_AUD}"

[nonce]
require = true
secrets = ["{nonce}"]

[introspection]
endpoint = "{issuer_url}/introspect"
client_id = "gateway"
client_secret = "{gateway_secret}"
cache_ttl_secs = 0
"#,
        nonce = b64(&{
            let mut s = [0_u8; 32];
            SystemRandomSource
                .fill(&mut s)
                .map_err(|e| failed("randomness")(&e))?;
            s
        })
    ))
    .map_err(|e| failed("gateway configuration")(&e))?;
    let gateway = dpop_gateway::Gateway::bind(gateway_config)
        .await
        .map_err(|e| failed("gateway")(&e))?;
    let gateway_addr = gateway.local_addr().map_err(|e| failed("gateway")(&e))?;
    tokio::spawn(gateway.serve(std::future::pending()));

    let plain = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| failed("HTTP client")(&e))?;
    Ok(System {
        dir: path,
        _dir: dir,
        issuer_url,
        gateway_url: format!("http://{gateway_addr}"),
        issuer_config,
        billing_secret,
        ci,
        plain,
    })
}

/// A client: a key, the DPoP middleware with token source, and what it saw.
pub(super) struct Client {
    pub(super) key: PrivateKey,
    pub(super) http: reqwest_middleware::ClientWithMiddleware,
    pub(super) recorder: Recorder,
}

impl System {
    pub(super) fn client(
        &self,
        auth: ClientAuth,
        grant: Grant,
        scope: Option<&str>,
    ) -> Result<Client, CliError> {
        let key = PrivateKey::generate(Algorithm::Es256).map_err(|e| failed("client key")(&e))?;
        let pem = key.to_pkcs8_pem().map_err(|e| failed("client key")(&e))?;
        let client_key = ClientKey::from_text(&pem).map_err(|e| failed("client key")(&e))?;
        let dpop = DpopMiddleware::new(client_key);
        let mut request = TokenRequest::new(&self.issuer_url, auth, grant);
        request.scope = scope.map(str::to_owned);
        let tokens = OAuthTokens::new(request, &dpop).map_err(|e| failed("token source")(&e))?;
        let recorder = Recorder::default();
        let http = reqwest_middleware::ClientBuilder::new(self.plain.clone())
            .with(dpop.with_tokens(Arc::new(tokens)))
            .with(recorder.clone())
            .build();
        Ok(Client {
            key,
            http,
            recorder,
        })
    }

    /// A raw request: exactly these headers, no middleware.
    pub(super) async fn raw(
        &self,
        method: &str,
        url: &str,
        headers: &[(&str, String)],
    ) -> (u16, String) {
        let mut r = self.plain.request(
            reqwest::Method::from_bytes(method.as_bytes()).unwrap_or(reqwest::Method::GET),
            url,
        );
        for (k, v) in headers {
            r = r.header(*k, v);
        }
        match r.send().await {
            Ok(resp) => (resp.status().as_u16(), challenge_error(resp.headers())),
            Err(e) => (0, format!("transport error: {e}")),
        }
    }
}
