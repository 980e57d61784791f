//! Key references as users write them: what parses, what is refused and why, and that a
//! PIN never shows.

use std::path::PathBuf;

use dpop_keys::{Backend, DeviceKey, KeyRef, KeysError, PinSource};

fn device(text: &str) -> DeviceKey {
    match KeyRef::parse(text).unwrap() {
        KeyRef::Device(d) => d,
        other => panic!("{text} parsed as {other:?}"),
    }
}

fn refused(text: &str) -> String {
    let e = KeyRef::parse(text).unwrap_err();
    assert!(e.is_config(), "{e}");
    e.to_string()
}

#[test]
fn files_are_paths_or_file_uris() {
    assert_eq!(
        KeyRef::parse("key.pem").unwrap(),
        KeyRef::File(PathBuf::from("key.pem"))
    );
    assert_eq!(
        KeyRef::parse("file:/etc/dpop/key.pem").unwrap(),
        KeyRef::File(PathBuf::from("/etc/dpop/key.pem"))
    );
    assert_eq!(
        KeyRef::parse("file:pkcs11:odd").unwrap(),
        KeyRef::File(PathBuf::from("pkcs11:odd"))
    );
    assert_eq!(
        KeyRef::parse("./pkcs11:odd").unwrap(),
        KeyRef::File(PathBuf::from("./pkcs11:odd"))
    );
    assert!(refused("file:").contains("names no path"));
}

#[test]
fn a_pkcs11_uri_names_token_object_id_module_and_pin_source() {
    let DeviceKey::Pkcs11(u) = device(
        "pkcs11:token=CI%20keys;object=deploy;id=%01%ff;type=private?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:/run/pin",
    ) else {
        panic!()
    };
    assert_eq!(u.token.as_deref(), Some("CI keys"));
    assert_eq!(u.object.as_deref(), Some("deploy"));
    assert_eq!(u.id.as_deref(), Some(&[0x01, 0xff][..]));
    assert_eq!(
        u.module_path,
        PathBuf::from("/usr/lib/softhsm/libsofthsm2.so")
    );
    assert_eq!(u.pin, Some(PinSource::File(PathBuf::from("/run/pin"))));
    let DeviceKey::Pkcs11(u) =
        device("pkcs11:slot-id=3;id=%2a?module-path=/m.so&pin-source=env:HSM_PIN")
    else {
        panic!()
    };
    assert_eq!(u.slot_id, Some(3));
    assert_eq!(u.pin, Some(PinSource::Env("HSM_PIN".into())));
}

#[test]
fn malformed_pkcs11_uris_are_refused_with_the_reason() {
    let m = "module-path=/m.so";
    for (text, why) in [
        (
            format!("pkcs11:objetc=k?{m}"),
            "unknown path attribute objetc",
        ),
        (
            format!("pkcs11:object=k?{m}&pin=1"),
            "unknown query attribute pin",
        ),
        (
            format!("pkcs11:object=k;object=j?{m}"),
            "object is given twice",
        ),
        (
            format!("pkcs11:object=k;module-path=/x?{m}"),
            "module-path is given twice",
        ),
        (
            "pkcs11:object=k;module-path=/x".to_owned(),
            "unknown path attribute module-path",
        ),
        (format!("pkcs11:object=k%zz?{m}"), "bad percent-encoding"),
        (format!("pkcs11:object=k%4?{m}"), "bad percent-encoding"),
        (format!("pkcs11:token=t?{m}"), "object=LABEL"),
        ("pkcs11:object=k".to_owned(), "no module-path"),
        (format!("pkcs11:object=k;type=cert?{m}"), "type=private"),
        (format!("pkcs11:object=k;slot-id=x?{m}"), "slot-id"),
        (
            format!("pkcs11:object=k?{m}&pin-source=/run/pin"),
            "file:PATH or env:NAME",
        ),
        (
            format!("pkcs11:object=k?{m}&pin-source=file:/p&pin-value=1"),
            "not both",
        ),
        (format!("pkcs11:object?{m}"), "not name=value"),
        (format!("pkcs11:object=%ff?{m}"), "not UTF-8"),
    ] {
        let e = refused(&text);
        assert!(e.contains(why), "{text}: {e}");
    }
}

