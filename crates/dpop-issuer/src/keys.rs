//! Signing keys. Private halves are PKCS#8 PEM files (mode 0600) in `DATA_DIR/keys/`,
//! named by key id; public halves and their lifecycle are in the database, so every
//! instance publishes every live key in its JWKS.
//!
//! An instance signs with the newest key it holds whose activation time has come and
//! whose retirement has not; when it holds none that will keep signing (first start, or
//! another instance rotated), it creates one. Rotation publishes a new key at once and
//! activates it after a delay (60 s by default), so every instance and resource server
//! knows it before tokens signed with it arrive; at activation every other key retires:
//! it signs nothing more, and its public half stays published until the tokens it signed
//! have expired, then leaves the JWKS and its file is deleted. An instance that meets a
//! token signed by a key it does not know yet re-reads the key table at once.
//!
//! A key signs only while its record is in the database, published and not retired. The
//! record is written before the private key file appears (the file is written under a
//! temporary name and renamed into place afterwards), and the key directory is read
//! before the key table, so a key file whose record is retired, past its publication,
//! purged or absent is never a key on its way in: it belongs to a key that must never
//! sign again (an instance that was stopped through a rotation, a file restored from a
//! backup). Such a file is deleted when the keys are loaded, with an error in the log
//! naming its `kid`, and the instance signs with a current key or makes a new one. Keys
//! are re-read every maintenance interval and, on the token path, whenever the loaded
//! set is older than that, so an instance learns of a retirement within that interval.
//!
//! A crash between writing a key file under its temporary name and renaming it leaves
//! `<kid>.pem.new`, a private key nothing will use: such files are deleted at start, with
//! a warning naming each. One written in the last minute is left alone, as it may be a
//! key another process (`rotate-key` on a shared data directory) is putting in place.

use std::fmt;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use dpop_core::jwt::JwkSet;
use dpop_core::{Algorithm, PrivateKey, UnixTime};

use crate::error::IssuerError;
use crate::store::{KeyRecord, Store, secs};

/// How often a running issuer re-reads its keys and purges expired state.
pub const MAINTENANCE_INTERVAL: Duration = Duration::from_secs(30);

/// The usual delay between publishing a rotated key and signing with it: two
/// maintenance intervals, so every instance has loaded it.
pub const DEFAULT_KEY_ACTIVATION: Duration = Duration::from_secs(60);

/// A key this instance signs with.
pub(crate) struct SigningKey {
    pub(crate) kid: String,
    key: PrivateKey,
    /// The JWS header, built once.
    header: serde_json::Value,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    fn new(key: PrivateKey) -> Self {
        let kid = key.thumbprint().as_str().to_owned();
        let header = serde_json::json!({
            "alg": key.algorithm().name(),
            "typ": "at+jwt",
            "kid": kid,
        });
        Self { header, kid, key }
    }

    /// Signs `claims` as an `at+jwt` compact JWS.
    pub(crate) fn sign(&self, claims: &serde_json::Value) -> Result<String, IssuerError> {
        dpop_core::jws::sign_compact(&self.header, claims, &self.key)
            .map_err(|e| IssuerError::Keys(format!("signing failed: {e}")))
    }

    fn record(&self, now: UnixTime, active_from: UnixTime) -> KeyRecord {
        let mut jwk = self.key.public_jwk().to_json_value();
        if let Some(o) = jwk.as_object_mut() {
            o.insert("kid".to_owned(), self.kid.clone().into());
            o.insert("use".to_owned(), "sig".into());
            o.insert("alg".to_owned(), self.key.algorithm().name().into());
        }
        KeyRecord {
            kid: self.kid.clone(),
            alg: self.key.algorithm().name().to_owned(),
            public_jwk: jwk.to_string(),
            created_at: secs(now),
            active_from: Some(secs(active_from)),
            retired_at: None,
            publish_until: None,
        }
    }
}

/// The JWK set document of the published keys, as `/jwks` serves it.
pub(crate) fn jwks_json(records: &[KeyRecord]) -> String {
    let keys: Vec<serde_json::Value> = records
        .iter()
        .filter_map(|r| serde_json::from_str(&r.public_jwk).ok())
        .collect();
    serde_json::json!({ "keys": keys }).to_string()
}

pub(crate) fn b64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// A key this instance holds, with its signing period (from its published record).
#[derive(Debug)]
struct Held {
    key: Arc<SigningKey>,
    active_from: i64,
    retired_at: Option<i64>,
}

/// The published key set and the keys this instance can sign with.
#[derive(Debug)]
pub(crate) struct KeyState {
    /// Newest first.
    held: Vec<Held>,
    /// What `/jwks` serves.
    pub(crate) jwks_json: String,
    /// The same keys, for verifying our own tokens.
    pub(crate) jwks: JwkSet,
    /// When the key table was read.
    loaded_at: i64,
}

