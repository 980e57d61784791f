//! The one error type of this crate: what went wrong, with which key and backend.

use core::fmt;

use crate::DeviceKey;

/// The kind of store a key lives in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Backend {
    /// A PEM or JWK file.
    File,
    /// A PKCS#11 token.
    Pkcs11,
    /// A TPM 2.0.
    Tpm2,
    /// AWS KMS.
    AwsKms,
}

impl Backend {
    /// The name used in messages (the URI scheme).
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::File => "file",
            Self::Pkcs11 => "pkcs11",
            Self::Tpm2 => "tpm2",
            Self::AwsKms => "awskms",
        }
    }

    /// The cargo feature that builds this backend in.
    const fn feature(self) -> &'static str {
        match self {
            Self::File => "",
            Self::Pkcs11 => "pkcs11",
            Self::Tpm2 => "tpm",
            Self::AwsKms => "awskms",
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a key reference cannot be parsed, opened, generated or used. Every message names
/// the key as the user wrote it, except that a PIN shows as `***`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeysError {
    /// The reference is malformed (a configuration error).
    #[error("{uri}: {why}")]
    Syntax {
        /// The backend the scheme names.
        backend: Backend,
        /// The reference, PIN redacted.
        uri: String,
        /// What is wrong.
        why: String,
    },
    /// The reference is well formed but cannot be used as given: a backend not built
    /// in, a PIN in the URI without the dangerous option, a PIN file that cannot be
    /// read, a module that cannot be loaded, a wrong PIN, a missing object (a
    /// configuration error: the user must change something).
    #[error("{backend} key {uri}: {why}{}", code_suffix(.code.as_deref()))]
    Config {
        /// The backend.
        backend: Backend,
        /// The reference, PIN redacted.
        uri: String,
        /// What to fix.
        why: String,
        /// The device's own error code (`CKR_PIN_INCORRECT`, `TPM_RC_…`), if any.
        code: Option<String>,
    },
    /// The device failed while in use: absent, busy, timed out, or it returned a
    /// signature that does not verify (a run-time error).
    #[error("{backend} key {uri}: {why}{}", code_suffix(.code.as_deref()))]
    Device {
        /// The backend.
        backend: Backend,
        /// The reference, PIN redacted.
        uri: String,
        /// What happened.
        why: String,
        /// The device's own error code, if any.
        code: Option<String>,
    },
}

fn code_suffix(code: Option<&str>) -> String {
    code.map(|c| format!(" ({c})")).unwrap_or_default()
}

impl KeysError {
    /// A malformed reference.
    pub(crate) fn syntax(backend: Backend, uri: &str, why: impl Into<String>) -> Self {
        Self::Syntax {
            backend,
            uri: crate::redact::redact(uri),
            why: why.into(),
        }
    }

    /// A reference the user must change (module path, PIN, object name, …).
    pub(crate) fn config(key: &DeviceKey, why: impl Into<String>, code: Option<String>) -> Self {
        Self::Config {
            backend: key.backend(),
            uri: key.to_string(),
            why: why.into(),
            code,
        }
    }

    /// A device failure while in use.
    pub(crate) fn device(key: &DeviceKey, why: impl Into<String>, code: Option<String>) -> Self {
        Self::Device {
            backend: key.backend(),
            uri: key.to_string(),
            why: why.into(),
            code,
        }
    }

    pub(crate) fn not_built(key: &DeviceKey) -> Self {
        let backend = key.backend();
        Self::config(
            key,
            format!(
                "this build has no {backend} support (rebuild with the cargo feature `{}`)",
                backend.feature()
            ),
            None,
        )
    }

    pub(crate) fn self_check(key: &DeviceKey, why: &str) -> Self {
        Self::device(
            key,
            format!("the device's test signature does not verify ({why}); refusing to use it"),
            None,
        )
    }

    /// Whether the user must change the configuration (exit status 2) rather than
    /// retry later (exit status 1).
    #[must_use]
    pub fn is_config(&self) -> bool {
        matches!(self, Self::Syntax { .. } | Self::Config { .. })
    }

    /// The backend concerned.
    #[must_use]
    pub fn backend(&self) -> Backend {
        match self {
            Self::Syntax { backend, .. }
            | Self::Config { backend, .. }
            | Self::Device { backend, .. } => *backend,
        }
    }

    /// The device's error code, if it gave one.
    #[must_use]
    pub fn code(&self) -> Option<&str> {
        match self {
            Self::Syntax { .. } => None,
            Self::Config { code, .. } | Self::Device { code, .. } => code.as_deref(),
        }
    }
}

impl From<KeysError> for dpop_core::KeyError {
    fn from(e: KeysError) -> Self {
        Self::Device(e.to_string())
    }
}
