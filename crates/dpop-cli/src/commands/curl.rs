//! `dpop curl`: the client side from a shell, on top of dpop-client (the token flags it
//! shares with `dpop token`: [`super::token`]).
//!
//! `dpop curl` is split by concern: [`request`] (URL, method, headers, bodies),
//! [`transfer`] (clients, redirects, retries, the time limit), [`output`] (-o, -O, -i,
//! -w), [`verbose`] (-v), [`diagnose`] (the line for a failed status) and [`exit`]
//! (curl's exit codes and the causes of a failure).

mod diagnose;
pub(super) mod exit;
mod output;
mod request;
mod transfer;
mod verbose;

use std::io::Write;
use std::process::ExitCode;

use super::runtime;
use super::token::{issuer_tokens, key};
use crate::cli::CurlArgs;
use crate::error::CliError;

/// `dpop curl`: see [`transfer::run`].
pub(crate) fn curl(args: &CurlArgs, out: &mut impl Write) -> Result<ExitCode, CliError> {
    transfer::run(args, out)
}
