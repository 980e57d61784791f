use super::*;
use proptest::prelude::*;
use std::collections::HashMap;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

fn t(secs: u64) -> UnixTime {
    UnixTime::from_secs(secs)
}

/// A key from a number, spread over all bytes (like a digest) so shards are exercised.
fn key(n: u64) -> ReplayKey {
    let mut bytes = [0_u8; 32];
    let mut x = n.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03;
    for chunk in bytes.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes());
    }
    ReplayKey::from_digest(bytes)
}

fn store(capacity: usize, shards: usize, generation_secs: u64) -> MemoryReplayStore {
    MemoryReplayStore::new(MemoryReplayConfig {
        capacity,
        shards,
        generation_secs,
    })
}

fn insert(
    s: &MemoryReplayStore,
    k: &ReplayKey,
    expires: u64,
    now: u64,
) -> Result<Insert, ReplayStoreError> {
    ReplayStore::insert_if_absent(s, k, t(expires), t(now))
}

#[test]
fn hex_and_debug() {
    let mut bytes = [0_u8; 32];
    bytes[0] = 0xab;
    bytes[31] = 0x0f;
    let k = ReplayKey::from_digest(bytes);
    let hex = k.to_hex();
    assert_eq!(hex.len(), 64);
    assert!(hex.starts_with("ab00"));
    assert!(hex.ends_with("000f"));
    assert_eq!(format!("{k:?}"), format!("ReplayKey({hex})"));
    assert_eq!(k.as_bytes(), &bytes);
    // All 256 byte values (eight keys of 32), against the standard formatting; appended
    // after what is there.
    for block in 0..8_usize {
        let bytes: [u8; 32] = core::array::from_fn(|i| u8::try_from(block * 32 + i).unwrap_or(0));
        let expected: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        let k = ReplayKey::from_digest(bytes);
        assert_eq!(k.to_hex(), expected);
        let mut prefixed = String::from("dpop:jti:");
        k.push_hex(&mut prefixed);
        assert_eq!(prefixed, format!("dpop:jti:{expected}"));
    }
}

#[test]
fn insert_then_duplicate() {
    let s = MemoryReplayStore::with_capacity(1000);
    let k = key(1);
    assert_eq!(insert(&s, &k, 175, 100), Ok(Insert::Inserted));
    assert_eq!(insert(&s, &k, 175, 100), Ok(Insert::AlreadyPresent));
    assert_eq!(insert(&s, &k, 200, 150), Ok(Insert::AlreadyPresent));
    assert_eq!(insert(&s, &key(2), 175, 100), Ok(Insert::Inserted));
    assert_eq!(s.len(t(100)), 2);
    assert!(!s.is_empty(t(100)));
}

#[test]
fn same_key_after_generation_ends_is_inserted_again() {
    let s = store(1000, 4, 16);
    let k = key(7);
    // expires 175 lies in generation [160, 176).
    assert_eq!(insert(&s, &k, 175, 100), Ok(Insert::Inserted));
    assert_eq!(insert(&s, &k, 240, 174), Ok(Insert::AlreadyPresent));
    // Kept to the end of its generation: slightly longer than asked, never shorter.
    assert_eq!(insert(&s, &k, 240, 175), Ok(Insert::AlreadyPresent));
    assert_eq!(insert(&s, &k, 251, 176), Ok(Insert::Inserted));
    assert_eq!(insert(&s, &k, 251, 200), Ok(Insert::AlreadyPresent));
    assert!(s.is_empty(t(256)));
}

#[test]
fn never_forgotten_before_expiry() {
    for generation_secs in [1, 3, 16, 60] {
        // One shard, so the inserts of other keys drop ended generations of this shard.
        let s = store(100_000, 1, generation_secs);
        let start = 1_000;
        for ttl in 1..=100 {
            let k = key(ttl);
            assert_eq!(insert(&s, &k, start + ttl, start), Ok(Insert::Inserted));
        }
        // Walk time forward second by second, inserting filler keys to trigger drops,
        // and check every key one second before its expiry.
        for now in start..start + 100 {
            let filler = key(1_000_000 + now);
            assert_eq!(insert(&s, &filler, now + 1, now), Ok(Insert::Inserted));
            let k = key(now + 1 - start);
            assert_eq!(
                insert(&s, &k, now + 500, now),
                Ok(Insert::AlreadyPresent),
                "generation {generation_secs}s, expiry {}, now {now}",
                now + 1
            );
        }
    }
}

