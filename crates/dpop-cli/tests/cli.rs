//! End-to-end tests of the `dpop` binary: each runs the real executable, as a user would.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::Value;

use crate::common::{DPOP, Run, TempDir, p};

/// RFC 9449 §4.1, Figure 2: the example proof of a token request (iat 1562262616).
const RFC_PROOF: &str = "eyJ0eXAiOiJkcG9wK2p3dCIsImFsZyI6IkVTMjU2IiwiandrIjp7Imt0eSI6IkVDIiwieCI6Imw4dEZyaHgtMzR0VjNoUklDUkRZOXpDa0RscEJoRjQyVVFVZldWQVdCRnMiLCJ5IjoiOVZFNGpmX09rX282NHpiVFRsY3VOSmFqSG10NnY5VERWclUwQ2R2R1JEQSIsImNydiI6IlAtMjU2In19.eyJqdGkiOiItQndDM0VTYzZhY2MybFRjIiwiaHRtIjoiUE9TVCIsImh0dSI6Imh0dHBzOi8vc2VydmVyLmV4YW1wbGUuY29tL3Rva2VuIiwiaWF0IjoxNTYyMjYyNjE2fQ.2-GxA6T8lP4vfrg8v-FdWP0A0zdrj8igiMLvqRMUvwnQg4PtFLbdLXiOSsX0x7NVY-FNyJK70nfbV37xRZT3Lg";
/// The RFC 7638 thumbprint of the key in [`RFC_PROOF`].
const RFC_JKT: &str = "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I";

const ALGS: [&str; 11] = [
    "ES256", "ES384", "ES512", "EdDSA", "Ed25519", "RS256", "RS384", "RS512", "PS256", "PS384",
    "PS512",
];
const URL: &str = "https://api.example.com/v1/items";
const TOKEN: &str = "Kz~8mXK1EalYznwH-LC-1fBAo.4Ljp~zsPE_NeO.gxU";

fn dpop_with_stdin(args: &[&str], stdin: Option<&str>) -> Run {
    let mut cmd = Command::new(DPOP);
    cmd.args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    if let Some(input) = stdin {
        use std::io::Write as _;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
    }
    child.wait_with_output().unwrap().into()
}

fn dpop(args: &[&str]) -> Run {
    dpop_with_stdin(args, None)
}

fn keygen(dir: &TempDir, name: &str, alg: &str, extra: &[&str]) -> (PathBuf, String) {
    let path = dir.file(name);
    let mut args = vec!["keygen", "--alg", alg, "--out", p(&path)];
    args.extend_from_slice(extra);
    let jkt = dpop(&args).line().to_owned();
    (path, jkt)
}

/// `--alg` for `dpop proof`: PEM files do not record the algorithm, and read back as
/// RS256 (RSA) or Ed25519.
fn proof_alg_args(alg: &str) -> Vec<&str> {
    if alg.starts_with("RS") || alg.starts_with("PS") || alg == "Ed25519" {
        vec!["--alg", alg]
    } else {
        vec![]
    }
}

fn make_proof(key: &Path, extra: &[&str]) -> String {
    let mut args = vec!["proof", "--key", p(key), "--method", "GET", "--url", URL];
    args.extend_from_slice(extra);
    dpop(&args).line().to_owned()
}

fn inspect_json(proof: &str, extra: &[&str]) -> (i32, Value) {
    let mut args = vec!["inspect", proof, "--json"];
    args.extend_from_slice(extra);
    let run = dpop(&args);
    assert!(run.stderr.is_empty(), "{run:?}");
    (run.code, run.json_lenient())
}

fn status_of<'v>(report: &'v Value, check: &str) -> &'v str {
    report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["check"] == check)
        .unwrap_or_else(|| panic!("no check {check} in {report}"))["status"]
        .as_str()
        .unwrap()
}

#[cfg(unix)]
fn assert_private_mode(path: &Path) {
    crate::common::assert_mode(path, 0o600);
}

#[cfg(not(unix))]
fn assert_private_mode(_: &Path) {}

fn assert_jkt_shape(jkt: &str) {
    assert_eq!(jkt.len(), 43, "{jkt}");
    assert!(
        jkt.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
        "{jkt}"
    );
}

