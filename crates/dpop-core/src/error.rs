//! The one error type of the core, its stable reason codes, and the single mapping from a
//! reason to the RFC error code and HTTP status.
//!
//! Reason codes are for logs and metrics (fixed target `dpop::rejection` in the adapters);
//! response bodies carry only the RFC error code, so a client learns what to fix without
//! the server leaking detail about its checks.

use core::fmt;

use crate::htu::HtuError;
use crate::jwk::JwkError;
use crate::jwt::TokenError;
use crate::replay::ReplayStoreError;
use crate::time::UnixTime;

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

/// Stable snake_case reason codes, one per kind of failure. They appear in logs and
/// metrics; never change an existing code's spelling.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Reason {
    /// `proof_missing`
    ProofMissing,
    /// `multiple_proofs`
    MultipleProofs,
    /// `proof_too_large`
    ProofTooLarge,
    /// `malformed_proof`
    MalformedProof,
    /// `duplicate_member`
    DuplicateMember,
    /// `typ_invalid`
    TypInvalid,
    /// `crit_unsupported`
    CritUnsupported,
    /// `alg_not_allowed` (policy, `none` or MAC)
    AlgNotAllowed,
    /// `alg_unsupported`
    AlgUnsupported,
    /// `alg_key_mismatch`
    AlgKeyMismatch,
    /// `jwk_missing`
    JwkMissing,
    /// `jwk_invalid`
    JwkInvalid,
    /// `jwk_private`
    JwkPrivate,
    /// `signature_invalid`
    SignatureInvalid,
    /// `claim_missing`
    ClaimMissing,
    /// `claim_invalid`
    ClaimInvalid,
    /// `htm_mismatch`
    HtmMismatch,
    /// `htu_invalid`
    HtuInvalid,
    /// `htu_mismatch`
    HtuMismatch,
    /// `iat_too_old`
    IatTooOld,
    /// `iat_in_future`
    IatInFuture,
    /// `proof_expired`
    ProofExpired,
    /// `proof_not_yet_valid`
    ProofNotYetValid,
    /// `ath_missing`
    AthMissing,
    /// `ath_mismatch`
    AthMismatch,
    /// `nonce_required`
    NonceRequired,
    /// `nonce_stale`
    NonceStale,
    /// `nonce_invalid`
    NonceInvalid,
    /// `replay`
    Replay,
    /// `key_mismatch`
    KeyMismatch,
    /// `credentials_missing`
    CredentialsMissing,
    /// `multiple_authorizations`
    MultipleAuthorizations,
    /// `malformed_authorization`
    MalformedAuthorization,
    /// `bearer_downgrade`
    BearerDowngrade,
    /// `bearer_not_allowed`
    BearerNotAllowed,
    /// `token_not_bound`
    TokenNotBound,
    /// `insufficient_scope`
    InsufficientScope,
    /// `bad_request_target`
    BadRequestTarget,
    /// `non_canonical_target`
    NonCanonicalTarget,
    /// `host_not_allowed`
    HostNotAllowed,
    /// `token_invalid` (malformed, wrong `typ`/`alg`, bad claims)
    TokenInvalid,
    /// `token_unknown_key`
    TokenUnknownKey,
    /// `token_signature_invalid`
    TokenSignatureInvalid,
    /// `token_expired`
    TokenExpired,
    /// `token_not_yet_valid`
    TokenNotYetValid,
    /// `token_issuer_mismatch`
    TokenIssuerMismatch,
    /// `token_audience_mismatch`
    TokenAudienceMismatch,
    /// `token_inactive` (introspection says so)
    TokenInactive,
    /// `token_source_unavailable`
    TokenSourceUnavailable,
    /// `replay_store_full`
    ReplayStoreFull,
    /// `replay_store_unavailable`
    ReplayStoreUnavailable,
    /// `no_clock`
    NoClock,
    /// `internal_error`
    InternalError,
}

