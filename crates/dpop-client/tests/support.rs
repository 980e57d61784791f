//! The harness: a resource server written here (proofs verified with dpop-core, server
//! nonces, a clock that can run ahead, deliberate misbehaviour), the real issuer
//! (dpop-issuer) in-process, both recording every request they receive, and helpers to
//! build clients and key files.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use dpop_client::{ClientAuth, ClientKey, DpopMiddleware, Grant, TokenRequest};
use dpop_core::challenge::Challenge;
use dpop_core::{
    Algorithm, Htu, Jkt, MemoryReplayStore, NonceSecret, NonceValidator as _, PrivateKey,
    ProofRequest, Reason, Role, StatelessNonces, UnixTime, Verifier, VerifierConfig,
};
use dpop_test::{ClientFixture, IssuerFixture};
use serde_json::{Value, json};

/// The audience of every token the test issuer hands out.
pub(crate) const API: &str = "https://api.example.com";
/// The secret of every confidential client of the test issuer.
pub(crate) const SECRET: &str = "correct-horse-battery-staple-42";
/// Its Argon2 hash, computed once for the whole run (Argon2 is slow on purpose).
static SECRET_HASH: LazyLock<String> =
    LazyLock::new(|| dpop_issuer::hash_secret(SECRET).expect("hash the test secret"));

pub(crate) const GRANT_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
pub(crate) const TT_ACCESS: &str = "urn:ietf:params:oauth:token-type:access_token";
pub(crate) const TT_JWT: &str = "urn:ietf:params:oauth:token-type:jwt";

/// Seconds since the epoch, from the system clock (the client reads it too).
pub(crate) fn now_secs() -> u64 {
    dpop_test::now().as_secs()
}

/// A fresh ES256 key.
pub(crate) fn es256() -> PrivateKey {
    PrivateKey::generate(Algorithm::Es256).expect("ES256 key")
}

/// A client key and the thumbprint tokens bound to it carry.
pub(crate) fn client_key() -> (ClientKey, String) {
    let key = ClientKey::ephemeral(Algorithm::Es256).expect("ephemeral key");
    let jkt = key.thumbprint().as_str().to_owned();
    (key, jkt)
}

/// The claims of a compact JWS (a proof or a JWT access token), not verified.
pub(crate) fn jws_claims(jws: &str) -> Value {
    dpop_core::jwt::UnverifiedJwt::parse(jws)
        .map(|jwt| jwt.dangerous_claims().clone())
        .unwrap_or_else(|e| panic!("not a JWS ({e}): {jws}"))
}

/// A reqwest client (no redirects, no proxy) with `dpop` as its middleware.
pub(crate) fn http_client(dpop: DpopMiddleware) -> reqwest_middleware::ClientWithMiddleware {
    reqwest_middleware::ClientBuilder::new(
        reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .build()
            .expect("HTTP client"),
    )
    .with(dpop)
    .build()
}

/// The [`dpop_client::ClientError`] inside a middleware error.
pub(crate) fn client_error(e: reqwest_middleware::Error) -> dpop_client::ClientError {
    match e {
        reqwest_middleware::Error::Middleware(e) => e
            .downcast::<dpop_client::ClientError>()
            .unwrap_or_else(|e| panic!("not a ClientError: {e:#}")),
        reqwest_middleware::Error::Reqwest(e) => panic!("a reqwest error: {e}"),
    }
}

// ---- files and processes ----

/// A directory under the system temp dir, unique per test, removed on drop.
#[derive(Debug)]
pub(crate) struct TempDir(PathBuf);

impl TempDir {
    pub(crate) fn new(name: &str) -> Self {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!(
            "dpop-client-test-{name}-{}-{n}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create the test directory");
        Self(dir)
    }

    pub(crate) fn path(&self) -> &Path {
        &self.0
    }

    /// Writes `text` to `name` with `mode` (Unix permissions).
    pub(crate) fn write(&self, name: &str, text: &str, mode: u32) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, text).expect("write a test file");
        set_mode(&path, mode);
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[cfg(unix)]
fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

