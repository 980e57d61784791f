//! `WWW-Authenticate` challenges (RFC 9110 §11.6.1, RFC 9449 §7.1) and `DPoP-Nonce` values
//! (RFC 9449 §8.1).
//!
//! Servers build a [`Challenge`] with the typed `with_*` methods, which check each value
//! against the grammar of the RFC that defines it, and send [`render`]'s output as one header
//! value. Clients [`parse`] the header they receive and look for the `DPoP` scheme, its
//! `algs` and its `error` (e.g. `use_dpop_nonce`, RFC 9449 §8). Parsing is bounded
//! ([`MAX_HEADER_LEN`], [`MAX_PARAMS`], [`MAX_CHALLENGES`]), never panics, and keeps unknown
//! parameters, because recipients must ignore, not reject, the ones they do not know
//! (RFC 9449 §7.1).
//!
//! Every parameter value, parsed or built, is printable ASCII (%x20-7E): header values are
//! ASCII in practice (RFC 9110 §5.5 deprecates `obs-text`) and control characters in a value
//! are a header-injection risk. Rendering always uses the quoted-string form, which every
//! recipient must accept (RFC 9110 §11.2) and which RFC 9449's own examples use.

#![forbid(unsafe_code)]

use core::fmt::{self, Write as _};

use crate::syntax;

/// The longest `WWW-Authenticate` or `DPoP-Nonce` value accepted, in bytes.
///
/// RFC 9110 sets no limit; this one keeps the parser's work and memory bounded for input
/// that comes straight off the network. Real challenges are a few hundred bytes.
pub const MAX_HEADER_LEN: usize = 16 * 1024;

/// The most auth-params accepted in one parsed header value (all challenges together), and
/// in one built [`Challenge`].
pub const MAX_PARAMS: usize = 64;

/// The most challenges accepted in one parsed header value.
pub const MAX_CHALLENGES: usize = 64;

/// One authentication challenge (RFC 9110 §11.1): an auth-scheme with either a `token68`
/// or an ordered list of auth-params.
///
/// The scheme and parameter names keep the case they were built or received with, but
/// compare ASCII case-insensitively (RFC 9110 §11.1, §11.2). Parameter order is kept, so a
/// built challenge renders exactly as written (RFC 9449 Figures 15–19, 24).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Challenge {
    /// The auth-scheme, always a `token`.
    scheme: String,
    /// The `token68` form of the credentials (RFC 9110 §11.2), exclusive with `params`.
    token68: Option<String>,
    /// The auth-params in order: names are tokens unique ignoring ASCII case; values are
    /// unescaped and printable ASCII.
    params: Vec<(String, String)>,
}

impl Challenge {
    /// A `DPoP` challenge with no parameters (RFC 9449 §7.1).
    #[must_use]
    pub fn dpop() -> Self {
        Self::unchecked("DPoP")
    }

    /// A `Bearer` challenge with no parameters (RFC 6750 §3), for servers that also accept
    /// bearer tokens and so list both schemes (RFC 9449 §7.2, Figures 17–19).
    #[must_use]
    pub fn bearer() -> Self {
        Self::unchecked("Bearer")
    }

    /// A challenge for any scheme.
    ///
    /// # Errors
    /// [`ChallengeError::InvalidScheme`] unless `scheme` is a `token` (RFC 9110 §11.1).
    pub fn new(scheme: &str) -> Result<Self, ChallengeError> {
        if !syntax::is_token(scheme.as_bytes()) {
            return Err(ChallengeError::InvalidScheme);
        }
        Ok(Self::unchecked(scheme))
    }

    /// A challenge whose scheme the caller has already checked to be a token.
    fn unchecked(scheme: &str) -> Self {
        Self {
            scheme: scheme.to_owned(),
            token68: None,
            params: Vec::new(),
        }
    }

    /// Appends the auth-param `name="value"` (RFC 9110 §11.2).
    ///
    /// The value may hold any printable ASCII, space included; `"` and `\` are escaped when
    /// rendered. Use the typed methods for the parameters they cover, which also check the
    /// value's own grammar.
    ///
    /// # Errors
    /// [`ChallengeError::InvalidParamName`] unless `name` is a token;
    /// [`ChallengeError::InvalidParamValue`] for a control or non-ASCII character in `value`;
    /// [`ChallengeError::DuplicateParam`] if the name is already present (ignoring ASCII
    /// case), since a repeated name is ambiguous and RFC 9110 §11.2 forbids it;
    /// [`ChallengeError::TooManyParams`] past [`MAX_PARAMS`];
    /// [`ChallengeError::Token68WithParams`] on a parsed `token68` challenge.
    pub fn with_param(mut self, name: &str, value: &str) -> Result<Self, ChallengeError> {
        if !syntax::is_token(name.as_bytes()) {
            return Err(ChallengeError::InvalidParamName);
        }
        if !value.bytes().all(is_value_byte) {
            return Err(ChallengeError::InvalidParamValue {
                name: name.to_owned(),
            });
        }
        self.push_param(name.to_owned(), value.to_owned())?;
        Ok(self)
    }

