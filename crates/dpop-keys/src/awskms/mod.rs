//! AWS KMS asymmetric signing keys over the KMS JSON API (feature `awskms`).
//!
//! A key is named `awskms:key-id=alias/NAME;region=REGION` (or a key id, key ARN or
//! alias ARN) with an optional `?endpoint=https://…`. At open the key's public key is
//! fetched (`GetPublicKey`), its usage (`SIGN_VERIFY`) and spec (`ECC_NIST_P256` for
//! ES256, `ECC_NIST_P384` for ES384) checked, and every later signature asked of that
//! very key (its ARN as KMS answered, so an alias re-pointed later cannot swap the key
//! under a running signer). Each signature is one `Sign` request carrying the SHA-256
//! (SHA-384) digest of the JWS signing input (`MessageType: DIGEST`: KMS refuses raw
//! messages over 4096 bytes); the DER signature KMS returns becomes JWS `R || S`.
//!
//! **Credentials** come from `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` and, for
//! temporary credentials, `AWS_SESSION_TOKEN`, read once at open; they never appear in
//! a message or `Debug` output. Shared profile files, SSO and instance or task roles
//! are not read: a program that has such credentials passes them with
//! [`AwsCredentials::new`] to [`open_with`] (the extension point).
//! **Region**: the reference's `region`, else the one in a key or alias ARN, else
//! `AWS_REGION` or `AWS_DEFAULT_REGION`. **Endpoint**: the reference's `endpoint`, else
//! `https://kms.REGION.amazonaws.com`; plain `http` only to loopback (a local stand-in).
//!
//! Opening, generating and signing wait on the network (each request is over within
//! [`OpenOptions::wait`](crate::OpenOptions::wait), connecting within 2 s): call them
//! from a thread that may block (`tokio::task::spawn_blocking`), never from an async
//! task; the signer says so with [`Signer::blocks`].

mod client;
mod sigv4;

use std::sync::Arc;

use aws_lc_rs::digest::{self, SHA256, SHA384};
use aws_lc_rs::rand::{SecureRandom as _, SystemRandom};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use dpop_core::{Algorithm, Curve, KeyError, PublicJwk, Signer};
use serde_json::{Value, json};
use zeroize::Zeroizing;

use self::client::{Endpoint, Failure, Kms};
use crate::ecdsa::der_to_fixed;
use crate::error::KeysError;
use crate::jwk::ec_public_jwk;
use crate::uri::AwsKmsUri;
use crate::{DeviceKey, OpenOptions};

/// The KMS error types that mean the configuration or the key must change (a wrong
/// key, missing permission, bad credentials, a disabled key) rather than that a retry
/// may succeed.
const CONFIG_ERRORS: [&str; 12] = [
    "AccessDeniedException",
    "NotFoundException",
    "DisabledException",
    "KMSInvalidStateException",
    "InvalidKeyUsageException",
    "IncorrectKeyException",
    "InvalidArnException",
    "UnrecognizedClientException",
    "InvalidSignatureException",
    "IncompleteSignature",
    "ExpiredTokenException",
    "UnsupportedOperationException",
];

/// AWS credentials: an access key, its secret and, for temporary credentials, a
/// session token. `Debug` shows the access key id only.
#[derive(Clone)]
pub struct AwsCredentials {
    access_key_id: String,
    secret_access_key: Zeroizing<String>,
    session_token: Option<Zeroizing<String>>,
}

impl core::fmt::Debug for AwsCredentials {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("AwsCredentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"***")
            .field("session_token", &self.session_token.as_ref().map(|_| "***"))
            .finish()
    }
}

impl AwsCredentials {
    /// Credentials from wherever the program found them (a profile file, an instance
    /// role, a secrets manager).
    #[must_use]
    pub fn new(
        access_key_id: impl Into<String>,
        secret_access_key: impl Into<String>,
        session_token: Option<String>,
    ) -> Self {
        Self {
            access_key_id: access_key_id.into(),
            secret_access_key: Zeroizing::new(secret_access_key.into()),
            session_token: session_token.map(Zeroizing::new),
        }
    }

