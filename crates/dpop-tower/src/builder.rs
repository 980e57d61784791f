//! [`DpopLayerBuilder`]: a [`DpopLayer`] in a few lines, with the settings' defaults and
//! an in-memory replay store unless told otherwise.

use std::fmt;
use std::sync::Arc;

use dpop_core::jwt::{JwkSet, JwtValidation};
use dpop_core::{AsyncReplayStore, MemoryReplayConfig, MemoryReplayStore, NonceValidator};

use crate::config::{HtuSource, Routes};
use crate::error::ConfigError;
use crate::events::DpopEvents;
use crate::keys::StaticKeys;
use crate::layer::DpopLayer;
use crate::metadata::ResourceMetadata;
use crate::settings::DpopSettings;
use crate::tokens::TokenVerifier;
#[cfg(feature = "jwks")]
use crate::tokens::{JwksSource, JwksSourceConfig};

/// Builds a [`DpopLayer`]. Start from [`DpopLayer::jwks`], [`DpopLayer::with_keys`] or
/// [`DpopLayer::builder`].
///
/// Every setting not given here is the [`DpopSettings`] default, and every default is the
/// strict one: DPoP required on every route, no Bearer tokens, no nonces, replay
/// protection on. One choice has no default: where the proof's `htu` host comes from.
/// Set [`Self::public_url`] (or [`Self::htu`]); without it, building fails with
/// [`ConfigError::NoHostRule`] rather than let the client pick the host its proof is
/// checked against.
#[must_use = "a builder does nothing until built"]
pub struct DpopLayerBuilder<T, St = MemoryReplayStore> {
    tokens: T,
    settings: DpopSettings,
    store: St,
}

impl<T, St> fmt::Debug for DpopLayerBuilder<T, St> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DpopLayerBuilder")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl<T> DpopLayerBuilder<T> {
    fn new(tokens: T) -> Self {
        // No host rule yet: `HtuRule::new` refuses an empty list as `NoHostRule`.
        let no_host_rule = HtuSource::PublicUrls {
            urls: Vec::new(),
            trusted_proxies: Vec::new(),
        };
        Self {
            tokens,
            settings: DpopSettings::new(no_host_rule),
            store: MemoryReplayStore::new(MemoryReplayConfig::default()),
        }
    }
}

impl<T, St> DpopLayerBuilder<T, St> {
    /// The external URL of the service (origin and optional path prefix, such as
    /// `https://api.example.com` or `https://example.com/api`): proofs must name it in
    /// `htu`, whatever `Host` the request carries. Required unless [`Self::htu`] is set.
    pub fn public_url(mut self, url: impl Into<String>) -> Self {
        self.settings.htu = HtuSource::PublicUrl(url.into());
        self
    }

    /// Where the `htu` comes from, for several public URLs or a list of allowed hosts.
    pub fn htu(mut self, htu: HtuSource) -> Self {
        self.settings.htu = htu;
        self
    }

    /// Route policies. Defaults to DPoP required on every route.
    pub fn routes(mut self, routes: Routes) -> Self {
        self.settings.routes = routes;
        self
    }

    /// Publishes RFC 9728 protected resource metadata (see [`DpopSettings::resource_metadata`]
    /// and [`DpopLayer::metadata_response`]). Defaults to none.
    pub fn resource_metadata(mut self, metadata: ResourceMetadata) -> Self {
        self.settings.resource_metadata = Some(metadata);
        self
    }

    /// The nonce scheme for routes that require nonces. Defaults to none (building fails
    /// when a route requires nonces without one).
    pub fn nonces(mut self, nonces: Arc<dyn NonceValidator>) -> Self {
        self.settings.nonces = Some(nonces);
        self
    }

    /// The one metrics hook: the layer reports every outcome to it, and a token source
    /// the builder creates reports its key fetches to it. Defaults to none.
    pub fn events(mut self, events: Arc<dyn DpopEvents>) -> Self {
        self.settings.events = events;
        self
    }

    /// Changes any other setting (algorithms, proof age, token cache, clock, realm, the
    /// `dangerous_` switches), starting from the defaults documented on [`DpopSettings`].
    pub fn settings(mut self, change: impl FnOnce(&mut DpopSettings)) -> Self {
        change(&mut self.settings);
        self
    }

