//! `dpop token`, and the token flags `dpop curl` shares with it: the token request the
//! flags describe (client credentials, token exchange, a refresh token), the token cache
//! (`--token-cache`), and the warning when an issuer ignored `--audience`.

use std::collections::HashSet;
use std::io::Write;
use std::path::Path;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};

use dpop_client::{
    ClientAuth, ClientError, ClientKey, DpopMiddleware, Grant, OAuthTokens, SubjectToken,
    TokenRequest, TokenSource,
};
use serde_json::{Value, json};

use super::runtime;
use crate::cli::{IssuerTokenArgs, TokenArgs};
use crate::error::CliError;
use crate::keyfile;
use crate::token_cache::FileTokenStore;

/// The longest token read from a file or stdin.
const MAX_TOKEN_FILE: usize = 64 * 1024;

/// The DPoP key or the `private_key_jwt` key: a key file read like every other (the same
/// permission check, passphrase and messages), or a key in a device, with the key's own
/// algorithm.
pub(crate) fn key(path: &Path) -> Result<ClientKey, CliError> {
    keyfile::open_signer(path, None).map(ClientKey::from_signer)
}

/// The CLI's error for a client error: problems with what the user gave (keys, token
/// files, the cache file) are usage errors.
pub(crate) fn client_error(e: ClientError) -> CliError {
    match e {
        ClientError::Key(_) | ClientError::SubjectToken(_) | ClientError::TokenStore(_) => {
            CliError::usage(e.to_string())
        }
        // The issuer out of reach: curl's exit codes, as `dpop curl` gives.
        ClientError::Discovery(e) => {
            let failure = super::curl::exit::discovery(&e);
            CliError::Transfer(failure.code, failure.message)
        }
        ClientError::Http(e) => match e.url().cloned() {
            Some(url) => {
                let failure = super::curl::exit::transport(&e, &url);
                CliError::Transfer(failure.code, failure.message)
            }
            None => CliError::failed(e.to_string()),
        },
        other => CliError::failed(other.to_string()),
    }
}

/// A token from a file, or from stdin with `-` (read now, once: stdin cannot be read
/// again at the next renewal).
fn token_file(path: &Path) -> Result<SubjectToken, CliError> {
    if !keyfile::is_stdio(path) {
        return Ok(SubjectToken::File(path.to_owned()));
    }
    let (bytes, _) = keyfile::read_limited(path, MAX_TOKEN_FILE)?;
    let text = std::str::from_utf8(&bytes)
        .map_err(|_| CliError::usage("the token on standard input is not UTF-8"))?;
    Ok(SubjectToken::Value(Arc::new(text.trim().to_owned().into())))
}

