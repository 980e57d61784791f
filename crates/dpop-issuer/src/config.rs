//! The issuer's configuration: TOML (see `examples/issuer.toml`), validated completely at
//! load so that a running issuer never meets a value it cannot use.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use dpop_core::jwt::JwkSet;
use dpop_core::{Algorithm, PublicJwk};
use dpop_keys::KeyRef;
use serde::Deserialize;

pub use crate::environment::{Environment, ProcessEnvironment};
use crate::error::ConfigError;
use crate::secret::ClientSecret;
pub use crate::store::redact_url;
use crate::trust::TrustConfig;

/// `client_credentials` (RFC 6749 §4.4).
pub const GRANT_CLIENT_CREDENTIALS: &str = "client_credentials";
/// `refresh_token` (RFC 6749 §6).
pub const GRANT_REFRESH_TOKEN: &str = "refresh_token";
/// Token exchange (RFC 8693).
pub const GRANT_TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
/// Every grant this issuer implements.
pub const GRANTS: [&str; 3] = [
    GRANT_CLIENT_CREDENTIALS,
    GRANT_REFRESH_TOKEN,
    GRANT_TOKEN_EXCHANGE,
];

/// Whether a client must prove possession of a key at the token endpoint: a client's
/// `dpop = "required"` (the default) or `"optional"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum DpopRequirement {
    /// Every token request carries a valid proof; every token is DPoP-bound.
    Required,
    /// A proof binds the token; without one the client gets a Bearer token.
    Optional,
}

/// How a client authenticates at the token, introspection and revocation endpoints.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum AuthMethod {
    /// HTTP Basic with the client id and secret (RFC 6749 §2.3.1).
    ClientSecretBasic,
    /// `client_id` and `client_secret` in the form body (RFC 6749 §2.3.1).
    ClientSecretPost,
    /// A JWT signed with the client's private key (RFC 7523 §2.2, OIDC Core §9).
    PrivateKeyJwt,
    /// A public client: no secret; DPoP is mandatory.
    None,
}

impl AuthMethod {
    /// The registered name (RFC 8414 `token_endpoint_auth_methods_supported`).
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::ClientSecretBasic => "client_secret_basic",
            Self::ClientSecretPost => "client_secret_post",
            Self::PrivateKeyJwt => "private_key_jwt",
            Self::None => "none",
        }
    }
}

/// One registered client, validated.
#[derive(Debug)]
#[non_exhaustive]
pub struct Client {
    /// `client_id`.
    pub id: String,
    /// The `sub` of its client-credentials tokens (defaults to the client id).
    pub subject: String,
    /// The authentication methods it may use (one kind of credential).
    pub auth_methods: BTreeSet<AuthMethod>,
    /// Its secret hash, for the `client_secret_*` methods.
    pub secret: Option<ClientSecret>,
    /// Its public keys, for `private_key_jwt`.
    pub jwks: Option<JwkSet>,
    /// Grants it may use.
    pub grants: BTreeSet<String>,
    /// Scopes it may receive.
    pub scopes: BTreeSet<String>,
    /// Scopes it gets when it asks for none.
    pub default_scopes: Vec<String>,
    /// Audiences (resource identifiers) its tokens may name.
    pub audiences: Vec<String>,
    /// Audiences it gets when it names none.
    pub default_audiences: Vec<String>,
    /// Whether DPoP is required.
    pub dpop: DpopRequirement,
    /// Whether it may call the introspection endpoint.
    pub introspection: bool,
    /// Disabled in the configuration: refused everywhere, its tokens revoked at start.
    pub enabled: bool,
    /// Access token lifetime for this client.
    pub access_token_lifetime: Duration,
    /// The clients whose access tokens this one may exchange (RFC 8693 delegation: it
    /// acts for their subject). A client always may exchange its own tokens; a public
    /// client never exchanges this issuer's tokens. Defaults to none.
    pub may_exchange_for: BTreeSet<String>,
    /// Whether the Bearer (not DPoP-bound) access tokens of this client may be the
    /// subject of a token exchange, which binds the new token to the exchanger's key.
    /// Only for `dpop = "optional"` clients. Defaults to false.
    pub allow_bearer_exchange: bool,
    /// Whether exchanging one of this issuer's DPoP-bound access tokens starts a refresh
    /// grant for this client (it needs the refresh_token grant): the grant then outlives
    /// the subject token, up to the refresh token lifetimes. Without it, an exchanged
    /// token never outlives its subject token. Defaults to false.
    pub refresh_from_exchange: bool,
}

