#![forbid(unsafe_code)]
// Input-facing code must not panic (STYLE §15): these lints keep it honest. Tests may
// use them freely.
#![warn(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::exhaustive_enums,
    clippy::exhaustive_structs
)]
#![cfg_attr(
    test,
    allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::indexing_slicing,
        clippy::panic,
        clippy::exhaustive_enums,
        clippy::exhaustive_structs
    )
)]
//! # dpop-core
//!
//! The protocol library of DPoP (RFC 9449, "Demonstrating Proof of Possession"): JWKs
//! and RFC 7638 thumbprints, proof creation and verification with every check of
//! RFC 9449 §4.3, stateless server nonces, replay keys and a bounded replay store, and
//! `WWW-Authenticate` challenges.
//!
//! It is sans-I/O: it does no network or file I/O, reads no environment and no clock,
//! and keeps no global state. Time, randomness and replay storage are passed in; the
//! HTTP adapters (tower layer, gateway, issuer, client) are separate crates. The one
//! clock it ships, `SystemClock` (feature `std-clock`, on by default), is for those
//! adapters to pass in; the protocol code never calls it.
//!
//! ## Getting started
//!
//! ```
//! use dpop_core::{
//!     Algorithm, Htu, MemoryReplayStore, PrivateKey, ProofBuilder, ProofRequest,
//!     SystemRandomSource, UnixTime, Verifier, VerifierConfig,
//! };
//!
//! // Client: a key, and a proof for one request.
//! let key = PrivateKey::generate(Algorithm::Es256)?;
//! let now = UnixTime::from_secs(1_700_000_000);
//! let token = "an-access-token-bound-to-the-key";
//! let proof = ProofBuilder::new("GET", "https://api.example.com/v1/items")?
//!     .access_token(token)
//!     .sign(&key, &SystemRandomSource, now)?;
//!
//! // Server: verify it against the request and the token's cnf.jkt, then record it.
//! let verifier = Verifier::new(VerifierConfig::builder().with_default_algorithms().without_nonces())?;
//! let store = MemoryReplayStore::with_capacity(100_000);
//! let htu = Htu::parse("https://API.example.com:443/v1/items?page=2")?;
//! let request = ProofRequest::new("GET", &htu).with_access_token(token, key.thumbprint());
//! let verified = verifier.verify([proof.as_bytes()], &request, now)?.record(&store)?;
//! assert_eq!(verified.jkt(), key.thumbprint());
//!
//! // The same proof again is a replay.
//! let again = verifier.verify([proof.as_bytes()], &request, now)?.record(&store);
//! assert_eq!(again.unwrap_err().reason().as_str(), "replay");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! ## Threat model
#![doc = include_str!("../docs/threat-model.md")]

mod alg;
mod b64;
pub mod challenge;
mod error;
pub mod failure;
mod htu;
mod json;
mod jwk;
pub mod jws;
pub mod jwt;
mod key;
mod nonce;
mod proof;
pub mod replay;
mod syntax;
pub mod target;
pub mod time;
mod verify;

pub use crate::alg::{
    ALL_ALGORITHMS, Algorithm, Curve, DEFAULT_ALGORITHMS, DEFAULT_MAX_PROOF_BYTES, KeyFamily,
    MlDsaParameterSet, UnknownAlgorithm,
};
pub use crate::challenge::{Challenge, ChallengeError};
pub use crate::error::{
    Error, ErrorResponse, NonceError, ProofError, Reason, RequestError, RfcError, Role,
};
pub use crate::htu::{Htu, HtuBase, HtuError};
pub use crate::jwk::{Jkt, JwkError, MAX_JWK_BYTES, MAX_RSA_BITS, MIN_RSA_BITS, PublicJwk};
pub use crate::key::{
    KeyError, MAX_PRIVATE_KEY_TEXT, PrivateKey, RandomSource, Signer, SystemRandomSource,
};
pub use crate::nonce::{
    ExpectedNonce, MIN_SECRET_LEN, NonceSecret, NonceStatus, NonceValidator, StatelessNonces,
};
pub use crate::proof::{Ath, JTI_RANDOM_BYTES, ProofBuilder};
pub use crate::replay::{
    AsyncReplayStore, Insert, MemoryReplayConfig, MemoryReplayStore, ReplayKey, ReplayStore,
    ReplayStoreError,
};
pub use crate::target::{RequestTarget, TargetError};
#[cfg(feature = "std-clock")]
pub use crate::time::SystemClock;
pub use crate::time::{Clock, FixedClock, UnixTime, UtcDateTime};
pub use crate::verify::{
    Check, Freshness, Observer, ProofRequest, UnrecordedProof, VerifiedProof, Verifier,
    VerifierConfig, VerifierConfigBuilder, WantsAlgorithms, WantsNonces,
};

/// Operations that weaken or skip checks. Each has a legitimate use (diagnostics, a
/// replay check done elsewhere) and none belongs on a normal request path.
pub mod dangerous {
    use crate::{Htu, ProofRequest, UnrecordedProof, VerifiedProof};