#[cfg(not(unix))]
fn set_mode(_: &Path, _: u32) {}

/// Set in the environment of a test run again as a child process (see [`run_child`]).
pub(crate) const CHILD_ENV: &str = "DPOP_CLIENT_TEST_CHILD";
/// What a child prints on stderr when its part passed.
pub(crate) const CHILD_PASSED: &str = "child part passed";

/// Whether this process is the child of [`run_child`], which is how a test reaches code
/// that reads environment variables: `std::env::set_var` is `unsafe` (and unsafe code is
/// forbidden here), but a child process can be given any environment.
pub(crate) fn is_child() -> bool {
    std::env::var_os(CHILD_ENV).is_some()
}

/// Runs the test `name` of this test binary alone in a child process with `env` added,
/// and asserts that its child part passed.
pub(crate) fn run_child(name: &str, env: &[(&str, &str)]) {
    let exe = std::env::current_exe().expect("the test binary");
    let mut cmd = Command::new(exe);
    cmd.args(["--exact", name, "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, "1");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run the test binary again");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stderr.contains(CHILD_PASSED) && stdout.contains("1 passed"),
        "the child run of {name} failed:\n{stdout}\n{stderr}"
    );
}

// ---- servers ----

/// Serves `router` on a loopback port until dropped.
#[derive(Debug)]
struct Server {
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn listen() -> (tokio::net::TcpListener, String) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a loopback port");
    let url = format!("http://{}", listener.local_addr().expect("local address"));
    (listener, url)
}

fn serve(listener: tokio::net::TcpListener, router: axum::Router) -> Server {
    Server {
        task: tokio::spawn(async move {
            axum::serve(listener, router).await.expect("serve");
        }),
    }
}

/// One request as a server received it, and what it answered.
#[derive(Clone, Debug)]
pub(crate) struct Seen {
    pub(crate) method: String,
    /// Path and query.
    pub(crate) uri: String,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Vec<u8>,
    /// The `DPoP` proof's claims (not verified), if there was a proof.
    pub(crate) claims: Option<Value>,
    pub(crate) status: u16,
    /// The RFC error code the server answered with, if any.
    pub(crate) error: Option<String>,
    /// Why the resource server refused the proof (dpop-core's reason code).
    pub(crate) reason: Option<String>,
    /// The `DPoP-Nonce` the server sent back.
    pub(crate) nonce_sent: Option<String>,
    /// The issuer's JSON answer.
    pub(crate) response: Option<Value>,
}

impl Seen {
    /// A string claim of the proof.
    pub(crate) fn claim(&self, name: &str) -> Option<&str> {
        self.claims.as_ref()?.get(name)?.as_str()
    }

    /// The proof's `iat`.
    pub(crate) fn iat(&self) -> u64 {
        self.claims
            .as_ref()
            .and_then(|c| c["iat"].as_u64())
            .unwrap_or_else(|| panic!("no iat: {self:?}"))
    }

    /// A request header.
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// A field of the form body (token requests).
    pub(crate) fn form(&self, name: &str) -> Option<String> {
        url::form_urlencoded::parse(&self.body)
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
    }
}

/// Requests in arrival order, shared by a server and its test.
#[derive(Clone, Debug, Default)]
pub(crate) struct Log(Arc<Mutex<Vec<Seen>>>);

impl Log {
    fn push(&self, seen: Seen) {
        self.0.lock().expect("log lock").push(seen);
    }

    /// Every request so far.
    pub(crate) fn all(&self) -> Vec<Seen> {
        self.0.lock().expect("log lock").clone()
    }

    /// How many requests so far.
    pub(crate) fn len(&self) -> usize {
        self.0.lock().expect("log lock").len()
    }

    /// Forgets the requests so far.
    pub(crate) fn clear(&self) {
        self.0.lock().expect("log lock").clear();
    }
}

