//! Device key URIs: `pkcs11:` (RFC 7512), `tpm2:` and `awskms:`, parsed once into typed
//! values. All three share one grammar: `scheme:name=value;name=value?name=value&…`,
//! values percent-encoded. Unknown and repeated attributes are refused rather than
//! ignored: a misspelt `objetc=` must not silently select another key.

use core::fmt;
use std::path::PathBuf;

use zeroize::Zeroizing;

use crate::error::{Backend, KeysError};
use crate::redact::{redact, redact_attributes};

/// Where a PIN (or a TPM authorisation value) comes from.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PinSource {
    /// The first line of a file (`pin-source=file:/run/secrets/pin`), which must be
    /// readable by its owner only.
    File(PathBuf),
    /// An environment variable (`pin-source=env:NAME`).
    Env(String),
    /// Written into the URI (`pin-value=…`): refused unless the caller allows it
    /// dangerously.
    Value(Zeroizing<String>),
}

impl fmt::Debug for PinSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::File(p) => write!(f, "File({})", p.display()),
            Self::Env(n) => write!(f, "Env({n})"),
            Self::Value(_) => f.write_str("Value(***)"),
        }
    }
}

impl PinSource {
    fn parse(backend: Backend, whole: &str, name: &str, value: &str) -> Result<Self, KeysError> {
        if let Some(path) = value.strip_prefix("file:") {
            if path.is_empty() {
                return Err(KeysError::syntax(
                    backend,
                    whole,
                    format!("{name} names no file"),
                ));
            }
            return Ok(Self::File(PathBuf::from(path)));
        }
        if let Some(var) = value.strip_prefix("env:") {
            if var.is_empty() || var.contains('=') || var.contains('\0') {
                return Err(KeysError::syntax(
                    backend,
                    whole,
                    format!("{name} names no usable environment variable"),
                ));
            }
            return Ok(Self::Env(var.to_owned()));
        }
        Err(KeysError::syntax(
            backend,
            whole,
            format!("{name} must be file:PATH or env:NAME"),
        ))
    }

    /// Reads the secret. A file must be a regular file readable by its owner only; its
    /// first line is the secret (a trailing newline is not part of it).
    ///
    /// # Errors
    /// A message naming the file or variable (never the secret) and the fix.
    pub fn read(&self, dangerous_allow_value: bool) -> Result<Zeroizing<String>, String> {
        match self {
            Self::Value(v) if dangerous_allow_value => Ok(v.clone()),
            Self::Value(_) => Err(
                "the PIN is written into the URI, where shell history, process listings and configuration files keep it; use pin-source=file:PATH or env:NAME (a dangerous option allows it for tests)"
                    .to_owned(),
            ),
            Self::Env(name) => std::env::var(name)
                .map(Zeroizing::new)
                .map_err(|_| format!("the environment variable {name} (the PIN) is not set")),
            Self::File(path) => read_secret_file(path),
        }
    }
}

/// The first line of a small PIN file, this user's own and readable by it only.
fn read_secret_file(path: &std::path::Path) -> Result<Zeroizing<String>, String> {
    let bytes = crate::file::read_file(path, 4096, "PIN file", true)?;
    let text = std::str::from_utf8(&bytes)
        .map_err(|_| format!("the PIN file {} is not UTF-8 text", path.display()))?;
    let line = text.split(['\n', '\r']).next().unwrap_or_default();
    Ok(Zeroizing::new(line.to_owned()))
}

/// One attribute: its name and percent-decoded value.
type Attribute<'a> = (&'a str, Zeroizing<Vec<u8>>);

/// The attributes of a device URI: those before `?` and those after it, each value
/// percent-decoded to bytes.
struct Attributes<'a> {
    backend: Backend,
    whole: &'a str,
    path: Vec<Attribute<'a>>,
    query: Vec<Attribute<'a>>,
}

