//! The whole system as it is deployed, every part a real process: `dpop issuer`, two
//! `dpop gateway` instances sharing Redis and one nonce secret behind a load balancer
//! (a TCP forwarder in this file), an echo upstream, and clients (the `dpop-client`
//! middleware and `dpop curl`). Each test is one operational scenario: replays and
//! nonces across instances, refresh tokens across issuer restarts and across issuer
//! instances on one PostgreSQL, revocation through introspection, and outages of the
//! upstream, Redis and the issuer.
//!
//! Redis: `DPOP_TEST_REDIS_URL`, else a private `redis-server` (`DPOP_TEST_REDIS_SERVER`
//! or `PATH`). PostgreSQL: `DPOP_TEST_POSTGRES_URL`, one schema per test. A test whose
//! service is missing says `skipped: ...` on stderr and passes.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dpop_client::{ClientAuth, ClientKey, DpopMiddleware, Grant, OAuthTokens, TokenRequest};
use dpop_core::{Algorithm, PrivateKey};
use dpop_test::{
    ClientFixture, Gateway, HttpResponse, IssuerFixture, MockIssuer, PgSchema, RedisServer,
    TestUpstream, TokenSpec, free_port, http_get, wait_for_tcp,
};
use serde_json::Value;
use tokio::task::JoinSet;

use crate::common::{
    SVC_SECRET, TempDir, call, claims, gateway_command, gateway_flags, introspecting_gateway_toml,
    issuer_command, loopback_host_rule, p, post_form, private_redis, random_secret, redis,
    revoke_as_svc, run_dpop, spawn_server, start_issuer, token_attempt, www,
};

const GRANT_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const TT_ACCESS: &str = "urn:ietf:params:oauth:token-type:access_token";
const TT_JWT: &str = "urn:ietf:params:oauth:token-type:jwt";
/// The `aud` of the CI job tokens the issuers trust ([`IssuerSetup::trust`]).
const CI_AUD: &str = "https://issuer.test";

// ---- files and processes ----

/// The clients every issuer here knows:
/// - `svc`: a service, client credentials with a secret (scopes `read write`);
/// - `agent`: a public client that exchanges CI job tokens ([`IssuerSetup::trust`]) and
///   refreshes (key-bound refresh tokens, RFC 9449 §5);
/// - `gateway`: the introspecting gateway.
fn clients(fixture: IssuerFixture) -> IssuerFixture {
    fixture
        .client(
            ClientFixture::confidential("svc", "env:SVC_SECRET")
                .grants(["client_credentials"])
                .scopes(["read", "write"])
                .default_scopes(["read"])
                .audiences(["https://api.example.com"]),
        )
        .client(
            ClientFixture::public("agent")
                .grants([GRANT_EXCHANGE, "refresh_token"])
                .scopes(["read"])
                .audiences(["https://api.example.com"]),
        )
        .client(
            ClientFixture::confidential("gateway", "env:GW_SECRET")
                .grants(Vec::<String>::new())
                .line("introspection = true"),
        )
}

/// One `dpop issuer` configuration file: its own port and data directory; the issuer
/// identifier is `http://127.0.0.1:PORT` unless the test says otherwise (instances
/// behind one load balancer share one).
struct IssuerSetup {
    config: PathBuf,
    port: u16,
    /// The issuer identifier (`iss`, and the base of the endpoints in its metadata).
    id: String,
}

impl IssuerSetup {
    /// `name`.toml and `name`-data in `dir`; SQLite in the data directory unless
    /// `database` is given.
    fn new(dir: &TempDir, name: &str, id: Option<&str>, database: Option<&str>) -> Self {
        let port = free_port();
        let id = id.map_or_else(|| format!("http://127.0.0.1:{port}"), str::to_owned);
        let mut fixture = IssuerFixture::new(&id)
            .top(format!("listen = \"127.0.0.1:{port}\""))
            .data_dir(format!("{name}-data"));
        if let Some(d) = database {
            fixture = fixture.database(d);
        }
        let text = clients(fixture).render();
        let config = dir.file(&format!("{name}.toml"));
        std::fs::write(&config, text).unwrap();
        Self { config, port, id }
    }

    /// `http://127.0.0.1:PORT`: where this instance listens.
    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Where token requests to this instance go.
    fn token_url(&self) -> String {
        format!("{}/token", self.url())
    }

    /// The `htu` of token-endpoint proofs: the identifier's token endpoint.
    fn token_htu(&self) -> String {
        format!("{}/token", self.id)
    }

    async fn start(&self) -> Gateway {
        start_issuer(&self.config, self.port).await
    }

    /// Adds a `[[trust]]` for `ci` to the configuration (before [`IssuerSetup::start`]):
    /// its job tokens for `acme/shop` are exchanged by `agent` for workload
    /// `shop-deployer`, with a refresh grant that may outlive the job token.
    fn trust(&self, ci: &MockIssuer) {
        use std::io::Write as _;
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&self.config)
            .unwrap();
        write!(
            file,
            r#"
[[trust]]
name = "ci"
issuer = "{iss}"
audience = "{CI_AUD}"

[[trust.rules]]
claims = {{ repository = "acme/shop" }}
workload = "shop-deployer"
scopes = ["read"]
clients = ["agent"]
outlive_subject = true
"#,
            iss = ci.url()
        )
        .unwrap();
    }

    /// Runs a management subcommand (`disable-client svc`) to completion.
    async fn manage(&self, args: &[&str]) -> std::process::Output {
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["--config", p(&self.config)]);
        let mut cmd = issuer_command(&all);
        cmd.stdin(Stdio::null());
        tokio::task::spawn_blocking(move || cmd.output())
            .await
            .unwrap()
            .unwrap()
    }
}

