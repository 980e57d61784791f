//! `dpop inspect`: decode a proof and run every server check on it, reporting each.
//!
//! The proof is checked the way a server checks it, with two deliberate differences
//! (both through `dpop_core::dangerous`): there is no replay store, so inspecting a proof
//! does not use it up, and checks whose reference value was not given are skipped rather
//! than failed. Every algorithm is allowed, so the report can say which one was used.

use std::io::{self, Read as _, Write};
use std::process::ExitCode;
use std::sync::Arc;

use dpop_core::jwt::UnverifiedJwt;
use dpop_core::{
    ALL_ALGORITHMS, Check, Error, ExpectedNonce, Htu, Jkt, Observer, PublicJwk, UnixTime, Verifier,
    VerifierConfig, dangerous,
};
use serde_json::{Value, json};

use crate::cli::InspectArgs;
use crate::clock;
use crate::error::{self, CliError, EXIT_INVALID, EXIT_OK};

/// Most bytes read from stdin: far above any proof a server accepts (the verifier's
/// own, smaller limit then reports `proof_too_large`), small enough to be harmless.
const MAX_STDIN_BYTES: u64 = 1024 * 1024;

/// What the proof is checked against: the validated form of the flags.
struct Reference {
    method: Option<String>,
    htu: Option<Htu>,
    access_token: Option<String>,
    jkt: Option<Jkt>,
    nonce: Option<ExpectedNonce>,
    now: UnixTime,
}

/// How one check went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Status {
    Passed,
    Skipped,
    Failed,
    NotReached,
}

impl Status {
    fn as_str(self) -> &'static str {
        match self {
            Self::Passed => "passed",
            Self::Skipped => "skipped",
            Self::Failed => "failed",
            Self::NotReached => "not_reached",
        }
    }
}

/// The outcome of an inspection.
struct Report {
    /// Decoded header and claims, when the proof has that much structure.
    decoded: Result<(Value, Value), Error>,
    /// Thumbprint of the header `jwk`, when it is a valid public key.
    jkt: Option<Jkt>,
    checks: Vec<(Check, Status)>,
    /// The first failed check's error; `None` when the proof is valid.
    error: Option<Error>,
}

#[derive(Default)]
struct Recorder(Vec<(Check, Status)>);

impl Observer for Recorder {
    fn passed(&mut self, check: Check) {
        self.0.push((check, Status::Passed));
    }
    fn skipped(&mut self, check: Check) {
        self.0.push((check, Status::Skipped));
    }
}

pub(crate) fn run(args: &InspectArgs, out: &mut dyn Write) -> Result<ExitCode, CliError> {
    let reference = Reference {
        method: args.method.clone(),
        htu: args
            .url
            .as_deref()
            .map(Htu::parse)
            .transpose()
            .map_err(|e| CliError::usage(format!("--url: {e}")))?,
        access_token: args.access_token.clone(),
        jkt: args
            .jkt
            .as_deref()
            .map(Jkt::parse)
            .transpose()
            .map_err(|_| {
                CliError::usage("--jkt: not a JWK thumbprint (43 characters of base64url)")
            })?,
        nonce: args
            .nonce
            .as_deref()
            .map(ExpectedNonce::new)
            .transpose()
            .map_err(|e| CliError::usage(format!("--nonce: {}", error::core_message(&e))))?,
        now: match args.now {
            Some(secs) => UnixTime::from_secs(secs),
            None => clock::now()?,
        },
    };
    let proof = if args.proof == "-" {
        read_stdin()?
    } else {
        args.proof.clone().into_bytes()
    };
    let report = inspect(proof.trim_ascii(), &reference)?;
    if let Ok((header, claims)) = &report.decoded
        && looks_like_access_token(header, claims)
    {
        eprintln!(
            "note: this is an access token (a JWT for an API), not a DPoP proof: use `dpop jwt decode` to read it or `dpop jwt verify` to check it"
        );
    }
    if args.json {
        write_json(&report, out)
    } else {
        write_human(&report, &reference, out)
    }
    .map_err(|e| CliError::stdout(&e))?;
    Ok(ExitCode::from(if report.error.is_none() {
        EXIT_OK
    } else {
        EXIT_INVALID
    }))
}

/// An RFC 9068 `typ` (`at+jwt`), or token claims (`aud`) without the proof's `htm`.
fn looks_like_access_token(header: &Value, claims: &Value) -> bool {
    let typ = header.get("typ").and_then(Value::as_str).unwrap_or("");
    typ.eq_ignore_ascii_case("at+jwt")
        || typ.eq_ignore_ascii_case("application/at+jwt")
        || (claims.get("htm").is_none() && claims.get("aud").is_some())
}

fn read_stdin() -> Result<Vec<u8>, CliError> {
    let mut buf = Vec::new();
    io::stdin()
        .lock()
        .take(MAX_STDIN_BYTES)
        .read_to_end(&mut buf)
        .map_err(|e| CliError::usage(format!("cannot read the proof from stdin: {e}")))?;
    Ok(buf)
}

