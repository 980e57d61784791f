//! `dpop completions SHELL` and `dpop man`: generated from the clap definitions (the same
//! command `main` parses with, environment variables included), so they never drift
//! from the flags.

use std::io::Write;
use std::process::ExitCode;

use crate::cli::CompletionsArgs;
use crate::error::CliError;

/// Prints the completion script for the shell asked for.
pub(crate) fn completions(
    args: &CompletionsArgs,
    cmd: &mut clap::Command,
    out: &mut dyn Write,
) -> Result<ExitCode, CliError> {
    let mut buf = Vec::new();
    clap_complete::generate(args.shell, cmd, "dpop", &mut buf);
    out.write_all(&buf).map_err(|e| CliError::stdout(&e))?;
    Ok(ExitCode::SUCCESS)
}

/// Prints the manual page (roff): `dpop` with every subcommand's page appended, so one
/// page documents the whole tool.
pub(crate) fn man(cmd: &clap::Command, out: &mut dyn Write) -> Result<ExitCode, CliError> {
    let mut cmd = cmd.clone();
    cmd.build();
    let mut buf = Vec::new();
    let render = |c: &clap::Command, buf: &mut Vec<u8>| {
        clap_mangen::Man::new(c.clone())
            .render(buf)
            .map_err(|e| CliError::failed(format!("cannot render the manual page: {e}")))
    };
    render(&cmd, &mut buf)?;
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        // Each subcommand as a section of the one page: its name, then its own page's
        // sections without the title line.
        let mut page = Vec::new();
        render(sub, &mut page)?;
        let text = String::from_utf8_lossy(&page);
        writeln!(buf, ".SH \"DPOP {}\"", sub.get_name().to_ascii_uppercase())
            .map_err(|e| CliError::failed(e.to_string()))?;
        for line in text.lines().filter(|l| !l.starts_with(".TH ")) {
            let line = line
                .strip_prefix(".SH ")
                .map_or_else(|| line.to_owned(), |title| format!(".SS {title}"));
            writeln!(buf, "{line}").map_err(|e| CliError::failed(e.to_string()))?;
        }
    }
    out.write_all(&buf).map_err(|e| CliError::stdout(&e))?;
    Ok(ExitCode::SUCCESS)
}