/// A running `dpop gateway`.
struct Gw {
    process: Gateway,
    /// `http://127.0.0.1:PORT`.
    url: String,
    port: u16,
    /// `http://127.0.0.1:ADMIN_PORT`.
    admin: String,
}

impl Gw {
    /// `dpop gateway --listen … --admin-listen …` then `args`, with `env` (and no nonce
    /// secret or log level from the caller's shell).
    async fn start(args: &[String], env: &[(&str, &str)]) -> Self {
        let (port, admin) = (free_port(), free_port());
        let mut cmd = gateway_command();
        cmd.args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--admin-listen", &format!("127.0.0.1:{admin}")])
            .args(args)
            .args(loopback_host_rule(args, port));
        for (k, v) in env {
            cmd.env(k, v);
        }
        let what = format!("dpop gateway {args:?}");
        let process = spawn_server(cmd, port, Duration::from_secs(30), &what).await;
        let url = format!("http://{}", process.addr());
        let admin_addr = SocketAddr::from(([127, 0, 0, 1], admin));
        wait_for_tcp(admin_addr, Duration::from_secs(5))
            .await
            .unwrap();
        Self {
            process,
            url,
            port,
            admin: format!("http://{admin_addr}"),
        }
    }

    async fn admin_get(&self, path: &str) -> HttpResponse {
        http_get(&format!("{}{path}", self.admin)).await.unwrap()
    }

    /// How many requests this instance accepted, from its metrics.
    async fn accepted(&self) -> u64 {
        let metrics = self.admin_get("/metrics").await.text();
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(r#"dpop_requests_total{outcome="accepted",reason=""} "#))
            .map_or(0, |n| n.trim().parse().unwrap())
    }
}

/// A TCP load balancer on loopback: every new connection goes to the backend port set
/// last. The gateways behind it share its URL as `--public-url`, as instances behind a
/// real load balancer share the public origin, so a proof is valid at any of them and
/// only the shared replay store tells a replay from a first use. It keeps the bytes each
/// client sent, as an eavesdropper on the way would.
struct Balancer {
    addr: SocketAddr,
    backend: Arc<AtomicU16>,
    /// Per connection, in accept order: what the client sent.
    captured: Arc<Mutex<Vec<Vec<u8>>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Balancer {
    async fn start(backend: u16) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let target = Arc::new(AtomicU16::new(backend));
        let captured = Arc::new(Mutex::new(Vec::new()));
        let (t, all) = (Arc::clone(&target), Arc::clone(&captured));
        let task = tokio::spawn(async move {
            // Owned by the task: aborting it cuts every forwarded connection.
            let mut connections = JoinSet::new();
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    continue;
                };
                let port = t.load(Ordering::SeqCst);
                let all = Arc::clone(&all);
                connections.spawn(async move {
                    if let Ok(server) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
                        forward(client, server, &all).await;
                    }
                });
                while connections.try_join_next().is_some() {}
            }
        });
        Self {
            addr,
            backend: target,
            captured,
            task,
        }
    }

    /// The bytes of the first connection whose request contains `needle`.
    fn sent_with(&self, needle: &str) -> Vec<u8> {
        self.captured
            .lock()
            .unwrap()
            .iter()
            .find(|c| c.windows(needle.len()).any(|w| w == needle.as_bytes()))
            .cloned()
            .unwrap_or_else(|| panic!("no connection carried {needle}"))
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// New connections go to `port` from now on.
    fn route_to(&self, port: u16) {
        self.backend.store(port, Ordering::SeqCst);
    }
}

/// Copies both ways between `client` and `server`, appending what the client sends to a
/// new entry of `captured`.
async fn forward(
    client: tokio::net::TcpStream,
    server: tokio::net::TcpStream,
    captured: &Mutex<Vec<Vec<u8>>>,
) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let index = {
        let mut all = captured.lock().unwrap();
        all.push(Vec::new());
        all.len() - 1
    };
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let up = async {
        let mut buf = vec![0u8; 16 * 1024];
        while let Ok(n) = client_read.read(&mut buf).await {
            if n == 0 {
                break;
            }
            captured.lock().unwrap()[index].extend_from_slice(&buf[..n]);
            if server_write.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
        let _ = server_write.shutdown().await;
    };
    let down = async {
        let _ = tokio::io::copy(&mut server_read, &mut client_write).await;
        let _ = client_write.shutdown().await;
    };
    tokio::join!(up, down);
}

/// Sends `request` (raw bytes, one HTTP/1.1 request) to `addr` and reads the response's
/// status and head (the responses here have no body, or a `Content-Length` one).
async fn raw_exchange(addr: SocketAddr, request: &[u8]) -> (u16, String) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf))
            .await
            .expect("a response in time")
            .unwrap();
        assert!(n > 0, "closed before a response: {got:?}");
        got.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&got[..head_end]).into_owned();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not a response: {head}"));
    (status, head)
}

impl Drop for Balancer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

// ---- tokens ----

/// A token-endpoint client holding one DPoP key and the last nonce any issuer instance
/// gave it (instances share the nonce secret through their database).
struct TokenClient {
    key: PrivateKey,
    nonce: Option<String>,
}

