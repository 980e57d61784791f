//! The listeners: the proxy (plain HTTP/1.1, h2c beside it, or TLS with ALPN `h2` and
//! `http/1.1`) with its connection limits and graceful drain, and the admin listener
//! (`dpop-server`'s, answering `/readyz` with the gateway's readiness).

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use dpop_server::Readiness;
use dpop_tower::{ClientCertificate, DpopLayer, PeerAddr};
use dpop_uring::BatchedStream;
use http::{Request, StatusCode};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tokio::time::Instant;
use tower::ServiceExt as _;

use crate::accept::{Accepting, next_until, stopped};
use crate::access_log::RequestLog;
use crate::balance::{Balance, Handoff, Held};
use crate::config::GatewayConfig;
use crate::deadline::{self, SharedDeadline};
use crate::enforce;
use crate::error::GatewayError;
use crate::metrics::Metrics;
use crate::proxy::{Proxy, empty};
use crate::reload::{
    AbortOnDrop, GatewayApply, GatewayReloader, Generation, ReloadSource, Served, ThreadService,
};
use crate::store::GatewayStore;
use crate::stream::ConnectionSlot;
use crate::supervise;
use crate::tls::TlsListener;

/// A gateway ready to serve: listeners bound, keys fetched (or being retried), replay
/// store connected.
#[derive(Debug)]
pub struct Gateway {
    config: GatewayConfig,
    local_addr: SocketAddr,
    workers: Vec<Worker>,
    /// Which serving thread takes a new connection.
    balance: Arc<Balance>,
    tls: Option<TlsListener>,
    admin: Option<TcpListener>,
    layer: DpopLayer<GatewayStore>,
    proxy: Proxy,
    metrics: Arc<Metrics>,
    /// Where a reload reads the configuration, and the file watched for changes.
    reload: Option<ReloadSource<GatewayConfig>>,
}

/// A listener on `addr` when one is configured (the gateway's and the authorizer's
/// optional listeners).
pub(crate) async fn bind_optional(
    addr: Option<SocketAddr>,
) -> Result<Option<TcpListener>, GatewayError> {
    let Some(addr) = addr else { return Ok(None) };
    TcpListener::bind(addr)
        .await
        .map(Some)
        .map_err(|source| GatewayError::Listen { addr, source })
}

impl Gateway {
    /// Binds the listeners, sets up the token source and connects the replay store.
    ///
    /// # Errors
    /// When a listener cannot be bound, Redis cannot be reached, or the settings are
    /// inconsistent ([`GatewayError::Config`] also for unreadable CA, certificate or key
    /// files, naming the file, and for a TLS certificate and key that do not match);
    /// [`GatewayError::Upstream`] when an https or HTTP/2 upstream refuses the gateway
    /// (see [`Proxy::check_upstreams`]). An unreachable issuer is not fatal: `/readyz`
    /// says not ready and
    /// requests get 503 until its keys load.
    pub async fn bind(config: GatewayConfig) -> Result<Self, GatewayError> {
        // Read first: a bad certificate is a configuration error, found before anything
        // is fetched or connected.
        let tls = config.tls.as_ref().map(TlsListener::new).transpose()?;
        if tls.is_none()
            && config.enforcement.trusted_proxies.is_empty()
            && config
                .enforcement
                .public_urls
                .iter()
                .any(|u| u.starts_with("https://"))
        {
            tracing::warn!(target: "dpop::gateway", "public_url is https:// but this listener speaks plain HTTP and trusts no proxy: make sure only a TLS terminator in front can reach it (or set [tls])");
        }
        // Refused at load without trusted proxies; with them, a proxy serves clients
        // plain HTTP and re-encrypts: legal, but worth saying.
        if tls.is_some()
            && config
                .enforcement
                .public_urls
                .iter()
                .any(|u| u.starts_with("http://"))
        {
            tracing::warn!(target: "dpop::gateway", "public_url is http:// on a TLS listener: clients reach the proxy in front over plain HTTP, where tokens and proofs can be read");
        }
        let metrics = Arc::new(Metrics::new());
        let layer = enforce::layer(&config.enforcement, enforce::htu(&config), &metrics).await?;
        let proxy = Proxy::new(&config, metrics.clone())?;
        proxy.check_upstreams().await?;
        if config.workers == 0 {
            return Err(GatewayError::Config(
                "limits.workers must be positive".to_owned(),
            ));
        }
        // The admin listener first: once the serving port accepts connections, the
        // admin port (health, readiness, metrics) does too, so a probe or a script that
        // waits for the one can query the other at once.
        let admin = bind_optional(config.enforcement.admin_listen).await?;
        let listen_error = |source| GatewayError::Listen {
            addr: config.listen,
            source,
        };
        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(listen_error)?;
        let local_addr = listener.local_addr().map_err(listen_error)?;
        // One listening socket, a handle on it per serving thread (see `Worker`).
        let socket = listener.into_std().map_err(listen_error)?;
        // The gauges exist from here on, so `/metrics` shows every thread at 0 before the
        // first connection.
        let (balance, handoffs) = Balance::new(
            (0..config.workers)
                .map(|thread| metrics.serving_thread_connections(thread))
                .collect(),
        );
        let workers = handoffs
            .into_iter()
            .map(|handed| Worker::new(&socket, handed))
            .collect::<Result<Vec<_>, _>>()
            .map_err(listen_error)?;
        Ok(Self {
            config,
            local_addr,
            workers,
            balance,
            tls,
            admin,
            layer,
            proxy,
            metrics,
            reload: None,
        })
    }

