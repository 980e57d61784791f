//! PKCS#11 tokens (HSMs, smart cards, YubiKeys, SoftHSM) named by RFC 7512 URIs.
//!
//! The module (`module-path`) is loaded at run time, once per process, and initialised
//! for use from several threads. [`open`] picks exactly one token (by label,
//! manufacturer, serial, model or slot), logs in as the user with the PIN from
//! `pin-source`, finds exactly one private key (by `object` = `CKA_LABEL` and/or `id` =
//! `CKA_ID`), reads its public half (the public-key object with the same id, else the
//! label, else `CKA_EC_POINT` on the private object) and returns a [`Signer`] that
//! signs through a bounded pool of logged-in sessions.
//!
//! Keys: P-256, P-384 and P-521 (ES256, ES384, ES512) and Ed25519 (EdDSA). ECDSA uses the
//! raw `CKM_ECDSA` mechanism, which every token has: the JWS signing input is hashed here
//! (SHA-256, SHA-384 or SHA-512 with aws-lc-rs) and the token signs the digest,
//! returning `R || S`. Ed25519 uses `CKM_EDDSA` on the whole input. RSA and ML-DSA keys
//! are refused.
//!
//! [`generate`] makes a key pair inside the token: the private half sensitive, never
//! extractable, a token object that only the logged-in user can use. Without `id=` the
//! pair gets a fresh random 16-byte `CKA_ID`, which ties the two halves together.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use aws_lc_rs::digest;
use aws_lc_rs::rand::{SecureRandom as _, SystemRandom};
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::mechanism::eddsa::{EddsaParams, EddsaSignatureScheme};
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use dpop_core::{Algorithm, Curve, KeyError, KeyFamily, PublicJwk, Signer};
use zeroize::Zeroizing;

use crate::jwk::{ec_public_jwk, ed25519_public_jwk};
use crate::pool::Pool;
use crate::uri::{PinSource, Pkcs11Uri};
use crate::{DeviceKey, KeysError, OpenOptions};

/// `CKA_EC_PARAMS` of P-256: the OID 1.2.840.10045.3.1.7.
const P256_PARAMS: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
/// `CKA_EC_PARAMS` of P-384: the OID 1.3.132.0.34.
const P384_PARAMS: &[u8] = &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22];
/// `CKA_EC_PARAMS` of P-521: the OID 1.3.132.0.35.
const P521_PARAMS: &[u8] = &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x23];
/// `CKA_EC_PARAMS` of Ed25519 as PKCS#11 3.0 names it: the PrintableString
/// "edwards25519" (what SoftHSM wants).
const ED25519_NAME_PARAMS: &[u8] = b"\x13\x0cedwards25519";
/// `CKA_EC_PARAMS` of Ed25519 as an OID (1.3.101.112, RFC 8410), which other tokens use.
const ED25519_OID_PARAMS: &[u8] = &[0x06, 0x03, 0x2b, 0x65, 0x70];

/// The length of the `CKA_ID` given to a generated pair when the URI names none.
const GENERATED_ID_LEN: usize = 16;