    /// Appends the auth-param, enforcing the invariants shared by building and parsing.
    fn push_param(&mut self, name: String, value: String) -> Result<(), ChallengeError> {
        if self.token68.is_some() {
            return Err(ChallengeError::Token68WithParams);
        }
        if self.param(&name).is_some() {
            return Err(ChallengeError::DuplicateParam { name });
        }
        if self.params.len() >= MAX_PARAMS {
            return Err(ChallengeError::TooManyParams);
        }
        self.params.push((name, value));
        Ok(())
    }

    /// Appends `error="code"` (RFC 6750 §3; RFC 9449 §7.1 for `invalid_dpop_proof`, §8 and
    /// §9 for `use_dpop_nonce`).
    ///
    /// # Errors
    /// [`ChallengeError::InvalidErrorCode`] unless `code` is
    /// `1*( %x20-21 / %x23-5B / %x5D-7E )` (RFC 6749 Appendix A.7); otherwise as
    /// [`Challenge::with_param`].
    pub fn with_error(self, code: &str) -> Result<Self, ChallengeError> {
        if !syntax::is_error_description(code.as_bytes()) {
            return Err(ChallengeError::InvalidErrorCode);
        }
        self.with_param("error", code)
    }

    /// Appends `error_description="text"`, the human-readable explanation (RFC 6750 §3).
    ///
    /// # Errors
    /// [`ChallengeError::InvalidErrorDescription`] unless `text` is
    /// `1*( %x20-21 / %x23-5B / %x5D-7E )` (RFC 6750 §3); otherwise as
    /// [`Challenge::with_param`].
    pub fn with_error_description(self, text: &str) -> Result<Self, ChallengeError> {
        if !syntax::is_error_description(text.as_bytes()) {
            return Err(ChallengeError::InvalidErrorDescription);
        }
        self.with_param("error_description", text)
    }

    /// Appends `algs="A B …"`, the JWS algorithms the server accepts in proofs (RFC 9449
    /// §7.1), space-separated in the order given.
    ///
    /// # Errors
    /// [`ChallengeError::InvalidAlgs`] if there is no algorithm or one is not a token (an
    /// empty name or a space would corrupt the list); otherwise as [`Challenge::with_param`].
    pub fn with_algs<I, S>(self, algs: I) -> Result<Self, ChallengeError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut joined = String::new();
        for alg in algs {
            let alg = alg.as_ref();
            if !syntax::is_token(alg.as_bytes()) {
                return Err(ChallengeError::InvalidAlgs);
            }
            if !joined.is_empty() {
                joined.push(' ');
            }
            joined.push_str(alg);
        }
        if joined.is_empty() {
            return Err(ChallengeError::InvalidAlgs);
        }
        self.with_param("algs", &joined)
    }

    /// Appends `realm="…"`, the protection space (RFC 9110 §11.5, RFC 6750 §3).
    ///
    /// # Errors
    /// As [`Challenge::with_param`]: any printable ASCII is allowed.
    pub fn with_realm(self, realm: &str) -> Result<Self, ChallengeError> {
        self.with_param("realm", realm)
    }

    /// Appends `scope="…"`, the scope the resource needs (RFC 6750 §3).
    ///
    /// # Errors
    /// [`ChallengeError::InvalidScope`] unless `scope` is `scope-token *( SP scope-token )`
    /// with `scope-token = 1*( %x21 / %x23-5B / %x5D-7E )` (RFC 6749 §3.3); otherwise as
    /// [`Challenge::with_param`].
    pub fn with_scope(self, scope: &str) -> Result<Self, ChallengeError> {
        // `split` yields an empty piece for a leading, trailing or doubled space, and the
        // empty string yields one empty piece: `is_nonce` (same class as scope-token)
        // refuses each of those.
        if !scope.split(' ').all(|t| syntax::is_nonce(t.as_bytes())) {
            return Err(ChallengeError::InvalidScope);
        }
        self.with_param("scope", scope)
    }

    /// The auth-scheme, in the case it was built or received with.
    #[must_use]
    pub fn scheme(&self) -> &str {
        &self.scheme
    }

    /// Whether this challenge is for `scheme`, compared ASCII case-insensitively as RFC 9110
    /// §11.1 requires (a server may send `dpop` for `DPoP`).
    #[must_use]
    pub fn is_scheme(&self, scheme: &str) -> bool {
        self.scheme.eq_ignore_ascii_case(scheme)
    }

    /// The `token68` credentials of a challenge received in that form (RFC 9110 §11.2), e.g.
    /// `Negotiate abc==`; such a challenge has no auth-params.
    #[must_use]
    pub fn token68(&self) -> Option<&str> {
        self.token68.as_deref()
    }

    /// The unescaped value of the parameter `name`, matched ASCII case-insensitively
    /// (RFC 9110 §11.2).
    #[must_use]
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// All parameters as `(name, unescaped value)` in order, unknown ones included.
    pub fn params(&self) -> impl Iterator<Item = (&str, &str)> {
        self.params.iter().map(|(n, v)| (n.as_str(), v.as_str()))
    }

    /// The `error` code (RFC 6750 §3), e.g. `invalid_token` or `use_dpop_nonce`.
    #[must_use]
    pub fn error(&self) -> Option<&str> {
        self.param("error")
    }

    /// The algorithms listed in `algs` (RFC 9449 §7.1); empty when the parameter is absent.
    /// Runs of spaces are tolerated on input.
    pub fn algs(&self) -> impl Iterator<Item = &str> {
        self.param("algs")
            .unwrap_or("")
            .split(' ')
            .filter(|a| !a.is_empty())
    }
}

