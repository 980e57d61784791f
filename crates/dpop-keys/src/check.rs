//! The signature check every device key passes before it is used.

use aws_lc_rs::rand::{SecureRandom as _, SystemRandom};
use dpop_core::Signer;

/// What the self-check signs: a fixed label and 32 fresh random bytes, so a device
/// cannot answer from a table, and the message is never a JWS signing input.
const LABEL: &[u8] = b"dpop-keys self-check ";

/// Signs a fresh random message with `signer` and verifies the signature with
/// aws-lc-rs against the signer's own public JWK and algorithm. A device that returns
/// garbage, a signature for another key, or DER where the raw JWS form is due, fails
/// here rather than at the first request.
///
/// # Errors
/// A short reason: the signer failed, or its signature does not verify.
pub fn self_check(signer: &dyn Signer) -> Result<(), String> {
    let mut message = LABEL.to_vec();
    let mut nonce = [0_u8; 32];
    SystemRandom::new()
        .fill(&mut nonce)
        .map_err(|_| "no random bytes for the test message".to_owned())?;
    message.extend_from_slice(&nonce);
    let alg = signer.algorithm();
    let jwk = signer.public_jwk();
    if !jwk.fits(alg) {
        return Err(format!("its {} key cannot sign {alg}", jwk.kty()));
    }
    let signature = signer.sign(&message).map_err(|e| e.to_string())?;
    if jwk.verify(alg, &message, &signature) {
        Ok(())
    } else {
        Err(format!(
            "a {}-byte {alg} signature that does not match the public key",
            signature.len()
        ))
    }
}

#[cfg(test)]
mod tests {
    use dpop_core::{Algorithm, KeyError, PrivateKey, PublicJwk, Signer};

    use super::self_check;

    #[test]
    fn a_software_key_passes() {
        for alg in [Algorithm::Es256, Algorithm::Ed25519, Algorithm::Es384] {
            let key = PrivateKey::generate(alg).unwrap();
            self_check(&key).unwrap();
        }
    }

    /// Signs with one key and claims another's public key.
    struct Liar {
        signing: PrivateKey,
        claimed: PrivateKey,
        der: bool,
    }

    impl Signer for Liar {
        fn algorithm(&self) -> Algorithm {
            self.signing.algorithm()
        }
        fn public_jwk(&self) -> &PublicJwk {
            self.claimed.public_jwk()
        }
        fn sign(&self, message: &[u8]) -> Result<Vec<u8>, KeyError> {
            let mut sig = self.signing.sign(message)?;
            if self.der {
                sig.insert(0, 0x30);
            }
            Ok(sig)
        }
    }

    #[test]
    fn a_signature_for_another_key_or_in_another_form_is_refused() {
        let a = PrivateKey::generate(Algorithm::Es256).unwrap();
        let b = PrivateKey::generate(Algorithm::Es256).unwrap();
        let liar = Liar {
            signing: a,
            claimed: b,
            der: false,
        };
        assert!(self_check(&liar).unwrap_err().contains("does not match"));
        let a = PrivateKey::generate(Algorithm::Es256).unwrap();
        let same = PrivateKey::from_pkcs8_pem(&a.to_pkcs8_pem().unwrap(), None).unwrap();
        let der = Liar {
            signing: a,
            claimed: same,
            der: true,
        };
        assert!(self_check(&der).unwrap_err().contains("65-byte"));
    }
}
