//! Envoy's ext_authz over gRPC.

use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::watch;

use super::Authorizer;
use crate::config::AuthzConfig;

/// Serves `envoy.service.auth.v3.Authorization/Check` on `listener` until `stop` turns
/// true, then lets in-flight checks finish.
pub(crate) async fn serve(
    listener: TcpListener,
    authorizer: Arc<Authorizer>,
    config: Arc<AuthzConfig>,
    stop: watch::Receiver<bool>,
) {
    let _ = (listener, authorizer, config, stop);
    unimplemented!("gRPC ext_authz")
}
