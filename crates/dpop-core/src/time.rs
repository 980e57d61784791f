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

    /// The UTC calendar date and time of day (proleptic Gregorian calendar): the one
    /// conversion every RFC 3339, SigV4 or log timestamp of the workspace is written from.
    #[must_use]
    pub const fn to_utc(self) -> UtcDateTime {
        let (year, month, day) = civil_from_days(self.0 / 86_400);
        let of_day = self.0 % 86_400;
        UtcDateTime {
            year,
            month,
            day,
            hour: of_day / 3_600,
            minute: of_day / 60 % 60,
            second: of_day % 60,
        }
    }
}

/// A UTC calendar date and time of day, from [`UnixTime::to_utc`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct UtcDateTime {
    /// The year (1970 or later; more than four digits after 9999).
    pub year: u64,
    /// The month, 1 to 12.
    pub month: u64,
    /// The day of the month, 1 to 31.
    pub day: u64,
    /// The hour, 0 to 23.
    pub hour: u64,
    /// The minute, 0 to 59.
    pub minute: u64,
    /// The second, 0 to 59 (Unix time has no leap seconds).
    pub second: u64,
}

/// The proleptic Gregorian date `days` days after 1970-01-01: era arithmetic over
/// 400-year cycles of 146 097 days, with years starting in March so that the leap day is
/// the last day of its year (Howard Hinnant's `civil_from_days`, for non-negative counts).
const fn civil_from_days(days: u64) -> (u64, u64, u64) {
    // Days since 0000-03-01; no overflow: `days` is at most `u64::MAX / 86_400`.
    let z = days + 719_468;
    let era = z / 146_097;
    let day_of_era = z % 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1_460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_from_march + 2) / 5 + 1;
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    };
    let year = year_of_era + era * 400 + if month <= 2 { 1 } else { 0 };
    (year, month, day)
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

#[cfg(test)]
mod tests {
    use super::{UnixTime, civil_from_days};

    fn utc(secs: u64) -> (u64, u64, u64, u64, u64, u64) {
        let t = UnixTime::from_secs(secs).to_utc();
        (t.year, t.month, t.day, t.hour, t.minute, t.second)
    }

    #[test]
    fn known_instants() {
        assert_eq!(utc(0), (1970, 1, 1, 0, 0, 0));
        assert_eq!(utc(1_440_938_160), (2015, 8, 30, 12, 36, 0));
        assert_eq!(utc(1_562_262_616), (2019, 7, 4, 17, 50, 16));
        // Leap days; 2000 is a leap year, 2100 is not.
        assert_eq!(utc(951_782_400), (2000, 2, 29, 0, 0, 0));
        assert_eq!(utc(1_709_251_199), (2024, 2, 29, 23, 59, 59));
        assert_eq!(utc(4_107_542_399), (2100, 2, 28, 23, 59, 59));
        assert_eq!(utc(4_107_542_400), (2100, 3, 1, 0, 0, 0));
        assert_eq!(utc(253_402_300_799), (9999, 12, 31, 23, 59, 59));
        assert_eq!(utc(253_402_300_800), (10_000, 1, 1, 0, 0, 0));
        // The largest time neither overflows nor panics.
        assert!(utc(u64::MAX).0 > 500_000_000_000);
    }

    #[test]
    fn every_day_of_five_centuries_follows_the_previous_one() {
        let mut last = civil_from_days(0);
        assert_eq!(last, (1970, 1, 1));
        for days in 1..(500 * 366) {
            let (y, m, d) = civil_from_days(days);
            let (ly, lm, ld) = last;
            let next = (y == ly && m == lm && d == ld + 1)
                || (y == ly && m == lm + 1 && d == 1)
                || (y == ly + 1 && m == 1 && d == 1 && lm == 12 && ld == 31);
            assert!(next, "{last:?} then {:?}", (y, m, d));
            if d == 1 {
                let leap = (ly % 4 == 0 && ly % 100 != 0) || ly % 400 == 0;
                let length = match lm {
                    2 if leap => 29,
                    2 => 28,
                    4 | 6 | 9 | 11 => 30,
                    _ => 31,
                };
                assert_eq!(ld, length, "{last:?} ends its month");
            }
            last = (y, m, d);
        }
    }
}
