//! What the Redis store's test binaries share: distinct replay keys and times.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use dpop_core::{Clock, ReplayKey, SystemClock, UnixTime};

/// A distinct replay key per call.
pub(crate) fn fresh_key() -> ReplayKey {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let mut digest = [0u8; 32];
    digest[..8].copy_from_slice(&n.to_le_bytes());
    digest[8..16].copy_from_slice(&RandomState::new().hash_one(n).to_le_bytes());
    ReplayKey::from_digest(digest)
}

/// The system clock's time.
pub(crate) fn now() -> UnixTime {
    SystemClock.now().expect("a clock after 1970")
}

/// `secs` after `now`.
pub(crate) fn later(now: UnixTime, secs: u64) -> UnixTime {
    now.saturating_add(Duration::from_secs(secs))
}
