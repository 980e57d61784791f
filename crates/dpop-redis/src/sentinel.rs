//! The primary found through Sentinel, and found again after a failover.
//!
//! The redis crate finds the primary (it asks the sentinels, then checks with `ROLE` that the
//! server named is a primary) but does not follow a failover by itself. This keeps one
//! multiplexed connection to the current primary and drops it when a command shows the
//! primary is gone or demoted (a connection error, a time-out, or `READONLY`); the next
//! command asks the sentinels again. Until a primary is found, every command fails: the
//! store fails closed.

use core::time::Duration;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use redis::aio::MultiplexedConnection;
use redis::io::tcp::TcpSettings;
use redis::sentinel::SentinelClient;
use redis::{
    AsyncConnectionConfig, Cmd, ConnectionAddr, ErrorKind, IntoConnectionInfo, Pipeline,
    RedisConnectionInfo, RedisError, RedisResult, Value,
};

use crate::error::describe;

/// After a failed search for the primary, commands fail at once for this long instead of
/// asking the sentinels again, so a burst of requests during an outage does not become a
/// burst of sentinel queries.
const RETRY_AFTER_FAILURE: Duration = Duration::from_millis(100);

pub(crate) struct SentinelPrimary {
    /// Asks the sentinels; one search at a time.
    client: tokio::sync::Mutex<Search>,
    /// The connection to the primary last found, with its generation (so that an error on
    /// an older connection does not drop a newer one).
    current: Mutex<Option<(u64, MultiplexedConnection)>>,
    generation: AtomicU64,
    connection_config: AsyncConnectionConfig,
    connect_timeout: Duration,
}

struct Search {
    client: SentinelClient,
    last_failure: Option<Instant>,
}

impl SentinelPrimary {
    pub(crate) fn new(
        client: SentinelClient,
        connection_config: AsyncConnectionConfig,
        connect_timeout: Duration,
    ) -> Arc<Self> {
        Arc::new(Self {
            client: tokio::sync::Mutex::new(Search {
                client,
                last_failure: None,
            }),
            current: Mutex::new(None),
            generation: AtomicU64::new(0),
            connection_config,
            connect_timeout,
        })
    }

    fn current(&self) -> Option<(u64, MultiplexedConnection)> {
        self.current
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The connection to the primary, finding it first if needed.
    pub(crate) async fn connection(self: &Arc<Self>) -> RedisResult<(u64, MultiplexedConnection)> {
        if let Some(found) = self.current() {
            return Ok(found);
        }
        // In a task of its own: a caller that stops waiting (its time-out) does not abandon
        // a search halfway, and the next caller finds its result.
        let this = Arc::clone(self);
        tokio::spawn(async move { this.search().await })
            .await
            .unwrap_or_else(|_| Err(failure("the search for the primary stopped")))
    }

    async fn search(&self) -> RedisResult<(u64, MultiplexedConnection)> {
        let mut search = self.client.lock().await;
        if let Some(found) = self.current() {
            return Ok(found);
        }
        if search
            .last_failure
            .is_some_and(|at| at.elapsed() < RETRY_AFTER_FAILURE)
        {
            return Err(failure("no primary found through the sentinels"));
        }
        let config = &self.connection_config;
        let found = tokio::time::timeout(self.connect_timeout, async {
            search
                .client
                .async_get_client()
                .await?
                .get_multiplexed_async_connection_with_config(config)
                .await
        })
        .await
        .unwrap_or_else(|_| Err(failure("no primary found through the sentinels in time")));
        match found {
            Ok(connection) => {
                search.last_failure = None;
                let generation = self.generation.fetch_add(1, Ordering::Relaxed);
                *self.current.lock().unwrap_or_else(PoisonError::into_inner) =
                    Some((generation, connection.clone()));
                Ok((generation, connection))
            }
            Err(err) => {
                search.last_failure = Some(Instant::now());
                Err(err)
            }
        }
    }

    /// Forgets connection `generation` if `err` says the primary is gone or demoted.
    fn check(&self, generation: u64, err: &RedisError) {
        let gone = match err.kind() {
            ErrorKind::Server(_) | ErrorKind::Extension => err.code() == Some("READONLY"),
            _ => true,
        };
        if gone {
            let mut current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
            if current.as_ref().is_some_and(|(g, _)| *g == generation) {
                *current = None;
            }
        }
    }

    pub(crate) async fn query_pipeline(
        self: &Arc<Self>,
        pipe: &Pipeline,
    ) -> RedisResult<Vec<Value>> {
        let (generation, mut connection) = self.connection().await?;
        let reply = pipe.query_async::<Vec<Value>>(&mut connection).await;
        if let Err(err) = &reply {
            self.check(generation, err);
        }
        reply
    }

    pub(crate) async fn query(self: &Arc<Self>, cmd: &Cmd) -> RedisResult<Value> {
        let (generation, mut connection) = self.connection().await?;
        let reply = cmd.query_async::<Value>(&mut connection).await;
        if let Err(err) = &reply {
            self.check(generation, err);
        }
        reply
    }
}

fn failure(reason: &'static str) -> RedisError {
    RedisError::from((ErrorKind::Io, reason))
}

/// Asks each sentinel for `PING`, logged in with `login`, all at once within `timeout`, and
/// says which ones refused (with the server's error code only, e.g. `NOAUTH`) or could not
/// be reached: what a failed start-up reports, so that the operator knows which sentinel
/// to look at. Never shows a password.
pub(crate) async fn diagnose(
    sentinels: &[ConnectionAddr],
    login: &RedisConnectionInfo,
    tcp: TcpSettings,
    timeout: Duration,
) -> String {
    let probes: Vec<_> = sentinels
        .iter()
        .map(|addr| {
            let (addr, login, tcp) = (addr.clone(), login.clone(), tcp.clone());
            tokio::spawn(async move {
                let outcome = async {
                    let info = addr
                        .clone()
                        .into_connection_info()?
                        .set_redis_settings(login)
                        .set_tcp_settings(tcp);
                    let mut connection = redis::Client::open(info)?
                        .get_multiplexed_async_connection()
                        .await?;
                    redis::cmd("PING").query_async::<()>(&mut connection).await
                };
                let problem = match tokio::time::timeout(timeout, outcome).await {
                    Ok(Ok(())) => return None,
                    Ok(Err(err)) => describe(&err),
                    Err(_) => format!("no answer within {timeout:?}"),
                };
                Some(format!("sentinel {addr}: {problem}"))
            })
        })
        .collect();
    let mut refused = Vec::new();
    for probe in probes {
        match probe.await {
            Ok(None) => {}
            Ok(Some(problem)) => refused.push(problem),
            Err(_) => refused.push("a sentinel check stopped".to_owned()),
        }
    }
    if refused.is_empty() {
        "every sentinel answered PING".to_owned()
    } else {
        refused.join("; ")
    }
}
