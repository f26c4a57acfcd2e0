//! Shared limits against a real Redis (`KEEL_TEST_REDIS_URL`): two limiter instances with their
//! own connections stand for two processes. Skipped without the variable, failing in CI.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use shared::ratelimit::FailureLimiter;
use shared::ratelimit::InMemoryFailureLimiter;
use shared::ratelimit::{
    FailurePolicy, Fallback, Quota, RateKey, RateLimiter, RedisFailureLimiter, RedisRateLimiter, Subject,
};
use shared::redis::Redis;
use shared::testing::test_redis;
use std::sync::Arc;
use std::time::Duration;

/// Another "process": its own connection to the same Redis, under the same key prefix.
async fn another(redis: &Redis) -> Redis {
    let url = shared::secret::Secret::new(shared::testing::redis_url().unwrap());
    Redis::connect(&url, redis.config()).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_the_limit_is_admitted_across_two_processes() {
    let Some(redis) = test_redis().await else { return };
    let a = Arc::new(RedisRateLimiter::new(redis.clone(), Fallback::new()));
    let b = Arc::new(RedisRateLimiter::new(another(&redis).await, Fallback::new()));
    // 37 per hour: nothing comes back during the test.
    let quota = Quota::new(37, 3600);
    let key = RateKey::new("api", Subject::Organization("org_exact".into()));
    let barrier = Arc::new(tokio::sync::Barrier::new(200));
    let tasks: Vec<_> = (0..200)
        .map(|i| {
            let limiter = if i % 2 == 0 { a.clone() } else { b.clone() };
            let (key, barrier) = (key.clone(), barrier.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                limiter.check(&key, quota, 1).await
            })
        })
        .collect();
    let mut decisions = Vec::new();
    for task in tasks {
        decisions.push(task.await.unwrap());
    }
    let admitted = decisions.iter().filter(|d| d.allowed).count();
    assert_eq!(admitted, 37);
    assert!(!a.fallback().is_active() && !b.fallback().is_active(), "decided in Redis, not in process");
    let mut remaining: Vec<u32> = decisions.iter().filter(|d| d.allowed).map(|d| d.remaining).collect();
    remaining.sort_unstable();
    assert_eq!(remaining, (0..37).collect::<Vec<_>>(), "each admission saw its own remaining count");
    for refused in decisions.iter().filter(|d| !d.allowed) {
        let retry = refused.retry_after.unwrap();
        assert!(retry > Duration::ZERO && retry <= quota.emission_interval(), "{retry:?}");
        assert_eq!(refused.remaining, 0);
    }
}

#[tokio::test]
async fn redis_gcra_matches_the_algorithm() {
    let Some(redis) = test_redis().await else { return };
    let limiter = RedisRateLimiter::new(redis, Fallback::new());
    let quota = Quota::new(10, 3600); // one every 360 s
    let key = RateKey::new("auth", Subject::ClientIp("192.0.2.1".parse().unwrap()));
    let first = limiter.check(&key, quota, 4).await;
    assert!(first.allowed);
    assert_eq!(first.remaining, 6);
    assert_eq!(first.limit, 10);
    // Four units spent: full again after four intervals (less the few ms since).
    assert!(first.reset <= Duration::from_secs(4 * 360) && first.reset > Duration::from_secs(4 * 360 - 5));
    assert!(!limiter.check(&key, quota, 7).await.allowed, "7 > 6 remaining");
    let last = limiter.check(&key, quota, 6).await;
    assert!(last.allowed);
    assert_eq!(last.remaining, 0);
    let refused = limiter.check(&key, quota, 1).await;
    assert!(!refused.allowed);
    let retry = refused.retry_after.unwrap();
    assert!(retry <= Duration::from_secs(360) && retry > Duration::from_secs(355), "{retry:?}");
    // Another subject and another class have their own buckets.
    let other = RateKey::new("auth", Subject::ClientIp("192.0.2.2".parse().unwrap()));
    assert!(limiter.check(&other, quota, 1).await.allowed);
    let other_class = RateKey::new("api", Subject::ClientIp("192.0.2.1".parse().unwrap()));
    assert!(limiter.check(&other_class, quota, 1).await.allowed);
}

