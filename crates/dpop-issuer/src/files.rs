//! Files only the issuer's user may read: the data directory (private keys, and by
//! default the SQLite database with the nonce secret and refresh-token hashes) and the
//! SQLite database with its journal, WAL and shared-memory files.
//!
//! Directories and files are created with their final modes (0700, 0600) rather than
//! by changing the process umask, which other threads share. SQLite creates its `-wal`,
//! `-shm` and `-journal` files with the mode of the database file, so a database made
//! 0600 here keeps them private too. Existing files that others can read are tightened,
//! with a warning: an older version, or a copy, may have left them readable.
//!
//! The SQLite file made private must be the file SQLite opens. sqlx reads a `sqlite:`
//! URL as a URL: it removes `..` segments as text and decodes `%` escapes, whereas the
//! file system resolves `..` after following symbolic links and takes `%` literally. A
//! database path with either has two meanings, so it is refused; configuration paths
//! resolve `..` against the file system when they are loaded ([`resolve_dot_dot`]).

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

/// Refuses a SQLite database path that a URL parser and the file system read
/// differently: one with a `..` segment or a `%` (module docs).
pub(crate) fn check_sqlite_path(path: &Path) -> Result<(), String> {
    if path
        .components()
        .any(|c| c == std::path::Component::ParentDir)
    {
        return Err(format!(
            "the SQLite database path {} has a `..` segment, which the database driver \
             removes as text while the file system follows symbolic links first; give the \
             path without `..`",
            path.display()
        ));
    }
    if path.to_string_lossy().contains('%') {
        return Err(format!(
            "the SQLite database path {} has a `%`, which the database driver decodes as an \
             escape while the file system takes it literally; rename the file or directory",
            path.display()
        ));
    }
    Ok(())
}

/// `path` with its `..` segments resolved as the file system does: the part up to the
/// last `..` is made canonical (symbolic links followed), so it must exist.
pub(crate) fn resolve_dot_dot(path: &Path) -> Result<PathBuf, String> {
    let components: Vec<std::path::Component<'_>> = path.components().collect();
    let Some(last) = components
        .iter()
        .rposition(|c| *c == std::path::Component::ParentDir)
    else {
        return Ok(path.to_path_buf());
    };
    let (head, tail) = components.split_at(last + 1);
    let head: PathBuf = head.iter().collect();
    let resolved = std::fs::canonicalize(&head).map_err(|e| {
        format!(
            "cannot resolve {} (the `..` in {}): {e}",
            head.display(),
            path.display()
        )
    })?;
    Ok(tail.iter().fold(resolved, |p, c| p.join(c)))
}

/// Makes a SQLite database private before it is opened: its missing directories are
/// created 0700, the file itself 0600 (when the URL allows creating it), and an existing
/// database, journal, WAL or shared-memory file that others can read is set to 0600.
/// A path with `..` or `%` is refused ([`check_sqlite_path`]).
pub(crate) fn private_sqlite(url: &str) -> Result<(), String> {
    let Some((file, create)) = sqlite_file(url) else {
        return Ok(());
    };
    check_sqlite_path(&file)?;
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

    #[test]
    fn sqlite_paths_with_two_meanings_are_refused() {
        for bad in [
            "sqlite:///var/lib/dpop/../issuer.db?mode=rwc",
            "sqlite://../issuer.db",
            "sqlite:///var/lib/dpop%2Fx/issuer.db",
        ] {
            assert!(private_sqlite(bad).is_err(), "{bad}");
        }
        assert!(check_sqlite_path(Path::new("/var/lib/./dpop/issuer.db")).is_ok());
    }

    #[test]
    fn dot_dot_is_resolved_through_the_file_system() {
        let base =
            std::env::temp_dir().join(format!("dpop-files-{}-{}", std::process::id(), line!()));
        let _ = std::fs::remove_dir_all(&base);
        std::fs::create_dir_all(base.join("real").join("conf")).unwrap();
        #[cfg(unix)]
        {
            std::os::unix::fs::symlink(base.join("real").join("conf"), base.join("conf")).unwrap();
            let resolved = resolve_dot_dot(&base.join("conf/../data/issuer.db")).unwrap();
            let real = std::fs::canonicalize(base.join("real")).unwrap();
            assert_eq!(resolved, real.join("data").join("issuer.db"));
        }
        assert_eq!(
            resolve_dot_dot(Path::new("data/issuer.db")).unwrap(),
            PathBuf::from("data/issuer.db")
        );
        assert!(resolve_dot_dot(&base.join("missing/../issuer.db")).is_err());
        let _ = std::fs::remove_dir_all(&base);
    }
}
