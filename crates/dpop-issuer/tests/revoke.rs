//! Revocation (RFC 7009) and offboarding: access tokens, refresh families, other clients'
//! tokens, unknown tokens and hints, disabling a client.

use serde_json::json;

use crate::support::*;

db_tests!(
    revoke_access_token,
    revoke_refresh_token_revokes_the_family,
    public_client_revokes_its_refresh_token,
    revoke_refused_for_other_clients_tokens,
    revoke_unknown_tokens_and_hints,
    disabling_a_client_revokes_its_tokens,
    disable_subject_client_revokes_derived_tokens_and_families,
    revoking_a_family_revokes_tokens_derived_from_it,
    revoking_an_access_token_revokes_tokens_derived_from_it,
    purge_does_not_revive_tokens_of_a_revoked_family,
);

async fn revoke_access_token(db: Db) {
    let it = TestIssuer::start(&db).await;
    let k = key();
    let token = it.access_token("svc", &k, &[]).await;
    let other = it.access_token("svc", &k, &[]).await;
    let r = it
        .revoke(
            &basic("svc"),
            &token,
            &[("token_type_hint", "access_token")],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("cache-control"), Some("no-store"));
    assert!(!it.active(&token).await);
    // Only that token.
    assert!(it.active(&other).await);
    // Revoking again is fine.
    assert_eq!(it.revoke(&basic("svc"), &token, &[]).await.status, 200);
    // client_secret_post works too; a wrong hint is only a hint.
    let r = it
        .revoke(
            &post("svc"),
            &other,
            &[("token_type_hint", "refresh_token")],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(!it.active(&other).await);
    // Authentication is required.
    let fresh = it.access_token("svc", &k, &[]).await;
    it.revoke(&Auth::Nothing, &fresh, &[])
        .await
        .err(401, "invalid_client");
    it.revoke(
        &Auth::Basic("svc".into(), "wrong-secret-value".into()),
        &fresh,
        &[],
    )
    .await
    .err(401, "invalid_client");
    assert!(it.active(&fresh).await);
}

async fn revoke_refresh_token_revokes_the_family(db: Db) {
    let it = TestIssuer::start(&db).await;
    let k = key();

    // Revoking the current refresh token.
    let (at1, rt1) = it.svc_refresh_token(&k).await;
    let body = it.refresh(&basic("svc"), Some(&k), &rt1, &[]).await.ok();
    let at2 = body["access_token"].as_str().unwrap().to_owned();
    let rt2 = body["refresh_token"].as_str().unwrap().to_owned();
    let r = it
        .revoke(&basic("svc"), &rt2, &[("token_type_hint", "refresh_token")])
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("cache-control"), Some("no-store"));
    it.refresh(&basic("svc"), Some(&k), &rt2, &[])
        .await
        .err(400, "invalid_grant");
    // The access tokens it minted are inactive at once for introspection (RFC 7009
    // §2.1); a resource server verifying them locally accepts them until they expire.
    assert!(!it.active(&at1).await);
    assert!(!it.active(&at2).await);

    // Revoking an already rotated refresh token revokes the newest one too.
    let (_, first) = it.svc_refresh_token(&k).await;
    let newest = it.refresh(&basic("svc"), Some(&k), &first, &[]).await.ok()["refresh_token"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(it.revoke(&basic("svc"), &first, &[]).await.status, 200);
    it.refresh(&basic("svc"), Some(&k), &newest, &[])
        .await
        .err(400, "invalid_grant");
}

/// A public client revokes its own refresh token (client_id only).
async fn public_client_revokes_its_refresh_token(db: Db) {
    let ci = dpop_test::MockIssuer::start().await.unwrap();
    let it = start_trusting(&db, &ci).await;
    let k = key();
    let (at, prt) = it.public_refresh_token(&ci, &k).await;
    assert!(it.active(&at).await);
    assert_eq!(it.revoke(&public("public"), &prt, &[]).await.status, 200);
    it.refresh(&public("public"), Some(&k), &prt, &[])
        .await
        .err(400, "invalid_grant");
    assert!(!it.active(&at).await);
}

async fn revoke_refused_for_other_clients_tokens(db: Db) {
    let it = TestIssuer::start(&db).await;
    let k = key();
    let token = it.access_token("svc", &k, &[]).await;
    it.revoke(&basic("svc2"), &token, &[])
        .await
        .err(400, "unauthorized_client");
    it.revoke(&basic("rs"), &token, &[])
        .await
        .err(400, "unauthorized_client");
    assert!(it.active(&token).await);

    let (_, rt) = it.svc_refresh_token(&k).await;
    it.revoke(&basic("svc2"), &rt, &[])
        .await
        .err(400, "unauthorized_client");
    it.revoke(&public("public"), &rt, &[])
        .await
        .err(400, "unauthorized_client");
    // Still usable by its owner.
    it.refresh(&basic("svc"), Some(&k), &rt, &[]).await.ok();
}

async fn revoke_unknown_tokens_and_hints(db: Db) {
    let it = TestIssuer::start(&db).await;
    let k = key();
    let stranger = key();
    let foreign = dpop_test::sign_compact(
        &stranger,
        &json!({ "alg": "ES256", "typ": "at+jwt" }),
        &json!({ "iss": "https://elsewhere.example", "sub": "x", "exp": it.clock.secs() + 60 }),
    )
    .unwrap();
    for unknown in [
        "garbage",
        "dpoprt_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        foreign.as_str(),
    ] {
        let r = it.revoke(&basic("svc"), unknown, &[]).await;
        assert_eq!(r.status, 200, "{unknown}: {}", r.body);
    }
    let token = it.access_token("svc", &k, &[]).await;
    it.revoke(&basic("svc"), &token, &[("token_type_hint", "id_token")])
        .await
        .err(400, "unsupported_token_type");
    assert!(it.active(&token).await);
    // No token parameter.
    it.revoke(&basic("svc"), "", &[])
        .await
        .err(400, "invalid_request");
}

async fn disabling_a_client_revokes_its_tokens(db: Db) {
    let it = TestIssuer::start(&db).await;
    let k = key();
    let (at, rt) = it.svc_refresh_token(&k).await;
    let cc_token = it.access_token("svc", &k, &[]).await;
    let svc2_token = it.access_token("svc2", &k, &[]).await;
    assert!(it.active(&at).await);

    dpop_issuer::set_client_disabled(&it.config(), "svc", true, it.clock.unix())
        .await
        .unwrap();
    // At once, on the running instance: its tokens are inactive, it is refused.
    assert!(!it.active(&at).await);
    assert!(!it.active(&cc_token).await);
    it.cc("svc", &k, &[]).await.err(401, "invalid_client");
    it.refresh(&basic("svc"), Some(&k), &rt, &[])
        .await
        .err(401, "invalid_client");
    it.post("/introspect", &basic("svc"), &[], &[("token", &rt)])
        .await
        .err(401, "invalid_client");
    // Other clients are unaffected.
    assert!(it.active(&svc2_token).await);
    // Its tokens cannot be exchanged by another client.
    it.exchange(&basic("svc2"), Some(&k), &at, &[])
        .await
        .err(400, "invalid_grant");

    // Re-enabled: it authenticates again, but what it held before stays revoked.
    it.clock.advance(1);
    dpop_issuer::set_client_disabled(&it.config(), "svc", false, it.clock.unix())
        .await
        .unwrap();
    it.refresh(&basic("svc"), Some(&k), &rt, &[])
        .await
        .err(400, "invalid_grant");
    assert!(!it.active(&at).await);
    assert!(!it.active(&cc_token).await);
    let fresh = it.access_token("svc", &k, &[]).await;
    assert!(it.active(&fresh).await);
}

/// Disabling a client reaches every token and refresh grant derived from its tokens by
/// exchange, at once, whichever client holds them.
async fn disable_subject_client_revokes_derived_tokens_and_families(db: Db) {
    let it = TestIssuer::start(&db).await;
    let k = key();
    let subject = it.access_token("svc", &k, &[]).await;
    // svc2 acts for svc, and gets a refresh grant for it.
    let body = it
        .exchange(&basic("svc2"), Some(&k), &subject, &[])
        .await
        .ok();
    let derived = body["access_token"].as_str().unwrap().to_owned();
    let rt = body["refresh_token"].as_str().unwrap().to_owned();
    let body = it.refresh(&basic("svc2"), Some(&k), &rt, &[]).await.ok();
    let refreshed = body["access_token"].as_str().unwrap().to_owned();
    let rt = body["refresh_token"].as_str().unwrap().to_owned();
    // A second generation: svc2 down-scopes its delegated token.
    let grandchild = it
        .exchange(&basic("svc2"), Some(&k), &derived, &[])
        .await
        .ok()["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let svc2_own = it.access_token("svc2", &k, &[]).await;
    for t in [&derived, &refreshed, &grandchild] {
        assert!(it.active(t).await);
    }

    dpop_issuer::set_client_disabled(&it.config(), "svc", true, it.clock.unix())
        .await
        .unwrap();
    // At once: whatever derives from svc's token is inactive, the grant is refused.
    for t in [&derived, &refreshed, &grandchild] {
        assert!(!it.active(t).await, "{}", decode(t).1);
    }
    let v = it
        .post("/introspect", &basic("svc2"), &[], &[("token", &rt)])
        .await
        .ok();
    assert_eq!(v, json!({ "active": false }));
    it.refresh(&basic("svc2"), Some(&k), &rt, &[])
        .await
        .err(400, "invalid_grant");
    it.exchange(&basic("svc2"), Some(&k), &derived, &[])
        .await
        .err(400, "invalid_grant");
    // svc2's own tokens are not svc's.
    assert!(it.active(&svc2_own).await);

    // Re-enabled, svc gets new tokens; what derived from its old ones stays revoked.
    it.clock.advance(1);
    dpop_issuer::set_client_disabled(&it.config(), "svc", false, it.clock.unix())
        .await
        .unwrap();
    for t in [&derived, &refreshed, &grandchild] {
        assert!(!it.active(t).await);
    }
    it.refresh(&basic("svc2"), Some(&k), &rt, &[])
        .await
        .err(400, "invalid_grant");
}

/// Revoking a refresh grant revokes its access tokens and what was exchanged from them.
async fn revoking_a_family_revokes_tokens_derived_from_it(db: Db) {
    let it = TestIssuer::start(&db).await;
    let k = key();
    let (first, rt) = it.svc_refresh_token(&k).await;
    let body = it.refresh(&basic("svc"), Some(&k), &rt, &[]).await.ok();
    let minted = body["access_token"].as_str().unwrap().to_owned();
    let rt = body["refresh_token"].as_str().unwrap().to_owned();
    let body = it
        .exchange(&basic("svc2"), Some(&k), &minted, &[])
        .await
        .ok();
    let derived = body["access_token"].as_str().unwrap().to_owned();
    let derived_rt = body["refresh_token"].as_str().unwrap().to_owned();
    let unrelated = it.access_token("svc", &k, &[]).await;
    for t in [&first, &minted, &derived] {
        assert!(it.active(t).await);
    }

    assert_eq!(it.revoke(&basic("svc"), &rt, &[]).await.status, 200);
    for t in [&first, &minted, &derived] {
        assert!(!it.active(t).await, "{}", decode(t).1);
    }
    it.refresh(&basic("svc2"), Some(&k), &derived_rt, &[])
        .await
        .err(400, "invalid_grant");
    it.exchange(&basic("svc2"), Some(&k), &minted, &[])
        .await
        .err(400, "invalid_grant");
    assert!(it.active(&unrelated).await);
}

/// Revoking an access token revokes what was exchanged from it.
async fn revoking_an_access_token_revokes_tokens_derived_from_it(db: Db) {
    let it = TestIssuer::start(&db).await;
    let k = key();
    let subject = it.access_token("svc", &k, &[]).await;
    let body = it
        .exchange(&basic("svc2"), Some(&k), &subject, &[])
        .await
        .ok();
    let derived = body["access_token"].as_str().unwrap().to_owned();
    let derived_rt = body["refresh_token"].as_str().unwrap().to_owned();
    let down_scoped = it
        .exchange(&basic("svc"), Some(&k), &subject, &[])
        .await
        .ok()["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(it.active(&derived).await);

    assert_eq!(it.revoke(&basic("svc"), &subject, &[]).await.status, 200);
    assert!(!it.active(&derived).await);
    assert!(!it.active(&down_scoped).await);
    it.refresh(&basic("svc2"), Some(&k), &derived_rt, &[])
        .await
        .err(400, "invalid_grant");

    // Past the subject token's expiry, its revocation stays on record while a grant
    // derived from it lives; another expired revocation goes.
    let lone = it.access_token("svc", &k, &[]).await;
    assert_eq!(it.revoke(&basic("svc"), &lone, &[]).await.status, 200);
    it.clock.advance(301);
    it.issuer.maintain().await.unwrap();
    assert_eq!(
        db.count("SELECT COUNT(*) FROM revoked_access_tokens").await,
        1
    );
    it.refresh(&basic("svc2"), Some(&k), &derived_rt, &[])
        .await
        .err(400, "invalid_grant");
}

/// A refresh family revoked shortly before its absolute expiry is purged once expired;
/// neither its access tokens nor those exchanged from them come back to life, and none
/// can be exchanged into a new grant. Its access tokens end with it, and a family that
/// is no longer on record counts as revoked.
async fn purge_does_not_revive_tokens_of_a_revoked_family(db: Db) {
    let it = TestIssuer::start_with(
        &db,
        Setup {
            tokens: "refresh_token_absolute_secs = 1000\nrefresh_token_idle_secs = 1000\n".into(),
            extra: ClientFixture::confidential("delegate", &*SECRET_HASH)
                .grants([GRANT_EXCHANGE])
                .scopes(["read"])
                .audiences([API])
                .may_exchange_for(["svc"])
                .render(),
            ..Setup::default()
        },
    )
    .await;
    let k = key();
    let (_, rt) = it.svc_refresh_token(&k).await;
    let family_expires = it.clock.secs() + 1000;
    it.clock.advance(990);
    let body = it.refresh(&basic("svc"), Some(&k), &rt, &[]).await.ok();
    let at = body["access_token"].as_str().unwrap().to_owned();
    let rt = body["refresh_token"].as_str().unwrap().to_owned();
    // The access token ends with its grant, not 300 s later.
    assert_eq!(body["expires_in"], json!(10), "{body}");
    assert_eq!(decode(&at).1["exp"], json!(family_expires));
    let derived = it
        .exchange(&basic("delegate"), Some(&k), &at, &[])
        .await
        .ok()["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(it.revoke(&basic("svc"), &rt, &[]).await.status, 200);
    assert!(!it.active(&at).await);
    assert!(!it.active(&derived).await);

    it.clock.advance(20);
    it.issuer.maintain().await.unwrap();
    assert_eq!(db.count("SELECT COUNT(*) FROM refresh_families").await, 0);
    assert!(!it.active(&at).await);
    assert!(!it.active(&derived).await);
    it.exchange(&basic("svc"), Some(&k), &at, &[])
        .await
        .err(400, "invalid_grant");

    // A family purged by an instance whose clock runs ahead: its live tokens are not
    // taken for tokens of a family that was never revoked.
    let (at, _) = it.svc_refresh_token(&k).await;
    assert!(it.active(&at).await);
    db.execute(&["DELETE FROM refresh_tokens", "DELETE FROM refresh_families"])
        .await;
    assert!(!it.active(&at).await);
    it.exchange(&basic("delegate"), Some(&k), &at, &[])
        .await
        .err(400, "invalid_grant");
}

/// A grant created by an exchange that authenticated just before its client was
/// disabled (its family stored after the disabling revoked the client's families) is
/// refused, and stays refused after the client is enabled again. PostgreSQL only: the
/// exchange is held inside its transaction by a table lock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn family_created_while_its_client_is_disabled_stays_revoked() {
    use sqlx::Connection as _;
    let Some(db) = Db::postgres().await else {
        return;
    };
    let it = TestIssuer::start_with(&db, Setup::no_nonce()).await;
    let k = key();
    let subject = it.access_token("svc", &k, &[]).await;
    sqlx::any::install_default_drivers();
    let mut lock = sqlx::AnyConnection::connect(db.url()).await.unwrap();
    let mut tx = lock.begin().await.unwrap();
    sqlx::query("LOCK TABLE refresh_tokens IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *tx)
        .await
        .unwrap();
    let svc2 = basic("svc2");
    let exchange = it.exchange(&svc2, Some(&k), &subject, &[]);
    let disable = async {
        // The exchange has authenticated and waits on the lock.
        tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
        it.clock.advance(1);
        dpop_issuer::set_client_disabled(&it.config(), "svc2", true, it.clock.unix())
            .await
            .unwrap();
        tx.rollback().await.unwrap();
    };
    let (body, ()) = tokio::join!(exchange, disable);
    let body = body.ok();
    let rt = body["refresh_token"].as_str().unwrap().to_owned();
    let at = body["access_token"].as_str().unwrap().to_owned();
    assert!(!it.active(&at).await);

    it.clock.advance(60);
    dpop_issuer::set_client_disabled(&it.config(), "svc2", false, it.clock.unix())
        .await
        .unwrap();
    it.refresh(&basic("svc2"), Some(&k), &rt, &[])
        .await
        .err(400, "invalid_grant");
    // A grant started after the client is enabled again works.
    let subject = it.access_token("svc", &k, &[]).await;
    let rt = it
        .exchange(&basic("svc2"), Some(&k), &subject, &[])
        .await
        .ok()["refresh_token"]
        .as_str()
        .unwrap()
        .to_owned();
    it.refresh(&basic("svc2"), Some(&k), &rt, &[]).await.ok();
}
