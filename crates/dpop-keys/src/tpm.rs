//! TPM 2.0 keys through the TSS2 ESAPI (cargo feature `tpm`).
//!
//! A key is a persistent object (`tpm2:handle=0x81…`) or a key file
//! (`tpm2:file=PATH[;parent=0x81…]`) holding the public and the TPM-encrypted private
//! part of a key made under a parent. The default parent is the storage primary key of
//! the owner hierarchy, made from the TCG's ECC P-256 storage root key template: the
//! same template always gives the same key, so it is made again at each connection
//! and flushed once the key is loaded.
//!
//! Each signer keeps one ESAPI context (one TCTI connection) and lends it to one
//! signature at a time, waiting at most [`OpenOptions::wait`] for it: the TPM runs one
//! command at a time anyway, and without a resource manager (swtpm, `/dev/tpm0`) only
//! about three transient objects fit, so a context per concurrent signature would run
//! out of them with key files. (The swtpm TCTI connects for each command, since
//! swtpm's socket server serves one connection at a time; other processes and signers
//! can use the same swtpm in between.) A context that failed is dropped; the next
//! signature opens a new one, loads the key again and refuses it if it is no longer
//! the key opened. Every signature is verified against the public key before it is
//! returned, so a key replaced behind a persistent handle never signs under the old
//! key's name.

use std::io::Write as _;
use std::path::Path;
use std::str::FromStr as _;
use std::sync::Arc;

use aws_lc_rs::digest;
use dpop_core::{Algorithm, Curve, KeyError, PublicJwk, Signer};
use tss_esapi::attributes::ObjectAttributesBuilder;
use tss_esapi::constants::response_code::Tss2ResponseCodeKind;
use tss_esapi::constants::tss::{TPM2_RH_NULL, TPM2_ST_HASHCHECK};
use tss_esapi::handles::{KeyHandle, PersistentTpmHandle, TpmHandle};
use tss_esapi::interface_types::algorithm::{HashingAlgorithm, PublicAlgorithm};
use tss_esapi::interface_types::dynamic_handles::Persistent;
use tss_esapi::interface_types::ecc::EccCurve;
use tss_esapi::interface_types::resource_handles::{Hierarchy, Provision};
use tss_esapi::interface_types::session_handles::AuthSession;
use tss_esapi::structures::{
    Auth, Digest, EccParameter, EccPoint, EccScheme, HashScheme, HashcheckTicket, Private, Public,
    PublicBuilder, PublicEccParametersBuilder, Signature, SignatureScheme,
    SymmetricDefinitionObject,
};
use tss_esapi::traits::{Marshall as _, UnMarshall as _};
use tss_esapi::tss2_esys::TPMT_TK_HASHCHECK;
use tss_esapi::{Context, TctiNameConf};
use zeroize::Zeroizing;

use crate::error::KeysError;
use crate::pool::Pool;
use crate::uri::{PinSource, Tpm2Uri};
use crate::{DeviceKey, OpenOptions};

/// The environment variables that name the TCTI when the URI has no `tcti`, in order.
const TCTI_VARIABLES: [&str; 2] = ["TPM2TOOLS_TCTI", "TCTI"];

/// The first bytes of a key file: a name and a format version.
const FILE_MAGIC: &[u8; 8] = b"DPOPTPM1";

/// What [`open`] signs to check the auth value (the library's self-check follows).
const AUTH_CHECK: &[u8] = b"dpop-keys tpm2 auth check";

/// The longest authorisation value a key with a SHA-256 name accepts.
const MAX_AUTH: usize = 32;

/// What an algorithm needs from a TPM key.
#[derive(Clone, Copy)]
struct Spec {
    alg: Algorithm,
    curve: Curve,
    tpm_curve: EccCurve,
    hashing: HashingAlgorithm,
    digest: &'static digest::Algorithm,
}

impl Spec {
    fn for_alg(alg: Algorithm) -> Option<Self> {
        let (curve, tpm_curve, hashing, digest) = match alg {
            Algorithm::Es256 => (
                Curve::P256,
                EccCurve::NistP256,
                HashingAlgorithm::Sha256,
                &digest::SHA256,
            ),
            Algorithm::Es384 => (
                Curve::P384,
                EccCurve::NistP384,
                HashingAlgorithm::Sha384,
                &digest::SHA384,
            ),
            Algorithm::Es512 => (
                Curve::P521,
                EccCurve::NistP521,
                HashingAlgorithm::Sha512,
                &digest::SHA512,
            ),
            _ => return None,
        };
        Some(Self {
            alg,
            curve,
            tpm_curve,
            hashing,
            digest,
        })
    }

