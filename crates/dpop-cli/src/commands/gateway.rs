//! `dpop gateway`: load and validate the configuration, then serve until SIGTERM,
//! loading it again on SIGHUP (and on a change to the file with `reload_on_change`).

use std::process::ExitCode;

use dpop_gateway::{Gateway, GatewayConfig, GatewayError};
use zeroize::Zeroizing;

use super::enforcement;
use crate::cli::GatewayArgs;
use crate::error::CliError;

pub(crate) fn run(args: &GatewayArgs) -> Result<ExitCode, CliError> {
    enforcement::run(
        enforcement::GATEWAY_SERVICE,
        |secret| load(args, secret),
        |config| &config.enforcement,
        async |config| {
            // A reload reads the file again with the same flags and environment over it.
            let reload_args = args.clone();
            let secret = enforcement::env_nonce_secret().map(Zeroizing::new);
            Gateway::bind(config)
                .await?
                .reload_from(
                    move || load(&reload_args, secret.as_ref().map(|s| s.as_str())),
                    args.enforcement.config.clone(),
                )
                .serve(dpop_server::shutdown_signal())
                .await
        },
    )
}

/// Reads `args.config` (if any), sets the flags over it, and validates the result.
/// `env_nonce_secret` is the value of `DPOP_NONCE_SECRET`, if set.
fn load(args: &GatewayArgs, env_nonce_secret: Option<&str>) -> Result<GatewayConfig, GatewayError> {
    let mut settings = enforcement::settings(&args.enforcement, env_nonce_secret)?;
    if let Some(listen) = args.listen {
        settings.set_listen(listen);
    }
    if let Some(upstream) = &args.upstream {
        settings.set_upstream(upstream);
    }
    if let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) {
        settings.set_tls_files(cert.clone(), key.clone());
    }
    if args.h2c {
        settings.enable_h2c();
    }
    settings.validate()
}

#[cfg(test)]
mod tests {
    use base64::Engine as _;
    use dpop_gateway::ReplayStoreConfig;

    use super::*;
    use crate::cli::EnforcementArgs;

    fn args() -> GatewayArgs {
        GatewayArgs {
            listen: Some("127.0.0.1:8080".parse().unwrap()),
            upstream: Some("http://127.0.0.1:3000".into()),
            enforcement: EnforcementArgs {
                issuer: Some("https://as.example.com".into()),
                audience: Some("https://api.example.com".into()),
                allowed_hosts: vec!["127.0.0.1:8080".into()],
                ..EnforcementArgs::default()
            },
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
        a.enforcement.require_nonce = true;
        a.enforcement.replay_store = Some("redis://127.0.0.1:6379".into());
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
        a.enforcement.trusted_proxies = vec!["10.0.0.0/8".into(), "192.0.2.1".into()];
        let proxies = load(&a, None).unwrap().enforcement.trusted_proxies;
        assert_eq!(
            proxies,
            [
                "10.0.0.0/8".parse().unwrap(),
                "192.0.2.1/32".parse().unwrap()
            ]
        );
    }

    #[test]
    fn flags_override_the_file() {
        let mut a = GatewayArgs {
            enforcement: EnforcementArgs {
                config: Some(std::path::PathBuf::from(concat!(
                    env!("CARGO_MANIFEST_DIR"),
                    "/../../examples/gateway.toml"
                ))),
                ..EnforcementArgs::default()
            },
            ..GatewayArgs::default()
        };
        assert_eq!(load(&a, None).unwrap().upstream.url.port_u16(), Some(3000));
        a.upstream = Some("http://127.0.0.1:4000".into());
        assert_eq!(load(&a, None).unwrap().upstream.url.port_u16(), Some(4000));
    }

    #[test]
    fn bad_settings_are_refused_with_a_reason() {
        type Mutation = fn(&mut GatewayArgs);
        let cases: [(&str, Mutation); 12] = [
            ("public_url (--public-url", |a| {
                a.enforcement.allowed_hosts.clear()
            }),
            ("not both", |a| {
                a.enforcement.public_url = vec!["https://api.example.com".into()]
            }),
            ("allowed_hosts", |a| {
                a.enforcement.allowed_hosts = vec!["a/b".into()]
            }),
            ("allowed_hosts", |a| {
                a.enforcement.allowed_hosts = vec!["u@host".into()]
            }),
            ("upstream path", |a| {
                a.upstream = Some("http://127.0.0.1:3000/api/../admin".into())
            }),
            ("--listen", |a| a.listen = None),
            ("--upstream", |a| a.upstream = None),
            ("must be an http:// or https:// URL", |a| {
                a.upstream = Some("ftp://x".into())
            }),
            ("issuer", |a| {
                a.enforcement.issuer = Some("as.example.com".into())
            }),
            ("trusted_proxies", |a| {
                a.enforcement.trusted_proxies = vec!["proxy.internal".into()]
            }),
            ("public_url", |a| {
                a.enforcement.public_url = vec!["ftp://x".into()]
            }),
            ("replay_store", |a| {
                a.enforcement.replay_store = Some("memcached://x".into())
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
