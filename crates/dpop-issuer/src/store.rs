//! The issuer's state in SQLite (one instance) or PostgreSQL (several instances): refresh
//! tokens, revocations, replay records, signing key metadata, client offboarding.
//!
//! One implementation serves both databases through sqlx's `Any` driver: the SQL is
//! portable (TEXT and BIGINT columns, `ON CONFLICT`, `$n` parameters), and the versioned
//! migrations in `migrations/` are embedded and applied at start. Each driver is a Cargo
//! feature (`sqlite`, `postgres`, both on by default); a database whose driver this build
//! lacks is refused by name, at config load and at [`Store::connect`].
//!
//! Every operation that must be atomic across instances is one conditional statement
//! (`UPDATE … WHERE used_at IS NULL`, `INSERT … ON CONFLICT`), so two instances racing on
//! one row cannot both win.

use std::fmt;
use std::time::Duration;

use dpop_core::ReplayKey;
use dpop_core::UnixTime;
use dpop_core::replay::{AsyncReplayStore, Insert, ReplayStoreError};
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Row};

use crate::error::StoreError;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Which database is behind the store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Backend {
    /// SQLite (a file in the data directory by default).
    Sqlite,
    /// PostgreSQL.
    Postgres,
}

#[cfg(not(any(feature = "sqlite", feature = "postgres")))]
compile_error!("dpop-issuer needs a database driver: enable the `sqlite` or `postgres` feature");

impl Backend {
    /// The backend a database URL names: `sqlite:` URLs are SQLite, any other PostgreSQL.
    #[must_use]
    pub fn of_url(url: &str) -> Self {
        if url.starts_with("sqlite:") {
            Self::Sqlite
        } else {
            Self::Postgres
        }
    }

    /// The Cargo feature of dpop-issuer that compiles this backend's driver in.
    #[must_use]
    pub const fn feature(self) -> &'static str {
        match self {
            Self::Sqlite => "sqlite",
            Self::Postgres => "postgres",
        }
    }

    /// Whether this build has this backend's driver.
    #[must_use]
    pub const fn is_compiled(self) -> bool {
        match self {
            Self::Sqlite => cfg!(feature = "sqlite"),
            Self::Postgres => cfg!(feature = "postgres"),
        }
    }

    const fn name(self) -> &'static str {
        match self {
            Self::Sqlite => "SQLite",
            Self::Postgres => "PostgreSQL",
        }
    }
}

/// The database URL with any password replaced, for messages.
#[must_use]
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let userinfo = url.get(s + 3..at).unwrap_or("");
            let user = userinfo.split(':').next().unwrap_or("");
            format!(
                "{}{user}:***{}",
                url.get(..s + 3).unwrap_or(""),
                url.get(at..).unwrap_or("")
            )
        }
        _ => url.to_owned(),
    }
}

/// The backend of the database `url`, refused when this build lacks its driver.
pub(crate) fn compiled_backend(url: &str) -> Result<Backend, String> {
    backend_among(url, Backend::is_compiled)
}

/// [`compiled_backend`] with the drivers of a build given by `compiled`.
fn backend_among(url: &str, compiled: fn(Backend) -> bool) -> Result<Backend, String> {
    let backend = Backend::of_url(url);
    if compiled(backend) {
        Ok(backend)
    } else {
        Err(format!(
            "database {:?} needs the {} driver, which this build of dpop-issuer does not include (built without the `{}` feature)",
            redact_url(url),
            backend.name(),
            backend.feature(),
        ))
    }
}

/// The issuer's state.
#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
    url: String,
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store")
            .field("backend", &self.backend)
            .field("url", &redact_url(&self.url))
            .finish_non_exhaustive()
    }
}

/// A signing key's public half and lifecycle.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct KeyRecord {
    /// Key id (the key's JWK thumbprint).
    pub kid: String,
    /// JWS algorithm.
    pub alg: String,
    /// Public JWK as published (with `kid`, `use`, `alg`).
    pub public_jwk: String,
    /// Creation time.
    pub created_at: i64,
    /// When it starts signing (`None`: at creation).
    pub active_from: Option<i64>,
    /// When it stops signing.
    pub retired_at: Option<i64>,
    /// When it leaves the JWKS.
    pub publish_until: Option<i64>,
}

