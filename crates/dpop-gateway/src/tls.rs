//! TLS on the proxy listener: rustls (aws-lc-rs), TLS 1.2 and 1.3, ALPN `h2` and
//! `http/1.1`, client certificates verified against the configured CAs, and the
//! certificate, its key and the client CA bundle re-read when their files change or on
//! SIGHUP, without dropping a connection: handshakes take what is current at that
//! moment, a bad new file is refused and the old contents stay in use.

use std::fmt::Write as _;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use dpop_core::jwt::CertThumbprint;
use dpop_tower::ClientCertificate;
use dpop_uring::BatchedStream;
use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::CertificateDer;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use tokio::task::JoinHandle;
use tokio_rustls::server::TlsStream;

use crate::config::{ClientAuthConfig, TlsConfig};
use crate::error::GatewayError;
use crate::pem;

/// What a TLS handshake established.
pub(crate) struct Accepted {
    pub(crate) stream: TlsStream<BatchedStream>,
    /// ALPN chose `h2`.
    pub(crate) h2: bool,
    /// The verified client certificate, when the client presented one.
    pub(crate) client_cert: Option<ClientCertificate>,
}

/// The listener's TLS: the acceptor (rebuilt when the client CAs change) and the
/// certificate it serves.
pub(crate) struct TlsListener {
    inner: Arc<Inner>,
}

struct Inner {
    provider: Arc<CryptoProvider>,
    pair: Arc<PairSource>,
    /// The client CA bundle and what was last read from it, when client certificates
    /// are verified.
    client_cas: Option<ClientCas>,
    /// What handshakes use; replaced whole when the client CAs change.
    acceptor: RwLock<tokio_rustls::TlsAcceptor>,
}

struct ClientCas {
    auth: ClientAuthConfig,
    state: RwLock<FileState<Vec<u8>>>,
}

/// The contents of a file in use, and the contents last refused (so one bad file is
/// reported once, not every poll).
struct FileState<T> {
    loaded: T,
    refused: Option<T>,
}

impl std::fmt::Debug for TlsListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsListener")
            .field("cert_file", &self.inner.pair.cert_file)
            .field(
                "client_ca_file",
                &self.inner.client_cas.as_ref().map(|c| &c.auth.ca_file),
            )
            .finish_non_exhaustive()
    }
}

/// A server configuration for `pair`, verifying client certificates against `client`
/// (its settings and CAs) when given.
fn acceptor(
    provider: &Arc<CryptoProvider>,
    pair: &Arc<PairSource>,
    client: Option<(&ClientAuthConfig, RootCertStore)>,
) -> Result<tokio_rustls::TlsAcceptor, String> {
    let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(provider))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| format!("tls: {e}"))?;
    let builder = match client {
        None => builder.with_no_client_auth(),
        Some((auth, roots)) => {
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), Arc::clone(provider));
            let verifier = if auth.required {
                verifier
            } else {
                verifier.allow_unauthenticated()
            };
            let verifier = verifier
                .build()
                .map_err(|e| format!("{}: {e}", auth.ca_file.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut server = builder.with_cert_resolver(Arc::clone(pair) as Arc<dyn ResolvesServerCert>);
    server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(server)))
}

impl Inner {
    /// The acceptor for new client CAs read from `pem` (the bundle's contents).
    fn client_acceptor(
        &self,
        cas: &ClientCas,
        pem: &[u8],
    ) -> Result<tokio_rustls::TlsAcceptor, String> {
        let roots = pem::roots_of(pem, &cas.auth.ca_file)?;
        acceptor(&self.provider, &self.pair, Some((&cas.auth, roots)))
    }

    /// Re-reads the client CA bundle; a changed, valid one replaces the acceptor.
    /// `forced` (SIGHUP) reports the outcome even when nothing changed.
    fn reload_client_cas(&self, forced: bool) {
        let Some(cas) = &self.client_cas else { return };
        let file = cas.auth.ca_file.display();
        let pem = match pem::read(&cas.auth.ca_file, false) {
            Ok(pem) => pem,
            Err(why) => {
                let mut state = cas.state.write().unwrap_or_else(PoisonError::into_inner);
                if forced || state.refused.as_ref().is_none_or(|r| !r.is_empty()) {
                    tracing::error!(target: "dpop::tls", error = %why, "client CAs not reloaded; the ones in use stay");
                    state.refused = Some(Vec::new());
                }
                return;
            }
        };
        {
            let mut state = cas.state.write().unwrap_or_else(PoisonError::into_inner);
            if state.loaded == pem {
                state.refused = None;
                if forced {
                    tracing::info!(target: "dpop::tls", client_ca_file = %file, "client CA file unchanged");
                }
                return;
            }
            if !forced && state.refused.as_ref() == Some(&pem) {
                return;
            }
        }
        match self.client_acceptor(cas, &pem) {
            Ok(acceptor) => self.install_client_cas(cas, pem, acceptor),
            Err(why) => {
                tracing::error!(target: "dpop::tls", error = %why, "client CAs not reloaded; the ones in use stay");
                cas.state
                    .write()
                    .unwrap_or_else(PoisonError::into_inner)
                    .refused = Some(pem);
            }
        }
    }

