//! End-to-end tests of `dpop jwt decode` and `dpop jwt verify`: the verdicts and reason
//! codes for tokens minted by the mock issuer (keys discovered from its metadata), and
//! `dpop inspect` pointing to them for an access token.

use dpop_core::{Algorithm, PrivateKey};
use dpop_test::{MockIssuer, TokenSpec};
use serde_json::{Value, json};

use crate::common::{AUD, Run, run_dpop};
use crate::tokens::dpop_with_stdin;

async fn dpop(args: &[&str]) -> Run {
    run_dpop(args, &[]).await.into()
}

fn jkt_of_new_key() -> String {
    PrivateKey::generate(Algorithm::Es256)
        .unwrap()
        .thumbprint()
        .as_str()
        .to_owned()
}

/// `dpop jwt verify TOKEN --issuer ISSUER --audience AUD --jkt JKT --json`.
async fn verify(issuer: &MockIssuer, token: &str, jkt: &str) -> (i32, Value) {
    let run = dpop(&[
        "jwt",
        "verify",
        token,
        "--issuer",
        issuer.url(),
        "--audience",
        AUD,
        "--jkt",
        jkt,
        "--json",
    ])
    .await;
    (run.code, run.json_lenient())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_gives_the_gateways_verdict_and_reason() {
    let issuer = MockIssuer::start().await.unwrap();
    let jkt = jkt_of_new_key();

    let valid = issuer.mint(&TokenSpec::bound(AUD, &jkt));
    let (code, v) = verify(&issuer, &valid, &jkt).await;
    assert_eq!((code, &v["valid"]), (0, &json!(true)), "{v}");
    assert_eq!(v["claims"]["cnf"]["jkt"], jkt.as_str());

    let cases = [
        (
            "expired",
            issuer.mint(&TokenSpec {
                lifetime_secs: -120,
                ..TokenSpec::bound(AUD, &jkt)
            }),
            "token_expired",
        ),
        (
            "wrong aud",
            issuer.mint(&TokenSpec::bound("https://other.example", &jkt)),
            "token_audience_mismatch",
        ),
        (
            "wrong issuer",
            issuer.mint(&TokenSpec {
                extra: [("iss".to_owned(), json!("https://evil.example"))]
                    .into_iter()
                    .collect(),
                ..TokenSpec::bound(AUD, &jkt)
            }),
            "token_issuer_mismatch",
        ),
        (
            "jkt mismatch",
            issuer.mint(&TokenSpec::bound(AUD, &jkt_of_new_key())),
            "key_mismatch",
        ),
        (
            "not bound",
            issuer.mint(&TokenSpec::new(AUD)),
            "token_not_bound",
        ),
        (
            "signed by another key",
            {
                let t = issuer.mint(&TokenSpec::bound(AUD, &jkt));
                let other = MockIssuer::start().await.unwrap();
                let forged = other.mint(&TokenSpec::bound(AUD, &jkt));
                // The other issuer's signature on this issuer's header and claims.
                let (head, _) = t.rsplit_once('.').unwrap();
                format!("{head}.{}", forged.rsplit('.').next().unwrap())
            },
            "token_signature_invalid",
        ),
    ];
    for (what, token, reason) in cases {
        let (code, v) = verify(&issuer, &token, &jkt).await;
        assert_eq!(code, 1, "{what}: {v}");
        assert_eq!(v["valid"], false, "{what}: {v}");
        assert_eq!(v["error"]["code"], reason, "{what}: {v}");
    }

    // The human report: header, claims, times in UTC, the verdict with its reason.
    let expired = issuer.mint(&TokenSpec {
        now: Some(dpop_test::now().as_secs() - 600),
        lifetime_secs: 300,
        ..TokenSpec::bound(AUD, &jkt)
    });
    let run = dpop(&[
        "jwt",
        "verify",
        &expired,
        "--issuer",
        issuer.url(),
        "--audience",
        AUD,
    ])
    .await;
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stdout.contains("\"typ\": \"at+jwt\""), "{run:?}");
    assert!(
        run.stdout.contains("exp: 20") && run.stdout.contains("ago"),
        "{run:?}"
    );
    assert!(
        run.stdout.trim_end().ends_with(')') && run.stdout.contains("invalid: token_expired"),
        "{run:?}"
    );
    // As of a time before expiry (--now), the same token is valid.
    let exp = crate::common::claims(&expired)["exp"].as_u64().unwrap();
    let before = (exp - 60).to_string();
    let run = dpop(&[
        "jwt",
        "verify",
        &expired,
        "--issuer",
        issuer.url(),
        "--audience",
        AUD,
        "--now",
        &before,
    ])
    .await;
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stdout.trim_end().ends_with("valid"), "{run:?}");

    // Without --audience: refused (exit 2, naming the check), nothing verified.
    let other_aud = issuer.mint(&TokenSpec::bound("https://other.example", &jkt));
    let run = dpop(&["jwt", "verify", &other_aud, "--issuer", issuer.url()]).await;
    assert_eq!(run.code, 2, "{run:?}");
    assert!(
        run.stderr.contains("--audience is required") && run.stdout.is_empty(),
        "{run:?}"
    );
    // Only with --dangerous-no-audience is aud not compared, and the verdict says so;
    // from stdin.
    let run = dpop_with_stdin(
        &[
            "jwt",
            "verify",
            "-",
            "--issuer",
            issuer.url(),
            "--dangerous-no-audience",
        ],
        &[],
        other_aud.as_bytes(),
    );
    assert_eq!(run.code, 0, "{run:?}");
    assert!(
        run.stdout.contains(
            "DANGEROUS: aud not compared with an audience (--dangerous-no-audience)\nvalid"
        ),
        "{run:?}"
    );
    let run = dpop(&[
        "jwt",
        "verify",
        &other_aud,
        "--issuer",
        issuer.url(),
        "--dangerous-no-audience",
        "--json",
    ])
    .await;
    let v = run.json_lenient();
    assert_eq!(
        (run.code, &v["valid"], &v["dangerous_no_audience"]),
        (0, &json!(true), &json!(true)),
        "{v}"
    );
    let run = dpop(&[
        "jwt",
        "verify",
        &other_aud,
        "--issuer",
        issuer.url(),
        "--audience",
        AUD,
        "--dangerous-no-audience",
    ])
    .await;
    assert_eq!(run.code, 2, "{run:?}");

    // A token without cnf.jkt is not DPoP-bound: refused also without --jkt, with the
    // gateway's reason code.
    let bearer = issuer.mint(&TokenSpec::new(AUD));
    let run = dpop(&[
        "jwt",
        "verify",
        &bearer,
        "--issuer",
        issuer.url(),
        "--audience",
        AUD,
    ])
    .await;
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stdout.contains("invalid: token_not_bound"), "{run:?}");
    let run = dpop(&[
        "jwt",
        "verify",
        &bearer,
        "--issuer",
        issuer.url(),
        "--dangerous-no-audience",
        "--json",
    ])
    .await;
    let v = run.json_lenient();
    assert_eq!(
        (run.code, &v["valid"], &v["error"]["code"]),
        (1, &json!(false), &json!("token_not_bound")),
        "{v}"
    );

    // Usage and configuration errors exit 2: an issuer without keys, a bad --jkt, garbage.
    let run = dpop(&[
        "jwt",
        "verify",
        &valid,
        "--issuer",
        "http://127.0.0.1:9",
        "--audience",
        AUD,
    ])
    .await;
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.stderr.contains("cannot get the keys"), "{run:?}");
    let run = dpop(&[
        "jwt",
        "verify",
        &valid,
        "--issuer",
        issuer.url(),
        "--audience",
        AUD,
        "--jkt",
        "short",
    ])
    .await;
    assert_eq!(run.code, 2, "{run:?}");
    let run = dpop(&[
        "jwt",
        "verify",
        "not-a-jwt",
        "--issuer",
        issuer.url(),
        "--audience",
        AUD,
    ])
    .await;
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stdout.contains("invalid: token_invalid"), "{run:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decode_shows_header_claims_and_times() {
    let issuer = MockIssuer::start().await.unwrap();
    let token = issuer.mint(&TokenSpec {
        scope: Some("read".into()),
        ..TokenSpec::bound(AUD, &jkt_of_new_key())
    });
    let run = dpop(&["jwt", "decode", &token]).await;
    let out = run.ok();
    assert!(
        out.contains(&format!("\"kid\": \"{}\"", issuer.kid())),
        "{out}"
    );
    assert!(out.contains("\"scope\": \"read\""), "{out}");
    let iat = crate::common::claims(&token)["iat"].as_u64().unwrap();
    let utc = dpop_test::now(); // the same second or the next
    assert!(
        out.contains("exp: ") && out.contains("iat: ") && out.contains("in the future"),
        "{out}"
    );
    assert!(utc.as_secs() >= iat);

    let json = dpop_with_stdin(
        &["jwt", "decode", "-", "--json"],
        &[],
        format!("{token}\n").as_bytes(),
    )
    .json();
    assert_eq!(json["header"]["alg"], "ES256");
    assert_eq!(json["claims"]["aud"], AUD);
    assert!(
        json["times"]["exp"]["utc"].as_str().unwrap().ends_with('Z'),
        "{json}"
    );

    // Not a JWT: a usage error.
    let run = dpop(&["jwt", "decode", "opaque-token"]).await;
    assert_eq!(run.code, 2, "{run:?}");

    // inspect, given an access token, says what it is and where to go.
    let run = dpop(&["inspect", &token]).await;
    assert_eq!(run.code, 1);
    assert!(run.stderr.contains("dpop jwt decode"), "{run:?}");
    // ...and jwt decode, given a proof, points back.
    let dir = crate::common::TempDir::new("jwt-proof");
    let key = dir.file("k.pem");
    dpop(&["keygen", "--out", crate::common::p(&key)])
        .await
        .line();
    let proof = dpop(&[
        "proof",
        "--key",
        crate::common::p(&key),
        "--method",
        "GET",
        "--url",
        "https://a.example/",
    ])
    .await;
    let run = dpop(&["jwt", "decode", proof.line()]).await;
    assert_eq!(run.code, 0);
    assert!(run.stderr.contains("dpop inspect"), "{run:?}");
    // A proof given to inspect gets no such note.
    let run = dpop(&["inspect", proof.line()]).await;
    assert!(!run.stderr.contains("jwt decode"), "{run:?}");
}
