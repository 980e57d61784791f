//! Character-class predicates for the HTTP and OAuth grammars that DPoP headers use.
//!
//! Each class is written once as a 128-bit bitmap (bit `n` set when ASCII byte `n` belongs to
//! it), and the bitmaps are folded at compile time into a 256-entry table of class flags:
//! testing a byte is one load and one mask, with no branch per class member. Bytes at or
//! above 0x80 fall outside every class, because none of these grammars admit `obs-text` and
//! the protocol values they describe are ASCII. `is_token68` runs on every `DPoP` request
//! header (RFC 9449 §4.1), which may carry a proof of several KiB, so every predicate here
//! is a single pass over its input with no allocation.

#![forbid(unsafe_code)]

/// The bitmap of the bytes `lo..=hi` (both ASCII; a byte past 0x7F fails const evaluation).
const fn range(lo: u8, hi: u8) -> u128 {
    let mut map = 0u128;
    let mut b = lo;
    while b <= hi {
        map |= 1u128 << b;
        b += 1;
    }
    map
}

/// The bitmap of the listed ASCII bytes.
const fn bytes(mut set: &[u8]) -> u128 {
    let mut map = 0u128;
    while let [b, rest @ ..] = set {
        map |= 1u128 << *b;
        set = rest;
    }
    map
}

/// `ALPHA` (RFC 5234 Appendix B.1).
const ALPHA: u128 = range(b'A', b'Z') | range(b'a', b'z');
/// `DIGIT` (RFC 5234 Appendix B.1).
const DIGIT: u128 = range(b'0', b'9');
/// `tchar` (RFC 9110 §5.6.2).
const TCHAR: u128 = ALPHA | DIGIT | bytes(b"!#$%&'*+-.^_`|~");
/// The body characters of `token68` (RFC 9110 §11.2), i.e. everything but the `=` padding.
const TOKEN68: u128 = ALPHA | DIGIT | bytes(b"-._~+/");
/// `NQCHAR` (RFC 9449 §8.1, from RFC 6749 Appendix A): visible ASCII but `"` and `\`.
const NQCHAR: u128 = range(0x21, 0x21) | range(0x23, 0x5B) | range(0x5D, 0x7E);
/// The `error` / `error_description` characters (RFC 6750 §3, RFC 6749 Appendix A.6/A.7):
/// `NQCHAR` plus space.
const ERROR_CHAR: u128 = range(0x20, 0x21) | range(0x23, 0x5B) | range(0x5D, 0x7E);

/// Whether the ASCII byte `b` is in the bitmap `map` (const-time helper for [`CLASSES`]).
const fn in_map(map: u128, b: u8) -> bool {
    b < 128 && (map >> b) & 1 == 1
}

/// Flag bits of [`CLASSES`], one per character class.
const F_TCHAR: u8 = 1;
/// See [`F_TCHAR`].
const F_TOKEN68: u8 = 1 << 1;
/// See [`F_TCHAR`].
const F_NQCHAR: u8 = 1 << 2;
/// See [`F_TCHAR`].
const F_ERROR_CHAR: u8 = 1 << 3;

/// The 256-entry lookup table: entry `b` holds the flags of every class byte `b` is in, so
/// the hot loops do one load and one mask per byte. Built at compile time from the bitmaps,
/// filled through a slice pattern so no index expression is needed. A `static`, so there
/// is one copy rather than one per use.
static CLASSES: [u8; 256] = {
    let mut table = [0u8; 256];
    let mut rest: &mut [u8] = &mut table;
    let mut b: u8 = 0;
    while let [slot, tail @ ..] = rest {
        let mut flags = 0;
        if in_map(TCHAR, b) {
            flags |= F_TCHAR;
        }
        if in_map(TOKEN68, b) {
            flags |= F_TOKEN68;
        }
        if in_map(NQCHAR, b) {
            flags |= F_NQCHAR;
        }
        if in_map(ERROR_CHAR, b) {
            flags |= F_ERROR_CHAR;
        }
        *slot = flags;
        b = b.wrapping_add(1);
        rest = tail;
    }
    table
};

/// Whether `b` is in the class `flag`. A `u8` always indexes a 256-entry table, so the
/// `get` compiles to a plain load (no bounds check, no panic path).
#[inline]
fn member(flag: u8, b: u8) -> bool {
    CLASSES
        .get(usize::from(b))
        .is_some_and(|&flags| flags & flag != 0)
}

/// One `tchar` (RFC 9110 §5.6.2): the byte-level step the header parsers scan tokens with.
#[inline]
pub(crate) fn is_tchar(b: u8) -> bool {
    member(F_TCHAR, b)
}

/// One body character of `token68` (RFC 9110 §11.2), not counting the trailing `=` padding.
#[inline]
pub(crate) fn is_token68_char(b: u8) -> bool {
    member(F_TOKEN68, b)
}

