//! [`RedisServer`]: a private, throw-away `redis-server` for tests of the shared replay
//! store, which can be stopped and started again on the same port to test outages.

use std::fs::{self, File};
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::process::{free_port, log_path, wait_ready};

/// The environment variable naming the `redis-server` binary to use instead of the
/// one on `PATH`.
pub const REDIS_SERVER_ENV: &str = "DPOP_TEST_REDIS_SERVER";

/// How long [`RedisServer::spawn`] and [`RedisServer::start`] wait for Redis to listen.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// A `redis-server` child on `127.0.0.1`, without persistence (`--save ""
/// --appendonly no`). Killed when dropped.
#[derive(Debug)]
pub struct RedisServer {
    binary: PathBuf,
    port: u16,
    child: Option<Child>,
    log: PathBuf,
}

impl RedisServer {
    /// The binary to run: `$DPOP_TEST_REDIS_SERVER` when set and non-empty, else the
    /// first `redis-server` on `PATH`, else `None`.
    #[must_use]
    pub fn find_binary() -> Option<PathBuf> {
        if let Some(p) = std::env::var_os(REDIS_SERVER_ENV).filter(|p| !p.is_empty()) {
            return Some(PathBuf::from(p));
        }
        let path = std::env::var_os("PATH")?;
        std::env::split_paths(&path)
            .map(|dir| dir.join("redis-server"))
            .find(|p| p.is_file())
    }

    /// Starts Redis on a free port and waits until it listens. `Ok(None)` when there is
    /// no `redis-server` (see [`RedisServer::find_binary`]), so a test can skip:
    ///
    /// ```no_run
    /// # async fn t() -> std::io::Result<()> {
    /// let Some(redis) = dpop_test::RedisServer::spawn().await? else {
    ///     eprintln!("skipped: no redis-server (set DPOP_TEST_REDIS_SERVER or PATH)");
    ///     return Ok(());
    /// };
    /// # let _ = redis; Ok(()) }
    /// ```
    ///
    /// # Errors
    /// When Redis does not start (the error carries its output), including when
    /// [`REDIS_SERVER_ENV`] names a binary that cannot be run.
    pub async fn spawn() -> io::Result<Option<Self>> {
        let Some(binary) = Self::find_binary() else {
            return Ok(None);
        };
        let mut server = Self {
            binary,
            port: free_port(),
            child: None,
            log: log_path("redis-server"),
        };
        server.start().await?;
        Ok(Some(server))
    }

    /// `redis://127.0.0.1:PORT`.
    #[must_use]
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The address Redis listens on (when running).
    #[must_use]
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    /// The port, the same across [`RedisServer::stop`] and [`RedisServer::start`].
    #[must_use]
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Whether the process is running.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Kills Redis (SIGKILL, as in a crash) and waits for it to exit. All data is lost.
    /// Does nothing when it is not running.
    ///
    /// # Errors
    /// When the process cannot be waited for.
    pub fn stop(&mut self) -> io::Result<()> {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            child.wait()?;
        }
        Ok(())
    }

    /// Starts Redis again on the same port (empty) and waits until it listens. Does
    /// nothing when it is running.
    ///
    /// # Errors
    /// When Redis does not start (the port may have been taken meanwhile).
    pub async fn start(&mut self) -> io::Result<()> {
        if self.is_running() {
            return Ok(());
        }
        let out = File::create(&self.log)?;
        let mut child = Command::new(&self.binary)
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--daemonize", "no", "--loglevel", "warning"])
            // Nothing is persisted, but Redis still wants a writable directory.
            .arg("--dir")
            .arg(std::env::temp_dir())
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("cannot start {}: {e}", self.binary.display()),
                )
            })?;
        wait_ready(&mut child, self.addr(), READY_TIMEOUT, &self.log).await?;
        self.child = Some(child);
        Ok(())
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.stop();
        let _ = fs::remove_file(&self.log);
    }
}
