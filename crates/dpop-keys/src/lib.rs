//! Keys a thief cannot copy: one way to name a private key wherever a key is taken, and
//! the backends that sign with keys kept outside the process.
//!
//! A [`KeyRef`] is parsed once from the text a user gives (`--key`, `--client-key`, the
//! issuer's `signing_key`):
//!
//! | reference | where the key lives |
//! |---|---|
//! | `PATH`, `file:PATH` | a PEM / JWK file, read by the caller (permission-checked) |
//! | `pkcs11:token=…;object=…?module-path=…&pin-source=file:…` | a PKCS#11 token (RFC 7512): HSM, smart card, YubiKey, SoftHSM |
//! | `tpm2:handle=0x81000001?tcti=…` | a TPM 2.0 (persistent handle or key blob file) |
//! | `awskms:key-id=…;region=…` | an AWS KMS asymmetric key (feature `awskms`) |
//!
//! [`open`] turns a device reference into a [`dpop_core::Signer`] after checking one
//! signature of the device with aws-lc-rs (a device that returns garbage is refused at
//! start, not at the first request); [`generate`] makes a new non-extractable key inside
//! the device first. Device signers answer `true` to [`dpop_core::Signer::blocks`]:
//! async callers run their signing on a thread that may block.
//!
//! Another KMS fits behind the same trait: implement [`dpop_core::Signer`] (with
//! `blocks` returning `true`), check it once with [`self_check`], and hand it to
//! `dpop_client::ClientKey::from_signer` or the issuer.

mod check;
mod ecdsa;
mod error;
mod file;
mod jwk;
mod pool;
mod redact;
mod uri;

#[cfg(feature = "awskms")]
pub mod awskms;
#[cfg(feature = "pkcs11")]
mod pkcs11;
#[cfg(feature = "tpm")]
mod tpm;

use std::path::PathBuf;
use std::sync::Arc;

use dpop_core::{Algorithm, Signer};

pub use crate::check::self_check;
pub use crate::ecdsa::der_to_fixed;
pub use crate::error::{Backend, KeysError};
pub use crate::file::read_file;
pub use crate::jwk::{ec_public_jwk, ed25519_public_jwk};
pub use crate::pool::{Pool, PoolGuard};
pub use crate::uri::{AwsKmsUri, PinSource, Pkcs11Uri, Tpm2Uri};

/// Where a private key lives, as named by the user.
#[derive(Clone, PartialEq, Eq)]
#[expect(
    clippy::large_enum_variant,
    reason = "parsed once per key per process; boxing buys nothing"
)]
#[non_exhaustive]
pub enum KeyRef {
    /// A PEM or JWK file (a plain path or `file:PATH`). The caller reads it, with its
    /// own permission checks and passphrase handling.
    File(PathBuf),
    /// A key held by a device or a service.
    Device(DeviceKey),
}

/// A key held outside the process.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DeviceKey {
    /// A PKCS#11 object (RFC 7512 URI).
    Pkcs11(Pkcs11Uri),
    /// A TPM 2.0 key.
    Tpm2(Tpm2Uri),
    /// An AWS KMS key.
    AwsKms(AwsKmsUri),
}

impl KeyRef {
    /// Parses a key reference. Text starting with `pkcs11:`, `tpm2:` or `awskms:` (in
    /// any case) names a device key; `file:` and anything else name a file (write
    /// `./pkcs11:x` or `file:pkcs11:x` for a file whose name starts like a scheme).
    ///
    /// # Errors
    /// [`KeysError::Syntax`] for a malformed device URI: unknown or repeated attributes,
    /// bad percent-encoding, a missing required attribute.
    pub fn parse(text: &str) -> Result<Self, KeysError> {
        if let Some(rest) = strip_scheme(text, "file:") {
            if rest.is_empty() {
                return Err(KeysError::syntax(
                    Backend::File,
                    text,
                    "file: names no path",
                ));
            }
            return Ok(Self::File(PathBuf::from(rest)));
        }
        match DeviceKey::parse(text) {
            Some(parsed) => parsed.map(Self::Device),
            None => Ok(Self::File(PathBuf::from(text))),
        }
    }

    /// The device reference, if the key is not a file.
    #[must_use]
    pub fn device(&self) -> Option<&DeviceKey> {
        match self {
            Self::File(_) => None,
            Self::Device(d) => Some(d),
        }
    }
}

/// `text` after `scheme`, which is matched in any case (RFC 3986 §3.1): `PKCS11:…` is
/// a device URI too, not a file name that would be echoed, PIN and all, in a "cannot
/// read" message.
fn strip_scheme<'a>(text: &'a str, scheme: &str) -> Option<&'a str> {
    let head = text.get(..scheme.len())?;
    head.eq_ignore_ascii_case(scheme)
        .then(|| text.get(scheme.len()..))
        .flatten()
}

