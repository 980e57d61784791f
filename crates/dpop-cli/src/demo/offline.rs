//! `dpop demo --offline`: DPoP explained by doing it, in-process, with no files and no network.
//!
//! A client key, a token bound to it, a proof, and a resource server verifying it with a
//! replay store; then the attacks DPoP exists to stop, each of which must be refused
//! with the expected reason code. Every step is checked, so the demo is also a smoke
//! test of the whole verification path: it exits 1 if any step misbehaves.

use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use dpop_core::{
    Algorithm, Error, Htu, Jkt, MemoryReplayStore, NonceSecret, NonceValidator, PrivateKey,
    ProofBuilder, ProofRequest, RandomSource, Reason, StatelessNonces, SystemRandomSource,
    UnixTime, Verifier, VerifierConfig,
};

use crate::clock;
use crate::error::{CliError, EXIT_INVALID, EXIT_OK};

const API_URL: &str = "https://api.example.com/v1/items";
const OTHER_URL: &str = "https://api.example.com/v1/admin";

pub(crate) fn run(out: &mut dyn Write) -> Result<ExitCode, CliError> {
    let mut demo = Demo {
        out,
        now: clock::now()?,
        step: 0,
        failures: 0,
    };
    demo.resource_server()?;
    demo.summary()?;
    Ok(ExitCode::from(if demo.failures == 0 {
        EXIT_OK
    } else {
        EXIT_INVALID
    }))
}

/// The walk-through's state: where output goes, the fixed "now" of the story, and the
/// tally that decides the exit code.
struct Demo<'o> {
    out: &'o mut dyn Write,
    now: UnixTime,
    step: u32,
    failures: u32,
}

fn setup(what: &str) -> impl Fn(Error) -> CliError + '_ {
    move |e| CliError::failed(format!("demo setup failed ({what}): {e}"))
}