impl KeyState {
    /// The key to sign with at `now`: the newest active, unretired key held here; before
    /// any is active, the published unretired one that activates first. Never a key
    /// past its retirement: loading makes sure a successor exists by then.
    pub(crate) fn signing(&self, now: UnixTime) -> Option<&Arc<SigningKey>> {
        let now = secs(now);
        let unretired = |h: &&Held| h.retired_at.is_none_or(|r| r > now);
        self.held
            .iter()
            .filter(unretired)
            .find(|h| h.active_from <= now)
            .or_else(|| {
                self.held
                    .iter()
                    .filter(unretired)
                    .min_by_key(|h| h.active_from)
            })
            .map(|h| &h.key)
    }

    fn holds(&self, kid: &str) -> bool {
        self.held.iter().any(|h| h.key.kid == kid)
    }
}

/// The issuer's signing keys (see the module docs).
pub(crate) struct KeyRing {
    dir: PathBuf,
    alg: Algorithm,
    state: RwLock<Arc<KeyState>>,
    /// One load at a time: two could each decide that a new key is needed.
    loading: tokio::sync::Mutex<()>,
}

impl fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyRing")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

fn keys_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("keys")
}

fn keys_err(what: &str, path: &Path, e: &std::io::Error) -> IssuerError {
    IssuerError::Keys(format!("cannot {what} {}: {e}", path.display()))
}

/// Creates `dir` (mode 0700) if needed; tightens it if others can access it.
fn ensure_dir(dir: &Path) -> Result<(), IssuerError> {
    crate::files::private_dir(dir).map_err(IssuerError::Keys)
}

/// Reads the private keys in `dir`, by key id. A key file others can read is refused.
fn read_local_keys(dir: &Path) -> Result<Vec<PrivateKey>, IssuerError> {
    let mut out = Vec::new();
    let entries = std::fs::read_dir(dir).map_err(|e| keys_err("read", dir, &e))?;
    for entry in entries {
        let entry = entry.map_err(|e| keys_err("read", dir, &e))?;
        let path = entry.path();
        if path.extension().and_then(|e| e.to_str()) != Some("pem") {
            continue;
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = entry
                .metadata()
                .map_err(|e| keys_err("read", &path, &e))?
                .permissions()
                .mode();
            if mode & 0o077 != 0 {
                return Err(IssuerError::Keys(format!(
                    "{} is readable by other users (mode {:o}); run: chmod 600 {}",
                    path.display(),
                    mode & 0o777,
                    path.display()
                )));
            }
        }
        let text = zeroize::Zeroizing::new(
            std::fs::read_to_string(&path).map_err(|e| keys_err("read", &path, &e))?,
        );
        let key = PrivateKey::from_pkcs8_pem(&text, None)
            .map_err(|e| IssuerError::Keys(format!("{}: {e}", path.display())))?;
        out.push(key);
    }
    Ok(out)
}

/// The suffix of a key file written but not yet renamed into place.
const TEMPORARY_SUFFIX: &str = ".pem.new";

/// How old a temporary key file must be to count as left over by a crash: writing,
/// recording and renaming take well under this.
const TEMPORARY_GRACE: Duration = Duration::from_secs(60);

/// Deletes the temporary key files in `dir` that a crash left behind (module docs).
fn delete_leftover_temporaries(dir: &Path) -> Result<(), IssuerError> {
    let entries = std::fs::read_dir(dir).map_err(|e| keys_err("read", dir, &e))?;
    for entry in entries {
        let entry = entry.map_err(|e| keys_err("read", dir, &e))?;
        let path = entry.path();
        if !path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.ends_with(TEMPORARY_SUFFIX))
        {
            continue;
        }
        let age = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok());
        if age.is_none_or(|a| a < TEMPORARY_GRACE) {
            tracing::info!(target: "dpop::issuer", path = %path.display(), "a key file is being put in place; left alone");
            continue;
        }
        match std::fs::remove_file(&path) {
            Ok(()) => tracing::warn!(
                target: "dpop::issuer",
                path = %path.display(),
                "deleted a private key file left under its temporary name by an interrupted key creation"
            ),
            Err(e) => tracing::warn!(
                target: "dpop::issuer",
                path = %path.display(),
                error = %e,
                "cannot delete a private key file left under its temporary name by an interrupted key creation; it is not used"
            ),
        }
    }
    Ok(())
}

/// A private key file written under a temporary name (which the loader ignores), to be
/// renamed into place once the key's record is in the database.
struct PendingKeyFile {
    temporary: PathBuf,
    path: PathBuf,
}

