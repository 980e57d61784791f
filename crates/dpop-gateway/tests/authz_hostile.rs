//! Hostile checks of `dpop authz`: requests the authorizer could judge differently from
//! what the proxy in front forwards, connections that hold its slots, and secrets in
//! `Debug` output. Each test starts its own authorizer.

mod common;

use common::authz::{
    AuthzHarness, ForwardAuth, GRPC, HTTP_AND_ADMIN, Reported, as_bytes, check, client, merged,
};
use common::{AUD, Caller};
use dpop_test::{HttpResponse, MockIssuer};
use envoy_types::pb::envoy::service::auth::v3::CheckResponse;
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse as CheckHttp;

use common::authz::HOST;

/// Headers that make common frameworks run another method or route another path than
/// the one judged; `dpop gateway` never lets them reach its upstream.
const OVERRIDES: [(&str, &str); 5] = [
    ("x-http-method-override", "DELETE"),
    ("x-method-override", "DELETE"),
    ("x-http-method", "DELETE"),
    ("x-original-url", "/admin/users"),
    ("x-rewrite-url", "/admin/users"),
];

/// An authorizer in this process with HTTP and gRPC listeners, trusting forward-auth
/// checks from loopback; stopped when dropped.
struct Running(AuthzHarness);

impl Running {
    /// With `host_rule` (`public_url = ...` or `allowed_hosts = [...]`) and `rest`.
    async fn start(issuer: &MockIssuer, host_rule: &str, rest: &str) -> Self {
        let text = format!(
            "{HTTP_AND_ADMIN}\n{GRPC}\nissuer = \"{}\"\naudience = \"{AUD}\"\n{host_rule}\n\
             trusted_proxies = [\"127.0.0.1\"]\n{rest}",
            issuer.url()
        );
        Self(AuthzHarness::start(&text).await)
    }

    /// The gRPC listener's address.
    fn grpc_addr(&self) -> std::net::SocketAddr {
        self.0.grpc.expect("no gRPC listener")
    }

    /// A forward-auth check (Traefik's / Caddy's headers) of `method uri` on
    /// `scheme://host`, with the client's `extra` headers.
    async fn forward_auth(
        &self,
        method: &str,
        scheme: &str,
        host: &str,
        uri: &str,
        extra: &[(&str, String)],
    ) -> HttpResponse {
        let mut headers = ForwardAuth::Forwarded.headers(method, uri, scheme, host);
        headers.extend(extra.iter().cloned());
        self.0.send("GET", b"/", &as_bytes(&headers)).await
    }

    /// An Envoy gRPC check of `method path` on `scheme://host` with `headers`.
    async fn grpc(
        &self,
        method: &str,
        scheme: &str,
        host: &str,
        path: &str,
        headers: &[(&str, String)],
    ) -> CheckResponse {
        let mut reported = Reported::new(method, path);
        reported.scheme = scheme.to_owned();
        reported.host = host.to_owned();
        for (name, value) in headers {
            reported = reported.header(name, value);
        }
        check(&mut client(&self.0).await, merged(&reported)).await
    }
}

fn credentials(caller: &Caller, method: &str, htu: &str) -> Vec<(&'static str, String)> {
    caller.headers(method, htu).to_vec()
}

fn grpc_allowed(r: &CheckResponse) -> bool {
    r.status.as_ref().is_none_or(|s| s.code == 0)
}

fn headers_to_remove(r: &CheckResponse) -> Vec<String> {
    match &r.http_response {
        Some(CheckHttp::OkResponse(ok)) => ok.headers_to_remove.clone(),
        _ => Vec::new(),
    }
}

// ---- Method and URL override headers never reach the upstream ---------------------------

/// Sanity: the same request without override headers is allowed, so the tests below
/// fail only on the override header.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn baseline_forward_auth_and_grpc_allow_a_valid_request() {
    let issuer = MockIssuer::start().await.unwrap();
    let authz = Running::start(&issuer, &format!("public_url = \"https://{HOST}\""), "").await;
    let caller = Caller::new(&issuer);
    let htu = format!("https://{HOST}/items");
    let r = authz
        .forward_auth(
            "GET",
            "https",
            HOST,
            "/items",
            &credentials(&caller, "GET", &htu),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    let r = authz
        .grpc(
            "GET",
            "https",
            HOST,
            "/items",
            &credentials(&caller, "GET", &htu),
        )
        .await;
    assert!(grpc_allowed(&r), "{r:?}");
}

/// Forward-auth proxies (nginx, Traefik, Caddy) pass every client header to the API and
/// cannot remove one on the authorizer's say: a request judged as `GET /items` that
/// carries `X-HTTP-Method-Override: DELETE` (or `X-Original-URL: /admin/users`) is run
/// by Rack/Symfony/Laravel/IIS as a DELETE (or on another path). The gateway removes
/// these headers; the authorizer must refuse them, as it refuses forged identity headers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forward_auth_refuses_method_and_url_override_headers() {
    let issuer = MockIssuer::start().await.unwrap();
    let authz = Running::start(&issuer, &format!("public_url = \"https://{HOST}\""), "").await;
    let caller = Caller::new(&issuer);
    let htu = format!("https://{HOST}/items");
    for (name, value) in OVERRIDES {
        let mut headers = credentials(&caller, "GET", &htu);
        headers.push((name, value.to_owned()));
        let r = authz
            .forward_auth("GET", "https", HOST, "/items", &headers)
            .await;
        assert_eq!(
            r.status, 403,
            "{name}: a judged GET passed with {name}: {value}: {r:?}"
        );
    }
}

