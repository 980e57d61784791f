use super::*;

fn head_of(text: &str) -> Head {
    let mut buf = BytesMut::from(text.as_bytes());
    parse_head(&mut buf, &mut 0).unwrap().unwrap()
}

fn framing_of(method: &Method, text: &str) -> Result<Framing, H1Error> {
    framing(method, &mut head_of(text))
}

#[test]
fn the_request_head_is_written_as_given() {
    let mut headers = HeaderMap::new();
    headers.insert("host", HeaderValue::from_static("api.example:8080"));
    headers.append("x-a", HeaderValue::from_static("1"));
    headers.append("x-a", HeaderValue::from_static("2"));
    let mut out = b"left".to_vec();
    encode_request(&Method::DELETE, "/a/b?c=d", &headers, &mut out);
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "leftDELETE /a/b?c=d HTTP/1.1\r\nhost: api.example:8080\r\nx-a: 1\r\nx-a: 2\r\n\r\n"
    );
}

#[test]
fn a_head_is_read_and_what_follows_it_stays() {
    let mut buf = BytesMut::from(
        &b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Many: a\r\nx-many: b\r\n\r\nokHTTP"[..],
    );
    let head = parse_head(&mut buf, &mut 0).unwrap().unwrap();
    assert_eq!(head.status, StatusCode::OK);
    assert_eq!(head.version, Version::HTTP_11);
    assert_eq!(head.reason, None);
    assert_eq!(head.headers["content-length"], "2");
    let many: Vec<_> = head.headers.get_all("x-many").iter().collect();
    assert_eq!(many, ["a", "b"]);
    assert_eq!(&buf[..], b"okHTTP");
}

#[test]
fn an_incomplete_head_asks_for_more_and_keeps_the_buffer() {
    for cut in 1..38 {
        let full = b"HTTP/1.1 404 Not Found\r\nA: b\r\n\r\n";
        let mut buf = BytesMut::from(&full[..cut.min(full.len() - 1)]);
        assert_eq!(
            parse_head(&mut buf, &mut 0).unwrap().map(|h| h.status),
            None,
            "{cut}"
        );
        assert_eq!(buf.len(), cut.min(full.len() - 1));
    }
}

#[test]
fn an_unusual_reason_is_kept_and_the_usual_one_is_not() {
    assert_eq!(head_of("HTTP/1.1 404 Not Found\r\n\r\n").reason, None);
    let head = head_of("HTTP/1.1 404 Nothing Here\r\n\r\n");
    assert_eq!(head.reason.as_deref(), Some(&b"Nothing Here"[..]));
    assert_eq!(head_of("HTTP/1.0 200 OK\r\n\r\n").version, Version::HTTP_10);
}

#[test]
fn a_missing_or_non_ascii_reason_is_no_reason() {
    for text in [
        &b"HTTP/1.1 200\r\n\r\n"[..],
        b"HTTP/1.1 200 \r\n\r\n",
        b"HTTP/1.1 404 N\xc3\xa3o encontrado\r\n\r\n",
        b"HTTP/1.1 100\r\n\r\n",
    ] {
        let mut buf = BytesMut::from(text);
        let head = parse_head(&mut buf, &mut 0).unwrap().unwrap();
        assert_eq!(head.reason, None, "{:?}", String::from_utf8_lossy(text));
        assert!(buf.is_empty());
    }
}

#[test]
fn a_head_read_byte_by_byte_is_looked_at_once_and_read_whole() {
    for wire in [
        &b"HTTP/1.1 200 OK\r\nA: b\r\nC: d\r\n\r\nbody"[..],
        b"HTTP/1.1 200 OK\nA: b\n\nbody",
        b"HTTP/1.1 200 OK\r\nA: b\n\r\nbody",
    ] {
        let mut buf = BytesMut::new();
        let mut scanned = 0;
        let mut head = None;
        for &byte in wire {
            buf.extend_from_slice(&[byte]);
            if let Some(h) = parse_head(&mut buf, &mut scanned).unwrap() {
                head = Some(h);
                break;
            }
            assert_eq!(scanned, buf.len());
        }
        let head = head.unwrap();
        assert_eq!((head.headers["a"].as_bytes(), scanned), (&b"b"[..], 0));
        assert!(b"body".starts_with(&buf));
    }
}

