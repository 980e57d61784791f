//! `dpop token` and `dpop curl`: the client side from a shell, on top of dpop-client.
//!
//! `dpop curl` is split by concern: [`request`] (URL, method, headers, bodies),
//! [`transfer`] (clients, redirects, retries, the time limit), [`output`] (-o, -O, -i,
//! -w), [`verbose`] (-v), [`diagnose`] (the line for a failed status) and [`exit`]
//! (curl's exit codes and the causes of a failure).

mod diagnose;
mod exit;
mod output;
mod request;
mod transfer;
mod verbose;

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use dpop_client::{
    ClientAuth, ClientError, ClientKey, DpopMiddleware, Grant, OAuthTokens, SubjectToken,
    TokenRequest,
};

use super::runtime;
use crate::cli::{CurlArgs, IssuerTokenArgs, TokenArgs};
use crate::error::CliError;
use crate::keyfile;

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

/// `dpop curl`: see [`transfer::run`].
pub(crate) fn curl(args: &CurlArgs, out: &mut impl Write) -> Result<ExitCode, CliError> {
    transfer::run(args, out)
}
