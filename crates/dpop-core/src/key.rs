//! Private keys, the [`Signer`] abstraction, and injected randomness.
//!
//! Software keys live in [`PrivateKey`]; a hardware key (HSM, TPM, OS keystore, cloud
//! KMS) fits behind [`Signer`], which only asks for the algorithm, the public JWK and a
//! raw JWS signature. Private material never appears in `Debug` output and the
//! serialised forms this module hands out are zeroized on drop.

use core::fmt;

use aws_lc_rs::encoding::{AsBigEndian, AsDer};
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use aws_lc_rs::rsa::KeySize;
use aws_lc_rs::signature::{EcdsaKeyPair, Ed25519KeyPair, KeyPair as _, PqdsaKeyPair, RsaKeyPair};
use pkcs1::der::{Decode as _, Encode as _};
use pkcs8::der::pem::{self, LineEnding};
use zeroize::Zeroizing;

use crate::alg::{Algorithm, Curve, KeyFamily, MlDsaParameterSet};
use crate::b64;
use crate::json::{self, Json, Object};
use crate::jwk::{Jkt, JwkError, PublicJwk};

/// Largest PEM or JWK text accepted when loading a private key.
pub const MAX_PRIVATE_KEY_TEXT: usize = 64 * 1024;

/// Why a key could not be generated, loaded, saved or used.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeyError {
    /// The text is not a PEM `PRIVATE KEY` (PKCS#8) document.
    NotPkcs8Pem,
    /// The PKCS#8 document holds no key type this crate supports, or is corrupt.
    UnsupportedPkcs8,
    /// The private JWK is malformed.
    Jwk(JwkError),
    /// The private JWK lacks a required private member.
    MissingPrivateMember(&'static str),
    /// The private and public parts of the key do not belong together.
    Inconsistent,
    /// The algorithm does not fit the key.
    AlgorithmMismatch(Algorithm),
    /// The crypto library failed (key generation, signing, randomness).
    Crypto(&'static str),
    /// A key held outside the process (HSM, TPM, KMS) could not sign: the message names
    /// the key (never a PIN), the backend and the device's error code.
    Device(String),
}

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotPkcs8Pem => f.write_str("not a PEM \"PRIVATE KEY\" (PKCS#8) document; convert other formats with `openssl pkcs8 -topk8 -nocrypt`"),
            Self::UnsupportedPkcs8 => f.write_str("the PKCS#8 key is not an unencrypted P-256, P-384, P-521, Ed25519, RSA (2048 to 8192 bits) or ML-DSA key"),
            Self::Jwk(e) => write!(f, "invalid private JWK: {e}"),
            Self::MissingPrivateMember(m) => write!(f, "the private JWK has no {m:?} member"),
            Self::Inconsistent => f.write_str("the private and public parts of the key do not match"),
            Self::AlgorithmMismatch(alg) => write!(f, "algorithm {alg} cannot be used with this key"),
            Self::Crypto(what) => write!(f, "crypto operation failed: {what}"),
            Self::Device(what) => f.write_str(what),
        }
    }
}

impl std::error::Error for KeyError {}

impl From<JwkError> for KeyError {
    fn from(e: JwkError) -> Self {
        Self::Jwk(e)
    }
}

/// Produces JWS signatures for DPoP proofs. Implement it for keys that live outside the
/// process (HSM, TPM, KMS); [`PrivateKey`] is the software implementation.
pub trait Signer: Send + Sync {
    /// The JWS algorithm of the signatures this signer makes.
    fn algorithm(&self) -> Algorithm;
    /// The public key, as it goes into the proof's `jwk` header.
    fn public_jwk(&self) -> &PublicJwk;
    /// Signs `message` (the JWS signing input) and returns the raw JWS signature
    /// (for ECDSA the fixed-size `R || S` form of RFC 7518 §3.4, not DER).
    ///
    /// # Errors
    /// When the key cannot sign (device gone, crypto failure).
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, KeyError>;
    /// Whether [`Signer::sign`] waits on a device or the network (an HSM, a TPM, a cloud
    /// KMS). Async callers then run it on a thread that may block instead of on their
    /// executor. Software keys answer `false` (the default).
    fn blocks(&self) -> bool {
        false
    }
}

