//! Failure throttling: too many failures for a key within a sliding window lock the key out
//! until the oldest failure leaves the window.
//!
//! [`FailureLimiter`] is the seam: the in-process limiter below serves a single node, and a
//! shared (Redis) limiter can replace it for a fleet without touching its callers.
//!
//! Request rate limits (GCRA, in process and over Redis) live in the submodules: [`gcra`],
//! [`redis`], [`headers`], [`config`].

pub mod config;
pub mod gcra;
pub mod headers;
pub mod redis;
pub mod reservation;

pub use config::RateLimitConfig;
pub use gcra::{Decision, LocalRateLimiter, Quota, RateKey, RateLimiter, Subject};
pub use headers::{insert_rate_limit_headers, rate_limit_headers};
pub use redis::{Fallback, RedisFailureLimiter, RedisRateLimiter};

use crate::clock::Clock;
use async_trait::async_trait;
use chrono::{DateTime, Duration, Utc};
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};

/// How many failures a key may have within a window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FailurePolicy {
    pub max_failures: u32,
    pub window: Duration,
}

/// The key is locked out; it may try again after this long.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct RetryAfter(pub Duration);

impl RetryAfter {
    /// Whole seconds, rounded up, at least 1: the `Retry-After` header's value.
    pub fn secs(&self) -> u64 {
        let ms = self.0.num_milliseconds().max(0) as u64;
        ms.div_ceil(1000).max(1)
    }
}

#[async_trait]
pub trait FailureLimiter: Send + Sync + std::fmt::Debug {
    /// `Err` while `key` has reached `policy.max_failures` within `policy.window`.
    async fn check(&self, key: &str, policy: FailurePolicy) -> Result<(), RetryAfter>;
    /// Counts one failure for `key`.
    async fn record_failure(&self, key: &str, policy: FailurePolicy);
    /// Forgets the failures of `key` (after a success).
    async fn clear(&self, key: &str);
}

/// Keeps failure times in memory; correct for one process.
#[derive(Debug)]
pub struct InMemoryFailureLimiter {
    clock: Arc<dyn Clock>,
    entries: Mutex<HashMap<String, Entry>>,
}

#[derive(Debug)]
struct Entry {
    window: Duration,
    failures: VecDeque<DateTime<Utc>>,
}

impl Entry {
    fn prune(&mut self, now: DateTime<Utc>) {
        while self.failures.front().is_some_and(|t| *t + self.window <= now) {
            self.failures.pop_front();
        }
    }
}

/// Past this many keys, an insert first drops every key whose failures have all expired, so
/// a scan of many addresses cannot grow the map without bound.
const SWEEP_THRESHOLD: usize = 10_000;

impl InMemoryFailureLimiter {
    pub fn new(clock: Arc<dyn Clock>) -> Self {
        Self { clock, entries: Mutex::new(HashMap::new()) }
    }
}

#[async_trait]
impl FailureLimiter for InMemoryFailureLimiter {
    async fn check(&self, key: &str, policy: FailurePolicy) -> Result<(), RetryAfter> {
        let now = self.clock.now();
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(entry) = entries.get_mut(key) else { return Ok(()) };
        entry.window = policy.window;
        entry.prune(now);
        if entry.failures.len() < policy.max_failures as usize {
            return Ok(());
        }
        // Locked until enough failures expire to drop below the limit.
        let excess = entry.failures.len() + 1 - policy.max_failures as usize;
        let unlock_at = entry.failures.get(excess - 1).copied().unwrap_or(now) + policy.window;
        Err(RetryAfter(unlock_at - now))
    }

    async fn record_failure(&self, key: &str, policy: FailurePolicy) {
        let now = self.clock.now();
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        if entries.len() >= SWEEP_THRESHOLD && !entries.contains_key(key) {
            entries.retain(|_, entry| {
                entry.prune(now);
                !entry.failures.is_empty()
            });
        }
        let entry =
            entries.entry(key.to_owned()).or_insert_with(|| Entry { window: policy.window, failures: VecDeque::new() });
        entry.window = policy.window;
        entry.prune(now);
        entry.failures.push_back(now);
        // Only the newest `max_failures` matter for the lockout.
        while entry.failures.len() > policy.max_failures.max(1) as usize {
            entry.failures.pop_front();
        }
    }

    async fn clear(&self, key: &str) {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner).remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;

    const POLICY: FailurePolicy = FailurePolicy { max_failures: 3, window: Duration::minutes(10) };

    #[tokio::test]
    async fn locks_after_max_failures_until_the_window_slides() {
        let clock = ManualClock::default();
        let limiter = InMemoryFailureLimiter::new(Arc::new(clock.clone()));
        for _ in 0..2 {
            limiter.record_failure("k", POLICY).await;
            clock.advance(Duration::minutes(1));
        }
        assert!(limiter.check("k", POLICY).await.is_ok());
        limiter.record_failure("k", POLICY).await;
        // Failures at t=0, 1, 2 min; now t=2 min: locked until the first expires at t=10 min.
        let retry = limiter.check("k", POLICY).await.unwrap_err();
        assert_eq!(retry.secs(), 8 * 60);
        assert!(limiter.check("other", POLICY).await.is_ok());

        clock.advance(Duration::minutes(8));
        assert!(limiter.check("k", POLICY).await.is_ok());
    }

    #[tokio::test]
    async fn clear_forgets_failures() {
        let limiter = InMemoryFailureLimiter::new(Arc::new(ManualClock::default()));
        for _ in 0..3 {
            limiter.record_failure("k", POLICY).await;
        }
        assert!(limiter.check("k", POLICY).await.is_err());
        limiter.clear("k").await;
        assert!(limiter.check("k", POLICY).await.is_ok());
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        assert_eq!(RetryAfter(Duration::milliseconds(1)).secs(), 1);
        assert_eq!(RetryAfter(Duration::milliseconds(1001)).secs(), 2);
        assert_eq!(RetryAfter(Duration::zero()).secs(), 1);
    }
}
