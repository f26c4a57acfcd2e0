//! The `[jobs]` section: how a process runs background workers.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;

/// Worker settings, shared by every domain's queues in a process.
///
/// ```toml
/// [jobs]
/// enabled = true
/// poll_interval_ms = 1000
/// queues.email.concurrency = 4
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JobsConfig {
    /// Run workers in this process. `gateway worker` runs them regardless.
    pub enabled: bool,
    /// How often an idle queue looks for due jobs when nothing wakes it: the pickup bound for
    /// scheduled jobs and retries, and for everything on SQLite across processes.
    pub poll_interval_ms: u64,
    /// Wake idle workers with PostgreSQL `LISTEN/NOTIFY` (ignored on SQLite).
    pub listen: bool,
    /// How often the `LISTEN` connection's socket is checked for notifications (a local read,
    /// no query): adds up to this much to the pickup latency, and costs about 2% of a core
    /// per listening worker at 1 ms, proportionally less when higher.
    pub listen_poll_ms: u64,
    /// How long a claim stays valid without a heartbeat. A worker that dies holds its jobs at
    /// most this long before another process runs them again.
    pub lease_ms: u64,
    /// How often a worker extends the leases it holds; must be well below `lease_ms`.
    pub heartbeat_ms: u64,
    /// The most jobs one claim takes from a queue.
    pub batch_size: u32,
    /// Concurrent jobs per queue unless the queue has its own entry in `queues`.
    pub concurrency: u32,
    /// Per-queue settings, by queue name.
    pub queues: BTreeMap<String, QueueConfig>,
    /// The first retry waits about this long; each further one twice as long, with jitter.
    pub backoff_base_ms: u64,
    /// The longest wait between two attempts.
    pub backoff_max_ms: u64,
    /// How long a graceful shutdown waits for running jobs before releasing them.
    pub shutdown_timeout_secs: u64,
    /// How long discarded and cancelled jobs are kept for inspection.
    pub retention_secs: u64,
}

impl Default for JobsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            poll_interval_ms: 1_000,
            listen: true,
            listen_poll_ms: 1,
            lease_ms: 30_000,
            heartbeat_ms: 5_000,
            batch_size: 64,
            concurrency: 16,
            queues: BTreeMap::new(),
            backoff_base_ms: 1_000,
            backoff_max_ms: 3_600_000,
            shutdown_timeout_secs: 20,
            retention_secs: 7 * 24 * 3_600,
        }
    }
}

/// One queue's own settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QueueConfig {
    /// Concurrent jobs of this queue in one process; 0 runs none here.
    pub concurrency: u32,
}

impl Default for QueueConfig {
    fn default() -> Self {
        Self { concurrency: JobsConfig::default().concurrency }
    }
}

/// A `[jobs]` section that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid jobs config: {0}")]
pub struct JobsConfigError(String);

impl JobsConfig {
    /// Checks the relations between the settings.
    pub fn validate(&self) -> Result<(), JobsConfigError> {
        if self.lease_ms < 100 {
            return Err(JobsConfigError("lease_ms must be at least 100".into()));
        }
        if self.heartbeat_ms == 0 || self.heartbeat_ms.saturating_mul(2) > self.lease_ms {
            return Err(JobsConfigError("heartbeat_ms must be above 0 and at most half of lease_ms".into()));
        }
        if self.poll_interval_ms == 0 {
            return Err(JobsConfigError("poll_interval_ms must be above 0".into()));
        }
        if !(1..=1_000).contains(&self.listen_poll_ms) {
            return Err(JobsConfigError("listen_poll_ms must be between 1 and 1000".into()));
        }
        if self.batch_size == 0 {
            return Err(JobsConfigError("batch_size must be above 0".into()));
        }
        if self.backoff_max_ms < self.backoff_base_ms {
            return Err(JobsConfigError("backoff_max_ms must not be below backoff_base_ms".into()));
        }
        if let Some(name) = self.queues.keys().find(|name| !valid_queue_name(name)) {
            return Err(JobsConfigError(format!("invalid queue name {name:?}")));
        }
        Ok(())
    }

    /// The concurrency of `queue` in this process.
    pub fn concurrency_of(&self, queue: &str) -> u32 {
        self.queues.get(queue).map_or(self.concurrency, |q| q.concurrency)
    }

    pub fn poll_interval(&self) -> Duration {
        Duration::from_millis(self.poll_interval_ms)
    }

    pub fn lease(&self) -> Duration {
        Duration::from_millis(self.lease_ms)
    }

    pub fn heartbeat(&self) -> Duration {
        Duration::from_millis(self.heartbeat_ms)
    }

    pub fn shutdown_timeout(&self) -> Duration {
        Duration::from_secs(self.shutdown_timeout_secs)
    }
}

/// Queue names: 1 to 64 characters of `a-z`, `0-9`, `_` and `-` (they appear in metrics labels and
/// in `NOTIFY` payloads).
pub fn valid_queue_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_queues_inherit_the_default_concurrency() {
        let config = JobsConfig::default();
        config.validate().unwrap();
        assert_eq!(config.concurrency_of("anything"), 16);
        let mut config = JobsConfig::default();
        config.queues.insert("email".into(), QueueConfig { concurrency: 2 });
        assert_eq!(config.concurrency_of("email"), 2);
    }

    #[test]
    fn rejects_a_heartbeat_that_cannot_keep_a_lease_and_bad_queue_names() {
        let config = JobsConfig { lease_ms: 1_000, heartbeat_ms: 800, ..Default::default() };
        assert!(config.validate().is_err());
        let mut config = JobsConfig::default();
        config.queues.insert("Email Queue".into(), QueueConfig::default());
        assert!(config.validate().is_err());
        assert!(JobsConfig { batch_size: 0, ..Default::default() }.validate().is_err());
    }

    #[test]
    fn unknown_keys_are_refused() {
        let parsed: Result<JobsConfig, _> = serde_json::from_str(r#"{"poll_interval": 5}"#);
        assert!(parsed.is_err());
        let parsed: JobsConfig = serde_json::from_str(r#"{"queues": {"email": {"concurrency": 3}}}"#).unwrap();
        assert_eq!(parsed.concurrency_of("email"), 3);
        assert_eq!(parsed.lease_ms, 30_000);
    }
}
