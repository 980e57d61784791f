//! End-to-end tests of key handling: `dpop jwk` with `kid`, `alg`, `use` and JWK Sets,
//! `-` for standard input and output, and passphrase-protected PKCS#8 key files.

use std::process::{Command, Stdio};

use serde_json::Value;

use crate::common::{DPOP, Run, TempDir, assert_mode, p, run_dpop};
use crate::tokens::dpop_with_stdin;

async fn dpop(args: &[&str], env: &[(&str, &str)]) -> Run {
    run_dpop(args, env).await.into()
}

const PASSPHRASE: &str = "correct horse battery staple";

#[tokio::test]
async fn jwk_prints_kid_alg_and_use_on_request() {
    let dir = TempDir::new("jwk");
    let ec = dir.file("ec.pem");
    let jkt = dpop(&["keygen", "--out", p(&ec)], &[])
        .await
        .line()
        .to_owned();

    let plain: Value = serde_json::from_str(dpop(&["jwk", p(&ec)], &[]).await.line()).unwrap();
    assert!(plain.get("kid").is_none() && plain.get("alg").is_none() && plain.get("use").is_none());

    let with_kid: Value =
        serde_json::from_str(dpop(&["jwk", "--kid", p(&ec)], &[]).await.line()).unwrap();
    assert_eq!(with_kid["kid"], jkt.as_str());
    assert!(with_kid.get("alg").is_none());

    let with_alg: Value =
        serde_json::from_str(dpop(&["jwk", p(&ec), "--alg"], &[]).await.line()).unwrap();
    assert_eq!(with_alg["alg"], "ES256");
    assert_eq!(with_alg["use"], "sig");

    // An algorithm that does not fit the key is a usage error.
    let run = dpop(&["jwk", "--alg", "ES384", p(&ec)], &[]).await;
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.stderr.contains("it signs with ES256"), "{run:?}");

    // An RSA key in PEM: RS256 unless told; any RSA algorithm fits.
    let rsa = dir.file("rsa.pem");
    dpop(&["keygen", "--alg", "PS256", "--out", p(&rsa)], &[]).await;
    let rs: Value =
        serde_json::from_str(dpop(&["jwk", "--alg", "--", p(&rsa)], &[]).await.line()).unwrap();
    assert_eq!(rs["alg"], "RS256");
    let ps: Value =
        serde_json::from_str(dpop(&["jwk", "--alg", "PS256", p(&rsa)], &[]).await.line()).unwrap();
    assert_eq!(ps["alg"], "PS256");
    // A private RSA JWK is for the algorithm it names: another RSA algorithm, which its
    // public key would fit, is refused.
    let rs_jwk = dir.file("rs.json");
    dpop(
        &["keygen", "--alg", "RS256", "--jwk", "--out", p(&rs_jwk)],
        &[],
    )
    .await;
    let run = dpop(&["jwk", "--alg", "PS256", p(&rs_jwk)], &[]).await;
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.stderr.contains("it signs with RS256"), "{run:?}");
    // A public RSA JWK does not say which one.
    let public = dir.file("rsa.pub.json");
    std::fs::write(&public, dpop(&["jwk", p(&rsa)], &[]).await.line()).unwrap();
    assert_eq!(dpop(&["jwk", "--alg", "--", p(&public)], &[]).await.code, 2);

    // Several files make a set, only with --set; each has kid, alg and use.
    let ed = dir.file("ed.json");
    let ed_jkt = dpop(&["keygen", "--alg", "EdDSA", "--jwk", "--out", p(&ed)], &[])
        .await
        .line()
        .to_owned();
    assert_eq!(dpop(&["jwk", p(&ec), p(&ed)], &[]).await.code, 2);
    let set: Value = dpop(&["jwk", "--set", p(&ec), p(&ed)], &[]).await.json();
    let keys = set["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 2);
    assert_eq!(keys[0]["kid"], jkt.as_str());
    assert_eq!(keys[1]["kid"], ed_jkt.as_str());
    assert_eq!(keys[1]["alg"], "EdDSA");
    // EdDSA and Ed25519 name the same signature.
    let ed25519: Value =
        serde_json::from_str(dpop(&["jwk", "--alg", "Ed25519", p(&ed)], &[]).await.line()).unwrap();
    assert_eq!(ed25519["alg"], "Ed25519");
    assert!(
        keys.iter()
            .all(|k| k["use"] == "sig" && k.get("d").is_none())
    );
    // The same key twice is refused.
    assert_eq!(dpop(&["jwk", "--set", p(&ec), p(&ec)], &[]).await.code, 2);

    // The set is what the issuer reads: dpop-core parses it with both kids.
    let parsed = dpop_core::jwt::JwkSet::from_json(&set.to_string()).unwrap();
    assert_eq!(parsed.len(), 2);
    assert!(parsed.has_kid(&jkt) && parsed.has_kid(&ed_jkt));
}

