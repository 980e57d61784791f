//! Files only the issuer's user may read: the data directory (private keys, and by
//! default the SQLite database with the nonce secret and refresh-token hashes) and the
//! SQLite database with its journal, WAL and shared-memory files.
//!
//! Directories and files are created with their final modes (0700, 0600) rather than
//! by changing the process umask, which other threads share. SQLite creates its `-wal`,
//! `-shm` and `-journal` files with the mode of the database file, so a database made
//! 0600 here keeps them private too. Existing files that others can read are tightened,
//! with a warning: an older version, or a copy, may have left them readable.

use std::path::{Path, PathBuf};

/// Creates `dir` and its missing parents with mode 0700; an existing `dir` that other
/// users can access is set to 0700, with a warning.
pub(crate) fn private_dir(dir: &Path) -> Result<(), String> {
    create_private_dirs(dir)?;
    tighten(dir, 0o700)
}

/// Creates the missing directories of `dir` with mode 0700 (existing ones are left as
/// they are: the database may live in a shared directory).
fn create_private_dirs(dir: &Path) -> Result<(), String> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder
        .create(dir)
        .map_err(|e| format!("cannot create {}: {e}", dir.display()))
}

/// Sets `path` to `mode` when group or others have any access to it.
fn tighten(path: &Path, mode: u32) -> Result<(), String> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let current = match std::fs::metadata(path) {
            Ok(m) => m.permissions().mode() & 0o777,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
        };
        if current & 0o077 != 0 {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
                .map_err(|e| format!("cannot restrict {}: {e}", path.display()))?;
            tracing::warn!(
                target: "dpop::issuer",
                path = %path.display(),
                was = format!("{current:o}"),
                now = format!("{mode:o}"),
                "other users could access this issuer file; restricted it"
            );
        }
    }
    #[cfg(not(unix))]
    let _ = (path, mode);
    Ok(())
}

/// The file of a `sqlite:` database URL, with whether the URL lets SQLite create it;
/// `None` for an in-memory database or another URL.
fn sqlite_file(url: &str) -> Option<(PathBuf, bool)> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))?;
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    let options: Vec<&str> = query.split('&').collect();
    if path.is_empty() || path == ":memory:" || options.contains(&"mode=memory") {
        return None;
    }
    Some((PathBuf::from(path), options.contains(&"mode=rwc")))
}

/// Makes a SQLite database private before it is opened: its missing directories are
/// created 0700, the file itself 0600 (when the URL allows creating it), and an existing
/// database, journal, WAL or shared-memory file that others can read is set to 0600.
pub(crate) fn private_sqlite(url: &str) -> Result<(), String> {
    let Some((file, create)) = sqlite_file(url) else {
        return Ok(());
    };
    if let Some(parent) = file.parent().filter(|p| !p.as_os_str().is_empty()) {
        create_private_dirs(parent)?;
    }
    if create {
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        // An empty file is a new database to SQLite.
        match options.open(&file) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(format!("cannot create {}: {e}", file.display())),
        }
    }
    for suffix in ["", "-journal", "-wal", "-shm"] {
        let mut name = file.clone().into_os_string();
        name.push(suffix);
        tighten(Path::new(&name), 0o600)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_urls() {
        assert_eq!(
            sqlite_file("sqlite:///var/lib/dpop/issuer.db?mode=rwc"),
            Some((PathBuf::from("/var/lib/dpop/issuer.db"), true))
        );
        assert_eq!(
            sqlite_file("sqlite://data/issuer.db"),
            Some((PathBuf::from("data/issuer.db"), false))
        );
        assert_eq!(
            sqlite_file("sqlite:issuer.db?cache=shared&mode=rwc"),
            Some((PathBuf::from("issuer.db"), true))
        );
        assert_eq!(sqlite_file("sqlite://:memory:"), None);
        assert_eq!(sqlite_file("sqlite::memory:"), None);
        assert_eq!(sqlite_file("sqlite://x.db?mode=memory"), None);
        assert_eq!(sqlite_file("postgres://u@h/db"), None);
    }
}