/// Renders the challenge as RFC 9110 §11.6.1 wants it: the scheme, then either the
/// `token68` or the auth-params in order, each as `name="value"` with `"` and `\` escaped
/// as quoted-pairs (RFC 9110 §5.6.4). A challenge with neither is the bare scheme.
impl fmt::Display for Challenge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.scheme)?;
        if let Some(token68) = &self.token68 {
            f.write_char(' ')?;
            f.write_str(token68)?;
        }
        let mut sep = " ";
        for (name, value) in &self.params {
            f.write_str(sep)?;
            sep = ", ";
            f.write_str(name)?;
            f.write_str("=\"")?;
            for c in value.chars() {
                if c == '"' || c == '\\' {
                    f.write_char('\\')?;
                }
                f.write_char(c)?;
            }
            f.write_char('"')?;
        }
        Ok(())
    }
}

/// Joins challenges into one `WWW-Authenticate` value, comma and space between them
/// (RFC 9110 §11.6.1 allows several challenges in one field; RFC 9449 Figures 17–19).
#[must_use]
pub fn render(challenges: &[Challenge]) -> String {
    let mut out = String::new();
    for (i, challenge) in challenges.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        // Writing to a `String` cannot fail.
        let _ = write!(out, "{challenge}");
    }
    out
}

/// Parses a `WWW-Authenticate` value into its challenges (RFC 9110 §11.6.1).
///
/// Grammar (RFC 9110 §11.2): `challenge = auth-scheme [ 1*SP ( token68 / #auth-param ) ]`,
/// `auth-param = token BWS "=" BWS ( token / quoted-string )`, challenges and params
/// comma-separated with OWS, empty list elements skipped (RFC 9110 §5.6.1.2); HTAB is
/// tolerated where `1*SP` is required. Since a
/// challenge list and a param list share the comma, a token followed by `=` continues the
/// current challenge and any other token starts a new one. Param values come back unescaped
/// and both quoting forms are accepted; unknown params are kept.
///
/// # Errors
/// [`ChallengeError::TooLong`] past [`MAX_HEADER_LEN`] bytes;
/// [`ChallengeError::TooManyParams`] / [`ChallengeError::TooManyChallenges`] past
/// [`MAX_PARAMS`] / [`MAX_CHALLENGES`]; [`ChallengeError::UnterminatedQuote`];
/// [`ChallengeError::DuplicateParam`] for a name repeated within one challenge;
/// [`ChallengeError::InvalidParamValue`] for a control (tab included) or non-ASCII character
/// inside a quoted-string; [`ChallengeError::Token68WithParams`];
/// [`ChallengeError::Malformed`] for anything else off the grammar.
pub fn parse(header_value: &str) -> Result<Vec<Challenge>, ChallengeError> {
    if header_value.len() > MAX_HEADER_LEN {
        return Err(ChallengeError::TooLong {
            len: header_value.len(),
        });
    }
    Parser {
        src: header_value,
        pos: 0,
        params: 0,
    }
    .run()
}

