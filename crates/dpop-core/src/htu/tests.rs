use super::*;
use proptest::prelude::*;

const BASE: &str = "https://server.example.com/token";

fn norm(s: &str) -> String {
    Htu::parse(s)
        .unwrap_or_else(|e| panic!("{s:?} should parse: {e}"))
        .as_str()
        .to_owned()
}

fn matches(proof: &str, request: &str) -> bool {
    Htu::parse(proof).unwrap() == Htu::parse(request).unwrap()
}

fn err(s: &str) -> HtuError {
    Htu::parse(s).expect_err(s)
}

#[test]
fn derived_match_cases() {
    let yes = [
        BASE,
        "https://server.example.com/token?foo=bar",
        "https://server.example.com/token#frag",
        "https://SERVER.Example.COM/token",
        "HTTPS://server.example.com/token",
        "https://server.example.com:443/token",
        "https://server.example.com/%74oken",
        "https://server.example.com/a/../token",
    ];
    for request in yes {
        assert!(matches(BASE, request), "{request}");
    }
    let no = [
        "http://server.example.com/token",
        "https://server.example.com:8443/token",
        "https://server.example.com/Token",
        "https://server.example.com/token/",
        "https://other.example.com/token",
    ];
    for request in no {
        assert!(!matches(BASE, request), "{request}");
    }
    assert!(matches(
        "https://server.example.com",
        "https://server.example.com/"
    ));
    assert!(matches(
        "https://h.example/a%2fb",
        "https://h.example/a%2Fb"
    ));
    assert!(!matches("https://h.example/a%2Fb", "https://h.example/a/b"));
}

#[test]
fn normal_forms() {
    let cases = [
        (BASE, BASE),
        ("HtTp://Example.COM", "http://example.com/"),
        ("http://example.com:80/", "http://example.com/"),
        ("http://example.com:0080/", "http://example.com/"),
        ("http://example.com:443/", "http://example.com:443/"),
        ("https://example.com:80/", "https://example.com:80/"),
        ("https://example.com:0443/x", "https://example.com/x"),
        ("https://example.com:08443/x", "https://example.com:8443/x"),
        ("https://example.com:0/x", "https://example.com:0/x"),
        ("https://example.com:65535/", "https://example.com:65535/"),
        ("https://example.com:/x", "https://example.com/x"),
        ("https://example.com?x", "https://example.com/"),
        ("https://example.com#x", "https://example.com/"),
        ("https://example.com/a?b#c?d", "https://example.com/a"),
        ("https://%45xample.com/", "https://example.com/"),
        ("https://ex%2fample.com/", "https://ex%2Fample.com/"),
        ("https://127.0.0.1:8080/", "https://127.0.0.1:8080/"),
        ("https://[::1]/", "https://[::1]/"),
        (
            "https://[::FFFF:1.2.3.4]:8443/x",
            "https://[::ffff:1.2.3.4]:8443/x",
        ),
        ("https://[2001:DB8::1]:443", "https://[2001:db8::1]/"),
        (
            "https://h.example/%7e%41%2d%5f%2e",
            "https://h.example/~A-_.",
        ),
        (
            "https://h.example/%3a%3A%c3%a9",
            "https://h.example/%3A%3A%C3%A9",
        ),
        ("https://h.example/a/b/c/./../../g", "https://h.example/a/g"),
        ("https://h.example/a/b/..", "https://h.example/a/"),
        ("https://h.example/a/b/.", "https://h.example/a/b/"),
        ("https://h.example/..", "https://h.example/"),
        ("https://h.example/../../x", "https://h.example/x"),
        ("https://h.example/a//../b", "https://h.example/a/b"),
        ("https://h.example/a/%2E%2e/b", "https://h.example/b"),
        ("https://h.example/a/.%2E", "https://h.example/"),
        ("https://h.example/.../x", "https://h.example/.../x"),
        ("https://h.example//x", "https://h.example//x"),
        (
            "https://h.example/a:b@c!$&'()*+,;=",
            "https://h.example/a:b@c!$&'()*+,;=",
        ),
        ("https://h.example/x?q=<>\"{}|\\^`", "https://h.example/x"),
        (
            "https://sub-1.h_x~.example./",
            "https://sub-1.h_x~.example./",
        ),
    ];
    for (input, expected) in cases {
        assert_eq!(norm(input), expected, "{input}");
        assert_eq!(norm(expected), expected, "{expected} is not a fixed point");
    }
}

