//! The canonical request target: the hostile-target table, and properties tying an
//! accepted target to what RFC 3986 and WHATWG normalisers make of it.

use dpop_core::target::{check_method, lenient_path};
use dpop_core::{RequestTarget, TargetError};
use proptest::prelude::*;

/// The table shared with the gateway's end-to-end test.
const TABLE: &str = include_str!("vectors/hostile-targets.txt");

/// `(expected, target)` for each line of the table, with `{XX}` decoded to raw bytes.
fn table() -> Vec<(String, Vec<u8>)> {
    dpop_core::internal::vectors::target_table(TABLE).expect("a well-formed table")
}

fn parse_bytes(bytes: &[u8]) -> Result<RequestTarget, TargetError> {
    match std::str::from_utf8(bytes) {
        Ok(text) => RequestTarget::parse(text),
        // An HTTP library hands the target over as text; raw non-UTF-8 bytes never reach
        // the parser as a valid &str, and are outside ASCII in any case.
        Err(_) => Err(TargetError::NonAscii),
    }
}

#[test]
fn hostile_target_table() {
    let cases = table();
    assert!(cases.len() >= 40, "the table holds {} cases", cases.len());
    let mut failures = Vec::new();
    for (expected, target) in &cases {
        let got = match parse_bytes(target) {
            Ok(t) => {
                assert_eq!(t.as_str().as_bytes(), target.as_slice());
                "ok".to_owned()
            }
            Err(e) => e.as_str().to_owned(),
        };
        if &got != expected {
            failures.push(format!(
                "{:?}: expected {expected}, got {got}",
                String::from_utf8_lossy(target)
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn every_accepted_table_target_is_what_normalisers_make_of_it() {
    for (expected, target) in table() {
        if expected != "ok" {
            continue;
        }
        let text = String::from_utf8(target).unwrap();
        let parsed = RequestTarget::parse(&text).unwrap();
        assert_eq!(lenient_path(&text).as_deref(), Some(parsed.path()));
        assert_eq!(whatwg_path(&text), parsed.path(), "{text}");
    }
}

#[test]
fn methods_compare_exactly() {
    assert_eq!(check_method("POST"), Ok(()));
    for m in ["post", "Post", "pOST", "get", "GET\0", " GET"] {
        assert_eq!(
            check_method(m),
            Err(TargetError::NonCanonicalMethod),
            "{m:?}"
        );
    }
}

#[test]
fn refusals_map_to_invalid_request() {
    let e = dpop_core::Error::from(dpop_core::RequestError::NonCanonicalTarget(
        TargetError::DotSegment,
    ));
    assert_eq!(e.reason(), dpop_core::Reason::NonCanonicalTarget);
    assert_eq!(e.reason().as_str(), "non_canonical_target");
    let r = e.response(dpop_core::Role::ResourceServer);
    assert_eq!(r.status, 400);
    assert_eq!(r.error, Some(dpop_core::RfcError::InvalidRequest));
    assert!(e.to_string().contains(".."), "{e}");
}

/// What a WHATWG URL parser (as used by Node, browsers, many frameworks) makes of the
/// path of `target`, decoding unreserved escapes as RFC 3986 would.
fn whatwg_path(target: &str) -> String {
    let url = url::Url::parse(&format!("http://h{target}")).unwrap();
    let path = url.path();
    // WHATWG keeps `%61` as is; an upstream that decodes before routing sees `a`. The
    // canonical form has no such escape, so decoding must not change it either.
    let decoded = percent_decode_unreserved(path);
    assert_eq!(decoded, path, "{target}: an unreserved escape survived");
    path.to_owned()
}

fn percent_decode_unreserved(path: &str) -> String {
    let bytes = path.as_bytes();
    let mut out = String::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(hex) = path.get(i + 1..i + 3)
            && let Ok(v) = u8::from_str_radix(hex, 16)
            && (v.is_ascii_alphanumeric() || b"-._~".contains(&v))
        {
            out.push(char::from(v));
            i += 3;
            continue;
        }
        out.push(char::from(bytes[i]));
        i += 1;
    }
    out
}

/// Pieces that hostile targets are made of.
fn piece() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec![
        "/", "/", "/", "a", "v1", "admin", ".", "..", "%2e", "%2E", "%2F", "%2f", "%5C", "\\",
        "%61", "%41", "%7E", "%C3", "%c3", "%A9", "%3B", ";", "?", "#", "%", "%0", "%00", "%0A",
        "%20", "~", ":", "@", "!", "=", "&", "'", "|", "\"", "é", "\t", "*", "+",
    ])
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 4096, .. ProptestConfig::default() })]

    /// For any target that is accepted (and so would be forwarded), re-canonicalising the
    /// forwarded path gives the path that was authorised, and so does every normaliser.
    #[test]
    fn accepted_targets_are_fixed_points(pieces in prop::collection::vec(piece(), 0..14)) {
        let target = format!("/{}", pieces.concat());
        dpop_core::internal::fuzzing::canonical_target(target.as_bytes());
        if let Ok(parsed) = RequestTarget::parse(&target) {
            let again = RequestTarget::parse(parsed.as_str()).unwrap();
            prop_assert_eq!(&again, &parsed);
            let lenient = lenient_path(&target);
            prop_assert_eq!(lenient.as_deref(), Some(parsed.path()));
            prop_assert_eq!(whatwg_path(&target), parsed.path());
            // No dot segment and no empty segment survives in any spelling.
            for segment in parsed.path().split('/').skip(1) {
                let lower = segment.to_ascii_lowercase().replace("%2e", ".");
                prop_assert!(lower != "." && lower != "..", "{}", target);
            }
            prop_assert!(!parsed.path().contains("//"));
        }
    }

    /// Arbitrary text never panics the parser.
    #[test]
    fn arbitrary_targets_never_panic(text in "\\PC{0,300}") {
        dpop_core::internal::fuzzing::canonical_target(text.as_bytes());
    }
}
