//! The `htu` claim: the HTTP target URI of a DPoP proof, normalised for comparison.
//!
//! RFC 9449 §4.3 (check 9) has the server compare the proof's `htu` with the URI of the
//! request "without query and fragment parts", and §4.3 says the comparison is made after
//! syntax-based (RFC 3986 §6.2.2) and scheme-based (RFC 3986 §6.2.3) normalisation. [`Htu`]
//! holds a URI already in that normal form, so comparing two of them is plain string
//! equality.
//!
//! The parser is written here on purpose rather than taken from the `url` crate: WHATWG URL
//! parsing is lenient (it turns `\` into `/`, trims spaces, accepts `127.1`, …) and differs
//! from RFC 3986, and in a security check every leniency is a way for two components to
//! disagree about what URI a proof is bound to. So this parser is strict: anything that is
//! not a well-formed absolute `http`/`https` URI is refused with an [`HtuError`].
//!
//! What normalisation does (and, as importantly, does not do):
//! - scheme and host are lower-cased (RFC 3986 §6.2.2.1);
//! - percent-encoding hex digits are upper-cased and escapes of unreserved characters are
//!   decoded (RFC 3986 §6.2.2.1, §6.2.2.2); other escapes such as `%2F` are kept, since
//!   decoding them would change the URI's meaning (RFC 3986 §2.2);
//! - dot segments are removed (RFC 3986 §6.2.2.3, algorithm of §5.2.4);
//! - the default port and an empty port are dropped, and an empty path becomes `/`
//!   (RFC 3986 §6.2.3, RFC 9110 §4.2.1–4.2.3);
//! - query and fragment are removed (RFC 9449 §4.2, `htu` claim).
//!
//! The path stays case-sensitive and `/token` is not `/token/`: RFC 3986 §6.2.3 lets only
//! the origin server decide such equivalences, and a verifier must not guess them.

use core::fmt;
use core::str::FromStr;

/// Longest URI accepted, in bytes, as given and once normalised (an empty path becomes
/// `/`, so the normal form can be one byte longer than its input: it is refused too, and
/// every [`Htu`] then parses to itself, which the verifier relies on). A bound keeps the
/// work per proof small and fixed; real endpoints are far shorter (RFC 9110 §4.1
/// recommends supporting at least 8000 octets).
const MAX_LEN: usize = 8192;

/// A normalised `htu`: absolute http(s) URI, no query, no fragment.
///
/// Build one with [`Htu::parse`] (or [`str::parse`]) from a proof's claim, or with
/// [`Htu::from_origin_and_path`] from the request a server received; two values are equal
/// exactly when the URIs are equivalent under RFC 3986 §6.2.2 and §6.2.3 normalisation.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Htu(String);

impl Htu {
    /// Parses and normalises an absolute `http`/`https` URI, dropping its query and fragment.
    ///
    /// # Errors
    /// An [`HtuError`] naming the first problem found: too long, not ASCII, a character RFC
    /// 3986 does not allow where it stands, a scheme other than `http`/`https`, no authority,
    /// userinfo, an empty or malformed host, a bad port, or a malformed `%` escape.
    pub fn parse(uri: &str) -> Result<Self, HtuError> {
        if uri.len() > MAX_LEN {
            return Err(HtuError::TooLong);
        }
        check_bytes(uri)?;
        let parts = split(uri)?;
        // Normalisation never lengthens a URI except for an empty path becoming "/", and
        // the scheme is the same length in output as in input; so this single reservation
        // is the only allocation.
        let capacity = scheme_len(parts.https)
            .saturating_add(parts.authority.len())
            .saturating_add(parts.path.len().max(1));
        let mut out = String::with_capacity(capacity);
        push_scheme_and_authority(&mut out, &parts)?;
        let base = out.len();
        push_path(&mut out, base, parts.path, true)?;
        if out.len() == base {
            // RFC 3986 §6.2.3: an empty path is equivalent to "/" for http(s).
            out.push('/');
        }
        if out.len() > MAX_LEN {
            return Err(HtuError::TooLong);
        }
        Ok(Self(out))
    }

