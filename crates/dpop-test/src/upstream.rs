//! [`TestUpstream`]: the service behind the gateway in end-to-end tests. It echoes what
//! it received, so a test can see exactly which headers the gateway forwarded, added or
//! stripped, and it records the last requests for assertions.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use http_body_util::BodyExt as _;
use hyper::body::{Body, Bytes, Frame, Incoming, SizeHint};
use hyper::header::{CONTENT_TYPE, HeaderValue, LOCATION};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use serde_json::{Map, Value, json};

use crate::server::{ConnectionOptions, ServerHandle, serve, serve_connections};
use crate::tls::{CertFiles, TestCa};

/// How many requests a [`TestUpstream`] remembers unless told otherwise.
pub const DEFAULT_RECORD_CAPACITY: usize = 100;

/// `/big` without `bytes=`: 1 MiB.
const DEFAULT_BIG_BYTES: u64 = 1 << 20;

/// One request as the upstream received it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordedRequest {
    /// The method, e.g. `GET`.
    pub method: String,
    /// The path with the query, e.g. `/items?page=2`.
    pub path: String,
    /// The headers in the order received; names lower-case, values decoded as UTF-8
    /// with invalid bytes replaced.
    pub headers: Vec<(String, String)>,
    /// The request body.
    pub body: Vec<u8>,
    /// The HTTP version, `HTTP/1.1` or `HTTP/2.0`.
    pub version: String,
    /// The client certificate presented on the connection (DER), when the upstream
    /// asks for one ([`TestUpstreamBuilder::require_client_cert`]).
    pub client_cert: Option<Vec<u8>>,
}

impl RecordedRequest {
    /// The first value of header `name` (any case).
    #[must_use]
    pub fn header(&self, name: &str) -> Option<&str> {
        crate::client::first_header(&self.headers, name)
    }

    /// Every value of header `name` (any case), in order.
    #[must_use]
    pub fn header_values(&self, name: &str) -> Vec<&str> {
        crate::client::all_headers(&self.headers, name)
    }
}

/// Configures a [`TestUpstream`] before it starts.
#[derive(Clone, Debug)]
pub struct TestUpstreamBuilder {
    listen: SocketAddr,
    capacity: usize,
    tls: Option<CertFiles>,
    client_ca: Option<Vec<u8>>,
    http2_only: bool,
}

impl Default for TestUpstreamBuilder {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            capacity: DEFAULT_RECORD_CAPACITY,
            tls: None,
            client_ca: None,
            http2_only: false,
        }
    }
}

impl TestUpstreamBuilder {
    /// The address to listen on. Defaults to `127.0.0.1:0` (a free port).
    #[must_use]
    pub fn listen(mut self, addr: SocketAddr) -> Self {
        self.listen = addr;
        self
    }

    /// How many of the latest requests [`TestUpstream::requests`] keeps. Defaults to
    /// [`DEFAULT_RECORD_CAPACITY`].
    #[must_use]
    pub fn capacity(mut self, n: usize) -> Self {
        self.capacity = n;
        self
    }

    /// Serves https with `cert` (from a [`TestCa`]), ALPN `http/1.1`, or `h2` with
    /// [`Self::http2_only`]. Defaults to plain http.
    #[must_use]
    pub fn tls(mut self, cert: &CertFiles) -> Self {
        self.tls = Some(cert.clone());
        self
    }

    /// With [`Self::tls`]: refuses the handshake unless the client presents a
    /// certificate issued by `ca`. Defaults to not asking for one.
    #[must_use]
    pub fn require_client_cert(mut self, ca: &TestCa) -> Self {
        self.client_ca = Some(ca.cert_der().to_vec());
        self
    }

    /// Speaks HTTP/2 only: ALPN `h2` with [`Self::tls`], prior knowledge (h2c) without.
    /// Defaults to HTTP/1.1 only.
    #[must_use]
    pub fn http2_only(mut self) -> Self {
        self.http2_only = true;
        self
    }

