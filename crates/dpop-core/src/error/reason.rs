//! [`Reason`], the stable reason codes, and the one mapping from an [`Error`] to its
//! reason and from a reason to the RFC error code and HTTP status.

use core::fmt;

use super::{Error, NonceError, ProofError, RequestError};
use crate::jwk::JwkError;
use crate::jwt::TokenError;
use crate::replay::ReplayStoreError;

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
    /// `client_certificate_required`
    ClientCertificateRequired,
    /// `certificate_mismatch` (RFC 8705 §3: the token's `cnf.x5t#S256` is not the
    /// connection's client certificate)
    CertificateMismatch,
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
    pub const ALL: [Self; 55] = [
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
        Self::ClientCertificateRequired,
        Self::CertificateMismatch,
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
            Self::ClientCertificateRequired => "client_certificate_required",
            Self::CertificateMismatch => "certificate_mismatch",
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
    /// - a route that requires a client certificate, reached without one, is
    ///   `invalid_request` (400): a required part of the request is missing (RFC 6750
    ///   §3.1), and no `WWW-Authenticate` scheme can ask for a TLS certificate;
    /// - a token bound to a client certificate (RFC 8705 §3 `cnf.x5t#S256`) presented
    ///   without it, or over another one, is `invalid_token` (401), as RFC 8705 §3 says;
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
            | Self::HostNotAllowed
            | Self::ClientCertificateRequired => Some(RfcError::InvalidRequest),
            Self::BearerDowngrade
            | Self::CertificateMismatch
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
            (Some(error), role) => error.status(role),
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

/// The registered OAuth error codes: those a DPoP failure produces ([`Reason::response`])
/// and those of an authorization server's token, introspection and revocation endpoints,
/// so every component answers with one spelling and one status per code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RfcError {
    /// `invalid_dpop_proof` (RFC 9449 §12.2).
    InvalidDpopProof,
    /// `use_dpop_nonce` (RFC 9449 §12.2); the response carries a fresh `DPoP-Nonce`.
    UseDpopNonce,
    /// `invalid_token` (RFC 6750 §3.1).
    InvalidToken,
    /// `invalid_request` (RFC 6750 §3.1, RFC 6749 §5.2).
    InvalidRequest,
    /// `invalid_grant` (RFC 6749 §5.2).
    InvalidGrant,
    /// `insufficient_scope` (RFC 6750 §3.1).
    InsufficientScope,
    /// `invalid_client` (RFC 6749 §5.2): client authentication failed. Answered with 401
    /// and a `WWW-Authenticate` challenge for the schemes the client may use.
    InvalidClient,
    /// `unauthorized_client` (RFC 6749 §5.2): the client may not use this grant type.
    UnauthorizedClient,
    /// `unsupported_grant_type` (RFC 6749 §5.2).
    UnsupportedGrantType,
    /// `invalid_scope` (RFC 6749 §5.2).
    InvalidScope,
    /// `invalid_target` (RFC 8707 §2, RFC 8693 §2.2.2): a requested resource or audience
    /// is not allowed.
    InvalidTarget,
    /// `unsupported_token_type` (RFC 7009 §2.2.1).
    UnsupportedTokenType,
    /// `temporarily_unavailable` (RFC 6749 §4.1.2.1): stands for 503; a store or an
    /// external issuer did not answer. Sent with `Retry-After`.
    TemporarilyUnavailable,
    /// `slow_down` (RFC 8628 §3.5): the client must wait before trying again. Answered
    /// with 429 (RFC 6585 §4) and `Retry-After`, since nothing was checked.
    SlowDown,
    /// `server_error` (RFC 6749 §4.1.2.1): stands for 500.
    ServerError,
}