    /// Builds the `htu` of a request a server received: `origin` is the server's own base
    /// URI (such as `"https://api.example.com:8443"`, possibly with a path prefix as in
    /// `"https://x.example/api"` when the application is mounted below `/api`) and
    /// `path_and_query` is the origin-form request target (RFC 9112 §3.2.1, such as
    /// `"/a/b?x=1"`).
    ///
    /// The result is that of [`Htu::parse`] on the two strings joined, with one `/` dropped
    /// where the prefix ends in `/`; the query is removed.
    ///
    /// # Errors
    /// [`HtuError::BadRequestTarget`] when `path_and_query` does not start with `/` (the
    /// asterisk form `*` and the absolute and authority forms have no `htu` to build here),
    /// [`HtuError::BadOrigin`] when `origin` carries a query or fragment, and otherwise the
    /// errors of [`Htu::parse`].
    pub fn from_origin_and_path(origin: &str, path_and_query: &str) -> Result<Self, HtuError> {
        if origin.len().saturating_add(path_and_query.len()) > MAX_LEN {
            return Err(HtuError::TooLong);
        }
        HtuBase::parse(origin)?.join(path_and_query)
    }

    /// The normalised URI, such as `"https://server.example.com/token"`.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A server's own base URI (origin, optionally with a path prefix), normalised once so
/// that the `htu` of each request is built by appending its path
/// ([`HtuBase::join`]): `HtuBase::parse(o)?.join(p)` equals
/// [`Htu::from_origin_and_path`]`(o, p)`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HtuBase {
    /// Scheme, authority and prefix, normalised, without a trailing `/`.
    prefix: String,
    /// Where the path starts in `prefix`: dot segments never climb above it.
    path_start: usize,
}

impl HtuBase {
    /// Normalises `origin` (such as `"https://api.example.com:8443"` or
    /// `"https://x.example/api"`).
    ///
    /// # Errors
    /// [`HtuError::BadOrigin`] when `origin` carries a query or fragment, and otherwise the
    /// errors of [`Htu::parse`].
    pub fn parse(origin: &str) -> Result<Self, HtuError> {
        if origin.len() > MAX_LEN {
            return Err(HtuError::TooLong);
        }
        check_bytes(origin)?;
        let parts = split(origin)?;
        if !parts.rest.is_empty() {
            return Err(HtuError::BadOrigin);
        }
        // "https://x.example/api/" + "/a" must give "/api/a", not "/api//a".
        let prefix = parts.path.strip_suffix('/').unwrap_or(parts.path);
        let mut out = String::with_capacity(
            scheme_len(parts.https)
                .saturating_add(parts.authority.len())
                .saturating_add(prefix.len()),
        );
        push_scheme_and_authority(&mut out, &parts)?;
        let path_start = out.len();
        push_path(&mut out, path_start, prefix, false)?;
        Ok(Self {
            prefix: out,
            path_start,
        })
    }

    /// The `htu` of a request whose origin-form target is `path_and_query` (such as
    /// `"/a/b?x=1"`); the query is removed and dot segments are resolved across the join,
    /// as they would be in the joined URI.
    ///
    /// # Errors
    /// [`HtuError::BadRequestTarget`] when `path_and_query` does not start with `/`,
    /// [`HtuError::TooLong`] past the length limit, and the path errors of [`Htu::parse`].
    pub fn join(&self, path_and_query: &str) -> Result<Htu, HtuError> {
        if self.prefix.len().saturating_add(path_and_query.len()) > MAX_LEN {
            return Err(HtuError::TooLong);
        }
        check_bytes(path_and_query)?;
        if !path_and_query.starts_with('/') {
            return Err(HtuError::BadRequestTarget);
        }
        // A request target has no fragment, but cutting at '#' too costs nothing.
        let request_path = path_and_query.split(['?', '#']).next().unwrap_or_default();
        let mut out = String::with_capacity(self.prefix.len().saturating_add(request_path.len()));
        out.push_str(&self.prefix);
        push_path(&mut out, self.path_start, request_path, true)?;
        if out.len() == self.path_start {
            out.push('/');
        }
        if out.len() > MAX_LEN {
            return Err(HtuError::TooLong);
        }
        Ok(Htu(out))
    }

    /// `scheme://authority` in normal form (lower case, default port dropped).
    #[must_use]
    pub fn origin(&self) -> &str {
        self.prefix.get(..self.path_start).unwrap_or_default()
    }

    /// The path prefix in normal form, without a trailing `/` (empty for none).
    #[must_use]
    pub fn path_prefix(&self) -> &str {
        self.prefix.get(self.path_start..).unwrap_or_default()
    }
}

