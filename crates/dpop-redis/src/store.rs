//! The store: one `SET key 1 NX PX ttl` per proof, over a reconnecting multiplexed connection
//! to one server or a primary found through Sentinel, or over a Redis Cluster connection.

use core::fmt;
use core::time::Duration;
use std::sync::Arc;

use dpop_core::{AsyncReplayStore, Insert, ReplayKey, ReplayStoreError, UnixTime};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::io::tcp::TcpSettings;
use redis::sentinel::{SentinelClientBuilder, SentinelServerType};
use redis::{AsyncConnectionConfig, Cmd, TlsMode, Value};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::batch::{
    Pending, Primary, QUEUE_DEPTH, Wait, batcher_stopped, insert_reply, replicated_or_refused,
    run_batches, set_if_absent,
};
use crate::config::{RedisStoreConfig, Topology, redact_url};
use crate::error::{RedisStoreError, describe, store_error};
use crate::local::LocalBatchers;
use crate::sentinel::{self, SentinelPrimary};

/// The shortest record: an expiry at or before `now` still records the key for a second, so
/// the check is never skipped and a burst of replays inside that second is still caught.
const MIN_TTL_MS: u64 = 1_000;

/// The longest record. Redis refuses a `PX` whose expiry overflows a signed 64-bit count of
/// milliseconds; 2^62 ms (146 million years) is far below that and far above any window.
const MAX_TTL_MS: u64 = 1 << 62;

/// Reconnection attempts after a failed one, before the pending commands fail (the next
/// command starts a new round). Few, because commands wait on the attempt and a gateway
/// would rather refuse fast than hold requests.
const RECONNECT_RETRIES: usize = 2;
/// Retries of a cluster command (after a `MOVED`, a lost node, ...), all within the command
/// time-out.
const CLUSTER_RETRIES: u32 = 2;
const RECONNECT_MIN_DELAY_MS: u64 = 100;
const RECONNECT_MAX_DELAY_MS: u64 = 1_000;
/// The first pause between reconnection attempts; it doubles with each retry.
const RECONNECT_MIN_DELAY: Duration = Duration::from_millis(100);
/// The longest pause between reconnection attempts.
const RECONNECT_MAX_DELAY: Duration = Duration::from_secs(1);

/// A [`AsyncReplayStore`] in Redis, shared by every instance pointed at the same server and
/// key prefix. See the [crate documentation](crate) for the key format and guarantees.
///
/// Cloning is cheap (one reference count) and clones share the connection. It must be used
/// inside a Tokio runtime with the time driver enabled.
#[derive(Clone)]
pub struct RedisReplayStore {
    inner: Arc<Inner>,
}

struct Inner {
    backend: Backend,
    key_prefix: String,
    command_timeout: Duration,
    /// For `Debug`: the URL with its password hidden.
    url: String,
}

