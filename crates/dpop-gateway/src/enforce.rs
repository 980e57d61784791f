//! The DPoP layer built from an [`EnforcementConfig`]: one construction for the gateway
//! and the authorizer, so the same settings give the same checks in both.

use std::sync::{Arc, Weak};
use std::time::Duration;

use dpop_tower::{
    DpopLayer, DpopSettings, HtuSource, IntrospectionConfig, IntrospectionSource, JwksSource,
    JwksSourceConfig, TokenVerifier,
};

use crate::config::{EnforcementConfig, GatewayConfig, TokenCheck};
use crate::error::GatewayError;
use crate::metrics::Metrics;
use crate::store::GatewayStore;

/// The token source, the replay store and the layer for `config`, with `htu` deciding
/// which URL proofs are checked against. Events go to `metrics`.
///
/// # Errors
/// [`GatewayError::Config`] for settings the token source or the layer refuse, and when
/// the replay store cannot be opened. An unreachable issuer is not an error: its keys
/// are fetched again in the background and requests get 503 until they load.
pub(crate) async fn layer(
    config: &EnforcementConfig,
    htu: HtuSource,
    metrics: &Arc<Metrics>,
) -> Result<DpopLayer<GatewayStore>, GatewayError> {
    let tokens = token_source(config, metrics).await?;
    let store = GatewayStore::open(&config.replay).await?;
    build(config, htu, metrics, tokens, store)
}

/// The layer for a reloaded `config`, `previous` being the layer built from `old`: the
/// replay store is `previous`'s (every recorded proof stays recorded), and so is the
/// token source (its keys or cached answers stay warm) unless the token settings changed.
///
/// # Errors
/// As [`layer`], but the replay store is not opened again.
pub(crate) async fn rebuild(
    config: &EnforcementConfig,
    htu: HtuSource,
    metrics: &Arc<Metrics>,
    previous: &DpopLayer<GatewayStore>,
    old: &EnforcementConfig,
) -> Result<DpopLayer<GatewayStore>, GatewayError> {
    let tokens = if same_token_check(old, config) {
        Arc::clone(previous.tokens())
    } else {
        token_source(config, metrics).await?
    };
    build(config, htu, metrics, tokens, previous.store().clone())
}

/// Whether `a` and `b` check tokens the same way (the same source would serve both).
fn same_token_check(a: &EnforcementConfig, b: &EnforcementConfig) -> bool {
    let same_source = match (&a.tokens, &b.tokens) {
        (TokenCheck::Jwks { jwks_uri: x }, TokenCheck::Jwks { jwks_uri: y }) => x == y,
        (
            TokenCheck::Introspection {
                endpoint: e1,
                client_id: i1,
                client_secret: s1,
            },
            TokenCheck::Introspection {
                endpoint: e2,
                client_id: i2,
                client_secret: s2,
            },
        ) => e1 == e2 && i1 == i2 && s1 == s2,
        _ => false,
    };
    same_source && a.issuer == b.issuer && a.audience == b.audience && a.algorithms == b.algorithms
}

/// The token source `config` names: the issuer's keys (fetched now, and again in the
/// background while that fails) or its introspection endpoint.
async fn token_source(
    config: &EnforcementConfig,
    metrics: &Arc<Metrics>,
) -> Result<Arc<dyn TokenVerifier>, GatewayError> {
    let tokens: Arc<dyn TokenVerifier> = match &config.tokens {
        TokenCheck::Jwks { jwks_uri } => {
            let mut c = JwksSourceConfig::new(&config.issuer, &config.audience);
            c.jwks_uri.clone_from(jwks_uri);
            c.validation.algorithms.clone_from(&config.algorithms);
            let retry = c.missing_keys_retry_interval;
            let source = JwksSource::new(c, metrics.clone()).map_err(settings_error)?;
            let source = Arc::new(source);
            if source.refresh().await.is_err() {
                // The cause was logged by the key source, once (then summarised).
                tracing::warn!(target: "dpop::gateway", "issuer keys not loaded yet; requests get 503 until they are");
                // Requests retry too, but an instance that is not ready gets no traffic
                // from a load balancer probing /readyz: without this it would stay
                // unready for good.
                tokio::spawn(load_keys_until_ready(Arc::downgrade(&source), retry));
            }
            source
        }
        TokenCheck::Introspection {
            endpoint,
            client_id,
            client_secret,
        } => {
            let mut c = IntrospectionConfig::new(endpoint, client_id, client_secret);
            c.issuer = Some(config.issuer.clone());
            c.audience = Some(config.audience.clone());
            Arc::new(IntrospectionSource::new(c).map_err(settings_error)?)
        }
    };
    Ok(tokens)
}