/// Whether `value` has RFC 9110 §11.2 `token68` syntax (the form of `Authorization:
/// DPoP <token>` credentials and of the `DPoP` header).
#[must_use]
pub fn is_token68(value: &str) -> bool {
    syntax::is_token68(value.as_bytes())
}

/// Parses a `DPoP-Nonce` header value (RFC 9449 §8.1: `DPoP-Nonce = nonce`,
/// `nonce = 1*NQCHAR`), returning the nonce to put in the next proof's `nonce` claim.
///
/// Surrounding OWS (SP / HTAB) is trimmed, as RFC 9110 §5.5 excludes it from field values.
///
/// # Errors
/// [`ChallengeError::TooLong`] past [`MAX_HEADER_LEN`] bytes; [`ChallengeError::EmptyNonce`]
/// when nothing is left after trimming; [`ChallengeError::InvalidNonce`] for any character
/// outside NQCHAR (space, `"`, `\`, controls, non-ASCII), which also refuses a field that
/// was combined from several lines with a comma.
pub fn parse_dpop_nonce(value: &str) -> Result<&str, ChallengeError> {
    if value.len() > MAX_HEADER_LEN {
        return Err(ChallengeError::TooLong { len: value.len() });
    }
    let nonce = value.trim_matches([' ', '\t']);
    if nonce.is_empty() {
        return Err(ChallengeError::EmptyNonce);
    }
    if !syntax::is_nonce(nonce.as_bytes()) {
        return Err(ChallengeError::InvalidNonce);
    }
    Ok(nonce)
}

/// Why a challenge could not be built or parsed, or a nonce was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ChallengeError {
    /// The header value is longer than [`MAX_HEADER_LEN`] bytes.
    TooLong {
        /// Its length in bytes.
        len: usize,
    },
    /// More than [`MAX_PARAMS`] auth-params in the header value or in one challenge.
    TooManyParams,
    /// More than [`MAX_CHALLENGES`] challenges in the header value.
    TooManyChallenges,
    /// The auth-scheme is not a token (RFC 9110 §11.1).
    InvalidScheme,
    /// The auth-param name is not a token (RFC 9110 §11.2).
    InvalidParamName,
    /// One challenge names the same auth-param twice, ignoring case (RFC 9110 §11.2).
    DuplicateParam {
        /// The repeated name (a token, so safe to log).
        name: String,
    },
    /// An auth-param value holds a control or non-ASCII character.
    InvalidParamValue {
        /// The parameter's name (a token, so safe to log).
        name: String,
    },
    /// The `error` code is empty or outside RFC 6749 Appendix A.7's characters.
    InvalidErrorCode,
    /// The `error_description` is empty or outside RFC 6750 §3's characters.
    InvalidErrorDescription,
    /// `algs` is empty or an algorithm is not a token (RFC 9449 §7.1).
    InvalidAlgs,
    /// `scope` is not a space-separated list of scope-tokens (RFC 6749 §3.3).
    InvalidScope,
    /// A challenge has both a `token68` and auth-params, which RFC 9110 §11.2 makes
    /// exclusive.
    Token68WithParams,
    /// A quoted-string has no closing `"`.
    UnterminatedQuote {
        /// The byte offset of its opening `"`.
        offset: usize,
    },
    /// The header value is off the RFC 9110 §11.6.1 grammar.
    Malformed {
        /// The byte offset where parsing stopped.
        offset: usize,
        /// What the grammar allows there.
        expected: &'static str,
    },
    /// The `DPoP-Nonce` value is empty (RFC 9449 §8.1 requires one or more characters).
    EmptyNonce,
    /// The `DPoP-Nonce` value has a character outside NQCHAR (RFC 9449 §8.1).
    InvalidNonce,
}

