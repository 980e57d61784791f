//! [`PgSchema`]: a throw-away PostgreSQL schema for one test, on the server named by
//! [`POSTGRES_URL_ENV`], so that tests can share one database without seeing each
//! other's tables.

use dpop_core::{RandomSource as _, SystemRandomSource};
use sqlx::Connection as _;

/// The environment variable naming the PostgreSQL server the tests that need one run
/// against (`postgres://user@host:port/database`); they are skipped without it.
pub const POSTGRES_URL_ENV: &str = "DPOP_TEST_POSTGRES_URL";

/// A schema of its own (`t_` and 16 random hex digits) on the server of
/// [`POSTGRES_URL_ENV`], selected through the connection's `search_path`: give
/// [`PgSchema::url`] to the code under test as its database URL. Dropped with
/// everything in it by [`PgSchema::drop_schema`], or, best effort, when dropped.
///
/// ```no_run
/// # async fn t() {
/// let Some(pg) = dpop_test::PgSchema::create().await else {
///     return; // skipped: the variable is not set (and stderr says so)
/// };
/// assert!(pg.url().contains("search_path%3Dt_"));
/// pg.drop_schema().await.expect("drop the schema");
/// # }
/// ```
#[derive(Debug)]
pub struct PgSchema {
    server: String,
    schema: String,
    url: String,
    /// Whether [`PgSchema::drop_schema`] already did it.
    dropped: bool,
}

impl PgSchema {
    /// Creates a fresh schema on the server of [`POSTGRES_URL_ENV`]; `None`, after
    /// saying `skipped: set DPOP_TEST_POSTGRES_URL` on stderr, without the variable.
    ///
    /// # Panics
    /// When the variable is set but the server cannot be reached, or the schema cannot
    /// be created: a test that was asked to run on PostgreSQL fails rather than skips.
    pub async fn create() -> Option<Self> {
        let Ok(server) = std::env::var(POSTGRES_URL_ENV) else {
            eprintln!("skipped: set {POSTGRES_URL_ENV}");
            return None;
        };
        let mut suffix = [0_u8; 8];
        SystemRandomSource.fill(&mut suffix).expect("randomness");
        let schema = format!(
            "t_{}",
            suffix
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        );
        let mut conn = sqlx::PgConnection::connect(&server)
            .await
            .unwrap_or_else(|e| panic!("cannot connect to {POSTGRES_URL_ENV}: {e}"));
        sqlx::raw_sql(&format!("CREATE SCHEMA {schema}"))
            .execute(&mut conn)
            .await
            .expect("create the test schema");
        conn.close().await.ok();
        let sep = if server.contains('?') { '&' } else { '?' };
        let url = format!("{server}{sep}options=-c%20search_path%3D{schema}");
        Some(Self {
            server,
            schema,
            url,
            dropped: false,
        })
    }

    /// The database URL that works in the schema: the server's URL with
    /// `options=-c search_path=SCHEMA`.
    #[must_use]
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The schema's name.
    #[must_use]
    pub fn schema(&self) -> &str {
        &self.schema
    }

    /// The server's URL, as [`POSTGRES_URL_ENV`] gave it.
    #[must_use]
    pub fn server(&self) -> &str {
        &self.server
    }

    /// Drops the schema and everything in it.
    ///
    /// # Errors
    /// When the server cannot be reached or refuses; dropping the value then tries
    /// again.
    pub async fn drop_schema(mut self) -> Result<(), sqlx::Error> {
        drop_schema(&self.server, &self.schema).await?;
        self.dropped = true;
        Ok(())
    }
}

async fn drop_schema(server: &str, schema: &str) -> Result<(), sqlx::Error> {
    let mut conn = sqlx::PgConnection::connect(server).await?;
    sqlx::raw_sql(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
        .execute(&mut conn)
        .await?;
    conn.close().await
}

impl Drop for PgSchema {
    fn drop(&mut self) {
        if self.dropped {
            return;
        }
        let server = std::mem::take(&mut self.server);
        let schema = std::mem::take(&mut self.schema);
        // Best effort: a leftover schema only costs space. The drop may run on a test's
        // runtime, which must not block: a thread with a runtime of its own.
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                let _ = drop_schema(&server, &schema).await;
            });
        })
        .join();
    }
}
