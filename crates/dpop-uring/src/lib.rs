//! Socket writes gathered per serving thread and handed to the kernel in one system call.
//!
//! On a server that shares its cores with its peers, every `send` that wakes a sleeping
//! peer lets that peer take the core at the system call's return: one involuntary
//! context switch per write. A [`BatchedStream`] accepts a connection's writes into a
//! buffer instead, and its thread's [`Batcher`], a task woken by the first such write,
//! hands the writes of every connection of the thread to the kernel in a single
//! `io_uring_enter` once the runtime's ready tasks have run: the peers wake once per
//! turn and find all their bytes.
//!
//! The rules that keep it correct:
//! - A send is submitted non-blocking (`MSG_DONTWAIT`), so the kernel completes it during
//!   the submission; the batcher waits for every completion before it goes on, so no
//!   buffer is released, moved or reused while the kernel may read it.
//! - A short send or `EAGAIN` leaves the rest to a task of the batcher's runtime, which
//!   writes it through the runtime's readiness as a plain socket would; the connection
//!   accepts nothing more until it is written, and needs no flush for it to go out. An
//!   error is returned by the connection's next write or flush.
//! - `poll_flush` is ready only when every accepted byte has reached the kernel.
//! - A connection dropped with bytes still queued keeps its socket open until they are
//!   sent, then closes it, as a plain socket's close leaves its buffered bytes to the
//!   kernel: while its socket takes more, it goes on writing, and it gives up (dropping
//!   the rest) when the socket has taken none of it for 5 s, or 60 s after the drop. (A
//!   socket takes more once its peer has read about a third of its send buffer: a peer
//!   that reads slowly makes progress in steps.) At most 256
//!   dropped connections per batcher linger so (each holds up to twice
//!   [`MAX_PENDING`]). When one more is dropped, the one whose socket has taken none of
//!   its rest for the longest closes at once, its rest dropped, and the new one lingers,
//!   if that socket has taken nothing for at least 2.5 s (half the stall); when every
//!   lingering socket took some more within that time, the new one closes at once
//!   instead. A stream
//!   whose batcher's runtime has ended has no task left to wait on: its rest gets one
//!   attempt before the close.
//! - A stream writes straight to its socket, one system call per write as a plain
//!   socket does, when its thread has no batcher (see [`Batcher::start`]), when the
//!   batcher's runtime has ended, and when the kernel refuses io_uring (an old kernel, a
//!   seccomp profile, `kernel.io_uring_disabled`).

#![deny(unsafe_code)]

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

#[cfg(target_os = "linux")]
mod ring;
#[cfg(not(target_os = "linux"))]
mod ring {
    //! Elsewhere there is no io_uring: no batcher ever starts.
    use std::io;
    use std::sync::Arc;

    /// Never made on this system.
    #[derive(Clone, Debug)]
    pub struct Batcher(());

    impl Batcher {
        /// Refused: io_uring is Linux's.
        ///
        /// # Errors
        /// Always.
        pub fn start() -> io::Result<Self> {
            Err(io::ErrorKind::Unsupported.into())
        }

        /// None.
        #[must_use]
        pub fn current() -> Option<Self> {
            None
        }

        /// Zero.
        #[must_use]
        pub fn stats(&self) -> crate::Stats {
            crate::Stats::default()
        }

        pub(crate) fn enqueue(&self, shared: Arc<crate::Shared>) -> Result<(), Arc<crate::Shared>> {
            Err(shared)
        }
    }

    pub(crate) fn probe() -> io::Result<()> {
        Err(io::ErrorKind::Unsupported.into())
    }
}

pub use ring::Batcher;

/// What a batcher has done (for tests and diagnostics).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// `io_uring_enter` calls that submitted sends.
    pub submissions: u64,
    /// Sends submitted.
    pub sends: u64,
    /// Sends that came back short or would have blocked: their rest went out through
    /// readiness.
    pub unfinished: u64,
    /// Dropped connections closed with bytes still unsent while their batcher ran: their
    /// socket took none of the rest for the linger's stall, or not all of it by its
    /// longest linger,
    /// or their socket failed, or the batcher held its most lingering connections
    /// (counted in `linger_cut` too).
    pub closed_unsent: u64,
    /// Dropped connections closed with bytes unsent before their linger would have ended,
    /// because the batcher held its most lingering connections: one pushed out for a
    /// newer one, or the newer one itself when every lingering socket was still taking
    /// more.
    pub linger_cut: u64,
}

