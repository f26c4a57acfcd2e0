//! Request rate limits: a GCRA limiter per (route class, subject) key, behind [`RateLimiter`].
//!
//! A [`Quota`] of `limit` per `period_secs` admits a burst of `limit` requests and then one every
//! `period / limit` (the GCRA emission interval), so a client that stays under the average rate is
//! never refused. [`LocalRateLimiter`] decides in process;
//! [`super::redis::RedisRateLimiter`] decides across processes with one Lua script per decision.

use async_trait::async_trait;
use dashmap::DashMap;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
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
        use fmt::Write as _;
        // One allocation: every limiter decision of the request path makes a key.
        let mut out = String::with_capacity(self.class.len() + 48);
        if self.class.contains('|') {
            out.push_str(&self.class.replace('|', "%7C"));
        } else {
            out.push_str(&self.class);
        }
        out.push('|');
        let _ = write!(out, "{}", self.subject);
        out
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
    pub(crate) fn never(quota: Quota) -> Self {
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

    /// Gives back `units` that a check of `key` under `quota` spent and the caller did not use
    /// (a call admitted on an estimate that used less, or refused by a later check); the bucket
    /// never holds more than its limit. Never fails: a shared limiter whose store is
    /// unreachable gives them back in process.
    async fn refund(&self, key: &RateKey, quota: Quota, units: u32);

    /// All of `checks` (key, quota, cost) or none: the decisions in order, up to the first
    /// refused one (then the last, and nothing is spent). A shared limiter decides them in one
    /// round trip; this default checks one by one and gives back what passed before a refusal.
    async fn check_all(&self, checks: &[(RateKey, Quota, u32)]) -> Vec<Decision> {
        let mut decisions = Vec::with_capacity(checks.len());
        for (i, (key, quota, cost)) in checks.iter().enumerate() {
            let decision = self.check(key, *quota, *cost).await;
            decisions.push(decision);
            if !decision.allowed {
                for (key, quota, cost) in &checks[..i] {
                    self.refund(key, *quota, (*cost).max(1)).await;
                }
                break;
            }
        }
        decisions
    }
}

/// Past this many decisions, buckets that are full again are dropped, so many distinct keys
/// (a scan of addresses) cannot grow memory without bound.
const SWEEP_EVERY: u64 = 8192;

/// GCRA in process, one bucket per key and quota; correct for one process.
///
/// Each bucket is its theoretical arrival time (TAT), in nanoseconds of a monotonic clock: the
/// same arithmetic as the Redis script of [`super::redis::RedisRateLimiter`], so both decide
/// alike, and a refund is the TAT moved back. (`governor`, used before, keeps its TAT private
/// and cannot give units back.)
pub struct LocalRateLimiter {
    clock: quanta::Clock,
    start: quanta::Instant,
    /// Hashed with foldhash, seeded per process: a caller picks its own address within its range
    /// (the `ClientIp` keys), but cannot compute colliding keys without the seed. foldhash
    /// resists only minimally a caller who studies the process's timing at length to find it.
    /// std's SipHash cost an AI call's four decisions about 2,000 instructions more (callgrind).
    buckets: DashMap<(Quota, String), u64, foldhash::fast::RandomState>,
    decisions: AtomicU64,
}

impl fmt::Debug for LocalRateLimiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalRateLimiter").field("decisions", &self.decisions.load(Ordering::Relaxed)).finish()
    }
}

impl Default for LocalRateLimiter {
    fn default() -> Self {
        Self::new()
    }
}

