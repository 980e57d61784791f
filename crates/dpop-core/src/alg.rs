//! JWS signature algorithms for DPoP proofs (RFC 7518 §3, RFC 8037, RFC 9864, RFC 9964).
//!
//! Only asymmetric algorithms exist in this type: `none` and every MAC algorithm
//! (`HS256`, ...) are not representable, so they cannot be allowed by mistake
//! (RFC 9449 §4.2, §11.6).

use core::fmt;

use aws_lc_rs::signature as sig;

/// A JWS algorithm this crate can sign and verify DPoP proofs with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Algorithm {
    /// ECDSA with P-256 and SHA-256.
    Es256,
    /// ECDSA with P-384 and SHA-384.
    Es384,
    /// ECDSA with P-521 and SHA-512.
    Es512,
    /// EdDSA (RFC 8037). Only Ed25519 keys are accepted with it.
    EdDsa,
    /// Ed25519, the fully-specified name of RFC 9864.
    Ed25519,
    /// RSASSA-PKCS1-v1_5 with SHA-256.
    Rs256,
    /// RSASSA-PKCS1-v1_5 with SHA-384.
    Rs384,
    /// RSASSA-PKCS1-v1_5 with SHA-512.
    Rs512,
    /// RSASSA-PSS with SHA-256.
    Ps256,
    /// RSASSA-PSS with SHA-384.
    Ps384,
    /// RSASSA-PSS with SHA-512.
    Ps512,
    /// ML-DSA-44 (FIPS 204, RFC 9964), post-quantum. Not in [`DEFAULT_ALGORITHMS`].
    MlDsa44,
    /// ML-DSA-65 (FIPS 204, RFC 9964), post-quantum. Not in [`DEFAULT_ALGORITHMS`].
    MlDsa65,
    /// ML-DSA-87 (FIPS 204, RFC 9964), post-quantum. Not in [`DEFAULT_ALGORITHMS`].
    MlDsa87,
}

/// What kind of key an algorithm needs. An `alg` whose family does not match the `jwk`
/// is refused before any signature work (algorithm-confusion defence).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum KeyFamily {
    /// An EC key on the named curve.
    Ec(Curve),
    /// An OKP Ed25519 key.
    Ed25519,
    /// An RSA key of at least 2048 bits.
    Rsa,
    /// An `AKP` key of one ML-DSA parameter set (RFC 9964); each set has one algorithm.
    MlDsa(MlDsaParameterSet),
}

/// The three ML-DSA parameter sets of FIPS 204. An `AKP` JWK names its set through its
/// required `alg` member, so key and algorithm are one choice.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum MlDsaParameterSet {
    /// ML-DSA-44 (NIST security category 2).
    MlDsa44,
    /// ML-DSA-65 (category 3).
    MlDsa65,
    /// ML-DSA-87 (category 5).
    MlDsa87,
}

impl MlDsaParameterSet {
    /// Length in bytes of the raw public key (the JWK's `pub`).
    #[must_use]
    pub const fn public_key_len(self) -> usize {
        match self {
            Self::MlDsa44 => 1312,
            Self::MlDsa65 => 1952,
            Self::MlDsa87 => 2592,
        }
    }

    /// Length in bytes of a signature.
    #[must_use]
    pub const fn signature_len(self) -> usize {
        match self {
            Self::MlDsa44 => 2420,
            Self::MlDsa65 => 3309,
            Self::MlDsa87 => 4627,
        }
    }

    /// The one algorithm that signs with this parameter set.
    #[must_use]
    pub const fn algorithm(self) -> Algorithm {
        match self {
            Self::MlDsa44 => Algorithm::MlDsa44,
            Self::MlDsa65 => Algorithm::MlDsa65,
            Self::MlDsa87 => Algorithm::MlDsa87,
        }
    }

    pub(crate) fn signing(self) -> &'static sig::PqdsaSigningAlgorithm {
        match self {
            Self::MlDsa44 => &sig::ML_DSA_44_SIGNING,
            Self::MlDsa65 => &sig::ML_DSA_65_SIGNING,
            Self::MlDsa87 => &sig::ML_DSA_87_SIGNING,
        }
    }
}

