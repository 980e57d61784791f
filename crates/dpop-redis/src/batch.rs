//! Batching: inserts queued by callers and sent as one pipeline per round trip, to the
//! one primary of a single server or of a Sentinel set-up (the shared batcher, and the
//! per-thread ones of [`crate::local`]).

use core::pin::Pin;
use core::time::Duration;
use std::sync::Arc;

use dpop_core::{Insert, ReplayStoreError};
use redis::aio::ConnectionManager;
use redis::{Cmd, Pipeline, RedisResult, Value};
use tokio::sync::{mpsc, oneshot};
use tokio::time::{Instant, Sleep};

use crate::config::RedisStoreConfig;
use crate::error::store_error;
use crate::sentinel::SentinelPrimary;

/// Most `SET`s sent in one pipeline.
pub(crate) const MAX_BATCH: usize = 256;
/// Inserts waiting for the batcher (besides those in the pipeline on the wire); past this,
/// callers of a thread's own batcher are refused at once, and callers of the shared one
/// wait for room within their time-out.
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
    /// When the caller's command time-out ends: the batcher answers by then, with
    /// [`ReplayStoreError::Timeout`] if Redis has not.
    pub(crate) deadline: Instant,
    pub(crate) reply: oneshot::Sender<Result<Insert, ReplayStoreError>>,
}

/// The one timer of a batcher, moved from deadline to deadline.
///
/// Why one: Tokio's timer driver wakes itself (a write to its eventfd, and one more turn of
/// `epoll_wait`) whenever a timer is registered earlier than the driver's next wake-up. A
/// fresh timer per insert did that about once per pipeline, a system call for a few
/// inserts. Moving a registered timer later is one atomic store, and in the steady state
/// it only moves later: each deadline is the enqueue time plus the same time-out, and a
/// thread's inserts reach its batcher in the order they were queued. (It moves earlier
/// only after a time-out, and once when a thread's connection has opened.)
#[derive(Default)]
pub(crate) struct Expiry(Option<Pin<Box<Sleep>>>);

impl Expiry {
    /// The timer, set to end at `deadline`.
    pub(crate) fn at(&mut self, deadline: Instant) -> Pin<&mut Sleep> {
        let sleep = self
            .0
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        sleep.as_mut().reset(deadline);
        sleep.as_mut()
    }
}

/// Drops the inserts whose callers gave up and answers those whose deadline has passed
/// (they waited in the queue behind slow round trips) with [`ReplayStoreError::Timeout`];
/// returns the earliest deadline left.
pub(crate) fn expire(batch: &mut Vec<Pending>, now: Instant) -> Option<Instant> {
    for p in batch.extract_if(.., |p| p.reply.is_closed() || p.deadline <= now) {
        let _ = p.reply.send(Err(ReplayStoreError::Timeout));
    }
    batch.iter().map(|p| p.deadline).min()
}

/// The one insert every topology sends: `SET key 1 NX PX ttl_ms`, atomic on its own
/// (record the key unless it is there, with its expiry). Its buffers are sized up front:
/// one allocation each instead of one per argument that outgrows them.
pub(crate) fn set_if_absent(key: &str, ttl_ms: u64) -> Cmd {
    /// "SET", "1", "NX", "PX" and the longest `u64`.
    const FIXED: usize = 3 + 1 + 2 + 2 + 20;
    let mut cmd = Cmd::with_capacity(6, FIXED + key.len());
    cmd.arg("SET")
        .arg(key)
        .arg(1)
        .arg("NX")
        .arg("PX")
        .arg(ttl_ms);
    cmd
}

/// What `SET … NX` answered: recorded, or there already.
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

