//! What the end-to-end tests share: the `dpop` binary and the secrets its processes get,
//! temporary files, running `dpop` commands, starting `dpop issuer` and `dpop gateway`
//! processes, HTTP by hand (forms, DPoP proofs, token requests) and the skips of tests
//! whose Redis is missing (PostgreSQL: [`dpop_test::PgSchema`]), and what a configuration
//! reload shows (log lines, `/readyz`, metrics).

use std::ffi::OsStr;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use dpop_core::{PrivateKey, ProofBuilder, RandomSource as _, SystemRandomSource};
use dpop_test::{
    Gateway, HttpResponse, RedisServer, b64url, free_port, http_get, http_request, now,
};
use serde_json::Value;

/// The binary under test.
pub(crate) const DPOP: &str = env!("CARGO_BIN_EXE_dpop");
/// The audience of the tokens the issuers here give out and the gateways accept.
pub(crate) const AUD: &str = "https://api.example.com";
/// The secret of the `svc` client (`SVC_SECRET` in the issuers' environment).
pub(crate) const SVC_SECRET: &str = "svc-secret-0123456789abcdef";
/// The secret of the introspecting `gateway` client (`GW_SECRET`).
pub(crate) const GW_SECRET: &str = "gateway-secret-0123456789abcdef";

/// How long a `dpop issuer` or `dpop gateway` process may take to listen.
const START_TIMEOUT: Duration = Duration::from_secs(30);

// ---- files ----

/// `dpop-LABEL-PID-N` in the temporary directory: a fresh path on every call.
fn temp_path(label: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    std::env::temp_dir().join(format!("dpop-{label}-{}-{n}", std::process::id()))
}

/// A directory in the temporary directory, removed on drop.
pub(crate) struct TempDir(pub(crate) PathBuf);

impl TempDir {
    /// An empty `dpop-LABEL-PID-N`.
    pub(crate) fn new(label: &str) -> Self {
        let path = temp_path(label);
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        Self(path)
    }