    /// `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` and the optional
    /// `AWS_SESSION_TOKEN` from the environment.
    ///
    /// # Errors
    /// A message naming the variable that is missing or empty.
    pub fn from_env() -> Result<Self, String> {
        Self::from_vars(|name| std::env::var(name).ok())
    }

    /// The same variables looked up with `get` (the environment, a configuration
    /// map). Empty values count as unset.
    ///
    /// # Errors
    /// A message naming the variable that is missing or empty.
    pub fn from_vars(get: impl Fn(&str) -> Option<String>) -> Result<Self, String> {
        let get = |name: &str| get(name).filter(|v| !v.is_empty()).map(Zeroizing::new);
        let missing = |name: &str| {
            format!(
                "no AWS credentials: {name} is not set (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, and AWS_SESSION_TOKEN for temporary credentials; profile files, SSO and instance roles are not read)"
            )
        };
        let access_key_id = get("AWS_ACCESS_KEY_ID").ok_or_else(|| missing("AWS_ACCESS_KEY_ID"))?;
        let secret_access_key =
            get("AWS_SECRET_ACCESS_KEY").ok_or_else(|| missing("AWS_SECRET_ACCESS_KEY"))?;
        Ok(Self {
            access_key_id: access_key_id.to_string(),
            secret_access_key,
            session_token: get("AWS_SESSION_TOKEN"),
        })
    }

    /// The access key id (not a secret: it names the key, like a user name).
    #[must_use]
    pub fn access_key_id(&self) -> &str {
        &self.access_key_id
    }
}

/// The kinds of KMS keys this backend signs with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Spec {
    P256,
    P384,
}

impl Spec {
    const ALL: [Self; 2] = [Self::P256, Self::P384];

    fn for_alg(alg: Algorithm) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.alg() == alg)
    }

    fn key_spec(self) -> &'static str {
        match self {
            Self::P256 => "ECC_NIST_P256",
            Self::P384 => "ECC_NIST_P384",
        }
    }

    fn signing_algorithm(self) -> &'static str {
        match self {
            Self::P256 => "ECDSA_SHA_256",
            Self::P384 => "ECDSA_SHA_384",
        }
    }

    fn alg(self) -> Algorithm {
        match self {
            Self::P256 => Algorithm::Es256,
            Self::P384 => Algorithm::Es384,
        }
    }

    fn curve(self) -> Curve {
        match self {
            Self::P256 => Curve::P256,
            Self::P384 => Curve::P384,
        }
    }

    fn digest(self) -> &'static digest::Algorithm {
        match self {
            Self::P256 => &SHA256,
            Self::P384 => &SHA384,
        }
    }

    /// The DER of a `SubjectPublicKeyInfo` for this curve up to the uncompressed point:
    /// `SEQUENCE { SEQUENCE { id-ecPublicKey, namedCurve }, BIT STRING (0 unused bits) }`.
    fn spki_prefix(self) -> &'static [u8] {
        match self {
            Self::P256 => &[
                0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06,
                0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
            ],
            Self::P384 => &[
                0x30, 0x76, 0x30, 0x10, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06,
                0x05, 0x2b, 0x81, 0x04, 0x00, 0x22, 0x03, 0x62, 0x00,
            ],
        }
    }

    /// The public JWK of a KMS `PublicKey` (a DER `SubjectPublicKeyInfo`): exactly the
    /// prefix of this curve and one uncompressed point on it, nothing else.
    fn public_jwk(self, spki: &[u8]) -> Result<PublicJwk, String> {
        let point = spki.strip_prefix(self.spki_prefix()).ok_or_else(|| {
            format!(
                "the public key is not a DER SubjectPublicKeyInfo of a {} key",
                self.curve().name()
            )
        })?;
        ec_public_jwk(self.curve(), point)
    }
}

/// A KMS key, checked and pinned to its ARN.
struct KmsSigner {
    key: DeviceKey,
    kms: Kms,
    /// The key id KMS answered to `GetPublicKey` (its ARN).
    key_arn: String,
    spec: Spec,
    public: PublicJwk,
}

