//! A minimal HTTP/1.1 client for tests: one request on a fresh connection, the whole
//! response read into memory. Enough to talk to the servers here and to a gateway
//! without pulling a full client library into every test.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use http_body_util::{BodyExt as _, Full};
use hyper::body::Bytes;
use hyper::header::{HOST, HeaderName, HeaderValue};
use hyper::{Method, Request, Uri};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// How long [`http_request`] waits for the whole exchange.
pub const HTTP_TIMEOUT: Duration = Duration::from_secs(30);

/// A response read to the end.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpResponse {
    /// The status code.
    pub status: u16,
    /// The headers in order; names lower-case, values decoded lossily as UTF-8.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

/// The first value of header `name` (any case) in a list of lower-cased header lines.
pub(crate) fn first_header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// Every value of header `name` (any case) in a list of lower-cased header lines.
pub(crate) fn all_headers<'a>(headers: &'a [(String, String)], name: &str) -> Vec<&'a str> {
    headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
        .collect()
}

impl HttpResponse {
    /// The first value of header `name` (any case).
    #[must_use]
    pub fn header(&self, name: &str) -> Option<&str> {
        first_header(&self.headers, name)
    }

    /// Every value of header `name` (any case), in order.
    #[must_use]
    pub fn header_values(&self, name: &str) -> Vec<&str> {
        all_headers(&self.headers, name)
    }

    /// The body as text (invalid UTF-8 replaced).
    #[must_use]
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body parsed as JSON.
    ///
    /// # Errors
    /// When the body is not JSON.
    pub fn json(&self) -> serde_json::Result<Value> {
        serde_json::from_slice(&self.body)
    }
}

fn invalid(what: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, what.to_string())
}

/// `GET url`.
///
/// # Errors
/// As [`http_request`].
pub async fn http_get(url: &str) -> io::Result<HttpResponse> {
    http_request("GET", url, &[], b"").await
}

/// Sends one request to an `http://` URL on a new connection and reads the response.
/// `Host` is set from the URL unless `headers` has one; a non-empty body gets a
/// `Content-Length`.
///
/// # Errors
/// `InvalidInput` for a bad method, URL or header; otherwise the connection's error,
/// or `TimedOut` after [`HTTP_TIMEOUT`].
pub async fn http_request(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> io::Result<HttpResponse> {
    tokio::time::timeout(HTTP_TIMEOUT, exchange(method, url, headers, body))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, format!("{method} {url}")))?
}