/// How a [`Api`] misbehaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Misbehaviour {
    /// Every request gets 401 `use_dpop_nonce` with a new nonce.
    AlwaysNonce401,
    /// Every request gets 400 `{"error":"use_dpop_nonce"}` with a new nonce.
    AlwaysNonce400,
    /// The first request gets 400 `{"error":"use_dpop_nonce"}` with a nonce, its body
    /// sent in chunks without `Content-Length`; later ones are served normally.
    ChunkedNonce400Once,
    /// Every request gets a 400 JSON body of 20 KiB in chunks, `use_dpop_nonce` inside.
    LargeChunked400,
}

/// A body sent in several chunks with no `Content-Length` (so HTTP/1.1 chunked).
struct Chunked(std::collections::VecDeque<bytes::Bytes>);

impl http_body::Body for Chunked {
    type Data = bytes::Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, Self::Error>>> {
        std::task::Poll::Ready(self.0.pop_front().map(|b| Ok(http_body::Frame::data(b))))
    }
}

/// A 400 JSON response whose body comes in chunks.
fn chunked_400(json: &str, nonce: &str) -> Response {
    let chunks = json
        .as_bytes()
        .chunks(4096.min(json.len() / 2 + 1))
        .map(bytes::Bytes::copy_from_slice)
        .collect();
    let mut r = Response::new(Body::new(Chunked(chunks)));
    *r.status_mut() = StatusCode::BAD_REQUEST;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r.headers_mut()
        .insert("dpop-nonce", HeaderValue::from_str(nonce).expect("a nonce"));
    r
}

/// What a [`Api`] demands.
#[derive(Clone, Debug, Default)]
pub(crate) struct ApiOptions {
    /// Proofs must carry a current server nonce (RFC 9449 §9).
    pub(crate) nonces: bool,
    /// The server's clock (its proof window and its `Date` header) runs this many seconds
    /// ahead (negative: behind).
    pub(crate) clock_offset: i64,
    /// Write the challenge's scheme in lower case (`dpop error="…"`).
    pub(crate) lowercase_scheme: bool,
    /// The only access token accepted (others get `invalid_token`); without it any
    /// token is taken, bound to the key in its `cnf.jkt` (read without verification).
    pub(crate) token: Option<String>,
    /// The key the token is bound to, when it is not a JWT with `cnf.jkt`.
    pub(crate) jkt: Option<String>,
    /// A `DPoP-Nonce` value put on every successful response.
    pub(crate) advertise_nonce: Option<String>,
    /// Answer every request badly.
    pub(crate) misbehave: Option<Misbehaviour>,
    /// Accept only these proof algorithms (default: dpop-core's defaults).
    pub(crate) algorithms: Option<Vec<Algorithm>>,
    /// Serve RFC 8414 metadata naming itself as issuer and `{url}/token` as token endpoint.
    pub(crate) metadata: bool,
    /// With `metadata`: name this issuer instead (a mismatch).
    pub(crate) metadata_issuer: Option<String>,
    /// Answer `POST /token` (after the misbehaviour, if any) with 200 and this JSON.
    pub(crate) token_response: Option<Value>,
}

/// A protected resource on loopback: it verifies each request's proof (method, URL,
/// `iat`, `ath`, key binding, replay, and nonces when asked) as RFC 9449 §4.3 and §7
/// describe, answers refusals as §7.1 and §9 do, and records every request.
#[derive(Debug)]
pub(crate) struct Api {
    pub(crate) url: String,
    pub(crate) log: Log,
    state: Arc<ApiState>,
    _server: Server,
}

impl std::fmt::Debug for ApiState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiState")
            .field("base", &self.base)
            .field("opts", &self.opts)
            .finish_non_exhaustive()
    }
}

struct ApiState {
    base: String,
    opts: ApiOptions,
    /// The clock offset in force (starts as `opts.clock_offset`).
    clock_offset: AtomicI64,
    verifier: Verifier,
    nonces: Arc<StatelessNonces>,
    replay: MemoryReplayStore,
    counter: AtomicUsize,
    log: Log,
}

