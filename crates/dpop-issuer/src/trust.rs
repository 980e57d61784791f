//! Trusted external issuers for RFC 8693 token exchange: a workload presents a JWT from
//! an issuer we trust (a GitHub Actions or GitLab CI OIDC job token, a Kubernetes
//! service-account token…) as its `subject_token`, and the first rule whose claim
//! patterns all match says which workload it is and what it may receive.
//!
//! Each `[[trust]]` table of the configuration is a [`TrustConfig`]. At run time
//! [`TrustedIssuers`] routes a token to its trust by the (unverified) `iss`, verifies it
//! with [`dpop_core::jwt::verify_jwt`] against the issuer's JWK set, bounds its lifetime
//! and evaluates the rules.
//!
//! Keys are fetched on first use (RFC 8414 / OpenID discovery unless `jwks_uri` is
//! configured) and cached per trust by [`dpop_discovery::RemoteJwks`]: refreshed every
//! 5 minutes, and on an unknown `kid` at once, but never twice within 30 s, so a flood of
//! tokens naming random keys cannot turn this server into a load generator against the
//! external issuer. Fetches are serialised per trust, bounded in time (5 s per request)
//! and size.
//!
//! Multi-tenant issuers (GitHub, GitLab.com) sign tokens for anyone's jobs, and the job
//! chooses `aud`: a rule must pin the owner (`repository`, `namespace_path`…), not only
//! the audience. [`TrustConfig::validate`] refuses rules that constrain nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::Duration;

use dpop_core::jwt::{self, JwtValidation, MAX_TOKEN_BYTES, TokenError, TypPolicy, VerifiedJwt};
use dpop_core::{Algorithm, Jkt, UnixTime};
use dpop_discovery::{
    EndpointUrl, Fetcher, IssuerUrl, JwksError, JwksTimings, KeySource, RemoteJwks, UrlError,
};
use serde::Deserialize;
use serde_json::Value;

/// Log target of key fetches and refused subject tokens.
const LOG_TARGET: &str = "dpop::trust";
/// Timeout of each HTTP request to an external issuer.
const HTTP_TIMEOUT: Duration = Duration::from_secs(5);
/// Keys are re-fetched after 5 minutes (rotation at the issuer); fetches of one trust's
/// keys are at least 30 s apart once keys are loaded (an unknown `kid` or a stale set
/// cannot trigger more); while no keys were ever loaded, a failed fetch is retried after
/// 5 s, then 10 s, then every 30 s: nothing can be verified meanwhile, so waiting the
/// full 30 s at once would only prolong an outage.
const TIMINGS: JwksTimings = {
    let mut t = JwksTimings::DEFAULT;
    t.refresh_interval = Duration::from_secs(300);
    t.min_refresh_interval = Duration::from_secs(30);
    t.missing_keys_retry_interval = Duration::from_secs(5);
    t
};
/// Upper bound of [`TrustConfig::max_lifetime_secs`].
const MAX_LIFETIME_LIMIT_SECS: u64 = 86_400;
/// Accepted `alg` values when a trust names none.
const DEFAULT_TRUST_ALGORITHMS: [Algorithm; 5] = [
    Algorithm::Rs256,
    Algorithm::Es256,
    Algorithm::Es384,
    Algorithm::Ps256,
    Algorithm::EdDsa,
];

const fn default_max_lifetime_secs() -> u64 {
    3600
}

/// One `[[trust]]` table: an external issuer whose JWTs may be exchanged for our tokens.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct TrustConfig {
    /// A unique label, used in logs and error messages.
    pub name: String,
    /// The `iss` of the subject tokens: an `https` URL (`http` only for 127.0.0.0/8,
    /// `localhost` and `[::1]`), without query or fragment. A trailing slash does not
    /// matter.
    pub issuer: String,
    /// Where the issuer's keys are. Defaults to discovery: `jwks_uri` from the RFC 8414
    /// `/.well-known/oauth-authorization-server` document, else from
    /// `{issuer}/.well-known/openid-configuration`.
    #[serde(default)]
    pub jwks_uri: Option<String>,
    /// The subject token's `aud` must be this or contain it.
    pub audience: String,
    /// Accepted JWS `alg` names. Defaults to RS256, ES256, ES384, PS256 and EdDSA.
    #[serde(default)]
    pub algorithms: Option<Vec<String>>,
    /// Longest accepted token lifetime, `exp` - `iat` in seconds (`iat` is required).
    /// At most 86400. Defaults to 3600.
    #[serde(default = "default_max_lifetime_secs")]
    pub max_lifetime_secs: u64,
    /// The rules, tried in order; the first whose every claim pattern matches decides.
    /// At least one.
    pub rules: Vec<TrustRule>,
}

/// Which subject tokens of a trust map to which workload, and what it may receive.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct TrustRule {
    /// Claim → pattern; every one must match. A claim is named directly (`repository`)
    /// or by a JSON pointer (RFC 6901) starting with `/` (`/kubernetes.io/namespace`). A
    /// pattern is exact text, where each `*` matches any run of characters
    /// (`refs/tags/v*`); there is no escape for a literal `*`. An array claim matches
    /// when any of its string elements does; a missing or non-string claim never
    /// matches. Must not be empty, and not only `*` patterns.
    pub claims: BTreeMap<String, String>,
    /// The `sub` of the tokens issued for a matching subject token.
    pub workload: String,
    /// The scopes the workload may receive.
    pub scopes: Vec<String>,
    /// The audiences the workload may receive. Empty means the client's. Defaults to
    /// empty.
    #[serde(default)]
    pub audiences: Vec<String>,
    /// The client ids allowed to exchange such a token. Empty means any client that has
    /// the token-exchange grant. Defaults to empty.
    #[serde(default)]
    pub clients: Vec<String>,
    /// Whether what is issued for a matching subject token may outlive it: an access
    /// token of the client's full lifetime and, for a client with the `refresh_token`
    /// grant, a refresh grant that lasts up to the refresh-token lifetimes. Whoever
    /// holds such a subject token (and its key, if it is bound) until it expires can
    /// then keep the workload's access for that long. At least one of the rule's clients
    /// must have the `refresh_token` grant. Defaults to false: the access token expires
    /// no later than the subject token, and no refresh grant is started.
    #[serde(default)]
    pub outlive_subject: bool,
}

/// A validated rule: claim paths parsed.
#[derive(Debug)]
struct Rule {
    claims: Vec<(ClaimPath, String)>,
    workload: String,
    scopes: Vec<String>,
    audiences: Vec<String>,
    clients: Vec<String>,
    outlive_subject: bool,
}

