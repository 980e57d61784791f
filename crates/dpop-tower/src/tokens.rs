//! Where access tokens are checked: JWTs against the issuer's keys (feature `jwks`:
//! discovered through RFC 8414 metadata, then OpenID discovery, or a configured
//! `jwks_uri`), or opaque tokens through RFC 7662 introspection (feature
//! `introspection`); and the verified-token cache in front of both, so a request costs
//! one proof signature check, not two. Fetching, the URL rule and the key cache are
//! `dpop-discovery`'s.

use std::collections::HashMap;
#[cfg(any(feature = "jwks", feature = "introspection"))]
use std::fmt;
use std::future::Future;
use std::pin::Pin;
#[cfg(feature = "jwks")]
use std::sync::Arc;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use dpop_core::jwt::AccessToken;
#[cfg(feature = "jwks")]
use dpop_core::jwt::JwtValidation;
#[cfg(any(feature = "jwks", feature = "introspection"))]
use dpop_core::jwt::{self, TokenError};
use dpop_core::{Ath, Error, UnixTime};
#[cfg(any(feature = "jwks", feature = "introspection"))]
use dpop_discovery::EndpointUrl;
#[cfg(feature = "jwks")]
use dpop_discovery::{
    DiscoveryError, FetchError, Fetcher, IssuerUrl, JwksError, JwksTimings, KeySource, RemoteJwks,
};
#[cfg(feature = "introspection")]
use serde::Deserialize;
#[cfg(feature = "introspection")]
use zeroize::Zeroizing;

#[cfg(feature = "jwks")]
use crate::events::DpopEvents;

/// A boxed future, as token sources are used through `dyn`.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Checks access tokens.
pub trait TokenVerifier: Send + Sync + 'static {
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
#[cfg(feature = "jwks")]
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct JwksSourceConfig {
    /// The issuer identifier (`iss`), e.g. `https://as.example.com`. A trailing slash
    /// does not matter: `https://as.example.com/` is the same issuer.
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
    /// after the gateway), the wait after a failed fetch before a request may fetch
    /// again, doubling with each further failure up to `min_refresh_interval`: the
    /// first request after the issuer comes up loads the keys, instead of every request
    /// getting 503 for up to `min_refresh_interval`. Defaults to 1 s.
    pub missing_keys_retry_interval: Duration,
    /// Timeout of each HTTP request to the issuer. Defaults to 5 s.
    pub http_timeout: Duration,
    /// Token checks (leeway, algorithms, `typ` policy). Defaults to [`JwtValidation::new`]
    /// with the issuer and the audience.
    pub validation: JwtValidation,
}

#[cfg(feature = "jwks")]
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

/// JWT access tokens verified with the issuer's published keys, fetched and cached by
/// [`dpop_discovery::RemoteJwks`] (feature `jwks`).
#[cfg(feature = "jwks")]
pub struct JwksSource {
    config: JwksSourceConfig,
    keys: RemoteJwks,
}

#[cfg(feature = "jwks")]
impl fmt::Debug for JwksSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwksSource")
            .field("issuer", &self.config.issuer)
            .field("audience", &self.config.audience)
            .finish_non_exhaustive()
    }
}

#[cfg(any(feature = "jwks", feature = "introspection"))]
fn unavailable(what: &'static str) -> Error {
    Error::TokenSourceUnavailable(what)
}

/// The reason a request gets 503 when the keys cannot be had: fixed text (the detail
/// goes to the log where the fetch failed).
#[cfg(feature = "jwks")]
fn keys_unavailable(e: &JwksError) -> Error {
    unavailable(match e {
        JwksError::Discovery(DiscoveryError::IssuerMismatch { .. }) => {
            "the issuer's metadata names a different issuer"
        }
        JwksError::Discovery(DiscoveryError::MissingField { .. }) => {
            "the issuer's metadata has no jwks_uri"
        }
        JwksError::Discovery(DiscoveryError::BadEndpoint { .. }) => {
            "the issuer's metadata names a jwks_uri that is not https (http only for localhost, 127.0.0.1 and [::1])"
        }
        JwksError::Discovery(e) if e.is_too_large() => "the issuer's metadata is too large",
        JwksError::Discovery(_) => "cannot fetch the issuer's metadata",
        JwksError::Fetch(FetchError::TooLarge { .. }) => "the issuer's JWK set is too large",
        JwksError::Fetch(FetchError::Status { .. }) => {
            "the issuer's JWK set answered an error status"
        }
        JwksError::Fetch(FetchError::NotUtf8 { .. }) => "the issuer's JWK set is not UTF-8",
        JwksError::Fetch(_) => "cannot fetch the issuer's JWK set",
        JwksError::Invalid { .. } => "the issuer's JWK set is invalid",
        JwksError::Empty { .. } => "the issuer's JWK set has no usable key",
        _ => "the issuer's keys are not loaded",
    })
}

