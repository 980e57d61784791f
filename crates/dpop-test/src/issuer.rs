//! [`MockIssuer`]: an authorization-server stand-in that publishes RFC 8414 metadata and
//! a JWKS, mints ES256 JWT access tokens (RFC 9068 shape), answers RFC 7662
//! introspection for opaque tokens registered with it, and has a token endpoint that
//! gives DPoP-bound tokens as [`TokenPolicy`] says.

use std::collections::HashMap;
use std::convert::Infallible;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Form, Json, Router};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use dpop_core::{
    Algorithm, Clock as _, DEFAULT_ALGORITHMS, PrivateKey, RandomSource, SystemRandomSource,
};
use hyper::body::Frame;
use hyper_util::service::TowerToHyperService;
use serde_json::{Map, Value, json};

use crate::jws;
use crate::server::{ServerHandle, serve_on};

/// The introspection client id a [`MockIssuer`] accepts unless told otherwise.
pub const DEFAULT_INTROSPECTION_CLIENT_ID: &str = "gateway";
/// The introspection client secret a [`MockIssuer`] accepts unless told otherwise.
pub const DEFAULT_INTROSPECTION_CLIENT_SECRET: &str = "gateway-secret";

/// The path of the RFC 8414 metadata document.
pub const METADATA_PATH: &str = "/.well-known/oauth-authorization-server";

/// What goes into an access token ([`MockIssuer::mint`]) or an introspection answer
/// ([`MockIssuer::register_opaque`]). Build it with struct-update syntax:
///
/// ```
/// use dpop_test::TokenSpec;
/// let spec = TokenSpec {
///     cnf_jkt: Some("0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I".into()),
///     scope: Some("read".into()),
///     ..TokenSpec::new("https://api.example.com")
/// };
/// assert_eq!(spec.typ.as_deref(), Some("at+jwt"));
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct TokenSpec {
    /// `sub`. Defaults to `"user-1"`.
    pub sub: String,
    /// `client_id` (RFC 9068 §2.2). Defaults to `"client-1"`.
    pub client_id: String,
    /// `aud`, a single string. Defaults to `"https://api.example.com"`; for an array
    /// audience put `aud` in [`TokenSpec::extra`].
    pub aud: String,
    /// `scope`, omitted when `None`. Defaults to `None`.
    pub scope: Option<String>,
    /// `cnf.jkt`, the RFC 7638 thumbprint the token is bound to (RFC 9449 §6); no `cnf`
    /// when `None`. Defaults to `None` (a bearer token).
    pub cnf_jkt: Option<String>,
    /// `exp` - `iat`, in seconds. Negative values make an already expired token.
    /// Defaults to 300.
    pub lifetime_secs: i64,
    /// The JWS `typ` header; omitted when `None`. Defaults to `Some("at+jwt")`
    /// (RFC 9068 §2.1).
    pub typ: Option<String>,
    /// Further claims, added last: a claim named here replaces the standard one, so a
    /// test can set a wrong `iss`, an array `aud` or a string `exp`. Defaults to none.
    pub extra: Map<String, Value>,
    /// `iat` in seconds since the epoch instead of the system clock. Defaults to `None`
    /// (the system clock: this is test support, not the sans-I/O core).
    pub now: Option<u64>,
}

impl Default for TokenSpec {
    fn default() -> Self {
        Self {
            sub: "user-1".into(),
            client_id: "client-1".into(),
            aud: "https://api.example.com".into(),
            scope: None,
            cnf_jkt: None,
            lifetime_secs: 300,
            typ: Some("at+jwt".into()),
            extra: Map::new(),
            now: None,
        }
    }
}

impl TokenSpec {
    /// The defaults with audience `aud`.
    #[must_use]
    pub fn new(aud: &str) -> Self {
        Self {
            aud: aud.to_owned(),
            ..Self::default()
        }
    }

    /// The defaults with audience `aud`, bound to the key with thumbprint `jkt`.
    #[must_use]
    pub fn bound(aud: &str, jkt: &str) -> Self {
        Self {
            cnf_jkt: Some(jkt.to_owned()),
            ..Self::new(aud)
        }
    }

