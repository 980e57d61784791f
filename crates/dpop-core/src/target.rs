//! The canonical request target: one spelling of the path that route policies, the
//! proof's `htu` and the forwarded request all use.
//!
//! A server that enforces DPoP looks at the request path three times: to choose the
//! route policy, to build the `htu` the proof must match, and (in a gateway) to forward
//! the request. If those three see different forms of the path — raw in one place,
//! dot-segments removed in another, `%61` decoded in a third — a request can be judged
//! under one route and served by another: `/public/../admin` passes as `/public` and is
//! served as `/admin` by an upstream that normalises.
//!
//! [`RequestTarget::parse`] therefore accepts only targets that are *already* in the one
//! form every RFC 3986 / WHATWG normaliser leaves unchanged, and refuses everything else
//! with a [`TargetError`] naming the class of problem. A target that parses is its own
//! normal form, so the path a route matched, the path the `htu` was built from and the
//! path forwarded are the same bytes. What is refused:
//!
//! - anything but origin-form (`/path?query`): absolute-form, authority-form, `*`;
//! - dot segments `.` and `..`, also percent-encoded (`%2e`, `.%2E`, …);
//! - escapes of unreserved characters (`%61` for `a`, `%7E` for `~`): they have a shorter
//!   spelling, and decoders disagree about applying it before or after routing;
//! - escapes of `/`, `\` and `;` (`%2F`, `%5C`, `%3B`), which some upstreams decode before
//!   routing and others do not;
//! - escapes of control bytes (`%00`–`%1F`, `%7F`) and lower-case hex digits (`%c3` has
//!   the canonical spelling `%C3`);
//! - malformed escapes (`%`, `%4`, `%zz`);
//! - `\`, empty segments (`//`), `;` path parameters;
//! - raw control bytes, space, non-ASCII bytes, and any other character RFC 3986 does not
//!   allow in a path (`"`, `<`, `>`, `[`, `]`, `{`, `}`, `|`, `^`, `` ` ``);
//! - a fragment, and a query holding control or non-ASCII bytes.
//!
//! The query is kept as sent (it plays no part in routing or in `htu`).
//!
//! [`check_method`] is the twin rule for the method: RFC 9110 §9.1 makes methods
//! case-sensitive, so `post` is not `POST`; a method that is not an upper-case token is
//! refused rather than allowed to dodge a rule written for `POST`.

use core::fmt;

use crate::htu::{hex_value, is_sub_delim, is_unreserved};

/// Longest request target accepted, in bytes (the same bound as an `htu`).
pub const MAX_TARGET_LEN: usize = 8192;

/// An origin-form request target in canonical form: `path` or `path?query`.
///
/// Only [`RequestTarget::parse`] makes one, so holding a `RequestTarget` means the
/// checks above passed.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RequestTarget {
    value: String,
    path_len: usize,
}

impl RequestTarget {
    /// Checks that `target` (an origin-form request target such as `/v1/items?x=1`) is
    /// canonical and returns it.
    ///
    /// # Errors
    /// A [`TargetError`] naming the first problem found.
    pub fn parse(target: &str) -> Result<Self, TargetError> {
        Self::parse_with(target, false)
    }

    /// As [`RequestTarget::parse`], but an encoded slash (`%2F`, upper-case hex) inside a
    /// segment is accepted. Every other rule holds. RFC 3986 normalisation keeps `%2F`,
    /// so the target is still its own normal form, but an upstream that decodes it before
    /// routing sees more segments than were judged: only for routes whose service treats
    /// `%2F` as data (an object key, a project path).
    ///
    /// # Errors
    /// A [`TargetError`] naming the first problem found.
    pub fn dangerous_parse_with_encoded_slashes(target: &str) -> Result<Self, TargetError> {
        Self::parse_with(target, true)
    }

    fn parse_with(target: &str, encoded_slashes: bool) -> Result<Self, TargetError> {
        if target.len() > MAX_TARGET_LEN {
            return Err(TargetError::TooLong);
        }
        let (path, query) = match target.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (target, None),
        };
        check_path(path, encoded_slashes)?;
        if let Some(q) = query {
            check_query(q)?;
        }
        Ok(Self {
            value: target.to_owned(),
            path_len: path.len(),
        })
    }

    /// The path, such as `/v1/items`.
    #[must_use]
    pub fn path(&self) -> &str {
        self.value.get(..self.path_len).unwrap_or("/")
    }

    /// The query without its `?`, if the target has one.
    #[must_use]
    pub fn query(&self) -> Option<&str> {
        self.value.get(self.path_len..)?.strip_prefix('?')
    }

    /// The whole target, path and query.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.value
    }
}

