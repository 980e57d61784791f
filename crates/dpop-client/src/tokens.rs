//! Access tokens for the middleware: a fixed token, or tokens from an OAuth issuer
//! (client credentials or RFC 8693 token exchange), DPoP-bound to the client's key,
//! cached, refreshed before they expire (with the refresh token when one was issued),
//! and fetched by one request however many callers wait for them.

use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use base64::Engine as _;
use dpop_core::{RandomSource as _, SystemRandomSource};
use dpop_discovery::{Fetcher, IssuerUrl, Metadata};
use http::{HeaderValue, header};
use serde_json::Value;
use zeroize::Zeroizing;

use crate::error::ClientError;
use crate::key::ClientKey;
use crate::middleware::{DpopMiddleware, send_signed};
use crate::observer::Event;
use crate::session::Session;
use crate::source::TokenSource;
use crate::store::{RenewalGuard, StoredToken, TokenKey, TokenStore};

/// How the client authenticates to the token endpoint.
#[derive(Clone)]
#[non_exhaustive]
pub enum ClientAuth {
    /// `client_secret_basic`.
    Secret {
        /// `client_id`.
        client_id: String,
        /// The secret.
        secret: Arc<Zeroizing<String>>,
    },
    /// `private_key_jwt` (RFC 7523) with the client's own key (not the DPoP key).
    PrivateKeyJwt {
        /// `client_id`.
        client_id: String,
        /// The key the issuer knows for this client.
        key: ClientKey,
    },
    /// A public client: only `client_id`; DPoP is its proof of possession.
    Public {
        /// `client_id`.
        client_id: String,
    },
}

impl fmt::Debug for ClientAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Secret { client_id, .. } => write!(f, "Secret({client_id}, <redacted>)"),
            Self::PrivateKeyJwt { client_id, key } => {
                write!(f, "PrivateKeyJwt({client_id}, {key:?})")
            }
            Self::Public { client_id } => write!(f, "Public({client_id})"),
        }
    }
}

impl ClientAuth {
    /// The `client_id`.
    #[must_use]
    pub fn client_id(&self) -> &str {
        match self {
            Self::Secret { client_id, .. }
            | Self::PrivateKeyJwt { client_id, .. }
            | Self::Public { client_id } => client_id,
        }
    }
}

/// Where a token-exchange subject token comes from. Files and variables are read at
/// every exchange, so a rotated token (a Kubernetes projected token) is picked up.
#[derive(Clone)]
#[non_exhaustive]
pub enum SubjectToken {
    /// A file (e.g. a CI job token written by the runner).
    File(PathBuf),
    /// An environment variable.
    Env(String),
    /// A value.
    Value(Arc<Zeroizing<String>>),
}

impl fmt::Debug for SubjectToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::File(p) => write!(f, "File({})", p.display()),
            Self::Env(v) => write!(f, "Env({v})"),
            Self::Value(_) => f.write_str("Value(<redacted>)"),
        }
    }
}

impl SubjectToken {
    /// The token, trimmed; read now from its file or variable.
    ///
    /// # Errors
    /// [`ClientError::SubjectToken`] when it cannot be read or is empty.
    pub fn read(&self) -> Result<Zeroizing<String>, ClientError> {
        let text = match self {
            Self::File(path) => {
                crate::secret_file::read(path, MAX_TOKEN_FILE_BYTES, ("token file", "a token"))
                    .map_err(ClientError::SubjectToken)?
            }
            Self::Env(name) => Zeroizing::new(std::env::var(name).map_err(|_| {
                ClientError::SubjectToken(format!("the environment variable {name} is not set"))
            })?),
            Self::Value(v) => Zeroizing::new(v.to_string()),
        };
        let text = Zeroizing::new(text.trim().to_owned());
        if text.is_empty() {
            return Err(ClientError::SubjectToken(match self {
                Self::File(path) => format!("the token file {} is empty", path.display()),
                _ => "it is empty".to_owned(),
            }));
        }
        Ok(text)
    }
}

/// The largest token file read ([`SubjectToken::File`]): far above any real token.
pub const MAX_TOKEN_FILE_BYTES: u64 = 64 * 1024;