/// The passphrase flags are global, but only the commands that read or write a key
/// file take them; elsewhere they are a usage error naming where they apply.
#[tokio::test]
async fn passphrase_flags_are_refused_where_no_key_is_read() {
    for args in [
        &["jwt", "decode", "x.y.z", "--passphrase-env", "P"][..],
        &["--passphrase-file", "/dev/null", "completions", "bash"][..],
        &["demo", "--offline", "--passphrase-env", "P"][..],
    ] {
        let run = dpop(args, &[]).await;
        assert_eq!(run.code, 2, "{args:?}: {run:?}");
        assert!(
            run.stderr.contains(
                "apply only to the commands that read or write a private key file: keygen, jwk, thumbprint, proof, token and curl"
            ) && run.stdout.is_empty(),
            "{args:?}: {run:?}"
        );
    }
}

#[tokio::test]
async fn a_dash_is_stdout_for_keygen_and_stdin_for_key_files() {
    let dir = TempDir::new("stdio");
    let out = Command::new(DPOP)
        .args(["keygen", "--out", "-"])
        .current_dir(&dir.0)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let run: Run = out.into();
    assert_eq!(run.code, 0, "{run:?}");
    assert!(
        run.stdout.starts_with("-----BEGIN PRIVATE KEY-----"),
        "{run:?}"
    );
    let jkt = run.stderr.trim().strip_prefix("jkt: ").unwrap().to_owned();
    // No file named "-".
    assert!(!dir.file("-").exists());
    assert_eq!(std::fs::read_dir(&dir.0).unwrap().count(), 0);

    // The key read back from stdin, by every kind of command that reads keys.
    let key = run.stdout.as_bytes();
    assert_eq!(dpop_with_stdin(&["thumbprint", "-"], &[], key).line(), jkt);
    let jwk: Value =
        serde_json::from_str(dpop_with_stdin(&["jwk", "--kid", "-"], &[], key).line()).unwrap();
    assert_eq!(jwk["kid"], jkt.as_str());
    let proof = dpop_with_stdin(
        &[
            "proof",
            "--key",
            "-",
            "--method",
            "GET",
            "--url",
            "https://api.example.com/x",
        ],
        &[],
        key,
    );
    let inspected = dpop(&["inspect", "--json", proof.line()], &[]).await.json();
    assert_eq!(inspected["jkt"], jkt.as_str());
    // Standard input once only.
    assert_eq!(
        dpop_with_stdin(&["jwk", "--set", "-", "-"], &[], key).code,
        2
    );
}

