//! Files holding secrets: a private key others can read is refused, as ssh does, by every
//! process of the workspace that reads one (TLS keys, client keys, signing keys).

use std::path::Path;

/// Why a private key file with permission bits `mode` may not be used, if it may not:
/// any permission for group or others.
#[must_use]
pub fn loose_key_mode(path: &Path, mode: u32) -> Option<String> {
    let mode = mode & 0o777;
    (mode & 0o077 != 0).then(|| {
        format!(
            "the key file {shown} can be read by other users (mode {mode:04o}); a private key \
             must be readable by its owner only: run `chmod 600 {shown}`",
            shown = path.display()
        )
    })
}

/// Checks the permissions of the private key file at `path` (on Unix; elsewhere nothing
/// is checked).
///
/// # Errors
/// Why the file may not be used: it cannot be read, or others can read it
/// ([`loose_key_mode`]).
pub fn check_key_file(path: &Path) -> Result<(), String> {
    let meta =
        std::fs::metadata(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        if let Some(why) = loose_key_mode(path, meta.permissions().mode()) {
            return Err(why);
        }
    }
    #[cfg(not(unix))]
    let _ = meta;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_only_modes_pass_and_others_are_named() {
        let p = Path::new("/etc/dpop/key.pem");
        for ok in [0o600, 0o400, 0o700, 0o100_600] {
            assert_eq!(loose_key_mode(p, ok), None, "{ok:o}");
        }
        for bad in [0o640, 0o604, 0o644, 0o610, 0o601] {
            let why = loose_key_mode(p, bad).unwrap();
            assert!(
                why.contains("/etc/dpop/key.pem") && why.contains("chmod 600"),
                "{why}"
            );
            assert!(why.contains(&format!("{bad:04o}")), "{why}");
        }
    }
}