    /// The standard claims for `issuer`, with [`TokenSpec::extra`] merged over them.
    fn claims(&self, issuer: &str) -> Map<String, Value> {
        let iat = self.now.unwrap_or_else(unix_now);
        let exp = iat.saturating_add_signed(self.lifetime_secs);
        let mut c = Map::new();
        c.insert("iss".into(), issuer.into());
        c.insert("sub".into(), self.sub.as_str().into());
        c.insert("aud".into(), self.aud.as_str().into());
        c.insert("client_id".into(), self.client_id.as_str().into());
        c.insert("iat".into(), iat.into());
        c.insert("exp".into(), exp.into());
        c.insert("jti".into(), random_id().into());
        if let Some(scope) = &self.scope {
            c.insert("scope".into(), scope.as_str().into());
        }
        if let Some(jkt) = &self.cnf_jkt {
            c.insert("cnf".into(), json!({ "jkt": jkt }));
        }
        for (k, v) in &self.extra {
            c.insert(k.clone(), v.clone());
        }
        c
    }
}

fn unix_now() -> u64 {
    now().as_secs()
}

/// The system clock ([`dpop_core::SystemClock`]) as the core's [`dpop_core::UnixTime`];
/// the epoch when the clock is set before 1970.
#[must_use]
pub fn now() -> dpop_core::UnixTime {
    dpop_core::SystemClock
        .now()
        .unwrap_or(dpop_core::UnixTime::from_secs(0))
}

fn random_id() -> String {
    let mut bytes = [0u8; 16];
    // The system RNG does not fail in practice; a zero id would still be a valid claim.
    let _ = SystemRandomSource.fill(&mut bytes);
    jws::b64url(&bytes)
}

/// What the token endpoint of a [`MockIssuer`] issues ([`MockIssuer::issue_tokens`]).
/// Build it with struct-update syntax, like [`TokenSpec`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenPolicy {
    /// The `aud` of every token, whatever `audience` or `resource` the request asked
    /// for (as issuers that honour neither do). Defaults to `"https://api.example.com"`.
    pub aud: String,
    /// `exp` - `iat` and `expires_in`, in seconds (an `expires_in` below 0 is sent as 0).
    /// Defaults to 300.
    pub lifetime_secs: i64,
    /// Whether a refresh token comes with each access token. Refresh tokens are single
    /// use: redeeming one gives a new one. Defaults to `true`.
    pub refresh_tokens: bool,
}

impl Default for TokenPolicy {
    fn default() -> Self {
        Self {
            aud: "https://api.example.com".into(),
            lifetime_secs: 300,
            refresh_tokens: true,
        }
    }
}

/// How a [`MockIssuer`] serves its metadata or its JWKS: as it should, or too large for
/// a client that bounds what it reads.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Serving {
    /// The document as it is.
    #[default]
    Normal,
    /// The document followed by this many bytes of whitespace (still valid JSON), with
    /// a `Content-Length`.
    Padded(usize),
    /// The document followed by this many bytes of whitespace in one chunk, without a
    /// `Content-Length`; then the body never ends. Only a client that stops reading at its
    /// limit answers before its timeout.
    PaddedEndless(usize),
}

/// Configures a [`MockIssuer`] before it starts.
#[derive(Clone, Debug)]
pub struct MockIssuerBuilder {
    listen: SocketAddr,
    client_id: String,
    client_secret: String,
}

impl Default for MockIssuerBuilder {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            client_id: DEFAULT_INTROSPECTION_CLIENT_ID.into(),
            client_secret: DEFAULT_INTROSPECTION_CLIENT_SECRET.into(),
        }
    }
}

impl MockIssuerBuilder {
    /// The address to listen on. Defaults to `127.0.0.1:0` (a free port).
    #[must_use]
    pub fn listen(mut self, addr: SocketAddr) -> Self {
        self.listen = addr;
        self
    }

    /// The HTTP Basic credentials `/introspect` accepts. Defaults to
    /// [`DEFAULT_INTROSPECTION_CLIENT_ID`] / [`DEFAULT_INTROSPECTION_CLIENT_SECRET`].
    #[must_use]
    pub fn introspection_client(mut self, id: &str, secret: &str) -> Self {
        id.clone_into(&mut self.client_id);
        secret.clone_into(&mut self.client_secret);
        self
    }

