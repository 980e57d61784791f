//! The CLI's error type: which exit code, and the one line told to the user.

use core::fmt;
use std::process::ExitCode;

/// Exit code of a successful command, and of `inspect` for a valid proof.
pub(crate) const EXIT_OK: u8 = 0;
/// Exit code of `inspect` for an invalid proof, of a failed demo, and of a failed operation.
pub(crate) const EXIT_INVALID: u8 = 1;
/// Exit code of a usage error (clap's own usage errors use the same code).
pub(crate) const EXIT_USAGE: u8 = 2;

/// Why a command could not do its work. The message is one line, says what is wrong and,
/// where it helps, what to do; it is printed after `error: `.
#[derive(Debug)]
pub(crate) enum CliError {
    /// The user asked for something that cannot work: a bad flag value, a missing or
    /// unusable file, an existing file without `--force`. Exit code 2.
    Usage(String),
    /// The command was fine but an operation failed (writing output, key generation).
    /// Exit code 1.
    Failed(String),
    /// A transfer failed the way curl reports with this exit code (6 cannot resolve,
    /// 7 cannot connect, 28 time-out, 35/60 TLS, ...).
    Transfer(u8, String),
}

impl CliError {
    pub(crate) fn usage(message: impl Into<String>) -> Self {
        Self::Usage(message.into())
    }

    pub(crate) fn failed(message: impl Into<String>) -> Self {
        Self::Failed(message.into())
    }

    /// For write errors on standard output.
    pub(crate) fn stdout(e: &std::io::Error) -> Self {
        Self::Failed(format!("cannot write to standard output: {e}"))
    }

    pub(crate) fn exit_code(&self) -> ExitCode {
        ExitCode::from(match self {
            Self::Usage(_) => EXIT_USAGE,
            Self::Failed(_) => EXIT_INVALID,
            Self::Transfer(code, _) => *code,
        })
    }
}

/// The message of a core error, without the "API misuse" framing meant for programmers:
/// on the command line such errors are about the values the user typed.
pub(crate) fn core_message(e: &dpop_core::Error) -> String {
    match e {
        dpop_core::Error::ApiMisuse(what) => (*what).to_owned(),
        other => other.to_string(),
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Usage(m) | Self::Failed(m) | Self::Transfer(_, m) => f.write_str(m),
        }
    }
}

impl std::error::Error for CliError {}
