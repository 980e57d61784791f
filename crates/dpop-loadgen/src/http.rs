//! The target of a run and the HTTP/1.1 connections to it.

use std::net::SocketAddr;

use anyhow::{Context as _, ensure};
use dpop_core::{PrivateKey, ProofBuilder, SystemRandomSource};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Bytes;
use hyper::client::conn::http1::SendRequest;
use hyper::header::{CONTENT_TYPE, HOST, HeaderName, HeaderValue};
use hyper::{Method, Request, Uri};
use hyper_util::rt::TokioIo;

/// The media type of `--form` bodies.
pub(crate) const FORM_TYPE: &str = "application/x-www-form-urlencoded";

/// Where and how to send requests.
#[derive(Debug)]
pub(crate) struct Target {
    pub(crate) addr: SocketAddr,
    pub(crate) host: HeaderValue,
    /// Origin-form request target (path and query).
    pub(crate) path: Uri,
    pub(crate) method: Method,
    pub(crate) authorization: Option<HeaderValue>,
    /// A form body sent with every request.
    pub(crate) form: Option<Bytes>,
}

pub(crate) async fn parse_target(url: &str, method: &str) -> anyhow::Result<Target> {
    let uri: Uri = url.parse().with_context(|| format!("{url}: not a URL"))?;
    ensure!(
        uri.scheme_str() == Some("http"),
        "{url}: only http:// URLs are supported (the load test runs on loopback)"
    );
    let authority = uri.authority().context("the URL has no host")?;
    let port = authority.port_u16().unwrap_or(80);
    let addr = tokio::net::lookup_host((authority.host(), port))
        .await
        .with_context(|| format!("resolving {authority}"))?
        .next()
        .with_context(|| format!("{authority} has no address"))?;
    let path = uri.path_and_query().map_or("/", |pq| pq.as_str());
    Ok(Target {
        addr,
        host: HeaderValue::from_str(authority.as_str())?,
        path: path.parse()?,
        method: Method::from_bytes(method.as_bytes()).context("--method is not a method")?,
        authorization: None,
        form: None,
    })
}

pub(crate) type Sender = SendRequest<Full<Bytes>>;

pub(crate) async fn connect(addr: SocketAddr) -> anyhow::Result<Sender> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(sender)
}

/// One token request with a proof from `builder`: its status, `DPoP-Nonce` and body.
async fn token_request(
    target: &Target,
    builder: &ProofBuilder,
    key: &PrivateKey,
) -> anyhow::Result<(hyper::StatusCode, Option<String>, Bytes)> {
    let mut sender = connect(target.addr).await?;
    let proof = builder.sign(key, &SystemRandomSource, dpop_test::now())?;
    let mut request = Request::new(Full::new(target.form.clone().unwrap_or_default()));
    *request.method_mut() = target.method.clone();
    *request.uri_mut() = target.path.clone();
    let headers = request.headers_mut();
    headers.insert(HOST, target.host.clone());
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(FORM_TYPE));
    headers.insert(
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
        let t = parse_target("http://127.0.0.1:8080/a/b?c=d", "POST")
            .await
            .unwrap();
        assert_eq!(t.addr, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(t.host, "127.0.0.1:8080");
        assert_eq!(t.path, "/a/b?c=d");
        assert_eq!(t.method, Method::POST);
        let t = parse_target("http://127.0.0.1", "GET").await.unwrap();
        assert_eq!((t.addr.port(), t.path.to_string()), (80, "/".to_owned()));
        assert!(parse_target("https://127.0.0.1/", "GET").await.is_err());
        assert!(parse_target("http://127.0.0.1/", "G T").await.is_err());
    }
}