    /// Makes SIGHUP reload the configuration from `source` while serving (and, when the
    /// configuration sets `reload_on_change`, a change to the content of `file`): routes,
    /// upstreams, nonce secrets, trusted proxies, token settings and the certificate are
    /// applied to requests that start afterwards, all together or not at all. A
    /// configuration that cannot be loaded, or that changes a setting only a restart can
    /// change (the listen addresses, `limits.workers`, the replay store, ...), is refused
    /// with an error log naming the cause, and the configuration in force stays.
    /// Without this, SIGHUP re-reads only the TLS certificate (when there is one).
    #[must_use]
    pub fn reload_from(
        mut self,
        source: impl Fn() -> Result<GatewayConfig, GatewayError> + Send + Sync + 'static,
        file: Option<std::path::PathBuf>,
    ) -> Self {
        self.reload = Some(ReloadSource::new(source, file));
        self
    }

    /// The proxy's bound address.
    ///
    /// # Errors
    /// When the socket has no local address.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        Ok(self.local_addr)
    }

    /// Serves until `shutdown` resolves, then stops accepting and lets in-flight requests
    /// finish for up to the drain timeout.
    ///
    /// # Errors
    /// When a serving thread cannot be started, or one ends (panics) before `shutdown`
    /// or while draining: the gateway then stops serving rather than run on part of
    /// its threads.
    pub async fn serve(self, shutdown: impl Future<Output = ()>) -> Result<(), GatewayError> {
        let Self {
            config,
            local_addr: _,
            workers,
            balance,
            tls,
            admin,
            layer,
            proxy,
            metrics,
            reload: reload_source,
        } = self;
        // The kernel's answer for the ring every serving thread asks for; a thread that
        // is refused later says so itself.
        let probed = config.io_uring.then(dpop_uring::probe);
        let io_uring = match &probed {
            None => "off".to_owned(),
            Some(Ok(())) => "on".to_owned(),
            Some(Err(e)) => format!("refused by the kernel ({e}): one system call per write"),
        };
        tracing::info!(
            target: "dpop::gateway",
            listen = %config.listen,
            tls = tls.is_some(),
            h2c = config.h2c,
            workers = workers.len(),
            io_uring,
            upstream = %config.upstream,
            route_upstreams = ?config.route_upstreams.values().map(ToString::to_string).collect::<Vec<_>>(),
            issuer = %config.enforcement.issuer,
            replay_store = layer.store().kind(),
            "gateway listening"
        );
        let tls = tls.map(Arc::new);
        let generation = Arc::new(Generation::first(Served::new(config.clone(), layer, proxy)));
        // One slot per serving thread: what its next request is served with.
        let slots: Vec<Arc<ArcSwap<ThreadService>>> = (0..workers.len())
            .map(|_| Arc::new(ArcSwap::from_pointee(ThreadService::new(&generation, None))))
            .collect();
        let reloader = Arc::new(GatewayReloader::new(
            generation,
            GatewayApply {
                slots: slots.clone(),
                tls: tls.clone(),
                metrics: Arc::clone(&metrics),
            },
            Arc::clone(&metrics),
        ));
        // Registered before serving: SIGHUP reloads from the first request on (its
        // default action would end the process).
        let watch_config = reload_source
            .map(|ReloadSource { source, file }| Arc::clone(&reloader).spawn_watch(source, file));
        if let Some(admin) = admin {
            let reloader = Arc::clone(&reloader);
            tokio::spawn(dpop_server::admin::serve(
                admin,
                metrics.registry(),
                move || {
                    let current = reloader.current();
                    readiness(current.state().layer().clone(), current.number())
                },
            ));
        }
        let reload = match (&tls, &config.tls) {
            (Some(t), Some(c)) => Some(AbortOnDrop(
                t.spawn_reload(c.reload_interval, watch_config.is_none()),
            )),
            _ => None,
        };
        let shared = Arc::new(Shared {
            balance: Arc::clone(&balance),
            requests: RequestLog::new(Arc::clone(&metrics)),
            tls,
            protocols: Protocols::new(&config),
            limit: Arc::new(Semaphore::new(config.enforcement.max_connections)),
            handshake_timeout: config.handshake_timeout,
            idle_timeout: config.idle_timeout,
            h2c: config.h2c,
            // Refused at start: the threads do not ask again.
            io_uring: matches!(probed, Some(Ok(()))),
        });
        // Connections watch `drain` to start their graceful shutdown, and the serving
        // threads to stop accepting; each holds a receiver, so `closed()` on the sender
        // resolves when the last one has ended. `halt` then ends the threads (and what
        // is still open on them). Dropped with this future, both end everything.
        let (drain, draining) = watch::channel(false);
        let (halt, halted) = watch::channel(false);
        let (report, mut ended) = mpsc::unbounded_channel();
        let mut running = 0;
        for (index, (worker, slot)) in workers.into_iter().zip(slots).enumerate() {
            // Its own upstream connection pools (in its slot): a request never waits on
            // another thread's connection.
            let (shared, draining, halted) =
                (Arc::clone(&shared), draining.clone(), halted.clone());
            let name = format!("dpop-gateway-{index}");
            supervise::spawn(name.clone(), report.clone(), move || {
                worker.run(index, &slot, &shared, draining, halted);
            })
            .map_err(|e| {
                GatewayError::Serving(format!("cannot start serving thread {name}: {e}"))
            })?;
            running += 1;
        }
        drop((draining, halted, report));
        supervise::until_shutdown(shutdown, &mut ended).await?;
        drop((reload, watch_config));
        tracing::info!(target: "dpop::gateway", timeout_secs = config.enforcement.drain_timeout.as_secs(), "shutting down: draining in-flight requests");
        let _ = drain.send(true);
        if tokio::time::timeout(config.enforcement.drain_timeout, drain.closed())
            .await
            .is_err()
        {
            tracing::warn!(target: "dpop::gateway", "drain timeout reached; closing remaining connections");
        } else {
            tracing::info!(target: "dpop::gateway", "drained");
        }
        let _ = halt.send(true);
        supervise::stopped(running, &mut ended).await
    }
}

