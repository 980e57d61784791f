//! `dpop demo`: the whole system on loopback, in this process. An issuer (SQLite in a
//! temporary directory), a gateway (memory replay store, nonces on, introspection) in
//! front of a small sample API, a stand-in CI system that issues job tokens; then a
//! client goes through them, and the attacks DPoP exists to stop are tried one by one.
//! One table row per scenario; the exit status is 0 only when every scenario behaved
//! as it should.

mod ci;
mod report;
mod scenarios;
mod setup;

use std::ffi::OsString;
use std::io::Write;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use dpop_core::{Algorithm, PrivateKey};

use self::setup::{System, failed};
use crate::clock::now;
use crate::error::{CliError, EXIT_INVALID, EXIT_OK};

/// Runs the demo; with `keep_running`, leaves the services up until Ctrl-C.
pub(crate) fn run(out: &mut dyn Write, keep_running: bool) -> Result<ExitCode, CliError> {
    crate::commands::runtime()?.block_on(async {
        let w = |e: std::io::Error| CliError::stdout(&e);
        writeln!(
            out,
            "Starting on loopback: an issuer (SQLite), a gateway (nonces, memory replay store,"
        )
        .map_err(w)?;
        writeln!(
            out,
            "introspection), a sample API behind it, and a stand-in CI system."
        )
        .map_err(w)?;
        let sys = setup::start().await?;
        writeln!(
            out,
            "  issuer   {}\n  gateway  {}  (protects the sample API)\n",
            sys.issuer_url, sys.gateway_url
        )
        .map_err(w)?;
        let rows = scenarios::scenarios(&sys).await?;
        report::table(out, &rows).map_err(w)?;
        report::summary(out, &rows).map_err(w)?;
        let failures = rows.iter().filter(|r| !r.ok).count();
        if keep_running {
            keep(out, &sys).await?;
        }
        Ok(ExitCode::from(if failures == 0 {
            EXIT_OK
        } else {
            EXIT_INVALID
        }))
    })
}

/// Re-enables the billing client, writes a key and prints commands to try, then waits.
async fn keep(out: &mut dyn Write, sys: &System) -> Result<(), CliError> {
    let w = |e: std::io::Error| CliError::stdout(&e);
    // Tokens are revoked by the second: re-enable in a later one.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    dpop_issuer::set_client_disabled(&sys.issuer_config, "billing", false, now()?)
        .await
        .map_err(|e| failed("enable")(&e))?;
    let key_path = sys.dir.join("client.pem");
    write_key(&key_path)?;
    writeln!(
        out,
        "\nThe services stay up until Ctrl-C. Try, in another shell:\n"
    )
    .map_err(w)?;
    // Commands to paste into another shell: the binary named as that shell will find it,
    // and every word quoted for it.
    let dpop = program_word(
        std::env::current_exe().ok().as_deref(),
        std::env::var_os("PATH"),
    );
    let key = shell_word(&key_path.to_string_lossy());
    writeln!(
        out,
        "  export BILLING_SECRET={}",
        shell_word(&sys.billing_secret)
    )
    .map_err(w)?;
    writeln!(
        out,
        "  {dpop} curl {}/v1/items --key {key} \\\n      --issuer {} --client-id billing --client-secret-env BILLING_SECRET -v",
        sys.gateway_url, sys.issuer_url
    )
    .map_err(w)?;
    writeln!(
        out,
        "  {dpop} token --issuer {} --client-id billing --client-secret-env BILLING_SECRET --key {key}",
        sys.issuer_url
    )
    .map_err(w)?;
    writeln!(
        out,
        "  curl -i {}/v1/items    # no token: 401",
        sys.gateway_url
    )
    .map_err(w)?;
    out.flush().map_err(w)?;
    dpop_server::shutdown_signal().await;
    Ok(())
}

/// How a shell finds the running binary: `dpop` when the first `dpop` on `path_var` is
/// this very file, otherwise its absolute path (quoted), so that a printed command runs
/// the binary that printed it, from any shell.
fn program_word(exe: Option<&Path>, path_var: Option<OsString>) -> String {
    const NAME: &str = "dpop";
    let Some(exe) = exe else {
        return NAME.to_owned();
    };
    let same_file = |a: &Path, b: &Path| match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    };
    let first_on_path = path_var
        .iter()
        .flat_map(std::env::split_paths)
        .find_map(|dir| {
            let candidate = dir.join(NAME);
            candidate.is_file().then_some(candidate)
        });
    match first_on_path {
        Some(found) if same_file(&found, exe) => NAME.to_owned(),
        _ => shell_word(&exe.to_string_lossy()),
    }
}

/// `word` as one word for a POSIX shell: as it is when it has only characters no shell
/// treats specially, otherwise in single quotes (a `'` inside becomes `'\''`).
fn shell_word(word: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "_-./:=@%+,".contains(c);
    if !word.is_empty() && word.chars().all(plain) {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', "'\\''"))
    }
}

fn write_key(path: &Path) -> Result<(), CliError> {
    let key = PrivateKey::generate(Algorithm::Es256).map_err(|e| failed("key")(&e))?;
    let pem = key.to_pkcs8_pem().map_err(|e| failed("key")(&e))?;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut f = options.open(path).map_err(|e| failed("key file")(&e))?;
    f.write_all(pem.as_bytes())
        .map_err(|e| failed("key file")(&e))
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use super::{program_word, shell_word};

    #[test]
    fn words_are_quoted_only_when_a_shell_would_split_or_expand_them() {
        assert_eq!(shell_word("/usr/local/bin/dpop"), "/usr/local/bin/dpop");
        assert_eq!(shell_word("a-Z_0.9:=@%+,"), "a-Z_0.9:=@%+,");
        assert_eq!(shell_word("/opt/my tools/dpop"), "'/opt/my tools/dpop'");
        assert_eq!(shell_word("it's"), "'it'\\''s'");
        assert_eq!(shell_word("$HOME"), "'$HOME'");
        assert_eq!(shell_word("a*b"), "'a*b'");
        assert_eq!(shell_word(""), "''");
    }

    /// A directory with a `dpop` file in it, removed on drop.
    struct Bin(PathBuf);

    impl Bin {
        fn new(label: &str) -> Self {
            let dir = std::env::temp_dir()
                .join(format!("dpop-program-word {label} {}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("dpop"), b"").unwrap();
            Self(dir)
        }
        fn exe(&self) -> PathBuf {
            self.0.join("dpop")
        }
    }

    impl Drop for Bin {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn the_binary_is_named_by_its_path_unless_path_finds_this_very_file() {
        let this = Bin::new("this");
        let other = Bin::new("other");
        let path = |dirs: &[&Path]| Some(std::env::join_paths(dirs).unwrap());
        let quoted = shell_word(&this.exe().to_string_lossy());
        assert!(quoted.starts_with('\''), "{quoted}");
        // Found first on PATH: the bare name.
        assert_eq!(
            program_word(Some(&this.exe()), path(&[&this.0, &other.0])),
            "dpop"
        );
        // Another dpop comes first, or none at all, or no PATH: the quoted path.
        assert_eq!(
            program_word(Some(&this.exe()), path(&[&other.0, &this.0])),
            quoted
        );
        assert_eq!(
            program_word(Some(&this.exe()), path(&[Path::new("/nonexistent")])),
            quoted
        );
        assert_eq!(program_word(Some(&this.exe()), None), quoted);
        // The running binary unknown: the name is all there is.
        assert_eq!(program_word(None, path(&[&other.0])), "dpop");
    }
}