#[test]
fn keygen_every_algorithm_writes_a_private_file_and_prints_its_jkt() {
    let dir = TempDir::new("cli-test-keygen");
    for alg in ALGS {
        for (name, extra) in [
            (format!("{alg}.pem"), &[][..]),
            (format!("{alg}.jwk"), &["--jwk"][..]),
        ] {
            let (path, jkt) = keygen(&dir, &name, alg, extra);
            assert_jkt_shape(&jkt);
            assert_private_mode(&path);
            let text = std::fs::read_to_string(&path).unwrap();
            if extra.is_empty() {
                assert!(text.starts_with("-----BEGIN PRIVATE KEY-----"), "{alg}");
            } else {
                let jwk: Value = serde_json::from_str(&text).unwrap();
                assert!(jwk["d"].is_string(), "{alg}: a private JWK");
                assert_eq!(jwk["alg"], alg, "the JWK records the algorithm");
            }
            assert_eq!(dpop(&["thumbprint", p(&path)]).line(), jkt, "{alg}");
        }
    }
}

#[test]
fn keygen_refuses_to_overwrite_without_force() {
    let dir = TempDir::new("cli-test-overwrite");
    let (path, first) = keygen(&dir, "key.pem", "ES256", &[]);

    let again = dpop(&["keygen", "--out", p(&path)]);
    assert_eq!(again.code, 2, "{again:?}");
    assert!(again.stdout.is_empty());
    assert!(
        again.stderr.starts_with("error: ") && again.stderr.contains("--force"),
        "{again:?}"
    );
    assert_eq!(again.stderr.lines().count(), 1, "{again:?}");
    assert_eq!(
        dpop(&["thumbprint", p(&path)]).line(),
        first,
        "file untouched"
    );

    let forced = dpop(&["keygen", "--alg", "Ed25519", "--out", p(&path), "--force"]);
    let second = forced.line();
    assert_ne!(second, first);
    assert_eq!(dpop(&["thumbprint", p(&path)]).line(), second);
    assert_private_mode(&path);
    let left: Vec<_> = std::fs::read_dir(&dir.0).unwrap().collect();
    assert_eq!(left.len(), 1, "no temporary file left behind: {left:?}");
}

#[test]
fn jwk_prints_only_the_public_key() {
    let dir = TempDir::new("cli-test-jwk");
    for (alg, extra) in [
        ("ES256", &[][..]),
        ("ES512", &["--jwk"][..]),
        ("Ed25519", &[][..]),
        ("Ed25519", &["--jwk"][..]),
        ("RS256", &[][..]),
        ("PS256", &["--jwk"][..]),
    ] {
        let name = format!("{alg}{}", extra.len());
        let (path, jkt) = keygen(&dir, &name, alg, extra);
        let run = dpop(&["jwk", p(&path)]);
        let jwk: Value = serde_json::from_str(run.line()).unwrap();
        let members = jwk.as_object().unwrap();
        for private in ["d", "p", "q", "dp", "dq", "qi", "oth", "k"] {
            assert!(!members.contains_key(private), "{alg}: {jwk}");
        }
        assert!(members.contains_key("kty"), "{jwk}");

        // The public JWK is itself a key file: same thumbprint, same JWK.
        let public = dir.file(&format!("{name}.pub.json"));
        std::fs::write(&public, run.stdout.as_bytes()).unwrap();
        assert_eq!(dpop(&["thumbprint", p(&public)]).line(), jkt);
        assert_eq!(dpop(&["jwk", p(&public)]).stdout, run.stdout);
    }
}

#[test]
fn proof_then_inspect_is_valid_for_every_algorithm() {
    let dir = TempDir::new("cli-test-roundtrip");
    for alg in ALGS {
        let (key, jkt) = keygen(&dir, alg, alg, &[]);
        let mut extra = proof_alg_args(alg);
        extra.extend(["--access-token", TOKEN]);
        let proof = make_proof(&key, &extra);
        let (code, report) = inspect_json(
            &proof,
            &[
                "--method",
                "GET",
                "--url",
                "https://API.example.com:443/v1/items?page=2",
                "--access-token",
                TOKEN,
                "--jkt",
                &jkt,
            ],
        );
        assert_eq!(code, 0, "{alg}: {report}");
        assert_eq!(report["valid"], true);
        assert_eq!(report["header"]["alg"], alg);
        assert_eq!(report["jkt"], jkt.as_str());
        assert!(report.get("error").is_none(), "{report}");
        for check in report["checks"].as_array().unwrap() {
            let expected = if check["check"] == "nonce" {
                "skipped"
            } else {
                "passed"
            };
            assert_eq!(check["status"], expected, "{alg}: {check}");
        }
    }
}

