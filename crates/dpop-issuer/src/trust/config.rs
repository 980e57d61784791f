//! The `[[trust]]` tables of the configuration: [`TrustConfig`] and its [`TrustRule`]s,
//! deserialised from TOML and checked (everything that can be checked without the
//! network) into the issuer URL, key location, algorithms and compiled rules.

use std::collections::BTreeMap;

use dpop_core::Algorithm;
use dpop_discovery::{EndpointUrl, IssuerUrl, UrlError};
use serde::Deserialize;

use super::rules::{ClaimPath, Rule};

/// Upper bound of [`TrustConfig::max_lifetime_secs`].
const MAX_LIFETIME_LIMIT_SECS: u64 = 86_400;
/// Accepted `alg` values when a trust names none.
pub(super) const DEFAULT_TRUST_ALGORITHMS: [Algorithm; 5] = [
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
    pub(super) fn compile(&self) -> Result<Compiled, String> {
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
pub(super) struct Compiled {
    pub(super) issuer: IssuerUrl,
    pub(super) jwks_uri: Option<EndpointUrl>,
    pub(super) algorithms: Vec<Algorithm>,
    pub(super) rules: Vec<Rule>,
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
