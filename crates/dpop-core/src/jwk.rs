//! Public JWKs (RFC 7517, RFC 7518 §6, RFC 8037, RFC 9964 `AKP`) and JWK SHA-256
//! thumbprints (RFC 7638).
//!
//! Parsing is strict: exact member sizes, points checked to be on their curve, RSA keys
//! of 2048 to 8192 bits without leading zeros, ML-DSA keys of exactly their parameter
//! set's length (named by the required `alg`), and any private-key member refused where
//! a public key is expected (RFC 9449 §4.2, §4.3 check 7).

use core::fmt;
use std::sync::Arc;

use aws_lc_rs::digest;
use aws_lc_rs::signature::{ParsedPublicKey, RsaPublicKeyComponents};
use subtle::ConstantTimeEq;

use crate::alg::{Algorithm, Curve, KeyFamily, MlDsaParameterSet};
use crate::b64;
use crate::json::{self, Json, JsonError, Object};

/// Smallest RSA modulus accepted, in bits (RFC 9449 §11.6, NIST SP 800-131A).
pub const MIN_RSA_BITS: usize = 2048;
/// Largest RSA modulus accepted, in bits: bounds the verification cost an attacker can
/// impose with one proof.
pub const MAX_RSA_BITS: usize = 8192;
/// Largest JWK JSON text accepted by [`PublicJwk::from_json`].
pub const MAX_JWK_BYTES: usize = 4096;

/// Members that only private (or symmetric) keys carry. Seeing any of them where a public
/// key is expected means the client is leaking its key: refuse.
pub(crate) const PRIVATE_MEMBERS: [&str; 9] = ["d", "p", "q", "dp", "dq", "qi", "oth", "k", "priv"];

/// Why a JWK was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum JwkError {
    /// The text is not a JSON object (or is over [`MAX_JWK_BYTES`]).
    NotJson,
    /// The JSON has a member twice.
    DuplicateMember,
    /// A private-key member (`d`, `p`, `q`, `dp`, `dq`, `qi`, `oth`, `k`, `priv`) is present.
    PrivateMember(&'static str),
    /// `kty` is missing or not `EC`, `OKP`, `RSA` or `AKP` (symmetric `oct` keys are refused).
    UnsupportedKeyType,
    /// `crv` is missing or not a supported curve for the key type.
    UnsupportedCurve,
    /// A required member is missing.
    MissingMember(&'static str),
    /// A member is not a string, not base64url, or has the wrong length.
    BadMember(&'static str),
    /// The EC point is not on the curve, or the key was otherwise refused by the crypto library.
    InvalidKey,
    /// The RSA modulus is outside 2048..=8192 bits.
    RsaKeySize(usize),
    /// The RSA public exponent is not an odd number between 3 and 2^32-1.
    RsaExponent,
    /// `use` is present and not `sig`, or `key_ops` does not allow `verify`.
    WrongUse,
    /// `alg` in the JWK is present and does not fit the key (for `AKP`: not an ML-DSA name).
    AlgMismatch,
}

impl fmt::Display for JwkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotJson => write!(f, "not a JSON object of at most {MAX_JWK_BYTES} bytes"),
            Self::DuplicateMember => f.write_str("a member appears twice"),
            Self::PrivateMember(m) => write!(
                f,
                "it contains the private-key member {m:?}; send only the public key"
            ),
            Self::UnsupportedKeyType => f.write_str("kty must be EC, OKP, RSA or AKP"),
            Self::UnsupportedCurve => {
                f.write_str("crv must be P-256, P-384 or P-521 for EC, Ed25519 for OKP")
            }
            Self::MissingMember(m) => write!(f, "the member {m:?} is missing"),
            Self::BadMember(m) => write!(
                f,
                "the member {m:?} is not canonical base64url of the right length"
            ),
            Self::InvalidKey => {
                f.write_str("the key is invalid (for EC: the point is not on the curve)")
            }
            Self::RsaKeySize(bits) => write!(
                f,
                "the RSA modulus has {bits} bits; {MIN_RSA_BITS} to {MAX_RSA_BITS} are accepted"
            ),
            Self::RsaExponent => {
                f.write_str("the RSA exponent must be odd, at least 3 and at most 2^32-1")
            }
            Self::WrongUse => f.write_str("use/key_ops do not allow signature verification"),
            Self::AlgMismatch => f.write_str("the JWK alg does not fit the key type"),
        }
    }
}

