//! Route policies and how the layer learns the URI the client addressed.

use std::net::IpAddr;

use dpop_core::{Htu, RequestError};
use http::{HeaderMap, Method, Uri};
use ipnet::IpNet;

/// How a route treats DPoP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum DpopMode {
    /// `Authorization: DPoP <token>` with a valid proof is required.
    Required,
    /// DPoP as above, or a `Bearer` token that is not DPoP-bound (a bound token sent as
    /// `Bearer` is still refused, RFC 9449 §7.2).
    AllowBearer,
    /// Shadow mode for roll-out: every check runs and failures are logged and counted,
    /// but the request is forwarded anyway (without an identity when it failed).
    ReportOnly,
    /// No DPoP processing at all: the request passes through untouched.
    Off,
}

/// What a route requires.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct RoutePolicy {
    /// DPoP handling. Defaults to [`DpopMode::Required`].
    pub mode: DpopMode,
    /// Proofs must carry a server nonce (RFC 9449 §9). Defaults to `false`.
    pub require_nonce: bool,
    /// Scopes the access token must all have. Defaults to none.
    pub scopes: Vec<String>,
}

impl Default for RoutePolicy {
    fn default() -> Self {
        Self {
            mode: DpopMode::Required,
            require_nonce: false,
            scopes: Vec::new(),
        }
    }
}

impl RoutePolicy {
    /// A policy with `mode` and the other defaults.
    #[must_use]
    pub fn new(mode: DpopMode) -> Self {
        Self {
            mode,
            ..Self::default()
        }
    }

    /// Requires a server nonce.
    #[must_use]
    pub fn with_nonce(mut self, require: bool) -> Self {
        self.require_nonce = require;
        self
    }

    /// Requires these scopes.
    #[must_use]
    pub fn with_scopes<I: IntoIterator<Item = S>, S: Into<String>>(mut self, scopes: I) -> Self {
        self.scopes = scopes.into_iter().map(Into::into).collect();
        self
    }
}

/// One route: methods (all when `None`) and a path prefix matched on segment
/// boundaries (`/api` matches `/api` and `/api/x`, not `/apix`).
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Route {
    /// Methods this route covers; `None` for all.
    pub methods: Option<Vec<Method>>,
    /// Path prefix, starting with `/`.
    pub path_prefix: String,
    /// The policy.
    pub policy: RoutePolicy,
}

impl Route {
    /// A route for every method under `path_prefix`.
    #[must_use]
    pub fn new(path_prefix: &str, policy: RoutePolicy) -> Self {
        Self {
            methods: None,
            path_prefix: path_prefix.to_owned(),
            policy,
        }
    }

    /// Limits the route to `methods`.
    #[must_use]
    pub fn with_methods(mut self, methods: Vec<Method>) -> Self {
        self.methods = Some(methods);
        self
    }

    fn matches(&self, method: &Method, path: &str) -> bool {
        if self.methods.as_ref().is_some_and(|m| !m.contains(method)) {
            return false;
        }
        let prefix = self.path_prefix.trim_end_matches('/');
        match path.strip_prefix(prefix) {
            Some(rest) => rest.is_empty() || rest.starts_with('/') || prefix.is_empty(),
            None => false,
        }
    }
}

/// The route table: the most specific (longest prefix) matching route wins; requests
/// matching no route get the default policy.
#[derive(Clone, Debug, Default)]
pub struct Routes {
    routes: Vec<Route>,
    default: RoutePolicy,
}

impl Routes {
    /// Every request gets `default`.
    #[must_use]
    pub fn new(default: RoutePolicy) -> Self {
        Self {
            routes: Vec::new(),
            default,
        }
    }

    /// Adds a route.
    #[must_use]
    pub fn route(mut self, route: Route) -> Self {
        self.routes.push(route);
        // Longest prefix first; method-specific before method-agnostic at equal length.
        self.routes.sort_by(|a, b| {
            b.path_prefix
                .trim_end_matches('/')
                .len()
                .cmp(&a.path_prefix.trim_end_matches('/').len())
                .then(b.methods.is_some().cmp(&a.methods.is_some()))
        });
        self
    }

    /// The policy for a request.
    #[must_use]
    pub fn resolve(&self, method: &Method, path: &str) -> &RoutePolicy {
        self.routes
            .iter()
            .find(|r| r.matches(method, path))
            .map_or(&self.default, |r| &r.policy)
    }

    /// Every policy in the table (for checks at start-up, e.g. "a route needs nonces").
    pub fn policies(&self) -> impl Iterator<Item = &RoutePolicy> {
        std::iter::once(&self.default).chain(self.routes.iter().map(|r| &r.policy))
    }
}