impl TokenClient {
    fn new(key: PrivateKey) -> Self {
        Self { key, nonce: None }
    }

    /// One request to `issuer`'s token endpoint with a fresh proof (and the last nonce),
    /// no retry. Returns the response and the proof sent.
    async fn attempt(
        &mut self,
        issuer: &IssuerSetup,
        form: &[(&str, &str)],
    ) -> (HttpResponse, String) {
        let (r, dpop) = token_attempt(
            &issuer.token_url(),
            &issuer.token_htu(),
            &self.key,
            self.nonce.as_deref(),
            form,
        )
        .await;
        if let Some(n) = r.header("dpop-nonce") {
            self.nonce = Some(n.to_owned());
        }
        (r, dpop)
    }

    /// [`TokenClient::attempt`], answering one nonce challenge.
    async fn post(&mut self, issuer: &IssuerSetup, form: &[(&str, &str)]) -> HttpResponse {
        let (r, _) = self.attempt(issuer, form).await;
        if r.status == 400 && r.json().is_ok_and(|b| b["error"] == "use_dpop_nonce") {
            return self.attempt(issuer, form).await.0;
        }
        r
    }

    /// A client-credentials token for `svc`, bound to the key.
    async fn svc_token(&mut self, issuer: &IssuerSetup) -> String {
        let form = [
            ("grant_type", "client_credentials"),
            ("client_id", "svc"),
            ("client_secret", SVC_SECRET),
        ];
        access_token(&self.post(issuer, &form).await)
    }

    /// `agent` exchanges a job token of `ci` (see [`IssuerSetup::trust`]) and gets an
    /// access token and a refresh token, both bound to the key.
    async fn exchange(&mut self, issuer: &IssuerSetup, ci: &MockIssuer) -> (String, String) {
        let job = job_token(ci);
        let form = [
            ("grant_type", GRANT_EXCHANGE),
            ("client_id", "agent"),
            ("subject_token", job.as_str()),
            ("subject_token_type", TT_JWT),
        ];
        let r = self.post(issuer, &form).await;
        let body = r.json().unwrap_or_else(|_| panic!("{r:?}"));
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(body["token_type"], "DPoP", "{body}");
        assert_eq!(body["issued_token_type"], TT_ACCESS, "{body}");
        let refresh = body["refresh_token"]
            .as_str()
            .unwrap_or_else(|| panic!("no refresh token: {body}"));
        (access_token(&r), refresh.to_owned())
    }
}

/// A CI job token of `ci` for `acme/shop`, valid for 5 minutes.
fn job_token(ci: &MockIssuer) -> String {
    let mut extra = serde_json::Map::new();
    extra.insert("repository".into(), "acme/shop".into());
    ci.mint(&TokenSpec {
        sub: "repo:acme/shop:ref:refs/heads/main".into(),
        aud: CI_AUD.into(),
        typ: Some("JWT".into()),
        extra,
        ..TokenSpec::default()
    })
}

fn refresh_form(refresh_token: &str) -> [(&str, &str); 3] {
    [
        ("grant_type", "refresh_token"),
        ("client_id", "agent"),
        ("refresh_token", refresh_token),
    ]
}

#[track_caller]
fn access_token(r: &HttpResponse) -> String {
    assert_eq!(r.status, 200, "{r:?}");
    let body = r.json().unwrap();
    assert_eq!(body["token_type"], "DPoP", "{body}");
    body["access_token"].as_str().unwrap().to_owned()
}

/// The OAuth error code and description of a token-endpoint refusal.
#[track_caller]
fn oauth_error(r: &HttpResponse) -> (u16, String, String) {
    let body = r.json().unwrap_or_else(|_| panic!("not JSON: {r:?}"));
    let text = |k: &str| body[k].as_str().unwrap_or("").to_owned();
    (r.status, text("error"), text("error_description"))
}

// ---- the client middleware, observed ----

/// What one request attempt of the middleware sent and got.
#[derive(Clone, Debug)]
struct Attempt {
    url: String,
    authorization: String,
    dpop: String,
    status: u16,
    nonce: Option<String>,
}

/// A middleware placed after [`DpopMiddleware`]: it sees every signed attempt (the
/// nonce retry included) as it goes on the wire.
#[derive(Clone, Debug, Default)]
struct Recorder(Arc<Mutex<Vec<Attempt>>>);

