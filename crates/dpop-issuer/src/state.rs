//! What every request handler shares: the configuration, the database, the keys, the
//! proof verifiers and nonces, the client-secret cache and limits, the trusted issuers,
//! the clock and the metrics. [`crate::Issuer::open`] builds it once.

use std::sync::Arc;

use dpop_core::{Clock, Htu, StatelessNonces, UnixTime, Verifier};

use crate::auth_limits::AttemptLimiter;
use crate::config::IssuerConfig;
use crate::error::OAuthError;
use crate::keys::KeyRing;
use crate::metrics::Metrics;
use crate::secret::SecretCache;
use crate::store::Store;
use crate::trust::TrustedIssuers;

/// Everything a request handler needs.
pub(crate) struct IssuerState {
    pub(crate) config: IssuerConfig,
    pub(crate) store: Store,
    pub(crate) keys: KeyRing,
    /// Proofs at the token endpoint (with server nonces when configured).
    pub(crate) verifier: Verifier,
    /// Nonces issued at the token endpoint.
    pub(crate) nonces: Option<Arc<StatelessNonces>>,
    /// Resource servers' proofs sent to the introspection endpoint (their own nonces are
    /// theirs to check).
    pub(crate) rs_verifier: Verifier,
    pub(crate) token_htu: Htu,
    pub(crate) secrets: SecretCache,
    /// Failed client-secret checks per client id and address.
    pub(crate) limiter: AttemptLimiter,
    pub(crate) trust: TrustedIssuers,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) metrics: Metrics,
}

impl std::fmt::Debug for IssuerState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuerState")
            .field("issuer", &self.config.issuer)
            .finish_non_exhaustive()
    }
}

impl IssuerState {
    /// The current time, or `temporarily_unavailable` when the clock has none.
    pub(crate) fn now(&self) -> Result<UnixTime, OAuthError> {
        self.clock
            .now()
            .ok_or_else(|| OAuthError::server_error("the system clock is before 1970"))
    }

    /// `/readyz`, on the public and the admin listener: the database answers and a
    /// signing key is held (not a signature: a device is not asked at every probe). JSON
    /// in the gateway's shape (`{"database_reachable":true,"ready":true,"signing_key":true}`).
    pub(crate) async fn readiness(&self) -> dpop_server::Readiness {
        let signing_key = self
            .clock
            .now()
            .is_some_and(|now| self.keys.current().signing(now).is_some());
        dpop_server::Readiness::checks(&[
            ("database_reachable", self.store.ping().await),
            ("signing_key", signing_key),
        ])
    }
}
