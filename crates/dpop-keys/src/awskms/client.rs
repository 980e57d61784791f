//! The KMS JSON protocol over HTTPS: one signed `POST /` per action, a bounded answer,
//! and the failure sorted into what the caller must tell apart.

use std::io::Read as _;
use std::net::IpAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use reqwest::Url;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde_json::Value;

use super::AwsCredentials;
use super::sigv4::{self, AmzDate};

/// The largest answer read from KMS. Its answers are a few hundred bytes (a public key,
/// a signature, key metadata); anything larger is not KMS.
const MAX_RESPONSE: u64 = 64 * 1024;
/// The longest a connection may take to open, whatever the request's time limit.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// The longest KMS error message kept (its messages are one sentence).
const MAX_MESSAGE: usize = 300;

/// Where KMS is reached: the URL requests go to and the `Host` header they are signed
/// with.
#[derive(Clone, Debug)]
pub(super) struct Endpoint {
    url: Url,
    host: String,
}

impl Endpoint {
    /// The endpoint given in the key reference, or the region's public one.
    ///
    /// `https` only, except `http` to a loopback address (a local stand-in such as
    /// moto or LocalStack): the request carries a bearer-grade signature and, with
    /// temporary credentials, the session token. The KMS JSON protocol lives at `/`, so
    /// a path, query, fragment or user name is refused rather than dropped.
    pub(super) fn new(given: Option<&str>, region: &str) -> Result<Self, String> {
        let text = match given {
            Some(t) => t.to_owned(),
            None if region.starts_with("cn-") => format!("https://kms.{region}.amazonaws.com.cn"),
            None => format!("https://kms.{region}.amazonaws.com"),
        };
        let url = Url::parse(&text).map_err(|e| format!("endpoint {text:?} is not a URL: {e}"))?;
        let host = url
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| format!("endpoint {text:?} names no host"))?;
        match url.scheme() {
            "https" => {}
            "http" => {
                // The URL parser has already normalised the host (IPv6 in brackets,
                // IPv4 in dotted decimal).
                let bare = host.trim_start_matches('[').trim_end_matches(']');
                let loopback = bare.eq_ignore_ascii_case("localhost")
                    || bare.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback());
                if !loopback {
                    return Err(format!(
                        "endpoint {text:?} is plain http to a host that is not loopback: the signed requests and any session token would cross the network unencrypted; use https"
                    ));
                }
            }
            other => return Err(format!("endpoint {text:?}: scheme {other} is not https")),
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(format!(
                "endpoint {:?} carries a user name or password; credentials come from the environment",
                url.host_str().unwrap_or_default()
            ));
        }
        if url.path() != "/" || url.query().is_some() || url.fragment().is_some() {
            return Err(format!(
                "endpoint {text:?} has a path, query or fragment; KMS is served at / (give scheme://host[:port])"
            ));
        }
        let mut host = host.to_owned();
        if let Some(port) = url.port() {
            host = format!("{host}:{port}");
        }
        Ok(Self { url, host })
    }
}

impl core::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.url.as_str())
    }
}

/// Why a call did not return KMS's answer.
#[derive(Debug)]
pub(super) enum Failure {
    /// KMS (or what answers at the endpoint) refused: its error type
    /// (`AccessDeniedException`, …, or `HTTP 503` without one) and message.
    Service { kind: String, message: String },
    /// No answer within the time limit.
    TimedOut,
    /// The endpoint cannot be reached (DNS, connection, TLS).
    Transport(String),
    /// An answer that is not what KMS sends.
    Malformed(String),
}

/// A KMS client for one region and endpoint, with its credentials.
pub(super) struct Kms {
    http: reqwest::blocking::Client,
    pub(super) endpoint: Endpoint,
    pub(super) region: String,
    credentials: AwsCredentials,
    pub(super) timeout: Duration,
}

