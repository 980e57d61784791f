//! HTTP/1.1 to an upstream, sans I/O: the request head the gateway writes, and the
//! response it reads back (its head, how its body is framed, the chunked coding).
//!
//! hyper's client gives every upstream connection a task of its own and hands each
//! request and response across channels to it; for a request without a body that is
//! most of what proxying costs beyond reading the client's request (see
//! `docs/benchmarks.md`). [`crate::direct`] drives this codec from the request's own
//! task instead. It is stricter than hyper where a lenient reading could let the gateway
//! and the upstream disagree on where a response ends, which on a reused connection
//! would hand one client's answer to the next (response splitting): a response with
//! both `Content-Length` and `Transfer-Encoding`, with a transfer coding other than
//! `chunked`, with `Transfer-Encoding` in HTTP/1.0, with `Content-Length` values that
//! differ or are not plain digits, a chunk-size line that is not hex digits and an
//! optional extension ended by CRLF, or a chunk not followed by CRLF, is an error (the
//! request is answered 502 and the connection closed), never a guess. So are more than
//! four empty lines before a status line, and more than [`MAX_CHUNK_EXTENSIONS`] of
//! chunk extensions and size-line padding in one body: reading must cost in proportion
//! to what arrives. A `Content-Length` that repeats its number (`42, 42`) is relayed as
//! that number once.

use std::mem::MaybeUninit;

use bytes::{Buf as _, Bytes, BytesMut};
use http::header::{CONNECTION, CONTENT_LENGTH, TRANSFER_ENCODING};
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Version};
use smallvec::SmallVec;

/// The most header fields a response head (or its trailers) may have: hyper's limit.
pub(crate) const MAX_HEADERS: usize = 100;
/// The longest response head read: hyper's default read buffer limit.
pub(crate) const MAX_HEAD_BYTES: usize = 8192 + 4096 * 100;
/// The longest chunk-size line, extensions included.
pub(crate) const MAX_CHUNK_LINE: usize = 4096;
/// The most bytes of chunk extensions in one body (hyper's limit too), with what pads
/// size lines (spaces before a `;`, leading zeros past sixteen digits): an upstream
/// cannot make the gateway read unbounded lines for each byte of data.
pub(crate) const MAX_CHUNK_EXTENSIONS: usize = 16 * 1024;
/// The longest trailer section.
pub(crate) const MAX_TRAILER_BYTES: usize = 64 * 1024;
/// Interim (1xx) responses skipped before the final one; more is an error.
pub(crate) const MAX_INTERIM: usize = 16;

/// Why an upstream's response could not be read. Each closes the connection.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum H1Error {
    #[error("the response head is larger than {MAX_HEAD_BYTES} bytes")]
    HeadTooLarge,
    #[error("malformed response head: {0}")]
    Head(httparse::Error),
    #[error("the response head has more than {MAX_HEADERS} fields")]
    TooManyHeaders,
    #[error("response header field {0:?} has an invalid name or value")]
    Field(String),
    #[error("more than {MAX_INTERIM} interim responses")]
    TooManyInterim,
    #[error("101 Switching Protocols to a request that asked for no upgrade")]
    UnaskedSwitch,
    #[error("Transfer-Encoding in an HTTP/1.0 response")]
    TransferEncodingInHttp10,
    #[error("both Content-Length and Transfer-Encoding")]
    LengthAndTransferEncoding,
    #[error("a transfer coding other than chunked: {0:?}")]
    TransferCoding(String),
    #[error("invalid Content-Length: {0:?}")]
    ContentLength(String),
    #[error("invalid chunk-size line")]
    ChunkSize,
    #[error("chunk-size line longer than {MAX_CHUNK_LINE} bytes")]
    ChunkLineTooLong,
    #[error("more than {MAX_CHUNK_EXTENSIONS} bytes of chunk extensions")]
    ChunkExtensions,
    #[error("chunk data not followed by CRLF")]
    ChunkEnd,
    #[error("malformed trailer section")]
    Trailers,
    #[error("trailer section larger than {MAX_TRAILER_BYTES} bytes")]
    TrailersTooLarge,
}