    fn for_curve(curve: EccCurve) -> Option<Self> {
        match curve {
            EccCurve::NistP256 => Self::for_alg(Algorithm::Es256),
            EccCurve::NistP384 => Self::for_alg(Algorithm::Es384),
            EccCurve::NistP521 => Self::for_alg(Algorithm::Es512),
            _ => None,
        }
    }
}

/// Everything needed to reach the key again: the reference, the TCTI and the auth value.
struct Target {
    key: DeviceKey,
    uri: Tpm2Uri,
    tcti: String,
    auth: Option<Zeroizing<Vec<u8>>>,
}

/// One connection to the TPM with the key loaded (a key file) or looked up (a
/// persistent handle). Dropping it flushes the loaded key and closes the connection.
struct Connection {
    context: Context,
    key: KeyHandle,
}

/// The key's public part as the TPM reports it.
struct KeyInfo {
    spec: Spec,
    /// The uncompressed point `04 || X || Y`.
    point: Vec<u8>,
}

/// Opens the TPM key `uri` names.
pub(crate) fn open(uri: &Tpm2Uri, options: &OpenOptions) -> Result<Arc<dyn Signer>, KeysError> {
    let target = Target::new(uri, options)?;
    let (connection, info) = target.connect()?;
    let alg = options.alg.unwrap_or(info.spec.alg);
    if alg != info.spec.alg {
        return Err(KeysError::config(
            &target.key,
            format!(
                "the key is on {}, which signs {}, not {alg}",
                info.spec.curve.name(),
                info.spec.alg
            ),
            None,
        ));
    }
    let jwk = crate::jwk::ec_public_jwk(info.spec.curve, &info.point).map_err(|why| {
        KeysError::device(&target.key, format!("the TPM's public key: {why}"), None)
    })?;
    let signer = TpmSigner {
        target,
        info,
        jwk,
        pool: Pool::new(1, options.wait),
        wait: options.wait,
    };
    // One signature now, so that a wrong auth value is reported as such (with the TPM's
    // code) rather than as a failed self-check.
    let mut connection = connection;
    signer.sign_with(&mut connection, AUTH_CHECK)?;
    signer.pool.put(connection);
    Ok(Arc::new(signer))
}

/// Makes a new key for `alg` in the TPM: at the persistent handle, or in a new key file.
pub(crate) fn generate(
    uri: &Tpm2Uri,
    alg: Algorithm,
    options: &OpenOptions,
) -> Result<(), KeysError> {
    let target = Target::new(uri, options)?;
    let spec = Spec::for_alg(alg).ok_or_else(|| {
        KeysError::config(
            &target.key,
            format!("a TPM key signs ES256, ES384 or ES512, not {alg}"),
            None,
        )
    })?;
    let template = key_template(spec).map_err(|e| target.tpm_error("the key template", e))?;
    // The file is claimed first (created new, 0600), so an existing one is never
    // replaced and no other process can take the name while the key is being made.
    let mut claimed = match &uri.file {
        Some(path) => Some(ClaimedFile::create(&target.key, path)?),
        None => None,
    };
    let mut context = target.context()?;
    if let Some(handle) = uri.handle {
        let tpm_handle = persistent(handle);
        let found = context
            .execute_without_session(|c| c.tr_from_tpm_public(TpmHandle::Persistent(tpm_handle)));
        match found {
            // TPM_RC_HANDLE: the handle is free.
            Err(tss_esapi::Error::Tss2Error(rc))
                if rc.kind() == Some(Tss2ResponseCodeKind::Handle) => {}
            Err(e) => {
                return Err(target.tpm_error(&format!("looking at the handle {handle:#010x}"), e));
            }
            Ok(_) => {
                return Err(KeysError::config(
                    &target.key,
                    format!(
                        "the persistent handle {handle:#010x} already holds an object; refusing to replace it (choose another handle, or remove the old key with `tpm2_evictcontrol -C o -c {handle:#010x}`)"
                    ),
                    Some("TPM_RC_NV_DEFINED".to_owned()),
                ));
            }
        }
    }
    let auth = target
        .auth
        .as_ref()
        .map(|a| Auth::try_from(a.to_vec()))
        .transpose()
        .map_err(|e| target.tpm_error("the auth value", e))?;
    let (parent, made) = target.parent(&mut context)?;
    let created = context.execute_with_session(Some(AuthSession::Password), |c| {
        c.create(parent, template, auth, None, None, None)
    });
    let result = created
        .map_err(|e| target.tpm_error("creating the key", e))
        .and_then(|created| match (&mut claimed, uri.handle) {
            (Some(file), _) => file.write(&target.key, &created.out_public, &created.out_private),
            (None, Some(handle)) => persist(
                &target,
                &mut context,
                parent,
                created.out_private,
                created.out_public,
                handle,
            ),
            (None, None) => unreachable!("Target::new admits a handle or a file"),
        });
    if made {
        let _ = context.flush_context(parent.into());
    }
    result?;
    if let Some(file) = claimed {
        file.keep();
    }
    Ok(())
}

