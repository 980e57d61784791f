//! Token exchange (RFC 8693) of the issuer's own access tokens: down-scoping, key
//! binding, delegation (`act`), and the refusals. External subject tokens are in
//! `trust.rs`.

use serde_json::json;

use crate::support::*;

db_tests!(
    down_scoping_own_token,
    bound_subject_token_needs_the_same_key,
    unbound_subject_token_binds_to_the_request_key,
    delegation_adds_act,
    refused_subject_tokens,
    malformed_exchange_requests,
    exchange_never_widens_audience_beyond_subject,
    exchanged_token_never_outlives_subject,
    public_client_cannot_exchange_issuer_tokens,
    unlisted_actor_cannot_exchange_another_clients_token,
    leaked_bearer_subject_cannot_be_exchanged,
    bearer_subject_never_becomes_a_refresh_grant_through_another_exchange,
    transitive_delegation_needs_the_root_client,
);

async fn down_scoping_own_token(db: Db) {
    let it = TestIssuer::start(&db).await;
    let k = key();
    let subject = it.access_token("svc", &k, &[("scope", "read write")]).await;
    let subject_jti = decode(&subject).1["jti"].clone();
    let r = it
        .exchange(&basic("svc"), Some(&k), &subject, &[("scope", "read")])
        .await;
    let body = r.ok();
    assert_eq!(body["issued_token_type"], json!(TT_ACCESS));
    assert_eq!(body["token_type"], json!("DPoP"));
    assert_eq!(body["scope"], json!("read"));
    assert_eq!(body["expires_in"], json!(300));
    let jwt = it.verify(body["access_token"].as_str().unwrap(), API).await;
    let c = &jwt.claims;
    assert_eq!(c["sub"], json!("svc"));
    assert_eq!(c["client_id"], json!("svc"));
    assert_eq!(c["scope"], json!("read"));
    assert_eq!(c["cnf"]["jkt"], json!(jkt(&k)));
    assert_ne!(c["jti"], subject_jti);
    assert!(c.get("act").is_none(), "no delegation: {c:?}");
    // Without scope: the subject token's scopes.
    let body = it
        .exchange(&basic("svc"), Some(&k), &subject, &[])
        .await
        .ok();
    assert_eq!(body["scope"], json!("read write"));
    // A scope the subject token does not have is refused, even one the client may get.
    it.exchange(
        &basic("svc"),
        Some(&k),
        &subject,
        &[("scope", "read admin")],
    )
    .await
    .err(400, "invalid_scope");
    // Our own token is also recognised as subject_token_type jwt (by its iss).
    let body = it
        .token(
            &basic("svc"),
            Some(&k),
            &[
                ("grant_type", GRANT_EXCHANGE),
                ("subject_token", &subject),
                ("subject_token_type", TT_JWT),
                ("requested_token_type", TT_ACCESS),
            ],
        )
        .await
        .ok();
    assert_eq!(body["issued_token_type"], json!(TT_ACCESS));
}

async fn bound_subject_token_needs_the_same_key(db: Db) {
    let it = TestIssuer::start(&db).await;
    let k = key();
    let subject = it.access_token("svc", &k, &[]).await;
    let other = key();
    it.exchange(&basic("svc"), Some(&other), &subject, &[])
        .await
        .err(400, "invalid_grant");
    it.exchange(&basic("svc2"), Some(&other), &subject, &[])
        .await
        .err(400, "invalid_grant");
    let body = it
        .exchange(&basic("svc"), Some(&k), &subject, &[])
        .await
        .ok();
    let c = decode(body["access_token"].as_str().unwrap()).1;
    assert_eq!(c["cnf"]["jkt"], json!(jkt(&k)));
}

