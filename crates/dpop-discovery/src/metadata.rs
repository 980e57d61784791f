//! Authorization-server metadata discovery: RFC 8414 first, then OpenID Connect
//! Discovery ([`IssuerUrl::discovery_urls`] says why in that order). The first document
//! that is fetched and parses decides: it must name the issuer asked about (RFC 8414
//! §3.3, OpenID Connect Discovery §4.3; compared in canonical form), and the endpoints
//! read from it must obey the URL rule.

use serde::Deserialize;

use crate::fetch::{FetchError, Fetcher};
use crate::url::{EndpointUrl, IssuerUrl, UrlError};

/// Largest discovery document read.
pub const MAX_METADATA_BYTES: usize = 64 * 1024;

/// Why discovery failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DiscoveryError {
    /// No well-known URL gave a metadata document; one failure per URL tried.
    #[error("no metadata for {issuer} ({})", join(.failures))]
    NotFound {
        /// The issuer asked about.
        issuer: String,
        /// Why each URL failed.
        failures: Vec<DocumentError>,
    },
    /// The document names another issuer.
    #[error("{url}: its issuer is {found:?}, not {expected} (RFC 8414 §3.3)")]
    IssuerMismatch {
        /// The document's URL.
        url: String,
        /// The issuer asked about.
        expected: String,
        /// The `issuer` the document names.
        found: String,
    },
    /// A member the caller needs is missing.
    #[error("{url}: no {field}")]
    MissingField {
        /// The document's URL.
        url: String,
        /// The member, e.g. `jwks_uri`.
        field: &'static str,
    },
    /// An endpoint breaks the URL rule.
    #[error("{url}: {field} {value:?} {error}")]
    BadEndpoint {
        /// The document's URL.
        url: String,
        /// The member, e.g. `jwks_uri`.
        field: &'static str,
        /// Its value.
        value: String,
        /// What is wrong with it.
        error: UrlError,
    },
}

impl DiscoveryError {
    /// When no URL could be reached at all: the first URL tried and the HTTP client's
    /// error for it (a name that does not resolve, a refused connection, a time-out, a
    /// TLS failure), so that a command-line client can answer with the matching exit
    /// code. `None` when any URL answered (with a status, a bad document, ...).
    #[must_use]
    pub fn unreachable(&self) -> Option<(&str, &reqwest::Error)> {
        let Self::NotFound { failures, .. } = self else {
            return None;
        };
        let mut first = None;
        for failure in failures {
            match failure {
                DocumentError::Fetch(FetchError::Transport {
                    url,
                    cause: Some(cause),
                    ..
                }) => {
                    first = first.or(Some((url.as_str(), &**cause)));
                }
                _ => return None,
            }
        }
        first
    }

    /// Whether a document was refused for its size.
    #[must_use]
    pub fn is_too_large(&self) -> bool {
        match self {
            Self::NotFound { failures, .. } => failures
                .iter()
                .any(|f| matches!(f, DocumentError::Fetch(e) if e.is_too_large())),
            _ => false,
        }
    }
}

/// Why one well-known URL gave no document.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DocumentError {
    /// It could not be fetched.
    #[error("{0}")]
    Fetch(#[from] FetchError),
    /// It is not a metadata document (not JSON, no `issuer`).
    #[error("{url} is not issuer metadata: {reason}")]
    NotMetadata {
        /// The URL.
        url: String,
        /// The parser's message.
        reason: String,
    },
}

fn join(failures: &[DocumentError]) -> String {
    failures
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

#[derive(Deserialize)]
struct Document {
    issuer: String,
    #[serde(default)]
    jwks_uri: Option<String>,
    #[serde(default)]
    token_endpoint: Option<String>,
    #[serde(default)]
    introspection_endpoint: Option<String>,
}

/// A metadata document that names the issuer asked about. Endpoints are checked when
/// read, so a document is not refused for an endpoint the caller does not use.
#[derive(Debug)]
pub struct Metadata {
    url: String,
    issuer: IssuerUrl,
    doc: Document,
}

impl std::fmt::Debug for Document {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Document")
            .field("issuer", &self.issuer)
            .finish_non_exhaustive()
    }
}

impl Metadata {
    /// Fetches the metadata of `issuer` through `fetcher`.
    ///
    /// # Errors
    /// [`DiscoveryError::NotFound`] when no well-known URL answers with a document,
    /// [`DiscoveryError::IssuerMismatch`] when the first document names another issuer.
    pub async fn discover(fetcher: &Fetcher, issuer: &IssuerUrl) -> Result<Self, DiscoveryError> {
        let mut failures = Vec::new();
        for url in issuer.discovery_urls() {
            // Built from an issuer that passed the rule, so it passes too.
            let endpoint = match EndpointUrl::parse(&url) {
                Ok(e) => e,
                Err(error) => {
                    return Err(DiscoveryError::BadEndpoint {
                        url: url.clone(),
                        field: "well-known URL",
                        value: url,
                        error,
                    });
                }
            };
            let text = match fetcher.get(&endpoint, MAX_METADATA_BYTES).await {
                Ok(text) => text,
                Err(e) => {
                    failures.push(DocumentError::Fetch(e));
                    continue;
                }
            };
            let doc: Document = match serde_json::from_str(&text) {
                Ok(doc) => doc,
                Err(e) => {
                    failures.push(DocumentError::NotMetadata {
                        url,
                        reason: e.to_string(),
                    });
                    continue;
                }
            };
            if !issuer.matches(&doc.issuer) {
                return Err(DiscoveryError::IssuerMismatch {
                    url,
                    expected: issuer.to_string(),
                    found: doc.issuer,
                });
            }
            return Ok(Self {
                url,
                issuer: issuer.clone(),
                doc,
            });
        }
        Err(DiscoveryError::NotFound {
            issuer: issuer.to_string(),
            failures,
        })
    }

    /// The URL the document came from.
    #[must_use]
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The issuer (the one asked about; the document names it).
    #[must_use]
    pub fn issuer(&self) -> &IssuerUrl {
        &self.issuer
    }

    fn endpoint(
        &self,
        field: &'static str,
        value: Option<&String>,
    ) -> Result<EndpointUrl, DiscoveryError> {
        let value = value.ok_or_else(|| DiscoveryError::MissingField {
            url: self.url.clone(),
            field,
        })?;
        EndpointUrl::parse(value).map_err(|error| DiscoveryError::BadEndpoint {
            url: self.url.clone(),
            field,
            value: value.clone(),
            error,
        })
    }

    /// `jwks_uri`.
    ///
    /// # Errors
    /// [`DiscoveryError::MissingField`] or [`DiscoveryError::BadEndpoint`].
    pub fn jwks_uri(&self) -> Result<EndpointUrl, DiscoveryError> {
        self.endpoint("jwks_uri", self.doc.jwks_uri.as_ref())
    }

    /// `token_endpoint`.
    ///
    /// # Errors
    /// [`DiscoveryError::MissingField`] or [`DiscoveryError::BadEndpoint`].
    pub fn token_endpoint(&self) -> Result<EndpointUrl, DiscoveryError> {
        self.endpoint("token_endpoint", self.doc.token_endpoint.as_ref())
    }

    /// `introspection_endpoint` (RFC 8414 §2 via RFC 7662).
    ///
    /// # Errors
    /// [`DiscoveryError::MissingField`] or [`DiscoveryError::BadEndpoint`].
    pub fn introspection_endpoint(&self) -> Result<EndpointUrl, DiscoveryError> {
        self.endpoint(
            "introspection_endpoint",
            self.doc.introspection_endpoint.as_ref(),
        )
    }
}
