//! [`DpopService`]: the per-request flow.

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use dpop_core::jwt::AccessToken;
use dpop_core::{
    AsyncReplayStore, Ath, Error, Htu, ProofRequest, Reason, RequestError, RequestTarget,
    TargetError, UnixTime,
};
use http::request::Parts;
use http::{HeaderValue, Method, Request, Response, header};
use tower::Service;

use crate::config::{DpopMode, RoutePolicy};
use crate::events::Outcome;
use crate::future::ResponseFuture;
use crate::identity::{AuthorizedTarget, ClientCertificate, DpopIdentity, PeerAddr, Scheme};
use crate::metadata::metadata_url;
use crate::response::{RejectionContext, rejection as build_rejection};
use crate::state::Shared;

/// The service made by [`crate::DpopLayer`].
pub struct DpopService<S, St> {
    inner: S,
    shared: Arc<Shared<St>>,
}

impl<S, St> DpopService<S, St> {
    pub(crate) fn new(inner: S, shared: Arc<Shared<St>>) -> Self {
        Self { inner, shared }
    }

    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The wrapped service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: Clone, St> Clone for DpopService<S, St> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<S: fmt::Debug, St> fmt::Debug for DpopService<S, St> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DpopService")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

struct Authenticated {
    identity: DpopIdentity,
    renew_nonce: bool,
    outcome: Outcome,
}

struct Rejection {
    error: Error,
    scheme: Option<Scheme>,
    /// For `insufficient_scope`: the required scopes the token lacks.
    missing_scopes: Vec<String>,
}

impl Rejection {
    fn new(error: impl Into<Error>, scheme: Option<Scheme>) -> Self {
        Self {
            error: error.into(),
            scheme,
            missing_scopes: Vec::new(),
        }
    }

    fn insufficient_scope(scheme: Scheme, missing_scopes: Vec<String>) -> Self {
        Self {
            missing_scopes,
            ..Self::new(RequestError::InsufficientScope, Some(scheme))
        }
    }
}

impl<S, St, ReqBody, ResBody> Service<Request<ReqBody>> for DpopService<S, St>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: Default + Send + 'static,
    St: AsyncReplayStore + 'static,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ResponseFuture<Response<ResBody>, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        // Take the service that was driven to readiness; leave a clone for the next call.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let shared = Arc::clone(&self.shared);
        ResponseFuture {
            inner: Box::pin(handle(shared, inner, req)),
        }
    }
}