impl<'a> Attributes<'a> {
    fn parse(backend: Backend, whole: &'a str, rest: &'a str) -> Result<Self, KeysError> {
        let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
        let split = |part: &'a str, sep: char| -> Result<Vec<Attribute<'a>>, KeysError> {
            let mut out: Vec<Attribute<'a>> = Vec::new();
            for attr in part.split(sep).filter(|a| !a.is_empty()) {
                let Some((name, value)) = attr.split_once('=') else {
                    return Err(KeysError::syntax(
                        backend,
                        whole,
                        format!("{:?} is not name=value", redact_attributes(attr)),
                    ));
                };
                if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                {
                    return Err(KeysError::syntax(
                        backend,
                        whole,
                        format!("{name:?} is not an attribute name"),
                    ));
                }
                if out.iter().any(|(n, _)| *n == name) {
                    return Err(KeysError::syntax(
                        backend,
                        whole,
                        format!("{name} is given twice"),
                    ));
                }
                let value = percent_decode(value).ok_or_else(|| {
                    KeysError::syntax(
                        backend,
                        whole,
                        format!("the value of {name} has a bad percent-encoding"),
                    )
                })?;
                out.push((name, value));
            }
            Ok(out)
        };
        let path = split(path, ';')?;
        // RFC 7512 has no `;` in query values, and a second `?` would be read as the
        // start of another attribute by anyone splitting on it: both must be
        // percent-encoded, so that `module-path=/m.so?pin-value=…` is not a module path.
        if let Some(c) = query.chars().find(|c| matches!(c, ';' | '?')) {
            return Err(KeysError::syntax(
                backend,
                whole,
                format!(
                    "a query value holds {c:?}: write it as {} (attributes after the ? are separated by &)",
                    if c == ';' { "%3B" } else { "%3F" }
                ),
            ));
        }
        let query = split(query, '&')?;
        for (name, _) in &path {
            if query.iter().any(|(n, _)| n == name) {
                return Err(KeysError::syntax(
                    backend,
                    whole,
                    format!("{name} is given twice"),
                ));
            }
        }
        Ok(Self {
            backend,
            whole,
            path,
            query,
        })
    }

    /// Refuses any attribute not in `path_names` (before `?`) or `query_names` (after).
    fn only(&self, path_names: &[&str], query_names: &[&str]) -> Result<(), KeysError> {
        for (names, attrs, part) in [
            (path_names, &self.path, "path"),
            (query_names, &self.query, "query"),
        ] {
            if let Some((name, _)) = attrs.iter().find(|(n, _)| !names.contains(n)) {
                let known = names.join(", ");
                return Err(KeysError::syntax(
                    self.backend,
                    self.whole,
                    format!("unknown {part} attribute {name} (known: {known})"),
                ));
            }
        }
        Ok(())
    }

    fn bytes(&self, name: &str) -> Option<&[u8]> {
        self.path
            .iter()
            .chain(&self.query)
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_slice())
    }

    fn text(&self, name: &str) -> Result<Option<String>, KeysError> {
        self.bytes(name)
            .map(|b| {
                String::from_utf8(b.to_vec()).map_err(|_| {
                    KeysError::syntax(
                        self.backend,
                        self.whole,
                        format!("the value of {name} is not UTF-8"),
                    )
                })
            })
            .transpose()
    }

    fn nonempty(&self, name: &str) -> Result<Option<String>, KeysError> {
        match self.text(name)? {
            Some(v) if v.is_empty() => Err(KeysError::syntax(
                self.backend,
                self.whole,
                format!("{name} is empty"),
            )),
            other => Ok(other),
        }
    }

    fn pin(&self, source: &str, value: &str) -> Result<Option<PinSource>, KeysError> {
        match (self.nonempty(source)?, self.text(value)?) {
            (Some(_), Some(_)) => Err(KeysError::syntax(
                self.backend,
                self.whole,
                format!("give {source} or {value}, not both"),
            )),
            (Some(s), None) => PinSource::parse(self.backend, self.whole, source, &s).map(Some),
            (None, Some(v)) => Ok(Some(PinSource::Value(Zeroizing::new(v)))),
            (None, None) => Ok(None),
        }
    }

    fn hex_u32(&self, name: &str) -> Result<Option<u32>, KeysError> {
        self.text(name)?
            .map(|v| {
                v.strip_prefix("0x")
                    .or_else(|| v.strip_prefix("0X"))
                    // from_str_radix also takes a sign: `0x+81000001` is no handle.
                    .filter(|h| h.bytes().all(|b| b.is_ascii_hexdigit()))
                    .and_then(|h| u32::from_str_radix(h, 16).ok())
                    .ok_or_else(|| {
                        KeysError::syntax(
                            self.backend,
                            self.whole,
                            format!("{name} must be a hexadecimal handle like 0x81000001"),
                        )
                    })
            })
            .transpose()
    }
}