#[test]
fn expired_insert_is_not_stored_but_still_detected() {
    let s = store(10, 1, 16);
    let k = key(3);
    assert_eq!(insert(&s, &k, 100, 100), Ok(Insert::Inserted));
    assert_eq!(insert(&s, &k, 100, 100), Ok(Insert::Inserted));
    assert!(s.is_empty(t(100)));
    assert_eq!(insert(&s, &k, 200, 100), Ok(Insert::Inserted));
    // Presented again with an expiry already in the past: still a replay.
    assert_eq!(insert(&s, &k, 50, 150), Ok(Insert::AlreadyPresent));
}

#[test]
fn full_store_refuses_and_keeps_detecting() {
    let s = store(4, 1, 16);
    assert_eq!(s.capacity(), 4);
    for n in 0..4 {
        assert_eq!(insert(&s, &key(n), 175, 100), Ok(Insert::Inserted));
    }
    assert_eq!(
        insert(&s, &key(99), 175, 100),
        Err(ReplayStoreError::Full { capacity: 4 })
    );
    for n in 0..4 {
        assert_eq!(insert(&s, &key(n), 175, 110), Ok(Insert::AlreadyPresent));
    }
    // Still full until the generation ends at 176.
    assert_eq!(
        insert(&s, &key(99), 240, 175),
        Err(ReplayStoreError::Full { capacity: 4 })
    );
    // Recovers once time has passed.
    assert_eq!(insert(&s, &key(99), 240, 176), Ok(Insert::Inserted));
    assert_eq!(s.len(t(176)), 1);
    let err = ReplayStoreError::Full { capacity: 4 };
    assert_eq!(err.to_string(), "replay store is full (4 entries)");
}

#[test]
fn config_is_clamped() {
    let s = store(0, 0, 0);
    assert_eq!(s.capacity(), 1);
    assert_eq!(s.config.shards, 1);
    assert_eq!(s.config.generation_secs, 1);
    assert_eq!(insert(&s, &key(1), 10, 5), Ok(Insert::Inserted));
    assert!(matches!(
        insert(&s, &key(2), 10, 5),
        Err(ReplayStoreError::Full { .. })
    ));

    // Shards hold at least 64 entries each: small stores are not split into tiny
    // shards that random keys would fill early.
    let s = store(10, 64, 16);
    assert_eq!(s.config.shards, 1);
    assert_eq!(s.capacity(), 10);
    let s = store(64, 64, 16);
    assert_eq!(s.config.shards, 1);
    for n in 0..64 {
        assert_eq!(
            insert(&s, &key(n), 10, 5),
            Ok(Insert::Inserted),
            "entry {n}"
        );
    }
    let s = store(1024, 64, 16);
    assert_eq!(s.config.shards, 16);
    assert_eq!(s.capacity(), 1024);

    let s = store(usize::MAX, usize::MAX, u64::MAX);
    assert_eq!(s.config.shards, MAX_SHARDS);
    assert_eq!(
        insert(&s, &key(1), u64::MAX, u64::MAX - 1),
        Ok(Insert::Inserted)
    );
    assert_eq!(
        insert(&s, &key(1), u64::MAX, u64::MAX - 1),
        Ok(Insert::AlreadyPresent)
    );
    assert_eq!(
        insert(&s, &key(1), u64::MAX, u64::MAX),
        Ok(Insert::Inserted)
    );

    let s = MemoryReplayStore::with_capacity(1_000_000);
    assert_eq!(s.config.shards, 64);
    assert!(s.capacity() >= 1_000_000);
    let defaults = MemoryReplayConfig::default();
    assert_eq!(
        (defaults.capacity, defaults.shards, defaults.generation_secs),
        (1_048_576, 64, 16)
    );
}