/// Where a rule looks for a claim.
#[derive(Debug, PartialEq, Eq)]
enum ClaimPath {
    /// A top-level claim, by its exact name (dots are part of the name).
    Name(String),
    /// An RFC 6901 pointer, as unescaped reference tokens.
    Pointer(Vec<String>),
}

impl ClaimPath {
    fn parse(name: &str) -> Result<Self, String> {
        if name.is_empty() {
            return Err("has an empty claim name".to_owned());
        }
        let Some(pointer) = name.strip_prefix('/') else {
            return Ok(Self::Name(name.to_owned()));
        };
        let mut tokens = Vec::new();
        for raw in pointer.split('/') {
            let mut token = String::with_capacity(raw.len());
            let mut chars = raw.chars();
            while let Some(c) = chars.next() {
                match c {
                    '~' => match chars.next() {
                        Some('0') => token.push('~'),
                        Some('1') => token.push('/'),
                        _ => {
                            return Err(format!(
                                "claim {name:?} is not a JSON pointer: `~` must be followed by 0 or 1 (RFC 6901)"
                            ));
                        }
                    },
                    c => token.push(c),
                }
            }
            tokens.push(token);
        }
        Ok(Self::Pointer(tokens))
    }

    fn lookup<'a>(&self, claims: &'a serde_json::Map<String, Value>) -> Option<&'a Value> {
        match self {
            Self::Name(name) => claims.get(name),
            Self::Pointer(tokens) => {
                let (first, rest) = tokens.split_first()?;
                let mut current = claims.get(first)?;
                for token in rest {
                    current = match current {
                        Value::Object(o) => o.get(token)?,
                        Value::Array(a) => a.get(array_index(token)?)?,
                        _ => return None,
                    };
                }
                Some(current)
            }
        }
    }
}

/// An RFC 6901 array index: `0` or digits without a leading zero.
fn array_index(token: &str) -> Option<usize> {
    let canonical = token == "0"
        || (!token.starts_with('0')
            && !token.is_empty()
            && token.bytes().all(|b| b.is_ascii_digit()));
    if canonical { token.parse().ok() } else { None }
}

/// `*` matches any run of characters (also none); everything else is literal.
fn glob_match(pattern: &str, text: &str) -> bool {
    let segments: Vec<&str> = pattern.split('*').collect();
    let [first, middle @ .., last] = segments.as_slice() else {
        return pattern == text;
    };
    let Some(mut rest) = text.strip_prefix(first) else {
        return false;
    };
    // Leftmost matches of the middle segments are never worse than later ones, so
    // this greedy scan is exact (and linear-ish: no backtracking).
    for segment in middle {
        match rest.split_once(segment) {
            Some((_, after)) => rest = after,
            None => return false,
        }
    }
    rest.ends_with(last)
}

/// A string claim matches `pattern`; an array claim when one of its strings does.
fn value_matches(value: &Value, pattern: &str) -> bool {
    match value {
        Value::String(s) => glob_match(pattern, s),
        Value::Array(items) => items
            .iter()
            .any(|v| v.as_str().is_some_and(|s| glob_match(pattern, s))),
        _ => false,
    }
}

/// RFC 6749 §3.3 `scope-token`: one or more NQCHAR (no space, `"` or `\`).
fn is_scope_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b == 0x21 || (0x23..=0x5B).contains(&b) || (0x5D..=0x7E).contains(&b))
}

/// `{what} {text:?} {why}`: the one URL rule, in a message that names the value.
fn url_message(what: &str, text: &str, why: &UrlError) -> String {
    format!("{what} {text:?} {why}")
}

impl TrustConfig {
    /// Checks everything that can be checked without the network.
    ///
    /// # Errors
    /// A message naming the trust and the offending value: an empty name, audience or
    /// workload; an issuer or `jwks_uri` that is not an `https` URL (or `http` to
    /// loopback); an unknown or forbidden algorithm; `max_lifetime_secs` 0 or above
    /// 86400; no rules; a rule with no claims, only `*` patterns, a bad JSON pointer, an
    /// invalid scope or an empty audience or client id.
    pub fn validate(&self) -> Result<(), String> {
        self.compile().map(drop)
    }

    /// [`TrustConfig::validate`], keeping what it parsed.
    fn compile(&self) -> Result<Compiled, String> {
        if self.name.trim().is_empty() {
            return Err(format!(
                "a trust (issuer {:?}) has an empty name",
                self.issuer
            ));
        }
        let fail = |what: String| format!("trust {:?}: {what}", self.name);
        let issuer = IssuerUrl::parse(&self.issuer)
            .map_err(|e| fail(url_message("issuer", &self.issuer, &e)))?;
        let jwks_uri = match &self.jwks_uri {
            Some(uri) => {
                Some(EndpointUrl::parse(uri).map_err(|e| fail(url_message("jwks_uri", uri, &e)))?)
            }
            None => None,
        };
        if self.audience.trim().is_empty() {
            return Err(fail("audience is empty".to_owned()));
        }
        let algorithms = match &self.algorithms {
            None => DEFAULT_TRUST_ALGORITHMS.to_vec(),
            Some(names) if names.is_empty() => {
                return Err(fail(
                    "algorithms is empty (omit it for the defaults)".to_owned(),
                ));
            }
            Some(names) => {
                let mut algs = Vec::with_capacity(names.len());
                for name in names {
                    let alg = Algorithm::from_name(name).ok_or_else(|| {
                        fail(format!(
                            "unknown or forbidden algorithm {name:?} (asymmetric JWS names such as RS256, ES256, EdDSA)"
                        ))
                    })?;
                    if !algs.contains(&alg) {
                        algs.push(alg);
                    }
                }
                algs
            }
        };
        if self.max_lifetime_secs == 0 || self.max_lifetime_secs > MAX_LIFETIME_LIMIT_SECS {
            return Err(fail(format!(
                "max_lifetime_secs is {}, must be between 1 and {MAX_LIFETIME_LIMIT_SECS}",
                self.max_lifetime_secs
            )));
        }
        if self.rules.is_empty() {
            return Err(fail(
                "has no rules (at least one [[trust.rules]] is needed)".to_owned(),
            ));
        }
        let mut rules = Vec::with_capacity(self.rules.len());
        for (i, rule) in self.rules.iter().enumerate() {
            let n = i + 1;
            rules.push(rule.compile().map_err(|e| fail(format!("rule {n}: {e}")))?);
        }
        Ok(Compiled {
            issuer,
            jwks_uri,
            algorithms,
            rules,
        })
    }
}

