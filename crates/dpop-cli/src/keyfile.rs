//! Key files: reading them (PKCS#8 PEM, encrypted or not, private JWK or public JWK,
//! told apart by their content; `-` is stdin) and writing private keys so that only the
//! owner can read them.
//!
//! Every command that reads a key file goes through [`load`], so every one of them
//! refuses a private key that other users can read, with the same message, and asks for
//! the passphrase of an encrypted key the same way ([`passphrase`]).
//!
//! Encrypted PKCS#8 (RFC 5958 `EncryptedPrivateKeyInfo` with PBES2, RFC 8018) is done by
//! the RustCrypto `pkcs8` crate: aws-lc-rs, the workspace's crypto, reads and writes
//! only unencrypted PKCS#8 and offers no PBES2. The decrypted DER goes straight to
//! dpop-core's PKCS#8 loader, so there is one key parser.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read as _, Write as _};
use std::path::{Path, PathBuf};

use std::sync::{Arc, Mutex, OnceLock};

use dpop_core::{
    ALL_ALGORITHMS, Algorithm, JwkError, KeyError, KeyFamily, MAX_PRIVATE_KEY_TEXT, PrivateKey,
    PublicJwk, Signer,
};
use dpop_keys::{DeviceKey, KeyRef, KeysError};
use zeroize::Zeroizing;

use crate::cli::{DeviceArgs, PassphraseArgs};
use crate::error::CliError;

/// The path that means standard input (where a file is read) or standard output (where
/// one is written).
pub(crate) const STDIO: &str = "-";

/// Whether `path` is `-`.
pub(crate) fn is_stdio(path: &Path) -> bool {
    path.as_os_str() == STDIO
}

/// The PEM label of an encrypted PKCS#8 key.
const ENCRYPTED_LABEL: &str = "ENCRYPTED PRIVATE KEY";
/// The line an encrypted PKCS#8 PEM key starts with.
const ENCRYPTED_BEGIN: &str = "-----BEGIN ENCRYPTED PRIVATE KEY-----";

/// PBKDF2-HMAC-SHA256 iterations for keys `keygen --encrypt` writes (OWASP's 2023 advice
/// for PBKDF2-HMAC-SHA256).
const PBKDF2_ITERATIONS: u32 = 600_000;

/// The longest passphrase read from a file or the environment.
const MAX_PASSPHRASE: usize = 4096;

/// Where passphrases come from: set once from the command line by `main`.
static PASSPHRASE_SOURCE: OnceLock<PassphraseSource> = OnceLock::new();

#[derive(Debug, Default)]
enum PassphraseSource {
    /// Ask on the terminal.
    #[default]
    Prompt,
    /// The first line of a file (or stdin), read once.
    File(PathBuf, Mutex<Option<Zeroizing<String>>>),
    /// An environment variable.
    Env(String),
}

/// How device keys are opened: set once from the command line by `main`.
static DEVICE_OPTIONS: OnceLock<dpop_keys::OpenOptions> = OnceLock::new();

/// Takes the device flags of the command line, for every device key opened later.
pub(crate) fn set_device_options(args: &DeviceArgs) {
    let mut options = dpop_keys::OpenOptions::default();
    options.dangerous_allow_pin_value = args.dangerous_allow_pin_value;
    let _ = DEVICE_OPTIONS.set(options);
}

/// The options to open a device key with, for `alg` (or the key's own).
pub(crate) fn device_options(alg: Option<Algorithm>) -> dpop_keys::OpenOptions {
    let mut options = DEVICE_OPTIONS.get().cloned().unwrap_or_default();
    options.alg = alg;
    options
}

/// What a `--key` argument names: a file (a plain path, or `file:PATH`) or a key in a
/// device. Parsed here, once, for every command that takes a key.
///
/// # Errors
/// A usage error for a malformed device URI.
pub(crate) fn key_ref(arg: &Path) -> Result<KeyRef, CliError> {
    // A name that is not UTF-8 cannot be a URI: it is a file.
    let Some(text) = arg.to_str() else {
        return Ok(KeyRef::File(arg.to_owned()));
    };
    KeyRef::parse(text).map_err(|e| CliError::usage(e.to_string()))
}