impl Recorder {
    fn take(&self) -> Vec<Attempt> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

#[async_trait::async_trait]
impl reqwest_middleware::Middleware for Recorder {
    async fn handle(
        &self,
        req: reqwest::Request,
        extensions: &mut http::Extensions,
        next: reqwest_middleware::Next<'_>,
    ) -> reqwest_middleware::Result<reqwest::Response> {
        let header = |name: &str| {
            req.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned()
        };
        let (authorization, dpop) = (header("authorization"), header("dpop"));
        let url = req.url().to_string();
        let response = next.run(req, extensions).await?;
        let nonce = response
            .headers()
            .get("dpop-nonce")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        self.0.lock().unwrap().push(Attempt {
            url,
            authorization,
            dpop,
            status: response.status().as_u16(),
            nonce,
        });
        Ok(response)
    }
}

/// A `reqwest` client with the DPoP middleware getting `svc`'s tokens from `issuer`,
/// signing with `key`, and a [`Recorder`] behind it. No connection reuse, so each request
/// goes through the load balancer to the backend it points at then.
fn middleware_client(
    issuer: &str,
    key: &PrivateKey,
) -> (reqwest_middleware::ClientWithMiddleware, Recorder) {
    let pem = key.to_pkcs8_pem().unwrap();
    let key = ClientKey::from_private_key(PrivateKey::from_pkcs8_pem(&pem, None).unwrap());
    let dpop = DpopMiddleware::new(key);
    let auth = ClientAuth::Secret {
        client_id: "svc".into(),
        secret: Arc::new(SVC_SECRET.to_owned().into()),
    };
    let tokens = OAuthTokens::new(
        TokenRequest::new(issuer, auth, Grant::ClientCredentials),
        &dpop,
    )
    .unwrap();
    let inner = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let recorder = Recorder::default();
    let client = reqwest_middleware::ClientBuilder::new(inner)
        .with(dpop.with_tokens(Arc::new(tokens)))
        .with(recorder.clone())
        .build();
    (client, recorder)
}

// ---- the system of scenarios 1 and 2 ----

/// `dpop issuer` (SQLite), two `dpop gateway` instances with one Redis, one nonce secret
/// and nonces required, behind a [`Balancer`] whose URL is their public URL, in front
/// of one upstream.
struct System {
    _dir: TempDir,
    issuer: IssuerSetup,
    issuer_process: Gateway,
    upstream: TestUpstream,
    a: Gw,
    b: Gw,
    lb: Balancer,
    _redis: Option<RedisServer>,
}

impl System {
    async fn start() -> Option<Self> {
        let (redis_url, redis) = redis().await?;
        let dir = TempDir::new("system-e2e");
        let issuer = IssuerSetup::new(&dir, "issuer", None, None);
        let issuer_process = issuer.start().await;
        let upstream = TestUpstream::start().await.unwrap();
        // The balancer's port is the public URL; the backends are set once known.
        let lb = Balancer::start(0).await;
        let mut args = gateway_flags(&upstream.url(), &issuer.id);
        args.extend(
            [
                "--replay-store",
                &redis_url,
                "--require-nonce",
                "--public-url",
                &lb.url(),
            ]
            .map(str::to_owned),
        );
        let secret = random_secret();
        let env = [("DPOP_NONCE_SECRET", secret.as_str())];
        let (a, b) = tokio::join!(Gw::start(&args, &env), Gw::start(&args, &env));
        lb.route_to(a.port);
        Some(Self {
            _dir: dir,
            issuer,
            issuer_process,
            upstream,
            a,
            b,
            lb,
            _redis: redis,
        })
    }

    fn logs(&self) -> String {
        format!(
            "---- gateway A ----\n{}\n---- gateway B ----\n{}\n---- issuer ----\n{}",
            self.a.process.output(),
            self.b.process.output(),
            self.issuer_process.output()
        )
    }
}

/// Scenario 1. The middleware gets a token and calls gateway A (a nonce challenge, then
/// 200); the request replayed byte for byte at gateway B is a replay (401); a nonce from
/// A is good at B on the first try.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_at_another_gateway_is_refused_and_nonces_are_shared() {
    let started = Instant::now();
    let Some(sys) = System::start().await else {
        return;
    };
    let key = PrivateKey::generate(Algorithm::Es256).unwrap();
    let (client, recorder) = middleware_client(&sys.issuer.id, &key);
    let path = "/v1/items?page=1";
    let url = format!("{}{path}", sys.lb.url());

    // Through the balancer to A: the middleware answers A's nonce challenge.
    let r = client.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 200, "{}", sys.logs());
    let attempts = recorder.take();
    assert_eq!(
        attempts.iter().map(|a| a.status).collect::<Vec<_>>(),
        [401, 200],
        "{attempts:#?}"
    );
    let a_nonce = attempts[0].nonce.clone().expect("A's DPoP-Nonce");
    assert!(claims(&attempts[0].dpop).get("nonce").is_none());
    assert_eq!(claims(&attempts[1].dpop)["nonce"], a_nonce.as_str());
    let accepted = &attempts[1];
    let token = accepted
        .authorization
        .strip_prefix("DPoP ")
        .unwrap()
        .to_owned();
    let seen = sys.upstream.last_request().unwrap();
    assert_eq!(seen.header_values("x-dpop-subject"), ["svc"]);
    assert_eq!(sys.upstream.request_count(), 1);

    // The accepted request again, byte for byte as it went over the wire, straight to B:
    // the shared Redis store knows the proof.
    let wire = sys.lb.sent_with(&accepted.dpop);
    let (status, head) = raw_exchange(sys.b.process.addr(), &wire).await;
    assert_eq!(status, 401, "{head}");
    assert!(
        head.to_ascii_lowercase().contains(
            r#"www-authenticate: dpop error="invalid_dpop_proof", error_description="dpop proof was already used""#
        ),
        "{head}"
    );
    assert_eq!(
        sys.upstream.request_count(),
        1,
        "a replay never reaches the upstream"
    );

    // A's nonce in a new proof, straight to B: accepted on the first try.
    let htu = format!("{}{path}", sys.lb.url());
    let r = call(
        &format!("{}{path}", sys.b.url),
        &htu,
        &token,
        &key,
        Some(&a_nonce),
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}\n{}", sys.logs());
    assert_eq!(sys.upstream.request_count(), 2);

    // And the middleware, now balanced to B, uses what it learnt from A: one attempt.
    sys.lb.route_to(sys.b.port);
    let r = client.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let attempts = recorder.take();
    assert_eq!(attempts.len(), 1, "{attempts:#?}");
    assert_eq!(attempts[0].url, url);
    assert!(claims(&attempts[0].dpop).get("nonce").is_some());
    assert_eq!(sys.upstream.request_count(), 3);
    assert_eq!((sys.a.accepted().await, sys.b.accepted().await), (1, 2));
    eprintln!("scenario 1: {:?}", started.elapsed());
}

