//! Spreading connections over the serving threads.
//!
//! Every serving thread waits on the same listening socket and the first one the kernel
//! wakes takes the connection. Nothing in that race looks at how many connections each
//! thread already serves: on a busy machine one thread can take most of a burst of new
//! connections (measured: 72 % of the gateway's CPU on one of two threads under a load of
//! 32 keep-alive connections), and since a connection stays on the thread that serves it,
//! that thread's core saturates while the other idles. So the thread that accepts a
//! connection looks at every thread's count and, when another serves clearly fewer
//! ([`Balance::place`]), hands the socket to that thread through its queue; the receiving
//! thread registers it with its own runtime and serves it from there. This happens once per
//! connection, never per request.

use std::net::SocketAddr;
use std::sync::Arc;

use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::{OwnedSemaphorePermit, mpsc};

/// A thread keeps a new connection unless another thread serves at least this many fewer;
/// so a thread that leads by one does not pay a hand-off for every connection, and the
/// counts differ by at most this much, beyond what connections closing on one side leave
/// and what threads accepting at the same instant add (each reads the counts before the
/// others' new connections are in them).
const SLACK: i64 = 2;

/// The serving threads' connection counts, and each one's queue of handed-over connections.
#[derive(Debug)]
pub(crate) struct Balance {
    lanes: Box<[Lane]>,
}

#[derive(Debug)]
struct Lane {
    /// Connections this thread serves (also the `dpop_serving_thread_connections` gauge).
    open: Gauge,
    handoff: mpsc::UnboundedSender<Handoff>,
}

/// A connection accepted on one thread, to be served on another.
#[derive(Debug)]
pub(crate) struct Handoff {
    /// Its slot under `max_connections`, already counted on the receiving thread.
    pub(crate) held: Held,
    /// Taken off the accepting thread's runtime: still non-blocking, registered with none.
    pub(crate) stream: std::net::TcpStream,
    pub(crate) peer: SocketAddr,
}

impl Balance {
    /// A balance over one thread per gauge; each thread's receiving end of its queue, in
    /// the same order.
    pub(crate) fn new(gauges: Vec<Gauge>) -> (Arc<Self>, Vec<mpsc::UnboundedReceiver<Handoff>>) {
        let (lanes, queues): (Vec<_>, Vec<_>) = gauges
            .into_iter()
            .map(|open| {
                let (handoff, queue) = mpsc::unbounded_channel();
                (Lane { open, handoff }, queue)
            })
            .unzip();
        (
            Arc::new(Self {
                lanes: lanes.into_boxed_slice(),
            }),
            queues,
        )
    }

    /// Which thread should serve the connection thread `me` has just accepted: the one
    /// serving the fewest, if that is at least [`SLACK`] fewer than `me`; else `me`. Among
    /// threads serving equally few, the first after `me` (in a circle), so that threads
    /// accepting at the same time do not all pick the same one.
    pub(crate) fn place(&self, me: usize) -> usize {
        let Some(mine) = self.lanes.get(me).map(|l| l.open.get()) else {
            return me;
        };
        let n = self.lanes.len();
        let least = (1..n)
            .map(|step| (me + step) % n)
            .filter_map(|i| self.lanes.get(i).map(|l| (l.open.get(), i)))
            .min_by_key(|&(open, _)| open);
        match least {
            Some((fewest, thread)) if mine.saturating_sub(fewest) >= SLACK => thread,
            _ => me,
        }
    }

    /// Counts a connection on `thread` for as long as the returned [`Held`] lives.
    pub(crate) fn hold(&self, thread: usize, permit: OwnedSemaphorePermit) -> Held {
        Held::new(permit, self.lanes.get(thread).map(|l| l.open.clone()))
    }

    /// Queues `handoff` for `thread`. When that thread no longer takes connections (it is
    /// draining, or has ended), the connection comes back, to be served by the caller.
    pub(crate) fn hand_off(&self, thread: usize, handoff: Handoff) -> Result<(), Handoff> {
        match self.lanes.get(thread) {
            Some(lane) => lane.handoff.send(handoff).map_err(|e| e.0),
            None => Err(handoff),
        }
    }
}

/// A client connection's slot under `max_connections`, counted on the thread that serves
/// it; both are given back when it is dropped.
#[derive(Debug)]
pub(crate) struct Held {
    permit: Option<OwnedSemaphorePermit>,
    open: Option<Gauge>,
}

