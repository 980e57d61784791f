//! One ES256 signature through the AWS KMS backend against the in-process KMS stand-in
//! on loopback (a SigV4-signed HTTP/1.1 round trip, the stand-in's signature check and
//! its P-256 signature, DER to `R || S`), next to the same signature by a software key.
//! The KMS figure is the client's cost plus loopback, not AWS's latency (a regional
//! KMS answers in milliseconds).
#![allow(
    missing_docs,
    clippy::print_stdout,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

#[path = "../tests/fake_kms/mod.rs"]
mod fake_kms;

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use dpop_core::{Algorithm, PrivateKey, Signer};
use dpop_keys::awskms::{AwsCredentials, open_with};
use dpop_keys::{DeviceKey, KeyRef, OpenOptions};

use crate::fake_kms::{ACCESS_KEY, FakeKms, REGION, SECRET};

/// A JWS signing input of a typical proof's size.
const MESSAGE: &[u8] = &[b'e'; 600];

fn bench_sign(c: &mut Criterion) {
    let fake = FakeKms::start();
    let id = fake.add_key("ECC_NIST_P256", "SIGN_VERIFY");
    let text = format!("awskms:key-id={id};region={REGION}?endpoint={}", fake.url);
    let KeyRef::Device(DeviceKey::AwsKms(uri)) = KeyRef::parse(&text).unwrap() else {
        panic!("{text}");
    };
    let mut options = OpenOptions::default();
    options.wait = Duration::from_secs(5);
    let kms = open_with(
        &uri,
        &options,
        AwsCredentials::new(ACCESS_KEY, SECRET, None),
    )
    .unwrap();
    let software = PrivateKey::generate(Algorithm::Es256).unwrap();

    let mut group = c.benchmark_group("sign_es256");
    group.bench_function("aws_kms_stand_in_loopback", |b| {
        b.iter(|| black_box(kms.sign(black_box(MESSAGE)).unwrap()));
    });
    group.bench_function("software", |b| {
        b.iter(|| black_box(software.sign(black_box(MESSAGE)).unwrap()));
    });
    group.finish();
}

criterion_group!(benches, bench_sign);
criterion_main!(benches);
