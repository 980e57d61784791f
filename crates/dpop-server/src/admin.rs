//! The admin listener: `/healthz` (the process answers), `/readyz` (the process's own
//! readiness check: can it do its work now?) and `/metrics` (OpenMetrics text). It is
//! meant for a private address, for probes and scrapers, not for clients.
//!
//! `GET` and `HEAD` are answered; other methods on these paths get 405, other paths 404.
//! It stays small whatever connects to it: at most [`MAX_CONNECTIONS`] connections are
//! served at a time (more wait in the kernel's backlog), a request head must arrive
//! within [`HEADER_READ_TIMEOUT`], and a connection is closed after [`CONNECTION_TIME`]
//! (scrapers reconnect).

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// Most connections served at once.
pub const MAX_CONNECTIONS: usize = 64;

/// Time allowed for a request head to arrive.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// How long one connection is served, keep-alive included; a request still running then
/// gets [`SHUTDOWN_GRACE`] more.
pub const CONNECTION_TIME: Duration = Duration::from_secs(60);

/// Time a connection past [`CONNECTION_TIME`] has to finish its request.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// The content type of `/healthz` and of text readiness answers.
const TEXT: &str = "text/plain; charset=utf-8";

/// What `/readyz` answers: 200 when ready, 503 when not, with the body the process
/// chose.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Readiness {
    ready: bool,
    body: Bytes,
    content_type: &'static str,
}

impl Readiness {
    /// A plain-text answer, e.g. `ready\n` or `database unreachable\n`.
    #[must_use]
    pub fn text(ready: bool, body: impl Into<String>) -> Self {
        Self {
            ready,
            body: Bytes::from(body.into()),
            content_type: TEXT,
        }
    }

    /// A JSON answer (one line), for a process reporting each dependency.
    #[must_use]
    pub fn json(ready: bool, body: &serde_json::Value) -> Self {
        Self {
            ready,
            body: Bytes::from(format!("{body}\n")),
            content_type: "application/json",
        }
    }

    /// The answer every process gives: one JSON line, `{"ready": …}` followed by each
    /// named check's result, ready when every check passes. The gateway, the authorizer
    /// and the issuer answer in this one shape, so one probe rule reads them all.
    #[must_use]
    pub fn checks(checks: &[(&str, bool)]) -> Self {
        Self::checks_with(checks, &[])
    }

    /// As [`Self::checks`], with `facts` (such as the configuration generation in force)
    /// after the checks: numbers that say what is served, not whether it is ready.
    #[must_use]
    pub fn checks_with(checks: &[(&str, bool)], facts: &[(&str, u64)]) -> Self {
        let ready = checks.iter().all(|(_, ok)| *ok);
        let mut body = serde_json::Map::new();
        body.insert("ready".into(), ready.into());
        for (name, ok) in checks {
            body.insert((*name).into(), (*ok).into());
        }
        for (name, value) in facts {
            body.insert((*name).into(), (*value).into());
        }
        Self::json(ready, &serde_json::Value::Object(body))
    }

    /// Whether the process is ready.
    #[must_use]
    pub fn is_ready(&self) -> bool {
        self.ready
    }

