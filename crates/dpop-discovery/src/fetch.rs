//! Bounded fetching: GETs of JSON documents from URLs that passed the URL rule, within a
//! time limit, reading at most a given number of bytes (refused early on
//! `Content-Length`, and reading stops as soon as the limit is passed, so a server cannot
//! make this process buffer an endless document). Redirects are not followed: a
//! redirect could lead to a URL the rule refuses.

use std::time::Duration;

use crate::url::EndpointUrl;

/// Why a fetch failed. Messages name the URL (never a token or secret: only URLs that
/// passed the rule, which refuses credentials in URLs, are fetched).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FetchError {
    /// The HTTP client could not be built.
    #[error("cannot build the HTTP client: {0}")]
    Client(String),
    /// The connection failed or the time limit passed.
    #[error("GET {url}: {reason}")]
    Transport {
        /// The URL.
        url: String,
        /// What failed, with its causes.
        reason: String,
        /// The HTTP client's error (without its URL), for callers that tell apart a name
        /// that does not resolve, a refused connection, a time-out or a TLS failure (the
        /// `reason` already says it in words). `None` when the body could not be read.
        cause: Option<Box<reqwest::Error>>,
    },
    /// The server answered a status other than 2xx (a redirect included).
    #[error("GET {url} answered {status}")]
    Status {
        /// The URL.
        url: String,
        /// The status, e.g. `404 Not Found`.
        status: String,
    },
    /// The body is longer than the limit.
    #[error("GET {url}: the response is larger than {limit} bytes")]
    TooLarge {
        /// The URL.
        url: String,
        /// The limit in bytes.
        limit: usize,
    },
    /// The body is not UTF-8 text.
    #[error("GET {url}: the response is not UTF-8")]
    NotUtf8 {
        /// The URL.
        url: String,
    },
}

impl FetchError {
    /// Whether the response was refused for its size.
    #[must_use]
    pub fn is_too_large(&self) -> bool {
        matches!(self, Self::TooLarge { .. })
    }
}

/// An error and its sources, for operators (reqwest's own message is terse: "error
/// sending request", with "connection refused" or the TLS alert only in its causes).
fn describe(e: &reqwest::Error) -> String {
    dpop_core::failure::error_chain(e)
}

/// Why [`read_bounded`] stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReadError {
    /// Longer than the limit (by `Content-Length`, or once the bytes read passed it).
    TooLarge,
    /// The connection failed or the time limit passed.
    Failed,
}

/// The body of `response`, at most `limit` bytes, for requests other than [`Fetcher::get`]
/// (an introspection POST).
///
/// # Errors
/// [`ReadError`].
pub async fn read_bounded(
    mut response: reqwest::Response,
    limit: usize,
) -> Result<Vec<u8>, ReadError> {
    if response
        .content_length()
        .is_some_and(|n| usize::try_from(n).map_or(true, |n| n > limit))
    {
        return Err(ReadError::TooLarge);
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|_| ReadError::Failed)? {
        if body.len().saturating_add(chunk.len()) > limit {
            return Err(ReadError::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Builds a client that does not follow redirects, with `timeout` over each exchange.
///
/// # Errors
/// [`FetchError::Client`] when the TLS backend cannot be set up.
pub fn http_client(timeout: Duration) -> Result<reqwest::Client, FetchError> {
    reqwest::Client::builder()
        .timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| FetchError::Client(describe(&e)))
}

/// GETs documents from an authorization server: no redirects, a time limit per request,
/// a size limit per document.
#[derive(Clone, Debug)]
pub struct Fetcher {
    http: reqwest::Client,
    timeout: Duration,
}

impl Fetcher {
    /// A fetcher with its own client (no redirects) and `timeout` per request.
    ///
    /// # Errors
    /// [`FetchError::Client`] when the client cannot be built.
    pub fn new(timeout: Duration) -> Result<Self, FetchError> {
        Ok(Self {
            http: http_client(timeout)?,
            timeout,
        })
    }

    /// A fetcher sharing `http` (which should not follow redirects: any redirect
    /// answer is refused as a status anyway), with `timeout` per request.
    #[must_use]
    pub fn with_client(http: reqwest::Client, timeout: Duration) -> Self {
        Self { http, timeout }
    }

    /// The time limit of each request.
    #[must_use]
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// GETs `url` as JSON text of at most `limit` bytes.
    ///
    /// # Errors
    /// [`FetchError`]: transport, a non-2xx status, too large, not UTF-8.
    pub async fn get(&self, url: &EndpointUrl, limit: usize) -> Result<String, FetchError> {
        let text = url.as_str();
        let response = self
            .http
            .get(text)
            .timeout(self.timeout)
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| {
                let e = e.without_url();
                FetchError::Transport {
                    url: text.to_owned(),
                    reason: describe(&e),
                    cause: Some(Box::new(e)),
                }
            })?;
        let status = response.status();
        if !status.is_success() {
            return Err(FetchError::Status {
                url: text.to_owned(),
                status: status.to_string(),
            });
        }
        let body = read_bounded(response, limit).await.map_err(|e| match e {
            ReadError::TooLarge => FetchError::TooLarge {
                url: text.to_owned(),
                limit,
            },
            ReadError::Failed => FetchError::Transport {
                url: text.to_owned(),
                reason: "the response body could not be read".to_owned(),
                cause: None,
            },
        })?;
        String::from_utf8(body).map_err(|_| FetchError::NotUtf8 {
            url: text.to_owned(),
        })
    }
}
