//! `dpop authz`: load and validate the configuration, then answer the proxy's checks
//! until SIGTERM, loading it again on SIGHUP.

use std::process::ExitCode;

use dpop_gateway::{Authz, AuthzConfig, GatewayError};
use zeroize::Zeroizing;

use super::enforcement;
use crate::cli::AuthzArgs;
use crate::error::CliError;

pub(crate) fn run(args: &AuthzArgs) -> Result<ExitCode, CliError> {
    enforcement::run(
        "dpop-authz",
        |secret| load(args, secret),
        |config| &config.enforcement,
        async |config| {
            // A reload reads the file again with the same flags and environment over it.
            let reload_args = args.clone();
            let secret = enforcement::env_nonce_secret().map(Zeroizing::new);
            Authz::bind(config)
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

/// Reads `args.config` (if any), sets the flags over it, and validates the result as an
/// authorizer configuration. `env_nonce_secret` is the value of `DPOP_NONCE_SECRET`, if
/// set.
fn load(args: &AuthzArgs, env_nonce_secret: Option<&str>) -> Result<AuthzConfig, GatewayError> {
    let mut settings = enforcement::settings(&args.enforcement, env_nonce_secret)?;
    if let Some(listen) = args.listen {
        settings.set_listen(listen);
    }
    if let Some(grpc) = args.grpc_listen {
        settings.set_grpc_listen(grpc);
    }
    if let Some(prefix) = &args.path_prefix {
        settings.set_authz_path_prefix(prefix);
    }
    settings.validate_authz()
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use base64::Engine as _;
    use dpop_gateway::ReplayStoreConfig;

    use super::*;
    use crate::cli::EnforcementArgs;

    fn args() -> AuthzArgs {
        AuthzArgs {
            listen: Some("127.0.0.1:8081".parse().unwrap()),
            enforcement: EnforcementArgs {
                issuer: Some("https://as.example.com".into()),
                audience: Some("https://api.example.com".into()),
                public_url: vec!["https://api.example.com".into()],
                ..EnforcementArgs::default()
            },
            ..AuthzArgs::default()
        }
    }

    fn example() -> std::path::PathBuf {
        std::path::PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../examples/authz/authz.toml"
        ))
    }

    #[test]
    fn flags_alone_are_enough() {
        let c = load(&args(), None).unwrap();
        assert_eq!(c.listen, Some("127.0.0.1:8081".parse().unwrap()));
        assert_eq!(c.grpc_listen, None);
        assert_eq!(c.path_prefix, "");
        assert_eq!(c.enforcement.public_urls, ["https://api.example.com"]);
        assert!(c.enforcement.trusted_proxies.is_empty());
        assert!(c.enforcement.nonces.is_none());
        assert_eq!(
            c.enforcement.replay,
            ReplayStoreConfig::Memory {
                capacity: 4_000_000
            }
        );

        let mut a = args();
        a.listen = None;
        a.grpc_listen = Some("127.0.0.1:8082".parse().unwrap());
        a.path_prefix = Some("/check".into());
        a.enforcement.trusted_proxies = vec!["127.0.0.1".into(), "10.0.0.0/8".into()];
        a.enforcement.require_nonce = true;
        a.enforcement.replay_store = Some("redis://127.0.0.1:6379".into());
        a.enforcement.admin_listen = Some("127.0.0.1:9091".parse().unwrap());
        a.enforcement.log_json = true;
        let c = load(&a, None).unwrap();
        assert_eq!(c.listen, None);
        assert_eq!(c.grpc_listen, Some("127.0.0.1:8082".parse().unwrap()));
        assert_eq!(c.path_prefix, "/check");
        assert_eq!(
            c.enforcement.trusted_proxies,
            [
                "127.0.0.1/32".parse().unwrap(),
                "10.0.0.0/8".parse().unwrap()
            ]
        );
        assert!(c.enforcement.nonces.is_some() && !c.enforcement.nonce_secret_shared);
        assert!(matches!(
            c.enforcement.replay,
            ReplayStoreConfig::Redis { .. }
        ));
        assert_eq!(
            c.enforcement.admin_listen,
            Some("127.0.0.1:9091".parse().unwrap())
        );
        assert_eq!(c.enforcement.log_format, dpop_server::LogFormat::Json);

        let secret = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode([7u8; 32]);
        assert!(
            load(&a, Some(&secret))
                .unwrap()
                .enforcement
                .nonce_secret_shared
        );
        let e = load(&a, Some("short")).unwrap_err().to_string();
        assert!(e.contains("nonce"), "{e}");
    }

    #[test]
    fn flags_override_the_example_file() {
        let mut a = AuthzArgs {
            enforcement: EnforcementArgs {
                config: Some(example()),
                ..EnforcementArgs::default()
            },
            ..AuthzArgs::default()
        };
        let c = load(&a, None).unwrap();
        assert_eq!(c.listen, Some("127.0.0.1:9191".parse().unwrap()));
        assert_eq!(c.path_prefix, "/check");
        a.listen = Some("127.0.0.1:7000".parse().unwrap());
        a.path_prefix = Some("/authz".into());
        a.enforcement.trusted_proxies = vec!["192.0.2.7".into()];
        a.enforcement.allowed_hosts = vec!["api.internal:8080".into()];
        // Setting allowed hosts over a file with public_url: both set, refused.
        let e = load(&a, None).unwrap_err().to_string();
        assert!(e.contains("not both"), "{e}");
        a.enforcement.allowed_hosts.clear();
        let c = load(&a, None).unwrap();
        assert_eq!(c.listen, Some("127.0.0.1:7000".parse().unwrap()));
        assert_eq!(c.path_prefix, "/authz");
        assert_eq!(
            c.enforcement.trusted_proxies,
            ["192.0.2.7/32".parse().unwrap()]
        );
    }

    #[test]
    fn gateway_only_settings_are_refused() {
        let dir = std::env::temp_dir().join(format!("dpop-cli-authz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for (text, needle) in [
            ("upstream = \"http://127.0.0.1:3000\"\n", "upstream"),
            ("h2c = true\n", "h2c"),
            ("reload_on_change = true\n", "reload_on_change"),
            (
                "[limits]\nupstream_timeout_secs = 5\n",
                "upstream_timeout_secs",
            ),
            (
                "[tls]\ncert_file = \"/x.pem\"\nkey_file = \"/x.key\"\n",
                "[tls]",
            ),
            (
                "[[routes]]\npath_prefix = \"/v1\"\nupstream = \"http://127.0.0.1:3001\"\n",
                "route /v1: upstream",
            ),
        ] {
            let path = dir.join("authz.toml");
            std::fs::File::create(&path)
                .unwrap()
                .write_all(text.as_bytes())
                .unwrap();
            let mut a = args();
            a.enforcement.config = Some(path);
            let e = load(&a, None).unwrap_err().to_string();
            assert!(
                e.contains(needle) && e.contains("dpop gateway"),
                "{text}: {e}"
            );
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn bad_settings_are_refused_with_a_reason() {
        type Mutation = fn(&mut AuthzArgs);
        let cases: [(&str, Mutation); 7] = [
            (
                "--listen (forward-auth and Envoy HTTP ext_authz) or --grpc-listen",
                |a| a.listen = None,
            ),
            ("path_prefix", |a| a.path_prefix = Some("/check/".into())),
            ("path_prefix", |a| a.path_prefix = Some("check".into())),
            ("path_prefix", |a| a.path_prefix = Some("/a/../b".into())),
            ("trusted_proxies", |a| {
                a.enforcement.trusted_proxies = vec!["proxy.internal".into()]
            }),
            ("public_url (--public-url", |a| {
                a.enforcement.public_url.clear()
            }),
            ("issuer", |a| {
                a.enforcement.issuer = Some("as.example.com".into())
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