impl Demo<'_> {
    /// Client, authorization server and resource server, and the attacks on the latter.
    fn resource_server(&mut self) -> Result<(), CliError> {
        let now = self.now;
        self.line(
            "DPoP (RFC 9449) binds an access token to a key pair: with every request the client \
             sends a fresh proof, signed with that key, of which request it is making.",
        )?;
        self.line("")?;

        let key = PrivateKey::generate(Algorithm::Es256)
            .map_err(|e| CliError::failed(format!("cannot generate a key: {e}")))?;
        let jkt = key.thumbprint().clone();
        self.step("Client: generate an ES256 key pair. Its JWK thumbprint (jkt) is")?;
        self.detail(jkt.as_str())?;

        let token = random_token("at")?;
        self.step(&format!(
            "Authorization server: issue the access token {token:?}, bound to that key (cnf.jkt)."
        ))?;
        self.detail("Whoever steals the token still cannot use it without the private key.")?;

        let proof = sign(&key, "GET", API_URL, Some(&token), now)?;
        self.step(&format!(
            "Client: sign a proof for GET {API_URL}, with the token's hash (ath):"
        ))?;
        self.detail(&format!(
            "DPoP: {}... ({} characters; `dpop inspect` decodes one)",
            proof.get(..48).unwrap_or(&proof),
            proof.len()
        ))?;

        let api = Verifier::new(
            VerifierConfig::builder()
                .with_default_algorithms()
                .without_nonces(),
        )
        .map_err(setup("verifier"))?;
        let store = MemoryReplayStore::with_capacity(1024);
        let htu = parse_url(API_URL)?;
        let request = ProofRequest::new("GET", &htu).with_access_token(&token, &jkt);
        self.step(
            "API: check the proof against the request, the token and its cnf.jkt; record it.",
        )?;
        let verified = api
            .verify([proof.as_bytes()], &request, now)
            .and_then(|p| p.record(&store));
        self.expect_accepted(verified.map(|v| v.jkt().clone()), &jkt)?;

        self.line("")?;
        self.line("An attacker who captured the request tries again; each attempt must fail:")?;

        self.step("Replay: send the same request with the same proof again.")?;
        let again = api
            .verify([proof.as_bytes()], &request, now)
            .and_then(|p| p.record(&store));
        self.expect_refused(again.map(drop), Reason::Replay)?;

        let attacker = PrivateKey::generate(Algorithm::Es256)
            .map_err(|e| CliError::failed(format!("cannot generate a key: {e}")))?;
        self.step("Stolen token: use the token with a proof signed by the attacker's own key.")?;
        let forged = sign(&attacker, "GET", API_URL, Some(&token), now)?;
        self.expect_refused(
            check(&api, &store, &forged, &request, now),
            Reason::KeyMismatch,
        )?;

        self.step(&format!(
            "Redirected proof: send a proof made for {API_URL} to {OTHER_URL}."
        ))?;
        let other_htu = parse_url(OTHER_URL)?;
        let fresh = sign(&key, "GET", API_URL, Some(&token), now)?;
        let elsewhere = ProofRequest::new("GET", &other_htu).with_access_token(&token, &jkt);
        self.expect_refused(
            check(&api, &store, &fresh, &elsewhere, now),
            Reason::HtuMismatch,
        )?;

        self.step("Changed method: send a proof made for GET with a DELETE request.")?;
        let fresh = sign(&key, "GET", API_URL, Some(&token), now)?;
        let delete = ProofRequest::new("DELETE", &htu).with_access_token(&token, &jkt);
        self.expect_refused(
            check(&api, &store, &fresh, &delete, now),
            Reason::HtmMismatch,
        )?;

        let other_token = random_token("at")?;
        self.step(
            "Swapped token: send another token (bound to the same key) with a proof made for this one.",
        )?;
        let fresh = sign(&key, "GET", API_URL, Some(&token), now)?;
        let swapped = ProofRequest::new("GET", &htu).with_access_token(&other_token, &jkt);
        self.expect_refused(
            check(&api, &store, &fresh, &swapped, now),
            Reason::AthMismatch,
        )?;

        self.step(
            "Stale proof: send a proof made 10 minutes ago (the API accepts proofs up to 60 s old).",
        )?;
        let old = sign(
            &key,
            "GET",
            API_URL,
            Some(&token),
            now.saturating_sub(Duration::from_secs(600)),
        )?;
        self.expect_refused(check(&api, &store, &old, &request, now), Reason::IatTooOld)?;

        self.step("Tampered proof: change one character of the signature.")?;
        let fresh = sign(&key, "GET", API_URL, Some(&token), now)?;
        let tampered = tamper_signature(&fresh)
            .ok_or_else(|| CliError::failed("demo setup failed: a proof without a signature"))?;
        self.expect_refused(
            check(&api, &store, &tampered, &request, now),
            Reason::SignatureInvalid,
        )?;

        self.line("")?;
        self.line(
            "Server nonces (RFC 9449 §8, §9): the API can also demand a nonce it issued, so \
             proofs cannot be made in advance.",
        )?;
        let mut secret = zeroize::Zeroizing::new([0u8; 32]);
        SystemRandomSource
            .fill(secret.as_mut_slice())
            .map_err(|e| CliError::failed(format!("no randomness: {e}")))?;
        let nonces = Arc::new(StatelessNonces::new(
            NonceSecret::new(secret.as_slice()).map_err(setup("nonce secret"))?,
        ));
        let strict_api = Verifier::new(
            VerifierConfig::builder()
                .with_default_algorithms()
                .with_nonces(nonces.clone()),
        )
        .map_err(setup("verifier"))?;
        self.step("The client sends a proof without a nonce to an API that requires one.")?;
        let plain = sign(&key, "GET", API_URL, Some(&token), now)?;
        self.expect_refused(
            check(&strict_api, &store, &plain, &request, now),
            Reason::NonceRequired,
        )?;
        let nonce = nonces.issue(now).map_err(setup("nonce"))?;
        self.detail(&format!("the API answers 401 with DPoP-Nonce: {nonce}"))?;

        self.step("The client retries with a new proof that carries this nonce.")?;
        let with_nonce = ProofBuilder::new("GET", API_URL)
            .and_then(|b| b.nonce(&nonce))
            .map_err(setup("proof"))?
            .access_token(&token)
            .sign(&key, &SystemRandomSource, now)
            .map_err(setup("proof"))?;
        let verified = strict_api
            .verify([with_nonce.as_bytes()], &request, now)
            .and_then(|p| p.record(&store));
        self.expect_accepted(verified.map(|v| v.jkt().clone()), &jkt)?;
        Ok(())
    }

    fn summary(&mut self) -> Result<(), CliError> {
        self.line("")?;
        if self.failures == 0 {
            self.line(&format!("All {} steps behaved as expected.", self.step))
        } else {
            self.line(&format!(
                "{} of {} steps did NOT behave as expected.",
                self.failures, self.step
            ))
        }
    }

    fn line(&mut self, text: &str) -> Result<(), CliError> {
        writeln!(self.out, "{text}").map_err(|e| CliError::stdout(&e))
    }

    fn step(&mut self, text: &str) -> Result<(), CliError> {
        self.step += 1;
        let n = self.step;
        self.line(&format!("{n:>2}. {text}"))
    }

    fn detail(&mut self, text: &str) -> Result<(), CliError> {
        self.line(&format!("    {text}"))
    }

    fn expect_accepted(&mut self, result: Result<Jkt, Error>, jkt: &Jkt) -> Result<(), CliError> {
        match result {
            Ok(verified) if verified == *jkt => {
                self.detail(&format!("✓ accepted: the sender holds the key {verified}"))
            }
            Ok(verified) => {
                self.failures += 1;
                self.detail(&format!(
                    "✗ UNEXPECTED: accepted for the wrong key {verified}"
                ))
            }
            Err(e) => {
                self.failures += 1;
                self.detail(&format!("✗ UNEXPECTED: refused with {} ({e})", e.reason()))
            }
        }
    }

    fn expect_refused(
        &mut self,
        result: Result<(), Error>,
        expected: Reason,
    ) -> Result<(), CliError> {
        match result {
            Err(e) if e.reason() == expected => {
                self.detail(&format!("✓ refused: {} ({})", e.reason(), e.description()))
            }
            Err(e) => {
                self.failures += 1;
                self.detail(&format!(
                    "✗ UNEXPECTED: refused with {} instead of {expected} ({e})",
                    e.reason()
                ))
            }
            Ok(()) => {
                self.failures += 1;
                self.detail(&format!("✗ UNEXPECTED: accepted; expected {expected}"))
            }
        }
    }
}

