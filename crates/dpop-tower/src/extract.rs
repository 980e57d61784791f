//! [`DpopIdentity`] as an axum extractor (feature `axum`).
//!
//! A handler that takes [`DpopIdentity`] runs only for a caller the layer verified. When
//! there is no identity to give, the handler does not run and the response is a 500
//! with an empty body: that is a deployment mistake (the layer is not in front of this
//! route, or the route's mode lets requests through unverified), never an anonymous
//! caller. Handlers on report-only or `off` routes take `Option<DpopIdentity>`, which is
//! `None` for a request the layer let through without verifying it, and still a 500
//! when the layer is missing.

use std::fmt;

use axum::extract::{FromRequestParts, OptionalFromRequestParts};
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use http::request::Parts;

use crate::identity::{AuthorizedTarget, DpopIdentity};

/// Why a handler got no [`DpopIdentity`]. Answered with 500 and an empty body; the
/// detail goes to `tracing` at target `dpop::rejection`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum IdentityRejection {
    /// The request did not go through a [`crate::DpopLayer`]: the layer is missing from
    /// this route's stack, or sits after the router.
    LayerMissing,
    /// The layer let the request through without an identity (a report-only or `off`
    /// route); the handler should take `Option<DpopIdentity>`.
    NotVerified,
}

impl fmt::Display for IdentityRejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::LayerMissing => {
                "no DpopLayer in front of this handler: the request was not checked"
            }
            Self::NotVerified => {
                "the route lets requests through unverified; take Option<DpopIdentity>"
            }
        })
    }
}

impl std::error::Error for IdentityRejection {}

impl IntoResponse for IdentityRejection {
    fn into_response(self) -> Response {
        tracing::error!(target: "dpop::rejection", detail = %self, status = 500, "handler needs a verified DPoP identity");
        StatusCode::INTERNAL_SERVER_ERROR.into_response()
    }
}

impl<S: Send + Sync> FromRequestParts<S> for DpopIdentity {
    type Rejection = IdentityRejection;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        <Self as OptionalFromRequestParts<S>>::from_request_parts(parts, state)
            .await?
            .ok_or(IdentityRejection::NotVerified)
    }
}

impl<S: Send + Sync> OptionalFromRequestParts<S> for DpopIdentity {
    type Rejection = IdentityRejection;

    async fn from_request_parts(
        parts: &mut Parts,
        _state: &S,
    ) -> Result<Option<Self>, Self::Rejection> {
        // The layer marks every request it lets through, in any route mode.
        if parts.extensions.get::<AuthorizedTarget>().is_none() {
            return Err(IdentityRejection::LayerMissing);
        }
        Ok(parts.extensions.get::<Self>().cloned())
    }
}
