//! The PKCS#11 backend against a real SoftHSM token: keys made inside the token sign
//! proofs that dpop-core and OpenSSL verify, the private key cannot be read out, and
//! every way of naming the wrong thing is refused with a precise message that never
//! shows the PIN.
//!
//! SoftHSM reads `SOFTHSM2_CONF` once per process, and changing the environment of a
//! running multi-threaded test binary is not sound. So each SoftHSM test re-runs itself
//! in a child process of this binary (`--exact NAME`) with `SOFTHSM2_CONF` naming a
//! fresh token directory whose tokens `softhsm2-util` initialised beforehand.
//! `DPOP_TEST_SOFTHSM_MODULE` names the module (`/usr/lib/softhsm/libsofthsm2.so`);
//! without it these tests are skipped with a message.

#![cfg(feature = "pkcs11")]

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, ObjectClass};
use cryptoki::session::{Session, UserType};
use cryptoki::types::AuthPin;
use dpop_core::{Algorithm, KeyError, Signer};
use dpop_keys::{DeviceKey, KeyRef, KeysError, OpenOptions};
use dpop_test::{assert_openssl_verifies, assert_proof_verifies, sign_from_threads};

/// Set in the child process: the fixture directory.
const CHILD: &str = "DPOP_PKCS11_TEST_FIXTURE";
const USER_PIN: &str = "user-pin-5678";
const SO_PIN: &str = "so-pin-91011";
const WRONG_PIN: &str = "wrong-pin-4242";
/// A JWS signing input, as the bench signs one.
const INPUT: &[u8] = b"eyJ0eXAiOiJkcG9wK2p3dCJ9.eyJodG0iOiJHRVQifQ";

/// A throwaway SoftHSM token directory, as the child process sees it.
struct Fixture {
    dir: PathBuf,
    module: PathBuf,
}

impl Fixture {
    fn pin_file(&self) -> PathBuf {
        self.dir.join("pin")
    }

    /// A `pkcs11:` URI for `object` on `token`, the PIN from the fixture's PIN file.
    fn uri(&self, token: &str, path_attrs: &str) -> String {
        format!(
            "pkcs11:token={token};{path_attrs}?module-path={}&pin-source=file:{}",
            self.module.display(),
            self.pin_file().display()
        )
    }

    /// A file holding `pin`, readable by its owner only.
    fn secret_file(&self, name: &str, pin: &str) -> PathBuf {
        let path = self.dir.join(name);
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .unwrap();
        writeln!(file, "{pin}").unwrap();
        path
    }

    /// The module, loaded through cryptoki directly (as another program would), and a
    /// logged-in read-write session on the token labelled `token`.
    fn raw_session(&self, token: &str) -> Session {
        let ctx = Pkcs11::new(&self.module).unwrap();
        match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
            Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
            Err(e) => panic!("C_Initialize: {e}"),
        }
        let slot = ctx
            .get_slots_with_initialized_token()
            .unwrap()
            .into_iter()
            .find(|s| ctx.get_token_info(*s).unwrap().label() == token)
            .unwrap();
        let session = ctx.open_rw_session(slot).unwrap();
        match session.login(UserType::User, Some(&AuthPin::from(USER_PIN))) {
            Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {}
            Err(e) => panic!("C_Login: {e}"),
        }
        session
    }
}

fn device(text: &str) -> DeviceKey {
    match KeyRef::parse(text).unwrap() {
        KeyRef::Device(d) => d,
        other => panic!("{text} parsed as {other:?}"),
    }
}

fn options() -> OpenOptions {
    OpenOptions::default()
}

/// The default options, changed by `change`.
fn options_with(change: impl FnOnce(&mut OpenOptions)) -> OpenOptions {
    let mut options = OpenOptions::default();
    change(&mut options);
    options
}

/// The error of a call that must fail.
fn refused<T>(result: Result<T, KeysError>, why: &str) -> KeysError {
    match result {
        Ok(_) => panic!("accepted: {why}"),
        Err(e) => e,
    }
}

