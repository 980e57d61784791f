//! curl's exit codes for what went wrong on the way, and messages that carry the
//! underlying cause (the resolver's, the socket's, the TLS library's), not only
//! "error sending request".

use std::error::Error as StdError;
use std::fmt;
use std::time::Duration;

use dpop_client::ClientError;

/// curl: "Couldn't resolve host".
pub(super) const RESOLVE: u8 = 6;
/// curl: "Failed to connect to host".
pub(super) const CONNECT: u8 = 7;
/// curl: the HTTP status was 400 or more, with --fail.
pub(super) const HTTP_ERROR: u8 = 22;
/// curl: "Write error" (the output file or standard output).
pub(super) const WRITE: u8 = 23;
/// curl: "Operation timeout".
pub(super) const TIMEOUT: u8 = 28;
/// curl: "SSL connect error".
pub(super) const TLS: u8 = 35;
/// curl: "Too many redirects".
pub(super) const TOO_MANY_REDIRECTS: u8 = 47;
/// curl: "Failure with receiving network data".
pub(super) const RECEIVE: u8 = 56;
/// curl: "The remote server's SSL certificate ... was deemed not OK".
pub(super) const CERTIFICATE: u8 = 60;
/// Any other failure (a refused token request, an unusable proof), as for the other
/// `dpop` commands.
pub(super) const OTHER: u8 = 1;
/// A usage error found once the transfer started (a redirect to a scheme other than
/// http(s)), as for the other `dpop` commands.
pub(super) const USAGE: u8 = 2;

/// Why the transfer stopped: curl's exit code and one line for stderr.
#[derive(Debug)]
pub(crate) struct Failure {
    pub(crate) code: u8,
    pub(crate) message: String,
}

impl Failure {
    pub(super) fn new(code: u8, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    pub(super) fn timeout(limit: Duration) -> Self {
        Self::new(
            TIMEOUT,
            format!(
                "the operation timed out after {} s (-m/--max-time)",
                limit.as_secs_f64()
            ),
        )
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "({}) {}", self.code, self.message)
    }
}

/// The host name the resolver could not resolve; the resolver of `dpop curl` returns
/// it so that exit code 6 does not depend on how an error message is worded.
#[derive(Debug)]
pub(super) struct CannotResolve {
    pub(super) host: String,
    pub(super) cause: Option<std::io::Error>,
}

impl fmt::Display for CannotResolve {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cannot resolve the host {}", self.host)?;
        if let Some(c) = &self.cause {
            write!(f, ": {c}")?;
        }
        Ok(())
    }
}

impl StdError for CannotResolve {}

/// Each error of the chain, `io::Error`s opened up (their `source` skips the error they
/// wrap, which is where rustls puts its own).
fn chain<'a>(e: &'a (dyn StdError + 'static)) -> Vec<&'a (dyn StdError + 'static)> {
    let mut all = Vec::new();
    let mut next = Some(e);
    while let Some(e) = next {
        all.push(e);
        next = match e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            Some(inner) => Some(inner as &(dyn StdError + 'static)),
            None => e.source(),
        };
    }
    all
}

/// The messages of `errors` joined with ": ", each said once (wrappers often repeat
/// their cause's text).
fn causes(errors: &[&(dyn StdError + 'static)]) -> String {
    let mut parts: Vec<String> = Vec::new();
    for e in errors {
        let text = e.to_string();
        if !text.is_empty() && !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
    }
    parts.join(": ")
}

/// curl's code for a failed HTTP exchange with `url`, and the message with its causes.
pub(crate) fn transport(e: &reqwest::Error, url: &reqwest::Url) -> Failure {
    let all = chain(e);
    // The top error only says "error sending request for url (...)": the causes say why.
    let detail = causes(all.get(1..).unwrap_or_default());
    let detail = if detail.is_empty() {
        e.to_string()
    } else {
        detail
    };
    if let Some(r) = all.iter().find_map(|e| e.downcast_ref::<CannotResolve>()) {
        return Failure::new(RESOLVE, r.to_string());
    }
    if all.iter().any(|e| e.to_string().starts_with("dns error")) {
        return Failure::new(
            RESOLVE,
            format!("cannot resolve the host of {url}: {detail}"),
        );
    }
    if let Some(tls) = all.iter().find_map(|e| e.downcast_ref::<rustls::Error>()) {
        return match tls {
            rustls::Error::InvalidCertificate(why) => Failure::new(
                CERTIFICATE,
                format!(
                    "the certificate of {} is not trusted ({why:?}): {detail}; \
                     give its CA with --cacert FILE",
                    url.host_str().unwrap_or_default()
                ),
            ),
            _ => Failure::new(TLS, format!("TLS handshake with {url} failed: {detail}")),
        };
    }
    if e.is_timeout() {
        return Failure::new(TIMEOUT, format!("timed out talking to {url}: {detail}"));
    }
    if e.is_connect() {
        return Failure::new(CONNECT, format!("cannot connect to {url}: {detail}"));
    }
    if e.is_body() || e.is_decode() || e.is_request() {
        return Failure::new(RECEIVE, format!("{url}: {detail}"));
    }
    Failure::new(OTHER, format!("{url}: {detail}"))
}

/// A failed metadata lookup: curl's code for the first URL when none could be reached
/// (6, 7, 28, 35, 60 as for any transfer), else 1.
pub(crate) fn discovery(e: &dpop_discovery::DiscoveryError) -> Failure {
    let reached = e
        .unreachable()
        .and_then(|(url, cause)| Some((reqwest::Url::parse(url).ok()?, cause)));
    match reached {
        Some((url, cause)) => {
            let failure = transport(cause, &url);
            Failure::new(
                failure.code,
                format!("issuer metadata: {}", failure.message),
            )
        }
        None => Failure::new(OTHER, format!("issuer metadata: {e}")),
    }
}

/// A failure of the DPoP middleware: the token source, the proof, or the exchange.
pub(super) fn middleware(e: reqwest_middleware::Error, url: &reqwest::Url) -> Failure {
    match e {
        reqwest_middleware::Error::Reqwest(e) => transport(&e, url),
        reqwest_middleware::Error::Middleware(e) => match e.downcast::<ClientError>() {
            Ok(ClientError::Http(e)) => transport(&e, url),
            Ok(ClientError::Discovery(e)) => discovery(&e),
            Ok(ce @ (ClientError::Key(_) | ClientError::SubjectToken(_))) => {
                Failure::new(USAGE, ce.to_string())
            }
            Ok(other) => Failure::new(OTHER, other.to_string()),
            Err(other) => Failure::new(OTHER, format!("{other:#}")),
        },
    }
}

/// Whether `e` is a failure to connect, where sending the request again is safe: the
/// server never saw it.
pub(super) fn is_connect_failure(e: &reqwest_middleware::Error) -> bool {
    let reqwest = match e {
        reqwest_middleware::Error::Reqwest(e) => Some(e),
        reqwest_middleware::Error::Middleware(e) => match e.downcast_ref::<ClientError>() {
            Some(ClientError::Http(e)) => Some(e),
            _ => None,
        },
    };
    reqwest.is_some_and(reqwest::Error::is_connect)
}
