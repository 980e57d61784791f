//! Flags from the environment: every flag of `gateway`, `authz`, `issuer`, `token` and
//! `curl` can also be given as `DPOP_<COMMAND>_<FLAG>` (`--replay-store` of `gateway`:
//! `DPOP_GATEWAY_REPLAY_STORE`), so a container needs no command line. A flag on the
//! command line wins over its variable.
//!
//! The names are added here, when the command is built, rather than written on each
//! field: the argument structs shared by several commands (`EnforcementArgs` in
//! `gateway` and `authz`, `IssuerTokenArgs` in `token` and `curl`) are flattened into
//! each, and a name written on the field would be the same in every command. Walking the
//! built command gives each flag the prefix of the command it ends up in, from one rule,
//! and a flag added later gets its variable without anyone remembering to.

use std::sync::OnceLock;

use clap::builder::BoolishValueParser;
use clap::parser::ValueSource;
use clap::{ArgAction, ArgMatches, Command};

/// The commands whose flags are read from the environment, and their prefixes.
const COMMANDS: [(&str, &str); 5] = [
    ("gateway", "DPOP_GATEWAY"),
    ("authz", "DPOP_AUTHZ"),
    ("issuer", "DPOP_ISSUER"),
    ("token", "DPOP_TOKEN"),
    ("curl", "DPOP_CURL"),
];

/// Flags that never come from the environment: `--location-trusted` sends the token and
/// fresh proofs to whatever origin a redirect names, which a variable left in a CI
/// environment should not switch on unseen.
const COMMAND_LINE_ONLY: [&str; 1] = ["location-trusted"];

/// Repeatable flags whose values are free text (`curl`'s headers and bodies): their
/// variable holds one value, spaces included, where the other repeatable flags' variables
/// hold several separated by spaces. A delimiter would also split these values on the
/// command line (`-H 'Accept: text/plain'`).
const FREE_TEXT_FLAGS: [&str; 6] = [
    "header",
    "data",
    "data-binary",
    "data-urlencode",
    "json",
    "form",
];

/// `cli` with an environment variable for every flag of the [`COMMANDS`] (and of their
/// subcommands: `issuer rotate-key --activate-in` is `DPOP_ISSUER_ROTATE_KEY_ACTIVATE_IN`).
pub(crate) fn with_env_vars(cli: Command) -> Command {
    COMMANDS.iter().fold(cli, |cli, (name, prefix)| {
        cli.mut_subcommand(*name, |cmd| add_env(cmd, prefix))
    })
}

fn add_env(cmd: Command, prefix: &str) -> Command {
    let subcommands: Vec<String> = cmd
        .get_subcommands()
        .map(|s| s.get_name().to_owned())
        .collect();
    let cmd = subcommands.iter().fold(cmd, |cmd, sub| {
        let prefix = format!("{prefix}_{}", var_part(sub));
        cmd.mut_subcommand(sub, |s| add_env(s, &prefix))
    });
    cmd.mut_args(|arg| {
        let Some(long) = arg.get_long() else {
            return arg;
        };
        if arg.get_env().is_some() || arg.is_global_set() || COMMAND_LINE_ONLY.contains(&long) {
            return arg;
        }
        let var = format!("{prefix}_{}", var_part(long));
        let free_text = FREE_TEXT_FLAGS.contains(&long);
        let action = arg.get_action().clone();
        // No variable's value is ever shown in --help: a token, a Redis URL with its
        // password, a header or a body may be in any of them.
        let arg = arg.env(var).hide_env_values(true);
        match action {
            ArgAction::Append if free_text => arg,
            // One variable, several values: separated by spaces (no URL, host, address
            // or URI these flags take contains a space).
            ArgAction::Append => arg.value_delimiter(' '),
            // A switch's variable must say yes or no (true/false, 1/0, yes/no, on/off):
            // anything else is a usage error, not silently "on".
            ArgAction::SetTrue => arg.value_parser(BoolishValueParser::new()),
            _ => arg,
        }
    })
}

/// Flags whose value is shown where a setting taken from the environment is reported:
/// paths, URLs and addresses that decide whom the command trusts or talks to, none of
/// them a secret (a Redis URL may hold a password, a header a token: not listed).
const SHOWN_VALUES: [&str; 12] = [
    "cacert",
    "trusted-proxy",
    "issuer",
    "audience",
    "resource",
    "public-url",
    "allowed-host",
    "listen",
    "grpc-listen",
    "admin-listen",
    "upstream",
    "key",
];

/// A flag that took its value from its environment variable.
#[derive(Debug)]
pub(crate) struct FromEnv {
    /// The flag, without its dashes.
    pub(crate) flag: String,
    /// The variable.
    pub(crate) var: String,
    /// Its value, for the flags of [`SHOWN_VALUES`].
    pub(crate) value: Option<String>,
}

impl std::fmt::Display for FromEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "--{} from {}", self.flag, self.var)?;
        match &self.value {
            Some(v) => write!(f, " ({v})"),
            None => Ok(()),
        }
    }
}

static FROM_ENV: OnceLock<Vec<FromEnv>> = OnceLock::new();