    fn install_client_cas(
        &self,
        cas: &ClientCas,
        pem: Vec<u8>,
        acceptor: tokio_rustls::TlsAcceptor,
    ) {
        *self
            .acceptor
            .write()
            .unwrap_or_else(PoisonError::into_inner) = acceptor;
        let mut state = cas.state.write().unwrap_or_else(PoisonError::into_inner);
        state.loaded = pem;
        state.refused = None;
        tracing::info!(target: "dpop::tls", client_ca_file = %cas.auth.ca_file.display(), "client CAs reloaded; new handshakes verify client certificates against them");
    }
}

impl TlsListener {
    /// Reads the certificate, key and client CAs.
    ///
    /// # Errors
    /// [`GatewayError::Config`] naming the file and what is wrong with it.
    pub(crate) fn new(config: &TlsConfig) -> Result<Self, GatewayError> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let pair = PairSource::load(config, Arc::clone(&provider))?;
        let (client_cas, accept) = match &config.client_auth {
            None => (None, acceptor(&provider, &pair, None)),
            Some(auth) => {
                let pem = pem::read(&auth.ca_file, false).map_err(GatewayError::Config)?;
                let roots = pem::roots_of(&pem, &auth.ca_file).map_err(GatewayError::Config)?;
                let accept = acceptor(&provider, &pair, Some((auth, roots)));
                let cas = ClientCas {
                    auth: auth.clone(),
                    state: RwLock::new(FileState {
                        loaded: pem,
                        refused: None,
                    }),
                };
                (Some(cas), accept)
            }
        };
        let accept = accept.map_err(GatewayError::Config)?;
        Ok(Self {
            inner: Arc::new(Inner {
                provider,
                pair,
                client_cas,
                acceptor: RwLock::new(accept),
            }),
        })
    }

    /// Starts re-reading the certificate, key and client CAs every `interval` (when
    /// their content changed), and on SIGHUP when `hangup` is set (otherwise the
    /// configuration reload re-reads them, see [`Self::prepare_reload`]). The task stops
    /// when the handle is aborted.
    pub(crate) fn spawn_reload(&self, interval: Duration, hangup: bool) -> JoinHandle<()> {
        let inner = Arc::clone(&self.inner);
        // Registered before the task starts: once the listener serves, SIGHUP reloads
        // (its default action would end the process).
        let mut wait = dpop_server::TickOrHangup::new(interval, hangup, |e| {
            tracing::warn!(target: "dpop::tls", error = %e, "cannot listen for SIGHUP; certificate files are still polled");
        });
        tokio::spawn(async move {
            loop {
                let forced = wait.next().await;
                let inner = Arc::clone(&inner);
                let _ = tokio::task::spawn_blocking(move || {
                    inner.pair.reload(forced);
                    inner.reload_client_cas(forced);
                })
                .await;
            }
        })
    }

    /// Reads the certificate, key and client CA files for a configuration reload:
    /// `Ok(None)` when they hold what is in use, else what changed, read and checked (not
    /// yet in use, see [`Self::install`]).
    ///
    /// # Errors
    /// Why the files cannot be used, naming the file.
    pub(crate) fn prepare_reload(&self) -> Result<Option<PreparedTls>, String> {
        let inner = &self.inner;
        let p = &inner.pair;
        let files = read_files(&p.cert_file, &p.key_file)?;
        let loaded = p
            .state
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .loaded
            == files;
        let pair = if loaded {
            None
        } else {
            let pair = certified_key(&files, &p.cert_file, &p.key_file, &p.provider)?;
            Some(PreparedPair { files, pair })
        };
        let client_cas = match &inner.client_cas {
            None => None,
            Some(cas) => {
                let pem = pem::read(&cas.auth.ca_file, false)?;
                let same = cas
                    .state
                    .read()
                    .unwrap_or_else(PoisonError::into_inner)
                    .loaded
                    == pem;
                if same {
                    None
                } else {
                    let acceptor = inner.client_acceptor(cas, &pem)?;
                    Some((pem, acceptor))
                }
            }
        };
        Ok((pair.is_some() || client_cas.is_some()).then_some(PreparedTls { pair, client_cas }))
    }

    /// Puts what [`Self::prepare_reload`] read in use: handshakes from now on get it.
    pub(crate) fn install(&self, prepared: PreparedTls) {
        if let Some(p) = prepared.pair {
            self.inner.pair.install(p.files, p.pair);
        }
        if let (Some((pem, acceptor)), Some(cas)) = (prepared.client_cas, &self.inner.client_cas) {
            self.inner.install_client_cas(cas, pem, acceptor);
        }
    }

    /// The handshake, bounded by `timeout`.
    pub(crate) async fn accept(
        &self,
        stream: BatchedStream,
        timeout: Duration,
    ) -> io::Result<Accepted> {
        let acceptor = self
            .inner
            .acceptor
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let stream = tokio::time::timeout(timeout, acceptor.accept(stream))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out"))??;
        let (_, conn) = stream.get_ref();
        let h2 = conn.alpn_protocol() == Some(b"h2");
        let client_cert = conn
            .peer_certificates()
            .and_then(|chain| chain.first())
            .map(|leaf| client_certificate(leaf));
        Ok(Accepted {
            stream,
            h2,
            client_cert,
        })
    }
}