impl Reason {
    /// Every reason, for exhaustive tests and metric pre-registration.
    pub const ALL: [Self; 53] = [
        Self::ProofMissing,
        Self::MultipleProofs,
        Self::ProofTooLarge,
        Self::MalformedProof,
        Self::DuplicateMember,
        Self::TypInvalid,
        Self::CritUnsupported,
        Self::AlgNotAllowed,
        Self::AlgUnsupported,
        Self::AlgKeyMismatch,
        Self::JwkMissing,
        Self::JwkInvalid,
        Self::JwkPrivate,
        Self::SignatureInvalid,
        Self::ClaimMissing,
        Self::ClaimInvalid,
        Self::HtmMismatch,
        Self::HtuInvalid,
        Self::HtuMismatch,
        Self::IatTooOld,
        Self::IatInFuture,
        Self::ProofExpired,
        Self::ProofNotYetValid,
        Self::AthMissing,
        Self::AthMismatch,
        Self::NonceRequired,
        Self::NonceStale,
        Self::NonceInvalid,
        Self::Replay,
        Self::KeyMismatch,
        Self::CredentialsMissing,
        Self::MultipleAuthorizations,
        Self::MalformedAuthorization,
        Self::BearerDowngrade,
        Self::BearerNotAllowed,
        Self::TokenNotBound,
        Self::InsufficientScope,
        Self::BadRequestTarget,
        Self::NonCanonicalTarget,
        Self::HostNotAllowed,
        Self::TokenInvalid,
        Self::TokenUnknownKey,
        Self::TokenSignatureInvalid,
        Self::TokenExpired,
        Self::TokenNotYetValid,
        Self::TokenIssuerMismatch,
        Self::TokenAudienceMismatch,
        Self::TokenInactive,
        Self::TokenSourceUnavailable,
        Self::ReplayStoreFull,
        Self::ReplayStoreUnavailable,
        Self::NoClock,
        Self::InternalError,
    ];