#[test]
fn private_jwk_keys_sign_with_their_recorded_algorithm() {
    let dir = TempDir::new("cli-test-jwkalg");
    let (key, jkt) = keygen(&dir, "ps.jwk", "PS384", &["--jwk"]);
    let proof = make_proof(&key, &[]);
    let (code, report) = inspect_json(&proof, &["--jkt", &jkt]);
    assert_eq!(code, 0, "{report}");
    assert_eq!(report["header"]["alg"], "PS384");

    let wrong = dpop(&[
        "proof",
        "--key",
        p(&key),
        "--method",
        "GET",
        "--url",
        URL,
        "--alg",
        "RS256",
    ]);
    assert_eq!(wrong.code, 2, "{wrong:?}");
    assert!(wrong.stderr.contains("PS384"), "{wrong:?}");
}

#[test]
fn inspect_json_reports_every_check() {
    let dir = TempDir::new("cli-test-json");
    let (key, jkt) = keygen(&dir, "k.pem", "ES256", &[]);
    let proof = make_proof(&key, &["--iat", "1700000000", "--nonce", "n-1"]);
    let (code, report) = inspect_json(&proof, &["--now", "1700000005", "--nonce", "n-1"]);
    assert_eq!(code, 0, "{report}");
    let object = report.as_object().unwrap();
    let mut keys: Vec<_> = object.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["checks", "claims", "header", "jkt", "valid"]);
    assert_eq!(report["valid"], true);
    assert_eq!(report["jkt"], jkt.as_str());
    assert_eq!(report["header"]["typ"], "dpop+jwt");
    assert_eq!(report["header"]["jwk"]["kty"], "EC");
    assert_eq!(report["claims"]["iat"], 1_700_000_000);
    assert_eq!(report["claims"]["htm"], "GET");
    assert_eq!(report["claims"]["htu"], URL);
    assert_eq!(report["claims"]["nonce"], "n-1");
    assert!(report["claims"]["jti"].is_string());
    assert!(report["claims"].get("ath").is_none());

    let checks = report["checks"].as_array().unwrap();
    let names: Vec<_> = checks
        .iter()
        .map(|c| c["check"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "header",
            "structure",
            "typ",
            "alg",
            "crit",
            "jwk",
            "claims",
            "htm",
            "htu",
            "iat",
            "validity",
            "nonce",
            "ath",
            "key_binding",
            "signature"
        ]
    );
    for c in checks {
        assert!(!c["description"].as_str().unwrap().is_empty(), "{c}");
    }
    for skipped in ["htm", "htu", "ath", "key_binding"] {
        assert_eq!(status_of(&report, skipped), "skipped", "{skipped}");
    }
    for passed in ["typ", "iat", "nonce", "signature"] {
        assert_eq!(status_of(&report, passed), "passed", "{passed}");
    }
}

