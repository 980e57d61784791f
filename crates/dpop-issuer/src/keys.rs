//! Signing keys. Private halves are PKCS#8 PEM files (mode 0600) in `DATA_DIR/keys/`,
//! named by key id; public halves and their lifecycle are in the database, so every
//! instance publishes every live key in its JWKS.
//!
//! A key the operator manages (`[keys] signing_key`, `rotate-key --key`: a PEM or JWK
//! file mounted from a secret store, or a key in an HSM, a TPM or a cloud KMS that never
//! leaves it) is held through a reference instead: `DATA_DIR/keys/<kid>.ref` (mode 0600)
//! holds the reference text, and every load opens the key it names, which must have the
//! thumbprint the file is named by. Everything below applies to `.pem` and `.ref` files
//! alike; deleting a `.ref` file deletes only the reference, never the key it names.
//!
//! An instance signs with the newest key it holds whose activation time has come and
//! whose retirement has not; when it holds none that will keep signing (first start, or
//! another instance rotated), it creates one, or, when `[keys] signing_key` is set, takes
//! that key: published (unless another instance already published it) and held by
//! reference. A configured key that a rotation retired is never taken again (the database
//! remembers retired key ids after their records are purged): the instance then refuses
//! to start, or, running, logs an error and issues no tokens until it is given the next
//! key. Rotation publishes a new key at once and
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
//! A referenced key is opened when it is first held and kept open while its reference
//! stays the same; a key whose reference is deleted is not opened at all.
//!
//! A crash between writing a key file under its temporary name and renaming it leaves
//! `<kid>.pem.new` (or `.ref.new`), nothing will use: such files are deleted at start,
//! with a warning naming each. One written in the last minute is left alone, as it may be
//! a key another process (`rotate-key` on a shared data directory) is putting in place.
//!
//! Signing with a key that waits on a device ([`dpop_core::Signer::blocks`]) runs on a
//! thread that may block. A signature that fails fails its token request
//! (`temporarily_unavailable`); another key is never used in its place.

use std::fmt;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use dpop_core::jwt::JwkSet;
use dpop_core::{Algorithm, PrivateKey, Signer, UnixTime};
use zeroize::Zeroizing;

use crate::config::KeyReference;
use crate::error::{ConfigError, IssuerError};
use crate::key_source::{KeySource, OpenedKey};
use crate::store::{KeyRecord, Store, secs};

/// How often a running issuer re-reads its keys and purges expired state.
pub const MAINTENANCE_INTERVAL: Duration = Duration::from_secs(30);

/// The usual delay between publishing a rotated key and signing with it: two
/// maintenance intervals, so every instance has loaded it.
pub const DEFAULT_KEY_ACTIVATION: Duration = Duration::from_secs(60);

/// A key this instance signs with.
pub(crate) struct SigningKey {
    pub(crate) kid: String,
    signer: Arc<dyn Signer>,
    /// The reference it was opened from (`<kid>.ref`); `None` for a key file of ours.
    reference: Option<Zeroizing<String>>,
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

/// Why a token could not be signed: the message names the key (never a PIN) and the
/// cause.
#[derive(Debug)]
pub(crate) struct SignError(pub(crate) String);

impl SigningKey {
    fn new(signer: Arc<dyn Signer>, reference: Option<Zeroizing<String>>) -> Self {
        let kid = signer.public_jwk().thumbprint().as_str().to_owned();
        let header = serde_json::json!({
            "alg": signer.algorithm().name(),
            "typ": "at+jwt",
            "kid": kid,
        });
        Self {
            header,
            kid,
            signer,
            reference,
        }
    }

    fn software(key: PrivateKey) -> Self {
        Self::new(Arc::new(key), None)
    }

    fn opened(key: OpenedKey) -> Self {
        Self::new(key.signer, Some(key.reference))
    }

    /// Signs `claims` as an `at+jwt` compact JWS, on a thread that may block when the
    /// key waits on a device.
    pub(crate) async fn sign(
        self: Arc<Self>,
        claims: serde_json::Value,
    ) -> Result<String, SignError> {
        // `(*self.signer)`: the trait object's own answer, not the `Arc`'s.
        let result = if (*self.signer).blocks() {
            let key = Arc::clone(&self);
            tokio::task::spawn_blocking(move || key.sign_now(&claims))
                .await
                .map_err(|e| SignError(format!("the signing thread failed: {e}")))?
        } else {
            self.sign_now(&claims)
        };
        result.map_err(|e| SignError(e.to_string()))
    }

