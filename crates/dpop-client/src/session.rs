//! What the client remembers per origin (the last server nonce, the server's clock
//! offset) and the retry rules every DPoP request follows:
//!
//! - every response's `DPoP-Nonce` is remembered for its origin and goes into the next
//!   proof for that origin;
//! - a nonce challenge (401 `WWW-Authenticate: DPoP error="use_dpop_nonce"` from a
//!   resource server, 400 `{"error":"use_dpop_nonce"}` from a token endpoint) is retried
//!   once with the new nonce;
//! - an `invalid_dpop_proof` refusal whose `Date` header is 5 s or more away from the
//!   time the proof used (the local clock plus the origin's offset) is taken as clock
//!   skew: the new offset (possibly back to zero, when the server's clock was put right)
//!   is kept for the origin and the request retried once with a corrected `iat`.
//!
//! Each kind of retry happens at most once per request, so a misbehaving server cannot
//! make the client loop.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use dpop_core::{Clock, ProofBuilder, SystemRandomSource, UnixTime};
use http::{HeaderValue, StatusCode, header};
use reqwest::{Request, Response};

use crate::error::ClientError;
use crate::key::ClientKey;
use crate::observer::{Event, Observer};

/// Smallest clock difference taken as skew (`Date` has one-second resolution).
const SKEW_THRESHOLD_SECS: i64 = 5;
/// Largest JSON error body inspected for a nonce challenge.
const MAX_ERROR_BODY: u64 = 16 * 1024;
/// Most origins remembered.
const MAX_ORIGINS: usize = 1024;

/// Per-origin memory shared by the middleware and the token sources that use one key.
#[derive(Debug, Default)]
struct Origins {
    nonces: HashMap<String, String>,
    offsets: HashMap<String, i64>,
}

/// A key and what the client learned from servers.
pub(crate) struct Session {
    pub(crate) key: ClientKey,
    clock: Arc<dyn Clock>,
    origins: Mutex<Origins>,
    observer: std::sync::RwLock<Option<Arc<dyn Observer>>>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

/// What to do after a response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Hand the response to the caller.
    Done,
    /// A nonce challenge: retry with the nonce just learned.
    RetryNonce,
    /// Clock skew: retry with the corrected `iat`.
    RetrySkew,
    /// The access token was refused (`invalid_token`): a token source may get a new one.
    TokenRefused,
}

pub(crate) fn origin_of(url: &url::Url) -> String {
    url.origin().ascii_serialization()
}

impl Session {
    pub(crate) fn new(key: ClientKey, clock: Arc<dyn Clock>) -> Self {
        Self {
            key,
            clock,
            origins: Mutex::new(Origins::default()),
            observer: std::sync::RwLock::new(None),
        }
    }

    pub(crate) fn set_observer(&self, observer: Arc<dyn Observer>) {
        match self.observer.write() {
            Ok(mut o) => *o = Some(observer),
            Err(poisoned) => *poisoned.into_inner() = Some(observer),
        }
    }

    /// Tells the observer, if there is one.
    pub(crate) fn report(&self, event: &Event<'_>) {
        let observer = match self.observer.read() {
            Ok(o) => o.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        };
        if let Some(o) = observer {
            o.event(event);
        }
    }

    fn with_origins<T>(&self, f: impl FnOnce(&mut Origins) -> T) -> T {
        match self.origins.lock() {
            Ok(mut o) => f(&mut o),
            Err(poisoned) => f(&mut poisoned.into_inner()),
        }
    }

    /// The nonce to use for `origin`, if a server gave one.
    pub(crate) fn nonce(&self, origin: &str) -> Option<String> {
        self.with_origins(|o| o.nonces.get(origin).cloned())
    }

    /// The clock offset learned for `origin` (server minus local), in seconds.
    pub(crate) fn offset(&self, origin: &str) -> i64 {
        self.with_origins(|o| o.offsets.get(origin).copied().unwrap_or(0))
    }

