//! A bounded pool of device sessions: at most `max` exist, callers beyond that wait a
//! bounded time for one to come free, and a session that failed is dropped instead of
//! being handed to the next caller.

use std::sync::{Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Up to `max` values of `T` (device sessions), made on demand.
#[derive(Debug)]
pub struct Pool<T> {
    state: Mutex<State<T>>,
    freed: Condvar,
    max: usize,
    wait: Duration,
}

#[derive(Debug)]
struct State<T> {
    idle: Vec<T>,
    /// Sessions in existence: idle ones plus those lent out.
    live: usize,
}

/// A session lent out by [`Pool::get`]; it goes back when dropped, unless
/// [`PoolGuard::discard`] said it is broken.
#[derive(Debug)]
pub struct PoolGuard<'p, T> {
    pool: &'p Pool<T>,
    value: Option<T>,
}

impl<T> Pool<T> {
    /// A pool of at most `max` (at least 1) sessions; [`Pool::get`] waits at most `wait`.
    #[must_use]
    pub fn new(max: usize, wait: Duration) -> Self {
        Self {
            state: Mutex::new(State {
                idle: Vec::new(),
                live: 0,
            }),
            freed: Condvar::new(),
            max: max.max(1),
            wait,
        }
    }

    /// Puts an already open session in the pool (the one opened to check the key).
    pub fn put(&self, value: T) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if state.live < self.max {
            state.live += 1;
            state.idle.push(value);
            drop(state);
            self.freed.notify_one();
        }
    }

    /// An idle session, or a new one from `open` when fewer than `max` exist, or the
    /// first to come free within the pool's wait.
    ///
    /// # Errors
    /// `Ok(None)` never; `Err(None)` when the wait ran out, `Err(Some(e))` when `open`
    /// failed.
    pub fn get<E>(
        &self,
        open: impl FnOnce() -> Result<T, E>,
    ) -> Result<PoolGuard<'_, T>, Option<E>> {
        // A wait too long to add to the clock (`Duration::MAX`) has no deadline.
        let deadline = Instant::now().checked_add(self.wait);
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            if let Some(value) = state.idle.pop() {
                return Ok(self.guard(value));
            }
            if state.live < self.max {
                state.live += 1;
                drop(state);
                return match open() {
                    Ok(value) => Ok(self.guard(value)),
                    Err(e) => {
                        self.forget();
                        Err(Some(e))
                    }
                };
            }
            state = match deadline {
                Some(deadline) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Err(None);
                    }
                    self.freed
                        .wait_timeout(state, left)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0
                }
                None => self
                    .freed
                    .wait(state)
                    .unwrap_or_else(PoisonError::into_inner),
            };
        }
    }

    fn guard(&self, value: T) -> PoolGuard<'_, T> {
        PoolGuard {
            pool: self,
            value: Some(value),
        }
    }

    /// One session fewer exists.
    fn forget(&self) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.live = state.live.saturating_sub(1);
        drop(state);
        self.freed.notify_one();
    }
}

impl<T> PoolGuard<'_, T> {
    /// Drops the session instead of returning it (it failed; the next caller opens a
    /// fresh one).
    pub fn discard(mut self) {
        self.value = None;
        self.pool.forget();
    }
}

impl<T> core::ops::Deref for PoolGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        self.value
            .as_ref()
            .unwrap_or_else(|| unreachable!("a guard holds its value until dropped"))
    }
}

impl<T> core::ops::DerefMut for PoolGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        self.value
            .as_mut()
            .unwrap_or_else(|| unreachable!("a guard holds its value until dropped"))
    }
}

impl<T> Drop for PoolGuard<'_, T> {
    fn drop(&mut self) {
        if let Some(value) = self.value.take() {
            let mut state = self
                .pool
                .state
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            state.idle.push(value);
            drop(state);
            self.pool.freed.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use super::Pool;

    #[test]
    fn at_most_max_sessions_exist_and_waiters_time_out() {
        let opened = AtomicUsize::new(0);
        let pool = Pool::new(2, Duration::from_millis(50));
        let open = || -> Result<usize, ()> { Ok(opened.fetch_add(1, Ordering::SeqCst)) };
        let a = pool.get(open).unwrap();
        let b = pool.get(open).unwrap();
        assert!(
            matches!(pool.get(open), Err(None)),
            "a third waits, then times out"
        );
        drop(a);
        let c = pool.get(open).unwrap();
        assert_eq!(*c, 0, "the freed session is reused");
        b.discard();
        let d = pool.get(open).unwrap();
        assert_eq!(*d, 2, "a discarded session is replaced by a new one");
        assert_eq!(opened.load(Ordering::SeqCst), 3);
    }

    /// `OpenOptions::wait` is public: a wait of `Duration::MAX` means no deadline, not
    /// a panic adding it to the clock at every signature.
    #[test]
    fn an_endless_wait_does_not_overflow_the_clock() {
        let pool = Pool::new(1, Duration::MAX);
        let held = pool.get(|| Ok::<u8, ()>(1)).unwrap();
        drop(held);
        assert_eq!(*pool.get(|| Ok::<u8, ()>(2)).unwrap(), 1);
    }

    #[test]
    fn a_failed_open_frees_its_place_and_a_waiter_wakes_when_one_returns() {
        let pool = Arc::new(Pool::new(1, Duration::from_secs(5)));
        assert!(matches!(pool.get(|| Err::<u8, _>("no")), Err(Some("no"))));
        let held = pool.get(|| Ok::<u8, ()>(7)).unwrap();
        let waiter = {
            let pool = Arc::clone(&pool);
            std::thread::spawn(move || *pool.get(|| Ok::<u8, ()>(9)).unwrap())
        };
        std::thread::sleep(Duration::from_millis(50));
        drop(held);
        assert_eq!(waiter.join().unwrap(), 7);
    }
}
