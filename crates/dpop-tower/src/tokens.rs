//! Where access tokens are checked: JWTs against the issuer's keys (discovered through
//! RFC 8414 metadata, then OpenID discovery, or a configured `jwks_uri`), or opaque
//! tokens through RFC 7662 introspection; and the verified-token cache in front of both,
//! so a request costs one proof signature check, not two.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use dpop_core::jwt::{self, AccessToken, JwkSet, JwtValidation, TokenError};
use dpop_core::{Ath, Error, Jkt, UnixTime};
use serde::Deserialize;
use zeroize::Zeroizing;

use crate::events::DpopEvents;

/// A boxed future, as token sources are used through `dyn`.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Checks access tokens.
pub trait TokenSource: Send + Sync + 'static {
    /// Verifies `token` at `now`.
    ///
    /// # Errors
    /// [`Error::Token`] for a bad token, [`Error::TokenSourceUnavailable`] when the
    /// issuer cannot be reached (the request is then refused with 503).
    fn verify<'a>(
        &'a self,
        token: &'a str,
        now: UnixTime,
    ) -> BoxFuture<'a, Result<AccessToken, Error>>;

    /// Whether the source can check tokens now (keys loaded), for readiness probes.
    fn is_ready(&self) -> bool {
        true
    }
}

/// Settings for [`JwksSource`].
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct JwksSourceConfig {
    /// The issuer identifier (`iss`), e.g. `https://as.example.com`.
    pub issuer: String,
    /// The resource's audience identifier; tokens must name it in `aud`.
    pub audience: String,
    /// Skip discovery and fetch keys from here. Defaults to discovery.
    pub jwks_uri: Option<String>,
    /// Re-fetch keys this often, to pick up rotation. Defaults to 5 minutes.
    pub refresh_interval: Duration,
    /// At most one fetch per this interval when tokens name an unknown `kid`. Defaults to 10 s.
    pub min_refresh_interval: Duration,
    /// While no keys are loaded yet (the issuer was unreachable so far, e.g. it starts
    /// after the gateway), at most one fetch per this interval, made by a request: the
    /// first request after the issuer comes up loads the keys, instead of every request
    /// getting 503 for up to `min_refresh_interval`. Defaults to 1 s.
    pub missing_keys_retry_interval: Duration,
    /// Timeout of each HTTP request to the issuer. Defaults to 5 s.
    pub http_timeout: Duration,
    /// Token checks (leeway, algorithms, `typ` policy). Defaults to [`JwtValidation::new`]
    /// with the issuer and the audience.
    pub validation: JwtValidation,
}

impl JwksSourceConfig {
    /// Defaults for tokens from `issuer` for `audience`.
    #[must_use]
    pub fn new(issuer: &str, audience: &str) -> Self {
        Self {
            issuer: issuer.to_owned(),
            audience: audience.to_owned(),
            jwks_uri: None,
            refresh_interval: Duration::from_secs(300),
            min_refresh_interval: Duration::from_secs(10),
            missing_keys_retry_interval: Duration::from_secs(1),
            http_timeout: Duration::from_secs(5),
            validation: JwtValidation::new(issuer, Some(audience)),
        }
    }
}

struct Keys {
    set: Arc<JwkSet>,
    fetched: Instant,
}

/// JWT access tokens verified with the issuer's published keys.
pub struct JwksSource {
    config: JwksSourceConfig,
    http: reqwest::Client,
    keys: RwLock<Option<Keys>>,
    jwks_uri: tokio::sync::Mutex<Option<String>>,
    last_fetch: Mutex<Option<Instant>>,
    events: Arc<dyn DpopEvents>,
}

impl fmt::Debug for JwksSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwksSource")
            .field("issuer", &self.config.issuer)
            .field("audience", &self.config.audience)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct Metadata {
    issuer: String,
    jwks_uri: Option<String>,
}

fn unavailable(what: &'static str) -> Error {
    Error::TokenSourceUnavailable(what)
}

/// Largest RFC 8414 / OpenID discovery document read.
const MAX_METADATA_BYTES: usize = 64 * 1024;
/// Largest RFC 7662 introspection response read.
const MAX_INTROSPECTION_BYTES: usize = 64 * 1024;