/// Appends `method path HTTP/1.1`, the fields and the empty line to `out`. Every part is
/// already valid for the wire: `http`'s types refuse CR, LF and NUL in a method, a path
/// or a field value, and field names are lowercase tokens.
pub(crate) fn encode_request(
    method: &Method,
    target: &str,
    headers: &HeaderMap,
    out: &mut Vec<u8>,
) {
    let fields: usize = headers
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len() + 4)
        .sum();
    out.reserve(method.as_str().len() + target.len() + 13 + fields + 2);
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in headers {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// A response head as read.
#[derive(Debug)]
pub(crate) struct Head {
    pub(crate) status: StatusCode,
    pub(crate) version: Version,
    /// The reason phrase when it is not the status code's usual one (hyper's server
    /// writes it back as it came, through `hyper::ext::ReasonPhrase`).
    pub(crate) reason: Option<Bytes>,
    pub(crate) headers: HeaderMap,
}

/// Whether `buf[from..]` (looking back two bytes before it) holds the empty line that
/// ends a head or a trailer section: a LF followed by LF or CRLF (httparse, like hyper,
/// takes a lone LF as a line end). Lets a caller that reads a head piece by piece look
/// at each byte once instead of parsing everything again after every read.
fn has_empty_line(buf: &[u8], from: usize) -> bool {
    let from = from.saturating_sub(2);
    buf.get(from..).is_some_and(|tail| {
        tail.iter()
            .enumerate()
            .any(|(i, &b)| b == b'\n' && matches!(&tail[i + 1..], [b'\n', ..] | [b'\r', b'\n', ..]))
    })
}

/// Reads one response head from the front of `buf` and removes it from there: `None`
/// while it is incomplete (read more and call again). `scanned` is how much of `buf`
/// earlier calls have looked at without finding the head's end (0 at first; the call
/// updates it, and sets it back to 0 when it takes a head).
///
/// # Errors
/// A malformed head, one larger than [`MAX_HEAD_BYTES`] (complete or not), more than
/// [`MAX_HEADERS`] fields, or a field value `http` refuses.
pub(crate) fn parse_head(buf: &mut BytesMut, scanned: &mut usize) -> Result<Option<Head>, H1Error> {
    // Empty lines before the status line (httparse skips them): a few at most, or each
    // read that brings another would have httparse parse the whole buffer again.
    let (mut lead, mut lines) = (0, 0);
    loop {
        match &buf[lead..] {
            [b'\r', b'\n', ..] => lead += 2,
            [b'\n', ..] => lead += 1,
            _ => break,
        }
        lines += 1;
        if lines > 4 {
            return Err(H1Error::Head(httparse::Error::NewLine));
        }
    }
    if !has_empty_line(buf, *scanned) {
        if buf.len() > MAX_HEAD_BYTES {
            return Err(H1Error::HeadTooLarge);
        }
        *scanned = buf.len();
        return Ok(None);
    }
    *scanned = 0;
    let mut fields = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut []);
    let parsed = httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut response,
        buf,
        &mut fields,
    );
    let len = match parsed {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD_BYTES => {
            return Err(H1Error::HeadTooLarge);
        }
        Ok(httparse::Status::Partial) => {
            *scanned = buf.len();
            return Ok(None);
        }
        Err(httparse::Error::TooManyHeaders) => return Err(H1Error::TooManyHeaders),
        Err(e) => return Err(H1Error::Head(e)),
    };
    if len > MAX_HEAD_BYTES {
        return Err(H1Error::HeadTooLarge);
    }
    let code = response
        .code
        .ok_or(H1Error::Head(httparse::Error::Status))?;
    let status = StatusCode::from_u16(code).map_err(|_| H1Error::Head(httparse::Error::Status))?;
    let version = match response.version {
        Some(1) => Version::HTTP_11,
        Some(0) => Version::HTTP_10,
        _ => return Err(H1Error::Head(httparse::Error::Version)),
    };
    // Field values are slices of the head's bytes, not copies: where each begins is its
    // offset from the start of the buffer (httparse returns slices of it; anything else
    // is refused rather than trusted).
    let start = buf.as_ptr() as usize;
    let offset = |s: &[u8]| {
        let at = (s.as_ptr() as usize).checked_sub(start)?;
        (at.checked_add(s.len())? <= len).then_some(at)
    };
    // A reason other than the status code's usual one is copied (httparse gives an
    // empty one, not a slice, for a missing or non-ASCII reason: relayed as none).
    let reason = response
        .reason
        .filter(|r| !r.is_empty() && Some(*r) != status.canonical_reason())
        .map(|r| Bytes::copy_from_slice(r.as_bytes()));
    let mut spans: SmallVec<[(usize, usize, usize, usize); 16]> = SmallVec::new();
    for h in response.headers.iter() {
        let field = || H1Error::Field(h.name.to_owned());
        let name_at = offset(h.name.as_bytes()).ok_or_else(field)?;
        let value_at = offset(h.value).ok_or_else(field)?;
        spans.push((name_at, h.name.len(), value_at, h.value.len()));
    }
    let head = buf.split_to(len).freeze();
    let mut headers = HeaderMap::with_capacity(spans.len());
    for (name_at, name_len, value_at, value_len) in spans {
        let name = &head[name_at..name_at + name_len];
        let field = || H1Error::Field(String::from_utf8_lossy(name).into_owned());
        let name = HeaderName::from_bytes(name).map_err(|_| field())?;
        let value = HeaderValue::from_maybe_shared(head.slice(value_at..value_at + value_len))
            .map_err(|_| field())?;
        headers.append(name, value);
    }
    Ok(Some(Head {
        status,
        version,
        reason,
        headers,
    }))
}