impl fmt::Display for Htu {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for Htu {
    type Err = HtuError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// Why a string is not an acceptable `htu`.
///
/// [`HtuError::reason`] gives a short stable code for logs and error responses; `Display`
/// gives a sentence saying what to fix.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum HtuError {
    /// The input is longer than 8192 bytes.
    TooLong,
    /// The input contains a non-ASCII character; URIs are ASCII (RFC 3986 §2).
    NonAscii,
    /// A control character, space, or a character RFC 3986 does not allow at that place
    /// (such as `` "<>\^`{|} `` in the path, or `[` in a host name).
    BadCharacter,
    /// The input is a relative reference (no scheme), not an absolute URI.
    Relative,
    /// The scheme is not `http` or `https`.
    BadScheme,
    /// The scheme is not followed by `//` and an authority (RFC 9110 §4.2.1 requires one).
    MissingAuthority,
    /// The authority has userinfo (`user@host`), which RFC 9110 §4.2.4 forbids.
    Userinfo,
    /// The host is empty, which RFC 9110 §4.2.1 forbids.
    EmptyHost,
    /// The host is a malformed IP literal, an unsupported IP literal (IPvFuture, zone ID),
    /// or a numeric host that is not dotted-decimal IPv4.
    BadHost,
    /// The port is not decimal digits or exceeds 65535.
    BadPort,
    /// A `%` is not followed by two hexadecimal digits (RFC 3986 §2.1).
    BadPercentEncoding,
    /// The origin given to [`Htu::from_origin_and_path`] has a query or fragment.
    BadOrigin,
    /// The request target given to [`Htu::from_origin_and_path`] is not in origin form.
    BadRequestTarget,
}

impl HtuError {
    /// A short, stable, snake_case code for this error, such as `"bad_scheme"`.
    #[must_use]
    pub fn reason(&self) -> &'static str {
        match self {
            Self::TooLong => "too_long",
            Self::NonAscii => "non_ascii",
            Self::BadCharacter => "bad_character",
            Self::Relative => "relative",
            Self::BadScheme => "bad_scheme",
            Self::MissingAuthority => "missing_authority",
            Self::Userinfo => "userinfo",
            Self::EmptyHost => "empty_host",
            Self::BadHost => "bad_host",
            Self::BadPort => "bad_port",
            Self::BadPercentEncoding => "bad_percent_encoding",
            Self::BadOrigin => "bad_origin",
            Self::BadRequestTarget => "bad_request_target",
        }
    }
}

impl fmt::Display for HtuError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::TooLong => "htu is longer than 8192 bytes",
            Self::NonAscii => {
                "htu must be ASCII: percent-encode non-ASCII path characters and write \
                 internationalised host names as A-labels (xn--...)"
            }
            Self::BadCharacter => {
                "htu contains a control character, a space, or a character that RFC 3986 \
                 does not allow at that place (such as \"<>\\^`{|} in the path); \
                 percent-encode it"
            }
            Self::Relative => "htu must be an absolute URI starting with http:// or https://",
            Self::BadScheme => "htu scheme must be http or https",
            Self::MissingAuthority => {
                "htu must have an authority: the scheme must be followed by // and a host"
            }
            Self::Userinfo => {
                "htu must not contain userinfo (user@host); RFC 9110 forbids it in http(s) URIs"
            }
            Self::EmptyHost => "htu host is empty",
            Self::BadHost => {
                "htu host is not a valid host name or IP address (IP literals must be IPv6 \
                 without zone ID; numeric hosts must be dotted-decimal IPv4)"
            }
            Self::BadPort => "htu port must be decimal digits with a value of at most 65535",
            Self::BadPercentEncoding => {
                "htu has a '%' that is not followed by two hexadecimal digits; write a \
                 literal '%' as %25"
            }
            Self::BadOrigin => "origin must be an absolute http(s) URI without query or fragment",
            Self::BadRequestTarget => {
                "request target must be in origin form, starting with '/' ('*' and \
                 absolute-form targets have no htu)"
            }
        })
    }
}

impl std::error::Error for HtuError {}

/// An absolute URI cut into the pieces the normaliser needs (RFC 3986 §3).
struct Parts<'a> {
    /// `true` for `https`, `false` for `http`.
    https: bool,
    /// Between `//` and the first `/`, `?` or `#`.
    authority: &'a str,
    /// Empty or starting with `/` (RFC 3986 §3.3, `path-abempty`).
    path: &'a str,
    /// The query and fragment with their delimiters, possibly empty.
    rest: &'a str,
}