/// What every serving thread shares: the listener settings, the connection limit and
/// which thread takes a new connection (what a reload cannot change).
struct Shared {
    /// Which thread serves a new connection.
    balance: Arc<Balance>,
    /// The request metrics and the access log.
    requests: RequestLog,
    tls: Option<Arc<TlsListener>>,
    protocols: Protocols,
    /// `max_connections`, across all threads.
    limit: Arc<Semaphore>,
    handshake_timeout: Duration,
    idle_timeout: Duration,
    h2c: bool,
    /// `[limits] io_uring`, and the kernel allows it: each serving thread starts a
    /// batcher, whose batch its connections' writes join.
    io_uring: bool,
}

/// One serving thread: a single-threaded runtime and its own handle (a `dup`) on the
/// listening socket. Every thread waits on the same socket and the first free one takes
/// a new connection, keeps it or hands it to a thread that serves clearly fewer (see
/// [`crate::balance`]); the connection then lives on that thread: its requests are read,
/// checked, forwarded through the thread's own upstream pool and answered without a
/// wake-up crossing threads (a work-stealing runtime moves tasks between cores and wakes
/// other cores for each I/O event). One socket rather than one `SO_REUSEPORT` socket per
/// thread: the kernel would spread connections by a hash of their addresses, blind to
/// how busy each thread is, and any process of the same user could bind the port beside
/// the gateway and take a share of its connections.
#[derive(Debug)]
struct Worker {
    /// Declared before the runtime: deregistered from it before it is shut down.
    listener: TcpListener,
    /// Connections other threads accepted for this one.
    handed: mpsc::UnboundedReceiver<Handoff>,
    runtime: WorkerRuntime,
}

