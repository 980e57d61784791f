//! Throughput of the in-memory replay store: fresh inserts, duplicate lookups, and a plain
//! timed loop of 5 million inserts whose figure is printed as inserts per second.
#![allow(
    clippy::disallowed_methods, // benches measure wall-clock time
    missing_docs,
    clippy::print_stdout,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group};
use dpop_core::replay::{Insert, MemoryReplayConfig, MemoryReplayStore, ReplayKey, ReplayStore};
use dpop_core::time::UnixTime;

/// Simulated arrival rate: time advances one second every this many inserts, so entries
/// spread over several expiry generations and old generations are dropped along the way.
const INSERTS_PER_SEC: u64 = 50_000;
/// Proof lifetime: expiry is `now + TTL`, as for a 60 s window plus 15 s of clock skew.
const TTL: u64 = 75;
const START: u64 = 1_700_000_000;

/// xorshift64*: cheap and good enough to stand in for SHA-256 output.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn key(&mut self) -> ReplayKey {
        let mut bytes = [0_u8; 32];
        for chunk in bytes.chunks_exact_mut(8) {
            chunk.copy_from_slice(&self.next().to_le_bytes());
        }
        ReplayKey::from_digest(bytes)
    }
}

fn keys(n: usize, seed: u64) -> Vec<ReplayKey> {
    let mut rng = XorShift(seed | 1);
    (0..n).map(|_| rng.key()).collect()
}

fn store(capacity: usize) -> MemoryReplayStore {
    let mut config = MemoryReplayConfig::default();
    config.capacity = capacity;
    MemoryReplayStore::new(config)
}

/// Inserts `keys` as fresh proofs arriving at `INSERTS_PER_SEC`; answers how many were new.
fn insert_all(store: &MemoryReplayStore, keys: &[ReplayKey]) -> usize {
    let mut inserted = 0;
    for (i, key) in keys.iter().enumerate() {
        let now = START + i as u64 / INSERTS_PER_SEC;
        let outcome = store
            .insert_if_absent(
                black_box(key),
                UnixTime::from_secs(now + TTL),
                UnixTime::from_secs(now),
            )
            .expect("store sized for the run");
        inserted += usize::from(outcome == Insert::Inserted);
    }
    inserted
}

fn bench_inserts(c: &mut Criterion) {
    let mut group = c.benchmark_group("replay");
    group.throughput(Throughput::Elements(1));
    group.bench_function(BenchmarkId::new("insert_fresh", "1 thread"), |b| {
        b.iter_custom(|iters| {
            // Keys are generated outside the timed part; a new store per sample, sized so it
            // never fills.
            let n = usize::try_from(iters).unwrap();
            let keys = keys(n, iters ^ 0x5EED);
            let store = store(n.saturating_mul(2).max(1 << 16));
            let started = Instant::now();
            let inserted = insert_all(&store, &keys);
            let elapsed = started.elapsed();
            assert_eq!(inserted, n);
            drop(black_box(store));
            elapsed
        });
    });

    // Replays: every key is already present, so each call is a lookup in every live
    // generation of its shard followed by a refusal.
    const PRESENT: usize = 1 << 20;
    let present = keys(PRESENT, 0xD0_0D);
    let full = store(PRESENT * 2);
    let now = START;
    for key in &present {
        full.insert_if_absent(
            key,
            UnixTime::from_secs(now + TTL),
            UnixTime::from_secs(now),
        )
        .unwrap();
    }
    group.bench_function(BenchmarkId::new("insert_duplicate", "1 thread"), |b| {
        let mut i = 0_usize;
        b.iter(|| {
            i = (i + 1) & (PRESENT - 1);
            let outcome = full
                .insert_if_absent(
                    black_box(&present[i]),
                    UnixTime::from_secs(now + 10 + TTL),
                    UnixTime::from_secs(now + 10),
                )
                .unwrap();
            debug_assert_eq!(outcome, Insert::AlreadyPresent);
            outcome
        });
    });
    group.finish();
}

/// The headline figure: 5 million fresh inserts, one thread, store capacity 8M.
fn plain_loop() {
    const N: usize = 5_000_000;
    let keys = keys(N, 0xC0FFEE);
    let store = store(8 << 20);
    let started = Instant::now();
    let inserted = insert_all(&store, &keys);
    let elapsed = started.elapsed().max(Duration::from_nanos(1));
    assert_eq!(inserted, N);
    let per_sec = N as f64 / elapsed.as_secs_f64();
    println!(
        "replay inserts/s (one core): {per_sec:.0} ({N} inserts in {:.3} s, {} live at the end)",
        elapsed.as_secs_f64(),
        store.len(UnixTime::from_secs(START + (N as u64) / INSERTS_PER_SEC))
    );
}

criterion_group!(benches, bench_inserts);

fn main() {
    // DPOP_BENCH_HEADLINE=1 (scripts/bench): only the headline figure.
    if std::env::var_os("DPOP_BENCH_HEADLINE").is_none() {
        benches();
    }
    plain_loop();
    Criterion::default().configure_from_args().final_summary();
}