impl std::error::Error for JwkError {}

/// A JWK SHA-256 thumbprint (RFC 7638), base64url: the `jkt` of RFC 9449 §6.
///
/// Equality is constant-time: thumbprints are compared against token bindings.
#[derive(Clone)]
pub struct Jkt(String);

impl Jkt {
    /// Parses a `jkt` value: base64url of exactly 32 bytes (43 characters).
    ///
    /// # Errors
    /// When the value is not canonical base64url of a SHA-256 digest.
    pub fn parse(value: &str) -> Result<Self, JwkError> {
        let mut out = [0u8; 32];
        if value.len() != 43 || b64::decode_exact(value.as_bytes(), &mut out).is_none() {
            return Err(JwkError::BadMember("jkt"));
        }
        Ok(Self(value.to_owned()))
    }

    pub(crate) fn from_digest(d: &[u8]) -> Self {
        Self(b64::encode(d))
    }

    /// The base64url text.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl PartialEq for Jkt {
    fn eq(&self, other: &Self) -> bool {
        self.0.as_bytes().ct_eq(other.0.as_bytes()).into()
    }
}
impl Eq for Jkt {}

impl fmt::Debug for Jkt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Jkt({})", self.0)
    }
}

impl fmt::Display for Jkt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl core::str::FromStr for Jkt {
    type Err = JwkError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

#[derive(Clone)]
enum KeyData {
    Ec {
        curve: Curve,
        x: String,
        y: String,
        parsed: Arc<ParsedPublicKey>,
    },
    Ed25519 {
        x: String,
        parsed: Arc<ParsedPublicKey>,
    },
    Rsa {
        n: String,
        e: String,
        n_bytes: Vec<u8>,
        e_bytes: Vec<u8>,
    },
    MlDsa {
        set: MlDsaParameterSet,
        public: String,
        parsed: Arc<ParsedPublicKey>,
    },
}

/// A validated public key, as carried in a proof's `jwk` header or exported from a
/// private key. Cheap to clone.
#[derive(Clone)]
pub struct PublicJwk {
    key: KeyData,
    jkt: Jkt,
    alg: Option<Algorithm>,
}

impl fmt::Debug for PublicJwk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PublicJwk")
            .field("kty", &self.kty())
            .field("jkt", &self.jkt)
            .finish_non_exhaustive()
    }
}

impl PartialEq for PublicJwk {
    fn eq(&self, other: &Self) -> bool {
        self.jkt == other.jkt
    }
}
impl Eq for PublicJwk {}

fn str_member<'o>(o: &'o Object<'_>, name: &'static str) -> Result<&'o str, JwkError> {
    match o.get(name) {
        None => Err(JwkError::MissingMember(name)),
        Some(v) => v.as_str().ok_or(JwkError::BadMember(name)),
    }
}

fn fixed_member(o: &Object<'_>, name: &'static str, out: &mut [u8]) -> Result<(), JwkError> {
    b64::decode_exact(str_member(o, name)?.as_bytes(), out).ok_or(JwkError::BadMember(name))
}

impl PublicJwk {
    /// Parses a public JWK from JSON text.
    ///
    /// # Errors
    /// [`JwkError`] says what is wrong; private members are always refused.
    pub fn from_json(text: &str) -> Result<Self, JwkError> {
        if text.len() > MAX_JWK_BYTES {
            return Err(JwkError::NotJson);
        }
        match json::parse_object(text.as_bytes()) {
            Ok(o) => Self::from_object(&o),
            Err(JsonError::Duplicate) => Err(JwkError::DuplicateMember),
            Err(_) => Err(JwkError::NotJson),
        }
    }

    pub(crate) fn from_object(o: &Object<'_>) -> Result<Self, JwkError> {
        if let Some(m) = PRIVATE_MEMBERS.iter().find(|m| o.contains(m)) {
            return Err(JwkError::PrivateMember(m));
        }
        Self::public_part(o)
    }

