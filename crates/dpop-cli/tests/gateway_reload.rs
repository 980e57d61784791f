//! Reloading `dpop gateway`'s configuration while it serves: SIGHUP applies a new
//! configuration to new requests while a request in flight and an open keep-alive
//! connection carry on, and a bad configuration (syntax, an unreadable secrets file, a
//! setting that takes a restart) is refused with its cause logged while the last good one
//! keeps serving.

use std::net::SocketAddr;
use std::time::Duration;

use dpop_test::{Gateway, MockIssuer, TestUpstream, free_port};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use super::Caller;
use crate::common::{
    AUD, TempDir, config_generation as generation, gateway_command, logged, metric, send,
    send_dpop, spawn_server,
};

/// A gateway configuration: listening on `port`, admin on `admin`, forwarding to
/// `upstream`, then `extra`.
fn config(port: u16, admin: u16, upstream: &str, issuer: &str, extra: &str) -> String {
    format!(
        "listen = \"127.0.0.1:{port}\"\nadmin_listen = \"127.0.0.1:{admin}\"\nupstream = \"{upstream}\"\nissuer = \"{issuer}\"\naudience = \"{AUD}\"\nallowed_hosts = [\"127.0.0.1:{port}\"]\n\n[limits]\nworkers = 2\n{extra}"
    )
}

/// Sends SIGHUP to the gateway.
fn hup(gw: &Gateway) {
    crate::common::hangup(gw.id());
}

/// One request on an open HTTP/1.1 connection; the status and the body.
async fn exchange(stream: &mut TcpStream, head: &str) -> (u16, String) {
    stream
        .write_all(format!("{head}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut chunk))
            .await
            .expect("a response in time")
            .unwrap();
        assert!(
            n > 0,
            "connection closed: {}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf).into_owned();
        let Some(end) = text.find("\r\n\r\n") else {
            continue;
        };
        let length: usize = text[..end]
            .lines()
            .find_map(|l| {
                let (name, value) = l.split_once(':')?;
                name.eq_ignore_ascii_case("content-length")
                    .then(|| value.trim().parse().unwrap())
            })
            .unwrap_or_else(|| panic!("no Content-Length: {text}"));
        if buf.len() >= end + 4 + length {
            let status = text[9..12].parse().unwrap();
            return (status, text[end + 4..].to_owned());
        }
    }
}

/// SIGHUP reloads routes and upstreams for new requests; an open keep-alive connection and
/// a request in flight carry on; a proof seen before is still a replay after; bad
/// configurations are refused, logged with their cause and counted, and the one in force
/// keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_configuration_and_refuses_bad_ones() {
    let issuer = MockIssuer::start().await.unwrap();
    let (old_upstream, new_upstream) = (
        TestUpstream::start().await.unwrap(),
        TestUpstream::start().await.unwrap(),
    );
    let (port, admin_port) = (free_port(), free_port());
    let admin = format!("http://127.0.0.1:{admin_port}");
    let base = format!("http://127.0.0.1:{port}");
    let dir = TempDir::new("gateway-reload");
    let file = dir.file("gateway.toml");
    let write = |text: &str| std::fs::write(&file, text).unwrap();
    let good =
        |upstream: &str, extra: &str| config(port, admin_port, upstream, issuer.url(), extra);
    // Nonces on /n, from the process's own secret (none configured).
    let nonce_route =
        "\n[[routes]]\npath_prefix = \"/n\"\nnonce = true\n\n[[routes]]\npath_prefix = \"/\"\n";
    write(&good(&old_upstream.url(), nonce_route));
    let mut cmd = gateway_command();
    cmd.arg("--config").arg(&file);
    let gw = spawn_server(cmd, port, Duration::from_secs(30), "dpop gateway").await;
    assert_eq!(generation(&admin).await, 1);
    assert_eq!(metric(&admin, "dpop_config_generation").await, 1.0);

    let caller = Caller::new(&issuer, "read");
    let head = |path: &str| -> (String, String) {
        let proof = caller.proof("GET", &format!("{base}{path}"), None);
        let head = format!(
            "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: {}\r\nDPoP: {proof}",
            caller.authorization()
        );
        (head, proof)
    };
    // A keep-alive connection, used before the reload.
    let mut kept = TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], port)))
        .await
        .unwrap();
    let (first, first_proof) = head("/v1/before");
    assert_eq!(exchange(&mut kept, &first).await.0, 200);
    assert_eq!(old_upstream.last_request().unwrap().path, "/v1/before");
    // The public route does not exist yet: DPoP is required.
    let r = send("GET", &format!("{base}/public/x"), &[], b"").await;
    assert_eq!(r.status, 401);
    // A nonce handed out before the reload.
    let nonced = format!("{base}/n/x");
    let proof = caller.proof("GET", &nonced, None);
    let r = send_dpop("GET", &nonced, &caller.authorization(), &proof, &[], b"").await;
    assert_eq!(r.status, 401, "{r:?}");
    let nonce = r.header("dpop-nonce").expect("a nonce").to_owned();
    // A request in flight across the reload.
    let slow = {
        let (url, htu) = (format!("{base}/v1/slow?ms=2500"), format!("{base}/v1/slow"));
        let (auth, proof) = (caller.authorization(), caller.proof("GET", &htu, None));
        tokio::spawn(async move { send_dpop("GET", &url, &auth, &proof, &[], b"").await })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;

    // A new default upstream and a new route without DPoP.
    write(&good(
        &new_upstream.url(),
        &format!("\n[[routes]]\npath_prefix = \"/public\"\ndpop = \"off\"\n{nonce_route}"),
    ));
    hup(&gw);
    let line = logged(&gw, "configuration reloaded", 1).await;
    assert!(
        line.contains("generation=2") && line.contains("SIGHUP"),
        "{line}"
    );
    assert_eq!(generation(&admin).await, 2);
    assert_eq!(metric(&admin, "dpop_config_generation").await, 2.0);
    assert!(metric(&admin, "dpop_config_last_reload_success_timestamp_seconds").await > 1.0e9);

    // The request in flight completes, where it started.
    let r = slow.await.unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    assert!(
        old_upstream
            .requests()
            .iter()
            .any(|r| r.path == "/v1/slow?ms=2500")
    );
    // The open connection still serves, now with the new configuration.
    let (second, _) = head("/v1/after");
    assert_eq!(exchange(&mut kept, &second).await.0, 200);
    assert_eq!(new_upstream.last_request().unwrap().path, "/v1/after");
    // The new route answers.
    let r = send("GET", &format!("{base}/public/x"), &[], b"").await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(new_upstream.last_request().unwrap().path, "/public/x");
    // A proof used before the reload is still a replay after it.
    let r = send_dpop(
        "GET",
        &format!("{base}/v1/before"),
        &caller.authorization(),
        &first_proof,
        &[],
        b"",
    )
    .await;
    assert_eq!(r.status, 401, "{r:?}");
    assert!(
        r.header("www-authenticate")
            .is_some_and(|w| w.contains("already used")),
        "{r:?}"
    );

    // The nonce from before the reload is still good.
    let proof = caller.proof("GET", &nonced, Some(&nonce));
    let r = send_dpop("GET", &nonced, &caller.authorization(), &proof, &[], b"").await;
    assert_eq!(r.status, 200, "{r:?}");

    // Refused configurations: a syntax error, an unreadable secrets file, a new listen
    // address. Each is logged with its cause and counted; generation 2 stays in force.
    let missing = dir.file("no-such-secrets");
    let other_port = free_port();
    let refused: [(String, String); 3] = [
        (
            format!("{}\nthis is not toml\n", good(&old_upstream.url(), "")),
            format!("{} line", file.display()),
        ),
        (
            good(
                &old_upstream.url(),
                &format!("\n[nonce]\nsecrets_file = \"{}\"\n", missing.display()),
            ),
            missing.display().to_string(),
        ),
        (
            good(&old_upstream.url(), "").replace(
                &format!("listen = \"127.0.0.1:{port}\""),
                &format!("listen = \"127.0.0.1:{other_port}\""),
            ),
            "listen changed: it takes a restart".to_owned(),
        ),
    ];
    for (n, (text, cause)) in refused.iter().enumerate() {
        write(text);
        hup(&gw);
        let line = logged(&gw, "configuration not reloaded", n + 1).await;
        assert!(
            line.contains(cause.as_str()) && line.contains("ERROR"),
            "{cause}: {line}"
        );
        assert_eq!(generation(&admin).await, 2, "{cause}");
        let failures = metric(&admin, "dpop_config_reload_failures_total").await;
        assert_eq!(failures, (n + 1) as f64, "{cause}");
        // The configuration in force still serves.
        let r = send("GET", &format!("{base}/public/x"), &[], b"").await;
        assert_eq!(r.status, 200, "{cause}: {r:?}");
    }
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", other_port)).is_err(),
        "nothing listens on the refused address"
    );
    assert_eq!(metric(&admin, "dpop_config_generation").await, 2.0);
}

