//! End-to-end tests of `dpop issuer` with `dpop gateway`: both real binaries, a client
//! speaking HTTP. The gateway accepts the issuer's tokens (as JWTs, and through
//! introspection, where revocation and offboarding show at once), and the issuer's
//! management commands work on its state.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use dpop_core::{Algorithm, PrivateKey, ProofBuilder, SystemRandomSource};
use dpop_test::{Gateway, HttpResponse, TestUpstream, free_port, http_request, now};
use serde_json::Value;

const DPOP: &str = env!("CARGO_BIN_EXE_dpop");
const AUD: &str = "https://api.example.com";
const SVC_SECRET: &str = "svc-secret-0123456789abcdef";
const GW_SECRET: &str = "gateway-secret-0123456789abcdef";

/// A directory in the temporary directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("dpop-issuer-e2e-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        Self(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// An issuer configuration in its own directory (SQLite and keys there too).
struct IssuerSetup {
    dir: TempDir,
    port: u16,
}

impl IssuerSetup {
    fn new() -> Self {
        let dir = TempDir::new();
        let port = free_port();
        let config = format!(
            r#"
issuer = "http://127.0.0.1:{port}"
listen = "127.0.0.1:{port}"
data_dir = "data"

[[clients]]
id = "svc"
secret = "env:SVC_SECRET"
grants = ["client_credentials"]
scopes = ["read", "write"]
audiences = ["{AUD}"]

[[clients]]
id = "gateway"
secret = "env:GW_SECRET"
grants = []
introspection = true
"#
        );
        std::fs::write(dir.0.join("issuer.toml"), config).unwrap();
        Self { dir, port }
    }

    fn config(&self) -> PathBuf {
        self.dir.0.join("issuer.toml")
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(DPOP);
        cmd.arg("issuer")
            .args(args)
            .env("SVC_SECRET", SVC_SECRET)
            .env("GW_SECRET", GW_SECRET)
            .env_remove("RUST_LOG");
        cmd
    }

    async fn start(&self) -> Gateway {
        let config = self.config();
        let cmd = self.command(&["--config", config.to_str().unwrap()]);
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        Gateway::spawn_command(cmd, addr, Duration::from_secs(30))
            .await
            .unwrap_or_else(|e| panic!("dpop issuer: {e}"))
    }

    /// Runs a management subcommand to completion.
    fn manage(&self, args: &[&str]) -> std::process::Output {
        let config = self.config();
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["--config", config.to_str().unwrap()]);
        self.command(&all).output().unwrap()
    }
}

