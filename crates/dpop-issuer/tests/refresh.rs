//! The refresh_token grant: rotation, reuse detection (the whole family is revoked),
//! concurrent use, key binding for public clients, scopes, idle expiry, client binding.

use dpop_test::MockIssuer;
use serde_json::json;

use crate::support::*;

db_tests!(
    client_credentials_returns_no_refresh_token,
    rotation_and_reuse_revokes_the_family,
    concurrent_refreshes_one_wins,
    parallel_requests_all_succeed,
    public_client_refresh_token_is_bound_to_its_key,
    refresh_scopes_narrow_but_never_widen,
    narrowing_the_client_narrows_its_next_refresh,
    refresh_token_idle_expiry,
    refresh_token_absolute_expiry,
    refresh_token_of_another_client,
    own_token_exchange_starts_no_refresh_family_by_default,
    families_from_before_lineage_end_at_upgrade,
    access_tokens_never_outlive_their_grant,
    withdrawn_delegation_ends_delegated_grants,
);

async fn client_credentials_returns_no_refresh_token(db: Db) {
    let extra = ClientFixture::confidential("exchanger", &*SECRET_HASH)
        .grants([GRANT_EXCHANGE])
        .scopes(["read"])
        .audiences([API])
        .may_exchange_for(["svc"])
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
    // svc holds the refresh_token grant, and still gets none from client_credentials.
    let body = it.cc("svc", &k, &[]).await.ok();
    assert!(body.get("refresh_token").is_none(), "{body}");
    // Token exchange by a client with the refresh_token grant and refresh_from_exchange
    // does return one.
    let (_, rt) = it.svc_refresh_token(&k).await;
    assert!(rt.starts_with("dpoprt_"), "{rt}");
    // A client without the grant gets none from token exchange.
    let at = it.access_token("svc", &k, &[]).await;
    let body = it
        .exchange(&basic("exchanger"), Some(&k), &at, &[])
        .await
        .ok();
    assert!(body.get("refresh_token").is_none(), "{body}");
    assert!(body["access_token"].is_string());
}

async fn rotation_and_reuse_revokes_the_family(db: Db) {
    let it = TestIssuer::start(&db).await;
    let k = key();
    let (_, rt1) = it.svc_refresh_token(&k).await;

    let body = it.refresh(&basic("svc"), Some(&k), &rt1, &[]).await.ok();
    assert_eq!(body["token_type"], json!("DPoP"));
    assert_eq!(body["expires_in"], json!(300));
    assert_eq!(body["scope"], json!("read write"));
    let rt2 = body["refresh_token"]
        .as_str()
        .expect("a new refresh token")
        .to_owned();
    assert_ne!(rt1, rt2);
    let jwt = it.verify(body["access_token"].as_str().unwrap(), API).await;
    assert_eq!(jwt.claims["sub"], json!("svc"));
    assert_eq!(jwt.claims["client_id"], json!("svc"));
    assert_eq!(jwt.claims["cnf"]["jkt"], json!(jkt(&k)));

    // rt2 rotates to rt3.
    let rt3 = it.refresh(&basic("svc"), Some(&k), &rt2, &[]).await.ok()["refresh_token"]
        .as_str()
        .unwrap()
        .to_owned();

    // Reusing rt1 is refused, and revokes the family: rt3 (the newest) fails too.
    it.refresh(&basic("svc"), Some(&k), &rt1, &[])
        .await
        .err(400, "invalid_grant");
    it.refresh(&basic("svc"), Some(&k), &rt3, &[])
        .await
        .err(400, "invalid_grant");

    // Another family of the same client is unaffected.
    let (_, other) = it.svc_refresh_token(&k).await;
    it.refresh(&basic("svc"), Some(&k), &other, &[]).await.ok();

    // Unknown and malformed refresh tokens.
    for bad in [
        "dpoprt_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        "garbage",
    ] {
        it.refresh(&basic("svc"), Some(&k), bad, &[])
            .await
            .err(400, "invalid_grant");
    }
}

async fn concurrent_refreshes_one_wins(db: Db) {
    let it = TestIssuer::start(&db).await;
    let k = key();
    for round in 0..3 {
        let (_, rt) = it.svc_refresh_token(&k).await;
        // Both requests carry a current nonce, so neither needs a round trip.
        let nonce = it.fresh_nonce().await;
        let form = [
            ("grant_type", GRANT_REFRESH),
            ("refresh_token", rt.as_str()),
        ];
        let p1 = [it.proof(&k, "POST", &it.token_url(), Some(&nonce), None)];
        let p2 = [it.proof(&k, "POST", &it.token_url(), Some(&nonce), None)];
        let auth = basic("svc");
        let (a, b) = tokio::join!(
            it.token_raw(&auth, &p1, &form),
            it.token_raw(&auth, &p2, &form)
        );
        let mut statuses = [a.status, b.status];
        statuses.sort_unstable();
        assert_eq!(
            statuses,
            [200, 400],
            "round {round}: {} / {}",
            a.body,
            b.body
        );
        let loser = if a.status == 400 { &a } else { &b };
        loser.err(400, "invalid_grant");
        let winner = if a.status == 200 { &a } else { &b };
        let next = winner.ok()["refresh_token"].as_str().unwrap().to_owned();
        // The loser presented a used token: reuse detection revoked the family, so the
        // winner's new token is dead too (a concurrent use cannot be told from a theft).
        it.refresh(&basic("svc"), Some(&k), &next, &[])
            .await
            .err(400, "invalid_grant");
    }
}

