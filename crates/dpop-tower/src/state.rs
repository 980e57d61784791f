//! The state every clone of a [`crate::DpopLayer`] and its services shares: the settings,
//! checked once, and what is derived from them when the layer is built.

use std::sync::Arc;

use dpop_core::{NonceValidator, Verifier, VerifierConfig};

use crate::config::{HtuRule, HtuSource};
use crate::error::ConfigError;
use crate::metadata::PreparedMetadata;
use crate::response::Challenges;
use crate::settings::DpopSettings;
use crate::tokens::{TokenCache, TokenVerifier};

pub(crate) struct Shared<St> {
    pub(crate) settings: DpopSettings,
    pub(crate) htu_rule: HtuRule,
    pub(crate) verifier: Verifier,
    pub(crate) nonce_verifier: Option<Verifier>,
    pub(crate) challenges: Challenges,
    pub(crate) metadata: Option<PreparedMetadata>,
    pub(crate) tokens: Arc<dyn TokenVerifier>,
    pub(crate) cache: TokenCache,
    pub(crate) store: St,
}

impl<St> Shared<St> {
    /// Checks `settings` and prepares what requests need from them.
    pub(crate) fn new(
        settings: DpopSettings,
        tokens: Arc<dyn TokenVerifier>,
        store: St,
    ) -> Result<Self, ConfigError> {
        let htu_rule = HtuRule::new(&settings.htu).map_err(|bad| match (&settings.htu, bad) {
            (_, bad) if bad.is_empty() => ConfigError::NoHostRule,
            (HtuSource::FromRequest { .. }, bad) => ConfigError::BadAllowedHost(bad),
            (_, bad) => ConfigError::BadPublicUrl(bad),
        })?;
        if let Some(route) = settings.routes.first_overlap() {
            return Err(ConfigError::DuplicateRoute(route.path_prefix.clone()));
        }
        for route in settings.routes.routes() {
            let bad = |e| ConfigError::BadRoute(route.path_prefix.clone(), e);
            let prefix = dpop_core::RequestTarget::parse(&route.path_prefix).map_err(bad)?;
            if prefix.query().is_some() {
                return Err(bad(dpop_core::TargetError::InvalidCharacter));
            }
            for m in route.methods.iter().flatten() {
                dpop_core::target::check_method(m.as_str()).map_err(bad)?;
            }
        }
        let needs_nonces = settings.routes.policies().any(|p| p.require_nonce);
        if needs_nonces && settings.nonces.is_none() {
            return Err(ConfigError::NoncesNotConfigured);
        }
        let build = |nonces: Option<Arc<dyn NonceValidator>>| -> Result<Verifier, ConfigError> {
            let algs = VerifierConfig::builder()
                .with_algorithms(&settings.algorithms)
                .map_err(ConfigError::Verifier)?;
            let mut cfg = match nonces {
                Some(n) => algs.with_nonces(n),
                None => algs.without_nonces(),
            };
            cfg.max_age = settings.proof_max_age;
            cfg.future_leeway = settings.proof_future_leeway;
            Verifier::new(cfg).map_err(ConfigError::Verifier)
        };
        let verifier = build(None)?;
        let nonce_verifier = settings
            .nonces
            .clone()
            .map(|n| build(Some(n)))
            .transpose()?;
        let challenges = Challenges::new(verifier.config().algorithms(), settings.realm.as_deref());
        let metadata = settings
            .resource_metadata
            .as_ref()
            .map(|m| PreparedMetadata::new(m, verifier.config().algorithms(), &settings.routes));
        let cache = TokenCache::new(settings.token_cache_capacity, settings.token_cache_ttl);
        Ok(Self {
            settings,
            htu_rule,
            verifier,
            nonce_verifier,
            challenges,
            metadata,
            tokens,
            cache,
            store,
        })
    }
}
