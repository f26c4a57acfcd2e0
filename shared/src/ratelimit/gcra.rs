//! Request rate limits: a GCRA limiter per (route class, subject) key, behind [`RateLimiter`].
//!
//! A [`Quota`] of `limit` per `period_secs` admits a burst of `limit` requests and then one every
//! `period / limit` (the GCRA emission interval), so a client that stays under the average rate is
//! never refused. [`LocalRateLimiter`] decides in process with `governor`;
//! [`super::redis::RedisRateLimiter`] decides across processes with one Lua script per decision.

use async_trait::async_trait;
use governor::clock::{Clock as GovernorClock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::keyed::DashMapStateStore;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

/// `limit` requests per `period_secs`, in a burst or spread out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Quota {
    /// Requests (cost units) per period; 0 refuses everything.
    pub limit: u32,
    /// The period, in seconds (at least 1).
    pub period_secs: u64,
}

impl Quota {
    pub const fn new(limit: u32, period_secs: u64) -> Self {
        Self { limit, period_secs }
    }

    pub fn period(&self) -> Duration {
        Duration::from_secs(self.period_secs.max(1))
    }

    /// The GCRA emission interval: how often one unit comes back (`period / limit`).
    pub fn emission_interval(&self) -> Duration {
        self.period() / self.limit.max(1)
    }
}

/// Who is limited.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Subject {
    /// An organization, by id.
    Organization(String),
    /// An API key, by its public id (never the secret).
    ApiKey(String),
    /// A user acting through a session, by id.
    User(String),
    /// A client address (for anonymous routes).
    ClientIp(IpAddr),
}

impl fmt::Display for Subject {
    /// `org:ID`, `key:ID` or `ip:ADDR`: the form used in keys and in quota overrides.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Organization(id) => write!(f, "org:{id}"),
            Self::ApiKey(id) => write!(f, "key:{id}"),
            Self::User(id) => write!(f, "user:{id}"),
            Self::ClientIp(ip) => write!(f, "ip:{ip}"),
        }
    }
}

/// A subject within a route class (`"auth"`, `"api"`, …): each pair has its own bucket.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RateKey {
    pub class: String,
    pub subject: Subject,
}

impl RateKey {
    pub fn new(class: impl Into<String>, subject: Subject) -> Self {
        Self { class: class.into(), subject }
    }

    /// `CLASS|SUBJECT`; a `|` in the class cannot collide since subjects carry a fixed tag.
    pub fn encoded(&self) -> String {
        format!("{}|{}", self.class.replace('|', "%7C"), self.subject)
    }
}

/// The outcome of one check, with what the response headers need.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    /// The quota's limit.
    pub limit: u32,
    /// Units that could still be spent right now, after this decision.
    pub remaining: u32,
    /// How long until the bucket is full again (`remaining == limit`).
    pub reset: Duration,
    /// When refused: how long until this request's cost would be admitted.
    pub retry_after: Option<Duration>,
}

impl Decision {
    /// A refusal that no wait can fix (the cost exceeds the limit, or the limit is 0): try again
    /// after a whole period.
    fn never(quota: Quota) -> Self {
        Self {
            allowed: false,
            limit: quota.limit,
            remaining: 0,
            reset: quota.period(),
            retry_after: Some(quota.period()),
        }
    }
}

#[async_trait]
pub trait RateLimiter: Send + Sync + fmt::Debug {
    /// Spends `cost` units (0 counts as 1) of `key`'s bucket under `quota`, if it holds them.
    /// Never fails: a shared limiter whose store is unreachable decides in process instead.
    async fn check(&self, key: &RateKey, quota: Quota, cost: u32) -> Decision;
}

type Keyed<C> = governor::RateLimiter<String, DashMapStateStore<String>, C, StateInformationMiddleware>;

/// Past this many decisions, buckets that are full again are dropped, so many distinct keys
/// (a scan of addresses) cannot grow memory without bound.
const SWEEP_EVERY: u64 = 8192;

/// GCRA in process (governor), one bucket per key and quota; correct for one process.
pub struct LocalRateLimiter<C: GovernorClock = DefaultClock> {
    clock: C,
    limiters: RwLock<HashMap<Quota, Arc<Keyed<C>>>>,
    decisions: AtomicU64,
}

impl<C: GovernorClock + Clone + Send + Sync + 'static> fmt::Debug for LocalRateLimiter<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalRateLimiter").field("decisions", &self.decisions.load(Ordering::Relaxed)).finish()
    }
}

impl LocalRateLimiter<DefaultClock> {
    pub fn new() -> Self {
        Self::with_clock(DefaultClock::default())
    }
}

impl Default for LocalRateLimiter<DefaultClock> {
    fn default() -> Self {
        Self::new()
    }
}