impl Api {
    /// A resource server that demands `opts`.
    pub(crate) async fn start(opts: ApiOptions) -> Self {
        let (listener, url) = listen().await;
        let mut secret = [0_u8; 32];
        dpop_core::RandomSource::fill(&dpop_core::SystemRandomSource, &mut secret)
            .expect("randomness");
        let nonces = Arc::new(
            StatelessNonces::new(NonceSecret::new(&secret).expect("nonce secret"))
                .with_timing(60, 180)
                .expect("nonce timing"),
        );
        let builder = match &opts.algorithms {
            Some(algs) => VerifierConfig::builder()
                .with_algorithms(algs)
                .expect("algorithms"),
            None => VerifierConfig::builder().with_default_algorithms(),
        };
        let config = if opts.nonces {
            builder.with_nonces(Arc::clone(&nonces) as Arc<dyn dpop_core::NonceValidator>)
        } else {
            builder.without_nonces()
        };
        let log = Log::default();
        let state = Arc::new(ApiState {
            base: url.clone(),
            clock_offset: AtomicI64::new(opts.clock_offset),
            opts,
            verifier: Verifier::new(config).expect("verifier"),
            nonces,
            replay: MemoryReplayStore::with_capacity(10_000),
            counter: AtomicUsize::new(0),
            log: log.clone(),
        });
        let router = axum::Router::new()
            .fallback(api_handler)
            .with_state(Arc::clone(&state));
        Self {
            url,
            log,
            state,
            _server: serve(listener, router),
        }
    }

    /// Sets the server's clock offset (an operator fixing its clock).
    pub(crate) fn set_clock_offset(&self, secs: i64) {
        self.state.clock_offset.store(secs, Ordering::SeqCst);
    }

    /// `{url}{path}`.
    pub(crate) fn at(&self, path: &str) -> String {
        format!("{}{path}", self.url)
    }

    /// The requests received so far.
    pub(crate) fn seen(&self) -> Vec<Seen> {
        self.log.all()
    }
}

fn http_date(secs: u64) -> String {
    httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(secs))
}

async fn api_handler(State(st): State<Arc<ApiState>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let body = axum::body::to_bytes(body, 1 << 20)
        .await
        .map(|b| b.to_vec())
        .unwrap_or_default();
    let claims = parts
        .headers
        .get("dpop")
        .and_then(|v| v.to_str().ok())
        .and_then(|p| dpop_core::jwt::UnverifiedJwt::parse(p).ok())
        .map(|jwt| jwt.dangerous_claims().clone());
    let offset = st.clock_offset.load(Ordering::SeqCst);
    let now = now_secs().saturating_add_signed(offset);
    let (mut response, error, reason) = st.answer(&parts, &body, now);
    if offset != 0 {
        // hyper only adds a Date header when the response has none.
        response.headers_mut().insert(
            header::DATE,
            HeaderValue::from_str(&http_date(now)).expect("an HTTP date"),
        );
    }
    st.log.push(Seen {
        method: parts.method.to_string(),
        uri: parts
            .uri
            .path_and_query()
            .map_or_else(String::new, ToString::to_string),
        headers: parts.headers.clone(),
        body,
        claims,
        status: response.status().as_u16(),
        error,
        reason,
        response: None,
        nonce_sent: response
            .headers()
            .get("dpop-nonce")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
    });
    response
}

type Answer = (Response, Option<String>, Option<String>);

impl ApiState {
    fn challenge(&self, status: StatusCode, code: &str, nonce: Option<String>) -> Response {
        let value = if self.opts.lowercase_scheme {
            format!("dpop error=\"{code}\", algs=\"ES256 EdDSA\"")
        } else {
            let c = Challenge::dpop()
                .with_error(code)
                .and_then(|c| c.with_error_description("refused by the test server"))
                .and_then(|c| c.with_algs(["ES256", "EdDSA"]))
                .expect("a challenge");
            dpop_core::challenge::render(&[c])
        };
        let mut response = (status, [(header::WWW_AUTHENTICATE, value)]).into_response();
        if let Some(n) = nonce {
            response
                .headers_mut()
                .insert("dpop-nonce", HeaderValue::from_str(&n).expect("a nonce"));
        }
        response
    }

