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
    public_client_needs_dpop,
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
    let it = TestIssuer::start(&db).await;
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
    // Exchanged again, by svc: the chain nests, the newest actor outermost.
    let body = it
        .exchange(&basic("svc"), Some(&k), &delegated, &[])
        .await
        .ok();
    let c = decode(body["access_token"].as_str().unwrap()).1;
    assert_eq!(c["act"], json!({ "sub": "svc", "act": { "sub": "svc2" } }));
    assert_eq!(c["sub"], json!("svc"));
    assert_eq!(c["client_id"], json!("svc"));
    // Introspection shows the chain.
    let v = it
        .introspect(body["access_token"].as_str().unwrap(), &[])
        .await
        .ok();
    assert_eq!(v["act"], c["act"]);
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

async fn public_client_needs_dpop(db: Db) {
    let it = TestIssuer::start(&db).await;
    let k = key();
    let subject = it.access_token("svc", &k, &[]).await;
    let r = it.exchange(&public("public"), None, &subject, &[]).await;
    r.err(400, "invalid_dpop_proof");
    // With the key's proof it works, and the public client gets a key-bound token.
    let body = it
        .exchange(&public("public"), Some(&k), &subject, &[])
        .await
        .ok();
    let c = decode(body["access_token"].as_str().unwrap()).1;
    assert_eq!(c["cnf"]["jkt"], json!(jkt(&k)));
    assert_eq!(c["client_id"], json!("public"));
    assert_eq!(c["act"], json!({ "sub": "public" }));
}
