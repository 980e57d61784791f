//! The replay store the gateway was configured with.

use std::sync::Arc;

use dpop_core::failure::{DEFAULT_SUMMARY_INTERVAL, FailureReporter, error_chain};
use dpop_core::{
    AsyncReplayStore, Insert, MemoryReplayConfig, MemoryReplayStore, ReplayKey, ReplayStore,
    ReplayStoreError, UnixTime,
};
use dpop_redis::{RedisReplayStore, RedisStoreConfig};

use crate::config::ReplayStoreConfig;
use crate::error::GatewayError;

/// In memory (one instance) or Redis (shared by instances). Clones share the store: a
/// configuration reload keeps every recorded proof.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum GatewayStore {
    /// This process only.
    Memory(Arc<MemoryReplayStore>),
    /// Shared through Redis; failures are logged once with their cause, then
    /// summarised, then the recovery.
    Redis(RedisReplayStore, Arc<FailureReporter>),
}

impl GatewayStore {
    /// Opens the configured store. Redis is connected eagerly: a gateway that cannot
    /// reach its replay store must not start (it would refuse every request anyway).
    ///
    /// # Errors
    /// When Redis cannot be reached or the URL is invalid.
    pub async fn open(config: &ReplayStoreConfig) -> Result<Self, GatewayError> {
        match config {
            ReplayStoreConfig::Memory { capacity } => {
                let mut c = MemoryReplayConfig::default();
                c.capacity = *capacity;
                Ok(Self::Memory(Arc::new(MemoryReplayStore::new(c))))
            }
            ReplayStoreConfig::Redis {
                url,
                timeout,
                username,
                password,
                wait_replicas,
                wait_timeout,
                sentinel_username,
                sentinel_password,
            } => {
                let mut c = RedisStoreConfig::new(url.clone());
                c.command_timeout = *timeout;
                c.username.clone_from(username);
                c.password = password.as_ref().map(|p| p.as_str().to_owned());
                c.wait_replicas = *wait_replicas;
                c.wait_timeout = *wait_timeout;
                c.sentinel_username.clone_from(sentinel_username);
                c.sentinel_password = sentinel_password.as_ref().map(|p| p.as_str().to_owned());
                RedisReplayStore::connect(c)
                    .await
                    .map(|r| {
                        Self::Redis(
                            r,
                            Arc::new(FailureReporter::new(
                                "replay store",
                                DEFAULT_SUMMARY_INTERVAL,
                            )),
                        )
                    })
                    .map_err(|e| GatewayError::ReplayStore(e.to_string()))
            }
        }
    }

    /// Whether the store answers (for `/readyz`).
    pub async fn ready(&self) -> bool {
        match self {
            Self::Memory(_) => true,
            Self::Redis(r, failures) => {
                let result = r.ping().await;
                report(failures, result.as_ref().err());
                result.is_ok()
            }
        }
    }

    /// A label for logs and metrics.
    #[must_use]
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Memory(_) => "memory",
            Self::Redis(..) => "redis",
        }
    }
}

impl AsyncReplayStore for GatewayStore {
    async fn insert_if_absent(
        &self,
        key: &ReplayKey,
        expires_at: UnixTime,
        now: UnixTime,
    ) -> Result<Insert, ReplayStoreError> {
        match self {
            Self::Memory(m) => ReplayStore::insert_if_absent(&**m, key, expires_at, now),
            Self::Redis(r, failures) => {
                let result = AsyncReplayStore::insert_if_absent(r, key, expires_at, now).await;
                report(failures, result.as_ref().err());
                result
            }
        }
    }
}

/// Logs a Redis failure or recovery through `failures` (rate-limited).
fn report(failures: &FailureReporter, error: Option<&ReplayStoreError>) {
    match error {
        Some(e) => {
            if let Some(report) = failures.failure(std::time::Instant::now(), error_chain(e)) {
                tracing::error!(target: "dpop::replay", "{report}");
            }
        }
        // Reads one flag while the store works: no clock, no lock.
        None if failures.is_failing() => {
            if let Some(report) = failures.success(std::time::Instant::now()) {
                tracing::info!(target: "dpop::replay", "{report}");
            }
        }
        None => {}
    }
}
