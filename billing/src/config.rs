//! `BillingConfig`: the billing domain's settings (`[billing]` in the config file,
//! `KEEL_BILLING__*`). Plans are configuration: `[billing.plans.<id>]`.

use crate::api::{Money, Plan};
use serde::{Deserialize, Serialize};
use shared::Secret;
use shared::config::{CacheConfig, DatabaseOverride, check_range};
use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BillingConfig {
    /// A remote billing service (`http://host:port`). When set, the gateway uses
    /// `HttpBillingClient` instead of running the domain in-process.
    pub url: Option<Secret>,
    /// Overrides of the shared database settings for this domain.
    pub database: DatabaseOverride,
    /// The deployment's one currency (ISO 4217), in which every amount is counted.
    pub currency: String,
    /// The plans, by id.
    pub plans: BTreeMap<String, PlanConfig>,
    /// The plan of organizations without a subscription; must be one of `plans`.
    pub default_plan: String,
    /// The bearer token of the metering routes (`/internal/billing/…`): inference processes
    /// reaching a remote billing service send it. Unset: those routes answer 401.
    pub service_token: Option<Secret>,
    /// The longest TTL a hold may ask for, in milliseconds.
    pub max_hold_ttl_ms: u64,
    /// How often the sweeper releases expired holds, in seconds (a cron step, 1–59).
    pub sweep_interval_secs: u64,
    /// How long an `Idempotency-Key` of a credit grant is kept, in hours (at least 24).
    pub idempotency_retention_hours: u64,
    /// The cache of plan limits (invalidated on plan change).
    pub cache: CacheConfig,
    /// The fast path other domains of this process use (`LeasedBilling`).
    pub lease: LeaseConfig,
}

/// Caller-side leases and group commits (`[billing.lease]`; see docs/BILLING.md for the bounds).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LeaseConfig {
    /// Give other domains of this process the leased path; false: every call is a transaction.
    pub enabled: bool,
    /// Settlements are written at most this long after they are acknowledged: what a
    /// `kill -9` can lose. A commit costs nearly the same whatever it carries (on SQLite, about
    /// twenty WAL pages), so the interval sets the flusher's share of the CPU at moderate rates:
    /// 20 ms rather than 5 took a chat call's background CPU from ~120 to ~55 µs at 900 calls/s
    /// (bench/inference-results.md).
    pub flush_interval_ms: u64,
    /// The flusher runs on the database layer's background runtime and pool, at a lower
    /// scheduling priority (`shared::db::spawn_background`), so that on a core shared with the
    /// HTTP worker neither its commits nor its wake-ups hold up calls. A watch at the ordinary
    /// priority makes a pass when settlements have waited more than four flush intervals, and
    /// a pass that takes longer than the flush interval makes the next one commit at the
    /// ordinary priority, so a busy core cannot starve them.
    pub background_commits: bool,
    /// The most settlements one commit writes (the rest wait for the next flush). Large, so a
    /// commit takes the whole backlog and the crash window stays one flush plus one commit.
    pub max_batch: usize,
    /// A lease's expiry, pushed forward by each commit: how long the credit of a crashed
    /// process stays held before the sweeper returns it.
    pub lease_ttl_ms: u64,
    /// A lease unused this long (and with no request in flight) is returned.
    pub idle_release_ms: u64,
    /// A slice covers this much of the recent spend rate.
    pub horizon_ms: u64,
    /// The smallest and largest slice, in nano-units.
    pub min_slice: Money,
    pub max_slice: Money,
    /// After a refused slice, how long the organization takes the direct path before trying
    /// to lease again.
    pub starved_retry_ms: u64,
    /// A settle's answer is replayed to a retry of the same settle for at least this long and
    /// at most twice it; a later retry answers `hold_not_found` (and is never charged twice).
    /// Memory grows with it: about 33 bytes per request settled within twice the window. Keel's
    /// own retries of a settle (inference's) back off 1.5 s in all.
    pub settle_replay_ms: u64,
    /// Past this many settlements of one lease waiting for their commit (the database commits
    /// slower than calls arrive), that lease's new reservations take the direct path until the
    /// backlog drains: memory and what a `kill -9` can lose stay bounded, and the direct path's
    /// transactions slow callers down to what the database can take.
    pub max_unflushed: usize,
}

impl Default for LeaseConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            flush_interval_ms: 20,
            background_commits: true,
            max_batch: 50_000,
            lease_ttl_ms: 30_000,
            idle_release_ms: 2_000,
            horizon_ms: 1_000,
            min_slice: Money::units(1),
            max_slice: Money::units(100),
            starved_retry_ms: 1_000,
            settle_replay_ms: 5_000,
            max_unflushed: 5_000,
        }
    }
}

