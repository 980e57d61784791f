use std::io::Read as _;
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

use super::*;

/// Runs `f` on a thread of its own (a batcher is per thread and runtime), in a
/// current-thread runtime, with a batcher started there, and fails it if it takes more
/// than 30 s (a regression that leaves a writer waiting fails rather than hangs).
/// Where the kernel refuses io_uring the tests of batching itself say so and return
/// `None`, unless `DPOP_TEST_IO_URING` is set (as `.ci/run` does): then they fail.
fn batched<T: Send + 'static>(f: impl AsyncFnOnce(Batcher) -> T + Send + 'static) -> Option<T> {
    isolated(move || {
        current_thread().block_on(async move {
            match Batcher::start() {
                Ok(b) => Some(
                    tokio::time::timeout(Duration::from_secs(30), f(b))
                        .await
                        .expect("the test finished in time"),
                ),
                Err(e) if std::env::var_os("DPOP_TEST_IO_URING").is_some() => {
                    panic!("DPOP_TEST_IO_URING is set but the kernel refuses io_uring: {e}")
                }
                Err(e) => {
                    eprintln!(
                        "skipped: the kernel refuses io_uring here ({e}); batching is not exercised (set DPOP_TEST_IO_URING to make this a failure)"
                    );
                    None
                }
            }
        })
    })
}

fn isolated<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    match std::thread::spawn(f).join() {
        Ok(t) => t,
        Err(p) => std::panic::resume_unwind(p),
    }
}

fn current_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// A connected pair: the stream under test and the peer's plain socket.
async fn pair() -> (BatchedStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (client, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
    (BatchedStream::new(client.unwrap()), accepted.unwrap().0)
}

/// A pair whose sockets hold little (4 KiB buffers asked for): a batch's send of more
/// comes back short.
async fn small_pair() -> (BatchedStream, TcpStream) {
    let server = TcpSocket::new_v4().unwrap();
    server.set_recv_buffer_size(4096).unwrap();
    server.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = server.listen(8).unwrap();
    let addr = listener.local_addr().unwrap();
    let client = TcpSocket::new_v4().unwrap();
    client.set_send_buffer_size(4096).unwrap();
    let (client, accepted) = tokio::join!(client.connect(addr), listener.accept());
    (BatchedStream::new(client.unwrap()), accepted.unwrap().0)
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

#[test]
fn the_writes_of_one_turn_go_out_in_one_submission_in_order() {
    batched(async |batcher| {
        let mut conns = Vec::new();
        for _ in 0..10 {
            conns.push(pair().await);
        }
        assert!(conns.iter().all(|(b, _)| b.is_batched()));
        let before = batcher.stats();
        // Ten connections, each written twice (a head and a body) before the runtime
        // gets to the flushing task.
        for (i, (b, _)) in conns.iter_mut().enumerate() {
            b.write_all(format!("head {i};").as_bytes()).await.unwrap();
            b.write_all(format!("body {i}.").as_bytes()).await.unwrap();
        }
        for (b, _) in &mut conns {
            b.flush().await.unwrap();
        }
        let after = batcher.stats();
        assert_eq!(after.submissions - before.submissions, 1, "one submission");
        assert_eq!(after.sends - before.sends, 10, "one send per connection");
        for (i, (_, peer)) in conns.iter_mut().enumerate() {
            let want = format!("head {i};body {i}.");
            let mut got = vec![0; want.len()];
            peer.read_exact(&mut got).await.unwrap();
            assert_eq!(got, want.as_bytes());
        }
    });
}

#[test]
fn flush_waits_until_the_bytes_reached_the_kernel() {
    batched(async |batcher| {
        let (mut b, mut peer) = pair().await;
        let before = batcher.stats();
        b.write_all(b"hello").await.unwrap();
        // Accepted, not yet handed to the kernel.
        assert_eq!(batcher.stats(), before);
        b.flush().await.unwrap();
        assert_eq!(batcher.stats().sends, before.sends + 1);
        let mut got = [0u8; 5];
        peer.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"hello");
    });
}

#[test]
fn more_than_the_socket_takes_finishes_through_readiness_whole_and_in_order() {
    batched(async |batcher| {
        let (mut b, mut peer) = small_pair().await;
        let data = pattern(16 * MAX_PENDING);
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            peer.read_to_end(&mut got).await.unwrap();
            got
        });
        let before = batcher.stats().unfinished;
        b.write_all(&data).await.unwrap();
        b.shutdown().await.unwrap();
        assert!(
            batcher.stats().unfinished > before,
            "some sends came back short"
        );
        let got = reader.await.unwrap();
        assert_eq!(got.len(), data.len());
        assert!(got == data, "bytes arrive whole and in order");
    });
}