impl fmt::Display for RequestTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.value)
    }
}

/// Checks that `method` is an upper-case HTTP token (RFC 9110 §9.1, §5.6.2): `GET`,
/// `POST`, `M-SEARCH`, … Lower-case letters are refused, since methods compare
/// case-sensitively and `post` must not pass where a rule names `POST`.
///
/// # Errors
/// [`TargetError::NonCanonicalMethod`].
pub fn check_method(method: &str) -> Result<(), TargetError> {
    let ok = !method.is_empty()
        && method.len() <= 64
        && method
            .bytes()
            .all(|b| crate::syntax::is_tchar(b) && !b.is_ascii_lowercase());
    if ok {
        Ok(())
    } else {
        Err(TargetError::NonCanonicalMethod)
    }
}

/// Why a request target (or method) is not canonical. Each variant is one class of
/// problem; the client's fault, answered with 400 `invalid_request`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TargetError {
    /// Longer than [`MAX_TARGET_LEN`].
    TooLong,
    /// Not origin-form: absolute-form (`http://host/path`), authority-form
    /// (`host:443`), asterisk-form (`*`) or empty.
    NotOriginForm,
    /// A `.` or `..` segment, literal or percent-encoded.
    DotSegment,
    /// An empty segment (`//`).
    EmptySegment,
    /// A `\`, literal or encoded as `%5C`.
    Backslash,
    /// An encoded `/` (`%2F`).
    EncodedSlash,
    /// A `;` path parameter, literal or encoded as `%3B`.
    PathParameter,
    /// A percent-encoded unreserved character (`%61` for `a`).
    EncodedUnreserved,
    /// A percent-escape with lower-case hex digits.
    LowercaseHex,
    /// A `%` not followed by two hex digits.
    BadPercentEncoding,
    /// A control byte, raw or percent-encoded (NUL, CR, LF, DEL, …).
    ControlByte,
    /// A byte outside ASCII.
    NonAscii,
    /// A character RFC 3986 does not allow in a path (space, `"`, `<`, `#`, `{`, …).
    InvalidCharacter,
    /// The method is not an upper-case token.
    NonCanonicalMethod,
    /// The path falls under a different route for a server that routes leniently
    /// (letters without case, Unicode case folding, a `.json`-style suffix or `:` stream
    /// name dropped, trailing dots and spaces trimmed): such an upstream would serve what
    /// another rule governs. Reported by adapters that hold the route table.
    AmbiguousRoute,
}

impl TargetError {
    /// A stable snake_case name for logs.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::TooLong => "too_long",
            Self::NotOriginForm => "not_origin_form",
            Self::DotSegment => "dot_segment",
            Self::EmptySegment => "empty_segment",
            Self::Backslash => "backslash",
            Self::EncodedSlash => "encoded_slash",
            Self::PathParameter => "path_parameter",
            Self::EncodedUnreserved => "encoded_unreserved",
            Self::LowercaseHex => "lowercase_hex",
            Self::BadPercentEncoding => "bad_percent_encoding",
            Self::ControlByte => "control_byte",
            Self::NonAscii => "non_ascii",
            Self::InvalidCharacter => "invalid_character",
            Self::NonCanonicalMethod => "non_canonical_method",
            Self::AmbiguousRoute => "ambiguous_route",
        }
    }
}