/// Strict percent-decoding: every `%` followed by two hexadecimal digits.
fn percent_decode(value: &str) -> Option<Zeroizing<Vec<u8>>> {
    let bytes = value.as_bytes();
    let mut out = Zeroizing::new(Vec::with_capacity(bytes.len()));
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            if !hex.bytes().all(|c| c.is_ascii_hexdigit()) {
                return None;
            }
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b);
            i += 1;
        }
    }
    Some(out)
}

/// A PKCS#11 key (RFC 7512). The token is chosen by `token`, `manufacturer`, `serial`,
/// `model` or `slot-id`; the private key by `object` (its `CKA_LABEL`) and/or `id`
/// (`CKA_ID`, percent-encoded bytes). The module comes from `module-path`, the user PIN
/// from `pin-source` (`file:PATH` or `env:NAME`) or, dangerously, `pin-value`.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Pkcs11Uri {
    shown: String,
    /// `token`: the token label.
    pub token: Option<String>,
    /// `manufacturer`: the token's manufacturer ID.
    pub manufacturer: Option<String>,
    /// `serial`: the token's serial number.
    pub serial: Option<String>,
    /// `model`: the token's model.
    pub model: Option<String>,
    /// `slot-id`: the slot number.
    pub slot_id: Option<u64>,
    /// `object`: the key's label (`CKA_LABEL`).
    pub object: Option<String>,
    /// `id`: the key's `CKA_ID`.
    pub id: Option<Vec<u8>>,
    /// `module-path`: the PKCS#11 module (shared library) to load.
    pub module_path: PathBuf,
    /// Where the user PIN comes from; `None` for tokens that need no login.
    pub pin: Option<PinSource>,
}

impl Pkcs11Uri {
    pub(crate) fn parse(whole: &str, rest: &str) -> Result<Self, KeysError> {
        let b = Backend::Pkcs11;
        let a = Attributes::parse(b, whole, rest)?;
        a.only(
            &[
                "token",
                "manufacturer",
                "serial",
                "model",
                "slot-id",
                "object",
                "id",
                "type",
            ],
            &["module-path", "pin-source", "pin-value"],
        )?;
        if let Some(t) = a.text("type")?
            && t != "private"
        {
            return Err(KeysError::syntax(
                b,
                whole,
                format!("type={t}: a signing key is type=private"),
            ));
        }
        let slot_id = a
            .text("slot-id")?
            .map(|s| {
                // `parse` also takes a sign: `+1` is no slot number.
                s.bytes()
                    .all(|c| c.is_ascii_digit())
                    .then(|| s.parse::<u64>().ok())
                    .flatten()
                    .ok_or_else(|| KeysError::syntax(b, whole, "slot-id must be a decimal number"))
            })
            .transpose()?;
        let module_path = a.nonempty("module-path")?.map(PathBuf::from).ok_or_else(|| {
            KeysError::syntax(b, whole, "no module-path: add ?module-path=/path/to/the/pkcs11-module.so (e.g. /usr/lib/softhsm/libsofthsm2.so)")
        })?;
        let uri = Self {
            shown: redact(whole),
            token: a.nonempty("token")?,
            manufacturer: a.nonempty("manufacturer")?,
            serial: a.nonempty("serial")?,
            model: a.nonempty("model")?,
            slot_id,
            object: a.nonempty("object")?,
            id: a.bytes("id").map(<[u8]>::to_vec),
            module_path,
            pin: a.pin("pin-source", "pin-value")?,
        };
        if uri.object.is_none() && uri.id.as_ref().is_none_or(Vec::is_empty) {
            return Err(KeysError::syntax(
                b,
                whole,
                "name the key with object=LABEL and/or id=%01%02…",
            ));
        }
        Ok(uri)
    }
}