impl Client {
    /// Whether the client authenticates with nothing (a public client).
    #[must_use]
    pub fn is_public(&self) -> bool {
        self.auth_methods.contains(&AuthMethod::None)
    }
}

/// Token lifetimes.
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub struct Lifetimes {
    /// Access tokens (default 5 minutes).
    pub access_token: Duration,
    /// A refresh token unused for this long expires (default 1 day).
    pub refresh_token_idle: Duration,
    /// A refresh family (one grant and all its rotations) ends after this (default 30 days).
    pub refresh_token_absolute: Duration,
}

/// DPoP at the token endpoint.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct DpopSettings {
    /// Whether proofs must carry a server nonce (RFC 9449 §8).
    pub nonce: bool,
    /// How long a nonce stays valid.
    pub nonce_lifetime: Duration,
    /// Accepted proof algorithms.
    pub algorithms: Vec<Algorithm>,
    /// Oldest accepted proof `iat`.
    pub max_age: Duration,
    /// Furthest accepted proof `iat` in the future.
    pub future_leeway: Duration,
}

/// Where the issuer listens when the configuration does not say (`listen`).
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8081";

/// The whole validated configuration.
#[derive(Debug)]
#[non_exhaustive]
pub struct IssuerConfig {
    /// The issuer identifier (`iss`), an `https` URL (or `http` on loopback) without a
    /// query or fragment; endpoints live under it.
    pub issuer: String,
    /// Listening address.
    pub listen: SocketAddr,
    /// Admin listener (`/healthz`, `/readyz`, Prometheus `/metrics`), off by default.
    pub admin_listen: Option<SocketAddr>,
    /// Where signing keys are kept (created with mode 0700; key files are 0600).
    pub data_dir: PathBuf,
    /// `sqlite://PATH` or `postgres://…`. A SQLite path has its `..` segments resolved
    /// against the file system when loaded, and may not contain `%`.
    pub database: String,
    /// Signing algorithm of new keys (ES256 or EdDSA). A key named by
    /// `[keys] signing_key` or given to `rotate-key --key` must be of this algorithm.
    pub signing_alg: Algorithm,
    /// Keys the operator manages (`[keys]`).
    pub keys: KeysConfig,
    /// Token lifetimes.
    pub lifetimes: Lifetimes,
    /// DPoP at the token endpoint.
    pub dpop: DpopSettings,
    /// Registered clients by id.
    pub clients: BTreeMap<String, Client>,
    /// Trusted external issuers for token exchange.
    pub trust: Vec<TrustConfig>,
    /// Logs as JSON lines.
    pub log_json: bool,
    /// One access-log line per request at target `dpop::access` (`log_requests`).
    /// Defaults to `true`.
    pub log_requests: bool,
    /// Largest request body accepted at the endpoints.
    pub max_body_bytes: usize,
    /// Limits on failed client authentication (`[auth_limits]`).
    pub auth_limits: AuthLimits,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    issuer: String,
    listen: Option<String>,
    admin_listen: Option<String>,
    data_dir: Option<PathBuf>,
    database: Option<String>,
    signing_alg: Option<String>,
    #[serde(default)]
    log_json: bool,
    log_requests: Option<bool>,
    max_body_bytes: Option<usize>,
    #[serde(default)]
    tokens: RawTokens,
    #[serde(default)]
    dpop: RawDpop,
    #[serde(default)]
    clients: Vec<RawClient>,
    #[serde(default)]
    trust: Vec<TrustConfig>,
    #[serde(default)]
    auth_limits: RawAuthLimits,
    #[serde(default)]
    keys: RawKeys,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTokens {
    access_token_lifetime_secs: Option<u64>,
    refresh_token_idle_secs: Option<u64>,
    refresh_token_absolute_secs: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDpop {
    nonce: Option<bool>,
    nonce_lifetime_secs: Option<u64>,
    algorithms: Option<Vec<String>>,
    max_age_secs: Option<u64>,
    future_leeway_secs: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawClient {
    id: String,
    subject: Option<String>,
    auth: Option<Vec<AuthMethod>>,
    secret: Option<String>,
    jwks: Option<String>,
    jwks_file: Option<PathBuf>,
    grants: Vec<String>,
    #[serde(default)]
    scopes: Vec<String>,
    default_scopes: Option<Vec<String>>,
    #[serde(default)]
    audiences: Vec<String>,
    default_audiences: Option<Vec<String>>,
    dpop: Option<DpopRequirement>,
    #[serde(default)]
    introspection: bool,
    enabled: Option<bool>,
    access_token_lifetime_secs: Option<u64>,
    #[serde(default)]
    may_exchange_for: Vec<String>,
    #[serde(default)]
    allow_bearer_exchange: bool,
    #[serde(default)]
    refresh_from_exchange: bool,
}

const MAX_ACCESS_LIFETIME: u64 = 24 * 3600;

fn parse_algorithms(list: &[String], what: &str) -> Result<Vec<Algorithm>, String> {
    let mut out = Vec::new();
    for name in list {
        let alg = Algorithm::from_name(name)
            .ok_or_else(|| format!("{what}: unknown or refused algorithm {name:?}"))?;
        if !out.contains(&alg) {
            out.push(alg);
        }
    }
    if out.is_empty() {
        return Err(format!("{what}: the list is empty"));
    }
    Ok(out)
}

impl IssuerConfig {
    /// Reads and validates the TOML file at `path`. Relative paths in it are relative
    /// to the file's directory.
    ///
    /// # Errors
    /// [`ConfigError`] naming the file and the problem.
    pub fn load(path: &Path, env: &dyn Environment) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::new(format!("cannot read {}: {e}", path.display())))?;
        let base = path.parent().unwrap_or_else(|| Path::new("."));
        Self::from_toml(&text, base, env)
            .map_err(|e| ConfigError::new(format!("{}: {}", path.display(), e.message())))
    }

    /// Parses and validates configuration text; relative paths are resolved against `base`.
    ///
    /// # Errors
    /// [`ConfigError`] naming the problem.
    pub fn from_toml(text: &str, base: &Path, env: &dyn Environment) -> Result<Self, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::new(e.to_string()))?;
        Self::validate(raw, base, env).map_err(ConfigError::new)
    }

    #[expect(clippy::too_many_lines, reason = "one flat list of checks reads best")]
    fn validate(raw: RawConfig, base: &Path, env: &dyn Environment) -> Result<Self, String> {
        // The one URL rule, and its canonical form (no trailing slash): what `iss` says.
        let issuer = dpop_discovery::IssuerUrl::parse(&raw.issuer)
            .map_err(|e| format!("issuer {:?} {e}", raw.issuer))?
            .as_str()
            .to_owned();
        let listen_text = raw.listen.as_deref().unwrap_or(DEFAULT_LISTEN);
        let listen: SocketAddr = listen_text
            .parse()
            .map_err(|_| format!("listen {listen_text:?} is not an address like 127.0.0.1:8081"))?;
        let admin_listen = raw
            .admin_listen
            .as_deref()
            .map(|a| {
                a.parse::<SocketAddr>().map_err(|_| {
                    format!("admin_listen {a:?} is not an address like 127.0.0.1:9091")
                })
            })
            .transpose()?;
        let data_dir = base.join(
            raw.data_dir
                .unwrap_or_else(|| PathBuf::from("dpop-issuer-data")),
        );
        // The SQLite file as the file system finds it (`..` resolved there, `%` refused),
        // so that the file made private is the one the driver opens (`files.rs`).
        let sqlite_path = |p: PathBuf| {
            crate::files::resolve_dot_dot(&p)
                .and_then(|p| crate::files::check_sqlite_path(&p).map(|()| p))
                .map_err(|e| format!("database: {e}"))
        };
        let raw_database_set = raw.database.is_some();
        let database = match raw.database {
            Some(d) if d.starts_with("postgres://") || d.starts_with("postgresql://") => d,
            Some(d) => {
                let Some(p) = d.strip_prefix("sqlite://") else {
                    return Err(format!(
                        "database {:?} must start with sqlite:// or postgres://",
                        redact_url(&d)
                    ));
                };
                if p.is_empty() {
                    return Err("database sqlite:// needs a file path".to_owned());
                }
                let (file, query) = p.split_once('?').unwrap_or((p, ""));
                let file = if file == ":memory:" {
                    PathBuf::from(file)
                } else {
                    sqlite_path(base.join(file))?
                };
                let query = if query.is_empty() { "mode=rwc" } else { query };
                format!("sqlite://{}?{query}", file.display())
            }
            None => format!(
                "sqlite://{}?mode=rwc",
                sqlite_path(data_dir.join("issuer.db"))?.display()
            ),
        };
        // A database whose driver is not compiled in is refused now, not at first use.
        crate::store::compiled_backend(&database).map_err(|e| {
            if raw_database_set {
                e
            } else {
                format!("database is not set, and the default (SQLite in data_dir): {e}")
            }
        })?;
        let signing_alg = match raw.signing_alg.as_deref().unwrap_or("ES256") {
            "ES256" => Algorithm::Es256,
            "EdDSA" | "Ed25519" => Algorithm::EdDsa,
            other => {
                return Err(format!(
                    "signing_alg {other:?} is not supported: use ES256 or EdDSA"
                ));
            }
        };

        let secs =
            |v: Option<u64>, default: u64, name: &str, max: u64| -> Result<Duration, String> {
                let v = v.unwrap_or(default);
                if v == 0 || v > max {
                    return Err(format!(
                        "{name} must be between 1 and {max} seconds, not {v}"
                    ));
                }
                Ok(Duration::from_secs(v))
            };
        let lifetimes = Lifetimes {
            access_token: secs(
                raw.tokens.access_token_lifetime_secs,
                300,
                "tokens.access_token_lifetime_secs",
                MAX_ACCESS_LIFETIME,
            )?,
            refresh_token_idle: secs(
                raw.tokens.refresh_token_idle_secs,
                86_400,
                "tokens.refresh_token_idle_secs",
                366 * 86_400,
            )?,
            refresh_token_absolute: secs(
                raw.tokens.refresh_token_absolute_secs,
                30 * 86_400,
                "tokens.refresh_token_absolute_secs",
                366 * 86_400,
            )?,
        };
        if lifetimes.refresh_token_idle > lifetimes.refresh_token_absolute {
            return Err(
                "tokens.refresh_token_idle_secs is longer than tokens.refresh_token_absolute_secs"
                    .to_owned(),
            );
        }
        let default_proof_algs: Vec<String> =
            ["ES256", "ES384", "EdDSA", "Ed25519", "PS256", "RS256"]
                .iter()
                .map(|s| (*s).to_owned())
                .collect();
        let dpop = DpopSettings {
            nonce: raw.dpop.nonce.unwrap_or(true),
            nonce_lifetime: secs(
                raw.dpop.nonce_lifetime_secs,
                300,
                "dpop.nonce_lifetime_secs",
                3600,
            )?,
            algorithms: parse_algorithms(
                raw.dpop.algorithms.as_ref().unwrap_or(&default_proof_algs),
                "dpop.algorithms",
            )?,
            max_age: secs(raw.dpop.max_age_secs, 60, "dpop.max_age_secs", 600)?,
            future_leeway: Duration::from_secs(raw.dpop.future_leeway_secs.unwrap_or(15).min(300)),
        };

        let mut clients = BTreeMap::new();
        for c in raw.clients {
            let id = c.id.clone();
            let client = validate_client(c, base, env, lifetimes.access_token)
                .map_err(|e| format!("client {id:?}: {e}"))?;
            if clients.insert(id.clone(), client).is_some() {
                return Err(format!("client {id:?} is defined twice"));
            }
        }
        for client in clients.values() {
            if let Some(unknown) = client
                .may_exchange_for
                .iter()
                .find(|id| !clients.contains_key(*id))
            {
                return Err(format!(
                    "client {:?}: may_exchange_for names unknown client {unknown:?}",
                    client.id
                ));
            }
        }
        let mut names = BTreeSet::new();
        for t in &raw.trust {
            t.validate()?;
            if !names.insert(t.name.clone()) {
                return Err(format!("trust {:?} is defined twice", t.name));
            }
            for rule in &t.rules {
                for client in &rule.clients {
                    let Some(c) = clients.get(client) else {
                        return Err(format!(
                            "trust {:?}: rule for workload {:?} names unknown client {client:?}",
                            t.name, rule.workload
                        ));
                    };
                    if !c.grants.contains(GRANT_TOKEN_EXCHANGE) {
                        return Err(format!(
                            "trust {:?}: client {client:?} does not have the token-exchange grant",
                            t.name
                        ));
                    }
                }
                // The setting exists for workloads that refresh; on a rule none of whose
                // clients can, it would only lengthen access tokens past the subject
                // token, which is more likely a mistake than a wish.
                if rule.outlive_subject {
                    let can_refresh = |c: &Client| {
                        c.grants.contains(GRANT_TOKEN_EXCHANGE)
                            && c.grants.contains(GRANT_REFRESH_TOKEN)
                    };
                    let any = if rule.clients.is_empty() {
                        clients.values().any(can_refresh)
                    } else {
                        rule.clients
                            .iter()
                            .filter_map(|id| clients.get(id))
                            .any(can_refresh)
                    };
                    if !any {
                        return Err(format!(
                            "trust {:?}: rule for workload {:?} sets outlive_subject, but none of \
                             its clients has the refresh_token grant (remove the setting: tokens \
                             then end with the subject token)",
                            t.name, rule.workload
                        ));
                    }
                }
            }
        }
        let max_body_bytes = raw.max_body_bytes.unwrap_or(64 * 1024);
        if !(1024..=1024 * 1024).contains(&max_body_bytes) {
            return Err("max_body_bytes must be between 1024 and 1048576".to_owned());
        }
        Ok(Self {
            issuer,
            listen,
            admin_listen,
            data_dir,
            database,
            signing_alg,
            lifetimes,
            dpop,
            clients,
            trust: raw.trust,
            log_json: raw.log_json,
            log_requests: raw.log_requests.unwrap_or(true),
            max_body_bytes,
            auth_limits: raw.auth_limits.validate()?,
            keys: raw.keys.validate(base)?,
        })
    }

    /// The token endpoint URL.
    #[must_use]
    pub fn token_endpoint(&self) -> String {
        format!("{}/token", self.issuer)
    }

    /// The longest access token lifetime of any client: how long a retired signing key's
    /// public half stays published.
    #[must_use]
    pub fn max_access_token_lifetime(&self) -> Duration {
        self.clients
            .values()
            .map(|c| c.access_token_lifetime)
            .chain([self.lifetimes.access_token])
            .max()
            .unwrap_or(self.lifetimes.access_token)
    }
}

