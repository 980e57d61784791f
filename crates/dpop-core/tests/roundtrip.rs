//! Every algorithm: generate, save and load (PEM and JWK), create, verify, tamper, reject.

use dpop_core::{
    ALL_ALGORITHMS, Algorithm, Htu, KeyFamily, PrivateKey, ProofBuilder, ProofRequest,
    SystemRandomSource,
};

use crate::support::{NOW, TOKEN, URL, now};

fn flip_payload_char(proof: &str) -> String {
    let mut parts: Vec<String> = proof.split('.').map(str::to_owned).collect();
    let payload = &mut parts[1];
    let c = if payload.ends_with('A') { 'B' } else { 'A' };
    payload.pop();
    payload.push(c);
    parts.join(".")
}

#[test]
fn every_algorithm_round_trips() {
    let v = crate::support::verifier_all();
    let htu = Htu::parse(URL).unwrap();
    for alg in ALL_ALGORITHMS {
        let key = PrivateKey::generate(alg).unwrap();
        assert_eq!(key.algorithm(), alg);
        let proof = ProofBuilder::new("GET", URL)
            .unwrap()
            .access_token(TOKEN)
            .sign(&key, &SystemRandomSource, now())
            .unwrap();
        let jkt = key.thumbprint().clone();
        let req = ProofRequest::new("GET", &htu).with_access_token(TOKEN, &jkt);
        let ok = v
            .verify([proof.as_bytes()], &req, now())
            .unwrap_or_else(|e| panic!("{alg}: {e}"));
        let ok = dpop_core::dangerous::skip_replay_check(ok);
        assert_eq!(ok.algorithm(), alg);
        assert_eq!(ok.jkt(), key.thumbprint());
        assert_eq!(ok.iat().as_secs(), NOW);

        // Tampering with the payload breaks the signature (or the JSON).
        let tampered = flip_payload_char(&proof);
        assert!(
            v.verify([tampered.as_bytes()], &req, now()).is_err(),
            "{alg} tampered"
        );

        // Another key of the same algorithm cannot stand in.
        let other = PrivateKey::generate(alg).unwrap();
        let proof2 = ProofBuilder::new("GET", URL)
            .unwrap()
            .access_token(TOKEN)
            .sign(&other, &SystemRandomSource, now())
            .unwrap();
        assert_eq!(
            v.verify([proof2.as_bytes()], &req, now())
                .unwrap_err()
                .reason()
                .as_str(),
            "key_mismatch",
            "{alg}"
        );

        // PEM and JWK round trips keep the key and its algorithm.
        let rsa_alg = (alg.key_family() == KeyFamily::Rsa).then_some(alg);
        let from_pem = PrivateKey::from_pkcs8_pem(&key.to_pkcs8_pem().unwrap(), rsa_alg).unwrap();
        assert_eq!(from_pem.thumbprint(), key.thumbprint(), "{alg} PEM");
        let expected_alg = if alg == Algorithm::Ed25519 {
            Algorithm::EdDsa
        } else {
            alg
        };
        assert_eq!(from_pem.algorithm(), expected_alg, "{alg} PEM alg");
        let jwk_text = key.to_private_jwk_json().unwrap();
        let from_jwk = PrivateKey::from_jwk_json(&jwk_text).unwrap();
        assert_eq!(from_jwk.thumbprint(), key.thumbprint(), "{alg} JWK");
        assert_eq!(from_jwk.algorithm(), alg, "{alg} JWK alg");
        // The reloaded key makes proofs the verifier accepts.
        let p3 = ProofBuilder::new("GET", URL)
            .unwrap()
            .access_token(TOKEN)
            .sign(&from_jwk, &SystemRandomSource, now())
            .unwrap();
        let _ = v.verify([p3.as_bytes()], &req, now()).unwrap();
        // Public JWK export has no private members; Debug shows none either.
        let public = key.public_jwk().to_json_value();
        for m in ["d", "p", "q", "dp", "dq", "qi", "priv"] {
            assert!(public.get(m).is_none(), "{alg} public JWK has {m}");
        }
        let dbg = format!("{key:?}");
        // The private member: `d`, or an ML-DSA key's seed `priv` (RFC 9964).
        let private = serde_json::from_str::<serde_json::Value>(&jwk_text).unwrap();
        let d = private["d"]
            .as_str()
            .or(private["priv"].as_str())
            .unwrap()
            .to_owned();
        assert!(
            !dbg.contains(&d) && dbg.contains(key.thumbprint().as_str()),
            "{alg}: {dbg}"
        );
    }
}

