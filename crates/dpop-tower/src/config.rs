//! Route policies and how the layer learns the URI the client addressed.

use std::borrow::Cow;
use std::net::IpAddr;

use dpop_core::target::loose_form;
use dpop_core::{Htu, HtuBase, RequestError};
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
    forward_encoded_slashes: bool,
    client_cert_required: bool,
}

impl Default for RoutePolicy {
    fn default() -> Self {
        Self {
            mode: DpopMode::Required,
            require_nonce: false,
            scopes: Vec::new(),
            forward_encoded_slashes: false,
            client_cert_required: false,
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

    /// Lets requests whose path has an encoded slash (`%2F`, upper-case hex) inside a
    /// segment through this route, forwarded as sent, instead of refusing them with 400
    /// `non_canonical_target`. Every other canonical-form rule still holds, also for the
    /// pieces between the `%2F`s, and the path must fall under this same route whether
    /// `%2F` is read as data or as `/`. The service behind the route must treat `%2F` as
    /// data (an object key, a project path such as `group%2Fproject`); one that decodes it
    /// before routing sees more segments than the route matched.
    #[must_use]
    pub fn dangerous_forward_encoded_slashes(mut self) -> Self {
        self.forward_encoded_slashes = true;
        self
    }

    /// Whether [`Self::dangerous_forward_encoded_slashes`] was set.
    #[must_use]
    pub fn forwards_encoded_slashes(&self) -> bool {
        self.forward_encoded_slashes
    }

    /// Refuses requests that did not come over a connection with a verified client
    /// certificate ([`crate::ClientCertificate`] in the request's extensions) with 400
    /// `invalid_request` (`client_certificate_required`), in every mode, `off` and
    /// `report_only` included: the certificate is checked before DPoP is. Defaults to
    /// not required.
    #[must_use]
    pub fn with_client_cert_required(mut self) -> Self {
        self.client_cert_required = true;
        self
    }

    /// Whether [`Self::with_client_cert_required`] was set.
    #[must_use]
    pub fn requires_client_cert(&self) -> bool {
        self.client_cert_required
    }

    /// Requires these scopes.
    #[must_use]
    pub fn with_scopes<I: IntoIterator<Item = S>, S: Into<String>>(mut self, scopes: I) -> Self {
        self.scopes = scopes.into_iter().map(Into::into).collect();
        self
    }
}

/// One route: methods (all when `None`, otherwise compared exactly: RFC 9110 methods are
/// case-sensitive) and a path prefix matched on segment boundaries (`/api` matches `/api`
/// and `/api/x`, not `/apix`) against the canonical request path.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Route {
    /// Methods this route covers; `None` for all.
    pub methods: Option<Vec<Method>>,
    /// Path prefix, starting with `/`.
    pub path_prefix: String,
    /// The policy.
    pub policy: RoutePolicy,
    /// The route is a protected resource of its own (RFC 9728): its identifier is the
    /// public URL followed by the path prefix, its metadata document is at the
    /// path-suffixed well-known URL, and its challenges point there. Defaults to `false`
    /// (part of the resource the public URL names).
    pub own_resource: bool,
    /// The caller's name for the route, handed on in [`crate::AuthorizedTarget::route_id`]
    /// so that what the caller attaches to a route (an upstream, a stream lifetime) is
    /// chosen by the one match the layer made. Defaults to `None`.
    pub id: Option<usize>,
}

impl Route {
    /// A route for every method under `path_prefix`.
    #[must_use]
    pub fn new(path_prefix: &str, policy: RoutePolicy) -> Self {
        Self {
            methods: None,
            path_prefix: path_prefix.to_owned(),
            policy,
            own_resource: false,
            id: None,
        }
    }

    /// Names the route (see [`Self::id`]).
    #[must_use]
    pub fn with_id(mut self, id: usize) -> Self {
        self.id = Some(id);
        self
    }

    /// Makes the route a protected resource of its own (see [`Self::own_resource`]).
    #[must_use]
    pub fn with_own_resource(mut self) -> Self {
        self.own_resource = true;
        self
    }

    /// The path the route's own resource adds to the public URL (its prefix without a
    /// trailing `/`), when it is one.
    pub(crate) fn resource_path(&self) -> Option<&str> {
        self.own_resource
            .then(|| self.path_prefix.trim_end_matches('/'))
    }

    /// Limits the route to `methods`.
    #[must_use]
    pub fn with_methods(mut self, methods: Vec<Method>) -> Self {
        self.methods = Some(methods);
        self
    }

