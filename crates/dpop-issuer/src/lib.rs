//! An OAuth 2.0 authorization server that issues short-lived, DPoP-bound (RFC 9449)
//! access tokens to workloads: services, CI/CD jobs, agents, command-line tools.
//!
//! - Grants: `client_credentials`, `refresh_token` (rotation, reuse detection) and token
//!   exchange (RFC 8693) of external workload tokens (CI job tokens, Kubernetes
//!   service-account tokens) or of its own access tokens.
//! - Client authentication: `client_secret_basic`, `client_secret_post` (Argon2 hashes),
//!   `private_key_jwt` (RFC 7523), and `none` for public clients, which must use DPoP.
//!   Unknown client ids cost what wrong secrets cost, and failed secret checks are
//!   limited per client id and per address ([`config::AuthLimits`]).
//! - Endpoints: RFC 8414 metadata, JWKS, token, introspection (RFC 7662, with an
//!   extension that checks a resource server's DPoP proof too) and revocation (RFC 7009).
//! - Access tokens: RFC 9068 `at+jwt`, bound with `cnf.jkt`, 5 minutes by default.
//! - State in SQLite or PostgreSQL ([`store`]); signing keys in the data directory.
//!
//! The flow of one token request (`endpoints::token`): form parsing (`form`), the DPoP
//! proof (`proof`: dpop-core's verifier, server nonces, replay records in the database),
//! client authentication (`client_auth`, `auth_limits`), the grant (`grants`), minting
//! (`tokens`, `keys`); a request without a proof authenticates its client first and is
//! refused only then if the client requires DPoP. See `ARCHITECTURE.md` for every module.

pub mod config;
pub mod error;
pub mod secret;
pub mod store;
pub mod trust;

mod access_log;
mod auth_limits;
mod client_auth;
mod endpoints;
mod environment;
mod files;
mod form;
mod grants;
mod key_source;
mod keys;
mod metrics;
mod proof;
mod random;
mod response;
mod state;
mod tokens;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use dpop_core::{Clock, Htu, NonceSecret, StatelessNonces, UnixTime, Verifier, VerifierConfig};

pub use crate::config::{DEFAULT_LISTEN, IssuerConfig, ProcessEnvironment};
pub use crate::error::{ConfigError, IssuerError, OAuthError, RfcError, StoreError};
pub use crate::keys::{DEFAULT_KEY_ACTIVATION, MAINTENANCE_INTERVAL};
pub use crate::secret::hash_secret;
pub use crate::store::Store;
pub use dpop_core::SystemClock;

use crate::auth_limits::AttemptLimiter;
use crate::key_source::KeySource;
use crate::keys::{KeyRing, NextKey};
use crate::metrics::Metrics;
use crate::random::random_bytes;
use crate::secret::SecretCache;
use crate::state::IssuerState;
use crate::trust::TrustedIssuers;

/// A running-ready issuer: its state is open (database migrated, keys loaded).
#[derive(Clone, Debug)]
pub struct Issuer {
    state: Arc<IssuerState>,
}

const NONCE_SECRET_SETTING: &str = "dpop_nonce_secret_v1";

impl Issuer {
    /// Opens the database (applying migrations), loads or creates the signing keys,
    /// disables the clients the configuration disables.
    ///
    /// # Errors
    /// [`IssuerError`] when the database, the data directory or the configuration is unusable.
    pub async fn open(config: IssuerConfig) -> Result<Self, IssuerError> {
        Self::open_with_clock(config, Arc::new(SystemClock)).await
    }

