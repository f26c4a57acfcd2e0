//! `AuthConfig`: the auth domain's settings (`[auth]` in the config file, `KEEL_AUTH__*`).

use serde::{Deserialize, Serialize};
use shared::Secret;
use shared::config::{CacheConfig, DatabaseOverride, check_range};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// A remote auth service (`http://host:port`). When set, the gateway uses `HttpAuthClient`
    /// instead of running the domain in-process.
    pub url: Option<Secret>,
    /// Overrides of the shared database settings for this domain.
    pub database: DatabaseOverride,
    /// How long a session lasts, in seconds.
    pub session_ttl_secs: u64,
    pub argon2: Argon2Config,
    /// Password hashes computed at once; 0 means one per core. Extra logins wait their turn
    /// instead of starving the other requests of CPU.
    pub hash_concurrency: usize,
    pub throttle: ThrottleConfig,
    /// The credential cache (sessions, API keys): how stale a revoked credential can be served
    /// (see docs/PLATFORM.md for the bounds; `l1_ttl_ms` bounds a lost invalidation).
    pub cache: CacheConfig,
}

/// Credentials live shorter than the platform's defaults: `l1_ttl_ms` bounds how long a
/// revocation whose invalidation message was lost can go unseen, `l2_ttl_ms` the double fault.
pub fn credential_cache_defaults() -> CacheConfig {
    CacheConfig { l1_max_entries: 200_000, l1_ttl_ms: 10_000, l1_degraded_ttl_ms: 1_000, l2_ttl_ms: 60_000 }
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            url: None,
            database: DatabaseOverride::default(),
            session_ttl_secs: 30 * 24 * 3600,
            argon2: Argon2Config::default(),
            hash_concurrency: 0,
            throttle: ThrottleConfig::default(),
            cache: credential_cache_defaults(),
        }
    }
}

impl AuthConfig {
    /// Checks every value at start-up; the message names the key.
    pub fn validate(&self) -> Result<(), String> {
        // Ten years: longer sessions are a mistake, and larger values overflow date arithmetic.
        check_range("auth.session_ttl_secs", self.session_ttl_secs, 60, 10 * 365 * 24 * 3600)?;
        check_range("auth.hash_concurrency", self.hash_concurrency as u64, 0, 1024)?;
        check_range("auth.argon2.memory_kib", u64::from(self.argon2.memory_kib), 8, 4 * 1024 * 1024)?;
        check_range("auth.argon2.iterations", u64::from(self.argon2.iterations), 1, 100)?;
        check_range("auth.argon2.parallelism", u64::from(self.argon2.parallelism), 1, 64)?;
        if self.argon2.memory_kib < 8 * self.argon2.parallelism {
            return Err("auth.argon2.memory_kib must be at least 8 × auth.argon2.parallelism".into());
        }
        check_range("auth.throttle.window_secs", self.throttle.window_secs, 1, 30 * 24 * 3600)?;
        check_range("auth.cache.l1_max_entries", self.cache.l1_max_entries, 1, 100_000_000)?;
        check_range("auth.cache.l1_ttl_ms", self.cache.l1_ttl_ms, 1, 3_600_000)?;
        check_range("auth.cache.l1_degraded_ttl_ms", self.cache.l1_degraded_ttl_ms, 1, 3_600_000)?;
        check_range("auth.cache.l2_ttl_ms", self.cache.l2_ttl_ms, 1, 24 * 3_600_000)?;
        check_range(
            "auth.throttle.max_failures_per_account",
            u64::from(self.throttle.max_failures_per_account),
            1,
            1_000_000,
        )?;
        check_range("auth.throttle.max_failures_per_ip", u64::from(self.throttle.max_failures_per_ip), 1, 1_000_000)?;
        Ok(())
    }
}

/// argon2id cost parameters (OWASP's recommended minimum by default). Hashes made with other
/// parameters are upgraded at the next successful login.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Argon2Config {
    pub memory_kib: u32,
    pub iterations: u32,
    pub parallelism: u32,
}

impl Default for Argon2Config {
    fn default() -> Self {
        Self { memory_kib: 19_456, iterations: 2, parallelism: 1 }
    }
}

/// Failed-login throttling: per account and per client IP, in a sliding window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ThrottleConfig {
    pub window_secs: u64,
    pub max_failures_per_account: u32,
    pub max_failures_per_ip: u32,
}

impl Default for ThrottleConfig {
    fn default() -> Self {
        Self { window_secs: 15 * 60, max_failures_per_account: 10, max_failures_per_ip: 100 }
    }
}
