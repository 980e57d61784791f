//! `dpop jwk` and `dpop thumbprint`: public facts about a key file.

use std::io::Write;
use std::process::ExitCode;

use crate::cli::KeyFileArgs;
use crate::error::CliError;
use crate::keyfile;

/// Prints the public JWK (required members only, as a proof header carries it).
pub(crate) fn jwk(args: &KeyFileArgs, out: &mut dyn Write) -> Result<ExitCode, CliError> {
    let key = keyfile::load(&args.file, None)?;
    let json = serde_json::to_string(&key.public_jwk().to_json_value())
        .map_err(|e| CliError::failed(format!("cannot encode the JWK: {e}")))?;
    writeln!(out, "{json}").map_err(|e| CliError::stdout(&e))?;
    Ok(ExitCode::SUCCESS)
}

/// Prints the RFC 7638 thumbprint.
pub(crate) fn thumbprint(args: &KeyFileArgs, out: &mut dyn Write) -> Result<ExitCode, CliError> {
    let key = keyfile::load(&args.file, None)?;
    writeln!(out, "{}", key.public_jwk().thumbprint()).map_err(|e| CliError::stdout(&e))?;
    Ok(ExitCode::SUCCESS)
}
