//! Time limits on a timer that is kept and moved on, rather than made for each request.
//!
//! A Tokio timer enters the runtime's timer wheel when first polled and leaves it when
//! dropped, each under the time driver's lock. Requests that follow one another (on one
//! client connection, or one upstream connection) can share one timer instead: moving
//! its deadline later is one compare-and-swap on the timer's state, and the wheel, when
//! the old deadline comes round, files the timer again under the new one. Only a timer
//! that has fired (its connection sat idle past the deadline) or that is moved earlier
//! goes back through the lock.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::Poll;
use std::time::Duration;

use tokio::time::{Instant, Sleep};

/// The instant `limit` from now: a limit too long to count (a configuration's "no limit"
/// of `i64::MAX` seconds) is about thirty years, as with Tokio's own `timeout`, never a
/// panic.
pub(crate) fn after(limit: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(limit)
        .or_else(|| now.checked_add(Duration::from_secs(86_400 * 365 * 30)))
        .unwrap_or(now)
}

/// `kept` set to `at`, or a new timer for `at` when there is none.
fn armed(kept: Option<Pin<Box<Sleep>>>, at: Instant) -> Pin<Box<Sleep>> {
    match kept {
        Some(mut sleep) => {
            sleep.as_mut().reset(at);
            sleep
        }
        None => Box::pin(tokio::time::sleep_until(at)),
    }
}

/// A timer kept for the next time limit.
#[derive(Default)]
pub(crate) struct Deadline(Option<Pin<Box<Sleep>>>);

impl std::fmt::Debug for Deadline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Deadline")
            .field(&self.0.as_ref().map(|s| s.deadline()))
            .finish()
    }
}

impl Deadline {
    /// Runs `fut` until it finishes or `at` passes, whichever comes first: `None` when
    /// the time ran out (`fut` is dropped then).
    ///
    /// `fut` is polled first, so a future that is ready when the time has just run out
    /// still counts. The timer is looked at outside Tokio's co-operative budget: a
    /// future that spends the task's budget cannot keep its own limit from being seen.
    pub(crate) async fn limit<F: Future>(&mut self, at: Instant, fut: F) -> Option<F::Output> {
        let kept = self.0.take();
        let sleep = self.0.insert(armed(kept, at));
        let mut fut = std::pin::pin!(fut);
        std::future::poll_fn(|cx| {
            if let Poll::Ready(out) = fut.as_mut().poll(cx) {
                return Poll::Ready(Some(out));
            }
            let mut elapsed = tokio::task::coop::unconstrained(sleep.as_mut());
            Pin::new(&mut elapsed).poll(cx).map(|()| None)
        })
        .await
    }
}

/// A [`Deadline`] that the requests of one client connection take in turn. Requests of
/// HTTP/1.1 come one after another and always find it; concurrent HTTP/2 requests that
/// find it taken make their own, and the first to finish leaves its own behind.
#[derive(Clone, Default)]
pub(crate) struct SharedDeadline(Arc<Mutex<Deadline>>);

impl SharedDeadline {
    /// [`Deadline::limit`] on the shared timer, or on a new one while it is in use.
    pub(crate) async fn limit<F: Future>(&self, at: Instant, fut: F) -> Option<F::Output> {
        let mut deadline = std::mem::take(&mut *self.lock());
        let out = deadline.limit(at, fut).await;
        self.give_back(deadline.0);
        out
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Deadline> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Keeps `sleep` unless another timer came back first (it is dropped then).
    fn give_back(&self, sleep: Option<Pin<Box<Sleep>>>) {
        let mut kept = self.lock();
        if kept.0.is_none() {
            kept.0 = sleep;
        }
    }

    /// The kept timer set to `at`, or a new one while it is lent out.
    fn lend(&self, at: Instant) -> Lent {
        let kept = self.lock().0.take();
        Lent {
            sleep: Some(armed(kept, at)),
            home: self.clone(),
        }
    }
}

/// hyper's timer for one HTTP/1.1 client connection. hyper makes a new sleep for every
/// request head it waits for (its header read timeout) and drops it once the head is
/// in; this one lends out the connection's kept Tokio timer instead, which comes back
/// when hyper drops the sleep.
impl hyper::rt::Timer for SharedDeadline {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(self.lend(after(duration)))
    }