impl PendingKeyFile {
    /// Puts the file in place, where the loader finds it.
    fn install(self) -> Result<(), IssuerError> {
        std::fs::rename(&self.temporary, &self.path)
            .map_err(|e| keys_err("rename into place", &self.path, &e))
    }

    /// Deletes the file (its key was not recorded).
    fn discard(self) {
        let _ = std::fs::remove_file(&self.temporary);
    }
}

/// Writes a new private key file with mode 0600 under a temporary name, refusing to
/// overwrite.
fn write_key(dir: &Path, key: &SigningKey) -> Result<PendingKeyFile, IssuerError> {
    let path = dir.join(format!("{}.pem", key.kid));
    let temporary = dir.join(format!("{}{TEMPORARY_SUFFIX}", key.kid));
    let pem = zeroize::Zeroizing::new(
        key.key
            .to_pkcs8_pem()
            .map_err(|e| IssuerError::Keys(format!("cannot encode the key: {e}")))?,
    );
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options
        .open(&temporary)
        .map_err(|e| keys_err("create", &temporary, &e))?;
    if let Err(e) = file
        .write_all(pem.as_bytes())
        .and_then(|()| file.sync_all())
    {
        let _ = std::fs::remove_file(&temporary);
        return Err(keys_err("write", &temporary, &e));
    }
    Ok(PendingKeyFile { temporary, path })
}

/// Publishes `key` (its record) and then puts its private key file in place: a key file
/// never exists without its record.
async fn publish_and_install(
    store: &Store,
    dir: &Path,
    key: &SigningKey,
    record: &KeyRecord,
) -> Result<(), IssuerError> {
    let pending = write_key(dir, key)?;
    if let Err(e) = store.insert_key(record).await {
        pending.discard();
        return Err(e.into());
    }
    pending.install()
}

/// Deletes the private key file of a key that must never sign again.
fn delete_unusable_key(dir: &Path, kid: &str, why: &str, was_signing_here: bool) {
    let path = dir.join(format!("{kid}.pem"));
    let deleted = std::fs::remove_file(&path);
    if was_signing_here {
        // The usual end of a rotation on a running instance.
        match deleted {
            Ok(()) => {
                tracing::info!(target: "dpop::issuer", kid, "deleted the private key of a retired signing key")
            }
            Err(e) => {
                tracing::warn!(target: "dpop::issuer", kid, path = %path.display(), error = %e, "cannot delete a retired key file")
            }
        }
        return;
    }
    match deleted {
        Ok(()) => tracing::error!(
            target: "dpop::issuer",
            kid,
            reason = why,
            "a local signing key must never sign again; its private key file was deleted"
        ),
        Err(e) => tracing::error!(
            target: "dpop::issuer",
            kid,
            reason = why,
            path = %path.display(),
            error = %e,
            "a local signing key must never sign again, and its private key file cannot be deleted; it is not used"
        ),
    }
}

impl KeyRing {
    /// Loads the keys, creating a signing key when this instance holds none.
    pub(crate) async fn open(
        store: &Store,
        data_dir: &Path,
        alg: Algorithm,
        now: UnixTime,
    ) -> Result<Self, IssuerError> {
        let dir = keys_dir(data_dir);
        ensure_dir(&dir)?;
        delete_leftover_temporaries(&dir)?;
        let state = Self::build(store, &dir, alg, now, None).await?;
        Ok(Self {
            dir,
            alg,
            state: RwLock::new(Arc::new(state)),
            loading: tokio::sync::Mutex::new(()),
        })
    }