/// A source of unpredictable bytes (for `jti` values). Injected so tests can be
/// deterministic; [`SystemRandomSource`] is the production choice.
pub trait RandomSource: Send + Sync {
    /// Fills `dest` with random bytes.
    ///
    /// # Errors
    /// When no randomness is available; callers must then fail, never fall back.
    fn fill(&self, dest: &mut [u8]) -> Result<(), KeyError>;
}

/// The operating system's CSPRNG, through the crypto library.
#[derive(Clone, Copy, Debug, Default)]
#[expect(
    clippy::exhaustive_structs,
    reason = "a unit struct users construct by name"
)]
pub struct SystemRandomSource;

impl RandomSource for SystemRandomSource {
    fn fill(&self, dest: &mut [u8]) -> Result<(), KeyError> {
        SystemRandom::new()
            .fill(dest)
            .map_err(|_| KeyError::Crypto("random bytes"))
    }
}

enum Inner {
    Ec(EcdsaKeyPair, Curve),
    Ed25519(Ed25519KeyPair),
    Rsa(RsaKeyPair),
    MlDsa(PqdsaKeyPair, MlDsaParameterSet),
}

/// A software private key with its signing algorithm.
pub struct PrivateKey {
    inner: Inner,
    alg: Algorithm,
    public: PublicJwk,
}

impl fmt::Debug for PrivateKey {
    /// Shows only public facts: algorithm and thumbprint.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PrivateKey")
            .field("alg", &self.alg)
            .field("jkt", self.public.thumbprint())
            .finish_non_exhaustive()
    }
}

fn ec_signing(curve: Curve) -> &'static aws_lc_rs::signature::EcdsaSigningAlgorithm {
    match curve {
        Curve::P256 => &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
        Curve::P384 => &aws_lc_rs::signature::ECDSA_P384_SHA384_FIXED_SIGNING,
        Curve::P521 => &aws_lc_rs::signature::ECDSA_P521_SHA512_FIXED_SIGNING,
    }
}

const CURVES: [Curve; 3] = [Curve::P256, Curve::P384, Curve::P521];

const ML_DSA_SETS: [MlDsaParameterSet; 3] = [
    MlDsaParameterSet::MlDsa44,
    MlDsaParameterSet::MlDsa65,
    MlDsaParameterSet::MlDsa87,
];

/// The length of an ML-DSA seed (FIPS 204 ξ), the `priv` of an `AKP` JWK.
const ML_DSA_SEED_LEN: usize = 32;

impl PrivateKey {
    /// Generates a new key for `alg` (RSA keys are 2048 bits; use
    /// [`PrivateKey::generate_rsa`] for larger ones).
    ///
    /// # Errors
    /// When the crypto library cannot generate the key.
    pub fn generate(alg: Algorithm) -> Result<Self, KeyError> {
        match alg.key_family() {
            KeyFamily::Rsa => Self::generate_rsa(alg, 2048),
            KeyFamily::Ec(curve) => {
                let kp = EcdsaKeyPair::generate(ec_signing(curve))
                    .map_err(|_| KeyError::Crypto("EC key generation"))?;
                Self::from_inner(Inner::Ec(kp, curve), alg)
            }
            KeyFamily::Ed25519 => {
                let kp = Ed25519KeyPair::generate()
                    .map_err(|_| KeyError::Crypto("Ed25519 key generation"))?;
                Self::from_inner(Inner::Ed25519(kp), alg)
            }
            KeyFamily::MlDsa(set) => {
                let kp = PqdsaKeyPair::generate(set.signing())
                    .map_err(|_| KeyError::Crypto("ML-DSA key generation"))?;
                Self::from_inner(Inner::MlDsa(kp, set), alg)
            }
        }
    }

    /// Generates an RSA key of `bits` (2048, 3072, 4096 or 8192) for an RS*/PS* `alg`.
    ///
    /// # Errors
    /// For other sizes or non-RSA algorithms, or when generation fails.
    pub fn generate_rsa(alg: Algorithm, bits: usize) -> Result<Self, KeyError> {
        if alg.key_family() != KeyFamily::Rsa {
            return Err(KeyError::AlgorithmMismatch(alg));
        }
        let size = match bits {
            2048 => KeySize::Rsa2048,
            3072 => KeySize::Rsa3072,
            4096 => KeySize::Rsa4096,
            8192 => KeySize::Rsa8192,
            _ => {
                return Err(KeyError::Crypto(
                    "RSA key size must be 2048, 3072, 4096 or 8192",
                ));
            }
        };
        let kp = RsaKeyPair::generate(size).map_err(|_| KeyError::Crypto("RSA key generation"))?;
        Self::from_inner(Inner::Rsa(kp), alg)
    }

