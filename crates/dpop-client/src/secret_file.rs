//! Files holding a secret (a private key, a token): refused when group or others have
//! any permission on them, as ssh does for keys, and read up to a bound.

use std::io::Read as _;
use std::path::Path;

use zeroize::Zeroizing;

/// What a file holds, for the messages: `("key file", "a private key")`.
pub(crate) type Kind = (&'static str, &'static str);

/// The text of the file at `path` holding `kind`, at most `max` bytes.
///
/// # Errors
/// A message naming the file and the problem: it cannot be read, group or others have a
/// permission on it (Unix; the mode is that of the file opened), it is larger than
/// `max`, or it is not UTF-8. Never the content.
pub(crate) fn read(
    path: &Path,
    max: u64,
    (file, secret): Kind,
) -> Result<Zeroizing<String>, String> {
    let shown = path.display();
    let cannot = |e: std::io::Error| format!("cannot read the {file} {shown}: {e}");
    let opened = std::fs::File::open(path).map_err(cannot)?;
    let meta = opened.metadata().map_err(cannot)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(format!(
                "the {file} {shown} can be read by other users (mode {mode:04o}); {secret} \
                 must be readable by its owner only: run `chmod 600 {shown}`"
            ));
        }
    }
    let too_large = || {
        format!(
            "the {file} {shown} is larger than {} KiB: not a {file}",
            max / 1024
        )
    };
    if meta.len() > max {
        return Err(too_large());
    }
    let mut bytes = Zeroizing::new(Vec::new());
    opened
        .take(max.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(cannot)?;
    if bytes.len() as u64 > max {
        return Err(too_large());
    }
    let text =
        std::str::from_utf8(&bytes).map_err(|_| format!("the {file} {shown} is not UTF-8 text"))?;
    Ok(Zeroizing::new(text.to_owned()))
}