/// Loads a new key under `parent` and makes it persistent at `handle`.
fn persist(
    target: &Target,
    context: &mut Context,
    parent: KeyHandle,
    private: Private,
    public: Public,
    handle: u32,
) -> Result<(), KeysError> {
    let loaded = context
        .execute_with_session(Some(AuthSession::Password), |c| {
            c.load(parent, private, public)
        })
        .map_err(|e| target.tpm_error("loading the new key", e))?;
    let evicted = context.execute_with_session(Some(AuthSession::Password), |c| {
        c.evict_control(
            Provision::Owner,
            loaded.into(),
            Persistent::Persistent(persistent(handle)),
        )
    });
    let _ = context.flush_context(loaded.into());
    evicted
        .map(drop)
        .map_err(|e| target.tpm_error(&format!("making the key persistent at {handle:#010x}"), e))
}

/// A key file being written: removed again unless [`ClaimedFile::keep`] is called.
struct ClaimedFile<'a> {
    path: &'a Path,
    file: Option<std::fs::File>,
}

impl<'a> ClaimedFile<'a> {
    fn create(key: &DeviceKey, path: &'a Path) -> Result<Self, KeysError> {
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt as _;
            options.mode(0o600);
        }
        let file = options.open(path).map_err(|e| {
            let why = if e.kind() == std::io::ErrorKind::AlreadyExists {
                format!(
                    "the key file {} already exists; refusing to overwrite it",
                    path.display()
                )
            } else {
                format!("cannot create the key file {}: {e}", path.display())
            };
            KeysError::config(key, why, None)
        })?;
        Ok(Self {
            path,
            file: Some(file),
        })
    }

    fn write(
        &mut self,
        key: &DeviceKey,
        public: &Public,
        private: &Private,
    ) -> Result<(), KeysError> {
        let bytes = encode_key_file(public, private)
            .map_err(|why| KeysError::device(key, format!("the TPM's new key: {why}"), None))?;
        let file = self
            .file
            .as_mut()
            .unwrap_or_else(|| unreachable!("written once"));
        file.write_all(&bytes)
            .and_then(|()| file.sync_all())
            .map_err(|e| {
                KeysError::config(
                    key,
                    format!("cannot write the key file {}: {e}", self.path.display()),
                    None,
                )
            })
    }

    fn keep(mut self) {
        self.file = None;
    }
}

impl Drop for ClaimedFile<'_> {
    fn drop(&mut self) {
        if self.file.take().is_some() {
            let _ = std::fs::remove_file(self.path);
        }
    }
}

/// The key file: `DPOPTPM1`, then the key's `TPM2B_PUBLIC`, then its `TPM2B_PRIVATE`
/// (each a big-endian 16-bit length and that many bytes, as TPM 2.0 Part 2 marshals
/// them, and as `tpm2_create -u … -r …` writes them), and nothing after.
fn encode_key_file(public: &Public, private: &Private) -> Result<Vec<u8>, String> {
    let public = public.marshall().map_err(|e| e.to_string())?;
    let mut out = FILE_MAGIC.to_vec();
    for part in [public.as_slice(), private.value()] {
        let len = u16::try_from(part.len()).map_err(|_| "a part longer than 65535 bytes")?;
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(part);
    }
    Ok(out)
}

/// Reads a key file written by [`encode_key_file`].
fn decode_key_file(bytes: &[u8]) -> Result<(Public, Private), String> {
    let rest = bytes
        .strip_prefix(FILE_MAGIC)
        .ok_or("it is not a dpop TPM key file (it does not start with DPOPTPM1)")?;
    let (public, rest) = take_sized(rest).ok_or("its public part is truncated")?;
    let (private, rest) = take_sized(rest).ok_or("its private part is truncated")?;
    if !rest.is_empty() {
        return Err(format!("{} unexpected bytes after the key", rest.len()));
    }
    let public =
        Public::unmarshall(public).map_err(|e| format!("its public part: {}", describe(e)))?;
    let private = Private::try_from(private.to_vec())
        .map_err(|e| format!("its private part: {}", describe(e)))?;
    Ok((public, private))
}

