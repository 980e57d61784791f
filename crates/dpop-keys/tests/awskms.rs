//! The AWS KMS backend against an in-process KMS stand-in that checks every SigV4
//! signature, and (with `DPOP_TEST_MOTO_URL`) against moto's KMS: open, sign, proofs a
//! verifier accepts, generate, and every way KMS, the network or the configuration
//! fails.

#![cfg(feature = "awskms")]

mod fake_kms;

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use dpop_core::{Algorithm, Signer};
use dpop_keys::awskms::{AwsCredentials, generate_with, open_with};
use dpop_keys::{AwsKmsUri, DeviceKey, KeyRef, KeysError, OpenOptions, ec_public_jwk};

use dpop_test::{assert_proof_verifies, sign_from_threads};

use crate::fake_kms::{ACCESS_KEY, FakeKms, Fault, REGION, SECRET};

/// `unwrap_err` for results whose success has no `Debug` (a signer).
trait Refused<E> {
    fn refused(self) -> E;
}

impl<T, E> Refused<E> for Result<T, E> {
    fn refused(self) -> E {
        match self {
            Ok(_) => panic!("accepted where a refusal was due"),
            Err(e) => e,
        }
    }
}

fn credentials() -> AwsCredentials {
    AwsCredentials::new(ACCESS_KEY, SECRET, None)
}

fn uri(text: &str) -> AwsKmsUri {
    match KeyRef::parse(text).unwrap() {
        KeyRef::Device(DeviceKey::AwsKms(u)) => u,
        other => panic!("{text} parsed as {other:?}"),
    }
}

/// The reference to `key_id` at the fake.
fn at(fake: &FakeKms, key_id: &str) -> AwsKmsUri {
    uri(&format!(
        "awskms:key-id={key_id};region={REGION}?endpoint={}",
        fake.url
    ))
}

fn options() -> OpenOptions {
    let mut o = OpenOptions::default();
    o.wait = Duration::from_secs(5);
    o
}

fn open(fake: &FakeKms, key_id: &str) -> Result<Arc<dyn Signer>, KeysError> {
    open_with(&at(fake, key_id), &options(), credentials())
}

/// Every string an error shows, both ways.
fn shown(e: &KeysError) -> String {
    format!("{e} {e:?}")
}

fn assert_no_secret(text: &str) {
    assert!(!text.contains(SECRET), "the secret shows in {text}");
    assert!(
        !text.contains("session-token-value"),
        "the token shows in {text}"
    );
}

#[test]
fn a_key_opens_signs_and_its_proofs_verify() {
    let fake = FakeKms::start();
    let id = fake.add_key("ECC_NIST_P256", "SIGN_VERIFY");
    fake.alias("alias/dpop-client", &id);
    let expected = ec_public_jwk(dpop_core::Curve::P256, &fake.public_point(&id)).unwrap();
    for key_id in [id.clone(), fake.arn(&id), "alias/dpop-client".to_owned()] {
        let signer = open(&fake, &key_id).unwrap();
        assert_eq!(signer.algorithm(), Algorithm::Es256);
        assert!(signer.blocks());
        assert_eq!(signer.public_jwk(), &expected);
        assert_eq!(&assert_proof_verifies(&*signer), expected.thumbprint());
    }
    // Each open: the public key, then the self-check's signature, asked of the key ARN.
    let calls = fake.calls();
    assert_eq!(
        fake.actions()[..2],
        ["GetPublicKey".to_owned(), "Sign".to_owned()]
    );
    let (_, sign) = &calls[1];
    assert_eq!(sign["KeyId"], fake.arn(&id));
    assert_eq!(sign["MessageType"], "DIGEST");
    assert_eq!(sign["SigningAlgorithm"], "ECDSA_SHA_256");
}

