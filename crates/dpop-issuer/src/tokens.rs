//! Minting RFC 9068 access tokens and refresh tokens; reading our own tokens back.

use std::sync::Arc;
use std::time::Duration;

use aws_lc_rs::digest;
use dpop_core::jwt::{JwtValidation, TokenError, TypPolicy, VerifiedJwt, verify_jwt};
use dpop_core::{Jkt, UnixTime};
use serde_json::{Value, json};

use crate::error::{OAuthError, StoreError};
use crate::keys::b64;
use crate::state::IssuerState;
use crate::store::Origin;

/// Prefix of refresh tokens, so scanners and people can tell them from access tokens.
pub(crate) const REFRESH_PREFIX: &str = "dpoprt_";

/// The private claim recording an access token's [`Lineage`].
pub(crate) const LINEAGE_CLAIM: &str = "lineage";

/// The member of the `lineage` claim marking a token that ends with its subject token.
const ENDS_WITH_SUBJECT: &str = "ends_with_subject";

/// The longest chain of exchanges a token may result from: it bounds the size of the
/// token (`act` and the lineage grow with each step) and the checks made at each use.
pub(crate) const MAX_LINEAGE: usize = 8;

/// Where an access token comes from, so that revoking any of it reaches the token at
/// once (introspection): the refresh family it was issued from, and the tokens it was
/// derived from by exchanging this issuer's own tokens, oldest first. Signed into the
/// token as the `lineage` claim, omitted when empty.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Lineage {
    pub(crate) family: Option<String>,
    pub(crate) from: Vec<Origin>,
    /// The token must end with a subject token it derives from: one of a trusted issuer
    /// whose rule does not set `outlive_subject`, or a Bearer token. Whatever is
    /// exchanged from it inherits this and never starts a refresh grant, however many
    /// exchanges later (each exchange already caps `exp` at its subject's). Signed as
    /// `"ends_with_subject": true`, since nothing else in the token records it.
    pub(crate) ends_with_subject: bool,
}

impl Lineage {
    fn is_empty(&self) -> bool {
        self.family.is_none() && self.from.is_empty() && !self.ends_with_subject
    }

    fn to_claim(&self) -> Value {
        let from: Vec<Value> = self
            .from
            .iter()
            .map(|o| {
                let mut v = json!({ "client_id": o.client_id, "iat": o.issued_at, "jti": o.jti });
                if let (Some(m), Some(f)) = (v.as_object_mut(), &o.family_id) {
                    m.insert("family".to_owned(), f.as_str().into());
                }
                v
            })
            .collect();
        let mut claim = json!({ "from": from });
        if let Some(m) = claim.as_object_mut() {
            if let Some(f) = &self.family {
                m.insert("family".to_owned(), f.as_str().into());
            }
            if self.ends_with_subject {
                m.insert(ENDS_WITH_SUBJECT.to_owned(), true.into());
            }
        }
        claim
    }

    /// The lineage of a verified token of ours (empty without the claim); `None` when
    /// the claim is malformed, which a token this issuer signed never is.
    pub(crate) fn of(jwt: &VerifiedJwt) -> Option<Self> {
        let Some(claim) = jwt.claims.get(LINEAGE_CLAIM) else {
            return Some(Self::default());
        };
        let family = match claim.get("family") {
            None => None,
            Some(f) => Some(f.as_str()?.to_owned()),
        };
        let mut from = Vec::new();
        for o in claim.get("from")?.as_array()? {
            let family_id = match o.get("family") {
                None => None,
                Some(f) => Some(f.as_str()?),
            };
            from.push(Origin::new(
                o.get("client_id")?.as_str()?,
                o.get("iat")?.as_i64()?,
                o.get("jti")?.as_str()?,
                family_id,
            ));
        }
        if from.len() > MAX_LINEAGE {
            return None;
        }
        let ends_with_subject = match claim.get(ENDS_WITH_SUBJECT) {
            None => false,
            Some(v) => v.as_bool()?,
        };
        Some(Self {
            family,
            from,
            ends_with_subject,
        })
    }
}