fn take_sized(input: &[u8]) -> Option<(&[u8], &[u8])> {
    let (len, rest) = input.split_first_chunk::<2>()?;
    let len = usize::from(u16::from_be_bytes(*len));
    (rest.len() >= len).then(|| rest.split_at(len))
}

/// An unrestricted ECDSA signing key that cannot leave the TPM: fixedTPM, fixedParent
/// (no duplication), sensitiveDataOrigin (made inside the TPM), userWithAuth (its auth
/// value authorises signing), the scheme fixed to ECDSA with the algorithm's hash.
fn key_template(spec: Spec) -> tss_esapi::Result<Public> {
    let attributes = ObjectAttributesBuilder::new()
        .with_fixed_tpm(true)
        .with_fixed_parent(true)
        .with_sensitive_data_origin(true)
        .with_user_with_auth(true)
        .with_sign_encrypt(true)
        .with_decrypt(false)
        .with_restricted(false)
        .build()?;
    PublicBuilder::new()
        .with_public_algorithm(PublicAlgorithm::Ecc)
        .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
        .with_object_attributes(attributes)
        .with_ecc_parameters(
            PublicEccParametersBuilder::new_unrestricted_signing_key(
                EccScheme::EcDsa(HashScheme::new(spec.hashing)),
                spec.tpm_curve,
            )
            .build()?,
        )
        .with_ecc_unique_identifier(EccPoint::default())
        .build()
}

/// The storage primary key's template: the ECC P-256 storage root key of the TCG's
/// provisioning guidance (restricted decryption key, AES-128-CFB, noDA, `unique` two
/// 32-byte zero coordinates). The same template gives the same key in the same TPM.
fn primary_template() -> tss_esapi::Result<Public> {
    let attributes = ObjectAttributesBuilder::new()
        .with_fixed_tpm(true)
        .with_fixed_parent(true)
        .with_sensitive_data_origin(true)
        .with_user_with_auth(true)
        .with_no_da(true)
        .with_restricted(true)
        .with_decrypt(true)
        .build()?;
    let zero = || EccParameter::try_from(vec![0_u8; 32]);
    PublicBuilder::new()
        .with_public_algorithm(PublicAlgorithm::Ecc)
        .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
        .with_object_attributes(attributes)
        .with_ecc_parameters(
            PublicEccParametersBuilder::new_restricted_decryption_key(
                SymmetricDefinitionObject::AES_128_CFB,
                EccCurve::NistP256,
            )
            .build()?,
        )
        .with_ecc_unique_identifier(EccPoint::new(zero()?, zero()?))
        .build()
}

fn persistent(handle: u32) -> PersistentTpmHandle {
    PersistentTpmHandle::new(handle)
        .unwrap_or_else(|_| unreachable!("Target::new admits persistent handles only"))
}

impl Target {
    fn new(uri: &Tpm2Uri, options: &OpenOptions) -> Result<Self, KeysError> {
        let key = DeviceKey::Tpm2(uri.clone());
        // What the parser guarantees, checked again for a URI changed after parsing:
        // the rest of this module relies on it.
        let persistent_handle = |h: u32| PersistentTpmHandle::new(h).is_ok();
        if uri.handle.is_some() == uri.file.is_some()
            || uri.handle.is_some_and(|h| !persistent_handle(h))
            || uri.parent.is_some_and(|h| !persistent_handle(h))
        {
            return Err(KeysError::config(
                &key,
                "the reference must name one persistent handle (0x81000000 to 0x81FFFFFF) or one key file",
                None,
            ));
        }
        let tcti = match &uri.tcti {
            Some(t) => t.clone(),
            None => TCTI_VARIABLES
                .iter()
                .find_map(|v| std::env::var(v).ok().filter(|t| !t.is_empty()))
                .ok_or_else(|| {
                    KeysError::config(
                        &key,
                        "no TCTI names the TPM: add ?tcti=device:/dev/tpmrm0 (or tabrmd, or swtpm:host=127.0.0.1,port=2321) to the URI, or set TPM2TOOLS_TCTI or TCTI",
                        None,
                    )
                })?,
        };
        let auth = match &uri.auth {
            None => None,
            Some(PinSource::Value(_)) if !options.dangerous_allow_pin_value => {
                return Err(KeysError::config(
                    &key,
                    "the auth value is written into the URI (auth-value), where shell history, process listings and configuration files keep it; use auth-source=file:PATH or env:NAME (a dangerous option allows it for tests)",
                    None,
                ));
            }
            Some(source) => {
                let value = source
                    .read(options.dangerous_allow_pin_value)
                    .map_err(|why| KeysError::config(&key, format!("auth-source: {why}"), None))?;
                if value.len() > MAX_AUTH {
                    return Err(KeysError::config(
                        &key,
                        format!("the auth value is longer than {MAX_AUTH} bytes"),
                        None,
                    ));
                }
                Some(Zeroizing::new(value.as_bytes().to_vec()))
            }
        };
        Ok(Self {
            key,
            uri: uri.clone(),
            tcti,
            auth,
        })
    }