#[test]
fn rejections() {
    let cases: &[(&str, HtuError)] = &[
        ("ftp://server.example.com/", HtuError::BadScheme),
        ("wss://server.example.com/", HtuError::BadScheme),
        ("httpx://server.example.com/", HtuError::BadScheme),
        ("javascript:alert(1)", HtuError::BadScheme),
        ("server.example.com:443/token", HtuError::BadScheme),
        ("/token", HtuError::Relative),
        ("//server.example.com/token", HtuError::Relative),
        ("server.example.com/token", HtuError::Relative),
        ("", HtuError::Relative),
        (":foo", HtuError::Relative),
        ("https:/token", HtuError::MissingAuthority),
        ("https:token", HtuError::MissingAuthority),
        ("https:", HtuError::MissingAuthority),
        ("https://user@server.example.com/", HtuError::Userinfo),
        ("https://user:pw@server.example.com/", HtuError::Userinfo),
        ("https://@server.example.com/", HtuError::Userinfo),
        ("https://good.example@evil.example/", HtuError::Userinfo),
        ("https://h.example:abc/", HtuError::BadPort),
        ("https://h.example:65536/", HtuError::BadPort),
        (
            "https://h.example:99999999999999999999999/",
            HtuError::BadPort,
        ),
        ("https://h.example:1:2/", HtuError::BadPort),
        ("https://h.example:+443/", HtuError::BadPort),
        ("https://h.example:-1/", HtuError::BadPort),
        ("https://[::1]:x/", HtuError::BadPort),
        ("https://h.example/%G1", HtuError::BadPercentEncoding),
        ("https://h.example/%4", HtuError::BadPercentEncoding),
        ("https://h.example/%", HtuError::BadPercentEncoding),
        ("https://h.example/a%4/b", HtuError::BadPercentEncoding),
        ("https://h.example/%%41", HtuError::BadPercentEncoding),
        ("https://ex%zzample.com/", HtuError::BadPercentEncoding),
        ("https://ex%2/", HtuError::BadPercentEncoding),
        ("https://h.example/a b", HtuError::BadCharacter),
        ("https://h.example/a\tb", HtuError::BadCharacter),
        ("https://h.example/a\nb", HtuError::BadCharacter),
        ("https://h.example/a\0b", HtuError::BadCharacter),
        ("https://h.example/a\x7fb", HtuError::BadCharacter),
        ("https://h.example/x?a b", HtuError::BadCharacter),
        ("https://h.example/x#a\rb", HtuError::BadCharacter),
        (" https://h.example/", HtuError::BadCharacter),
        ("https://h.example/ ", HtuError::BadCharacter),
        ("https://h.example\\@evil.example/", HtuError::Userinfo),
        ("https://h.example\\evil/", HtuError::BadCharacter),
        ("https://exa[mple.com/", HtuError::BadCharacter),
        ("https://exa]mple.com/", HtuError::BadCharacter),
        ("https://exa\"mple.com/", HtuError::BadCharacter),
        ("https:///token", HtuError::EmptyHost),
        ("https://:443/token", HtuError::EmptyHost),
        ("https://", HtuError::EmptyHost),
        ("https://?x", HtuError::EmptyHost),
        ("https://[]/", HtuError::BadHost),
        ("https://[::1/", HtuError::BadHost),
        ("https://[::1]x/", HtuError::BadHost),
        ("https://[v1.abc]/", HtuError::BadHost),
        ("https://[::1%25eth0]/", HtuError::BadHost),
        ("https://[1:2:3:4:5:6:7:8:9]/", HtuError::BadHost),
        ("https://[1:2:3:4:5:6:7]/", HtuError::BadHost),
        ("https://[1::2::3]/", HtuError::BadHost),
        ("https://[:::]/", HtuError::BadHost),
        ("https://[1:2:3:4:5:6:7::8]/", HtuError::BadHost),
        ("https://[12345::]/", HtuError::BadHost),
        ("https://[1.2.3.4::]/", HtuError::BadHost),
        ("https://[::256.1.1.1]/", HtuError::BadHost),
        ("https://127.1/", HtuError::BadHost),
        ("https://2130706433/", HtuError::BadHost),
        ("https://0x7f.0.0.1/", HtuError::BadHost),
        ("https://example.0x7f/", HtuError::BadHost),
        ("https://010.0.0.1/", HtuError::BadHost),
        ("https://256.0.0.1/", HtuError::BadHost),
        ("https://1.2.3.4.5/", HtuError::BadHost),
        ("https://1.2.3.4./", HtuError::BadHost),
        ("https://%31%32%37.1/", HtuError::BadHost),
        ("https://exämple.com/", HtuError::NonAscii),
        ("https://h.example/é", HtuError::NonAscii),
        ("https://h.example/x?é", HtuError::NonAscii),
    ];
    for (input, expected) in cases {
        assert_eq!(&err(input), expected, "{input:?}");
    }
    for c in ['"', '<', '>', '\\', '^', '`', '{', '|', '}', '[', ']', '%'] {
        let input = format!("https://h.example/a{c}b");
        let got = err(&input);
        let want = if c == '%' {
            HtuError::BadPercentEncoding
        } else {
            HtuError::BadCharacter
        };
        assert_eq!(got, want, "{input}");
    }
}

