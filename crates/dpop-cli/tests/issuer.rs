//! End-to-end tests of `dpop issuer` with `dpop gateway`: both real binaries, a client
//! speaking HTTP. The gateway accepts the issuer's tokens (as JWTs, and through
//! introspection, where revocation and offboarding show at once), and the issuer's
//! management commands work on its state.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use dpop_core::{Algorithm, PrivateKey};
use dpop_test::{
    ClientFixture, Gateway, HttpResponse, IssuerFixture, TestUpstream, free_port, http_request,
};
use serde_json::Value;

use crate::common::{
    self, AUD, DPOP, GW_SECRET, SVC_SECRET, TempDir, assert_mode, gateway_flags, hangup,
    introspecting_gateway_toml, issuer_command, p, post_form, revoke_as_svc, start_gateway,
    start_issuer, token_with_nonce_retry,
};

/// An issuer configuration in its own directory (SQLite and keys there too).
pub(crate) struct IssuerSetup {
    dir: TempDir,
    port: u16,
}

impl IssuerSetup {
    pub(crate) fn new() -> Self {
        Self::with(&[])
    }

    /// With more top-level lines.
    fn with(top: &[&str]) -> Self {
        let dir = TempDir::new("issuer-e2e");
        let port = free_port();
        let mut fixture = IssuerFixture::new(format!("http://127.0.0.1:{port}"));
        for line in top {
            fixture = fixture.top(*line);
        }
        let config = fixture
            .top(format!("listen = \"127.0.0.1:{port}\""))
            .data_dir("data")
            .client(
                ClientFixture::confidential("svc", "env:SVC_SECRET")
                    .grants(["client_credentials"])
                    .scopes(["read", "write"])
                    .audiences([AUD]),
            )
            .client(
                ClientFixture::confidential("gateway", "env:GW_SECRET")
                    .grants(Vec::<String>::new())
                    .line("introspection = true"),
            )
            .render();
        std::fs::write(dir.file("issuer.toml"), config).unwrap();
        Self { dir, port }
    }

    pub(crate) fn config(&self) -> PathBuf {
        self.dir.file("issuer.toml")
    }

    pub(crate) fn port(&self) -> u16 {
        self.port
    }

    pub(crate) fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    async fn start(&self) -> Gateway {
        start_issuer(&self.config(), self.port).await
    }

    /// Runs a management subcommand to completion.
    fn manage(&self, args: &[&str]) -> std::process::Output {
        let config = self.config();
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["--config", p(&config)]);
        issuer_command(&all).output().unwrap()
    }
}

