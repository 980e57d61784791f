//! Why a [`crate::DpopLayer`] could not be built.

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
    /// The token source could not be set up, e.g. the issuer's keys could not be
    /// fetched when the layer was built.
    #[error("cannot check access tokens: {0}")]
    Tokens(dpop_core::Error),
    /// The core rejected the verifier settings.
    #[error("invalid proof verification settings: {0}")]
    Verifier(dpop_core::Error),
}