/// A writer that never flushes (a tunnel that writes a frame, then waits for the
/// answer) still has every byte sent, also the rest of a short send.
#[test]
fn bytes_go_out_without_a_flush_even_after_a_short_send() {
    let answered = batched(async |batcher| {
        const LEN: usize = 1024 * 1024;
        let (mut b, mut peer) = small_pair().await;
        tokio::spawn(async move {
            let mut got = vec![0u8; LEN];
            peer.read_exact(&mut got).await.unwrap();
            peer.write_all(b"ack").await.unwrap();
            peer
        });
        b.write_all(&vec![7u8; LEN]).await.unwrap();
        let mut ack = [0u8; 3];
        let answered = tokio::time::timeout(Duration::from_secs(10), b.read_exact(&mut ack))
            .await
            .is_ok();
        assert!(batcher.stats().unfinished > 0, "a send came back short");
        answered
    });
    assert!(
        answered.unwrap_or(true),
        "the rest of a short send was never written"
    );
}

#[test]
fn a_stream_dropped_with_queued_bytes_still_delivers_them_then_closes() {
    batched(async |_| {
        let (mut b, mut peer) = pair().await;
        b.write_all(b"last words").await.unwrap();
        drop(b);
        let mut got = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), peer.read_to_end(&mut got))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got, b"last words");
    });
}