/// The most bytes one connection keeps accepted and not yet handed to the kernel; a
/// write beyond it waits for its batcher's next submission.
pub const MAX_PENDING: usize = 64 * 1024;

/// The most buffer capacity a connection keeps between its writes.
const KEPT_CAPACITY: usize = 16 * 1024;

/// Whether the kernel lets this process use io_uring the way a [`Batcher`] does (a ring,
/// and its send operation): the reason when it does not (an old kernel, a seccomp
/// profile, `kernel.io_uring_disabled`, another operating system).
///
/// # Errors
/// The kernel's refusal.
pub fn probe() -> io::Result<()> {
    ring::probe()
}

/// A TCP connection whose writes go out in its thread's batch (see the crate
/// documentation), or straight to its socket.
pub struct BatchedStream {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for BatchedStream {
    /// The state, never the bytes (they may be credentials on their way upstream).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let out = self.shared.lock();
        f.debug_struct("BatchedStream")
            .field("pending", &out.pending.len())
            .field("queued", &out.queued)
            .field("backlog", &out.backlog)
            .field("direct", &out.direct)
            .field("failed", &out.failed)
            .finish_non_exhaustive()
    }
}

/// What a connection and its batcher share.
pub(crate) struct Shared {
    #[cfg(target_os = "linux")]
    fd: std::os::fd::RawFd,
    batcher: Option<Batcher>,
    state: Mutex<Out>,
}

#[derive(Default)]
pub(crate) struct Out {
    /// The socket: `None` once the stream was dropped and nothing was left to send.
    stream: Option<TcpStream>,
    /// Bytes accepted and not yet handed to the kernel, in order.
    pending: Vec<u8>,
    /// In the batcher's queue or submission: it owns the sending of `pending`.
    queued: bool,
    /// A send came back short or would have blocked: the batcher's drain task writes
    /// `pending` through readiness, and nothing more is accepted until it is done.
    backlog: bool,
    /// Writes go straight to the socket (no batcher, or it has ended).
    direct: bool,
    /// A send failed (an `errno`): every later write and flush fails with it.
    failed: Option<i32>,
    /// The task waiting for `pending` to empty (or for room in it).
    waker: Option<Waker>,
    /// The stream was dropped: close the socket once `pending` is sent.
    dropped: bool,
    /// The drain task, while it waits for the socket.
    drainer: Option<Waker>,
}

impl Shared {
    pub(crate) fn lock(&self) -> MutexGuard<'_, Out> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Out {
    fn check_failed(&self) -> io::Result<()> {
        match self.failed {
            Some(code) => Err(io::Error::from_raw_os_error(code)),
            None => Ok(()),
        }
    }

    fn wake(&mut self) {
        if let Some(w) = self.waker.take() {
            w.wake();
        }
    }

    /// Whether the batcher owns the sending of `pending` (queued, or draining a short
    /// send's rest).
    fn in_batch(&self) -> bool {
        self.queued || self.backlog
    }

    /// Puts `front` (a send's unsent bytes) ahead of what was accepted since.
    pub(crate) fn put_front(&mut self, mut front: Vec<u8>) {
        front.extend_from_slice(&self.pending);
        self.pending = front;
    }

    /// Closes a dropped stream's socket: what a plain socket would have taken before
    /// its close, one non-blocking attempt at the pending bytes, then the close.
    pub(crate) fn close_dropped(&mut self) {
        if !self.pending.is_empty()
            && let Some(stream) = &self.stream
        {
            let _ = stream.try_write(&self.pending);
        }
        self.pending = Vec::new();
        self.stream = None;
    }

    /// Writes `bufs` straight to the socket, after what a batcher handed back.
    fn poll_write_direct(
        &mut self,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        ready!(self.poll_drain(cx))?;
        Pin::new(self.stream()).poll_write_vectored(cx, bufs)
    }

    /// Writes `pending` to the socket through readiness, waking `cx` when it can go on.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.pending.is_empty() {
            let Some(stream) = self.stream.as_mut() else {
                self.pending = Vec::new();
                break;
            };
            match ready!(Pin::new(stream).poll_write(cx, &self.pending)) {
                Ok(0) => {
                    self.failed = Some(libc::EPIPE);
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                Ok(n) => {
                    self.pending.drain(..n);
                }
                Err(e) => {
                    self.failed = Some(e.raw_os_error().unwrap_or(libc::EPIPE));
                    self.pending = Vec::new();
                    return Poll::Ready(Err(e));
                }
            }
        }
        Poll::Ready(Ok(()))
    }

    /// The socket of a stream that is still alive.
    fn stream(&mut self) -> &mut TcpStream {
        self.stream
            .as_mut()
            .expect("a live stream's socket is taken only when it is dropped")
    }
}

