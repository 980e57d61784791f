//! Ports, readiness and child processes: [`free_port`], [`wait_for_tcp`] and
//! [`Gateway`], a handle on a server binary started for an end-to-end test.

use std::ffi::OsStr;
use std::fs::{self, File};
use std::io::{self, Read as _, Seek as _, SeekFrom};
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How long [`Gateway::spawn`] waits for the process to accept connections.
pub const DEFAULT_READY_TIMEOUT: Duration = Duration::from_secs(15);

/// How much of a log [`Gateway`] prints when it is dropped during a panic.
const LOG_TAIL_BYTES: u64 = 16 * 1024;

/// A loopback port that was free a moment ago, for something that binds it later (a
/// child process given it on its command line, a server that comes up after the
/// gateway was pointed at it). It is chosen below Linux's default ephemeral range
/// (32768–60999), which the kernel hands out for every outgoing connection and every
/// bind to port 0: a port from that range, released, is soon the source port of some
/// test's connection, and then "address in use" when it is bound. Falls back to a port
/// the kernel picks when none of the tries is free.
///
/// # Panics
/// When no loopback port can be bound at all.
#[must_use]
pub fn free_port() -> u16 {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    // Start from a place that differs per process, then walk: tests of one binary get
    // different ports, and binaries running at once are unlikely to meet.
    let start = u64::from(std::process::id()).wrapping_mul(7919);
    for _ in 0..64 {
        let n = start.wrapping_add(NEXT.fetch_add(1, Ordering::Relaxed));
        let port = 20_000 + u16::try_from(n % 12_000).unwrap_or(0);
        if TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok() {
            return port;
        }
    }
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind 127.0.0.1:0")
}