    /// A new ESAPI context over the TCTI.
    fn context(&self) -> Result<Context, KeysError> {
        let conf = TctiNameConf::from_str(&self.tcti).map_err(|_| {
            KeysError::config(
                &self.key,
                format!(
                    "the TCTI {:?} is not one of device:PATH, tabrmd[:…], swtpm:host=…,port=… or mssim:host=…,port=…",
                    self.tcti
                ),
                None,
            )
        })?;
        Context::new(conf).map_err(|e| {
            KeysError::device(
                &self.key,
                format!(
                    "cannot reach the TPM through the TCTI {}: {}",
                    self.tcti,
                    describe(e)
                ),
                Some(code(e)),
            )
        })
    }

    /// The parent of a key file (or of a new key): the persistent `parent`, or the
    /// storage primary key made now (`true`: the caller flushes it).
    fn parent(&self, context: &mut Context) -> Result<(KeyHandle, bool), KeysError> {
        if let Some(parent) = self.uri.parent {
            let handle = context
                .execute_without_session(|c| {
                    c.tr_from_tpm_public(TpmHandle::Persistent(persistent(parent)))
                })
                .map_err(|e| self.tpm_error(&format!("the parent key {parent:#010x}"), e))?;
            return Ok((handle.into(), false));
        }
        let template =
            primary_template().map_err(|e| self.tpm_error("the primary key template", e))?;
        let primary = context
            .execute_with_session(Some(AuthSession::Password), |c| {
                c.create_primary(Hierarchy::Owner, template, None, None, None, None)
            })
            .map_err(|e| self.tpm_error("creating the storage primary key", e))?;
        Ok((primary.key_handle, true))
    }

    /// Connects, finds or loads the key, and checks what it is.
    fn connect(&self) -> Result<(Connection, KeyInfo), KeysError> {
        let mut context = self.context()?;
        let key = match (self.uri.handle, &self.uri.file) {
            (Some(handle), _) => context
                .execute_without_session(|c| {
                    c.tr_from_tpm_public(TpmHandle::Persistent(persistent(handle)))
                })
                .map_err(|e| {
                    self.tpm_error(
                        &format!("no key at the persistent handle {handle:#010x}"),
                        e,
                    )
                })?
                .into(),
            (None, Some(path)) => self.load_file(&mut context, path)?,
            (None, None) => unreachable!("Target::new admits a handle or a file"),
        };
        if let Some(auth) = &self.auth {
            let auth =
                Auth::try_from(auth.to_vec()).map_err(|e| self.tpm_error("the auth value", e))?;
            context
                .tr_set_auth(key.into(), auth)
                .map_err(|e| self.tpm_error("setting the auth value", e))?;
        }
        let (public, _, _) = context
            .execute_without_session(|c| c.read_public(key))
            .map_err(|e| self.tpm_error("reading the key's public part", e))?;
        let info = self.check(&public)?;
        Ok((Connection { context, key }, info))
    }

    fn load_file(&self, context: &mut Context, path: &Path) -> Result<KeyHandle, KeysError> {
        const MAX: u64 = 16 * 1024;
        let shown = path.display();
        // The blobs are encrypted to the TPM: not a secret file, but still bounded, and
        // never a FIFO to wait on.
        let bytes = crate::file::read_file(path, MAX, "key file", false)
            .map_err(|why| KeysError::config(&self.key, why, None))?;
        let (public, private) = decode_key_file(&bytes).map_err(|why| {
            KeysError::config(&self.key, format!("the key file {shown}: {why}"), None)
        })?;
        let (parent, made) = self.parent(context)?;
        let loaded = context.execute_with_session(Some(AuthSession::Password), |c| {
            c.load(parent, private, public)
        });
        if made {
            let _ = context.flush_context(parent.into());
        }
        loaded.map_err(|e| {
            self.tpm_error(
                &format!(
                    "loading the key file {shown} (was it made under this parent in this TPM?)"
                ),
                e,
            )
        })
    }

