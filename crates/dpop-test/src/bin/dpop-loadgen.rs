//! `dpop-loadgen`: the load generator of `scripts/loadtest.sh` (method in
//! `docs/benchmarks.md`).
//!
//! - `upstream`: the fastest plain HTTP/1.1 responder, for the "upstream direct" row;
//! - `issuer`: a [`MockIssuer`] on a fixed address, plus a client key and one access
//!   token bound to it, written to files for `run --dpop`;
//! - `run`: a closed-loop generator over a fixed number of keep-alive connections,
//!   optionally sending a fresh, pre-generated DPoP proof with every request; with
//!   `--token-endpoint`, every request is a token request (a form body and a proof
//!   carrying the server's nonce, fetched once before the run).
//!
//! Exit codes: 0 success, 1 failure (including a run where no request completed),
//! 2 usage errors (clap's own).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::fs::{self, OpenOptions};
use std::io::Write as _;
use std::net::SocketAddr;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail, ensure};
use clap::{Args, Parser, Subcommand};
use dpop_core::{Algorithm, PrivateKey, ProofBuilder, SystemRandomSource, UnixTime};
use dpop_test::{MockIssuer, TokenSpec};
use hdrhistogram::Histogram;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Bytes;
use hyper::client::conn::http1::SendRequest;
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HOST, HeaderName, HeaderValue};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, Uri};
use hyper_util::rt::TokioIo;

/// Proofs generated before the warmup: enough for a 2 s warmup at 10 000 requests/s,
/// about 0.2 s of signing on two cores. If the warmup uses them up earlier, it ends
/// there; its rate is still a valid estimate.
const FIRST_BATCH: usize = 20_000;

/// Proofs for the timed phase: the warmup's rate times the duration times this margin.
const PROOF_MARGIN: f64 = 1.5;

/// The media type of `--form` bodies.
const FORM_TYPE: &str = "application/x-www-form-urlencoded";

/// How long an in-flight request may run past the end of a phase before it is
/// abandoned (and counted as an error).
const GRACE: Duration = Duration::from_secs(5);

/// A gateway with default settings refuses proofs older than 60 s; warn when a run's
/// proofs could get near that.
const PROOF_AGE_WARNING_SECS: f64 = 45.0;

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
}

#[derive(Debug, Args)]
struct UpstreamArgs {
    /// Address to listen on, e.g. 127.0.0.1:18081.
    #[arg(long)]
    listen: SocketAddr,
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
    /// Target URL (http only), e.g. http://127.0.0.1:18080/items.
    #[arg(long)]
    url: String,
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
            Command::Upstream(args) => upstream(args).await,
            Command::Issuer(args) => issuer(args).await,
            Command::Run(args) => load(args).await,
        }
    })
}

async fn upstream(args: UpstreamArgs) -> anyhow::Result<ExitCode> {
    let service = service_fn(|_req| async {
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
    });
    let server = dpop_test::serve(args.listen, service)
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
    eprintln!("dpop-loadgen upstream: listening on {}", server.url());
    server.serve_forever().await;
    Ok(ExitCode::SUCCESS)
}

async fn issuer(args: IssuerArgs) -> anyhow::Result<ExitCode> {
    let issuer = MockIssuer::builder()
        .listen(args.listen)
        .start()
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
    let key = PrivateKey::generate(Algorithm::Es256).context("generating the client key")?;
    let pem = key.to_pkcs8_pem().context("encoding the client key")?;
    write_atomically(&args.key_out, pem.as_bytes(), 0o600)?;
    let token = issuer.mint(&TokenSpec {
        lifetime_secs: args.lifetime,
        ..TokenSpec::bound(&args.aud, key.thumbprint().as_str())
    });
    write_atomically(&args.token_out, token.as_bytes(), 0o600)?;
    eprintln!(
        "dpop-loadgen issuer: {} (jwks {}); token for aud {:?} bound to jkt {} in {}",
        issuer.url(),
        issuer.jwks_uri(),
        args.aud,
        key.thumbprint(),
        args.token_out.display()
    );
    // Serve until killed; the issuer's tasks run on the runtime.
    std::future::pending::<()>().await;
    drop(issuer);
    Ok(ExitCode::SUCCESS)
}

