//! JWT access tokens (RFC 9068 `at+jwt`, and plain JWTs): verification against a JWK
//! set, sans-I/O. Fetching the JWK set (RFC 8414 metadata, `jwks_uri`) is the adapter's
//! job; this module only judges bytes.
//!
//! The same strictness as for proofs applies: duplicate JSON members refused, `none`
//! and MAC algorithms not representable, the key's type must fit `alg`, `crit` refused,
//! size bounded before parsing. `aud` is required (RFC 9068 §4), as are `iss` and `exp`.

use core::fmt;
use core::time::Duration;

use crate::alg::{AlgName, Algorithm, DEFAULT_ALGORITHMS};
use crate::b64;
use crate::json::{self, Json, JsonError, Number, Object};
use crate::jwk::{Jkt, JwkError, PublicJwk};
use crate::time::UnixTime;

/// Largest JWK set accepted.
pub const MAX_JWKS_BYTES: usize = 256 * 1024;
/// Most keys kept from one JWK set.
pub const MAX_JWKS_KEYS: usize = 64;

/// Why an access token or a JWK set was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum TokenError {
    /// Not a compact JWS with JSON header and claims (the detail says which part).
    Malformed(&'static str),
    /// The header `typ` is not acceptable under the [`TypPolicy`].
    TypInvalid,
    /// `alg` is not on the allow-list (or is `none` / a MAC).
    AlgNotAllowed,
    /// No key in the set has the token's `kid` (or fits its `alg`): refresh the set.
    UnknownKey,
    /// The signature does not verify.
    SignatureInvalid,
    /// `iss` is not the expected issuer.
    IssuerMismatch,
    /// `aud` does not contain the expected audience.
    AudienceMismatch,
    /// `exp` has passed.
    Expired {
        /// The token's `exp`.
        exp: UnixTime,
        /// Server time.
        now: UnixTime,
    },
    /// `nbf` (or `iat`) is in the future.
    NotYetValid,
    /// A required claim is missing.
    MissingClaim(&'static str),
    /// A claim has the wrong type or value.
    ClaimInvalid(&'static str),
    /// Introspection answered `active: false` (revoked, expired or unknown token).
    Inactive,
    /// The JWK set is unusable.
    JwksInvalid(&'static str),
}

impl fmt::Display for TokenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Malformed(what) => write!(f, "the access token is not a well-formed JWT: {what}"),
            Self::TypInvalid => f.write_str("the access token typ is not at+jwt (RFC 9068)"),
            Self::AlgNotAllowed => f.write_str("the access token alg is not accepted"),
            Self::UnknownKey => {
                f.write_str("no key of the issuer's JWK set matches the access token kid")
            }
            Self::SignatureInvalid => f.write_str("the access token signature does not verify"),
            Self::IssuerMismatch => f.write_str("the access token iss is not the expected issuer"),
            Self::AudienceMismatch => {
                f.write_str("the access token aud does not include this resource")
            }
            Self::Expired { exp, now } => {
                write!(f, "the access token expired at {exp} (server time {now})")
            }
            Self::NotYetValid => {
                f.write_str("the access token is not valid yet (nbf/iat in the future)")
            }
            Self::MissingClaim(c) => write!(f, "the access token has no {c} claim"),
            Self::ClaimInvalid(c) => write!(f, "the access token claim {c} is invalid"),
            Self::Inactive => {
                f.write_str("the access token is not active (revoked, expired or unknown)")
            }
            Self::JwksInvalid(why) => write!(f, "the issuer's JWK set is unusable: {why}"),
        }
    }
}

impl std::error::Error for TokenError {}

/// Which `typ` header values are accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum TypPolicy {
    /// RFC 9068 strict: `at+jwt` or `application/at+jwt` (case-insensitive).
    AtJwt,
    /// `at+jwt`, `JWT`, or no `typ` (many servers issue plain JWT access tokens). Other
    /// explicit types (`dpop+jwt`, ID tokens' `JWT`-less types…) are still refused.
    AtJwtOrJwt,
}