/// Notes which flags of the command run (`cmd`, parsed into `matches`) came from the
/// environment, for [`from_env`].
pub(crate) fn record_sources(cmd: &Command, matches: &ArgMatches) {
    let mut found = Vec::new();
    collect(cmd, matches, &mut found);
    let _ = FROM_ENV.set(found);
}

fn collect(cmd: &Command, matches: &ArgMatches, found: &mut Vec<FromEnv>) {
    for arg in cmd.get_arguments() {
        let (Some(long), Some(var)) = (arg.get_long(), arg.get_env()) else {
            continue;
        };
        let id = arg.get_id().as_str();
        if matches.value_source(id) != Some(ValueSource::EnvVariable) {
            continue;
        }
        let value = SHOWN_VALUES.contains(&long).then(|| {
            matches
                .get_raw(id)
                .into_iter()
                .flatten()
                .map(|v| v.to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join(" ")
        });
        found.push(FromEnv {
            flag: long.to_owned(),
            var: var.to_string_lossy().into_owned(),
            value,
        });
    }
    if let Some((name, sub)) = matches.subcommand()
        && let Some(sub_cmd) = cmd.find_subcommand(name)
    {
        collect(sub_cmd, sub, found);
    }
}

/// The flags of the command run that came from the environment.
pub(crate) fn from_env() -> &'static [FromEnv] {
    FROM_ENV.get().map_or(&[], Vec::as_slice)
}

/// Logs (info) each flag of the command run that came from the environment, for the
/// servers, whose settings should say where they came from.
pub(crate) fn log_sources() {
    for f in from_env() {
        tracing::info!(target: "dpop::config", "setting {f}");
    }
}

/// `replay-store` → `REPLAY_STORE`.
fn var_part(name: &str) -> String {
    name.replace('-', "_").to_ascii_uppercase()
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::*;
    use crate::cli::Cli;

    fn env_of(cmd: &Command, path: &[&str], long: &str) -> Option<String> {
        let mut c = cmd;
        for p in path {
            c = c.find_subcommand(p).unwrap();
        }
        c.get_arguments()
            .find(|a| a.get_long() == Some(long))
            .and_then(|a| a.get_env())
            .map(|e| e.to_string_lossy().into_owned())
    }

    #[test]
    fn shared_flags_get_the_prefix_of_their_command() {
        let cmd = with_env_vars(Cli::command());
        cmd.clone().debug_assert();
        assert_eq!(
            env_of(&cmd, &["gateway"], "issuer").as_deref(),
            Some("DPOP_GATEWAY_ISSUER")
        );
        assert_eq!(
            env_of(&cmd, &["authz"], "issuer").as_deref(),
            Some("DPOP_AUTHZ_ISSUER")
        );
        assert_eq!(
            env_of(&cmd, &["token"], "issuer").as_deref(),
            Some("DPOP_TOKEN_ISSUER")
        );
        assert_eq!(
            env_of(&cmd, &["issuer", "rotate-key"], "activate-in").as_deref(),
            Some("DPOP_ISSUER_ROTATE_KEY_ACTIVATE_IN")
        );
        assert_eq!(
            env_of(&cmd, &["gateway"], "replay-store").as_deref(),
            Some("DPOP_GATEWAY_REPLAY_STORE")
        );
        assert_eq!(
            env_of(&cmd, &["curl"], "issuer").as_deref(),
            Some("DPOP_CURL_ISSUER")
        );
        assert_eq!(
            env_of(&cmd, &["curl"], "max-time").as_deref(),
            Some("DPOP_CURL_MAX_TIME")
        );
        // Left to their own commands.
        assert_eq!(env_of(&cmd, &["proof"], "key"), None);
    }

    fn arg<'a>(cmd: &'a Command, path: &[&str], long: &str) -> &'a clap::Arg {
        let mut c = cmd;
        for p in path {
            c = c.find_subcommand(p).unwrap();
        }
        c.get_arguments()
            .find(|a| a.get_long() == Some(long))
            .unwrap()
    }

    #[test]
    fn secret_values_stay_out_of_help_and_free_text_is_not_split() {
        let cmd = with_env_vars(Cli::command());
        for long in [
            "token",
            "header",
            "data",
            "data-binary",
            "data-urlencode",
            "json",
            "form",
            "user",
        ] {
            assert!(
                arg(&cmd, &["curl"], long).is_hide_env_values_set(),
                "{long}"
            );
        }
        for (command, long) in [
            ("curl", "max-time"),
            ("curl", "issuer"),
            ("gateway", "replay-store"),
            ("authz", "replay-store"),
        ] {
            assert!(
                arg(&cmd, &[command], long).is_hide_env_values_set(),
                "{command} {long}"
            );
        }
        assert!(
            arg(&cmd, &["curl"], "location-trusted").get_env().is_none(),
            "--location-trusted only from the command line"
        );
        for long in ["header", "data", "json", "form"] {
            assert_eq!(
                arg(&cmd, &["curl"], long).get_value_delimiter(),
                None,
                "{long}"
            );
        }
        // The shared issuer flags split alike in both commands.
        for path in [["curl"], ["token"]] {
            assert_eq!(
                arg(&cmd, &path, "audience").get_value_delimiter(),
                Some(' ')
            );
        }
    }
}
