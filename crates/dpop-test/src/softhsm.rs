//! [`SoftHsmToken`]: a throw-away PKCS#11 token of Debian's SoftHSM 2, for tests of keys
//! that cannot leave their device.
//!
//! Each token lives in a directory of its own (mode 0700) with its own `softhsm2.conf`;
//! processes that open it must get `SOFTHSM2_CONF` (see [`SoftHsmToken::env`]). The user
//! PIN is in a file of mode 0600, named in the key URIs by `pin-source=file:`.

use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The environment variable naming the SoftHSM 2 PKCS#11 module
/// (`/usr/lib/softhsm/libsofthsm2.so` on Debian); tests that need a token skip without it.
pub const SOFTHSM_MODULE_ENV: &str = "DPOP_TEST_SOFTHSM_MODULE";

/// The user PIN of every test token.
pub const SOFTHSM_USER_PIN: &str = "4711-user";

/// A SoftHSM 2 token, initialised and empty. Its directory is removed when dropped.
#[derive(Debug)]
pub struct SoftHsmToken {
    dir: PathBuf,
    module: PathBuf,
    label: String,
}

impl SoftHsmToken {
    /// The module from `DPOP_TEST_SOFTHSM_MODULE`, or `None` (the caller skips, saying so).
    #[must_use]
    pub fn module() -> Option<PathBuf> {
        std::env::var_os(SOFTHSM_MODULE_ENV)
            .filter(|m| !m.is_empty())
            .map(PathBuf::from)
    }

    /// A new token labelled `label` in a fresh directory, initialised with
    /// `softhsm2-util` (on `PATH`).
    ///
    /// # Errors
    /// When the directory cannot be made or `softhsm2-util` fails.
    pub fn create(module: &Path, label: &str) -> io::Result<Self> {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "dpop-softhsm-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("tokens"))?;
        private(&dir, 0o700)?;
        std::fs::write(
            dir.join("softhsm2.conf"),
            format!(
                "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
                dir.join("tokens").display()
            ),
        )?;
        let pin = dir.join("pin");
        std::fs::write(&pin, format!("{SOFTHSM_USER_PIN}\n"))?;
        private(&pin, 0o600)?;
        let token = Self {
            dir,
            module: module.to_owned(),
            label: label.to_owned(),
        };
        let out = Command::new("softhsm2-util")
            .envs(token.env())
            .args(["--init-token", "--free", "--label", label])
            .args(["--so-pin", "4711-so", "--pin", SOFTHSM_USER_PIN])
            .output()?;
        if !out.status.success() {
            return Err(io::Error::other(format!(
                "softhsm2-util --init-token failed: {}",
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        Ok(token)
    }

    /// The environment a process needs to see this token.
    #[must_use]
    pub fn env(&self) -> Vec<(String, String)> {
        vec![(
            "SOFTHSM2_CONF".to_owned(),
            self.dir.join("softhsm2.conf").display().to_string(),
        )]
    }

    /// The file holding the user PIN (mode 0600).
    #[must_use]
    pub fn pin_file(&self) -> PathBuf {
        self.dir.join("pin")
    }

    /// The token's label.
    #[must_use]
    pub fn label(&self) -> &str {
        &self.label
    }

    /// The key URI of the object labelled `object` with id `id` (hex), the PIN from
    /// [`SoftHsmToken::pin_file`].
    #[must_use]
    pub fn uri(&self, object: &str, id_hex: &str) -> String {
        let id: String = id_hex
            .as_bytes()
            .chunks(2)
            .map(|pair| format!("%{}", String::from_utf8_lossy(pair)))
            .collect();
        format!(
            "pkcs11:token={};object={object};id={id}?module-path={}&pin-source=file:{}",
            self.label,
            self.module.display(),
            self.pin_file().display()
        )
    }

    /// `pkcs11-tool` (Debian `opensc`) on this token with `args`: its standard output.
    ///
    /// # Errors
    /// When it cannot run or fails.
    pub fn pkcs11_tool(&self, args: &[&str]) -> io::Result<String> {
        let out = Command::new("pkcs11-tool")
            .envs(self.env())
            .arg("--module")
            .arg(&self.module)
            .args(["--token-label", &self.label])
            .args(args)
            .output()?;
        if !out.status.success() {
            return Err(io::Error::other(format!(
                "pkcs11-tool {args:?} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

impl Drop for SoftHsmToken {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn private(path: &Path, mode: u32) -> io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    }
    #[cfg(not(unix))]
    let _ = (path, mode);
    Ok(())
}