#[test]
fn length_limit() {
    let prefix = "https://h.example/";
    let exact = format!("{prefix}{}", "a".repeat(MAX_LEN - prefix.len()));
    assert_eq!(Htu::parse(&exact).unwrap().as_str(), exact);
    let over = format!("{exact}a");
    assert_eq!(Htu::parse(&over), Err(HtuError::TooLong));
    // The limit is on the input, query included.
    let long_query = format!("{prefix}?{}", "q".repeat(MAX_LEN));
    assert_eq!(Htu::parse(&long_query), Err(HtuError::TooLong));
    assert_eq!(
        Htu::from_origin_and_path("https://h.example", &format!("/{}", "a".repeat(MAX_LEN))),
        Err(HtuError::TooLong)
    );
    // An empty path becomes "/": an input at the limit would normalise past it, and is
    // refused, so that every normal form parses to itself (the verifier takes a claim
    // equal to the request's normal form without parsing it again).
    let host_only = format!("https://{}", "a".repeat(MAX_LEN - "https://".len()));
    assert_eq!(host_only.len(), MAX_LEN);
    assert_eq!(Htu::parse(&host_only), Err(HtuError::TooLong));
    let shorter = &host_only[..MAX_LEN - 1];
    let normal = Htu::parse(shorter).unwrap();
    assert_eq!(normal.as_str().len(), MAX_LEN);
    assert_eq!(Htu::parse(normal.as_str()).unwrap(), normal);
}

#[test]
fn origin_and_path() {
    let ok = |o: &str, p: &str| Htu::from_origin_and_path(o, p).unwrap().as_str().to_owned();
    assert_eq!(
        ok("https://api.example.com", "/a/b?x=1"),
        "https://api.example.com/a/b"
    );
    assert_eq!(
        ok("https://api.example.com/", "/a"),
        "https://api.example.com/a"
    );
    assert_eq!(
        ok("https://API.example.com:8443", "/a"),
        "https://api.example.com:8443/a"
    );
    assert_eq!(
        ok("https://api.example.com:443", "/a"),
        "https://api.example.com/a"
    );
    assert_eq!(
        ok("http://api.example.com:80", "/"),
        "http://api.example.com/"
    );
    assert_eq!(
        ok("https://x.example/api", "/token"),
        "https://x.example/api/token"
    );
    assert_eq!(
        ok("https://x.example/api/", "/token"),
        "https://x.example/api/token"
    );
    assert_eq!(
        ok("https://x.example/api/", "/?q"),
        "https://x.example/api/"
    );
    assert_eq!(ok("https://x.example/api", "/"), "https://x.example/api/");
    assert_eq!(ok("https://x.example/api", "/../x"), "https://x.example/x");
    assert_eq!(ok("https://x.example/api/..", "/x"), "https://x.example/x");
    assert_eq!(ok("https://x.example/a/.", "/x"), "https://x.example/a/x");
    assert_eq!(
        ok("https://x.example", "/%74oken#f"),
        "https://x.example/token"
    );
    assert_eq!(ok("https://x.example", "/.."), "https://x.example/");
    // "//evil.example" is an (odd) origin-form path, never an authority.
    assert_eq!(
        ok("https://x.example", "//evil.example/a"),
        "https://x.example//evil.example/a"
    );
    // It agrees with `parse` on the joined URI.
    assert_eq!(
        Htu::from_origin_and_path("https://x.example/api", "/a/b?x=1").unwrap(),
        Htu::parse("https://x.example/api/a/b?x=1").unwrap()
    );

    let bad = |o: &str, p: &str| Htu::from_origin_and_path(o, p).unwrap_err();
    assert_eq!(bad("https://x.example", "*"), HtuError::BadRequestTarget);
    assert_eq!(bad("https://x.example", ""), HtuError::BadRequestTarget);
    assert_eq!(bad("https://x.example", "a/b"), HtuError::BadRequestTarget);
    assert_eq!(
        bad("https://x.example", "https://x.example/a"),
        HtuError::BadRequestTarget
    );
    assert_eq!(bad("https://x.example?q", "/a"), HtuError::BadOrigin);
    assert_eq!(bad("https://x.example#f", "/a"), HtuError::BadOrigin);
    assert_eq!(bad("ftp://x.example", "/a"), HtuError::BadScheme);
    assert_eq!(bad("x.example", "/a"), HtuError::Relative);
    assert_eq!(bad("https://u@x.example", "/a"), HtuError::Userinfo);
    assert_eq!(bad("https://x.example", "/a b"), HtuError::BadCharacter);
    assert_eq!(
        bad("https://x.example", "/%zz"),
        HtuError::BadPercentEncoding
    );
    assert_eq!(bad("https://x.example", "/a?é"), HtuError::NonAscii);
}

