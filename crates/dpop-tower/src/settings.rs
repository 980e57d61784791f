//! [`DpopSettings`]: what a [`crate::DpopLayer`] enforces, with documented defaults.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use dpop_core::{Algorithm, Clock, DEFAULT_ALGORITHMS, NonceValidator, SystemClock};

use crate::config::{HtuSource, Routes};
use crate::events::{DpopEvents, NoEvents};
use crate::metadata::ResourceMetadata;

/// Settings of a [`crate::DpopLayer`].
#[derive(Clone)]
#[non_exhaustive]
pub struct DpopSettings {
    /// Algorithms accepted for proofs (also sent as `algs`). Defaults to ES256, ES384,
    /// EdDSA/Ed25519, PS256, RS256.
    pub algorithms: Vec<Algorithm>,
    /// The nonce scheme for routes that require nonces (share one secret across
    /// instances). Defaults to none.
    pub nonces: Option<Arc<dyn NonceValidator>>,
    /// Route policies. Defaults to DPoP required everywhere.
    pub routes: Routes,
    /// How the URI the client addressed is found.
    pub htu: HtuSource,
    /// `realm` in challenges. Defaults to none.
    pub realm: Option<String>,
    /// RFC 9728 protected resource metadata: when set, every 401 and 403 challenge carries
    /// `resource_metadata` and [`crate::DpopLayer::metadata_response`] answers the
    /// well-known path. Defaults to none.
    pub resource_metadata: Option<ResourceMetadata>,
    /// Oldest accepted proof `iat`. Defaults to 60 s.
    pub proof_max_age: Duration,
    /// Largest accepted client clock lead. Defaults to 15 s.
    pub proof_future_leeway: Duration,
    /// Verified tokens kept in the cache. Defaults to 100 000.
    pub token_cache_capacity: usize,
    /// How long a verified token is trusted without re-checking (never past its `exp`).
    /// Defaults to 5 minutes; zero disables the cache.
    pub token_cache_ttl: Duration,
    /// Metrics hooks. Defaults to none.
    pub events: Arc<dyn DpopEvents>,
    /// The clock. Defaults to the system clock.
    pub clock: Arc<dyn Clock>,
    fail_open: bool,
}

impl fmt::Debug for DpopSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DpopSettings")
            .field("algorithms", &self.algorithms)
            .field("nonces", &self.nonces.is_some())
            .field("routes", &self.routes)
            .field("htu", &self.htu)
            .field("resource_metadata", &self.resource_metadata)
            .field("proof_max_age", &self.proof_max_age)
            .field("proof_future_leeway", &self.proof_future_leeway)
            .field("fail_open", &self.fail_open)
            .finish_non_exhaustive()
    }
}

impl DpopSettings {
    /// Defaults, with the `htu` taken from `htu`.
    #[must_use]
    pub fn new(htu: HtuSource) -> Self {
        Self {
            algorithms: DEFAULT_ALGORITHMS.to_vec(),
            nonces: None,
            routes: Routes::default(),
            htu,
            realm: None,
            resource_metadata: None,
            proof_max_age: Duration::from_secs(60),
            proof_future_leeway: Duration::from_secs(15),
            token_cache_capacity: 100_000,
            token_cache_ttl: Duration::from_secs(300),
            events: Arc::new(NoEvents),
            clock: Arc::new(SystemClock),
            fail_open: false,
        }
    }

    /// Lets requests through when the replay store fails (errors or times out), instead
    /// of refusing them with 503. Replays are then possible while the store is down;
    /// every such request is logged and counted as `FailedOpen`.
    pub fn dangerous_fail_open_on_replay_store_errors(&mut self) {
        self.fail_open = true;
    }

    pub(crate) fn fails_open(&self) -> bool {
        self.fail_open
    }
}
