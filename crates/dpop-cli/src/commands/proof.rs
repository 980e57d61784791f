//! `dpop proof`: sign a proof for one request.

use std::io::Write;
use std::process::ExitCode;

use dpop_core::{Algorithm, Htu, ProofBuilder, SystemRandomSource, UnixTime};

use crate::cli::ProofArgs;
use crate::error::{self, CliError};
use crate::{clock, keyfile};

pub(crate) fn run(args: &ProofArgs, out: &mut dyn Write) -> Result<ExitCode, CliError> {
    // Validate everything the user typed before touching the key file.
    Htu::parse(&args.url).map_err(|e| CliError::usage(format!("--url: {e}")))?;
    // The URL is fine, so what the builder refuses is the method.
    let mut builder = ProofBuilder::new(&args.method, &args.url)
        .map_err(|e| CliError::usage(format!("--method: {}", error::core_message(&e))))?;
    if let Some(token) = &args.access_token {
        builder = builder.access_token(token);
    }
    if let Some(nonce) = &args.nonce {
        builder = builder
            .nonce(nonce)
            .map_err(|e| CliError::usage(format!("--nonce: {}", error::core_message(&e))))?;
    }
    let iat = match args.iat {
        Some(secs) => UnixTime::from_secs(secs),
        None => clock::now()?,
    };

    let key = keyfile::open_signer(&args.key, args.alg.map(Algorithm::from))?;
    let proof = builder
        .sign(&*key, &SystemRandomSource, iat)
        .map_err(|e| CliError::failed(format!("cannot sign the proof: {e}")))?;
    writeln!(out, "{proof}").map_err(|e| CliError::stdout(&e))?;
    Ok(ExitCode::SUCCESS)
}
