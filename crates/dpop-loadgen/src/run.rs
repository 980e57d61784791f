//! `dpop-loadgen run`: the closed-loop generator.

use std::fs;
use std::io::Write as _;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use dpop_core::{PrivateKey, ProofBuilder};
use http_body_util::BodyExt as _;
use hyper::body::Bytes;
use hyper::header::{HeaderName, HeaderValue};

use crate::RunArgs;
use crate::cpu::{
    Switches, ThreadSwitches, process_ticks, processes_switches, processes_ticks, ticks_per_second,
};
use crate::http::{Sender, Target, Transport, connect, fetch_nonce, parse_target};
use crate::proofs::{ProofPool, generate};
use crate::stats::{Stats, ms, round3};

/// Proofs generated before the warmup: enough for a 2 s warmup at 10 000 requests/s,
/// about 0.2 s of signing on two cores. If the warmup uses them up earlier, it ends
/// there; its rate is still a valid estimate.
const FIRST_BATCH: usize = 20_000;

/// Proofs for the timed phase: the warmup's rate times the duration times this margin.
const PROOF_MARGIN: f64 = 1.5;

/// How long an in-flight request may run past the end of a phase before it is
/// abandoned (and counted as an error).
const GRACE: Duration = Duration::from_secs(5);

/// A gateway with default settings refuses proofs older than 60 s; warn when a run's
/// proofs could get near that.
const PROOF_AGE_WARNING_SECS: f64 = 45.0;

