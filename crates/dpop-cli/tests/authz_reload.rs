//! Reloading `dpop authz`'s configuration while it serves, asked directly over
//! forward-auth (as nginx, Traefik and Caddy ask): SIGHUP applies a new configuration
//! (a route's policy, the identity header names) to the checks that start afterwards, and
//! a bad configuration (syntax, a gateway-only setting, a setting that takes a restart) is
//! refused with its cause logged while the last good one keeps answering; a check in
//! flight during a reload finishes on the configuration it started with.

use std::process::Command;
use std::time::Duration;

use dpop_core::{Algorithm, PrivateKey};
use dpop_test::{Gateway, HttpResponse, MockIssuer, TokenSpec, free_port};
use tokio::net::{TcpListener, TcpStream};

use crate::common::{
    AUD, DPOP, TempDir, config_generation, hangup, logged, metric, send, spawn_server,
};
use crate::gateway::Caller;

/// The URL clients use: what the proxy reports as scheme and host, and what proofs name.
const PUBLIC: &str = "http://api.test";

/// The authorizer's configuration: listening on `port`, admin on `admin`, `/open` with
/// `dpop = open`, then `extra`.
fn config(port: u16, admin: u16, issuer: &str, open: &str, extra: &str) -> String {
    format!(
        r#"listen = "127.0.0.1:{port}"
admin_listen = "127.0.0.1:{admin}"
issuer = "{issuer}"
audience = "{AUD}"
public_url = "{PUBLIC}"
trusted_proxies = ["127.0.0.1"]
{extra}
[[routes]]
path_prefix = "/open"
dpop = "{open}"
"#
    )
}

/// A forward-auth check of `GET path` as a proxy on loopback asks it, with the client's
/// `headers`.
async fn check(port: u16, path: &str, headers: &[(&str, &str)]) -> HttpResponse {
    let mut all = vec![
        ("x-forwarded-method", "GET"),
        ("x-forwarded-proto", "http"),
        ("x-forwarded-host", "api.test"),
        ("x-forwarded-uri", path),
    ];
    all.extend_from_slice(headers);
    send("GET", &format!("http://127.0.0.1:{port}/"), &all, b"").await
}

/// A check of `GET path` with `caller`'s token and a fresh proof.
async fn check_dpop(port: u16, caller: &Caller, path: &str) -> HttpResponse {
    let proof = caller.proof("GET", &format!("{PUBLIC}{path}"), None);
    let authorization = caller.authorization();
    check(
        port,
        path,
        &[("authorization", &authorization), ("dpop", &proof)],
    )
    .await
}

/// `dpop authz --config FILE`, answering on `port`.
async fn start_authz(file: &std::path::Path, port: u16) -> Gateway {
    let mut cmd = Command::new(DPOP);
    cmd.args(["authz", "--config"])
        .arg(file)
        .env_remove("DPOP_NONCE_SECRET")
        .env_remove("RUST_LOG");
    spawn_server(cmd, port, Duration::from_secs(30), "dpop authz").await
}

/// SIGHUP reloads the route table and the identity header names for new checks (the
/// issuer's keys stay loaded); bad configurations are refused, logged with their cause
/// and counted, and the one in force keeps answering.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_authorizer_and_refuses_bad_configurations() {
    let issuer = MockIssuer::start().await.unwrap();
    let (port, admin_port) = (free_port(), free_port());
    let admin = format!("http://127.0.0.1:{admin_port}");
    let dir = TempDir::new("authz-reload");
    let file = dir.file("authz.toml");
    let write = |text: &str| std::fs::write(&file, text).unwrap();
    let good = |open: &str, extra: &str| config(port, admin_port, issuer.url(), open, extra);
    write(&good("required", ""));
    let authz = start_authz(&file, port).await;
    assert_eq!(config_generation(&admin).await, 1);
    assert_eq!(metric(&admin, "dpop_config_generation").await, 1.0);

    // Before: /open needs DPoP; a DPoP caller passes with the default identity header.
    let r = check(port, "/open/x", &[]).await;
    assert_eq!(r.status, 401, "{r:?}");
    let caller = Caller::new(&issuer, "read");
    let r = check_dpop(port, &caller, "/api/x").await;
    assert_eq!(r.status, 200, "{r:?}\n{}", authz.output());
    assert_eq!(r.header("x-dpop-subject"), Some("user-1"), "{r:?}");
    assert_eq!(r.header("x-user"), None, "{r:?}");

    // The route turns off and the subject goes in another header.
    let reloaded = good("off", "\n[forward]\nsubject_header = \"x-user\"\n");
    write(&reloaded);
    hangup(authz.id());
    let line = logged(&authz, "configuration reloaded", 1).await;
    assert!(
        line.contains("generation=2") && line.contains("SIGHUP") && line.contains("dpop::authz"),
        "{line}"
    );
    assert_eq!(config_generation(&admin).await, 2);
    assert_eq!(metric(&admin, "dpop_config_generation").await, 2.0);
    assert!(metric(&admin, "dpop_config_last_reload_success_timestamp_seconds").await > 1.0e9);
    let r = check(port, "/open/x", &[]).await;
    assert_eq!(r.status, 200, "{r:?}");
    let r = check_dpop(port, &caller, "/api/x").await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("x-user"), Some("user-1"), "{r:?}");
    assert_eq!(r.header("x-dpop-subject"), None, "{r:?}");

    // Refused: a syntax error, a setting only the gateway has, a new listen address.
    // Each is logged with its cause and counted; generation 2 stays in force.
    let other_port = free_port();
    let refused: [(String, String); 3] = [
        (
            format!("{}\nthis is not toml\n", good("required", "")),
            format!("{} line", file.display()),
        ),
        (
            good("required", "upstream = \"http://127.0.0.1:3000\"\n"),
            "upstream".to_owned(),
        ),
        (
            good("required", "").replace(
                &format!("listen = \"127.0.0.1:{port}\""),
                &format!("listen = \"127.0.0.1:{other_port}\""),
            ),
            "listen changed: it takes a restart".to_owned(),
        ),
    ];
    for (n, (text, cause)) in refused.iter().enumerate() {
        write(text);
        hangup(authz.id());
        let line = logged(&authz, "configuration not reloaded", n + 1).await;
        assert!(
            line.contains(cause.as_str()) && line.contains("ERROR"),
            "{cause}: {line}"
        );
        assert_eq!(config_generation(&admin).await, 2, "{cause}");
        let failures = metric(&admin, "dpop_config_reload_failures_total").await;
        assert_eq!(failures, (n + 1) as f64, "{cause}");
        // The configuration in force still answers: /open stays off, x-user stays.
        let r = check(port, "/open/x", &[]).await;
        assert_eq!(r.status, 200, "{cause}: {r:?}");
        let r = check_dpop(port, &caller, "/api/x").await;
        assert_eq!(r.header("x-user"), Some("user-1"), "{cause}: {r:?}");
    }
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", other_port)).is_err(),
        "nothing listens on the refused address"
    );
    assert_eq!(metric(&admin, "dpop_config_generation").await, 2.0);
    // SIGHUP is a reload, never the "ignored" warning of a server that does not reload.
    assert!(
        !authz.output().contains("SIGHUP ignored"),
        "{}",
        authz.output()
    );
}