    /// Generates the first signing key and starts serving on the current Tokio runtime.
    ///
    /// # Errors
    /// When the address cannot be bound or key generation fails.
    pub async fn start(self) -> io::Result<MockIssuer> {
        let listener = tokio::net::TcpListener::bind(self.listen).await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(IssuerState {
            url: format!("http://{addr}"),
            keys: Mutex::new(Vec::new()),
            next_kid: AtomicU32::new(1),
            jwks_fetches: AtomicUsize::new(0),
            introspections: AtomicUsize::new(0),
            opaque: Mutex::new(HashMap::new()),
            client_id: self.client_id,
            client_secret: self.client_secret,
            metadata_serving: Mutex::new(Serving::Normal),
            jwks_serving: Mutex::new(Serving::Normal),
            advertised_jwks_uri: Mutex::new(None),
            token_policy: Mutex::new(TokenPolicy::default()),
            token_requests: Mutex::new(Vec::new()),
            refresh_tokens: Mutex::new(std::collections::HashSet::new()),
        });
        state.push_new_key(false)?;
        let router = Router::new()
            .route(METADATA_PATH, get(metadata))
            .route("/jwks", get(jwks))
            .route("/introspect", post(introspect))
            .route("/token", post(token))
            .with_state(Arc::clone(&state));
        let server = serve_on(listener, TowerToHyperService::new(router))?;
        Ok(MockIssuer { state, server })
    }
}

struct IssuerKey {
    kid: String,
    key: Arc<PrivateKey>,
}

struct IssuerState {
    url: String,
    /// Published keys, oldest first; the last one signs.
    keys: Mutex<Vec<IssuerKey>>,
    next_kid: AtomicU32,
    jwks_fetches: AtomicUsize,
    introspections: AtomicUsize,
    /// Opaque token → its introspection response.
    opaque: Mutex<HashMap<String, Value>>,
    client_id: String,
    client_secret: String,
    metadata_serving: Mutex<Serving>,
    jwks_serving: Mutex<Serving>,
    /// The metadata's `jwks_uri` when not the issuer's own `/jwks`.
    advertised_jwks_uri: Mutex<Option<String>>,
    token_policy: Mutex<TokenPolicy>,
    /// The `grant_type` of every token request, in order.
    token_requests: Mutex<Vec<String>>,
    /// Refresh tokens issued and not yet redeemed.
    refresh_tokens: Mutex<std::collections::HashSet<String>>,
}

/// A lock that survives a panicking test thread: the data here stays consistent.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl IssuerState {
    fn push_new_key(&self, drop_old: bool) -> io::Result<String> {
        let key = PrivateKey::generate(Algorithm::Es256).map_err(io::Error::other)?;
        let kid = format!("key-{}", self.next_kid.fetch_add(1, Ordering::Relaxed));
        let mut keys = lock(&self.keys);
        if drop_old {
            keys.clear();
        }
        keys.push(IssuerKey {
            kid: kid.clone(),
            key: Arc::new(key),
        });
        Ok(kid)
    }

    fn current(&self) -> (String, Arc<PrivateKey>) {
        let keys = lock(&self.keys);
        // A key is pushed at start and rotation only replaces, so there always is one.
        keys.last()
            .map(|k| (k.kid.clone(), Arc::clone(&k.key)))
            .unwrap_or_else(|| unreachable!("the issuer always has a signing key"))
    }
}

/// An authorization server stand-in on loopback. Stops when dropped.
///
/// Serves `GET /.well-known/oauth-authorization-server` (RFC 8414), `GET /jwks` and
/// `POST /introspect` (RFC 7662, HTTP Basic client authentication). Tokens are ES256
/// JWTs signed with the current key, whose `kid` is in the JWKS.
pub struct MockIssuer {
    state: Arc<IssuerState>,
    server: ServerHandle,
}

impl std::fmt::Debug for MockIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MockIssuer")
            .field("url", &self.state.url)
            .field("kid", &self.kid())
            .finish_non_exhaustive()
    }
}

impl MockIssuer {
    /// Starts an issuer on a free loopback port with the default introspection client.
    ///
    /// # Errors
    /// See [`MockIssuerBuilder::start`].
    pub async fn start() -> io::Result<Self> {
        Self::builder().start().await
    }

    /// A builder for a fixed address or other introspection credentials.
    #[must_use]
    pub fn builder() -> MockIssuerBuilder {
        MockIssuerBuilder::default()
    }

    /// The issuer identifier and base URL, `http://127.0.0.1:PORT` (no trailing slash).
    #[must_use]
    pub fn url(&self) -> &str {
        &self.state.url
    }

    /// The listening address.
    #[must_use]
    pub fn addr(&self) -> SocketAddr {
        self.server.addr()
    }

    /// The metadata document's URL.
    #[must_use]
    pub fn metadata_url(&self) -> String {
        format!("{}{METADATA_PATH}", self.state.url)
    }