#[tokio::test]
async fn a_passphrase_protected_key_round_trip() {
    let dir = TempDir::new("encrypted");
    let key = dir.file("enc.pem");
    let env = [("KEY_PASSPHRASE", PASSPHRASE)];
    let run = dpop(
        &[
            "keygen",
            "--encrypt",
            "--passphrase-env",
            "KEY_PASSPHRASE",
            "--out",
            p(&key),
        ],
        &env,
    )
    .await;
    let jkt = run.line().to_owned();
    let text = std::fs::read_to_string(&key).unwrap();
    assert!(
        text.starts_with("-----BEGIN ENCRYPTED PRIVATE KEY-----"),
        "{text}"
    );
    assert!(!text.contains(PASSPHRASE));
    #[cfg(unix)]
    assert_mode(&key, 0o600);

    // Read with the passphrase from the environment, or a file (its first line).
    let args = ["thumbprint", "--passphrase-env", "KEY_PASSPHRASE", p(&key)];
    assert_eq!(dpop(&args, &env).await.line(), jkt);
    let file = dir.file("passphrase");
    std::fs::write(&file, format!("{PASSPHRASE}\n")).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        // Others can read it: refused like a key file.
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        let run = dpop(&["thumbprint", p(&key), "--passphrase-file", p(&file)], &[]).await;
        assert_eq!(run.code, 2, "{run:?}");
        assert!(run.stderr.contains("chmod 600"), "{run:?}");
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let args = ["thumbprint", p(&key), "--passphrase-file", p(&file)];
    assert_eq!(dpop(&args, &[]).await.line(), jkt);
    // ...or stdin, and everywhere a key is read: signing a proof.
    let args = [
        "proof",
        "--key",
        p(&key),
        "--method",
        "GET",
        "--url",
        "https://api.example.com/",
        "--passphrase-file",
        "-",
    ];
    let proof = dpop_with_stdin(&args, &[], format!("{PASSPHRASE}\n").as_bytes());
    let inspected = dpop(&["inspect", "--json", proof.line()], &[]).await.json();
    assert_eq!(inspected["jkt"], jkt.as_str());

    // A wrong passphrase: a usage error that says so and does not echo it.
    let wrong = [("KEY_PASSPHRASE", "not the passphrase")];
    let args = ["thumbprint", "--passphrase-env", "KEY_PASSPHRASE", p(&key)];
    let run = dpop(&args, &wrong).await;
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.stderr.contains("wrong passphrase"), "{run:?}");
    assert!(!run.stderr.contains("not the passphrase"), "{run:?}");
    assert!(run.stdout.is_empty());
    // Unset or empty variable, and no terminal to ask on: usage errors naming the way out.
    assert_eq!(dpop(&args, &[]).await.code, 2);
    assert_eq!(dpop(&args, &[("KEY_PASSPHRASE", "")]).await.code, 2);
    let run = dpop(&["thumbprint", p(&key)], &[]).await;
    assert_eq!(run.code, 2, "{run:?}");
    assert!(
        run.stderr.contains("--passphrase-file or --passphrase-env"),
        "{run:?}"
    );
    // The passphrase is never a flag value.
    assert_eq!(
        dpop(
            &[
                "keygen",
                "--encrypt",
                "--passphrase",
                PASSPHRASE,
                "--out",
                "-"
            ],
            &[]
        )
        .await
        .code,
        2
    );

    // Encrypted keys are PKCS#8 PEM only.
    let jwk_args = [
        "keygen",
        "--encrypt",
        "--jwk",
        "--passphrase-env",
        "KEY_PASSPHRASE",
        "--out",
        "-",
    ];
    assert_eq!(dpop(&jwk_args, &env).await.code, 2);
    // Loose permissions are refused before any passphrase is asked for.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let run = dpop(
            &["thumbprint", "--passphrase-env", "KEY_PASSPHRASE", p(&key)],
            &env,
        )
        .await;
        assert_eq!(run.code, 2, "{run:?}");
        assert!(run.stderr.contains("chmod 600"), "{run:?}");
    }
}

#[tokio::test]
async fn an_encrypted_key_is_compatible_with_openssl() {
    let Ok(openssl) = which("openssl") else {
        eprintln!("skipped: no openssl on PATH");
        return;
    };
    let dir = TempDir::new("encrypted-openssl");
    // OpenSSL's own encrypted PKCS#8 (PBES2, PBKDF2-SHA256, AES-256-CBC) reads here...
    let plain = dir.file("plain.pem");
    let jkt = dpop(&["keygen", "--out", p(&plain)], &[])
        .await
        .line()
        .to_owned();
    let theirs = dir.file("theirs.pem");
    let status = Command::new(&openssl)
        .args([
            "pkcs8",
            "-topk8",
            "-v2",
            "aes-256-cbc",
            "-v2prf",
            "hmacWithSHA256",
            "-in",
        ])
        .arg(&plain)
        .arg("-out")
        .arg(&theirs)
        .args(["-passout", &format!("pass:{PASSPHRASE}")])
        .status()
        .unwrap();
    assert!(status.success());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&theirs, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let env = [("PW", PASSPHRASE)];
    assert_eq!(
        dpop(&["thumbprint", "--passphrase-env", "PW", p(&theirs)], &env)
            .await
            .line(),
        jkt
    );
    // ...and ours reads in OpenSSL.
    let ours = dir.file("ours.pem");
    dpop(
        &[
            "keygen",
            "--encrypt",
            "--passphrase-env",
            "PW",
            "--out",
            p(&ours),
        ],
        &env,
    )
    .await
    .line();
    let out = Command::new(&openssl)
        .args(["pkey", "-noout", "-in"])
        .arg(&ours)
        .args(["-passin", &format!("pass:{PASSPHRASE}")])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn which(name: &str) -> Result<std::path::PathBuf, ()> {
    std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|d| d.join(name))
                .find(|p| p.is_file())
        })
        .ok_or(())
}