#[test]
fn malformed_heads_are_errors() {
    for text in [
        "HTTP/2.0 200 OK\r\n\r\n",
        "HTTP/1.1 20 OK\r\n\r\n",
        "HTTP/1.1 2000 OK\r\n\r\n",
        "HTTP/1.1 200 OK\r\nA : b\r\n\r\n",
        "HTTP/1.1 200 OK\r\nA: b\r\n folded\r\n\r\n",
        "HTTP/1.1 200 OK\r\nA: b\x01c\r\n\r\n",
        "HTTP/1.1 200 OK\r\nA\x7f: b\r\n\r\n",
        "HTTP/1.1 200 OK\r\n: b\r\n\r\n",
        "ICY 200 OK\r\n\r\n",
    ] {
        let mut buf = BytesMut::from(text.as_bytes());
        assert!(parse_head(&mut buf, &mut 0).is_err(), "{text:?}");
    }
}

#[test]
fn a_head_with_too_many_fields_or_bytes_is_refused() {
    let mut text = String::from("HTTP/1.1 200 OK\r\n");
    for i in 0..=MAX_HEADERS {
        text.push_str(&format!("x-{i}: v\r\n"));
    }
    text.push_str("\r\n");
    let mut buf = BytesMut::from(text.as_bytes());
    assert_eq!(
        parse_head(&mut buf, &mut 0).unwrap_err(),
        H1Error::TooManyHeaders
    );

    // Never ending: refused once past the limit, not buffered for ever.
    let mut buf = BytesMut::from(&b"HTTP/1.1 200 OK\r\nx-long: "[..]);
    buf.extend(std::iter::repeat_n(b'a', MAX_HEAD_BYTES));
    assert_eq!(
        parse_head(&mut buf, &mut 0).unwrap_err(),
        H1Error::HeadTooLarge
    );

    // Complete but too large.
    let mut buf = BytesMut::from(&b"HTTP/1.1 200 OK\r\nx-long: "[..]);
    buf.extend(std::iter::repeat_n(b'a', MAX_HEAD_BYTES));
    buf.extend_from_slice(b"\r\n\r\n");
    assert_eq!(
        parse_head(&mut buf, &mut 0).unwrap_err(),
        H1Error::HeadTooLarge
    );
}

#[test]
fn bodies_without_content_are_empty_whatever_the_fields_say() {
    let head = "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n";
    assert_eq!(framing_of(&Method::HEAD, head), Ok(Framing::Empty));
    for status in ["204 No Content", "304 Not Modified"] {
        let text = format!("HTTP/1.1 {status}\r\nContent-Length: 10\r\n\r\n");
        assert_eq!(framing_of(&Method::GET, &text), Ok(Framing::Empty));
    }
}

#[test]
fn chunked_is_the_one_transfer_coding() {
    for te in ["chunked", "Chunked", " chunked ", "chunked,", ", chunked"] {
        let text = format!("HTTP/1.1 200 OK\r\nTransfer-Encoding: {te}\r\n\r\n");
        assert_eq!(
            framing_of(&Method::GET, &text),
            Ok(Framing::Chunked),
            "{te}"
        );
    }
    for te in [
        "gzip, chunked",
        "chunked, chunked",
        "identity",
        "chunked;q=1",
        "chunked\r\nTransfer-Encoding: chunked",
        "gzip\r\nTransfer-Encoding: chunked",
        "",
    ] {
        let text = format!("HTTP/1.1 200 OK\r\nTransfer-Encoding: {te}\r\n\r\n");
        assert!(
            matches!(
                framing_of(&Method::GET, &text),
                Err(H1Error::TransferCoding(_))
            ),
            "{te:?}"
        );
    }
}