    fn remember(&self, origin: &str, nonce: Option<String>, offset: Option<i64>) {
        self.with_origins(|o| {
            if o.nonces.len() >= MAX_ORIGINS && !o.nonces.contains_key(origin) {
                o.nonces.clear();
            }
            if o.offsets.len() >= MAX_ORIGINS && !o.offsets.contains_key(origin) {
                o.offsets.clear();
            }
            if let Some(n) = nonce {
                o.nonces.insert(origin.to_owned(), n);
            }
            if let Some(off) = offset {
                o.offsets.insert(origin.to_owned(), off);
            }
        });
    }

    /// Local time corrected by the origin's offset.
    pub(crate) fn now_for(&self, origin: &str) -> Result<UnixTime, ClientError> {
        let now = self
            .clock
            .now()
            .ok_or_else(|| ClientError::Proof("the system clock has no time".to_owned()))?;
        let offset = self.offset(origin);
        Ok(if offset >= 0 {
            now.saturating_add(Duration::from_secs(offset.unsigned_abs()))
        } else {
            now.saturating_sub(Duration::from_secs(offset.unsigned_abs()))
        })
    }

    /// A proof for `method` on `url`, with `ath` for `access_token`, the origin's nonce
    /// and corrected time. A device key signs on a thread that may block.
    pub(crate) async fn proof(
        &self,
        method: &str,
        url: &url::Url,
        access_token: Option<&str>,
    ) -> Result<String, ClientError> {
        let origin = origin_of(url);
        let nonce = self.nonce(&origin);
        let now = self.now_for(&origin)?;
        let (method, htu) = (method.to_owned(), url.as_str().to_owned());
        let access_token = access_token.map(str::to_owned);
        self.key
            .with_signer(move |signer| {
                let proof_error = |e: &dyn core::fmt::Display| ClientError::Proof(e.to_string());
                let mut builder = ProofBuilder::new(&method, &htu).map_err(|e| proof_error(&e))?;
                if let Some(t) = &access_token {
                    builder = builder.access_token(t);
                }
                if let Some(n) = &nonce {
                    builder = builder.nonce(n).map_err(|e| proof_error(&e))?;
                }
                builder
                    .sign(signer, &SystemRandomSource, now)
                    .map_err(|e| proof_error(&e))
            })
            .await
    }

    /// Puts a fresh proof (and the token, if any) on `request`.
    pub(crate) async fn sign(
        &self,
        request: &mut Request,
        access_token: Option<&str>,
    ) -> Result<(), ClientError> {
        let proof = self
            .proof(request.method().as_str(), request.url(), access_token)
            .await?;
        let headers = request.headers_mut();
        headers.insert(
            "dpop",
            HeaderValue::from_str(&proof).map_err(|e| ClientError::Proof(e.to_string()))?,
        );
        if let Some(t) = access_token {
            headers.insert(
                header::AUTHORIZATION,
                HeaderValue::from_str(&format!("DPoP {t}")).map_err(|_| {
                    ClientError::Proof("the access token is not a valid header value".to_owned())
                })?,
            );
        }
        Ok(())
    }

    /// Learns from `response` (nonce, skew) and says what to do. A 400 JSON body is read
    /// to look for `use_dpop_nonce`, so the response comes back rebuilt.
    pub(crate) async fn observe(
        &self,
        url: &url::Url,
        response: Response,
    ) -> (Verdict, Result<Response, ClientError>) {
        let origin = origin_of(url);
        let nonce = response
            .headers()
            .get("dpop-nonce")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| dpop_core::challenge::parse_dpop_nonce(v).ok())
            .map(str::to_owned);
        let got_nonce = nonce.is_some();
        self.remember(&origin, nonce, None);