    /// The stable snake_case code.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::ProofMissing => "proof_missing",
            Self::MultipleProofs => "multiple_proofs",
            Self::ProofTooLarge => "proof_too_large",
            Self::MalformedProof => "malformed_proof",
            Self::DuplicateMember => "duplicate_member",
            Self::TypInvalid => "typ_invalid",
            Self::CritUnsupported => "crit_unsupported",
            Self::AlgNotAllowed => "alg_not_allowed",
            Self::AlgUnsupported => "alg_unsupported",
            Self::AlgKeyMismatch => "alg_key_mismatch",
            Self::JwkMissing => "jwk_missing",
            Self::JwkInvalid => "jwk_invalid",
            Self::JwkPrivate => "jwk_private",
            Self::SignatureInvalid => "signature_invalid",
            Self::ClaimMissing => "claim_missing",
            Self::ClaimInvalid => "claim_invalid",
            Self::HtmMismatch => "htm_mismatch",
            Self::HtuInvalid => "htu_invalid",
            Self::HtuMismatch => "htu_mismatch",
            Self::IatTooOld => "iat_too_old",
            Self::IatInFuture => "iat_in_future",
            Self::ProofExpired => "proof_expired",
            Self::ProofNotYetValid => "proof_not_yet_valid",
            Self::AthMissing => "ath_missing",
            Self::AthMismatch => "ath_mismatch",
            Self::NonceRequired => "nonce_required",
            Self::NonceStale => "nonce_stale",
            Self::NonceInvalid => "nonce_invalid",
            Self::Replay => "replay",
            Self::KeyMismatch => "key_mismatch",
            Self::CredentialsMissing => "credentials_missing",
            Self::MultipleAuthorizations => "multiple_authorizations",
            Self::MalformedAuthorization => "malformed_authorization",
            Self::BearerDowngrade => "bearer_downgrade",
            Self::BearerNotAllowed => "bearer_not_allowed",
            Self::TokenNotBound => "token_not_bound",
            Self::InsufficientScope => "insufficient_scope",
            Self::BadRequestTarget => "bad_request_target",
            Self::NonCanonicalTarget => "non_canonical_target",
            Self::HostNotAllowed => "host_not_allowed",
            Self::TokenInvalid => "token_invalid",
            Self::TokenUnknownKey => "token_unknown_key",
            Self::TokenSignatureInvalid => "token_signature_invalid",
            Self::TokenExpired => "token_expired",
            Self::TokenNotYetValid => "token_not_yet_valid",
            Self::TokenIssuerMismatch => "token_issuer_mismatch",
            Self::TokenAudienceMismatch => "token_audience_mismatch",
            Self::TokenInactive => "token_inactive",
            Self::TokenSourceUnavailable => "token_source_unavailable",
            Self::ReplayStoreFull => "replay_store_full",
            Self::ReplayStoreUnavailable => "replay_store_unavailable",
            Self::NoClock => "no_clock",
            Self::InternalError => "internal_error",
        }
    }

    /// What goes back to the client for this reason, for a server in `role`.
    ///
    /// This is the one place where reasons meet RFC error codes and statuses:
    /// - proof failures are `invalid_dpop_proof` (RFC 9449 §5 at the token endpoint: 400;
    ///   §7.1 at a resource: 401);
    /// - nonce failures are `use_dpop_nonce` with the same statuses (§8, §9), and the
    ///   response must carry a fresh `DPoP-Nonce`;
    /// - two `DPoP` headers are `invalid_request` with 400 (RFC 6750 §3.1);
    /// - a key binding failure is `invalid_token` at a resource (Fig. 16) and
    ///   `invalid_grant` at the token endpoint (refresh token or `dpop_jkt` binding);
    /// - a request without credentials is a 401 with no error code (RFC 6750 §3.1: the
    ///   challenge then carries no error information);
    /// - access-token failures are `invalid_token` (401), including a DPoP-bound token
    ///   sent as `Bearer` (RFC 9449 §7.2); a missing scope is `insufficient_scope` (403);
    /// - a replay store or token source that cannot answer, or a missing clock, is a
    ///   server-side 503 with no RFC code: the request is refused, the client did nothing
    ///   wrong.
    #[must_use]
    pub const fn response(self, role: Role) -> ErrorResponse {
        if let Self::CredentialsMissing = self {
            return ErrorResponse {
                status: 401,
                error: None,
            };
        }
        if let Self::InsufficientScope = self {
            return ErrorResponse {
                status: 403,
                error: Some(RfcError::InsufficientScope),
            };
        }
        let rfc = match self {
            Self::MultipleProofs
            | Self::MultipleAuthorizations
            | Self::MalformedAuthorization
            | Self::BadRequestTarget
            | Self::NonCanonicalTarget
            | Self::HostNotAllowed => Some(RfcError::InvalidRequest),
            Self::BearerDowngrade
            | Self::BearerNotAllowed
            | Self::TokenNotBound
            | Self::TokenInvalid
            | Self::TokenUnknownKey
            | Self::TokenSignatureInvalid
            | Self::TokenExpired
            | Self::TokenNotYetValid
            | Self::TokenIssuerMismatch
            | Self::TokenAudienceMismatch
            | Self::TokenInactive => Some(match role {
                Role::ResourceServer => RfcError::InvalidToken,
                Role::AuthorizationServer => RfcError::InvalidGrant,
            }),
            Self::NonceRequired | Self::NonceStale | Self::NonceInvalid => {
                Some(RfcError::UseDpopNonce)
            }
            Self::KeyMismatch => Some(match role {
                Role::ResourceServer => RfcError::InvalidToken,
                Role::AuthorizationServer => RfcError::InvalidGrant,
            }),
            Self::ReplayStoreFull
            | Self::ReplayStoreUnavailable
            | Self::TokenSourceUnavailable
            | Self::NoClock
            | Self::InternalError => None,
            _ => Some(RfcError::InvalidDpopProof),
        };
        let status = match (rfc, role) {
            (None, _) => match self {
                Self::InternalError => 500,
                _ => 503,
            },
            (Some(RfcError::InvalidRequest), _) | (Some(_), Role::AuthorizationServer) => 400,
            (Some(_), Role::ResourceServer) => 401,
        };
        ErrorResponse { status, error: rfc }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which side of OAuth is answering: the statuses differ (400 at the token endpoint,
/// 401 with `WWW-Authenticate` at a protected resource).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Role {
    /// An authorization server's token (or PAR) endpoint.
    AuthorizationServer,
    /// A protected resource (API or gateway).
    ResourceServer,
}

/// The RFC error codes a DPoP failure can produce.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RfcError {
    /// `invalid_dpop_proof` (RFC 9449 §12.2).
    InvalidDpopProof,
    /// `use_dpop_nonce` (RFC 9449 §12.2).
    UseDpopNonce,
    /// `invalid_token` (RFC 6750 §3.1).
    InvalidToken,
    /// `invalid_request` (RFC 6750 §3.1, RFC 6749 §5.2).
    InvalidRequest,
    /// `invalid_grant` (RFC 6749 §5.2).
    InvalidGrant,
    /// `insufficient_scope` (RFC 6750 §3.1).
    InsufficientScope,
}