impl RedisReplayStore {
    /// Validates `config` and connects, within
    /// [`connect_timeout`](RedisStoreConfig::connect_timeout).
    ///
    /// The connection is made now, not on first use, so a gateway whose Redis is absent finds
    /// out at start-up. Later losses of the connection are repaired in the background: while
    /// Redis is away, inserts fail (the proof is refused) and succeed again once it is back.
    ///
    /// # Errors
    /// [`RedisStoreError::InvalidConfig`] for settings refused before connecting;
    /// [`RedisStoreError::Connect`] when Redis refuses or cannot be reached (including bad
    /// credentials and TLS failures); [`RedisStoreError::ConnectTimeout`] when it does not
    /// answer in time.
    pub async fn connect(config: RedisStoreConfig) -> Result<Self, RedisStoreError> {
        let topology = config.validate()?;
        let url = redact_url(&config.url);
        let tcp = tcp_settings(config.connect_timeout);
        let connect_error = |err: &redis::RedisError| RedisStoreError::Connect {
            url: url.clone(),
            reason: describe(err),
        };
        let timed_out = || RedisStoreError::ConnectTimeout {
            url: url.clone(),
            timeout: config.connect_timeout,
        };
        let backend = match topology {
            Topology::Single { info, tls } => {
                if tls {
                    ensure_crypto_provider();
                }
                let client = redis::Client::open(info.set_tcp_settings(tcp))
                    .map_err(|err| RedisStoreError::InvalidConfig(describe(&err)))?;
                // No response time-out of the client's own: every command through these
                // connections is bounded by ours (the batchers' deadlines, `run`'s
                // time-out), and a second timer per pipeline would only cost a timer.
                let manager_config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(config.connect_timeout))
                    .set_response_timeout(None)
                    .set_number_of_retries(RECONNECT_RETRIES)
                    .set_min_delay(RECONNECT_MIN_DELAY)
                    .set_max_delay(RECONNECT_MAX_DELAY);
                let connecting =
                    ConnectionManager::new_with_config(client.clone(), manager_config.clone());
                let connection = tokio::time::timeout(config.connect_timeout, connecting)
                    .await
                    .map_err(|_| timed_out())?
                    .map_err(|err| connect_error(&err))?;
                let local = LocalBatchers::new(
                    client,
                    manager_config,
                    config.connect_timeout,
                    config.command_timeout,
                    Wait::from_config(&config),
                );
                Self::batched(Primary::Server(connection), &config, Some(Box::new(local)))
            }
            Topology::Cluster { nodes, tls } => {
                if tls {
                    ensure_crypto_provider();
                }
                let client = ClusterClientBuilder::new(nodes)
                    .connection_timeout(config.connect_timeout)
                    .response_timeout(config.command_timeout)
                    .retries(CLUSTER_RETRIES)
                    .min_retry_wait(RECONNECT_MIN_DELAY_MS)
                    .max_retry_wait(RECONNECT_MAX_DELAY_MS)
                    .tcp_settings(tcp)
                    .build()
                    .map_err(|err| RedisStoreError::InvalidConfig(describe(&err)))?;
                let connection =
                    tokio::time::timeout(config.connect_timeout, client.get_async_connection())
                        .await
                        .map_err(|_| timed_out())?
                        .map_err(|err| connect_error(&err))?;
                Backend::Cluster {
                    connection,
                    wait: Wait::from_config(&config),
                }
            }
            Topology::Sentinel {
                sentinels,
                service,
                primary,
                sentinel_login,
                tls,
            } => {
                if tls {
                    ensure_crypto_provider();
                }
                let mut builder = SentinelClientBuilder::new(
                    sentinels.clone(),
                    service,
                    SentinelServerType::Master,
                )
                .map_err(|err| RedisStoreError::InvalidConfig(describe(&err)))?
                .set_client_to_redis_db(primary.db())
                .set_client_to_redis_tcp_settings(tcp.clone())
                .set_client_to_sentinel_tcp_settings(tcp.clone());
                if let Some(username) = primary.username() {
                    builder = builder.set_client_to_redis_username(username);
                }
                if let Some(password) = primary.password() {
                    builder = builder.set_client_to_redis_password(password);
                }
                if let Some(username) = sentinel_login.username() {
                    builder = builder.set_client_to_sentinel_username(username);
                }
                if let Some(password) = sentinel_login.password() {
                    builder = builder.set_client_to_sentinel_password(password);
                }
                if tls {
                    builder = builder
                        .set_client_to_redis_tls_mode(TlsMode::Secure)
                        .set_client_to_sentinel_tls_mode(TlsMode::Secure);
                }
                let client = builder
                    .build()
                    .map_err(|err| RedisStoreError::InvalidConfig(describe(&err)))?;
                // A little under the command time-out, so that a primary that stopped
                // answering is noticed (and dropped) by the connection before the caller's
                // own time-out gives up on it.
                let response_timeout = config
                    .command_timeout
                    .saturating_sub(config.command_timeout / 8)
                    .max(Duration::from_millis(1));
                let connection_config = AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(config.connect_timeout))
                    .set_response_timeout(Some(response_timeout));
                let primary =
                    SentinelPrimary::new(client, connection_config, config.connect_timeout);
                // Found now, so that a wrong service name, absent sentinels or a login they
                // refuse stop start-up. On failure each sentinel is asked on its own, so that
                // the error says which ones refused or did not answer.
                let found = tokio::time::timeout(config.connect_timeout, primary.connection())
                    .await
                    .map_err(|_| timed_out());
                if let Err(err) = found.and_then(|f| f.map_err(|err| connect_error(&err))) {
                    let sentinels = sentinel::diagnose(
                        &sentinels,
                        &sentinel_login,
                        tcp,
                        config.connect_timeout,
                    )
                    .await;
                    return Err(match err {
                        RedisStoreError::Connect { url, reason } => RedisStoreError::Connect {
                            url,
                            reason: format!("{reason} ({sentinels})"),
                        },
                        RedisStoreError::ConnectTimeout { url, timeout } => {
                            RedisStoreError::Connect {
                                url,
                                reason: format!(
                                    "no primary found within {timeout:?} ({sentinels})"
                                ),
                            }
                        }
                        other => other,
                    });
                }
                Self::batched(Primary::Sentinel(primary), &config, None)
            }
        };
        Ok(Self {
            inner: Arc::new(Inner {
                backend,
                key_prefix: config.key_prefix,
                command_timeout: config.command_timeout,
                url,
            }),
        })
    }

    /// A backend whose inserts are pipelined by a batcher task (and by one per
    /// single-threaded runtime, with `local`).
    fn batched(
        primary: Primary,
        config: &RedisStoreConfig,
        local: Option<Box<LocalBatchers>>,
    ) -> Backend {
        let (batch, queue) = mpsc::channel(QUEUE_DEPTH);
        let wait = Wait::from_config(config);
        tokio::spawn(run_batches(
            primary.clone(),
            queue,
            config.command_timeout,
            wait,
            Vec::new(),
        ));
        Backend::Primary {
            primary,
            batch,
            local,
        }
    }

    /// How many threads insert through a batcher and connection of their own (see the
    /// [crate documentation](crate)): single-threaded runtimes that have inserted through
    /// this store (and its clones), on one Redis server. For tests and diagnostics.
    #[must_use]
    pub fn local_batchers(&self) -> usize {
        match &self.inner.backend {
            Backend::Primary {
                local: Some(local), ..
            } => local.running(),
            _ => 0,
        }
    }

    /// Sends `PING`, within the command time-out: for readiness probes.
    ///
    /// On a Redis Cluster, every primary the client knows must answer, and a node must
    /// report `cluster_state:ok` (so a crashed primary makes the store not ready once the
    /// cluster has declared it failed, after its `cluster-node-timeout`; inserts for the
    /// crashed primary's slots fail from the start).
    ///
    /// # Errors
    /// [`ReplayStoreError::Timeout`] or [`ReplayStoreError::Unavailable`], as an insert
    /// would fail at this moment.
    pub async fn ping(&self) -> Result<(), ReplayStoreError> {
        match self.run(redis::cmd("PING")).await? {
            Value::SimpleString(reply) if reply == "PONG" => {}
            _ => {
                return Err(ReplayStoreError::Unavailable(
                    "unexpected reply to PING".to_owned(),
                ));
            }
        }
        if let Backend::Cluster { .. } = &self.inner.backend {
            let mut info = redis::cmd("CLUSTER");
            info.arg("INFO");
            let ok = match self.run(info).await? {
                Value::BulkString(text) => text
                    .split(|b| *b == b'\n')
                    .any(|line| line.trim_ascii() == b"cluster_state:ok"),
                Value::VerbatimString { text, .. } => {
                    text.lines().any(|line| line.trim() == "cluster_state:ok")
                }
                _ => false,
            };
            if !ok {
                return Err(ReplayStoreError::Unavailable(
                    "the Redis Cluster is not in state ok".to_owned(),
                ));
            }
        }
        Ok(())
    }

    /// The Redis key for a replay key: the prefix and 64 lower-case hexadecimal digits.
    fn redis_key(&self, key: &ReplayKey) -> String {
        let mut out = String::with_capacity(self.inner.key_prefix.len() + 64);
        out.push_str(&self.inner.key_prefix);
        key.push_hex(&mut out);
        out
    }

    /// An insert for a batcher, due by the command time-out from now, and where its answer
    /// will come.
    fn pending(
        &self,
        key: &ReplayKey,
        expires_at: UnixTime,
        now: UnixTime,
    ) -> (Pending, oneshot::Receiver<Result<Insert, ReplayStoreError>>) {
        let (reply, answer) = oneshot::channel();
        let pending = Pending {
            key: self.redis_key(key),
            ttl_ms: ttl_ms(expires_at, now),
            // In range: `validate` bounds the time-out.
            deadline: Instant::now() + self.inner.command_timeout,
            reply,
        };
        (pending, answer)
    }

    /// An insert through this thread's own batcher.
    ///
    /// That batcher runs on this thread's runtime, so it runs whenever this insert is
    /// polled, and it answers by the deadline: no timer of our own, which would cost a
    /// wake-up of the runtime's driver (see `batch::Expiry`). A full queue refuses at once
    /// rather than wait for room.
    async fn insert_on_own(
        &self,
        own: &mpsc::Sender<Pending>,
        key: &ReplayKey,
        expires_at: UnixTime,
        now: UnixTime,
    ) -> Result<Insert, ReplayStoreError> {
        let (pending, answer) = self.pending(key, expires_at, now);
        match own.try_send(pending) {
            Ok(()) => answer.await.map_err(|_| batcher_stopped())?,
            Err(mpsc::error::TrySendError::Full(_)) => Err(ReplayStoreError::Unavailable(
                "too many inserts are waiting for Redis".to_owned(),
            )),
            Err(mpsc::error::TrySendError::Closed(_)) => Err(batcher_stopped()),
        }
    }

    /// Sends one command, bounded by the command time-out.
    async fn run(&self, cmd: Cmd) -> Result<Value, ReplayStoreError> {
        let reply = match &self.inner.backend {
            Backend::Primary { primary, .. } => {
                tokio::time::timeout(self.inner.command_timeout, primary.query(&cmd)).await
            }
            Backend::Cluster { connection, .. } => {
                // A clone shares the connections; `query_async` only needs it mutably.
                let mut connection = connection.clone();
                tokio::time::timeout(
                    self.inner.command_timeout,
                    cmd.query_async::<Value>(&mut connection),
                )
                .await
            }
        };
        match reply {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(err)) => Err(store_error(&err)),
            Err(_elapsed) => Err(ReplayStoreError::Timeout),
        }
    }
}

