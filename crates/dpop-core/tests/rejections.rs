//! Every rejection path of the verifier, one at a time, each starting from a proof that
//! passes and changing one thing.

use std::sync::Arc;

use dpop_core::{
    Algorithm, Clock, Error, Freshness, Htu, Insert, Jkt, MemoryReplayStore, NonceSecret,
    NonceValidator, PrivateKey, ProofBuilder, ProofRequest, ReplayKey, ReplayStore,
    ReplayStoreError, StatelessNonces, SystemRandomSource, UnixTime, Verifier, VerifierConfig,
};
use serde_json::{Value, json};

use crate::support::*;

fn with_claims(f: impl FnOnce(&mut serde_json::Map<String, Value>)) -> String {
    let mut c = claims();
    f(c.as_object_mut().unwrap());
    sign(es256(), &header(es256()), &c)
}

fn with_header(f: impl FnOnce(&mut serde_json::Map<String, Value>)) -> String {
    let mut h = header(es256());
    f(h.as_object_mut().unwrap());
    sign(es256(), &h, &claims())
}

#[test]
fn every_reason_names_its_check() {
    use dpop_core::{Check, Reason};
    let mut checks = std::collections::HashSet::new();
    for r in Reason::ALL {
        if let Some(c) = Check::failed_by(r) {
            checks.insert(c);
        }
    }
    assert_eq!(checks.len(), Check::ALL.len(), "every check can fail");
    for r in [
        Reason::Replay,
        Reason::ReplayStoreFull,
        Reason::ReplayStoreUnavailable,
        Reason::NoClock,
        Reason::InternalError,
    ] {
        assert_eq!(Check::failed_by(r), None, "{r}");
    }
    let names: std::collections::HashSet<_> = Check::ALL.iter().map(|c| c.as_str()).collect();
    assert_eq!(names.len(), Check::ALL.len());
}

#[test]
fn baseline_passes() {
    check(&sign(es256(), &header(es256()), &claims())).unwrap();
}

#[test]
fn header_count_and_size() {
    let good = sign(es256(), &header(es256()), &claims());
    let htu = htu();
    let req = ProofRequest::new("GET", &htu);
    let none: [&[u8]; 0] = [];
    assert_eq!(
        verifier()
            .verify(none, &req, now())
            .unwrap_err()
            .reason()
            .as_str(),
        "proof_missing"
    );
    let two = [good.as_bytes(), good.as_bytes()];
    assert_eq!(
        verifier()
            .verify(two, &req, now())
            .unwrap_err()
            .reason()
            .as_str(),
        "multiple_proofs"
    );
    // Size limit applies before parsing: a large but otherwise valid proof is refused.
    let big = with_claims(|c| {
        c.insert("pad".into(), "x".repeat(8000).into());
    });
    assert!(big.len() > 8192);
    assert_eq!(reason(check(&big)), "proof_too_large");
    let mut cfg = VerifierConfig::builder()
        .with_default_algorithms()
        .without_nonces();
    cfg.max_proof_bytes = 16 * 1024;
    let jkt = es256().thumbprint().clone();
    let v = Verifier::new(cfg).unwrap();
    let _ = v
        .verify(
            [big.as_bytes()],
            &ProofRequest::new("GET", &htu).with_access_token(TOKEN, &jkt),
            now(),
        )
        .unwrap();
}

#[test]
fn malformed_structure() {
    let good = sign(es256(), &header(es256()), &claims());
    let parts: Vec<&str> = good.split('.').collect();
    let cases = [
        format!("{} ", good),
        format!("{}.{}", parts[0], parts[1]),
        format!("{good}.x.y"),
        format!("{good}.x"),
        format!("{}..{}", parts[0], parts[2]),
        format!("{}.{}.", parts[0], parts[1]),
        format!("{}=.{}.{}", parts[0], parts[1], parts[2]),
        format!("{}.{}.{}", parts[0], parts[1], "A"),
        String::new(),
        "...".into(),
        "a\"b.c.d".into(),
        sign_raw(es256(), "not json", &claims().to_string()),
        sign_raw(es256(), &header(es256()).to_string(), "[1,2]"),
        sign_raw(
            es256(),
            &header(es256()).to_string(),
            &format!("{} trailing", claims()),
        ),
    ];
    for (i, proof) in cases.iter().enumerate() {
        assert_eq!(
            reason(check(proof)),
            "malformed_proof",
            "case {i}: {proof:.60}"
        );
    }
    // The JWS JSON serialisation is not a compact JWS.
    let json_form =
        json!({"protected": parts[0], "payload": parts[1], "signature": parts[2]}).to_string();
    assert_eq!(reason(check(&json_form)), "malformed_proof");
}

