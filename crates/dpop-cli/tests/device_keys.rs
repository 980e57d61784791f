//! Key references on the command line: `file:` and plain paths name key files, device
//! URIs are parsed once and refused precisely when malformed, a PIN in a URI needs the
//! dangerous flag and never shows; and, with SoftHSM (`DPOP_TEST_SOFTHSM_MODULE`), a key
//! generated inside a PKCS#11 token signs proofs that verify, keeps its thumbprint, and
//! is refused with the device's code when the PIN is wrong.

use dpop_test::{SOFTHSM_USER_PIN, SoftHsmToken};

use crate::common::{Run, TempDir, p, run_dpop};

async fn dpop(args: &[&str], env: &[(&str, &str)]) -> Run {
    run_dpop(args, env).await.into()
}

const URL: &str = "https://api.example.com/v1/items";

#[tokio::test]
async fn file_references_name_the_same_key_file_as_the_path() {
    let dir = TempDir::new("keyref-file");
    let key = dir.file("k.pem");
    let jkt = dpop(&["keygen", "--out", p(&key)], &[])
        .await
        .line()
        .to_owned();
    let by_uri = format!("file:{}", p(&key));
    assert_eq!(dpop(&["thumbprint", &by_uri], &[]).await.line(), jkt);
    let proof = dpop(
        &["proof", "--key", &by_uri, "--method", "GET", "--url", URL],
        &[],
    )
    .await
    .line()
    .to_owned();
    let run = dpop(&["inspect", &proof, "--jkt", &jkt], &[]).await;
    assert_eq!(run.code, 0, "{run:#?}");
    // `file:` names exactly the path after it, even one that looks like a device URI.
    let odd = dir.file("pkcs11:odd");
    std::fs::copy(&key, &odd).unwrap();
    let run = dpop(&["thumbprint", &format!("file:{}", p(&odd))], &[]).await;
    assert_eq!(run.line(), jkt);
    // `file:-` is standard input, like `-`: it cannot be read twice.
    let run = dpop(&["jwk", "--set", "-", "file:-"], &[]).await;
    assert_eq!(run.code, 2, "{run:#?}");
    assert!(run.stderr.contains("read only once"), "{run:#?}");
}

#[tokio::test]
async fn malformed_device_references_are_usage_errors_naming_the_problem() {
    for (reference, needle) in [
        (
            "pkcs11:objetc=k?module-path=/m.so",
            "unknown path attribute objetc",
        ),
        ("pkcs11:object=k", "no module-path"),
        ("tpm2:handle=0x80000001", "persistent handle"),
        ("awskms:region=eu-west-1", "no key-id"),
    ] {
        for args in [
            vec!["thumbprint", reference],
            vec!["proof", "--key", reference, "--method", "GET", "--url", URL],
            vec!["curl", URL, "--key", reference, "--token", "t"],
        ] {
            let run = dpop(&args, &[]).await;
            assert_eq!(run.code, 2, "{args:?}: {run:#?}");
            assert!(run.stderr.contains(needle), "{args:?}: {run:#?}");
        }
    }
}

#[tokio::test]
async fn a_pin_in_the_uri_never_shows_and_needs_the_dangerous_flag() {
    let reference = "pkcs11:object=k;id=%01?module-path=/nonexistent/module.so&pin-value=80915";
    let run = dpop(&["thumbprint", reference], &[]).await;
    assert_eq!(run.code, 2, "{run:#?}");
    assert!(!run.stderr.contains("80915"), "{run:#?}");
    let run = dpop(
        &["thumbprint", "--dangerous-allow-pin-value", reference],
        &[],
    )
    .await;
    assert_eq!(run.code, 2, "{run:#?}");
    assert!(!run.stderr.contains("80915"), "{run:#?}");
    assert!(run.stderr.contains("pin-value=***"), "{run:#?}");
    // The flag means nothing to commands that open no key: a usage error.
    let run = dpop(&["inspect", "x", "--dangerous-allow-pin-value"], &[]).await;
    assert_eq!(run.code, 2, "{run:#?}");
    assert!(run.stderr.contains("applies only to"), "{run:#?}");
}

