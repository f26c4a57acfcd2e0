//! The two-layer cache against a real Redis (`KEEL_TEST_REDIS_URL`): two `Cache` instances over
//! two backplanes stand for two processes sharing Redis. Without the variable these tests pass
//! vacuously outside CI and fail in CI (see `shared::testing::redis_url`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use shared::cache::{Cache, CacheBackplane, CacheConfig, CacheKey, Namespace, RedisBackplane};
use shared::clock::{ManualClock, SystemClock};
use shared::redis::Redis;
use shared::testing::test_redis;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// One "process": its own Redis connection, backplane and cache, sharing the key prefix.
async fn process(redis: &Redis, config: CacheConfig) -> (Cache<String>, Arc<RedisBackplane>) {
    let own =
        Redis::connect(&shared::secret::Secret::new(shared::testing::redis_url().unwrap_or_default()), redis.config())
            .await
            .unwrap();
    let backplane = RedisBackplane::start(own);
    assert!(backplane.wait_subscribed(Duration::from_secs(5)).await, "subscription not established");
    let cache = Cache::new("things", config, Some(backplane.clone() as Arc<dyn CacheBackplane>), Arc::new(SystemClock));
    (cache, backplane)
}

fn value(s: &str) -> impl Fn() -> std::future::Ready<Result<String, String>> + '_ {
    move || std::future::ready(Ok(s.to_owned()))
}

