//! The harness: a clock the tests move, one database per test (a SQLite file, or a
//! PostgreSQL schema when `DPOP_TEST_POSTGRES_URL` is set), the issuer served on a
//! loopback port that is also its issuer URL, and DPoP-aware request helpers.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};

use base64::Engine as _;
use dpop_core::UnixTime;
use dpop_core::jwt::{JwkSet, JwtValidation, TypPolicy, VerifiedJwt, verify_jwt};
use dpop_core::{
    Algorithm, Clock, PrivateKey, ProofBuilder, RandomSource as _, Signer, SystemRandomSource,
};
use dpop_issuer::{Issuer, IssuerConfig};
pub(crate) use dpop_test::ClientFixture;
use dpop_test::{IssuerFixture, MockIssuer, PgSchema, TokenSpec};
use serde_json::{Value, json};
use sqlx::Connection as _;

/// The API most clients may receive tokens for (their default audience).
pub(crate) const API: &str = "https://api.example.com";
/// A second API, allowed to `svc` only on request.
pub(crate) const OTHER_API: &str = "https://other.example.com";

/// Every confidential client's secret.
pub(crate) const SECRET: &str = "correct-horse-battery-staple-42";
/// Its Argon2 hash, computed once for the whole run (Argon2 is slow on purpose).
pub(crate) static SECRET_HASH: LazyLock<String> =
    LazyLock::new(|| dpop_issuer::hash_secret(SECRET).expect("hash the test secret"));

pub(crate) const GRANT_CC: &str = "client_credentials";
pub(crate) const GRANT_REFRESH: &str = "refresh_token";
pub(crate) const GRANT_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
pub(crate) const TT_ACCESS: &str = "urn:ietf:params:oauth:token-type:access_token";
pub(crate) const TT_JWT: &str = "urn:ietf:params:oauth:token-type:jwt";
pub(crate) const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// Generates a `sqlite` and a `postgres` test for each named `async fn(Db)`, in a module
/// of the same name: `token::client_credentials_basic::sqlite`, `…::postgres`.
/// Attributes before a name (`#[ignore = "…"]`) go on both tests.
macro_rules! db_tests {
    ($($(#[$attr:meta])* $name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            $(#[$attr])*
            async fn sqlite() {
                super::$name(crate::support::Db::sqlite()).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            $(#[$attr])*
            async fn postgres() {
                if let Some(db) = crate::support::Db::postgres().await {
                    super::$name(db).await;
                }
            }
        }
    )*};
}
pub(crate) use db_tests;

// ---- time ----

/// A clock that starts at the real time and moves only when a test says so.
#[derive(Debug)]
pub(crate) struct TestClock(AtomicU64);

impl TestClock {
    fn new() -> Arc<Self> {
        Arc::new(Self(AtomicU64::new(dpop_test::now().as_secs())))
    }

    /// The current test time.
    pub(crate) fn unix(&self) -> UnixTime {
        UnixTime::from_secs(self.secs())
    }

    /// The current test time in seconds.
    pub(crate) fn secs(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }

    /// Moves time forward.
    pub(crate) fn advance(&self, secs: u64) {
        self.0.fetch_add(secs, Ordering::SeqCst);
    }
}

impl Clock for TestClock {
    fn now(&self) -> Option<UnixTime> {
        Some(self.unix())
    }
}

// ---- databases ----

/// Which database a test runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Backend {
    Sqlite,
    Postgres,
}

/// One test's private state: a temporary directory (data directory, SQLite file) and,
/// on PostgreSQL, a schema of its own. Both are removed when it is dropped.
#[derive(Debug)]
pub(crate) struct Db {
    pub(crate) backend: Backend,
    pub(crate) dir: PathBuf,
    /// The `database` value the issuer gets.
    url: String,
    /// PostgreSQL: the schema, held to be dropped with this value.
    _schema: Option<PgSchema>,
}

fn random_hex(bytes: usize) -> String {
    let mut b = vec![0_u8; bytes];
    SystemRandomSource.fill(&mut b).expect("randomness");
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn temp_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "dpop-issuer-test-{}-{}",
        std::process::id(),
        random_hex(8)
    ));
    std::fs::create_dir_all(&dir).expect("create the test directory");
    dir
}

