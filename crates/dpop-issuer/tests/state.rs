//! Persistent state: a restart keeps keys, tokens, nonces and replay records; key
//! rotation publishes the old key until its tokens have expired; key files are private.

use std::os::unix::fs::PermissionsExt as _;

use serde_json::json;

use crate::support::*;

db_tests!(
    restart_keeps_keys_and_tokens,
    key_rotation,
    client_disabled_in_configuration,
    instances_sharing_a_database,
    keys_of_other_machines_are_known_at_once,
    a_rotated_key_is_known_everywhere_before_it_signs,
    admin_listener_serves_health_readiness_and_metrics,
    a_key_purged_while_its_instance_was_down_never_signs_again,
    a_key_past_its_publication_never_signs_after_a_restart,
    a_key_file_without_a_record_is_never_published,
    data_directory_and_database_files_are_private,
    loose_database_file_modes_are_tightened_at_start,
    a_key_file_left_half_written_is_deleted_at_start,
);

async fn admin_listener_serves_health_readiness_and_metrics(db: Db) {
    let admin = dpop_test::free_port();
    let it = TestIssuer::start_with(
        &db,
        Setup {
            top: format!("admin_listen = \"127.0.0.1:{admin}\""),
            ..Setup::default()
        },
    )
    .await;
    let k = key();
    it.access_token("svc", &k, &[]).await;
    it.token(
        &Auth::Basic("svc".into(), "not-the-secret-at-all".into()),
        Some(&k),
        &[("grant_type", GRANT_CC)],
    )
    .await
    .err(401, "invalid_client");
    let base = format!("http://127.0.0.1:{admin}");
    let health = dpop_test::http_get(&format!("{base}/healthz"))
        .await
        .unwrap();
    assert_eq!(health.status, 200);
    let ready = dpop_test::http_get(&format!("{base}/readyz"))
        .await
        .unwrap();
    assert_eq!(ready.status, 200);
    let metrics = dpop_test::http_get(&format!("{base}/metrics"))
        .await
        .unwrap();
    assert_eq!(metrics.status, 200);
    let text = metrics.text();
    for line in [
        "dpop_issuer_token_requests_total{grant=\"client_credentials\",result=\"issued\"} 1",
        "dpop_issuer_token_requests_total{grant=\"client_credentials\",result=\"invalid_client\"} 1",
        "dpop_issuer_token_requests_total{grant=\"client_credentials\",result=\"use_dpop_nonce\"}",
        "dpop_issuer_token_request_seconds_count",
    ] {
        assert!(text.contains(line), "{line} in\n{text}");
    }
    // Not on the public listener.
    let public = dpop_test::http_get(&format!("{}/metrics", it.url))
        .await
        .unwrap();
    assert_eq!(public.status, 404);
}

async fn restart_keeps_keys_and_tokens(db: Db) {
    let mut it = TestIssuer::start(&db).await;
    // The state really is in the database under test.
    let backend = match db.backend {
        Backend::Sqlite => dpop_issuer::store::Backend::Sqlite,
        Backend::Postgres => dpop_issuer::store::Backend::Postgres,
    };
    assert_eq!(it.issuer.store().backend(), backend);
    let k = key();
    let (at, rt) = it.svc_refresh_token(&k).await;
    assert_eq!(db.count("SELECT COUNT(*) FROM refresh_tokens").await, 1);
    let revoked = it.access_token("svc", &k, &[]).await;
    assert_eq!(it.revoke(&basic("svc"), &revoked, &[]).await.status, 200);
    let kid = it.issuer.signing_kid();
    let kids = it.jwks_kids().await;
    // A proof and a client assertion used before the restart.
    let nonce = it.fresh_nonce().await;
    let used_proof = it.proof(&k, "POST", &it.token_url(), Some(&nonce), None);
    it.token_raw(
        &basic("svc"),
        std::slice::from_ref(&used_proof),
        &[("grant_type", GRANT_CC)],
    )
    .await
    .ok();
    let assertion = it.assertion(&it.client_key, &json!({}));
    it.token(
        &Auth::Jwt(assertion.clone()),
        Some(&k),
        &[("grant_type", GRANT_CC)],
    )
    .await
    .ok();

    it.restart().await;

    assert_eq!(it.issuer.signing_kid(), kid);
    assert_eq!(it.jwks_kids().await, kids);
    assert_eq!(kids, vec![kid.clone()]);
    // Tokens from before are still good (and verify against the JWKS).
    assert!(it.active(&at).await);
    it.verify(&at, API).await;
    assert!(!it.active(&revoked).await);
    // The nonce secret is shared through the database: the old nonce still works.
    let proof = it.proof(&k, "POST", &it.token_url(), Some(&nonce), None);
    it.token_raw(&basic("svc"), &[proof], &[("grant_type", GRANT_CC)])
        .await
        .ok();
    // Replays are still refused.
    it.token_raw(&basic("svc"), &[used_proof], &[("grant_type", GRANT_CC)])
        .await
        .err(400, "invalid_dpop_proof");
    it.token(&Auth::Jwt(assertion), Some(&k), &[("grant_type", GRANT_CC)])
        .await
        .err(401, "invalid_client");
    // The refresh token works, once.
    let body = it.refresh(&basic("svc"), Some(&k), &rt, &[]).await.ok();
    assert_eq!(
        decode(body["access_token"].as_str().unwrap()).0["kid"],
        json!(kid)
    );
    it.refresh(&basic("svc"), Some(&k), &rt, &[])
        .await
        .err(400, "invalid_grant");

    // A second restart, after a stop that closed the database.
    it.restart().await;
    assert_eq!(it.issuer.signing_kid(), kid);
    it.cc("svc", &k, &[]).await.ok();
}

