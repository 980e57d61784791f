//! Certificates, keys and CA bundles from PEM, for the TLS listener and the upstream
//! connections alike: one parse, one set of messages naming the file and the reason.

use std::path::Path;

use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Reads a file (a private key file only when others cannot read it).
pub(crate) fn read(path: &Path, private: bool) -> Result<Vec<u8>, String> {
    if private {
        dpop_server::files::check_key_file(path)?;
    }
    std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

/// The certificates of `pem` (the contents of `path`), at least one.
pub(crate) fn certificates(
    pem: &[u8],
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: not a PEM certificate list: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "{}: no CERTIFICATE block (PEM certificates are expected)",
            path.display()
        ));
    }
    Ok(certs)
}

/// The private key of `pem` (the contents of `path`): PKCS#8, SEC1 or PKCS#1.
pub(crate) fn private_key(pem: &[u8], path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| {
        format!(
            "{}: no private key (PEM PKCS#8, SEC1 or PKCS#1 is expected): {e}",
            path.display()
        )
    })
}

/// The CA certificates of the file at `path` as trust anchors, at least one.
pub(crate) fn roots(path: &Path) -> Result<RootCertStore, String> {
    roots_of(&read(path, false)?, path)
}

/// The CA certificates of `pem` (the contents of `path`) as trust anchors, at least one.
pub(crate) fn roots_of(pem: &[u8], path: &Path) -> Result<RootCertStore, String> {
    let mut store = RootCertStore::empty();
    for cert in certificates(pem, path)? {
        store
            .add(cert)
            .map_err(|e| format!("{}: unusable CA certificate: {e}", path.display()))?;
    }
    Ok(store)
}