impl Db {
    /// A fresh SQLite database in a fresh directory.
    pub(crate) fn sqlite() -> Self {
        let dir = temp_dir();
        let url = format!(
            "sqlite://{}?mode=rwc",
            dir.join("state/issuer.db").display()
        );
        Self {
            backend: Backend::Sqlite,
            dir,
            url,
            _schema: None,
        }
    }

    /// A fresh schema on the PostgreSQL server named by [`dpop_test::POSTGRES_URL_ENV`],
    /// selected through the connection's `search_path`; `None` (and a note on stderr)
    /// without the variable.
    pub(crate) async fn postgres() -> Option<Self> {
        let schema = PgSchema::create().await?;
        Some(Self {
            backend: Backend::Postgres,
            dir: temp_dir(),
            url: schema.url().to_owned(),
            _schema: Some(schema),
        })
    }

    /// The `database` setting for the issuer.
    pub(crate) fn url(&self) -> &str {
        &self.url
    }

    /// A `SELECT COUNT(*) …` on this test's database (for checks on persisted state).
    pub(crate) async fn count(&self, sql: &str) -> i64 {
        sqlx::any::install_default_drivers();
        let mut conn = sqlx::AnyConnection::connect(&self.url)
            .await
            .expect("connect to the test database");
        let n: i64 = sqlx::query_scalar(sql)
            .fetch_one(&mut conn)
            .await
            .expect("count query");
        conn.close().await.ok();
        n
    }
}

impl Db {
    /// Runs statements on this test's database, outside the issuer (to set up state an
    /// older version left behind).
    pub(crate) async fn execute(&self, statements: &[&str]) {
        sqlx::any::install_default_drivers();
        let mut conn = sqlx::AnyConnection::connect(&self.url)
            .await
            .expect("connect to the test database");
        for sql in statements {
            sqlx::query(sql)
                .execute(&mut conn)
                .await
                .unwrap_or_else(|e| panic!("{sql}: {e}"));
        }
        conn.close().await.ok();
    }
}

