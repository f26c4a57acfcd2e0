//! The login failure limiter with reservation semantics, as the lead is changing it in main.
//!
//! MERGE NOTE: this file is a verbatim copy of the new `FailureLimiter` trait (and `Attempt`) that
//! replaces the old `check`/`record_failure` trait in `ratelimit.rs`; `FailurePolicy` and
//! `RetryAfter` are the existing types of `ratelimit.rs`, unchanged. When merging, delete this
//! file and point `super::redis` at `super::{Attempt, FailureLimiter}`.

use super::{FailurePolicy, RetryAfter};
use async_trait::async_trait;

/// One reserved attempt: counted as a failure on each of its keys until released.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    pub id: String,
    pub keys: Vec<String>,
}

#[async_trait]
pub trait FailureLimiter: Send + Sync + std::fmt::Debug {
    /// In ONE atomic step for all `keys`: forget failures older than each key's window; if any key already holds
    /// `max_failures` entries, reserve nothing and return the longest RetryAfter (until enough entries expire);
    /// otherwise add one entry (the attempt) to every key and return it.
    async fn reserve(&self, keys: &[(String, FailurePolicy)]) -> Result<Attempt, RetryAfter>;
    /// The attempt succeeded: remove its entry from every one of its keys.
    async fn release(&self, attempt: &Attempt);
    /// Forget every entry of `key` (e.g. the account's after a successful login).
    async fn clear(&self, key: &str);
}