/// One signer shared by threads, and used as async callers must: on tokio's blocking
/// threads.
#[test]
fn a_signer_signs_from_many_threads_and_from_spawn_blocking() {
    let fake = FakeKms::start();
    let id = fake.add_key("ECC_NIST_P256", "SIGN_VERIFY");
    let signer = open(&fake, &id).unwrap();
    sign_from_threads(&signer, 8, 5);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let shared = signer.clone();
    let signature = runtime
        .block_on(async move {
            assert!(shared.blocks());
            tokio::task::spawn_blocking(move || shared.sign(b"async caller")).await
        })
        .unwrap()
        .unwrap();
    assert!(
        signer
            .public_jwk()
            .verify(Algorithm::Es256, b"async caller", &signature)
    );
}

#[test]
fn messages_beyond_the_raw_limit_are_signed_as_digests() {
    let fake = FakeKms::start();
    let id = fake.add_key("ECC_NIST_P256", "SIGN_VERIFY");
    let signer = open(&fake, &id).unwrap();
    let message = vec![b'a'; 10_000];
    let signature = signer.sign(&message).unwrap();
    assert_eq!(signature.len(), 64);
    assert!(
        signer
            .public_jwk()
            .verify(Algorithm::Es256, &message, &signature)
    );
    assert!(
        !signer
            .public_jwk()
            .verify(Algorithm::Es256, &message[1..], &signature)
    );
    let (_, last) = fake.calls().pop().unwrap();
    let digest = base64::Engine::decode(
        &base64::engine::general_purpose::STANDARD,
        last["Message"].as_str().unwrap(),
    )
    .unwrap();
    assert_eq!(
        digest,
        aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &message).as_ref()
    );
}

#[test]
fn p384_keys_sign_es384() {
    let fake = FakeKms::start();
    let id = fake.add_key("ECC_NIST_P384", "SIGN_VERIFY");
    let signer = open(&fake, &id).unwrap();
    assert_eq!(signer.algorithm(), Algorithm::Es384);
    assert_eq!(signer.sign(b"x").unwrap().len(), 96);
    assert_proof_verifies(&*signer);
    let (_, last) = fake.calls().pop().unwrap();
    assert_eq!(last["SigningAlgorithm"], "ECDSA_SHA_384");
    // Asking for ES256 of a P-384 key, or an algorithm KMS keys do not sign here.
    for alg in [Algorithm::Es256, Algorithm::EdDsa, Algorithm::Rs256] {
        let mut o = options();
        o.alg = Some(alg);
        let e = open_with(&at(&fake, &id), &o, credentials()).refused();
        assert!(e.is_config(), "{e}");
        assert!(e.to_string().contains(alg.name()), "{e}");
    }
}

#[test]
fn a_signer_stays_with_its_key_when_the_alias_is_re_pointed() {
    let fake = FakeKms::start();
    let first = fake.add_key("ECC_NIST_P256", "SIGN_VERIFY");
    let second = fake.add_key("ECC_NIST_P256", "SIGN_VERIFY");
    fake.alias("alias/moving", &first);
    let signer = open(&fake, "alias/moving").unwrap();
    fake.alias("alias/moving", &second);
    let signature = signer.sign(b"message").unwrap();
    assert!(
        signer
            .public_jwk()
            .verify(Algorithm::Es256, b"message", &signature)
    );
    let (_, last) = fake.calls().pop().unwrap();
    assert_eq!(last["KeyId"], fake.arn(&first));
}

