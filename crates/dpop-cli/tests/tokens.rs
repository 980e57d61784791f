//! End-to-end tests of tokens between runs: `--token-cache` shared by separate `dpop
//! token` and `dpop curl` processes, `--refresh-token-file`, and the warning when an
//! issuer ignores `--audience`. The issuer is the mock issuer's token endpoint, which
//! counts token requests and issues what each test tells it to; `dpop curl` goes through
//! `dpop gateway` in front of an echo upstream.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use dpop_test::{MockIssuer, TestUpstream, TokenPolicy};
use serde_json::Value;

use crate::common::{
    AUD, DPOP, Run, TempDir, assert_mode, gateway_flags, p, run_dpop, start_gateway,
};

async fn dpop(args: &[&str]) -> Run {
    run_dpop(args, &[]).await.into()
}

/// Runs `dpop args` with `input` on its standard input.
pub(crate) fn dpop_with_stdin(args: &[&str], env: &[(&str, &str)], input: &[u8]) -> Run {
    let mut cmd = Command::new(DPOP);
    cmd.args(args)
        .env_remove("RUST_LOG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    // A command that refuses its arguments exits before reading: its closed input is
    // not the test's failure.
    if let Err(e) = child.stdin.take().unwrap().write_all(input) {
        assert_eq!(e.kind(), std::io::ErrorKind::BrokenPipe, "{e}");
    }
    child.wait_with_output().unwrap().into()
}

/// A mock issuer, a DPoP key and a cache path in a directory that does not exist yet.
struct Setup {
    issuer: MockIssuer,
    dir: TempDir,
    key: PathBuf,
    cache: PathBuf,
}

impl Setup {
    async fn start() -> Self {
        let issuer = MockIssuer::start().await.unwrap();
        let dir = TempDir::new("tokens");
        let key = dir.file("client.pem");
        dpop(&["keygen", "--out", p(&key)]).await.ok();
        let cache = dir.file("cache").join("tokens.json");
        Self {
            issuer,
            dir,
            key,
            cache,
        }
    }

    /// `dpop token --raw` for client `svc` with the cache, and `extra`.
    fn token_args<'a>(&'a self, extra: &[&'a str]) -> Vec<&'a str> {
        let mut args = vec![
            "token",
            "--raw",
            "--key",
            p(&self.key),
            "--issuer",
            self.issuer.url(),
            "--client-id",
            "svc",
            "--token-cache",
            p(&self.cache),
        ];
        args.extend_from_slice(extra);
        args
    }

    async fn token(&self, extra: &[&str]) -> String {
        dpop(&self.token_args(extra)).await.line().to_owned()
    }
}

fn claims(token: &str) -> Value {
    crate::common::claims(token)
}

fn cache_entries(path: &Path) -> serde_json::Map<String, Value> {
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    doc["tokens"].as_object().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_runs_share_one_token_through_the_cache() {
    let s = Setup::start().await;
    let first = s.token(&[]).await;
    let second = s.token(&[]).await;
    assert_eq!(first, second);
    assert_eq!(s.issuer.token_requests(), ["client_credentials"]);
    #[cfg(unix)]
    {
        assert_mode(&s.cache, 0o600);
        assert_mode(s.cache.parent().unwrap(), 0o700);
    }

    // Another scope is another token, kept beside the first.
    let read = s.token(&["--scope", "read"]).await;
    assert_ne!(read, first);
    assert_eq!(claims(&read)["scope"], "read");
    assert_eq!(s.issuer.token_requests().len(), 2);
    assert_eq!(cache_entries(&s.cache).len(), 2);
    assert_eq!(s.token(&["--scope", "read"]).await, read);
    assert_eq!(s.token(&[]).await, first);
    assert_eq!(s.issuer.token_requests().len(), 2);

    // Another key is another token: a token is only used with the key it is bound to.
    let other_key = s.dir.file("other.pem");
    let other_jkt = dpop(&["keygen", "--out", p(&other_key)])
        .await
        .line()
        .to_owned();
    let mut args = s.token_args(&[]);
    args[3] = p(&other_key);
    let other = dpop(&args).await.line().to_owned();
    assert_ne!(other, first);
    assert_eq!(claims(&other)["cnf"]["jkt"], other_jkt.as_str());
    assert_eq!(s.issuer.token_requests().len(), 3);

    // Without --raw: the token response, expires_in counting down from the stored expiry.
    let mut args = s.token_args(&[]);
    args.retain(|a| *a != "--raw");
    let response = dpop(&args).await.json();
    assert_eq!(response["access_token"], first.as_str());
    assert_eq!(response["token_type"], "DPoP");
    let expires_in = response["expires_in"].as_u64().unwrap();
    assert!((290..=300).contains(&expires_in), "{response}");
    assert!(response["refresh_token"].is_string(), "{response}");
    assert_eq!(s.issuer.token_requests().len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_runs_lose_no_entry() {
    let s = Setup::start().await;
    // Two processes at once, each storing its own token: the lock keeps both entries.
    for round in 0..3 {
        let scopes = [format!("a{round}"), format!("b{round}")];
        let runs: Vec<_> = scopes
            .iter()
            .map(|scope| {
                let args: Vec<String> = s
                    .token_args(&["--scope", scope])
                    .iter()
                    .map(|a| (*a).to_owned())
                    .collect();
                std::thread::spawn(move || {
                    Command::new(DPOP)
                        .args(&args)
                        .stdin(Stdio::null())
                        .output()
                        .unwrap()
                })
            })
            .collect();
        for run in runs {
            let out: Run = run.join().unwrap().into();
            out.line();
        }
    }
    assert_eq!(cache_entries(&s.cache).len(), 6);
    assert_eq!(s.issuer.token_requests().len(), 6);
    for round in 0..3 {
        s.token(&["--scope", &format!("a{round}")]).await;
        s.token(&["--scope", &format!("b{round}")]).await;
    }
    assert_eq!(s.issuer.token_requests().len(), 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_started_together_make_one_token_request() {
    let s = Setup::start().await;
    let args: Vec<String> = s.token_args(&[]).iter().map(|a| (*a).to_owned()).collect();
    let runs: Vec<_> = (0..4)
        .map(|_| {
            let args = args.clone();
            std::thread::spawn(move || {
                Command::new(DPOP)
                    .args(&args)
                    .stdin(Stdio::null())
                    .output()
                    .unwrap()
            })
        })
        .collect();
    let tokens: Vec<String> = runs
        .into_iter()
        .map(|r| Run::from(r.join().unwrap()).line().to_owned())
        .collect();
    assert!(tokens.iter().all(|t| *t == tokens[0]), "{tokens:?}");
    assert_eq!(s.issuer.token_requests(), ["client_credentials"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_cached_token_is_replaced() {
    let s = Setup::start().await;
    s.issuer.issue_tokens(TokenPolicy {
        lifetime_secs: 1,
        ..TokenPolicy::default()
    });
    let first = s.token(&[]).await;
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    // Expired: renewed with the refresh token stored with it.
    let second = s.token(&[]).await;
    assert_ne!(first, second);
    assert_eq!(
        s.issuer.token_requests(),
        ["client_credentials", "refresh_token"]
    );

    // Without a refresh token, the client's grant again.
    s.issuer.issue_tokens(TokenPolicy {
        lifetime_secs: 1,
        refresh_tokens: false,
        ..TokenPolicy::default()
    });
    let dir = TempDir::new("tokens-norefresh");
    let cache = dir.file("tokens.json");
    let mut args = s.token_args(&[]);
    args[9] = p(&cache);
    let a = dpop(&args).await.line().to_owned();
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    let b = dpop(&args).await.line().to_owned();
    assert_ne!(a, b);
    assert_eq!(
        s.issuer.token_requests()[2..],
        ["client_credentials", "client_credentials"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cached_token_the_api_refuses_is_replaced_once() {
    let s = Setup::start().await;
    let upstream = TestUpstream::start().await.unwrap();
    let (gw, gw_url) = start_gateway(&gateway_flags(&upstream.url(), s.issuer.url())).await;
    let url = format!("{gw_url}/v1/items");

    // The cache holds a token the gateway refuses (issued for another audience).
    s.issuer.issue_tokens(TokenPolicy {
        aud: "https://elsewhere.example".into(),
        ..TokenPolicy::default()
    });
    let refused = s.token(&[]).await;
    s.issuer.issue_tokens(TokenPolicy::default());

    let curl = [
        "curl",
        &url,
        "--key",
        p(&s.key),
        "--issuer",
        s.issuer.url(),
        "--client-id",
        "svc",
        "--token-cache",
        p(&s.cache),
    ];
    let run = dpop(&curl).await;
    assert_eq!(run.json()["path"], "/v1/items", "{}", gw.output());
    assert_eq!(upstream.request_count(), 1);
    // One new token, and it replaced the refused one in the cache.
    assert_eq!(s.issuer.token_requests().len(), 2);
    let replaced = s.token(&[]).await;
    assert_ne!(replaced, refused);
    assert_eq!(claims(&replaced)["aud"], AUD);
    assert_eq!(s.issuer.token_requests().len(), 2);

    // The next curl uses it without asking the issuer.
    dpop(&curl).await.json();
    assert_eq!(upstream.request_count(), 2);
    assert_eq!(s.issuer.token_requests().len(), 2);

    // A token refused again after the one retry is an error, not a loop.
    s.issuer.issue_tokens(TokenPolicy {
        aud: "https://elsewhere.example".into(),
        ..TokenPolicy::default()
    });
    std::fs::remove_file(&s.cache).unwrap();
    let run = dpop(
        &["curl", "--include"]
            .into_iter()
            .chain(curl[1..].iter().copied())
            .collect::<Vec<_>>(),
    )
    .await;
    assert!(run.ok().starts_with("HTTP/1.1 401"), "{run:?}");
    assert_eq!(s.issuer.token_requests().len(), 4);
    assert_eq!(upstream.request_count(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_cache_file_is_a_usage_error_that_shows_no_token() {
    let s = Setup::start().await;
    std::fs::create_dir_all(s.cache.parent().unwrap()).unwrap();
    let secret = "eyJzZWNyZXQtdG9rZW4tdGV4dA";
    std::fs::write(&s.cache, format!("access_token={secret}")).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&s.cache, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let run = dpop(&s.token_args(&[])).await;
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.stderr.contains("not a dpop token cache"), "{run:?}");
    assert!(!run.stderr.contains(secret), "{run:?}");
    // Not overwritten: it may be someone's file.
    assert!(std::fs::read_to_string(&s.cache).unwrap().contains(secret));
    assert!(s.issuer.token_requests().is_empty());

    // A cache other users can read is refused like a key file.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::remove_file(&s.cache).unwrap();
        s.token(&[]).await;
        std::fs::set_permissions(&s.cache, std::fs::Permissions::from_mode(0o644)).unwrap();
        let run = dpop(&s.token_args(&[])).await;
        assert_eq!(run.code, 2, "{run:?}");
        assert!(run.stderr.contains("chmod 600"), "{run:?}");
    }
}

/// A cache (or its lock file) that is a symbolic link, belongs to another user, or sits
/// in a directory others may write to is refused, naming the file and the problem.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cache_others_could_control_is_refused() {
    use std::os::unix::fs::PermissionsExt as _;
    let s = Setup::start().await;
    let first = s.token(&[]).await;
    let dir = s.cache.parent().unwrap();
    let refused = |run: &Run, needle: &str| {
        assert_eq!(run.code, 2, "{needle}: {run:?}");
        assert!(run.stderr.contains(needle), "{needle}: {run:?}");
        assert!(!run.stderr.contains(&first), "{run:?}");
    };

    // The cache as a symbolic link to a file of the same user.
    let real = dir.join("real.json");
    std::fs::rename(&s.cache, &real).unwrap();
    std::os::unix::fs::symlink(&real, &s.cache).unwrap();
    let run = dpop(&s.token_args(&[])).await;
    refused(&run, "the token cache is a symbolic link: refused");
    std::fs::remove_file(&s.cache).unwrap();
    std::fs::rename(&real, &s.cache).unwrap();

    // A lock file as a symbolic link (to somewhere the lock would create a file).
    let lock = dir.join("tokens.json.lock");
    std::fs::remove_file(&lock).unwrap();
    std::os::unix::fs::symlink(dir.join("elsewhere"), &lock).unwrap();
    let run = dpop(&s.token_args(&[])).await;
    refused(&run, "the lock file is a symbolic link: refused");
    assert!(!dir.join("elsewhere").exists());
    std::fs::remove_file(&lock).unwrap();
    assert_eq!(s.token(&[]).await, first);

    // Owned by another user (the tests may run as root, which can hand it over).
    if rustix::process::geteuid().is_root() {
        rustix::fs::chown(&s.cache, Some(rustix::fs::Uid::from_raw(65534)), None).unwrap();
        let run = dpop(&s.token_args(&[])).await;
        refused(&run, "the token cache belongs to another user (uid 65534");
        rustix::fs::chown(&s.cache, Some(rustix::process::geteuid()), None).unwrap();
        assert_eq!(s.token(&[]).await, first);
    } else {
        eprintln!("skipped: a cache of another user needs root to make");
    }

    // A directory group or others may write to.
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let run = dpop(&s.token_args(&[])).await;
    refused(
        &run,
        "the token cache's directory can be written by other users (mode 0777)",
    );
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    assert_eq!(s.token(&[]).await, first);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_token_from_a_file_or_stdin_is_redeemed() {
    let s = Setup::start().await;
    let refresh = s.issuer.issue_refresh_token();
    let file = s.dir.write("refresh", &format!("{refresh}\n"), 0o644);
    let args = [
        "token",
        "--key",
        p(&s.key),
        "--issuer",
        s.issuer.url(),
        "--client-id",
        "svc",
        "--refresh-token-file",
        p(&file),
    ];
    // Others can read it: refused before anything is sent, the token not shown.
    let run = dpop(&args).await;
    assert_eq!(run.code, 2, "{run:?}");
    assert!(
        run.stderr.contains(&format!(
            "the token file {} can be read by other users (mode 0644)",
            p(&file)
        )) && !run.stderr.contains(&refresh),
        "{run:?}"
    );
    assert!(s.issuer.token_requests().is_empty());
    let file = s.dir.write("refresh", &format!("{refresh}\n"), 0o600);
    let response = dpop(&args).await.json();
    assert_eq!(response["token_type"], "DPoP");
    let jkt = dpop(&["thumbprint", p(&s.key)]).await.line().to_owned();
    assert_eq!(
        claims(response["access_token"].as_str().unwrap())["cnf"]["jkt"],
        jkt.as_str()
    );
    let rotated = response["refresh_token"].as_str().unwrap().to_owned();
    assert_eq!(s.issuer.token_requests(), ["refresh_token"]);

    // Spent: the issuer refuses it, and the command says so.
    let run = dpop(&args).await;
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stderr.contains("invalid_grant"), "{run:?}");

    // The rotated one, from stdin.
    let mut args = args.to_vec();
    args[8] = "-";
    let run = dpop_with_stdin(&args, &[], rotated.as_bytes());
    assert_eq!(run.json()["token_type"], "DPoP");
    assert_eq!(s.issuer.token_requests().len(), 3);
    // Not with token exchange at the same time.
    let mut both = args.clone();
    both.extend(["--subject-token-file", p(&file)]);
    assert_eq!(dpop(&both).await.code, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_audience_the_issuer_ignored_is_warned_about() {
    let s = Setup::start().await;
    s.issuer.issue_tokens(TokenPolicy {
        aud: "https://issuer-default.example".into(),
        ..TokenPolicy::default()
    });
    let mut args = s.token_args(&["--audience", AUD]);
    args.retain(|a| *a != "--token-cache" && !a.ends_with("tokens.json"));
    let run = dpop(&args).await;
    run.line();
    assert!(
        run.stderr
            .contains(&format!("warning: --audience {AUD} was asked for"))
            && run.stderr.contains(&format!("try --resource {AUD}")),
        "{run:?}"
    );

    // dpop curl warns the same, once per token.
    let jwks = s.issuer.jwks_uri();
    let curl = [
        "curl",
        &jwks,
        "--key",
        p(&s.key),
        "--issuer",
        s.issuer.url(),
        "--client-id",
        "svc",
        "--audience",
        AUD,
    ];
    let run = dpop(&curl).await;
    assert!(run.ok().contains("\"keys\""), "{run:?}");
    assert_eq!(
        run.stderr.matches("warning: --audience").count(),
        1,
        "{run:?}"
    );

    // Honoured: no warning.
    s.issuer.issue_tokens(TokenPolicy {
        aud: AUD.into(),
        ..TokenPolicy::default()
    });
    let run = dpop(&args).await;
    run.line();
    assert!(!run.stderr.contains("warning"), "{run:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shared_token_flags_come_from_each_commands_own_variables() {
    let s = Setup::start().await;
    let upstream = TestUpstream::start().await.unwrap();
    let (gw, gw_url) = start_gateway(&gateway_flags(&upstream.url(), s.issuer.url())).await;
    let url = format!("{gw_url}/v1/items");
    let curl_env = [
        ("DPOP_CURL_KEY", p(&s.key)),
        ("DPOP_CURL_ISSUER", s.issuer.url()),
        ("DPOP_CURL_CLIENT_ID", "svc"),
        ("DPOP_CURL_TOKEN_CACHE", p(&s.cache)),
        ("DPOP_CURL_VERBOSE", "1"),
    ];
    let run: Run = run_dpop(&["curl", &url], &curl_env).await.into();
    assert_eq!(run.json()["path"], "/v1/items", "{}", gw.output());
    // -v shows the token request, made through the cache's source.
    assert!(
        run.stderr
            .contains(&format!("* token request to {}", s.issuer.url())),
        "{run:?}"
    );
    assert_eq!(s.issuer.token_requests(), ["client_credentials"]);

    // `dpop token` reads the same flags from its own variables, and finds the token
    // `dpop curl` left in the cache.
    let token_env = [
        ("DPOP_TOKEN_KEY", p(&s.key)),
        ("DPOP_TOKEN_ISSUER", s.issuer.url()),
        ("DPOP_TOKEN_CLIENT_ID", "svc"),
        ("DPOP_TOKEN_TOKEN_CACHE", p(&s.cache)),
        ("DPOP_TOKEN_RAW", "true"),
    ];
    let run: Run = run_dpop(&["token"], &token_env).await.into();
    let cached = run.line().to_owned();
    assert_eq!(claims(&cached)["aud"], AUD);
    assert_eq!(s.issuer.token_requests().len(), 1);

    // Each command's variables reach only that command: `dpop curl` with the token
    // variables has no token source, and the gateway refuses the request without a token.
    let mut env = token_env.to_vec();
    env.push(("DPOP_CURL_KEY", p(&s.key)));
    let run: Run = run_dpop(&["curl", "--include", &url], &env).await.into();
    assert!(run.ok().starts_with("HTTP/1.1 401"), "{run:?}");
    assert_eq!(upstream.request_count(), 1);
    assert_eq!(s.issuer.token_requests().len(), 1);
    let run: Run = run_dpop(&["token"], &curl_env).await.into();
    assert_eq!(run.code, 2, "{run:?}");
    assert_eq!(s.issuer.token_requests().len(), 1);
}
