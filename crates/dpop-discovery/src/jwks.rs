//! [`RemoteJwks`]: an authorization server's JWK set, fetched on first use (from a
//! configured `jwks_uri`, or the one its metadata names) and cached.
//!
//! - Keys older than `refresh_interval` are fetched again (rotation) by whichever caller
//!   notices first; the others go on with the stale keys meanwhile, and so does
//!   everyone if the fetch fails: the issuer's outage does not become ours while its
//!   keys are still good.
//! - A token naming an unknown `kid` may fetch again ([`RemoteJwks::after_unknown_kid`]),
//!   but never within `min_refresh_interval` of the last fetch, so tokens naming random
//!   keys cannot turn this process into a load generator against the issuer.
//! - While no keys are loaded, a failed fetch is retried after `missing_keys_retry_interval`,
//!   doubling with each failure up to `min_refresh_interval`: nothing can be verified
//!   meanwhile, but a dead issuer is not asked on every request either. A set without a
//!   usable key counts as a failure.
//! - Fetches are serialised (one in flight), bounded in time and size
//!   ([`dpop_core::jwt::MAX_JWKS_BYTES`]). A discovered `jwks_uri` is forgotten when
//!   fetching from it fails: the issuer may have moved its keys.
//!
//! Locking: the current set sits behind a std `RwLock` held only to clone an `Arc`; the
//! fetch state behind a Tokio mutex held across the fetch. Times are Tokio's, so tests
//! can move them with a paused clock.

use std::fmt;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use dpop_core::failure::{DEFAULT_SUMMARY_INTERVAL, FailureReporter, error_chain};
use dpop_core::jwt::{self, JwkSet, TokenError};
use tokio::time::Instant;

use crate::fetch::{FetchError, Fetcher};
use crate::metadata::{DiscoveryError, Metadata};
use crate::url::{EndpointUrl, IssuerUrl};

/// Where the keys are.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum KeySource {
    /// The `jwks_uri` of the issuer's metadata.
    Discover(IssuerUrl),
    /// A configured `jwks_uri`, used as is.
    Uri(EndpointUrl),
}

/// Intervals of [`RemoteJwks`].
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub struct JwksTimings {
    /// Keys older than this are fetched again. Defaults to 5 minutes.
    pub refresh_interval: Duration,
    /// Fetches are at least this far apart once keys are loaded (an unknown `kid` or a
    /// stale set cannot trigger more). Defaults to 30 s.
    pub min_refresh_interval: Duration,
    /// While no keys are loaded, the wait after the first failed fetch; it doubles with
    /// each further failure, up to `min_refresh_interval`. Defaults to 1 s.
    pub missing_keys_retry_interval: Duration,
}

impl JwksTimings {
    /// The defaults, for `const` contexts.
    pub const DEFAULT: Self = Self {
        refresh_interval: Duration::from_secs(300),
        min_refresh_interval: Duration::from_secs(30),
        missing_keys_retry_interval: Duration::from_secs(1),
    };
}