/// How commands reach Redis.
enum Backend {
    /// One primary. Inserts go to the batcher task, which pipelines them (see
    /// [`run_batches`]).
    Primary {
        primary: Primary,
        batch: mpsc::Sender<Pending>,
        /// On one server: a batcher per single-threaded runtime (see [`crate::local`]).
        local: Option<Box<LocalBatchers>>,
    },
    /// A Redis Cluster: each `SET` is sent on its own, to the primary of its key's slot (a
    /// pipeline would have to stay within one slot), followed by `WAIT` in the same pipeline
    /// when `wait` is set. The connection is multiplexed per node, so concurrent inserts
    /// still share connections.
    Cluster {
        connection: ClusterConnection,
        wait: Option<Wait>,
    },
}

impl AsyncReplayStore for RedisReplayStore {
    async fn insert_if_absent(
        &self,
        key: &ReplayKey,
        expires_at: UnixTime,
        now: UnixTime,
    ) -> Result<Insert, ReplayStoreError> {
        let batch = match &self.inner.backend {
            Backend::Primary { batch, local, .. } => {
                if let Some(own) = local.as_ref().and_then(|batchers| batchers.sender()) {
                    return self.insert_on_own(&own, key, expires_at, now).await;
                }
                batch
            }
            Backend::Cluster { wait: None, .. } => {
                let cmd = set_if_absent(&self.redis_key(key), ttl_ms(expires_at, now));
                return insert_reply(&self.run(cmd).await?);
            }
            Backend::Cluster {
                connection,
                wait: Some(wait),
            } => {
                // One pipeline: the cluster client sends it to the node of the key's slot
                // (WAIT names no key), so WAIT counts that primary's replicas.
                let mut pipe = redis::pipe();
                pipe.add_command(set_if_absent(&self.redis_key(key), ttl_ms(expires_at, now)));
                wait.push(&mut pipe);
                let mut connection = connection.clone();
                let replies = tokio::time::timeout(
                    self.inner.command_timeout,
                    pipe.query_async::<Vec<Value>>(&mut connection),
                )
                .await
                .map_err(|_elapsed| ReplayStoreError::Timeout)?
                .map_err(|err| store_error(&err))?;
                return match replies.as_slice() {
                    [set, acked] => {
                        replicated_or_refused(insert_reply(set), wait.satisfied(Some(acked)))
                    }
                    _ => Err(ReplayStoreError::Unavailable(
                        "pipeline reply count mismatch".to_owned(),
                    )),
                };
            }
        };
        let (pending, answer) = self.pending(key, expires_at, now);
        // The shared batcher runs on the runtime the store was connected on, which may be
        // busy or no longer driven: the whole wait (queue and round trip) is bounded here
        // too, so a slow Redis or a stalled batcher fails closed.
        let round_trip = async {
            batch.send(pending).await.map_err(|_| batcher_stopped())?;
            answer.await.map_err(|_| batcher_stopped())?
        };
        tokio::time::timeout(self.inner.command_timeout, round_trip)
            .await
            .unwrap_or(Err(ReplayStoreError::Timeout))
    }
}