impl DeviceKey {
    /// Parses `text` when it starts with a device scheme; `None` when it does not.
    fn parse(text: &str) -> Option<Result<Self, KeysError>> {
        if let Some(rest) = strip_scheme(text, "pkcs11:") {
            return Some(Pkcs11Uri::parse(text, rest).map(Self::Pkcs11));
        }
        if let Some(rest) = strip_scheme(text, "tpm2:") {
            return Some(Tpm2Uri::parse(text, rest).map(Self::Tpm2));
        }
        if let Some(rest) = strip_scheme(text, "awskms:") {
            return Some(AwsKmsUri::parse(text, rest).map(Self::AwsKms));
        }
        None
    }

    /// The backend that serves this key.
    #[must_use]
    pub fn backend(&self) -> Backend {
        match self {
            Self::Pkcs11(_) => Backend::Pkcs11,
            Self::Tpm2(_) => Backend::Tpm2,
            Self::AwsKms(_) => Backend::AwsKms,
        }
    }
}

impl core::fmt::Display for KeyRef {
    /// The reference as given, except that a PIN in the URI (`pin-value`) shows as `***`.
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::File(p) => write!(f, "{}", p.display()),
            Self::Device(d) => d.fmt(f),
        }
    }
}

impl core::fmt::Debug for KeyRef {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "KeyRef({self})")
    }
}

impl core::fmt::Display for DeviceKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Pkcs11(u) => u.fmt(f),
            Self::Tpm2(u) => u.fmt(f),
            Self::AwsKms(u) => u.fmt(f),
        }
    }
}

impl core::fmt::Debug for DeviceKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "DeviceKey({self})")
    }
}

/// How a device key is opened.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct OpenOptions {
    /// The algorithm to sign with; `None` takes the key's own (ES256 for P-256, …).
    pub alg: Option<Algorithm>,
    /// Accept a PIN written into the URI (`pin-value`). It ends up in shell history,
    /// process listings and configuration files: for tests only.
    pub dangerous_allow_pin_value: bool,
    /// How many device sessions may sign at once; more callers wait (at most
    /// [`OpenOptions::wait`]) for one to come free.
    pub sessions: usize,
    /// How long a signer waits for a free session before the signature fails; for AWS
    /// KMS, the time limit of each request.
    pub wait: std::time::Duration,
}

impl Default for OpenOptions {
    fn default() -> Self {
        Self {
            alg: None,
            dangerous_allow_pin_value: false,
            sessions: 4,
            wait: std::time::Duration::from_secs(5),
        }
    }
}

/// Opens the key that `key` names and checks one of its signatures.
///
/// # Errors
/// A [`KeysError`] naming the key (without a PIN), the backend and the device's error
/// code: the backend is not built in, the module or device cannot be reached, the PIN is
/// wrong, the object is missing, or the device's signature does not verify.
pub fn open(key: &DeviceKey, options: &OpenOptions) -> Result<Arc<dyn Signer>, KeysError> {
    let signer = open_backend(key, options)?;
    self_check(&*signer).map_err(|why| KeysError::self_check(key, &why))?;
    Ok(signer)
}

/// Generates a new key for `alg` inside the device `key` names (non-extractable: the
/// private key never leaves it), then opens it as [`open`] does.
///
/// # Errors
/// As [`open`], and when the device cannot make keys for `alg` or an object with that
/// name or id already exists.
pub fn generate(
    key: &DeviceKey,
    alg: Algorithm,
    options: &OpenOptions,
) -> Result<Arc<dyn Signer>, KeysError> {
    let options = OpenOptions {
        alg: Some(alg),
        ..options.clone()
    };
    generate_backend(key, alg, &options)?;
    open(key, &options)
}

fn open_backend(key: &DeviceKey, options: &OpenOptions) -> Result<Arc<dyn Signer>, KeysError> {
    match key {
        #[cfg(feature = "pkcs11")]
        DeviceKey::Pkcs11(uri) => pkcs11::open(uri, options),
        #[cfg(feature = "tpm")]
        DeviceKey::Tpm2(uri) => tpm::open(uri, options),
        #[cfg(feature = "awskms")]
        DeviceKey::AwsKms(uri) => awskms::open(uri, options),
        #[allow(
            unreachable_patterns,
            reason = "which arms remain depends on the features"
        )]
        _ => {
            let _ = options;
            Err(KeysError::not_built(key))
        }
    }
}

fn generate_backend(
    key: &DeviceKey,
    alg: Algorithm,
    options: &OpenOptions,
) -> Result<(), KeysError> {
    match key {
        #[cfg(feature = "pkcs11")]
        DeviceKey::Pkcs11(uri) => pkcs11::generate(uri, alg, options),
        #[cfg(feature = "tpm")]
        DeviceKey::Tpm2(uri) => tpm::generate(uri, alg, options),
        #[cfg(feature = "awskms")]
        DeviceKey::AwsKms(uri) => awskms::generate(uri, alg, options),
        #[allow(
            unreachable_patterns,
            reason = "which arms remain depends on the features"
        )]
        _ => {
            let _ = (alg, options);
            Err(KeysError::not_built(key))
        }
    }
}