/// A key argument as messages show it: a device URI with its PIN hidden (as dpop-keys
/// shows it), anything else as given.
pub(crate) fn shown(arg: &Path) -> String {
    match arg.to_str().map(KeyRef::parse) {
        Some(Ok(key @ KeyRef::Device(_))) => key.to_string(),
        Some(Err(KeysError::Syntax { uri, .. })) => uri,
        _ => arg.display().to_string(),
    }
}

/// The CLI's error for a device key that cannot be opened or generated: the user must
/// change something (exit 2), or the device failed (exit 1).
pub(crate) fn device_error(e: &KeysError) -> CliError {
    if e.is_config() {
        CliError::usage(e.to_string())
    } else {
        CliError::failed(e.to_string())
    }
}

/// Opens the device key `key` to sign with `alg` (or its own algorithm).
///
/// # Errors
/// As [`device_error`] says.
pub(crate) fn open_device(
    key: &DeviceKey,
    alg: Option<Algorithm>,
) -> Result<Arc<dyn Signer>, CliError> {
    dpop_keys::open(key, &device_options(alg)).map_err(|e| device_error(&e))
}

/// The signer a `--key` argument names: a key file read as [`load_signing_key`] reads
/// it, or a key in a device, opened and checked once.
///
/// # Errors
/// A usage error for an unusable file or reference, or a device that refuses it; a
/// failure (exit 1) when the device does not answer.
pub(crate) fn open_signer(arg: &Path, alg: Option<Algorithm>) -> Result<Arc<dyn Signer>, CliError> {
    match key_ref(arg)? {
        KeyRef::Device(device) => open_device(&device, alg),
        KeyRef::File(path) => load_signing_key(&path, alg).map(|k| Arc::new(k) as Arc<dyn Signer>),
        _ => Err(CliError::usage(format!(
            "{}: an unsupported key reference",
            shown(arg)
        ))),
    }
}

/// Takes the passphrase flags of the command line, for every key file read or written
/// later.
pub(crate) fn set_passphrase_source(args: &PassphraseArgs) {
    let source = match (&args.passphrase_file, &args.passphrase_env) {
        (Some(path), _) => PassphraseSource::File(path.clone(), Mutex::new(None)),
        (None, Some(var)) => PassphraseSource::Env(var.clone()),
        (None, None) => PassphraseSource::Prompt,
    };
    let _ = PASSPHRASE_SOURCE.set(source);
}

/// The passphrase for the key in `what` (a file name, for the prompt and messages):
/// from `--passphrase-file`, `--passphrase-env`, or asked on the terminal without echo
/// (twice when `confirm`, for a new key). Never empty.
///
/// # Errors
/// A usage error when the file or variable cannot be read or is empty, the passphrase is
/// too long, there is no terminal to ask on, or the two answers differ.
pub(crate) fn passphrase(what: &str, confirm: bool) -> Result<Zeroizing<String>, CliError> {
    let source = PASSPHRASE_SOURCE.get_or_init(PassphraseSource::default);
    let text = match source {
        PassphraseSource::File(path, read) => {
            let mut read = read
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if read.is_none() {
                let (bytes, mode) = read_limited(path, MAX_PASSPHRASE)?;
                // As for the key itself: a passphrase others can read protects nothing.
                check_owner_only(path, mode, "the passphrase file")?;
                let text = std::str::from_utf8(&bytes).map_err(|_| {
                    CliError::usage(format!("{}: the passphrase is not UTF-8", path.display()))
                })?;
                let line = text.lines().next().unwrap_or("");
                *read = Some(Zeroizing::new(line.to_owned()));
            }
            read.clone().unwrap_or_default()
        }
        PassphraseSource::Env(var) => Zeroizing::new(std::env::var(var).map_err(|_| {
            CliError::usage(format!(
                "the environment variable {var} (--passphrase-env) is not set or not UTF-8"
            ))
        })?),
        PassphraseSource::Prompt => {
            let ask = |prompt: String| {
                rpassword::prompt_password(prompt).map(Zeroizing::new).map_err(|e| {
                    CliError::usage(format!(
                        "cannot ask for the passphrase of {what} ({e}); use --passphrase-file or --passphrase-env"
                    ))
                })
            };
            let first = ask(format!("Passphrase for {what}: "))?;
            if confirm {
                let again = ask(format!("Passphrase for {what} (again): "))?;
                if !bool::from(subtle_eq(first.as_bytes(), again.as_bytes())) {
                    return Err(CliError::usage("the passphrases do not match"));
                }
            }
            first
        }
    };
    if text.is_empty() {
        return Err(CliError::usage(format!(
            "the passphrase for {what} is empty"
        )));
    }
    if text.len() > MAX_PASSPHRASE {
        return Err(CliError::usage(format!(
            "the passphrase for {what} is too long (over {MAX_PASSPHRASE} bytes)"
        )));
    }
    Ok(text)
}