/// Verifies and records, as the API does for every request.
fn check(
    verifier: &Verifier,
    store: &MemoryReplayStore,
    proof: &str,
    request: &ProofRequest<'_>,
    now: UnixTime,
) -> Result<(), Error> {
    verifier
        .verify([proof.as_bytes()], request, now)
        .and_then(|p| p.record(store))
        .map(drop)
}

fn sign(
    key: &PrivateKey,
    method: &str,
    url: &str,
    token: Option<&str>,
    iat: UnixTime,
) -> Result<String, CliError> {
    let mut builder = ProofBuilder::new(method, url).map_err(setup("proof"))?;
    if let Some(token) = token {
        builder = builder.access_token(token);
    }
    builder
        .sign(key, &SystemRandomSource, iat)
        .map_err(setup("proof"))
}

fn parse_url(url: &str) -> Result<Htu, CliError> {
    Htu::parse(url).map_err(|e| CliError::failed(format!("demo setup failed ({url}): {e}")))
}

/// An opaque random token, like an authorization server would issue.
fn random_token(prefix: &str) -> Result<String, CliError> {
    let mut bytes = [0u8; 12];
    SystemRandomSource
        .fill(&mut bytes)
        .map_err(|e| CliError::failed(format!("no randomness: {e}")))?;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    Ok(format!("{prefix}-{hex}"))
}

/// The proof with one character in the middle of its signature changed (to another
/// base64url character, so the proof stays well-formed and only the signature is wrong).
fn tamper_signature(proof: &str) -> Option<String> {
    let sig_start = proof.rfind('.')? + 1;
    let sig_len = proof.len().checked_sub(sig_start)?;
    let at = sig_start + sig_len / 2;
    let old = proof.get(at..=at)?;
    let new = if old == "A" { "B" } else { "A" };
    Some(format!("{}{new}{}", proof.get(..at)?, proof.get(at + 1..)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demo_passes_every_step() {
        let mut out = Vec::new();
        let code = run(&mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(code, ExitCode::SUCCESS, "{text}");
        assert!(!text.contains("UNEXPECTED"), "{text}");
    }

    #[test]
    fn tampering_changes_only_the_signature() {
        let t = tamper_signature("aaa.bbb.cAcc").unwrap();
        assert_eq!(t, "aaa.bbb.cAAc");
        let t = tamper_signature("aaa.bbb.ccAc").unwrap();
        assert_eq!(t, "aaa.bbb.ccBc");
        assert_eq!(tamper_signature("no-dots"), None);
    }
}
