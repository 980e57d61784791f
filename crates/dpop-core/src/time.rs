//! Time as the protocol sees it: whole seconds since the Unix epoch, always injected.
//!
//! The protocol code never reads the system clock (a `clippy.toml` rule enforces it);
//! callers pass the current time in, or give a [`Clock`] that may answer "no time
//! available". `SystemClock` (feature `std-clock`, on by default) is the one place that
//! reads it, for the adapters to pass in.

use core::fmt;
use core::time::Duration;

/// Seconds since 1970-01-01T00:00:00Z, as JWT `NumericDate` values are.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct UnixTime(u64);

impl UnixTime {
    /// The time `secs` seconds after the Unix epoch.
    #[must_use]
    pub const fn from_secs(secs: u64) -> Self {
        Self(secs)
    }

    /// Seconds since the Unix epoch.
    #[must_use]
    pub const fn as_secs(self) -> u64 {
        self.0
    }

    /// This time plus `d` (whole seconds; saturates instead of overflowing).
    #[must_use]
    pub const fn saturating_add(self, d: Duration) -> Self {
        Self(self.0.saturating_add(d.as_secs()))
    }

    /// This time minus `d` (whole seconds; saturates at the epoch).
    #[must_use]
    pub const fn saturating_sub(self, d: Duration) -> Self {
        Self(self.0.saturating_sub(d.as_secs()))
    }
}

impl fmt::Display for UnixTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A source of the current time. Returning `None` means "no trustworthy time", and every
/// time-dependent check then fails closed with [`crate::Error::NoClock`].
pub trait Clock: Send + Sync {
    /// The current time, if known.
    fn now(&self) -> Option<UnixTime>;
}

/// A clock stuck at one instant: for tests and for re-checking a proof "as of" a time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[expect(
    clippy::exhaustive_structs,
    reason = "a newtype users construct directly"
)]
pub struct FixedClock(pub UnixTime);

impl Clock for FixedClock {
    fn now(&self) -> Option<UnixTime> {
        Some(self.0)
    }
}

/// The system clock, whole seconds since the Unix epoch; `None` when it is set before 1970.
///
/// The protocol code never calls it: adapters (servers, clients, the CLI) pass it in where
/// a [`Clock`] is taken. Needs the `std-clock` feature (on by default).
#[cfg(feature = "std-clock")]
#[derive(Clone, Copy, Debug, Default)]
#[expect(
    clippy::exhaustive_structs,
    reason = "a unit struct users construct directly"
)]
pub struct SystemClock;

#[cfg(feature = "std-clock")]
impl Clock for SystemClock {
    #[expect(
        clippy::disallowed_methods,
        reason = "the one system clock read in dpop-core, injected by callers as a Clock"
    )]
    fn now(&self) -> Option<UnixTime> {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .ok()
            .map(|d| UnixTime::from_secs(d.as_secs()))
    }
}
