//! Rate-limited reports of a failure that repeats: the issuer's keys that cannot be
//! fetched, an introspection endpoint or a replay store that is down. Logging each
//! attempt would bury everything else (and cost as much as the attempts); logging none
//! would hide the cause. [`FailureReporter`] says what to log:
//!
//! 1. the first failure, with its cause;
//! 2. while the failure goes on, nothing, except at most one summary per interval
//!    ("still failing: 57 failures in the last 60 s, last cause: …");
//! 3. the first success after a failure, once ("recovered after 3m12s").
//!
//! It decides and does not log: the adapter logs the [`FailureReport`] it is handed,
//! at its own `tracing` target (a report's level is [`FailureReport::is_recovery`]:
//! recovery is good news, the others are warnings). Time is passed in, so a test drives
//! it with a fixed clock.
//!
//! [`error_chain`] writes an error with its causes: HTTP clients keep "connection
//! refused" or the TLS alert in `source()`, behind a message that only says the
//! request failed.

use std::error::Error as StdError;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// `e` and its causes, `: `-separated, for one log line. A cause whose text the
/// previous one already ends with (an `io::Error` wrapping an error shows it) is not
/// repeated.
#[must_use]
pub fn error_chain(e: &(dyn StdError + 'static)) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let next = c.to_string();
        if !next.is_empty() && !text.ends_with(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        cause = c.source();
    }
    text
}

/// How often a failure that goes on is summarised when no interval is given.
pub const DEFAULT_SUMMARY_INTERVAL: Duration = Duration::from_secs(60);

/// What to log about one attempt; `None` from [`FailureReporter`] means nothing.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum FailureReport {
    /// The first failure after success (or since start).
    Failing {
        /// What failed (the reporter's name).
        what: &'static str,
        /// The cause, with its chain.
        cause: String,
    },
    /// The failure goes on: a summary since the last report.
    StillFailing {
        /// What failed.
        what: &'static str,
        /// Failures since the last report.
        failures: u64,
        /// The time since the last report.
        window: Duration,
        /// The last failure's cause.
        last_cause: String,
    },
    /// The first success after a failure.
    Recovered {
        /// What recovered.
        what: &'static str,
        /// Time from the first failure to this success.
        after: Duration,
        /// Failures in all.
        failures: u64,
    },
}

impl FailureReport {
    /// Whether this is the recovery (logged at info; the others at warn).
    #[must_use]
    pub fn is_recovery(&self) -> bool {
        matches!(self, Self::Recovered { .. })
    }
}

/// `3m12s`, `45s`, `1h2m`, `250ms`.
fn human(d: Duration) -> String {
    let secs = d.as_secs();
    if secs == 0 {
        return format!("{}ms", d.as_millis());
    }
    let (h, m, s) = (secs / 3600, (secs / 60) % 60, secs % 60);
    match (h, m) {
        (0, 0) => format!("{s}s"),
        (0, _) => format!("{m}m{s}s"),
        _ => format!("{h}h{m}m"),
    }
}

impl fmt::Display for FailureReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Failing { what, cause } => write!(f, "{what} failing: {cause}"),
            Self::StillFailing {
                what,
                failures,
                window,
                last_cause,
            } => write!(
                f,
                "{what} still failing: {failures} failures in the last {} s, last cause: {last_cause}",
                window.as_secs()
            ),
            Self::Recovered {
                what,
                after,
                failures,
            } => write!(
                f,
                "{what} recovered after {} ({failures} failures)",
                human(*after)
            ),
        }
    }
}

#[derive(Debug, Default)]
struct State {
    /// When the current run of failures started; `None` while things work.
    since: Option<Instant>,
    /// When the last report (first failure or summary) was made.
    reported: Option<Instant>,
    /// Failures since the last report.
    unreported: u64,
    /// Failures in the current run.
    total: u64,
}

/// Decides what to log about a repeating failure (see the module docs). Shared by the
/// tasks that try the same thing: a failure locks for a few instructions; a success
/// while nothing fails reads one atomic flag, so it can sit on a request path.
#[derive(Debug)]
pub struct FailureReporter {
    what: &'static str,
    interval: Duration,
    /// Whether the last attempt failed, readable without the lock.
    failing: AtomicBool,
    state: Mutex<State>,
}

impl FailureReporter {
    /// A reporter for `what` (e.g. `"issuer keys fetch"`) that summarises at most once
    /// per `interval`.
    #[must_use]
    pub fn new(what: &'static str, interval: Duration) -> Self {
        Self {
            what,
            interval,
            failing: AtomicBool::new(false),
            state: Mutex::new(State::default()),
        }
    }