/// A refresh token's grant.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct RefreshRecord {
    /// SHA-256 of the token value, base64url.
    pub token_hash: String,
    /// Its family (one grant and all its rotations).
    pub family_id: String,
    /// The client it was issued to.
    pub client_id: String,
    /// `sub` of the tokens it yields.
    pub subject: String,
    /// Granted scopes, space-separated.
    pub scope: String,
    /// Granted audiences, space-separated.
    pub audience: String,
    /// The DPoP key it is bound to (public clients).
    pub jkt: Option<String>,
    /// The `act` claim (JSON) of delegated grants.
    pub act: Option<String>,
    /// Issue time.
    pub created_at: i64,
    /// Expiry.
    pub expires_at: i64,
    /// When it was exchanged for a new one (set once).
    pub used_at: Option<i64>,
    /// When its family was revoked.
    pub family_revoked_at: Option<i64>,
    /// The family's absolute expiry.
    pub family_expires_at: i64,
    /// When the family was created (its first token).
    pub family_created_at: i64,
}

/// One token a grant or an access token derives from by token exchange (RFC 8693): an
/// access token of this issuer that was the subject token of an exchange, or of an
/// earlier exchange in the chain. Revoking it, its client or its refresh family revokes
/// whatever derives from it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Origin {
    /// The client the token was issued to.
    pub client_id: String,
    /// Its `iat`.
    pub issued_at: i64,
    /// Its `jti`.
    pub jti: String,
    /// The refresh family it was issued from, if any.
    pub family_id: Option<String>,
}

impl Origin {
    /// An ancestor token.
    #[must_use]
    pub fn new(client_id: &str, issued_at: i64, jti: &str, family_id: Option<&str>) -> Self {
        Self {
            client_id: client_id.to_owned(),
            issued_at,
            jti: jti.to_owned(),
            family_id: family_id.map(str::to_owned),
        }
    }
}

/// A client's offboarding state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ClientState {
    /// Set while the client is disabled.
    pub disabled_at: Option<i64>,
    /// Tokens issued before this are inactive.
    pub tokens_invalid_before: Option<i64>,
}

/// The outcome of rotating a refresh token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Rotation {
    /// This request used the token; the new one is stored.
    Rotated,
    /// The token was already used (by another request, maybe concurrently) or its family
    /// was revoked meanwhile: nothing was stored.
    AlreadyUsed,
}

/// A time as the database stores it.
pub(crate) fn secs(t: UnixTime) -> i64 {
    i64::try_from(t.as_secs()).unwrap_or(i64::MAX)
}