        let status = response.status();
        let (error, response) = match status {
            StatusCode::UNAUTHORIZED => (challenge_error(&response), Ok(response)),
            StatusCode::BAD_REQUEST => body_error(response).await,
            _ => (None, Ok(response)),
        };
        let verdict = match error.as_deref() {
            Some("use_dpop_nonce") if got_nonce => Verdict::RetryNonce,
            Some("invalid_dpop_proof") => {
                let offset = response.as_ref().ok().and_then(|r| self.skew(&origin, r));
                match offset {
                    Some(off) => {
                        tracing::debug!(target: "dpop::client", %origin, offset = off, "server clock differs; correcting proof iat");
                        self.remember(&origin, None, Some(off));
                        self.report(&Event::ClockCorrected {
                            origin: &origin,
                            offset_secs: off,
                        });
                        Verdict::RetrySkew
                    }
                    None => Verdict::Done,
                }
            }
            Some("invalid_token") if status == StatusCode::UNAUTHORIZED => Verdict::TokenRefused,
            _ => Verdict::Done,
        };
        (verdict, response)
    }

    /// The server's clock offset from its `Date` header, when it differs enough from the
    /// offset the proof used to matter.
    fn skew(&self, origin: &str, response: &Response) -> Option<i64> {
        let date = response.headers().get(header::DATE)?.to_str().ok()?;
        let server = httpdate::parse_http_date(date).ok()?;
        let server = i64::try_from(
            server
                .duration_since(SystemTime::UNIX_EPOCH)
                .ok()?
                .as_secs(),
        )
        .ok()?;
        let local = i64::try_from(self.clock.now()?.as_secs()).ok()?;
        let offset = server - local;
        // Against the offset in use, not zero: a learnt offset must be unlearnt when the
        // server's clock is put right, or every proof to that origin would fail.
        (offset.abs_diff(self.offset(origin)) >= SKEW_THRESHOLD_SECS.unsigned_abs())
            .then_some(offset)
    }
}

/// The `error` of a `WWW-Authenticate: DPoP …` challenge (scheme matched case-insensitively).
fn challenge_error(response: &Response) -> Option<String> {
    response
        .headers()
        .get_all(header::WWW_AUTHENTICATE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(|v| dpop_core::challenge::parse(v).ok())
        .flatten()
        .find(|c| c.is_scheme("DPoP"))
        .and_then(|c| c.error().map(str::to_owned))
}

/// Reads a small JSON error body for its `error`, and rebuilds the response around it.
/// A body without `Content-Length` (chunked) is read up to [`MAX_ERROR_BODY`]; if it is
/// longer, nothing is inspected and the caller still gets every byte.
async fn body_error(response: Response) -> (Option<String>, Result<Response, ClientError>) {
    use http_body_util::BodyExt as _;

    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.to_ascii_lowercase().contains("json"));
    if !is_json
        || response
            .content_length()
            .is_some_and(|l| l > MAX_ERROR_BODY)
    {
        return (None, Ok(response));
    }
    let url = response.url().clone();
    let (mut parts, mut body) = http::Response::<reqwest::Body>::from(response).into_parts();
    let mut read = bytes::BytesMut::new();
    let mut complete = false;
    while read.len() as u64 <= MAX_ERROR_BODY {
        match body.frame().await {
            None => {
                complete = true;
                break;
            }
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    read.extend_from_slice(&data);
                }
            }
            Some(Err(e)) => return (None, Err(e.into())),
        }
    }
    let read = read.freeze();
    let error = if complete {
        serde_json::from_slice::<serde_json::Value>(&read)
            .ok()
            .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned))
    } else {
        None
    };
    let body = if complete {
        reqwest::Body::from(read)
    } else {
        reqwest::Body::wrap(Resumed {
            read: Some(read),
            rest: body,
        })
    };
    // `ResponseBuilderExt::url`: the rebuilt response keeps its URL (reqwest reads it
    // from a private extension; without it `url()` says `http://no.url.provided.local`).
    match reqwest::ResponseBuilderExt::url(http::Response::builder(), url).body(()) {
        Ok(with_url) => parts.extensions.extend(with_url.into_parts().0.extensions),
        Err(e) => return (None, Err(ClientError::TokenResponse(e.to_string()))),
    }
    (
        error,
        Ok(Response::from(http::Response::from_parts(parts, body))),
    )
}

/// A body whose first bytes were already read: those, then the rest.
struct Resumed {
    read: Option<Bytes>,
    rest: reqwest::Body,
}

impl http_body::Body for Resumed {
    type Data = Bytes;
    type Error = reqwest::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        if let Some(read) = self.read.take() {
            return std::task::Poll::Ready(Some(Ok(http_body::Frame::data(read))));
        }
        std::pin::Pin::new(&mut self.rest).poll_frame(cx)
    }
}
