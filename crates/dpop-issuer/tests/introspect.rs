//! Introspection (RFC 7662): who may call it, active and inactive answers, refresh
//! tokens, and the DPoP extension (`dpop`, `htm`, `htu`).

use serde_json::json;

use crate::support::*;

db_tests!(
    introspection_needs_auth_and_permission,
    active_token_claims,
    inactive_tokens,
    refresh_token_introspection,
    public_refresh_token_introspection,
    dpop_extension,
    removed_client_is_offboarded,
);

const RS_URL: &str = "https://api.example.com/v1/items";

async fn introspection_needs_auth_and_permission(db: Db) {
    let it = TestIssuer::start(&db).await;
    let k = key();
    let token = it.access_token("svc", &k, &[]).await;
    // Not allowed to introspect.
    for auth in [basic("svc"), post("svc2"), public("public")] {
        it.post("/introspect", &auth, &[], &[("token", &token)])
            .await
            .err(400, "unauthorized_client");
    }
    // Not authenticated.
    let r = it
        .post("/introspect", &Auth::Nothing, &[], &[("token", &token)])
        .await;
    r.err(401, "invalid_client");
    assert!(r.header("www-authenticate").is_some());
    it.post(
        "/introspect",
        &Auth::Basic("rs".into(), "wrong-secret-for-rs".into()),
        &[],
        &[("token", &token)],
    )
    .await
    .err(401, "invalid_client");
    it.post("/introspect", &basic("nobody"), &[], &[("token", &token)])
        .await
        .err(401, "invalid_client");
    // No token parameter; not a form.
    it.post("/introspect", &basic("rs"), &[], &[])
        .await
        .err(400, "invalid_request");
    it.post_raw("/introspect", &[], "text/plain", format!("token={token}"))
        .await
        .err(400, "invalid_request");
    // rs with client_secret_post works as well as Basic.
    let v = it
        .post("/introspect", &post("rs"), &[], &[("token", &token)])
        .await
        .ok();
    assert_eq!(v["active"], json!(true));
}

async fn active_token_claims(db: Db) {
    let it = TestIssuer::start(&db).await;
    let k = key();
    let token = it
        .access_token(
            "svc",
            &k,
            &[("scope", "read write"), ("resource", OTHER_API)],
        )
        .await;
    let (_, claims) = decode(&token);
    let r = it.introspect(&token, &[]).await;
    let v = r.ok();
    assert_eq!(v["active"], json!(true));
    assert_eq!(v["token_type"], json!("DPoP"));
    assert_eq!(v["cnf"], json!({ "jkt": jkt(&k) }));
    assert_eq!(v["scope"], json!("read write"));
    assert_eq!(v["client_id"], json!("svc"));
    assert_eq!(v["sub"], json!("svc"));
    assert_eq!(v["aud"], json!(OTHER_API));
    assert_eq!(v["iss"], json!(it.url));
    for c in ["exp", "iat", "jti"] {
        assert_eq!(v[c], claims[c], "{c}");
    }
    assert_eq!(v["exp"].as_u64(), Some(it.clock.secs() + 300));

    // A Bearer token.
    let body = it
        .token(&basic("optional"), None, &[("grant_type", GRANT_CC)])
        .await
        .ok();
    let v = it
        .introspect(body["access_token"].as_str().unwrap(), &[])
        .await
        .ok();
    assert_eq!(v["active"], json!(true));
    assert_eq!(v["token_type"], json!("Bearer"));
    assert!(v.get("cnf").is_none(), "{v}");

    // The hint does not change the answer.
    let v = it
        .introspect(&token, &[("token_type_hint", "refresh_token")])
        .await
        .ok();
    assert_eq!(v["active"], json!(true));
}

async fn inactive_tokens(db: Db) {
    let it = TestIssuer::start(&db).await;
    let k = key();
    let inactive = json!({ "active": false });
    for junk in ["garbage", "a.b.c", "dpoprt_unknown"] {
        assert_eq!(it.introspect(junk, &[]).await.ok(), inactive, "{junk}");
    }
    // Someone else's JWT.
    let stranger = key();
    let (_, claims) = decode(&it.access_token("svc", &k, &[]).await);
    let forged = dpop_test::sign_compact(
        &stranger,
        &json!({ "alg": "ES256", "typ": "at+jwt", "kid": it.issuer.signing_kid() }),
        &claims,
    )
    .unwrap();
    assert_eq!(it.introspect(&forged, &[]).await.ok(), inactive);

    // Revoked by its owner.
    let token = it.access_token("svc", &k, &[]).await;
    assert!(it.active(&token).await);
    let r = it.revoke(&basic("svc"), &token, &[]).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(it.introspect(&token, &[]).await.ok(), inactive);

    // Expired: active until exp (300 s), inactive from exp on. The issuer's clock is
    // the one that counts: no leeway for its own tokens.
    let token = it.access_token("svc", &k, &[]).await;
    it.clock.advance(299);
    assert!(it.active(&token).await);
    it.clock.advance(1);
    assert_eq!(it.introspect(&token, &[]).await.ok(), inactive);
    it.clock.advance(60);
    assert_eq!(it.introspect(&token, &[]).await.ok(), inactive);
}