    /// Reads the public members of `o` without looking for private ones (private-key
    /// import reuses this after reading `d` and friends itself).
    pub(crate) fn public_part(o: &Object<'_>) -> Result<Self, JwkError> {
        check_use(o)?;
        let kty = o
            .get("kty")
            .and_then(Json::as_str)
            .ok_or(JwkError::UnsupportedKeyType)?;
        let key = match kty {
            "EC" => {
                let curve = o
                    .get("crv")
                    .and_then(Json::as_str)
                    .and_then(Curve::from_name)
                    .ok_or(JwkError::UnsupportedCurve)?;
                let len = curve.coordinate_len();
                let mut point = [0u8; 1 + 2 * 66];
                let point = point.get_mut(..1 + 2 * len).ok_or(JwkError::InvalidKey)?;
                let (tag, xy) = point.split_at_mut(1);
                tag.copy_from_slice(&[0x04]);
                let (xb, yb) = xy.split_at_mut(len);
                fixed_member(o, "x", xb)?;
                fixed_member(o, "y", yb)?;
                // Parsing validates that the point is on the curve (and not infinity).
                let parsed = ParsedPublicKey::new(curve.algorithm().verification(), &*point)
                    .map_err(|_| JwkError::InvalidKey)?;
                KeyData::Ec {
                    curve,
                    x: str_member(o, "x")?.to_owned(),
                    y: str_member(o, "y")?.to_owned(),
                    parsed: Arc::new(parsed),
                }
            }
            "OKP" => {
                if o.get("crv").and_then(Json::as_str) != Some("Ed25519") {
                    return Err(JwkError::UnsupportedCurve);
                }
                let mut x = [0u8; 32];
                fixed_member(o, "x", &mut x)?;
                let parsed = ParsedPublicKey::new(Algorithm::Ed25519.verification(), x)
                    .map_err(|_| JwkError::InvalidKey)?;
                KeyData::Ed25519 {
                    x: str_member(o, "x")?.to_owned(),
                    parsed: Arc::new(parsed),
                }
            }
            "RSA" => {
                let n = str_member(o, "n")?;
                let e = str_member(o, "e")?;
                if n.len() > MAX_RSA_BITS / 6 + 4 {
                    return Err(JwkError::RsaKeySize(n.len() * 6));
                }
                let n_bytes = b64::decode(n.as_bytes()).ok_or(JwkError::BadMember("n"))?;
                let e_bytes = b64::decode(e.as_bytes()).ok_or(JwkError::BadMember("e"))?;
                check_rsa(&n_bytes, &e_bytes)?;
                KeyData::Rsa {
                    n: n.to_owned(),
                    e: e.to_owned(),
                    n_bytes,
                    e_bytes,
                }
            }
            "AKP" => {
                // RFC 9964: `alg` is required and names the parameter set.
                let alg = str_member(o, "alg").map_err(|e| match e {
                    JwkError::MissingMember(m) => JwkError::MissingMember(m),
                    _ => JwkError::AlgMismatch,
                })?;
                let set = match Algorithm::from_name(alg).map(Algorithm::key_family) {
                    Some(KeyFamily::MlDsa(set)) => set,
                    _ => return Err(JwkError::AlgMismatch),
                };
                let public = str_member(o, "pub")?;
                let raw = b64::decode_len(public.as_bytes(), set.public_key_len())
                    .ok_or(JwkError::BadMember("pub"))?;
                let parsed = ParsedPublicKey::new(set.algorithm().verification(), &raw)
                    .map_err(|_| JwkError::InvalidKey)?;
                KeyData::MlDsa {
                    set,
                    public: public.to_owned(),
                    parsed: Arc::new(parsed),
                }
            }
            _ => return Err(JwkError::UnsupportedKeyType),
        };
        let alg = match o.get("alg") {
            None => None,
            Some(v) => {
                let alg = v
                    .as_str()
                    .and_then(Algorithm::from_name)
                    .ok_or(JwkError::AlgMismatch)?;
                Some(alg)
            }
        };
        let mut jwk = Self {
            jkt: Jkt(String::new()),
            key,
            alg: None,
        };
        if let Some(alg) = alg {
            if !jwk.fits(alg) {
                return Err(JwkError::AlgMismatch);
            }
            jwk.alg = Some(alg);
        }
        jwk.jkt = jwk.compute_thumbprint();
        Ok(jwk)
    }