impl core::fmt::Debug for KmsSigner {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("KmsSigner")
            .field("key", &self.key.to_string())
            .field("key_arn", &self.key_arn)
            .field("alg", &self.spec.alg())
            .field("kms", &self.kms)
            .finish_non_exhaustive()
    }
}

impl Signer for KmsSigner {
    fn algorithm(&self) -> Algorithm {
        self.spec.alg()
    }

    fn public_jwk(&self) -> &PublicJwk {
        &self.public
    }

    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, KeyError> {
        self.sign_digest(message).map_err(KeyError::from)
    }

    fn blocks(&self) -> bool {
        true
    }
}

impl KmsSigner {
    fn sign_digest(&self, message: &[u8]) -> Result<Vec<u8>, KeysError> {
        let digest = digest::digest(self.spec.digest(), message);
        let answer = call(
            &self.key,
            &self.kms,
            "Sign",
            &json!({
                "KeyId": self.key_arn,
                "Message": STANDARD.encode(digest.as_ref()),
                "MessageType": "DIGEST",
                "SigningAlgorithm": self.spec.signing_algorithm(),
            }),
        )?;
        let bad =
            |why: &str| KeysError::device(&self.key, format!("KMS Sign answered {why}"), None);
        if let Some(alg) = answer.get("SigningAlgorithm")
            && alg.as_str() != Some(self.spec.signing_algorithm())
        {
            return Err(bad(&format!("with the signing algorithm {alg}")));
        }
        if let Some(id) = answer.get("KeyId")
            && !id.as_str().is_some_and(|id| same_key(id, &self.key_arn))
        {
            return Err(bad(&format!("for another key ({id})")));
        }
        let der = answer
            .get("Signature")
            .and_then(Value::as_str)
            .and_then(|s| STANDARD.decode(s).ok())
            .ok_or_else(|| bad("without a base64 Signature"))?;
        der_to_fixed(&der, self.spec.curve().coordinate_len()).ok_or_else(|| {
            bad("with a signature that is not a DER ECDSA signature of the key's curve")
        })
    }
}

impl KmsSigner {
    /// Signs a fresh random message and verifies the signature with the public key,
    /// so a missing `kms:Sign` permission or a disabled key shows at open as what it
    /// is (KMS's error type, a configuration error) rather than as a signature that
    /// does not verify.
    fn probe(&self) -> Result<(), KeysError> {
        let mut message = b"dpop-keys awskms probe ".to_vec();
        let mut nonce = [0_u8; 32];
        SystemRandom::new().fill(&mut nonce).map_err(|_| {
            KeysError::device(&self.key, "no random bytes for the test message", None)
        })?;
        message.extend_from_slice(&nonce);
        let signature = self.sign_digest(&message)?;
        if self.public.verify(self.spec.alg(), &message, &signature) {
            Ok(())
        } else {
            Err(KeysError::self_check(
                &self.key,
                "KMS signed with a key that does not match the public key it gave",
            ))
        }
    }
}

/// Whether the key ids `a` and `b` name the same key: equal, or one a key ARN ending in
/// `:key/` and the other.
fn same_key(a: &str, b: &str) -> bool {
    let arn_of = |arn: &str, id: &str| {
        arn.strip_suffix(id)
            .is_some_and(|head| head.starts_with("arn:") && head.ends_with(":key/"))
    };
    a == b || arn_of(a, b) || arn_of(b, a)
}

/// Opens the key `uri` names with `credentials` and checks one of its signatures,
/// as [`crate::open`] does with credentials from the environment (which then checks
/// a second one with [`crate::self_check`]).
///
/// # Errors
/// As [`crate::open`].
pub fn open_with(
    uri: &AwsKmsUri,
    options: &OpenOptions,
    credentials: AwsCredentials,
) -> Result<Arc<dyn Signer>, KeysError> {
    let key = DeviceKey::AwsKms(uri.clone());
    connect(&key, uri, options, credentials)
}