impl Worker {
    fn new(
        socket: &std::net::TcpListener,
        handed: mpsc::UnboundedReceiver<Handoff>,
    ) -> std::io::Result<Self> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let listener = {
            let _entered = runtime.enter();
            TcpListener::from_std(socket.try_clone()?)?
        };
        Ok(Self {
            listener,
            handed,
            runtime: WorkerRuntime(Some(runtime)),
        })
    }

    /// Accepts and serves connections until `draining` turns true, then waits for
    /// `halted` (or either sender to go) and ends, dropping whatever is still open. A
    /// connection accepted here goes to the thread [`Balance::place`] names; connections
    /// other threads hand over (`handed`) are served here.
    fn run(
        self,
        index: usize,
        slot: &Arc<ArcSwap<ThreadService>>,
        shared: &Arc<Shared>,
        mut draining: watch::Receiver<bool>,
        mut halted: watch::Receiver<bool>,
    ) {
        let Self {
            listener,
            mut handed,
            runtime,
        } = self;
        let Some(rt) = runtime.0.as_ref() else { return };
        let balance = &shared.balance;
        rt.block_on(async {
            // This thread's batch of socket writes, which its client and upstream
            // connections use; without it they write one system call each.
            let _batcher = match shared.io_uring.then(dpop_uring::Batcher::start) {
                Some(Err(error)) => {
                    // The start-up line said io_uring was on: say that this thread
                    // could not have it (a ring's memory over RLIMIT_MEMLOCK on kernels
                    // before 5.12, descriptors, memory).
                    tracing::warn!(target: "dpop::gateway", thread = index, %error, "io_uring refused on this serving thread: its connections write one system call each");
                    None
                }
                started => started.and_then(Result::ok),
            };
            loop {
                let next = tokio::select! {
                    biased;
                    Some(handoff) = handed.recv() => Next::Handed(handoff),
                    accepted = next_until(&listener, &shared.limit, &mut draining, Accepting::Gateway) => {
                        match accepted {
                            Some(accepted) => Next::Accepted(accepted),
                            None => break,
                        }
                    }
                };
                match next {
                    Next::Handed(handoff) => adopt(handoff, index, slot, shared, &draining),
                    Next::Accepted((permit, stream, peer)) => {
                        let thread = balance.place(index);
                        let held = balance.hold(thread, permit);
                        if thread == index {
                            serve_connection(shared, Arc::clone(slot), held, stream, peer, draining.clone());
                            continue;
                        }
                        let stream = match stream.into_std() {
                            Ok(stream) => stream,
                            Err(error) => {
                                tracing::warn!(target: "dpop::gateway", %peer, %error, "cannot hand a connection to another serving thread; closed");
                                continue;
                            }
                        };
                        if let Err(back) = balance.hand_off(thread, Handoff { held, stream, peer }) {
                            // That thread takes no more connections: served here.
                            let held = back.held.move_to(balance, index);
                            adopt(Handoff { held, ..back }, index, slot, shared, &draining);
                        }
                    }
                }
            }
            // Nothing more is accepted on this thread; what was handed to it before is
            // still served (told at once to finish, as draining has begun).
            drop(listener);
            handed.close();
            // `recv`, not `try_recv`: a hand-off sent just before the close may not be
            // in the queue yet, and `recv` waits for it (it ends once none is under way).
            while let Some(handoff) = handed.recv().await {
                adopt(handoff, index, slot, shared, &draining);
            }
            drop(draining);
            let _ = halted.wait_for(|h| *h).await;
        });
    }
}

/// What a serving thread does next.
enum Next {
    Accepted((OwnedSemaphorePermit, tokio::net::TcpStream, SocketAddr)),
    Handed(Handoff),
}

/// Serves a connection accepted on another thread on this one.
fn adopt(
    handoff: Handoff,
    index: usize,
    slot: &Arc<ArcSwap<ThreadService>>,
    shared: &Arc<Shared>,
    draining: &watch::Receiver<bool>,
) {
    let Handoff { held, stream, peer } = handoff;
    match tokio::net::TcpStream::from_std(stream) {
        Ok(stream) => serve_connection(
            shared,
            Arc::clone(slot),
            held,
            stream,
            peer,
            draining.clone(),
        ),
        Err(error) => {
            tracing::warn!(target: "dpop::gateway", %peer, %error, thread = index, "cannot serve a connection handed over from another serving thread; closed");
        }
    }
}

/// A serving thread's runtime, shut down without blocking when dropped (also when a
/// gateway that was bound is dropped unserved inside another runtime).
#[derive(Debug)]
struct WorkerRuntime(Option<tokio::runtime::Runtime>);

impl Drop for WorkerRuntime {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

/// Serves one accepted connection on the current thread's runtime: TLS first when the
/// listener has it, then HTTP/1.1 or HTTP/2.
fn serve_connection(
    shared: &Arc<Shared>,
    slot: Arc<ArcSwap<ThreadService>>,
    held: Held,
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    mut stop: watch::Receiver<bool>,
) {
    let (handshake_timeout, idle_timeout) = (shared.handshake_timeout, shared.idle_timeout);
    // A WebSocket tunnel outlives the connection it was upgraded from and keeps the
    // connection's slot until it ends.
    let permit = ConnectionSlot(Arc::new(held));
    let Some(tls) = shared.tls.clone() else {
        let first = FirstRequest::default();
        // Only a connection that may speak HTTP/2 counts its requests in flight.
        let idle = shared.h2c.then(Idle::new);
        let svc = request_service(
            slot,
            shared,
            peer,
            None,
            permit.clone(),
            Activity {
                first: first.clone(),
                idle: idle.clone(),
            },
        );
        // Responses go out in the serving thread's batch of writes (see `dpop_uring`),
        // when it has a batcher (`Worker::run`).
        let io = TokioIo::new(BatchedStream::new(stream));
        if let Some(idle) = idle {
            let shared = Arc::clone(shared);
            tokio::spawn(async move {
                let conn = shared
                    .protocols
                    .auto
                    .serve_connection_with_upgrades(io, svc);
                let idle = idle.elapsed(idle_timeout, peer);
                let served = drive(conn, stop, |c| c.graceful_shutdown(), idle);
                first.bound(served, handshake_timeout, peer).await;
                drop(permit);
            });
        } else {
            // Plain HTTP/1.1 only: no version sniffing on this path.
            let conn = shared.protocols.http1_connection(io, svc);
            tokio::spawn(async move {
                let never = std::future::pending();
                drive(conn, stop, |c| c.graceful_shutdown(), never).await;
                drop(permit);
            });
        }
        return;
    };
    let shared = Arc::clone(shared);
    let stream = BatchedStream::new(stream);
    tokio::spawn(async move {
        let accepted = tokio::select! {
            a = tls.accept(stream, handshake_timeout) => a,
            () = stopped(&mut stop) => return,
        };
        let accepted = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Scanners and health checks fail handshakes all day: not a warning.
                tracing::debug!(target: "dpop::gateway", %peer, error = %e, "TLS handshake failed");
                return;
            }
        };
        let first = FirstRequest::default();
        let idle = accepted.h2.then(Idle::new);
        let svc = request_service(
            slot,
            &shared,
            peer,
            accepted.client_cert,
            permit.clone(),
            Activity {
                first: first.clone(),
                idle: idle.clone(),
            },
        );
        let io = TokioIo::new(accepted.stream);
        if let Some(idle) = idle {
            let conn = shared.protocols.http2.serve_connection(io, svc);
            let idle = idle.elapsed(idle_timeout, peer);
            let served = drive(conn, stop, |c| c.graceful_shutdown(), idle);
            first.bound(served, handshake_timeout, peer).await;
        } else {
            let conn = shared.protocols.http1_connection(io, svc);
            let never = std::future::pending();
            drive(conn, stop, |c| c.graceful_shutdown(), never).await;
        }
    });
}