    /// The JWKS URL (`jwks_uri` in the metadata).
    #[must_use]
    pub fn jwks_uri(&self) -> String {
        format!("{}/jwks", self.state.url)
    }

    /// The introspection endpoint's URL.
    #[must_use]
    pub fn introspection_endpoint(&self) -> String {
        format!("{}/introspect", self.state.url)
    }

    /// The client id `/introspect` accepts.
    #[must_use]
    pub fn introspection_client_id(&self) -> &str {
        &self.state.client_id
    }

    /// The client secret `/introspect` accepts.
    #[must_use]
    pub fn introspection_client_secret(&self) -> &str {
        &self.state.client_secret
    }

    /// The `kid` of the current signing key.
    #[must_use]
    pub fn kid(&self) -> String {
        self.state.current().0
    }

    /// The current signing key (to sign hand-made tokens with [`crate::sign_compact`]).
    #[must_use]
    pub fn signing_key(&self) -> Arc<PrivateKey> {
        self.state.current().1
    }

    /// The JWKS document as served now.
    #[must_use]
    pub fn jwks(&self) -> Value {
        jwks_document(&self.state)
    }

    /// How many times `GET /jwks` has been served.
    #[must_use]
    pub fn jwks_fetches(&self) -> usize {
        self.state.jwks_fetches.load(Ordering::SeqCst)
    }

    /// How many introspection requests have been answered (any outcome).
    #[must_use]
    pub fn introspections(&self) -> usize {
        self.state.introspections.load(Ordering::SeqCst)
    }

    /// Rotates to a new signing key with a new `kid`; the JWKS then serves the old keys
    /// and the new one, so tokens signed earlier still verify. Returns the new `kid`.
    ///
    /// # Panics
    /// When key generation fails (the crypto library is broken).
    pub fn rotate_key(&self) -> String {
        self.state
            .push_new_key(false)
            .expect("ES256 key generation")
    }

    /// Rotates to a new signing key and stops publishing every older one, so tokens
    /// signed before no longer verify. Returns the new `kid`.
    ///
    /// # Panics
    /// When key generation fails (the crypto library is broken).
    pub fn rotate_key_and_drop_old(&self) -> String {
        self.state.push_new_key(true).expect("ES256 key generation")
    }

    /// Mints a signed access token: header `{alg: ES256, typ, kid}`, claims `iss`,
    /// `sub`, `aud`, `client_id`, `iat`, `exp`, a random `jti`, `scope`, `cnf.jkt`,
    /// then [`TokenSpec::extra`].
    ///
    /// # Panics
    /// When signing fails (the crypto library is broken).
    #[must_use]
    pub fn mint(&self, spec: &TokenSpec) -> String {
        let (kid, key) = self.state.current();
        let mut header = Map::new();
        header.insert("alg".into(), "ES256".into());
        if let Some(typ) = &spec.typ {
            header.insert("typ".into(), typ.as_str().into());
        }
        header.insert("kid".into(), kid.into());
        let claims = spec.claims(&self.state.url);
        jws::sign_compact(&*key, &Value::Object(header), &Value::Object(claims))
            .expect("ES256 signing")
    }

    /// Signs `header` and `claims` exactly as given with the current key (no `kid` is
    /// added). For tokens [`MockIssuer::mint`] cannot express.
    ///
    /// # Panics
    /// When signing fails (the crypto library is broken).
    #[must_use]
    pub fn sign_compact(&self, header: &Value, claims: &Value) -> String {
        jws::sign_compact(&*self.state.current().1, header, claims).expect("ES256 signing")
    }

    /// Makes `/introspect` answer `token` as active, with the claims `spec` describes
    /// (`iss`, `sub`, `aud`, `client_id`, `scope`, `iat`, `exp`, `cnf.jkt`, extras) and
    /// `token_type: "DPoP"`. Replaces an earlier registration of the same token.
    pub fn register_opaque(&self, token: &str, spec: &TokenSpec) {
        let mut answer = spec.claims(&self.state.url);
        answer.remove("jti");
        answer.insert("active".into(), true.into());
        answer.insert("token_type".into(), "DPoP".into());
        lock(&self.state.opaque).insert(token.to_owned(), Value::Object(answer));
    }

    /// Forgets a registered opaque token: it is inactive from now on.
    pub fn revoke(&self, token: &str) {
        lock(&self.state.opaque).remove(token);
    }

    /// How the metadata document is served from now on.
    pub fn serve_metadata(&self, how: Serving) {
        *lock(&self.state.metadata_serving) = how;
    }

