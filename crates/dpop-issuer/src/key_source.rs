//! Opening a key reference (`[keys] signing_key`, `rotate-key --key`, a `<kid>.ref` file)
//! as a [`Signer`]: a `file:` key is read here (owner-only, PKCS#8 PEM or private JWK), a
//! device key through dpop-keys, which checks one of its signatures first.
//!
//! Opening may wait on a device or a network service: callers on the executor go through
//! [`KeySource::open_blocking`]. Every message names the reference with any PIN as `***`.

use std::path::Path;
use std::sync::Arc;

use dpop_core::{Algorithm, PrivateKey, Signer};
use dpop_keys::KeyRef;
use zeroize::Zeroizing;

use crate::config::{IssuerConfig, KeyReference};
use crate::error::{ConfigError, IssuerError};

/// Largest key file read (a PEM or JWK private key is far smaller).
const MAX_KEY_FILE: u64 = 64 * 1024;

/// How key references are opened: the signing algorithm and the `[keys]` options.
#[derive(Clone, Debug)]
pub(crate) struct KeySource {
    alg: Algorithm,
    options: dpop_keys::OpenOptions,
}

/// A key opened from its reference.
pub(crate) struct OpenedKey {
    /// The reference as recorded in `<kid>.ref`.
    pub(crate) reference: Zeroizing<String>,
    /// The reference for messages (PIN redacted).
    pub(crate) shown: String,
    pub(crate) signer: Arc<dyn Signer>,
}

impl std::fmt::Debug for OpenedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenedKey")
            .field("reference", &self.shown)
            .field("kid", &self.kid())
            .finish_non_exhaustive()
    }
}

impl OpenedKey {
    /// The key id: the thumbprint of the key's public half.
    pub(crate) fn kid(&self) -> &str {
        self.signer.public_jwk().thumbprint().as_str()
    }
}

impl KeySource {
    pub(crate) fn new(config: &IssuerConfig) -> Self {
        Self {
            alg: config.signing_alg,
            options: config.keys.open_options(config.signing_alg),
        }
    }

    /// Opens `reference` on a thread that may block.
    ///
    /// # Errors
    /// As [`KeySource::open`].
    pub(crate) async fn open_blocking(
        &self,
        reference: KeyReference,
    ) -> Result<OpenedKey, IssuerError> {
        let this = self.clone();
        let shown = reference.to_string();
        tokio::task::spawn_blocking(move || this.open(&reference))
            .await
            .map_err(|e| IssuerError::Keys(format!("key {shown}: opening it failed: {e}")))?
    }

    /// Opens `reference` (blocking). A reference the operator must change (a file that
    /// others can read, a key of another algorithm, a backend not built in, a wrong PIN)
    /// is an [`IssuerError::Config`]; a device that does not answer is
    /// [`IssuerError::Keys`].
    ///
    /// # Errors
    /// One line naming the reference.
    pub(crate) fn open(&self, reference: &KeyReference) -> Result<OpenedKey, IssuerError> {
        let shown = reference.to_string();
        let config =
            |why: String| IssuerError::Config(ConfigError::new(format!("key {shown}: {why}")));
        let signer: Arc<dyn Signer> = match reference.key_ref() {
            KeyRef::File(path) => {
                let key = read_key_file(path).map_err(config)?;
                let key = key.with_algorithm(self.alg).map_err(|_| {
                    config(format!(
                        "the key is not a {} key (signing_alg); use a key of that algorithm or change signing_alg",
                        self.alg.name()
                    ))
                })?;
                Arc::new(key)
            }
            KeyRef::Device(device) => dpop_keys::open(device, &self.options).map_err(|e| {
                if e.is_config() {
                    IssuerError::Config(ConfigError::new(e.to_string()))
                } else {
                    IssuerError::Keys(e.to_string())
                }
            })?,
            _ => {
                return Err(config(
                    "this kind of key reference is not supported".to_owned(),
                ));
            }
        };
        self.adopt(reference, signer)
    }

    /// `signer` as the key `reference` names, once its algorithm is checked.
    ///
    /// # Errors
    /// A configuration error when it does not sign with `signing_alg`.
    pub(crate) fn adopt(
        &self,
        reference: &KeyReference,
        signer: Arc<dyn Signer>,
    ) -> Result<OpenedKey, IssuerError> {
        let shown = reference.to_string();
        // A device may have opened the key with its own algorithm.
        if signer.algorithm() != self.alg || !signer.public_jwk().fits(self.alg) {
            return Err(IssuerError::Config(ConfigError::new(format!(
                "key {shown}: the key signs with {}, not {} (signing_alg)",
                signer.algorithm().name(),
                self.alg.name()
            ))));
        }
        Ok(OpenedKey {
            reference: Zeroizing::new(reference.text().to_owned()),
            shown,
            signer,
        })
    }
}

/// `e` with `what` (a setting, a file) before its message, of the same kind.
pub(crate) fn context(what: &str, e: IssuerError) -> IssuerError {
    match e {
        IssuerError::Config(c) => {
            IssuerError::Config(ConfigError::new(format!("{what}: {}", c.message())))
        }
        IssuerError::Keys(m) => IssuerError::Keys(format!("{what}: {m}")),
        other => other,
    }
}

/// Reads a private key file the operator manages: a regular file of this user's,
/// readable by its owner only, holding a PKCS#8 PEM or a private JWK.
fn read_key_file(path: &Path) -> Result<PrivateKey, String> {
    let bytes = dpop_keys::read_file(path, MAX_KEY_FILE, "private key file", true)?;
    let text = std::str::from_utf8(&bytes).map_err(|_| "not UTF-8 text".to_owned())?;
    let trimmed = text.trim_start();
    let key = if trimmed.starts_with('{') {
        PrivateKey::from_jwk_json(trimmed)
    } else {
        PrivateKey::from_pkcs8_pem(trimmed, None)
    };
    key.map_err(|e| e.to_string())
}