/// Whether two byte strings are equal, in time independent of where they differ.
fn subtle_eq(a: &[u8], b: &[u8]) -> subtle::Choice {
    use subtle::ConstantTimeEq as _;
    a.ct_eq(b)
}

/// `pem` (an unencrypted PKCS#8 PEM key) encrypted with `passphrase`: PBES2 with
/// PBKDF2-HMAC-SHA256 ([`PBKDF2_ITERATIONS`], 16-byte random salt) and AES-256-CBC, the
/// scheme `openssl pkcs8 -topk8 -v2 aes-256-cbc` writes.
///
/// # Errors
/// A failure when the key cannot be encoded or no randomness is available.
pub(crate) fn encrypt_pem(pem: &str, passphrase: &str) -> Result<Zeroizing<String>, CliError> {
    use pkcs8::der::pem::LineEnding;
    let cannot =
        |e: &dyn core::fmt::Display| CliError::failed(format!("cannot encrypt the key: {e}"));
    let (_, der) = pkcs8::SecretDocument::from_pem(pem).map_err(|e| cannot(&e))?;
    let info = pkcs8::PrivateKeyInfo::try_from(der.as_bytes()).map_err(|e| cannot(&e))?;
    let mut salt = [0u8; 16];
    let mut iv = [0u8; 16];
    for buf in [&mut salt, &mut iv] {
        dpop_core::RandomSource::fill(&dpop_core::SystemRandomSource, buf)
            .map_err(|e| cannot(&e))?;
    }
    let params =
        pkcs8::pkcs5::pbes2::Parameters::pbkdf2_sha256_aes256cbc(PBKDF2_ITERATIONS, &salt, &iv)
            .map_err(|e| cannot(&e))?;
    let encrypted = info
        .encrypt_with_params(params, passphrase.as_bytes())
        .map_err(|e| cannot(&e))?;
    encrypted
        .to_pem(ENCRYPTED_LABEL, LineEnding::LF)
        .map_err(|e| cannot(&e))
}

/// The unencrypted PKCS#8 DER of the encrypted PEM `text` from `path`, asking for its
/// passphrase.
fn decrypt_pem(path: &Path, text: &str) -> Result<Zeroizing<Vec<u8>>, CliError> {
    let bad = |what: &str| CliError::usage(format!("{}: {what}", path.display()));
    let (label, der) = pkcs8::SecretDocument::from_pem(text.trim())
        .map_err(|_| bad("not a valid encrypted PKCS#8 PEM key"))?;
    if label != ENCRYPTED_LABEL {
        return Err(bad("not a valid encrypted PKCS#8 PEM key"));
    }
    let info = pkcs8::EncryptedPrivateKeyInfo::try_from(der.as_bytes())
        .map_err(|_| bad("not a valid encrypted PKCS#8 PEM key"))?;
    let passphrase = passphrase(&path.display().to_string(), false)?;
    // A wrong passphrase shows as bad padding or as garbage that is not PKCS#8: the
    // message cannot tell them apart, and says the likely one.
    let plain = info
        .decrypt(passphrase.as_bytes())
        .map_err(|_| bad("cannot decrypt the key: wrong passphrase (or an unsupported encryption scheme; PBES2 with PBKDF2 or scrypt and AES-CBC are supported)"))?;
    Ok(Zeroizing::new(plain.as_bytes().to_vec()))
}

/// What a key file holds.
pub(crate) enum KeyFile {
    /// A private key (PEM or private JWK; a JWK's `alg` stays a restriction on it).
    Private(PrivateKey),
    /// A public JWK.
    Public(PublicJwk),
    /// A key in a device: its public half, and the one algorithm it signs with.
    Device(Arc<dyn Signer>),
}