    /// The current keys.
    pub(crate) fn current(&self) -> Arc<KeyState> {
        match self.state.read() {
            Ok(s) => Arc::clone(&s),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    /// Re-reads the key table and the key directory (after a rotation elsewhere).
    pub(crate) async fn reload(&self, store: &Store, now: UnixTime) -> Result<(), IssuerError> {
        let _loading = self.loading.lock().await;
        self.load(store, now).await
    }

    /// [`KeyRing::reload`] when the keys were read `max_age` or longer before `now`: a
    /// key retired since must not go on signing for long.
    pub(crate) async fn reload_if_older(
        &self,
        store: &Store,
        now: UnixTime,
        max_age: Duration,
    ) -> Result<(), IssuerError> {
        let max_age = i64::try_from(max_age.as_secs()).unwrap_or(i64::MAX);
        let fresh = |ring: &Self| secs(now).saturating_sub(ring.current().loaded_at) < max_age;
        if fresh(self) {
            return Ok(());
        }
        let _loading = self.loading.lock().await;
        // Another request may have reloaded while this one waited.
        if fresh(self) {
            return Ok(());
        }
        self.load(store, now).await
    }

    async fn load(&self, store: &Store, now: UnixTime) -> Result<(), IssuerError> {
        let previous = self.current();
        let state = Self::build(store, &self.dir, self.alg, now, Some(&previous)).await?;
        match self.state.write() {
            Ok(mut s) => *s = Arc::new(state),
            Err(poisoned) => *poisoned.into_inner() = Arc::new(state),
        }
        Ok(())
    }

    /// Reads the keys (see the module docs). `previous`: what this instance held, to
    /// tell the routine end of its own key from a key file that should not be there.
    async fn build(
        store: &Store,
        dir: &Path,
        alg: Algorithm,
        now: UnixTime,
        previous: Option<&KeyState>,
    ) -> Result<KeyState, IssuerError> {
        // The directory before the table: a file seen here whose key is live has its
        // record in the table read next (records are written before files).
        let local = read_local_keys(dir)?;
        let mut records = store.published_keys(now).await?;
        let t = secs(now);
        let mut held = Vec::new();
        for key in local {
            let kid = key.thumbprint().as_str().to_owned();
            let was_signing_here = previous.is_some_and(|p| p.holds(&kid));
            match records.iter().find(|r| r.kid == kid) {
                Some(r) if r.retired_at.is_some_and(|at| at <= t) => {
                    delete_unusable_key(dir, &kid, "retired", was_signing_here);
                }
                Some(r) => held.push(Held {
                    key: Arc::new(SigningKey::new(key)),
                    active_from: r.active_from.unwrap_or(r.created_at),
                    retired_at: r.retired_at,
                }),
                // Its record was purged after its retirement, its publication is over,
                // or it was never recorded here: publishing it again would undo a
                // rotation, maybe away from a compromised key.
                None => delete_unusable_key(
                    dir,
                    &kid,
                    "not among the published keys in the database (retired and purged, or never recorded)",
                    false,
                ),
            }
        }
        let mut published = false;
        // Nothing here keeps signing past its retirement: make a key, active when the
        // last one held retires (published meanwhile), or at once.
        if !held.iter().any(|h| h.retired_at.is_none()) {
            let from = held
                .iter()
                .filter_map(|h| h.retired_at)
                .max()
                .map_or(now, |r| UnixTime::from_secs(u64::try_from(r).unwrap_or(0)));
            let key = SigningKey::new(
                PrivateKey::generate(alg)
                    .map_err(|e| IssuerError::Keys(format!("cannot generate a key: {e}")))?,
            );
            publish_and_install(store, dir, &key, &key.record(now, from)).await?;
            published = true;
            tracing::info!(target: "dpop::issuer", kid = %key.kid, alg = alg.name(), "created a signing key");
            held.push(Held {
                key: Arc::new(key),
                active_from: secs(from),
                retired_at: None,
            });
        }
        if published {
            records = store.published_keys(now).await?;
        }
        held.sort_by_key(|h| std::cmp::Reverse(h.active_from));
        let jwks_json = jwks_json(&records);
        let jwks = JwkSet::from_json(&jwks_json)
            .map_err(|e| IssuerError::Keys(format!("the published key set is unusable: {e}")))?;
        Ok(KeyState {
            held,
            jwks_json,
            jwks,
            loaded_at: t,
        })
    }

    /// Creates a new signing key, published at once and signing from `now + activate_in`,
    /// when every other key retires; retired public keys stay published for `publish_for`
    /// after that (the longest access token lifetime plus leeway). Returns the new key id.
    pub(crate) async fn rotate(
        store: &Store,
        data_dir: &Path,
        alg: Algorithm,
        now: UnixTime,
        activate_in: Duration,
        publish_for: Duration,
    ) -> Result<String, IssuerError> {
        let dir = keys_dir(data_dir);
        ensure_dir(&dir)?;
        let key = SigningKey::new(
            PrivateKey::generate(alg)
                .map_err(|e| IssuerError::Keys(format!("cannot generate a key: {e}")))?,
        );
        let from = now.saturating_add(activate_in);
        publish_and_install(store, &dir, &key, &key.record(now, from)).await?;
        store
            .retire_keys_except(&key.kid, from, from.saturating_add(publish_for))
            .await?;
        if activate_in.is_zero() {
            // The retired keys' private halves held here are needed no more.
            for old in read_local_keys(&dir)? {
                let kid = old.thumbprint().as_str();
                if kid != key.kid {
                    let path = dir.join(format!("{kid}.pem"));
                    std::fs::remove_file(&path).map_err(|e| keys_err("delete", &path, &e))?;
                }
            }
        }
        Ok(key.kid.clone())
    }

    /// Whether `kid` is a published key this instance has not loaded yet.
    pub(crate) fn knows(&self, kid: &str) -> bool {
        self.current().jwks.has_kid(kid)
    }
}
