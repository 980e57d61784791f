//! One module per subcommand. Each takes its parsed arguments and the output stream, and
//! returns the exit code or a [`CliError`](crate::error::CliError).

pub(crate) mod curl;
pub(crate) mod gateway;
pub(crate) mod inspect;
pub(crate) mod issuer;
pub(crate) mod keygen;
pub(crate) mod keyinfo;
pub(crate) mod proof;
