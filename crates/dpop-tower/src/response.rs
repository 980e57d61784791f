//! Rejection responses exactly as RFC 9449 §7 and RFC 6750 §3 describe them. The body
//! is empty: the RFC error code travels in `WWW-Authenticate`, and the detailed reason
//! code goes to logs and metrics only.

use dpop_core::{Challenge, Error, Reason, Role};
use http::{HeaderValue, Response, StatusCode, header};

use crate::identity::Scheme;

/// What shapes a rejection besides the error itself.
pub(crate) struct RejectionContext<'a> {
    /// The `algs` value for the DPoP challenge.
    pub(crate) algs: &'a str,
    /// The route also accepts Bearer tokens: send a Bearer challenge too.
    pub(crate) bearer_allowed: bool,
    /// The scheme the client used, when it can be told (RFC 9449 §7.2 rule b).
    pub(crate) scheme_used: Option<Scheme>,
    /// A fresh nonce to send in `DPoP-Nonce`.
    pub(crate) nonce: Option<String>,
    /// `realm` for the challenges.
    pub(crate) realm: Option<&'a str>,
    /// The scopes the route requires (for `insufficient_scope`).
    pub(crate) scopes: &'a [String],
}

fn with_error(
    mut c: Challenge,
    code: &str,
    description: &str,
    realm_first: Option<&str>,
) -> Challenge {
    if let Some(realm) = realm_first {
        c = c.clone().with_realm(realm).unwrap_or(c);
    }
    let c2 = c.clone().with_error(code).unwrap_or_else(|_| c.clone());
    c2.clone().with_error_description(description).unwrap_or(c2)
}

fn bare(c: Challenge, realm: Option<&str>) -> Challenge {
    match realm {
        Some(r) => c.clone().with_realm(r).unwrap_or(c),
        None => c,
    }
}

/// Builds the response for `error`.
pub(crate) fn rejection<B: Default>(error: &Error, ctx: &RejectionContext<'_>) -> Response<B> {
    let reason = error.reason();
    let r = reason.response(Role::ResourceServer);
    let mut builder = Response::builder()
        .status(StatusCode::from_u16(r.status).unwrap_or(StatusCode::UNAUTHORIZED));
    if r.status >= 500 {
        builder = builder.header(header::RETRY_AFTER, "1");
        return builder
            .body(B::default())
            .unwrap_or_else(|_| fallback(StatusCode::SERVICE_UNAVAILABLE));
    }

    let dpop_bare = bare(Challenge::dpop(), ctx.realm);
    let dpop_bare = dpop_bare
        .clone()
        .with_algs(ctx.algs.split(' '))
        .unwrap_or(dpop_bare);
    let mut challenges = Vec::with_capacity(2);
    match r.error {
        // RFC 6750 §3.1 / RFC 9449 §7.2 rule a: no credentials, no error information.
        None => {
            if ctx.bearer_allowed {
                challenges.push(bare(Challenge::bearer(), ctx.realm));
            }
            challenges.push(dpop_bare);
        }
        Some(code) => {
            let code = code.as_str();
            let description = error.description();
            let mut dpop = with_error(Challenge::dpop(), code, description, ctx.realm);
            dpop = dpop.clone().with_algs(ctx.algs.split(' ')).unwrap_or(dpop);
            if reason == Reason::InsufficientScope && !ctx.scopes.is_empty() {
                dpop = dpop
                    .clone()
                    .with_scope(&ctx.scopes.join(" "))
                    .unwrap_or(dpop);
            }
            let bearer_err = with_error(Challenge::bearer(), code, description, ctx.realm);
            let ambiguous = reason == Reason::MultipleAuthorizations;
            match (ctx.scheme_used, ctx.bearer_allowed) {
                // Rule c (Fig. 19): the scheme cannot be told: the error goes in both.
                _ if ambiguous && ctx.bearer_allowed => {
                    challenges.push(bearer_err);
                    challenges.push(dpop);
                }
                // Rule b (Fig. 18): the error goes in the challenge of the scheme used.
                (Some(Scheme::Bearer), true) => {
                    challenges.push(bearer_err);
                    challenges.push(dpop_bare);
                }
                (_, true) => {
                    challenges.push(bare(Challenge::bearer(), ctx.realm));
                    challenges.push(dpop);
                }
                (_, false) => challenges.push(dpop),
            }
        }
    }
    if let Ok(v) = HeaderValue::from_str(&dpop_core::challenge::render(&challenges)) {
        builder = builder.header(header::WWW_AUTHENTICATE, v);
    }
    if let Some(nonce) = &ctx.nonce
        && let Ok(v) = HeaderValue::from_str(nonce)
    {
        builder = builder
            .header("dpop-nonce", v)
            .header(header::CACHE_CONTROL, "no-store");
    }
    builder
        .body(B::default())
        .unwrap_or_else(|_| fallback(StatusCode::UNAUTHORIZED))
}

fn fallback<B: Default>(status: StatusCode) -> Response<B> {
    let mut r = Response::new(B::default());
    *r.status_mut() = status;
    r
}
