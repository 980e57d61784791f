//! The URL rule for everything fetched from or sent to an authorization server: `https`,
//! or `http` only to a loopback host (`localhost`, 127.0.0.0/8, `[::1]`); a host; no
//! user info, fragment or whitespace. Elsewhere plain http would let anyone on the path
//! substitute the keys tokens are checked with, or read the secrets sent.
//!
//! [`IssuerUrl`] is an issuer identifier: the rule, no query, and one canonical form
//! without trailing slashes ([`dpop_core::jwt::canonical_issuer`]), so `http://host/` and
//! `http://host` are the same issuer in the configuration, in discovered metadata and in
//! `iss` claims. [`EndpointUrl`] is any other URL of the server (`jwks_uri`, token,
//! introspection endpoint): the rule, a query allowed, kept as written.

use std::fmt;
use std::net::Ipv4Addr;

use dpop_core::jwt::canonical_issuer;

/// Why a URL was refused. `Display` says what is wrong with it, to follow the URL in a
/// message (`issuer "http://x" must use https (...)`).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum UrlError {
    /// It does not parse as an absolute URL.
    #[error("is not a URL: {0}")]
    NotAUrl(String),
    /// It contains whitespace or control characters (which URL parsers drop or encode).
    #[error("is not a URL: it contains whitespace or control characters")]
    Whitespace,
    /// A backslash, which URL parsers disagree about.
    #[error("must not contain a backslash")]
    Backslash,
    /// A scheme other than `https` or `http`.
    #[error("has scheme {0:?}, not https")]
    Scheme(String),
    /// `http` to a host that is not loopback.
    #[error("must use https (http is accepted only for 127.0.0.1, localhost and [::1])")]
    HttpNotLoopback,
    /// No host.
    #[error("has no host")]
    NoHost,
    /// User name or password in the URL.
    #[error("must not contain credentials")]
    Credentials,
    /// A `#fragment`.
    #[error("must not have a fragment")]
    Fragment,
    /// A `?query`, in an issuer identifier.
    #[error("must not have a query")]
    Query,
}

/// Whether `host` (as the URL parser serialises it: lower case, IPv6 in brackets) is this
/// machine. An address, not a prefix: `127.0.0.1.nip.io` is a name anyone can point
/// anywhere.
fn is_loopback_host(host: &str) -> bool {
    host == "localhost"
        || host == "[::1]"
        || host.parse::<Ipv4Addr>().is_ok_and(|ip| ip.is_loopback())
}

/// Parses `text` and checks the rule; `query_allowed` for endpoints.
fn check(text: &str, query_allowed: bool) -> Result<url::Url, UrlError> {
    if text.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(UrlError::Whitespace);
    }
    // WHATWG parsers read `\` as `/` in http(s) URLs, RFC 3986 parsers do not: with
    // `https://a.example\@b.example` one would see host `a.example`, another `b.example`.
    if text.contains('\\') {
        return Err(UrlError::Backslash);
    }
    let url = url::Url::parse(text).map_err(|e| UrlError::NotAUrl(e.to_string()))?;
    let host = url.host_str().unwrap_or_default();
    match url.scheme() {
        "https" => {}
        "http" if is_loopback_host(host) => {}
        "http" => return Err(UrlError::HttpNotLoopback),
        other => return Err(UrlError::Scheme(other.to_owned())),
    }
    if host.is_empty() {
        return Err(UrlError::NoHost);
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(UrlError::Credentials);
    }
    if url.fragment().is_some() {
        return Err(UrlError::Fragment);
    }
    if !query_allowed && url.query().is_some() {
        return Err(UrlError::Query);
    }
    Ok(url)
}

/// An issuer identifier that passed the URL rule, in canonical form (no trailing
/// slash; otherwise as written, so the `iss` an issuer emits does not change).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct IssuerUrl {
    canonical: String,
}

