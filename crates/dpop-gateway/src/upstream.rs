//! Connections to upstreams: plain TCP or TLS (rustls with aws-lc-rs, TLS 1.2 and 1.3),
//! HTTP/1.1 or HTTP/2, with one pooled client per distinct connection setting, and the
//! start-up probe that finds a certificate that does not verify or an upstream without
//! HTTP/2 before the first request does.
//!
//! The connector is the gateway's own rather than hyper-rustls's `HttpsConnector`: it
//! sets ALPN `http/1.1` for HTTP/1.1 upstreams, refuses a connection on which an HTTP/2
//! upstream did not agree to `h2`, and tells a refused connection (unreachable) from a
//! failed handshake (misconfigured) with a typed error. hyper-rustls gives the stream.

use std::error::Error as StdError;
use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::Uri;
use hyper_rustls::MaybeHttpsStream;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, RootCertStore};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tower::Service;

use crate::config::{UpstreamConfig, UpstreamTls};
use crate::error::GatewayError;
use crate::pem;

/// How long a connection attempt may take (TCP connect, then the TLS handshake each).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a connection to an upstream could not be made.
#[derive(Debug)]
pub(crate) enum ConnectError {
    /// No TCP connection (refused, unreachable, timed out, name not resolved).
    Connect(Box<dyn StdError + Send + Sync>),
    /// The TLS handshake failed or timed out.
    Handshake(io::Error),
    /// An HTTP/2 upstream did not agree to `h2` in ALPN.
    NoHttp2 {
        /// What it chose instead, if anything.
        alpn: Option<String>,
    },
    /// The request's scheme is not the one this connector is for (an internal mix-up:
    /// never send plain text to an https upstream, or TLS to an http one).
    Scheme,
}

impl fmt::Display for ConnectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Connect(_) => f.write_str("cannot connect"),
            Self::Handshake(_) => f.write_str("TLS handshake failed"),
            Self::NoHttp2 { alpn: Some(p) } => write!(
                f,
                "the upstream does not speak HTTP/2: it chose {p:?} instead of h2 in ALPN"
            ),
            Self::NoHttp2 { alpn: None } => {
                f.write_str("the upstream does not speak HTTP/2: it chose no protocol (ALPN h2)")
            }
            Self::Scheme => f.write_str("scheme does not match the connector"),
        }
    }
}

impl StdError for ConnectError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        match self {
            Self::Connect(e) => Some(e.as_ref()),
            Self::Handshake(e) => Some(e),
            Self::NoHttp2 { .. } | Self::Scheme => None,
        }
    }
}

impl ConnectError {
    /// The rustls error behind a failed handshake, if the peer or the checks refused it
    /// (rather than the connection breaking).
    fn tls_error(&self) -> Option<&rustls::Error> {
        match self {
            Self::Handshake(e) => e.get_ref()?.downcast_ref::<rustls::Error>(),
            _ => None,
        }
    }
}

/// What a connector does over TCP.
#[derive(Clone)]
struct Tls {
    config: Arc<ClientConfig>,
    /// Fixed name to verify and send as SNI; otherwise the URL's host.
    server_name: Option<ServerName<'static>>,
}

/// Connects to upstreams of one setting: TCP, then TLS for `https`, checking that an
/// HTTP/2 upstream agreed to `h2`.
#[derive(Clone)]
pub(crate) struct UpstreamConnector {
    tcp: HttpConnector,
    tls: Option<Tls>,
    http2: bool,
}

impl fmt::Debug for UpstreamConnector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UpstreamConnector")
            .field("tls", &self.tls.is_some())
            .field("http2", &self.http2)
            .finish_non_exhaustive()
    }
}

/// A connection to an upstream: TCP, or TLS over TCP.
pub(crate) type Stream = MaybeHttpsStream<TokioIo<TcpStream>>;

impl Service<Uri> for UpstreamConnector {
    type Response = Stream;
    type Error = ConnectError;
    type Future = Pin<Box<dyn Future<Output = Result<Stream, ConnectError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // HttpConnector is always ready.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, dst: Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move { this.connect(dst).await })
    }
}

impl UpstreamConnector {
    /// Whether this connector is for HTTP/2 upstreams.
    pub(crate) fn http2(&self) -> bool {
        self.http2
    }

