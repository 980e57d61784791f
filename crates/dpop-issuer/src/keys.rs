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

use std::fmt;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use dpop_core::jwt::JwkSet;
use dpop_core::{Algorithm, PrivateKey, Signer as _, UnixTime};

use crate::error::IssuerError;
use crate::store::{KeyRecord, Store, secs};

/// A key this instance signs with.
pub(crate) struct SigningKey {
    pub(crate) kid: String,
    key: PrivateKey,
    /// base64url of the JWS header, computed once.
    header_b64: String,
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
        Self {
            header_b64: b64(header.to_string().as_bytes()),
            kid,
            key,
        }
    }

    /// Signs `claims` as an `at+jwt` compact JWS.
    pub(crate) fn sign(&self, claims: &serde_json::Value) -> Result<String, IssuerError> {
        let mut out = String::with_capacity(600);
        out.push_str(&self.header_b64);
        out.push('.');
        out.push_str(&b64(claims.to_string().as_bytes()));
        let sig = self
            .key
            .sign(out.as_bytes())
            .map_err(|e| IssuerError::Keys(format!("signing failed: {e}")))?;
        out.push('.');
        out.push_str(&b64(&sig));
        Ok(out)
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

/// A key this instance holds, with its signing period.
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
}

impl KeyState {
    /// The key to sign with at `now`: the newest active, unretired key held here; past a
    /// retirement not yet followed by a reload, the newest active one.
    pub(crate) fn signing(&self, now: UnixTime) -> Option<&Arc<SigningKey>> {
        let now = secs(now);
        let active = |h: &&Held| h.active_from <= now;
        self.held
            .iter()
            .filter(active)
            .find(|h| h.retired_at.is_none_or(|r| r > now))
            .or_else(|| self.held.iter().find(active))
            .or_else(|| self.held.last())
            .map(|h| &h.key)
    }
}

/// The issuer's signing keys (see the module docs).
pub(crate) struct KeyRing {
    dir: PathBuf,
    alg: Algorithm,
    state: RwLock<Arc<KeyState>>,
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

/// Creates `dir` (mode 0700) if needed.
fn ensure_dir(dir: &Path) -> Result<(), IssuerError> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder
        .create(dir)
        .map_err(|e| keys_err("create the key directory", dir, &e))
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

/// Writes a new private key file with mode 0600, refusing to overwrite.
fn write_key(dir: &Path, key: &SigningKey) -> Result<(), IssuerError> {
    let path = dir.join(format!("{}.pem", key.kid));
    let pem = key
        .key
        .to_pkcs8_pem()
        .map_err(|e| IssuerError::Keys(format!("cannot encode the key: {e}")))?;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options
        .open(&path)
        .map_err(|e| keys_err("create", &path, &e))?;
    file.write_all(pem.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| keys_err("write", &path, &e))
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
        let state = Self::build(store, &dir, alg, now).await?;
        Ok(Self {
            dir,
            alg,
            state: RwLock::new(Arc::new(state)),
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
        let state = Self::build(store, &self.dir, self.alg, now).await?;
        match self.state.write() {
            Ok(mut s) => *s = Arc::new(state),
            Err(poisoned) => *poisoned.into_inner() = Arc::new(state),
        }
        Ok(())
    }

    async fn build(
        store: &Store,
        dir: &Path,
        alg: Algorithm,
        now: UnixTime,
    ) -> Result<KeyState, IssuerError> {
        let mut records = store.published_keys(now).await?;
        let t = secs(now);
        let mut held = Vec::new();
        let mut republish = Vec::new();
        for key in read_local_keys(dir)? {
            let kid = key.thumbprint().as_str().to_owned();
            match records.iter().find(|r| r.kid == kid) {
                // Retired: nothing needs the private half any more.
                Some(r) if r.retired_at.is_some_and(|at| at <= t) => {
                    let path = dir.join(format!("{kid}.pem"));
                    if let Err(e) = std::fs::remove_file(&path) {
                        tracing::warn!(target: "dpop::issuer", path = %path.display(), error = %e, "cannot delete a retired key file");
                    }
                }
                Some(r) => held.push(Held {
                    key: Arc::new(SigningKey::new(key)),
                    active_from: r.active_from.unwrap_or(r.created_at),
                    retired_at: r.retired_at,
                }),
                // A key file whose record was purged or lost: unknown to verifiers, so
                // unusable until published again, which only a fresh record does.
                None => republish.push(SigningKey::new(key)),
            }
        }
        let mut published = !republish.is_empty();
        for key in republish {
            store.insert_key(&key.record(now, now)).await?;
            held.push(Held {
                key: Arc::new(key),
                active_from: t,
                retired_at: None,
            });
        }
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
            write_key(dir, &key)?;
            store.insert_key(&key.record(now, from)).await?;
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
        write_key(&dir, &key)?;
        store.insert_key(&key.record(now, from)).await?;
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