impl fmt::Debug for RedisReplayStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Not the connection manager's own `Debug`: it prints the connection info, password
        // included.
        f.debug_struct("RedisReplayStore")
            .field("url", &self.inner.url)
            .field("key_prefix", &self.inner.key_prefix)
            .field("command_timeout", &self.inner.command_timeout)
            .finish_non_exhaustive()
    }
}

/// How long Redis keeps the record: until `expires_at`, at least [`MIN_TTL_MS`].
fn ttl_ms(expires_at: UnixTime, now: UnixTime) -> u64 {
    expires_at
        .as_secs()
        .saturating_sub(now.as_secs())
        .saturating_mul(1_000)
        .clamp(MIN_TTL_MS, MAX_TTL_MS)
}

fn tcp_settings(connect_timeout: Duration) -> TcpSettings {
    // Commands are tiny and latency-bound: without TCP_NODELAY, Nagle's algorithm can hold one
    // back waiting for the previous command's acknowledgement.
    let settings = TcpSettings::default().set_nodelay(true);
    #[cfg(any(target_os = "android", target_os = "fuchsia", target_os = "linux"))]
    let settings = settings.set_user_timeout(connect_timeout.max(Duration::from_secs(1)));
    #[cfg(not(any(target_os = "android", target_os = "fuchsia", target_os = "linux")))]
    let _ = connect_timeout;
    settings
}

/// Makes sure rustls has a crypto provider before a `rediss://` connection is made.
///
/// The redis crate builds its TLS configuration with rustls's process-wide default provider,
/// and rustls cannot pick one by itself when the program enables more than one (it would
/// panic). If the program installed none, this installs aws-lc-rs, the provider the rest of
/// this workspace uses; a provider the program installed itself is left as it is.
fn ensure_crypto_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // An error only means another thread installed a provider first, which is as good.
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(secs: u64) -> UnixTime {
        UnixTime::from_secs(secs)
    }

    #[test]
    fn ttl() {
        assert_eq!(ttl_ms(t(160), t(100)), 60_000);
        assert_eq!(ttl_ms(t(101), t(100)), 1_000);
        assert_eq!(ttl_ms(t(100), t(100)), 1_000);
        assert_eq!(ttl_ms(t(50), t(100)), 1_000);
        assert_eq!(ttl_ms(t(u64::MAX), t(0)), MAX_TTL_MS);
        // Redis accepts PX up to i64::MAX minus the current time in milliseconds.
        assert!(MAX_TTL_MS < (i64::MAX as u64) - 10_000_000_000_000);
    }
}