impl RfcError {
    /// The registered code.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::InvalidDpopProof => "invalid_dpop_proof",
            Self::UseDpopNonce => "use_dpop_nonce",
            Self::InvalidToken => "invalid_token",
            Self::InvalidRequest => "invalid_request",
            Self::InvalidGrant => "invalid_grant",
            Self::InsufficientScope => "insufficient_scope",
        }
    }
}

impl fmt::Display for RfcError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Status and RFC error code for a rejected request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ErrorResponse {
    /// HTTP status code.
    pub status: u16,
    /// RFC error code; `None` for server-side failures (5xx).
    pub error: Option<RfcError>,
}

impl Error {
    /// The stable reason code of this error.
    #[must_use]
    pub fn reason(&self) -> Reason {
        match self {
            Self::Proof(p) => p.reason(),
            Self::Nonce(NonceError::Required) => Reason::NonceRequired,
            Self::Nonce(NonceError::Stale { .. }) => Reason::NonceStale,
            Self::Nonce(NonceError::Invalid(_)) => Reason::NonceInvalid,
            Self::Replay => Reason::Replay,
            Self::KeyMismatch => Reason::KeyMismatch,
            Self::Token(t) => match t {
                TokenError::UnknownKey => Reason::TokenUnknownKey,
                TokenError::SignatureInvalid => Reason::TokenSignatureInvalid,
                TokenError::Expired { .. } => Reason::TokenExpired,
                TokenError::NotYetValid => Reason::TokenNotYetValid,
                TokenError::IssuerMismatch => Reason::TokenIssuerMismatch,
                TokenError::AudienceMismatch => Reason::TokenAudienceMismatch,
                TokenError::Inactive => Reason::TokenInactive,
                TokenError::JwksInvalid(_) => Reason::TokenSourceUnavailable,
                _ => Reason::TokenInvalid,
            },
            Self::Request(r) => match r {
                RequestError::CredentialsMissing => Reason::CredentialsMissing,
                RequestError::MultipleAuthorizations => Reason::MultipleAuthorizations,
                RequestError::MalformedAuthorization => Reason::MalformedAuthorization,
                RequestError::BearerDowngrade => Reason::BearerDowngrade,
                RequestError::BearerNotAllowed => Reason::BearerNotAllowed,
                RequestError::TokenNotBound => Reason::TokenNotBound,
                RequestError::InsufficientScope => Reason::InsufficientScope,
                RequestError::BadRequestTarget => Reason::BadRequestTarget,
                RequestError::NonCanonicalTarget(_) => Reason::NonCanonicalTarget,
                RequestError::HostNotAllowed => Reason::HostNotAllowed,
            },
            Self::TokenSourceUnavailable(_) => Reason::TokenSourceUnavailable,
            Self::ReplayStore(ReplayStoreError::Full { .. }) => Reason::ReplayStoreFull,
            Self::ReplayStore(_) => Reason::ReplayStoreUnavailable,
            Self::NoClock => Reason::NoClock,
            Self::Key(_) | Self::ApiMisuse(_) | Self::Unreachable(_) => Reason::InternalError,
        }
    }

    /// Status and RFC error for this error (see [`Reason::response`]).
    #[must_use]
    pub fn response(&self, role: Role) -> ErrorResponse {
        self.reason().response(role)
    }