#[test]
fn a_kms_that_signs_with_another_key_or_returns_garbage_is_refused_at_open() {
    for (fault, why) in [
        (Fault::OtherKeySignature, "does not match"),
        (Fault::GarbageSignature, "not a DER ECDSA signature"),
        (Fault::FixedSignature, "not a DER ECDSA signature"),
    ] {
        let fake = FakeKms::start();
        let id = fake.add_key("ECC_NIST_P256", "SIGN_VERIFY");
        fake.fail(Some("Sign"), fault);
        let e = open(&fake, &id).refused();
        assert!(!e.is_config(), "{e}");
        let text = e.to_string();
        assert!(text.contains(why), "{fault:?}: {text}");
        if fault == Fault::OtherKeySignature {
            assert!(text.contains("refusing to use it"), "{text}");
        }
        // The crate's own self-check (which `dpop_keys::open` adds) refuses the
        // signer too once KMS turns.
        fake.heal();
        let signer = open(&fake, &id).unwrap();
        fake.fail(Some("Sign"), fault);
        let why_check = dpop_keys::self_check(&*signer).refused();
        assert!(why_check.contains(why), "{fault:?}: {why_check}");
        // The same answers after a good open fail the signature, never pass it on.
        fake.heal();
        let signer = open(&fake, &id).unwrap();
        fake.fail(Some("Sign"), fault);
        match signer.sign(b"m") {
            Err(e) => assert!(
                e.to_string().contains(why) || fault == Fault::OtherKeySignature,
                "{e}"
            ),
            Ok(sig) => {
                assert_eq!(fault, Fault::OtherKeySignature);
                assert!(!signer.public_jwk().verify(Algorithm::Es256, b"m", &sig));
            }
        }
    }
}

#[test]
fn kms_errors_name_their_type() {
    let cases = [
        (Some("GetPublicKey"), "AccessDeniedException", true),
        (Some("GetPublicKey"), "DisabledException", true),
        (Some("GetPublicKey"), "KMSInvalidStateException", true),
        (Some("GetPublicKey"), "ThrottlingException", false),
        (Some("GetPublicKey"), "KMSInternalException", false),
    ];
    for (action, kind, config) in cases {
        let fake = FakeKms::start();
        let id = fake.add_key("ECC_NIST_P256", "SIGN_VERIFY");
        fake.fail(action, Fault::Kms(kind));
        let e = open(&fake, &id).refused();
        assert_eq!(e.code(), Some(kind), "{e}");
        assert_eq!(e.is_config(), config, "{e}");
        let text = e.to_string();
        assert!(
            text.contains(kind) && text.contains("GetPublicKey"),
            "{text}"
        );
        assert!(
            text.contains(&format!("{kind} (fake)")),
            "KMS's message: {text}"
        );
        assert!(text.starts_with("awskms key awskms:key-id="), "{text}");
    }
    // A key that does not exist.
    let fake = FakeKms::start();
    let e = open(&fake, "alias/nothing-here").refused();
    assert_eq!(e.code(), Some("NotFoundException"));
    assert!(e.is_config());
    assert!(e.to_string().contains("NotFoundException"), "{e}");
}

#[test]
fn signing_errors_after_open_name_their_type() {
    let fake = FakeKms::start();
    let id = fake.add_key("ECC_NIST_P256", "SIGN_VERIFY");
    let signer = open(&fake, &id).unwrap();
    for kind in [
        "AccessDeniedException",
        "DisabledException",
        "KMSInvalidStateException",
        "ThrottlingException",
    ] {
        fake.heal();
        fake.fail(Some("Sign"), Fault::Kms(kind));
        let e = signer.sign(b"m").refused();
        assert!(matches!(e, dpop_core::KeyError::Device(_)), "{e:?}");
        assert!(e.to_string().contains(kind), "{e}");
        assert!(e.to_string().contains("Sign"), "{e}");
    }
    // Refused at open's test signature: KMS's type, and whose fault it is.
    for (kind, config) in [
        ("AccessDeniedException", true),
        ("DisabledException", true),
        ("KMSInternalException", false),
    ] {
        let fake = FakeKms::start();
        let id = fake.add_key("ECC_NIST_P256", "SIGN_VERIFY");
        fake.fail(Some("Sign"), Fault::Kms(kind));
        let e = open(&fake, &id).refused();
        assert_eq!(e.code(), Some(kind), "{e}");
        assert_eq!(e.is_config(), config, "{e}");
        assert!(e.to_string().contains("KMS refused Sign") || !config, "{e}");
    }
}

