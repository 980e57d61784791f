//! End-to-end tests of `dpop authz` behind the real proxies it is made for: nginx
//! (`auth_request`) and Caddy (`forward_auth`), each started on loopback with the
//! configuration shipped in `examples/authz/`, only its ports replaced. Behind the proxy
//! is an echo [`TestUpstream`] that records what reached it, beside it the real `dpop`
//! binary as the authorizer and a [`MockIssuer`]. Every refusal is asserted twice: the
//! client's status and headers, and the upstream's record, which must not change.
//!
//! The proxies come from `DPOP_TEST_NGINX` (e.g. `/usr/sbin/nginx`) and `DPOP_TEST_CADDY`
//! (e.g. `/usr/bin/caddy`); a test whose variable is unset says so and returns. `.ci/run`
//! installs both and sets the variables, so CI never skips them.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use dpop_core::{Algorithm, PrivateKey};
use dpop_test::{
    Gateway, HttpResponse, MockIssuer, TestUpstream, free_port, http_get, raw_exchange,
};

use crate::common::{AUD, DPOP, TempDir, p, proof, redis, send, send_dpop, spawn_server, www};
use crate::gateway::Caller;

#[path = "authz_reload.rs"]
mod reload;

const NGINX_CONF: &str = include_str!("../../../examples/authz/nginx.conf");
const CADDYFILE: &str = include_str!("../../../examples/authz/Caddyfile");

/// The ports the shipped snippets use, replaced by the test's.
const SNIPPET_PROXY_PORT: &str = "8080";
const SNIPPET_AUTHZ: &str = "127.0.0.1:9191";
const SNIPPET_UPSTREAM: &str = "127.0.0.1:3000";

/// How long a proxy or the authorizer may take to listen.
const START_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Proxy {
    Nginx,
    Caddy,
}

impl Proxy {
    fn env(self) -> &'static str {
        match self {
            Self::Nginx => "DPOP_TEST_NGINX",
            Self::Caddy => "DPOP_TEST_CADDY",
        }
    }

    /// The proxy's binary, or `None` after saying the test is skipped.
    fn binary(self) -> Option<PathBuf> {
        match std::env::var_os(self.env()).filter(|v| !v.is_empty()) {
            Some(v) => Some(PathBuf::from(v)),
            None => {
                eprintln!("skipped: {} not set", self.env());
                None
            }
        }
    }
}

/// `text` with `from` replaced by `to`, which must occur: a snippet that no longer has
/// the default the test replaces fails the test instead of running unchanged.
fn substitute(text: &str, from: &str, to: &str) -> String {
    assert!(
        text.contains(from),
        "the shipped snippet no longer contains {from:?}"
    );
    text.replace(from, to)
}

/// A shipped snippet with its `listen` directive replaced (`(from, to)`), and the
/// authorizer's and the upstream's addresses.
fn snippet(text: &str, listen: (&str, &str), authz: &str, upstream: &str) -> String {
    let conf = substitute(text, listen.0, listen.1);
    let conf = substitute(&conf, SNIPPET_AUTHZ, authz);
    substitute(&conf, SNIPPET_UPSTREAM, upstream)
}

/// How a [`Stack`] differs from the default.
#[derive(Default)]
struct Options<'a> {
    /// The issuer to trust instead of a fresh one (stacks that share callers).
    issuer: Option<&'a MockIssuer>,
    /// The URL clients use, sent as `Host` (a name shared by several stacks); default:
    /// the proxy's own `http://127.0.0.1:PORT`.
    public_url: Option<&'a str>,
    /// `replay_store`; default: memory.
    replay_store: Option<&'a str>,
}

/// The authorizer's configuration: the issuer's tokens, the URL clients use, loopback
/// as the trusted proxy, and routes for the nonce and scope tests.
fn authz_toml(issuer: &str, public_url: &str, replay_store: &str, admin_port: u16) -> String {
    format!(
        r#"issuer = "{issuer}"
audience = "{AUD}"
public_url = "{public_url}"
trusted_proxies = ["127.0.0.1"]
admin_listen = "127.0.0.1:{admin_port}"
replay_store = "{replay_store}"

[[routes]]
path_prefix = "/api"
scopes = ["api"]

[[routes]]
path_prefix = "/admin"
scopes = ["admin"]

[[routes]]
path_prefix = "/fresh"
nonce = true
scopes = ["api"]
"#
    )
}

