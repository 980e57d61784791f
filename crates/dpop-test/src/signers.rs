//! Checks every signer backend's tests make of a key kept outside the process: its
//! proofs pass dpop-core's verifier, its signatures pass OpenSSL (an independent
//! verifier), and it signs from many threads at once.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use base64::Engine as _;
use dpop_core::{
    ALL_ALGORITHMS, Algorithm, Htu, Jkt, MemoryReplayStore, ProofBuilder, ProofRequest, Signer,
    SystemRandomSource, UnixTime, Verifier, VerifierConfig,
};

/// Signs a proof with `signer` for a request carrying an access token bound to it, has
/// dpop-core's verifier check it (every algorithm allowed) and record it in a replay
/// store; returns the thumbprint it was verified for.
///
/// # Panics
/// When any step fails: the assertion of the caller's test.
pub fn assert_proof_verifies(signer: &dyn Signer) -> Jkt {
    const URL: &str = "https://api.example.com/v1/items";
    const TOKEN: &str = "a-token-bound-to-the-device-key";
    let now = UnixTime::from_secs(1_700_000_000);
    let proof = ProofBuilder::new("POST", URL)
        .unwrap()
        .access_token(TOKEN)
        .sign(signer, &SystemRandomSource, now)
        .unwrap_or_else(|e| panic!("the signer cannot sign a proof: {e}"));
    let verifier = Verifier::new(
        VerifierConfig::builder()
            .with_algorithms(&ALL_ALGORITHMS)
            .unwrap()
            .without_nonces(),
    )
    .unwrap();
    let htu = Htu::parse(URL).unwrap();
    let jkt = signer.public_jwk().thumbprint().clone();
    let request = ProofRequest::new("POST", &htu).with_access_token(TOKEN, &jkt);
    let store = MemoryReplayStore::with_capacity(16);
    let verified = verifier
        .verify([proof.as_bytes()], &request, now)
        .unwrap_or_else(|e| panic!("the proof does not verify: {e}"))
        .record(&store)
        .unwrap();
    assert_eq!(verified.jkt(), &jkt);
    jkt
}

/// Checks `signature` over `message` with the `openssl` command line, the signer's
/// public key written as a SubjectPublicKeyInfo; and that a changed message does not
/// verify (so the check can fail). ES256, ES384, ES512 and EdDSA.
///
/// # Panics
/// When OpenSSL does not verify it, or verifies the changed message.
pub fn assert_openssl_verifies(signer: &dyn Signer, message: &[u8], signature: &[u8]) {
    let dir = crate::private_temp_dir("openssl");
    let verifies = |message: &[u8]| openssl_verify(&dir, signer, message, signature);
    let (ok, said) = verifies(message);
    assert!(ok, "openssl does not verify the signature: {said}");
    let (ok, said) = verifies(&[message, b"x"].concat());
    assert!(!ok, "openssl verifies a changed message: {said}");
    let _ = std::fs::remove_dir_all(&dir);
}

fn openssl_verify(
    dir: &Path,
    signer: &dyn Signer,
    message: &[u8],
    signature: &[u8],
) -> (bool, String) {
    let raw = signer.public_jwk().raw_public_key().unwrap();
    let (prefix, digest): (&[u8], Option<&str>) = match signer.algorithm() {
        Algorithm::Es256 => (
            b"\x30\x59\x30\x13\x06\x07\x2a\x86\x48\xce\x3d\x02\x01\x06\x08\x2a\x86\x48\xce\x3d\x03\x01\x07\x03\x42\x00",
            Some("-sha256"),
        ),
        Algorithm::Es384 => (
            b"\x30\x76\x30\x10\x06\x07\x2a\x86\x48\xce\x3d\x02\x01\x06\x05\x2b\x81\x04\x00\x22\x03\x62\x00",
            Some("-sha384"),
        ),
        Algorithm::Es512 => (
            b"\x30\x81\x9b\x30\x10\x06\x07\x2a\x86\x48\xce\x3d\x02\x01\x06\x05\x2b\x81\x04\x00\x23\x03\x81\x86\x00",
            Some("-sha512"),
        ),
        Algorithm::EdDsa | Algorithm::Ed25519 => {
            (b"\x30\x2a\x30\x05\x06\x03\x2b\x65\x70\x03\x21\x00", None)
        }
        other => panic!("no SubjectPublicKeyInfo prefix for {other}"),
    };
    let mut spki = prefix.to_vec();
    spki.extend(&raw);
    let pem = format!(
        "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
        base64::engine::general_purpose::STANDARD.encode(&spki)
    );
    let (public, msg, sig) = (
        dir.join("public.pem"),
        dir.join("message"),
        dir.join("signature"),
    );
    std::fs::write(&public, pem).unwrap();
    std::fs::write(&msg, message).unwrap();
    let mut cmd = Command::new("openssl");
    if let Some(digest) = digest {
        std::fs::write(&sig, fixed_to_der(signature)).unwrap();
        cmd.args(["dgst", digest, "-verify"])
            .arg(&public)
            .arg("-signature")
            .arg(&sig)
            .arg(&msg);
    } else {
        std::fs::write(&sig, signature).unwrap();
        cmd.args(["pkeyutl", "-verify", "-pubin", "-rawin", "-inkey"])
            .arg(&public)
            .arg("-in")
            .arg(&msg)
            .arg("-sigfile")
            .arg(&sig);
    }
    let out = cmd.output().expect("the openssl command");
    let said = format!(
        "{} {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), said)
}

/// A JWS `R || S` ECDSA signature as the DER `Ecdsa-Sig-Value` OpenSSL reads.
///
/// # Panics
/// For a signature too long for a two-byte DER length.
#[must_use]
pub fn fixed_to_der(signature: &[u8]) -> Vec<u8> {
    fn len(n: usize) -> Vec<u8> {
        match u8::try_from(n) {
            Ok(l) if l < 0x80 => vec![l],
            Ok(l) => vec![0x81, l],
            Err(_) => panic!("a signature too long for this test helper"),
        }
    }
    let int = |half: &[u8]| {
        let start = half.iter().position(|&b| b != 0).unwrap_or(half.len() - 1);
        let mut v = half[start..].to_vec();
        if v[0] & 0x80 != 0 {
            v.insert(0, 0);
        }
        let mut out = vec![0x02];
        out.extend(len(v.len()));
        out.extend(v);
        out
    };
    let (r, s) = signature.split_at(signature.len() / 2);
    let mut body = int(r);
    body.extend(int(s));
    let mut out = vec![0x30];
    out.extend(len(body.len()));
    out.extend(body);
    out
}

/// `threads` threads each sign `each` different messages with `signer` at once; every
/// signature must verify against the signer's public key.
///
/// # Panics
/// When a signature fails or does not verify.
pub fn sign_from_threads(signer: &Arc<dyn Signer>, threads: usize, each: usize) {
    let handles: Vec<_> = (0..threads)
        .map(|i| {
            let signer = Arc::clone(signer);
            std::thread::spawn(move || {
                for j in 0..each {
                    let message = format!("thread {i} message {j}");
                    let signature = signer
                        .sign(message.as_bytes())
                        .unwrap_or_else(|e| panic!("thread {i} message {j}: {e}"));
                    assert!(
                        signer.public_jwk().verify(
                            signer.algorithm(),
                            message.as_bytes(),
                            &signature
                        ),
                        "thread {i} message {j}: the signature does not verify"
                    );
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
}