async fn parallel_requests_all_succeed(db: Db) {
    let it = std::sync::Arc::new(TestIssuer::start(&db).await);
    let k = std::sync::Arc::new(key());
    let mut families = Vec::new();
    for _ in 0..8 {
        families.push(it.svc_refresh_token(&k).await.1);
    }
    let nonce = it.fresh_nonce().await;
    let mut tasks = tokio::task::JoinSet::new();
    // Client-credentials requests and refreshes of distinct families, all at once: the
    // database serialises the writes (no "database is locked" for SQLite).
    for i in 0..24 {
        let (it, k, nonce) = (it.clone(), k.clone(), nonce.clone());
        let rt = families.get(i).cloned();
        tasks.spawn(async move {
            let proof = it.proof(&k, "POST", &it.token_url(), Some(&nonce), None);
            let form: Vec<(&str, &str)> = match &rt {
                Some(rt) => vec![
                    ("grant_type", GRANT_REFRESH),
                    ("refresh_token", rt.as_str()),
                ],
                None => vec![("grant_type", GRANT_CC)],
            };
            it.token_raw(&basic("svc"), &[proof], &form).await
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap().ok();
    }
}

async fn public_client_refresh_token_is_bound_to_its_key(db: Db) {
    let ci = MockIssuer::start().await.unwrap();
    let it = start_trusting(&db, &ci).await;
    let k = key();
    // A CI job token exchanged by the public client, with a proof by k.
    let (_, rt) = it.public_refresh_token(&ci, &k).await;

    // Another key's proof: invalid_grant, and the token is not consumed.
    let other = key();
    it.refresh(&public("public"), Some(&other), &rt, &[])
        .await
        .err(400, "invalid_grant");
    // No proof at all: a public client must always send one.
    it.refresh(&public("public"), None, &rt, &[])
        .await
        .err(400, "invalid_dpop_proof");
    // The holder of the key refreshes.
    let body = it.refresh(&public("public"), Some(&k), &rt, &[]).await.ok();
    let rt2 = body["refresh_token"].as_str().unwrap().to_owned();
    let jwt = it.verify(body["access_token"].as_str().unwrap(), API).await;
    assert_eq!(jwt.claims["cnf"]["jkt"], json!(jkt(&k)));
    assert_eq!(jwt.claims["client_id"], json!("public"));
    // The rotated token keeps the binding.
    it.refresh(&public("public"), Some(&other), &rt2, &[])
        .await
        .err(400, "invalid_grant");
    it.refresh(&public("public"), Some(&k), &rt2, &[])
        .await
        .ok();
}

async fn narrowing_the_client_narrows_its_next_refresh(db: Db) {
    let it = TestIssuer::start(&db).await;
    let k = key();
    let (_, rt) = it.svc_refresh_token(&k).await;
    // The operator takes `write` away from svc; an instance with the new configuration
    // (same database) refreshes the grant with what is still allowed.
    let narrowed = it.config_text().replace(
        "scopes = [\"read\", \"write\", \"admin\"]",
        "scopes = [\"read\", \"admin\"]",
    );
    assert_ne!(narrowed, it.config_text(), "the test edits the svc client");
    let b = it.second_instance_with_config(&narrowed).await;
    let body = b.refresh(&basic("svc"), Some(&k), &rt, &[]).await.ok();
    assert_eq!(body["scope"], json!("read"));
    let rt2 = body["refresh_token"].as_str().unwrap();
    b.refresh(&basic("svc"), Some(&k), rt2, &[("scope", "write")])
        .await
        .err(400, "invalid_scope");
    // With its audience gone, the grant is over.
    let no_api = narrowed
        .replacen(
            &format!("audiences = [\"{API}\", \"{OTHER_API}\"]"),
            &format!("audiences = [\"{OTHER_API}\"]"),
            1,
        )
        .replacen(&format!("default_audiences = [\"{API}\"]"), "", 1);
    let c = it.second_instance_with_config(&no_api).await;
    let body = b.refresh(&basic("svc"), Some(&k), rt2, &[]).await.ok();
    let rt3 = body["refresh_token"].as_str().unwrap();
    c.refresh(&basic("svc"), Some(&k), rt3, &[])
        .await
        .err(400, "invalid_grant");
}

async fn refresh_scopes_narrow_but_never_widen(db: Db) {
    let it = TestIssuer::start(&db).await;
    let k = key();
    let (_, rt) = it.svc_refresh_token(&k).await;
    // Wider than the grant ("read write"): refused, and the token is not consumed.
    it.refresh(
        &basic("svc"),
        Some(&k),
        &rt,
        &[("scope", "read write admin")],
    )
    .await
    .err(400, "invalid_scope");
    let body = it
        .refresh(&basic("svc"), Some(&k), &rt, &[("scope", "write")])
        .await
        .ok();
    assert_eq!(body["scope"], json!("write"));
    assert_eq!(
        decode(body["access_token"].as_str().unwrap()).1["scope"],
        json!("write")
    );
    // The grant itself is unchanged: the next refresh may ask for the original scopes.
    let rt2 = body["refresh_token"].as_str().unwrap();
    let body = it.refresh(&basic("svc"), Some(&k), rt2, &[]).await.ok();
    assert_eq!(body["scope"], json!("read write"));
    // Audiences stay within the grant too.
    let rt3 = body["refresh_token"].as_str().unwrap();
    it.refresh(&basic("svc"), Some(&k), rt3, &[("resource", OTHER_API)])
        .await
        .err(400, "invalid_target");
}

async fn refresh_token_idle_expiry(db: Db) {
    let it = TestIssuer::start_with(
        &db,
        Setup {
            tokens: "refresh_token_idle_secs = 600".to_owned(),
            ..Setup::default()
        },
    )
    .await;
    let k = key();
    let (_, rt) = it.svc_refresh_token(&k).await;
    // Used within the idle time, it rotates; the new one gets a new idle period.
    it.clock.advance(500);
    let rt2 = it.refresh(&basic("svc"), Some(&k), &rt, &[]).await.ok()["refresh_token"]
        .as_str()
        .unwrap()
        .to_owned();
    it.clock.advance(500);
    let rt3 = it.refresh(&basic("svc"), Some(&k), &rt2, &[]).await.ok()["refresh_token"]
        .as_str()
        .unwrap()
        .to_owned();
    // Idle for longer than that: expired.
    it.clock.advance(601);
    it.refresh(&basic("svc"), Some(&k), &rt3, &[])
        .await
        .err(400, "invalid_grant");
}

async fn refresh_token_absolute_expiry(db: Db) {
    let it = TestIssuer::start_with(
        &db,
        Setup {
            tokens: "refresh_token_idle_secs = 600\nrefresh_token_absolute_secs = 1000".to_owned(),
            ..Setup::default()
        },
    )
    .await;
    let k = key();
    let (_, rt) = it.svc_refresh_token(&k).await;
    it.clock.advance(550);
    let rt2 = it.refresh(&basic("svc"), Some(&k), &rt, &[]).await.ok()["refresh_token"]
        .as_str()
        .unwrap()
        .to_owned();
    // Within rt2's idle time, but past the family's absolute expiry.
    it.clock.advance(500);
    it.refresh(&basic("svc"), Some(&k), &rt2, &[])
        .await
        .err(400, "invalid_grant");
}

async fn refresh_token_of_another_client(db: Db) {
    let it = TestIssuer::start(&db).await;
    let k = key();
    let (_, rt) = it.svc_refresh_token(&k).await;
    it.refresh(&basic("svc2"), Some(&k), &rt, &[])
        .await
        .err(400, "invalid_grant");
    // The failed attempt did not consume it, and did not revoke the family.
    it.refresh(&basic("svc"), Some(&k), &rt, &[]).await.ok();
}

/// Exchanging one of the issuer's own tokens starts a refresh grant only for a client
/// configured with `refresh_from_exchange`: otherwise the new token would outlive its
/// subject token by up to the refresh lifetimes.
async fn own_token_exchange_starts_no_refresh_family_by_default(db: Db) {
    let extra = ClientFixture::confidential("delegate", &*SECRET_HASH)
        .grants([GRANT_EXCHANGE, GRANT_REFRESH])
        .scopes(["read"])
        .audiences([API])
        .may_exchange_for(["svc"])
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
    let subject = it.access_token("svc", &k, &[]).await;
    let body = it
        .exchange(&basic("delegate"), Some(&k), &subject, &[])
        .await
        .ok();
    assert!(body.get("refresh_token").is_none(), "{body}");
    assert_eq!(db.count("SELECT COUNT(*) FROM refresh_families").await, 0);
}

/// Every refresh grant of the version before lineage was recorded came from a token
/// exchange (its own client's, another client's or a trusted issuer's token) and cannot
/// be traced to what it came from: the migration that adds lineage ends them all, and
/// their clients start new grants.
async fn families_from_before_lineage_end_at_upgrade(db: Db) {
    let ci = MockIssuer::start().await.unwrap();
    let mut it = start_trusting(&db, &ci).await;
    let k = key();
    let subject = it.access_token("svc", &k, &[]).await;
    let delegated = it
        .exchange(&basic("svc2"), Some(&k), &subject, &[])
        .await
        .ok()["refresh_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let (_, own) = it.svc_refresh_token(&k).await;
    let (_, workload) = it.public_refresh_token(&ci, &k).await;
    // The database as the previous version left it: no lineage.
    it.stop().await;
    db.execute(&[
        "DROP TABLE family_lineage",
        "DELETE FROM _sqlx_migrations WHERE version = 3",
    ])
    .await;
    it.restart().await;
    for (auth, rt) in [
        (basic("svc2"), &delegated),
        (basic("svc"), &own),
        (public("public"), &workload),
    ] {
        it.refresh(&auth, Some(&k), rt, &[])
            .await
            .err(400, "invalid_grant");
    }
    // A new grant works.
    let (_, fresh) = it.svc_refresh_token(&k).await;
    it.refresh(&basic("svc"), Some(&k), &fresh, &[]).await.ok();
}

/// An access token issued with a refresh grant, or from one, expires no later than the
/// grant, so it cannot outlive the record of the grant's revocation.
async fn access_tokens_never_outlive_their_grant(db: Db) {
    let it = TestIssuer::start_with(
        &db,
        Setup {
            tokens: "refresh_token_idle_secs = 200\nrefresh_token_absolute_secs = 200".to_owned(),
            ..Setup::default()
        },
    )
    .await;
    let k = key();
    let grant_expires = it.clock.secs() + 200;
    let at = it.access_token("svc", &k, &[]).await;
    let body = it.exchange(&basic("svc"), Some(&k), &at, &[]).await.ok();
    assert_eq!(body["expires_in"], json!(200), "{body}");
    let at = body["access_token"].as_str().unwrap();
    assert_eq!(decode(at).1["exp"], json!(grant_expires));
    it.clock.advance(150);
    let rt = body["refresh_token"].as_str().unwrap();
    let body = it.refresh(&basic("svc"), Some(&k), rt, &[]).await.ok();
    assert_eq!(body["expires_in"], json!(50), "{body}");
    assert_eq!(
        decode(body["access_token"].as_str().unwrap()).1["exp"],
        json!(grant_expires)
    );
}

/// Withdrawing a delegation in the configuration reaches the grants it made: without
/// `may_exchange_for`, or without `refresh_from_exchange`, a delegated grant is refused,
/// and narrowing the client it was delegated from narrows it.
async fn withdrawn_delegation_ends_delegated_grants(db: Db) {
    let a = TestIssuer::start(&db).await;
    let k = key();
    let subject = a.access_token("svc", &k, &[("scope", "read write")]).await;
    let mut grants = Vec::new();
    for _ in 0..3 {
        let body = a
            .exchange(&basic("svc2"), Some(&k), &subject, &[])
            .await
            .ok();
        assert_eq!(body["scope"], json!("read write"));
        grants.push(body["refresh_token"].as_str().unwrap().to_owned());
    }
    let text = a.config_text();
    let narrowed = text.replacen(
        "scopes = [\"read\", \"write\", \"admin\"]",
        "scopes = [\"read\"]",
        1,
    );
    let withdrawn = text.replace("may_exchange_for = [\"svc\"]\n", "");
    let no_refresh = text.replacen(
        "may_exchange_for = [\"svc\"]\nrefresh_from_exchange = true\n",
        "may_exchange_for = [\"svc\"]\n",
        1,
    );
    for edited in [&narrowed, &withdrawn, &no_refresh] {
        assert_ne!(edited, text);
    }
    let b = a.second_instance_with_config(&narrowed).await;
    let body = b
        .refresh(&basic("svc2"), Some(&k), &grants[0], &[])
        .await
        .ok();
    assert_eq!(body["scope"], json!("read"));
    assert_eq!(
        decode(body["access_token"].as_str().unwrap()).1["scope"],
        json!("read")
    );
    let c = a.second_instance_with_config(&withdrawn).await;
    c.refresh(&basic("svc2"), Some(&k), &grants[1], &[])
        .await
        .err(400, "invalid_grant");
    let d = a.second_instance_with_config(&no_refresh).await;
    d.refresh(&basic("svc2"), Some(&k), &grants[2], &[])
        .await
        .err(400, "invalid_grant");
    // The grants themselves are untouched: under the original configuration they work.
    a.refresh(&basic("svc2"), Some(&k), &grants[2], &[])
        .await
        .ok();
}