/// Writes `bytes` to a temporary sibling created with `mode`, then renames it over
/// `path`, so a script polling for the file never reads it half-written.
fn write_atomically(path: &Path, bytes: &[u8], mode: u32) -> anyhow::Result<()> {
    let name = path
        .file_name()
        .with_context(|| format!("{}: not a file path", path.display()))?;
    let tmp = path.with_file_name(format!(
        ".{}.tmp-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
    // The mode only applies to a new file; make sure of it for a leftover one.
    file.set_permissions(fs::Permissions::from_mode(mode))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .with_context(|| format!("writing {}", tmp.display()))?;
    fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))?;
    Ok(())
}

/// Where and how to send requests.
#[derive(Debug)]
struct Target {
    addr: SocketAddr,
    host: HeaderValue,
    /// Origin-form request target (path and query).
    path: Uri,
    method: Method,
    authorization: Option<HeaderValue>,
    /// A form body sent with every request.
    form: Option<Bytes>,
}

async fn parse_target(url: &str, method: &str) -> anyhow::Result<Target> {
    let uri: Uri = url.parse().with_context(|| format!("{url}: not a URL"))?;
    ensure!(
        uri.scheme_str() == Some("http"),
        "{url}: only http:// URLs are supported (the load test runs on loopback)"
    );
    let authority = uri.authority().context("the URL has no host")?;
    let port = authority.port_u16().unwrap_or(80);
    let addr = tokio::net::lookup_host((authority.host(), port))
        .await
        .with_context(|| format!("resolving {authority}"))?
        .next()
        .with_context(|| format!("{authority} has no address"))?;
    let path = uri.path_and_query().map_or("/", |pq| pq.as_str());
    Ok(Target {
        addr,
        host: HeaderValue::from_str(authority.as_str())?,
        path: path.parse()?,
        method: Method::from_bytes(method.as_bytes()).context("--method is not a method")?,
        authorization: None,
        form: None,
    })
}

type Sender = SendRequest<Full<Bytes>>;

async fn connect(addr: SocketAddr) -> anyhow::Result<Sender> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(sender)
}

/// Pre-generated proofs, each handed out once.
#[derive(Debug)]
struct ProofPool {
    proofs: Vec<HeaderValue>,
    next: AtomicUsize,
    exhausted: AtomicBool,
}

impl ProofPool {
    fn new(proofs: Vec<HeaderValue>) -> Self {
        Self {
            proofs,
            next: AtomicUsize::new(0),
            exhausted: AtomicBool::new(false),
        }
    }

    fn take(&self) -> Option<HeaderValue> {
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        let proof = self.proofs.get(i).cloned();
        if proof.is_none() {
            self.exhausted.store(true, Ordering::Relaxed);
        }
        proof
    }

    fn is_exhausted(&self) -> bool {
        self.exhausted.load(Ordering::Relaxed)
    }

    /// The proofs not handed out yet (after a phase, when nobody takes any more).
    fn into_unused(self) -> Vec<HeaderValue> {
        let used = self.next.into_inner().min(self.proofs.len());
        let mut proofs = self.proofs;
        proofs.drain(..used);
        proofs
    }
}

/// Signs `n` proofs on every core. `iat` is the time of signing.
fn generate_proofs(
    builder: &ProofBuilder,
    key: &PrivateKey,
    n: usize,
) -> anyhow::Result<Vec<HeaderValue>> {
    let threads = std::thread::available_parallelism().map_or(1, usize::from);
    let per_thread = n.div_ceil(threads);
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                let count = per_thread.min(n.saturating_sub(t * per_thread));
                s.spawn(move || -> anyhow::Result<Vec<HeaderValue>> {
                    let mut out = Vec::with_capacity(count);
                    for _ in 0..count {
                        let proof = builder.sign(key, &SystemRandomSource, unix_now())?;
                        out.push(HeaderValue::from_str(&proof)?);
                    }
                    Ok(out)
                })
            })
            .collect();
        let mut all = Vec::with_capacity(n);
        for w in workers {
            let part = w
                .join()
                .map_err(|_| anyhow::anyhow!("a proof generator thread panicked"))??;
            all.extend(part);
        }
        Ok(all)
    })
}