/// Rejects what can never appear anywhere in a URI: non-ASCII, controls and space
/// (RFC 3986 §2 and Appendix C: URIs are delimited by, and so cannot contain, spaces).
/// This is the only check the query and fragment get, as they are dropped anyway.
fn check_bytes(s: &str) -> Result<(), HtuError> {
    for b in s.bytes() {
        if !b.is_ascii() {
            return Err(HtuError::NonAscii);
        }
        if b <= b' ' || b == 0x7f {
            return Err(HtuError::BadCharacter);
        }
    }
    Ok(())
}

/// Splits an absolute `http`/`https` URI (RFC 3986 §3: `scheme ":" "//" authority
/// path-abempty [ "?" query ] [ "#" fragment ]`).
fn split(input: &str) -> Result<Parts<'_>, HtuError> {
    // RFC 3986 §4.2: a reference is relative unless a ':' comes before any '/', '?', '#'.
    let end = input.find([':', '/', '?', '#']).ok_or(HtuError::Relative)?;
    let (scheme, after) = input.split_at_checked(end).ok_or(HtuError::Relative)?;
    let after = after.strip_prefix(':').ok_or(HtuError::Relative)?;
    if scheme.is_empty() {
        return Err(HtuError::Relative);
    }
    // RFC 3986 §3.1: schemes are case-insensitive.
    let https = if scheme.eq_ignore_ascii_case("https") {
        true
    } else if scheme.eq_ignore_ascii_case("http") {
        false
    } else {
        return Err(HtuError::BadScheme);
    };
    let hier = after.strip_prefix("//").ok_or(HtuError::MissingAuthority)?;
    let authority_end = hier.find(['/', '?', '#']).unwrap_or(hier.len());
    let (authority, after) = hier
        .split_at_checked(authority_end)
        .ok_or(HtuError::BadCharacter)?;
    let path_end = after.find(['?', '#']).unwrap_or(after.len());
    let (path, rest) = after
        .split_at_checked(path_end)
        .ok_or(HtuError::BadCharacter)?;
    Ok(Parts {
        https,
        authority,
        path,
        rest,
    })
}

/// Length of `"http://"` or `"https://"`.
fn scheme_len(https: bool) -> usize {
    if https { 8 } else { 7 }
}

/// Writes the lower-case scheme, `//`, and the normalised authority.
fn push_scheme_and_authority(out: &mut String, parts: &Parts<'_>) -> Result<(), HtuError> {
    out.push_str(if parts.https { "https://" } else { "http://" });
    let authority = parts.authority;
    // RFC 9110 §4.2.4: userinfo is deprecated for http(s), and "user@" prefixes are a
    // classic way to make a URI look as if it named another host.
    if authority.contains('@') {
        return Err(HtuError::Userinfo);
    }
    let port = if let Some(literal) = authority.strip_prefix('[') {
        // RFC 3986 §3.2.2: IP-literal = "[" ( IPv6address / IPvFuture ) "]".
        let (inner, after) = literal.split_once(']').ok_or(HtuError::BadHost)?;
        if !valid_ipv6(inner) {
            return Err(HtuError::BadHost);
        }
        out.push('[');
        // RFC 3986 §6.2.2.1: hex digits are case-insensitive; lower-case as RFC 5952 §4.3.
        for b in inner.bytes() {
            out.push(char::from(b.to_ascii_lowercase()));
        }
        out.push(']');
        match after {
            "" => None,
            _ => Some(after.strip_prefix(':').ok_or(HtuError::BadHost)?),
        }
    } else {
        // A reg-name or IPv4 address cannot contain ':', so the first one starts the port.
        let (host, port) = match authority.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        };
        if host.is_empty() {
            // RFC 9110 §4.2.1: a recipient MUST reject an http(s) URI with an empty host.
            return Err(HtuError::EmptyHost);
        }
        let start = out.len();
        push_reg_name(out, host)?;
        check_numeric_host(out.get(start..).unwrap_or_default())?;
        port
    };
    push_port(out, port, parts.https)
}

/// Writes a reg-name or IPv4 host (RFC 3986 §3.2.2: `*( unreserved / pct-encoded /
/// sub-delims )`), lower-cased, with escapes of unreserved characters decoded.
fn push_reg_name(out: &mut String, host: &str) -> Result<(), HtuError> {
    let bytes = host.as_bytes();
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%' {
            let value = percent_value(bytes, i)?;
            if is_unreserved(value) {
                // RFC 3986 §6.2.2.2, then §6.2.2.1 (host is case-insensitive).
                out.push(char::from(value.to_ascii_lowercase()));
            } else {
                push_escape(out, value);
            }
            i = i.saturating_add(3);
        } else if is_unreserved(b) || is_sub_delim(b) {
            out.push(char::from(b.to_ascii_lowercase()));
            i = i.saturating_add(1);
        } else {
            return Err(HtuError::BadCharacter);
        }
    }
    Ok(())
}

