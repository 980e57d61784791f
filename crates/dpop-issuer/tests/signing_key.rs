//! Keys the operator manages (`[keys] signing_key`, `rotate_key_to`): the issuer signs
//! with the key a reference names, records the reference (never the key) in its data
//! directory, shares one key between instances, rotates to another named key, refuses
//! references it cannot use, and answers `temporarily_unavailable` when the key cannot
//! sign, never falling back to another key.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use dpop_core::jwt::{JwkSet, JwtValidation, TypPolicy, verify_jwt};
use dpop_core::{Algorithm, KeyError, PrivateKey, PublicJwk, Signer};
use dpop_issuer::IssuerError;
use dpop_issuer::config::KeyReference;
use serde_json::json;

use crate::support::*;

db_tests!(
    a_file_key_signs_and_is_kept_by_reference,
    instances_share_one_file_key,
    rotating_to_another_file_key,
    a_signer_that_fails_answers_503_and_no_token,
);

/// Writes a new ES256 key as PKCS#8 PEM at `path` with `mode`.
fn key_file(path: &Path, mode: u32) -> PrivateKey {
    let key = PrivateKey::generate(Algorithm::Es256).unwrap();
    std::fs::write(path, key.to_pkcs8_pem().unwrap().as_bytes()).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    key
}

/// `[keys]` naming `reference`.
fn keys_table(reference: &str) -> Setup {
    Setup {
        extra: format!("\n[keys]\nsigning_key = \"{reference}\"\n"),
        ..Setup::default()
    }
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

fn keys_dir(db: &Db) -> PathBuf {
    db.dir.join("data").join("keys")
}

/// The files in the key directory, sorted.
fn key_files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Verifies `token` with `key`'s public JWK alone (not the issuer's JWKS).
fn verify_with(it: &TestIssuer, token: &str, key: &PrivateKey) {
    let kid = key.thumbprint().as_str().to_owned();
    let set = JwkSet::from_keys(vec![(Some(kid), key.public_jwk().clone())]);
    let mut v = JwtValidation::new(&it.url, Some(API));
    v.typ = TypPolicy::AtJwt;
    v.algorithms = vec![Algorithm::Es256];
    verify_jwt(token, &set, &v, it.clock.unix())
        .unwrap_or_else(|e| panic!("the token does not verify with the file key: {e}"));
}

fn kid(key: &PrivateKey) -> String {
    key.thumbprint().as_str().to_owned()
}

async fn a_file_key_signs_and_is_kept_by_reference(db: Db) {
    let path = db.dir.join("signing.pem");
    let file_key = key_file(&path, 0o600);
    let reference = format!("file:{}", path.display());
    let mut it = TestIssuer::start_with(&db, keys_table(&reference)).await;
    let k = key();
    assert_eq!(it.issuer.signing_kid(), kid(&file_key));
    let token = it.access_token("svc", &k, &[]).await;
    assert_eq!(decode(&token).0["kid"], json!(kid(&file_key)));
    verify_with(&it, &token, &file_key);
    assert_eq!(it.jwks_kids().await, vec![kid(&file_key)]);
    // The reference is kept, not the key: one 0600 file holding the URI.
    let dir = keys_dir(&db);
    let ref_file = dir.join(format!("{}.ref", kid(&file_key)));
    assert_eq!(key_files(&dir), vec![format!("{}.ref", kid(&file_key))]);
    assert_eq!(mode(&ref_file), 0o600);
    assert_eq!(
        std::fs::read_to_string(&ref_file).unwrap(),
        format!("{reference}\n")
    );

    // A restart opens the same key by its reference.
    it.restart().await;
    assert_eq!(it.issuer.signing_kid(), kid(&file_key));
    assert!(it.active(&token).await);
    let after = it.access_token("svc", &k, &[]).await;
    verify_with(&it, &after, &file_key);
    assert_eq!(it.jwks_kids().await, vec![kid(&file_key)]);

    // The key behind the reference replaced by another: refused loudly at start.
    it.stop().await;
    key_file(&path, 0o600);
    let e = try_open(&db, keys_table(&reference)).await.unwrap_err();
    let text = e.to_string();
    assert!(
        text.contains(&kid(&file_key)) && text.contains("changed"),
        "{text}"
    );
}

