//! Compact JWS serialisation (RFC 7515 §7.1) for the tokens this workspace signs: DPoP
//! proofs, issued access tokens, client assertions.
//!
//! Only the producing side lives here. Verification stays with the callers that know
//! what to demand of a header ([`crate::Verifier`] for proofs, [`crate::jwt`] for
//! access tokens), so a signed value is never trusted because this module made it.

use crate::b64;
use crate::key::{KeyError, Signer};

/// Signs `header` and `claims` as a compact JWS:
/// `base64url(header) "." base64url(claims) "." base64url(signature)`, where the
/// signature is `signer`'s over the first two parts (RFC 7515 §5.1).
///
/// The header and claims are serialised as compact JSON, exactly as given: nothing is
/// added or checked, so the caller chooses `alg`, `typ`, `kid` or `jwk` and must make
/// `alg` match `signer` (see [`Signer::algorithm`]).
///
/// ```
/// use dpop_core::{Algorithm, PrivateKey, Signer as _};
/// let key = PrivateKey::generate(Algorithm::Es256)?;
/// let header = serde_json::json!({ "alg": key.algorithm().name(), "typ": "JWT" });
/// let claims = serde_json::json!({ "sub": "svc-a" });
/// let jws = dpop_core::jws::sign_compact(&header, &claims, &key)?;
/// assert!(jws.starts_with("eyJhbGciOiJFUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJzdmMtYSJ9."));
/// # Ok::<(), dpop_core::KeyError>(())
/// ```
///
/// # Errors
/// When `signer` cannot sign.
pub fn sign_compact(
    header: &serde_json::Value,
    claims: &serde_json::Value,
    signer: &dyn Signer,
) -> Result<String, KeyError> {
    // Display of a `Value` is its compact JSON and cannot fail, unlike `to_vec`.
    let mut out = b64::encode(header.to_string().as_bytes());
    out.push('.');
    out.push_str(&b64::encode(claims.to_string().as_bytes()));
    let signature = signer.sign(out.as_bytes())?;
    out.push('.');
    out.push_str(&b64::encode(&signature));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alg::Algorithm;
    use crate::key::PrivateKey;

    #[test]
    fn parts_are_the_inputs_and_the_signature_verifies() {
        let key = PrivateKey::generate(Algorithm::Ed25519).unwrap();
        let header = serde_json::json!({"alg": "Ed25519", "typ": "JWT"});
        let claims = serde_json::json!({"sub": "a", "n": 1});
        let jws = sign_compact(&header, &claims, &key).unwrap();
        let parts: Vec<&str> = jws.split('.').collect();
        assert_eq!(parts.len(), 3);
        let decode = |p: &str| b64::decode(p.as_bytes()).unwrap();
        assert_eq!(decode(parts[0]), br#"{"alg":"Ed25519","typ":"JWT"}"#);
        assert_eq!(decode(parts[1]), br#"{"n":1,"sub":"a"}"#);
        // Ed25519 is deterministic: the same input signs to the same bytes.
        let input = format!("{}.{}", parts[0], parts[1]);
        assert_eq!(decode(parts[2]), key.sign(input.as_bytes()).unwrap());
    }

    #[test]
    fn signer_failure_is_returned() {
        struct Broken(crate::jwk::PublicJwk);
        impl Signer for Broken {
            fn algorithm(&self) -> Algorithm {
                Algorithm::Es256
            }
            fn public_jwk(&self) -> &crate::jwk::PublicJwk {
                &self.0
            }
            fn sign(&self, _: &[u8]) -> Result<Vec<u8>, KeyError> {
                Err(KeyError::Crypto("device gone"))
            }
        }
        let key = PrivateKey::generate(Algorithm::Es256).unwrap();
        let broken = Broken(key.public_jwk().clone());
        let empty = serde_json::json!({});
        assert_eq!(
            sign_compact(&empty, &empty, &broken),
            Err(KeyError::Crypto("device gone"))
        );
    }
}
