//! Compact JWS signing and checking for test tokens. Built by hand on purpose: the tokens
//! are inputs to the code under test, so they must not come from (nor be checked by) the
//! same JWT library a gateway might use to check them.

use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED, UnparsedPublicKey};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use dpop_core::{KeyError, PublicJwk, Signer};
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

/// Splits a compact JWS into its header, its claims, the signing input and the
/// signature. For tests: it panics on anything but three base64url parts, the first two
/// JSON.
///
/// # Panics
/// When `jws` is not a compact JWS of that shape.
#[must_use]
pub fn decode_compact(jws: &str) -> (Value, Value, String, Vec<u8>) {
    let parts: Vec<&str> = jws.split('.').collect();
    assert_eq!(parts.len(), 3, "{jws}");
    let decode = |p: &str| URL_SAFE_NO_PAD.decode(p).expect("base64url");
    let json = |p: &str| -> Value { serde_json::from_slice(&decode(p)).expect("JSON") };
    (
        json(parts[0]),
        json(parts[1]),
        format!("{}.{}", parts[0], parts[1]),
        decode(parts[2]),
    )
}

/// Whether the ES256 `jws` verifies against the key with its `kid` in the JWK set
/// `jwks`, as a resource server would check it: the JWK parsed with dpop-core, the
/// signature verified with bare aws-lc-rs on the raw point.
///
/// # Panics
/// When `jws` or `jwks` is malformed, or the key is not a P-256 key.
#[must_use]
pub fn verifies_es256(jws: &str, jwks: &Value) -> bool {
    let (header, _, input, signature) = decode_compact(jws);
    let Some(jwk) = jwks["keys"]
        .as_array()
        .expect("a keys array")
        .iter()
        .find(|k| k["kid"] == header["kid"])
    else {
        return false;
    };
    let public = PublicJwk::from_json(&jwk.to_string()).expect("a valid JWK");
    let point = public.raw_public_key().expect("a key with a raw point");
    UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, point)
        .verify(input.as_bytes(), &signature)
        .is_ok()
}