/// Client credentials for `svc` with a proof from `key`, answering the nonce challenge.
pub(crate) async fn token_response(issuer: &str, key: &PrivateKey, scope: &str) -> HttpResponse {
    let form = [
        ("grant_type", "client_credentials"),
        ("client_id", "svc"),
        ("client_secret", SVC_SECRET),
        ("scope", scope),
    ];
    token_with_nonce_retry(&format!("{issuer}/token"), key, &form).await
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
    common::call(&url, &url, token, key, None).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_accepts_the_issuers_tokens_and_refuses_stolen_ones() {
    let setup = IssuerSetup::new();
    let issuer = setup.start().await;
    let upstream = TestUpstream::start().await.unwrap();
    let (gw, gw_url) = start_gateway(&gateway_flags(&upstream.url(), &setup.url())).await;

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

/// Regression: `dpop gateway --issuer http://127.0.0.1:PORT/` (a trailing slash) used to
/// fail forever with "metadata names another issuer", while the issuer and `dpop token`
/// accepted the same URL. One canonical issuer form now holds everywhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_given_the_issuer_with_a_trailing_slash_accepts_its_tokens() {
    let setup = IssuerSetup::new();
    let issuer = setup.start().await;
    let upstream = TestUpstream::start().await.unwrap();
    let with_slash = format!("{}/", setup.url());
    let (gw, gw_url) = start_gateway(&gateway_flags(&upstream.url(), &with_slash)).await;

    let key = PrivateKey::generate(Algorithm::Es256).unwrap();
    let token = get_token(&setup.url(), &key).await;
    let r = call(&gw_url, "/v1/items", &token, &key).await;
    assert_eq!(r.status, 200, "{r:?}\n{}\n{}", gw.output(), issuer.output());
    assert_eq!(upstream.request_count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_introspecting_gateway_sees_revocation_and_offboarding_at_once() {
    let setup = IssuerSetup::new();
    let issuer = setup.start().await;
    let upstream = TestUpstream::start().await.unwrap();
    let gw_config = setup.dir.file("gateway.toml");
    let text = introspecting_gateway_toml(&upstream.url(), &setup.url(), &setup.url(), 0);
    std::fs::write(&gw_config, text).unwrap();
    let (gw, gw_url) = start_gateway(&["--config", p(&gw_config)]).await;

    let key = PrivateKey::generate(Algorithm::Es256).unwrap();
    let token = get_token(&setup.url(), &key).await;
    let r = call(&gw_url, "/a", &token, &key).await;
    assert_eq!(r.status, 200, "{r:?}\n{}\n{}", gw.output(), issuer.output());

    // The client revokes its token: the very next call is refused.
    let r = revoke_as_svc(&setup.url(), &token).await;
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
    // The command says when each kind of gateway stops accepting the client's tokens.
    let said = String::from_utf8_lossy(&out.stderr);
    for needle in [
        "At once",
        "introspect",
        "cache_ttl_secs, default 10 s",
        "verify JWTs locally",
        "at most 300 s",
    ] {
        assert!(said.contains(needle), "{needle:?} missing from: {said}");
    }
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
    dpop_core::jwt::UnverifiedJwt::parse(token)
        .unwrap()
        .kid()
        .unwrap()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotate_key_and_restart_keep_old_tokens_verifiable() {
    let setup = IssuerSetup::new();
    let mut issuer = setup.start().await;
    let key = PrivateKey::generate(Algorithm::Es256).unwrap();
    let old_token = get_token(&setup.url(), &key).await;
    let old_kid = kid_of(&old_token);
    let key_file = setup.dir.file("data/keys").join(format!("{old_kid}.pem"));
    assert_mode(&key_file, 0o600);
    assert_mode(&setup.dir.file("data/keys"), 0o700);

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
    let out = issuer_command(&[]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "no --config: {out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("--config"));
    let out = issuer_command(&["--config", "/nonexistent/issuer.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let out = setup.manage(&["disable-client", "nobody"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("nobody"));

    // A plaintext secret in the file is refused, naming the client.
    std::fs::write(
        setup.config(),
        IssuerFixture::new(setup.url())
            .client(
                ClientFixture::confidential("x", "hunter2")
                    .grants(["client_credentials"])
                    .audiences([AUD]),
            )
            .render(),
    )
    .unwrap();
    let out = issuer_command(&["--config", p(&setup.config())])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("client \"x\"") && err.contains("plaintext"),
        "{err}"
    );
}

/// The issuer binds its admin listener before the serving one, so a probe or script that
/// sees the serving port accept connections can query `/readyz` at once. With both
/// addresses taken, start-up fails on the admin address.
#[test]
fn the_issuer_binds_its_admin_listener_first() {
    let admin = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let admin = admin.local_addr().unwrap();
    let setup = IssuerSetup::with(&[&format!("admin_listen = \"{admin}\"")]);
    let _serving = std::net::TcpListener::bind(("127.0.0.1", setup.port())).unwrap();
    let out = issuer_command(&["--config", p(&setup.config())])
        .output()
        .unwrap();
    assert_ne!(out.status.code(), Some(0), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("cannot listen on {admin}")), "{err}");
}

/// The issuer's access log: one `dpop::access` line per request with the endpoint, the
/// grant, the client, the status or OAuth error code and the duration, never the
/// secret, the proof or the token; and its `/metrics` names the endpoint as the route.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_issuer_logs_each_token_request_without_secrets() {
    let admin = free_port();
    let admin_line = format!("admin_listen = \"127.0.0.1:{admin}\"");
    let setup = IssuerSetup::with(&["log_json = true", &admin_line]);
    let issuer = setup.start().await;
    let key = PrivateKey::generate(Algorithm::Es256).unwrap();
    let token = get_token(&setup.url(), &key).await;
    let lines: Vec<Value> = issuer
        .output()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["target"] == "dpop::access")
        .collect();
    let token_lines: Vec<&Value> = lines
        .iter()
        .filter(|l| l["fields"]["endpoint"] == "token")
        .collect();
    // The nonce challenge, then the token.
    assert_eq!(token_lines.len(), 2, "{lines:?}");
    let (challenge, issued) = (&token_lines[0]["fields"], &token_lines[1]["fields"]);
    assert_eq!(challenge["status"], 400);
    assert_eq!(challenge["error"], "use_dpop_nonce");
    assert_eq!(challenge["grant_type"], "client_credentials");
    assert_eq!(issued["status"], 200);
    assert_eq!(issued["method"], "POST");
    assert_eq!(issued["grant_type"], "client_credentials");
    assert_eq!(issued["client_id"], "svc");
    assert!(issued.get("error").is_none(), "{issued}");
    assert!(issued["duration_ms"].as_f64().unwrap() > 0.0, "{issued}");
    let log = issuer.output();
    assert!(!log.contains(SVC_SECRET), "{log}");
    assert!(!log.contains(&token), "{log}");
    let signature = token.rsplit('.').next().unwrap();
    assert!(!log.contains(signature), "{log}");

    let metrics = dpop_test::http_get(&format!("http://127.0.0.1:{admin}/metrics"))
        .await
        .unwrap()
        .text();
    for series in [
        r#"http_server_request_duration_seconds_count{http_request_method="POST",http_response_status_code="200",http_route="token"} 1"#,
        r#"http_server_request_duration_seconds_count{http_request_method="POST",http_response_status_code="400",http_route="token"} 1"#,
        r#"dpop_issuer_token_requests_total{grant="client_credentials",result="issued"} 1"#,
    ] {
        assert!(metrics.contains(series), "{series} missing:\n{metrics}");
    }
    let ready = dpop_test::http_get(&format!("http://127.0.0.1:{admin}/readyz"))
        .await
        .unwrap();
    assert_eq!(ready.status, 200);
    assert_eq!(
        ready.text().trim(),
        r#"{"database_reachable":true,"ready":true,"signing_key":true}"#
    );
}

/// The issuer does not reload: a SIGHUP (`systemctl reload`, a stray `kill -HUP`) is
/// logged as ignored and the issuer keeps serving, instead of ending the process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_is_ignored_with_a_warning_not_fatal() {
    let setup = IssuerSetup::new();
    let mut issuer = setup.start().await;
    // One signal at a time: signals sent back to back may be delivered as one.
    for warnings in 1..=2 {
        hangup(issuer.id());
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while issuer.output().matches("SIGHUP ignored").count() < warnings {
            assert!(
                std::time::Instant::now() < deadline,
                "no warning after SIGHUP {warnings}: {}",
                issuer.output()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    assert!(issuer.try_wait().unwrap().is_none(), "the issuer ended");
    let key = PrivateKey::generate(Algorithm::Es256).unwrap();
    let token = get_token(&setup.url(), &key).await;
    assert!(!token.is_empty());
}

/// `[keys] signing_key`: the issuer signs with the key file the operator gave it,
/// `rotate-key` needs the next key's reference, and references it cannot use stop it
/// with the configuration exit status (2) and a message naming the key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_managed_signing_keys() {
    let pem = || {
        PrivateKey::generate(Algorithm::Es256)
            .unwrap()
            .to_pkcs8_pem()
            .unwrap()
            .to_string()
    };
    let probe = IssuerSetup::new();
    let first_text = pem();
    let first = probe.dir.write("first.pem", &first_text, 0o600);
    let next = probe.dir.write("next.pem", &pem(), 0o600);
    let thumbprint = |text: &str| {
        PrivateKey::from_pkcs8_pem(text, None)
            .unwrap()
            .thumbprint()
            .as_str()
            .to_owned()
    };
    let first_kid = thumbprint(&first_text);
    let keys_line = |reference: &str| format!("keys = {{ signing_key = \"{reference}\" }}");
    let setup = IssuerSetup::with(&[&keys_line(&format!("file:{}", p(&first)))]);

    let mut issuer = setup.start().await;
    let key = PrivateKey::generate(Algorithm::Es256).unwrap();
    let token = get_token(&setup.url(), &key).await;
    assert_eq!(kid_of(&token), first_kid);
    let keys_dir = setup.dir.file("data/keys");
    let first_ref = keys_dir.join(format!("{first_kid}.ref"));
    assert_mode(&first_ref, 0o600);
    let status = issuer.terminate(Duration::from_secs(10)).await.unwrap();
    assert!(status.success(), "{status:?}");

    // No software key in the operator's place.
    let out = setup.manage(&["rotate-key"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--key"), "{err}");

    let next_ref = format!("file:{}", p(&next));
    let out = setup.manage(&["rotate-key", "--activate-in", "0", "--key", &next_ref]);
    assert!(out.status.success(), "{out:?}");
    let next_kid = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    assert_ne!(next_kid, first_kid);
    assert!(
        !first_ref.exists(),
        "the retired key's reference is deleted"
    );
    assert!(first.exists(), "the key file itself is the operator's");
    assert_mode(&keys_dir.join(format!("{next_kid}.ref")), 0o600);
    let _issuer = setup.start().await;
    assert_eq!(kid_of(&get_token(&setup.url(), &key).await), next_kid);

    // References it cannot use: exit status 2, one line naming the key.
    let refused = |reference: &str, expected: &str| {
        let bad = IssuerSetup::with(&[&keys_line(reference)]);
        let out = issuer_command(&["--config", p(&bad.config())])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{reference}: {out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(expected), "{reference}: {err}");
    };
    refused(
        "pkcs11:token=issuer;object=signing?module-path=/nonexistent/pkcs11-module.so&pin-source=env:PIN",
        "/nonexistent/pkcs11-module.so",
    );
    let loose = probe.dir.write("loose.pem", &pem(), 0o644);
    refused(&format!("file:{}", p(&loose)), "chmod 600");
    refused("pkcs11:object=x", "module-path");
    // A TPM that is not there (or, in a build without the tpm feature, no TPM support).
    let out = setup.manage(&[
        "rotate-key",
        "--key",
        "tpm2:handle=0x81000001?tcti=swtpm:host=127.0.0.1,port=1",
    ]);
    assert_ne!(out.status.code(), Some(0), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("tpm2:handle=0x81000001"), "{out:?}");
}

/// The issuer signs with a key kept in a PKCS#11 token (SoftHSM,
/// `DPOP_TEST_SOFTHSM_MODULE`) that it cannot export; the gateway accepts its tokens,
/// and the token's `kid` is the device key's thumbprint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_issuer_signs_with_a_key_in_a_pkcs11_token() {
    let Some(module) = crate::device_keys::softhsm() else {
        return;
    };
    let hsm = dpop_test::SoftHsmToken::create(&module, "issuer-keys").unwrap();
    let uri = hsm.uri("issuer-signing", "5151");
    let keygen = Command::new(DPOP)
        .args(["keygen", "--key", &uri])
        .envs(hsm.env())
        .output()
        .unwrap();
    assert!(keygen.status.success(), "{keygen:?}");
    let device_kid = String::from_utf8(keygen.stdout).unwrap().trim().to_owned();

    let setup = IssuerSetup::with(&[&format!("keys = {{ signing_key = \"{uri}\" }}")]);
    let mut cmd = issuer_command(&["--config", p(&setup.config())]);
    cmd.envs(hsm.env());
    let issuer =
        common::spawn_server(cmd, setup.port(), Duration::from_secs(60), "dpop issuer").await;
    let upstream = TestUpstream::start().await.unwrap();
    let (gw, gw_url) = start_gateway(&gateway_flags(&upstream.url(), &setup.url())).await;

    let key = PrivateKey::generate(Algorithm::Es256).unwrap();
    let token = get_token(&setup.url(), &key).await;
    assert_eq!(kid_of(&token), device_kid);
    let r = call(&gw_url, "/v1/items", &token, &key).await;
    assert_eq!(r.status, 200, "{r:?}\n{}\n{}", gw.output(), issuer.output());
    // The reference kept for the next start holds no PIN, only where to read it.
    let kept =
        std::fs::read_to_string(setup.dir.file(&format!("data/keys/{device_kid}.ref"))).unwrap();
    assert!(kept.starts_with("pkcs11:"), "{kept}");
    assert!(!kept.contains(dpop_test::SOFTHSM_USER_PIN), "{kept}");
}
