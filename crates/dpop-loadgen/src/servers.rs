//! The servers of the load test: the plain upstream and the mock issuer.

use std::convert::Infallible;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use dpop_core::{Algorithm, PrivateKey};
use dpop_test::{MockIssuer, TokenSpec};
use http_body_util::Full;
use hyper::Response;
use hyper::body::Bytes;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::files::write_atomically;
use crate::tls::server_config;
use crate::{IssuerArgs, UpstreamArgs};

pub(crate) async fn upstream(args: UpstreamArgs) -> anyhow::Result<ExitCode> {
    let service = service_fn(|_req| async {
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
    });
    if let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) {
        let acceptor = TlsAcceptor::from(Arc::new(server_config(cert, key)?));
        let listener = TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("listening on {}", args.listen))?;
        eprintln!(
            "dpop-loadgen upstream: listening on https://{} (h2, http/1.1)",
            listener.local_addr()?
        );
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                // Out of file descriptors or a connection reset before accept.
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            };
            let _ = stream.set_nodelay(true);
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                // A failed handshake only ends this connection.
                let Ok(stream) = acceptor.accept(stream).await else {
                    return;
                };
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    }
    // Plain HTTP/1.1, as before TLS existed: the upstream-direct baseline.
    let server = dpop_test::serve(args.listen, service)
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
    eprintln!("dpop-loadgen upstream: listening on {}", server.url());
    server.serve_forever().await;
    Ok(ExitCode::SUCCESS)
}

pub(crate) async fn issuer(args: IssuerArgs) -> anyhow::Result<ExitCode> {
    let issuer = MockIssuer::builder()
        .listen(args.listen)
        .start()
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
    let key = PrivateKey::generate(Algorithm::Es256).context("generating the client key")?;
    let pem = key.to_pkcs8_pem().context("encoding the client key")?;
    write_atomically(&args.key_out, pem.as_bytes(), 0o600)?;
    let token = issuer.mint(&TokenSpec {
        lifetime_secs: args.lifetime,
        ..TokenSpec::bound(&args.aud, key.thumbprint().as_str())
    });
    write_atomically(&args.token_out, token.as_bytes(), 0o600)?;
    eprintln!(
        "dpop-loadgen issuer: {} (jwks {}); token for aud {:?} bound to jkt {} in {}",
        issuer.url(),
        issuer.jwks_uri(),
        args.aud,
        key.thumbprint(),
        args.token_out.display()
    );
    // Serve until killed; the issuer's tasks run on the runtime.
    std::future::pending::<()>().await;
    drop(issuer);
    Ok(ExitCode::SUCCESS)
}