async fn handle<S, St, ReqBody, ResBody>(
    shared: Arc<Shared<St>>,
    mut inner: S,
    req: Request<ReqBody>,
) -> Result<Response<ResBody>, S::Error>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ResBody: Default,
    St: AsyncReplayStore,
{
    let started = Instant::now();
    // One parse of the target decides the route, the `htu` and what is forwarded.
    let (policy, resource_path, target) = match resolve(&shared, &req) {
        Ok(resolved) => resolved,
        Err(e) => {
            let error = Error::from(RequestError::NonCanonicalTarget(e));
            let reason = error.reason();
            tracing::info!(target: "dpop::rejection", reason = reason.as_str(), class = e.as_str(), status = 400, method = %req.method(), path = req.uri().path(), detail = %error, "request refused");
            shared
                .settings
                .events
                .outcome(Outcome::Rejected(reason), started.elapsed());
            let ctx = RejectionContext {
                challenges: &shared.challenges,
                bearer_allowed: false,
                scheme_used: None,
                nonce: None,
                scopes: &[],
                resource_metadata: None,
            };
            let mut response = build_rejection::<ResBody>(&error, &ctx);
            response.extensions_mut().insert(Outcome::Rejected(reason));
            return Ok(response);
        }
    };
    // RFC 9728 §3: the metadata document is public; it is never behind DPoP. Reading it
    // is: any other method on that path meets the route's policy like any request.
    let metadata_request = (req.method() == Method::GET || req.method() == Method::HEAD)
        && is_metadata_path(&shared, target.path());
    // The target stays here until the request is handed on (or refused): the checks
    // below judge exactly this value, never one read back from the extensions.
    let mut req = req;
    // The connection's client certificate first, in every mode: it is not a DPoP check
    // that report-only could waive.
    if policy.requires_client_cert()
        && !metadata_request
        && req.extensions().get::<ClientCertificate>().is_none()
    {
        let error = Error::from(RequestError::ClientCertificateRequired);
        let reason = error.reason();
        let status = reason.response(dpop_core::Role::ResourceServer).status;
        tracing::info!(target: "dpop::rejection", reason = reason.as_str(), status, method = %req.method(), path = %target.path(), detail = %error, "request refused");
        shared
            .settings
            .events
            .outcome(Outcome::Rejected(reason), started.elapsed());
        let ctx = RejectionContext {
            challenges: &shared.challenges,
            bearer_allowed: policy.mode == DpopMode::AllowBearer,
            scheme_used: None,
            nonce: None,
            scopes: &[],
            resource_metadata: None,
        };
        let mut response = build_rejection::<ResBody>(&error, &ctx);
        refused(&mut response, reason, target);
        return Ok(response);
    }
    if policy.mode == DpopMode::Off || metadata_request {
        req.extensions_mut().insert(target);
        return inner.call(req).await;
    }
    // Work on the head only: the body is not needed and need not be `Sync`.
    let (mut parts, body) = req.into_parts();
    let result = match shared.settings.clock.now() {
        // Boxed: its future (token, proof, replay record) is about 1.6 KB, which would
        // otherwise be part of this future on every route, `off` ones included, and be
        // copied each time this future is boxed.
        Some(now) => Box::pin(shared.authenticate(&parts, policy, target.path(), now))
            .await
            .map(|a| (a, now)),
        None => Err(Rejection::new(Error::NoClock, None)),
    };
    let events = &shared.settings.events;
    match result {
        Ok((auth, now)) => {
            events.outcome(auth.outcome, started.elapsed());
            parts.extensions.insert(auth.identity);
            parts.extensions.insert(target);
            let mut response = inner.call(Request::from_parts(parts, body)).await?;
            // RFC 9449 §8.2: hand out the next nonce on a successful response.
            if auth.renew_nonce
                && let Some(nonces) = &shared.settings.nonces
                && let Ok(nonce) = nonces.issue(now)
                && let Ok(v) = HeaderValue::from_str(&nonce)
            {
                response.headers_mut().insert("dpop-nonce", v);
            }
            response.extensions_mut().insert(auth.outcome);
            Ok(response)
        }
        Err(rejection) => {
            let reason = rejection.error.reason();
            if policy.mode == DpopMode::ReportOnly {
                tracing::warn!(target: "dpop::rejection", reason = reason.as_str(), report_only = true, method = %parts.method, path = parts.uri.path(), detail = %rejection.error, "DPoP check failed (report-only, forwarded)");
                events.outcome(Outcome::WouldReject(reason), started.elapsed());
                parts.extensions.insert(target);
                let mut response = inner.call(Request::from_parts(parts, body)).await?;
                response
                    .extensions_mut()
                    .insert(Outcome::WouldReject(reason));
                return Ok(response);
            }
            let status = reason.response(dpop_core::Role::ResourceServer).status;
            tracing::info!(target: "dpop::rejection", reason = reason.as_str(), status, method = %parts.method, path = parts.uri.path(), detail = %rejection.error, "request refused");
            events.outcome(Outcome::Rejected(reason), started.elapsed());
            let nonce_error = matches!(
                reason,
                Reason::NonceRequired | Reason::NonceStale | Reason::NonceInvalid
            );
            let nonce = if nonce_error {
                events.nonce_challenge();
                let now = shared
                    .settings
                    .clock
                    .now()
                    .unwrap_or(UnixTime::from_secs(0));
                shared
                    .settings
                    .nonces
                    .as_ref()
                    .and_then(|n| n.issue(now).ok())
            } else {
                None
            };
            // For the host the client used, and only a host the `htu` rule allows.
            let resource_metadata = shared
                .metadata
                .as_ref()
                .and_then(|_| {
                    let peer = parts.extensions.get::<PeerAddr>().map(|p| p.0.ip());
                    shared.htu_rule.base(&parts.uri, &parts.headers, peer).ok()
                })
                .map(|base| metadata_url(&base, resource_path.unwrap_or_default()));
            let ctx = RejectionContext {
                challenges: &shared.challenges,
                bearer_allowed: policy.mode == DpopMode::AllowBearer,
                scheme_used: rejection.scheme,
                nonce,
                scopes: &rejection.missing_scopes,
                resource_metadata: resource_metadata.as_deref(),
            };
            let mut response = build_rejection::<ResBody>(&rejection.error, &ctx);
            refused(&mut response, reason, target);
            Ok(response)
        }
    }
}

/// What a refusal tells the server that logs it: the outcome and the canonical target
/// the layer judged (in the response's extensions, where the request's are gone).
fn refused<B>(response: &mut Response<B>, reason: Reason, target: AuthorizedTarget) {
    let extensions = response.extensions_mut();
    extensions.insert(Outcome::Rejected(reason));
    extensions.insert(target);
}

