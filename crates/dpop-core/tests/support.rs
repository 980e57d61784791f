//! Shared helpers: the RFC vectors file and a way to sign arbitrary header/claims.

use std::sync::OnceLock;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use dpop_core::{
    Algorithm, Htu, PrivateKey, ProofRequest, Signer, UnixTime, Verifier, VerifierConfig,
};
use serde_json::{Value, json};

pub(crate) const NOW: u64 = 1_700_000_000;
pub(crate) const URL: &str = "https://resource.example.org/protectedresource";
pub(crate) const TOKEN: &str = "Kz~8mXK1EalYznwH-LC-1fBAo.4Ljp~zsPE_NeO.gxU";

pub(crate) fn vectors() -> &'static Value {
    static V: OnceLock<Value> = OnceLock::new();
    V.get_or_init(|| serde_json::from_str(include_str!("vectors/rfc9449-examples.json")).unwrap())
}

pub(crate) fn now() -> UnixTime {
    UnixTime::from_secs(NOW)
}

pub(crate) fn es256() -> &'static PrivateKey {
    static K: OnceLock<PrivateKey> = OnceLock::new();
    K.get_or_init(|| PrivateKey::generate(Algorithm::Es256).unwrap())
}

pub(crate) fn verifier() -> Verifier {
    Verifier::new(
        VerifierConfig::builder()
            .with_default_algorithms()
            .without_nonces(),
    )
    .unwrap()
}

/// A verifier that allows every algorithm (the default list leaves some out).
pub(crate) fn verifier_all() -> Verifier {
    Verifier::new(
        VerifierConfig::builder()
            .with_algorithms(&dpop_core::ALL_ALGORITHMS)
            .unwrap()
            .without_nonces(),
    )
    .unwrap()
}

pub(crate) fn htu() -> Htu {
    Htu::parse(URL).unwrap()
}

pub(crate) fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// A standard header for `key`.
pub(crate) fn header(key: &PrivateKey) -> Value {
    json!({"typ": "dpop+jwt", "alg": key.algorithm().name(), "jwk": key.public_jwk().to_json_value()})
}

/// Standard claims for GET URL at NOW with ath of TOKEN.
pub(crate) fn claims() -> Value {
    json!({"jti": "jti-1", "htm": "GET", "htu": URL, "iat": NOW, "ath": dpop_core::Ath::of_token(TOKEN).as_str()})
}

/// Signs raw header and payload text with `key`, whatever they contain.
pub(crate) fn sign_raw(key: &PrivateKey, header: &str, payload: &str) -> String {
    let input = format!("{}.{}", b64(header.as_bytes()), b64(payload.as_bytes()));
    let sig = key.sign(input.as_bytes()).unwrap();
    format!("{input}.{}", b64(&sig))
}

pub(crate) fn sign(key: &PrivateKey, header: &Value, claims: &Value) -> String {
    sign_raw(key, &header.to_string(), &claims.to_string())
}

/// Verifies `proof` as a GET to URL with TOKEN bound to `es256()`.
pub(crate) fn check(proof: &str) -> Result<(), dpop_core::Error> {
    let htu = htu();
    let jkt = es256().thumbprint().clone();
    let req = ProofRequest::new("GET", &htu).with_access_token(TOKEN, &jkt);
    verifier()
        .verify([proof.as_bytes()], &req, now())
        .map(|_| ())
}

pub(crate) fn reason(r: Result<(), dpop_core::Error>) -> &'static str {
    r.expect_err("expected a rejection").reason().as_str()
}