impl core::fmt::Debug for KeyFile {
    /// Public facts only.
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let kind = match self {
            Self::Private(_) => "Private",
            Self::Public(_) => "Public",
            Self::Device(_) => "Device",
        };
        f.debug_struct(kind)
            .field("jkt", self.public_jwk().thumbprint())
            .finish_non_exhaustive()
    }
}

impl KeyFile {
    /// The public key, whichever kind of file it came from.
    pub(crate) fn public_jwk(&self) -> &PublicJwk {
        match self {
            Self::Private(key) => key.public_jwk(),
            Self::Public(p) => p,
            Self::Device(s) => s.public_jwk(),
        }
    }

    /// The one algorithm a private key signs with; `None` for a public key.
    pub(crate) fn signing_algorithm(&self) -> Option<Algorithm> {
        match self {
            Self::Private(key) => Some(key.algorithm()),
            Self::Public(_) => None,
            Self::Device(s) => Some(s.algorithm()),
        }
    }
}

/// Reads a key file of any supported kind. `rsa_alg` is the algorithm for an RSA key in
/// a PEM file (PKCS#8 does not record it); `None` means RS256.
///
/// Like ssh, a private key in a file that other users can read (any group or other
/// permission bit on Unix) is refused: the key is the credential, and it may already be
/// in other hands. A public JWK may have any mode.
///
/// # Errors
/// A usage error naming the file and what is wrong with it.
pub(crate) fn load(arg: &Path, rsa_alg: Option<Algorithm>) -> Result<KeyFile, CliError> {
    match key_ref(arg)? {
        KeyRef::File(path) => load_file(&path, rsa_alg),
        KeyRef::Device(device) => open_device(&device, None).map(KeyFile::Device),
        _ => Err(CliError::usage(format!(
            "{}: an unsupported key reference",
            shown(arg)
        ))),
    }
}

/// [`load`] for a path already known to name a file (`file:` removed).
fn load_file(path: &Path, rsa_alg: Option<Algorithm>) -> Result<KeyFile, CliError> {
    let (bytes, mode) = read_limited(path, MAX_PRIVATE_KEY_TEXT)?;
    if bytes
        .trim_ascii_start()
        .starts_with(ENCRYPTED_BEGIN.as_bytes())
    {
        // Before asking for the passphrase of a key that is refused anyway.
        check_private_mode(path, mode)?;
    }
    let key = parse(path, &bytes, rsa_alg)?;
    if matches!(key, KeyFile::Private(_)) {
        check_private_mode(path, mode)?;
    }
    Ok(key)
}

/// Refuses a private key file with any permission for group or others.
fn check_private_mode(path: &Path, mode: Option<u32>) -> Result<(), CliError> {
    match mode.and_then(|mode| dpop_server::files::loose_key_mode(path, mode)) {
        Some(why) => Err(CliError::usage(why)),
        None => Ok(()),
    }
}

/// Refuses a file holding a secret other than a key (a passphrase, tokens) that group or
/// others may read, with the same advice as for keys.
pub(crate) fn check_owner_only(path: &Path, mode: Option<u32>, what: &str) -> Result<(), CliError> {
    match mode.map(|m| m & 0o777).filter(|m| m & 0o077 != 0) {
        Some(m) => Err(CliError::usage(format!(
            "{what} {shown} can be read by other users (mode {m:04o}); it must be readable by its owner only: run `chmod 600 {shown}`",
            shown = path.display()
        ))),
        None => Ok(()),
    }
}