async fn refresh_token_introspection(db: Db) {
    let it = TestIssuer::start(&db).await;
    let k = key();
    let (_, rt) = it.svc_refresh_token(&k).await;
    // Its own client may introspect it without the introspection permission.
    let v = it
        .post("/introspect", &basic("svc"), &[], &[("token", &rt)])
        .await
        .ok();
    assert_eq!(v["active"], json!(true));
    assert_eq!(v["token_type"], json!("refresh_token"));
    assert_eq!(v["client_id"], json!("svc"));
    assert_eq!(v["sub"], json!("svc"));
    assert_eq!(v["scope"], json!("read write"));
    // Another client learns nothing about it.
    let v = it
        .post("/introspect", &basic("svc2"), &[], &[("token", &rt)])
        .await
        .ok();
    assert_eq!(v, json!({ "active": false }));
    let v = it.introspect(&rt, &[]).await.ok();
    assert_eq!(v, json!({ "active": false }));
    // Once used, it is inactive.
    it.refresh(&basic("svc"), Some(&k), &rt, &[]).await.ok();
    let v = it
        .post("/introspect", &basic("svc"), &[], &[("token", &rt)])
        .await
        .ok();
    assert_eq!(v, json!({ "active": false }));
}

/// A public client's refresh token shows its key binding.
async fn public_refresh_token_introspection(db: Db) {
    let ci = dpop_test::MockIssuer::start().await.unwrap();
    let it = start_trusting(&db, &ci).await;
    let k = key();
    let (_, prt) = it.public_refresh_token(&ci, &k).await;
    let v = it
        .post("/introspect", &public("public"), &[], &[("token", &prt)])
        .await
        .ok();
    assert_eq!(v["active"], json!(true));
    assert_eq!(v["cnf"], json!({ "jkt": jkt(&k) }));
}

