//! End-to-end tests of `dpop curl` as curl's users expect it: redirects with a proof per
//! hop, curl's exit codes for network failures, the line on stderr for a refused
//! request, the output options, `-v` without secrets, the environment variables, and a
//! reader that goes away. The real binary runs against in-process echo upstreams, a mock
//! issuer and a `dpop gateway`.

use std::collections::HashSet;
use std::io::Read as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use dpop_core::Ath;
use dpop_test::{MockIssuer, RawRequest, RawUpstream, TestCa, TestUpstream, TokenSpec, free_port};
use serde_json::Value;
use tokio::io::AsyncWriteExt as _;

use crate::common::{AUD, DPOP, Run, TempDir, claims, gateway_flags, p, run_dpop, start_gateway};

/// A token as long as a real one: the tests check it never shows on stderr.
const TOKEN: &str = "eyJhbGciOiJFUzI1NiIsInR5cCI6ImF0K2p3dCJ9.eyJzdWIiOiJzdmMiLCJhdWQiOiJodHRwczovL2FwaS5leGFtcGxlLmNvbSJ9.c2lnbmF0dXJlLXRoYXQtaXMtbm90LWNoZWNrZWQtYnktdGhlLWVjaG8tdXBzdHJlYW0";

async fn dpop(args: &[&str]) -> Run {
    run_dpop(args, &[]).await.into()
}

async fn dpop_env(args: &[&str], env: &[(&str, &str)]) -> Run {
    run_dpop(args, env).await.into()
}

/// A key file in `dir`, and its thumbprint.
async fn keygen(dir: &TempDir) -> (String, String) {
    let path = dir.file("client.pem");
    let run = dpop(&["keygen", "--out", p(&path)]).await;
    (p(&path).to_owned(), run.ok().trim().to_owned())
}

