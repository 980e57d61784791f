//! The checks of RFC 9449 §4.3, in the order the verifier runs them.

use core::time::Duration;
use std::sync::Arc;

use aws_lc_rs::digest;

use super::header_cache::Header;
use super::outcome::{Observer, UnrecordedProof, VerifiedProof};
use super::request::{PresentedToken, ProofRequest};
use super::{Freshness, Verifier};
use crate::alg::{AlgName, Algorithm};
use crate::b64;
use crate::error::{Error, NonceError, ProofError, Reason};
use crate::htu::Htu;
use crate::json::{self, Json, JsonError, Number, Object};
use crate::jwk::{Jkt, JwkError, PublicJwk};
use crate::proof::Ath;
use crate::replay::ReplayKey;
use crate::time::UnixTime;

/// The checks, in the order the verifier runs them, for reports such as `dpop inspect`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Check {
    /// One `DPoP` header, within the size limit, token68 syntax.
    Header,
    /// Compact JWS with three base64url parts and JSON objects without duplicates.
    Structure,
    /// `typ` is `dpop+jwt`.
    Typ,
    /// `alg` is asymmetric and allowed.
    Alg,
    /// No unknown `crit` parameters.
    Crit,
    /// `jwk` is a valid public key that fits `alg`.
    Jwk,
    /// Required claims present with the right types.
    Claims,
    /// `htm` equals the request method.
    Htm,
    /// `htu` equals the request URI.
    Htu,
    /// `iat` inside the acceptance window.
    Iat,
    /// `exp` and `nbf`, when present.
    Validity,
    /// Server nonce.
    Nonce,
    /// `ath` equals the access-token hash.
    Ath,
    /// Proof key equals the token's `cnf.jkt`.
    KeyBinding,
    /// Signature verifies with `jwk`.
    Signature,
}

impl Check {
    /// Every check, in order.
    pub const ALL: [Self; 15] = [
        Self::Header,
        Self::Structure,
        Self::Typ,
        Self::Alg,
        Self::Crit,
        Self::Jwk,
        Self::Claims,
        Self::Htm,
        Self::Htu,
        Self::Iat,
        Self::Validity,
        Self::Nonce,
        Self::Ath,
        Self::KeyBinding,
        Self::Signature,
    ];

    /// A stable snake_case name (for JSON reports and metrics).
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Header => "header",
            Self::Structure => "structure",
            Self::Typ => "typ",
            Self::Alg => "alg",
            Self::Crit => "crit",
            Self::Jwk => "jwk",
            Self::Claims => "claims",
            Self::Htm => "htm",
            Self::Htu => "htu",
            Self::Iat => "iat",
            Self::Validity => "validity",
            Self::Nonce => "nonce",
            Self::Ath => "ath",
            Self::KeyBinding => "key_binding",
            Self::Signature => "signature",
        }
    }

    /// The check that produces `reason`, or `None` for failures outside the proof
    /// checks (replay, store, clock, internal).
    #[must_use]
    pub const fn failed_by(reason: Reason) -> Option<Self> {
        Some(match reason {
            Reason::ProofMissing | Reason::MultipleProofs | Reason::ProofTooLarge => Self::Header,
            Reason::MalformedProof | Reason::DuplicateMember => Self::Structure,
            Reason::TypInvalid => Self::Typ,
            Reason::AlgNotAllowed | Reason::AlgUnsupported => Self::Alg,
            Reason::CritUnsupported => Self::Crit,
            Reason::AlgKeyMismatch
            | Reason::JwkMissing
            | Reason::JwkInvalid
            | Reason::JwkPrivate => Self::Jwk,
            Reason::ClaimMissing | Reason::ClaimInvalid => Self::Claims,
            Reason::HtmMismatch => Self::Htm,
            Reason::HtuInvalid | Reason::HtuMismatch => Self::Htu,
            Reason::IatTooOld | Reason::IatInFuture => Self::Iat,
            Reason::ProofExpired | Reason::ProofNotYetValid => Self::Validity,
            Reason::NonceRequired | Reason::NonceStale | Reason::NonceInvalid => Self::Nonce,
            Reason::AthMissing | Reason::AthMismatch => Self::Ath,
            Reason::KeyMismatch => Self::KeyBinding,
            Reason::SignatureInvalid => Self::Signature,
            _ => return None,
        })
    }

    /// A short description.
    #[must_use]
    pub const fn describe(self) -> &'static str {
        match self {
            Self::Header => "one DPoP header, within the size limit",
            Self::Structure => "compact JWS: three base64url parts, JSON without duplicate members",
            Self::Typ => "typ is dpop+jwt",
            Self::Alg => "alg is an allowed asymmetric algorithm",
            Self::Crit => "no unsupported crit parameters",
            Self::Jwk => "jwk is a valid public key matching alg",
            Self::Claims => "jti, htm, htu, iat present and well-typed",
            Self::Htm => "htm matches the request method",
            Self::Htu => "htu matches the request URI",
            Self::Iat => "iat is inside the acceptance window",
            Self::Validity => "exp / nbf, when present, hold",
            Self::Nonce => "nonce is a current server nonce",
            Self::Ath => "ath is the hash of the access token",
            Self::KeyBinding => "proof key is the token's cnf.jkt",
            Self::Signature => "signature verifies with jwk",
        }
    }
}

