//! The request the flags describe: its URL, method, headers and body, checked before
//! anything is sent.

use std::io::Read as _;

use dpop_core::RandomSource as _;
use reqwest::Method;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};

use crate::cli::CurlArgs;
use crate::error::CliError;

/// What is sent, before any redirect changes it.
#[derive(Debug)]
pub(super) struct Plan {
    pub(super) url: reqwest::Url,
    pub(super) method: Method,
    pub(super) headers: HeaderMap,
    pub(super) body: Option<Vec<u8>>,
}

/// curl's rule for a URL without a scheme, except that the scheme assumed is https.
pub(super) fn url(text: &str) -> Result<reqwest::Url, CliError> {
    let with_scheme = if text.contains("://") {
        text.to_owned()
    } else {
        format!("https://{text}")
    };
    let url = reqwest::Url::parse(&with_scheme)
        .map_err(|e| CliError::usage(format!("{text:?} is not a URL: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(CliError::usage(format!(
            "{text:?}: dpop curl speaks http and https, not {}",
            url.scheme()
        )));
    }
    // A user name or password in the URL would go out as Basic credentials (and be
    // printed with the URL): refused like -u. The text is not echoed.
    if has_userinfo(&url) {
        return Err(CliError::usage(
            "the URL carries a user name or password: dpop curl sends a DPoP-bound token instead (see --token, --issuer)",
        ));
    }
    Ok(url)
}

/// Whether `url` has a user name or password (`https://user:pass@host/`).
pub(super) fn has_userinfo(url: &reqwest::Url) -> bool {
    !url.username().is_empty() || url.password().is_some()
}

/// Reads `@FILE` or `@-` (standard input), or takes the text itself.
fn content(data: &str) -> Result<Vec<u8>, CliError> {
    match data.strip_prefix('@') {
        Some(path) => read_file(path),
        None => Ok(data.as_bytes().to_vec()),
    }
}

fn read_file(path: &str) -> Result<Vec<u8>, CliError> {
    if path == "-" {
        let mut buf = Vec::new();
        std::io::stdin()
            .read_to_end(&mut buf)
            .map_err(|e| CliError::failed(format!("cannot read standard input: {e}")))?;
        return Ok(buf);
    }
    std::fs::read(path).map_err(|e| CliError::usage(format!("cannot read {path}: {e}")))
}