/// The grant a token source uses for new tokens.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum Grant {
    /// `client_credentials`.
    ClientCredentials,
    /// RFC 8693 token exchange.
    TokenExchange {
        /// The subject token.
        subject: SubjectToken,
        /// Its type, e.g. `urn:ietf:params:oauth:token-type:jwt`.
        subject_type: String,
    },
    /// `refresh_token` (RFC 6749 §6): redeem a refresh token obtained earlier. Issuers
    /// that rotate refresh tokens answer with a new one; the one given here is then spent.
    RefreshToken(SubjectToken),
}

impl Grant {
    /// The `grant_type` value this grant sends.
    #[must_use]
    pub fn grant_type(&self) -> &'static str {
        match self {
            Self::ClientCredentials => "client_credentials",
            Self::TokenExchange { .. } => TOKEN_EXCHANGE,
            Self::RefreshToken(_) => "refresh_token",
        }
    }
}

/// What a token request asks for.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct TokenRequest {
    /// The issuer identifier; endpoints come from its RFC 8414 (or OpenID) metadata.
    pub issuer: String,
    /// Client authentication.
    pub auth: ClientAuth,
    /// The grant.
    pub grant: Grant,
    /// Scopes (space-separated), if any.
    pub scope: Option<String>,
    /// RFC 8693 `audience` values.
    pub audiences: Vec<String>,
    /// RFC 8707 `resource` values.
    pub resources: Vec<String>,
}

impl TokenRequest {
    /// A request to `issuer` with `auth` and `grant`, no scope or audience.
    #[must_use]
    pub fn new(issuer: &str, auth: ClientAuth, grant: Grant) -> Self {
        Self {
            issuer: dpop_core::jwt::canonical_issuer(issuer).to_owned(),
            auth,
            grant,
            scope: None,
            audiences: Vec::new(),
            resources: Vec::new(),
        }
    }
}

/// A token response (RFC 6749 §5.1), as JSON plus the fields the client uses.
#[derive(Clone)]
#[non_exhaustive]
pub struct TokenResponse {
    /// `access_token`.
    pub access_token: Arc<str>,
    /// `token_type` (`DPoP` for bound tokens).
    pub token_type: String,
    /// `expires_in`.
    pub expires_in: Option<u64>,
    /// `refresh_token`.
    pub refresh_token: Option<Arc<Zeroizing<String>>>,
    /// The whole response body.
    pub json: Value,
}

impl fmt::Debug for TokenResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenResponse")
            .field("token_type", &self.token_type)
            .field("expires_in", &self.expires_in)
            .finish_non_exhaustive()
    }
}

struct Cached {
    token: StoredToken,
    refresh_at: Instant,
}

/// The current time in seconds since the Unix epoch, for what a [`TokenStore`] keeps.
fn unix_now() -> Result<u64, ClientError> {
    use dpop_core::Clock as _;
    crate::SystemClock
        .now()
        .map(dpop_core::UnixTime::as_secs)
        .ok_or_else(|| ClientError::TokenStore("the system clock is before 1970".to_owned()))
}

/// Tokens from an OAuth issuer, bound to the middleware's key (see the module docs).
pub struct OAuthTokens {
    request: TokenRequest,
    session: Arc<Session>,
    http: reqwest::Client,
    token_endpoint: tokio::sync::OnceCell<String>,
    cached: RwLock<Option<Cached>>,
    refresh_token: std::sync::Mutex<Option<Arc<Zeroizing<String>>>>,
    /// Held while a token is fetched, so one request is in flight.
    fetching: tokio::sync::Mutex<()>,
    /// The last failed renewal: callers that waited for it get its error instead of
    /// each sending another request (for [`FAILURE_HOLD`]).
    failed: std::sync::Mutex<Option<(Instant, String)>>,
    fetches: std::sync::atomic::AtomicU64,
    /// Where tokens are kept between runs, and this source's key there.
    store: Option<(Arc<dyn TokenStore>, TokenKey)>,
}

impl fmt::Debug for OAuthTokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OAuthTokens")
            .field("issuer", &self.request.issuer)
            .field("client", &self.request.auth)
            .finish_non_exhaustive()
    }
}

/// Time limit of each metadata request (the client's own limit for every request).
const METADATA_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a source waits for another process's renewal through a [`TokenStore`].
const RENEWAL_WAIT: Duration = Duration::from_secs(30);

/// How often the renewal lock is tried while another process holds it.
const RENEWAL_POLL: Duration = Duration::from_millis(50);

/// How long a failed token request answers for the callers that waited on it.
const FAILURE_HOLD: Duration = Duration::from_secs(1);

const TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