impl Drop for Db {
    fn drop(&mut self) {
        // Best effort: a leftover directory or schema only costs space. The schema goes
        // next, when the field is dropped.
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

// ---- configuration ----

/// Knobs of the generated configuration.
#[derive(Clone, Debug)]
pub(crate) struct Setup {
    /// `[dpop] nonce`.
    pub(crate) nonce: bool,
    /// Lines for the `[tokens]` table.
    pub(crate) tokens: String,
    /// TOML appended after the standard clients (more clients, `[[trust]]` tables).
    pub(crate) extra: String,
    /// A path for the issuer identifier (`/auth`), empty for none.
    pub(crate) path: String,
    /// Top-level lines (before the tables), e.g. `admin_listen`.
    pub(crate) top: String,
    /// More lines of the `[dpop]` table, e.g. `algorithms`.
    pub(crate) dpop: String,
}

impl Default for Setup {
    fn default() -> Self {
        Self {
            nonce: true,
            tokens: String::new(),
            extra: String::new(),
            path: String::new(),
            top: String::new(),
            dpop: String::new(),
        }
    }
}

impl Setup {
    /// The defaults without server nonces.
    pub(crate) fn no_nonce() -> Self {
        Self {
            nonce: false,
            ..Self::default()
        }
    }
}

/// The clients every test issuer has:
///
/// - `svc`: confidential (secret), every grant, scopes `read write admin` (default
///   `read`), audiences [`API`] and [`OTHER_API`] (default [`API`]); exchanging its own
///   tokens starts a refresh grant (`refresh_from_exchange`);
/// - `svc2`: confidential, every grant, scopes `read write`, audience [`API`]; acts for
///   `svc` (`may_exchange_for`), with a refresh grant;
/// - `cc-only`: confidential, `client_credentials` only, scope `read`;
/// - `optional`: confidential, `dpop = "optional"`, `client_credentials`, scope `read`;
/// - `keyed`: `private_key_jwt` with the harness's client key, `client_credentials`;
/// - `public`: public, token exchange and refresh, scopes `read write`;
/// - `rs`: a resource server that may only introspect.
fn clients(hash: &str, client_jwk: &str) -> Vec<ClientFixture> {
    let every_grant = [GRANT_CC, GRANT_REFRESH, GRANT_EXCHANGE];
    vec![
        ClientFixture::confidential("svc", hash)
            .grants(every_grant)
            .scopes(["read", "write", "admin"])
            .default_scopes(["read"])
            .audiences([API, OTHER_API])
            .default_audiences([API])
            .line("refresh_from_exchange = true"),
        ClientFixture::confidential("svc2", hash)
            .grants(every_grant)
            .scopes(["read", "write"])
            .audiences([API])
            .may_exchange_for(["svc"])
            .line("refresh_from_exchange = true"),
        ClientFixture::confidential("cc-only", hash)
            .grants([GRANT_CC])
            .scopes(["read"])
            .audiences([API]),
        ClientFixture::confidential("optional", hash)
            .grants([GRANT_CC])
            .scopes(["read"])
            .audiences([API])
            .line("dpop = \"optional\""),
        ClientFixture::keyed("keyed", client_jwk)
            .grants([GRANT_CC])
            .scopes(["read"])
            .audiences([API]),
        ClientFixture::public("public")
            .grants([GRANT_EXCHANGE, GRANT_REFRESH])
            .scopes(["read", "write"])
            .audiences([API]),
        ClientFixture::confidential("rs", hash)
            .grants(Vec::<String>::new())
            .line("introspection = true"),
    ]
}

/// Configuration `text` with `line` added to client `id`'s table (an operator's edit).
pub(crate) fn set_client(text: &str, id: &str, line: &str) -> String {
    let table = format!("id = \"{id}\"\n");
    assert!(text.contains(&table), "no client {id:?}");
    text.replacen(&table, &format!("{table}{line}\n"), 1)
}

/// The `aud` of [`ci_trust_toml`]'s job tokens.
pub(crate) const CI_AUD: &str = "https://issuer.test";

/// A `[[trust]]` for the CI issuer `ci`: its job tokens for `acme/shop` are exchanged by
/// the `public` client for workload `shop-deployer` (scopes `read write`), whose grants
/// may outlive the job token (`outlive_subject`). The way a public client gets a
/// (key-bound) refresh token: it cannot exchange this issuer's own tokens.
pub(crate) fn ci_trust_toml(ci: &MockIssuer) -> String {
    format!(
        r#"
[[trust]]
name = "ci-for-public"
issuer = "{iss}"
audience = "{CI_AUD}"

[[trust.rules]]
claims = {{ repository = "acme/shop" }}
workload = "shop-deployer"
scopes = ["read", "write"]
clients = ["public"]
outlive_subject = true
"#,
        iss = ci.url()
    )
}

/// An issuer with the standard clients that trusts `ci` ([`ci_trust_toml`]).
pub(crate) async fn start_trusting(db: &Db, ci: &MockIssuer) -> TestIssuer {
    TestIssuer::start_with(
        db,
        Setup {
            extra: ci_trust_toml(ci),
            ..Setup::default()
        },
    )
    .await
}

// ---- HTTP ----

/// A response read to the end.
#[derive(Debug)]
pub(crate) struct Resp {
    pub(crate) status: u16,
    pub(crate) headers: reqwest::header::HeaderMap,
    pub(crate) body: String,
}

impl Resp {
    /// The body as JSON.
    pub(crate) fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {} {}", self.status, self.body))
    }

    /// A header's value.
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Asserts `200`, `Cache-Control: no-store` and a JSON body, which it returns.
    #[track_caller]
    pub(crate) fn ok(&self) -> Value {
        assert_eq!(self.status, 200, "expected 200, got: {}", self.body);
        assert_eq!(self.header("cache-control"), Some("no-store"), "{self:?}");
        self.json()
    }

    /// Asserts an OAuth error response: the status, the `error` code, an
    /// `error_description`, and `Cache-Control: no-store`.
    #[track_caller]
    pub(crate) fn err(&self, status: u16, code: &str) {
        assert_eq!(
            (self.status, self.json()["error"].as_str()),
            (status, Some(code)),
            "{}",
            self.body
        );
        assert!(
            self.json()["error_description"]
                .as_str()
                .is_some_and(|d| !d.is_empty()),
            "no error_description: {}",
            self.body
        );
        assert_eq!(self.header("cache-control"), Some("no-store"), "{self:?}");
    }
}

/// How a request authenticates its client.
#[derive(Clone, Debug)]
pub(crate) enum Auth {
    /// `client_secret_basic`.
    Basic(String, String),
    /// `client_secret_post`.
    Post(String, String),
    /// `private_key_jwt`: the assertion.
    Jwt(String),
    /// A public client: `client_id` only.
    Public(String),
    /// Nothing at all.
    Nothing,
}

/// `client_secret_basic` with the shared secret.
pub(crate) fn basic(id: &str) -> Auth {
    Auth::Basic(id.to_owned(), SECRET.to_owned())
}

/// `client_secret_post` with the shared secret.
pub(crate) fn post(id: &str) -> Auth {
    Auth::Post(id.to_owned(), SECRET.to_owned())
}

/// A public client.
pub(crate) fn public(id: &str) -> Auth {
    Auth::Public(id.to_owned())
}

/// A fresh ES256 key.
pub(crate) fn key() -> PrivateKey {
    PrivateKey::generate(Algorithm::Es256).expect("ES256 key")
}

/// Header and claims of a compact JWS, not verified.
pub(crate) fn decode(token: &str) -> (Value, Value) {
    let part = |i: usize| -> Value {
        let seg = token.split('.').nth(i).expect("a compact JWS");
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(seg)
            .expect("base64url");
        serde_json::from_slice(&bytes).expect("JSON")
    };
    (part(0), part(1))
}

/// The proof key's thumbprint, as `cnf.jkt` carries it.
pub(crate) fn jkt(key: &PrivateKey) -> String {
    key.thumbprint().as_str().to_owned()
}

// ---- the issuer ----

/// An issuer serving on loopback, with its clock and configuration.
#[derive(Debug)]
pub(crate) struct TestIssuer {
    /// The issuer identifier, `http://127.0.0.1:PORT[/path]`.
    pub(crate) url: String,
    pub(crate) clock: Arc<TestClock>,
    pub(crate) issuer: Issuer,
    /// The key of the `keyed` client (`private_key_jwt`).
    pub(crate) client_key: Arc<PrivateKey>,
    /// Where requests go: the issuer URL, or another instance's address with its path.
    target: String,
    text: String,
    base: PathBuf,
    port: u16,
    http: reqwest::Client,
    /// The last nonce the token endpoint gave out.
    nonce: Mutex<Option<String>>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<()>>,
}

fn serve(
    issuer: Issuer,
    listener: tokio::net::TcpListener,
) -> (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<()>,
) {
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let handle = tokio::spawn(async move {
        issuer
            .serve_on(listener, async move {
                let _ = rx.await;
            })
            .await
            .expect("the issuer serves");
    });
    (tx, handle)
}

impl TestIssuer {
    /// An issuer with the standard clients, on `db`, with nonces.
    pub(crate) async fn start(db: &Db) -> Self {
        Self::start_with(db, Setup::default()).await
    }

