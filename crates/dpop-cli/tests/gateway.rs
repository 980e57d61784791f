//! End-to-end tests of `dpop gateway`: the real binary between a [`MockIssuer`] and an
//! echo [`TestUpstream`], driven over HTTP the way a client and an operator would. Each
//! test asserts what is observable from outside: status, `WWW-Authenticate`,
//! `DPoP-Nonce`, what the upstream received, the admin endpoints, exit codes and logs.
//!
//! The Redis tests read `DPOP_TEST_REDIS_URL` (a shared Redis) or start a private
//! `redis-server`; without either they say so and return.

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use dpop_core::{Algorithm, PrivateKey};
use dpop_test::{
    Gateway, HttpResponse, MockIssuer, TestUpstream, TokenSpec, free_port, http_get, http_request,
    wait_for_tcp,
};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::common::{
    AUD, TempFile, gateway_command, gateway_flags, loopback_host_rule, private_redis, proof,
    random_secret, send, send_dpop, shared_redis, spawn_server, start_gateway, www,
};

#[path = "gateway_reload.rs"]
mod reload;
#[path = "gateway_targets.rs"]
mod targets;
#[path = "gateway_upstream.rs"]
mod upstream;

const ALGS: &str = r#"algs="ES256 ES384 EdDSA Ed25519 PS256 RS256""#;
/// The external origin the replay and nonce tests give every instance.
const PUBLIC: &str = "http://api.test";

/// A client: a proof key and an access token bound to it (also used by the tests of
/// `dpop authz` behind real proxies).
pub(crate) struct Caller {
    pub(crate) key: PrivateKey,
    pub(crate) token: String,
}

impl Caller {
    pub(crate) fn new(issuer: &MockIssuer, scope: &str) -> Self {
        let key = PrivateKey::generate(Algorithm::Es256).unwrap();
        let token = issuer.mint(&TokenSpec {
            scope: Some(scope.into()),
            ..TokenSpec::bound(AUD, key.thumbprint().as_str())
        });
        Self { key, token }
    }

    pub(crate) fn jkt(&self) -> &str {
        self.key.thumbprint().as_str()
    }

    pub(crate) fn authorization(&self) -> String {
        format!("DPoP {}", self.token)
    }

    /// A fresh proof for `method` on `htu` (query removed by the builder).
    pub(crate) fn proof(&self, method: &str, htu: &str, nonce: Option<&str>) -> String {
        proof(&self.key, method, htu, nonce, Some(&self.token))
    }
}

/// A running `dpop gateway` and where to reach it.
struct Gw {
    process: Gateway,
    /// `http://127.0.0.1:PORT`, where requests go.
    url: String,
    /// The origin proofs are made for: `url`, or the `--public-url`.
    htu_base: String,
    /// `http://127.0.0.1:ADMIN_PORT`.
    admin: String,
}

impl Gw {
    fn addr(&self) -> SocketAddr {
        self.process.addr()
    }

    /// Sends `method path` with a fresh proof from `caller`; returns the response and the
    /// proof (to replay it or look for it in logs).
    async fn dpop(
        &self,
        caller: &Caller,
        method: &str,
        path: &str,
        nonce: Option<&str>,
        extra: &[(&str, &str)],
        body: &[u8],
    ) -> (HttpResponse, String) {
        let htu = format!("{}{}", self.htu_base, path);
        let proof = caller.proof(method, &htu, nonce);
        let url = format!("{}{path}", self.url);
        let r = send_dpop(method, &url, &caller.authorization(), &proof, extra, body).await;
        (r, proof)
    }

    /// `challenge` followed by the RFC 9728 `resource_metadata` this gateway adds to every
    /// 401 and 403 challenge.
    fn with_metadata(&self, challenge: &str) -> String {
        format!(
            r#"{challenge}, resource_metadata="{}/.well-known/oauth-protected-resource""#,
            self.htu_base
        )
    }

    /// [`dpop_error`] as this gateway sends it in a 401 or 403.
    fn dpop_error(&self, code: &str, description: &str) -> String {
        self.with_metadata(&dpop_error(code, description))
    }

    async fn get(&self, caller: &Caller, path: &str) -> (HttpResponse, String) {
        self.dpop(caller, "GET", path, None, &[], b"").await
    }

    async fn metrics(&self) -> String {
        let r = send("GET", &format!("{}/metrics", self.admin), &[], b"").await;
        assert_eq!(r.status, 200, "/metrics");
        r.text()
    }

    /// The gateway's log never holds any of `secrets` (RFC 9449 tokens and proofs are
    /// credentials), nor the signature part of any of them.
    fn assert_log_clean(&self, secrets: &[&str]) {
        let log = self.process.output();
        for secret in secrets {
            assert!(
                !log.contains(secret),
                "the log contains a credential:\n{log}"
            );
            let signature = secret.rsplit('.').next().unwrap();
            assert!(
                signature.len() < 16 || !log.contains(signature),
                "the log contains a signature:\n{log}"
            );
        }
    }
}