impl OAuthTokens {
    /// Tokens for `request`, bound to the key of `middleware` (and sharing its nonces).
    ///
    /// # Errors
    /// [`ClientError::Http`] when the HTTP client cannot be built.
    pub fn new(request: TokenRequest, middleware: &DpopMiddleware) -> Result<Self, ClientError> {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(METADATA_TIMEOUT)
            .build()?;
        Ok(Self {
            request,
            session: Arc::clone(middleware.session()),
            http,
            token_endpoint: tokio::sync::OnceCell::new(),
            cached: RwLock::new(None),
            refresh_token: std::sync::Mutex::new(None),
            fetching: tokio::sync::Mutex::new(()),
            failed: std::sync::Mutex::new(None),
            fetches: std::sync::atomic::AtomicU64::new(0),
            store: None,
        })
    }

    /// Sends the metadata and token requests with `http` instead of the default client:
    /// for a private CA, a proxy or a resolver of the caller's. Build it with
    /// `redirect::Policy::none()` (a redirected token request would carry a proof for the
    /// wrong URL) and a timeout; the default client has both, with 30 s per request.
    #[must_use]
    pub fn with_http_client(mut self, http: reqwest::Client) -> Self {
        self.http = http;
        self
    }

    /// Keeps tokens in `store` between runs: a usable token stored there by an earlier
    /// run (or another process) is used instead of asking the issuer, an expired one is
    /// renewed with its refresh token when it has one, a new token replaces the stored
    /// one, and a token the server refused ([`TokenSource::invalidate`]) is removed.
    #[must_use]
    pub fn with_store(mut self, store: Arc<dyn TokenStore>) -> Self {
        let key = self.store_key();
        self.store = Some((store, key));
        self
    }

    /// The key this source's tokens have in a [`TokenStore`]. A token obtained from a
    /// subject token or a refresh token acts for whoever that token speaks for, so the
    /// key holds a SHA-256 of it (and the subject token's type): another subject on the
    /// same client and key never gets this one's token. A token that cannot be read now
    /// gets a key of its own that nothing else shares.
    #[must_use]
    pub fn store_key(&self) -> TokenKey {
        let r = &self.request;
        let digest = |t: &SubjectToken| match t.read() {
            Ok(text) => format!("sha256:{}", dpop_core::Ath::of_token(&text).as_str()),
            Err(_) => {
                let mut unique = [0_u8; 16];
                let _ = SystemRandomSource.fill(&mut unique);
                format!(
                    "unreadable:{}",
                    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(unique)
                )
            }
        };
        let grant = match &r.grant {
            Grant::ClientCredentials => r.grant.grant_type().to_owned(),
            Grant::TokenExchange {
                subject,
                subject_type,
            } => format!(
                "{} {subject_type} {}",
                r.grant.grant_type(),
                digest(subject)
            ),
            Grant::RefreshToken(token) => format!("{} {}", r.grant.grant_type(), digest(token)),
        };
        TokenKey::new(
            &r.issuer,
            r.auth.client_id(),
            self.session.key.thumbprint().as_str(),
            &grant,
            r.scope.as_deref(),
            &r.audiences,
            &r.resources,
        )
    }

    /// The token this source holds now (from the issuer or the store), if any, expired
    /// or not.
    #[must_use]
    pub fn current(&self) -> Option<StoredToken> {
        let guard = self.cached.read().ok()?;
        guard.as_ref().map(|c| c.token.clone())
    }