impl fmt::Display for ChallengeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TooLong { len } => write!(
                f,
                "header value is {len} bytes, more than the {MAX_HEADER_LEN} accepted"
            ),
            Self::TooManyParams => write!(
                f,
                "more than {MAX_PARAMS} auth-params in the challenge header"
            ),
            Self::TooManyChallenges => write!(
                f,
                "more than {MAX_CHALLENGES} challenges in the WWW-Authenticate header"
            ),
            Self::InvalidScheme => f.write_str("auth-scheme is not an HTTP token"),
            Self::InvalidParamName => f.write_str("auth-param name is not an HTTP token"),
            Self::DuplicateParam { name } => {
                write!(f, "auth-param `{name}` appears twice in one challenge")
            }
            Self::InvalidParamValue { name } => write!(
                f,
                "auth-param `{name}` has a control or non-ASCII character in its value"
            ),
            Self::InvalidErrorCode => {
                f.write_str("error code is empty or has characters RFC 6749 does not allow")
            }
            Self::InvalidErrorDescription => {
                f.write_str("error_description is empty or has characters RFC 6750 does not allow")
            }
            Self::InvalidAlgs => {
                f.write_str("algs must list at least one algorithm, each an HTTP token")
            }
            Self::InvalidScope => {
                f.write_str("scope is not a space-separated list of RFC 6749 scope-tokens")
            }
            Self::Token68WithParams => {
                f.write_str("a challenge cannot have both token68 credentials and auth-params")
            }
            Self::UnterminatedQuote { offset } => {
                write!(f, "quoted-string opened at byte {offset} is never closed")
            }
            Self::Malformed { offset, expected } => write!(
                f,
                "malformed WWW-Authenticate value at byte {offset}: expected {expected}"
            ),
            Self::EmptyNonce => f.write_str("DPoP-Nonce value is empty"),
            Self::InvalidNonce => {
                f.write_str("DPoP-Nonce value has characters outside RFC 9449 NQCHAR")
            }
        }
    }
}

impl std::error::Error for ChallengeError {}

/// A byte allowed in an auth-param value once unescaped: printable ASCII (%x20-7E). Tabs,
/// other controls and `obs-text` are refused (see the module documentation).
const fn is_value_byte(b: u8) -> bool {
    matches!(b, 0x20..=0x7E)
}

/// The `WWW-Authenticate` parser: a byte cursor over ASCII-delimited input.
///
/// Every delimiter is ASCII, so every position it stops at is a `char` boundary; slicing
/// still goes through `str::get` and maps a miss to `Malformed` rather than panicking.
struct Parser<'a> {
    /// The whole header value.
    src: &'a str,
    /// The current byte offset.
    pos: usize,
    /// The auth-params seen so far, bounded by [`MAX_PARAMS`].
    params: usize,
}

impl<'a> Parser<'a> {
    /// Parses the whole header value: a loop over list elements, each either an auth-param
    /// of the challenge being read or the auth-scheme of a new one.
    fn run(mut self) -> Result<Vec<Challenge>, ChallengeError> {
        let mut out: Vec<Challenge> = Vec::new();
        let mut current: Option<Challenge> = None;
        loop {
            // List delimiters and empty list elements (RFC 9110 §5.6.1.2).
            self.pos = self.skip(self.pos, |b| matches!(b, b' ' | b'\t' | b','));
            if self.byte(self.pos).is_none() {
                break;
            }
            let start = self.pos;
            let end = self.skip(start, syntax::is_tchar);
            if end == start {
                return Err(malformed(start, "an auth-scheme or auth-param name"));
            }
            let name = self.slice(start, end)?;
            let eq = self.skip_ows(end);
            if self.byte(eq) == Some(b'=') {
                // `token BWS "="`: an auth-param of the current challenge.
                let Some(challenge) = current.as_mut() else {
                    return Err(malformed(start, "an auth-scheme before any auth-param"));
                };
                self.pos = eq.saturating_add(1);
                let value = self.param_value(name)?;
                self.params = self.params.saturating_add(1);
                if self.params > MAX_PARAMS {
                    return Err(ChallengeError::TooManyParams);
                }
                challenge.push_param(name.to_owned(), value)?;
                self.end_of_element()?;
            } else {
                // Any other token starts a new challenge.
                out.extend(current.take());
                if out.len() >= MAX_CHALLENGES {
                    return Err(ChallengeError::TooManyChallenges);
                }
                current = Some(self.challenge_start(name, end)?);
            }
        }
        out.extend(current);
        Ok(out)
    }