impl BatchedStream {
    /// Wraps `stream`; its writes are batched when this thread has a running
    /// [`Batcher`] (see [`Batcher::start`]).
    #[must_use]
    pub fn new(stream: TcpStream) -> Self {
        Self::with(stream, Batcher::current())
    }

    /// Wraps `stream`, its writes batched by `batcher` (or, once that has ended,
    /// written straight to the socket).
    ///
    /// The batcher sends on its own runtime's turns: a write accepted while that runtime
    /// is alive but not being driven (its thread blocked elsewhere) waits for it, flush
    /// included. Writes from the batcher's own thread, as [`BatchedStream::new`] makes
    /// them, never wait that way.
    #[must_use]
    pub fn with_batcher(stream: TcpStream, batcher: Batcher) -> Self {
        Self::with(stream, Some(batcher))
    }

    fn with(stream: TcpStream, batcher: Option<Batcher>) -> Self {
        Self {
            shared: Arc::new(Shared {
                #[cfg(target_os = "linux")]
                fd: std::os::fd::AsRawFd::as_raw_fd(&stream),
                state: Mutex::new(Out {
                    direct: batcher.is_none(),
                    stream: Some(stream),
                    ..Out::default()
                }),
                batcher,
            }),
        }
    }

    /// Whether this connection's writes are batched now.
    #[must_use]
    pub fn is_batched(&self) -> bool {
        !self.shared.lock().direct
    }

    /// Accepts the bytes of `bufs` (up to [`MAX_PENDING`] held) for the next batch, or
    /// writes them straight to the socket.
    fn poll_put(&self, cx: &mut Context<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        let mut out = self.shared.lock();
        out.check_failed()?;
        if out.in_batch() {
            if out.pending.len() >= MAX_PENDING || out.backlog {
                out.waker = Some(cx.waker().clone());
                return Poll::Pending;
            }
        } else if out.direct {
            return out.poll_write_direct(cx, bufs);
        }
        let before = out.pending.len();
        let room = MAX_PENDING - before;
        for buf in bufs {
            let take = buf.len().min(room - (out.pending.len() - before));
            out.pending.extend_from_slice(&buf[..take]);
        }
        let taken = out.pending.len() - before;
        if taken == 0 || out.queued {
            return Poll::Ready(Ok(taken));
        }
        out.queued = true;
        drop(out);
        let Some(batcher) = &self.shared.batcher else {
            unreachable!("a stream without a batcher is direct");
        };
        if batcher.enqueue(Arc::clone(&self.shared)).is_ok() {
            return Poll::Ready(Ok(taken));
        }
        // The batcher has ended: take the bytes back and write them (and everything
        // after them) straight to the socket.
        let mut out = self.shared.lock();
        out.queued = false;
        out.direct = true;
        out.pending.truncate(before);
        out.poll_write_direct(cx, bufs)
    }
}

impl AsyncRead for BatchedStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        // Reads and writes register separate wakers with the runtime, so the batcher's
        // drain task writing this socket does not take the reader's.
        Pin::new(self.shared.lock().stream()).poll_read(cx, buf)
    }
}

impl AsyncWrite for BatchedStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_put(cx, &[io::IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.poll_put(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut out = self.shared.lock();
        out.check_failed()?;
        if out.in_batch() {
            out.waker = Some(cx.waker().clone());
            return Poll::Pending;
        }
        ready!(out.poll_drain(cx))?;
        Pin::new(out.stream()).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.as_mut().poll_flush(cx))?;
        Pin::new(self.shared.lock().stream()).poll_shutdown(cx)
    }
}

impl Drop for BatchedStream {
    fn drop(&mut self) {
        let mut out = self.shared.lock();
        out.dropped = true;
        if out.in_batch() {
            // The batcher sends what was accepted, then closes the socket; a drain
            // waiting for room goes on while the peer reads (see `ring::drain_task`).
            if let Some(w) = out.drainer.take() {
                w.wake();
            }
            return;
        }
        // Bytes an ended batcher handed back may still be pending.
        out.close_dropped();
    }
}

#[cfg(test)]
mod tests;