/// An issuer, an echo upstream, `dpop authz` and a proxy in front, all on loopback.
struct Stack {
    proxy_kind: Proxy,
    /// The issuer, unless the stack uses another's.
    own_issuer: Option<MockIssuer>,
    upstream: TestUpstream,
    authz: Gateway,
    proxy: Gateway,
    /// `http://127.0.0.1:PORT`: the proxy, where clients go.
    url: String,
    /// What proofs name: `url` or the shared public URL.
    htu_base: String,
    /// The `Host` clients send, when it is not the proxy's address.
    host: Option<String>,
    _dir: TempDir,
}

impl Stack {
    /// The stack behind `proxy`, or `None` when the proxy is not available.
    async fn start(proxy_kind: Proxy) -> Option<Self> {
        Self::start_with(proxy_kind, Options::default()).await
    }

    async fn start_with(proxy_kind: Proxy, options: Options<'_>) -> Option<Self> {
        let binary = proxy_kind.binary()?;
        let dir = TempDir::new("authz-proxy");
        let own_issuer = match options.issuer {
            Some(_) => None,
            None => Some(MockIssuer::start().await.unwrap()),
        };
        let issuer_url = options
            .issuer
            .or(own_issuer.as_ref())
            .map(|i| i.url().to_owned())
            .unwrap();
        let upstream = TestUpstream::start().await.unwrap();
        let (proxy_port, authz_port, admin_port) = (free_port(), free_port(), free_port());
        let url = format!("http://127.0.0.1:{proxy_port}");
        let htu_base = options.public_url.unwrap_or(&url).to_owned();
        let host = options
            .public_url
            .map(|u| u.trim_start_matches("http://").to_owned());

        let config = dir.file("authz.toml");
        let toml = authz_toml(
            &issuer_url,
            &htu_base,
            options.replay_store.unwrap_or("memory"),
            admin_port,
        );
        std::fs::write(&config, toml).unwrap();
        let mut cmd = Command::new(DPOP);
        cmd.args(["authz", "--listen", &format!("127.0.0.1:{authz_port}")])
            .args(["--config", p(&config)])
            .env_remove("DPOP_NONCE_SECRET")
            .env_remove("RUST_LOG");
        let authz = spawn_server(cmd, authz_port, START_TIMEOUT, "dpop authz").await;
        wait_ready(&format!("http://127.0.0.1:{admin_port}/readyz")).await;

        let authz_addr = format!("127.0.0.1:{authz_port}");
        let upstream_addr = upstream.addr().to_string();
        let proxy = match proxy_kind {
            Proxy::Nginx => {
                start_nginx(&binary, &dir, proxy_port, &authz_addr, &upstream_addr).await
            }
            Proxy::Caddy => {
                start_caddy(&binary, &dir, proxy_port, &authz_addr, &upstream_addr).await
            }
        };
        Some(Self {
            proxy_kind,
            own_issuer,
            upstream,
            authz,
            proxy,
            url,
            htu_base,
            host,
            _dir: dir,
        })
    }

    fn caller(&self, scope: &str) -> Caller {
        Caller::new(self.own_issuer.as_ref().expect("the stack's issuer"), scope)
    }

    /// `method path` through the proxy with `caller`'s token and a fresh proof for it;
    /// returns the response and the proof.
    async fn dpop(
        &self,
        caller: &Caller,
        method: &str,
        path: &str,
        nonce: Option<&str>,
        extra: &[(&str, &str)],
    ) -> (HttpResponse, String) {
        let proof = caller.proof(method, &format!("{}{path}", self.htu_base), nonce);
        let r = self
            .send_with(method, path, &caller.authorization(), &proof, extra)
            .await;
        (r, proof)
    }