    /// Refuses what cannot be a non-extractable ECDSA signing key for our algorithms.
    fn check(&self, public: &Public) -> Result<KeyInfo, KeysError> {
        let refuse = |why: String| Err(KeysError::config(&self.key, why, None));
        let Public::Ecc {
            object_attributes: a,
            parameters,
            unique,
            ..
        } = public
        else {
            return refuse("the object is not an ECC key".to_owned());
        };
        if !a.sign_encrypt() || a.decrypt() || a.restricted() {
            return refuse(
                "the object is not an unrestricted signing key (sign set, restricted and decrypt clear)"
                    .to_owned(),
            );
        }
        if !(a.fixed_tpm() && a.fixed_parent() && a.sensitive_data_origin()) {
            return refuse(
                "the key can be duplicated out of the TPM or was made outside it (fixedTPM, fixedParent and sensitiveDataOrigin must be set)"
                    .to_owned(),
            );
        }
        let Some(spec) = Spec::for_curve(parameters.ecc_curve()) else {
            return refuse(format!(
                "the key's curve {:?} is not P-256, P-384 or P-521",
                parameters.ecc_curve()
            ));
        };
        match parameters.ecc_scheme() {
            EccScheme::Null => {}
            EccScheme::EcDsa(h) if h.hashing_algorithm() == spec.hashing => {}
            other => {
                return refuse(format!(
                    "the key's scheme {other:?} is not ECDSA with the hash of {}",
                    spec.alg
                ));
            }
        }
        let len = spec.curve.coordinate_len();
        let mut point = Vec::with_capacity(1 + 2 * len);
        point.push(0x04);
        for c in [unique.x().value(), unique.y().value()] {
            let padded = left_pad(c, len).ok_or_else(|| {
                KeysError::device(&self.key, "the TPM reports a malformed public key", None)
            })?;
            point.extend_from_slice(&padded);
        }
        Ok(KeyInfo { spec, point })
    }

    /// A TPM or TSS error, as configuration (wrong auth, no such handle, …) or as a
    /// device failure (busy, lockout, I/O).
    fn tpm_error(&self, what: &str, e: tss_esapi::Error) -> KeysError {
        let kind = match e {
            tss_esapi::Error::Tss2Error(rc) => rc.kind(),
            tss_esapi::Error::WrapperError(_) => None,
        };
        let why = format!("{what}: {}", describe(e));
        let code = Some(code(e));
        match kind {
            Some(
                Tss2ResponseCodeKind::AuthFail
                | Tss2ResponseCodeKind::BadAuth
                | Tss2ResponseCodeKind::AuthMissing
                | Tss2ResponseCodeKind::AuthUnavailable
                | Tss2ResponseCodeKind::Handle
                | Tss2ResponseCodeKind::Parent
                | Tss2ResponseCodeKind::Integrity
                | Tss2ResponseCodeKind::Curve
                | Tss2ResponseCodeKind::Scheme
                | Tss2ResponseCodeKind::NvDefined,
            ) => KeysError::config(&self.key, why, code),
            _ => KeysError::device(&self.key, why, code),
        }
    }
}

/// The TPM's name for a response code (`TPM_RC_AUTH_FAIL`), the TSS's for an error of
/// one of its layers (`TSS2_TCTI_RC_IO_ERROR`), or the wrapper's error.
fn code(e: tss_esapi::Error) -> String {
    match e {
        tss_esapi::Error::Tss2Error(rc) => {
            if let Some(raw) = raw_rc(rc).filter(|raw| raw >> 16 != 0) {
                return tss_layer_code(raw);
            }
            match rc.kind() {
                Some(kind) => {
                    let mut name = String::from("TPM_RC");
                    for c in format!("{kind:?}").chars() {
                        if c.is_ascii_uppercase() {
                            name.push('_');
                        }
                        name.push(c.to_ascii_uppercase());
                    }
                    name
                }
                None => raw_rc(rc).map_or_else(|| format!("{rc:?}"), |raw| format!("{raw:#x}")),
            }
        }
        tss_esapi::Error::WrapperError(kind) => format!("tss-esapi {kind:?}"),
    }
}

/// The raw `TSS2_RC`. tss-esapi 7 keeps it private; its `Debug` form shows it as
/// `.0: N` (pinned by a test, so a change there is seen).
fn raw_rc(rc: tss_esapi::constants::response_code::Tss2ResponseCode) -> Option<u32> {
    let debug = format!("{rc:?}");
    let digits = debug.split_once(".0: ")?.1;
    let end = digits
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(digits.len());
    digits.get(..end)?.parse().ok()
}