fn dpop_error(code: &str, description: &str) -> String {
    format!(r#"DPoP error="{code}", error_description="{description}", {ALGS}"#)
}

/// How a gateway is started: arguments after `dpop gateway`, and its environment.
struct Launch {
    args: Vec<String>,
    env: Vec<(String, String)>,
    listen: u16,
    admin: u16,
    htu_base: Option<String>,
}

impl Launch {
    /// `--listen`, `--admin-listen`, `--upstream`, `--issuer` and `--audience` by flags.
    fn flags(issuer: &MockIssuer, upstream: &str) -> Self {
        let mut l = Self::bare();
        l.args = vec![
            "--listen".to_owned(),
            format!("127.0.0.1:{}", l.listen),
            "--admin-listen".to_owned(),
            format!("127.0.0.1:{}", l.admin),
        ];
        l.args.extend(gateway_flags(upstream, issuer.url()));
        l
    }

    /// Nothing on the command line yet: the ports are chosen, the caller puts them in a
    /// configuration file or flags.
    fn bare() -> Self {
        Self {
            args: Vec::new(),
            env: Vec::new(),
            listen: free_port(),
            admin: free_port(),
            htu_base: None,
        }
    }

    fn arg(mut self, a: &str) -> Self {
        if self.args.last().is_some_and(|l| l == "--public-url") {
            self.htu_base = Some(a.to_owned());
        }
        self.args.push(a.to_owned());
        self
    }

    fn env(mut self, name: &str, value: &str) -> Self {
        self.env.push((name.to_owned(), value.to_owned()));
        self
    }

    /// `dpop gateway` with the arguments, and of the environment only what the test sets
    /// (no nonce secret or log level from the caller's shell).
    fn command(&self) -> Command {
        let mut cmd = gateway_command();
        cmd.args(&self.args)
            .args(loopback_host_rule(&self.args, self.listen));
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd
    }

    async fn start(self) -> Gw {
        let what = format!("dpop gateway {:?}", self.args);
        let process =
            spawn_server(self.command(), self.listen, Duration::from_secs(20), &what).await;
        let admin = SocketAddr::from(([127, 0, 0, 1], self.admin));
        wait_for_tcp(admin, Duration::from_secs(5)).await.unwrap();
        let url = format!("http://{}", process.addr());
        Gw {
            process,
            htu_base: self.htu_base.unwrap_or_else(|| url.clone()),
            url,
            admin: format!("http://{admin}"),
        }
    }
}

/// A configuration file naming the gateway's ports, issuer and audience, then `rest`.
fn config_file(launch: &Launch, issuer: &MockIssuer, upstream: &str, rest: &str) -> TempFile {
    TempFile::new(
        "gateway-e2e",
        "toml",
        &format!(
            "listen = \"127.0.0.1:{}\"\nadmin_listen = \"127.0.0.1:{}\"\nupstream = \"{upstream}\"\nissuer = \"{}\"\naudience = \"{AUD}\"\n{rest}",
            launch.listen,
            launch.admin,
            issuer.url()
        ),
    )
}

/// `dpop gateway --config FILE --log-json`, FILE holding `rest` below the usual
/// settings ([`config_file`]); the file is kept while the gateway runs.
async fn start_with_config(
    issuer: &MockIssuer,
    upstream: &TestUpstream,
    rest: &str,
) -> (Gw, TempFile) {
    let launch = Launch::bare();
    let file = config_file(&launch, issuer, &upstream.url(), rest);
    let gw = launch
        .arg("--config")
        .arg(file.path())
        .arg("--log-json")
        .start()
        .await;
    (gw, file)
}

/// The request as the upstream saw it, by path (with query).
fn seen(upstream: &TestUpstream, path: &str) -> dpop_test::RecordedRequest {
    upstream
        .requests()
        .into_iter()
        .rev()
        .find(|r| r.path == path)
        .unwrap_or_else(|| panic!("the upstream never saw {path}: {:?}", upstream.requests()))
}

/// One HTTP/1.1 exchange written by hand: `head` (without the blank line), then `body` in
/// chunked transfer coding, one chunk per slice; reads until the gateway closes.
async fn chunked_exchange(addr: SocketAddr, head: &str, chunks: &[&[u8]]) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(
            format!("{head}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
    for chunk in chunks {
        stream
            .write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
            .await
            .unwrap();
        stream.write_all(chunk).await.unwrap();
        stream.write_all(b"\r\n").await.unwrap();
        stream.flush().await.unwrap();
    }
    stream.write_all(b"0\r\n\r\n").await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), stream.read_to_end(&mut out))
        .await
        .expect("response in time")
        .unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

/// 1. A valid request passes with the verified identity, and only with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn valid_dpop_request_reaches_the_upstream_with_the_identity() {
    let issuer = MockIssuer::start().await.unwrap();
    let upstream = TestUpstream::start().await.unwrap();
    let gw = Launch::flags(&issuer, &upstream.url()).start().await;
    let caller = Caller::new(&issuer, "read write");

    let path = "/v1/items?page=2&q=a%20b";
    let (r, proof1) = gw
        .dpop(
            &caller,
            "GET",
            path,
            None,
            &[("x-dpop-subject", "admin"), ("x-dpop-jkt", "forged")],
            b"",
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}\n{}", gw.process.output());
    assert!(r.header("www-authenticate").is_none() && r.header("dpop-nonce").is_none());
    let echo = r.json().unwrap();
    assert_eq!(echo["path"], path, "the echo comes back to the client");

    let got = seen(&upstream, path);
    assert_eq!(got.method, "GET");
    assert_eq!(
        got.header_values("x-dpop-subject"),
        ["user-1"],
        "spoof replaced"
    );
    assert_eq!(got.header_values("x-dpop-client-id"), ["client-1"]);
    assert_eq!(got.header_values("x-dpop-jkt"), [caller.jkt()]);
    assert_eq!(got.header_values("x-dpop-scopes"), ["read write"]);
    assert!(got.header("authorization").is_none(), "{got:?}");
    assert!(got.header("dpop").is_none(), "{got:?}");
    assert_eq!(got.header_values("x-forwarded-for"), ["127.0.0.1"]);
    assert_eq!(got.header_values("x-forwarded-proto"), ["http"]);

    // A body with a Content-Length arrives byte for byte; a client X-Forwarded-For is
    // kept and the peer appended.
    let body: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let (r, proof2) = gw
        .dpop(
            &caller,
            "POST",
            "/v1/upload",
            None,
            &[
                ("content-type", "application/octet-stream"),
                ("x-forwarded-for", "203.0.113.7"),
                ("x-dpop-scopes", "admin"),
            ],
            &body,
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json().unwrap()["body_bytes"], body.len());
    let got = seen(&upstream, "/v1/upload");
    assert_eq!(got.method, "POST");
    assert!(got.body == body, "the POST body changed on the way");
    assert_eq!(got.header_values("x-dpop-scopes"), ["read write"]);
    // The client is no trusted proxy: its own X-Forwarded-For is not passed on.
    assert_eq!(got.header_values("x-forwarded-for"), ["127.0.0.1"]);

    // A chunked (streamed) body arrives intact too.
    let htu = format!("{}/v1/stream", gw.htu_base);
    let proof3 = caller.proof("POST", &htu, None);
    let chunks: Vec<Vec<u8>> = (0..20u8).map(|i| vec![b'a' + i; 10_000]).collect();
    let slices: Vec<&[u8]> = chunks.iter().map(Vec::as_slice).collect();
    let head = format!(
        "POST /v1/stream HTTP/1.1\r\nHost: {}\r\nAuthorization: {}\r\nDPoP: {proof3}",
        gw.addr(),
        caller.authorization()
    );
    let raw = chunked_exchange(gw.addr(), &head, &slices).await;
    assert!(raw.starts_with("HTTP/1.1 200 "), "{raw}");
    let got = seen(&upstream, "/v1/stream");
    assert_eq!(got.body, chunks.concat());
    assert!(got.header("dpop").is_none() && got.header("authorization").is_none());

    assert_eq!(upstream.request_count(), 3);
    gw.assert_log_clean(&[&caller.token, &proof1, &proof2, &proof3]);
}

/// From a trusted proxy, X-Forwarded-For sent as two field lines is one list (RFC 9110
/// §5.3): the gateway appends the peer to all of it, dropping nothing and keeping the
/// order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x_forwarded_for_keeps_every_field_line() {
    let issuer = MockIssuer::start().await.unwrap();
    let upstream = TestUpstream::start().await.unwrap();
    let launch = Launch::bare();
    let file = config_file(
        &launch,
        &issuer,
        &upstream.url(),
        "trusted_proxies = [\"127.0.0.1\"]\n",
    );
    let gw = launch.arg("--config").arg(file.path()).start().await;
    let caller = Caller::new(&issuer, "read");
    let (r, _) = gw
        .dpop(
            &caller,
            "GET",
            "/v1/xff",
            None,
            &[
                ("x-forwarded-for", "198.51.100.1"),
                ("x-forwarded-for", "203.0.113.7"),
                ("x-forwarded-proto", "http, https"),
            ],
            b"",
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    let got = seen(&upstream, "/v1/xff");
    assert_eq!(
        got.header_values("x-forwarded-for").join(", "),
        "198.51.100.1, 203.0.113.7, 127.0.0.1"
    );
    // The scheme the trusted proxy named first, as the htu used it.
    assert_eq!(got.header_values("x-forwarded-proto"), ["http"]);
}

/// 2. A proof used at one instance is refused at another sharing the Redis store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_is_refused_by_another_instance_sharing_redis() {
    let Some(redis) = shared_redis() else { return };
    let issuer = MockIssuer::start().await.unwrap();
    let upstream = TestUpstream::start().await.unwrap();
    let launch = |issuer: &MockIssuer| {
        Launch::flags(issuer, &upstream.url())
            .arg("--replay-store")
            .arg(&redis)
            .arg("--public-url")
            .arg(PUBLIC)
            .start()
    };
    let (a, b) = tokio::join!(launch(&issuer), launch(&issuer));
    let caller = Caller::new(&issuer, "read");

    let (r, proof) = a.get(&caller, "/v1/items").await;
    assert_eq!(r.status, 200, "{r:?}\n{}", a.process.output());
    let auth = caller.authorization();
    let headers = [("authorization", auth.as_str()), ("dpop", proof.as_str())];
    let r = send("GET", &format!("{}/v1/items", b.url), &headers, b"").await;
    assert_eq!(r.status, 401, "{r:?}");
    assert_eq!(
        www(&r),
        b.dpop_error("invalid_dpop_proof", "DPoP proof was already used")
    );
    assert!(r.body.is_empty());
    // And at the instance that accepted it.
    let r = send("GET", &format!("{}/v1/items", a.url), &headers, b"").await;
    assert_eq!(r.status, 401);
    assert_eq!(
        upstream.request_count(),
        1,
        "a replay never reaches the upstream"
    );
    // A fresh proof still passes at B.
    assert_eq!(b.get(&caller, "/v1/items").await.0.status, 200);
    assert!(b.metrics().await.contains("dpop_replays_total 1"));
}

