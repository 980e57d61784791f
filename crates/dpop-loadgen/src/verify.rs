//! `dpop-loadgen verify`: the CPU time of one bare ES256 signature verification with
//! aws-lc-rs on this machine, now, so a load test can express what DPoP adds to a
//! request in verifications measured in the same run.

use std::io::Write as _;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, ensure};
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED, ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _,
    UnparsedPublicKey,
};

use crate::VerifyArgs;
use crate::cpu;
use crate::stats::round3;

/// Bytes signed: about a proof's signing input (base64url header with a P-256 `jwk`,
/// then the claims with `ath`).
const SIGNED_LEN: usize = 560;

/// Verifications between two looks at the clock.
const BATCH: u64 = 64;

/// Verifies one signature over and over on this thread for `--seconds` and prints one
/// JSON line with the process's CPU time per verification. The key is parsed on every
/// verification, as it must be for a proof, which carries its own key.
pub(crate) fn cost(args: &VerifyArgs) -> anyhow::Result<ExitCode> {
    ensure!(
        args.seconds > 0.0 && args.seconds <= 60.0,
        "--seconds must be more than 0 and at most 60"
    );
    let rng = SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
        .map_err(|_| anyhow!("cannot generate a P-256 key"))?;
    let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref())
        .map_err(|_| anyhow!("cannot read the generated key"))?;
    let message = vec![b'e'; SIGNED_LEN];
    let signature = pair
        .sign(&rng, &message)
        .map_err(|_| anyhow!("cannot sign"))?;
    let point = pair.public_key().as_ref().to_vec();
    let verify = || {
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, &point)
            .verify(&message, signature.as_ref())
            .map_err(|_| anyhow!("the signature does not verify"))
    };
    // Warm the caches and check it verifies at all.
    for _ in 0..BATCH {
        verify()?;
    }
    let hz = cpu::ticks_per_second()?;
    let pid = std::process::id();
    let limit = Duration::from_secs_f64(args.seconds);
    let before = cpu::process_ticks(pid)?;
    let started = Instant::now();
    let mut n: u64 = 0;
    while started.elapsed() < limit {
        for _ in 0..BATCH {
            verify()?;
        }
        n += BATCH;
    }
    let ticks = cpu::process_ticks(pid)?
        .checked_sub(before)
        .context("CPU time went backwards")?;
    let us = round3(ticks as f64 * 1e6 / hz as f64 / n as f64);
    let line = serde_json::json!({
        "alg": "ES256",
        "verifications": n,
        "seconds": started.elapsed().as_secs_f64(),
        "cpu_us_per_verification": us,
    });
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}").context("writing the result")?;
    Ok(ExitCode::SUCCESS)
}