fn mode(path: &std::path::Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

async fn key_rotation(db: Db) {
    let it = TestIssuer::start(&db).await;
    let keys_dir = db.dir.join("data").join("keys");
    let k = key();
    let kid1 = it.issuer.signing_kid();
    assert_eq!(mode(&keys_dir), 0o700);
    assert_eq!(mode(&keys_dir.join(format!("{kid1}.pem"))), 0o600);
    let old = it.access_token("svc", &k, &[]).await;

    let kid2 = dpop_issuer::rotate_key(
        &it.config(),
        it.clock.unix(),
        dpop_issuer::DEFAULT_KEY_ACTIVATION,
    )
    .await
    .unwrap();
    assert_ne!(kid1, kid2);
    assert_eq!(mode(&keys_dir.join(format!("{kid2}.pem"))), 0o600);
    assert_eq!(mode(&keys_dir), 0o700);

    // Published at once, signing only after the activation delay.
    it.issuer.maintain().await.unwrap();
    let mut kids = it.jwks_kids().await;
    kids.sort();
    let mut both = vec![kid1.clone(), kid2.clone()];
    both.sort();
    assert_eq!(kids, both);
    assert_eq!(it.issuer.signing_kid(), kid1);
    let before = it.access_token("svc", &k, &[]).await;
    assert_eq!(decode(&before).0["kid"], json!(kid1));

    // At activation the new key signs (no reload needed) and the old one retires.
    it.clock.advance(60);
    assert_eq!(it.issuer.signing_kid(), kid2);
    let new = it.access_token("svc", &k, &[]).await;
    assert_eq!(decode(&new).0["kid"], json!(kid2));
    it.issuer.maintain().await.unwrap();
    // The retired private key is gone; its public half is still published.
    assert!(!keys_dir.join(format!("{kid1}.pem")).exists());
    assert_eq!(it.jwks_kids().await.len(), 2);
    it.verify(&new, API).await;
    it.verify(&old, API).await;
    assert!(it.active(&old).await);
    assert!(it.active(&new).await);

    // Past the longest access token lifetime, a minute and a maintenance interval after
    // the retirement, the old key leaves the JWKS.
    it.clock.advance(300 + 60 + 30 + 1);
    it.issuer.maintain().await.unwrap();
    assert_eq!(it.jwks_kids().await, vec![kid2.clone()]);
    // The retired key's record was purged.
    assert_eq!(db.count("SELECT COUNT(*) FROM signing_keys").await, 1);
    assert_eq!(it.issuer.signing_kid(), kid2);
    let newest = it.access_token("svc", &k, &[]).await;
    assert!(it.active(&newest).await);
}

async fn client_disabled_in_configuration(db: Db) {
    let extra = ClientFixture::confidential("off", &*SECRET_HASH)
        .grants([GRANT_CC])
        .scopes(["read"])
        .audiences([API])
        .line("enabled = false")
        .render();
    let it = TestIssuer::start_with(
        &db,
        Setup {
            extra,
            ..Setup::default()
        },
    )
    .await;
    let k = key();
    it.cc("off", &k, &[]).await.err(401, "invalid_client");
    it.cc("svc", &k, &[]).await.ok();
}

async fn instances_sharing_a_database(db: Db) {
    let a = TestIssuer::start(&db).await;
    let b = a.second_instance().await;
    let k = key();
    assert_eq!(a.issuer.signing_kid(), b.issuer.signing_kid());

    // A nonce from one instance is good at the other.
    let nonce = a.fresh_nonce().await;
    let proof = b.proof(&k, "POST", &b.token_url(), Some(&nonce), None);
    b.token_raw(
        &basic("svc"),
        std::slice::from_ref(&proof),
        &[("grant_type", GRANT_CC)],
    )
    .await
    .ok();
    // A proof used at one is a replay at the other.
    a.token_raw(&basic("svc"), &[proof], &[("grant_type", GRANT_CC)])
        .await
        .err(400, "invalid_dpop_proof");
    // So is a client assertion.
    let assertion = a.assertion(&a.client_key, &serde_json::json!({}));
    a.token(
        &Auth::Jwt(assertion.clone()),
        Some(&k),
        &[("grant_type", GRANT_CC)],
    )
    .await
    .ok();
    b.token(&Auth::Jwt(assertion), Some(&k), &[("grant_type", GRANT_CC)])
        .await
        .err(401, "invalid_client");

    // Tokens from one introspect at the other; a revocation at one is seen by both.
    let token = a.access_token("svc", &k, &[]).await;
    assert!(b.active(&token).await);
    assert_eq!(b.revoke(&basic("svc"), &token, &[]).await.status, 200);
    assert!(!a.active(&token).await);

    // A refresh token rotated at one instance and reused at the other revokes the family.
    let (_, rt1) = a.svc_refresh_token(&k).await;
    let rt2 = b.refresh(&basic("svc"), Some(&k), &rt1, &[]).await.ok()["refresh_token"]
        .as_str()
        .unwrap()
        .to_owned();
    a.refresh(&basic("svc"), Some(&k), &rt1, &[])
        .await
        .err(400, "invalid_grant");
    b.refresh(&basic("svc"), Some(&k), &rt2, &[])
        .await
        .err(400, "invalid_grant");

    // Disabling a client reaches both at once.
    dpop_issuer::set_client_disabled(&a.config(), "svc2", true, a.clock.unix())
        .await
        .unwrap();
    a.cc("svc2", &k, &[]).await.err(401, "invalid_client");
    b.cc("svc2", &k, &[]).await.err(401, "invalid_client");

    // After a rotation both sign with the new key once they have reloaded.
    let kid2 = dpop_issuer::rotate_key(&a.config(), a.clock.unix(), std::time::Duration::ZERO)
        .await
        .unwrap();
    a.issuer.maintain().await.unwrap();
    b.issuer.maintain().await.unwrap();
    assert_eq!(a.issuer.signing_kid(), kid2);
    assert_eq!(b.issuer.signing_kid(), kid2);
    let from_b = b.access_token("svc", &k, &[]).await;
    assert!(a.active(&from_b).await);
    assert_eq!(a.jwks_kids().await.len(), 2);
    assert_eq!(b.jwks_kids().await.len(), 2);
}

async fn keys_of_other_machines_are_known_at_once(db: Db) {
    // Instances on different machines (their own data directories) share PostgreSQL:
    // the second one holds no private half of the first one's key, so it makes its
    // own. Each instance's tokens must be good at the other at once: both keys in
    // both JWKS, and introspection knowing both.
    let a = TestIssuer::start(&db).await;
    let b = a.second_machine().await;
    let k = key();
    let (kid_a, kid_b) = (a.issuer.signing_kid(), b.issuer.signing_kid());
    assert_ne!(kid_a, kid_b);
    let from_b = b.access_token("svc", &k, &[]).await;
    assert!(
        a.active(&from_b).await,
        "a token signed by b is inactive at a"
    );
    let mut kids = vec![kid_a, kid_b];
    kids.sort();
    for it in [&a, &b] {
        let mut published = it.jwks_kids().await;
        published.sort();
        assert_eq!(published, kids, "{} does not publish every key", it.url);
    }
}

async fn a_rotated_key_is_known_everywhere_before_it_signs(db: Db) {
    // One data directory, two instances, `rotate_key`: whichever instance reloads
    // first signs with the new key; the others must already accept and publish it.
    let a = TestIssuer::start(&db).await;
    let b = a.second_instance().await;
    let k = key();
    let new_kid = dpop_issuer::rotate_key(
        &a.config(),
        a.clock.unix(),
        dpop_issuer::DEFAULT_KEY_ACTIVATION,
    )
    .await
    .unwrap();
    b.issuer.maintain().await.unwrap();
    // Before activation everyone already publishes it; nobody signs with it.
    assert!(a.jwks_kids().await.contains(&new_kid));
    assert_ne!(b.issuer.signing_kid(), new_kid);
    a.clock.advance(60);
    let from_b = b.access_token("svc", &k, &[]).await;
    assert_eq!(decode(&from_b).0["kid"], serde_json::json!(new_kid));
    assert!(
        a.active(&from_b).await,
        "a token signed by b is inactive at a"
    );
    assert!(
        a.jwks_kids().await.contains(&new_kid),
        "a does not publish b's signing key"
    );
}

/// Collects the error events (or, with [`ErrorLog::install_at`], those at a level or
/// above) logged on this thread while it is installed (the issuer loads its keys on the
/// thread that awaits `Issuer::open`), as `field=value` text.
struct ErrorLog(
    std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    tracing::Level,
);

impl ErrorLog {
    fn install() -> (
        std::sync::Arc<std::sync::Mutex<Vec<String>>>,
        tracing::subscriber::DefaultGuard,
    ) {
        Self::install_at(tracing::Level::ERROR)
    }

    fn install_at(
        level: tracing::Level,
    ) -> (
        std::sync::Arc<std::sync::Mutex<Vec<String>>>,
        tracing::subscriber::DefaultGuard,
    ) {
        let lines = std::sync::Arc::default();
        let guard = tracing::subscriber::set_default(Self(std::sync::Arc::clone(&lines), level));
        (lines, guard)
    }
}

impl tracing::Subscriber for ErrorLog {
    fn register_callsite(
        &self,
        _: &'static tracing::Metadata<'static>,
    ) -> tracing::subscriber::Interest {
        tracing::subscriber::Interest::sometimes()
    }

    fn enabled(&self, metadata: &tracing::Metadata<'_>) -> bool {
        *metadata.level() <= self.1
    }

    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }

    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}

    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}

    fn event(&self, event: &tracing::Event<'_>) {
        struct Text(String);
        impl tracing::field::Visit for Text {
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                self.0.push_str(&format!("{}={value:?} ", field.name()));
            }
        }
        let mut text = Text(String::new());
        event.record(&mut text);
        self.0.lock().unwrap().push(text.0);
    }

    fn enter(&self, _: &tracing::span::Id) {}

    fn exit(&self, _: &tracing::span::Id) {}
}

