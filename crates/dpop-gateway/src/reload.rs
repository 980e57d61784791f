//! Reloading the gateway's configuration while it serves: on SIGHUP, or when the
//! configuration file's content changes (`reload_on_change`). A reload reads and
//! validates the whole file, refuses a change to a setting only a restart can apply, reads
//! the TLS certificate again, builds the new layer (over the same replay store) and
//! proxy, and only then puts them in force, all at once; anything failing on the way
//! leaves the configuration in force untouched. Requests that started before keep what
//! they started with.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use dpop_tower::{DpopLayer, DpopService};
use tower::Layer as _;

use crate::config::GatewayConfig;
use crate::enforce::{self, htu};
use crate::error::GatewayError;
use crate::metrics::{Metrics, RouteLabels};
use crate::proxy::Proxy;
use crate::store::GatewayStore;
use crate::tls::TlsListener;
use dpop_server::TickOrHangup;

/// Where a reload reads the configuration (the file, with the command line's settings
/// over it).
pub(crate) type ConfigSource = Arc<dyn Fn() -> Result<GatewayConfig, GatewayError> + Send + Sync>;

/// Where a gateway reloads its configuration from, and the file it may watch.
pub(crate) struct ReloadSource {
    pub(crate) source: ConfigSource,
    pub(crate) file: Option<PathBuf>,
}

impl std::fmt::Debug for ReloadSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReloadSource")
            .field("file", &self.file)
            .finish_non_exhaustive()
    }
}