fn check_name(what: &str, s: &str) -> Result<(), String> {
    if s.is_empty() || s.len() > 200 || s.chars().any(|c| c.is_control() || c == ' ') {
        return Err(format!(
            "{what} {s:?} must be 1 to 200 printable characters without spaces"
        ));
    }
    Ok(())
}

fn validate_client(
    c: RawClient,
    base: &Path,
    env: &dyn Environment,
    default_lifetime: Duration,
) -> Result<Client, String> {
    check_name("id", &c.id)?;
    let secret = match &c.secret {
        None => None,
        Some(s) => Some(ClientSecret::from_config(s, env)?),
    };
    let jwks_text = match (&c.jwks, &c.jwks_file) {
        (Some(_), Some(_)) => return Err("set jwks or jwks_file, not both".to_owned()),
        (Some(t), None) => Some(t.clone()),
        (None, Some(f)) => {
            let path = base.join(f);
            Some(
                std::fs::read_to_string(&path)
                    .map_err(|e| format!("cannot read jwks_file {}: {e}", path.display()))?,
            )
        }
        (None, None) => None,
    };
    let jwks = jwks_text.map(|t| parse_client_keys(&t)).transpose()?;
    let inferred: BTreeSet<AuthMethod> = match (&secret, &jwks) {
        (Some(_), Some(_)) => {
            return Err("a client has a secret or keys (jwks), not both".to_owned());
        }
        (Some(_), None) => [AuthMethod::ClientSecretBasic, AuthMethod::ClientSecretPost].into(),
        (None, Some(_)) => [AuthMethod::PrivateKeyJwt].into(),
        (None, None) => [AuthMethod::None].into(),
    };
    let auth_methods = match c.auth {
        None => inferred,
        Some(list) => {
            let set: BTreeSet<AuthMethod> = list.into_iter().collect();
            if set.is_empty() || !set.is_subset(&inferred) {
                let names: Vec<&str> = inferred.iter().map(|m| m.as_str()).collect();
                return Err(format!(
                    "auth methods do not fit its credentials; with what is configured it can use {}",
                    names.join(", ")
                ));
            }
            set
        }
    };
    let public = auth_methods.contains(&AuthMethod::None);
    let dpop = c.dpop.unwrap_or(DpopRequirement::Required);
    if public && dpop != DpopRequirement::Required {
        return Err(
            "a public client (no secret, no keys) must have dpop = \"required\"".to_owned(),
        );
    }
    let mut grants = BTreeSet::new();
    for g in c.grants {
        let g = match g.as_str() {
            "token_exchange" | "token-exchange" => GRANT_TOKEN_EXCHANGE.to_owned(),
            _ => g,
        };
        if !GRANTS.contains(&g.as_str()) {
            return Err(format!(
                "grant {g:?} is not supported; use client_credentials, refresh_token or {GRANT_TOKEN_EXCHANGE}"
            ));
        }
        grants.insert(g);
    }
    if grants.is_empty() && !c.introspection {
        return Err("grants is empty: the client could do nothing".to_owned());
    }
    if public && grants.contains(GRANT_CLIENT_CREDENTIALS) {
        return Err(
            "a public client cannot use client_credentials (it has no credentials)".to_owned(),
        );
    }
    if public && c.introspection {
        return Err("a public client cannot be allowed introspection".to_owned());
    }
    // Exchanging this issuer's own tokens needs an authenticated actor: through a public
    // client, whoever holds a token and its key could widen it, delegate it or turn it
    // into a refresh grant without any credential.
    if public && (!c.may_exchange_for.is_empty() || c.refresh_from_exchange) {
        return Err(
            "a public client cannot exchange this issuer's tokens (it has no credentials): \
             remove may_exchange_for and refresh_from_exchange, or give it a secret or keys"
                .to_owned(),
        );
    }
    if !c.may_exchange_for.is_empty() && !grants.contains(GRANT_TOKEN_EXCHANGE) {
        return Err("may_exchange_for needs the token-exchange grant".to_owned());
    }
    for id in &c.may_exchange_for {
        check_name("may_exchange_for entry", id)?;
    }
    if c.refresh_from_exchange
        && !(grants.contains(GRANT_TOKEN_EXCHANGE) && grants.contains(GRANT_REFRESH_TOKEN))
    {
        return Err(
            "refresh_from_exchange needs the token-exchange and refresh_token grants".to_owned(),
        );
    }
    if c.allow_bearer_exchange && dpop != DpopRequirement::Optional {
        return Err(
            "allow_bearer_exchange is for dpop = \"optional\" clients (the others hold no Bearer tokens)"
                .to_owned(),
        );
    }
    let mut scopes = BTreeSet::new();
    for s in &c.scopes {
        if s.is_empty()
            || s.chars()
                .any(|ch| !('\x21'..='\x7e').contains(&ch) || ch == '"' || ch == '\\')
        {
            return Err(format!(
                "scope {s:?} is not a valid scope token (RFC 6749 §3.3)"
            ));
        }
        scopes.insert(s.clone());
    }
    let default_scopes = c
        .default_scopes
        .unwrap_or_else(|| scopes.iter().cloned().collect());
    if let Some(s) = default_scopes.iter().find(|s| !scopes.contains(*s)) {
        return Err(format!("default scope {s:?} is not in scopes"));
    }
    for a in &c.audiences {
        check_name("audience", a)?;
    }
    let default_audiences = c.default_audiences.unwrap_or_else(|| c.audiences.clone());
    if let Some(a) = default_audiences.iter().find(|a| !c.audiences.contains(*a)) {
        return Err(format!("default audience {a:?} is not in audiences"));
    }
    if !grants.is_empty()
        && c.audiences.is_empty()
        && !grants.iter().all(|g| g == GRANT_TOKEN_EXCHANGE)
    {
        return Err(
            "audiences is empty: access tokens must name the APIs they are for (RFC 9068 aud)"
                .to_owned(),
        );
    }
    let lifetime = match c.access_token_lifetime_secs {
        None => default_lifetime,
        Some(v) if (1..=MAX_ACCESS_LIFETIME).contains(&v) => Duration::from_secs(v),
        Some(v) => {
            return Err(format!(
                "access_token_lifetime_secs must be between 1 and {MAX_ACCESS_LIFETIME}, not {v}"
            ));
        }
    };
    let subject = c.subject.unwrap_or_else(|| c.id.clone());
    check_name("subject", &subject)?;
    Ok(Client {
        id: c.id,
        subject,
        auth_methods,
        secret,
        jwks,
        grants,
        scopes,
        default_scopes,
        audiences: c.audiences,
        default_audiences,
        dpop,
        introspection: c.introspection,
        enabled: c.enabled.unwrap_or(true),
        access_token_lifetime: lifetime,
        may_exchange_for: c.may_exchange_for.into_iter().collect(),
        allow_bearer_exchange: c.allow_bearer_exchange,
        refresh_from_exchange: c.refresh_from_exchange,
    })
}