    /// How many token requests this source has made (for tests and metrics).
    #[must_use]
    pub fn fetches(&self) -> u64 {
        self.fetches.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn cached_token(&self) -> Option<Arc<str>> {
        let guard = self.cached.read().ok()?;
        let c = guard.as_ref()?;
        (Instant::now() < c.refresh_at).then(|| Arc::clone(&c.token.access_token))
    }

    /// The token endpoint, from the issuer's metadata (RFC 8414, then OpenID discovery).
    async fn token_endpoint(&self) -> Result<&str, ClientError> {
        self.token_endpoint
            .get_or_try_init(|| discover(&self.http, &self.session, &self.request.issuer))
            .await
            .map(String::as_str)
    }

    /// Requests a token now, with the configured grant (not the cache, not the refresh
    /// token), and returns the whole response.
    ///
    /// # Errors
    /// [`ClientError`] for metadata, transport or token endpoint failures.
    pub async fn fetch(&self) -> Result<TokenResponse, ClientError> {
        let mut form: Vec<(&str, String)> = Vec::new();
        match &self.request.grant {
            Grant::ClientCredentials => form.push(("grant_type", "client_credentials".into())),
            Grant::TokenExchange {
                subject,
                subject_type,
            } => {
                form.push(("grant_type", TOKEN_EXCHANGE.into()));
                form.push(("subject_token", subject.read()?.to_string()));
                form.push(("subject_token_type", subject_type.clone()));
            }
            Grant::RefreshToken(token) => {
                form.push(("grant_type", "refresh_token".into()));
                form.push(("refresh_token", token.read()?.to_string()));
            }
        }
        self.token_request(form, true).await
    }

    async fn token_request(
        &self,
        mut form: Vec<(&str, String)>,
        narrow: bool,
    ) -> Result<TokenResponse, ClientError> {
        let endpoint = self.token_endpoint().await?.to_owned();
        if narrow {
            if let Some(s) = &self.request.scope {
                form.push(("scope", s.clone()));
            }
            for a in &self.request.audiences {
                form.push(("audience", a.clone()));
            }
            for r in &self.request.resources {
                form.push(("resource", r.clone()));
            }
        }
        let mut builder = self.http.post(&endpoint);
        match &self.request.auth {
            ClientAuth::Secret { client_id, secret } => {
                builder = builder.header(header::AUTHORIZATION, basic(client_id, secret)?);
            }
            ClientAuth::PrivateKeyJwt { client_id, .. } => {
                form.push(("client_id", client_id.clone()));
                form.push(("client_assertion_type", ASSERTION_TYPE.into()));
            }
            ClientAuth::Public { client_id } => form.push(("client_id", client_id.clone())),
        }
        let body = form_body(&form);
        // A retry (nonce, clock skew) must not resend the assertion: its `jti` is
        // single-use, and after a skew correction its `iat`/`exp` must move too.
        let prepare = || {
            let form = &form;
            let endpoint = &endpoint;
            async move {
                let ClientAuth::PrivateKeyJwt { client_id, key } = &self.request.auth else {
                    return Ok(None);
                };
                let mut form = form.clone();
                form.push((
                    "client_assertion",
                    self.assertion(client_id, key, endpoint).await?,
                ));
                Ok(Some(form_body(&form).into_bytes()))
            }
        };
        let request = builder
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(header::ACCEPT, "application/json")
            .body(body)
            .build()?;
        self.fetches
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let http = &self.http;
        let response = send_signed::<_, _, ClientError, _, _>(
            &self.session,
            crate::observer::Endpoint::Token,
            request,
            None,
            prepare,
            |r| async move { http.execute(r).await.map_err(ClientError::from) },
        )
        .await?;
        parse_token_response(response).await
    }

    /// A client assertion (RFC 7523 §3): short-lived, single-use, for `audience`.
    async fn assertion(
        &self,
        client_id: &str,
        key: &ClientKey,
        audience: &str,
    ) -> Result<String, ClientError> {
        let endpoint = url::Url::parse(audience)
            .map_err(|e| ClientError::Metadata(format!("token_endpoint: {e}")))?;
        let now = self
            .session
            .now_for(&crate::session::origin_of(&endpoint))?
            .as_secs();
        let mut jti = [0_u8; 16];
        SystemRandomSource
            .fill(&mut jti)
            .map_err(|e| ClientError::Proof(e.to_string()))?;
        let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        let header = serde_json::json!({ "alg": key.algorithm().name(), "typ": "JWT" });
        let claims = serde_json::json!({
            "iss": client_id,
            "sub": client_id,
            "aud": audience,
            "iat": now,
            "exp": now + 60,
            "jti": b64(&jti),
        });
        key.with_signer(move |signer| {
            dpop_core::jws::sign_compact(&header, &claims, signer)
                .map_err(|e| ClientError::Proof(e.to_string()))
        })
        .await
    }

    /// A new token: with the refresh token when there is one (falling back to the grant
    /// if the issuer refuses it), else with the grant.
    async fn renew(&self) -> Result<TokenResponse, ClientError> {
        let refresh = self.refresh_token.lock().ok().and_then(|g| g.clone());
        if let Some(rt) = refresh {
            let form = vec![
                ("grant_type", "refresh_token".to_owned()),
                ("refresh_token", rt.to_string()),
            ];
            match self.token_request(form, false).await {
                Ok(r) => return Ok(r),
                Err(ClientError::TokenEndpoint { error, .. }) if error == "invalid_grant" => {
                    tracing::debug!(target: "dpop::client", "refresh token refused; using the grant again");
                }
                Err(e) => return Err(e),
            }
        }
        self.fetch().await
    }
}

#[async_trait::async_trait]
impl TokenSource for OAuthTokens {
    async fn token(&self) -> Result<Arc<str>, ClientError> {
        if let Some(t) = self.cached_token() {
            return Ok(t);
        }
        let _one = self.fetching.lock().await;
        // Another caller may have fetched while this one waited.
        if let Some(t) = self.cached_token() {
            return Ok(t);
        }
        // Or failed just now: do not send the same failing request once per waiter.
        if let Some((at, why)) = self.failed.lock().ok().and_then(|g| g.clone())
            && at.elapsed() < FAILURE_HOLD
        {
            return Err(ClientError::TokenUnavailable(why));
        }
        if let Some(t) = self.stored_token()? {
            return Ok(t);
        }
        // Other processes using the store may be renewing the same token: wait for them
        // and take theirs, so that runs started together still make one token request.
        let _renewing = match self.renewal_lock().await? {
            Some(guard) => {
                if let Some(t) = self.stored_token()? {
                    return Ok(t);
                }
                Some(guard)
            }
            None => None,
        };
        let started = Instant::now();
        let obtained_at = unix_now()?;
        let response = match self.renew().await {
            Ok(r) => r,
            Err(e) => {
                if let Ok(mut g) = self.failed.lock() {
                    *g = Some((Instant::now(), e.to_string()));
                }
                return Err(e);
            }
        };
        let lifetime = Duration::from_secs(response.expires_in.unwrap_or(60));
        // Renew before expiry: a fifth of the lifetime early, at most a minute.
        let margin = (lifetime / 5).min(Duration::from_secs(60));
        if let (Ok(mut g), Some(rt)) = (self.refresh_token.lock(), &response.refresh_token) {
            *g = Some(Arc::clone(rt));
        }
        let stored = StoredToken::new(
            Arc::clone(&response.access_token),
            obtained_at,
            obtained_at.saturating_add(lifetime.as_secs()),
            response
                .refresh_token
                .clone()
                .or_else(|| self.refresh_token.lock().ok().and_then(|g| g.clone())),
            response
                .json
                .get("scope")
                .and_then(Value::as_str)
                .map(str::to_owned),
        );
        if let Some((store, key)) = &self.store {
            store.save(key, &stored)?;
        }
        if let Ok(mut g) = self.cached.write() {
            *g = Some(Cached {
                token: stored,
                refresh_at: started + lifetime.saturating_sub(margin),
            });
        }
        Ok(response.access_token)
    }

