//! The store on a Redis Cluster and on a primary found through Sentinel, each started for
//! the test from `redis-server` (`DPOP_TEST_REDIS_SERVER` or `PATH`; `.ci/run` sets it) and
//! the `redis-cli` beside it. Without them each test says so on stderr and passes, unless
//! `DPOP_TEST_REQUIRE_REDIS_TOPOLOGIES` is set (`.ci/run` sets it).

mod common;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::{fresh_key, later, now};
use dpop_core::{AsyncReplayStore, Insert, ReplayKey};
use dpop_redis::{RedisReplayStore, RedisStoreConfig, RedisStoreError};
use dpop_test::{RedisCluster, RedisSentinel, SentinelAuth};

/// Says why the test is skipped, or fails it when `DPOP_TEST_REQUIRE_REDIS_TOPOLOGIES` is
/// set (as `.ci/run` does), so that CI cannot pass by skipping.
fn skip() {
    let why = "no redis-server or redis-cli (set DPOP_TEST_REDIS_SERVER or PATH)";
    if std::env::var_os("DPOP_TEST_REQUIRE_REDIS_TOPOLOGIES").is_some_and(|v| !v.is_empty()) {
        panic!("{why}, and DPOP_TEST_REQUIRE_REDIS_TOPOLOGIES is set");
    }
    eprintln!("skipping: {why}");
}

async fn connect(url: &str) -> RedisReplayStore {
    RedisReplayStore::connect(RedisStoreConfig::new(url))
        .await
        .unwrap_or_else(|e| panic!("connect to {url}: {e}"))
}

async fn dbsize(url: &str) -> u64 {
    let mut c = redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    redis::cmd("DBSIZE").query_async(&mut c).await.unwrap()
}

/// The slots node `url` serves, from the `myself` line of `CLUSTER NODES`.
async fn own_slots(url: &str) -> Vec<(u16, u16)> {
    let mut c = redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let nodes: String = redis::cmd("CLUSTER")
        .arg("NODES")
        .query_async(&mut c)
        .await
        .unwrap();
    let line = nodes.lines().find(|l| l.contains("myself")).unwrap();
    line.split_whitespace()
        .skip(8)
        .map(|range| match range.split_once('-') {
            Some((a, b)) => (a.parse().unwrap(), b.parse().unwrap()),
            None => (range.parse().unwrap(), range.parse().unwrap()),
        })
        .collect()
}

