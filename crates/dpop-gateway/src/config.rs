//! Gateway configuration: a TOML file is read into a raw, syntax-only form
//! ([`GatewaySettings`]), values given elsewhere (the `dpop` command's flags) are set over
//! it, and the whole is validated once into [`GatewayConfig`], so that a bad setting
//! stops the gateway at start-up, never a request.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use dpop_core::{Algorithm, Htu, NonceSecret, StatelessNonces};
use dpop_redis::RedisStoreConfig;
use dpop_server::LogFormat;
use dpop_tower::{DpopMode, ResourceMetadata, Route, RoutePolicy, Routes};
use http::Method;
use ipnet::IpNet;
use serde::Deserialize;
use zeroize::Zeroizing;

use crate::error::GatewayError;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    listen: Option<SocketAddr>,
    grpc_listen: Option<SocketAddr>,
    upstream: Option<RawUpstream>,
    issuer: Option<String>,
    audience: Option<String>,
    jwks_uri: Option<String>,
    public_url: Option<OneOrMany>,
    allowed_hosts: Option<Vec<String>>,
    trusted_proxies: Option<Vec<String>>,
    admin_listen: Option<SocketAddr>,
    replay_store: Option<String>,
    algorithms: Option<Vec<String>>,
    realm: Option<String>,
    log_format: Option<String>,
    log_requests: Option<bool>,
    h2c: Option<bool>,
    reload_on_change: Option<bool>,
    tls: Option<RawTls>,
    #[serde(default)]
    proof: RawProof,
    #[serde(default)]
    nonce: RawNonce,
    introspection: Option<RawIntrospection>,
    #[serde(default)]
    replay: RawReplay,
    #[serde(default)]
    limits: RawLimits,
    #[serde(default)]
    forward: RawForward,
    #[serde(default)]
    routes: Vec<RawRoute>,
    #[serde(default)]
    resource_metadata: RawResourceMetadata,
    authz: Option<RawAuthz>,
}

/// `[authz]`: settings of `dpop authz` only.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAuthz {
    path_prefix: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    cert_file: Option<PathBuf>,
    key_file: Option<PathBuf>,
    client_ca_file: Option<PathBuf>,
    client_auth: Option<String>,
    reload_interval_secs: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawResourceMetadata {
    resource_name: Option<String>,
    resource_documentation: Option<String>,
    scopes_supported: Option<Vec<String>>,
    max_age_secs: Option<u64>,
}

/// `upstream` (top level or a route's): a URL, or a table with the connection settings.
/// The table is read into [`RawUpstreamTable`] during validation, so that a wrong field
/// gets serde's precise message rather than the untagged enum's "no variant matched".
#[derive(Debug, Deserialize)]
#[serde(
    untagged,
    expecting = "upstream must be a URL string or a table with url, ca_file, server_name, client_cert_file, client_key_file and http2"
)]
enum RawUpstream {
    Url(String),
    Table(toml::Table),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUpstreamTable {
    url: String,
    ca_file: Option<PathBuf>,
    server_name: Option<String>,
    client_cert_file: Option<PathBuf>,
    client_key_file: Option<PathBuf>,
    http2: Option<bool>,
}

/// A string or a list of strings.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn into_vec(self) -> Vec<String> {
        match self {
            Self::One(s) => vec![s],
            Self::Many(v) => v,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProof {
    max_age_secs: Option<u64>,
    future_leeway_secs: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNonce {
    require: Option<bool>,
    secrets: Option<Vec<String>>,
    secrets_file: Option<PathBuf>,
    step_secs: Option<u64>,
    max_age_secs: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIntrospection {
    endpoint: String,
    client_id: String,
    client_secret: Option<String>,
    client_secret_file: Option<PathBuf>,
    cache_ttl_secs: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawReplay {
    redis_timeout_ms: Option<u64>,
    redis_username: Option<String>,
    redis_password_file: Option<PathBuf>,
    redis_password_env: Option<String>,
    redis_wait_replicas: Option<u32>,
    redis_wait_timeout_ms: Option<u64>,
    redis_sentinel_username: Option<String>,
    redis_sentinel_password_file: Option<PathBuf>,
    redis_sentinel_password_env: Option<String>,
    memory_capacity: Option<usize>,
    dangerous_fail_open: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    max_header_bytes: Option<usize>,
    request_timeout_secs: Option<u64>,
    upstream_timeout_secs: Option<u64>,
    max_connections: Option<usize>,
    drain_timeout_secs: Option<u64>,
    max_stream_secs: Option<u64>,
    max_concurrent_streams: Option<u32>,
    handshake_timeout_secs: Option<u64>,
    idle_timeout_secs: Option<u64>,
    workers: Option<usize>,
    io_uring: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawForward {
    strip_authorization: Option<bool>,
    strip_dpop: Option<bool>,
    subject_header: Option<String>,
    client_id_header: Option<String>,
    jkt_header: Option<String>,
    scopes_header: Option<String>,
    client_cert_subject_header: Option<String>,
    client_cert_thumbprint_header: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    path_prefix: String,
    methods: Option<Vec<String>>,
    dpop: Option<String>,
    nonce: Option<bool>,
    scopes: Option<Vec<String>>,
    dangerous_forward_encoded_slashes: Option<bool>,
    resource: Option<bool>,
    max_stream_secs: Option<u64>,
    upstream: Option<RawUpstream>,
    client_cert: Option<String>,
}

/// Where proofs are recorded.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReplayStoreConfig {
    /// This process only (one instance).
    Memory {
        /// Most live entries.
        capacity: usize,
    },
    /// Shared through Redis.
    Redis {
        /// `redis://` or `rediss://` URL, or `redis+cluster://`, `redis+sentinel://` (and
        /// their `rediss+` forms).
        url: String,
        /// Per-command timeout.
        timeout: Duration,
        /// `[replay] redis_username`: the ACL user, when not in the URL.
        username: Option<String>,
        /// The password read from `[replay] redis_password_file` or the environment
        /// variable named by `redis_password_env`, when not in the URL. Never shown.
        password: Option<Zeroizing<String>>,
        /// `[replay] redis_wait_replicas`: replicas that must acknowledge each record
        /// (`WAIT`), 0 for none.
        wait_replicas: u32,
        /// `[replay] redis_wait_timeout_ms`: how long `WAIT` waits.
        wait_timeout: Duration,
        /// `[replay] redis_sentinel_username`: the ACL user to log in to the sentinels as
        /// (a Sentinel URL only).
        sentinel_username: Option<String>,
        /// The sentinels' password, read from `[replay] redis_sentinel_password_file` or the
        /// environment variable named by `redis_sentinel_password_env` (a Sentinel URL
        /// only). Never shown.
        sentinel_password: Option<Zeroizing<String>>,
    },
}

// Not derived: a Redis URL may hold a password. Everything after `scheme://` up to the
// last `@` (the user information, as URL parsers read it) is hidden.
impl std::fmt::Debug for ReplayStoreConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Memory { capacity } => f
                .debug_struct("Memory")
                .field("capacity", capacity)
                .finish(),
            Self::Redis {
                url,
                timeout,
                username,
                password,
                wait_replicas,
                wait_timeout,
                sentinel_username,
                sentinel_password,
            } => {
                let shown = match (url.split_once("://"), url.rsplit_once('@')) {
                    (Some((scheme, _)), Some((_, host))) => format!("{scheme}://***@{host}"),
                    (Some(_), None) => url.clone(),
                    (None, _) => "<not a URL>".to_owned(),
                };
                f.debug_struct("Redis")
                    .field("url", &shown)
                    .field("timeout", timeout)
                    .field("username", username)
                    .field("password", &password.as_ref().map(|_| "***"))
                    .field("wait_replicas", wait_replicas)
                    .field("wait_timeout", wait_timeout)
                    .field("sentinel_username", sentinel_username)
                    .field(
                        "sentinel_password",
                        &sentinel_password.as_ref().map(|_| "***"),
                    )
                    .finish()
            }
        }
    }
}

/// How to check access tokens.
#[derive(Clone)]
#[non_exhaustive]
pub enum TokenCheck {
    /// JWTs against the issuer's keys.
    Jwks {
        /// A fixed `jwks_uri` instead of discovery.
        jwks_uri: Option<String>,
    },
    /// RFC 7662 introspection.
    Introspection {
        /// Endpoint.
        endpoint: String,
        /// Client id.
        client_id: String,
        /// Client secret.
        client_secret: Zeroizing<String>,
    },
}

// Not derived: the introspection client secret is never shown.
impl std::fmt::Debug for TokenCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Jwks { jwks_uri } => f.debug_struct("Jwks").field("jwks_uri", jwks_uri).finish(),
            Self::Introspection {
                endpoint,
                client_id,
                client_secret: _,
            } => f
                .debug_struct("Introspection")
                .field("endpoint", endpoint)
                .field("client_id", client_id)
                .field("client_secret", &"***")
                .finish(),
        }
    }
}

/// Where requests go and how the gateway connects there: the top-level `upstream`, or a
/// route's.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct UpstreamConfig {
    /// Base URL: `http` or `https`, a host, an optional canonical path prefix put before
    /// every forwarded path; no user info, no query.
    pub url: http::Uri,
    /// How the TLS connection is checked: `Some` exactly when `url` is `https`.
    pub tls: Option<UpstreamTls>,
    /// Speak HTTP/2 only: ALPN `h2` (required) over TLS, prior knowledge (h2c) over
    /// plain TCP. Defaults to `false`: HTTP/1.1 (ALPN `http/1.1` over TLS).
    pub http2: bool,
}

impl UpstreamConfig {
    /// The URL's path without its trailing `/` (empty for none): what goes before the
    /// forwarded target.
    #[must_use]
    pub fn path_prefix(&self) -> &str {
        self.url.path().trim_end_matches('/')
    }
}

/// The URL and what is set besides it, for logs: file paths and keys are left out.
impl std::fmt::Display for UpstreamConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.url)?;
        let mut notes = Vec::new();
        if self.http2 {
            notes.push("HTTP/2".to_owned());
        }
        if let Some(tls) = &self.tls {
            if tls.ca_file.is_some() {
                notes.push("own CA".to_owned());
            }
            if let Some(name) = &tls.server_name {
                notes.push(format!("server name {name}"));
            }
            if tls.client_cert.is_some() {
                notes.push("client certificate".to_owned());
            }
        }
        if !notes.is_empty() {
            write!(f, " ({})", notes.join(", "))?;
        }
        Ok(())
    }
}

/// How an `https` upstream's certificate is checked, and what the gateway presents.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct UpstreamTls {
    /// Trust only the CA certificates in this PEM file. Defaults to the system's roots.
    pub ca_file: Option<PathBuf>,
    /// The name the certificate must carry and the SNI sent (a DNS name or an IP
    /// address). Defaults to the URL's host.
    pub server_name: Option<String>,
    /// A client certificate for upstreams that require one (mutual TLS). Defaults to
    /// none.
    pub client_cert: Option<ClientCertFiles>,
}

/// A client certificate chain and its private key, as PEM files.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct ClientCertFiles {
    /// The certificate, then any intermediates.
    pub cert_file: PathBuf,
    /// The private key (PKCS#8, SEC1 or PKCS#1).
    pub key_file: PathBuf,
}

/// Validates an `upstream` value; `what` names it in messages (`upstream`, or
/// `route /x: upstream`).
fn upstream_config(raw: RawUpstream, what: &str) -> Result<UpstreamConfig, GatewayError> {
    let table = match raw {
        RawUpstream::Url(url) => RawUpstreamTable {
            url,
            ca_file: None,
            server_name: None,
            client_cert_file: None,
            client_key_file: None,
            http2: None,
        },
        RawUpstream::Table(t) => toml::Value::Table(t)
            .try_into::<RawUpstreamTable>()
            .map_err(|e| invalid(format!("{what}: {}", e.message().trim())))?,
    };
    let text = table.url;
    let url: http::Uri = text
        .parse()
        .map_err(|_| invalid(format!("{what} {text:?} is not a URL")))?;
    let https = match url.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        _ => {
            return Err(invalid(format!(
                "{what} {text:?} must be an http:// or https:// URL"
            )));
        }
    };
    // User info would be a secret in every log line naming the upstream, and is not sent
    // as credentials anyway.
    if url
        .authority()
        .is_none_or(|a| a.host().is_empty() || a.as_str().contains('@'))
        || url.query().is_some()
    {
        return Err(invalid(format!(
            "{what} {text:?} must be an http:// or https:// URL with a host, no user info and no query"
        )));
    }
    // The upstream's path prefix is put before every forwarded path, so it must be
    // canonical too, or the upstream could resolve it into something else.
    if url.path() != "/" {
        dpop_core::RequestTarget::parse(url.path())
            .map_err(|e| invalid(format!("{what} path {:?}: {e}", url.path())))?;
    }
    let client_cert = match (table.client_cert_file, table.client_key_file) {
        (Some(cert_file), Some(key_file)) => Some(ClientCertFiles {
            cert_file,
            key_file,
        }),
        (None, None) => None,
        _ => {
            return Err(invalid(format!(
                "{what} {text}: client_cert_file and client_key_file go together"
            )));
        }
    };
    if let Some(name) = &table.server_name
        && rustls::pki_types::ServerName::try_from(name.as_str()).is_err()
    {
        return Err(invalid(format!(
            "{what} {text}: server_name {name:?} is not a DNS name or IP address"
        )));
    }
    let tls = if https {
        Some(UpstreamTls {
            ca_file: table.ca_file,
            server_name: table.server_name,
            client_cert,
        })
    } else {
        let needs_tls = [
            ("ca_file", table.ca_file.is_some()),
            ("server_name", table.server_name.is_some()),
            ("client_cert_file", client_cert.is_some()),
        ];
        if let Some((name, _)) = needs_tls.iter().find(|(_, set)| *set) {
            return Err(invalid(format!(
                "{what} {text}: {name} is for TLS and needs an https:// URL"
            )));
        }
        None
    };
    Ok(UpstreamConfig {
        url,
        tls,
        http2: table.http2.unwrap_or(false),
    })
}