/// Whether one of `lines` is about `kid`.
fn logged(lines: &std::sync::Mutex<Vec<String>>, kid: &str) -> bool {
    lines
        .lock()
        .unwrap()
        .iter()
        .any(|l| l.contains(&format!("kid={kid:?}")) || l.contains(&format!("kid={kid} ")))
}

/// The `kid`s in the database's key table (published or not).
async fn recorded_kids(db: &Db, kid: &str) -> i64 {
    db.count(&format!(
        "SELECT COUNT(*) FROM signing_keys WHERE kid = '{kid}'"
    ))
    .await
}

async fn a_key_purged_while_its_instance_was_down_never_signs_again(db: Db) {
    // Two instances on one database, each with its own data directory. The second is
    // stopped through a rotation and the purge of the keys it retired; when it comes
    // back, its old key file must not bring the retired key back.
    let a = TestIssuer::start(&db).await;
    let mut b = a.second_machine().await;
    let b_keys = db.dir.join("data-2").join("keys");
    let old = b.issuer.signing_kid();
    assert!(b_keys.join(format!("{old}.pem")).exists());
    b.stop().await;

    let new = dpop_issuer::rotate_key(
        &a.config(),
        a.clock.unix(),
        dpop_issuer::DEFAULT_KEY_ACTIVATION,
    )
    .await
    .unwrap();
    a.issuer.maintain().await.unwrap();
    a.clock.advance(60);
    a.issuer.maintain().await.unwrap();
    // Past the retired keys' publication: the purge deletes their records.
    a.clock.advance(300 + 60 + 30 + 1);
    a.issuer.maintain().await.unwrap();
    assert_eq!(recorded_kids(&db, &old).await, 0);
    assert_eq!(a.jwks_kids().await, vec![new.clone()]);

    let (errors, guard) = ErrorLog::install();
    b.restart().await;
    drop(guard);
    assert!(
        logged(&errors, &old),
        "no error naming {old}: {:?}",
        errors.lock().unwrap()
    );
    let signing = b.issuer.signing_kid();
    assert_ne!(signing, old, "the purged key signs again");
    assert!(
        !b_keys.join(format!("{old}.pem")).exists(),
        "the purged key's file is still there"
    );
    let k = key();
    let token = b.access_token("svc", &k, &[]).await;
    assert_eq!(decode(&token).0["kid"], json!(signing));
    for it in [&a, &b] {
        assert!(
            !it.jwks_kids().await.contains(&old),
            "{} publishes the purged key again",
            it.url
        );
    }
    assert_eq!(recorded_kids(&db, &old).await, 0);
    // The key it signs with now is published everywhere.
    b.verify(&token, API).await;
    a.verify(&token, API).await;
    assert!(a.active(&token).await);
    b.issuer.maintain().await.unwrap();
    assert_eq!(b.issuer.signing_kid(), signing);
}

