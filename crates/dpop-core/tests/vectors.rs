//! The RFC 9449 and RFC 7638 examples (copied into tests/vectors/), in both directions
//! where they are deterministic.

use dpop_core::{
    Ath, Challenge, Htu, Jkt, MemoryReplayStore, ProofRequest, PublicJwk, UnixTime, Verifier,
    VerifierConfig,
};
use serde_json::Value;

use crate::support::{reason, vectors, verifier};

fn proof(id: &str) -> &'static Value {
    vectors()["dpop_proofs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["id"] == id)
        .unwrap()
}

fn iat(p: &Value) -> u64 {
    p["payload"]["iat"].as_u64().unwrap()
}

#[test]
fn rfc9449_example_key_thumbprint() {
    let k = &vectors()["keys"]["dpop_ec_p256"];
    let jwk = PublicJwk::from_json(&k["jwk"].to_string()).unwrap();
    assert_eq!(
        jwk.thumbprint_input(),
        k["thumbprint_input"].as_str().unwrap()
    );
    assert_eq!(jwk.thumbprint().as_str(), k["jkt"].as_str().unwrap());
}

#[test]
fn rfc7638_rsa_thumbprint() {
    let k = &vectors()["keys"]["rfc7638_rsa_example"];
    let jwk = PublicJwk::from_json(&k["jwk"].to_string()).unwrap();
    assert_eq!(
        jwk.thumbprint_input(),
        k["thumbprint_input"].as_str().unwrap(),
        "alg and kid are left out"
    );
    assert_eq!(jwk.thumbprint().as_str(), k["jkt"].as_str().unwrap());
    let bytes: Vec<u8> = k["thumbprint_sha256_bytes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b.as_u64().unwrap() as u8)
        .collect();
    assert_eq!(crate::support::b64(&bytes), k["jkt"].as_str().unwrap());
    assert_eq!(jwk.rsa_bits(), Some(2048));
}

#[test]
fn rfc9449_ath_example() {
    let t = &vectors()["access_tokens"]["opaque_dpop_bound"];
    assert_eq!(
        Ath::of_token(t["value"].as_str().unwrap()).as_str(),
        t["ath"].as_str().unwrap()
    );
}

#[test]
fn rfc9449_token_request_proofs_verify() {
    let htu = Htu::parse("https://server.example.com/token").unwrap();
    for id in [
        "token_request_authorization_code",
        "token_request_refresh_token",
    ] {
        let p = proof(id);
        let now = UnixTime::from_secs(p["suggested_now"].as_u64().unwrap_or(iat(p) + 5));
        let req = ProofRequest::new("POST", &htu);
        let v = verifier()
            .verify([p["compact"].as_str().unwrap().as_bytes()], &req, now)
            .unwrap();
        let v = dpop_core::dangerous::skip_replay_check(v);
        assert_eq!(
            v.jkt().as_str(),
            "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I",
            "{id}"
        );
        assert_eq!(v.jti(), p["payload"]["jti"].as_str().unwrap());
        assert_eq!(v.iat().as_secs(), iat(p));
        assert_eq!(v.htm(), "POST");
    }
}

#[test]
fn rfc9449_resource_request_proof_verifies_with_token_binding() {
    let p = proof("resource_request_with_ath");
    let token = vectors()["access_tokens"]["opaque_dpop_bound"]["value"]
        .as_str()
        .unwrap();
    let jkt = Jkt::parse("0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I").unwrap();
    let htu = Htu::parse("https://resource.example.org/protectedresource").unwrap();
    let now = UnixTime::from_secs(iat(p) + 5);
    let req = ProofRequest::new("GET", &htu).with_access_token(token, &jkt);
    let store = MemoryReplayStore::with_capacity(1024);
    let compact = p["compact"].as_str().unwrap().as_bytes();
    let unrecorded = verifier().verify([compact], &req, now).unwrap();
    // The replay record's key is SHA-256 of "<jkt>:<jti>". Stores shared by several
    // instances (Redis) hold it, so it must not change between releases: a rolling
    // upgrade would otherwise accept a proof the other version recorded.
    assert_eq!(
        unrecorded.replay_key().to_hex(),
        "d58e387e5a0e70d8dff770e2da6b035e1f494b4190ce9ed914354da61514a4fc"
    );
    unrecorded.record(&store).unwrap();
    // §11.1: a second presentation is a replay.
    let again = verifier()
        .verify([compact], &req, now)
        .unwrap()
        .record(&store);
    assert_eq!(again.unwrap_err().reason().as_str(), "replay");
}

/// The request-context negatives of the vectors file (derived_checks), one by one.
#[test]
fn rfc9449_request_context_negatives() {
    let p2 = proof("token_request_authorization_code");
    let p13 = proof("resource_request_with_ath");
    let compact2 = p2["compact"].as_str().unwrap();
    let compact13 = p13["compact"].as_str().unwrap();
    let now2 = UnixTime::from_secs(iat(p2) + 5);
    let now13 = UnixTime::from_secs(iat(p13) + 5);
    let token_htu = Htu::parse("https://server.example.com/token").unwrap();
    let run = |v: &Verifier, compact: &str, req: ProofRequest<'_>, now| {
        v.verify([compact.as_bytes()], &req, now).map(|_| ())
    };

    // Wrong method.
    assert_eq!(
        reason(run(
            &verifier(),
            compact2,
            ProofRequest::new("GET", &token_htu),
            now2
        )),
        "htm_mismatch"
    );
    // Wrong URI.
    let other = Htu::parse("https://resource.example.org/token").unwrap();
    assert_eq!(
        reason(run(
            &verifier(),
            compact2,
            ProofRequest::new("POST", &other),
            now2
        )),
        "htu_mismatch"
    );
    // The server gave a nonce; the proof has none: use_dpop_nonce.
    let nonces = std::sync::Arc::new(dpop_core::StatelessNonces::new(
        dpop_core::NonceSecret::new(&[3; 32]).unwrap(),
    ));
    let with_nonce = Verifier::new(
        VerifierConfig::builder()
            .with_default_algorithms()
            .with_nonces(nonces),
    )
    .unwrap();
    let e = with_nonce
        .verify(
            [compact2.as_bytes()],
            &ProofRequest::new("POST", &token_htu),
            now2,
        )
        .unwrap_err();
    assert_eq!(e.reason().as_str(), "nonce_required");
    assert_eq!(
        e.response(dpop_core::Role::AuthorizationServer)
            .error
            .unwrap()
            .as_str(),
        "use_dpop_nonce"
    );
    assert_eq!(e.response(dpop_core::Role::AuthorizationServer).status, 400);
    // Stale iat at the clock the file gives.
    let late = UnixTime::from_secs(1_562_266_216);
    assert_eq!(
        reason(run(
            &verifier(),
            compact2,
            ProofRequest::new("POST", &token_htu),
            late
        )),
        "iat_too_old"
    );
    // Authorization code bound with dpop_jkt to another key (Fig. 25's RSA thumbprint).
    let rsa_jkt = Jkt::parse("NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs").unwrap();
    let e = run(
        &verifier(),
        compact2,
        ProofRequest::new("POST", &token_htu).with_expected_jkt(&rsa_jkt),
        now2,
    )
    .unwrap_err();
    assert_eq!(e.reason().as_str(), "key_mismatch");
    assert_eq!(
        e.response(dpop_core::Role::AuthorizationServer)
            .error
            .unwrap()
            .as_str(),
        "invalid_grant"
    );
    // ath for a different token.
    let res_htu = Htu::parse("https://resource.example.org/protectedresource").unwrap();
    let jkt = Jkt::parse("0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I").unwrap();
    let req = ProofRequest::new("GET", &res_htu)
        .with_access_token("Kz~8mXK1EalYznwH-LC-1fBAo.4Ljp~zsPE_NeO.gxV", &jkt);
    assert_eq!(
        reason(run(&verifier(), compact13, req, now13)),
        "ath_mismatch"
    );
    // Token bound to another key: invalid_token, 401 (Fig. 16).
    let token = "Kz~8mXK1EalYznwH-LC-1fBAo.4Ljp~zsPE_NeO.gxU";
    let req = ProofRequest::new("GET", &res_htu).with_access_token(token, &rsa_jkt);
    let e = run(&verifier(), compact13, req, now13).unwrap_err();
    assert_eq!(e.reason().as_str(), "key_mismatch");
    let r = e.response(dpop_core::Role::ResourceServer);
    assert_eq!(
        (r.status, r.error.unwrap().as_str()),
        (401, "invalid_token")
    );
    // A token-request proof used at the resource: no ath, wrong htm/htu.
    let req = ProofRequest::new("GET", &res_htu).with_access_token(token, &jkt);
    assert!(run(&verifier(), compact2, req, now2).is_err());
    // Two DPoP headers: invalid_request, 400.
    let e = verifier()
        .verify(
            [compact13.as_bytes(), compact13.as_bytes()],
            &ProofRequest::new("GET", &res_htu),
            now13,
        )
        .unwrap_err();
    assert_eq!(e.reason().as_str(), "multiple_proofs");
    assert_eq!(e.response(dpop_core::Role::ResourceServer).status, 400);
}

