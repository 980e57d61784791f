//! Replay detection: every accepted DPoP proof is remembered for its acceptance window, so
//! the same proof (same key thumbprint and `jti`) presented again is refused (RFC 9449 §11.1).
//!
//! The store only ever sees a [`ReplayKey`], the SHA-256 of the proof key thumbprint and the
//! `jti`, computed elsewhere. Because it is a digest, its bytes are uniformly distributed and
//! serve directly for choosing a shard and for hashing, without a general-purpose hash.
//!
//! Two traits describe a store: [`ReplayStore`] (synchronous, in-memory) and
//! [`AsyncReplayStore`] (for remote stores such as Redis `SET key 1 NX PX ttl`, implemented in
//! other crates). Every synchronous store is also an asynchronous one, so a verifier that
//! accepts an asynchronous store accepts [`MemoryReplayStore`] as is.
//!
//! Every method fails closed: a store that cannot answer, or that has no room left, makes the
//! caller refuse the proof rather than accept one it could not record.

use core::fmt;
use core::future::Future;
use std::collections::hash_map::RandomState;
use std::collections::{HashSet, VecDeque};
use std::hash::{BuildHasher, Hasher};
use std::sync::{Arc, Mutex, PoisonError};

use crate::time::UnixTime;

/// SHA-256 of the proof key thumbprint and the jti: what the replay store remembers.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ReplayKey([u8; 32]);

impl ReplayKey {
    /// Wraps a SHA-256 digest computed by the caller.
    #[must_use]
    pub const fn from_digest(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The 32 digest bytes.
    #[must_use]
    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The digest as 64 lower-case hexadecimal characters, for stores keyed by strings.
    #[must_use]
    pub fn to_hex(&self) -> String {
        let mut out = String::with_capacity(64);
        self.push_hex(&mut out);
        out
    }

    /// Appends [`to_hex`](Self::to_hex)'s 64 characters to `out`, for a key built of a
    /// prefix and the digest in one allocation.
    pub fn push_hex(&self, out: &mut String) {
        const fn digit(nibble: u8) -> u8 {
            if nibble < 10 {
                b'0'.wrapping_add(nibble)
            } else {
                b'a'.wrapping_add(nibble.wrapping_sub(10))
            }
        }
        let mut hex = [0_u8; 64];
        for (pair, byte) in hex.chunks_exact_mut(2).zip(self.0) {
            if let [high, low] = pair {
                *high = digit(byte >> 4);
                *low = digit(byte & 0x0f);
            }
        }
        // Written as one slice (a character at a time costs ten times as much); the
        // digits are ASCII, so the check passes, and the other arm only avoids a panic.
        match core::str::from_utf8(&hex) {
            Ok(text) => out.push_str(text),
            Err(_) => out.extend(hex.map(char::from)),
        }
    }

    /// Bytes 0..8 as a number: the input to shard selection.
    const fn shard_word(&self) -> u64 {
        let [b0, b1, b2, b3, b4, b5, b6, b7, ..] = self.0;
        u64::from_le_bytes([b0, b1, b2, b3, b4, b5, b6, b7])
    }
}

impl fmt::Debug for ReplayKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The key is a digest, not a secret: printing it helps correlate logs with a store.
        f.write_str("ReplayKey(")?;
        for byte in &self.0 {
            write!(f, "{byte:02x}")?;
        }
        f.write_str(")")
    }
}

/// What [`ReplayStore::insert_if_absent`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Insert {
    /// The key was not recorded (or its record had expired): the proof is fresh.
    Inserted,
    /// The key is recorded and its window has not ended: the proof is a replay.
    AlreadyPresent,
}

/// Why a replay store could not answer. Every variant means: refuse the proof.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReplayStoreError {
    /// A bounded store has no room for a live entry. It refuses rather than forget an entry
    /// that is still inside its window, since forgetting would let that proof be replayed.
    Full {
        /// The store's total capacity in entries.
        capacity: usize,
    },
    /// A remote store could not be reached or answered with an error. The message carries no
    /// secrets (no credentials, no keys).
    Unavailable(String),
    /// A remote store did not answer in time.
    Timeout,
}

impl fmt::Display for ReplayStoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Full { capacity } => {
                write!(f, "replay store is full ({capacity} entries)")
            }
            Self::Unavailable(message) => write!(f, "replay store unavailable: {message}"),
            Self::Timeout => f.write_str("replay store did not answer in time"),
        }
    }
}

