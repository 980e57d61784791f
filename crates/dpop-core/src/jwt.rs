//! JWT access tokens (RFC 9068 `at+jwt`, and plain JWTs): verification against a JWK
//! set, sans-I/O. Fetching the JWK set (RFC 8414 metadata, `jwks_uri`) is the adapter's
//! job; this module only judges bytes.
//!
//! The same strictness as for proofs applies: duplicate JSON members refused, `none`
//! and MAC algorithms not representable, the key's type must fit `alg`, `crit` refused,
//! size bounded before parsing. `aud` is required (RFC 9068 §4), as are `iss` and `exp`.
//!
//! [`verify_access_token`] is [`verify_jwt`] (any JWT: an ID token, a CI job token, a
//! Kubernetes service-account token, used e.g. as an RFC 8693 subject token) followed by
//! [`VerifiedJwt::to_access_token`], so both apply the same checks in the same order,
//! configured by the one [`JwtValidation`].

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
/// Longest token accepted by default ([`JwtValidation::max_token_bytes`]).
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// The canonical form of an issuer identifier: without one trailing slash, so that
/// `https://as.example.com/` and `https://as.example.com` name the same issuer wherever
/// issuers are compared (configuration, discovered metadata, the `iss` claim). Only one
/// slash goes: `https://as.example.com//` stays another identifier.
#[must_use]
pub fn canonical_issuer(issuer: &str) -> &str {
    issuer.strip_suffix('/').unwrap_or(issuer)
}

/// Whether the `iss` of a token names `expected`: equal in [`canonical_issuer`] form, and
/// never when nothing is expected (an empty issuer matches no token, not `"/"`).
fn issuer_matches(iss: &str, expected: &str) -> bool {
    let expected = canonical_issuer(expected);
    !expected.is_empty() && canonical_issuer(iss) == expected
}

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

/// Why a text is not a compact JWS with JSON objects as header and payload (RFC 7515
/// §7.1, RFC 7519 §7.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum MalformedJwt {
    /// Longer than the accepted maximum, so not parsed at all.
    TooLong,
    /// A JSON object in the header or payload has the same member twice.
    DuplicateMember,
    /// Not three base64url parts with a JSON object as header and as payload: the
    /// detail says which part is wrong.
    Syntax(&'static str),
}

impl MalformedJwt {
    /// What is wrong, in a few words.
    #[must_use]
    pub const fn detail(self) -> &'static str {
        match self {
            Self::TooLong => "longer than the accepted maximum",
            Self::DuplicateMember => "duplicate JSON member",
            Self::Syntax(what) => what,
        }
    }
}

impl fmt::Display for MalformedJwt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "not a compact JWS with JSON header and claims: {}",
            self.detail()
        )
    }
}

impl std::error::Error for MalformedJwt {}

impl From<MalformedJwt> for TokenError {
    fn from(e: MalformedJwt) -> Self {
        Self::Malformed(e.detail())
    }
}

impl From<MalformedJwt> for crate::ProofError {
    fn from(e: MalformedJwt) -> Self {
        match e {
            MalformedJwt::DuplicateMember => Self::DuplicateMember,
            other => Self::Malformed(other.detail()),
        }
    }
}

/// A compact JWS split into its parts and decoded; nothing verified.
struct Compact<'t> {
    /// `header.payload`, as sent: what the signature covers.
    signing_input: &'t str,
    header: Vec<u8>,
    payload: Vec<u8>,
    signature: Vec<u8>,
}

impl<'t> Compact<'t> {
    /// Bounds `token` by `max` bytes before anything else, then splits it into exactly
    /// three strict base64url parts (a JWE has five; the JSON serialisation none).
    fn split(token: &'t str, max: usize) -> Result<Self, MalformedJwt> {
        if token.len() > max {
            return Err(MalformedJwt::TooLong);
        }
        let mut parts = token.split('.');
        let (Some(h64), Some(p64), Some(s64), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(MalformedJwt::Syntax("expected three dot-separated parts"));
        };
        let decode =
            |part: &str, what| b64::decode(part.as_bytes()).ok_or(MalformedJwt::Syntax(what));
        Ok(Self {
            signing_input: token
                .get(..h64.len() + 1 + p64.len())
                .ok_or(MalformedJwt::Syntax("bounds"))?,
            header: decode(h64, "header is not base64url")?,
            payload: decode(p64, "payload is not base64url")?,
            signature: decode(s64, "signature is not base64url")?,
        })
    }
}

