//! The token endpoint: metadata and JWKS, client authentication (secrets, private key
//! JWTs, public clients), DPoP proofs and nonces, request errors, least privilege.

use serde_json::json;

use crate::support::*;

db_tests!(
    metadata_at_both_well_known_paths,
    jwks_publishes_the_signing_key,
    health_endpoints,
    client_credentials_basic_issues_a_bound_at_jwt,
    client_credentials_post,
    private_key_jwt_accepted,
    private_key_jwt_refused,
    nonce_round_trip,
    no_nonce_configuration,
    proof_replay_refused,
    bad_proofs_refused,
    optional_dpop_client_gets_bearer_without_proof,
    client_authentication_errors,
    request_errors,
    scope_and_target_errors,
    least_privilege_scopes_and_audiences,
    disabled_client_refused,
    issuer_with_a_path,
    basic_credentials_are_form_encoded,
    ml_dsa_proofs_where_configured,
);

async fn metadata_at_both_well_known_paths(db: Db) {
    let it = TestIssuer::start(&db).await;
    for path in [
        "/.well-known/oauth-authorization-server",
        "/.well-known/openid-configuration",
    ] {
        let r = it.get(path).await;
        assert_eq!(r.status, 200, "{path}: {}", r.body);
        let m = r.json();
        let u = &it.url;
        assert_eq!(m["issuer"], json!(u));
        assert_eq!(m["token_endpoint"], json!(format!("{u}/token")));
        assert_eq!(m["jwks_uri"], json!(format!("{u}/jwks")));
        assert_eq!(
            m["introspection_endpoint"],
            json!(format!("{u}/introspect"))
        );
        assert_eq!(m["revocation_endpoint"], json!(format!("{u}/revoke")));
        assert_eq!(
            m["grant_types_supported"],
            json!([GRANT_CC, GRANT_REFRESH, GRANT_EXCHANGE])
        );
        assert_eq!(
            m["token_endpoint_auth_methods_supported"],
            json!([
                "client_secret_basic",
                "client_secret_post",
                "private_key_jwt",
                "none"
            ])
        );
        let algs = m["dpop_signing_alg_values_supported"]
            .as_array()
            .expect("dpop_signing_alg_values_supported");
        assert!(algs.contains(&json!("ES256")), "{algs:?}");
        assert!(
            !algs
                .iter()
                .any(|a| a == "none" || a.as_str().is_some_and(|a| a.starts_with("HS")))
        );
        assert_eq!(m["token_endpoint_dpop_nonce_required"], json!(true));
        let scopes = m["scopes_supported"].as_array().expect("scopes_supported");
        for s in ["read", "write", "admin"] {
            assert!(scopes.contains(&json!(s)), "{scopes:?}");
        }
    }
}

async fn jwks_publishes_the_signing_key(db: Db) {
    let it = TestIssuer::start(&db).await;
    let r = it.get("/jwks").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/jwk-set+json"));
    let (doc, set) = it.jwks().await;
    let keys = doc["keys"].as_array().expect("keys");
    assert_eq!(keys.len(), 1, "{doc}");
    let k = &keys[0];
    assert_eq!(k["kid"], json!(it.issuer.signing_kid()));
    assert_eq!(k["alg"], json!("ES256"));
    assert_eq!(k["use"], json!("sig"));
    assert_eq!(k["kty"], json!("EC"));
    assert!(k.get("d").is_none(), "the private key is published: {k}");
    assert!(set.has_kid(&it.issuer.signing_kid()));
}

async fn health_endpoints(db: Db) {
    let it = TestIssuer::start(&db).await;
    let h = it.get("/healthz").await;
    assert_eq!((h.status, h.body.trim()), (200, "ok"));
    let r = it.get("/readyz").await;
    assert_eq!(
        (r.status, r.body.trim()),
        (
            200,
            r#"{"database_reachable":true,"ready":true,"signing_key":true}"#
        )
    );
}

async fn client_credentials_basic_issues_a_bound_at_jwt(db: Db) {
    let it = TestIssuer::start(&db).await;
    let k = key();
    let r = it.cc("svc", &k, &[]).await;
    let body = r.ok();
    assert_eq!(r.header("pragma"), Some("no-cache"));
    assert_eq!(body["token_type"], json!("DPoP"));
    assert_eq!(body["expires_in"], json!(300));
    assert_eq!(body["scope"], json!("read"));
    assert!(body.get("refresh_token").is_none(), "{body}");
    let token = body["access_token"].as_str().expect("access_token");

    let (header, _) = decode(token);
    assert_eq!(header["typ"], json!("at+jwt"));
    assert_eq!(header["alg"], json!("ES256"));
    assert_eq!(header["kid"], json!(it.issuer.signing_kid()));
    assert_eq!(it.jwks_kids().await, vec![it.issuer.signing_kid()]);

    let jwt = it.verify(token, API).await;
    let c = &jwt.claims;
    assert_eq!(c["iss"], json!(it.url));
    assert_eq!(c["sub"], json!("svc"));
    assert_eq!(c["aud"], json!(API));
    assert_eq!(c["client_id"], json!("svc"));
    assert_eq!(c["scope"], json!("read"));
    assert_eq!(c["cnf"], json!({ "jkt": jkt(&k) }));
    let iat = c["iat"].as_u64().expect("iat");
    assert_eq!(iat, it.clock.secs());
    assert_eq!(c["exp"].as_u64(), Some(iat + 300));
    assert!(c["jti"].as_str().is_some_and(|j| j.len() >= 16), "{c:?}");
    assert!(c.get("act").is_none());

    // Each token has its own jti.
    let again = it.access_token("svc", &k, &[]).await;
    assert_ne!(decode(&again).1["jti"], c["jti"]);
}

async fn client_credentials_post(db: Db) {
    let it = TestIssuer::start(&db).await;
    let k = key();
    let body = it
        .token(&post("svc"), Some(&k), &[("grant_type", GRANT_CC)])
        .await
        .ok();
    assert_eq!(body["token_type"], json!("DPoP"));
    let jwt = it.verify(body["access_token"].as_str().unwrap(), API).await;
    assert_eq!(jwt.claims["client_id"], json!("svc"));
    assert_eq!(jwt.claims["cnf"]["jkt"], json!(jkt(&k)));
}

