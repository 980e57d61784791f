//! The load generator's servers and its `run --dpop` against the echo upstream, and the
//! `Gateway` process handle of dpop-test, exercised on this binary.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use dpop_core::{Htu, MemoryReplayStore, PrivateKey, ProofRequest, Verifier, VerifierConfig};
use dpop_test::{
    Gateway, TestUpstream, decode_compact, free_port, http_get, now, verifies_es256, wait_for_tcp,
};
use serde_json::Value;

const AUD: &str = "https://api.example.com";

async fn get_json(url: &str) -> Value {
    let r = http_get(url).await.unwrap();
    assert_eq!(r.status, 200, "{url}: {}", r.text());
    assert_eq!(r.header("content-type"), Some("application/json"));
    r.json().unwrap()
}

const LOADGEN: &str = env!("CARGO_BIN_EXE_dpop-loadgen");

#[tokio::test]
async fn gateway_handle_waits_terminates_and_reports_early_exit() {
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let listen = addr.to_string();
    let mut process = Gateway::spawn(LOADGEN, ["upstream", "--listen", &listen], addr)
        .await
        .unwrap();
    assert_eq!(process.url(), format!("http://{addr}"));
    assert_eq!(http_get(&process.url()).await.unwrap().text(), "ok");
    assert!(process.output().contains("listening on"));
    assert!(process.try_wait().unwrap().is_none());
    let status = process.terminate(Duration::from_secs(5)).await.unwrap();
    assert!(!status.success(), "killed by SIGTERM: {status}");
    assert!(
        wait_for_tcp(addr, Duration::from_millis(100))
            .await
            .is_err()
    );

    // A process that exits at startup is reported with its output.
    let e = Gateway::spawn(LOADGEN, ["upstream", "--listen", "not-an-address"], addr)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("exited"), "{e}");
    assert!(e.to_string().contains("invalid"), "{e}");
}

