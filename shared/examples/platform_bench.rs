//! Cache and rate-limiter figures: `bench/platform.sh` (or
//! `cargo run --release -p shared --features server --example platform_bench`).
//!
//! - cache L1 hit latency, and L1-miss/L2-hit latency over Redis;
//! - rate-limit decisions per second, in process (GCRA over a sharded map) and on Redis (one Lua script each).
//!
//! Redis figures need `KEEL_BENCH_REDIS_URL` (default `redis://127.0.0.1:6379`); keys use a
//! throw-away prefix and expire. Every loop is bounded by a count and a time limit.
#![allow(clippy::print_stdout, clippy::unwrap_used, clippy::expect_used)]

use shared::cache::{Cache, CacheBackplane, CacheConfig, CacheKey, RedisBackplane};
use shared::clock::SystemClock;
use shared::ratelimit::{Fallback, LocalRateLimiter, Quota, RateKey, RateLimiter, RedisRateLimiter, Subject};
use shared::redis::{Redis, RedisConfig};
use std::sync::Arc;
use std::time::{Duration, Instant};

const TIME_LIMIT: Duration = Duration::from_secs(5);

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

fn report(name: &str, mut samples: Vec<Duration>, total: Duration) {
    samples.sort_unstable();
    let n = samples.len();
    println!(
        "{name:<44} n={n:<8} {:>12.0} ops/s   p50 {:>8.2} µs   p99 {:>8.2} µs",
        n as f64 / total.as_secs_f64(),
        percentile(&samples, 0.50).as_secs_f64() * 1e6,
        percentile(&samples, 0.99).as_secs_f64() * 1e6,
    );
}

#[derive(Clone, serde::Serialize, serde::Deserialize)]
struct Credential {
    key_id: String,
    organization_id: String,
    scopes: Vec<String>,
    expires_at: i64,
}

fn credential() -> Credential {
    Credential {
        key_id: "key_0193a1b2c3d4e5f6a7b8c9d0e1f2a3b4".into(),
        organization_id: "org_0193a1b2c3d4e5f6a7b8c9d0e1f2a3b4".into(),
        scopes: vec!["read".into(), "write".into()],
        expires_at: 1_900_000_000,
    }
}

async fn cache_l1() {
    let cache: Cache<Credential> = Cache::new("bench", CacheConfig::default(), None, Arc::new(SystemClock));
    let key = CacheKey::organization("org_1", "api_keys", "key_1");
    cache.get_or_load(&key, || async { Ok::<_, ()>(credential()) }).await.unwrap();
    let mut samples = Vec::with_capacity(1_000_000);
    let start = Instant::now();
    while samples.len() < 1_000_000 && start.elapsed() < TIME_LIMIT {
        let t = Instant::now();
        let got = cache.get_or_load(&key, || async { Ok::<_, ()>(credential()) }).await.unwrap();
        samples.push(t.elapsed());
        std::hint::black_box(got);
    }
    report("cache L1 hit (1 task)", samples, start.elapsed());
}

async fn cache_l2(redis: Redis) {
    let backplane = RedisBackplane::start(redis);
    assert!(backplane.wait_subscribed(Duration::from_secs(5)).await, "no subscription");
    let backplane: Arc<dyn CacheBackplane> = backplane;
    let cache: Cache<Credential> = Cache::new("bench", CacheConfig::default(), Some(backplane), Arc::new(SystemClock));
    let key = CacheKey::organization("org_1", "api_keys", "key_1");
    cache.get_or_load(&key, || async { Ok::<_, ()>(credential()) }).await.unwrap();
    let mut samples = Vec::with_capacity(50_000);
    let start = Instant::now();
    let mut busy = Duration::ZERO;
    while samples.len() < 50_000 && start.elapsed() < TIME_LIMIT {
        cache.clear_local();
        let t = Instant::now();
        let got = cache.get_or_load(&key, || async { Err::<Credential, _>("must come from L2") }).await.unwrap();
        let took = t.elapsed();
        busy += took;
        samples.push(took);
        std::hint::black_box(got);
    }
    assert_eq!(cache.stats().loads, 1, "every measured read was an L2 hit");
    report("cache L1 miss, L2 hit (1 task, Redis)", samples, busy);
}

async fn limiter_run(name: &str, limiter: Arc<dyn RateLimiter>, tasks: usize, per_task: usize) {
    let quota = Quota::new(1_000_000, 1);
    let start = Instant::now();
    let handles: Vec<_> = (0..tasks)
        .map(|t| {
            let limiter = limiter.clone();
            tokio::spawn(async move {
                let mut samples = Vec::with_capacity(per_task);
                let begin = Instant::now();
                for i in 0..per_task {
                    if begin.elapsed() > TIME_LIMIT {
                        break;
                    }
                    let key = RateKey::new("api", Subject::Organization(format!("org_{}", (t * 7919 + i) % 1000)));
                    let at = Instant::now();
                    std::hint::black_box(limiter.check(&key, quota, 1).await);
                    samples.push(at.elapsed());
                }
                samples
            })
        })
        .collect();
    let mut samples = Vec::new();
    for handle in handles {
        samples.extend(handle.await.unwrap());
    }
    report(&format!("{name} ({tasks} tasks, 1000 keys)"), samples, start.elapsed());
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    println!("machine: {} cores", std::thread::available_parallelism().map_or(0, |n| n.get()));
    cache_l1().await;
    limiter_run("limiter in process", Arc::new(LocalRateLimiter::new()), 1, 1_000_000).await;
    limiter_run("limiter in process", Arc::new(LocalRateLimiter::new()), 2, 500_000).await;

    let url = std::env::var("KEEL_BENCH_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let config = RedisConfig {
        url: Some(url.into()),
        key_prefix: format!("keel_bench_{}", std::process::id()),
        ..Default::default()
    };
    let redis = Redis::from_config(&config).await.unwrap().unwrap();
    if !redis.is_up() {
        println!("redis unreachable: skipping the Redis figures");
        return;
    }
    cache_l2(redis.clone()).await;
    let limiter: Arc<dyn RateLimiter> = Arc::new(RedisRateLimiter::new(redis.clone(), Fallback::new()));
    limiter_run("limiter on Redis", limiter.clone(), 1, 50_000).await;
    limiter_run("limiter on Redis", limiter.clone(), 64, 2_000).await;
    let fallback_decisions = !redis.is_up();
    println!("redis stayed up throughout: {}", !fallback_decisions);
}