impl Verifier {
    /// Checks 4 (`typ`), 5 (`alg`), `crit` and 7 (`jwk`, fitting `alg`) on the encoded
    /// header.
    fn check_header<O: Observer + ?Sized>(
        &self,
        h64: &[u8],
        observer: &mut O,
    ) -> Result<Header, Error> {
        let cfg = &*self.config;
        let header_bytes =
            b64::decode(h64).ok_or_else(|| malformed("the header is not base64url"))?;
        let header = json::parse_object(&header_bytes)
            .map_err(|e| json_error("the header is not a JSON object", e))?;

        // Check 4 (and §11.5: refuse JWTs minted for other purposes).
        if header.get("typ").and_then(Json::as_str) != Some("dpop+jwt") {
            return Err(Error::Proof(ProofError::TypInvalid));
        }
        observer.passed(Check::Typ);

        // Check 5: the verifier's list decides, never the proof.
        let alg_name = header
            .get("alg")
            .and_then(Json::as_str)
            .ok_or_else(|| malformed("the header has no alg string"))?;
        let alg = match Algorithm::classify(alg_name) {
            AlgName::Known(alg) if cfg.algorithms.contains(&alg) => alg,
            AlgName::Known(alg) => return Err(Error::Proof(ProofError::AlgNotAllowed(alg))),
            AlgName::Forbidden => return Err(Error::Proof(ProofError::AlgForbidden)),
            AlgName::Unknown => return Err(Error::Proof(ProofError::AlgUnsupported)),
        };
        observer.passed(Check::Alg);

        // RFC 7515 §4.1.11: refuse extensions we do not understand. RFC 7797 `b64`
        // would change what the signature covers, so it is refused even without `crit`.
        if let Some(crit) = header.get("crit") {
            let Json::Array(names) = crit else {
                return Err(Error::Proof(ProofError::CritUnsupported));
            };
            let understood = |n: &Json<'_>| {
                n.as_str().is_some_and(|n| {
                    cfg.understood_crit.iter().any(|u| u == n) && header.contains(n)
                })
            };
            if names.is_empty() || !names.iter().all(understood) {
                return Err(Error::Proof(ProofError::CritUnsupported));
            }
        }
        if header.contains("b64") {
            return Err(Error::Proof(ProofError::CritUnsupported));
        }
        observer.passed(Check::Crit);

