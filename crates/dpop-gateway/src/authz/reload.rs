//! Reloading `dpop authz`'s configuration on SIGHUP, with the gateway's machinery
//! ([`crate::reload`]): a new [`Authorizer`] (routes, nonce secrets, identity headers,
//! strip settings, token check, public URLs or allowed hosts, trusted proxies,
//! `path_prefix`, `request_timeout_secs`, `log_requests`) over the same replay store,
//! taken by the checks that start afterwards; a check in flight finishes on the one it
//! started with.

use std::sync::Arc;

use dpop_tower::HtuSource;

use super::Authorizer;
use crate::config::{AuthzConfig, EnforcementConfig};
use crate::enforce;
use crate::error::GatewayError;
use crate::metrics::{Metrics, RouteLabels};
use crate::reload::{
    Apply, Generation, Reloader, Service, enforcement_restart_only, refuse_restart_only,
};

/// What one authorizer configuration checks with.
#[derive(Debug)]
pub(crate) struct Configured {
    config: Arc<AuthzConfig>,
    authorizer: Authorizer,
    /// The scheme of every public URL, when they share one (Envoy HTTP checks carry no
    /// scheme).
    public_scheme: Option<&'static str>,
}

impl Configured {
    /// The authorizer for `config`, its checks on `layer`.
    pub(crate) fn new(
        config: AuthzConfig,
        layer: dpop_tower::DpopLayer<crate::store::GatewayStore>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let e = &config.enforcement;
        let authorizer = Authorizer::new(
            layer,
            e.identity_headers.clone(),
            e.strip_authorization,
            e.strip_dpop,
            metrics,
            RouteLabels::new(&e.route_names),
            e.log_requests,
        );
        let urls = &e.public_urls;
        let public_scheme = if urls.is_empty() {
            None
        } else if urls.iter().all(|u| u.starts_with("https://")) {
            Some("https")
        } else if urls.iter().all(|u| u.starts_with("http://")) {
            Some("http")
        } else {
            None
        };
        Self {
            config: Arc::new(config),
            authorizer,
            public_scheme,
        }
    }

    /// The configuration.
    pub(crate) fn config(&self) -> &Arc<AuthzConfig> {
        &self.config
    }

    /// The decision maker.
    pub(crate) fn authorizer(&self) -> &Authorizer {
        &self.authorizer
    }

    /// The scheme of every public URL, when they share one.
    pub(crate) fn public_scheme(&self) -> Option<&'static str> {
        self.public_scheme
    }
}

/// A generation of the authorizer's configuration.
pub(crate) type AuthzGeneration = Generation<Configured>;

/// The authorizer's reloader: the listeners take each check's generation from it.
pub(crate) type AuthzReloader = Reloader<AuthzApply>;

/// How the authorizer builds a generation (installing it is switching
/// [`Reloader::current`], which every check reads).
pub(crate) struct AuthzApply {
    pub(crate) metrics: Arc<Metrics>,
}

impl Apply for AuthzApply {
    type Config = AuthzConfig;
    type State = Configured;
    type Prepared = ();
    const SERVICE: Service = Service::Authz;

    fn reload_on_change(_: &Configured) -> bool {
        // Refused in the authorizer's configuration: SIGHUP only.
        false
    }

    fn enforcement(state: &Configured) -> &EnforcementConfig {
        &state.config.enforcement
    }

    async fn prepare(
        &self,
        config: AuthzConfig,
        old: &Configured,
    ) -> Result<(Configured, ()), GatewayError> {
        refuse_restart_only(restart_only(&old.config, &config))?;
        let layer = enforce::rebuild(
            &config.enforcement,
            htu(&config),
            &self.metrics,
            old.authorizer.layer(),
            &old.config.enforcement,
        )
        .await?;
        Ok((
            Configured::new(config, layer, Arc::clone(&self.metrics)),
            (),
        ))
    }

    fn install(&self, _: &Arc<AuthzGeneration>, (): ()) {}
}

/// Which URL proofs are checked against. The proxy reports the scheme and host the
/// client used; the layer reads them from the rebuilt request's URI only (never from
/// forwarding headers, which the authorizer has already judged by their sender), against
/// the same public URLs or hosts as the gateway. Even one public URL must match the
/// reported scheme and host: unlike the gateway's own listener, a proxy serves other hosts
/// too, and a proof made for this one must not pass for a request it forwards to another.
pub(crate) fn htu(config: &AuthzConfig) -> HtuSource {
    let e = &config.enforcement;
    let urls = if e.public_urls.is_empty() {
        e.allowed_hosts
            .iter()
            .flat_map(|h| [format!("http://{h}"), format!("https://{h}")])
            .collect()
    } else {
        e.public_urls.clone()
    };
    HtuSource::PublicUrls {
        urls,
        trusted_proxies: Vec::new(),
    }
}

/// The first setting that differs between `old` and `new` and that a running authorizer
/// cannot change (its listeners, the admin listener, the replay store, connection limits,
/// logging), by its name in the configuration file.
pub(crate) fn restart_only(old: &AuthzConfig, new: &AuthzConfig) -> Option<&'static str> {
    [
        ("listen", old.listen != new.listen),
        ("grpc_listen", old.grpc_listen != new.grpc_listen),
        (
            "limits.max_concurrent_streams",
            old.max_concurrent_streams != new.max_concurrent_streams,
        ),
    ]
    .into_iter()
    .chain(enforcement_restart_only(&old.enforcement, &new.enforcement))
    .find(|(_, changed)| *changed)
    .map(|(name, _)| name)
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = "listen = \"127.0.0.1:8081\"\nissuer = \"https://as.example.com\"\naudience = \"https://api.example.com\"\npublic_url = \"https://api.example.com\"\ntrusted_proxies = [\"127.0.0.1\"]\n";

    fn config(extra: &str) -> AuthzConfig {
        AuthzConfig::from_toml(&format!("{BASE}{extra}")).unwrap()
    }

    #[test]
    fn restart_only_settings_are_named() {
        let old = config("");
        assert_eq!(restart_only(&old, &config("")), None);
        // Reloadable: routes, identity headers, trusted proxies, the prefix, timeouts of
        // a check, the access log, a narrower proof window.
        let reloadable = config(
            "log_requests = false\n[authz]\npath_prefix = \"/check\"\n[limits]\nrequest_timeout_secs = 5\n[proof]\nmax_age_secs = 30\n[forward]\nsubject_header = \"x-user\"\nstrip_dpop = false\n[[routes]]\npath_prefix = \"/v2\"\ndpop = \"off\"\n",
        );
        assert_eq!(restart_only(&old, &reloadable), None);
        assert_eq!(
            restart_only(&reloadable, &old),
            Some("[proof] max_age_secs (raised)")
        );
        let moved = AuthzConfig::from_toml(&BASE.replace("8081", "8082")).unwrap();
        assert_eq!(restart_only(&old, &moved), Some("listen"));
        for (extra, name) in [
            ("grpc_listen = \"127.0.0.1:9090\"\n", "grpc_listen"),
            ("admin_listen = \"127.0.0.1:9091\"\n", "admin_listen"),
            (
                "replay_store = \"redis://127.0.0.1:6379\"\n",
                "replay_store or [replay] connection settings",
            ),
            ("[limits]\nmax_connections = 7\n", "limits.max_connections"),
            (
                "[limits]\nmax_concurrent_streams = 7\n",
                "limits.max_concurrent_streams",
            ),
            ("log_format = \"json\"\n", "log_format"),
        ] {
            assert_eq!(restart_only(&old, &config(extra)), Some(name), "{extra}");
        }
    }
}
