//! The idle connections of one upstream connection setting, kept by authority until a
//! request takes one again.
//!
//! Both kinds of pooled HTTP/1.1 connection use it: hyper's client connections (requests
//! with a body, WebSocket handshakes) and the gateway's own ([`crate::direct`]). What
//! differs is only how a connection tells that it may still carry a request, which the
//! caller passes in.
//!
//! While a list holds connections, a task on the runtime that owns them looks at every
//! one each [`SWEEP_EVERY`] (started by [`IdleList::checkin`]): one the upstream has closed, or one
//! idle for [`IDLE_TIMEOUT`], is closed then, as nginx closes a cached upstream connection
//! when its read event or its `keepalive_timeout` fires. Without it such a connection would
//! stay open (in `CLOSE_WAIT` once the upstream closed it) until the next request to that
//! authority, for good if none came.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant};

use http::uri::Authority;

/// An idle connection to an upstream is closed, rather than reused, after this long.
pub(crate) const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Idle connections kept per authority; more are closed when their response ends.
pub(crate) const MAX_IDLE: usize = 256;
/// The oldest idle connections looked at, at most, each time one is put back.
const SWEEP: usize = 2;
/// How often every idle connection is looked at while there are any.
pub(crate) const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// Whether two authorities are the same: byte for byte first (the lists are keyed by the
/// very authority the upstream's URL carries, so this is the usual answer), else as
/// `http` compares them (the host without regard to case).
pub(crate) fn same_authority(a: &Authority, b: &Authority) -> bool {
    a.as_str() == b.as_str() || a == b
}

/// Idle connections by authority, the most recently used last in each list. Locked only
/// by the serving thread that owns the pool, so the lock is uncontended.
pub(crate) struct IdleList<C> {
    lists: Mutex<Vec<(Authority, Vec<Parked<C>>)>>,
    /// Whether a sweeping task runs for this list; cleared, under the lock, by that task
    /// when it has found the list empty and stops.
    sweeping: AtomicBool,
}

/// An idle connection and when it became idle.
type Parked<C> = (C, Instant);

impl<C> Default for IdleList<C> {
    fn default() -> Self {
        Self {
            lists: Mutex::new(Vec::new()),
            sweeping: AtomicBool::new(false),
        }
    }
}

impl<C> IdleList<C> {
    /// How many idle connections there are, over all authorities.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        let lists = self.lists.lock().unwrap_or_else(PoisonError::into_inner);
        lists.iter().map(|(_, list)| list.len()).sum()
    }

    /// The most recently used connection to `authority` that `usable` accepts; those
    /// met on the way that it refuses, or that have been idle for [`IDLE_TIMEOUT`], are
    /// dropped (closed).
    pub(crate) fn checkout(
        &self,
        authority: &Authority,
        usable: impl FnMut(&mut C) -> bool,
    ) -> Option<C> {
        self.checkout_at(authority, Instant::now(), usable)
    }

    fn checkout_at(
        &self,
        authority: &Authority,
        now: Instant,
        mut usable: impl FnMut(&mut C) -> bool,
    ) -> Option<C> {
        let mut lists = self.lists.lock().unwrap_or_else(PoisonError::into_inner);
        let list = &mut lists
            .iter_mut()
            .find(|(a, _)| same_authority(a, authority))?
            .1;
        while let Some((mut conn, since)) = list.pop() {
            if now.duration_since(since) < IDLE_TIMEOUT && usable(&mut conn) {
                return Some(conn);
            }
        }
        None
    }

    fn checkin_at(
        &self,
        authority: Authority,
        conn: C,
        now: Instant,
        mut usable: impl FnMut(&mut C) -> bool,
    ) {
        let mut lists = self.lists.lock().unwrap_or_else(PoisonError::into_inner);
        let Some((_, list)) = lists
            .iter_mut()
            .find(|(a, _)| same_authority(a, &authority))
        else {
            lists.push((authority, vec![(conn, now)]));
            return;
        };
        let expired = list
            .iter()
            .take_while(|(_, since)| now.duration_since(*since) >= IDLE_TIMEOUT)
            .count();
        list.drain(..expired);
        let mut probed = 0;
        while probed < SWEEP && list.first_mut().is_some_and(|(c, _)| !usable(c)) {
            list.remove(0);
            probed += 1;
        }
        if list.len() < MAX_IDLE {
            list.push((conn, now));
        }
    }

    /// Drops (closes) every connection idle for [`IDLE_TIMEOUT`] or refused by `usable`,
    /// and forgets authorities left without any. Returns whether any are left; when none
    /// are, the list is marked as not swept (under the lock, so a connection put back
    /// after this look starts a new sweeper). The connections are closed after the lock
    /// is released.
    fn sweep_at(&self, now: Instant, mut usable: impl FnMut(&mut C) -> bool) -> bool {
        let mut closing = Vec::new();
        let mut lists = self.lists.lock().unwrap_or_else(PoisonError::into_inner);
        for (_, list) in lists.iter_mut() {
            closing.extend(list.extract_if(.., |(conn, since)| {
                now.duration_since(*since) >= IDLE_TIMEOUT || !usable(conn)
            }));
        }
        lists.retain(|(_, list)| !list.is_empty());
        let any = !lists.is_empty();
        if !any {
            self.sweeping.store(false, Ordering::Release);
        }
        drop(lists);
        drop(closing);
        any
    }

    /// Marks the list as not swept, under its lock.
    fn unmark(&self) {
        let _lists = self.lists.lock().unwrap_or_else(PoisonError::into_inner);
        self.sweeping.store(false, Ordering::Release);
    }
}

