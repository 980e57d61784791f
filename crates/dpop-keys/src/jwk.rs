//! Public JWKs from the raw public keys devices report.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use dpop_core::{Curve, PublicJwk};

/// The JWK of an uncompressed EC point (`0x04 || X || Y`, as PKCS#11's `CKA_EC_POINT`
/// holds inside its DER OCTET STRING, and as SEC1 writes it) on `curve`. The point is
/// checked by dpop-core's JWK parser (on the curve, right lengths).
///
/// # Errors
/// A reason when the bytes are not an uncompressed point of that curve.
pub fn ec_public_jwk(curve: Curve, point: &[u8]) -> Result<PublicJwk, String> {
    let len = curve.coordinate_len();
    let Some((&0x04, xy)) = point.split_first() else {
        return Err("the public key is not an uncompressed EC point".to_owned());
    };
    if xy.len() != 2 * len {
        return Err(format!(
            "the public key is {} bytes, not an uncompressed {} point ({} bytes)",
            point.len(),
            curve.name(),
            2 * len + 1
        ));
    }
    let (x, y) = xy.split_at(len);
    let json = serde_json::json!({
        "kty": "EC",
        "crv": curve.name(),
        "x": URL_SAFE_NO_PAD.encode(x),
        "y": URL_SAFE_NO_PAD.encode(y),
    });
    PublicJwk::from_json(&json.to_string()).map_err(|e| e.to_string())
}

/// The JWK of a raw 32-byte Ed25519 public key.
///
/// # Errors
/// A reason when the bytes are not an Ed25519 public key.
pub fn ed25519_public_jwk(key: &[u8]) -> Result<PublicJwk, String> {
    if key.len() != 32 {
        return Err(format!(
            "the public key is {} bytes, not an Ed25519 key (32 bytes)",
            key.len()
        ));
    }
    let json = serde_json::json!({
        "kty": "OKP",
        "crv": "Ed25519",
        "x": URL_SAFE_NO_PAD.encode(key),
    });
    PublicJwk::from_json(&json.to_string()).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use dpop_core::{Algorithm, Curve, PrivateKey};

    use super::{ec_public_jwk, ed25519_public_jwk};

    #[test]
    fn raw_keys_give_the_same_thumbprint_as_the_software_key() {
        for (alg, curve) in [
            (Algorithm::Es256, Curve::P256),
            (Algorithm::Es384, Curve::P384),
            (Algorithm::Es512, Curve::P521),
        ] {
            let key = PrivateKey::generate(alg).unwrap();
            let raw = key.public_jwk().raw_public_key().unwrap();
            let jwk = ec_public_jwk(curve, &raw).unwrap();
            assert_eq!(jwk.thumbprint(), key.thumbprint());
            assert!(ec_public_jwk(curve, &raw[1..]).is_err());
            let mut off_curve = raw.clone();
            off_curve[5] ^= 1;
            assert!(ec_public_jwk(curve, &off_curve).is_err());
        }
        let key = PrivateKey::generate(Algorithm::Ed25519).unwrap();
        let raw = key.public_jwk().raw_public_key().unwrap();
        assert_eq!(
            ed25519_public_jwk(&raw).unwrap().thumbprint(),
            key.thumbprint()
        );
        assert!(ed25519_public_jwk(&raw[1..]).is_err());
    }
}