/// Parses a client's keys: one public JWK or a JWK set.
fn parse_client_keys(text: &str) -> Result<JwkSet, String> {
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("jwks is not JSON: {e}"))?;
    let set = if value.get("keys").is_some() {
        JwkSet::from_json(text).map_err(|e| format!("jwks: {e}"))?
    } else {
        let kid = value.get("kid").and_then(|k| k.as_str()).map(str::to_owned);
        let jwk = PublicJwk::from_json(text)
            .map_err(|e| format!("jwks: not a usable public JWK: {e}"))?;
        JwkSet::from_keys(vec![(kid, jwk)])
    };
    if set.is_empty() {
        return Err("jwks holds no usable signing key".to_owned());
    }
    Ok(set)
}

// ---- [auth_limits]: failed client authentication ----

/// Limits on failed client-secret checks (`[auth_limits]`), so that secrets cannot be
/// guessed and client ids cannot be probed at the rate of the server's CPU. They count
/// failures only: a client that presents its right secret is never slowed down until
/// failures for its id or from its address exceed the limit. Over a limit, a request that
/// presents a secret is answered 429 `slow_down` with `Retry-After`, without checking the
/// secret. A check counts as a failure from when it starts until the secret proves right,
/// so checks running at once cannot exceed the limits. Each instance counts on its own.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct AuthLimits {
    /// Failed secret checks for one client id (known or not) within `window`; then one
    /// more each `window / failures_per_client`. 0: no limit. Defaults to 20.
    pub failures_per_client: u32,
    /// Failed secret checks from one client address (IPv6: one /64) within `window`.
    /// 0: no limit. Defaults to 50.
    pub failures_per_address: u32,
    /// The window. Defaults to 60 seconds.
    pub window: Duration,
    /// How many client ids, and how many addresses, are remembered at most; when full,
    /// the entries closest to their full allowance are forgotten first. Defaults to
    /// 10 000 (about 1 MiB).
    pub max_tracked: usize,
    /// Reverse proxies (addresses or CIDR prefixes) whose `X-Forwarded-For` names the
    /// client address; the address counted is the nearest one that is not a trusted
    /// proxy. Defaults to none: the peer address counts.
    pub trusted_proxies: Vec<ipnet::IpNet>,
}