// What is fetched from an authorization server is bounded the way `dpop-issuer` bounds
// the documents of the issuers it trusts (its `trust.rs`): https, or http to a loopback
// name; a size limit enforced while reading; the client's timeout over the whole
// exchange. That crate is not a dependency of this one, so the rules are restated here.

/// Whether `text` may be fetched: `https`, or `http` to `localhost`, `127.0.0.1` or
/// `[::1]` (an issuer on the same machine); a host; no credentials or fragment; no
/// query unless `query_allowed`. Elsewhere plain http would let anyone on the path
/// substitute the keys that tokens are checked with.
fn check_fetch_url(text: &str, query_allowed: bool) -> Result<(), &'static str> {
    let url = reqwest::Url::parse(text).map_err(|_| "not a URL")?;
    match url.scheme() {
        "https" => {}
        // The URL parser lower-cases names and brackets IPv6 literals.
        "http" if matches!(url.host_str(), Some("localhost" | "127.0.0.1" | "[::1]")) => {}
        "http" => return Err("http is accepted only for localhost, 127.0.0.1 and [::1]"),
        _ => return Err("not an https URL"),
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err("no host");
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("credentials in the URL");
    }
    if url.fragment().is_some() {
        return Err("a fragment");
    }
    if !query_allowed && url.query().is_some() {
        return Err("a query");
    }
    Ok(())
}

/// Why a body was not read.
#[derive(Debug)]
enum ReadError {
    /// Longer than the limit (by `Content-Length`, or once the bytes read passed it).
    TooLarge,
    /// The connection failed or the timeout passed.
    Failed,
}

