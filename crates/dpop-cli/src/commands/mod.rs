//! One module per subcommand. Each takes its parsed arguments and the output stream, and
//! returns the exit code or a [`CliError`](crate::error::CliError).

pub(crate) mod authz;
pub(crate) mod completions;
pub(crate) mod curl;
pub(crate) mod enforcement;
pub(crate) mod gateway;
pub(crate) mod inspect;
pub(crate) mod issuer;
pub(crate) mod jwt;
pub(crate) mod keygen;
pub(crate) mod keyinfo;
pub(crate) mod proof;
pub(crate) mod token;

/// The async runtime of the commands that do network I/O.
pub(crate) fn runtime() -> Result<tokio::runtime::Runtime, crate::error::CliError> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| crate::error::CliError::failed(format!("cannot start the async runtime: {e}")))
}

/// Logging in `format` and, when the `OTEL_*` variables ask for it, request traces of
/// `service` (an unsupported setting is a usage error). Set up before the runtime.
pub(crate) fn telemetry(
    format: dpop_server::LogFormat,
    service: &'static str,
) -> Result<dpop_server::telemetry::Telemetry, crate::error::CliError> {
    dpop_server::telemetry::init(format, service)
        .map_err(|e| crate::error::CliError::usage(e.to_string()))
}
