//! Rate-limit and Redis metrics.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct DecisionLabels {
    class: String,
    result: &'static str,
}

/// A gauge without labels that appears only once it has been set: a process without Redis
/// reports no `keel_redis_up` rather than a false 0.
type LazyGauge = Family<Vec<(String, String)>, Gauge>;

/// `keel_ratelimit_decisions_total` and `keel_ratelimit_fallback_active`.
#[derive(Debug, Clone)]
pub struct RateLimitMetrics {
    decisions: Family<DecisionLabels, Counter>,
    fallback_active: LazyGauge,
}

impl RateLimitMetrics {
    pub(super) fn register(registry: &mut Registry) -> Self {
        let decisions = Family::default();
        let fallback_active = LazyGauge::default();
        registry.register(
            "keel_ratelimit_decisions",
            "Rate-limit decisions, by route class and result",
            decisions.clone(),
        );
        registry.register(
            "keel_ratelimit_fallback_active",
            "1 while Redis is unreachable and the in-process limiter decides, 0 otherwise",
            fallback_active.clone(),
        );
        Self { decisions, fallback_active }
    }

    /// The handles of one route class (a fixed name such as `login`, never a key).
    pub fn class(&self, class: &str) -> RateLimitHandle {
        let decision = |result| self.decisions.get_or_create_owned(&DecisionLabels { class: class.to_owned(), result });
        RateLimitHandle { allowed: decision("allowed"), rejected: decision("rejected") }
    }

    pub fn set_fallback_active(&self, active: bool) {
        self.fallback_active.get_or_create(&Vec::new()).set(i64::from(active));
    }
}

/// Records the decisions of one route class.
#[derive(Debug, Clone)]
pub struct RateLimitHandle {
    allowed: Counter,
    rejected: Counter,
}

impl RateLimitHandle {
    pub fn record(&self, allowed: bool) {
        if allowed {
            self.allowed.inc()
        } else {
            self.rejected.inc()
        };
    }
}

/// `keel_redis_up`.
#[derive(Debug, Clone)]
pub struct RedisMetrics {
    up: LazyGauge,
}

impl RedisMetrics {
    pub(super) fn register(registry: &mut Registry) -> Self {
        let up = LazyGauge::default();
        registry.register(
            "keel_redis_up",
            "1 while Redis answers, 0 while it does not; absent without Redis",
            up.clone(),
        );
        Self { up }
    }

    pub fn set_up(&self, up: bool) {
        self.up.get_or_create(&Vec::new()).set(i64::from(up));
    }
}
