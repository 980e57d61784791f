//! `-v`: what goes over the wire, on stderr, in curl's `>`/`<`/`*` style. Secrets are
//! shortened: the access token and the proof show at most their first 8 characters and
//! length (the proof's claims are decoded beside it); other `Authorization` schemes,
//! `Proxy-Authorization` and cookies only their length; client credentials not at all.

use base64::Engine as _;
use dpop_client::{Endpoint, Event, Observer};
use reqwest::header::HeaderMap;

/// Characters of a token or proof shown: its start (for a JWT, part of its header),
/// never more, and only of a value at least [`SHOWN_FROM`] long (at most an eighth).
const SHOWN: usize = 8;
/// The shortest value whose first [`SHOWN`] characters are shown.
const SHOWN_FROM: usize = 64;

/// The `-v` observer of the DPoP middleware (resource requests, token requests, retries,
/// clock corrections).
#[derive(Debug)]
pub(super) struct Verbose;

impl Observer for Verbose {
    fn event(&self, event: &Event<'_>) {
        match event {
            Event::Sending { endpoint, request } => {
                if *endpoint == Endpoint::Token {
                    info(&format!("token request to {}", request.url()));
                }
                print_request(request);
            }
            Event::Received { response, .. } => print_response(response),
            Event::Metadata { issuer, result } => match result {
                Ok((document, token_endpoint)) => info(&format!(
                    "issuer metadata of {issuer} from {document}: token_endpoint {token_endpoint}"
                )),
                Err(e) => info(&format!("issuer {issuer}: {e}")),
            },
            Event::Retrying { url, reason } => {
                info(&format!("{reason}: sending {url} again with a fresh proof"));
            }
            Event::ClockCorrected {
                origin,
                offset_secs,
            } => {
                let way = if *offset_secs >= 0 {
                    "ahead of"
                } else {
                    "behind"
                };
                info(&format!(
                    "the clock of {origin} is {} s {way} this machine's: its proofs' iat \
                     now follow its clock",
                    offset_secs.unsigned_abs()
                ));
            }
            _ => {}
        }
    }
}

/// A `* ...` line.
pub(super) fn info(text: &str) {
    eprintln!("* {text}");
}

/// `value` cut to its first characters, with its length.
fn shorten(value: &str) -> String {
    match value.get(..SHOWN) {
        Some(head) if value.len() >= SHOWN_FROM => {
            format!("{head}...[{} bytes]", value.len())
        }
        _ => format!("[{} bytes]", value.len()),
    }
}

/// What `-v` shows of a header value: the credentials of `Authorization` (DPoP or
/// Bearer) and the proof shortened; those of any other `Authorization` scheme, of
/// `Proxy-Authorization`, and cookies not at all (their length only).
fn shown(name: &str, value: &[u8]) -> String {
    let text = String::from_utf8_lossy(value);
    let redacted = || format!("[redacted, {} bytes]", value.len());
    if name.eq_ignore_ascii_case("authorization") {
        return match text.split_once(' ') {
            Some((scheme, credentials))
                if scheme.eq_ignore_ascii_case("dpop") || scheme.eq_ignore_ascii_case("bearer") =>
            {
                format!("{scheme} {}", shorten(credentials))
            }
            Some((scheme, credentials)) if !scheme.is_empty() => {
                format!("{scheme} [redacted, {} bytes]", credentials.len())
            }
            _ => redacted(),
        };
    }
    if name.eq_ignore_ascii_case("dpop") {
        return shorten(&text);
    }
    if ["proxy-authorization", "cookie", "set-cookie"]
        .iter()
        .any(|secret| name.eq_ignore_ascii_case(secret))
    {
        return redacted();
    }
    text.into_owned()
}

/// The decoded claims of a proof (a compact JWS), as JSON text.
fn proof_claims(proof: &[u8]) -> Option<String> {
    let payload = std::str::from_utf8(proof).ok()?.split('.').nth(1)?;
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .ok()?;
    Some(String::from_utf8_lossy(&json).into_owned())
}

fn print_headers(prefix: char, headers: &HeaderMap) {
    for (name, value) in headers {
        eprintln!(
            "{prefix} {name}: {}",
            shown(name.as_str(), value.as_bytes())
        );
        if name.as_str() == "dpop"
            && let Some(claims) = proof_claims(value.as_bytes())
        {
            eprintln!("{prefix} DPoP claims: {claims}");
        }
    }
}

/// The request line and the headers set on the request (the HTTP library adds
/// `content-length` and `accept` as needed).
pub(super) fn print_request(request: &reqwest::Request) {
    let url = request.url();
    let target = match url.query() {
        Some(q) => format!("{}?{q}", url.path()),
        None => url.path().to_owned(),
    };
    eprintln!("> {} {target} {:?}", request.method(), request.version());
    let host = match url.port() {
        Some(port) => format!("{}:{port}", url.host_str().unwrap_or_default()),
        None => url.host_str().unwrap_or_default().to_owned(),
    };
    eprintln!("> host: {host}");
    print_headers('>', request.headers());
    eprintln!(">");
}

/// The status line and headers of a response.
pub(super) fn print_response(response: &reqwest::Response) {
    let status = response.status();
    eprintln!(
        "< {:?} {} {}",
        response.version(),
        status.as_u16(),
        status.canonical_reason().unwrap_or_default()
    );
    print_headers('<', response.headers());
    eprintln!("<");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_shortened_or_redacted() {
        let token = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJzdmMifQ.c2lnbmF0dXJlc2lnbmF0dXJl";
        let line = shown("Authorization", format!("DPoP {token}").as_bytes());
        assert_eq!(line, format!("DPoP eyJhbGci...[{} bytes]", token.len()));
        let line = shown("authorization", format!("Bearer {token}").as_bytes());
        assert_eq!(line, format!("Bearer eyJhbGci...[{} bytes]", token.len()));
        // A short token: its length only.
        assert_eq!(
            shown(
                "authorization",
                b"DPoP abcdefghijklmnopqrstuvwxyz0123456789"
            ),
            "DPoP [36 bytes]"
        );
        assert_eq!(
            shown("authorization", b"Basic c3ZjOnNlY3JldA=="),
            "Basic [redacted, 16 bytes]"
        );
        assert_eq!(
            shown(
                "authorization",
                b"Token abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqrstuvwxyz"
            ),
            "Token [redacted, 62 bytes]"
        );
        assert_eq!(shown("authorization", b"secret"), "[redacted, 6 bytes]");
        assert_eq!(shown("dpop", b"short"), "[5 bytes]");
        assert_eq!(
            shown("dpop", token.as_bytes()),
            format!("eyJhbGci...[{} bytes]", token.len())
        );
        for name in ["Cookie", "set-cookie", "Proxy-Authorization"] {
            assert_eq!(shown(name, b"sid=abc"), "[redacted, 7 bytes]", "{name}");
        }
        assert_eq!(shown("x-other", b"kept"), "kept");
    }
}