#[test]
fn a_pin_in_the_uri_never_shows_and_is_refused_without_the_dangerous_option() {
    let text = "pkcs11:object=k;id=%01?pin-value=123456&module-path=/m.so";
    let key = KeyRef::parse(text).unwrap();
    for shown in [key.to_string(), format!("{key:?}")] {
        assert!(!shown.contains("123456"), "{shown}");
        assert!(shown.contains("pin-value=***&module-path=/m.so"), "{shown}");
    }
    let DeviceKey::Pkcs11(u) = key.device().unwrap().clone() else {
        panic!()
    };
    let pin = u.pin.unwrap();
    assert!(!format!("{pin:?}").contains("123456"));
    assert!(pin.read(false).unwrap_err().contains("dangerous"));
    assert_eq!(pin.read(true).unwrap().as_str(), "123456");
    // A syntax error elsewhere in the URI does not print the PIN either.
    let e = refused("pkcs11:objetc=k?pin-value=123456&module-path=/m.so");
    assert!(!e.contains("123456"), "{e}");
    let e = refused("tpm2:handle=0x81000001?auth-value=s3cret&tcti=x&auth-value=again");
    assert!(!e.contains("s3cret") && !e.contains("again"), "{e}");
}

#[test]
fn pin_files_must_be_owner_only_and_give_their_first_line() {
    let dir = std::env::temp_dir().join(format!("dpop-keys-pin-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("pin");
    std::fs::write(&path, "1234\nrest\n").unwrap();
    let source = PinSource::File(path.clone());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(source.read(false).unwrap_err().contains("chmod 600"));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    assert_eq!(source.read(false).unwrap().as_str(), "1234");
    assert!(
        PinSource::File(dir.join("absent"))
            .read(false)
            .unwrap_err()
            .contains("cannot open")
    );
    assert!(
        PinSource::File(dir.clone())
            .read(false)
            .unwrap_err()
            .contains("not a regular file")
    );
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(
        PinSource::Env("DPOP_KEYS_TEST_UNSET_PIN".into())
            .read(false)
            .unwrap_err()
            .contains("not set")
    );
}

#[test]
fn tpm2_uris_name_a_persistent_handle_or_a_key_file() {
    let DeviceKey::Tpm2(u) = device("tpm2:handle=0x81000010?tcti=swtpm:host=127.0.0.1,port=2321")
    else {
        panic!()
    };
    assert_eq!(u.handle, Some(0x8100_0010));
    assert_eq!(u.tcti.as_deref(), Some("swtpm:host=127.0.0.1,port=2321"));
    let DeviceKey::Tpm2(u) =
        device("tpm2:file=/var/lib/dpop/key.tpm;parent=0x81000001?auth-source=env:KEY_AUTH")
    else {
        panic!()
    };
    assert_eq!(u.file, Some(PathBuf::from("/var/lib/dpop/key.tpm")));
    assert_eq!(u.parent, Some(0x8100_0001));
    for (text, why) in [
        ("tpm2:handle=0x80000001", "persistent handle"),
        ("tpm2:handle=81000001", "hexadecimal"),
        ("tpm2:handle=0x81000001;file=/k", "not both"),
        ("tpm2:?tcti=x", "handle=0x81"),
        ("tpm2:tcti=x", "unknown path attribute tcti"),
        (
            "tpm2:handle=0x81000001;parent=0x81000002",
            "only for a key file",
        ),
        (
            "tpm2:handle=0x81000001?pin-source=file:/x",
            "unknown query attribute pin-source",
        ),
    ] {
        let e = refused(text);
        assert!(e.contains(why), "{text}: {e}");
    }
}

#[test]
fn awskms_uris_name_a_key_and_optionally_region_and_endpoint() {
    let DeviceKey::AwsKms(u) =
        device("awskms:key-id=alias/dpop-ci;region=eu-west-1?endpoint=http://127.0.0.1:4566")
    else {
        panic!()
    };
    assert_eq!(u.key_id, "alias/dpop-ci");
    assert_eq!(u.region.as_deref(), Some("eu-west-1"));
    assert_eq!(u.endpoint.as_deref(), Some("http://127.0.0.1:4566"));
    let DeviceKey::AwsKms(u) =
        device("awskms:key-id=arn:aws:kms:us-east-1:111122223333:key/1234abcd")
    else {
        panic!()
    };
    assert_eq!(u.key_id, "arn:aws:kms:us-east-1:111122223333:key/1234abcd");
    assert!(refused("awskms:region=eu-west-1").contains("no key-id"));
    assert!(refused("awskms:key-id=k;region=EU_WEST").contains("not a region"));
}

#[test]
fn errors_name_the_backend_and_exit_as_configuration_errors() {
    let e = KeyRef::parse("tpm2:handle=1").unwrap_err();
    assert_eq!(e.backend(), Backend::Tpm2);
    assert!(matches!(e, KeysError::Syntax { .. }));
    assert!(e.to_string().starts_with("tpm2:handle=1: "), "{e}");
}

/// However the PIN is written (first in the path, in capitals, with a percent-encoded
/// name, with a `;` or `?` inside it, after a second `?`), neither the parsed key nor
/// the error about it shows it; and a query value with a raw `;` or `?` is refused
/// rather than swallowing the next attribute (`module-path=/m.so?pin-value=…` would
/// otherwise be a module path, shown in full when the module is not found).
#[test]
fn no_spelling_of_a_pin_in_the_uri_shows_it() {
    let m = "module-path=/m.so";
    for text in [
        format!("pkcs11:pin-value=SECRET?{m}"),
        format!("pkcs11:object=k?{m}&PIN-VALUE=SECRET"),
        format!("pkcs11:object=k?{m}&Pin-Value=SECRET"),
        format!("pkcs11:object=k?{m}&pin%2Dvalue=SECRET"),
        format!("pkcs11:object=k?{m}&pin-valueSECRET"),
        format!("pkcs11:object=k?{m}&pin-value:SECRET"),
        format!("pkcs11:object=k?{m}&pin-value=SEC;RET"),
        format!("pkcs11:object=k?{m}&pin-value=SEC?RET"),
        format!("pkcs11:object=k?{m}?pin-value=SECRET"),
        format!("pkcs11:object=k?{m};pin-value=SECRET"),
        "tpm2:auth-value=SECRET?tcti=x".to_owned(),
        "tpm2:handle=0x81000001?tcti=x&AUTH-VALUE=SECRET".to_owned(),
        "tpm2:handle=0x81000001?tcti=x&auth-value=SEC;RET".to_owned(),
    ] {
        let shown = match KeyRef::parse(&text) {
            Ok(key) => format!("{key} {key:?}"),
            Err(e) => format!("{e} {e:?}"),
        };
        assert!(
            !shown.contains("SEC") && !shown.contains("RET"),
            "{text}: {shown}"
        );
    }
    for (text, why) in [
        (format!("pkcs11:object=k?{m}?pin-value=1"), "%3F"),
        (format!("pkcs11:object=k?{m};pin-value=1"), "%3B"),
        (format!("pkcs11:object=k?{m}&pin-value=1?2"), "%3F"),
    ] {
        let e = refused(&text);
        assert!(e.contains(why), "{text}: {e}");
    }
    // Percent-encoded, both are fine in a value.
    let DeviceKey::Pkcs11(u) = device(&format!("pkcs11:object=k?{m}&pin-value=1%3F2%3B3")) else {
        panic!()
    };
    assert_eq!(u.pin.unwrap().read(true).unwrap().as_str(), "1?2;3");
}

/// A scheme is a scheme in any case (RFC 3986 §3.1): `PKCS11:…` is not a file name,
/// which the CLI would echo whole, PIN and all, in "cannot read PKCS11:…".
#[test]
fn schemes_are_recognised_in_any_case() {
    let text = "PKCS11:object=k?module-path=/m.so&pin-value=SECRET";
    let key = device(text);
    assert_eq!(key.backend(), Backend::Pkcs11);
    assert!(!key.to_string().contains("SECRET"), "{key}");
    assert_eq!(device("Tpm2:handle=0x81000001").backend(), Backend::Tpm2);
    assert_eq!(
        KeyRef::parse("FILE:/k.pem").unwrap(),
        KeyRef::File(PathBuf::from("/k.pem"))
    );
    assert_eq!(
        KeyRef::parse("./PKCS11:x").unwrap(),
        KeyRef::File(PathBuf::from("./PKCS11:x"))
    );
}

/// Numbers are digits only: Rust's integer parsers also take a leading `+`.
#[test]
fn handles_and_slot_ids_take_no_sign() {
    let e = refused("tpm2:handle=0x+81000001");
    assert!(e.contains("hexadecimal handle"), "{e}");
    let e = refused("tpm2:file=k;parent=0x+81000001");
    assert!(e.contains("hexadecimal handle"), "{e}");
    let e = refused("pkcs11:object=k;slot-id=+1?module-path=/m.so");
    assert!(e.contains("decimal number"), "{e}");
    let DeviceKey::Pkcs11(u) = device("pkcs11:object=k;slot-id=01?module-path=/m.so") else {
        panic!()
    };
    assert_eq!(u.slot_id, Some(1));
}

/// A PIN file that is a FIFO is refused at once: opening it would wait for a writer
/// for ever, and the process would hang at start with nothing said.
#[cfg(unix)]
#[test]
fn a_pin_fifo_is_refused_without_waiting_for_a_writer() {
    let dir = std::env::temp_dir().join(format!("dpop-keys-fifo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let fifo = dir.join("pin");
    let made = std::process::Command::new("mkfifo")
        .arg("-m")
        .arg("600")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    let (tx, rx) = std::sync::mpsc::channel();
    let source = PinSource::File(fifo);
    std::thread::spawn(move || {
        let _ = tx.send(source.read(false).map(|_| ()));
    });
    let got = rx.recv_timeout(std::time::Duration::from_secs(5));
    std::fs::remove_dir_all(&dir).unwrap();
    let e = got.expect("reading a FIFO PIN file hangs").unwrap_err();
    assert!(e.contains("not a regular file"), "{e}");
}