    /// Whether the route covers `method`: exactly one of its methods, or `HEAD` where it
    /// lists `GET` (RFC 9110 §9.3.2: servers answer `HEAD` with the `GET` handler, and
    /// most frameworks route it there).
    fn covers(&self, method: &Method) -> bool {
        self.methods.as_ref().is_none_or(|m| {
            m.contains(method) || (*method == Method::HEAD && m.contains(&Method::GET))
        })
    }

    fn matches(&self, method: &Method, path: &str) -> bool {
        self.covers(method) && under_prefix(path, self.path_prefix.trim_end_matches('/'))
    }

    /// Whether the two routes have the same prefix (in [`loose_form`], without a trailing
    /// `/`) and cover a common method.
    fn overlaps(&self, other: &Self) -> bool {
        let same_prefix = loose_form(self.path_prefix.trim_end_matches('/'))
            == loose_form(other.path_prefix.trim_end_matches('/'));
        let common_method = match (&self.methods, &other.methods) {
            (Some(a), Some(b)) => a.iter().any(|m| b.contains(m)),
            _ => true,
        };
        same_prefix && common_method
    }
}

/// `path` is `prefix` (without a trailing `/`) or below it, on a segment boundary.
fn under_prefix(path: &str, prefix: &str) -> bool {
    match (path.get(..prefix.len()), path.get(prefix.len()..)) {
        (Some(head), Some(rest)) => {
            head == prefix && (rest.is_empty() || rest.starts_with('/') || prefix.is_empty())
        }
        _ => false,
    }
}

/// [`under_prefix`] with ASCII letters compared without case.
fn under_prefix_ignoring_ascii_case(path: &str, prefix: &str) -> bool {
    match (path.get(..prefix.len()), path.get(prefix.len()..)) {
        (Some(head), Some(rest)) => {
            head.eq_ignore_ascii_case(prefix)
                && (rest.is_empty() || rest.starts_with('/') || prefix.is_empty())
        }
        _ => false,
    }
}

/// The route table: the most specific (longest prefix) matching route wins; requests
/// matching no route get the default policy.
#[derive(Clone, Debug, Default)]
pub struct Routes {
    routes: Vec<Route>,
    /// [`loose_form`] of each route's prefix, in the order of `routes`.
    loose_prefixes: Vec<String>,
    default: RoutePolicy,
}

impl Routes {
    /// Every request gets `default`.
    #[must_use]
    pub fn new(default: RoutePolicy) -> Self {
        Self {
            routes: Vec::new(),
            loose_prefixes: Vec::new(),
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
        self.loose_prefixes = self
            .routes
            .iter()
            .map(|r| loose_form(r.path_prefix.trim_end_matches('/')))
            .collect();
        self
    }

    /// The policy for a request. `path` must be the canonical path
    /// ([`dpop_core::RequestTarget::path`]): the layer resolves routes on nothing else.
    #[must_use]
    pub fn resolve(&self, method: &Method, path: &str) -> &RoutePolicy {
        self.policy_at(self.resolve_index(method, path))
    }

    /// The index of the matching route, `None` for the default policy.
    pub(crate) fn resolve_index(&self, method: &Method, path: &str) -> Option<usize> {
        self.routes.iter().position(|r| r.matches(method, path))
    }

    /// As [`Self::resolve_index`] for a server that routes leniently: `path` and the
    /// prefixes compared in their [`loose_form`].
    pub(crate) fn resolve_index_loosely(&self, method: &Method, path: &str) -> Option<usize> {
        // Most paths have nothing to decode, fold beyond ASCII or cut: their loose form is
        // their ASCII lower case, compared without building it.
        let plain = path
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'-' | b'_' | b'~'));
        let loose = if plain { None } else { Some(loose_form(path)) };
        self.routes
            .iter()
            .zip(&self.loose_prefixes)
            .position(|(r, prefix)| {
                r.covers(method)
                    && match &loose {
                        Some(loose) => under_prefix(loose, prefix),
                        None => under_prefix_ignoring_ascii_case(path, prefix),
                    }
            })
    }

    /// The policy of requests that match no route.
    pub(crate) fn default_policy(&self) -> &RoutePolicy {
        &self.default
    }

    /// The route at `index` (from [`Self::resolve_index`]), `None` for the default policy.
    pub(crate) fn route_at(&self, index: Option<usize>) -> Option<&Route> {
        index.and_then(|i| self.routes.get(i))
    }

