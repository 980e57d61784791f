//! What the service behind the layer learns about the caller.

use std::net::SocketAddr;

use dpop_core::Jkt;
use dpop_core::jwt::CertThumbprint;

/// How the caller authenticated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Scheme {
    /// `Authorization: DPoP` with a verified proof.
    Dpop,
    /// `Authorization: Bearer` with a token that is not DPoP-bound, on a route that allows it.
    Bearer,
}

/// The verified caller, inserted into the request's extensions on success.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct DpopIdentity {
    /// The token's `sub`.
    pub subject: Option<String>,
    /// The token's `client_id`.
    pub client_id: Option<String>,
    /// The proof key's thumbprint (`None` for Bearer).
    pub jkt: Option<Jkt>,
    /// The token's scopes.
    pub scopes: Vec<String>,
    /// How the caller authenticated.
    pub scheme: Scheme,
}

/// The client certificate the connection presented and the TLS server verified (mutual
/// TLS), inserted by the server as a request extension. The layer holds it against a
/// token's RFC 8705 `cnf.x5t#S256` binding and a route's
/// [`crate::RoutePolicy::with_client_cert_required`]; a server that does not verify
/// client certificates must never insert one.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ClientCertificate {
    /// SHA-256 of the leaf certificate's DER, base64url (RFC 8705 `x5t#S256`).
    pub thumbprint: CertThumbprint,
    /// The leaf certificate's subject as an RFC 4514 string (ASCII: other bytes are
    /// `\XX` escapes), when it could be read.
    pub subject: Option<String>,
}

impl ClientCertificate {
    /// The verified certificate with this thumbprint and subject.
    #[must_use]
    pub fn new(thumbprint: CertThumbprint, subject: Option<String>) -> Self {
        Self {
            thumbprint,
            subject,
        }
    }
}

/// The TCP peer of the request. Servers insert it as a request extension so the layer can
/// decide whether forwarding headers come from a trusted proxy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerAddr(pub SocketAddr);

/// The request target the layer judged the request by, inserted into the request's
/// extensions for every request it lets through (any route mode). Route policy, the
/// proof's `htu` and this value come from one parse of the target, so a proxy that
/// forwards exactly [`AuthorizedTarget::as_str`] sends upstream what was authorised.
/// Only the layer makes one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthorizedTarget {
    target: String,
    canonical: bool,
    route_id: Option<usize>,
}

impl AuthorizedTarget {
    pub(crate) fn new(target: String, canonical: bool, route_id: Option<usize>) -> Self {
        Self {
            target,
            canonical,
            route_id,
        }
    }

    /// The [`crate::Route::id`] of the route the request matched (`None` for the default
    /// policy or a route without one).
    #[must_use]
    pub fn route_id(&self) -> Option<usize> {
        self.route_id
    }

    /// The origin-form target (path and query) to forward.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.target
    }

    /// The path: the target without its query string (which may carry secrets, and is
    /// not part of an `htu`).
    #[must_use]
    pub fn path(&self) -> &str {
        let t = self.as_str();
        t.split_once('?').map_or(t, |(path, _)| path)
    }

    /// `false` when a route with
    /// [`crate::RoutePolicy::dangerous_forward_encoded_slashes`] let a target with `%2F`
    /// through as sent.
    #[must_use]
    pub fn is_canonical(&self) -> bool {
        self.canonical
    }
}
