//! One JWS signing input signed with a software ES256 key and with an ES256 key inside
//! a SoftHSM token (through the PKCS#11 backend: session pool, SHA-256 here, `CKM_ECDSA`
//! in the token).
//!
//! The device row needs `DPOP_TEST_SOFTHSM_MODULE` (`/usr/lib/softhsm/libsofthsm2.so`)
//! and `softhsm2-util`; without them it is skipped with a message. SoftHSM reads
//! `SOFTHSM2_CONF` once, so the bench makes a throwaway token directory and runs itself
//! again with `SOFTHSM2_CONF` naming it.
#![allow(
    missing_docs,
    reason = "criterion_group! makes an undocumented function"
)]

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::process::Command;

use criterion::{Criterion, criterion_group};
use dpop_core::{Algorithm, PrivateKey, Signer};
use dpop_keys::{KeyRef, OpenOptions};

/// A JWS signing input of a typical proof's size.
const INPUT: &[u8] = b"eyJ0eXAiOiJkcG9wK2p3dCIsImFsZyI6IkVTMjU2IiwiandrIjp7Imt0eSI6IkVDIiwiY3J2IjoiUC0yNTYiLCJ4IjoiZjgzT0o3RDJ0aHNkT3l5WFJ5c1BkYk5DcVA4cHBmYW92d0l3QWFIQUNoVSIsInkiOiJ4X0ZFelJ1OW0zNkhMTl90dWU2NTlMTnBYVzZwQ3lTdGlrWWpLSVdJNWEwIn19.eyJqdGkiOiJlMWozVl9iS2ljOC1MQUVCIiwiaHRtIjoiR0VUIiwiaHR1IjoiaHR0cHM6Ly9yZXNvdXJjZS5leGFtcGxlLm9yZy9wcm90ZWN0ZWRyZXNvdXJjZSIsImlhdCI6MTU2MjI2MjYxOH0";

/// Set in the re-run: the throwaway token directory.
const FIXTURE: &str = "DPOP_BENCH_SOFTHSM_FIXTURE";
const PIN: &str = "bench-pin-1234";

fn software(c: &mut Criterion) {
    let key = PrivateKey::generate(Algorithm::Es256).unwrap();
    c.bench_function("sign ES256/software", |b| {
        b.iter(|| key.sign(std::hint::black_box(INPUT)).unwrap());
    });
}

fn softhsm(c: &mut Criterion) {
    let (Some(module), Some(dir)) = (
        std::env::var_os("DPOP_TEST_SOFTHSM_MODULE"),
        std::env::var_os(FIXTURE),
    ) else {
        return;
    };
    let (module, dir) = (PathBuf::from(module), PathBuf::from(dir));
    let text = format!(
        "pkcs11:token=bench;object=bench-es256?module-path={}&pin-source=file:{}",
        module.display(),
        dir.join("pin").display()
    );
    let Ok(KeyRef::Device(key)) = KeyRef::parse(&text) else {
        panic!("{text} is not a device key");
    };
    let signer = dpop_keys::generate(&key, Algorithm::Es256, &OpenOptions::default()).unwrap();
    c.bench_function("sign ES256/softhsm", |b| {
        b.iter(|| signer.sign(std::hint::black_box(INPUT)).unwrap());
    });
}

criterion_group!(benches, software, softhsm);

/// A fresh token directory with one initialised token, for the re-run.
fn fixture(module: &Path) -> Option<PathBuf> {
    if !module.exists() {
        eprintln!(
            "skipped the SoftHSM row: {} does not exist",
            module.display()
        );
        return None;
    }
    let dir = std::env::temp_dir().join(format!("dpop-keys-bench-{}", std::process::id()));
    fs::DirBuilder::new()
        .mode(0o700)
        .recursive(true)
        .create(dir.join("tokens"))
        .ok()?;
    let conf = dir.join("softhsm2.conf");
    fs::write(
        &conf,
        format!(
            "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
            dir.join("tokens").display()
        ),
    )
    .ok()?;
    let mut pin = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(dir.join("pin"))
        .ok()?;
    writeln!(pin, "{PIN}").ok()?;
    let made = Command::new("softhsm2-util")
        .env("SOFTHSM2_CONF", &conf)
        .args(["--init-token", "--free", "--label", "bench"])
        .args(["--so-pin", "bench-so-pin-5678", "--pin", PIN])
        .output();
    match made {
        Ok(out) if out.status.success() => Some(dir),
        _ => {
            eprintln!("skipped the SoftHSM row: softhsm2-util could not make a token");
            let _ = fs::remove_dir_all(&dir);
            None
        }
    }
}

fn main() {
    if std::env::var_os(FIXTURE).is_none() {
        match std::env::var_os("DPOP_TEST_SOFTHSM_MODULE") {
            None => eprintln!(
                "skipped the SoftHSM row: set DPOP_TEST_SOFTHSM_MODULE to /usr/lib/softhsm/libsofthsm2.so"
            ),
            Some(module) => {
                if let Some(dir) = fixture(Path::new(&module)) {
                    let status = Command::new(std::env::current_exe().unwrap())
                        .args(std::env::args_os().skip(1))
                        .env("SOFTHSM2_CONF", dir.join("softhsm2.conf"))
                        .env(FIXTURE, &dir)
                        .status();
                    let _ = fs::remove_dir_all(&dir);
                    std::process::exit(match status {
                        Ok(s) if s.success() => 0,
                        _ => 1,
                    });
                }
            }
        }
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