/// The public keys of an issuer (its `jwks_uri` document).
#[derive(Clone, Debug, Default)]
pub struct JwkSet {
    keys: Vec<(Option<String>, PublicJwk)>,
    skipped: usize,
}

impl JwkSet {
    /// Parses a JWK set. Keys this crate cannot use for signatures (encryption keys,
    /// unsupported types or curves, small RSA keys) are skipped and counted; a key with
    /// private members makes the whole set invalid (the issuer is leaking keys).
    ///
    /// # Errors
    /// [`TokenError::JwksInvalid`] for bad JSON, no `keys` array, private keys, or too many keys.
    pub fn from_json(text: &str) -> Result<Self, TokenError> {
        if text.len() > MAX_JWKS_BYTES {
            return Err(TokenError::JwksInvalid("larger than 256 KiB"));
        }
        let o = json::parse_object(text.as_bytes())
            .map_err(|_| TokenError::JwksInvalid("not a JSON object without duplicate members"))?;
        let Some(Json::Array(keys)) = o.get("keys") else {
            return Err(TokenError::JwksInvalid("no keys array"));
        };
        if keys.len() > MAX_JWKS_KEYS {
            return Err(TokenError::JwksInvalid("more than 64 keys"));
        }
        let mut set = Self::default();
        for key in keys {
            let Json::Object(k) = key else {
                set.skipped += 1;
                continue;
            };
            match PublicJwk::from_object(k) {
                Ok(jwk) => {
                    let kid = k.get("kid").and_then(Json::as_str).map(str::to_owned);
                    set.keys.push((kid, jwk));
                }
                Err(JwkError::PrivateMember(_)) => {
                    return Err(TokenError::JwksInvalid("it contains private key material"));
                }
                Err(_) => set.skipped += 1,
            }
        }
        Ok(set)
    }

    /// A set of the given keys.
    #[must_use]
    pub fn from_keys(keys: Vec<(Option<String>, PublicJwk)>) -> Self {
        Self { keys, skipped: 0 }
    }

    /// Usable keys.
    #[must_use]
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// No usable key.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Keys skipped as unusable when parsing.
    #[must_use]
    pub fn skipped(&self) -> usize {
        self.skipped
    }

    /// Whether the set has a key with this `kid`.
    #[must_use]
    pub fn has_kid(&self, kid: &str) -> bool {
        self.keys.iter().any(|(k, _)| k.as_deref() == Some(kid))
    }

    /// The key for `kid` that fits `alg`; without a `kid`, the only key that fits. A
    /// known `kid` whose key does not fit `alg` is an algorithm error, not an unknown
    /// key (refreshing the set would not help).
    fn find(&self, kid: Option<&str>, alg: Algorithm) -> Result<&PublicJwk, TokenError> {
        match kid {
            Some(kid) => {
                let mut same_kid = self
                    .keys
                    .iter()
                    .filter(|(k, _)| k.as_deref() == Some(kid))
                    .peekable();
                if same_kid.peek().is_none() {
                    return Err(TokenError::UnknownKey);
                }
                same_kid
                    .find(|(_, j)| j.fits(alg))
                    .map(|(_, j)| j)
                    .ok_or(TokenError::AlgNotAllowed)
            }
            None => {
                let mut fitting = self.keys.iter().filter(|(_, j)| j.fits(alg));
                match (fitting.next(), fitting.next()) {
                    (Some((_, j)), None) => Ok(j),
                    _ => Err(TokenError::UnknownKey),
                }
            }
        }
    }
}

/// What an access token must satisfy.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct TokenValidation {
    /// The expected `iss`, exactly.
    pub issuer: String,
    /// This resource's identifier; `aud` must be it or contain it.
    pub audience: String,
    /// Clock leeway for `exp`, `nbf` and `iat`. Defaults to 30 s.
    pub leeway: Duration,
    /// Accepted signature algorithms. Defaults to ES256, ES384, EdDSA/Ed25519, PS256, RS256.
    pub algorithms: Vec<Algorithm>,
    /// Accepted `typ` values. Defaults to [`TypPolicy::AtJwtOrJwt`].
    pub typ: TypPolicy,
    /// Longest token accepted, checked before parsing. Defaults to 16 KiB.
    pub max_token_bytes: usize,
}