/// Reads the final (not 1xx) response head to a request from the front of a buffer
/// that fills piece by piece, with its body's framing: informational answers are
/// skipped (at most [`MAX_INTERIM`]), and a `101` nobody asked for is refused.
#[derive(Debug, Default)]
pub(crate) struct FinalHead {
    /// See [`parse_head`].
    scanned: usize,
    /// Informational answers skipped so far.
    interim: usize,
}

impl FinalHead {
    /// The final head to a request of `method` and its framing, taken from `buf`;
    /// `None` while it is incomplete (read more and call again).
    ///
    /// # Errors
    /// As [`parse_head`] and [`framing`]; [`H1Error::UnaskedSwitch`] and
    /// [`H1Error::TooManyInterim`].
    pub(crate) fn read(
        &mut self,
        buf: &mut BytesMut,
        method: &Method,
    ) -> Result<Option<(Head, Framing)>, H1Error> {
        while let Some(mut head) = parse_head(buf, &mut self.scanned)? {
            if !head.status.is_informational() {
                let framing = framing(method, &mut head)?;
                return Ok(Some((head, framing)));
            }
            if head.status == StatusCode::SWITCHING_PROTOCOLS {
                return Err(H1Error::UnaskedSwitch);
            }
            self.interim += 1;
            if self.interim > MAX_INTERIM {
                return Err(H1Error::TooManyInterim);
            }
        }
        Ok(None)
    }

    /// Whether an informational answer has been read: the upstream has answered.
    pub(crate) fn interim_seen(&self) -> bool {
        self.interim > 0
    }
}

/// How a response's body ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    /// No body (a HEAD request, 204, 304).
    Empty,
    /// Exactly this many bytes.
    Length(u64),
    /// The chunked coding.
    Chunked,
    /// Everything until the upstream closes the connection.
    Close,
}