/// The body of `response`, at most `limit` bytes. Reading stops as soon as the limit is
/// passed, so a server cannot make this process buffer an endless document.
async fn read_bounded(mut response: reqwest::Response, limit: usize) -> Result<Vec<u8>, ReadError> {
    if response
        .content_length()
        .is_some_and(|n| usize::try_from(n).map_or(true, |n| n > limit))
    {
        return Err(ReadError::TooLarge);
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|_| ReadError::Failed)? {
        if body.len().saturating_add(chunk.len()) > limit {
            return Err(ReadError::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

impl JwksSource {
    /// A source for `config`, reporting fetches to `events`. Keys are fetched on first
    /// use; call [`JwksSource::refresh`] at start-up to fail early.
    ///
    /// # Errors
    /// [`Error::ApiMisuse`] when the `jwks_uri` (or, for discovery, the issuer) is not an
    /// `https` URL (`http` is accepted only for `localhost`, `127.0.0.1` and `[::1]`);
    /// when the HTTP client cannot be built.
    pub fn new(config: JwksSourceConfig, events: Arc<dyn DpopEvents>) -> Result<Self, Error> {
        match &config.jwks_uri {
            Some(uri) => check_fetch_url(uri, true).map_err(|why| {
                tracing::error!(target: "dpop::tokens", jwks_uri = %uri, why, "unusable jwks_uri");
                Error::ApiMisuse(
                    "jwks_uri must be an https URL (http only for localhost, 127.0.0.1 and [::1])",
                )
            })?,
            None => check_fetch_url(&config.issuer, false).map_err(|why| {
                tracing::error!(target: "dpop::tokens", issuer = %config.issuer, why, "cannot discover this issuer's keys");
                Error::ApiMisuse(
                    "to discover its keys, the issuer must be an https URL (http only for localhost, 127.0.0.1 and [::1])",
                )
            })?,
        }
        let http = reqwest::Client::builder()
            .timeout(config.http_timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|_| unavailable("cannot build the HTTP client"))?;
        let jwks_uri = tokio::sync::Mutex::new(config.jwks_uri.clone());
        Ok(Self {
            config,
            http,
            keys: RwLock::new(None),
            jwks_uri,
            last_fetch: Mutex::new(None),
            events,
        })
    }

    /// RFC 8414 §3: the well-known suffix goes between host and path; OpenID Connect
    /// Discovery appends it.
    fn discovery_urls(issuer: &str) -> Vec<String> {
        let trimmed = issuer.trim_end_matches('/');
        let (origin, path) = match trimmed
            .find("://")
            .and_then(|i| trimmed[i + 3..].find('/').map(|j| i + 3 + j))
        {
            Some(k) => (&trimmed[..k], &trimmed[k..]),
            None => (trimmed, ""),
        };
        vec![
            format!("{origin}/.well-known/oauth-authorization-server{path}"),
            format!("{trimmed}/.well-known/openid-configuration"),
        ]
    }

    async fn discover(&self) -> Result<String, Error> {
        let mut guard = self.jwks_uri.lock().await;
        if let Some(uri) = guard.as_ref() {
            return Ok(uri.clone());
        }
        let mut failure = "cannot fetch the issuer's metadata";
        for url in Self::discovery_urls(&self.config.issuer) {
            let Ok(resp) = self
                .http
                .get(&url)
                .header(reqwest::header::ACCEPT, "application/json")
                .send()
                .await
            else {
                continue;
            };
            if !resp.status().is_success() {
                continue;
            }
            let body = match read_bounded(resp, MAX_METADATA_BYTES).await {
                Ok(body) => body,
                Err(ReadError::TooLarge) => {
                    tracing::warn!(target: "dpop::tokens", %url, limit = MAX_METADATA_BYTES, "the issuer's metadata is too large");
                    failure = "the issuer's metadata is too large";
                    continue;
                }
                Err(ReadError::Failed) => continue,
            };
            let Ok(meta) = serde_json::from_slice::<Metadata>(&body) else {
                continue;
            };
            // RFC 8414 §3.3: the metadata must name the issuer we asked about.
            if meta.issuer != self.config.issuer {
                tracing::error!(target: "dpop::tokens", expected = %self.config.issuer, found = %meta.issuer, "issuer metadata names another issuer");
                return Err(unavailable(
                    "the issuer's metadata names a different issuer",
                ));
            }
            let uri = meta
                .jwks_uri
                .ok_or_else(|| unavailable("the issuer's metadata has no jwks_uri"))?;
            if let Err(why) = check_fetch_url(&uri, true) {
                tracing::error!(target: "dpop::tokens", %url, jwks_uri = %uri, why, "the issuer's metadata names an unusable jwks_uri");
                return Err(unavailable(
                    "the issuer's metadata names a jwks_uri that is not https (http only for localhost, 127.0.0.1 and [::1])",
                ));
            }
            *guard = Some(uri.clone());
            return Ok(uri);
        }
        Err(unavailable(failure))
    }

    /// Fetches the keys now.
    ///
    /// # Errors
    /// When metadata or keys cannot be fetched or parsed; the previous keys stay in use.
    pub async fn refresh(&self) -> Result<(), Error> {
        *self
            .last_fetch
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(Instant::now());
        let result = self.fetch().await;
        self.events.jwks_refresh(result.is_ok());
        match result {
            Ok(set) => {
                tracing::info!(target: "dpop::tokens", keys = set.len(), skipped = set.skipped(), "issuer keys loaded");
                *self.keys.write().unwrap_or_else(PoisonError::into_inner) = Some(Keys {
                    set: Arc::new(set),
                    fetched: Instant::now(),
                });
                Ok(())
            }
            Err(e) => {
                tracing::warn!(target: "dpop::tokens", error = %e, "cannot refresh the issuer's keys");
                Err(e)
            }
        }
    }

    async fn fetch(&self) -> Result<JwkSet, Error> {
        let uri = self.discover().await?;
        let resp = self
            .http
            .get(&uri)
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|_| unavailable("cannot fetch the issuer's JWK set"))?;
        if !resp.status().is_success() {
            return Err(unavailable("the issuer's JWK set answered an error status"));
        }
        let body = read_bounded(resp, jwt::MAX_JWKS_BYTES)
            .await
            .map_err(|e| match e {
                ReadError::TooLarge => {
                    tracing::warn!(target: "dpop::tokens", jwks_uri = %uri, limit = jwt::MAX_JWKS_BYTES, "the issuer's JWK set is too large");
                    unavailable("the issuer's JWK set is too large")
                }
                ReadError::Failed => unavailable("cannot read the issuer's JWK set"),
            })?;
        let text = std::str::from_utf8(&body)
            .map_err(|_| unavailable("the issuer's JWK set is not UTF-8"))?;
        JwkSet::from_json(text).map_err(|_| unavailable("the issuer's JWK set is invalid"))
    }

    fn current(&self) -> Option<(Arc<JwkSet>, Instant)> {
        self.keys
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .map(|k| (Arc::clone(&k.set), k.fetched))
    }

    fn may_fetch_again(&self) -> bool {
        self.fetched_longer_ago_than(self.config.min_refresh_interval)
    }

    fn fetched_longer_ago_than(&self, interval: Duration) -> bool {
        self.last_fetch
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_none_or(|t| t.elapsed() >= interval)
    }

    async fn verify_jwt(&self, token: &str, now: UnixTime) -> Result<AccessToken, Error> {
        let keys = match self.current() {
            Some((set, fetched)) => {
                if fetched.elapsed() >= self.config.refresh_interval && self.may_fetch_again() {
                    // Rotation: refresh; on failure keep using the keys we have.
                    let _ = self.refresh().await;
                    self.current().map_or(set, |(s, _)| s)
                } else {
                    set
                }
            }
            None => {
                if !self.fetched_longer_ago_than(self.config.missing_keys_retry_interval) {
                    return Err(unavailable("the issuer's keys are not loaded"));
                }
                self.refresh().await?;
                self.current()
                    .map(|(s, _)| s)
                    .ok_or_else(|| unavailable("the issuer's keys are not loaded"))?
            }
        };
        match jwt::verify_access_token(token, &keys, &self.config.validation, now) {
            // An unknown kid may be a new key: refresh (rate-limited) and try once more.
            Err(TokenError::UnknownKey) if self.may_fetch_again() => {
                if self.refresh().await.is_ok()
                    && let Some((set, _)) = self.current()
                {
                    return jwt::verify_access_token(token, &set, &self.config.validation, now)
                        .map_err(Error::Token);
                }
                Err(Error::Token(TokenError::UnknownKey))
            }
            other => other.map_err(Error::Token),
        }
    }
}

impl TokenSource for JwksSource {
    fn verify<'a>(
        &'a self,
        token: &'a str,
        now: UnixTime,
    ) -> BoxFuture<'a, Result<AccessToken, Error>> {
        Box::pin(self.verify_jwt(token, now))
    }

    fn is_ready(&self) -> bool {
        self.current().is_some()
    }
}

/// Settings for [`IntrospectionSource`].
#[derive(Clone)]
#[non_exhaustive]
pub struct IntrospectionConfig {
    /// The RFC 7662 endpoint.
    pub endpoint: String,
    /// Client id for HTTP Basic authentication to the endpoint.
    pub client_id: String,
    /// Client secret (kept out of `Debug`).
    pub client_secret: Zeroizing<String>,
    /// If set, the response's `iss` (when present) must equal it.
    pub issuer: Option<String>,
    /// If set, the response's `aud` (when present) must contain it.
    pub audience: Option<String>,
    /// Timeout of each request. Defaults to 5 s.
    pub http_timeout: Duration,
}

impl fmt::Debug for IntrospectionConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IntrospectionConfig")
            .field("endpoint", &self.endpoint)
            .field("client_id", &self.client_id)
            .field("client_secret", &"***")
            .finish_non_exhaustive()
    }
}