    /// What failed, as named at construction.
    #[must_use]
    pub fn what(&self) -> &'static str {
        self.what
    }

    /// An attempt failed at `now` with `cause` (written with [`error_chain`] by the
    /// caller when it is an error). The cause is only turned into text when it is
    /// reported.
    pub fn failure(&self, now: Instant, cause: impl fmt::Display) -> Option<FailureReport> {
        let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        self.failing.store(true, Ordering::Relaxed);
        s.total = s.total.saturating_add(1);
        let Some(reported) = s.reported.filter(|_| s.since.is_some()) else {
            s.since = Some(now);
            s.reported = Some(now);
            s.unreported = 0;
            return Some(FailureReport::Failing {
                what: self.what,
                cause: cause.to_string(),
            });
        };
        s.unreported = s.unreported.saturating_add(1);
        let window = now.saturating_duration_since(reported);
        if window < self.interval {
            return None;
        }
        let failures = std::mem::take(&mut s.unreported);
        s.reported = Some(now);
        Some(FailureReport::StillFailing {
            what: self.what,
            failures,
            window,
            last_cause: cause.to_string(),
        })
    }

    /// An attempt succeeded at `now`: a recovery report after failures, else nothing.
    pub fn success(&self, now: Instant) -> Option<FailureReport> {
        if !self.failing.load(Ordering::Relaxed) {
            return None;
        }
        let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        self.failing.store(false, Ordering::Relaxed);
        let since = s.since.take()?;
        let failures = std::mem::take(&mut s.total);
        s.reported = None;
        s.unreported = 0;
        Some(FailureReport::Recovered {
            what: self.what,
            after: now.saturating_duration_since(since),
            failures,
        })
    }

    /// Whether the last attempt failed.
    #[must_use]
    pub fn is_failing(&self) -> bool {
        self.failing.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Outer(std::io::Error);
    impl fmt::Display for Outer {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("error sending request")
        }
    }
    impl StdError for Outer {
        fn source(&self) -> Option<&(dyn StdError + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn the_chain_names_the_cause() {
        let e = Outer(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "connection refused",
        ));
        assert_eq!(error_chain(&e), "error sending request: connection refused");
    }

    #[test]
    #[expect(
        clippy::disallowed_methods,
        reason = "only the origin: every time the reporter is given is computed from it"
    )]
    fn first_failure_then_summaries_then_recovery() {
        let t0 = Instant::now();
        let r = FailureReporter::new("issuer keys fetch", Duration::from_secs(60));
        let at = |s: u64| t0 + Duration::from_secs(s);
        assert_eq!(r.success(at(0)), None, "no recovery without a failure");
        let first = r.failure(at(1), "connection refused").unwrap();
        assert_eq!(
            first.to_string(),
            "issuer keys fetch failing: connection refused"
        );
        assert!(!first.is_recovery());
        assert!(r.is_failing());
        // One attempt a second for the next 59 s: nothing.
        for s in 2..61 {
            assert_eq!(r.failure(at(s), "connection refused"), None, "at {s}s");
        }
        let summary = r.failure(at(61), "timed out").unwrap();
        assert_eq!(
            summary,
            FailureReport::StillFailing {
                what: "issuer keys fetch",
                failures: 60,
                window: Duration::from_secs(60),
                last_cause: "timed out".into(),
            }
        );
        assert_eq!(
            summary.to_string(),
            "issuer keys fetch still failing: 60 failures in the last 60 s, last cause: timed out"
        );
        assert_eq!(r.failure(at(62), "timed out"), None);
        let recovered = r.success(at(193)).unwrap();
        assert!(recovered.is_recovery());
        assert_eq!(
            recovered.to_string(),
            "issuer keys fetch recovered after 3m12s (62 failures)"
        );
        assert!(!r.is_failing());
        assert_eq!(r.success(at(194)), None, "recovery is told once");
        // A new run starts with its cause again.
        assert!(matches!(
            r.failure(at(200), "HTTP 500"),
            Some(FailureReport::Failing { .. })
        ));
    }

    #[test]
    fn durations_read_like_a_person_writes_them() {
        assert_eq!(human(Duration::from_millis(250)), "250ms");
        assert_eq!(human(Duration::from_secs(45)), "45s");
        assert_eq!(human(Duration::from_secs(192)), "3m12s");
        assert_eq!(human(Duration::from_secs(3720)), "1h2m");
    }
}