impl core::fmt::Debug for Kms {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Kms")
            .field("endpoint", &self.endpoint.to_string())
            .field("region", &self.region)
            .field("credentials", &self.credentials)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl Kms {
    /// A client whose every request is over within `timeout` (connecting within two
    /// seconds of it), keeping up to `idle` connections open.
    pub(super) fn new(
        endpoint: Endpoint,
        region: String,
        credentials: AwsCredentials,
        timeout: Duration,
        idle: usize,
    ) -> Result<Self, String> {
        let http = reqwest::blocking::Client::builder()
            .timeout(timeout)
            .connect_timeout(CONNECT_TIMEOUT.min(timeout))
            // A redirect would send the signed request elsewhere: KMS never redirects.
            .redirect(reqwest::redirect::Policy::none())
            .pool_max_idle_per_host(idle)
            .user_agent(concat!("dpop-keys/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("cannot set up the HTTP client: {}", chain(&e)))?;
        Ok(Self {
            http,
            endpoint,
            region,
            credentials,
            timeout,
        })
    }

    /// Calls `action` (`Sign`, `GetPublicKey`, …) with `body`; KMS's JSON answer (an
    /// empty object for an empty body or `null`).
    pub(super) fn call(&self, action: &str, body: &Value) -> Result<Value, Failure> {
        let payload = body.to_string();
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_err(|_| Failure::Transport("the system clock is before 1970".to_owned()))?;
        let date = AmzDate::from_unix(now.as_secs());
        let target = format!("TrentService.{action}");
        let mut signed: Vec<(&str, &str)> = vec![
            ("content-type", "application/x-amz-json-1.1"),
            ("host", &self.endpoint.host),
            ("x-amz-date", &date.stamp),
            ("x-amz-target", &target),
        ];
        if let Some(token) = &self.credentials.session_token {
            signed.push(("x-amz-security-token", token.as_str()));
        }
        let authorization = sigv4::authorization(
            &sigv4::Key {
                access_key_id: &self.credentials.access_key_id,
                secret_access_key: &self.credentials.secret_access_key,
            },
            &self.region,
            "kms",
            &date,
            &sigv4::Request {
                method: "POST",
                path: "/",
                query: "",
                headers: &signed,
                payload: payload.as_bytes(),
            },
        );
        let mut headers = HeaderMap::new();
        for (name, value) in signed
            .iter()
            .copied()
            .chain([("authorization", authorization.as_str())])
        {
            let mut value = HeaderValue::from_str(value).map_err(|_| {
                Failure::Transport(format!("the {name} header cannot be sent as given"))
            })?;
            value.set_sensitive(matches!(name, "authorization" | "x-amz-security-token"));
            headers.insert(HeaderName::from_static(name), value);
        }
        let response = self
            .http
            .post(self.endpoint.url.clone())
            .headers(headers)
            .body(payload)
            .send()
            .map_err(|e| transport(&e))?;
        let status = response.status();
        let error_type = response
            .headers()
            .get("x-amzn-errortype")
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split(':').next().unwrap_or_default().to_owned());
        let mut bytes = Vec::new();
        response
            .take(MAX_RESPONSE + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| {
                if e.kind() == std::io::ErrorKind::TimedOut
                    || e.get_ref()
                        .and_then(|inner| inner.downcast_ref::<reqwest::Error>())
                        .is_some_and(reqwest::Error::is_timeout)
                {
                    Failure::TimedOut
                } else {
                    Failure::Transport(format!("reading the answer: {e}"))
                }
            })?;
        if bytes.len() as u64 > MAX_RESPONSE {
            return Err(Failure::Malformed(format!(
                "an answer larger than {MAX_RESPONSE} bytes (HTTP {})",
                status.as_u16()
            )));
        }
        let json: Option<Value> = if bytes.iter().all(u8::is_ascii_whitespace) {
            Some(Value::Object(serde_json::Map::new()))
        } else {
            serde_json::from_slice(&bytes).ok()
        };
        if status.is_success() {
            return match json {
                Some(v @ Value::Object(_)) => Ok(v),
                // What some stand-ins send where KMS sends nothing (`CreateAlias`).
                Some(Value::Null) => Ok(Value::Object(serde_json::Map::new())),
                _ => Err(Failure::Malformed(format!(
                    "HTTP {} with a body that is not a JSON object",
                    status.as_u16()
                ))),
            };
        }
        let field = |name: &str| {
            json.as_ref()
                .and_then(|j| j.get(name))
                .and_then(Value::as_str)
                .map(str::to_owned)
        };
        // `__type` is the bare name or `namespace#Name`; the header `Name:detail`.
        let kind = field("__type")
            .map(|t| t.rsplit('#').next().unwrap_or_default().to_owned())
            .or(error_type)
            .filter(|k| !k.is_empty() && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.'))
            .unwrap_or_else(|| format!("HTTP {}", status.as_u16()));
        let message = field("message")
            .or_else(|| field("Message"))
            .map(|m| printable(&m))
            .unwrap_or_default();
        Err(Failure::Service { kind, message })
    }
}

/// A reqwest error sorted: the time limit, or the transport's reason with its causes.
fn transport(e: &reqwest::Error) -> Failure {
    if e.is_timeout() {
        Failure::TimedOut
    } else {
        Failure::Transport(chain(e))
    }
}

/// An error and its causes, one after the other.
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let next = s.to_string();
        if !text.contains(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = s.source();
    }
    text
}

/// A message from the network made safe to show: control characters dropped, length
/// bounded.
fn printable(text: &str) -> String {
    let mut out: String = text
        .chars()
        .filter(|c| !c.is_control())
        .take(MAX_MESSAGE)
        .collect();
    if text.chars().count() > MAX_MESSAGE {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::{Endpoint, printable};

    #[test]
    fn endpoints_are_https_or_loopback_http_at_the_root() {
        let e = Endpoint::new(None, "eu-west-1").unwrap();
        assert_eq!(e.to_string(), "https://kms.eu-west-1.amazonaws.com/");
        assert_eq!(e.host, "kms.eu-west-1.amazonaws.com");
        let e = Endpoint::new(None, "cn-north-1").unwrap();
        assert_eq!(e.host, "kms.cn-north-1.amazonaws.com.cn");
        for (given, host) in [
            ("http://127.0.0.1:4566", "127.0.0.1:4566"),
            ("http://localhost:4566/", "localhost:4566"),
            ("http://[::1]:4566", "[::1]:4566"),
            (
                "https://kms-fips.us-east-1.amazonaws.com",
                "kms-fips.us-east-1.amazonaws.com",
            ),
            (
                "https://vpce-1.kms.eu-west-1.vpce.amazonaws.com:8443",
                "vpce-1.kms.eu-west-1.vpce.amazonaws.com:8443",
            ),
            ("https://kms.example:443", "kms.example"),
        ] {
            assert_eq!(
                Endpoint::new(Some(given), "us-east-1").unwrap().host,
                host,
                "{given}"
            );
        }
        for (given, why) in [
            ("http://10.0.0.5:4566", "not loopback"),
            ("http://kms.example", "not loopback"),
            ("http://127.0.0.1.nip.io", "not loopback"),
            ("ftp://127.0.0.1", "not https"),
            ("https://kms.example/prefix", "path"),
            ("https://kms.example/?x=1", "path, query"),
            ("https://user:pw@kms.example", "user name"),
            ("kms.example", "not a URL"),
        ] {
            let e = Endpoint::new(Some(given), "us-east-1").unwrap_err();
            assert!(e.contains(why), "{given}: {e}");
            assert!(!e.contains("pw@"), "{e}");
        }
    }

    #[test]
    fn messages_from_the_network_are_bounded_and_printable() {
        assert_eq!(printable("a\r\nb\u{1b}[31m"), "ab[31m");
        let long = "x".repeat(1000);
        assert_eq!(printable(&long).chars().count(), 301);
    }
}