/// 3. A nonce issued by one instance is accepted by another with the same secret, and
/// refused by one with another secret.
/// A security setting taken from the environment is logged with its variable (and its
/// value, not being secret); one from the command line is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_from_the_environment_are_logged_with_their_variable() {
    let issuer = MockIssuer::start().await.unwrap();
    let upstream = TestUpstream::start().await.unwrap();
    let gw = Launch::flags(&issuer, &upstream.url())
        .env("DPOP_GATEWAY_TRUSTED_PROXY", "10.0.0.0/8 192.0.2.1")
        .env("DPOP_GATEWAY_REPLAY_STORE", "memory")
        .start()
        .await;
    let log = gw.process.output();
    assert!(
        log.contains(
            "setting --trusted-proxy from DPOP_GATEWAY_TRUSTED_PROXY (10.0.0.0/8 192.0.2.1)"
        ),
        "{log}"
    );
    // A store URL may hold a password: named, not shown.
    assert!(
        log.contains("setting --replay-store from DPOP_GATEWAY_REPLAY_STORE\n"),
        "{log}"
    );
    assert!(!log.contains("--issuer from"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nonces_are_shared_by_instances_with_the_same_secret() {
    let issuer = MockIssuer::start().await.unwrap();
    let upstream = TestUpstream::start().await.unwrap();
    let shared = random_secret();
    let other = random_secret();
    let launch = |secret: &str| {
        Launch::flags(&issuer, &upstream.url())
            .arg("--require-nonce")
            .arg("--public-url")
            .arg(PUBLIC)
            .env("DPOP_NONCE_SECRET", secret)
            .start()
    };
    let (a, b, c) = tokio::join!(launch(&shared), launch(&shared), launch(&other));
    let caller = Caller::new(&issuer, "read");

    let (r, _) = a.get(&caller, "/v1/items").await;
    assert_eq!(r.status, 401, "{r:?}");
    assert_eq!(
        www(&r),
        a.dpop_error("use_dpop_nonce", "Server requires nonce in DPoP proof")
    );
    assert_eq!(r.header("cache-control"), Some("no-store"));
    let nonce = r.header("dpop-nonce").expect("DPoP-Nonce").to_owned();

    let (r, _) = b
        .dpop(&caller, "GET", "/v1/items", Some(&nonce), &[], b"")
        .await;
    assert_eq!(r.status, 200, "{r:?}\n{}", b.process.output());
    assert_eq!(upstream.request_count(), 1);

    let (r, _) = c
        .dpop(&caller, "GET", "/v1/items", Some(&nonce), &[], b"")
        .await;
    assert_eq!(r.status, 401, "{r:?}");
    assert!(
        www(&r).starts_with(r#"DPoP error="use_dpop_nonce""#),
        "{}",
        www(&r)
    );
    let c_nonce = r.header("dpop-nonce").expect("DPoP-Nonce from C");
    assert_ne!(c_nonce, nonce, "another secret, another nonce");
    assert_eq!(upstream.request_count(), 1);
}

/// 4. When Redis stops, requests get 503 (never 200) and `/readyz` says why; when it
/// comes back, requests pass again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_means_503_until_it_is_back() {
    let Some(mut redis) = private_redis().await else {
        return;
    };
    let issuer = MockIssuer::start().await.unwrap();
    let upstream = TestUpstream::start().await.unwrap();
    let gw = Launch::flags(&issuer, &upstream.url())
        .arg("--replay-store")
        .arg(&redis.url())
        .start()
        .await;
    let caller = Caller::new(&issuer, "read");
    assert_eq!(gw.get(&caller, "/v1/items").await.0.status, 200);

    redis.stop().unwrap();
    for _ in 0..3 {
        let (r, _) = gw.get(&caller, "/v1/items").await;
        assert_eq!(r.status, 503, "{r:?}\n{}", gw.process.output());
        assert!(r.header("www-authenticate").is_none(), "{r:?}");
        assert_eq!(r.header("retry-after"), Some("1"));
        assert!(r.body.is_empty());
    }
    let metrics = gw.metrics().await;
    assert!(
        metrics.contains(
            r#"dpop_requests_total{outcome="rejected",reason="replay_store_unavailable"} 3"#
        ),
        "{metrics}"
    );
    assert_eq!(
        upstream.request_count(),
        1,
        "nothing passed while Redis was down"
    );
    let r = http_get(&format!("{}/readyz", gw.admin)).await.unwrap();
    assert_eq!(r.status, 503);
    let ready = r.json().unwrap();
    assert_eq!(ready["replay_store_reachable"], false, "{ready}");
    assert_eq!(ready["ready"], false);
    assert_eq!(ready["token_keys_loaded"], true);

    redis.start().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (r, _) = gw.get(&caller, "/v1/items").await;
        if r.status == 200 {
            break;
        }
        assert_eq!(r.status, 503, "{r:?}");
        assert!(
            Instant::now() < deadline,
            "still 503 10 s after Redis came back\n{}",
            gw.process.output()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let r = http_get(&format!("{}/readyz", gw.admin)).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
}

/// 5. Refusals through the binary, each with its exact challenge.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejections_carry_the_rfc_challenges() {
    let issuer = MockIssuer::start().await.unwrap();
    let upstream = TestUpstream::start().await.unwrap();
    let gw = Launch::flags(&issuer, &upstream.url()).start().await;
    let caller = Caller::new(&issuer, "read");
    let url = format!("{}/v1/items", gw.url);
    let htu = format!("{}/v1/items", gw.htu_base);
    let auth = caller.authorization();

    // No credentials.
    let r = send("GET", &url, &[], b"").await;
    assert_eq!(
        (r.status, www(&r)),
        (401, gw.with_metadata(&format!("DPoP {ALGS}")).as_str())
    );
    assert!(r.body.is_empty());

    // A scheme the gateway does not take counts as no credentials.
    let r = send("GET", &url, &[("authorization", "Basic dXNlcjpwdw==")], b"").await;
    assert_eq!(
        (r.status, www(&r)),
        (401, gw.with_metadata(&format!("DPoP {ALGS}")).as_str())
    );

    // A DPoP-bound token sent as Bearer.
    let bearer = format!("Bearer {}", caller.token);
    let r = send("GET", &url, &[("authorization", &bearer)], b"").await;
    assert_eq!(r.status, 401);
    assert_eq!(
        www(&r),
        gw.dpop_error(
            "invalid_token",
            "DPoP-bound access token presented as a Bearer token"
        )
    );

    // Two Authorization headers.
    let proof_two = caller.proof("GET", &htu, None);
    let r = send(
        "GET",
        &url,
        &[
            ("authorization", &auth),
            ("authorization", &bearer),
            ("dpop", &proof_two),
        ],
        b"",
    )
    .await;
    assert_eq!(r.status, 400);
    assert_eq!(
        www(&r),
        dpop_error(
            "invalid_request",
            "Multiple methods used to include access token"
        )
    );

    // DPoP scheme without a proof.
    let r = send("GET", &url, &[("authorization", &auth)], b"").await;
    assert_eq!(
        (r.status, www(&r)),
        (
            401,
            gw.dpop_error("invalid_dpop_proof", "DPoP proof required")
                .as_str()
        )
    );

    // A proof for another URI (another port: the htu is the URL the client used).
    let proof_elsewhere = caller.proof("GET", "http://127.0.0.1:1/v1/items", None);
    let r = send(
        "GET",
        &url,
        &[("authorization", &auth), ("dpop", &proof_elsewhere)],
        b"",
    )
    .await;
    assert_eq!(
        (r.status, www(&r)),
        (
            401,
            gw.dpop_error(
                "invalid_dpop_proof",
                "DPoP proof does not match the request method and URI"
            )
            .as_str()
        )
    );

    // A proof signed by a key the token is not bound to.
    let stranger = Caller {
        key: PrivateKey::generate(Algorithm::Es256).unwrap(),
        token: caller.token.clone(),
    };
    let proof_stranger = stranger.proof("GET", &htu, None);
    let r = send(
        "GET",
        &url,
        &[("authorization", &auth), ("dpop", &proof_stranger)],
        b"",
    )
    .await;
    assert_eq!(
        (r.status, www(&r)),
        (
            401,
            gw.dpop_error("invalid_token", "Invalid DPoP key binding")
                .as_str()
        )
    );

    assert_eq!(
        upstream.request_count(),
        0,
        "no refused request was forwarded"
    );
    gw.assert_log_clean(&[&caller.token, &proof_two, &proof_elsewhere, &proof_stranger]);
}

/// RFC 9728: the document is served by the binary without credentials, built from the
/// configuration, at the plain and the path-suffixed well-known URL; challenges point to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protected_resource_metadata_is_published() {
    let issuer = MockIssuer::start().await.unwrap();
    let upstream = TestUpstream::start().await.unwrap();
    let launch = Launch::bare();
    let file = config_file(
        &launch,
        &issuer,
        &upstream.url(),
        r#"
[resource_metadata]
resource_name = "Orders"
resource_documentation = "https://docs.api.test/orders"
max_age_secs = 120

[[routes]]
path_prefix = "/v1"
scopes = ["orders:read"]
"#,
    );
    let gw = launch
        .arg("--config")
        .arg(file.path())
        .arg("--public-url")
        .arg("http://api.test/orders")
        .start()
        .await;
    let expected = format!(
        concat!(
            r#"{{"resource":"http://api.test/orders","authorization_servers":["{}"],"#,
            r#""scopes_supported":["orders:read"],"bearer_methods_supported":["header"],"#,
            r#""dpop_signing_alg_values_supported":["ES256","ES384","EdDSA","Ed25519","PS256","RS256"],"#,
            r#""dpop_bound_access_tokens_required":true,"resource_name":"Orders","#,
            r#""resource_documentation":"https://docs.api.test/orders"}}"#
        ),
        issuer.url()
    );
    for path in [
        "/.well-known/oauth-protected-resource",
        "/.well-known/oauth-protected-resource/orders",
    ] {
        let r = send("GET", &format!("{}{path}", gw.url), &[], b"").await;
        assert_eq!(r.status, 200, "{path}: {r:?}\n{}", gw.process.output());
        assert_eq!(r.header("content-type"), Some("application/json"));
        assert_eq!(r.header("cache-control"), Some("max-age=120"));
        assert_eq!(r.text(), expected, "{path}");
    }
    let r = send(
        "DELETE",
        &format!("{}/.well-known/oauth-protected-resource", gw.url),
        &[],
        b"",
    )
    .await;
    assert_eq!(r.status, 405);
    // The challenge names the document's URL (RFC 9728 §3.1: the well-known path goes
    // before the resource's path).
    let r = send("GET", &format!("{}/v1/items", gw.url), &[], b"").await;
    assert_eq!(r.status, 401);
    assert_eq!(
        www(&r),
        format!(
            r#"DPoP {ALGS}, resource_metadata="http://api.test/.well-known/oauth-protected-resource/orders""#
        )
    );
    assert_eq!(upstream.request_count(), 0, "nothing forwarded");
}

/// 6. Upstream failures become 502 and 504 without detail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_failures_are_502_and_504() {
    let issuer = MockIssuer::start().await.unwrap();
    let upstream = TestUpstream::start().await.unwrap();
    let closed = "http://127.0.0.1:1".to_owned(); // nothing listens on port 1
    let slow = Launch::bare();
    let file = config_file(
        &slow,
        &issuer,
        &upstream.url(),
        "[limits]\nupstream_timeout_secs = 1\n",
    );
    let (down, slow) = tokio::join!(
        Launch::flags(&issuer, &closed).start(),
        slow.arg("--config").arg(file.path()).start()
    );
    let caller = Caller::new(&issuer, "read");

    let (r, _) = down.get(&caller, "/v1/items").await;
    assert_eq!(r.status, 502, "{r:?}");
    assert!(r.body.is_empty(), "no internal detail: {:?}", r.text());

    let started = Instant::now();
    let (r, _) = slow.get(&caller, "/slow?ms=3000").await;
    assert_eq!(r.status, 504, "{r:?}");
    assert!(r.body.is_empty());
    assert!(
        started.elapsed() < Duration::from_millis(2500),
        "504 after {:?}, not after the 1 s upstream timeout",
        started.elapsed()
    );
    // Status codes of the upstream pass through unchanged.
    assert_eq!(slow.get(&caller, "/status/418").await.0.status, 418);
    assert!(
        down.metrics()
            .await
            .contains(r#"dpop_upstream_responses_total{result="error"} 1"#)
    );
    let metrics = slow.metrics().await;
    assert!(
        metrics.contains(r#"dpop_upstream_responses_total{result="timeout"} 1"#)
            && metrics.contains(r#"dpop_upstream_responses_total{result="ok"} 1"#),
        "{metrics}"
    );
}

/// 7. Routes from a configuration file; flags override the file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_file_routes_and_flag_overrides() {
    let issuer = MockIssuer::start().await.unwrap();
    let upstream = TestUpstream::start().await.unwrap();
    let launch = Launch::bare();
    // The file's upstream is a closed port: the --upstream flag must win.
    let closed = "http://127.0.0.1:1".to_owned(); // nothing listens on port 1
    let file = config_file(
        &launch,
        &issuer,
        &closed,
        r#"
[[routes]]
path_prefix = "/public"
dpop = "off"

[[routes]]
path_prefix = "/shadow"
dpop = "report_only"

[[routes]]
path_prefix = "/admin"
scopes = ["admin"]
"#,
    );
    let gw = launch
        .arg("--config")
        .arg(file.path())
        .arg("--upstream")
        .arg(&upstream.url())
        .start()
        .await;

    // Off: no credentials needed; the client still cannot set identity headers.
    let r = send(
        "GET",
        &format!("{}/public/docs", gw.url),
        &[("x-dpop-subject", "admin")],
        b"",
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}\n{}", gw.process.output());
    let got = seen(&upstream, "/public/docs");
    assert!(got.header("x-dpop-subject").is_none(), "{got:?}");
    // Credentials the gateway did not check pass through untouched.
    let r = send(
        "GET",
        &format!("{}/public/docs2", gw.url),
        &[("authorization", "Bearer legacy-token")],
        b"",
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        seen(&upstream, "/public/docs2").header("authorization"),
        Some("Bearer legacy-token")
    );

    // Report-only: forwarded without an identity, and counted.
    let r = send("GET", &format!("{}/shadow/x", gw.url), &[], b"").await;
    assert_eq!(r.status, 200);
    assert!(r.header("www-authenticate").is_none());
    assert!(
        seen(&upstream, "/shadow/x")
            .header("x-dpop-subject")
            .is_none()
    );
    // A failed check during roll-out leaves the client's credentials for the upstream.
    let r = send(
        "GET",
        &format!("{}/shadow/y", gw.url),
        &[("authorization", "Bearer legacy-token")],
        b"",
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        seen(&upstream, "/shadow/y").header("authorization"),
        Some("Bearer legacy-token")
    );
    let metrics = gw.metrics().await;
    assert!(
        metrics.contains(
            r#"dpop_requests_total{outcome="would_reject",reason="credentials_missing"} 1"#
        ),
        "{metrics}"
    );

    // Scopes: a token without "admin" is refused with 403 and the scope named.
    let reader = Caller::new(&issuer, "read");
    let (r, _) = gw.get(&reader, "/admin/users").await;
    assert_eq!(r.status, 403, "{r:?}");
    assert_eq!(
        www(&r),
        gw.with_metadata(&format!(
            r#"DPoP error="insufficient_scope", error_description="The access token lacks a required scope", {ALGS}, scope="admin""#
        ))
    );
    let admin = Caller::new(&issuer, "read admin");
    assert_eq!(gw.get(&admin, "/admin/users").await.0.status, 200);
    // Other paths get the default policy: DPoP required.
    let r = send("GET", &format!("{}/v1/items", gw.url), &[], b"").await;
    assert_eq!(
        (r.status, www(&r)),
        (401, gw.with_metadata(&format!("DPoP {ALGS}")).as_str())
    );
    // Forwarded: two off-route requests, two report-only ones, the admin request.
    assert_eq!(upstream.request_count(), 5);
}

/// 8. The admin listener.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_health_readiness_and_metrics() {
    let issuer = MockIssuer::start().await.unwrap();
    let upstream = TestUpstream::start().await.unwrap();
    // A second gateway whose issuer is unreachable: up, but not ready.
    let mut no_issuer = Launch::flags(&issuer, &upstream.url());
    // Port 1: nothing listens there, and unlike a port just freed by `free_port`, no
    // other test's server can take it meanwhile.
    let dead_issuer = "http://127.0.0.1:1".to_owned();
    let i = no_issuer.args.iter().position(|a| a == "--issuer").unwrap();
    no_issuer.args[i + 1] = dead_issuer;
    let (gw, no_issuer) = tokio::join!(
        Launch::flags(&issuer, &upstream.url()).start(),
        no_issuer.start()
    );

    let r = http_get(&format!("{}/healthz", no_issuer.admin))
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    let r = http_get(&format!("{}/readyz", no_issuer.admin))
        .await
        .unwrap();
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.json().unwrap()["token_keys_loaded"], false);
    let (r, _) = no_issuer
        .get(&Caller::new(&issuer, "read"), "/v1/items")
        .await;
    assert_eq!(r.status, 503, "no keys: 503, not 401: {r:?}");
    assert!(r.header("www-authenticate").is_none());

    let r = http_get(&format!("{}/healthz", gw.admin)).await.unwrap();
    assert_eq!(r.status, 200);
    let r = http_get(&format!("{}/readyz", gw.admin)).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let ready = r.json().unwrap();
    assert_eq!(
        ready,
        serde_json::json!({"ready": true, "token_keys_loaded": true, "replay_store_reachable": true, "config_generation": 1})
    );

    // One accepted request and one replay, so that every series has a sample.
    let caller = Caller::new(&issuer, "read");
    let (r, proof) = gw.get(&caller, "/v1/items").await;
    assert_eq!(r.status, 200);
    let auth = caller.authorization();
    let r = send(
        "GET",
        &format!("{}/v1/items", gw.url),
        &[("authorization", &auth), ("dpop", &proof)],
        b"",
    )
    .await;
    assert_eq!(r.status, 401);

    let metrics = gw.metrics().await;
    for needle in [
        r#"dpop_requests_total{outcome="accepted",reason=""} 1"#,
        r#"dpop_requests_total{outcome="rejected",reason="replay"} 1"#,
        "dpop_verification_seconds_count 2",
        "dpop_iat_offset_seconds_count 1",
        r#"dpop_jwks_refreshes_total{result="ok"}"#,
        "dpop_replays_total 1",
    ] {
        assert!(metrics.contains(needle), "{needle} not in:\n{metrics}");
    }
    let r = http_get(&format!("{}/nope", gw.admin)).await.unwrap();
    assert_eq!(r.status, 404);
    assert_eq!(upstream.request_count(), 1);
}