impl fmt::Display for TargetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::TooLong => "the request target is too long",
            Self::NotOriginForm => "the request target is not an origin-form path (it must start with /; absolute-form, authority-form and * are refused)",
            Self::DotSegment => "the request path has a . or .. segment (also when percent-encoded); send the resolved path",
            Self::EmptySegment => "the request path has an empty segment (//)",
            Self::Backslash => "the request path has a backslash (\\ or %5C)",
            Self::EncodedSlash => "the request path has an encoded slash (%2F)",
            Self::PathParameter => "the request path has a ; path parameter (; or %3B)",
            Self::EncodedUnreserved => "the request path percent-encodes a character that needs no encoding (such as %61 for a); send it literally",
            Self::LowercaseHex => "the request path has a percent-escape with lower-case hex digits; use upper case (%C3, not %c3)",
            Self::BadPercentEncoding => "the request target has a % not followed by two hex digits",
            Self::ControlByte => "the request target has a control character, raw or percent-encoded",
            Self::NonAscii => "the request target has a byte outside ASCII; percent-encode it",
            Self::InvalidCharacter => "the request path has a character that must be percent-encoded",
            Self::NonCanonicalMethod => "the request method is not an upper-case token (methods are case-sensitive)",
            Self::AmbiguousRoute => "the request path would fall under a different route if letter case, a suffix such as .json, or trailing dots were ignored; use the path's documented form",
        })
    }
}

impl std::error::Error for TargetError {}

fn check_path(path: &str, encoded_slashes: bool) -> Result<(), TargetError> {
    let Some(rest) = path.strip_prefix('/') else {
        return Err(TargetError::NotOriginForm);
    };
    if rest.is_empty() {
        return Ok(());
    }
    let mut segments = rest.split('/').peekable();
    while let Some(segment) = segments.next() {
        if segment.is_empty() {
            // "/a/" ends with one empty segment, which is fine; "//" anywhere is not.
            if segments.peek().is_none() {
                break;
            }
            return Err(TargetError::EmptySegment);
        }
        check_segment(segment, encoded_slashes)?;
    }
    Ok(())
}

fn check_segment(segment: &str, encoded_slashes: bool) -> Result<(), TargetError> {
    if is_dot_segment(segment) {
        return Err(TargetError::DotSegment);
    }
    if encoded_slashes {
        // An upstream that decodes `%2F` sees each piece as a segment: none may be a dot
        // segment or empty there either.
        for piece in segment.split("%2F") {
            if is_dot_segment(piece) {
                return Err(TargetError::DotSegment);
            }
            if piece.is_empty() {
                return Err(TargetError::EmptySegment);
            }
        }
    }
    let bytes = segment.as_bytes();
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%' {
            let (value, lower_case) = escape(bytes, i)?;
            match value {
                b'/' if !encoded_slashes => return Err(TargetError::EncodedSlash),
                b'/' if lower_case => return Err(TargetError::LowercaseHex),
                b'\\' => return Err(TargetError::Backslash),
                b';' => return Err(TargetError::PathParameter),
                0..=0x1f | 0x7f => return Err(TargetError::ControlByte),
                v if is_unreserved(v) => return Err(TargetError::EncodedUnreserved),
                _ if lower_case => return Err(TargetError::LowercaseHex),
                _ => {}
            }
            i = i.saturating_add(3);
            continue;
        }
        plain_path_byte(b)?;
        i = i.saturating_add(1);
    }
    Ok(())
}

/// `.` or `..`, with any dot written as `%2E` or `%2e`, and with or without `;`
/// parameters (servlet containers read `..;x` as `..`).
fn is_dot_segment(segment: &str) -> bool {
    // The name part is a prefix of the segment, and a dot segment's begins with `.` or
    // `%`: any other segment (nearly all of them) is not one, without the searches below.
    if !matches!(segment.as_bytes().first(), Some(b'.' | b'%')) {
        return false;
    }
    let name = segment.split([';']).next().unwrap_or(segment);
    let name = name.split("%3B").next().unwrap_or(name);
    let name = name.split("%3b").next().unwrap_or(name);
    let mut rest = name.as_bytes();
    let mut dots = 0_u8;
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix(b".") {
            rest = r;
        } else if let Some(r) = rest
            .strip_prefix(b"%2E")
            .or_else(|| rest.strip_prefix(b"%2e"))
        {
            rest = r;
        } else {
            return false;
        }
        dots = dots.saturating_add(1);
    }
    dots == 1 || dots == 2
}