/// Creates a new KMS key for `alg` (ES256: `ECC_NIST_P256`, ES384: `ECC_NIST_P384`)
/// with `credentials` and names it with the alias in `uri` (`key-id=alias/NAME`, which
/// must not exist yet: an alias is never re-pointed). Returns the new key's ARN.
///
/// # Errors
/// A [`KeysError`]: the key id is not `alias/NAME`, the alias exists, `alg` is not one
/// KMS signs here, or KMS refuses (its error type in [`KeysError::code`]).
pub fn generate_with(
    uri: &AwsKmsUri,
    alg: Algorithm,
    options: &OpenOptions,
    credentials: AwsCredentials,
) -> Result<String, KeysError> {
    let key = DeviceKey::AwsKms(uri.clone());
    let alias = alias_name(&key, &uri.key_id)?;
    let spec = Spec::for_alg(alg).ok_or_else(|| {
        KeysError::config(
            &key,
            format!(
                "AWS KMS keys here sign ES256 (ECC_NIST_P256) or ES384 (ECC_NIST_P384), not {alg}"
            ),
            None,
        )
    })?;
    let kms = client(&key, uri, options, credentials)?;
    match kms.call("DescribeKey", &json!({ "KeyId": alias })) {
        Ok(found) => {
            let arn = found
                .pointer("/KeyMetadata/Arn")
                .and_then(Value::as_str)
                .unwrap_or("a key");
            return Err(KeysError::config(
                &key,
                format!(
                    "{alias} already names {arn}; generating never re-points an alias (open that key, or choose another alias)"
                ),
                None,
            ));
        }
        Err(Failure::Service { kind, .. }) if kind == "NotFoundException" => {}
        Err(e) => return Err(failure(&key, &kms, "DescribeKey", e)),
    }
    let created = call(
        &key,
        &kms,
        "CreateKey",
        &json!({
            "KeySpec": spec.key_spec(),
            "KeyUsage": "SIGN_VERIFY",
            "Description": "DPoP proof signing key (dpop-keys)",
        }),
    )?;
    let metadata = created.get("KeyMetadata");
    let field = |name: &str| metadata.and_then(|m| m.get(name)).and_then(Value::as_str);
    let (Some(key_id), Some(arn)) = (field("KeyId"), field("Arn")) else {
        return Err(KeysError::device(
            &key,
            "KMS CreateKey answered without the new key's KeyId and Arn",
            None,
        ));
    };
    if let Err(e) = kms.call(
        "CreateAlias",
        &json!({ "AliasName": alias, "TargetKeyId": key_id }),
    ) {
        let fate = match kms.call(
            "ScheduleKeyDeletion",
            &json!({ "KeyId": key_id, "PendingWindowInDays": 7 }),
        ) {
            Ok(_) => "was scheduled for deletion in 7 days".to_owned(),
            Err(_) => "could not be scheduled for deletion: delete it by hand".to_owned(),
        };
        let e = failure(&key, &kms, "CreateAlias", e);
        let (why, code) = match &e {
            KeysError::Config { why, code, .. } | KeysError::Device { why, code, .. } => {
                (why.clone(), code.clone())
            }
            other => (other.to_string(), None),
        };
        let why = format!("{why}; the new key {arn} {fate}");
        return Err(if e.is_config() {
            KeysError::config(&key, why, code)
        } else {
            KeysError::device(&key, why, code)
        });
    }
    Ok(arn.to_owned())
}

/// [`crate::open`]'s backend: credentials from the environment, no self-check (the
/// caller makes it).
pub(crate) fn open(uri: &AwsKmsUri, options: &OpenOptions) -> Result<Arc<dyn Signer>, KeysError> {
    let key = DeviceKey::AwsKms(uri.clone());
    connect(&key, uri, options, env_credentials(&key)?)
}

/// [`crate::generate`]'s backend: credentials from the environment.
pub(crate) fn generate(
    uri: &AwsKmsUri,
    alg: Algorithm,
    options: &OpenOptions,
) -> Result<(), KeysError> {
    let key = DeviceKey::AwsKms(uri.clone());
    generate_with(uri, alg, options, env_credentials(&key)?).map(|_| ())
}

