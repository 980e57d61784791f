//! What `dpop gateway` and `dpop authz` share: the flags that mean the same for both,
//! set over the `--config` file in one place, how their start-up errors map to exit
//! codes, and how they run until a signal.

use std::process::ExitCode;

use dpop_gateway::{EnforcementConfig, GatewayError, GatewaySettings};
use zeroize::Zeroizing;

use crate::cli::EnforcementArgs;
use crate::error::CliError;

/// Environment variable holding the shared nonce secret (base64url, 32+ bytes), so that
/// secrets stay out of command lines and process listings.
pub(crate) const NONCE_SECRET_ENV: &str = "DPOP_NONCE_SECRET";

/// The value of [`NONCE_SECRET_ENV`], if set.
pub(crate) fn env_nonce_secret() -> Option<String> {
    std::env::var(NONCE_SECRET_ENV).ok()
}

/// Reads `args.config` (if any) and sets the shared flags over it. `env_nonce_secret` is
/// the value of `DPOP_NONCE_SECRET`, if set. The caller sets its own flags, then
/// validates.
pub(crate) fn settings(
    args: &EnforcementArgs,
    env_nonce_secret: Option<&str>,
) -> Result<GatewaySettings, GatewayError> {
    let mut settings = match &args.config {
        Some(path) => GatewaySettings::from_file(path)?,
        None => GatewaySettings::default(),
    };
    if let Some(issuer) = &args.issuer {
        settings.set_issuer(issuer);
    }
    if let Some(audience) = &args.audience {
        settings.set_audience(audience);
    }
    if !args.public_url.is_empty() {
        settings.set_public_urls(args.public_url.clone());
    }
    if !args.allowed_hosts.is_empty() {
        settings.set_allowed_hosts(args.allowed_hosts.clone());
    }
    if !args.trusted_proxies.is_empty() {
        settings.set_trusted_proxies(args.trusted_proxies.clone());
    }
    if let Some(store) = &args.replay_store {
        settings.set_replay_store(store);
    }
    if let Some(admin) = args.admin_listen {
        settings.set_admin_listen(admin);
    }
    if args.require_nonce {
        settings.require_nonce();
    }
    if args.log_json {
        settings.set_log_format(dpop_server::LogFormat::Json);
    }
    if let Some(secret) = env_nonce_secret {
        settings.set_current_nonce_secret(Zeroizing::new(secret.to_owned()));
    }
    Ok(settings)
}

/// The gateway's service name (in traces).
pub(crate) const GATEWAY_SERVICE: &str = "dpop-gateway";

/// Runs a server: its configuration from `load` (given `DPOP_NONCE_SECRET`; refused = a
/// usage error), logging in the format of its `enforcement` part and traces as the
/// `OTEL_*` variables say (as `service`), then `serve` (bind, and serve until
/// [`dpop_server::shutdown_signal`]) on a new runtime, its start-up errors mapped by
/// [`start_error`]. The last spans are flushed once the runtime has stopped.
pub(crate) fn run<C>(
    service: &'static str,
    load: impl FnOnce(Option<&str>) -> Result<C, GatewayError>,
    enforcement: impl FnOnce(&C) -> &EnforcementConfig,
    serve: impl AsyncFnOnce(C) -> Result<(), GatewayError>,
) -> Result<ExitCode, CliError> {
    let secret = env_nonce_secret();
    let config = load(secret.as_deref()).map_err(|e| CliError::usage(e.to_string()))?;
    let telemetry = super::telemetry(enforcement(&config).log_format, service)?;
    crate::env::log_sources();
    let served = super::runtime()?.block_on(async {
        // Both reload on SIGHUP once serving; until then it must not end the process.
        dpop_server::hold_hangup(service, true);
        serve(config).await.map_err(start_error)?;
        Ok(ExitCode::SUCCESS)
    });
    telemetry.shutdown();
    served
}

/// A configuration error found while binding is a usage error (exit 2); anything else
/// (a listener, Redis) means the service cannot start (exit 1).
pub(crate) fn start_error(e: GatewayError) -> CliError {
    match e {
        GatewayError::Config(_) => CliError::usage(e.to_string()),
        other => CliError::failed(other.to_string()),
    }
}