impl Store {
    /// Connects, creating the SQLite file if needed, and applies pending migrations.
    ///
    /// # Errors
    /// [`StoreError`] when the database's driver is not in this build, the database is
    /// unreachable or a migration fails.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let backend = compiled_backend(url).map_err(StoreError)?;
        sqlx::any::install_default_drivers();
        if backend == Backend::Sqlite {
            // Directories 0700, database files 0600 (`files.rs`).
            crate::files::private_sqlite(url).map_err(StoreError)?;
        }
        let options = AnyPoolOptions::new()
            .max_connections(if backend == Backend::Sqlite { 4 } else { 16 })
            .acquire_timeout(Duration::from_secs(5))
            .after_connect(move |conn, _meta| {
                Box::pin(async move {
                    // Only SQLite takes settings per connection.
                    #[cfg(not(feature = "sqlite"))]
                    let _ = (conn, backend);
                    #[cfg(feature = "sqlite")]
                    if backend == Backend::Sqlite {
                        // WAL lets readers proceed while a token is rotated; the busy
                        // timeout makes concurrent writers queue instead of failing.
                        sqlx::query("PRAGMA journal_mode = WAL")
                            .execute(&mut *conn)
                            .await?;
                        sqlx::query("PRAGMA busy_timeout = 5000")
                            .execute(&mut *conn)
                            .await?;
                        sqlx::query("PRAGMA synchronous = NORMAL")
                            .execute(&mut *conn)
                            .await?;
                    }
                    Ok(())
                })
            });
        let pool = options
            .connect(url)
            .await
            .map_err(|e| StoreError(format!("cannot connect to {}: {e}", redact_url(url))))?;
        MIGRATOR.run(&pool).await?;
        Ok(Self {
            pool,
            backend,
            url: url.to_owned(),
        })
    }

    /// Which database this is.
    #[must_use]
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Whether the database answers.
    pub async fn ping(&self) -> bool {
        sqlx::query("SELECT 1").execute(&self.pool).await.is_ok()
    }

    /// Closes the pool.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// The value of a shared setting, created from `init` by the first instance to ask.
    ///
    /// # Errors
    /// [`StoreError`].
    pub async fn setting_or_init(&self, name: &str, init: &str) -> Result<String, StoreError> {
        sqlx::query(
            "INSERT INTO settings (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
        )
        .bind(name)
        .bind(init)
        .execute(&self.pool)
        .await?;
        let row = sqlx::query("SELECT value FROM settings WHERE name = $1")
            .bind(name)
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get("value")?)
    }

    // ---- signing keys ----

    /// Records a new signing key.
    ///
    /// # Errors
    /// [`StoreError`].
    pub async fn insert_key(&self, key: &KeyRecord) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO signing_keys (kid, alg, public_jwk, created_at, active_from, retired_at, publish_until) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (kid) DO NOTHING",
        )
        .bind(&key.kid)
        .bind(&key.alg)
        .bind(&key.public_jwk)
        .bind(key.created_at)
        .bind(key.active_from)
        .bind(key.retired_at)
        .bind(key.publish_until)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Every key still published at `now`, newest first.
    ///
    /// # Errors
    /// [`StoreError`].
    pub async fn published_keys(&self, now: UnixTime) -> Result<Vec<KeyRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT kid, alg, public_jwk, created_at, active_from, retired_at, publish_until FROM signing_keys \
             WHERE publish_until IS NULL OR publish_until > $1 ORDER BY created_at DESC, kid",
        )
        .bind(secs(now))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(KeyRecord {
                    kid: r.try_get("kid")?,
                    alg: r.try_get("alg")?,
                    public_jwk: r.try_get("public_jwk")?,
                    created_at: r.try_get("created_at")?,
                    active_from: r.try_get("active_from")?,
                    retired_at: r.try_get("retired_at")?,
                    publish_until: r.try_get("publish_until")?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(StoreError::from)
    }

    /// Whether `kid` is published at `now`.
    ///
    /// # Errors
    /// [`StoreError`].
    pub async fn key_is_published(&self, kid: &str, now: UnixTime) -> Result<bool, StoreError> {
        let row = sqlx::query(
            "SELECT 1 AS one FROM signing_keys WHERE kid = $1 AND (publish_until IS NULL OR publish_until > $2)",
        )
        .bind(kid)
        .bind(secs(now))
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.is_some())
    }

    /// What the database knows of key `kid` at `now`: `None` nothing, `Some(true)`
    /// retired (its record says so, its publication is over, or only its retirement is
    /// remembered), `Some(false)` recorded and not retired.
    ///
    /// # Errors
    /// [`StoreError`].
    pub async fn key_retired(&self, kid: &str, now: UnixTime) -> Result<Option<bool>, StoreError> {
        let row = sqlx::query("SELECT retired_at, publish_until FROM signing_keys WHERE kid = $1")
            .bind(kid)
            .fetch_optional(&self.pool)
            .await?;
        if let Some(row) = row {
            let now = secs(now);
            let retired_at: Option<i64> = row.try_get("retired_at")?;
            let publish_until: Option<i64> = row.try_get("publish_until")?;
            let past = |t: Option<i64>| t.is_some_and(|t| t <= now);
            return Ok(Some(past(retired_at) || past(publish_until)));
        }
        let gone = sqlx::query("SELECT 1 AS one FROM retired_keys WHERE kid = $1")
            .bind(kid)
            .fetch_optional(&self.pool)
            .await?;
        Ok(gone.map(|_| true))
    }

    /// Retires every key but `keep` at `retire_at`: from then on they sign nothing
    /// more, and they stay published until `publish_until`. Returns how many.
    ///
    /// # Errors
    /// [`StoreError`].
    pub async fn retire_keys_except(
        &self,
        keep: &str,
        retire_at: UnixTime,
        publish_until: UnixTime,
    ) -> Result<u64, StoreError> {
        let done = sqlx::query(
            "UPDATE signing_keys SET retired_at = $1, publish_until = $2 \
             WHERE (retired_at IS NULL OR retired_at > $1) AND kid <> $3",
        )
        .bind(secs(retire_at))
        .bind(secs(publish_until))
        .bind(keep)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    // ---- single-use values ----

    /// Records `key` until `expires_at` unless a live record exists: `true` when this
    /// call recorded it (first use), `false` for a replay.
    ///
    /// # Errors
    /// [`StoreError`].
    pub async fn use_once(&self, key: &str, expires_at: i64, now: i64) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "INSERT INTO replay (replay_key, expires_at) VALUES ($1, $2) \
             ON CONFLICT (replay_key) DO UPDATE SET expires_at = excluded.expires_at \
             WHERE replay.expires_at <= $3",
        )
        .bind(key)
        .bind(expires_at)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    // ---- refresh tokens ----

    /// Stores the first refresh token of a new family, with what the family derives from
    /// (empty unless it was started by exchanging one of this issuer's tokens), oldest
    /// first.
    ///
    /// # Errors
    /// [`StoreError`].
    pub async fn insert_family(
        &self,
        first: &RefreshRecord,
        lineage: &[Origin],
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO refresh_families (family_id, client_id, created_at, expires_at) \
             VALUES ($1, $2, $3, $4)",
        )
        .bind(&first.family_id)
        .bind(&first.client_id)
        .bind(first.created_at)
        .bind(first.family_expires_at)
        .execute(&mut *tx)
        .await?;
        for (seq, origin) in (0_i64..).zip(lineage) {
            sqlx::query(
                "INSERT INTO family_lineage (family_id, seq, client_id, issued_at, jti, parent_family_id) \
                 VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(&first.family_id)
            .bind(seq)
            .bind(&origin.client_id)
            .bind(origin.issued_at)
            .bind(&origin.jti)
            .bind(origin.family_id.as_deref())
            .execute(&mut *tx)
            .await?;
        }
        insert_refresh(&mut tx, first).await?;
        tx.commit().await?;
        Ok(())
    }

    /// What a refresh family derives from, oldest first (empty for a family that was not
    /// started by exchanging one of this issuer's tokens).
    ///
    /// # Errors
    /// [`StoreError`].
    pub async fn family_lineage(&self, family_id: &str) -> Result<Vec<Origin>, StoreError> {
        let rows = sqlx::query(
            "SELECT client_id, issued_at, jti, parent_family_id FROM family_lineage \
             WHERE family_id = $1 ORDER BY seq",
        )
        .bind(family_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(Origin {
                    client_id: r.try_get("client_id")?,
                    issued_at: r.try_get("issued_at")?,
                    jti: r.try_get("jti")?,
                    family_id: r.try_get("parent_family_id")?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(StoreError::from)
    }

    /// Whether something a token or grant derives from was revoked: `family` (the refresh
    /// family it was issued from), or any of `lineage` (its access token revoked, its
    /// client disabled or offboarded after it was issued, its refresh family revoked). A
    /// family no longer on record counts as revoked.
    ///
    /// This is checked on every use rather than only recorded at revocation time, so a
    /// token derived while its ancestor was being revoked is caught too.
    ///
    /// # Errors
    /// [`StoreError`].
    pub async fn lineage_revoked(
        &self,
        family: Option<&str>,
        lineage: &[Origin],
    ) -> Result<bool, StoreError> {
        if let Some(family) = family
            && self.family_revoked(family).await?
        {
            return Ok(true);
        }
        for origin in lineage {
            let row = sqlx::query(
                "SELECT \
                 (SELECT COUNT(*) FROM client_state WHERE client_id = $1 \
                    AND (disabled_at IS NOT NULL OR tokens_invalid_before >= $2)) \
                 + (SELECT COUNT(*) FROM revoked_access_tokens WHERE jti = $3) AS n",
            )
            .bind(&origin.client_id)
            .bind(origin.issued_at)
            .bind(&origin.jti)
            .fetch_one(&self.pool)
            .await?;
            let n: i64 = row.try_get("n")?;
            if n > 0 {
                return Ok(true);
            }
            if let Some(family) = &origin.family_id
                && self.family_revoked(family).await?
            {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Whether a refresh family was revoked, or is no longer on record. A family is
    /// purged only once expired (and no live family derives from it), when every access
    /// token issued from it has expired too (their `exp` is capped at the family's): a
    /// live token never names a family that is gone, and one that does (an instance whose
    /// clock runs ahead purged it) is refused rather than taken for a token of a grant
    /// that was never revoked.
    async fn family_revoked(&self, family_id: &str) -> Result<bool, StoreError> {
        let row = sqlx::query("SELECT revoked_at FROM refresh_families WHERE family_id = $1")
            .bind(family_id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(match row {
            None => true,
            Some(r) => r.try_get::<Option<i64>, _>("revoked_at")?.is_some(),
        })
    }

    /// Looks a refresh token up by its hash.
    ///
    /// # Errors
    /// [`StoreError`].
    pub async fn find_refresh(
        &self,
        token_hash: &str,
    ) -> Result<Option<RefreshRecord>, StoreError> {
        let row = sqlx::query(
            "SELECT t.token_hash, t.family_id, t.client_id, t.subject, t.scope, t.audience, t.jkt, \
             t.act, t.created_at, t.expires_at, t.used_at, f.revoked_at, f.expires_at AS family_expires_at, \
             f.created_at AS family_created_at \
             FROM refresh_tokens t JOIN refresh_families f ON f.family_id = t.family_id \
             WHERE t.token_hash = $1",
        )
        .bind(token_hash)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| refresh_from_row(&r))
            .transpose()
            .map_err(StoreError::from)
    }

    /// Marks `old` used and stores `new` in its family, atomically: of several requests
    /// presenting one token, exactly one gets [`Rotation::Rotated`].
    ///
    /// # Errors
    /// [`StoreError`].
    pub async fn rotate_refresh(
        &self,
        old_hash: &str,
        new: &RefreshRecord,
        now: UnixTime,
    ) -> Result<Rotation, StoreError> {
        let mut tx = self.pool.begin().await?;
        let used = sqlx::query(
            "UPDATE refresh_tokens SET used_at = $1 WHERE token_hash = $2 AND used_at IS NULL",
        )
        .bind(secs(now))
        .bind(old_hash)
        .execute(&mut *tx)
        .await?;
        if used.rows_affected() != 1 {
            tx.rollback().await?;
            return Ok(Rotation::AlreadyUsed);
        }
        let family = sqlx::query("SELECT revoked_at FROM refresh_families WHERE family_id = $1")
            .bind(&new.family_id)
            .fetch_optional(&mut *tx)
            .await?;
        let revoked: Option<i64> = match family {
            Some(r) => r.try_get("revoked_at")?,
            None => Some(0),
        };
        if revoked.is_some() {
            tx.rollback().await?;
            return Ok(Rotation::AlreadyUsed);
        }
        insert_refresh(&mut tx, new).await?;
        tx.commit().await?;
        Ok(Rotation::Rotated)
    }

    /// Revokes a refresh family (every token of one grant), and the families derived
    /// from its tokens by exchange.
    ///
    /// # Errors
    /// [`StoreError`].
    pub async fn revoke_family(&self, family_id: &str, now: UnixTime) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "UPDATE refresh_families SET revoked_at = $1 WHERE family_id = $2 AND revoked_at IS NULL",
        )
        .bind(secs(now))
        .bind(family_id)
        .execute(&mut *tx)
        .await?;
        // Lineage rows list every ancestor, not only the parent, so one level reaches
        // every descendant.
        sqlx::query(
            "UPDATE refresh_families SET revoked_at = $1 WHERE revoked_at IS NULL AND family_id IN \
             (SELECT family_id FROM family_lineage WHERE parent_family_id = $2)",
        )
        .bind(secs(now))
        .bind(family_id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    // ---- access tokens ----

    /// Marks an access token revoked until it expires, and revokes the refresh families
    /// derived from it by exchange (they outlive it, and with it the revocation record).
    ///
    /// # Errors
    /// [`StoreError`].
    pub async fn revoke_access_token(
        &self,
        jti: &str,
        client_id: &str,
        expires_at: i64,
        now: UnixTime,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO revoked_access_tokens (jti, client_id, expires_at) VALUES ($1, $2, $3) \
             ON CONFLICT (jti) DO NOTHING",
        )
        .bind(jti)
        .bind(client_id)
        .bind(expires_at)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "UPDATE refresh_families SET revoked_at = $1 WHERE revoked_at IS NULL AND family_id IN \
             (SELECT family_id FROM family_lineage WHERE jti = $2)",
        )
        .bind(secs(now))
        .bind(jti)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Whether an access token was revoked.
    ///
    /// # Errors
    /// [`StoreError`].
    pub async fn is_access_token_revoked(&self, jti: &str) -> Result<bool, StoreError> {
        let row = sqlx::query("SELECT 1 AS one FROM revoked_access_tokens WHERE jti = $1")
            .bind(jti)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.is_some())
    }

    // ---- clients ----

    /// A client's offboarding state (default: enabled, nothing revoked).
    ///
    /// # Errors
    /// [`StoreError`].
    pub async fn client_state(&self, client_id: &str) -> Result<ClientState, StoreError> {
        let row = sqlx::query(
            "SELECT disabled_at, tokens_invalid_before FROM client_state WHERE client_id = $1",
        )
        .bind(client_id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(match row {
            None => ClientState::default(),
            Some(r) => ClientState {
                disabled_at: r.try_get("disabled_at")?,
                tokens_invalid_before: r.try_get("tokens_invalid_before")?,
            },
        })
    }

    /// Disables a client: it is refused from now on, its refresh families and those
    /// derived from its tokens by exchange (whichever client holds them) are revoked, and
    /// every token issued to it so far, or derived from one, becomes inactive. Idempotent.
    ///
    /// # Errors
    /// [`StoreError`].
    pub async fn disable_client(&self, client_id: &str, now: UnixTime) -> Result<(), StoreError> {
        let now = secs(now);
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO client_state (client_id, disabled_at, tokens_invalid_before) VALUES ($1, $2, $2) \
             ON CONFLICT (client_id) DO UPDATE SET disabled_at = COALESCE(client_state.disabled_at, excluded.disabled_at), \
             tokens_invalid_before = excluded.tokens_invalid_before",
        )
        .bind(client_id)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "UPDATE refresh_families SET revoked_at = $1 WHERE client_id = $2 AND revoked_at IS NULL",
        )
        .bind(now)
        .bind(client_id)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "UPDATE refresh_families SET revoked_at = $1 WHERE revoked_at IS NULL AND family_id IN \
             (SELECT family_id FROM family_lineage WHERE client_id = $2)",
        )
        .bind(now)
        .bind(client_id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Enables a client again. Tokens revoked when it was disabled stay inactive.
    ///
    /// # Errors
    /// [`StoreError`].
    pub async fn enable_client(&self, client_id: &str) -> Result<(), StoreError> {
        sqlx::query("UPDATE client_state SET disabled_at = NULL WHERE client_id = $1")
            .bind(client_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Deletes what has expired: replay records, revocations of expired tokens, refresh
    /// families past their absolute expiry and their tokens, except the records of what a
    /// live refresh family derives from. Returns the rows removed.
    ///
    /// A revoked family's row goes no earlier than its absolute expiry, when the access
    /// tokens issued from it have all expired (their `exp` never passes it); a token
    /// naming a family that is gone counts as revoked (`lineage_revoked`).
    ///
    /// # Errors
    /// [`StoreError`].
    pub async fn purge(&self, now: UnixTime) -> Result<u64, StoreError> {
        let now = secs(now);
        let mut n = 0;
        for sql in [
            "DELETE FROM replay WHERE expires_at <= $1",
            "DELETE FROM refresh_tokens WHERE family_id IN \
             (SELECT family_id FROM refresh_families WHERE expires_at <= $1)",
            "DELETE FROM family_lineage WHERE family_id IN \
             (SELECT family_id FROM refresh_families WHERE expires_at <= $1)",
            // A revoked ancestor stays on record while a live grant derives from it, so
            // that `lineage_revoked` still sees it (a grant created while its ancestor
            // was being revoked may have escaped the revocation's own update).
            "DELETE FROM revoked_access_tokens WHERE expires_at <= $1 AND NOT EXISTS \
             (SELECT 1 FROM family_lineage l WHERE l.jti = revoked_access_tokens.jti)",
            "DELETE FROM refresh_families WHERE expires_at <= $1 AND NOT EXISTS \
             (SELECT 1 FROM family_lineage l WHERE l.parent_family_id = refresh_families.family_id)",
            // The key id stays on record (`key_retired`) when its row goes.
            "INSERT INTO retired_keys (kid, retired_at) \
             SELECT kid, COALESCE(retired_at, publish_until) FROM signing_keys \
             WHERE publish_until IS NOT NULL AND publish_until <= $1 \
             ON CONFLICT (kid) DO NOTHING",
            "DELETE FROM signing_keys WHERE publish_until IS NOT NULL AND publish_until <= $1",
        ] {
            n += sqlx::query(sql)
                .bind(now)
                .execute(&self.pool)
                .await?
                .rows_affected();
        }
        Ok(n)
    }
}

async fn insert_refresh(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    r: &RefreshRecord,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO refresh_tokens (token_hash, family_id, client_id, subject, scope, audience, jkt, act, \
         created_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
    )
    .bind(&r.token_hash)
    .bind(&r.family_id)
    .bind(&r.client_id)
    .bind(&r.subject)
    .bind(&r.scope)
    .bind(&r.audience)
    .bind(r.jkt.as_deref())
    .bind(r.act.as_deref())
    .bind(r.created_at)
    .bind(r.expires_at)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

fn refresh_from_row(r: &AnyRow) -> Result<RefreshRecord, sqlx::Error> {
    Ok(RefreshRecord {
        token_hash: r.try_get("token_hash")?,
        family_id: r.try_get("family_id")?,
        client_id: r.try_get("client_id")?,
        subject: r.try_get("subject")?,
        scope: r.try_get("scope")?,
        audience: r.try_get("audience")?,
        jkt: r.try_get("jkt")?,
        act: r.try_get("act")?,
        created_at: r.try_get("created_at")?,
        expires_at: r.try_get("expires_at")?,
        used_at: r.try_get("used_at")?,
        family_revoked_at: r.try_get("revoked_at")?,
        family_expires_at: r.try_get("family_expires_at")?,
        family_created_at: r.try_get("family_created_at")?,
    })
}

/// DPoP proofs and client assertions are recorded in the database, so every instance
/// sharing it refuses a replay.
impl AsyncReplayStore for Store {
    fn insert_if_absent(
        &self,
        key: &ReplayKey,
        expires_at: UnixTime,
        now: UnixTime,
    ) -> impl Future<Output = Result<Insert, ReplayStoreError>> + Send {
        let key = format!("dpop:{}", key.to_hex());
        async move {
            match self.use_once(&key, secs(expires_at), secs(now)).await {
                Ok(true) => Ok(Insert::Inserted),
                Ok(false) => Ok(Insert::AlreadyPresent),
                Err(e) => Err(ReplayStoreError::Unavailable(e.0)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_database_without_its_driver_is_refused_by_name() {
        let only_sqlite: fn(Backend) -> bool = |b| b == Backend::Sqlite;
        let only_postgres: fn(Backend) -> bool = |b| b == Backend::Postgres;
        let e = backend_among("postgres://issuer:pw@db/issuer", only_sqlite).unwrap_err();
        assert_eq!(
            e,
            "database \"postgres://issuer:***@db/issuer\" needs the PostgreSQL driver, which this build of dpop-issuer does not include (built without the `postgres` feature)"
        );
        let e = backend_among("sqlite:///var/lib/issuer.db?mode=rwc", only_postgres).unwrap_err();
        assert!(e.contains("needs the SQLite driver"), "{e}");
        assert!(e.contains("without the `sqlite` feature"), "{e}");
        assert_eq!(
            backend_among("sqlite://:memory:", only_sqlite),
            Ok(Backend::Sqlite)
        );
        assert_eq!(
            backend_among("postgresql://db/issuer", only_postgres),
            Ok(Backend::Postgres)
        );
        // This build: each backend is accepted exactly when its feature is on.
        for b in [Backend::Sqlite, Backend::Postgres] {
            let url = if b == Backend::Sqlite {
                "sqlite://x.db"
            } else {
                "postgres://db/x"
            };
            assert_eq!(compiled_backend(url).is_ok(), b.is_compiled(), "{b:?}");
        }
    }
}
