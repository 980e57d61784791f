//! Files a key reference names (a PIN file, a TPM key file, the issuer's key files):
//! read whole, up to a bound, only when they are regular files — a FIFO or a device is
//! refused without waiting on it — and, for a file holding a secret, only when it is this
//! user's own and nobody else may read it.

use std::io::Read as _;
use std::path::Path;

use zeroize::Zeroizing;

/// The content of the regular file at `path`, at most `max` bytes; `what` names it in
/// messages ("PIN file", "key file"). With `secret`, the file must also be readable by
/// its owner only (as ssh demands of keys) and belong to this user (unless this is root).
///
/// # Errors
/// A message naming the file and the problem, never its content.
pub fn read_file(
    path: &Path,
    max: u64,
    what: &str,
    secret: bool,
) -> Result<Zeroizing<Vec<u8>>, String> {
    let shown = path.display();
    let not_regular = || format!("the {what} {shown} is not a regular file");
    // Looked at before it is opened: opening a FIFO waits for a writer, for ever.
    let before =
        std::fs::metadata(path).map_err(|e| format!("cannot open the {what} {shown}: {e}"))?;
    if !before.is_file() {
        return Err(not_regular());
    }
    let mut open = std::fs::OpenOptions::new();
    open.read(true);
    // And opened without waiting, should a FIFO take its place meanwhile.
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        open.custom_flags(rustix::fs::OFlags::NONBLOCK.bits().cast_signed());
    }
    let file = open
        .open(path)
        .map_err(|e| format!("cannot open the {what} {shown}: {e}"))?;
    let meta = file
        .metadata()
        .map_err(|e| format!("cannot read the {what} {shown}: {e}"))?;
    if !meta.is_file() {
        return Err(not_regular());
    }
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(format!(
                "the {what} {shown} can be read by other users (mode {mode:04o}); run `chmod 600 {shown}`"
            ));
        }
        // Another user's file, even one only they can read: they chose its content.
        let me = rustix::process::geteuid().as_raw();
        if meta.uid() != me && me != 0 {
            return Err(format!(
                "the {what} {shown} belongs to another user (uid {}); it must be this user's own (uid {me})",
                meta.uid()
            ));
        }
    }
    #[cfg(not(unix))]
    let _ = secret;
    // Allocated at its full size up front: a buffer that grew while reading would leave
    // earlier, smaller copies of a secret in freed memory, never wiped.
    let capacity = usize::try_from(max.saturating_add(1)).unwrap_or(usize::MAX);
    let mut bytes = Zeroizing::new(Vec::with_capacity(capacity));
    file.take(max.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read the {what} {shown}: {e}"))?;
    if bytes.len() as u64 > max {
        return Err(format!("the {what} {shown} is larger than {max} bytes"));
    }
    Ok(bytes)
}
