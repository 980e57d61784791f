//! The one error type of the core, its stable reason codes, and the single mapping from a
//! reason to the RFC error code and HTTP status.
//!
//! Reason codes are for logs and metrics (fixed target `dpop::rejection` in the adapters);
//! response bodies carry only the RFC error code, so a client learns what to fix without
//! the server leaking detail about its checks.

mod reason;

use core::fmt;

use crate::htu::HtuError;
use crate::jwk::JwkError;
use crate::jwt::TokenError;
use crate::replay::ReplayStoreError;
use crate::time::UnixTime;

pub use self::reason::{ErrorResponse, Reason, RfcError, Role};

/// Everything that can go wrong in the core.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// The proof failed a check of RFC 9449 §4.3 (the client's fault).
    Proof(ProofError),
    /// The server's nonce is missing, stale or not one of ours (RFC 9449 §8, §9): the
    /// client must retry with the nonce from the `DPoP-Nonce` header.
    Nonce(NonceError),
    /// The proof (same key, same `jti`) was already accepted inside its window.
    Replay,
    /// The proof key is not the key the access token is bound to (`cnf.jkt`), RFC 9449 §6.
    KeyMismatch,
    /// The access token is invalid (RFC 6750 `invalid_token`).
    Token(TokenError),
    /// The request's credentials are missing or presented wrongly (resource servers).
    Request(RequestError),
    /// A token source (JWK set, introspection endpoint) could not be reached or gave
    /// an unusable answer; the request is refused, the client is not at fault.
    TokenSourceUnavailable(&'static str),
    /// The replay store could not record the proof; the request must be refused (fail
    /// closed) but the client is not at fault.
    ReplayStore(ReplayStoreError),
    /// No trustworthy current time was available, so no time check could be made.
    NoClock,
    /// A key operation failed on the server or client side (signing, randomness).
    Key(crate::KeyError),
    /// The caller used the API in a way that cannot work (a server-side bug).
    ApiMisuse(&'static str),
    /// An internal invariant did not hold; report it as a bug.
    Unreachable(&'static str),
}

/// A proof failed one of the checks of RFC 9449 §4.3. The client built a bad proof.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProofError {
    /// The request had no `DPoP` header where one is required.
    Missing,
    /// The request had more than one `DPoP` header (§4.3 check 1).
    Multiple,
    /// The header is longer than the verifier's limit (checked before parsing).
    TooLarge {
        /// Length of the header value.
        len: usize,
        /// The configured limit.
        max: usize,
    },
    /// Not one well-formed compact JWS: the detail says which part is wrong (check 2).
    Malformed(&'static str),
    /// A JSON object in the header or payload has the same member twice.
    DuplicateMember,
    /// `typ` is not `dpop+jwt` (check 4, §11.5).
    TypInvalid,
    /// `crit` lists an extension this verifier does not understand (RFC 7515 §4.1.11).
    CritUnsupported,
    /// `alg` is an algorithm this verifier's policy does not allow (check 5).
    AlgNotAllowed(crate::Algorithm),
    /// `alg` is `none` or a MAC algorithm: never valid for DPoP (§4.2, §11.6).
    AlgForbidden,
    /// `alg` is not a known asymmetric JWS algorithm.
    AlgUnsupported,
    /// `alg` does not fit the `jwk` key type or curve (algorithm confusion).
    AlgKeyMismatch(crate::Algorithm),
    /// The header has no `jwk`.
    JwkMissing,
    /// The `jwk` is not a valid public key (check 7 when it holds private members).
    Jwk(JwkError),
    /// The signature does not verify with the `jwk` (check 6).
    SignatureInvalid,
    /// A required claim is absent (check 3).
    ClaimMissing(&'static str),
    /// A claim has the wrong JSON type or an unusable value.
    ClaimInvalid {
        /// The claim name.
        claim: &'static str,
        /// What is wrong with it.
        why: &'static str,
    },
    /// `htm` differs from the request method (check 8).
    HtmMismatch,
    /// `htu` is not a valid http(s) URI.
    HtuInvalid(HtuError),
    /// `htu` differs from the request URI after normalisation (check 9).
    HtuMismatch {
        /// The proof's `htu`, normalised.
        proof: String,
        /// The request URI, normalised.
        request: String,
    },
    /// `iat` is further in the past than the window allows (check 11).
    IatTooOld {
        /// The proof's `iat`.
        iat: UnixTime,
        /// Server time.
        now: UnixTime,
        /// Largest accepted age in seconds.
        max_age: u64,
    },
    /// `iat` is further in the future than the leeway allows (check 11).
    IatInFuture {
        /// The proof's `iat`.
        iat: UnixTime,
        /// Server time.
        now: UnixTime,
        /// Largest accepted clock lead in seconds.
        leeway: u64,
    },
    /// The proof carries `exp` and it has passed.
    Expired {
        /// The proof's `exp`.
        exp: UnixTime,
        /// Server time.
        now: UnixTime,
    },
    /// The proof carries `nbf` and it is still in the future.
    NotYetValid {
        /// The proof's `nbf`.
        nbf: UnixTime,
        /// Server time.
        now: UnixTime,
    },
    /// An access token was presented but the proof has no `ath` (check 12).
    AthMissing,
    /// `ath` is not the hash of the presented access token (check 12).
    AthMismatch,
}

/// How a request presented (or failed to present) its credentials at a resource server
/// (RFC 6750 §3, RFC 9449 §7).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RequestError {
    /// No `Authorization` credentials in a scheme the route accepts.
    CredentialsMissing,
    /// More than one `Authorization` header, or a token sent by more than one method.
    MultipleAuthorizations,
    /// The `Authorization` value is not `<scheme> <token68>`.
    MalformedAuthorization,
    /// A DPoP-bound token was sent with the `Bearer` scheme (RFC 9449 §7.2 downgrade).
    BearerDowngrade,
    /// A `Bearer` token was sent to a route that requires DPoP.
    BearerNotAllowed,
    /// The `DPoP` scheme was used with a token that is not bound to a key (`cnf.jkt`).
    TokenNotBound,
    /// The token lacks a scope the route requires.
    InsufficientScope,
    /// The request target cannot be turned into an absolute URI to compare `htu` with
    /// (missing or invalid `Host`, non-origin-form target).
    BadRequestTarget,
    /// The request target or method is not in canonical form (see [`crate::target`]);
    /// refused before any route, proof or forwarding decision.
    NonCanonicalTarget(crate::target::TargetError),
    /// The request's `Host` (or trusted `X-Forwarded-Host`) is not one this server
    /// answers for, so no `htu` can be built for it.
    HostNotAllowed,
    /// The route requires a client certificate (mutual TLS) and the connection did not
    /// present a verified one. The client's fault (or its deployment's).
    ClientCertificateRequired,
    /// The access token is bound to a client certificate (RFC 8705 §3 `cnf.x5t#S256`)
    /// and the connection presented another one (`presented`) or none.
    CertificateMismatch {
        /// Whether the connection presented a verified client certificate at all.
        presented: bool,
    },
}

/// The server nonce check failed (RFC 9449 §8, §9, §11.3).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum NonceError {
    /// The server requires a nonce and the proof has none.
    Required,
    /// The nonce is one of ours but too old.
    Stale {
        /// When the nonce was issued.
        issued: UnixTime,
        /// Server time.
        now: UnixTime,
        /// Largest accepted age in seconds.
        max_age: u64,
    },
    /// The nonce was not issued by this server (bad MAC, unknown key id, bad syntax,
    /// issued in the future, or not the expected value).
    Invalid(&'static str),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Proof(p) => p.fmt(f),
            Self::Nonce(n) => n.fmt(f),
            Self::Replay => f.write_str(
                "this proof (same key and jti) was already used; make a new proof with a fresh jti for every request",
            ),
            Self::KeyMismatch => f.write_str(
                "the proof is signed with a different key than the one the access token is bound to (cnf.jkt); sign with the key the token was issued for",
            ),
            Self::Token(e) => e.fmt(f),
            Self::Request(e) => e.fmt(f),
            Self::TokenSourceUnavailable(what) => write!(f, "cannot check access tokens right now: {what}"),
            Self::ReplayStore(e) => write!(f, "the replay store could not record the proof, so it was refused: {e}"),
            Self::NoClock => f.write_str("no current time is available, so proof freshness cannot be checked"),
            Self::Key(e) => write!(f, "key operation failed: {e}"),
            Self::ApiMisuse(what) => write!(f, "API misuse: {what}"),
            Self::Unreachable(what) => write!(f, "internal error (please report): {what}"),
        }
    }
}

