//! `dpop`: create, inspect and verify DPoP proofs (RFC 9449) from the command line, and
//! walk through the protocol with `dpop demo`.
//!
//! `main` only maps the outcome of [`run`] to an exit code: 0 success (a valid proof for
//! `inspect`), 1 an invalid proof, a failed demo step or a failed operation, 2 a usage
//! error (clap's own, and bad files or flag values found later). Errors are printed as
//! one `error: ...` line on stderr. `dpop curl` exits with curl's codes for what curl
//! reports (22, 6, 7, 28, 35, 60...; see its `--help`).

/// mimalloc rather than the C library's allocator: a proxied request allocates a few
/// dozen small buffers (header maps, bodies, futures) on one serving thread and frees
/// them on the same one, which mimalloc's per-thread free lists serve with 2-5 % less
/// CPU per plain request (docs/benchmarks.md, 2026-12-04). Built without mimalloc's
/// `secure` mode; the C libraries in the process (aws-lc, PKCS#11 modules, the TSS)
/// keep the C library's allocator. `--no-default-features --features otel` leaves it out.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod cli;
mod clock;
mod commands;
mod demo;
mod env;
mod error;
mod keyfile;
mod token_cache;

use std::process::ExitCode;

use clap::{CommandFactory as _, FromArgMatches as _};

use crate::cli::{Cli, Command};
use crate::commands::{
    authz, completions, curl, gateway, inspect, issuer, jwt, keygen, keyinfo, proof, token,
};
use crate::error::CliError;

fn main() -> ExitCode {
    match run() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            e.downcast_ref::<CliError>()
                .map_or(ExitCode::FAILURE, CliError::exit_code)
        }
    }
}

/// Parses the command line (clap exits 2 by itself on usage errors) and runs the command.
fn run() -> anyhow::Result<ExitCode> {
    let cmd = command();
    let matches = cmd.clone().get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.format(&mut command()).exit(),
    };
    env::record_sources(&cmd, &matches);
    check_passphrase_scope(&cli)?;
    keyfile::set_passphrase_source(&cli.passphrase);
    keyfile::set_device_options(&cli.device);
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let code = match &cli.command {
        Command::Keygen(args) => keygen::run(args, &mut out)?,
        Command::Jwk(args) => keyinfo::jwk(args, &mut out)?,
        Command::Thumbprint(args) => keyinfo::thumbprint(args, &mut out)?,
        Command::Proof(args) => proof::run(args, &mut out)?,
        Command::Inspect(args) => inspect::run(args, &mut out)?,
        Command::Gateway(args) => gateway::run(args)?,
        Command::Authz(args) => authz::run(args)?,
        Command::Issuer(args) => issuer::run(args, &mut out)?,
        Command::Token(args) => token::run(args, &mut out)?,
        Command::Curl(args) => curl::curl(args, &mut out)?,
        Command::Demo(args) if args.offline => demo::offline::run(&mut out)?,
        Command::Demo(args) => demo::system::run(&mut out, args.keep_running)?,
        Command::Jwt(args) => jwt::run(args, &mut out)?,
        Command::Completions(args) => completions::completions(args, &mut command(), &mut out)?,
        Command::Man => completions::man(&command(), &mut out)?,
    };
    Ok(code)
}

/// The passphrase flags are global (they may follow the subcommand) but mean something
/// only to the commands that read or write a private key file: elsewhere they are a
/// usage error rather than silently ignored.
fn check_passphrase_scope(cli: &Cli) -> Result<(), CliError> {
    let uses_keys = matches!(
        cli.command,
        Command::Keygen(_)
            | Command::Jwk(_)
            | Command::Thumbprint(_)
            | Command::Proof(_)
            | Command::Token(_)
            | Command::Curl(_)
    );
    let given = cli.passphrase.passphrase_file.is_some() || cli.passphrase.passphrase_env.is_some();
    if given && !uses_keys {
        return Err(CliError::usage(
            "--passphrase-file and --passphrase-env apply only to the commands that read or \
             write a private key file: keygen, jwk, thumbprint, proof, token and curl",
        ));
    }
    if cli.device.dangerous_allow_pin_value && !uses_keys {
        return Err(CliError::usage(
            "--dangerous-allow-pin-value applies only to the commands that open a key: \
             keygen, jwk, thumbprint, proof, token and curl",
        ));
    }
    Ok(())
}

/// The command line: the clap definitions with the environment variables of
/// [`env::with_env_vars`].
pub(crate) fn command() -> clap::Command {
    env::with_env_vars(Cli::command())
}