/// RFC 3986 percent-encoding of everything but unreserved characters, as curl's
/// `--data-urlencode` does.
fn percent_encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for &b in bytes {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// One `--data-urlencode` value: `content`, `=content`, `name=content`, `@file` or
/// `name@file` (whichever of `=` and `@` comes first decides).
fn urlencoded(spec: &str) -> Result<Vec<u8>, CliError> {
    let (name, value) = match spec.find(['=', '@']) {
        Some(i) if spec.as_bytes().get(i) == Some(&b'@') => {
            (&spec[..i], read_file(&spec[i + 1..])?)
        }
        Some(i) => (&spec[..i], spec.as_bytes()[i + 1..].to_vec()),
        None => ("", spec.as_bytes().to_vec()),
    };
    let encoded = percent_encode(&value);
    Ok(if name.is_empty() {
        encoded
    } else {
        format!("{name}={encoded}")
    }
    .into_bytes())
}

/// The body of -d, --data-binary and --data-urlencode, in the order curl uses (each
/// flag's values in turn), joined with `&`.
fn form_data(args: &CurlArgs) -> Result<Option<Vec<u8>>, CliError> {
    let mut parts: Vec<Vec<u8>> = Vec::new();
    for d in &args.data {
        let mut bytes = content(d)?;
        if d.starts_with('@') {
            // curl's -d @file drops carriage returns and newlines; --data-binary keeps them.
            bytes.retain(|b| *b != b'\r' && *b != b'\n');
        }
        parts.push(bytes);
    }
    for d in &args.data_binary {
        parts.push(content(d)?);
    }
    for d in &args.data_urlencode {
        parts.push(urlencoded(d)?);
    }
    Ok((!parts.is_empty()).then(|| parts.join(&b'&')))
}

/// A name or file name in a `Content-Disposition` parameter, escaped as HTML forms do.
fn quoted(name: &str) -> String {
    name.replace('"', "%22")
        .replace('\r', "%0D")
        .replace('\n', "%0A")
}

/// The `multipart/form-data` body of the -F parts, and its boundary. Built in memory so
/// that a nonce retry can send it again.
fn multipart(specs: &[String]) -> Result<(Vec<u8>, String), CliError> {
    let mut random = [0_u8; 16];
    dpop_core::SystemRandomSource
        .fill(&mut random)
        .map_err(|e| CliError::failed(format!("cannot make a multipart boundary: {e}")))?;
    let boundary = format!(
        "------------------------{}",
        random
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    );
    let mut body = Vec::new();
    // The errors name the flag by its position, never its text: it may hold a secret.
    for (n, spec) in specs.iter().enumerate() {
        let n = n + 1;
        let (name, value) = spec
            .split_once('=')
            .ok_or_else(|| CliError::usage(format!("-F number {n} is not 'name=content'")))?;
        let (data, filename, content_type) = match value.chars().next() {
            Some(kind @ ('@' | '<')) => {
                let mut fields = value[1..].split(';');
                let path = fields.next().unwrap_or_default();
                let (mut filename, mut content_type) = (None, None);
                for field in fields {
                    match field.split_once('=') {
                        Some(("type", t)) => content_type = Some(t.to_owned()),
                        Some(("filename", f)) => filename = Some(f.to_owned()),
                        _ => {
                            return Err(CliError::usage(format!(
                                "-F number {n}: an unknown ;field (type= and filename= are known)"
                            )));
                        }
                    }
                }
                let data = read_file(path)?;
                if kind == '@' {
                    let default_name = std::path::Path::new(path)
                        .file_name()
                        .map(|n| n.to_string_lossy().into_owned());
                    let filename = filename.or(default_name);
                    let content_type =
                        content_type.or_else(|| Some("application/octet-stream".to_owned()));
                    (data, filename, content_type)
                } else {
                    (data, filename, content_type)
                }
            }
            _ => (value.as_bytes().to_vec(), None, None),
        };
        body.extend_from_slice(format!("--{boundary}\r\n").as_bytes());
        let mut disposition = format!("Content-Disposition: form-data; name=\"{}\"", quoted(name));
        if let Some(f) = &filename {
            disposition.push_str(&format!("; filename=\"{}\"", quoted(f)));
        }
        body.extend_from_slice(disposition.as_bytes());
        body.extend_from_slice(b"\r\n");
        if let Some(t) = &content_type {
            if t.contains(['\r', '\n']) {
                return Err(CliError::usage(format!(
                    "-F number {n}: the type has a line break"
                )));
            }
            body.extend_from_slice(format!("Content-Type: {t}\r\n").as_bytes());
        }
        body.extend_from_slice(b"\r\n");
        body.extend_from_slice(&data);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    Ok((body, boundary))
}

fn set_default(headers: &mut HeaderMap, name: HeaderName, value: &str) -> Result<(), CliError> {
    if !headers.contains_key(&name) {
        let value = HeaderValue::from_str(value)
            .map_err(|_| CliError::usage(format!("{value:?} is not a valid {name} value")))?;
        headers.insert(name, value);
    }
    Ok(())
}

/// The request of `args`; `has_token` says whether the token flags set `Authorization`.
pub(super) fn plan(args: &CurlArgs, has_token: bool) -> Result<Plan, CliError> {
    let url = url(&args.url)?;
    let mut headers = HeaderMap::new();
    // The errors name the flag by its position, never its text: it may hold a secret.
    for (n, h) in args.headers.iter().enumerate() {
        let n = n + 1;
        let (name, value) = h
            .split_once(':')
            .ok_or_else(|| CliError::usage(format!("-H number {n} is not 'Name: value'")))?;
        let name = name.trim();
        if name.eq_ignore_ascii_case("dpop")
            || (has_token && name.eq_ignore_ascii_case("authorization"))
        {
            return Err(CliError::usage(format!(
                "the {name} header is set by dpop curl (from the key and the token flags)"
            )));
        }
        let name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| CliError::usage(format!("-H number {n}: not a valid header name")))?;
        let value = HeaderValue::from_str(value.trim()).map_err(|_| {
            CliError::usage(format!(
                "-H number {n}: the value of header {name} is not valid"
            ))
        })?;
        headers.append(name, value);
    }
    let user_agent = args
        .user_agent
        .clone()
        .unwrap_or_else(|| format!("dpop/{}", env!("CARGO_PKG_VERSION")));
    set_default(&mut headers, reqwest::header::USER_AGENT, &user_agent)?;

    let body = if !args.form.is_empty() {
        let (body, boundary) = multipart(&args.form)?;
        set_default(
            &mut headers,
            reqwest::header::CONTENT_TYPE,
            &format!("multipart/form-data; boundary={boundary}"),
        )?;
        Some(body)
    } else if !args.json.is_empty() {
        let mut body = Vec::new();
        for j in &args.json {
            body.extend(content(j)?);
        }
        set_default(
            &mut headers,
            reqwest::header::CONTENT_TYPE,
            "application/json",
        )?;
        set_default(&mut headers, reqwest::header::ACCEPT, "application/json")?;
        Some(body)
    } else {
        let body = form_data(args)?;
        if body.is_some() {
            set_default(
                &mut headers,
                reqwest::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )?;
        }
        body
    };
    if args.head && body.is_some() {
        return Err(CliError::usage(
            "-I (HEAD) sends no body: drop -d, --data-*, --json or -F",
        ));
    }
    let method = match (&args.method, &body) {
        (Some(m), _) => Method::from_bytes(m.to_ascii_uppercase().as_bytes())
            .map_err(|_| CliError::usage(format!("{m:?} is not an HTTP method")))?,
        (None, _) if args.head => Method::HEAD,
        (None, Some(_)) => Method::POST,
        (None, None) => Method::GET,
    };
    Ok(Plan {
        url,
        method,
        headers,
        body,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_without_a_scheme_are_https() {
        assert_eq!(
            url("api.example.com/x").unwrap().as_str(),
            "https://api.example.com/x"
        );
        assert_eq!(
            url("http://a.example/").unwrap().as_str(),
            "http://a.example/"
        );
        assert!(url("ftp://a.example/").is_err());
        assert!(url("https://").is_err());
    }

    #[test]
    fn data_urlencode_forms() {
        assert_eq!(urlencoded("a b&c").unwrap(), b"a%20b%26c");
        assert_eq!(urlencoded("=a=b").unwrap(), b"a%3Db");
        assert_eq!(urlencoded("q=x y").unwrap(), b"q=x%20y");
        assert!(urlencoded("q@/nonexistent/file").is_err());
    }

    #[test]
    fn multipart_names_cannot_break_out_of_their_quotes() {
        let (body, boundary) = multipart(&["a\"b\r\nX: y=v".to_owned()]).unwrap();
        let text = String::from_utf8(body).unwrap();
        assert!(
            text.contains("name=\"a%22b%0D%0AX: y\"\r\n\r\nv\r\n"),
            "{text}"
        );
        assert!(text.ends_with(&format!("--{boundary}--\r\n")));
    }
}
