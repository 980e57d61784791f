//! `--token-cache FILE`: dpop-client's [`TokenStore`] in a file, so that separate runs of
//! `dpop token` and `dpop curl` (a CI job's fifty calls) share one token.
//!
//! The file is JSON, `{"version": 1, "tokens": {KEY: ENTRY}}`, mode 0600 (its directory
//! is created 0700 when missing). Like a key file, a cache that other users can read is
//! refused. Every change is a read-modify-write under an exclusive lock (`flock` on
//! `FILE.lock`, Unix), written to a new file beside it that is then renamed over it, so
//! two processes never lose each other's entries and a reader never sees half a file.
//! A renewal holds `FILE.renew.lock` while it asks the issuer, so runs started together
//! wait for the first one's token (at most 30 s) instead of each asking. Messages name
//! the file and what is wrong, never a token. The two lock files stay beside the cache
//! (empty, 0600); entries that can no longer give a token are dropped at each save.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use dpop_client::{ClientError, RenewalGuard, StoredToken, TokenKey, TokenStore};
use serde_json::{Value, json};
use zeroize::Zeroizing;

use crate::keyfile;

/// The largest cache file read (a few hundred tokens).
const MAX_CACHE_BYTES: usize = 1 << 20;

/// How long after its access token expired an entry is kept for its refresh token.
const REFRESH_KEPT_SECS: u64 = 30 * 86_400;

/// The cache format this code writes and reads.
const VERSION: u64 = 1;

/// Tokens in a file (see the module docs).
#[derive(Debug)]
pub(crate) struct FileTokenStore {
    path: PathBuf,
}

fn store_error(path: &Path, what: impl core::fmt::Display) -> ClientError {
    ClientError::TokenStore(format!("{}: {what}", path.display()))
}

impl FileTokenStore {
    /// A store in `path` (created at the first save).
    pub(crate) fn new(path: PathBuf) -> Self {
        Self { path }
    }

    /// Runs `f` on the entries while holding the lock, and writes them back when it says
    /// so.
    fn with_entries<T>(
        &self,
        f: impl FnOnce(&mut BTreeMap<String, Value>) -> (T, bool),
    ) -> Result<T, ClientError> {
        let _lock = self.lock()?;
        let mut entries = self.read()?;
        let (result, changed) = f(&mut entries);
        if changed {
            self.write(&entries)?;
        }
        Ok(result)
    }

    /// The exclusive lock on `FILE.lock`, released when the file is dropped.
    fn lock(&self) -> Result<File, ClientError> {
        let (file, lock_path) = self.open_lock(".lock")?;
        #[cfg(unix)]
        rustix::fs::flock(&file, rustix::fs::FlockOperation::LockExclusive)
            .map_err(|e| store_error(&lock_path, format_args!("cannot lock: {e}")))?;
        #[cfg(not(unix))]
        let _ = lock_path;
        Ok(file)
    }

    /// `FILE` + `suffix`, opened (created 0600) to be locked. Creates the cache's
    /// directory (0700) when missing, and refuses one that others may write to.
    fn open_lock(&self, suffix: &str) -> Result<(File, PathBuf), ClientError> {
        let dir = self
            .path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        if !dir.exists() {
            let mut builder = fs::DirBuilder::new();
            builder.recursive(true);
            #[cfg(unix)]
            {
                use std::os::unix::fs::DirBuilderExt as _;
                builder.mode(0o700);
            }
            builder
                .create(dir)
                .map_err(|e| store_error(dir, format_args!("cannot create the directory: {e}")))?;
        }
        check_dir(dir)?;
        let mut lock_path = self.path.clone().into_os_string();
        lock_path.push(suffix);
        let lock_path = PathBuf::from(lock_path);
        let mut options = OpenOptions::new();
        options.read(true).write(true).create(true).truncate(false);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt as _;
            options.mode(0o600);
        }
        let file = no_symlink(&mut options)
            .open(&lock_path)
            .map_err(|e| open_error(&lock_path, "the lock file", &e))?;
        check_private(&file, &lock_path, "the lock file")?;
        Ok((file, lock_path))
    }

    /// The entries, none when the file does not exist yet.
    fn read(&self) -> Result<BTreeMap<String, Value>, ClientError> {
        let file = match no_symlink(OpenOptions::new().read(true)).open(&self.path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
            Err(e) => return Err(open_error(&self.path, "the token cache", &e)),
        };
        check_private(&file, &self.path, "the token cache")?;
        let bytes = keyfile::read_open(file, &self.path, MAX_CACHE_BYTES)
            .map_err(|e| ClientError::TokenStore(e.to_string()))?;
        // The parse error's position only: its text could quote a token.
        let not_cache = |detail: String| {
            store_error(
                &self.path,
                format_args!("not a dpop token cache ({detail}); remove it or choose another file"),
            )
        };
        let doc: Value = serde_json::from_slice(&bytes).map_err(|e| {
            not_cache(format!(
                "invalid JSON at line {} column {}",
                e.line(),
                e.column()
            ))
        })?;
        if doc.get("version").and_then(Value::as_u64) != Some(VERSION) {
            return Err(not_cache(format!("no \"version\": {VERSION}")));
        }
        match doc.get("tokens") {
            Some(Value::Object(tokens)) => Ok(tokens.clone().into_iter().collect()),
            _ => Err(not_cache("no \"tokens\" object".to_owned())),
        }
    }

    /// Writes the entries to a new file beside the cache, then renames it over the cache.
    fn write(&self, entries: &BTreeMap<String, Value>) -> Result<(), ClientError> {
        let doc = json!({ "version": VERSION, "tokens": entries });
        let text = Zeroizing::new(doc.to_string());
        let tmp =
            keyfile::temp_path(&self.path).map_err(|e| ClientError::TokenStore(e.to_string()))?;
        let written = keyfile::create_private(&tmp)
            .and_then(|file| keyfile::fill(file, &[text.as_bytes(), b"\n"]))
            .and_then(|()| fs::rename(&tmp, &self.path));
        if let Err(e) = written {
            let _ = fs::remove_file(&tmp);
            return Err(store_error(&self.path, format_args!("cannot write: {e}")));
        }
        Ok(())
    }
}