    /// Accepts a proof without recording it for replay detection. For one-off
    /// diagnostics (`dpop inspect`) only: a server that does this accepts replays.
    #[must_use]
    pub fn skip_replay_check(proof: UnrecordedProof) -> VerifiedProof {
        proof.into_unrecorded_inner()
    }

    /// Lets a JWT without `aud` pass the audience check of [`crate::jwt::verify_jwt`] and
    /// [`crate::jwt::verify_access_token`]; a present `aud` is still typed and compared
    /// with [`crate::jwt::JwtValidation::audience`]. Without `aud` a token names no
    /// audience, so whoever holds it can replay it at any service trusting its issuer:
    /// only for issuers that never set `aud`, or for tests and fuzzing.
    #[must_use]
    pub fn accept_missing_aud(
        mut validation: crate::jwt::JwtValidation,
    ) -> crate::jwt::JwtValidation {
        validation.require_aud = false;
        validation
    }

    /// A request description where the method and/or URI may be unknown: the `htm` and
    /// `htu` checks are skipped for the missing parts.
    #[must_use]
    pub fn request_without_target<'a>(
        method: Option<&'a str>,
        htu: Option<&'a Htu>,
    ) -> ProofRequest<'a> {
        ProofRequest::without_target(method, htu)
    }

    /// Checks `ath` against `token` without a key binding (the binding is unknown,
    /// e.g. when inspecting a proof offline).
    #[must_use]
    pub fn with_access_token_unbound<'a>(
        mut request: ProofRequest<'a>,
        token: &'a str,
    ) -> ProofRequest<'a> {
        request.set_access_token_only(token);
        request
    }
}

/// Entry points for fuzzers and the seed-corpus test. Not a stable API.
#[doc(hidden)]
pub mod internal {
    /// Readers of the vector files the test suites share. Not a stable API.
    pub mod vectors {
        /// The cases of a request-target table (`tests/vectors/hostile-targets.txt`):
        /// one `EXPECTED TARGET` per line, `#` comments and blank lines skipped, `{XX}`
        /// standing for the raw byte 0xXX. `None` when a line is malformed.
        #[must_use]
        pub fn target_table(text: &str) -> Option<Vec<(String, Vec<u8>)>> {
            text.lines()
                .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
                .map(|line| {
                    let (expected, target) = line.split_once(' ')?;
                    Some((expected.to_owned(), decode_bytes(target)?))
                })
                .collect()
        }

        fn decode_bytes(text: &str) -> Option<Vec<u8>> {
            let mut out = Vec::with_capacity(text.len());
            let mut rest = text;
            while let Some(start) = rest.find('{') {
                out.extend_from_slice(rest.get(..start)?.as_bytes());
                let hex = rest.get(start.checked_add(1)?..start.checked_add(3)?)?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                rest = rest.get(start.checked_add(3)?..)?.strip_prefix('}')?;
            }
            out.extend_from_slice(rest.as_bytes());
            Some(out)
        }
    }

    /// Fuzzing harnesses: each takes arbitrary bytes and must never panic.
    pub mod fuzzing {
        use crate::{
            ALL_ALGORITHMS, Algorithm, FixedClock, Htu, Jkt, MemoryReplayStore, ProofRequest,
            PublicJwk, UnixTime, Verifier, VerifierConfig,
        };

        /// The thumbprint of the key that signs the seed corpus's resource-request proofs,
        /// so valid seeds reach every check of that path too.
        const CORPUS_JKT: &str = "mgDktqH7-CQG2Nme7odFppMoIMM5mRFtkhdKqKeNYFQ";

        /// Verifies `data` as a DPoP header against a fixed token request and a fixed
        /// resource request, with every algorithm allowed, and records it in a small store.
        pub fn verify_proof(data: &[u8]) {
            let Ok(builder) = VerifierConfig::builder().with_algorithms(&ALL_ALGORITHMS) else {
                return;
            };
            let Ok(verifier) = Verifier::new(builder.without_nonces()) else {
                return;
            };
            let Ok(htu) = Htu::parse("https://server.example.com/token") else {
                return;
            };
            let now = UnixTime::from_secs(1_562_262_620);
            let request = ProofRequest::new("POST", &htu);
            if let Ok(p) = verifier.verify_with_clock([data], &request, &FixedClock(now)) {
                let _ = p.record(&MemoryReplayStore::with_capacity(16));
            }
            // And once more as a resource request, exercising ath and key binding.
            if let Ok(jkt) = Jkt::parse(CORPUS_JKT) {
                let request = ProofRequest::new("GET", &htu).with_access_token("token", &jkt);
                let _ = verifier.verify([data], &request, now);
            }
            if let Ok(jwt) = crate::jwt::UnverifiedJwt::parse(&String::from_utf8_lossy(data)) {
                let _ = (jwt.kid(), jwt.str_claim("jti"));
            }
            let _ = Algorithm::from_name(&String::from_utf8_lossy(data));
        }