/// The proxy listener's TLS (`[tls]`): its certificate, reloaded when the files change,
/// and client certificates.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct TlsConfig {
    /// The certificate chain, PEM, leaf first.
    pub cert_file: PathBuf,
    /// The private key, PEM (PKCS#8, SEC1 or PKCS#1).
    pub key_file: PathBuf,
    /// Client certificates (mutual TLS), when `client_ca_file` is set.
    pub client_auth: Option<ClientAuthConfig>,
    /// How often the certificate and key files are checked for a change. Defaults to 2 s.
    pub reload_interval: Duration,
}

/// Client certificates on the TLS listener (`[tls] client_ca_file`, `client_auth`).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ClientAuthConfig {
    /// The CAs client certificates must chain to, PEM.
    pub ca_file: PathBuf,
    /// `client_auth = "required"`: a handshake without a valid client certificate fails.
    /// With `"optional"`, a client may present none, but one it presents must be valid.
    /// Defaults to required.
    pub required: bool,
}

/// Headers the upstream receives about the verified caller (empty name: not sent).
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct IdentityHeaders {
    /// Token `sub`.
    pub subject: String,
    /// Token `client_id`.
    pub client_id: String,
    /// Proof key thumbprint.
    pub jkt: String,
    /// Space-separated scopes.
    pub scopes: String,
    /// The verified client certificate's subject (RFC 4514).
    pub client_cert_subject: String,
    /// The verified client certificate's SHA-256 thumbprint (base64url, RFC 8705
    /// `x5t#S256`).
    pub client_cert_thumbprint: String,
}

/// A validated gateway configuration: where it listens and forwards, and the
/// [`EnforcementConfig`] it shares with `dpop authz`.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct GatewayConfig {
    /// Listen address.
    pub listen: SocketAddr,
    /// The default upstream: where requests go unless their route has its own.
    pub upstream: UpstreamConfig,
    /// Routes' own upstreams, by route id (the route's index in `[[routes]]`, handed on
    /// by the layer in [`dpop_tower::AuthorizedTarget::route_id`]).
    pub route_upstreams: BTreeMap<usize, UpstreamConfig>,
    /// TLS on the listener (`None`: plain HTTP).
    pub tls: Option<TlsConfig>,
    /// HTTP/2 with prior knowledge (h2c) beside HTTP/1.1 on a plain listener. With TLS,
    /// HTTP/2 is chosen by ALPN instead.
    pub h2c: bool,
    /// Upstream response-head time limit.
    pub upstream_timeout: Duration,
    /// Concurrent streams per HTTP/2 connection.
    pub max_concurrent_streams: u32,
    /// Time limit for a TLS handshake.
    pub handshake_timeout: Duration,
    /// How long an HTTP/2 connection may stay open with no request in flight (none being
    /// handled, no response body still streaming) before it is shut down gracefully
    /// (`[limits] idle_timeout_secs`, default 300 s).
    pub idle_timeout: Duration,
    /// Serving threads (`[limits] workers`, default one per core): each runs its own
    /// single-threaded runtime, accepts on its own handle of the listening socket and
    /// keeps its own upstream connections, so a request is read, checked, forwarded and
    /// answered on one thread.
    pub workers: usize,
    /// `[limits] io_uring` (default `true`): each serving thread hands the socket writes
    /// of one turn of its runtime (responses to clients, and the heads of requests
    /// without a body to plain-HTTP/1.1 upstreams) to the kernel in one io_uring
    /// submission, so that a peer sharing the
    /// machine wakes once per turn rather than once per write. `false`, or a kernel that
    /// refuses io_uring, writes each with its own system call.
    pub io_uring: bool,
    /// How long a WebSocket tunnel or a streamed response body may last
    /// (`[limits] max_stream_secs`), where the matched route sets none. Defaults to one
    /// hour.
    pub max_stream: Duration,
    /// Each configured route's stream lifetime, indexed by the route's place in the
    /// configuration (its [`dpop_tower::Route::id`]): its own `max_stream_secs` or
    /// [`Self::max_stream`].
    pub route_max_stream: Vec<Duration>,
    /// `reload_on_change`: the configuration file is watched and a change to it reloads
    /// the configuration as SIGHUP does. Defaults to `false` (SIGHUP only).
    pub reload_on_change: bool,
    /// What is checked and how: tokens, proofs, routes, nonces, replay store, identity
    /// headers, the admin listener and logs.
    pub enforcement: EnforcementConfig,
}

/// What the gateway and the authorizer (`dpop authz`) check and how, validated once: the
/// same settings mean the same thing in both.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct EnforcementConfig {
    /// Token issuer, in canonical form: `https` (or `http` to loopback), no trailing
    /// slash.
    pub issuer: String,
    /// Required audience.
    pub audience: String,
    /// How tokens are checked.
    pub tokens: TokenCheck,
    /// How long a verified token is reused without checking it again (never past its
    /// `exp`): how long a revocation at the issuer can take to be seen with introspection.
    pub token_cache_ttl: Duration,
    /// External origins + prefixes (empty when `allowed_hosts` is used).
    pub public_urls: Vec<String>,
    /// Hosts accepted when the `htu` is built from the request (empty with public URLs).
    pub allowed_hosts: Vec<String>,
    /// Proxies whose `X-Forwarded-*` headers are trusted.
    pub trusted_proxies: Vec<IpNet>,
    /// Admin listener.
    pub admin_listen: Option<SocketAddr>,
    /// Replay store.
    pub replay: ReplayStoreConfig,
    /// Let requests through when the replay store fails (dangerous).
    pub fail_open: bool,
    /// Accepted proof algorithms.
    pub algorithms: Vec<Algorithm>,
    /// Challenge realm.
    pub realm: Option<String>,
    /// RFC 9728 protected resource metadata (`authorization_servers` is the issuer).
    pub resource_metadata: ResourceMetadata,
    /// Nonce scheme (when any route needs nonces).
    pub nonces: Option<Arc<StatelessNonces>>,
    /// Whether nonces are shared (configured secret) or this instance's own.
    pub nonce_secret_shared: bool,
    /// Route table.
    pub routes: Routes,
    /// Proof window.
    pub proof_max_age: Duration,
    /// Client clock lead accepted.
    pub proof_future_leeway: Duration,
    /// Largest request head. Defaults to 16 KiB, raised by the extra room ML-DSA proofs
    /// need when an ML-DSA algorithm is allowed (20 KiB with ML-DSA-44/65, 24 KiB with
    /// ML-DSA-87); `[limits] max_header_bytes` overrides it (at least 8192).
    pub max_header_bytes: usize,
    /// Time limit from request to response head (checks and upstream included).
    pub request_timeout: Duration,
    /// Concurrent client connections (TLS handshakes included).
    pub max_connections: usize,
    /// How long in-flight requests may finish after SIGTERM.
    pub drain_timeout: Duration,
    /// Remove `Authorization` from requests the gateway authenticated.
    pub strip_authorization: bool,
    /// Remove `DPoP` from requests the gateway authenticated.
    pub strip_dpop: bool,
    /// Identity header names.
    pub identity_headers: IdentityHeaders,
    /// How log lines are written.
    pub log_format: LogFormat,
    /// One access-log line per request (or check) at target `dpop::access`
    /// (`log_requests`). Defaults to `true`.
    pub log_requests: bool,
    /// Each configured route's name in logs and metric labels, indexed by the route's id
    /// (its place in the configuration): its path prefix.
    pub route_names: Vec<String>,
}

/// How long an introspection answer is reused when `cache_ttl_secs` is not set.
pub(crate) const DEFAULT_INTROSPECTION_CACHE_SECS: u64 = 10;

fn invalid(msg: impl Into<String>) -> GatewayError {
    GatewayError::Config(msg.into())
}

/// The `replay_store` URL schemes handed to the Redis store.
const REDIS_SCHEMES: [&str; 6] = [
    "redis://",
    "rediss://",
    "redis+cluster://",
    "rediss+cluster://",
    "redis+sentinel://",
    "rediss+sentinel://",
];

/// Which password a pair of `[replay]` keys gives: the data nodes' or the sentinels'.
#[derive(Clone, Copy)]
enum RedisSecret {
    /// `redis_password_file` / `redis_password_env`.
    Redis,
    /// `redis_sentinel_password_file` / `redis_sentinel_password_env`.
    Sentinel,
}

impl RedisSecret {
    /// The key prefix: `redis` or `redis_sentinel`.
    fn prefix(self) -> &'static str {
        match self {
            Self::Redis => "redis",
            Self::Sentinel => "redis_sentinel",
        }
    }
}

/// The password from `[replay] <prefix>_password_file` or `<prefix>_password_env` (at
/// most one of them), or `None`; `which` says which pair of keys.
fn redis_password(
    replay: &RawReplay,
    which: RedisSecret,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<Zeroizing<String>>, GatewayError> {
    let (file, var) = match which {
        RedisSecret::Redis => (&replay.redis_password_file, &replay.redis_password_env),
        RedisSecret::Sentinel => (
            &replay.redis_sentinel_password_file,
            &replay.redis_sentinel_password_env,
        ),
    };
    let prefix = which.prefix();
    let password = match (file, var) {
        (Some(_), Some(_)) => {
            return Err(invalid(format!(
                "[replay] takes one of {prefix}_password_file and {prefix}_password_env, not both"
            )));
        }
        (Some(path), None) => read_secret_file(path, &format!("[replay] {prefix}_password_file"))?,
        (None, Some(var)) => {
            let value = Zeroizing::new(env(var).ok_or_else(|| {
                invalid(format!(
                    "[replay] {prefix}_password_env: environment variable {var} is not set (or not UTF-8)"
                ))
            })?);
            Zeroizing::new(value.trim().to_owned())
        }
        (None, None) => return Ok(None),
    };
    if password.is_empty() {
        return Err(invalid(format!(
            "[replay] the password from {prefix}_password_{} is empty",
            if file.is_some() { "file" } else { "env" }
        )));
    }
    Ok(Some(password))
}

/// The secret in the file of `setting` (trimmed). Others must not read it, as for
/// private keys (`dpop_server::files`): refused here, at load, naming the setting.
fn read_secret_file(path: &Path, setting: &str) -> Result<Zeroizing<String>, GatewayError> {
    dpop_server::files::check_password_file(path)
        .map_err(|why| invalid(format!("{setting}: {why}")))?;
    std::fs::read_to_string(path)
        .map(|s| Zeroizing::new(s.trim().to_owned()))
        .map_err(|e| invalid(format!("{setting}: cannot read {}: {e}", path.display())))
}

/// One line (the CLI prints errors as one line): the file (when read from one), the
/// line, the message.
fn toml_error(path: Option<&Path>, text: &str, e: &toml::de::Error) -> GatewayError {
    let message = e.message().trim();
    let line = e.span().map(|span| {
        text.get(..span.start)
            .map_or(1, |t| t.matches('\n').count() + 1)
    });
    invalid(match (path, line) {
        (Some(path), Some(line)) => format!("{} line {line}: {message}", path.display()),
        (Some(path), None) => format!("{}: {message}", path.display()),
        (None, Some(line)) => format!("line {line}: {message}"),
        (None, None) => message.to_owned(),
    })
}

fn header_name(name: Option<String>, default: &str) -> Result<String, GatewayError> {
    let name = name
        .unwrap_or_else(|| default.to_owned())
        .to_ascii_lowercase();
    if !name.is_empty() && http::HeaderName::from_bytes(name.as_bytes()).is_err() {
        return Err(invalid(format!("{name:?} is not a valid header name")));
    }
    // CGI, Rack, WSGI and PHP read `_` and `-` alike, so a name with `_` could be forged
    // by a client sending the `-` spelling (and the other way round).
    if name.contains('_') {
        return Err(invalid(format!(
            "identity header {name:?}: use - rather than _ (applications read both alike, so clients could forge it)"
        )));
    }
    Ok(name)
}

/// The nonce secret of this process when none is configured: drawn once, so that a
/// configuration reloaded later keeps accepting the nonces handed out before.
fn process_nonce_secret() -> Result<&'static Zeroizing<[u8; 32]>, GatewayError> {
    static SECRET: std::sync::OnceLock<Zeroizing<[u8; 32]>> = std::sync::OnceLock::new();
    if let Some(secret) = SECRET.get() {
        return Ok(secret);
    }
    let mut random = Zeroizing::new([0u8; 32]);
    aws_lc_rs::rand::fill(random.as_mut())
        .map_err(|_| invalid("no randomness for a nonce secret"))?;
    Ok(SECRET.get_or_init(|| random))
}