impl std::error::Error for ReplayStoreError {}

/// A synchronous replay store (in-memory).
pub trait ReplayStore: Send + Sync {
    /// Records `key` until `expires_at` unless it is already recorded and not yet expired.
    ///
    /// Answers [`Insert::AlreadyPresent`] for a key recorded with an expiry after `now`; a
    /// store may keep entries somewhat longer than asked, never shorter.
    ///
    /// # Errors
    /// [`ReplayStoreError`] when the store cannot record the key; the caller must then refuse
    /// the proof.
    fn insert_if_absent(
        &self,
        key: &ReplayKey,
        expires_at: UnixTime,
        now: UnixTime,
    ) -> Result<Insert, ReplayStoreError>;
}

/// An asynchronous replay store, e.g. Redis `SET key 1 NX PX ttl` in another crate.
///
/// Every [`ReplayStore`] is one too, through a blanket implementation whose future is ready
/// at once.
pub trait AsyncReplayStore: Send + Sync {
    /// Records `key` until `expires_at` unless it is already recorded and not yet expired;
    /// see [`ReplayStore::insert_if_absent`].
    ///
    /// # Errors
    /// [`ReplayStoreError`] when the store cannot record the key or did not answer (an
    /// implementation applies its own time limit and reports [`ReplayStoreError::Timeout`]).
    fn insert_if_absent(
        &self,
        key: &ReplayKey,
        expires_at: UnixTime,
        now: UnixTime,
    ) -> impl Future<Output = Result<Insert, ReplayStoreError>> + Send;
}

impl<T: ReplayStore> AsyncReplayStore for T {
    fn insert_if_absent(
        &self,
        key: &ReplayKey,
        expires_at: UnixTime,
        now: UnixTime,
    ) -> impl Future<Output = Result<Insert, ReplayStoreError>> + Send {
        // The work is done before the future is returned: an in-memory store never waits,
        // so there is nothing to hold across an await point (and no lock to hold either).
        core::future::ready(ReplayStore::insert_if_absent(self, key, expires_at, now))
    }
}

/// A reference or smart pointer to a store is a store.
macro_rules! forward_replay_store {
    ($($ptr:ty),+) => {$(
        impl<T: ReplayStore + ?Sized> ReplayStore for $ptr {
            fn insert_if_absent(
                &self,
                key: &ReplayKey,
                expires_at: UnixTime,
                now: UnixTime,
            ) -> Result<Insert, ReplayStoreError> {
                (**self).insert_if_absent(key, expires_at, now)
            }
        }
    )+};
}

forward_replay_store!(&T, Box<T>, Arc<T>);

/// Settings of a [`MemoryReplayStore`]. Out-of-range values are clamped by
/// [`MemoryReplayStore::new`], never rejected.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct MemoryReplayConfig {
    /// Maximum live entries across all shards. Defaults to 1_048_576.
    ///
    /// Each shard holds `capacity / shards` (rounded up, at least 1). Keys spread evenly but
    /// randomly, so one shard can fill slightly before the total is reached: leave headroom.
    pub capacity: usize,
    /// Number of shards (rounded up to a power of two). Defaults to 64.
    ///
    /// Capped at 65_536, and so that every shard holds at least 64 entries: a small store
    /// is not split into tiny shards, one of which random keys would fill long before the
    /// store is full.
    pub shards: usize,
    /// Width of one expiry generation in seconds. Defaults to 16.
    ///
    /// An entry is kept until the end of the generation its expiry falls in: up to this many
    /// seconds longer than asked. Wider generations mean fewer hash sets to consult per
    /// insert; narrower ones free memory sooner.
    pub generation_secs: u64,
}

impl Default for MemoryReplayConfig {
    fn default() -> Self {
        Self {
            capacity: 1_048_576,
            shards: 64,
            generation_secs: 16,
        }
    }
}

/// Most generations one shard keeps apart. With the default 16-second generations that
/// covers windows of 17 minutes, far beyond a DPoP acceptance window. Past it, new entries
/// join a later generation (kept longer, never shorter) so a lookup consults at most this
/// many hash sets, whatever expiries the caller passes.
const MAX_GENERATIONS: usize = 64;

/// Fewest entries one shard is made for (see [`MemoryReplayConfig::shards`]).
const MIN_PER_SHARD: usize = 64;

/// Most shards: more would only cost memory for mutexes.
const MAX_SHARDS: usize = 1 << 16;

