//! Two gateways and one `dpop authz` (its HTTP listener, as nginx's forward-auth calls
//! it) sharing one replay store, on a Redis Cluster and then on a primary found through
//! Sentinel: a proof accepted by one instance is a replay at every other, and a nonce
//! issued by one is accepted by the others (nonces are stateless, so sharing them means
//! sharing the secret). The topologies are started from `redis-server` and `redis-cli`
//! (`DPOP_TEST_REDIS_SERVER` or `PATH`); without them each test says so and passes, unless
//! `DPOP_TEST_REQUIRE_REDIS_TOPOLOGIES` is set (`.ci/run` sets it).

mod common;

use common::authz::{AuthzHarness, ForwardAuth, HOST, as_bytes};
use common::{AUD, Caller, Running, skip_without_redis};
use dpop_test::{
    HttpResponse, MockIssuer, RedisCluster, RedisSentinel, SentinelAuth, TestUpstream, http_request,
};

/// The nonce secret every instance is given (base64url, 40 bytes).
const NONCE_SECRET: &str = "c2hhcmVkIG5vbmNlIHNlY3JldCBvZiBldmVyeSBpbnN0YW5jZSEhIQ";
/// The path clients call; proofs are made for `https://HOST/v1/items`.
const PATH: &str = "/v1/items";
/// The load balancer in front of the gateways and the proxy calling the authorizer are
/// on the loopback address.
const TRUSTED: &str = "trusted_proxies = [\"127.0.0.1\"]\n";

fn htu() -> String {
    format!("https://{HOST}{PATH}")
}

/// What every instance shares: the replay store, the trusted proxy and the nonce secret
/// (nonces required when `require_nonce`), then `tables` (e.g. a `[replay]` table).
fn shared(replay_store: &str, require_nonce: bool, tables: &str) -> String {
    format!(
        "{TRUSTED}replay_store = \"{replay_store}\"\n[nonce]\nrequire = {require_nonce}\n\
         secrets = [\"{NONCE_SECRET}\"]\n{tables}"
    )
}

/// A gateway's configuration for `upstream` and `issuer`, serving `https://HOST` behind
/// a load balancer on the loopback address, with `shared`.
fn gateway_text(upstream: &TestUpstream, issuer: &MockIssuer, shared: &str) -> String {
    format!(
        "listen = \"127.0.0.1:0\"\nupstream = \"{}\"\nissuer = \"{}\"\n\
         audience = \"{AUD}\"\nallowed_hosts = [\"{HOST}\"]\n{shared}",
        upstream.url(),
        issuer.url()
    )
}

/// Two gateways in front of one upstream, both serving `https://HOST` behind a load
/// balancer, and one authorizer for the same host, all on `replay_store`.
struct Instances {
    gateways: [Running; 2],
    authz: AuthzHarness,
    _upstream: TestUpstream,
}

impl Instances {
    async fn start(
        issuer: &MockIssuer,
        replay_store: &str,
        require_nonce: bool,
        tables: &str,
    ) -> Self {
        let upstream = TestUpstream::start().await.unwrap();
        let shared = shared(replay_store, require_nonce, tables);
        let gateway = || {
            let text = gateway_text(&upstream, issuer, &shared);
            async move {
                Running::from_text(&text, None)
                    .await
                    .unwrap_or_else(|e| panic!("gateway did not start: {e}\n{text}"))
            }
        };
        let gateways = [gateway().await, gateway().await];
        let authz = AuthzHarness::http(issuer, &shared).await;
        Self {
            gateways,
            authz,
            _upstream: upstream,
        }
    }

    /// `GET PATH` at gateway `i` as the load balancer forwards it: `Host: HOST`,
    /// `X-Forwarded-Proto: https`, with `caller`'s token and `proof`.
    async fn gateway(&self, i: usize, caller: &Caller, proof: &str) -> HttpResponse {
        let url = self.gateways[i].url(PATH);
        let auth = caller.authorization();
        http_request(
            "GET",
            &url,
            &[
                ("host", HOST),
                ("x-forwarded-proto", "https"),
                ("authorization", &auth),
                ("dpop", proof),
            ],
            b"",
        )
        .await
        .unwrap()
    }

    /// nginx's forward-auth check of `GET PATH` with `caller`'s token and `proof`.
    async fn authz(&self, caller: &Caller, proof: &str) -> HttpResponse {
        let mut headers = ForwardAuth::Nginx.headers("GET", PATH, "https", HOST);
        headers.push(("host", self.authz.http_addr().to_string()));
        headers.push(("authorization", caller.authorization()));
        headers.push(("dpop", proof.to_owned()));
        self.authz.send("GET", b"/", &as_bytes(&headers)).await
    }
}

fn assert_replay(r: &HttpResponse, at: &str) {
    assert_eq!(r.status, 401, "{at}: {r:?}");
    let challenge = r.header("www-authenticate").unwrap_or_default();
    assert!(
        challenge.contains("invalid_dpop_proof") && challenge.contains("already used"),
        "{at}: {r:?}"
    );
}