    /// [`Issuer::open`] with an injected clock (for tests).
    ///
    /// # Errors
    /// As [`Issuer::open`].
    pub async fn open_with_clock(
        config: IssuerConfig,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, IssuerError> {
        let source = KeySource::new(&config);
        // Opened once, off the executor: a device may take seconds to answer.
        let configured = match &config.keys.signing_key {
            Some(reference) => Some(
                source
                    .open_blocking(reference.clone())
                    .await
                    .map_err(|e| key_source::context("keys.signing_key", e))?,
            ),
            None => None,
        };
        Self::open_with_key(config, clock, source, configured).await
    }

    /// [`Issuer::open_with_clock`] with `[keys] signing_key` given as a ready signer
    /// instead of opened by the issuer: a key in a store dpop-keys has no backend for.
    /// `signing_key` must be set: its text is the reference recorded for the key, and
    /// `signer` must be the key it names (later starts without this signer open the
    /// reference themselves). The signer is checked with one signature first, as
    /// dpop-keys checks the keys it opens.
    ///
    /// # Errors
    /// As [`Issuer::open`]; a configuration error when `signing_key` is not set or the
    /// signer does not sign with `signing_alg`, a key error when its signature does not
    /// verify.
    pub async fn open_with_signer(
        config: IssuerConfig,
        clock: Arc<dyn Clock>,
        signer: Arc<dyn dpop_core::Signer>,
    ) -> Result<Self, IssuerError> {
        let Some(reference) = config.keys.signing_key.clone() else {
            return Err(ConfigError::new(
                "keys.signing_key must be set to name the signer the issuer is given",
            )
            .into());
        };
        let source = KeySource::new(&config);
        let checked = Arc::clone(&signer);
        tokio::task::spawn_blocking(move || dpop_keys::self_check(&*checked))
            .await
            .map_err(|e| IssuerError::Keys(format!("key {reference}: the check failed: {e}")))?
            .map_err(|why| {
                IssuerError::Keys(format!(
                    "key {reference}: its test signature does not verify ({why}); refusing it"
                ))
            })?;
        let opened = source.adopt(&reference, signer)?;
        Self::open_with_key(config, clock, source, Some(opened)).await
    }

    async fn open_with_key(
        config: IssuerConfig,
        clock: Arc<dyn Clock>,
        source: KeySource,
        configured: Option<key_source::OpenedKey>,
    ) -> Result<Self, IssuerError> {
        let now = clock
            .now()
            .ok_or_else(|| IssuerError::Keys("the system clock has no time".to_owned()))?;
        // The data directory holds the private keys and, by default, the database with
        // the nonce secret: for this user only.
        files::private_dir(&config.data_dir).map_err(IssuerError::Keys)?;
        let store = Store::connect(&config.database).await?;
        let keys = KeyRing::open(
            &store,
            &config.data_dir,
            source,
            config.signing_alg,
            configured,
            now,
        )
        .await?;
        for client in config.clients.values().filter(|c| !c.enabled) {
            store.disable_client(&client.id, now).await?;
        }

        // One nonce secret for every instance sharing the database.
        let fresh = keys::b64(&random_bytes::<32>().map_err(IssuerError::Keys)?);
        let secret_b64 = store.setting_or_init(NONCE_SECRET_SETTING, &fresh).await?;
        let secret = zeroize::Zeroizing::new(
            base64::Engine::decode(
                &base64::engine::general_purpose::URL_SAFE_NO_PAD,
                secret_b64.as_bytes(),
            )
            .map_err(|_| {
                IssuerError::Keys("the stored nonce secret is not base64url".to_owned())
            })?,
        );
        let nonces = if config.dpop.nonce {
            // The key id is derived from the secret, so every instance sharing the
            // database issues and accepts the same nonces.
            let nonce_secret = NonceSecret::new(&secret)
                .map_err(|e| IssuerError::Keys(format!("nonce secret: {e}")))?;
            let lifetime = config.dpop.nonce_lifetime.as_secs();
            Some(Arc::new(
                StatelessNonces::new(nonce_secret)
                    .with_timing((lifetime / 3).max(1), lifetime)
                    .map_err(|e| IssuerError::Keys(format!("nonce timing: {e}")))?,
            ))
        } else {
            None
        };
        let verifier = proof_verifier(&config, nonces.as_ref())?;
        let rs_verifier = proof_verifier(&config, None)?;
        let token_htu = Htu::parse(&config.token_endpoint()).map_err(|e| {
            ConfigError::new(format!("issuer: the token endpoint URL is unusable: {e}"))
        })?;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| IssuerError::Keys(format!("cannot build the HTTP client: {e}")))?;
        let trust = TrustedIssuers::new(config.trust.clone(), http).map_err(ConfigError::new)?;
        // Argon2 with the configured clients' parameters: tens of milliseconds, off the
        // async threads.
        let configured: Vec<secret::ClientSecret> = config
            .clients
            .values()
            .filter_map(|c| c.secret.clone())
            .collect();
        let stand_in =
            tokio::task::spawn_blocking(move || secret::ClientSecret::stand_in(&configured))
                .await
                .map_err(|e| {
                    IssuerError::Keys(format!("cannot make the stand-in secret hash: {e}"))
                })?
                .map_err(IssuerError::Keys)?;
        warn_of_cheaper_secrets(&config, &stand_in);
        let secrets = SecretCache::new(stand_in).map_err(IssuerError::Keys)?;
        let limiter = AttemptLimiter::new(&config.auth_limits);
        Ok(Self {
            state: Arc::new(IssuerState {
                config,
                store,
                keys,
                verifier,
                nonces,
                rs_verifier,
                token_htu,
                secrets,
                limiter,
                trust,
                clock,
                metrics: Metrics::new(),
            }),
        })
    }

    /// The HTTP endpoints, as an axum router (for embedding or in-process tests). Serve
    /// it with `into_make_service_with_connect_info::<SocketAddr>()`, as
    /// [`Issuer::serve_on`] does, for the per-address limits on failed client
    /// authentication; without connection info only the per-client-id limit applies.
    pub fn router(&self) -> axum::Router {
        endpoints::router(Arc::clone(&self.state))
    }

