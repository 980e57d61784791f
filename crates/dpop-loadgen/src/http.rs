//! The target of a run and the connections to it: HTTP/1.1 or HTTP/2, over TCP or TLS.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context as _, bail, ensure};
use dpop_core::{PrivateKey, ProofBuilder, SystemRandomSource};
use http_body_util::{BodyExt as _, Full};
use hyper::body::{Bytes, Incoming};
use hyper::client::conn::{http1, http2};
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HOST, HeaderName, HeaderValue};
use hyper::{Method, Request, Response, Uri};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::TlsConnector;

use crate::tls::{H2, HTTP11, client_config};

/// The media type of `--form` bodies.
pub(crate) const FORM_TYPE: &str = "application/x-www-form-urlencoded";

/// Where and how to send requests.
#[derive(Debug)]
pub(crate) struct Target {
    pub(crate) addr: SocketAddr,
    pub(crate) host: HeaderValue,
    /// The request target: origin-form (path and query) for HTTP/1.1, the absolute URL
    /// for HTTP/2 (its scheme and authority become `:scheme` and `:authority`).
    pub(crate) path: Uri,
    pub(crate) method: Method,
    pub(crate) authorization: Option<HeaderValue>,
    /// A form body sent with every request.
    pub(crate) form: Option<Bytes>,
    /// For https:// URLs.
    tls: Option<Tls>,
    http2: bool,
}

struct Tls {
    connector: TlsConnector,
    name: ServerName<'static>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls").field("name", &self.name).finish()
    }
}

/// How to reach a URL beyond what it says itself.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Transport<'a> {
    /// The CA certificates trusted for https:// URLs (the only roots).
    pub(crate) ca_file: Option<&'a Path>,
    /// HTTP/2: ALPN h2 over TLS, prior knowledge over plain TCP.
    pub(crate) http2: bool,
}

pub(crate) async fn parse_target(
    url: &str,
    method: &str,
    transport: Transport<'_>,
) -> anyhow::Result<Target> {
    let uri: Uri = url.parse().with_context(|| format!("{url}: not a URL"))?;
    let authority = uri.authority().context("the URL has no host")?;
    let (default_port, tls) = match (uri.scheme_str(), transport.ca_file) {
        (Some("http"), None) => (80, None),
        (Some("http"), Some(_)) => bail!("--ca-file is for https:// URLs"),
        (Some("https"), Some(ca_file)) => {
            let alpn = if transport.http2 { H2 } else { HTTP11 };
            let connector = TlsConnector::from(Arc::new(client_config(ca_file, alpn)?));
            let host = authority.host();
            let host = host
                .strip_prefix('[')
                .and_then(|h| h.strip_suffix(']'))
                .unwrap_or(host);
            let name = ServerName::try_from(host.to_owned())
                .with_context(|| format!("{host}: not a TLS server name"))?;
            (443, Some(Tls { connector, name }))
        }
        (Some("https"), None) => bail!("https:// URLs need --ca-file (the CA to trust)"),
        _ => bail!("{url}: only http:// and https:// URLs are supported"),
    };
    let port = authority.port_u16().unwrap_or(default_port);
    let addr = tokio::net::lookup_host((authority.host(), port))
        .await
        .with_context(|| format!("resolving {authority}"))?
        .next()
        .with_context(|| format!("{authority} has no address"))?;
    let path = uri.path_and_query().map_or("/", |pq| pq.as_str());
    let path = if transport.http2 {
        Uri::builder()
            .scheme(uri.scheme_str().unwrap_or_default())
            .authority(authority.as_str())
            .path_and_query(path)
            .build()?
    } else {
        path.parse()?
    };
    Ok(Target {
        addr,
        host: HeaderValue::from_str(authority.as_str())?,
        path,
        method: Method::from_bytes(method.as_bytes()).context("--method is not a method")?,
        authorization: None,
        form: None,
        tls,
        http2: transport.http2,
    })
}

