//! Keys: ephemeral, from a PEM or private-JWK file (refused when others can read it), from
//! an environment variable; the thumbprint of a loaded key is the same at every load.

use dpop_client::{ClientError, ClientKey};
use dpop_core::Algorithm;

use crate::support::{CHILD_PASSED, TempDir, es256, is_child, run_child};

fn key_message(r: Result<ClientKey, ClientError>) -> String {
    match r {
        Err(ClientError::Key(m)) => m,
        other => panic!("expected ClientError::Key, got {other:?}"),
    }
}

#[test]
fn ephemeral_keys_are_new_each_time() {
    for alg in [Algorithm::Es256, Algorithm::Es384, Algorithm::EdDsa] {
        let a = ClientKey::ephemeral(alg).unwrap();
        let b = ClientKey::ephemeral(alg).unwrap();
        assert_eq!(a.algorithm(), alg);
        assert_ne!(a.thumbprint(), b.thumbprint(), "{alg:?}");
        // Debug shows the algorithm and thumbprint, never the private key.
        let shown = format!("{a:?}");
        assert!(shown.contains(a.thumbprint().as_str()), "{shown}");
        assert!(!shown.contains("\"d\""), "{shown}");
    }
}

#[test]
fn pem_and_jwk_files_give_the_same_thumbprint_at_every_load() {
    let dir = TempDir::new("keys");
    let key = es256();
    let jkt = key.thumbprint().clone();
    let pem = dir.write("client.pem", &key.to_pkcs8_pem().unwrap(), 0o600);
    let jwk = dir.write("client.jwk", &key.to_private_jwk_json().unwrap(), 0o600);

    // A restart loads the file again: the same key, so tokens bound to it stay usable.
    let first = ClientKey::from_file(&pem).unwrap();
    let again = ClientKey::from_file(&pem).unwrap();
    assert_eq!(first.thumbprint(), &jkt);
    assert_eq!(again.thumbprint(), &jkt);
    assert_eq!(first.algorithm(), Algorithm::Es256);
    let from_jwk = ClientKey::from_file(&jwk).unwrap();
    assert_eq!(from_jwk.thumbprint(), &jkt);
    assert_eq!(ClientKey::from_file(&jwk).unwrap().thumbprint(), &jkt);

    // The loaded key signs proofs that carry its public key.
    let proof = dpop_core::ProofBuilder::new("GET", "https://api.example.com/x")
        .unwrap()
        .sign(
            first.signer(),
            &dpop_core::SystemRandomSource,
            dpop_core::UnixTime::from_secs(1_700_000_000),
        )
        .unwrap();
    let decoded = dpop_core::jwt::UnverifiedJwt::parse(&proof).unwrap();
    let header = decoded.dangerous_header();
    let public = dpop_core::PublicJwk::from_json(&header["jwk"].to_string()).unwrap();
    assert_eq!(public.thumbprint(), &jkt);
}

#[cfg(unix)]
#[test]
fn a_key_file_others_can_read_is_refused_with_the_fix() {
    let dir = TempDir::new("keys");
    let key = es256();
    for mode in [0o644, 0o640, 0o604] {
        let path = dir.write("loose.pem", &key.to_pkcs8_pem().unwrap(), mode);
        let message = key_message(ClientKey::from_file(&path));
        assert!(message.contains("chmod 600"), "{mode:o}: {message}");
        assert!(message.contains(&path.display().to_string()), "{message}");
        assert!(message.contains(&format!("{mode:04o}")), "{message}");
    }
    let path = dir.write("loose.jwk", &key.to_private_jwk_json().unwrap(), 0o644);
    assert!(key_message(ClientKey::from_file(&path)).contains("chmod 600"));
    // After the fix it loads.
    let path = dir.write("fixed.pem", &key.to_pkcs8_pem().unwrap(), 0o600);
    assert_eq!(
        ClientKey::from_file(&path).unwrap().thumbprint(),
        key.thumbprint()
    );
    let path = dir.write("owner-only.pem", &key.to_pkcs8_pem().unwrap(), 0o400);
    assert!(ClientKey::from_file(&path).is_ok());
}

#[test]
fn unusable_key_files_are_refused_with_what_is_wrong() {
    let dir = TempDir::new("keys");
    let key = es256();

    let missing = dir.path().join("missing.pem");
    let m = key_message(ClientKey::from_file(&missing));
    assert!(m.contains("missing.pem"), "{m}");

    let public = key.public_jwk().to_json_value().to_string();
    let path = dir.write("public.jwk", &public, 0o600);
    let m = key_message(ClientKey::from_file(&path));
    assert!(m.contains("public key") && m.contains("public.jwk"), "{m}");

    let path = dir.write("garbage.pem", "not a key", 0o600);
    let m = key_message(ClientKey::from_file(&path));
    assert!(m.contains("garbage.pem"), "{m}");

    let path = dir.write("huge.pem", &"x".repeat(65 * 1024), 0o600);
    let m = key_message(ClientKey::from_file(&path));
    assert!(m.contains("64 KiB"), "{m}");

    let m = key_message(ClientKey::from_env("DPOP_CLIENT_TEST_SURELY_UNSET"));
    assert!(m.contains("DPOP_CLIENT_TEST_SURELY_UNSET"), "{m}");
}

#[test]
fn keys_from_environment_variables() {
    if is_child() {
        let var = |name: &str| std::env::var(name).unwrap();
        let jkt = var("DPOP_TEST_JKT");
        let pem = ClientKey::from_env("DPOP_TEST_KEY_PEM").unwrap();
        let jwk = ClientKey::from_env("DPOP_TEST_KEY_JWK").unwrap();
        assert_eq!(pem.thumbprint().as_str(), jkt);
        assert_eq!(jwk.thumbprint().as_str(), jkt);
        let m = key_message(ClientKey::from_env("DPOP_TEST_KEY_PUBLIC"));
        assert!(
            m.contains("DPOP_TEST_KEY_PUBLIC") && m.contains("public key"),
            "{m}"
        );
        eprintln!("{CHILD_PASSED}");
        return;
    }
    let key = es256();
    let pem = key.to_pkcs8_pem().unwrap().to_string();
    let jwk = key.to_private_jwk_json().unwrap().to_string();
    let public = key.public_jwk().to_json_value().to_string();
    run_child(
        "keys::keys_from_environment_variables",
        &[
            ("DPOP_TEST_JKT", key.thumbprint().as_str()),
            ("DPOP_TEST_KEY_PEM", &pem),
            ("DPOP_TEST_KEY_JWK", &jwk),
            ("DPOP_TEST_KEY_PUBLIC", &public),
        ],
    );
}
