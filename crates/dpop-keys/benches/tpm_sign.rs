//! Signing one DPoP proof's JWS signing input with a TPM key (swtpm, ES256: SHA-256 in
//! software, TPM2_Sign in the TPM, the signature checked against the public key) next
//! to a software ES256 key. Needs `DPOP_TEST_SWTPM` (the swtpm binary); without it the
//! bench says so and measures only the software key.
//!
//! `DPOP_TEST_SWTPM=$(command -v swtpm) cargo bench -p dpop-keys --features tpm --bench tpm_sign`
#![allow(
    missing_docs,
    clippy::print_stdout,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]

use std::hint::black_box;
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group};
use dpop_core::{Algorithm, PrivateKey, Signer};
use dpop_keys::{KeyRef, OpenOptions};

/// A typical JWS signing input: an ES256 proof's header and claims, base64url.
const INPUT: &str = "eyJ0eXAiOiJkcG9wK2p3dCIsImFsZyI6IkVTMjU2IiwiandrIjp7Imt0eSI6IkVDIiwiY3J2IjoiUC0yNTYiLCJ4IjoiZjgzT0ozRDJ4RjFCZzh2dWI5dExlMWdITXpWNzZlOFR1czl1UEh2UlZFVSIsInkiOiJ4X0ZFelJ1OW0zNkhMTl90dWU2NTlMTnBYVzZwQ3lTdGlrWWpLSVdJNWEwIn19.eyJqdGkiOiJlMWozVl9iS2ljOC1MQUVCIiwiaHRtIjoiR0VUIiwiaHR1IjoiaHR0cHM6Ly9yZXNvdXJjZS5leGFtcGxlLm9yZy9wcm90ZWN0ZWRyZXNvdXJjZSIsImlhdCI6MTU2MjI2MjYxOCwiYXRoIjoiZlVIeU8ycjJaM0RaNTNFc05yV0JiMHhXWG9hTnk1OUlpS0NBcWtzbVFFbyJ9";

/// swtpm on a loopback port pair with its state in a temporary directory.
struct Swtpm {
    child: Child,
    state: std::path::PathBuf,
    port: u16,
}

impl Swtpm {
    fn start(binary: &str) -> Self {
        let state = std::env::temp_dir().join(format!("dpop-tpm-bench-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&state);
        std::fs::create_dir(&state).unwrap();
        let free = |p: u16| TcpListener::bind((Ipv4Addr::LOCALHOST, p)).is_ok();
        let port = (20_000..32_000)
            .step_by(2)
            .find(|&p| free(p) && free(p + 1))
            .expect("a free port pair");
        let child = Command::new(binary)
            .args(["socket", "--tpm2", "--tpmstate"])
            .arg(format!("dir={}", state.display()))
            .arg("--server")
            .arg(format!("type=tcp,port={port},bindaddr=127.0.0.1"))
            .arg("--ctrl")
            .arg(format!("type=tcp,port={},bindaddr=127.0.0.1", port + 1))
            .args(["--flags", "not-need-init,startup-clear"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect((Ipv4Addr::LOCALHOST, port + 1)).is_err() {
            assert!(Instant::now() < deadline, "swtpm did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Self { child, state, port }
    }
}

impl Drop for Swtpm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.state);
    }
}

fn bench_sign(c: &mut Criterion, tpm: Option<&Swtpm>) {
    let mut group = c.benchmark_group("sign_proof_es256");
    let software = PrivateKey::generate(Algorithm::Es256).unwrap();
    group.bench_function("software", |b| {
        b.iter(|| black_box(software.sign(black_box(INPUT.as_bytes())).unwrap()));
    });
    if let Some(tpm) = tpm {
        let text = format!(
            "tpm2:handle=0x81000010?tcti=swtpm:host=127.0.0.1,port={}",
            tpm.port
        );
        let KeyRef::Device(key) = KeyRef::parse(&text).unwrap() else {
            panic!("{text} is not a device key")
        };
        let signer = dpop_keys::generate(&key, Algorithm::Es256, &OpenOptions::default()).unwrap();
        group.bench_function("tpm_swtpm", |b| {
            b.iter(|| black_box(signer.sign(black_box(INPUT.as_bytes())).unwrap()));
        });
    }
    group.finish();
}

fn benches(c: &mut Criterion) {
    let binary = std::env::var("DPOP_TEST_SWTPM")
        .ok()
        .filter(|b| !b.is_empty());
    if binary.is_none() {
        println!("DPOP_TEST_SWTPM is not set: only the software key is measured");
    }
    let tpm = binary.as_deref().map(Swtpm::start);
    bench_sign(c, tpm.as_ref());
}

criterion_group!(group, benches);

fn main() {
    group();
    Criterion::default().configure_from_args().final_summary();
}