impl Default for AuthLimits {
    fn default() -> Self {
        Self {
            failures_per_client: 20,
            failures_per_address: 50,
            window: Duration::from_secs(60),
            max_tracked: 10_000,
            trusted_proxies: Vec::new(),
        }
    }
}

impl AuthLimits {
    /// Whether `ip` is one of the trusted proxies.
    #[must_use]
    pub fn is_trusted_proxy(&self, ip: std::net::IpAddr) -> bool {
        // An IPv4-mapped IPv6 peer (a dual-stack listener) is its IPv4 address.
        let ip = ip.to_canonical();
        self.trusted_proxies.iter().any(|p| p.contains(&ip))
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAuthLimits {
    failures_per_client: Option<u32>,
    failures_per_address: Option<u32>,
    window_secs: Option<u64>,
    max_tracked: Option<usize>,
    #[serde(default)]
    trusted_proxies: Vec<String>,
}

impl RawAuthLimits {
    fn validate(self) -> Result<AuthLimits, String> {
        let d = AuthLimits::default();
        let window = self.window_secs.unwrap_or(d.window.as_secs());
        if !(1..=86_400).contains(&window) {
            return Err(format!(
                "auth_limits.window_secs must be between 1 and 86400, not {window}"
            ));
        }
        let max_tracked = self.max_tracked.unwrap_or(d.max_tracked);
        if !(100..=10_000_000).contains(&max_tracked) {
            return Err(format!(
                "auth_limits.max_tracked must be between 100 and 10000000, not {max_tracked}"
            ));
        }
        let trusted_proxies = self
            .trusted_proxies
            .iter()
            .map(|p| {
                p.parse::<ipnet::IpNet>()
                    .or_else(|_| p.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                    .map_err(|_| {
                        format!(
                            "auth_limits.trusted_proxies: {p:?} is not an IP address or CIDR prefix"
                        )
                    })
            })
            .collect::<Result<_, _>>()?;
        Ok(AuthLimits {
            failures_per_client: self.failures_per_client.unwrap_or(d.failures_per_client),
            failures_per_address: self.failures_per_address.unwrap_or(d.failures_per_address),
            window: Duration::from_secs(window),
            max_tracked,
            trusted_proxies,
        })
    }
}

// ---- [keys]: signing keys the operator manages ----

/// A key reference as configured: the parsed [`KeyRef`] and the text the issuer records
/// in `DATA_DIR/keys/<kid>.ref` (a `file:` path made absolute, a device URI as written).
/// `Debug` and `Display` show the reference with any PIN as `***`.
#[derive(Clone, PartialEq, Eq)]
pub struct KeyReference {
    parsed: KeyRef,
    text: zeroize::Zeroizing<String>,
}

impl KeyReference {
    /// Parses a key reference; a relative file path is resolved against `base` (and made
    /// absolute against the working directory when `base` is relative).
    ///
    /// # Errors
    /// The reference is malformed (the message names it, PIN redacted).
    pub fn parse(text: &str, base: &Path) -> Result<Self, String> {
        let parsed = KeyRef::parse(text).map_err(|e| e.to_string())?;
        let text = match &parsed {
            KeyRef::File(path) => {
                let path = std::path::absolute(base.join(path))
                    .map_err(|e| format!("{}: {e}", path.display()))?;
                let Some(utf8) = path.to_str() else {
                    return Err(format!("{} is not a UTF-8 path", path.display()));
                };
                if utf8.contains(['\n', '\r']) {
                    return Err(format!("{utf8:?} has a line break"));
                }
                return Ok(Self {
                    text: zeroize::Zeroizing::new(format!("file:{utf8}")),
                    parsed: KeyRef::File(path),
                });
            }
            _ => text.to_owned(),
        };
        if text.contains(['\n', '\r']) {
            return Err(format!("{parsed} has a line break"));
        }
        Ok(Self {
            parsed,
            text: zeroize::Zeroizing::new(text),
        })
    }

    /// The parsed reference.
    #[must_use]
    pub fn key_ref(&self) -> &KeyRef {
        &self.parsed
    }

    /// The text recorded in the key directory: it may hold a PIN (`pin-value`, only
    /// with `dangerous_allow_pin_value`), so it is written to a 0600 file only.
    pub(crate) fn text(&self) -> &str {
        &self.text
    }
}

impl std::fmt::Display for KeyReference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.parsed.fmt(f)
    }
}

impl std::fmt::Debug for KeyReference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KeyReference({})", self.parsed)
    }
}