#[tokio::test]
async fn keygen_writes_a_file_or_makes_a_key_in_a_device() {
    let run = dpop(&["keygen"], &[]).await;
    assert_eq!(run.code, 2, "{run:#?}");
    let run = dpop(&["keygen", "--key", "file:/tmp/x.pem"], &[]).await;
    assert_eq!(run.code, 2, "{run:#?}");
    assert!(run.stderr.contains("not a key in a device"), "{run:#?}");
    let run = dpop(
        &[
            "keygen",
            "--key",
            "pkcs11:object=k?module-path=/m.so",
            "--out",
            "x",
        ],
        &[],
    )
    .await;
    assert_eq!(run.code, 2, "{run:#?}");
}

/// A backend left out of the build says how to get it.
#[cfg(not(feature = "tpm"))]
#[tokio::test]
async fn a_backend_not_built_in_says_which_feature_builds_it() {
    let run = dpop(
        &["thumbprint", "tpm2:handle=0x81000001?tcti=swtpm:port=2321"],
        &[],
    )
    .await;
    assert_eq!(run.code, 2, "{run:#?}");
    assert!(run.stderr.contains("cargo feature `tpm`"), "{run:#?}");
}

/// The SoftHSM module, or `None` after saying the test is skipped.
pub(crate) fn softhsm() -> Option<std::path::PathBuf> {
    let module = SoftHsmToken::module();
    if module.is_none() {
        eprintln!("skipped: set DPOP_TEST_SOFTHSM_MODULE to SoftHSM's PKCS#11 module");
    }
    module
}

#[tokio::test]
async fn a_key_made_inside_a_pkcs11_token_signs_proofs_and_never_leaves_it() {
    let Some(module) = softhsm() else { return };
    let token = SoftHsmToken::create(&module, "cli-keys").unwrap();
    let env_owned = token.env();
    let env: Vec<(&str, &str)> = env_owned
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let uri = token.uri("deploy", "0a0b");

    let jkt = dpop(&["keygen", "--key", &uri], &env)
        .await
        .line()
        .to_owned();
    assert_eq!(jkt.len(), 43, "{jkt}");
    // The same thumbprint at every open: tokens bound to it keep working.
    assert_eq!(dpop(&["thumbprint", &uri], &env).await.line(), jkt);
    let jwk: serde_json::Value = serde_json::from_str(
        dpop(&["jwk", "--kid", "--alg", "--", &uri], &env)
            .await
            .line(),
    )
    .unwrap();
    assert_eq!(
        (jwk["kty"].as_str(), jwk["crv"].as_str()),
        (Some("EC"), Some("P-256"))
    );
    assert_eq!(
        (jwk["kid"].as_str(), jwk["alg"].as_str()),
        (Some(jkt.as_str()), Some("ES256"))
    );
    assert!(jwk.get("d").is_none(), "{jwk}");

    let proof = dpop(
        &["proof", "--key", &uri, "--method", "POST", "--url", URL],
        &env,
    )
    .await
    .line()
    .to_owned();
    let run = dpop(
        &[
            "inspect", &proof, "--method", "POST", "--url", URL, "--jkt", &jkt,
        ],
        &[],
    )
    .await;
    assert_eq!(run.code, 0, "{run:#?}");

    // The token says the private key never left it and never will (the attributes,
    // read by OpenSC's pkcs11-tool, an independent reader).
    let objects = token
        .pkcs11_tool(&["--login", "--pin", SOFTHSM_USER_PIN, "--list-objects"])
        .unwrap();
    let private = objects
        .split("Private Key Object")
        .nth(1)
        .unwrap_or_else(|| panic!("no private key object: {objects}"));
    assert!(private.trim_start().starts_with("; EC"), "{objects}");
    assert!(
        private.contains("sensitive, always sensitive, never extractable"),
        "{objects}"
    );
    let dir = TempDir::new("keyref-pins");

    // The same name again: refused, the existing key untouched.
    let run = dpop(&["keygen", "--key", &uri], &env).await;
    assert_eq!(run.code, 2, "{run:#?}");
    assert_eq!(dpop(&["thumbprint", &uri], &env).await.line(), jkt);

    // A wrong PIN: a usage error with the device's code, never the PIN.
    let wrong = dir.write("wrong-pin", "0000-wrong\n", 0o600);
    let bad = uri.replace(&p(&token.pin_file()).to_owned(), p(&wrong));
    let run = dpop(&["thumbprint", &bad], &env).await;
    assert_eq!(run.code, 2, "{run:#?}");
    assert!(run.stderr.contains("CKR_PIN_INCORRECT"), "{run:#?}");
    assert!(!run.stderr.contains("0000-wrong"), "{run:#?}");
    // A PIN file others can read: refused before the PIN is used.
    let loose = dir.write("loose-pin", &format!("{SOFTHSM_USER_PIN}\n"), 0o644);
    let run = dpop(
        &[
            "thumbprint",
            &uri.replace(&p(&token.pin_file()).to_owned(), p(&loose)),
        ],
        &env,
    )
    .await;
    assert_eq!(run.code, 2, "{run:#?}");
    assert!(run.stderr.contains("chmod 600"), "{run:#?}");
    // A key that is not there.
    let run = dpop(&["thumbprint", &token.uri("absent", "ff")], &env).await;
    assert_eq!(run.code, 2, "{run:#?}");
    assert!(run.stderr.contains("absent"), "{run:#?}");
}

