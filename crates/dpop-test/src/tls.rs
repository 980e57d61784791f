//! Certificates made in the test: a private CA that issues server and client
//! certificates, written as PEM files into a directory removed on drop.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};

/// A leaf certificate and its key, as PEM text and as files.
#[derive(Debug, Clone)]
pub struct CertFiles {
    /// The certificate (one PEM block; the CA is not included).
    pub cert_pem: String,
    /// The private key, PKCS#8 PEM.
    pub key_pem: String,
    /// The certificate, DER.
    pub cert_der: Vec<u8>,
    /// Where `cert_pem` is written.
    pub cert_file: PathBuf,
    /// Where `key_pem` is written (mode 0600).
    pub key_file: PathBuf,
}

/// A private certificate authority for one test. Its files live in a fresh temporary
/// directory, removed when the CA is dropped.
pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
    cert_der: Vec<u8>,
    dir: PathBuf,
    issued: AtomicUsize,
}

impl std::fmt::Debug for TestCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestCa")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

fn fresh_dir() -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("dpop-test-ca-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create the CA directory");
    dir
}

fn write_private(path: &Path, text: &str) {
    std::fs::write(path, text).expect("write a key file");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .expect("make a key file private");
    }
}

impl TestCa {
    /// A new CA named `name` (its common name), with an ECDSA P-256 key.
    ///
    /// # Panics
    /// When the key or certificate cannot be made or written (test support).
    #[must_use]
    pub fn new(name: &str) -> Self {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name);
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().expect("CA key");
        let cert = params.self_signed(&key).expect("CA certificate");
        let dir = fresh_dir();
        let cert_pem = cert.pem();
        std::fs::write(dir.join("ca.pem"), &cert_pem).expect("write the CA file");
        Self {
            cert_der: cert.der().to_vec(),
            cert_pem,
            issuer: Issuer::new(params, key),
            dir,
            issued: AtomicUsize::new(0),
        }
    }

    /// The CA certificate, PEM.
    #[must_use]
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA certificate, DER.
    #[must_use]
    pub fn cert_der(&self) -> &[u8] {
        &self.cert_der
    }

    /// The file holding [`Self::cert_pem`].
    #[must_use]
    pub fn ca_file(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// The directory the files are written to.
    #[must_use]
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A server certificate for `names` (DNS names, or IP addresses such as
    /// `127.0.0.1`).
    ///
    /// # Panics
    /// As [`Self::new`].
    #[must_use]
    pub fn server(&self, names: &[&str]) -> CertFiles {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(
            DnType::CommonName,
            names.first().copied().unwrap_or("server"),
        );
        params.distinguished_name = dn;
        params.subject_alt_names = names
            .iter()
            .map(|n| match n.parse::<IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName((*n).try_into().expect("a DNS name")),
            })
            .collect();
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.issue(params, "server")
    }

    /// A client certificate with common name `name`.
    ///
    /// # Panics
    /// As [`Self::new`].
    #[must_use]
    pub fn client(&self, name: &str) -> CertFiles {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name);
        params.distinguished_name = dn;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.issue(params, "client")
    }

    fn issue(&self, mut params: CertificateParams, kind: &str) -> CertFiles {
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let key = KeyPair::generate().expect("leaf key");
        let cert = params
            .signed_by(&key, &self.issuer)
            .expect("leaf certificate");
        let n = self.issued.fetch_add(1, Ordering::Relaxed);
        let cert_file = self.dir.join(format!("{kind}-{n}.pem"));
        let key_file = self.dir.join(format!("{kind}-{n}.key"));
        let cert_pem = cert.pem();
        let key_pem = key.serialize_pem();
        std::fs::write(&cert_file, &cert_pem).expect("write a certificate file");
        write_private(&key_file, &key_pem);
        CertFiles {
            cert_pem,
            key_pem,
            cert_der: cert.der().to_vec(),
            cert_file,
            key_file,
        }
    }
}

impl Drop for TestCa {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_written_and_removed() {
        let ca = TestCa::new("test ca");
        let server = ca.server(&["localhost", "127.0.0.1"]);
        let client = ca.client("workload-1");
        assert!(server.cert_pem.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(server.key_pem.contains("PRIVATE KEY"));
        assert_ne!(server.cert_file, client.cert_file);
        assert_eq!(
            std::fs::read_to_string(ca.ca_file()).unwrap(),
            ca.cert_pem()
        );
        let dir = ca.dir().to_owned();
        drop(ca);
        assert!(!dir.exists());
    }
}