/// A configured nonce secret. Its key id is derived from the secret itself, so it is
/// the same on every instance and whether the secret is listed first or second.
fn nonce_secret(text: &str) -> Result<NonceSecret, GatewayError> {
    let bytes = Zeroizing::new(
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(text.trim().trim_end_matches('='))
            .map_err(|_| invalid("nonce secrets must be base64url"))?,
    );
    NonceSecret::new(&bytes).map_err(|_| invalid("nonce secrets must be at least 32 bytes"))
}

/// A gateway configuration read but not yet validated: what a TOML file says, with
/// values given elsewhere set over it (the `dpop gateway` flags win over its
/// `--config` file). [`GatewaySettings::validate`] checks the whole.
#[derive(Default)]
pub struct GatewaySettings {
    raw: RawConfig,
    /// A nonce secret from outside the file: the current one.
    current_nonce_secret: Option<Zeroizing<String>>,
}

// Not derived: the raw settings hold secrets (introspection client secret, nonce secrets).
impl std::fmt::Debug for GatewaySettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewaySettings")
            .field("listen", &self.raw.listen)
            .field("upstream", &self.raw.upstream)
            .field("issuer", &self.raw.issuer)
            .finish_non_exhaustive()
    }
}

impl GatewaySettings {
    /// Parses TOML (see `examples/gateway.toml`); checks syntax and field names only.
    ///
    /// # Errors
    /// [`GatewayError::Config`] with the line and the message.
    pub fn from_toml(text: &str) -> Result<Self, GatewayError> {
        Self::parse(None, text)
    }

    /// Reads and parses a TOML file, as [`GatewaySettings::from_toml`].
    ///
    /// # Errors
    /// [`GatewayError::Config`] when the file cannot be read, or with the file, the line
    /// and the message.
    pub fn from_file(path: &Path) -> Result<Self, GatewayError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| invalid(format!("cannot read {}: {e}", path.display())))?;
        Self::parse(Some(path), &text)
    }

    fn parse(path: Option<&Path>, text: &str) -> Result<Self, GatewayError> {
        let raw = toml::from_str::<RawConfig>(text).map_err(|e| toml_error(path, text, &e))?;
        Ok(Self {
            raw,
            current_nonce_secret: None,
        })
    }

    /// Sets `listen`.
    pub fn set_listen(&mut self, addr: SocketAddr) -> &mut Self {
        self.raw.listen = Some(addr);
        self
    }

    /// Sets the URL of `upstream`. An `[upstream]` table from the file keeps its other
    /// settings (CA file, client certificate, HTTP/2).
    pub fn set_upstream(&mut self, url: impl Into<String>) -> &mut Self {
        let url = url.into();
        match &mut self.raw.upstream {
            Some(RawUpstream::Table(table)) => {
                table.insert("url".to_owned(), toml::Value::String(url));
            }
            other => *other = Some(RawUpstream::Url(url)),
        }
        self
    }

    /// Sets `issuer`.
    pub fn set_issuer(&mut self, url: impl Into<String>) -> &mut Self {
        self.raw.issuer = Some(url.into());
        self
    }

    /// Sets `audience`.
    pub fn set_audience(&mut self, audience: impl Into<String>) -> &mut Self {
        self.raw.audience = Some(audience.into());
        self
    }

    /// Sets `public_url`, replacing the file's list.
    pub fn set_public_urls(&mut self, urls: Vec<String>) -> &mut Self {
        self.raw.public_url = Some(OneOrMany::Many(urls));
        self
    }

    /// Sets `allowed_hosts`, replacing the file's list.
    pub fn set_allowed_hosts(&mut self, hosts: Vec<String>) -> &mut Self {
        self.raw.allowed_hosts = Some(hosts);
        self
    }

    /// Sets `trusted_proxies` (IP addresses or CIDR ranges), replacing the file's list.
    pub fn set_trusted_proxies(&mut self, proxies: Vec<String>) -> &mut Self {
        self.raw.trusted_proxies = Some(proxies);
        self
    }

    /// Sets `replay_store` (`memory` or a Redis URL: `redis://`, `rediss://`,
    /// `redis+cluster://`, `redis+sentinel://`, ...).
    pub fn set_replay_store(&mut self, store: impl Into<String>) -> &mut Self {
        self.raw.replay_store = Some(store.into());
        self
    }

    /// Sets `admin_listen`.
    pub fn set_admin_listen(&mut self, addr: SocketAddr) -> &mut Self {
        self.raw.admin_listen = Some(addr);
        self
    }

    /// Requires a nonce on routes that do not say otherwise (`[nonce] require = true`).
    pub fn require_nonce(&mut self) -> &mut Self {
        self.raw.nonce.require = Some(true);
        self
    }

    /// Sets `[tls] cert_file` and `key_file`.
    pub fn set_tls_files(&mut self, cert_file: PathBuf, key_file: PathBuf) -> &mut Self {
        let tls = self.raw.tls.get_or_insert_with(RawTls::default);
        tls.cert_file = Some(cert_file);
        tls.key_file = Some(key_file);
        self
    }

    /// Serves HTTP/2 with prior knowledge (h2c) beside HTTP/1.1 (`h2c = true`).
    pub fn enable_h2c(&mut self) -> &mut Self {
        self.raw.h2c = Some(true);
        self
    }

    /// Sets `log_format`.
    pub fn set_log_format(&mut self, format: LogFormat) -> &mut Self {
        self.raw.log_format = Some(format.name().to_owned());
        self
    }

    /// Sets `log_requests` (the access log).
    pub fn set_log_requests(&mut self, on: bool) -> &mut Self {
        self.raw.log_requests = Some(on);
        self
    }

    /// A nonce secret given outside the file (base64url of 32+ bytes; the `dpop` command
    /// reads `DPOP_NONCE_SECRET`, keeping secrets out of files and process listings): the
    /// current secret, before the file's `[nonce] secrets`.
    pub fn set_current_nonce_secret(&mut self, secret: Zeroizing<String>) -> &mut Self {
        self.current_nonce_secret = Some(secret);
        self
    }

    /// Sets `grpc_listen` (`dpop authz` only).
    pub fn set_grpc_listen(&mut self, addr: SocketAddr) -> &mut Self {
        self.raw.grpc_listen = Some(addr);
        self
    }

    /// Sets `[authz] path_prefix` (`dpop authz` only).
    pub fn set_authz_path_prefix(&mut self, prefix: impl Into<String>) -> &mut Self {
        self.raw
            .authz
            .get_or_insert_with(RawAuthz::default)
            .path_prefix = Some(prefix.into());
        self
    }

    /// Validates the whole as a gateway configuration.
    ///
    /// # Errors
    /// [`GatewayError::Config`] naming the setting that is wrong.
    pub fn validate(self) -> Result<GatewayConfig, GatewayError> {
        GatewayConfig::validate(self.raw, self.current_nonce_secret)
    }

    /// Validates the whole as a `dpop authz` configuration.
    ///
    /// # Errors
    /// [`GatewayError::Config`] naming the setting that is wrong, including a gateway
    /// setting that has no meaning for the authorizer (`upstream`, `[tls]`, …).
    pub fn validate_authz(self) -> Result<AuthzConfig, GatewayError> {
        AuthzConfig::validate(self.raw, self.current_nonce_secret)
    }
}

/// A validated `dpop authz` configuration: the listeners and the [`EnforcementConfig`]
/// it shares with the gateway.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct AuthzConfig {
    /// The HTTP listener: forward-auth (nginx, Traefik, Caddy) and Envoy's HTTP
    /// ext_authz.
    pub listen: Option<SocketAddr>,
    /// The gRPC listener: Envoy's `envoy.service.auth.v3.Authorization/Check`.
    pub grpc_listen: Option<SocketAddr>,
    /// `[authz] path_prefix`: what Envoy's HTTP ext_authz puts before the original path
    /// (its `path_prefix`), removed before the path is judged; empty for none.
    pub path_prefix: String,
    /// Concurrent streams per HTTP/2 connection (gRPC, h2c).
    pub max_concurrent_streams: u32,
    /// What is checked and how, as in the gateway.
    pub enforcement: EnforcementConfig,
}

impl AuthzConfig {
    /// Parses and validates a TOML configuration (see `examples/authz/authz.toml`).
    ///
    /// # Errors
    /// [`GatewayError::Config`] with the line and the message, or naming the setting
    /// that is wrong.
    pub fn from_toml(text: &str) -> Result<Self, GatewayError> {
        GatewaySettings::from_toml(text)?.validate_authz()
    }

    fn validate(
        raw: RawConfig,
        current_nonce_secret: Option<Zeroizing<String>>,
    ) -> Result<Self, GatewayError> {
        // Settings that only mean something where requests are forwarded: refused rather
        // than ignored, so nobody believes they take effect.
        let mut gateway_only = vec![
            (raw.upstream.is_some(), "upstream".to_owned()),
            (raw.tls.is_some(), "[tls]".to_owned()),
            (raw.h2c.is_some(), "h2c".to_owned()),
            (
                raw.reload_on_change.is_some(),
                "reload_on_change".to_owned(),
            ),
            (
                raw.limits.upstream_timeout_secs.is_some(),
                "limits.upstream_timeout_secs".to_owned(),
            ),
            (
                raw.limits.max_stream_secs.is_some(),
                "limits.max_stream_secs".to_owned(),
            ),
            (
                raw.limits.handshake_timeout_secs.is_some(),
                "limits.handshake_timeout_secs".to_owned(),
            ),
            (
                raw.limits.idle_timeout_secs.is_some(),
                "limits.idle_timeout_secs".to_owned(),
            ),
            (raw.limits.workers.is_some(), "limits.workers".to_owned()),
            (raw.limits.io_uring.is_some(), "limits.io_uring".to_owned()),
        ];
        for r in &raw.routes {
            gateway_only.push((
                r.upstream.is_some(),
                format!("route {}: upstream", r.path_prefix),
            ));
            gateway_only.push((
                r.max_stream_secs.is_some(),
                format!("route {}: max_stream_secs", r.path_prefix),
            ));
        }
        if let Some((_, name)) = gateway_only.into_iter().find(|(set, _)| *set) {
            return Err(invalid(format!(
                "{name} is a setting of dpop gateway: with dpop authz, the proxy in front forwards requests"
            )));
        }
        let (listen, grpc_listen) = (raw.listen, raw.grpc_listen);
        if listen.is_none() && grpc_listen.is_none() {
            return Err(invalid(
                "--listen (forward-auth and Envoy HTTP ext_authz) or --grpc-listen (Envoy gRPC ext_authz) is required",
            ));
        }
        let path_prefix = match raw.authz.as_ref().and_then(|a| a.path_prefix.clone()) {
            None => String::new(),
            Some(p) => {
                let canonical = dpop_core::RequestTarget::parse(&p)
                    .ok()
                    .is_some_and(|t| t.query().is_none());
                if !canonical || p == "/" || p.ends_with('/') {
                    return Err(invalid(format!(
                        "authz.path_prefix {p:?} must be a canonical path below / without a trailing slash (Envoy's path_prefix, e.g. \"/check\")"
                    )));
                }
                p
            }
        };
        let max_concurrent_streams = raw.limits.max_concurrent_streams.unwrap_or(100);
        if max_concurrent_streams == 0 {
            return Err(invalid("limits.max_concurrent_streams must be positive"));
        }
        let enforcement = EnforcementConfig::validate(
            raw,
            Err(
                "is a setting of dpop gateway: dpop authz does not see the client's TLS connection",
            ),
            current_nonce_secret,
        )?;
        Ok(Self {
            listen,
            grpc_listen,
            path_prefix,
            max_concurrent_streams,
            enforcement,
        })
    }
}

