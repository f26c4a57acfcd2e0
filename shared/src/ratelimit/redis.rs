//! Limits shared by every process through Redis, one Lua script per decision, with an
//! in-process fallback while Redis is unreachable.
//!
//! While Redis is unreachable each process decides alone (its limits then hold per process, so a
//! fleet of N admits up to N times a limit), [`Fallback::is_active`] is true (the
//! `keel_ratelimit_fallback_active` gauge) and a warning is logged at most every 30 s. No request
//! fails because Redis is down. Keys expire by themselves, so abandoned keys do not accumulate.
//! Multi-key scripts assume one Redis server (not a cluster).

use super::gcra::{Decision, LocalRateLimiter, Quota, RateKey, RateLimiter};
use super::{Attempt, FailureLimiter};
use super::{FailurePolicy, RetryAfter};
use crate::redis::Redis;
use async_trait::async_trait;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// GCRA over microseconds of Redis's own clock (so processes need no clock agreement).
/// KEYS[1] the bucket; ARGV: emission interval (µs), limit, cost.
/// Returns {allowed (0|1), remaining, reset (µs), retry after (µs)}.
const GCRA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local limit = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local depth = interval * limit
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local new_tat = tat + interval * cost
if new_tat - now > depth then
  return {0, math.floor((depth - (tat - now)) / interval), tat - now, new_tat - now - depth}
end
redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', math.ceil((new_tat - now) / 1000))
return {1, math.floor((depth - (new_tat - now)) / interval), new_tat - now, 0}
";