/// `options` refusing a symbolic link as the file (Unix: `O_NOFOLLOW`): whoever could
/// place one would have the tokens written where they choose.
fn no_symlink(options: &mut OpenOptions) -> &mut OpenOptions {
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.custom_flags(rustix::fs::OFlags::NOFOLLOW.bits().cast_signed());
    }
    options
}

/// The error for `path` (`what`) that could not be opened, naming a symbolic link.
fn open_error(path: &Path, what: &str, e: &std::io::Error) -> ClientError {
    #[cfg(unix)]
    if e.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error()) {
        return store_error(
            path,
            format_args!("{what} is a symbolic link: refused; give the real file's path"),
        );
    }
    store_error(path, format_args!("cannot open {what}: {e}"))
}

/// Refuses the open `file` (`what` at `path`) unless it belongs to this user and only
/// its owner may read or write it.
fn check_private(file: &File, path: &Path, what: &str) -> Result<(), ClientError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt as _;
        let meta = file
            .metadata()
            .map_err(|e| store_error(path, format_args!("cannot read {what}'s metadata: {e}")))?;
        let me = rustix::process::geteuid().as_raw();
        if meta.uid() != me {
            return Err(store_error(
                path,
                format_args!(
                    "{what} belongs to another user (uid {}, not {me}): refused; remove it or choose another file",
                    meta.uid()
                ),
            ));
        }
        keyfile::check_owner_only(path, Some(meta.mode()), what)
            .map_err(|e| ClientError::TokenStore(e.to_string()))?;
    }
    #[cfg(not(unix))]
    let _ = (file, path, what);
    Ok(())
}

/// Refuses the cache's directory when group or others may write to it: they could
/// replace the cache or its lock files.
fn check_dir(dir: &Path) -> Result<(), ClientError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = fs::metadata(dir)
            .map_err(|e| store_error(dir, format_args!("cannot read the directory: {e}")))?
            .permissions()
            .mode()
            & 0o777;
        if mode & 0o022 != 0 {
            return Err(store_error(
                dir,
                format_args!(
                    "the token cache's directory can be written by other users (mode {mode:04o}): \
                     refused; run `chmod go-w {}` or choose a private directory",
                    dir.display()
                ),
            ));
        }
    }
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

fn to_entry(t: &StoredToken) -> Value {
    let mut entry = json!({
        "access_token": &*t.access_token,
        "obtained_at": t.obtained_at,
        "expires_at": t.expires_at,
    });
    if let Some(rt) = &t.refresh_token {
        entry["refresh_token"] = rt.as_str().into();
    }
    if let Some(scope) = &t.scope {
        entry["scope"] = scope.as_str().into();
    }
    entry
}

/// The entry as a token; `None` for an entry this version does not understand (it is
/// then replaced).
fn from_entry(v: &Value) -> Option<StoredToken> {
    let access_token = v.get("access_token")?.as_str()?;
    Some(StoredToken::new(
        access_token.into(),
        v.get("obtained_at")?.as_u64()?,
        v.get("expires_at")?.as_u64()?,
        v.get("refresh_token")
            .and_then(Value::as_str)
            .map(|r| Arc::new(Zeroizing::new(r.to_owned()))),
        v.get("scope").and_then(Value::as_str).map(str::to_owned),
    ))
}

impl TokenStore for FileTokenStore {
    fn load(&self, key: &TokenKey) -> Result<Option<StoredToken>, ClientError> {
        self.with_entries(|entries| (entries.get(key.as_str()).and_then(from_entry), false))
    }

