use super::*;
use proptest::prelude::*;

const FIG15: &str = r#"DPoP algs="ES256 PS256""#;
const FIG16: &str =
    r#"DPoP error="invalid_token", error_description="Invalid DPoP key binding", algs="ES256""#;
const FIG17: &str = r#"Bearer, DPoP algs="ES256 PS256""#;
const FIG18: &str =
    r#"Bearer error="invalid_token", error_description="Invalid token", DPoP algs="ES256 PS256""#;
const FIG19: &str = r#"Bearer error="invalid_request", error_description="Multiple methods used to include access token", DPoP algs="ES256 PS256", error="invalid_request", error_description="Multiple methods used to include access token""#;
const FIG24: &str = r#"DPoP error="use_dpop_nonce", error_description="Resource server requires nonce in DPoP proof""#;

fn fig15() -> Challenge {
    Challenge::dpop().with_algs(["ES256", "PS256"]).unwrap()
}
fn fig16() -> Challenge {
    Challenge::dpop()
        .with_error("invalid_token")
        .unwrap()
        .with_error_description("Invalid DPoP key binding")
        .unwrap()
        .with_algs(["ES256"])
        .unwrap()
}
fn fig17() -> Vec<Challenge> {
    vec![Challenge::bearer(), fig15()]
}
fn fig18() -> Vec<Challenge> {
    vec![
        Challenge::bearer()
            .with_error("invalid_token")
            .unwrap()
            .with_error_description("Invalid token")
            .unwrap(),
        fig15(),
    ]
}
fn fig19() -> Vec<Challenge> {
    let multiple = "Multiple methods used to include access token";
    vec![
        Challenge::bearer()
            .with_error("invalid_request")
            .unwrap()
            .with_error_description(multiple)
            .unwrap(),
        fig15()
            .with_error("invalid_request")
            .unwrap()
            .with_error_description(multiple)
            .unwrap(),
    ]
}
fn fig24() -> Challenge {
    Challenge::dpop()
        .with_error("use_dpop_nonce")
        .unwrap()
        .with_error_description("Resource server requires nonce in DPoP proof")
        .unwrap()
}

fn rfc_cases() -> Vec<(&'static str, Vec<Challenge>)> {
    vec![
        (FIG15, vec![fig15()]),
        (FIG16, vec![fig16()]),
        (FIG17, fig17()),
        (FIG18, fig18()),
        (FIG19, fig19()),
        (FIG24, vec![fig24()]),
    ]
}

#[test]
fn rfc9449_figures_render_byte_for_byte() {
    for (text, challenges) in rfc_cases() {
        assert_eq!(render(&challenges), text);
    }
    assert_eq!(fig15().to_string(), FIG15);
    assert_eq!(fig16().to_string(), FIG16);
    assert_eq!(fig24().to_string(), FIG24);
}

#[test]
fn rfc9449_figures_parse_back() {
    for (text, challenges) in rfc_cases() {
        assert_eq!(parse(text).unwrap(), challenges, "{text}");
    }
}

#[test]
fn fig19_accessors() {
    let parsed = parse(FIG19).unwrap();
    assert_eq!(parsed.len(), 2);
    assert!(parsed[0].is_scheme("Bearer"));
    assert_eq!(parsed[0].error(), Some("invalid_request"));
    assert_eq!(parsed[0].algs().count(), 0);
    let dpop = parsed.iter().find(|c| c.is_scheme("DPoP")).unwrap();
    assert_eq!(dpop.algs().collect::<Vec<_>>(), ["ES256", "PS256"]);
    assert_eq!(dpop.error(), Some("invalid_request"));
    assert_eq!(
        dpop.param("ERROR_description"),
        Some("Multiple methods used to include access token")
    );
    assert_eq!(
        dpop.params().map(|(n, _)| n).collect::<Vec<_>>(),
        ["algs", "error", "error_description"]
    );
    assert_eq!(dpop.token68(), None);
}

#[test]
fn fig17_bare_scheme() {
    let parsed = parse(FIG17).unwrap();
    assert_eq!(parsed[0].scheme(), "Bearer");
    assert_eq!(parsed[0].params().count(), 0);
    assert_eq!(parsed[0].to_string(), "Bearer");
    assert_eq!(Challenge::dpop().to_string(), "DPoP");
    assert_eq!(render(&[]), "");
}