#[test]
fn duplicate_members() {
    let h = header(es256()).to_string();
    let dup_header = h.replacen('{', r#"{"typ":"dpop+jwt","#, 1);
    assert_eq!(
        reason(check(&sign_raw(
            es256(),
            &dup_header,
            &claims().to_string()
        ))),
        "duplicate_member"
    );
    let c = claims().to_string();
    let dup_claims = c.replacen('{', r#"{"htu":"https://evil.example/","#, 1);
    assert_eq!(
        reason(check(&sign_raw(es256(), &h, &dup_claims))),
        "duplicate_member"
    );
    let dup_jwk = h.replacen(r#""kty":"EC""#, r#""kty":"EC","kty":"EC""#, 1);
    assert_ne!(dup_jwk, h);
    assert_eq!(
        reason(check(&sign_raw(es256(), &dup_jwk, &c))),
        "duplicate_member"
    );
}

#[test]
fn typ() {
    for typ in [
        json!("JWT"),
        json!("at+jwt"),
        json!("DPOP+JWT"),
        json!("application/dpop+jwt"),
        json!(1),
        Value::Null,
    ] {
        assert_eq!(
            reason(check(&with_header(|h| {
                h.insert("typ".into(), typ.clone());
            }))),
            "typ_invalid",
            "{typ}"
        );
    }
    assert_eq!(
        reason(check(&with_header(|h| {
            h.remove("typ");
        }))),
        "typ_invalid"
    );
}

#[test]
fn alg() {
    for (alg, code) in [
        ("none", "alg_not_allowed"),
        ("HS256", "alg_not_allowed"),
        ("HS512", "alg_not_allowed"),
        ("ES256K", "alg_unsupported"),
        ("es256", "alg_unsupported"),
        ("ES512", "alg_not_allowed"), // real, but not on the default list
    ] {
        let proof = with_header(|h| {
            h.insert("alg".into(), alg.into());
        });
        assert_eq!(reason(check(&proof)), code, "{alg}");
    }
    assert_eq!(
        reason(check(&with_header(|h| {
            h.remove("alg");
        }))),
        "malformed_proof"
    );
    // alg none with an empty signature, the classic: refused before anything else.
    let h = json!({"typ": "dpop+jwt", "alg": "none", "jwk": es256().public_jwk().to_json_value()});
    let unsigned = format!(
        "{}.{}.",
        b64(h.to_string().as_bytes()),
        b64(claims().to_string().as_bytes())
    );
    assert!(check(&unsigned).is_err());
    // A verifier restricted to ES256 refuses EdDSA.
    let ed = PrivateKey::generate(Algorithm::EdDsa).unwrap();
    let v = Verifier::new(
        VerifierConfig::builder()
            .with_algorithms(&[Algorithm::Es256])
            .unwrap()
            .without_nonces(),
    )
    .unwrap();
    let proof = sign(&ed, &header(&ed), &claims());
    let htu = htu();
    assert_eq!(
        v.verify([proof.as_bytes()], &ProofRequest::new("GET", &htu), now())
            .unwrap_err()
            .reason()
            .as_str(),
        "alg_not_allowed"
    );
    assert!(VerifierConfig::builder().with_algorithms(&[]).is_err());
}

#[test]
fn alg_must_fit_the_key() {
    for alg in ["ES384", "RS256", "PS256", "EdDSA", "Ed25519"] {
        let proof = with_header(|h| {
            h.insert("alg".into(), alg.into());
        });
        assert_eq!(reason(check(&proof)), "alg_key_mismatch", "{alg}");
    }
}

#[test]
fn crit_and_b64() {
    let cases: [(&str, Value); 4] = [
        ("crit", json!(["exp"])),
        ("crit", json!([])),
        ("crit", json!("exp")),
        ("b64", json!(false)),
    ];
    for (name, value) in cases {
        let proof = with_header(|h| {
            h.insert(name.into(), value.clone());
        });
        assert_eq!(reason(check(&proof)), "crit_unsupported", "{name}: {value}");
    }
    // A crit extension the caller declares it understands is accepted.
    let proof = with_header(|h| {
        h.insert("crit".into(), json!(["ext"]));
        h.insert("ext".into(), json!(1));
    });
    let mut cfg = VerifierConfig::builder()
        .with_default_algorithms()
        .without_nonces();
    cfg.understood_crit = vec!["ext".into()];
    let htu = htu();
    let _ = Verifier::new(cfg)
        .unwrap()
        .verify([proof.as_bytes()], &ProofRequest::new("GET", &htu), now())
        .unwrap();
}

#[test]
fn jwk() {
    assert_eq!(
        reason(check(&with_header(|h| {
            h.remove("jwk");
        }))),
        "jwk_missing"
    );
    assert_eq!(
        reason(check(&with_header(|h| {
            h.insert("jwk".into(), "key".into());
        }))),
        "jwk_invalid"
    );
    for member in ["d", "p", "q", "dp", "dq", "qi", "oth", "k"] {
        let proof = with_header(|h| {
            h["jwk"]
                .as_object_mut()
                .unwrap()
                .insert(member.into(), "AAAA".into());
        });
        assert_eq!(reason(check(&proof)), "jwk_private", "{member}");
    }
    let proof = with_header(|h| {
        h.insert("jwk".into(), json!({"kty": "oct", "k": "AAAA"}));
    });
    assert_eq!(reason(check(&proof)), "jwk_private");
    let proof = with_header(|h| {
        h["jwk"]["x"] = json!("AAAA");
    });
    assert_eq!(reason(check(&proof)), "jwk_invalid");
}

#[test]
fn required_claims() {
    for claim in ["jti", "htm", "htu", "iat"] {
        let proof = with_claims(|c| {
            c.remove(claim);
        });
        let e = check(&proof).unwrap_err();
        assert_eq!(e.reason().as_str(), "claim_missing", "{claim}");
        assert!(e.to_string().contains(claim));
    }
}

#[test]
fn claim_types() {
    let cases: [(&str, Value); 12] = [
        ("iat", json!("1700000000")),
        ("iat", json!(-1)),
        ("iat", json!(1e300)),
        ("jti", json!(12)),
        ("jti", json!("")),
        ("jti", json!("x".repeat(257))),
        ("htm", json!(["GET"])),
        ("htu", json!(null)),
        ("ath", json!(1)),
        ("nonce", json!(true)),
        ("exp", json!("soon")),
        ("nbf", json!({})),
    ];
    for (claim, value) in cases {
        let proof = with_claims(|c| {
            c.insert(claim.into(), value.clone());
        });
        assert_eq!(
            reason(check(&proof)),
            "claim_invalid",
            "{claim}: {value:.40}"
        );
    }
    // A fractional iat is a valid NumericDate.
    check(&with_claims(|c| {
        c.insert("iat".into(), json!(NOW as f64 + 0.5));
    }))
    .unwrap();
}

#[test]
fn htm_and_htu() {
    for m in ["get", "POST", "GET "] {
        assert_eq!(
            reason(check(&with_claims(|c| {
                c.insert("htm".into(), m.into());
            }))),
            "htm_mismatch",
            "{m}"
        );
    }
    for u in [
        "https://resource.example.org/other",
        "http://resource.example.org/protectedresource",
        "https://resource.example.org:8443/protectedresource",
    ] {
        assert_eq!(
            reason(check(&with_claims(|c| {
                c.insert("htu".into(), u.into());
            }))),
            "htu_mismatch",
            "{u}"
        );
    }
    for u in [
        "not a url",
        "/protectedresource",
        "ftp://resource.example.org/x",
        "https://user@resource.example.org/protectedresource",
    ] {
        assert_eq!(
            reason(check(&with_claims(|c| {
                c.insert("htu".into(), u.into());
            }))),
            "htu_invalid",
            "{u}"
        );
    }
    // Equivalent spellings pass.
    for u in [
        "HTTPS://Resource.Example.org:443/protectedresource?x=1#f",
        "https://resource.example.org/a/../protectedresource",
    ] {
        check(&with_claims(|c| {
            c.insert("htu".into(), u.into());
        }))
        .unwrap();
    }
}

/// The recorded `htu` is the request's normal form, whether the claim spells it exactly
/// (taken without a second parse) or differently (parsed and normalised).
#[test]
fn recorded_htu_is_the_normal_form_either_way() {
    let htu = htu();
    let jkt = es256().thumbprint().clone();
    let req = ProofRequest::new("GET", &htu).with_access_token(TOKEN, &jkt);
    let store = MemoryReplayStore::with_capacity(64);
    for (jti, u) in [
        ("exact", htu.as_str()),
        (
            "spelt",
            "HTTPS://Resource.Example.org:443/protectedresource?x=1#f",
        ),
    ] {
        let proof = with_claims(|c| {
            c.insert("htu".into(), u.into());
            c.insert("jti".into(), jti.into());
        });
        let verified = verifier()
            .verify([proof.as_bytes()], &req, now())
            .unwrap()
            .record(&store)
            .unwrap();
        assert_eq!(verified.htu(), &htu, "{u}");
    }
}

#[test]
fn iat_window() {
    let at = |iat: i64| {
        with_claims(|c| {
            c.insert("iat".into(), json!(NOW as i64 + iat));
        })
    };
    for ok in [-60, -10, 0, 10, 15] {
        check(&at(ok)).unwrap_or_else(|e| panic!("iat {ok:+} must pass: {e}"));
    }
    assert_eq!(reason(check(&at(-61))), "iat_too_old");
    assert_eq!(reason(check(&at(16))), "iat_in_future");
    let msg = check(&at(-3600)).unwrap_err().to_string();
    assert!(
        msg.contains(&NOW.to_string()) && msg.contains("3600 s") && msg.contains("60 s"),
        "{msg}"
    );
    // Window tunables.
    let mut cfg = VerifierConfig::builder()
        .with_default_algorithms()
        .without_nonces();
    cfg.max_age = std::time::Duration::from_secs(5);
    cfg.future_leeway = std::time::Duration::from_secs(0);
    let v = Verifier::new(cfg).unwrap();
    let htu = htu();
    let run = |p: &str| {
        v.verify([p.as_bytes()], &ProofRequest::new("GET", &htu), now())
            .map(|_| ())
    };
    assert_eq!(reason(run(&at(-6))), "iat_too_old");
    assert_eq!(reason(run(&at(1))), "iat_in_future");
    run(&at(0)).unwrap();
}

#[test]
fn exp_and_nbf_are_tolerated_and_checked() {
    check(&with_claims(|c| {
        c.insert("exp".into(), json!(NOW + 30));
        c.insert("nbf".into(), json!(NOW - 30));
    }))
    .unwrap();
    assert_eq!(
        reason(check(&with_claims(|c| {
            c.insert("exp".into(), json!(NOW - 20));
        }))),
        "proof_expired"
    );
    assert_eq!(
        reason(check(&with_claims(|c| {
            c.insert("nbf".into(), json!(NOW + 20));
        }))),
        "proof_not_yet_valid"
    );
}

#[test]
fn ath_and_key_binding() {
    assert_eq!(
        reason(check(&with_claims(|c| {
            c.remove("ath");
        }))),
        "ath_missing"
    );
    let other_ath = dpop_core::Ath::of_token("another-token");
    assert_eq!(
        reason(check(&with_claims(|c| {
            c.insert("ath".into(), other_ath.as_str().into());
        }))),
        "ath_mismatch"
    );
    // A proof from another key, for the token bound to es256(): key_mismatch.
    let other = PrivateKey::generate(Algorithm::Es256).unwrap();
    let e = check(&sign(&other, &header(&other), &claims())).unwrap_err();
    assert!(matches!(e, Error::KeyMismatch));
    // A token presented without ath binding at an endpoint that does not check tokens: ok.
    let htu = htu();
    let proof = with_claims(|c| {
        c.remove("ath");
    });
    let _ = verifier()
        .verify([proof.as_bytes()], &ProofRequest::new("GET", &htu), now())
        .unwrap();
}

#[test]
fn signature() {
    let good = sign(es256(), &header(es256()), &claims());
    let (input, sig) = good.rsplit_once('.').unwrap();
    let mut bytes =
        base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, sig).unwrap();
    bytes[5] ^= 1;
    assert_eq!(
        reason(check(&format!("{input}.{}", b64(&bytes)))),
        "signature_invalid"
    );
    // Signed by another key while claiming es256's jwk.
    let other = PrivateKey::generate(Algorithm::Es256).unwrap();
    assert_eq!(
        reason(check(&sign(&other, &header(es256()), &claims()))),
        "signature_invalid"
    );
    // Signature of the wrong length.
    assert_eq!(
        reason(check(&format!("{input}.{}", b64(&bytes[..63])))),
        "signature_invalid"
    );
    // Payload changed after signing.
    let forged_payload = b64(claims().to_string().replace("jti-1", "jti-2").as_bytes());
    let (h, _) = input.split_once('.').unwrap();
    assert_eq!(
        reason(check(&format!("{h}.{forged_payload}.{sig}"))),
        "signature_invalid"
    );
}

fn nonce_verifier(nonces: Arc<StatelessNonces>, freshness: Freshness) -> Verifier {
    let mut cfg = VerifierConfig::builder()
        .with_default_algorithms()
        .with_nonces(nonces);
    cfg.freshness = freshness;
    Verifier::new(cfg).unwrap()
}

#[test]
fn nonces() {
    let nonces = Arc::new(StatelessNonces::new(NonceSecret::new(&[5; 32]).unwrap()));
    let v = nonce_verifier(nonces.clone(), Freshness::Iat);
    let htu = htu();
    let req = ProofRequest::new("GET", &htu);
    let run = |p: &str, at: UnixTime| v.verify([p.as_bytes()], &req, at).map(|_| ());
    let without = sign(es256(), &header(es256()), &claims());
    assert_eq!(reason(run(&without, now())), "nonce_required");
    let nonce = nonces.issue(now()).unwrap();
    let with = with_claims(|c| {
        c.insert("nonce".into(), nonce.clone().into());
    });
    run(&with, now()).unwrap();
    let foreign = StatelessNonces::new(NonceSecret::new(&[6; 32]).unwrap())
        .issue(now())
        .unwrap();
    let bad = with_claims(|c| {
        c.insert("nonce".into(), foreign.into());
    });
    assert_eq!(reason(run(&bad, now())), "nonce_invalid");
    // A nonce from long ago (with an iat that is still fresh).
    let old = nonces.issue(UnixTime::from_secs(NOW - 600)).unwrap();
    let stale = with_claims(|c| {
        c.insert("nonce".into(), old.into());
    });
    assert_eq!(reason(run(&stale, now())), "nonce_stale");
    let e = v.verify([stale.as_bytes()], &req, now()).unwrap_err();
    assert_eq!(
        e.response(dpop_core::Role::ResourceServer)
            .error
            .unwrap()
            .as_str(),
        "use_dpop_nonce"
    );
    // A proof made with the nonce of the previous step is accepted and asks for renewal.
    let prev = nonces.issue(UnixTime::from_secs(NOW - 60)).unwrap();
    let p = with_claims(|c| {
        c.insert("nonce".into(), prev.into());
    });
    let verified =
        dpop_core::dangerous::skip_replay_check(v.verify([p.as_bytes()], &req, now()).unwrap());
    assert!(verified.should_renew_nonce());
}

#[test]
fn nonce_as_freshness_source() {
    let nonces = Arc::new(StatelessNonces::new(NonceSecret::new(&[5; 32]).unwrap()));
    let v = nonce_verifier(nonces.clone(), Freshness::Nonce);
    let htu = htu();
    let req = ProofRequest::new("GET", &htu);
    let nonce = nonces.issue(now()).unwrap();
    // A client whose clock is an hour off still gets in, because the nonce is fresh.
    let skewed = with_claims(|c| {
        c.insert("nonce".into(), nonce.clone().into());
        c.insert("iat".into(), json!(NOW - 3600));
    });
    let p = v.verify([skewed.as_bytes()], &req, now()).unwrap();
    // The replay record lasts as long as the nonce is accepted.
    let nonce_expiry = nonces
        .validate(Some(&nonce), now())
        .unwrap()
        .expires_at
        .unwrap();
    assert!(p.replay_expires_at() > nonce_expiry);
    // Misconfiguration is refused.
    let mut cfg = VerifierConfig::builder()
        .with_default_algorithms()
        .without_nonces();
    cfg.freshness = Freshness::Nonce;
    assert!(Verifier::new(cfg).is_err());
}

#[test]
fn replay_window_covers_future_leeway() {
    let p = with_claims(|c| {
        c.insert("iat".into(), json!(NOW + 15));
    });
    let htu = htu();
    let v = verifier();
    let u = v
        .verify([p.as_bytes()], &ProofRequest::new("GET", &htu), now())
        .unwrap();
    // The proof stays acceptable until iat + 60 = NOW + 75; the record must outlive that.
    assert!(u.replay_expires_at().as_secs() > NOW + 75);
    let store = MemoryReplayStore::with_capacity(64);
    u.record(&store).unwrap();
    // Presented again at the last acceptable second: still a replay.
    let last = UnixTime::from_secs(NOW + 75);
    let again = v
        .verify([p.as_bytes()], &ProofRequest::new("GET", &htu), last)
        .unwrap()
        .record(&store);
    assert_eq!(again.unwrap_err().reason().as_str(), "replay");
}

#[test]
fn replay_key_is_scoped_to_key_and_jti() {
    let htu = htu();
    let req = ProofRequest::new("GET", &htu);
    let store = MemoryReplayStore::with_capacity(64);
    let a = sign(es256(), &header(es256()), &claims());
    verifier()
        .verify([a.as_bytes()], &req, now())
        .unwrap()
        .record(&store)
        .unwrap();
    // Same jti from another key is a different proof.
    let other = PrivateKey::generate(Algorithm::Es256).unwrap();
    let b = sign(&other, &header(&other), &claims());
    verifier()
        .verify([b.as_bytes()], &req, now())
        .unwrap()
        .record(&store)
        .unwrap();
    // Same key, same jti, different iat: still a replay.
    let c = with_claims(|c| {
        c.insert("iat".into(), json!(NOW + 1));
    });
    let r = verifier()
        .verify([c.as_bytes()], &req, now())
        .unwrap()
        .record(&store);
    assert_eq!(r.unwrap_err().reason().as_str(), "replay");
}

struct DownStore;
impl ReplayStore for DownStore {
    fn insert_if_absent(
        &self,
        _: &ReplayKey,
        _: UnixTime,
        _: UnixTime,
    ) -> Result<Insert, ReplayStoreError> {
        Err(ReplayStoreError::Unavailable("connection refused".into()))
    }
}

#[test]
fn replay_store_failures_fail_closed() {
    let htu = htu();
    let req = ProofRequest::new("GET", &htu);
    let p = sign(es256(), &header(es256()), &claims());
    let e = verifier()
        .verify([p.as_bytes()], &req, now())
        .unwrap()
        .record(&DownStore)
        .unwrap_err();
    assert_eq!(e.reason().as_str(), "replay_store_unavailable");
    assert_eq!(e.response(dpop_core::Role::ResourceServer).status, 503);
    // A full store refuses new proofs and still remembers the old ones.
    let store = MemoryReplayStore::with_capacity(1);
    verifier()
        .verify([p.as_bytes()], &req, now())
        .unwrap()
        .record(&store)
        .unwrap();
    let q = with_claims(|c| {
        c.insert("jti".into(), "jti-2".into());
    });
    let e = verifier()
        .verify([q.as_bytes()], &req, now())
        .unwrap()
        .record(&store)
        .unwrap_err();
    assert_eq!(e.reason().as_str(), "replay_store_full");
    let e = verifier()
        .verify([p.as_bytes()], &req, now())
        .unwrap()
        .record(&store)
        .unwrap_err();
    assert_eq!(e.reason().as_str(), "replay");
}

struct NoTime;
impl Clock for NoTime {
    fn now(&self) -> Option<UnixTime> {
        None
    }
}

#[test]
fn no_clock_fails_closed() {
    let htu = htu();
    let p = sign(es256(), &header(es256()), &claims());
    let e = verifier()
        .verify_with_clock([p.as_bytes()], &ProofRequest::new("GET", &htu), &NoTime)
        .unwrap_err();
    assert_eq!(e.reason().as_str(), "no_clock");
    let _ = verifier()
        .verify_with_clock(
            [p.as_bytes()],
            &ProofRequest::new("GET", &htu),
            &dpop_core::FixedClock(now()),
        )
        .unwrap();
}

#[test]
fn async_record_uses_the_same_rules() {
    let htu = htu();
    let req = ProofRequest::new("GET", &htu);
    let p = sign(es256(), &header(es256()), &claims());
    let store = MemoryReplayStore::with_capacity(16);
    let first = block_on(
        verifier()
            .verify([p.as_bytes()], &req, now())
            .unwrap()
            .record_async(&store),
    );
    assert!(first.is_ok());
    let second = block_on(
        verifier()
            .verify([p.as_bytes()], &req, now())
            .unwrap()
            .record_async(&store),
    );
    assert_eq!(second.unwrap_err().reason().as_str(), "replay");
}

/// Polls a future that never waits (the memory store is ready at once).
fn block_on<F: Future>(f: F) -> F::Output {
    let mut f = std::pin::pin!(f);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match f.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(v) => v,
        std::task::Poll::Pending => panic!("memory store must be ready at once"),
    }
}

#[test]
fn builder_proofs_carry_what_was_asked() {
    let nonce = "eyJ7S_zG.eyJH0-Z.HX4w-7v";
    let p = ProofBuilder::new("POST", "https://server.example.com/token?x=1#y")
        .unwrap()
        .access_token(TOKEN)
        .nonce(nonce)
        .unwrap()
        .claim("client_ref", json!("ci-42"))
        .unwrap()
        .sign(es256(), &SystemRandomSource, now())
        .unwrap();
    let decoded = dpop_core::jwt::UnverifiedJwt::parse(&p).unwrap();
    let (header, claims) = (decoded.dangerous_header(), decoded.dangerous_claims());
    assert_eq!(header["typ"], "dpop+jwt");
    assert_eq!(header["alg"], "ES256");
    assert!(header["jwk"].get("d").is_none());
    assert_eq!(claims["htm"], "POST");
    assert_eq!(
        claims["htu"], "https://server.example.com/token",
        "query and fragment removed"
    );
    assert_eq!(claims["iat"], NOW);
    assert_eq!(claims["nonce"], nonce);
    assert_eq!(claims["ath"], dpop_core::Ath::of_token(TOKEN).as_str());
    assert_eq!(claims["client_ref"], "ci-42");
    let jti = claims["jti"].as_str().unwrap();
    assert!(jti.len() >= 22, "at least 128 bits: {jti}");
    // Two proofs never share a jti.
    let q = ProofBuilder::new("POST", "https://server.example.com/token")
        .unwrap()
        .sign(es256(), &SystemRandomSource, now())
        .unwrap();
    assert_ne!(
        dpop_core::jwt::UnverifiedJwt::parse(&q)
            .unwrap()
            .dangerous_claims()["jti"],
        claims["jti"]
    );
    // The proof verifies at the token endpoint with the expected nonce and binding.
    let htu = Htu::parse("https://server.example.com/token").unwrap();
    let jkt: &Jkt = es256().thumbprint();
    let v = Verifier::new(
        VerifierConfig::builder()
            .with_default_algorithms()
            .with_nonces(Arc::new(dpop_core::ExpectedNonce::new(nonce).unwrap())),
    )
    .unwrap();
    let _ = v
        .verify(
            [p.as_bytes()],
            &ProofRequest::new("POST", &htu).with_expected_jkt(jkt),
            now(),
        )
        .unwrap();
}

/// The verifier reuses its verdict on a header it has seen; everything that belongs to
/// one proof (signature, claims, binding) is still checked every time.
#[test]
fn header_cache_never_skips_per_proof_checks() {
    for capacity in [0, 1, 4096] {
        let mut cfg = VerifierConfig::builder()
            .with_default_algorithms()
            .without_nonces();
        cfg.header_cache_capacity = capacity;
        let v = Verifier::new(cfg).unwrap();
        let htu = htu();
        let jkt = es256().thumbprint().clone();
        let req = ProofRequest::new("GET", &htu).with_access_token(TOKEN, &jkt);
        let run = |p: &str| v.verify([p.as_bytes()], &req, now()).map(|_| ());
        // Same header twice: the second proof is judged on its own merits.
        run(&sign(es256(), &header(es256()), &claims())).unwrap();
        let other = PrivateKey::generate(Algorithm::Es256).unwrap();
        let forged = sign(&other, &header(es256()), &claims());
        assert_eq!(
            reason(run(&forged)),
            "signature_invalid",
            "capacity {capacity}"
        );
        let stale = with_claims(|c| {
            c.insert("iat".into(), json!(NOW - 600));
        });
        assert_eq!(reason(run(&stale)), "iat_too_old", "capacity {capacity}");
        // Another key (another header) alternating with the first.
        let wrong_binding = sign(&other, &header(&other), &claims());
        assert_eq!(
            reason(run(&wrong_binding)),
            "key_mismatch",
            "capacity {capacity}"
        );
        run(&sign(es256(), &header(es256()), &claims())).unwrap();
        // A refused header stays refused.
        let bad_typ = with_header(|h| {
            h.insert("typ".into(), "JWT".into());
        });
        assert_eq!(reason(run(&bad_typ)), "typ_invalid");
        assert_eq!(reason(run(&bad_typ)), "typ_invalid");
    }
    // A verdict is per verifier: one that does not allow ES256 refuses the header another
    // verifier accepted.
    let p = sign(es256(), &header(es256()), &claims());
    let htu = htu();
    let _ = verifier()
        .verify([p.as_bytes()], &ProofRequest::new("GET", &htu), now())
        .unwrap();
    let ed_only = Verifier::new(
        VerifierConfig::builder()
            .with_algorithms(&[Algorithm::EdDsa])
            .unwrap()
            .without_nonces(),
    )
    .unwrap();
    assert_eq!(
        ed_only
            .verify([p.as_bytes()], &ProofRequest::new("GET", &htu), now())
            .unwrap_err()
            .reason()
            .as_str(),
        "alg_not_allowed"
    );
}

/// A caller that already hashed the token gets the same verdicts as one passing it.
#[test]
fn precomputed_token_hash_is_checked_like_the_token() {
    let htu = htu();
    let jkt = es256().thumbprint().clone();
    let right = dpop_core::Ath::of_token(TOKEN);
    let wrong = dpop_core::Ath::of_token("another-token");
    let v = verifier();
    let run = |p: &str, ath: &dpop_core::Ath| {
        let req = ProofRequest::new("GET", &htu).with_access_token_hash(ath, &jkt);
        v.verify([p.as_bytes()], &req, now()).map(|_| ())
    };
    run(&sign(es256(), &header(es256()), &claims()), &right).unwrap();
    assert_eq!(
        reason(run(&sign(es256(), &header(es256()), &claims()), &wrong)),
        "ath_mismatch"
    );
    let no_ath = with_claims(|c| {
        c.remove("ath");
    });
    assert_eq!(reason(run(&no_ath, &right)), "ath_missing");
}
