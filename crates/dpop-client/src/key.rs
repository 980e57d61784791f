//! The client's DPoP key: ephemeral, or loaded from a file or an environment variable.
//!
//! Signing goes through [`dpop_core::Signer`], so a key held by a TPM, an HSM or a cloud
//! KMS can replace the software key without touching the rest of the client.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use dpop_core::{Algorithm, Jkt, JwkError, PrivateKey, PublicJwk, Signer};
use zeroize::Zeroizing;

use crate::error::ClientError;

/// Largest key file read.
const MAX_KEY_FILE_BYTES: u64 = 64 * 1024;

/// The key that signs the client's proofs.
#[derive(Clone)]
pub struct ClientKey {
    signer: Arc<dyn Signer>,
}

impl fmt::Debug for ClientKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientKey")
            .field("alg", &self.signer.algorithm())
            .field("jkt", &self.thumbprint().as_str())
            .finish_non_exhaustive()
    }
}

impl ClientKey {
    /// A new key that lives as long as the process (tokens bound to it die with it).
    ///
    /// # Errors
    /// [`ClientError::Key`] when the algorithm cannot make keys here.
    pub fn ephemeral(alg: Algorithm) -> Result<Self, ClientError> {
        let key = match alg.key_family() {
            dpop_core::KeyFamily::Rsa => PrivateKey::generate_rsa(alg, 2048),
            _ => PrivateKey::generate(alg),
        }
        .map_err(|e| ClientError::Key(format!("cannot generate a {} key: {e}", alg.name())))?;
        Ok(Self::from_private_key(key))
    }

    /// A software key.
    #[must_use]
    pub fn from_private_key(key: PrivateKey) -> Self {
        Self {
            signer: Arc::new(key),
        }
    }

    /// Any signer (a hardware key, a KMS).
    #[must_use]
    pub fn from_signer(signer: Arc<dyn Signer>) -> Self {
        Self { signer }
    }

    /// Reads a private key file (PKCS#8 PEM or private JWK). Like ssh, a file that
    /// other users can read is refused: the key is the credential.
    ///
    /// # Errors
    /// [`ClientError::Key`] naming the file and, for loose permissions, the fix.
    pub fn from_file(path: &Path) -> Result<Self, ClientError> {
        let shown = path.display();
        let text =
            crate::secret_file::read(path, MAX_KEY_FILE_BYTES, ("key file", "a private key"))
                .map_err(ClientError::Key)?;
        Self::from_text(&text).map_err(|e| ClientError::Key(format!("{shown}: {e}")))
    }

    /// Reads a private key (PEM or private JWK) from the environment variable `name`.
    ///
    /// # Errors
    /// [`ClientError::Key`] when the variable is unset or holds no usable private key.
    pub fn from_env(name: &str) -> Result<Self, ClientError> {
        let text = Zeroizing::new(std::env::var(name).map_err(|_| {
            ClientError::Key(format!("the environment variable {name} is not set"))
        })?);
        Self::from_text(&text)
            .map_err(|e| ClientError::Key(format!("the environment variable {name}: {e}")))
    }

    /// A private key from PEM (PKCS#8) or private-JWK text.
    ///
    /// # Errors
    /// A message saying what the text is not.
    pub fn from_text(text: &str) -> Result<Self, String> {
        let key = if text.trim_start().starts_with('{') {
            match PublicJwk::from_json(text) {
                Ok(_) => {
                    return Err("this is a public key; the client needs the private key".to_owned());
                }
                Err(JwkError::PrivateMember(_)) => {
                    PrivateKey::from_jwk_json(text).map_err(|e| e.to_string())?
                }
                Err(e) => return Err(format!("not a usable JWK: {e}")),
            }
        } else {
            PrivateKey::from_pkcs8_pem(text, None).map_err(|e| e.to_string())?
        };
        Ok(Self::from_private_key(key))
    }

    /// Runs `sign` with the signer: on the calling task for a software key, on a thread
    /// that may block for a key in a device or a KMS ([`Signer::blocks`]), so a slow
    /// HSM, TPM or network round trip never stalls the async executor.
    ///
    /// # Errors
    /// What `sign` returns, or [`ClientError::Proof`] when the signing thread died.
    pub(crate) async fn with_signer<T, F>(&self, sign: F) -> Result<T, ClientError>
    where
        T: Send + 'static,
        F: FnOnce(&dyn Signer) -> Result<T, ClientError> + Send + 'static,
    {
        if !self.signer.blocks() {
            return sign(&*self.signer);
        }
        let signer = Arc::clone(&self.signer);
        tokio::task::spawn_blocking(move || sign(&*signer))
            .await
            .map_err(|e| ClientError::Proof(format!("the signing thread failed: {e}")))?
    }

    /// The signer.
    #[must_use]
    pub fn signer(&self) -> &dyn Signer {
        &*self.signer
    }

    /// The key's JWK thumbprint: the `cnf.jkt` of tokens bound to it.
    #[must_use]
    pub fn thumbprint(&self) -> &Jkt {
        self.signer.public_jwk().thumbprint()
    }

    /// The proof algorithm.
    #[must_use]
    pub fn algorithm(&self) -> Algorithm {
        self.signer.algorithm()
    }
}
