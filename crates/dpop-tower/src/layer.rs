//! [`DpopLayer`]: settings and shared state.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use dpop_core::{
    Algorithm, AsyncReplayStore, Clock, DEFAULT_ALGORITHMS, NonceValidator, SystemClock, Verifier,
    VerifierConfig,
};
use tower::Layer;

use crate::config::{HtuRule, HtuSource, Routes};
use crate::events::{DpopEvents, NoEvents};
use crate::service::DpopService;
use crate::tokens::{TokenCache, TokenSource};

/// Why a layer could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A route requires nonces but no nonce secret was configured.
    #[error("a route requires DPoP nonces but no nonce secret is configured")]
    NoncesNotConfigured,
    /// The public URL is not an absolute http(s) URL without query or fragment.
    #[error("the public URL {0:?} is not an absolute http(s) URL without query or fragment")]
    BadPublicUrl(String),
    /// An allowed host is not a valid `name` or `name:port`.
    #[error("the allowed host {0:?} is not a valid host or host:port")]
    BadAllowedHost(String),
    /// Neither a public URL nor allowed hosts: the client would choose the host its
    /// proof is checked against.
    #[error(
        "set a public URL (one or more) or a list of allowed hosts: without either, a proof made for another service would be accepted here"
    )]
    NoHostRule,
    /// Two routes have the same path prefix (ignoring a trailing `/`, letter case and
    /// suffixes) and a common method, so one would silently shadow the other.
    #[error("two routes for the path prefix {0:?} cover the same methods; merge them")]
    DuplicateRoute(String),
    /// A route's path prefix is not a canonical path, or a method is not upper case.
    #[error("route {0:?}: {1}")]
    BadRoute(String, dpop_core::TargetError),
    /// The core rejected the verifier settings.
    #[error("invalid proof verification settings: {0}")]
    Verifier(dpop_core::Error),
}

/// Settings of a [`DpopLayer`].
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

pub(crate) struct Shared<St> {
    pub(crate) settings: DpopSettings,
    pub(crate) htu_rule: HtuRule,
    pub(crate) verifier: Verifier,
    pub(crate) nonce_verifier: Option<Verifier>,
    pub(crate) algs: String,
    pub(crate) tokens: Arc<dyn TokenSource>,
    pub(crate) cache: TokenCache,
    pub(crate) store: St,
}

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
        tokens: Arc<dyn TokenSource>,
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
        let algs = verifier
            .config()
            .algorithms()
            .iter()
            .map(|a| a.name())
            .collect::<Vec<_>>()
            .join(" ");
        let cache = TokenCache::new(settings.token_cache_capacity, settings.token_cache_ttl);
        Ok(Self {
            shared: Arc::new(Shared {
                settings,
                htu_rule,
                verifier,
                nonce_verifier,
                algs,
                tokens,
                cache,
                store,
            }),
        })
    }

    /// The token source (e.g. for readiness checks).
    #[must_use]
    pub fn tokens(&self) -> &Arc<dyn TokenSource> {
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