impl fmt::Display for ProofError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Missing => f.write_str("the request has no DPoP header; send a DPoP proof"),
            Self::Multiple => f.write_str("the request has more than one DPoP header; send exactly one"),
            Self::TooLarge { len, max } => {
                write!(f, "the DPoP header is {len} bytes, over the limit of {max} bytes")
            }
            Self::Malformed(what) => write!(f, "the DPoP proof is not a well-formed compact JWS: {what}"),
            Self::DuplicateMember => f.write_str("a JSON object in the proof has the same member twice"),
            Self::TypInvalid => f.write_str("the proof header typ must be \"dpop+jwt\""),
            Self::CritUnsupported => f.write_str("the proof header has a crit parameter this server does not understand"),
            Self::AlgNotAllowed(alg) => write!(f, "alg {alg} is not accepted by this server"),
            Self::AlgForbidden => f.write_str("alg must be an asymmetric signature algorithm; none and MAC algorithms are never accepted"),
            Self::AlgUnsupported => f.write_str("alg is not a supported asymmetric JWS algorithm"),
            Self::AlgKeyMismatch(alg) => write!(f, "alg {alg} does not fit the type or curve of the jwk"),
            Self::JwkMissing => f.write_str("the proof header has no jwk"),
            Self::Jwk(e) => write!(f, "the proof header jwk is not acceptable: {e}"),
            Self::SignatureInvalid => f.write_str("the proof signature does not verify with the jwk in its header"),
            Self::ClaimMissing(c) => write!(f, "the proof has no {c} claim"),
            Self::ClaimInvalid { claim, why } => write!(f, "the proof claim {claim} is invalid: {why}"),
            Self::HtmMismatch => f.write_str("the proof htm is not the method of this request"),
            Self::HtuInvalid(e) => write!(f, "the proof htu is not a valid http(s) URI: {e}"),
            Self::HtuMismatch { proof, request } => write!(
                f,
                "the proof htu {proof} does not match the request URI {request} (compared without query and fragment)"
            ),
            Self::IatTooOld { iat, now, max_age } => write!(
                f,
                "the proof iat {iat} is {} s before server time {now}; proofs are accepted up to {max_age} s old: make a fresh proof, and check the client clock",
                now.as_secs().saturating_sub(iat.as_secs())
            ),
            Self::IatInFuture { iat, now, leeway } => write!(
                f,
                "the proof iat {iat} is {} s after server time {now}; at most {leeway} s ahead is accepted: check the client clock",
                iat.as_secs().saturating_sub(now.as_secs())
            ),
            Self::Expired { exp, now } => write!(f, "the proof exp {exp} has passed (server time {now})"),
            Self::NotYetValid { nbf, now } => write!(f, "the proof nbf {nbf} is in the future (server time {now})"),
            Self::AthMissing => f.write_str("an access token was presented but the proof has no ath claim; add ath = base64url(SHA-256(token))"),
            Self::AthMismatch => f.write_str("the proof ath is not the SHA-256 hash of the presented access token"),
        }
    }
}