    pub(crate) fn file(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    /// A file `name` holding `text` with permission bits `mode` (Unix).
    pub(crate) fn write(&self, name: &str, text: &str, mode: u32) -> PathBuf {
        let path = self.file(name);
        std::fs::write(&path, text).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        }
        #[cfg(not(unix))]
        let _ = mode;
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A file in the temporary directory, removed on drop.
pub(crate) struct TempFile(PathBuf);

impl TempFile {
    /// `dpop-LABEL-PID-N.EXT` holding `content`.
    pub(crate) fn new(label: &str, ext: &str, content: &str) -> Self {
        let path = temp_path(label).with_extension(ext);
        std::fs::write(&path, content).unwrap();
        Self(path)
    }

    pub(crate) fn path(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

pub(crate) fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// Asserts the permission bits of `path`.
#[cfg(unix)]
pub(crate) fn assert_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt as _;
    let actual = std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    assert_eq!(actual, mode, "{}", path.display());
}

// ---- running dpop ----

/// How a `dpop` command ended.
#[derive(Debug)]
pub(crate) struct Run {
    pub(crate) code: i32,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
}

impl From<Output> for Run {
    fn from(out: Output) -> Self {
        Self {
            code: out.status.code().unwrap(),
            stdout: String::from_utf8(out.stdout).unwrap(),
            stderr: String::from_utf8(out.stderr).unwrap(),
        }
    }
}

impl Run {
    /// stdout, after checking the command succeeded.
    #[track_caller]
    pub(crate) fn ok(&self) -> &str {
        assert_eq!(self.code, 0, "{self:#?}");
        &self.stdout
    }

    /// The single line of stdout, after checking the command succeeded.
    pub(crate) fn line(&self) -> &str {
        assert_eq!(self.code, 0, "{self:?}");
        let out = self.stdout.strip_suffix('\n').unwrap_or(&self.stdout);
        assert!(!out.contains('\n'), "expected one line: {self:?}");
        out
    }

    /// stdout as JSON, after checking the command succeeded.
    #[track_caller]
    pub(crate) fn json(&self) -> Value {
        serde_json::from_str(self.ok()).unwrap_or_else(|e| panic!("{e}: {self:#?}"))
    }

    /// stdout as JSON whatever the exit code.
    #[track_caller]
    pub(crate) fn json_lenient(&self) -> Value {
        serde_json::from_str(self.stdout.trim()).unwrap_or_else(|e| panic!("{e}: {self:#?}"))
    }
}

/// Runs `dpop args` with `env` added and no `RUST_LOG` from the caller's shell, off the
/// async runtime (the servers of the test run on it).
pub(crate) async fn run_dpop(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(DPOP);
    cmd.args(args)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    tokio::task::spawn_blocking(move || cmd.output())
        .await
        .unwrap()
        .unwrap()
}

// ---- processes ----

/// Spawns `cmd`, a server that listens on `127.0.0.1:port`, and waits up to `timeout`
/// until it accepts connections; a failure names `what`.
pub(crate) async fn spawn_server(
    cmd: Command,
    port: u16,
    timeout: Duration,
    what: &str,
) -> Gateway {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    Gateway::spawn_command(cmd, addr, timeout)
        .await
        .unwrap_or_else(|e| panic!("{what}: {e}"))
}

/// `dpop issuer args`, with the secrets of `svc` and `gateway` in `SVC_SECRET` and
/// `GW_SECRET` and no `RUST_LOG` from the caller's shell.
pub(crate) fn issuer_command(args: &[&str]) -> Command {
    let mut cmd = Command::new(DPOP);
    cmd.arg("issuer")
        .args(args)
        .env("SVC_SECRET", SVC_SECRET)
        .env("GW_SECRET", GW_SECRET)
        .env_remove("RUST_LOG");
    cmd
}

/// `dpop issuer --config CONFIG`, whose configuration says it listens on
/// `127.0.0.1:port`, once it accepts connections.
pub(crate) async fn start_issuer(config: &Path, port: u16) -> Gateway {
    let cmd = issuer_command(&["--config", p(config)]);
    spawn_server(cmd, port, START_TIMEOUT, "dpop issuer").await
}

/// `dpop gateway`, with no nonce secret or log level from the caller's shell.
pub(crate) fn gateway_command() -> Command {
    let mut cmd = Command::new(DPOP);
    cmd.arg("gateway")
        .env_remove("DPOP_NONCE_SECRET")
        .env_remove("RUST_LOG");
    cmd
}

/// `--allowed-host 127.0.0.1:PORT`, the host rule of a gateway reached on loopback,
/// unless `args` set public URLs (by flag or in a `--config` file).
pub(crate) fn loopback_host_rule<S: AsRef<OsStr>>(args: &[S], port: u16) -> Vec<String> {
    let args: Vec<&OsStr> = args.iter().map(AsRef::as_ref).collect();
    let public = args.iter().any(|a| *a == "--public-url")
        || args.windows(2).any(|w| {
            w[0] == "--config"
                && std::fs::read_to_string(w[1]).is_ok_and(|t| t.contains("public_url"))
        });
    if public {
        Vec::new()
    } else {
        vec!["--allowed-host".to_owned(), format!("127.0.0.1:{port}")]
    }
}

/// `dpop gateway --listen 127.0.0.1:PORT` (a free port) and `args`, once it accepts
/// connections; with its URL.
pub(crate) async fn start_gateway<S: AsRef<OsStr>>(args: &[S]) -> (Gateway, String) {
    let port = free_port();
    let mut cmd = gateway_command();
    cmd.args(["--listen", &format!("127.0.0.1:{port}")])
        .args(args)
        .args(loopback_host_rule(args, port));
    let gw = spawn_server(cmd, port, START_TIMEOUT, "dpop gateway").await;
    let url = format!("http://{}", gw.addr());
    (gw, url)
}

/// `--upstream`, `--issuer` and `--audience` flags.
pub(crate) fn gateway_flags(upstream: &str, issuer: &str) -> Vec<String> {
    [
        "--upstream",
        upstream,
        "--issuer",
        issuer,
        "--audience",
        AUD,
    ]
    .map(str::to_owned)
    .to_vec()
}

/// A gateway configuration for `upstream` and the tokens of `issuer` (an identifier),
/// checking each token by introspection at `introspection` (an issuer's URL, where
/// `/introspect` is) as the `gateway` client, with a cache of `cache_ttl_secs`.
pub(crate) fn introspecting_gateway_toml(
    upstream: &str,
    issuer: &str,
    introspection: &str,
    cache_ttl_secs: u64,
) -> String {
    format!(
        "upstream = \"{upstream}\"\nissuer = \"{issuer}\"\naudience = \"{AUD}\"\n\n[introspection]\nendpoint = \"{introspection}/introspect\"\nclient_id = \"gateway\"\nclient_secret = \"{GW_SECRET}\"\ncache_ttl_secs = {cache_ttl_secs}\n"
    )
}

/// A random nonce secret for gateways (`DPOP_NONCE_SECRET`).
pub(crate) fn random_secret() -> String {
    let mut bytes = [0u8; 32];
    SystemRandomSource.fill(&mut bytes).unwrap();
    b64url(&bytes)
}

// ---- Redis, or a skip ----

/// `DPOP_TEST_REDIS_URL`, when set and not empty.
fn redis_url_env() -> Option<String> {
    std::env::var("DPOP_TEST_REDIS_URL")
        .ok()
        .filter(|url| !url.is_empty())
}

/// `DPOP_TEST_REDIS_URL`, or `None` after saying the test is skipped.
pub(crate) fn shared_redis() -> Option<String> {
    let url = redis_url_env();
    if url.is_none() {
        eprintln!("skipped: DPOP_TEST_REDIS_URL not set");
    }
    url
}

/// A private `redis-server` that the test can stop and start, or `None` after saying
/// the test is skipped.
pub(crate) async fn private_redis() -> Option<RedisServer> {
    match RedisServer::spawn().await {
        Ok(Some(r)) => Some(r),
        Ok(None) => {
            eprintln!("skipped: no redis-server (set DPOP_TEST_REDIS_SERVER or PATH)");
            None
        }
        Err(e) => {
            eprintln!("skipped: redis-server did not start: {e}");
            None
        }
    }
}

/// A Redis URL for the replay store: `DPOP_TEST_REDIS_URL`, else a private
/// `redis-server` (returned, so it lives as long as the test), else `None` after saying
/// the test is skipped.
pub(crate) async fn redis() -> Option<(String, Option<RedisServer>)> {
    if let Some(url) = redis_url_env() {
        return Some((url, None));
    }
    private_redis().await.map(|r| (r.url(), Some(r)))
}

// ---- HTTP by hand ----

/// One request; a connection or protocol failure fails the test.
pub(crate) async fn send(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> HttpResponse {
    http_request(method, url, headers, body)
        .await
        .unwrap_or_else(|e| panic!("{method} {url}: {e}"))
}

fn percent(v: &str) -> String {
    v.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// `POST url` of `form`, URL-encoded, with `headers`.
pub(crate) async fn post_form(
    url: &str,
    form: &[(&str, &str)],
    headers: &[(&str, &str)],
) -> HttpResponse {
    let body: String = form
        .iter()
        .map(|(k, v)| format!("{k}={}", percent(v)))
        .collect::<Vec<_>>()
        .join("&");
    let mut h = vec![("content-type", "application/x-www-form-urlencoded")];
    h.extend_from_slice(headers);
    send("POST", url, &h, body.as_bytes()).await
}

/// A fresh DPoP proof by `key` for `method` on `htu`, with `nonce` and the `ath` of
/// `token` when given.
pub(crate) fn proof(
    key: &PrivateKey,
    method: &str,
    htu: &str,
    nonce: Option<&str>,
    token: Option<&str>,
) -> String {
    let mut b = ProofBuilder::new(method, htu).unwrap();
    if let Some(t) = token {
        b = b.access_token(t);
    }
    if let Some(n) = nonce {
        b = b.nonce(n).unwrap();
    }
    b.sign(key, &SystemRandomSource, now()).unwrap()
}

/// `GET url` with `token` and a proof for `htu` from `key`.
pub(crate) async fn call(
    url: &str,
    htu: &str,
    token: &str,
    key: &PrivateKey,
    nonce: Option<&str>,
) -> HttpResponse {
    let auth = format!("DPoP {token}");
    let dpop = proof(key, "GET", htu, nonce, Some(token));
    send_dpop("GET", url, &auth, &dpop, &[], b"").await
}

/// `method url` with `Authorization` and `DPoP` (as given), then `extra`, and `body`.
pub(crate) async fn send_dpop(
    method: &str,
    url: &str,
    authorization: &str,
    dpop: &str,
    extra: &[(&str, &str)],
    body: &[u8],
) -> HttpResponse {
    let mut headers = vec![("authorization", authorization), ("dpop", dpop)];
    headers.extend_from_slice(extra);
    send(method, url, &headers, body).await
}

/// One token request: `form` to `endpoint` with a fresh proof by `key` for `htu`
/// carrying `nonce`. Returns the response and the proof sent.
pub(crate) async fn token_attempt(
    endpoint: &str,
    htu: &str,
    key: &PrivateKey,
    nonce: Option<&str>,
    form: &[(&str, &str)],
) -> (HttpResponse, String) {
    let dpop = proof(key, "POST", htu, nonce, None);
    let r = post_form(endpoint, form, &[("dpop", &dpop)]).await;
    (r, dpop)
}

/// A token request of `form` to `endpoint` with a proof by `key`, answering the
/// issuer's nonce challenge: a first answer of 400 must be `use_dpop_nonce`, and the
/// request is sent again with its nonce.
pub(crate) async fn token_with_nonce_retry(
    endpoint: &str,
    key: &PrivateKey,
    form: &[(&str, &str)],
) -> HttpResponse {
    let (first, _) = token_attempt(endpoint, endpoint, key, None, form).await;
    if first.status != 400 {
        return first;
    }
    assert_eq!(
        first.json().unwrap()["error"],
        "use_dpop_nonce",
        "{first:?}"
    );
    let nonce = first.header("dpop-nonce").expect("DPoP-Nonce").to_owned();
    token_attempt(endpoint, endpoint, key, Some(&nonce), form)
        .await
        .0
}

/// `svc` revokes `token` at the issuer at `issuer_url`.
pub(crate) async fn revoke_as_svc(issuer_url: &str, token: &str) -> HttpResponse {
    post_form(
        &format!("{issuer_url}/revoke"),
        &[
            ("token", token),
            ("client_id", "svc"),
            ("client_secret", SVC_SECRET),
        ],
        &[],
    )
    .await
}

pub(crate) fn www(r: &HttpResponse) -> &str {
    r.header("www-authenticate").unwrap_or("")
}

/// The claims of a JWT or proof, not verified.
pub(crate) fn claims(jws: &str) -> Value {
    dpop_core::jwt::UnverifiedJwt::parse(jws.trim())
        .unwrap()
        .dangerous_claims()
        .clone()
}

/// Sends SIGHUP to the process `pid` (a server this test started).
pub(crate) fn hangup(pid: u32) {
    let ok = Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -HUP {pid}");
}

// ---- configuration reloads ----

/// Waits until the server's log holds `n` lines containing `needle`; returns the `n`th.
pub(crate) async fn logged(gw: &Gateway, needle: &str, n: usize) -> String {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let log = gw.output();
        let lines: Vec<&str> = log.lines().filter(|l| l.contains(needle)).collect();
        if lines.len() >= n {
            return lines[n - 1].to_owned();
        }
        assert!(Instant::now() < deadline, "no {needle:?} x{n}:\n{log}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The `config_generation` that `/readyz` on the admin listener `admin` reports.
pub(crate) async fn config_generation(admin: &str) -> u64 {
    let r = http_get(&format!("{admin}/readyz")).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    r.json().unwrap()["config_generation"].as_u64().unwrap()
}

/// The value of the metric sample `name` (no labels).
pub(crate) async fn metric(admin: &str, name: &str) -> f64 {
    let text = send("GET", &format!("{admin}/metrics"), &[], b"")
        .await
        .text();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .unwrap_or_else(|| panic!("no {name}:\n{text}"))
        .trim()
        .parse()
        .unwrap()
}
