//! Files holding secrets: a private key others can read is refused, as ssh does, by every
//! process of the workspace that reads one (TLS keys, client keys, signing keys), and so is
//! a password file (the Redis passwords of the replay store).

use std::path::Path;

/// Why a private key file with permission bits `mode` may not be used, if it may not:
/// any permission for group or others.
#[must_use]
pub fn loose_key_mode(path: &Path, mode: u32) -> Option<String> {
    loose_mode(path, mode, KEY.0, KEY.1)
}

/// What kind of secret a file holds, for the messages: `("key file", "a private key")`.
type Kind = (&'static str, &'static str);

const KEY: Kind = ("key file", "a private key");
const PASSWORD: Kind = ("password file", "a password");

fn loose_mode(path: &Path, mode: u32, file: &str, secret: &str) -> Option<String> {
    let mode = mode & 0o777;
    (mode & 0o077 != 0).then(|| {
        format!(
            "the {file} {shown} can be read by other users (mode {mode:04o}); {secret} \
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
    check(path, KEY)
}

/// Checks the permissions of the password file at `path` as [`check_key_file`] does for
/// keys (on Unix; elsewhere nothing is checked).
///
/// # Errors
/// Why the file may not be used: it cannot be read, or others can read it.
pub fn check_password_file(path: &Path) -> Result<(), String> {
    check(path, PASSWORD)
}

fn check(path: &Path, (file, secret): Kind) -> Result<(), String> {
    let meta =
        std::fs::metadata(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        if let Some(why) = loose_mode(path, meta.permissions().mode(), file, secret) {
            return Err(why);
        }
    }
    #[cfg(not(unix))]
    let _ = (meta, file, secret);
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

    #[cfg(unix)]
    #[test]
    fn password_files_follow_the_same_rule() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = std::env::temp_dir().join(format!("dpop-files-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("password");
        std::fs::write(&path, "pw").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(check_password_file(&path), Ok(()));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        let why = check_password_file(&path).unwrap_err();
        assert!(
            why.contains("password file") && why.contains("0640") && why.contains("chmod 600"),
            "{why}"
        );
        assert!(
            check_password_file(&dir.join("absent"))
                .unwrap_err()
                .contains("cannot read")
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