/// How the body of a final (not 1xx) response to a request of `method` is framed
/// (RFC 9112 §6.3), strictly: see the module's documentation. A `Content-Length` is
/// checked whatever the framing (a HEAD's or a 304's gives the size of a body not
/// sent), and relayed as the one number it stands for: `42, 42` or two lines of `42`,
/// which a recipient may accept (RFC 9110 §8.6), become one `42`, since the client's
/// side (an HTTP/2 client above all) may refuse them.
///
/// # Errors
/// The framing headers contradict each other or are not well formed.
pub(crate) fn framing(method: &Method, head: &mut Head) -> Result<Framing, H1Error> {
    let length = canonical_content_length(&mut head.headers)?;
    if method == Method::HEAD
        || head.status == StatusCode::NO_CONTENT
        || head.status == StatusCode::NOT_MODIFIED
    {
        return Ok(Framing::Empty);
    }
    let headers = &head.headers;
    if headers.contains_key(TRANSFER_ENCODING) {
        if head.version == Version::HTTP_10 {
            return Err(H1Error::TransferEncodingInHttp10);
        }
        if length.is_some() {
            return Err(H1Error::LengthAndTransferEncoding);
        }
        let mut codings = list(headers, &TRANSFER_ENCODING);
        return match (codings.next(), codings.next()) {
            (Some(Ok(c)), None) if c.eq_ignore_ascii_case("chunked") => Ok(Framing::Chunked),
            _ => Err(H1Error::TransferCoding(joined(headers, &TRANSFER_ENCODING))),
        };
    }
    Ok(match length {
        Some(0) => Framing::Empty,
        Some(n) => Framing::Length(n),
        None => Framing::Close,
    })
}

/// What [`framing`] refuses and rewrites in a response head, for an answer that hyper's
/// client read (requests with a body, HTTP/2 and https upstreams), before its hop-by-hop
/// fields go. A `Content-Length` beside a `Transfer-Encoding` is refused, as [`framing`]
/// refuses it: hyper's client reads the coding and pays the length no heed, and once the
/// coding is removed as hop-by-hop the length would cut the relayed body short. A length
/// is relayed as one number ([`canonical_content_length`]).
///
/// # Errors
/// Both fields, or a length that is not well formed.
pub(crate) fn relayed_framing(headers: &mut HeaderMap) -> Result<(), H1Error> {
    if headers.contains_key(TRANSFER_ENCODING) && headers.contains_key(CONTENT_LENGTH) {
        return Err(H1Error::LengthAndTransferEncoding);
    }
    canonical_content_length(headers).map(drop)
}

/// The number every `Content-Length` line of a response gives, if there is one, with
/// those lines replaced by that number written once when they say it otherwise (`42, 42`,
/// two lines, `042`). Every response the gateway relays passes here, whichever client
/// read it from the upstream, so the client sees one form of the length.
///
/// # Errors
/// As [`content_length`].
fn canonical_content_length(headers: &mut HeaderMap) -> Result<Option<u64>, H1Error> {
    let length = content_length(headers)?;
    if let Some(n) = length {
        // One line of digits without leading zeros is already `n` as it is written.
        let mut lines = headers.get_all(CONTENT_LENGTH).iter();
        let canonical = match (lines.next(), lines.next()) {
            (Some(v), None) => {
                let b = v.as_bytes();
                b.iter().all(u8::is_ascii_digit) && (b.len() == 1 || b[0] != b'0')
            }
            _ => false,
        };
        if !canonical {
            headers.insert(CONTENT_LENGTH, HeaderValue::from(n));
        }
    }
    Ok(length)
}

/// The number every `Content-Length` line gives, if there is one. Not a list in its
/// grammar, but a recipient may meet `42, 42` (RFC 9110 §8.6): every element of every
/// line must be the same plain number, an empty one included.
///
/// # Errors
/// An element that is not a plain number, or two that differ.
fn content_length(headers: &HeaderMap) -> Result<Option<u64>, H1Error> {
    let mut length = None;
    for line in headers.get_all(CONTENT_LENGTH) {
        let invalid = || H1Error::ContentLength(joined(headers, &CONTENT_LENGTH));
        let line = line.to_str().map_err(|_| invalid())?;
        for element in line.split(',').map(|e| e.trim_matches([' ', '\t'])) {
            if element.is_empty() || !element.bytes().all(|b| b.is_ascii_digit()) {
                return Err(invalid());
            }
            let n: u64 = element.parse().map_err(|_| invalid())?;
            if length.is_some_and(|l| l != n) {
                return Err(invalid());
            }
            length = Some(n);
        }
    }
    Ok(length)
}