/// Starts `GET path` through `gw` in a task (the request goes in flight).
fn spawn_get(
    gw: &Gw,
    caller: &Caller,
    path: &str,
) -> tokio::task::JoinHandle<std::io::Result<HttpResponse>> {
    let url = format!("{}{path}", gw.url);
    let htu = format!("{}{path}", gw.htu_base);
    let proof = caller.proof("GET", &htu, None);
    let auth = caller.authorization();
    tokio::spawn(async move {
        http_request(
            "GET",
            &url,
            &[("authorization", &auth), ("dpop", &proof)],
            b"",
        )
        .await
    })
}

/// SIGTERM, and how long the process took to exit.
async fn terminate_timed(
    process: &mut Gateway,
) -> (std::io::Result<std::process::ExitStatus>, Duration) {
    let started = Instant::now();
    let status = process.terminate(Duration::from_secs(5)).await;
    (status, started.elapsed())
}

/// 9. SIGTERM lets the request in flight finish, then the process exits 0 and the port
/// closes; new connections are refused from the signal on; the drain timeout bounds the
/// wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_requests() {
    let issuer = MockIssuer::start().await.unwrap();
    let upstream = TestUpstream::start().await.unwrap();
    let (patient, hasty) = (Launch::bare(), Launch::bare());
    let patient_file = config_file(
        &patient,
        &issuer,
        &upstream.url(),
        "[limits]\ndrain_timeout_secs = 5\n",
    );
    let hasty_file = config_file(
        &hasty,
        &issuer,
        &upstream.url(),
        "[limits]\ndrain_timeout_secs = 1\n",
    );
    let (mut patient, mut hasty) = tokio::join!(
        patient.arg("--config").arg(patient_file.path()).start(),
        hasty.arg("--config").arg(hasty_file.path()).start()
    );
    let caller = Caller::new(&issuer, "read");

    let finishes = spawn_get(&patient, &caller, "/slow?ms=1500");
    let cut = spawn_get(&hasty, &caller, "/slow?ms=4000");
    // Wait until both requests are at the upstream (in flight), then SIGTERM.
    let deadline = Instant::now() + Duration::from_secs(10);
    while upstream.request_count() < 2 {
        assert!(Instant::now() < deadline, "{}", patient.process.output());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let patient_addr = patient.addr();
    let ((status, took), (hasty_status, hasty_took), refused_while_draining) = tokio::join!(
        terminate_timed(&mut patient.process),
        terminate_timed(&mut hasty.process),
        async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            tokio::net::TcpStream::connect(patient_addr).await.is_err()
        }
    );

    let status = status.unwrap_or_else(|e| panic!("{e}\n{}", patient.process.output()));
    assert!(status.success(), "{status}\n{}", patient.process.output());
    let r = finishes
        .await
        .unwrap()
        .expect("the in-flight request completes");
    assert_eq!(r.status, 200, "{r:?}");
    assert!(
        took >= Duration::from_millis(900),
        "exited after {took:?}, before the in-flight request finished"
    );
    assert!(
        refused_while_draining,
        "new connections are accepted while draining\n{}",
        patient.process.output()
    );
    assert!(
        tokio::net::TcpStream::connect(patient_addr).await.is_err(),
        "the port still accepts connections after exit"
    );

    // A request longer than the drain timeout does not hold the process.
    let hasty_status = hasty_status.unwrap_or_else(|e| panic!("{e}\n{}", hasty.process.output()));
    assert!(
        hasty_status.success(),
        "{hasty_status}\n{}",
        hasty.process.output()
    );
    assert!(
        hasty_took < Duration::from_millis(2500),
        "exited {hasty_took:?} after SIGTERM with a 1 s drain timeout"
    );
    assert!(
        cut.await.unwrap().map_or(true, |r| r.status != 200),
        "the request was cut at the drain timeout"
    );
}