impl IntrospectionConfig {
    /// Introspection at `endpoint` authenticated as `client_id` / `client_secret`.
    #[must_use]
    pub fn new(endpoint: &str, client_id: &str, client_secret: &str) -> Self {
        Self {
            endpoint: endpoint.to_owned(),
            client_id: client_id.to_owned(),
            client_secret: Zeroizing::new(client_secret.to_owned()),
            issuer: None,
            audience: None,
            http_timeout: Duration::from_secs(5),
        }
    }
}

/// Opaque tokens checked through RFC 7662 introspection. The binding comes from the
/// response's `cnf.jkt` (RFC 9449 §6.2); no proof is sent to the authorization server.
#[derive(Debug)]
pub struct IntrospectionSource {
    config: IntrospectionConfig,
    http: reqwest::Client,
}

#[derive(Deserialize)]
struct Introspected {
    active: bool,
    sub: Option<String>,
    client_id: Option<String>,
    scope: Option<String>,
    exp: Option<u64>,
    iss: Option<String>,
    aud: Option<serde_json::Value>,
    token_type: Option<String>,
    cnf: Option<Cnf>,
}

#[derive(Deserialize)]
struct Cnf {
    jkt: Option<String>,
}

impl IntrospectionSource {
    /// A source for `config`.
    ///
    /// # Errors
    /// [`Error::ApiMisuse`] when the endpoint is not an `https` URL (`http` is accepted
    /// only for `localhost`, `127.0.0.1` and `[::1]`): the client secret and the tokens
    /// travel to it. When the HTTP client cannot be built.
    pub fn new(config: IntrospectionConfig) -> Result<Self, Error> {
        check_fetch_url(&config.endpoint, true).map_err(|why| {
            tracing::error!(target: "dpop::tokens", endpoint = %config.endpoint, why, "unusable introspection endpoint");
            Error::ApiMisuse(
                "the introspection endpoint must be an https URL (http only for localhost, 127.0.0.1 and [::1])",
            )
        })?;
        let http = reqwest::Client::builder()
            .timeout(config.http_timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|_| unavailable("cannot build the HTTP client"))?;
        Ok(Self { config, http })
    }