fn parse(path: &Path, bytes: &[u8], rsa_alg: Option<Algorithm>) -> Result<KeyFile, CliError> {
    let text = std::str::from_utf8(bytes).map_err(|_| {
        CliError::usage(format!(
            "{}: not a key file (not UTF-8 text); expected a PKCS#8 PEM private key or a JWK",
            path.display()
        ))
    })?;
    let bad =
        |what: &dyn core::fmt::Display| CliError::usage(format!("{}: {what}", path.display()));
    if text.trim_start().starts_with('{') {
        // A JWK: public unless it carries private members, in which case it must be a
        // complete private key.
        match PublicJwk::from_json(text) {
            Ok(jwk) => Ok(KeyFile::Public(jwk)),
            Err(JwkError::PrivateMember(_)) => {
                let key = PrivateKey::from_jwk_json(text).map_err(|e| bad(&e))?;
                Ok(KeyFile::Private(key))
            }
            Err(e) => Err(bad(&format_args!("invalid JWK: {e}"))),
        }
    } else if text.trim_start().starts_with(ENCRYPTED_BEGIN) {
        let der = decrypt_pem(path, text)?;
        PrivateKey::from_pkcs8_der(&der, rsa_alg)
            .map(KeyFile::Private)
            .map_err(|e| bad(&e))
    } else {
        PrivateKey::from_pkcs8_pem(text, rsa_alg)
            .map(KeyFile::Private)
            .map_err(|e| match e {
                KeyError::NotPkcs8Pem => bad(&format_args!("{e}; or give a JWK")),
                _ => bad(&e),
            })
    }
}

/// Reads a private key file (PEM or private JWK; `path` names a file, `file:` already
/// removed) to sign with `alg`, or with the key's own algorithm when `alg` is `None` (a
/// JWK's `alg`, the curve's, EdDSA, or RS256 for RSA PEM files, which do not record it).
///
/// # Errors
/// A usage error when the file is unusable, holds only a public key, or `alg` does not
/// fit the key (a private JWK's `alg` limits it to that one algorithm).
fn load_signing_key(path: &Path, alg: Option<Algorithm>) -> Result<PrivateKey, CliError> {
    // Only an RSA algorithm can say what an RSA PEM key is for; any other is checked
    // against the key below, with a clearer message.
    let rsa_alg = alg.filter(|a| a.key_family() == KeyFamily::Rsa);
    let key = match load_file(path, rsa_alg)? {
        KeyFile::Private(key) => key,
        KeyFile::Public(_) | KeyFile::Device(_) => {
            return Err(CliError::usage(format!(
                "{}: holds a public JWK; signing needs the private key (PEM or private JWK)",
                path.display()
            )));
        }
    };
    let Some(alg) = alg else {
        return Ok(key);
    };
    let usable: Vec<&str> = ALL_ALGORITHMS
        .iter()
        .filter(|a| key.public_jwk().fits(**a))
        .map(|a| a.name())
        .collect();
    let kty = key.public_jwk().kty();
    key.with_algorithm(alg).map_err(|_| {
        CliError::usage(format!(
            "--alg {alg} does not fit the {kty} key in {}; it signs with {}",
            path.display(),
            usable.join(", ")
        ))
    })
}

/// Reads at most one byte more than `max` (a key file's limit, a token's), so a huge
/// file or a device cannot exhaust memory; `-` reads standard input. The buffer is wiped
/// when dropped (it may hold a private key or a token) and allocated at its full size up
/// front, so no copy is left behind by a reallocation. Also returns the permission bits
/// (Unix) of the file that was opened, not of whatever the path names by the time it is
/// checked (`None` for stdin, which is the caller's to protect).
pub(crate) fn read_limited(
    path: &Path,
    max: usize,
) -> Result<(Zeroizing<Vec<u8>>, Option<u32>), CliError> {
    let cannot = |e: io::Error| CliError::usage(format!("cannot read {}: {e}", path.display()));
    if is_stdio(path) {
        let mut buf = Zeroizing::new(Vec::with_capacity(max + 1));
        let limit = u64::try_from(max).unwrap_or(u64::MAX).saturating_add(1);
        io::stdin()
            .lock()
            .take(limit)
            .read_to_end(&mut buf)
            .map_err(cannot)?;
        check_size(&buf, path, max)?;
        return Ok((buf, None));
    }
    let file = File::open(path).map_err(cannot)?;
    #[cfg(unix)]
    let mode = {
        use std::os::unix::fs::PermissionsExt as _;
        Some(file.metadata().map_err(cannot)?.permissions().mode() & 0o777)
    };
    #[cfg(not(unix))]
    let mode = None;
    Ok((read_open(file, path, max)?, mode))
}