    fn from_inner(inner: Inner, alg: Algorithm) -> Result<Self, KeyError> {
        let public = public_jwk_of(&inner)?;
        if !public.fits(alg) {
            return Err(KeyError::AlgorithmMismatch(alg));
        }
        Ok(Self { inner, alg, public })
    }

    /// Loads a PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`). EC keys get the algorithm of
    /// their curve, Ed25519 keys `EdDSA`, ML-DSA keys (seed or expanded form) their
    /// parameter set's; RSA keys get `rsa_alg` (RS256 when `None`),
    /// because PKCS#8 does not record the padding. Use [`PrivateKey::with_algorithm`] to
    /// pick another algorithm of the key's family.
    ///
    /// # Errors
    /// [`KeyError`] naming what is wrong.
    pub fn from_pkcs8_pem(text: &str, rsa_alg: Option<Algorithm>) -> Result<Self, KeyError> {
        if text.len() > MAX_PRIVATE_KEY_TEXT {
            return Err(KeyError::NotPkcs8Pem);
        }
        let (label, der) =
            pem::decode_vec(text.trim().as_bytes()).map_err(|_| KeyError::NotPkcs8Pem)?;
        let der = Zeroizing::new(der);
        if label != "PRIVATE KEY" {
            return Err(KeyError::NotPkcs8Pem);
        }
        Self::from_pkcs8_der(&der, rsa_alg)
    }

    /// Loads a PKCS#8 DER document (see [`PrivateKey::from_pkcs8_pem`]).
    ///
    /// # Errors
    /// [`KeyError`] naming what is wrong.
    pub fn from_pkcs8_der(der: &[u8], rsa_alg: Option<Algorithm>) -> Result<Self, KeyError> {
        for curve in CURVES {
            if let Ok(kp) = EcdsaKeyPair::from_pkcs8(ec_signing(curve), der) {
                return Self::from_inner(Inner::Ec(kp, curve), curve.algorithm());
            }
        }
        if let Ok(kp) = Ed25519KeyPair::from_pkcs8(der) {
            // `EdDSA` rather than the RFC 9864 name: every DPoP server knows it.
            return Self::from_inner(Inner::Ed25519(kp), Algorithm::EdDsa);
        }
        if let Ok(kp) = RsaKeyPair::from_pkcs8(der) {
            return Self::from_inner(Inner::Rsa(kp), rsa_alg.unwrap_or(Algorithm::Rs256));
        }
        for set in ML_DSA_SETS {
            if let Ok(kp) = PqdsaKeyPair::from_pkcs8(set.signing(), der) {
                return Self::from_inner(Inner::MlDsa(kp, set), set.algorithm());
            }
        }
        Err(KeyError::UnsupportedPkcs8)
    }