#[test]
fn far_expiries_share_generations() {
    // One-second generations and expiries far apart: more windows than MAX_GENERATIONS.
    let s = store(10_000, 1, 1);
    for n in 0..500 {
        assert_eq!(
            insert(&s, &key(n), 1_000 + n * 7, 1_000),
            Ok(Insert::Inserted)
        );
    }
    {
        let shard = lock(&s.shards[0]);
        assert!(shard.generations.len() <= MAX_GENERATIONS);
        assert!(
            shard
                .generations
                .iter()
                .zip(shard.generations.iter().skip(1))
                .all(|(a, b)| a.end < b.end)
        );
    }
    for now in (1_000..4_500).step_by(13) {
        for n in 0..500 {
            let expires = 1_000 + n * 7;
            if expires > now {
                assert_eq!(
                    insert(&s, &key(n), expires, now),
                    Ok(Insert::AlreadyPresent)
                );
            }
        }
    }
}

#[test]
fn debug_shows_config_not_keys() {
    let s = store(100, 2, 16);
    let k = key(5);
    assert_eq!(insert(&s, &k, 175, 100), Ok(Insert::Inserted));
    let text = format!("{s:?}");
    assert!(text.contains("MemoryReplayStore"));
    assert!(text.contains("capacity: 100"));
    assert!(text.contains("len: 1"));
    assert!(!text.contains(&k.to_hex()[..16]));
}

#[test]
fn poisoned_shard_does_not_panic() {
    let s = store(100, 1, 16);
    let k = key(1);
    assert_eq!(insert(&s, &k, 175, 100), Ok(Insert::Inserted));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let _guard = s.shards[0].lock().unwrap();
        panic!("poisoning the shard on purpose");
    }));
    assert!(result.is_err());
    assert!(s.shards[0].is_poisoned());
    assert_eq!(insert(&s, &k, 175, 101), Ok(Insert::AlreadyPresent));
    assert_eq!(insert(&s, &key(2), 175, 101), Ok(Insert::Inserted));
    assert_eq!(s.len(t(101)), 2);
    let _ = format!("{s:?}");
}

