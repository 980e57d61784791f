//! Verifying DPoP proofs: every check of RFC 9449 §4.3.
//!
//! Order matters for cost and for side effects, not for correctness (§4.3 lets checks
//! run in any order): bounds and syntax first, then the header (`typ`, `alg`, `crit`,
//! `jwk`), then the claims against the request, time, nonce, `ath` and key binding, and
//! only then the signature, the one expensive step. The replay record comes last, in a
//! separate step ([`UnrecordedProof::record`]), so a proof that fails any check never
//! reaches the replay store.

use core::fmt;
use core::time::Duration;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use aws_lc_rs::digest;

use crate::alg::{AlgName, Algorithm, DEFAULT_ALGORITHMS};
use crate::b64;
use crate::error::{Error, NonceError, ProofError, Reason};
use crate::htu::Htu;
use crate::json::{self, Json, JsonError, Number, Object};
use crate::jwk::{Jkt, JwkError, PublicJwk};
use crate::nonce::NonceValidator;
use crate::proof::Ath;
use crate::replay::{AsyncReplayStore, Insert, ReplayKey, ReplayStore};
use crate::time::{Clock, UnixTime};

/// Where a proof's creation time comes from (RFC 9449 §11.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Freshness {
    /// `iat` must lie inside `[now - max_age, now + future_leeway]`.
    Iat,
    /// The server nonce's issue time bounds the proof's age; `iat` is only type-checked.
    /// For clients with unreliable clocks. Requires a nonce scheme that reports issue
    /// times (such as [`crate::StatelessNonces`]).
    Nonce,
}

/// Verifier settings. Security-critical choices (algorithms, nonces) go through
/// [`VerifierConfig::builder`]; the tunables are public fields.
#[derive(Clone)]
#[non_exhaustive]
pub struct VerifierConfig {
    algorithms: Vec<Algorithm>,
    nonces: Option<Arc<dyn NonceValidator>>,
    /// Largest `DPoP` header value accepted, checked before any parsing. Defaults to 8192.
    pub max_proof_bytes: usize,
    /// Oldest accepted `iat`, relative to server time. Defaults to 60 s.
    pub max_age: Duration,
    /// Largest accepted lead of `iat` over server time (client clock skew). Defaults to 15 s.
    pub future_leeway: Duration,
    /// Longest accepted `jti`, in bytes (RFC 9449 §11.1 memory bound). Defaults to 256.
    pub max_jti_bytes: usize,
    /// Source of proof freshness. Defaults to [`Freshness::Iat`].
    pub freshness: Freshness,
    /// `crit` header parameters the caller processes itself. Defaults to none, so any
    /// `crit` is refused.
    pub understood_crit: Vec<String>,
    /// Distinct proof headers (one per client key, typically) whose verdict is kept, so
    /// a client's repeated header is not re-parsed; 0 disables. Defaults to 4096.
    pub header_cache_capacity: usize,
}

impl fmt::Debug for VerifierConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerifierConfig")
            .field("algorithms", &self.algorithms)
            .field("nonces", &self.nonces.is_some())
            .field("max_proof_bytes", &self.max_proof_bytes)
            .field("max_age", &self.max_age)
            .field("future_leeway", &self.future_leeway)
            .field("max_jti_bytes", &self.max_jti_bytes)
            .field("freshness", &self.freshness)
            .field("understood_crit", &self.understood_crit)
            .field("header_cache_capacity", &self.header_cache_capacity)
            .finish()
    }
}

/// Builder state: choose the allowed algorithms.
#[derive(Debug)]
#[non_exhaustive]
pub struct WantsAlgorithms;

/// Builder state: choose the nonce policy.
#[derive(Debug)]
pub struct WantsNonces {
    algorithms: Vec<Algorithm>,
}

/// Typestate builder for [`VerifierConfig`]: algorithms, then nonce policy.
#[derive(Debug)]
pub struct ConfigBuilder<S> {
    state: S,
}