/// Runs `body` in a child process of this binary with SoftHSM configured for a fresh
/// token directory holding initialised tokens labelled `tokens`. Skips (with a
/// message) without `DPOP_TEST_SOFTHSM_MODULE`.
fn with_softhsm(test: &str, tokens: &[&str], body: impl FnOnce(&Fixture)) {
    let Some(module) = std::env::var_os("DPOP_TEST_SOFTHSM_MODULE").map(PathBuf::from) else {
        eprintln!(
            "skipped: set DPOP_TEST_SOFTHSM_MODULE to SoftHSM's PKCS#11 module (/usr/lib/softhsm/libsofthsm2.so, Debian package softhsm2)"
        );
        return;
    };
    if let Some(dir) = std::env::var_os(CHILD) {
        body(&Fixture {
            dir: PathBuf::from(dir),
            module,
        });
        return;
    }
    let dir = std::env::temp_dir().join(format!(
        "dpop-pkcs11-{}-{test}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    fs::DirBuilder::new().mode(0o700).create(&dir).unwrap();
    fs::DirBuilder::new()
        .mode(0o700)
        .create(dir.join("tokens"))
        .unwrap();
    let conf = dir.join("softhsm2.conf");
    fs::write(
        &conf,
        format!(
            "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n",
            dir.join("tokens").display()
        ),
    )
    .unwrap();
    let fixture = Fixture {
        dir: dir.clone(),
        module,
    };
    fixture.secret_file("pin", USER_PIN);
    for label in tokens {
        let out = Command::new("softhsm2-util")
            .env("SOFTHSM2_CONF", &conf)
            .args(["--init-token", "--free", "--label", label])
            .args(["--so-pin", SO_PIN, "--pin", USER_PIN])
            .output()
            .expect("softhsm2-util (Debian package softhsm2)");
        assert!(
            out.status.success(),
            "softhsm2-util: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let out = Command::new(std::env::current_exe().unwrap())
        .env("SOFTHSM2_CONF", &conf)
        .env(CHILD, &dir)
        .args(["--exact", test, "--nocapture", "--test-threads=1"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains(&format!("test {test} ... ok")),
        "the child run of {test} failed:\n{stdout}\n{stderr}"
    );
    fs::remove_dir_all(&dir).unwrap();
}

/// The error of opening `uri`, checked not to show a PIN.
fn open_error(uri: &str, options: &OpenOptions) -> KeysError {
    let e = refused(dpop_keys::open(&device(uri), options), uri);
    shows_no_pin(&e.to_string());
    shows_no_pin(&format!("{e:?}"));
    e
}

fn shows_no_pin(text: &str) {
    for pin in [USER_PIN, SO_PIN, WRONG_PIN] {
        assert!(!text.contains(pin), "{text:?} shows a PIN");
    }
}

#[test]
fn an_es256_key_made_in_the_token_signs_proofs_and_cannot_be_read_out() {
    with_softhsm(
        "an_es256_key_made_in_the_token_signs_proofs_and_cannot_be_read_out",
        &["alpha"],
        |f| {
            let uri = f.uri("alpha", "object=dpop-es256");
            let key = device(&uri);
            let signer = dpop_keys::generate(&key, Algorithm::Es256, &options()).unwrap();
            assert_eq!(signer.algorithm(), Algorithm::Es256);
            assert!(signer.blocks());
            assert_proof_verifies(&*signer);
            let signature = signer.sign(INPUT).unwrap();
            assert_eq!(signature.len(), 64);
            assert_openssl_verifies(&*signer, INPUT, &signature);

            // The same key, opened again, has the same thumbprint.
            let again = dpop_keys::open(&key, &options()).unwrap();
            assert_eq!(
                again.public_jwk().thumbprint(),
                signer.public_jwk().thumbprint()
            );
            assert_proof_verifies(&*again);

            // The token says the private key is sensitive and was never extractable.
            let session = f.raw_session("alpha");
            let found = session
                .find_objects(&[
                    Attribute::Class(ObjectClass::PRIVATE_KEY),
                    Attribute::Label(b"dpop-es256".to_vec()),
                ])
                .unwrap();
            assert_eq!(found.len(), 1);
            let attrs = session
                .get_attributes(
                    found[0],
                    &[
                        AttributeType::Token,
                        AttributeType::Private,
                        AttributeType::Sensitive,
                        AttributeType::AlwaysSensitive,
                        AttributeType::Extractable,
                        AttributeType::NeverExtractable,
                        AttributeType::Sign,
                        AttributeType::Id,
                        AttributeType::Value,
                    ],
                )
                .unwrap();
            for expected in [
                Attribute::Token(true),
                Attribute::Private(true),
                Attribute::Sensitive(true),
                Attribute::AlwaysSensitive(true),
                Attribute::Extractable(false),
                Attribute::NeverExtractable(true),
                Attribute::Sign(true),
            ] {
                assert!(attrs.contains(&expected), "{expected:?} not in {attrs:?}");
            }
            assert!(
                !attrs.iter().any(|a| matches!(a, Attribute::Value(_))),
                "the private value was readable"
            );
            // Without id= the pair got a random 16-byte CKA_ID, the same on both halves.
            let id = attrs
                .iter()
                .find_map(|a| match a {
                    Attribute::Id(id) => Some(id.clone()),
                    _ => None,
                })
                .unwrap();
            assert_eq!(id.len(), 16);
            let public = session
                .find_objects(&[Attribute::Class(ObjectClass::PUBLIC_KEY), Attribute::Id(id)])
                .unwrap();
            assert_eq!(public.len(), 1);
            // The public half can be neither seen nor changed without the PIN: nobody
            // can delete it or plant another public key under its id.
            let public_attrs = session
                .get_attributes(
                    public[0],
                    &[AttributeType::Private, AttributeType::Modifiable],
                )
                .unwrap();
            assert!(
                public_attrs.contains(&Attribute::Private(true))
                    && public_attrs.contains(&Attribute::Modifiable(false)),
                "{public_attrs:?}"
            );
            let out = Command::new("pkcs11-tool")
                .arg("--module")
                .arg(&f.module)
                .args([
                    "--token-label",
                    "alpha",
                    "--list-objects",
                    "--type",
                    "pubkey",
                ])
                .output()
                .expect("pkcs11-tool (Debian package opensc)");
            assert!(
                !String::from_utf8_lossy(&out.stdout).contains("dpop-es256"),
                "the public half shows without the login: {out:?}"
            );

            // OpenSSL's pkcs11-tool, logged in, sees the key and no private value.
            let out = Command::new("pkcs11-tool")
                .arg("--module")
                .arg(&f.module)
                .args(["--token-label", "alpha", "--login", "--pin", USER_PIN])
                .args(["--list-objects", "--type", "privkey"])
                .output()
                .expect("pkcs11-tool (Debian package opensc)");
            let listed = String::from_utf8_lossy(&out.stdout);
            assert!(out.status.success(), "{listed}");
            assert!(listed.contains("dpop-es256"), "{listed}");
            assert!(listed.contains("never extractable"), "{listed}");
            assert!(!listed.to_lowercase().contains("value:"), "{listed}");
        },
    );
}

#[test]
fn ed25519_es384_and_es512_keys_sign_proofs() {
    with_softhsm(
        "ed25519_es384_and_es512_keys_sign_proofs",
        &["alpha"],
        |f| {
            for (alg, object) in [
                (Algorithm::EdDsa, "object=dpop-ed25519;id=%0e%d2"),
                (Algorithm::Es384, "object=dpop-es384"),
                (Algorithm::Es512, "object=dpop-es512"),
            ] {
                let key = device(&f.uri("alpha", object));
                let signer = dpop_keys::generate(&key, alg, &options()).unwrap();
                assert_eq!(signer.algorithm(), alg);
                assert_proof_verifies(&*signer);
                if alg != Algorithm::Es512 {
                    let signature = signer.sign(INPUT).unwrap();
                    assert_openssl_verifies(&*signer, INPUT, &signature);
                }
                let again = dpop_keys::open(&key, &options()).unwrap();
                assert_eq!(
                    again.public_jwk().thumbprint(),
                    signer.public_jwk().thumbprint(),
                    "{alg}"
                );
            }
            // The Ed25519 key by its id alone, under the RFC 9864 name.
            let by_id = device(&f.uri("alpha", "id=%0E%D2"));
            let signer =
                dpop_keys::open(&by_id, &options_with(|o| o.alg = Some(Algorithm::Ed25519)))
                    .unwrap();
            assert_eq!(signer.algorithm(), Algorithm::Ed25519);
            assert_proof_verifies(&*signer);
        },
    );
}

/// Keys made by another program (OpenSC's pkcs11-tool, as the documentation shows),
/// named by id alone, open and sign.
#[test]
fn keys_made_by_pkcs11_tool_open_by_id() {
    with_softhsm("keys_made_by_pkcs11_tool_open_by_id", &["alpha"], |f| {
        for (key_type, id, alg) in [
            ("EC:prime256v1", "01", Algorithm::Es256),
            ("EC:edwards25519", "02", Algorithm::EdDsa),
        ] {
            let out = Command::new("pkcs11-tool")
                .arg("--module")
                .arg(&f.module)
                .args(["--token-label", "alpha", "--login", "--pin", USER_PIN])
                .args([
                    "--keypairgen",
                    "--key-type",
                    key_type,
                    "--label",
                    "made-elsewhere",
                ])
                .args(["--id", id, "--usage-sign", "--sensitive"])
                .output()
                .expect("pkcs11-tool (Debian package opensc)");
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let signer =
                dpop_keys::open(&device(&f.uri("alpha", &format!("id=%{id}"))), &options())
                    .unwrap();
            assert_eq!(signer.algorithm(), alg);
            assert_proof_verifies(&*signer);
        }
        // Both share the label: by label alone the key is ambiguous.
        let e = open_error(&f.uri("alpha", "object=made-elsewhere"), &options());
        assert!(e.to_string().contains("2 private keys match"), "{e}");
    });
}

#[test]
fn eight_threads_sign_at_once_through_two_sessions() {
    with_softhsm(
        "eight_threads_sign_at_once_through_two_sessions",
        &["alpha"],
        |f| {
            let key = device(&f.uri("alpha", "object=busy"));
            dpop_keys::generate(&key, Algorithm::Es256, &options()).unwrap();
            let signer: Arc<dyn Signer> = dpop_keys::open(
                &key,
                &options_with(|o| {
                    o.sessions = 2;
                    o.wait = Duration::from_secs(30);
                }),
            )
            .unwrap();
            sign_from_threads(&signer, 8, 10);

            // One session and no waiting: callers that find it taken fail at once,
            // saying the device is busy; the others still sign.
            let hurried: Arc<dyn Signer> = dpop_keys::open(
                &key,
                &options_with(|o| {
                    o.sessions = 1;
                    o.wait = Duration::ZERO;
                }),
            )
            .unwrap();
            let threads: Vec<_> = (0..8)
                .map(|_| {
                    let signer = Arc::clone(&hurried);
                    std::thread::spawn(move || {
                        let mut busy = 0;
                        for _ in 0..200 {
                            match signer.sign(INPUT) {
                                Ok(signature) => assert!(signer.public_jwk().verify(
                                    Algorithm::Es256,
                                    INPUT,
                                    &signature
                                )),
                                Err(KeyError::Device(why)) => {
                                    assert!(why.contains("the device is busy"), "{why}");
                                    assert!(why.contains("object=busy"), "{why}");
                                    busy += 1;
                                }
                                Err(other) => panic!("{other}"),
                            }
                        }
                        busy
                    })
                })
                .collect();
            let busy: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
            assert!(busy > 0, "8 threads over one session never collided");
            assert!(busy < 8 * 200, "no signature at all");
        },
    );
}

#[test]
fn every_wrong_reference_is_refused_precisely_without_showing_the_pin() {
    with_softhsm(
        "every_wrong_reference_is_refused_precisely_without_showing_the_pin",
        &["alpha", "beta"],
        |f| {
            let good = f.uri("alpha", "object=k1");
            let first = dpop_keys::generate(&device(&good), Algorithm::Es256, &options()).unwrap();
            let jkt = first.public_jwk().thumbprint().clone();
            // Its sessions close: the process is logged out of the token again.
            drop(first);

            // An empty PIN is never sent to the token (it would use up one try).
            let empty = f.secret_file("empty-pin", "");
            let empty_uri = good.replace(
                &f.pin_file().display().to_string(),
                &empty.display().to_string(),
            );
            let e = open_error(&empty_uri, &options());
            assert!(e.is_config() && e.code().is_none(), "{e}");
            assert!(e.to_string().contains("holds an empty PIN"), "{e}");

            // A wrong PIN: the token's own code, a configuration error.
            let wrong = f.secret_file("wrong-pin", WRONG_PIN);
            let wrong_uri = good.replace(
                &f.pin_file().display().to_string(),
                &wrong.display().to_string(),
            );
            let e = open_error(&wrong_uri, &options());
            assert!(e.is_config(), "{e}");
            assert_eq!(e.code(), Some("CKR_PIN_INCORRECT"), "{e}");
            assert!(e.to_string().contains("CKR_PIN_INCORRECT"), "{e}");
            assert!(e.to_string().contains("wrong-pin"), "names the file: {e}");
            // While a signer keeps the token logged in, C_Login no longer checks the
            // PIN: the wrong one is still refused.
            let first = dpop_keys::open(&device(&good), &options()).unwrap();
            assert_eq!(first.public_jwk().thumbprint(), &jkt);
            let e = open_error(&wrong_uri, &options());
            assert!(e.is_config(), "{e}");
            assert!(
                e.to_string().contains("not the one this process logged in"),
                "{e}"
            );

            // A PIN written into the URI: refused unless dangerously allowed.
            let in_uri = format!(
                "pkcs11:token=alpha;object=k1?module-path={}&pin-value={USER_PIN}",
                f.module.display()
            );
            let e = open_error(&in_uri, &options());
            assert!(e.is_config() && e.to_string().contains("pin-source"), "{e}");
            let allowed = options_with(|o| o.dangerous_allow_pin_value = true);
            let signer = dpop_keys::open(&device(&in_uri), &allowed).unwrap();
            assert_eq!(
                signer.public_jwk().thumbprint(),
                first.public_jwk().thumbprint()
            );

            // No PIN at all for a token that needs one.
            let no_pin = format!(
                "pkcs11:token=alpha;object=k1?module-path={}",
                f.module.display()
            );
            let e = open_error(&no_pin, &options());
            assert!(e.to_string().contains("needs the user PIN"), "{e}");

            // A PIN file others can read.
            let loose = f.dir.join("loose-pin");
            fs::write(&loose, USER_PIN).unwrap();
            let uri = good.replace(
                &f.pin_file().display().to_string(),
                &loose.display().to_string(),
            );
            let e = open_error(&uri, &options());
            assert!(e.to_string().contains("chmod 600"), "{e}");

            // No such object.
            let e = open_error(&f.uri("alpha", "object=nope"), &options());
            assert!(e.is_config(), "{e}");
            assert!(
                e.to_string()
                    .contains("no private key with object=\"nope\""),
                "{e}"
            );
            let e = open_error(&f.uri("alpha", "object=k1;id=%99"), &options());
            assert!(e.to_string().contains("id=99"), "{e}");

            // Two private keys with one label (made by another program).
            let session = f.raw_session("alpha");
            for id in [1_u8, 2] {
                session
                    .generate_key_pair(
                        &Mechanism::EccKeyPairGen,
                        &[
                            Attribute::Token(true),
                            Attribute::EcParams(vec![
                                0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07,
                            ]),
                            Attribute::Label(b"twin".to_vec()),
                            Attribute::Id(vec![id]),
                        ],
                        &[
                            Attribute::Token(true),
                            Attribute::Private(true),
                            Attribute::Sensitive(true),
                            Attribute::Sign(true),
                            Attribute::Label(b"twin".to_vec()),
                            Attribute::Id(vec![id]),
                        ],
                    )
                    .unwrap();
            }
            let e = open_error(&f.uri("alpha", "object=twin"), &options());
            assert!(e.is_config(), "{e}");
            assert!(e.to_string().contains("2 private keys match"), "{e}");
            let one = dpop_keys::open(&device(&f.uri("alpha", "object=twin;id=%02")), &options())
                .unwrap();
            assert_proof_verifies(&*one);

            // The wrong token, and a URI that matches two tokens.
            let e = open_error(&f.uri("gamma", "object=k1"), &options());
            assert!(e.is_config(), "{e}");
            let text = e.to_string();
            assert!(text.contains("no token matches"), "{text}");
            assert!(
                text.contains("\"alpha\"") && text.contains("\"beta\""),
                "{text}"
            );
            let both = format!(
                "pkcs11:object=k1?module-path={}&pin-source=file:{}",
                f.module.display(),
                f.pin_file().display()
            );
            let e = open_error(&both, &options());
            assert!(e.to_string().contains("2 tokens match"), "{e}");
            let e = open_error(&f.uri("beta", "object=k1"), &options());
            assert!(e.to_string().contains("no private key"), "{e}");

            // An algorithm that does not fit the key.
            for alg in [Algorithm::Es384, Algorithm::EdDsa, Algorithm::Rs256] {
                let e = open_error(&good, &options_with(|o| o.alg = Some(alg)));
                assert!(e.is_config(), "{e}");
                assert!(e.to_string().contains(&format!("cannot sign {alg}")), "{e}");
            }

            // Generating over an existing label or id is refused, and the old key stays.
            let e = refused(
                dpop_keys::generate(&device(&good), Algorithm::Es256, &options()),
                "the label is taken",
            );
            assert!(e.is_config(), "{e}");
            assert!(e.to_string().contains("never overwritten"), "{e}");
            let e = refused(
                dpop_keys::generate(
                    &device(&f.uri("alpha", "object=fresh;id=%01")),
                    Algorithm::Es256,
                    &options(),
                ),
                "the id is taken",
            );
            assert!(e.to_string().contains("with id 01"), "{e}");
            let still = dpop_keys::open(&device(&good), &options()).unwrap();
            assert_eq!(
                still.public_jwk().thumbprint(),
                first.public_jwk().thumbprint()
            );
            assert!(
                open_error(&f.uri("alpha", "object=fresh"), &options())
                    .to_string()
                    .contains("no private key"),
                "a refused generate leaves nothing behind"
            );

            // Key types this backend does not make.
            for alg in [Algorithm::Rs256, Algorithm::MlDsa65] {
                let e = refused(
                    dpop_keys::generate(&device(&f.uri("alpha", "object=other")), alg, &options()),
                    "not supported",
                );
                assert!(e.is_config(), "{e}");
                assert!(e.to_string().contains(&format!("cannot make {alg}")), "{e}");
            }
        },
    );
}

/// Without any SoftHSM: a module path that names nothing, or a file that is not a
/// PKCS#11 module, is a configuration error naming the path and the fix.
#[test]
fn a_missing_module_or_a_library_that_is_not_pkcs11_is_refused() {
    let dir = std::env::temp_dir().join(format!("dpop-pkcs11-modules-{}", std::process::id()));
    fs::DirBuilder::new().mode(0o700).create(&dir).unwrap();
    let uri = |module: &Path| {
        format!(
            "pkcs11:token=t;object=k?module-path={}&pin-source=env:DPOP_TEST_UNUSED_PIN",
            module.display()
        )
    };
    let missing = dir.join("no-such-module.so");
    // The PIN is read before the module is loaded: give it one.
    let opened = |module: &Path| {
        let key = device(&uri(module));
        dpop_keys::open(&key, &options()).map(|_| ())
    };
    let pin_uri = |module: &Path| {
        format!(
            "pkcs11:token=t;object=k?module-path={}&pin-value=1234",
            module.display()
        )
    };
    let open_with_pin = |module: &Path| {
        refused(
            dpop_keys::open(
                &device(&pin_uri(module)),
                &options_with(|o| o.dangerous_allow_pin_value = true),
            ),
            "no usable module",
        )
    };
    // A relative module path: refused before anything is loaded from it.
    let e = open_with_pin(Path::new("softhsm/libsofthsm2.so"));
    assert!(e.is_config(), "{e}");
    assert!(e.to_string().contains("not an absolute path"), "{e}");
    let e = open_with_pin(&missing);
    assert!(e.is_config(), "{e}");
    let text = e.to_string();
    assert!(text.contains("no-such-module.so"), "{text}");
    assert!(text.contains("cannot be found"), "{text}");
    assert!(text.contains("set module-path"), "{text}");
    assert!(!text.contains("1234"), "{text}");
    // Without the PIN variable, the PIN error comes first, still naming no secret.
    assert!(
        opened(&missing)
            .unwrap_err()
            .to_string()
            .contains("DPOP_TEST_UNUSED_PIN")
    );

    let text_file = dir.join("module.so");
    fs::write(&text_file, "not a shared library").unwrap();
    let e = open_with_pin(&text_file);
    assert!(e.is_config(), "{e}");
    assert!(
        e.to_string().contains("cannot load the PKCS#11 module"),
        "{e}"
    );
    assert!(e.to_string().contains("module.so"), "{e}");

    let e = open_with_pin(&dir);
    assert!(e.to_string().contains("is not a file"), "{e}");

    // A real shared library without the PKCS#11 entry points.
    let libz = [
        "/usr/lib/x86_64-linux-gnu/libz.so.1",
        "/lib/x86_64-linux-gnu/libz.so.1",
        "/usr/lib/aarch64-linux-gnu/libz.so.1",
        "/lib/aarch64-linux-gnu/libz.so.1",
        "/usr/lib64/libz.so.1",
    ]
    .into_iter()
    .map(Path::new)
    .find(|p| p.exists());
    match libz {
        Some(libz) => {
            let e = open_with_pin(libz);
            assert!(e.is_config(), "{e}");
            assert!(e.to_string().contains("is not a PKCS#11 module"), "{e}");
            assert!(e.to_string().contains("C_GetFunctionList"), "{e}");
        }
        None => eprintln!("no libz found: the not-a-module case with a real library is skipped"),
    }
    fs::remove_dir_all(&dir).unwrap();
}

/// A private key the token would hand out (not sensitive, extractable: what
/// `pkcs11-tool --keypairgen` makes without `--sensitive`) is refused: anyone with the
/// PIN can copy it, which is what a key in a device is meant to prevent.
#[test]
fn a_key_that_can_be_read_out_of_the_token_is_refused() {
    with_softhsm(
        "a_key_that_can_be_read_out_of_the_token_is_refused",
        &["gamma"],
        |f| {
            let session = f.raw_session("gamma");
            let params = vec![0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
            let (_, private) = session
                .generate_key_pair(
                    &Mechanism::EccKeyPairGen,
                    &[
                        Attribute::Token(true),
                        Attribute::Verify(true),
                        Attribute::EcParams(params),
                        Attribute::Id(vec![0x0e]),
                    ],
                    &[
                        Attribute::Token(true),
                        Attribute::Private(true),
                        Attribute::Sensitive(false),
                        Attribute::Extractable(true),
                        Attribute::Sign(true),
                        Attribute::Id(vec![0x0e]),
                    ],
                )
                .unwrap();
            // The token gives the private scalar to anyone logged in: a big-endian
            // integer below the group order, without its leading zero bytes (SoftHSM
            // returns 31 bytes or fewer for one key in 256).
            let value = session
                .get_attributes(private, &[AttributeType::Value])
                .unwrap();
            assert!(
                matches!(value.as_slice(), [Attribute::Value(v)]
                    if (1..=32).contains(&v.len()) && v.iter().any(|b| *b != 0)),
                "{value:?}"
            );
            let e = open_error(&f.uri("gamma", "id=%0e"), &options());
            assert!(e.is_config(), "{e}");
            assert!(e.to_string().contains("can be read out"), "{e}");
        },
    );
}