impl<C: Send + 'static> IdleList<C> {
    /// Keeps `conn` for the next request to `authority`, unless [`MAX_IDLE`] are kept
    /// already (it is dropped then). The oldest connections of that authority are
    /// looked at on the way: those past [`IDLE_TIMEOUT`], and (at most [`SWEEP`] of
    /// them) those `usable` refuses, are dropped, so that connections left at the bottom
    /// of a list after a burst do not stay open until they would be taken. Then the list
    /// is kept swept ([`IdleList::keep_swept`]) with the same `usable`: call it on the
    /// runtime the connection belongs to.
    pub(crate) fn checkin(
        self: &Arc<Self>,
        authority: Authority,
        conn: C,
        usable: fn(&mut C) -> bool,
    ) {
        self.checkin_at(authority, conn, Instant::now(), usable);
        self.keep_swept(usable);
    }

    /// Makes sure a task on the current runtime sweeps this list ([`SWEEP_EVERY`]) while
    /// it holds connections: called after each check-in, on the runtime the connections
    /// belong to (their sockets are registered with its reactor). The task holds the list
    /// weakly, so a pool dropped by a configuration reload ends it; it also ends when the
    /// list is empty, and the next check-in starts another. A task dropped before it ends
    /// (its runtime shut down) unmarks the list, so the next check-in starts one on its
    /// own runtime. Off a runtime nothing starts, and connections are looked at when one is
    /// checked in or out, as before.
    fn keep_swept(self: &Arc<Self>, usable: fn(&mut C) -> bool) {
        // Read first: once a sweeper runs (the usual case) a check-in writes nothing here.
        if self.sweeping.load(Ordering::Acquire) || self.sweeping.swap(true, Ordering::AcqRel) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            self.unmark();
            return;
        };
        let mut sweeper = Sweeper {
            list: Arc::downgrade(self),
            running: true,
        };
        runtime.spawn(async move {
            loop {
                tokio::time::sleep(SWEEP_EVERY).await;
                let Some(list) = sweeper.list.upgrade() else {
                    return;
                };
                if !list.sweep_at(Instant::now(), usable) {
                    sweeper.ended();
                    return;
                }
            }
        });
    }
}

/// The sweeping task's hold on its list: unmarks the list if the task is dropped before
/// it has ended by itself.
struct Sweeper<C> {
    list: Weak<IdleList<C>>,
    /// Whether the list still counts on this task.
    running: bool,
}