/// Whether the connection may carry another request once this response's body has been
/// read to its end: HTTP/1.1 (an HTTP/1.0 upstream's `Connection: keep-alive` is not
/// taken up), not `Connection: close`, a body whose end the framing tells, and no body
/// announced that is not to come.
pub(crate) fn keep_alive(head: &Head, framing: Framing) -> bool {
    head.version == Version::HTTP_11
        && framing != Framing::Close
        && !announces_unsent_body(head, framing)
        && !list(&head.headers, &CONNECTION)
            // A line that is not visible ASCII is taken as saying close.
            .any(|t| t.is_err() || t.is_ok_and(|t| t.eq_ignore_ascii_case("close")))
}

/// A response without a body (to a HEAD, a 204, a 304) whose head describes one: a
/// `Content-Length` other than `0` (already made one number by [`framing`]) or a
/// `Transfer-Encoding`. Some upstreams send that body anyway, to a HEAD above all, and
/// when it comes a moment after the head, nothing on the connection shows it before the
/// next request is written: it would be read as that request's answer. So such a
/// connection is not reused.
fn announces_unsent_body(head: &Head, framing: Framing) -> bool {
    framing == Framing::Empty
        && (head.headers.contains_key(TRANSFER_ENCODING)
            || head
                .headers
                .get(CONTENT_LENGTH)
                .is_some_and(|v| v.as_bytes() != b"0"))
}

/// The elements of a comma-separated list field, over all its lines, each trimmed of
/// spaces and tabs; empty elements are skipped (RFC 9110 §5.6.1). `Err` for a line
/// that is not visible ASCII.
fn list<'a>(
    headers: &'a HeaderMap,
    name: &HeaderName,
) -> impl Iterator<Item = Result<&'a str, ()>> + 'a {
    headers.get_all(name).into_iter().flat_map(|v| {
        let parts: Box<dyn Iterator<Item = Result<&'a str, ()>> + 'a> = match v.to_str() {
            Ok(s) => Box::new(
                s.split(',')
                    .map(|e| e.trim_matches([' ', '\t']))
                    .filter(|e| !e.is_empty())
                    .map(Ok),
            ),
            Err(_) => Box::new(std::iter::once(Err(()))),
        };
        parts
    })
}

/// A field's lines joined, for an error message.
fn joined(headers: &HeaderMap, name: &HeaderName) -> String {
    headers
        .get_all(name)
        .iter()
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .collect::<Vec<_>>()
        .join(", ")
}

/// What [`Chunked::decode`] found at the front of the buffer.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Decoded {
    /// Body bytes.
    Data(Bytes),
    /// The trailer section (not empty), after the last chunk.
    Trailers(HeaderMap),
    /// The body has ended: nothing of it is left in the buffer.
    End,
    /// Read more.
    NeedMore,
}

/// The chunked transfer coding's decoder (RFC 9112 §7.1).
#[derive(Debug, Default)]
pub(crate) struct Chunked {
    state: ChunkState,
    /// How much of the buffer has been looked at for the end of a chunk-size line or of
    /// the trailers without finding it (each byte is looked at once).
    scanned: usize,
    /// The chunk extensions' bytes so far, over the whole body.
    extensions: usize,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    /// Before a chunk-size line.
    #[default]
    Size,
    /// Inside a chunk's data, this much left.
    Data(u64),
    /// After a chunk's data, before its CRLF.
    DataEnd,
    /// After the last chunk: trailer fields or the final CRLF.
    Trailers,
    /// The body has ended.
    Done,
}

