//! TPM 2.0 keys against a real software TPM (swtpm): keys made inside it, proofs signed
//! with them that dpop-core and OpenSSL verify, the attributes that keep them inside,
//! and every refusal. Each test starts its own swtpm (`DPOP_TEST_SWTPM`, the path of
//! the binary) on a free loopback port pair with its state in a fresh directory.
#![cfg(feature = "tpm")]

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dpop_core::{Algorithm, Signer};
use dpop_keys::{DeviceKey, KeyRef, KeysError, OpenOptions};
use dpop_test::{
    SwTpm, assert_openssl_verifies, assert_proof_verifies, free_port_pair,
    private_temp_dir as temp_dir, sign_from_threads,
};

/// A `tpm2:` reference: `what` (`handle=…` or `file=…`), then `query` after the TCTI.
fn tpm_key(tpm: &SwTpm, what: &str, query: &str) -> DeviceKey {
    let text = format!("tpm2:{what}?tcti={}{query}", tpm.tcti());
    match KeyRef::parse(&text).unwrap() {
        KeyRef::Device(d) => d,
        other => panic!("{text} parsed as {other:?}"),
    }
}

fn options() -> OpenOptions {
    OpenOptions::default()
}

fn dangerous() -> OpenOptions {
    let mut o = OpenOptions::default();
    o.dangerous_allow_pin_value = true;
    o
}

fn with_alg(alg: Algorithm) -> OpenOptions {
    let mut o = OpenOptions::default();
    o.alg = Some(alg);
    o
}

fn open(key: &DeviceKey, options: &OpenOptions) -> Arc<dyn Signer> {
    dpop_keys::open(key, options).unwrap_or_else(|e| panic!("{e}"))
}

fn open_err(key: &DeviceKey, options: &OpenOptions) -> KeysError {
    match dpop_keys::open(key, options) {
        Ok(_) => panic!("{key} opened"),
        Err(e) => e,
    }
}

#[test]
fn a_key_made_at_a_persistent_handle_signs_proofs_that_verify() {
    let Some(tpm) = SwTpm::start() else { return };
    let key = tpm_key(&tpm, "handle=0x81000010", "");
    let made = dpop_keys::generate(&key, Algorithm::Es256, &options()).unwrap();
    assert_eq!(made.algorithm(), Algorithm::Es256);
    let jkt = made.public_jwk().thumbprint().clone();
    drop(made); // swtpm serves one connection at a time

    let signer = open(&key, &options());
    assert!(signer.blocks(), "a TPM signer waits on the device");
    assert_eq!(signer.algorithm(), Algorithm::Es256);
    assert_eq!(signer.public_jwk().thumbprint(), &jkt);
    assert_proof_verifies(&*signer);

    // An independent verifier (which also refuses a changed message).
    let message = b"signed inside the TPM";
    let signature = signer.sign(message).unwrap();
    assert_eq!(signature.len(), 64, "R || S, each 32 bytes");
    assert_openssl_verifies(&*signer, message, &signature);
    drop(signer);

    // The private key cannot leave the TPM: tpm2-tools reads the attributes back.
    let public = tpm.readpublic("0x81000010");
    let attributes = public
        .lines()
        .find(|l| l.trim_start().starts_with("value:") && l.contains("sign"))
        .unwrap_or_else(|| panic!("no attributes in {public}"));
    for flag in ["fixedtpm", "fixedparent", "sensitivedataorigin", "sign"] {
        assert!(attributes.contains(flag), "{flag} missing: {attributes}");
    }
    for flag in ["decrypt", "restricted"] {
        assert!(!attributes.contains(flag), "{flag} set: {attributes}");
    }
}