/// The connection builders, configured once.
struct Protocols {
    http1: http1::Builder,
    http2: http2::Builder<TokioExecutor>,
    /// HTTP/1.1 or HTTP/2 by the connection's first bytes (h2c prior knowledge).
    auto: auto::Builder<TokioExecutor>,
}

/// The HTTP/1.1 settings, on hyper's builder and on the auto builder's (two types with
/// the same methods): one list, so a limit cannot differ between listener kinds.
macro_rules! http1_settings {
    ($builder:expr, $config:expr) => {
        $builder
            .timer(TokioTimer::new())
            .header_read_timeout(Duration::from_secs(30))
            .max_buf_size($config.enforcement.max_header_bytes)
            .keep_alive(true)
    };
}

pub(crate) use http1_settings;

/// The HTTP/2 settings, likewise for both builder types.
macro_rules! http2_settings {
    ($builder:expr, $config:expr) => {
        $builder
            .timer(TokioTimer::new())
            .max_concurrent_streams($config.max_concurrent_streams)
            .max_header_list_size(
                u32::try_from($config.enforcement.max_header_bytes).unwrap_or(u32::MAX),
            )
            .keep_alive_interval(Some(H2_PING_INTERVAL))
            .keep_alive_timeout(H2_PING_TIMEOUT)
    };
}

impl Protocols {
    fn new(config: &GatewayConfig) -> Self {
        let mut http1 = http1::Builder::new();
        http1_settings!(http1, config);
        let mut http2 = http2::Builder::new(TokioExecutor::new());
        http2_settings!(http2, config);
        let mut auto = auto::Builder::new(TokioExecutor::new());
        http1_settings!(auto.http1(), config);
        http2_settings!(auto.http2(), config);
        Self { http1, http2, auto }
    }

    /// An HTTP/1.1 connection (upgrades allowed) whose header read timeout runs on a
    /// timer the connection keeps between requests (see [`SharedDeadline`]).
    fn http1_connection<I, S>(&self, io: I, svc: S) -> http1::UpgradeableConnection<I, S>
    where
        I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
        S: hyper::service::HttpService<Incoming>,
        S::ResBody: 'static,
        <S::ResBody as hyper::body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let mut builder = self.http1.clone();
        builder.timer(SharedDeadline::default());
        builder.serve_connection(io, svc).with_upgrades()
    }
}

/// HTTP/2 keep-alive: a ping after this long without a frame from the client...
pub(crate) const H2_PING_INTERVAL: Duration = Duration::from_secs(30);
/// ...and the connection closed when its answer takes longer than this.
pub(crate) const H2_PING_TIMEOUT: Duration = Duration::from_secs(20);

/// Whether a connection has delivered a request head yet. HTTP/1.1's header read timeout
/// bounds a connection that sends nothing; an HTTP/2 connection (and the first bytes of an
/// h2c listener's, which choose the protocol) has no such bound of its own, so one that
/// has sent no request within the handshake timeout is closed rather than holding its
/// connection slot for good.
#[derive(Clone, Default)]
pub(crate) struct FirstRequest(Arc<Notify>);

impl FirstRequest {
    /// Called for every request head.
    pub(crate) fn seen(&self) {
        // Stores a permit when nobody waits yet: the first request is never missed.
        self.0.notify_one();
    }

