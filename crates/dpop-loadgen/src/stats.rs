//! What a phase measured, and the rounding of the figures printed.

use std::collections::BTreeMap;
use std::time::Instant;

use hdrhistogram::Histogram;

/// What one phase measured.
#[derive(Debug)]
pub(crate) struct Stats {
    pub(crate) latency_us: Histogram<u64>,
    pub(crate) status: BTreeMap<u16, u64>,
    pub(crate) non_2xx: u64,
    pub(crate) errors: u64,
    pub(crate) reconnects: u64,
    /// When the last counted response completed.
    pub(crate) last: Option<Instant>,
}

impl Stats {
    pub(crate) fn new() -> anyhow::Result<Self> {
        Ok(Self {
            // 1 µs to 60 s at 3 significant digits.
            latency_us: Histogram::new_with_bounds(1, 60_000_000, 3)?,
            status: BTreeMap::new(),
            non_2xx: 0,
            errors: 0,
            reconnects: 0,
            last: None,
        })
    }

    pub(crate) fn merge(&mut self, other: &Self) -> anyhow::Result<()> {
        self.latency_us.add(&other.latency_us)?;
        for (code, n) in &other.status {
            *self.status.entry(*code).or_default() += n;
        }
        self.non_2xx += other.non_2xx;
        self.errors += other.errors;
        self.reconnects += other.reconnects;
        self.last = self.last.max(other.last);
        Ok(())
    }

    pub(crate) fn requests(&self) -> u64 {
        self.latency_us.len()
    }
}

pub(crate) fn ms(us: u64) -> f64 {
    round3(us as f64 / 1000.0)
}

pub(crate) fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}