/// Nanoseconds, saturating.
fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl LocalRateLimiter {
    pub fn new() -> Self {
        Self::with_clock(quanta::Clock::new())
    }

    /// A limiter on `clock` (tests pass `quanta::Clock::mock()`).
    pub fn with_clock(clock: quanta::Clock) -> Self {
        let start = clock.now();
        Self { clock, start, buckets: DashMap::default(), decisions: AtomicU64::new(0) }
    }

    fn now(&self) -> u64 {
        nanos(self.clock.now().saturating_duration_since(self.start))
    }

    /// Drops the buckets that are full again (their TAT is past): they decide as a missing one.
    fn sweep(&self, now: u64) {
        self.buckets.retain(|_, tat| *tat > now);
        self.buckets.shrink_to_fit();
    }

    /// The decision, synchronously (the trait method only wraps this).
    pub fn decide(&self, key: &RateKey, quota: Quota, cost: u32) -> Decision {
        let now = self.now();
        if self.decisions.fetch_add(1, Ordering::Relaxed) % SWEEP_EVERY == SWEEP_EVERY - 1 {
            self.sweep(now);
        }
        let cost = cost.max(1);
        if quota.limit == 0 || cost > quota.limit {
            return Decision::never(quota);
        }
        let interval = nanos(quota.emission_interval()).max(1);
        let depth = interval.saturating_mul(u64::from(quota.limit));
        let units = |room: u64| u32::try_from(room / interval).unwrap_or(u32::MAX).min(quota.limit);
        let mut bucket = self.buckets.entry((quota, key.encoded())).or_insert(0);
        let tat = (*bucket).max(now);
        let new_tat = tat.saturating_add(interval.saturating_mul(u64::from(cost)));
        if new_tat - now > depth {
            return Decision {
                allowed: false,
                limit: quota.limit,
                remaining: units(depth.saturating_sub(tat - now)),
                reset: Duration::from_nanos(tat - now),
                retry_after: Some(Duration::from_nanos(new_tat - now - depth)),
            };
        }
        *bucket = new_tat;
        Decision {
            allowed: true,
            limit: quota.limit,
            remaining: units(depth - (new_tat - now)),
            reset: Duration::from_nanos(new_tat - now),
            retry_after: None,
        }
    }

    /// Gives `units` back to `key`'s bucket under `quota`, at most up to a full bucket.
    pub fn give_back(&self, key: &RateKey, quota: Quota, units: u32) {
        if units == 0 || quota.limit == 0 {
            return;
        }
        let now = self.now();
        let back = nanos(quota.emission_interval()).max(1).saturating_mul(u64::from(units));
        if let Some(mut bucket) = self.buckets.get_mut(&(quota, key.encoded())) {
            *bucket = bucket.saturating_sub(back).max(now);
        }
    }
}

#[async_trait]
impl RateLimiter for LocalRateLimiter {
    async fn check(&self, key: &RateKey, quota: Quota, cost: u32) -> Decision {
        self.decide(key, quota, cost)
    }

