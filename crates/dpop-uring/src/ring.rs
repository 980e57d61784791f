//! The batcher: one io_uring, the connections with bytes to send, and the task of its
//! runtime that submits them.

use std::cell::RefCell;
use std::future::{Future as _, poll_fn};
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Poll, Waker};
use std::time::Duration;

use io_uring::{IoUring, Probe, opcode, types};
use tokio::time::{Instant, Sleep};

use crate::{Shared, Stats};

/// Submission queue entries: the most sends handed over in one system call (a larger
/// batch takes several).
const ENTRIES: u32 = 256;

thread_local! {
    /// The running batchers started on this thread, one per runtime at most: a stream
    /// made here uses the one of the runtime it is made in.
    static STARTED: RefCell<Vec<Batcher>> = const { RefCell::new(Vec::new()) };
}

/// A serving thread's batch of socket writes: an io_uring and the task, on the runtime
/// that started it, that submits the writes of every [`crate::BatchedStream`] made on
/// the thread since. Cheap to clone.
#[derive(Clone)]
pub struct Batcher(Arc<Inner>);

struct Inner {
    /// The runtime whose turns flush this batch.
    runtime: tokio::runtime::Id,
    batch: Mutex<Batch>,
    /// Dropped connections whose rest is still being written: at most [`MAX_LINGERING`].
    lingering: Mutex<Vec<Arc<Place>>>,
    /// [`Stats::closed_unsent`] and [`Stats::linger_cut`], kept outside the batch's
    /// lock, which a drain does not take.
    closed_unsent: AtomicU64,
    linger_cut: AtomicU64,
}

impl std::fmt::Debug for Batcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let stats = self.stats();
        let batch = self.lock();
        f.debug_struct("Batcher")
            .field("queued", &batch.queue.len())
            .field("ended", &batch.ended)
            .field("stats", &stats)
            .finish_non_exhaustive()
    }
}

pub(crate) struct Batch {
    ring: IoUring,
    /// Connections whose `pending` bytes go out in the next submission.
    queue: Vec<Arc<Shared>>,
    /// The sends of the submission under way (kept for its allocation).
    sends: Vec<Send>,
    /// The flushing task, when it waits for work.
    flusher: Option<Waker>,
    /// The flushing task has ended (its runtime did), or the ring failed: streams write
    /// straight to their sockets.
    ended: bool,
    stats: Stats,
    /// Tests: the next submission fails as a failing ring would, before the kernel
    /// takes any of it.
    #[cfg(test)]
    pub(crate) fail_next_submit: bool,
}

/// One send of a submission: its connection, the bytes it owns while the kernel may
/// read them, and the kernel's answer.
struct Send {
    shared: Arc<Shared>,
    buf: Vec<u8>,
    result: Option<i32>,
}

/// The flags of every send: never wait for room, never raise `SIGPIPE`.
const SEND_FLAGS: i32 = libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL;

/// A ring of `entries`, refused unless the kernel has the send operation (Linux 5.6)
/// and completes a send to a full socket during its submission.
fn new_ring(entries: u32) -> io::Result<IoUring> {
    let mut ring = IoUring::new(entries)?;
    let mut probe = Probe::new();
    ring.submitter().register_probe(&mut probe)?;
    if !probe.is_supported(opcode::Send::CODE) {
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "the kernel's io_uring has no send operation (Linux 5.6 or later has)",
        ));
    }
    sends_do_not_wait(&mut ring, SEND_FLAGS)?;
    Ok(ring)
}