/// Reads the client's PKCS#8 PEM private key.
fn read_key(path: &Path) -> anyhow::Result<PrivateKey> {
    let pem = fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    PrivateKey::from_pkcs8_pem(&pem, None)
        .with_context(|| format!("{}: not a usable private key", path.display()))
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
            _ => match connect(&target).await {
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
        let mut request = target.request();
        if let Some(pool) = &pool {
            let Some(proof) = pool.take() else {
                sender = Some(s);
                break;
            };
            request.headers_mut().insert(dpop.clone(), proof);
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

pub(crate) async fn load(args: RunArgs) -> anyhow::Result<ExitCode> {
    ensure!(
        (1..=10_000).contains(&args.connections),
        "--connections must be between 1 and 10000"
    );
    let duration = secs(args.duration, "duration")?;
    ensure!(!duration.is_zero(), "--duration must be more than 0");
    let warmup = secs(args.warmup, "warmup")?;
    let label = args.label.clone().unwrap_or_else(|| args.url.clone());
    let transport = Transport {
        ca_file: args.ca_file.as_deref(),
        http2: args.http2,
    };
    let mut target = parse_target(&args.url, &args.method, transport).await?;
    // Checked before anything runs, so a wrong pid fails at once.
    // A pid given twice would count its CPU twice.
    for (i, pid) in args.cpu_pid.iter().enumerate() {
        ensure!(
            !args.cpu_pid[..i].contains(pid),
            "--cpu-pid {pid} is given twice (its CPU would be counted twice)"
        );
    }
    let cpu = if args.cpu_pid.is_empty() {
        None
    } else {
        processes_ticks(&args.cpu_pid).context("--cpu-pid")?;
        processes_switches(&args.cpu_pid).context("--cpu-pid")?;
        Some(ticks_per_second()?)
    };

    // With --dpop: the key and the token; with --token-endpoint: the key, the form and
    // the server's nonce. Either way, a first batch of proofs.
    let mut signing = None;
    if args.dpop {
        let (Some(key_path), Some(token_path)) = (&args.key, &args.token) else {
            bail!("--dpop needs --key and --token");
        };
        let key = read_key(key_path)?;
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
        signing = Some(Arc::new((builder, key)));
    }

    if args.token_endpoint {
        let (Some(key_path), Some(form)) = (&args.key, &args.form) else {
            bail!("--token-endpoint needs --key and --form");
        };
        let key = read_key(key_path)?;
        target.form = Some(Bytes::from(form.clone()));
        let mut builder = ProofBuilder::new(&args.method, &args.url)?;
        if let Some(nonce) = fetch_nonce(&target, &builder, &key).await? {
            eprintln!("the token endpoint requires nonces; proofs carry the one it issued");
            builder = builder.nonce(&nonce)?;
        }
        signing = Some(Arc::new((builder, key)));
    }

    let mut pool = None;
    let mut generated = 0usize;
    if let Some(ctx) = &signing {
        let first = if warmup.is_zero() {
            args.max_proofs
        } else {
            FIRST_BATCH.min(args.max_proofs)
        };
        let proofs = generate(ctx, first).await?;
        generated += proofs.len();
        pool = Some(Arc::new(ProofPool::new(proofs)));
    }

    let target = Arc::new(target);
    let mut senders = Vec::with_capacity(args.connections);
    for _ in 0..args.connections {
        let sender = connect(&target)
            .await
            .with_context(|| format!("connecting to {}", args.url))?;
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
            *slot = Some(connect(&target).await?);
        }
    }

    // CPU time is sampled right at the edges of the timed phase: nothing is in flight
    // at its start (the warmup waited for every answer) nor after its end (every
    // connection's task has returned), so the difference is the server's work for the
    // requests counted (and any failed ones), plus whatever it does in the background.
    // The server's context switches likewise.
    let cpu_sample = || -> anyhow::Result<Option<(Vec<u64>, u64, ThreadSwitches)>> {
        cpu.map(|_| {
            Ok((
                args.cpu_pid
                    .iter()
                    .map(|&pid| process_ticks(pid).context("--cpu-pid"))
                    .collect::<anyhow::Result<Vec<u64>>>()?,
                processes_ticks(&[std::process::id()])?,
                processes_switches(&args.cpu_pid).context("--cpu-pid")?,
            ))
        })
        .transpose()
    };
    let cpu_start = cpu_sample()?;
    let (_senders, stats, elapsed) = phase(&target, pool.as_ref(), senders, duration).await?;
    let cpu_end = cpu_sample()?;
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
    // µs of CPU per counted request: the --cpu-pid processes' together and each one's,
    // and the generator's own. And the --cpu-pid processes' context switches per counted
    // request.
    let (cpu_us, cpu_each, own_cpu_us, switches) = match (cpu, cpu_start, cpu_end) {
        (Some(hz), Some((s0, g0, w0)), Some((s1, g1, w1))) if requests > 0 => {
            let per_request = |ticks: u64| round3(ticks as f64 * 1e6 / hz as f64 / requests as f64);
            let spent: Vec<u64> = s1
                .iter()
                .zip(&s0)
                .map(|(b, a)| b.saturating_sub(*a))
                .collect();
            let w: Switches = w1.since(&w0)?;
            let per = |n: u64| round3(n as f64 / requests as f64);
            (
                Some(per_request(spent.iter().sum())),
                Some(spent.into_iter().map(per_request).collect::<Vec<f64>>()),
                Some(per_request(g1.saturating_sub(g0))),
                Some(SwitchRates {
                    voluntary: per(w.voluntary),
                    involuntary: per(w.involuntary),
                }),
            )
        }
        _ => (None, None, None, None),
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
            "\"proofs_exhausted\":{},\"http\":{},\"tls\":{},\"cpu_pid\":{},",
            "\"cpu_us_per_request\":{},\"generator_cpu_us_per_request\":{},",
            "\"switches_per_request\":{},\"cpu_us_per_request_each\":{}}}"
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
        if args.http2 { "\"2\"" } else { "\"1.1\"" },
        args.ca_file.is_some(),
        // One pid: the number, as before; several: the array, in the order given.
        match args.cpu_pid.as_slice() {
            [] => serde_json::Value::Null,
            [one] => serde_json::Value::from(*one),
            several => serde_json::Value::from(several.to_vec()),
        },
        serde_json::Value::from(cpu_us),
        serde_json::Value::from(own_cpu_us),
        switches_json(switches),
        serde_json::Value::from(cpu_each.as_deref()),
    );
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")?;
    out.flush()?;
    eprintln!(
        "{label}: {rps:.0} req/s ({requests} in {seconds:.2} s, {} connections), p50 {p50} ms, p99 {p99} ms, max {max} ms, non-2xx {}, errors {}{}{}",
        args.connections,
        stats.non_2xx,
        stats.errors,
        match (cpu_us, own_cpu_us, switches) {
            (
                Some(us),
                Some(own),
                Some(SwitchRates {
                    voluntary,
                    involuntary,
                }),
            ) => {
                let pids: Vec<String> = args.cpu_pid.iter().map(u32::to_string).collect();
                let whose = match pids.as_slice() {
                    [pid] => format!("process {pid}"),
                    several => {
                        let each: Vec<String> = several
                            .iter()
                            .zip(cpu_each.iter().flatten())
                            .map(|(pid, us)| format!("{us} in {pid}"))
                            .collect();
                        format!(
                            "processes {} together ({})",
                            several.join(", "),
                            each.join(", ")
                        )
                    }
                };
                format!(
                    "; CPU per request: {us} µs in {whose} ({involuntary} involuntary and {voluntary} voluntary context switches), {own} µs in the generator"
                )
            }
            _ => String::new(),
        },
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

/// Context switches of the `--cpu-pid` processes per counted request.
#[derive(Clone, Copy, Debug, PartialEq)]
struct SwitchRates {
    voluntary: f64,
    involuntary: f64,
}

/// `switches_per_request` in the JSON line: `{"voluntary":V,"involuntary":I}`, or `null`.
fn switches_json(switches: Option<SwitchRates>) -> String {
    match switches {
        Some(SwitchRates {
            voluntary,
            involuntary,
        }) => format!(
            "{{\"voluntary\":{},\"involuntary\":{}}}",
            serde_json::Value::from(voluntary),
            serde_json::Value::from(involuntary)
        ),
        None => "null".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn switches_in_the_json_line() {
        let line = switches_json(Some(SwitchRates {
            voluntary: 0.031,
            involuntary: 0.912,
        }));
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["voluntary"], 0.031, "{line}");
        assert_eq!(v["involuntary"], 0.912, "{line}");
        assert_eq!(switches_json(None), "null");
    }
}