    /// The policy of the route at `index` (from [`Self::resolve_index`]).
    pub(crate) fn policy_at(&self, index: Option<usize>) -> &RoutePolicy {
        self.route_at(index).map_or(&self.default, |r| &r.policy)
    }

    /// Two routes with the same prefix (ignoring a trailing `/` and letter case) and a
    /// common method: one would silently shadow the other.
    pub(crate) fn first_overlap(&self) -> Option<&Route> {
        self.routes.iter().enumerate().find_map(|(i, a)| {
            self.routes
                .iter()
                .skip(i.saturating_add(1))
                .any(|b| a.overlaps(b))
                .then_some(a)
        })
    }

    /// The routes, in the order they were added (the default policy is not among them):
    /// for checks at start-up, and for what a configuration has in force.
    pub fn routes(&self) -> impl Iterator<Item = &Route> {
        self.routes.iter()
    }

    /// Every policy in the table (for checks at start-up, e.g. "a route needs nonces").
    pub fn policies(&self) -> impl Iterator<Item = &RoutePolicy> {
        std::iter::once(&self.default).chain(self.routes.iter().map(|r| &r.policy))
    }
}

/// Where the scheme, host and path the client used come from, for the `htu` check.
///
/// The client never chooses the host its proof is checked against: either the server's
/// public URL fixes it, or the request's host must be on an explicit list. Otherwise a
/// proof and token captured at another service would be accepted here.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum HtuSource {
    /// The external origin and path prefix, e.g. `https://api.example.com/orders`, when
    /// TLS is terminated in front or the path is rewritten. The request path is appended.
    /// The request's `Host` is not consulted.
    PublicUrl(String),
    /// Several public URLs (one service under several names). The one whose scheme and
    /// authority match the request's `Host` (or, from a trusted proxy,
    /// `X-Forwarded-Proto` / `X-Forwarded-Host`) is used; a request for any other host is
    /// refused with 400 `host_not_allowed` before any proof check.
    PublicUrls {
        /// The public URLs, each an absolute http(s) URL without query or fragment.
        urls: Vec<String>,
        /// Proxies whose forwarding headers are believed.
        trusted_proxies: Vec<IpNet>,
    },
    /// The request's own `Host` and target. `X-Forwarded-Proto` / `X-Forwarded-Host` are
    /// honoured only when the peer address ([`crate::PeerAddr`]) is one of
    /// `trusted_proxies`; otherwise the scheme is `scheme`. The host must be one of
    /// `allowed_hosts` (refused with 400 `host_not_allowed` otherwise); an empty list is
    /// refused when the layer is built.
    FromRequest {
        /// Scheme when no trusted proxy says otherwise (`http` for a plain listener).
        scheme: String,
        /// Proxies whose forwarding headers are believed.
        trusted_proxies: Vec<IpNet>,
        /// The hosts (`name` or `name:port`) this server answers for.
        allowed_hosts: Vec<String>,
    },
}

/// [`HtuSource`] checked and normalised once, when the layer is built.
#[derive(Clone, Debug)]
pub(crate) enum HtuRule {
    Fixed(HtuBase),
    ByHost {
        urls: Vec<PublicUrl>,
        /// The schemes of `urls`, each once, in the order they first appear.
        schemes: Vec<&'static str>,
        trusted_proxies: Vec<IpNet>,
    },
    FromRequest {
        scheme: String,
        trusted_proxies: Vec<IpNet>,
        /// Every allowed host as a base (normalised `scheme://authority`), for http and
        /// https: parsed once here, so a request costs one parse (its own origin).
        allowed: Vec<HtuBase>,
    },
}

/// One of several public URLs, split when the layer is built.
#[derive(Clone, Debug)]
pub(crate) struct PublicUrl {
    /// `http` or `https`.
    scheme: &'static str,
    /// The public URL, normalised once: the base of the `htu`.
    base: HtuBase,
}

impl PublicUrl {
    fn new(url: &str) -> Option<Self> {
        let base = HtuBase::parse(url).ok()?;
        let scheme = if base.origin().starts_with("https://") {
            "https"
        } else {
            "http"
        };
        Some(Self { scheme, base })
    }
}

/// `scheme://authority` of an absolute URL in normal form (lower case, default port
/// dropped), or `None` when it is not a valid http(s) origin.
fn origin_of(url: &str) -> Option<String> {
    HtuBase::parse(url).ok().map(|b| b.origin().to_owned())
}