/// A TPM 2.0 key: a persistent `handle` (0x81000000–0x81FFFFFF) or a key `file` (the
/// public and private blobs of a key made under a parent). The TCTI (how to reach the
/// TPM: `device:/dev/tpmrm0`, `tabrmd`, `swtpm:host=127.0.0.1,port=2321`) comes from
/// `tcti` or the environment's `TPM2TOOLS_TCTI` / `TCTI`; the key's authorisation value
/// from `auth-source` or, dangerously, `auth-value`.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Tpm2Uri {
    shown: String,
    /// `handle`: a persistent handle.
    pub handle: Option<u32>,
    /// `file`: a key blob file.
    pub file: Option<PathBuf>,
    /// `parent`: the persistent handle of the parent of a key file (default: a primary
    /// key made from the owner hierarchy's standard template).
    pub parent: Option<u32>,
    /// `tcti`: the TCTI configuration.
    pub tcti: Option<String>,
    /// Where the key's authorisation value comes from; `None` for an empty one.
    pub auth: Option<PinSource>,
}

/// The range of TPM persistent object handles.
const PERSISTENT: core::ops::RangeInclusive<u32> = 0x8100_0000..=0x81FF_FFFF;

impl Tpm2Uri {
    pub(crate) fn parse(whole: &str, rest: &str) -> Result<Self, KeysError> {
        let b = Backend::Tpm2;
        let a = Attributes::parse(b, whole, rest)?;
        a.only(
            &["handle", "file", "parent"],
            &["tcti", "auth-source", "auth-value"],
        )?;
        let handle = a.hex_u32("handle")?;
        let parent = a.hex_u32("parent")?;
        for (name, h) in [("handle", handle), ("parent", parent)] {
            if h.is_some_and(|h| !PERSISTENT.contains(&h)) {
                return Err(KeysError::syntax(
                    b,
                    whole,
                    format!("{name} must be a persistent handle (0x81000000 to 0x81FFFFFF)"),
                ));
            }
        }
        let file = a.nonempty("file")?.map(PathBuf::from);
        match (handle, &file) {
            (Some(_), Some(_)) => {
                return Err(KeysError::syntax(b, whole, "give handle or file, not both"));
            }
            (None, None) => {
                return Err(KeysError::syntax(
                    b,
                    whole,
                    "name the key with handle=0x81…  or file=PATH",
                ));
            }
            _ => {}
        }
        if parent.is_some() && file.is_none() {
            return Err(KeysError::syntax(b, whole, "parent is only for a key file"));
        }
        Ok(Self {
            shown: redact(whole),
            handle,
            file,
            parent,
            tcti: a.nonempty("tcti")?,
            auth: a.pin("auth-source", "auth-value")?,
        })
    }
}

/// An AWS KMS asymmetric signing key: `key-id` (a key id, key ARN, alias name or alias
/// ARN), `region` (else from the ARN or `AWS_REGION`), and `endpoint` (else the
/// region's public endpoint; an `http://` endpoint only on loopback, for stand-ins).
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct AwsKmsUri {
    shown: String,
    /// `key-id`.
    pub key_id: String,
    /// `region`.
    pub region: Option<String>,
    /// `endpoint`.
    pub endpoint: Option<String>,
}

impl AwsKmsUri {
    pub(crate) fn parse(whole: &str, rest: &str) -> Result<Self, KeysError> {
        let b = Backend::AwsKms;
        let a = Attributes::parse(b, whole, rest)?;
        a.only(&["key-id", "region"], &["endpoint"])?;
        let key_id = a.nonempty("key-id")?.ok_or_else(|| {
            KeysError::syntax(
                b,
                whole,
                "no key-id: awskms:key-id=alias/NAME or a key id or ARN",
            )
        })?;
        let region = a.nonempty("region")?;
        if let Some(r) = &region
            && !r
                .bytes()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
        {
            return Err(KeysError::syntax(
                b,
                whole,
                format!("{r:?} is not a region name"),
            ));
        }
        Ok(Self {
            shown: redact(whole),
            key_id,
            region,
            endpoint: a.nonempty("endpoint")?,
        })
    }
}

macro_rules! shown_as_given {
    ($($t:ty),*) => {$(
        impl fmt::Display for $t {
            /// The URI as given, secrets as `***`.
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.shown)
            }
        }
        impl fmt::Debug for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($t), self.shown)
            }
        }
    )*};
}
shown_as_given!(Pkcs11Uri, Tpm2Uri, AwsKmsUri);