fn env_credentials(key: &DeviceKey) -> Result<AwsCredentials, KeysError> {
    AwsCredentials::from_env().map_err(|why| KeysError::config(key, why, None))
}

/// `alias/NAME` as `CreateAlias` accepts it: letters, digits, `/`, `_` and `-`, not in
/// the `alias/aws/` space AWS keeps for itself.
fn alias_name<'a>(key: &DeviceKey, key_id: &'a str) -> Result<&'a str, KeysError> {
    let Some(name) = key_id.strip_prefix("alias/") else {
        return Err(KeysError::config(
            key,
            "generating needs key-id=alias/NAME: KMS picks a new key's id itself, and the alias is how the reference names it",
            None,
        ));
    };
    let valid = !name.is_empty()
        && key_id.len() <= 256
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'_' | b'-'));
    if !valid || name.starts_with("aws/") {
        return Err(KeysError::config(
            key,
            format!(
                "{key_id:?} is not an alias KMS lets you create (alias/ then letters, digits, /, _ or -, at most 256 characters, not alias/aws/…)"
            ),
            None,
        ));
    }
    Ok(key_id)
}

/// The region: the reference's, else the one in a key or alias ARN, else
/// `AWS_REGION` / `AWS_DEFAULT_REGION` looked up with `get`.
fn region(uri: &AwsKmsUri, get: impl Fn(&str) -> Option<String>) -> Result<String, String> {
    let from_arn = uri
        .key_id
        .strip_prefix("arn:")
        .map(|rest| rest.split(':').nth(2).unwrap_or_default().to_owned());
    if let Some(r) = &from_arn
        && r.is_empty()
    {
        return Err(format!("the key ARN {:?} names no region", uri.key_id));
    }
    let region = match (&uri.region, from_arn) {
        (Some(given), Some(arn)) if *given != arn => {
            return Err(format!(
                "region={given} but the key ARN is in {arn}: a key is used in its own region"
            ));
        }
        (Some(given), _) => given.clone(),
        (None, Some(arn)) => arn,
        (None, None) => ["AWS_REGION", "AWS_DEFAULT_REGION"]
            .into_iter()
            .find_map(|name| get(name).filter(|v| !v.is_empty()))
            .ok_or_else(|| {
                "no region: add ;region=REGION to the reference, use a key ARN, or set AWS_REGION"
                    .to_owned()
            })?,
    };
    let valid = !region.is_empty()
        && region.len() <= 32
        && region
            .bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-');
    if valid {
        Ok(region)
    } else {
        Err(format!("{region:?} is not a region name"))
    }
}

/// The client for `uri`: region, endpoint, time limit.
fn client(
    key: &DeviceKey,
    uri: &AwsKmsUri,
    options: &OpenOptions,
    credentials: AwsCredentials,
) -> Result<Kms, KeysError> {
    let config = |why: String| KeysError::config(key, why, None);
    let region = region(uri, |name| std::env::var(name).ok()).map_err(config)?;
    let endpoint = Endpoint::new(uri.endpoint.as_deref(), &region).map_err(config)?;
    if options.wait.is_zero() {
        return Err(config("the time limit (wait) is zero".to_owned()));
    }
    Kms::new(
        endpoint,
        region,
        credentials,
        options.wait,
        options.sessions.max(1),
    )
    .map_err(|why| KeysError::device(key, why, None))
}