impl Held {
    fn new(permit: OwnedSemaphorePermit, open: Option<Gauge>) -> Self {
        if let Some(open) = &open {
            open.inc();
        }
        Self {
            permit: Some(permit),
            open,
        }
    }

    /// The same slot, counted on `thread` instead.
    pub(crate) fn move_to(mut self, balance: &Balance, thread: usize) -> Self {
        if let Some(open) = self.open.take() {
            open.dec();
        }
        match self.permit.take() {
            Some(permit) => balance.hold(thread, permit),
            // Only `new` makes one, always with a permit.
            None => self,
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if let Some(open) = &self.open {
            open.dec();
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::sync::Semaphore;

    use super::*;

    fn balance(threads: usize) -> (Arc<Balance>, Vec<Gauge>) {
        let gauges: Vec<Gauge> = (0..threads).map(|_| Gauge::default()).collect();
        let (balance, _queues) = Balance::new(gauges.clone());
        (balance, gauges)
    }

    fn permit() -> OwnedSemaphorePermit {
        Arc::new(Semaphore::new(1)).try_acquire_owned().unwrap()
    }

    #[test]
    fn keeps_the_connection_unless_another_thread_serves_clearly_fewer() {
        let (balance, gauges) = balance(3);
        assert_eq!(balance.place(0), 0, "all idle");
        gauges[0].set(1);
        assert_eq!(balance.place(0), 0, "one ahead: kept");
        gauges[0].set(2);
        assert_eq!(
            balance.place(0),
            1,
            "two ahead: the first of the least busy after 0"
        );
        // Ties: the first after the caller, going round.
        let set = |counts: [i64; 3]| {
            for (gauge, n) in gauges.iter().zip(counts) {
                gauge.set(n);
            }
        };
        set([0, 0, 2]);
        assert_eq!(balance.place(2), 0, "from 2, the circle goes on with 0");
        set([0, 2, 0]);
        assert_eq!(balance.place(1), 2);
        set([2, 0, 0]);
        gauges[1].set(5);
        assert_eq!(balance.place(0), 2);
        gauges[2].set(1);
        assert_eq!(balance.place(0), 0, "2 against 1: kept");
        assert_eq!(balance.place(1), 2, "5 against 1");
        assert_eq!(balance.place(7), 7, "an unknown thread keeps its own");
    }

    #[test]
    fn a_held_slot_counts_while_it_lives_and_moves_with_its_connection() {
        let (balance, gauges) = balance(2);
        let semaphore = Arc::new(Semaphore::new(1));
        let held = balance.hold(0, Arc::clone(&semaphore).try_acquire_owned().unwrap());
        assert_eq!((gauges[0].get(), gauges[1].get()), (1, 0));
        assert_eq!(semaphore.available_permits(), 0);
        let held = held.move_to(&balance, 1);
        assert_eq!((gauges[0].get(), gauges[1].get()), (0, 1));
        assert_eq!(
            semaphore.available_permits(),
            0,
            "the slot moved, not freed"
        );
        drop(held);
        assert_eq!((gauges[0].get(), gauges[1].get()), (0, 0));
        assert_eq!(semaphore.available_permits(), 1);
    }

    #[test]
    fn a_thread_that_takes_no_more_connections_gives_them_back() {
        let gauges: Vec<Gauge> = (0..2).map(|_| Gauge::default()).collect();
        let (balance, mut queues) = Balance::new(gauges.clone());
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let stream = std::net::TcpStream::connect(addr).unwrap();
        let handoff = Handoff {
            held: balance.hold(1, permit()),
            stream,
            peer: addr,
        };
        queues[1].close();
        let back = balance.hand_off(1, handoff).unwrap_err();
        let held = back.held.move_to(&balance, 0);
        assert_eq!((gauges[0].get(), gauges[1].get()), (1, 0));
        drop(held);
        let stream = std::net::TcpStream::connect(addr).unwrap();
        let handoff = Handoff {
            held: balance.hold(0, permit()),
            stream,
            peer: addr,
        };
        balance.hand_off(0, handoff).unwrap();
        let queued = queues[0].try_recv().unwrap();
        assert_eq!(queued.peer, addr);
        assert_eq!(gauges[0].get(), 1);
    }
}
