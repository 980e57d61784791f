//! `dpop jwt decode` and `dpop jwt verify`: an access token's header and claims, and the
//! verdict the gateway would give, with its reason code.
//!
//! `verify` uses the gateway's own pieces, not a second validator: the issuer's keys come
//! through dpop-discovery (metadata, then `jwks_uri`) and the token is checked by
//! dpop-core's `jwt::verify_access_token` (or `verify_jwt` with `--dangerous-no-audience`:
//! `aud` must be there but is not compared), with the same defaults; the reason code is
//! dpop-core's `Error::reason`. A token without `cnf.jkt` is refused as not DPoP-bound
//! (`token_not_bound`), as the gateway does.

use std::io::{self, Write};
use std::process::ExitCode;
use std::time::Duration;

use dpop_core::jwt::{JwtValidation, TokenError, UnverifiedJwt};
use dpop_core::{Error, Jkt, RequestError, UnixTime};
use dpop_discovery::{Fetcher, IssuerUrl, JwksTimings, KeySource, RemoteJwks};
use serde_json::{Map, Value, json};

use super::runtime;
use crate::cli::{JwtAction, JwtArgs};
use crate::clock;
use crate::error::{CliError, EXIT_INVALID, EXIT_OK};
use crate::keyfile;

/// Most bytes of a token read from stdin (far above what the gateway accepts: its own
/// limit then reports the token as malformed).
const MAX_TOKEN_INPUT: usize = 1024 * 1024;

/// How long fetching the issuer's metadata and keys may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(30);

/// Claims that hold times (seconds since the epoch), shown also as dates.
const TIME_CLAIMS: [&str; 4] = ["exp", "iat", "nbf", "auth_time"];

pub(crate) fn run(args: &JwtArgs, out: &mut dyn Write) -> Result<ExitCode, CliError> {
    match &args.action {
        JwtAction::Decode { token, json } => decode(token, *json, out),
        JwtAction::Verify {
            token,
            issuer,
            audience,
            dangerous_no_audience,
            jkt,
            now,
            json,
        } => verify(
            token,
            issuer,
            audience_to_check(audience.as_deref(), *dangerous_no_audience)?,
            jkt.as_deref(),
            *now,
            *json,
            out,
        ),
    }
}

/// The audience `aud` is compared with: `--audience`, or `None` with
/// `--dangerous-no-audience`; neither is a usage error.
fn audience_to_check(
    audience: Option<&str>,
    dangerous_no_audience: bool,
) -> Result<Option<&str>, CliError> {
    match (audience, dangerous_no_audience) {
        (Some(a), _) => Ok(Some(a)),
        (None, true) => Ok(None),
        (None, false) => Err(CliError::usage(
            "--audience is required: a resource server accepts only tokens meant for it \
             (RFC 9068 section 4); --dangerous-no-audience skips that check",
        )),
    }
}

/// The token given, or read from stdin for `-`, trimmed.
fn read_token(arg: &str) -> Result<String, CliError> {
    if !keyfile::is_stdio(std::path::Path::new(arg)) {
        return Ok(arg.trim().to_owned());
    }
    let (bytes, _) = keyfile::read_limited(std::path::Path::new(arg), MAX_TOKEN_INPUT)?;
    String::from_utf8(bytes.to_vec())
        .map(|t| t.trim().to_owned())
        .map_err(|_| CliError::usage("the token on standard input is not UTF-8 text"))
}

/// Header and claims of a JWT, unverified.
fn parse(token: &str) -> Result<(Value, Value), CliError> {
    let jwt = UnverifiedJwt::parse(token)
        .map_err(|e| CliError::usage(format!("not a JWT: {}", Error::from(TokenError::from(e)))))?;
    Ok((
        jwt.dangerous_header().clone(),
        jwt.dangerous_claims().clone(),
    ))
}

fn decode(token: &str, as_json: bool, out: &mut dyn Write) -> Result<ExitCode, CliError> {
    let token = read_token(token)?;
    let (header, claims) = parse(&token)?;
    if header
        .get("typ")
        .and_then(Value::as_str)
        .is_some_and(|t| t.eq_ignore_ascii_case("dpop+jwt"))
    {
        eprintln!("note: this is a DPoP proof, not an access token: `dpop inspect` checks it");
    }
    let now = clock::now()?.as_secs();
    if as_json {
        let object =
            json!({ "header": header, "claims": claims, "times": times_json(&claims, now) });
        writeln!(out, "{object}")
    } else {
        write_decoded(&header, &claims, now, out)
    }
    .map_err(|e| CliError::stdout(&e))?;
    Ok(ExitCode::SUCCESS)
}