/// Scenario 2. `dpop curl` through gateway B gets its own token with the token flags:
/// 200, and the upstream sees the caller's identity and key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_with_the_token_flags_through_a_gateway_instance() {
    let started = Instant::now();
    let Some(sys) = System::start().await else {
        return;
    };
    let dir = TempDir::new("system-e2e");
    let key_file = dir.file("client.pem");
    let keygen = run_dpop(&["keygen", "--out", p(&key_file)], &[]).await;
    assert!(keygen.status.success(), "{keygen:?}");
    let jkt = String::from_utf8(keygen.stdout).unwrap().trim().to_owned();

    sys.lb.route_to(sys.b.port);
    let url = format!("{}/v1/whoami", sys.lb.url());
    let out = run_dpop(
        &[
            "curl",
            "-v",
            &url,
            "--key",
            p(&key_file),
            "--issuer",
            &sys.issuer.id,
            "--client-id",
            "svc",
            "--client-secret-env",
            "SVC_SECRET",
            "--fail",
        ],
        &[("SVC_SECRET", SVC_SECRET)],
    )
    .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{out:?}\n{}", sys.logs());
    let echo: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(echo["path"], "/v1/whoami");
    assert!(
        stderr.contains("< HTTP/1.1 401") && stderr.contains("< HTTP/1.1 200"),
        "B's nonce challenge, then 200:\n{stderr}"
    );

    let seen = sys.upstream.last_request().unwrap();
    assert_eq!(seen.header_values("x-dpop-subject"), ["svc"]);
    assert_eq!(seen.header_values("x-dpop-client-id"), ["svc"]);
    assert_eq!(seen.header_values("x-dpop-jkt"), [jkt.as_str()]);
    assert_eq!(sys.upstream.request_count(), 1);
    assert_eq!(sys.b.accepted().await, 1, "B accepted the request");
    assert_eq!(sys.a.accepted().await, 0);
    eprintln!("scenario 2: {:?}", started.elapsed());
}

// ---- scenario 3 ----

/// Scenario 3. A refresh token survives an issuer restart: `agent` (a public client)
/// exchanges a CI job token under a trust rule that lets the grant outlive it and gets a
/// key-bound refresh token; the issuer stops on SIGTERM and starts again on the same
/// port and state; the refresh
/// grant works (with the nonce from before the restart: the nonce secret is in the
/// database) and the new access token works at a gateway.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_token_survives_an_issuer_restart() {
    let started = Instant::now();
    let dir = TempDir::new("system-e2e");
    let ci = MockIssuer::start().await.unwrap();
    let issuer = IssuerSetup::new(&dir, "issuer", None, None);
    issuer.trust(&ci);
    let mut process = issuer.start().await;
    let upstream = TestUpstream::start().await.unwrap();
    let gw = Gw::start(&gateway_flags(&upstream.url(), &issuer.id), &[]).await;

    let mut client = TokenClient::new(PrivateKey::generate(Algorithm::Es256).unwrap());
    let (access, refresh) = client.exchange(&issuer, &ci).await;
    let c = claims(&access);
    assert_eq!(
        (c["sub"].as_str(), c["client_id"].as_str()),
        (Some("shop-deployer"), Some("agent"))
    );
    assert_eq!(
        c["cnf"]["jkt"],
        client.key.thumbprint().as_str(),
        "bound to the key: {c}"
    );

    let status = process.terminate(Duration::from_secs(10)).await.unwrap();
    assert!(
        status.success(),
        "SIGTERM is a clean stop: {status:?}\n{}",
        process.output()
    );
    let down = http_get(&format!("{}/jwks", issuer.url())).await;
    assert!(down.is_err(), "the issuer is down: {down:?}");
    let _process = issuer.start().await;

    // The nonce from before the restart, on the first try.
    let (r, _) = client.attempt(&issuer, &refresh_form(&refresh)).await;
    let new_access = access_token(&r);
    let body = r.json().unwrap();
    let new_refresh = body["refresh_token"].as_str().expect("rotated");
    assert_ne!(new_refresh, refresh);
    assert_eq!(
        claims(&new_access)["cnf"]["jkt"],
        client.key.thumbprint().as_str()
    );

    let url = format!("{}/v1/items", gw.url);
    let r = call(&url, &url, &new_access, &client.key, None).await;
    assert_eq!(r.status, 200, "{r:?}\n{}", gw.process.output());
    let seen = upstream.last_request().unwrap();
    assert_eq!(seen.header_values("x-dpop-subject"), ["shop-deployer"]);
    assert_eq!(seen.header_values("x-dpop-client-id"), ["agent"]);
    assert_eq!(
        seen.header_values("x-dpop-jkt"),
        [client.key.thumbprint().as_str()]
    );

    // The refresh token is bound to the key: another key's proof cannot use it.
    let mut thief = TokenClient::new(PrivateKey::generate(Algorithm::Es256).unwrap());
    let r = thief.post(&issuer, &refresh_form(new_refresh)).await;
    assert_eq!(oauth_error(&r).1, "invalid_grant", "{r:?}");
    eprintln!("scenario 3: {:?}", started.elapsed());
}