struct Exit {
    code: Option<i32>,
    stderr: String,
}

/// Runs `dpop gateway args` to its end (killed after 20 s).
async fn run_gateway(args: &[&str]) -> Exit {
    let mut child = gateway_command()
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("dpop gateway {args:?} still running after 20 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    Exit {
        code: status.code(),
        stderr,
    }
}

/// 10a. A missing required flag: exit 2 and one `error:` line naming it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_upstream_exits_2_naming_it() {
    let listen = format!("127.0.0.1:{}", free_port());
    let missing = run_gateway(&[
        "--listen",
        &listen,
        "--issuer",
        "http://127.0.0.1:1",
        "--audience",
        AUD,
    ])
    .await;
    assert_eq!(missing.code, Some(2), "{}", missing.stderr);
    assert_eq!(missing.stderr.lines().count(), 1, "{}", missing.stderr);
    assert!(
        missing.stderr.starts_with("error: ") && missing.stderr.contains("--upstream"),
        "{}",
        missing.stderr
    );
}

/// 10b. An unknown field in the file: exit 2 naming the field, in one `error:` line
/// (main.rs: "Errors are printed as one `error: ...` line on stderr").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_config_field_exits_2_naming_it() {
    let config = TempFile::new(
        "gateway-e2e",
        "toml",
        &format!(
            "listen = \"127.0.0.1:{}\"\nupstream = \"http://127.0.0.1:1\"\nissuer = \"http://127.0.0.1:1\"\naudience = \"{AUD}\"\n\n[limits]\nmax_conections = 10\n",
            free_port()
        ),
    );
    let unknown = run_gateway(&["--config", config.path()]).await;
    assert_eq!(unknown.code, Some(2), "{}", unknown.stderr);
    assert!(
        unknown.stderr.starts_with("error: ") && unknown.stderr.contains("max_conections"),
        "{}",
        unknown.stderr
    );
    assert_eq!(
        unknown.stderr.trim_end().lines().count(),
        1,
        "errors are one line:\n{}",
        unknown.stderr
    );
}

/// 10b'. Secret files named in the configuration (nonce secrets, the introspection
/// client secret) that others can read: refused at load, exit 2, naming the setting and
/// the file, as key and password files are.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secret_files_others_can_read_are_refused_at_load() {
    let dir = crate::common::TempDir::new("gateway-secret-files");
    let secret = "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3JldC0";
    let file = dir.write("secret", &format!("{secret}\n"), 0o644);
    let head = format!(
        "listen = \"127.0.0.1:{}\"\nupstream = \"http://127.0.0.1:1\"\nissuer = \"http://127.0.0.1:1\"\naudience = \"{AUD}\"\nallowed_hosts = [\"127.0.0.1\"]\n",
        free_port()
    );
    for (section, setting) in [
        ("[nonce]\nsecrets_file", "[nonce] secrets_file"),
        (
            "[introspection]\nendpoint = \"http://127.0.0.1:1/introspect\"\nclient_id = \"gw\"\nclient_secret_file",
            "[introspection] client_secret_file",
        ),
    ] {
        let config = TempFile::new(
            "gateway-e2e",
            "toml",
            &format!("{head}\n{section} = \"{}\"\n", file.display()),
        );
        let run = run_gateway(&["--config", config.path()]).await;
        assert_eq!(run.code, Some(2), "{setting}: {}", run.stderr);
        assert!(
            run.stderr.contains(setting)
                && run.stderr.contains(&format!(
                    "{} can be read by other users (mode 0644)",
                    file.display()
                ))
                && !run.stderr.contains(secret),
            "{setting}: {}",
            run.stderr
        );
    }
}

