//! Cost of the canonical request-target check on typical API paths, beside the `htu`
//! normalisation every DPoP request already pays, so the ratio tells what the check adds,
//! and of the loose form the route-ambiguity check builds for paths that need it.
#![allow(missing_docs, clippy::unwrap_used)]

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use dpop_core::{Htu, HtuBase, RequestTarget};

const TARGETS: [&str; 4] = [
    "/v1/items",
    "/v1/orders/8c2f6a0e-61d9-4c7e-9f7e-0b6d1c2b3a4f/lines?page=2&size=50",
    "/api/v2/projects/group%2Fsub/repository/files/src%2Fmain.rs?ref=main",
    "/.well-known/oauth-protected-resource",
];

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("request_target");
    g.bench_function("RequestTarget::parse (4 paths)", |b| {
        b.iter(|| {
            for t in TARGETS {
                let _ = black_box(RequestTarget::parse(black_box(t)));
            }
        });
    });
    g.bench_function("target::loose_form (4 paths)", |b| {
        b.iter(|| {
            for t in TARGETS {
                let _ = black_box(dpop_core::target::loose_form(black_box(t)));
            }
        });
    });
    g.bench_function("Htu::from_origin_and_path (4 paths)", |b| {
        b.iter(|| {
            for t in TARGETS {
                let _ = black_box(Htu::from_origin_and_path(
                    black_box("https://api.example.com"),
                    black_box(t),
                ));
            }
        });
    });
    let base = HtuBase::parse("https://api.example.com").unwrap();
    g.bench_function("HtuBase::join (4 paths)", |b| {
        b.iter(|| {
            for t in TARGETS {
                let _ = black_box(black_box(&base).join(black_box(t)));
            }
        });
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