    fn save(&self, key: &TokenKey, token: &StoredToken) -> Result<(), ClientError> {
        let now = dpop_core::Clock::now(&dpop_core::SystemClock).map_or(0, |t| t.as_secs());
        self.with_entries(|entries| {
            // Entries that can no longer give a token go: expired without a refresh token,
            // or expired for longer than refresh tokens live (30 days at dpop issuer).
            entries.retain(|_, v| {
                from_entry(v).is_some_and(|t| {
                    t.expires_at > now
                        || (t.refresh_token.is_some()
                            && t.expires_at.saturating_add(REFRESH_KEPT_SECS) > now)
                })
            });
            entries.insert(key.as_str().to_owned(), to_entry(token));
            ((), true)
        })
    }

    /// One renewal at a time per cache file (`FILE.renew.lock`, Unix), whichever key: runs
    /// started together then wait for the first one's token instead of each fetching.
    fn try_lock_renewal(&self, key: &TokenKey) -> Result<Option<RenewalGuard>, ClientError> {
        let _ = key;
        let (file, lock_path) = self.open_lock(".renew.lock")?;
        #[cfg(unix)]
        match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {}
            Err(rustix::io::Errno::WOULDBLOCK) => return Ok(None),
            Err(e) => return Err(store_error(&lock_path, format_args!("cannot lock: {e}"))),
        }
        #[cfg(not(unix))]
        let _ = lock_path;
        Ok(Some(RenewalGuard::new(file)))
    }

    fn remove(&self, key: &TokenKey, access_token: &str) -> Result<(), ClientError> {
        self.with_entries(|entries| {
            let matches = entries
                .get(key.as_str())
                .and_then(from_entry)
                .is_some_and(|t| *t.access_token == *access_token);
            if matches {
                entries.remove(key.as_str());
            }
            ((), matches)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: &str) -> TokenKey {
        TokenKey::new(
            "https://as.example",
            n,
            "jkt",
            "client_credentials",
            None,
            &[],
            &[],
        )
    }

    fn now() -> u64 {
        dpop_core::Clock::now(&dpop_core::SystemClock).map_or(0, |t| t.as_secs())
    }

    fn dir(label: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("dpop-cache-{label}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn save_load_remove_and_pruning() {
        let d = dir("unit");
        let store = FileTokenStore::new(d.join("sub").join("cache.json"));
        let t = now();
        let live = StoredToken::new("live".into(), t, t + 300, None, Some("read".into()));
        store.save(&key("a"), &live).unwrap();
        let got = store.load(&key("a")).unwrap().unwrap();
        assert_eq!(&*got.access_token, "live");
        assert_eq!(got.scope.as_deref(), Some("read"));
        assert!(store.load(&key("b")).unwrap().is_none());

        // Removing another token leaves the stored one; removing it empties the key.
        store.remove(&key("a"), "other").unwrap();
        assert!(store.load(&key("a")).unwrap().is_some());
        store.remove(&key("a"), "live").unwrap();
        assert!(store.load(&key("a")).unwrap().is_none());

        // Expired without a refresh token, or long expired: dropped at the next save.
        let rt = Some(Arc::new(Zeroizing::new("rt".to_owned())));
        store
            .save(
                &key("dead"),
                &StoredToken::new("d".into(), t - 600, t - 300, None, None),
            )
            .unwrap();
        store
            .save(
                &key("old"),
                &StoredToken::new("o".into(), 0, 300, rt.clone(), None),
            )
            .unwrap();
        store
            .save(
                &key("renewable"),
                &StoredToken::new("r".into(), t - 600, t - 300, rt, None),
            )
            .unwrap();
        store.save(&key("a"), &live).unwrap();
        assert!(store.load(&key("dead")).unwrap().is_none());
        assert!(store.load(&key("old")).unwrap().is_none());
        let renewable = store.load(&key("renewable")).unwrap().unwrap();
        assert_eq!(
            renewable.refresh_token.as_deref().map(|r| r.as_str()),
            Some("rt")
        );
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn a_file_that_is_not_a_cache_is_refused_without_quoting_it() {
        let d = dir("bad");
        fs::create_dir_all(&d).unwrap();
        let path = d.join("cache.json");
        let store = FileTokenStore::new(path.clone());
        for text in [
            "{\"tokens\": {\"k\": \"SECRET\"}}",
            "{\"version\": 2, \"tokens\": {}}",
            "SECRET",
            "{\"version\": 1, \"tokens\": \"SECRET\"}",
        ] {
            keyfile::write_secret(&path, &[text.as_bytes()], true).unwrap();
            let e = store.load(&key("a")).unwrap_err().to_string();
            assert!(e.contains("not a dpop token cache"), "{e}");
            assert!(!e.contains("SECRET"), "{e}");
            // Not replaced by a save either.
            assert!(
                store
                    .save(
                        &key("a"),
                        &StoredToken::new("t".into(), 0, u64::MAX, None, None)
                    )
                    .is_err()
            );
            assert_eq!(fs::read_to_string(&path).unwrap(), text);
        }
        let _ = fs::remove_dir_all(&d);
    }
}
