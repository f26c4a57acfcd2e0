//! Where quotas come from (configuration for now; plans from billing later).

use super::gcra::{Quota, RateKey};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// `rate_limits` in the config tree:
/// ```toml
/// [rate_limits.classes]
/// default = { limit = 600, period_secs = 60 }
/// auth = { limit = 30, period_secs = 60 }
/// [rate_limits.overrides.default]
/// "org:org_0193…" = { limit = 6000, period_secs = 60 }
/// "ip:203.0.113.7" = { limit = 60, period_secs = 60 }
/// ```
/// or `KEEL_RATE_LIMITS__CLASSES__AUTH__LIMIT=30`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimitConfig {
    /// Off: no request is limited (the login failure limiter is separate and stays on).
    pub enabled: bool,
    /// The quota of each route class. A class not listed here uses `default`'s, if any.
    pub classes: BTreeMap<String, Quota>,
    /// Per-subject overrides within a class: class → subject (`org:ID`, `key:ID`, `ip:ADDR`) → quota.
    pub overrides: BTreeMap<String, BTreeMap<String, Quota>>,
}

/// The class whose quota applies to classes without their own.
pub const DEFAULT_CLASS: &str = "default";

/// On, with no quota: nothing is limited until a class (each domain's routes form the class
/// named after the domain) or `default` gets one. Inference's per-plan limits come from billing.
impl Default for RateLimitConfig {
    fn default() -> Self {
        Self { enabled: true, classes: BTreeMap::new(), overrides: BTreeMap::new() }
    }
}

impl RateLimitConfig {
    /// The quota for `key`: its override, else its class's, else the default class's; `None` when
    /// limits are off or nothing applies (the request is not limited).
    pub fn quota_for(&self, key: &RateKey) -> Option<Quota> {
        if !self.enabled {
            return None;
        }
        let subject = key.subject.to_string();
        self.overrides
            .get(&key.class)
            .and_then(|o| o.get(&subject))
            .or_else(|| self.classes.get(&key.class))
            .or_else(|| self.overrides.get(DEFAULT_CLASS).and_then(|o| o.get(&subject)))
            .or_else(|| self.classes.get(DEFAULT_CLASS))
            .copied()
    }

    /// Every quota has a period of at least one second (a zero limit is allowed: it refuses).
    pub fn validate(&self) -> Result<(), String> {
        let all = self.classes.iter().chain(self.overrides.values().flat_map(|o| o.iter()));
        for (name, quota) in all {
            if quota.period_secs == 0 {
                return Err(format!("rate_limits: quota {name:?} has period_secs = 0"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ratelimit::gcra::Subject;

    #[test]
    fn overrides_then_class_then_default() {
        let config: RateLimitConfig = serde_json::from_value(serde_json::json!({
            "classes": {"default": {"limit": 100, "period_secs": 60}, "auth": {"limit": 10, "period_secs": 60}},
            "overrides": {
                "auth": {"org:big": {"limit": 50, "period_secs": 60}},
                "default": {"ip:10.0.0.1": {"limit": 1, "period_secs": 60}}
            }
        }))
        .unwrap();
        let org = |class: &str, id: &str| RateKey::new(class, Subject::Organization(id.into()));
        assert_eq!(config.quota_for(&org("auth", "big")), Some(Quota::new(50, 60)));
        assert_eq!(config.quota_for(&org("auth", "small")), Some(Quota::new(10, 60)));
        assert_eq!(config.quota_for(&org("api", "small")), Some(Quota::new(100, 60)));
        let ip = RateKey::new("api", Subject::ClientIp("10.0.0.1".parse().unwrap()));
        assert_eq!(config.quota_for(&ip), Some(Quota::new(1, 60)));
        assert!(config.validate().is_ok());

        let off = RateLimitConfig { enabled: false, ..config };
        assert_eq!(off.quota_for(&org("auth", "big")), None);
    }

    #[test]
    fn defaults_unknown_fields_and_validation() {
        let defaults = RateLimitConfig::default();
        assert!(defaults.enabled && defaults.classes.is_empty(), "on, with nothing limited until configured");
        assert_eq!(defaults.quota_for(&RateKey::new("auth", Subject::ApiKey("k".into()))), None);
        assert!(serde_json::from_str::<RateLimitConfig>(r#"{"limits": {}}"#).is_err());
        assert!(serde_json::from_str::<Quota>(r#"{"limit": 1, "period": 1}"#).is_err());
        let bad: RateLimitConfig =
            serde_json::from_str(r#"{"classes": {"x": {"limit": 1, "period_secs": 0}}}"#).unwrap();
        assert!(bad.validate().is_err());
    }
}