    /// Loads a private JWK. The algorithm is the JWK's `alg` when present, else the
    /// curve's (EC), `Ed25519` (OKP) or `RS256` (RSA). An `AKP` (ML-DSA) key carries its
    /// required `alg` and its 32-byte seed as `priv` (RFC 9964).
    ///
    /// # Errors
    /// [`KeyError`] naming what is wrong.
    pub fn from_jwk_json(text: &str) -> Result<Self, KeyError> {
        if text.len() > MAX_PRIVATE_KEY_TEXT {
            return Err(KeyError::Jwk(JwkError::NotJson));
        }
        let o = json::parse_object(text.as_bytes()).map_err(|e| match e {
            json::JsonError::Duplicate => KeyError::Jwk(JwkError::DuplicateMember),
            _ => KeyError::Jwk(JwkError::NotJson),
        })?;
        if o.contains("oth") {
            return Err(KeyError::Jwk(JwkError::PrivateMember("oth")));
        }
        if o.contains("k") {
            return Err(KeyError::Jwk(JwkError::UnsupportedKeyType));
        }
        let public = PublicJwk::public_part(&o)?;
        let alg = match o.get("alg").and_then(Json::as_str) {
            Some(name) => Algorithm::from_name(name).ok_or(KeyError::Jwk(JwkError::AlgMismatch))?,
            None => match public.family() {
                KeyFamily::Ec(curve) => curve.algorithm(),
                KeyFamily::Ed25519 => Algorithm::Ed25519,
                KeyFamily::Rsa => Algorithm::Rs256,
                KeyFamily::MlDsa(set) => set.algorithm(),
            },
        };
        let inner = match public.family() {
            KeyFamily::MlDsa(set) => {
                let seed = private_member(&o, "priv")?;
                if seed.len() != ML_DSA_SEED_LEN {
                    return Err(KeyError::Jwk(JwkError::BadMember("priv")));
                }
                let kp = PqdsaKeyPair::from_seed(set.signing(), &seed)
                    .map_err(|_| KeyError::Inconsistent)?;
                Inner::MlDsa(kp, set)
            }
            KeyFamily::Ec(curve) => {
                let d = private_member(&o, "d")?;
                if d.len() != curve.coordinate_len() {
                    return Err(KeyError::Jwk(JwkError::BadMember("d")));
                }
                let point = public.raw_public_key().ok_or(KeyError::Inconsistent)?;
                let kp =
                    EcdsaKeyPair::from_private_key_and_public_key(ec_signing(curve), &d, &point)
                        .map_err(|_| KeyError::Inconsistent)?;
                Inner::Ec(kp, curve)
            }
            KeyFamily::Ed25519 => {
                let d = private_member(&o, "d")?;
                let x = public.raw_public_key().ok_or(KeyError::Inconsistent)?;
                let kp = Ed25519KeyPair::from_seed_and_public_key(&d, &x)
                    .map_err(|_| KeyError::Inconsistent)?;
                Inner::Ed25519(kp)
            }
            KeyFamily::Rsa => {
                let d = private_member(&o, "d")?;
                let (n, e) = public.rsa_components().ok_or(KeyError::Inconsistent)?;
                let p = private_member(&o, "p")?;
                let q = private_member(&o, "q")?;
                let dp = private_member(&o, "dp")?;
                let dq = private_member(&o, "dq")?;
                let qi = private_member(&o, "qi")?;
                fn uint(b: &[u8]) -> Result<pkcs1::UintRef<'_>, KeyError> {
                    pkcs1::UintRef::new(b).map_err(|_| KeyError::Inconsistent)
                }
                let der = pkcs1::RsaPrivateKey {
                    modulus: uint(&n)?,
                    public_exponent: uint(&e)?,
                    private_exponent: uint(&d)?,
                    prime1: uint(&p)?,
                    prime2: uint(&q)?,
                    exponent1: uint(&dp)?,
                    exponent2: uint(&dq)?,
                    coefficient: uint(&qi)?,
                    other_prime_infos: None,
                }
                .to_der()
                .map_err(|_| KeyError::Inconsistent)?;
                let der = Zeroizing::new(der);
                Inner::Rsa(RsaKeyPair::from_der(&der).map_err(|_| KeyError::Inconsistent)?)
            }
        };
        let mut key = Self::from_inner(inner, alg)?;
        if key.public != public {
            return Err(KeyError::Inconsistent);
        }
        // Keep the JWK's own `alg` as a restriction: `with_algorithm` may not move the
        // key to another scheme than its owner declared.
        key.public = public;
        Ok(key)
    }

    /// The key as PKCS#8 PEM. Write it to a file only readable by its owner.
    ///
    /// # Errors
    /// When the crypto library cannot serialise the key.
    pub fn to_pkcs8_pem(&self) -> Result<Zeroizing<String>, KeyError> {
        let der = self.pkcs8_der()?;
        pem::encode_string("PRIVATE KEY", LineEnding::LF, &der)
            .map(Zeroizing::new)
            .map_err(|_| KeyError::Crypto("PEM encoding"))
    }

    fn pkcs8_der(&self) -> Result<Zeroizing<Vec<u8>>, KeyError> {
        let der = match &self.inner {
            Inner::Ec(kp, _) => kp.to_pkcs8v1().map(|d| d.as_ref().to_vec()),
            Inner::Ed25519(kp) => kp.to_pkcs8v1().map(|d| d.as_ref().to_vec()),
            Inner::Rsa(kp) => kp.as_der().map(|d| d.as_ref().to_vec()),
            // The seed form of RFC 9881 (`[0] IMPLICIT OCTET STRING`), which OpenSSL 3.5
            // and other FIPS 204 implementations read.
            Inner::MlDsa(kp, _) => kp.to_pkcs8v1().map(|d| d.as_ref().to_vec()),
        };
        der.map(Zeroizing::new)
            .map_err(|_| KeyError::Crypto("PKCS#8 encoding"))
    }

    /// The private key as a JWK (with `alg`). Treat the result as a secret.
    ///
    /// # Errors
    /// When the crypto library cannot export the key.
    pub fn to_private_jwk_json(&self) -> Result<Zeroizing<String>, KeyError> {
        let mut m = match self.public.to_json_value() {
            serde_json::Value::Object(m) => m,
            _ => return Err(KeyError::Crypto("JWK export")),
        };
        let fail = |_| KeyError::Crypto("private key export");
        match &self.inner {
            Inner::Ec(kp, _) => {
                let d = kp.private_key().as_be_bytes().map_err(fail)?;
                m.insert("d".into(), b64::encode(d.as_ref()).into());
            }
            Inner::Ed25519(kp) => {
                let seed = kp.seed().map_err(fail)?;
                let d = seed.as_be_bytes().map_err(fail)?;
                m.insert("d".into(), b64::encode(d.as_ref()).into());
            }
            Inner::Rsa(_) => {
                let der = self.pkcs8_der()?;
                let info = pkcs8::PrivateKeyInfo::try_from(der.as_slice())
                    .map_err(|_| KeyError::Crypto("PKCS#8 decoding"))?;
                let k = pkcs1::RsaPrivateKey::from_der(info.private_key)
                    .map_err(|_| KeyError::Crypto("PKCS#1 decoding"))?;
                for (name, v) in [
                    ("d", k.private_exponent),
                    ("p", k.prime1),
                    ("q", k.prime2),
                    ("dp", k.exponent1),
                    ("dq", k.exponent2),
                    ("qi", k.coefficient),
                ] {
                    m.insert(name.into(), b64::encode(v.as_bytes()).into());
                }
            }
            Inner::MlDsa(..) => {
                let seed = self.ml_dsa_seed()?;
                m.insert("priv".into(), b64::encode(seed.as_slice()).into());
            }
        }
        m.insert("alg".into(), self.alg.name().into());
        let text = serde_json::to_string(&m).map_err(|_| KeyError::Crypto("JSON encoding"));
        // Wipe the copies of private members held in the map before it is dropped.
        for v in m.values_mut() {
            if let serde_json::Value::String(s) = v {
                zeroize::Zeroize::zeroize(s);
            }
        }
        text.map(Zeroizing::new)
    }

    /// The 32-byte seed of an ML-DSA key, read from its seed-form PKCS#8 encoding
    /// (`OneAsymmetricKey.privateKey` = `80 20 <seed>`, RFC 9881).
    fn ml_dsa_seed(&self) -> Result<Zeroizing<Vec<u8>>, KeyError> {
        let der = self.pkcs8_der()?;
        let info = pkcs8::PrivateKeyInfo::try_from(der.as_slice())
            .map_err(|_| KeyError::Crypto("PKCS#8 decoding"))?;
        match info.private_key {
            [0x80, 0x20, seed @ ..] if seed.len() == ML_DSA_SEED_LEN => {
                Ok(Zeroizing::new(seed.to_vec()))
            }
            _ => Err(KeyError::Crypto("ML-DSA seed export")),
        }
    }

    /// The signing algorithm.
    #[must_use]
    pub fn algorithm(&self) -> Algorithm {
        self.alg
    }

    /// The same key with another algorithm of its family (e.g. PS256 for an RSA key).
    ///
    /// # Errors
    /// When `alg` does not fit the key.
    pub fn with_algorithm(mut self, alg: Algorithm) -> Result<Self, KeyError> {
        if !self.public.fits(alg) {
            return Err(KeyError::AlgorithmMismatch(alg));
        }
        self.alg = alg;
        Ok(self)
    }

    /// The public JWK.
    #[must_use]
    pub fn public_jwk(&self) -> &PublicJwk {
        &self.public
    }

    /// The RFC 7638 thumbprint of the public key.
    #[must_use]
    pub fn thumbprint(&self) -> &Jkt {
        self.public.thumbprint()
    }
}

