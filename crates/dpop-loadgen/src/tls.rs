//! TLS for `run` (client) and `upstream` (server), rustls with the aws-lc-rs provider,
//! and the files of `certs`.

use std::fs;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context as _, ensure};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore, ServerConfig};

use crate::CertsArgs;
use crate::files::write_atomically;

/// ALPN protocol ids.
pub(crate) const H2: &[u8] = b"h2";
pub(crate) const HTTP11: &[u8] = b"http/1.1";

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// The certificates of a PEM file (at least one).
fn read_certs(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .with_context(|| format!("reading {}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("{}: not PEM certificates", path.display()))?;
    ensure!(
        !certs.is_empty(),
        "{}: no certificate in it",
        path.display()
    );
    Ok(certs)
}

/// A client trusting only the certificates of `ca_file`, offering `alpn`.
pub(crate) fn client_config(ca_file: &Path, alpn: &[u8]) -> anyhow::Result<ClientConfig> {
    let mut roots = RootCertStore::empty();
    for cert in read_certs(ca_file)? {
        roots
            .add(cert)
            .with_context(|| format!("{}: not a usable CA certificate", ca_file.display()))?;
    }
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![alpn.to_vec()];
    Ok(config)
}

/// A server with the chain of `cert_file` and the key of `key_file`, offering h2 and
/// http/1.1 by ALPN.
pub(crate) fn server_config(cert_file: &Path, key_file: &Path) -> anyhow::Result<ServerConfig> {
    let certs = read_certs(cert_file)?;
    let key = PrivateKeyDer::from_pem_file(key_file)
        .with_context(|| format!("{}: no usable private key", key_file.display()))?;
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .with_context(|| {
            format!(
                "{} and {} do not make a usable certificate and key",
                cert_file.display(),
                key_file.display()
            )
        })?;
    config.alpn_protocols = vec![H2.to_vec(), HTTP11.to_vec()];
    Ok(config)
}

/// `dpop-loadgen certs`: a private CA and a server certificate for 127.0.0.1 and
/// localhost, written to `ca.pem`, `server.pem` and `server.key` (mode 0600).
pub(crate) fn certs(args: &CertsArgs) -> anyhow::Result<ExitCode> {
    let out = &args.out;
    fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    // The CA's own directory goes with it: the PEM text is copied out first.
    let ca = dpop_test::TestCa::new("dpop-loadgen CA");
    let server = ca.server(&["127.0.0.1", "localhost"]);
    write_atomically(&out.join("ca.pem"), ca.cert_pem().as_bytes(), 0o644)?;
    write_atomically(&out.join("server.pem"), server.cert_pem.as_bytes(), 0o644)?;
    write_atomically(&out.join("server.key"), server.key_pem.as_bytes(), 0o600)?;
    eprintln!(
        "dpop-loadgen certs: ca.pem, server.pem (127.0.0.1, localhost), server.key in {}",
        out.display()
    );
    Ok(ExitCode::SUCCESS)
}