#[test]
fn api_traits_and_messages() {
    let h: Htu = "HTTPS://Server.Example.com:443".parse().unwrap();
    assert_eq!(h.to_string(), "https://server.example.com/");
    assert_eq!(h.as_str(), "https://server.example.com/");
    assert_eq!("ftp://x".parse::<Htu>(), Err(HtuError::BadScheme));
    assert_eq!(
        HtuError::BadScheme.to_string(),
        "htu scheme must be http or https"
    );
    let all = [
        HtuError::TooLong,
        HtuError::NonAscii,
        HtuError::BadCharacter,
        HtuError::Relative,
        HtuError::BadScheme,
        HtuError::MissingAuthority,
        HtuError::Userinfo,
        HtuError::EmptyHost,
        HtuError::BadHost,
        HtuError::BadPort,
        HtuError::BadPercentEncoding,
        HtuError::BadOrigin,
        HtuError::BadRequestTarget,
    ];
    let mut reasons = std::collections::HashSet::new();
    for e in all {
        let r = e.reason();
        assert!(!r.is_empty() && r.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'));
        assert!(reasons.insert(r), "duplicate reason {r}");
        assert!(!e.to_string().is_empty());
        let _: &dyn std::error::Error = &e;
    }
}

/// The already-normal case costs one exact-size allocation (speed is measured by
/// the benches, not asserted here).
#[test]
fn normal_input_is_cheap() {
    let h = Htu::parse(BASE).unwrap();
    // Exact reservation and no regrowth: regrowth would at least double the capacity.
    assert_eq!(h.0.capacity(), BASE.len());
    let with_query = Htu::parse("https://server.example.com/token?x=1#y").unwrap();
    assert!(with_query.0.capacity() <= BASE.len() + 1);
}

// ---- property tests ----

fn scheme() -> impl Strategy<Value = &'static str> {
    prop_oneof![Just("http"), Just("https")]
}

fn host() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z][a-z0-9-]{0,8}(\\.[a-z][a-z0-9-]{0,8}){0,3}",
        "([a-zA-Z~_!$&'()*+,;=]|%[46][1-9a-fA-F]|%2[fF]|%7[eE]){1,8}\\.[a-zA-Z]{2,4}",
        (any::<u8>(), any::<u8>(), any::<u8>(), any::<u8>())
            .prop_map(|(a, b, c, d)| format!("{a}.{b}.{c}.{d}")),
        proptest::array::uniform8(any::<u16>()).prop_map(|g| format!(
            "[{:x}:{:X}:{:x}:{:X}:{:x}:{:X}:{:x}:{:X}]",
            g[0], g[1], g[2], g[3], g[4], g[5], g[6], g[7]
        )),
        proptest::array::uniform3(any::<u16>())
            .prop_map(|g| format!("[{:X}::{:x}:{:X}]", g[0], g[1], g[2])),
        Just("[::1]".to_owned()),
        Just("[::FFFF:192.0.2.1]".to_owned()),
    ]
}

fn path() -> impl Strategy<Value = String> {
    "(/\\.\\.|/\\.|/%2[eE]|/([a-zA-Z0-9._~!$&'()*+,;=:@-]|%[0-9a-fA-F]{2}){0,6}){0,6}"
}

fn port() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        Just(":".to_owned()),
        (0_u32..=65535).prop_map(|p| format!(":{p}")),
        (0_u32..=65535).prop_map(|p| format!(":00{p}")),
    ]
}

fn uri() -> impl Strategy<Value = String> {
    (scheme(), host(), port(), path()).prop_map(|(s, h, p, pa)| format!("{s}://{h}{p}{pa}"))
}

fn flip_case(s: &str, mask: &[bool]) -> String {
    s.chars()
        .zip(mask.iter().cycle())
        .map(|(c, &up)| {
            if up {
                c.to_ascii_uppercase()
            } else {
                c.to_ascii_lowercase()
            }
        })
        .collect()
}