/// The token request the flags describe, or `None` without `--issuer`.
pub(crate) fn token_request(args: &IssuerTokenArgs) -> Result<Option<TokenRequest>, CliError> {
    let Some(issuer) = &args.issuer else {
        if args.client_id.is_some()
            || args.subject_token_file.is_some()
            || args.refresh_token_file.is_some()
            || args.token_cache.is_some()
        {
            return Err(CliError::usage(
                "--client-id, --subject-token-file, --refresh-token-file and --token-cache need --issuer",
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
    let grant = match (&args.subject_token_file, &args.refresh_token_file) {
        (Some(path), None) => Grant::TokenExchange {
            subject: token_file(path)?,
            subject_type: args.subject_token_type.clone(),
        },
        (None, Some(path)) => Grant::RefreshToken(token_file(path)?),
        (None, None) => Grant::ClientCredentials,
        (Some(_), Some(_)) => {
            return Err(CliError::usage(
                "use --subject-token-file or --refresh-token-file, not both",
            ));
        }
    };
    let mut request = TokenRequest::new(issuer, auth, grant);
    request.scope.clone_from(&args.scope);
    request.audiences.clone_from(&args.audience);
    request.resources.clone_from(&args.resource);
    Ok(Some(request))
}

/// The token source of the flags (with the cache of `--token-cache`), sending its
/// requests with `http` when given (else dpop-client's default client); `None` without
/// `--issuer`. The source reports to `dpop`'s observer, if it has one.
fn oauth_tokens(
    args: &IssuerTokenArgs,
    dpop: &DpopMiddleware,
    http: Option<reqwest::Client>,
) -> Result<Option<OAuthTokens>, CliError> {
    let Some(request) = token_request(args)? else {
        return Ok(None);
    };
    let mut tokens = OAuthTokens::new(request, dpop).map_err(client_error)?;
    if let Some(http) = http {
        tokens = tokens.with_http_client(http);
    }
    Ok(Some(match &args.token_cache {
        Some(path) => tokens.with_store(Arc::new(FileTokenStore::new(path.clone()))),
        None => tokens,
    }))
}

/// For `dpop curl`: the tokens the flags describe, checked for the audiences asked for;
/// `None` without `--issuer`. `http` is the client the issuer is reached with (curl's
/// own: the same CA, resolver and connect timeout as the API), and `dpop`'s observer is
/// told about the token requests (`-v`).
pub(crate) fn issuer_tokens(
    args: &IssuerTokenArgs,
    dpop: &DpopMiddleware,
    http: Option<reqwest::Client>,
) -> Result<Option<Arc<dyn TokenSource>>, CliError> {
    Ok(oauth_tokens(args, dpop, http)?.map(|tokens| {
        let source: Arc<dyn TokenSource> = Arc::new(AudienceCheck {
            inner: tokens,
            audiences: args.audience.clone(),
            seen: Mutex::new(HashSet::new()),
        });
        source
    }))
}

/// `dpop token`.
pub(crate) fn run(args: &TokenArgs, out: &mut impl Write) -> Result<ExitCode, CliError> {
    let dpop = DpopMiddleware::new(key(&args.key)?);
    let tokens = oauth_tokens(&args.issuer, &dpop, None)?
        .ok_or_else(|| CliError::usage("dpop token needs --issuer and --client-id"))?;
    let (access_token, json) = if args.issuer.token_cache.is_some() {
        // Through the cache: a stored token, or a new one that is then stored.
        let token = runtime()?.block_on(tokens.token()).map_err(client_error)?;
        let json = tokens.current().map(|t| {
            let now = dpop_core::Clock::now(&dpop_core::SystemClock).map_or(0, |n| n.as_secs());
            let mut json = json!({
                "access_token": &*t.access_token,
                "token_type": "DPoP",
                "expires_in": t.expires_at.saturating_sub(now),
            });
            if let Some(scope) = &t.scope {
                json["scope"] = scope.as_str().into();
            }
            if let Some(rt) = &t.refresh_token {
                json["refresh_token"] = rt.as_str().into();
            }
            json
        });
        (token, json.unwrap_or(Value::Null))
    } else {
        let response = runtime()?.block_on(tokens.fetch()).map_err(client_error)?;
        (response.access_token, response.json)
    };
    warn_unmet_audiences(&access_token, &args.issuer.audience);
    let text = if args.raw {
        access_token.to_string()
    } else {
        serde_json::to_string_pretty(&json).map_err(|e| CliError::failed(e.to_string()))?
    };
    writeln!(out, "{text}").map_err(|e| CliError::stdout(&e))?;
    Ok(ExitCode::SUCCESS)
}

/// The audiences in a JWT's `aud` (read, not verified: only for the warning), or `None`
/// when the token is not a JWT with an `aud` (an opaque token says nothing).
fn token_audiences(token: &str) -> Option<Vec<String>> {
    let jwt = dpop_core::jwt::UnverifiedJwt::parse(token).ok()?;
    match jwt.dangerous_claims().get("aud")? {
        Value::String(a) => Some(vec![a.clone()]),
        Value::Array(list) => Some(
            list.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect(),
        ),
        _ => None,
    }
}

/// Warns on stderr for each `--audience` the issued token's `aud` lacks: many servers
/// (node-oidc-provider among them) honour only RFC 8707 `resource`, and the token is then
/// refused by the API with an audience mismatch.
fn warn_unmet_audiences(token: &str, asked: &[String]) {
    if asked.is_empty() {
        return;
    }
    let Some(aud) = token_audiences(token) else {
        return;
    };
    for a in asked.iter().filter(|a| !aud.contains(a)) {
        eprintln!(
            "warning: --audience {a} was asked for, but the token's aud is {}; this issuer may honour only RFC 8707 resource indicators: try --resource {a}",
            serde_json::to_string(&aud).unwrap_or_default()
        );
    }
}

/// [`OAuthTokens`] that warn once per new token whose `aud` lacks an `--audience`.
#[derive(Debug)]
struct AudienceCheck {
    inner: OAuthTokens,
    audiences: Vec<String>,
    /// Tokens already checked.
    seen: Mutex<HashSet<Arc<str>>>,
}

#[async_trait::async_trait]
impl TokenSource for AudienceCheck {
    async fn token(&self) -> Result<Arc<str>, ClientError> {
        let token = self.inner.token().await?;
        let new = self
            .seen
            .lock()
            .map(|mut seen| seen.insert(Arc::clone(&token)))
            .unwrap_or(false);
        if new {
            warn_unmet_audiences(&token, &self.audiences);
        }
        Ok(token)
    }

    fn invalidate(&self, token: &str) {
        self.inner.invalidate(token);
    }

    fn renews(&self) -> bool {
        self.inner.renews()
    }
}