/// The octet of the escape at `bytes[i]`, and whether a hex digit was lower case (the
/// octet's class is reported first: `%2e` is a dot segment before it is lower case).
fn escape(bytes: &[u8], i: usize) -> Result<(u8, bool), TargetError> {
    let digit = |at: usize| -> Option<(u8, bool)> {
        let d = bytes.get(at).copied()?;
        Some((hex_value(d)?, d.is_ascii_lowercase()))
    };
    match (digit(i.saturating_add(1)), digit(i.saturating_add(2))) {
        (Some((hi, l1)), Some((lo, l2))) => {
            Ok((hi.saturating_mul(16).saturating_add(lo), l1 || l2))
        }
        _ => Err(TargetError::BadPercentEncoding),
    }
}

fn plain_path_byte(b: u8) -> Result<(), TargetError> {
    match b {
        b'\\' => Err(TargetError::Backslash),
        b';' => Err(TargetError::PathParameter),
        0..=0x1f | 0x7f => Err(TargetError::ControlByte),
        0x80..=0xff => Err(TargetError::NonAscii),
        b if is_unreserved(b) || is_sub_delim(b) || b == b':' || b == b'@' => Ok(()),
        _ => Err(TargetError::InvalidCharacter),
    }
}

fn check_query(query: &str) -> Result<(), TargetError> {
    let bytes = query.as_bytes();
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match b {
            0..=0x20 | 0x7f => return Err(TargetError::ControlByte),
            0x80..=0xff => return Err(TargetError::NonAscii),
            b'#' => return Err(TargetError::InvalidCharacter),
            b'%' => {
                // Any octet may be escaped in a query, but the escape must be well formed.
                let ok = bytes
                    .get(i.saturating_add(1)..i.saturating_add(3))
                    .is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit));
                if !ok {
                    return Err(TargetError::BadPercentEncoding);
                }
            }
            _ => {}
        }
        i = i.saturating_add(1);
    }
    Ok(())
}

/// The path a lenient RFC 3986 normaliser would make of `target` (dot segments removed,
/// unreserved escapes decoded, hex upper-cased), or `None` when even that fails. A
/// reference for tests and fuzzing (an accepted target must be its own normal form);
/// never for authorisation.
#[must_use]
pub fn lenient_path(target: &str) -> Option<String> {
    const ORIGIN: &str = "http://h";
    let htu = crate::Htu::from_origin_and_path(ORIGIN, target).ok()?;
    htu.as_str().strip_prefix(ORIGIN).map(str::to_owned)
}

