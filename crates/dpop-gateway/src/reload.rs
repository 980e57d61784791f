//! Reloading a server's configuration while it serves, for `dpop gateway` and `dpop
//! authz` alike: on SIGHUP, or when the configuration file's content changes
//! (`reload_on_change`, the gateway's). A reload reads and validates the whole
//! configuration, refuses a change to a setting only a restart can apply, builds what the
//! new configuration serves with (over the same replay store), and only then puts it in
//! force, all at once; anything failing on the way leaves the configuration in force
//! untouched. Requests (and checks) that started before keep what they started with.
//!
//! The watch loop, the generation counter, the metrics and the log lines are here once;
//! what a generation holds, how it is built and how it is put in force is the server's
//! own [`Apply`] (the gateway's below, the authorizer's in `authz/reload.rs`).

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use dpop_tower::{DpopLayer, DpopService};
use tower::Layer as _;

use crate::config::{EnforcementConfig, GatewayConfig};
use crate::enforce::{self, htu};
use crate::error::GatewayError;
use crate::metrics::{Metrics, RouteLabels};
use crate::proxy::Proxy;
use crate::store::GatewayStore;
use crate::tls::TlsListener;
use dpop_server::TickOrHangup;

/// Where a reload reads the configuration (the file, with the command line's settings
/// and the environment over it, as at start).
pub(crate) type ConfigSource<C> = Arc<dyn Fn() -> Result<C, GatewayError> + Send + Sync>;

/// Where a server reloads its configuration from, and the file it may watch.
pub(crate) struct ReloadSource<C> {
    pub(crate) source: ConfigSource<C>,
    pub(crate) file: Option<PathBuf>,
}

impl<C> ReloadSource<C> {
    /// A reload from `source`, watching `file` when given.
    pub(crate) fn new(
        source: impl Fn() -> Result<C, GatewayError> + Send + Sync + 'static,
        file: Option<PathBuf>,
    ) -> Self {
        Self {
            source: Arc::new(source),
            file,
        }
    }
}

impl<C> std::fmt::Debug for ReloadSource<C> {
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

/// Which server reloads: its log lines go to its own target.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Service {
    /// `dpop gateway` (`dpop::gateway`).
    Gateway,
    /// `dpop authz` (`dpop::authz`).
    Authz,
}

/// A `tracing` event at `$level` under the target of `$service` (a target is fixed where
/// the event is written, so each service has its own arm).
macro_rules! service_event {
    ($service:expr, $level:ident, $($rest:tt)+) => {
        match $service {
            Service::Gateway => tracing::$level!(target: "dpop::gateway", $($rest)+),
            Service::Authz => tracing::$level!(target: "dpop::authz", $($rest)+),
        }
    };
}

/// One configuration in force, numbered from 1, with what it serves with.
pub(crate) struct Generation<S> {
    number: u64,
    state: S,
}

impl<S> Generation<S> {
    /// The configuration the server started with.
    pub(crate) fn first(state: S) -> Self {
        Self { number: 1, state }
    }

    /// Its number: 1 as started, one more per applied reload.
    pub(crate) fn number(&self) -> u64 {
        self.number
    }

    /// What it serves with.
    pub(crate) fn state(&self) -> &S {
        &self.state
    }
}

/// What differs between the servers' reloads: what a generation holds, how a new one is
/// built from a loaded configuration, and how it is put in force.
pub(crate) trait Apply: Send + Sync + 'static {
    /// The configuration a [`ConfigSource`] loads.
    type Config: Send + 'static;
    /// What a generation serves with (its configuration among it).
    type State: Send + Sync + 'static;
    /// What is read ahead for [`Apply::install`] (the gateway's certificate pair).
    type Prepared: Send;
    /// Whose reload it is.
    const SERVICE: Service;

    /// Whether `state`'s configuration asks for its file to be watched.
    fn reload_on_change(state: &Self::State) -> bool;

    /// The DPoP checks `state` enforces.
    fn enforcement(state: &Self::State) -> &EnforcementConfig;

    /// Builds the next generation from `config`, the one in force being `old`: refuses a
    /// setting that takes a restart, builds everything that can fail. Nothing is put in
    /// force here.
    fn prepare(
        &self,
        config: Self::Config,
        old: &Self::State,
    ) -> impl Future<Output = Result<(Self::State, Self::Prepared), GatewayError>> + Send;

    /// Puts `generation` in force where the server's requests take it from, besides
    /// [`Reloader::current`] (which is switched right after).
    fn install(&self, generation: &Arc<Generation<Self::State>>, prepared: Self::Prepared);
}

/// Applies reloads: the generation in force, and the server's own way to build and
/// install the next one.
pub(crate) struct Reloader<A: Apply> {
    current: ArcSwap<Generation<A::State>>,
    apply: A,
    metrics: Arc<Metrics>,
    /// One reload at a time (SIGHUP and a file change may come together).
    busy: tokio::sync::Mutex<()>,
}