impl Target {
    /// A request to the target with its fixed headers (`Host` with HTTP/1.1; HTTP/2
    /// carries the authority in the URL), the access token and the form, if any.
    pub(crate) fn request(&self) -> Request<Full<Bytes>> {
        let mut request = Request::new(Full::new(self.form.clone().unwrap_or_default()));
        *request.method_mut() = self.method.clone();
        *request.uri_mut() = self.path.clone();
        let headers = request.headers_mut();
        if !self.http2 {
            headers.insert(HOST, self.host.clone());
        }
        if let Some(auth) = &self.authorization {
            headers.insert(AUTHORIZATION, auth.clone());
        }
        if self.form.is_some() {
            headers.insert(CONTENT_TYPE, HeaderValue::from_static(FORM_TYPE));
        }
        request
    }
}

/// One connection: an HTTP/1.1 one carries a request at a time; an HTTP/2 one is used
/// the same way here (one stream at a time).
#[derive(Debug)]
pub(crate) enum Sender {
    Http1(http1::SendRequest<Full<Bytes>>),
    Http2(http2::SendRequest<Full<Bytes>>),
}

impl Sender {
    pub(crate) fn is_closed(&self) -> bool {
        match self {
            Self::Http1(s) => s.is_closed(),
            Self::Http2(s) => s.is_closed(),
        }
    }

    pub(crate) async fn ready(&mut self) -> hyper::Result<()> {
        match self {
            Self::Http1(s) => s.ready().await,
            Self::Http2(s) => s.ready().await,
        }
    }

    pub(crate) async fn send_request(
        &mut self,
        request: Request<Full<Bytes>>,
    ) -> hyper::Result<Response<Incoming>> {
        match self {
            Self::Http1(s) => s.send_request(request).await,
            Self::Http2(s) => s.send_request(request).await,
        }
    }
}

/// Opens a connection to `target`: TCP (`TCP_NODELAY`), TLS for https://, then the
/// HTTP handshake. With HTTP/2 over TLS, a server that does not pick h2 by ALPN is an
/// error, not a silent fallback.
pub(crate) async fn connect(target: &Target) -> anyhow::Result<Sender> {
    let stream = tokio::net::TcpStream::connect(target.addr).await?;
    stream.set_nodelay(true)?;
    let Some(tls) = &target.tls else {
        return handshake(TokioIo::new(stream), target.http2).await;
    };
    let stream = tls.connector.connect(tls.name.clone(), stream).await?;
    if target.http2 {
        let alpn = stream.get_ref().1.alpn_protocol();
        ensure!(
            alpn == Some(H2),
            "the server did not select h2 by ALPN (selected {:?})",
            alpn.map(String::from_utf8_lossy)
        );
    }
    handshake(TokioIo::new(stream), target.http2).await
}

async fn handshake<T>(io: TokioIo<T>, http2: bool) -> anyhow::Result<Sender>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    if http2 {
        let (sender, connection) = http2::handshake(TokioExecutor::new(), io).await?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(Sender::Http2(sender))
    } else {
        let (sender, connection) = http1::handshake(io).await?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(Sender::Http1(sender))
    }
}

/// One token request with a proof from `builder`: its status, `DPoP-Nonce` and body.
async fn token_request(
    target: &Target,
    builder: &ProofBuilder,
    key: &PrivateKey,
) -> anyhow::Result<(hyper::StatusCode, Option<String>, Bytes)> {
    let mut sender = connect(target).await?;
    let proof = builder.sign(key, &SystemRandomSource, dpop_test::now())?;
    let mut request = target.request();
    request.headers_mut().insert(
        HeaderName::from_static("dpop"),
        HeaderValue::from_str(&proof)?,
    );
    let response = sender.send_request(request).await?;
    let status = response.status();
    let nonce = response
        .headers()
        .get("dpop-nonce")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = response.into_body().collect().await?.to_bytes();
    Ok((status, nonce, body))
}