/// The route policy, the route's own resource path (RFC 9728) if it has one, and the
/// target to judge and forward, from one parse of the request
/// target. Non-canonical targets are refused, and so are paths that a lenient server
/// would route elsewhere (letter case, format suffixes); a route that opts in may receive encoded slashes (see
/// [`RoutePolicy::dangerous_forward_encoded_slashes`]).
fn resolve<'a, St, B>(
    shared: &'a Shared<St>,
    req: &Request<B>,
) -> Result<(&'a RoutePolicy, Option<&'a str>, AuthorizedTarget), TargetError> {
    let method = req.method();
    dpop_core::target::check_method(method.as_str())?;
    let uri = req.uri();
    // HTTP/1 requests must use origin-form; HTTP/2 and later carry the scheme and
    // authority in pseudo-headers, and their `:path` is the origin-form target.
    if req.version() < http::Version::HTTP_2
        && (uri.scheme().is_some() || uri.authority().is_some())
    {
        return Err(TargetError::NotOriginForm);
    }
    let raw = uri.path_and_query().map_or("", |p| p.as_str());
    let (target, canonical) = match RequestTarget::parse(raw) {
        Ok(target) => (target, true),
        Err(TargetError::EncodedSlash) => (
            RequestTarget::dangerous_parse_with_encoded_slashes(raw)?,
            false,
        ),
        Err(e) => return Err(e),
    };
    let routes = &shared.settings.routes;
    let path = target.path();
    let index = routes.resolve_index(method, path);
    // An upstream that routes without case, or drops a format suffix, a trailing dot or
    // an NTFS stream name, would serve what another rule governs.
    if routes.resolve_index_loosely(method, path) != index {
        return Err(TargetError::AmbiguousRoute);
    }
    let policy = routes.policy_at(index);
    if !canonical {
        // Whether `%2F` is data or a separator to the upstream, the route is this one.
        let decoded = path.replace("%2F", "/");
        let same_route = routes.resolve_index(method, &decoded) == index
            && routes.resolve_index_loosely(method, &decoded) == index;
        if !policy.forwards_encoded_slashes() || !same_route {
            return Err(TargetError::EncodedSlash);
        }
    }
    let route = routes.route_at(index);
    let target = AuthorizedTarget::new(
        target.as_str().to_owned(),
        canonical,
        route.and_then(|r| r.id),
    );
    let resource_path = route.and_then(|r| r.resource_path());
    Ok((policy, resource_path, target))
}

/// The required scopes `token` lacks, in the route's order.
fn missing_scopes(token: &AccessToken, required: &[String]) -> Vec<String> {
    required
        .iter()
        .filter(|r| !token.scopes.iter().any(|s| s == *r))
        .cloned()
        .collect()
}

/// RFC 8705 §3: a token bound to a client certificate (`cnf.x5t#S256`) is accepted only
/// over a connection that presented that certificate (thumbprints compare in constant
/// time). Unbound tokens pass.
fn certificate_binding(token: &AccessToken, req: &Parts) -> Result<(), RequestError> {
    let Some(bound) = &token.x5t_s256 else {
        return Ok(());
    };
    match req.extensions.get::<ClientCertificate>() {
        Some(cert) if cert.thumbprint == *bound => Ok(()),
        presented => Err(RequestError::CertificateMismatch {
            presented: presented.is_some(),
        }),
    }
}

/// Whether `path` asks for an RFC 9728 document, for any of the public URLs.
pub(crate) fn is_metadata_path<St>(shared: &Shared<St>, path: &str) -> bool {
    shared.metadata.as_ref().is_some_and(|m| {
        std::iter::once("")
            .chain(shared.htu_rule.prefixes())
            .any(|prefix| m.find(path, prefix).is_some())
    })
}

impl<St: AsyncReplayStore> Shared<St> {
    async fn authenticate(
        &self,
        req: &Parts,
        policy: &RoutePolicy,
        path: &str,
        now: UnixTime,
    ) -> Result<Authenticated, Rejection> {
        // The host first: a request for a host this server does not serve is refused
        // before any token or proof is looked at.
        let peer: Option<IpAddr> = req.extensions.get::<PeerAddr>().map(|p| p.0.ip());
        let htu = self
            .htu_rule
            .htu(&req.uri, &req.headers, peer, path)
            .map_err(|e| Rejection::new(e, None))?;
        let mut values = req.headers.get_all(header::AUTHORIZATION).iter();
        let first = values.next();
        if values.next().is_some() {
            return Err(Rejection::new(RequestError::MultipleAuthorizations, None));
        }
        let Some(value) = first else {
            return Err(Rejection::new(RequestError::CredentialsMissing, None));
        };
        // RFC 9110 §11.6.2: credentials = auth-scheme [ 1*SP ( token68 / #auth-param ) ].
        let malformed = || Rejection::new(RequestError::MalformedAuthorization, None);
        let value = value.to_str().map_err(|_| malformed())?;
        let (scheme, credentials) = value.split_once(' ').ok_or_else(malformed)?;
        let token = credentials.trim_start_matches(' ');
        if scheme.eq_ignore_ascii_case("dpop") {
            if !dpop_core::challenge::is_token68(token) {
                return Err(Rejection::new(
                    RequestError::MalformedAuthorization,
                    Some(Scheme::Dpop),
                ));
            }
            self.authenticate_dpop(req, policy, &htu, token, now).await
        } else if scheme.eq_ignore_ascii_case("bearer") {
            if !dpop_core::challenge::is_token68(token) {
                return Err(Rejection::new(
                    RequestError::MalformedAuthorization,
                    Some(Scheme::Bearer),
                ));
            }
            self.authenticate_bearer(req, policy, token, now).await
        } else {
            // A scheme this resource does not accept is no credentials at all for it.
            Err(Rejection::new(RequestError::CredentialsMissing, None))
        }
    }