    /// The `kty` value.
    #[must_use]
    pub fn kty(&self) -> &'static str {
        match self.key {
            KeyData::Ec { .. } => "EC",
            KeyData::Ed25519 { .. } => "OKP",
            KeyData::Rsa { .. } => "RSA",
            KeyData::MlDsa { .. } => "AKP",
        }
    }

    /// The key family (which algorithms can use it).
    #[must_use]
    pub fn family(&self) -> KeyFamily {
        match &self.key {
            KeyData::Ec { curve, .. } => KeyFamily::Ec(*curve),
            KeyData::Ed25519 { .. } => KeyFamily::Ed25519,
            KeyData::Rsa { .. } => KeyFamily::Rsa,
            KeyData::MlDsa { set, .. } => KeyFamily::MlDsa(*set),
        }
    }

    /// Whether `alg` can be used with this key (and with its `alg` member, if any).
    #[must_use]
    pub fn fits(&self, alg: Algorithm) -> bool {
        alg.key_family() == self.family() && self.alg.is_none_or(|a| a.same_scheme(alg))
    }

    /// The RFC 7638 SHA-256 thumbprint.
    #[must_use]
    pub fn thumbprint(&self) -> &Jkt {
        &self.jkt
    }

    /// RSA modulus size in bits (`None` for other key types).
    #[must_use]
    pub fn rsa_bits(&self) -> Option<usize> {
        match &self.key {
            KeyData::Rsa { n_bytes, .. } => Some(bit_len(n_bytes)),
            _ => None,
        }
    }

    /// The canonical RFC 7638 input: required members only, sorted, no whitespace.
    #[must_use]
    pub fn thumbprint_input(&self) -> String {
        match &self.key {
            KeyData::Ec { curve, x, y, .. } => format!(
                r#"{{"crv":"{}","kty":"EC","x":"{x}","y":"{y}"}}"#,
                curve.name()
            ),
            KeyData::Ed25519 { x, .. } => format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{x}"}}"#),
            KeyData::Rsa { n, e, .. } => format!(r#"{{"e":"{e}","kty":"RSA","n":"{n}"}}"#),
            // RFC 9964 §6: the required members of an AKP key are alg, kty and pub.
            KeyData::MlDsa { set, public, .. } => format!(
                r#"{{"alg":"{}","kty":"AKP","pub":"{public}"}}"#,
                set.algorithm().name()
            ),
        }
    }

    fn compute_thumbprint(&self) -> Jkt {
        // base64url values never need JSON escaping, so the canonical form is plain text.
        Jkt::from_digest(
            digest::digest(&digest::SHA256, self.thumbprint_input().as_bytes()).as_ref(),
        )
    }

    /// The public JWK as a JSON object with only the required members (the same members
    /// as the thumbprint input), which is what a proof header should carry.
    #[must_use]
    pub fn to_json_value(&self) -> serde_json::Value {
        let mut m = serde_json::Map::new();
        match &self.key {
            KeyData::Ec { curve, x, y, .. } => {
                m.insert("kty".into(), "EC".into());
                m.insert("crv".into(), curve.name().into());
                m.insert("x".into(), x.as_str().into());
                m.insert("y".into(), y.as_str().into());
            }
            KeyData::Ed25519 { x, .. } => {
                m.insert("kty".into(), "OKP".into());
                m.insert("crv".into(), "Ed25519".into());
                m.insert("x".into(), x.as_str().into());
            }
            KeyData::Rsa { n, e, .. } => {
                m.insert("kty".into(), "RSA".into());
                m.insert("n".into(), n.as_str().into());
                m.insert("e".into(), e.as_str().into());
            }
            KeyData::MlDsa { set, public, .. } => {
                m.insert("kty".into(), "AKP".into());
                m.insert("alg".into(), set.algorithm().name().into());
                m.insert("pub".into(), public.as_str().into());
            }
        }
        serde_json::Value::Object(m)
    }

    /// Checks `signature` (the raw JWS form: `R || S` for ECDSA) over `message` with
    /// `alg`, which must fit this key. For checking what a signer outside the process
    /// (HSM, TPM, KMS) returns; proofs and tokens are verified by [`crate::Verifier`] and
    /// [`crate::jwt`], which demand more of a header than a signature.
    #[must_use]
    pub fn verify(&self, alg: Algorithm, message: &[u8], signature: &[u8]) -> bool {
        if !self.fits(alg) {
            return false;
        }
        match &self.key {
            // ML-DSA: pure mode with the empty context string (RFC 9964 §3).
            KeyData::Ec { parsed, .. }
            | KeyData::Ed25519 { parsed, .. }
            | KeyData::MlDsa { parsed, .. } => parsed.verify_sig(message, signature).is_ok(),
            KeyData::Rsa {
                n_bytes, e_bytes, ..
            } => alg.rsa_parameters().is_some_and(|params| {
                RsaPublicKeyComponents {
                    n: n_bytes.as_slice(),
                    e: e_bytes.as_slice(),
                }
                .verify(params, message, signature)
                .is_ok()
            }),
        }
    }

    /// The raw key bytes a bare crypto-library verification would use (uncompressed EC
    /// point, Ed25519 or ML-DSA public key; RSA returns `None`). For benchmarks and interop
    /// tests.
    #[doc(hidden)]
    #[must_use]
    pub fn raw_public_key(&self) -> Option<Vec<u8>> {
        match &self.key {
            KeyData::Ec { parsed, .. }
            | KeyData::Ed25519 { parsed, .. }
            | KeyData::MlDsa { parsed, .. } => Some(AsRef::<[u8]>::as_ref(&**parsed).to_vec()),
            KeyData::Rsa { .. } => None,
        }
    }

    /// RSA `(n, e)` bytes, for benchmarks and interop tests.
    #[doc(hidden)]
    #[must_use]
    pub fn rsa_components(&self) -> Option<(Vec<u8>, Vec<u8>)> {
        match &self.key {
            KeyData::Rsa {
                n_bytes, e_bytes, ..
            } => Some((n_bytes.clone(), e_bytes.clone())),
            _ => None,
        }
    }
}