/// Proofs accepted by one instance are replays at the other two, whichever accepts
/// first; several proofs, so that on a cluster they fall on several primaries.
async fn assert_replays_shared(issuer: &MockIssuer, replay_store: &str, tables: &str) {
    let instances = Instances::start(issuer, replay_store, false, tables).await;
    let caller = Caller::new(issuer);
    for round in 0..6 {
        let proof = caller.proof("GET", &htu());
        // First at gateway 0, gateway 1 or the authorizer in turn.
        let first = round % 3;
        let r = match first {
            0 | 1 => instances.gateway(first, &caller, &proof).await,
            _ => instances.authz(&caller, &proof).await,
        };
        assert_eq!(
            r.status, 200,
            "{replay_store}, accepted first by {first}: {r:?}"
        );
        for other in (0..3).filter(|o| *o != first) {
            let r = match other {
                0 | 1 => instances.gateway(other, &caller, &proof).await,
                _ => instances.authz(&caller, &proof).await,
            };
            assert_replay(&r, &format!("{replay_store}, {other} after {first}"));
        }
    }
}

/// With nonces required: a nonce issued by gateway 0 is accepted by gateway 1 and by the
/// authorizer (each with a fresh proof), and a nonce the instances never issued is not.
async fn assert_nonces_shared(issuer: &MockIssuer, replay_store: &str) {
    let instances = Instances::start(issuer, replay_store, true, "").await;
    let caller = Caller::new(issuer);
    let r = instances
        .gateway(0, &caller, &caller.proof("GET", &htu()))
        .await;
    assert_eq!(r.status, 401, "{r:?}");
    assert!(
        r.header("www-authenticate")
            .is_some_and(|c| c.contains("use_dpop_nonce")),
        "{r:?}"
    );
    let nonce = r.header("dpop-nonce").expect("a nonce").to_owned();
    let proof = caller.proof_with_nonce("GET", &htu(), Some(&nonce));
    let r = instances.gateway(1, &caller, &proof).await;
    assert_eq!(r.status, 200, "gateway 1 with gateway 0's nonce: {r:?}");
    // The same proof is still a replay elsewhere, nonce or not.
    assert_replay(&instances.authz(&caller, &proof).await, "authz");
    assert_replay(&instances.gateway(0, &caller, &proof).await, "gateway 0");
    let proof = caller.proof_with_nonce("GET", &htu(), Some(&nonce));
    let r = instances.authz(&caller, &proof).await;
    assert_eq!(r.status, 200, "authz with gateway 0's nonce: {r:?}");
    // A nonce made up by the client is refused with a fresh challenge.
    let forged = caller.proof_with_nonce("GET", &htu(), Some("made-up-nonce"));
    let r = instances.gateway(1, &caller, &forged).await;
    assert_eq!(r.status, 401, "{r:?}");
    assert!(
        r.header("www-authenticate")
            .is_some_and(|c| c.contains("use_dpop_nonce")),
        "{r:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateways_and_authz_on_a_redis_cluster_share_replays_and_nonces() {
    let Some(cluster) = RedisCluster::spawn().await.unwrap() else {
        return skip_without_redis();
    };
    let issuer = MockIssuer::start().await.unwrap();
    assert_replays_shared(&issuer, &cluster.url(), "").await;
    assert_nonces_shared(&issuer, &cluster.url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateways_and_authz_on_redis_sentinel_share_replays_and_nonces() {
    let Some(set) = RedisSentinel::spawn("dpopgateways").await.unwrap() else {
        return skip_without_redis();
    };
    let issuer = MockIssuer::start().await.unwrap();
    assert_replays_shared(&issuer, &set.url(), "").await;
    assert_nonces_shared(&issuer, &set.url()).await;
}

/// A file holding `password`, readable by its owner only, in a directory of its own.
fn password_file(name: &str, password: &str) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = std::env::temp_dir().join(format!("dpop-gw-sentinel-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    let path = dir.join("password");
    std::fs::write(&path, format!("{password}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

/// Sentinels that ask for an ACL user's login: the gateways and the authorizer log in with
/// `[replay] redis_sentinel_username` and the password from
/// `redis_sentinel_password_file` and share replays; a wrong password, or none, stops a
/// gateway's start with an error naming the sentinel, never the password.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateways_and_authz_log_in_to_sentinels_that_ask_for_a_password() {
    let auth = SentinelAuth {
        username: Some("dpop-gw".to_owned()),
        password: "gw-sentinel-pass-3e1".to_owned(),
    };
    let Some(set) = RedisSentinel::spawn_with_auth("dpopgwauth", auth)
        .await
        .unwrap()
    else {
        return skip_without_redis();
    };
    let issuer = MockIssuer::start().await.unwrap();
    let login = |file: &std::path::Path| {
        format!(
            "[replay]\nredis_sentinel_username = \"dpop-gw\"\nredis_sentinel_password_file = {:?}\n",
            file.display().to_string()
        )
    };
    let right = password_file("right", "gw-sentinel-pass-3e1");
    assert_replays_shared(&issuer, &set.url(), &login(&right)).await;

    let upstream = TestUpstream::start().await.unwrap();
    let wrong = password_file("wrong", "not-the-pass-8c0");
    for tables in [login(&wrong), String::new()] {
        let text = gateway_text(&upstream, &issuer, &shared(&set.url(), false, &tables));
        let Err(err) = Running::from_text(&text, None).await else {
            panic!("a gateway started with a login the sentinel refuses");
        };
        let err = err.to_string();
        assert!(
            err.contains(&format!("sentinel {}:", set.sentinel_addr())),
            "{err}"
        );
        assert!(
            !err.contains("not-the-pass") && !err.contains("gw-sentinel-pass"),
            "{err}"
        );
        eprintln!("refused as expected: {err}");
    }
    for file in [right, wrong] {
        let _ = std::fs::remove_dir_all(file.parent().unwrap());
    }
}