/// The layer over `tokens` and `store` with `config`'s checks.
fn build(
    config: &EnforcementConfig,
    htu: HtuSource,
    metrics: &Arc<Metrics>,
    tokens: Arc<dyn TokenVerifier>,
    store: GatewayStore,
) -> Result<DpopLayer<GatewayStore>, GatewayError> {
    let mut settings = DpopSettings::new(htu);
    settings.algorithms.clone_from(&config.algorithms);
    settings.nonces = config
        .nonces
        .clone()
        .map(|n| n as Arc<dyn dpop_core::NonceValidator>);
    settings.routes = config.routes.clone();
    settings.realm.clone_from(&config.realm);
    settings.resource_metadata = Some(config.resource_metadata.clone());
    settings.proof_max_age = config.proof_max_age;
    settings.proof_future_leeway = config.proof_future_leeway;
    settings.events = metrics.clone();
    settings.token_cache_ttl = config.token_cache_ttl;
    if config.fail_open {
        // Said once at start and at the reload that turns it on (reload.rs), not at
        // every rebuild.
        settings.dangerous_fail_open_on_replay_store_errors();
    }
    if config.nonces.is_some() && !config.nonce_secret_shared {
        tracing::warn!(target: "dpop::gateway", "nonces use a random per-process secret: other instances will not accept this one's nonces (set DPOP_NONCE_SECRET or nonce.secrets)");
    }
    DpopLayer::new(settings, tokens, store).map_err(|e| GatewayError::Config(e.to_string()))
}

/// Fetches the issuer's keys every `interval` until they are loaded (by this task or by a
/// request) or the process no longer needs them.
async fn load_keys_until_ready(source: Weak<JwksSource>, interval: Duration) {
    loop {
        tokio::time::sleep(interval).await;
        let Some(source) = source.upgrade() else {
            return;
        };
        if source.is_ready() || source.refresh().await.is_ok() {
            return;
        }
    }
}

/// A token source refusing its settings (an http URL to another host, say) is a
/// configuration error naming the setting, not an internal one.
fn settings_error(e: dpop_core::Error) -> GatewayError {
    match e {
        dpop_core::Error::ApiMisuse(why) => GatewayError::Config(why.to_owned()),
        other => GatewayError::Tokens(other.to_string()),
    }
}

/// The URL rule proofs are checked against, from `config`: its public URLs, or the
/// request's host and the scheme the client used on this listener.
pub(crate) fn htu(config: &GatewayConfig) -> HtuSource {
    match config.enforcement.public_urls.as_slice() {
        [] => HtuSource::FromRequest {
            scheme: if config.tls.is_some() {
                "https"
            } else {
                "http"
            }
            .into(),
            trusted_proxies: config.enforcement.trusted_proxies.clone(),
            allowed_hosts: config.enforcement.allowed_hosts.clone(),
        },
        [one] => HtuSource::PublicUrl(one.clone()),
        several => HtuSource::PublicUrls {
            urls: several.to_vec(),
            trusted_proxies: config.enforcement.trusted_proxies.clone(),
        },
    }
}