/// `dpop keygen/jwk/thumbprint/proof/inspect` with post-quantum keys (RFC 9964), and,
/// when `DPOP_TEST_MLDSA_PYTHON` names a Python with `cryptography` >= 47, one of our
/// proofs checked by that independent ML-DSA implementation.
#[tokio::test]
async fn ml_dsa_keys_sign_proofs_end_to_end() {
    let dir = TempDir::new("mldsa");
    let url = "https://server.example.com/token";
    for alg in ["ML-DSA-44", "ML-DSA-65", "ML-DSA-87"] {
        let pem = dir.file(&format!("{alg}.pem"));
        let jkt = dpop(&["keygen", "--alg", alg, "--out", p(&pem)], &[])
            .await
            .line()
            .to_owned();
        assert_mode(&pem, 0o600);
        let text = std::fs::read_to_string(&pem).unwrap();
        assert!(text.starts_with("-----BEGIN PRIVATE KEY-----"), "{alg}");
        let jwk: Value =
            serde_json::from_str(dpop(&["jwk", "--alg", alg, p(&pem)], &[]).await.line()).unwrap();
        assert_eq!(jwk["kty"], "AKP");
        assert_eq!(jwk["alg"], alg);
        assert!(jwk.get("priv").is_none());
        assert_eq!(dpop(&["thumbprint", p(&pem)], &[]).await.line(), jkt);
        // Another algorithm than the key's is a usage error.
        let other = if alg == "ML-DSA-44" {
            "ML-DSA-65"
        } else {
            "ML-DSA-44"
        };
        assert_eq!(dpop(&["jwk", "--alg", other, p(&pem)], &[]).await.code, 2);

        let proof = dpop(
            &["proof", "--key", p(&pem), "--method", "POST", "--url", url],
            &[],
        )
        .await
        .line()
        .to_owned();
        let run = dpop(
            &[
                "inspect", &proof, "--method", "POST", "--url", url, "--jkt", &jkt, "--json",
            ],
            &[],
        )
        .await;
        assert_eq!(run.code, 0, "{alg}: {run:?}");
        assert_eq!(run.json()["header"]["alg"], alg);

        if alg != "ML-DSA-44" {
            continue;
        }
        // The private JWK form carries the seed as `priv`.
        let jwk_file = dir.file("ml-dsa-44.json");
        dpop(
            &["keygen", "--alg", alg, "--jwk", "--out", p(&jwk_file)],
            &[],
        )
        .await;
        let private: Value =
            serde_json::from_str(&std::fs::read_to_string(&jwk_file).unwrap()).unwrap();
        assert_eq!(private["priv"].as_str().map(str::len), Some(43));
        let run = dpop(
            &[
                "proof",
                "--key",
                p(&jwk_file),
                "--method",
                "GET",
                "--url",
                url,
            ],
            &[],
        )
        .await;
        assert_eq!(run.code, 0, "{run:?}");

        let Ok(python) = std::env::var("DPOP_TEST_MLDSA_PYTHON") else {
            eprintln!(
                "skipping the independent ML-DSA check: set DPOP_TEST_MLDSA_PYTHON to a python with cryptography >= 47"
            );
            continue;
        };
        let script = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../scripts/mldsa-interop.py"
        );
        let out = Command::new(python)
            .args([script, "verify", &proof, &jkt])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        // And a tampered one is refused there too. The character changed is inside the
        // signature, not its last: the last one's low bits can be padding that a lenient
        // base64 decoder (Python's) drops, and changing only those changes nothing.
        let mut tampered = proof.clone();
        let at = tampered.len() - 10;
        let other = if tampered.as_bytes()[at] == b'A' {
            "B"
        } else {
            "A"
        };
        tampered.replace_range(at..=at, other);
        let out = Command::new(std::env::var("DPOP_TEST_MLDSA_PYTHON").unwrap())
            .args([script, "verify", &tampered, &jkt])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1));
    }
}
