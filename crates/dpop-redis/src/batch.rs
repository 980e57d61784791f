//! Batching: inserts queued by callers and sent as one pipeline per round trip, to the
//! one primary of a single server or of a Sentinel set-up (the shared batcher, and the
//! per-thread ones of [`crate::local`]).

use core::time::Duration;
use std::sync::Arc;

use dpop_core::{Insert, ReplayStoreError};
use redis::aio::ConnectionManager;
use redis::{Cmd, Pipeline, RedisResult, Value};
use tokio::sync::{mpsc, oneshot};

use crate::config::RedisStoreConfig;
use crate::error::store_error;
use crate::sentinel::SentinelPrimary;

/// Most `SET`s sent in one pipeline.
const MAX_BATCH: usize = 256;
/// Inserts waiting for the batcher; past this, callers wait (within their timeout).
pub(crate) const QUEUE_DEPTH: usize = 16_384;

/// The one primary that every insert goes to.
#[derive(Clone)]
pub(crate) enum Primary {
    /// One server, multiplexed (one connection carries concurrent commands) and
    /// reconnecting.
    Server(ConnectionManager),
    /// The primary the sentinels name, found again after a failover.
    Sentinel(Arc<SentinelPrimary>),
}

impl Primary {
    pub(crate) async fn query_pipeline(&self, pipe: &Pipeline) -> RedisResult<Vec<Value>> {
        match self {
            Self::Server(connection) => {
                let mut connection = connection.clone();
                pipe.query_async::<Vec<Value>>(&mut connection).await
            }
            Self::Sentinel(primary) => primary.query_pipeline(pipe).await,
        }
    }

    pub(crate) async fn query(&self, cmd: &Cmd) -> RedisResult<Value> {
        match self {
            Self::Server(connection) => {
                let mut connection = connection.clone();
                cmd.query_async::<Value>(&mut connection).await
            }
            Self::Sentinel(primary) => primary.query(cmd).await,
        }
    }
}

/// `WAIT replicas timeout_ms` after each batch.
#[derive(Clone, Copy)]
pub(crate) struct Wait {
    replicas: u32,
    timeout_ms: u64,
}

impl Wait {
    /// `None` when `wait_replicas` is 0.
    pub(crate) fn from_config(config: &RedisStoreConfig) -> Option<Self> {
        (config.wait_replicas > 0).then(|| Self {
            replicas: config.wait_replicas,
            timeout_ms: u64::try_from(config.wait_timeout.as_millis())
                .unwrap_or(u64::MAX)
                .max(1),
        })
    }

    /// Adds `WAIT replicas timeout_ms` to `pipe`.
    pub(crate) fn push(&self, pipe: &mut Pipeline) {
        pipe.cmd("WAIT").arg(self.replicas).arg(self.timeout_ms);
    }

    /// Whether `WAIT`'s reply (the number of replicas that acknowledged) is enough.
    pub(crate) fn satisfied(&self, reply: Option<&Value>) -> bool {
        matches!(reply, Some(Value::Int(acked))
            if u64::try_from(*acked).is_ok_and(|a| a >= u64::from(self.replicas)))
    }
}

/// The insert's outcome once `WAIT` has answered: a key recorded on the primary but on
/// fewer replicas than wanted could be forgotten by a failover, so the proof is refused (its
/// key stays, so a replay of it is still caught while the primary lives).
pub(crate) fn replicated_or_refused(
    insert: Result<Insert, ReplayStoreError>,
    replicated: bool,
) -> Result<Insert, ReplayStoreError> {
    match insert {
        Ok(Insert::Inserted) if !replicated => Err(ReplayStoreError::Unavailable(
            "the record reached fewer Redis replicas than wait_replicas".to_owned(),
        )),
        other => other,
    }
}

/// One insert waiting for the batcher.
pub(crate) struct Pending {
    pub(crate) key: String,
    pub(crate) ttl_ms: u64,
    pub(crate) reply: oneshot::Sender<Result<Insert, ReplayStoreError>>,
}

pub(crate) fn insert_reply(value: &Value) -> Result<Insert, ReplayStoreError> {
    match value {
        Value::Okay => Ok(Insert::Inserted),
        Value::SimpleString(reply) if reply == "OK" => Ok(Insert::Inserted),
        Value::Nil => Ok(Insert::AlreadyPresent),
        // Anything else is a server we do not understand: refuse, do not guess.
        _ => Err(ReplayStoreError::Unavailable(
            "unexpected reply to SET NX".to_owned(),
        )),
    }
}

/// Sends every insert that is waiting as one pipeline, then the next batch.
///
/// Why: one `SET` per round trip costs a read and a write system call on both sides for
/// every request, which on a busy host costs more CPU than the command itself. While one
/// pipeline is in flight the next requests queue up, so batches grow with load and no
/// request waits for a timer (only for one more pass of the runtime, below). A pipeline
/// is not atomic and need not be: each `SET NX` is.
pub(crate) async fn run_batches(
    primary: Primary,
    mut queue: mpsc::Receiver<Pending>,
    timeout: Duration,
    wait: Option<Wait>,
) {
    let mut batch: Vec<Pending> = Vec::with_capacity(MAX_BATCH);
    while queue.recv_many(&mut batch, MAX_BATCH).await > 0 {
        // Let the tasks that are ready now, and those the runtime's next look at its
        // sockets makes ready, queue their inserts too: one yield lengthens a pipeline
        // (measured: a quarter less CPU in Redis per insert, a little less here) for the
        // price of one more pass over the runtime's ready tasks. Under overload that pass
        // can take milliseconds; the caller's command time-out still bounds the wait, and
        // callers that gave up are dropped from the batch below.
        if batch.len() < MAX_BATCH {
            tokio::task::yield_now().await;
            while batch.len() < MAX_BATCH
                && let Ok(p) = queue.try_recv()
            {
                batch.push(p);
            }
        }
        // Callers that gave up (timed out) need no command.
        batch.retain(|p| !p.reply.is_closed());
        if batch.is_empty() {
            continue;
        }
        let mut pipe = redis::pipe();
        for p in &batch {
            pipe.cmd("SET")
                .arg(&p.key)
                .arg(1)
                .arg("NX")
                .arg("PX")
                .arg(p.ttl_ms);
        }
        if let Some(wait) = &wait {
            wait.push(&mut pipe);
        }
        let expected = batch.len() + usize::from(wait.is_some());
        let replies = tokio::time::timeout(timeout, primary.query_pipeline(&pipe)).await;
        match replies {
            Ok(Ok(values)) if values.len() == expected => {
                // With WAIT, its reply (the replicas that acknowledged) comes last.
                let replicated = wait.as_ref().is_none_or(|w| w.satisfied(values.last()));
                for (p, v) in batch.drain(..).zip(values.iter()) {
                    let _ = p
                        .reply
                        .send(replicated_or_refused(insert_reply(v), replicated));
                }
            }
            Ok(Ok(_)) => fail_all(
                &mut batch,
                &ReplayStoreError::Unavailable("pipeline reply count mismatch".to_owned()),
            ),
            Ok(Err(err)) => fail_all(&mut batch, &store_error(&err)),
            Err(_elapsed) => fail_all(&mut batch, &ReplayStoreError::Timeout),
        }
    }
}

fn fail_all(batch: &mut Vec<Pending>, error: &ReplayStoreError) {
    for p in batch.drain(..) {
        let _ = p.reply.send(Err(error.clone()));
    }
}

pub(crate) fn batcher_stopped() -> ReplayStoreError {
    ReplayStoreError::Unavailable("the Redis batcher stopped".to_owned())
}
