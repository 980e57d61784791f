//! [`DpopLayer`]: the `Layer` that wraps services in [`DpopService`].

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use dpop_core::AsyncReplayStore;
use http::{Request, Response, StatusCode};
use tower::Layer;

use crate::error::ConfigError;
use crate::identity::PeerAddr;
use crate::service::{DpopService, is_metadata_path};
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

    /// The answer to a request for an RFC 9728 metadata document
    /// ([`crate::WELL_KNOWN_PATH`], optionally followed by the public URL's path prefix,
    /// then optionally by the path of a route that is a resource of its own,
    /// [`crate::Route::with_own_resource`]): the JSON document for `GET` (headers only
    /// for `HEAD`) with `Content-Type: application/json` and `Cache-Control: max-age`,
    /// 405 for other methods, and 400 `host_not_allowed` (no body) for a host the `htu`
    /// rule does not allow. `None` for any other path, or when no
    /// [`crate::DpopSettings::resource_metadata`] is set. The layer lets `GET` and `HEAD`
    /// on these paths through without DPoP (other methods meet the route's policy); serve
    /// this answer in front of the layer or at that path behind it (the gateway does it
    /// before the layer).
    #[must_use]
    pub fn metadata_response<B>(&self, req: &Request<B>) -> Option<Response<Bytes>> {
        let prepared = self.shared.metadata.as_ref()?;
        let path = req.uri().path();
        if !is_metadata_path(&self.shared, path) {
            return None;
        }
        let peer = req.extensions().get::<PeerAddr>().map(|p| p.0.ip());
        match self.shared.htu_rule.base(req.uri(), req.headers(), peer) {
            Ok(base) => {
                // The path may name another public URL's prefix than this host's.
                let doc = prepared.find(path, base.path_prefix())?;
                Some(prepared.response(req.method(), &base, &doc))
            }
            Err(_) => {
                let mut r = Response::new(Bytes::new());
                *r.status_mut() = StatusCode::BAD_REQUEST;
                Some(r)
            }
        }
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
