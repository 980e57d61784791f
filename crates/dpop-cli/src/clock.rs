//! The system clock (the core never reads it; the CLI is where time comes from) and
//! human-readable times.

use dpop_core::{Clock as _, SystemClock, UnixTime};

use crate::error::CliError;

/// The current time from the system clock.
///
/// # Errors
/// When the clock is set before 1970.
pub(crate) fn now() -> Result<UnixTime, CliError> {
    SystemClock
        .now()
        .ok_or_else(|| CliError::failed("the system clock is set before 1970"))
}

/// `secs` as an RFC 3339 UTC date-time, e.g. `2019-07-04T17:50:16Z`.
pub(crate) fn format_utc(secs: u64) -> String {
    let t = UnixTime::from_secs(secs).to_utc();
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        t.year, t.month, t.day, t.hour, t.minute, t.second
    )
}

/// How `then` relates to `now`: `12 s ago`, `3 s in the future`, `now`; offsets of an
/// hour or more also get a rough size (`about 5 days`).
pub(crate) fn format_offset(then: u64, now: u64) -> String {
    let (delta, dir) = if then <= now {
        (now - then, "ago")
    } else {
        (then - now, "in the future")
    };
    if delta == 0 {
        return "now".to_owned();
    }
    let rough = match delta {
        0..3600 => String::new(),
        3600..86_400 => format!(", about {} h", delta / 3600),
        86_400..31_557_600 => format!(", about {} days", delta / 86_400),
        _ => format!(", about {} years", delta / 31_557_600),
    };
    format!("{delta} s {dir}{rough}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_dates() {
        assert_eq!(format_utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_utc(1_562_262_616), "2019-07-04T17:50:16Z");
        assert_eq!(format_utc(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(format_utc(4_107_542_399), "2100-02-28T23:59:59Z");
        assert_eq!(format_utc(1_700_000_000), "2023-11-14T22:13:20Z");
    }

    #[test]
    fn offsets() {
        assert_eq!(format_offset(100, 112), "12 s ago");
        assert_eq!(format_offset(112, 100), "12 s in the future");
        assert_eq!(format_offset(5, 5), "now");
        assert_eq!(format_offset(0, 7200), "7200 s ago, about 2 h");
        assert_eq!(format_offset(0, 200_000), "200000 s ago, about 2 days");
    }
}