#[test]
fn key_loading_rejections() {
    assert!(PrivateKey::from_pkcs8_pem("not a pem", None).is_err());
    assert!(
        PrivateKey::from_pkcs8_pem(
            "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
            None
        )
        .is_err()
    );
    let key = PrivateKey::generate(Algorithm::Es256).unwrap();
    let jwk: serde_json::Value = serde_json::from_str(&key.to_private_jwk_json().unwrap()).unwrap();
    // d that does not belong to x/y.
    let other: serde_json::Value = serde_json::from_str(
        &PrivateKey::generate(Algorithm::Es256)
            .unwrap()
            .to_private_jwk_json()
            .unwrap(),
    )
    .unwrap();
    let mut mixed = jwk.clone();
    mixed["d"] = other["d"].clone();
    assert!(PrivateKey::from_jwk_json(&mixed.to_string()).is_err());
    let mut no_d = jwk.clone();
    no_d.as_object_mut().unwrap().remove("d");
    assert!(PrivateKey::from_jwk_json(&no_d.to_string()).is_err());
    // A JWK that declares its algorithm keeps it: the key cannot be moved to another.
    let rsa = PrivateKey::generate(Algorithm::Ps384).unwrap();
    let declared = PrivateKey::from_jwk_json(&rsa.to_private_jwk_json().unwrap()).unwrap();
    assert_eq!(declared.algorithm(), Algorithm::Ps384);
    assert!(declared.with_algorithm(Algorithm::Rs256).is_err());
    let mut wrong_alg = jwk;
    wrong_alg["alg"] = "RS256".into();
    assert!(PrivateKey::from_jwk_json(&wrong_alg.to_string()).is_err());
    assert!(
        PrivateKey::generate(Algorithm::Es256)
            .unwrap()
            .with_algorithm(Algorithm::Es384)
            .is_err()
    );
    assert!(PrivateKey::generate_rsa(Algorithm::Es256, 2048).is_err());
    assert!(PrivateKey::generate_rsa(Algorithm::Rs256, 1024).is_err());
}

#[test]
fn rsa_key_can_switch_padding() {
    let key = PrivateKey::generate(Algorithm::Rs256)
        .unwrap()
        .with_algorithm(Algorithm::Ps256)
        .unwrap();
    let htu = Htu::parse(URL).unwrap();
    let proof = ProofBuilder::new("GET", URL)
        .unwrap()
        .sign(&key, &SystemRandomSource, now())
        .unwrap();
    let v = crate::support::verifier_all();
    let ok = dpop_core::dangerous::skip_replay_check(
        v.verify([proof.as_bytes()], &ProofRequest::new("GET", &htu), now())
            .unwrap(),
    );
    assert_eq!(ok.algorithm(), Algorithm::Ps256);
}

/// A signer that says it blocks (as a device key does).
struct Blocking(PrivateKey);

impl dpop_core::Signer for Blocking {
    fn algorithm(&self) -> Algorithm {
        self.0.algorithm()
    }
    fn public_jwk(&self) -> &dpop_core::PublicJwk {
        self.0.public_jwk()
    }
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, dpop_core::KeyError> {
        self.0.sign(message)
    }
    fn blocks(&self) -> bool {
        true
    }
}

/// `blocks` of the signer type `S` itself (not of what it points to).
fn blocks_of<S: dpop_core::Signer + ?Sized>(signer: &S) -> bool {
    signer.blocks()
}

#[test]
fn references_and_arcs_of_a_signer_forward_blocks() {
    let device: std::sync::Arc<dyn dpop_core::Signer> =
        std::sync::Arc::new(Blocking(PrivateKey::generate(Algorithm::Es256).unwrap()));
    let by_ref: &dyn dpop_core::Signer = &*device;
    assert!(blocks_of::<std::sync::Arc<dyn dpop_core::Signer>>(&device));
    assert!(blocks_of::<&std::sync::Arc<dyn dpop_core::Signer>>(
        &&device
    ));
    assert!(blocks_of::<&dyn dpop_core::Signer>(&by_ref));
    let software = PrivateKey::generate(Algorithm::Es256).unwrap();
    assert!(!blocks_of::<&PrivateKey>(&&software));
}
