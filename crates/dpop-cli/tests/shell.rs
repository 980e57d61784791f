//! End-to-end tests of the command line as a whole: flags from `DPOP_<COMMAND>_<FLAG>`
//! environment variables (shown in `--help`), and the completion scripts and manual page
//! generated from the clap definitions.

use std::process::{Command, Stdio};

use dpop_test::{MockIssuer, TestUpstream, free_port};

use crate::common::{AUD, Run, TempDir, gateway_command, p, run_dpop, spawn_server};

async fn dpop(args: &[&str], env: &[(&str, &str)]) -> Run {
    run_dpop(args, env).await.into()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_runs_from_environment_variables_alone() {
    let issuer = MockIssuer::start().await.unwrap();
    let upstream = TestUpstream::start().await.unwrap();
    let port = free_port();
    let mut cmd = gateway_command();
    cmd.env("DPOP_GATEWAY_LISTEN", format!("127.0.0.1:{port}"))
        .env("DPOP_GATEWAY_UPSTREAM", upstream.url())
        .env("DPOP_GATEWAY_ISSUER", issuer.url())
        .env("DPOP_GATEWAY_AUDIENCE", AUD)
        // A repeatable flag: several values, space-separated.
        .env(
            "DPOP_GATEWAY_ALLOWED_HOST",
            format!("other.example 127.0.0.1:{port}"),
        )
        .env("DPOP_GATEWAY_REQUIRE_NONCE", "true");
    let gw = spawn_server(
        cmd,
        port,
        std::time::Duration::from_secs(30),
        "dpop gateway",
    )
    .await;
    let url = format!("http://127.0.0.1:{port}/v1/items");
    // Up, enforcing DPoP, with nonces required: a request with a fresh key and a token
    // is challenged for a nonce (use_dpop_nonce) before anything else.
    let dir = TempDir::new("env-gw");
    let key = dir.file("k.pem");
    let jkt = dpop(&["keygen", "--out", p(&key)], &[])
        .await
        .line()
        .to_owned();
    let token = issuer.mint(&dpop_test::TokenSpec::bound(AUD, &jkt));
    let run = dpop(
        &["curl", "-i", &url, "--key", p(&key), "--token", &token],
        &[],
    )
    .await;
    assert!(
        run.ok().starts_with("HTTP/1.1 200"),
        "{run:?}\n{}",
        gw.output()
    );
    assert_eq!(upstream.request_count(), 1);
    let run = dpop(
        &["curl", "-v", &url, "--key", p(&key), "--token", &token],
        &[],
    )
    .await;
    assert!(
        run.stderr.contains("401"),
        "nonce challenge expected: {run:?}"
    );
    drop(gw);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_issuer_and_authz_flags_come_from_the_environment() {
    let issuer = MockIssuer::start().await.unwrap();
    let dir = TempDir::new("env-token");
    let key = dir.file("k.pem");
    dpop(&["keygen", "--out", p(&key)], &[]).await.line();
    let cache = dir.file("cache.json");
    let env = [
        ("DPOP_TOKEN_KEY", p(&key)),
        ("DPOP_TOKEN_ISSUER", issuer.url()),
        ("DPOP_TOKEN_CLIENT_ID", "svc"),
        ("DPOP_TOKEN_SCOPE", "read"),
        ("DPOP_TOKEN_TOKEN_CACHE", p(&cache)),
        ("DPOP_TOKEN_RAW", "true"),
    ];
    let first = dpop(&["token"], &env).await.line().to_owned();
    assert_eq!(crate::common::claims(&first)["scope"], "read");
    assert!(cache.exists());
    assert_eq!(dpop(&["token"], &env).await.line(), first);
    assert_eq!(issuer.token_requests().len(), 1);
    // The command line wins over the environment.
    let other = dpop(&["token", "--scope", "write"], &env)
        .await
        .line()
        .to_owned();
    assert_eq!(crate::common::claims(&other)["scope"], "write");
    // A false boolean variable is false: the JSON response, not the raw token.
    let mut not_raw = env;
    not_raw[5] = ("DPOP_TOKEN_RAW", "false");
    assert_eq!(
        dpop(&["token"], &not_raw).await.json()["access_token"],
        first.as_str()
    );
    // A switch's variable that is neither yes nor no is a usage error.
    not_raw[5] = ("DPOP_TOKEN_RAW", "maybe");
    let run = dpop(&["token"], &not_raw).await;
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.stderr.contains("maybe"), "{run:?}");

    // issuer: --config from DPOP_ISSUER_CONFIG (a missing file is named in the error).
    let missing = dir.file("no-such-issuer.toml");
    let run = dpop(&["issuer"], &[("DPOP_ISSUER_CONFIG", p(&missing))]).await;
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.stderr.contains("no-such-issuer.toml"), "{run:?}");
    // ...and a subcommand's flag, with the subcommand's name in the variable.
    let run = dpop(
        &["issuer", "rotate-key"],
        &[("DPOP_ISSUER_ROTATE_KEY_CONFIG", p(&missing))],
    )
    .await;
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.stderr.contains("no-such-issuer.toml"), "{run:?}");

    // authz: the same shared flags as the gateway, under its own prefix.
    let run = dpop(&["authz"], &[("DPOP_AUTHZ_CONFIG", p(&missing))]).await;
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.stderr.contains("no-such-issuer.toml"), "{run:?}");
    // The gateway's variable does not reach authz.
    let run = dpop(&["authz"], &[("DPOP_GATEWAY_CONFIG", p(&missing))]).await;
    assert!(!run.stderr.contains("no-such-issuer.toml"), "{run:?}");
}