    /// A short, safe `error_description` for the response: the nature of the problem,
    /// never the values involved.
    #[must_use]
    pub fn description(&self) -> &'static str {
        match self.reason() {
            Reason::ProofMissing => "DPoP proof required",
            Reason::MultipleProofs => "Multiple DPoP proofs in the request",
            Reason::NonceRequired => "Server requires nonce in DPoP proof",
            Reason::NonceStale | Reason::NonceInvalid => "DPoP nonce is stale or unknown",
            Reason::Replay => "DPoP proof was already used",
            Reason::KeyMismatch => "Invalid DPoP key binding",
            Reason::IatTooOld | Reason::IatInFuture => {
                "DPoP proof iat is outside the acceptance window"
            }
            Reason::HtmMismatch | Reason::HtuMismatch => {
                "DPoP proof does not match the request method and URI"
            }
            Reason::AthMissing | Reason::AthMismatch => {
                "DPoP proof ath does not match the access token"
            }
            Reason::CredentialsMissing => "Authorization required",
            Reason::MultipleAuthorizations => "Multiple methods used to include access token",
            Reason::MalformedAuthorization => "Malformed Authorization header",
            Reason::BearerDowngrade => "DPoP-bound access token presented as a Bearer token",
            Reason::BearerNotAllowed | Reason::TokenNotBound => {
                "A DPoP-bound access token is required"
            }
            Reason::InsufficientScope => "The access token lacks a required scope",
            Reason::BadRequestTarget => "The request target is not a valid URI",
            Reason::NonCanonicalTarget => "The request target is not in canonical form",
            Reason::HostNotAllowed => "The request is for a host this server does not serve",
            Reason::TokenExpired => "The access token expired",
            Reason::TokenInvalid
            | Reason::TokenUnknownKey
            | Reason::TokenSignatureInvalid
            | Reason::TokenNotYetValid
            | Reason::TokenIssuerMismatch
            | Reason::TokenAudienceMismatch
            | Reason::TokenInactive => "Invalid access token",
            Reason::ReplayStoreFull
            | Reason::ReplayStoreUnavailable
            | Reason::TokenSourceUnavailable
            | Reason::NoClock
            | Reason::InternalError => "Temporarily unable to verify the request",
            _ => "Invalid DPoP proof",
        }
    }
}

impl ProofError {
    fn reason(&self) -> Reason {
        match self {
            Self::Missing => Reason::ProofMissing,
            Self::Multiple => Reason::MultipleProofs,
            Self::TooLarge { .. } => Reason::ProofTooLarge,
            Self::Malformed(_) => Reason::MalformedProof,
            Self::DuplicateMember => Reason::DuplicateMember,
            Self::TypInvalid => Reason::TypInvalid,
            Self::CritUnsupported => Reason::CritUnsupported,
            Self::AlgNotAllowed(_) | Self::AlgForbidden => Reason::AlgNotAllowed,
            Self::AlgUnsupported => Reason::AlgUnsupported,
            Self::AlgKeyMismatch(_) => Reason::AlgKeyMismatch,
            Self::JwkMissing => Reason::JwkMissing,
            Self::Jwk(JwkError::PrivateMember(_)) => Reason::JwkPrivate,
            Self::Jwk(_) => Reason::JwkInvalid,
            Self::SignatureInvalid => Reason::SignatureInvalid,
            Self::ClaimMissing(_) => Reason::ClaimMissing,
            Self::ClaimInvalid { .. } => Reason::ClaimInvalid,
            Self::HtmMismatch => Reason::HtmMismatch,
            Self::HtuInvalid(_) => Reason::HtuInvalid,
            Self::HtuMismatch { .. } => Reason::HtuMismatch,
            Self::IatTooOld { .. } => Reason::IatTooOld,
            Self::IatInFuture { .. } => Reason::IatInFuture,
            Self::Expired { .. } => Reason::ProofExpired,
            Self::NotYetValid { .. } => Reason::ProofNotYetValid,
            Self::AthMissing => Reason::AthMissing,
            Self::AthMismatch => Reason::AthMismatch,
        }
    }
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
    fn codes_are_unique_snake_case() {
        let mut seen = std::collections::HashSet::new();
        for r in Reason::ALL {
            let s = r.as_str();
            assert!(
                s.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
                "{s}"
            );
            assert!(seen.insert(s), "duplicate code {s}");
        }
    }