/// An in-memory [`ReplayStore`]: sharded, bounded, with expiry by whole time generations.
///
/// Each shard keeps its entries in a few hash sets, one per generation of
/// [`MemoryReplayConfig::generation_secs`] seconds of expiry time. An entry stays until the
/// end of its generation, so at least until its `expires_at`; a whole generation is dropped
/// at once when its end has passed. When a shard is full of live entries, inserts fail with
/// [`ReplayStoreError::Full`]: a live entry is never evicted to make room, since that would
/// let its proof be replayed.
///
/// An insert whose `expires_at` is not after `now` is still answered
/// [`Insert::AlreadyPresent`] if the key is recorded; if it is not, the answer is
/// [`Insert::Inserted`] but nothing is stored, because such a proof is already outside its
/// window and any later presentation is refused by the time check itself. That also keeps
/// stale proofs from using up capacity.
///
/// Time only ever moves forward for the store: a generation dropped because of a later `now`
/// stays dropped if a caller then passes an earlier one.
pub struct MemoryReplayStore {
    /// The configuration after clamping; `capacity` is the effective total.
    config: MemoryReplayConfig,
    shards: Vec<Mutex<Shard>>,
    /// `shards.len() - 1`; the length is a power of two.
    shard_mask: usize,
    /// Entries one shard may hold.
    per_shard: usize,
    /// Keyed mixing for shard selection (see [`KeyHashBuilder`] for why it is keyed).
    shard_seed: Seed,
    hasher: KeyHashBuilder,
}

impl MemoryReplayStore {
    /// A store with these settings, clamped to sensible values: a capacity of 0 becomes 1,
    /// 0 shards become 1, a generation of 0 seconds becomes 1 second.
    ///
    /// Nothing is allocated for entries until they arrive.
    #[must_use]
    pub fn new(config: MemoryReplayConfig) -> Self {
        let requested = config.capacity.max(1);
        // Largest power of two not above `requested / MIN_PER_SHARD` (at least 1).
        let room = (requested / MIN_PER_SHARD).max(1);
        let shard_limit = 1_usize << (usize::BITS - 1 - room.leading_zeros());
        let shards = config
            .shards
            .clamp(1, MAX_SHARDS)
            .next_power_of_two()
            .min(shard_limit);
        let per_shard = requested.div_ceil(shards).max(1);
        let config = MemoryReplayConfig {
            capacity: per_shard.saturating_mul(shards),
            shards,
            generation_secs: config.generation_secs.max(1),
        };
        let seeds = random_seeds();
        let [s0, s1, s2, s3] = seeds;
        Self {
            shards: (0..shards).map(|_| Mutex::new(Shard::default())).collect(),
            shard_mask: shards - 1,
            per_shard,
            shard_seed: Seed::new(s0, s1),
            hasher: KeyHashBuilder {
                seed: Seed::new(s2, s3),
            },
            config,
        }
    }

    /// A store with the default settings but this capacity.
    #[must_use]
    pub fn with_capacity(capacity: usize) -> Self {
        Self::new(MemoryReplayConfig {
            capacity,
            ..MemoryReplayConfig::default()
        })
    }

    /// Entries still remembered at `now`. Counts whole generations, so it includes entries
    /// whose `expires_at` has passed but whose generation has not yet ended.
    #[must_use]
    pub fn len(&self, now: UnixTime) -> usize {
        let now = now.as_secs();
        self.shards
            .iter()
            .map(|shard| lock(shard).live_len(now))
            .fold(0, usize::saturating_add)
    }

    /// Whether no entry is remembered at `now` (see [`Self::len`]).
    #[must_use]
    pub fn is_empty(&self, now: UnixTime) -> bool {
        let now = now.as_secs();
        self.shards
            .iter()
            .all(|shard| lock(shard).live_len(now) == 0)
    }

    /// The effective total capacity in entries: entries per shard times shards, which is at
    /// least the configured capacity.
    #[must_use]
    pub fn capacity(&self) -> usize {
        self.config.capacity
    }

    fn shard_for(&self, key: &ReplayKey) -> Option<&Mutex<Shard>> {
        // The mask keeps the index in range; `get` keeps even a logic error from panicking.
        let index = (self.shard_seed.mix(key.shard_word()) as usize) & self.shard_mask;
        self.shards.get(index)
    }
}