    /// After the auth-scheme `scheme` ending at `end`: consumes `1*SP token68` if that is
    /// what follows, or stops before the first auth-param, or at the list delimiter.
    fn challenge_start(&mut self, scheme: &str, end: usize) -> Result<Challenge, ChallengeError> {
        let mut challenge = Challenge::unchecked(scheme);
        let next = self.skip_ows(end);
        self.pos = next;
        match self.byte(next) {
            None | Some(b',') => return Ok(challenge),
            Some(_) if next == end => {
                return Err(malformed(
                    end,
                    "a space, a comma or the end after the auth-scheme",
                ));
            }
            Some(_) => {}
        }
        if self.param_ahead(next) {
            // `run` reads the auth-params one by one.
            return Ok(challenge);
        }
        let stop = self.skip(next, |b| syntax::is_token68_char(b) || b == b'=');
        let token68 = self.slice(next, stop)?;
        if !syntax::is_token68(token68.as_bytes()) {
            return Err(malformed(next, "token68 credentials or an auth-param"));
        }
        challenge.token68 = Some(token68.to_owned());
        self.pos = stop;
        self.end_of_element()?;
        Ok(challenge)
    }

    /// Whether `token BWS "=" BWS ( token / quoted-string )` starts at `pos`, which tells
    /// an auth-param from a `token68` that ends in `=` padding (`abc==`).
    fn param_ahead(&self, pos: usize) -> bool {
        let end = self.skip(pos, syntax::is_tchar);
        if end == pos {
            return false;
        }
        let eq = self.skip_ows(end);
        if self.byte(eq) != Some(b'=') {
            return false;
        }
        let value = self.skip_ows(eq.saturating_add(1));
        self.byte(value)
            .is_some_and(|b| b == b'"' || syntax::is_tchar(b))
    }

    /// Reads `BWS ( token / quoted-string )` for the auth-param `name`, unescaped.
    fn param_value(&mut self, name: &str) -> Result<String, ChallengeError> {
        let start = self.skip_ows(self.pos);
        self.pos = start;
        match self.byte(start) {
            Some(b'"') => self.quoted_string(name),
            Some(b) if syntax::is_tchar(b) => {
                let end = self.skip(start, syntax::is_tchar);
                let value = self.slice(start, end)?;
                self.pos = end;
                Ok(value.to_owned())
            }
            _ => Err(malformed(start, "a token or quoted-string value")),
        }
    }

    /// Reads a quoted-string at `self.pos` (RFC 9110 §5.6.4), resolving quoted-pairs.
    fn quoted_string(&mut self, name: &str) -> Result<String, ChallengeError> {
        let open = self.pos;
        let mut pos = open.saturating_add(1);
        let mut value = String::new();
        loop {
            let b = match self.byte(pos) {
                None => return Err(ChallengeError::UnterminatedQuote { offset: open }),
                Some(b'"') => break,
                Some(b'\\') => {
                    pos = pos.saturating_add(1);
                    match self.byte(pos) {
                        None => return Err(ChallengeError::UnterminatedQuote { offset: open }),
                        Some(b) => b,
                    }
                }
                Some(b) => b,
            };
            if !is_value_byte(b) {
                return Err(ChallengeError::InvalidParamValue {
                    name: name.to_owned(),
                });
            }
            value.push(char::from(b));
            pos = pos.saturating_add(1);
        }
        self.pos = pos.saturating_add(1);
        Ok(value)
    }

    /// Requires `OWS` then a comma or the end after a list element.
    fn end_of_element(&mut self) -> Result<(), ChallengeError> {
        let next = self.skip_ows(self.pos);
        match self.byte(next) {
            None | Some(b',') => {
                self.pos = next;
                Ok(())
            }
            Some(_) => Err(malformed(next, "a comma or the end of the header")),
        }
    }

    /// The byte at `pos`, if any.
    fn byte(&self, pos: usize) -> Option<u8> {
        self.src.as_bytes().get(pos).copied()
    }

    /// The first position at or after `pos` whose byte fails `keep` (or the end).
    fn skip(&self, pos: usize, keep: impl Fn(u8) -> bool) -> usize {
        let rest = self.src.as_bytes().get(pos..).unwrap_or_default();
        pos.saturating_add(rest.iter().take_while(|&&b| keep(b)).count())
    }

    /// Skips `OWS = *( SP / HTAB )` (RFC 9110 §5.6.3).
    fn skip_ows(&self, pos: usize) -> usize {
        self.skip(pos, |b| b == b' ' || b == b'\t')
    }

    /// The input between two positions found by the scanner.
    fn slice(&self, start: usize, end: usize) -> Result<&'a str, ChallengeError> {
        self.src.get(start..end).ok_or(ChallengeError::Malformed {
            offset: start,
            expected: "ASCII delimiters",
        })
    }
}

/// A [`ChallengeError::Malformed`] at `offset`.
const fn malformed(offset: usize, expected: &'static str) -> ChallengeError {
    ChallengeError::Malformed { offset, expected }
}

#[cfg(test)]
mod tests;