impl TokenValidation {
    /// Validation for tokens from `issuer` meant for `audience`, with the defaults.
    #[must_use]
    pub fn new(issuer: &str, audience: &str) -> Self {
        Self {
            issuer: issuer.to_owned(),
            audience: audience.to_owned(),
            leeway: Duration::from_secs(30),
            algorithms: DEFAULT_ALGORITHMS.to_vec(),
            typ: TypPolicy::AtJwtOrJwt,
            max_token_bytes: 16 * 1024,
        }
    }
}

/// A verified access token's facts.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct AccessToken {
    /// `sub`.
    pub subject: Option<String>,
    /// `client_id`.
    pub client_id: Option<String>,
    /// `scope`, split on spaces.
    pub scopes: Vec<String>,
    /// `cnf.jkt`: the DPoP key the token is bound to, if any.
    pub jkt: Option<Jkt>,
    /// `exp`.
    pub expires_at: UnixTime,
    /// `jti`, if present.
    pub jti: Option<String>,
}

impl AccessToken {
    /// Token facts from another source (e.g. RFC 7662 introspection).
    #[must_use]
    pub fn new(
        subject: Option<String>,
        client_id: Option<String>,
        scopes: Vec<String>,
        jkt: Option<Jkt>,
        expires_at: UnixTime,
    ) -> Self {
        Self {
            subject,
            client_id,
            scopes,
            jkt,
            expires_at,
            jti: None,
        }
    }
}

/// Splits an RFC 6749 §3.3 `scope` value into its scope tokens.
#[must_use]
pub fn split_scope(scope: &str) -> Vec<String> {
    scope
        .split(' ')
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Reads the `kid` of a token's header without verifying anything, so an adapter can
/// decide whether to refresh its JWK set before verifying.
#[must_use]
pub fn peek_kid(token: &str) -> Option<String> {
    let h64 = token.split('.').next()?;
    let header = b64::decode(h64.as_bytes())?;
    let o = json::parse_object(&header).ok()?;
    o.get("kid").and_then(Json::as_str).map(str::to_owned)
}

fn time(o: &Object<'_>, name: &'static str) -> Result<Option<UnixTime>, TokenError> {
    match o.get(name) {
        None => Ok(None),
        Some(Json::Number(Number::U(n))) => Ok(Some(UnixTime::from_secs(*n))),
        Some(Json::Number(Number::F(f))) if f.is_finite() && *f >= 0.0 && *f < 9.0e15 =>
        {
            #[expect(
                clippy::cast_possible_truncation,
                clippy::cast_sign_loss,
                reason = "range checked above"
            )]
            Ok(Some(UnixTime::from_secs(f.trunc() as u64)))
        }
        Some(_) => Err(TokenError::ClaimInvalid(name)),
    }
}

fn opt_string(o: &Object<'_>, name: &'static str) -> Result<Option<String>, TokenError> {
    match o.get(name) {
        None => Ok(None),
        Some(Json::String(s)) => Ok(Some(s.to_string())),
        Some(_) => Err(TokenError::ClaimInvalid(name)),
    }
}