/// Elliptic curves for `kty: EC` keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Curve {
    /// NIST P-256.
    P256,
    /// NIST P-384.
    P384,
    /// NIST P-521.
    P521,
}

impl Curve {
    /// The JWK `crv` name.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::P256 => "P-256",
            Self::P384 => "P-384",
            Self::P521 => "P-521",
        }
    }

    /// Length in bytes of one coordinate (and of the private scalar).
    #[must_use]
    pub const fn coordinate_len(self) -> usize {
        match self {
            Self::P256 => 32,
            Self::P384 => 48,
            Self::P521 => 66,
        }
    }

    /// The one algorithm that signs with this curve.
    #[must_use]
    pub const fn algorithm(self) -> Algorithm {
        match self {
            Self::P256 => Algorithm::Es256,
            Self::P384 => Algorithm::Es384,
            Self::P521 => Algorithm::Es512,
        }
    }

    pub(crate) fn from_name(name: &str) -> Option<Self> {
        match name {
            "P-256" => Some(Self::P256),
            "P-384" => Some(Self::P384),
            "P-521" => Some(Self::P521),
            _ => None,
        }
    }
}

/// Every algorithm, in a stable order.
pub const ALL_ALGORITHMS: [Algorithm; 14] = [
    Algorithm::Es256,
    Algorithm::Es384,
    Algorithm::Es512,
    Algorithm::EdDsa,
    Algorithm::Ed25519,
    Algorithm::Rs256,
    Algorithm::Rs384,
    Algorithm::Rs512,
    Algorithm::Ps256,
    Algorithm::Ps384,
    Algorithm::Ps512,
    Algorithm::MlDsa44,
    Algorithm::MlDsa65,
    Algorithm::MlDsa87,
];

/// The verifier's default largest `DPoP` header, in bytes, when only classical algorithms
/// are allowed: an RSA-8192 proof fits.
pub const DEFAULT_MAX_PROOF_BYTES: usize = 8192;

/// The verifier's default allow-list: ES256, ES384, EdDSA/Ed25519, PS256, RS256. The
/// ML-DSA algorithms are opt-in: their proofs are 6 to 12 KB.
pub const DEFAULT_ALGORITHMS: [Algorithm; 6] = [
    Algorithm::Es256,
    Algorithm::Es384,
    Algorithm::EdDsa,
    Algorithm::Ed25519,
    Algorithm::Ps256,
    Algorithm::Rs256,
];

/// How a proof's `alg` header value was judged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum AlgName {
    Known(Algorithm),
    /// `none` or a MAC: never acceptable for DPoP.
    Forbidden,
    Unknown,
}