#[test]
fn inspect_reports_each_failure_with_its_reason_code() {
    let dir = TempDir::new("cli-test-failures");
    let (key, jkt) = keygen(&dir, "k.pem", "ES256", &[]);
    let (_, other_jkt) = keygen(&dir, "other.pem", "ES256", &[]);
    let proof = make_proof(&key, &["--access-token", TOKEN, "--iat", "1700000000"]);
    let with_nonce = make_proof(&key, &["--nonce", "right", "--iat", "1700000000"]);
    let now = ["--now", "1700000001"];

    let cases: [(&str, Vec<&str>, &str, &str); 8] = [
        (&proof, vec!["--method", "POST"], "htm_mismatch", "htm"),
        (
            &proof,
            vec!["--url", "https://api.example.com/v1/other"],
            "htu_mismatch",
            "htu",
        ),
        (
            &proof,
            vec!["--access-token", "another-token"],
            "ath_mismatch",
            "ath",
        ),
        (
            &proof,
            vec!["--access-token", TOKEN, "--jkt", &other_jkt],
            "key_mismatch",
            "key_binding",
        ),
        (
            &proof,
            vec!["--jkt", &other_jkt],
            "key_mismatch",
            "key_binding",
        ),
        (
            &proof,
            vec!["--nonce", "required"],
            "nonce_required",
            "nonce",
        ),
        (
            &with_nonce,
            vec!["--nonce", "wrong"],
            "nonce_invalid",
            "nonce",
        ),
        (&proof, vec![], "iat_too_old", "iat"),
    ];
    for (proof, mut extra, code, check) in cases {
        if code == "iat_too_old" {
            extra.extend(["--now", "1700086400"]);
        } else {
            extra.extend(now);
        }
        let (exit, report) = inspect_json(proof, &extra);
        assert_eq!(exit, 1, "{code}: {report}");
        assert_eq!(report["valid"], false, "{code}");
        assert_eq!(report["error"]["code"], code, "{report}");
        assert!(!report["error"]["message"].as_str().unwrap().is_empty());
        assert!(report["header"].is_object(), "decodable: {report}");
        assert_eq!(report["jkt"], jkt.as_str());
        assert_eq!(status_of(&report, check), "failed", "{code}: {report}");
        assert_eq!(status_of(&report, "signature"), "not_reached", "{code}");
        let failed = report["checks"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["status"] == "failed")
            .count();
        assert_eq!(failed, 1, "{report}");
    }

    // The same proof is fine against the right values, and inspecting does not use it up.
    for _ in 0..2 {
        let (exit, report) = inspect_json(
            &proof,
            &[
                "--method",
                "GET",
                "--access-token",
                TOKEN,
                "--jkt",
                &jkt,
                "--now",
                "1700000001",
            ],
        );
        assert_eq!(exit, 0, "{report}");
    }
}

#[test]
fn inspect_tampered_and_garbage_proofs() {
    let dir = TempDir::new("cli-test-garbage");
    let (key, _) = keygen(&dir, "k.pem", "ES256", &[]);
    let proof = make_proof(&key, &[]);
    let (head, sig) = proof.rsplit_once('.').unwrap();
    let mid = sig.len() / 2;
    let flipped = if &sig[mid..=mid] == "A" { "B" } else { "A" };
    let tampered = format!("{head}.{}{flipped}{}", &sig[..mid], &sig[mid + 1..]);
    let (code, report) = inspect_json(&tampered, &[]);
    assert_eq!(code, 1);
    assert_eq!(report["error"]["code"], "signature_invalid");
    assert_eq!(status_of(&report, "signature"), "failed");

    for garbage in ["garbage", "a.b.c", "eyJ9.eyJ9.AAAA"] {
        let (code, report) = inspect_json(garbage, &[]);
        assert_eq!(code, 1, "{garbage}: {report}");
        assert_eq!(report["valid"], false);
        assert_eq!(report["error"]["code"], "malformed_proof", "{garbage}");
        assert!(report["header"].is_null(), "{report}");
        assert!(report["claims"].is_null(), "{report}");
        assert!(report["jkt"].is_null(), "{report}");
    }
}

#[test]
fn inspect_accepts_the_rfc_9449_example() {
    let args = [
        "--method",
        "POST",
        "--url",
        "https://server.example.com/token",
        "--now",
        "1562262620",
    ];
    let (code, report) = inspect_json(RFC_PROOF, &args);
    assert_eq!(code, 0, "{report}");
    assert_eq!(report["jkt"], RFC_JKT);
    assert_eq!(report["claims"]["jti"], "-BwC3ESc6acc2lTc");

    let mut human_args = vec!["inspect", RFC_PROOF];
    human_args.extend(args);
    let run = dpop(&human_args);
    assert_eq!(run.code, 0, "{run:?}");
    for expected in [
        "\"htu\": \"https://server.example.com/token\"",
        "alg: ES256",
        &format!("jkt: {RFC_JKT}"),
        "iat: 2019-07-04T17:50:16Z (4 s ago",
        "✓ signature verifies with jwk",
        "- ath is the hash of the access token (skipped: no --access-token given)",
        "- proof key is the token's cnf.jkt (skipped: no --jkt given)",
    ] {
        assert!(
            run.stdout.contains(expected),
            "{expected:?} in\n{}",
            run.stdout
        );
    }
    assert_eq!(run.stdout.lines().last(), Some("valid"));

    // A minute and more later, the same proof is too old.
    let (code, report) = inspect_json(RFC_PROOF, &["--now", "1562262700"]);
    assert_eq!(code, 1);
    assert_eq!(report["error"]["code"], "iat_too_old");
}