    fn answer(&self, parts: &http::request::Parts, body: &[u8], now: u64) -> Answer {
        if self.opts.metadata && parts.uri.path() == "/.well-known/oauth-authorization-server" {
            let issuer = self.opts.metadata_issuer.as_ref().unwrap_or(&self.base);
            let token_endpoint = format!("{}/token", self.base);
            let doc = json!({ "issuer": issuer, "token_endpoint": token_endpoint });
            return (axum::Json(doc).into_response(), None, None);
        }
        let nonce_code = Some("use_dpop_nonce".to_owned());
        match self.opts.misbehave {
            Some(Misbehaviour::AlwaysNonce401) => {
                let n = format!("nonce-{}", self.counter.fetch_add(1, Ordering::SeqCst));
                let r = self.challenge(StatusCode::UNAUTHORIZED, "use_dpop_nonce", Some(n));
                return (r, nonce_code, None);
            }
            Some(Misbehaviour::AlwaysNonce400) => {
                let n = format!("nonce-{}", self.counter.fetch_add(1, Ordering::SeqCst));
                let r = (
                    StatusCode::BAD_REQUEST,
                    [("dpop-nonce", n)],
                    axum::Json(json!({ "error": "use_dpop_nonce" })),
                )
                    .into_response();
                return (r, nonce_code, None);
            }
            Some(Misbehaviour::ChunkedNonce400Once)
                if self.counter.fetch_add(1, Ordering::SeqCst) == 0 =>
            {
                let body = r#"{"error":"use_dpop_nonce","error_description":"a nonce, please"}"#;
                return (chunked_400(body, "nonce-0"), nonce_code, None);
            }
            Some(Misbehaviour::LargeChunked400) => {
                let pad = "x".repeat(20 * 1024);
                let body = json!({ "error": "use_dpop_nonce", "pad": pad }).to_string();
                return (chunked_400(&body, "nonce-1"), nonce_code, None);
            }
            Some(Misbehaviour::ChunkedNonce400Once) | None => {}
        }
        if let Some(doc) = &self.opts.token_response
            && parts.uri.path() == "/token"
        {
            return (axum::Json(doc.clone()).into_response(), None, None);
        }
        let now = UnixTime::from_secs(now);
        let Ok(htu) = Htu::parse(&format!("{}{}", self.base, parts.uri.path())) else {
            return (StatusCode::BAD_REQUEST.into_response(), None, None);
        };
        let token = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("DPoP"))
            .map(|(_, t)| t.to_owned());
        let invalid_token = || {
            let r = self.challenge(StatusCode::UNAUTHORIZED, "invalid_token", None);
            (r, Some("invalid_token".to_owned()), None)
        };
        let jkt = match &token {
            None => None,
            Some(t) => {
                if self.opts.token.as_ref().is_some_and(|want| want != t) {
                    return invalid_token();
                }
                let bound = self.opts.jkt.clone().or_else(|| {
                    dpop_core::jwt::UnverifiedJwt::parse(t)
                        .ok()
                        .and_then(|jwt| {
                            jwt.dangerous_claims()["cnf"]["jkt"]
                                .as_str()
                                .map(str::to_owned)
                        })
                });
                match bound.as_deref().map(Jkt::parse) {
                    Some(Ok(jkt)) => Some(jkt),
                    _ => return invalid_token(),
                }
            }
        };
        let method = parts.method.as_str();
        let mut request = ProofRequest::new(method, &htu);
        if let (Some(t), Some(jkt)) = (&token, &jkt) {
            request = request.with_access_token(t, jkt);
        }
        let proofs = parts
            .headers
            .get_all("dpop")
            .iter()
            .map(HeaderValue::as_bytes);
        let verified = self
            .verifier
            .verify(proofs, &request, now)
            .and_then(|p| p.record(&self.replay));
        match verified {
            Ok(_) => {
                let mut response = axum::Json(json!({
                    "ok": true,
                    "method": method,
                    "path": parts.uri.path(),
                    "query": parts.uri.query(),
                    "x-a": parts.headers.get("x-a").and_then(|v| v.to_str().ok()),
                    "body": String::from_utf8_lossy(body),
                }))
                .into_response();
                let nonce = match &self.opts.advertise_nonce {
                    Some(n) => Some(n.clone()),
                    None if self.opts.nonces => self.nonces.issue(now).ok(),
                    None => None,
                };
                if let Some(n) = nonce {
                    response
                        .headers_mut()
                        .insert("dpop-nonce", HeaderValue::from_str(&n).expect("a nonce"));
                }
                (response, None, None)
            }
            Err(e) => {
                let reason = e.reason();
                let rfc = e.response(Role::ResourceServer);
                let code = rfc.error.map_or("invalid_request", |c| c.as_str());
                let nonce = matches!(
                    reason,
                    Reason::NonceRequired | Reason::NonceStale | Reason::NonceInvalid
                )
                .then(|| self.nonces.issue(now).ok())
                .flatten();
                let status = StatusCode::from_u16(rfc.status).expect("a status");
                let response = self.challenge(status, code, nonce);
                (
                    response,
                    Some(code.to_owned()),
                    Some(reason.as_str().to_owned()),
                )
            }
        }
    }
}