/// Waits until `addr` accepts a TCP connection, retrying every 20 ms.
///
/// # Errors
/// `TimedOut` (carrying the last connect error) when `timeout` passes first.
pub async fn wait_for_tcp(addr: SocketAddr, timeout: Duration) -> io::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let err = match tokio::net::TcpStream::connect(addr).await {
            Ok(_) => return Ok(()),
            Err(e) => e,
        };
        if Instant::now() >= deadline {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("{addr} did not accept a connection within {timeout:?}: {err}"),
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A fresh path in the temporary directory for a child's output.
pub(crate) fn log_path(name: &str) -> PathBuf {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    std::env::temp_dir().join(format!("dpop-test-{}-{n}-{name}.log", std::process::id()))
}

/// The last `max` bytes of the file at `path`, lossily decoded.
pub(crate) fn read_tail(path: &Path, max: u64) -> String {
    let Ok(mut file) = File::open(path) else {
        return String::new();
    };
    let len = file.metadata().map_or(0, |m| m.len());
    if len > max {
        let _ = file.seek(SeekFrom::Start(len - max));
    }
    let mut bytes = Vec::new();
    let _ = file.read_to_end(&mut bytes);
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Waits for `child` to exit, polling without blocking the async runtime.
pub(crate) async fn wait_exit(
    child: &mut Child,
    timeout: Duration,
) -> io::Result<Option<ExitStatus>> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until `addr` accepts TCP while checking that `child` is still alive, so a
/// process that fails at startup is reported at once with its output.
pub(crate) async fn wait_ready(
    child: &mut Child,
    addr: SocketAddr,
    timeout: Duration,
    log: &Path,
) -> io::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait()? {
            return Err(io::Error::other(format!(
                "the process exited ({status}) before accepting connections on {addr}; its output:\n{}",
                read_tail(log, LOG_TAIL_BYTES)
            )));
        }
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "the process did not accept connections on {addr} within {timeout:?}; its output:\n{}",
                    read_tail(log, LOG_TAIL_BYTES)
                ),
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A server process started for a test (the `dpop gateway` binary, typically). Its
/// stdout and stderr go to a temporary log file. Dropping the handle kills the process
/// and deletes the log (kept when `DPOP_TEST_KEEP_LOGS` is set); when the drop happens
/// during a panic, the log's tail is printed to stderr first, so a failing test shows
/// what the server said.
#[derive(Debug)]
pub struct Gateway {
    child: Child,
    addr: SocketAddr,
    log: PathBuf,
    status: Option<ExitStatus>,
}

impl Gateway {
    /// Starts `program` with `args` and waits up to [`DEFAULT_READY_TIMEOUT`] until
    /// `ready_addr` accepts TCP.
    ///
    /// # Errors
    /// When the program cannot be started, exits early, or is not ready in time (the
    /// error carries the tail of its output; the process is killed).
    pub async fn spawn<I, S>(
        program: impl AsRef<Path>,
        args: I,
        ready_addr: SocketAddr,
    ) -> io::Result<Self>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = Command::new(program.as_ref());
        cmd.args(args);
        Self::spawn_command(cmd, ready_addr, DEFAULT_READY_TIMEOUT).await
    }

    /// Like [`Gateway::spawn`] for a prepared command (environment variables, working
    /// directory); its stdin, stdout and stderr are replaced.
    ///
    /// # Errors
    /// As [`Gateway::spawn`].
    pub async fn spawn_command(
        mut cmd: Command,
        ready_addr: SocketAddr,
        timeout: Duration,
    ) -> io::Result<Self> {
        let name = Path::new(cmd.get_program())
            .file_name()
            .map_or_else(|| "process".into(), |n| n.to_string_lossy().into_owned());
        let log = log_path(&name);
        let out = File::create(&log)?;
        cmd.stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out);
        let mut child = cmd.spawn().map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot start {:?}: {e}", cmd.get_program()),
            )
        })?;
        if let Err(e) = wait_ready(&mut child, ready_addr, timeout, &log).await {
            let _ = fs::remove_file(&log);
            return Err(e);
        }
        Ok(Self {
            child,
            addr: ready_addr,
            log,
            status: None,
        })
    }

    /// The address that was waited for.
    #[must_use]
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ADDR` (no trailing slash).
    #[must_use]
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The process id.
    #[must_use]
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Where the process's stdout and stderr go.
    #[must_use]
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Everything the process has written so far (stdout and stderr, interleaved).
    #[must_use]
    pub fn output(&self) -> String {
        read_tail(&self.log, u64::MAX)
    }

    /// The exit status, if the process has exited.
    ///
    /// # Errors
    /// When the status cannot be read.
    pub fn try_wait(&mut self) -> io::Result<Option<ExitStatus>> {
        if self.status.is_none() {
            self.status = self.child.try_wait()?;
        }
        Ok(self.status)
    }

    /// Sends SIGTERM (through `kill -TERM`) and waits up to `timeout` for the process to
    /// exit, as a graceful-shutdown test wants. Past `timeout` the process is killed and
    /// the result is a `TimedOut` error.
    ///
    /// # Errors
    /// When `kill` cannot be run, or the process did not exit in time.
    pub async fn terminate(&mut self, timeout: Duration) -> io::Result<ExitStatus> {
        if let Some(status) = self.try_wait()? {
            return Ok(status);
        }
        let sent = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()?;
        if !sent.success() {
            // The process may have exited between try_wait and kill.
            if let Some(status) = self.try_wait()? {
                return Ok(status);
            }
            return Err(io::Error::other("kill -TERM failed"));
        }
        if let Some(status) = wait_exit(&mut self.child, timeout).await? {
            self.status = Some(status);
            return Ok(status);
        }
        let status = self.kill()?;
        Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("still running {timeout:?} after SIGTERM; killed ({status})"),
        ))
    }

    /// Kills the process (SIGKILL) and reaps it.
    ///
    /// # Errors
    /// When the process cannot be waited for.
    pub fn kill(&mut self) -> io::Result<ExitStatus> {
        if let Some(status) = self.try_wait()? {
            return Ok(status);
        }
        let _ = self.child.kill();
        let status = self.child.wait()?;
        self.status = Some(status);
        Ok(status)
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.kill();
        if std::thread::panicking() {
            eprintln!(
                "---- output of pid {} ({}) ----\n{}\n---- end ----",
                self.child.id(),
                self.log.display(),
                read_tail(&self.log, LOG_TAIL_BYTES)
            );
        }
        if std::env::var_os("DPOP_TEST_KEEP_LOGS").is_none() {
            let _ = fs::remove_file(&self.log);
        }
    }
}