    /// Runs `served`, dropping it (which closes the connection) when no request head has
    /// arrived within `timeout`.
    pub(crate) async fn bound(
        self,
        served: impl Future<Output = ()>,
        timeout: Duration,
        peer: SocketAddr,
    ) {
        let deadline = async {
            if tokio::time::timeout(timeout, self.0.notified())
                .await
                .is_ok()
            {
                std::future::pending::<()>().await;
            }
        };
        tokio::select! {
            () = served => {}
            () = deadline => {
                tracing::debug!(target: "dpop::gateway", %peer, "connection closed: no request in time");
            }
        }
    }
}

/// Serves `conn` until it ends, starting its graceful shutdown when `stop` turns true or
/// `idle` resolves (the connection has had nothing in flight for too long).
pub(crate) async fn drive<C, T, E>(
    conn: C,
    mut stop: watch::Receiver<bool>,
    shut: fn(Pin<&mut C>),
    idle: impl Future<Output = ()>,
) where
    C: Future<Output = Result<T, E>>,
    E: std::fmt::Display,
{
    tokio::pin!(conn);
    // The connection's task is woken for every read and write, and each wake polls every
    // branch; the watch's own future takes its waiters' lock on each poll. It is polled
    // again only once `stop` has changed (or lost its sender), which is one atomic load
    // to tell, or when this poll's waker would not wake the one the watch holds (a Tokio
    // task's never changes, but a caller may poll `drive` under another). Every poll of
    // the watch's future must really look at it: Tokio's co-operative budget would
    // otherwise let it return `Pending` without looking or registering once the
    // connection has spent the task's budget, and the one change that starts the drain
    // would be missed for good; hence `unconstrained`.
    let mut probe = stop.clone();
    let stopping = tokio::task::coop::unconstrained(stopped(&mut stop));
    tokio::pin!(stopping);
    let mut registered: Option<std::task::Waker> = None;
    let stopping = std::future::poll_fn(|cx| {
        if registered.as_ref().is_some_and(|w| w.will_wake(cx.waker()))
            && matches!(probe.has_changed(), Ok(false))
        {
            return std::task::Poll::Pending;
        }
        registered = Some(cx.waker().clone());
        probe.mark_unchanged();
        stopping.as_mut().poll(cx)
    });
    let result = tokio::select! {
        r = conn.as_mut() => r,
        () = stopping => {
            shut(conn.as_mut());
            conn.await
        }
        () = idle => {
            // GOAWAY: nothing is in flight, and a request racing it is still served.
            shut(conn.as_mut());
            conn.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(target: "dpop::gateway", error = %e, "connection ended with an error");
    }
}

/// The per-connection service: each request takes the configuration in force on its
/// thread when it starts (`current`) and keeps it to the end, whatever is reloaded
/// meanwhile; the peer and the verified client certificate go into every request's
/// extensions, the RFC 9728 document is answered before the layer, and everything else
/// goes through the DPoP layer under the request time limit.
fn request_service(
    current: Arc<ArcSwap<ThreadService>>,
    shared: &Shared,
    peer: SocketAddr,
    client_cert: Option<ClientCertificate>,
    slot: ConnectionSlot,
    activity: Activity,
) -> impl hyper::service::Service<
    Request<Incoming>,
    Response = http::Response<crate::proxy::Body>,
    Error = Infallible,
    Future = impl Future<Output = Result<http::Response<crate::proxy::Body>, Infallible>>
             + Send
             + 'static,
> + Clone
+ Send
+ 'static {
    let Activity { first, idle } = activity;
    let requests = shared.requests.clone();
    // The request time limit's timer, kept for the connection's next request.
    let timer = SharedDeadline::default();
    service_fn(move |mut req: Request<Incoming>| {
        first.seen();
        let started = requests.start(req.method());
        req.extensions_mut().insert(PeerAddr(peer));
        if let Some(cert) = &client_cert {
            req.extensions_mut().insert(cert.clone());
        }
        // Only a request that may become a tunnel carries the slot (an extension costs an
        // allocation).
        if req.headers().contains_key(http::header::UPGRADE) {
            req.extensions_mut().insert(slot.clone());
        }
        // One atomic load and count: this request's configuration, to its end.
        let now = current.load_full();
        // RFC 9728: the metadata document is answered here, never behind DPoP.
        let metadata = now
            .layer()
            .metadata_response(&req)
            .map(|r| r.map(|b| Full::new(b).map_err(|never| match never {}).boxed()));
        let service = now.service().clone();
        let limit = deadline::after(now.request_timeout());
        let timer = timer.clone();
        // In flight from here until the response body is finished or dropped (a handler
        // dropped before it answers drops the guard too).
        let busy = idle.as_ref().map(Idle::busy);
        let requests = requests.clone();
        let span = dpop_server::telemetry::request_span(&req, Some(peer.ip()), None);
        let request = async move {
            let mut response = if let Some(response) = metadata {
                response
            } else {
                match timer.limit(limit, service.oneshot(req)).await {
                    Some(Ok(r)) => r,
                    Some(Err(never)) => match never {},
                    None => empty(StatusCode::GATEWAY_TIMEOUT),
                }
            };
            dpop_server::telemetry::record_status(&tracing::Span::current(), response.status());
            requests.finish(
                started,
                peer,
                &mut response,
                now.routes(),
                now.log_requests(),
            );
            Ok::<_, Infallible>(match busy {
                Some(busy) => response.map(|body| InFlight { body, _busy: busy }.boxed()),
                None => response,
            })
        };
        tracing::Instrument::instrument(request, span)
    })
}