/// Messages about a device key given by the user (here: an algorithm it cannot sign)
/// show the URI as dpop-keys shows it, without the PIN, not the argument as typed.
#[tokio::test]
async fn messages_about_a_device_key_never_show_its_pin() {
    let Some(module) = softhsm() else { return };
    let token = SoftHsmToken::create(&module, "cli-pin-shown").unwrap();
    let env_owned = token.env();
    let env: Vec<(&str, &str)> = env_owned
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let uri = token.uri("shown", "0c");
    let run = dpop(&["keygen", "--key", &uri], &env).await;
    assert_eq!(run.code, 0, "{run:#?}");
    let with_pin = format!(
        "pkcs11:token={};object=shown?module-path={}&pin-value={SOFTHSM_USER_PIN}",
        token.label(),
        module.display()
    );
    for args in [
        vec![
            "jwk",
            "--dangerous-allow-pin-value",
            "--alg",
            "ES384",
            "--",
            &with_pin,
        ],
        vec![
            "jwk",
            "--dangerous-allow-pin-value",
            "--set",
            "--",
            &with_pin,
            &with_pin,
        ],
    ] {
        let run = dpop(&args, &env).await;
        assert_eq!(run.code, 2, "{args:?}: {run:#?}");
        assert!(!run.stderr.contains(SOFTHSM_USER_PIN), "{args:?}: {run:#?}");
    }
    let run = dpop(
        &[
            "jwk",
            "--dangerous-allow-pin-value",
            "--alg",
            "ES384",
            "--",
            &with_pin,
        ],
        &env,
    )
    .await;
    assert!(run.stderr.contains("pin-value=***"), "{run:#?}");
    // A scheme in capitals is still a device URI, not a file "PKCS11:…" that cannot
    // be read (a message that would show the whole argument).
    let upper = with_pin.replacen("pkcs11:", "PKCS11:", 1);
    let run = dpop(&["thumbprint", &upper], &env).await;
    assert_eq!(run.code, 2, "{run:#?}");
    assert!(!run.stderr.contains(SOFTHSM_USER_PIN), "{run:#?}");
    assert!(run.stderr.contains("dangerous"), "{run:#?}");
}