    fn sign_now(&self, claims: &serde_json::Value) -> Result<String, dpop_core::KeyError> {
        dpop_core::jws::sign_compact(&self.header, claims, &*self.signer)
    }

    fn record(&self, now: UnixTime, active_from: UnixTime) -> KeyRecord {
        let mut jwk = self.signer.public_jwk().to_json_value();
        if let Some(o) = jwk.as_object_mut() {
            o.insert("kid".to_owned(), self.kid.clone().into());
            o.insert("use".to_owned(), "sig".into());
            o.insert("alg".to_owned(), self.signer.algorithm().name().into());
        }
        KeyRecord {
            kid: self.kid.clone(),
            alg: self.signer.algorithm().name().to_owned(),
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

    /// The key held as `kid` through exactly `reference`, already open.
    fn held_by_reference(&self, kid: &str, reference: &str) -> Option<&Arc<SigningKey>> {
        self.held
            .iter()
            .map(|h| &h.key)
            .find(|k| k.kid == kid && k.reference.as_deref().map(String::as_str) == Some(reference))
    }
}

/// The issuer's signing keys (see the module docs).
pub(crate) struct KeyRing {
    dir: PathBuf,
    alg: Algorithm,
    source: KeySource,
    /// `[keys] signing_key`, opened at start: the key taken where one would be made.
    configured: Option<Arc<SigningKey>>,
    /// The configured reference for messages (PIN redacted).
    configured_shown: String,
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

/// The two kinds of key file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// `<kid>.pem`: a software key this issuer made.
    Pem,
    /// `<kid>.ref`: a reference to a key the operator manages.
    Ref,
}

impl Kind {
    const fn extension(self) -> &'static str {
        match self {
            Self::Pem => "pem",
            Self::Ref => "ref",
        }
    }

    fn path(self, dir: &Path, kid: &str) -> PathBuf {
        dir.join(format!("{kid}.{}", self.extension()))
    }
}

/// A key file in the key directory.
enum LocalKey {
    /// A software key, its kid its thumbprint.
    Pem(PrivateKey),
    /// A reference, its kid the file name; opened only when the key is held.
    Ref {
        kid: String,
        reference: Zeroizing<String>,
    },
}

impl LocalKey {
    fn kid(&self) -> &str {
        match self {
            Self::Pem(key) => key.thumbprint().as_str(),
            Self::Ref { kid, .. } => kid,
        }
    }

    fn kind(&self) -> Kind {
        match self {
            Self::Pem(_) => Kind::Pem,
            Self::Ref { .. } => Kind::Ref,
        }
    }
}

/// Largest reference file read (a device URI is far shorter).
const MAX_REFERENCE: u64 = 8 * 1024;

/// Whether `name` can be a key id (an RFC 7638 SHA-256 thumbprint, base64url).
fn is_kid(name: &str) -> bool {
    name.len() == 43
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Reads the key files in `dir`. A key file others can read is refused.
fn read_local_keys(dir: &Path) -> Result<Vec<LocalKey>, IssuerError> {
    use std::io::Read as _;
    let mut out = Vec::new();
    let entries = std::fs::read_dir(dir).map_err(|e| keys_err("read", dir, &e))?;
    for entry in entries {
        let entry = entry.map_err(|e| keys_err("read", dir, &e))?;
        let path = entry.path();
        let kind = match path.extension().and_then(|e| e.to_str()) {
            Some("pem") => Kind::Pem,
            Some("ref") => Kind::Ref,
            _ => continue,
        };
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
        match kind {
            Kind::Pem => {
                let text = Zeroizing::new(
                    std::fs::read_to_string(&path).map_err(|e| keys_err("read", &path, &e))?,
                );
                let key = PrivateKey::from_pkcs8_pem(&text, None)
                    .map_err(|e| IssuerError::Keys(format!("{}: {e}", path.display())))?;
                out.push(LocalKey::Pem(key));
            }
            Kind::Ref => {
                let kid = path
                    .file_stem()
                    .and_then(|s| s.to_str())
                    .filter(|s| is_kid(s))
                    .ok_or_else(|| {
                        IssuerError::Keys(format!(
                            "{}: a key reference file is named by its key id",
                            path.display()
                        ))
                    })?
                    .to_owned();
                let mut bytes = Zeroizing::new(Vec::new());
                std::fs::File::open(&path)
                    .and_then(|f| f.take(MAX_REFERENCE + 1).read_to_end(&mut bytes))
                    .map_err(|e| keys_err("read", &path, &e))?;
                let text = std::str::from_utf8(&bytes)
                    .ok()
                    .filter(|_| bytes.len() as u64 <= MAX_REFERENCE)
                    .ok_or_else(|| {
                        IssuerError::Keys(format!("{}: not a key reference", path.display()))
                    })?;
                out.push(LocalKey::Ref {
                    kid,
                    reference: Zeroizing::new(text.trim_end_matches(['\n', '\r']).to_owned()),
                });
            }
        }
    }
    Ok(out)
}

/// The suffix of a key file written but not yet renamed into place.
const TEMPORARY_SUFFIX: &str = ".new";

/// How old a temporary key file must be to count as left over by a crash: writing,
/// recording and renaming take well under this.
const TEMPORARY_GRACE: Duration = Duration::from_secs(60);

/// Deletes the temporary key files in `dir` that a crash left behind (module docs).
fn delete_leftover_temporaries(dir: &Path) -> Result<(), IssuerError> {
    let entries = std::fs::read_dir(dir).map_err(|e| keys_err("read", dir, &e))?;
    for entry in entries {
        let entry = entry.map_err(|e| keys_err("read", dir, &e))?;
        let path = entry.path();
        if !path.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
            [Kind::Pem, Kind::Ref]
                .iter()
                .any(|k| n.ends_with(&format!(".{}{TEMPORARY_SUFFIX}", k.extension())))
        }) {
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
                "deleted a key file left under its temporary name by an interrupted key creation"
            ),
            Err(e) => tracing::warn!(
                target: "dpop::issuer",
                path = %path.display(),
                error = %e,
                "cannot delete a key file left under its temporary name by an interrupted key creation; it is not used"
            ),
        }
    }
    Ok(())
}

