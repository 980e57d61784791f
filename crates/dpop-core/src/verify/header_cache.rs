//! The verifier's memory of proof headers it has already judged.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use crate::alg::Algorithm;
use crate::jwk::PublicJwk;

/// Longest encoded header kept in the header cache.
const MAX_CACHED_HEADER: usize = 2048;

/// A proof header that passed checks 4, 5 and 7 under one verifier's settings.
#[derive(Debug)]
pub(crate) struct Header {
    pub(super) alg: Algorithm,
    pub(super) jwk: PublicJwk,
}

/// Verdicts on encoded headers, keyed by their exact bytes. Bounded: when full it is
/// emptied (a miss only costs re-checking one header).
#[derive(Debug)]
pub(super) struct HeaderCache {
    entries: Mutex<HashMap<Box<[u8]>, Arc<Header>>>,
    capacity: usize,
}

impl HeaderCache {
    pub(super) fn new(capacity: usize) -> Self {
        Self {
            entries: Mutex::new(HashMap::new()),
            capacity,
        }
    }

    pub(super) fn get(&self, h64: &[u8]) -> Option<Arc<Header>> {
        if self.capacity == 0 {
            return None;
        }
        self.entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(h64)
            .cloned()
    }

    pub(super) fn insert(&self, h64: &[u8], header: Arc<Header>) {
        // Real headers (EC, Ed25519, RSA up to 4096 bits) are well under this; larger
        // ones are still verified, just not kept, so the cache stays small (at most
        // capacity × 2 KiB of keys) whatever keys clients invent.
        if self.capacity == 0 || h64.len() > MAX_CACHED_HEADER {
            return;
        }
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        if entries.len() >= self.capacity {
            entries.clear();
        }
        entries.insert(h64.into(), header);
    }
}