impl Algorithm {
    /// The JWS `alg` name.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::Es256 => "ES256",
            Self::Es384 => "ES384",
            Self::Es512 => "ES512",
            Self::EdDsa => "EdDSA",
            Self::Ed25519 => "Ed25519",
            Self::Rs256 => "RS256",
            Self::Rs384 => "RS384",
            Self::Rs512 => "RS512",
            Self::Ps256 => "PS256",
            Self::Ps384 => "PS384",
            Self::Ps512 => "PS512",
            Self::MlDsa44 => "ML-DSA-44",
            Self::MlDsa65 => "ML-DSA-65",
            Self::MlDsa87 => "ML-DSA-87",
        }
    }

    /// Parses a JWS `alg` name (case-sensitive, as RFC 7515 §4.1.1 requires).
    #[must_use]
    pub fn from_name(name: &str) -> Option<Self> {
        match Self::classify(name) {
            AlgName::Known(alg) => Some(alg),
            AlgName::Forbidden | AlgName::Unknown => None,
        }
    }

    pub(crate) fn classify(name: &str) -> AlgName {
        if let Some(alg) = ALL_ALGORITHMS.iter().find(|a| a.name() == name) {
            return AlgName::Known(*alg);
        }
        // RFC 9449 §4.2: never `none`, never a MAC. Named separately so the error can
        // say "forbidden" rather than "unknown".
        match name {
            "none" | "HS256" | "HS384" | "HS512" => AlgName::Forbidden,
            _ => AlgName::Unknown,
        }
    }

    /// The key family this algorithm signs with.
    #[must_use]
    pub const fn key_family(self) -> KeyFamily {
        match self {
            Self::Es256 => KeyFamily::Ec(Curve::P256),
            Self::Es384 => KeyFamily::Ec(Curve::P384),
            Self::Es512 => KeyFamily::Ec(Curve::P521),
            Self::EdDsa | Self::Ed25519 => KeyFamily::Ed25519,
            Self::Rs256 | Self::Rs384 | Self::Rs512 | Self::Ps256 | Self::Ps384 | Self::Ps512 => {
                KeyFamily::Rsa
            }
            Self::MlDsa44 => KeyFamily::MlDsa(MlDsaParameterSet::MlDsa44),
            Self::MlDsa65 => KeyFamily::MlDsa(MlDsaParameterSet::MlDsa65),
            Self::MlDsa87 => KeyFamily::MlDsa(MlDsaParameterSet::MlDsa87),
        }
    }

    /// Whether this is a post-quantum (ML-DSA) algorithm.
    #[must_use]
    pub const fn is_post_quantum(self) -> bool {
        matches!(self.key_family(), KeyFamily::MlDsa(_))
    }

    /// The largest `DPoP` header a verifier allowing this algorithm accepts by default:
    /// [`DEFAULT_MAX_PROOF_BYTES`] for the classical algorithms; for ML-DSA the room its
    /// public key and signature take (about 6.0, 8.3 and 11.2 KB for ML-DSA-44, -65 and
    /// -87) plus the classical margin for header and claims, rounded up to 4 KiB.
    #[must_use]
    pub const fn default_max_proof_bytes(self) -> usize {
        match self.key_family() {
            KeyFamily::MlDsa(MlDsaParameterSet::MlDsa44) => 12 * 1024,
            KeyFamily::MlDsa(MlDsaParameterSet::MlDsa65) => 12 * 1024,
            KeyFamily::MlDsa(MlDsaParameterSet::MlDsa87) => 16 * 1024,
            KeyFamily::Ec(_) | KeyFamily::Ed25519 | KeyFamily::Rsa => DEFAULT_MAX_PROOF_BYTES,
        }
    }

    /// The default proof size bound for an allow-list: the largest
    /// [`Algorithm::default_max_proof_bytes`] of its members, so the bound rises only when
    /// an ML-DSA algorithm is allowed.
    #[must_use]
    pub fn max_proof_bytes_for(algorithms: &[Self]) -> usize {
        algorithms
            .iter()
            .map(|a| a.default_max_proof_bytes())
            .fold(DEFAULT_MAX_PROOF_BYTES, usize::max)
    }

    /// Whether `a` and `b` name the same signature scheme (`EdDSA` with an Ed25519 key
    /// is the same as `Ed25519`).
    #[must_use]
    pub fn same_scheme(self, other: Self) -> bool {
        self == other
            || (self.key_family() == KeyFamily::Ed25519 && other.key_family() == KeyFamily::Ed25519)
    }

    pub(crate) fn verification(self) -> &'static dyn sig::VerificationAlgorithm {
        match self {
            Self::Es256 => &sig::ECDSA_P256_SHA256_FIXED,
            Self::Es384 => &sig::ECDSA_P384_SHA384_FIXED,
            Self::Es512 => &sig::ECDSA_P521_SHA512_FIXED,
            Self::EdDsa | Self::Ed25519 => &sig::ED25519,
            Self::Rs256 => &sig::RSA_PKCS1_2048_8192_SHA256,
            Self::Rs384 => &sig::RSA_PKCS1_2048_8192_SHA384,
            Self::Rs512 => &sig::RSA_PKCS1_2048_8192_SHA512,
            Self::Ps256 => &sig::RSA_PSS_2048_8192_SHA256,
            Self::Ps384 => &sig::RSA_PSS_2048_8192_SHA384,
            Self::Ps512 => &sig::RSA_PSS_2048_8192_SHA512,
            Self::MlDsa44 => &sig::ML_DSA_44,
            Self::MlDsa65 => &sig::ML_DSA_65,
            Self::MlDsa87 => &sig::ML_DSA_87,
        }
    }

    pub(crate) fn rsa_parameters(self) -> Option<&'static sig::RsaParameters> {
        match self {
            Self::Rs256 => Some(&sig::RSA_PKCS1_2048_8192_SHA256),
            Self::Rs384 => Some(&sig::RSA_PKCS1_2048_8192_SHA384),
            Self::Rs512 => Some(&sig::RSA_PKCS1_2048_8192_SHA512),
            Self::Ps256 => Some(&sig::RSA_PSS_2048_8192_SHA256),
            Self::Ps384 => Some(&sig::RSA_PSS_2048_8192_SHA384),
            Self::Ps512 => Some(&sig::RSA_PSS_2048_8192_SHA512),
            _ => None,
        }
    }

    pub(crate) fn rsa_encoding(self) -> Option<&'static dyn sig::RsaEncoding> {
        match self {
            Self::Rs256 => Some(&sig::RSA_PKCS1_SHA256),
            Self::Rs384 => Some(&sig::RSA_PKCS1_SHA384),
            Self::Rs512 => Some(&sig::RSA_PKCS1_SHA512),
            Self::Ps256 => Some(&sig::RSA_PSS_SHA256),
            Self::Ps384 => Some(&sig::RSA_PSS_SHA384),
            Self::Ps512 => Some(&sig::RSA_PSS_SHA512),
            _ => None,
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl core::str::FromStr for Algorithm {
    type Err = UnknownAlgorithm;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::from_name(s).ok_or(UnknownAlgorithm)
    }
}