// ---- the issuer ----

/// The real issuer (dpop-issuer) on loopback, with server nonces at its token endpoint
/// (its default), and every request it received. Its clients:
///
/// - `svc`: secret, client credentials, refresh and token exchange, scopes `read write`;
/// - `short`: secret, client credentials, tokens that live 2 seconds;
/// - `keyed`: `private_key_jwt` with [`Issuer::client_key`];
/// - `public`: public, token exchange and refresh, tokens that live 2 seconds;
/// - `delegate`: secret, token exchange of `svc`'s tokens (`may_exchange_for`).
#[derive(Debug)]
pub(crate) struct Issuer {
    pub(crate) url: String,
    /// The private key of the `keyed` client (PKCS#8 PEM).
    pub(crate) client_key_pem: String,
    pub(crate) log: Log,
    _dir: TempDir,
    _server: Server,
}

impl Issuer {
    /// An issuer with the standard clients and `extra` TOML (more clients, `[[trust]]`).
    pub(crate) async fn start(extra: &str) -> Self {
        Self::start_ahead(extra, 0).await
    }

    /// [`Issuer::start`] with the issuer's clock (and its `Date` header) `ahead_secs`
    /// ahead of the real time.
    pub(crate) async fn start_ahead(extra: &str, ahead_secs: u64) -> Self {
        let (listener, url) = listen().await;
        let dir = TempDir::new("issuer");
        let client_key = es256();
        let jwk = client_key.public_jwk().to_json_value().to_string();
        let hash = &*SECRET_HASH;
        let cc = "client_credentials";
        let text = IssuerFixture::new(&url)
            .data_dir(dir.path().join("data").display())
            .database(format!(
                "sqlite://{}?mode=rwc",
                dir.path().join("issuer.db").display()
            ))
            .nonce(true)
            .client(
                ClientFixture::confidential("svc", hash)
                    .grants([cc, "refresh_token", GRANT_EXCHANGE])
                    .scopes(["read", "write"])
                    .default_scopes(["read"])
                    .audiences([API]),
            )
            .client(
                ClientFixture::confidential("short", hash)
                    .grants([cc])
                    .scopes(["read"])
                    .audiences([API])
                    .line("access_token_lifetime_secs = 2"),
            )
            .client(
                ClientFixture::keyed("keyed", jwk)
                    .grants([cc])
                    .scopes(["read"])
                    .audiences([API]),
            )
            .client(
                ClientFixture::public("public")
                    .grants([GRANT_EXCHANGE, "refresh_token"])
                    .scopes(["read", "write"])
                    .audiences([API])
                    .line("access_token_lifetime_secs = 2"),
            )
            .client(
                ClientFixture::confidential("delegate", hash)
                    .grants([GRANT_EXCHANGE])
                    .scopes(["read", "write"])
                    .audiences([API])
                    .may_exchange_for(["svc"]),
            )
            .extra(extra)
            .render();
        let config = dpop_issuer::IssuerConfig::from_toml(
            &text,
            dir.path(),
            &std::collections::BTreeMap::<String, String>::new(),
        )
        .unwrap_or_else(|e| panic!("test configuration refused: {e}\n{text}"));
        let issuer = dpop_issuer::Issuer::open_with_clock(config, Arc::new(AheadClock(ahead_secs)))
            .await
            .expect("open the issuer");
        let log = Log::default();
        let recorder = log.clone();
        let router = issuer.router().layer(axum::middleware::from_fn(
            move |req: Request, next: Next| {
                let log = recorder.clone();
                async move { record(log, req, next, ahead_secs).await }
            },
        ));
        Self {
            url,
            client_key_pem: client_key
                .to_pkcs8_pem()
                .expect("PEM of the client key")
                .to_string(),
            log,
            _dir: dir,
            _server: serve(listener, router),
        }
    }