async fn a_key_past_its_publication_never_signs_after_a_restart(db: Db) {
    // One instance, stopped through a rotation and past the end of the old key's
    // publication (no instance ran the purge meanwhile).
    let mut it = TestIssuer::start(&db).await;
    let keys_dir = db.dir.join("data").join("keys");
    let old = it.issuer.signing_kid();
    it.stop().await;
    let new = dpop_issuer::rotate_key(
        &it.config(),
        it.clock.unix(),
        dpop_issuer::DEFAULT_KEY_ACTIVATION,
    )
    .await
    .unwrap();
    it.clock.advance(60 + 300 + 60 + 30 + 1);

    let (errors, guard) = ErrorLog::install();
    it.restart().await;
    drop(guard);
    assert!(
        logged(&errors, &old),
        "no error naming {old}: {:?}",
        errors.lock().unwrap()
    );
    assert_eq!(it.issuer.signing_kid(), new);
    let k = key();
    let token = it.access_token("svc", &k, &[]).await;
    assert_eq!(decode(&token).0["kid"], json!(new));
    it.verify(&token, API).await;
    assert_eq!(it.jwks_kids().await, vec![new.clone()]);
    assert!(!keys_dir.join(format!("{old}.pem")).exists());
    // The purge does not bring it back either.
    it.issuer.maintain().await.unwrap();
    assert_eq!(it.issuer.signing_kid(), new);
    assert_eq!(it.jwks_kids().await, vec![new]);
    assert_eq!(recorded_kids(&db, &old).await, 0);
}