/// Refuses a host whose last label is a number unless it is strict dotted-decimal IPv4.
///
/// RFC 3986 reads `127.1`, `0x7f.0.0.1` or `010.0.0.1` as registered names, but
/// `inet_aton` and WHATWG URL parsers read them as IPv4 addresses (in octal or hex), so
/// accepting them would let two components disagree about the host. No real name is
/// affected: top-level domains are never all-numeric (RFC 3696 §2).
fn check_numeric_host(host: &str) -> Result<(), HtuError> {
    let trimmed = host.strip_suffix('.').unwrap_or(host);
    let last = trimmed.rsplit('.').next().unwrap_or_default();
    let numeric = !last.is_empty()
        && (last.bytes().all(|b| b.is_ascii_digit())
            || last
                .strip_prefix("0x")
                .is_some_and(|hex| hex.bytes().all(|b| b.is_ascii_hexdigit())));
    if numeric && !is_strict_ipv4(host) {
        return Err(HtuError::BadHost);
    }
    Ok(())
}

/// RFC 3986 §3.2.2 `IPv4address`: four `dec-octet`s, no leading zeros, each at most 255.
fn is_strict_ipv4(s: &str) -> bool {
    let mut count = 0_u8;
    for part in s.split('.') {
        count = count.saturating_add(1);
        let digits_ok = !part.is_empty()
            && part.len() <= 3
            && part.bytes().all(|b| b.is_ascii_digit())
            && (part.len() == 1 || !part.starts_with('0'));
        if count > 4 || !digits_ok || part.parse::<u8>().is_err() {
            return false;
        }
    }
    count == 4
}

/// RFC 3986 §3.2.2 `IPv6address` (including an IPv4 tail). IPvFuture (`v1.…`) and RFC 6874
/// zone IDs are refused: neither identifies a host that a proof could meaningfully name.
fn valid_ipv6(s: &str) -> bool {
    if !s
        .bytes()
        .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
    {
        return false;
    }
    match s.split_once("::") {
        // "::" stands for at least one group of zeros, so at most 7 are written.
        Some((head, tail)) => {
            !tail.contains("::")
                && matches!(
                    (count_groups(head, false), count_groups(tail, true)),
                    (Some(h), Some(t)) if h.saturating_add(t) <= 7
                )
        }
        None => count_groups(s, true) == Some(8),
    }
}

/// Counts the 16-bit groups in a `:`-separated run of `h16`s (an IPv4 tail, allowed only
/// at the very end of the address, counts as two). `None` if malformed.
fn count_groups(s: &str, ipv4_tail_allowed: bool) -> Option<usize> {
    if s.is_empty() {
        return Some(0);
    }
    let mut count = 0_usize;
    let mut pieces = s.split(':').peekable();
    while let Some(piece) = pieces.next() {
        let is_last = pieces.peek().is_none();
        if is_last && ipv4_tail_allowed && piece.contains('.') {
            if !is_strict_ipv4(piece) {
                return None;
            }
            count = count.saturating_add(2);
        } else if (1..=4).contains(&piece.len()) && piece.bytes().all(|b| b.is_ascii_hexdigit()) {
            count = count.saturating_add(1);
        } else {
            return None;
        }
        if count > 8 {
            return None;
        }
    }
    Some(count)
}

/// Writes `:port` unless the port is empty or the scheme's default (RFC 3986 §6.2.3);
/// leading zeros are dropped so that `:0443` and `:443` compare equal.
fn push_port(out: &mut String, port: Option<&str>, https: bool) -> Result<(), HtuError> {
    let Some(port) = port else {
        return Ok(());
    };
    let mut value: u32 = 0;
    for b in port.bytes() {
        if !b.is_ascii_digit() {
            return Err(HtuError::BadPort);
        }
        value = value
            .saturating_mul(10)
            .saturating_add(u32::from(b.saturating_sub(b'0')));
        if value > 65535 {
            return Err(HtuError::BadPort);
        }
    }
    let default = if https { 443 } else { 80 };
    if port.is_empty() || value == default {
        return Ok(());
    }
    out.push(':');
    let mut started = false;
    for divisor in [10_000, 1000, 100, 10, 1] {
        let digit = (value / divisor) % 10;
        if digit != 0 || started || divisor == 1 {
            started = true;
            if let Some(c) = char::from_digit(digit, 10) {
                out.push(c);
            }
        }
    }
    Ok(())
}