#[tokio::test]
async fn units_come_back_at_the_emission_interval() {
    let Some(redis) = test_redis().await else { return };
    let limiter = RedisRateLimiter::new(redis, Fallback::new());
    let quota = Quota::new(20, 1); // one every 50 ms
    let key = RateKey::new("api", Subject::ApiKey("key_refill".into()));
    for _ in 0..20 {
        assert!(limiter.check(&key, quota, 1).await.allowed);
    }
    let refused = limiter.check(&key, quota, 1).await;
    assert!(!refused.allowed);
    tokio::time::sleep(refused.retry_after.unwrap() + Duration::from_millis(5)).await;
    assert!(limiter.check(&key, quota, 1).await.allowed, "admitted once retry_after has passed");
}

#[tokio::test]
async fn units_given_back_in_one_process_are_spendable_in_another_up_to_a_full_bucket() {
    let Some(redis) = test_redis().await else { return };
    let a = RedisRateLimiter::new(redis.clone(), Fallback::new());
    let b = RedisRateLimiter::new(another(&redis).await, Fallback::new());
    let quota = Quota::new(10, 3600); // nothing comes back by itself during the test
    let key = RateKey::new("inference_tokens", Subject::Organization("org_refund".into()));
    assert!(a.check(&key, quota, 10).await.allowed);
    assert!(!a.check(&key, quota, 1).await.allowed);

    b.refund(&key, quota, 4).await;
    let d = a.check(&key, quota, 4).await;
    assert!(d.allowed, "the 4 given back by the other process");
    assert_eq!(d.remaining, 0);
    assert!(!a.check(&key, quota, 1).await.allowed);

    // Never more than a full bucket.
    b.refund(&key, quota, 1_000).await;
    assert!(a.check(&key, quota, 10).await.allowed);
    assert!(!a.check(&key, quota, 1).await.allowed);

    // A bucket never spent stays as it was: full.
    let unused = RateKey::new("inference_tokens", Subject::Organization("org_untouched".into()));
    b.refund(&unused, quota, 5).await;
    assert_eq!(a.check(&unused, quota, 1).await.remaining, 9);
    assert!(!a.fallback().is_active() && !b.fallback().is_active(), "decided in Redis, not in process");
}

#[tokio::test]
async fn several_buckets_are_checked_in_one_step_all_or_nothing() {
    let Some(redis) = test_redis().await else { return };
    let limiter = RedisRateLimiter::new(redis, Fallback::new());
    let (key, org) = (
        RateKey::new("inference_tokens", Subject::ApiKey("key_all".into())),
        RateKey::new("inference_tokens", Subject::Organization("org_all".into())),
    );
    let (wide, narrow) = (Quota::new(100, 3600), Quota::new(10, 3600));
    let both = |key_cost: u32, org_cost: u32| vec![(key.clone(), wide, key_cost), (org.clone(), narrow, org_cost)];

    let decisions = limiter.check_all(&both(6, 6)).await;
    assert_eq!(decisions.iter().map(|d| (d.allowed, d.remaining)).collect::<Vec<_>>(), [(true, 94), (true, 4)]);
    // The organization's bucket refuses: the key's, which would have passed, is not spent.
    let decisions = limiter.check_all(&both(6, 6)).await;
    assert_eq!(decisions.iter().map(|d| (d.allowed, d.remaining)).collect::<Vec<_>>(), [(true, 88), (false, 4)]);
    assert!(decisions[1].retry_after.unwrap() > Duration::from_secs(700));
    assert_eq!(limiter.check(&key, wide, 1).await.remaining, 93, "94 left before the refused step, 1 taken now");
    // A refusal first stops there; an impossible cost is refused as `check` refuses it.
    let decisions = limiter.check_all(&[(org.clone(), narrow, 11), (key.clone(), wide, 1)]).await;
    assert_eq!(decisions.len(), 1);
    assert_eq!(decisions[0].retry_after, Some(narrow.period()));
    assert_eq!(limiter.check(&key, wide, 1).await.remaining, 92);
    assert!(!limiter.fallback().is_active(), "decided in Redis, not in process");
}