fn inspect(proof: &[u8], reference: &Reference) -> Result<Report, CliError> {
    let algorithms = VerifierConfig::builder()
        .with_algorithms(&ALL_ALGORITHMS)
        .map_err(|e| CliError::failed(e.to_string()))?;
    let config = match &reference.nonce {
        Some(n) => algorithms.with_nonces(Arc::new(n.clone())),
        None => algorithms.without_nonces(),
    };
    let verifier = Verifier::new(config).map_err(|e| CliError::failed(e.to_string()))?;

    let request =
        dangerous::request_without_target(reference.method.as_deref(), reference.htu.as_ref());
    let request = match (reference.access_token.as_deref(), reference.jkt.as_ref()) {
        (Some(token), Some(jkt)) => request.with_access_token(token, jkt),
        (Some(token), None) => dangerous::with_access_token_unbound(request, token),
        (None, Some(jkt)) => request.with_expected_jkt(jkt),
        (None, None) => request,
    };

    let mut recorder = Recorder::default();
    let error = verifier
        .verify_observed([proof], &request, reference.now, &mut recorder)
        // A diagnostic look must not use the proof up, so no replay store.
        .map(dangerous::skip_replay_check)
        .err();

    let decoded = std::str::from_utf8(proof)
        .map_err(|_| {
            Error::Proof(dpop_core::ProofError::Malformed(
                "the proof is not UTF-8 text",
            ))
        })
        .and_then(|p| UnverifiedJwt::parse(p).map_err(|e| Error::Proof(e.into())))
        .map(|jwt| {
            (
                jwt.dangerous_header().clone(),
                jwt.dangerous_claims().clone(),
            )
        });
    let jkt = decoded
        .as_ref()
        .ok()
        .and_then(|(header, _)| header.get("jwk"))
        .and_then(|jwk| PublicJwk::from_json(&jwk.to_string()).ok())
        .map(|jwk| jwk.thumbprint().clone());

    Ok(Report {
        decoded,
        jkt,
        checks: statuses(
            &recorder.0,
            error.as_ref().and_then(|e| Check::failed_by(e.reason())),
        ),
        error,
    })
}

/// Every check in order: what the verifier reported, the check the error names as
/// failed, and after it the checks never reached.
fn statuses(observed: &[(Check, Status)], failed: Option<Check>) -> Vec<(Check, Status)> {
    Check::ALL
        .iter()
        .map(|&check| {
            let status = match observed.iter().find(|(c, _)| *c == check) {
                Some(&(_, status)) => status,
                None if failed == Some(check) => Status::Failed,
                None => Status::NotReached,
            };
            (check, status)
        })
        .collect()
}

/// Why a check was skipped: which flag would have enabled it.
fn skip_reason(check: Check) -> &'static str {
    match check {
        Check::Htm => "no --method given",
        Check::Htu => "no --url given",
        Check::Nonce => "no --nonce given",
        Check::Ath => "no --access-token given",
        Check::KeyBinding => "no --jkt given",
        _ => "not applicable",
    }
}

fn write_json(report: &Report, out: &mut dyn Write) -> io::Result<()> {
    let (header, claims) = match &report.decoded {
        Ok((h, c)) => (h.clone(), c.clone()),
        Err(_) => (Value::Null, Value::Null),
    };
    let checks: Vec<Value> = report
        .checks
        .iter()
        .map(|&(check, status)| {
            json!({
                "check": check.as_str(),
                "status": status.as_str(),
                "description": check.describe(),
            })
        })
        .collect();
    let mut object = json!({
        "valid": report.error.is_none(),
        "header": header,
        "claims": claims,
        "jkt": report.jkt.as_ref().map(Jkt::as_str),
        "checks": checks,
    });
    if let (Some(e), Value::Object(map)) = (&report.error, &mut object) {
        map.insert(
            "error".into(),
            json!({ "code": e.reason().as_str(), "message": e.to_string() }),
        );
    }
    writeln!(out, "{object}")
}

fn write_human(report: &Report, reference: &Reference, out: &mut dyn Write) -> io::Result<()> {
    match &report.decoded {
        Ok((header, claims)) => {
            writeln!(out, "Header:\n{}", pretty(header))?;
            writeln!(out, "Claims:\n{}", pretty(claims))?;
            if let Some(alg) = header.get("alg").and_then(Value::as_str) {
                writeln!(out, "alg: {alg}")?;
            }
            if let Some(jkt) = &report.jkt {
                writeln!(out, "jkt: {jkt}")?;
            }
            if let Some(iat) = claims.get("iat").and_then(Value::as_u64) {
                let now = reference.now.as_secs();
                writeln!(
                    out,
                    "iat: {} ({}; checked as of {})",
                    clock::format_utc(iat),
                    clock::format_offset(iat, now),
                    clock::format_utc(now)
                )?;
            }
        }
        Err(e) => writeln!(out, "Cannot decode the proof: {e}")?,
    }
    writeln!(out)?;
    writeln!(out, "Checks:")?;
    for &(check, status) in &report.checks {
        let what = check.describe();
        match (status, &report.error) {
            (Status::Passed, _) => writeln!(out, "✓ {what}")?,
            (Status::Skipped, _) => {
                writeln!(out, "- {what} (skipped: {})", skip_reason(check))?;
            }
            (Status::Failed, Some(e)) => writeln!(out, "✗ {what}: {e} [{}]", e.reason())?,
            (Status::Failed, None) => writeln!(out, "✗ {what}")?,
            (Status::NotReached, _) => writeln!(out, "· {what} (not reached)")?,
        }
    }
    writeln!(out)?;
    match &report.error {
        None => writeln!(out, "valid"),
        Some(e) => writeln!(out, "invalid: {}", e.reason()),
    }
}

fn pretty(v: &Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_is_the_check_the_error_names() {
        let observed = [
            (Check::Header, Status::Passed),
            (Check::Structure, Status::Passed),
        ];
        let s = statuses(&observed, Check::failed_by(dpop_core::Reason::TypInvalid));
        assert_eq!(s.len(), Check::ALL.len());
        assert_eq!(s[2], (Check::Typ, Status::Failed));
        assert!(s[3..].iter().all(|(_, st)| *st == Status::NotReached));
        let all_ok: Vec<_> = Check::ALL.iter().map(|&c| (c, Status::Passed)).collect();
        assert!(
            statuses(&all_ok, None)
                .iter()
                .all(|(_, st)| *st == Status::Passed)
        );
    }
}
