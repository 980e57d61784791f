//! [`DpopLayer`]: the `Layer` that wraps services in [`DpopService`].

use std::fmt;
use std::sync::Arc;

use dpop_core::AsyncReplayStore;
use tower::Layer;

use crate::error::ConfigError;
use crate::service::DpopService;
use crate::settings::DpopSettings;
use crate::state::Shared;
use crate::tokens::TokenVerifier;

/// Enforces DPoP on the services it wraps (see the crate docs).
pub struct DpopLayer<St> {
    shared: Arc<Shared<St>>,
}

impl<St> Clone for DpopLayer<St> {
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<St> fmt::Debug for DpopLayer<St> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DpopLayer")
            .field("settings", &self.shared.settings)
            .finish_non_exhaustive()
    }
}

impl<St: AsyncReplayStore + 'static> DpopLayer<St> {
    /// A layer checking tokens with `tokens` and recording proofs in `store`.
    ///
    /// # Errors
    /// [`ConfigError`] for inconsistent settings (checked once, at start-up).
    pub fn new(
        settings: DpopSettings,
        tokens: Arc<dyn TokenVerifier>,
        store: St,
    ) -> Result<Self, ConfigError> {
        Ok(Self {
            shared: Arc::new(Shared::new(settings, tokens, store)?),
        })
    }

    /// The token source (e.g. for readiness checks).
    #[must_use]
    pub fn tokens(&self) -> &Arc<dyn TokenVerifier> {
        &self.shared.tokens
    }

    /// The replay store.
    #[must_use]
    pub fn store(&self) -> &St {
        &self.shared.store
    }
}

impl<S, St> Layer<S> for DpopLayer<St> {
    type Service = DpopService<S, St>;

    fn layer(&self, inner: S) -> Self::Service {
        DpopService::new(inner, Arc::clone(&self.shared))
    }
}
