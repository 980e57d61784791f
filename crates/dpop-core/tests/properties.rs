//! Property tests: no input makes the verifier panic, and mutations of a valid proof
//! are never accepted.

use dpop_core::ProofRequest;
use proptest::prelude::*;

use crate::support::*;

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, .. ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let htu = htu();
        let _ = verifier_all().verify([data.as_slice()], &ProofRequest::new("GET", &htu), now());
        dpop_core::internal::fuzzing::verify_proof(&data);
        dpop_core::internal::fuzzing::parse_jwk(&data);
    }

    #[test]
    fn arbitrary_json_parts_never_panic(header in "\\PC{0,200}", payload in "\\PC{0,200}", sig in "[A-Za-z0-9_-]{0,90}") {
        let proof = format!("{}.{}.{sig}", b64(header.as_bytes()), b64(payload.as_bytes()));
        let _ = check(&proof);
    }

    /// Any single-byte change to a valid proof is refused (base64url has no slack:
    /// non-canonical trailing bits are refused too).
    #[test]
    fn single_byte_mutations_are_rejected(pos in 0usize..400, byte in any::<u8>()) {
        let good = sign(es256(), &header(es256()), &claims());
        let mut bytes = good.into_bytes();
        let pos = pos % bytes.len();
        prop_assume!(bytes[pos] != byte);
        bytes[pos] = byte;
        prop_assert!(check(&String::from_utf8_lossy(&bytes)).is_err());
    }

    /// The iat window: accepted exactly inside [now - 60, now + 15].
    #[test]
    fn iat_window_is_exact(offset in -200i64..200) {
        let mut c = claims();
        c["iat"] = serde_json::json!(NOW as i64 + offset);
        let r = check(&sign(es256(), &header(es256()), &c));
        prop_assert_eq!(r.is_ok(), (-60..=15).contains(&offset), "offset {}", offset);
    }
}