    async fn introspect(&self, token: &str, now: UnixTime) -> Result<AccessToken, Error> {
        let resp = self
            .http
            .post(&self.config.endpoint)
            .basic_auth(
                &self.config.client_id,
                Some(self.config.client_secret.as_str()),
            )
            .header(reqwest::header::ACCEPT, "application/json")
            .form(&[("token", token), ("token_type_hint", "access_token")])
            .send()
            .await
            .map_err(|_| unavailable("cannot reach the introspection endpoint"))?;
        if !resp.status().is_success() {
            tracing::warn!(target: "dpop::tokens", status = resp.status().as_u16(), "introspection answered an error status");
            return Err(unavailable(
                "the introspection endpoint answered an error status",
            ));
        }
        let body = read_bounded(resp, MAX_INTROSPECTION_BYTES)
            .await
            .map_err(|e| match e {
                ReadError::TooLarge => unavailable("the introspection response is too large"),
                ReadError::Failed => unavailable("cannot read the introspection response"),
            })?;
        let r: Introspected = serde_json::from_slice(&body)
            .map_err(|_| unavailable("the introspection response is not valid JSON"))?;
        if !r.active {
            return Err(Error::Token(TokenError::Inactive));
        }
        if let (Some(expected), Some(iss)) = (&self.config.issuer, &r.iss)
            && expected != iss
        {
            return Err(Error::Token(TokenError::IssuerMismatch));
        }
        if let (Some(expected), Some(aud)) = (&self.config.audience, &r.aud) {
            let ok = match aud {
                serde_json::Value::String(a) => a == expected,
                serde_json::Value::Array(list) => list.iter().any(|a| a.as_str() == Some(expected)),
                _ => false,
            };
            if !ok {
                return Err(Error::Token(TokenError::AudienceMismatch));
            }
        }
        let exp = r
            .exp
            .map(UnixTime::from_secs)
            .ok_or(Error::Token(TokenError::MissingClaim("exp")))?;
        if exp <= now {
            return Err(Error::Token(TokenError::Expired { exp, now }));
        }
        let jkt = match r.cnf.and_then(|c| c.jkt) {
            Some(j) => Some(
                Jkt::parse(&j).map_err(|_| Error::Token(TokenError::ClaimInvalid("cnf.jkt")))?,
            ),
            None => None,
        };
        // RFC 9449 §6.2: a bound token's token_type, when given, is DPoP.
        if jkt.is_some()
            && r.token_type
                .as_deref()
                .is_some_and(|t| !t.eq_ignore_ascii_case("DPoP"))
        {
            return Err(Error::Token(TokenError::ClaimInvalid("token_type")));
        }
        let scopes = r.scope.as_deref().map(jwt::split_scope).unwrap_or_default();
        Ok(AccessToken::new(r.sub, r.client_id, scopes, jkt, exp))
    }
}

impl TokenSource for IntrospectionSource {
    fn verify<'a>(
        &'a self,
        token: &'a str,
        now: UnixTime,
    ) -> BoxFuture<'a, Result<AccessToken, Error>> {
        Box::pin(self.introspect(token, now))
    }
}

