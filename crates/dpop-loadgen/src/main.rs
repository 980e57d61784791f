//! `dpop-loadgen`: the load generator of `scripts/loadtest.sh` (method in
//! `docs/benchmarks.md`).
//!
//! - `upstream`: the fastest plain HTTP/1.1 responder, for the "upstream direct" row, or
//!   with `--tls-cert`/`--tls-key` an https one (HTTP/1.1 and HTTP/2 by ALPN);
//! - `issuer`: a [`dpop_test::MockIssuer`] on a fixed address, plus a client key and one access
//!   token bound to it, written to files for `run --dpop`;
//! - `run`: a closed-loop generator over a fixed number of keep-alive connections,
//!   optionally sending a fresh, pre-generated DPoP proof with every request; with
//!   `--token-endpoint`, every request is a token request (a form body and a proof
//!   carrying the server's nonce, fetched once before the run). It speaks HTTP/1.1 or,
//!   with `--http2`, HTTP/2 (one request in flight per connection either way), over TCP
//!   or TLS (`https://` URLs, trusting `--ca-file`), and with `--cpu-pid` (repeatable)
//!   reports the CPU time per request of one process, or the sum over several, over the
//!   timed phase;
//! - `certs`: a private CA and a server certificate for 127.0.0.1 and localhost, for the
//!   TLS rows.
//!
//! Exit codes: 0 success, 1 failure (including a run where no request completed),
//! 2 usage errors (clap's own).

mod cpu;
mod files;
mod http;
mod proofs;
mod run;
mod servers;
mod stats;
mod tls;
mod verify;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context as _, ensure};
use clap::{Args, Parser, Subcommand};

/// The load generator for the DPoP gateway's load test.
#[derive(Debug, Parser)]
#[command(name = "dpop-loadgen", version)]
struct Cli {
    /// Worker threads of the async runtime. Defaults to one per core.
    #[arg(long, global = true)]
    threads: Option<usize>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve 200 "ok" to every request, as fast as possible (the upstream baseline).
    Upstream(UpstreamArgs),
    /// Run a mock issuer; write a client key and a DPoP-bound access token; serve until killed.
    Issuer(IssuerArgs),
    /// Send requests over keep-alive connections for a fixed time and print one JSON line.
    Run(RunArgs),
    /// Write a private CA (ca.pem) and a server certificate for 127.0.0.1 and localhost
    /// (server.pem, server.key) into a directory.
    Certs(CertsArgs),
    /// Measure the CPU time of one bare ES256 signature verification (aws-lc-rs, the key
    /// parsed each time as a proof's must be) and print one JSON line.
    Verify(VerifyArgs),
}

#[derive(Debug, Args)]
struct VerifyArgs {
    /// How long to verify, in seconds (at most 60).
    #[arg(long, default_value_t = 2.0)]
    seconds: f64,
}

#[derive(Debug, Args)]
struct UpstreamArgs {
    /// Address to listen on, e.g. 127.0.0.1:18081.
    #[arg(long)]
    listen: SocketAddr,
    /// Serve https with this certificate chain (PEM); ALPN offers h2 and http/1.1.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct CertsArgs {
    /// The directory to write ca.pem, server.pem and server.key (mode 0600) into;
    /// created if missing.
    #[arg(long)]
    out: PathBuf,
}

#[derive(Debug, Args)]
struct IssuerArgs {
    /// Address to listen on; the issuer identifier is http://ADDR.
    #[arg(long)]
    listen: SocketAddr,
    /// Where to write the access token.
    #[arg(long)]
    token_out: PathBuf,
    /// Where to write the client's ES256 private key (PKCS#8 PEM, mode 0600).
    #[arg(long)]
    key_out: PathBuf,
    /// The token's audience.
    #[arg(long)]
    aud: String,
    /// The token's lifetime in seconds.
    #[arg(long, default_value_t = 3600)]
    lifetime: i64,
}

