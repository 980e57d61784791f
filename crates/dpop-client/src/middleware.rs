//! The `reqwest-middleware` middleware: every request gets a fresh proof (and the access
//! token, when a token source is set), and the retry rules of [`crate::session`] apply.

use std::future::Future;
use std::sync::Arc;

use dpop_core::{Clock, SystemClock};
use http::Extensions;
use reqwest::{Request, Response};
use reqwest_middleware::{Middleware, Next};

use crate::error::ClientError;
use crate::key::ClientKey;
use crate::observer::{Endpoint, Event, Observer, Retry};
use crate::session::{Session, Verdict};
use crate::source::TokenSource;

/// Signs every request with DPoP. Add it to a `reqwest_middleware::ClientBuilder`.
///
/// Redirects: a proof names one URL, so a redirected request would carry a proof for the
/// wrong URL. Build the inner `reqwest::Client` with `redirect::Policy::none()` and
/// follow redirects yourself if you need them.
#[derive(Clone, Debug)]
pub struct DpopMiddleware {
    session: Arc<Session>,
    tokens: Option<Arc<dyn TokenSource>>,
}

impl DpopMiddleware {
    /// Proofs signed with `key`, no access token (e.g. a token endpoint, or requests
    /// whose `Authorization` the caller sets itself: then proofs carry no `ath`).
    #[must_use]
    pub fn new(key: ClientKey) -> Self {
        Self::with_clock(key, Arc::new(SystemClock))
    }

    /// [`DpopMiddleware::new`] with an injected clock (tests, or a trusted time source).
    #[must_use]
    pub fn with_clock(key: ClientKey, clock: Arc<dyn Clock>) -> Self {
        Self {
            session: Arc::new(Session::new(key, clock)),
            tokens: None,
        }
    }

    /// Attaches `Authorization: DPoP <token>` from `tokens` to every request, with the
    /// token's hash in the proof. A token the server refuses (`invalid_token`) is
    /// dropped and the request retried once with a new one.
    #[must_use]
    pub fn with_tokens(mut self, tokens: Arc<dyn TokenSource>) -> Self {
        self.tokens = Some(tokens);
        self
    }

    /// Reports every signed attempt, response, retry and clock correction to `observer`
    /// (see [`Observer`]). The observer belongs to the key's session: token sources made
    /// from this middleware ([`OAuthTokens::new`](crate::OAuthTokens::new)), before or
    /// after this call, report their token requests to it too. A second call replaces
    /// the first observer.
    #[must_use]
    pub fn with_observer(self, observer: Arc<dyn Observer>) -> Self {
        self.session.set_observer(observer);
        self
    }

    /// The key's thumbprint (`cnf.jkt` of tokens bound to it).
    #[must_use]
    pub fn thumbprint(&self) -> &dpop_core::Jkt {
        self.session.key.thumbprint()
    }

    pub(crate) fn session(&self) -> &Arc<Session> {
        &self.session
    }
}

/// Sends `request` with DPoP through `send`, retrying as the module docs say. `prepare`
/// runs on every attempt before it is signed and may return a new body (the token
/// endpoint puts a new client assertion in it: single-use, and dated with the corrected
/// clock). Each step is
/// reported to the session's observer as going to `endpoint`.
pub(crate) async fn send_signed<S, Fut, E, P, PFut>(
    session: &Session,
    endpoint: Endpoint,
    mut request: Request,
    tokens: Option<&dyn TokenSource>,
    prepare: P,
    mut send: S,
) -> Result<Response, E>
where
    S: FnMut(Request) -> Fut,
    Fut: Future<Output = Result<Response, E>>,
    E: From<ClientError>,
    P: Fn() -> PFut,
    PFut: Future<Output = Result<Option<Vec<u8>>, ClientError>>,
{
    let (mut nonce_retried, mut skew_retried, mut token_retried) = (false, false, false);
    loop {
        let spare = request.try_clone();
        if let Some(body) = prepare().await? {
            *request.body_mut() = Some(body.into());
        }
        let token = match tokens {
            Some(t) => Some(t.token().await?),
            None => None,
        };
        session.sign(&mut request, token.as_deref()).await?;
        session.report(&Event::Sending {
            endpoint,
            request: &request,
        });
        let url = request.url().clone();
        let response = send(request).await?;
        session.report(&Event::Received {
            endpoint,
            response: &response,
        });
        let (verdict, response) = session.observe(&url, response).await;
        let response = response?;
        let (reason, retry) = match verdict {
            Verdict::RetryNonce if !nonce_retried => {
                nonce_retried = true;
                ("a new DPoP nonce", Retry::Nonce)
            }
            Verdict::RetrySkew if !skew_retried => {
                skew_retried = true;
                ("a clock correction", Retry::ClockSkew)
            }
            Verdict::TokenRefused if !token_retried => match (tokens, &token) {
                (Some(t), Some(used)) if t.renews() => {
                    token_retried = true;
                    t.invalidate(used);
                    ("a new access token", Retry::Token)
                }
                _ => return Ok(response),
            },
            _ => return Ok(response),
        };
        tracing::debug!(target: "dpop::client", url = %url, reason, "retrying");
        session.report(&Event::Retrying {
            url: &url,
            reason: retry,
        });
        request = spare.ok_or(ClientError::BodyNotReplayable(reason))?;
    }
}

impl From<ClientError> for reqwest_middleware::Error {
    fn from(e: ClientError) -> Self {
        match e {
            ClientError::Http(e) => Self::Reqwest(e),
            other => Self::Middleware(anyhow::Error::new(other)),
        }
    }
}

#[async_trait::async_trait]
impl Middleware for DpopMiddleware {
    async fn handle(
        &self,
        req: Request,
        extensions: &mut Extensions,
        next: Next<'_>,
    ) -> reqwest_middleware::Result<Response> {
        send_signed(
            &self.session,
            Endpoint::Resource,
            req,
            self.tokens.as_deref(),
            || async { Ok(None) },
            |r| {
                let next = next.clone();
                let mut ext = extensions.clone();
                async move { next.run(r, &mut ext).await }
            },
        )
        .await
    }
}