    /// A connection to `dst`: TCP, then TLS for `https` (checking ALPN `h2` for an HTTP/2
    /// upstream).
    pub(crate) async fn connect(mut self, dst: Uri) -> Result<Stream, ConnectError> {
        let https = dst.scheme_str() == Some("https");
        if https != self.tls.is_some() {
            return Err(ConnectError::Scheme);
        }
        let server_name = match &self.tls {
            Some(Tls {
                server_name: Some(name),
                ..
            }) => Some(name.clone()),
            Some(_) => {
                let host = dst.host().unwrap_or_default();
                let host = host.trim_start_matches('[').trim_end_matches(']');
                Some(ServerName::try_from(host.to_owned()).map_err(|e| {
                    ConnectError::Handshake(io::Error::new(io::ErrorKind::InvalidInput, e))
                })?)
            }
            None => None,
        };
        let tcp = self
            .tcp
            .call(dst)
            .await
            .map_err(|e| ConnectError::Connect(e.into()))?;
        let (Some(tls), Some(name)) = (self.tls, server_name) else {
            return Ok(MaybeHttpsStream::Http(tcp));
        };
        // `MaybeHttpsStream` holds TLS over hyper-util's adapter, back to tokio's traits.
        let handshake = TlsConnector::from(tls.config).connect(name, TokioIo::new(tcp));
        let stream = match tokio::time::timeout(CONNECT_TIMEOUT, handshake).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err(ConnectError::Handshake(e)),
            Err(_) => {
                return Err(ConnectError::Handshake(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "no answer in time",
                )));
            }
        };
        let alpn = stream.get_ref().1.alpn_protocol();
        if self.http2 && alpn != Some(b"h2") {
            return Err(ConnectError::NoHttp2 {
                alpn: alpn.map(|p| String::from_utf8_lossy(p).into_owned()),
            });
        }
        Ok(MaybeHttpsStream::Https(TokioIo::new(stream)))
    }
}

/// The system's trusted roots, loaded once for every https upstream without `ca_file`.
#[derive(Default)]
pub(crate) struct SystemRoots(Option<Arc<RootCertStore>>);

impl SystemRoots {
    /// The roots rustls-native-certs finds (`SSL_CERT_FILE` / `SSL_CERT_DIR` if set, the
    /// platform's store otherwise). None at all is an error rather than an empty store:
    /// every https upstream would fail with "unknown issuer", far from the cause.
    fn get(&mut self, upstream: &UpstreamConfig) -> Result<Arc<RootCertStore>, GatewayError> {
        if let Some(roots) = &self.0 {
            return Ok(Arc::clone(roots));
        }
        let found = rustls_native_certs::load_native_certs();
        let mut roots = RootCertStore::empty();
        let (added, _ignored) = roots.add_parsable_certificates(found.certs);
        for e in &found.errors {
            tracing::warn!(target: "dpop::gateway", error = %e, "some system root certificates could not be read");
        }
        if added == 0 {
            let why = found
                .errors
                .first()
                .map_or_else(|| "none found".to_owned(), ToString::to_string);
            return Err(GatewayError::Config(format!(
                "upstream {}: no trusted root certificates on this system ({why}); install the system CA bundle (ca-certificates) or set ca_file",
                upstream.url
            )));
        }
        let roots = Arc::new(roots);
        self.0 = Some(Arc::clone(&roots));
        Ok(roots)
    }
}

/// A file problem (`why` names the file) under the setting that names the file.
fn file_error(setting: &str, why: impl fmt::Display) -> GatewayError {
    GatewayError::Config(format!("{setting} {why}"))
}

/// The rustls client configuration of an https upstream.
fn tls_config(
    upstream: &UpstreamConfig,
    tls: &UpstreamTls,
    roots: &mut SystemRoots,
) -> Result<ClientConfig, GatewayError> {
    let roots = match &tls.ca_file {
        Some(path) => Arc::new(pem::roots(path).map_err(|e| file_error("ca_file", e))?),
        None => roots.get(upstream)?,
    };
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| GatewayError::Config(format!("upstream TLS: {e}")))?
        .with_root_certificates(roots);
    let mut config = match &tls.client_cert {
        None => builder.with_no_client_auth(),
        Some(files) => {
            let chain = pem::read(&files.cert_file, false)
                .and_then(|text| pem::certificates(&text, &files.cert_file))
                .map_err(|e| file_error("client_cert_file", e))?;
            let key = pem::read(&files.key_file, true)
                .and_then(|text| pem::private_key(&text, &files.key_file))
                .map_err(|e| file_error("client_key_file", e))?;
            builder.with_client_auth_cert(chain, key).map_err(|e| {
                let why = match e {
                    rustls::Error::InconsistentKeys(_) => format!(
                        "the key does not match the certificate in client_cert_file {}",
                        files.cert_file.display()
                    ),
                    other => other.to_string(),
                };
                file_error(
                    "client_key_file",
                    format!("{}: {why}", files.key_file.display()),
                )
            })?
        }
    };
    config.alpn_protocols = vec![if upstream.http2 {
        b"h2".to_vec()
    } else {
        b"http/1.1".to_vec()
    }];
    Ok(config)
}