/// The proof claims an upstream saw in a request, if it carried a proof.
fn proof_claims(r: &dpop_test::RecordedRequest) -> Option<Value> {
    r.header("dpop").map(claims)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_get_a_fresh_proof_per_hop_and_no_credentials_across_origins() {
    let dir = TempDir::new("curl-redirects");
    let (key, _) = keygen(&dir).await;
    let a = TestUpstream::start().await.unwrap();
    let b = TestUpstream::start().await.unwrap();
    let (a_url, b_url) = (a.url(), b.url());
    let base = ["--key", key.as_str(), "--token", TOKEN];

    // Same origin, two hops: each request carries the token and a proof for its own URL.
    let start = format!("{a_url}/one/redirect/302?to={a_url}/two/redirect/301?to=/final");
    let mut args = vec!["curl", "-L", &start];
    args.extend(base);
    let run = dpop(&args).await;
    assert_eq!(run.json()["path"], "/final", "{run:#?}");
    let seen = a.requests();
    assert_eq!(seen.len(), 3, "{seen:#?}");
    let htus: Vec<String> = seen
        .iter()
        .map(|r| proof_claims(r).unwrap()["htu"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        htus,
        [
            format!("{a_url}/one/redirect/302"),
            format!("{a_url}/two/redirect/301"),
            format!("{a_url}/final"),
        ]
    );
    let jtis: HashSet<String> = seen
        .iter()
        .map(|r| proof_claims(r).unwrap()["jti"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(jtis.len(), 3, "a fresh proof per hop");
    for r in &seen {
        assert_eq!(
            r.header("authorization"),
            Some(format!("DPoP {TOKEN}").as_str())
        );
        assert_eq!(
            proof_claims(r).unwrap()["ath"],
            Ath::of_token(TOKEN).as_str()
        );
    }

    // Without -L the redirect is the answer.
    a.clear();
    let mut args = vec!["curl", &start];
    args.extend(base);
    assert_eq!(
        dpop(&args).await.json()["path"],
        "/one/redirect/302?to={a_url}/two/redirect/301?to=/final".replace("{a_url}", &a_url)
    );
    assert_eq!(a.request_count(), 4);

    // Another origin gets neither the token, nor a proof, nor a cookie set by hand.
    let cross = format!("{a_url}/redirect/302?to={b_url}/elsewhere");
    let mut args = vec!["curl", "-L", "-v", &cross, "-H", "Cookie: session=1"];
    args.extend(base);
    let run = dpop(&args).await;
    assert_eq!(run.json()["path"], "/elsewhere", "{run:#?}");
    let at_b = b.last_request().unwrap();
    assert_eq!(at_b.header("dpop"), None);
    assert_eq!(at_b.header("authorization"), None);
    assert_eq!(at_b.header("cookie"), None);
    assert!(run.stderr.contains("another origin"), "{run:#?}");
    assert_eq!(
        a.last_request().unwrap().header("cookie"),
        Some("session=1")
    );

    // Sent back by the other origin to a path of its choosing: still unsigned.
    let back = format!("{a_url}/redirect/302?to={b_url}/redirect/307?to={a_url}/chosen");
    let mut args = vec!["curl", "-L", &back];
    args.extend(base);
    let run = dpop(&args).await;
    assert_eq!(run.json()["path"], "/chosen", "{run:#?}");
    let at_a = a.last_request().unwrap();
    assert_eq!(at_a.header("dpop"), None, "{at_a:#?}");
    assert_eq!(at_a.header("authorization"), None, "{at_a:#?}");

    // A user name or password in a URL is refused like -u, and not echoed.
    let with_user = format!("{}/x", a_url.replacen("://", "://alice:hunter2@", 1));
    let mut args = vec!["curl", &with_user];
    args.extend(base);
    let run = dpop(&args).await;
    assert_eq!(run.code, 2, "{run:#?}");
    assert!(!run.stderr.contains("hunter2"), "{run:#?}");
    let to_user = format!("{a_url}/redirect/302?to={with_user}");
    let mut args = vec!["curl", "-L", &to_user];
    args.extend(base);
    let run = dpop(&args).await;
    assert_eq!(run.code, 2, "{run:#?}");
    assert!(!run.stderr.contains("hunter2"), "{run:#?}");

    // --location-trusted sends both, the proof made for the other origin's URL.
    let mut args = vec!["curl", "--location-trusted", &cross];
    args.extend(base);
    dpop(&args).await.ok();
    let at_b = b.last_request().unwrap();
    assert_eq!(
        at_b.header("authorization"),
        Some(format!("DPoP {TOKEN}").as_str())
    );
    assert_eq!(
        proof_claims(&at_b).unwrap()["htu"],
        format!("{b_url}/elsewhere").as_str()
    );

    // 303 after a POST: a GET without the body; 307: the same method and body again.
    for (code, method, body) in [("303", "GET", 0), ("307", "POST", 3)] {
        let url = format!("{a_url}/redirect/{code}?to=/after");
        let mut args = vec!["curl", "-L", &url, "-d", "a=1"];
        args.extend(base);
        let echo = dpop(&args).await.json();
        assert_eq!(
            (echo["method"].as_str(), echo["body_bytes"].as_u64()),
            (Some(method), Some(body)),
            "{code}"
        );
        assert_eq!(
            proof_claims(&a.last_request().unwrap()).unwrap()["htm"],
            method
        );
    }

    // --max-redirs: curl's exit code 47 once the chain is longer.
    let mut args = vec!["curl", "-L", "--max-redirs", "1", &start];
    args.extend(base);
    let run = dpop(&args).await;
    assert_eq!(run.code, 47, "{run:#?}");
    assert!(run.stderr.contains("--max-redirs"), "{run:#?}");
}

/// A listener that accepts connections and never answers.
fn silent_server() -> (std::net::TcpListener, String) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/", listener.local_addr().unwrap());
    (listener, url)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_failures_exit_with_curls_codes_and_their_cause() {
    let dir = TempDir::new("curl-exits");
    let (key, _) = keygen(&dir).await;
    let closed = format!("http://127.0.0.1:{}/", free_port());

    // 7: nothing listens; the socket's reason is in the message.
    let run = dpop(&["curl", &closed, "--key", &key]).await;
    assert_eq!(run.code, 7, "{run:#?}");
    assert!(run.stderr.contains("cannot connect to"), "{run:#?}");
    assert!(
        run.stderr.to_lowercase().contains("connection refused"),
        "{run:#?}"
    );
    // -s hides the message, not the exit code; -S shows it again.
    let run = dpop(&["curl", "-s", &closed, "--key", &key]).await;
    assert_eq!((run.code, run.stderr.as_str()), (7, ""));
    let run = dpop(&["curl", "-sS", &closed, "--key", &key]).await;
    assert_eq!(run.code, 7);
    assert!(run.stderr.contains("(7) cannot connect"), "{run:#?}");

    // 6: the host does not resolve (.invalid never does, RFC 6761).
    let run = dpop(&["curl", "http://no-such-host.invalid/", "--key", &key]).await;
    assert_eq!(run.code, 6, "{run:#?}");
    assert!(run.stderr.contains("no-such-host.invalid"), "{run:#?}");

    // 28: a server that never answers, stopped by -m.
    let (_listener, silent) = silent_server();
    let started = Instant::now();
    let run = dpop(&["curl", "-m", "0.5", &silent, "--key", &key]).await;
    assert_eq!(run.code, 28, "{run:#?}");
    assert!(run.stderr.contains("timed out"), "{run:#?}");
    assert!(started.elapsed() < Duration::from_secs(20));

    // --retry: a failed connection of an idempotent request is tried again, each time
    // with a fresh proof; a POST is not.
    let run = dpop(&[
        "curl",
        "-v",
        "--retry",
        "2",
        "--retry-delay",
        "0",
        &closed,
        "--key",
        &key,
    ])
    .await;
    assert_eq!(run.code, 7, "{run:#?}");
    assert_eq!(run.stderr.matches("retrying in 0 s").count(), 2, "{run:#?}");
    let jtis: HashSet<String> = run
        .stderr
        .lines()
        .filter_map(|l| l.strip_prefix("> DPoP claims: "))
        .map(|c| {
            serde_json::from_str::<Value>(c).unwrap()["jti"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(jtis.len(), 3, "{run:#?}");
    let run = dpop(&[
        "curl",
        "--retry",
        "2",
        "--retry-delay",
        "0",
        "-d",
        "x",
        &closed,
        "--key",
        &key,
    ])
    .await;
    assert_eq!(run.code, 7);
    assert!(!run.stderr.contains("retrying"), "{run:#?}");

    // A URL too long for a proof: the reason, not "not an absolute URI".
    let long = format!("http://127.0.0.1:9/{}", "a".repeat(9000));
    let run = dpop(&["curl", &long, "--key", &key]).await;
    assert_eq!(run.code, 1, "{run:#?}");
    assert!(run.stderr.contains("longer than 8192 bytes"), "{run:#?}");
}

/// An issuer out of reach fails `dpop curl` and `dpop token` with curl's codes for the
/// metadata lookup (7 refused, 6 unresolvable, 28 silent), not a generic 1; `-v` says
/// which lookup failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_issuer_out_of_reach_exits_with_curls_codes() {
    let dir = TempDir::new("curl-issuer-exits");
    let (key, _) = keygen(&dir).await;
    let upstream = TestUpstream::start().await.unwrap();
    let closed = format!("http://127.0.0.1:{}", free_port());
    let (_listener, silent) = silent_server();
    let silent = silent.trim_end_matches('/').to_owned();
    let token_flags = |issuer: &str| -> Vec<String> {
        [
            "--issuer",
            issuer,
            "--client-id",
            "svc",
            "--client-secret-env",
            "SVC_SECRET",
        ]
        .map(str::to_owned)
        .to_vec()
    };
    let env = [("SVC_SECRET", "not-a-real-secret-0123456789")];
    let cases: [(&str, u8, &str); 3] = [
        (&closed, 7, "connection refused"),
        (
            "https://no-such-issuer.invalid",
            6,
            "no-such-issuer.invalid",
        ),
        (&silent, 28, "timed out"),
    ];
    for (issuer, code, cause) in cases {
        // -m bounds the whole run, the metadata lookup included.
        let mut args = vec![
            "curl".to_owned(),
            "-m".to_owned(),
            "2".to_owned(),
            "-v".to_owned(),
            upstream.url(),
            "--key".to_owned(),
            key.clone(),
        ];
        args.extend(token_flags(issuer));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let run = dpop_env(&args, &env).await;
        assert_eq!(run.code, i32::from(code), "{issuer}: {run:#?}");
        assert!(
            run.stderr.to_lowercase().contains(cause),
            "{issuer}: {run:#?}"
        );
        if code == 28 {
            // Cut by -m, whatever was under way; dpop token has no -m (a silent issuer
            // takes the lookup's own 30 s for each of the two well-known URLs).
            continue;
        }
        assert!(run.stderr.contains("issuer metadata"), "{issuer}: {run:#?}");
        assert!(
            run.stderr
                .contains(&format!("* issuer {issuer}: issuer metadata: ")),
            "-v names the failed lookup: {run:#?}"
        );
        assert!(!run.stderr.contains(env[0].1), "{run:#?}");

        let mut args = vec!["token".to_owned(), "--key".to_owned(), key.clone()];
        args.extend(token_flags(issuer));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let run = dpop_env(&args, &env).await;
        assert_eq!(run.code, i32::from(code), "dpop token, {issuer}: {run:#?}");
        assert!(
            run.stderr.to_lowercase().contains(cause),
            "{issuer}: {run:#?}"
        );
    }
    assert_eq!(upstream.request_count(), 0, "nothing sent without a token");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_is_verified_and_k_is_refused() {
    let dir = TempDir::new("curl-tls");
    let (key, _) = keygen(&dir).await;
    let ca = TestCa::new("curl test CA");
    let upstream = TestUpstream::builder()
        .tls(&ca.server(&["127.0.0.1"]))
        .start()
        .await
        .unwrap();
    let url = format!("{}/x", upstream.url());
    assert!(url.starts_with("https://"));

    // 60: a certificate of an unknown CA.
    let run = dpop(&["curl", &url, "--key", &key]).await;
    assert_eq!(run.code, 60, "{run:#?}");
    assert!(run.stderr.contains("--cacert"), "{run:#?}");
    // --cacert trusts it.
    let ca_file = ca.ca_file();
    let run = dpop(&["curl", &url, "--key", &key, "--cacert", p(&ca_file)]).await;
    assert_eq!(run.json()["path"], "/x");
    // The issuer is reached with the same CA: its metadata is asked for (here the echo
    // upstream stands in, so the answer is unusable) only with --cacert.
    let issuer = upstream.url();
    let with_issuer = |cacert: bool| {
        let mut args = vec![
            "curl",
            &url,
            "--key",
            &key,
            "--issuer",
            &issuer,
            "--client-id",
            "c",
        ];
        if cacert {
            args.extend(["--cacert", p(&ca_file)]);
        }
        args
    };
    let metadata_requests = || {
        upstream
            .requests()
            .iter()
            .filter(|r| r.path.starts_with("/.well-known/"))
            .count()
    };
    // Without the CA, the issuer's certificate is not trusted: curl's 60, for the lookup.
    let run = dpop(&with_issuer(false)).await;
    assert_eq!(run.code, 60, "{run:#?}");
    assert!(run.stderr.contains("issuer metadata"), "{run:#?}");
    assert_eq!(metadata_requests(), 0);
    let run = dpop(&with_issuer(true)).await;
    assert_eq!(run.code, 1, "{run:#?}");
    assert!(run.stderr.contains("issuer metadata"), "{run:#?}");
    assert!(metadata_requests() > 0, "{run:#?}");

    // -k is refused, with the reason, before anything is sent.
    let count = upstream.request_count();
    let run = dpop(&["curl", "-k", &url, "--key", &key]).await;
    assert_eq!(run.code, 2, "{run:#?}");
    assert!(run.stderr.contains("--cacert"), "{run:#?}");
    assert_eq!(upstream.request_count(), count);

    // A redirect from https to plain http gets neither token nor proof, even trusted.
    let plain = TestUpstream::start().await.unwrap();
    let down = format!("{}/redirect/302?to={}/down", upstream.url(), plain.url());
    let run = dpop(&[
        "curl",
        "-v",
        "--location-trusted",
        &down,
        "--key",
        &key,
        "--token",
        TOKEN,
        "--cacert",
        p(&ca_file),
    ])
    .await;
    assert_eq!(run.json()["path"], "/down", "{run:#?}");
    let at_plain = plain.last_request().unwrap();
    assert_eq!(
        (at_plain.header("dpop"), at_plain.header("authorization")),
        (None, None)
    );
    assert!(run.stderr.contains("is plain http"), "{run:#?}");
    let signed = upstream.last_request().unwrap();
    assert!(signed.header("dpop").is_some() && signed.header("authorization").is_some());

    // 35: a URL without a scheme is https, and an http server cannot shake hands.
    let bare = plain.url().replace("http://", "");
    let run = dpop(&["curl", &bare, "--key", &key]).await;
    assert_eq!(run.code, 35, "{run:#?}");
    assert!(run.stderr.contains(&format!("https://{bare}")), "{run:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_are_named_on_stderr_with_what_they_mean() {
    let dir = TempDir::new("curl-refusals");
    let (key, jkt) = keygen(&dir).await;
    let issuer = MockIssuer::start().await.unwrap();
    let upstream = TestUpstream::start().await.unwrap();
    let (_gw, gw_url) = start_gateway(&gateway_flags(&upstream.url(), issuer.url())).await;
    let url = format!("{gw_url}/v1/items");
    let other_aud = issuer.mint(&TokenSpec::bound("https://other.example", &jkt));

    // A 401 with a challenge: one line naming the status, the challenge and a hint;
    // exit 0 as curl.
    let run = dpop(&["curl", &url, "--key", &key, "--token", &other_aud]).await;
    assert_eq!(run.code, 0, "{run:#?}");
    let line = run.stderr.trim();
    assert!(!line.contains('\n'), "{run:#?}");
    assert!(line.starts_with("warning: "), "{line}");
    assert!(
        line.contains("answered 401 Unauthorized (DPoP error=invalid_token"),
        "{line}"
    );
    assert!(line.contains("--resource"), "{line}");
    assert!(
        line.contains(r#"the token (unverified) says aud "https://other.example", exp "#),
        "{line}"
    );
    // --fail: 22 and, as curl, no body; --fail-with-body: 22 and the body.
    let run = dpop(&["curl", "--fail", &url, "--key", &key, "--token", &other_aud]).await;
    assert_eq!((run.code, run.stdout.as_str()), (22, ""), "{run:#?}");
    assert!(
        run.stderr.starts_with("error: ") && run.stderr.contains("401"),
        "{run:#?}"
    );
    let run = dpop(&[
        "curl",
        "--fail-with-body",
        &url,
        "--key",
        &key,
        "--token",
        &other_aud,
    ])
    .await;
    assert_eq!(run.code, 22, "{run:#?}");
    // -s: no line.
    let run = dpop(&[
        "curl", "-s", "-f", &url, "--key", &key, "--token", &other_aud,
    ])
    .await;
    assert_eq!((run.code, run.stderr.as_str()), (22, ""), "{run:#?}");

    // No token at all: the hint says how to send one.
    let run = dpop(&["curl", &url, "--key", &key]).await;
    assert_eq!(run.code, 0, "{run:#?}");
    assert!(
        run.stderr.contains("401") && run.stderr.contains("--token"),
        "{run:#?}"
    );

    // A status without a challenge is named too.
    let missing = format!("{}/status/404", upstream.url());
    let run = dpop(&["curl", &missing, "--key", &key]).await;
    assert_eq!(run.code, 0);
    assert!(run.stderr.contains("answered 404 Not Found"), "{run:#?}");
    assert_eq!(run.json_lenient()["path"], "/status/404");

    // -u is refused: credentials come from the token flags.
    let run = dpop(&["curl", "-u", "svc:secret", &url, "--key", &key]).await;
    assert_eq!(run.code, 2, "{run:#?}");
    assert!(run.stderr.contains("--token"), "{run:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verbose_shows_the_exchange_without_the_token() {
    let dir = TempDir::new("curl-verbose");
    let (key, jkt) = keygen(&dir).await;
    let issuer = MockIssuer::start().await.unwrap();
    let upstream = TestUpstream::start().await.unwrap();
    let mut flags = gateway_flags(&upstream.url(), issuer.url());
    flags.push("--require-nonce".to_owned());
    let (_gw, gw_url) = start_gateway(&flags).await;
    let url = format!("{gw_url}/v1/items?q=1");
    let token = issuer.mint(&TokenSpec::bound(AUD, &jkt));

    let run = dpop(&["curl", "-v", &url, "--key", &key, "--token", &token]).await;
    assert_eq!(run.json()["path"], "/v1/items?q=1", "{run:#?}");
    let err = &run.stderr;
    assert!(!err.contains(&token), "the token on stderr: {err}");
    assert!(err.contains("> GET /v1/items?q=1 HTTP/1.1"), "{err}");
    assert!(
        err.contains(&format!(
            "> authorization: DPoP {}...[{} bytes]",
            &token[..8],
            token.len()
        )),
        "{err}"
    );
    assert!(
        err.lines()
            .any(|l| l.starts_with("> dpop: ") && l.ends_with(" bytes]")),
        "{err}"
    );
    // The nonce challenge, the retry, and the second attempt's proof with the nonce.
    assert!(err.contains("< HTTP/1.1 401 Unauthorized"), "{err}");
    assert!(
        err.contains("* the server asked for a DPoP nonce: sending"),
        "{err}"
    );
    let proofs: Vec<Value> = err
        .lines()
        .filter_map(|l| l.strip_prefix("> DPoP claims: "))
        .map(|c| serde_json::from_str(c).unwrap())
        .collect();
    assert_eq!(proofs.len(), 2, "{err}");
    let nonce = proofs[1]["nonce"].as_str().unwrap();
    assert!(err.contains(&format!("< dpop-nonce: {nonce}")), "{err}");
    assert_eq!(proofs[1]["ath"], Ath::of_token(&token).as_str());
    assert!(err.contains("< HTTP/1.1 200 OK"), "{err}");

    // Cookies, Proxy-Authorization and other Authorization schemes: their length only;
    // a short token: not even its start.
    let direct = format!("{}/v1/items", upstream.url());
    let run = dpop(&[
        "curl",
        "-v",
        &direct,
        "--key",
        &key,
        "-H",
        "Cookie: sid=cookie-secret",
        "-H",
        "Proxy-Authorization: Basic cHJveHktc2VjcmV0",
        "-H",
        "Authorization: Token scheme-secret",
    ])
    .await;
    assert_eq!(run.code, 0, "{run:#?}");
    let err = &run.stderr;
    for secret in ["cookie-secret", "cHJveHktc2VjcmV0", "scheme-secret"] {
        assert!(!err.contains(secret), "{secret} on stderr: {err}");
    }
    assert!(err.contains("> cookie: [redacted, 17 bytes]"), "{err}");
    assert!(
        err.contains("> proxy-authorization: [redacted, 22 bytes]"),
        "{err}"
    );
    assert!(
        err.contains("> authorization: Token [redacted, 13 bytes]"),
        "{err}"
    );
    let short = "opaque-0123456789abcdef";
    let run = dpop(&["curl", "-v", &direct, "--key", &key, "--token", short]).await;
    assert!(
        !run.stderr.contains("opaque") && run.stderr.contains("> authorization: DPoP [23 bytes]"),
        "{run:#?}"
    );

    // Usage errors name the flag, never its text.
    for (flag, value) in [
        ("-H", "Authorization Bearer header-secret"),
        ("-H", "Bad Name: header-secret"),
        ("-H", "X-Key: header-secret\u{1}"),
        ("-F", "form-secret"),
        ("-F", "f=<a;form-secret=1"),
    ] {
        let run = dpop(&["curl", &direct, "--key", &key, flag, value]).await;
        assert_eq!(run.code, 2, "{value}: {run:#?}");
        assert!(
            !run.stderr.contains("secret") && run.stderr.contains(&format!("{flag} number 1")),
            "{value}: {run:#?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_and_body_options_mean_what_they_mean_in_curl() {
    let dir = TempDir::new("curl-output");
    let (key, _) = keygen(&dir).await;
    let upstream = TestUpstream::start().await.unwrap();
    let base = upstream.url();
    let k = ["--key", key.as_str()];
    let run_k = |extra: Vec<String>| {
        let mut args: Vec<String> = vec!["curl".into()];
        args.extend(extra);
        args.extend(k.iter().map(|s| (*s).to_owned()));
        async move {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            dpop(&args).await
        }
    };

    // -o FILE: the body there, nothing on stdout; -w after it, on stdout.
    let out = dir.file("body.json");
    let run = run_k(vec![
        format!("{base}/o"),
        "-o".into(),
        p(&out).into(),
        "-w".into(),
        "%{http_code} %{url_effective} %{time_total}\\n".into(),
    ])
    .await;
    let w = run.ok();
    let parts: Vec<&str> = w.trim_end().split(' ').collect();
    assert_eq!(
        parts[..2],
        ["200", format!("{base}/o").as_str()],
        "{run:#?}"
    );
    assert!(parts[2].parse::<f64>().is_ok(), "{w}");
    let body: Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    assert_eq!(body["path"], "/o");

    // -O: the URL's last segment, in the current directory.
    let cwd = TempDir::new("curl-remote-name");
    let mut cmd = Command::new(DPOP);
    cmd.args([
        "curl",
        "-O",
        &format!("{base}/files/report.json"),
        "--key",
        &key,
    ])
    .current_dir(&cwd.0)
    .stdout(Stdio::null());
    // Off the async runtime: the upstream runs on it.
    let status = tokio::task::spawn_blocking(move || cmd.status())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success());
    let saved: Value =
        serde_json::from_slice(&std::fs::read(cwd.file("report.json")).unwrap()).unwrap();
    assert_eq!(saved["path"], "/files/report.json");
    let run = run_k(vec![format!("{base}/"), "-O".into()]).await;
    assert_eq!(run.code, 2, "no file name: {run:#?}");

    // -I: a HEAD request; the head printed, no body.
    let run = run_k(vec!["-I".into(), format!("{base}/h")]).await;
    assert!(run.ok().starts_with("HTTP/1.1 200 OK\r\n"), "{run:#?}");
    assert!(run.stdout.ends_with("\r\n\r\n"), "{run:#?}");
    assert_eq!(upstream.last_request().unwrap().method, "HEAD");
    // -I -L: each hop's head, in order.
    let run = run_k(vec![
        "-I".into(),
        "-L".into(),
        format!("{base}/r/redirect/302?to=/h2"),
    ])
    .await;
    let statuses: Vec<&str> = run
        .ok()
        .lines()
        .filter(|l| l.starts_with("HTTP/"))
        .collect();
    assert_eq!(
        statuses,
        ["HTTP/1.1 302 Found", "HTTP/1.1 200 OK"],
        "{run:#?}"
    );

    // --json: POST, the JSON body, both content headers.
    run_k(vec![
        format!("{base}/j"),
        "--json".into(),
        r#"{"a":1}"#.into(),
    ])
    .await
    .ok();
    let seen = upstream.last_request().unwrap();
    assert_eq!(
        (seen.method.as_str(), seen.body.as_slice()),
        ("POST", &br#"{"a":1}"#[..])
    );
    assert_eq!(seen.header("content-type"), Some("application/json"));
    assert_eq!(seen.header("accept"), Some("application/json"));

    // -d @file drops line breaks; --data-binary keeps them; --data-urlencode encodes;
    // all joined with &.
    let file = dir.file("data.txt");
    std::fs::write(&file, "a=1\nb=2\n").unwrap();
    let at = format!("@{}", p(&file));
    run_k(vec![
        format!("{base}/d"),
        "-d".into(),
        at.clone(),
        "--data-urlencode".into(),
        "q=a b&c".into(),
    ])
    .await
    .ok();
    assert_eq!(upstream.last_request().unwrap().body, b"a=1b=2&q=a%20b%26c");
    run_k(vec![format!("{base}/d"), "--data-binary".into(), at])
        .await
        .ok();
    let seen = upstream.last_request().unwrap();
    assert_eq!(seen.body, b"a=1\nb=2\n");
    assert_eq!(
        seen.header("content-type"),
        Some("application/x-www-form-urlencoded")
    );

    // -F: multipart with a field and a file upload.
    let upload = dir.file("photo.bin");
    std::fs::write(&upload, b"\x00\x01binary").unwrap();
    run_k(vec![
        format!("{base}/f"),
        "-F".into(),
        "title=holiday".into(),
        "-F".into(),
        format!("photo=@{};type=image/png", p(&upload)),
    ])
    .await
    .ok();
    let seen = upstream.last_request().unwrap();
    assert_eq!(seen.method, "POST");
    let content_type = seen.header("content-type").unwrap();
    let boundary = content_type
        .strip_prefix("multipart/form-data; boundary=")
        .expect(content_type);
    let expected = [
        format!("--{boundary}\r\nContent-Disposition: form-data; name=\"title\"\r\n\r\nholiday\r\n").into_bytes(),
        format!("--{boundary}\r\nContent-Disposition: form-data; name=\"photo\"; filename=\"photo.bin\"\r\nContent-Type: image/png\r\n\r\n").into_bytes(),
        b"\x00\x01binary\r\n".to_vec(),
        format!("--{boundary}--\r\n").into_bytes(),
    ]
    .concat();
    assert_eq!(seen.body, expected);

    // -A sets the User-Agent; by default it is dpop's.
    run_k(vec![format!("{base}/a"), "-A".into(), "probe/1".into()])
        .await
        .ok();
    assert_eq!(
        upstream.last_request().unwrap().header("user-agent"),
        Some("probe/1")
    );
    run_k(vec![format!("{base}/a")]).await.ok();
    assert!(
        upstream
            .last_request()
            .unwrap()
            .header("user-agent")
            .unwrap()
            .starts_with("dpop/")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flags_come_from_the_environment_and_secrets_stay_out_of_help() {
    let dir = TempDir::new("curl-env");
    let (key, _) = keygen(&dir).await;
    let upstream = TestUpstream::start().await.unwrap();
    let url = format!("{}/env", upstream.url());
    let env = [
        ("DPOP_CURL_KEY", key.as_str()),
        ("DPOP_CURL_TOKEN", TOKEN),
        ("DPOP_CURL_HEADER", "X-From: env"),
    ];
    dpop_env(&["curl", &url], &env).await.ok();
    let seen = upstream.last_request().unwrap();
    assert_eq!(
        seen.header("authorization"),
        Some(format!("DPoP {TOKEN}").as_str())
    );
    assert_eq!(seen.header("x-from"), Some("env"));
    // -v says which settings came from the environment: the value of a path or URL,
    // never of a token or a header.
    let run = dpop_env(&["curl", "-v", &url], &env).await;
    assert_eq!(run.code, 0, "{run:#?}");
    let err = &run.stderr;
    assert!(
        err.contains(&format!("* --key from DPOP_CURL_KEY ({key})\n")),
        "{err}"
    );
    assert!(err.contains("* --token from DPOP_CURL_TOKEN\n"), "{err}");
    assert!(err.contains("* --header from DPOP_CURL_HEADER\n"), "{err}");
    assert!(
        !err.contains(TOKEN) && !err.contains("X-From: env"),
        "{err}"
    );
    // Not without -v, and not for a flag given on the command line.
    let run = dpop_env(&["curl", &url, "--key", &key], &env).await;
    assert!(!run.stderr.contains("from DPOP_"), "{run:#?}");
    let run = dpop_env(&["curl", "-v", &url, "--key", &key], &env).await;
    assert!(!run.stderr.contains("--key from"), "{run:#?}");
    // A boolean flag, and a wrong value refused like the flag's.
    let run = dpop_env(
        &["curl", &url],
        &[("DPOP_CURL_KEY", &key), ("DPOP_CURL_INCLUDE", "1")],
    )
    .await;
    assert!(run.ok().starts_with("HTTP/1.1 200 OK"), "{run:#?}");
    let run = dpop_env(
        &["curl", &url],
        &[("DPOP_CURL_KEY", &key), ("DPOP_CURL_RETRY", "many")],
    )
    .await;
    assert_eq!(run.code, 2, "{run:#?}");

    // --help names every variable; it shows the timeout set, never the token, a header
    // or a body.
    let run = dpop_env(
        &["curl", "--help"],
        &[
            ("DPOP_CURL_TOKEN", TOKEN),
            ("DPOP_CURL_MAX_TIME", "42"),
            ("DPOP_CURL_HEADER", "X-Api-Key: hdr-secret"),
            ("DPOP_CURL_DATA", "password=body-secret"),
            ("DPOP_CURL_CLIENT_ID", "billing"),
        ],
    )
    .await;
    let help = run.ok();
    assert!(!help.contains(TOKEN), "{help}");
    assert!(!help.contains("hdr-secret"), "{help}");
    assert!(!help.contains("body-secret"), "{help}");
    assert!(help.contains("[env: DPOP_CURL_HEADER]"), "{help}");
    // The token flags shared with `dpop token`, under curl's own prefix.
    // No variable's value is shown, secret or not.
    assert!(help.contains("[env: DPOP_CURL_CLIENT_ID]"), "{help}");
    assert!(!help.contains("billing"), "{help}");
    assert!(help.contains("[env: DPOP_CURL_TOKEN_CACHE"), "{help}");
    assert!(help.contains("[env: DPOP_CURL_TOKEN]"), "{help}");
    assert!(help.contains("[env: DPOP_CURL_MAX_TIME]"), "{help}");
    for heading in [
        "DPoP and the access token:",
        "HTTP:",
        "Post data:",
        "Output:",
        "Verbose:",
        "Connection:",
        "TLS:",
    ] {
        assert!(help.contains(heading), "{heading}: {help}");
    }
}

/// Runs `dpop ARGS` and closes its standard output after reading `first` bytes of it
/// (as `| head -c FIRST` does), which must all be `x`.
async fn with_reader_gone(args: &[&str], first: usize) -> std::process::Output {
    let mut child = Command::new(DPOP)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    // Off the async runtime: the upstream runs on it.
    tokio::task::spawn_blocking(move || {
        let mut head = vec![0_u8; first];
        stdout.read_exact(&mut head).unwrap();
        assert!(head.iter().all(|b| *b == b'x'));
        drop(stdout);
        child.wait_with_output()
    })
    .await
    .unwrap()
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_that_goes_away_is_a_write_error_as_in_curl() {
    let dir = TempDir::new("curl-pipe");
    let (key, _) = keygen(&dir).await;
    let upstream = TestUpstream::start().await.unwrap();
    let big = format!("{}/big?bytes=67108864", upstream.url());
    // curl's 23, one line naming the broken pipe; -s hides the line, not the code.
    let out = with_reader_gone(&["curl", &big, "--key", &key], 1024).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(23), "{out:?}");
    assert_eq!(
        stderr,
        "error: (23) standard output was closed before everything was written (broken pipe)\n"
    );
    let out = with_reader_gone(&["curl", "-s", &big, "--key", &key], 1).await;
    assert_eq!(
        (out.status.code(), out.stderr.as_slice()),
        (Some(23), &b""[..]),
        "{out:?}"
    );
    // A status of 400 or more with --fail or --fail-with-body stays 22, whether or not
    // the body could be written.
    let failing = format!("{}/status/500", upstream.url());
    for fail in ["--fail", "--fail-with-body"] {
        let out = with_reader_gone(&["curl", "-s", fail, &failing, "--key", &key], 0).await;
        assert_eq!(out.status.code(), Some(22), "{fail}: {out:?}");
    }
    let out = with_reader_gone(&["curl", "-s", &failing, "--key", &key], 0).await;
    assert_eq!(out.status.code(), Some(23), "{out:?}");
}

/// How far ahead the clock of the server below runs.
const AHEAD_SECS: u64 = 120;

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A resource server whose clock runs [`AHEAD_SECS`] ahead: it refuses a proof whose
/// `iat` is not near its own time, with its `Date`, as RFC 9449 servers do.
async fn answer_by_a_clock_ahead(mut req: RawRequest) {
    let now = unix_now() + AHEAD_SECS;
    let iat = req
        .head
        .lines()
        .find_map(|l| l.strip_prefix("dpop: "))
        .and_then(|proof| claims(proof)["iat"].as_u64())
        .unwrap_or(0);
    let response = if iat.abs_diff(now) <= 5 {
        "HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok".to_owned()
    } else {
        let date = httpdate::fmt_http_date(std::time::UNIX_EPOCH + Duration::from_secs(now));
        format!(
            "HTTP/1.1 401 Unauthorized\r\ndate: {date}\r\nwww-authenticate: DPoP \
             error=\"invalid_dpop_proof\", error_description=\"DPoP proof iat is outside \
             the acceptance window\"\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
        )
    };
    let _ = req.stream.write_all(response.as_bytes()).await;
    let _ = req.stream.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verbose_shows_a_clock_correction_and_its_retry() {
    let dir = TempDir::new("curl-skew");
    let (key, _) = keygen(&dir).await;
    let server = RawUpstream::start(answer_by_a_clock_ahead).await.unwrap();
    let url = format!("{}/items", server.url());

    let run = dpop(&["curl", "-v", &url, "--key", &key]).await;
    assert_eq!(run.ok(), "ok", "{run:#?}");
    let err = &run.stderr;
    assert!(
        err.contains(&format!("* the clock of {} is 1", server.url()))
            && err.contains(" s ahead of this machine's"),
        "{err}"
    );
    assert!(
        err.contains("* the server refused the proof's iat and its clock differs: sending"),
        "{err}"
    );
    let iats: Vec<u64> = err
        .lines()
        .filter_map(|l| l.strip_prefix("> DPoP claims: "))
        .map(|c| {
            serde_json::from_str::<Value>(c).unwrap()["iat"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(iats.len(), 2, "{err}");
    assert!(iats[1].abs_diff(iats[0] + AHEAD_SECS) <= 5, "{iats:?}");
}