/// What the per-connection service tells the connection's driver about requests.
struct Activity {
    /// Told of every request head.
    first: FirstRequest,
    /// Counts requests in flight, on a connection that may speak HTTP/2.
    idle: Option<Idle>,
}

/// Requests in flight on one HTTP/2 connection (handled, or with a response body still
/// streaming) and when the count last fell to zero. HTTP/2 has no idle timeout of its
/// own: a client that answers keep-alive pings would otherwise keep its connection, and
/// its `max_connections` slot, for good.
#[derive(Clone)]
struct Idle(Arc<IdleState>);

struct IdleState {
    in_flight: AtomicUsize,
    /// When the connection last had nothing in flight, in milliseconds after `opened`.
    idle_since_ms: AtomicU64,
    opened: Instant,
}

impl Idle {
    fn new() -> Self {
        Self(Arc::new(IdleState {
            in_flight: AtomicUsize::new(0),
            idle_since_ms: AtomicU64::new(0),
            opened: Instant::now(),
        }))
    }

    /// Counts a request in flight until the guard is dropped.
    fn busy(&self) -> Busy {
        self.0.in_flight.fetch_add(1, Ordering::SeqCst);
        Busy(self.clone())
    }

    fn idle_since(&self) -> Instant {
        self.0.opened + Duration::from_millis(self.0.idle_since_ms.load(Ordering::SeqCst))
    }

    /// Resolves once the connection has had nothing in flight for `timeout`. Checked
    /// once per `timeout` while requests are in flight: no wake-up per request.
    async fn elapsed(self, timeout: Duration, peer: SocketAddr) {
        loop {
            let since = self.idle_since();
            let busy = self.0.in_flight.load(Ordering::SeqCst) > 0;
            let deadline = if busy {
                Instant::now() + timeout
            } else {
                since + timeout
            };
            tokio::time::sleep_until(deadline).await;
            if self.0.in_flight.load(Ordering::SeqCst) == 0 && self.idle_since() == since {
                tracing::debug!(target: "dpop::gateway", %peer, "idle HTTP/2 connection closed (idle_timeout_secs)");
                return;
            }
        }
    }
}

/// One request in flight on an [`Idle`]-tracked connection.
struct Busy(Idle);