/// Verified tokens by `ath` (base64url SHA-256 of the token), until the earlier of `exp` and a TTL.
/// Bounded: when full, expired entries go first, then everything (it is a cache: a miss
/// only costs a token check).
#[derive(Debug)]
pub(crate) struct TokenCache {
    entries: Mutex<HashMap<String, (AccessToken, UnixTime)>>,
    capacity: usize,
    ttl: Duration,
}

impl TokenCache {
    pub(crate) fn new(capacity: usize, ttl: Duration) -> Self {
        Self {
            entries: Mutex::new(HashMap::new()),
            capacity: capacity.max(1),
            ttl,
        }
    }

    /// `ath` is the token's hash (RFC 9449 `ath`), which doubles as the cache key.
    pub(crate) async fn verify(
        &self,
        source: &dyn TokenSource,
        token: &str,
        ath: &Ath,
        now: UnixTime,
    ) -> Result<AccessToken, Error> {
        let key = ath.as_str();
        if self.ttl.is_zero() {
            return source.verify(token, now).await;
        }
        if let Some((t, until)) = self
            .entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(key)
            && now < *until
        {
            return Ok(t.clone());
        }
        let verified = source.verify(token, now).await?;
        let until = verified.expires_at.min(now.saturating_add(self.ttl));
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        if entries.len() >= self.capacity {
            entries.retain(|_, (_, u)| *u > now);
            if entries.len() >= self.capacity {
                entries.clear();
            }
        }
        entries.insert(key.to_owned(), (verified.clone(), until));
        Ok(verified)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn discovery_urls_follow_rfc8414() {
        assert_eq!(
            JwksSource::discovery_urls("https://as.example.com"),
            vec![
                "https://as.example.com/.well-known/oauth-authorization-server",
                "https://as.example.com/.well-known/openid-configuration"
            ]
        );
        assert_eq!(
            JwksSource::discovery_urls("https://as.example.com/tenant/a"),
            vec![
                "https://as.example.com/.well-known/oauth-authorization-server/tenant/a",
                "https://as.example.com/tenant/a/.well-known/openid-configuration"
            ]
        );
    }

    /// An issuer that comes up after the source's first, failed fetch: requests get 503
    /// without a fetch until `missing_keys_retry_interval` has passed, then the next
    /// request loads the keys (not only after `min_refresh_interval`).
    #[tokio::test]
    async fn keys_missing_at_start_are_fetched_again_after_the_short_interval() {
        let port = dpop_test::free_port();
        let url = format!("http://127.0.0.1:{port}");
        let config = JwksSourceConfig::new(&url, "https://api.example.com");
        assert_eq!(config.missing_keys_retry_interval, Duration::from_secs(1));
        let source = JwksSource::new(config, Arc::new(crate::events::NoEvents)).unwrap();
        assert!(source.refresh().await.is_err());

        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        let issuer = dpop_test::MockIssuer::builder()
            .listen(addr)
            .start()
            .await
            .unwrap();
        assert_eq!(issuer.url(), url);
        let key = dpop_core::PrivateKey::generate(dpop_core::Algorithm::Es256).unwrap();
        let token = issuer.mint(&dpop_test::TokenSpec::bound(
            "https://api.example.com",
            key.thumbprint().as_str(),
        ));
        let early = source.verify(&token, dpop_test::now()).await;
        assert!(
            matches!(early, Err(Error::TokenSourceUnavailable(_))),
            "{early:?}"
        );
        assert_eq!(issuer.jwks_fetches(), 0, "rate-limited");

        tokio::time::sleep(Duration::from_millis(1100)).await;
        let verified = source.verify(&token, dpop_test::now()).await.unwrap();
        assert_eq!(verified.jkt.as_ref(), Some(key.thumbprint()));
        assert_eq!(issuer.jwks_fetches(), 1);
        assert!(source.is_ready());
    }

    #[test]
    fn introspection_debug_hides_the_secret() {
        let c = IntrospectionConfig::new("https://as.example.com/introspect", "rs", "hunter2");
        assert!(!format!("{c:?}").contains("hunter2"));
    }
}