    /// The whole mapping, written out: a change to any row is a visible protocol change.
    #[test]
    fn every_reason_maps_to_rfc_error_and_status() {
        use Reason as R;
        use RfcError as E;
        let table: &[(Reason, Option<RfcError>, u16, u16)] = &[
            (R::ProofMissing, Some(E::InvalidDpopProof), 400, 401),
            (R::MultipleProofs, Some(E::InvalidRequest), 400, 400),
            (R::ProofTooLarge, Some(E::InvalidDpopProof), 400, 401),
            (R::MalformedProof, Some(E::InvalidDpopProof), 400, 401),
            (R::DuplicateMember, Some(E::InvalidDpopProof), 400, 401),
            (R::TypInvalid, Some(E::InvalidDpopProof), 400, 401),
            (R::CritUnsupported, Some(E::InvalidDpopProof), 400, 401),
            (R::AlgNotAllowed, Some(E::InvalidDpopProof), 400, 401),
            (R::AlgUnsupported, Some(E::InvalidDpopProof), 400, 401),
            (R::AlgKeyMismatch, Some(E::InvalidDpopProof), 400, 401),
            (R::JwkMissing, Some(E::InvalidDpopProof), 400, 401),
            (R::JwkInvalid, Some(E::InvalidDpopProof), 400, 401),
            (R::JwkPrivate, Some(E::InvalidDpopProof), 400, 401),
            (R::SignatureInvalid, Some(E::InvalidDpopProof), 400, 401),
            (R::ClaimMissing, Some(E::InvalidDpopProof), 400, 401),
            (R::ClaimInvalid, Some(E::InvalidDpopProof), 400, 401),
            (R::HtmMismatch, Some(E::InvalidDpopProof), 400, 401),
            (R::HtuInvalid, Some(E::InvalidDpopProof), 400, 401),
            (R::HtuMismatch, Some(E::InvalidDpopProof), 400, 401),
            (R::IatTooOld, Some(E::InvalidDpopProof), 400, 401),
            (R::IatInFuture, Some(E::InvalidDpopProof), 400, 401),
            (R::ProofExpired, Some(E::InvalidDpopProof), 400, 401),
            (R::ProofNotYetValid, Some(E::InvalidDpopProof), 400, 401),
            (R::AthMissing, Some(E::InvalidDpopProof), 400, 401),
            (R::AthMismatch, Some(E::InvalidDpopProof), 400, 401),
            (R::NonceRequired, Some(E::UseDpopNonce), 400, 401),
            (R::NonceStale, Some(E::UseDpopNonce), 400, 401),
            (R::NonceInvalid, Some(E::UseDpopNonce), 400, 401),
            (R::Replay, Some(E::InvalidDpopProof), 400, 401),
            (R::CredentialsMissing, None, 401, 401),
            (R::MultipleAuthorizations, Some(E::InvalidRequest), 400, 400),
            (R::MalformedAuthorization, Some(E::InvalidRequest), 400, 400),
            (R::InsufficientScope, Some(E::InsufficientScope), 403, 403),
            (R::BadRequestTarget, Some(E::InvalidRequest), 400, 400),
            (R::NonCanonicalTarget, Some(E::InvalidRequest), 400, 400),
            (R::HostNotAllowed, Some(E::InvalidRequest), 400, 400),
            (R::TokenSourceUnavailable, None, 503, 503),
            (R::ReplayStoreFull, None, 503, 503),
            (R::ReplayStoreUnavailable, None, 503, 503),
            (R::NoClock, None, 503, 503),
            (R::InternalError, None, 500, 500),
        ];
        let token_reasons = [
            R::KeyMismatch,
            R::BearerDowngrade,
            R::BearerNotAllowed,
            R::TokenNotBound,
            R::TokenInvalid,
            R::TokenUnknownKey,
            R::TokenSignatureInvalid,
            R::TokenExpired,
            R::TokenNotYetValid,
            R::TokenIssuerMismatch,
            R::TokenAudienceMismatch,
            R::TokenInactive,
        ];
        assert_eq!(
            table.len() + token_reasons.len(),
            Reason::ALL.len(),
            "every reason is checked once"
        );
        for &(reason, rfc, as_status, rs_status) in table {
            let a = reason.response(Role::AuthorizationServer);
            let r = reason.response(Role::ResourceServer);
            assert_eq!((a.error, a.status), (rfc, as_status), "{reason} at the AS");
            assert_eq!((r.error, r.status), (rfc, rs_status), "{reason} at the RS");
        }
        for reason in token_reasons {
            let rs = ErrorResponse {
                status: 401,
                error: Some(E::InvalidToken),
            };
            let as_ = ErrorResponse {
                status: 400,
                error: Some(E::InvalidGrant),
            };
            assert_eq!(
                reason.response(Role::ResourceServer),
                rs,
                "{reason} at the RS"
            );
            assert_eq!(
                reason.response(Role::AuthorizationServer),
                as_,
                "{reason} at the AS"
            );
        }
    }

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