fn unix_now() -> UnixTime {
    UnixTime::from_secs(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
    )
}

/// What one phase measured.
#[derive(Debug)]
struct Stats {
    latency_us: Histogram<u64>,
    status: BTreeMap<u16, u64>,
    non_2xx: u64,
    errors: u64,
    reconnects: u64,
    /// When the last counted response completed.
    last: Option<Instant>,
}

impl Stats {
    fn new() -> anyhow::Result<Self> {
        Ok(Self {
            // 1 µs to 60 s at 3 significant digits.
            latency_us: Histogram::new_with_bounds(1, 60_000_000, 3)?,
            status: BTreeMap::new(),
            non_2xx: 0,
            errors: 0,
            reconnects: 0,
            last: None,
        })
    }

    fn merge(&mut self, other: &Self) -> anyhow::Result<()> {
        self.latency_us.add(&other.latency_us)?;
        for (code, n) in &other.status {
            *self.status.entry(*code).or_default() += n;
        }
        self.non_2xx += other.non_2xx;
        self.errors += other.errors;
        self.reconnects += other.reconnects;
        self.last = self.last.max(other.last);
        Ok(())
    }

    fn requests(&self) -> u64 {
        self.latency_us.len()
    }
}

/// One connection's loop: requests back to back until `deadline` (or the proofs run
/// out). A response is counted when its request started before `deadline`.
async fn connection_loop(
    target: Arc<Target>,
    pool: Option<Arc<ProofPool>>,
    mut sender: Option<Sender>,
    deadline: Instant,
) -> anyhow::Result<(Option<Sender>, Stats)> {
    let dpop = HeaderName::from_static("dpop");
    let hard_stop = tokio::time::Instant::from_std(deadline + GRACE);
    let mut stats = Stats::new()?;
    while Instant::now() < deadline && !pool.as_ref().is_some_and(|p| p.is_exhausted()) {
        let mut s = match sender.take() {
            Some(s) if !s.is_closed() => s,
            _ => match connect(target.addr).await {
                Ok(s) => {
                    stats.reconnects += 1;
                    s
                }
                Err(_) => {
                    stats.errors += 1;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        if s.ready().await.is_err() {
            stats.errors += 1;
            continue;
        }
        let mut request = Request::new(Full::new(target.form.clone().unwrap_or_default()));
        *request.method_mut() = target.method.clone();
        *request.uri_mut() = target.path.clone();
        let headers = request.headers_mut();
        headers.insert(HOST, target.host.clone());
        if let Some(auth) = &target.authorization {
            headers.insert(AUTHORIZATION, auth.clone());
        }
        if target.form.is_some() {
            headers.insert(CONTENT_TYPE, HeaderValue::from_static(FORM_TYPE));
        }
        if let Some(pool) = &pool {
            let Some(proof) = pool.take() else {
                sender = Some(s);
                break;
            };
            headers.insert(dpop.clone(), proof);
        }
        let started = Instant::now();
        let exchange = async {
            let response = s.send_request(request).await?;
            let status = response.status().as_u16();
            let mut body = response.into_body();
            while let Some(frame) = body.frame().await {
                frame?;
            }
            Ok::<_, hyper::Error>(status)
        };
        match tokio::time::timeout_at(hard_stop, exchange).await {
            Ok(Ok(status)) => {
                let done = Instant::now();
                let us = u64::try_from((done - started).as_micros()).unwrap_or(u64::MAX);
                stats.latency_us.saturating_record(us.max(1));
                *stats.status.entry(status).or_default() += 1;
                if !(200..300).contains(&status) {
                    stats.non_2xx += 1;
                }
                stats.last = Some(done);
                sender = Some(s);
            }
            // A transport error, or still unanswered at the hard stop: the connection
            // is dropped and reopened on the next turn.
            Ok(Err(_)) => stats.errors += 1,
            Err(_) => {
                stats.errors += 1;
                break;
            }
        }
    }
    Ok((sender, stats))
}

/// Runs every connection for `length`; returns the connections, the merged stats and
/// the phase's measured length (start to last counted response).
async fn phase(
    target: &Arc<Target>,
    pool: Option<&Arc<ProofPool>>,
    senders: Vec<Option<Sender>>,
    length: Duration,
) -> anyhow::Result<(Vec<Option<Sender>>, Stats, Duration)> {
    let start = Instant::now();
    let deadline = start + length;
    let tasks: Vec<_> = senders
        .into_iter()
        .map(|s| {
            tokio::spawn(connection_loop(
                Arc::clone(target),
                pool.cloned(),
                s,
                deadline,
            ))
        })
        .collect();
    let mut senders = Vec::with_capacity(tasks.len());
    let mut stats = Stats::new()?;
    for task in tasks {
        let (sender, s) = task.await??;
        senders.push(sender);
        stats.merge(&s)?;
    }
    let elapsed = stats.last.map_or(length, |last| last - start);
    Ok((senders, stats, elapsed))
}

fn secs(value: f64, name: &str) -> anyhow::Result<Duration> {
    ensure!(
        value.is_finite() && (0.0..=3600.0).contains(&value),
        "--{name} must be between 0 and 3600 seconds"
    );
    Ok(Duration::from_secs_f64(value))
}

fn ms(us: u64) -> f64 {
    round3(us as f64 / 1000.0)
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

async fn load(args: RunArgs) -> anyhow::Result<ExitCode> {
    ensure!(
        (1..=10_000).contains(&args.connections),
        "--connections must be between 1 and 10000"
    );
    let duration = secs(args.duration, "duration")?;
    ensure!(!duration.is_zero(), "--duration must be more than 0");
    let warmup = secs(args.warmup, "warmup")?;
    let label = args.label.clone().unwrap_or_else(|| args.url.clone());
    let mut target = parse_target(&args.url, &args.method).await?;

    // With --dpop: the key, the token and a first batch of proofs.
    let mut signing = None;
    let mut pool = None;
    let mut generated = 0usize;
    if args.dpop {
        let (Some(key_path), Some(token_path)) = (&args.key, &args.token) else {
            bail!("--dpop needs --key and --token");
        };
        let pem = fs::read_to_string(key_path)
            .with_context(|| format!("reading {}", key_path.display()))?;
        let key = PrivateKey::from_pkcs8_pem(&pem, None)
            .with_context(|| format!("{}: not a usable private key", key_path.display()))?;
        let token = fs::read_to_string(token_path)
            .with_context(|| format!("reading {}", token_path.display()))?;
        let token = token.trim();
        ensure!(!token.is_empty(), "{}: empty token", token_path.display());
        target.authorization = Some(HeaderValue::from_str(&format!("DPoP {token}"))?);
        let builder = ProofBuilder::new(&args.method, &args.url)?.access_token(token);
        if args.warmup + args.duration > PROOF_AGE_WARNING_SECS {
            eprintln!(
                "warning: proofs are signed before the run; with warmup + duration over {PROOF_AGE_WARNING_SECS} s the last ones may be older than a server's 60 s limit"
            );
        }
        let signing_ctx = Arc::new((builder, key));
        let first = if warmup.is_zero() {
            args.max_proofs
        } else {
            FIRST_BATCH.min(args.max_proofs)
        };
        let proofs = generate(&signing_ctx, first).await?;
        generated += proofs.len();
        pool = Some(Arc::new(ProofPool::new(proofs)));
        signing = Some(signing_ctx);
    }

    if args.token_endpoint {
        let (Some(key_path), Some(form)) = (&args.key, &args.form) else {
            bail!("--token-endpoint needs --key and --form");
        };
        let pem = fs::read_to_string(key_path)
            .with_context(|| format!("reading {}", key_path.display()))?;
        let key = PrivateKey::from_pkcs8_pem(&pem, None)
            .with_context(|| format!("{}: not a usable private key", key_path.display()))?;
        target.form = Some(Bytes::from(form.clone()));
        let mut builder = ProofBuilder::new(&args.method, &args.url)?;
        if let Some(nonce) = fetch_nonce(&target, &builder, &key).await? {
            eprintln!("the token endpoint requires nonces; proofs carry the one it issued");
            builder = builder.nonce(&nonce)?;
        }
        let signing_ctx = Arc::new((builder, key));
        let first = if warmup.is_zero() {
            args.max_proofs
        } else {
            FIRST_BATCH.min(args.max_proofs)
        };
        let proofs = generate(&signing_ctx, first).await?;
        generated += proofs.len();
        pool = Some(Arc::new(ProofPool::new(proofs)));
        signing = Some(signing_ctx);
    }

    let target = Arc::new(target);
    let mut senders = Vec::with_capacity(args.connections);
    for _ in 0..args.connections {
        let sender = connect(target.addr)
            .await
            .with_context(|| format!("connecting to {}", target.addr))?;
        senders.push(Some(sender));
    }

    if !warmup.is_zero() {
        let (s, warm, warm_elapsed) = phase(&target, pool.as_ref(), senders, warmup).await?;
        senders = s;
        if let (Some(ctx), Some(p)) = (&signing, pool.take()) {
            // Enough proofs for the timed phase at the warmup's rate, with a margin;
            // the warmup's unused proofs go first.
            let rate = warm.requests() as f64 / warm_elapsed.as_secs_f64().max(1e-3);
            let want = (rate * duration.as_secs_f64() * PROOF_MARGIN).ceil() as usize
                + 2 * args.connections;
            let want = want.min(args.max_proofs);
            let mut proofs = Arc::into_inner(p)
                .context("the proof pool is still shared after the warmup")?
                .into_unused();
            let more = want.saturating_sub(proofs.len());
            eprintln!(
                "warmup: {:.0} requests/s; {} proofs left, generating {more} more (cap {})",
                rate,
                proofs.len(),
                args.max_proofs
            );
            let fresh = generate(ctx, more).await?;
            generated += fresh.len();
            proofs.extend(fresh);
            pool = Some(Arc::new(ProofPool::new(proofs)));
        }
    }
    // Connections the server closed during the warmup or the proof generation are
    // reopened now rather than inside the timed phase.
    for slot in &mut senders {
        if slot.as_ref().is_none_or(Sender::is_closed) {
            *slot = Some(connect(target.addr).await?);
        }
    }

    let (_senders, stats, elapsed) = phase(&target, pool.as_ref(), senders, duration).await?;
    let exhausted = pool.as_ref().is_some_and(|p| p.is_exhausted());
    let requests = stats.requests();
    let seconds = elapsed.as_secs_f64();
    let rps = if seconds > 0.0 {
        requests as f64 / seconds
    } else {
        0.0
    };
    let h = &stats.latency_us;
    let (p50, p99, max) = if requests > 0 {
        (
            ms(h.value_at_quantile(0.5)),
            ms(h.value_at_quantile(0.99)),
            ms(h.max()),
        )
    } else {
        (0.0, 0.0, 0.0)
    };
    let status: serde_json::Map<String, serde_json::Value> = stats
        .status
        .iter()
        .map(|(k, v)| (k.to_string(), (*v).into()))
        .collect();
    // Written by hand to keep the documented key order (serde_json's map sorts keys).
    let line = format!(
        concat!(
            "{{\"label\":{},\"requests\":{},\"seconds\":{},\"rps\":{},\"p50_ms\":{},",
            "\"p99_ms\":{},\"max_ms\":{},\"non_2xx\":{},\"errors\":{},\"connections\":{},",
            "\"reconnects\":{},\"status\":{},\"dpop\":{},\"proofs_generated\":{},",
            "\"proofs_exhausted\":{}}}"
        ),
        serde_json::Value::from(label.as_str()),
        requests,
        round3(seconds),
        round3(rps),
        p50,
        p99,
        max,
        stats.non_2xx,
        stats.errors,
        args.connections,
        stats.reconnects,
        serde_json::Value::Object(status),
        args.dpop || args.token_endpoint,
        generated,
        exhausted,
    );
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")?;
    out.flush()?;
    eprintln!(
        "{label}: {rps:.0} req/s ({requests} in {seconds:.2} s, {} connections), p50 {p50} ms, p99 {p99} ms, max {max} ms, non-2xx {}, errors {}{}",
        args.connections,
        stats.non_2xx,
        stats.errors,
        if exhausted {
            "; STOPPED EARLY: the pre-generated proofs ran out (raise --max-proofs)"
        } else {
            ""
        }
    );
    Ok(if requests == 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// One token request with a proof from `builder`: its status, `DPoP-Nonce` and body.
async fn token_request(
    target: &Target,
    builder: &ProofBuilder,
    key: &PrivateKey,
) -> anyhow::Result<(hyper::StatusCode, Option<String>, Bytes)> {
    let mut sender = connect(target.addr).await?;
    let proof = builder.sign(key, &SystemRandomSource, unix_now())?;
    let mut request = Request::new(Full::new(target.form.clone().unwrap_or_default()));
    *request.method_mut() = target.method.clone();
    *request.uri_mut() = target.path.clone();
    let headers = request.headers_mut();
    headers.insert(HOST, target.host.clone());
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(FORM_TYPE));
    headers.insert(
        HeaderName::from_static("dpop"),
        HeaderValue::from_str(&proof)?,
    );
    let response = sender.send_request(request).await?;
    let status = response.status();
    let nonce = response
        .headers()
        .get("dpop-nonce")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = response.into_body().collect().await?.to_bytes();
    Ok((status, nonce, body))
}

/// Before the run: learns the server's nonce (a server without nonces needs none) and
/// gets one token, so the server has verified the client's credentials once (and
/// remembers them) before anything is measured. Returns the nonce to put in proofs.
async fn fetch_nonce(
    target: &Target,
    builder: &ProofBuilder,
    key: &PrivateKey,
) -> anyhow::Result<Option<String>> {
    let (status, nonce, body) = token_request(target, builder, key).await?;
    let nonce = if status.is_success() {
        None
    } else {
        ensure!(
            nonce.is_some(),
            "the token endpoint answered {status} without a nonce: {}",
            String::from_utf8_lossy(&body)
        );
        nonce
    };
    if let Some(n) = &nonce {
        let with_nonce = builder.clone().nonce(n)?;
        let (status, _, body) = token_request(target, &with_nonce, key).await?;
        ensure!(
            status.is_success(),
            "the token endpoint refused a request with its own nonce ({status}): {}",
            String::from_utf8_lossy(&body)
        );
    }
    Ok(nonce)
}

/// Generates `n` proofs off the async workers and reports the signing rate.
async fn generate(
    ctx: &Arc<(ProofBuilder, PrivateKey)>,
    n: usize,
) -> anyhow::Result<Vec<HeaderValue>> {
    if n == 0 {
        return Ok(Vec::new());
    }
    let ctx = Arc::clone(ctx);
    let started = Instant::now();
    let proofs = tokio::task::spawn_blocking(move || generate_proofs(&ctx.0, &ctx.1, n)).await??;
    let took = started.elapsed().as_secs_f64();
    eprintln!(
        "generated {n} proofs in {took:.2} s ({:.0}/s on all cores)",
        n as f64 / took.max(1e-6)
    );
    Ok(proofs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_proof_is_handed_out_once() {
        let proofs = ["a", "b", "c"].map(HeaderValue::from_static).to_vec();
        let pool = ProofPool::new(proofs);
        assert_eq!(pool.take(), Some(HeaderValue::from_static("a")));
        assert!(!pool.is_exhausted());
        let unused = ProofPool::new(vec![HeaderValue::from_static("x")]);
        assert_eq!(
            unused.take().as_ref().map(HeaderValue::as_bytes),
            Some(&b"x"[..])
        );
        assert_eq!(unused.take(), None);
        assert!(unused.is_exhausted());
        assert!(unused.into_unused().is_empty());
        assert_eq!(pool.into_unused(), ["b", "c"].map(HeaderValue::from_static));
    }

    #[tokio::test]
    async fn targets() {
        let t = parse_target("http://127.0.0.1:8080/a/b?c=d", "POST")
            .await
            .unwrap();
        assert_eq!(t.addr, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(t.host, "127.0.0.1:8080");
        assert_eq!(t.path, "/a/b?c=d");
        assert_eq!(t.method, Method::POST);
        let t = parse_target("http://127.0.0.1", "GET").await.unwrap();
        assert_eq!((t.addr.port(), t.path.to_string()), (80, "/".to_owned()));
        assert!(parse_target("https://127.0.0.1/", "GET").await.is_err());
        assert!(parse_target("http://127.0.0.1/", "G T").await.is_err());
    }
}