#[test]
fn framing_fields_that_contradict_are_errors() {
    assert_eq!(
        framing_of(
            &Method::GET,
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
        ),
        Err(H1Error::LengthAndTransferEncoding)
    );
    assert_eq!(
        framing_of(
            &Method::GET,
            "HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        ),
        Err(H1Error::TransferEncodingInHttp10)
    );
}

#[test]
fn content_length_is_plain_digits_and_one_value() {
    for (cl, expected) in [
        ("Content-Length: 10", Framing::Length(10)),
        ("Content-Length: 10, 10", Framing::Length(10)),
        (
            "Content-Length: 10\r\nContent-Length: 10",
            Framing::Length(10),
        ),
        ("Content-Length: 0", Framing::Empty),
        ("Content-Length: 007", Framing::Length(7)),
        (
            "Content-Length: 18446744073709551615",
            Framing::Length(u64::MAX),
        ),
    ] {
        let text = format!("HTTP/1.1 200 OK\r\n{cl}\r\n\r\n");
        assert_eq!(framing_of(&Method::GET, &text), Ok(expected), "{cl}");
    }
    for cl in [
        "10, 11",
        "10\r\nContent-Length: 11",
        "+10",
        "-1",
        "1 0",
        "0x10",
        "1e3",
        "",
        ",",
        "18446744073709551616",
        "10\r\nContent-Length: ",
    ] {
        let text = format!("HTTP/1.1 200 OK\r\nContent-Length: {cl}\r\n\r\n");
        assert!(
            matches!(
                framing_of(&Method::GET, &text),
                Err(H1Error::ContentLength(_))
            ),
            "{cl:?}"
        );
    }
    assert_eq!(
        framing_of(&Method::GET, "HTTP/1.1 200 OK\r\n\r\n"),
        Ok(Framing::Close)
    );
}

#[test]
fn a_connection_is_kept_only_for_a_well_framed_http_1_1_answer_without_close() {
    let keep = |text: &str| {
        let mut head = head_of(text);
        let framing = framing(&Method::GET, &mut head).unwrap();
        keep_alive(&head, framing)
    };
    assert!(keep("HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n"));
    assert!(keep(
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    ));
    assert!(keep(
        "HTTP/1.1 204 No Content\r\nConnection: keep-alive\r\n\r\n"
    ));
    assert!(!keep(
        "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nConnection: close\r\n\r\n"
    ));
    assert!(!keep(
        "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nConnection: keep-alive, Close\r\n\r\n"
    ));
    assert!(!keep("HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n"));
    assert!(!keep("HTTP/1.1 200 OK\r\n\r\n"));
}

/// A decoded body: its bytes, its trailers, what was left after its end.
type Decoding = (Vec<u8>, Option<HeaderMap>, Vec<u8>);

/// A chunked body of one-byte chunks (`a`), each after one of `size_lines`, ended by
/// the `last` chunk's size line and no trailers.
fn chunks_of_a(size_lines: impl IntoIterator<Item = String>, last: &str) -> Vec<u8> {
    let mut wire = Vec::new();
    for line in size_lines {
        wire.extend_from_slice(format!("{line}\r\na\r\n").as_bytes());
    }
    wire.extend_from_slice(format!("{last}\r\n\r\n").as_bytes());
    wire
}

/// Feeds `wire` to a decoder `step` bytes at a time; the body's bytes, its trailers,
/// and what was left after its end, or the first error.
fn decode_all(wire: &[u8], step: usize) -> Result<Decoding, H1Error> {
    let mut chunked = Chunked::default();
    let mut buf = BytesMut::new();
    let mut data = Vec::new();
    let mut trailers = None;
    let mut fed = 0;
    loop {
        match chunked.decode(&mut buf)? {
            Decoded::Data(d) => {
                assert!(!d.is_empty());
                data.extend_from_slice(&d);
            }
            Decoded::Trailers(t) => trailers = Some(t),
            Decoded::End => return Ok((data, trailers, buf.to_vec())),
            Decoded::NeedMore => {
                assert!(fed < wire.len(), "needs more than the wire has");
                let next = (fed + step).min(wire.len());
                buf.extend_from_slice(&wire[fed..next]);
                fed = next;
            }
        }
    }
}

#[test]
fn chunked_bodies_decode_whatever_the_reads() {
    let wire = b"5\r\nhello\r\n1;name=value\r\n \r\nA ; x\r\n0123456789\r\n0\r\n\r\nNEXT";
    for step in [1, 2, 3, 7, wire.len()] {
        let (data, trailers, rest) = decode_all(wire, step).unwrap();
        assert_eq!(data, b"hello 0123456789", "{step}");
        assert!(trailers.is_none());
        // What follows the body is left for the caller (who does not reuse the connection).
        assert!(b"NEXT".starts_with(&rest), "{step}: {rest:?}");
    }
}

#[test]
fn chunked_trailers_are_returned_once_the_body_ends() {
    let wire = b"2\r\nok\r\n0\r\nX-Checksum: abc\r\nX-Other: 1\r\n\r\n";
    for step in [1, 5, wire.len()] {
        let (data, trailers, rest) = decode_all(wire, step).unwrap();
        assert_eq!(data, b"ok");
        let trailers = trailers.unwrap();
        assert_eq!(trailers["x-checksum"], "abc");
        assert_eq!(trailers["x-other"], "1");
        assert!(rest.is_empty());
    }
}

#[test]
fn malformed_chunked_bodies_are_errors_however_they_arrive() {
    for (wire, expected) in [
        (&b"g\r\nx\r\n0\r\n\r\n"[..], H1Error::ChunkSize),
        (b"\r\n", H1Error::ChunkSize),
        (b"-5\r\nhello\r\n0\r\n\r\n", H1Error::ChunkSize),
        (b"5\nhello\r\n0\r\n\r\n", H1Error::ChunkSize),
        (b"5\rhello\r\n0\r\n\r\n", H1Error::ChunkSize),
        (b"5 5\r\nhello\r\n0\r\n\r\n", H1Error::ChunkSize),
        (b"5;a\x00\r\nhello\r\n0\r\n\r\n", H1Error::ChunkSize),
        (b"0x5\r\nhello\r\n0\r\n\r\n", H1Error::ChunkSize),
        (b"10000000000000000\r\n", H1Error::ChunkSize),
        (b"0\r\n\n\n", H1Error::Trailers),
        (b"0\r\n\nX: y\r\n\r\n", H1Error::Trailers),
        (b"5\r\nhelloX\r\n0\r\n\r\n", H1Error::ChunkEnd),
        (b"5\r\nhello\n0\r\n\r\n", H1Error::ChunkEnd),
        (b"5\r\nhello\r\r0\r\n\r\n", H1Error::ChunkEnd),
        (b"0\r\nno colon\r\n\r\n", H1Error::Trailers),
        (b"0\r\n\n", H1Error::Trailers),
        (b"0\r\nX: a\x01b\r\n\r\n", H1Error::Trailers),
    ] {
        for step in [1, 2, wire.len()] {
            let got = decode_all(wire, step);
            assert_eq!(
                got.as_ref().err(),
                Some(&expected),
                "{:?} by {step}: {got:?}",
                String::from_utf8_lossy(wire)
            );
        }
    }
}

#[test]
fn leading_zeros_do_not_count_against_the_size_digits() {
    let (data, _, _) = decode_all(b"00000000000000000005\r\nhello\r\n00000\r\n\r\n", 3).unwrap();
    assert_eq!(data, b"hello");
}

#[test]
fn chunk_extensions_are_bounded_over_the_whole_body() {
    let line = format!("1;{}", "x".repeat(1000));
    let wire = chunks_of_a(vec![line.clone(); 17], "0");
    assert_eq!(
        decode_all(&wire, 4096).unwrap_err(),
        H1Error::ChunkExtensions
    );
    // Sixteen such lines are within the bound.
    let wire = chunks_of_a(vec![line; 16], "0");
    assert_eq!(decode_all(&wire, 4096).unwrap().0, b"a".repeat(16));
}

#[test]
fn chunk_lines_and_trailers_are_bounded() {
    let mut wire = b"5;".to_vec();
    wire.extend(std::iter::repeat_n(b'x', MAX_CHUNK_LINE + 10));
    assert_eq!(
        decode_all(&wire, 1024).unwrap_err(),
        H1Error::ChunkLineTooLong
    );
    let mut wire = b"0\r\nx-big: ".to_vec();
    wire.extend(std::iter::repeat_n(b'x', MAX_TRAILER_BYTES + 10));
    assert_eq!(
        decode_all(&wire, 4096).unwrap_err(),
        H1Error::TrailersTooLarge
    );
    // The largest size a line can name is read (16 hex digits); its data would follow.
    let mut chunked = Chunked::default();
    let mut buf = BytesMut::from(&b"ffffffffffffffff\r\nab"[..]);
    assert_eq!(
        chunked.decode(&mut buf).unwrap(),
        Decoded::Data(Bytes::from_static(b"ab"))
    );
    assert_eq!(chunked.decode(&mut buf).unwrap(), Decoded::NeedMore);
}

/// Empty lines before a status line (httparse skips them) are taken a few at a time
/// only: each read that brought another would have the whole buffer parsed again, so
/// a paced upstream could make reading a head cost the square of its size.
#[test]
fn a_few_empty_lines_before_a_status_line_are_skipped_and_more_are_refused() {
    for lead in ["", "\r\n", "\n", "\r\n\n\r\n\r\n"] {
        let mut buf = BytesMut::from(
            format!("{lead}HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n").as_bytes(),
        );
        let head = parse_head(&mut buf, &mut 0).unwrap().unwrap();
        assert_eq!(head.status, StatusCode::OK, "{lead:?}");
        assert!(buf.is_empty());
    }
    // Read two bytes at a time: refused at the fifth empty line, not after 400 KB.
    let mut buf = BytesMut::new();
    let mut scanned = 0;
    let mut reads = 0;
    let refused = loop {
        buf.extend_from_slice(b"\r\n");
        reads += 1;
        match parse_head(&mut buf, &mut scanned) {
            Ok(None) => assert!(reads < 100, "still reading"),
            Ok(Some(_)) => panic!("a head"),
            Err(e) => break e,
        }
    };
    assert_eq!(refused, H1Error::Head(httparse::Error::NewLine));
    assert_eq!(reads, 5);
}

/// What pads chunk-size lines (leading zeros past sixteen digits, spaces before the
/// line's end or its extensions) counts against the body's extension budget as the
/// extensions do; a fixed width of sixteen digits costs nothing.
#[test]
fn padding_on_chunk_size_lines_counts_against_the_extension_budget() {
    let zeros = "0".repeat(MAX_CHUNK_LINE - 1);
    let spaces = " ".repeat(MAX_CHUNK_LINE - 1);
    let padded = (0..100).map(|i| {
        if i % 2 == 0 {
            format!("{zeros}1")
        } else {
            format!("1{spaces}")
        }
    });
    assert_eq!(
        decode_all(&chunks_of_a(padded, "0"), 4096).unwrap_err(),
        H1Error::ChunkExtensions
    );
    // Sizes written sixteen digits wide, for as long a body as any.
    let wide = chunks_of_a(
        vec!["0000000000000001".to_owned(); 5000],
        "0000000000000000",
    );
    assert_eq!(decode_all(&wide, 4096).unwrap().0.len(), 5000);
}

/// A `Content-Length` is relayed as the one number it stands for, whatever the
/// framing; one that is not a number is refused even where no body follows.
#[test]
fn the_content_length_relayed_is_the_one_number_it_stands_for() {
    let cases = [
        ("Content-Length: 10", "10"),
        ("Content-Length: 10, 10", "10"),
        ("Content-Length: 10\r\nContent-Length: 10", "10"),
        ("Content-Length: 007", "7"),
        ("Content-Length: 0", "0"),
        ("Content-Length: 00, 0", "0"),
    ];
    for method in [Method::GET, Method::HEAD] {
        for (fields, relayed) in cases {
            let mut head = head_of(&format!("HTTP/1.1 200 OK\r\n{fields}\r\n\r\n"));
            framing(&method, &mut head).unwrap();
            let lines: Vec<_> = head.headers.get_all(CONTENT_LENGTH).iter().collect();
            assert_eq!(lines, [relayed], "{method} {fields:?}");
        }
        for bad in [
            "Content-Length: 10, 11",
            "Content-Length: ten",
            "Content-Length: -1",
        ] {
            let mut head = head_of(&format!("HTTP/1.1 200 OK\r\n{bad}\r\n\r\n"));
            assert!(
                matches!(framing(&method, &mut head), Err(H1Error::ContentLength(_))),
                "{method} {bad:?}"
            );
        }
    }
    let mut head = head_of("HTTP/1.1 304 Not Modified\r\nContent-Length: 5, 5\r\n\r\n");
    assert_eq!(framing(&Method::GET, &mut head).unwrap(), Framing::Empty);
    assert_eq!(head.headers[CONTENT_LENGTH], "5");
}