/// Whether a client a token or grant derives from is no longer in the configuration.
/// Removing a client offboards it as disabling it does: its tokens and whatever derives
/// from them end. Only client ids are checked: a trusted issuer's workload is a `sub`,
/// never an ancestor's client.
pub(crate) fn unregistered(state: &IssuerState, lineage: &[Origin]) -> bool {
    lineage
        .iter()
        .any(|o| !state.config.clients.contains_key(&o.client_id))
}

/// The claims a token of ours that was verified carries about itself, as an ancestor of
/// the tokens exchanged from it.
pub(crate) fn origin_of(jwt: &VerifiedJwt, lineage: &Lineage) -> Option<Origin> {
    Some(Origin::new(
        jwt.str_claim("client_id")?,
        jwt.claims.get("iat")?.as_i64()?,
        jwt.str_claim("jti")?,
        lineage.family.as_deref(),
    ))
}

/// What an access token says.
#[derive(Debug, Clone)]
pub(crate) struct Grant<'a> {
    pub(crate) client_id: &'a str,
    pub(crate) subject: &'a str,
    pub(crate) scopes: &'a [String],
    pub(crate) audiences: &'a [String],
    pub(crate) jkt: Option<&'a Jkt>,
    /// RFC 8693 §4.1 `act` (delegation chain).
    pub(crate) act: Option<Value>,
    pub(crate) lifetime: Duration,
    pub(crate) lineage: &'a Lineage,
}

pub(crate) fn sha256_b64(bytes: &[u8]) -> String {
    b64(digest::digest(&digest::SHA256, bytes).as_ref())
}

/// A random identifier (128 bits, base64url).
pub(crate) fn random_id() -> Result<String, OAuthError> {
    crate::random::random_bytes::<16>()
        .map(|b| b64(&b))
        .map_err(|e| OAuthError::server_error(&e))
}

/// Signs an access token for `grant`; returns it with its `jti`. A key that cannot sign
/// fails the request with `temporarily_unavailable`; no other key signs in its place.
pub(crate) async fn mint_access_token(
    state: &IssuerState,
    grant: &Grant<'_>,
    now: UnixTime,
) -> Result<(String, String), OAuthError> {
    let jti = random_id()?;
    let aud: Value = match grant.audiences {
        [one] => one.as_str().into(),
        many => many.iter().map(|a| Value::from(a.as_str())).collect(),
    };
    let mut claims = json!({
        "iss": state.config.issuer,
        "sub": grant.subject,
        "aud": aud,
        "iat": now.as_secs(),
        "exp": now.saturating_add(grant.lifetime).as_secs(),
        "jti": jti,
        "client_id": grant.client_id,
    });
    if let Some(o) = claims.as_object_mut() {
        if !grant.scopes.is_empty() {
            o.insert("scope".to_owned(), grant.scopes.join(" ").into());
        }
        if let Some(jkt) = grant.jkt {
            o.insert("cnf".to_owned(), json!({ "jkt": jkt.as_str() }));
        }
        if let Some(act) = &grant.act {
            o.insert("act".to_owned(), act.clone());
        }
        if !grant.lineage.is_empty() {
            o.insert(LINEAGE_CLAIM.to_owned(), grant.lineage.to_claim());
        }
    }
    let signer = state.keys.current().signing(now).map(Arc::clone);
    let Some(signer) = signer else {
        // Every key held here retired with no successor (a configured key that a
        // rotation retired: the key loader logged why).
        tracing::error!(target: "dpop::issuer", "no signing key: no token can be issued");
        return Err(key_unavailable());
    };
    let kid = signer.kid.clone();
    let token = signer.sign(claims).await.map_err(|e| {
        // The cause names the key and the device's error code, never a PIN.
        tracing::error!(target: "dpop::issuer", kid, error = %e.0, "the signing key failed to sign");
        key_unavailable()
    })?;
    Ok((token, jti))
}

fn key_unavailable() -> OAuthError {
    OAuthError::new(
        crate::error::RfcError::TemporarilyUnavailable,
        "the authorization server cannot sign tokens now; retry later",
    )
}