impl Drop for Busy {
    fn drop(&mut self) {
        let state = &self.0.0;
        // The time first, then the count: a check seeing zero sees this time.
        let ms = u64::try_from(state.opened.elapsed().as_millis()).unwrap_or(u64::MAX);
        state.idle_since_ms.fetch_max(ms, Ordering::SeqCst);
        state.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A response body that keeps its request counted in flight until it is finished or
/// dropped.
struct InFlight {
    body: crate::proxy::Body,
    _busy: Busy,
}

impl hyper::body::Body for InFlight {
    type Data = bytes::Bytes;
    type Error = crate::stream::BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

/// The admin listener's readiness: the issuer's keys are loaded and the replay store
/// answers (within a second, so a probe never hangs on a stalled store). The body also
/// names the configuration `generation` in force (1 as started).
pub(crate) async fn readiness(layer: DpopLayer<GatewayStore>, generation: u64) -> Readiness {
    let keys = layer.tokens().is_ready();
    let store = tokio::time::timeout(Duration::from_secs(1), layer.store().ready())
        .await
        .unwrap_or(false);
    Readiness::checks_with(
        &[
            ("token_keys_loaded", keys),
            ("replay_store_reachable", store),
        ],
        &[("config_generation", generation)],
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::task::{Context, Poll};

    /// A connection that ends once shut and counts how often it was polled; a ticking
    /// one is woken every millisecond (as a busy one is, for each read and write), a
    /// quiet one never wakes its task by itself.
    struct Conn {
        tick: Option<tokio::time::Interval>,
        /// Spends the task's whole co-operative budget at each poll (as a busy HTTP/1
        /// connection running its requests, or an HTTP/2 one reading many frames, can).
        spend: bool,
        shut: bool,
        polls: Arc<AtomicUsize>,
    }

    impl Future for Conn {
        type Output = Result<(), std::io::Error>;
        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
            self.polls.fetch_add(1, Ordering::Relaxed);
            if self.shut {
                return Poll::Ready(Ok(()));
            }
            if let Some(tick) = self.tick.as_mut() {
                while tick.poll_tick(cx).is_ready() {}
            }
            if self.spend {
                // Spent: the last call finds none left and schedules the task again.
                while let Poll::Ready(budget) = tokio::task::coop::poll_proceed(cx) {
                    budget.made_progress();
                }
            }
            Poll::Pending
        }
    }

    fn shut(conn: Pin<&mut Conn>) {
        conn.get_mut().shut = true;
    }

    /// `drive` on a connection, spawned once the drain signal is `initially`; returns
    /// after the connection has been polled `polls` times.
    async fn driven(
        initially: bool,
        ticking: bool,
        polls: usize,
    ) -> (watch::Sender<bool>, tokio::task::JoinHandle<()>) {
        driven_spending(initially, ticking, false, polls).await
    }

    async fn driven_spending(
        initially: bool,
        ticking: bool,
        spend: bool,
        polls: usize,
    ) -> (watch::Sender<bool>, tokio::task::JoinHandle<()>) {
        let (tx, rx) = watch::channel(initially);
        let count = Arc::new(AtomicUsize::new(0));
        let conn = Conn {
            tick: ticking.then(|| tokio::time::interval(Duration::from_millis(1))),
            spend,
            shut: false,
            polls: Arc::clone(&count),
        };
        let task = tokio::spawn(drive(conn, rx, shut, std::future::pending()));
        let deadline = Instant::now() + Duration::from_secs(5);
        while count.load(Ordering::Relaxed) < polls {
            assert!(Instant::now() < deadline, "the connection is not polled");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        (tx, task)
    }

    async fn ends(task: tokio::task::JoinHandle<()>) {
        tokio::time::timeout(Duration::from_secs(1), task)
            .await
            .expect("the connection is shut once the drain begins")
            .unwrap();
    }

    #[tokio::test]
    async fn a_busy_connection_is_shut_when_the_drain_begins() {
        let (tx, task) = driven(false, true, 20).await;
        assert!(!task.is_finished(), "shut before the drain began");
        tx.send(true).unwrap();
        ends(task).await;
    }

    #[tokio::test]
    async fn a_quiet_connection_is_woken_and_shut_when_the_drain_begins() {
        // Polled once: only the drain signal can wake its task again.
        let (tx, task) = driven(false, false, 1).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!task.is_finished(), "shut before the drain began");
        tx.send(true).unwrap();
        ends(task).await;
    }

    #[tokio::test]
    async fn a_connection_that_spends_the_tasks_budget_is_shut_when_the_drain_begins() {
        // `select!` polls its branches in a random order: many drains, so that the watch
        // is polled after the connection has spent the budget in some of them, and also
        // when the connection spends it at the first poll.
        for round in 0..24 {
            let (tx, task) = driven_spending(false, false, true, 1 + round % 4).await;
            assert!(!task.is_finished(), "shut before the drain began");
            tx.send(true).unwrap();
            ends(task).await;
        }
    }

    /// Counts its wake-ups.
    struct Woken(AtomicUsize);

    impl std::task::Wake for Woken {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[test]
    fn the_drain_wakes_the_waker_of_the_latest_poll() {
        let (tx, rx) = watch::channel(false);
        let conn = Conn {
            tick: None,
            spend: false,
            shut: false,
            polls: Arc::new(AtomicUsize::new(0)),
        };
        let driven = drive(conn, rx, shut, std::future::pending());
        let mut driven = std::pin::pin!(driven);
        let (first, second) = (
            Arc::new(Woken(AtomicUsize::new(0))),
            Arc::new(Woken(AtomicUsize::new(0))),
        );
        let (first_waker, second_waker) = (
            std::task::Waker::from(Arc::clone(&first)),
            std::task::Waker::from(Arc::clone(&second)),
        );
        assert!(
            driven
                .as_mut()
                .poll(&mut Context::from_waker(&first_waker))
                .is_pending()
        );
        // Polled again under another waker, with nothing changed.
        let mut cx = Context::from_waker(&second_waker);
        assert!(driven.as_mut().poll(&mut cx).is_pending());
        tx.send(true).unwrap();
        assert_eq!(
            second.0.load(Ordering::Relaxed),
            1,
            "the drain woke the earlier waker only"
        );
        assert!(driven.as_mut().poll(&mut cx).is_ready(), "shut once woken");
    }

    #[tokio::test]
    async fn a_connection_is_shut_when_the_drain_signal_goes() {
        for ticking in [true, false] {
            let (tx, task) = driven(false, ticking, 1).await;
            drop(tx);
            ends(task).await;
        }
    }

    #[tokio::test]
    async fn a_change_that_is_not_the_drain_leaves_the_connection_served() {
        for ticking in [true, false] {
            let (tx, task) = driven(false, ticking, 1).await;
            tx.send(false).unwrap();
            tokio::time::sleep(Duration::from_millis(30)).await;
            assert!(
                !task.is_finished(),
                "shut on a change that is not the drain"
            );
            tx.send(true).unwrap();
            ends(task).await;
        }
    }

    #[tokio::test]
    async fn a_connection_accepted_while_draining_is_shut_at_once() {
        let (tx, task) = driven(true, false, 1).await;
        ends(task).await;
        drop(tx);
    }
}