/// The kinds of key this backend signs with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Ec(Curve),
    Ed25519,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Self::Ec(curve) => curve.name(),
            Self::Ed25519 => "Ed25519",
        }
    }

    /// The algorithm a key of this kind signs with when none is asked for.
    fn default_algorithm(self) -> Algorithm {
        match self {
            Self::Ec(curve) => curve.algorithm(),
            // `EdDSA` rather than the RFC 9864 name: every DPoP server knows it.
            Self::Ed25519 => Algorithm::EdDsa,
        }
    }

    /// What goes into `CKA_EC_PARAMS` when generating, preferred form first.
    fn params(self) -> &'static [&'static [u8]] {
        match self {
            Self::Ec(Curve::P256) => &[P256_PARAMS],
            Self::Ec(Curve::P384) => &[P384_PARAMS],
            Self::Ec(Curve::P521) => &[P521_PARAMS],
            Self::Ec(_) => &[],
            Self::Ed25519 => &[ED25519_NAME_PARAMS, ED25519_OID_PARAMS],
        }
    }

    /// The kind of a key from its `CKA_KEY_TYPE` and `CKA_EC_PARAMS`.
    fn of(key_type: KeyType, params: Option<&[u8]>) -> Result<Self, String> {
        if key_type == KeyType::EC {
            return match params {
                Some(P256_PARAMS) => Ok(Self::Ec(Curve::P256)),
                Some(P384_PARAMS) => Ok(Self::Ec(Curve::P384)),
                Some(P521_PARAMS) => Ok(Self::Ec(Curve::P521)),
                Some(other) => Err(format!(
                    "the key is on an EC curve this backend does not sign with (CKA_EC_PARAMS {}); use P-256, P-384 or P-521",
                    hex(other)
                )),
                None => Err("the key has no CKA_EC_PARAMS: its curve is unknown".to_owned()),
            };
        }
        if key_type == KeyType::EC_EDWARDS {
            return match params {
                Some(ED25519_NAME_PARAMS | ED25519_OID_PARAMS) => Ok(Self::Ed25519),
                Some(other) => Err(format!(
                    "the key is an Edwards key other than Ed25519 (CKA_EC_PARAMS {})",
                    hex(other)
                )),
                None => Err("the key has no CKA_EC_PARAMS: its curve is unknown".to_owned()),
            };
        }
        Err(format!(
            "the key is of type {key_type}, which this backend does not sign with (RSA and ML-DSA keys are not supported); use a P-256, P-384, P-521 or Ed25519 key"
        ))
    }

    /// The kind to generate for `alg`.
    fn for_algorithm(alg: Algorithm) -> Option<Self> {
        match alg.key_family() {
            KeyFamily::Ec(curve @ (Curve::P256 | Curve::P384 | Curve::P521)) => {
                Some(Self::Ec(curve))
            }
            KeyFamily::Ed25519 => Some(Self::Ed25519),
            _ => None,
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The `CKR_…` name of a PKCS#11 return value (cryptoki's variant names are the
/// constants' names in camel case).
fn rv_name(rv: RvError) -> String {
    match rv {
        RvError::VendorDefined(code) => format!("CKR_VENDOR_DEFINED({code:#x})"),
        RvError::UnknownErrorCode(code) => format!("CKR_{code:#x}"),
        other => {
            let camel = format!("{other:?}");
            let mut out = String::from("CKR");
            for c in camel.chars() {
                if c.is_ascii_uppercase() {
                    out.push('_');
                }
                out.push(c.to_ascii_uppercase());
            }
            out
        }
    }
}

/// The device's error code, if the error came from the module.
fn code(e: &CkError) -> Option<String> {
    match e {
        CkError::Pkcs11(rv, _) => Some(rv_name(*rv)),
        _ => None,
    }
}

/// What failed, without the code (which [`KeysError`] shows on its own).
fn failed(what: &str, e: &CkError) -> String {
    match e {
        CkError::Pkcs11(_, function) => format!("{what}: C_{function:?} failed"),
        other => format!("{what}: {other}"),
    }
}

fn is_rv(e: &CkError, rv: RvError) -> bool {
    matches!(e, CkError::Pkcs11(got, _) if *got == rv)
}

/// The modules loaded in this process, by canonical path. A module is loaded and
/// initialised once and kept: `C_Initialize` is process-wide, and unloading a module
/// whose sessions another signer still uses would pull it from under them.
static MODULES: Mutex<Vec<(PathBuf, Pkcs11)>> = Mutex::new(Vec::new());

/// The user logins this process made: module, slot and a keyed digest of the PIN that
/// the token accepted. PKCS#11 logs a process in once per token, and a later `C_Login`
/// only answers `CKR_USER_ALREADY_LOGGED_IN` whatever the PIN: a second key opened on
/// the same token must still bring the right PIN.
static LOGINS: Mutex<Vec<(PathBuf, u64, aws_lc_rs::hmac::Tag)>> = Mutex::new(Vec::new());

/// An HMAC of the PIN under a key made at random once per process: what is kept of a
/// PIN to compare later ones with. A plain hash of a short PIN could be reversed by
/// trying every PIN; without the key, this cannot.
fn pin_digest(pin: &str) -> aws_lc_rs::hmac::Tag {
    static KEY: std::sync::OnceLock<aws_lc_rs::hmac::Key> = std::sync::OnceLock::new();
    let key = KEY.get_or_init(|| {
        let mut bytes = Zeroizing::new([0_u8; 32]);
        // Without randomness the key is all zeros: no worse than a plain hash, and the
        // comparison still works.
        let _ = SystemRandom::new().fill(&mut *bytes);
        aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, &*bytes)
    });
    aws_lc_rs::hmac::sign(key, pin.as_bytes())
}

/// The module at `path` (canonical), loaded and initialised.
fn module(key: &DeviceKey, path: &Path) -> Result<(PathBuf, Pkcs11), KeysError> {
    let shown = path.display();
    let fix = "set module-path to the PKCS#11 library of the device (for SoftHSM: /usr/lib/softhsm/libsofthsm2.so)";
    // Loading a library runs its code: never one found relative to wherever the process
    // happens to run.
    if !path.is_absolute() {
        return Err(KeysError::config(
            key,
            format!("the PKCS#11 module {shown} is not an absolute path; {fix}"),
            None,
        ));
    }
    let canonical = path.canonicalize().map_err(|e| {
        KeysError::config(
            key,
            format!("the PKCS#11 module {shown} cannot be found ({e}); {fix}"),
            None,
        )
    })?;
    if !canonical.is_file() {
        return Err(KeysError::config(
            key,
            format!("the PKCS#11 module {shown} is not a file; {fix}"),
            None,
        ));
    }
    let mut modules = MODULES.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some((_, ctx)) = modules.iter().find(|(p, _)| *p == canonical) {
        return Ok((canonical, ctx.clone()));
    }
    let ctx = Pkcs11::new(&canonical).map_err(|e| {
        let why = match &e {
            CkError::LibraryLoading(inner) => {
                format!("cannot load the PKCS#11 module {shown} ({inner}); {fix}")
            }
            CkError::MissingSymbol(symbol) => {
                format!("{shown} is not a PKCS#11 module (it has no {symbol}); {fix}")
            }
            other => format!("cannot load the PKCS#11 module {shown} ({other}); {fix}"),
        };
        KeysError::config(key, why, code(&e))
    })?;
    match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(()) => {}
        // Another library of this process initialised it first: usable as it is.
        Err(e) if is_rv(&e, RvError::CryptokiAlreadyInitialized) => {}
        Err(e) => {
            return Err(KeysError::device(
                key,
                failed(&format!("the PKCS#11 module {shown} did not start"), &e),
                code(&e),
            ));
        }
    }
    modules.push((canonical.clone(), ctx.clone()));
    Ok((canonical, ctx))
}

