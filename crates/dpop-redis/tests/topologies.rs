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
use dpop_test::{RedisCluster, RedisSentinel};

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