async fn unbound_subject_token_binds_to_the_request_key(db: Db) {
    // optional allows its Bearer tokens to be exchanged, and svc acts for it.
    let plain = TestIssuer::start(&db).await;
    let text = set_client(
        &set_client(
            plain.config_text(),
            "optional",
            "allow_bearer_exchange = true",
        ),
        "svc",
        "may_exchange_for = [\"optional\"]",
    );
    let it = plain.second_instance_with_config(&text).await;
    // A Bearer token (the optional client, no proof).
    let body = it
        .token(&basic("optional"), None, &[("grant_type", GRANT_CC)])
        .await
        .ok();
    let subject = body["access_token"].as_str().unwrap().to_owned();
    assert!(decode(&subject).1.get("cnf").is_none());
    let k2 = key();
    let body = it
        .exchange(&basic("svc"), Some(&k2), &subject, &[])
        .await
        .ok();
    assert_eq!(body["token_type"], json!("DPoP"));
    // svc has refresh_from_exchange, but a Bearer subject never starts a refresh grant.
    assert!(body.get("refresh_token").is_none(), "{body}");
    let jwt = it.verify(body["access_token"].as_str().unwrap(), API).await;
    assert_eq!(jwt.claims["cnf"]["jkt"], json!(jkt(&k2)));
    assert_eq!(jwt.claims["sub"], json!("optional"));
    assert_eq!(jwt.claims["client_id"], json!("svc"));
    assert_eq!(jwt.claims["act"], json!({ "sub": "svc" }));
    assert_eq!(jwt.claims["scope"], json!("read"));
}

async fn delegation_adds_act(db: Db) {
    let it = TestIssuer::start(&db).await;
    let k = key();
    let subject = it.access_token("svc", &k, &[]).await;
    // svc2 acts for svc.
    let body = it
        .exchange(&basic("svc2"), Some(&k), &subject, &[])
        .await
        .ok();
    let delegated = body["access_token"].as_str().unwrap().to_owned();
    let jwt = it.verify(&delegated, API).await;
    assert_eq!(jwt.claims["sub"], json!("svc"));
    assert_eq!(jwt.claims["client_id"], json!("svc2"));
    assert_eq!(jwt.claims["act"], json!({ "sub": "svc2" }));
    assert_eq!(jwt.claims["scope"], json!("read"));
    // The delegation survives a refresh.
    let rt = body["refresh_token"]
        .as_str()
        .expect("svc2 has the refresh grant");
    let refreshed = it.refresh(&basic("svc2"), Some(&k), rt, &[]).await.ok();
    let c = decode(refreshed["access_token"].as_str().unwrap()).1;
    assert_eq!(c["act"], json!({ "sub": "svc2" }));
    assert_eq!(c["sub"], json!("svc"));
    // The delegated token is svc2's: svc may not exchange it unless configured to.
    it.exchange(&basic("svc"), Some(&k), &delegated, &[])
        .await
        .err(400, "unauthorized_client");
    // Once svc may act for svc2, the chain nests, the newest actor outermost.
    let b = it
        .second_instance_with_config(&set_client(
            it.config_text(),
            "svc",
            "may_exchange_for = [\"svc2\"]",
        ))
        .await;
    let body = b
        .exchange(&basic("svc"), Some(&k), &delegated, &[])
        .await
        .ok();
    let c = decode(body["access_token"].as_str().unwrap()).1;
    assert_eq!(c["act"], json!({ "sub": "svc", "act": { "sub": "svc2" } }));
    assert_eq!(c["sub"], json!("svc"));
    assert_eq!(c["client_id"], json!("svc"));
    // Introspection shows the chain, not the issuer's lineage records.
    let v = it
        .introspect(body["access_token"].as_str().unwrap(), &[])
        .await
        .ok();
    assert_eq!(v["act"], c["act"]);
    assert_eq!(c["lineage"]["from"].as_array().map(Vec::len), Some(2));
    assert!(v.get("lineage").is_none(), "{v}");
}