#[test]
fn inspect_human_report_marks_each_check() {
    let run = dpop(&[
        "inspect",
        RFC_PROOF,
        "--method",
        "GET",
        "--now",
        "1562262620",
    ]);
    assert_eq!(run.code, 1, "{run:?}");
    let out = &run.stdout;
    assert!(out.contains("✓ typ is dpop+jwt"), "{out}");
    assert!(
        out.contains("✗ htm matches the request method: ") && out.contains("[htm_mismatch]"),
        "{out}"
    );
    assert!(
        out.contains("· htu matches the request URI (not reached)"),
        "{out}"
    );
    assert!(
        out.contains("· signature verifies with jwk (not reached)"),
        "{out}"
    );
    assert_eq!(out.lines().last(), Some("invalid: htm_mismatch"));

    let skipped = dpop(&["inspect", RFC_PROOF, "--now", "1562262620"]);
    assert_eq!(skipped.code, 0, "{skipped:?}");
    assert!(
        skipped
            .stdout
            .contains("- htm matches the request method (skipped: no --method given)")
    );
    assert!(
        skipped
            .stdout
            .contains("- htu matches the request URI (skipped: no --url given)")
    );
    assert!(
        skipped
            .stdout
            .contains("- nonce is a current server nonce (skipped: no --nonce given)")
    );

    let garbage = dpop(&["inspect", "not-a-proof"]);
    assert_eq!(garbage.code, 1, "{garbage:?}");
    assert_eq!(
        garbage.stdout.lines().last(),
        Some("invalid: malformed_proof")
    );
}

#[test]
fn inspect_reads_the_proof_from_stdin() {
    let run = dpop_with_stdin(
        &["inspect", "-", "--json", "--now", "1562262620"],
        Some(&format!("  {RFC_PROOF}\n")),
    );
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(run.json_lenient()["jkt"], RFC_JKT);

    let dir = TempDir::new("cli-test-stdin");
    let (key, jkt) = keygen(&dir, "k.pem", "Ed25519", &[]);
    let proof = make_proof(&key, &[]);
    let run = dpop_with_stdin(
        &[
            "inspect", "-", "--method", "GET", "--url", URL, "--jkt", &jkt,
        ],
        Some(&format!("{proof}\n")),
    );
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(run.stdout.lines().last(), Some("valid"));

    let empty = dpop_with_stdin(&["inspect", "-", "--json"], Some(""));
    assert_eq!(empty.code, 1, "{empty:?}");
    assert_eq!(empty.json_lenient()["valid"], false);
}