async fn key_slot(url: &str, key: &str) -> u16 {
    let mut c = redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    redis::cmd("CLUSTER")
        .arg("KEYSLOT")
        .arg(key)
        .query_async(&mut c)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_shares_replays_across_instances_and_spreads_keys() {
    let Some(cluster) = RedisCluster::spawn().await.unwrap() else {
        skip();
        return;
    };
    let a = connect(&cluster.url()).await;
    let b = connect(&cluster.url()).await;
    a.ping().await.unwrap();
    let now = now();
    let exp = later(now, 60);
    let keys: Vec<ReplayKey> = (0..60).map(|_| fresh_key()).collect();
    for (i, key) in keys.iter().enumerate() {
        let (first, second) = if i % 2 == 0 { (&a, &b) } else { (&b, &a) };
        assert_eq!(
            first.insert_if_absent(key, exp, now).await.unwrap(),
            Insert::Inserted
        );
        // The other instance sees the record: the replay is refused.
        assert_eq!(
            second.insert_if_absent(key, exp, now).await.unwrap(),
            Insert::AlreadyPresent
        );
        assert_eq!(
            first.insert_if_absent(key, exp, now).await.unwrap(),
            Insert::AlreadyPresent
        );
    }
    // Sixty keys over three primaries: every node holds some.
    let mut total = 0;
    for url in cluster.node_urls() {
        let n = dbsize(&url).await;
        assert!(n > 0, "no keys on {url}");
        total += n;
    }
    assert_eq!(total, 60);

    // Concurrent inserts of one key from both instances: exactly one wins.
    let key = fresh_key();
    let tasks: Vec<_> = (0..16)
        .map(|i| {
            let store = if i % 2 == 0 { a.clone() } else { b.clone() };
            tokio::spawn(async move { store.insert_if_absent(&key, exp, now).await })
        })
        .collect();
    let mut inserted = 0;
    for t in tasks {
        if t.await.unwrap().unwrap() == Insert::Inserted {
            inserted += 1;
        }
    }
    assert_eq!(inserted, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_node_down_fails_closed_for_its_keys() {
    let Some(mut cluster) = RedisCluster::spawn().await.unwrap() else {
        skip();
        return;
    };
    let mut config = RedisStoreConfig::new(cluster.url());
    config.key_prefix = "dpop:jti:".to_owned();
    let store = RedisReplayStore::connect(config).await.unwrap();
    let victim = cluster.node_urls()[2].clone();
    let survivor = cluster.node_urls()[0].clone();
    let victim_slots = own_slots(&victim).await;
    let now = now();
    let exp = later(now, 60);
    // Warm the store's view of the cluster.
    assert_eq!(
        store
            .insert_if_absent(&fresh_key(), exp, now)
            .await
            .unwrap(),
        Insert::Inserted
    );
    cluster.kill_node(2).unwrap();

    let (mut on_victim, mut inserted_on_victim, mut failed_on_victim, mut others_inserted) =
        (0, 0, 0, 0);
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        let key = fresh_key();
        let slot = key_slot(&survivor, &format!("dpop:jti:{}", key.to_hex())).await;
        let on_dead_node = victim_slots.iter().any(|(a, b)| (*a..=*b).contains(&slot));
        let result = store.insert_if_absent(&key, exp, now).await;
        if on_dead_node {
            on_victim += 1;
            match result {
                Ok(Insert::Inserted) => inserted_on_victim += 1,
                Ok(other) => panic!("a fresh key answered {other:?}"),
                Err(_) => failed_on_victim += 1,
            }
        } else if matches!(result, Ok(Insert::Inserted)) {
            others_inserted += 1;
        }
    }
    eprintln!(
        "cluster node down: {on_victim} inserts for its slots, {failed_on_victim} failed, \
         {inserted_on_victim} inserted; {others_inserted} inserted on the other nodes"
    );
    assert!(on_victim > 0, "no key fell on the dead node's slots");
    assert_eq!(
        inserted_on_victim, 0,
        "an insert for a dead node's slot succeeded"
    );
    assert_eq!(failed_on_victim, on_victim);
    // Readiness says the cluster is not whole, at the latest once the cluster has declared
    // the node failed (the fixture's cluster-node-timeout is 2 s).
    let deadline = Instant::now() + Duration::from_secs(10);
    while store.ping().await.is_ok() {
        assert!(Instant::now() < deadline, "still ready with a primary down");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn cluster_and_sentinel_urls_are_checked() {
    for bad in [
        "redis+cluster://",
        "redis+cluster:///",
        "redis+cluster://a:1,,b:2/",
        "redis+cluster://a:1,b:2/3",
        "redis+cluster://a:1?x=1",
        "redis+cluster://a b:1/",
        "redis+sentinel://a:26379",
        "redis+sentinel://a:26379/",
        "redis+sentinel://a:26379/my master",
        "redis+sentinel://a:26379/mymaster/x",
        "redis+sentinel://a:26379/mymaster/-1",
        "rediss+sentinel://a:26379/mymaster#insecure",
        "redis+unknown://a:1/",
    ] {
        match RedisReplayStore::connect(RedisStoreConfig::new(bad)).await {
            Err(RedisStoreError::InvalidConfig(_)) => {}
            other => panic!("{bad}: {other:?}"),
        }
    }
}

#[tokio::test]
async fn cluster_and_sentinel_errors_hide_passwords() {
    for url in [
        format!(
            "redis+cluster://:hunter2@127.0.0.1:{}/",
            dpop_test::free_port()
        ),
        format!(
            "redis+sentinel://:hunter2@127.0.0.1:{}/mymaster",
            dpop_test::free_port()
        ),
    ] {
        let mut config = RedisStoreConfig::new(&url);
        config.connect_timeout = Duration::from_millis(500);
        assert!(!format!("{config:?}").contains("hunter2"));
        let err = RedisReplayStore::connect(config).await.unwrap_err();
        let text = format!("{err} {err:?}");
        assert!(!text.contains("hunter2"), "{text}");
        assert!(text.contains("***"), "{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_shares_replays_and_follows_a_failover_failing_closed_meanwhile() {
    let Some(mut set) = RedisSentinel::spawn("dpopmaster").await.unwrap() else {
        skip();
        return;
    };
    let a = connect(&set.url()).await;
    let b = connect(&set.url()).await;
    a.ping().await.unwrap();
    let now = now();
    let exp = later(now, 120);
    for _ in 0..20 {
        let key = fresh_key();
        assert_eq!(
            a.insert_if_absent(&key, exp, now).await.unwrap(),
            Insert::Inserted
        );
        assert_eq!(
            b.insert_if_absent(&key, exp, now).await.unwrap(),
            Insert::AlreadyPresent
        );
    }
    assert_eq!(dbsize(&set.primary_url()).await, 20);

    // Proofs recorded just before the crash: are they still refused after the failover?
    let recorded_last: Vec<ReplayKey> = (0..50).map(|_| fresh_key()).collect();
    for key in &recorded_last {
        assert_eq!(
            a.insert_if_absent(key, exp, now).await.unwrap(),
            Insert::Inserted
        );
    }
    set.kill_primary().unwrap();
    let killed_at = Instant::now();

    // Until the sentinel has promoted the replica, nothing is accepted: every insert fails
    // until one succeeds, and that one was written on the promoted replica.
    let deadline = killed_at + Duration::from_secs(30);
    let (mut attempts, mut failed) = (0u32, 0u32);
    let key = loop {
        let key = fresh_key();
        attempts += 1;
        match a.insert_if_absent(&key, exp, now).await {
            Ok(Insert::Inserted) => break key,
            Ok(other) => panic!("a fresh key answered {other:?}"),
            Err(_) => failed += 1,
        }
        assert!(
            Instant::now() < deadline,
            "no recovery after the primary died"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let recovered_after = killed_at.elapsed();
    assert_eq!(role(&set.replica_url()).await, "master");
    assert!(exists(&set.replica_url(), &key).await);
    assert!(failed > 0 && failed == attempts - 1);
    set.wait_for_failover().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match b.insert_if_absent(&key, exp, now).await {
            Ok(insert) => {
                assert_eq!(insert, Insert::AlreadyPresent);
                break;
            }
            Err(e) => {
                assert!(Instant::now() < deadline, "b did not recover: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    let mut replayed = 0;
    for key in &recorded_last {
        if a.insert_if_absent(key, exp, now).await.unwrap() == Insert::Inserted {
            replayed += 1;
        }
    }
    eprintln!(
        "sentinel failover: inserts work again {recovered_after:?} after the primary died; \
         the {failed} inserts before that all failed closed; {replayed} of {} proofs recorded just before the crash were accepted \
         again on the new primary (each would be a record lost to asynchronous replication)",
        recorded_last.len()
    );
}

async fn role(url: &str) -> String {
    let mut c = redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let role: Vec<redis::Value> = redis::cmd("ROLE").query_async(&mut c).await.unwrap();
    match role.first() {
        Some(redis::Value::BulkString(b)) => String::from_utf8_lossy(b).into_owned(),
        Some(redis::Value::SimpleString(s)) => s.clone(),
        other => panic!("ROLE: {other:?}"),
    }
}

async fn exists(url: &str, key: &ReplayKey) -> bool {
    let mut c = redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    redis::cmd("EXISTS")
        .arg(format!("dpop:jti:{}", key.to_hex()))
        .query_async::<u64>(&mut c)
        .await
        .unwrap()
        == 1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_replicas_accepts_only_what_enough_replicas_acknowledged() {
    let Some(set) = RedisSentinel::spawn("dpopwait").await.unwrap() else {
        skip();
        return;
    };
    let now = now();
    let exp = later(now, 60);
    // One replica: WAIT 1 is satisfied.
    let mut config = RedisStoreConfig::new(set.url());
    config.wait_replicas = 1;
    let one = RedisReplayStore::connect(config).await.unwrap();
    let key = fresh_key();
    assert_eq!(
        one.insert_if_absent(&key, exp, now).await.unwrap(),
        Insert::Inserted
    );
    assert!(exists(&set.replica_url(), &key).await);
    assert_eq!(
        one.insert_if_absent(&key, exp, now).await.unwrap(),
        Insert::AlreadyPresent
    );
    // Two replicas wanted, one there: refused after the WAIT time-out, never Inserted.
    let mut config = RedisStoreConfig::new(set.url());
    config.wait_replicas = 2;
    config.wait_timeout = Duration::from_millis(50);
    let two = RedisReplayStore::connect(config).await.unwrap();
    let key = fresh_key();
    let started = Instant::now();
    let err = two.insert_if_absent(&key, exp, now).await.unwrap_err();
    assert!(started.elapsed() >= Duration::from_millis(50), "{err:?}");
    assert!(format!("{err:?}").contains("replicas"), "{err:?}");
    // The key was recorded on the primary all the same: a replay is still refused.
    assert_eq!(
        two.insert_if_absent(&key, exp, now).await.unwrap(),
        Insert::AlreadyPresent
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_with_an_acl_user_from_the_settings_never_shows_the_password() {
    let Some(cluster) = RedisCluster::spawn().await.unwrap() else {
        skip();
        return;
    };
    for url in cluster.node_urls() {
        let mut c = redis::Client::open(url.as_str())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        let () = redis::cmd("ACL")
            .arg("SETUSER")
            .arg("dpop")
            .arg("on")
            .arg(">correct-horse-battery")
            .arg("~dpop:*")
            .arg("+@all")
            .query_async(&mut c)
            .await
            .unwrap();
        let () = redis::cmd("ACL")
            .arg("SETUSER")
            .arg("default")
            .arg("off")
            .query_async(&mut c)
            .await
            .unwrap();
    }
    // Without credentials: refused (the default user is off).
    let err = RedisReplayStore::connect(RedisStoreConfig::new(cluster.url()))
        .await
        .unwrap_err();
    eprintln!("no credentials: {err}");

    // A wrong password: refused, and never repeated.
    let mut config = RedisStoreConfig::new(cluster.url());
    config.username = Some("dpop".to_owned());
    config.password = Some("wrong-horse-battery".to_owned());
    let err = RedisReplayStore::connect(config).await.unwrap_err();
    let text = format!("{err} {err:?}");
    assert!(!text.contains("wrong-horse"), "{text}");

    // The right one, from the settings rather than the URL.
    let mut config = RedisStoreConfig::new(cluster.url());
    config.username = Some("dpop".to_owned());
    config.password = Some("correct-horse-battery".to_owned());
    let shown = format!("{config:?}");
    assert!(!shown.contains("correct-horse"), "{shown}");
    let store = RedisReplayStore::connect(config).await.unwrap();
    let shown = format!("{store:?}");
    assert!(!shown.contains("correct-horse"), "{shown}");
    let now = now();
    let key = fresh_key();
    assert_eq!(
        store
            .insert_if_absent(&key, later(now, 60), now)
            .await
            .unwrap(),
        Insert::Inserted
    );
    assert_eq!(
        store
            .insert_if_absent(&key, later(now, 60), now)
            .await
            .unwrap(),
        Insert::AlreadyPresent
    );
    store.ping().await.unwrap();
}

/// The failover measured under load: eight tasks on two store instances insert fresh keys
/// without pause while the primary is killed. Every key answered `Inserted` after the kill
/// must be on the promoted replica (nothing accepted while no primary answered); keys
/// answered `Inserted` before the kill but missing on the new primary are the proofs a
/// failover forgets, and presenting them again shows whether they are accepted twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_failover_under_load_accepts_nothing_without_a_primary() {
    use std::sync::Arc;
    use std::sync::atomic::AtomicBool;

    let Some(mut set) = RedisSentinel::spawn("dpopload").await.unwrap() else {
        skip();
        return;
    };
    let stores = [connect(&set.url()).await, connect(&set.url()).await];
    let now = now();
    let exp = later(now, 120);
    let stop = Arc::new(AtomicBool::new(false));
    let killed = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for i in 0..8 {
        let store = stores[i % 2].clone();
        let (stop, killed) = (Arc::clone(&stop), Arc::clone(&killed));
        tasks.push(tokio::spawn(async move {
            // (key, started after the kill?) for every Inserted; errors counted.
            let (mut inserted, mut errors_seen) = (Vec::new(), 0u32);
            while !stop.load(Ordering::Relaxed) {
                let key = fresh_key();
                let started_after_kill = killed.load(Ordering::SeqCst);
                match store.insert_if_absent(&key, exp, now).await {
                    Ok(Insert::Inserted) => inserted.push((key, started_after_kill)),
                    Ok(other) => panic!("a fresh key answered {other:?}"),
                    Err(_) => {
                        errors_seen += 1;
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                }
            }
            (inserted, errors_seen)
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    // The flag goes up once the primary is dead (kill waits for it), so an insert started
    // after it cannot have been answered by the old primary.
    set.kill_primary().unwrap();
    killed.store(true, Ordering::SeqCst);
    set.wait_for_failover().await.unwrap();
    // Let the load run on the new primary for a moment.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    stop.store(true, Ordering::Relaxed);
    let (mut before, mut after, mut errors) = (Vec::new(), Vec::new(), 0);
    for t in tasks {
        let (inserted, e) = t.await.unwrap();
        errors += e;
        for (key, after_kill) in inserted {
            if after_kill {
                after.push(key)
            } else {
                before.push(key)
            }
        }
    }
    assert!(!before.is_empty() && !after.is_empty() && errors > 0);
    // Accepted after the kill: only ever on the new primary.
    for key in &after {
        assert!(
            exists(&set.replica_url(), key).await,
            "a key was answered Inserted after the kill but is not on the new primary"
        );
    }
    // Accepted before the kill: how many did the failover forget, and are they accepted
    // again?
    let mut missing = 0;
    for key in &before {
        if !exists(&set.replica_url(), key).await {
            missing += 1;
        }
    }
    let mut accepted_again = 0;
    for key in &before {
        if stores[0].insert_if_absent(key, exp, now).await.unwrap() == Insert::Inserted {
            accepted_again += 1;
        }
    }
    eprintln!(
        "sentinel failover under load (8 tasks): {} proofs recorded before the kill, {missing} \
         of them missing on the new primary, {accepted_again} accepted again; {errors} inserts \
         failed closed during the outage, {} accepted after it, all on the new primary",
        before.len(),
        after.len()
    );
    // A forgotten record is accepted again, once; a kept one is not.
    assert_eq!(accepted_again, missing);
}

/// One insert made by the load of [`cluster_failover_under_load`].
struct Attempt {
    key: ReplayKey,
    /// The key's slot was served by the primary that is killed.
    on_victim: bool,
    /// A replay of a key this task recorded earlier, not a fresh key.
    replay: bool,
    started: Instant,
    finished: Instant,
    outcome: Result<Insert, dpop_core::ReplayStoreError>,
}

/// What `INFO replication` of `url` says, whole.
async fn info_replication(url: &str) -> String {
    let mut c = redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    redis::cmd("INFO")
        .arg("replication")
        .query_async(&mut c)
        .await
        .unwrap()
}

/// How long before the kill a record may be lost by the failover: what asynchronous
/// replication had not yet passed on. On a local host the lag is well under a millisecond;
/// the bound leaves room for a busy test machine and is still far below the load's length.
const LOSS_WINDOW: Duration = Duration::from_millis(500);

/// A Redis Cluster with one replica per primary; eight tasks on two store instances insert
/// fresh keys without pause, and every third insert replays a key the task recorded before,
/// while one primary is killed and its replica takes over.
///
/// Checks: while the replica had not yet been promoted, every insert for the dead
/// primary's slots failed (never `Inserted`); once it was, inserts for those slots succeed
/// again (with `wait_replicas` they stay refused while the promoted replica has no
/// replica, and work again once the old primary has rejoined as one);
/// every key answered `Inserted` after the kill is still known afterwards; a record made
/// before the kill is lost when the promoted replica lacks it (or a replay of it was
/// recorded anew), and each lost record was made in the last [`LOSS_WINDOW`] before the
/// kill. Returns how many were lost, or `None` when skipped.
async fn cluster_failover_under_load(wait_replicas: u32) -> Option<usize> {
    use std::collections::HashSet;
    use std::sync::Arc;
    use std::sync::atomic::AtomicBool;

    use redis::cluster_routing::Slot;

    let Some(mut cluster) = RedisCluster::spawn_with_replicas().await.unwrap() else {
        skip();
        return None;
    };
    let urls = cluster.node_urls();
    let mut victim = None;
    for (i, url) in urls.iter().enumerate() {
        if role(url).await == "master" {
            victim = Some(i);
            break;
        }
    }
    let victim = victim.expect("a primary");
    let victim_port = urls[victim].rsplit(':').next().unwrap().to_owned();
    let mut heir = None;
    for (i, url) in urls.iter().enumerate() {
        if info_replication(url)
            .await
            .contains(&format!("master_port:{victim_port}\r"))
        {
            heir = Some(i);
        }
    }
    let heir = &urls[heir.expect("the victim's replica")];
    let victim_slots: Arc<HashSet<Slot>> = Arc::new(
        own_slots(&urls[victim])
            .await
            .into_iter()
            .flat_map(|(a, b)| a..=b)
            .filter_map(Slot::new)
            .collect(),
    );

    let mut stores = Vec::new();
    for _ in 0..2 {
        let mut config = RedisStoreConfig::new(cluster.url());
        config.wait_replicas = wait_replicas;
        stores.push(RedisReplayStore::connect(config).await.unwrap());
    }
    let now = now();
    let exp = later(now, 120);
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for i in 0..8 {
        let store = stores[i % 2].clone();
        let stop = Arc::clone(&stop);
        let victim_slots = Arc::clone(&victim_slots);
        tasks.push(tokio::spawn(async move {
            let mut attempts: Vec<Attempt> = Vec::new();
            let mut recorded: Vec<ReplayKey> = Vec::new();
            let mut n = 0usize;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let (key, replay) = if n.is_multiple_of(3) && !recorded.is_empty() {
                    (recorded[(n / 3) % recorded.len()], true)
                } else {
                    (fresh_key(), false)
                };
                let slot = Slot::for_key(format!("dpop:jti:{}", key.to_hex()));
                let started = Instant::now();
                let outcome = store.insert_if_absent(&key, exp, now).await;
                let finished = Instant::now();
                if !replay && outcome == Ok(Insert::Inserted) {
                    recorded.push(key);
                }
                if !replay {
                    assert_ne!(outcome, Ok(Insert::AlreadyPresent), "a fresh key");
                }
                let failed = outcome.is_err();
                attempts.push(Attempt {
                    key,
                    on_victim: victim_slots.contains(&slot),
                    replay,
                    started,
                    finished,
                    outcome,
                });
                if failed {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
            attempts
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    cluster.kill_node(victim).unwrap();
    // The process is gone once kill_node returns: nothing after this was answered by it.
    let killed_at = Instant::now();
    // The last moment the replica was known not to be promoted yet: a ROLE sent then still
    // answered `slave`, so no primary served the victim's slots before it.
    let mut unpromoted_until = killed_at;
    let promoted_at = loop {
        let asked = Instant::now();
        if role(heir).await == "master" {
            break Instant::now();
        }
        unpromoted_until = asked;
        assert!(
            killed_at.elapsed() < Duration::from_secs(20),
            "the replica was not promoted"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    cluster.wait_until_ok().await.unwrap();
    let cluster_ok_at = Instant::now();
    // Let the load run on the promoted replica for a moment.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    stop.store(true, Ordering::Relaxed);
    let mut attempts = Vec::new();
    for t in tasks {
        attempts.extend(t.await.unwrap());
    }

    // While no primary served the victim's slots, every insert for them failed.
    let mut blind = 0;
    for a in attempts
        .iter()
        .filter(|a| a.on_victim && a.started >= killed_at)
    {
        if a.finished < unpromoted_until {
            blind += 1;
            assert!(
                a.outcome.is_err(),
                "an insert for a dead primary's slot answered {:?} before its replica was promoted",
                a.outcome
            );
        }
    }
    assert!(
        blind > 0,
        "no insert was tried while the slots had no primary"
    );
    let recovered_at = attempts
        .iter()
        .filter(|a| {
            a.on_victim && !a.replay && a.started >= killed_at && a.outcome == Ok(Insert::Inserted)
        })
        .map(|a| a.finished)
        .min();
    let short_of_replicas = |a: &&Attempt| matches!(&a.outcome, Err(dpop_core::ReplayStoreError::Unavailable(m)) if m.contains("fewer Redis replicas"));
    if wait_replicas == 0 {
        assert!(
            recovered_at.is_some(),
            "no insert for the dead primary's slots succeeded after the failover"
        );
    } else {
        // The promoted replica has no replica of its own: WAIT cannot be satisfied, so its
        // slots keep refusing (closed, never open) until one joins it.
        assert_eq!(
            recovered_at, None,
            "an insert was accepted without a replica"
        );
        assert!(
            attempts
                .iter()
                .filter(|a| a.on_victim && !a.replay && a.started >= cluster_ok_at)
                .all(|a| a.outcome.is_err()),
            "an insert on the promoted replica was accepted"
        );
        // Once the client has found the promoted replica, the refusal says why: the
        // record reached no replica. (Until then the inserts time out.)
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let key = fresh_key();
            if !victim_slots.contains(&Slot::for_key(format!("dpop:jti:{}", key.to_hex()))) {
                continue;
            }
            match stores[0].insert_if_absent(&key, exp, now).await {
                Err(dpop_core::ReplayStoreError::Unavailable(m))
                    if m.contains("fewer Redis replicas") =>
                {
                    break;
                }
                Err(e) => assert!(
                    Instant::now() < deadline,
                    "the promoted replica's refusals do not say that replicas are missing: {e:?}"
                ),
                Ok(insert) => panic!("an insert on the promoted replica answered {insert:?}"),
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // The old primary comes back (empty), rejoins as the promoted replica's replica:
        // WAIT is satisfied again and its slots record proofs again.
        cluster.restart_node(victim).await.unwrap();
        let restarted_at = Instant::now();
        let deadline = restarted_at + Duration::from_secs(20);
        let recovered = loop {
            let key = fresh_key();
            if !victim_slots.contains(&Slot::for_key(format!("dpop:jti:{}", key.to_hex()))) {
                continue;
            }
            match stores[1].insert_if_absent(&key, exp, now).await {
                Ok(Insert::Inserted) => break restarted_at.elapsed(),
                Ok(other) => panic!("a fresh key answered {other:?}"),
                Err(e) => assert!(
                    Instant::now() < deadline,
                    "no record accepted after a replica rejoined: {e:?}"
                ),
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert!(
            info_replication(heir).await.contains("connected_slaves:1"),
            "accepted, but the promoted replica has no replica"
        );
        eprintln!(
            "cluster failover (wait_replicas = {wait_replicas}): the dead primary's slots \
             record proofs again {recovered:?} after it was restarted and rejoined as a replica"
        );
    }
    let outage_end = recovered_at.unwrap_or(cluster_ok_at);
    let failed_after_kill = attempts
        .iter()
        .filter(|a| a.started >= killed_at && a.finished < outage_end && a.outcome.is_err())
        .count();
    let others_ok_meanwhile = attempts
        .iter()
        .filter(|a| {
            !a.on_victim && a.started >= killed_at && a.finished < outage_end && a.outcome.is_ok()
        })
        .count();
    let others_ok_after = attempts
        .iter()
        .filter(|a| !a.on_victim && a.started >= cluster_ok_at && a.outcome.is_ok())
        .count();
    assert!(others_ok_after > 0, "the other primaries stopped working");

    // Which records did the failover lose? A replay that Redis recorded again during the
    // load (accepted, or refused only for want of replicas), or a key missing on the
    // promoted replica now.
    let mut lost: HashSet<ReplayKey> = attempts
        .iter()
        .filter(|a| a.replay && (a.outcome == Ok(Insert::Inserted) || short_of_replicas(a)))
        .map(|a| a.key)
        .collect();
    let replays_accepted = attempts
        .iter()
        .filter(|a| a.replay && a.outcome == Ok(Insert::Inserted))
        .count();
    let replays_refused = attempts
        .iter()
        .filter(|a| a.replay && a.outcome == Ok(Insert::AlreadyPresent))
        .count();
    let fresh: Vec<&Attempt> = attempts
        .iter()
        .filter(|a| !a.replay && a.outcome == Ok(Insert::Inserted))
        .collect();
    let before: Vec<&&Attempt> = fresh
        .iter()
        .filter(|a| a.on_victim && a.finished <= killed_at)
        .collect();
    for a in &before {
        if !exists(heir, &a.key).await {
            lost.insert(a.key);
        }
    }
    for a in fresh.iter().filter(|a| lost.contains(&a.key)) {
        assert!(
            a.on_victim,
            "a record on a primary that did not fail was lost"
        );
        assert!(
            a.finished <= killed_at && killed_at - a.finished <= LOSS_WINDOW,
            "a record lost by the failover was made {:?} before the kill",
            killed_at.saturating_duration_since(a.finished)
        );
    }
    // Every record accepted after the kill is still known: replaying it is refused.
    for a in fresh.iter().filter(|a| a.started >= killed_at) {
        assert_eq!(
            stores[0].insert_if_absent(&a.key, exp, now).await,
            Ok(Insert::AlreadyPresent),
            "a record accepted after the kill was lost"
        );
    }
    eprintln!(
        "cluster failover (wait_replicas = {wait_replicas}, cluster-node-timeout 1000 ms, 8 tasks): \
         replica promoted {:?} after the kill, cluster ok after {:?}; inserts for the dead \
         primary's slots {}; {failed_after_kill} inserts failed closed in the outage ({blind} \
         for the dead primary's slots while they certainly had no primary, none accepted), \
         {others_ok_meanwhile} inserts on other primaries succeeded meanwhile, \
         {others_ok_after} after; {} fresh proofs recorded, {} on the dead primary's slots \
         before the kill, {} of those lost by the failover ({replays_accepted} replays \
         accepted during the load), {replays_refused} replays refused",
        promoted_at - killed_at,
        cluster_ok_at - killed_at,
        match recovered_at {
            Some(at) => format!("work again {:?} after the kill", at - killed_at),
            None => "stay refused (no replica left to acknowledge)".to_owned(),
        },
        fresh.len(),
        before.len(),
        lost.len(),
    );
    Some(lost.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_failover_under_load_fails_closed_and_loses_at_most_the_last_records() {
    // Asynchronous replication: a record made just before the crash may be lost; how many
    // is reported, and when each was made is checked.
    cluster_failover_under_load(0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_failover_with_wait_replicas_loses_no_record() {
    if let Some(lost) = cluster_failover_under_load(1).await {
        assert_eq!(lost, 0, "a record acknowledged by the replica was lost");
    }
}

/// Connects through sentinels that ask for a login, with `login` (user, password).
async fn connect_sentinel_with(
    set: &RedisSentinel,
    login: (Option<&str>, Option<&str>),
) -> Result<RedisReplayStore, RedisStoreError> {
    let mut config = RedisStoreConfig::new(set.url());
    config.sentinel_username = login.0.map(str::to_owned);
    config.sentinel_password = login.1.map(str::to_owned);
    config.connect_timeout = Duration::from_secs(1);
    let shown = format!("{config:?}");
    if let Some(password) = login.1 {
        assert!(!shown.contains(password), "{shown}");
    }
    RedisReplayStore::connect(config).await
}

/// A refused start-up: the error names the sentinel and the server's error code, never the
/// password tried.
fn assert_refused_by_sentinel(
    result: Result<RedisReplayStore, RedisStoreError>,
    set: &RedisSentinel,
    reason: &str,
    password: Option<&str>,
) {
    let err = result.expect_err("connected with a login the sentinel refuses");
    let text = format!("{err} {err:?}");
    assert!(matches!(err, RedisStoreError::Connect { .. }), "{text}");
    assert!(
        text.contains(&format!("sentinel {}: {reason}", set.sentinel_addr())),
        "{text}"
    );
    if let Some(password) = password {
        assert!(!text.contains(password), "{text}");
    }
    eprintln!("refused as expected: {err}");
}

async fn shares_records(a: &RedisReplayStore, b: &RedisReplayStore) {
    let now = now();
    let key = fresh_key();
    assert_eq!(
        a.insert_if_absent(&key, later(now, 60), now).await.unwrap(),
        Insert::Inserted
    );
    assert_eq!(
        b.insert_if_absent(&key, later(now, 60), now).await.unwrap(),
        Insert::AlreadyPresent
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_with_requirepass_takes_its_password_and_refuses_without_it() {
    let auth = SentinelAuth {
        username: None,
        password: "sentinel-pass-7f3a".to_owned(),
    };
    let Some(set) = RedisSentinel::spawn_with_auth("dpopauth", auth)
        .await
        .unwrap()
    else {
        skip();
        return;
    };
    // The right password: the primary is found (and gets none: it asks for none, and would
    // refuse an AUTH, so the sentinels' password does not leak to it).
    let a = connect_sentinel_with(&set, (None, Some("sentinel-pass-7f3a")))
        .await
        .unwrap();
    let b = connect_sentinel_with(&set, (None, Some("sentinel-pass-7f3a")))
        .await
        .unwrap();
    assert!(!format!("{a:?}").contains("sentinel-pass"));
    a.ping().await.unwrap();
    shares_records(&a, &b).await;
    // No password: the sentinel answers NOAUTH.
    assert_refused_by_sentinel(
        connect_sentinel_with(&set, (None, None)).await,
        &set,
        "Redis answered with error NOAUTH",
        None,
    );
    // A wrong one: refused, and the password tried is not repeated.
    assert_refused_by_sentinel(
        connect_sentinel_with(&set, (None, Some("wrong-pass-91c2"))).await,
        &set,
        "Password authentication failed",
        Some("wrong-pass-91c2"),
    );
    // The primary's password is not the sentinels': given only in the URL, the sentinels
    // are still asked without one.
    let mut config = RedisStoreConfig::new(set.url().replace("://", "://:sentinel-pass-7f3a@"));
    config.connect_timeout = Duration::from_secs(1);
    let err = RedisReplayStore::connect(config).await.unwrap_err();
    let text = format!("{err} {err:?}");
    assert!(!text.contains("sentinel-pass"), "{text}");
    assert!(
        text.contains(&format!(
            "sentinel {}: Redis answered with error NOAUTH",
            set.sentinel_addr()
        )),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_with_an_acl_user_takes_user_and_password() {
    let auth = SentinelAuth {
        username: Some("watcher".to_owned()),
        password: "watcher-pass-22be".to_owned(),
    };
    let Some(set) = RedisSentinel::spawn_with_auth("dpopacl", auth)
        .await
        .unwrap()
    else {
        skip();
        return;
    };
    let a = connect_sentinel_with(&set, (Some("watcher"), Some("watcher-pass-22be")))
        .await
        .unwrap();
    let b = connect_sentinel_with(&set, (Some("watcher"), Some("watcher-pass-22be")))
        .await
        .unwrap();
    shares_records(&a, &b).await;
    // The password without the user is tried for the `default` user, which is off.
    assert_refused_by_sentinel(
        connect_sentinel_with(&set, (None, Some("watcher-pass-22be"))).await,
        &set,
        "Password authentication failed",
        Some("watcher-pass-22be"),
    );
    assert_refused_by_sentinel(
        connect_sentinel_with(&set, (Some("watcher"), Some("not-the-pass-5d"))).await,
        &set,
        "Password authentication failed",
        Some("not-the-pass-5d"),
    );
}