/// Before the run: learns the server's nonce (a server without nonces needs none) and
/// gets one token, so the server has verified the client's credentials once (and
/// remembers them) before anything is measured. Returns the nonce to put in proofs.
pub(crate) async fn fetch_nonce(
    target: &Target,
    builder: &ProofBuilder,
    key: &PrivateKey,
) -> anyhow::Result<Option<String>> {
    let (status, nonce, body) = token_request(target, builder, key).await?;
    let nonce = if status.is_success() {
        None
    } else {
        ensure!(
            nonce.is_some(),
            "the token endpoint answered {status} without a nonce: {}",
            String::from_utf8_lossy(&body)
        );
        nonce
    };
    if let Some(n) = &nonce {
        let with_nonce = builder.clone().nonce(n)?;
        let (status, _, body) = token_request(target, &with_nonce, key).await?;
        ensure!(
            status.is_success(),
            "the token endpoint refused a request with its own nonce ({status}): {}",
            String::from_utf8_lossy(&body)
        );
    }
    Ok(nonce)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn targets() {
        let plain = Transport::default();
        let t = parse_target("http://127.0.0.1:8080/a/b?c=d", "POST", plain)
            .await
            .unwrap();
        assert_eq!(t.addr, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(t.host, "127.0.0.1:8080");
        assert_eq!(t.path, "/a/b?c=d");
        assert_eq!(t.method, Method::POST);
        assert!(t.tls.is_none());
        let r = t.request();
        assert_eq!(r.headers()[HOST], "127.0.0.1:8080");
        assert_eq!(r.uri(), "/a/b?c=d");
        let t = parse_target("http://127.0.0.1", "GET", plain)
            .await
            .unwrap();
        assert_eq!((t.addr.port(), t.path.to_string()), (80, "/".to_owned()));
        assert!(
            parse_target("http://127.0.0.1/", "G T", plain)
                .await
                .is_err()
        );
        assert!(
            parse_target("ftp://127.0.0.1/", "GET", plain)
                .await
                .is_err()
        );

        // HTTP/2: the absolute URL, no Host header.
        let h2 = Transport {
            http2: true,
            ..plain
        };
        let t = parse_target("http://127.0.0.1:8080/a?b", "GET", h2)
            .await
            .unwrap();
        let r = t.request();
        assert_eq!(r.uri(), "http://127.0.0.1:8080/a?b");
        assert!(r.headers().get(HOST).is_none());

        // https:// needs a CA to trust, and --ca-file only goes with https://.
        let e = parse_target("https://127.0.0.1/", "GET", plain)
            .await
            .unwrap_err();
        assert!(e.to_string().contains("--ca-file"), "{e}");
        let ca = dpop_test::TestCa::new("targets");
        let ca_file = ca.ca_file();
        let tls = Transport {
            ca_file: Some(&ca_file),
            http2: false,
        };
        let e = parse_target("http://127.0.0.1/", "GET", tls)
            .await
            .unwrap_err();
        assert!(e.to_string().contains("https://"), "{e}");
        let t = parse_target("https://localhost:8443/x", "GET", tls)
            .await
            .unwrap();
        assert_eq!(t.addr.port(), 8443);
        assert_eq!(
            t.tls.as_ref().map(|t| t.name.to_str().into_owned()),
            Some("localhost".to_owned())
        );
        let t = parse_target("https://127.0.0.1/", "GET", tls)
            .await
            .unwrap();
        assert_eq!(t.addr.port(), 443);
        // A file without certificates is refused.
        let empty = ca.dir().join("empty.pem");
        std::fs::write(&empty, "").unwrap();
        let bad = Transport {
            ca_file: Some(&empty),
            http2: false,
        };
        assert!(
            parse_target("https://127.0.0.1/", "GET", bad)
                .await
                .is_err()
        );
    }
}