fn check_use(o: &Object<'_>) -> Result<(), JwkError> {
    if let Some(u) = o.get("use")
        && u.as_str() != Some("sig")
    {
        return Err(JwkError::WrongUse);
    }
    if let Some(ops) = o.get("key_ops") {
        let Json::Array(ops) = ops else {
            return Err(JwkError::WrongUse);
        };
        if !ops
            .iter()
            .any(|op| matches!(op.as_str(), Some("verify" | "sign")))
        {
            return Err(JwkError::WrongUse);
        }
    }
    Ok(())
}

fn bit_len(bytes: &[u8]) -> usize {
    match bytes.first() {
        None => 0,
        Some(first) => bytes.len() * 8 - first.leading_zeros() as usize,
    }
}

fn check_rsa(n: &[u8], e: &[u8]) -> Result<(), JwkError> {
    // RFC 7518 §6.3.1.1: no leading zero octets, so the thumbprint input is canonical.
    if n.first().is_none_or(|b| *b == 0) {
        return Err(JwkError::BadMember("n"));
    }
    let bits = bit_len(n);
    if !(MIN_RSA_BITS..=MAX_RSA_BITS).contains(&bits) {
        return Err(JwkError::RsaKeySize(bits));
    }
    if e.first().is_none_or(|b| *b == 0) || e.len() > 4 {
        return Err(JwkError::RsaExponent);
    }
    let value = e.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b));
    if value < 3 || value % 2 == 0 {
        return Err(JwkError::RsaExponent);
    }
    if n.last().is_none_or(|b| b % 2 == 0) {
        // An even modulus is not a product of two odd primes.
        return Err(JwkError::InvalidKey);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const EC: &str = r#"{"kty":"EC","x":"l8tFrhx-34tV3hRICRDY9zCkDlpBhF42UQUfWVAWBFs","y":"9VE4jf_Ok_o64zbTTlcuNJajHmt6v9TDVrU0CdvGRDA","crv":"P-256"}"#;

    fn ec_with(extra: &str) -> String {
        EC.replacen('}', &format!(",{extra}}}"), 1)
    }

    #[test]
    fn rfc9449_example_key_thumbprint() {
        let jwk = PublicJwk::from_json(EC).unwrap();
        assert_eq!(
            jwk.thumbprint().as_str(),
            "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I"
        );
        assert!(jwk.fits(Algorithm::Es256));
        assert!(!jwk.fits(Algorithm::Es384));
        assert!(!jwk.fits(Algorithm::Rs256));
    }

    #[test]
    fn private_members_refused() {
        for m in PRIVATE_MEMBERS {
            let text = ec_with(&format!(r#""{m}":"AAAA""#));
            assert_eq!(
                PublicJwk::from_json(&text),
                Err(JwkError::PrivateMember(m)),
                "{m}"
            );
        }
    }

    #[test]
    fn ec_rejections() {
        let bad_point = EC.replace(
            "9VE4jf_Ok_o64zbTTlcuNJajHmt6v9TDVrU0CdvGRDA",
            "9VE5jf_Ok_o64zbTTlcuNJajHmt6v9TDVrU0CdvGRDA",
        );
        assert_eq!(
            PublicJwk::from_json(&bad_point),
            Err(JwkError::InvalidKey),
            "point off the curve"
        );
        let short = EC.replace(
            "l8tFrhx-34tV3hRICRDY9zCkDlpBhF42UQUfWVAWBFs",
            "l8tFrhx-34tV3hRICRDY9zCkDlpBhF42UQUfWVAWBA",
        );
        assert_eq!(PublicJwk::from_json(&short), Err(JwkError::BadMember("x")));
        assert_eq!(
            PublicJwk::from_json(&EC.replace("P-256", "P-384")),
            Err(JwkError::BadMember("x"))
        );
        assert_eq!(
            PublicJwk::from_json(&EC.replace("P-256", "secp256k1")),
            Err(JwkError::UnsupportedCurve)
        );
        assert_eq!(
            PublicJwk::from_json(&EC.replace(r#""kty":"EC""#, r#""kty":"oct""#)),
            Err(JwkError::UnsupportedKeyType)
        );
        assert_eq!(
            PublicJwk::from_json(&EC.replace(r#","crv":"P-256""#, "")),
            Err(JwkError::UnsupportedCurve)
        );
        assert_eq!(
            PublicJwk::from_json(&EC.replace(r#""y":"#, r#""z":"#)),
            Err(JwkError::MissingMember("y"))
        );
        assert_eq!(
            PublicJwk::from_json(&ec_with(r#""x":"AA""#)),
            Err(JwkError::DuplicateMember)
        );
        assert_eq!(
            PublicJwk::from_json(&ec_with(r#""use":"enc""#)),
            Err(JwkError::WrongUse)
        );
        assert_eq!(
            PublicJwk::from_json(&ec_with(r#""key_ops":["encrypt"]"#)),
            Err(JwkError::WrongUse)
        );
        assert_eq!(
            PublicJwk::from_json(&ec_with(r#""alg":"RS256""#)),
            Err(JwkError::AlgMismatch)
        );
        assert!(PublicJwk::from_json(&ec_with(r#""alg":"ES256","use":"sig","kid":"k1""#)).is_ok());
        assert_eq!(PublicJwk::from_json("[]"), Err(JwkError::NotJson));
        assert_eq!(
            PublicJwk::from_json(&" ".repeat(MAX_JWK_BYTES + 1)),
            Err(JwkError::NotJson)
        );
    }

    #[test]
    fn jkt_parse_and_compare() {
        let a = Jkt::parse("0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I").unwrap();
        let b: Jkt = "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I"
            .parse()
            .unwrap();
        assert_eq!(a, b);
        assert!(Jkt::parse("0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4").is_err());
        assert!(Jkt::parse("0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I=").is_err());
        assert!(Jkt::parse("0ZcOCORZNYy+DWpqq30jZyJGHTN0d2HglBV3uiguA4I").is_err());
    }
}