impl RfcError {
    /// Every code, for exhaustive tests.
    pub const ALL: [Self; 15] = [
        Self::InvalidDpopProof,
        Self::UseDpopNonce,
        Self::InvalidToken,
        Self::InvalidRequest,
        Self::InvalidGrant,
        Self::InsufficientScope,
        Self::InvalidClient,
        Self::UnauthorizedClient,
        Self::UnsupportedGrantType,
        Self::InvalidScope,
        Self::InvalidTarget,
        Self::UnsupportedTokenType,
        Self::TemporarilyUnavailable,
        Self::SlowDown,
        Self::ServerError,
    ];

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
            Self::InvalidClient => "invalid_client",
            Self::UnauthorizedClient => "unauthorized_client",
            Self::UnsupportedGrantType => "unsupported_grant_type",
            Self::InvalidScope => "invalid_scope",
            Self::InvalidTarget => "invalid_target",
            Self::UnsupportedTokenType => "unsupported_token_type",
            Self::TemporarilyUnavailable => "temporarily_unavailable",
            Self::SlowDown => "slow_down",
            Self::ServerError => "server_error",
        }
    }

    /// The HTTP status this code is sent with by a server in `role`. Only the two DPoP
    /// codes depend on the role: 400 at the token endpoint (RFC 9449 §5, §8) and 401 with
    /// `WWW-Authenticate` at a protected resource (§7.1, §9). Every other code has one
    /// status: `invalid_token` 401 and `insufficient_scope` 403 (RFC 6750 §3.1),
    /// `invalid_client` 401 (RFC 6749 §5.2), `temporarily_unavailable` 503,
    /// `server_error` 500, `slow_down` 429, and 400 for the rest (RFC 6749 §5.2).
    #[must_use]
    pub const fn status(self, role: Role) -> u16 {
        match self {
            Self::InvalidDpopProof | Self::UseDpopNonce => match role {
                Role::AuthorizationServer => 400,
                Role::ResourceServer => 401,
            },
            Self::InvalidToken | Self::InvalidClient => 401,
            Self::InsufficientScope => 403,
            Self::SlowDown => 429,
            Self::ServerError => 500,
            Self::TemporarilyUnavailable => 503,
            Self::InvalidRequest
            | Self::InvalidGrant
            | Self::UnauthorizedClient
            | Self::UnsupportedGrantType
            | Self::InvalidScope
            | Self::InvalidTarget
            | Self::UnsupportedTokenType => 400,
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
                RequestError::ClientCertificateRequired => Reason::ClientCertificateRequired,
                RequestError::CertificateMismatch { .. } => Reason::CertificateMismatch,
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
            Reason::ClientCertificateRequired => "A client certificate is required",
            Reason::CertificateMismatch => {
                "The access token is bound to a client certificate this request did not present"
            }
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
    /// Every code with its spelling and its statuses at the token endpoint and at a
    /// resource, written out: a change to any row is a visible protocol change.
    #[test]
    fn every_rfc_error_has_its_code_and_status() {
        use RfcError as E;
        let table: &[(RfcError, &str, u16, u16)] = &[
            (E::InvalidDpopProof, "invalid_dpop_proof", 400, 401),
            (E::UseDpopNonce, "use_dpop_nonce", 400, 401),
            (E::InvalidToken, "invalid_token", 401, 401),
            (E::InvalidRequest, "invalid_request", 400, 400),
            (E::InvalidGrant, "invalid_grant", 400, 400),
            (E::InsufficientScope, "insufficient_scope", 403, 403),
            (E::InvalidClient, "invalid_client", 401, 401),
            (E::UnauthorizedClient, "unauthorized_client", 400, 400),
            (E::UnsupportedGrantType, "unsupported_grant_type", 400, 400),
            (E::InvalidScope, "invalid_scope", 400, 400),
            (E::InvalidTarget, "invalid_target", 400, 400),
            (E::UnsupportedTokenType, "unsupported_token_type", 400, 400),
            (
                E::TemporarilyUnavailable,
                "temporarily_unavailable",
                503,
                503,
            ),
            (E::SlowDown, "slow_down", 429, 429),
            (E::ServerError, "server_error", 500, 500),
        ];
        assert_eq!(table.len(), RfcError::ALL.len(), "every code is checked");
        for (&(error, code, as_status, rs_status), all) in table.iter().zip(RfcError::ALL) {
            assert_eq!(error, all, "ALL lists the codes in table order");
            assert_eq!(error.as_str(), code);
            assert_eq!(error.to_string(), code);
            assert_eq!(error.status(Role::AuthorizationServer), as_status, "{code}");
            assert_eq!(error.status(Role::ResourceServer), rs_status, "{code}");
        }
    }

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
            (
                R::ClientCertificateRequired,
                Some(E::InvalidRequest),
                400,
                400,
            ),
            (R::TokenSourceUnavailable, None, 503, 503),
            (R::ReplayStoreFull, None, 503, 503),
            (R::ReplayStoreUnavailable, None, 503, 503),
            (R::NoClock, None, 503, 503),
            (R::InternalError, None, 500, 500),
        ];
        let token_reasons = [
            R::KeyMismatch,
            R::CertificateMismatch,
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
}