/// The load generator against the echo upstream with `--dpop`: every proof it sent is
/// valid for the URL and token, and none repeats (the replay store would refuse it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loadgen_sends_fresh_valid_proofs() {
    let upstream = TestUpstream::builder()
        .capacity(100_000)
        .start()
        .await
        .unwrap();
    let dir = std::env::temp_dir().join(format!("dpop-test-loadgen-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (token_path, key_path) = (dir.join("token"), dir.join("key.pem"));
    let issuer_addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let issuer = Gateway::spawn(
        LOADGEN,
        [
            "issuer".as_ref(),
            "--listen".as_ref(),
            issuer_addr.to_string().as_ref(),
            "--aud".as_ref(),
            AUD.as_ref(),
            "--token-out".as_ref(),
            token_path.as_os_str(),
            "--key-out".as_ref(),
            key_path.as_os_str(),
        ],
        issuer_addr,
    )
    .await
    .unwrap();
    // The files are written right after the issuer binds.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !token_path.exists() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    use std::os::unix::fs::PermissionsExt as _;
    assert_eq!(
        std::fs::metadata(&key_path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let token = std::fs::read_to_string(&token_path).unwrap();
    let key =
        PrivateKey::from_pkcs8_pem(&std::fs::read_to_string(&key_path).unwrap(), None).unwrap();
    let (_, claims, _, _) = decode_compact(&token);
    assert_eq!(claims["cnf"]["jkt"], key.thumbprint().as_str());
    assert_eq!(claims["aud"], AUD);
    assert_eq!(
        claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap(),
        3600
    );
    let jwks = get_json(&format!("http://{issuer_addr}/jwks")).await;
    assert!(verifies_es256(&token, &jwks));

    let url = format!("{}/resource?q=1", upstream.url());
    let output = tokio::process::Command::new(LOADGEN)
        .args([
            "run",
            "--url",
            &url,
            "--connections",
            "2",
            "--duration",
            "0.5",
        ])
        .args([
            "--warmup",
            "0",
            "--max-proofs",
            "1500",
            "--dpop",
            "--label",
            "t",
        ])
        .arg("--key")
        .arg(&key_path)
        .arg("--token")
        .arg(&token_path)
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let line: Value = serde_json::from_slice(&output.stdout).unwrap();
    let keys: Vec<&str> = line
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    for k in [
        "label", "requests", "seconds", "rps", "p50_ms", "p99_ms", "max_ms", "non_2xx", "errors",
    ] {
        assert!(keys.contains(&k), "{k} missing in {line}");
    }
    assert_eq!(line["label"], "t");
    assert_eq!(
        (line["errors"].as_u64(), line["non_2xx"].as_u64()),
        (Some(0), Some(0))
    );
    let requests = line["requests"].as_u64().unwrap();
    assert!(requests > 0 && requests <= 1500);
    if line["proofs_exhausted"] == true {
        assert!(stderr.contains("ran out"), "{stderr}");
    }

    let verifier = Verifier::new(
        VerifierConfig::builder()
            .with_default_algorithms()
            .without_nonces(),
    )
    .unwrap();
    let store = MemoryReplayStore::with_capacity(10_000);
    let htu = Htu::parse(&url).unwrap();
    let now = now();
    let recorded = upstream.requests();
    assert!(recorded.len() as u64 >= requests);
    for r in &recorded {
        assert_eq!(r.path, "/resource?q=1");
        assert_eq!(
            r.header("authorization"),
            Some(format!("DPoP {}", token.trim()).as_str())
        );
        let proof = r.header("dpop").unwrap();
        let request =
            ProofRequest::new("GET", &htu).with_access_token(token.trim(), key.thumbprint());
        verifier
            .verify([proof.as_bytes()], &request, now)
            .unwrap()
            .record(&store)
            .expect("every proof is fresh");
    }
    drop(issuer);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Runs `dpop-loadgen run` with `args` for a short timed phase; returns its JSON line
/// and stderr, or stderr when it failed.
async fn run_loadgen(args: &[&str]) -> Result<(Value, String), String> {
    let output = tokio::process::Command::new(LOADGEN)
        .args([
            "run",
            "--connections",
            "2",
            "--duration",
            "0.5",
            "--warmup",
            "0.2",
        ])
        .args(args)
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    if !output.status.success() {
        return Err(stderr);
    }
    Ok((serde_json::from_slice(&output.stdout).unwrap(), stderr))
}

/// `certs` writes a CA and a server certificate that `upstream --tls-cert` serves and
/// `run --ca-file` trusts, over HTTP/1.1 and HTTP/2 (ALPN), with no errors; with
/// `--cpu-pid` the upstream's CPU per request is reported (summed over several processes
/// when repeated). A client trusting another CA,
/// or none, gets nowhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_over_tls_against_the_https_upstream() {
    let dir = std::env::temp_dir().join(format!("dpop-test-loadgen-certs-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let status = tokio::process::Command::new(LOADGEN)
        .arg("certs")
        .arg("--out")
        .arg(&dir)
        .status()
        .await
        .unwrap();
    assert!(status.success());
    use std::os::unix::fs::PermissionsExt as _;
    let mode = |name: &str| {
        std::fs::metadata(dir.join(name))
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode("server.key"), 0o600);
    for name in ["ca.pem", "server.pem"] {
        assert!(
            std::fs::read_to_string(dir.join(name))
                .unwrap()
                .starts_with("-----BEGIN CERTIFICATE-----")
        );
    }
    assert!(
        std::fs::read_to_string(dir.join("server.key"))
            .unwrap()
            .contains("PRIVATE KEY")
    );

    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let (cert, key) = (dir.join("server.pem"), dir.join("server.key"));
    let upstream = Gateway::spawn(
        LOADGEN,
        [
            "upstream".as_ref(),
            "--listen".as_ref(),
            addr.to_string().as_ref(),
            "--tls-cert".as_ref(),
            cert.as_os_str(),
            "--tls-key".as_ref(),
            key.as_os_str(),
        ],
        addr,
    )
    .await
    .unwrap();
    assert!(
        upstream.output().contains("https://"),
        "{}",
        upstream.output()
    );
    let pid = upstream.id().to_string();
    let ca = dir.join("ca.pem");
    let ca = ca.to_str().unwrap();

    for (host, http2) in [
        ("127.0.0.1", false),
        ("localhost", true),
        ("127.0.0.1", true),
    ] {
        let url = format!("https://{host}:{}/bench", addr.port());
        let mut args = vec!["--url", &url, "--ca-file", ca, "--cpu-pid", &pid];
        if http2 {
            args.push("--http2");
        }
        let (line, stderr) = run_loadgen(&args)
            .await
            .unwrap_or_else(|e| panic!("{url}: {e}"));
        assert!(line["requests"].as_u64().unwrap() > 0, "{line}");
        assert_eq!(line["errors"], 0, "{line} {stderr}");
        assert_eq!(line["non_2xx"], 0, "{line}");
        assert_eq!(line["reconnects"], 0, "{line}");
        assert_eq!(line["tls"], true);
        assert_eq!(line["http"], if http2 { "2" } else { "1.1" });
        assert_eq!(line["cpu_pid"].as_u64().unwrap().to_string(), pid);
        assert!(
            line["cpu_us_per_request"].as_f64().unwrap() >= 0.0,
            "{line}"
        );
        // The server waits for each request on loopback, so it gives up its CPU.
        let switches = &line["switches_per_request"];
        assert!(switches["voluntary"].as_f64().unwrap() > 0.0, "{line}");
        assert!(switches["involuntary"].as_f64().unwrap() >= 0.0, "{line}");
        assert!(
            stderr.contains("involuntary and ") && stderr.contains(" voluntary context switches"),
            "{stderr}"
        );
        assert!(
            line["generator_cpu_us_per_request"].as_f64().unwrap() > 0.0,
            "{line}"
        );
        assert!(stderr.contains("CPU per request"), "{stderr}");
    }

    // --cpu-pid is repeatable: the figure is the sum over the processes, listed in the
    // JSON line in the order given; a pid given twice, or one of them gone, is refused
    // before the run.
    let mut idle = std::process::Command::new("sleep")
        .arg("60")
        .spawn()
        .unwrap();
    let idle_pid = idle.id().to_string();
    let url = format!("https://127.0.0.1:{}/bench", addr.port());
    let (line, stderr) = run_loadgen(&[
        "--url",
        &url,
        "--ca-file",
        ca,
        "--cpu-pid",
        &pid,
        "--cpu-pid",
        &idle_pid,
    ])
    .await
    .unwrap();
    assert_eq!(line["errors"], 0, "{line} {stderr}");
    let listed: Vec<String> = line["cpu_pid"]
        .as_array()
        .unwrap_or_else(|| panic!("{line}"))
        .iter()
        .map(|p| p.as_u64().unwrap().to_string())
        .collect();
    assert_eq!(listed, [pid.clone(), idle_pid.clone()]);
    // Each process's own share, in the same order, adds up to the figure (to rounding);
    // the idle one spent nothing.
    let each: Vec<f64> = line["cpu_us_per_request_each"]
        .as_array()
        .unwrap_or_else(|| panic!("{line}"))
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    assert_eq!(each.len(), 2, "{line}");
    assert_eq!(each[1], 0.0, "{line}");
    assert!(
        (each.iter().sum::<f64>() - line["cpu_us_per_request"].as_f64().unwrap()).abs() < 0.01,
        "{line}"
    );
    assert!(
        line["switches_per_request"]["voluntary"].as_f64().unwrap() > 0.0,
        "the two processes' threads together: {line}"
    );
    assert!(
        line["cpu_us_per_request"].as_f64().unwrap() >= 0.0,
        "{line}"
    );
    assert!(
        stderr.contains(&format!("in processes {pid}, {idle_pid} together")),
        "{stderr}"
    );
    let e = run_loadgen(&[
        "--url",
        &url,
        "--ca-file",
        ca,
        "--cpu-pid",
        &pid,
        "--cpu-pid",
        &pid,
    ])
    .await
    .unwrap_err();
    assert!(e.contains("given twice"), "{e}");
    idle.kill().unwrap();
    idle.wait().unwrap();
    let e = run_loadgen(&[
        "--url",
        &url,
        "--ca-file",
        ca,
        "--cpu-pid",
        &pid,
        "--cpu-pid",
        &idle_pid,
    ])
    .await
    .unwrap_err();
    assert!(e.contains(&format!("/proc/{idle_pid}/stat")), "{e}");

    // Another CA's certificate is not trusted; neither is anything without --ca-file.
    let other = dpop_test::TestCa::new("other");
    let url = format!("https://127.0.0.1:{}/bench", addr.port());
    let e = run_loadgen(&[
        "--url",
        &url,
        "--ca-file",
        other.ca_file().to_str().unwrap(),
    ])
    .await
    .unwrap_err();
    assert!(e.contains("certificate"), "{e}");
    let e = run_loadgen(&["--url", &url]).await.unwrap_err();
    assert!(e.contains("--ca-file"), "{e}");
    // A pid that does not exist fails before the run.
    let e = run_loadgen(&["--url", &url, "--ca-file", ca, "--cpu-pid", "999999999"])
        .await
        .unwrap_err();
    assert!(e.contains("/proc/999999999/stat"), "{e}");
    drop(upstream);
    let _ = std::fs::remove_dir_all(&dir);
}

/// `run --http2` on an http:// URL speaks HTTP/2 with prior knowledge: a server that
/// only speaks HTTP/2 answers every request; the HTTP/1.1-only upstream answers none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_http2_prior_knowledge() {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(|r: hyper::Request<_>| async move {
                    assert_eq!(r.version(), hyper::Version::HTTP_2);
                    Ok::<_, std::convert::Infallible>(hyper::Response::new(
                        http_body_util::Full::new(hyper::body::Bytes::from_static(b"ok")),
                    ))
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    let url = format!("http://{addr}/bench");
    let (line, stderr) = run_loadgen(&["--url", &url, "--http2"]).await.unwrap();
    assert!(line["requests"].as_u64().unwrap() > 0, "{line}");
    assert_eq!(
        (line["errors"].as_u64(), line["non_2xx"].as_u64()),
        (Some(0), Some(0)),
        "{stderr}"
    );
    assert_eq!(
        (line["http"].as_str(), line["tls"].as_bool()),
        (Some("2"), Some(false))
    );
    assert_eq!(line["cpu_us_per_request"], Value::Null);
    assert_eq!(line["switches_per_request"], Value::Null);
    assert_eq!(line["cpu_us_per_request_each"], Value::Null);
    server.abort();

    let upstream = TestUpstream::builder().start().await.unwrap();
    let url = format!("{}/bench", upstream.url());
    assert!(run_loadgen(&["--url", &url, "--http2"]).await.is_err());
}