    fn invalidate(&self, token: &str) {
        if let Ok(mut g) = self.cached.write()
            && g.as_ref().is_some_and(|c| &*c.token.access_token == token)
        {
            *g = None;
        }
        if let Some((store, key)) = &self.store
            && let Err(e) = store.remove(key, token)
        {
            // The next run reads the refused token again and is refused once more, then
            // replaces it: worse, not wrong.
            tracing::warn!(target: "dpop::client", "cannot remove a refused token from the store: {e}");
        }
    }
}

impl OAuthTokens {
    /// The store's renewal lock, polled until [`RENEWAL_WAIT`] has passed (then the token
    /// is renewed without it: a stuck process must not stop the others). `None` without a
    /// store.
    async fn renewal_lock(&self) -> Result<Option<RenewalGuard>, ClientError> {
        let Some((store, key)) = &self.store else {
            return Ok(None);
        };
        let deadline = Instant::now() + RENEWAL_WAIT;
        loop {
            if let Some(guard) = store.try_lock_renewal(key)? {
                return Ok(Some(guard));
            }
            if Instant::now() >= deadline {
                tracing::warn!(target: "dpop::client", "the token store's renewal lock is still held; renewing without it");
                return Ok(None);
            }
            tokio::time::sleep(RENEWAL_POLL).await;
        }
    }