/// Reads from `peer` until the connection ends, `chunk` bytes at a time with `pause`
/// before each read: what arrived, and when the end came.
fn slow_reader(
    mut peer: TcpStream,
    chunk: usize,
    pause: Duration,
) -> tokio::task::JoinHandle<(Vec<u8>, std::time::Instant)> {
    tokio::spawn(async move {
        let mut got = Vec::new();
        let mut buf = vec![0u8; chunk];
        loop {
            tokio::time::sleep(pause).await;
            match peer.read(&mut buf).await {
                Ok(0) | Err(_) => return (got, std::time::Instant::now()),
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
}

/// A stream on a [`small_pair`] that accepts `MAX_PENDING` bytes (at once: the writer is
/// told they are written) and is dropped while its peer reads `chunk` bytes every
/// `pause`: what was written, the stream's state, when it was dropped, and the reader.
async fn dropped_with_backlog(
    chunk: usize,
    pause: Duration,
) -> (
    Vec<u8>,
    Arc<Shared>,
    std::time::Instant,
    tokio::task::JoinHandle<(Vec<u8>, std::time::Instant)>,
) {
    let (mut b, peer) = small_pair().await;
    let data = pattern(MAX_PENDING);
    let reader = slow_reader(peer, chunk, pause);
    b.write_all(&data).await.unwrap();
    tokio::task::yield_now().await;
    let shared = Arc::clone(&b.shared);
    let dropped = std::time::Instant::now();
    drop(b);
    (data, shared, dropped, reader)
}

/// Dropped with more accepted than the socket holds, while the peer reads steadily:
/// every accepted byte still arrives, as after a plain socket's close.
#[test]
fn a_stream_dropped_with_a_backlog_delivers_all_of_it_to_a_reading_peer() {
    batched(async |_| {
        let (data, _, _, reader) = dropped_with_backlog(1024, Duration::from_millis(1)).await;
        let (got, _) = reader.await.unwrap();
        assert_eq!(got.len(), data.len(), "accepted bytes lost on drop");
        assert!(got == data);
    });
}

/// Dropped while the rest of a short send waits for a peer that does not read: the
/// socket closes once the peer has taken nothing for `LINGER_STALL`, rather than
/// waiting for good.
#[cfg(target_os = "linux")]
#[test]
fn a_stream_dropped_while_its_peer_does_not_read_is_closed() {
    batched(async |_| {
        let (mut b, mut peer) = small_pair().await;
        let data = pattern(MAX_PENDING);
        b.write_all(&data).await.unwrap();
        // Let the batch run: its send comes back short and a drain waits for room.
        tokio::task::yield_now().await;
        tokio::task::yield_now().await;
        let dropped = std::time::Instant::now();
        drop(b);
        // Not read until the linger is over.
        tokio::time::sleep(ring::LINGER_STALL + Duration::from_millis(200)).await;
        let mut got = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), peer.read_to_end(&mut got))
            .await
            .expect("the socket is closed")
            .unwrap();
        assert!(
            got.len() < data.len() && data.starts_with(&got),
            "{}",
            got.len()
        );
        assert!(
            dropped.elapsed() < ring::LINGER_MAX,
            "{:?}",
            dropped.elapsed()
        );
    });
}

/// A peer that reads, but too slowly to take the rest within `LINGER_MAX` of the drop:
/// the socket closes then, with what arrived a prefix of what was written.
#[cfg(target_os = "linux")]
#[test]
fn a_dropped_stream_gives_a_slow_peer_at_most_the_longest_linger() {
    batched(async |_| {
        // 200 bytes every 20 ms: the socket has room again (a third of its buffer)
        // about every 300 ms, well within each stall, but 64 KiB would take 6 s.
        let (data, shared, dropped, reader) =
            dropped_with_backlog(200, Duration::from_millis(20)).await;
        while shared.lock().stream.is_some() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let lingered = dropped.elapsed();
        assert!(
            lingered >= ring::LINGER_MAX && lingered < ring::LINGER_MAX + Duration::from_secs(1),
            "closed after {lingered:?}"
        );
        let (got, _) = reader.await.unwrap();
        assert!(
            got.len() < data.len() && data.starts_with(&got),
            "{}",
            got.len()
        );
    });
}

/// A stream dropped with more accepted than its socket holds, its peer not reading.
#[cfg(target_os = "linux")]
async fn dropped_unread() -> (Arc<Shared>, TcpStream) {
    let (mut b, peer) = small_pair().await;
    b.write_all(&pattern(MAX_PENDING)).await.unwrap();
    tokio::task::yield_now().await;
    tokio::task::yield_now().await;
    let shared = Arc::clone(&b.shared);
    drop(b);
    (shared, peer)
}

/// Whether a dropped stream still holds its socket (lingers).
#[cfg(target_os = "linux")]
fn open(s: &Arc<Shared>) -> bool {
    s.lock().stream.is_some()
}

/// The peer of a lingering `shared` takes 8 KiB, and the drain writes more of the rest
/// (its progress), then settles.
#[cfg(target_os = "linux")]
async fn take_some(shared: &Arc<Shared>, peer: &mut TcpStream) -> Vec<u8> {
    let before = shared.lock().pending.len();
    let mut some = vec![0; 8192];
    peer.read_exact(&mut some).await.unwrap();
    while shared.lock().pending.len() >= before {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // The next step usually follows within a delayed acknowledgement (about 40 ms).
    tokio::time::sleep(Duration::from_millis(60)).await;
    some
}

/// The lingering tests fill a batcher of two places.
#[cfg(target_os = "linux")]
const _: () = assert!(ring::MAX_LINGERING == 2);

/// Long enough for a lingering socket whose peer does not read to count as stalled: a bit
/// over `EVICTABLE_AFTER`, since such a socket still takes a step of its rest some tens of
/// milliseconds after the drop (seen: 43 ms on loopback), and well within `LINGER_STALL`.
#[cfg(target_os = "linux")]
const STALLED: Duration = ring::EVICTABLE_AFTER.saturating_add(Duration::from_millis(100));

/// The peer of a dropped stream sees the close now, long before a stall would end a
/// linger, having got a part of what was written.
#[cfg(target_os = "linux")]
async fn closed_at_once(peer: &mut TcpStream) {
    let mut got = Vec::new();
    tokio::time::timeout(ring::LINGER_STALL / 2, peer.read_to_end(&mut got))
        .await
        .expect("closed at once")
        .unwrap();
    assert!(
        got.len() < MAX_PENDING && pattern(MAX_PENDING).starts_with(&got),
        "{}",
        got.len()
    );
}

/// At most `MAX_LINGERING` dropped streams of one batcher linger at once. When one more
/// is dropped, the one whose socket has taken none of its rest for the longest (at least
/// `EVICTABLE_AFTER`) is closed at once, not the one dropped first, whose peer still
/// reads; the new one lingers.
#[cfg(target_os = "linux")]
#[test]
fn a_batcher_at_its_most_lingering_closes_the_one_stalled_longest() {
    batched(async |batcher| {
        let (reading, mut reading_peer) = dropped_unread().await;
        let (stalled, mut stalled_peer) = dropped_unread().await;
        tokio::time::sleep(STALLED).await;
        // The first one's peer takes some of the rest now; the second's never does.
        let some = take_some(&reading, &mut reading_peer).await;
        assert!(some == pattern(MAX_PENDING)[..8192]);
        assert_eq!(batcher.stats().linger_cut, 0);

        let (newest, _newest_peer) = dropped_unread().await;
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!open(&stalled), "the one stalled longest is closed");
        assert!(open(&reading), "the one whose peer reads lingers on");
        assert!(open(&newest), "the newest lingers");
        let stats = batcher.stats();
        assert_eq!((stats.linger_cut, stats.closed_unsent), (1, 1), "{stats:?}");
        closed_at_once(&mut stalled_peer).await;
        // The reading peer still gets every byte, and its place is given back.
        let mut rest = Vec::new();
        reading_peer.read_to_end(&mut rest).await.unwrap();
        assert_eq!(
            some.len() + rest.len(),
            MAX_PENDING,
            "the reading peer's rest"
        );
        assert!(!open(&reading));
        let (again, _again_peer) = dropped_unread().await;
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(open(&again) && open(&newest), "a freed place is taken");
        assert_eq!(batcher.stats().linger_cut, 1);

        // Of two that never read, the one dropped earlier has stalled longer.
        tokio::time::sleep(STALLED).await;
        let (last, _last_peer) = dropped_unread().await;
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!open(&newest), "the earlier of two unread is closed");
        assert!(open(&again) && open(&last));
        let stats = batcher.stats();
        assert_eq!((stats.linger_cut, stats.closed_unsent), (2, 2), "{stats:?}");
    });
}

/// While every lingering socket has taken more of its rest within `EVICTABLE_AFTER` (its
/// peer reading), a stream dropped beyond `MAX_LINGERING` is the one closed, however long
/// ago the others were dropped; once they have taken nothing for that long, the one that
/// took nothing for the longest makes room.
#[cfg(target_os = "linux")]
#[test]
fn a_batcher_whose_lingering_peers_read_closes_the_newest_until_one_stalls() {
    batched(async |batcher| {
        let (first, mut first_peer) = dropped_unread().await;
        let (second, mut second_peer) = dropped_unread().await;
        // Dropped long enough ago: what counts is that their sockets took more since.
        tokio::time::sleep(STALLED).await;
        take_some(&first, &mut first_peer).await;
        take_some(&second, &mut second_peer).await;

        let (refused, mut refused_peer) = dropped_unread().await;
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!open(&refused), "the newest is closed");
        assert!(open(&first) && open(&second), "the reading ones linger on");
        let stats = batcher.stats();
        assert_eq!((stats.linger_cut, stats.closed_unsent), (1, 1), "{stats:?}");
        closed_at_once(&mut refused_peer).await;

        // Neither peer reads any more: once they have taken nothing for
        // `EVICTABLE_AFTER` (well before a stall ends them), the first, stalled longer,
        // makes room.
        tokio::time::sleep(STALLED).await;
        assert!(open(&first) && open(&second));
        let (newest, _newest_peer) = dropped_unread().await;
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!open(&first), "the one stalled longest is closed");
        assert!(open(&second) && open(&newest));
        let stats = batcher.stats();
        assert_eq!((stats.linger_cut, stats.closed_unsent), (2, 2), "{stats:?}");
    });
}