/// Parses a header or payload with the strict reader: duplicate members refused at every
/// depth, sizes bounded.
fn strict_object(bytes: &[u8]) -> Result<Object<'_>, MalformedJwt> {
    json::parse_object(bytes).map_err(|e| match e {
        JsonError::Duplicate => MalformedJwt::DuplicateMember,
        _ => MalformedJwt::Syntax("not a JSON object"),
    })
}

/// A compact JWT read without verifying anything: the same strict syntax as
/// [`verify_jwt`] (at most [`MAX_TOKEN_BYTES`], three base64url parts, JSON objects
/// without duplicate members), so every reader of the token sees the same members.
///
/// Its values are whatever the sender wrote. Read them only to decide how to verify the
/// token: its `kid` to decide whether to refresh a JWK set, its `iss` to choose the
/// issuer whose keys verify it, a client assertion's `sub` to find the client. The whole
/// header and claims are reachable only as `dangerous_*`, for display and tests.
#[derive(Clone, Debug, PartialEq)]
pub struct UnverifiedJwt {
    /// Always a JSON object.
    header: serde_json::Value,
    /// Always a JSON object.
    claims: serde_json::Value,
}

impl UnverifiedJwt {
    /// Reads `token` (a JWT, a DPoP proof, any compact JWS with JSON header and payload).
    ///
    /// # Errors
    /// [`MalformedJwt`] when it is longer than [`MAX_TOKEN_BYTES`], not three base64url
    /// parts, or its header or payload is not a JSON object without duplicate members.
    pub fn parse(token: &str) -> Result<Self, MalformedJwt> {
        let compact = Compact::split(token, MAX_TOKEN_BYTES)?;
        Ok(Self {
            header: Json::Object(strict_object(&compact.header)?).to_value(),
            claims: Json::Object(strict_object(&compact.payload)?).to_value(),
        })
    }

    /// The header's `kid` when it is a string.
    #[must_use]
    pub fn kid(&self) -> Option<&str> {
        self.header.get("kid").and_then(serde_json::Value::as_str)
    }

    /// The claim `name` when it is a string; `None` when it is absent or not a string.
    #[must_use]
    pub fn str_claim(&self, name: &str) -> Option<&str> {
        self.claims.get(name).and_then(serde_json::Value::as_str)
    }

    /// The whole header (a JSON object), unverified: for display and tests, never for a
    /// decision.
    #[must_use]
    pub fn dangerous_header(&self) -> &serde_json::Value {
        &self.header
    }

    /// The whole payload (a JSON object), unverified: for display and tests, never for a
    /// decision.
    #[must_use]
    pub fn dangerous_claims(&self) -> &serde_json::Value {
        &self.claims
    }
}

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
    /// `cnf.x5t#S256` (RFC 8705 §3.1): the client certificate the token is bound to, if
    /// any.
    pub x5t_s256: Option<CertThumbprint>,
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
            x5t_s256: None,
            expires_at,
            jti: None,
        }
    }

    /// Binds the token to a client certificate (RFC 8705 §3.1 `cnf.x5t#S256`, e.g. from
    /// an introspection response).
    #[must_use]
    pub fn with_certificate_binding(mut self, x5t_s256: Option<CertThumbprint>) -> Self {
        self.x5t_s256 = x5t_s256;
        self
    }
}

/// The SHA-256 thumbprint of a DER X.509 certificate, base64url without padding: the
/// `x5t#S256` confirmation method of RFC 8705 §3.1, binding a token to the client
/// certificate of a mutual-TLS connection.
///
/// Equality is constant-time: thumbprints are compared against token bindings.
#[derive(Clone)]
pub struct CertThumbprint(String);

