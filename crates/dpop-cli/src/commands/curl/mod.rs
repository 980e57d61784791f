//! `dpop token` and `dpop curl`: the client side from a shell, on top of dpop-client.

use std::io::{Read as _, Write};
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use base64::Engine as _;
use dpop_client::{
    ClientAuth, ClientError, ClientKey, DpopMiddleware, Grant, OAuthTokens, StaticToken,
    SubjectToken, TokenRequest, TokenSource,
};

use super::runtime;
use crate::cli::{CurlArgs, IssuerTokenArgs, TokenArgs};
use crate::error::CliError;
use crate::keyfile;

/// curl's exit code for an HTTP error with --fail.
const EXIT_HTTP_ERROR: u8 = 22;

/// The DPoP key or the `private_key_jwt` key: read like every other key file (the same
/// permission check and messages), with the key's own algorithm.
fn key(path: &Path) -> Result<ClientKey, CliError> {
    keyfile::load_signing_key(path, None).map(ClientKey::from_private_key)
}

fn client_error(e: ClientError) -> CliError {
    match e {
        ClientError::Key(_) | ClientError::SubjectToken(_) => CliError::usage(e.to_string()),
        other => CliError::failed(other.to_string()),
    }
}

/// The token request the flags describe, or `None` without `--issuer`.
fn token_request(args: &IssuerTokenArgs) -> Result<Option<TokenRequest>, CliError> {
    let Some(issuer) = &args.issuer else {
        if args.client_id.is_some() || args.subject_token_file.is_some() {
            return Err(CliError::usage(
                "--client-id and --subject-token-file need --issuer",
            ));
        }
        return Ok(None);
    };
    let client_id = args
        .client_id
        .clone()
        .ok_or_else(|| CliError::usage("--issuer needs --client-id"))?;
    let auth = match (&args.client_secret_env, &args.client_key) {
        (Some(var), None) => {
            let secret = std::env::var(var).map_err(|_| {
                CliError::usage(format!("the environment variable {var} is not set"))
            })?;
            ClientAuth::Secret {
                client_id,
                secret: Arc::new(secret.into()),
            }
        }
        (None, Some(path)) => ClientAuth::PrivateKeyJwt {
            client_id,
            key: key(path)?,
        },
        (None, None) => ClientAuth::Public { client_id },
        (Some(_), Some(_)) => {
            return Err(CliError::usage(
                "use --client-secret-env or --client-key, not both",
            ));
        }
    };
    let grant = match &args.subject_token_file {
        Some(path) => Grant::TokenExchange {
            subject: SubjectToken::File(path.clone()),
            subject_type: args.subject_token_type.clone(),
        },
        None => Grant::ClientCredentials,
    };
    let mut request = TokenRequest::new(issuer, auth, grant);
    request.scope.clone_from(&args.scope);
    request.audiences.clone_from(&args.audience);
    request.resources.clone_from(&args.resource);
    Ok(Some(request))
}

pub(crate) fn token(args: &TokenArgs, out: &mut impl Write) -> Result<ExitCode, CliError> {
    let dpop = DpopMiddleware::new(key(&args.key)?);
    let request = token_request(&args.issuer)?
        .ok_or_else(|| CliError::usage("dpop token needs --issuer and --client-id"))?;
    let tokens = OAuthTokens::new(request, &dpop).map_err(client_error)?;
    let response = runtime()?.block_on(tokens.fetch()).map_err(client_error)?;
    let text = if args.raw {
        response.access_token.to_string()
    } else {
        serde_json::to_string_pretty(&response.json).map_err(|e| CliError::failed(e.to_string()))?
    };
    writeln!(out, "{text}").map_err(|e| CliError::stdout(&e))?;
    Ok(ExitCode::SUCCESS)
}

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
        (None, None) => match token_request(&args.issuer)? {
            Some(request) => Some(Arc::new(
                OAuthTokens::new(request, &dpop).map_err(client_error)?,
            )),
            None => None,
        },
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