    async fn refund(&self, key: &RateKey, quota: Quota, units: u32) {
        self.give_back(key, quota, units);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(class: &str, org: &str) -> RateKey {
        RateKey::new(class, Subject::Organization(org.into()))
    }

    #[test]
    fn a_burst_of_limit_then_one_per_emission_interval() {
        let (clock, mock) = quanta::Clock::mock();
        let limiter = LocalRateLimiter::with_clock(clock);
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

        mock.increment(Duration::from_millis(5_999));
        assert!(!limiter.decide(&k, quota, 1).allowed, "not before the interval");
        mock.increment(Duration::from_millis(1));
        let d = limiter.decide(&k, quota, 1);
        assert!(d.allowed);
        assert_eq!(d.remaining, 0);
        assert!(!limiter.decide(&k, quota, 1).allowed);

        // A full period refills the whole burst.
        mock.increment(Duration::from_secs(60));
        assert_eq!(limiter.decide(&k, quota, 1).remaining, 9);
    }

    #[test]
    fn keys_classes_and_quotas_have_separate_buckets() {
        let limiter = LocalRateLimiter::with_clock(quanta::Clock::mock().0);
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
        let limiter = LocalRateLimiter::with_clock(quanta::Clock::mock().0);
        let quota = Quota::new(10, 10);
        let k = key("api", "org_a");
        let d = limiter.decide(&k, quota, 7);
        assert!(d.allowed);
        assert_eq!(d.remaining, 3);
        let refused = limiter.decide(&k, quota, 5);
        assert!(!refused.allowed);
        assert_eq!(refused.remaining, 3, "what is left is said, even when refused");
        assert_eq!(refused.retry_after, Some(Duration::from_secs(2)));
        assert!(!limiter.decide(&k, quota, 11).allowed, "more than the limit can never pass");
        assert!(!limiter.decide(&k, Quota::new(0, 10), 1).allowed, "a zero limit refuses");
        assert_eq!(limiter.decide(&k, Quota::new(0, 10), 1).retry_after, Some(Duration::from_secs(10)));
    }

    #[test]
    fn units_given_back_are_spendable_again_up_to_a_full_bucket() {
        let (clock, mock) = quanta::Clock::mock();
        let limiter = LocalRateLimiter::with_clock(clock);
        let quota = Quota::new(100, 60);
        let k = key("tokens", "org_a");
        assert!(limiter.decide(&k, quota, 90).allowed);
        assert!(!limiter.decide(&k, quota, 50).allowed);
        limiter.give_back(&k, quota, 60);
        let d = limiter.decide(&k, quota, 50);
        assert!(d.allowed, "90 spent, 60 given back: 70 left");
        assert_eq!(d.remaining, 20);

        // Never more than a full bucket, however much is given back.
        limiter.give_back(&k, quota, 1_000);
        assert_eq!(limiter.decide(&k, quota, 1).remaining, 99);
        assert!(!limiter.decide(&k, quota, 100).allowed, "99 left after that one");

        // Another key, another quota, or a bucket never spent: nothing moves.
        limiter.give_back(&key("tokens", "org_b"), quota, 10);
        limiter.give_back(&k, Quota::new(10, 60), 10);
        assert_eq!(limiter.decide(&key("tokens", "org_b"), quota, 1).remaining, 99);
        mock.increment(Duration::from_secs(60));
        limiter.give_back(&k, quota, 10);
        assert_eq!(limiter.decide(&k, quota, 100).remaining, 0, "full again, and no more than full");
    }

    #[tokio::test]
    async fn several_buckets_are_checked_all_or_nothing() {
        let limiter = LocalRateLimiter::with_clock(quanta::Clock::mock().0);
        let (wide, narrow) = (Quota::new(100, 60), Quota::new(10, 60));
        let (a, b) = (key("tokens", "org_a"), key("tokens", "org_b"));
        let both = |cost| vec![(a.clone(), wide, cost), (b.clone(), narrow, cost)];
        let decisions = limiter.check_all(&both(6)).await;
        assert_eq!(decisions.iter().map(|d| (d.allowed, d.remaining)).collect::<Vec<_>>(), [(true, 94), (true, 4)]);
        let decisions = limiter.check_all(&both(6)).await;
        assert_eq!(decisions.iter().map(|d| (d.allowed, d.remaining)).collect::<Vec<_>>(), [(true, 88), (false, 4)]);
        assert_eq!(limiter.decide(&a, wide, 1).remaining, 93, "what passed before the refusal came back");
        assert_eq!(limiter.decide(&b, narrow, 1).remaining, 3);
    }

    #[test]
    fn full_buckets_are_swept_and_decide_as_new_ones() {
        let (clock, mock) = quanta::Clock::mock();
        let limiter = LocalRateLimiter::with_clock(clock);
        let quota = Quota::new(5, 1);
        for i in 0..100 {
            assert!(limiter.decide(&key("api", &format!("org_{i}")), quota, 5).allowed);
        }
        assert_eq!(limiter.buckets.len(), 100);
        mock.increment(Duration::from_secs(2));
        limiter.sweep(limiter.now());
        assert_eq!(limiter.buckets.len(), 0, "every bucket is full again");
        assert!(limiter.decide(&key("api", "org_1"), quota, 5).allowed);
    }

    #[test]
    fn encoded_keys_do_not_collide() {
        let a = RateKey::new("a|org:x", Subject::ApiKey("y".into()));
        let b = RateKey::new("a", Subject::Organization("x|key:y".into()));
        assert_ne!(a.encoded(), b.encoded());
        assert_eq!(key("api", "org_1").encoded(), "api|org:org_1");
    }
}