/// Checks what the batcher's waits rely on: a `MSG_DONTWAIT` send to a socket with no
/// room is answered `EAGAIN` during the submission, not parked until the peer reads. A
/// kernel that parked it would hold a serving thread in `submit_and_wait` for as long
/// as one client chose not to read. (`flags`: the batcher's; tests vary them.)
pub(crate) fn sends_do_not_wait(ring: &mut IoUring, flags: i32) -> io::Result<()> {
    use std::io::Write as _;
    use std::os::fd::{AsRawFd as _, IntoRawFd as _};

    let refused = |why: &str| io::Error::new(io::ErrorKind::Unsupported, why.to_owned());
    let (mut full, peer) = std::os::unix::net::UnixStream::pair()?;
    full.set_nonblocking(true)?;
    let chunk = [0u8; 4096];
    loop {
        match full.write(&chunk) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) => return Err(e),
        }
    }
    let buf = vec![0u8; 4096];
    let len = u32::try_from(buf.len()).unwrap_or(u32::MAX);
    let entry = opcode::Send::new(types::Fd(full.as_raw_fd()), buf.as_ptr(), len)
        .flags(flags)
        .build()
        .user_data(0);
    #[allow(unsafe_code)]
    // SAFETY: the kernel reads `len` bytes at `buf` from the socket `full`. Unless the
    // send is seen complete below, both are leaked, so they outlive whatever the
    // kernel still does with the entry.
    let pushed = unsafe { ring.submission().push(&entry) };
    if pushed.is_err() {
        return Err(refused("a new ring has no room for one entry"));
    }
    let submitted = ring.submit();
    let answer = ring.completion().next().map(|cqe| cqe.result());
    match (submitted, answer) {
        (Ok(1), Some(r)) if r == -libc::EAGAIN => Ok(()),
        (Ok(1), Some(r)) => Err(refused(&format!(
            "the kernel's io_uring answered a send to a full socket with {r}, not EAGAIN"
        ))),
        (submitted, _) => {
            // The kernel may still hold the entry: its buffer and socket stay.
            buf.leak();
            let _ = (full.into_raw_fd(), peer.into_raw_fd());
            Err(match submitted {
                Err(e) => e,
                Ok(_) => refused("the kernel's io_uring waits for room on a non-blocking send"),
            })
        }
    }
}

pub(crate) fn probe() -> io::Result<()> {
    // The size every batcher asks for: on kernels before 5.12 a ring's memory counts
    // against RLIMIT_MEMLOCK, so a smaller one could pass where the real ones fail.
    new_ring(ENTRIES).map(drop)
}