/// `reload_on_change = true`: a change to the file's content reloads it without a signal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_on_change_applies_an_edited_file() {
    let issuer = MockIssuer::start().await.unwrap();
    let upstream = TestUpstream::start().await.unwrap();
    let (port, admin_port) = (free_port(), free_port());
    let admin = format!("http://127.0.0.1:{admin_port}");
    let dir = TempDir::new("gateway-reload-watch");
    let file = dir.file("gateway.toml");
    let text = config(port, admin_port, &upstream.url(), issuer.url(), "")
        .replace("[limits]", "reload_on_change = true\n\n[limits]");
    std::fs::write(&file, &text).unwrap();
    let mut cmd = gateway_command();
    cmd.arg("--config").arg(&file);
    cmd.env("RUST_LOG", "info,dpop::gateway=debug");
    let gw = spawn_server(cmd, port, Duration::from_secs(30), "dpop gateway").await;
    let r = send("GET", &format!("http://127.0.0.1:{port}/open"), &[], b"").await;
    assert_eq!(r.status, 401);
    // Written in two pieces, the first not a valid configuration on its own (a route
    // without its policy): the half is never loaded, so never reported as bad.
    let whole = format!(
        "{text}\n[[routes]]\npath_prefix = \"/open\"\ndangerous_forward_encoded_slashes = true\ndpop = \"off\"\n"
    );
    let (half, _) = whole.split_at(whole.len() - 12);
    std::fs::write(&file, half).unwrap();
    // A check saw the half; the rest follows well within one check interval (2 s).
    logged(&gw, "the configuration file changed", 1).await;
    std::fs::write(&file, &whole).unwrap();
    let line = logged(&gw, "configuration reloaded", 1).await;
    // A setting that weakens a check, turned on by an edit, is called out.
    let warned = logged(&gw, "a reload turned on a dangerous setting", 1).await;
    assert!(
        warned.contains("WARN") && warned.contains("dangerous_forward_encoded_slashes"),
        "{warned}"
    );
    assert!(
        !gw.output().contains("configuration not reloaded"),
        "a half-written file was loaded:\n{}",
        gw.output()
    );
    assert!(line.contains("configuration file changed"), "{line}");
    assert_eq!(generation(&admin).await, 2);
    let r = send("GET", &format!("http://127.0.0.1:{port}/open"), &[], b"").await;
    assert_eq!(r.status, 200, "{r:?}");
}