    /// Starts serving on the current Tokio runtime.
    ///
    /// # Errors
    /// When the address cannot be bound, or the TLS settings are unusable.
    pub async fn start(self) -> io::Result<TestUpstream> {
        let state = Arc::new(UpstreamState {
            capacity: self.capacity,
            log: Mutex::new(VecDeque::new()),
            count: AtomicU64::new(0),
        });
        let s = Arc::clone(&state);
        if self.tls.is_none() && !self.http2_only {
            let service = service_fn(move |req| handle(Arc::clone(&s), None, req));
            let server = serve(self.listen, service).await?;
            return Ok(TestUpstream {
                state,
                server,
                scheme: "http",
            });
        }
        let tls = match &self.tls {
            Some(cert) => Some(Arc::new(
                server_tls(cert, self.client_ca.as_deref(), self.http2_only)
                    .map_err(io::Error::other)?,
            )),
            None => None,
        };
        let scheme = if tls.is_some() { "https" } else { "http" };
        let options = ConnectionOptions {
            tls,
            http2_only: self.http2_only,
        };
        let listener = tokio::net::TcpListener::bind(self.listen).await?;
        let server = serve_connections(listener, options, move |cert: Option<Vec<u8>>| {
            let s = Arc::clone(&s);
            service_fn(move |req| handle(Arc::clone(&s), cert.clone(), req))
        })?;
        Ok(TestUpstream {
            state,
            server,
            scheme,
        })
    }
}

struct UpstreamState {
    capacity: usize,
    log: Mutex<VecDeque<RecordedRequest>>,
    count: AtomicU64,
}

impl UpstreamState {
    fn log(&self) -> MutexGuard<'_, VecDeque<RecordedRequest>> {
        self.log.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// An HTTP/1.1 upstream on loopback that answers every request with 200 and a JSON
/// echo `{"method", "path", "headers": {name: [values]}, "body_bytes"}`. Stops when
/// dropped. The builder makes it serve https, ask for client certificates, or speak
/// HTTP/2 only.
///
/// Special paths, matched on the *last* path segments so they work behind a gateway
/// route prefix (`/api/slow` as well as `/slow`):
/// - `.../big?bytes=N`: a streamed body of N bytes (`x`), in 64 KiB frames, instead of
///   the echo (1 MiB when `bytes` is missing);
/// - `.../slow?ms=N`: waits N ms, then echoes;
/// - `.../status/NNN`: echoes with status NNN;
/// - `.../redirect/NNN?to=URL`: echoes with status NNN and `Location: URL` (everything
///   after `to=`, as sent).
pub struct TestUpstream {
    state: Arc<UpstreamState>,
    server: ServerHandle,
    scheme: &'static str,
}

/// The rustls server side of a TLS upstream: `cert`, client certificates from `client_ca`
/// required when given, and one ALPN protocol.
fn server_tls(
    cert: &CertFiles,
    client_ca: Option<&[u8]>,
    http2_only: bool,
) -> Result<rustls::ServerConfig, rustls::Error> {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()?;
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(CertificateDer::from(ca.to_vec()))?;
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .map_err(|e| rustls::Error::General(e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let key = PrivateKeyDer::from_pem_slice(cert.key_pem.as_bytes())
        .map_err(|e| rustls::Error::General(e.to_string()))?;
    let mut config =
        builder.with_single_cert(vec![CertificateDer::from(cert.cert_der.clone())], key)?;
    config.alpn_protocols = vec![if http2_only {
        b"h2".to_vec()
    } else {
        b"http/1.1".to_vec()
    }];
    Ok(config)
}

impl std::fmt::Debug for TestUpstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestUpstream")
            .field("addr", &self.server.addr())
            .field("requests", &self.request_count())
            .finish_non_exhaustive()
    }
}

impl TestUpstream {
    /// Starts an upstream on a free loopback port that keeps the last
    /// [`DEFAULT_RECORD_CAPACITY`] requests.
    ///
    /// # Errors
    /// When no loopback port can be bound.
    pub async fn start() -> io::Result<Self> {
        Self::builder().start().await
    }

    /// A builder for a fixed address or another record capacity.
    #[must_use]
    pub fn builder() -> TestUpstreamBuilder {
        TestUpstreamBuilder::default()
    }

    /// `http://127.0.0.1:PORT`, or `https://` with TLS (no trailing slash).
    #[must_use]
    pub fn url(&self) -> String {
        format!("{}://{}", self.scheme, self.server.addr())
    }

    /// The listening address.
    #[must_use]
    pub fn addr(&self) -> SocketAddr {
        self.server.addr()
    }

    /// The latest requests, oldest first (at most the configured capacity).
    #[must_use]
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.state.log().iter().cloned().collect()
    }

    /// The latest request, if any.
    #[must_use]
    pub fn last_request(&self) -> Option<RecordedRequest> {
        self.state.log().back().cloned()
    }