/// The name is not an asymmetric JWS algorithm this crate supports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct UnknownAlgorithm;

impl fmt::Display for UnknownAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("unknown or unsupported JWS algorithm (expected one of ES256, ES384, ES512, EdDSA, Ed25519, RS256, RS384, RS512, PS256, PS384, PS512, ML-DSA-44, ML-DSA-65, ML-DSA-87)")
    }
}

impl std::error::Error for UnknownAlgorithm {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for alg in ALL_ALGORITHMS {
            assert_eq!(Algorithm::from_name(alg.name()), Some(alg));
            assert_eq!(alg.name().parse::<Algorithm>(), Ok(alg));
        }
    }

    #[test]
    fn none_and_macs_are_forbidden_not_unknown() {
        for name in ["none", "HS256", "HS384", "HS512"] {
            assert_eq!(Algorithm::classify(name), AlgName::Forbidden);
            assert_eq!(Algorithm::from_name(name), None);
        }
        assert_eq!(
            Algorithm::classify("es256"),
            AlgName::Unknown,
            "alg is case-sensitive"
        );
        assert_eq!(Algorithm::classify("ES256K"), AlgName::Unknown);
    }

    #[test]
    fn ml_dsa_is_opt_in_and_raises_the_size_bound() {
        for alg in [Algorithm::MlDsa44, Algorithm::MlDsa65, Algorithm::MlDsa87] {
            assert!(alg.is_post_quantum());
            assert!(!DEFAULT_ALGORITHMS.contains(&alg));
            assert!(matches!(alg.key_family(), KeyFamily::MlDsa(set) if set.algorithm() == alg));
        }
        assert_eq!(Algorithm::from_name("ml-dsa-44"), None, "case-sensitive");
        assert_eq!(
            Algorithm::max_proof_bytes_for(&DEFAULT_ALGORITHMS),
            DEFAULT_MAX_PROOF_BYTES
        );
        assert_eq!(
            Algorithm::max_proof_bytes_for(&[Algorithm::Es256, Algorithm::MlDsa87]),
            16 * 1024
        );
        assert!(UnknownAlgorithm.to_string().contains("ML-DSA-87"));
    }

    #[test]
    fn eddsa_and_ed25519_are_one_scheme() {
        assert!(Algorithm::EdDsa.same_scheme(Algorithm::Ed25519));
        assert!(!Algorithm::Rs256.same_scheme(Algorithm::Ps256));
    }
}
