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
//!
//! The `[[trust]]` tables are `config`, the claim patterns `rules`, one token checked
//! against one trust `evaluate`; this module builds the trusts and routes each token to
//! its own.

mod config;
mod evaluate;
mod rules;
#[cfg(test)]
mod tests;

use std::collections::BTreeSet;
use std::fmt;
use std::time::Duration;

use dpop_core::UnixTime;
use dpop_core::jwt::{self, JwtValidation, MAX_TOKEN_BYTES, TypPolicy};
use dpop_discovery::{Fetcher, JwksTimings, KeySource, RemoteJwks};

pub use self::config::{TrustConfig, TrustRule};
pub use self::evaluate::{ExternalSubject, TrustError};

use self::config::Compiled;
use self::evaluate::Trust;

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
