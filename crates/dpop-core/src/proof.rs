//! Creating DPoP proofs (RFC 9449 §4.2) and the `ath` access-token hash.

use core::fmt;

use aws_lc_rs::digest;
use subtle::ConstantTimeEq;

use crate::b64;
use crate::error::Error;
use crate::htu::Htu;
use crate::key::{RandomSource, Signer};
use crate::time::UnixTime;

/// Random bytes in a generated `jti`: 128 bits, above the 96 RFC 9449 §11.1 suggests.
pub const JTI_RANDOM_BYTES: usize = 16;

/// Claims the builder sets itself; extra claims may not override them.
const RESERVED_CLAIMS: [&str; 6] = ["jti", "htm", "htu", "iat", "ath", "nonce"];

/// `ath`: base64url(SHA-256(ASCII access token)), RFC 9449 §4.2. Compared in constant time.
#[derive(Clone)]
pub struct Ath(String);

impl Ath {
    /// The `ath` of `access_token`.
    #[must_use]
    pub fn of_token(access_token: &str) -> Self {
        Self(b64::encode(
            digest::digest(&digest::SHA256, access_token.as_bytes()).as_ref(),
        ))
    }

    /// The base64url text.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether a proof's `ath` claim equals this hash (constant time).
    #[must_use]
    pub fn matches(&self, claim: &str) -> bool {
        self.0.as_bytes().ct_eq(claim.as_bytes()).into()
    }
}

impl fmt::Debug for Ath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Ath({})", self.0)
    }
}

/// Builds and signs a DPoP proof.
///
/// ```
/// use dpop_core::{Algorithm, PrivateKey, ProofBuilder, SystemRandomSource, UnixTime};
/// let key = PrivateKey::generate(Algorithm::Es256)?;
/// let proof = ProofBuilder::new("GET", "https://api.example.com/items?page=2")?
///     .access_token("Kz~8mXK1EalYznwH-LC-1fBAo.4Ljp~zsPE_NeO.gxU")
///     .sign(&key, &SystemRandomSource, UnixTime::from_secs(1_700_000_000))?;
/// assert_eq!(proof.split('.').count(), 3);
/// # Ok::<(), dpop_core::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct ProofBuilder {
    htm: String,
    htu: Htu,
    ath: Option<Ath>,
    nonce: Option<String>,
    jti: Option<String>,
    extra: serde_json::Map<String, serde_json::Value>,
}

impl ProofBuilder {
    /// A proof for `method` on `uri`. The query and fragment are removed from `uri` and
    /// it is normalised (RFC 3986 §6.2.2, §6.2.3), which a server treats as the same URI.
    ///
    /// # Errors
    /// [`Error::ApiMisuse`] when the method is not an HTTP token;
    /// [`ProofError::HtuInvalid`](crate::ProofError::HtuInvalid) naming what is wrong with
    /// the URI (too long, not absolute http(s), a character it may not hold, ...).
    pub fn new(method: &str, uri: &str) -> Result<Self, Error> {
        if !crate::syntax::is_token(method.as_bytes()) {
            return Err(Error::ApiMisuse(
                "the HTTP method must be a token such as GET or POST",
            ));
        }
        let htu = Htu::parse(uri).map_err(|e| Error::Proof(crate::ProofError::HtuInvalid(e)))?;
        Ok(Self {
            htm: method.to_owned(),
            htu,
            ath: None,
            nonce: None,
            jti: None,
            extra: serde_json::Map::new(),
        })
    }

    /// Adds `ath` for the access token sent with the proof (required at a resource server).
    #[must_use]
    pub fn access_token(mut self, token: &str) -> Self {
        self.ath = Some(Ath::of_token(token));
        self
    }

    /// Adds the server-provided nonce.
    ///
    /// # Errors
    /// [`Error::ApiMisuse`] when the value is not `1*NQCHAR` (RFC 9449 §8.1).
    pub fn nonce(mut self, nonce: &str) -> Result<Self, Error> {
        if !crate::syntax::is_nonce(nonce.as_bytes()) {
            return Err(Error::ApiMisuse("a nonce must be 1*NQCHAR (RFC 9449 §8.1)"));
        }
        self.nonce = Some(nonce.to_owned());
        Ok(self)
    }