impl IssuerUrl {
    /// Checks `text` and keeps its canonical form.
    ///
    /// # Errors
    /// [`UrlError`] naming the broken part.
    pub fn parse(text: &str) -> Result<Self, UrlError> {
        check(text, false)?;
        let canonical = canonical_issuer(text);
        // `https://` and the like: nothing is left once the slashes go.
        check(canonical, false)?;
        Ok(Self {
            canonical: canonical.to_owned(),
        })
    }

    /// The canonical form, e.g. `https://as.example.com` or `https://as.example.com/tenant`.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.canonical
    }

    /// Whether `other` (a metadata `issuer`, an `iss` claim) names this issuer: equal in
    /// canonical form.
    #[must_use]
    pub fn matches(&self, other: &str) -> bool {
        canonical_issuer(other) == self.canonical
    }

    /// `{issuer}{suffix}`, e.g. the issuer's own endpoints (`/token`).
    #[must_use]
    pub fn join(&self, suffix: &str) -> String {
        format!("{}{suffix}", self.canonical)
    }

    /// The discovery documents to try, in order.
    ///
    /// First RFC 8414 §3.1 (the well-known suffix goes between host and path), the
    /// document of an OAuth authorization server, which `dpop-issuer` and the test
    /// issuers serve; then OpenID Connect Discovery 1.0 §4 (appended to the issuer),
    /// which OpenID providers such as CI and Kubernetes token issuers serve.
    #[must_use]
    pub fn discovery_urls(&self) -> [String; 2] {
        let (origin, path) = self
            .canonical
            .split_once("://")
            .and_then(|(scheme, rest)| {
                let slash = rest.find('/')?;
                let (host, path) = rest.split_at_checked(slash)?;
                Some((format!("{scheme}://{host}"), path))
            })
            .unwrap_or_else(|| (self.canonical.clone(), ""));
        [
            format!("{origin}/.well-known/oauth-authorization-server{path}"),
            format!("{}/.well-known/openid-configuration", self.canonical),
        ]
    }
}

impl fmt::Display for IssuerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.canonical)
    }
}

impl fmt::Debug for IssuerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("IssuerUrl").field(&self.canonical).finish()
    }
}

impl std::str::FromStr for IssuerUrl {
    type Err = UrlError;

    fn from_str(s: &str) -> Result<Self, UrlError> {
        Self::parse(s)
    }
}

/// Another URL of an authorization server (`jwks_uri`, token or introspection
/// endpoint) that passed the URL rule; a query is allowed. Kept as written.
#[derive(Clone, PartialEq, Eq)]
pub struct EndpointUrl {
    text: String,
}

impl EndpointUrl {
    /// Checks `text`.
    ///
    /// # Errors
    /// [`UrlError`] naming the broken part.
    pub fn parse(text: &str) -> Result<Self, UrlError> {
        check(text, true)?;
        Ok(Self {
            text: text.to_owned(),
        })
    }

    /// The URL as written.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl fmt::Display for EndpointUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl fmt::Debug for EndpointUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("EndpointUrl").field(&self.text).finish()
    }
}

impl std::str::FromStr for EndpointUrl {
    type Err = UrlError;