impl CertThumbprint {
    /// The thumbprint of `der`, a certificate as sent in the TLS handshake.
    #[must_use]
    pub fn of_der(der: &[u8]) -> Self {
        Self(b64::encode(
            aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der).as_ref(),
        ))
    }

    /// Parses an `x5t#S256` value: base64url of exactly 32 bytes (43 characters).
    ///
    /// # Errors
    /// [`TokenError::ClaimInvalid`] when the value is not canonical base64url of a
    /// SHA-256 digest.
    pub fn parse(value: &str) -> Result<Self, TokenError> {
        let mut out = [0u8; 32];
        if value.len() != 43 || b64::decode_exact(value.as_bytes(), &mut out).is_none() {
            return Err(TokenError::ClaimInvalid("cnf.x5t#S256"));
        }
        Ok(Self(value.to_owned()))
    }

    /// The base64url text.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl PartialEq for CertThumbprint {
    fn eq(&self, other: &Self) -> bool {
        use subtle::ConstantTimeEq as _;
        self.0.as_bytes().ct_eq(other.0.as_bytes()).into()
    }
}
impl Eq for CertThumbprint {}

impl fmt::Debug for CertThumbprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CertThumbprint({})", self.0)
    }
}

impl fmt::Display for CertThumbprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
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

/// What a JWT must satisfy, for [`verify_jwt`] (any JWT) and [`verify_access_token`].
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct JwtValidation {
    /// The expected `iss`, compared in [`canonical_issuer`] form (trailing slashes do not
    /// matter).
    pub issuer: String,
    /// The audience the token must be for: `aud` must be it or contain it. With `None`,
    /// `aud` is not compared with anything (the caller compares
    /// [`VerifiedJwt::audiences`] itself), but it must still be present and a string or
    /// an array of strings. [`verify_access_token`] needs an audience (RFC 9068 §4) and
    /// refuses every token without one ([`TokenError::AudienceMismatch`]). Defaults to
    /// the `audience` given to [`JwtValidation::new`].
    pub audience: Option<String>,
    /// Clock leeway for `exp`, `nbf` and `iat`. Defaults to 30 s.
    pub leeway: Duration,
    /// Accepted signature algorithms. Defaults to ES256, ES384, EdDSA/Ed25519, PS256, RS256.
    pub algorithms: Vec<Algorithm>,
    /// Accepted `typ` values. Defaults to [`TypPolicy::AtJwtOrJwt`].
    pub typ: TypPolicy,
    /// Longest token accepted, checked before parsing. Defaults to [`MAX_TOKEN_BYTES`]
    /// (16 KiB).
    pub max_token_bytes: usize,
    /// Whether a token without `aud` is refused ([`TokenError::MissingClaim`]). Only
    /// [`crate::dangerous::accept_missing_aud`] turns it off. Defaults to `true`.
    pub(crate) require_aud: bool,
}

impl JwtValidation {
    /// Validation for JWTs from `issuer`, meant for `audience` when given, with the
    /// defaults.
    #[must_use]
    pub fn new(issuer: &str, audience: Option<&str>) -> Self {
        Self {
            issuer: issuer.to_owned(),
            audience: audience.map(str::to_owned),
            leeway: Duration::from_secs(30),
            algorithms: DEFAULT_ALGORITHMS.to_vec(),
            typ: TypPolicy::AtJwtOrJwt,
            max_token_bytes: MAX_TOKEN_BYTES,
            require_aud: true,
        }
    }
}

/// A JWT whose signature and registered claims were checked by [`verify_jwt`].
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct VerifiedJwt {
    /// The header's `alg` (on the allow-list).
    pub alg: Algorithm,
    /// The header's `kid`, if any.
    pub kid: Option<String>,
    /// Every claim of the payload, as signed.
    pub claims: serde_json::Map<String, serde_json::Value>,
    /// `exp`.
    pub expires_at: UnixTime,
    /// `iat`, if present (it is never in the future beyond the leeway).
    pub issued_at: Option<UnixTime>,
}

impl VerifiedJwt {
    /// The claim `name` when it is a string; `None` when it is absent or not a string.
    #[must_use]
    pub fn str_claim(&self, name: &str) -> Option<&str> {
        self.claims.get(name).and_then(serde_json::Value::as_str)
    }