    async fn send_with(
        &self,
        method: &str,
        path: &str,
        authorization: &str,
        dpop: &str,
        extra: &[(&str, &str)],
    ) -> HttpResponse {
        let mut headers = Vec::new();
        if let Some(host) = &self.host {
            headers.push(("host", host.as_str()));
        }
        headers.extend_from_slice(extra);
        let url = format!("{}{path}", self.url);
        send_dpop(method, &url, authorization, dpop, &headers, b"").await
    }

    /// Asserts `r` is a refusal as forward-auth gives it (401 or 403, `no-store`) and
    /// that nothing reached the upstream since it had `before` requests.
    #[track_caller]
    fn assert_refused(&self, what: &str, r: &HttpResponse, before: u64) {
        assert!(
            matches!(r.status, 401 | 403),
            "{:?} {what}: {} {:?}\n{}",
            self.proxy_kind,
            r.status,
            r.headers,
            self.authz.output()
        );
        assert_eq!(
            r.header("cache-control"),
            Some("no-store"),
            "{:?} {what}: {:?}",
            self.proxy_kind,
            r.headers
        );
        assert_eq!(
            self.upstream.request_count(),
            before,
            "{:?} {what}: the upstream was called: {:?}",
            self.proxy_kind,
            self.upstream.last_request()
        );
    }
}