/// Envoy (gRPC) can remove headers upstream: a client-sent override header must be in
/// `headers_to_remove`, as the gateway removes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_removes_method_and_url_override_headers() {
    let issuer = MockIssuer::start().await.unwrap();
    let authz = Running::start(&issuer, &format!("public_url = \"https://{HOST}\""), "").await;
    let caller = Caller::new(&issuer);
    let htu = format!("https://{HOST}/items");
    for (name, value) in OVERRIDES {
        let mut headers = credentials(&caller, "GET", &htu);
        headers.push((name, value.to_owned()));
        let r = authz.grpc("GET", "https", HOST, "/items", &headers).await;
        let removed = headers_to_remove(&r);
        assert!(
            !grpc_allowed(&r) || removed.iter().any(|n| n == name),
            "{name} reaches the upstream of an allowed GET: {r:?}"
        );
    }
}

// ---- Even one public_url is matched against the reported host and scheme -----------------

/// The proxy forwards the client's `Host` (nginx: `proxy_set_header Host $http_host`,
/// Caddy and Traefik: as sent), and may serve other virtual hosts: with a single
/// `public_url` as with several (or `allowed_hosts`), a proof for
/// `https://api.example.com/items` does not pass for a request the proxy forwards with
/// `Host: internal.example.com`, nor for one it reports as plain `http`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_public_url_refuses_another_reported_host() {
    let issuer = MockIssuer::start().await.unwrap();
    let authz = Running::start(&issuer, &format!("public_url = \"https://{HOST}\""), "").await;
    let caller = Caller::new(&issuer);
    let htu = format!("https://{HOST}/items");
    let r = authz
        .forward_auth(
            "GET",
            "https",
            "internal.example.com",
            "/items",
            &credentials(&caller, "GET", &htu),
        )
        .await;
    assert_ne!(
        r.status, 200,
        "another host was allowed (forward-auth): {r:?}"
    );
    let r = authz
        .grpc(
            "GET",
            "https",
            "internal.example.com",
            "/items",
            &credentials(&caller, "GET", &htu),
        )
        .await;
    assert!(!grpc_allowed(&r), "another host was allowed (gRPC): {r:?}");
    // The scheme too: the client reached the proxy over http, the proof says https.
    let r = authz
        .forward_auth(
            "GET",
            "http",
            HOST,
            "/items",
            &credentials(&caller, "GET", &htu),
        )
        .await;
    assert_ne!(r.status, 200, "another scheme was allowed: {r:?}");
}

/// With two public URLs the host is checked: adding a second name changes whether the
/// first one's host is enforced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_public_urls_refuse_another_reported_host() {
    let issuer = MockIssuer::start().await.unwrap();
    let authz = Running::start(
        &issuer,
        &format!("public_url = [\"https://{HOST}\", \"https://api.example.net\"]"),
        "",
    )
    .await;
    let caller = Caller::new(&issuer);
    let htu = format!("https://{HOST}/items");
    let r = authz
        .forward_auth(
            "GET",
            "https",
            "internal.example.com",
            "/items",
            &credentials(&caller, "GET", &htu),
        )
        .await;
    // host_not_allowed is a 400, a 401 in forward-auth.
    assert_eq!(r.status, 401, "{r:?}");
    let r = authz
        .forward_auth(
            "GET",
            "https",
            HOST,
            "/items",
            &credentials(&caller, "GET", &htu),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
}

// ---- No secrets in Debug output ------------------------------------------------------------

/// The validated authorizer configuration never prints the introspection client secret
/// or the Redis password in its `Debug` output.
#[test]
fn authz_config_debug_hides_secrets() {
    let text = format!(
        "{HTTP_AND_ADMIN}\nissuer = \"https://as.example.com\"\naudience = \"{AUD}\"\n\
         public_url = \"https://{HOST}\"\nreplay_store = \"redis://:redis-pass-4711@127.0.0.1:6379/\"\n\
         [introspection]\nendpoint = \"https://as.example.com/introspect\"\n\
         client_id = \"authz\"\nclient_secret = \"intro-secret-0815\"\n"
    );
    let config = dpop_gateway::GatewaySettings::from_toml(&text)
        .unwrap()
        .validate_authz()
        .unwrap();
    let debug = format!("{config:?}");
    assert!(!debug.contains("intro-secret-0815"), "{debug}");
    assert!(!debug.contains("redis-pass-4711"), "{debug}");
}

// ---- Silent TCP connections do not hold the gRPC listener's slots -------------------------

/// A peer that opens TCP connections to the gRPC listener and never sends the HTTP/2
/// preface must not hold `max_connections` slots for good (HTTP/2 pings start only after
/// the handshake): such connections are closed after the first-check timeout, and
/// Envoy's next connection is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_listener_frees_slots_of_silent_connections() {
    let issuer = MockIssuer::start().await.unwrap();
    let authz = Running::start(
        &issuer,
        &format!("public_url = \"https://{HOST}\""),
        "[limits]\nmax_connections = 2\nrequest_timeout_secs = 2\n",
    )
    .await;
    let mut silent = Vec::new();
    for _ in 0..2 {
        silent.push(
            tokio::net::TcpStream::connect(authz.grpc_addr())
                .await
                .unwrap(),
        );
    }
    let caller = Caller::new(&issuer);
    let htu = format!("https://{HOST}/items");
    // Well past any handshake timeout a listener should have, well below "forever".
    let answered = tokio::time::timeout(
        std::time::Duration::from_secs(60),
        authz.grpc(
            "GET",
            "https",
            HOST,
            "/items",
            &credentials(&caller, "GET", &htu),
        ),
    )
    .await;
    drop(silent);
    let r = answered.expect("a check waited 60 s behind two silent connections");
    assert!(grpc_allowed(&r), "{r:?}");
}