impl fmt::Display for RequestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::CredentialsMissing => "the request has no access token; send Authorization: DPoP <token> with a DPoP proof",
            Self::MultipleAuthorizations => "the request carries more than one Authorization header or access token; send exactly one",
            Self::MalformedAuthorization => "the Authorization header is not \"<scheme> <token>\"",
            Self::BearerDowngrade => "this access token is bound to a DPoP key; send it as Authorization: DPoP <token> with a proof, not as Bearer",
            Self::BearerNotAllowed => "this resource requires DPoP: send Authorization: DPoP <token> with a DPoP proof",
            Self::TokenNotBound => "the access token is not bound to a DPoP key (no cnf.jkt), so it cannot be used with the DPoP scheme",
            Self::InsufficientScope => "the access token lacks a scope this resource requires",
            Self::BadRequestTarget => "the request target (Host and path) does not form a valid http(s) URI",
            Self::HostNotAllowed => "the request names a host (Host or X-Forwarded-Host) that is not one of this server's public URLs or allowed hosts",
            Self::ClientCertificateRequired => "this resource requires a client certificate: connect with mutual TLS and present a certificate this server trusts",
            Self::CertificateMismatch { presented: false } => "the access token is bound to a client certificate (cnf.x5t#S256) and the connection presented none; connect with the certificate the token was issued for",
            Self::CertificateMismatch { presented: true } => "the access token is bound to another client certificate (cnf.x5t#S256) than the one this connection presented; connect with the certificate the token was issued for",
            Self::NonCanonicalTarget(e) => return write!(f, "{e}; refused because components that normalise differently would disagree on what was authorised"),
        })
    }
}