#[test]
fn server_errors_bodies_and_sizes_that_are_not_kms_are_device_errors() {
    let fake = FakeKms::start();
    let id = fake.add_key("ECC_NIST_P256", "SIGN_VERIFY");
    let signer = open(&fake, &id).unwrap();
    for (fault, why) in [
        (Fault::Status500, "HTTP 500"),
        (Fault::Oversized, "larger than 65536 bytes"),
        (Fault::NotJson, "not a JSON object"),
    ] {
        fake.heal();
        fake.fail(None, fault);
        let e = signer.sign(b"m").refused();
        assert!(e.to_string().contains(why), "{fault:?}: {e}");
        let e = open(&fake, &id).refused();
        assert!(!e.is_config(), "{e}");
        assert!(e.to_string().contains(why), "{fault:?}: {e}");
    }
}

#[test]
fn a_kms_that_does_not_answer_in_time_fails_the_signature() {
    let fake = FakeKms::start();
    let id = fake.add_key("ECC_NIST_P256", "SIGN_VERIFY");
    let mut o = options();
    o.wait = Duration::from_millis(500);
    let signer = open_with(&at(&fake, &id), &o, credentials()).unwrap();
    fake.fail(Some("Sign"), Fault::Slow(Duration::from_secs(3)));
    let started = Instant::now();
    let e = signer.sign(b"m").refused();
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert!(e.to_string().contains("timed out"), "{e}");
    fake.fail(None, Fault::Slow(Duration::from_secs(3)));
    let e = open_with(&at(&fake, &id), &o, credentials()).refused();
    assert!(!e.is_config());
    assert!(e.to_string().contains("timed out"), "{e}");
    // Nothing listens: a device error, not a hang.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let e = open_with(
        &uri(&format!(
            "awskms:key-id={id};region={REGION}?endpoint=http://127.0.0.1:{port}"
        )),
        &o,
        credentials(),
    )
    .refused();
    assert!(!e.is_config());
    assert!(e.to_string().contains("cannot reach KMS"), "{e}");
}

#[test]
fn keys_that_cannot_sign_es256_or_es384_are_refused() {
    let fake = FakeKms::start();
    for (spec, usage, why) in [
        ("ECC_SECG_P256K1", "SIGN_VERIFY", "spec is ECC_SECG_P256K1"),
        ("RSA_2048", "SIGN_VERIFY", "spec is RSA_2048"),
        (
            "ECC_NIST_P256",
            "ENCRYPT_DECRYPT",
            "usage is ENCRYPT_DECRYPT",
        ),
        (
            "ECC_NIST_P256",
            "GENERATE_VERIFY_MAC",
            "usage is GENERATE_VERIFY_MAC",
        ),
    ] {
        let id = fake.add_key(spec, usage);
        let e = open(&fake, &id).refused();
        assert!(e.is_config(), "{e}");
        assert!(e.to_string().contains(why), "{e}");
    }
    // No signature was ever asked for.
    assert!(fake.actions().iter().all(|a| a == "GetPublicKey"));
}

#[test]
fn wrong_credentials_are_refused_by_kms_and_shown_without_the_secret() {
    let fake = FakeKms::start();
    let id = fake.add_key("ECC_NIST_P256", "SIGN_VERIFY");
    let wrong_secret = AwsCredentials::new(ACCESS_KEY, "not-the-secret", None);
    let e = open_with(&at(&fake, &id), &options(), wrong_secret).refused();
    assert_eq!(e.code(), Some("InvalidSignatureException"), "{e}");
    assert!(e.is_config());
    let unknown = AwsCredentials::new("AKIDUNKNOWN", SECRET, None);
    let e = open_with(&at(&fake, &id), &options(), unknown).refused();
    assert_eq!(e.code(), Some("UnrecognizedClientException"), "{e}");
    assert_no_secret(&shown(&e));
    // Another region than the one the key's KMS serves.
    let e = open_with(
        &uri(&format!(
            "awskms:key-id={id};region=us-east-2?endpoint={}",
            fake.url
        )),
        &options(),
        credentials(),
    )
    .refused();
    assert_eq!(e.code(), Some("InvalidSignatureException"), "{e}");
}