async fn refused_subject_tokens(db: Db) {
    let it = TestIssuer::start(&db).await;
    let k = key();

    // Revoked by its owner.
    let revoked = it.access_token("svc", &k, &[]).await;
    assert_eq!(it.revoke(&basic("svc"), &revoked, &[]).await.status, 200);
    it.exchange(&basic("svc"), Some(&k), &revoked, &[])
        .await
        .err(400, "invalid_grant");

    // Garbage, a refresh token, a tampered token.
    it.exchange(&basic("svc"), Some(&k), "garbage", &[])
        .await
        .err(400, "invalid_grant");
    let (_, rt) = it.svc_refresh_token(&k).await;
    it.exchange(&basic("svc"), Some(&k), &rt, &[])
        .await
        .err(400, "invalid_grant");
    let good = it.access_token("svc", &k, &[]).await;
    let mut parts: Vec<String> = good.split('.').map(str::to_owned).collect();
    let (_, mut claims) = decode(&good);
    claims["scope"] = json!("read write admin");
    parts[1] = dpop_test::b64url(claims.to_string().as_bytes());
    it.exchange(&basic("svc"), Some(&k), &parts.join("."), &[])
        .await
        .err(400, "invalid_grant");

    // Signed by someone else but claiming to be ours.
    let stranger = key();
    let forged = dpop_test::sign_compact(
        &stranger,
        &json!({ "alg": "ES256", "typ": "at+jwt", "kid": it.issuer.signing_kid() }),
        &claims,
    )
    .unwrap();
    it.exchange(&basic("svc"), Some(&k), &forged, &[])
        .await
        .err(400, "invalid_grant");

    // Expired, if only just.
    it.clock.advance(301);
    it.exchange(&basic("svc"), Some(&k), &good, &[])
        .await
        .err(400, "invalid_grant");
}

async fn malformed_exchange_requests(db: Db) {
    let it = TestIssuer::start(&db).await;
    let k = key();
    let subject = it.access_token("svc", &k, &[]).await;
    let base = |extra: &[(&'static str, &'static str)]| {
        let mut f: Vec<(&str, String)> = vec![
            ("grant_type", GRANT_EXCHANGE.to_owned()),
            ("subject_token", subject.clone()),
        ];
        f.extend(extra.iter().map(|(a, b)| (*a, (*b).to_owned())));
        f
    };
    let cases: Vec<(&str, Vec<(&str, String)>)> = vec![
        (
            "unsupported subject_token_type",
            base(&[(
                "subject_token_type",
                "urn:ietf:params:oauth:token-type:saml2",
            )]),
        ),
        ("no subject_token_type", base(&[])),
        (
            "actor_token",
            base(&[
                ("subject_token_type", TT_ACCESS),
                ("actor_token", "x"),
                ("actor_token_type", TT_ACCESS),
            ]),
        ),
        (
            "requested_token_type refresh_token",
            base(&[
                ("subject_token_type", TT_ACCESS),
                (
                    "requested_token_type",
                    "urn:ietf:params:oauth:token-type:refresh_token",
                ),
            ]),
        ),
    ];
    for (what, form) in cases {
        let form: Vec<(&str, &str)> = form.iter().map(|(a, b)| (*a, b.as_str())).collect();
        let r = it.token(&basic("svc"), Some(&k), &form).await;
        assert_eq!(r.status, 400, "{what}: {}", r.body);
        r.err(400, "invalid_request");
    }
}

/// A delegated or down-scoped token names at most the subject token's audiences, and of
/// those only the ones the exchanging client may receive; the same for scopes.
async fn exchange_never_widens_audience_beyond_subject(db: Db) {
    let it = TestIssuer::start(&db).await;
    let k = key();
    // svc may receive OTHER_API, but this token of its is for API only.
    let subject = it.access_token("svc", &k, &[("scope", "read write")]).await;
    assert_eq!(decode(&subject).1["aud"], json!(API));
    for param in ["resource", "audience"] {
        it.exchange(&basic("svc"), Some(&k), &subject, &[(param, OTHER_API)])
            .await
            .err(400, "invalid_target");
    }
    let body = it
        .exchange(&basic("svc"), Some(&k), &subject, &[])
        .await
        .ok();
    assert_eq!(
        decode(body["access_token"].as_str().unwrap()).1["aud"],
        json!(API)
    );

    // A token for both APIs, exchanged by svc2 (which may receive API only): API only,
    // and only the scopes both the token and svc2 have.
    let wide = it
        .access_token(
            "svc",
            &k,
            &[
                ("scope", "read write admin"),
                ("resource", API),
                ("resource", OTHER_API),
            ],
        )
        .await;
    let body = it.exchange(&basic("svc2"), Some(&k), &wide, &[]).await.ok();
    let c = decode(body["access_token"].as_str().unwrap()).1;
    assert_eq!(c["aud"], json!(API));
    assert_eq!(c["scope"], json!("read write"));
    it.exchange(&basic("svc2"), Some(&k), &wide, &[("resource", OTHER_API)])
        .await
        .err(400, "invalid_target");
    it.exchange(&basic("svc2"), Some(&k), &wide, &[("scope", "admin")])
        .await
        .err(400, "invalid_scope");
}