/// A stream dropped with bytes queued whose send then fails (the peer reset the
/// connection) is counted as closed with bytes unsent.
#[test]
fn a_dropped_stream_whose_send_fails_is_counted_as_closed_unsent() {
    batched(async |batcher| {
        let (mut b, peer) = pair().await;
        peer.set_zero_linger().unwrap();
        drop(peer);
        // Once the reset has arrived, every send fails.
        assert!(b.read(&mut [0_u8; 1]).await.is_err(), "the peer's reset");
        let shared = Arc::clone(&b.shared);
        b.write_all(b"into the void").await.unwrap();
        drop(b);
        while shared.lock().stream.is_some() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let stats = batcher.stats();
        assert_eq!((stats.closed_unsent, stats.linger_cut), (1, 0), "{stats:?}");
    });
}

#[test]
fn a_failed_send_is_returned_by_the_next_write_or_flush_and_after() {
    batched(async |_| {
        let (mut b, peer) = pair().await;
        // The peer resets the connection.
        peer.set_zero_linger().unwrap();
        drop(peer);
        tokio::time::sleep(Duration::from_millis(20)).await;
        let mut failed = None;
        for _ in 0..4 {
            if let Err(e) = async {
                b.write_all(b"into the void").await?;
                b.flush().await
            }
            .await
            {
                failed = Some(e);
                break;
            }
        }
        let e = failed.expect("a reset connection fails");
        assert!(
            matches!(
                e.kind(),
                io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe
            ),
            "{e:?}"
        );
        assert_eq!(
            b.write(b"again").await.unwrap_err().raw_os_error(),
            e.raw_os_error()
        );
        assert_eq!(
            b.flush().await.unwrap_err().raw_os_error(),
            e.raw_os_error()
        );
    });
}

