//! Tests against a real Redis, found through `DPOP_TEST_REDIS_URL` (`.ci/run` always sets
//! it). Without it each test says so on stderr and passes, so `cargo test` works anywhere.
//!
//! Every run uses its own key prefix (process id and a random number), so parallel runs
//! against one server do not see each other's keys. The restart test starts its own
//! `redis-server` (from `DPOP_TEST_REDIS_SERVER` or `PATH`) on a free port.

mod common;

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::{fresh_key, later, now};
use dpop_core::{AsyncReplayStore, Insert, ReplayKey, ReplayStoreError, UnixTime};
use dpop_redis::{RedisReplayStore, RedisStoreConfig, RedisStoreError};
use redis::AsyncCommands;

/// The shared server's URL, or `None` after printing the skip line.
fn redis_url() -> Option<String> {
    match std::env::var("DPOP_TEST_REDIS_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            eprintln!("skipping: DPOP_TEST_REDIS_URL not set");
            None
        }
    }
}

/// A key prefix unique to this test in this run.
fn prefix(test: &str) -> String {
    static RUN: OnceLock<u64> = OnceLock::new();
    let run = RUN.get_or_init(|| RandomState::new().hash_one(std::process::id()));
    format!("dpop-redis-test:{}:{run:016x}:{test}:", std::process::id())
}

fn config(url: &str, test: &str) -> RedisStoreConfig {
    let mut config = RedisStoreConfig::new(url);
    config.key_prefix = prefix(test);
    config
}