    /// A usable token from the store, now also held in memory; or `None`, having taken
    /// the refresh token of an expired stored token for the renewal.
    fn stored_token(&self) -> Result<Option<Arc<str>>, ClientError> {
        let Some((store, key)) = &self.store else {
            return Ok(None);
        };
        let Some(stored) = store.load(key)? else {
            return Ok(None);
        };
        let now = unix_now()?;
        if !stored.usable_at(now) {
            if let (Ok(mut g), Some(rt)) = (self.refresh_token.lock(), &stored.refresh_token)
                && g.is_none()
            {
                *g = Some(Arc::clone(rt));
            }
            return Ok(None);
        }
        if let Ok(mut g) = self.refresh_token.lock()
            && let Some(rt) = &stored.refresh_token
        {
            *g = Some(Arc::clone(rt));
        }
        let token = Arc::clone(&stored.access_token);
        if let Ok(mut g) = self.cached.write() {
            *g = Some(Cached {
                refresh_at: Instant::now()
                    + Duration::from_secs(stored.renew_at().saturating_sub(now)),
                token: stored,
            });
        }
        Ok(Some(token))
    }
}

fn basic(client_id: &str, secret: &str) -> Result<HeaderValue, ClientError> {
    // RFC 6749 §2.3.1: both are form-urlencoded before base64.
    let enc = |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    let raw = Zeroizing::new(format!("{}:{}", enc(client_id), enc(secret)));
    let value = Zeroizing::new(format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(raw.as_bytes())
    ));
    let mut v = HeaderValue::from_str(&value).map_err(|_| {
        ClientError::Key("the client id or secret is not a valid header value".to_owned())
    })?;
    v.set_sensitive(true);
    Ok(v)
}

fn form_body(form: &[(&str, String)]) -> String {
    let mut s = url::form_urlencoded::Serializer::new(String::new());
    for (k, v) in form {
        s.append_pair(k, v);
    }
    s.finish()
}

async fn parse_token_response(response: reqwest::Response) -> Result<TokenResponse, ClientError> {
    let status = response.status();
    let body: Value = response
        .json()
        .await
        .map_err(|e| ClientError::TokenResponse(format!("not JSON ({status}): {e}")))?;
    if !status.is_success() {
        return Err(ClientError::TokenEndpoint {
            status: status.as_u16(),
            error: body
                .get("error")
                .and_then(Value::as_str)
                .unwrap_or("unknown")
                .to_owned(),
            description: body
                .get("error_description")
                .and_then(Value::as_str)
                .map(str::to_owned),
        });
    }
    let access_token = body
        .get("access_token")
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| ClientError::TokenResponse("no access_token".to_owned()))?;
    let token_type = body
        .get("token_type")
        .and_then(Value::as_str)
        .ok_or_else(|| ClientError::TokenResponse("no token_type".to_owned()))?
        .to_owned();
    if !token_type.eq_ignore_ascii_case("DPoP") {
        // RFC 9449 §5: a client that sent a proof must not use a token that is not bound.
        return Err(ClientError::TokenResponse(format!(
            "token_type is {token_type:?}, not DPoP: the issuer did not bind the token to the key"
        )));
    }
    Ok(TokenResponse {
        access_token: access_token.into(),
        token_type,
        expires_in: body.get("expires_in").and_then(Value::as_u64),
        refresh_token: body
            .get("refresh_token")
            .and_then(Value::as_str)
            .map(|r| Arc::new(Zeroizing::new(r.to_owned()))),
        json: body,
    })
}

/// The token endpoint from `issuer`'s metadata (the URL rule, RFC 8414 then OpenID
/// discovery, the issuer checked: `dpop-discovery`).
/// The observer is told the outcome.
async fn discover(
    http: &reqwest::Client,
    session: &Session,
    issuer: &str,
) -> Result<String, ClientError> {
    let asked = issuer;
    let found = async {
        let issuer = IssuerUrl::parse(issuer)
            .map_err(|e| ClientError::Metadata(format!("the issuer {issuer:?} {e}")))?;
        let fetcher = Fetcher::with_client(http.clone(), METADATA_TIMEOUT);
        let meta = Metadata::discover(&fetcher, &issuer)
            .await
            .map_err(ClientError::Discovery)?;
        let endpoint = meta
            .token_endpoint()
            .map(|e| e.as_str().to_owned())
            .map_err(|e| ClientError::Metadata(e.to_string()))?;
        Ok((meta.url().to_owned(), endpoint))
    }
    .await;
    session.report(&Event::Metadata {
        issuer: asked,
        result: found.as_ref().map(|(u, e)| (u.as_str(), e.as_str())),
    });
    found.map(|(_, endpoint)| endpoint)
}
