//! Key files: reading them (PKCS#8 PEM, private JWK or public JWK, told apart by their
//! content) and writing private keys so that only the owner can read them.
//!
//! Every command that reads a key file goes through [`load`], so every one of them
//! refuses a private key that other users can read, with the same message.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read as _, Write as _};
use std::path::{Path, PathBuf};

use dpop_core::{
    ALL_ALGORITHMS, Algorithm, JwkError, KeyError, KeyFamily, MAX_PRIVATE_KEY_TEXT, PrivateKey,
    PublicJwk,
};
use zeroize::Zeroizing;

use crate::error::CliError;

/// What a key file holds.
#[derive(Debug)]
pub(crate) enum KeyFile {
    /// A private key (PEM or private JWK; a JWK's `alg` stays a restriction on it).
    Private(PrivateKey),
    /// A public JWK.
    Public(PublicJwk),
}

impl KeyFile {
    /// The public key, whichever kind of file it came from.
    pub(crate) fn public_jwk(&self) -> &PublicJwk {
        match self {
            Self::Private(key) => key.public_jwk(),
            Self::Public(p) => p,
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
pub(crate) fn load(path: &Path, rsa_alg: Option<Algorithm>) -> Result<KeyFile, CliError> {
    let (bytes, mode) = read_limited(path)?;
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
    } else {
        PrivateKey::from_pkcs8_pem(text, rsa_alg)
            .map(KeyFile::Private)
            .map_err(|e| match e {
                KeyError::NotPkcs8Pem => bad(&format_args!("{e}; or give a JWK")),
                _ => bad(&e),
            })
    }
}

/// Reads a private key file (PEM or private JWK) to sign with `alg`, or with the key's
/// own algorithm when `alg` is `None` (a JWK's `alg`, the curve's, EdDSA, or RS256 for
/// RSA PEM files, which do not record it).
///
/// # Errors
/// A usage error when the file is unusable, holds only a public key, or `alg` does not
/// fit the key (a private JWK's `alg` limits it to that one algorithm).
pub(crate) fn load_signing_key(
    path: &Path,
    alg: Option<Algorithm>,
) -> Result<PrivateKey, CliError> {
    // Only an RSA algorithm can say what an RSA PEM key is for; any other is checked
    // against the key below, with a clearer message.
    let rsa_alg = alg.filter(|a| a.key_family() == KeyFamily::Rsa);
    let key = match load(path, rsa_alg)? {
        KeyFile::Private(key) => key,
        KeyFile::Public(_) => {
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

/// Reads at most one byte more than any key file may have, so a huge file or a device
/// cannot exhaust memory. The buffer is wiped when dropped (it may hold a private key)
/// and allocated at its full size up front, so no copy is left behind by a reallocation.
/// Also returns the permission bits (Unix) of the file that was opened, not of whatever
/// the path names by the time it is checked.
fn read_limited(path: &Path) -> Result<(Zeroizing<Vec<u8>>, Option<u32>), CliError> {
    let cannot = |e: io::Error| CliError::usage(format!("cannot read {}: {e}", path.display()));
    let file = File::open(path).map_err(cannot)?;
    #[cfg(unix)]
    let mode = {
        use std::os::unix::fs::PermissionsExt as _;
        Some(file.metadata().map_err(cannot)?.permissions().mode() & 0o777)
    };
    #[cfg(not(unix))]
    let mode = None;
    let mut buf = Zeroizing::new(Vec::with_capacity(MAX_PRIVATE_KEY_TEXT + 1));
    let limit = u64::try_from(MAX_PRIVATE_KEY_TEXT).unwrap_or(u64::MAX);
    file.take(limit.saturating_add(1))
        .read_to_end(&mut buf)
        .map_err(cannot)?;
    if buf.len() > MAX_PRIVATE_KEY_TEXT {
        return Err(CliError::usage(format!(
            "{}: too large for a key file (over {MAX_PRIVATE_KEY_TEXT} bytes)",
            path.display()
        )));
    }
    Ok((buf, mode))
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

fn create_private(path: &Path) -> io::Result<File> {
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    options.open(path)
}

fn fill(mut file: File, parts: &[&[u8]]) -> io::Result<()> {
    for part in parts {
        file.write_all(part)?;
    }
    file.sync_all()
}

/// A fresh name in the directory of `path`, so the final rename stays on one file system.
fn temp_path(path: &Path) -> Result<PathBuf, CliError> {
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