impl HtuRule {
    /// The path prefixes of the public URLs (empty for none), for the path-suffixed
    /// metadata path.
    pub(crate) fn prefixes(&self) -> impl Iterator<Item = &str> {
        let fixed = match self {
            Self::Fixed(base) => std::slice::from_ref(base),
            _ => &[],
        };
        let by_host = match self {
            Self::ByHost { urls, .. } => urls.as_slice(),
            _ => &[],
        };
        fixed
            .iter()
            .chain(by_host.iter().map(|u| &u.base))
            .map(|b| b.path_prefix())
            .filter(|p| !p.is_empty())
    }

    /// Checks `source`; the error names the offending value.
    pub(crate) fn new(source: &HtuSource) -> Result<Self, String> {
        match source {
            HtuSource::PublicUrl(url) => {
                Ok(Self::Fixed(HtuBase::parse(url).map_err(|_| url.clone())?))
            }
            HtuSource::PublicUrls {
                urls,
                trusted_proxies,
            } => {
                if urls.is_empty() {
                    return Err(String::new());
                }
                let urls = urls
                    .iter()
                    .map(|u| PublicUrl::new(u).ok_or_else(|| u.clone()))
                    .collect::<Result<Vec<_>, _>>()?;
                let mut schemes = Vec::with_capacity(2);
                for url in &urls {
                    if !schemes.contains(&url.scheme) {
                        schemes.push(url.scheme);
                    }
                }
                Ok(Self::ByHost {
                    urls,
                    schemes,
                    trusted_proxies: trusted_proxies.clone(),
                })
            }
            HtuSource::FromRequest {
                scheme,
                trusted_proxies,
                allowed_hosts,
            } => {
                if allowed_hosts.is_empty() {
                    return Err(String::new());
                }
                let mut allowed = Vec::with_capacity(allowed_hosts.len().saturating_mul(2));
                for host in allowed_hosts {
                    for s in ["http", "https"] {
                        // The normal form must be its own normal form: the per-request
                        // shortcut in `base` relies on it.
                        let base = origin_of(&format!("{s}://{host}"))
                            .and_then(|origin| {
                                HtuBase::parse(&origin)
                                    .ok()
                                    .filter(|b| b.origin() == origin)
                            })
                            .ok_or_else(|| host.clone())?;
                        allowed.push(base);
                    }
                }
                Ok(Self::FromRequest {
                    scheme: scheme.clone(),
                    trusted_proxies: trusted_proxies.clone(),
                    allowed,
                })
            }
        }
    }

    /// The URI the client addressed, without query and fragment, normalised. `path` is the
    /// canonical request path (or, on a route that forwards non-canonical targets, the
    /// path as sent, which `Htu` normalises).
    pub(crate) fn htu(
        &self,
        uri: &Uri,
        headers: &HeaderMap,
        peer: Option<IpAddr>,
        path: &str,
    ) -> Result<Htu, RequestError> {
        self.base(uri, headers, peer)?
            .join(path)
            .map_err(|_| RequestError::BadRequestTarget)
    }

    /// The public base (origin and prefix) the client addressed: the one the `htu`, the
    /// RFC 9728 `resource` and the `resource_metadata` URL are built on. A host this rule
    /// does not allow is refused, never reflected.
    pub(crate) fn base(
        &self,
        uri: &Uri,
        headers: &HeaderMap,
        peer: Option<IpAddr>,
    ) -> Result<Cow<'_, HtuBase>, RequestError> {
        match self {
            Self::Fixed(base) => Ok(Cow::Borrowed(base)),
            Self::ByHost {
                urls,
                schemes,
                trusted_proxies,
            } => {
                let (scheme, host) = scheme_and_host(uri, headers, peer, trusted_proxies, None)?;
                // The public URL gives the scheme (TLS may end in front of this server);
                // a scheme the request does state (HTTP/2, a trusted proxy) must agree.
                // The request's origin is normalised once per scheme, not once per URL.
                let origins = schemes
                    .iter()
                    .filter(|&&public| scheme.is_none_or(|s| s.eq_ignore_ascii_case(public)))
                    .filter_map(|&public| Some((public, origin_of(&format!("{public}://{host}"))?)))
                    .collect::<Vec<_>>();
                let url = urls
                    .iter()
                    .find(|u| {
                        origins
                            .iter()
                            .any(|(s, o)| *s == u.scheme && o == u.base.origin())
                    })
                    .ok_or(RequestError::HostNotAllowed)?;
                Ok(Cow::Borrowed(&url.base))
            }
            Self::FromRequest {
                scheme,
                trusted_proxies,
                allowed,
            } => {
                let (scheme, host) =
                    scheme_and_host(uri, headers, peer, trusted_proxies, Some(scheme))?;
                let scheme = scheme.unwrap_or("http");
                // The usual case: the request names an allowed host already in normal
                // form. Normalising a normal form changes nothing (checked when the rule
                // was built), so this is the base the full parse below would find.
                if let Some(base) = allowed.iter().find(|b| {
                    b.origin()
                        .strip_prefix(scheme)
                        .and_then(|rest| rest.strip_prefix("://"))
                        == Some(host)
                }) {
                    return Ok(Cow::Borrowed(base));
                }
                let requested = HtuBase::parse(&format!("{scheme}://{host}"))
                    .map_err(|_| RequestError::HostNotAllowed)?;
                // Both sides normalised by the same parser; the configured base is the one
                // used from here on.
                allowed
                    .iter()
                    .find(|base| base.origin() == requested.origin())
                    .map(Cow::Borrowed)
                    .ok_or(RequestError::HostNotAllowed)
            }
        }
    }
}