impl Default for JwksTimings {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// Why the keys are not available.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JwksError {
    /// Discovery failed.
    #[error("cannot discover the JWK set: {0}")]
    Discovery(#[from] DiscoveryError),
    /// The JWK set could not be fetched.
    #[error("{0}")]
    Fetch(#[from] FetchError),
    /// The JWK set is not a valid set.
    #[error("the JWK set at {uri} is unusable: {error}")]
    Invalid {
        /// Where it was fetched.
        uri: String,
        /// Why it is unusable.
        error: TokenError,
    },
    /// The set holds no usable signature key.
    #[error("the JWK set at {uri} has no usable signature key ({skipped} skipped)")]
    Empty {
        /// Where it was fetched.
        uri: String,
        /// How many keys were skipped.
        skipped: usize,
    },
    /// No keys are loaded and the last fetch failed too recently to try again.
    #[error("{} (retrying in a few seconds)", last.as_deref().unwrap_or("the JWK set is being fetched"))]
    NotLoaded {
        /// The last fetch's error.
        last: Option<String>,
    },
}

impl JwksError {
    /// Whether a document was refused for its size.
    #[must_use]
    pub fn is_too_large(&self) -> bool {
        match self {
            Self::Discovery(e) => e.is_too_large(),
            Self::Fetch(e) => e.is_too_large(),
            _ => false,
        }
    }
}

#[derive(Debug, Default)]
struct FetchState {
    /// The discovered `jwks_uri` (forgotten when fetching from it fails).
    discovered: Option<EndpointUrl>,
    last_attempt: Option<Instant>,
    last_error: Option<String>,
    /// Failed fetches in a row while no keys were ever loaded (for the back-off).
    failures_without_keys: u32,
}

impl FetchState {
    fn attempted_within(&self, interval: Duration) -> bool {
        self.last_attempt.is_some_and(|t| t.elapsed() < interval)
    }
}

struct Loaded {
    set: Arc<JwkSet>,
    fetched: Instant,
}

/// Called after every fetch with whether it succeeded (metrics).
type Observer = Box<dyn Fn(bool) + Send + Sync>;

/// An issuer's JWK set, cached (see the module docs).
pub struct RemoteJwks {
    source: KeySource,
    fetcher: Fetcher,
    timings: JwksTimings,
    keys: RwLock<Option<Loaded>>,
    fetch: tokio::sync::Mutex<FetchState>,
    observer: Option<Observer>,
    /// A failing fetch is logged once with its cause, then summarised, then its recovery.
    failures: FailureReporter,
}

impl fmt::Debug for RemoteJwks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RemoteJwks")
            .field("source", &self.source)
            .field("timings", &self.timings)
            .field("loaded", &self.is_ready())
            .finish_non_exhaustive()
    }
}

impl RemoteJwks {
    /// Keys from `source`, fetched through `fetcher`. Nothing is fetched yet.
    #[must_use]
    pub fn new(source: KeySource, fetcher: Fetcher, timings: JwksTimings) -> Self {
        Self {
            source,
            fetcher,
            timings,
            keys: RwLock::new(None),
            fetch: tokio::sync::Mutex::new(FetchState::default()),
            observer: None,
            failures: FailureReporter::new("issuer keys fetch", DEFAULT_SUMMARY_INTERVAL),
        }
    }

    /// Calls `observer` after every fetch with whether it succeeded.
    #[must_use]
    pub fn with_observer(mut self, observer: impl Fn(bool) + Send + Sync + 'static) -> Self {
        self.observer = Some(Box::new(observer));
        self
    }

    /// Where the keys come from.
    #[must_use]
    pub fn source(&self) -> &KeySource {
        &self.source
    }

    /// The keys loaded now, if any, without fetching.
    #[must_use]
    pub fn current(&self) -> Option<Arc<JwkSet>> {
        self.loaded().map(|(set, _)| set)
    }

    fn loaded(&self) -> Option<(Arc<JwkSet>, Instant)> {
        self.keys
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .map(|l| (Arc::clone(&l.set), l.fetched))
    }

    /// Whether keys are loaded (readiness).
    #[must_use]
    pub fn is_ready(&self) -> bool {
        self.keys
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some()
    }

    /// The wait after a failed fetch while no keys are loaded.
    fn retry_interval(&self, failures: u32) -> Duration {
        let base = self.timings.missing_keys_retry_interval;
        let doubled = base.saturating_mul(1_u32 << failures.saturating_sub(1).min(16));
        doubled.min(self.timings.min_refresh_interval.max(base))
    }

    /// Keys to verify with: cached ones, fetched again when stale (by whoever gets there
    /// first), fetched on first use.
    ///
    /// # Errors
    /// When no keys are loaded and they cannot be fetched now ([`JwksError::NotLoaded`]
    /// while waiting to retry).
    pub async fn keys(&self) -> Result<Arc<JwkSet>, JwksError> {
        match self.loaded() {
            Some((set, fetched)) if fetched.elapsed() < self.timings.refresh_interval => Ok(set),
            Some((stale, _)) => {
                let Ok(mut state) = self.fetch.try_lock() else {
                    return Ok(stale);
                };
                if let Some(set) = self.current()
                    && !Arc::ptr_eq(&set, &stale)
                {
                    return Ok(set);
                }
                if state.attempted_within(self.timings.min_refresh_interval) {
                    return Ok(stale);
                }
                Ok(self.fetch_locked(&mut state).await.unwrap_or(stale))
            }
            None => {
                let mut state = self.fetch.lock().await;
                if let Some(set) = self.current() {
                    return Ok(set);
                }
                let wait = self.retry_interval(state.failures_without_keys);
                if state.attempted_within(wait) {
                    return Err(JwksError::NotLoaded {
                        last: state.last_error.clone(),
                    });
                }
                self.fetch_locked(&mut state).await
            }
        }
    }