/// An exchanged token expires no later than its subject token.
async fn exchanged_token_never_outlives_subject(db: Db) {
    let it = TestIssuer::start(&db).await;
    let k = key();
    let subject = it.access_token("svc", &k, &[]).await;
    let subject_exp = decode(&subject).1["exp"].as_u64().unwrap();
    it.clock.advance(200);
    for auth in [basic("svc"), basic("svc2")] {
        let body = it.exchange(&auth, Some(&k), &subject, &[]).await.ok();
        let c = decode(body["access_token"].as_str().unwrap()).1;
        assert_eq!(c["exp"].as_u64(), Some(subject_exp), "{c}");
        assert_eq!(body["expires_in"], json!(100));
    }
}

/// A public client has no credentials: whoever holds a token and its key could use it to
/// turn the token into another audience, another client's rights or a refresh grant.
async fn public_client_cannot_exchange_issuer_tokens(db: Db) {
    let it = TestIssuer::start(&db).await;
    let k = key();
    let subject = it.access_token("svc", &k, &[]).await;
    // The holder of svc's token and key, through the public client.
    let r = it
        .exchange(&public("public"), Some(&k), &subject, &[])
        .await;
    r.err(400, "unauthorized_client");
    assert!(r.json().get("refresh_token").is_none());
    it.exchange(&public("public"), Some(&k), &subject, &[("resource", API)])
        .await
        .err(400, "unauthorized_client");
    // Without a proof, the public client's missing proof is the first refusal.
    it.exchange(&public("public"), None, &subject, &[])
        .await
        .err(400, "invalid_dpop_proof");
    // The subject token itself is untouched.
    assert!(it.active(&subject).await);
}

/// Only an actor the configuration lists for the subject token's client exchanges it.
async fn unlisted_actor_cannot_exchange_another_clients_token(db: Db) {
    let it = TestIssuer::start(&db).await;
    let k = key();
    // svc is not configured to act for svc2.
    let subject = it.access_token("svc2", &k, &[]).await;
    let r = it.exchange(&basic("svc"), Some(&k), &subject, &[]).await;
    r.err(400, "unauthorized_client");
    // cc-only has no token-exchange grant at all.
    it.exchange(&basic("cc-only"), Some(&k), &subject, &[])
        .await
        .err(400, "unauthorized_client");
}

/// A Bearer token copied from a log is not turned into a token bound to the copier's key
/// (nor a refresh grant), unless its own client allows its Bearer tokens to be exchanged.
async fn leaked_bearer_subject_cannot_be_exchanged(db: Db) {
    let it = TestIssuer::start(&db).await;
    let body = it
        .token(&basic("optional"), None, &[("grant_type", GRANT_CC)])
        .await
        .ok();
    let leaked = body["access_token"].as_str().unwrap().to_owned();
    assert!(decode(&leaked).1.get("cnf").is_none());
    let attacker = key();
    for auth in [basic("svc"), basic("svc2")] {
        let r = it.exchange(&auth, Some(&attacker), &leaked, &[]).await;
        r.err(400, "invalid_grant");
        assert!(r.json().get("refresh_token").is_none());
    }
    it.exchange(&public("public"), Some(&attacker), &leaked, &[])
        .await
        .err(400, "unauthorized_client");
    // Even a client configured to act for `optional` cannot, while `optional` does not
    // allow its Bearer tokens to be exchanged (see
    // unbound_subject_token_binds_to_the_request_key for when it does).
    let b = it
        .second_instance_with_config(&set_client(
            it.config_text(),
            "svc",
            "may_exchange_for = [\"optional\"]",
        ))
        .await;
    b.exchange(&basic("svc"), Some(&attacker), &leaked, &[])
        .await
        .err(400, "invalid_grant");
}