fn private_member(o: &Object<'_>, name: &'static str) -> Result<Zeroizing<Vec<u8>>, KeyError> {
    let text = o.get(name).ok_or(KeyError::MissingPrivateMember(name))?;
    let text = text
        .as_str()
        .ok_or(KeyError::Jwk(JwkError::BadMember(name)))?;
    b64::decode(text.as_bytes())
        .map(Zeroizing::new)
        .ok_or(KeyError::Jwk(JwkError::BadMember(name)))
}

fn public_jwk_of(inner: &Inner) -> Result<PublicJwk, KeyError> {
    let text = match inner {
        Inner::Ec(kp, curve) => {
            let point = kp.public_key().as_ref();
            let len = curve.coordinate_len();
            let xy = point
                .get(1..)
                .filter(|xy| xy.len() == 2 * len)
                .ok_or(KeyError::Inconsistent)?;
            let (x, y) = xy.split_at(len);
            format!(
                r#"{{"kty":"EC","crv":"{}","x":"{}","y":"{}"}}"#,
                curve.name(),
                b64::encode(x),
                b64::encode(y)
            )
        }
        Inner::Ed25519(kp) => format!(
            r#"{{"kty":"OKP","crv":"Ed25519","x":"{}"}}"#,
            b64::encode(kp.public_key().as_ref())
        ),
        Inner::MlDsa(kp, set) => format!(
            r#"{{"kty":"AKP","alg":"{}","pub":"{}"}}"#,
            set.algorithm().name(),
            b64::encode(kp.public_key().as_ref())
        ),
        Inner::Rsa(kp) => {
            let pk = pkcs1::RsaPublicKey::from_der(kp.public_key().as_ref())
                .map_err(|_| KeyError::Inconsistent)?;
            format!(
                r#"{{"kty":"RSA","n":"{}","e":"{}"}}"#,
                b64::encode(pk.modulus.as_bytes()),
                b64::encode(pk.public_exponent.as_bytes())
            )
        }
    };
    Ok(PublicJwk::from_json(&text)?)
}

