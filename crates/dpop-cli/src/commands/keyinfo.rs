//! `dpop jwk` and `dpop thumbprint`: public facts about a key file.

use std::io::Write;
use std::process::ExitCode;

use dpop_core::{ALL_ALGORITHMS, Algorithm};
use serde_json::{Map, Value};

use crate::cli::{JwkArgs, KeyFileArgs};
use crate::error::CliError;
use crate::keyfile::{self, KeyFile};

/// Prints the public JWK (required members only, as a proof header carries it), with
/// `kid`, `alg` and `use` on request; or, with `--set`, a JWK Set of every file with all
/// three.
pub(crate) fn jwk(args: &JwkArgs, out: &mut dyn Write) -> Result<ExitCode, CliError> {
    if args.files.len() > 1 && !args.set {
        return Err(CliError::usage(
            "several key files make a JWK Set: add --set",
        ));
    }
    // `-` and `file:-` both name standard input.
    let stdin = |f: &std::path::PathBuf| matches!(keyfile::key_ref(f), Ok(dpop_keys::KeyRef::File(p)) if keyfile::is_stdio(&p));
    if args.files.iter().filter(|f| stdin(f)).count() > 1 {
        return Err(CliError::usage("standard input (-) can be read only once"));
    }
    let alg = args.alg.flatten().map(Algorithm::from);
    let mut keys = Vec::with_capacity(args.files.len());
    for file in &args.files {
        let key = keyfile::load(file, alg)?;
        let with_alg = args.set || args.alg.is_some();
        keys.push(describe(
            &key,
            file,
            args.set || args.kid,
            with_alg.then_some(alg),
        )?);
    }
    let text = if args.set {
        let mut kids: Vec<&Value> = keys.iter().filter_map(|k| k.get("kid")).collect();
        kids.sort_by_key(|v| v.as_str());
        if kids.windows(2).any(|w| w[0] == w[1]) {
            return Err(CliError::usage(
                "the same key is given twice: a JWK Set holds each key once",
            ));
        }
        let set = serde_json::json!({ "keys": keys });
        serde_json::to_string_pretty(&set)
    } else {
        serde_json::to_string(&keys.remove(0))
    }
    .map_err(|e| CliError::failed(format!("cannot encode the JWK: {e}")))?;
    writeln!(out, "{text}").map_err(|e| CliError::stdout(&e))?;
    Ok(ExitCode::SUCCESS)
}

/// The public JWK of `key`, with `kid` (the thumbprint) when `kid`, and with `alg` and
/// `use: "sig"` when `alg` is `Some`: the algorithm given, which must fit the key, or the
/// key's own.
fn describe(
    key: &KeyFile,
    file: &std::path::Path,
    kid: bool,
    alg: Option<Option<Algorithm>>,
) -> Result<Map<String, Value>, CliError> {
    let public = key.public_jwk();
    let Value::Object(mut jwk) = public.to_json_value() else {
        return Err(CliError::failed("cannot encode the JWK"));
    };
    if kid {
        jwk.insert("kid".into(), public.thumbprint().as_str().into());
    }
    if let Some(alg) = alg {
        let alg = match (alg, key.signing_algorithm()) {
            // A private key signs with one algorithm (its JWK's `alg`, the one it was
            // loaded for, or a device key's): --alg must be that one, not only fit the
            // public key.
            (Some(a), Some(own)) if !same_algorithm(a, own) => {
                return Err(CliError::usage(format!(
                    "--alg {a} does not fit the private key in {}; it signs with {own}",
                    keyfile::shown(file),
                )));
            }
            (Some(a), _) if public.fits(a) => a,
            (Some(a), _) => {
                let usable: Vec<&str> = ALL_ALGORITHMS
                    .iter()
                    .filter(|x| public.fits(**x))
                    .map(|x| x.name())
                    .collect();
                return Err(CliError::usage(format!(
                    "--alg {a} does not fit the {} key in {}; it signs with {}",
                    public.kty(),
                    keyfile::shown(file),
                    usable.join(", ")
                )));
            }
            (None, Some(own)) => own,
            (None, None) => own_algorithm(public).ok_or_else(|| {
                CliError::usage(format!(
                    "{}: a public RSA JWK does not say which algorithm it is for; pass --alg",
                    keyfile::shown(file)
                ))
            })?,
        };
        jwk.insert("alg".into(), alg.name().into());
        jwk.insert("use".into(), "sig".into());
    }
    Ok(jwk)
}

/// Whether `a` and `b` name the same signature (EdDSA and Ed25519 both name Ed25519).
fn same_algorithm(a: Algorithm, b: Algorithm) -> bool {
    let ed = |x| matches!(x, Algorithm::EdDsa | Algorithm::Ed25519);
    a == b || (ed(a) && ed(b))
}

/// The one algorithm a public key can be for (its curve's), or `None` for RSA keys,
/// which fit several.
fn own_algorithm(public: &dpop_core::PublicJwk) -> Option<Algorithm> {
    let fits: Vec<Algorithm> = ALL_ALGORITHMS
        .iter()
        .copied()
        .filter(|a| public.fits(*a) && *a != Algorithm::Ed25519)
        .collect();
    match fits.as_slice() {
        [one] => Some(*one),
        _ => None,
    }
}

/// Prints the RFC 7638 thumbprint.
pub(crate) fn thumbprint(args: &KeyFileArgs, out: &mut dyn Write) -> Result<ExitCode, CliError> {
    let key = keyfile::load(&args.file, None)?;
    writeln!(out, "{}", key.public_jwk().thumbprint()).map_err(|e| CliError::stdout(&e))?;
    Ok(ExitCode::SUCCESS)
}