impl<C: GovernorClock + Clone + Send + Sync + 'static> LocalRateLimiter<C> {
    /// A limiter on `clock` (tests pass `governor::clock::FakeRelativeClock`).
    pub fn with_clock(clock: C) -> Self {
        Self { clock, limiters: RwLock::new(HashMap::new()), decisions: AtomicU64::new(0) }
    }

    fn limiter(&self, quota: Quota) -> Option<Arc<Keyed<C>>> {
        if let Some(limiter) = self.limiters.read().unwrap_or_else(PoisonError::into_inner).get(&quota) {
            return Some(limiter.clone());
        }
        let burst = NonZeroU32::new(quota.limit)?;
        let governor_quota = governor::Quota::with_period(quota.emission_interval())?.allow_burst(burst);
        let mut limiters = self.limiters.write().unwrap_or_else(PoisonError::into_inner);
        let limiter = limiters.entry(quota).or_insert_with(|| {
            Arc::new(governor::RateLimiter::dashmap_with_clock(governor_quota, self.clock.clone()).with_middleware())
        });
        Some(limiter.clone())
    }

    fn sweep(&self) {
        let limiters = self.limiters.read().unwrap_or_else(PoisonError::into_inner);
        for limiter in limiters.values() {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
    }

    /// The decision, synchronously (the trait method only wraps this).
    pub fn decide(&self, key: &RateKey, quota: Quota, cost: u32) -> Decision {
        if self.decisions.fetch_add(1, Ordering::Relaxed) % SWEEP_EVERY == SWEEP_EVERY - 1 {
            self.sweep();
        }
        let Some(limiter) = self.limiter(quota) else { return Decision::never(quota) };
        let cost = NonZeroU32::new(cost).unwrap_or(NonZeroU32::MIN);
        let interval = quota.emission_interval();
        match limiter.check_key_n(&key.encoded(), cost) {
            Ok(Ok(snapshot)) => {
                let remaining = snapshot.remaining_burst_capacity().min(quota.limit);
                Decision {
                    allowed: true,
                    limit: quota.limit,
                    remaining,
                    // Accurate to one emission interval (governor does not expose the bucket's time).
                    reset: interval * (quota.limit - remaining),
                    retry_after: None,
                }
            }
            Ok(Err(not_until)) => {
                let wait = not_until.wait_time_from(self.clock.now());
                Decision {
                    allowed: false,
                    limit: quota.limit,
                    remaining: 0,
                    reset: wait + interval * quota.limit.saturating_sub(cost.get()),
                    retry_after: Some(wait),
                }
            }
            Err(_insufficient_capacity) => Decision::never(quota),
        }
    }
}

#[async_trait]
impl<C: GovernorClock + Clone + Send + Sync + 'static> RateLimiter for LocalRateLimiter<C> {
    async fn check(&self, key: &RateKey, quota: Quota, cost: u32) -> Decision {
        self.decide(key, quota, cost)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use governor::clock::FakeRelativeClock;

    fn key(class: &str, org: &str) -> RateKey {
        RateKey::new(class, Subject::Organization(org.into()))
    }

    #[test]
    fn a_burst_of_limit_then_one_per_emission_interval() {
        let clock = FakeRelativeClock::default();
        let limiter = LocalRateLimiter::with_clock(clock.clone());
        let quota = Quota::new(10, 60); // one every 6 s
        let k = key("api", "org_a");
        for i in 0..10 {
            let d = limiter.decide(&k, quota, 1);
            assert!(d.allowed, "request {i} of the burst");
            assert_eq!(d.remaining, 9 - i);
            assert_eq!(d.limit, 10);
        }
        let refused = limiter.decide(&k, quota, 1);
        assert!(!refused.allowed);
        assert_eq!(refused.remaining, 0);
        assert_eq!(refused.retry_after, Some(Duration::from_secs(6)));
        assert_eq!(refused.reset, Duration::from_secs(60));

        clock.advance(Duration::from_millis(5_999));
        assert!(!limiter.decide(&k, quota, 1).allowed, "not before the interval");
        clock.advance(Duration::from_millis(1));
        let d = limiter.decide(&k, quota, 1);
        assert!(d.allowed);
        assert_eq!(d.remaining, 0);
        assert!(!limiter.decide(&k, quota, 1).allowed);

        // A full period refills the whole burst.
        clock.advance(Duration::from_secs(60));
        assert_eq!(limiter.decide(&k, quota, 1).remaining, 9);
    }

    #[test]
    fn keys_classes_and_quotas_have_separate_buckets() {
        let limiter = LocalRateLimiter::with_clock(FakeRelativeClock::default());
        let quota = Quota::new(1, 60);
        assert!(limiter.decide(&key("api", "org_a"), quota, 1).allowed);
        assert!(!limiter.decide(&key("api", "org_a"), quota, 1).allowed);
        assert!(limiter.decide(&key("api", "org_b"), quota, 1).allowed);
        assert!(limiter.decide(&key("auth", "org_a"), quota, 1).allowed);
        let ip = RateKey::new("api", Subject::ClientIp("127.0.0.1".parse().unwrap()));
        assert!(limiter.decide(&ip, quota, 1).allowed);
        assert!(limiter.decide(&key("api", "org_a"), Quota::new(2, 60), 1).allowed);
    }

    #[test]
    fn cost_spends_several_units_and_impossible_costs_are_refused() {
        let clock = FakeRelativeClock::default();
        let limiter = LocalRateLimiter::with_clock(clock.clone());
        let quota = Quota::new(10, 10);
        let k = key("api", "org_a");
        let d = limiter.decide(&k, quota, 7);
        assert!(d.allowed);
        assert_eq!(d.remaining, 3);
        let refused = limiter.decide(&k, quota, 5);
        assert!(!refused.allowed);
        assert_eq!(refused.retry_after, Some(Duration::from_secs(2)));
        assert!(!limiter.decide(&k, quota, 11).allowed, "more than the limit can never pass");
        assert!(!limiter.decide(&k, Quota::new(0, 10), 1).allowed, "a zero limit refuses");
        assert_eq!(limiter.decide(&k, Quota::new(0, 10), 1).retry_after, Some(Duration::from_secs(10)));
    }

    #[test]
    fn encoded_keys_do_not_collide() {
        let a = RateKey::new("a|org:x", Subject::ApiKey("y".into()));
        let b = RateKey::new("a", Subject::Organization("x|key:y".into()));
        assert_ne!(a.encoded(), b.encoded());
        assert_eq!(key("api", "org_1").encoded(), "api|org:org_1");
    }
}