/// The scheme and host the client addressed: from a trusted proxy's `X-Forwarded-Proto`
/// / `X-Forwarded-Host` (first value), else the request's authority (HTTP/2) or `Host`.
/// Without `default_scheme`, the scheme comes from the URI or the forwarding header only.
fn scheme_and_host<'a>(
    uri: &'a Uri,
    headers: &'a HeaderMap,
    peer: Option<IpAddr>,
    trusted_proxies: &[IpNet],
    default_scheme: Option<&'a str>,
) -> Result<(Option<&'a str>, &'a str), RequestError> {
    // An IPv4-mapped IPv6 peer (a dual-stack listener) is its IPv4 address.
    let trusted = peer.is_some_and(|ip| {
        trusted_proxies
            .iter()
            .any(|n| n.contains(&ip.to_canonical()))
    });
    // The first value is the one the outermost trusted proxy saw. A header that is there
    // but unusable (empty first value, not text) is refused rather than skipped: the
    // upstream could read it otherwise than this layer did.
    let forwarded = |name: &str| -> Result<Option<&'a str>, RequestError> {
        if !trusted {
            return Ok(None);
        }
        let Some(value) = headers.get(name) else {
            return Ok(None);
        };
        value
            .to_str()
            .ok()
            .and_then(|v| v.split(',').next())
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(Some)
            .ok_or(RequestError::HostNotAllowed)
    };
    let scheme = forwarded("x-forwarded-proto")?
        .or(default_scheme)
        .or_else(|| uri.scheme_str());
    let host = match forwarded("x-forwarded-host")? {
        Some(h) => h,
        None => match uri.authority() {
            Some(a) => a.as_str(),
            None => headers
                .get(http::header::HOST)
                .and_then(|h| h.to_str().ok())
                .ok_or(RequestError::BadRequestTarget)?,
        },
    };
    // RFC 9110 §7.2: uri-host [ ":" port ], nothing else; escapes are refused too, so
    // a host has one spelling (`api%2Eexample.com` is not `api.example.com`).
    let plain = host.bytes().all(|b| {
        b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b':' | b'[' | b']')
    });
    if !plain {
        return Err(RequestError::HostNotAllowed);
    }
    Ok((scheme, host))
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

    fn htu(
        source: &HtuSource,
        uri: &Uri,
        headers: &HeaderMap,
        peer: Option<&str>,
    ) -> Result<String, RequestError> {
        let peer = peer.map(|p| p.parse().unwrap());
        HtuRule::new(source)
            .unwrap()
            .htu(uri, headers, peer, uri.path())
            .map(|h| h.as_str().to_owned())
    }

    #[test]
    fn get_routes_cover_head() {
        let routes = Routes::new(RoutePolicy::new(DpopMode::Off)).route(
            Route::new("/reports", RoutePolicy::new(DpopMode::Required))
                .with_methods(vec![Method::GET]),
        );
        assert_eq!(
            routes.resolve(&Method::HEAD, "/reports").mode,
            DpopMode::Required
        );
        assert_eq!(
            routes.resolve(&Method::POST, "/reports").mode,
            DpopMode::Off
        );
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
            htu(&public, &uri, &headers, None).unwrap(),
            "https://api.example.com/orders/v1/items"
        );
        let proxies: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let from_req = HtuSource::FromRequest {
            scheme: "http".into(),
            trusted_proxies: proxies,
            allowed_hosts: vec!["internal:8080".into(), "API.example.com".into()],
        };
        // Untrusted peer: forwarding headers ignored.
        assert_eq!(
            htu(&from_req, &uri, &headers, Some("192.0.2.1")).unwrap(),
            "http://internal:8080/v1/items"
        );
        assert_eq!(
            htu(&from_req, &uri, &headers, Some("10.1.2.3")).unwrap(),
            "https://api.example.com/v1/items"
        );
        headers.remove("host");
        assert_eq!(
            htu(&from_req, &uri, &headers, None),
            Err(RequestError::BadRequestTarget)
        );
    }

    #[test]
    fn hosts_outside_the_public_urls_or_allowed_hosts_are_refused() {
        let uri: Uri = "/v1/items".parse().unwrap();
        let with_host = |h: &str| {
            let mut headers = HeaderMap::new();
            headers.insert("host", h.parse().unwrap());
            headers
        };
        let from_req = HtuSource::FromRequest {
            scheme: "http".into(),
            trusted_proxies: Vec::new(),
            allowed_hosts: vec!["api.example.com".into()],
        };
        assert_eq!(
            htu(&from_req, &uri, &with_host("API.Example.com:80"), None).unwrap(),
            "http://api.example.com/v1/items"
        );
        // The normal form itself (the shortcut) and spellings that need normalising (the
        // full parse) end on the same configured base.
        let rule = HtuRule::new(&from_req).unwrap();
        let configured = |h: &str| {
            let base = rule.base(&uri, &with_host(h), None).unwrap();
            assert!(matches!(base, Cow::Borrowed(_)), "{h}");
            std::ptr::from_ref(base.as_ref())
        };
        let normal = configured("api.example.com");
        for spelling in [
            "API.example.com",
            "api.example.com:80",
            "api.EXAMPLE.com:080",
        ] {
            assert_eq!(configured(spelling), normal, "{spelling}");
        }
        for bad in [
            "other.example.com",
            "api.example.com:8080",
            "api.example.com.evil",
            "u@api.example.com",
            "api.example.com/x",
            "api.example.com/@evil.com",
            "api%2Eexample.com",
            "api.ex%61mple.com",
            "api.example.com?",
            "api.example.com\\",
        ] {
            assert_eq!(
                htu(&from_req, &uri, &with_host(bad), None),
                Err(RequestError::HostNotAllowed),
                "{bad}"
            );
        }
        let several = HtuSource::PublicUrls {
            urls: vec![
                "https://a.example".into(),
                "https://b.example:8443/api".into(),
            ],
            trusted_proxies: Vec::new(),
        };
        assert_eq!(
            htu(&several, &uri, &with_host("a.example:443"), None).unwrap(),
            "https://a.example/v1/items"
        );
        assert_eq!(
            htu(&several, &uri, &with_host("B.example:8443"), None).unwrap(),
            "https://b.example:8443/api/v1/items"
        );
        for bad in ["c.example", "b.example", "a.example:8443"] {
            assert_eq!(
                htu(&several, &uri, &with_host(bad), None),
                Err(RequestError::HostNotAllowed),
                "{bad}"
            );
        }
        // From a trusted proxy, a forwarding header that is there but unusable is refused,
        // not skipped in favour of Host.
        let trusting = HtuSource::FromRequest {
            scheme: "http".into(),
            trusted_proxies: vec!["127.0.0.1/32".parse().unwrap()],
            allowed_hosts: vec!["api.example.com".into()],
        };
        for (name, value) in [
            ("x-forwarded-host", ", evil.example"),
            ("x-forwarded-proto", " , https"),
        ] {
            let mut headers = with_host("api.example.com");
            headers.insert(name, value.parse().unwrap());
            assert_eq!(
                htu(&trusting, &uri, &headers, Some("127.0.0.1")),
                Err(RequestError::HostNotAllowed),
                "{name}: {value}"
            );
        }
        // A stated scheme must agree with the public URL's.
        let h2: Uri = "http://a.example/v1/items".parse().unwrap();
        assert_eq!(
            htu(&several, &h2, &HeaderMap::new(), None),
            Err(RequestError::HostNotAllowed)
        );
        // Neither public URLs nor allowed hosts: refused when the layer is built.
        assert!(
            HtuRule::new(&HtuSource::FromRequest {
                scheme: "http".into(),
                trusted_proxies: Vec::new(),
                allowed_hosts: Vec::new(),
            })
            .is_err()
        );
    }
}