/// Verifies a JWT access token against `keys` and `validation` at `now`.
///
/// # Errors
/// [`TokenError`] naming the first failed check. [`TokenError::UnknownKey`] means the
/// caller should refresh the JWK set (rate-limited) and try once more.
pub fn verify_access_token(
    token: &str,
    keys: &JwkSet,
    validation: &TokenValidation,
    now: UnixTime,
) -> Result<AccessToken, TokenError> {
    if token.len() > validation.max_token_bytes {
        return Err(TokenError::Malformed("longer than the accepted maximum"));
    }
    let mut parts = token.split('.');
    let (Some(h64), Some(p64), Some(s64), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(TokenError::Malformed("expected three dot-separated parts"));
    };
    let header =
        b64::decode(h64.as_bytes()).ok_or(TokenError::Malformed("header is not base64url"))?;
    let payload =
        b64::decode(p64.as_bytes()).ok_or(TokenError::Malformed("payload is not base64url"))?;
    let signature =
        b64::decode(s64.as_bytes()).ok_or(TokenError::Malformed("signature is not base64url"))?;
    let bad_json = |e: JsonError| match e {
        JsonError::Duplicate => TokenError::Malformed("duplicate JSON member"),
        _ => TokenError::Malformed("not a JSON object"),
    };
    let header = json::parse_object(&header).map_err(bad_json)?;
    let claims = json::parse_object(&payload).map_err(bad_json)?;

    let typ_ok = match header.get("typ") {
        None => validation.typ == TypPolicy::AtJwtOrJwt,
        Some(Json::String(t)) => {
            let t = t.to_ascii_lowercase();
            t == "at+jwt"
                || t == "application/at+jwt"
                || (validation.typ == TypPolicy::AtJwtOrJwt && t == "jwt")
        }
        Some(_) => false,
    };
    if !typ_ok {
        return Err(TokenError::TypInvalid);
    }
    let alg = match header
        .get("alg")
        .and_then(Json::as_str)
        .map(Algorithm::classify)
    {
        Some(AlgName::Known(alg)) if validation.algorithms.contains(&alg) => alg,
        Some(_) => return Err(TokenError::AlgNotAllowed),
        None => return Err(TokenError::Malformed("no alg")),
    };
    if header.contains("crit") || header.contains("b64") {
        return Err(TokenError::Malformed("crit and b64 are not supported"));
    }
    let kid = match header.get("kid") {
        None => None,
        Some(Json::String(k)) => Some(k.as_ref()),
        Some(_) => return Err(TokenError::Malformed("kid is not a string")),
    };
    let key = keys.find(kid, alg)?;
    let signing_input = token
        .get(..h64.len() + 1 + p64.len())
        .ok_or(TokenError::Malformed("bounds"))?;
    if !key.verify(alg, signing_input.as_bytes(), &signature) {
        return Err(TokenError::SignatureInvalid);
    }

    // Claims, only after the signature: unauthenticated claims are not worth reading.
    match claims.get("iss") {
        Some(Json::String(iss)) if *iss == validation.issuer => {}
        Some(Json::String(_)) => return Err(TokenError::IssuerMismatch),
        Some(_) => return Err(TokenError::ClaimInvalid("iss")),
        None => return Err(TokenError::MissingClaim("iss")),
    }
    let aud_ok = match claims.get("aud") {
        Some(Json::String(a)) => *a == validation.audience,
        Some(Json::Array(list)) => {
            if !list.iter().all(|a| a.as_str().is_some()) {
                return Err(TokenError::ClaimInvalid("aud"));
            }
            list.iter()
                .any(|a| a.as_str() == Some(validation.audience.as_str()))
        }
        Some(_) => return Err(TokenError::ClaimInvalid("aud")),
        None => return Err(TokenError::MissingClaim("aud")),
    };
    if !aud_ok {
        return Err(TokenError::AudienceMismatch);
    }
    let exp = time(&claims, "exp")?.ok_or(TokenError::MissingClaim("exp"))?;
    if exp.saturating_add(validation.leeway) <= now {
        return Err(TokenError::Expired { exp, now });
    }
    for name in ["nbf", "iat"] {
        if time(&claims, name)?.is_some_and(|t| t > now.saturating_add(validation.leeway)) {
            return Err(TokenError::NotYetValid);
        }
    }
    let jkt = match claims.get("cnf") {
        None => None,
        Some(Json::Object(cnf)) => match cnf.get("jkt") {
            None => None,
            Some(Json::String(j)) => {
                Some(Jkt::parse(j).map_err(|_| TokenError::ClaimInvalid("cnf.jkt"))?)
            }
            Some(_) => return Err(TokenError::ClaimInvalid("cnf.jkt")),
        },
        Some(_) => return Err(TokenError::ClaimInvalid("cnf")),
    };
    let scopes = opt_string(&claims, "scope")?
        .as_deref()
        .map(split_scope)
        .unwrap_or_default();
    Ok(AccessToken {
        subject: opt_string(&claims, "sub")?,
        client_id: opt_string(&claims, "client_id")?,
        scopes,
        jkt,
        expires_at: exp,
        jti: opt_string(&claims, "jti")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::{PrivateKey, Signer as _};
    use serde_json::{Value, json};

    const ISS: &str = "https://as.example.com";
    const AUD: &str = "https://api.example.com";
    const NOW: u64 = 1_700_000_000;

    struct Issuer {
        key: PrivateKey,
        set: JwkSet,
    }

    fn issuer() -> Issuer {
        let key = PrivateKey::generate(Algorithm::Es256).unwrap();
        let mut jwk = key.public_jwk().to_json_value();
        jwk["kid"] = "k1".into();
        let set = JwkSet::from_json(
            &json!({"keys": [jwk, {"kty": "EC", "crv": "P-256", "use": "enc"}]}).to_string(),
        )
        .unwrap();
        Issuer { key, set }
    }

    fn claims() -> Value {
        json!({"iss": ISS, "aud": AUD, "sub": "svc-a", "client_id": "ci", "exp": NOW + 300, "iat": NOW, "scope": "read write",
               "cnf": {"jkt": "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I"}, "jti": "t1"})
    }

    fn mint(i: &Issuer, header: &Value, claims: &Value) -> String {
        let input = format!(
            "{}.{}",
            b64::encode(header.to_string().as_bytes()),
            b64::encode(claims.to_string().as_bytes())
        );
        let sig = i.key.sign(input.as_bytes()).unwrap();
        format!("{input}.{}", b64::encode(&sig))
    }

    fn header() -> Value {
        json!({"alg": "ES256", "typ": "at+jwt", "kid": "k1"})
    }

    fn verify(i: &Issuer, token: &str) -> Result<AccessToken, TokenError> {
        verify_access_token(
            token,
            &i.set,
            &TokenValidation::new(ISS, AUD),
            UnixTime::from_secs(NOW),
        )
    }

    #[test]
    fn valid_token() {
        let i = issuer();
        assert_eq!(i.set.len(), 1);
        assert_eq!(i.set.skipped(), 1);
        let t = verify(&i, &mint(&i, &header(), &claims())).unwrap();
        assert_eq!(t.subject.as_deref(), Some("svc-a"));
        assert_eq!(t.client_id.as_deref(), Some("ci"));
        assert_eq!(t.scopes, vec!["read", "write"]);
        assert_eq!(
            t.jkt.unwrap().as_str(),
            "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I"
        );
        assert_eq!(
            peek_kid(&mint(&i, &header(), &claims())).as_deref(),
            Some("k1")
        );
        // aud as an array; typ JWT or absent under the default policy.
        let mut c = claims();
        c["aud"] = json!(["other", AUD]);
        verify(&i, &mint(&i, &json!({"alg": "ES256", "kid": "k1"}), &c)).unwrap();
        verify(
            &i,
            &mint(
                &i,
                &json!({"alg": "ES256", "typ": "JWT", "kid": "k1"}),
                &claims(),
            ),
        )
        .unwrap();
    }

    #[test]
    fn rejections() {
        let i = issuer();
        let with = |f: &dyn Fn(&mut Value)| {
            let mut c = claims();
            f(&mut c);
            verify(&i, &mint(&i, &header(), &c))
        };
        assert_eq!(
            with(&|c| c["iss"] = "https://evil.example".into()),
            Err(TokenError::IssuerMismatch)
        );
        assert_eq!(
            with(&|c| c["aud"] = "https://other.example".into()),
            Err(TokenError::AudienceMismatch)
        );
        assert_eq!(
            with(&|c| {
                c.as_object_mut().unwrap().remove("aud");
            }),
            Err(TokenError::MissingClaim("aud"))
        );
        assert_eq!(
            with(&|c| {
                c.as_object_mut().unwrap().remove("exp");
            }),
            Err(TokenError::MissingClaim("exp"))
        );
        assert!(matches!(
            with(&|c| c["exp"] = (NOW - 31).into()),
            Err(TokenError::Expired { .. })
        ));
        with(&|c| c["exp"] = (NOW - 29).into()).unwrap();
        assert_eq!(
            with(&|c| c["nbf"] = (NOW + 60).into()),
            Err(TokenError::NotYetValid)
        );
        assert_eq!(
            with(&|c| c["cnf"] = json!({"jkt": "short"})),
            Err(TokenError::ClaimInvalid("cnf.jkt"))
        );
        assert_eq!(
            with(&|c| c["scope"] = json!(["read"])),
            Err(TokenError::ClaimInvalid("scope"))
        );
        let h = |h: Value| verify(&i, &mint(&i, &h, &claims()));
        assert_eq!(
            h(json!({"alg": "ES256", "typ": "dpop+jwt", "kid": "k1"})),
            Err(TokenError::TypInvalid)
        );
        assert_eq!(
            h(json!({"alg": "HS256", "typ": "at+jwt", "kid": "k1"})),
            Err(TokenError::AlgNotAllowed)
        );
        assert_eq!(
            h(json!({"alg": "none", "typ": "at+jwt", "kid": "k1"})),
            Err(TokenError::AlgNotAllowed)
        );
        assert_eq!(
            h(json!({"alg": "ES256", "typ": "at+jwt", "kid": "k2"})),
            Err(TokenError::UnknownKey)
        );
        assert_eq!(
            h(json!({"alg": "ES384", "typ": "at+jwt", "kid": "k1"})),
            Err(TokenError::AlgNotAllowed)
        );
        assert!(matches!(
            h(json!({"alg": "ES256", "typ": "at+jwt", "kid": "k1", "crit": ["x"]})),
            Err(TokenError::Malformed(_))
        ));
        // Strict RFC 9068 policy refuses plain JWTs.
        let mut v = TokenValidation::new(ISS, AUD);
        v.typ = TypPolicy::AtJwt;
        let plain = mint(
            &i,
            &json!({"alg": "ES256", "typ": "JWT", "kid": "k1"}),
            &claims(),
        );
        assert_eq!(
            verify_access_token(&plain, &i.set, &v, UnixTime::from_secs(NOW)),
            Err(TokenError::TypInvalid)
        );
        // Another signer with the same kid.
        let forger = issuer();
        assert_eq!(
            verify(&i, &mint(&forger, &header(), &claims())),
            Err(TokenError::SignatureInvalid)
        );
        // Structure.
        assert!(matches!(verify(&i, "a.b"), Err(TokenError::Malformed(_))));
        assert!(matches!(
            verify(&i, &"a".repeat(20_000)),
            Err(TokenError::Malformed(_))
        ));
    }

    #[test]
    fn jwks_rejections() {
        assert!(JwkSet::from_json("{}").is_err());
        assert!(JwkSet::from_json(r#"{"keys": 1}"#).is_err());
        let key = PrivateKey::generate(Algorithm::Es256).unwrap();
        let private: Value = serde_json::from_str(&key.to_private_jwk_json().unwrap()).unwrap();
        assert_eq!(
            JwkSet::from_json(&json!({"keys": [private]}).to_string()).unwrap_err(),
            TokenError::JwksInvalid("it contains private key material")
        );
        let many: Vec<Value> = (0..65).map(|_| json!({})).collect();
        assert!(JwkSet::from_json(&json!({"keys": many}).to_string()).is_err());
    }
}