    fn sleep_until(&self, deadline: std::time::Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(self.lend(deadline.into()))
    }

    fn reset(&self, sleep: &mut Pin<Box<dyn hyper::rt::Sleep>>, new_deadline: std::time::Instant) {
        match sleep.as_mut().downcast_mut_pin::<Lent>() {
            Some(mut lent) => {
                if let Some(sleep) = &mut lent.sleep {
                    sleep.as_mut().reset(new_deadline.into());
                }
            }
            None => *sleep = self.sleep_until(new_deadline),
        }
    }

    fn now(&self) -> std::time::Instant {
        Instant::now().into()
    }
}

/// A kept timer on loan to hyper.
struct Lent {
    /// Always there until dropped.
    sleep: Option<Pin<Box<Sleep>>>,
    home: SharedDeadline,
}

impl Future for Lent {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<()> {
        match &mut self.sleep {
            Some(sleep) => sleep.as_mut().poll(cx),
            None => Poll::Ready(()),
        }
    }
}

impl hyper::rt::Sleep for Lent {}

impl Drop for Lent {
    fn drop(&mut self) {
        self.home.give_back(self.sleep.take());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    /// Whether `t` is `at`, give or take the timer wheel's millisecond.
    fn about(t: Instant, at: Instant) -> bool {
        t + MS >= at && t <= at + MS
    }

    #[tokio::test(start_paused = true)]
    async fn a_limit_too_long_to_count_is_decades_away_and_no_panic() {
        let now = Instant::now();
        for limit in [Duration::MAX, Duration::from_secs(i64::MAX.unsigned_abs())] {
            let at = after(limit);
            assert!(
                at > now + Duration::from_secs(86_400 * 365 * 29),
                "{limit:?}"
            );
            let mut deadline = Deadline::default();
            assert_eq!(deadline.limit(at, async { 1 }).await, Some(1));
        }
        assert!(about(after(10 * MS), now + 10 * MS));
    }

    #[tokio::test(start_paused = true)]
    async fn a_future_that_ends_in_time_is_answered_and_one_that_does_not_is_cut() {
        let mut deadline = Deadline::default();
        let now = Instant::now();
        assert_eq!(deadline.limit(now + 10 * MS, async { 1 }).await, Some(1));
        let slow = tokio::time::sleep(20 * MS);
        assert_eq!(deadline.limit(now + 10 * MS, slow).await, None);
        assert!(about(Instant::now(), now + 10 * MS));
    }

    /// The timer kept from a limit that passed (and fired) while nothing used it does
    /// not cut the next one short; nor does one moved earlier.
    #[tokio::test(start_paused = true)]
    async fn a_kept_timer_keeps_time_for_each_new_limit() {
        let mut deadline = Deadline::default();
        let start = Instant::now();
        let quick = tokio::time::sleep(MS);
        assert_eq!(deadline.limit(start + 10 * MS, quick).await, Some(()));
        // Idle past that limit: the kept timer fires with nobody waiting.
        tokio::time::sleep(50 * MS).await;
        let again = Instant::now();
        let five = tokio::time::sleep(5 * MS);
        assert_eq!(deadline.limit(again + 10 * MS, five).await, Some(()));
        assert!(about(Instant::now(), again + 5 * MS));
        // Moved later, then earlier than it was.
        let late = Instant::now() + 100 * MS;
        assert_eq!(deadline.limit(late, async {}).await, Some(()));
        let early = Instant::now() + 3 * MS;
        let forever = std::future::pending::<()>();
        assert_eq!(deadline.limit(early, forever).await, None);
        assert!(about(Instant::now(), early));
    }

    /// On the real clock: a task that always asks to run again keeps a paused clock
    /// from moving.
    #[tokio::test]
    async fn a_future_that_spends_the_budget_is_still_cut_at_its_limit() {
        let mut deadline = Deadline::default();
        let at = Instant::now() + 5 * MS;
        // Asks to be polled again at once, after spending the task's whole budget.
        let greedy = std::future::poll_fn(|cx| {
            loop {
                let spent = std::pin::pin!(tokio::task::consume_budget());
                if spent.poll(cx).is_pending() {
                    break;
                }
            }
            cx.waker().wake_by_ref();
            Poll::<()>::Pending
        });
        let cut = tokio::time::timeout(Duration::from_secs(1), deadline.limit(at, greedy));
        assert_eq!(cut.await, Ok(None));
    }

    /// hyper's sleeps: each fires at its own deadline, the kept timer goes back when one
    /// is dropped and serves the next, and two at once each have a timer.
    #[tokio::test(start_paused = true)]
    async fn sleeps_lent_to_hyper_keep_their_deadlines_and_come_back() {
        use hyper::rt::Timer as _;

        let timer = SharedDeadline::default();
        let start = Instant::now();
        timer.sleep(10 * MS).await;
        assert!(about(Instant::now(), start + 10 * MS));
        assert!(timer.lock().0.is_some(), "back once dropped");
        // Past its deadline while kept: the next sleep still waits its own time.
        tokio::time::sleep(50 * MS).await;
        let again = Instant::now();
        let mut first = timer.sleep_until((again + 30 * MS).into());
        let second = timer.sleep(5 * MS);
        assert!(timer.lock().0.is_none());
        second.await;
        assert!(about(Instant::now(), again + 5 * MS));
        timer.reset(&mut first, (again + 20 * MS).into());
        first.as_mut().await;
        assert!(about(Instant::now(), again + 20 * MS));
        drop(first);
        assert!(timer.lock().0.is_some());
    }

    /// hyper's header read timeout on the lent timer, through a real HTTP/1.1 server
    /// connection: a head that does not arrive whole in time closes the connection, the
    /// first one or one after a request already answered on it.
    #[tokio::test]
    async fn hyper_closes_a_connection_whose_head_is_late_on_the_lent_timer() {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let mut builder = hyper::server::conn::http1::Builder::new();
                builder
                    .timer(SharedDeadline::default())
                    .header_read_timeout(Duration::from_millis(200));
                let service = hyper::service::service_fn(|_req| async {
                    let ok = http_body_util::Full::new(bytes::Bytes::from_static(b"ok"));
                    Ok::<_, std::convert::Infallible>(http::Response::new(ok))
                });
                let conn = builder.serve_connection(hyper_util::rt::TokioIo::new(socket), service);
                tokio::spawn(conn);
            }
        });
        // How long until the server closes `socket`, reading what it sends meanwhile.
        let closed_after = async |socket: &mut tokio::net::TcpStream| {
            let started = std::time::Instant::now();
            let mut buf = [0u8; 1024];
            loop {
                match tokio::time::timeout(Duration::from_secs(5), socket.read(&mut buf)).await {
                    Ok(Ok(0) | Err(_)) => return started.elapsed(),
                    Ok(Ok(_)) => {}
                    Err(_) => panic!("the connection stayed open"),
                }
            }
        };
        let partial = b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ";

        let mut first = tokio::net::TcpStream::connect(addr).await.unwrap();
        first.write_all(partial).await.unwrap();
        let took = closed_after(&mut first).await;
        assert!(took < Duration::from_secs(2), "closed after {took:?}");

        let mut second = tokio::net::TcpStream::connect(addr).await.unwrap();
        second
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut answer = Vec::new();
        while !answer.ends_with(b"ok") {
            let mut buf = [0u8; 1024];
            let n = second.read(&mut buf).await.unwrap();
            assert_ne!(n, 0, "closed before answering: {answer:?}");
            answer.extend_from_slice(&buf[..n]);
        }
        assert!(answer.starts_with(b"HTTP/1.1 200 OK\r\n"));
        second.write_all(partial).await.unwrap();
        let took = closed_after(&mut second).await;
        assert!(took < Duration::from_secs(2), "closed after {took:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_limits_each_get_a_timer_and_one_is_kept() {
        let shared = SharedDeadline::default();
        let at = Instant::now() + 10 * MS;
        let (a, b) = tokio::join!(
            shared.limit(at, tokio::time::sleep(2 * MS)),
            shared.limit(at, std::future::pending::<()>()),
        );
        assert_eq!((a, b), (Some(()), None));
        assert!(shared.lock().0.is_some());
        let at = Instant::now() + 10 * MS;
        assert_eq!(shared.limit(at, async { 7 }).await, Some(7));
    }
}