#[test]
fn a_session_token_is_sent_signed_and_never_shown() {
    let fake = FakeKms::start();
    let id = fake.add_key("ECC_NIST_P256", "SIGN_VERIFY");
    fake.require_session_token("session-token-value");
    let e = open(&fake, &id).refused();
    assert_eq!(e.code(), Some("UnrecognizedClientException"), "{e}");
    let with_token =
        AwsCredentials::new(ACCESS_KEY, SECRET, Some("session-token-value".to_owned()));
    let debug = format!("{with_token:?}");
    assert!(debug.contains(ACCESS_KEY), "{debug}");
    assert_no_secret(&debug);
    let signer = open_with(&at(&fake, &id), &options(), with_token.clone()).unwrap();
    assert_proof_verifies(&*signer);
    // Every error this file provokes with these credentials shows neither secret.
    fake.fail(Some("Sign"), Fault::Kms("AccessDeniedException"));
    assert_no_secret(&signer.sign(b"m").refused().to_string());
    assert_no_secret(&shown(
        &open_with(&at(&fake, &id), &options(), with_token.clone()).refused(),
    ));
    fake.fail(None, Fault::Status500);
    assert_no_secret(&shown(
        &open_with(&at(&fake, &id), &options(), with_token).refused(),
    ));
}

#[test]
fn missing_credentials_are_a_configuration_error() {
    let e = AwsCredentials::from_vars(|_| None).refused();
    assert!(e.contains("AWS_ACCESS_KEY_ID"), "{e}");
    let only_id = |name: &str| (name == "AWS_ACCESS_KEY_ID").then(|| ACCESS_KEY.to_owned());
    let e = AwsCredentials::from_vars(only_id).refused();
    assert!(e.contains("AWS_SECRET_ACCESS_KEY"), "{e}");
    let empty_secret = |name: &str| {
        Some(
            if name == "AWS_ACCESS_KEY_ID" {
                ACCESS_KEY
            } else {
                ""
            }
            .to_owned(),
        )
    };
    assert!(AwsCredentials::from_vars(empty_secret).is_err());
    let full = |name: &str| match name {
        "AWS_ACCESS_KEY_ID" => Some(ACCESS_KEY.to_owned()),
        "AWS_SECRET_ACCESS_KEY" => Some(SECRET.to_owned()),
        _ => None,
    };
    let c = AwsCredentials::from_vars(full).unwrap();
    assert_eq!(c.access_key_id(), ACCESS_KEY);
    assert_no_secret(&format!("{c:?}"));

    // Through the crate's own open, which reads the environment.
    if std::env::var_os("AWS_ACCESS_KEY_ID").is_some() {
        eprintln!("skipped the environment half: AWS_ACCESS_KEY_ID is set here");
        return;
    }
    let fake = FakeKms::start();
    let id = fake.add_key("ECC_NIST_P256", "SIGN_VERIFY");
    let key = DeviceKey::AwsKms(at(&fake, &id));
    let e = dpop_keys::open(&key, &options()).refused();
    assert!(e.is_config(), "{e}");
    assert!(e.to_string().contains("no AWS credentials"), "{e}");
    let e = dpop_keys::generate(&key, Algorithm::Es256, &options()).refused();
    assert!(e.is_config(), "{e}");
    assert!(
        fake.calls().is_empty(),
        "nothing is sent without credentials"
    );
}