/// One plan (`[billing.plans.<id>]`). Amounts in nano-units.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PlanConfig {
    pub name: String,
    pub monthly_fee: Money,
    pub included_credit: Money,
    pub requests_per_minute: u32,
    pub tokens_per_minute: u64,
    /// Empty: every model.
    pub allowed_models: Vec<String>,
}

impl Default for PlanConfig {
    fn default() -> Self {
        Self {
            name: String::new(),
            monthly_fee: Money::ZERO,
            included_credit: Money::ZERO,
            requests_per_minute: 60,
            tokens_per_minute: 100_000,
            allowed_models: Vec::new(),
        }
    }
}

impl Default for BillingConfig {
    fn default() -> Self {
        let mut plans = BTreeMap::new();
        plans.insert("free".to_owned(), PlanConfig { name: "Free".into(), ..PlanConfig::default() });
        Self {
            url: None,
            database: DatabaseOverride::default(),
            currency: "USD".into(),
            plans,
            default_plan: "free".into(),
            service_token: None,
            max_hold_ttl_ms: 15 * 60 * 1000,
            sweep_interval_secs: 5,
            idempotency_retention_hours: 48,
            cache: CacheConfig::default(),
            lease: LeaseConfig::default(),
        }
    }
}

impl BillingConfig {
    /// Checks every value at start-up; the message names the key.
    pub fn validate(&self) -> Result<(), String> {
        if self.currency.len() != 3 || !self.currency.chars().all(|c| c.is_ascii_uppercase()) {
            return Err("billing.currency must be a three-letter ISO 4217 code such as USD".into());
        }
        if !self.plans.contains_key(&self.default_plan) {
            return Err(format!("billing.default_plan `{}` is not one of billing.plans", self.default_plan));
        }
        for (id, plan) in &self.plans {
            if plan.monthly_fee < Money::ZERO || plan.included_credit < Money::ZERO {
                return Err(format!("billing.plans.{id}: amounts must not be negative"));
            }
        }
        check_range("billing.max_hold_ttl_ms", self.max_hold_ttl_ms, 1_000, 24 * 3_600_000)?;
        check_range("billing.sweep_interval_secs", self.sweep_interval_secs, 1, 59)?;
        check_range("billing.idempotency_retention_hours", self.idempotency_retention_hours, 24, 24 * 365)?;
        check_range("billing.cache.l1_max_entries", self.cache.l1_max_entries, 1, 100_000_000)?;
        check_range("billing.cache.l1_ttl_ms", self.cache.l1_ttl_ms, 1, 3_600_000)?;
        let lease = &self.lease;
        check_range("billing.lease.flush_interval_ms", lease.flush_interval_ms, 1, 10_000)?;
        check_range("billing.lease.lease_ttl_ms", lease.lease_ttl_ms, 1_000, self.max_hold_ttl_ms)?;
        check_range("billing.lease.idle_release_ms", lease.idle_release_ms, 1, lease.lease_ttl_ms / 2)?;
        check_range("billing.lease.horizon_ms", lease.horizon_ms, 1, 3_600_000)?;
        check_range("billing.lease.max_batch", lease.max_batch as u64, 1, 100_000)?;
        check_range("billing.lease.starved_retry_ms", lease.starved_retry_ms, 1, 3_600_000)?;
        check_range("billing.lease.settle_replay_ms", lease.settle_replay_ms, 1, 3_600_000)?;
        check_range("billing.lease.max_unflushed", lease.max_unflushed as u64, 1, 10_000_000)?;
        if lease.min_slice <= Money::ZERO || lease.max_slice < lease.min_slice {
            return Err("billing.lease: 0 < min_slice <= max_slice".into());
        }
        Ok(())
    }

    /// The plans as the API shows them.
    pub fn plan_list(&self) -> Vec<Plan> {
        self.plans.iter().map(|(id, p)| self.plan(id, p)).collect()
    }

    /// One plan by id.
    pub fn find_plan(&self, id: &str) -> Option<Plan> {
        self.plans.get(id).map(|p| self.plan(id, p))
    }

    fn plan(&self, id: &str, p: &PlanConfig) -> Plan {
        Plan {
            id: id.to_owned(),
            name: if p.name.is_empty() { id.to_owned() } else { p.name.clone() },
            monthly_fee: p.monthly_fee,
            included_credit: p.included_credit,
            requests_per_minute: p.requests_per_minute,
            tokens_per_minute: p.tokens_per_minute,
            allowed_models: p.allowed_models.clone(),
            default: id == self.default_plan,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_bad_values_are_named() {
        assert_eq!(BillingConfig::default().validate(), Ok(()));
        let config = BillingConfig { default_plan: "gold".into(), ..BillingConfig::default() };
        assert!(config.validate().unwrap_err().contains("billing.default_plan"));
        let config = BillingConfig { currency: "usd".into(), ..BillingConfig::default() };
        assert!(config.validate().unwrap_err().contains("billing.currency"));
    }
}
