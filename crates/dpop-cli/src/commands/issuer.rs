//! `dpop issuer`: serve the authorization server, or manage its state.

use std::io::{BufRead as _, Write};
use std::path::Path;
use std::process::ExitCode;

use dpop_issuer::{Issuer, IssuerConfig, IssuerError, ProcessEnvironment};

use super::runtime;
use crate::cli::{IssuerAction, IssuerArgs};
use crate::clock::now;
use crate::error::CliError;

fn load(path: &Path) -> Result<IssuerConfig, CliError> {
    IssuerConfig::load(path, &ProcessEnvironment).map_err(|e| CliError::usage(e.to_string()))
}

fn failed(e: IssuerError) -> CliError {
    match e {
        IssuerError::Config(_) | IssuerError::UnknownClient(_) => CliError::usage(e.to_string()),
        other => CliError::failed(other.to_string()),
    }
}

pub(crate) fn run(args: &IssuerArgs, out: &mut impl Write) -> Result<ExitCode, CliError> {
    match &args.action {
        None => {
            let Some(path) = &args.config else {
                return Err(CliError::usage(
                    "dpop issuer needs --config FILE (see examples/issuer.toml)",
                ));
            };
            let config = load(path)?;
            let format = if config.log_json {
                dpop_server::LogFormat::Json
            } else {
                dpop_server::LogFormat::Text
            };
            let telemetry = super::telemetry(format, "dpop-issuer")?;
            crate::env::log_sources();
            let served = runtime()?.block_on(async {
                dpop_server::hold_hangup("dpop issuer", false);
                let issuer = Issuer::open(config).await.map_err(failed)?;
                issuer
                    .serve(dpop_server::shutdown_signal())
                    .await
                    .map_err(failed)?;
                Ok(ExitCode::SUCCESS)
            });
            telemetry.shutdown();
            served
        }
        Some(IssuerAction::RotateKey {
            config,
            activate_in,
            key,
        }) => {
            let config = load(config)?;
            let activate_in = std::time::Duration::from_secs(*activate_in);
            // A relative `--key` path is the working directory's, as for any argument.
            let next = key
                .as_deref()
                .map(|text| {
                    dpop_issuer::config::KeyReference::parse(text, Path::new("."))
                        .map_err(|e| CliError::usage(format!("--key: {e}")))
                })
                .transpose()?;
            let at = now()?;
            let kid = runtime()?
                .block_on(async {
                    match &next {
                        Some(next) => {
                            dpop_issuer::rotate_key_to(&config, next, at, activate_in).await
                        }
                        None => dpop_issuer::rotate_key(&config, at, activate_in).await,
                    }
                })
                .map_err(failed)?;
            writeln!(out, "{kid}").map_err(|e| CliError::stdout(&e))?;
            Ok(ExitCode::SUCCESS)
        }
        Some(IssuerAction::DisableClient { client_id, config }) => {
            set_disabled(config, client_id, true)
        }
        Some(IssuerAction::EnableClient { client_id, config }) => {
            set_disabled(config, client_id, false)
        }
        Some(IssuerAction::HashSecret) => {
            let mut line = zeroize::Zeroizing::new(String::new());
            std::io::stdin()
                .lock()
                .read_line(&mut line)
                .map_err(|e| CliError::failed(format!("cannot read standard input: {e}")))?;
            let secret = line.trim_end_matches(['\r', '\n']);
            if secret.len() < 16 {
                return Err(CliError::usage(
                    "the secret is shorter than 16 characters; use a long random value",
                ));
            }
            let hash = dpop_issuer::hash_secret(secret).map_err(CliError::failed)?;
            writeln!(out, "{hash}").map_err(|e| CliError::stdout(&e))?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn set_disabled(path: &Path, client_id: &str, disabled: bool) -> Result<ExitCode, CliError> {
    let config = load(path)?;
    runtime()?
        .block_on(dpop_issuer::set_client_disabled(
            &config,
            client_id,
            disabled,
            now()?,
        ))
        .map_err(failed)?;
    if disabled {
        let lifetime = config
            .clients
            .get(client_id)
            .map_or(300, |c| c.access_token_lifetime.as_secs());
        eprintln!(
            "client {client_id:?} disabled. At once: this issuer refuses it, its refresh grants and \
             every token derived from its tokens, and introspection answers inactive for them. \
             Gateways that introspect stop accepting its access tokens within their cache time \
             (introspection cache_ttl_secs, default 10 s). Gateways that verify JWTs locally \
             accept access tokens already issued until they expire (at most {lifetime} s for this client)."
        );
    } else {
        eprintln!("client {client_id:?} enabled");
    }
    Ok(ExitCode::SUCCESS)
}