async fn a_key_file_without_a_record_is_never_published(db: Db) {
    // A private key file the database has no record of (restored from a backup,
    // copied from elsewhere) is never published and never signs.
    let mut it = TestIssuer::start(&db).await;
    let keys_dir = db.dir.join("data").join("keys");
    let current = it.issuer.signing_kid();
    it.stop().await;
    let stray = dpop_core::PrivateKey::generate(dpop_core::Algorithm::Es256).unwrap();
    let stray_kid = jkt(&stray);
    let path = keys_dir.join(format!("{stray_kid}.pem"));
    std::fs::write(&path, stray.to_pkcs8_pem().unwrap().as_bytes()).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();

    let (errors, guard) = ErrorLog::install();
    it.restart().await;
    drop(guard);
    assert!(
        logged(&errors, &stray_kid),
        "no error naming {stray_kid}: {:?}",
        errors.lock().unwrap()
    );
    assert_eq!(it.issuer.signing_kid(), current);
    assert!(!path.exists(), "the stray key file is still there");
    assert_eq!(it.jwks_kids().await, vec![current.clone()]);
    assert_eq!(recorded_kids(&db, &stray_kid).await, 0);
    let k = key();
    let token = it.access_token("svc", &k, &[]).await;
    assert_eq!(decode(&token).0["kid"], json!(current));
}

/// The SQLite file of a test database, if it is one.
fn sqlite_file(db: &Db) -> Option<std::path::PathBuf> {
    (db.backend == Backend::Sqlite).then(|| db.dir.join("state").join("issuer.db"))
}

async fn data_directory_and_database_files_are_private(db: Db) {
    let it = TestIssuer::start(&db).await;
    let k = key();
    it.access_token("svc", &k, &[]).await;
    assert_eq!(mode(&db.dir.join("data")), 0o700);
    assert_eq!(mode(&db.dir.join("data").join("keys")), 0o700);
    if let Some(file) = sqlite_file(&db) {
        assert_eq!(mode(file.parent().unwrap()), 0o700);
        assert_eq!(mode(&file), 0o600);
        // WAL mode: the log and the shared-memory index exist while the pool is open.
        for suffix in ["-wal", "-shm"] {
            let side = std::path::PathBuf::from(format!("{}{suffix}", file.display()));
            assert!(side.exists(), "{}", side.display());
            assert_eq!(mode(&side), 0o600, "{}", side.display());
        }
    }
}