impl Chunked {
    /// Decodes what it can from the front of `buf`, removing it from there.
    ///
    /// # Errors
    /// The coding is malformed, or a line or the trailer section is too long.
    pub(crate) fn decode(&mut self, buf: &mut BytesMut) -> Result<Decoded, H1Error> {
        loop {
            match self.state {
                ChunkState::Size => {
                    let Some(end) = find_crlf(buf, self.scanned, MAX_CHUNK_LINE) else {
                        if buf.len() >= MAX_CHUNK_LINE + 2 {
                            return Err(H1Error::ChunkLineTooLong);
                        }
                        // A lone CR or LF in what is there already is never mended by
                        // more (what earlier calls checked is not checked again, but the
                        // CR they let pass as possibly the start of a CRLF is).
                        check_line(&buf[self.scanned.saturating_sub(1)..], true)?;
                        self.scanned = buf.len();
                        return Ok(Decoded::NeedMore);
                    };
                    self.scanned = 0;
                    let (size, extensions) = chunk_size(&buf[..end])?;
                    self.extensions += extensions;
                    if self.extensions > MAX_CHUNK_EXTENSIONS {
                        return Err(H1Error::ChunkExtensions);
                    }
                    buf.advance(end + 2);
                    self.state = if size == 0 {
                        ChunkState::Trailers
                    } else {
                        ChunkState::Data(size)
                    };
                }
                ChunkState::Data(left) => {
                    if buf.is_empty() {
                        return Ok(Decoded::NeedMore);
                    }
                    let take = usize::try_from(left).map_or(buf.len(), |l| l.min(buf.len()));
                    let data = buf.split_to(take).freeze();
                    let left = left - take as u64;
                    self.state = if left == 0 {
                        ChunkState::DataEnd
                    } else {
                        ChunkState::Data(left)
                    };
                    return Ok(Decoded::Data(data));
                }
                ChunkState::DataEnd => {
                    if buf.len() < 2 {
                        if buf.first().is_some_and(|&b| b != b'\r') {
                            return Err(H1Error::ChunkEnd);
                        }
                        return Ok(Decoded::NeedMore);
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err(H1Error::ChunkEnd);
                    }
                    buf.advance(2);
                    self.state = ChunkState::Size;
                }
                ChunkState::Trailers => return self.trailers(buf),
                ChunkState::Done => return Ok(Decoded::End),
            }
        }
    }

    fn trailers(&mut self, buf: &mut BytesMut) -> Result<Decoded, H1Error> {
        if buf.starts_with(b"\r\n") {
            buf.advance(2);
            self.state = ChunkState::Done;
            return Ok(Decoded::End);
        }
        // A lone LF where the trailers or the final CRLF begin.
        if buf.first() == Some(&b'\n') {
            return Err(H1Error::Trailers);
        }
        if buf.len() < 2 {
            return Ok(Decoded::NeedMore);
        }
        if !has_empty_line(buf, self.scanned) {
            if buf.len() > MAX_TRAILER_BYTES {
                return Err(H1Error::TrailersTooLarge);
            }
            self.scanned = buf.len();
            return Ok(Decoded::NeedMore);
        }
        self.scanned = 0;
        let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let (len, fields) = match httparse::parse_headers(buf, &mut fields) {
            Ok(httparse::Status::Complete(done)) => done,
            Ok(httparse::Status::Partial) if buf.len() > MAX_TRAILER_BYTES => {
                return Err(H1Error::TrailersTooLarge);
            }
            Ok(httparse::Status::Partial) => {
                self.scanned = buf.len();
                return Ok(Decoded::NeedMore);
            }
            Err(_) => return Err(H1Error::Trailers),
        };
        if len > MAX_TRAILER_BYTES {
            return Err(H1Error::TrailersTooLarge);
        }
        let mut trailers = HeaderMap::with_capacity(fields.len());
        for field in fields {
            let name =
                HeaderName::from_bytes(field.name.as_bytes()).map_err(|_| H1Error::Trailers)?;
            let value = HeaderValue::from_bytes(field.value).map_err(|_| H1Error::Trailers)?;
            trailers.append(name, value);
        }
        buf.advance(len);
        self.state = ChunkState::Done;
        Ok(Decoded::Trailers(trailers))
    }
}

/// Where the first CRLF in the first `limit + 2` bytes of `buf` begins, looking from
/// one byte before `from` (what earlier calls looked at holds none).
fn find_crlf(buf: &[u8], from: usize, limit: usize) -> Option<usize> {
    let from = from.saturating_sub(1);
    let window = buf.get(from..buf.len().min(limit + 2))?;
    window
        .windows(2)
        .position(|w| w == b"\r\n")
        .map(|at| at + from)
}

/// Refuses a chunk-size line (without its CRLF; `partial` when its end has not arrived
/// yet) holding a control character other than a tab: a lone CR or LF among them.
fn check_line(line: &[u8], partial: bool) -> Result<(), H1Error> {
    let body = if partial && line.last() == Some(&b'\r') {
        &line[..line.len() - 1]
    } else {
        line
    };
    if body.iter().any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f) {
        return Err(H1Error::ChunkSize);
    }
    Ok(())
}

