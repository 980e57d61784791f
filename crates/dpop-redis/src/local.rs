//! A batcher and a connection per single-threaded runtime.
//!
//! Why: a gateway serves each client connection on one thread with a single-threaded Tokio
//! runtime. Through the one shared batcher, every insert crosses threads twice (the queue to
//! the batcher's runtime, the reply back), each a futex wake-up of a sleeping thread and a
//! handful of cache misses, which cost more CPU than the `SET` itself. A batcher living on
//! the caller's own runtime, with a connection of its own, answers on the same thread; the
//! pipelining is unchanged (while one pipeline is in flight, that thread's next inserts
//! queue up).
//!
//! Callers on a multi-threaded runtime (tasks move between its threads) keep using the
//! shared batcher. So does a thread whose own connection failed to open, until
//! [`RETRY_AFTER`] has passed: the shared connection reconnects on its own, and while
//! Redis is away inserts fail there as they would here (fail closed).

use core::cell::RefCell;
use core::time::Duration;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use thread_local::ThreadLocal;
use tokio::runtime::{Handle, RuntimeFlavor};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::batch::{Expiry, MAX_BATCH, Pending, Primary, QUEUE_DEPTH, Wait, expire, run_batches};
use crate::error::describe;
use dpop_core::ReplayStoreError;

/// How long a thread whose own connection could not be opened uses the shared batcher
/// before it tries again.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// The per-thread batchers of one store (one Redis server).
pub(crate) struct LocalBatchers {
    client: redis::Client,
    manager: ConnectionManagerConfig,
    connect_timeout: Duration,
    command_timeout: Duration,
    wait: Option<Wait>,
    threads: ThreadLocal<RefCell<Slot>>,
    /// Batchers running now, for [`crate::RedisReplayStore::local_batchers`].
    running: Arc<AtomicUsize>,
}

/// One thread's batcher.
#[derive(Default)]
struct Slot {
    /// The batcher's queue, and the runtime it runs on.
    batch: Option<(tokio::runtime::Id, mpsc::Sender<Pending>)>,
    /// When this thread last started a batcher.
    started: Option<Instant>,
}

impl LocalBatchers {
    pub(crate) fn new(
        client: redis::Client,
        manager: ConnectionManagerConfig,
        connect_timeout: Duration,
        command_timeout: Duration,
        wait: Option<Wait>,
    ) -> Self {
        Self {
            client,
            manager,
            connect_timeout,
            command_timeout,
            wait,
            threads: ThreadLocal::new(),
            running: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// The calling thread's batcher, started on first use; `None` (use the shared one) off
    /// a single-threaded runtime, on a runtime other than the one this thread's batcher
    /// runs on, or within [`RETRY_AFTER`] of the start of a batcher that has stopped (its
    /// connection could not be opened).
    pub(crate) fn sender(&self) -> Option<mpsc::Sender<Pending>> {
        let handle = Handle::try_current().ok()?;
        if handle.runtime_flavor() != RuntimeFlavor::CurrentThread {
            return None;
        }
        let runtime = handle.id();
        let slot = self.threads.get_or_default();
        let mut slot = slot.borrow_mut();
        if let Some((batch_runtime, batch)) = &slot.batch
            && !batch.is_closed()
        {
            // Its callers set no timer of their own: only while this runtime is being run
            // is the batcher sure to answer them. Another runtime on this thread (one kept
            // while this one runs, say) goes through the shared batcher, bounded by its
            // callers' time-out.
            return (*batch_runtime == runtime).then(|| batch.clone());
        }
        let now = Instant::now();
        if slot
            .started
            .is_some_and(|started| now.saturating_duration_since(started) < RETRY_AFTER)
            && slot.batch.is_some()
        {
            return None;
        }
        let (batch, queue) = mpsc::channel(QUEUE_DEPTH);
        let running = Running::new(&self.running);
        handle.spawn(run_local(
            self.client.clone(),
            self.manager.clone(),
            self.connect_timeout,
            self.command_timeout,
            self.wait,
            queue,
            running,
        ));
        slot.started = Some(now);
        slot.batch = Some((runtime, batch.clone()));
        Some(batch)
    }

    /// Batchers running now.
    pub(crate) fn running(&self) -> usize {
        self.running.load(Ordering::Relaxed)
    }
}

/// Counts a running batcher while it lives.
struct Running(Arc<AtomicUsize>);

impl Running {
    fn new(count: &Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        Self(Arc::clone(count))
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Opens this thread's connection, then batches until every sender is gone. Inserts that
/// arrive meanwhile are held, and answered with [`ReplayStoreError::Timeout`] when their
/// deadline passes first; the first pipeline carries the rest. If the connection cannot be
/// opened, what is held and queued fails (closed, as on the shared path) and the batcher
/// stops; the thread uses the shared batcher until it may try again.
async fn run_local(
    client: redis::Client,
    manager: ConnectionManagerConfig,
    connect_timeout: Duration,
    command_timeout: Duration,
    wait: Option<Wait>,
    mut queue: mpsc::Receiver<Pending>,
    _running: Running,
) {
    let connecting = tokio::time::timeout(
        connect_timeout,
        ConnectionManager::new_with_config(client, manager),
    );
    tokio::pin!(connecting);
    let mut held: Vec<Pending> = Vec::new();
    let mut expiry = Expiry::default();
    let connected = loop {
        // Nothing held: the timer waits as long as the connection may take.
        let deadline =
            expire(&mut held, Instant::now()).unwrap_or_else(|| Instant::now() + connect_timeout);
        let timer = expiry.at(deadline);
        let room = MAX_BATCH.saturating_sub(held.len());
        tokio::select! {
            biased;
            connected = &mut connecting => break connected,
            // At most a pipeline's worth: the inserts left in the queue were queued later,
            // so they expire after every held one, and are taken as those make room.
            received = queue.recv_many(&mut held, room), if room > 0 => {
                if received == 0 {
                    return;
                }
            }
            () = timer => {}
        }
    };
    let failure = match connected {
        Ok(Ok(connection)) => {
            run_batches(
                Primary::Server(connection),
                queue,
                command_timeout,
                wait,
                held,
            )
            .await;
            return;
        }
        Ok(Err(err)) => {
            ReplayStoreError::Unavailable(format!("cannot connect to Redis: {}", describe(&err)))
        }
        Err(_elapsed) => ReplayStoreError::Timeout,
    };
    queue.close();
    while let Ok(pending) = queue.try_recv() {
        held.push(pending);
    }
    for pending in held {
        let _ = pending.reply.send(Err(failure.clone()));
    }
}