#[cfg(feature = "jwks")]
impl JwksSource {
    /// A source for `config`, reporting fetches to `events`. Keys are fetched on first
    /// use; call [`JwksSource::refresh`] at start-up to fail early.
    ///
    /// # Errors
    /// [`Error::ApiMisuse`] when the `jwks_uri` (or, for discovery, the issuer) is not an
    /// `https` URL (`http` is accepted only for `localhost`, 127.0.0.0/8 and `[::1]`);
    /// when the HTTP client cannot be built.
    pub fn new(config: JwksSourceConfig, events: Arc<dyn DpopEvents>) -> Result<Self, Error> {
        let source = match &config.jwks_uri {
            Some(uri) => KeySource::Uri(EndpointUrl::parse(uri).map_err(|why| {
                tracing::error!(target: "dpop::tokens", jwks_uri = %uri, %why, "unusable jwks_uri");
                Error::ApiMisuse(
                    "jwks_uri must be an https URL (http only for localhost, 127.0.0.1 and [::1])",
                )
            })?),
            None => KeySource::Discover(IssuerUrl::parse(&config.issuer).map_err(|why| {
                tracing::error!(target: "dpop::tokens", issuer = %config.issuer, %why, "cannot discover this issuer's keys");
                Error::ApiMisuse(
                    "to discover its keys, the issuer must be an https URL (http only for localhost, 127.0.0.1 and [::1])",
                )
            })?),
        };
        let fetcher = Fetcher::new(config.http_timeout)
            .map_err(|_| unavailable("cannot build the HTTP client"))?;
        let mut timings = JwksTimings::default();
        timings.refresh_interval = config.refresh_interval;
        timings.min_refresh_interval = config.min_refresh_interval;
        timings.missing_keys_retry_interval = config.missing_keys_retry_interval;
        let keys = RemoteJwks::new(source, fetcher, timings)
            .with_observer(move |ok| events.jwks_refresh(ok));
        Ok(Self { config, keys })
    }

    /// Fetches the keys now.
    ///
    /// # Errors
    /// When metadata or keys cannot be fetched or parsed; the previous keys stay in use.
    pub async fn refresh(&self) -> Result<(), Error> {
        self.keys
            .refresh()
            .await
            .map(drop)
            .map_err(|e| keys_unavailable(&e))
    }

    async fn verify_jwt(&self, token: &str, now: UnixTime) -> Result<AccessToken, Error> {
        let keys = self.keys.keys().await.map_err(|e| keys_unavailable(&e))?;
        match jwt::verify_access_token(token, &keys, &self.config.validation, now) {
            // An unknown kid may be a new key: refresh (rate-limited) and try once more.
            Err(TokenError::UnknownKey) => match self.keys.after_unknown_kid(&keys).await {
                Ok(Some(newer)) => {
                    jwt::verify_access_token(token, &newer, &self.config.validation, now)
                        .map_err(Error::Token)
                }
                Ok(None) | Err(_) => Err(Error::Token(TokenError::UnknownKey)),
            },
            other => other.map_err(Error::Token),
        }
    }
}

#[cfg(feature = "jwks")]
impl TokenVerifier for JwksSource {
    fn verify<'a>(
        &'a self,
        token: &'a str,
        now: UnixTime,
    ) -> BoxFuture<'a, Result<AccessToken, Error>> {
        Box::pin(self.verify_jwt(token, now))
    }

    fn is_ready(&self) -> bool {
        self.keys.is_ready()
    }
}

/// Largest RFC 7662 introspection response read.
#[cfg(feature = "introspection")]
const MAX_INTROSPECTION_BYTES: usize = 64 * 1024;

/// Settings for [`IntrospectionSource`].
#[cfg(feature = "introspection")]
#[derive(Clone)]
#[non_exhaustive]
pub struct IntrospectionConfig {
    /// The RFC 7662 endpoint.
    pub endpoint: String,
    /// Client id for HTTP Basic authentication to the endpoint.
    pub client_id: String,
    /// Client secret (kept out of `Debug`).
    pub client_secret: Zeroizing<String>,
    /// If set, the response's `iss` (when present) must equal it (trailing slashes do
    /// not matter).
    pub issuer: Option<String>,
    /// If set, the response's `aud` (when present) must contain it.
    pub audience: Option<String>,
    /// Timeout of each request. Defaults to 5 s.
    pub http_timeout: Duration,
}