/// Fetches and checks the key's public key; the signer, not yet self-checked.
fn connect(
    key: &DeviceKey,
    uri: &AwsKmsUri,
    options: &OpenOptions,
    credentials: AwsCredentials,
) -> Result<Arc<dyn Signer>, KeysError> {
    let wanted = match options.alg {
        None => None,
        Some(alg) => Some(Spec::for_alg(alg).ok_or_else(|| {
            KeysError::config(
                key,
                format!("AWS KMS keys here sign ES256 or ES384, not {alg}"),
                None,
            )
        })?),
    };
    let kms = client(key, uri, options, credentials)?;
    let answer = call(key, &kms, "GetPublicKey", &json!({ "KeyId": uri.key_id }))?;
    let text = |name: &str| answer.get(name).and_then(Value::as_str);
    let config = |why: String| KeysError::config(key, why, None);
    let usage = text("KeyUsage").unwrap_or("(none)");
    if usage != "SIGN_VERIFY" {
        return Err(config(format!(
            "the key's usage is {usage}, not SIGN_VERIFY: it cannot sign"
        )));
    }
    // `KeySpec`, or the older name `CustomerMasterKeySpec` some stand-ins still send.
    let spec_name = match (text("KeySpec"), text("CustomerMasterKeySpec")) {
        (Some(a), Some(b)) if a != b => {
            return Err(KeysError::device(
                key,
                format!("KMS GetPublicKey answered two key specs, {a} and {b}"),
                None,
            ));
        }
        (Some(s), _) | (None, Some(s)) => s,
        (None, None) => "(none)",
    };
    let spec = Spec::ALL
        .into_iter()
        .find(|s| s.key_spec() == spec_name)
        .ok_or_else(|| {
            config(format!(
                "the key's spec is {spec_name}; DPoP keys in KMS are ECC_NIST_P256 (ES256) or ECC_NIST_P384 (ES384)"
            ))
        })?;
    if let Some(w) = wanted
        && w != spec
    {
        return Err(config(format!(
            "the key is {spec_name} ({}), not {} for {}",
            spec.alg(),
            w.key_spec(),
            w.alg()
        )));
    }
    if let Some(algs) = answer.get("SigningAlgorithms").and_then(Value::as_array)
        && !algs
            .iter()
            .any(|a| a.as_str() == Some(spec.signing_algorithm()))
    {
        return Err(config(format!(
            "the key does not offer {} (it offers {})",
            spec.signing_algorithm(),
            Value::Array(algs.clone())
        )));
    }
    let device = |why: String| KeysError::device(key, why, None);
    let key_arn = text("KeyId")
        .filter(|id| !id.is_empty())
        .ok_or_else(|| device("KMS GetPublicKey answered without the KeyId".to_owned()))?
        .to_owned();
    let spki = text("PublicKey")
        .and_then(|p| STANDARD.decode(p).ok())
        .ok_or_else(|| device("KMS GetPublicKey answered without a base64 PublicKey".to_owned()))?;
    let public = spec
        .public_jwk(&spki)
        .map_err(|why| device(format!("KMS GetPublicKey answered a bad key: {why}")))?;
    let signer = KmsSigner {
        key: key.clone(),
        kms,
        key_arn,
        spec,
        public,
    };
    signer.probe()?;
    Ok(Arc::new(signer))
}

/// One call, its failure turned into a [`KeysError`].
fn call(key: &DeviceKey, kms: &Kms, action: &str, body: &Value) -> Result<Value, KeysError> {
    kms.call(action, body)
        .map_err(|e| failure(key, kms, action, e))
}

/// A failed call as a [`KeysError`]: KMS's error type as the code, configuration
/// errors apart from those a retry may cure.
fn failure(key: &DeviceKey, kms: &Kms, action: &str, failure: Failure) -> KeysError {
    match failure {
        Failure::Service { kind, message } => {
            let config = CONFIG_ERRORS.contains(&kind.as_str());
            let verb = if config { "refused" } else { "failed" };
            let why = if message.is_empty() {
                format!("KMS {verb} {action}")
            } else {
                format!("KMS {verb} {action}: {message}")
            };
            if config {
                KeysError::config(key, why, Some(kind))
            } else {
                KeysError::device(key, why, Some(kind))
            }
        }
        Failure::TimedOut => KeysError::device(
            key,
            format!(
                "KMS {action} at {} timed out (no answer within {:?})",
                kms.endpoint, kms.timeout
            ),
            None,
        ),
        Failure::Transport(why) => KeysError::device(
            key,
            format!("cannot reach KMS at {} for {action}: {why}", kms.endpoint),
            None,
        ),
        Failure::Malformed(why) => KeysError::device(key, format!("KMS {action} sent {why}"), None),
    }
}

#[cfg(test)]
mod tests {
    use super::{Spec, region, same_key};
    use crate::{DeviceKey, KeyRef};

