//! The store: one `SET key 1 NX PX ttl` per proof, over a reconnecting multiplexed connection.

use core::fmt;
use core::future::Future;
use core::time::Duration;
use std::sync::Arc;

use dpop_core::{AsyncReplayStore, Insert, ReplayKey, ReplayStoreError, UnixTime};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::io::tcp::TcpSettings;
use redis::{Cmd, IntoConnectionInfo, Value};

use crate::config::{RedisStoreConfig, redact_url};
use crate::error::{RedisStoreError, describe, store_error};

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
    /// Multiplexed (one connection carries concurrent commands) and reconnecting.
    connection: ConnectionManager,
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
        let tls = config.validate()?;
        let url = redact_url(&config.url);
        let info = config
            .url
            .as_str()
            .into_connection_info()
            .map_err(|err| RedisStoreError::InvalidConfig(describe(&err)))?
            .set_tcp_settings(tcp_settings(config.connect_timeout));
        if tls {
            ensure_crypto_provider();
        }
        let client = redis::Client::open(info)
            .map_err(|err| RedisStoreError::InvalidConfig(describe(&err)))?;
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(config.connect_timeout))
            .set_response_timeout(Some(config.command_timeout))
            .set_number_of_retries(RECONNECT_RETRIES)
            .set_min_delay(RECONNECT_MIN_DELAY)
            .set_max_delay(RECONNECT_MAX_DELAY);
        let connecting = ConnectionManager::new_with_config(client, manager_config);
        let connection = match tokio::time::timeout(config.connect_timeout, connecting).await {
            Ok(Ok(connection)) => connection,
            Ok(Err(err)) => {
                return Err(RedisStoreError::Connect {
                    url,
                    reason: describe(&err),
                });
            }
            Err(_elapsed) => {
                return Err(RedisStoreError::ConnectTimeout {
                    url,
                    timeout: config.connect_timeout,
                });
            }
        };
        Ok(Self {
            inner: Arc::new(Inner {
                connection,
                key_prefix: config.key_prefix,
                command_timeout: config.command_timeout,
                url,
            }),
        })
    }

    /// Sends `PING`, within the command time-out: for readiness probes.
    ///
    /// # Errors
    /// [`ReplayStoreError::Timeout`] or [`ReplayStoreError::Unavailable`], as an insert
    /// would fail at this moment.
    pub async fn ping(&self) -> Result<(), ReplayStoreError> {
        match self.run(redis::cmd("PING")).await? {
            Value::SimpleString(reply) if reply == "PONG" => Ok(()),
            _ => Err(ReplayStoreError::Unavailable(
                "unexpected reply to PING".to_owned(),
            )),
        }
    }

    /// The Redis key for a replay key: the prefix and 64 lower-case hexadecimal digits.
    fn redis_key(&self, key: &ReplayKey) -> String {
        let mut out = String::with_capacity(self.inner.key_prefix.len() + 64);
        out.push_str(&self.inner.key_prefix);
        out.push_str(&key.to_hex());
        out
    }

    /// Sends one command, bounded by the command time-out.
    async fn run(&self, cmd: Cmd) -> Result<Value, ReplayStoreError> {
        // A clone shares the multiplexed connection; `query_async` only needs it mutably.
        let mut connection = self.inner.connection.clone();
        let reply = tokio::time::timeout(
            self.inner.command_timeout,
            cmd.query_async::<Value>(&mut connection),
        )
        .await;
        match reply {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(err)) => Err(store_error(&err)),
            Err(_elapsed) => Err(ReplayStoreError::Timeout),
        }
    }
}

impl AsyncReplayStore for RedisReplayStore {
    /// `SET <prefix><key hex> 1 NX PX <ttl>`, where ttl is `expires_at - now` in
    /// milliseconds and at least one second: `OK` means the proof is fresh, nil that the key
    /// is already recorded.
    fn insert_if_absent(
        &self,
        key: &ReplayKey,
        expires_at: UnixTime,
        now: UnixTime,
    ) -> impl Future<Output = Result<Insert, ReplayStoreError>> + Send {
        let mut cmd = redis::cmd("SET");
        cmd.arg(self.redis_key(key))
            .arg(1)
            .arg("NX")
            .arg("PX")
            .arg(ttl_ms(expires_at, now));
        async move {
            match self.run(cmd).await? {
                Value::Okay => Ok(Insert::Inserted),
                Value::SimpleString(reply) if reply == "OK" => Ok(Insert::Inserted),
                Value::Nil => Ok(Insert::AlreadyPresent),
                // Anything else is a server we do not understand: refuse, do not guess.
                _ => Err(ReplayStoreError::Unavailable(
                    "unexpected reply to SET NX".to_owned(),
                )),
            }
        }
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