/// 10c. Redis unreachable at start: exit 1 with a message, not a panic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_redis_at_start_exits_1() {
    let issuer = MockIssuer::start().await.unwrap();
    let listen = format!("127.0.0.1:{}", free_port());
    let redis = run_gateway(&[
        "--listen",
        &listen,
        "--upstream",
        "http://127.0.0.1:1",
        "--issuer",
        issuer.url(),
        "--audience",
        AUD,
        "--replay-store",
        "redis://127.0.0.1:1",
        "--allowed-host",
        &listen,
    ])
    .await;
    assert_eq!(redis.code, Some(1), "{}", redis.stderr);
    assert!(!redis.stderr.contains("panicked"), "{}", redis.stderr);
    let last = redis.stderr.lines().last().unwrap_or("");
    assert!(
        last.starts_with("error: ") && last.contains("replay store"),
        "{}",
        redis.stderr
    );
}

/// An https upstream on 127.0.0.1 with a certificate from a private CA, and that CA.
async fn https_upstream() -> (dpop_test::TestCa, TestUpstream) {
    let ca = dpop_test::TestCa::new("upstream ca");
    let upstream = TestUpstream::builder()
        .tls(&ca.server(&["127.0.0.1"]))
        .start()
        .await
        .unwrap();
    (ca, upstream)
}

/// 10d. An https upstream whose certificate does not verify: exit 1 naming it; a client
/// key that does not match its certificate: exit 2 naming the file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_tls_failures_at_start_exit_with_the_reason() {
    let issuer = MockIssuer::start().await.unwrap();
    let (ca, upstream) = https_upstream().await;
    let listen = format!("127.0.0.1:{}", free_port());
    let flags = gateway_flags(&upstream.url(), issuer.url());
    let mut args: Vec<&str> = flags.iter().map(String::as_str).collect();
    args.extend(["--listen", &listen, "--allowed-host", &listen]);
    // The system's roots do not know the private CA.
    let unknown = run_gateway(&args).await;
    assert_eq!(unknown.code, Some(1), "{}", unknown.stderr);
    let last = unknown.stderr.lines().last().unwrap_or("");
    assert!(
        last.starts_with("error: upstream ")
            && last.contains(&upstream.url())
            && last.contains("certificate"),
        "{}",
        unknown.stderr
    );
    let (a, b) = (ca.client("a"), ca.client("b"));
    let config = TempFile::new(
        "gateway-upstream-key",
        "toml",
        &format!(
            "[upstream]\nurl = \"{}\"\nca_file = {:?}\nclient_cert_file = {:?}\nclient_key_file = {:?}\n",
            upstream.url(),
            ca.ca_file().display().to_string(),
            a.cert_file.display().to_string(),
            b.key_file.display().to_string()
        ),
    );
    args.extend(["--config", config.path()]);
    let mismatch = run_gateway(&args).await;
    assert_eq!(mismatch.code, Some(2), "{}", mismatch.stderr);
    assert!(
        mismatch.stderr.contains(&b.key_file.display().to_string())
            && mismatch.stderr.contains("does not match"),
        "{}",
        mismatch.stderr
    );
    assert_eq!(upstream.request_count(), 0);
}

/// 11. Tokens and proofs never reach the logs, whatever the outcome, even at debug level
/// in JSON.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_never_contain_tokens_or_proofs() {
    let issuer = MockIssuer::start().await.unwrap();
    let upstream = TestUpstream::start().await.unwrap();
    let gw = Launch::flags(&issuer, &upstream.url())
        .arg("--log-json")
        .env("RUST_LOG", "debug")
        .start()
        .await;
    let caller = Caller::new(&issuer, "read");
    let auth = caller.authorization();
    let url = format!("{}/v1/items?secret=no", gw.url);

    let (r, accepted) = gw.get(&caller, "/v1/items?secret=no").await;
    assert_eq!(r.status, 200);
    // Replayed, wrong method, as Bearer, garbage after the scheme.
    let r = send(
        "GET",
        &url,
        &[("authorization", &auth), ("dpop", &accepted)],
        b"",
    )
    .await;
    assert_eq!(r.status, 401);
    let wrong_method = caller.proof("POST", &format!("{}/v1/items", gw.htu_base), None);
    let r = send(
        "GET",
        &url,
        &[("authorization", &auth), ("dpop", &wrong_method)],
        b"",
    )
    .await;
    assert_eq!(r.status, 401);
    let bearer = format!("Bearer {}", caller.token);
    assert_eq!(
        send("GET", &url, &[("authorization", &bearer)], b"")
            .await
            .status,
        401
    );
    let key = PrivateKey::generate(Algorithm::Es256).unwrap();
    let expired = issuer.mint(&TokenSpec {
        lifetime_secs: -120,
        ..TokenSpec::bound(AUD, key.thumbprint().as_str())
    });
    let old = Caller {
        key,
        token: expired.clone(),
    };
    let (r, expired_proof) = gw.get(&old, "/v1/items").await;
    assert_eq!(r.status, 401);

    let log = gw.process.output();
    assert!(
        log.contains("request refused"),
        "rejections are logged:\n{log}"
    );
    assert!(
        !log.contains("secret=no"),
        "query strings are not logged:\n{log}"
    );
    gw.assert_log_clean(&[
        &caller.token,
        &accepted,
        &wrong_method,
        &expired,
        &expired_proof,
    ]);
}

// ---- Nonce secret rotation ----

/// `dpop gateway --require-nonce --public-url PUBLIC` with `[nonce] secrets = secrets`
/// (the first issues); the file is returned so that it outlives the start.
async fn start_with_nonce_secrets(
    issuer: &MockIssuer,
    upstream: &TestUpstream,
    secrets: &[&str],
) -> (Gw, TempFile) {
    let launch = Launch::bare();
    let list: Vec<String> = secrets.iter().map(|s| format!("{s:?}")).collect();
    let file = config_file(
        &launch,
        issuer,
        &upstream.url(),
        &format!("[nonce]\nrequire = true\nsecrets = [{}]\n", list.join(", ")),
    );
    let gw = launch
        .arg("--config")
        .arg(file.path())
        .arg("--public-url")
        .arg(PUBLIC)
        .start()
        .await;
    (gw, file)
}

/// A rolling rotation of the nonce secret: instance A still on `[S1]`, B on `[S2, S1]`,
/// C done with `[S2]`. A nonce from A passes at B, and the nonce B hands out then passes
/// at C: a secret keeps its key id when it moves from current to previous.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nonces_survive_a_rolling_secret_rotation() {
    let issuer = MockIssuer::start().await.unwrap();
    let upstream = TestUpstream::start().await.unwrap();
    let (s1, s2) = (random_secret(), random_secret());
    let (on_a, on_b, on_c) = ([s1.as_str()], [s2.as_str(), s1.as_str()], [s2.as_str()]);
    let ((a, _fa), (b, _fb), (c, _fc)) = tokio::join!(
        start_with_nonce_secrets(&issuer, &upstream, &on_a),
        start_with_nonce_secrets(&issuer, &upstream, &on_b),
        start_with_nonce_secrets(&issuer, &upstream, &on_c),
    );
    let caller = Caller::new(&issuer, "read");

    let (r, _) = a.get(&caller, "/v1/items").await;
    assert_eq!(r.status, 401, "{r:?}");
    let from_a = r
        .header("dpop-nonce")
        .expect("DPoP-Nonce from A")
        .to_owned();

    let (r, _) = b
        .dpop(&caller, "GET", "/v1/items", Some(&from_a), &[], b"")
        .await;
    assert_eq!(r.status, 200, "{r:?}\n{}", b.process.output());
    let from_b = r
        .header("dpop-nonce")
        .expect("B renews a nonce of its previous secret")
        .to_owned();
    assert_ne!(from_b, from_a);

    let (r, _) = c
        .dpop(&caller, "GET", "/v1/items", Some(&from_b), &[], b"")
        .await;
    assert_eq!(r.status, 200, "{r:?}\n{}", c.process.output());
    assert_eq!(upstream.request_count(), 2);

    // C no longer holds S1: A's nonce gets a challenge with a nonce of S2.
    let (r, _) = c
        .dpop(&caller, "GET", "/v1/items", Some(&from_a), &[], b"")
        .await;
    assert_eq!(r.status, 401, "{r:?}");
    assert!(
        www(&r).starts_with(r#"DPoP error="use_dpop_nonce""#),
        "{}",
        www(&r)
    );
    assert_eq!(upstream.request_count(), 2);
}