impl<A: Apply> Reloader<A> {
    pub(crate) fn new(first: Arc<Generation<A::State>>, apply: A, metrics: Arc<Metrics>) -> Self {
        for setting in A::enforcement(&first.state).dangerous_settings() {
            service_event!(A::SERVICE, warn, setting = %setting, "a dangerous setting is in force: it weakens a check");
        }
        Self {
            current: ArcSwap::new(first),
            apply,
            metrics,
            busy: tokio::sync::Mutex::new(()),
        }
    }

    /// The generation in force.
    pub(crate) fn current(&self) -> Arc<Generation<A::State>> {
        self.current.load_full()
    }

    /// Starts reloading from `source` on SIGHUP, and when the content of `file` changes if
    /// the configuration sets `reload_on_change`. Registered for SIGHUP before this
    /// returns. The task stops when the handle is dropped.
    pub(crate) fn spawn_watch(
        self: Arc<Self>,
        source: ConfigSource<A::Config>,
        file: Option<PathBuf>,
    ) -> AbortOnDrop {
        let service = A::SERVICE;
        let mut wait = TickOrHangup::new(POLL_INTERVAL, true, |e| {
            service_event!(service, warn, error = %e, "cannot listen for SIGHUP: the configuration is not reloaded on it");
        });
        let on_change = A::reload_on_change(self.current().state());
        let watched = match file {
            Some(f) if on_change => Some(f),
            Some(_) => None,
            None => {
                if on_change {
                    service_event!(
                        service,
                        warn,
                        "reload_on_change is set but the configuration came from no file: only SIGHUP reloads it"
                    );
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
                        service_event!(
                            service,
                            debug,
                            "the configuration file changed; it is loaded once unchanged for one more check"
                        );
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
    pub(crate) async fn reload(&self, source: &ConfigSource<A::Config>, cause: &str) -> u64 {
        let _one = self.busy.lock().await;
        let old = self.current();
        let service = A::SERVICE;
        match self.prepare(source, &old).await {
            Ok((state, prepared)) => {
                let generation = Arc::new(Generation {
                    number: old.number + 1,
                    state,
                });
                // Put in force: where the server's requests take it from, then what
                // readiness and the next reload see.
                self.apply.install(&generation, prepared);
                self.current.store(Arc::clone(&generation));
                self.metrics.config_applied(generation.number);
                log_dangerous_changes(
                    service,
                    A::enforcement(&old.state),
                    A::enforcement(&generation.state),
                );
                service_event!(
                    service,
                    info,
                    cause,
                    generation = generation.number,
                    "configuration reloaded; new requests use it"
                );
                generation.number
            }
            Err(why) => {
                self.metrics.config_reload_failed();
                service_event!(service, error, cause, error = %why, generation = old.number, "configuration not reloaded; the one in force stays");
                old.number
            }
        }
    }

    /// The next generation's state, read and checked, nothing put in force yet.
    async fn prepare(
        &self,
        source: &ConfigSource<A::Config>,
        old: &Generation<A::State>,
    ) -> Result<(A::State, A::Prepared), GatewayError> {
        let load = Arc::clone(source);
        // Files are read: not on a serving thread's time, nor this runtime's workers'.
        let config = tokio::task::spawn_blocking(move || load())
            .await
            .map_err(|e| GatewayError::Config(format!("configuration loader failed: {e}")))??;
        self.apply.prepare(config, &old.state).await
    }
}

/// Refuses a reload that changes `setting` (a name in the configuration file), one
/// that takes a restart.
pub(crate) fn refuse_restart_only(setting: Option<&'static str>) -> Result<(), GatewayError> {
    match setting {
        Some(setting) => Err(GatewayError::Config(format!(
            "{setting} changed: it takes a restart to change"
        ))),
        None => Ok(()),
    }
}

/// The settings of the checks that a running server cannot change (the admin listener,
/// the replay store, connection limits, logging, and widening the proof or nonce window),
/// by their names in the configuration file, each with whether it differs between `a` and
/// `b`. The gateway and the authorizer add their own listeners.
pub(crate) fn enforcement_restart_only(
    a: &EnforcementConfig,
    b: &EnforcementConfig,
) -> [(&'static str, bool); 8] {
    [
        ("admin_listen", a.admin_listen != b.admin_listen),
        (
            "replay_store or [replay] connection settings",
            a.replay != b.replay,
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
    ]
}

/// How long nonces are accepted (0 without nonces).
fn nonce_max_age(e: &EnforcementConfig) -> u64 {
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

// ---- the gateway's generations ----

/// What one gateway configuration serves with.
pub(crate) struct Served {
    config: GatewayConfig,
    layer: DpopLayer<GatewayStore>,
    /// The proxy whose connectors the serving threads' own pools use.
    proxy: Proxy,
}

impl Served {
    pub(crate) fn new(config: GatewayConfig, layer: DpopLayer<GatewayStore>, proxy: Proxy) -> Self {
        Self {
            config,
            layer,
            proxy,
        }
    }

    /// Its DPoP layer (the token source and the replay store too).
    pub(crate) fn layer(&self) -> &DpopLayer<GatewayStore> {
        &self.layer
    }
}

/// A generation of the gateway's configuration.
pub(crate) type GatewayGeneration = Generation<Served>;

/// What one serving thread serves a request with: a generation's layer over the thread's
/// own proxy (its own upstream pools).
pub(crate) struct ThreadService {
    generation: Arc<GatewayGeneration>,
    service: DpopService<Proxy, GatewayStore>,
}

impl ThreadService {
    /// The service of `generation` for a thread, which served `previous` until now (its
    /// plain-HTTP pools are kept).
    pub(crate) fn new(generation: &Arc<GatewayGeneration>, previous: Option<&Self>) -> Self {
        let proxy = generation
            .state
            .proxy
            .with_pools_after(previous.map(|p| p.service.get_ref()));
        Self {
            generation: Arc::clone(generation),
            service: generation.state.layer.layer(proxy),
        }
    }

    pub(crate) fn layer(&self) -> &DpopLayer<GatewayStore> {
        &self.generation.state.layer
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
        self.generation.state.config.enforcement.request_timeout
    }
}

/// How the gateway builds and installs a generation: each serving thread's slot, and the
/// certificate of the TLS listener.
pub(crate) struct GatewayApply {
    pub(crate) slots: Vec<Arc<ArcSwap<ThreadService>>>,
    pub(crate) tls: Option<Arc<TlsListener>>,
    pub(crate) metrics: Arc<Metrics>,
}

/// The gateway's reloader.
pub(crate) type GatewayReloader = Reloader<GatewayApply>;

impl Apply for GatewayApply {
    type Config = GatewayConfig;
    type State = Served;
    type Prepared = Option<crate::tls::PreparedTls>;
    const SERVICE: Service = Service::Gateway;

    fn reload_on_change(state: &Served) -> bool {
        state.config.reload_on_change
    }

    fn enforcement(state: &Served) -> &EnforcementConfig {
        &state.config.enforcement
    }

    async fn prepare(
        &self,
        config: GatewayConfig,
        old: &Served,
    ) -> Result<(Served, Self::Prepared), GatewayError> {
        refuse_restart_only(restart_only(&old.config, &config))?;
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
        Ok((Served::new(config, layer, proxy), pair))
    }

    fn install(&self, generation: &Arc<GatewayGeneration>, pair: Self::Prepared) {
        // The certificate, then each thread's service.
        if let (Some(tls), Some(pair)) = (&self.tls, pair) {
            tls.install(pair);
        }
        for slot in &self.slots {
            let previous = slot.load();
            slot.store(Arc::new(ThreadService::new(generation, Some(&previous))));
        }
    }
}

/// The first setting that differs between `old` and `new` and that a running gateway
/// cannot change (listeners, serving threads, connection limits, the replay store, TLS
/// settings, logging), by its name in the configuration file.
pub(crate) fn restart_only(old: &GatewayConfig, new: &GatewayConfig) -> Option<&'static str> {
    [
        ("listen", old.listen != new.listen),
        ("limits.workers", old.workers != new.workers),
        ("limits.io_uring", old.io_uring != new.io_uring),
        ("h2c", old.h2c != new.h2c),
        (
            "[tls] (its file names, client_ca_file, client_auth, reload_interval_secs)",
            old.tls != new.tls,
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
            "reload_on_change",
            old.reload_on_change != new.reload_on_change,
        ),
    ]
    .into_iter()
    .chain(enforcement_restart_only(&old.enforcement, &new.enforcement))
    .find(|(_, changed)| *changed)
    .map(|(name, _)| name)
}

/// Says which settings that weaken a check a reload turned on (a warning: an edit of
/// the file may not have meant it) and which it turned off.
fn log_dangerous_changes(service: Service, old: &EnforcementConfig, new: &EnforcementConfig) {
    let (before, after) = (old.dangerous_settings(), new.dangerous_settings());
    for setting in after.iter().filter(|s| !before.contains(s)) {
        service_event!(service, warn, setting = %setting, "a reload turned on a dangerous setting: it weakens a check");
    }
    for setting in before.iter().filter(|s| !after.contains(s)) {
        service_event!(service, info, setting = %setting, "a reload turned off a dangerous setting");
    }
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
            ("[limits]\nio_uring = false\n", "limits.io_uring"),
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
