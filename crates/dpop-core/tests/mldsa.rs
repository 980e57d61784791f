//! ML-DSA proofs (RFC 9964 `AKP` keys): proofs made by an independent implementation,
//! every rejection path of the AKP JWK, the opt-in allow-list and the size bound.

use std::sync::OnceLock;

use dpop_core::{
    Algorithm, DEFAULT_MAX_PROOF_BYTES, Htu, JwkError, KeyError, KeyFamily, MlDsaParameterSet,
    PrivateKey, ProofBuilder, ProofRequest, PublicJwk, SystemRandomSource, UnixTime, Verifier,
    VerifierConfig,
};
use serde_json::{Value, json};

use crate::support::*;

const ML_DSA: [Algorithm; 3] = [Algorithm::MlDsa44, Algorithm::MlDsa65, Algorithm::MlDsa87];

fn independent() -> &'static Value {
    static V: OnceLock<Value> = OnceLock::new();
    V.get_or_init(|| serde_json::from_str(include_str!("vectors/ml-dsa-proofs.json")).unwrap())
}

fn key(alg: Algorithm) -> &'static PrivateKey {
    static K: OnceLock<[PrivateKey; 3]> = OnceLock::new();
    let keys = K.get_or_init(|| ML_DSA.map(|a| PrivateKey::generate(a).unwrap()));
    keys.iter().find(|k| k.algorithm() == alg).unwrap()
}

fn verifier_with(algs: &[Algorithm]) -> Verifier {
    Verifier::new(
        VerifierConfig::builder()
            .with_algorithms(algs)
            .unwrap()
            .without_nonces(),
    )
    .unwrap()
}

fn check_with(v: &Verifier, key: &PrivateKey, proof: &str) -> Result<(), dpop_core::Error> {
    let htu = htu();
    let jkt = key.thumbprint().clone();
    let req = ProofRequest::new("GET", &htu).with_access_token(TOKEN, &jkt);
    v.verify([proof.as_bytes()], &req, now()).map(|_| ())
}

fn akp_jwk(alg: &str, public: &str) -> String {
    json!({"kty": "AKP", "alg": alg, "pub": public}).to_string()
}

#[test]
fn proofs_from_an_independent_implementation_verify() {
    let v = verifier_with(&ML_DSA);
    let proofs = independent()["proofs"].as_array().unwrap();
    assert_eq!(proofs.len(), 2);
    for p in proofs {
        let alg = p["alg"].as_str().unwrap();
        let jwk = PublicJwk::from_json(&p["jwk"].to_string()).unwrap();
        assert_eq!(jwk.kty(), "AKP");
        assert_eq!(
            jwk.thumbprint().as_str(),
            p["jkt"].as_str().unwrap(),
            "{alg}"
        );
        assert_eq!(
            jwk.thumbprint_input(),
            format!(
                r#"{{"alg":"{alg}","kty":"AKP","pub":"{}"}}"#,
                p["jwk"]["pub"].as_str().unwrap()
            )
        );
        let htu = Htu::parse(p["htu"].as_str().unwrap()).unwrap();
        let now = UnixTime::from_secs(p["iat"].as_u64().unwrap() + 5);
        let req = ProofRequest::new(p["htm"].as_str().unwrap(), &htu);
        let ok = v
            .verify([p["proof"].as_str().unwrap().as_bytes()], &req, now)
            .unwrap_or_else(|e| panic!("{alg}: {e}"));
        let ok = dpop_core::dangerous::skip_replay_check(ok);
        assert_eq!(ok.algorithm().name(), alg);
        assert_eq!(ok.jkt().as_str(), p["jkt"].as_str().unwrap());

        // One flipped signature bit and the same proof is refused.
        let proof = p["proof"].as_str().unwrap();
        let (rest, sig) = proof.rsplit_once('.').unwrap();
        let mut sig = sig.to_owned();
        let last = if sig.starts_with('A') { "B" } else { "A" };
        sig.replace_range(0..1, last);
        let tampered = format!("{rest}.{sig}");
        let err = v.verify([tampered.as_bytes()], &req, now).unwrap_err();
        assert_eq!(err.reason().as_str(), "signature_invalid", "{alg}");
    }
}