/// `TSS2_<LAYER>_RC_<BASE>` for an error raised by a TSS layer rather than the TPM
/// (TSS 2.0 Overview and Common Structures, `tss2_common.h`).
fn tss_layer_code(raw: u32) -> String {
    let layer = match raw >> 16 {
        6 => "FEATURE",
        7 => "ESYS",
        8 => "SYS",
        9 => "MU",
        10 => "TCTI",
        11 => "RESMGR",
        12 => "RESMGR_TPM",
        _ => "UNKNOWN_LAYER",
    };
    let base = match raw & 0xffff {
        1 => "GENERAL_FAILURE",
        2 => "NOT_IMPLEMENTED",
        3 => "BAD_CONTEXT",
        4 => "ABI_MISMATCH",
        5 => "BAD_REFERENCE",
        6 => "INSUFFICIENT_BUFFER",
        7 => "BAD_SEQUENCE",
        8 => "NO_CONNECTION",
        9 => "TRY_AGAIN",
        10 => "IO_ERROR",
        11 => "BAD_VALUE",
        12 => "NOT_PERMITTED",
        13 => "INVALID_SESSIONS",
        14 => "NO_DECRYPT_PARAM",
        15 => "NO_ENCRYPT_PARAM",
        16 => "BAD_SIZE",
        17 => "MALFORMED_RESPONSE",
        18 => "INSUFFICIENT_CONTEXT",
        19 => "INSUFFICIENT_RESPONSE",
        20 => "INCOMPATIBLE_TCTI",
        21 => "NOT_SUPPORTED",
        22 => "BAD_TCTI_STRUCTURE",
        23 => "MEMORY",
        24 => "BAD_TR",
        25 => "MULTIPLE_DECRYPT_SESSIONS",
        26 => "MULTIPLE_ENCRYPT_SESSIONS",
        27 => "RSP_AUTH_FAILED",
        49 => "NO_TPM",
        _ => return format!("TSS2_{layer}_RC_{:#x}", raw & 0xffff),
    };
    format!("TSS2_{layer}_RC_{base}")
}

/// What went wrong, in words: the TSS's description of a TPM response code, or the
/// layer and base of a TSS error (which tss-esapi 7 does not describe).
fn describe(e: tss_esapi::Error) -> String {
    match e {
        tss_esapi::Error::Tss2Error(rc) if raw_rc(rc).is_some_and(|raw| raw >> 16 != 0) => {
            let c = code(e);
            if c.ends_with("_IO_ERROR") || c.ends_with("_NO_CONNECTION") {
                "the connection to the TPM failed (is it running, and is the TCTI right?)"
                    .to_owned()
            } else {
                format!("the TSS failed ({c})")
            }
        }
        other => other.to_string(),
    }
}

/// `value` without leading zeros, left-padded with zeros to `len` bytes; `None` when
/// it is wider.
fn left_pad(value: &[u8], len: usize) -> Option<Vec<u8>> {
    let start = value.iter().position(|&b| b != 0).unwrap_or(value.len());
    let digits = &value[start..];
    if digits.len() > len {
        return None;
    }
    let mut out = vec![0_u8; len - digits.len()];
    out.extend_from_slice(digits);
    Some(out)
}

/// A TPM key as a [`Signer`].
struct TpmSigner {
    target: Target,
    info: KeyInfo,
    jwk: PublicJwk,
    pool: Pool<Connection>,
    wait: std::time::Duration,
}

impl TpmSigner {
    /// A new connection to the same key (after a failure): refused when the key
    /// behind the reference is no longer the one opened.
    fn reconnect(&self) -> Result<Connection, KeysError> {
        let (connection, info) = self.target.connect()?;
        if info.point != self.info.point {
            return Err(KeysError::device(
                &self.target.key,
                "the key behind this reference changed since it was opened; refusing to sign with another key",
                None,
            ));
        }
        Ok(connection)
    }