/// Polls `check` every few ms until it holds or `limit` passes; returns the time it took.
async fn within(limit: Duration, mut check: impl AsyncFnMut() -> bool) -> Option<Duration> {
    let start = std::time::Instant::now();
    while start.elapsed() < limit {
        if check().await {
            return Some(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_misses_cause_one_load_and_one_l2_read() {
    let Some(redis) = test_redis().await else { return };
    let (cache, _bp) = process(&redis, CacheConfig::default()).await;
    let key = CacheKey::global("hot", "k");
    let loads = Arc::new(AtomicUsize::new(0));
    let barrier = Arc::new(tokio::sync::Barrier::new(1000));
    let tasks: Vec<_> = (0..1000)
        .map(|_| {
            let (cache, key, loads, barrier) = (cache.clone(), key.clone(), loads.clone(), barrier.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                cache
                    .get_or_load(&key, || async {
                        loads.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        Ok::<_, String>("v".to_owned())
                    })
                    .await
            })
        })
        .collect();
    for task in tasks {
        assert_eq!(task.await.unwrap().unwrap(), "v");
    }
    assert_eq!(loads.load(Ordering::SeqCst), 1);
    let stats = cache.stats();
    assert_eq!(stats.l2_hits + stats.l2_misses, 1, "one L2 read for all the waiters: {stats:?}");

    // A second process finds it in L2 without loading.
    let (other, _bp2) = process(&redis, CacheConfig::default()).await;
    let got = other.get_or_load(&key, || async { Err::<String, _>("must not load".to_owned()) }).await;
    assert_eq!(got.unwrap(), "v");
    assert_eq!(other.stats().l2_hits, 1);
}

#[tokio::test]
async fn a_write_on_one_process_is_read_fresh_on_the_other() {
    let Some(redis) = test_redis().await else { return };
    let (a, _bpa) = process(&redis, CacheConfig::default()).await;
    let (b, _bpb) = process(&redis, CacheConfig::default()).await;
    let key = CacheKey::organization("org_1", "things", "1");
    // Both processes hold "v1" in L1 (b through L2).
    assert_eq!(a.get_or_load(&key, value("v1")).await.unwrap(), "v1");
    assert_eq!(b.get_or_load(&key, value("never")).await.unwrap(), "v1");
    // Process a writes (the source now says v2) and invalidates.
    a.invalidate(&key).await;
    let took = within(Duration::from_secs(1), async || b.stats().invalidations_received > 0).await;
    assert!(took.is_some(), "the invalidation never reached the other process");
    assert_eq!(b.get_or_load(&key, value("v2")).await.unwrap(), "v2");
    assert_eq!(a.get_or_load(&key, value("v2-a")).await.unwrap(), "v2", "a reads b's write-back from L2");
}

#[tokio::test]
async fn a_namespace_bump_reaches_every_process_and_l2() {
    let Some(redis) = test_redis().await else { return };
    let (a, _bpa) = process(&redis, CacheConfig::default()).await;
    let (b, _bpb) = process(&redis, CacheConfig::default()).await;
    let ns = Namespace::organization("org_1", "members");
    let other_org = CacheKey::organization("org_2", "members", "1");
    for id in ["1", "2"] {
        a.get_or_load(&ns.key(id), value("old")).await.unwrap();
        assert_eq!(b.get_or_load(&ns.key(id), value("never")).await.unwrap(), "old");
    }
    b.get_or_load(&other_org, value("org2")).await.unwrap();
    a.invalidate_namespace(&ns).await;
    assert!(within(Duration::from_secs(1), async || b.stats().invalidations_received > 0).await.is_some());
    assert_eq!(b.get_or_load(&ns.key("2"), value("new")).await.unwrap(), "new");
    assert_eq!(b.get_or_load(&other_org, value("never")).await.unwrap(), "org2", "other organizations keep theirs");
    // L2 entries written under the old namespace version are not served either.
    let (c, _bpc) = process(&redis, CacheConfig::default()).await;
    assert_eq!(c.get_or_load(&ns.key("1"), value("newest")).await.unwrap(), "newest");
}

#[tokio::test]
async fn organizations_never_share_l2_entries() {
    let Some(redis) = test_redis().await else { return };
    let (a, _bpa) = process(&redis, CacheConfig::default()).await;
    let (b, _bpb) = process(&redis, CacheConfig::default()).await;
    let mine = CacheKey::organization("org_a", "keys", "same-id");
    let theirs = CacheKey::organization("org_b", "keys", "same-id");
    a.get_or_load(&mine, value("secret of a")).await.unwrap();
    assert_eq!(b.get_or_load(&theirs, value("b")).await.unwrap(), "b");
    assert_eq!(b.stats().l2_hits, 0);
    // Escaping keeps crafted ids apart too.
    let crafted = CacheKey::organization("org_b", "keys", "../org_a/keys/same-id");
    assert_eq!(b.get_or_load(&crafted, value("crafted")).await.unwrap(), "crafted");
}

/// A lost message (here: the source changes and L2 is cleared behind the caches' back, with no
/// message at all) leaves a stale L1 entry for at most `l1_ttl_ms`: every read that starts after
/// the bound gets the fresh value.
#[tokio::test]
async fn a_lost_invalidation_is_stale_for_at_most_the_l1_ttl() {
    let Some(redis) = test_redis().await else { return };
    let bound = Duration::from_millis(300);
    let config = CacheConfig { l1_ttl_ms: 300, ..Default::default() };
    let (b, _bpb) = process(&redis, config).await;
    let key = CacheKey::global("things", "lost");
    assert_eq!(b.get_or_load(&key, value("old")).await.unwrap(), "old");
    let loaded = std::time::Instant::now();
    // The write happens and its message is lost: drop L2 directly (no publish).
    clear_l2(&redis).await;
    let mut saw_stale = false;
    loop {
        let started = loaded.elapsed();
        let got = b.get_or_load(&key, value("new")).await.unwrap();
        if got == "new" {
            break;
        }
        saw_stale = true;
        assert!(started < bound, "stale value served {started:?} after the load, bound {bound:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(saw_stale || loaded.elapsed() >= bound, "the test did not observe the stale window");
}

async fn clear_l2(redis: &Redis) {
    let pattern = redis.key("cache:*");
    redis
        .run(|mut conn| async move {
            let keys: Vec<String> = ::redis::cmd("KEYS").arg(pattern).query_async(&mut conn).await?;
            if keys.is_empty() {
                return Ok(0);
            }
            ::redis::cmd("DEL").arg(keys).query_async::<i64>(&mut conn).await
        })
        .await
        .unwrap();
}

/// The same bound, proved with a manual clock: exactly up to `l1_ttl_ms`, not a moment longer.
#[tokio::test]
async fn the_lost_message_bound_is_exact_on_a_manual_clock() {
    let Some(redis) = test_redis().await else { return };
    let clock = ManualClock::default();
    let own = Redis::connect(&shared::secret::Secret::new(shared::testing::redis_url().unwrap()), redis.config())
        .await
        .unwrap();
    let backplane = RedisBackplane::start(own);
    assert!(backplane.wait_subscribed(Duration::from_secs(5)).await);
    let config = CacheConfig { l1_ttl_ms: 10_000, ..Default::default() };
    let cache: Cache<String> = Cache::new("manual", config, Some(backplane), Arc::new(clock.clone()));
    let key = CacheKey::global("n", "k");
    cache.get_or_load(&key, value("old")).await.unwrap();
    clock.advance(chrono::Duration::milliseconds(9_999));
    assert_eq!(cache.get_or_load(&key, value("new")).await.unwrap(), "old", "served within the bound");
    // L2 still holds "old" too (nothing invalidated it): clear it as the lost write would have.
    clear_l2(&redis).await;
    clock.advance(chrono::Duration::milliseconds(1));
    assert_eq!(cache.get_or_load(&key, value("new")).await.unwrap(), "new", "not served at the bound");
}