/// The size on a chunk-size line and how much else the line holds (counted against
/// [`MAX_CHUNK_EXTENSIONS`] over the body): hex digits (at most
/// 16 once leading zeros are set aside, so that the size fits 64 bits), then nothing, or
/// optional spaces and tabs and a `;` that starts the extensions (which are ignored, as
/// RFC 9112 lets a recipient ignore extensions it does not understand).
fn chunk_size(line: &[u8]) -> Result<(u64, usize), H1Error> {
    check_line(line, false)?;
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    let zeros = line.iter().take_while(|&&b| b == b'0').count().min(digits);
    if digits == 0 || digits - zeros > 16 {
        return Err(H1Error::ChunkSize);
    }
    let rest = &line[digits..];
    let rest = &rest[rest
        .iter()
        .take_while(|&&b| b == b' ' || b == b'\t')
        .count()..];
    if !rest.is_empty() && rest[0] != b';' {
        return Err(H1Error::ChunkSize);
    }
    // What the line holds besides its size: the extensions, the spaces before them, and
    // any digits past sixteen (leading zeros; a fixed width up to sixteen is free).
    let padding = line.len() - digits.min(16);
    let significant = &line[zeros..digits];
    if significant.is_empty() {
        return Ok((0, padding));
    }
    let text = std::str::from_utf8(significant).map_err(|_| H1Error::ChunkSize)?;
    let size = u64::from_str_radix(text, 16).map_err(|_| H1Error::ChunkSize)?;
    Ok((size, padding))
}

#[cfg(test)]
mod tests;

/// The fuzzing harness of the codec, reached through `dpop_gateway::internal::fuzzing`.
pub(crate) mod fuzzing {
    use bytes::BytesMut;
    use http::{HeaderMap, Method, StatusCode};

    use super::{Chunked, Decoded, FinalHead, Framing, H1Error, keep_alive};

    /// What reading one response from a connection's bytes came to.
    #[derive(Debug, PartialEq, Eq)]
    enum Read {
        /// A whole response.
        Response(Box<Whole>),
        /// The bytes ended before the response did.
        Truncated,
        /// The codec refused the bytes.
        Refused,
    }

    /// A response read whole: the final status, its fields, the body, the trailers,
    /// whether the connection may be kept, and what was left after it.
    #[derive(Debug, PartialEq, Eq)]
    struct Whole {
        status: StatusCode,
        headers: HeaderMap,
        body: Vec<u8>,
        trailers: Option<HeaderMap>,
        keep_alive: bool,
        rest: Vec<u8>,
    }

    /// Reads one response to `method` from `data` handed over `piece` bytes at a time,
    /// as reads from a socket would: the head (interim responses skipped), its framing,
    /// then the body, which for close-delimited framing is everything to the end.
    fn read(method: &Method, data: &[u8], piece: usize) -> Read {
        let mut pieces = data.chunks(piece);
        let mut buf = BytesMut::new();
        let mut more =
            |buf: &mut BytesMut| pieces.next().map(|p| buf.extend_from_slice(p)).is_some();
        let refused = |_: H1Error| Read::Refused;
        let mut final_head = FinalHead::default();
        let (head, framing) = loop {
            match final_head.read(&mut buf, method) {
                Err(e) => return refused(e),
                Ok(Some(found)) => break found,
                Ok(None) if more(&mut buf) => {}
                Ok(None) => return Read::Truncated,
            }
        };
        let mut body = Vec::new();
        let mut trailers = None;
        match framing {
            Framing::Empty => {}
            Framing::Length(n) => {
                while (body.len() as u64) < n {
                    if buf.is_empty() && !more(&mut buf) {
                        return Read::Truncated;
                    }
                    let want = usize::try_from(n - body.len() as u64).unwrap_or(usize::MAX);
                    let take = want.min(buf.len());
                    body.extend_from_slice(&buf.split_to(take));
                }
            }
            Framing::Chunked => {
                let mut chunked = Chunked::default();
                loop {
                    match chunked.decode(&mut buf) {
                        Ok(Decoded::Data(d)) => body.extend_from_slice(&d),
                        Ok(Decoded::Trailers(t)) => {
                            trailers = Some(t);
                            break;
                        }
                        Ok(Decoded::End) => break,
                        Ok(Decoded::NeedMore) if more(&mut buf) => {}
                        Ok(Decoded::NeedMore) => return Read::Truncated,
                        Err(e) => return refused(e),
                    }
                }
            }
            Framing::Close => {
                while more(&mut buf) {}
                body.extend_from_slice(&buf.split());
            }
        }
        while more(&mut buf) {}
        Read::Response(Box::new(Whole {
            keep_alive: keep_alive(&head, framing),
            status: head.status,
            headers: head.headers,
            body,
            trailers,
            rest: buf.to_vec(),
        }))
    }