/// What a configuration reload read and checked of the TLS files, not in use yet: a new
/// certificate pair, new client CAs, or both.
pub(crate) struct PreparedTls {
    pair: Option<PreparedPair>,
    client_cas: Option<(Vec<u8>, tokio_rustls::TlsAcceptor)>,
}

/// A certificate pair read and checked, not in use yet.
struct PreparedPair {
    files: (Vec<u8>, Vec<u8>),
    pair: CertifiedKey,
}

/// The certificate and key files and the pair last loaded from them, which every
/// handshake is given.
struct PairSource {
    cert_file: PathBuf,
    key_file: PathBuf,
    provider: Arc<CryptoProvider>,
    state: RwLock<PairState>,
}

struct PairState {
    current: Arc<CertifiedKey>,
    /// The file contents `current` was made from.
    loaded: (Vec<u8>, Vec<u8>),
    /// The contents last refused, so one bad pair is reported once, not every poll.
    refused: Option<(Vec<u8>, Vec<u8>)>,
}

impl std::fmt::Debug for PairSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PairSource")
            .field("cert_file", &self.cert_file)
            .field("key_file", &self.key_file)
            .finish_non_exhaustive()
    }
}

impl ResolvesServerCert for PairSource {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let state = self.state.read().unwrap_or_else(PoisonError::into_inner);
        Some(Arc::clone(&state.current))
    }
}

impl PairSource {
    fn load(config: &TlsConfig, provider: Arc<CryptoProvider>) -> Result<Arc<Self>, GatewayError> {
        let files =
            read_files(&config.cert_file, &config.key_file).map_err(GatewayError::Config)?;
        let current = certified_key(&files, &config.cert_file, &config.key_file, &provider)
            .map_err(GatewayError::Config)?;
        Ok(Arc::new(Self {
            cert_file: config.cert_file.clone(),
            key_file: config.key_file.clone(),
            provider,
            state: RwLock::new(PairState {
                current: Arc::new(current),
                loaded: files,
                refused: None,
            }),
        }))
    }

    /// Re-reads the files; a changed, valid pair replaces the current one. `forced`
    /// (SIGHUP) reports the outcome even when nothing changed or the same bad pair is
    /// still there.
    fn reload(&self, forced: bool) {
        let files = match read_files(&self.cert_file, &self.key_file) {
            Ok(files) => files,
            Err(why) => {
                // A file being replaced may be missing for a moment; say so once.
                let mut state = self.state.write().unwrap_or_else(PoisonError::into_inner);
                let marker = (Vec::new(), Vec::new());
                if forced || state.refused.as_ref() != Some(&marker) {
                    tracing::error!(target: "dpop::tls", error = %why, "certificate not reloaded; the current one stays in use");
                    state.refused = Some(marker);
                }
                return;
            }
        };
        {
            let mut state = self.state.write().unwrap_or_else(PoisonError::into_inner);
            if state.loaded == files {
                // Back to the pair in use: a later problem is reported again.
                state.refused = None;
                if forced {
                    tracing::info!(target: "dpop::tls", cert_file = %self.cert_file.display(), "certificate files unchanged");
                }
                return;
            }
            if !forced && state.refused.as_ref() == Some(&files) {
                return;
            }
        }
        match certified_key(&files, &self.cert_file, &self.key_file, &self.provider) {
            Ok(pair) => self.install(files, pair),
            Err(why) => {
                tracing::error!(target: "dpop::tls", error = %why, "certificate not reloaded; the current one stays in use");
                let mut state = self.state.write().unwrap_or_else(PoisonError::into_inner);
                state.refused = Some(files);
            }
        }
    }