        /// Parses `data` as a public JWK (its export must parse back to the same key) and
        /// as a private key.
        pub fn parse_jwk(data: &[u8]) {
            if let Ok(text) = std::str::from_utf8(data) {
                if let Ok(jwk) = PublicJwk::from_json(text) {
                    let again = PublicJwk::from_json(&jwk.to_json_value().to_string());
                    assert_eq!(
                        again.as_ref().ok(),
                        Some(&jwk),
                        "JWK export must round-trip"
                    );
                    assert_eq!(
                        again.ok().map(|j| j.thumbprint_input()),
                        Some(jwk.thumbprint_input())
                    );
                }
                let _ = crate::PrivateKey::from_jwk_json(text);
                let _ = crate::PrivateKey::from_pkcs8_pem(text, None);
            }
        }

        /// Normalises `data` as an `htu` and checks idempotence.
        pub fn normalise_htu(data: &[u8]) {
            if let Ok(text) = std::str::from_utf8(data)
                && let Ok(htu) = Htu::parse(text)
            {
                let again = Htu::parse(htu.as_str());
                assert_eq!(
                    again.as_ref().ok(),
                    Some(&htu),
                    "htu normalisation must be idempotent"
                );
            }
        }

        /// Checks `data` as a request target and a method. An accepted target must be a
        /// fixed point: parsing it again, or normalising it as RFC 3986 does (dot
        /// segments, unreserved escapes), gives the same path.
        pub fn canonical_target(data: &[u8]) {
            let Ok(text) = std::str::from_utf8(data) else {
                return;
            };
            let _ = crate::target::check_method(text);
            if let Ok(target) = crate::RequestTarget::parse(text) {
                assert_eq!(target.as_str(), text, "a canonical target is kept as sent");
                assert_eq!(
                    crate::RequestTarget::parse(target.as_str()).as_ref(),
                    Ok(&target),
                    "canonical targets must be fixed points"
                );
                assert_eq!(
                    crate::target::lenient_path(text).as_deref(),
                    Some(target.path()),
                    "normalising a canonical target must not change its path"
                );
            }
            if let Ok(target) = crate::RequestTarget::dangerous_parse_with_encoded_slashes(text) {
                // With `%2F` read as `/`, what was accepted is still canonical.
                let decoded = target.as_str().replace("%2F", "/");
                assert!(
                    crate::RequestTarget::parse(&decoded).is_ok(),
                    "an accepted %2F must not hide a dot or empty segment"
                );
            }
            let _ = crate::target::loose_form(text);
        }

        /// The issuer of the seed corpus's valid JWT.
        const CORPUS_ISSUER: &str = "http://127.0.0.1:18081";

        /// `data` is a JWK set, a newline, and a compact JWT (or just a JWT, checked
        /// against no keys): verified as a generic JWT and as an access token, at a time
        /// when the seed corpus's valid token is live.
        pub fn verify_jwt(data: &[u8]) {
            let Ok(text) = std::str::from_utf8(data) else {
                return;
            };
            let (jwks, token) = text.split_once('\n').unwrap_or(("", text));
            let keys = crate::jwt::JwkSet::from_json(jwks).unwrap_or_default();
            let now = UnixTime::from_secs(1_795_566_300);
            if let Ok(peeked) = crate::jwt::UnverifiedJwt::parse(token) {
                let _ = (
                    peeked.kid(),
                    peeked.str_claim("iss"),
                    peeked.str_claim("sub"),
                );
            }
            let validation = crate::dangerous::accept_missing_aud(crate::jwt::JwtValidation::new(
                CORPUS_ISSUER,
                None,
            ));
            let generic = crate::jwt::verify_jwt(token, &keys, &validation, now);
            if let Ok(jwt) = &generic {
                let _ = jwt.jkt();
                let _ = jwt.audiences();
                let _ = jwt.str_claim("sub");
                let _ = jwt.to_access_token();
            }
            let access = crate::jwt::verify_access_token(
                token,
                &keys,
                &crate::jwt::JwtValidation::new(CORPUS_ISSUER, Some("https://api.example.com")),
                now,
            );
            // A token good as an access token is good as a JWT: the two paths agree.
            if access.is_ok() {
                assert!(
                    generic.is_ok(),
                    "verify_access_token accepted what verify_jwt refused"
                );
            }
        }

        /// Parses `data` as a `WWW-Authenticate` value and a `DPoP-Nonce` value.
        pub fn parse_challenge(data: &[u8]) {
            if let Ok(text) = std::str::from_utf8(data) {
                if let Ok(challenges) = crate::challenge::parse(text) {
                    let rendered = crate::challenge::render(&challenges);
                    assert_eq!(
                        crate::challenge::parse(&rendered),
                        Ok(challenges),
                        "render must round-trip"
                    );
                }
                let _ = crate::challenge::parse_dpop_nonce(text);
            }
        }
    }
}