#[tokio::test]
async fn help_shows_the_variables() {
    for (cmd, var) in [
        ("gateway", "[env: DPOP_GATEWAY_REPLAY_STORE]"),
        ("authz", "[env: DPOP_AUTHZ_GRPC_LISTEN]"),
        ("issuer", "[env: DPOP_ISSUER_CONFIG]"),
        ("token", "[env: DPOP_TOKEN_TOKEN_CACHE]"),
        ("token", "[env: DPOP_TOKEN_REFRESH_TOKEN_FILE]"),
    ] {
        let run = dpop(&[cmd, "--help"], &[]).await;
        assert!(run.ok().contains(var), "{cmd}: {run:?}");
    }
}

#[tokio::test]
async fn completions_and_man_page_are_generated() {
    for (shell, marker) in [
        ("bash", "complete -F _dpop"),
        ("zsh", "#compdef dpop"),
        ("fish", "complete -c dpop"),
        ("powershell", "Register-ArgumentCompleter"),
    ] {
        let run = dpop(&["completions", shell], &[]).await;
        let script = run.ok();
        assert!(script.contains(marker), "{shell}: {script}");
        assert!(
            script.contains("token-cache") && script.contains("jwt"),
            "{shell}"
        );
    }
    assert_eq!(dpop(&["completions", "tcsh"], &[]).await.code, 2);
    if let Some(bash) = ["/bin/bash", "/usr/bin/bash"]
        .into_iter()
        .find(|b| std::path::Path::new(b).exists())
    {
        // The bash script loads, and completes subcommands.
        let script = dpop(&["completions", "bash"], &[]).await.stdout;
        let check = format!(
            "{script}\nCOMP_WORDS=(dpop jw); COMP_CWORD=1; _dpop dpop jw dpop; echo \"${{COMPREPLY[@]}}\""
        );
        let out = Command::new(bash)
            .args(["-c", &check])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let words = String::from_utf8_lossy(&out.stdout);
        assert!(
            words.split_whitespace().any(|w| w == "jwt"),
            "{words} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(words.split_whitespace().any(|w| w == "jwk"), "{words}");
    }

    let run = dpop(&["man"], &[]).await;
    let page = run.ok();
    assert!(page.contains(".TH dpop 1"), "{page}");
    assert!(page.contains(".SH \"DPOP JWT\"") && page.contains(".SH \"DPOP GATEWAY\""));
    assert!(page.contains("token\\-cache"), "{page}");
    assert!(page.contains("DPOP_GATEWAY_LISTEN"));
    if let Ok(out) = Command::new("groff")
        .args(["-man", "-Tutf8", "-z", "-ww"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write as _;
            child.stdin.take().unwrap().write_all(page.as_bytes())?;
            child.wait_with_output()
        })
    {
        // groff, when installed, renders it without warnings.
        assert!(
            out.status.success() && out.stderr.is_empty(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