#[test]
fn usage_errors_exit_2_with_one_error_line() {
    let dir = TempDir::new("cli-test-usage");
    let (key, _) = keygen(&dir, "k.pem", "ES256", &[]);
    let missing = dir.file("missing.pem");
    let not_a_key = dir.file("not-a-key.txt");
    std::fs::write(&not_a_key, "hello").unwrap();
    let public = dir.file("public.json");
    std::fs::write(&public, dpop(&["jwk", p(&key)]).stdout).unwrap();

    // clap's own errors.
    for args in [
        &["keygen"][..],
        &["keygen", "--alg", "HS256", "--out", "x"],
        &["keygen", "--bits", "1024", "--out", "x"],
        &["proof", "--key", p(&key), "--method", "GET"],
        &["inspect"],
        &["no-such-command"],
        &["inspect", "x", "--now", "yesterday"],
    ] {
        let run = dpop(args);
        assert_eq!(run.code, 2, "{args:?}: {run:?}");
        assert!(run.stderr.starts_with("error: "), "{run:?}");
        assert!(run.stdout.is_empty(), "{run:?}");
    }

    // Ours: bad files and flag values found after parsing.
    for (args, says) in [
        (
            vec![
                "proof",
                "--key",
                p(&missing),
                "--method",
                "GET",
                "--url",
                URL,
            ],
            "cannot read",
        ),
        (
            vec![
                "proof",
                "--key",
                p(&not_a_key),
                "--method",
                "GET",
                "--url",
                URL,
            ],
            "PKCS#8",
        ),
        (
            vec![
                "proof",
                "--key",
                p(&public),
                "--method",
                "GET",
                "--url",
                URL,
            ],
            "public JWK",
        ),
        (
            vec![
                "proof",
                "--key",
                p(&key),
                "--method",
                "GET",
                "--url",
                "/relative",
            ],
            "--url",
        ),
        (
            vec!["proof", "--key", p(&key), "--method", "GE T", "--url", URL],
            "--method",
        ),
        (
            vec![
                "proof",
                "--key",
                p(&key),
                "--method",
                "GET",
                "--url",
                URL,
                "--nonce",
                "a\"b",
            ],
            "--nonce",
        ),
        (
            vec![
                "proof",
                "--key",
                p(&key),
                "--method",
                "GET",
                "--url",
                URL,
                "--alg",
                "ES384",
            ],
            "--alg ES384",
        ),
        (vec!["jwk", p(&missing)], "cannot read"),
        (vec!["thumbprint", p(&not_a_key)], "PKCS#8"),
        (
            vec!["keygen", "--bits", "3072", "--out", p(&dir.file("ec.pem"))],
            "--bits",
        ),
        (
            vec!["keygen", "--out", p(&dir.file("no/such/dir/k.pem"))],
            "cannot create",
        ),
        (vec!["inspect", RFC_PROOF, "--jkt", "abc"], "--jkt"),
        (vec!["inspect", RFC_PROOF, "--url", "ftp://x/"], "--url"),
        (vec!["inspect", RFC_PROOF, "--nonce", ""], "--nonce"),
    ] {
        let run = dpop(&args);
        assert_eq!(run.code, 2, "{args:?}: {run:?}");
        assert!(run.stdout.is_empty(), "{run:?}");
        assert!(
            run.stderr.starts_with("error: ") && run.stderr.contains(says),
            "{args:?}: {run:?}"
        );
        assert_eq!(run.stderr.lines().count(), 1, "one line: {run:?}");
    }
    assert!(!dir.file("ec.pem").exists());
}

#[test]
fn help_and_version() {
    let version = dpop(&["--version"]);
    assert_eq!(version.code, 0);
    assert_eq!(
        version.stdout.trim(),
        format!("dpop {}", env!("CARGO_PKG_VERSION"))
    );
    let help = dpop(&["--help"]);
    assert_eq!(help.code, 0);
    for command in [
        "keygen",
        "jwk",
        "thumbprint",
        "proof",
        "inspect",
        "demo",
        "Exit status",
    ] {
        assert!(help.stdout.contains(command), "{command}");
    }
    let help = dpop(&["inspect", "--help"]);
    for flag in [
        "--method",
        "--url",
        "--access-token",
        "--jkt",
        "--nonce",
        "--now",
        "--json",
    ] {
        assert!(help.stdout.contains(flag), "{flag}");
    }
}

#[test]
fn authz_help_and_configuration_errors() {
    let help = dpop(&["authz", "--help"]);
    assert_eq!(help.code, 0);
    for flag in [
        "--listen",
        "--grpc-listen",
        "--path-prefix",
        "--issuer",
        "--audience",
        "--public-url",
        "--allowed-host",
        "--trusted-proxy",
        "--require-nonce",
        "--replay-store",
        "--admin-listen",
        "--config",
        "--log-json",
        "SIGTERM",
    ] {
        assert!(help.stdout.contains(flag), "{flag}");
    }
    // The gateway keeps its flags, the shared ones included.
    let help = dpop(&["gateway", "--help"]);
    for flag in [
        "--upstream",
        "--tls-cert",
        "--h2c",
        "--trusted-proxy",
        "--issuer",
    ] {
        assert!(help.stdout.contains(flag), "{flag}");
    }
    // No listener: a configuration error, exit 2, before anything is bound.
    let run = dpop(&[
        "authz",
        "--issuer",
        "https://as.example.com",
        "--audience",
        "api",
        "--public-url",
        "https://api.example.com",
    ]);
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.stderr.contains("--grpc-listen"), "{run:?}");
    // A gateway-only flag is not accepted by the authorizer.
    let run = dpop(&["authz", "--upstream", "http://127.0.0.1:1"]);
    assert_eq!(run.code, 2, "{run:?}");
}

