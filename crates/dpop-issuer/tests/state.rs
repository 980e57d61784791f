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
    let extra = format!(
        r#"
[[clients]]
id = "off"
secret = "{}"
grants = ["{GRANT_CC}"]
scopes = ["read"]
audiences = ["{API}"]
enabled = false
"#,
        *SECRET_HASH
    );
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