    /// The audiences in `aud` (a string or an array of strings; [`verify_jwt`] refused
    /// any other shape). Empty when there is no `aud`.
    #[must_use]
    pub fn audiences(&self) -> Vec<&str> {
        match self.claims.get("aud") {
            Some(serde_json::Value::String(a)) => vec![a.as_str()],
            Some(serde_json::Value::Array(list)) => {
                list.iter().filter_map(serde_json::Value::as_str).collect()
            }
            _ => Vec::new(),
        }
    }

    /// `cnf.jkt` (RFC 9449 §6.1): the DPoP key the token is bound to, if any.
    ///
    /// # Errors
    /// [`TokenError::ClaimInvalid`] when `cnf` is not an object or `cnf.jkt` is not a
    /// thumbprint.
    pub fn jkt(&self) -> Result<Option<Jkt>, TokenError> {
        match self.claims.get("cnf") {
            None => Ok(None),
            Some(serde_json::Value::Object(cnf)) => match cnf.get("jkt") {
                None => Ok(None),
                Some(serde_json::Value::String(j)) => Jkt::parse(j)
                    .map(Some)
                    .map_err(|_| TokenError::ClaimInvalid("cnf.jkt")),
                Some(_) => Err(TokenError::ClaimInvalid("cnf.jkt")),
            },
            Some(_) => Err(TokenError::ClaimInvalid("cnf")),
        }
    }

    /// `cnf.x5t#S256` (RFC 8705 §3.1): the client certificate the token is bound to, if
    /// any.
    ///
    /// # Errors
    /// [`TokenError::ClaimInvalid`] when `cnf` is not an object or `cnf.x5t#S256` is not
    /// a SHA-256 thumbprint in base64url.
    pub fn x5t_s256(&self) -> Result<Option<CertThumbprint>, TokenError> {
        match self.claims.get("cnf") {
            None => Ok(None),
            Some(serde_json::Value::Object(cnf)) => match cnf.get("x5t#S256") {
                None => Ok(None),
                Some(serde_json::Value::String(t)) => CertThumbprint::parse(t).map(Some),
                Some(_) => Err(TokenError::ClaimInvalid("cnf.x5t#S256")),
            },
            Some(_) => Err(TokenError::ClaimInvalid("cnf")),
        }
    }

    /// The access-token facts of this JWT: `sub`, `client_id`, `scope`, `cnf.jkt`,
    /// `cnf.x5t#S256`, `exp`, `jti`.
    ///
    /// # Errors
    /// [`TokenError::ClaimInvalid`] when `cnf`, `cnf.jkt` or `cnf.x5t#S256` is malformed
    /// or `scope`, `sub`, `client_id` or `jti` is present but not a string.
    pub fn to_access_token(&self) -> Result<AccessToken, TokenError> {
        let jkt = self.jkt()?;
        let x5t_s256 = self.x5t_s256()?;
        let scopes = self
            .opt_string("scope")?
            .map(split_scope)
            .unwrap_or_default();
        Ok(AccessToken {
            subject: self.opt_string("sub")?.map(str::to_owned),
            client_id: self.opt_string("client_id")?.map(str::to_owned),
            scopes,
            jkt,
            x5t_s256,
            expires_at: self.expires_at,
            jti: self.opt_string("jti")?.map(str::to_owned),
        })
    }