async fn instances_share_one_file_key(db: Db) {
    let path = db.dir.join("shared.pem");
    let file_key = key_file(&path, 0o600);
    let a = TestIssuer::start_with(&db, keys_table(&format!("file:{}", path.display()))).await;
    // Another machine: its own data directory, the same database and key file.
    let b = a.second_machine().await;
    let k = key();
    assert_eq!(a.issuer.signing_kid(), kid(&file_key));
    assert_eq!(b.issuer.signing_kid(), kid(&file_key));
    for it in [&a, &b] {
        assert_eq!(it.jwks_kids().await, vec![kid(&file_key)], "{}", it.url);
    }
    assert_eq!(db.count("SELECT COUNT(*) FROM signing_keys").await, 1);
    let from_b = b.access_token("svc", &k, &[]).await;
    verify_with(&a, &from_b, &file_key);
    assert!(a.active(&from_b).await);
    assert!(
        db.dir
            .join("data-2/keys")
            .join(format!("{}.ref", kid(&file_key)))
            .exists()
    );
}

async fn rotating_to_another_file_key(db: Db) {
    let first_path = db.dir.join("first.pem");
    let next_path = db.dir.join("next.pem");
    let first = key_file(&first_path, 0o600);
    let next = key_file(&next_path, 0o600);
    let setup = keys_table(&format!("file:{}", first_path.display()));
    let mut it = TestIssuer::start_with(&db, setup.clone()).await;
    let k = key();
    let old = it.access_token("svc", &k, &[]).await;
    let dir = keys_dir(&db);

    // Without --key, no software key is made in the operator's place.
    let e = dpop_issuer::rotate_key(
        &it.config(),
        it.clock.unix(),
        dpop_issuer::DEFAULT_KEY_ACTIVATION,
    )
    .await
    .unwrap_err();
    assert!(matches!(e, IssuerError::Config(_)), "{e:?}");
    assert!(e.to_string().contains("--key"), "{e}");
    assert_eq!(db.count("SELECT COUNT(*) FROM signing_keys").await, 1);

    let next_ref = KeyReference::parse(&format!("file:{}", next_path.display()), &db.dir).unwrap();
    let new_kid = dpop_issuer::rotate_key_to(
        &it.config(),
        &next_ref,
        it.clock.unix(),
        dpop_issuer::DEFAULT_KEY_ACTIVATION,
    )
    .await
    .unwrap();
    assert_eq!(new_kid, kid(&next));
    assert_eq!(mode(&dir.join(format!("{new_kid}.ref"))), 0o600);
    // Published at once, signing from the activation on.
    it.issuer.maintain().await.unwrap();
    let mut kids = it.jwks_kids().await;
    kids.sort();
    let mut both = vec![kid(&first), kid(&next)];
    both.sort();
    assert_eq!(kids, both);
    assert_eq!(it.issuer.signing_kid(), kid(&first));
    // The same key again is no rotation.
    let e = dpop_issuer::rotate_key_to(
        &it.config(),
        &next_ref,
        it.clock.unix(),
        std::time::Duration::ZERO,
    )
    .await
    .unwrap_err();
    assert!(
        matches!(e, IssuerError::Config(_)) && e.to_string().contains("already published"),
        "{e}"
    );

    it.clock.advance(60);
    assert_eq!(it.issuer.signing_kid(), kid(&next));
    let new = it.access_token("svc", &k, &[]).await;
    verify_with(&it, &new, &next);
    it.issuer.maintain().await.unwrap();
    // Only the reference to the retired key goes; the key file is the operator's.
    assert_eq!(key_files(&dir), vec![format!("{new_kid}.ref")]);
    assert!(first_path.exists());
    assert_eq!(it.jwks_kids().await.len(), 2);
    it.verify(&old, API).await;
    assert!(it.active(&old).await);

    // A restart with the configuration still naming the first key keeps the next one.
    it.restart().await;
    assert_eq!(it.issuer.signing_kid(), kid(&next));

    // Past the publication of the retired key it leaves the JWKS, and it never signs
    // again: not through rotate-key, not as the configured key of a new instance, even
    // once its record is purged.
    it.clock.advance(300 + 60 + 30 + 1);
    it.issuer.maintain().await.unwrap();
    assert_eq!(it.jwks_kids().await, vec![kid(&next)]);
    assert_eq!(db.count("SELECT COUNT(*) FROM signing_keys").await, 1);
    let first_ref =
        KeyReference::parse(&format!("file:{}", first_path.display()), &db.dir).unwrap();
    let e = dpop_issuer::rotate_key_to(
        &it.config(),
        &first_ref,
        it.clock.unix(),
        std::time::Duration::ZERO,
    )
    .await
    .unwrap_err();
    assert!(e.to_string().contains("retired"), "{e}");
    let config = parse_config(
        &it.config_text().replace(
            &db.dir.join("data").display().to_string(),
            &db.dir.join("data-3").display().to_string(),
        ),
        &db.dir,
    );
    let clock = Arc::clone(&it.clock) as Arc<dyn dpop_core::Clock>;
    let e = dpop_issuer::Issuer::open_with_clock(config, clock)
        .await
        .unwrap_err();
    assert!(matches!(e, IssuerError::Config(_)), "{e:?}");
    assert!(e.to_string().contains("retired"), "{e}");
    assert_eq!(it.jwks_kids().await, vec![kid(&next)]);
    assert_eq!(it.issuer.signing_kid(), kid(&next));
}

