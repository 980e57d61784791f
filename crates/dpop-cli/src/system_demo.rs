//! `dpop demo`: the whole system on loopback, in this process. An issuer (SQLite in a
//! temporary directory), a gateway (memory replay store, nonces on, introspection) in
//! front of a small sample API, a stand-in CI system that issues job tokens; then a
//! client goes through them, and the attacks DPoP exists to stop are tried one by one.
//! One table row per scenario; the exit status is 0 only when every scenario behaved
//! as it should.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::routing::{get, post};
use base64::Engine as _;
use dpop_client::{
    ClientAuth, ClientKey, DpopMiddleware, Grant, OAuthTokens, SubjectToken, TokenRequest,
};
use dpop_core::{
    Algorithm, PrivateKey, ProofBuilder, RandomSource as _, SystemRandomSource, UnixTime,
};
use serde_json::json;
use tokio::net::TcpListener;

use crate::clock::now;
use crate::error::{CliError, EXIT_INVALID, EXIT_OK};

const API_AUD: &str = "https://api.demo.example";
const JWT_TYPE: &str = "urn:ietf:params:oauth:token-type:jwt";

fn failed(what: &str) -> impl Fn(&dyn std::fmt::Display) -> CliError + '_ {
    move |e| CliError::failed(format!("demo setup failed ({what}): {e}"))
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn random_secret() -> Result<String, CliError> {
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

async fn listen() -> Result<(TcpListener, SocketAddr), CliError> {
    let l = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| failed("listen")(&e))?;
    let a = l.local_addr().map_err(|e| failed("listen")(&e))?;
    Ok((l, a))
}