    fn sign_with(&self, connection: &mut Connection, message: &[u8]) -> Result<Vec<u8>, KeysError> {
        let spec = self.info.spec;
        let hashed = digest::digest(spec.digest, message);
        let digest = Digest::try_from(hashed.as_ref().to_vec())
            .map_err(|e| self.target.tpm_error("the digest", e))?;
        let ticket = HashcheckTicket::try_from(TPMT_TK_HASHCHECK {
            tag: TPM2_ST_HASHCHECK,
            hierarchy: TPM2_RH_NULL,
            digest: Default::default(),
        })
        .map_err(|e| self.target.tpm_error("the hash check ticket", e))?;
        let scheme = SignatureScheme::EcDsa {
            hash_scheme: HashScheme::new(spec.hashing),
        };
        let key = connection.key;
        let signature = connection
            .context
            .execute_with_session(Some(AuthSession::Password), |c| {
                c.sign(key, digest, scheme, ticket)
            })
            .map_err(|e| self.target.tpm_error("signing", e))?;
        let Signature::EcDsa(signature) = signature else {
            return Err(KeysError::device(
                &self.target.key,
                "the TPM returned a signature that is not ECDSA",
                None,
            ));
        };
        let len = spec.curve.coordinate_len();
        let r = left_pad(signature.signature_r().value(), len);
        let s = left_pad(signature.signature_s().value(), len);
        match (r, s) {
            (Some(mut r), Some(s)) => {
                r.extend_from_slice(&s);
                // The TPM signs with whatever object the handle names now; a key put
                // there since (or a stale transient handle reused) must not go out
                // under the public key this signer announces.
                if !self.jwk.verify(spec.alg, message, &r) {
                    return Err(KeysError::device(
                        &self.target.key,
                        "the TPM's signature does not verify against the key opened (was the key replaced?)",
                        None,
                    ));
                }
                Ok(r)
            }
            _ => Err(KeysError::device(
                &self.target.key,
                "the TPM returned a signature wider than the curve",
                None,
            )),
        }
    }
}

impl Signer for TpmSigner {
    fn algorithm(&self) -> Algorithm {
        self.info.spec.alg
    }

    fn public_jwk(&self) -> &PublicJwk {
        &self.jwk
    }

    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, KeyError> {
        let mut connection = match self.pool.get(|| self.reconnect()) {
            Ok(c) => c,
            Err(Some(e)) => return Err(e.into()),
            Err(None) => {
                return Err(KeysError::device(
                    &self.target.key,
                    format!(
                        "the TPM connection stayed busy for {:?} (one signature at a time)",
                        self.wait
                    ),
                    None,
                )
                .into());
            }
        };
        match self.sign_with(&mut connection, message) {
            Ok(signature) => Ok(signature),
            Err(e) => {
                connection.discard();
                Err(e.into())
            }
        }
    }

    fn blocks(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::{code, decode_key_file, left_pad};

    #[test]
    fn coordinates_are_left_padded_and_wide_ones_refused() {
        assert_eq!(left_pad(&[1, 2], 4), Some(vec![0, 0, 1, 2]));
        assert_eq!(left_pad(&[0, 0, 0, 1, 2], 4), Some(vec![0, 0, 1, 2]));
        assert_eq!(left_pad(&[1, 2, 3, 4, 5], 4), None);
        assert_eq!(left_pad(&[], 2), Some(vec![0, 0]));
    }

    #[test]
    fn response_codes_get_the_tpm_names() {
        let rc = |v: u32| tss_esapi::Error::Tss2Error(v.into());
        assert_eq!(code(rc(0x98e)), "TPM_RC_AUTH_FAIL");
        assert_eq!(code(rc(0x18b)), "TPM_RC_HANDLE");
        assert_eq!(code(rc(0x14c)), "TPM_RC_NV_DEFINED");
        assert_eq!(code(rc(0x921)), "TPM_RC_LOCKOUT");
        // Errors of the TSS's own layers, read from tss-esapi's Debug form.
        assert_eq!(code(rc(0x000a_000a)), "TSS2_TCTI_RC_IO_ERROR");
        assert_eq!(code(rc(0x0009_0009)), "TSS2_MU_RC_TRY_AGAIN");
        assert_eq!(code(rc(0x0007_0015)), "TSS2_ESYS_RC_NOT_SUPPORTED");
    }

    #[test]
    fn key_files_are_refused_when_malformed() {
        assert!(decode_key_file(b"").unwrap_err().contains("DPOPTPM1"));
        assert!(
            decode_key_file(b"DPOPTPM1\x00")
                .unwrap_err()
                .contains("truncated")
        );
        assert!(
            decode_key_file(b"DPOPTPM1\x00\x05abc")
                .unwrap_err()
                .contains("truncated")
        );
        assert!(
            decode_key_file(b"DPOPTPM1\x00\x00\x00\x00x")
                .unwrap_err()
                .contains("unexpected bytes")
        );
    }
}