#[test]
fn two_threads_same_keys_each_inserted_once() {
    const N: u64 = 10_000;
    let s = MemoryReplayStore::with_capacity(100_000);
    let keys: Vec<ReplayKey> = (0..N).map(key).collect();
    let won: Vec<Vec<bool>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..2)
            .map(|_| {
                let (s, keys) = (&s, &keys);
                scope.spawn(move || {
                    keys.iter()
                        .map(|k| insert(s, k, 175, 100).unwrap() == Insert::Inserted)
                        .collect::<Vec<bool>>()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (i, (a, b)) in won[0].iter().zip(&won[1]).enumerate() {
        assert!(a ^ b, "key {i} inserted by both or neither");
    }
    assert_eq!(won[0].len(), N as usize);
    assert_eq!(s.len(t(100)), N as usize);
}

/// Polls a future to completion on this thread with a waker that does nothing.
fn block_on<F: Future>(future: F) -> F::Output {
    let mut future = pin!(future);
    let mut cx = Context::from_waker(Waker::noop());
    loop {
        if let Poll::Ready(out) = future.as_mut().poll(&mut cx) {
            return out;
        }
    }
}

async fn check_twice<S: AsyncReplayStore>(store: &S, k: &ReplayKey) -> (Insert, Insert) {
    let first = store.insert_if_absent(k, t(175), t(100)).await.unwrap();
    let second = store.insert_if_absent(k, t(175), t(101)).await.unwrap();
    (first, second)
}

#[test]
fn blanket_async_store_works() {
    let s = MemoryReplayStore::with_capacity(100);
    assert_eq!(
        block_on(check_twice(&s, &key(1))),
        (Insert::Inserted, Insert::AlreadyPresent)
    );
    // Through a reference, an Arc and a box of a trait object too.
    let arc = Arc::new(MemoryReplayStore::with_capacity(100));
    assert_eq!(
        block_on(check_twice(&arc, &key(2))),
        (Insert::Inserted, Insert::AlreadyPresent)
    );
    let boxed: Box<dyn ReplayStore> = Box::new(MemoryReplayStore::with_capacity(100));
    assert_eq!(
        block_on(check_twice(&boxed, &key(3))),
        (Insert::Inserted, Insert::AlreadyPresent)
    );
    fn assert_send<T: Send>(_: &T) {}
    assert_send(&AsyncReplayStore::insert_if_absent(
        &s,
        &key(4),
        t(175),
        t(100),
    ));
}

#[test]
fn error_display() {
    assert_eq!(
        ReplayStoreError::Unavailable("connection refused".into()).to_string(),
        "replay store unavailable: connection refused"
    );
    assert_eq!(
        ReplayStoreError::Timeout.to_string(),
        "replay store did not answer in time"
    );
}

/// One step of a model check: which key, how far time moves, the proof's remaining life.
fn steps(keys: u64, max_ttl: u64) -> impl Strategy<Value = Vec<(u64, u64, u64)>> {
    prop::collection::vec((0..keys, 0..20_u64, 0..max_ttl), 1..300)
}

proptest! {
    /// Against an exact model: with few enough generations none are merged, so the store
    /// remembers each key exactly until the end of its expiry's generation.
    #[test]
    fn matches_generation_model(
        ops in steps(6, 60),
        generation_secs in 1..20_u64,
        shards in 1..4_usize,
        start in 0..1_000_000_u64,
    ) {
        let s = store(1 << 20, shards, generation_secs);
        // key -> (expires_at, end of its generation)
        let mut model: HashMap<u64, (u64, u64)> = HashMap::new();
        let mut now = start;
        for (k, advance, ttl) in ops {
            now += advance;
            let expires = now + ttl;
            let got = insert(&s, &key(k), expires, now).unwrap();
            let remembered = model.get(&k).copied();
            if remembered.is_some_and(|(e, _)| e > now) {
                prop_assert_eq!(got, Insert::AlreadyPresent, "replay let through");
            }
            let expected = if remembered.is_some_and(|(_, end)| end > now) {
                Insert::AlreadyPresent
            } else {
                Insert::Inserted
            };
            prop_assert_eq!(got, expected);
            if got == Insert::Inserted && expires > now {
                let end = (expires / generation_secs + 1) * generation_secs;
                model.insert(k, (expires, end));
            }
        }
    }

    /// Long windows, one-second generations (so generations get merged) and a small
    /// capacity: the store may answer `Full` or keep entries longer, but it never answers
    /// `Inserted` for a key recorded with an expiry still in the future, and `Full` only
    /// when the shard really holds `capacity` live entries.
    #[test]
    fn never_lets_a_replay_through(
        ops in steps(40, 400),
        capacity in 1..50_usize,
        generation_secs in 1..4_u64,
        start in 0..1_000_000_u64,
    ) {
        let s = store(capacity, 1, generation_secs);
        let mut model: HashMap<u64, u64> = HashMap::new();
        let mut now = start;
        for (k, advance, ttl) in ops {
            now += advance;
            let expires = now + ttl;
            let got = insert(&s, &key(k), expires, now);
            let live = model.values().filter(|&&e| e > now).count();
            match got {
                Ok(Insert::Inserted) => {
                    prop_assert!(model.get(&k).is_none_or(|&e| e <= now), "replay let through");
                    if expires > now {
                        model.insert(k, expires);
                    }
                }
                Ok(Insert::AlreadyPresent) => {
                    prop_assert!(model.contains_key(&k), "present but never stored");
                }
                Err(ReplayStoreError::Full { capacity: c }) => {
                    prop_assert_eq!(c, capacity);
                    prop_assert!(model.get(&k).is_none_or(|&e| e <= now));
                    prop_assert!(s.len(t(now)) >= capacity);
                    prop_assert!(live <= capacity);
                }
                Err(other) => prop_assert!(false, "unexpected error {other:?}"),
            }
        }
    }
}