    /// An issuer with the standard clients and `setup`, on `db`.
    pub(crate) async fn start_with(db: &Db, setup: Setup) -> Self {
        Self::start_signing_with(db, setup, None).await
    }

    /// [`TestIssuer::start_with`] with `[keys] signing_key` given as `signer`
    /// (`Issuer::open_with_signer`) when it is `Some`.
    pub(crate) async fn start_signing_with(
        db: &Db,
        setup: Setup,
        signer: Option<Arc<dyn Signer>>,
    ) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a loopback port");
        let port = listener.local_addr().expect("local address").port();
        let url = format!("http://127.0.0.1:{port}{}", setup.path);
        let client_key = Arc::new(key());
        let text = render_config(db, setup, &url, &client_key);
        Self::launch(
            text,
            db.dir.clone(),
            TestClock::new(),
            client_key,
            url.clone(),
            listener,
            url,
            signer,
        )
        .await
    }

    /// Another instance with the same configuration, data directory, database and clock
    /// on a port of its own, as behind a load balancer: its requests go to that port,
    /// while its issuer identifier (and so every proof's `htu`) stays this one's.
    pub(crate) async fn second_instance(&self) -> Self {
        self.second_instance_with(&self.text).await
    }

    /// The configuration text this instance runs with.
    pub(crate) fn config_text(&self) -> &str {
        &self.text
    }

    /// Another instance on the same database, data directory and clock, with another
    /// configuration (an operator's edit).
    pub(crate) async fn second_instance_with_config(&self, text: &str) -> Self {
        self.second_instance_with(text).await
    }