async fn private_key_jwt_accepted(db: Db) {
    let it = TestIssuer::start(&db).await;
    let k = key();
    let cc = [("grant_type", GRANT_CC)];
    for aud in [
        json!(it.url),
        json!(it.token_url()),
        json!(["https://x.example", it.url]),
    ] {
        let assertion = it.assertion(&it.client_key, &json!({ "aud": aud }));
        let body = it.token(&Auth::Jwt(assertion), Some(&k), &cc).await.ok();
        let jwt = it.verify(body["access_token"].as_str().unwrap(), API).await;
        assert_eq!(jwt.claims["client_id"], json!("keyed"));
        assert_eq!(jwt.claims["sub"], json!("keyed"));
        assert_eq!(jwt.claims["cnf"]["jkt"], json!(jkt(&k)));
    }
    // The longest accepted lifetime: exp = now + 600.
    let exp = it.clock.secs() + 600;
    let assertion = it.assertion(&it.client_key, &json!({ "exp": exp }));
    it.token(&Auth::Jwt(assertion), Some(&k), &cc).await.ok();
}

async fn private_key_jwt_refused(db: Db) {
    let it = TestIssuer::start(&db).await;
    let k = key();
    let cc = [("grant_type", GRANT_CC)];
    let now = it.clock.secs();

    // Replay: the same assertion (same jti) twice.
    let assertion = it.assertion(&it.client_key, &json!({}));
    it.token(&Auth::Jwt(assertion.clone()), Some(&k), &cc)
        .await
        .ok();
    it.token(&Auth::Jwt(assertion), Some(&k), &cc)
        .await
        .err(401, "invalid_client");

    // A replay of a refused assertion's jti is refused too, but a fresh jti is fine:
    // the jti is what counts, not the whole token.
    let jti = "fixed-jti-1";
    let a1 = it.assertion(&it.client_key, &json!({ "jti": jti }));
    let a2 = it.assertion(&it.client_key, &json!({ "jti": jti, "exp": now + 90 }));
    it.token(&Auth::Jwt(a1), Some(&k), &cc).await.ok();
    it.token(&Auth::Jwt(a2), Some(&k), &cc)
        .await
        .err(401, "invalid_client");

    let refused = [
        ("wrong aud", json!({ "aud": "https://elsewhere.example" })),
        (
            "aud of another endpoint path",
            json!({ "aud": format!("{}/jwks", it.url) }),
        ),
        ("expired", json!({ "iat": now - 600, "exp": now - 120 })),
        ("exp too far", json!({ "exp": now + 3600 })),
        ("iss is not the client", json!({ "iss": "svc" })),
        ("no exp", json!({ "exp": null })),
        ("no jti", json!({ "jti": null })),
    ];
    for (what, claims) in refused {
        let assertion = it.assertion(&it.client_key, &claims);
        let r = it.token(&Auth::Jwt(assertion), Some(&k), &cc).await;
        assert_eq!(r.status, 401, "{what}: {}", r.body);
        r.err(401, "invalid_client");
        assert!(r.header("www-authenticate").is_some(), "{what}");
    }

    // Signed by another key.
    let other = key();
    let assertion = it.assertion(&other, &json!({}));
    it.token(&Auth::Jwt(assertion), Some(&k), &cc)
        .await
        .err(401, "invalid_client");

    // A tampered payload: the signature no longer matches.
    let good = it.assertion(&it.client_key, &json!({}));
    let forged = it.assertion(&other, &json!({}));
    let mut parts: Vec<&str> = good.split('.').collect();
    parts[2] = forged.split('.').nth(2).unwrap();
    it.token(&Auth::Jwt(parts.join(".")), Some(&k), &cc)
        .await
        .err(401, "invalid_client");

    // An `alg: none` assertion.
    let (_, claims) = decode(&it.assertion(&it.client_key, &json!({})));
    let none = format!(
        "{}.{}.",
        dpop_test::b64url(br#"{"alg":"none","typ":"JWT"}"#),
        dpop_test::b64url(claims.to_string().as_bytes())
    );
    it.token(&Auth::Jwt(none), Some(&k), &cc)
        .await
        .err(401, "invalid_client");

    // A wrong client_assertion_type.
    let assertion = it.assertion(&it.client_key, &json!({}));
    let proof = {
        it.fresh_nonce().await;
        it.token_proof(&k)
    };
    it.token_raw(
        &Auth::Nothing,
        &[proof],
        &[
            ("grant_type", GRANT_CC),
            ("client_assertion_type", "urn:example:wrong"),
            ("client_assertion", &assertion),
        ],
    )
    .await
    .err(401, "invalid_client");

    // After all that, a good assertion still works.
    let assertion = it.assertion(&it.client_key, &json!({}));
    it.token(&Auth::Jwt(assertion), Some(&k), &cc).await.ok();
}

async fn nonce_round_trip(db: Db) {
    let it = TestIssuer::start(&db).await;
    let k = key();
    let form = [("grant_type", GRANT_CC)];
    let proof = it.proof(&k, "POST", &it.token_url(), None, None);
    let r = it.token_raw(&basic("svc"), &[proof], &form).await;
    r.err(400, "use_dpop_nonce");
    let nonce = r.header("dpop-nonce").expect("DPoP-Nonce").to_owned();
    assert!(!nonce.is_empty());

    let proof = it.proof(&k, "POST", &it.token_url(), Some(&nonce), None);
    let body = it.token_raw(&basic("svc"), &[proof], &form).await.ok();
    assert_eq!(body["token_type"], json!("DPoP"));

    // Later, but within its lifetime: still accepted, and the response hands out a
    // newer nonce (RFC 9449 §8.2).
    it.clock.advance(150);
    let proof = it.proof(&k, "POST", &it.token_url(), Some(&nonce), None);
    let r = it.token_raw(&basic("svc"), &[proof], &form).await;
    r.ok();
    let renewed = r.header("dpop-nonce").expect("a renewed nonce");
    assert_ne!(renewed, nonce);

    // A made-up nonce is refused with a fresh one.
    let proof = it.proof(&k, "POST", &it.token_url(), Some("made-up-nonce"), None);
    let r = it.token_raw(&basic("svc"), &[proof], &form).await;
    r.err(400, "use_dpop_nonce");
    assert!(r.header("dpop-nonce").is_some());

    // A nonce past its lifetime (300 s by default) is refused with a fresh one.
    it.clock.advance(1000);
    let proof = it.proof(&k, "POST", &it.token_url(), Some(&nonce), None);
    let r = it.token_raw(&basic("svc"), &[proof], &form).await;
    r.err(400, "use_dpop_nonce");
    let fresh = r.header("dpop-nonce").expect("DPoP-Nonce").to_owned();
    let proof = it.proof(&k, "POST", &it.token_url(), Some(&fresh), None);
    it.token_raw(&basic("svc"), &[proof], &form).await.ok();
}

async fn no_nonce_configuration(db: Db) {
    let it = TestIssuer::start_with(&db, Setup::no_nonce()).await;
    let m = it
        .get("/.well-known/oauth-authorization-server")
        .await
        .json();
    assert_eq!(m["token_endpoint_dpop_nonce_required"], json!(false));
    let k = key();
    let proof = it.proof(&k, "POST", &it.token_url(), None, None);
    let r = it
        .token_raw(
            &basic("svc"),
            std::slice::from_ref(&proof),
            &[("grant_type", GRANT_CC)],
        )
        .await;
    let body = r.ok();
    assert!(r.header("dpop-nonce").is_none());
    assert_eq!(body["token_type"], json!("DPoP"));
    // Replay protection does not depend on nonces.
    it.token_raw(&basic("svc"), &[proof], &[("grant_type", GRANT_CC)])
        .await
        .err(400, "invalid_dpop_proof");
}

async fn proof_replay_refused(db: Db) {
    let it = TestIssuer::start(&db).await;
    let k = key();
    let nonce = it.fresh_nonce().await;
    let proof = it.proof(&k, "POST", &it.token_url(), Some(&nonce), None);
    let form = [("grant_type", GRANT_CC)];
    it.token_raw(&basic("svc"), std::slice::from_ref(&proof), &form)
        .await
        .ok();
    it.token_raw(&basic("svc"), std::slice::from_ref(&proof), &form)
        .await
        .err(400, "invalid_dpop_proof");
    // Replayed by another client too.
    it.token_raw(&basic("svc2"), &[proof], &form)
        .await
        .err(400, "invalid_dpop_proof");
}

async fn bad_proofs_refused(db: Db) {
    let it = TestIssuer::start(&db).await;
    let k = key();
    let nonce = it.fresh_nonce().await;
    let n = Some(nonce.as_str());
    let form = [("grant_type", GRANT_CC)];
    let url = it.token_url();
    let now = it.clock.secs();

    let good = it.proof(&k, "POST", &url, n, None);
    let other_sig = it.proof(&key(), "POST", &url, n, None);
    let mut parts: Vec<&str> = good.split('.').collect();
    parts[2] = other_sig.split('.').nth(2).unwrap();
    let bad_signature = parts.join(".");

    let cases: Vec<(&str, Vec<String>)> = vec![
        ("no proof", vec![]),
        (
            "wrong htu",
            vec![it.proof(&k, "POST", &format!("{}/revoke", it.url), n, None)],
        ),
        (
            "wrong host",
            vec![it.proof(&k, "POST", "https://issuer.example/token", n, None)],
        ),
        ("wrong htm", vec![it.proof(&k, "GET", &url, n, None)]),
        ("bad signature", vec![bad_signature]),
        (
            "stale iat",
            vec![it.proof_at(
                &k,
                "POST",
                &url,
                n,
                None,
                dpop_core::UnixTime::from_secs(now - 300),
            )],
        ),
        (
            "iat in the future",
            vec![it.proof_at(
                &k,
                "POST",
                &url,
                n,
                None,
                dpop_core::UnixTime::from_secs(now + 300),
            )],
        ),
        ("not a JWT", vec!["garbage".to_owned()]),
        (
            "two proofs",
            vec![
                it.proof(&k, "POST", &url, n, None),
                it.proof(&k, "POST", &url, n, None),
            ],
        ),
        (
            "a JWT that is not a proof",
            vec![it.assertion(&it.client_key, &json!({}))],
        ),
    ];
    for (what, dpop) in cases {
        let r = it.token_raw(&basic("svc"), &dpop, &form).await;
        assert_eq!(
            (r.status, r.json()["error"].as_str()),
            (400, Some("invalid_dpop_proof")),
            "{what}: {}",
            r.body
        );
        r.err(400, "invalid_dpop_proof");
    }
    // The good proof was never used, so it still works.
    it.token_raw(&basic("svc"), &[good], &form).await.ok();
}

async fn optional_dpop_client_gets_bearer_without_proof(db: Db) {
    let it = TestIssuer::start(&db).await;
    let body = it
        .token(&basic("optional"), None, &[("grant_type", GRANT_CC)])
        .await
        .ok();
    assert_eq!(body["token_type"], json!("Bearer"));
    let jwt = it.verify(body["access_token"].as_str().unwrap(), API).await;
    assert!(jwt.claims.get("cnf").is_none(), "{:?}", jwt.claims);
    // With a proof, the same client gets a bound token.
    let k = key();
    let body = it.cc("optional", &k, &[]).await.ok();
    assert_eq!(body["token_type"], json!("DPoP"));
    let jwt = it.verify(body["access_token"].as_str().unwrap(), API).await;
    assert_eq!(jwt.claims["cnf"]["jkt"], json!(jkt(&k)));
    // A bad proof is refused, not ignored.
    it.token_raw(
        &basic("optional"),
        &["garbage".to_owned()],
        &[("grant_type", GRANT_CC)],
    )
    .await
    .err(400, "invalid_dpop_proof");
}

async fn client_authentication_errors(db: Db) {
    let it = TestIssuer::start(&db).await;
    let k = key();
    let cc = [("grant_type", GRANT_CC)];

    let wrong = Auth::Basic("svc".into(), "not-the-secret-at-all".into());
    let r = it.token(&wrong, Some(&k), &cc).await;
    r.err(401, "invalid_client");
    let challenge = r.header("www-authenticate").expect("WWW-Authenticate");
    assert!(challenge.starts_with("Basic"), "{challenge}");

    let r = it
        .token(
            &Auth::Post("svc".into(), "not-the-secret-at-all".into()),
            Some(&k),
            &cc,
        )
        .await;
    r.err(401, "invalid_client");

    let unknown = it.token(&basic("nobody"), Some(&k), &cc).await;
    unknown.err(401, "invalid_client");
    assert!(unknown.header("www-authenticate").is_some());
    // Unknown client and wrong secret are indistinguishable.
    assert_eq!(unknown.json(), r.json());

    // Without a proof, a client that requires one learns so once authenticated; an
    // unknown client is refused like a wrong secret, so ids cannot be probed.
    let known = it.token_raw(&basic("svc"), &[], &cc).await;
    known.err(400, "invalid_dpop_proof");
    let unknown = it.token_raw(&basic("nobody"), &[], &cc).await;
    unknown.err(401, "invalid_client");
    assert_eq!(unknown.json(), r.json());

    // No credentials at all.
    it.token(&Auth::Nothing, Some(&k), &cc)
        .await
        .err(401, "invalid_client");

    // A confidential client cannot authenticate as public (client_id only).
    it.token(&public("svc"), Some(&k), &cc)
        .await
        .err(401, "invalid_client");

    // A private_key_jwt client cannot use a secret.
    it.token(&basic("keyed"), Some(&k), &cc)
        .await
        .err(401, "invalid_client");

    // Two methods at once: Basic and client_secret in the body.
    it.fresh_nonce().await;
    let both = it
        .post(
            "/token",
            &basic("svc"),
            &[("dpop", it.token_proof(&k))],
            &[("grant_type", GRANT_CC), ("client_secret", SECRET)],
        )
        .await;
    both.err(400, "invalid_request");
    // Basic and a client assertion.
    let assertion = it.assertion(&it.client_key, &json!({}));
    let both = it
        .post(
            "/token",
            &basic("svc"),
            &[("dpop", it.token_proof(&k))],
            &[
                ("grant_type", GRANT_CC),
                ("client_assertion_type", ASSERTION_TYPE),
                ("client_assertion", &assertion),
            ],
        )
        .await;
    both.err(400, "invalid_request");
    // Basic for one client, client_id of another.
    let mismatch = it
        .post(
            "/token",
            &basic("svc"),
            &[("dpop", it.token_proof(&k))],
            &[("grant_type", GRANT_CC), ("client_id", "svc2")],
        )
        .await;
    mismatch.err(400, "invalid_request");

    // The right secret still works after all the failures.
    it.cc("svc", &k, &[]).await.ok();
}

async fn request_errors(db: Db) {
    let it = TestIssuer::start(&db).await;
    let k = key();

    // A repeated parameter.
    it.token(
        &basic("svc"),
        Some(&k),
        &[("grant_type", GRANT_CC), ("grant_type", GRANT_CC)],
    )
    .await
    .err(400, "invalid_request");
    it.token(
        &basic("svc"),
        Some(&k),
        &[
            ("grant_type", GRANT_CC),
            ("scope", "read"),
            ("scope", "read"),
        ],
    )
    .await
    .err(400, "invalid_request");

    // A body over max_body_bytes (64 KiB by default): 413 with the OAuth error body.
    let big = "x".repeat(70 * 1024);
    let r = it
        .token_raw(
            &basic("svc"),
            &[],
            &[("grant_type", GRANT_CC), ("pad", &big)],
        )
        .await;
    r.err(413, "invalid_request");
    assert_eq!(r.header("cache-control"), Some("no-store"));

    // Not a form.
    it.fresh_nonce().await;
    let r = it
        .post_raw(
            "/token",
            &[("dpop", it.token_proof(&k))],
            "application/json",
            json!({ "grant_type": GRANT_CC }).to_string(),
        )
        .await;
    r.err(400, "invalid_request");

    // No grant_type, or an empty one.
    it.token(&basic("svc"), Some(&k), &[("scope", "read")])
        .await
        .err(400, "invalid_request");
    it.token(&basic("svc"), Some(&k), &[("grant_type", "")])
        .await
        .err(400, "invalid_request");

    // Unknown grants.
    for grant in ["password", "authorization_code", "urn:example:grant"] {
        it.token(&basic("svc"), Some(&k), &[("grant_type", grant)])
            .await
            .err(400, "unsupported_grant_type");
    }

    // Grants the client may not use.
    it.token(
        &basic("cc-only"),
        Some(&k),
        &[("grant_type", GRANT_REFRESH), ("refresh_token", "x")],
    )
    .await
    .err(400, "unauthorized_client");
    let subject = it.access_token("svc", &k, &[]).await;
    it.exchange(&basic("cc-only"), Some(&k), &subject, &[])
        .await
        .err(400, "unauthorized_client");
    it.token(&public("public"), Some(&k), &[("grant_type", GRANT_CC)])
        .await
        .err(400, "unauthorized_client");
    // A client that may only introspect gets no tokens.
    it.token(&basic("rs"), Some(&k), &[("grant_type", GRANT_CC)])
        .await
        .err(400, "unauthorized_client");

    // A missing refresh_token / subject_token is invalid_request.
    it.token(&basic("svc"), Some(&k), &[("grant_type", GRANT_REFRESH)])
        .await
        .err(400, "invalid_request");
    it.token(
        &basic("svc"),
        Some(&k),
        &[
            ("grant_type", GRANT_EXCHANGE),
            ("subject_token_type", TT_ACCESS),
        ],
    )
    .await
    .err(400, "invalid_request");
}

async fn scope_and_target_errors(db: Db) {
    let it = TestIssuer::start(&db).await;
    let k = key();
    it.cc("svc2", &k, &[("scope", "read admin")])
        .await
        .err(400, "invalid_scope");
    it.cc("svc", &k, &[("scope", "unknown")])
        .await
        .err(400, "invalid_scope");
    it.cc("svc2", &k, &[("resource", OTHER_API)])
        .await
        .err(400, "invalid_target");
    it.cc("svc", &k, &[("resource", "https://evil.example")])
        .await
        .err(400, "invalid_target");
    it.cc("svc", &k, &[("audience", "https://evil.example")])
        .await
        .err(400, "invalid_target");
    it.cc(
        "svc",
        &k,
        &[("resource", API), ("resource", "https://evil.example")],
    )
    .await
    .err(400, "invalid_target");
    // RFC 8707: resource is an absolute URI without a fragment.
    it.cc("svc", &k, &[("resource", "api")])
        .await
        .err(400, "invalid_target");
    it.cc("svc", &k, &[("resource", &format!("{API}#frag"))])
        .await
        .err(400, "invalid_target");
}

async fn least_privilege_scopes_and_audiences(db: Db) {
    let it = TestIssuer::start(&db).await;
    let k = key();
    let claims = |body: serde_json::Value| decode(body["access_token"].as_str().unwrap()).1;

    // Nothing requested: the defaults.
    let body = it.cc("svc", &k, &[]).await.ok();
    assert_eq!(body["scope"], json!("read"));
    let c = claims(body);
    assert_eq!(c["scope"], json!("read"));
    assert_eq!(c["aud"], json!(API));

    // A subset: exactly it.
    let body = it.cc("svc", &k, &[("scope", "write admin")]).await.ok();
    assert_eq!(body["scope"], json!("write admin"));
    assert_eq!(claims(body)["scope"], json!("write admin"));
    let body = it.cc("svc", &k, &[("scope", "write")]).await.ok();
    assert_eq!(claims(body)["scope"], json!("write"));
    // Duplicates collapse.
    let body = it.cc("svc", &k, &[("scope", "write write")]).await.ok();
    assert_eq!(claims(body)["scope"], json!("write"));

    // resource / audience select among the allowed audiences.
    let body = it.cc("svc", &k, &[("resource", OTHER_API)]).await.ok();
    let token = body["access_token"].as_str().unwrap().to_owned();
    assert_eq!(claims(body)["aud"], json!(OTHER_API));
    it.verify(&token, OTHER_API).await;
    let body = it.cc("svc", &k, &[("audience", OTHER_API)]).await.ok();
    assert_eq!(claims(body)["aud"], json!(OTHER_API));
    let body = it
        .cc("svc", &k, &[("resource", API), ("audience", OTHER_API)])
        .await
        .ok();
    assert_eq!(claims(body)["aud"], json!([API, OTHER_API]));
    // svc2 has no default_audiences: all of its audiences.
    let body = it.cc("svc2", &k, &[]).await.ok();
    let c = claims(body);
    assert_eq!(c["aud"], json!(API));
    // svc2 has no default_scopes: all of its scopes.
    assert_eq!(c["scope"], json!("read write"));
}

async fn disabled_client_refused(db: Db) {
    let it = TestIssuer::start(&db).await;
    let k = key();
    it.cc("svc2", &k, &[]).await.ok();
    dpop_issuer::set_client_disabled(&it.config(), "svc2", true, it.clock.unix())
        .await
        .unwrap();
    let r = it.cc("svc2", &k, &[]).await;
    r.err(401, "invalid_client");
    assert!(r.header("www-authenticate").is_some());
    // Other clients are unaffected.
    it.cc("svc", &k, &[]).await.ok();
    // Re-enabled, it gets tokens again.
    dpop_issuer::set_client_disabled(&it.config(), "svc2", false, it.clock.unix())
        .await
        .unwrap();
    it.cc("svc2", &k, &[]).await.ok();
    // Unknown clients are refused by the operation.
    assert!(
        dpop_issuer::set_client_disabled(&it.config(), "nobody", true, it.clock.unix())
            .await
            .is_err()
    );
}

async fn issuer_with_a_path(db: Db) {
    let it = TestIssuer::start_with(
        &db,
        Setup {
            path: "/auth".to_owned(),
            ..Setup::default()
        },
    )
    .await;
    let origin = it.url.trim_end_matches("/auth").to_owned();
    // RFC 8414 §3.1: the well-known path goes between host and path; OpenID appends.
    for url in [
        format!("{origin}/.well-known/oauth-authorization-server/auth"),
        format!("{}/.well-known/openid-configuration", it.url),
    ] {
        let r = it.get_url(&url).await;
        assert_eq!(r.status, 200, "{url}: {}", r.body);
        let m = r.json();
        assert_eq!(m["issuer"], json!(it.url));
        assert_eq!(m["token_endpoint"], json!(format!("{}/token", it.url)));
    }
    assert_eq!(
        it.get_url(&format!("{origin}/.well-known/oauth-authorization-server"))
            .await
            .status,
        404
    );
    // The token endpoint (proof htu {issuer}/token), JWKS and introspection work under it.
    let k = key();
    let token = it.access_token("svc", &k, &[]).await;
    let jwt = it.verify(&token, API).await;
    assert_eq!(jwt.claims["iss"], json!(it.url));
    assert!(it.active(&token).await);
    // A proof for the origin's /token is not one for the issuer's.
    let nonce = it.fresh_nonce().await;
    let proof = it.proof(&k, "POST", &format!("{origin}/token"), Some(&nonce), None);
    it.token_raw(&basic("svc"), &[proof], &[("grant_type", GRANT_CC)])
        .await
        .err(400, "invalid_dpop_proof");
}

async fn basic_credentials_are_form_encoded(db: Db) {
    // RFC 6749 §2.3.1: Basic carries the form-urlencoded id and secret.
    let secret = "p@ss: w+rd/100%&more";
    let extra =
        ClientFixture::confidential("odd:id+é/x", dpop_issuer::hash_secret(secret).unwrap())
            .grants([GRANT_CC])
            .scopes(["read"])
            .audiences([API])
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
    let cc = [("grant_type", GRANT_CC)];
    let auth = Auth::Basic("odd:id+é/x".into(), secret.into());
    let body = it.token(&auth, Some(&k), &cc).await.ok();
    assert_eq!(
        decode(body["access_token"].as_str().unwrap()).1["client_id"],
        json!("odd:id+é/x")
    );
    let auth = Auth::Post("odd:id+é/x".into(), secret.into());
    it.token(&auth, Some(&k), &cc).await.ok();
    // The raw (unencoded) secret in Basic is not the secret.
    let raw = base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        format!(
            "{}:{secret}",
            form_urlencoded::byte_serialize("odd:id+é/x".as_bytes()).collect::<String>()
        ),
    );
    it.fresh_nonce().await;
    let r = it
        .post(
            "/token",
            &Auth::Nothing,
            &[
                ("authorization", format!("Basic {raw}")),
                ("dpop", it.token_proof(&k)),
            ],
            &cc,
        )
        .await;
    r.err(401, "invalid_client");
}