    /// The configuration in use.
    #[must_use]
    pub fn config(&self) -> &IssuerConfig {
        &self.state.config
    }

    /// The database.
    #[must_use]
    pub fn store(&self) -> &Store {
        &self.state.store
    }

    /// The key id new tokens are signed with now.
    #[must_use]
    pub fn signing_kid(&self) -> String {
        let now = self.state.clock.now().unwrap_or(UnixTime::from_secs(0));
        self.state
            .keys
            .current()
            .signing(now)
            .map(|k| k.kid.clone())
            .unwrap_or_default()
    }

    /// Re-reads signing keys (rotation elsewhere) and purges expired state. The server
    /// calls it every [`MAINTENANCE_INTERVAL`].
    ///
    /// # Errors
    /// [`IssuerError`] when the database or the key directory fails.
    pub async fn maintain(&self) -> Result<(), IssuerError> {
        let now = self
            .state
            .clock
            .now()
            .ok_or_else(|| IssuerError::Keys("the system clock has no time".to_owned()))?;
        self.state.keys.reload(&self.state.store, now).await?;
        self.state.store.purge(now).await?;
        Ok(())
    }

    /// Listens on the configured address and serves until `shutdown` completes, then
    /// finishes in-flight requests. The admin listener (when configured) is bound first,
    /// so once the serving port accepts connections the admin port does too.
    ///
    /// # Errors
    /// [`IssuerError::Listen`] when an address cannot be bound.
    pub async fn serve(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), IssuerError> {
        let admin = self.bind_admin().await?;
        let addr = self.state.config.listen;
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| IssuerError::Listen { addr, source })?;
        self.serve_with(listener, admin, shutdown).await
    }

    /// [`Issuer::serve`] on a listener the caller bound.
    ///
    /// # Errors
    /// [`IssuerError::Listen`] when the listener fails or the admin address cannot be
    /// bound.
    pub async fn serve_on(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), IssuerError> {
        let admin = self.bind_admin().await?;
        self.serve_with(listener, admin, shutdown).await
    }

    /// The configured admin listener, bound.
    async fn bind_admin(&self) -> Result<Option<tokio::net::TcpListener>, IssuerError> {
        let Some(addr) = self.state.config.admin_listen else {
            return Ok(None);
        };
        tokio::net::TcpListener::bind(addr)
            .await
            .map(Some)
            .map_err(|source| IssuerError::Listen { addr, source })
    }

    async fn serve_with(
        self,
        listener: tokio::net::TcpListener,
        admin: Option<tokio::net::TcpListener>,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), IssuerError> {
        let addr: SocketAddr = listener
            .local_addr()
            .map_err(|source| IssuerError::Listen {
                addr: self.state.config.listen,
                source,
            })?;
        tracing::info!(target: "dpop::issuer", %addr, issuer = %self.state.config.issuer, "issuer listening");
        let admin = admin.map(|l| {
            let shown = l.local_addr().map_or_else(|e| e.to_string(), |a| a.to_string());
            tracing::info!(target: "dpop::issuer", addr = %shown, "admin listening (/healthz, /readyz, /metrics)");
            let state = Arc::clone(&self.state);
            tokio::spawn(dpop_server::admin::serve(
                l,
                self.state.metrics.registry(),
                move || {
                    let state = Arc::clone(&state);
                    async move { state.readiness().await }
                },
            ))
        });
        let maintenance = {
            let this = self.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(MAINTENANCE_INTERVAL);
                tick.tick().await;
                loop {
                    tick.tick().await;
                    if let Err(e) = this.maintain().await {
                        tracing::warn!(target: "dpop::issuer", error = %e, "maintenance failed");
                    }
                }
            })
        };
        // The peer address feeds the failed-authentication limits.
        let app = self
            .router()
            .into_make_service_with_connect_info::<SocketAddr>();
        let result = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
            .map_err(|source| IssuerError::Listen { addr, source });
        maintenance.abort();
        if let Some(a) = admin {
            a.abort();
        }
        self.state.store.close().await;
        result
    }
}

/// Creates a new signing key in the data directory, published at once and signing from
/// `now + activate_in`, when the others retire; their public keys stay in the JWKS until
/// every token they signed has expired. Give running instances and resource servers
/// time to learn the new key: [`DEFAULT_KEY_ACTIVATION`] is the usual delay. Returns the
/// new key id.
///
/// # Errors
/// [`IssuerError`] when the database or the data directory fails; a configuration error
/// when `[keys] signing_key` is set, whose keys the operator manages: name the next one
/// with [`rotate_key_to`] (a software key is never made in their place).
pub async fn rotate_key(
    config: &IssuerConfig,
    now: UnixTime,
    activate_in: Duration,
) -> Result<String, IssuerError> {
    if let Some(current) = &config.keys.signing_key {
        return Err(ConfigError::new(format!(
            "[keys] signing_key is set ({current}): give the next key's reference \
             (dpop issuer rotate-key --key REF); the issuer does not make a software key in its place"
        ))
        .into());
    }
    rotate(
        config,
        NextKey::Generate(config.signing_alg),
        now,
        activate_in,
    )
    .await
}

