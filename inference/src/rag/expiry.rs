//! Vector-store expiry, as OpenAI's `expires_after: {anchor: "last_active_at", days}`: a store
//! expires `days` after its last activity (a search, grounded chat searching it, a file
//! attached). An expired store answers `vector_store_expired` to those uses and to a modify; it
//! stays readable and deletable until the purge (`inference.purge_expired_vector_stores`, every
//! 10 minutes) deletes it through the same path as `DELETE /v1/vector_stores/{id}`.

use super::service::RagService;
use super::store::{self, Fail, StoreRow};
use crate::error::InferenceError;
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use shared::jobs::{Handler, Job, JobContext, JobError, Registry, RegistryError};

pub(crate) const DAY_SECS: i64 = 86_400;

/// How old `last_active_at` may be before a search writes it again: a busy store costs one
/// write per this interval, not one per search, and `last_active_at` (so `expires_at`) is
/// accurate to it. Small against the shortest expiry, a day.
pub(crate) const ACTIVITY_GRANULARITY_SECS: i64 = 300;

/// When the store expires (None: never).
pub(crate) fn expires_at(row: &StoreRow) -> Option<i64> {
    row.expires_after_days.map(|d| row.last_active_at + i64::from(d) * DAY_SECS)
}

pub(crate) fn is_expired(row: &StoreRow, now: i64) -> bool {
    expires_at(row).is_some_and(|t| t <= now)
}

/// The store, if it may still be used. Errors: `vector_store_expired`.
pub(crate) fn usable(row: &StoreRow, now: i64) -> Result<(), InferenceError> {
    if is_expired(row, now) {
        return Err(InferenceError::VectorStoreExpired(row.id.clone()));
    }
    Ok(())
}

/// Whether a use at `now` should write `last_active_at`.
pub(crate) fn stale(row: &StoreRow, now: i64) -> bool {
    row.last_active_at + ACTIVITY_GRANULARITY_SECS <= now
}

/// Stores deleted per transaction page of the purge.
const PURGE_PAGE: i64 = 100;

/// Deletes the stores whose expiry passed at `now`, each in its own transaction (a change row
/// tells every process's index); returns how many.
pub(crate) async fn purge(service: &RagService, now: i64) -> Result<usize, InferenceError> {
    let db = &service.inner.db;
    let mut purged = 0;
    loop {
        let expired =
            store::run(db, move |conn| store::expired_stores(conn, now, PURGE_PAGE).map_err(Fail::from)).await?;
        let last_page = (expired.len() as i64) < PURGE_PAGE;
        let mut kept = 0;
        for (org, id) in expired {
            let deleted = store::transaction(db, move |conn| {
                store::delete_expired_store(conn, &org, &id, now).map_err(Fail::from)
            })
            .await?;
            if deleted {
                purged += 1;
            } else {
                kept += 1;
            }
        }
        // A page that deleted nothing would be read again as it is: stop there.
        if last_page || kept as i64 == PURGE_PAGE {
            return Ok(purged);
        }
    }
}

/// Deletes the expired vector stores (periodic).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PurgeExpiredStores {}

impl Job for PurgeExpiredStores {
    const KIND: &'static str = "inference.purge_expired_vector_stores";
    const QUEUE: &'static str = "inference";
    const MAX_ATTEMPTS: u32 = 3;
}

/// Every 10 minutes: an expired store outlives its `expires_at` by at most that (plus a
/// queue's delay), shown as `status: "expired"` meanwhile. Fixed, as billing's periodic jobs
/// are except the hold sweeper, whose period users feel.
const SCHEDULE: &str = "0 */10 * * * *";

struct Purger(RagService);

#[async_trait]
impl Handler<PurgeExpiredStores> for Purger {
    async fn handle(&self, _: PurgeExpiredStores, _: &JobContext) -> Result<(), JobError> {
        let purged = self.0.purge_expired().await.map_err(|e| JobError::retry(e.to_string()))?;
        if purged > 0 {
            tracing::info!(rag.stores = purged, "expired vector stores deleted");
        }
        Ok(())
    }
}

/// Adds the purge and its schedule to the domain's registry.
pub(crate) fn register(registry: &mut Registry, service: &RagService) -> Result<(), RegistryError> {
    registry.register::<PurgeExpiredStores>(Purger(service.clone()))?.periodic(
        "inference.purge_expired_vector_stores",
        SCHEDULE,
        |_| PurgeExpiredStores {},
    )?;
    Ok(())
}