/// Sends every insert that is waiting (`batch` first, then the queue) as one pipeline,
/// then the next batch, until every sender is gone.
///
/// Why: one `SET` per round trip costs a read and a write system call on both sides for
/// every request, which on a busy host costs more CPU than the command itself. While one
/// pipeline is in flight the next requests queue up, so batches grow with load and no
/// request waits for a timer (only for one more pass of the runtime, below). A pipeline
/// is not atomic and need not be: each `SET NX` is.
///
/// Every insert is answered by its deadline: while a pipeline is on the wire, each of its
/// inserts whose deadline passes is answered [`ReplayStoreError::Timeout`] (the others
/// keep waiting for the reply), and the pipeline is given up `timeout` after it was sent,
/// when all of its inserts have been answered (they were queued before it was sent).
/// Inserts that were queued before it went out but did not fit are answered at their
/// deadline meanwhile; inserts queued after it went out have later deadlines than that
/// and go in the next pipeline.
/// On a single server this is the only bound on a pipeline: the connection has no
/// response time-out of its own.
pub(crate) async fn run_batches(
    primary: Primary,
    mut queue: mpsc::Receiver<Pending>,
    timeout: Duration,
    wait: Option<Wait>,
    mut batch: Vec<Pending>,
) {
    batch.reserve(MAX_BATCH);
    let mut waiting: Vec<Waiting> = Vec::with_capacity(MAX_BATCH);
    let mut expiry = Expiry::default();
    loop {
        if batch.is_empty() && queue.recv_many(&mut batch, MAX_BATCH).await == 0 {
            return;
        }
        // Let the tasks that are ready now, and those the runtime's next look at its
        // sockets makes ready, queue their inserts too: one yield lengthens a pipeline
        // (measured: a quarter less CPU in Redis per insert, a little less here) for the
        // price of one more pass over the runtime's ready tasks. Under overload that pass
        // can take milliseconds; the deadlines still bound the wait.
        if batch.len() < MAX_BATCH {
            tokio::task::yield_now().await;
            while batch.len() < MAX_BATCH
                && let Ok(p) = queue.try_recv()
            {
                batch.push(p);
            }
        }
        if expire(&mut batch, Instant::now()).is_none() {
            continue;
        }
        let mut pipe = Pipeline::with_capacity(batch.len() + usize::from(wait.is_some()));
        for p in &batch {
            pipe.add_command(set_if_absent(&p.key, p.ttl_ms));
        }
        if let Some(wait) = &wait {
            wait.push(&mut pipe);
        }
        let expected = batch.len() + usize::from(wait.is_some());
        // In range: `validate` bounds the time-out.
        let give_up = Instant::now() + timeout;
        waiting.extend(batch.drain(..).map(|p| Waiting {
            deadline: p.deadline,
            reply: Some(p.reply),
        }));
        // Inserts left in the queue when the pipeline went out (more than it could take)
        // have deadlines before `give_up`: they are taken in and answered at their deadline
        // while the pipeline is on the wire. Inserts queued after it went out have later
        // deadlines than `give_up` and wait in the queue, so the usual case costs no wake-up
        // per insert.
        let leftovers = !queue.is_empty();
        let mut open = true;
        let query = primary.query_pipeline(&pipe);
        tokio::pin!(query);
        let replies = loop {
            let now = Instant::now();
            for w in &mut waiting {
                if w.deadline <= now {
                    w.answer(Err(ReplayStoreError::Timeout));
                }
            }
            if now >= give_up {
                break None;
            }
            let next = waiting
                .iter()
                .filter(|w| w.reply.is_some())
                .map(|w| w.deadline)
                .chain(expire(&mut batch, now))
                .min()
                .map_or(give_up, |d| d.min(give_up));
            let room = if leftovers && open {
                MAX_BATCH.saturating_sub(batch.len())
            } else {
                0
            };
            tokio::select! {
                biased;
                replies = &mut query => break Some(replies),
                received = queue.recv_many(&mut batch, room), if room > 0 => {
                    open = received > 0;
                }
                () = expiry.at(next) => {}
            }
        };
        match replies {
            Some(Ok(values)) if values.len() == expected => {
                // With WAIT, its reply (the replicas that acknowledged) comes last.
                let replicated = wait.as_ref().is_none_or(|w| w.satisfied(values.last()));
                for (mut w, v) in waiting.drain(..).zip(values.iter()) {
                    w.answer(replicated_or_refused(insert_reply(v), replicated));
                }
            }
            Some(Ok(_)) => fail_all(
                &mut waiting,
                &ReplayStoreError::Unavailable("pipeline reply count mismatch".to_owned()),
            ),
            Some(Err(err)) => fail_all(&mut waiting, &store_error(&err)),
            None => fail_all(&mut waiting, &ReplayStoreError::Timeout),
        }
    }
}

/// An insert on the wire: its deadline, and where to answer until it has been answered.
struct Waiting {
    deadline: Instant,
    reply: Option<oneshot::Sender<Result<Insert, ReplayStoreError>>>,
}

impl Waiting {
    /// Answers the caller, unless it has been answered already.
    fn answer(&mut self, outcome: Result<Insert, ReplayStoreError>) {
        if let Some(reply) = self.reply.take() {
            let _ = reply.send(outcome);
        }
    }
}

fn fail_all(waiting: &mut Vec<Waiting>, error: &ReplayStoreError) {
    for mut w in waiting.drain(..) {
        w.answer(Err(error.clone()));
    }
}

pub(crate) fn batcher_stopped() -> ReplayStoreError {
    ReplayStoreError::Unavailable("the Redis batcher stopped".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_insert_is_set_nx_px_on_the_wire() {
        let cmd = set_if_absent("dpop:jti:ab", 60_000);
        assert_eq!(
            cmd.get_packed_command(),
            b"*6\r\n$3\r\nSET\r\n$11\r\ndpop:jti:ab\r\n$1\r\n1\r\n$2\r\nNX\r\n$2\r\nPX\r\n$5\r\n60000\r\n"
        );
        let longest = set_if_absent("k", u64::MAX);
        assert!(
            longest
                .get_packed_command()
                .ends_with(b"$20\r\n18446744073709551615\r\n")
        );
    }
}
