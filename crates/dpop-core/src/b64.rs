//! base64url without padding (RFC 7515 §2), strict: padding, other alphabets and
//! non-canonical trailing bits are refused, so one value has exactly one encoding and
//! thumbprints computed from the encoded form stay stable (RFC 7638 §3.1).

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

pub(crate) fn encode(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

pub(crate) fn decode(text: &[u8]) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD.decode(text).ok()
}

/// Decodes into `out`, which must be exactly the decoded length.
pub(crate) fn decode_exact(text: &[u8], out: &mut [u8]) -> Option<()> {
    if base64::decoded_len_estimate(text.len()) < out.len() {
        return None;
    }
    let mut buf = [0u8; 96];
    let scratch = buf.get_mut(..base64::decoded_len_estimate(text.len()))?;
    let n = URL_SAFE_NO_PAD.decode_slice(text, scratch).ok()?;
    if n != out.len() {
        return None;
    }
    out.copy_from_slice(scratch.get(..n)?);
    Some(())
}

/// Decodes a value that must be exactly `len` bytes, checking the text length first so
/// an oversized value is refused before any decoding work.
pub(crate) fn decode_len(text: &[u8], len: usize) -> Option<Vec<u8>> {
    if text.len() != (len * 4).div_ceil(3) {
        return None;
    }
    decode(text).filter(|bytes| bytes.len() == len)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strict() {
        assert_eq!(decode(b"AQAB"), Some(vec![1, 0, 1]));
        assert_eq!(decode(b"AQAB=="), None, "padding refused");
        assert_eq!(decode(b"AQ+/"), None, "standard alphabet refused");
        assert_eq!(decode(b"AR"), None, "non-canonical trailing bits refused");
        assert_eq!(decode(b"AQ"), Some(vec![1]));
        let mut out = [0u8; 3];
        assert_eq!(decode_exact(b"AQAB", &mut out), Some(()));
        assert_eq!(out, [1, 0, 1]);
        assert_eq!(decode_exact(b"AQ", &mut out), None, "short");
        assert_eq!(decode_exact(&[b'A'; 200], &mut out), None, "long");
        assert_eq!(decode_len(b"AQAB", 3), Some(vec![1, 0, 1]));
        assert_eq!(decode_len(b"AQA", 3), None, "short");
        assert_eq!(decode_len(b"AQABAA", 3), None, "long");
        assert_eq!(decode_len(&[b'A'; 1750], 1312).map(|b| b.len()), Some(1312));
    }
}
