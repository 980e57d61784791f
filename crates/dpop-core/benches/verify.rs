//! Proof verification cost against the bare signature verification it is built on.
//!
//! For ES256, EdDSA, RS256 and ML-DSA-44: criterion measures (a) our full verification of a proof
//! (every RFC 9449 §4.3 check except replay), and (b) `aws-lc-rs` verifying the same
//! signature over the same message with the same key, parsing the key from bytes as a
//! caller without us would. Afterwards an interleaved run prints the ratios, including
//! verification plus the replay record, on distinct proofs. Targets: ES256 ≤ 1.10x,
//! EdDSA ≤ 1.15x, RS256 ≤ 1.25x, ML-DSA-44 ≤ 1.15x. Signing a proof (ES256 beside
//! ML-DSA-44) is measured too.
#![allow(
    clippy::disallowed_methods, // benches measure wall-clock time
    missing_docs,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout
)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use aws_lc_rs::signature::{self as sig, RsaPublicKeyComponents, UnparsedPublicKey};
use base64::Engine as _;
use criterion::{Criterion, criterion_group};
use dpop_core::{
    Algorithm, Htu, MemoryReplayConfig, MemoryReplayStore, PrivateKey, ProofBuilder, ProofRequest,
    PublicJwk, SystemRandomSource, UnixTime, Verifier, VerifierConfig,
};

const NOW: u64 = 1_700_000_000;
const TOKEN: &str = "Kz~8mXK1EalYznwH-LC-1fBAo.4Ljp~zsPE_NeO.gxU";
const URL: &str = "https://resource.example.org/protectedresource";

struct Case {
    alg: Algorithm,
    key: PrivateKey,
    proofs: Vec<String>,
}

impl Case {
    fn new(alg: Algorithm, n: usize) -> Self {
        let key = PrivateKey::generate(alg).unwrap();
        let proofs = (0..n)
            .map(|_| {
                ProofBuilder::new("GET", URL)
                    .unwrap()
                    .access_token(TOKEN)
                    .sign(&key, &SystemRandomSource, UnixTime::from_secs(NOW))
                    .unwrap()
            })
            .collect();
        Self { alg, key, proofs }
    }
}

/// What aws-lc-rs alone does for one proof: verify the signature over the signing input.
fn bare_verify(alg: Algorithm, jwk: &PublicJwk, proof: &str) -> bool {
    let (input, s64) = proof.rsplit_once('.').unwrap();
    let signature = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s64)
        .unwrap();
    match alg {
        Algorithm::Es256 => {
            UnparsedPublicKey::new(&sig::ECDSA_P256_SHA256_FIXED, jwk.raw_public_key().unwrap())
                .verify(input.as_bytes(), &signature)
                .is_ok()
        }
        Algorithm::MlDsa44 => {
            UnparsedPublicKey::new(&sig::ML_DSA_44, jwk.raw_public_key().unwrap())
                .verify(input.as_bytes(), &signature)
                .is_ok()
        }
        Algorithm::EdDsa | Algorithm::Ed25519 => {
            UnparsedPublicKey::new(&sig::ED25519, jwk.raw_public_key().unwrap())
                .verify(input.as_bytes(), &signature)
                .is_ok()
        }
        _ => {
            let (n, e) = jwk.rsa_components().unwrap();
            RsaPublicKeyComponents { n, e }
                .verify(
                    &sig::RSA_PKCS1_2048_8192_SHA256,
                    input.as_bytes(),
                    &signature,
                )
                .is_ok()
        }
    }
}

fn setup() -> (Verifier, Htu) {
    let verifier = Verifier::new(
        VerifierConfig::builder()
            .with_algorithms(&[
                Algorithm::Es256,
                Algorithm::EdDsa,
                Algorithm::Rs256,
                Algorithm::MlDsa44,
            ])
            .unwrap()
            .without_nonces(),
    )
    .unwrap();
    (verifier, Htu::parse(URL).unwrap())
}

