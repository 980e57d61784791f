//! One access-log line and one `http_server_request_duration_seconds` observation per
//! request, at target [`dpop_server::ACCESS_TARGET`] (`dpop::access`), in the process's
//! log format.
//!
//! A line names the peer, the method, the canonical path the layer routed on (never the
//! raw target, never the query string), the status, the duration to the response head,
//! the DPoP outcome and reason code, the caller (`client_id`, `sub`, key thumbprint),
//! the route and, when the request was forwarded, the upstream and its duration. It
//! never holds a token, a proof, a cookie or any other header. What the layer and the
//! proxy learnt travels back to the server in the response's extensions ([`Outcome`],
//! [`AuthorizedTarget`], [`Forwarded`]); with `log_requests = false` the proxy copies
//! nothing and no line is formatted.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dpop_server::http::{ActiveRequest, method_label};
use dpop_tower::{AuthorizedTarget, DpopIdentity, Outcome};
use http::{Method, Response};

use crate::metrics::{Metrics, RouteLabels};

/// What the proxy tells the access log about a forwarded request.
#[derive(Clone, Debug)]
pub(crate) struct Forwarded {
    /// The target the layer authorised and the proxy forwarded.
    pub(crate) target: AuthorizedTarget,
    /// The caller, copied only when lines are written.
    pub(crate) caller: Option<Caller>,
    /// The upstream's name (its URL, as in the other logs).
    pub(crate) upstream: Arc<str>,
    /// Time from sending to the upstream's response head (or its failure).
    pub(crate) upstream_elapsed: Option<Duration>,
}

/// Who the layer verified, as logged: never the token or the proof.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Caller {
    pub(crate) client_id: Option<String>,
    pub(crate) sub: Option<String>,
    pub(crate) jkt: Option<String>,
}

impl Caller {
    pub(crate) fn of(identity: &DpopIdentity) -> Self {
        Self {
            client_id: identity.client_id.clone(),
            sub: identity.subject.clone(),
            jkt: identity.jkt.as_ref().map(|j| j.as_str().to_owned()),
        }
    }
}

/// The outcome as logged, and its reason code (empty when accepted).
pub(crate) fn outcome_fields(outcome: Option<&Outcome>) -> (&'static str, &'static str) {
    match outcome {
        None => ("unchecked", ""),
        Some(Outcome::Accepted) => ("accepted", ""),
        Some(Outcome::AcceptedBearer) => ("accepted_bearer", ""),
        Some(Outcome::Rejected(r)) => ("rejected", r.as_str()),
        Some(Outcome::WouldReject(r)) => ("would_reject", r.as_str()),
        Some(Outcome::FailedOpen(r)) => ("failed_open", r.as_str()),
        Some(_) => ("other", ""),
    }
}

/// The access log and request metrics of one listener.
#[derive(Clone, Debug)]
pub(crate) struct RequestLog {
    metrics: Arc<Metrics>,
}

/// A request being served: when it started and its method.
#[derive(Debug)]
pub(crate) struct Started {
    at: Instant,
    method: Method,
    _active: ActiveRequest,
}

impl RequestLog {
    pub(crate) fn new(metrics: Arc<Metrics>) -> Self {
        Self { metrics }
    }

    /// A request head arrived.
    pub(crate) fn start(&self, method: &Method) -> Started {
        Started {
            at: Instant::now(),
            method: method.clone(),
            _active: self.metrics.http().active(),
        }
    }

    /// The response head is ready: observe it and, when `enabled`, log it. Takes the
    /// facts out of the response's extensions (the client never sees them anyway).
    /// `routes` and `enabled` come from the configuration the request was served with.
    pub(crate) fn finish<B>(
        &self,
        started: Started,
        peer: SocketAddr,
        response: &mut Response<B>,
        routes: &RouteLabels,
        enabled: bool,
    ) {
        let elapsed = started.at.elapsed();
        let status = response.status().as_u16();
        let extensions = response.extensions_mut();
        let forwarded = extensions.remove::<Forwarded>();
        let refused_target = extensions.remove::<AuthorizedTarget>();
        let outcome = extensions.remove::<Outcome>();
        let target = forwarded
            .as_ref()
            .map(|f| &f.target)
            .or(refused_target.as_ref());
        let route = routes.get(target.and_then(AuthorizedTarget::route_id));
        self.metrics
            .http()
            .server(method_label(&started.method), status, route, elapsed);
        if !enabled {
            return;
        }
        let (outcome, reason) = outcome_fields(outcome.as_ref());
        let caller = forwarded.as_ref().and_then(|f| f.caller.as_ref());
        line(&Line {
            peer: Some(peer),
            method: started.method.as_str(),
            path: target.map(AuthorizedTarget::path),
            status,
            elapsed,
            outcome,
            reason,
            caller,
            route,
            upstream: forwarded.as_ref().map(|f| &*f.upstream),
            upstream_elapsed: forwarded.as_ref().and_then(|f| f.upstream_elapsed),
        });
    }
}

/// One access-log line's fields.
pub(crate) struct Line<'a> {
    /// The client's address (the authorizer does not know it: its caller is a proxy).
    pub(crate) peer: Option<SocketAddr>,
    pub(crate) method: &'a str,
    pub(crate) path: Option<&'a str>,
    pub(crate) status: u16,
    pub(crate) elapsed: Duration,
    pub(crate) outcome: &'static str,
    pub(crate) reason: &'static str,
    pub(crate) caller: Option<&'a Caller>,
    pub(crate) route: &'a str,
    pub(crate) upstream: Option<&'a str>,
    pub(crate) upstream_elapsed: Option<Duration>,
}

/// Milliseconds, to the microsecond.
pub(crate) fn millis(d: Duration) -> f64 {
    (d.as_secs_f64() * 1_000_000.0).round() / 1000.0
}

/// Writes one line at `dpop::access` (the gateway's requests and the authorizer's
/// checks alike). Absent values are left out of the line.
pub(crate) fn line(l: &Line<'_>) {
    let none = Caller::default();
    let caller = l.caller.unwrap_or(&none);
    tracing::info!(
        target: "dpop::access",
        peer = l.peer.map(tracing::field::display),
        method = l.method,
        path = l.path,
        status = l.status,
        duration_ms = millis(l.elapsed),
        outcome = l.outcome,
        reason = Some(l.reason).filter(|r| !r.is_empty()),
        client_id = caller.client_id.as_deref(),
        sub = caller.sub.as_deref(),
        jkt = caller.jkt.as_deref(),
        route = l.route,
        upstream = l.upstream,
        upstream_ms = l.upstream_elapsed.map(millis),
        "request"
    );
}