/// A plain connection for looking at what the store wrote.
async fn inspector(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

#[tokio::test]
async fn insert_then_replay_then_other_key() {
    let Some(url) = redis_url() else { return };
    let store = RedisReplayStore::connect(config(&url, "basic"))
        .await
        .unwrap();
    let (a, b) = (fresh_key(), fresh_key());
    let now = now();
    let exp = later(now, 60);
    assert_eq!(
        store.insert_if_absent(&a, exp, now).await,
        Ok(Insert::Inserted)
    );
    assert_eq!(
        store.insert_if_absent(&a, exp, now).await,
        Ok(Insert::AlreadyPresent)
    );
    // Still a replay when presented with an expiry already past.
    assert_eq!(
        store.insert_if_absent(&a, now, later(now, 1)).await,
        Ok(Insert::AlreadyPresent)
    );
    assert_eq!(
        store.insert_if_absent(&b, exp, now).await,
        Ok(Insert::Inserted)
    );
    // The key format is the documented one.
    let mut conn = inspector(&url).await;
    let value: Option<String> = conn
        .get(format!("{}{}", prefix("basic"), a.to_hex()))
        .await
        .unwrap();
    assert_eq!(value.as_deref(), Some("1"));
}

#[tokio::test]
async fn ttl_is_set_and_key_expires() {
    let Some(url) = redis_url() else { return };
    let store = RedisReplayStore::connect(config(&url, "ttl"))
        .await
        .unwrap();
    let mut conn = inspector(&url).await;
    let redis_key = |k: &ReplayKey| format!("{}{}", prefix("ttl"), k.to_hex());

    let long = fresh_key();
    let now = now();
    assert_eq!(
        store.insert_if_absent(&long, later(now, 90), now).await,
        Ok(Insert::Inserted)
    );
    let pttl: i64 = conn.pttl(redis_key(&long)).await.unwrap();
    assert!((1..=90_000).contains(&pttl), "PTTL {pttl}");
    assert!(pttl > 80_000, "PTTL {pttl}");

    // An expiry at or before `now` still records the key, for the minimum of one second.
    let short = fresh_key();
    assert_eq!(
        store.insert_if_absent(&short, now, now).await,
        Ok(Insert::Inserted)
    );
    let pttl: i64 = conn.pttl(redis_key(&short)).await.unwrap();
    assert!((1..=1_000).contains(&pttl), "PTTL {pttl}");
    assert_eq!(
        store.insert_if_absent(&short, now, now).await,
        Ok(Insert::AlreadyPresent)
    );
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    let exists: bool = conn.exists(redis_key(&short)).await.unwrap();
    assert!(!exists, "key still there after its TTL");
    assert_eq!(
        store.insert_if_absent(&short, now, now).await,
        Ok(Insert::Inserted)
    );
}

#[tokio::test]
async fn two_instances_share_the_record() {
    let Some(url) = redis_url() else { return };
    // Two connections, as two gateway instances would have.
    let first = RedisReplayStore::connect(config(&url, "shared"))
        .await
        .unwrap();
    let second = RedisReplayStore::connect(config(&url, "shared"))
        .await
        .unwrap();
    let key = fresh_key();
    let now = now();
    assert_eq!(
        first.insert_if_absent(&key, later(now, 60), now).await,
        Ok(Insert::Inserted)
    );
    assert_eq!(
        second.insert_if_absent(&key, later(now, 60), now).await,
        Ok(Insert::AlreadyPresent)
    );
    // A clone shares the connection and the record.
    assert_eq!(
        second
            .clone()
            .insert_if_absent(&key, later(now, 60), now)
            .await,
        Ok(Insert::AlreadyPresent)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_inserts_each_win_once() {
    let Some(url) = redis_url() else { return };
    let stores = [
        RedisReplayStore::connect(config(&url, "concurrent"))
            .await
            .unwrap(),
        RedisReplayStore::connect(config(&url, "concurrent"))
            .await
            .unwrap(),
    ];
    let keys: Vec<ReplayKey> = (0..100).map(|_| fresh_key()).collect();
    let now = now();
    let mut tasks = tokio::task::JoinSet::new();
    // Each key twice, once through each connection.
    for (i, key) in keys.iter().chain(&keys).enumerate() {
        let (store, key) = (stores[i % 2].clone(), *key);
        tasks.spawn(async move { store.insert_if_absent(&key, later(now, 60), now).await });
    }
    let mut inserted = 0;
    let mut present = 0;
    while let Some(result) = tasks.join_next().await {
        match result.unwrap() {
            Ok(Insert::Inserted) => inserted += 1,
            Ok(Insert::AlreadyPresent) => present += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!((inserted, present), (100, 100));
}

#[tokio::test]
async fn ping_ok() {
    let Some(url) = redis_url() else { return };
    let store = RedisReplayStore::connect(config(&url, "ping"))
        .await
        .unwrap();
    assert_eq!(store.ping().await, Ok(()));
}

#[tokio::test]
async fn connect_to_closed_port_fails() {
    // Needs no server: nothing listens on port 1.
    let started = Instant::now();
    let err = RedisReplayStore::connect(RedisStoreConfig::new("redis://127.0.0.1:1"))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            RedisStoreError::Connect { .. } | RedisStoreError::ConnectTimeout { .. }
        ),
        "{err:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(3), "{err}");
    eprintln!("closed port: {err}");
}

#[tokio::test]
async fn invalid_configs_are_refused() {
    for url in [
        "",
        "http://127.0.0.1:6379",
        "rediss://127.0.0.1:6379/#insecure",
    ] {
        let err = RedisReplayStore::connect(RedisStoreConfig::new(url))
            .await
            .unwrap_err();
        assert!(
            matches!(err, RedisStoreError::InvalidConfig(_)),
            "{url}: {err:?}"
        );
    }
}

#[tokio::test]
async fn passwords_never_shown() {
    let url = "redis://:hunter2@127.0.0.1:1";
    let with_password = RedisStoreConfig::new(url);
    assert!(!format!("{with_password:?}").contains("hunter2"));
    let err = RedisReplayStore::connect(with_password).await.unwrap_err();
    for text in [format!("{err}"), format!("{err:?}")] {
        assert!(!text.contains("hunter2"), "{text}");
        assert!(text.contains("redis://:***@127.0.0.1:1"), "{text}");
    }

    // Against the real server: a wrong password, and a right one.
    let Some(server) = redis_url() else { return };
    let Some(rest) = server.strip_prefix("redis://") else {
        return;
    };
    if rest.contains('@') {
        return; // The test server has credentials of its own; nothing to add here.
    }
    let err = RedisReplayStore::connect(RedisStoreConfig::new(format!("redis://:hunter2@{rest}")))
        .await
        .unwrap_err();
    for text in [format!("{err}"), format!("{err:?}")] {
        assert!(!text.contains("hunter2"), "{text}");
    }
    eprintln!("wrong password: {err}");
    let store = RedisReplayStore::connect(config(&server, "debug"))
        .await
        .unwrap();
    let text = format!("{store:?}");
    assert!(text.contains("RedisReplayStore"), "{text}");
}

#[tokio::test]
async fn tls_to_a_plain_server_is_an_error_not_a_panic() {
    let Some(url) = redis_url() else { return };
    let Some(rest) = url.strip_prefix("redis://") else {
        return;
    };
    // The TLS handshake meets a server that speaks plain RESP: a clean connect error (this
    // also shows a rustls crypto provider was found).
    let mut tls = RedisStoreConfig::new(format!("rediss://{rest}"));
    tls.connect_timeout = Duration::from_millis(500);
    let err = RedisReplayStore::connect(tls).await.unwrap_err();
    assert!(
        matches!(
            err,
            RedisStoreError::Connect { .. } | RedisStoreError::ConnectTimeout { .. }
        ),
        "{err:?}"
    );
    eprintln!("rediss to a plain server: {err}");
}

#[tokio::test]
async fn errors_hide_passwords_when_redis_fails_later() {
    // Unavailable messages come from a server that went away; they must not carry the URL.
    let Some(server) = redis_url().and_then(|_| redis_server_binary()) else {
        return;
    };
    let mut redis = OwnServer::start(&server, None);
    let url = format!("redis://:hunter2@127.0.0.1:{}", redis.port);
    redis.set_password("hunter2").await;
    let store = RedisReplayStore::connect(RedisStoreConfig::new(&url))
        .await
        .unwrap();
    assert!(!format!("{store:?}").contains("hunter2"));
    redis.stop();
    let now = now();
    let err = store
        .insert_if_absent(&fresh_key(), later(now, 60), now)
        .await
        .unwrap_err();
    for text in [format!("{err}"), format!("{err:?}")] {
        assert!(!text.contains("hunter2"), "{text}");
    }
    let err = store.ping().await.unwrap_err();
    assert!(!format!("{err} {err:?}").contains("hunter2"), "{err:?}");
}

#[tokio::test]
async fn redis_going_away_fails_closed_then_recovers() {
    let Some(server) = redis_url().and_then(|_| redis_server_binary()) else {
        return;
    };
    let mut redis = OwnServer::start(&server, None);
    let url = format!("redis://127.0.0.1:{}", redis.port);
    let store = RedisReplayStore::connect(RedisStoreConfig::new(&url))
        .await
        .unwrap();
    let now = now();
    let exp = later(now, 60);
    assert_eq!(
        store.insert_if_absent(&fresh_key(), exp, now).await,
        Ok(Insert::Inserted)
    );
    assert_eq!(store.ping().await, Ok(()));

    redis.stop();
    for _ in 0..3 {
        match store.insert_if_absent(&fresh_key(), exp, now).await {
            Err(ReplayStoreError::Unavailable(msg)) => eprintln!("while down: unavailable: {msg}"),
            Err(ReplayStoreError::Timeout) => eprintln!("while down: timeout"),
            other => panic!("Redis is down, yet {other:?}"),
        }
    }
    assert!(store.ping().await.is_err());

    // Back on the same port: the connection manager reconnects by itself.
    let port = redis.port;
    let _redis = OwnServer::start(&server, Some(port));
    let deadline = Instant::now() + Duration::from_secs(10);
    let key = fresh_key();
    loop {
        match store.insert_if_absent(&key, exp, now).await {
            Ok(Insert::Inserted) => break,
            Err(ReplayStoreError::Unavailable(_) | ReplayStoreError::Timeout)
                if Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            other => panic!("store did not recover: {other:?}"),
        }
    }
    assert_eq!(
        store.insert_if_absent(&key, exp, now).await,
        Ok(Insert::AlreadyPresent)
    );
    assert_eq!(store.ping().await, Ok(()));
}

/// A multi-threaded runtime that keeps running, for the store's shared connection.
fn home_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap()
}

/// Tries inserts until one goes through this thread's own connection (within 10 s),
/// accepting only refusals and inserts through the shared connection meanwhile, then checks
/// that a replay of it is caught.
async fn recovers_on_own_connection(store: &RedisReplayStore, exp: UnixTime, now: UnixTime) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let key = fresh_key();
        match store.insert_if_absent(&key, exp, now).await {
            Ok(Insert::Inserted) if store.local_batchers() == 1 => {
                assert_eq!(
                    store.insert_if_absent(&key, exp, now).await,
                    Ok(Insert::AlreadyPresent)
                );
                return;
            }
            // Through the shared connection, until this thread may try its own again.
            Ok(Insert::Inserted)
            | Err(ReplayStoreError::Unavailable(_) | ReplayStoreError::Timeout)
                if Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            other => panic!("no recovery on this thread's connection: {other:?}"),
        }
    }
}

/// `CLIENT PAUSE ms mode` (`WRITE` or `ALL`) through `admin`.
async fn pause_clients(admin: &mut redis::aio::MultiplexedConnection, pause: Duration, mode: &str) {
    let () = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(u64::try_from(pause.as_millis()).unwrap())
        .arg(mode)
        .query_async(admin)
        .await
        .unwrap();
}

/// A single-threaded runtime with timers, as each of the gateway's serving threads runs.
fn current_thread_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Each thread with a single-threaded runtime inserts through a queue and connection on
/// its own runtime: the runtime the store was connected on is never driven again here, so
/// an insert that went through its batcher would time out.
#[test]
fn single_threaded_runtimes_insert_on_their_own_connections() {
    let Some(url) = redis_url() else { return };
    let home = current_thread_runtime();
    let store = home
        .block_on(RedisReplayStore::connect(config(&url, "local")))
        .unwrap();
    assert_eq!(store.local_batchers(), 0);
    let key = fresh_key();
    let (now, exp) = (now(), later(now(), 60));
    let (first_done, first_seen) = std::sync::mpsc::channel();
    let (release, released) = std::sync::mpsc::channel::<()>();
    let first = std::thread::spawn({
        let (store, key) = (store.clone(), key);
        move || {
            let runtime = current_thread_runtime();
            let outcome = runtime.block_on(store.insert_if_absent(&key, exp, now));
            first_done.send(outcome).unwrap();
            // Keep this runtime, and so its batcher, alive while the other thread runs.
            released.recv().unwrap();
        }
    });
    assert_eq!(first_seen.recv().unwrap(), Ok(Insert::Inserted));
    let second = std::thread::spawn({
        let store = store.clone();
        move || {
            let runtime = current_thread_runtime();
            runtime.block_on(async {
                let replay = store.insert_if_absent(&key, exp, now).await;
                let fresh = store.insert_if_absent(&fresh_key(), exp, now).await;
                (replay, fresh, store.local_batchers())
            })
        }
    });
    let (replay, fresh, running) = second.join().unwrap();
    assert_eq!(
        replay,
        Ok(Insert::AlreadyPresent),
        "seen by the other thread"
    );
    assert_eq!(fresh, Ok(Insert::Inserted));
    assert_eq!(running, 2, "one batcher per single-threaded runtime");
    release.send(()).unwrap();
    first.join().unwrap();
    // Both runtimes are gone, and their batchers with them.
    assert_eq!(store.local_batchers(), 0);
    drop(home);
}

/// A thread whose own connection cannot be opened refuses (never accepts) while Redis is
/// away, and inserts on a connection of its own once Redis is back.
#[test]
fn a_thread_without_its_own_connection_fails_closed_then_recovers() {
    let Some(server) = redis_url().and_then(|_| redis_server_binary()) else {
        return;
    };
    let mut redis = OwnServer::start(&server, None);
    let port = redis.port;
    let url = format!("redis://127.0.0.1:{port}");
    // The shared connection lives on a multi-threaded runtime that keeps running.
    let home = home_runtime();
    let mut config = RedisStoreConfig::new(&url);
    config.connect_timeout = Duration::from_millis(500);
    let store = home.block_on(RedisReplayStore::connect(config)).unwrap();
    redis.stop();
    let runtime = current_thread_runtime();
    let (now, exp) = (now(), later(now(), 60));
    runtime.block_on(async {
        for _ in 0..3 {
            match store.insert_if_absent(&fresh_key(), exp, now).await {
                Err(ReplayStoreError::Unavailable(msg)) => {
                    eprintln!("while down: unavailable: {msg}");
                }
                Err(ReplayStoreError::Timeout) => eprintln!("while down: timeout"),
                other => panic!("Redis is down, yet {other:?}"),
            }
        }
    });
    let _redis = OwnServer::start(&server, Some(port));
    runtime.block_on(recovers_on_own_connection(&store, exp, now));
    drop(home);
}

/// How late past its deadline an insert may be answered in these tests: timer granularity
/// (1 ms) and scheduling on a busy machine.
const SLACK: Duration = Duration::from_millis(150);

/// A thread's batcher serves only the runtime it runs on: a second single-threaded
/// runtime on the same thread, while the first is kept but not run, inserts through the
/// shared connection instead of waiting forever on a batcher nothing runs; so does a
/// multi-threaded runtime entered from that thread.
#[test]
fn a_second_runtime_on_a_thread_does_not_use_the_first_ones_batcher() {
    let Some(url) = redis_url() else { return };
    let home = home_runtime();
    let store = home
        .block_on(RedisReplayStore::connect(config(&url, "two-runtimes")))
        .unwrap();
    let (now, exp) = (now(), later(now(), 60));
    let first = current_thread_runtime();
    assert_eq!(
        first.block_on(store.insert_if_absent(&fresh_key(), exp, now)),
        Ok(Insert::Inserted)
    );
    assert_eq!(store.local_batchers(), 1);
    let bounded = |store: RedisReplayStore, key: ReplayKey| async move {
        tokio::time::timeout(
            Duration::from_secs(2),
            store.insert_if_absent(&key, exp, now),
        )
        .await
    };
    let key = fresh_key();
    let second = current_thread_runtime();
    assert_eq!(
        second.block_on(bounded(store.clone(), key)),
        Ok(Ok(Insert::Inserted)),
        "a second runtime on the thread"
    );
    let multi = home_runtime();
    assert_eq!(
        multi.block_on(bounded(store.clone(), key)),
        Ok(Ok(Insert::AlreadyPresent)),
        "a multi-threaded runtime entered from the thread"
    );
    assert_eq!(
        store.local_batchers(),
        1,
        "no batcher for the second runtime"
    );
    drop((first, second, multi));
}

/// A thread's own batcher answers every insert by its deadline, with no timer of the
/// caller's: while Redis holds every write (`CLIENT PAUSE … WRITE`), inserts fail with
/// `Timeout` after the command time-out, long before the pause ends; a queue with no room
/// left refuses at once; none is accepted; and inserts succeed again once Redis answers.
#[test]
fn a_stalled_redis_times_out_each_insert_by_its_deadline() {
    let Some(server) = redis_url().and_then(|_| redis_server_binary()) else {
        return;
    };
    let redis = OwnServer::start(&server, None);
    let url = format!("redis://127.0.0.1:{}", redis.port);
    let home = home_runtime();
    let mut config = RedisStoreConfig::new(&url);
    let timeout = Duration::from_millis(200);
    config.command_timeout = timeout;
    let store = home.block_on(RedisReplayStore::connect(config)).unwrap();
    let runtime = current_thread_runtime();
    let (now, exp) = (now(), later(now(), 60));
    let pause = Duration::from_secs(4);
    runtime.block_on(async {
        assert_eq!(
            store.insert_if_absent(&fresh_key(), exp, now).await,
            Ok(Insert::Inserted)
        );
        assert_eq!(store.local_batchers(), 1, "this thread's own batcher");
        let mut admin = inspector(&url).await;
        pause_clients(&mut admin, pause, "WRITE").await;

        let started = Instant::now();
        assert_eq!(
            store.insert_if_absent(&fresh_key(), exp, now).await,
            Err(ReplayStoreError::Timeout)
        );
        let waited = started.elapsed();
        assert!(
            waited >= timeout && waited < timeout + SLACK,
            "one insert waited {waited:?}"
        );

        // Inserts queued while a pipeline is on the wire, and sent together later, are each
        // answered at their own deadline: not at the time-out of a pipeline counted from
        // when it went out (late), nor with the earliest insert of their pipeline (early).
        let timed = |store: RedisReplayStore| async move {
            let started = Instant::now();
            let outcome = store.insert_if_absent(&fresh_key(), exp, now).await;
            (outcome, started.elapsed())
        };
        let a = tokio::spawn(timed(store.clone()));
        tokio::time::sleep(timeout / 10).await;
        let b = tokio::spawn(timed(store.clone()));
        tokio::time::sleep(timeout * 3 / 4).await;
        let c = timed(store.clone()).await;
        for (name, (outcome, waited)) in
            [("a", a.await.unwrap()), ("b", b.await.unwrap()), ("c", c)]
        {
            assert_eq!(outcome, Err(ReplayStoreError::Timeout), "{name}");
            assert!(
                waited >= timeout && waited < timeout + SLACK,
                "insert {name} waited {waited:?}"
            );
        }

        // More inserts than a pipeline takes, queued just after one went out: those left
        // in the queue when the next goes out are answered at their own deadline too, not
        // when that pipeline is given up.
        // (First, the pipeline still on the wire for b and c is given up, so that the
        // lone insert goes out at once, alone.)
        tokio::time::sleep(timeout).await;
        let lone = tokio::spawn(timed(store.clone()));
        tokio::time::sleep(timeout / 20).await;
        let mut burst = tokio::task::JoinSet::new();
        for _ in 0..1_000 {
            burst.spawn(timed(store.clone()));
        }
        let mut latest = Duration::ZERO;
        while let Some(outcome) = burst.join_next().await {
            let (outcome, waited) = outcome.unwrap();
            assert_eq!(outcome, Err(ReplayStoreError::Timeout));
            assert!(
                waited >= timeout,
                "an insert of the burst waited {waited:?}"
            );
            latest = latest.max(waited);
        }
        assert!(
            latest < timeout + SLACK,
            "the last insert of the burst waited {latest:?}"
        );
        assert_eq!(lone.await.unwrap().0, Err(ReplayStoreError::Timeout));

        // More inserts at once than the queue holds (16 384 waiting, 256 in a pipeline).
        let started = Instant::now();
        let mut inserts = tokio::task::JoinSet::new();
        for _ in 0..16_384 + 256 + 64 {
            let store = store.clone();
            inserts.spawn(async move { store.insert_if_absent(&fresh_key(), exp, now).await });
        }
        let (mut timed_out, mut refused) = (0, 0);
        while let Some(outcome) = inserts.join_next().await {
            match outcome.unwrap() {
                Err(ReplayStoreError::Timeout) => timed_out += 1,
                Err(ReplayStoreError::Unavailable(msg))
                    if msg == "too many inserts are waiting for Redis" =>
                {
                    refused += 1;
                }
                other => panic!("Redis holds every write, yet {other:?}"),
            }
        }
        let waited = started.elapsed();
        eprintln!("{timed_out} timed out, {refused} refused, in {waited:?}");
        assert!(refused > 0 && timed_out > 0);
        assert!(waited < pause / 2, "the inserts took {waited:?}");

        let () = redis::cmd("CLIENT")
            .arg("UNPAUSE")
            .query_async(&mut admin)
            .await
            .unwrap();
        let key = fresh_key();
        assert_eq!(
            store.insert_if_absent(&key, exp, now).await,
            Ok(Insert::Inserted)
        );
        assert_eq!(
            store.insert_if_absent(&key, exp, now).await,
            Ok(Insert::AlreadyPresent)
        );
        assert_eq!(store.local_batchers(), 1, "still this thread's own batcher");
    });
    drop(runtime);
    drop(home);
}

/// Inserts that arrive while a thread's own connection is still being opened are answered
/// by their deadline too, not when the attempt ends: Redis holds every command
/// (`CLIENT PAUSE … ALL`) while a new thread opens its connection.
#[test]
fn inserts_waiting_for_a_new_connection_time_out_by_their_deadline() {
    let Some(server) = redis_url().and_then(|_| redis_server_binary()) else {
        return;
    };
    let redis = OwnServer::start(&server, None);
    let home = home_runtime();
    // With a password, opening a connection waits for the reply to `AUTH`, which the pause
    // holds back.
    home.block_on(redis.set_password("opening"));
    let url = format!("redis://:opening@127.0.0.1:{}", redis.port);
    let mut config = RedisStoreConfig::new(&url);
    let timeout = Duration::from_millis(200);
    config.command_timeout = timeout;
    config.connect_timeout = Duration::from_secs(2);
    let store = home.block_on(RedisReplayStore::connect(config)).unwrap();
    let pause = Duration::from_secs(3);
    home.block_on(async {
        let mut admin = inspector(&url).await;
        pause_clients(&mut admin, pause, "ALL").await;
    });
    let runtime = current_thread_runtime();
    let (now, exp) = (now(), later(now(), 60));
    runtime.block_on(async {
        let started = Instant::now();
        let first = store.insert_if_absent(&fresh_key(), exp, now).await;
        let waited = started.elapsed();
        assert_eq!(first, Err(ReplayStoreError::Timeout));
        assert!(
            waited >= timeout && waited < timeout + SLACK,
            "the first insert waited {waited:?}"
        );
        assert_eq!(
            store.local_batchers(),
            1,
            "this thread's batcher, connecting"
        );
    });
    // Once the pause is over (no new connection could ask for it to end earlier), this
    // thread inserts on a connection of its own.
    runtime.block_on(recovers_on_own_connection(&store, exp, now));
    drop(runtime);
    drop(home);
}

/// The `redis-server` binary, or `None` after printing why the test is skipped. Asked only
/// when `DPOP_TEST_REDIS_URL` is set, the switch for every test that needs Redis.
fn redis_server_binary() -> Option<String> {
    if let Ok(path) = std::env::var("DPOP_TEST_REDIS_SERVER")
        && !path.is_empty()
    {
        return Some(path);
    }
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("redis-server"))
            .find(|candidate| candidate.is_file())
    });
    match found {
        Some(path) => Some(path.to_string_lossy().into_owned()),
        None => {
            eprintln!("skipping: no redis-server (set DPOP_TEST_REDIS_SERVER or put it on PATH)");
            None
        }
    }
}

/// A `redis-server` child process of this test, killed on drop.
struct OwnServer {
    child: Option<Child>,
    port: u16,
}

impl OwnServer {
    /// Starts a server on `port`, or on a free one, and waits until it accepts connections.
    fn start(binary: &str, port: Option<u16>) -> Self {
        let port = port.unwrap_or_else(|| {
            // Ask the OS for a free port, then release it for Redis. Racy in theory; another
            // process grabbing it in between would make this test fail loudly, not pass.
            TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port()
        });
        let child = Command::new(binary)
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let server = Self {
            child: Some(child),
            port,
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "redis-server did not start on {port}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        server
    }

    async fn set_password(&self, password: &str) {
        let mut conn = inspector(&format!("redis://127.0.0.1:{}", self.port)).await;
        let () = redis::cmd("CONFIG")
            .arg("SET")
            .arg("requirepass")
            .arg(password)
            .query_async(&mut conn)
            .await
            .unwrap();
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for OwnServer {
    fn drop(&mut self) {
        self.stop();
    }
}