/// Polls `url` until it answers 200.
async fn wait_ready(url: &str) {
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if http_get(url).await.is_ok_and(|r| r.status == 200) {
            return;
        }
        assert!(Instant::now() < deadline, "{url} never answered 200");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The uid that owns a file this process just created: the effective uid.
#[cfg(unix)]
fn euid(dir: &Path) -> u32 {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::metadata(dir).unwrap().uid()
}

/// nginx with the shipped `nginx.conf`: its ports replaced, its temporary files and
/// logs in `dir` (Debian's build puts them under /var/lib/nginx), in the foreground.
async fn start_nginx(
    binary: &Path,
    dir: &TempDir,
    port: u16,
    authz: &str,
    upstream: &str,
) -> Gateway {
    let mut conf = snippet(
        NGINX_CONF,
        (
            &format!("listen {SNIPPET_PROXY_PORT};"),
            &format!("listen 127.0.0.1:{port};"),
        ),
        authz,
        upstream,
    );
    let d = p(&dir.0);
    conf = substitute(
        &conf,
        "\nhttp {\n",
        &format!(
            "\nhttp {{\n    access_log off;\n    client_body_temp_path {d}/body;\n    proxy_temp_path {d}/proxy;\n    fastcgi_temp_path {d}/fastcgi;\n    uwsgi_temp_path {d}/uwsgi;\n    scgi_temp_path {d}/scgi;\n"
        ),
    );
    let file = dir.file("nginx.conf");
    std::fs::write(&file, conf).unwrap();
    // As root, nginx's workers would switch to `nobody`, who cannot use the temporary
    // directories made here; as another user the directive is ignored, so it is only
    // given to root.
    let user = if euid(&dir.0) == 0 { "user root;" } else { "" };
    let mut cmd = Command::new(binary);
    cmd.args(["-p", d, "-c", p(&file), "-e", "stderr", "-g"])
        .arg(format!(
            "daemon off; master_process on; worker_processes 1; pid {d}/nginx.pid; error_log stderr notice; {user}"
        ));
    spawn_server(cmd, port, START_TIMEOUT, "nginx").await
}

/// Caddy with the shipped `Caddyfile`: its ports replaced, bound to loopback, its
/// state in `dir`.
async fn start_caddy(
    binary: &Path,
    dir: &TempDir,
    port: u16,
    authz: &str,
    upstream: &str,
) -> Gateway {
    let conf = snippet(
        CADDYFILE,
        (
            &format!("\n:{SNIPPET_PROXY_PORT} {{\n"),
            &format!("\n:{port} {{\n\tbind 127.0.0.1\n"),
        ),
        authz,
        upstream,
    );
    let file = dir.file("Caddyfile");
    std::fs::write(&file, conf).unwrap();
    let mut cmd = Command::new(binary);
    cmd.args(["run", "--adapter", "caddyfile", "--config", p(&file)])
        .env("HOME", &dir.0)
        .env("XDG_DATA_HOME", dir.file("data"))
        .env("XDG_CONFIG_HOME", dir.file("config"));
    spawn_server(cmd, port, START_TIMEOUT, "caddy").await
}

// ---- the tests, each run through both proxies ----

/// A valid DPoP request passes; the upstream receives the target as sent, the verified
/// identity, and neither the token nor the proof (both snippets remove them).
async fn valid_request_passes_with_identity(proxy: Proxy) {
    let Some(s) = Stack::start(proxy).await else {
        return;
    };
    let alice = s.caller("api");
    let (r, _) = s.dpop(&alice, "GET", "/api/items?page=2", None, &[]).await;
    assert_eq!(r.status, 200, "{proxy:?}: {r:?}\n{}", s.authz.output());
    let seen = s.upstream.last_request().expect("the upstream was called");
    assert_eq!(seen.path, "/api/items?page=2", "{proxy:?}");
    assert_eq!(seen.header("x-dpop-subject"), Some("user-1"), "{proxy:?}");
    assert_eq!(
        seen.header("x-dpop-client-id"),
        Some("client-1"),
        "{proxy:?}"
    );
    assert_eq!(seen.header("x-dpop-jkt"), Some(alice.jkt()), "{proxy:?}");
    assert_eq!(seen.header("x-dpop-scopes"), Some("api"), "{proxy:?}");
    assert_eq!(seen.header("authorization"), None, "{proxy:?}");
    assert_eq!(seen.header("dpop"), None, "{proxy:?}");
    assert_eq!(s.upstream.request_count(), 1, "{proxy:?}");
}

/// A route that requires nonces: the first request gets 401 `use_dpop_nonce` with a
/// `DPoP-Nonce` through the proxy, the retry with it passes.
async fn nonce_round_trip(proxy: Proxy) {
    let Some(s) = Stack::start(proxy).await else {
        return;
    };
    let alice = s.caller("api");
    let (first, _) = s.dpop(&alice, "GET", "/fresh/x", None, &[]).await;
    assert_eq!(first.status, 401, "{proxy:?}: {first:?}");
    assert!(
        www(&first).starts_with("DPoP ") && www(&first).contains(r#"error="use_dpop_nonce""#),
        "{proxy:?}: {first:?}"
    );
    let nonce = first
        .header("dpop-nonce")
        .unwrap_or_else(|| panic!("{proxy:?}: no DPoP-Nonce on the challenge: {first:?}"))
        .to_owned();
    assert_eq!(s.upstream.request_count(), 0, "{proxy:?}");
    let (second, _) = s.dpop(&alice, "GET", "/fresh/x", Some(&nonce), &[]).await;
    assert_eq!(second.status, 200, "{proxy:?}: {second:?}");
    assert_eq!(s.upstream.request_count(), 1, "{proxy:?}");
    assert_eq!(
        s.upstream.last_request().unwrap().header("x-dpop-jkt"),
        Some(alice.jkt())
    );
}

/// A replayed proof, a stolen token with another key, a Bearer downgrade, a proof for
/// another URL, a token without the route's scope and a client-forged identity: each
/// refused with 401/403 and never at the upstream.
async fn attacks_are_refused_before_the_upstream(proxy: Proxy) {
    let Some(s) = Stack::start(proxy).await else {
        return;
    };
    let alice = s.caller("api");

    // Replay: the same proof twice.
    let (ok, proof_sent) = s.dpop(&alice, "GET", "/api/items", None, &[]).await;
    assert_eq!(ok.status, 200, "{proxy:?}: {ok:?}");
    let before = s.upstream.request_count();
    // A stolen token, presented with a proof by the thief's key.
    let thief = PrivateKey::generate(Algorithm::Es256).unwrap();
    let url = format!("{}/api/items", s.url);
    let stolen = proof(&thief, "GET", &url, None, Some(&alice.token));
    // A proof signed for another URL.
    let other = alice.proof("GET", &format!("{}/api/other", s.url), None);
    // (what, the proof sent with alice's token, what the challenge names)
    for (what, dpop, error) in [
        ("replayed proof", &proof_sent, Some("invalid_dpop_proof")),
        ("stolen token, other key", &stolen, None),
        ("proof for another URL", &other, None),
    ] {
        let r = s
            .send_with("GET", "/api/items", &alice.authorization(), dpop, &[])
            .await;
        s.assert_refused(what, &r, before);
        assert_eq!(r.status, 401, "{proxy:?} {what}");
        if let Some(error) = error {
            assert!(www(&r).contains(error), "{what}: {r:?}");
        }
    }

    // Bearer downgrade: the DPoP-bound token as a Bearer token, no proof.
    let r = send(
        "GET",
        &url,
        &[("authorization", &format!("Bearer {}", alice.token))],
        b"",
    )
    .await;
    s.assert_refused("bearer downgrade", &r, before);
    assert_eq!(r.status, 401, "{proxy:?}");

    // A token without the route's scope.
    let (r, _) = s.dpop(&alice, "GET", "/admin/users", None, &[]).await;
    s.assert_refused("missing scope", &r, before);
    assert_eq!(r.status, 403, "{proxy:?}");
    assert!(www(&r).contains("insufficient_scope"), "{proxy:?}: {r:?}");

    // An identity header sent by the client.
    let (r, _) = s
        .dpop(
            &alice,
            "GET",
            "/api/items",
            None,
            &[("x-dpop-subject", "admin")],
        )
        .await;
    s.assert_refused("forged identity header", &r, before);
    assert_eq!(r.status, 403, "{proxy:?}");
}

/// The client names another target in the forward-auth header the proxy does not set
/// itself (nginx sets X-Original-URI, Caddy X-Forwarded-Uri): with a proof for the
/// named target, which its token may reach, the real one (which it may not) is still
/// what is judged.
async fn a_client_cannot_name_another_target(proxy: Proxy) {
    let Some(s) = Stack::start(proxy).await else {
        return;
    };
    let alice = s.caller("api");
    let decoy = format!("{}/api/items", s.url);
    for (uri, method) in [
        ("x-forwarded-uri", "x-forwarded-method"),
        ("x-original-uri", "x-original-method"),
    ] {
        let decoy_proof = alice.proof("GET", &decoy, None);
        let r = s
            .send_with(
                "GET",
                "/admin/users",
                &alice.authorization(),
                &decoy_proof,
                &[(uri, "/api/items"), (method, "GET")],
            )
            .await;
        s.assert_refused(&format!("{uri} from the client"), &r, 0);
    }
}

/// Targets that a lenient server would read as another path are refused: the
/// authorizer judges the raw target the proxy reports, and the proxy never forwards it.
async fn hostile_targets_are_refused(proxy: Proxy) {
    let Some(s) = Stack::start(proxy).await else {
        return;
    };
    let alice = s.caller("api admin");
    let addr = s.proxy.addr();
    for target in [
        "/api/../admin/users",
        "/api/%2e%2e/admin/users",
        "/api/%2E%2E/admin/users",
        "//admin/users",
        "/api//items",
        "/api/x;y",
        "/api/items%2F..%2F..%2Fadmin",
        "/api/%61dmin",
    ] {
        // A proof for the URL as sent (as dpop-core normalises it), or, where that is not
        // a URL, for the path a normalising server would route it to: either way a
        // request that gets past every check but the target's form.
        let url = format!("{}{target}", s.url);
        let dpop = match dpop_core::ProofBuilder::new("GET", &url) {
            Ok(_) => alice.proof("GET", &url, None),
            Err(_) => alice.proof("GET", &format!("{}/admin/users", s.url), None),
        };
        let auth = alice.authorization();
        let r = raw_exchange(
            addr,
            b"GET",
            target.as_bytes(),
            &[("authorization", &auth), ("dpop", &dpop)],
        )
        .await;
        assert!(
            matches!(r.status, 401 | 403),
            "{proxy:?} {target}: {}\n{}",
            r.text,
            s.authz.output()
        );
        assert_eq!(
            s.upstream.request_count(),
            0,
            "{proxy:?} {target} reached the upstream: {:?}",
            s.upstream.last_request()
        );
    }
    // The same caller on a canonical target passes: the refusals were the targets'.
    let (r, _) = s.dpop(&alice, "GET", "/admin/users", None, &[]).await;
    assert_eq!(r.status, 200, "{proxy:?}: {r:?}");
}

/// Identity header spellings with "_": nginx drops them (underscores_in_headers off),
/// so the request passes without them; Caddy passes them on, so the authorizer, which
/// sees them in the check, refuses the request.
async fn underscore_identity_spellings(proxy: Proxy) {
    let Some(s) = Stack::start(proxy).await else {
        return;
    };
    let alice = s.caller("api");
    let (r, _) = s
        .dpop(
            &alice,
            "GET",
            "/api/items",
            None,
            &[("x_dpop_subject", "admin")],
        )
        .await;
    match proxy {
        Proxy::Nginx => {
            assert_eq!(r.status, 200, "{r:?}");
            let seen = s.upstream.last_request().unwrap();
            assert_eq!(seen.header("x_dpop_subject"), None, "{seen:?}");
            assert_eq!(seen.header("x-dpop-subject"), Some("user-1"));
        }
        Proxy::Caddy => s.assert_refused("x_dpop_subject", &r, 0),
    }
}

/// A dead authorizer is a refusal, never a pass: nginx answers 500, Caddy 502.
async fn a_dead_authorizer_is_a_refusal(proxy: Proxy) {
    let Some(mut s) = Stack::start(proxy).await else {
        return;
    };
    let alice = s.caller("api");
    s.authz.kill().unwrap();
    let (r, _) = s.dpop(&alice, "GET", "/api/items", None, &[]).await;
    let expected = match proxy {
        Proxy::Nginx => 500,
        Proxy::Caddy => 502,
    };
    assert_eq!(r.status, expected, "{proxy:?}: {r:?}");
    assert_eq!(s.upstream.request_count(), 0, "{proxy:?}");
}

macro_rules! through_both {
    ($($name:ident),* $(,)?) => {
        mod nginx {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(super::Proxy::Nginx).await;
                }
            )*
        }
        mod caddy {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(super::Proxy::Caddy).await;
                }
            )*
        }
    };
}