    /// [`TestIssuer::second_instance`] with its own data directory (its own keys), as on
    /// another machine sharing the PostgreSQL database.
    pub(crate) async fn second_machine(&self) -> Self {
        let data = self.base.join("data").display().to_string();
        let other = self.base.join("data-2").display().to_string();
        self.second_instance_with(&self.text.replace(&data, &other))
            .await
    }

    async fn second_instance_with(&self, text: &str) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a loopback port");
        let port = listener.local_addr().expect("local address").port();
        let path = self.url.splitn(4, '/').nth(3).map(|p| format!("/{p}"));
        let target = format!("http://127.0.0.1:{port}{}", path.unwrap_or_default());
        Self::launch(
            text.to_owned(),
            self.base.clone(),
            Arc::clone(&self.clock),
            Arc::clone(&self.client_key),
            self.url.clone(),
            listener,
            target,
            None,
        )
        .await
    }

    #[expect(clippy::too_many_arguments, reason = "one private constructor")]
    async fn launch(
        text: String,
        base: PathBuf,
        clock: Arc<TestClock>,
        client_key: Arc<PrivateKey>,
        url: String,
        listener: tokio::net::TcpListener,
        target: String,
        signer: Option<Arc<dyn Signer>>,
    ) -> Self {
        let port = listener.local_addr().expect("local address").port();
        let config = parse_config(&text, &base);
        let clock_dyn = Arc::clone(&clock) as Arc<dyn Clock>;
        let issuer = match signer {
            Some(signer) => Issuer::open_with_signer(config, clock_dyn, signer).await,
            None => Issuer::open_with_clock(config, clock_dyn).await,
        }
        .expect("open the issuer");
        let (shutdown, server) = serve(issuer.clone(), listener);
        Self {
            url,
            clock,
            issuer,
            client_key,
            target,
            text,
            base,
            port,
            http: reqwest::Client::builder()
                .no_proxy()
                // A fresh connection per request: a restarted issuer never meets a
                // connection pooled by its predecessor.
                .pool_max_idle_per_host(0)
                .build()
                .expect("HTTP client"),
            nonce: Mutex::new(None),
            shutdown: Some(shutdown),
            server: Some(server),
        }
    }

    /// The configuration, parsed again (for `rotate_key`, `set_client_disabled`).
    pub(crate) fn config(&self) -> IssuerConfig {
        parse_config(&self.text, &self.base)
    }

    /// Stops the server (gracefully) and closes its database pool.
    pub(crate) async fn stop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(server) = self.server.take() {
            server.await.expect("the issuer stops cleanly");
        }
    }

    /// Stops this issuer and opens a new one with the same configuration, data directory,
    /// database and port: a process restart.
    pub(crate) async fn restart(&mut self) {
        self.stop().await;
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", self.port))
            .await
            .expect("bind the same port again");
        let issuer =
            Issuer::open_with_clock(self.config(), Arc::clone(&self.clock) as Arc<dyn Clock>)
                .await
                .expect("reopen the issuer");
        let (shutdown, server) = serve(issuer.clone(), listener);
        self.issuer = issuer;
        self.shutdown = Some(shutdown);
        self.server = Some(server);
    }

    pub(crate) fn token_url(&self) -> String {
        format!("{}/token", self.url)
    }

    /// `GET {issuer}{path}`.
    pub(crate) async fn get(&self, path: &str) -> Resp {
        self.get_url(&format!("{}{path}", self.target)).await
    }

    /// `GET url`.
    pub(crate) async fn get_url(&self, url: &str) -> Resp {
        read(self.http.get(url).send().await.expect("GET")).await
    }

    /// `POST {issuer}{path}` with an exact body and content type.
    pub(crate) async fn post_raw(
        &self,
        path: &str,
        headers: &[(&str, String)],
        content_type: &str,
        body: String,
    ) -> Resp {
        let mut rb = self
            .http
            .post(format!("{}{path}", self.target))
            .header("content-type", content_type)
            .body(body);
        for (n, v) in headers {
            rb = rb.header(*n, v.as_str());
        }
        read(rb.send().await.expect("POST")).await
    }

    /// `POST {issuer}{path}`: a form authenticated with `auth`, with extra headers.
    pub(crate) async fn post(
        &self,
        path: &str,
        auth: &Auth,
        headers: &[(&str, String)],
        form: &[(&str, &str)],
    ) -> Resp {
        let mut fields: Vec<(String, String)> = form
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let mut headers: Vec<(&str, String)> = headers.to_vec();
        match auth {
            Auth::Basic(id, secret) => {
                let enc =
                    |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
                let creds = base64::engine::general_purpose::STANDARD.encode(format!(
                    "{}:{}",
                    enc(id),
                    enc(secret)
                ));
                headers.push(("authorization", format!("Basic {creds}")));
            }
            Auth::Post(id, secret) => {
                fields.push(("client_id".to_owned(), id.clone()));
                fields.push(("client_secret".to_owned(), secret.clone()));
            }
            Auth::Jwt(assertion) => {
                fields.push((
                    "client_assertion_type".to_owned(),
                    ASSERTION_TYPE.to_owned(),
                ));
                fields.push(("client_assertion".to_owned(), assertion.clone()));
            }
            Auth::Public(id) => fields.push(("client_id".to_owned(), id.clone())),
            Auth::Nothing => {}
        }
        let body: String = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(fields)
            .finish();
        self.post_raw(path, &headers, "application/x-www-form-urlencoded", body)
            .await
    }

    /// A DPoP proof by `key` at the test time.
    pub(crate) fn proof(
        &self,
        key: &PrivateKey,
        htm: &str,
        htu: &str,
        nonce: Option<&str>,
        access_token: Option<&str>,
    ) -> String {
        self.proof_at(key, htm, htu, nonce, access_token, self.clock.unix())
    }

    /// A DPoP proof by `key` with `iat` = `at`.
    pub(crate) fn proof_at(
        &self,
        key: &PrivateKey,
        htm: &str,
        htu: &str,
        nonce: Option<&str>,
        access_token: Option<&str>,
        at: UnixTime,
    ) -> String {
        let mut b = ProofBuilder::new(htm, htu).expect("proof builder");
        if let Some(n) = nonce {
            b = b.nonce(n).expect("nonce syntax");
        }
        if let Some(t) = access_token {
            b = b.access_token(t);
        }
        b.sign(key, &SystemRandomSource, at)
            .expect("sign the proof")
    }

    /// A proof for the token endpoint with the last nonce the issuer gave out.
    pub(crate) fn token_proof(&self, key: &PrivateKey) -> String {
        let nonce = self.last_nonce();
        self.proof(key, "POST", &self.token_url(), nonce.as_deref(), None)
    }

    fn last_nonce(&self) -> Option<String> {
        self.nonce.lock().expect("nonce lock").clone()
    }

    fn remember_nonce(&self, r: &Resp) {
        if let Some(n) = r.header("dpop-nonce") {
            *self.nonce.lock().expect("nonce lock") = Some(n.to_owned());
        }
    }

    /// A current nonce from the token endpoint (asked for with a proof that has none).
    pub(crate) async fn fresh_nonce(&self) -> String {
        let k = key();
        let proof = self.proof(&k, "POST", &self.token_url(), None, None);
        let r = self
            .post(
                "/token",
                &public("svc"),
                &[("dpop", proof)],
                &[("grant_type", GRANT_CC)],
            )
            .await;
        r.err(400, "use_dpop_nonce");
        self.remember_nonce(&r);
        r.header("dpop-nonce")
            .expect("DPoP-Nonce header")
            .to_owned()
    }

    /// One token request, sent as is with the given `DPoP` header values.
    pub(crate) async fn token_raw(
        &self,
        auth: &Auth,
        dpop: &[String],
        form: &[(&str, &str)],
    ) -> Resp {
        let headers: Vec<(&str, String)> = dpop.iter().map(|p| ("dpop", p.clone())).collect();
        let r = self.post("/token", auth, &headers, form).await;
        self.remember_nonce(&r);
        r
    }

    /// A token request with a proof by `key` (or none), doing the nonce round trip of
    /// RFC 9449 §8 when the issuer asks for one.
    pub(crate) async fn token(
        &self,
        auth: &Auth,
        key: Option<&PrivateKey>,
        form: &[(&str, &str)],
    ) -> Resp {
        let Some(key) = key else {
            return self.token_raw(auth, &[], form).await;
        };
        let r = self.token_raw(auth, &[self.token_proof(key)], form).await;
        if r.status == 400 && r.json()["error"] == "use_dpop_nonce" {
            assert!(
                r.header("dpop-nonce").is_some(),
                "use_dpop_nonce without DPoP-Nonce"
            );
            return self.token_raw(auth, &[self.token_proof(key)], form).await;
        }
        r
    }

    /// `client_credentials` for a confidential client (Basic), bound to `key`.
    pub(crate) async fn cc(&self, client: &str, key: &PrivateKey, form: &[(&str, &str)]) -> Resp {
        let mut all = vec![("grant_type", GRANT_CC)];
        all.extend_from_slice(form);
        self.token(&basic(client), Some(key), &all).await
    }

    /// The access token of a successful `client_credentials` request.
    pub(crate) async fn access_token(
        &self,
        client: &str,
        key: &PrivateKey,
        form: &[(&str, &str)],
    ) -> String {
        self.cc(client, key, form).await.ok()["access_token"]
            .as_str()
            .expect("access_token")
            .to_owned()
    }

    /// Token exchange of one of our own access tokens.
    pub(crate) async fn exchange(
        &self,
        auth: &Auth,
        key: Option<&PrivateKey>,
        subject_token: &str,
        form: &[(&str, &str)],
    ) -> Resp {
        let mut all = vec![
            ("grant_type", GRANT_EXCHANGE),
            ("subject_token", subject_token),
            ("subject_token_type", TT_ACCESS),
        ];
        all.extend_from_slice(form);
        self.token(auth, key, &all).await
    }

    /// `svc` obtains a refresh token: a client-credentials token (scopes `read write`),
    /// exchanged by `svc` itself. Returns (access token, refresh token).
    pub(crate) async fn svc_refresh_token(&self, key: &PrivateKey) -> (String, String) {
        let at = self
            .access_token("svc", key, &[("scope", "read write")])
            .await;
        let body = self.exchange(&basic("svc"), Some(key), &at, &[]).await.ok();
        (
            body["access_token"]
                .as_str()
                .expect("access_token")
                .to_owned(),
            body["refresh_token"]
                .as_str()
                .expect("refresh_token")
                .to_owned(),
        )
    }

    /// `public` exchanges a job token of `ci` (see [`ci_trust_toml`]) with a proof by
    /// `key`. Returns (access token, refresh token bound to `key`).
    pub(crate) async fn public_refresh_token(
        &self,
        ci: &MockIssuer,
        key: &PrivateKey,
    ) -> (String, String) {
        let mut extra = serde_json::Map::new();
        extra.insert("repository".into(), "acme/shop".into());
        let job = ci.mint(&TokenSpec {
            sub: "repo:acme/shop:ref:refs/heads/main".into(),
            aud: CI_AUD.into(),
            typ: Some("JWT".into()),
            now: Some(self.clock.secs()),
            lifetime_secs: 600,
            extra,
            ..TokenSpec::default()
        });
        let body = self
            .token(
                &public("public"),
                Some(key),
                &[
                    ("grant_type", GRANT_EXCHANGE),
                    ("subject_token", &job),
                    ("subject_token_type", TT_JWT),
                ],
            )
            .await
            .ok();
        (
            body["access_token"]
                .as_str()
                .expect("access_token")
                .to_owned(),
            body["refresh_token"]
                .as_str()
                .expect("refresh_token")
                .to_owned(),
        )
    }

    /// A refresh request.
    pub(crate) async fn refresh(
        &self,
        auth: &Auth,
        key: Option<&PrivateKey>,
        refresh_token: &str,
        form: &[(&str, &str)],
    ) -> Resp {
        let mut all = vec![
            ("grant_type", GRANT_REFRESH),
            ("refresh_token", refresh_token),
        ];
        all.extend_from_slice(form);
        self.token(auth, key, &all).await
    }

    /// Introspection by the `rs` client.
    pub(crate) async fn introspect(&self, token: &str, form: &[(&str, &str)]) -> Resp {
        let mut all = vec![("token", token)];
        all.extend_from_slice(form);
        self.post("/introspect", &basic("rs"), &[], &all).await
    }

    /// Whether `rs` sees `token` as active.
    pub(crate) async fn active(&self, token: &str) -> bool {
        let v = self.introspect(token, &[]).await.ok();
        v["active"].as_bool().expect("active is a boolean")
    }

    /// Revocation by `auth`.
    pub(crate) async fn revoke(&self, auth: &Auth, token: &str, form: &[(&str, &str)]) -> Resp {
        let mut all = vec![("token", token)];
        all.extend_from_slice(form);
        self.post("/revoke", auth, &[], &all).await
    }

    /// The published key set: the document and its parsed form.
    pub(crate) async fn jwks(&self) -> (Value, JwkSet) {
        let r = self.get("/jwks").await;
        assert_eq!(r.status, 200, "{}", r.body);
        (
            r.json(),
            JwkSet::from_json(&r.body).expect("a usable JWK set"),
        )
    }

    /// The `kid`s in `/jwks`.
    pub(crate) async fn jwks_kids(&self) -> Vec<String> {
        let (doc, _) = self.jwks().await;
        doc["keys"]
            .as_array()
            .expect("keys")
            .iter()
            .map(|k| k["kid"].as_str().expect("kid").to_owned())
            .collect()
    }

    /// Verifies one of our access tokens against `/jwks` as a resource server for `aud`
    /// would: RFC 9068 `typ`, ES256, `iss`, `aud`, `exp`.
    pub(crate) async fn verify(&self, token: &str, aud: &str) -> VerifiedJwt {
        let (_, keys) = self.jwks().await;
        let mut v = JwtValidation::new(&self.url, Some(aud));
        v.typ = TypPolicy::AtJwt;
        v.algorithms = vec![Algorithm::Es256];
        verify_jwt(token, &keys, &v, self.clock.unix())
            .unwrap_or_else(|e| panic!("the access token does not verify: {e}"))
    }

    /// A `private_key_jwt` assertion for `keyed` signed by `signer`, with `claims`
    /// merged over valid defaults (`iss` = `sub` = `keyed`, `aud` = the token endpoint,
    /// `exp` in 60 s, a random `jti`); a `null` in `claims` removes the claim.
    pub(crate) fn assertion(&self, signer: &PrivateKey, claims: &Value) -> String {
        let now = self.clock.secs();
        let mut c = json!({
            "iss": "keyed",
            "sub": "keyed",
            "aud": self.token_url(),
            "iat": now,
            "exp": now + 60,
            "jti": random_hex(16),
        });
        if let (Some(o), Some(extra)) = (c.as_object_mut(), claims.as_object()) {
            for (k, v) in extra {
                if v.is_null() {
                    o.remove(k);
                } else {
                    o.insert(k.clone(), v.clone());
                }
            }
        }
        let header = json!({ "alg": signer.algorithm().name(), "typ": "JWT" });
        dpop_test::sign_compact(signer, &header, &c).expect("sign the assertion")
    }
}