async fn post_form(url: &str, form: &[(&str, &str)], headers: &[(&str, &str)]) -> HttpResponse {
    let body: String = form
        .iter()
        .map(|(k, v)| format!("{k}={}", percent(v)))
        .collect::<Vec<_>>()
        .join("&");
    let mut h = vec![("content-type", "application/x-www-form-urlencoded")];
    h.extend_from_slice(headers);
    http_request("POST", url, &h, body.as_bytes())
        .await
        .unwrap_or_else(|e| panic!("POST {url}: {e}"))
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

fn proof(
    key: &PrivateKey,
    method: &str,
    url: &str,
    nonce: Option<&str>,
    token: Option<&str>,
) -> String {
    let mut b = ProofBuilder::new(method, url).unwrap();
    if let Some(t) = token {
        b = b.access_token(t);
    }
    if let Some(n) = nonce {
        b = b.nonce(n).unwrap();
    }
    b.sign(key, &SystemRandomSource, now()).unwrap()
}

/// Client credentials for `svc` with a proof from `key`, answering the nonce challenge.
async fn token_response(issuer: &str, key: &PrivateKey, scope: &str) -> HttpResponse {
    let endpoint = format!("{issuer}/token");
    let form = [
        ("grant_type", "client_credentials"),
        ("client_id", "svc"),
        ("client_secret", SVC_SECRET),
        ("scope", scope),
    ];
    let first = post_form(
        &endpoint,
        &form,
        &[("dpop", &proof(key, "POST", &endpoint, None, None))],
    )
    .await;
    if first.status != 400 {
        return first;
    }
    assert_eq!(
        first.json().unwrap()["error"],
        "use_dpop_nonce",
        "{first:?}"
    );
    let nonce = first.header("dpop-nonce").expect("DPoP-Nonce").to_owned();
    post_form(
        &endpoint,
        &form,
        &[("dpop", &proof(key, "POST", &endpoint, Some(&nonce), None))],
    )
    .await
}

async fn get_token(issuer: &str, key: &PrivateKey) -> String {
    let r = token_response(issuer, key, "read").await;
    assert_eq!(r.status, 200, "{r:?}");
    let body = r.json().unwrap();
    assert_eq!(body["token_type"], "DPoP");
    body["access_token"].as_str().unwrap().to_owned()
}

/// `GET path` through the gateway with `token` and a proof from `key`.
async fn call(gw: &str, path: &str, token: &str, key: &PrivateKey) -> HttpResponse {
    let url = format!("{gw}{path}");
    let auth = format!("DPoP {token}");
    let p = proof(key, "GET", &url, None, Some(token));
    http_request("GET", &url, &[("authorization", &auth), ("dpop", &p)], b"")
        .await
        .unwrap()
}

async fn start_gateway(args: &[String]) -> (Gateway, String) {
    let port = free_port();
    let mut cmd = Command::new(DPOP);
    cmd.arg("gateway")
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(args)
        .env_remove("RUST_LOG")
        .env_remove("DPOP_NONCE_SECRET");
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let gw = Gateway::spawn_command(cmd, addr, Duration::from_secs(30))
        .await
        .unwrap_or_else(|e| panic!("dpop gateway: {e}"));
    (gw, format!("http://{addr}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_accepts_the_issuers_tokens_and_refuses_stolen_ones() {
    let setup = IssuerSetup::new();
    let issuer = setup.start().await;
    let upstream = TestUpstream::start().await.unwrap();
    let (gw, gw_url) = start_gateway(&[
        "--upstream".into(),
        upstream.url(),
        "--issuer".into(),
        setup.url(),
        "--audience".into(),
        AUD.into(),
    ])
    .await;

    let key = PrivateKey::generate(Algorithm::Es256).unwrap();
    let token = get_token(&setup.url(), &key).await;
    let r = call(&gw_url, "/v1/items", &token, &key).await;
    assert_eq!(r.status, 200, "{r:?}\n{}\n{}", gw.output(), issuer.output());
    let seen = upstream.last_request().unwrap();
    assert_eq!(seen.header_values("x-dpop-subject"), ["svc"]);
    assert_eq!(seen.header_values("x-dpop-client-id"), ["svc"]);
    assert_eq!(
        seen.header_values("x-dpop-jkt"),
        [key.thumbprint().as_str()]
    );
    assert_eq!(seen.header_values("x-dpop-scopes"), ["read"]);

    // The token without its key: a thief's proof, or no proof at all.
    let thief = PrivateKey::generate(Algorithm::Es256).unwrap();
    let r = call(&gw_url, "/v1/items", &token, &thief).await;
    assert_eq!(r.status, 401, "{r:?}");
    assert!(
        r.header("www-authenticate")
            .unwrap()
            .contains("invalid_token"),
        "{r:?}"
    );
    let bearer = format!("Bearer {token}");
    let r = http_request(
        "GET",
        &format!("{gw_url}/v1/items"),
        &[("authorization", &bearer)],
        b"",
    )
    .await
    .unwrap();
    assert_eq!(r.status, 401, "{r:?}");
    assert_eq!(upstream.request_count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_introspecting_gateway_sees_revocation_and_offboarding_at_once() {
    let setup = IssuerSetup::new();
    let issuer = setup.start().await;
    let upstream = TestUpstream::start().await.unwrap();
    let gw_config = setup.dir.0.join("gateway.toml");
    std::fs::write(
        &gw_config,
        format!(
            "upstream = \"{}\"\nissuer = \"{}\"\naudience = \"{AUD}\"\n\n[introspection]\nendpoint = \"{}/introspect\"\nclient_id = \"gateway\"\nclient_secret = \"{GW_SECRET}\"\ncache_ttl_secs = 0\n",
            upstream.url(),
            setup.url(),
            setup.url()
        ),
    )
    .unwrap();
    let (gw, gw_url) =
        start_gateway(&["--config".into(), gw_config.to_str().unwrap().into()]).await;

    let key = PrivateKey::generate(Algorithm::Es256).unwrap();
    let token = get_token(&setup.url(), &key).await;
    let r = call(&gw_url, "/a", &token, &key).await;
    assert_eq!(r.status, 200, "{r:?}\n{}\n{}", gw.output(), issuer.output());

    // The client revokes its token: the very next call is refused.
    let r = post_form(
        &format!("{}/revoke", setup.url()),
        &[
            ("token", &token),
            ("client_id", "svc"),
            ("client_secret", SVC_SECRET),
        ],
        &[],
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    let r = call(&gw_url, "/b", &token, &key).await;
    assert_eq!(r.status, 401, "{r:?}");

    // Offboarding: a fresh token works until the client is disabled, then neither the
    // token nor the client's credentials are accepted.
    let token = get_token(&setup.url(), &key).await;
    let r = call(&gw_url, "/c", &token, &key).await;
    assert_eq!(r.status, 200, "{r:?}\n{}\n{}", gw.output(), issuer.output());
    let out = setup.manage(&["disable-client", "svc"]);
    assert!(out.status.success(), "{out:?}");
    let r = call(&gw_url, "/d", &token, &key).await;
    assert_eq!(r.status, 401, "{r:?}");
    let r = token_response(&setup.url(), &key, "read").await;
    assert_eq!(r.status, 401, "{r:?}");
    assert_eq!(r.json().unwrap()["error"], "invalid_client");
    assert_eq!(
        upstream.request_count(),
        2,
        "only the calls before each revocation passed"
    );

    // Revocation has one-second resolution (token iat): tokens issued in the second of
    // the disabling stay revoked, so re-enable in a later second.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let out = setup.manage(&["enable-client", "svc"]);
    assert!(out.status.success(), "{out:?}");
    let token = get_token(&setup.url(), &key).await;
    assert_eq!(call(&gw_url, "/e", &token, &key).await.status, 200);
}

fn jwks_kids(body: &Value) -> Vec<String> {
    body["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap().to_owned())
        .collect()
}

fn kid_of(token: &str) -> String {
    dpop_core::jwt::peek_kid(token).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotate_key_and_restart_keep_old_tokens_verifiable() {
    let setup = IssuerSetup::new();
    let mut issuer = setup.start().await;
    let key = PrivateKey::generate(Algorithm::Es256).unwrap();
    let old_token = get_token(&setup.url(), &key).await;
    let old_kid = kid_of(&old_token);
    let key_file = setup.dir.0.join("data/keys").join(format!("{old_kid}.pem"));
    assert_mode(&key_file, 0o600);
    assert_mode(&setup.dir.0.join("data/keys"), 0o700);

    let status = issuer.terminate(Duration::from_secs(10)).await.unwrap();
    assert!(status.success(), "SIGTERM is a clean stop: {status:?}");
    let out = setup.manage(&["rotate-key", "--activate-in", "0"]);
    assert!(out.status.success(), "{out:?}");
    let new_kid = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    assert_ne!(new_kid, old_kid);
    assert!(!key_file.exists(), "a retired private key is deleted");

    let _issuer = setup.start().await;
    let jwks = http_request("GET", &format!("{}/jwks", setup.url()), &[], b"")
        .await
        .unwrap();
    let kids = jwks_kids(&jwks.json().unwrap());
    assert_eq!(kids.len(), 2, "{kids:?}");
    assert!(
        kids.contains(&old_kid) && kids.contains(&new_kid),
        "{kids:?}"
    );
    let new_token = get_token(&setup.url(), &key).await;
    assert_eq!(kid_of(&new_token), new_kid);

    // Tokens signed before the rotation and the restart still introspect as active.
    let r = post_form(
        &format!("{}/introspect", setup.url()),
        &[
            ("token", &old_token),
            ("client_id", "gateway"),
            ("client_secret", GW_SECRET),
        ],
        &[],
    )
    .await;
    assert_eq!(r.json().unwrap()["active"], true, "{r:?}");
}

fn assert_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt as _;
    let actual = std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    assert_eq!(actual, mode, "{}", path.display());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issuer_commands_report_usage_errors_with_exit_2() {
    // hash-secret reads stdin and prints an Argon2id hash; short secrets are refused.
    let hash = |input: &str| {
        let mut child = Command::new(DPOP)
            .args(["issuer", "hash-secret"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        std::io::Write::write_all(child.stdin.as_mut().unwrap(), input.as_bytes()).unwrap();
        child.wait_with_output().unwrap()
    };
    let out = hash("a-long-enough-secret-value\n");
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8(out.stdout)
            .unwrap()
            .starts_with("$argon2id$")
    );
    let out = hash("short\n");
    assert_eq!(out.status.code(), Some(2), "{out:?}");

    let setup = IssuerSetup::new();
    let out = setup.command(&[]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "no --config: {out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("--config"));
    let out = setup
        .command(&["--config", "/nonexistent/issuer.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let out = setup.manage(&["disable-client", "nobody"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("nobody"));

    // A plaintext secret in the file is refused, naming the client.
    std::fs::write(
        setup.config(),
        format!("issuer = \"{}\"\n[[clients]]\nid = \"x\"\nsecret = \"hunter2\"\ngrants = [\"client_credentials\"]\naudiences = [\"{AUD}\"]\n", setup.url()),
    )
    .unwrap();
    let out = setup
        .command(&["--config", setup.config().to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("client \"x\"") && err.contains("plaintext"),
        "{err}"
    );
}