async fn loose_database_file_modes_are_tightened_at_start(db: Db) {
    let mut it = TestIssuer::start(&db).await;
    it.stop().await;
    let data = db.dir.join("data");
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
    let sides: Vec<std::path::PathBuf> = sqlite_file(&db)
        .map(|file| {
            ["", "-wal", "-shm", "-journal"]
                .iter()
                .map(|s| std::path::PathBuf::from(format!("{}{s}", file.display())))
                .collect()
        })
        .unwrap_or_default();
    for side in &sides {
        if !side.exists() {
            std::fs::write(side, b"").unwrap();
        }
        std::fs::set_permissions(side, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    it.restart().await;
    it.cc("svc", &key(), &[]).await.ok();
    assert_eq!(mode(&data), 0o700);
    for side in &sides {
        if side.exists() {
            assert_eq!(mode(side), 0o600, "{}", side.display());
        }
    }
}

async fn a_key_file_left_half_written_is_deleted_at_start(db: Db) {
    // A crash between writing a new key file (under a temporary name) and renaming it
    // into place leaves `<kid>.pem.new`: a private key nothing uses. The next start
    // deletes it and says so.
    let mut it = TestIssuer::start(&db).await;
    let keys_dir = db.dir.join("data").join("keys");
    let current = it.issuer.signing_kid();
    it.stop().await;
    let orphan = dpop_core::PrivateKey::generate(dpop_core::Algorithm::Es256).unwrap();
    let path = keys_dir.join(format!("{}.pem.new", jkt(&orphan)));
    std::fs::write(&path, orphan.to_pkcs8_pem().unwrap().as_bytes()).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    // Written well before this start (a rename follows the write at once).
    std::fs::File::options()
        .write(true)
        .open(&path)
        .unwrap()
        .set_modified(std::time::SystemTime::now() - std::time::Duration::from_secs(3600))
        .unwrap();

    let (warnings, guard) = ErrorLog::install_at(tracing::Level::WARN);
    it.restart().await;
    drop(guard);
    assert!(!path.exists(), "{} is still there", path.display());
    let name = path.display().to_string();
    assert!(
        warnings.lock().unwrap().iter().any(|l| l.contains(&name)),
        "no warning naming {name}: {:?}",
        warnings.lock().unwrap()
    );
    assert_eq!(it.issuer.signing_kid(), current);
    it.access_token("svc", &key(), &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sqlite_file_made_private_is_the_one_sqlite_opens() {
    // `conf` is a symbolic link to `real/conf`, so `conf/..` is `real` to the kernel,
    // while a URL parser removes `conf/..` as text. The database path has one meaning.
    let db = Db::sqlite();
    let base = db.dir.join("links");
    std::fs::create_dir_all(base.join("real").join("conf")).unwrap();
    std::os::unix::fs::symlink(base.join("real").join("conf"), base.join("conf")).unwrap();
    let config = |database: &str| {
        dpop_issuer::IssuerConfig::from_toml(
            &format!(
                "issuer = \"https://issuer.test\"\ndatabase = \"{database}\"\n\
                 data_dir = \"data\"\n"
            ),
            &base,
            &std::collections::BTreeMap::<String, String>::new(),
        )
    };
    let loaded = config("sqlite://conf/../issuer.db").unwrap();
    eprintln!("database {}", loaded.database);
    let store = dpop_issuer::Store::connect(&loaded.database).await.unwrap();
    store.setting_or_init("x", "y").await.unwrap();
    let made = base.join("real").join("issuer.db");
    assert_eq!(mode(&made), 0o600);
    assert!(
        !base.join("issuer.db").exists(),
        "SQLite opened another file than the one made private"
    );
    store.close().await;
    assert!(!loaded.database.contains(".."), "{}", loaded.database);
    // `%` means one thing to a URL and another to a file name: refused.
    let e = config("sqlite://odd%2Fname.db").unwrap_err().to_string();
    assert!(e.contains('%'), "{e}");
    // So is a URL with `..` given to the store directly.
    let url = format!("sqlite://{}/conf/../other.db?mode=rwc", base.display());
    let e = dpop_issuer::Store::connect(&url)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains(".."), "{e}");
    assert!(!base.join("other.db").exists());
}