#[test]
fn rfc9449_examples_are_stale_at_the_real_time() {
    let htu = Htu::parse("https://server.example.com/token").unwrap();
    let p = proof("token_request_authorization_code");
    let e = verifier()
        .verify(
            [p["compact"].as_str().unwrap().as_bytes()],
            &ProofRequest::new("POST", &htu),
            UnixTime::from_secs(1_790_000_000),
        )
        .unwrap_err();
    assert_eq!(e.reason().as_str(), "iat_too_old");
}

#[test]
fn rfc9449_htu_comparison_cases() {
    for case in vectors()["derived_checks"]["htu_comparison"]
        .as_array()
        .unwrap()
    {
        let a = Htu::parse(case["proof_htu"].as_str().unwrap()).unwrap();
        let b = Htu::parse(case["request_uri"].as_str().unwrap()).unwrap();
        assert_eq!(a == b, case["match"].as_bool().unwrap(), "{case}");
    }
}

#[test]
fn rfc9449_www_authenticate_examples_round_trip() {
    for ex in vectors()["www_authenticate_examples"].as_array().unwrap() {
        for value in ex["www_authenticate"].as_array().unwrap() {
            let value = value.as_str().unwrap();
            let parsed = dpop_core::challenge::parse(value).unwrap();
            assert_eq!(
                dpop_core::challenge::render(&parsed),
                value,
                "{}",
                ex["source"]
            );
            assert!(parsed.iter().any(|c| c.is_scheme("dpop")));
        }
    }
    // And built from scratch, as a resource server would (Fig. 16).
    let c = Challenge::dpop()
        .with_error("invalid_token")
        .unwrap()
        .with_error_description("Invalid DPoP key binding")
        .unwrap()
        .with_algs(["ES256"])
        .unwrap();
    assert_eq!(
        c.to_string(),
        r#"DPoP error="invalid_token", error_description="Invalid DPoP key binding", algs="ES256""#
    );
}

#[test]
fn rfc9449_nonce_examples_have_nonce_syntax() {
    let n = &vectors()["nonce_examples"];
    for v in [
        &n["as_requires_nonce"]["headers"]["DPoP-Nonce"],
        &n["as_next_nonce_in_200"]["headers"]["DPoP-Nonce"],
    ] {
        let v = v.as_str().unwrap();
        assert_eq!(dpop_core::challenge::parse_dpop_nonce(v).unwrap(), v);
        assert!(dpop_core::ExpectedNonce::new(v).is_ok());
    }
}