/// Appends the normalised segments of `path` (empty or starting with `/`) to `out`,
/// removing dot segments as RFC 3986 §5.2.4 does. `out[base..]` is the path written so far;
/// `ends_path` tells whether `path` is the end of the whole path (a final `.` or `..`
/// leaves a trailing `/`, as in §5.2.4 step 2C/2D).
///
/// Each segment is checked and normalised before its dot test, so `%2E%2E` counts as `..`
/// (RFC 3986 §6.2.2 applies percent-decoding before dot-segment removal).
fn push_path(out: &mut String, base: usize, path: &str, ends_path: bool) -> Result<(), HtuError> {
    let mut segments = path.split('/');
    // The path starts with '/' (or is empty): the first item is the empty text before it.
    let _ = segments.next();
    let mut segments = segments.peekable();
    while let Some(segment) = segments.next() {
        let last = ends_path && segments.peek().is_none();
        let start = out.len();
        out.push('/');
        push_segment(out, segment)?;
        match out.get(start.saturating_add(1)..) {
            Some(".") => {
                out.truncate(start);
                if last {
                    out.push('/');
                }
            }
            Some("..") => {
                out.truncate(start);
                // Remove the previous segment and its '/', but never the authority.
                let keep = out
                    .get(base..)
                    .and_then(|written| written.rfind('/'))
                    .map_or(base, |i| base.saturating_add(i));
                out.truncate(keep);
                if last {
                    out.push('/');
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// Writes one path segment (RFC 3986 §3.3 `*pchar`): escapes of unreserved characters
/// decoded, other escapes with upper-case hex, everything else checked and copied.
fn push_segment(out: &mut String, segment: &str) -> Result<(), HtuError> {
    let bytes = segment.as_bytes();
    // The common case (nothing to decode) is one copy.
    if bytes.iter().all(|&b| is_plain_pchar(b)) {
        out.push_str(segment);
        return Ok(());
    }
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%' {
            let value = percent_value(bytes, i)?;
            if is_unreserved(value) {
                // RFC 3986 §6.2.2.2; the path stays case-sensitive, so no lower-casing.
                out.push(char::from(value));
            } else {
                push_escape(out, value);
            }
            i = i.saturating_add(3);
        } else if is_plain_pchar(b) {
            out.push(char::from(b));
            i = i.saturating_add(1);
        } else {
            return Err(HtuError::BadCharacter);
        }
    }
    Ok(())
}

/// The octet encoded by the `%XX` at `bytes[i]`.
fn percent_value(bytes: &[u8], i: usize) -> Result<u8, HtuError> {
    let hi = bytes.get(i.saturating_add(1)).copied().and_then(hex_value);
    let lo = bytes.get(i.saturating_add(2)).copied().and_then(hex_value);
    match (hi, lo) {
        (Some(hi), Some(lo)) => Ok(hi.saturating_mul(16).saturating_add(lo)),
        _ => Err(HtuError::BadPercentEncoding),
    }
}

/// The value of one hexadecimal digit.
pub(crate) fn hex_value(b: u8) -> Option<u8> {
    char::from(b)
        .to_digit(16)
        .and_then(|d| u8::try_from(d).ok())
}

/// Writes `%XX` with upper-case hex digits (RFC 3986 §2.1: producers should use upper case).
fn push_escape(out: &mut String, value: u8) {
    out.push('%');
    for nibble in [value >> 4, value & 0x0f] {
        if let Some(c) = char::from_digit(u32::from(nibble), 16) {
            out.push(c.to_ascii_uppercase());
        }
    }
}

/// RFC 3986 §2.3 `unreserved = ALPHA / DIGIT / "-" / "." / "_" / "~"`.
pub(crate) fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// RFC 3986 §2.2 `sub-delims = "!" / "$" / "&" / "'" / "(" / ")" / "*" / "+" / "," / ";" / "="`.
pub(crate) fn is_sub_delim(b: u8) -> bool {
    matches!(
        b,
        b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b',' | b';' | b'='
    )
}

/// RFC 3986 §3.3 `pchar` other than `pct-encoded`.
fn is_plain_pchar(b: u8) -> bool {
    is_unreserved(b) || is_sub_delim(b) || b == b':' || b == b'@'
}

#[cfg(test)]
mod tests;