impl GatewayConfig {
    /// Parses and validates a TOML configuration (see `examples/gateway.toml`).
    ///
    /// # Errors
    /// [`GatewayError::Config`] with the line and the message, or naming the setting
    /// that is wrong.
    pub fn from_toml(text: &str) -> Result<Self, GatewayError> {
        GatewaySettings::from_toml(text)?.validate()
    }

    /// Reads, parses and validates a TOML configuration file.
    ///
    /// # Errors
    /// As [`GatewayConfig::from_toml`], and when the file cannot be read.
    pub fn from_file(path: &Path) -> Result<Self, GatewayError> {
        GatewaySettings::from_file(path)?.validate()
    }

    fn validate(
        mut raw: RawConfig,
        current_nonce_secret: Option<Zeroizing<String>>,
    ) -> Result<Self, GatewayError> {
        if raw.grpc_listen.is_some() || raw.authz.is_some() {
            return Err(invalid(
                "grpc_listen and [authz] are settings of dpop authz, not of the gateway",
            ));
        }
        let listen = raw
            .listen
            .ok_or_else(|| invalid("--listen (or listen in the config file) is required"))?;
        let upstream = upstream_config(
            raw.upstream
                .take()
                .ok_or_else(|| invalid("--upstream is required"))?,
            "upstream",
        )?;
        let tls = raw.tls.take().map(tls_config).transpose()?;
        let h2c = raw.h2c.unwrap_or(false);
        let reload_on_change = raw.reload_on_change.unwrap_or(false);
        if h2c && tls.is_some() {
            return Err(invalid(
                "h2c is for a plain listener: with [tls], HTTP/2 is negotiated by ALPN",
            ));
        }
        // What the gateway attaches to a route (stream lifetime, upstream) is indexed by
        // the route's id, its place in the configuration, so it follows the layer's one
        // match.
        let max_stream = stream_lifetime("limits.max_stream_secs", raw.limits.max_stream_secs)?;
        let mut route_max_stream = Vec::with_capacity(raw.routes.len());
        let mut route_upstreams = BTreeMap::new();
        for (id, r) in raw.routes.iter_mut().enumerate() {
            route_max_stream.push(match r.max_stream_secs {
                None => max_stream,
                Some(secs) => stream_lifetime(
                    &format!("route {}: max_stream_secs", r.path_prefix),
                    Some(secs),
                )?,
            });
            if let Some(u) = r.upstream.take() {
                let what = format!("route {}: upstream", r.path_prefix);
                route_upstreams.insert(id, upstream_config(u, &what)?);
            }
        }
        let max_concurrent_streams = raw.limits.max_concurrent_streams.unwrap_or(100);
        if max_concurrent_streams == 0 {
            return Err(invalid("limits.max_concurrent_streams must be positive"));
        }
        let handshake_timeout =
            Duration::from_secs(raw.limits.handshake_timeout_secs.unwrap_or(10));
        if handshake_timeout.is_zero() {
            return Err(invalid("limits.handshake_timeout_secs must be positive"));
        }
        let idle_timeout = match raw.limits.idle_timeout_secs.unwrap_or(DEFAULT_IDLE_SECS) {
            0 => return Err(invalid("limits.idle_timeout_secs must be positive")),
            s if s > MAX_IDLE_SECS => {
                return Err(invalid(format!(
                    "limits.idle_timeout_secs must be at most {MAX_IDLE_SECS} s (a day)"
                )));
            }
            s => Duration::from_secs(s),
        };
        let upstream_timeout = Duration::from_secs(raw.limits.upstream_timeout_secs.unwrap_or(30));
        let workers = match raw.limits.workers {
            None => default_workers(),
            Some(0) => return Err(invalid("limits.workers must be positive")),
            Some(n) if n > MAX_WORKERS => {
                return Err(invalid(format!(
                    "limits.workers must be at most {MAX_WORKERS}"
                )));
            }
            Some(n) => n,
        };
        let io_uring = raw.limits.io_uring.unwrap_or(true);
        let client_certs = if tls.as_ref().is_some_and(|t| t.client_auth.is_some()) {
            Ok(())
        } else {
            Err(
                "needs [tls] client_ca_file (client certificates are verified in the TLS handshake)",
            )
        };
        let enforcement = EnforcementConfig::validate(raw, client_certs, current_nonce_secret)?;
        // Clients reaching a TLS listener directly address it as https: a proof made for
        // an http:// public URL would be refused on every request. Only a proxy in front
        // (speaking plain HTTP to clients) makes such a URL right.
        if tls.is_some()
            && enforcement.trusted_proxies.is_empty()
            && let Some(url) = enforcement
                .public_urls
                .iter()
                .find(|u| u.starts_with("http://"))
        {
            return Err(invalid(format!(
                "public_url {url:?} is http:// but this listener speaks TLS: clients use https:// (a proxy in front that serves clients plain HTTP must be listed in trusted_proxies)"
            )));
        }
        Ok(Self {
            listen,
            upstream,
            route_upstreams,
            tls,
            h2c,
            upstream_timeout,
            max_concurrent_streams,
            handshake_timeout,
            idle_timeout,
            workers,
            io_uring,
            max_stream,
            route_max_stream,
            reload_on_change,
            enforcement,
        })
    }
}

impl EnforcementConfig {
    /// The settings in force that weaken a check (their names start with `dangerous`),
    /// as the configuration file names them: logged at start and when a reload turns one
    /// on or off.
    #[must_use]
    pub fn dangerous_settings(&self) -> Vec<String> {
        let mut on = Vec::new();
        if self.fail_open {
            on.push("replay.dangerous_fail_open".to_owned());
        }
        for route in self.routes.routes() {
            if route.policy.forwards_encoded_slashes() {
                on.push(format!(
                    "routes (path_prefix {:?}).dangerous_forward_encoded_slashes",
                    route.path_prefix
                ));
            }
        }
        on
    }