proptest! {
    #[test]
    fn idempotent(u in uri()) {
        let n = Htu::parse(&u).unwrap();
        prop_assert_eq!(&Htu::parse(n.as_str()).unwrap(), &n);
        prop_assert!(n.as_str().len() <= u.len() + 1);
    }

    #[test]
    fn scheme_and_host_case_never_matter(
        s in scheme(), h in host(), p in port(), pa in path(),
        mask in proptest::collection::vec(any::<bool>(), 1..16),
    ) {
        let a = Htu::parse(&format!("{s}://{h}{p}{pa}")).unwrap();
        let flipped = format!("{}://{}{p}{pa}", flip_case(s, &mask), flip_case(&h, &mask));
        prop_assert_eq!(Htu::parse(&flipped).unwrap(), a);
    }

    #[test]
    fn default_port_never_matters(s in scheme(), h in host(), pa in path(), zeros in 0_usize..3) {
        let default = if s == "https" { 443 } else { 80 };
        let a = Htu::parse(&format!("{s}://{h}{pa}")).unwrap();
        let b = Htu::parse(&format!("{s}://{h}:{}{default}{pa}", "0".repeat(zeros))).unwrap();
        prop_assert_eq!(&b, &a);
        let c = Htu::parse(&format!("{s}://{h}:{pa}")).unwrap();
        prop_assert_eq!(c, a);
    }

    #[test]
    fn query_and_fragment_never_matter(u in uri(), q in "[!-~]{0,20}", f in "[!-~]{0,20}") {
        let a = Htu::parse(&u).unwrap();
        prop_assert_eq!(&Htu::parse(&format!("{u}?{q}")).unwrap(), &a);
        prop_assert_eq!(&Htu::parse(&format!("{u}#{f}")).unwrap(), &a);
        prop_assert_eq!(Htu::parse(&format!("{u}?{q}#{f}")).unwrap(), a);
    }

    #[test]
    fn origin_and_path_agrees_with_parse(
        s in scheme(), h in host(), p in port(), prefix in path(), pa in path(), q in "[!-~]{0,10}",
    ) {
        let origin = format!("{s}://{h}{p}{prefix}");
        let target = format!("/{pa}?{q}");
        let joined = format!("{}{target}", origin.strip_suffix('/').unwrap_or(&origin));
        prop_assert_eq!(
            Htu::from_origin_and_path(&origin, &target),
            Htu::parse(&joined)
        );
    }

    #[test]
    fn never_panics_on_strings(s in any::<String>()) {
        let _ = Htu::parse(&s);
        let _ = Htu::from_origin_and_path(&s, &s);
    }

    #[test]
    fn never_panics_on_ascii(s in "[\\x00-\\x7f]{0,64}", t in "[\\x00-\\x7f]{0,16}") {
        let _ = Htu::parse(&s);
        let _ = Htu::from_origin_and_path(&s, &t);
        if let Ok(n) = Htu::parse(&s) {
            prop_assert_eq!(Htu::parse(n.as_str()).unwrap(), n);
        }
    }

    #[test]
    fn never_panics_on_uri_like(s in "(https?://)?[!-~]{0,48}") {
        if let Ok(n) = Htu::parse(&s) {
            prop_assert_eq!(Htu::parse(n.as_str()).unwrap(), n);
        }
    }
}

#[test]
fn a_base_parsed_once_joins_like_origin_and_path() {
    let base = HtuBase::parse("HTTPS://API.Example.com:443/api/").unwrap();
    assert_eq!(base.origin(), "https://api.example.com");
    assert_eq!(base.path_prefix(), "/api");
    assert_eq!(
        HtuBase::parse("https://api.example.com/")
            .unwrap()
            .path_prefix(),
        ""
    );
    for path in ["/", "/a/b?x=1", "/a/../b", "/../../etc", "/%7euser", "/a#f"] {
        assert_eq!(
            base.join(path),
            Htu::from_origin_and_path("HTTPS://API.Example.com:443/api/", path),
            "{path}"
        );
    }
    assert_eq!(
        base.join("/../../x").unwrap().as_str(),
        "https://api.example.com/x"
    );
    assert_eq!(base.join("a"), Err(HtuError::BadRequestTarget));
    assert_eq!(base.join(&"/a".repeat(5000)), Err(HtuError::TooLong));
    assert_eq!(
        HtuBase::parse("https://api.example.com/?q=1"),
        Err(HtuError::BadOrigin)
    );
    assert!(HtuBase::parse("ftp://api.example.com").is_err());
}