// ---- scenario 4 ----

/// Scenario 4a. Two issuer instances on one PostgreSQL, each its own identifier (its own
/// URL) and data directory: refresh tokens are opaque rows in the shared database, so
/// either instance honours the other's, and reuse detection works across them: a
/// refresh token already rotated at A revokes the whole family when shown at B, the
/// newest token included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_issuers_on_postgres_share_refresh_tokens_and_reuse_detection() {
    let started = Instant::now();
    let Some(pg) = PgSchema::create().await else {
        return;
    };
    let dir = TempDir::new("system-e2e");
    let ci = MockIssuer::start().await.unwrap();
    let a = IssuerSetup::new(&dir, "a", None, Some(pg.url()));
    let b = IssuerSetup::new(&dir, "b", None, Some(pg.url()));
    a.trust(&ci);
    b.trust(&ci);
    // A first: it applies the migrations and creates the shared nonce secret.
    let a_process = a.start().await;
    let b_process = b.start().await;
    let logs = || {
        format!(
            "---- A ----\n{}\n---- B ----\n{}",
            a_process.output(),
            b_process.output()
        )
    };

    let mut client = TokenClient::new(PrivateKey::generate(Algorithm::Es256).unwrap());
    let (_, rt1) = client.exchange(&a, &ci).await;

    // A's nonce is good at B, and so is A's refresh token.
    let (r, _) = client.attempt(&b, &refresh_form(&rt1)).await;
    assert_eq!(r.status, 200, "{r:?}\n{}", logs());
    let b_access = access_token(&r);
    assert_eq!(claims(&b_access)["iss"], b.id.as_str());
    let rt2 = r.json().unwrap()["refresh_token"]
        .as_str()
        .unwrap()
        .to_owned();

    // Rotated at A.
    let (r, used_at_a) = client.attempt(&a, &refresh_form(&rt2)).await;
    assert_eq!(r.status, 200, "{r:?}");
    let rt3 = r.json().unwrap()["refresh_token"]
        .as_str()
        .unwrap()
        .to_owned();

    // The old one at B: reuse, and the family is revoked...
    let r = client.post(&b, &refresh_form(&rt2)).await;
    let (status, error, description) = oauth_error(&r);
    assert_eq!((status, error.as_str()), (400, "invalid_grant"), "{r:?}");
    assert!(description.contains("already used"), "{description}");
    // ...so the newest one is refused at B and at A.
    for instance in [&b, &a] {
        let r = client.post(instance, &refresh_form(&rt3)).await;
        let (status, error, description) = oauth_error(&r);
        assert_eq!((status, error.as_str()), (400, "invalid_grant"), "{r:?}");
        assert!(description.contains("revoked"), "{description}");
    }
    // A proof used at A names A's token endpoint: B refuses it before any replay check
    // (scenario 4b shows the shared replay table, with one identifier for both).
    let r = post_form(&b.token_url(), &refresh_form(&rt3), &[("dpop", &used_at_a)]).await;
    let (status, error, description) = oauth_error(&r);
    assert_eq!(
        (status, error.as_str()),
        (400, "invalid_dpop_proof"),
        "{r:?}"
    );
    assert_eq!(
        description,
        "DPoP proof does not match the request method and URI"
    );
    assert!(
        a_process.output().contains("refresh token reuse")
            || b_process.output().contains("refresh token reuse"),
        "the reuse is logged:\n{}",
        logs()
    );
    eprintln!("scenario 4a: {:?}", started.elapsed());
}

/// Scenario 4b. Two issuer instances on one PostgreSQL behind one load balancer, sharing
/// the identifier (the load balancer's URL), as a deployment of several instances does:
/// a token-endpoint proof used at A is refused at B (the replay table is shared), while
/// B takes A's nonce. (With one identifier per instance, as in 4a, a proof made for A
/// names A's token endpoint and B refuses it for its `htu` before any replay check.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_endpoint_proof_is_single_use_across_issuer_instances() {
    let started = Instant::now();
    let Some(pg) = PgSchema::create().await else {
        return;
    };
    let dir = TempDir::new("system-e2e");
    let lb = Balancer::start(0).await;
    let a = IssuerSetup::new(&dir, "a", Some(&lb.url()), Some(pg.url()));
    let b = IssuerSetup::new(&dir, "b", Some(&lb.url()), Some(pg.url()));
    let a_process = a.start().await;
    let b_process = b.start().await;
    lb.route_to(a.port);
    let via_lb = IssuerSetup {
        config: a.config.clone(),
        port: lb.addr.port(),
        id: lb.url(),
    };

    let mut client = TokenClient::new(PrivateKey::generate(Algorithm::Es256).unwrap());
    let form = [
        ("grant_type", "client_credentials"),
        ("client_id", "svc"),
        ("client_secret", SVC_SECRET),
    ];
    // Nonce challenge at A, then a token from A.
    let (r, _) = client.attempt(&via_lb, &form).await;
    assert_eq!(oauth_error(&r).1, "use_dpop_nonce", "{r:?}");
    let (r, used) = client.attempt(&via_lb, &form).await;
    assert_eq!(r.status, 200, "{r:?}\n{}", a_process.output());

    // The same proof, the balancer now sending to B.
    lb.route_to(b.port);
    let r = post_form(&via_lb.token_url(), &form, &[("dpop", &used)]).await;
    let (status, error, description) = oauth_error(&r);
    assert_eq!(
        (status, error.as_str()),
        (400, "invalid_dpop_proof"),
        "{r:?}"
    );
    assert_eq!(description, "DPoP proof was already used");
    // A fresh proof with A's nonce: B issues on the first try.
    let (r, _) = client.attempt(&via_lb, &form).await;
    assert_eq!(r.status, 200, "{r:?}\n{}", b_process.output());
    let replays = |log: String| log.matches(r#"reason="replay""#).count();
    assert_eq!(
        replays(b_process.output()),
        1,
        "B refused the replay:\n{}",
        b_process.output()
    );
    assert_eq!(replays(a_process.output()), 0);
    eprintln!("scenario 4b: {:?}", started.elapsed());
}