fn times_json(claims: &Value, now: u64) -> Value {
    let mut times = Map::new();
    for name in TIME_CLAIMS {
        if let Some(t) = claims.get(name).and_then(Value::as_u64) {
            times.insert(
                name.into(),
                json!({ "utc": clock::format_utc(t), "relative": clock::format_offset(t, now) }),
            );
        }
    }
    Value::Object(times)
}

fn write_decoded(header: &Value, claims: &Value, now: u64, out: &mut dyn Write) -> io::Result<()> {
    writeln!(out, "Header:\n{}", pretty(header))?;
    writeln!(out, "Claims:\n{}", pretty(claims))?;
    for name in TIME_CLAIMS {
        if let Some(t) = claims.get(name).and_then(Value::as_u64) {
            writeln!(
                out,
                "{name}: {} ({})",
                clock::format_utc(t),
                clock::format_offset(t, now)
            )?;
        }
    }
    Ok(())
}

fn pretty(v: &Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string())
}

fn verify(
    token: &str,
    issuer: &str,
    audience: Option<&str>,
    jkt: Option<&str>,
    now: Option<u64>,
    as_json: bool,
    out: &mut dyn Write,
) -> Result<ExitCode, CliError> {
    let token = read_token(token)?;
    let expected_jkt = jkt
        .map(Jkt::parse)
        .transpose()
        .map_err(|_| CliError::usage("--jkt: not a JWK thumbprint (43 characters of base64url)"))?;
    let issuer_url = IssuerUrl::parse(issuer)
        .map_err(|e| CliError::usage(format!("--issuer {issuer:?}: {e}")))?;
    let now = match now {
        Some(secs) => UnixTime::from_secs(secs),
        None => clock::now()?,
    };
    let fetcher = Fetcher::new(FETCH_TIMEOUT)
        .map_err(|e| CliError::failed(format!("cannot make an HTTP client: {e}")))?;
    let jwks = RemoteJwks::new(
        KeySource::Discover(issuer_url),
        fetcher,
        JwksTimings::default(),
    );
    let keys = runtime()?
        .block_on(jwks.keys())
        .map_err(|e| CliError::usage(format!("cannot get the keys of the issuer {issuer}: {e}")))?;
    let validation = JwtValidation::new(issuer, audience);
    let verdict: Result<(), Error> = if audience.is_some() {
        dpop_core::jwt::verify_access_token(&token, &keys, &validation, now)
            .map(|t| t.jkt)
            .map_err(Error::from)
    } else {
        // No audience to compare with: every other check, and aud only has to be there.
        dpop_core::jwt::verify_jwt(&token, &keys, &validation, now)
            .and_then(|jwt| jwt.to_access_token())
            .map(|t| t.jkt)
            .map_err(Error::from)
    }
    // Without cnf.jkt a token is a bearer token: a DPoP resource server refuses it.
    .and_then(|bound| match (&expected_jkt, bound) {
        (_, None) => Err(Error::Request(RequestError::TokenNotBound)),
        (None, Some(_)) => Ok(()),
        (Some(expected), Some(actual)) if *expected == actual => Ok(()),
        (Some(_), Some(_)) => Err(Error::KeyMismatch),
    });
    let decoded = parse(&token).ok();
    if as_json {
        let mut object = json!({
            "valid": verdict.is_ok(),
            "header": decoded.as_ref().map(|d| d.0.clone()),
            "claims": decoded.as_ref().map(|d| d.1.clone()),
            "audience_checked": audience.is_some(),
            "dangerous_no_audience": audience.is_none(),
        });
        if let Err(e) = &verdict {
            object["error"] = json!({ "code": e.reason().as_str(), "message": e.to_string() });
        }
        writeln!(out, "{object}")
    } else {
        write_verdict(
            decoded.as_ref(),
            &verdict,
            audience.is_some(),
            now.as_secs(),
            out,
        )
    }
    .map_err(|e| CliError::stdout(&e))?;
    Ok(ExitCode::from(if verdict.is_ok() {
        EXIT_OK
    } else {
        EXIT_INVALID
    }))
}

fn write_verdict(
    decoded: Option<&(Value, Value)>,
    verdict: &Result<(), Error>,
    audience_checked: bool,
    now: u64,
    out: &mut dyn Write,
) -> io::Result<()> {
    if let Some((header, claims)) = decoded {
        write_decoded(header, claims, now, out)?;
        writeln!(out)?;
    }
    if !audience_checked {
        writeln!(
            out,
            "DANGEROUS: aud not compared with an audience (--dangerous-no-audience)"
        )?;
    }
    match verdict {
        Ok(()) => writeln!(out, "valid"),
        Err(e) => writeln!(out, "invalid: {} ({e})", e.reason()),
    }
}