    /// Uses a fixed `jti` instead of a random one. Only for tests and vectors: a `jti`
    /// must never repeat.
    #[must_use]
    pub fn jti(mut self, jti: &str) -> Self {
        self.jti = Some(jti.to_owned());
        self
    }

    /// Adds an extra claim (RFC 9449 §4.2 allows them).
    ///
    /// # Errors
    /// [`Error::ApiMisuse`] for a claim the builder sets itself.
    pub fn claim(mut self, name: &str, value: serde_json::Value) -> Result<Self, Error> {
        if RESERVED_CLAIMS.contains(&name) {
            return Err(Error::ApiMisuse(
                "jti, htm, htu, iat, ath and nonce are set by the builder",
            ));
        }
        self.extra.insert(name.to_owned(), value);
        Ok(self)
    }

    /// Signs the proof with `signer`, `iat` = `now`, and a random `jti` from `rng`.
    ///
    /// # Errors
    /// When randomness or signing fails.
    pub fn sign(
        &self,
        signer: &dyn Signer,
        rng: &dyn RandomSource,
        now: UnixTime,
    ) -> Result<String, Error> {
        let jti = match &self.jti {
            Some(j) => j.clone(),
            None => {
                let mut bytes = [0u8; JTI_RANDOM_BYTES];
                rng.fill(&mut bytes).map_err(Error::Key)?;
                b64::encode(&bytes)
            }
        };
        let alg = signer.algorithm();
        let header = serde_json::json!({
            "typ": "dpop+jwt",
            "alg": alg.name(),
            "jwk": signer.public_jwk().to_json_value(),
        });
        let mut claims = self.extra.clone();
        claims.insert("jti".into(), jti.into());
        claims.insert("htm".into(), self.htm.as_str().into());
        claims.insert("htu".into(), self.htu.as_str().into());
        claims.insert("iat".into(), now.as_secs().into());
        if let Some(ath) = &self.ath {
            claims.insert("ath".into(), ath.as_str().into());
        }
        if let Some(nonce) = &self.nonce {
            claims.insert("nonce".into(), nonce.as_str().into());
        }
        crate::jws::sign_compact(&header, &serde_json::Value::Object(claims), signer)
            .map_err(Error::Key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::htu::HtuError;

    #[test]
    fn ath_of_rfc_example_token() {
        let ath = Ath::of_token("Kz~8mXK1EalYznwH-LC-1fBAo.4Ljp~zsPE_NeO.gxU");
        assert_eq!(ath.as_str(), "fUHyO2r2Z3DZ53EsNrWBb0xWXoaNy59IiKCAqksmQEo");
        assert!(ath.matches("fUHyO2r2Z3DZ53EsNrWBb0xWXoaNy59IiKCAqksmQEo"));
        assert!(!ath.matches("fUHyO2r2Z3DZ53EsNrWBb0xWXoaNy59IiKCAqksmQEp"));
        assert!(!ath.matches(""));
    }

    #[test]
    fn builder_refuses_bad_input() {
        assert!(ProofBuilder::new("GET POST", "https://a.example/").is_err());
        // Each URI problem is named, not folded into one "not an absolute URI".
        let htu_error = |uri: &str| match ProofBuilder::new("GET", uri) {
            Err(Error::Proof(crate::ProofError::HtuInvalid(e))) => e,
            other => panic!("{uri}: {other:?}"),
        };
        assert_eq!(htu_error("/relative"), HtuError::Relative);
        assert_eq!(htu_error("ftp://a.example/"), HtuError::BadScheme);
        let long = format!("https://a.example/{}", "a".repeat(8192));
        assert_eq!(htu_error(&long), HtuError::TooLong);
        assert!(
            ProofBuilder::new("GET", &long)
                .unwrap_err()
                .to_string()
                .contains("longer than 8192 bytes")
        );
        let b = ProofBuilder::new("GET", "https://a.example/x?q#f").unwrap();
        assert_eq!(b.htu.as_str(), "https://a.example/x");
        assert!(b.clone().nonce("bad\"nonce").is_err());
        assert!(b.clone().nonce("").is_err());
        assert!(b.clone().claim("iat", 1.into()).is_err());
        assert!(b.claim("client_ctx", "x".into()).is_ok());
    }
}