/// `dpop gateway --config` with an `[upstream]` table: https to an upstream whose
/// certificate comes from a private CA named by `ca_file`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_table_reaches_an_https_upstream_through_its_ca_file() {
    let issuer = MockIssuer::start().await.unwrap();
    let (ca, upstream) = https_upstream().await;
    let launch = Launch::bare();
    let ca_file = ca.ca_file().display().to_string();
    // Nothing listens there: a warning at start-up, 502 with the cause in the log later.
    let down = format!("https://127.0.0.1:{}", free_port());
    let file = TempFile::new(
        "gateway-upstream-table",
        "toml",
        &format!(
            "listen = \"127.0.0.1:{}\"\nadmin_listen = \"127.0.0.1:{}\"\nissuer = \"{}\"\naudience = \"{AUD}\"\n\n[upstream]\nurl = \"{}/api\"\nca_file = {ca_file:?}\n\n[[routes]]\npath_prefix = \"/down\"\nupstream = {{ url = \"{down}\", ca_file = {ca_file:?} }}\n",
            launch.listen,
            launch.admin,
            issuer.url(),
            upstream.url(),
        ),
    );
    let gw = launch.arg("--config").arg(file.path()).start().await;
    let caller = Caller::new(&issuer, "read");
    let (r, _) = gw.get(&caller, "/v1/tls").await;
    assert_eq!(r.status, 200, "{r:?}");
    let got = seen(&upstream, "/api/v1/tls");
    assert_eq!(got.header_values("x-dpop-jkt"), [caller.jkt()]);
    let log = gw.process.output();
    assert!(
        log.contains("gateway listening") && log.contains(&upstream.url()),
        "the start-up line names the upstream:\n{log}"
    );
    assert!(log.contains("upstream not reachable at start-up"), "{log}");

    let (r, _) = gw.get(&caller, "/down/x").await;
    assert_eq!(r.status, 502, "{r:?}");
    assert!(r.body.is_empty(), "no cause in the body: {r:?}");
    let log = gw.process.output();
    let line = log
        .lines()
        .find(|l| l.contains("upstream request failed"))
        .unwrap_or_else(|| panic!("no warning:\n{log}"));
    assert!(
        line.contains(&down) && line.contains("cannot connect") && line.contains("WARN"),
        "the upstream and the cause: {line}"
    );
}

/// `--tls-cert`/`--tls-key`: the gateway answers over TLS (with an `https` htu), SIGHUP
/// reloads a replaced certificate, and a mismatched new pair is refused with an error
/// naming the file while the old one stays in use.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_serves_tls_and_reloads_on_sighup() {
    let issuer = MockIssuer::start().await.unwrap();
    let upstream = TestUpstream::start().await.unwrap();
    let ca = dpop_test::TestCa::new("cli test ca");
    let server = ca.server(&["127.0.0.1"]);
    // Polling is slow here: only SIGHUP reloads within the test.
    let config = TempFile::new(
        "gateway-tls",
        "toml",
        "[tls]\nreload_interval_secs = 3600\n",
    );
    let mut args = gateway_flags(&upstream.url(), issuer.url());
    args.extend(
        [
            "--config",
            config.path(),
            "--tls-cert",
            &server.cert_file.display().to_string(),
            "--tls-key",
            &server.key_file.display().to_string(),
        ]
        .map(str::to_owned),
    );
    let (gw, _) = start_gateway(&args).await;
    let url = format!("https://{}", gw.addr());
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(ca.cert_pem().as_bytes()).unwrap())
        .build()
        .unwrap();
    let caller = Caller::new(&issuer, "read");
    let target = format!("{url}/v1/items");
    let dpop_get = |client: &reqwest::Client| {
        client
            .get(&target)
            .header("authorization", caller.authorization())
            .header("dpop", caller.proof("GET", &target, None))
            .send()
    };
    let r = dpop_get(&client).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(upstream.requests().len(), 1);
    // Plain HTTP on the TLS port gets nowhere.
    assert!(
        http_get(&format!("http://{}/v1/items", gw.addr()))
            .await
            .is_err()
    );

    let hup = || crate::common::hangup(gw.id());
    // A certificate whose key is another one's: refused, named, the old one served.
    let other = ca.server(&["127.0.0.1"]);
    std::fs::write(&server.cert_file, &other.cert_pem).unwrap();
    hup();
    let deadline = Instant::now() + Duration::from_secs(10);
    let wanted = format!(
        "{}: the private key does not match",
        server.key_file.display()
    );
    while !gw.output().contains(&wanted) {
        assert!(
            Instant::now() < deadline,
            "no error logged:\n{}",
            gw.output()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let fresh = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(ca.cert_pem().as_bytes()).unwrap())
        .build()
        .unwrap();
    assert_eq!(dpop_get(&fresh).await.unwrap().status(), 200);
    // The pair completed: SIGHUP loads it.
    std::fs::write(&server.key_file, &other.key_pem).unwrap();
    hup();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !gw.output().contains("certificate reloaded") {
        assert!(Instant::now() < deadline, "not reloaded:\n{}", gw.output());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let fresh = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(ca.cert_pem().as_bytes()).unwrap())
        .build()
        .unwrap();
    assert_eq!(dpop_get(&fresh).await.unwrap().status(), 200);
    assert_eq!(upstream.requests().len(), 3);
}

/// A key file that does not belong to the certificate: exit 2 naming the file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mismatched_tls_key_exits_2_naming_the_file() {
    let ca = dpop_test::TestCa::new("cli test ca");
    let (a, b) = (ca.server(&["127.0.0.1"]), ca.server(&["127.0.0.1"]));
    let listen = format!("127.0.0.1:{}", free_port());
    let exit = run_gateway(&[
        "--listen",
        &listen,
        "--upstream",
        "http://127.0.0.1:1",
        "--issuer",
        "http://127.0.0.1:1",
        "--audience",
        AUD,
        "--allowed-host",
        &listen,
        "--tls-cert",
        &a.cert_file.display().to_string(),
        "--tls-key",
        &b.key_file.display().to_string(),
    ])
    .await;
    assert_eq!(exit.code, Some(2), "{}", exit.stderr);
    assert!(
        exit.stderr.starts_with("error: ")
            && exit.stderr.contains(&b.key_file.display().to_string())
            && exit.stderr.contains("does not match"),
        "{}",
        exit.stderr
    );
}

/// The `dpop::access` lines of a gateway logging JSON, parsed.
fn access_lines(gw: &Gw) -> Vec<serde_json::Value> {
    gw.process
        .output()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["target"] == "dpop::access")
        .collect()
}