    fn from_str(s: &str) -> Result<Self, UrlError> {
        Self::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trailing_slashes_name_the_same_issuer() {
        let a = IssuerUrl::parse("http://127.0.0.1:8081/").unwrap();
        let b = IssuerUrl::parse("http://127.0.0.1:8081").unwrap();
        assert_eq!(a, b);
        assert_eq!(a.as_str(), "http://127.0.0.1:8081");
        assert!(a.matches("http://127.0.0.1:8081") && a.matches("http://127.0.0.1:8081/"));
        assert!(!a.matches("http://127.0.0.1:8082"));
        // One slash only: `//` is another identifier.
        assert!(!a.matches("http://127.0.0.1:8081//"));
        let t = IssuerUrl::parse("https://as.example.com/tenant/1/").unwrap();
        assert_eq!(t.as_str(), "https://as.example.com/tenant/1");
        assert_eq!(t.join("/token"), "https://as.example.com/tenant/1/token");
        // Written as given otherwise: the issuer's `iss` does not change.
        assert_eq!(
            IssuerUrl::parse("https://AS.example.com").unwrap().as_str(),
            "https://AS.example.com"
        );
    }

    #[test]
    fn the_rule() {
        for fine in [
            "https://as.example.com",
            "http://localhost:8081",
            "http://127.0.0.1",
            "http://127.0.0.2:80",
            "http://[::1]:9000/x",
        ] {
            IssuerUrl::parse(fine).unwrap_or_else(|e| panic!("{fine}: {e}"));
        }
        for (bad, err) in [
            ("http://as.example.com", UrlError::HttpNotLoopback),
            ("http://10.0.0.1:8081", UrlError::HttpNotLoopback),
            ("http://127.0.0.1.nip.io", UrlError::HttpNotLoopback),
            ("http://127.evil.example", UrlError::HttpNotLoopback),
            ("ftp://as.example.com", UrlError::Scheme("ftp".into())),
            ("https://as.example.com/?x=1", UrlError::Query),
            ("https://as.example.com/#f", UrlError::Fragment),
            ("https://user@as.example.com", UrlError::Credentials),
            ("https://u:p@as.example.com", UrlError::Credentials),
            ("https://as.example.com/a b", UrlError::Whitespace),
            ("https://as.example.com\n", UrlError::Whitespace),
            ("https://good.example\\@evil.example", UrlError::Backslash),
            ("https://as.example.com\\tenant", UrlError::Backslash),
        ] {
            assert_eq!(IssuerUrl::parse(bad), Err(err), "{bad}");
        }
        assert!(matches!(
            IssuerUrl::parse("https://"),
            Err(UrlError::NotAUrl(_))
        ));
        assert!(matches!(
            IssuerUrl::parse("not a url"),
            Err(UrlError::Whitespace)
        ));
        assert!(matches!(
            IssuerUrl::parse("as.example.com"),
            Err(UrlError::NotAUrl(_))
        ));
        // Endpoints may have a query, nothing else changes.
        EndpointUrl::parse("https://as.example.com/jwks?v=2").unwrap();
        assert_eq!(
            EndpointUrl::parse("http://keys.example.com/jwks"),
            Err(UrlError::HttpNotLoopback)
        );
        assert_eq!(
            UrlError::HttpNotLoopback.to_string(),
            "must use https (http is accepted only for 127.0.0.1, localhost and [::1])"
        );
    }

    #[test]
    fn discovery_urls_follow_both_specs() {
        assert_eq!(
            IssuerUrl::parse("https://as.example.com")
                .unwrap()
                .discovery_urls(),
            [
                "https://as.example.com/.well-known/oauth-authorization-server",
                "https://as.example.com/.well-known/openid-configuration",
            ]
        );
        assert_eq!(
            IssuerUrl::parse("https://as.example.com/tenant/a")
                .unwrap()
                .discovery_urls(),
            [
                "https://as.example.com/.well-known/oauth-authorization-server/tenant/a",
                "https://as.example.com/tenant/a/.well-known/openid-configuration",
            ]
        );
        assert_eq!(
            IssuerUrl::parse("https://gitlab.example.com")
                .unwrap()
                .discovery_urls(),
            [
                "https://gitlab.example.com/.well-known/oauth-authorization-server",
                "https://gitlab.example.com/.well-known/openid-configuration",
            ]
        );
        assert_eq!(
            IssuerUrl::parse("https://as.example.com/tenant/1/")
                .unwrap()
                .discovery_urls(),
            [
                "https://as.example.com/.well-known/oauth-authorization-server/tenant/1",
                "https://as.example.com/tenant/1/.well-known/openid-configuration",
            ]
        );
    }
}