    /// How `GET /jwks` is served from now on.
    pub fn serve_jwks(&self, how: Serving) {
        *lock(&self.state.jwks_serving) = how;
    }

    /// The `jwks_uri` the metadata names from now on; `None` restores [`MockIssuer::jwks_uri`].
    pub fn advertise_jwks_uri(&self, uri: Option<&str>) {
        *lock(&self.state.advertised_jwks_uri) = uri.map(str::to_owned);
    }

    /// What `POST /token` issues from now on. The endpoint takes `client_credentials`
    /// (any client) and `refresh_token` (one it issued and that was not redeemed yet),
    /// needs a `DPoP` header and binds the token to the proof's `jwk` (the proof itself
    /// is not verified: a stand-in for clients' tests, where the resource server checks).
    pub fn issue_tokens(&self, policy: TokenPolicy) {
        *lock(&self.state.token_policy) = policy;
    }

    /// The `grant_type` of every request to `POST /token` so far, in order (refused
    /// ones included).
    #[must_use]
    pub fn token_requests(&self) -> Vec<String> {
        lock(&self.state.token_requests).clone()
    }

    /// A refresh token the token endpoint accepts once, as if issued earlier.
    #[must_use]
    pub fn issue_refresh_token(&self) -> String {
        let token = random_id();
        lock(&self.state.refresh_tokens).insert(token.clone());
        token
    }
}

fn token_error(status: StatusCode, error: &str) -> Response {
    (status, Json(json!({ "error": error }))).into_response()
}

async fn token(
    State(state): State<Arc<IssuerState>>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let grant = form.get("grant_type").cloned().unwrap_or_default();
    lock(&state.token_requests).push(grant.clone());
    let jkt = headers
        .get("dpop")
        .and_then(|v| v.to_str().ok())
        .and_then(|proof| proof.split('.').next())
        .and_then(|header| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(header)
                .ok()
        })
        .and_then(|header| serde_json::from_slice::<Value>(&header).ok())
        .and_then(|header| header.get("jwk").map(Value::to_string))
        .and_then(|jwk| dpop_core::PublicJwk::from_json(&jwk).ok())
        .map(|jwk| jwk.thumbprint().as_str().to_owned());
    let Some(jkt) = jkt else {
        return token_error(StatusCode::BAD_REQUEST, "invalid_dpop_proof");
    };
    match grant.as_str() {
        "client_credentials" => {}
        "refresh_token" => {
            let presented = form.get("refresh_token").map_or("", String::as_str);
            if !lock(&state.refresh_tokens).remove(presented) {
                return token_error(StatusCode::BAD_REQUEST, "invalid_grant");
            }
        }
        _ => return token_error(StatusCode::BAD_REQUEST, "unsupported_grant_type"),
    }
    let client_id = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_basic)
        .map(|(id, _)| id)
        .or_else(|| form.get("client_id").cloned())
        .unwrap_or_default();
    let policy = lock(&state.token_policy).clone();
    let spec = TokenSpec {
        client_id,
        scope: form.get("scope").cloned(),
        lifetime_secs: policy.lifetime_secs,
        ..TokenSpec::bound(&policy.aud, &jkt)
    };
    let (kid, key) = state.current();
    let header = json!({ "alg": "ES256", "typ": "at+jwt", "kid": kid });
    let Ok(access_token) =
        jws::sign_compact(&*key, &header, &Value::Object(spec.claims(&state.url)))
    else {
        return token_error(StatusCode::INTERNAL_SERVER_ERROR, "server_error");
    };
    let mut answer = json!({
        "access_token": access_token,
        "token_type": "DPoP",
        "expires_in": policy.lifetime_secs.max(0),
    });
    if let Some(scope) = &spec.scope {
        answer["scope"] = scope.as_str().into();
    }
    if policy.refresh_tokens {
        let refresh = random_id();
        lock(&state.refresh_tokens).insert(refresh.clone());
        answer["refresh_token"] = refresh.into();
    }
    Json(answer).into_response()
}

/// A JSON response for `document`, served as `how` says.
fn serve_document(document: &Value, how: Serving) -> Response {
    let mut text = document.to_string();
    let json = [(header::CONTENT_TYPE, "application/json")];
    match how {
        Serving::Normal => (json, text).into_response(),
        Serving::Padded(n) => {
            text.push_str(&" ".repeat(n));
            (json, text).into_response()
        }
        Serving::PaddedEndless(n) => {
            text.push_str(&" ".repeat(n));
            let body = Endless(Some(Bytes::from(text)));
            (json, Body::new(body)).into_response()
        }
    }
}