    /// Puts `pair`, made from `files`, in use.
    fn install(&self, files: (Vec<u8>, Vec<u8>), pair: CertifiedKey) {
        let mut state = self.state.write().unwrap_or_else(PoisonError::into_inner);
        state.current = Arc::new(pair);
        state.loaded = files;
        state.refused = None;
        tracing::info!(target: "dpop::tls", cert_file = %self.cert_file.display(), key_file = %self.key_file.display(), "certificate reloaded; new connections use it");
    }
}

fn read_files(cert_file: &Path, key_file: &Path) -> Result<(Vec<u8>, Vec<u8>), String> {
    Ok((pem::read(cert_file, false)?, pem::read(key_file, true)?))
}

/// The chain and key from PEM file contents, checked to belong together. Errors name the
/// file and the reason.
fn certified_key(
    (cert_pem, key_pem): &(Vec<u8>, Vec<u8>),
    cert_file: &Path,
    key_file: &Path,
    provider: &CryptoProvider,
) -> Result<CertifiedKey, String> {
    let chain = pem::certificates(cert_pem, cert_file)?;
    let key = pem::private_key(key_pem, key_file)?;
    let signing_key = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| format!("{}: unusable private key: {e}", key_file.display()))?;
    let pair = CertifiedKey::new(chain, signing_key);
    pair.keys_match().map_err(|e| match e {
        rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch) => format!(
            "{}: the private key does not match the certificate in {}",
            key_file.display(),
            cert_file.display()
        ),
        rustls::Error::InconsistentKeys(_) => format!(
            "{}: cannot check that the private key matches the certificate in {}",
            key_file.display(),
            cert_file.display()
        ),
        other => format!("{}: unusable certificate: {other}", cert_file.display()),
    })?;
    Ok(pair)
}

/// The verified leaf as the layer and the proxy see it.
fn client_certificate(leaf: &CertificateDer<'_>) -> ClientCertificate {
    ClientCertificate::new(CertThumbprint::of_der(leaf), subject(leaf))
}

/// The subject as an RFC 4514 string: RDNs last to first, `+` within one, the short
/// names RFC 4514 §3 lists and dotted OIDs otherwise. `None` when the certificate cannot
/// be parsed or an attribute value is not a string (its `#hex` form is not produced).
fn subject(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let mut out = String::new();
    let rdns: Vec<_> = cert.subject().iter().collect();
    for (i, rdn) in rdns.iter().rev().enumerate() {
        if i > 0 {
            out.push(',');
        }
        for (j, attr) in rdn.iter().enumerate() {
            if j > 0 {
                out.push('+');
            }
            let oid = attr.attr_type().to_id_string();
            let name = match oid.as_str() {
                "2.5.4.3" => "CN",
                "2.5.4.7" => "L",
                "2.5.4.8" => "ST",
                "2.5.4.10" => "O",
                "2.5.4.11" => "OU",
                "2.5.4.6" => "C",
                "2.5.4.9" => "STREET",
                "0.9.2342.19200300.100.1.25" => "DC",
                "0.9.2342.19200300.100.1.1" => "UID",
                other => other,
            };
            out.push_str(name);
            out.push('=');
            escape_value(attr.as_str().ok()?, &mut out);
        }
    }
    Some(out)
}

/// RFC 4514 §2.4 escaping, and every byte outside printable ASCII as `\XX`, so the
/// result is a valid header value.
fn escape_value(value: &str, out: &mut String) {
    let last = value.len().saturating_sub(1);
    for (i, b) in value.bytes().enumerate() {
        let special = matches!(b, b'"' | b'+' | b',' | b';' | b'<' | b'>' | b'\\')
            || (i == 0 && matches!(b, b' ' | b'#'))
            || (i == last && b == b' ');
        if special {
            out.push('\\');
            out.push(char::from(b));
        } else if (0x20..0x7f).contains(&b) {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "\\{b:02X}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_subject_and_thumbprint_come_from_the_leaf() {
        let ca = dpop_test::TestCa::new("unit ca");
        let leaf = ca.client("svc, \"a\"+b");
        let cert = client_certificate(&CertificateDer::from(leaf.cert_der.clone()));
        assert_eq!(cert.subject.as_deref(), Some("CN=svc\\, \\\"a\\\"\\+b"));
        assert_eq!(cert.thumbprint, CertThumbprint::of_der(&leaf.cert_der));
        assert_eq!(subject(b"not a certificate"), None);
    }

    #[test]
    fn subject_values_are_escaped() {
        let mut out = String::new();
        escape_value(" a,b+c\"d\\é#", &mut out);
        assert_eq!(out, "\\ a\\,b\\+c\\\"d\\\\\\C3\\A9#");
        out.clear();
        escape_value("#x ", &mut out);
        assert_eq!(out, "\\#x\\ ");
        out.clear();
        escape_value("a\u{0}b", &mut out);
        assert_eq!(out, "a\\00b");
    }
}
