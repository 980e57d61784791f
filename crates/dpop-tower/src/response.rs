//! Rejection responses exactly as RFC 9449 §7 and RFC 6750 §3 describe them. The body
//! is empty: the RFC error code travels in `WWW-Authenticate`, and the detailed reason
//! code goes to logs and metrics only.

use dpop_core::{Algorithm, Challenge, Error, Reason, Role};
use http::{HeaderValue, Response, StatusCode, header};

use crate::identity::Scheme;

/// The parts of `WWW-Authenticate` that do not change from one request to the next,
/// built once when the layer is built.
#[derive(Debug)]
pub(crate) struct Challenges {
    /// `DPoP` with `realm`: the start of every DPoP challenge that carries an error.
    dpop: Challenge,
    /// `Bearer` with `realm`: the Bearer challenge without an error, and the start of one
    /// with an error.
    bearer: Challenge,
    /// The accepted algorithms, space-separated, for `algs`.
    algs: String,
    /// `DPoP` with `realm` and `algs`: the challenge without an error.
    dpop_bare: Challenge,
    /// The whole header for a request without credentials (RFC 6750 §3.1, RFC 9449 §7.2
    /// rule a): `[DPoP only, Bearer and DPoP]`, for a layer without `resource_metadata`.
    no_credentials: [Option<HeaderValue>; 2],
}

impl Challenges {
    /// The challenges for a server accepting `algs` in protection space `realm`. A realm
    /// that is not printable ASCII is left out, as before any request.
    pub(crate) fn new(algs: &[Algorithm], realm: Option<&str>) -> Self {
        let with_realm = |c: Challenge| match realm {
            Some(r) => c.clone().with_realm(r).unwrap_or(c),
            None => c,
        };
        let dpop = with_realm(Challenge::dpop());
        let bearer = with_realm(Challenge::bearer());
        let algs = algs.iter().map(|a| a.name()).collect::<Vec<_>>().join(" ");
        let dpop_bare = dpop
            .clone()
            .with_algs(algs.split(' '))
            .unwrap_or_else(|_| dpop.clone());
        let header = |challenges: &[Challenge]| {
            HeaderValue::from_str(&dpop_core::challenge::render(challenges)).ok()
        };
        let no_credentials = [
            header(std::slice::from_ref(&dpop_bare)),
            header(&[bearer.clone(), dpop_bare.clone()]),
        ];
        Self {
            dpop,
            bearer,
            algs,
            dpop_bare,
            no_credentials,
        }
    }

    fn with_algs(&self, c: Challenge) -> Challenge {
        c.clone().with_param("algs", &self.algs).unwrap_or(c)
    }
}

/// What shapes a rejection besides the error itself.
pub(crate) struct RejectionContext<'a> {
    /// The challenges prepared for this layer.
    pub(crate) challenges: &'a Challenges,
    /// The route also accepts Bearer tokens: send a Bearer challenge too.
    pub(crate) bearer_allowed: bool,
    /// The scheme the client used, when it can be told (RFC 9449 §7.2 rule b).
    pub(crate) scheme_used: Option<Scheme>,
    /// A fresh nonce to send in `DPoP-Nonce`.
    pub(crate) nonce: Option<String>,
    /// The scopes the token lacks (for `insufficient_scope`).
    pub(crate) scopes: &'a [String],
    /// The RFC 9728 metadata URL for the host the client used, for every challenge.
    pub(crate) resource_metadata: Option<&'a str>,
}

fn with_error(c: &Challenge, code: &str, description: &str) -> Challenge {
    let c2 = c.clone().with_error(code).unwrap_or_else(|_| c.clone());
    c2.clone().with_error_description(description).unwrap_or(c2)
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

    let prepared = ctx.challenges;
    // RFC 9728 §5.1: the metadata URL goes with every 401 and 403 challenge.
    let resource_metadata = ctx
        .resource_metadata
        .filter(|_| matches!(r.status, 401 | 403));
    let value = match (r.error, resource_metadata) {
        // RFC 6750 §3.1 / RFC 9449 §7.2 rule a: no credentials, no error information.
        (None, None) => prepared.no_credentials[usize::from(ctx.bearer_allowed)].clone(),
        (None, Some(url)) => {
            let mut challenges = vec![prepared.dpop_bare.clone()];
            if ctx.bearer_allowed {
                challenges.insert(0, prepared.bearer.clone());
            }
            render(challenges, Some(url))
        }
        (Some(code), url) => {
            let code = code.as_str();
            let description = error.description();
            // RFC 6750 §3.1: `insufficient_scope` names the scopes that are missing.
            let missing = (reason == Reason::InsufficientScope && !ctx.scopes.is_empty())
                .then(|| ctx.scopes.join(" "));
            let with_scope = |c: Challenge| match &missing {
                Some(scope) => c.clone().with_scope(scope).unwrap_or(c),
                None => c,
            };
            let dpop =
                with_scope(prepared.with_algs(with_error(&prepared.dpop, code, description)));
            let bearer_err = || with_scope(with_error(&prepared.bearer, code, description));
            let ambiguous = reason == Reason::MultipleAuthorizations;
            let challenges = match (ctx.scheme_used, ctx.bearer_allowed) {
                // Rule c (Fig. 19): the scheme cannot be told: the error goes in both.
                _ if ambiguous && ctx.bearer_allowed => vec![bearer_err(), dpop],
                // Rule b (Fig. 18): the error goes in the challenge of the scheme used.
                (Some(Scheme::Bearer), true) => {
                    vec![bearer_err(), prepared.with_algs(prepared.dpop.clone())]
                }
                (_, true) => vec![prepared.bearer.clone(), dpop],
                (_, false) => vec![dpop],
            };
            render(challenges, url)
        }
    };
    if let Some(v) = value {
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

/// The header for `challenges`, each with `resource_metadata` when there is one (RFC 9728
/// §5.1).
fn render(challenges: Vec<Challenge>, resource_metadata: Option<&str>) -> Option<HeaderValue> {
    let challenges: Vec<Challenge> = match resource_metadata {
        Some(url) => challenges
            .into_iter()
            .map(|c| c.clone().with_param("resource_metadata", url).unwrap_or(c))
            .collect(),
        None => challenges,
    };
    HeaderValue::from_str(&dpop_core::challenge::render(&challenges)).ok()
}

fn fallback<B: Default>(status: StatusCode) -> Response<B> {
    let mut r = Response::new(B::default());
    *r.status_mut() = status;
    r
}