impl VerifierConfig {
    /// Starts building a configuration.
    #[must_use]
    pub fn builder() -> ConfigBuilder<WantsAlgorithms> {
        ConfigBuilder {
            state: WantsAlgorithms,
        }
    }

    /// The allowed algorithms, for `algs` in challenges and metadata.
    #[must_use]
    pub fn algorithms(&self) -> &[Algorithm] {
        &self.algorithms
    }
}

impl ConfigBuilder<WantsAlgorithms> {
    /// ES256, ES384, EdDSA/Ed25519, PS256 and RS256.
    #[must_use]
    pub fn with_default_algorithms(self) -> ConfigBuilder<WantsNonces> {
        ConfigBuilder {
            state: WantsNonces {
                algorithms: DEFAULT_ALGORITHMS.to_vec(),
            },
        }
    }

    /// Exactly `algorithms` (duplicates removed, order kept).
    ///
    /// # Errors
    /// [`Error::ApiMisuse`] when the list is empty.
    pub fn with_algorithms(
        self,
        algorithms: &[Algorithm],
    ) -> Result<ConfigBuilder<WantsNonces>, Error> {
        let mut list: Vec<Algorithm> = Vec::new();
        for alg in algorithms {
            if !list.contains(alg) {
                list.push(*alg);
            }
        }
        if list.is_empty() {
            return Err(Error::ApiMisuse("at least one algorithm must be allowed"));
        }
        Ok(ConfigBuilder {
            state: WantsNonces { algorithms: list },
        })
    }
}

impl ConfigBuilder<WantsNonces> {
    /// Every proof must carry a nonce accepted by `nonces` (RFC 9449 §8, §9).
    pub fn with_nonces(self, nonces: Arc<dyn NonceValidator>) -> VerifierConfig {
        self.finish(Some(nonces))
    }

    /// No server nonces; any `nonce` claim is ignored.
    #[must_use]
    pub fn without_nonces(self) -> VerifierConfig {
        self.finish(None)
    }

    fn finish(self, nonces: Option<Arc<dyn NonceValidator>>) -> VerifierConfig {
        VerifierConfig {
            algorithms: self.state.algorithms,
            nonces,
            max_proof_bytes: 8192,
            max_age: Duration::from_secs(60),
            future_leeway: Duration::from_secs(15),
            max_jti_bytes: 256,
            freshness: Freshness::Iat,
            understood_crit: Vec::new(),
            header_cache_capacity: 4096,
        }
    }
}

/// What the proof must match: the request, and for a protected resource the access
/// token and its bound key.
#[derive(Clone, Copy, Debug)]
pub struct ProofRequest<'a> {
    method: Option<&'a str>,
    htu: Option<&'a Htu>,
    access_token: Option<PresentedToken<'a>>,
    bound_jkt: Option<&'a Jkt>,
}