#[test]
fn reads_pass_through() {
    batched(async |_| {
        let (mut b, mut peer) = pair().await;
        peer.write_all(b"ping").await.unwrap();
        let mut got = [0u8; 4];
        b.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"ping");
    });
}

#[test]
fn without_a_batcher_a_stream_writes_straight_to_its_socket() {
    isolated(|| {
        current_thread().block_on(async {
            let (mut b, mut peer) = writes_straight_through().await;
            b.shutdown().await.unwrap();
            let mut rest = Vec::new();
            peer.read_to_end(&mut rest).await.unwrap();
            assert!(rest.is_empty());
        });
    });
}

#[test]
fn a_multi_thread_runtime_gets_no_batcher() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let e = Batcher::start().unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::Unsupported);
        writes_straight_through().await;
    });
}

/// A pair whose stream has no batcher: a write reaches the peer without a flush.
async fn writes_straight_through() -> (BatchedStream, TcpStream) {
    let (mut b, mut peer) = pair().await;
    assert!(!b.is_batched());
    b.write_all(b"direct").await.unwrap();
    let mut got = [0u8; 6];
    peer.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"direct");
    (b, peer)
}

/// A runtime dropped with a write queued, before its flushing task ever ran: the
/// batcher ends (the dropped stream's bytes get their one attempt and the socket
/// closes), and a later runtime on the thread starts its own.
#[test]
fn a_runtime_ended_before_its_flush_leaves_no_stream_waiting() {
    if !io_uring_here() {
        return;
    }
    let mut peer = isolated(|| {
        let rt = current_thread();
        let (tcp, peer) = rt.block_on(async {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let (client, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
            (client.unwrap(), accepted.unwrap().0.into_std().unwrap())
        });
        // Nothing in this future waits: `block_on` returns before the batcher's task is
        // first polled.
        rt.block_on(async {
            let batcher = Batcher::start().unwrap();
            let mut b = BatchedStream::new(tcp);
            assert!(b.is_batched());
            b.write_all(b"x").await.unwrap();
            assert_eq!(batcher.stats().sends, 0);
        });
        drop(rt);
        let next = current_thread().block_on(async {
            assert!(Batcher::current().is_none());
            let batcher = Batcher::start().unwrap();
            let (mut b, mut peer) = pair().await;
            delivered(
                &mut b,
                &mut peer,
                b"again",
                "flushed by this runtime's batcher",
            )
            .await;
            batcher.stats().sends
        });
        assert_eq!(next, 1);
        peer
    });
    peer.set_nonblocking(false).unwrap();
    peer.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut got = Vec::new();
    peer.read_to_end(&mut got)
        .expect("the first connection's bytes were sent and its socket closed");
    assert_eq!(got, b"x");
}

/// Writes `bytes` on `s` and flushes, failing with `flushed_by` if the flush takes more
/// than 5 s; then `peer` must read exactly them.
async fn delivered(s: &mut BatchedStream, peer: &mut TcpStream, bytes: &[u8], flushed_by: &str) {
    s.write_all(bytes).await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), s.flush())
        .await
        .expect(flushed_by)
        .unwrap();
    let mut got = vec![0; bytes.len()];
    peer.read_exact(&mut got).await.unwrap();
    assert_eq!(got, bytes);
}