fn cases(n: usize) -> Vec<Case> {
    [
        Algorithm::Es256,
        Algorithm::EdDsa,
        Algorithm::Rs256,
        Algorithm::MlDsa44,
    ]
    .into_iter()
    .map(|a| Case::new(a, n))
    .collect()
}

fn bench_verify(c: &mut Criterion) {
    let (verifier, htu) = setup();
    let now = UnixTime::from_secs(NOW);
    for case in cases(1) {
        let proof = &case.proofs[0];
        let jkt = case.key.thumbprint().clone();
        let jwk = case.key.public_jwk().clone();
        let mut g = c.benchmark_group(format!("verify/{}", case.alg));
        g.bench_function("dpop_proof", |b| {
            b.iter(|| {
                let request = ProofRequest::new("GET", &htu).with_access_token(TOKEN, &jkt);
                let _ = black_box(
                    verifier
                        .verify([black_box(proof.as_bytes())], &request, now)
                        .unwrap(),
                );
            });
        });
        g.bench_function("bare_signature", |b| {
            b.iter(|| assert!(bare_verify(case.alg, &jwk, black_box(proof))))
        });
        if matches!(case.alg, Algorithm::Es256 | Algorithm::MlDsa44) {
            g.bench_function("sign_proof", |b| {
                b.iter(|| {
                    ProofBuilder::new("GET", URL)
                        .unwrap()
                        .access_token(TOKEN)
                        .sign(&case.key, &SystemRandomSource, now)
                        .unwrap()
                });
            });
        }
        g.finish();
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Interleaves the measurements in short rounds so machine noise hits both sides alike.
fn ratios() {
    let (verifier, htu) = setup();
    let now = UnixTime::from_secs(NOW);
    let rounds = 25;
    println!();
    println!(
        "{:<8} {:>12} {:>14} {:>12} {:>8} {:>16}",
        "alg", "bare (µs)", "verify (µs)", "ratio", "target", "+replay ratio"
    );
    for case in cases(400) {
        let jwk = case.key.public_jwk().clone();
        let jkt = case.key.thumbprint().clone();
        let (mut bare, mut ours, mut recorded) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..rounds {
            let t = Instant::now();
            for p in &case.proofs {
                assert!(bare_verify(case.alg, &jwk, black_box(p)));
            }
            bare.push(t.elapsed().as_secs_f64());

            let t = Instant::now();
            for p in &case.proofs {
                let request = ProofRequest::new("GET", &htu).with_access_token(TOKEN, &jkt);
                let _ = black_box(
                    verifier
                        .verify([black_box(p.as_bytes())], &request, now)
                        .unwrap(),
                );
            }
            ours.push(t.elapsed().as_secs_f64());

            let store = MemoryReplayStore::new(MemoryReplayConfig::default());
            let t = Instant::now();
            for p in &case.proofs {
                let request = ProofRequest::new("GET", &htu).with_access_token(TOKEN, &jkt);
                black_box(
                    verifier
                        .verify([black_box(p.as_bytes())], &request, now)
                        .unwrap()
                        .record(&store)
                        .unwrap(),
                );
            }
            recorded.push(t.elapsed().as_secs_f64());
        }
        let n = case.proofs.len() as f64;
        let (b, o, r) = (median(bare), median(ours), median(recorded));
        let target = match case.alg {
            Algorithm::Es256 => 1.10,
            Algorithm::Rs256 => 1.25,
            _ => 1.15,
        };
        println!(
            "{:<8} {:>12.2} {:>14.2} {:>11.3}x {:>7.2}x {:>15.3}x",
            case.alg.name(),
            b / n * 1e6,
            o / n * 1e6,
            o / b,
            target,
            r / b
        );
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3));
    targets = bench_verify
}

fn main() {
    // DPOP_BENCH_HEADLINE=1 (scripts/bench): only the interleaved ratio table.
    if std::env::var_os("DPOP_BENCH_HEADLINE").is_none() {
        benches();
        Criterion::default().configure_from_args().final_summary();
    }
    ratios();
}
