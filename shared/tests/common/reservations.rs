//! A minimal in-memory reservation limiter for the tests' fallback path only; the production
//! in-memory implementation of the reservation trait is the lead's (`ratelimit.rs` in main).

use async_trait::async_trait;
use shared::ratelimit::reservation::{Attempt, FailureLimiter};
use shared::ratelimit::{FailurePolicy, RetryAfter};
use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// Per key: the attempt ids and their times.
type Entries = HashMap<String, Vec<(String, chrono::DateTime<chrono::Utc>)>>;

#[derive(Debug, Default)]
pub struct TestReservations {
    next: AtomicU64,
    entries: Mutex<Entries>,
}

#[async_trait]
impl FailureLimiter for TestReservations {
    async fn reserve(&self, keys: &[(String, FailurePolicy)]) -> Result<Attempt, RetryAfter> {
        let now = chrono::Utc::now();
        let mut entries = self.entries.lock().unwrap();
        let mut longest: Option<RetryAfter> = None;
        for (key, policy) in keys {
            let list = entries.entry(key.clone()).or_default();
            list.retain(|(_, at)| *at + policy.window > now);
            if list.len() >= policy.max_failures as usize {
                let unlock = list[list.len() - policy.max_failures as usize].1 + policy.window;
                longest = longest.max(Some(RetryAfter(unlock - now)));
            }
        }
        if let Some(retry) = longest {
            return Err(retry);
        }
        let id = format!("local:{}", self.next.fetch_add(1, Ordering::Relaxed));
        for (key, _) in keys {
            entries.entry(key.clone()).or_default().push((id.clone(), now));
        }
        Ok(Attempt { id, keys: keys.iter().map(|(k, _)| k.clone()).collect() })
    }

    async fn release(&self, attempt: &Attempt) {
        let mut entries = self.entries.lock().unwrap();
        for key in &attempt.keys {
            if let Some(list) = entries.get_mut(key) {
                list.retain(|(id, _)| id != &attempt.id);
            }
        }
    }

    async fn clear(&self, key: &str) {
        self.entries.lock().unwrap().remove(key);
    }
}