#[test]
fn plain_http_is_refused_unless_the_endpoint_is_loopback() {
    for endpoint in ["http://192.0.2.10:4566", "http://kms.internal.example"] {
        let u = uri(&format!(
            "awskms:key-id=alias/x;region={REGION}?endpoint={endpoint}"
        ));
        let e = open_with(&u, &options(), credentials()).refused();
        assert!(e.is_config(), "{e}");
        assert!(e.to_string().contains("not loopback"), "{e}");
        let e = generate_with(&u, Algorithm::Es256, &options(), credentials()).refused();
        assert!(e.to_string().contains("not loopback"), "{e}");
    }
    // A region that conflicts with the ARN's, and none at all.
    let e = open_with(
        &uri("awskms:key-id=arn:aws:kms:us-west-2:111122223333:key/k;region=eu-west-1"),
        &options(),
        credentials(),
    )
    .refused();
    assert!(
        e.is_config() && e.to_string().contains("its own region"),
        "{e}"
    );
}

#[test]
fn generate_makes_a_key_and_names_it_once() {
    let fake = FakeKms::start();
    let u = at(&fake, "alias/dpop/new-client");
    let arn = generate_with(&u, Algorithm::Es256, &options(), credentials()).unwrap();
    assert!(arn.starts_with("arn:aws:kms:eu-west-1:"), "{arn}");
    assert_eq!(fake.key_count(), 1);
    let (_, create) = fake
        .calls()
        .into_iter()
        .find(|(a, _)| a == "CreateKey")
        .unwrap();
    assert_eq!(create["KeySpec"], "ECC_NIST_P256");
    assert_eq!(create["KeyUsage"], "SIGN_VERIFY");
    let signer = open_with(&u, &options(), credentials()).unwrap();
    assert_proof_verifies(&*signer);

    // The alias exists now: no second key, the alias untouched.
    let e = generate_with(&u, Algorithm::Es256, &options(), credentials()).refused();
    assert!(e.is_config(), "{e}");
    assert!(e.to_string().contains("already names"), "{e}");
    assert!(e.to_string().contains(&arn), "{e}");
    assert_eq!(fake.key_count(), 1);
    assert_eq!(
        open_with(&u, &options(), credentials())
            .unwrap()
            .public_jwk(),
        signer.public_jwk()
    );

    // ES384 makes a P-384 key.
    let u384 = at(&fake, "alias/p384");
    generate_with(&u384, Algorithm::Es384, &options(), credentials()).unwrap();
    let signer = open_with(&u384, &options(), credentials()).unwrap();
    assert_eq!(signer.algorithm(), Algorithm::Es384);
    assert_proof_verifies(&*signer);

    // Through the crate's generate-then-open, which needs credentials from the
    // environment: covered by missing_credentials_are_a_configuration_error.
}

#[test]
fn generate_refuses_key_ids_reserved_aliases_and_other_algorithms() {
    let fake = FakeKms::start();
    let existing = fake.add_key("ECC_NIST_P256", "SIGN_VERIFY");
    for (key_id, why) in [
        (existing.clone(), "alias/NAME"),
        (fake.arn(&existing), "alias/NAME"),
        ("alias/aws/kms".to_owned(), "not an alias"),
        ("alias/with space".to_owned(), "not an alias"),
        ("alias/".to_owned(), "not an alias"),
    ] {
        let e = generate_with(
            &uri(&format!(
                "awskms:key-id={};region={REGION}?endpoint={}",
                key_id.replace(' ', "%20"),
                fake.url
            )),
            Algorithm::Es256,
            &options(),
            credentials(),
        )
        .refused();
        assert!(e.is_config(), "{e}");
        assert!(e.to_string().contains(why), "{key_id}: {e}");
    }
    for alg in [Algorithm::EdDsa, Algorithm::Es512, Algorithm::Ps256] {
        let e = generate_with(&at(&fake, "alias/x"), alg, &options(), credentials()).refused();
        assert!(e.is_config() && e.to_string().contains(alg.name()), "{e}");
    }
    assert!(fake.calls().is_empty(), "refused before any request");
}