impl<C> Sweeper<C> {
    /// The task ends by itself: the sweep that found the list empty unmarked it, under its
    /// lock (a check-in since may have started another task).
    fn ended(&mut self) {
        self.running = false;
    }
}

impl<C> Drop for Sweeper<C> {
    fn drop(&mut self) {
        if self.running
            && let Some(list) = self.list.upgrade()
        {
            list.unmark();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A connection in these tests: its number, and whether it may carry a request.
    type Fake = (u32, bool);

    fn usable(c: &mut Fake) -> bool {
        c.1
    }

    fn a(s: &'static str) -> Authority {
        Authority::from_static(s)
    }

    #[test]
    fn authorities_match_as_http_compares_them() {
        assert!(same_authority(&a("127.0.0.1:8080"), &a("127.0.0.1:8080")));
        assert!(same_authority(&a("API.example.com"), &a("api.example.com")));
        assert!(!same_authority(&a("127.0.0.1:8080"), &a("127.0.0.1:8081")));
        assert!(!same_authority(&a("127.0.0.1:8080"), &a("127.0.0.1:808")));
        assert!(!same_authority(&a("api.example.com"), &a("api.example.co")));
    }

    #[test]
    fn the_most_recently_used_connection_of_the_same_authority_is_taken() {
        let idle = Arc::new(IdleList::default());
        idle.checkin(a("up:1"), (1, true), usable);
        idle.checkin(a("up:2"), (2, true), usable);
        idle.checkin(a("UP:1"), (3, true), usable);
        assert_eq!(idle.checkout(&a("up:1"), usable), Some((3, true)));
        assert_eq!(idle.checkout(&a("up:1"), usable), Some((1, true)));
        assert_eq!(idle.checkout(&a("up:1"), usable), None);
        assert_eq!(idle.checkout(&a("up:3"), usable), None);
        assert_eq!(idle.len(), 1);
    }

    #[test]
    fn connections_that_are_not_usable_or_expired_are_dropped_on_the_way() {
        let idle = IdleList::default();
        let start = Instant::now();
        let later = start + IDLE_TIMEOUT;
        idle.checkin_at(a("up:1"), (1, true), start, usable);
        idle.checkin_at(a("up:1"), (2, true), start + Duration::from_secs(1), usable);
        idle.checkin_at(
            a("up:1"),
            (3, false),
            start + Duration::from_secs(2),
            usable,
        );
        // 3 is refused, 2 is still young enough, 1 stays behind it.
        assert_eq!(idle.checkout_at(&a("up:1"), later, usable), Some((2, true)));
        assert_eq!(idle.len(), 1);
        // 1 has been idle for exactly the limit.
        assert_eq!(idle.checkout_at(&a("up:1"), later, usable), None);
        assert_eq!(idle.len(), 0);
    }

    #[test]
    fn a_checkin_drops_the_expired_and_sweeps_a_few_unusable_from_the_bottom() {
        let idle = IdleList::default();
        let start = Instant::now();
        for n in 0..2 {
            idle.checkin_at(a("up:1"), (n, true), start, usable);
        }
        for n in 2..5 {
            idle.checkin_at(a("up:1"), (n, false), start + IDLE_TIMEOUT / 2, usable);
        }
        idle.checkin_at(a("up:1"), (5, true), start + IDLE_TIMEOUT / 2, usable);
        assert_eq!(idle.len(), 6);
        // 0 and 1 expired; then two of the three unusable are swept, not the third.
        idle.checkin_at(a("up:1"), (6, true), start + IDLE_TIMEOUT, usable);
        let mut left = Vec::new();
        while let Some(c) = idle.checkout_at(&a("up:1"), start + IDLE_TIMEOUT, |_| true) {
            left.push(c.0);
        }
        assert_eq!(left, [6, 5, 4]);
    }

    #[test]
    fn a_sweep_drops_the_expired_and_every_unusable_and_says_whether_any_are_left() {
        let idle = IdleList::default();
        let start = Instant::now();
        idle.checkin_at(a("up:1"), (0, true), start, usable);
        for n in 1..5 {
            idle.checkin_at(a("up:1"), (n, n % 2 == 0), start + IDLE_TIMEOUT / 2, usable);
        }
        idle.checkin_at(a("up:2"), (5, false), start + IDLE_TIMEOUT / 2, usable);
        idle.sweeping.store(true, Ordering::Release);
        assert!(idle.sweep_at(start + IDLE_TIMEOUT, usable));
        assert!(idle.sweeping.load(Ordering::Acquire), "still swept");
        // 0 expired; 1 and 3 refused; every one of up:2 refused, and up:2 forgotten.
        assert_eq!(idle.len(), 2);
        assert_eq!(idle.lists.lock().unwrap().len(), 1);
        assert_eq!(
            idle.checkout_at(&a("up:1"), start, |_| true),
            Some((4, true))
        );
        assert_eq!(
            idle.checkout_at(&a("up:1"), start, |_| true),
            Some((2, true))
        );
        assert!(!idle.sweep_at(start + IDLE_TIMEOUT, usable));
        assert!(
            !idle.sweeping.load(Ordering::Acquire),
            "a new check-in starts a sweeper"
        );
    }

    /// The sweeping task closes what the upstream closed without a request to look, stops
    /// once the list is empty, and the next check-in starts it again.
    #[tokio::test(start_paused = true)]
    async fn the_sweeper_runs_while_there_are_connections_and_restarts_after() {
        let idle = Arc::new(IdleList::default());
        idle.checkin(a("up:1"), (1, true), usable);
        idle.checkin(a("up:1"), (2, false), usable);
        assert!(idle.sweeping.load(Ordering::Acquire));
        tokio::time::sleep(SWEEP_EVERY + Duration::from_millis(1)).await;
        assert_eq!(idle.len(), 1, "the unusable one went without a checkout");
        assert!(idle.sweeping.load(Ordering::Acquire));
        assert_eq!(idle.checkout(&a("up:1"), usable), Some((1, true)));
        tokio::time::sleep(SWEEP_EVERY).await;
        assert!(!idle.sweeping.load(Ordering::Acquire), "stopped when empty");
        idle.checkin(a("up:1"), (3, false), usable);
        tokio::time::sleep(SWEEP_EVERY + Duration::from_millis(1)).await;
        assert_eq!(idle.len(), 0);
    }

    fn timed_runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap()
    }

    /// A sweeper whose runtime shuts down before it ends unmarks its list: a check-in on
    /// another runtime then starts one there.
    #[test]
    fn a_sweeper_dropped_with_its_runtime_lets_the_next_check_in_start_another() {
        let idle = Arc::new(IdleList::default());
        let first = timed_runtime();
        first.block_on(async {
            idle.checkin(a("up:1"), (1, true), usable);
        });
        assert!(idle.sweeping.load(Ordering::Acquire));
        drop(first);
        assert!(!idle.sweeping.load(Ordering::Acquire));
        let second = timed_runtime();
        second.block_on(async {
            idle.checkin(a("up:1"), (2, false), usable);
            assert!(idle.sweeping.load(Ordering::Acquire));
            tokio::time::sleep(SWEEP_EVERY + Duration::from_millis(50)).await;
        });
        assert_eq!(idle.len(), 1, "swept on the second runtime");
    }

    #[test]
    fn no_more_than_max_idle_are_kept_per_authority() {
        let idle = Arc::new(IdleList::default());
        for n in 0..=u32::try_from(MAX_IDLE).unwrap() {
            idle.checkin(a("up:1"), (n, true), usable);
        }
        idle.checkin(a("up:2"), (0, true), usable);
        assert_eq!(idle.len(), MAX_IDLE + 1);
        let newest = idle.checkout(&a("up:1"), usable).unwrap();
        assert_eq!(newest.0, u32::try_from(MAX_IDLE).unwrap() - 1);
    }
}
