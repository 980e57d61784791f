//! `dpop curl`: the client side from a shell, on top of dpop-client (the token flags:
//! [`super::token`]).

use std::io::{Read as _, Write};
use std::process::ExitCode;
use std::sync::Arc;

use base64::Engine as _;
use dpop_client::{ClientError, DpopMiddleware, StaticToken, TokenSource};

use super::runtime;
use super::token::{client_error, issuer_tokens, key};
use crate::cli::CurlArgs;
use crate::error::CliError;

/// curl's exit code for an HTTP error with --fail.
const EXIT_HTTP_ERROR: u8 = 22;

/// Prints each request's proof claims on stderr (for `-v`); it runs after the DPoP
/// middleware, so it sees every attempt, retries included.
#[derive(Debug)]
struct Verbose;

#[async_trait::async_trait]
impl reqwest_middleware::Middleware for Verbose {
    async fn handle(
        &self,
        req: reqwest::Request,
        extensions: &mut http::Extensions,
        next: reqwest_middleware::Next<'_>,
    ) -> reqwest_middleware::Result<reqwest::Response> {
        eprintln!("> {} {}", req.method(), req.url());
        if let Some(claims) = req
            .headers()
            .get("dpop")
            .and_then(|v| v.to_str().ok())
            .and_then(|p| p.split('.').nth(1))
            .and_then(|c| {
                base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(c)
                    .ok()
            })
        {
            eprintln!("> DPoP claims: {}", String::from_utf8_lossy(&claims));
        }
        let response = next.run(req, extensions).await?;
        eprintln!("< {:?} {}", response.version(), response.status());
        if let Some(n) = response.headers().get("dpop-nonce") {
            eprintln!("< DPoP-Nonce: {}", n.to_str().unwrap_or("(not text)"));
        }
        Ok(response)
    }
}

fn body(data: &str) -> Result<Vec<u8>, CliError> {
    match data.strip_prefix('@') {
        Some("-") => {
            let mut buf = Vec::new();
            std::io::stdin()
                .read_to_end(&mut buf)
                .map_err(|e| CliError::failed(format!("cannot read standard input: {e}")))?;
            Ok(buf)
        }
        Some(path) => {
            std::fs::read(path).map_err(|e| CliError::usage(format!("cannot read {path}: {e}")))
        }
        None => Ok(data.as_bytes().to_vec()),
    }
}

pub(crate) fn curl(args: &CurlArgs, out: &mut impl Write) -> Result<ExitCode, CliError> {
    let dpop = DpopMiddleware::new(key(&args.key)?);
    let tokens: Option<Arc<dyn TokenSource>> = match (&args.token, &args.token_file) {
        (Some(t), _) => Some(Arc::new(StaticToken::new(t))),
        (None, Some(path)) => {
            let t = std::fs::read_to_string(path)
                .map_err(|e| CliError::usage(format!("cannot read {}: {e}", path.display())))?;
            if t.trim().is_empty() {
                return Err(CliError::usage(format!("{} is empty", path.display())));
            }
            Some(Arc::new(StaticToken::new(&t)))
        }
        (None, None) => issuer_tokens(&args.issuer, &dpop)?,
    };
    let url = reqwest::Url::parse(&args.url)
        .map_err(|e| CliError::usage(format!("{:?} is not a URL: {e}", args.url)))?;
    let body = args.data.as_deref().map(body).transpose()?;
    let method = match (&args.method, &body) {
        (Some(m), _) => reqwest::Method::from_bytes(m.to_ascii_uppercase().as_bytes())
            .map_err(|_| CliError::usage(format!("{m:?} is not an HTTP method")))?,
        (None, Some(_)) => reqwest::Method::POST,
        (None, None) => reqwest::Method::GET,
    };
    let inner = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| CliError::failed(e.to_string()))?;
    let has_token = tokens.is_some();
    let dpop = match tokens {
        Some(t) => dpop.with_tokens(t),
        None => dpop,
    };
    let mut client = reqwest_middleware::ClientBuilder::new(inner).with(dpop);
    if args.verbose {
        client = client.with(Verbose);
    }
    let client = client.build();
    let mut request = client.request(method, url);
    let mut has_content_type = false;
    for h in &args.headers {
        let (name, value) = h
            .split_once(':')
            .ok_or_else(|| CliError::usage(format!("header {h:?} is not 'Name: value'")))?;
        let name = name.trim();
        if name.eq_ignore_ascii_case("content-type") {
            has_content_type = true;
        }
        if name.eq_ignore_ascii_case("dpop")
            || (has_token && name.eq_ignore_ascii_case("authorization"))
        {
            return Err(CliError::usage(format!(
                "the {name} header is set by dpop curl (from the key and the token flags)"
            )));
        }
        request = request.header(name, value.trim());
    }
    if let Some(b) = body {
        if !has_content_type {
            request = request.header("content-type", "application/x-www-form-urlencoded");
        }
        request = request.body(b);
    }
    runtime()?.block_on(async {
        let response = request.send().await.map_err(|e| match e {
            reqwest_middleware::Error::Middleware(e) => match e.downcast::<ClientError>() {
                Ok(ce) => client_error(ce),
                Err(other) => CliError::failed(format!("{other:#}")),
            },
            reqwest_middleware::Error::Reqwest(e) => CliError::failed(format!("HTTP: {e}")),
        })?;
        let status = response.status();
        if args.include {
            let mut head = format!(
                "{:?} {} {}\r\n",
                response.version(),
                status.as_u16(),
                status.canonical_reason().unwrap_or("")
            );
            for (k, v) in response.headers() {
                head.push_str(&format!(
                    "{k}: {}\r\n",
                    String::from_utf8_lossy(v.as_bytes())
                ));
            }
            head.push_str("\r\n");
            out.write_all(head.as_bytes())
                .map_err(|e| CliError::stdout(&e))?;
        }
        let bytes = response
            .bytes()
            .await
            .map_err(|e| CliError::failed(format!("reading the response: {e}")))?;
        out.write_all(&bytes).map_err(|e| CliError::stdout(&e))?;
        out.flush().map_err(|e| CliError::stdout(&e))?;
        Ok(if args.fail && status.as_u16() >= 400 {
            ExitCode::from(EXIT_HTTP_ERROR)
        } else {
            ExitCode::SUCCESS
        })
    })
}