async fn exchange(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> io::Result<HttpResponse> {
    let uri: Uri = url.parse().map_err(invalid)?;
    if uri.scheme_str() != Some("http") {
        return Err(invalid(format!("{url}: only http:// is supported")));
    }
    let authority = uri
        .authority()
        .ok_or_else(|| invalid(format!("{url}: no host")))?
        .clone();
    let port = authority.port_u16().unwrap_or(80);
    let stream = tokio::net::TcpStream::connect((authority.host(), port)).await?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(io::Error::other)?;
    tokio::spawn(async move {
        let _ = connection.await;
    });

    let target = uri.path_and_query().map_or("/", |pq| pq.as_str());
    let mut request = Request::new(Full::new(Bytes::copy_from_slice(body)));
    *request.method_mut() = Method::from_bytes(method.as_bytes()).map_err(invalid)?;
    *request.uri_mut() = target.parse().map_err(invalid)?;
    let h = request.headers_mut();
    for (name, value) in headers {
        h.append(
            HeaderName::from_bytes(name.as_bytes()).map_err(invalid)?,
            HeaderValue::from_str(value).map_err(invalid)?,
        );
    }
    if !h.contains_key(HOST) {
        h.insert(
            HOST,
            HeaderValue::from_str(authority.as_str()).map_err(invalid)?,
        );
    }
    let response = sender
        .send_request(request)
        .await
        .map_err(io::Error::other)?;
    let status = response.status().as_u16();
    let headers = response
        .headers()
        .iter()
        .map(|(n, v)| {
            (
                n.as_str().to_owned(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(io::Error::other)?
        .to_bytes()
        .to_vec();
    Ok(HttpResponse {
        status,
        headers,
        body,
    })
}

/// A response read off the wire by [`raw_exchange`]: its status and everything the server
/// sent, head and body, as text.
#[derive(Clone, Debug)]
pub struct RawResponse {
    /// The status code.
    pub status: u16,
    /// The whole response (lossy UTF-8).
    pub text: String,
}

impl RawResponse {
    /// The first value of header `name` (case-insensitive), trimmed.
    #[must_use]
    pub fn header(&self, name: &str) -> Option<&str> {
        let head = self.text.split("\r\n\r\n").next()?;
        head.lines().skip(1).find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

/// Sends `METHOD TARGET HTTP/1.1` with `Host: ADDR`, `Connection: close` and `headers`,
/// byte for byte (no URL parsing: for hostile request targets), on a new connection, and
/// reads until the server closes or 20 s pass.
///
/// # Panics
/// When the connection fails or the reply has no status line.
pub async fn raw_exchange(
    addr: SocketAddr,
    method: &[u8],
    target: &[u8],
    headers: &[(&str, &str)],
) -> RawResponse {
    let host = addr.to_string();
    let mut lines: Vec<(&str, &[u8])> = vec![("Host", host.as_bytes()), ("Connection", b"close")];
    lines.extend(headers.iter().map(|(n, v)| (*n, v.as_bytes())));
    // The server may close without reading everything; what it answered is what counts.
    let (out, _ended) = send_raw(addr, &raw_request(method, target, &lines)).await;
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            panic!(
                "no status for {:?}: {text:?}",
                String::from_utf8_lossy(target)
            )
        });
    RawResponse { status, text }
}

/// Sends `METHOD TARGET HTTP/1.1`, then `headers` byte for byte and `Connection: close`
/// (no `Host` unless `headers` has one: every header as the test wrote it), on a new
/// connection, and reads the response to the end, parsed: the body is what follows the
/// head (for servers that answer with `Content-Length`, never chunked).
///
/// # Panics
/// When the connection fails, the server does not close it within 20 s, or the reply is
/// not an HTTP response.
pub async fn raw_exchange_exact(
    addr: SocketAddr,
    method: &[u8],
    target: &[u8],
    headers: &[(&str, &[u8])],
) -> HttpResponse {
    let mut lines = headers.to_vec();
    lines.push(("Connection", b"close"));
    let (out, ended) = send_raw(addr, &raw_request(method, target, &lines)).await;
    if let Err(e) = ended {
        panic!("{e}");
    }
    let split = out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no response head: {:?}", String::from_utf8_lossy(&out)));
    let head = String::from_utf8_lossy(&out[..split]).into_owned();
    let body = out[split + 4..].to_vec();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {head:?}"));
    let headers = lines
        .filter_map(|l| {
            let (n, v) = l.split_once(':')?;
            Some((n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        })
        .collect();
    HttpResponse {
        status,
        headers,
        body,
    }
}

/// `METHOD TARGET HTTP/1.1`, each of `headers` as `name: value` (values byte for byte),
/// and the blank line.
fn raw_request(method: &[u8], target: &[u8], headers: &[(&str, &[u8])]) -> Vec<u8> {
    let mut request = Vec::new();
    request.extend_from_slice(method);
    request.push(b' ');
    request.extend_from_slice(target);
    request.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in headers {
        request.extend_from_slice(name.as_bytes());
        request.extend_from_slice(b": ");
        request.extend_from_slice(value);
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"\r\n");
    request
}

/// Sends `request` on a new connection to `addr` and reads until the server closes or
/// 20 s pass: what it sent, and how the reading ended (an error when the server did not
/// close in time or the connection failed).
///
/// # Panics
/// When the connection or the write fails.
pub async fn send_raw(addr: SocketAddr, request: &[u8]) -> (Vec<u8>, Result<(), String>) {
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect to the server");
    stream.write_all(request).await.expect("send the request");
    let mut out = Vec::new();
    let ended =
        match tokio::time::timeout(Duration::from_secs(20), stream.read_to_end(&mut out)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(format!("reading the response: {e}")),
            Err(_) => Err("the server did not close the connection within 20 s".to_owned()),
        };
    (out, ended)
}