    async fn authenticate_bearer(
        &self,
        req: &Parts,
        policy: &RoutePolicy,
        token: &str,
        now: UnixTime,
    ) -> Result<Authenticated, Rejection> {
        let bearer = Some(Scheme::Bearer);
        let at = self
            .cache
            .verify(self.tokens.as_ref(), token, &Ath::of_token(token), now)
            .await
            .map_err(|e| Rejection::new(e, bearer))?;
        // RFC 9449 §7.2: a DPoP-bound token must never be accepted as a Bearer token.
        if at.jkt.is_some() {
            return Err(Rejection::new(RequestError::BearerDowngrade, bearer));
        }
        certificate_binding(&at, req).map_err(|e| Rejection::new(e, bearer))?;
        if policy.mode != DpopMode::AllowBearer {
            return Err(Rejection::new(RequestError::BearerNotAllowed, bearer));
        }
        let missing = missing_scopes(&at, &policy.scopes);
        if !missing.is_empty() {
            return Err(Rejection::insufficient_scope(Scheme::Bearer, missing));
        }
        Ok(Authenticated {
            identity: DpopIdentity {
                subject: at.subject,
                client_id: at.client_id,
                jkt: None,
                scopes: at.scopes,
                scheme: Scheme::Bearer,
            },
            renew_nonce: false,
            outcome: Outcome::AcceptedBearer,
        })
    }

    async fn authenticate_dpop(
        &self,
        req: &Parts,
        policy: &RoutePolicy,
        htu: &Htu,
        token: &str,
        now: UnixTime,
    ) -> Result<Authenticated, Rejection> {
        let dpop = Some(Scheme::Dpop);
        let reject = |e: Error| Rejection::new(e, dpop);
        // Hashed once: the token cache's key and the proof's expected `ath`.
        let ath = Ath::of_token(token);
        let at = self
            .cache
            .verify(self.tokens.as_ref(), token, &ath, now)
            .await
            .map_err(reject)?;
        let jkt = at
            .jkt
            .clone()
            .ok_or_else(|| Rejection::new(RequestError::TokenNotBound, dpop))?;
        // Before the proof: a refused request leaves no replay record behind.
        certificate_binding(&at, req).map_err(|e| Rejection::new(e, dpop))?;
        let verifier = if policy.require_nonce {
            self.nonce_verifier
                .as_ref()
                .ok_or_else(|| reject(Error::Unreachable("nonce route without nonce verifier")))?
        } else {
            &self.verifier
        };
        let proofs = req
            .headers
            .get_all("dpop")
            .iter()
            .map(HeaderValue::as_bytes);
        let request =
            ProofRequest::new(req.method.as_str(), htu).with_access_token_hash(&ath, &jkt);
        let unrecorded = verifier.verify(proofs, &request, now).map_err(reject)?;
        // Scope before the replay record: a refused request leaves nothing behind.
        let missing = missing_scopes(&at, &policy.scopes);
        if !missing.is_empty() {
            return Err(Rejection::insufficient_scope(Scheme::Dpop, missing));
        }
        let iat_offset = i64::try_from(unrecorded.iat().as_secs()).unwrap_or(i64::MAX)
            - i64::try_from(now.as_secs()).unwrap_or(i64::MAX);
        let renew_nonce = unrecorded.should_renew_nonce();
        let outcome = match unrecorded.record_async(&self.store).await {
            Ok(_) => Outcome::Accepted,
            Err(e @ Error::ReplayStore(_)) if self.settings.fails_open() => {
                tracing::error!(target: "dpop::rejection", reason = e.reason().as_str(), "replay store failed; request let through because fail-open is configured");
                Outcome::FailedOpen(e.reason())
            }
            Err(e) => return Err(reject(e)),
        };
        self.settings.events.proof_accepted(iat_offset);
        Ok(Authenticated {
            identity: DpopIdentity {
                subject: at.subject,
                client_id: at.client_id,
                jkt: Some(jkt),
                scopes: at.scopes,
                scheme: Scheme::Dpop,
            },
            renew_nonce,
            outcome,
        })
    }
}