#[test]
fn a_key_whose_alias_cannot_be_created_is_scheduled_for_deletion() {
    let fake = FakeKms::start();
    fake.fail(Some("CreateAlias"), Fault::Kms("AccessDeniedException"));
    let e = generate_with(
        &at(&fake, "alias/denied"),
        Algorithm::Es256,
        &options(),
        credentials(),
    )
    .refused();
    assert_eq!(e.code(), Some("AccessDeniedException"), "{e}");
    assert!(e.to_string().contains("scheduled for deletion"), "{e}");
    assert_eq!(fake.key_count(), 1);
    let arn = fake
        .calls()
        .into_iter()
        .find(|(a, _)| a == "ScheduleKeyDeletion")
        .map(|(_, body)| body["KeyId"].as_str().unwrap().to_owned())
        .unwrap();
    assert_eq!(fake.key_state(&arn), "PendingDeletion");
    // A failure to look the alias up is not taken for its absence.
    fake.heal();
    fake.fail(Some("DescribeKey"), Fault::Kms("AccessDeniedException"));
    let e = generate_with(
        &at(&fake, "alias/other"),
        Algorithm::Es256,
        &options(),
        credentials(),
    )
    .refused();
    assert_eq!(e.code(), Some("AccessDeniedException"), "{e}");
    assert_eq!(fake.key_count(), 1);
}

/// The same path against moto's KMS (`moto_server`), when `DPOP_TEST_MOTO_URL` names
/// one: an independent implementation of the KMS API and its answers.
///
/// moto (5.x) does not implement `MessageType: DIGEST`: it signs the digest as if it
/// were the message, so its signatures do not verify. Opening then must be refused by
/// the test signature (after moto's public key and key spec were read and accepted);
/// once moto signs digests, the proof must verify.
#[test]
fn moto_kms_generates_and_opens() {
    let Ok(url) = std::env::var("DPOP_TEST_MOTO_URL") else {
        eprintln!(
            "skipped: set DPOP_TEST_MOTO_URL to a running moto_server (http://127.0.0.1:PORT)"
        );
        return;
    };
    let nonce = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let alias = format!("alias/dpop-test-{nonce}");
    let u = uri(&format!(
        "awskms:key-id={alias};region=us-east-1?endpoint={url}"
    ));
    let moto = || AwsCredentials::new("testing", "testing", None);
    let arn = generate_with(&u, Algorithm::Es256, &options(), moto()).unwrap();
    assert!(arn.starts_with("arn:aws:kms:us-east-1:"), "{arn}");
    let e = generate_with(&u, Algorithm::Es256, &options(), moto()).refused();
    assert!(e.to_string().contains("already names"), "{e}");
    assert!(e.to_string().contains(&arn), "{e}");
    let e = open_with(
        &uri(&format!(
            "awskms:key-id=alias/none-{nonce};region=us-east-1?endpoint={url}"
        )),
        &options(),
        moto(),
    )
    .refused();
    assert_eq!(e.code(), Some("NotFoundException"), "{e}");
    assert!(e.is_config());
    let by_arn = uri(&format!("awskms:key-id={arn}?endpoint={url}"));
    for reference in [&u, &by_arn] {
        match open_with(reference, &options(), moto()) {
            Ok(signer) => {
                assert_eq!(signer.algorithm(), Algorithm::Es256);
                assert_proof_verifies(&*signer);
                eprintln!("moto signed a digest: the proof verified");
            }
            Err(e) => {
                assert!(!e.is_config(), "{e}");
                assert!(
                    e.to_string()
                        .contains("does not match the public key it gave"),
                    "{e}"
                );
                eprintln!("moto does not sign digests; refused as it must be: {e}");
            }
        }
    }
}
