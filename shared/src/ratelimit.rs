//! Failure throttling: too many failures for a key within a sliding window lock the key out
//! until the oldest failure leaves the window.
//!
//! Check and count are one step: an attempt is *reserved* (counted as a failure) on all of its
//! keys at once before the work it guards runs, and released when it succeeds. A burst of
//! concurrent attempts therefore cannot all pass a check that none of them has counted yet.
//!
//! [`FailureLimiter`] is the seam: the in-process limiter below serves a single node, and a
//! shared (Redis) limiter replaces it for a fleet without touching its callers.
//!
//! Request rate limits (GCRA, in process and over Redis) live in the submodules: [`gcra`],
//! [`redis`], [`headers`], [`config`].

pub mod config;
pub mod gcra;
pub mod headers;
pub mod redis;

pub use config::RateLimitConfig;
pub use gcra::{Decision, LocalRateLimiter, Quota, RateKey, RateLimiter, Subject};
pub use headers::{insert_rate_limit_headers, rate_limit_headers};
pub use redis::{Fallback, RedisFailureLimiter, RedisRateLimiter};

use crate::clock::Clock;
use async_trait::async_trait;
use chrono::{DateTime, Duration, Utc};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

/// How many failures a key may have within a sliding window.
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

/// One reserved attempt: counted as a failure on each of its keys until released.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    pub id: String,
    pub keys: Vec<String>,
}

#[async_trait]
pub trait FailureLimiter: Send + Sync + std::fmt::Debug {
    /// In one atomic step for all `keys`: forget failures older than each key's window; if any
    /// key already holds `max_failures` entries, reserve nothing and return the longest
    /// `RetryAfter` (until enough entries expire); otherwise add one entry (the attempt) to
    /// every key and return it.
    async fn reserve(&self, keys: &[(String, FailurePolicy)]) -> Result<Attempt, RetryAfter>;
    /// The attempt succeeded: remove its entry from every one of its keys.
    async fn release(&self, attempt: &Attempt);
    /// Forget every entry of `key` (e.g. the account's after a successful login).
    async fn clear(&self, key: &str);
}

/// Keeps failure times in memory; correct for one process.
#[derive(Debug)]
pub struct InMemoryFailureLimiter {
    clock: Arc<dyn Clock>,
    entries: Mutex<HashMap<String, Entry>>,
    next_id: AtomicU64,
}

#[derive(Debug, Default)]
struct Entry {
    /// (time, attempt id), oldest first.
    failures: VecDeque<(DateTime<Utc>, String)>,
}

impl Entry {
    fn prune(&mut self, now: DateTime<Utc>, window: Duration) {
        while self.failures.front().is_some_and(|(t, _)| *t + window <= now) {
            self.failures.pop_front();
        }
    }

    /// When the key unlocks, if it is locked under `policy` now.
    fn locked_until(&self, now: DateTime<Utc>, policy: FailurePolicy) -> Option<DateTime<Utc>> {
        let max = policy.max_failures as usize;
        if self.failures.len() < max {
            return None;
        }
        // Enough of the oldest must expire to leave room for one more.
        let excess = self.failures.len() + 1 - max;
        let unlock_at = self.failures.get(excess - 1).map_or(now, |(t, _)| *t) + policy.window;
        Some(unlock_at)
    }
}

/// Past this many keys, a reservation first drops every key whose failures have all expired,
/// so a scan of many addresses cannot grow the map without bound.
const SWEEP_THRESHOLD: usize = 10_000;

impl InMemoryFailureLimiter {
    pub fn new(clock: Arc<dyn Clock>) -> Self {
        Self { clock, entries: Mutex::new(HashMap::new()), next_id: AtomicU64::new(0) }
    }
}