/// The one initialised token the URI selects.
fn pick_slot(ctx: &Pkcs11, key: &DeviceKey, uri: &Pkcs11Uri) -> Result<Slot, KeysError> {
    let slots = ctx
        .get_slots_with_initialized_token()
        .map_err(|e| KeysError::device(key, failed("cannot list the tokens", &e), code(&e)))?;
    let mut labels = Vec::new();
    let mut matching = Vec::new();
    for slot in slots {
        let info = ctx.get_token_info(slot).map_err(|e| {
            KeysError::device(
                key,
                failed("cannot read a token's description", &e),
                code(&e),
            )
        })?;
        let label = info.label().trim_end_matches([' ', '\0']).to_owned();
        let same = |want: &Option<String>, have: &str| {
            want.as_deref()
                .is_none_or(|w| w == have.trim_end_matches([' ', '\0']))
        };
        if same(&uri.token, &label)
            && same(&uri.manufacturer, info.manufacturer_id())
            && same(&uri.serial, info.serial_number())
            && same(&uri.model, info.model())
            && uri.slot_id.is_none_or(|id| id == slot.id())
        {
            matching.push((slot, label.clone()));
        }
        labels.push(format!("{label:?}"));
    }
    let present = if labels.is_empty() {
        "the module shows no initialised token".to_owned()
    } else {
        format!("tokens present: {}", labels.join(", "))
    };
    match matching.as_slice() {
        [(slot, _)] => Ok(*slot),
        [] => Err(KeysError::config(
            key,
            format!(
                "no token matches the URI's token, manufacturer, serial, model and slot-id; {present}"
            ),
            None,
        )),
        several => Err(KeysError::config(
            key,
            format!(
                "{} tokens match ({}); name one with token=, serial= or slot-id=",
                several.len(),
                several
                    .iter()
                    .map(|(_, l)| format!("{l:?}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            None,
        )),
    }
}

/// Where the PIN came from, for messages (never the PIN).
fn pin_origin(uri: &Pkcs11Uri) -> String {
    match &uri.pin {
        Some(PinSource::File(path)) => format!("the PIN file {}", path.display()),
        Some(PinSource::Env(name)) => format!("the environment variable {name}"),
        _ => "the URI's pin-value".to_owned(),
    }
}

/// The user PIN, if the URI names one.
fn read_pin(
    key: &DeviceKey,
    uri: &Pkcs11Uri,
    options: &OpenOptions,
) -> Result<Option<Zeroizing<String>>, KeysError> {
    let Some(source) = &uri.pin else {
        return Ok(None);
    };
    let pin = source
        .read(options.dangerous_allow_pin_value)
        .map_err(|why| KeysError::config(key, why, None))?;
    if pin.is_empty() {
        // Sent to the token, an empty PIN would only use up one of its tries.
        return Err(KeysError::config(
            key,
            format!("{} holds an empty PIN", pin_origin(uri)),
            None,
        ));
    }
    Ok(Some(pin))
}

/// The token, its module and the user's PIN: what every session needs.
struct Token {
    key: DeviceKey,
    /// The module's canonical path.
    module: PathBuf,
    ctx: Pkcs11,
    slot: Slot,
    pin: Option<Zeroizing<String>>,
    /// The token has a PIN pad: log in without a PIN.
    protected_path: bool,
    origin: String,
}

impl Token {
    fn connect(uri: &Pkcs11Uri, options: &OpenOptions) -> Result<Self, KeysError> {
        let key = DeviceKey::Pkcs11(uri.clone());
        let pin = read_pin(&key, uri, options)?;
        let (module, ctx) = module(&key, &uri.module_path)?;
        let slot = pick_slot(&ctx, &key, uri)?;
        let info = ctx.get_token_info(slot).map_err(|e| {
            KeysError::device(
                &key,
                failed("cannot read the token's description", &e),
                code(&e),
            )
        })?;
        let protected_path = info.protected_authentication_path();
        if pin.is_none() && info.login_required() && !protected_path {
            return Err(KeysError::config(
                &key,
                "the token needs the user PIN: add ?pin-source=file:PATH (a file only its owner can read) or env:NAME",
                None,
            ));
        }
        Ok(Self {
            key,
            module,
            ctx,
            slot,
            pin,
            protected_path,
            origin: pin_origin(uri),
        })
    }

    /// A new session, logged in as the user. Login is per token in PKCS#11: when
    /// another session of this process already logged in, so is this one.
    fn session(&self, read_write: bool) -> Result<Session, KeysError> {
        let session = if read_write {
            self.ctx.open_rw_session(self.slot)
        } else {
            self.ctx.open_ro_session(self.slot)
        }
        .map_err(|e| KeysError::device(&self.key, failed("cannot open a session", &e), code(&e)))?;
        if self.pin.is_none() && !self.protected_path {
            return Ok(session);
        }
        let pin = self.pin.as_ref().map(|p| AuthPin::from(p.as_str()));
        match session.login(UserType::User, pin.as_ref()) {
            Ok(()) => {
                self.remember_login();
                Ok(session)
            }
            Err(e) if is_rv(&e, RvError::UserAlreadyLoggedIn) => {
                self.same_pin_as_before()?;
                Ok(session)
            }
            Err(e) => {
                let refused = [
                    RvError::PinIncorrect,
                    RvError::PinInvalid,
                    RvError::PinLenRange,
                    RvError::PinExpired,
                    RvError::PinLocked,
                    RvError::UserPinNotInitialized,
                    RvError::UserAnotherAlreadyLoggedIn,
                ];
                if refused.iter().any(|rv| is_rv(&e, *rv)) {
                    Err(KeysError::config(
                        &self.key,
                        format!(
                            "the token refused the user login with the PIN from {}",
                            self.origin
                        ),
                        code(&e),
                    ))
                } else {
                    Err(KeysError::device(
                        &self.key,
                        failed("cannot log in", &e),
                        code(&e),
                    ))
                }
            }
        }
    }
}

impl Token {
    /// Records the PIN the token just accepted.
    fn remember_login(&self) {
        let Some(pin) = &self.pin else { return };
        let mut logins = LOGINS.lock().unwrap_or_else(PoisonError::into_inner);
        let slot = self.slot.id();
        logins.retain(|(m, s, _)| !(*m == self.module && *s == slot));
        logins.push((self.module.clone(), slot, pin_digest(pin)));
    }

    /// The token was already logged in: refuses a PIN other than the one this process
    /// logged in with. (When other code of this process logged in, there is nothing to
    /// compare with: PKCS#11 cannot check a PIN then.)
    fn same_pin_as_before(&self) -> Result<(), KeysError> {
        let Some(pin) = &self.pin else { return Ok(()) };
        let logins = LOGINS.lock().unwrap_or_else(PoisonError::into_inner);
        let slot = self.slot.id();
        let Some((_, _, before)) = logins
            .iter()
            .find(|(m, s, _)| *m == self.module && *s == slot)
        else {
            return Ok(());
        };
        let same = aws_lc_rs::constant_time::verify_slices_are_equal(
            before.as_ref(),
            pin_digest(pin).as_ref(),
        )
        .is_ok();
        if same {
            Ok(())
        } else {
            Err(KeysError::config(
                &self.key,
                format!(
                    "the PIN from {} is not the one this process logged in to the token with",
                    self.origin
                ),
                None,
            ))
        }
    }
}

/// Refuses a URI that names no key (possible only for one changed after parsing, which
/// checks this): its template would match any private key of the token.
fn names_a_key(uri: &Pkcs11Uri) -> Result<(), KeysError> {
    if uri.object.is_some() || uri.id.as_ref().is_some_and(|id| !id.is_empty()) {
        return Ok(());
    }
    Err(KeysError::config(
        &DeviceKey::Pkcs11(uri.clone()),
        "the reference names no key: give object=LABEL and/or id=…",
        None,
    ))
}

/// The search template of the private key the URI names (the URI names it by label, id
/// or both: [`open`] refuses one that names neither).
fn private_template(uri: &Pkcs11Uri) -> Vec<Attribute> {
    let mut template = vec![Attribute::Class(ObjectClass::PRIVATE_KEY)];
    if let Some(label) = &uri.object {
        template.push(Attribute::Label(label.as_bytes().to_vec()));
    }
    if let Some(id) = uri.id.as_ref().filter(|id| !id.is_empty()) {
        template.push(Attribute::Id(id.clone()));
    }
    template
}

/// The one object `template` matches, or why not.
fn find_one(
    session: &Session,
    template: &[Attribute],
) -> Result<Result<ObjectHandle, usize>, CkError> {
    let found = session.find_objects(template)?;
    Ok(match found.as_slice() {
        [one] => Ok(*one),
        other => Err(other.len()),
    })
}

/// How the URI names its key, for messages.
fn named(uri: &Pkcs11Uri) -> String {
    let mut parts = Vec::new();
    if let Some(label) = &uri.object {
        parts.push(format!("object={label:?}"));
    }
    if let Some(id) = uri.id.as_ref().filter(|id| !id.is_empty()) {
        parts.push(format!("id={}", hex(id)));
    }
    parts.join(" and ")
}

/// A session of the pool and the key's handle in it.
struct Held {
    session: Session,
    key: ObjectHandle,
}

/// A private key in a PKCS#11 token.
struct Pkcs11Signer {
    token: Token,
    template: Vec<Attribute>,
    kind: Kind,
    alg: Algorithm,
    public: PublicJwk,
    pool: Pool<Held>,
    sessions: usize,
    wait: std::time::Duration,
}

impl core::fmt::Debug for Pkcs11Signer {
    /// The URI (PIN redacted) and the thumbprint, nothing else.
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Pkcs11Signer")
            .field("uri", &format_args!("{}", self.token.key))
            .field("jkt", &self.public.thumbprint().as_str())
            .finish_non_exhaustive()
    }
}

impl Pkcs11Signer {
    /// A fresh pooled session with the key found again in it.
    fn open_session(&self) -> Result<Held, KeysError> {
        let session = self.token.session(false)?;
        match find_one(&session, &self.template) {
            Ok(Ok(key)) => Ok(Held { session, key }),
            Ok(Err(n)) => Err(KeysError::device(
                &self.token.key,
                format!("the key is no longer on the token as one object ({n} match)"),
                None,
            )),
            Err(e) => Err(KeysError::device(
                &self.token.key,
                failed("cannot find the key", &e),
                code(&e),
            )),
        }
    }
}

impl Signer for Pkcs11Signer {
    fn algorithm(&self) -> Algorithm {
        self.alg
    }

    fn public_jwk(&self) -> &PublicJwk {
        &self.public
    }

    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, KeyError> {
        let held = self.pool.get(|| self.open_session()).map_err(|e| match e {
            Some(e) => e,
            None => KeysError::device(
                &self.token.key,
                format!(
                    "the device is busy: none of its {} sessions came free within {} ms",
                    self.sessions,
                    self.wait.as_millis()
                ),
                None,
            ),
        })?;
        let ed_params;
        let (mechanism, digest_value, expected) = match self.kind {
            Kind::Ec(curve) => {
                let hash = match curve {
                    Curve::P256 => &digest::SHA256,
                    Curve::P384 => &digest::SHA384,
                    Curve::P521 => &digest::SHA512,
                    _ => {
                        return Err(KeyError::Device(format!(
                            "{}: no hash for the curve {}",
                            self.token.key,
                            curve.name()
                        )));
                    }
                };
                (
                    Mechanism::Ecdsa,
                    Some(digest::digest(hash, message)),
                    2 * curve.coordinate_len(),
                )
            }
            Kind::Ed25519 => {
                ed_params = EddsaParams::new(EddsaSignatureScheme::Pure);
                (Mechanism::Eddsa(ed_params), None, 64)
            }
        };
        let data = digest_value
            .as_ref()
            .map_or(message, digest::Digest::as_ref);
        match held.session.sign(&mechanism, held.key, data) {
            Ok(signature) if signature.len() == expected => Ok(signature),
            Ok(signature) => {
                held.discard();
                Err(KeysError::device(
                    &self.token.key,
                    format!(
                        "the token returned a {}-byte signature where a {} signature is {expected} bytes",
                        signature.len(),
                        self.kind.name()
                    ),
                    None,
                )
                .into())
            }
            Err(e) => {
                held.discard();
                Err(
                    KeysError::device(&self.token.key, failed("signing failed", &e), code(&e))
                        .into(),
                )
            }
        }
    }

    fn blocks(&self) -> bool {
        true
    }
}

/// The value of a byte-string attribute in `attrs`.
fn bytes_of(attrs: &[Attribute], which: AttributeType) -> Option<&[u8]> {
    attrs.iter().find_map(|a| match (a, which) {
        (Attribute::EcParams(v), AttributeType::EcParams)
        | (Attribute::EcPoint(v), AttributeType::EcPoint)
        | (Attribute::Id(v), AttributeType::Id)
        | (Attribute::Label(v), AttributeType::Label) => Some(v.as_slice()),
        _ => None,
    })
}

/// The contents of a DER OCTET STRING that is all of `der` (how `CKA_EC_POINT` holds
/// the point): definite length in its shortest form, nothing after it.
fn octet_string(der: &[u8]) -> Option<&[u8]> {
    let (&0x04, rest) = der.split_first()? else {
        return None;
    };
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = match first {
        0..=0x7f => (usize::from(first), rest),
        0x81 => {
            let (&len, rest) = rest.split_first()?;
            if len < 0x80 {
                return None;
            }
            (usize::from(len), rest)
        }
        _ => return None,
    };
    (rest.len() == len).then_some(rest)
}

/// The kind and public JWK of the private key `handle`.
fn describe(
    key: &DeviceKey,
    session: &Session,
    handle: ObjectHandle,
) -> Result<(Kind, PublicJwk), KeysError> {
    let device = |what: &str, e: &CkError| KeysError::device(key, failed(what, e), code(e));
    let attrs = session
        .get_attributes(
            handle,
            &[
                AttributeType::KeyType,
                AttributeType::EcParams,
                AttributeType::Id,
                AttributeType::Label,
                AttributeType::Sign,
                AttributeType::Sensitive,
                AttributeType::Extractable,
            ],
        )
        .map_err(|e| device("cannot read the key's attributes", &e))?;
    let key_type = attrs
        .iter()
        .find_map(|a| match a {
            Attribute::KeyType(t) => Some(*t),
            _ => None,
        })
        .ok_or_else(|| KeysError::device(key, "the key has no CKA_KEY_TYPE", None))?;
    let params = bytes_of(&attrs, AttributeType::EcParams);
    let kind = Kind::of(key_type, params).map_err(|why| KeysError::config(key, why, None))?;
    if !attrs.iter().any(|a| matches!(a, Attribute::Sign(true))) {
        return Err(KeysError::config(
            key,
            "the key may not sign (CKA_SIGN is false)",
            None,
        ));
    }
    // A key the token would hand out (CKA_VALUE readable, or wrappable out) can be
    // copied by anyone who has the PIN: it is not the key the URI promises.
    let sensitive = attrs
        .iter()
        .any(|a| matches!(a, Attribute::Sensitive(true)));
    let extractable = attrs
        .iter()
        .any(|a| matches!(a, Attribute::Extractable(true)));
    if !sensitive || extractable {
        return Err(KeysError::config(
            key,
            "the private key can be read out of the token (CKA_SENSITIVE false or CKA_EXTRACTABLE true): make a new key inside it (dpop keygen --key, or pkcs11-tool --keypairgen --sensitive)",
            None,
        ));
    }
    // The public half: the public-key object with the same CKA_ID (else the same
    // label), else a CKA_EC_POINT the private object carries itself.
    let mut template = vec![
        Attribute::Class(ObjectClass::PUBLIC_KEY),
        Attribute::KeyType(key_type),
    ];
    match (
        bytes_of(&attrs, AttributeType::Id).filter(|id| !id.is_empty()),
        bytes_of(&attrs, AttributeType::Label).filter(|l| !l.is_empty()),
    ) {
        (Some(id), _) => template.push(Attribute::Id(id.to_vec())),
        (None, Some(label)) => template.push(Attribute::Label(label.to_vec())),
        (None, None) => {
            return Err(KeysError::config(
                key,
                "the private key has neither CKA_ID nor CKA_LABEL: its public key cannot be found",
                None,
            ));
        }
    }
    let point_holder = match find_one(session, &template)
        .map_err(|e| device("cannot search for the public key", &e))?
    {
        Ok(public) => public,
        Err(0) => handle,
        Err(n) => {
            return Err(KeysError::config(
                key,
                format!(
                    "{n} public-key objects share the private key's id: the public key is ambiguous"
                ),
                None,
            ));
        }
    };
    let held = session
        .get_attributes(
            point_holder,
            &[AttributeType::EcPoint, AttributeType::EcParams],
        )
        .map_err(|e| device("cannot read the public key", &e))?;
    if point_holder != handle && bytes_of(&held, AttributeType::EcParams) != params {
        return Err(KeysError::config(
            key,
            "the public-key object with the private key's id is on another curve",
            None,
        ));
    }
    let Some(point) = bytes_of(&held, AttributeType::EcPoint) else {
        return Err(KeysError::config(
            key,
            "no public-key object shares the private key's id or label, and the private key carries no CKA_EC_POINT: store the public key on the token too",
            None,
        ));
    };
    let raw = octet_string(point).ok_or_else(|| {
        KeysError::device(
            key,
            "the token's CKA_EC_POINT is not a DER OCTET STRING",
            None,
        )
    })?;
    let jwk = match kind {
        Kind::Ec(curve) => ec_public_jwk(curve, raw),
        Kind::Ed25519 => ed25519_public_jwk(raw),
    }
    .map_err(|why| {
        KeysError::device(
            key,
            format!("the token's public key is unusable: {why}"),
            None,
        )
    })?;
    Ok((kind, jwk))
}

/// Opens the key `uri` names: see the module documentation.
pub(crate) fn open(uri: &Pkcs11Uri, options: &OpenOptions) -> Result<Arc<dyn Signer>, KeysError> {
    names_a_key(uri)?;
    let token = Token::connect(uri, options)?;
    let key = &token.key;
    let session = token.session(false)?;
    let template = private_template(uri);
    let handle = match find_one(&session, &template) {
        Ok(Ok(handle)) => handle,
        Ok(Err(0)) => {
            return Err(KeysError::config(
                key,
                format!(
                    "no private key with {} on the token (private objects show only after the user login)",
                    named(uri)
                ),
                None,
            ));
        }
        Ok(Err(n)) => {
            return Err(KeysError::config(
                key,
                format!(
                    "{n} private keys match {}: add id= or object= to name exactly one",
                    named(uri)
                ),
                None,
            ));
        }
        Err(e) => {
            return Err(KeysError::device(
                key,
                failed("cannot search for the key", &e),
                code(&e),
            ));
        }
    };
    let (kind, public) = describe(key, &session, handle)?;
    let alg = match options.alg {
        None => kind.default_algorithm(),
        Some(alg) if public.fits(alg) => alg,
        Some(alg) => {
            return Err(KeysError::config(
                key,
                format!(
                    "the key is a {} key: it cannot sign {alg} (use {} or give no algorithm)",
                    kind.name(),
                    kind.default_algorithm()
                ),
                None,
            ));
        }
    };
    let pool = Pool::new(options.sessions, options.wait);
    pool.put(Held {
        session,
        key: handle,
    });
    Ok(Arc::new(Pkcs11Signer {
        token,
        template,
        kind,
        alg,
        public,
        pool,
        sessions: options.sessions.max(1),
        wait: options.wait,
    }))
}

/// Generates a key pair for `alg` inside the token `uri` names: see the module
/// documentation. Refuses when any object with the URI's label or id exists.
pub(crate) fn generate(
    uri: &Pkcs11Uri,
    alg: Algorithm,
    options: &OpenOptions,
) -> Result<(), KeysError> {
    names_a_key(uri)?;
    let key = DeviceKey::Pkcs11(uri.clone());
    let Some(kind) = Kind::for_algorithm(alg) else {
        return Err(KeysError::config(
            &key,
            format!(
                "cannot make {alg} keys in a PKCS#11 token here: use ES256, ES384, ES512 or EdDSA"
            ),
            None,
        ));
    };
    let token = Token::connect(uri, options)?;
    let session = token.session(true)?;
    let device = |what: &str, e: &CkError| KeysError::device(&key, failed(what, e), code(e));
    let given_id = uri.id.clone().filter(|id| !id.is_empty());
    let mut taken = Vec::new();
    if let Some(label) = &uri.object {
        taken.push((
            format!("labelled {label:?}"),
            Attribute::Label(label.as_bytes().to_vec()),
        ));
    }
    if let Some(id) = &given_id {
        taken.push((format!("with id {}", hex(id)), Attribute::Id(id.clone())));
    }
    for (what, attribute) in taken {
        let found = session
            .find_objects(&[attribute])
            .map_err(|e| device("cannot search the token", &e))?;
        if !found.is_empty() {
            return Err(KeysError::config(
                &key,
                format!(
                    "the token already holds {} object(s) {what}; keys are never overwritten: choose another name or delete the old key",
                    found.len()
                ),
                None,
            ));
        }
    }
    let id = match given_id {
        Some(id) => id,
        None => {
            let mut id = vec![0_u8; GENERATED_ID_LEN];
            SystemRandom::new()
                .fill(&mut id)
                .map_err(|_| KeysError::device(&key, "no random bytes for the key's id", None))?;
            id
        }
    };
    let mechanism = match kind {
        Kind::Ec(_) => Mechanism::EccKeyPairGen,
        Kind::Ed25519 => Mechanism::EccEdwardsKeyPairGen,
    };
    let mut last = None;
    for params in kind.params() {
        // The public half is private too (seen only after login) and cannot be changed:
        // otherwise anyone who can reach the token, without the PIN, could delete it or
        // plant another public key under the same id and break the key's opening.
        let mut public = vec![
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Modifiable(false),
            Attribute::Verify(true),
            Attribute::EcParams(params.to_vec()),
            Attribute::Id(id.clone()),
        ];
        let mut private = vec![
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
            Attribute::Sign(true),
            Attribute::Derive(false),
            Attribute::Id(id.clone()),
        ];
        if let Some(label) = &uri.object {
            public.push(Attribute::Label(label.as_bytes().to_vec()));
            private.push(Attribute::Label(label.as_bytes().to_vec()));
        }
        match session.generate_key_pair(&mechanism, &public, &private) {
            Ok(_) => return Ok(()),
            // Tokens differ in how they name Ed25519: try the next form.
            Err(e)
                if is_rv(&e, RvError::AttributeValueInvalid)
                    || is_rv(&e, RvError::DomainParamsInvalid)
                    || is_rv(&e, RvError::CurveNotSupported) =>
            {
                last = Some(e);
            }
            Err(e) => {
                let why = if is_rv(&e, RvError::MechanismInvalid) {
                    format!("the token cannot make {} keys", kind.name())
                } else {
                    failed(&format!("cannot make a {} key", kind.name()), &e)
                };
                return Err(KeysError::device(&key, why, code(&e)));
            }
        }
    }
    Err(KeysError::config(
        &key,
        format!("the token does not support {} keys", kind.name()),
        last.as_ref().and_then(code),
    ))
}

#[cfg(test)]
mod tests {
    use cryptoki::context::Pkcs11;
    use cryptoki::error::RvError;
    use cryptoki::slot::Slot;
    use dpop_core::{Algorithm, Curve, PrivateKey, Signer as _};
    use zeroize::Zeroizing;

    use super::{Kind, Pkcs11Signer, Token, octet_string, rv_name};
    use crate::{DeviceKey, KeyRef, Pool};

    /// Debug shows the URI with its PIN redacted and the thumbprint, nothing else. (A
    /// module is needed to make a signer; nothing is initialised or opened.)
    #[test]
    fn debug_shows_the_uri_without_the_pin_and_the_thumbprint() {
        let Some(module) = std::env::var_os("DPOP_TEST_SOFTHSM_MODULE") else {
            eprintln!("skipped: set DPOP_TEST_SOFTHSM_MODULE to /usr/lib/softhsm/libsofthsm2.so");
            return;
        };
        let module = std::path::PathBuf::from(module);
        let text = format!(
            "pkcs11:token=t;object=k?module-path={}&pin-value=pin-1234-secret",
            module.display()
        );
        let Ok(KeyRef::Device(key @ DeviceKey::Pkcs11(_))) = KeyRef::parse(&text) else {
            panic!("{text}");
        };
        let software = PrivateKey::generate(Algorithm::Es256).unwrap();
        let signer = Pkcs11Signer {
            token: Token {
                key,
                module: module.clone(),
                ctx: Pkcs11::new(&module).unwrap(),
                slot: Slot::try_from(0_u64).unwrap(),
                pin: Some(Zeroizing::new("pin-1234-secret".to_owned())),
                protected_path: false,
                origin: "the URI's pin-value".to_owned(),
            },
            template: Vec::new(),
            kind: Kind::Ec(Curve::P256),
            alg: Algorithm::Es256,
            public: software.public_jwk().clone(),
            pool: Pool::new(1, std::time::Duration::ZERO),
            sessions: 1,
            wait: std::time::Duration::ZERO,
        };
        let debug = format!("{signer:?}");
        assert!(!debug.contains("pin-1234-secret"), "{debug}");
        assert!(debug.contains("pin-value=***"), "{debug}");
        assert!(debug.contains("object=k"), "{debug}");
        assert!(debug.contains(software.thumbprint().as_str()), "{debug}");
        assert!(signer.blocks());
    }

    #[test]
    fn return_values_are_named_as_in_the_standard() {
        assert_eq!(rv_name(RvError::PinIncorrect), "CKR_PIN_INCORRECT");
        assert_eq!(
            rv_name(RvError::UserAlreadyLoggedIn),
            "CKR_USER_ALREADY_LOGGED_IN"
        );
        assert_eq!(
            rv_name(RvError::VendorDefined(0x8000_0001)),
            "CKR_VENDOR_DEFINED(0x80000001)"
        );
    }

    #[test]
    fn ec_points_are_read_strictly() {
        let point = [4_u8; 65];
        let mut der = vec![0x04, 65];
        der.extend_from_slice(&point);
        assert_eq!(octet_string(&der), Some(&point[..]));
        assert_eq!(octet_string(&point), None, "a bare point is not DER");
        let mut trailing = der.clone();
        trailing.push(0);
        assert_eq!(octet_string(&trailing), None);
        assert_eq!(octet_string(&der[..der.len() - 1]), None);
        let mut long_form = vec![0x04, 0x81, 65];
        long_form.extend_from_slice(&point);
        assert_eq!(
            octet_string(&long_form),
            None,
            "long form for a short length"
        );
        let big = [4_u8; 133];
        let mut p521 = vec![0x04, 0x81, 133];
        p521.extend_from_slice(&big);
        assert_eq!(octet_string(&p521), Some(&big[..]));
        assert_eq!(
            octet_string(&[0x03, 0x01, 0x00]),
            None,
            "not an OCTET STRING"
        );
    }
}
