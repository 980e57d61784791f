//! Compact JWS signing for test tokens. Built by hand on purpose: the tokens are inputs
//! to the code under test, so they must not come from the same JWT library a gateway
//! might use to check them.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use dpop_core::{KeyError, Signer};
use serde_json::Value;

/// base64url without padding (RFC 7515 §2).
#[must_use]
pub fn b64url(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Signs `header` and `claims` as a compact JWS with `signer`, exactly as given: nothing
/// is added or checked, so tests can build malformed or hostile tokens (wrong `alg`,
/// missing `kid`, a `typ` of their choosing).
///
/// # Errors
/// When the signer fails.
pub fn sign_compact(
    signer: &dyn Signer,
    header: &Value,
    claims: &Value,
) -> Result<String, KeyError> {
    let mut out = b64url(header.to_string().as_bytes());
    out.push('.');
    out.push_str(&b64url(claims.to_string().as_bytes()));
    let signature = signer.sign(out.as_bytes())?;
    out.push('.');
    out.push_str(&b64url(&signature));
    Ok(out)
}