async fn dpop_extension(db: Db) {
    let it = TestIssuer::start(&db).await;
    let k = key();
    let token = it.access_token("svc", &k, &[("scope", "read write")]).await;
    let with_proof = |proof: String, htm: &'static str, htu: &'static str| {
        vec![
            ("dpop", proof),
            ("htm", htm.to_owned()),
            ("htu", htu.to_owned()),
        ]
    };
    let send = |form: Vec<(&'static str, String)>| {
        let token = token.clone();
        let it = &it;
        async move {
            let form: Vec<(&str, &str)> = form.iter().map(|(a, b)| (*a, b.as_str())).collect();
            it.introspect(&token, &form).await
        }
    };

    // A good proof: active, with the claims.
    let proof = it.proof(&k, "GET", RS_URL, None, Some(&token));
    let v = send(with_proof(proof.clone(), "GET", RS_URL)).await.ok();
    assert_eq!(v["active"], json!(true), "{v}");
    assert_eq!(v["cnf"]["jkt"], json!(jkt(&k)));
    assert_eq!(v["scope"], json!("read write"));
    assert!(v.get("dpop_error").is_none());

    // The same proof again: a replay.
    let v = send(with_proof(proof, "GET", RS_URL)).await.ok();
    assert_eq!(v["active"], json!(false), "{v}");
    assert_eq!(v["dpop_error"], json!("invalid_dpop_proof"));
    assert!(v["dpop_error_description"].is_string());
    assert!(
        v.get("scope").is_none(),
        "an inactive answer leaks claims: {v}"
    );

    // Another key's proof (the token is bound to k).
    let other = key();
    let proof = it.proof(&other, "GET", RS_URL, None, Some(&token));
    let v = send(with_proof(proof, "GET", RS_URL)).await.ok();
    assert_eq!(v["active"], json!(false), "{v}");
    assert_eq!(v["dpop_error"], json!("invalid_token"));

    // A proof for another URL, another method, another token (ath), or without ath.
    let proof = it.proof(
        &k,
        "GET",
        "https://api.example.com/v1/other",
        None,
        Some(&token),
    );
    let v = send(with_proof(proof, "GET", RS_URL)).await.ok();
    assert_eq!(
        (v["active"].clone(), v["dpop_error"].clone()),
        (json!(false), json!("invalid_dpop_proof")),
        "{v}"
    );
    let proof = it.proof(&k, "POST", RS_URL, None, Some(&token));
    let v = send(with_proof(proof, "GET", RS_URL)).await.ok();
    assert_eq!(
        (v["active"].clone(), v["dpop_error"].clone()),
        (json!(false), json!("invalid_dpop_proof")),
        "{v}"
    );
    let proof = it.proof(&k, "GET", RS_URL, None, Some("another-token"));
    let v = send(with_proof(proof, "GET", RS_URL)).await.ok();
    assert_eq!(
        (v["active"].clone(), v["dpop_error"].clone()),
        (json!(false), json!("invalid_dpop_proof")),
        "{v}"
    );
    let proof = it.proof(&k, "GET", RS_URL, None, None);
    let v = send(with_proof(proof, "GET", RS_URL)).await.ok();
    assert_eq!(
        (v["active"].clone(), v["dpop_error"].clone()),
        (json!(false), json!("invalid_dpop_proof")),
        "{v}"
    );
    // A stale proof.
    let old = dpop_core::UnixTime::from_secs(it.clock.secs() - 300);
    let proof = it.proof_at(&k, "GET", RS_URL, None, Some(&token), old);
    let v = send(with_proof(proof, "GET", RS_URL)).await.ok();
    assert_eq!(
        (v["active"].clone(), v["dpop_error"].clone()),
        (json!(false), json!("invalid_dpop_proof")),
        "{v}"
    );

    // The query is not part of htu.
    let proof = it.proof(&k, "GET", RS_URL, None, Some(&token));
    let v = send(with_proof(
        proof,
        "GET",
        "https://api.example.com/v1/items?page=2",
    ))
    .await
    .ok();
    assert_eq!(v["active"], json!(true), "{v}");

    // Only some of dpop, htm, htu.
    let proof = it.proof(&k, "GET", RS_URL, None, Some(&token));
    for form in [
        vec![("dpop", proof.clone()), ("htm", "GET".to_owned())],
        vec![("dpop", proof.clone()), ("htu", RS_URL.to_owned())],
        vec![("htm", "GET".to_owned()), ("htu", RS_URL.to_owned())],
        vec![("dpop", proof.clone())],
    ] {
        send(form).await.err(400, "invalid_request");
    }
    // An htu that is not a URL.
    send(with_proof(proof, "GET", "not a url"))
        .await
        .err(400, "invalid_request");

    // A Bearer token with a proof: not DPoP-bound.
    let body = it
        .token(&basic("optional"), None, &[("grant_type", GRANT_CC)])
        .await
        .ok();
    let bearer = body["access_token"].as_str().unwrap().to_owned();
    let proof = it.proof(&k, "GET", RS_URL, None, Some(&bearer));
    let form = with_proof(proof, "GET", RS_URL);
    let form: Vec<(&str, &str)> = form.iter().map(|(a, b)| (*a, b.as_str())).collect();
    let v = it.introspect(&bearer, &form).await.ok();
    assert_eq!(
        (v["active"].clone(), v["dpop_error"].clone()),
        (json!(false), json!("invalid_token")),
        "{v}"
    );

    // A revoked token is inactive before any proof check.
    let proof = it.proof(&k, "GET", RS_URL, None, Some(&token));
    assert_eq!(it.revoke(&basic("svc"), &token, &[]).await.status, 200);
    let v = send(with_proof(proof, "GET", RS_URL)).await.ok();
    assert_eq!(v, json!({ "active": false }));
}

/// Removing a client from the configuration offboards it as disabling it would: its
/// tokens, and whatever other clients derived from them (tokens, refresh grants), are
/// inactive and refused. Workloads of trusted issuers are not clients, and are unaffected.
async fn removed_client_is_offboarded(db: Db) {
    let ci = dpop_test::MockIssuer::start().await.unwrap();
    let a = start_trusting(&db, &ci).await;
    let k = key();
    let subject = a.access_token("svc", &k, &[]).await;
    let body = a
        .exchange(&basic("svc2"), Some(&k), &subject, &[])
        .await
        .ok();
    let derived = body["access_token"].as_str().unwrap().to_owned();
    let rt = body["refresh_token"].as_str().unwrap().to_owned();
    let own = a.access_token("svc2", &k, &[]).await;
    let (workload, workload_rt) = a.public_refresh_token(&ci, &k).await;
    // svc removed, and svc2 no longer acting for it.
    let text = a.config_text();
    let start = text.find("[[clients]]\nid = \"svc\"\n").unwrap();
    let end = start + text[start..].find("[[clients]]\nid = \"svc2\"").unwrap();
    let edited =
        format!("{}{}", &text[..start], &text[end..]).replace("may_exchange_for = [\"svc\"]\n", "");
    let b = a.second_instance_with_config(&edited).await;
    assert!(!b.active(&subject).await);
    assert!(!b.active(&derived).await);
    let v = b
        .post("/introspect", &basic("svc2"), &[], &[("token", &rt)])
        .await
        .ok();
    assert_eq!(v, json!({ "active": false }));
    b.exchange(&basic("svc2"), Some(&k), &derived, &[])
        .await
        .err(400, "invalid_grant");
    b.clock.advance(60);
    b.refresh(&basic("svc2"), Some(&k), &rt, &[])
        .await
        .err(400, "invalid_grant");
    assert!(b.active(&own).await);
    assert!(b.active(&workload).await);
    b.refresh(&public("public"), Some(&k), &workload_rt, &[])
        .await
        .ok();
}