#[test]
fn a_key_file_is_made_0600_and_opens_to_the_same_key_after_a_restart() {
    let Some(mut tpm) = SwTpm::start() else {
        return;
    };
    let dir = temp_dir("file");
    let path = dir.join("client.tpmkey");
    let what = format!("file={}", path.display());
    let key = tpm_key(&tpm, &what, "");
    let jkt = dpop_keys::generate(&key, Algorithm::Es256, &options())
        .unwrap()
        .public_jwk()
        .thumbprint()
        .clone();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
    assert!(std::fs::read(&path).unwrap().starts_with(b"DPOPTPM1"));

    for _ in 0..2 {
        let signer = open(&key, &options());
        assert_eq!(signer.public_jwk().thumbprint(), &jkt);
        assert_proof_verifies(&*signer);
    }
    // Each connection flushes what it loaded (the TPM has room for about three
    // transient objects): nothing stays behind.
    let held = open(&key, &options());
    assert!(
        !tpm.transient_handles().is_empty(),
        "an open key file is loaded"
    );
    drop(held);
    for _ in 0..4 {
        drop(open(&key, &options()));
    }
    assert_eq!(tpm.transient_handles(), "", "transient objects left loaded");

    // The storage primary key is made again from its template: the same key, so the
    // file still loads after a reboot.
    tpm.restart();
    let key = tpm_key(&tpm, &what, "");
    let signer = open(&key, &options());
    assert_eq!(signer.public_jwk().thumbprint(), &jkt);
    assert_proof_verifies(&*signer);
    drop(signer);

    // A persistent key survives the restart too.
    let handle = tpm_key(&tpm, "handle=0x81000011", "");
    let jkt = dpop_keys::generate(&handle, Algorithm::Es256, &options())
        .unwrap()
        .public_jwk()
        .thumbprint()
        .clone();
    tpm.restart();
    let handle = tpm_key(&tpm, "handle=0x81000011", "");
    assert_eq!(open(&handle, &options()).public_jwk().thumbprint(), &jkt);

    // A file from another TPM (here: the same TPM after a clear would do the same)
    // is refused rather than silently replaced.
    std::fs::write(dir.join("garbage.tpmkey"), b"DPOPTPM1\x00\x01x\x00\x00").unwrap();
    let garbage = tpm_key(
        &tpm,
        &format!("file={}", dir.join("garbage.tpmkey").display()),
        "",
    );
    let e = open_err(&garbage, &options());
    assert!(e.is_config(), "{e}");
    assert!(e.to_string().contains("garbage.tpmkey"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn p384_keys_sign_es384() {
    let Some(tpm) = SwTpm::start() else { return };
    let key = tpm_key(&tpm, "handle=0x81000012", "");
    drop(dpop_keys::generate(&key, Algorithm::Es384, &options()).unwrap());
    let signer = open(&key, &options());
    assert_eq!(signer.algorithm(), Algorithm::Es384);
    assert_eq!(signer.sign(b"x").unwrap().len(), 96);
    assert_proof_verifies(&*signer);
}

#[test]
fn eight_threads_sign_at_once() {
    let Some(tpm) = SwTpm::start() else { return };
    let key = tpm_key(&tpm, "handle=0x81000013", "");
    drop(dpop_keys::generate(&key, Algorithm::Es256, &options()).unwrap());
    let signer = open(&key, &with_alg(Algorithm::Es256));
    sign_from_threads(&signer, 8, 5);
}

#[test]
fn the_auth_value_is_required_and_a_wrong_one_is_refused_with_the_tpm_code() {
    let Some(tpm) = SwTpm::start() else { return };
    let dir = temp_dir("auth");
    let auth = dir.join("auth");
    std::fs::write(&auth, "correct horse\n").unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&auth, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let source = format!("&auth-source=file:{}", auth.display());
    let key = tpm_key(&tpm, "handle=0x81000014", &source);
    drop(dpop_keys::generate(&key, Algorithm::Es256, &options()).unwrap());
    assert_proof_verifies(&*open(&key, &options()));

    // The same value written into the URI: refused without the dangerous option.
    let inline = tpm_key(&tpm, "handle=0x81000014", "&auth-value=correct%20horse");
    let e = open_err(&inline, &options());
    assert!(e.is_config(), "{e}");
    assert!(e.to_string().contains("auth-source"), "{e}");
    assert!(!e.to_string().contains("correct"), "the value shows: {e}");
    assert_proof_verifies(&*open(&inline, &dangerous()));

    // A wrong value: the TPM's own code, and the value nowhere in the message. One
    // failure only, on a fresh TPM, far from dictionary-attack lockout.
    let wrong = tpm_key(&tpm, "handle=0x81000014", "&auth-value=battery%20staple");
    let e = open_err(&wrong, &dangerous());
    assert!(e.is_config(), "{e}");
    assert_eq!(e.code(), Some("TPM_RC_AUTH_FAIL"), "{e}");
    assert!(e.to_string().contains("TPM_RC_AUTH_FAIL"), "{e}");
    assert!(!e.to_string().contains("staple"), "the value shows: {e}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn refusals_name_the_key_and_the_reason() {
    let Some(tpm) = SwTpm::start() else { return };

    // No key at the handle.
    let empty = tpm_key(&tpm, "handle=0x81000020", "");
    let e = open_err(&empty, &options());
    assert!(e.is_config(), "{e}");
    assert_eq!(e.code(), Some("TPM_RC_HANDLE"), "{e}");
    assert!(e.to_string().contains("0x81000020"), "{e}");

    // An occupied handle is never overwritten.
    let key = tpm_key(&tpm, "handle=0x81000021", "");
    let jkt = dpop_keys::generate(&key, Algorithm::Es256, &options())
        .unwrap()
        .public_jwk()
        .thumbprint()
        .clone();
    let e = match dpop_keys::generate(&key, Algorithm::Es256, &options()) {
        Ok(_) => panic!("an occupied handle was overwritten"),
        Err(e) => e,
    };
    assert!(e.is_config(), "{e}");
    assert!(e.to_string().contains("already holds"), "{e}");
    assert_eq!(open(&key, &options()).public_jwk().thumbprint(), &jkt);

    // An algorithm the key cannot sign.
    let e = open_err(&key, &with_alg(Algorithm::Es384));
    assert!(e.is_config(), "{e}");
    assert!(e.to_string().contains("ES384"), "{e}");
    let e = match dpop_keys::generate(
        &tpm_key(&tpm, "handle=0x81000022", ""),
        Algorithm::Ed25519,
        &options(),
    ) {
        Ok(_) => panic!("an Ed25519 key was made"),
        Err(e) => e,
    };
    assert!(e.is_config(), "{e}");
    assert!(
        open_err(&tpm_key(&tpm, "handle=0x81000022", ""), &options()).is_config(),
        "nothing was made at the handle"
    );

    // An existing file is never overwritten.
    let dir = temp_dir("exists");
    let path = dir.join("taken");
    std::fs::write(&path, b"someone else's").unwrap();
    let file = tpm_key(&tpm, &format!("file={}", path.display()), "");
    let e = match dpop_keys::generate(&file, Algorithm::Es256, &options()) {
        Ok(_) => panic!("an existing file was overwritten"),
        Err(e) => e,
    };
    assert!(e.is_config(), "{e}");
    assert!(e.to_string().contains("already exists"), "{e}");
    assert_eq!(std::fs::read(&path).unwrap(), b"someone else's");
    let _ = std::fs::remove_dir_all(&dir);

    // Nothing listening: a device error naming the TCTI.
    let port = free_port_pair();
    let text = format!("tpm2:handle=0x81000010?tcti=swtpm:host=127.0.0.1,port={port}");
    let KeyRef::Device(absent) = KeyRef::parse(&text).unwrap() else {
        panic!()
    };
    let e = open_err(&absent, &options());
    assert!(!e.is_config(), "{e}");
    assert_eq!(e.code(), Some("TSS2_TCTI_RC_IO_ERROR"), "{e}");
    assert!(
        e.to_string()
            .contains(&format!("swtpm:host=127.0.0.1,port={port}")),
        "{e}"
    );

    // No TCTI at all (only checkable when the environment names none).
    if std::env::var_os("TPM2TOOLS_TCTI").is_none() && std::env::var_os("TCTI").is_none() {
        let KeyRef::Device(bare) = KeyRef::parse("tpm2:handle=0x81000010").unwrap() else {
            panic!()
        };
        let e = open_err(&bare, &options());
        assert!(e.is_config(), "{e}");
        assert!(e.to_string().contains("TPM2TOOLS_TCTI"), "{e}");
    }
}

#[test]
fn a_signer_reconnects_after_the_tpm_restarts_but_never_to_another_key() {
    let Some(mut tpm) = SwTpm::start() else {
        return;
    };
    let dir = temp_dir("reconnect");
    let file = tpm_key(&tpm, &format!("file={}", dir.join("key").display()), "");
    drop(dpop_keys::generate(&file, Algorithm::Es256, &options()).unwrap());
    let signer = open(&file, &options());
    signer.sign(b"before").unwrap();

    // A reboot unloads the key file's object: that signature fails, and the next one
    // reconnects and loads the key again.
    tpm.restart_in_place();
    let lost = signer.sign(b"lost").unwrap_err().to_string();
    assert!(lost.contains("TPM_RC_"), "{lost}");
    let signature = signer.sign(b"after").unwrap();
    assert!(
        signer
            .public_jwk()
            .verify(Algorithm::Es256, b"after", &signature)
    );
    drop(signer);

    // Another key put at a persistent handle behind the signer's back: its signature
    // is caught (it does not verify against the key opened), and the reconnection
    // after it refuses the other key.
    let key = tpm_key(&tpm, "handle=0x81000015", "");
    drop(dpop_keys::generate(&key, Algorithm::Es256, &options()).unwrap());
    let signer = open(&key, &options());
    signer.sign(b"before").unwrap();
    tpm.evict("0x81000015");
    drop(dpop_keys::generate(&key, Algorithm::Es256, &options()).unwrap());
    let e = signer.sign(b"with another key").unwrap_err().to_string();
    assert!(e.contains("does not verify"), "{e}");
    let e = signer.sign(b"with another key").unwrap_err().to_string();
    assert!(e.contains("changed"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn keys_made_by_tpm2_tools_open_as_a_handle_or_a_file() {
    let Some(tpm) = SwTpm::start() else { return };
    let dir = temp_dir("tools");
    let d = Some(dir.as_path());
    tpm.tpm2(
        &["tpm2_createprimary", "-Q", "-C", "o", "-c", "primary.ctx"],
        d,
    );
    tpm.tpm2(
        &[
            "tpm2_evictcontrol",
            "-C",
            "o",
            "-c",
            "primary.ctx",
            "0x81000001",
        ],
        d,
    );
    let attributes = "fixedtpm|fixedparent|sensitivedataorigin|userwithauth|sign";
    tpm.tpm2(
        &[
            "tpm2_create",
            "-Q",
            "-C",
            "0x81000001",
            "-G",
            "ecc256:ecdsa-sha256",
            "-a",
            attributes,
            "-u",
            "key.pub",
            "-r",
            "key.priv",
        ],
        d,
    );

    // The key file is our header, then exactly what tpm2_create wrote.
    let mut file = b"DPOPTPM1".to_vec();
    file.extend(std::fs::read(dir.join("key.pub")).unwrap());
    file.extend(std::fs::read(dir.join("key.priv")).unwrap());
    std::fs::write(dir.join("key.tpmkey"), file).unwrap();
    let what = format!(
        "file={};parent=0x81000001",
        dir.join("key.tpmkey").display()
    );
    let from_file = open(&tpm_key(&tpm, &what, ""), &options());
    assert_proof_verifies(&*from_file);
    let jkt = from_file.public_jwk().thumbprint().clone();
    drop(from_file);

    // The same key made persistent by tpm2-tools.
    tpm.tpm2(
        &[
            "tpm2_load",
            "-Q",
            "-C",
            "0x81000001",
            "-u",
            "key.pub",
            "-r",
            "key.priv",
            "-c",
            "key.ctx",
        ],
        d,
    );
    tpm.tpm2(
        &[
            "tpm2_evictcontrol",
            "-C",
            "o",
            "-c",
            "key.ctx",
            "0x81000030",
        ],
        d,
    );
    let persistent = open(&tpm_key(&tpm, "handle=0x81000030", ""), &options());
    assert_eq!(persistent.public_jwk().thumbprint(), &jkt);
    assert_proof_verifies(&*persistent);
    drop(persistent);

    // A duplicable key (no fixedTPM / fixedParent) is refused.
    tpm.tpm2(
        &[
            "tpm2_create",
            "-Q",
            "-C",
            "0x81000001",
            "-G",
            "ecc256:ecdsa-sha256",
            "-a",
            "sensitivedataorigin|userwithauth|sign",
            "-u",
            "dup.pub",
            "-r",
            "dup.priv",
        ],
        d,
    );
    let mut file = b"DPOPTPM1".to_vec();
    file.extend(std::fs::read(dir.join("dup.pub")).unwrap());
    file.extend(std::fs::read(dir.join("dup.priv")).unwrap());
    std::fs::write(dir.join("dup.tpmkey"), file).unwrap();
    let what = format!(
        "file={};parent=0x81000001",
        dir.join("dup.tpmkey").display()
    );
    let e = open_err(&tpm_key(&tpm, &what, ""), &options());
    assert!(e.is_config(), "{e}");
    assert!(e.to_string().contains("fixedTPM"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn callers_wait_a_bounded_time_for_a_busy_tpm() {
    let Some(tpm) = SwTpm::start() else { return };
    let key = tpm_key(&tpm, "handle=0x81000016", "");
    drop(dpop_keys::generate(&key, Algorithm::Es256, &options()).unwrap());
    let mut patient = OpenOptions::default();
    patient.wait = Duration::from_millis(300);
    let signer = open(&key, &patient);
    let pid = tpm.pid().unwrap().to_string();
    let signal = |s: &str| {
        assert!(
            Command::new("kill")
                .args([s, &pid])
                .status()
                .unwrap()
                .success()
        );
    };

    // A stopped TPM holds the one signature in progress; the next caller gives up
    // after the wait instead of queueing forever, and the first one completes once the
    // TPM answers again.
    signal("-STOP");
    let first = {
        let signer = Arc::clone(&signer);
        std::thread::spawn(move || signer.sign(b"first"))
    };
    std::thread::sleep(Duration::from_millis(200));
    let started = Instant::now();
    let e = signer.sign(b"second").unwrap_err().to_string();
    let waited = started.elapsed();
    signal("-CONT");
    assert!(e.contains("busy"), "{e}");
    assert!(
        waited >= Duration::from_millis(250) && waited < Duration::from_secs(3),
        "waited {waited:?}"
    );
    let signature = first.join().unwrap().unwrap();
    assert!(
        signer
            .public_jwk()
            .verify(Algorithm::Es256, b"first", &signature)
    );
    signer.sign(b"third").unwrap();
}

/// A key file that is a FIFO (or a directory) is refused at once, not waited on.
#[test]
fn a_key_file_that_is_not_a_regular_file_is_refused_without_waiting() {
    let Some(tpm) = SwTpm::start() else { return };
    let dir = temp_dir("tpm-fifo");
    let fifo = dir.join("key");
    assert!(
        Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    let key = tpm_key(&tpm, &format!("file={}", fifo.display()), "");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(dpop_keys::open(&key, &options()).map(|_| ()));
    });
    let e = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("opening a FIFO key file hangs")
        .unwrap_err();
    assert!(e.is_config(), "{e}");
    assert!(e.to_string().contains("not a regular file"), "{e}");
}