/// The gateway and the authorizer bind their admin listener before the serving ones, so
/// a probe or script that sees the serving port accept connections can query `/readyz`
/// at once. With both addresses taken, the one a start-up fails on names the order: the
/// admin address.
#[test]
fn the_admin_listener_is_bound_before_the_serving_ones() {
    let taken = || std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let (serving, admin, grpc) = (taken(), taken(), taken());
    let addr = |l: &std::net::TcpListener| l.local_addr().unwrap().to_string();
    let (serving, admin, grpc) = (addr(&serving), addr(&admin), addr(&grpc));
    let common = [
        "--admin-listen",
        &admin,
        "--issuer",
        "http://127.0.0.1:9",
        "--audience",
        "api",
        "--public-url",
        "http://api.example.com",
    ];
    let gateway = [
        &[
            "gateway",
            "--listen",
            &serving,
            "--upstream",
            "http://127.0.0.1:9",
        ][..],
        &common,
    ]
    .concat();
    let authz = [
        &["authz", "--listen", &serving, "--grpc-listen", &grpc][..],
        &common,
    ]
    .concat();
    for args in [gateway, authz] {
        let run = dpop(&args);
        assert_ne!(run.code, 0, "{run:?}");
        assert!(
            run.stderr.contains(&format!("cannot listen on {admin}")),
            "{args:?}: {run:?}"
        );
    }
}