/// A connector for upstreams with `upstream`'s connection setting.
pub(crate) fn connector(
    upstream: &UpstreamConfig,
    roots: &mut SystemRoots,
) -> Result<UpstreamConnector, GatewayError> {
    let mut tcp = HttpConnector::new();
    tcp.set_nodelay(true);
    tcp.set_connect_timeout(Some(CONNECT_TIMEOUT));
    // The scheme is checked here, in `connect`.
    tcp.enforce_http(false);
    let tls = match &upstream.tls {
        None => None,
        Some(tls) => Some(Tls {
            config: Arc::new(tls_config(upstream, tls, roots)?),
            server_name: match &tls.server_name {
                None => None,
                Some(name) => Some(ServerName::try_from(name.clone()).map_err(|_| {
                    GatewayError::Config(format!(
                        "upstream {}: server_name {name:?} is not a DNS name or IP address",
                        upstream.url
                    ))
                })?),
            },
        }),
    };
    Ok(UpstreamConnector {
        tcp,
        tls,
        http2: upstream.http2,
    })
}

/// The HTTP/2 connection preface (RFC 9113 §3.4) and an empty SETTINGS frame.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";

/// Whether the server on `stream` answers the HTTP/2 preface with a SETTINGS frame, as
/// an h2c (prior knowledge) server must; an HTTP/1.1 server answers 400 or closes.
async fn speaks_h2c(stream: &mut TcpStream) -> io::Result<bool> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    stream.write_all(H2_PREFACE).await?;
    let mut head = [0u8; 9];
    match stream.read_exact(&mut head).await {
        // Frame type 4 (SETTINGS) on stream 0.
        Ok(_) => Ok(head[3] == 4 && head[5..9] == [0, 0, 0, 0]),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(false),
        Err(e) => Err(e),
    }
}

/// Connects once to an https or HTTP/2 upstream (TCP, TLS handshake, ALPN; for h2c the
/// preface). A certificate that does not verify, a refused handshake or an upstream
/// without HTTP/2 is an error naming the upstream; an unreachable one only a warning,
/// since upstreams restart independently of the gateway.
pub(crate) async fn probe(
    upstream: &UpstreamConfig,
    connector: &UpstreamConnector,
) -> Result<(), GatewayError> {
    if upstream.tls.is_none() && !upstream.http2 {
        return Ok(());
    }
    let refused = |why: String| GatewayError::Upstream(format!("upstream {upstream}: {why}"));
    let unreachable = |why: &str| {
        tracing::warn!(target: "dpop::gateway", upstream = %upstream, error = why, "upstream not reachable at start-up; requests to it get 502 until it is");
    };
    let attempt = connector.clone().connect(upstream.url.clone());
    let stream = match tokio::time::timeout(CONNECT_TIMEOUT, attempt).await {
        Err(_) => {
            unreachable("no connection in time");
            return Ok(());
        }
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            return match &e {
                ConnectError::Connect(_) => {
                    unreachable(&dpop_core::failure::error_chain(&e));
                    Ok(())
                }
                ConnectError::NoHttp2 { .. } => Err(refused(e.to_string())),
                _ => match e.tls_error() {
                    Some(rustls::Error::NoApplicationProtocol)
                    | Some(rustls::Error::AlertReceived(
                        rustls::AlertDescription::NoApplicationProtocol,
                    )) if upstream.http2 => Err(refused(
                        "the upstream does not speak HTTP/2: it refused h2 in ALPN".to_owned(),
                    )),
                    Some(_) => Err(refused(dpop_core::failure::error_chain(&e))),
                    // The connection broke during the handshake: an upstream going
                    // down or restarting, not a refusal.
                    None => {
                        unreachable(&dpop_core::failure::error_chain(&e));
                        Ok(())
                    }
                },
            };
        }
    };
    if let (MaybeHttpsStream::Http(tcp), true) = (stream, upstream.http2) {
        let mut tcp = tcp.into_inner();
        match tokio::time::timeout(CONNECT_TIMEOUT, speaks_h2c(&mut tcp)).await {
            Ok(Ok(true)) => {}
            Ok(Ok(false)) => {
                return Err(refused(
                    "the upstream does not speak HTTP/2: it did not answer the h2c (prior knowledge) preface with SETTINGS".to_owned(),
                ));
            }
            Ok(Err(e)) => unreachable(&e.to_string()),
            Err(_) => unreachable("no answer to the HTTP/2 preface in time"),
        }
    }
    Ok(())
}