    /// Records proofs in `store` instead, e.g. a shared Redis store when several
    /// instances serve one URL. Defaults to an in-memory store of 1 048 576 proofs
    /// ([`MemoryReplayConfig::default`]), which sees only this process's requests.
    pub fn replay_store<S2: AsyncReplayStore + 'static>(
        self,
        store: S2,
    ) -> DpopLayerBuilder<T, S2> {
        DpopLayerBuilder {
            tokens: self.tokens,
            settings: self.settings,
            store,
        }
    }
}

impl<St: AsyncReplayStore + 'static> DpopLayerBuilder<Arc<dyn TokenVerifier>, St> {
    /// The layer.
    ///
    /// # Errors
    /// [`ConfigError`] for inconsistent settings.
    pub fn build(self) -> Result<DpopLayer<St>, ConfigError> {
        DpopLayer::new(self.settings, self.tokens, self.store)
    }
}

#[cfg(feature = "jwks")]
impl<St: AsyncReplayStore + 'static> DpopLayerBuilder<JwksSourceConfig, St> {
    /// Changes how the issuer's keys are found and refreshed (a fixed `jwks_uri`, refresh
    /// intervals, token algorithms and leeway), starting from [`JwksSourceConfig::new`].
    pub fn jwks_settings(mut self, change: impl FnOnce(&mut JwksSourceConfig)) -> Self {
        change(&mut self.tokens);
        self
    }

    /// Fetches the issuer's keys once, then builds the layer.
    ///
    /// # Errors
    /// [`ConfigError::Tokens`] when the issuer's keys cannot be found or fetched (start-up
    /// fails rather than every request getting 503); otherwise as
    /// [`DpopLayerBuilder::build`].
    pub async fn build(self) -> Result<DpopLayer<St>, ConfigError> {
        let tokens = jwks_verifier(self.tokens, &self.settings.events)
            .await
            .map_err(ConfigError::Tokens)?;
        DpopLayer::new(self.settings, tokens, self.store)
    }
}

/// The token source behind [`DpopLayer::jwks`]: discovery and key refresh, reporting key
/// fetches to the layer's `events`, keys fetched once now.
#[cfg(feature = "jwks")]
async fn jwks_verifier(
    config: JwksSourceConfig,
    events: &Arc<dyn DpopEvents>,
) -> Result<Arc<dyn TokenVerifier>, dpop_core::Error> {
    let source = JwksSource::new(config, Arc::clone(events))?;
    source.refresh().await?;
    Ok(Arc::new(source))
}

impl DpopLayer<MemoryReplayStore> {
    /// A layer for JWT access tokens from `issuer` meant for `audience`, checked with the
    /// issuer's published keys (found through RFC 8414 / OpenID discovery, refreshed on
    /// rotation). Set [`DpopLayerBuilder::public_url`], then
    /// [`build`](DpopLayerBuilder::build) it (which fetches the keys once).
    #[cfg(feature = "jwks")]
    pub fn jwks(issuer: &str, audience: &str) -> DpopLayerBuilder<JwksSourceConfig> {
        DpopLayerBuilder::new(JwksSourceConfig::new(issuer, audience))
    }

    /// A layer for JWT access tokens from `issuer` meant for `audience`, checked with
    /// `keys` only: nothing is fetched (see [`StaticKeys`]). Token checks are
    /// [`JwtValidation::new`]'s; for others, pass a [`StaticKeys`] to
    /// [`DpopLayer::builder`].
    pub fn with_keys(
        keys: JwkSet,
        issuer: &str,
        audience: &str,
    ) -> DpopLayerBuilder<Arc<dyn TokenVerifier>> {
        let tokens = StaticKeys::new(keys, JwtValidation::new(issuer, Some(audience)));
        Self::builder(Arc::new(tokens))
    }

    /// A layer checking access tokens with `tokens` (introspection, or a source of your
    /// own).
    pub fn builder(tokens: Arc<dyn TokenVerifier>) -> DpopLayerBuilder<Arc<dyn TokenVerifier>> {
        DpopLayerBuilder::new(tokens)
    }
}
