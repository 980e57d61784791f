//! `dpop keygen`: a new private key in a file only its owner can read (or on stdout with
//! `--out -`), optionally encrypted with a passphrase.

use std::io::Write;
use std::process::ExitCode;

use dpop_core::{Algorithm, KeyFamily, PrivateKey};

use crate::cli::KeygenArgs;
use crate::error::CliError;
use crate::keyfile;

pub(crate) fn run(args: &KeygenArgs, out: &mut dyn Write) -> Result<ExitCode, CliError> {
    let alg = Algorithm::from(args.alg);
    if let Some(key) = &args.key {
        return in_device(key, alg, out);
    }
    let Some(out_path) = &args.out else {
        return Err(CliError::usage(
            "give --out FILE, or --key for a key in a device",
        ));
    };
    let is_rsa = alg.key_family() == KeyFamily::Rsa;
    let key = match args.bits {
        Some(bits) if is_rsa => PrivateKey::generate_rsa(alg, bits.bits()),
        Some(_) => {
            return Err(CliError::usage(format!(
                "--bits applies only to RSA algorithms (RS256 ... PS512), not {alg}"
            )));
        }
        None => PrivateKey::generate(alg),
    }
    .map_err(|e| CliError::failed(format!("cannot generate the key: {e}")))?;

    let cannot_encode = |e| CliError::failed(format!("cannot encode the key: {e}"));
    let to_stdout = keyfile::is_stdio(out_path);
    if !to_stdout && !args.force && out_path.exists() {
        // Before asking for a passphrase that would be wasted.
        return Err(CliError::usage(format!(
            "{} already exists; pass --force to replace it",
            out_path.display()
        )));
    }
    if args.jwk {
        let text = key.to_private_jwk_json().map_err(cannot_encode)?;
        keyfile::write_secret(out_path, &[text.as_bytes(), b"\n"], args.force)?;
    } else {
        let text = key.to_pkcs8_pem().map_err(cannot_encode)?;
        if args.encrypt {
            let what = if to_stdout {
                "the new key".to_owned()
            } else {
                out_path.display().to_string()
            };
            let passphrase = keyfile::passphrase(&what, true)?;
            let encrypted = keyfile::encrypt_pem(&text, &passphrase)?;
            keyfile::write_secret(out_path, &[encrypted.as_bytes()], args.force)?;
        } else {
            keyfile::write_secret(out_path, &[text.as_bytes()], args.force)?;
        }
        // PKCS#8 records the key type, not the algorithm: an RSA key reads back as RS256
        // and an Ed25519 key as EdDSA, whatever it was generated for.
        let reads_back_as = PrivateKey::from_pkcs8_pem(&text, None).map(|k| k.algorithm());
        if reads_back_as.is_ok_and(|a| a != alg) {
            eprintln!(
                "note: PEM files do not record the algorithm; pass --alg {alg} to `dpop proof` (or use keygen --jwk, which records it)"
            );
        }
    }
    if to_stdout {
        // Standard output holds the key: the thumbprint goes beside it, on stderr.
        eprintln!("jkt: {}", key.thumbprint());
    } else {
        writeln!(out, "{}", key.thumbprint()).map_err(|e| CliError::stdout(&e))?;
    }
    Ok(ExitCode::SUCCESS)
}

/// `keygen --key pkcs11:…|tpm2:…|awskms:…`: a new key made inside the device, where it
/// cannot be exported; prints its thumbprint.
fn in_device(reference: &str, alg: Algorithm, out: &mut dyn Write) -> Result<ExitCode, CliError> {
    let device = match keyfile::key_ref(std::path::Path::new(reference))? {
        dpop_keys::KeyRef::Device(device) => device,
        _ => {
            return Err(CliError::usage(format!(
                "--key {}: not a key in a device (pkcs11:…, tpm2:…, awskms:…); write key files with --out",
                keyfile::shown(std::path::Path::new(reference))
            )));
        }
    };
    let signer = dpop_keys::generate(&device, alg, &keyfile::device_options(Some(alg)))
        .map_err(|e| keyfile::device_error(&e))?;
    writeln!(out, "{}", signer.public_jwk().thumbprint()).map_err(|e| CliError::stdout(&e))?;
    Ok(ExitCode::SUCCESS)
}
