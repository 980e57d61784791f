//! Hooks for metrics. Logs go through `tracing` (target `dpop::rejection` for refusals);
//! metrics backends implement [`DpopEvents`].
//!
//! For a server's access log, the layer also leaves the request's [`Outcome`] in the
//! extensions of every response it checked (none on `off` routes and for the RFC 9728
//! document), and on a refusal the [`crate::AuthorizedTarget`] it judged, when the target
//! was canonical: the path to log is that one, never the raw target.

use std::time::Duration;

use dpop_core::Reason;

/// The result of one request's DPoP processing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Outcome {
    /// Accepted with DPoP.
    Accepted,
    /// Accepted as a Bearer token on a route that allows it.
    AcceptedBearer,
    /// Refused with this reason.
    Rejected(Reason),
    /// Report-only route: would have been refused with this reason, forwarded anyway.
    WouldReject(Reason),
    /// The replay store failed and an explicit fail-open setting let the request through.
    FailedOpen(Reason),
}

/// Receives events; every method has a no-op default.
pub trait DpopEvents: Send + Sync + 'static {
    /// One request finished DPoP processing after `elapsed`.
    fn outcome(&self, outcome: Outcome, elapsed: Duration) {
        let _ = (outcome, elapsed);
    }
    /// A proof was accepted; `iat_offset_secs` is `iat - server time` (client clock skew).
    fn proof_accepted(&self, iat_offset_secs: i64) {
        let _ = iat_offset_secs;
    }
    /// A `use_dpop_nonce` challenge was sent.
    fn nonce_challenge(&self) {}
    /// The issuer's keys were fetched (`ok` false when the fetch failed).
    fn jwks_refresh(&self, ok: bool) {
        let _ = ok;
    }
}

/// Ignores every event.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoEvents;

impl DpopEvents for NoEvents {}
