//! `dpop authz`: the gateway's checks for the proxies people already run. The proxy
//! asks before forwarding; the authorizer answers allow (with the identity headers for
//! the upstream) or deny (with the refusal the client should get).
//!
//! - `grpc.rs`: Envoy's ext_authz over gRPC (`envoy.service.auth.v3.Authorization`).
//! - `http.rs`: Envoy's ext_authz over HTTP and the forward-auth protocol of nginx
//!   `auth_request`, Traefik `ForwardAuth` and Caddy `forward_auth`.
//! - `check.rs`: the one decision both call, on the same `dpop-tower` layer as the
//!   gateway's (`enforce.rs`).
//! - `reload.rs`: what a configuration checks with, rebuilt on SIGHUP through the
//!   gateway's reload loop (`crate::reload`).

mod check;
mod grpc;
mod http;
mod reload;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::AuthzConfig;
use crate::enforce;
use crate::error::GatewayError;
use crate::metrics::Metrics;
use crate::reload::{Generation, ReloadSource};
use crate::server::{bind_optional, readiness};

pub(crate) use check::{Allowed, Authorizer, Decision, Denied, OriginalRequest};
use reload::{AuthzApply, AuthzReloader, Configured};

/// An authorizer ready to serve: listeners bound, keys fetched (or being retried),
/// replay store connected.
#[derive(Debug)]
pub struct Authz {
    http: Option<TcpListener>,
    grpc: Option<TcpListener>,
    admin: Option<TcpListener>,
    /// The configuration as started, with its authorizer.
    first: Configured,
    metrics: Arc<Metrics>,
    /// Where a reload reads the configuration.
    reload: Option<ReloadSource<AuthzConfig>>,
}

impl Authz {
    /// Binds the listeners, sets up the token source and connects the replay store.
    ///
    /// # Errors
    /// When a listener cannot be bound, the replay store cannot be opened, or the token
    /// source refuses its settings. An unreachable issuer is not fatal: `/readyz` says
    /// not ready and every check is denied with 503 until its keys load.
    pub async fn bind(config: AuthzConfig) -> Result<Self, GatewayError> {
        let metrics = Arc::new(Metrics::new());
        let layer = enforce::layer(&config.enforcement, reload::htu(&config), &metrics).await?;
        // The admin listener first: once a serving port accepts connections, the admin
        // port does too (see the gateway's `bind`).
        let admin = bind_optional(config.enforcement.admin_listen).await?;
        let http = bind_optional(config.listen).await?;
        let grpc = bind_optional(config.grpc_listen).await?;
        Ok(Self {
            http,
            grpc,
            admin,
            first: Configured::new(config, layer, Arc::clone(&metrics)),
            metrics,
            reload: None,
        })
    }

    /// Makes SIGHUP reload the configuration from `source` while serving: routes, nonce
    /// secrets, identity headers, strip settings, the token check, public URLs or allowed
    /// hosts, trusted proxies, `path_prefix`, `request_timeout_secs` and `log_requests`
    /// apply to checks that start afterwards, all together or not at all. A
    /// configuration that cannot be loaded, or that changes a setting only a restart can
    /// change (the listen addresses, the admin listener, the replay store, connection
    /// limits, `log_format`, ...), is refused with an error log naming the cause, and the
    /// configuration in force stays. `file` is the configuration file, if any (the
    /// authorizer does not watch it: `reload_on_change` is the gateway's).
    #[must_use]
    pub fn reload_from(
        mut self,
        source: impl Fn() -> Result<AuthzConfig, GatewayError> + Send + Sync + 'static,
        file: Option<std::path::PathBuf>,
    ) -> Self {
        self.reload = Some(ReloadSource::new(source, file));
        self
    }

    /// The HTTP listener's bound address (forward-auth, Envoy HTTP), if there is one.
    #[must_use]
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// The gRPC listener's bound address (Envoy ext_authz), if there is one.
    #[must_use]
    pub fn grpc_addr(&self) -> Option<SocketAddr> {
        self.grpc.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// The admin listener's bound address, if there is one.
    #[must_use]
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// Serves until `shutdown` resolves, then stops accepting and lets in-flight checks
    /// finish for up to the drain timeout.
    ///
    /// # Errors
    /// When a listener's task ends (panics) before `shutdown` or while draining: the
    /// authorizer then stops rather than answer on part of its listeners.
    pub async fn serve(self, shutdown: impl Future<Output = ()>) -> Result<(), GatewayError> {
        let Self {
            http,
            grpc,
            admin,
            first,
            metrics,
            reload: reload_source,
        } = self;
        // The settings a reload cannot change (listeners, limits, drain timeout): those
        // of the configuration as started.
        let config = Arc::clone(first.config());
        tracing::info!(
            target: "dpop::authz",
            listen = ?config.listen,
            grpc_listen = ?config.grpc_listen,
            issuer = %config.enforcement.issuer,
            replay_store = first.authorizer().layer().store().kind(),
            "authorizer listening"
        );
        let reloader = Arc::new(AuthzReloader::new(
            Arc::new(Generation::first(first)),
            AuthzApply {
                metrics: Arc::clone(&metrics),
            },
            Arc::clone(&metrics),
        ));
        // Registered before serving: SIGHUP reloads from the first check on.
        let watch_config = reload_source
            .map(|ReloadSource { source, file }| Arc::clone(&reloader).spawn_watch(source, file));
        if let Some(admin) = admin {
            let reloader = Arc::clone(&reloader);
            tokio::spawn(dpop_server::admin::serve(
                admin,
                metrics.registry(),
                move || {
                    let current = reloader.current();
                    readiness(
                        current.state().authorizer().layer().clone(),
                        current.number(),
                    )
                },
            ));
        }
        let (stop, stopping) = watch::channel(false);
        let mut tasks = tokio::task::JoinSet::new();
        if let Some(listener) = http {
            tasks.spawn(http::serve(
                listener,
                Arc::clone(&reloader),
                Arc::clone(&config),
                stopping.clone(),
            ));
        }
        if let Some(listener) = grpc {
            tasks.spawn(grpc::serve(
                listener,
                Arc::clone(&reloader),
                Arc::clone(&config),
                stopping.clone(),
            ));
        }
        drop(stopping);
        tokio::select! {
            () = shutdown => {}
            Some(ended) = tasks.join_next() => return Err(listener_ended(&ended)),
        }
        drop(watch_config);
        tracing::info!(target: "dpop::authz", timeout_secs = config.enforcement.drain_timeout.as_secs(), "shutting down: draining in-flight checks");
        let _ = stop.send(true);
        let drained = tokio::time::timeout(config.enforcement.drain_timeout, async {
            let mut failed = Ok(());
            while let Some(ended) = tasks.join_next().await {
                if ended.is_err() && failed.is_ok() {
                    failed = Err(listener_ended(&ended));
                }
            }
            failed
        })
        .await;
        match drained {
            Err(_) => {
                tracing::warn!(target: "dpop::authz", "drain timeout reached; closing remaining connections");
                Ok(())
            }
            Ok(result) => {
                tracing::info!(target: "dpop::authz", "drained");
                result
            }
        }
    }
}

/// The error for a listener task that ended (returned or panicked) when it should not
/// have.
fn listener_ended(ended: &Result<(), tokio::task::JoinError>) -> GatewayError {
    let how = match ended {
        Ok(()) => "stopped",
        Err(e) if e.is_panic() => "panicked",
        Err(_) => "was cancelled",
    };
    GatewayError::Serving(format!("a listener task {how}"))
}