    /// The HTTP answer: 200 or 503, the body and its content type. Also for a process
    /// that answers `/readyz` on another listener.
    #[must_use]
    pub fn into_http(self) -> Response<Full<Bytes>> {
        let status = if self.ready {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        response(status, self.body, self.content_type)
    }
}

fn response(status: StatusCode, body: Bytes, content_type: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

fn empty(status: StatusCode) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = status;
    r
}

/// The liveness path: 200 while the process answers. Deployment files probe it.
pub const HEALTHZ_PATH: &str = "/healthz";
/// The readiness path: what the process's `readiness` says. Deployment files probe it.
pub const READYZ_PATH: &str = "/readyz";
/// The Prometheus text of the registry.
pub const METRICS_PATH: &str = "/metrics";

/// The answer to `method path`.
async fn answer<F, Fut>(
    method: &Method,
    path: &str,
    registry: &Registry,
    readiness: &F,
) -> Response<Full<Bytes>>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Readiness>,
{
    if !matches!(path, HEALTHZ_PATH | READYZ_PATH | METRICS_PATH) {
        return empty(StatusCode::NOT_FOUND);
    }
    if method != Method::GET && method != Method::HEAD {
        let mut r = empty(StatusCode::METHOD_NOT_ALLOWED);
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET,HEAD"));
        return r;
    }
    match path {
        HEALTHZ_PATH => response(StatusCode::OK, Bytes::from_static(b"ok\n"), TEXT),
        READYZ_PATH => readiness().await.into_http(),
        _ => response(
            StatusCode::OK,
            Bytes::from(crate::metrics::encode(registry)),
            crate::metrics::CONTENT_TYPE,
        ),
    }
}

/// Serves the admin endpoints on `listener` until the task is dropped or aborted:
/// `/metrics` encodes `registry`, `/readyz` answers what `readiness` returns (bound its
/// own waits: a probe waits for it).
pub async fn serve<F, Fut>(listener: TcpListener, registry: Arc<Registry>, readiness: F)
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Readiness> + Send + 'static,
{
    let readiness = Arc::new(readiness);
    let limit = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(permit) = Arc::clone(&limit).acquire_owned().await else {
            return;
        };
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // E.g. out of file descriptors: back off instead of spinning.
                tracing::warn!(target: "dpop::admin", error = %e, "admin accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let registry = Arc::clone(&registry);
        let readiness = Arc::clone(&readiness);
        let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
            let registry = Arc::clone(&registry);
            let readiness = Arc::clone(&readiness);
            async move {
                Ok::<_, Infallible>(
                    answer(req.method(), req.uri().path(), &registry, &*readiness).await,
                )
            }
        });
        tokio::spawn(async move {
            let mut http = http1::Builder::new();
            http.timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT);
            let conn = http.serve_connection(TokioIo::new(stream), svc);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                () = tokio::time::sleep(CONNECTION_TIME) => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(SHUTDOWN_GRACE, conn).await;
                }
            }
            drop(permit);
        });
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;

    async fn admin(ready: bool) -> std::net::SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut registry = Registry::with_prefix("test");
        let c: prometheus_client::metrics::counter::Counter =
            prometheus_client::metrics::counter::Counter::default();
        registry.register("things", "Things seen", c.clone());
        c.inc();
        tokio::spawn(serve(listener, Arc::new(registry), move || async move {
            Readiness::checks(&[("database_reachable", ready)])
        }));
        addr
    }

    /// The raw response to `method path`.
    async fn send(addr: std::net::SocketAddr, method: &str, path: &str) -> String {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(
            format!("{method} {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out.to_ascii_lowercase()
    }

    #[tokio::test]
    async fn the_three_endpoints() {
        let addr = admin(true).await;
        let r = send(addr, "GET", "/healthz").await;
        assert!(r.starts_with("http/1.1 200"), "{r}");
        assert!(r.contains("content-type: text/plain; charset=utf-8"), "{r}");
        assert!(r.ends_with("\r\n\r\nok\n"), "{r}");
        let r = send(addr, "GET", "/readyz").await;
        assert!(r.starts_with("http/1.1 200"), "{r}");
        assert!(r.contains("content-type: application/json"), "{r}");
        assert!(
            r.ends_with("\r\n\r\n{\"database_reachable\":true,\"ready\":true}\n"),
            "{r}"
        );
        let r = send(addr, "GET", "/metrics").await;
        assert!(r.starts_with("http/1.1 200"), "{r}");
        assert!(
            r.contains("content-type: application/openmetrics-text; version=1.0.0; charset=utf-8"),
            "{r}"
        );
        assert!(r.contains("test_things_total 1"), "{r}");
    }

    #[tokio::test]
    async fn not_ready_is_503_and_other_requests_are_refused() {
        let addr = admin(false).await;
        let r = send(addr, "GET", "/readyz").await;
        assert!(r.starts_with("http/1.1 503"), "{r}");
        assert!(
            r.ends_with("{\"database_reachable\":false,\"ready\":false}\n"),
            "{r}"
        );
        let r = send(addr, "GET", "/").await;
        assert!(r.starts_with("http/1.1 404"), "{r}");
        let r = send(addr, "POST", "/healthz").await;
        assert!(r.starts_with("http/1.1 405"), "{r}");
        assert!(r.contains("allow: get,head"), "{r}");
        let r = send(addr, "HEAD", "/healthz").await;
        assert!(r.starts_with("http/1.1 200"), "{r}");
        assert!(r.ends_with("\r\n\r\n"), "no body for HEAD: {r}");
    }
}