        // Check 7 and the key/alg family match, before any signature work.
        let jwk = match header.get("jwk") {
            None => return Err(Error::Proof(ProofError::JwkMissing)),
            Some(Json::Object(o)) => {
                PublicJwk::from_object(o).map_err(|e| Error::Proof(ProofError::Jwk(e)))?
            }
            Some(_) => return Err(Error::Proof(ProofError::Jwk(JwkError::NotJson))),
        };
        if !jwk.fits(alg) {
            return Err(Error::Proof(ProofError::AlgKeyMismatch(alg)));
        }
        observer.passed(Check::Jwk);
        Ok(Header { alg, jwk })
    }

    /// [`Verifier::verify`], reporting each passed or skipped check to `observer`.
    ///
    /// # Errors
    /// As [`Verifier::verify`].
    pub fn verify_observed<'h, I, O>(
        &self,
        dpop_headers: I,
        request: &ProofRequest<'_>,
        now: UnixTime,
        observer: &mut O,
    ) -> Result<UnrecordedProof, Error>
    where
        I: IntoIterator<Item = &'h [u8]>,
        O: Observer + ?Sized,
    {
        let cfg = &*self.config;

        // §4.3 check 1 and the size bound, before anything is parsed.
        let mut headers = dpop_headers.into_iter();
        let proof = headers.next().ok_or(Error::Proof(ProofError::Missing))?;
        if headers.next().is_some() {
            return Err(Error::Proof(ProofError::Multiple));
        }
        if proof.len() > cfg.max_proof_bytes {
            return Err(Error::Proof(ProofError::TooLarge {
                len: proof.len(),
                max: cfg.max_proof_bytes,
            }));
        }
        // RFC 9449 §4.1: the field value is token68. This also refuses whitespace and
        // the JWS JSON serialisation.
        if !crate::syntax::is_token68(proof) {
            return Err(malformed("the header value is not token68 (RFC 9449 §4.1)"));
        }
        observer.passed(Check::Header);

        // Check 2: exactly one compact JWS (a JWE has five parts).
        let mut parts = proof.split(|b| *b == b'.');
        let (Some(h64), Some(p64), Some(s64), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(malformed("expected three dot-separated parts"));
        };
        let signing_input = proof
            .get(..h64.len() + 1 + p64.len())
            .ok_or(Error::Unreachable("signing input bounds"))?;
        let payload_bytes =
            b64::decode(p64).ok_or_else(|| malformed("the payload is not base64url"))?;
        let signature =
            b64::decode(s64).ok_or_else(|| malformed("the signature is not base64url"))?;
        if signature.is_empty() {
            return Err(malformed("the signature is empty"));
        }
        // Checks 4, 5 and 7 depend only on the header bytes and this verifier's settings,
        // and a client sends the same header with every proof: reuse the verdict.
        let header = match self.headers.get(h64) {
            Some(h) => {
                for check in [Check::Typ, Check::Alg, Check::Crit, Check::Jwk] {
                    observer.passed(check);
                }
                h
            }
            None => {
                let h = Arc::new(self.check_header(h64, observer)?);
                self.headers.insert(h64, Arc::clone(&h));
                h
            }
        };
        let (alg, jwk) = (header.alg, &header.jwk);
        let claims = json::parse_object(&payload_bytes)
            .map_err(|e| json_error("the payload is not a JSON object", e))?;
        observer.passed(Check::Structure);

        // Check 3: required claims with the right JSON types.
        let jti = required_string(&claims, "jti")?;
        let htm = required_string(&claims, "htm")?;
        let htu = required_string(&claims, "htu")?;
        let iat =
            time_claim(&claims, "iat")?.ok_or(Error::Proof(ProofError::ClaimMissing("iat")))?;
        let ath = string_claim(&claims, "ath")?;
        let nonce = string_claim(&claims, "nonce")?;
        let exp = time_claim(&claims, "exp")?;
        let nbf = time_claim(&claims, "nbf")?;
        if jti.is_empty() {
            return Err(claim_invalid("jti", "must not be empty"));
        }
        if jti.len() > cfg.max_jti_bytes {
            return Err(claim_invalid("jti", "is longer than this server accepts"));
        }
        observer.passed(Check::Claims);

        // Check 8: methods are case-sensitive (RFC 9110 §9.1).
        match request.method {
            Some(m) if m == htm => observer.passed(Check::Htm),
            Some(_) => return Err(Error::Proof(ProofError::HtmMismatch)),
            None => observer.skipped(Check::Htm),
        }

        // Check 9, after RFC 3986 normalisation of both sides (§4.3 SHOULD). A client
        // usually sends the request's URI in exactly its normal form, and the normal form
        // normalises to itself: that claim needs no second parse.
        let proof_htu = match request.htu {
            Some(expected) if expected.as_str() == htu => expected.clone(),
            _ => Htu::parse(htu).map_err(|e| Error::Proof(ProofError::HtuInvalid(e)))?,
        };
        match request.htu {
            Some(expected) if *expected == proof_htu => observer.passed(Check::Htu),
            Some(expected) => {
                return Err(Error::Proof(ProofError::HtuMismatch {
                    proof: proof_htu.as_str().to_owned(),
                    request: expected.as_str().to_owned(),
                }));
            }
            None => observer.skipped(Check::Htu),
        }

        // Check 11: the acceptance window (§11.1).
        let mut replay_until = iat.saturating_add(cfg.max_age);
        if cfg.freshness == Freshness::Iat {
            let max_age = cfg.max_age.as_secs();
            let leeway = cfg.future_leeway.as_secs();
            if iat.as_secs().saturating_add(max_age) < now.as_secs() {
                return Err(Error::Proof(ProofError::IatTooOld { iat, now, max_age }));
            }
            if iat.as_secs() > now.as_secs().saturating_add(leeway) {
                return Err(Error::Proof(ProofError::IatInFuture { iat, now, leeway }));
            }
            observer.passed(Check::Iat);
        } else {
            observer.skipped(Check::Iat);
        }
        let leeway = cfg.future_leeway;
        if let Some(exp) = exp
            && exp.saturating_add(leeway) < now
        {
            return Err(Error::Proof(ProofError::Expired { exp, now }));
        }
        if let Some(nbf) = nbf
            && nbf > now.saturating_add(leeway)
        {
            return Err(Error::Proof(ProofError::NotYetValid { nbf, now }));
        }
        observer.passed(Check::Validity);

        // Check 10 (and §11.3: no downgrade once nonces are in use).
        let mut nonce_renew = false;
        match &cfg.nonces {
            Some(nonces) => {
                let status = nonces.validate(nonce, now)?;
                nonce_renew = status.renew;
                if cfg.freshness == Freshness::Nonce {
                    let until = status.expires_at.ok_or(Error::Nonce(NonceError::Invalid(
                        "the nonce scheme gives no issue time",
                    )))?;
                    replay_until = until;
                }
                observer.passed(Check::Nonce);
            }
            None => observer.skipped(Check::Nonce),
        }

        // Check 12: `ath` binds the proof to the presented token.
        match request.access_token {
            Some(presented) => {
                let ath = ath.ok_or(Error::Proof(ProofError::AthMissing))?;
                let matches = match presented {
                    PresentedToken::Token(token) => Ath::of_token(token).matches(ath),
                    PresentedToken::Hash(expected) => expected.matches(ath),
                };
                if !matches {
                    return Err(Error::Proof(ProofError::AthMismatch));
                }
                observer.passed(Check::Ath);
            }
            None => observer.skipped(Check::Ath),
        }

        // Check 12 / §6: the proof key is the key the token (or grant) is bound to.
        match request.bound_jkt {
            Some(bound) if bound == jwk.thumbprint() => observer.passed(Check::KeyBinding),
            Some(_) => return Err(Error::KeyMismatch),
            None => observer.skipped(Check::KeyBinding),
        }

        // Check 6, last because it is the expensive one.
        if !jwk.verify(alg, signing_input, &signature) {
            return Err(Error::Proof(ProofError::SignatureInvalid));
        }
        observer.passed(Check::Signature);

        let replay_key = replay_key(jwk.thumbprint(), jti);
        Ok(UnrecordedProof {
            proof: VerifiedProof {
                alg,
                jti: jti.to_owned(),
                iat,
                htm: htm.to_owned(),
                htu: proof_htu,
                nonce_renew,
                replay_key,
                // One second past the last accepted instant: the window is inclusive.
                replay_expires_at: replay_until.saturating_add(Duration::from_secs(1)),
                jwk: Arc::clone(&header),
            },
            verified_at: now,
        })
    }
}

