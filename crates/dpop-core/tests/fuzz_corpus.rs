//! Replays the committed fuzz seed corpus on stable Rust.
//!
//! Every file under `fuzz/corpus/<target>/` is fed to the `dpop_core::internal::fuzzing`
//! harness that the cargo-fuzz target of the same name calls, so a seed (or a crash input
//! copied into the corpus after a fix) is also a plain regression test that runs with
//! `cargo test`. The corpus lives inside the repository; nothing outside it is read.

use std::fs;
use std::panic;
use std::path::{Path, PathBuf};

use dpop_core::internal::fuzzing;

/// The corpus folder of one cargo-fuzz target.
fn corpus_dir(target: &str) -> PathBuf {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../../fuzz/corpus")).join(target)
}

/// The regular files of `dir`, sorted by name so failures are reported in a stable order.
fn corpus_files(dir: &Path) -> Vec<PathBuf> {
    let entries = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot read fuzz corpus {}: {e}", dir.display()));
    let mut files: Vec<PathBuf> = entries
        .map(|entry| {
            entry
                .unwrap_or_else(|e| panic!("cannot list fuzz corpus {}: {e}", dir.display()))
                .path()
        })
        .filter(|path| path.is_file())
        .collect();
    files.sort();
    files
}

/// Runs every corpus file of `target` through `harness`; fails, naming every input that
/// panicked, if any did, and fails if the corpus is empty.
#[allow(
    clippy::disallowed_methods,
    reason = "the test reads the corpus files; the library itself still does no file I/O"
)]
fn replay(target: &str, harness: fn(&[u8])) {
    let dir = corpus_dir(target);
    let files = corpus_files(&dir);
    assert!(
        !files.is_empty(),
        "fuzz corpus {} has no inputs",
        dir.display()
    );
    let mut panicked = Vec::new();
    for path in &files {
        let data = fs::read(path)
            .unwrap_or_else(|e| panic!("cannot read corpus input {}: {e}", path.display()));
        // Keep going after a panic so one run reports every failing input; the panic
        // message itself is printed by the default hook.
        if panic::catch_unwind(|| harness(&data)).is_err() {
            panicked.push(path.display().to_string());
        }
    }
    assert!(
        panicked.is_empty(),
        "{} of {} `{target}` corpus inputs panicked:\n  {}",
        panicked.len(),
        files.len(),
        panicked.join("\n  ")
    );
}

#[test]
fn verify_proof_corpus() {
    replay("verify_proof", fuzzing::verify_proof);
}

#[test]
fn parse_jwk_corpus() {
    replay("parse_jwk", fuzzing::parse_jwk);
}

#[test]
fn normalise_htu_corpus() {
    replay("normalise_htu", fuzzing::normalise_htu);
}

#[test]
fn canonical_target_corpus() {
    replay("canonical_target", fuzzing::canonical_target);
}

#[test]
fn parse_challenge_corpus() {
    replay("parse_challenge", fuzzing::parse_challenge);
}

#[test]
fn verify_jwt_corpus() {
    replay("verify_jwt", fuzzing::verify_jwt);
}

/// The valid seed must verify, so fuzzing starts from inputs that reach the claim checks.
#[test]
#[allow(
    clippy::disallowed_methods,
    reason = "the test reads a corpus file; the library itself does no file I/O"
)]
fn verify_jwt_seed_reaches_the_claims() {
    let text = fs::read_to_string(corpus_dir("verify_jwt").join("valid-at-jwt-with-jwks.txt"))
        .expect("the valid seed");
    let (jwks, token) = text.split_once('\n').expect("jwks, newline, token");
    let keys = dpop_core::jwt::JwkSet::from_json(jwks).expect("seed JWK set");
    let v = dpop_core::dangerous::accept_missing_aud(dpop_core::jwt::JwtValidation::new(
        "http://127.0.0.1:18081",
        None,
    ));
    let jwt = dpop_core::jwt::verify_jwt(
        token,
        &keys,
        &v,
        dpop_core::UnixTime::from_secs(1_795_566_300),
    )
    .expect("the seed verifies at the harness's time");
    assert_eq!(jwt.str_claim("sub"), Some("svc"));
    assert!(jwt.jkt().unwrap().is_some());
}