#[async_trait]
impl FailureLimiter for InMemoryFailureLimiter {
    async fn reserve(&self, keys: &[(String, FailurePolicy)]) -> Result<Attempt, RetryAfter> {
        let now = self.clock.now();
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        if entries.len() >= SWEEP_THRESHOLD {
            let longest = keys.iter().map(|(_, p)| p.window).max().unwrap_or_else(Duration::zero);
            entries.retain(|_, entry| {
                entry.prune(now, longest);
                !entry.failures.is_empty()
            });
        }
        let mut unlock_at: Option<DateTime<Utc>> = None;
        for (key, policy) in keys {
            if let Some(entry) = entries.get_mut(key) {
                entry.prune(now, policy.window);
                if let Some(at) = entry.locked_until(now, *policy) {
                    unlock_at = Some(unlock_at.map_or(at, |u| u.max(at)));
                }
            }
        }
        if let Some(at) = unlock_at {
            return Err(RetryAfter(at - now));
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed).to_string();
        for (key, _) in keys {
            entries.entry(key.clone()).or_default().failures.push_back((now, id.clone()));
        }
        Ok(Attempt { id, keys: keys.iter().map(|(k, _)| k.clone()).collect() })
    }

    async fn release(&self, attempt: &Attempt) {
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        for key in &attempt.keys {
            if let Some(entry) = entries.get_mut(key) {
                entry.failures.retain(|(_, id)| *id != attempt.id);
                if entry.failures.is_empty() {
                    entries.remove(key);
                }
            }
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

    fn keys(names: &[&str]) -> Vec<(String, FailurePolicy)> {
        names.iter().map(|n| (n.to_string(), POLICY)).collect()
    }

    #[tokio::test]
    async fn locks_after_max_failures_until_the_window_slides() {
        let clock = ManualClock::default();
        let limiter = InMemoryFailureLimiter::new(Arc::new(clock.clone()));
        for _ in 0..3 {
            limiter.reserve(&keys(&["k"])).await.unwrap();
            clock.advance(Duration::minutes(1));
        }
        // Failures at t=0, 1, 2 min; now t=3 min: locked until the first expires at t=10 min.
        let retry = limiter.reserve(&keys(&["k"])).await.unwrap_err();
        assert_eq!(retry.secs(), 7 * 60);
        assert!(limiter.reserve(&keys(&["other"])).await.is_ok());

        clock.advance(Duration::minutes(7));
        assert!(limiter.reserve(&keys(&["k"])).await.is_ok());
    }

    #[tokio::test]
    async fn released_attempts_do_not_count_and_clear_forgets_everything() {
        let limiter = InMemoryFailureLimiter::new(Arc::new(ManualClock::default()));
        for _ in 0..10 {
            let attempt = limiter.reserve(&keys(&["k"])).await.unwrap();
            limiter.release(&attempt).await;
        }
        for _ in 0..3 {
            limiter.reserve(&keys(&["k"])).await.unwrap();
        }
        assert!(limiter.reserve(&keys(&["k"])).await.is_err());
        limiter.clear("k").await;
        assert!(limiter.reserve(&keys(&["k"])).await.is_ok());
    }

    #[tokio::test]
    async fn a_locked_key_reserves_nothing_on_the_others() {
        let limiter = InMemoryFailureLimiter::new(Arc::new(ManualClock::default()));
        for _ in 0..3 {
            limiter.reserve(&keys(&["account"])).await.unwrap();
        }
        for _ in 0..5 {
            assert!(limiter.reserve(&keys(&["ip", "account"])).await.is_err());
        }
        // The address counted none of the refused attempts.
        for _ in 0..3 {
            limiter.reserve(&keys(&["ip"])).await.unwrap();
        }
        assert!(limiter.reserve(&keys(&["ip"])).await.is_err());
    }

    #[tokio::test]
    async fn a_concurrent_burst_reserves_exactly_the_limit() {
        let limiter = Arc::new(InMemoryFailureLimiter::new(Arc::new(ManualClock::default())));
        let tasks: Vec<_> = (0..41)
            .map(|_| {
                let limiter = limiter.clone();
                tokio::spawn(async move { limiter.reserve(&keys(&["k"])).await.is_ok() })
            })
            .collect();
        let mut admitted = 0;
        for task in tasks {
            admitted += usize::from(task.await.unwrap());
        }
        assert_eq!(admitted, 3);
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        assert_eq!(RetryAfter(Duration::milliseconds(1)).secs(), 1);
        assert_eq!(RetryAfter(Duration::milliseconds(1001)).secs(), 2);
        assert_eq!(RetryAfter(Duration::zero()).secs(), 1);
    }
}
