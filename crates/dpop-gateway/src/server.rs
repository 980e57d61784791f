//! The listeners: the proxy with its connection limits and graceful drain, and the admin
//! listener (`dpop-server`'s, answering `/readyz` with the gateway's readiness).

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Weak};
use std::time::Duration;

use dpop_server::Readiness;
use dpop_tower::{
    DpopLayer, DpopSettings, HtuSource, IntrospectionConfig, IntrospectionSource, JwksSource,
    JwksSourceConfig, PeerAddr, TokenVerifier,
};
use http::{Request, StatusCode};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tower::{Layer as _, ServiceExt as _};

use crate::config::{GatewayConfig, TokenCheck};
use crate::error::GatewayError;
use crate::metrics::Metrics;
use crate::proxy::{Proxy, empty};
use crate::store::GatewayStore;
use crate::stream::ConnectionSlot;

/// A gateway ready to serve: listeners bound, keys fetched (or being retried), replay
/// store connected.
#[derive(Debug)]
pub struct Gateway {
    config: GatewayConfig,
    listener: TcpListener,
    admin: Option<TcpListener>,
    layer: DpopLayer<GatewayStore>,
    proxy: Proxy,
    metrics: Arc<Metrics>,
}

impl Gateway {
    /// Binds the listeners, sets up the token source and connects the replay store.
    ///
    /// # Errors
    /// When a listener cannot be bound, Redis cannot be reached, or the settings are
    /// inconsistent ([`GatewayError::Config`] also for unreadable CA, certificate or key
    /// files); [`GatewayError::Upstream`] when an https or HTTP/2 upstream refuses the
    /// gateway (see [`Proxy::check_upstreams`]). An unreachable issuer is not fatal: `/readyz` says not ready and
    /// requests get 503 until its keys load.
    pub async fn bind(config: GatewayConfig) -> Result<Self, GatewayError> {
        let metrics = Arc::new(Metrics::new());
        let tokens: Arc<dyn TokenVerifier> = match &config.tokens {
            TokenCheck::Jwks { jwks_uri } => {
                let mut c = JwksSourceConfig::new(&config.issuer, &config.audience);
                c.jwks_uri.clone_from(jwks_uri);
                c.validation.algorithms.clone_from(&config.algorithms);
                let retry = c.missing_keys_retry_interval;
                let source = JwksSource::new(c, metrics.clone()).map_err(settings_error)?;
                let source = Arc::new(source);
                if let Err(e) = source.refresh().await {
                    tracing::warn!(target: "dpop::gateway", error = %e, "issuer keys not loaded yet; requests get 503 until they are");
                    // Requests retry too, but an instance that is not ready gets no
                    // traffic from a load balancer probing /readyz: without this it would
                    // stay unready for good.
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
        let store = GatewayStore::open(&config.replay).await?;
        let htu = match config.public_urls.as_slice() {
            [] => HtuSource::FromRequest {
                scheme: "http".into(),
                trusted_proxies: config.trusted_proxies.clone(),
                allowed_hosts: config.allowed_hosts.clone(),
            },
            [one] => HtuSource::PublicUrl(one.clone()),
            several => HtuSource::PublicUrls {
                urls: several.to_vec(),
                trusted_proxies: config.trusted_proxies.clone(),
            },
        };
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
            tracing::warn!(target: "dpop::gateway", "replay.dangerous_fail_open is set: requests pass when the replay store fails, so replays are possible then");
            settings.dangerous_fail_open_on_replay_store_errors();
        }
        if config.nonces.is_some() && !config.nonce_secret_shared {
            tracing::warn!(target: "dpop::gateway", "nonces use a random per-process secret: other instances will not accept this one's nonces (set DPOP_NONCE_SECRET or nonce.secrets)");
        }
        let layer = DpopLayer::new(settings, tokens, store)
            .map_err(|e| GatewayError::Config(e.to_string()))?;
        let proxy = Proxy::new(&config, metrics.clone())?;
        proxy.check_upstreams().await?;
        let listener =
            TcpListener::bind(config.listen)
                .await
                .map_err(|source| GatewayError::Listen {
                    addr: config.listen,
                    source,
                })?;
        let admin = match config.admin_listen {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .map_err(|source| GatewayError::Listen { addr, source })?,
            ),
            None => None,
        };
        Ok(Self {
            config,
            listener,
            admin,
            layer,
            proxy,
            metrics,
        })
    }

    /// The proxy's bound address.
    ///
    /// # Errors
    /// When the socket has no local address.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` resolves, then stops accepting and lets in-flight requests
    /// finish for up to the drain timeout.
    pub async fn serve(self, shutdown: impl Future<Output = ()>) {
        let Self {
            config,
            listener,
            admin,
            layer,
            proxy,
            metrics,
        } = self;
        tracing::info!(
            target: "dpop::gateway",
            listen = %config.listen,
            upstream = %config.upstream,
            route_upstreams = ?config.route_upstreams.values().map(ToString::to_string).collect::<Vec<_>>(),
            issuer = %config.issuer,
            replay_store = layer.store().kind(),
            "gateway listening"
        );
        if let Some(admin) = admin {
            let ready_layer = layer.clone();
            tokio::spawn(dpop_server::admin::serve(
                admin,
                metrics.registry(),
                move || readiness(ready_layer.clone()),
            ));
        }
        let metadata_layer = layer.clone();
        let service = layer.layer(proxy);
        let limit = Arc::new(Semaphore::new(config.max_connections));
        let graceful = GracefulShutdown::new();
        // HTTP/1 with upgrades, for WebSocket.
        let mut http = auto::Builder::new(TokioExecutor::new()).http1_only();
        http.http1()
            .timer(TokioTimer::new())
            .header_read_timeout(Duration::from_secs(30))
            .max_buf_size(config.max_header_bytes)
            .keep_alive(true);
        let request_timeout = config.request_timeout;
        tokio::pin!(shutdown);
        loop {
            // Wait for a connection slot first: past the limit, new connections queue in
            // the kernel's backlog instead of being accepted and starved.
            let permit = tokio::select! {
                p = Arc::clone(&limit).acquire_owned() => match p { Ok(p) => p, Err(_) => break },
                () = &mut shutdown => break,
            };
            let (stream, peer) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(target: "dpop::gateway", error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                () = &mut shutdown => break,
            };
            let _ = stream.set_nodelay(true);
            let service = service.clone();
            let metadata_layer = metadata_layer.clone();
            // A WebSocket tunnel outlives the connection it was upgraded from and keeps
            // its slot until it ends.
            let slot = ConnectionSlot(Arc::new(permit));
            let svc = service_fn(move |mut req: Request<Incoming>| {
                req.extensions_mut().insert(PeerAddr(peer));
                // Only a request that may become a tunnel carries it (an extension costs
                // an allocation).
                if req.headers().contains_key(http::header::UPGRADE) {
                    req.extensions_mut().insert(slot.clone());
                }
                // RFC 9728: the metadata document is answered here, never behind DPoP.
                let metadata = metadata_layer
                    .metadata_response(&req)
                    .map(|r| r.map(|b| Full::new(b).map_err(|never| match never {}).boxed()));
                let service = service.clone();
                async move {
                    if let Some(response) = metadata {
                        return Ok(response);
                    }
                    match tokio::time::timeout(request_timeout, service.oneshot(req)).await {
                        Ok(r) => r,
                        Err(_) => Ok::<_, Infallible>(empty(StatusCode::GATEWAY_TIMEOUT)),
                    }
                }
            });
            // The connection borrows its builder, so each task has its own copy.
            let http = http.clone();
            let watcher = graceful.watcher();
            tokio::spawn(async move {
                let conn = http.serve_connection_with_upgrades(TokioIo::new(stream), svc);
                if let Err(e) = watcher.watch(conn).await {
                    tracing::debug!(target: "dpop::gateway", error = %e, "connection ended with an error");
                }
            });
        }
        drop(listener);
        tracing::info!(target: "dpop::gateway", timeout_secs = config.drain_timeout.as_secs(), "shutting down: draining in-flight requests");
        if tokio::time::timeout(config.drain_timeout, graceful.shutdown())
            .await
            .is_err()
        {
            tracing::warn!(target: "dpop::gateway", "drain timeout reached; closing remaining connections");
        } else {
            tracing::info!(target: "dpop::gateway", "drained");
        }
    }
}

/// Fetches the issuer's keys every `interval` until they are loaded (by this task or by a
/// request) or the gateway is gone.
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

/// The admin listener's readiness: the issuer's keys are loaded and the replay store
/// answers (within a second, so a probe never hangs on a stalled store).
async fn readiness(layer: DpopLayer<GatewayStore>) -> Readiness {
    let keys = layer.tokens().is_ready();
    let store = tokio::time::timeout(Duration::from_secs(1), layer.store().ready())
        .await
        .unwrap_or(false);
    let ready = keys && store;
    Readiness::json(
        ready,
        &serde_json::json!({"ready": ready, "token_keys_loaded": keys, "replay_store_reachable": store}),
    )
}

/// A token source refusing its settings (an http URL to another host, say) is a
/// configuration error naming the setting, not an internal one.
fn settings_error(e: dpop_core::Error) -> GatewayError {
    match e {
        dpop_core::Error::ApiMisuse(why) => GatewayError::Config(why.to_owned()),
        other => GatewayError::Tokens(other.to_string()),
    }
}