    /// Reads `data[1..]` as an upstream's answer to a GET (or a HEAD, by the low bit of
    /// `data[0]`), whole and in pieces of 1 to 16 bytes (the rest of `data[0]`). Neither
    /// may panic; a response read one way must be read exactly so the other way; and
    /// bytes refused one way must not be a response the other way. (Which error, or
    /// whether refused or truncated, may differ: a piece can show a fault early.)
    pub(crate) fn response(data: &[u8]) {
        let _ = compare(data);
    }

    /// [`response`], returning what the whole read came to.
    fn compare(data: &[u8]) -> Option<Read> {
        let (&choice, data) = data.split_first()?;
        let method = if choice & 1 == 0 {
            Method::GET
        } else {
            Method::HEAD
        };
        let piece = usize::from(choice >> 1) % 16 + 1;
        let whole = read(&method, data, data.len().max(1));
        let split = read(&method, data, piece);
        match (&whole, &split) {
            (Read::Response(_), _) | (_, Read::Response(_)) => assert_eq!(
                whole, split,
                "whole and in pieces of {piece}, the same bytes read differently"
            ),
            _ => {}
        }
        Some(whole)
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        fn seed(name: &str) -> Vec<u8> {
            let dir = concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../../fuzz/corpus/h1_response/"
            );
            std::fs::read(format!("{dir}{name}")).unwrap()
        }

        /// The harness is not vacuous: well-formed seeds are read as responses (in every
        /// piece size, both methods), the others as refused or truncated.
        #[test]
        fn the_seeds_read_as_their_names_say() {
            let body_of = |name: &str, choice: u8| {
                let mut data = seed(name);
                data[0] = choice;
                match compare(&data) {
                    Some(Read::Response(whole)) => Ok((
                        whole.body,
                        whole.trailers.map(|t| t.len()),
                        whole.keep_alive,
                        whole.rest,
                    )),
                    Some(Read::Truncated) => Err("truncated"),
                    Some(Read::Refused) => Err("refused"),
                    None => Err("empty"),
                }
            };
            for piece in 0..16u8 {
                let get = piece << 1;
                let (body, trailers, keep, rest) = body_of("chunked-with-trailers", get).unwrap();
                assert_eq!(
                    (&body[..], trailers, keep, rest.len()),
                    (&b"hello world"[..], Some(1), true, 0)
                );
                let (body, _, keep, rest) = body_of("chunked-then-next-response", get).unwrap();
                assert_eq!(
                    (&body[..], keep, &rest[..]),
                    (&b"ok"[..], true, &b"HTTP/1.1 204 No Content\r\n\r\n"[..])
                );
                let (body, _, keep, _) = body_of("close-delimited-http10", get).unwrap();
                assert_eq!((&body[..], keep), (&b"until the end"[..], false));
                let (body, _, _, _) = body_of("head-answer-with-length", get | 1).unwrap();
                assert!(body.is_empty());
                assert_eq!(body_of("truncated-body", get), Err("truncated"));
                for refused in [
                    "length-and-transfer-encoding",
                    "differing-lengths",
                    "gzip-chunked",
                    "chunk-data-without-crlf",
                    "unasked-switch",
                ] {
                    assert_eq!(body_of(refused, get), Err("refused"), "{refused}");
                }
            }
        }
    }
}