through_both!(
    valid_request_passes_with_identity,
    nonce_round_trip,
    attacks_are_refused_before_the_upstream,
    a_client_cannot_name_another_target,
    hostile_targets_are_refused,
    underscore_identity_spellings,
    a_dead_authorizer_is_a_refusal,
);

/// A proof used through nginx is refused when replayed through Caddy: two proxies, two
/// authorizer instances, one Redis replay store, one public URL. Needs Redis
/// (`DPOP_TEST_REDIS_URL` or a private `redis-server`) and both proxies.
#[tokio::test]
async fn a_replay_through_another_proxy_and_authorizer_is_refused() {
    let Some((redis_url, _redis)) = redis().await else {
        return;
    };
    if Proxy::Nginx.binary().is_none() || Proxy::Caddy.binary().is_none() {
        return;
    }
    let issuer = MockIssuer::start().await.unwrap();
    let options = || Options {
        issuer: Some(&issuer),
        public_url: Some("http://api.test"),
        replay_store: Some(&redis_url),
    };
    let first = Stack::start_with(Proxy::Nginx, options()).await.unwrap();
    let second = Stack::start_with(Proxy::Caddy, options()).await.unwrap();
    let alice = Caller::new(&issuer, "api");

    let (ok, used) = first.dpop(&alice, "GET", "/api/items", None, &[]).await;
    assert_eq!(ok.status, 200, "{ok:?}\n{}", first.authz.output());
    assert_eq!(first.upstream.request_count(), 1);

    let replay = second
        .send_with("GET", "/api/items", &alice.authorization(), &used, &[])
        .await;
    second.assert_refused("replay through another proxy", &replay, 0);
    assert_eq!(replay.status, 401);
    assert!(www(&replay).contains("invalid_dpop_proof"), "{replay:?}");

    // The second stack itself works: a fresh proof passes.
    let (ok, _) = second.dpop(&alice, "GET", "/api/items", None, &[]).await;
    assert_eq!(ok.status, 200, "{ok:?}");
    assert_eq!(second.upstream.request_count(), 1);
}