/// [`rotate_key`] to a key the operator manages: `key` (a `file:` key or a device key) is
/// opened and checked, its reference recorded in the data directory
/// (`keys/<kid>.ref`), and it is published at once and signs from `now + activate_in`.
/// A key that was ever published before is refused.
///
/// # Errors
/// A configuration error when the key cannot be used as named (a file others can read,
/// another algorithm than `signing_alg`, a backend not built in, a wrong PIN) or was
/// published before; [`IssuerError::Keys`] when its device does not answer; as
/// [`rotate_key`] otherwise.
pub async fn rotate_key_to(
    config: &IssuerConfig,
    key: &config::KeyReference,
    now: UnixTime,
    activate_in: Duration,
) -> Result<String, IssuerError> {
    let opened = KeySource::new(config).open_blocking(key.clone()).await?;
    rotate(config, NextKey::Reference(opened), now, activate_in).await
}

async fn rotate(
    config: &IssuerConfig,
    next: NextKey,
    now: UnixTime,
    activate_in: Duration,
) -> Result<String, IssuerError> {
    let store = Store::connect(&config.database).await?;
    // Tokens signed just before the retirement live for the longest lifetime; add a
    // minute for clock skew and resource servers' JWKS caches, and the maintenance
    // interval, during which an instance may still sign with the retired key.
    let publish_for =
        config.max_access_token_lifetime() + Duration::from_secs(60) + MAINTENANCE_INTERVAL;
    let kid = KeyRing::rotate(
        &store,
        &config.data_dir,
        next,
        now,
        activate_in,
        publish_for,
    )
    .await;
    store.close().await;
    kid
}

/// Disables (`true`) or re-enables a client. Disabling revokes its refresh tokens and
/// makes every access token issued to it so far inactive at introspection; it takes
/// effect on running instances at once. Token issue times have one-second resolution,
/// so tokens issued in the second of the disabling stay revoked after re-enabling too.
///
/// # Errors
/// [`IssuerError::UnknownClient`], or the database fails.
pub async fn set_client_disabled(
    config: &IssuerConfig,
    client_id: &str,
    disabled: bool,
    now: UnixTime,
) -> Result<(), IssuerError> {
    if !config.clients.contains_key(client_id) {
        return Err(IssuerError::UnknownClient(client_id.to_owned()));
    }
    let store = Store::connect(&config.database).await?;
    if disabled {
        store.disable_client(client_id, now).await?;
    } else {
        store.enable_client(client_id).await?;
    }
    store.close().await;
    Ok(())
}

/// Warns of clients whose secret hash has cheaper Argon2 parameters than `stand_in` (the
/// costliest configured): a wrong secret for them is refused faster than one for an
/// unknown id, so their ids can be told apart (see `secret`).
fn warn_of_cheaper_secrets(config: &IssuerConfig, stand_in: &secret::ClientSecret) {
    let cheaper: Vec<&str> = config
        .clients
        .values()
        .filter(|c| {
            c.secret
                .as_ref()
                .is_some_and(|s| !s.same_parameters(stand_in))
        })
        .map(|c| c.id.as_str())
        .collect();
    if !cheaper.is_empty() {
        tracing::warn!(
            target: "dpop::issuer",
            clients = ?cheaper,
            parameters = %stand_in.parameters_text(),
            "client secrets are hashed with different Argon2 parameters: unknown client ids \
             are checked with the costliest, so these clients, cheaper to check, can be told \
             apart by response time; hash their secrets again with `dpop issuer hash-secret` \
             so that all use one parameter set"
        );
    }
}

/// A proof verifier with the configured algorithms and window, and nonces when given.
fn proof_verifier(
    config: &IssuerConfig,
    nonces: Option<&Arc<StatelessNonces>>,
) -> Result<Verifier, ConfigError> {
    let builder = VerifierConfig::builder()
        .with_algorithms(&config.dpop.algorithms)
        .map_err(|e| ConfigError::new(format!("dpop.algorithms: {e}")))?;
    let mut verifier_config = match nonces {
        Some(n) => builder.with_nonces(Arc::clone(n) as Arc<dyn dpop_core::NonceValidator>),
        None => builder.without_nonces(),
    };
    verifier_config.max_age = config.dpop.max_age;
    verifier_config.future_leeway = config.dpop.future_leeway;
    Verifier::new(verifier_config).map_err(|e| ConfigError::new(format!("dpop: {e}")))
}