/// Reads the open `file` (opened from `path`) as [`read_limited`] does: at most one byte
/// more than `max`, into a buffer wiped when dropped.
pub(crate) fn read_open(
    file: File,
    path: &Path,
    max: usize,
) -> Result<Zeroizing<Vec<u8>>, CliError> {
    let mut buf = Zeroizing::new(Vec::with_capacity(max + 1));
    let limit = u64::try_from(max).unwrap_or(u64::MAX).saturating_add(1);
    file.take(limit)
        .read_to_end(&mut buf)
        .map_err(|e| CliError::usage(format!("cannot read {}: {e}", path.display())))?;
    check_size(&buf, path, max)?;
    Ok(buf)
}

fn check_size(buf: &[u8], path: &Path, max: usize) -> Result<(), CliError> {
    if buf.len() > max {
        return Err(CliError::usage(format!(
            "{}: too large (over {max} bytes)",
            if is_stdio(path) {
                "standard input".into()
            } else {
                path.display().to_string()
            }
        )));
    }
    Ok(())
}

/// Writes `parts` (concatenated) to a new file `path` that only its owner can read
/// (mode 0600 on Unix, set at creation so the key is never readable by others, even
/// briefly). Refuses to replace an existing file unless `force`; with `force` the data
/// goes to a new file beside `path` that is then renamed over it, so `path` always holds
/// either the old or the new key.
///
/// # Errors
/// A usage error when the file exists (without `force`) or cannot be created; a failure
/// when writing fails.
pub(crate) fn write_secret(path: &Path, parts: &[&[u8]], force: bool) -> Result<(), CliError> {
    if is_stdio(path) {
        let mut out = io::stdout().lock();
        for part in parts {
            out.write_all(part).map_err(|e| CliError::stdout(&e))?;
        }
        return out.flush().map_err(|e| CliError::stdout(&e));
    }
    if !force {
        let file = create_private(path).map_err(|e| match e.kind() {
            io::ErrorKind::AlreadyExists => CliError::usage(format!(
                "{} already exists; pass --force to replace it",
                path.display()
            )),
            _ => CliError::usage(format!("cannot create {}: {e}", path.display())),
        })?;
        return fill(file, parts).map_err(|e| {
            // Leave no half-written key behind.
            let _ = fs::remove_file(path);
            CliError::failed(format!("cannot write {}: {e}", path.display()))
        });
    }
    let tmp = temp_path(path)?;
    let file = create_private(&tmp)
        .map_err(|e| CliError::usage(format!("cannot create {}: {e}", tmp.display())))?;
    let written = fill(file, parts)
        .map_err(|e| CliError::failed(format!("cannot write {}: {e}", tmp.display())))
        .and_then(|()| {
            fs::rename(&tmp, path)
                .map_err(|e| CliError::usage(format!("cannot replace {}: {e}", path.display())))
        });
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written
}

pub(crate) fn create_private(path: &Path) -> io::Result<File> {
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    options.open(path)
}

pub(crate) fn fill(mut file: File, parts: &[&[u8]]) -> io::Result<()> {
    for part in parts {
        file.write_all(part)?;
    }
    file.sync_all()
}

/// A fresh name in the directory of `path`, so the final rename stays on one file system.
pub(crate) fn temp_path(path: &Path) -> Result<PathBuf, CliError> {
    let name = path
        .file_name()
        .ok_or_else(|| CliError::usage(format!("{} is not a file name", path.display())))?;
    // The file is created with create_new, so a name taken by a concurrent writer fails
    // instead of being shared; random bytes make that practically never happen.
    let mut random = [0u8; 8];
    dpop_core::RandomSource::fill(&dpop_core::SystemRandomSource, &mut random)
        .map_err(|e| CliError::failed(format!("no randomness for a temporary file name: {e}")))?;
    let mut tmp = std::ffi::OsString::from(".");
    tmp.push(name);
    tmp.push(format!(
        ".{}.{:016x}.tmp",
        std::process::id(),
        u64::from_le_bytes(random)
    ));
    Ok(path.with_file_name(tmp))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temp_path_is_a_hidden_sibling() {
        let tmp = temp_path(Path::new("/some/dir/key.pem")).unwrap();
        assert_eq!(tmp.parent(), Some(Path::new("/some/dir")));
        let name = tmp.file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            name.starts_with(".key.pem.") && name.ends_with(".tmp"),
            "{name}"
        );
        let bare = temp_path(Path::new("key.pem")).unwrap();
        assert_eq!(bare.parent(), Some(Path::new("")));
        assert!(temp_path(Path::new("/")).is_err());
    }
}
