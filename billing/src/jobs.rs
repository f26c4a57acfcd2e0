//! The billing domain's background jobs: the hold sweeper, the period opener, the invoice
//! builder and the idempotency-key purge. Each is periodic and idempotent (every effect is a
//! conditional update or guarded by a unique key), so a job that runs twice changes nothing.

use crate::service::BillingService;
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use shared::jobs::{Handler, Job, JobContext, JobError, Registry, RegistryError};

/// Releases holds past their TTL.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SweepExpiredHolds {}

impl Job for SweepExpiredHolds {
    const KIND: &'static str = "billing.sweep_expired_holds";
    const QUEUE: &'static str = "billing";
    const MAX_ATTEMPTS: u32 = 3;
}

/// Grants each subscription's included credit once per period.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OpenPeriods {}

impl Job for OpenPeriods {
    const KIND: &'static str = "billing.open_periods";
    const QUEUE: &'static str = "billing";
}

/// Finalizes the previous period's invoices.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CloseInvoices {}

impl Job for CloseInvoices {
    const KIND: &'static str = "billing.close_invoices";
    const QUEUE: &'static str = "billing";
}

/// Forgets credit-grant idempotency keys past their retention.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PurgeIdempotencyKeys {}

impl Job for PurgeIdempotencyKeys {
    const KIND: &'static str = "billing.purge_idempotency_keys";
    const QUEUE: &'static str = "billing";
    const MAX_ATTEMPTS: u32 = 3;
}

#[derive(Debug, Clone)]
struct Runner(BillingService);

fn retry(e: crate::error::BillingError) -> JobError {
    JobError::retry(e.to_string())
}

#[async_trait]
impl Handler<SweepExpiredHolds> for Runner {
    async fn handle(&self, _: SweepExpiredHolds, _: &JobContext) -> Result<(), JobError> {
        let released = self.0.sweep_expired().await.map_err(retry)?;
        if released > 0 {
            tracing::info!(holds = released, "expired holds released");
        }
        Ok(())
    }
}

#[async_trait]
impl Handler<OpenPeriods> for Runner {
    async fn handle(&self, _: OpenPeriods, _: &JobContext) -> Result<(), JobError> {
        let granted = self.0.open_periods().await.map_err(retry)?;
        if granted > 0 {
            tracing::info!(credits = granted, "billing periods opened");
        }
        Ok(())
    }
}

#[async_trait]
impl Handler<CloseInvoices> for Runner {
    async fn handle(&self, _: CloseInvoices, _: &JobContext) -> Result<(), JobError> {
        let written = self.0.close_previous_period().await.map_err(retry)?;
        if written > 0 {
            tracing::info!(invoices = written, "invoices finalized");
        }
        Ok(())
    }
}

#[async_trait]
impl Handler<PurgeIdempotencyKeys> for Runner {
    async fn handle(&self, _: PurgeIdempotencyKeys, _: &JobContext) -> Result<(), JobError> {
        self.0.purge_idempotency_keys().await.map_err(retry)?;
        Ok(())
    }
}

/// The billing job handlers and their schedules.
pub fn registry(service: &BillingService) -> Result<Registry, RegistryError> {
    let runner = Runner(service.clone());
    let sweep = format!("*/{} * * * * *", service.config().sweep_interval_secs);
    let mut registry = Registry::new();
    registry
        .register::<SweepExpiredHolds>(runner.clone())?
        .register::<OpenPeriods>(runner.clone())?
        .register::<CloseInvoices>(runner.clone())?
        .register::<PurgeIdempotencyKeys>(runner)?
        .periodic("billing.sweep_expired_holds", &sweep, |_| SweepExpiredHolds {})?
        .periodic("billing.open_periods", "0 */10 * * * *", |_| OpenPeriods {})?
        .periodic("billing.close_invoices", "0 5 * * * *", |_| CloseInvoices {})?
        .periodic("billing.purge_idempotency_keys", "0 17 * * * *", |_| PurgeIdempotencyKeys {})?;
    Ok(registry)
}