#[test]
fn akp_jwk_rejections() {
    let jwk = key(Algorithm::MlDsa44).public_jwk().to_json_value();
    let public = jwk["pub"].as_str().unwrap().to_owned();
    assert!(PublicJwk::from_json(&akp_jwk("ML-DSA-44", &public)).is_ok());

    // The wrong length for the parameter set: the 44 key named as 65, one byte short.
    assert_eq!(
        PublicJwk::from_json(&akp_jwk("ML-DSA-65", &public)),
        Err(JwkError::BadMember("pub"))
    );
    let short = b64(&vec![7u8; MlDsaParameterSet::MlDsa44.public_key_len() - 1]);
    assert_eq!(
        PublicJwk::from_json(&akp_jwk("ML-DSA-44", &short)),
        Err(JwkError::BadMember("pub"))
    );
    // `priv` in a public JWK.
    let mut with_priv = jwk;
    with_priv["priv"] = json!(b64(&[1u8; 32]));
    assert_eq!(
        PublicJwk::from_json(&with_priv.to_string()),
        Err(JwkError::PrivateMember("priv"))
    );
    // `alg` is required, and must be an ML-DSA name.
    assert_eq!(
        PublicJwk::from_json(&json!({"kty": "AKP", "pub": public}).to_string()),
        Err(JwkError::MissingMember("alg"))
    );
    for alg in ["ES256", "EdDSA", "RS256", "ML-DSA-128", "ml-dsa-44"] {
        assert_eq!(
            PublicJwk::from_json(&akp_jwk(alg, &public)),
            Err(JwkError::AlgMismatch),
            "{alg}"
        );
    }
    assert_eq!(
        PublicJwk::from_json(&json!({"kty": "AKP", "alg": "ML-DSA-44"}).to_string()),
        Err(JwkError::MissingMember("pub"))
    );
    // An EC alg on an AKP key is refused in the proof header too.
    let k = key(Algorithm::MlDsa44);
    let v = verifier_with(&[Algorithm::Es256, Algorithm::MlDsa44]);
    let mut h = header(k);
    h["alg"] = json!("ES256");
    assert_eq!(
        reason(check_with(&v, k, &sign(k, &h, &claims()))),
        "alg_key_mismatch"
    );
}

#[test]
fn header_alg_must_equal_the_jwk_alg() {
    let v = verifier_with(&ML_DSA);
    let k44 = key(Algorithm::MlDsa44);
    let k65 = key(Algorithm::MlDsa65);
    // The 65 key's jwk under an ML-DSA-44 header alg, signed by either key.
    let mut h = header(k65);
    h["alg"] = json!("ML-DSA-44");
    for signer in [k44, k65] {
        let err = check_with(&v, k65, &sign(signer, &h, &claims())).unwrap_err();
        assert_eq!(err.reason().as_str(), "alg_key_mismatch");
        assert!(
            matches!(
                err,
                dpop_core::Error::Proof(dpop_core::ProofError::AlgKeyMismatch(Algorithm::MlDsa44))
            ),
            "{err:?}"
        );
    }
}

#[test]
fn ml_dsa_is_refused_unless_allowed() {
    let k = key(Algorithm::MlDsa44);
    let proof = sign(k, &header(k), &claims());
    // The default list (which leaves ML-DSA out) and an explicit classical list.
    assert_eq!(
        reason(check_with(&verifier(), k, &proof)),
        "alg_not_allowed"
    );
    let v = verifier_with(&[Algorithm::MlDsa65]);
    assert_eq!(reason(check_with(&v, k, &proof)), "alg_not_allowed");
    let v = verifier_with(&[Algorithm::MlDsa44]);
    check_with(&v, k, &proof).unwrap();
}