/// Two runtimes on one thread, each with its batcher: a stream joins the batch of the
/// runtime it is made in, whichever batcher started last.
#[test]
fn a_stream_joins_the_batch_of_the_runtime_it_is_made_in() {
    if !io_uring_here() {
        return;
    }
    isolated(|| {
        let first = current_thread();
        let second = current_thread();
        let a = first.block_on(async { Batcher::start().unwrap() });
        let b = second.block_on(async { Batcher::start().unwrap() });
        first.block_on(async {
            let (mut s, mut peer) = pair().await;
            delivered(
                &mut s,
                &mut peer,
                b"first",
                "flushed by the first runtime's batcher",
            )
            .await;
        });
        assert_eq!((a.stats().sends, b.stats().sends), (1, 0));
        assert!(first.block_on(async { Batcher::current() }).is_some());
        drop(first);
        assert!(second.block_on(async { Batcher::current() }).is_some());
    });
}

/// The ring failing (here on purpose) before it took a submission: the connections get
/// their bytes back and write them, and everything after, straight to their sockets;
/// the batcher ends.
#[test]
fn a_failed_ring_hands_the_bytes_back_to_their_connections() {
    batched(async |batcher| {
        let (mut one, mut peer_one) = pair().await;
        let (mut two, mut peer_two) = pair().await;
        batcher.lock().fail_next_submit = true;
        one.write_all(b"first").await.unwrap();
        two.write_all(b"second").await.unwrap();
        one.flush().await.unwrap();
        two.flush().await.unwrap();
        assert!(!one.is_batched() && !two.is_batched());
        one.write_all(b" and more").await.unwrap();
        drop(one);
        drop(two);
        let mut got = Vec::new();
        peer_one.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"first and more");
        got.clear();
        peer_two.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"second");
        assert_eq!(batcher.stats().sends, 0);
        assert!(Batcher::current().is_none(), "the failed batcher ended");
    });
}