impl Signer for PrivateKey {
    fn algorithm(&self) -> Algorithm {
        self.alg
    }

    fn public_jwk(&self) -> &PublicJwk {
        &self.public
    }

    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, KeyError> {
        let rng = SystemRandom::new();
        match &self.inner {
            Inner::Ec(kp, _) => kp
                .sign(&rng, message)
                .map(|s| s.as_ref().to_vec())
                .map_err(|_| KeyError::Crypto("ECDSA signing")),
            Inner::Ed25519(kp) => Ok(kp.sign(message).as_ref().to_vec()),
            Inner::Rsa(kp) => {
                let encoding = self
                    .alg
                    .rsa_encoding()
                    .ok_or(KeyError::AlgorithmMismatch(self.alg))?;
                let mut sig = vec![0u8; kp.public_modulus_len()];
                kp.sign(encoding, &rng, message, &mut sig)
                    .map_err(|_| KeyError::Crypto("RSA signing"))?;
                Ok(sig)
            }
            Inner::MlDsa(kp, set) => {
                // Pure ML-DSA, empty context, hedged (randomised) signing (FIPS 204).
                let mut sig = vec![0u8; set.signature_len()];
                let len = kp
                    .sign(message, &mut sig)
                    .map_err(|_| KeyError::Crypto("ML-DSA signing"))?;
                sig.truncate(len);
                Ok(sig)
            }
        }
    }
}

/// A reference or `Arc` to a signer is a signer.
macro_rules! forward_signer {
    ($($ptr:ty),+) => {$(
        impl<S: Signer + ?Sized> Signer for $ptr {
            fn algorithm(&self) -> Algorithm {
                (**self).algorithm()
            }
            fn public_jwk(&self) -> &PublicJwk {
                (**self).public_jwk()
            }
            fn sign(&self, message: &[u8]) -> Result<Vec<u8>, KeyError> {
                (**self).sign(message)
            }
            fn blocks(&self) -> bool {
                (**self).blocks()
            }
        }
    )+};
}

forward_signer!(&S, std::sync::Arc<S>);