/// The presented access token, or its hash when the caller already computed it.
#[derive(Clone, Copy, Debug)]
enum PresentedToken<'a> {
    Token(&'a str),
    Hash(&'a Ath),
}

impl<'a> ProofRequest<'a> {
    /// A request with `method` to `htu` (the URI the client addressed, normalised).
    #[must_use]
    pub fn new(method: &'a str, htu: &'a Htu) -> Self {
        Self {
            method: Some(method),
            htu: Some(htu),
            access_token: None,
            bound_jkt: None,
        }
    }

    /// At a protected resource: the presented access token (checked against `ath`) and
    /// the key it is bound to (`cnf.jkt`, checked against the proof key).
    #[must_use]
    pub fn with_access_token(mut self, token: &'a str, cnf_jkt: &'a Jkt) -> Self {
        self.access_token = Some(PresentedToken::Token(token));
        self.bound_jkt = Some(cnf_jkt);
        self
    }

    /// [`ProofRequest::with_access_token`] for a caller that already hashed the token
    /// (e.g. as a cache key), so it is not hashed twice.
    #[must_use]
    pub fn with_access_token_hash(mut self, ath: &'a Ath, cnf_jkt: &'a Jkt) -> Self {
        self.access_token = Some(PresentedToken::Hash(ath));
        self.bound_jkt = Some(cnf_jkt);
        self
    }

    /// At a token endpoint: the key an earlier step bound (refresh token binding,
    /// `dpop_jkt` of RFC 9449 §10). The proof key must be this key.
    #[must_use]
    pub fn with_expected_jkt(mut self, jkt: &'a Jkt) -> Self {
        self.bound_jkt = Some(jkt);
        self
    }

    /// Only the access-token check, without key binding. Reachable through
    /// [`crate::dangerous`].
    pub(crate) fn set_access_token_only(&mut self, token: &'a str) {
        self.access_token = Some(PresentedToken::Token(token));
    }

    pub(crate) fn without_target(method: Option<&'a str>, htu: Option<&'a Htu>) -> Self {
        Self {
            method,
            htu,
            access_token: None,
            bound_jkt: None,
        }
    }
}

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

/// Receives the progress of a verification (for diagnostics). The hot path uses a no-op.
pub trait Observer {
    /// `check` passed.
    fn passed(&mut self, check: Check);
    /// `check` was not run because the request gave nothing to compare with.
    fn skipped(&mut self, check: Check);
}

struct NoObserver;

impl Observer for NoObserver {
    #[inline]
    fn passed(&mut self, _: Check) {}
    #[inline]
    fn skipped(&mut self, _: Check) {}
}

/// A proof that passed every check except replay. Record it with
/// [`UnrecordedProof::record`] (or [`UnrecordedProof::record_async`]) to obtain the
/// [`VerifiedProof`] the rest of a server works with.
#[must_use = "a proof is not verified until its replay record succeeds"]
#[derive(Debug)]
pub struct UnrecordedProof {
    proof: VerifiedProof,
}

impl UnrecordedProof {
    /// The replay key (SHA-256 of `jkt` and `jti`).
    #[must_use]
    pub fn replay_key(&self) -> &ReplayKey {
        &self.proof.replay_key
    }

    /// How long the replay record must be kept: the end of the proof's acceptance window.
    #[must_use]
    pub fn replay_expires_at(&self) -> UnixTime {
        self.proof.replay_expires_at
    }

    /// The proof's `iat` (for clock-skew metrics before the record is made).
    #[must_use]
    pub fn iat(&self) -> UnixTime {
        self.proof.iat
    }

    /// The proof key's thumbprint.
    #[must_use]
    pub fn jkt(&self) -> &Jkt {
        self.proof.jwk.jwk.thumbprint()
    }

    /// The client should get a fresh nonce on this response.
    #[must_use]
    pub fn should_renew_nonce(&self) -> bool {
        self.proof.nonce_renew
    }

    /// Records the proof in `store`; a proof seen before is refused.
    ///
    /// # Errors
    /// [`Error::Replay`] for a repeat; [`Error::ReplayStore`] when the store cannot
    /// record it (the request must then be refused: fail closed).
    pub fn record<S: ReplayStore + ?Sized>(
        self,
        store: &S,
        now: UnixTime,
    ) -> Result<VerifiedProof, Error> {
        match store.insert_if_absent(&self.proof.replay_key, self.proof.replay_expires_at, now)? {
            Insert::Inserted => Ok(self.proof),
            Insert::AlreadyPresent => Err(Error::Replay),
        }
    }

    /// [`UnrecordedProof::record`] for asynchronous stores (e.g. Redis).
    ///
    /// # Errors
    /// As [`UnrecordedProof::record`].
    pub async fn record_async<S: AsyncReplayStore + ?Sized>(
        self,
        store: &S,
        now: UnixTime,
    ) -> Result<VerifiedProof, Error> {
        match store
            .insert_if_absent(&self.proof.replay_key, self.proof.replay_expires_at, now)
            .await?
        {
            Insert::Inserted => Ok(self.proof),
            Insert::AlreadyPresent => Err(Error::Replay),
        }
    }

    pub(crate) fn into_unrecorded_inner(self) -> VerifiedProof {
        self.proof
    }
}

/// A proof that passed every check of RFC 9449 §4.3, including replay. Only the
/// verifier can make one, so code that takes it cannot skip a check.
#[derive(Debug)]
pub struct VerifiedProof {
    alg: Algorithm,
    jwk: Arc<Header>,
    jti: String,
    iat: UnixTime,
    htm: String,
    htu: Htu,
    nonce_renew: bool,
    replay_key: ReplayKey,
    replay_expires_at: UnixTime,
}

impl VerifiedProof {
    /// The proof key's thumbprint: bind issued tokens to it (`cnf.jkt`).
    #[must_use]
    pub fn jkt(&self) -> &Jkt {
        self.jwk.jwk.thumbprint()
    }

    /// The proof's public key.
    #[must_use]
    pub fn jwk(&self) -> &PublicJwk {
        &self.jwk.jwk
    }

    /// The signature algorithm.
    #[must_use]
    pub fn algorithm(&self) -> Algorithm {
        self.alg
    }

    /// The proof's `jti`.
    #[must_use]
    pub fn jti(&self) -> &str {
        &self.jti
    }

    /// The proof's `iat`.
    #[must_use]
    pub fn iat(&self) -> UnixTime {
        self.iat
    }

    /// The proof's `htm`.
    #[must_use]
    pub fn htm(&self) -> &str {
        &self.htm
    }

    /// The proof's `htu`, normalised.
    #[must_use]
    pub fn htu(&self) -> &Htu {
        &self.htu
    }

    /// The client should get a fresh nonce on this response (RFC 9449 §8.2).
    #[must_use]
    pub fn should_renew_nonce(&self) -> bool {
        self.nonce_renew
    }

    /// The replay key that was recorded.
    #[must_use]
    pub fn replay_key(&self) -> &ReplayKey {
        &self.replay_key
    }

    /// The end of the proof's acceptance window.
    #[must_use]
    pub fn replay_expires_at(&self) -> UnixTime {
        self.replay_expires_at
    }
}

/// Checks DPoP proofs against a [`VerifierConfig`]. Cheap to share across threads.
#[derive(Clone, Debug)]
pub struct Verifier {
    config: Arc<VerifierConfig>,
    headers: Arc<HeaderCache>,
}

/// Longest encoded header kept in the header cache.
const MAX_CACHED_HEADER: usize = 2048;

/// A proof header that passed checks 4, 5 and 7 under one verifier's settings.
#[derive(Debug)]
pub(crate) struct Header {
    alg: Algorithm,
    jwk: PublicJwk,
}

/// Verdicts on encoded headers, keyed by their exact bytes. Bounded: when full it is
/// emptied (a miss only costs re-checking one header).
#[derive(Debug)]
struct HeaderCache {
    entries: Mutex<HashMap<Box<[u8]>, Arc<Header>>>,
    capacity: usize,
}

impl HeaderCache {
    fn get(&self, h64: &[u8]) -> Option<Arc<Header>> {
        if self.capacity == 0 {
            return None;
        }
        self.entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(h64)
            .cloned()
    }

    fn insert(&self, h64: &[u8], header: Arc<Header>) {
        // Real headers (EC, Ed25519, RSA up to 4096 bits) are well under this; larger
        // ones are still verified, just not kept, so the cache stays small (at most
        // capacity × 2 KiB of keys) whatever keys clients invent.
        if self.capacity == 0 || h64.len() > MAX_CACHED_HEADER {
            return;
        }
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        if entries.len() >= self.capacity {
            entries.clear();
        }
        entries.insert(h64.into(), header);
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
    let mut ctx = digest::Context::new(&digest::SHA256);
    // jkt has a fixed length (43), so concatenation is unambiguous; the separator
    // keeps the input readable.
    ctx.update(jkt.as_str().as_bytes());
    ctx.update(b":");
    ctx.update(jti.as_bytes());
    let d = ctx.finish();
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    ReplayKey::from_digest(out)
}

impl Verifier {
    /// A verifier for `config`.
    ///
    /// # Errors
    /// [`Error::ApiMisuse`] for inconsistent settings (nonce freshness without nonces,
    /// zero limits).
    pub fn new(config: VerifierConfig) -> Result<Self, Error> {
        if config.freshness == Freshness::Nonce && config.nonces.is_none() {
            return Err(Error::ApiMisuse("Freshness::Nonce needs a nonce scheme"));
        }
        if config.max_proof_bytes == 0 || config.max_jti_bytes == 0 {
            return Err(Error::ApiMisuse(
                "max_proof_bytes and max_jti_bytes must be positive",
            ));
        }
        if config.max_age.is_zero() {
            return Err(Error::ApiMisuse("max_age must be positive"));
        }
        let headers = Arc::new(HeaderCache {
            entries: Mutex::new(HashMap::new()),
            capacity: config.header_cache_capacity,
        });
        Ok(Self {
            config: Arc::new(config),
            headers,
        })
    }

    /// The configuration.
    #[must_use]
    pub fn config(&self) -> &VerifierConfig {
        &self.config
    }

    /// The nonce scheme, when the verifier requires nonces: adapters use it to issue
    /// `DPoP-Nonce` values.
    #[must_use]
    pub fn nonces(&self) -> Option<&Arc<dyn NonceValidator>> {
        self.config.nonces.as_ref()
    }

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

    /// Verifies the `DPoP` header values of one request (pass every value: more than
    /// one is refused) against `request` at time `now`.
    ///
    /// # Errors
    /// The first failed check, as an [`Error`] with a stable [`crate::Reason`].
    pub fn verify<'h, I>(
        &self,
        dpop_headers: I,
        request: &ProofRequest<'_>,
        now: UnixTime,
    ) -> Result<UnrecordedProof, Error>
    where
        I: IntoIterator<Item = &'h [u8]>,
    {
        self.verify_observed(dpop_headers, request, now, &mut NoObserver)
    }

    /// [`Verifier::verify`] with the time from `clock`.
    ///
    /// # Errors
    /// [`Error::NoClock`] when the clock has no time; otherwise as [`Verifier::verify`].
    pub fn verify_with_clock<'h, I>(
        &self,
        dpop_headers: I,
        request: &ProofRequest<'_>,
        clock: &dyn Clock,
    ) -> Result<UnrecordedProof, Error>
    where
        I: IntoIterator<Item = &'h [u8]>,
    {
        let now = clock.now().ok_or(Error::NoClock)?;
        self.verify(dpop_headers, request, now)
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

        // Check 9, after RFC 3986 normalisation of both sides (§4.3 SHOULD).
        let proof_htu = Htu::parse(htu).map_err(|e| Error::Proof(ProofError::HtuInvalid(e)))?;
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
        })
    }
}

/// Decoded, unverified header and claims of a proof, for diagnostics only.
pub(crate) fn decode_parts(proof: &str) -> Result<(serde_json::Value, serde_json::Value), Error> {
    let mut parts = proof.trim().split('.');
    let (Some(h64), Some(p64)) = (parts.next(), parts.next()) else {
        return Err(malformed("expected three dot-separated parts"));
    };
    let header =
        b64::decode(h64.as_bytes()).ok_or_else(|| malformed("the header is not base64url"))?;
    let payload =
        b64::decode(p64.as_bytes()).ok_or_else(|| malformed("the payload is not base64url"))?;
    let header = json::parse_object(&header)
        .map_err(|e| json_error("the header is not a JSON object", e))?;
    let claims = json::parse_object(&payload)
        .map_err(|e| json_error("the payload is not a JSON object", e))?;
    Ok((
        Json::Object(header).to_value(),
        Json::Object(claims).to_value(),
    ))
}