    /// Checks what the gateway and the authorizer share. `client_certs` is `Ok` when
    /// verified client certificates can reach the routes, else why not (for a route with
    /// `client_cert = "required"`). The callers have taken their own settings out of
    /// `raw` before.
    fn validate(
        raw: RawConfig,
        client_certs: Result<(), &str>,
        current_nonce_secret: Option<Zeroizing<String>>,
    ) -> Result<Self, GatewayError> {
        let issuer = raw.issuer.ok_or_else(|| invalid("--issuer is required"))?;
        // The one issuer URL rule and canonical form (`http://as/` is `http://as`).
        let issuer = dpop_discovery::IssuerUrl::parse(&issuer)
            .map_err(|e| invalid(format!("issuer {issuer:?} {e}")))?
            .to_string();
        let audience = raw
            .audience
            .ok_or_else(|| invalid("--audience is required"))?;
        if audience.is_empty() {
            return Err(invalid("audience must not be empty"));
        }
        let public_urls = raw.public_url.map(OneOrMany::into_vec).unwrap_or_default();
        for url in &public_urls {
            Htu::from_origin_and_path(url, "/")
                .map_err(|e| invalid(format!("public_url {url:?}: {e}")))?;
        }
        let allowed_hosts = raw.allowed_hosts.unwrap_or_default();
        for host in &allowed_hosts {
            Htu::from_origin_and_path(&format!("http://{host}"), "/")
                .ok()
                .filter(|_| !host.contains(['/', '@', '?', '#']))
                .ok_or_else(|| {
                    invalid(format!(
                        "allowed_hosts: {host:?} is not a host or host:port"
                    ))
                })?;
        }
        // Without either, the client would choose the host its proof is checked against,
        // and a proof and token captured at another service would be accepted here.
        match (public_urls.is_empty(), allowed_hosts.is_empty()) {
            (true, true) => {
                return Err(invalid(
                    "set public_url (--public-url, the URL clients use) or allowed_hosts (--allowed-host): without either, proofs made for any host would be accepted",
                ));
            }
            (false, false) => {
                return Err(invalid(
                    "set public_url or allowed_hosts, not both: with public URLs the accepted hosts are theirs",
                ));
            }
            _ => {}
        }
        let trusted_proxies = raw
            .trusted_proxies
            .unwrap_or_default()
            .iter()
            .map(|p| {
                p.parse::<IpNet>()
                    .or_else(|_| p.parse::<std::net::IpAddr>().map(IpNet::from))
                    .map_err(|_| {
                        invalid(format!(
                            "trusted_proxies: {p:?} is not an IP address or CIDR"
                        ))
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        // The store's own bound, checked at load rather than at connect.
        let max_ms = RedisStoreConfig::MAX_TIMEOUT.as_millis();
        let replay_timeout = match raw.replay.redis_timeout_ms.unwrap_or(250) {
            ms if ms > 0 && u128::from(ms) <= max_ms => Duration::from_millis(ms),
            _ => {
                return Err(invalid(format!(
                    "[replay] redis_timeout_ms must be more than 0 and at most {max_ms}"
                )));
            }
        };
        let replay = match raw.replay_store.as_deref() {
            None | Some("memory") => ReplayStoreConfig::Memory {
                capacity: raw.replay.memory_capacity.unwrap_or(4_000_000),
            },
            Some(url) if REDIS_SCHEMES.iter().any(|s| url.starts_with(s)) => {
                ReplayStoreConfig::Redis {
                    url: url.to_owned(),
                    timeout: replay_timeout,
                    username: raw.replay.redis_username.clone(),
                    password: redis_password(&raw.replay, RedisSecret::Redis, &|var| {
                        std::env::var(var).ok()
                    })?,
                    wait_replicas: raw.replay.redis_wait_replicas.unwrap_or(0),
                    wait_timeout: Duration::from_millis(
                        raw.replay.redis_wait_timeout_ms.unwrap_or(100),
                    ),
                    sentinel_username: raw.replay.redis_sentinel_username.clone(),
                    sentinel_password: redis_password(
                        &raw.replay,
                        RedisSecret::Sentinel,
                        &|var| std::env::var(var).ok(),
                    )?,
                }
            }
            Some(other) => {
                // Not the value itself: a mistyped URL may still hold a password.
                let shown = other.split_once("://").map_or("", |(scheme, _)| scheme);
                return Err(invalid(format!(
                    "replay_store must be \"memory\" or a redis://, rediss://, redis+cluster://, \
                     rediss+cluster://, redis+sentinel:// or rediss+sentinel:// URL, not one \
                     starting with {shown:?}"
                )));
            }
        };
        let redis_only = raw.replay.redis_username.is_some()
            || raw.replay.redis_password_file.is_some()
            || raw.replay.redis_password_env.is_some()
            || raw.replay.redis_wait_replicas.is_some()
            || raw.replay.redis_wait_timeout_ms.is_some();
        if redis_only && !matches!(replay, ReplayStoreConfig::Redis { .. }) {
            return Err(invalid(
                "[replay] redis_username, redis_password_file, redis_password_env and redis_wait_* need a Redis replay_store",
            ));
        }
        let sentinel_only = raw.replay.redis_sentinel_username.is_some()
            || raw.replay.redis_sentinel_password_file.is_some()
            || raw.replay.redis_sentinel_password_env.is_some();
        let sentinel_url = matches!(&replay, ReplayStoreConfig::Redis { url, .. } if url.starts_with("redis+sentinel://") || url.starts_with("rediss+sentinel://"));
        if sentinel_only && !sentinel_url {
            return Err(invalid(
                "[replay] redis_sentinel_username, redis_sentinel_password_file and redis_sentinel_password_env need a redis+sentinel:// or rediss+sentinel:// replay_store",
            ));
        }
        if let ReplayStoreConfig::Redis {
            timeout,
            wait_replicas,
            wait_timeout,
            ..
        } = &replay
            && *wait_replicas > 0
            && (wait_timeout.is_zero() || *wait_timeout > *timeout / 2)
        {
            return Err(invalid(
                "[replay] redis_wait_timeout_ms must be more than 0 and at most half of redis_timeout_ms",
            ));
        }
        let algorithms = match raw.algorithms {
            None => dpop_core::DEFAULT_ALGORITHMS.to_vec(),
            Some(list) => list
                .iter()
                .map(|a| {
                    Algorithm::from_name(a).ok_or_else(|| {
                        invalid(format!(
                            "algorithms: {a:?} is not a supported asymmetric JWS algorithm"
                        ))
                    })
                })
                .collect::<Result<Vec<_>, _>>()?,
        };
        if algorithms.is_empty() {
            return Err(invalid("algorithms must not be empty"));
        }
        // 16 KiB, plus what ML-DSA proofs need over a classical one when allowed.
        let default_max_header_bytes = (16 * 1024_usize).saturating_add(
            Algorithm::max_proof_bytes_for(&algorithms)
                .saturating_sub(dpop_core::DEFAULT_MAX_PROOF_BYTES),
        );
        let log_format = match raw.log_format.as_deref() {
            None => LogFormat::Text,
            Some(name) => LogFormat::from_name(name).ok_or_else(|| {
                invalid(format!(
                    "log_format must be \"text\" or \"json\", not {name:?}"
                ))
            })?,
        };
        let token_cache_ttl = Duration::from_secs(match &raw.introspection {
            None => 300,
            // 10 s bounds how long a revoked token stays usable here, at a cost of one
            // introspection per token per 10 s (a 5-minute token: 30 calls, whatever its
            // request rate). See README "How long revocation takes".
            Some(i) => i
                .cache_ttl_secs
                .unwrap_or(DEFAULT_INTROSPECTION_CACHE_SECS)
                .min(3600),
        });
        let tokens = match raw.introspection {
            None => TokenCheck::Jwks {
                jwks_uri: raw.jwks_uri,
            },
            Some(i) => {
                let client_secret = match (i.client_secret, i.client_secret_file) {
                    (Some(s), None) => Zeroizing::new(s),
                    (None, Some(path)) => {
                        read_secret_file(&path, "[introspection] client_secret_file")?
                    }
                    _ => {
                        return Err(invalid(
                            "introspection needs exactly one of client_secret and client_secret_file",
                        ));
                    }
                };
                TokenCheck::Introspection {
                    endpoint: i.endpoint,
                    client_id: i.client_id,
                    client_secret,
                }
            }
        };

        // Routes. The default policy applies where no route matches.
        let require_nonce_default = raw.nonce.require.unwrap_or(false);
        let route_names = raw.routes.iter().map(|r| r.path_prefix.clone()).collect();
        let mut routes =
            Routes::new(RoutePolicy::new(DpopMode::Required).with_nonce(require_nonce_default));
        for (id, r) in raw.routes.into_iter().enumerate() {
            // Requests are matched in canonical form only, so a prefix in any other form
            // could never match (or would suggest it does).
            let canonical_prefix = dpop_core::RequestTarget::parse(&r.path_prefix)
                .ok()
                .filter(|t| t.query().is_none());
            if canonical_prefix.is_none() {
                return Err(invalid(format!(
                    "route path_prefix {:?} must be a canonical path: starting with /, no dot segments, //, ;, backslashes, query or needless %-escapes",
                    r.path_prefix
                )));
            }
            let mode = match r.dpop.as_deref().unwrap_or("required") {
                "required" => DpopMode::Required,
                "allow_bearer" => DpopMode::AllowBearer,
                "report_only" => DpopMode::ReportOnly,
                "off" => DpopMode::Off,
                other => {
                    return Err(invalid(format!(
                        "route {}: dpop must be required, allow_bearer, report_only or off, not {other:?}",
                        r.path_prefix
                    )));
                }
            };
            let mut policy = RoutePolicy::new(mode)
                .with_nonce(r.nonce.unwrap_or(require_nonce_default))
                .with_scopes(r.scopes.unwrap_or_default());
            if r.dangerous_forward_encoded_slashes == Some(true) {
                policy = policy.dangerous_forward_encoded_slashes();
            }
            match r.client_cert.as_deref() {
                None | Some("optional") => {}
                Some("required") => {
                    if let Err(why) = client_certs {
                        return Err(invalid(format!(
                            "route {}: client_cert = \"required\" {why}",
                            r.path_prefix
                        )));
                    }
                    policy = policy.with_client_cert_required();
                }
                Some(other) => {
                    return Err(invalid(format!(
                        "route {}: client_cert must be required or optional, not {other:?}",
                        r.path_prefix
                    )));
                }
            }
            // The route's id is its place in the configuration.
            let mut route = Route::new(&r.path_prefix, policy).with_id(id);
            if r.resource == Some(true) {
                // RFC 9728: a resource is a URL, all of whose methods the route must cover.
                if r.methods.is_some() || r.path_prefix.trim_end_matches('/').is_empty() {
                    return Err(invalid(format!(
                        "route {}: resource = true needs a path below / and no methods",
                        r.path_prefix
                    )));
                }
                route = route.with_own_resource();
            }
            if let Some(methods) = r.methods {
                let methods = methods
                    .iter()
                    .map(|m| {
                        // Methods are case-sensitive (RFC 9110 §9.1): requests must use
                        // upper case, so the configured names are taken in upper case.
                        let upper = m.to_ascii_uppercase();
                        dpop_core::target::check_method(&upper)
                            .ok()
                            .and_then(|()| Method::from_bytes(upper.as_bytes()).ok())
                            .ok_or_else(|| {
                                invalid(format!("route {}: bad method {m:?}", r.path_prefix))
                            })
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                route = route.with_methods(methods);
            }
            routes = routes.route(route);
        }

        // Nonces: configured secrets (shared by instances) or a random per-process one.
        let needs_nonces = routes.policies().any(|p| p.require_nonce);
        let mut secrets: Vec<Zeroizing<String>> = raw
            .nonce
            .secrets
            .unwrap_or_default()
            .into_iter()
            .map(Zeroizing::new)
            .collect();
        if let Some(path) = &raw.nonce.secrets_file {
            let text = read_secret_file(path, "[nonce] secrets_file")?;
            secrets.extend(
                text.lines()
                    .filter(|l| !l.trim().is_empty())
                    .map(|l| Zeroizing::new(l.trim().to_owned())),
            );
        }
        if let Some(current) = current_nonce_secret {
            secrets.insert(0, current);
        }
        let nonce_secret_shared = !secrets.is_empty();
        let nonces = if needs_nonces {
            let mut list = secrets.iter();
            let current = match list.next() {
                Some(s) => nonce_secret(s)?,
                None => NonceSecret::new(process_nonce_secret()?.as_ref())
                    .map_err(|_| invalid("nonce secret"))?,
            };
            let mut n = StatelessNonces::new(current);
            if let Some(s) = list.next() {
                let previous = nonce_secret(s)?;
                let kid = previous.kid();
                n = n.with_previous(previous).map_err(|_| {
                    invalid(format!(
                        "nonce secrets: the previous secret has the key id of the current one \
                         ({kid:08x}): the same secret is listed twice, or two secrets collide \
                         (then generate a new current secret)"
                    ))
                })?;
            }
            if list.next().is_some() {
                return Err(invalid(
                    "at most two nonce secrets (current and previous) are accepted",
                ));
            }
            if raw.nonce.step_secs.is_some() || raw.nonce.max_age_secs.is_some() {
                n = n
                    .with_timing(
                        raw.nonce.step_secs.unwrap_or(60),
                        raw.nonce.max_age_secs.unwrap_or(180),
                    )
                    .map_err(|e| invalid(format!("nonce timing: {e}")))?;
            }
            Some(Arc::new(n))
        } else {
            None
        };

        let resource_metadata = resource_metadata(raw.resource_metadata, &issuer)?;
        // Zero would time out every request: refused rather than read as "no limit".
        let request_timeout = Duration::from_secs(raw.limits.request_timeout_secs.unwrap_or(60));
        if request_timeout.is_zero() {
            return Err(invalid("limits.request_timeout_secs must be positive"));
        }
        let max_connections = raw.limits.max_connections.unwrap_or(4096);
        if max_connections == 0 {
            return Err(invalid("limits.max_connections must be positive"));
        }
        Ok(Self {
            issuer,
            audience,
            tokens,
            token_cache_ttl,
            public_urls,
            allowed_hosts,
            trusted_proxies,
            admin_listen: raw.admin_listen,
            replay,
            fail_open: raw.replay.dangerous_fail_open.unwrap_or(false),
            algorithms,
            realm: raw.realm,
            resource_metadata,
            nonces,
            nonce_secret_shared,
            routes,
            proof_max_age: Duration::from_secs(raw.proof.max_age_secs.unwrap_or(60)),
            proof_future_leeway: Duration::from_secs(raw.proof.future_leeway_secs.unwrap_or(15)),
            max_header_bytes: raw
                .limits
                .max_header_bytes
                .unwrap_or(default_max_header_bytes)
                .max(8192),
            request_timeout,
            max_connections,
            drain_timeout: Duration::from_secs(raw.limits.drain_timeout_secs.unwrap_or(30)),
            strip_authorization: raw.forward.strip_authorization.unwrap_or(true),
            strip_dpop: raw.forward.strip_dpop.unwrap_or(true),
            identity_headers: IdentityHeaders {
                subject: header_name(raw.forward.subject_header, "x-dpop-subject")?,
                client_id: header_name(raw.forward.client_id_header, "x-dpop-client-id")?,
                jkt: header_name(raw.forward.jkt_header, "x-dpop-jkt")?,
                scopes: header_name(raw.forward.scopes_header, "x-dpop-scopes")?,
                client_cert_subject: header_name(
                    raw.forward.client_cert_subject_header,
                    "x-dpop-client-cert-subject",
                )?,
                client_cert_thumbprint: header_name(
                    raw.forward.client_cert_thumbprint_header,
                    "x-dpop-client-cert-sha256",
                )?,
            },
            log_format,
            log_requests: raw.log_requests.unwrap_or(true),
            route_names,
        })
    }
}

/// How long a stream may last when `max_stream_secs` is not set: one hour. A proof
/// authorises opening a stream, not unbounded traffic on it; an hour keeps long-lived
/// WebSocket and event-stream clients from reconnecting often (each reconnect costs a
/// fresh proof and token check) while a revoked token or a key taken out of use stops
/// carrying traffic within the hour.
pub(crate) const DEFAULT_MAX_STREAM_SECS: u64 = 3600;

/// How long an HTTP/2 connection may sit idle when `idle_timeout_secs` is not set: five
/// minutes. Each idle connection holds a `max_connections` slot; gRPC channels and
/// browsers idle between calls for a while and reconnect transparently after a GOAWAY,
/// so a few minutes keeps reconnects rare while idle clients cannot hold every slot.
const DEFAULT_IDLE_SECS: u64 = 300;

/// The most serving threads `[limits] workers` accepts.
const MAX_WORKERS: usize = 256;

/// One serving thread per core the process may use (at most [`MAX_WORKERS`]).
fn default_workers() -> usize {
    std::thread::available_parallelism()
        .map_or(1, usize::from)
        .min(MAX_WORKERS)
}

/// The longest `idle_timeout_secs` accepted: one day.
const MAX_IDLE_SECS: u64 = 24 * 3600;

/// The longest `max_stream_secs` accepted: one week.
const MAX_STREAM_SECS_CEILING: u64 = 7 * 24 * 3600;

/// A `max_stream_secs` setting checked: 0 is refused rather than read as "no limit", and
/// there is no unlimited setting (a week is the most).
fn stream_lifetime(name: &str, secs: Option<u64>) -> Result<Duration, GatewayError> {
    match secs.unwrap_or(DEFAULT_MAX_STREAM_SECS) {
        0 => Err(invalid(format!(
            "{name} must be positive (streams always end; the most is {MAX_STREAM_SECS_CEILING} s)"
        ))),
        s if s > MAX_STREAM_SECS_CEILING => Err(invalid(format!(
            "{name} must be at most {MAX_STREAM_SECS_CEILING} s (a week)"
        ))),
        s => Ok(Duration::from_secs(s)),
    }
}

/// `[tls]` checked: both files named, a known `client_auth`, which needs a CA file.
/// The files are read when the listener is built.
fn tls_config(raw: RawTls) -> Result<TlsConfig, GatewayError> {
    let (cert_file, key_file) = match (raw.cert_file, raw.key_file) {
        (Some(c), Some(k)) => (c, k),
        (None, _) => {
            return Err(invalid("tls.cert_file (--tls-cert) is required with [tls]"));
        }
        (_, None) => {
            return Err(invalid("tls.key_file (--tls-key) is required with [tls]"));
        }
    };
    let required = match raw.client_auth.as_deref() {
        None | Some("required") => true,
        Some("optional") => false,
        Some(other) => {
            return Err(invalid(format!(
                "tls.client_auth must be \"required\" or \"optional\", not {other:?}"
            )));
        }
    };
    let client_auth = match raw.client_ca_file {
        Some(ca_file) => Some(ClientAuthConfig { ca_file, required }),
        None if raw.client_auth.is_some() => {
            return Err(invalid(
                "tls.client_auth needs tls.client_ca_file (the CAs client certificates must chain to)",
            ));
        }
        None => None,
    };
    let reload_interval = Duration::from_secs(raw.reload_interval_secs.unwrap_or(2));
    if reload_interval.is_zero() {
        return Err(invalid("tls.reload_interval_secs must be positive"));
    }
    Ok(TlsConfig {
        cert_file,
        key_file,
        client_auth,
        reload_interval,
    })
}

/// `[resource_metadata]` checked: a printable name, an absolute http(s) documentation
/// URL, scopes that are RFC 6749 §3.3 scope tokens.
fn resource_metadata(
    raw: RawResourceMetadata,
    issuer: &str,
) -> Result<ResourceMetadata, GatewayError> {
    let invalid = |m: String| GatewayError::Config(format!("resource_metadata.{m}"));
    let mut meta = ResourceMetadata::new(issuer);
    if let Some(name) = raw.resource_name {
        if name.trim().is_empty() || name.chars().any(char::is_control) {
            return Err(invalid(format!(
                "resource_name {name:?} must be printable text"
            )));
        }
        meta.resource_name = Some(name);
    }
    if let Some(url) = raw.resource_documentation {
        let ok = url.parse::<http::Uri>().ok().is_some_and(|u| {
            matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some()
        });
        if !ok {
            return Err(invalid(format!(
                "resource_documentation {url:?} must be an absolute http(s) URL"
            )));
        }
        meta.resource_documentation = Some(url);
    }
    if let Some(scopes) = raw.scopes_supported {
        // RFC 6749 §3.3: scope-token = 1*( %x21 / %x23-5B / %x5D-7E ).
        let token = |s: &str| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b == 0x21 || (0x23..=0x7e).contains(&b) && b != 0x5c)
        };
        if let Some(bad) = scopes.iter().find(|s| !token(s)) {
            return Err(invalid(format!(
                "scopes_supported: {bad:?} is not a scope token"
            )));
        }
        meta.scopes_supported = Some(scopes);
    }
    if let Some(secs) = raw.max_age_secs {
        meta.max_age = Duration::from_secs(secs);
    }
    Ok(meta)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `text` with listen, upstream, issuer, audience and allowed hosts set over it.
    fn settings(text: &str) -> GatewaySettings {
        let mut s = GatewaySettings::from_toml(text).unwrap();
        s.set_listen("127.0.0.1:8080".parse().unwrap())
            .set_upstream("http://127.0.0.1:3000")
            .set_issuer("https://as.example.com")
            .set_audience("https://api.example.com")
            .set_allowed_hosts(vec!["127.0.0.1:8080".into()]);
        s
    }

    #[test]
    fn dangerous_settings_are_listed_by_their_names_in_the_file() {
        let dangerous = |text: &str| {
            settings(text)
                .validate()
                .unwrap()
                .enforcement
                .dangerous_settings()
        };
        assert!(dangerous("").is_empty());
        assert_eq!(
            dangerous(
                "[replay]\ndangerous_fail_open = true\n[[routes]]\npath_prefix = \"/files\"\ndangerous_forward_encoded_slashes = true\n[[routes]]\npath_prefix = \"/other\"\n"
            ),
            [
                "replay.dangerous_fail_open",
                "routes (path_prefix \"/files\").dangerous_forward_encoded_slashes"
            ]
        );
    }

    #[test]
    fn header_limit_rises_only_with_ml_dsa_allowed() {
        let limit = |text: &str| {
            settings(text)
                .validate()
                .unwrap()
                .enforcement
                .max_header_bytes
        };
        assert_eq!(limit(""), 16 * 1024);
        assert_eq!(limit(r#"algorithms = ["ES256", "PS512"]"#), 16 * 1024);
        assert_eq!(limit(r#"algorithms = ["ES256", "ML-DSA-44"]"#), 20 * 1024);
        assert_eq!(limit(r#"algorithms = ["ML-DSA-65"]"#), 20 * 1024);
        assert_eq!(limit(r#"algorithms = ["ES256", "ML-DSA-87"]"#), 24 * 1024);
        // An explicit limit wins either way.
        assert_eq!(
            limit("algorithms = [\"ML-DSA-87\"]\n[limits]\nmax_header_bytes = 12000"),
            12000
        );
        let err = settings(r#"algorithms = ["ML-DSA-128"]"#)
            .validate()
            .unwrap_err()
            .to_string();
        assert!(err.contains("ML-DSA-128"), "{err}");
    }

    #[test]
    fn redis_topologies_and_credentials() {
        let replay = |text: &str| settings(text).validate().map(|c| c.enforcement.replay);
        for url in [
            "redis://127.0.0.1:6379",
            "rediss://redis.internal:6380/1",
            "redis+cluster://a:7000,b:7001/",
            "rediss+cluster://a:7000,b:7001/",
            "redis+sentinel://s1:26379,s2:26379/mymaster",
            "rediss+sentinel://s1/mymaster/2",
        ] {
            match replay(&format!("replay_store = \"{url}\"")).unwrap() {
                ReplayStoreConfig::Redis {
                    url: got,
                    username: None,
                    password: None,
                    ..
                } => assert_eq!(got, url),
                other => panic!("{url}: {other:?}"),
            }
        }
        // A mistyped scheme is named, the rest of the URL (maybe a password) is not.
        let err = replay("replay_store = \"redis+clustr://:hunter2@a:1/\"")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("redis+clustr") && !err.contains("hunter2"),
            "{err}"
        );

        // The password from a file, the user from the settings; never in Debug.
        let dir = std::env::temp_dir().join(format!("dpop-gw-redis-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("redis-password");
        std::fs::write(&file, "s3cret-from-file\n").unwrap();
        #[cfg(unix)]
        let set_mode = |mode: u32| {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode)).unwrap();
        };
        #[cfg(unix)]
        {
            // Others may read it: refused, as a private key would be, for both passwords.
            set_mode(0o644);
            for key in ["redis_password_file", "redis_sentinel_password_file"] {
                let text = format!(
                    "replay_store = \"redis+sentinel://s1/mymaster\"\n[replay]\n{key} = {:?}\n",
                    file.display().to_string()
                );
                let err = settings(&text).validate().unwrap_err().to_string();
                assert!(
                    err.contains(key)
                        && err.contains("can be read by other users")
                        && err.contains("0644"),
                    "{err}"
                );
                assert!(!err.contains("s3cret"), "{err}");
            }
            set_mode(0o600);
        }
        let text = format!(
            "replay_store = \"redis+sentinel://s1/mymaster\"\n[replay]\n\
             redis_username = \"dpop\"\nredis_password_file = {:?}\n",
            file.display().to_string()
        );
        let config = settings(&text).validate().unwrap();
        let ReplayStoreConfig::Redis {
            username, password, ..
        } = &config.enforcement.replay
        else {
            panic!("not Redis");
        };
        assert_eq!(username.as_deref(), Some("dpop"));
        assert_eq!(
            password.as_ref().map(|p| p.as_str()),
            Some("s3cret-from-file")
        );
        let shown = format!("{:?} {config:?}", config.enforcement.replay);
        assert!(!shown.contains("s3cret-from-file"), "{shown}");
        assert!(shown.contains("password: Some(\"***\")"), "{shown}");

        // From the environment (looked up through a stand-in here).
        let raw = RawReplay {
            redis_password_env: Some("REDIS_PW".to_owned()),
            ..RawReplay::default()
        };
        let env = |var: &str| (var == "REDIS_PW").then(|| " s3cret-from-env\n".to_owned());
        assert_eq!(
            redis_password(&raw, RedisSecret::Redis, &env)
                .unwrap()
                .as_deref()
                .map(String::as_str),
            Some("s3cret-from-env")
        );
        let var = "DPOP_TEST_UNSET_VARIABLE_X";
        // Refusals: both sources, a missing variable or file, an empty password, and
        // credentials for the memory store.
        for (text, wanted) in [
            (
                format!(
                    "replay_store = \"redis://h\"\n[replay]\nredis_password_env = \"{var}\"\n\
                     redis_password_file = {:?}\n",
                    file.display().to_string()
                ),
                "not both",
            ),
            (
                format!("replay_store = \"redis://h\"\n[replay]\nredis_password_env = \"{var}\"\n"),
                "DPOP_TEST_UNSET_VARIABLE_X is not set",
            ),
            (
                "replay_store = \"redis://h\"\n[replay]\nredis_password_file = \"/nonexistent/pw\"\n".to_owned(),
                "cannot read /nonexistent/pw",
            ),
            (
                "[replay]\nredis_username = \"dpop\"\n".to_owned(),
                "need a Redis replay_store",
            ),
            (
                "replay_store = \"redis+cluster://a:1/\"\n[replay]\nredis_sentinel_username = \"w\"\n".to_owned(),
                "need a redis+sentinel:// or rediss+sentinel:// replay_store",
            ),
            (
                format!(
                    "replay_store = \"redis://h\"\n[replay]\nredis_sentinel_password_file = {:?}\n",
                    file.display().to_string()
                ),
                "need a redis+sentinel:// or rediss+sentinel:// replay_store",
            ),
            (
                format!(
                    "replay_store = \"redis+sentinel://s/m\"\n[replay]\n\
                     redis_sentinel_password_env = \"{var}\"\nredis_sentinel_password_file = {:?}\n",
                    file.display().to_string()
                ),
                "one of redis_sentinel_password_file and redis_sentinel_password_env, not both",
            ),
            (
                format!(
                    "replay_store = \"redis+sentinel://s/m\"\n[replay]\nredis_sentinel_password_env = \"{var}\"\n"
                ),
                "redis_sentinel_password_env: environment variable DPOP_TEST_UNSET_VARIABLE_X is not set",
            ),
            (
                "replay_store = \"rediss+sentinel://s/m\"\n[replay]\nredis_sentinel_password_file = \"/nonexistent/spw\"\n".to_owned(),
                "cannot read /nonexistent/spw",
            ),
            (
                "replay_store = \"redis://h\"\n[replay]\nredis_wait_replicas = 1\nredis_wait_timeout_ms = 126\n".to_owned(),
                "at most half of redis_timeout_ms",
            ),
            (
                "replay_store = \"redis://h\"\n[replay]\nredis_timeout_ms = 0\n".to_owned(),
                "redis_timeout_ms must be more than 0 and at most 3600000",
            ),
            (
                "replay_store = \"redis://h\"\n[replay]\nredis_timeout_ms = 3600001\n".to_owned(),
                "redis_timeout_ms must be more than 0 and at most 3600000",
            ),
        ] {
            let err = replay(&text).unwrap_err().to_string();
            assert!(err.contains(wanted), "{text}: {err}");
            assert!(!err.contains("s3cret"), "{err}");
        }
        std::fs::write(&file, "  \n").unwrap();
        let text = format!(
            "replay_store = \"redis://h\"\n[replay]\nredis_password_file = {:?}\n",
            file.display().to_string()
        );
        assert!(replay(&text).unwrap_err().to_string().contains("empty"));
        let text = format!(
            "replay_store = \"redis+sentinel://s/m\"\n[replay]\nredis_sentinel_password_file = {:?}\n",
            file.display().to_string()
        );
        assert!(
            replay(&text)
                .unwrap_err()
                .to_string()
                .contains("redis_sentinel_password_file is empty")
        );
        // The sentinels' login, apart from the primary's: from a file, and from the
        // environment; never in Debug.
        std::fs::write(&file, "sentinel-s3cret\n").unwrap();
        let text = format!(
            "replay_store = \"redis+sentinel://s1,s2/mymaster\"\n[replay]\n\
             redis_sentinel_username = \"watcher\"\nredis_sentinel_password_file = {:?}\n",
            file.display().to_string()
        );
        let config = settings(&text).validate().unwrap();
        let ReplayStoreConfig::Redis {
            username,
            password,
            sentinel_username,
            sentinel_password,
            ..
        } = &config.enforcement.replay
        else {
            panic!("not Redis");
        };
        assert_eq!((username, password), (&None, &None));
        assert_eq!(sentinel_username.as_deref(), Some("watcher"));
        assert_eq!(
            sentinel_password.as_ref().map(|p| p.as_str()),
            Some("sentinel-s3cret")
        );
        let shown = format!("{config:?}");
        assert!(!shown.contains("sentinel-s3cret"), "{shown}");
        assert!(
            shown.contains("sentinel_password: Some(\"***\")"),
            "{shown}"
        );
        let raw = RawReplay {
            redis_sentinel_password_env: Some("SENTINEL_PW".to_owned()),
            redis_password_env: Some("REDIS_PW".to_owned()),
            ..RawReplay::default()
        };
        let env = |var: &str| match var {
            "SENTINEL_PW" => Some("for-the-sentinels".to_owned()),
            "REDIS_PW" => Some("for-the-primary".to_owned()),
            _ => None,
        };
        assert_eq!(
            redis_password(&raw, RedisSecret::Sentinel, &env)
                .unwrap()
                .as_deref()
                .map(String::as_str),
            Some("for-the-sentinels")
        );
        assert_eq!(
            redis_password(&raw, RedisSecret::Redis, &env)
                .unwrap()
                .as_deref()
                .map(String::as_str),
            Some("for-the-primary")
        );
        // WAIT on a cluster goes with each SET, to the key's primary.
        assert!(matches!(
            replay("replay_store = \"redis+cluster://a:1/\"\n[replay]\nredis_wait_replicas = 1\n")
                .unwrap(),
            ReplayStoreConfig::Redis {
                wait_replicas: 1,
                ..
            }
        ));
        match replay(
            "replay_store = \"redis+sentinel://s/m\"\n[replay]\nredis_wait_replicas = 1\nredis_wait_timeout_ms = 50\n",
        )
        .unwrap()
        {
            ReplayStoreConfig::Redis {
                wait_replicas: 1,
                wait_timeout,
                ..
            } => assert_eq!(wait_timeout, Duration::from_millis(50)),
            other => panic!("{other:?}"),
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_documented_example_loads() {
        let path = Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../examples/gateway.toml"
        ));
        let c = GatewayConfig::from_file(path).unwrap();
        assert_eq!(c.enforcement.public_urls, ["https://api.example.com"]);
        assert!(c.enforcement.nonces.is_some(), "a route requires nonces");
        let admin = c
            .enforcement
            .routes
            .resolve(&Method::POST, "/v1/admin/users");
        assert!(admin.require_nonce && admin.scopes == ["api", "admin"]);
        assert_eq!(
            c.enforcement
                .routes
                .resolve(&Method::GET, "/v1/admin/users")
                .scopes,
            ["api"]
        );
        assert_eq!(
            c.enforcement
                .routes
                .resolve(&Method::GET, "/healthcheck")
                .mode,
            DpopMode::Off
        );
        let meta = &c.enforcement.resource_metadata;
        assert_eq!(meta.authorization_servers, ["https://as.example.com"]);
        assert_eq!(meta.resource_name.as_deref(), Some("Example API"));
        assert_eq!(
            meta.resource_documentation.as_deref(),
            Some("https://docs.example.com/api")
        );
        assert_eq!(meta.scopes_supported, None);
        assert_eq!(
            c.enforcement.routes.resolve(&Method::GET, "/mcp").scopes,
            ["mcp:tools"]
        );
        assert_eq!(meta.max_age, Duration::from_secs(3600));
        assert_eq!(c.max_stream, Duration::from_secs(3600));
        assert!(
            c.route_max_stream
                .iter()
                .any(|d| *d == Duration::from_secs(900))
        );
        // The /legacy route (the fourth) has its own upstream.
        assert_eq!(c.route_upstreams.len(), 1);
        assert_eq!(c.route_upstreams[&3].url, "http://127.0.0.1:3001/old");
        assert_eq!(c.tls, None);
        assert!(!c.h2c);
        assert_eq!(c.max_concurrent_streams, 100);
        assert_eq!(c.handshake_timeout, Duration::from_secs(10));
        assert_eq!(
            c.enforcement.identity_headers.client_cert_thumbprint,
            "x-dpop-client-cert-sha256"
        );
        assert_eq!(
            c.enforcement.identity_headers.client_cert_subject,
            "x-dpop-client-cert-subject"
        );
        // Values set over the file win.
        let mut a = GatewaySettings::from_file(path).unwrap();
        a.set_upstream("http://127.0.0.1:4000");
        assert_eq!(a.validate().unwrap().upstream.url.port_u16(), Some(4000));
    }

    #[test]
    fn the_documented_authz_example_loads() {
        let path = Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../examples/authz/authz.toml"
        ));
        let c = GatewaySettings::from_file(path)
            .unwrap()
            .validate_authz()
            .unwrap();
        assert_eq!(c.listen, Some("127.0.0.1:9191".parse().unwrap()));
        assert_eq!(c.grpc_listen, Some("127.0.0.1:9192".parse().unwrap()));
        assert_eq!(c.path_prefix, "/check");
        assert_eq!(c.max_concurrent_streams, 100);
        let e = &c.enforcement;
        assert_eq!(e.public_urls, ["https://api.example.com"]);
        assert_eq!(e.trusted_proxies.len(), 2);
        assert_eq!(e.request_timeout, Duration::from_secs(5));
        assert!(e.nonces.is_some(), "a route requires nonces");
        let admin = e.routes.resolve(&Method::POST, "/v1/admin/users");
        assert!(admin.require_nonce && admin.scopes == ["api", "admin"]);
        assert_eq!(
            e.routes.resolve(&Method::GET, "/healthcheck").mode,
            DpopMode::Off
        );
        assert_eq!(e.identity_headers.subject, "x-dpop-subject");
        // The same file is not a gateway configuration.
        let e = GatewayConfig::from_file(path).unwrap_err().to_string();
        assert!(e.contains("dpop authz"), "{e}");
    }

    #[test]
    fn unknown_fields_are_refused() {
        let dir = std::env::temp_dir().join(format!("dpop-gw-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("bad.toml");
        std::fs::write(&path, "listen = \"127.0.0.1:1\"\nupstrem = \"http://x\"\n").unwrap();
        let e = GatewayConfig::from_file(&path).unwrap_err().to_string();
        assert!(e.contains("upstrem") && e.contains("line 2"), "{e}");
        assert!(!e.contains('\n'), "one line: {e}");
        assert!(e.contains("bad.toml line 2"), "the file is named: {e}");
        let text = std::fs::read_to_string(&path).unwrap();
        let e = GatewayConfig::from_toml(&text).unwrap_err().to_string();
        assert!(e.contains("upstrem") && e.contains("line 2"), "{e}");
    }

    fn load_toml(text: &str) -> Result<GatewayConfig, GatewayError> {
        settings(text).validate()
    }

    #[test]
    fn stream_lifetimes_default_per_route_and_refuse_zero() {
        let c = load_toml(
            "[limits]\nmax_stream_secs = 600\n\
             [[routes]]\npath_prefix = \"/ws\"\nmax_stream_secs = 30\n\
             [[routes]]\npath_prefix = \"/events\"\n",
        )
        .unwrap();
        assert_eq!(c.max_stream, Duration::from_secs(600));
        assert_eq!(
            c.route_max_stream,
            [Duration::from_secs(30), Duration::from_secs(600)]
        );
        let c = load_toml("").unwrap();
        assert_eq!(c.max_stream, Duration::from_secs(DEFAULT_MAX_STREAM_SECS));
        for bad in [
            "[limits]\nmax_stream_secs = 0\n",
            "[[routes]]\npath_prefix = \"/ws\"\nmax_stream_secs = 0\n",
            "[limits]\nmax_stream_secs = 99999999\n",
        ] {
            let e = load_toml(bad).unwrap_err().to_string();
            assert!(e.contains("max_stream_secs"), "{bad}: {e}");
        }
    }

    #[test]
    fn idle_timeout_defaults_and_is_bounded() {
        assert_eq!(
            load_toml("").unwrap().idle_timeout,
            Duration::from_secs(DEFAULT_IDLE_SECS)
        );
        let c = load_toml("[limits]\nidle_timeout_secs = 75\n").unwrap();
        assert_eq!(c.idle_timeout, Duration::from_secs(75));
        for bad in [
            "[limits]\nidle_timeout_secs = 0\n",
            "[limits]\nidle_timeout_secs = 86401\n",
        ] {
            let e = load_toml(bad).unwrap_err().to_string();
            assert!(e.contains("limits.idle_timeout_secs"), "{bad}: {e}");
        }
    }

    #[test]
    fn workers_default_to_the_cores_and_are_bounded() {
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        assert_eq!(load_toml("").unwrap().workers, cores.min(MAX_WORKERS));
        assert_eq!(load_toml("[limits]\nworkers = 3\n").unwrap().workers, 3);
        for bad in ["[limits]\nworkers = 0\n", "[limits]\nworkers = 257\n"] {
            let e = load_toml(bad).unwrap_err().to_string();
            assert!(e.contains("limits.workers"), "{bad}: {e}");
        }
        // The authorizer serves on the process's runtime: the setting is refused there.
        assert_refused_by_authz("[limits]\nworkers = 2\n", "limits.workers");
    }

    /// `dpop authz` refuses `toml`, naming `setting` as the gateway's own.
    fn assert_refused_by_authz(toml: &str, setting: &str) {
        let mut authz = GatewaySettings::from_toml(toml).unwrap();
        authz
            .set_listen("127.0.0.1:9191".parse().unwrap())
            .set_issuer("https://as.example.com")
            .set_audience("https://api.example.com")
            .set_public_urls(vec!["https://api.example.com".into()]);
        let e = authz.validate_authz().unwrap_err().to_string();
        assert!(
            e.contains(&format!("{setting} is a setting of dpop gateway")),
            "{e}"
        );
    }

    #[test]
    fn io_uring_is_on_unless_turned_off_and_is_the_gateways_own() {
        assert!(load_toml("").unwrap().io_uring);
        assert!(!load_toml("[limits]\nio_uring = false\n").unwrap().io_uring);
        let e = GatewaySettings::from_toml("[limits]\nio_uring = \"no\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("expected a boolean"), "{e}");
        assert_refused_by_authz("[limits]\nio_uring = false\n", "limits.io_uring");
    }

    #[test]
    fn resource_metadata_is_checked_at_load() {
        let meta = load_toml(
            "[resource_metadata]\nresource_name = \"Items\"\nscopes_supported = [\"a:read\", \"b\"]\n",
        )
        .unwrap()
        .enforcement
        .resource_metadata;
        assert_eq!(meta.authorization_servers, ["https://as.example.com"]);
        assert_eq!(meta.resource_name.as_deref(), Some("Items"));
        assert_eq!(
            meta.scopes_supported,
            Some(vec!["a:read".to_owned(), "b".to_owned()])
        );
        // Nothing configured: the defaults, the issuer as authorization server.
        assert_eq!(
            load_toml("").unwrap().enforcement.resource_metadata,
            ResourceMetadata::new("https://as.example.com")
        );
        // A route of its own: a path, every method.
        let c = load_toml("[[routes]]\npath_prefix = \"/mcp\"\nresource = true\n").unwrap();
        assert!(c.enforcement.routes.policies().count() == 2);
        for bad in [
            "[[routes]]\npath_prefix = \"/\"\nresource = true\n",
            "[[routes]]\npath_prefix = \"/mcp\"\nmethods = [\"GET\"]\nresource = true\n",
        ] {
            let e = load_toml(bad).unwrap_err().to_string();
            assert!(e.contains("resource = true"), "{bad}: {e}");
        }
        // Unknown fields are refused here too.
        let e = GatewaySettings::from_toml("[resource_metadata]\nresource_nam = \"x\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("resource_nam"), "{e}");
        for (text, named) in [
            ("resource_name = \" \"", "resource_name"),
            ("resource_name = \"a\\nb\"", "resource_name"),
            (
                "resource_documentation = \"docs/api\"",
                "resource_documentation",
            ),
            (
                "resource_documentation = \"ftp://x.example/\"",
                "resource_documentation",
            ),
            ("scopes_supported = [\"a b\"]", "\"a b\""),
            ("scopes_supported = [\"\"]", "scopes_supported"),
            ("scopes_supported = [\"a\\\"b\"]", "scopes_supported"),
        ] {
            let e = load_toml(&format!("[resource_metadata]\n{text}\n"))
                .unwrap_err()
                .to_string();
            assert!(e.contains(named), "{text}: {e}");
        }
    }

    /// A configuration with `upstream` set to `value` (TOML) and `rest` after it.
    fn with_upstream(value: &str, rest: &str) -> Result<GatewayConfig, GatewayError> {
        let mut s = GatewaySettings::from_toml(&format!("upstream = {value}\n{rest}"))?;
        s.set_listen("127.0.0.1:8080".parse().unwrap())
            .set_issuer("https://as.example.com")
            .set_audience("https://api.example.com")
            .set_allowed_hosts(vec!["127.0.0.1:8080".into()]);
        s.validate()
    }

    #[test]
    fn upstream_is_a_url_or_a_table() {
        let c = with_upstream("\"https://api.internal/v2/\"", "").unwrap();
        assert_eq!(c.upstream.url.scheme_str(), Some("https"));
        assert_eq!(c.upstream.path_prefix(), "/v2");
        assert_eq!(c.upstream.tls, Some(UpstreamTls::default()));
        assert!(!c.upstream.http2);
        let c = with_upstream("\"http://127.0.0.1:3000\"", "").unwrap();
        assert_eq!((&c.upstream.tls, c.upstream.path_prefix()), (&None, ""));

        let table = "{ url = \"https://127.0.0.1:8443\", ca_file = \"/etc/ca.pem\", server_name = \"api.internal\", client_cert_file = \"/etc/gw.pem\", client_key_file = \"/etc/gw.key\", http2 = true }";
        let c = with_upstream(table, "").unwrap();
        let tls = c.upstream.tls.clone().unwrap();
        assert_eq!(tls.ca_file.as_deref(), Some(Path::new("/etc/ca.pem")));
        assert_eq!(tls.server_name.as_deref(), Some("api.internal"));
        let cert = tls.client_cert.unwrap();
        assert_eq!(
            (cert.cert_file.as_path(), cert.key_file.as_path()),
            (Path::new("/etc/gw.pem"), Path::new("/etc/gw.key"))
        );
        assert!(c.upstream.http2);
        // The log form names the upstream and its settings, not its files.
        let shown = c.upstream.to_string();
        assert_eq!(
            shown,
            "https://127.0.0.1:8443/ (HTTP/2, own CA, server name api.internal, client certificate)"
        );
        // The [upstream] table form, and h2c on http://.
        let mut s = GatewaySettings::from_toml(
            "[upstream]\nurl = \"http://127.0.0.1:3000/api\"\nhttp2 = true\n",
        )
        .unwrap();
        s.set_listen("127.0.0.1:8080".parse().unwrap())
            .set_issuer("https://as.example.com")
            .set_audience("https://api.example.com")
            .set_allowed_hosts(vec!["127.0.0.1:8080".into()]);
        // --upstream replaces the URL and keeps the table's other settings.
        s.set_upstream("http://127.0.0.1:4000/api");
        let c = s.validate().unwrap();
        assert_eq!(c.upstream.url.port_u16(), Some(4000));
        assert!(c.upstream.http2 && c.upstream.tls.is_none());
    }

    #[test]
    fn routes_may_have_their_own_upstream_by_index() {
        let c = with_upstream(
            "\"http://127.0.0.1:3000\"",
            "[[routes]]\npath_prefix = \"/a\"\n\
             [[routes]]\npath_prefix = \"/billing\"\nupstream = \"https://billing.internal/v2\"\n\
             [[routes]]\npath_prefix = \"/c\"\nupstream = { url = \"http://127.0.0.1:5000\", http2 = true }\n",
        )
        .unwrap();
        assert_eq!(c.route_upstreams.len(), 2);
        assert_eq!(
            c.route_upstreams[&1].url.to_string(),
            "https://billing.internal/v2"
        );
        assert_eq!(c.route_upstreams[&1].path_prefix(), "/v2");
        assert!(c.route_upstreams[&2].http2);
        assert!(!c.route_upstreams.contains_key(&0));
    }

    #[test]
    fn bad_upstreams_are_refused_with_a_reason() {
        for (value, needle) in [
            ("\"https://x\"", ""),
            (
                "\"ftp://x\"",
                "upstream \"ftp://x\" must be an http:// or https:// URL",
            ),
            ("\"api.internal\"", "must be an http:// or https:// URL"),
            ("\"http://user:pw@x\"", "no user info"),
            ("\"http://x/?a=1\"", "no query"),
            (
                "\"http://x/api/../admin\"",
                "upstream path \"/api/../admin\"",
            ),
            ("\"http://x y\"", "is not a URL"),
            ("42", "upstream must be a URL string or a table"),
            (
                "{ url = \"https://x\", ca_fil = \"/ca.pem\" }",
                "upstream: unknown field `ca_fil`",
            ),
            ("{ ca_file = \"/ca.pem\" }", "upstream: missing field `url`"),
            (
                "{ url = \"https://x\", http2 = \"yes\" }",
                "upstream: invalid type: string \"yes\", expected a boolean",
            ),
            (
                "{ url = \"http://x\", ca_file = \"/ca.pem\" }",
                "upstream http://x: ca_file is for TLS and needs an https:// URL",
            ),
            (
                "{ url = \"http://x\", client_cert_file = \"/c.pem\", client_key_file = \"/c.key\" }",
                "client_cert_file is for TLS",
            ),
            (
                "{ url = \"http://x\", server_name = \"x\" }",
                "server_name is for TLS",
            ),
            (
                "{ url = \"https://x\", client_cert_file = \"/c.pem\" }",
                "client_cert_file and client_key_file go together",
            ),
            (
                "{ url = \"https://x\", client_key_file = \"/c.key\" }",
                "client_cert_file and client_key_file go together",
            ),
            (
                "{ url = \"https://x\", server_name = \"not a name\" }",
                "server_name \"not a name\" is not a DNS name or IP address",
            ),
            (
                "{ url = \"https://x\", dangerous_skip_verify = true }",
                "unknown field `dangerous_skip_verify`",
            ),
        ] {
            let r = with_upstream(value, "");
            if needle.is_empty() {
                assert!(r.is_ok(), "{value}: {r:?}");
                continue;
            }
            let e = r.unwrap_err().to_string();
            assert!(e.contains(needle), "{value}: {e}");
            assert!(!e.contains('\n'), "one line: {e}");
        }
        // A route's upstream is named by its route.
        let e = with_upstream(
            "\"http://127.0.0.1:3000\"",
            "[[routes]]\npath_prefix = \"/billing\"\nupstream = { url = \"http://b\", ca_file = \"/ca.pem\" }\n",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("route /billing: upstream http://b: ca_file is for TLS"),
            "{e}"
        );
        let e = with_upstream(
            "\"http://127.0.0.1:3000\"",
            "[[routes]]\npath_prefix = \"/billing\"\nupstream = { urll = \"http://b\" }\n",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("route /billing: upstream: unknown field `urll`"),
            "{e}"
        );
    }

    #[test]
    fn tls_settings_are_typed_at_load() {
        let c = load_toml(
            "[tls]\ncert_file = \"c.pem\"\nkey_file = \"k.pem\"\nclient_ca_file = \"ca.pem\"\nclient_auth = \"optional\"\n\n[[routes]]\npath_prefix = \"/m\"\nclient_cert = \"required\"\n",
        )
        .unwrap();
        let tls = c.tls.unwrap();
        assert_eq!(tls.cert_file, Path::new("c.pem"));
        assert_eq!(tls.key_file, Path::new("k.pem"));
        assert_eq!(tls.reload_interval, Duration::from_secs(2));
        let auth = tls.client_auth.unwrap();
        assert_eq!(auth.ca_file, Path::new("ca.pem"));
        assert!(!auth.required);
        assert!(
            c.enforcement
                .routes
                .resolve(&Method::GET, "/m/x")
                .requires_client_cert()
        );
        assert!(
            !c.enforcement
                .routes
                .resolve(&Method::GET, "/x")
                .requires_client_cert()
        );
        // A CA without client_auth: required.
        let c = load_toml("[tls]\ncert_file = \"c\"\nkey_file = \"k\"\nclient_ca_file = \"ca\"\n")
            .unwrap();
        assert!(c.tls.unwrap().client_auth.unwrap().required);
        // Flags set over the file.
        let mut s = settings("[tls]\nreload_interval_secs = 60\n");
        s.set_tls_files("a.pem".into(), "b.pem".into());
        let tls = s.validate().unwrap().tls.unwrap();
        assert_eq!(tls.reload_interval, Duration::from_secs(60));
        assert_eq!(tls.key_file, Path::new("b.pem"));
        let mut s = settings("");
        s.enable_h2c();
        assert!(s.validate().unwrap().h2c);
        for (text, named) in [
            ("[tls]\nkey_file = \"k\"\n", "tls.cert_file"),
            (
                "[tls]\ncert_file = \"c\"\nkey_file = \"k\"\nreload_interval_secs = 0\n",
                "reload_interval_secs",
            ),
            (
                "[[routes]]\npath_prefix = \"/m\"\nclient_cert = \"yes\"\n",
                "client_cert must be",
            ),
            (
                "[forward]\nclient_cert_subject_header = \"x_cert\"\n",
                "x_cert",
            ),
        ] {
            let e = load_toml(text).unwrap_err().to_string();
            assert!(e.contains(named), "{text}: {e}");
        }
    }

    #[test]
    fn unknown_tls_fields_are_refused() {
        let e = GatewaySettings::from_toml("[tls]\ncert = \"x\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown field `cert`"), "{e}");
    }

    #[test]
    fn identity_header_names_with_underscores_are_refused() {
        let e = load_toml("[forward]\nsubject_header = \"x_user\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("x_user") && e.contains("forge"), "{e}");
        assert!(load_toml("[forward]\nsubject_header = \"x-user\"\n").is_ok());
    }

    #[test]
    fn route_prefixes_must_be_canonical_and_methods_tokens() {
        for prefix in [
            "/v1/../admin",
            "/v1//x",
            "/v1;x",
            "/%61dmin",
            "/v1?x",
            "v1",
            "/a\\b",
        ] {
            let e = load_toml(&format!("[[routes]]\npath_prefix = {prefix:?}\n"))
                .unwrap_err()
                .to_string();
            assert!(e.contains("canonical path"), "{prefix}: {e}");
        }
        let e = load_toml("[[routes]]\npath_prefix = \"/v1\"\nmethods = [\"P OST\"]\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("bad method"), "{e}");
        // Configured names are upper-cased; requests must then use upper case.
        let c =
            load_toml("[[routes]]\npath_prefix = \"/v1\"\nmethods = [\"post\"]\ndpop = \"off\"\n")
                .unwrap();
        assert_eq!(
            c.enforcement.routes.resolve(&Method::POST, "/v1").mode,
            DpopMode::Off
        );
        let c = load_toml(
            "[[routes]]\npath_prefix = \"/files\"\ndangerous_forward_encoded_slashes = true\n",
        )
        .unwrap();
        assert!(
            c.enforcement
                .routes
                .resolve(&Method::GET, "/files/x")
                .forwards_encoded_slashes()
        );
        assert!(
            !c.enforcement
                .routes
                .resolve(&Method::GET, "/other")
                .forwards_encoded_slashes()
        );
    }

    #[test]
    fn public_url_may_be_a_list() {
        let c = load_toml("public_url = [\"https://a.example\", \"https://b.example/api\"]\n");
        // `settings()` sets allowed hosts: with public URLs too, that is refused.
        assert!(c.unwrap_err().to_string().contains("not both"));
        let mut a = GatewaySettings::from_toml(
            "public_url = [\"https://a.example\", \"https://b.example/api\"]\n",
        )
        .unwrap();
        a.set_listen("127.0.0.1:8080".parse().unwrap())
            .set_upstream("http://127.0.0.1:3000")
            .set_issuer("https://as.example.com")
            .set_audience("https://api.example.com");
        let c = a.validate().unwrap();
        assert_eq!(
            c.enforcement.public_urls,
            ["https://a.example", "https://b.example/api"]
        );
        assert!(c.enforcement.allowed_hosts.is_empty());
    }

    /// The gateway's nonces under `[nonce] secrets = secrets` (first = current).
    fn nonces_with(secrets: &[&str]) -> Result<Arc<StatelessNonces>, GatewayError> {
        let list: Vec<String> = secrets.iter().map(|s| format!("{s:?}")).collect();
        let c = load_toml(&format!(
            "[nonce]\nrequire = true\nsecrets = [{}]\n",
            list.join(", ")
        ));
        Ok(c?.enforcement.nonces.expect("nonces are required"))
    }

    /// A rolling rotation: instances on `[S1]`, then `[S2, S1]`, then `[S2]`. Each must
    /// accept the nonces of the instance one step behind it, so a secret has to keep its
    /// key id when it moves from current to previous.
    #[test]
    fn nonce_secrets_keep_their_key_id_through_a_rotation() {
        use dpop_core::{NonceValidator as _, UnixTime};
        let b64 = |byte: u8| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode([byte; 32]);
        let (s1, s2) = (b64(1), b64(2));
        let a = nonces_with(&[&s1]).unwrap();
        let b = nonces_with(&[&s2, &s1]).unwrap();
        let c = nonces_with(&[&s2]).unwrap();
        let now = UnixTime::from_secs(1_700_000_000);

        let from_a = a.issue(now).unwrap();
        let at_b = b.validate(Some(&from_a), now).unwrap();
        assert!(
            at_b.renew,
            "B hands the client a nonce of its current secret"
        );
        let from_b = b.issue(now).unwrap();
        assert!(c.validate(Some(&from_b), now).is_ok());
        assert!(a.validate(Some(&from_b), now).is_err(), "A never had S2");
        assert!(c.validate(Some(&from_a), now).is_err(), "C retired S1");
    }

    #[test]
    fn the_same_nonce_secret_twice_is_refused() {
        let s = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode([3u8; 32]);
        let e = nonces_with(&[&s, &s]).unwrap_err().to_string();
        assert!(e.contains("nonce secrets") && e.contains("key id"), "{e}");
    }

    #[test]
    fn a_zero_request_timeout_is_refused() {
        let e = settings("[limits]\nrequest_timeout_secs = 0\n")
            .validate()
            .unwrap_err();
        assert!(
            e.to_string()
                .contains("limits.request_timeout_secs must be positive"),
            "{e}"
        );
    }
}
