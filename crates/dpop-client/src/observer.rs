//! A window on what the client does on the wire: each signed attempt and its response,
//! each retry and each clock correction, at resource servers and token endpoints alike.
//! It exists for `-v` output, debugging logs and metrics; the retry rules themselves stay
//! in [`crate::session`], so an observer sees them and cannot change them.

use std::fmt;

use reqwest::{Request, Response};

use crate::error::ClientError;

/// Receives [`Event`]s. Set one with [`DpopMiddleware::with_observer`](crate::DpopMiddleware::with_observer);
/// token sources made from that middleware report through it too.
///
/// `event` runs inline on the request path: keep it quick and never block. Requests
/// carry the access token and the proof, and token requests carry client credentials
/// (`Authorization: Basic`, a body with secrets or assertions): an observer that shows
/// or stores them must redact them.
pub trait Observer: Send + Sync + fmt::Debug {
    /// One thing that happened.
    fn event(&self, event: &Event<'_>);
}

/// Where a signed request goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Endpoint {
    /// A resource server (requests sent through the middleware).
    Resource,
    /// An authorization server's token endpoint (token sources).
    Token,
}

/// Why a request is sent again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Retry {
    /// The server answered with a nonce challenge (`use_dpop_nonce`).
    Nonce,
    /// The server refused the proof's `iat` and its `Date` showed a clock difference.
    ClockSkew,
    /// The resource server refused the access token; the token source got a new one.
    Token,
}

impl fmt::Display for Retry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Nonce => "the server asked for a DPoP nonce",
            Self::ClockSkew => "the server refused the proof's iat and its clock differs",
            Self::Token => "the server refused the access token; a new one was fetched",
        })
    }
}

/// What an [`Observer`] is told.
#[derive(Debug)]
#[non_exhaustive]
pub enum Event<'a> {
    /// An attempt is about to be sent, signed with a fresh proof (and the access token,
    /// for a resource).
    Sending {
        /// Where it goes.
        endpoint: Endpoint,
        /// The request as signed (its body may be a stream: do not consume it).
        request: &'a Request,
    },
    /// The attempt's response arrived (status and headers; the body is the caller's).
    Received {
        /// Where it came from.
        endpoint: Endpoint,
        /// The response.
        response: &'a Response,
    },
    /// The request is sent again (each kind at most once per request).
    Retrying {
        /// The URL.
        url: &'a url::Url,
        /// Why.
        reason: Retry,
    },
    /// The issuer's metadata was looked up (RFC 8414, then OpenID discovery), once per
    /// token source.
    Metadata {
        /// The issuer asked about.
        issuer: &'a str,
        /// The document's URL and the token endpoint it names, or why there is none.
        result: Result<(&'a str, &'a str), &'a ClientError>,
    },
    /// The server's clock differs from the local clock by `offset_secs` (server minus
    /// local); proofs for `origin` are dated accordingly from now on.
    ClockCorrected {
        /// The origin (`scheme://host:port`).
        origin: &'a str,
        /// Seconds, server minus local.
        offset_secs: i64,
    },
}
