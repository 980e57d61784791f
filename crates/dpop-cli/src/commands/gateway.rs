//! `dpop gateway`: load and validate the configuration, then serve until SIGTERM.

use std::process::ExitCode;

use dpop_gateway::{Gateway, GatewayConfig, GatewayError, GatewaySettings};
use zeroize::Zeroizing;

use crate::cli::GatewayArgs;
use crate::error::CliError;

/// Environment variable holding the shared nonce secret (base64url, 32+ bytes), so that
/// secrets stay out of command lines and process listings.
const NONCE_SECRET_ENV: &str = "DPOP_NONCE_SECRET";

pub(crate) fn run(args: &GatewayArgs) -> Result<ExitCode, CliError> {
    let secret = std::env::var(NONCE_SECRET_ENV).ok();
    let config = load(args, secret.as_deref()).map_err(|e| CliError::usage(e.to_string()))?;
    dpop_server::init_logging(config.enforcement.log_format);
    super::runtime()?.block_on(async {
        let gateway = Gateway::bind(config).await.map_err(|e| match e {
            GatewayError::Config(_) => CliError::usage(e.to_string()),
            other => CliError::failed(other.to_string()),
        })?;
        gateway.serve(dpop_server::shutdown_signal()).await;
        Ok(ExitCode::SUCCESS)
    })
}

/// Reads `args.config` (if any), sets the flags over it, and validates the result.
/// `env_nonce_secret` is the value of `DPOP_NONCE_SECRET`, if set.
fn load(args: &GatewayArgs, env_nonce_secret: Option<&str>) -> Result<GatewayConfig, GatewayError> {
    let mut settings = match &args.config {
        Some(path) => GatewaySettings::from_file(path)?,
        None => GatewaySettings::default(),
    };
    if let Some(listen) = args.listen {
        settings.set_listen(listen);
    }
    if let Some(upstream) = &args.upstream {
        settings.set_upstream(upstream);
    }
    if let Some(issuer) = &args.issuer {
        settings.set_issuer(issuer);
    }
    if let Some(audience) = &args.audience {
        settings.set_audience(audience);
    }
    if !args.public_url.is_empty() {
        settings.set_public_urls(args.public_url.clone());
    }
    if !args.allowed_hosts.is_empty() {
        settings.set_allowed_hosts(args.allowed_hosts.clone());
    }
    if let Some(store) = &args.replay_store {
        settings.set_replay_store(store);
    }
    if let Some(admin) = args.admin_listen {
        settings.set_admin_listen(admin);
    }
    if args.require_nonce {
        settings.require_nonce();
    }
    if let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) {
        settings.set_tls_files(cert.clone(), key.clone());
    }
    if args.h2c {
        settings.enable_h2c();
    }
    if args.log_json {
        settings.set_log_format(dpop_server::LogFormat::Json);
    }
    if let Some(secret) = env_nonce_secret {
        settings.set_current_nonce_secret(Zeroizing::new(secret.to_owned()));
    }
    settings.validate()
}

#[cfg(test)]
mod tests {
    use base64::Engine as _;
    use dpop_gateway::ReplayStoreConfig;

    use super::*;

    fn args() -> GatewayArgs {
        GatewayArgs {
            listen: Some("127.0.0.1:8080".parse().unwrap()),
            upstream: Some("http://127.0.0.1:3000".into()),
            issuer: Some("https://as.example.com".into()),
            audience: Some("https://api.example.com".into()),
            allowed_hosts: vec!["127.0.0.1:8080".into()],
            ..GatewayArgs::default()
        }
    }

    #[test]
    fn flags_alone_are_enough() {
        let c = load(&args(), None).unwrap();
        assert_eq!(
            c.enforcement.replay,
            ReplayStoreConfig::Memory {
                capacity: 4_000_000
            }
        );
        assert!(c.enforcement.nonces.is_none());
        assert!(c.enforcement.strip_authorization && c.enforcement.strip_dpop);
        let mut a = args();
        a.require_nonce = true;
        a.replay_store = Some("redis://127.0.0.1:6379".into());
        let c = load(&a, None).unwrap();
        assert!(c.enforcement.nonces.is_some() && !c.enforcement.nonce_secret_shared);
        assert!(matches!(
            c.enforcement.replay,
            ReplayStoreConfig::Redis { .. }
        ));
        let secret = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode([7u8; 32]);
        assert!(
            load(&a, Some(&secret))
                .unwrap()
                .enforcement
                .nonce_secret_shared
        );
        assert!(load(&a, Some("short")).is_err());
    }

    #[test]
    fn flags_override_the_file() {
        let mut a = GatewayArgs {
            config: Some(std::path::PathBuf::from(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../../examples/gateway.toml"
            ))),
            ..GatewayArgs::default()
        };
        assert_eq!(load(&a, None).unwrap().upstream.url.port_u16(), Some(3000));
        a.upstream = Some("http://127.0.0.1:4000".into());
        assert_eq!(load(&a, None).unwrap().upstream.url.port_u16(), Some(4000));
    }

    #[test]
    fn bad_settings_are_refused_with_a_reason() {
        type Mutation = fn(&mut GatewayArgs);
        let cases: [(&str, Mutation); 11] = [
            ("public_url (--public-url", |a| a.allowed_hosts.clear()),
            ("not both", |a| {
                a.public_url = vec!["https://api.example.com".into()]
            }),
            ("allowed_hosts", |a| a.allowed_hosts = vec!["a/b".into()]),
            ("allowed_hosts", |a| a.allowed_hosts = vec!["u@host".into()]),
            ("upstream path", |a| {
                a.upstream = Some("http://127.0.0.1:3000/api/../admin".into())
            }),
            ("--listen", |a| a.listen = None),
            ("--upstream", |a| a.upstream = None),
            ("must be an http:// or https:// URL", |a| {
                a.upstream = Some("ftp://x".into())
            }),
            ("issuer", |a| a.issuer = Some("as.example.com".into())),
            ("public_url", |a| a.public_url = vec!["ftp://x".into()]),
            ("replay_store", |a| {
                a.replay_store = Some("memcached://x".into())
            }),
        ];
        for (needle, f) in cases {
            let mut a = args();
            f(&mut a);
            let e = load(&a, None).unwrap_err().to_string();
            assert!(e.contains(needle), "{needle}: {e}");
        }
    }
}