const TEN: FailurePolicy = FailurePolicy { max_failures: 10, window: chrono::Duration::minutes(15) };

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_max_failures_are_reserved_across_two_processes() {
    let Some(redis) = test_redis().await else { return };
    let fallback = Fallback::new();
    let a = Arc::new(RedisFailureLimiter::new(
        redis.clone(),
        Arc::new(InMemoryFailureLimiter::new(Arc::new(shared::SystemClock))),
        fallback.clone(),
    ));
    let b = Arc::new(RedisFailureLimiter::new(
        another(&redis).await,
        Arc::new(InMemoryFailureLimiter::new(Arc::new(shared::SystemClock))),
        fallback.clone(),
    ));
    let keys = vec![("account:alice".to_owned(), TEN), ("ip:192.0.2.9".to_owned(), TEN)];
    let barrier = Arc::new(tokio::sync::Barrier::new(41));
    let tasks: Vec<_> = (0..41)
        .map(|i| {
            let limiter = if i % 2 == 0 { a.clone() } else { b.clone() };
            let (keys, barrier) = (keys.clone(), barrier.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                limiter.reserve(&keys).await
            })
        })
        .collect();
    let mut results = Vec::new();
    for task in tasks {
        results.push(task.await.unwrap());
    }
    let reserved: Vec<_> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
    assert_eq!(reserved.len(), 10);
    assert!(!fallback.is_active());
    for refused in results.iter().filter_map(|r| r.as_ref().err()) {
        let secs = refused.secs();
        assert!(secs > 14 * 60 && secs <= 15 * 60, "locked until the oldest entry leaves the window: {secs}");
    }
    // Releasing one successful attempt frees one slot, on every key, for any process.
    a.release(reserved[0]).await;
    let again = b.reserve(&keys).await.unwrap();
    assert!(b.reserve(&keys).await.is_err());
    assert_eq!(again.keys, vec!["account:alice".to_owned(), "ip:192.0.2.9".to_owned()]);
}

#[tokio::test]
async fn a_locked_key_reserves_nothing_on_the_others_and_clear_unlocks() {
    let Some(redis) = test_redis().await else { return };
    let limiter = RedisFailureLimiter::new(
        redis,
        Arc::new(InMemoryFailureLimiter::new(Arc::new(shared::SystemClock))),
        Fallback::new(),
    );
    let two = FailurePolicy { max_failures: 2, window: chrono::Duration::minutes(1) };
    let account = ("account:bob".to_owned(), two);
    for _ in 0..2 {
        limiter.reserve(std::slice::from_ref(&account)).await.unwrap();
    }
    let ip = ("ip:198.51.100.1".to_owned(), two);
    assert!(limiter.reserve(&[ip.clone(), account.clone()]).await.is_err());
    // The refused reservation added nothing to the ip: it still has both its slots.
    limiter.reserve(std::slice::from_ref(&ip)).await.unwrap();
    limiter.reserve(std::slice::from_ref(&ip)).await.unwrap();
    assert!(limiter.reserve(std::slice::from_ref(&ip)).await.is_err());
    limiter.clear("account:bob").await;
    assert!(limiter.reserve(std::slice::from_ref(&account)).await.is_ok());
}

#[tokio::test]
async fn entries_leave_the_window_and_keys_expire() {
    let Some(redis) = test_redis().await else { return };
    let limiter = RedisFailureLimiter::new(
        redis.clone(),
        Arc::new(InMemoryFailureLimiter::new(Arc::new(shared::SystemClock))),
        Fallback::new(),
    );
    let short = FailurePolicy { max_failures: 1, window: chrono::Duration::milliseconds(200) };
    let key = ("account:carol".to_owned(), short);
    limiter.reserve(std::slice::from_ref(&key)).await.unwrap();
    let retry = limiter.reserve(std::slice::from_ref(&key)).await.unwrap_err();
    assert!(retry.0 <= chrono::Duration::milliseconds(200) && retry.0 > chrono::Duration::zero());
    let ttl_key = redis.key("fail:account:carol");
    let ttl: i64 = redis
        .run(|mut conn| async move { ::redis::cmd("PTTL").arg(ttl_key).query_async(&mut conn).await })
        .await
        .unwrap();
    assert!(ttl > 0 && ttl <= 200, "the key expires with its window: {ttl}");
    tokio::time::sleep(retry.0.to_std().unwrap() + Duration::from_millis(5)).await;
    assert!(limiter.reserve(std::slice::from_ref(&key)).await.is_ok());
}