/// What [`TrustConfig::compile`] parsed.
struct Compiled {
    issuer: IssuerUrl,
    jwks_uri: Option<EndpointUrl>,
    algorithms: Vec<Algorithm>,
    rules: Vec<Rule>,
}

impl TrustRule {
    fn compile(&self) -> Result<Rule, String> {
        if self.workload.trim().is_empty() {
            return Err("workload is empty".to_owned());
        }
        if self.claims.is_empty() {
            return Err(format!(
                "workload {:?}: claims is empty (a rule must constrain the subject token)",
                self.workload
            ));
        }
        if self.claims.values().all(|p| p.chars().all(|c| c == '*')) {
            return Err(format!(
                "workload {:?}: every claim pattern is a bare wildcard, which matches any token of the issuer",
                self.workload
            ));
        }
        let mut claims = Vec::with_capacity(self.claims.len());
        for (name, pattern) in &self.claims {
            let path =
                ClaimPath::parse(name).map_err(|e| format!("workload {:?}: {e}", self.workload))?;
            claims.push((path, pattern.clone()));
        }
        if let Some(bad) = self.scopes.iter().find(|s| !is_scope_token(s)) {
            return Err(format!(
                "workload {:?}: scope {bad:?} is not a scope token (RFC 6749 §3.3)",
                self.workload
            ));
        }
        if self.audiences.iter().any(|a| a.trim().is_empty()) {
            return Err(format!(
                "workload {:?}: an audience is empty",
                self.workload
            ));
        }
        if self.clients.iter().any(|c| c.trim().is_empty()) {
            return Err(format!(
                "workload {:?}: a client id is empty",
                self.workload
            ));
        }
        Ok(Rule {
            claims,
            workload: self.workload.clone(),
            scopes: self.scopes.clone(),
            audiences: self.audiences.clone(),
            clients: self.clients.clone(),
            outlive_subject: self.outlive_subject,
        })
    }
}

/// A verified external subject token, mapped to a workload by a rule.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ExternalSubject {
    /// The name of the trust that matched.
    pub trust: String,
    /// The token's issuer.
    pub issuer: String,
    /// The token's `sub`.
    pub subject: Option<String>,
    /// The rule's workload: the `sub` of the tokens we issue for it.
    pub workload: String,
    /// The scopes the workload may receive.
    pub scopes: Vec<String>,
    /// The audiences it may receive (empty: the client's).
    pub audiences: Vec<String>,
    /// The clients allowed to exchange it (empty: any with the token-exchange grant).
    pub clients: Vec<String>,
    /// The subject token's `exp`.
    pub expires_at: UnixTime,
    /// Whether the rule lets what is issued outlive the subject token
    /// ([`TrustRule::outlive_subject`]).
    pub outlive_subject: bool,
    /// The subject token's `jti`.
    pub jti: Option<String>,
    /// The subject token's `cnf.jkt`, if it is DPoP-bound.
    pub jkt: Option<Jkt>,
}

/// Why an external subject token was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TrustError {
    /// The token's `iss` is not a configured trust, or the token is unreadable.
    #[error("the subject token is unreadable or its issuer is not trusted")]
    UnknownIssuer,
    /// Verification failed (signature, `iss`, `aud`, `exp`, `nbf`, `iat`, claim types).
    #[error("the subject token is invalid: {0}")]
    Invalid(TokenError),
    /// `exp` - `iat` exceeds the trust's `max_lifetime_secs`.
    #[error("the subject token lives longer than its trust allows")]
    TooLongLived,
    /// The token is valid but no rule of its trust matches its claims.
    #[error("no rule of the trust matches the subject token")]
    NoRuleMatched,
    /// The issuer's keys could not be fetched: a temporary failure (503,
    /// `temporarily_unavailable`), not the client's fault.
    #[error("the trusted issuer's keys are unavailable: {0}")]
    Unavailable(String),
}

/// One trust at run time.
struct Trust {
    name: String,
    /// In canonical form ([`IssuerUrl::as_str`]).
    issuer: String,
    validation: JwtValidation,
    max_lifetime: u64,
    rules: Vec<Rule>,
    /// The issuer's keys, fetched and cached.
    jwks: RemoteJwks,
}

impl fmt::Debug for Trust {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Trust")
            .field("name", &self.name)
            .field("issuer", &self.issuer)
            .field("rules", &self.rules.len())
            .finish_non_exhaustive()
    }
}

impl Trust {
    /// Verifies the signature and registered claims, refreshing keys once on an
    /// unknown `kid`.
    async fn verify_signed(&self, token: &str, now: UnixTime) -> Result<VerifiedJwt, TrustError> {
        let unavailable =
            |e: JwksError| TrustError::Unavailable(format!("trust {:?}: {e}", self.name));
        let keys = self.jwks.keys().await.map_err(unavailable)?;
        match jwt::verify_jwt(token, &keys, &self.validation, now) {
            Err(TokenError::UnknownKey) => {
                match self
                    .jwks
                    .after_unknown_kid(&keys)
                    .await
                    .map_err(unavailable)?
                {
                    Some(newer) => jwt::verify_jwt(token, &newer, &self.validation, now)
                        .map_err(TrustError::Invalid),
                    None => Err(TrustError::Invalid(TokenError::UnknownKey)),
                }
            }
            other => other.map_err(TrustError::Invalid),
        }
    }

    /// Lifetime bound, then the rules in order.
    fn evaluate(&self, token: &VerifiedJwt) -> Result<ExternalSubject, TrustError> {
        let iat = token
            .issued_at
            .ok_or(TrustError::Invalid(TokenError::MissingClaim("iat")))?;
        let lifetime = token.expires_at.as_secs().saturating_sub(iat.as_secs());
        if lifetime > self.max_lifetime {
            return Err(TrustError::TooLongLived);
        }
        let string_claim = |name: &'static str| match token.claims.get(name) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(TrustError::Invalid(TokenError::ClaimInvalid(name))),
        };
        let subject = string_claim("sub")?;
        let jti = string_claim("jti")?;
        let jkt = token.jkt().map_err(TrustError::Invalid)?;
        let rule = self
            .rules
            .iter()
            .find(|rule| {
                rule.claims.iter().all(|(path, pattern)| {
                    path.lookup(&token.claims)
                        .is_some_and(|v| value_matches(v, pattern))
                })
            })
            .ok_or(TrustError::NoRuleMatched)?;
        Ok(ExternalSubject {
            trust: self.name.clone(),
            issuer: self.issuer.clone(),
            subject,
            workload: rule.workload.clone(),
            scopes: rule.scopes.clone(),
            audiences: rule.audiences.clone(),
            clients: rule.clients.clone(),
            expires_at: token.expires_at,
            outlive_subject: rule.outlive_subject,
            jti,
            jkt,
        })
    }
}

