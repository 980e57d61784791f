//! `dpop gateway`: load and validate the configuration, then serve until SIGTERM.

use std::process::ExitCode;

use dpop_gateway::{Gateway, GatewayArgs, GatewayConfig, GatewayError};

use crate::error::CliError;

/// Environment variable holding the shared nonce secret (base64url, 32+ bytes), so that
/// secrets stay out of command lines and process listings.
const NONCE_SECRET_ENV: &str = "DPOP_NONCE_SECRET";

pub(crate) fn run(args: &GatewayArgs) -> Result<ExitCode, CliError> {
    let secret = std::env::var(NONCE_SECRET_ENV).ok();
    let config =
        GatewayConfig::load(args, secret.as_deref()).map_err(|e| CliError::usage(e.to_string()))?;
    dpop_gateway::init_logging(config.log_json);
    super::runtime()?.block_on(async {
        let gateway = Gateway::bind(config).await.map_err(|e| match e {
            GatewayError::Config(_) => CliError::usage(e.to_string()),
            other => CliError::failed(other.to_string()),
        })?;
        gateway.serve(dpop_gateway::shutdown_signal()).await;
        Ok(ExitCode::SUCCESS)
    })
}