/// The access line of the request to `path`, waiting briefly for it to be written.
async fn access_line(gw: &Gw, path: &str) -> serde_json::Value {
    for _ in 0..50 {
        if let Some(line) = access_lines(gw)
            .into_iter()
            .find(|v| v["fields"]["path"] == path)
        {
            return line;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no access line for {path}:\n{}", gw.process.output());
}

/// One access line per request, with the canonical path, outcome, reason, caller,
/// route and upstream, and never the token, the proof or the query string; the
/// OpenTelemetry-named metrics carry the configured route, not the path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_names_the_request_and_never_its_secrets() {
    let issuer = MockIssuer::start().await.unwrap();
    let upstream = TestUpstream::start().await.unwrap();
    let (gw, _file) = start_with_config(
        &issuer,
        &upstream,
        "[[routes]]\npath_prefix = \"/v1\"\nscopes = [\"read\"]\n",
    )
    .await;
    let caller = Caller::new(&issuer, "read");

    let secret_query = "api_key=query-secret-value";
    let (ok, proof_ok) = gw
        .get(&caller, &format!("/v1/items/7?{secret_query}"))
        .await;
    assert_eq!(ok.status, 200, "{ok:?}");
    let line = access_line(&gw, "/v1/items/7").await;
    let f = &line["fields"];
    assert_eq!(line["level"], "INFO");
    assert!(line["timestamp"].is_string(), "{line}");
    assert_eq!(f["message"], "request");
    assert_eq!(f["method"], "GET");
    assert_eq!(f["status"], 200);
    assert_eq!(f["outcome"], "accepted");
    assert!(f.get("reason").is_none(), "{line}");
    assert_eq!(f["client_id"], "client-1");
    assert_eq!(f["sub"], "user-1");
    assert_eq!(f["jkt"], caller.jkt());
    assert_eq!(f["route"], "/v1");
    assert_eq!(f["upstream"], format!("{}/", upstream.url()));
    assert!(
        f["peer"].as_str().unwrap().starts_with("127.0.0.1:"),
        "{line}"
    );
    assert!(f["duration_ms"].as_f64().unwrap() > 0.0, "{line}");
    let upstream_ms = f["upstream_ms"].as_f64().unwrap();
    assert!(
        upstream_ms > 0.0 && upstream_ms <= f["duration_ms"].as_f64().unwrap(),
        "{line}"
    );

    // Refused: a proof for another path. The line has the reason code and no caller.
    let htu = format!("{}/v1/other", gw.htu_base);
    let wrong = caller.proof("GET", &htu, None);
    let url = format!("{}/v1/refused?{secret_query}", gw.url);
    let refused = send_dpop("GET", &url, &caller.authorization(), &wrong, &[], b"").await;
    assert_eq!(refused.status, 401, "{refused:?}");
    let line = access_line(&gw, "/v1/refused").await;
    let f = &line["fields"];
    assert_eq!(f["status"], 401);
    assert_eq!(f["outcome"], "rejected");
    assert_eq!(f["reason"], "htu_mismatch");
    assert_eq!(f["route"], "/v1");
    assert!(
        f.get("client_id").is_none() && f.get("upstream").is_none(),
        "{line}"
    );

    // A target that is not canonical is logged without any path.
    let odd = send("GET", &format!("{}/v1/a/../b", gw.url), &[], b"").await;
    assert_eq!(odd.status, 400);

    let log = gw.process.output();
    assert!(!log.contains("query-secret-value"), "{log}");
    gw.assert_log_clean(&[&caller.token, &proof_ok, &wrong]);
    let lines = access_lines(&gw);
    let text = format!("{lines:?}");
    assert!(
        !text.contains("/v1/a/"),
        "the raw target is never in the access log: {text}"
    );
    assert_eq!(lines.len(), 3, "one line per request: {lines:?}");
    assert!(
        lines
            .iter()
            .any(|l| l["fields"]["reason"] == "non_canonical_target"
                && l["fields"].get("path").is_none()),
        "{lines:?}"
    );

    let metrics = gw.metrics().await;
    for series in [
        r#"http_server_request_duration_seconds_count{http_request_method="GET",http_response_status_code="200",http_route="/v1"} 1"#,
        r#"http_server_request_duration_seconds_count{http_request_method="GET",http_response_status_code="401",http_route="/v1"} 1"#,
        r#"http_server_request_duration_seconds_count{http_request_method="GET",http_response_status_code="400",http_route="default"} 1"#,
        r#"http_client_request_duration_seconds_count{http_request_method="GET",http_response_status_code="200",http_route="/v1"} 1"#,
        "http_server_active_requests 0",
        r#"dpop_requests_total{outcome="accepted",reason=""} 1"#,
    ] {
        assert!(metrics.contains(series), "{series} missing:\n{metrics}");
    }
    assert!(!metrics.contains("/v1/items"), "paths are never labels");
}

/// `log_requests = false` turns the access log off; the metrics stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_can_be_turned_off() {
    let issuer = MockIssuer::start().await.unwrap();
    let upstream = TestUpstream::start().await.unwrap();
    let (gw, _file) = start_with_config(&issuer, &upstream, "log_requests = false\n").await;
    let caller = Caller::new(&issuer, "read");
    let (ok, _) = gw.get(&caller, "/quiet").await;
    assert_eq!(ok.status, 200);
    let metrics = gw.metrics().await;
    assert!(
        metrics.contains(r#"http_server_request_duration_seconds_count{http_request_method="GET",http_response_status_code="200",http_route="default"} 1"#),
        "{metrics}"
    );
    assert!(access_lines(&gw).is_empty(), "{}", gw.process.output());
}

/// `[limits] io_uring`: on by default where the kernel offers io_uring, off on request;
/// the start-up line says which. Either way requests, a POST body, and a streamed
/// response of megabytes (more than a batch holds per connection) arrive whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socket_writes_batched_or_not_carry_the_same_bytes() {
    let issuer = MockIssuer::start().await.unwrap();
    let upstream = TestUpstream::start().await.unwrap();
    let on = match dpop_uring::probe() {
        Ok(()) => "on".to_owned(),
        Err(e) if std::env::var_os("DPOP_TEST_IO_URING").is_some() => {
            panic!("DPOP_TEST_IO_URING is set but the kernel refuses io_uring: {e}")
        }
        Err(e) => format!("refused by the kernel ({e}): one system call per write"),
    };
    for (rest, want) in [("", on.as_str()), ("[limits]\nio_uring = false\n", "off")] {
        let (gw, _file) = start_with_config(&issuer, &upstream, rest).await;
        let listening = gw
            .process
            .output()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|v| v["fields"]["message"] == "gateway listening")
            .unwrap_or_else(|| panic!("no start-up line: {}", gw.process.output()));
        assert_eq!(listening["fields"]["io_uring"], want, "{rest}");
        let caller = Caller::new(&issuer, "read");
        let (r, _) = gw.get(&caller, "/small").await;
        assert_eq!(r.status, 200, "{rest}: {r:?}");
        let body = vec![b'b'; 300_000];
        let (r, _) = gw.dpop(&caller, "POST", "/upload", None, &[], &body).await;
        assert_eq!(r.status, 200, "{rest}: {r:?}");
        assert!(seen(&upstream, "/upload").body == body, "{rest}");
        let (r, _) = gw.get(&caller, "/big?bytes=8000000").await;
        assert_eq!(r.status, 200, "{rest}: {r:?}");
        assert_eq!(r.body.len(), 8_000_000, "{rest}");
        assert!(r.body.iter().all(|&b| b == b'x'), "{rest}");
    }
}

/// An issuer that is down is retried every second, but its cause is logged once, not
/// once per attempt; the DPoP key source names the cause ("connection refused").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_down_issuer_is_logged_once_with_its_cause() {
    let issuer = MockIssuer::start().await.unwrap();
    let upstream = TestUpstream::start().await.unwrap();
    let mut launch = Launch::flags(&issuer, &upstream.url());
    // Port 1: nothing listens there.
    let i = launch.args.iter().position(|a| a == "--issuer").unwrap();
    launch.args[i + 1] = "http://127.0.0.1:1".to_owned();
    let gw = launch.start().await;
    // Long enough for three more retries at the one-second interval.
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let log = gw.process.output();
    let failing: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("issuer keys fetch failing"))
        .collect();
    assert_eq!(failing.len(), 1, "{log}");
    assert!(
        failing[0]
            .to_ascii_lowercase()
            .contains("connection refused"),
        "the cause is named: {log}"
    );
    let refused = log
        .lines()
        .filter(|l| l.to_ascii_lowercase().contains("connection refused"))
        .count();
    assert_eq!(refused, 1, "one line for four failed attempts:\n{log}");
}

/// A post-quantum key end to end: `dpop keygen --alg ML-DSA-44`, a token bound to its
/// thumbprint, `dpop curl` through a gateway that lists ML-DSA-44 (its header limit
/// raised for the 6 KB proof); a gateway that does not list it refuses the proof and
/// names the algorithms it takes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ml_dsa_proofs_from_dpop_curl_pass_a_gateway_that_allows_them() {
    let issuer = MockIssuer::start().await.unwrap();
    let upstream = TestUpstream::start().await.unwrap();
    let dir = std::env::temp_dir().join(format!("dpop-mldsa-e2e-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let key = dir.join("mldsa.pem");
    let key = key.to_str().unwrap();
    let dpop = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_dpop"))
            .args(args)
            .env_remove("RUST_LOG")
            .output()
            .unwrap();
        (
            out.status.code().unwrap(),
            String::from_utf8(out.stdout).unwrap(),
            String::from_utf8(out.stderr).unwrap(),
        )
    };
    let (code, jkt, err) = dpop(&["keygen", "--alg", "ML-DSA-44", "--out", key]);
    assert_eq!(code, 0, "{err}");
    let jkt = jkt.trim().to_owned();
    let token = issuer.mint(&TokenSpec::bound(AUD, &jkt));

    let allowing = Launch::bare();
    let file = config_file(
        &allowing,
        &issuer,
        &upstream.url(),
        "algorithms = [\"ES256\", \"ML-DSA-44\"]\n",
    );
    let gw = allowing.arg("--config").arg(file.path()).start().await;
    let url = format!("{}/v1/pq", gw.url);
    let (code, out, err) = dpop(&["curl", &url, "--key", key, "--token", &token]);
    assert_eq!(code, 0, "{err}\n{}", gw.process.output());
    let echo: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(echo["path"], "/v1/pq");
    assert_eq!(echo["headers"]["x-dpop-jkt"][0], jkt.as_str());

    let default = Launch::flags(&issuer, &upstream.url()).start().await;
    let url = format!("{}/v1/pq", default.url);
    let (code, out, err) = dpop(&["curl", "-i", &url, "--key", key, "--token", &token]);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("HTTP/1.1 401"), "{out}");
    let challenge = out
        .lines()
        .find(|l| l.to_ascii_lowercase().starts_with("www-authenticate:"))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(challenge.contains("invalid_dpop_proof"), "{challenge}");
    assert!(!challenge.contains("ML-DSA"), "{challenge}");
    let _ = std::fs::remove_dir_all(&dir);
}
