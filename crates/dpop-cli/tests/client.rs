//! End-to-end tests of `dpop token` and `dpop curl`: the real binary against the issuer
//! (dpop-issuer, in-process, nonces on at its token endpoint), a mock external issuer
//! for token exchange, and `dpop gateway` in front of an echo upstream.

use std::path::{Path, PathBuf};

use dpop_core::{Algorithm, Ath, PrivateKey};
use dpop_test::{ClientFixture, Gateway, IssuerFixture, MockIssuer, TestUpstream, TokenSpec};
use serde_json::{Value, json};

use crate::common::{
    AUD, Run, SVC_SECRET, TempDir, claims, gateway_flags, p, run_dpop, start_gateway,
};

/// The `aud` the mock CI issuer's job tokens carry.
const CI_AUD: &str = "https://issuer.test";

#[cfg(unix)]
fn chmod(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Runs `dpop args` with `env` added (off the async runtime: the servers run on it).
async fn dpop(args: &[&str], env: &[(&str, &str)]) -> Run {
    run_dpop(args, env).await.into()
}

/// The issuer in-process on loopback, a DPoP key file and the key file of `keyed`
/// (`private_key_jwt`). Clients: `svc` (secret in `SVC_SECRET`, client credentials,
/// scopes `read write`), `keyed`, and `ci` (public, token exchange of the mock CI
/// issuer's job tokens).
struct Setup {
    dir: TempDir,
    url: String,
    key: PathBuf,
    jkt: String,
    client_key: PathBuf,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<()>>,
}

impl Setup {
    async fn start(ci: Option<&MockIssuer>) -> Self {
        let dir = TempDir::new("client-e2e");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());

        let keygen = dpop(&["keygen", "--out", p(&dir.file("client.pem"))], &[]).await;
        let jkt = keygen.ok().trim().to_owned();
        let client_key = PrivateKey::generate(Algorithm::Es256).unwrap();
        let client_key_path = dir.file("keyed.pem");
        std::fs::write(&client_key_path, client_key.to_pkcs8_pem().unwrap()).unwrap();
        #[cfg(unix)]
        chmod(&client_key_path, 0o600);
        let jwk = client_key.public_jwk().to_json_value().to_string();

        let trust = ci.map_or_else(String::new, |ci| {
            format!(
                r#"
[[trust]]
name = "ci"
issuer = "{iss}"
audience = "{CI_AUD}"

[[trust.rules]]
claims = {{ repository = "acme/shop" }}
workload = "shop-deployer"
scopes = ["read"]
clients = ["ci"]
"#,
                iss = ci.url()
            )
        });
        let text = IssuerFixture::new(&url)
            .data_dir(dir.file("data").display())
            .database(format!(
                "sqlite://{}?mode=rwc",
                dir.file("issuer.db").display()
            ))
            .client(
                ClientFixture::confidential("svc", "env:SVC_SECRET")
                    .grants(["client_credentials"])
                    .scopes(["read", "write"])
                    .default_scopes(["read"])
                    .audiences([AUD]),
            )
            .client(
                ClientFixture::keyed("keyed", jwk)
                    .grants(["client_credentials"])
                    .scopes(["read"])
                    .audiences([AUD]),
            )
            .client(
                ClientFixture::public("ci")
                    .grants(["urn:ietf:params:oauth:grant-type:token-exchange"])
                    .scopes(["read"])
                    .audiences([AUD]),
            )
            .extra(trust)
            .render();
        let env =
            std::collections::BTreeMap::from([("SVC_SECRET".to_owned(), SVC_SECRET.to_owned())]);
        let config = dpop_issuer::IssuerConfig::from_toml(&text, &dir.0, &env)
            .unwrap_or_else(|e| panic!("{e}\n{text}"));
        let issuer = dpop_issuer::Issuer::open(config).await.unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            issuer
                .serve_on(listener, async move {
                    let _ = rx.await;
                })
                .await
                .unwrap();
        });
        Self {
            key: dir.file("client.pem"),
            jkt,
            client_key: client_key_path,
            dir,
            url,
            shutdown: Some(tx),
            server: Some(server),
        }
    }

    /// The flags of `svc`'s client credentials.
    fn svc_flags(&self) -> Vec<&str> {
        vec![
            "--issuer",
            &self.url,
            "--client-id",
            "svc",
            "--client-secret-env",
            "SVC_SECRET",
        ]
    }

    /// `dpop token --raw` for `svc`, bound to the key file.
    async fn token(&self) -> String {
        let mut args = vec!["token", "--key", p(&self.key), "--raw"];
        args.extend(self.svc_flags());
        let run = dpop(&args, &[("SVC_SECRET", SVC_SECRET)]).await;
        run.ok().trim().to_owned()
    }

    /// `dpop gateway` in front of `upstream`, accepting this issuer's tokens.
    async fn gateway(&self, upstream: &TestUpstream, extra: &[&str]) -> (Gateway, String) {
        let mut args = gateway_flags(&upstream.url(), &self.url);
        args.extend(extra.iter().map(|a| (*a).to_owned()));
        start_gateway(&args).await
    }

    async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(server) = self.server.take() {
            server.await.unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_prints_a_dpop_bound_token_response() {
    let setup = Setup::start(None).await;
    let thumbprint = dpop(&["thumbprint", p(&setup.key)], &[]).await;
    assert_eq!(thumbprint.ok().trim(), setup.jkt);

    let mut args = vec!["token", "--key", p(&setup.key), "--scope", "read write"];
    args.extend(setup.svc_flags());
    let run = dpop(&args, &[("SVC_SECRET", SVC_SECRET)]).await;
    let body = run.json();
    assert_eq!(body["token_type"], "DPoP", "{run:#?}");
    assert_eq!(body["expires_in"], 300);
    let token = claims(body["access_token"].as_str().unwrap());
    assert_eq!(token["cnf"]["jkt"], setup.jkt.as_str());
    assert_eq!(token["client_id"], "svc");
    assert_eq!(token["scope"], "read write");

    // --raw: the token alone, on one line.
    let raw = setup.token().await;
    assert!(!raw.contains('\n') && raw.split('.').count() == 3, "{raw}");
    assert_eq!(claims(&raw)["cnf"]["jkt"], setup.jkt.as_str());
    assert_eq!(claims(&raw)["scope"], "read");

    // A wrong secret is the issuer's refusal, exit 1.
    let mut args = vec!["token", "--key", p(&setup.key)];
    args.extend(setup.svc_flags());
    let run = dpop(&args, &[("SVC_SECRET", "wrong")]).await;
    assert_eq!(run.code, 1, "{run:#?}");
    assert!(run.stderr.contains("invalid_client"), "{run:#?}");
    // An unset variable is a usage error, exit 2.
    let run = dpop(&args, &[]).await;
    assert_eq!(run.code, 2, "{run:#?}");
    assert!(run.stderr.contains("SVC_SECRET"), "{run:#?}");
    setup.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_with_private_key_jwt() {
    let setup = Setup::start(None).await;
    let args = [
        "token",
        "--key",
        p(&setup.key),
        "--issuer",
        &setup.url,
        "--client-id",
        "keyed",
        "--client-key",
        p(&setup.client_key),
        "--raw",
    ];
    let run = dpop(&args, &[]).await;
    let token = claims(run.ok());
    assert_eq!(token["client_id"], "keyed");
    // Bound to the DPoP key, not to the client's authentication key.
    assert_eq!(token["cnf"]["jkt"], setup.jkt.as_str());
    setup.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_exchange_of_a_subject_token_file() {
    let ci = MockIssuer::start().await.unwrap();
    let setup = Setup::start(Some(&ci)).await;
    let job = ci.mint(&TokenSpec {
        sub: "repo:acme/shop:ref:refs/heads/main".into(),
        aud: CI_AUD.into(),
        typ: Some("JWT".into()),
        extra: json!({ "repository": "acme/shop" })
            .as_object()
            .cloned()
            .unwrap_or_default(),
        ..TokenSpec::default()
    });
    let subject = setup.dir.write("job-token", &format!("{job}\n"), 0o600);
    let args = [
        "token",
        "--key",
        p(&setup.key),
        "--issuer",
        &setup.url,
        "--client-id",
        "ci",
        "--subject-token-file",
        p(&subject),
    ];
    let run = dpop(&args, &[]).await;
    let body = run.json();
    assert_eq!(body["token_type"], "DPoP");
    assert_eq!(
        body["issued_token_type"],
        "urn:ietf:params:oauth:token-type:access_token"
    );
    let token = claims(body["access_token"].as_str().unwrap());
    assert_eq!(token["sub"], "shop-deployer");
    assert_eq!(token["cnf"]["jkt"], setup.jkt.as_str());

    // A missing subject token file is a usage error.
    std::fs::remove_file(&subject).unwrap();
    let run = dpop(&args, &[]).await;
    assert_eq!(run.code, 2, "{run:#?}");
    assert!(run.stderr.contains("job-token"), "{run:#?}");
    setup.stop().await;
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_file_others_can_read_is_a_usage_error_saying_chmod_600() {
    let setup = Setup::start(None).await;
    chmod(&setup.key, 0o644);
    let mut token = vec!["token", "--key", p(&setup.key)];
    token.extend(setup.svc_flags());
    let curl = ["curl", "http://127.0.0.1:9/", "--key", p(&setup.key)];
    for args in [&token[..], &curl[..]] {
        let run = dpop(args, &[("SVC_SECRET", SVC_SECRET)]).await;
        assert_eq!(run.code, 2, "{run:#?}");
        assert!(run.stderr.contains("chmod 600"), "{run:#?}");
        assert!(run.stdout.is_empty(), "{run:#?}");
    }
    // The client-authentication key too.
    chmod(&setup.key, 0o600);
    chmod(&setup.client_key, 0o644);
    let args = [
        "token",
        "--key",
        p(&setup.key),
        "--issuer",
        &setup.url,
        "--client-id",
        "keyed",
        "--client-key",
        p(&setup.client_key),
    ];
    let run = dpop(&args, &[]).await;
    assert_eq!(run.code, 2, "{run:#?}");
    assert!(run.stderr.contains("chmod 600"), "{run:#?}");
    setup.stop().await;
}

/// The `-v` attempts on stderr: the decoded claims of each proof, and each status line.
fn verbose_attempts(stderr: &str) -> (Vec<Value>, Vec<&str>) {
    let claims = stderr
        .lines()
        .filter_map(|l| l.strip_prefix("> DPoP claims: "))
        .map(|c| serde_json::from_str(c).unwrap())
        .collect();
    let statuses = stderr.lines().filter(|l| l.starts_with("< HTTP")).collect();
    (claims, statuses)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_through_the_gateway() {
    let setup = Setup::start(None).await;
    let upstream = TestUpstream::start().await.unwrap();
    let (gw, gw_url) = setup.gateway(&upstream, &[]).await;
    let token = setup.token().await;
    let key = p(&setup.key);
    let url = format!("{gw_url}/v1/items");

    // The body is printed.
    let run = dpop(&["curl", &url, "--key", key, "--token", &token], &[]).await;
    let echo = run.json();
    assert_eq!(echo["method"], "GET", "{}", gw.output());
    assert_eq!(echo["path"], "/v1/items");
    assert_eq!(echo["headers"]["x-dpop-jkt"][0], setup.jkt.as_str());
    assert_eq!(echo["headers"]["x-dpop-client-id"][0], "svc");

    // --token-file: the same, from a file (a trailing newline is fine).
    let token_file = setup.dir.write("token", &format!("{token}\n"), 0o600);
    let args = ["curl", &url, "--key", key, "--token-file", p(&token_file)];
    assert_eq!(dpop(&args, &[]).await.json()["path"], "/v1/items");
    // A token file others can read, too large, or empty: refused, naming the file and
    // the problem, never the token.
    for (text, mode, needle) in [
        (
            format!("{token}\n"),
            0o644,
            "can be read by other users (mode 0644)",
        ),
        ("x".repeat(65_537), 0o600, "is larger than 64 KiB"),
        ("\n".to_owned(), 0o600, "is empty"),
    ] {
        let bad = setup.dir.write("bad-token", &text, mode);
        let run = dpop(&["curl", &url, "--key", key, "--token-file", p(&bad)], &[]).await;
        assert_eq!(run.code, 2, "{run:#?}");
        assert!(
            run.stderr.contains("--token-file")
                && run.stderr.contains(p(&bad))
                && run.stderr.contains(needle),
            "{needle}: {run:#?}"
        );
        assert!(!run.stderr.contains(&token), "{run:#?}");
    }
    // The DPoP header is the key's to set.
    let args = [
        "curl", &url, "--key", key, "--token", &token, "-H", "DPoP: x",
    ];
    let run = dpop(&args, &[]).await;
    assert_eq!(run.code, 2, "{run:#?}");

    // -i: status line and headers, a blank line, the body.
    let run = dpop(&["curl", "-i", &url, "--key", key, "--token", &token], &[]).await;
    let out = run.ok();
    let (head, body) = out.split_once("\r\n\r\n").expect("a head and a body");
    let mut lines = head.split("\r\n");
    assert_eq!(lines.next(), Some("HTTP/1.1 200 OK"), "{out}");
    assert!(
        lines.any(|l| l.eq_ignore_ascii_case("content-type: application/json")),
        "{head}"
    );
    assert_eq!(
        serde_json::from_str::<Value>(body).unwrap()["path"],
        "/v1/items"
    );

    // -X POST -d @file -H: method, body and header reach the upstream.
    let data = setup.dir.file("body.json");
    std::fs::write(&data, "{\"name\":\"widget\"}").unwrap();
    let at_data = format!("@{}", p(&data));
    let args = [
        "curl",
        "-X",
        "POST",
        &url,
        "-d",
        &at_data,
        "-H",
        "X-A: b",
        "-H",
        "Content-Type: application/json",
        "--key",
        key,
        "--token",
        &token,
    ];
    dpop(&args, &[]).await.ok();
    let seen = upstream.last_request().unwrap();
    assert_eq!(seen.method, "POST");
    assert_eq!(seen.body, b"{\"name\":\"widget\"}");
    assert_eq!(seen.header("x-a"), Some("b"));
    assert_eq!(seen.header("content-type"), Some("application/json"));
    // -d without -X is a POST of a form.
    let args = ["curl", &url, "-d", "a=1", "--key", key, "--token", &token];
    dpop(&args, &[]).await.ok();
    let seen = upstream.last_request().unwrap();
    assert_eq!(
        (seen.method.as_str(), seen.body.as_slice()),
        ("POST", &b"a=1"[..])
    );
    assert_eq!(
        seen.header("content-type"),
        Some("application/x-www-form-urlencoded")
    );

    // -v: each attempt's proof claims on stderr; stdout is only the body.
    let run = dpop(&["curl", "-v", &url, "--key", key, "--token", &token], &[]).await;
    run.json();
    let (proofs, statuses) = verbose_attempts(&run.stderr);
    assert_eq!(proofs.len(), 1, "{run:#?}");
    assert_eq!(proofs[0]["htm"], "GET");
    assert_eq!(proofs[0]["htu"], url.as_str());
    assert_eq!(proofs[0]["ath"], Ath::of_token(&token).as_str());
    assert_eq!(statuses.len(), 1, "{run:#?}");

    // --fail: exit 22 on a status of 400 or more; without it, 0.
    let bad = [
        "curl",
        &url,
        "--key",
        key,
        "--token",
        "not-a-token",
        "--fail",
    ];
    let run = dpop(&bad, &[]).await;
    assert_eq!(run.code, 22, "{run:#?}");
    let run = dpop(&bad[..bad.len() - 1], &[]).await;
    assert_eq!(run.code, 0, "{run:#?}");
    let missing = format!("{gw_url}/v1/status/404");
    // --fail-with-body: the same, the body still printed.
    let run = dpop(
        &[
            "curl",
            "--fail-with-body",
            &missing,
            "--key",
            key,
            "--token",
            &token,
        ],
        &[],
    )
    .await;
    assert_eq!(run.code, 22, "{run:#?}");
    assert_eq!(run.json_lenient()["path"], "/v1/status/404");
    setup.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_answers_a_nonce_challenge_transparently() {
    let setup = Setup::start(None).await;
    let upstream = TestUpstream::start().await.unwrap();
    let (_gw, gw_url) = setup.gateway(&upstream, &["--require-nonce"]).await;
    let token = setup.token().await;
    let url = format!("{gw_url}/v1/items");
    let run = dpop(
        &[
            "curl",
            "-v",
            &url,
            "--key",
            p(&setup.key),
            "--token",
            &token,
        ],
        &[],
    )
    .await;
    assert_eq!(run.json()["path"], "/v1/items");
    let (proofs, statuses) = verbose_attempts(&run.stderr);
    assert_eq!(proofs.len(), 2, "one retry: {run:#?}");
    assert_eq!(proofs[0].get("nonce"), None);
    let nonce = proofs[1]["nonce"]
        .as_str()
        .expect("the retry carries the nonce");
    assert!(
        run.stderr.contains(&format!("< dpop-nonce: {nonce}")),
        "{run:#?}"
    );
    assert_eq!(
        statuses,
        ["< HTTP/1.1 401 Unauthorized", "< HTTP/1.1 200 OK"]
    );
    assert_eq!(upstream.request_count(), 1);
    setup.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_gets_its_own_token_with_the_token_flags() {
    let setup = Setup::start(None).await;
    let upstream = TestUpstream::start().await.unwrap();
    let (_gw, gw_url) = setup.gateway(&upstream, &["--require-nonce"]).await;
    let url = format!("{gw_url}/v1/items");
    let mut args = vec!["curl", "-v", &url, "--key", p(&setup.key)];
    args.extend(setup.svc_flags());
    let run = dpop(&args, &[("SVC_SECRET", SVC_SECRET)]).await;
    let echo = run.json();
    assert_eq!(echo["headers"]["x-dpop-subject"][0], "svc");
    assert_eq!(echo["headers"]["x-dpop-jkt"][0], setup.jkt.as_str());
    assert_eq!(upstream.request_count(), 1);
    // -v shows the token endpoint's exchanges too (its nonce challenge included), with
    // the client's credentials redacted and no token in sight.
    let err = &run.stderr;
    // The metadata lookup that found the token endpoint.
    assert!(
        err.lines().any(
            |l| l.starts_with(&format!("* issuer metadata of {} from ", setup.url))
                && l.contains("/.well-known/")
                && l.contains(" token_endpoint ")
        ),
        "{err}"
    );
    assert!(err.contains("* token request to "), "{err}");
    assert!(err.contains("> authorization: Basic [redacted, "), "{err}");
    assert!(!err.contains(SVC_SECRET), "{err}");
    let requests = err.lines().filter(|l| l.starts_with("> POST ")).count();
    assert!(requests >= 1, "{err}");
    let token = err
        .lines()
        .find_map(|l| l.strip_prefix("> authorization: DPoP "))
        .expect("the API request's token, shortened");
    assert!(token.ends_with(" bytes]") && token.len() < 40, "{token}");
    setup.stop().await;
}

/// A key kept in a PKCS#11 token (SoftHSM, `DPOP_TEST_SOFTHSM_MODULE`) all the way: the
/// token is bound to it, the gateway accepts its proofs, and the upstream learns its
/// thumbprint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_and_curl_with_a_key_in_a_pkcs11_token() {
    let Some(module) = crate::device_keys::softhsm() else {
        return;
    };
    let hsm = dpop_test::SoftHsmToken::create(&module, "client-e2e").unwrap();
    let env_owned = hsm.env();
    let mut env: Vec<(&str, &str)> = env_owned
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    env.push(("SVC_SECRET", SVC_SECRET));
    let uri = hsm.uri("workload", "01");
    let jkt = dpop(&["keygen", "--key", &uri], &env)
        .await
        .line()
        .to_owned();

    let setup = Setup::start(None).await;
    let upstream = TestUpstream::start().await.unwrap();
    let (gw, gw_url) = setup.gateway(&upstream, &[]).await;
    let mut args = vec!["token", "--key", &uri, "--raw"];
    args.extend(setup.svc_flags());
    let token = dpop(&args, &env).await.ok().trim().to_owned();
    assert_eq!(claims(&token)["cnf"]["jkt"], jkt.as_str());

    let url = format!("{gw_url}/v1/items");
    let run = dpop(&["curl", &url, "--key", &uri, "--token", &token], &env).await;
    let echo = run.json();
    assert_eq!(echo["path"], "/v1/items", "{}", gw.output());
    assert_eq!(echo["headers"]["x-dpop-jkt"][0], jkt.as_str());
    // The software key of the same setup is not the token's key: refused.
    let run = dpop(
        &[
            "curl",
            "-f",
            &url,
            "--key",
            p(&setup.key),
            "--token",
            &token,
        ],
        &env,
    )
    .await;
    assert_eq!(run.code, 22, "{run:#?}");
    setup.stop().await;
}

/// A key kept in a TPM 2.0 (swtpm, `DPOP_TEST_SWTPM`; the binary built with the `tpm`
/// feature): made inside it by `dpop keygen`, bound to the token, accepted by the
/// gateway.
#[cfg(feature = "tpm")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_and_curl_with_a_key_in_a_tpm() {
    let Some(tpm) = dpop_test::SwTpm::start() else {
        return;
    };
    let uri = format!("tpm2:handle=0x81000020?tcti={}", tpm.tcti());
    let env = [("SVC_SECRET", SVC_SECRET)];
    let jkt = dpop(&["keygen", "--key", &uri], &env)
        .await
        .line()
        .to_owned();
    assert_eq!(dpop(&["thumbprint", &uri], &env).await.line(), jkt);
    // The key stays where it was made: the TPM says so in its attributes.
    let public = tpm.readpublic("0x81000020");
    for attribute in ["fixedtpm", "fixedparent", "sensitivedataorigin"] {
        assert!(public.contains(attribute), "{attribute}: {public}");
    }

    let setup = Setup::start(None).await;
    let upstream = TestUpstream::start().await.unwrap();
    let (gw, gw_url) = setup.gateway(&upstream, &[]).await;
    let mut args = vec!["token", "--key", &uri, "--raw"];
    args.extend(setup.svc_flags());
    let token = dpop(&args, &env).await.ok().trim().to_owned();
    assert_eq!(claims(&token)["cnf"]["jkt"], jkt.as_str());
    let url = format!("{gw_url}/v1/items");
    let echo = dpop(&["curl", &url, "--key", &uri, "--token", &token], &env)
        .await
        .json();
    assert_eq!(echo["path"], "/v1/items", "{}", gw.output());
    assert_eq!(echo["headers"]["x-dpop-jkt"][0], jkt.as_str());
    // The same handle again: refused, the key kept.
    let run = dpop(&["keygen", "--key", &uri], &env).await;
    assert_eq!(run.code, 2, "{run:#?}");
    assert_eq!(dpop(&["thumbprint", &uri], &env).await.line(), jkt);
    setup.stop().await;
}