#[test]
fn demo_runs_the_whole_system_and_every_scenario_behaves() {
    let run = dpop(&["demo"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(
        run.stdout
            .contains("All 9 scenarios behaved as they should."),
        "{}",
        run.stdout
    );
    assert_eq!(run.stdout.matches('✓').count(), 9, "{}", run.stdout);
    assert!(!run.stdout.contains('✗'), "{}", run.stdout);
    for seen in [
        "401 use_dpop_nonce, then 200",
        "401 invalid_dpop_proof",
        "401 invalid_token",
        "as shop-deployer",
        "refused: invalid_grant",
        "new token refused: invalid_client",
    ] {
        assert!(run.stdout.contains(seen), "{seen} in\n{}", run.stdout);
    }
}

/// `dpop demo --keep-running` prints commands to paste into another shell. Run from a
/// directory whose name has a space and that is not on the shell's PATH, the binary
/// names itself by its quoted absolute path, and the printed commands work as printed.
#[test]
fn the_demos_printed_commands_work_in_a_shell_without_dpop_on_its_path() {
    let dir = TempDir::new("demo-commands");
    let bin = dir.file("my tools");
    std::fs::create_dir(&bin).unwrap();
    let exe = bin.join("dpop");
    std::fs::copy(DPOP, &exe).unwrap();
    let path = "/usr/bin:/bin";
    for d in std::env::split_paths(path) {
        assert!(
            !d.join("dpop").exists(),
            "{} must not hold a dpop",
            d.display()
        );
    }
    let mut demo = Command::new(&exe)
        .args(["demo", "--keep-running"])
        .env("PATH", path)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = demo.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead as _;
        for line in std::io::BufReader::new(stdout).lines() {
            if tx.send(line.unwrap()).is_err() {
                break;
            }
        }
    });
    // The lines between "Try, in another shell:" and the plain curl call.
    let mut commands = Vec::new();
    let mut started = false;
    loop {
        let line = rx
            .recv_timeout(std::time::Duration::from_secs(180))
            .expect("the demo prints commands to try");
        if line.contains("Try, in another shell:") {
            started = true;
        } else if line.trim_start().starts_with("curl -i") {
            break;
        } else if started && !line.trim().is_empty() {
            commands.push(line);
        }
    }
    let script = commands.join("\n");
    let quoted = format!("'{}' ", exe.display());
    assert_eq!(script.matches(&quoted).count(), 2, "{script}");
    let shell = Command::new("/bin/sh")
        .args(["-e", "-c", &script])
        .env_clear()
        .env("PATH", path)
        .env("HOME", p(&dir.0))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let _ = Command::new("kill")
        .args(["-TERM", &demo.id().to_string()])
        .status();
    let status = demo.wait().unwrap();
    let run = Run::from(shell);
    assert_eq!(run.code, 0, "{script}\n{run:?}");
    // dpop curl reached the sample API through the gateway; dpop token printed a token.
    assert!(
        run.stdout.contains(r#""items":["apple","pear"]"#),
        "{run:?}"
    );
    assert!(run.stdout.contains("access_token"), "{run:?}");
    assert!(
        status.success(),
        "the demo ends cleanly on SIGTERM: {status:?}"
    );
}

#[test]
fn demo_walks_through_every_refusal() {
    let run = dpop(&["demo", "--offline"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stderr.is_empty(), "{run:?}");
    for code in [
        "replay",
        "key_mismatch",
        "htu_mismatch",
        "htm_mismatch",
        "ath_mismatch",
        "iat_too_old",
        "signature_invalid",
        "nonce_required",
    ] {
        assert!(
            run.stdout.contains(&format!("✓ refused: {code}")),
            "{code} in\n{}",
            run.stdout
        );
    }
    assert!(!run.stdout.contains('✗'), "{}", run.stdout);
    assert!(run.stdout.contains("All 13 steps behaved as expected."));
    assert_eq!(run.stdout.matches("✓ accepted").count(), 2);
}

#[cfg(unix)]
fn chmod(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Every command that reads a private key refuses one that other users can read, with
/// one message, and uses it once only its owner can. A public JWK is no secret: any mode.
#[cfg(unix)]
#[test]
fn every_command_refuses_a_private_key_others_can_read() {
    let dir = TempDir::new("cli-test-key-mode");
    let (good, _) = keygen(&dir, "good.pem", "ES256", &[]);
    let closed = "http://127.0.0.1:9";
    for (name, extra) in [("k.pem", &[][..]), ("k.jwk", &["--jwk"][..])] {
        let (key, jkt) = keygen(&dir, name, "ES256", extra);
        let k = p(&key);
        let commands: [Vec<&str>; 6] = [
            vec!["proof", "--key", k, "--method", "GET", "--url", URL],
            vec!["jwk", k],
            vec!["thumbprint", k],
            vec!["curl", "http://127.0.0.1:9/", "--key", k],
            vec!["token", "--key", k, "--issuer", closed, "--client-id", "c"],
            vec![
                "token",
                "--key",
                p(&good),
                "--issuer",
                closed,
                "--client-id",
                "c",
                "--client-key",
                k,
            ],
        ];

        chmod(&key, 0o644);
        let expected = format!(
            "error: the key file {k} can be read by other users (mode 0644); a private key \
             must be readable by its owner only: run `chmod 600 {k}`\n"
        );
        for args in &commands {
            let run = dpop(args);
            assert_eq!(run.code, 2, "{args:?}: {run:?}");
            assert!(run.stdout.is_empty(), "{args:?}: {run:?}");
            assert_eq!(run.stderr, expected, "{args:?}");
        }
        chmod(&key, 0o640);
        assert!(dpop(&["thumbprint", k]).stderr.contains("(mode 0640)"));

        chmod(&key, 0o600);
        let proof = make_proof(&key, &[]);
        assert_eq!(inspect_json(&proof, &["--jkt", &jkt]).0, 0);
        assert_eq!(dpop(&["thumbprint", k]).line(), jkt);
        let public = dpop(&["jwk", k]).line().to_owned();
        // curl and token get past the key and fail at the closed port (with curl's exit
        // code for a refused connection, the issuer's included).
        for args in commands.iter().skip(3) {
            let run = dpop(args);
            assert_eq!(run.code, 7, "{args:?}: {run:?}");
            assert!(!run.stderr.contains("chmod"), "{args:?}: {run:?}");
        }

        let public_file = dir.file(&format!("{name}.pub.json"));
        std::fs::write(&public_file, &public).unwrap();
        chmod(&public_file, 0o644);
        assert_eq!(dpop(&["thumbprint", p(&public_file)]).line(), jkt);
        assert_eq!(dpop(&["jwk", p(&public_file)]).line(), public);
    }
}