impl fmt::Debug for MemoryReplayStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Keys are left out: they identify proofs, and a store may hold a million of them.
        let len = self
            .shards
            .iter()
            .map(|shard| lock(shard).stored_len())
            .fold(0, usize::saturating_add);
        f.debug_struct("MemoryReplayStore")
            .field("config", &self.config)
            .field("len", &len)
            .finish_non_exhaustive()
    }
}

impl ReplayStore for MemoryReplayStore {
    fn insert_if_absent(
        &self,
        key: &ReplayKey,
        expires_at: UnixTime,
        now: UnixTime,
    ) -> Result<Insert, ReplayStoreError> {
        let Some(shard) = self.shard_for(key) else {
            // Unreachable (the index is masked), but fail closed rather than panic.
            return Err(ReplayStoreError::Unavailable(
                "replay store shard index out of range".to_owned(),
            ));
        };
        let outcome = lock(shard).insert(
            key,
            expires_at.as_secs(),
            now.as_secs(),
            self.config.generation_secs,
            self.per_shard,
            self.hasher,
        );
        match outcome {
            Outcome::Inserted => Ok(Insert::Inserted),
            Outcome::AlreadyPresent => Ok(Insert::AlreadyPresent),
            Outcome::Full => Err(ReplayStoreError::Full {
                capacity: self.config.capacity,
            }),
        }
    }
}

/// Locks a shard, recovering it if another thread panicked while holding the lock.
///
/// Recovering is sound: a shard is a set of keys per generation, and no code path leaves it
/// half-updated (the length is recomputed from the sets, not kept in a separate counter). A
/// panic elsewhere must not turn every later request on this shard into a panic too.
fn lock(shard: &Mutex<Shard>) -> std::sync::MutexGuard<'_, Shard> {
    shard.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What a shard did with an insert.
enum Outcome {
    Inserted,
    AlreadyPresent,
    Full,
}

/// Keys whose expiry falls before `end`.
struct Generation {
    /// Exclusive end of the generation in seconds: every entry here has `expires_at < end`
    /// (or `end` saturated at `u64::MAX`); the whole generation is dropped once `end <= now`.
    end: u64,
    keys: HashSet<ReplayKey, KeyHashBuilder>,
}

#[derive(Default)]
struct Shard {
    /// Ordered by strictly increasing `end`.
    generations: VecDeque<Generation>,
}

impl Shard {
    /// Entries held, including those in generations that have ended but were not dropped yet.
    fn stored_len(&self) -> usize {
        self.generations.iter().map(|g| g.keys.len()).sum()
    }

    /// Entries in generations that have not ended at `now`.
    fn live_len(&self, now: u64) -> usize {
        self.generations
            .iter()
            .filter(|g| g.end > now)
            .map(|g| g.keys.len())
            .sum()
    }

    /// Drops the generations that have ended, oldest first; each drop frees one hash set.
    fn drop_ended(&mut self, now: u64) {
        while self.generations.front().is_some_and(|g| g.end <= now) {
            self.generations.pop_front();
        }
    }

    fn insert(
        &mut self,
        key: &ReplayKey,
        expires_at: u64,
        now: u64,
        generation_secs: u64,
        per_shard: usize,
        hasher: KeyHashBuilder,
    ) -> Outcome {
        self.drop_ended(now);
        // Look up before anything else, so a replay is caught even when the shard is full or
        // the presented expiry has already passed.
        if self.generations.iter().any(|g| g.keys.contains(key)) {
            return Outcome::AlreadyPresent;
        }
        if expires_at <= now {
            // Outside its window already: nothing to remember (see the type's documentation).
            return Outcome::Inserted;
        }
        let held = self.stored_len();
        if held >= per_shard {
            return Outcome::Full;
        }

        // End of the generation window holding `expires_at`; it is after `expires_at`, or
        // saturated at `u64::MAX`, which only `now == u64::MAX` reaches, when `expires_at`
        // has passed anyway.
        let end = (expires_at / generation_secs)
            .saturating_add(1)
            .saturating_mul(generation_secs);
        let index = self.generations.partition_point(|g| g.end < end);
        let exact = self.generations.get(index).is_some_and(|g| g.end == end);
        if !exact && self.generations.len() < MAX_GENERATIONS {
            let keys = HashSet::with_capacity_and_hasher(self.size_hint(per_shard, held), hasher);
            // `partition_point` answers at most `len`, so this cannot panic.
            self.generations.insert(index, Generation { end, keys });
        }
        // Now `index` names a generation ending at or after `end`. Past the last one only
        // when the shard already keeps `MAX_GENERATIONS`: the last generation is then
        // extended to cover this entry (its entries are kept longer, never shorter), which
        // keeps the order since `end` is beyond every other generation's end.
        let last = self.generations.len().saturating_sub(1);
        if index > last
            && let Some(generation) = self.generations.back_mut()
        {
            generation.end = end;
        }
        match self.generations.get_mut(index.min(last)) {
            Some(generation) => {
                generation.keys.insert(*key);
                Outcome::Inserted
            }
            // Unreachable: there is at least one generation here. Fail closed.
            None => Outcome::Full,
        }
    }

