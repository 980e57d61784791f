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
    writeln!(out, "  export BILLING_SECRET='{}'", sys.billing_secret).map_err(w)?;
    writeln!(
        out,
        "  dpop curl {}/v1/items --key {} \\\n      --issuer {} --client-id billing --client-secret-env BILLING_SECRET -v",
        sys.gateway_url,
        key_path.display(),
        sys.issuer_url
    )
    .map_err(w)?;
    writeln!(
        out,
        "  dpop token --issuer {} --client-id billing --client-secret-env BILLING_SECRET --key {}",
        sys.issuer_url,
        key_path.display()
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