impl fmt::Display for NonceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Required => f.write_str("this server requires a nonce claim; retry with the value of the DPoP-Nonce response header"),
            Self::Stale { issued, now, max_age } => write!(
                f,
                "the nonce was issued at {issued}, {} s before server time {now}, over the limit of {max_age} s; retry with the new DPoP-Nonce",
                now.as_secs().saturating_sub(issued.as_secs())
            ),
            Self::Invalid(why) => write!(f, "the nonce was not issued by this server ({why}); retry with the value of the DPoP-Nonce response header"),
        }
    }
}

impl std::error::Error for Error {}
impl std::error::Error for ProofError {}
impl std::error::Error for NonceError {}
impl std::error::Error for RequestError {}

impl From<TokenError> for Error {
    fn from(e: TokenError) -> Self {
        Self::Token(e)
    }
}

impl From<RequestError> for Error {
    fn from(e: RequestError) -> Self {
        Self::Request(e)
    }
}

impl From<ProofError> for Error {
    fn from(e: ProofError) -> Self {
        Self::Proof(e)
    }
}

impl From<NonceError> for Error {
    fn from(e: NonceError) -> Self {
        Self::Nonce(e)
    }
}

impl From<crate::KeyError> for Error {
    fn from(e: crate::KeyError) -> Self {
        Self::Key(e)
    }
}

impl From<ReplayStoreError> for Error {
    fn from(e: ReplayStoreError) -> Self {
        Self::ReplayStore(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_errors_tell_the_user_what_to_fix() {
        let e = Error::from(ProofError::IatTooOld {
            iat: UnixTime::from_secs(1000),
            now: UnixTime::from_secs(1100),
            max_age: 60,
        });
        let msg = e.to_string();
        assert!(
            msg.contains("1000")
                && msg.contains("1100")
                && msg.contains("100 s")
                && msg.contains("60 s"),
            "{msg}"
        );
        let e = Error::from(ProofError::IatInFuture {
            iat: UnixTime::from_secs(1200),
            now: UnixTime::from_secs(1100),
            leeway: 15,
        });
        let msg = e.to_string();
        assert!(
            msg.contains("100 s after") && msg.contains("15 s") && msg.contains("clock"),
            "{msg}"
        );
    }
}
