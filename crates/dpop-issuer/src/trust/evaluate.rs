//! One trust at run time: a subject token verified against the issuer's keys (fetched
//! and cached by dpop-discovery), its lifetime bounded, and its claims evaluated by the
//! rules in order into the [`ExternalSubject`] the first matching rule grants.

use std::fmt;

use dpop_core::jwt::{self, JwtValidation, TokenError, VerifiedJwt};
use dpop_core::{Jkt, UnixTime};
use dpop_discovery::{JwksError, RemoteJwks};
use serde_json::Value;

use super::rules::Rule;

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
    /// ([`TrustRule::outlive_subject`](super::TrustRule::outlive_subject)).
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
pub(super) struct Trust {
    pub(super) name: String,
    /// In canonical form ([`dpop_discovery::IssuerUrl::as_str`]).
    pub(super) issuer: String,
    pub(super) validation: JwtValidation,
    pub(super) max_lifetime: u64,
    pub(super) rules: Vec<Rule>,
    /// The issuer's keys, fetched and cached.
    pub(super) jwks: RemoteJwks,
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
    pub(super) async fn verify_signed(
        &self,
        token: &str,
        now: UnixTime,
    ) -> Result<VerifiedJwt, TrustError> {
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
    pub(super) fn evaluate(&self, token: &VerifiedJwt) -> Result<ExternalSubject, TrustError> {
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
            .find(|rule| rule.matches(&token.claims))
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