    fn uri(text: &str) -> crate::AwsKmsUri {
        match KeyRef::parse(text).unwrap() {
            KeyRef::Device(DeviceKey::AwsKms(u)) => u,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_region_comes_from_the_reference_the_arn_or_the_environment() {
        let none = |_: &str| None;
        let env = |name: &str| (name == "AWS_DEFAULT_REGION").then(|| "ap-south-1".to_owned());
        assert_eq!(
            region(&uri("awskms:key-id=alias/a;region=eu-west-1"), env).unwrap(),
            "eu-west-1"
        );
        let arn = "awskms:key-id=arn:aws:kms:us-west-2:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab";
        assert_eq!(region(&uri(arn), env).unwrap(), "us-west-2");
        assert_eq!(
            region(&uri(&format!("{arn};region=us-west-2")), none).unwrap(),
            "us-west-2"
        );
        assert!(
            region(&uri(&format!("{arn};region=eu-west-1")), none)
                .unwrap_err()
                .contains("its own region")
        );
        assert_eq!(
            region(&uri("awskms:key-id=alias/a"), env).unwrap(),
            "ap-south-1"
        );
        let both = |name: &str| {
            Some(
                if name == "AWS_REGION" {
                    "eu-north-1"
                } else {
                    "ap-south-1"
                }
                .to_owned(),
            )
        };
        assert_eq!(
            region(&uri("awskms:key-id=alias/a"), both).unwrap(),
            "eu-north-1"
        );
        assert!(
            region(&uri("awskms:key-id=alias/a"), none)
                .unwrap_err()
                .contains("no region")
        );
        let odd = |_: &str| Some("eu-west-1.evil.example/".to_owned());
        assert!(
            region(&uri("awskms:key-id=alias/a"), odd)
                .unwrap_err()
                .contains("not a region")
        );
        assert!(
            region(&uri("awskms:key-id=arn:aws:kms::1:key/x"), none)
                .unwrap_err()
                .contains("names no region")
        );
    }

    #[test]
    fn key_ids_and_arns_of_one_key_are_the_same_key() {
        let id = "1234abcd-12ab-34cd-56ef-1234567890ab";
        let arn = format!("arn:aws:kms:us-west-2:111122223333:key/{id}");
        assert!(same_key(id, id));
        assert!(same_key(&arn, id));
        assert!(same_key(id, &arn));
        assert!(!same_key(&arn, "1234abcd"));
        assert!(!same_key("x", id));
        assert!(!same_key(
            &format!("arn:aws:kms:us-west-2:111122223333:alias/{id}"),
            id
        ));
    }

    #[test]
    fn public_keys_are_read_strictly_from_the_spki() {
        use aws_lc_rs::encoding::AsDer as _;
        use aws_lc_rs::signature::{
            ECDSA_P256_SHA256_ASN1_SIGNING, ECDSA_P384_SHA384_ASN1_SIGNING, EcdsaKeyPair,
            KeyPair as _,
        };
        for (spec, signing) in [
            (Spec::P256, &ECDSA_P256_SHA256_ASN1_SIGNING),
            (Spec::P384, &ECDSA_P384_SHA384_ASN1_SIGNING),
        ] {
            let pair = EcdsaKeyPair::generate(signing).unwrap();
            let spki = pair.public_key().as_der().unwrap();
            let spki = spki.as_ref();
            let jwk = spec.public_jwk(spki).unwrap();
            let raw = jwk.raw_public_key().unwrap();
            assert_eq!(raw, pair.public_key().as_ref());
            let other = if spec == Spec::P256 {
                Spec::P384
            } else {
                Spec::P256
            };
            assert!(other.public_jwk(spki).is_err());
            let mut trailing = spki.to_vec();
            trailing.push(0);
            assert!(spec.public_jwk(&trailing).is_err());
            assert!(spec.public_jwk(&spki[..spki.len() - 1]).is_err());
            let mut off_curve = spki.to_vec();
            let last = off_curve.len() - 1;
            off_curve[last] ^= 1;
            assert!(spec.public_jwk(&off_curve).is_err());
        }
    }
}