/// Signing keys the operator manages (`[keys]`).
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct KeysConfig {
    /// The key to sign with where the issuer would otherwise generate one (first start,
    /// every held key retired): a PEM or JWK file (`file:PATH` or a path, owner-only) or
    /// a device key (`pkcs11:`, `tpm2:`, `awskms:`). Its algorithm must be
    /// `signing_alg`. With it set, `rotate-key` needs `--key`. Defaults to none: the
    /// issuer generates software keys in `data_dir`.
    pub signing_key: Option<KeyReference>,
    /// Accept a PIN written into a device URI (`pin-value`). It ends up in the
    /// configuration file and in `DATA_DIR/keys/<kid>.ref`: for tests only. Defaults to
    /// false.
    pub dangerous_allow_pin_value: bool,
    /// How many device sessions sign at once (more token requests wait for one).
    /// Defaults to 4.
    pub device_sessions: usize,
}

impl Default for KeysConfig {
    fn default() -> Self {
        Self {
            signing_key: None,
            dangerous_allow_pin_value: false,
            device_sessions: 4,
        }
    }
}

impl KeysConfig {
    /// How device keys are opened for `alg`.
    pub(crate) fn open_options(&self, alg: Algorithm) -> dpop_keys::OpenOptions {
        let mut options = dpop_keys::OpenOptions::default();
        options.alg = Some(alg);
        options.dangerous_allow_pin_value = self.dangerous_allow_pin_value;
        options.sessions = self.device_sessions;
        options
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKeys {
    signing_key: Option<String>,
    dangerous_allow_pin_value: Option<bool>,
    device_sessions: Option<usize>,
}

/// Most device sessions one issuer opens.
const MAX_DEVICE_SESSIONS: usize = 64;

impl RawKeys {
    fn validate(self, base: &Path) -> Result<KeysConfig, String> {
        let d = KeysConfig::default();
        let signing_key = self
            .signing_key
            .map(|text| {
                KeyReference::parse(&text, base).map_err(|e| format!("keys.signing_key: {e}"))
            })
            .transpose()?;
        let device_sessions = self.device_sessions.unwrap_or(d.device_sessions);
        if !(1..=MAX_DEVICE_SESSIONS).contains(&device_sessions) {
            return Err(format!(
                "keys.device_sessions must be between 1 and {MAX_DEVICE_SESSIONS}, not {device_sessions}"
            ));
        }
        Ok(KeysConfig {
            signing_key,
            dangerous_allow_pin_value: self.dangerous_allow_pin_value.unwrap_or(false),
            device_sessions,
        })
    }
}