/// Aborts the task when dropped (the watchers of the configuration and of the
/// certificate files).
pub(crate) struct AbortOnDrop(pub(crate) tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// How often the configuration file is checked with `reload_on_change`.
const POLL_INTERVAL: Duration = Duration::from_secs(2);

/// One configuration in force, numbered from 1.
pub(crate) struct Generation {
    number: u64,
    config: GatewayConfig,
    layer: DpopLayer<GatewayStore>,
    /// The proxy whose connectors the serving threads' own pools use.
    proxy: Proxy,
}

impl Generation {
    /// The configuration the gateway started with.
    pub(crate) fn first(
        config: GatewayConfig,
        layer: DpopLayer<GatewayStore>,
        proxy: Proxy,
    ) -> Self {
        Self {
            number: 1,
            config,
            layer,
            proxy,
        }
    }

    /// Its number: 1 as started, one more per applied reload.
    pub(crate) fn number(&self) -> u64 {
        self.number
    }

    /// Its DPoP layer (the token source and the replay store too).
    pub(crate) fn layer(&self) -> &DpopLayer<GatewayStore> {
        &self.layer
    }
}

/// What one serving thread serves a request with: a generation's layer over the thread's
/// own proxy (its own upstream pools).
pub(crate) struct ThreadService {
    generation: Arc<Generation>,
    service: DpopService<Proxy, GatewayStore>,
}

impl ThreadService {
    /// The service of `generation` for a thread, which served `previous` until now (its
    /// plain-HTTP pools are kept).
    pub(crate) fn new(generation: &Arc<Generation>, previous: Option<&Self>) -> Self {
        let proxy = generation
            .proxy
            .with_pools_after(previous.map(|p| p.service.get_ref()));
        Self {
            generation: Arc::clone(generation),
            service: generation.layer.layer(proxy),
        }
    }

    pub(crate) fn layer(&self) -> &DpopLayer<GatewayStore> {
        &self.generation.layer
    }

    pub(crate) fn service(&self) -> &DpopService<Proxy, GatewayStore> {
        &self.service
    }

    /// The `http_route` labels of this configuration's routes.
    pub(crate) fn routes(&self) -> &RouteLabels {
        self.service.get_ref().routes()
    }

    /// Whether this configuration writes the access log.
    pub(crate) fn log_requests(&self) -> bool {
        self.service.get_ref().log_requests()
    }

    pub(crate) fn request_timeout(&self) -> Duration {
        self.generation.config.enforcement.request_timeout
    }
}

/// Applies reloads: the generation in force and each serving thread's slot.
pub(crate) struct Reloader {
    current: ArcSwap<Generation>,
    slots: Vec<Arc<ArcSwap<ThreadService>>>,
    tls: Option<Arc<TlsListener>>,
    metrics: Arc<Metrics>,
    /// One reload at a time (SIGHUP and a file change may come together).
    busy: tokio::sync::Mutex<()>,
}

impl Reloader {
    pub(crate) fn new(
        first: Arc<Generation>,
        slots: Vec<Arc<ArcSwap<ThreadService>>>,
        tls: Option<Arc<TlsListener>>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            current: ArcSwap::new(first),
            slots,
            tls,
            metrics,
            busy: tokio::sync::Mutex::new(()),
        }
    }

    /// The generation in force.
    pub(crate) fn current(&self) -> Arc<Generation> {
        self.current.load_full()
    }

    /// Starts reloading from `source` on SIGHUP, and when the content of `file` changes if
    /// the configuration sets `reload_on_change`. Registered for SIGHUP before this
    /// returns. The task stops when the handle is dropped.
    pub(crate) fn spawn_watch(
        self: Arc<Self>,
        source: ConfigSource,
        file: Option<PathBuf>,
    ) -> AbortOnDrop {
        let mut wait = TickOrHangup::new(POLL_INTERVAL, true, |e| {
            tracing::warn!(target: "dpop::gateway", error = %e, "cannot listen for SIGHUP: the configuration is not reloaded on it");
        });
        let watched = match file {
            Some(f) if self.current().config.reload_on_change => Some(f),
            Some(_) => None,
            None => {
                if self.current().config.reload_on_change {
                    tracing::warn!(target: "dpop::gateway", "reload_on_change is set but the configuration came from no file: only SIGHUP reloads it");
                }
                None
            }
        };
        AbortOnDrop(tokio::spawn(async move {
            let mut seen = watched.as_deref().map(content_digest);
            // A changed content waits one more poll: an editor or a deployment tool that
            // writes the file in pieces is not read half-way (and its half is not
            // reported as a bad configuration). Only content that stayed the same for a
            // whole poll interval is loaded.
            let mut settling: Option<Vec<u8>> = None;
            loop {
                let hup = wait.next().await;
                let cause = if hup {
                    "SIGHUP"
                } else if let Some(path) = &watched {
                    let now = content_digest(path);
                    if Some(&now) == seen.as_ref() {
                        settling = None;
                        continue;
                    }
                    if settling.as_ref() != Some(&now) {
                        tracing::debug!(target: "dpop::gateway", "the configuration file changed; it is loaded once unchanged for one more check");
                        settling = Some(now);
                        continue;
                    }
                    settling = None;
                    // Each content is tried once: a bad file is reported once, not at
                    // every poll.
                    seen = Some(now);
                    "configuration file changed"
                } else {
                    continue;
                };
                self.reload(&source, cause).await;
            }
        }))
    }

    /// Loads the configuration from `source` and applies it whole, or logs why not and
    /// changes nothing. Returns the generation in force afterwards.
    pub(crate) async fn reload(&self, source: &ConfigSource, cause: &str) -> u64 {
        let _one = self.busy.lock().await;
        let old = self.current();
        match self.prepare(source, &old).await {
            Ok((config, layer, proxy, pair)) => {
                let generation = Arc::new(Generation {
                    number: old.number + 1,
                    config,
                    layer,
                    proxy,
                });
                // Put in force: the certificate, then each thread's service, then what
                // readiness and the next reload see.
                if let (Some(tls), Some(pair)) = (&self.tls, pair) {
                    tls.install(pair);
                }
                for slot in &self.slots {
                    let previous = slot.load();
                    slot.store(Arc::new(ThreadService::new(&generation, Some(&previous))));
                }
                self.current.store(Arc::clone(&generation));
                self.metrics.config_applied(generation.number);
                tracing::info!(target: "dpop::gateway", cause, generation = generation.number, "configuration reloaded; new requests use it");
                generation.number
            }
            Err(why) => {
                self.metrics.config_reload_failed();
                tracing::error!(target: "dpop::gateway", cause, error = %why, generation = old.number, "configuration not reloaded; the one in force stays");
                old.number
            }
        }
    }

    /// Everything a new generation needs, read and checked, nothing put in force yet.
    async fn prepare(
        &self,
        source: &ConfigSource,
        old: &Generation,
    ) -> Result<
        (
            GatewayConfig,
            DpopLayer<GatewayStore>,
            Proxy,
            Option<crate::tls::PreparedTls>,
        ),
        GatewayError,
    > {
        let load = Arc::clone(source);
        // Files are read: not on a serving thread's time, nor this runtime's workers'.
        let config = tokio::task::spawn_blocking(move || load())
            .await
            .map_err(|e| GatewayError::Config(format!("configuration loader failed: {e}")))??;
        if let Some(setting) = restart_only(&old.config, &config) {
            return Err(GatewayError::Config(format!(
                "{setting} changed: it takes a restart to change"
            )));
        }
        let pair = match &self.tls {
            Some(tls) => tls.prepare_reload().map_err(GatewayError::Config)?,
            None => None,
        };
        let layer = enforce::rebuild(
            &config.enforcement,
            htu(&config),
            &self.metrics,
            &old.layer,
            &old.config.enforcement,
        )
        .await?;
        let proxy = Proxy::new(&config, Arc::clone(&self.metrics))?;
        proxy.check_upstreams().await?;
        Ok((config, layer, proxy, pair))
    }
}

