//! ECDSA signature forms: devices and services that return DER (`Ecdsa-Sig-Value`,
//! RFC 3279 §2.2.3) where JWS wants the fixed-size `R || S` (RFC 7518 §3.4).

/// Converts a DER `SEQUENCE { r INTEGER, s INTEGER }` to `R || S`, each left-padded to
/// `coordinate_len` bytes (32 for P-256, 48 for P-384, 66 for P-521).
///
/// Strict: definite lengths in their shortest form, minimal positive integers, no
/// trailing bytes, and neither integer wider than the curve. Anything else is `None`, so
/// a device cannot smuggle a second reading of its signature past the caller.
#[must_use]
pub fn der_to_fixed(der: &[u8], coordinate_len: usize) -> Option<Vec<u8>> {
    let (body, rest) = take(der, 0x30)?;
    if !rest.is_empty() {
        return None;
    }
    let (r, rest) = take(body, 0x02)?;
    let (s, rest) = take(rest, 0x02)?;
    if !rest.is_empty() {
        return None;
    }
    let mut out = vec![0_u8; coordinate_len * 2];
    place(r, &mut out[..coordinate_len])?;
    place(s, &mut out[coordinate_len..])?;
    Some(out)
}

/// Splits one TLV of type `tag` off the front of `input`: (value, rest).
fn take(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (&t, input) = input.split_first()?;
    if t != tag {
        return None;
    }
    let (&first, input) = input.split_first()?;
    let (len, input) = match first {
        0..=0x7f => (usize::from(first), input),
        0x81 => {
            let (&len, input) = input.split_first()?;
            // The long form only for lengths the short form cannot express.
            if len < 0x80 {
                return None;
            }
            (usize::from(len), input)
        }
        _ => return None,
    };
    (input.len() >= len).then(|| input.split_at(len))
}

/// Writes a minimal positive DER INTEGER into `out`, right-aligned.
fn place(int: &[u8], out: &mut [u8]) -> Option<()> {
    let (&first, _) = int.split_first()?;
    if first & 0x80 != 0 {
        return None; // negative
    }
    let digits = if first == 0 {
        match int.get(1) {
            // The integer zero, or a leading zero in front of a byte with its top bit set.
            None => &int[1..],
            Some(b) if b & 0x80 != 0 => &int[1..],
            Some(_) => return None,
        }
    } else {
        int
    };
    if digits.len() > out.len() {
        return None;
    }
    let start = out.len() - digits.len();
    out[start..].copy_from_slice(digits);
    Some(())
}

#[cfg(test)]
mod tests {
    use aws_lc_rs::rand::SystemRandom;
    use aws_lc_rs::signature::{
        ECDSA_P256_SHA256_ASN1_SIGNING, ECDSA_P256_SHA256_FIXED, ECDSA_P384_SHA384_ASN1_SIGNING,
        ECDSA_P384_SHA384_FIXED, EcdsaKeyPair, KeyPair as _, UnparsedPublicKey,
    };

    use super::der_to_fixed;

    #[test]
    fn der_signatures_from_aws_lc_convert_and_verify() {
        let rng = SystemRandom::new();
        for (signing, verifying, len) in [
            (
                &ECDSA_P256_SHA256_ASN1_SIGNING,
                &ECDSA_P256_SHA256_FIXED,
                32,
            ),
            (
                &ECDSA_P384_SHA384_ASN1_SIGNING,
                &ECDSA_P384_SHA384_FIXED,
                48,
            ),
        ] {
            // Enough signatures that some r or s has a leading zero byte or a top bit set.
            for i in 0..200_u32 {
                let key = EcdsaKeyPair::generate(signing).unwrap();
                let msg = i.to_be_bytes();
                let der = key.sign(&rng, &msg).unwrap();
                let fixed = der_to_fixed(der.as_ref(), len).unwrap();
                UnparsedPublicKey::new(verifying, key.public_key().as_ref())
                    .verify(&msg, &fixed)
                    .unwrap();
            }
        }
    }

    #[test]
    fn malformed_der_is_refused() {
        let ok = [0x30, 0x06, 0x02, 0x01, 0x01, 0x02, 0x01, 0x02];
        assert_eq!(der_to_fixed(&ok, 2).unwrap(), [0, 1, 0, 2]);
        let cases: &[&[u8]] = &[
            &[],
            &[0x31, 0x06, 0x02, 0x01, 0x01, 0x02, 0x01, 0x02], // not a SEQUENCE
            &[0x30, 0x06, 0x02, 0x01, 0x01, 0x02, 0x01, 0x02, 0x00], // trailing byte
            &[0x30, 0x07, 0x02, 0x01, 0x01, 0x02, 0x01, 0x02], // length past the end
            &[0x30, 0x05, 0x02, 0x01, 0x01, 0x02, 0x00],       // empty integer
            &[0x30, 0x06, 0x02, 0x01, 0x81, 0x02, 0x01, 0x02], // negative r
            &[0x30, 0x07, 0x02, 0x02, 0x00, 0x01, 0x02, 0x01, 0x02], // needless leading zero
            &[0x30, 0x81, 0x06, 0x02, 0x01, 0x01, 0x02, 0x01, 0x02], // long form for a short length
            &[
                0x30, 0x09, 0x02, 0x01, 0x01, 0x02, 0x01, 0x02, 0x02, 0x01, 0x03,
            ], // a third integer
            &[0x30, 0x07, 0x02, 0x03, 0x01, 0x02, 0x03, 0x02, 0x01, 0x02][..9], // truncated
        ];
        for case in cases {
            assert_eq!(der_to_fixed(case, 2), None, "{case:02x?}");
        }
        // r wider than the curve.
        let wide = [0x30, 0x07, 0x02, 0x02, 0x01, 0x01, 0x02, 0x01, 0x02];
        assert_eq!(der_to_fixed(&wide, 1), None);
        // A zero integer is the single byte 0x00.
        let zero = [0x30, 0x06, 0x02, 0x01, 0x00, 0x02, 0x01, 0x02];
        assert_eq!(der_to_fixed(&zero, 2).unwrap(), [0, 0, 0, 2]);
    }
}