    /// Room to reserve in a new generation's set: as many entries as the fullest live
    /// generation holds (traffic changes slowly from one generation to the next), so a busy
    /// shard does not rehash its way up from empty every generation. Bounded by the room left
    /// in the shard, and reserved only while the sets' total reservation stays within twice
    /// the shard's capacity, so unusual expiry patterns cannot make it reserve much more
    /// memory than the entries need.
    fn size_hint(&self, per_shard: usize, held: usize) -> usize {
        let largest = self
            .generations
            .iter()
            .map(|g| g.keys.len())
            .max()
            .unwrap_or(0);
        let want = largest.min(per_shard.saturating_sub(held));
        let reserved: usize = self.generations.iter().map(|g| g.keys.capacity()).sum();
        if reserved.saturating_add(want) <= per_shard.saturating_mul(2) {
            want
        } else {
            0
        }
    }
}

/// A secret keyed mixing of 64 bits: `fold(x ^ xor, mul)`, the folded multiply used by
/// foldhash and wyhash. One multiplication per key.
#[derive(Clone, Copy)]
struct Seed {
    xor: u64,
    mul: u64,
}

impl Seed {
    const fn new(xor: u64, mul: u64) -> Self {
        // An odd multiplier loses no bits in the low half of the product.
        Self { xor, mul: mul | 1 }
    }

    const fn mix(self, x: u64) -> u64 {
        let product = (x ^ self.xor) as u128 * self.mul as u128;
        (product as u64) ^ ((product >> 64) as u64)
    }
}

/// Four random words for one store, from the standard library's per-process random hash
/// keys. This is the only use of SipHash: four hashes when a store is built, none per insert.
fn random_seeds() -> [u64; 4] {
    let state = RandomState::new();
    [0_u64, 1, 2, 3].map(|i| state.hash_one(i))
}

/// Hashes a [`ReplayKey`] from its bytes 8..16 (shard selection uses bytes 0..8, so the bits
/// that pick a bucket do not repeat the bits that picked the shard).
///
/// Why keyed mixing rather than the bytes as they are: the key is a digest of a `jti` that
/// the client chooses, so a client can grind `jti` values (cheaply, offline) until many keys
/// share their low bits, piling them into one shard or one probe sequence. Mixing with a
/// secret per-store seed makes that impossible to aim, for the cost of one multiplication.
#[derive(Clone, Copy)]
struct KeyHashBuilder {
    seed: Seed,
}

impl BuildHasher for KeyHashBuilder {
    type Hasher = KeyHasher;

    fn build_hasher(&self) -> KeyHasher {
        KeyHasher {
            seed: self.seed,
            word: 0,
        }
    }
}

/// See [`KeyHashBuilder`]. Only ever fed a [`ReplayKey`], whose derived `Hash` writes the
/// array's length and then its 32 bytes.
struct KeyHasher {
    seed: Seed,
    word: u64,
}

impl Hasher for KeyHasher {
    fn write(&mut self, bytes: &[u8]) {
        if let Some(word) = bytes.get(8..).and_then(<[u8]>::first_chunk::<8>) {
            self.word ^= u64::from_le_bytes(*word);
        } else {
            // Not reached for a `ReplayKey`; any other input still hashes, just slowly.
            for &byte in bytes {
                self.word = self.word.rotate_left(8) ^ u64::from(byte);
            }
        }
    }

    fn write_usize(&mut self, _length: usize) {
        // Only the constant length prefix of the 32-byte array arrives here: it carries no
        // information, so skipping it saves work on every lookup.
    }

    fn finish(&self) -> u64 {
        self.seed.mix(self.word)
    }
}

#[cfg(test)]
mod tests;