/// RFC 9110 §11.2 `token68 = 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="`.
///
/// This is the shape of a DPoP proof JWT in the `DPoP` header (RFC 9449 §4.1) and of
/// credentials such as `Negotiate` blobs, so it runs on every request: one pass, no
/// allocation. `=` is accepted only as trailing padding after at least one body character.
#[must_use]
pub(crate) fn is_token68(v: &[u8]) -> bool {
    // Whole blocks first, each judged without a branch per byte (tokens and proofs are
    // hundreds of bytes of body); the block that holds the end of the body, and the
    // rest, byte by byte.
    let blocks = v
        .chunks_exact(TOKEN68_BLOCK)
        .take_while(|block| block.iter().fold(true, |all, &b| all & token68_body(b)))
        .count();
    let checked = blocks * TOKEN68_BLOCK;
    let rest = v.get(checked..).unwrap_or_default();
    let body = checked + rest.iter().take_while(|&&b| is_token68_char(b)).count();
    body > 0 && v.iter().skip(body).all(|&b| b == b'=')
}

/// Bytes judged together by [`is_token68`]'s fast pass.
const TOKEN68_BLOCK: usize = 32;

/// [`is_token68_char`] as comparisons instead of a table load, so that a fold over a
/// block compiles to vector instructions: ALPHA (`b | 0x20` folds the upper case onto
/// the lower), then `-` `.` `/` and DIGIT (the contiguous 0x2D..=0x39), then `+` `_` `~`.
/// The tests hold it to the table for every byte.
#[inline]
fn token68_body(b: u8) -> bool {
    ((b | 0x20).wrapping_sub(b'a') < 26)
        | (b.wrapping_sub(b'-') <= b'9' - b'-')
        | (b == b'+')
        | (b == b'_')
        | (b == b'~')
}

/// RFC 9110 §5.6.2 `token = 1*tchar`: auth-schemes and auth-param names (RFC 9110 §11.2).
#[must_use]
pub(crate) fn is_token(v: &[u8]) -> bool {
    !v.is_empty() && v.iter().all(|&b| is_tchar(b))
}

/// RFC 9449 §8.1 `nonce = 1*NQCHAR`, `NQCHAR = %x21 / %x23-5B / %x5D-7E`.
///
/// The same class is RFC 6749 §3.3's `scope-token`, so scope checks reuse it per token.
#[must_use]
pub(crate) fn is_nonce(v: &[u8]) -> bool {
    !v.is_empty() && v.iter().all(|&b| member(F_NQCHAR, b))
}