/// The GCRA over several buckets at once, all or nothing. KEYS: the buckets; ARGV, per key i:
/// emission interval (µs) at 3i-2, limit at 3i-1, cost at 3i. Returns four numbers per decision
/// (as GCRA) in order, up to the first refused one; the buckets are set only when none is.
const GCRA_ALL: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local out = {}
local tats = {}
for i, key in ipairs(KEYS) do
  local interval = tonumber(ARGV[3 * i - 2])
  local limit = tonumber(ARGV[3 * i - 1])
  local cost = tonumber(ARGV[3 * i])
  local depth = interval * limit
  local tat = tats[key] or tonumber(redis.call('GET', key) or '0')
  if tat < now then tat = now end
  local new_tat = tat + interval * cost
  if new_tat - now > depth then
    for _, v in ipairs({0, math.floor((depth - (tat - now)) / interval), tat - now, new_tat - now - depth}) do
      out[#out + 1] = v
    end
    return out
  end
  tats[key] = new_tat
  for _, v in ipairs({1, math.floor((depth - (new_tat - now)) / interval), new_tat - now, 0}) do
    out[#out + 1] = v
  end
end
for key, tat in pairs(tats) do
  redis.call('SET', key, string.format('%.0f', tat), 'PX', math.ceil((tat - now) / 1000))
end
return out
";

/// Gives units back: the TAT moved back by `units` emission intervals, never before now (a
/// full bucket), the key dropped once full. KEYS[1] the bucket; ARGV: emission interval (µs),
/// units. Returns 1 when the bucket moved.
const REFUND: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat <= now then return 0 end
local new_tat = tat - tonumber(ARGV[1]) * tonumber(ARGV[2])
if new_tat <= now then
  redis.call('DEL', KEYS[1])
else
  redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', math.ceil((new_tat - now) / 1000))
end
return 1
";

/// Sliding-window failure reservations, all keys in one step.
/// KEYS: the keys; ARGV[1] the attempt id, then per key i: ARGV[2i] max failures, ARGV[2i+1]
/// window (ms). Returns -1 when reserved, else the longest wait (ms) until a key unlocks.
const RESERVE: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local longest = -1
for i, key in ipairs(KEYS) do
  local max = tonumber(ARGV[2 * i])
  local window = tonumber(ARGV[2 * i + 1])
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window)
  local n = redis.call('ZCARD', key)
  if n >= max then
    local wait = window
    if max > 0 then
      local unlocking = redis.call('ZRANGE', key, n - max, n - max, 'WITHSCORES')
      wait = tonumber(unlocking[2]) + window - now
    end
    if wait > longest then longest = wait end
  end
end
if longest >= 0 then return longest end
for i, key in ipairs(KEYS) do
  redis.call('ZADD', key, now, ARGV[1])
  redis.call('PEXPIRE', key, ARGV[2 * i + 1])
end
return -1
";

/// How often at most the fallback warning is repeated while it lasts.
const WARN_EVERY: Duration = Duration::from_secs(30);

/// Whether limits are being decided in process because Redis is unreachable; share one between
/// the request limiter and the failure limiter.
#[derive(Debug, Default)]
pub struct Fallback {
    active: AtomicBool,
    last_warning: Mutex<Option<Instant>>,
}

impl Fallback {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// The `keel_ratelimit_fallback_active` gauge.
    pub fn is_active(&self) -> bool {
        self.active.load(Ordering::Acquire)
    }

    fn engage(&self, limiter: &'static str, reason: &str) {
        self.active.store(true, Ordering::Release);
        let mut last = self.last_warning.lock().unwrap_or_else(PoisonError::into_inner);
        if last.is_none_or(|at| at.elapsed() >= WARN_EVERY) {
            *last = Some(Instant::now());
            tracing::warn!(limiter, reason, "redis unreachable: rate limits are decided per process until it is back");
        }
    }

    fn disengage(&self) {
        if self.active.swap(false, Ordering::AcqRel) {
            *self.last_warning.lock().unwrap_or_else(PoisonError::into_inner) = None;
            tracing::info!("redis reachable again: rate limits are shared across processes");
        }
    }
}

/// GCRA across processes: one Lua script per decision; the in-process limiter while Redis is
/// unreachable.
#[derive(Debug)]
pub struct RedisRateLimiter {
    redis: Redis,
    local: LocalRateLimiter,
    fallback: Arc<Fallback>,
    script: ::redis::Script,
    all: ::redis::Script,
    refund: ::redis::Script,
}

impl RedisRateLimiter {
    pub fn new(redis: Redis, fallback: Arc<Fallback>) -> Self {
        Self {
            redis,
            local: LocalRateLimiter::new(),
            fallback,
            script: ::redis::Script::new(GCRA),
            all: ::redis::Script::new(GCRA_ALL),
            refund: ::redis::Script::new(REFUND),
        }
    }

    fn bucket(&self, key: &RateKey) -> String {
        self.redis.key(&format!("rl:{}", key.encoded()))
    }

    pub fn fallback(&self) -> &Arc<Fallback> {
        &self.fallback
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1)
}

fn from_micros(us: i64) -> Duration {
    Duration::from_micros(u64::try_from(us).unwrap_or(0))
}

#[async_trait]
impl RateLimiter for RedisRateLimiter {
    async fn check(&self, key: &RateKey, quota: Quota, cost: u32) -> Decision {
        let cost = cost.max(1);
        if quota.limit == 0 || cost > quota.limit {
            // Never admissible: no need to ask Redis.
            return self.local.decide(key, quota, cost);
        }
        let bucket = self.bucket(key);
        let script = &self.script;
        let interval = micros(quota.emission_interval());
        let answer = self
            .redis
            .run(|mut conn| async move {
                script
                    .key(bucket)
                    .arg(interval)
                    .arg(quota.limit)
                    .arg(cost)
                    .invoke_async::<(i64, i64, i64, i64)>(&mut conn)
                    .await
            })
            .await;
        match answer {
            Ok((allowed, remaining, reset, retry)) => {
                self.fallback.disengage();
                Decision {
                    allowed: allowed == 1,
                    limit: quota.limit,
                    remaining: u32::try_from(remaining.max(0)).unwrap_or(0).min(quota.limit),
                    reset: from_micros(reset),
                    retry_after: (allowed != 1).then(|| from_micros(retry)),
                }
            }
            Err(e) => {
                self.fallback.engage("requests", &e.0);
                self.local.decide(key, quota, cost)
            }
        }
    }

    /// One script for every check: one round trip instead of one per check.
    async fn check_all(&self, checks: &[(RateKey, Quota, u32)]) -> Vec<Decision> {
        let mut invocation = self.all.prepare_invoke();
        for (key, quota, cost) in checks {
            invocation
                .key(self.bucket(key))
                .arg(micros(quota.emission_interval()))
                .arg(quota.limit)
                .arg((*cost).max(1));
        }
        let invocation = &invocation;
        let answer =
            self.redis.run(|mut conn| async move { invocation.invoke_async::<Vec<i64>>(&mut conn).await }).await;
        match answer {
            Ok(numbers) => {
                self.fallback.disengage();
                numbers
                    .chunks_exact(4)
                    .zip(checks)
                    .map(|(n, (_, quota, cost))| {
                        let allowed = n[0] == 1;
                        if !allowed && (quota.limit == 0 || (*cost).max(1) > quota.limit) {
                            // Never admissible, as `check` answers it.
                            return Decision::never(*quota);
                        }
                        Decision {
                            allowed,
                            limit: quota.limit,
                            remaining: u32::try_from(n[1].max(0)).unwrap_or(0).min(quota.limit),
                            reset: from_micros(n[2]),
                            retry_after: (!allowed).then(|| from_micros(n[3])),
                        }
                    })
                    .collect()
            }
            Err(e) => {
                self.fallback.engage("requests", &e.0);
                self.local.check_all(checks).await
            }
        }
    }

    async fn refund(&self, key: &RateKey, quota: Quota, units: u32) {
        if units == 0 || quota.limit == 0 {
            return;
        }
        let bucket = self.bucket(key);
        let script = &self.refund;
        let interval = micros(quota.emission_interval());
        let answer =
            self.redis
                .run(|mut conn| async move {
                    script.key(bucket).arg(interval).arg(units).invoke_async::<i64>(&mut conn).await
                })
                .await;
        match answer {
            Ok(_) => self.fallback.disengage(),
            Err(e) => {
                // The units were most likely spent in process too (the check that took them
                // found Redis down as well): given back there.
                self.fallback.engage("requests", &e.0);
                self.local.give_back(key, quota, units);
            }
        }
    }
}

/// Attempt ids of reservations made in Redis start with this; others belong to the fallback.
const REDIS_ATTEMPT: &str = "redis:";

/// The failure limiter shared across processes: one sorted set per key (members are attempt
/// ids, scores their time in ms), one Lua script per reservation across all its keys, keys
/// expiring one window after their newest entry. While Redis is unreachable, `fallback` (the
/// in-memory limiter) decides, and attempts remember which of the two holds them.
#[derive(Debug)]
pub struct RedisFailureLimiter {
    redis: Redis,
    fallback_limiter: Arc<dyn FailureLimiter>,
    fallback: Arc<Fallback>,
    script: ::redis::Script,
}

impl RedisFailureLimiter {
    pub fn new(redis: Redis, fallback_limiter: Arc<dyn FailureLimiter>, fallback: Arc<Fallback>) -> Self {
        Self { redis, fallback_limiter, fallback, script: ::redis::Script::new(RESERVE) }
    }

    fn key(&self, key: &str) -> String {
        self.redis.key(&format!("fail:{key}"))
    }
}

fn millis(d: chrono::Duration) -> i64 {
    d.num_milliseconds().max(1)
}

#[async_trait]
impl FailureLimiter for RedisFailureLimiter {
    async fn reserve(&self, keys: &[(String, FailurePolicy)]) -> Result<Attempt, RetryAfter> {
        let id = format!("{REDIS_ATTEMPT}{}", uuid::Uuid::now_v7().simple());
        let mut invocation = self.script.prepare_invoke();
        invocation.arg(&id);
        for (key, policy) in keys {
            invocation.key(self.key(key)).arg(policy.max_failures).arg(millis(policy.window));
        }
        let invocation = &invocation;
        let answer = self.redis.run(|mut conn| async move { invocation.invoke_async::<i64>(&mut conn).await }).await;
        match answer {
            Ok(-1) => {
                self.fallback.disengage();
                Ok(Attempt { id, keys: keys.iter().map(|(k, _)| k.clone()).collect() })
            }
            Ok(wait_ms) => {
                self.fallback.disengage();
                Err(RetryAfter(chrono::Duration::milliseconds(wait_ms.max(1))))
            }
            Err(e) => {
                self.fallback.engage("login failures", &e.0);
                self.fallback_limiter.reserve(keys).await
            }
        }
    }

    async fn release(&self, attempt: &Attempt) {
        if !attempt.id.starts_with(REDIS_ATTEMPT) {
            return self.fallback_limiter.release(attempt).await;
        }
        let mut pipe = ::redis::pipe();
        for key in &attempt.keys {
            pipe.zrem(self.key(key), &attempt.id).ignore();
        }
        let pipe = &pipe;
        if let Err(e) = self.redis.run(|mut conn| async move { pipe.exec_async(&mut conn).await }).await {
            // The entry then counts as a failure until its window passes.
            tracing::warn!(error = %e, "could not release a login attempt in redis");
        }
    }

    async fn clear(&self, key: &str) {
        let redis_key = self.key(key);
        let cleared = self
            .redis
            .run(|mut conn| async move { ::redis::cmd("DEL").arg(redis_key).query_async::<i64>(&mut conn).await })
            .await;
        if let Err(e) = cleared {
            tracing::warn!(error = %e, "could not clear login failures in redis");
        }
        // Entries reserved during an outage live in the fallback: forget those too.
        self.fallback_limiter.clear(key).await;
    }
}
