//! Randomness for identifiers, secrets and salts: the operating system's CSPRNG
//! (dpop-core's [`SystemRandomSource`]); without it the operation fails, never falls back.

use dpop_core::{RandomSource as _, SystemRandomSource};

/// `N` random bytes.
pub(crate) fn random_bytes<const N: usize>() -> Result<[u8; N], String> {
    let mut out = [0_u8; N];
    SystemRandomSource
        .fill(&mut out)
        .map_err(|_| "no system randomness".to_owned())?;
    Ok(out)
}
