//! Signing keys. Private halves are PKCS#8 PEM files (mode 0600) in `DATA_DIR/keys/`,
//! named by key id; public halves and their lifecycle are in the database, so every
//! instance publishes every live key in its JWKS.
//!
//! An instance signs with the newest unretired key whose private half it holds; when it
//! holds none (first start, or another instance rotated), it creates one. Rotation
//! retires every other key: it signs nothing more, and its public half stays published
//! until the tokens it signed have expired, then leaves the JWKS and its file is deleted.

use std::fmt;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use dpop_core::jwt::JwkSet;
use dpop_core::{Algorithm, PrivateKey, Signer as _, UnixTime};

use crate::error::IssuerError;
use crate::store::{KeyRecord, Store};

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

    fn record(&self, now: UnixTime) -> KeyRecord {
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
            created_at: i64::try_from(now.as_secs()).unwrap_or(i64::MAX),
            retired_at: None,
            publish_until: None,
        }
    }
}

pub(crate) fn b64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// The published key set and the current signing key.
#[derive(Debug)]
pub(crate) struct KeyState {
    pub(crate) signing: Arc<SigningKey>,
    /// What `/jwks` serves.
    pub(crate) jwks_json: String,
    /// The same keys, for verifying our own tokens.
    pub(crate) jwks: JwkSet,
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
        let mut local = read_local_keys(dir)?;
        // Private halves of keys that no longer sign are deleted: nothing needs them.
        local.retain(|k| {
            let kid = k.thumbprint().as_str();
            let live = records
                .iter()
                .any(|r| r.kid == kid && r.retired_at.is_none());
            let known = records.iter().any(|r| r.kid == kid);
            if known && !live {
                let path = dir.join(format!("{kid}.pem"));
                if let Err(e) = std::fs::remove_file(&path) {
                    tracing::warn!(target: "dpop::issuer", path = %path.display(), error = %e, "cannot delete a retired key file");
                }
            }
            live || !known
        });
        // Newest unretired key held here (records are newest first).
        let signing = records
            .iter()
            .filter(|r| r.retired_at.is_none())
            .find_map(|r| local.iter().position(|k| k.thumbprint().as_str() == r.kid))
            .map(|i| local.swap_remove(i));
        let signing = if let Some(key) = signing {
            SigningKey::new(key)
        } else if let Some(key) = local.into_iter().next() {
            // A key file without a record (the record was lost): publish it again.
            let key = SigningKey::new(key);
            store.insert_key(&key.record(now)).await?;
            records = store.published_keys(now).await?;
            key
        } else {
            let key = SigningKey::new(
                PrivateKey::generate(alg)
                    .map_err(|e| IssuerError::Keys(format!("cannot generate a key: {e}")))?,
            );
            write_key(dir, &key)?;
            store.insert_key(&key.record(now)).await?;
            tracing::info!(target: "dpop::issuer", kid = %key.kid, alg = alg.name(), "created a signing key");
            records = store.published_keys(now).await?;
            key
        };
        let keys: Vec<serde_json::Value> = records
            .iter()
            .filter_map(|r| serde_json::from_str(&r.public_jwk).ok())
            .collect();
        let jwks_json = serde_json::json!({ "keys": keys }).to_string();
        let jwks = JwkSet::from_json(&jwks_json)
            .map_err(|e| IssuerError::Keys(format!("the published key set is unusable: {e}")))?;
        Ok(KeyState {
            signing: Arc::new(signing),
            jwks_json,
            jwks,
        })
    }

    /// Creates a new signing key and retires every other one; retired public keys stay
    /// published for `publish_for` (the longest access token lifetime plus leeway).
    /// Returns the new key id.
    pub(crate) async fn rotate(
        store: &Store,
        data_dir: &Path,
        alg: Algorithm,
        now: UnixTime,
        publish_for: Duration,
    ) -> Result<String, IssuerError> {
        let dir = keys_dir(data_dir);
        ensure_dir(&dir)?;
        let key = SigningKey::new(
            PrivateKey::generate(alg)
                .map_err(|e| IssuerError::Keys(format!("cannot generate a key: {e}")))?,
        );
        write_key(&dir, &key)?;
        store.insert_key(&key.record(now)).await?;
        store
            .retire_keys_except(&key.kid, now, now.saturating_add(publish_for))
            .await?;
        // The retired keys' private halves held here are needed no more.
        for old in read_local_keys(&dir)? {
            let kid = old.thumbprint().as_str();
            if kid != key.kid {
                let path = dir.join(format!("{kid}.pem"));
                std::fs::remove_file(&path).map_err(|e| keys_err("delete", &path, &e))?;
            }
        }
        Ok(key.kid.clone())
    }
}