/// The configured trusts, with their cached keys.
pub struct TrustedIssuers {
    trusts: Vec<Trust>,
}

impl fmt::Debug for TrustedIssuers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TrustedIssuers")
            .field("trusts", &self.trusts)
            .finish_non_exhaustive()
    }
}

impl TrustedIssuers {
    /// Validates `configs` and prepares them; no network access yet (keys are fetched
    /// on first use). `http` should not follow redirects; each request gets a 5 s
    /// timeout here.
    ///
    /// # Errors
    /// A [`TrustConfig::validate`] message, or a duplicate name or issuer.
    pub fn new(configs: Vec<TrustConfig>, http: reqwest::Client) -> Result<Self, String> {
        let mut names = BTreeSet::new();
        let mut issuers = BTreeSet::new();
        let mut trusts = Vec::with_capacity(configs.len());
        let fetcher = Fetcher::with_client(http, HTTP_TIMEOUT);
        for config in configs {
            let Compiled {
                issuer,
                jwks_uri,
                algorithms,
                rules,
            } = config.compile()?;
            if !names.insert(config.name.clone()) {
                return Err(format!("trust {:?} is defined twice", config.name));
            }
            if !issuers.insert(issuer.as_str().to_owned()) {
                return Err(format!(
                    "trust {:?}: issuer {:?} is already trusted by another entry",
                    config.name, config.issuer
                ));
            }
            let mut validation = JwtValidation::new(&config.issuer, Some(&config.audience));
            validation.algorithms = algorithms;
            // CI and Kubernetes tokens say `JWT` or nothing; `dpop+jwt` and other
            // explicit types are still refused.
            validation.typ = TypPolicy::AtJwtOrJwt;
            validation.max_token_bytes = MAX_TOKEN_BYTES;
            let source = match jwks_uri {
                Some(uri) => KeySource::Uri(uri),
                None => KeySource::Discover(issuer.clone()),
            };
            trusts.push(Trust {
                name: config.name,
                issuer: issuer.as_str().to_owned(),
                validation,
                max_lifetime: config.max_lifetime_secs,
                rules,
                jwks: RemoteJwks::new(source, fetcher.clone(), TIMINGS),
            });
        }
        Ok(Self { trusts })
    }