fn malformed(what: &'static str) -> Error {
    Error::Proof(ProofError::Malformed(what))
}

fn json_error(part: &'static str, e: JsonError) -> Error {
    match e {
        JsonError::Duplicate => Error::Proof(ProofError::DuplicateMember),
        JsonError::TooLarge => malformed("a JSON object or array is too large"),
        JsonError::Syntax | JsonError::NotObject => malformed(part),
    }
}

fn claim_invalid(claim: &'static str, why: &'static str) -> Error {
    Error::Proof(ProofError::ClaimInvalid { claim, why })
}

fn string_claim<'o>(claims: &'o Object<'_>, name: &'static str) -> Result<Option<&'o str>, Error> {
    match claims.get(name) {
        None => Ok(None),
        Some(Json::String(s)) => Ok(Some(s)),
        Some(_) => Err(claim_invalid(name, "must be a string")),
    }
}

fn required_string<'o>(claims: &'o Object<'_>, name: &'static str) -> Result<&'o str, Error> {
    string_claim(claims, name)?.ok_or(Error::Proof(ProofError::ClaimMissing(name)))
}

/// A JWT NumericDate: a non-negative number of seconds; fractions are truncated
/// (RFC 7519 §2 allows them).
fn time_claim(claims: &Object<'_>, name: &'static str) -> Result<Option<UnixTime>, Error> {
    match claims.get(name) {
        None => Ok(None),
        Some(Json::Number(Number::U(n))) => Ok(Some(UnixTime::from_secs(*n))),
        Some(Json::Number(Number::F(f))) if f.is_finite() && *f >= 0.0 && *f < 9.0e15 => {
            // Truncation toward zero is the NumericDate meaning of a fractional value.
            #[expect(
                clippy::cast_possible_truncation,
                clippy::cast_sign_loss,
                reason = "range checked above"
            )]
            Ok(Some(UnixTime::from_secs(f.trunc() as u64)))
        }
        Some(Json::Number(_)) => Err(claim_invalid(name, "must be a non-negative NumericDate")),
        Some(_) => Err(claim_invalid(
            name,
            "must be a number (seconds since the epoch)",
        )),
    }
}

fn replay_key(jkt: &Jkt, jti: &str) -> ReplayKey {
    // jkt has a fixed length (43), so concatenation is unambiguous; the separator
    // keeps the input readable. One buffer and aws-lc's one-shot SHA-256: a multi-part
    // `digest::Context` goes through an EVP context, which costs more than the two
    // blocks it hashes here.
    let input = [jkt.as_str().as_bytes(), b":", jti.as_bytes()].concat();
    let d = digest::digest(&digest::SHA256, &input);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    ReplayKey::from_digest(out)
}
