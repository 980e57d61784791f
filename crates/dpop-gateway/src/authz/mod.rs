//! `dpop authz`: the gateway's checks for the proxies people already run. The proxy
//! asks before forwarding; the authorizer answers allow (with the identity headers for
//! the upstream) or deny (with the refusal the client should get).
//!
//! - `grpc.rs`: Envoy's ext_authz over gRPC (`envoy.service.auth.v3.Authorization`).
//! - `http.rs`: Envoy's ext_authz over HTTP and the forward-auth protocol of nginx
//!   `auth_request`, Traefik `ForwardAuth` and Caddy `forward_auth`.
//! - `check.rs`: the one decision both call, on the same `dpop-tower` layer as the
//!   gateway's (`enforce.rs`).

mod check;
mod grpc;
mod http;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use dpop_tower::HtuSource;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::AuthzConfig;
use crate::enforce;
use crate::error::GatewayError;
use crate::metrics::Metrics;
use crate::server::readiness;

pub(crate) use check::{Allowed, Authorizer, Decision, Denied, OriginalRequest};

/// An authorizer ready to serve: listeners bound, keys fetched (or being retried),
/// replay store connected.
#[derive(Debug)]
pub struct Authz {
    config: Arc<AuthzConfig>,
    http: Option<TcpListener>,
    grpc: Option<TcpListener>,
    admin: Option<TcpListener>,
    authorizer: Arc<Authorizer>,
}

impl Authz {
    /// Binds the listeners, sets up the token source and connects the replay store.
    ///
    /// # Errors
    /// When a listener cannot be bound, the replay store cannot be opened, or the token
    /// source refuses its settings. An unreachable issuer is not fatal: `/readyz` says
    /// not ready and every check is denied with 503 until its keys load.
    pub async fn bind(config: AuthzConfig) -> Result<Self, GatewayError> {
        let metrics = Arc::new(Metrics::with_routes(&config.enforcement.route_names));
        let e = &config.enforcement;
        // The proxy reports the scheme and host the client used; the layer reads them
        // from the rebuilt request's URI only (never from forwarding headers, which the
        // authorizer has already judged by their sender), against the same public URLs
        // or hosts as the gateway. Even one public URL must match the reported scheme
        // and host: unlike the gateway's own listener, a proxy serves other hosts too,
        // and a proof made for this one must not pass for a request it forwards to
        // another.
        let urls = if e.public_urls.is_empty() {
            e.allowed_hosts
                .iter()
                .flat_map(|h| [format!("http://{h}"), format!("https://{h}")])
                .collect()
        } else {
            e.public_urls.clone()
        };
        let htu = HtuSource::PublicUrls {
            urls,
            trusted_proxies: Vec::new(),
        };
        let layer = enforce::layer(e, htu, &metrics).await?;
        let authorizer = Arc::new(Authorizer::new(
            layer,
            e.identity_headers.clone(),
            e.strip_authorization,
            e.strip_dpop,
            metrics,
            e.log_requests,
        ));
        let bind = |addr: Option<SocketAddr>| async move {
            match addr {
                Some(addr) => TcpListener::bind(addr)
                    .await
                    .map(Some)
                    .map_err(|source| GatewayError::Listen { addr, source }),
                None => Ok(None),
            }
        };
        let http = bind(config.listen).await?;
        let grpc = bind(config.grpc_listen).await?;
        let admin = bind(e.admin_listen).await?;
        Ok(Self {
            config: Arc::new(config),
            http,
            grpc,
            admin,
            authorizer,
        })
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
            config,
            http,
            grpc,
            admin,
            authorizer,
        } = self;
        tracing::info!(
            target: "dpop::authz",
            listen = ?config.listen,
            grpc_listen = ?config.grpc_listen,
            issuer = %config.enforcement.issuer,
            replay_store = authorizer.layer().store().kind(),
            "authorizer listening"
        );
        if let Some(admin) = admin {
            let ready_layer = authorizer.layer().clone();
            tokio::spawn(dpop_server::admin::serve(
                admin,
                authorizer.metrics().registry(),
                // The authorizer does not reload its configuration: always the first.
                move || readiness(ready_layer.clone(), 1),
            ));
        }
        let (stop, stopping) = watch::channel(false);
        let mut tasks = tokio::task::JoinSet::new();
        if let Some(listener) = http {
            tasks.spawn(http::serve(
                listener,
                Arc::clone(&authorizer),
                Arc::clone(&config),
                stopping.clone(),
            ));
        }
        if let Some(listener) = grpc {
            tasks.spawn(grpc::serve(
                listener,
                Arc::clone(&authorizer),
                Arc::clone(&config),
                stopping.clone(),
            ));
        }
        drop(stopping);
        tokio::select! {
            () = shutdown => {}
            Some(ended) = tasks.join_next() => return Err(listener_ended(&ended)),
        }
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