/// A signer that signs with `key` until told to fail, like a device that goes away.
struct Flaky {
    key: PrivateKey,
    failing: Arc<AtomicBool>,
}

impl Signer for Flaky {
    fn algorithm(&self) -> Algorithm {
        self.key.algorithm()
    }
    fn public_jwk(&self) -> &PublicJwk {
        self.key.public_jwk()
    }
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, KeyError> {
        if self.failing.load(Ordering::SeqCst) {
            return Err(KeyError::Device(
                "test device: CKR_DEVICE_REMOVED".to_owned(),
            ));
        }
        self.key.sign(message)
    }
    fn blocks(&self) -> bool {
        true
    }
}

async fn a_signer_that_fails_answers_503_and_no_token(db: Db) {
    let path = db.dir.join("device.pem");
    let file_key = key_file(&path, 0o600);
    let failing = Arc::new(AtomicBool::new(false));
    let signer = Flaky {
        key: PrivateKey::from_pkcs8_pem(&file_key.to_pkcs8_pem().unwrap(), None).unwrap(),
        failing: Arc::clone(&failing),
    };
    let it = TestIssuer::start_signing_with(
        &db,
        keys_table(&format!("file:{}", path.display())),
        Some(Arc::new(signer)),
    )
    .await;
    let k = key();
    let good = it.access_token("svc", &k, &[]).await;
    verify_with(&it, &good, &file_key);
    let (_, rt) = it.svc_refresh_token(&k).await;

    failing.store(true, Ordering::SeqCst);
    let r = it.cc("svc", &k, &[]).await;
    r.err(503, "temporarily_unavailable");
    assert!(r.json().get("access_token").is_none(), "{}", r.body);
    assert_eq!(r.header("retry-after"), Some("5"));
    // A refresh that cannot be signed leaves its refresh token unused.
    it.refresh(&basic("svc"), Some(&k), &rt, &[])
        .await
        .err(503, "temporarily_unavailable");
    // An exchange that would start a refresh grant records none it cannot deliver.
    let families = db.count("SELECT COUNT(*) FROM refresh_families").await;
    it.exchange(&basic("svc"), Some(&k), &good, &[])
        .await
        .err(503, "temporarily_unavailable");
    assert_eq!(
        db.count("SELECT COUNT(*) FROM refresh_families").await,
        families
    );
    // No other key signed meanwhile.
    assert_eq!(it.jwks_kids().await, vec![kid(&file_key)]);
    assert_eq!(it.issuer.signing_kid(), kid(&file_key));

    failing.store(false, Ordering::SeqCst);
    let body = it.refresh(&basic("svc"), Some(&k), &rt, &[]).await.ok();
    verify_with(&it, body["access_token"].as_str().unwrap(), &file_key);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_file_others_can_read_is_refused() {
    let db = Db::sqlite();
    let path = db.dir.join("loose.pem");
    key_file(&path, 0o644);
    let e = try_open(&db, keys_table(&format!("file:{}", path.display())))
        .await
        .unwrap_err();
    assert!(matches!(e, IssuerError::Config(_)), "{e:?}");
    let text = e.to_string();
    assert!(
        text.contains(&path.display().to_string()) && text.contains("chmod 600"),
        "{text}"
    );
    // Nothing was published or recorded.
    assert!(!keys_dir(&db).exists() || key_files(&keys_dir(&db)).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_of_another_algorithm_is_refused() {
    let db = Db::sqlite();
    let path = db.dir.join("ed25519.pem");
    let key = PrivateKey::generate(Algorithm::EdDsa).unwrap();
    std::fs::write(&path, key.to_pkcs8_pem().unwrap().as_bytes()).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    let e = try_open(&db, keys_table(&format!("file:{}", path.display())))
        .await
        .unwrap_err();
    assert!(matches!(e, IssuerError::Config(_)), "{e:?}");
    assert!(e.to_string().contains("ES256"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_key_that_cannot_be_opened_is_a_configuration_error() {
    let db = Db::sqlite();
    let uri = "pkcs11:token=issuer;object=signing?module-path=/nonexistent/pkcs11-module.so&pin-source=file:/run/secrets/pin";
    let e = try_open(&db, keys_table(uri)).await.unwrap_err();
    assert!(matches!(e, IssuerError::Config(_)), "{e:?}");
    let text = e.to_string();
    assert!(
        text.contains("/nonexistent/pkcs11-module.so") && text.contains("object=signing"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_reference_is_refused_at_load_naming_the_setting() {
    let db = Db::sqlite();
    let text = render_config(
        &db,
        keys_table("pkcs11:token=x;objetc=y?module-path=/m.so"),
        "http://127.0.0.1:9",
        &key(),
    );
    let e = config_refusal(&text, &db.dir);
    assert!(
        e.contains("keys.signing_key") && e.contains("objetc"),
        "{e}"
    );
    let text = render_config(
        &db,
        Setup {
            extra: "\n[keys]\ndevice_sessions = 0\n".to_owned(),
            ..Setup::default()
        },
        "http://127.0.0.1:9",
        &key(),
    );
    let e = config_refusal(&text, &db.dir);
    assert!(e.contains("keys.device_sessions"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_reference_is_recorded_without_its_pin() {
    // A device key given as a signer (the device stands in for itself here): the
    // reference file names where the PIN comes from, never the PIN.
    let db = Db::sqlite();
    let pin_file = db.dir.join("pin");
    std::fs::write(&pin_file, "123456\n").unwrap();
    std::fs::set_permissions(&pin_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let uri = format!(
        "pkcs11:token=issuer;object=signing?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:{}",
        pin_file.display()
    );
    let device = PrivateKey::generate(Algorithm::Es256).unwrap();
    let kid = kid(&device);
    let it = TestIssuer::start_signing_with(&db, keys_table(&uri), Some(Arc::new(device))).await;
    assert_eq!(it.issuer.signing_kid(), kid);
    let ref_file = keys_dir(&db).join(format!("{kid}.ref"));
    assert_eq!(mode(&ref_file), 0o600);
    let recorded = std::fs::read_to_string(&ref_file).unwrap();
    assert_eq!(recorded, format!("{uri}\n"));
    assert!(!recorded.contains("123456"));
    it.access_token("svc", &key(), &[]).await;

    // A PIN written into the URI never shows in the configuration's Debug output.
    let text = render_config(
        &db,
        keys_table("pkcs11:object=k?module-path=/m.so&pin-value=987654"),
        "http://127.0.0.1:9",
        &key(),
    );
    let config = parse_config(&text, &db.dir);
    let debug = format!("{config:?}");
    assert!(
        debug.contains("pin-value=***") && !debug.contains("987654"),
        "{debug}"
    );
}
