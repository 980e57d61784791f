//! [`SwTpm`]: a private software TPM 2.0 (swtpm) for tests of keys kept in a TPM, with
//! tpm2-tools as an independent reader.

use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The environment variable naming the swtpm binary; tests that need a TPM skip
/// without it.
pub const SWTPM_ENV: &str = "DPOP_TEST_SWTPM";

/// A swtpm child process on a free loopback port pair, its state in a fresh directory
/// (mode 0700); stopped (SIGTERM, so it saves its state) when dropped.
#[derive(Debug)]
pub struct SwTpm {
    binary: PathBuf,
    state: PathBuf,
    port: u16,
    child: Option<Child>,
}

static NEXT: AtomicU64 = AtomicU64::new(0);

/// A unique fresh directory under the system's temporary directory, mode 0700 (not
/// removed: the caller owns it).
///
/// # Panics
/// When it cannot be made.
#[must_use]
pub fn private_temp_dir(what: &str) -> PathBuf {
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("dpop-{what}-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir(&dir).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    }
    dir
}

/// A port P with P+1 free too, below the kernel's ephemeral range (where released
/// ports soon become the source ports of outgoing connections).
///
/// # Panics
/// When none is found in 200 tries.
#[must_use]
pub fn free_port_pair() -> u16 {
    let start = u64::from(std::process::id()).wrapping_mul(7919);
    for _ in 0..200 {
        let n = start.wrapping_add(NEXT.fetch_add(2, Ordering::Relaxed));
        let port = 20_000 + u16::try_from(n % 12_000).unwrap();
        let free = |p: u16| TcpListener::bind((Ipv4Addr::LOCALHOST, p)).is_ok();
        if free(port) && free(port + 1) {
            return port;
        }
    }
    panic!("no free loopback port pair")
}

impl SwTpm {
    /// The swtpm binary, or `None` (the test is then skipped, with a message).
    pub fn binary() -> Option<PathBuf> {
        match std::env::var_os(SWTPM_ENV) {
            Some(p) if !p.is_empty() => Some(PathBuf::from(p)),
            _ => {
                eprintln!(
                    "skipped: set DPOP_TEST_SWTPM to the swtpm binary (apt-get install swtpm) to run the TPM tests"
                );
                None
            }
        }
    }

    /// A new TPM, started; `None` (after saying the test is skipped) without swtpm.
    #[must_use]
    pub fn start() -> Option<Self> {
        let binary = Self::binary()?;
        let mut tpm = Self {
            binary,
            state: private_temp_dir("state"),
            port: 0,
            child: None,
        };
        tpm.run(None);
        Some(tpm)
    }

    /// # Panics
    /// When swtpm does not start within 50 attempts.
    ///
    /// Starts swtpm on the state directory, on `port` (retrying while it is not free
    /// yet) or on a free port pair (another one when one was taken in the meantime).
    pub fn run(&mut self, port: Option<u16>) {
        for _ in 0..50 {
            let port = port.unwrap_or_else(free_port_pair);
            let mut child = Command::new(&self.binary)
                .args(["socket", "--tpm2", "--tpmstate"])
                .arg(format!("dir={}", self.state.display()))
                .arg("--server")
                .arg(format!("type=tcp,port={port},bindaddr=127.0.0.1"))
                .arg("--ctrl")
                .arg(format!("type=tcp,port={},bindaddr=127.0.0.1", port + 1))
                .args(["--flags", "not-need-init,startup-clear"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if child.try_wait().unwrap().is_some() {
                    break;
                }
                // The control port: the server port serves one connection at a time.
                if TcpStream::connect((Ipv4Addr::LOCALHOST, port + 1)).is_ok() {
                    self.port = port;
                    self.child = Some(child);
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("swtpm did not start");
    }

    /// The process id of the running swtpm.
    #[must_use]
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Stops swtpm (SIGTERM, then SIGKILL after 5 s).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .status();
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if child.try_wait().unwrap().is_some() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops swtpm and starts it again on the same state (a reboot).
    pub fn restart(&mut self) {
        self.stop();
        self.run(None);
    }

    /// Stops swtpm and starts it again on the same state and the same ports, so that
    /// open signers reach it again.
    pub fn restart_in_place(&mut self) {
        self.stop();
        self.run(Some(self.port));
    }

    /// `tpm2_getcap handles-transient`: the loaded transient objects, one a line.
    pub fn transient_handles(&self) -> String {
        let out = Command::new("tpm2_getcap")
            .args(["handles-transient", "-T", &self.tcti()])
            .output()
            .expect("tpm2_getcap (apt-get install tpm2-tools)");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    }

    /// Removes the persistent object at `handle` with tpm2-tools.
    pub fn evict(&self, handle: &str) {
        self.tpm2(&["tpm2_evictcontrol", "-C", "o", "-c", handle], None);
    }

    /// Runs a tpm2-tools command in `dir`, then flushes the transient objects it left
    /// (without a resource manager they stay loaded, and only about three fit).
    pub fn tpm2(&self, args: &[&str], dir: Option<&std::path::Path>) {
        for args in [args, &["tpm2_flushcontext", "-t"]] {
            let mut command = Command::new(args[0]);
            command.args(&args[1..]).args(["-T", &self.tcti()]);
            if let Some(dir) = dir {
                command.current_dir(dir);
            }
            let out = command
                .output()
                .unwrap_or_else(|e| panic!("{} (apt-get install tpm2-tools): {e}", args[0]));
            assert!(
                out.status.success(),
                "{args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }

    /// The TCTI string that reaches this TPM.
    #[must_use]
    pub fn tcti(&self) -> String {
        format!("swtpm:host=127.0.0.1,port={}", self.port)
    }

    /// `tpm2_readpublic` of a persistent handle (tpm2-tools, an independent reader).
    pub fn readpublic(&self, handle: &str) -> String {
        let out = Command::new("tpm2_readpublic")
            .args(["-c", handle, "-T", &self.tcti()])
            .output()
            .expect("tpm2_readpublic (apt-get install tpm2-tools)");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }
}

impl Drop for SwTpm {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.state);
    }
}