    /// After a token named a `kid` that `seen` lacks: newer keys if another caller just
    /// fetched them, else a fetch now unless one ran within `min_refresh_interval` (then
    /// `None`: the token is refused as naming an unknown key).
    ///
    /// # Errors
    /// When the fetch fails.
    pub async fn after_unknown_kid(
        &self,
        seen: &Arc<JwkSet>,
    ) -> Result<Option<Arc<JwkSet>>, JwksError> {
        let mut state = self.fetch.lock().await;
        if let Some(set) = self.current()
            && !Arc::ptr_eq(&set, seen)
        {
            return Ok(Some(set));
        }
        if state.attempted_within(self.timings.min_refresh_interval) {
            tracing::debug!(target: "dpop::jwks", source = ?self.source, "unknown kid; key refresh rate-limited");
            return Ok(None);
        }
        self.fetch_locked(&mut state).await.map(Some)
    }

    /// The last fetch's error, if the last fetch failed.
    pub async fn last_error(&self) -> Option<String> {
        self.fetch.lock().await.last_error.clone()
    }

    /// Fetches the keys now, whatever the intervals say (start-up, a background task).
    /// On failure the previous keys stay in use.
    ///
    /// # Errors
    /// When discovery or the fetch fails.
    pub async fn refresh(&self) -> Result<Arc<JwkSet>, JwksError> {
        let mut state = self.fetch.lock().await;
        self.fetch_locked(&mut state).await
    }

    /// Fetches (the caller holds the fetch lock) and installs the keys.
    async fn fetch_locked(&self, state: &mut FetchState) -> Result<Arc<JwkSet>, JwksError> {
        state.last_attempt = Some(Instant::now());
        let result = self.fetch_set(state).await;
        if let Some(observer) = &self.observer {
            observer(result.is_ok());
        }
        match result {
            Ok(set) => {
                if let Some(report) = self.failures.success(std::time::Instant::now()) {
                    tracing::info!(target: "dpop::jwks", source = ?self.source, "{report}");
                }
                tracing::info!(target: "dpop::jwks", source = ?self.source, keys = set.len(), skipped = set.skipped(), "issuer keys loaded");
                let set = Arc::new(set);
                *self.keys.write().unwrap_or_else(PoisonError::into_inner) = Some(Loaded {
                    set: Arc::clone(&set),
                    fetched: Instant::now(),
                });
                state.last_error = None;
                state.failures_without_keys = 0;
                Ok(set)
            }
            Err(e) => {
                // Once with its cause, then a summary a minute at most: a fetch retried
                // every second while no keys are loaded must not flood the log.
                if let Some(report) = self
                    .failures
                    .failure(std::time::Instant::now(), error_chain(&e))
                {
                    tracing::warn!(target: "dpop::jwks", source = ?self.source, "{report}");
                } else {
                    tracing::debug!(target: "dpop::jwks", source = ?self.source, error = %e, "cannot fetch the issuer's keys");
                }
                state.last_error = Some(e.to_string());
                if !self.is_ready() {
                    state.failures_without_keys = state.failures_without_keys.saturating_add(1);
                }
                Err(e)
            }
        }
    }

    async fn fetch_set(&self, state: &mut FetchState) -> Result<JwkSet, JwksError> {
        let uri = match (&self.source, &state.discovered) {
            (KeySource::Uri(uri), _) | (KeySource::Discover(_), Some(uri)) => uri.clone(),
            (KeySource::Discover(issuer), None) => {
                let meta = Metadata::discover(&self.fetcher, issuer).await?;
                let uri = meta.jwks_uri()?;
                state.discovered = Some(uri.clone());
                uri
            }
        };
        let result = async {
            let text = self.fetcher.get(&uri, jwt::MAX_JWKS_BYTES).await?;
            let set = JwkSet::from_json(&text).map_err(|error| JwksError::Invalid {
                uri: uri.to_string(),
                error,
            })?;
            if set.is_empty() {
                return Err(JwksError::Empty {
                    uri: uri.to_string(),
                    skipped: set.skipped(),
                });
            }
            Ok(set)
        }
        .await;
        if result.is_err() {
            state.discovered = None;
        }
        result
    }
}