    /// How many requests arrived since the start (not limited by the capacity).
    #[must_use]
    pub fn request_count(&self) -> u64 {
        self.state.count.load(Ordering::SeqCst)
    }

    /// Forgets the recorded requests (the count goes on).
    pub fn clear(&self) {
        self.state.log().clear();
    }
}

async fn handle(
    state: Arc<UpstreamState>,
    client_cert: Option<Vec<u8>>,
    req: Request<Incoming>,
) -> Result<Response<UpstreamBody>, Infallible> {
    let (parts, body) = req.into_parts();
    // A body that fails mid-way (client gone) is recorded as far as it arrived.
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes().to_vec())
        .unwrap_or_default();
    let path = parts
        .uri
        .path_and_query()
        .map_or_else(|| parts.uri.path().to_owned(), |pq| pq.as_str().to_owned());
    let recorded = RecordedRequest {
        method: parts.method.as_str().to_owned(),
        path,
        headers: parts
            .headers
            .iter()
            .map(|(n, v)| {
                (
                    n.as_str().to_owned(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body,
        version: format!("{:?}", parts.version),
        client_cert,
    };
    state.count.fetch_add(1, Ordering::SeqCst);
    {
        let mut log = state.log();
        log.push_back(recorded.clone());
        while log.len() > state.capacity {
            log.pop_front();
        }
    }

    let segments: Vec<&str> = parts.uri.path().split('/').collect();
    let query = parts.uri.query().unwrap_or("");
    let mut status = StatusCode::OK;
    let mut location = None;
    match segments.as_slice() {
        [.., "big"] => {
            let bytes = query_u64(query, "bytes").unwrap_or(DEFAULT_BIG_BYTES);
            let mut response = Response::new(UpstreamBody::Repeat { remaining: bytes });
            response.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            );
            return Ok(response);
        }
        [.., "slow"] => {
            let ms = query_u64(query, "ms").unwrap_or(0);
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        [.., "status", code] => {
            if let Some(s) = code
                .parse::<u16>()
                .ok()
                .and_then(|c| StatusCode::from_u16(c).ok())
            {
                status = s;
            }
        }
        [.., "redirect", code] => {
            if let Some(s) = code
                .parse::<u16>()
                .ok()
                .and_then(|c| StatusCode::from_u16(c).ok())
            {
                status = s;
            }
            location = query
                .split_once("to=")
                .and_then(|(_, to)| HeaderValue::from_str(to).ok());
        }
        _ => {}
    }
    let mut response = Response::new(UpstreamBody::Full(Some(Bytes::from(
        echo(&recorded).to_string(),
    ))));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if let Some(to) = location {
        response.headers_mut().insert(LOCATION, to);
    }
    Ok(response)
}

fn echo(r: &RecordedRequest) -> Value {
    let mut headers = Map::new();
    for (name, value) in &r.headers {
        match headers.get_mut(name) {
            Some(Value::Array(values)) => values.push(value.as_str().into()),
            _ => {
                headers.insert(name.clone(), json!([value]));
            }
        }
    }
    json!({
        "method": r.method,
        "path": r.path,
        "headers": headers,
        "body_bytes": r.body.len(),
    })
}

fn query_u64(query: &str, name: &str) -> Option<u64> {
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(k, _)| *k == name)
        .and_then(|(_, v)| v.parse().ok())
}

/// The upstream's response body: a buffer, or `x` bytes produced frame by frame.
enum UpstreamBody {
    Full(Option<Bytes>),
    Repeat { remaining: u64 },
}

/// 64 KiB of `x`, sliced (not copied) into each frame of a `/big` body.
fn chunk() -> Bytes {
    static CHUNK: [u8; 64 * 1024] = [b'x'; 64 * 1024];
    Bytes::from_static(&CHUNK)
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let frame = match self.get_mut() {
            Self::Full(data) => data.take().map(Frame::data),
            Self::Repeat { remaining } => {
                if *remaining == 0 {
                    None
                } else {
                    let mut data = chunk();
                    let n = usize::try_from(*remaining).map_or(data.len(), |r| r.min(data.len()));
                    data.truncate(n);
                    *remaining -= n as u64;
                    Some(Frame::data(data))
                }
            }
        };
        Poll::Ready(frame.map(Ok))
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Full(data) => data.is_none(),
            Self::Repeat { remaining } => *remaining == 0,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Full(data) => SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64)),
            Self::Repeat { remaining } => SizeHint::with_exact(*remaining),
        }
    }
}