impl Drop for TestIssuer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// The configuration text of an issuer at `url` with the standard clients and `setup`,
/// on `db`.
pub(crate) fn render_config(db: &Db, setup: Setup, url: &str, client_key: &PrivateKey) -> String {
    let client_jwk = client_key.public_jwk().to_json_value().to_string();
    let mut fixture = IssuerFixture::new(url)
        .data_dir(db.dir.join("data").display())
        .database(db.url())
        .top(setup.top)
        .tokens(setup.tokens)
        .nonce(setup.nonce)
        .dpop(setup.dpop)
        .extra(setup.extra);
    for client in clients(&SECRET_HASH, &client_jwk) {
        fixture = fixture.client(client);
    }
    fixture.render()
}

/// Opens an issuer with `setup` on `db` without serving it: for configurations the
/// issuer must refuse at start.
pub(crate) async fn try_open(db: &Db, setup: Setup) -> Result<Issuer, dpop_issuer::IssuerError> {
    let text = render_config(db, setup, "http://127.0.0.1:9", &key());
    Issuer::open_with_clock(
        parse_config(&text, &db.dir),
        TestClock::new() as Arc<dyn Clock>,
    )
    .await
}

pub(crate) fn parse_config(text: &str, base: &Path) -> IssuerConfig {
    IssuerConfig::from_toml(text, base, &BTreeMap::<String, String>::new())
        .unwrap_or_else(|e| panic!("test configuration refused: {e}\n{text}"))
}

/// Why `text` is refused at load (a test that expects a refusal).
pub(crate) fn config_refusal(text: &str, base: &Path) -> String {
    match IssuerConfig::from_toml(text, base, &BTreeMap::<String, String>::new()) {
        Ok(_) => panic!("test configuration accepted:\n{text}"),
        Err(e) => e.message().to_owned(),
    }
}

async fn read(r: reqwest::Response) -> Resp {
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let body = r.text().await.expect("read the body");
    Resp {
        status,
        headers,
        body,
    }
}