/// A TCP relay to `target` that holds every connection for `delay` before relaying it: a
/// slow introspection endpoint in front of the issuer's. Runs until the test ends.
async fn slow_relay(target: std::net::SocketAddr, delay: Duration) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                if let Ok(mut outbound) = TcpStream::connect(target).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    });
    port
}

/// A check that started before a reload finishes with the configuration it started with
/// (the identity header name as it was), while checks after the reload get the new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_check_in_flight_finishes_on_the_configuration_it_started_with() {
    let issuer = MockIssuer::start().await.unwrap();
    // Introspection through a relay that takes 2 s: the first check of a token is slow.
    let relay = slow_relay(issuer.addr(), Duration::from_secs(2)).await;
    let introspection = format!(
        "\n[introspection]\nendpoint = \"http://127.0.0.1:{relay}/introspect\"\nclient_id = \"{}\"\nclient_secret = \"{}\"\n",
        issuer.introspection_client_id(),
        issuer.introspection_client_secret()
    );
    let (port, admin_port) = (free_port(), free_port());
    let admin = format!("http://127.0.0.1:{admin_port}");
    let dir = TempDir::new("authz-reload-in-flight");
    let file = dir.file("authz.toml");
    let good = |extra: &str| {
        config(
            port,
            admin_port,
            issuer.url(),
            "required",
            &format!("{extra}{introspection}"),
        )
    };
    std::fs::write(&file, good("")).unwrap();
    let authz = start_authz(&file, port).await;

    let key = PrivateKey::generate(Algorithm::Es256).unwrap();
    let token = "opaque-in-flight-0123456789".to_owned();
    issuer.register_opaque(
        &token,
        &TokenSpec {
            scope: Some("read".into()),
            ..TokenSpec::bound(AUD, key.thumbprint().as_str())
        },
    );
    let caller = Caller { key, token };
    let proof = caller.proof("GET", &format!("{PUBLIC}/api/slow"), None);
    let authorization = caller.authorization();
    let started = std::time::Instant::now();
    let in_flight = tokio::spawn(async move {
        check(
            port,
            "/api/slow",
            &[("authorization", &authorization), ("dpop", &proof)],
        )
        .await
    });
    tokio::time::sleep(Duration::from_millis(500)).await;

    std::fs::write(&file, good("\n[forward]\nsubject_header = \"x-user\"\n")).unwrap();
    hangup(authz.id());
    logged(&authz, "configuration reloaded", 1).await;
    assert_eq!(config_generation(&admin).await, 2);

    let r = in_flight.await.unwrap();
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "the check was not slow: it did not span the reload"
    );
    assert_eq!(r.status, 200, "{r:?}\n{}", authz.output());
    assert_eq!(r.header("x-dpop-subject"), Some("user-1"), "{r:?}");
    assert_eq!(r.header("x-user"), None, "{r:?}");
    // A check after the reload gets the new name.
    let r = check_dpop(port, &caller, "/api/after").await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("x-user"), Some("user-1"), "{r:?}");
    assert_eq!(r.header("x-dpop-subject"), None, "{r:?}");
}