    /// The claim `name`: absent is `None`, present but not a string is an error.
    fn opt_string(&self, name: &'static str) -> Result<Option<&str>, TokenError> {
        match self.claims.get(name) {
            None => Ok(None),
            Some(serde_json::Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(TokenError::ClaimInvalid(name)),
        }
    }
}

/// Verifies a JWT access token against `keys` and `validation` at `now`: the checks of
/// [`verify_jwt`], with [`JwtValidation::audience`] required, then the access-token
/// claims ([`VerifiedJwt::to_access_token`]).
///
/// # Errors
/// [`TokenError`] naming the first failed check; [`TokenError::AudienceMismatch`] for
/// every token when `validation` has no audience. [`TokenError::UnknownKey`] means the
/// caller should refresh the JWK set (rate-limited) and try once more.
pub fn verify_access_token(
    token: &str,
    keys: &JwkSet,
    validation: &JwtValidation,
    now: UnixTime,
) -> Result<AccessToken, TokenError> {
    // A resource server must check that it is the audience (RFC 9068 §4): without an
    // audience to compare with, no token is for this resource.
    if validation.audience.is_none() {
        return Err(TokenError::AudienceMismatch);
    }
    // `dangerous::accept_missing_aud` is for generic JWTs only: an access token without
    // `aud` could be replayed at every resource server of its issuer.
    verify(token, keys, validation, true, now)?.to_access_token()
}

/// Verifies a JWT against `keys` and `validation` at `now`: size, structure, strict JSON
/// (duplicate members refused), `typ`, `alg` allow-list, no `crit`/`b64`, the key for
/// `kid`, the signature, then `iss`, `aud`, `exp` (required), `nbf` and `iat`.
///
/// # Errors
/// [`TokenError`] naming the first failed check. [`TokenError::UnknownKey`] means the
/// caller should refresh the JWK set (rate-limited) and try once more.
pub fn verify_jwt(
    token: &str,
    keys: &JwkSet,
    validation: &JwtValidation,
    now: UnixTime,
) -> Result<VerifiedJwt, TokenError> {
    verify(token, keys, validation, validation.require_aud, now)
}

/// [`verify_jwt`], with whether `aud` must be present decided by the caller.
fn verify(
    token: &str,
    keys: &JwkSet,
    validation: &JwtValidation,
    require_aud: bool,
    now: UnixTime,
) -> Result<VerifiedJwt, TokenError> {
    let compact = Compact::split(token, validation.max_token_bytes)?;
    let header = strict_object(&compact.header)?;
    let claims = strict_object(&compact.payload)?;

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
    if !key.verify(alg, compact.signing_input.as_bytes(), &compact.signature) {
        return Err(TokenError::SignatureInvalid);
    }

    // Claims, only after the signature: unauthenticated claims are not worth reading.
    match claims.get("iss") {
        Some(Json::String(iss)) if issuer_matches(iss, &validation.issuer) => {}
        Some(Json::String(_)) => return Err(TokenError::IssuerMismatch),
        Some(_) => return Err(TokenError::ClaimInvalid("iss")),
        None => return Err(TokenError::MissingClaim("iss")),
    }
    let audience = validation.audience.as_deref();
    let aud_ok = match claims.get("aud") {
        Some(Json::String(a)) => audience.is_none_or(|want| *a == want),
        Some(Json::Array(list)) => {
            if !list.iter().all(|a| a.as_str().is_some()) {
                return Err(TokenError::ClaimInvalid("aud"));
            }
            audience.is_none_or(|want| list.iter().any(|a| a.as_str() == Some(want)))
        }
        Some(_) => return Err(TokenError::ClaimInvalid("aud")),
        None if require_aud => return Err(TokenError::MissingClaim("aud")),
        None => true,
    };
    if !aud_ok {
        return Err(TokenError::AudienceMismatch);
    }
    let exp = time(&claims, "exp")?.ok_or(TokenError::MissingClaim("exp"))?;
    if exp.saturating_add(validation.leeway) <= now {
        return Err(TokenError::Expired { exp, now });
    }
    if time(&claims, "nbf")?.is_some_and(|t| t > now.saturating_add(validation.leeway)) {
        return Err(TokenError::NotYetValid);
    }
    let iat = time(&claims, "iat")?;
    if iat.is_some_and(|t| t > now.saturating_add(validation.leeway)) {
        return Err(TokenError::NotYetValid);
    }
    let kid = kid.map(str::to_owned);
    // The strict reader above accepted this payload (it is serde_json underneath, so the
    // two agree); the owned map is what callers get to read further claims.
    let claims =
        serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(&compact.payload)
            .map_err(|_| TokenError::Malformed("not a JSON object"))?;
    Ok(VerifiedJwt {
        alg,
        kid,
        claims,
        expires_at: exp,
        issued_at: iat,
    })
}

#[cfg(test)]
mod tests;