    /// No trust is configured (token exchange with external tokens is off).
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.trusts.is_empty()
    }

    /// Verifies an external subject token at `now`: finds its trust by the unverified
    /// `iss`, verifies signature, `iss`, `aud`, `exp`, `nbf` and `iat` against the
    /// issuer's keys (fetched and cached here), bounds `exp` - `iat` (`iat` required),
    /// and returns what the first matching rule grants.
    ///
    /// # Errors
    /// [`TrustError::UnknownIssuer`], [`TrustError::Invalid`],
    /// [`TrustError::TooLongLived`], [`TrustError::NoRuleMatched`], or
    /// [`TrustError::Unavailable`] when the issuer's keys cannot be fetched.
    pub async fn verify(&self, token: &str, now: UnixTime) -> Result<ExternalSubject, TrustError> {
        let peeked = jwt::UnverifiedJwt::parse(token).ok();
        let Some(trust) = peeked
            .as_ref()
            .and_then(|j| j.str_claim("iss"))
            .and_then(|iss| {
                self.trusts
                    .iter()
                    .find(|t| jwt::canonical_issuer(iss) == t.issuer)
            })
        else {
            return Err(TrustError::UnknownIssuer);
        };
        let result = match trust.verify_signed(token, now).await {
            Ok(verified) => trust.evaluate(&verified),
            Err(e) => Err(e),
        };
        if let Err(e) = &result {
            // Debug level: refusals are driven by whoever sends tokens.
            tracing::debug!(target: LOG_TARGET, trust = %trust.name, error = %e, "subject token refused");
        }
        result
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

    use super::*;
    use dpop_core::PrivateKey;
    use dpop_test::MockIssuer;
    use serde_json::json;

    const AUD: &str = "https://issuer.example.com";
    const NOW: u64 = 1_700_000_000;
    const JKT: &str = "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I";

    fn now() -> UnixTime {
        UnixTime::from_secs(NOW)
    }

    fn http() -> reqwest::Client {
        reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap()
    }

    fn rule(claims: &[(&str, &str)], workload: &str) -> TrustRule {
        TrustRule {
            claims: claims
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            workload: workload.to_owned(),
            scopes: vec!["deploy".to_owned()],
            audiences: Vec::new(),
            clients: Vec::new(),
            outlive_subject: false,
        }
    }

    fn config(issuer: &str, rules: Vec<TrustRule>) -> TrustConfig {
        TrustConfig {
            name: "ci".to_owned(),
            issuer: issuer.to_owned(),
            jwks_uri: None,
            audience: AUD.to_owned(),
            algorithms: None,
            max_lifetime_secs: 3600,
            rules,
        }
    }

    fn trusted(mock: &MockIssuer, rules: Vec<TrustRule>) -> TrustedIssuers {
        TrustedIssuers::new(vec![config(mock.url(), rules)], http()).unwrap()
    }

    /// A GitHub-Actions-like job token, with Kubernetes-like nested claims too.
    fn claims(mock: &MockIssuer) -> Value {
        json!({
            "iss": mock.url(),
            "aud": AUD,
            "sub": "repo:acme/app:ref:refs/tags/v1.2.3",
            "repository": "acme/app",
            "ref": "refs/tags/v1.2.3",
            "run_attempt": 1,
            "groups": ["dev", "release-managers"],
            "kubernetes.io": {"namespace": "prod", "serviceaccount": {"name": "deployer"}},
            "iat": NOW,
            "nbf": NOW,
            "exp": NOW + 600,
            "jti": "job-1",
        })
    }

    fn sign_with_kid(mock: &MockIssuer, kid: &str, claims: &Value) -> String {
        mock.sign_compact(&json!({"alg": "ES256", "typ": "JWT", "kid": kid}), claims)
    }

    fn sign(mock: &MockIssuer, claims: &Value) -> String {
        sign_with_kid(mock, &mock.kid(), claims)
    }

    fn with(mock: &MockIssuer, f: impl FnOnce(&mut Value)) -> String {
        let mut c = claims(mock);
        f(&mut c);
        sign(mock, &c)
    }

    /// Moves Tokio's clock (what the key cache reads) forward, then lets it run again.
    async fn advance(secs: u64) {
        tokio::time::pause();
        tokio::time::advance(Duration::from_secs(secs)).await;
        tokio::time::resume();
    }

    #[tokio::test]
    async fn matching_token_gives_the_external_subject() {
        let mock = MockIssuer::start().await.unwrap();
        let mut r = rule(&[("repository", "acme/app")], "spiffe://acme/app");
        r.audiences = vec!["https://api.acme.example".to_owned()];
        r.clients = vec!["ci-runner".to_owned()];
        r.scopes = vec!["deploy".to_owned(), "read".to_owned()];
        let t = trusted(&mock, vec![r]);
        assert!(!t.is_empty());
        let token = with(&mock, |c| c["cnf"] = json!({"jkt": JKT}));
        let subject = t.verify(&token, now()).await.unwrap();
        assert_eq!(
            subject,
            ExternalSubject {
                trust: "ci".to_owned(),
                issuer: mock.url().to_owned(),
                subject: Some("repo:acme/app:ref:refs/tags/v1.2.3".to_owned()),
                workload: "spiffe://acme/app".to_owned(),
                scopes: vec!["deploy".to_owned(), "read".to_owned()],
                audiences: vec!["https://api.acme.example".to_owned()],
                clients: vec!["ci-runner".to_owned()],
                expires_at: UnixTime::from_secs(NOW + 600),
                outlive_subject: false,
                jti: Some("job-1".to_owned()),
                jkt: Some(Jkt::parse(JKT).unwrap()),
            }
        );
        // Keys are cached: a second token costs no fetch.
        let again = t.verify(&sign(&mock, &claims(&mock)), now()).await.unwrap();
        assert_eq!(again.jkt, None);
        assert_eq!(mock.jwks_fetches(), 1);
        assert!(format!("{t:?}").contains("\"ci\""));
    }

    #[tokio::test]
    async fn wildcard_pointer_and_array_claims_match() {
        let mock = MockIssuer::start().await.unwrap();
        let t = trusted(
            &mock,
            vec![rule(
                &[
                    ("ref", "refs/tags/v*"),
                    ("sub", "repo:acme/*:ref:*"),
                    ("/kubernetes.io/namespace", "prod"),
                    ("/kubernetes.io/serviceaccount/name", "deploy*"),
                    ("groups", "release-*"),
                    ("/groups/0", "dev"),
                ],
                "release",
            )],
        );
        assert_eq!(
            t.verify(&sign(&mock, &claims(&mock)), now())
                .await
                .unwrap()
                .workload,
            "release"
        );
        // Each constraint on its own refuses a token that misses it.
        let refused: [fn(&mut Value); 6] = [
            |c| c["ref"] = "refs/heads/main".into(),
            |c| c["sub"] = "repo:evil/app:ref:refs/tags/v1".into(),
            |c| c["kubernetes.io"]["namespace"] = "dev".into(),
            |c| c["kubernetes.io"]["serviceaccount"] = json!({"name": 1}),
            |c| c["groups"] = json!(["dev", "ops"]),
            |c| c["groups"] = json!("release-managers"),
        ];
        for (i, f) in refused.into_iter().enumerate() {
            assert!(
                matches!(
                    t.verify(&with(&mock, f), now()).await,
                    Err(TrustError::NoRuleMatched)
                ),
                "case {i}"
            );
        }
    }

    #[test]
    fn glob_and_pointer_semantics() {
        assert!(glob_match("abc", "abc"));
        assert!(!glob_match("abc", "abcd"));
        assert!(glob_match("refs/tags/v*", "refs/tags/v1.2"));
        assert!(glob_match("refs/tags/v*", "refs/tags/v"));
        assert!(!glob_match("refs/tags/v*", "refs/heads/v1"));
        assert!(glob_match("*", ""));
        assert!(glob_match("a*b*c", "aXbYbZc"));
        assert!(glob_match("a*b*c", "abc"));
        assert!(!glob_match("a*b*c", "acb"));
        assert!(!glob_match("ab*ba", "aba"));
        assert!(glob_match("*/main", "org/repo/main"));
        assert!(glob_match("a**", "a"));
        assert!(glob_match("é*ü", "éaü"));
        let claims = json!({"a/b": {"~x": ["p", "q"]}, "k.io": "v"});
        let claims = claims.as_object().unwrap();
        let at = |p: &str| ClaimPath::parse(p).unwrap().lookup(claims).cloned();
        assert_eq!(at("/a~1b/~0x/1"), Some(json!("q")));
        assert_eq!(at("/a~1b/~0x/01"), None);
        assert_eq!(at("/a~1b/~0x/2"), None);
        assert_eq!(at("k.io"), Some(json!("v")));
        assert_eq!(at("/k.io/x"), None);
        assert!(ClaimPath::parse("/a~2").is_err());
        assert!(ClaimPath::parse("").is_err());
        assert!(!value_matches(&json!(1), "1"));
        assert!(!value_matches(&json!(true), "true"));
        assert!(!value_matches(&json!([1, "x"]), "1"));
        assert!(value_matches(&json!([1, "x"]), "x"));
    }

    #[tokio::test]
    async fn first_matching_rule_wins() {
        let mock = MockIssuer::start().await.unwrap();
        let token = sign(&mock, &claims(&mock));
        let narrow = rule(
            &[("repository", "acme/app"), ("ref", "refs/tags/*")],
            "release",
        );
        let mut broad = rule(&[("repository", "acme/*")], "any-acme");
        broad.outlive_subject = true;
        let t = trusted(&mock, vec![narrow.clone(), broad.clone()]);
        let subject = t.verify(&token, now()).await.unwrap();
        assert_eq!(subject.workload, "release");
        assert!(!subject.outlive_subject, "the matching rule's setting");
        let t = trusted(&mock, vec![broad, narrow]);
        let subject = t.verify(&token, now()).await.unwrap();
        assert_eq!(subject.workload, "any-acme");
        assert!(subject.outlive_subject);
    }

    #[tokio::test]
    async fn no_rule_matched() {
        let mock = MockIssuer::start().await.unwrap();
        let t = trusted(
            &mock,
            vec![
                rule(&[("repository", "acme/other")], "other"),
                // A number never matches, even when its text would.
                rule(&[("repository", "acme/app"), ("run_attempt", "1")], "n"),
                rule(&[("missing", "*x")], "missing"),
            ],
        );
        assert!(matches!(
            t.verify(&sign(&mock, &claims(&mock)), now()).await,
            Err(TrustError::NoRuleMatched)
        ));
    }

    #[tokio::test]
    async fn registered_claims_are_enforced() {
        let mock = MockIssuer::start().await.unwrap();
        let t = trusted(&mock, vec![rule(&[("repository", "acme/app")], "w")]);
        let refused = async |token: String| t.verify(&token, now()).await.unwrap_err();
        assert!(matches!(
            refused(with(&mock, |c| c["aud"] = "https://other.example".into())).await,
            TrustError::Invalid(TokenError::AudienceMismatch)
        ));
        assert!(matches!(
            refused(with(&mock, |c| {
                c.as_object_mut().unwrap().remove("aud");
            }))
            .await,
            TrustError::Invalid(TokenError::MissingClaim("aud"))
        ));
        assert!(matches!(
            refused(with(&mock, |c| c["exp"] = (NOW - 31).into())).await,
            TrustError::Invalid(TokenError::Expired { .. })
        ));
        assert!(matches!(
            refused(with(&mock, |c| c["nbf"] = (NOW + 31).into())).await,
            TrustError::Invalid(TokenError::NotYetValid)
        ));
        assert!(matches!(
            refused(with(&mock, |c| c["sub"] = json!(42))).await,
            TrustError::Invalid(TokenError::ClaimInvalid("sub"))
        ));
        assert!(matches!(
            refused(with(&mock, |c| c["cnf"] = json!({"jkt": "short"}))).await,
            TrustError::Invalid(TokenError::ClaimInvalid("cnf.jkt"))
        ));
        // Explicit types other than JWT / at+jwt (a DPoP proof, say) are refused.
        let typ = mock.sign_compact(
            &json!({"alg": "ES256", "typ": "dpop+jwt", "kid": mock.kid()}),
            &claims(&mock),
        );
        assert!(matches!(
            refused(typ).await,
            TrustError::Invalid(TokenError::TypInvalid)
        ));
        // The alg allow-list is the trust's.
        let mut strict = config(mock.url(), vec![rule(&[("repository", "acme/app")], "w")]);
        strict.algorithms = Some(vec!["RS256".to_owned()]);
        let strict = TrustedIssuers::new(vec![strict], http()).unwrap();
        assert!(matches!(
            strict.verify(&sign(&mock, &claims(&mock)), now()).await,
            Err(TrustError::Invalid(TokenError::AlgNotAllowed))
        ));
    }

    #[tokio::test]
    async fn unknown_issuer_or_unreadable_token() {
        let mock = MockIssuer::start().await.unwrap();
        let t = trusted(&mock, vec![rule(&[("repository", "acme/app")], "w")]);
        let other = with(&mock, |c| c["iss"] = "https://evil.example".into());
        assert!(matches!(
            t.verify(&other, now()).await,
            Err(TrustError::UnknownIssuer)
        ));
        let no_iss = with(&mock, |c| {
            c.as_object_mut().unwrap().remove("iss");
        });
        let dup_iss = format!(
            "e30.{}.sig",
            dpop_test::b64url(format!(r#"{{"iss":"{0}","iss":"{0}"}}"#, mock.url()).as_bytes())
        );
        for token in [
            no_iss.as_str(),
            dup_iss.as_str(),
            "",
            "a.b",
            "a.b.c.d",
            "a.!!!.c",
            &"a".repeat(MAX_TOKEN_BYTES + 1),
        ] {
            assert!(matches!(
                t.verify(token, now()).await,
                Err(TrustError::UnknownIssuer)
            ));
        }
        // Nothing was fetched for any of them.
        assert_eq!(mock.jwks_fetches(), 0);
        assert!(TrustedIssuers::new(Vec::new(), http()).unwrap().is_empty());
    }

    #[tokio::test]
    async fn expired_and_too_long_lived() {
        let mock = MockIssuer::start().await.unwrap();
        let t = trusted(&mock, vec![rule(&[("repository", "acme/app")], "w")]);
        assert!(matches!(
            t.verify(&with(&mock, |c| c["exp"] = (NOW - 60).into()), now())
                .await,
            Err(TrustError::Invalid(TokenError::Expired { .. }))
        ));
        // exp - iat = 3601 > 3600.
        assert!(matches!(
            t.verify(&with(&mock, |c| c["exp"] = (NOW + 3601).into()), now())
                .await,
            Err(TrustError::TooLongLived)
        ));
        // Old iat, long-lived token still in its validity window.
        assert!(matches!(
            t.verify(
                &with(&mock, |c| {
                    c["iat"] = (NOW - 7200).into();
                    c["nbf"] = (NOW - 7200).into();
                }),
                now()
            )
            .await,
            Err(TrustError::TooLongLived)
        ));
        // Exactly the maximum is accepted.
        t.verify(&with(&mock, |c| c["exp"] = (NOW + 3600).into()), now())
            .await
            .unwrap();
        // Without iat the lifetime is unknown: refused.
        assert!(matches!(
            t.verify(
                &with(&mock, |c| {
                    c.as_object_mut().unwrap().remove("iat");
                }),
                now()
            )
            .await,
            Err(TrustError::Invalid(TokenError::MissingClaim("iat")))
        ));
    }

    #[tokio::test]
    async fn bad_signature_with_the_same_kid() {
        let mock = MockIssuer::start().await.unwrap();
        let t = trusted(&mock, vec![rule(&[("repository", "acme/app")], "w")]);
        let forger = PrivateKey::generate(Algorithm::Es256).unwrap();
        let forged = dpop_test::sign_compact(
            &forger,
            &json!({"alg": "ES256", "typ": "JWT", "kid": mock.kid()}),
            &claims(&mock),
        )
        .unwrap();
        assert!(matches!(
            t.verify(&forged, now()).await,
            Err(TrustError::Invalid(TokenError::SignatureInvalid))
        ));
    }

    #[tokio::test]
    async fn rotation_is_picked_up_on_unknown_kid_at_most_every_30_s() {
        let mock = MockIssuer::start().await.unwrap();
        let t = trusted(&mock, vec![rule(&[("repository", "acme/app")], "w")]);
        t.verify(&sign(&mock, &claims(&mock)), now()).await.unwrap();
        assert_eq!(mock.jwks_fetches(), 1);

        // A new key right after a fetch: the refresh is rate-limited.
        mock.rotate_key_and_drop_old();
        let rotated = sign(&mock, &claims(&mock));
        assert!(matches!(
            t.verify(&rotated, now()).await,
            Err(TrustError::Invalid(TokenError::UnknownKey))
        ));
        assert_eq!(mock.jwks_fetches(), 1);

        // 30 s later the unknown kid triggers one refresh, and the token verifies.
        advance(31).await;
        t.verify(&rotated, now()).await.unwrap();
        assert_eq!(mock.jwks_fetches(), 2);

        // Another unknown kid within 30 s does not fetch again (random kids cannot
        // hammer the issuer), whether the kid is real or not.
        mock.rotate_key();
        let rotated_again = sign(&mock, &claims(&mock));
        let random_kid = sign_with_kid(&mock, "no-such-key", &claims(&mock));
        for token in [&rotated_again, &random_kid, &rotated_again] {
            assert!(matches!(
                t.verify(token, now()).await,
                Err(TrustError::Invalid(TokenError::UnknownKey))
            ));
        }
        assert_eq!(mock.jwks_fetches(), 2);
        // Known keys keep working meanwhile.
        t.verify(&rotated, now()).await.unwrap();
        advance(31).await;
        t.verify(&rotated_again, now()).await.unwrap();
        assert_eq!(mock.jwks_fetches(), 3);
    }

    #[tokio::test]
    async fn keys_are_refreshed_after_five_minutes() {
        let mock = MockIssuer::start().await.unwrap();
        let t = trusted(&mock, vec![rule(&[("repository", "acme/app")], "w")]);
        let token = sign(&mock, &claims(&mock));
        t.verify(&token, now()).await.unwrap();
        advance(299).await;
        t.verify(&token, now()).await.unwrap();
        assert_eq!(mock.jwks_fetches(), 1);
        advance(2).await;
        t.verify(&token, now()).await.unwrap();
        assert_eq!(mock.jwks_fetches(), 2);
    }

    #[tokio::test]
    async fn concurrent_first_use_fetches_once() {
        let mock = MockIssuer::start().await.unwrap();
        let t = trusted(&mock, vec![rule(&[("repository", "acme/app")], "w")]);
        let token = sign(&mock, &claims(&mock));
        let (a, b, c, d) = tokio::join!(
            t.verify(&token, now()),
            t.verify(&token, now()),
            t.verify(&token, now()),
            t.verify(&token, now())
        );
        for r in [a, b, c, d] {
            r.unwrap();
        }
        assert_eq!(mock.jwks_fetches(), 1);
    }

    #[tokio::test]
    async fn jwks_endpoint_down_is_unavailable() {
        // The issuer is gone before the first fetch.
        let mock = MockIssuer::start().await.unwrap();
        let token = sign(&mock, &claims(&mock));
        let t = trusted(&mock, vec![rule(&[("repository", "acme/app")], "w")]);
        drop(mock);
        let err = t.verify(&token, now()).await.unwrap_err();
        let TrustError::Unavailable(msg) = &err else {
            panic!("{err:?}");
        };
        assert!(
            msg.contains("trust \"ci\"") && msg.contains("cannot discover"),
            "{msg}"
        );
        // Retried only after a pause; meanwhile the same error, without a request.
        let err = t.verify(&token, now()).await.unwrap_err();
        assert!(
            matches!(&err, TrustError::Unavailable(m) if m.contains("cannot discover") && m.contains("retrying")),
            "{err:?}"
        );

        // A configured jwks_uri that answers 404.
        let mock = MockIssuer::start().await.unwrap();
        let mut c = config(mock.url(), vec![rule(&[("repository", "acme/app")], "w")]);
        c.jwks_uri = Some(format!("{}/no-such-path", mock.url()));
        let t = TrustedIssuers::new(vec![c], http()).unwrap();
        let err = t
            .verify(&sign(&mock, &claims(&mock)), now())
            .await
            .unwrap_err();
        let TrustError::Unavailable(msg) = &err else {
            panic!("{err:?}");
        };
        assert!(msg.contains("404"), "{msg}");
        // A configured jwks_uri is used as is (no discovery).
        let mut c = config(mock.url(), vec![rule(&[("repository", "acme/app")], "w")]);
        c.jwks_uri = Some(mock.jwks_uri());
        let t = TrustedIssuers::new(vec![c], http()).unwrap();
        t.verify(&sign(&mock, &claims(&mock)), now()).await.unwrap();
    }

    #[tokio::test]
    async fn stale_keys_survive_an_unreachable_issuer() {
        let mock = MockIssuer::start().await.unwrap();
        let t = trusted(&mock, vec![rule(&[("repository", "acme/app")], "w")]);
        let token = sign(&mock, &claims(&mock));
        t.verify(&token, now()).await.unwrap();
        drop(mock);
        advance(301).await;
        // The refresh fails; the keys we have still verify.
        t.verify(&token, now()).await.unwrap();
        assert!(
            t.trusts[0].jwks.last_error().await.is_some(),
            "a refresh was attempted"
        );
    }

    #[test]
    fn validate_messages() {
        let base = || {
            config(
                "https://token.actions.githubusercontent.com",
                vec![rule(&[("repository", "acme/app")], "w")],
            )
        };
        base().validate().unwrap();
        let err = |f: &dyn Fn(&mut TrustConfig)| {
            let mut c = base();
            f(&mut c);
            c.validate().unwrap_err()
        };
        assert_eq!(
            err(&|c| c.name = " ".into()),
            "a trust (issuer \"https://token.actions.githubusercontent.com\") has an empty name"
        );
        assert_eq!(
            err(&|c| c.issuer = "http://gitlab.example.com".into()),
            "trust \"ci\": issuer \"http://gitlab.example.com\" must use https (http is accepted only for 127.0.0.1, localhost and [::1])"
        );
        assert!(
            err(&|c| c.issuer = "not a url".into())
                .starts_with("trust \"ci\": issuer \"not a url\" is not a URL")
        );
        assert_eq!(
            err(&|c| c.issuer = "ftp://x.example".into()),
            "trust \"ci\": issuer \"ftp://x.example\" has scheme \"ftp\", not https"
        );
        assert_eq!(
            err(&|c| c.issuer = "https://x.example/?a=b".into()),
            "trust \"ci\": issuer \"https://x.example/?a=b\" must not have a query"
        );
        assert_eq!(
            err(&|c| c.issuer = "https://u:p@x.example".into()),
            "trust \"ci\": issuer \"https://u:p@x.example\" must not contain credentials"
        );
        assert_eq!(
            err(&|c| c.jwks_uri = Some("http://10.0.0.1/jwks".into())),
            "trust \"ci\": jwks_uri \"http://10.0.0.1/jwks\" must use https (http is accepted only for 127.0.0.1, localhost and [::1])"
        );
        assert_eq!(
            err(&|c| c.jwks_uri = Some("https://x.example/jwks#k".into())),
            "trust \"ci\": jwks_uri \"https://x.example/jwks#k\" must not have a fragment"
        );
        assert_eq!(
            err(&|c| c.audience = String::new()),
            "trust \"ci\": audience is empty"
        );
        assert_eq!(
            err(&|c| c.algorithms = Some(vec!["ES256".into(), "HS256".into()])),
            "trust \"ci\": unknown or forbidden algorithm \"HS256\" (asymmetric JWS names such as RS256, ES256, EdDSA)"
        );
        assert_eq!(
            err(&|c| c.algorithms = Some(Vec::new())),
            "trust \"ci\": algorithms is empty (omit it for the defaults)"
        );
        assert_eq!(
            err(&|c| c.max_lifetime_secs = 0),
            "trust \"ci\": max_lifetime_secs is 0, must be between 1 and 86400"
        );
        assert_eq!(
            err(&|c| c.max_lifetime_secs = 86_401),
            "trust \"ci\": max_lifetime_secs is 86401, must be between 1 and 86400"
        );
        assert_eq!(
            err(&|c| c.rules.clear()),
            "trust \"ci\": has no rules (at least one [[trust.rules]] is needed)"
        );
        assert_eq!(
            err(&|c| c.rules.push(rule(&[], "w2"))),
            "trust \"ci\": rule 2: workload \"w2\": claims is empty (a rule must constrain the subject token)"
        );
        assert_eq!(
            err(&|c| c.rules[0].workload = " ".into()),
            "trust \"ci\": rule 1: workload is empty"
        );
        assert_eq!(
            err(&|c| c.rules[0] = rule(&[("repository", "*"), ("ref", "**")], "w")),
            "trust \"ci\": rule 1: workload \"w\": every claim pattern is a bare wildcard, which matches any token of the issuer"
        );
        assert_eq!(
            err(&|c| c.rules[0] = rule(&[("/a~b", "x")], "w")),
            "trust \"ci\": rule 1: workload \"w\": claim \"/a~b\" is not a JSON pointer: `~` must be followed by 0 or 1 (RFC 6901)"
        );
        assert_eq!(
            err(&|c| c.rules[0].scopes = vec!["read write".into()]),
            "trust \"ci\": rule 1: workload \"w\": scope \"read write\" is not a scope token (RFC 6749 §3.3)"
        );
        assert_eq!(
            err(&|c| c.rules[0].audiences = vec![String::new()]),
            "trust \"ci\": rule 1: workload \"w\": an audience is empty"
        );
        assert_eq!(
            err(&|c| c.rules[0].clients = vec![String::new()]),
            "trust \"ci\": rule 1: workload \"w\": a client id is empty"
        );
        // Loopback http is fine (local issuers, tests).
        for issuer in [
            "http://127.0.0.1:8080",
            "http://localhost",
            "http://[::1]:9000/x",
        ] {
            let mut c = base();
            c.issuer = issuer.into();
            c.validate().unwrap();
        }
    }

    #[test]
    fn duplicate_names_or_issuers_are_refused() {
        let a = config("https://a.example", vec![rule(&[("sub", "x")], "w")]);
        let mut b = config("https://b.example", vec![rule(&[("sub", "x")], "w")]);
        assert_eq!(
            TrustedIssuers::new(vec![a.clone(), b.clone()], http()).unwrap_err(),
            "trust \"ci\" is defined twice"
        );
        b.name = "other".into();
        TrustedIssuers::new(vec![a.clone(), b.clone()], http()).unwrap();
        b.issuer = a.issuer.clone();
        assert_eq!(
            TrustedIssuers::new(vec![a, b], http()).unwrap_err(),
            "trust \"other\": issuer \"https://a.example\" is already trusted by another entry"
        );
    }

    #[test]
    fn toml_tables_parse_with_defaults() {
        #[derive(Debug, Deserialize)]
        struct File {
            trust: Vec<TrustConfig>,
        }
        let file: File = toml::from_str(
            r#"
            [[trust]]
            name = "github"
            issuer = "https://token.actions.githubusercontent.com"
            audience = "https://issuer.example.com"

            [[trust.rules]]
            claims = { repository = "acme/app", ref = "refs/tags/v*" }
            workload = "acme-app-release"
            scopes = ["deploy"]

            [[trust]]
            name = "k8s"
            issuer = "https://kubernetes.default.svc"
            jwks_uri = "https://10.0.0.1:6443/openid/v1/jwks"
            audience = "https://issuer.example.com"
            algorithms = ["RS256"]
            max_lifetime_secs = 7200

            [[trust.rules]]
            claims = { "/kubernetes.io/namespace" = "prod" }
            workload = "prod-deployer"
            scopes = ["deploy", "read"]
            audiences = ["https://api.example.com"]
            clients = ["ci"]
            outlive_subject = true
            "#,
        )
        .unwrap();
        let [gh, k8s] = file.trust.as_slice() else {
            panic!("two trusts");
        };
        assert_eq!(gh.max_lifetime_secs, 3600);
        assert_eq!(gh.jwks_uri, None);
        assert_eq!(gh.algorithms, None);
        assert!(gh.rules[0].audiences.is_empty() && gh.rules[0].clients.is_empty());
        assert_eq!(k8s.max_lifetime_secs, 7200);
        assert_eq!(k8s.rules[0].clients, vec!["ci"]);
        assert!(!gh.rules[0].outlive_subject && k8s.rules[0].outlive_subject);
        let t = TrustedIssuers::new(file.trust.clone(), http()).unwrap();
        assert_eq!(
            t.trusts[0].validation.algorithms,
            DEFAULT_TRUST_ALGORITHMS.to_vec()
        );
        assert_eq!(t.trusts[1].validation.algorithms, vec![Algorithm::Rs256]);
        // Unknown fields are refused.
        let typo = toml::from_str::<File>(
            r#"
            [[trust]]
            name = "x"
            issuer = "https://x.example"
            audience = "a"
            max_lifetime = 10
            rules = []
            "#,
        );
        assert!(typo.unwrap_err().to_string().contains("max_lifetime"));
    }
}