/// A new refresh token value and the hash it is stored under.
pub(crate) fn new_refresh_token() -> Result<(String, String), OAuthError> {
    let bytes = crate::random::random_bytes::<32>().map_err(|e| OAuthError::server_error(&e))?;
    let token = format!("{REFRESH_PREFIX}{}", b64(&bytes));
    let hash = refresh_hash(&token);
    Ok((token, hash))
}

/// The stored hash of a refresh token value.
pub(crate) fn refresh_hash(token: &str) -> String {
    sha256_b64(token.as_bytes())
}

/// Why one of our access tokens is not active.
#[derive(Debug)]
pub(crate) enum Inactive {
    /// Not ours, malformed, badly signed or expired.
    Invalid(TokenError),
    /// Revoked, or its client was offboarded.
    Revoked,
    /// The database did not answer.
    Store(StoreError),
}

/// Verifies one of our own access tokens and checks that neither it nor anything it
/// derives from (its client, its refresh family, the tokens it was exchanged from and
/// their clients and families) was revoked.
pub(crate) async fn verify_own(
    state: &IssuerState,
    token: &str,
    now: UnixTime,
) -> Result<VerifiedJwt, Inactive> {
    let mut validation = JwtValidation::new(&state.config.issuer, None);
    validation.typ = TypPolicy::AtJwt;
    validation.algorithms = vec![dpop_core::Algorithm::Es256, dpop_core::Algorithm::EdDsa];
    let jwt = match verify_jwt(token, &state.keys.current().jwks, &validation, now) {
        Err(TokenError::UnknownKey) => {
            // Signed by a key published since the last reload (another instance's new
            // key): re-read the key table, once, if the key is really published.
            let kid = dpop_core::jwt::UnverifiedJwt::parse(token)
                .ok()
                .and_then(|j| j.kid().map(str::to_owned))
                .unwrap_or_default();
            if kid.is_empty()
                || state.keys.knows(&kid)
                || !state
                    .store
                    .key_is_published(&kid, now)
                    .await
                    .map_err(Inactive::Store)?
            {
                return Err(Inactive::Invalid(TokenError::UnknownKey));
            }
            state
                .keys
                .reload(&state.store, now)
                .await
                .map_err(|e| Inactive::Store(StoreError(e.to_string())))?;
            verify_jwt(token, &state.keys.current().jwks, &validation, now)
        }
        other => other,
    }
    .map_err(Inactive::Invalid)?;
    // The leeway above is for clock skew between instances (`iat`); `exp` is ours, so
    // a token is expired from its `exp` on, not 30 s later (RFC 7662 §2.2).
    if jwt.expires_at <= now {
        return Err(Inactive::Invalid(TokenError::Expired {
            exp: jwt.expires_at,
            now,
        }));
    }
    let jti = jwt.str_claim("jti").unwrap_or("");
    if jti.is_empty() {
        return Err(Inactive::Invalid(TokenError::MissingClaim("jti")));
    }
    if state
        .store
        .is_access_token_revoked(jti)
        .await
        .map_err(Inactive::Store)?
    {
        return Err(Inactive::Revoked);
    }
    let client = jwt.str_claim("client_id").unwrap_or("");
    // A client removed from the configuration counts as disabled.
    if !state.config.clients.contains_key(client) {
        return Err(Inactive::Revoked);
    }
    let client_state = state
        .store
        .client_state(client)
        .await
        .map_err(Inactive::Store)?;
    let iat = jwt.claims.get("iat").and_then(Value::as_i64).unwrap_or(0);
    if client_state.tokens_invalid_before.is_some_and(|t| iat <= t)
        || client_state.disabled_at.is_some()
    {
        return Err(Inactive::Revoked);
    }
    let lineage =
        Lineage::of(&jwt).ok_or(Inactive::Invalid(TokenError::ClaimInvalid(LINEAGE_CLAIM)))?;
    if unregistered(state, &lineage.from)
        || state
            .store
            .lineage_revoked(lineage.family.as_deref(), &lineage.from)
            .await
            .map_err(Inactive::Store)?
    {
        return Err(Inactive::Revoked);
    }
    Ok(jwt)
}