/// What a lenient server may route `path` as: percent-escapes decoded (except `%2F`),
/// letters lower-cased with Unicode rules (and `ſ`, `ı`, `İ`, the Kelvin sign folded to
/// their ASCII letters, as Java, .NET, Go and Python case folding do), and in each
/// segment everything from the first `.` or `:` after its first character dropped, with
/// trailing dots and spaces (a format suffix `.json`, an NTFS stream `::$DATA`, names
/// Windows trims). For telling whether such a server would choose another route than a
/// check made on the canonical path; never a form to authorise or forward.
#[must_use]
pub fn loose_form(path: &str) -> String {
    let bytes = path.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        let escape = (b == b'%')
            .then(|| path.get(i.saturating_add(1)..i.saturating_add(3)))
            .flatten()
            .and_then(|h| u8::from_str_radix(h, 16).ok())
            .filter(|v| *v != b'/');
        match escape {
            Some(v) => {
                decoded.push(v);
                i = i.saturating_add(3);
            }
            None => {
                decoded.push(b);
                i = i.saturating_add(1);
            }
        }
    }
    let text = String::from_utf8_lossy(&decoded);
    let mut folded = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\u{17F}' => folded.push('s'),
            '\u{131}' | '\u{130}' => folded.push('i'),
            c => folded.extend(c.to_lowercase()),
        }
    }
    folded
        .split('/')
        .map(|segment| {
            let cut = segment
                .char_indices()
                .skip(1)
                .find(|(_, c)| matches!(c, '.' | ':'))
                .map_or(segment, |(at, _)| segment.get(..at).unwrap_or(segment));
            cut.trim_end_matches(['.', ' '])
        })
        .collect::<Vec<_>>()
        .join("/")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_segments_in_every_spelling_and_nothing_else() {
        for dot in [
            ".",
            "..",
            "%2e",
            "%2E",
            ".%2E",
            "%2e%2e",
            "%2E.",
            "..;x",
            ".;",
            "..%3Bx",
            "..%3b",
            "%2e%2e;jsessionid=1",
            ".%3B;",
        ] {
            assert!(is_dot_segment(dot), "{dot:?}");
        }
        for name in [
            "",
            ";",
            ";..",
            "%3B..",
            "a",
            "a..",
            "x;..",
            "...",
            "%2e%2e%2e",
            ".a",
            "..a",
            "%2",
            "%2f",
            "%41",
            "%",
            "%3B",
            "v1",
            ".well-known",
        ] {
            assert!(!is_dot_segment(name), "{name:?}");
        }
    }

    #[test]
    fn canonical_targets_pass_unchanged() {
        for t in [
            "/",
            "/v1",
            "/v1/",
            "/v1/items?x=1&y=%2F..%2e",
            "/a-b_c.d~e/f!$&'()*+,=:@g",
            "/caf%C3%A9/%20x",
            "/.well-known/x",
            "/a..b/.c/d.",
            "/?",
            "/a?b?c/../d",
        ] {
            let target = RequestTarget::parse(t).unwrap_or_else(|e| panic!("{t}: {e}"));
            assert_eq!(target.as_str(), t);
            assert_eq!(lenient_path(t).as_deref(), Some(target.path()), "{t}");
        }
        let t = RequestTarget::parse("/p/q?r=1").unwrap();
        assert_eq!((t.path(), t.query()), ("/p/q", Some("r=1")));
        assert_eq!(RequestTarget::parse("/p").unwrap().query(), None);
    }

    #[test]
    fn methods_are_upper_case_tokens() {
        for m in ["GET", "POST", "M-SEARCH", "PROPFIND", "X1"] {
            assert_eq!(check_method(m), Ok(()), "{m}");
        }
        for m in ["post", "Get", "", "GET ", "G(T", "PÖST"] {
            assert_eq!(check_method(m), Err(TargetError::NonCanonicalMethod), "{m}");
        }
    }

    #[test]
    fn the_encoded_slash_opt_out_waives_nothing_else() {
        let t = RequestTarget::dangerous_parse_with_encoded_slashes("/files/a%2Fb%2Fc.d").unwrap();
        assert_eq!(t.path(), "/files/a%2Fb%2Fc.d");
        for (bad, err) in [
            ("/files/a%2F..%2Fx", TargetError::DotSegment),
            ("/files/%2F..", TargetError::EmptySegment),
            ("/files/a%2F%2Fb", TargetError::EmptySegment),
            ("/files/../x", TargetError::DotSegment),
            ("/files/a%2fb", TargetError::LowercaseHex),
            ("/files//x", TargetError::EmptySegment),
            ("/files/x;y", TargetError::PathParameter),
            ("/files/..;/x", TargetError::DotSegment),
            ("/files/%5C", TargetError::Backslash),
            ("/files/%61", TargetError::EncodedUnreserved),
        ] {
            assert_eq!(
                RequestTarget::dangerous_parse_with_encoded_slashes(bad),
                Err(err),
                "{bad}"
            );
        }
        assert_eq!(
            RequestTarget::parse("/files/a%2Fb"),
            Err(TargetError::EncodedSlash)
        );
    }

    #[test]
    fn loose_form_is_what_lenient_servers_route_on() {
        for (path, loose) in [
            ("/V1/Admin", "/v1/admin"),
            ("/caf%C3%89", "/caf\u{e9}"),
            (
                "/%D0%90%D0%94%D0%9C%D0%98%D0%9D",
                "/\u{430}\u{434}\u{43c}\u{438}\u{43d}",
            ),
            ("/%E2%84%AAeys", "/keys"),
            ("/adm%C4%B0n", "/admin"),
            ("/%C5%BFecret", "/secret"),
            ("/admin.json", "/admin"),
            ("/v1/admin.json/x", "/v1/admin/x"),
            ("/admin.", "/admin"),
            ("/admin%20/x", "/admin/x"),
            ("/admin::$INDEX_ALLOCATION/x", "/admin/x"),
            ("/.well-known/x", "/.well-known/x"),
            ("/a%2Fb", "/a%2fb"),
        ] {
            assert_eq!(loose_form(path), loose, "{path}");
        }
    }

    #[test]
    fn every_error_has_a_name_and_a_message() {
        let e = TargetError::DotSegment;
        assert_eq!(e.as_str(), "dot_segment");
        assert!(e.to_string().contains(".."));
    }
}