/// RFC 6750 §3 / RFC 6749 Appendix A.6: `error_description = 1*( %x20-21 / %x23-5B / %x5D-7E )`.
///
/// RFC 6749 Appendix A.7 gives the `error` code the same class, so it is checked here too.
/// The class excludes `"` and `\`, so such values never need escaping inside a quoted-string.
#[must_use]
pub(crate) fn is_error_description(v: &[u8]) -> bool {
    !v.is_empty() && v.iter().all(|&b| member(F_ERROR_CHAR, b))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reference definitions written straight from the ABNF, to check the bitmaps against.
    fn ref_tchar(b: u8) -> bool {
        b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'!' | b'#'
                    | b'$'
                    | b'%'
                    | b'&'
                    | b'\''
                    | b'*'
                    | b'+'
                    | b'-'
                    | b'.'
                    | b'^'
                    | b'_'
                    | b'`'
                    | b'|'
                    | b'~'
            )
    }
    fn ref_token68_char(b: u8) -> bool {
        b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'+' | b'/')
    }
    fn ref_nqchar(b: u8) -> bool {
        matches!(b, 0x21 | 0x23..=0x5B | 0x5D..=0x7E)
    }
    fn ref_error_char(b: u8) -> bool {
        matches!(b, 0x20..=0x21 | 0x23..=0x5B | 0x5D..=0x7E)
    }

    #[test]
    fn classes_match_the_abnf_for_every_byte() {
        for b in 0..=u8::MAX {
            assert_eq!(is_tchar(b), ref_tchar(b), "tchar {b:#04x}");
            assert_eq!(is_token68_char(b), ref_token68_char(b), "token68 {b:#04x}");
            assert_eq!(is_nonce(&[b]), ref_nqchar(b), "nqchar {b:#04x}");
            assert_eq!(
                is_error_description(&[b]),
                ref_error_char(b),
                "error {b:#04x}"
            );
            assert_eq!(is_token(&[b]), ref_tchar(b), "token {b:#04x}");
        }
    }

    #[test]
    fn token68_accepts_jwt_and_padding() {
        assert!(is_token68(b"eyJhbGciOiJFUzI1NiJ9.eyJpYXQiOjF9.c2ln"));
        assert!(is_token68(b"a"));
        assert!(is_token68(b"abc=="));
        assert!(is_token68(b"a+/b-._~9="));
        assert!(is_token68(b"Zz09"));
    }

    #[test]
    fn token68_boundaries() {
        assert!(!is_token68(b""), "empty refused");
        assert!(!is_token68(b"="), "padding alone refused");
        assert!(!is_token68(b"==abc"), "leading = refused");
        assert!(!is_token68(b"ab=c"), "= only in the tail");
        assert!(!is_token68(b"ab=c="), "= only in the tail");
        assert!(!is_token68(b"ab c"), "space refused");
        assert!(!is_token68(b"abc "), "trailing space refused");
        assert!(!is_token68(b"a,b"), "comma refused");
        assert!(!is_token68(b"a\"b"), "quote refused");
        assert!(!is_token68(b"a!b"), "tchar outside token68 refused");
        assert!(!is_token68("é".as_bytes()), "non-ASCII refused");
        assert!(!is_token68(b"a\0"), "NUL refused");
    }

    #[test]
    fn token68_fast_pass_matches_the_table_for_every_byte() {
        for b in 0..=u8::MAX {
            assert_eq!(token68_body(b), is_token68_char(b), "{b:#04x}");
        }
    }

    /// The reference: the grammar read byte by byte.
    fn ref_token68(v: &[u8]) -> bool {
        let body = v.iter().take_while(|&&b| ref_token68_char(b)).count();
        body > 0 && v[body..].iter().all(|&b| b == b'=')
    }

    /// Every byte value at every place around the block boundaries, in the body and in
    /// the padding: the block pass and the byte pass agree with the reference.
    #[test]
    fn token68_agrees_with_the_grammar_across_block_boundaries() {
        for len in [1_usize, 31, 32, 33, 63, 64, 65, 100] {
            for at in [0, len / 2, len.saturating_sub(1)] {
                for b in 0..=u8::MAX {
                    let mut v = vec![b'a'; len];
                    v[at] = b;
                    assert_eq!(
                        is_token68(&v),
                        ref_token68(&v),
                        "len {len}, {b:#04x} at {at}"
                    );
                    // The same byte inside a padding tail that starts before it.
                    let mut p = vec![b'a'; len];
                    for x in p.iter_mut().skip(len / 3 + 1) {
                        *x = b'=';
                    }
                    p[at] = b;
                    assert_eq!(
                        is_token68(&p),
                        ref_token68(&p),
                        "len {len}, {b:#04x} at {at} in padding"
                    );
                }
            }
        }
    }

    #[test]
    fn token68_long_input() {
        let mut v = vec![b'A'; 8 * 1024];
        assert!(is_token68(&v));
        v.extend_from_slice(b"==");
        assert!(is_token68(&v));
        v.push(b'A');
        assert!(!is_token68(&v));
    }

    #[test]
    fn token_boundaries() {
        assert!(is_token(b"DPoP"));
        assert!(is_token(b"Bearer"));
        assert!(is_token(b"!#$%&'*+-.^_`|~09AZaz"));
        assert!(!is_token(b""), "empty refused");
        assert!(!is_token(b"a b"), "space refused");
        assert!(!is_token(b"a=b"), "= refused");
        assert!(!is_token(b"a/b"), "/ refused");
        assert!(!is_token(b"a\"b"), "quote refused");
        assert!(!is_token(b"a,b"), "comma refused");
        assert!(!is_token(b"a\tb"), "tab refused");
        assert!(!is_token(b"a\x7f"), "DEL refused");
        assert!(!is_token("é".as_bytes()), "non-ASCII refused");
    }

    #[test]
    fn nonce_boundaries() {
        assert!(is_nonce(b"eyJ7S_zG.eyJH0-Z.HX4w-7v"));
        assert!(is_nonce(b"!"), "%x21 is the lowest NQCHAR");
        assert!(is_nonce(b"#"), "%x23 opens the second range");
        assert!(is_nonce(b"["), "%x5B closes it");
        assert!(is_nonce(b"]"), "%x5D opens the third range");
        assert!(is_nonce(b"~"), "%x7E closes it");
        assert!(is_nonce(b"a,b=c"));
        assert!(!is_nonce(b""), "empty refused");
        assert!(!is_nonce(b"\""), "quote refused");
        assert!(!is_nonce(b"\\"), "backslash refused");
        assert!(!is_nonce(b"a b"), "space refused");
        assert!(!is_nonce(b"a\tb"), "tab refused");
        assert!(!is_nonce(b"\x7f"), "DEL refused");
        assert!(!is_nonce("né".as_bytes()), "non-ASCII refused");
    }

    #[test]
    fn error_description_boundaries() {
        assert!(is_error_description(b"Invalid DPoP key binding"));
        assert!(is_error_description(b" "), "%x20 allowed");
        assert!(is_error_description(b"use_dpop_nonce"));
        assert!(is_error_description(b"[x] ~!"));
        assert!(!is_error_description(b""), "empty refused");
        assert!(!is_error_description(b"say \"hi\""), "quote refused");
        assert!(!is_error_description(b"a\\b"), "backslash refused");
        assert!(!is_error_description(b"a\tb"), "tab refused");
        assert!(!is_error_description(b"a\nb"), "newline refused");
        assert!(!is_error_description(b"\x7f"), "DEL refused");
        assert!(
            !is_error_description("café".as_bytes()),
            "non-ASCII refused"
        );
    }
}