#[test]
fn tampered_signature_is_refused() {
    let v = verifier_with(&ML_DSA);
    for alg in ML_DSA {
        let k = key(alg);
        let proof = sign(k, &header(k), &claims());
        check_with(&v, k, &proof).unwrap();
        let (rest, sig) = proof.rsplit_once('.').unwrap();
        // The right length with one byte changed, and one byte short.
        let mut raw =
            base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, sig).unwrap();
        raw[100] ^= 1;
        let flipped = format!("{rest}.{}", b64(&raw));
        assert_eq!(
            reason(check_with(&v, k, &flipped)),
            "signature_invalid",
            "{alg}"
        );
        raw.pop();
        let short = format!("{rest}.{}", b64(&raw));
        assert_eq!(
            reason(check_with(&v, k, &short)),
            "signature_invalid",
            "{alg}"
        );
    }
}

#[test]
fn the_size_bound_rises_only_with_ml_dsa_allowed() {
    let k87 = key(Algorithm::MlDsa87);
    let proof = ProofBuilder::new("GET", URL)
        .unwrap()
        .access_token(TOKEN)
        .sign(k87, &SystemRandomSource, now())
        .unwrap();
    assert!(
        proof.len() > DEFAULT_MAX_PROOF_BYTES && proof.len() <= 16 * 1024,
        "an ML-DSA-87 proof is {} bytes",
        proof.len()
    );
    let v = verifier_with(&[Algorithm::Es256, Algorithm::MlDsa87]);
    check_with(&v, k87, &proof).unwrap();

    // Without ML-DSA allowed the bound stays at 8192: refused by size, before parsing.
    for v in [verifier(), verifier_with(&[Algorithm::Es256])] {
        assert_eq!(reason(check_with(&v, k87, &proof)), "proof_too_large");
    }
    // An explicit bound below the proof's size still refuses it by size.
    let mut config = VerifierConfig::builder()
        .with_algorithms(&[Algorithm::MlDsa87])
        .unwrap()
        .without_nonces();
    assert_eq!(config.max_proof_bytes, 16 * 1024);
    config.max_proof_bytes = DEFAULT_MAX_PROOF_BYTES;
    let v = Verifier::new(config).unwrap();
    assert_eq!(reason(check_with(&v, k87, &proof)), "proof_too_large");
}

#[test]
fn private_keys_round_trip_through_seed_jwk_and_pem() {
    for alg in ML_DSA {
        let k = key(alg);
        assert_eq!(k.public_jwk().family(), alg.key_family());
        assert!(matches!(alg.key_family(), KeyFamily::MlDsa(_)));
        let jwk: Value = serde_json::from_str(&k.to_private_jwk_json().unwrap()).unwrap();
        assert_eq!(jwk["kty"], "AKP");
        assert_eq!(jwk["alg"], alg.name());
        let seed = jwk["priv"].as_str().unwrap();
        assert_eq!(seed.len(), 43, "a 32-byte seed");
        assert!(jwk.get("d").is_none());

        // A wrong seed length, a seed of another key, a missing seed.
        let mut bad = jwk.clone();
        bad["priv"] = json!(b64(&[1u8; 31]));
        assert_eq!(
            PrivateKey::from_jwk_json(&bad.to_string()).unwrap_err(),
            KeyError::Jwk(JwkError::BadMember("priv"))
        );
        bad["priv"] = json!(b64(&[1u8; 32]));
        assert_eq!(
            PrivateKey::from_jwk_json(&bad.to_string()).unwrap_err(),
            KeyError::Inconsistent
        );
        bad.as_object_mut().unwrap().remove("priv");
        assert_eq!(
            PrivateKey::from_jwk_json(&bad.to_string()).unwrap_err(),
            KeyError::MissingPrivateMember("priv")
        );
        // Another ML-DSA algorithm cannot be forced on the key.
        for other in ML_DSA.into_iter().filter(|a| *a != alg) {
            assert!(k.public_jwk().fits(alg));
            assert!(!k.public_jwk().fits(other));
        }
        // The PEM is the seed form (RFC 9881): 22 bytes of PKCS#8 around `80 20 <seed>`.
        let pem = k.to_pkcs8_pem().unwrap();
        assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----"));
        let again = PrivateKey::from_pkcs8_pem(&pem, None).unwrap();
        assert_eq!(again.algorithm(), alg);
        assert_eq!(again.thumbprint(), k.thumbprint());
        // Debug never shows the seed.
        assert!(!format!("{k:?}").contains(seed));
    }
}
