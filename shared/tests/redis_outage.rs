//! Redis really stopped mid-test (`SHUTDOWN NOSAVE`) and restarted: caches keep serving,
//! limiters fall back, nothing errors, and everything is shared again once Redis is back.
//!
//! This binary stops the Redis of `KEEL_TEST_REDIS_URL`, so it holds all such tests, runs them one
//! at a time (a lock), and restarts Redis in a Drop guard with the command of `.ci/run`. It needs a
//! Redis on this machine (loopback) and `redis-server`/`redis-cli` on the PATH.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use shared::cache::{Cache, CacheBackplane, CacheConfig, CacheKey, RedisBackplane};
use shared::clock::SystemClock;
use shared::ratelimit::FailureLimiter;
use shared::ratelimit::InMemoryFailureLimiter;
use shared::ratelimit::{
    FailurePolicy, Fallback, Quota, RateKey, RateLimiter, RedisFailureLimiter, RedisRateLimiter, Subject,
};
use shared::redis::Redis;
use shared::testing::{LocalRedis, test_redis};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Serialises the tests of this binary: each stops the one Redis.
static OUTAGE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn until(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    while !check() {
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    true
}

struct Process {
    redis: Redis,
    backplane: Arc<RedisBackplane>,
    cache: Cache<String>,
    limiter: RedisRateLimiter,
    failures: RedisFailureLimiter,
    fallback: Arc<Fallback>,
}

async fn process(template: &Redis, config: CacheConfig) -> Process {
    let url = shared::secret::Secret::new(shared::testing::redis_url().unwrap());
    let redis = Redis::connect(&url, template.config()).await.unwrap();
    let backplane = RedisBackplane::start(redis.clone());
    assert!(backplane.wait_subscribed(Duration::from_secs(5)).await);
    let cache =
        Cache::new("credentials", config, Some(backplane.clone() as Arc<dyn CacheBackplane>), Arc::new(SystemClock));
    let fallback = Fallback::new();
    let limiter = RedisRateLimiter::new(redis.clone(), fallback.clone());
    let failures = RedisFailureLimiter::new(
        redis.clone(),
        Arc::new(InMemoryFailureLimiter::new(Arc::new(shared::SystemClock))),
        fallback.clone(),
    );
    Process { redis, backplane, cache, limiter, failures, fallback }
}

fn load(value: &'static str) -> impl FnOnce() -> std::future::Ready<Result<String, String>> {
    move || std::future::ready(Ok(value.to_owned()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_stopped_mid_test_then_restarted() {
    let _serial = OUTAGE.lock().await;
    let Some(template) = test_redis().await else { return };
    let Some(server) = LocalRedis::new(&shared::testing::redis_url().unwrap()) else { return };
    let degraded = Duration::from_millis(200);
    let config = CacheConfig { l1_ttl_ms: 60_000, l1_degraded_ttl_ms: 200, ..Default::default() };
    let a = process(&template, config.clone()).await;
    let b = process(&template, config).await;
    let key = CacheKey::organization("org_1", "api_keys", "key_1");
    assert_eq!(a.cache.get_or_load(&key, load("valid")).await.unwrap(), "valid");
    assert_eq!(b.cache.get_or_load(&key, load("valid")).await.unwrap(), "valid");
    let quota = Quota::new(5, 3600);
    let rate_key = RateKey::new("api", Subject::Organization("org_1".into()));
    let out_key = RateKey::new("inference_tokens", Subject::ApiKey("key_outage".into()));
    let out_org = RateKey::new("inference_tokens", Subject::Organization("org_outage".into()));
    let (wide, narrow) = (Quota::new(100, 3600), Quota::new(10, 3600));
    assert!(a.limiter.check(&rate_key, quota, 3).await.allowed, "3 of 5 spent in Redis");
    let policy = FailurePolicy { max_failures: 3, window: chrono::Duration::minutes(5) };
    let login = vec![("account:dave".to_owned(), policy)];
    a.failures.reserve(&login).await.unwrap();

    server.stop();
    let stopped = Instant::now();

    // Nothing hangs and nothing errors while Redis is down (a generous cap detects a hang).
    tokio::time::timeout(Duration::from_secs(10), async {
        // The subscriptions notice at once (the connection closes) or within a ping.
        assert!(until(Duration::from_secs(2), || !a.backplane.subscribed() && !b.backplane.subscribed()).await);
        let detected = stopped.elapsed();

        // The key is revoked on process a while Redis is down: a drops it at once and remembers
        // the invalidation for when Redis is back.
        a.cache.invalidate(&key).await;
        assert_eq!(a.cache.get_or_load(&key, load("revoked")).await.unwrap(), "revoked");
        assert_eq!(a.backplane.pending_invalidations(), 1);

        // Process b cannot hear it, but serves its L1 entry only while younger than the degraded
        // TTL: every read that starts later than that after detection gets the fresh value.
        loop {
            let started = stopped.elapsed();
            let got = b.cache.get_or_load(&key, load("revoked")).await.unwrap();
            if got == "revoked" {
                break;
            }
            assert!(started < detected + degraded, "stale credential served {started:?} after the outage began");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // New keys load straight from the source.
        let other = CacheKey::organization("org_2", "api_keys", "key_2");
        assert_eq!(b.cache.get_or_load(&other, load("other")).await.unwrap(), "other");
        assert!(!a.redis.is_up() && !b.redis.is_up());

        // The limiters decide in process: per process, the full quota again (documented).
        for process in [&a, &b] {
            let decisions: Vec<_> = futures_join(process, &rate_key, quota).await;
            assert_eq!(decisions.iter().filter(|d| d.allowed).count(), 5, "local GCRA admits the quota");
            assert!(process.fallback.is_active());
        }
        // Several checks at once, and give-backs, fall back too: all or nothing in process.
        let spent = [(out_key.clone(), wide, 6), (out_org.clone(), narrow, 6)];
        let decisions = a.limiter.check_all(&spent).await;
        assert_eq!(decisions.iter().map(|d| d.allowed).collect::<Vec<_>>(), [true, true]);
        let decisions = a.limiter.check_all(&spent).await;
        assert_eq!(decisions.iter().map(|d| (d.allowed, d.remaining)).collect::<Vec<_>>(), [(true, 88), (false, 4)]);
        assert_eq!(a.limiter.check(&out_key, wide, 1).await.remaining, 93, "the refused step spent nothing");
        a.limiter.refund(&out_org, narrow, 6).await;
        assert!(a.limiter.check(&out_org, narrow, 10).await.allowed, "the 6 given back in process");
        // Login reservations fall back too, and release through the same limiter.
        let attempt = b.failures.reserve(&login).await.unwrap();
        assert!(!attempt.id.starts_with("redis:"), "reserved in the fallback: {}", attempt.id);
        b.failures.release(&attempt).await;
    })
    .await
    .expect("a call hung while redis was down");

    server.start();

    // Everything comes back by itself.
    assert!(until(Duration::from_secs(10), || a.redis.is_up() && b.redis.is_up()).await, "handles did not come back");
    assert!(
        until(Duration::from_secs(10), || a.backplane.subscribed() && b.backplane.subscribed()).await,
        "subscriptions did not come back"
    );
    assert!(until(Duration::from_secs(5), || a.backplane.pending_invalidations() == 0).await, "pending not delivered");
    let decision = a.limiter.check(&rate_key, quota, 1).await;
    assert!(decision.allowed && !a.fallback.is_active(), "shared again: {decision:?}");
    let decisions = a.limiter.check_all(&[(out_key.clone(), wide, 1), (out_org.clone(), narrow, 1)]).await;
    assert_eq!(decisions.iter().map(|d| (d.allowed, d.remaining)).collect::<Vec<_>>(), [(true, 99), (true, 9)]);
    assert!(!a.fallback.is_active(), "decided in Redis again, whose buckets the outage did not touch");
    let attempt = a.failures.reserve(&login).await.unwrap();
    assert!(attempt.id.starts_with("redis:"));

    // Cross-process invalidation works again: b caches, a invalidates, b reads fresh.
    let fresh = CacheKey::organization("org_1", "api_keys", "key_3");
    assert_eq!(b.cache.get_or_load(&fresh, load("v1")).await.unwrap(), "v1");
    let before = b.cache.stats().invalidations_received;
    a.cache.invalidate(&fresh).await;
    assert!(until(Duration::from_secs(2), || b.cache.stats().invalidations_received > before).await);
    assert_eq!(b.cache.get_or_load(&fresh, load("v2")).await.unwrap(), "v2");
}

async fn futures_join(process: &Process, key: &RateKey, quota: Quota) -> Vec<shared::ratelimit::Decision> {
    let mut decisions = Vec::new();
    for _ in 0..8 {
        decisions.push(process.limiter.check(key, quota, 1).await);
    }
    decisions
}

/// Redis restarted between two commands (the quickest outage): the first command after it may
/// fail, but it falls back; the handle reconnects and later commands go to Redis again.
#[tokio::test]
async fn a_restart_between_commands_is_absorbed() {
    let _serial = OUTAGE.lock().await;
    let Some(template) = test_redis().await else { return };
    let Some(server) = LocalRedis::new(&shared::testing::redis_url().unwrap()) else { return };
    let p = process(&template, CacheConfig::default()).await;
    let key = RateKey::new("api", Subject::ApiKey("key_restart".into()));
    let quota = Quota::new(100, 60);
    assert!(p.limiter.check(&key, quota, 1).await.allowed);
    server.stop();
    server.start();
    for _ in 0..3 {
        assert!(p.limiter.check(&key, quota, 1).await.allowed, "no request fails around a restart");
    }
    assert!(until(Duration::from_secs(10), || p.redis.is_up()).await);
    assert!(p.limiter.check(&key, quota, 1).await.allowed);
    assert!(!p.fallback.is_active(), "back on Redis after the restart");
    assert!(until(Duration::from_secs(10), || p.backplane.subscribed()).await);
}

/// Sends SIGCONT to a process stopped with SIGSTOP when dropped.
struct Frozen(String);

impl Drop for Frozen {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-CONT", &self.0]).status();
    }
}

/// Redis frozen (SIGSTOP: the connection stays open, nothing answers — what a network partition
/// looks like): commands time out after `command_timeout_ms` instead of hanging, later ones fail
/// at once, the subscription notices by its ping, and all is well again after SIGCONT.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_redis_costs_one_timeout_not_a_hang() {
    let _serial = OUTAGE.lock().await;
    let Some(template) = test_redis().await else { return };
    let Some(_server) = LocalRedis::new(&shared::testing::redis_url().unwrap()) else { return };
    let p = process(&template, CacheConfig::default()).await;
    let pid: String = p
        .redis
        .run(|mut conn| async move { ::redis::cmd("INFO").arg("server").query_async::<String>(&mut conn).await })
        .await
        .unwrap()
        .lines()
        .find_map(|line| line.strip_prefix("process_id:").map(|pid| pid.trim().to_owned()))
        .unwrap();
    let rate_key = RateKey::new("api", Subject::ClientIp("203.0.113.5".parse().unwrap()));
    let quota = Quota::new(10, 60);

    let frozen = Frozen(pid);
    assert!(Command::new("kill").args(["-STOP", &frozen.0]).status().unwrap().success());
    tokio::time::timeout(Duration::from_secs(10), async {
        // The first command waits out the command timeout, then falls back.
        assert!(p.limiter.check(&rate_key, quota, 1).await.allowed);
        assert!(p.fallback.is_active() && !p.redis.is_up());
        // Later ones do not touch Redis at all.
        let key = CacheKey::global("config", "flags");
        assert_eq!(p.cache.get_or_load(&key, load("from source")).await.unwrap(), "from source");
        assert!(p.cache.stats().l2_misses >= 1);
        // The subscription's ping times out: L1 switches to the degraded TTL.
        assert!(until(Duration::from_secs(5), || !p.backplane.subscribed()).await);
    })
    .await
    .expect("a call hung on a frozen redis");
    drop(frozen);

    assert!(until(Duration::from_secs(10), || p.redis.is_up() && p.backplane.subscribed()).await);
    assert!(p.limiter.check(&rate_key, quota, 1).await.allowed);
    assert!(!p.fallback.is_active());
}