#[cfg(feature = "introspection")]
impl fmt::Debug for IntrospectionConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IntrospectionConfig")
            .field("endpoint", &self.endpoint)
            .field("client_id", &self.client_id)
            .field("client_secret", &"***")
            .finish_non_exhaustive()
    }
}

#[cfg(feature = "introspection")]
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
/// Feature `introspection`.
#[cfg(feature = "introspection")]
#[derive(Debug)]
pub struct IntrospectionSource {
    config: IntrospectionConfig,
    http: reqwest::Client,
    /// An endpoint that keeps failing is logged once with its cause, then summarised.
    failures: dpop_core::failure::FailureReporter,
}

#[cfg(feature = "introspection")]
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

#[cfg(feature = "introspection")]
#[derive(Deserialize)]
struct Cnf {
    jkt: Option<String>,
    #[serde(rename = "x5t#S256")]
    x5t_s256: Option<String>,
}

#[cfg(feature = "introspection")]
impl IntrospectionSource {
    /// A source for `config`.
    ///
    /// # Errors
    /// [`Error::ApiMisuse`] when the endpoint is not an `https` URL (`http` is accepted
    /// only for `localhost`, 127.0.0.0/8 and `[::1]`): the client secret and the tokens
    /// travel to it. When the HTTP client cannot be built.
    pub fn new(config: IntrospectionConfig) -> Result<Self, Error> {
        EndpointUrl::parse(&config.endpoint).map_err(|why| {
            tracing::error!(target: "dpop::tokens", endpoint = %config.endpoint, %why, "unusable introspection endpoint");
            Error::ApiMisuse(
                "the introspection endpoint must be an https URL (http only for localhost, 127.0.0.1 and [::1])",
            )
        })?;
        let http = dpop_discovery::fetch::http_client(config.http_timeout)
            .map_err(|_| unavailable("cannot build the HTTP client"))?;
        Ok(Self {
            config,
            http,
            failures: dpop_core::failure::FailureReporter::new(
                "introspection",
                dpop_core::failure::DEFAULT_SUMMARY_INTERVAL,
            ),
        })
    }

    /// Logs a failure to reach or use the endpoint, rate-limited.
    fn failed(&self, cause: impl fmt::Display) {
        if let Some(report) = self.failures.failure(std::time::Instant::now(), cause) {
            tracing::warn!(target: "dpop::tokens", endpoint = %self.config.endpoint, "{report}");
        }
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
            .map_err(|e| {
                self.failed(dpop_core::failure::error_chain(&e.without_url()));
                unavailable("cannot reach the introspection endpoint")
            })?;
        if !resp.status().is_success() {
            self.failed(format_args!("HTTP status {}", resp.status()));
            return Err(unavailable(
                "the introspection endpoint answered an error status",
            ));
        }
        let body = dpop_discovery::fetch::read_bounded(resp, MAX_INTROSPECTION_BYTES)
            .await
            .map_err(|e| match e {
                dpop_discovery::fetch::ReadError::TooLarge => {
                    unavailable("the introspection response is too large")
                }
                _ => unavailable("cannot read the introspection response"),
            })?;
        let r: Introspected = serde_json::from_slice(&body).map_err(|e| {
            self.failed(format_args!("the response is not valid JSON: {e}"));
            unavailable("the introspection response is not valid JSON")
        })?;
        if let Some(report) = self.failures.success(std::time::Instant::now()) {
            tracing::info!(target: "dpop::tokens", endpoint = %self.config.endpoint, "{report}");
        }
        if !r.active {
            return Err(Error::Token(TokenError::Inactive));
        }
        if let (Some(expected), Some(iss)) = (&self.config.issuer, &r.iss)
            && jwt::canonical_issuer(expected) != jwt::canonical_issuer(iss)
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
        let (jkt, x5t_s256) = r.cnf.map_or((None, None), |c| (c.jkt, c.x5t_s256));
        // RFC 8705 §3.2: the certificate binding comes from introspection too; dropped, a
        // certificate-bound token would be accepted from anyone holding it.
        let x5t_s256 = x5t_s256
            .map(|t| jwt::CertThumbprint::parse(&t).map_err(Error::Token))
            .transpose()?;
        let jkt = match jkt {
            Some(j) => Some(
                dpop_core::Jkt::parse(&j)
                    .map_err(|_| Error::Token(TokenError::ClaimInvalid("cnf.jkt")))?,
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
        Ok(AccessToken::new(r.sub, r.client_id, scopes, jkt, exp)
            .with_certificate_binding(x5t_s256))
    }
}

#[cfg(feature = "introspection")]
impl TokenVerifier for IntrospectionSource {
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
        source: &dyn TokenVerifier,
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

#[cfg(all(test, feature = "jwks", feature = "introspection"))]
mod tests {
    use super::*;

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