impl Batcher {
    /// Starts a batcher on the current runtime, which must be a current-thread one that
    /// this thread drives (its flushing task is spawned there), with its I/O and time
    /// drivers enabled (`enable_all`: a dropped stream's rest waits on a timer, and
    /// Tokio panics without one): streams made on this
    /// thread in this runtime use it until the runtime ends (a second batcher started
    /// in the same runtime replaces it). Streams made in another runtime, or on another
    /// thread, do not.
    ///
    /// # Errors
    /// No current-thread runtime here, or the kernel refuses io_uring (see
    /// [`crate::probe`]).
    pub fn start() -> io::Result<Self> {
        let handle = tokio::runtime::Handle::try_current()
            .map_err(|e| io::Error::new(io::ErrorKind::Unsupported, e))?;
        if handle.runtime_flavor() != tokio::runtime::RuntimeFlavor::CurrentThread {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "a batcher needs a current-thread runtime",
            ));
        }
        let runtime = handle.id();
        let batcher = Self(Arc::new(Inner {
            runtime,
            lingering: Mutex::new(Vec::new()),
            closed_unsent: AtomicU64::new(0),
            linger_cut: AtomicU64::new(0),
            batch: Mutex::new(Batch {
                ring: new_ring(ENTRIES)?,
                queue: Vec::new(),
                sends: Vec::new(),
                flusher: None,
                ended: false,
                stats: Stats::default(),
                #[cfg(test)]
                fail_next_submit: false,
            }),
        }));
        // Made before the task is spawned and moved into it: a task dropped before its
        // first poll still ends the batcher.
        let running = Running(batcher.clone());
        drop(handle.spawn(flush_task(running)));
        STARTED.with(|started| {
            let mut started = started.borrow_mut();
            started.retain(|b| b.0.runtime != runtime && !b.lock().ended);
            started.push(batcher.clone());
        });
        Ok(batcher)
    }

    /// The running batcher this thread started in the runtime it is in now.
    #[must_use]
    pub fn current() -> Option<Self> {
        let runtime = tokio::runtime::Handle::try_current().ok()?.id();
        STARTED.with(|started| {
            let mut started = started.borrow_mut();
            started.retain(|b| !b.lock().ended);
            started.iter().find(|b| b.0.runtime == runtime).cloned()
        })
    }

    /// What this batcher has done.
    #[must_use]
    pub fn stats(&self) -> Stats {
        // `linger_cut` first (it pairs with the drain's release): each of them was
        // counted in `closed_unsent` before it, so the snapshot never shows more cut
        // than closed.
        let linger_cut = self.0.linger_cut.load(Ordering::Acquire);
        Stats {
            closed_unsent: self.0.closed_unsent.load(Ordering::Relaxed),
            linger_cut,
            ..self.lock().stats
        }
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, Batch> {
        self.0.batch.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Puts `shared` (just marked queued, with bytes pending) in the next submission;
    /// gives it back if this batcher has ended.
    pub(crate) fn enqueue(&self, shared: Arc<Shared>) -> Result<(), Arc<Shared>> {
        let mut batch = self.lock();
        if batch.ended {
            return Err(shared);
        }
        batch.queue.push(shared);
        if batch.queue.len() == 1
            && let Some(w) = batch.flusher.take()
        {
            w.wake();
        }
        Ok(())
    }
}

/// The flushing task: submits the queue each time it is woken, which is after the tasks
/// that were ready before it have run (and queued their writes).
async fn flush_task(running: Running) {
    poll_fn(|cx| {
        let mut batch = running.0.lock();
        if batch.ended {
            return Poll::Ready(());
        }
        if !batch.queue.is_empty() {
            batch.flush();
        }
        if batch.ended {
            return Poll::Ready(());
        }
        if !batch.queue.is_empty() {
            // Queued again while this flush ran: the next turn, after the other tasks.
            cx.waker().wake_by_ref();
        }
        batch.flusher = Some(cx.waker().clone());
        Poll::Pending
    })
    .await;
}

/// Ends the batcher when its flushing task is dropped (its runtime ended) and hands the
/// connections still queued back to themselves, so that nothing waits for a task that
/// no longer runs.
struct Running(Batcher);

impl Drop for Running {
    fn drop(&mut self) {
        let queue = {
            let mut batch = self.0.lock();
            batch.ended = true;
            batch.flusher = None;
            std::mem::take(&mut batch.queue)
        };
        for shared in &queue {
            hand_back(shared);
        }
    }
}

/// Puts a send's bytes back in front of its connection's and hands it back.
fn give_back(send: Send) {
    send.shared.lock().put_front(send.buf);
    hand_back(&send.shared);
}

/// Returns a queued connection's bytes to it: from now on it writes them, and the rest,
/// straight to its socket.
fn hand_back(shared: &Shared) {
    let mut out = shared.lock();
    out.queued = false;
    out.direct = true;
    if out.dropped {
        // Nobody will write them.
        out.close_dropped();
    }
    out.wake();
}

impl Batch {
    fn flush(&mut self) {
        let mut sends = std::mem::take(&mut self.sends);
        for shared in self.queue.drain(..) {
            let buf = std::mem::take(&mut shared.lock().pending);
            sends.push(Send {
                shared,
                buf,
                result: None,
            });
        }
        let mut failed = None;
        for (n, chunk) in sends.chunks_mut(ENTRIES as usize).enumerate() {
            if let Err((unconsumed, error)) = self.submit(chunk) {
                failed = Some((n * ENTRIES as usize, chunk.len() - unconsumed, error));
                break;
            }
        }
        if let Some((first, consumed, error)) = failed {
            // The ring failed; it is never entered again (`ended`), so the entries it
            // had not consumed are never read. Of the chunk it failed on, a send the
            // kernel took without answering may still be read by it: its buffer is
            // leaked, and its connection fails, since whether its bytes went out is
            // unknown. The sends it never took, and the chunks after it, give their
            // connections their bytes back.
            self.ended = true;
            tracing::error!(
                target: "dpop::uring",
                %error,
                "io_uring submission failed: this thread's connections write one system call each from now on"
            );
            for send in &mut sends[first..first + consumed] {
                if send.result.is_none() {
                    std::mem::take(&mut send.buf).leak();
                    send.result = Some(-libc::EIO);
                }
            }
            for send in sends.drain(first + consumed..) {
                give_back(send);
            }
        }
        for send in sends.drain(..) {
            self.complete(send);
        }
        self.sends = sends;
    }

    /// Submits one send per entry of `chunk` and waits for all their completions. If
    /// the ring itself fails: how many of the chunk's entries (its last ones) it never
    /// took, and why; the others without a result are unknown.
    fn submit(&mut self, chunk: &mut [Send]) -> Result<(), (usize, io::Error)> {
        #[cfg(test)]
        if std::mem::take(&mut self.fail_next_submit) {
            return Err((
                chunk.len(),
                io::Error::other("a failure the test asked for"),
            ));
        }
        {
            let mut sq = self.ring.submission();
            for (i, send) in chunk.iter().enumerate() {
                let len = u32::try_from(send.buf.len()).unwrap_or(u32::MAX);
                let entry = opcode::Send::new(types::Fd(send.shared.fd), send.buf.as_ptr(), len)
                    .flags(SEND_FLAGS)
                    .build()
                    .user_data(i as u64);
                #[allow(unsafe_code)]
                // SAFETY: the kernel reads `len` bytes at `as_ptr()` from the socket
                // `fd`. `chunk` owns each buffer and holds its connection, whose socket
                // stays open while it is queued (a dropped stream leaves it to the
                // batcher). Neither is released, moved or reused before this
                // submission's completions are all reaped below. If the ring fails
                // first, it is never entered again, so an entry it has not taken is
                // never read, and the buffer of one it took is leaked (`flush`).
                let pushed = unsafe { sq.push(&entry) };
                if pushed.is_err() {
                    // Cannot happen (a chunk fits the empty queue). The ring has not
                    // been entered: none of the chunk reaches the kernel.
                    return Err((
                        chunk.len(),
                        io::Error::other("the submission queue is full"),
                    ));
                }
            }
        }
        let mut waiting = chunk.len();
        let mut retries = 0;
        while waiting > 0 {
            match self.ring.submit_and_wait(waiting) {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
                // Passing shortages of kernel memory: nothing was submitted by this
                // call; a few more tries before giving the ring up.
                Err(e)
                    if retries < 3
                        && matches!(
                            e.raw_os_error(),
                            Some(libc::EAGAIN | libc::EBUSY | libc::ENOMEM)
                        ) =>
                {
                    retries += 1;
                    std::thread::yield_now();
                }
                Err(e) => return Err((self.ring.submission().len(), e)),
            }
            for cqe in self.ring.completion() {
                let Some(send) = usize::try_from(cqe.user_data())
                    .ok()
                    .and_then(|i| chunk.get_mut(i))
                else {
                    continue;
                };
                if send.result.is_none() {
                    send.result = Some(cqe.result());
                    waiting -= 1;
                }
            }
        }
        self.stats.submissions += 1;
        self.stats.sends += chunk.len() as u64;
        Ok(())
    }

    /// Applies a send's result to its connection and wakes it.
    fn complete(&mut self, send: Send) {
        let Send {
            shared,
            mut buf,
            result,
        } = send;
        let mut out = shared.lock();
        out.queued = false;
        let result = result.unwrap_or(-libc::EIO);
        let sent = usize::try_from(result).ok().map(|n| n.min(buf.len()));
        if let Some(sent) = sent
            && sent == buf.len()
        {
            if !out.pending.is_empty() {
                // Accepted while the send was under way (from another thread).
                if self.ended {
                    drop(out);
                    hand_back(&shared);
                    return;
                }
                out.queued = true;
                self.queue.push(Arc::clone(&shared));
            } else if buf.capacity() <= crate::KEPT_CAPACITY {
                buf.clear();
                out.pending = buf;
            }
        } else if sent.is_some() || result == -libc::EAGAIN {
            // Short, or would block: the rest goes through readiness, ahead of anything
            // accepted since.
            self.stats.unfinished += 1;
            buf.drain(..sent.unwrap_or(0));
            out.put_front(buf);
            out.backlog = true;
            drop(out);
            drop(tokio::spawn(drain_task(Draining(Arc::clone(&shared)))));
            return;
        } else {
            out.failed = Some(-result);
            out.pending = Vec::new();
            if out.dropped
                && let Some(batcher) = &shared.batcher
            {
                // Dropped, and its bytes will never be sent.
                batcher.0.closed_unsent.fetch_add(1, Ordering::Relaxed);
            }
        }
        if out.dropped && !out.queued {
            // Everything was sent, or the socket failed: nothing is left to try.
            out.close_dropped();
        }
        out.wake();
    }
}

/// How long a dropped connection's rest may wait for its peer to take more of it: the
/// socket closes after this long without progress...
pub(crate) const LINGER_STALL: Duration = if cfg!(test) {
    Duration::from_secs(1)
} else {
    Duration::from_secs(5)
};
/// ...or this long after the drop, however slowly the peer reads. A dropped connection
/// no longer holds its server's connection slot, so this bounds how long each keeps its
/// socket and its bytes (at most `2 × MAX_PENDING`).
pub(crate) const LINGER_MAX: Duration = if cfg!(test) {
    Duration::from_secs(3)
} else {
    Duration::from_secs(60)
};

/// ...and at most this many at once per batcher (so per serving thread). With
/// [`crate::MAX_PENDING`], this bounds the memory that clients which stop reading and
/// hang up can leave behind them. When one more is dropped, one of them is closed to make
/// room (see [`Lingering::take`]), or, when every one of them still makes progress, the
/// new one is: its rest dropped, as after a stall.
pub(crate) const MAX_LINGERING: usize = if cfg!(test) { 2 } else { 256 };

/// How long a lingering connection's socket must have taken none of its rest before the
/// place may go to a newer one: half the stall that ends a linger anyway.
///
/// The socket takes more only once its peer has read enough for the kernel to report
/// room (about a third of the send buffer), so a peer that reads slowly shows progress in
/// steps: one whose steps come further apart than this can lose its place to a newer
/// connection, as one whose steps come further apart than [`LINGER_STALL`] loses its rest
/// to the stall. The other way round, what the kernel still takes just after the drop
/// (the send buffer, the peer's receive window) counts as progress too.
pub(crate) const EVICTABLE_AFTER: Duration = LINGER_STALL.checked_div(2).unwrap();

/// A lingering connection's entry in its batcher's table, shared by its drain task and
/// the batcher, which may close it for a newer one.
struct Place {
    /// When its socket last took more of the rest, or the drop.
    progress: Mutex<Instant>,
    /// Set when the place is lost (given to a newer one, or never had): the drain closes
    /// at once.
    evicted: AtomicBool,
    /// The drain task, to wake when evicted.
    drainer: Mutex<Option<Waker>>,
}

impl Place {
    fn new(dropped_at: Instant) -> Self {
        Self {
            progress: Mutex::new(dropped_at),
            evicted: AtomicBool::new(false),
            drainer: Mutex::new(None),
        }
    }

    fn progress(&self) -> Instant {
        *self.progress.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether the place is lost; otherwise `waker` is woken when it is.
    fn evicted(&self, waker: &Waker) -> bool {
        // The waker first, then the flag: an eviction in between still wakes it.
        let mut drainer = self.drainer.lock().unwrap_or_else(PoisonError::into_inner);
        if !drainer.as_ref().is_some_and(|w| w.will_wake(waker)) {
            *drainer = Some(waker.clone());
        }
        drop(drainer);
        self.evicted.load(Ordering::Acquire)
    }

    fn evict(&self) {
        self.evicted.store(true, Ordering::Release);
        let drainer = self
            .drainer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(waker) = drainer {
            waker.wake();
        }
    }
}

/// One of a batcher's [`MAX_LINGERING`] places, given back when dropped. (A stream
/// without a batcher has no drain task, so never asks; were it to, it would be given a
/// place that counts nowhere.)
struct Lingering {
    batcher: Option<Arc<Inner>>,
    place: Arc<Place>,
}

impl Lingering {
    /// A place on `batcher` for a connection dropped at `now`. When the batcher has its
    /// most already, the one whose socket has taken none of its rest for the longest is
    /// closed to make room, if that is at least [`EVICTABLE_AFTER`]; otherwise every
    /// lingering connection is making progress, and the new one is closed instead (its
    /// place is lost from the start). So a client that hangs up many connections without
    /// reading their rest holds each place for about [`EVICTABLE_AFTER`] after its
    /// socket's buffers filled, and takes places only from connections that stalled that
    /// long.
    fn take(batcher: Option<&Batcher>, now: Instant) -> Self {
        let place = Arc::new(Place::new(now));
        let Some(batcher) = batcher else {
            return Self {
                batcher: None,
                place,
            };
        };
        let inner = &batcher.0;
        let evicted = {
            let mut table = inner
                .lingering
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if table.len() < MAX_LINGERING {
                table.push(Arc::clone(&place));
                None
            } else {
                let stalest = table
                    .iter()
                    .map(|p| p.progress())
                    .enumerate()
                    .min_by_key(|&(_, at)| at);
                match stalest {
                    Some((i, at)) if now.duration_since(at) >= EVICTABLE_AFTER => {
                        let evicted = table.swap_remove(i);
                        table.push(Arc::clone(&place));
                        Some(evicted)
                    }
                    _ => Some(Arc::clone(&place)),
                }
            }
        };
        if let Some(evicted) = evicted {
            evicted.evict();
        }
        Self {
            batcher: Some(Arc::clone(inner)),
            place,
        }
    }

    /// The socket took more of the rest at `now`.
    fn progressed(&self, now: Instant) {
        *self
            .place
            .progress
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = now;
    }
}

impl Drop for Lingering {
    fn drop(&mut self) {
        if let Some(inner) = &self.batcher {
            let mut table = inner
                .lingering
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            // Gone already when evicted.
            if let Some(i) = table.iter().position(|p| Arc::ptr_eq(p, &self.place)) {
                table.swap_remove(i);
            }
        }
    }
}

/// Writes a connection's rest through readiness, then lets it accept again. A dropped
/// connection's rest is still written, as a plain socket's close leaves its buffered
/// bytes to the kernel: while the socket takes some of it at least every
/// [`LINGER_STALL`], for at most [`LINGER_MAX`] after the drop, and while its batcher,
/// holding [`MAX_LINGERING`], does not give its place to a newer one
/// ([`Lingering::take`]); then the socket closes and what is left is dropped.
pub(crate) async fn drain_task(draining: Draining) {
    // Once dropped: when, how many bytes were left at the last progress, the clock, and
    // the batcher's place.
    struct Linger {
        dropped_at: Instant,
        last: usize,
        stall: Pin<Box<Sleep>>,
        place: Lingering,
    }
    let mut linger: Option<Linger> = None;
    poll_fn(|cx| {
        let mut out = draining.0.lock();
        let mut drained = out.poll_drain(cx);
        let failed = matches!(drained, Poll::Ready(Err(_)));
        let mut evicted = false;
        if drained.is_pending() && out.dropped {
            // Woken by the socket or by the drop; each time the socket took more, the
            // stall's clock starts again.
            let now = Instant::now();
            let left = out.pending.len();
            let Linger {
                dropped_at,
                last,
                stall,
                place,
            } = linger.get_or_insert_with(|| Linger {
                dropped_at: now,
                last: usize::MAX,
                stall: Box::pin(tokio::time::sleep_until(now)),
                place: Lingering::take(draining.0.batcher.as_ref(), now),
            });
            if place.place.evicted(cx.waker()) {
                // Its place went to a newer one, or there was none: closed now, as after
                // a stall.
                evicted = true;
                drained = Poll::Ready(Ok(()));
            } else if left < *last {
                *last = left;
                place.progressed(now);
                let until = (now + LINGER_STALL).min(*dropped_at + LINGER_MAX);
                stall.as_mut().reset(until);
            }
            if stall.as_mut().poll(cx).is_ready() {
                drained = Poll::Ready(Ok(()));
            }
        }
        if drained.is_pending() {
            // Woken by the socket, by the stream's drop, or by the linger's clock.
            out.drainer = Some(cx.waker().clone());
            return Poll::Pending;
        }
        out.drainer = None;
        out.backlog = false;
        if out.dropped {
            // What the socket did not take in time, or could not take, is dropped with
            // it.
            if (failed || !out.pending.is_empty())
                && let Some(batcher) = &draining.0.batcher
            {
                batcher.0.closed_unsent.fetch_add(1, Ordering::Relaxed);
                // Release: a reader that sees this count sees the one above.
                if evicted && batcher.0.linger_cut.fetch_add(1, Ordering::Release) == 0 {
                    // The first of a batcher says so; the count tells the rest.
                    tracing::warn!(
                        target: "dpop::uring",
                        lingering = MAX_LINGERING,
                        "a dropped connection was closed with bytes unsent: this thread holds its most connections whose peers are slow to take the rest (later ones are counted, not logged)"
                    );
                }
            }
            out.pending = Vec::new();
            out.stream = None;
        } else if out.pending.capacity() > crate::KEPT_CAPACITY {
            out.pending = Vec::new();
        }
        out.wake();
        Poll::Ready(())
    })
    .await;
}

/// Ends a drain whose task was dropped unfinished (its runtime ended), or before it
/// first ran (made before the spawn for that): the connection writes the rest itself,
/// straight to its socket.
pub(crate) struct Draining(pub(crate) Arc<Shared>);

impl Drop for Draining {
    fn drop(&mut self) {
        let backlog = {
            let mut out = self.0.lock();
            std::mem::replace(&mut out.backlog, false)
        };
        if backlog {
            hand_back(&self.0);
        }
    }
}