#[test]
fn scheme_is_case_insensitive() {
    let parsed = parse(r#"dpop algs="ES256""#).unwrap();
    assert!(parsed[0].is_scheme("DPoP"));
    assert!(parsed[0].is_scheme("DPOP"));
    assert!(!parsed[0].is_scheme("Bearer"));
    assert_eq!(parsed[0].scheme(), "dpop", "case is kept");
    assert_eq!(parsed[0].to_string(), r#"dpop algs="ES256""#);
}

#[test]
fn token_values_unquoted() {
    let parsed = parse("DPoP error=invalid_token, algs=ES256").unwrap();
    assert_eq!(parsed[0].error(), Some("invalid_token"));
    assert_eq!(parsed[0].algs().collect::<Vec<_>>(), ["ES256"]);
    assert_eq!(
        parsed[0].to_string(),
        r#"DPoP error="invalid_token", algs="ES256""#
    );
}

#[test]
fn escaped_quotes_round_trip() {
    let c = Challenge::new("Newauth")
        .unwrap()
        .with_param("title", r#"Login to "apps" \o/"#)
        .unwrap();
    let text = c.to_string();
    assert_eq!(text, r#"Newauth title="Login to \"apps\" \\o/""#);
    let parsed = parse(&text).unwrap();
    assert_eq!(parsed, vec![c]);
    assert_eq!(parsed[0].param("title"), Some(r#"Login to "apps" \o/"#));
    // A quoted-pair may escape any character, not just `"` and `\`.
    let parsed = parse(r#"X a="\a\b""#).unwrap();
    assert_eq!(parsed[0].param("a"), Some("ab"));
}

#[test]
fn rfc9110_example_with_unknown_params() {
    let text = r#"Newauth realm="apps", type=1, title="Login to \"apps\"", Basic realm="simple""#;
    let parsed = parse(text).unwrap();
    assert_eq!(parsed.len(), 2);
    assert_eq!(parsed[0].param("type"), Some("1"));
    assert_eq!(parsed[0].param("title"), Some(r#"Login to "apps""#));
    assert_eq!(parsed[0].param("realm"), Some("apps"));
    assert!(parsed[1].is_scheme("basic"));
    assert_eq!(parsed[1].param("Realm"), Some("simple"));
}

#[test]
fn token68_challenges() {
    // `a=` alone after a scheme is token68 padding, not a param missing its value.
    let parsed = parse("DPoP a=, B").unwrap();
    assert_eq!(parsed[0].token68(), Some("a="));
    assert!(parsed[1].is_scheme("b"));

    let parsed = parse("Negotiate abc==").unwrap();
    assert_eq!(parsed[0].token68(), Some("abc=="));
    assert_eq!(parsed[0].params().count(), 0);
    assert_eq!(parsed[0].to_string(), "Negotiate abc==");

    let parsed = parse("Negotiate a/b+c=, DPoP algs=\"ES256\"").unwrap();
    assert_eq!(parsed.len(), 2);
    assert_eq!(parsed[0].token68(), Some("a/b+c="));
    assert_eq!(parsed[1].algs().collect::<Vec<_>>(), ["ES256"]);
    assert_eq!(render(&parsed), "Negotiate a/b+c=, DPoP algs=\"ES256\"");

    // `abc=` followed by a value is an auth-param, not a token68.
    let parsed = parse("X abc= def").unwrap();
    assert_eq!(parsed[0].param("abc"), Some("def"));
    assert_eq!(parsed[0].token68(), None);

    // A token68 challenge cannot be given params afterwards.
    assert_eq!(
        parse("Negotiate abc, realm=x"),
        Err(ChallengeError::Token68WithParams)
    );
    assert_eq!(
        parsed_token68().with_param("a", "b"),
        Err(ChallengeError::Token68WithParams)
    );
}

fn parsed_token68() -> Challenge {
    parse("Negotiate abc").unwrap().remove(0)
}

#[test]
fn lenient_whitespace_and_empty_elements() {
    let parsed = parse(" ,, Bearer ,\t, DPoP  algs = \"ES256\" ,, error=x ,").unwrap();
    assert_eq!(parsed.len(), 2);
    assert_eq!(parsed[0].params().count(), 0);
    assert_eq!(parsed[1].param("algs"), Some("ES256"));
    assert_eq!(parsed[1].error(), Some("x"));
    assert_eq!(parse("").unwrap(), vec![]);
    assert_eq!(parse(" , ,").unwrap(), vec![]);
    // `Bearer, realm="x"`: a param after the comma still belongs to Bearer.
    let parsed = parse(r#"Bearer, realm="x""#).unwrap();
    assert_eq!(parsed.len(), 1);
    assert_eq!(parsed[0].param("realm"), Some("x"));
}

#[test]
fn algs_tolerates_extra_spaces() {
    let parsed = parse(r#"DPoP algs=" ES256  PS256 ""#).unwrap();
    assert_eq!(parsed[0].algs().collect::<Vec<_>>(), ["ES256", "PS256"]);
}

#[test]
fn builder_rejections() {
    assert_eq!(Challenge::new(""), Err(ChallengeError::InvalidScheme));
    assert_eq!(Challenge::new("D PoP"), Err(ChallengeError::InvalidScheme));
    assert_eq!(Challenge::new("DPoP,"), Err(ChallengeError::InvalidScheme));
    assert_eq!(Challenge::new("é"), Err(ChallengeError::InvalidScheme));
    assert!(Challenge::new("Newauth").is_ok());

    let d = Challenge::dpop;
    assert_eq!(
        d().with_param("", "v"),
        Err(ChallengeError::InvalidParamName)
    );
    assert_eq!(
        d().with_param("a b", "v"),
        Err(ChallengeError::InvalidParamName)
    );
    assert_eq!(
        d().with_param("a=", "v"),
        Err(ChallengeError::InvalidParamName)
    );
    for bad in ["a\nb", "a\rb", "a\tb", "\0", "\x7f", "café"] {
        assert_eq!(
            d().with_param("x", bad),
            Err(ChallengeError::InvalidParamValue { name: "x".into() }),
            "{bad:?}"
        );
    }
    assert_eq!(d().with_param("x", "").unwrap().to_string(), r#"DPoP x="""#);
    assert_eq!(
        d().with_param("realm", "a").unwrap().with_realm("b"),
        Err(ChallengeError::DuplicateParam {
            name: "realm".into()
        })
    );
    assert_eq!(
        d().with_error("invalid_token")
            .unwrap()
            .with_param("ERROR", "x"),
        Err(ChallengeError::DuplicateParam {
            name: "ERROR".into()
        })
    );

    assert_eq!(d().with_error(""), Err(ChallengeError::InvalidErrorCode));
    assert_eq!(
        d().with_error("a\"b"),
        Err(ChallengeError::InvalidErrorCode)
    );
    assert_eq!(
        d().with_error("a\\b"),
        Err(ChallengeError::InvalidErrorCode)
    );
    assert_eq!(
        d().with_error_description("say \"no\""),
        Err(ChallengeError::InvalidErrorDescription)
    );
    assert_eq!(
        d().with_error_description(""),
        Err(ChallengeError::InvalidErrorDescription)
    );
    assert_eq!(
        d().with_error_description("line\nbreak"),
        Err(ChallengeError::InvalidErrorDescription)
    );

    assert_eq!(
        d().with_algs::<_, &str>([]),
        Err(ChallengeError::InvalidAlgs)
    );
    assert_eq!(d().with_algs([""]), Err(ChallengeError::InvalidAlgs));
    assert_eq!(
        d().with_algs(["ES256 PS256"]),
        Err(ChallengeError::InvalidAlgs)
    );
    assert_eq!(
        d().with_algs(["ES256", "a\"b"]),
        Err(ChallengeError::InvalidAlgs)
    );
    let owned: Vec<String> = vec!["EdDSA".into()];
    assert_eq!(
        d().with_algs(&owned).unwrap().to_string(),
        r#"DPoP algs="EdDSA""#
    );

    assert_eq!(
        d().with_scope("read write").unwrap().to_string(),
        r#"DPoP scope="read write""#
    );
    for bad in ["", " read", "read ", "read  write", "a\"b", "a\\b", "a\tb"] {
        assert_eq!(
            d().with_scope(bad),
            Err(ChallengeError::InvalidScope),
            "{bad:?}"
        );
    }
    assert_eq!(
        d().with_realm("example \"x\"").unwrap().to_string(),
        r#"DPoP realm="example \"x\"""#
    );
    assert_eq!(
        d().with_realm("bad\r\nSet-Cookie: x"),
        Err(ChallengeError::InvalidParamValue {
            name: "realm".into()
        })
    );
}

#[test]
fn builder_param_limit() {
    let mut c = Challenge::dpop();
    for i in 0..MAX_PARAMS {
        c = c.with_param(&format!("p{i}"), "v").unwrap();
    }
    assert_eq!(
        c.clone().with_param("q", "v"),
        Err(ChallengeError::TooManyParams)
    );
    // Exactly MAX_PARAMS parses back.
    assert_eq!(parse(&c.to_string()).unwrap(), vec![c]);
}

#[test]
fn parse_rejections() {
    let malformed = |s: &str| match parse(s) {
        Err(ChallengeError::Malformed { .. }) => {}
        other => panic!("{s:?} gave {other:?}"),
    };
    // Bad scheme / stray characters.
    malformed("\"DPoP\"");
    malformed("D/PoP");
    malformed("DPoP\"x\"");
    malformed("DPoP/");
    malformed("=x");
    malformed(r#"realm="x""#);
    malformed("DPoP é");
    malformed("éDPoP");
    malformed("DPoP algs=\"ES256\" error=x");
    malformed("DPoP b=x, a=");
    malformed("DPoP b=x, a=,");
    malformed("DPoP b=x, a= ");
    malformed("DPoP a=b=c");
    malformed("DPoP a=\"b\"c");
    malformed("DPoP a==b");
    malformed("Negotiate a/b=c");
    malformed("Negotiate a/b= c");
    malformed("Negotiate ==");
    malformed("DPoP a=@");
    malformed("DPoP, a b c");
    // Control characters outside quoted-strings.
    malformed("DPoP\0");
    malformed("DPoP a=b\r\nX: y");
    malformed("DPoP\n algs=\"ES256\"");

    assert_eq!(
        parse(r#"DPoP algs="ES256"#),
        Err(ChallengeError::UnterminatedQuote { offset: 10 })
    );
    assert_eq!(
        parse(r#"DPoP a="b\"#),
        Err(ChallengeError::UnterminatedQuote { offset: 7 })
    );
    assert_eq!(
        parse(r#"DPoP error="x", ERROR="y""#),
        Err(ChallengeError::DuplicateParam {
            name: "ERROR".into()
        })
    );
    // The same name in two different challenges is fine.
    assert!(parse(r#"Bearer error="x", DPoP error="y""#).is_ok());
    for bad in [
        "DPoP a=\"x\ty\"",
        "DPoP a=\"x\ny\"",
        "DPoP a=\"\0\"",
        "DPoP a=\"é\"",
        "DPoP a=\"\\\x7f\"",
    ] {
        assert_eq!(
            parse(bad),
            Err(ChallengeError::InvalidParamValue { name: "a".into() }),
            "{bad:?}"
        );
    }
}

#[test]
fn parse_bounds() {
    let at_limit = format!("DPoP a=\"{}\"", "x".repeat(MAX_HEADER_LEN - 9));
    assert_eq!(at_limit.len(), MAX_HEADER_LEN);
    assert!(parse(&at_limit).is_ok());
    let over = format!("DPoP a=\"{}\"", "x".repeat(MAX_HEADER_LEN - 8));
    assert_eq!(
        parse(&over),
        Err(ChallengeError::TooLong {
            len: MAX_HEADER_LEN + 1
        })
    );

    // Params are counted across challenges.
    let half = |scheme: &str| {
        let mut c = Challenge::new(scheme).unwrap();
        for i in 0..MAX_PARAMS / 2 {
            c = c.with_param(&format!("p{i}"), "v").unwrap();
        }
        c
    };
    let ok = render(&[half("A"), half("B")]);
    assert!(parse(&ok).is_ok());
    let too_many = render(&[
        half("A"),
        half("B"),
        Challenge::dpop().with_param("x", "y").unwrap(),
    ]);
    assert_eq!(parse(&too_many), Err(ChallengeError::TooManyParams));

    let schemes = vec!["A"; MAX_CHALLENGES].join(", ");
    assert_eq!(parse(&schemes).unwrap().len(), MAX_CHALLENGES);
    let schemes = vec!["A"; MAX_CHALLENGES + 1].join(", ");
    assert_eq!(parse(&schemes), Err(ChallengeError::TooManyChallenges));
}

#[test]
fn dpop_nonce() {
    assert_eq!(
        parse_dpop_nonce("eyJ7S_zG.eyJH0-Z.HX4w-7v"),
        Ok("eyJ7S_zG.eyJH0-Z.HX4w-7v")
    );
    assert_eq!(parse_dpop_nonce(" \tabc!~ \t"), Ok("abc!~"));
    assert_eq!(parse_dpop_nonce(""), Err(ChallengeError::EmptyNonce));
    assert_eq!(parse_dpop_nonce(" \t "), Err(ChallengeError::EmptyNonce));
    for bad in [
        "a b", "a\"b", "a\\b", "a\nb", "\0", "\x7f", "nonceé", "a, b",
    ] {
        assert_eq!(
            parse_dpop_nonce(bad),
            Err(ChallengeError::InvalidNonce),
            "{bad:?}"
        );
    }
    let long = "n".repeat(MAX_HEADER_LEN + 1);
    assert_eq!(
        parse_dpop_nonce(&long),
        Err(ChallengeError::TooLong {
            len: MAX_HEADER_LEN + 1
        })
    );
}

#[test]
fn errors_display_sentences() {
    let errors = [
        ChallengeError::TooLong { len: 20000 },
        ChallengeError::TooManyParams,
        ChallengeError::TooManyChallenges,
        ChallengeError::InvalidScheme,
        ChallengeError::InvalidParamName,
        ChallengeError::DuplicateParam {
            name: "error".into(),
        },
        ChallengeError::InvalidParamValue {
            name: "realm".into(),
        },
        ChallengeError::InvalidErrorCode,
        ChallengeError::InvalidErrorDescription,
        ChallengeError::InvalidAlgs,
        ChallengeError::InvalidScope,
        ChallengeError::Token68WithParams,
        ChallengeError::UnterminatedQuote { offset: 3 },
        ChallengeError::Malformed {
            offset: 4,
            expected: "a token",
        },
        ChallengeError::EmptyNonce,
        ChallengeError::InvalidNonce,
    ];
    for e in errors {
        let text = e.to_string();
        assert!(!text.is_empty() && !text.ends_with('.'), "{text}");
        let _: &dyn std::error::Error = &e;
    }
    assert_eq!(
        ChallengeError::Malformed {
            offset: 4,
            expected: "a token"
        }
        .to_string(),
        "malformed WWW-Authenticate value at byte 4: expected a token"
    );
}

/// A token (RFC 9110 §5.6.2) of up to 12 characters.
fn token() -> impl Strategy<Value = String> {
    "[!#$%&'*+.^_`|~0-9A-Za-z-]{1,12}"
}

/// One challenge built through the public builder: duplicate names are skipped.
fn challenge() -> impl Strategy<Value = Challenge> {
    (
        token(),
        prop::collection::vec((token(), "[ -~]{0,24}"), 0..6),
    )
        .prop_map(|(scheme, params)| {
            let mut c = Challenge::new(&scheme).unwrap();
            for (name, value) in params {
                if c.param(&name).is_none() {
                    c = c.with_param(&name, &value).unwrap();
                }
            }
            c
        })
}

proptest! {
    #[test]
    fn parse_never_panics(s in any::<String>()) {
        let _ = parse(&s);
        let _ = parse_dpop_nonce(&s);
    }

    #[test]
    fn parse_never_panics_on_grammar_soup(s in r#"[ \t,="\\a-zA-Z0-9/+~!é\x00\r\n]{0,64}"#) {
        if let Ok(parsed) = parse(&s) {
            // Whatever parses re-renders to something that parses the same.
            prop_assert_eq!(parse(&render(&parsed)), Ok(parsed));
        }
    }

    #[test]
    fn render_parse_round_trip(challenges in prop::collection::vec(challenge(), 0..5)) {
        let text = render(&challenges);
        prop_assert_eq!(parse(&text), Ok(challenges));
    }
}