/// A body that sends its one chunk and then never ends (nor wakes its reader again).
struct Endless(Option<Bytes>);

impl hyper::body::Body for Endless {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.0.take() {
            Some(chunk) => Poll::Ready(Some(Ok(Frame::data(chunk)))),
            None => Poll::Pending,
        }
    }
}

fn jwks_document(state: &IssuerState) -> Value {
    let keys: Vec<Value> = lock(&state.keys)
        .iter()
        .map(|k| {
            let mut jwk = match k.key.public_jwk().to_json_value() {
                Value::Object(m) => m,
                _ => Map::new(),
            };
            jwk.insert("kid".into(), k.kid.as_str().into());
            jwk.insert("alg".into(), "ES256".into());
            jwk.insert("use".into(), "sig".into());
            Value::Object(jwk)
        })
        .collect();
    json!({ "keys": keys })
}

async fn metadata(State(state): State<Arc<IssuerState>>) -> Response {
    let url = &state.url;
    let algs: Vec<&str> = DEFAULT_ALGORITHMS.iter().map(|a| a.name()).collect();
    let jwks_uri = lock(&state.advertised_jwks_uri)
        .clone()
        .unwrap_or_else(|| format!("{url}/jwks"));
    let document = json!({
        "issuer": url,
        "jwks_uri": jwks_uri,
        "token_endpoint": format!("{url}/token"),
        "introspection_endpoint": format!("{url}/introspect"),
        "response_types_supported": ["code"],
        "dpop_signing_alg_values_supported": algs,
    });
    serve_document(&document, *lock(&state.metadata_serving))
}

async fn jwks(State(state): State<Arc<IssuerState>>) -> Response {
    state.jwks_fetches.fetch_add(1, Ordering::SeqCst);
    serve_document(&jwks_document(&state), *lock(&state.jwks_serving))
}

async fn introspect(
    State(state): State<Arc<IssuerState>>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    state.introspections.fetch_add(1, Ordering::SeqCst);
    let authorised = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_basic)
        .is_some_and(|(id, secret)| id == state.client_id && secret == state.client_secret);
    if !authorised {
        return (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Basic realm=\"introspection\"")],
            Json(json!({ "error": "invalid_client" })),
        )
            .into_response();
    }
    let Some(token) = form.get("token") else {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({ "error": "invalid_request" })),
        )
            .into_response();
    };
    let answer = lock(&state.opaque)
        .get(token)
        .cloned()
        .unwrap_or_else(|| json!({ "active": false }));
    Json(answer).into_response()
}

/// `Basic base64(urlencode(id) ":" urlencode(secret))` (RFC 6749 §2.3.1).
fn parse_basic(value: &str) -> Option<(String, String)> {
    let (scheme, rest) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = STANDARD.decode(rest.trim()).ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (id, secret) = decoded.split_once(':')?;
    Some((form_decode(id)?, form_decode(secret)?))
}

/// `application/x-www-form-urlencoded` decoding of one value.
fn form_decode(s: &str) -> Option<String> {
    let mut out = Vec::with_capacity(s.len());
    let mut bytes = s.bytes();
    while let Some(b) = bytes.next() {
        match b {
            b'+' => out.push(b' '),
            b'%' => {
                let hi = char::from(bytes.next()?).to_digit(16)?;
                let lo = char::from(bytes.next()?).to_digit(16)?;
                out.push(u8::try_from(hi * 16 + lo).ok()?);
            }
            _ => out.push(b),
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_credentials_are_form_decoded() {
        let v = format!("Basic {}", STANDARD.encode("my%20client:s%3Acret+x"));
        assert_eq!(
            parse_basic(&v),
            Some(("my client".into(), "s:cret x".into()))
        );
        assert_eq!(parse_basic("Bearer abc"), None);
        assert_eq!(parse_basic("Basic !!!"), None);
    }

    #[test]
    fn extra_claims_replace_standard_ones() {
        let mut spec = TokenSpec::new("https://a.example");
        spec.extra.insert("aud".into(), json!(["x", "y"]));
        spec.now = Some(1000);
        spec.lifetime_secs = -10;
        let c = spec.claims("http://issuer");
        assert_eq!(c["aud"], json!(["x", "y"]));
        assert_eq!(c["exp"], json!(990));
        assert!(!c.contains_key("cnf"));
    }
}