/// The median of some durations.
fn median(mut samples: Vec<std::time::Duration>) -> std::time::Duration {
    samples.sort();
    samples[samples.len() / 2]
}

/// How much longer `other` took than `base`, as the median over rounds of each round's
/// ratio. Samples of one round are taken one right after the other, so load from the
/// tests running beside this one (they hash secrets too) falls on both alike; a round
/// that load hit unevenly is an outlier that the median passes over. Comparing each
/// side's own fastest or median sample instead lets load that covers all of one side's
/// samples but spares one of the other's decide the ratio.
fn paired_ratio(base: &[std::time::Duration], other: &[std::time::Duration]) -> f64 {
    assert_eq!(base.len(), other.len());
    let mut ratios: Vec<f64> = base
        .iter()
        .zip(other)
        .map(|(b, o)| o.as_secs_f64() / b.as_secs_f64())
        .collect();
    ratios.sort_by(f64::total_cmp);
    ratios[ratios.len() / 2]
}

/// A token request whose client authentication fails, timed.
async fn timed_failure(
    it: &TestIssuer,
    auth: &Auth,
    k: &dpop_core::PrivateKey,
) -> std::time::Duration {
    let started = std::time::Instant::now();
    let r = it.token(auth, Some(k), &[("grant_type", GRANT_CC)]).await;
    let took = started.elapsed();
    r.err(401, "invalid_client");
    took
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_client_ids_take_as_long_as_wrong_secrets() {
    // An unknown client id, a known client with a wrong secret, and a client without a
    // secret that is sent one must all cost one Argon2 verification: otherwise the
    // response time tells which client ids exist.
    let db = Db::sqlite();
    let it = TestIssuer::start_with(&db, Setup::no_nonce()).await;
    let k = key();
    let wrong = "not-the-secret-at-all";
    let unknown = Auth::Basic("no-such-client".into(), wrong.into());
    let known = Auth::Basic("svc".into(), wrong.into());
    let secretless = Auth::Post("public".into(), wrong.into());
    // One Argon2 verification with the configured parameters, measured here between
    // the requests. Load from elsewhere only ever adds time, so the fastest of these is
    // the cost itself.
    let hash = dpop_issuer::secret::ClientSecret::from_config(
        &SECRET_HASH,
        &std::collections::BTreeMap::<String, String>::new(),
    )
    .unwrap();
    let argon2 = || {
        let h = hash.clone();
        tokio::task::spawn_blocking(move || {
            let started = std::time::Instant::now();
            assert!(!h.verify_slow(wrong));
            started.elapsed()
        })
    };
    // Warm up every path once, then interleave the samples so that load from other
    // tests falls on all of them alike.
    for auth in [&unknown, &known, &secretless] {
        timed_failure(&it, auth, &k).await;
    }
    let auths = [&known, &unknown, &secretless];
    let mut samples: Vec<Vec<std::time::Duration>> = vec![Vec::new(); auths.len()];
    let mut argon = Vec::new();
    for round in 0..11 {
        argon.push(argon2().await.unwrap());
        // Each round starts with another of them.
        for slot in 0..auths.len() {
            let i = (slot + round) % auths.len();
            samples[i].push(timed_failure(&it, auths[i], &k).await);
        }
    }
    let argon = argon.into_iter().min().unwrap();
    eprintln!(
        "argon2 {argon:?}; median failure: wrong secret {:?}, unknown client {:?}, \
         secretless client {:?}",
        median(samples[0].clone()),
        median(samples[1].clone()),
        median(samples[2].clone()),
    );
    for (what, t) in ["wrong secret", "unknown client", "secretless client"]
        .into_iter()
        .zip(&samples)
    {
        let t = median(t.clone());
        assert!(
            t >= argon / 2,
            "{what}: {t:?}, less than half an Argon2 verification ({argon:?})"
        );
    }
    for (what, i) in [("unknown client", 1), ("secretless client", 2)] {
        let ratio = paired_ratio(&samples[0], &samples[i]);
        assert!(
            (0.5..=2.0).contains(&ratio),
            "{what}: median ratio {ratio:.2} to a wrong secret, rounds {:?} against {:?}",
            samples[i],
            samples[0]
        );
    }
}

/// The `Retry-After` of a 429 `slow_down` answer.
#[track_caller]
fn slowed_down(r: &Resp) -> u64 {
    r.err(429, "slow_down");
    r.header("retry-after")
        .expect("Retry-After")
        .parse()
        .expect("Retry-After in seconds")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_secrets_are_limited_per_client_id() {
    // Defaults: 20 failed attempts per client id per minute.
    let db = Db::sqlite();
    let it = TestIssuer::start_with(&db, Setup::no_nonce()).await;
    let k = key();
    let cc = [("grant_type", GRANT_CC)];
    let wrong = |id: &str| Auth::Basic(id.into(), "not-the-secret-at-all".into());
    for _ in 0..20 {
        it.token(&wrong("svc"), Some(&k), &cc)
            .await
            .err(401, "invalid_client");
    }
    let wait = slowed_down(&it.token(&wrong("svc"), Some(&k), &cc).await);
    assert!((1..=60).contains(&wait), "Retry-After {wait}");
    // Over the limit nothing is checked, the right secret included.
    assert_eq!(
        slowed_down(&it.token(&basic("svc"), Some(&k), &cc).await),
        wait
    );
    assert_eq!(
        slowed_down(&it.token(&post("svc"), Some(&k), &cc).await),
        wait
    );
    // An unknown id is limited the same way, so the limit does not tell ids apart.
    for _ in 0..20 {
        it.token(&wrong("no-such-client"), Some(&k), &cc)
            .await
            .err(401, "invalid_client");
    }
    assert_eq!(
        slowed_down(&it.token(&wrong("no-such-client"), Some(&k), &cc).await),
        wait
    );
    // Other clients are not affected.
    it.cc("svc2", &k, &[]).await.ok();
    // After Retry-After, the client may try again.
    it.clock.advance(wait);
    it.cc("svc", &k, &[]).await.ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_secrets_are_limited_per_address() {
    // Defaults: 50 failed attempts per address per minute, whatever the client ids.
    let db = Db::sqlite();
    let it = TestIssuer::start_with(&db, Setup::no_nonce()).await;
    let k = key();
    let cc = [("grant_type", GRANT_CC)];
    for i in 0..50 {
        it.token(
            &Auth::Basic(format!("probe-{i}"), "not-the-secret-at-all".into()),
            Some(&k),
            &cc,
        )
        .await
        .err(401, "invalid_client");
    }
    let r = it
        .token(
            &Auth::Basic("probe-50".into(), "not-the-secret-at-all".into()),
            Some(&k),
            &cc,
        )
        .await;
    let wait = slowed_down(&r);
    // Every secret from that address waits, also introspection's.
    assert_eq!(
        slowed_down(&it.token(&basic("svc"), Some(&k), &cc).await),
        wait
    );
    assert_eq!(slowed_down(&it.introspect("x", &[]).await), wait);
    // Clients that do not send a secret are not concerned.
    let assertion = it.assertion(&it.client_key, &json!({}));
    it.token(&Auth::Jwt(assertion), Some(&k), &cc).await.ok();
    it.clock.advance(wait);
    it.cc("svc", &k, &[]).await.ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attempt_limits_are_configurable_and_see_through_trusted_proxies() {
    let db = Db::sqlite();
    let it = TestIssuer::start_with(
        &db,
        Setup {
            extra: "[auth_limits]\nfailures_per_client = 100\nfailures_per_address = 2\n\
                    window_secs = 30\ntrusted_proxies = [\"127.0.0.0/8\"]\n"
                .to_owned(),
            ..Setup::no_nonce()
        },
    )
    .await;
    let k = key();
    let cc = [("grant_type", GRANT_CC)];
    let from = |addr: &str, auth: &Auth| {
        let proof = it.token_proof(&k);
        let addr = addr.to_owned();
        let auth = auth.clone();
        let it = &it;
        async move {
            it.post(
                "/token",
                &auth,
                &[("dpop", proof), ("x-forwarded-for", addr)],
                &cc,
            )
            .await
        }
    };
    let wrong = Auth::Basic("svc".into(), "not-the-secret-at-all".into());
    // The proxy (loopback, trusted) reports the client's address: each has its own
    // allowance; the client cannot prepend addresses of its own choosing.
    for _ in 0..2 {
        from("198.51.100.7, 203.0.113.1", &wrong)
            .await
            .err(401, "invalid_client");
    }
    let wait = slowed_down(&from("192.0.2.99, 203.0.113.1", &basic("svc")).await);
    // One attempt per 30 / 2 = 15 s comes back.
    assert_eq!(wait, 15);
    from("203.0.113.2", &basic("svc")).await.ok();
    // IPv6 clients are counted per /64.
    for i in 0..2 {
        from(&format!("2001:db8:1:2::{i}"), &wrong)
            .await
            .err(401, "invalid_client");
    }
    slowed_down(&from("2001:db8:1:2:ffff::1", &basic("svc")).await);
    from("2001:db8:1:3::1", &basic("svc")).await.ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_addresses_from_untrusted_peers_are_ignored() {
    let db = Db::sqlite();
    let it = TestIssuer::start_with(
        &db,
        Setup {
            extra: "[auth_limits]\nfailures_per_address = 2\n".to_owned(),
            ..Setup::no_nonce()
        },
    )
    .await;
    let k = key();
    let cc = [("grant_type", GRANT_CC)];
    let wrong = Auth::Basic("svc".into(), "not-the-secret-at-all".into());
    for i in 0..2 {
        let proof = it.token_proof(&k);
        it.post(
            "/token",
            &wrong,
            &[
                ("dpop", proof),
                ("x-forwarded-for", format!("203.0.113.{i}")),
            ],
            &cc,
        )
        .await
        .err(401, "invalid_client");
    }
    let proof = it.token_proof(&k);
    let r = it
        .post(
            "/token",
            &basic("svc"),
            &[
                ("dpop", proof),
                ("x-forwarded-for", "203.0.113.9".to_owned()),
            ],
            &cc,
        )
        .await;
    assert_eq!(slowed_down(&r), 30);
}

/// Posts a token request with `headers` from a task of its own: many run at once.
async fn post_concurrently(
    url: String,
    headers: Vec<(&'static str, String)>,
    form: Vec<(&'static str, String)>,
) -> (u16, Option<String>) {
    let body = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(form)
        .finish();
    let mut request = reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .post(url)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body);
    for (name, value) in headers {
        request = request.header(name, value);
    }
    let r = request.send().await.unwrap();
    let retry_after = r
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    (r.status().as_u16(), retry_after)
}

fn basic_header(id: &str, secret: &str) -> String {
    use base64::Engine as _;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{id}:{secret}"))
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_wrong_secrets_stay_within_the_attempt_limit() {
    // Wrong secrets sent all at once, faster than Argon2 checks them: the limit (20 per
    // client id per minute) must hold for them too, not only for sequential attempts.
    let db = Db::sqlite();
    let it = TestIssuer::start_with(&db, Setup::no_nonce()).await;
    let k = key();
    let n = 60;
    let mut requests = tokio::task::JoinSet::new();
    for i in 0..n {
        let proof = it.proof(&k, "POST", &it.token_url(), None, None);
        requests.spawn(post_concurrently(
            it.token_url(),
            vec![
                ("dpop", proof),
                (
                    "authorization",
                    basic_header("svc", &format!("guess-{i:04}")),
                ),
            ],
            vec![("grant_type", GRANT_CC.to_owned())],
        ));
    }
    let (mut checked, mut limited) = (0, 0);
    while let Some(r) = requests.join_next().await {
        match r.unwrap() {
            (401, _) => checked += 1,
            (429, Some(retry_after)) => {
                let secs: u64 = retry_after.parse().unwrap();
                assert!((1..=60).contains(&secs), "Retry-After {secs}");
                limited += 1;
            }
            other => panic!("unexpected answer {other:?}"),
        }
    }
    eprintln!("{n} concurrent wrong secrets: {checked} checked (401), {limited} refused (429)");
    assert!(checked <= 20, "{checked} wrong secrets checked, limit 20");
    assert_eq!(checked + limited, n);
    // The right secret is refused too until the window moves on, then accepted.
    slowed_down(
        &it.token(&basic("svc"), Some(&k), &[("grant_type", GRANT_CC)])
            .await,
    );
    it.clock.advance(60);
    it.cc("svc", &k, &[]).await.ok();
}

/// A token request without a DPoP proof, timed.
async fn timed_without_proof(it: &TestIssuer, auth: &Auth) -> (Resp, std::time::Duration) {
    let started = std::time::Instant::now();
    let r = it.token(auth, None, &[("grant_type", GRANT_CC)]).await;
    (r, started.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_may_skip_dpop_look_like_unknown_ids_without_a_proof() {
    // Without a proof, whether a client must send one is known only once it has
    // authenticated: an unknown id, a `dpop = "optional"` client and a client that
    // requires DPoP, each with a wrong secret, must get the same answer in the same time.
    let db = Db::sqlite();
    let it = TestIssuer::start_with(&db, Setup::no_nonce()).await;
    let k = key();
    let wrong = |id: &str| Auth::Basic(id.into(), "not-the-secret-at-all".into());
    let ids = ["no-such-client", "optional", "svc"];
    let mut samples: Vec<Vec<std::time::Duration>> = vec![Vec::new(); ids.len()];
    let mut with_proof: Vec<Vec<std::time::Duration>> = vec![Vec::new(); ids.len()];
    let mut bodies = Vec::new();
    for round in 0..12 {
        // Each round starts with another id: the first request after the clock advance
        // below may pay for what the advance made old (attempt windows, caches), and
        // that must not always be the same id's.
        for slot in 0..ids.len() {
            let i = (slot + round) % ids.len();
            let id = ids[i];
            let (r, took) = timed_without_proof(&it, &wrong(id)).await;
            r.err(401, "invalid_client");
            if round == 0 {
                bodies.push(r.json());
            } else {
                samples[i].push(took);
            }
            let started = std::time::Instant::now();
            it.token(&wrong(id), Some(&k), &[("grant_type", GRANT_CC)])
                .await
                .err(401, "invalid_client");
            if round > 0 {
                with_proof[i].push(started.elapsed());
            }
        }
        // Stay under the attempt limits.
        it.clock.advance(60);
    }
    assert!(bodies.windows(2).all(|w| w[0] == w[1]), "{bodies:?}");
    for (i, id) in ids.iter().enumerate() {
        eprintln!(
            "wrong secret for {id:16}: median {:?} without a proof, {:?} with one",
            median(samples[i].clone()),
            median(with_proof[i].clone())
        );
    }
    for (i, id) in ids.iter().enumerate().skip(1) {
        let ratio = paired_ratio(&samples[0], &samples[i]);
        assert!(
            (0.5..=2.0).contains(&ratio),
            "{id}: median ratio {ratio:.2} to an unknown id, rounds {:?} against {:?}",
            samples[i],
            samples[0]
        );
    }
    // Naming a client without authenticating (client_id only) tells nothing either.
    let mut answers = Vec::new();
    for id in ["no-such-client", "optional", "svc", "public"] {
        let r = it
            .token(&public(id), None, &[("grant_type", GRANT_CC)])
            .await;
        answers.push(json!([r.status, r.json()]));
    }
    assert!(answers.windows(2).all(|w| w[0] == w[1]), "{answers:?}");
    // The right secret without a proof: told that a proof is required.
    it.token(&basic("svc"), None, &[("grant_type", GRANT_CC)])
        .await
        .err(400, "invalid_dpop_proof");
    it.token(&basic("optional"), None, &[("grant_type", GRANT_CC)])
        .await
        .ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nonce_round_trip_checks_no_secret() {
    // With a proof, the proof (and its nonce) is checked before the client: a request
    // answered `use_dpop_nonce` costs no Argon2 and counts no failed attempt.
    let db = Db::sqlite();
    let it = TestIssuer::start(&db).await;
    let k = key();
    let wrong = Auth::Basic("svc".into(), "not-the-secret-at-all".into());
    for _ in 0..40 {
        let proof = it.proof(&k, "POST", &it.token_url(), None, None);
        it.token_raw(&wrong, &[proof], &[("grant_type", GRANT_CC)])
            .await
            .err(400, "use_dpop_nonce");
    }
    it.cc("svc", &k, &[]).await.ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_with_costlier_hash_parameters_looks_like_an_unknown_id() {
    use argon2::password_hash::{PasswordHasher as _, SaltString};
    // One client's hash takes four times the memory (and time) of the others: an
    // unknown id must cost at least as much, or that client's id shows in the timing.
    let heavy = argon2::Argon2::new(
        argon2::Algorithm::Argon2id,
        argon2::Version::V0x13,
        argon2::Params::new(4 * 19 * 1024, 2, 1, None).unwrap(),
    )
    .hash_password(
        b"the-heavy-client-secret",
        &SaltString::encode_b64(&[9_u8; 16]).unwrap(),
    )
    .unwrap()
    .to_string();
    let db = Db::sqlite();
    let it = TestIssuer::start_with(
        &db,
        Setup {
            extra: ClientFixture::confidential("heavy", heavy)
                .grants([GRANT_CC])
                .scopes(["read"])
                .audiences([API])
                .render(),
            ..Setup::no_nonce()
        },
    )
    .await;
    let k = key();
    let wrong = |id: &str| Auth::Basic(id.into(), "not-the-secret-at-all".into());
    let (unknown, heavy) = (wrong("no-such-client"), wrong("heavy"));
    timed_failure(&it, &unknown, &k).await;
    timed_failure(&it, &heavy, &k).await;
    let (mut u, mut h) = (Vec::new(), Vec::new());
    for round in 0..11 {
        // Each round starts with the other one.
        if round % 2 == 0 {
            u.push(timed_failure(&it, &unknown, &k).await);
            h.push(timed_failure(&it, &heavy, &k).await);
        } else {
            h.push(timed_failure(&it, &heavy, &k).await);
            u.push(timed_failure(&it, &unknown, &k).await);
        }
    }
    eprintln!(
        "median failure: unknown id {:?}, client with costlier parameters {:?}",
        median(u.clone()),
        median(h.clone())
    );
    let ratio = paired_ratio(&h, &u);
    assert!(
        (0.6..=1.7).contains(&ratio),
        "unknown id: median ratio {ratio:.2} to the costlier client, rounds {u:?} against {h:?}"
    );
}

/// ML-DSA (RFC 9964) is opt-in: announced and accepted only where `[dpop] algorithms`
/// lists it.
async fn ml_dsa_proofs_where_configured(db: Db) {
    let k = dpop_core::PrivateKey::generate(dpop_core::Algorithm::MlDsa65).unwrap();
    let cc = [("grant_type", GRANT_CC)];

    let it = TestIssuer::start_with(
        &db,
        Setup {
            dpop: r#"algorithms = ["ES256", "ML-DSA-65"]"#.into(),
            ..Setup::default()
        },
    )
    .await;
    assert_eq!(advertised_algs(&it).await, json!(["ES256", "ML-DSA-65"]));
    let body = it.token(&post("svc"), Some(&k), &cc).await.ok();
    assert_eq!(body["token_type"], json!("DPoP"));
    let jwt = it.verify(body["access_token"].as_str().unwrap(), API).await;
    assert_eq!(jwt.claims["cnf"]["jkt"], json!(jkt(&k)));
    drop(it);

    // The default list leaves it out, and a proof with it is refused.
    let it = TestIssuer::start(&db).await;
    let listed = advertised_algs(&it).await;
    assert!(
        !listed
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a.as_str().is_some_and(|a| a.starts_with("ML-DSA"))),
        "{listed}"
    );
    let nonce = it.fresh_nonce().await;
    let proof = it.proof(&k, "POST", &it.token_url(), Some(&nonce), None);
    it.token_raw(&post("svc"), &[proof], &cc)
        .await
        .err(400, "invalid_dpop_proof");
}

async fn advertised_algs(it: &TestIssuer) -> serde_json::Value {
    let r = it.get("/.well-known/oauth-authorization-server").await;
    r.json()["dpop_signing_alg_values_supported"].clone()
}