fn spawn_router(listener: TcpListener, router: axum::Router) {
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

/// A stand-in CI system (think GitHub Actions): OpenID metadata, JWKS, and job tokens.
struct CiSystem {
    url: String,
    key: PrivateKey,
}

impl CiSystem {
    async fn start() -> Result<Self, CliError> {
        let (listener, addr) = listen().await?;
        let url = format!("http://{addr}");
        let key = PrivateKey::generate(Algorithm::Es256).map_err(|e| failed("CI key")(&e))?;
        let mut jwk = key.public_jwk().to_json_value();
        jwk["kid"] = "ci-1".into();
        let jwks = json!({ "keys": [jwk] });
        let meta = json!({ "issuer": url, "jwks_uri": format!("{url}/jwks") });
        let router = axum::Router::new()
            .route(
                "/.well-known/openid-configuration",
                get(move || async move { axum::Json(meta) }),
            )
            .route("/jwks", get(move || async move { axum::Json(jwks) }));
        spawn_router(listener, router);
        Ok(Self { url, key })
    }

    /// A job token for a workflow of `repository` on `git_ref`, for `audience`.
    fn job_token(
        &self,
        repository: &str,
        git_ref: &str,
        audience: &str,
        now: UnixTime,
    ) -> Result<String, CliError> {
        let header = json!({"alg": "ES256", "typ": "JWT", "kid": "ci-1"});
        let claims = json!({
            "iss": self.url,
            "sub": format!("repo:{repository}:ref:{git_ref}"),
            "aud": audience,
            "repository": repository,
            "ref": git_ref,
            "iat": now.as_secs(),
            "exp": now.as_secs() + 300,
            "jti": random_secret()?,
        });
        dpop_core::jws::sign_compact(&header, &claims, &self.key)
            .map_err(|e| failed("CI token")(&e))
    }
}

/// What the demo's client saw on the wire (the middleware's retries included).
#[derive(Clone, Debug, Default)]
struct Seen {
    statuses: Vec<(u16, String)>,
    last_request: Option<(String, reqwest::header::HeaderMap)>,
    nonce: Option<String>,
}

/// Records each exchange below the DPoP middleware.
#[derive(Clone, Debug, Default)]
struct Recorder(Arc<Mutex<Seen>>);

impl Recorder {
    fn take(&self) -> Seen {
        self.0
            .lock()
            .map(|mut s| std::mem::take(&mut *s))
            .unwrap_or_default()
    }
}

fn challenge_error(headers: &reqwest::header::HeaderMap) -> String {
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

/// One scenario's outcome.
struct Row {
    scenario: &'static str,
    why: &'static str,
    expected: String,
    observed: String,
    ok: bool,
}

/// Everything the scenarios need.
struct System {
    _dir: TempDir,
    dir: PathBuf,
    issuer_url: String,
    gateway_url: String,
    issuer_config: dpop_issuer::IssuerConfig,
    billing_secret: String,
    ci: CiSystem,
    plain: reqwest::Client,
}

async fn start() -> Result<System, CliError> {
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
struct Client {
    key: PrivateKey,
    http: reqwest_middleware::ClientWithMiddleware,
    recorder: Recorder,
}

impl System {
    fn client(
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
    async fn raw(&self, method: &str, url: &str, headers: &[(&str, String)]) -> (u16, String) {
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

fn describe(seen: &[(u16, String)]) -> String {
    seen.iter()
        .map(|(s, e)| {
            if e.is_empty() {
                s.to_string()
            } else {
                format!("{s} {e}")
            }
        })
        .collect::<Vec<_>>()
        .join(", then ")
}

fn proof(
    key: &PrivateKey,
    method: &str,
    url: &str,
    token: &str,
    nonce: Option<&str>,
    iat: UnixTime,
) -> String {
    let build = || -> Result<String, dpop_core::Error> {
        let mut b = ProofBuilder::new(method, url)?.access_token(token);
        if let Some(n) = nonce {
            b = b.nonce(n)?;
        }
        b.sign(key, &SystemRandomSource, iat)
    };
    build().unwrap_or_default()
}

fn token_of(headers: &reqwest::header::HeaderMap) -> String {
    headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("DPoP "))
        .unwrap_or_default()
        .to_owned()
}

#[expect(
    clippy::too_many_lines,
    reason = "one scenario after the other reads best"
)]
async fn scenarios(sys: &System) -> Result<Vec<Row>, CliError> {
    let mut rows = Vec::new();
    let items = format!("{}/v1/items", sys.gateway_url);
    let billing = sys.client(
        ClientAuth::Secret {
            client_id: "billing".into(),
            secret: Arc::new(sys.billing_secret.clone().into()),
        },
        Grant::ClientCredentials,
        Some("items:read"),
    )?;

    // 1. A DPoP call: the token endpoint and the gateway both ask for a nonce first.
    let r = billing.http.get(&items).send().await;
    let status = r.as_ref().map_or(0, |r| r.status().as_u16());
    let body = match r {
        Ok(r) => r.text().await.unwrap_or_default(),
        Err(e) => e.to_string(),
    };
    let seen = billing.recorder.take();
    let ok = status == 200
        && seen
            .statuses
            .first()
            .is_some_and(|(s, e)| *s == 401 && e == "use_dpop_nonce")
        && body.contains("\"caller\":\"billing\"");
    rows.push(Row {
        scenario: "DPoP call with a fresh token, after a nonce challenge",
        why: "the proof is signed by the key the token is bound to; the gateway first hands out a nonce",
        expected: "401 use_dpop_nonce, then 200".into(),
        observed: describe(&seen.statuses),
        ok,
    });
    let (sent_url, sent_headers) = seen.last_request.clone().unwrap_or_default();
    let token = token_of(&sent_headers);
    let nonce = seen.nonce.clone();

    // 2. The same request, byte for byte: the proof was used.
    let replay: Vec<(&str, String)> = sent_headers
        .iter()
        .filter(|(k, _)| *k == "authorization" || *k == "dpop")
        .filter_map(|(k, v)| v.to_str().ok().map(|v| (k.as_str(), v.to_owned())))
        .collect();
    let (s, e) = sys.raw("GET", &sent_url, &replay).await;
    rows.push(Row {
        scenario: "The same proof replayed",
        why: "every proof's jti is recorded: a captured request cannot be sent again",
        expected: "401 invalid_dpop_proof".into(),
        observed: describe(&[(s, e.clone())]),
        ok: s == 401 && e == "invalid_dpop_proof",
    });

    let now = now()?;
    let nonce = nonce.as_deref();
    // 3. The token stolen (from a log, a CI cache) and used with the thief's key.
    let thief = PrivateKey::generate(Algorithm::Es256).map_err(|e| failed("key")(&e))?;
    let (s, e) = sys
        .raw(
            "GET",
            &items,
            &[
                ("authorization", format!("DPoP {token}")),
                ("dpop", proof(&thief, "GET", &items, &token, nonce, now)),
            ],
        )
        .await;
    rows.push(Row {
        scenario: "The token stolen and used with another key",
        why: "the token's cnf.jkt names the client's key, not the thief's",
        expected: "401 invalid_token".into(),
        observed: describe(&[(s, e.clone())]),
        ok: s == 401 && e == "invalid_token",
    });

    // 4. The token presented as a Bearer token, without proof.
    let (s, e) = sys
        .raw(
            "GET",
            &items,
            &[("authorization", format!("Bearer {token}"))],
        )
        .await;
    rows.push(Row {
        scenario: "The token sent as a Bearer token",
        why: "a DPoP-bound token is accepted only with a proof from its key",
        expected: "401".into(),
        observed: describe(&[(s, e.clone())]),
        ok: s == 401,
    });

    // 5. A proof made for another request: another URL, then another method.
    let other = format!("{}/v1/admin", sys.gateway_url);
    let (s1, e1) = sys
        .raw(
            "GET",
            &items,
            &[
                ("authorization", format!("DPoP {token}")),
                (
                    "dpop",
                    proof(&billing.key, "GET", &other, &token, nonce, now),
                ),
            ],
        )
        .await;
    let (s2, e2) = sys
        .raw(
            "GET",
            &items,
            &[
                ("authorization", format!("DPoP {token}")),
                (
                    "dpop",
                    proof(&billing.key, "DELETE", &items, &token, nonce, now),
                ),
            ],
        )
        .await;
    rows.push(Row {
        scenario: "A proof made for another URL, then another method",
        why: "a proof signs one method and URL (htm, htu)",
        expected: "401 invalid_dpop_proof, twice".into(),
        observed: describe(&[(s1, e1.clone()), (s2, e2.clone())]),
        ok: s1 == 401 && e1 == "invalid_dpop_proof" && s2 == 401 && e2 == "invalid_dpop_proof",
    });

    // 6. A proof signed five minutes ago (captured, then used late).
    let stale = now.saturating_sub(Duration::from_secs(300));
    let (s, e) = sys
        .raw(
            "GET",
            &items,
            &[
                ("authorization", format!("DPoP {token}")),
                (
                    "dpop",
                    proof(&billing.key, "GET", &items, &token, nonce, stale),
                ),
            ],
        )
        .await;
    rows.push(Row {
        scenario: "A stale proof (signed 5 minutes ago)",
        why: "proofs are accepted for 60 s after their iat",
        expected: "401 invalid_dpop_proof".into(),
        observed: describe(&[(s, e.clone())]),
        ok: s == 401 && e == "invalid_dpop_proof",
    });

    // 7. A CI job: no stored secret, only its short job token, exchanged (RFC 8693) for
    //    a DPoP-bound token for its own fresh key; then it deploys.
    let job_token = sys
        .ci
        .job_token("acme/shop", "refs/heads/main", &sys.issuer_url, now)?;
    let ci = sys.client(
        ClientAuth::Public {
            client_id: "ci".into(),
        },
        Grant::TokenExchange {
            subject: SubjectToken::Value(Arc::new(job_token.into())),
            subject_type: JWT_TYPE.into(),
        },
        Some("deploy"),
    )?;
    let r = ci
        .http
        .post(format!("{}/v1/deploy", sys.gateway_url))
        .body("")
        .send()
        .await;
    let status = r.as_ref().map_or(0, |r| r.status().as_u16());
    let body = match r {
        Ok(r) => r.text().await.unwrap_or_default(),
        Err(e) => e.to_string(),
    };
    let seen = ci.recorder.take();
    rows.push(Row {
        scenario: "A CI job exchanges its job token and deploys",
        why: "its job token matched a trust rule; the new token is bound to the job's own key",
        expected: "200, as shop-deployer".into(),
        observed: format!(
            "{}{}",
            describe(&seen.statuses),
            if body.contains("shop-deployer") {
                ", as shop-deployer"
            } else {
                ""
            }
        ),
        ok: status == 200 && body.contains("\"by\":\"shop-deployer\""),
    });
    // A job token from another branch is not trusted for deployment.
    let feature = sys
        .ci
        .job_token("acme/shop", "refs/heads/feature", &sys.issuer_url, now)?;
    let ci2 = sys.client(
        ClientAuth::Public {
            client_id: "ci".into(),
        },
        Grant::TokenExchange {
            subject: SubjectToken::Value(Arc::new(feature.into())),
            subject_type: JWT_TYPE.into(),
        },
        Some("deploy"),
    )?;
    let r = ci2
        .http
        .post(format!("{}/v1/deploy", sys.gateway_url))
        .body("")
        .send()
        .await;
    let refused = match &r {
        Err(e) => format!("{e:#}").contains("invalid_grant"),
        Ok(_) => false,
    };
    rows.push(Row {
        scenario: "A job token from another branch asks to deploy",
        why: "no trust rule lets other branches deploy",
        expected: "refused: invalid_grant".into(),
        observed: match r {
            Ok(r) => format!("{}", r.status().as_u16()),
            Err(_) if refused => "refused: invalid_grant".into(),
            Err(e) => format!("{e:#}"),
        },
        ok: refused,
    });

    // 8. Offboarding: the billing client is disabled; its next call fails.
    dpop_issuer::set_client_disabled(&sys.issuer_config, "billing", true, now)
        .await
        .map_err(|e| failed("disable")(&e))?;
    // The gateway learns by introspection that the token is no longer active; the
    // client's attempt to get a new one is refused too.
    let r = billing.http.get(&items).send().await;
    let seen = billing.recorder.take();
    let (ok, tail) = match r {
        Ok(resp) => (resp.status().as_u16() == 401, String::new()),
        Err(e) => {
            let refused = format!("{e:#}").contains("invalid_client");
            (refused, ", new token refused: invalid_client".to_owned())
        }
    };
    rows.push(Row {
        scenario: "The client is disabled; its next call",
        why: "the gateway introspects tokens; the issuer reports the client's tokens inactive",
        expected: "401 invalid_token".into(),
        observed: format!("{}{tail}", describe(&seen.statuses)),
        ok: ok
            && seen
                .statuses
                .first()
                .is_some_and(|(s, e)| *s == 401 && e == "invalid_token"),
    });
    Ok(rows)
}

fn table(out: &mut dyn Write, rows: &[Row]) -> std::io::Result<()> {
    let w1 = rows.iter().map(|r| r.scenario.len()).max().unwrap_or(0);
    let w2 = rows
        .iter()
        .map(|r| r.expected.len())
        .max()
        .unwrap_or(0)
        .max(8);
    writeln!(out, "    {:w1$}  {:w2$}  observed", "scenario", "expected")?;
    for (i, r) in rows.iter().enumerate() {
        writeln!(
            out,
            "{} {:>2} {:w1$}  {:w2$}  {}",
            if r.ok { "✓" } else { "✗" },
            i + 1,
            r.scenario,
            r.expected,
            r.observed
        )?;
        writeln!(out, "        {}", r.why)?;
    }
    Ok(())
}

/// Runs the demo; with `keep_running`, leaves the services up until Ctrl-C.
pub(crate) fn run(out: &mut dyn Write, keep_running: bool) -> Result<ExitCode, CliError> {
    crate::commands::runtime()?.block_on(async {
        let w = |e: std::io::Error| CliError::stdout(&e);
        writeln!(
            out,
            "Starting on loopback: an issuer (SQLite), a gateway (nonces, memory replay store,"
        )
        .map_err(w)?;
        writeln!(
            out,
            "introspection), a sample API behind it, and a stand-in CI system."
        )
        .map_err(w)?;
        let sys = start().await?;
        writeln!(
            out,
            "  issuer   {}\n  gateway  {}  (protects the sample API)\n",
            sys.issuer_url, sys.gateway_url
        )
        .map_err(w)?;
        let rows = scenarios(&sys).await?;
        table(out, &rows).map_err(w)?;
        let failures = rows.iter().filter(|r| !r.ok).count();
        if failures == 0 {
            writeln!(
                out,
                "\nAll {} scenarios behaved as they should.",
                rows.len()
            )
            .map_err(w)?;
        } else {
            writeln!(
                out,
                "\n{failures} of {} scenarios did NOT behave as they should.",
                rows.len()
            )
            .map_err(w)?;
        }
        if keep_running {
            keep(out, &sys).await?;
        }
        Ok(ExitCode::from(if failures == 0 {
            EXIT_OK
        } else {
            EXIT_INVALID
        }))
    })
}

/// Re-enables the billing client, writes a key and prints commands to try, then waits.
async fn keep(out: &mut dyn Write, sys: &System) -> Result<(), CliError> {
    let w = |e: std::io::Error| CliError::stdout(&e);
    // Tokens are revoked by the second: re-enable in a later one.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    dpop_issuer::set_client_disabled(&sys.issuer_config, "billing", false, now()?)
        .await
        .map_err(|e| failed("enable")(&e))?;
    let key_path = sys.dir.join("client.pem");
    write_key(&key_path)?;
    writeln!(
        out,
        "\nThe services stay up until Ctrl-C. Try, in another shell:\n"
    )
    .map_err(w)?;
    writeln!(out, "  export BILLING_SECRET='{}'", sys.billing_secret).map_err(w)?;
    writeln!(
        out,
        "  dpop curl {}/v1/items --key {} \\\n      --issuer {} --client-id billing --client-secret-env BILLING_SECRET -v",
        sys.gateway_url,
        key_path.display(),
        sys.issuer_url
    )
    .map_err(w)?;
    writeln!(
        out,
        "  dpop token --issuer {} --client-id billing --client-secret-env BILLING_SECRET --key {}",
        sys.issuer_url,
        key_path.display()
    )
    .map_err(w)?;
    writeln!(
        out,
        "  curl -i {}/v1/items    # no token: 401",
        sys.gateway_url
    )
    .map_err(w)?;
    out.flush().map_err(w)?;
    dpop_server::shutdown_signal().await;
    Ok(())
}

fn write_key(path: &Path) -> Result<(), CliError> {
    let key = PrivateKey::generate(Algorithm::Es256).map_err(|e| failed("key")(&e))?;
    let pem = key.to_pkcs8_pem().map_err(|e| failed("key")(&e))?;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut f = options.open(path).map_err(|e| failed("key file")(&e))?;
    f.write_all(pem.as_bytes())
        .map_err(|e| failed("key file")(&e))
}