/// A drain task dropped before it first ran (its runtime ended) hands the rest back to
/// the connection instead of leaving its writer waiting.
#[test]
fn a_drain_dropped_before_it_ran_hands_the_rest_back() {
    isolated(|| {
        current_thread().block_on(async {
            let (b, _peer) = pair().await;
            {
                let mut out = b.shared.lock();
                out.direct = false;
                out.backlog = true;
                out.pending.extend_from_slice(b"rest");
            }
            drop(ring::drain_task(ring::Draining(Arc::clone(&b.shared))));
            let out = b.shared.lock();
            assert!(!out.backlog && out.direct, "handed back");
            assert_eq!(out.pending, b"rest");
        });
    });
}

#[test]
fn a_connection_keeps_little_buffer_once_its_backlog_is_written() {
    batched(async |batcher| {
        let (mut b, mut peer) = small_pair().await;
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            peer.read_to_end(&mut got).await.unwrap();
            got.len()
        });
        b.write_all(&pattern(4 * MAX_PENDING)).await.unwrap();
        b.flush().await.unwrap();
        assert!(batcher.stats().unfinished > 0, "a send came back short");
        assert!(b.shared.lock().pending.capacity() <= KEPT_CAPACITY);
        b.shutdown().await.unwrap();
        assert_eq!(reader.await.unwrap(), 4 * MAX_PENDING);
    });
}

/// Whether this kernel offers io_uring; says so when not (a failure under
/// `DPOP_TEST_IO_URING`, as in `batched`).
fn io_uring_here() -> bool {
    batched(async |_| ()).is_some()
}

/// A blocking thread entering the runtime has no batcher of its own: its streams write
/// straight to their sockets rather than waiting for a batch nobody submits.
#[test]
fn a_stream_made_on_a_blocking_thread_writes_straight_to_its_socket() {
    batched(async |_| {
        let h = tokio::runtime::Handle::current();
        let flushed = tokio::task::spawn_blocking(move || {
            h.block_on(async {
                let (mut b, mut peer) = pair().await;
                assert!(!b.is_batched());
                b.write_all(b"x").await.unwrap();
                let mut got = [0u8; 1];
                peer.read_exact(&mut got).await.unwrap();
                tokio::time::timeout(Duration::from_secs(2), b.flush())
                    .await
                    .is_ok()
            })
        })
        .await
        .unwrap();
        assert!(flushed);
    });
}

#[test]
fn the_probe_and_a_batcher_agree() {
    let probed = probe();
    let started = isolated(|| current_thread().block_on(async { Batcher::start().map(drop) }));
    assert_eq!(probed.is_ok(), started.is_ok(), "{probed:?} {started:?}");
}

/// The start-up check that a send to a full socket is answered at once: it passes with
/// the batcher's flags, and it refuses a ring whose send would wait for room (here, one
/// without `MSG_DONTWAIT`, which the kernel parks until the peer reads).
#[cfg(target_os = "linux")]
#[test]
fn a_ring_whose_sends_would_wait_for_room_is_refused() {
    let mut ring = match io_uring::IoUring::new(8) {
        Ok(r) => r,
        Err(e) if std::env::var_os("DPOP_TEST_IO_URING").is_some() => {
            panic!("DPOP_TEST_IO_URING is set but the kernel refuses io_uring: {e}")
        }
        Err(e) => {
            eprintln!("skipped: the kernel refuses io_uring here ({e})");
            return;
        }
    };
    ring::sends_do_not_wait(&mut ring, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL).unwrap();
    let e = ring::sends_do_not_wait(&mut ring, libc::MSG_NOSIGNAL).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::Unsupported);
    assert!(e.to_string().contains("waits for room"), "{e}");
}