/// A key file written under a temporary name (which the loader ignores), to be renamed
/// into place once the key's record is in the database.
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

/// Writes `contents` to a new key file for `kid` with mode 0600 under a temporary name,
/// refusing to overwrite.
fn write_key_file(
    dir: &Path,
    kind: Kind,
    kid: &str,
    contents: &[u8],
) -> Result<PendingKeyFile, IssuerError> {
    let path = kind.path(dir, kid);
    let temporary = dir.join(format!("{kid}.{}{TEMPORARY_SUFFIX}", kind.extension()));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options
        .open(&temporary)
        .map_err(|e| keys_err("create", &temporary, &e))?;
    if let Err(e) = file.write_all(contents).and_then(|()| file.sync_all()) {
        let _ = std::fs::remove_file(&temporary);
        return Err(keys_err("write", &temporary, &e));
    }
    Ok(PendingKeyFile { temporary, path })
}

/// A new key and what its file holds.
enum NewKey<'a> {
    /// A software key: its PKCS#8 PEM.
    Software(&'a PrivateKey),
    /// A referenced key: the reference.
    Reference(&'a str),
}

/// Writes the file of a new key under a temporary name.
fn write_new_key(dir: &Path, kid: &str, new: &NewKey<'_>) -> Result<PendingKeyFile, IssuerError> {
    match new {
        NewKey::Software(key) => {
            let pem = key
                .to_pkcs8_pem()
                .map_err(|e| IssuerError::Keys(format!("cannot encode the key: {e}")))?;
            write_key_file(dir, Kind::Pem, kid, pem.as_bytes())
        }
        NewKey::Reference(text) => {
            let mut line = Zeroizing::new(String::with_capacity(text.len() + 1));
            line.push_str(text);
            line.push('\n');
            write_key_file(dir, Kind::Ref, kid, line.as_bytes())
        }
    }
}

/// Publishes `record` and then puts the key's file in place: a key file never exists
/// without its record. A record already there (another instance published the same
/// referenced key) is kept as it is.
async fn publish_and_install(
    store: &Store,
    dir: &Path,
    new: &NewKey<'_>,
    record: &KeyRecord,
) -> Result<(), IssuerError> {
    let pending = write_new_key(dir, &record.kid, new)?;
    if let Err(e) = store.insert_key(record).await {
        pending.discard();
        return Err(e.into());
    }
    pending.install()
}

/// Deletes the key file of a key that must never sign again.
fn delete_unusable_key(dir: &Path, kind: Kind, kid: &str, why: &str, was_signing_here: bool) {
    let path = kind.path(dir, kid);
    let deleted = std::fs::remove_file(&path);
    if kind == Kind::Ref && deleted.is_ok() {
        // The key itself is the operator's: only they can destroy it.
        tracing::info!(
            target: "dpop::issuer",
            kid,
            "deleted the reference to a key that signs no more; the key itself is left where it is \
             (a device, a key file): destroy it there once the tokens it signed have expired \
             (it leaves the JWKS then)"
        );
    }
    if was_signing_here {
        // The usual end of a rotation on a running instance.
        match deleted {
            Ok(()) => {
                tracing::info!(target: "dpop::issuer", kid, "deleted the key file of a retired signing key")
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
            "a local signing key must never sign again; its key file was deleted"
        ),
        Err(e) => tracing::error!(
            target: "dpop::issuer",
            kid,
            reason = why,
            path = %path.display(),
            error = %e,
            "a local signing key must never sign again, and its key file cannot be deleted; it is not used"
        ),
    }
}

/// What a rotation makes the next key.
pub(crate) enum NextKey {
    /// A new software key of this algorithm.
    Generate(Algorithm),
    /// A key the operator manages, opened.
    Reference(OpenedKey),
}

impl KeyRing {
    /// Loads the keys, creating a signing key when this instance holds none.
    /// `configured`: `[keys] signing_key`, already opened.
    pub(crate) async fn open(
        store: &Store,
        data_dir: &Path,
        source: KeySource,
        alg: Algorithm,
        configured: Option<OpenedKey>,
        now: UnixTime,
    ) -> Result<Self, IssuerError> {
        let dir = keys_dir(data_dir);
        ensure_dir(&dir)?;
        delete_leftover_temporaries(&dir)?;
        let configured_shown = configured
            .as_ref()
            .map(|c| c.shown.clone())
            .unwrap_or_default();
        let mut ring = Self {
            dir,
            alg,
            source,
            configured: configured.map(|c| Arc::new(SigningKey::opened(c))),
            configured_shown,
            state: RwLock::new(Arc::new(KeyState {
                held: Vec::new(),
                jwks_json: String::new(),
                jwks: JwkSet::from_keys(Vec::new()),
                loaded_at: 0,
            })),
            loading: tokio::sync::Mutex::new(()),
        };
        let state = ring.build(store, now, None).await?;
        if let (Some(configured), Some(signing)) = (&ring.configured, state.signing(now))
            && configured.kid != signing.kid
        {
            tracing::warn!(
                target: "dpop::issuer",
                configured = %ring.configured_shown,
                configured_kid = %configured.kid,
                signing_kid = %signing.kid,
                "keys.signing_key is not the key this instance signs with: it is taken only \
                 when a new key is needed; `dpop issuer rotate-key --key REF` switches keys"
            );
        }
        ring.state = RwLock::new(Arc::new(state));
        Ok(ring)
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
        let state = self.build(store, now, Some(&previous)).await?;
        match self.state.write() {
            Ok(mut s) => *s = Arc::new(state),
            Err(poisoned) => *poisoned.into_inner() = Arc::new(state),
        }
        Ok(())
    }

    /// The key of a `.ref` file, held now: the one already open when its reference has
    /// not changed, else opened (off the executor) and checked to be the key the file is
    /// named by.
    async fn open_reference(
        &self,
        kid: &str,
        reference: &str,
        previous: Option<&KeyState>,
    ) -> Result<Arc<SigningKey>, IssuerError> {
        if let Some(key) = previous.and_then(|p| p.held_by_reference(kid, reference)) {
            return Ok(Arc::clone(key));
        }
        if let Some(c) = self.configured.as_ref().filter(|c| {
            c.kid == kid && c.reference.as_deref().map(String::as_str) == Some(reference)
        }) {
            return Ok(Arc::clone(c));
        }
        let path = Kind::Ref.path(&self.dir, kid);
        let parsed = KeyReference::parse(reference, &self.dir)
            .map_err(|e| IssuerError::Keys(format!("{}: {e}", path.display())))?;
        let shown = parsed.to_string();
        let opened = self
            .source
            .open_blocking(parsed)
            .await
            .map_err(|e| crate::key_source::context(&path.display().to_string(), e))?;
        if opened.kid() != kid {
            return Err(IssuerError::Keys(format!(
                "{} names {shown}, whose key id is {}, not {kid}: the key behind the reference \
                 changed; refusing it (restore that key, or delete the file and rotate)",
                path.display(),
                opened.kid()
            )));
        }
        Ok(Arc::new(SigningKey::opened(opened)))
    }

    /// Reads the keys (see the module docs). `previous`: what this instance held, to
    /// tell the routine end of its own key from a key file that should not be there, and
    /// to keep referenced keys open; `None` at start.
    async fn build(
        &self,
        store: &Store,
        now: UnixTime,
        previous: Option<&KeyState>,
    ) -> Result<KeyState, IssuerError> {
        let dir = &self.dir;
        // The directory before the table: a file seen here whose key is live has its
        // record in the table read next (records are written before files).
        let local = read_local_keys(dir)?;
        let mut records = store.published_keys(now).await?;
        let t = secs(now);
        let mut held = Vec::new();
        for key in local {
            let kid = key.kid().to_owned();
            let kind = key.kind();
            let was_signing_here = previous.is_some_and(|p| p.holds(&kid));
            match records.iter().find(|r| r.kid == kid) {
                Some(r) if r.retired_at.is_some_and(|at| at <= t) => {
                    delete_unusable_key(dir, kind, &kid, "retired", was_signing_here);
                }
                Some(r) => {
                    let signing = match key {
                        LocalKey::Pem(k) => Arc::new(SigningKey::software(k)),
                        LocalKey::Ref { kid, reference } => {
                            self.open_reference(&kid, &reference, previous).await?
                        }
                    };
                    held.push(Held {
                        key: signing,
                        active_from: r.active_from.unwrap_or(r.created_at),
                        retired_at: r.retired_at,
                    });
                }
                // Its record was purged after its retirement, its publication is over,
                // or it was never recorded here: publishing it again would undo a
                // rotation, maybe away from a compromised key.
                None => delete_unusable_key(
                    dir,
                    kind,
                    &kid,
                    "not among the published keys in the database (retired and purged, or never recorded)",
                    false,
                ),
            }
        }
        let mut published = false;
        let mut took_configured = false;
        // Nothing here keeps signing past its retirement: make a key (or take the
        // configured one), active when the last one held retires (published meanwhile),
        // or at once.
        if !held.iter().any(|h| h.retired_at.is_none()) {
            let from = held
                .iter()
                .filter_map(|h| h.retired_at)
                .max()
                .map_or(now, |r| UnixTime::from_secs(u64::try_from(r).unwrap_or(0)));
            match &self.configured {
                None => {
                    let key =
                        Arc::new(PrivateKey::generate(self.alg).map_err(|e| {
                            IssuerError::Keys(format!("cannot generate a key: {e}"))
                        })?);
                    let signing = SigningKey::new(Arc::clone(&key) as Arc<dyn Signer>, None);
                    let record = signing.record(now, from);
                    publish_and_install(store, dir, &NewKey::Software(&key), &record).await?;
                    published = true;
                    tracing::info!(target: "dpop::issuer", kid = %signing.kid, alg = self.alg.name(), "created a signing key");
                    held.push(Held {
                        key: Arc::new(signing),
                        active_from: secs(from),
                        retired_at: None,
                    });
                }
                Some(configured) => {
                    took_configured = self
                        .take_configured(store, configured, &held, now, from, previous.is_none())
                        .await?;
                    published = took_configured;
                }
            }
        }
        if published {
            records = store.published_keys(now).await?;
            // Its signing period as recorded: another instance may have published it.
            if let Some(c) = self.configured.as_ref().filter(|_| took_configured) {
                let Some(r) = records.iter().find(|r| r.kid == c.kid) else {
                    return Err(IssuerError::Keys(format!(
                        "the configured signing key {} ({}) left the key table as it was published",
                        self.configured_shown, c.kid
                    )));
                };
                held.push(Held {
                    key: Arc::clone(c),
                    active_from: r.active_from.unwrap_or(r.created_at),
                    retired_at: r.retired_at,
                });
            }
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

    /// Takes `[keys] signing_key` where a key would be made: publishes it (or finds it
    /// published by another instance) and records its reference here. Returns whether
    /// it did. A configured key that a rotation retired is refused: at start (`at_start`)
    /// as a configuration error, later with an error in the log.
    async fn take_configured(
        &self,
        store: &Store,
        configured: &SigningKey,
        held: &[Held],
        now: UnixTime,
        from: UnixTime,
        at_start: bool,
    ) -> Result<bool, IssuerError> {
        let kid = configured.kid.as_str();
        if held.iter().any(|h| h.key.kid == kid) {
            // Held, and retiring: the next key is one this instance has no reference to.
            tracing::warn!(
                target: "dpop::issuer",
                kid,
                key = %self.configured_shown,
                "keys.signing_key retires (a rotation made another key the next one), and this                  instance holds no reference to the next key: set [keys] signing_key to the key                  given to `dpop issuer rotate-key --key` and restart before the retirement, or this                  instance issues no tokens from then on"
            );
            return Ok(false);
        }
        let known = store.key_retired(kid, now).await?;
        if known == Some(true) {
            let message = format!(
                "keys.signing_key {} is key {kid}, which a rotation retired, and a retired key                  never signs again: set signing_key to the key given to `dpop issuer rotate-key --key`",
                self.configured_shown
            );
            if at_start {
                return Err(IssuerError::Config(ConfigError::new(message)));
            }
            tracing::error!(target: "dpop::issuer", kid, "{message}; no token is issued until then");
            return Ok(false);
        }
        let Some(reference) = configured.reference.as_deref() else {
            return Err(IssuerError::Keys(
                "the configured signing key has no reference".to_owned(),
            ));
        };
        publish_and_install(
            store,
            &self.dir,
            &NewKey::Reference(reference),
            &configured.record(now, from),
        )
        .await?;
        if known.is_none() {
            tracing::info!(target: "dpop::issuer", kid, key = %self.configured_shown, "published the configured signing key");
        } else {
            tracing::info!(target: "dpop::issuer", kid, key = %self.configured_shown, "took the configured signing key, which another instance published");
        }
        Ok(true)
    }

    /// Makes `next` the next signing key: published at once and signing from
    /// `now + activate_in`, when every other key retires; retired public keys stay
    /// published for `publish_for` after that (the longest access token lifetime plus
    /// leeway). A referenced key that was ever published is refused: a retired key never
    /// signs again, and a current one is no rotation. Returns the new key id.
    pub(crate) async fn rotate(
        store: &Store,
        data_dir: &Path,
        next: NextKey,
        now: UnixTime,
        activate_in: Duration,
        publish_for: Duration,
    ) -> Result<String, IssuerError> {
        let dir = keys_dir(data_dir);
        ensure_dir(&dir)?;
        let from = now.saturating_add(activate_in);
        let kid = match next {
            NextKey::Generate(alg) => {
                let key = Arc::new(
                    PrivateKey::generate(alg)
                        .map_err(|e| IssuerError::Keys(format!("cannot generate a key: {e}")))?,
                );
                let signing = SigningKey::new(Arc::clone(&key) as Arc<dyn Signer>, None);
                publish_and_install(
                    store,
                    &dir,
                    &NewKey::Software(&key),
                    &signing.record(now, from),
                )
                .await?;
                signing.kid.clone()
            }
            NextKey::Reference(opened) => {
                let shown = opened.shown.clone();
                let signing = SigningKey::opened(opened);
                let kid = signing.kid.clone();
                match store.key_retired(&kid, now).await? {
                    None => {}
                    Some(true) => {
                        return Err(IssuerError::Config(ConfigError::new(format!(
                            "key {shown} ({kid}) was retired by an earlier rotation, and a retired key never signs again: give a new key"
                        ))));
                    }
                    Some(false) => {
                        return Err(IssuerError::Config(ConfigError::new(format!(
                            "key {shown} ({kid}) is already published: give a new key"
                        ))));
                    }
                }
                let reference = signing.reference.as_deref().map_or("", String::as_str);
                publish_and_install(
                    store,
                    &dir,
                    &NewKey::Reference(reference),
                    &signing.record(now, from),
                )
                .await?;
                kid
            }
        };
        store
            .retire_keys_except(&kid, from, from.saturating_add(publish_for))
            .await?;
        if activate_in.is_zero() {
            // The retired keys' files held here are needed no more.
            for old in read_local_keys(&dir)? {
                if old.kid() != kid {
                    let path = old.kind().path(&dir, old.kid());
                    std::fs::remove_file(&path).map_err(|e| keys_err("delete", &path, &e))?;
                    if old.kind() == Kind::Ref {
                        tracing::info!(
                            target: "dpop::issuer",
                            kid = old.kid(),
                            "deleted the reference to a retired key; the key itself is left where it is: \
                             destroy it there once the tokens it signed have expired"
                        );
                    }
                }
            }
        }
        Ok(kid)
    }

    /// Whether `kid` is a published key this instance has not loaded yet.
    pub(crate) fn knows(&self, kid: &str) -> bool {
        self.current().jwks.has_kid(kid)
    }
}