/// The first setting that differs between `old` and `new` and that a running gateway
/// cannot change (listeners, serving threads, connection limits, the replay store, TLS
/// settings, logging), by its name in the configuration file.
pub(crate) fn restart_only(old: &GatewayConfig, new: &GatewayConfig) -> Option<&'static str> {
    let (a, b) = (&old.enforcement, &new.enforcement);
    [
        ("listen", old.listen != new.listen),
        ("admin_listen", a.admin_listen != b.admin_listen),
        ("limits.workers", old.workers != new.workers),
        (
            "replay_store or [replay] connection settings",
            a.replay != b.replay,
        ),
        ("h2c", old.h2c != new.h2c),
        (
            "[tls] (its file names, client_ca_file, client_auth, reload_interval_secs)",
            old.tls != new.tls,
        ),
        (
            "limits.max_connections",
            a.max_connections != b.max_connections,
        ),
        (
            "limits.max_header_bytes",
            a.max_header_bytes != b.max_header_bytes,
        ),
        (
            "limits.max_concurrent_streams",
            old.max_concurrent_streams != new.max_concurrent_streams,
        ),
        (
            "limits.handshake_timeout_secs",
            old.handshake_timeout != new.handshake_timeout,
        ),
        (
            "limits.idle_timeout_secs",
            old.idle_timeout != new.idle_timeout,
        ),
        (
            "limits.drain_timeout_secs",
            a.drain_timeout != b.drain_timeout,
        ),
        ("log_format", a.log_format != b.log_format),
        // A proof's replay record lasts as long as the window it was accepted in: a wider
        // window after a reload would accept again, until it closes, a proof recorded
        // under the narrower one. Narrowing is safe.
        (
            "[proof] max_age_secs (raised)",
            b.proof_max_age > a.proof_max_age,
        ),
        (
            "[nonce] max_age_secs (raised)",
            nonce_max_age(b) > nonce_max_age(a),
        ),
        (
            "reload_on_change",
            old.reload_on_change != new.reload_on_change,
        ),
    ]
    .into_iter()
    .find(|(_, changed)| *changed)
    .map(|(name, _)| name)
}

/// How long nonces are accepted (0 without nonces).
fn nonce_max_age(e: &crate::config::EnforcementConfig) -> u64 {
    e.nonces.as_ref().map_or(0, |n| n.max_age_secs())
}

/// A digest of the file's content (empty when it cannot be read: a file being replaced
/// may be missing for a moment, and the reload it triggers says why).
fn content_digest(path: &std::path::Path) -> Vec<u8> {
    std::fs::read(path)
        .map(|bytes| {
            aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &bytes)
                .as_ref()
                .to_vec()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = "listen = \"127.0.0.1:8080\"\nupstream = \"http://127.0.0.1:3000\"\nissuer = \"https://as.example.com\"\naudience = \"https://api.example.com\"\nallowed_hosts = [\"127.0.0.1:8080\"]\n";

    fn config(extra: &str) -> GatewayConfig {
        GatewayConfig::from_toml(&format!("{BASE}{extra}")).unwrap()
    }

    #[test]
    fn restart_only_settings_are_named() {
        let old = config("");
        assert_eq!(restart_only(&old, &config("")), None);
        // Reloadable: routes, upstreams, trusted proxies, timeouts of a request.
        let reloadable = config(
            "trusted_proxies = [\"10.0.0.0/8\"]\n[limits]\nrequest_timeout_secs = 5\nupstream_timeout_secs = 3\n[[routes]]\npath_prefix = \"/v2\"\nupstream = \"http://127.0.0.1:3001\"\n",
        );
        assert_eq!(restart_only(&old, &reloadable), None);
        // A narrower proof window is safe (records outlive it); a wider one is not.
        let narrower = config("[proof]\nmax_age_secs = 30\n");
        assert_eq!(restart_only(&old, &narrower), None);
        assert_eq!(
            restart_only(&narrower, &old),
            Some("[proof] max_age_secs (raised)")
        );
        let new = GatewayConfig::from_toml(&BASE.replace("8080\"\nupstream", "8081\"\nupstream"))
            .unwrap();
        assert_eq!(restart_only(&old, &new), Some("listen"));
        for (extra, name) in [
            ("admin_listen = \"127.0.0.1:9090\"\n", "admin_listen"),
            ("[limits]\nworkers = 3\n", "limits.workers"),
            (
                "replay_store = \"redis://127.0.0.1:6379\"\n",
                "replay_store or [replay] connection settings",
            ),
            ("h2c = true\n", "h2c"),
            ("[limits]\nmax_connections = 7\n", "limits.max_connections"),
            ("log_format = \"json\"\n", "log_format"),
            ("reload_on_change = true\n", "reload_on_change"),
            (
                "[proof]\nmax_age_secs = 120\n",
                "[proof] max_age_secs (raised)",
            ),
        ] {
            let mut new = config(extra);
            if name != "limits.workers" {
                new.workers = old.workers;
            }
            assert_eq!(restart_only(&old, &new), Some(name), "{extra}");
        }
    }

    #[test]
    fn a_random_nonce_secret_outlives_a_reload() {
        // No secret configured: each load draws none anew, so nonces handed out before a
        // reload still validate after it.
        let with_nonces = "[nonce]\nrequire = true\n";
        let a = config(with_nonces).enforcement.nonces.unwrap();
        let b = config(with_nonces).enforcement.nonces.unwrap();
        let now = dpop_core::UnixTime::from_secs(1_700_000_000);
        let nonce = dpop_core::NonceValidator::issue(&*a, now).unwrap();
        assert!(dpop_core::NonceValidator::validate(&*b, Some(&nonce), now).is_ok());
    }
}