/// Where the scheme, host and path the client used come from, for the `htu` check.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum HtuSource {
    /// The external origin and path prefix, e.g. `https://api.example.com/orders`, when
    /// TLS is terminated in front or the path is rewritten. The request path is appended.
    PublicUrl(String),
    /// The request's own `Host` and target. `X-Forwarded-Proto` / `X-Forwarded-Host` are
    /// honoured only when the peer address ([`crate::PeerAddr`]) is one of
    /// `trusted_proxies`; otherwise the scheme is `scheme`.
    FromRequest {
        /// Scheme when no trusted proxy says otherwise (`http` for a plain listener).
        scheme: String,
        /// Proxies whose forwarding headers are believed.
        trusted_proxies: Vec<IpNet>,
    },
}

impl HtuSource {
    /// The URI the client addressed, without query and fragment, normalised.
    pub(crate) fn htu(
        &self,
        uri: &Uri,
        headers: &HeaderMap,
        peer: Option<IpAddr>,
    ) -> Result<Htu, RequestError> {
        let path = uri.path_and_query().map_or("/", |p| p.as_str());
        match self {
            Self::PublicUrl(base) => {
                Htu::from_origin_and_path(base, path).map_err(|_| RequestError::BadRequestTarget)
            }
            Self::FromRequest {
                scheme,
                trusted_proxies,
            } => {
                let trusted =
                    peer.is_some_and(|ip| trusted_proxies.iter().any(|n| n.contains(&ip)));
                let forwarded = |name: &str| -> Option<&str> {
                    if !trusted {
                        return None;
                    }
                    // The first value is the one the outermost trusted proxy saw.
                    headers
                        .get(name)?
                        .to_str()
                        .ok()?
                        .split(',')
                        .next()
                        .map(str::trim)
                        .filter(|v| !v.is_empty())
                };
                let scheme = forwarded("x-forwarded-proto").unwrap_or(scheme);
                let host = match forwarded("x-forwarded-host") {
                    Some(h) => h,
                    None => match uri.authority() {
                        Some(a) => a.as_str(),
                        None => headers
                            .get(http::header::HOST)
                            .and_then(|h| h.to_str().ok())
                            .ok_or(RequestError::BadRequestTarget)?,
                    },
                };
                if !path.starts_with('/') {
                    return Err(RequestError::BadRequestTarget);
                }
                Htu::from_origin_and_path(&format!("{scheme}://{host}"), path)
                    .map_err(|_| RequestError::BadRequestTarget)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn longest_prefix_wins_on_segment_boundaries() {
        let routes = Routes::new(RoutePolicy::new(DpopMode::Required))
            .route(Route::new("/public", RoutePolicy::new(DpopMode::Off)))
            .route(Route::new(
                "/public/admin",
                RoutePolicy::new(DpopMode::Required).with_nonce(true),
            ))
            .route(Route::new(
                "/legacy/",
                RoutePolicy::new(DpopMode::AllowBearer),
            ))
            .route(
                Route::new("/", RoutePolicy::new(DpopMode::ReportOnly))
                    .with_methods(vec![Method::OPTIONS]),
            );
        let get = Method::GET;
        assert_eq!(routes.resolve(&get, "/public").mode, DpopMode::Off);
        assert_eq!(routes.resolve(&get, "/public/x").mode, DpopMode::Off);
        assert_eq!(routes.resolve(&get, "/publicity").mode, DpopMode::Required);
        assert!(routes.resolve(&get, "/public/admin/users").require_nonce);
        assert_eq!(routes.resolve(&get, "/legacy").mode, DpopMode::AllowBearer);
        assert_eq!(
            routes.resolve(&get, "/legacy/a").mode,
            DpopMode::AllowBearer
        );
        assert_eq!(
            routes.resolve(&Method::OPTIONS, "/anything").mode,
            DpopMode::ReportOnly
        );
        assert_eq!(routes.resolve(&get, "/anything").mode, DpopMode::Required);
    }

    #[test]
    fn htu_from_public_url_and_request() {
        let uri: Uri = "/v1/items?x=1".parse().unwrap();
        let mut headers = HeaderMap::new();
        headers.insert("host", "internal:8080".parse().unwrap());
        headers.insert("x-forwarded-proto", "https".parse().unwrap());
        headers.insert("x-forwarded-host", "api.example.com".parse().unwrap());
        let public = HtuSource::PublicUrl("https://api.example.com/orders".into());
        assert_eq!(
            public.htu(&uri, &headers, None).unwrap().as_str(),
            "https://api.example.com/orders/v1/items"
        );
        let proxies = vec!["10.0.0.0/8".parse().unwrap()];
        let from_req = HtuSource::FromRequest {
            scheme: "http".into(),
            trusted_proxies: proxies,
        };
        // Untrusted peer: forwarding headers ignored.
        let untrusted = from_req
            .htu(&uri, &headers, Some("192.0.2.1".parse().unwrap()))
            .unwrap();
        assert_eq!(untrusted.as_str(), "http://internal:8080/v1/items");
        let trusted = from_req
            .htu(&uri, &headers, Some("10.1.2.3".parse().unwrap()))
            .unwrap();
        assert_eq!(trusted.as_str(), "https://api.example.com/v1/items");
        headers.remove("host");
        assert_eq!(
            from_req.htu(&uri, &headers, None),
            Err(RequestError::BadRequestTarget)
        );
    }
}