/// A Bearer token whose client allows exchanging it is bound by the first exchange, but
/// what comes of it still ends with it: exchanging the bound token again, by a client
/// with `refresh_from_exchange`, starts no refresh grant.
async fn bearer_subject_never_becomes_a_refresh_grant_through_another_exchange(db: Db) {
    let extra = [
        ClientFixture::confidential("bearer", &*SECRET_HASH)
            .grants([GRANT_CC])
            .scopes(["read"])
            .audiences([API])
            .line("dpop = \"optional\"")
            .line("allow_bearer_exchange = true"),
        ClientFixture::confidential("deleg", &*SECRET_HASH)
            .grants([GRANT_EXCHANGE, GRANT_REFRESH])
            .scopes(["read"])
            .audiences([API])
            .may_exchange_for(["bearer"])
            .line("refresh_from_exchange = true"),
    ]
    .map(|c| c.render())
    .join("\n");
    let it = TestIssuer::start_with(
        &db,
        Setup {
            extra,
            ..Setup::default()
        },
    )
    .await;
    let k = key();
    let body = it
        .token(&basic("bearer"), None, &[("grant_type", GRANT_CC)])
        .await
        .ok();
    assert_eq!(body["token_type"], json!("Bearer"));
    let bearer = body["access_token"].as_str().unwrap().to_owned();
    let bearer_exp = decode(&bearer).1["exp"].as_u64().unwrap();
    let first = it
        .exchange(&basic("deleg"), Some(&k), &bearer, &[])
        .await
        .ok();
    assert!(first.get("refresh_token").is_none(), "{first}");
    let bound = first["access_token"].as_str().unwrap().to_owned();
    for _ in 0..2 {
        let again = it
            .exchange(&basic("deleg"), Some(&k), &bound, &[])
            .await
            .ok();
        assert!(again.get("refresh_token").is_none(), "{again}");
        let exp = decode(again["access_token"].as_str().unwrap()).1["exp"]
            .as_u64()
            .unwrap();
        assert!(exp <= bearer_exp);
    }
    assert_eq!(db.count("SELECT COUNT(*) FROM refresh_families").await, 0);
}

/// Delegation does not chain past the configuration: a client that may act for `svc2`
/// only does not obtain, through a token `svc2` holds for `svc`, a token for `svc`'s
/// subject. It must be allowed for the client the chain started with as well.
async fn transitive_delegation_needs_the_root_client(db: Db) {
    let client = |id: &str, may: &[&str]| {
        let client = ClientFixture::confidential(id, &*SECRET_HASH)
            .grants([GRANT_EXCHANGE])
            .scopes(["read", "write"])
            .audiences([API])
            .may_exchange_for(may.iter().copied());
        format!("\n{}", client.render())
    };
    let it = TestIssuer::start_with(
        &db,
        Setup {
            extra: format!(
                "{}{}",
                client("third", &["svc2"]),
                client("trusted", &["svc", "svc2"])
            ),
            ..Setup::default()
        },
    )
    .await;
    let k = key();
    let subject = it.access_token("svc", &k, &[("scope", "read write")]).await;
    it.exchange(&basic("third"), Some(&k), &subject, &[])
        .await
        .err(400, "unauthorized_client");
    let hop = it
        .exchange(&basic("svc2"), Some(&k), &subject, &[])
        .await
        .ok()["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    it.exchange(&basic("third"), Some(&k), &hop, &[])
        .await
        .err(400, "unauthorized_client");
    // A client allowed for both gets the chain, with every actor in `act`.
    let body = it
        .exchange(&basic("trusted"), Some(&k), &hop, &[])
        .await
        .ok();
    let claims = decode(body["access_token"].as_str().unwrap()).1;
    assert_eq!(claims["sub"], json!("svc"));
    assert_eq!(
        claims["act"],
        json!({ "sub": "trusted", "act": { "sub": "svc2" } })
    );
}