    /// The requests to the token endpoint so far.
    pub(crate) fn token_calls(&self) -> Vec<Seen> {
        self.log
            .all()
            .into_iter()
            .filter(|s| s.uri == "/token")
            .collect()
    }

    /// A token request for `client_id` authenticated with the shared secret.
    pub(crate) fn secret_request(&self, client_id: &str, grant: Grant) -> TokenRequest {
        let auth = ClientAuth::Secret {
            client_id: client_id.to_owned(),
            secret: Arc::new(SECRET.to_owned().into()),
        };
        TokenRequest::new(&self.url, auth, grant)
    }
}

/// The system clock, `.0` seconds ahead.
#[derive(Debug)]
struct AheadClock(u64);

impl dpop_core::Clock for AheadClock {
    fn now(&self) -> Option<UnixTime> {
        Some(UnixTime::from_secs(now_secs() + self.0))
    }
}

/// Records one issuer request: its form body, proof and the answer's status and `error`.
async fn record(log: Log, req: Request, next: Next, ahead_secs: u64) -> Response {
    let (parts, body) = req.into_parts();
    let body = axum::body::to_bytes(body, 1 << 20)
        .await
        .unwrap_or_default();
    let claims = parts
        .headers
        .get("dpop")
        .and_then(|v| v.to_str().ok())
        .and_then(|p| dpop_core::jwt::UnverifiedJwt::parse(p).ok())
        .map(|jwt| jwt.dangerous_claims().clone());
    let request = Request::from_parts(parts.clone(), Body::from(body.clone()));
    let response = next.run(request).await;
    let (mut rparts, rbody) = response.into_parts();
    if ahead_secs > 0 {
        let date = http_date(now_secs() + ahead_secs);
        rparts.headers.insert(
            header::DATE,
            HeaderValue::from_str(&date).expect("an HTTP date"),
        );
    }
    let rbody = axum::body::to_bytes(rbody, 1 << 20)
        .await
        .unwrap_or_default();
    let json = serde_json::from_slice::<Value>(&rbody).ok();
    let error = json
        .as_ref()
        .and_then(|v| v["error"].as_str().map(str::to_owned));
    log.push(Seen {
        method: parts.method.to_string(),
        uri: parts
            .uri
            .path_and_query()
            .map_or_else(String::new, ToString::to_string),
        headers: parts.headers.clone(),
        body: body.to_vec(),
        claims,
        status: rparts.status.as_u16(),
        error,
        reason: None,
        response: json,
        nonce_sent: rparts
            .headers
            .get("dpop-nonce")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
    });
    Response::from_parts(rparts, Body::from(rbody))
}