// ---- scenario 5 ----

/// Polls `GET url` (fresh proofs) every 200 ms for up to `limit` until the status is not
/// 200; returns that response and how long it took. Only 200 and the final status occur.
async fn until_refused(
    url: &str,
    token: &str,
    key: &PrivateKey,
    limit: Duration,
) -> (HttpResponse, Duration) {
    let since = Instant::now();
    loop {
        let r = call(url, url, token, key, None).await;
        if r.status != 200 {
            return (r, since.elapsed());
        }
        assert!(
            since.elapsed() < limit,
            "still 200 {:?} after the revocation",
            since.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Scenario 5. An introspecting gateway with a 2 s cache: a revoked token, and then a
/// disabled client's token, are refused within the cache TTL (plus the one-second
/// resolution of expiry times and a margin).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_and_offboarding_reach_an_introspecting_gateway_within_the_cache_ttl() {
    const TTL: u64 = 2;
    let started = Instant::now();
    let dir = TempDir::new("system-e2e");
    let issuer = IssuerSetup::new(&dir, "issuer", None, None);
    let issuer_process = issuer.start().await;
    let upstream = TestUpstream::start().await.unwrap();
    let gw_config = dir.file("gateway.toml");
    let text = introspecting_gateway_toml(&upstream.url(), &issuer.id, &issuer.url(), TTL);
    std::fs::write(&gw_config, text).unwrap();
    let gw = Gw::start(&["--config".into(), p(&gw_config).into()], &[]).await;
    let limit = Duration::from_secs(TTL + 2);
    let mut client = TokenClient::new(PrivateKey::generate(Algorithm::Es256).unwrap());
    let url = format!("{}/v1/items", gw.url);

    // Revocation by the client.
    let token = client.svc_token(&issuer).await;
    let r = call(&url, &url, &token, &client.key, None).await;
    assert_eq!(
        r.status,
        200,
        "{r:?}\n{}\n{}",
        gw.process.output(),
        issuer_process.output()
    );
    let r = revoke_as_svc(&issuer.url(), &token).await;
    assert_eq!(r.status, 200, "{r:?}");
    let (r, took) = until_refused(&url, &token, &client.key, limit).await;
    assert_eq!(r.status, 401, "{r:?}");
    assert!(www(&r).contains("invalid_token"), "{}", www(&r));
    eprintln!("scenario 5: revocation seen after {took:?} (cache TTL {TTL} s)");

    // Offboarding: a fresh token, warm in the cache, then `disable-client`.
    let token = client.svc_token(&issuer).await;
    let r = call(&url, &url, &token, &client.key, None).await;
    assert_eq!(r.status, 200, "{r:?}");
    let out = issuer.manage(&["disable-client", "svc"]).await;
    assert!(out.status.success(), "{out:?}");
    let (r, took) = until_refused(&url, &token, &client.key, limit).await;
    assert_eq!(r.status, 401, "{r:?}");
    eprintln!("scenario 5: offboarding seen after {took:?} (cache TTL {TTL} s)");
    eprintln!("scenario 5: {:?}", started.elapsed());
}

// ---- scenario 6 ----

/// Scenario 6. The gateway outlives its dependencies: with the upstream gone it answers
/// 502 and keeps serving its admin endpoints, and serves 200 again once an upstream is
/// back on the same port; with Redis gone it answers 503 (never 200), and 200 again once
/// Redis is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_survives_its_upstream_and_redis_going_away() {
    let started = Instant::now();
    let Some(mut redis) = private_redis().await else {
        return;
    };
    let dir = TempDir::new("system-e2e");
    let issuer = IssuerSetup::new(&dir, "issuer", None, None);
    let _issuer_process = issuer.start().await;
    let upstream = TestUpstream::start().await.unwrap();
    let upstream_addr = upstream.addr();
    let mut args = gateway_flags(&upstream.url(), &issuer.id);
    args.extend(["--replay-store".to_owned(), redis.url()]);
    let gw = Gw::start(&args, &[]).await;
    let mut client = TokenClient::new(PrivateKey::generate(Algorithm::Es256).unwrap());
    let token = client.svc_token(&issuer).await;
    let url = format!("{}/v1/items", gw.url);
    let get = || call(&url, &url, &token, &client.key, None);
    assert_eq!(get().await.status, 200, "{}", gw.process.output());

    // The upstream goes away (its listener and connections close together).
    drop(upstream);
    let closed = Instant::now();
    while tokio::net::TcpStream::connect(upstream_addr).await.is_ok() {
        assert!(
            closed.elapsed() < Duration::from_secs(2),
            "the upstream still listens"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for _ in 0..3 {
        let r = get().await;
        assert_eq!(r.status, 502, "{r:?}");
    }
    assert_eq!(gw.admin_get("/healthz").await.status, 200);
    assert_eq!(
        gw.admin_get("/readyz").await.status,
        200,
        "the upstream is not a readiness condition"
    );
    // A new upstream on the same port.
    let upstream = loop {
        match TestUpstream::builder().listen(upstream_addr).start().await {
            Ok(u) => break u,
            Err(e) if started.elapsed() < Duration::from_secs(8) => {
                eprintln!("rebinding {upstream_addr}: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("cannot rebind {upstream_addr}: {e}"),
        }
    };
    let r = get().await;
    assert_eq!(
        r.status, 200,
        "the first request after the upstream is back: {r:?}"
    );
    assert_eq!(upstream.request_count(), 1);

    // Redis goes away: 503, never 200.
    redis.stop().unwrap();
    for _ in 0..3 {
        let r = get().await;
        assert_eq!(r.status, 503, "{r:?}\n{}", gw.process.output());
        assert!(r.header("www-authenticate").is_none(), "{r:?}");
    }
    assert_eq!(
        upstream.request_count(),
        1,
        "nothing passed while Redis was down"
    );
    assert_eq!(gw.admin_get("/readyz").await.status, 503);
    assert_eq!(gw.admin_get("/healthz").await.status, 200);
    // The log says so once, with the cause, not once per refused request.
    let log = gw.process.output();
    let failing: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("dpop::replay") && l.contains(" failing: "))
        .collect();
    assert_eq!(failing.len(), 1, "{log}");
    // What the connection said: a reset, a broken pipe or a refused reconnection; or,
    // when the machine is busy and the insert's time limit passes before the closed
    // connection is seen, that the store did not answer in time.
    assert!(
        [
            "refused",
            "broken pipe",
            "reset",
            "closed",
            "connect",
            "did not answer in time"
        ]
        .iter()
        .any(|cause| failing[0].contains(cause)),
        "the first report names the cause: {}",
        failing[0]
    );

    // Redis is back (empty): 200 again, soon.
    redis.start().await.unwrap();
    let back = Instant::now();
    loop {
        let r = get().await;
        if r.status == 200 {
            break;
        }
        assert_eq!(r.status, 503, "{r:?}");
        assert!(
            back.elapsed() < Duration::from_secs(5),
            "still 503 5 s after Redis came back\n{}",
            gw.process.output()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "scenario 6: 200 again {:?} after Redis restarted",
        back.elapsed()
    );
    // And the recovery once, with how long it lasted and how many requests failed.
    let log = gw.process.output();
    let recovered: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("dpop::replay") && l.contains(" recovered after "))
        .collect();
    assert_eq!(recovered.len(), 1, "{log}");
    assert!(recovered[0].contains("failures)"), "{}", recovered[0]);
    assert_eq!(gw.admin_get("/readyz").await.status, 200);
    eprintln!("scenario 6: {:?}", started.elapsed());
}

// ---- scenario 7 ----

/// Scenario 7. Gateways started before their issuer: once the issuer is up, requests
/// pass within about a second, and so does `/readyz` of a gateway that gets no request
/// at all (a load balancer sends nothing to an instance that is not ready, so readiness
/// must not wait for traffic).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateways_started_before_the_issuer_recover_as_soon_as_it_is_up() {
    let started = Instant::now();
    let dir = TempDir::new("system-e2e");
    let issuer = IssuerSetup::new(&dir, "issuer", None, None);
    let upstream = TestUpstream::start().await.unwrap();
    let args = gateway_flags(&upstream.url(), &issuer.id);
    let (busy, idle) = tokio::join!(Gw::start(&args, &[]), Gw::start(&args, &[]));
    let mut client = TokenClient::new(PrivateKey::generate(Algorithm::Es256).unwrap());
    let url = format!("{}/v1/items", busy.url);
    // A token the gateway cannot check yet: any well-formed one will do for the 503.
    let r = call(
        &url,
        &url,
        "eyJhbGciOiJFUzI1NiJ9.e30.c2ln",
        &client.key,
        None,
    )
    .await;
    assert_eq!(r.status, 503, "no keys: {r:?}");
    assert_eq!(idle.admin_get("/readyz").await.status, 503);

    let _issuer_process = issuer.start().await;
    let up = Instant::now();
    let token = client.svc_token(&issuer).await;
    let first_200 = loop {
        let r = call(&url, &url, &token, &client.key, None).await;
        if r.status == 200 {
            break up.elapsed();
        }
        assert_eq!(r.status, 503, "{r:?}");
        assert!(
            up.elapsed() < Duration::from_secs(15),
            "still 503 15 s after the issuer came up\n{}",
            busy.process.output()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let ready = loop {
        if idle.admin_get("/readyz").await.status == 200 {
            break up.elapsed();
        }
        assert!(
            up.elapsed() < Duration::from_secs(15),
            "/readyz still 503 15 s after the issuer came up\n{}",
            idle.process.output()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    eprintln!(
        "scenario 7: first 200 {first_200:?} and an idle gateway ready {ready:?} after the issuer came up"
    );
    assert!(
        first_200 < Duration::from_millis(2500),
        "first 200 after {first_200:?}"
    );
    assert!(ready < Duration::from_millis(2500), "ready after {ready:?}");
    eprintln!("scenario 7: {:?}", started.elapsed());
}
