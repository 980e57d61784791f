//! Fixtures for the authorizer's HTTP listener: a `dpop authz` started in-process from
//! TOML text, the forward-auth header sets of each proxy, and a byte-exact HTTP/1.1
//! exchange (header values and targets as raw bytes, `Host` only as given).

use std::net::SocketAddr;
use std::time::Duration;

use dpop_gateway::{Authz, AuthzConfig};
use dpop_test::{HttpResponse, MockIssuer, free_port, http_get};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::oneshot;

use super::AUD;

/// The one host the authorizers here accept (`allowed_hosts`).
pub(crate) const HOST: &str = "api.example.com";

/// An authorizer serving in this process, with an HTTP and an admin listener; stopped
/// when dropped.
pub(crate) struct AuthzRunning {
    /// The HTTP listener.
    pub(crate) addr: SocketAddr,
    /// The admin listener.
    pub(crate) admin: SocketAddr,
    _stop: oneshot::Sender<()>,
}

impl AuthzRunning {
    /// An authorizer for `issuer`'s tokens with audience [`AUD`], accepting [`HOST`],
    /// with `rest` appended to its configuration (top-level keys first, then tables).
    pub(crate) async fn start(issuer: &MockIssuer, rest: &str) -> Self {
        let text = format!(
            "listen = \"127.0.0.1:{}\"\nadmin_listen = \"127.0.0.1:{}\"\nissuer = \"{}\"\n\
             audience = \"{AUD}\"\nallowed_hosts = [\"{HOST}\"]\n{rest}",
            free_port(),
            free_port(),
            issuer.url()
        );
        let config = AuthzConfig::from_toml(&text).unwrap();
        let authz = Authz::bind(config).await.unwrap();
        let addr = authz.http_addr().unwrap();
        let admin = authz.admin_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(authz.serve(async move {
            let _ = stopped.await;
        }));
        Self {
            addr,
            admin,
            _stop: stop,
        }
    }

    /// The admin listener's `/metrics` text.
    pub(crate) async fn metrics(&self) -> String {
        let r = http_get(&format!("http://{}/metrics", self.admin))
            .await
            .unwrap();
        assert_eq!(r.status, 200, "{r:?}");
        r.text()
    }

    /// The value of the metric line starting with `series` (name and labels), 0 when
    /// there is none yet.
    pub(crate) async fn metric(&self, series: &str) -> u64 {
        self.metrics()
            .await
            .lines()
            .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
            .unwrap_or(0)
    }

    /// `method target` on the HTTP listener with `headers`, byte for byte.
    pub(crate) async fn send(
        &self,
        method: &str,
        target: &[u8],
        headers: &[(&str, &[u8])],
    ) -> HttpResponse {
        exchange(self.addr, method.as_bytes(), target, headers).await
    }
}

/// How a proxy reports the original request in a forward-auth check.
#[derive(Clone, Copy, Debug)]
pub(crate) enum ForwardAuth {
    /// nginx `auth_request` with the shipped snippet: `X-Original-Method`,
    /// `X-Original-URI`, `X-Forwarded-Host`, `X-Forwarded-Proto`.
    Nginx,
    /// Traefik `ForwardAuth` and Caddy `forward_auth`: `X-Forwarded-Method`, `-Uri`,
    /// `-Host`, `-Proto`, `-For`.
    Forwarded,
}

impl ForwardAuth {
    /// The forwarding headers for the client's `method uri` on `scheme://host`.
    pub(crate) fn headers(
        self,
        method: &str,
        uri: &str,
        scheme: &str,
        host: &str,
    ) -> Vec<(&'static str, String)> {
        let (m, u) = match self {
            Self::Nginx => ("x-original-method", "x-original-uri"),
            Self::Forwarded => ("x-forwarded-method", "x-forwarded-uri"),
        };
        let mut h = vec![
            (m, method.to_owned()),
            (u, uri.to_owned()),
            ("x-forwarded-host", host.to_owned()),
            ("x-forwarded-proto", scheme.to_owned()),
        ];
        if matches!(self, Self::Forwarded) {
            h.push(("x-forwarded-for", "198.51.100.7".to_owned()));
        }
        h
    }
}

/// `(name, value)` pairs as the byte slices [`exchange`] takes.
pub(crate) fn as_bytes<'a>(headers: &'a [(&'a str, String)]) -> Vec<(&'a str, &'a [u8])> {
    headers.iter().map(|(n, v)| (*n, v.as_bytes())).collect()
}

/// Sends `METHOD TARGET HTTP/1.1`, then `headers` byte for byte and `Connection:
/// close` (no `Host` unless `headers` has one), and reads the response to the end. The
/// response's body is what follows the head (the authorizer answers with
/// `Content-Length`, never chunked).
///
/// # Panics
/// When the connection fails or the reply is not an HTTP response.
pub(crate) async fn exchange(
    addr: SocketAddr,
    method: &[u8],
    target: &[u8],
    headers: &[(&str, &[u8])],
) -> HttpResponse {
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
    request.extend_from_slice(b"Connection: close\r\n\r\n");
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(&request).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), stream.read_to_end(&mut out))
        .await
        .expect("the authorizer answers within 20 s")
        .unwrap();
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

/// Every value of header `name` in `r`.
pub(crate) fn values<'a>(r: &'a HttpResponse, name: &str) -> Vec<&'a str> {
    r.headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
        .collect()
}