#[derive(Debug, Args)]
struct RunArgs {
    /// Target URL, e.g. http://127.0.0.1:18080/items or https://127.0.0.1:18443/items.
    #[arg(long)]
    url: String,
    /// The CA certificates (PEM) to trust for an https:// URL; the only roots used.
    #[arg(long)]
    ca_file: Option<PathBuf>,
    /// Speak HTTP/2: ALPN h2 over TLS (a server that does not select it is an error),
    /// prior knowledge over plain TCP. Each connection still carries one request at a
    /// time.
    #[arg(long)]
    http2: bool,
    /// Report this process's CPU time (user + system, from /proc/PID/stat) per request
    /// over the timed phase, e.g. the server under test. Repeatable: the figure is then
    /// the sum over all the processes given (say, nginx's master and each worker; a
    /// process's children are not included in its own figure).
    #[arg(long, value_name = "PID")]
    cpu_pid: Vec<u32>,
    /// Keep-alive connections, each sending requests back to back.
    #[arg(long, default_value_t = 32)]
    connections: usize,
    /// Length of the timed phase, in seconds.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Length of the untimed warmup before it, in seconds.
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// Send `Authorization: DPoP <token>` and a fresh DPoP proof with every request.
    #[arg(long, requires_all = ["key", "token"])]
    dpop: bool,
    /// The URL is a token endpoint: POST `--form` with a fresh proof (no access token)
    /// carrying the server's nonce, fetched by one request before the run.
    #[arg(long, requires_all = ["key", "form"], conflicts_with_all = ["dpop", "token"])]
    token_endpoint: bool,
    /// The request body, sent as application/x-www-form-urlencoded (e.g. the grant and
    /// client credentials), with --token-endpoint.
    #[arg(long)]
    form: Option<String>,
    /// The client's private key (PKCS#8 PEM), with --dpop.
    #[arg(long)]
    key: Option<PathBuf>,
    /// A file holding the access token, with --dpop.
    #[arg(long)]
    token: Option<PathBuf>,
    /// HTTP method of every request (and the proofs' htm).
    #[arg(long, default_value = "GET")]
    method: String,
    /// Label for the JSON line.
    #[arg(long)]
    label: Option<String>,
    /// Most proofs to pre-generate (about 0.6 KB each).
    #[arg(long, default_value_t = 400_000)]
    max_proofs: usize,
}

fn main() -> ExitCode {
    match run() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<ExitCode> {
    let cli = Cli::parse();
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    runtime.enable_all();
    if let Some(n) = cli.threads {
        ensure!(n > 0, "--threads must be at least 1");
        runtime.worker_threads(n);
    }
    let runtime = runtime.build().context("starting the async runtime")?;
    runtime.block_on(async move {
        match cli.command {
            Command::Upstream(args) => servers::upstream(args).await,
            Command::Issuer(args) => servers::issuer(args).await,
            Command::Run(args) => run::load(args).await,
            Command::Certs(args) => tls::certs(&args),
            Command::Verify(args) => verify::cost(&args),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_args(extra: &[&str]) -> Result<RunArgs, clap::Error> {
        let mut argv = vec!["dpop-loadgen", "run", "--url", "http://127.0.0.1:1/"];
        argv.extend_from_slice(extra);
        Cli::try_parse_from(argv).map(|cli| match cli.command {
            Command::Run(args) => args,
            other => panic!("not run: {other:?}"),
        })
    }

    #[test]
    fn cpu_pid_is_repeatable() {
        assert!(run_args(&[]).unwrap().cpu_pid.is_empty());
        assert_eq!(run_args(&["--cpu-pid", "42"]).unwrap().cpu_pid, [42]);
        assert_eq!(
            run_args(&["--cpu-pid", "42", "--cpu-pid", "7", "--cpu-pid=9"])
                .unwrap()
                .cpu_pid,
            [42, 7, 9],
            "in the order given"
        );
        // Not a list in one value, not a pid.
        for bad in [
            ["--cpu-pid", "42,7"],
            ["--cpu-pid", "-1"],
            ["--cpu-pid", ""],
        ] {
            assert!(run_args(&bad).is_err(), "{bad:?}");
        }
    }
}
