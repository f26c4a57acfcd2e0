//! `HttpBillingClient`: `BillingApi` over HTTP, for a process whose billing domain runs
//! elsewhere. The shared remote client maps envelopes back to the same `BillingError` variants.
//! The metering calls carry the service token (`billing.service_token`); the others act with the
//! caller's credential.

use crate::api::*;
use crate::error::BillingError;
use async_trait::async_trait;
use shared::client::{RemoteClient, RemoteConfig};
use shared::{Page, PageRequest, Secret};

#[derive(Debug, Clone)]
pub struct HttpBillingClient {
    remote: RemoteClient,
    service_token: Secret,
}

impl HttpBillingClient {
    /// A client of the billing service at `base_url`, sending `service_token` on metering calls.
    pub fn new(base_url: &Secret, service_token: Option<Secret>, config: &RemoteConfig) -> Result<Self, BillingError> {
        let remote = RemoteClient::new(crate::DOMAIN, base_url, config).map_err(BillingError::Internal)?;
        Ok(Self { remote, service_token: service_token.unwrap_or_else(|| Secret::new("")) })
    }
}

#[async_trait]
impl BillingApi for HttpBillingClient {
    async fn reserve(&self, request: ReserveRequest) -> Result<Hold, BillingError> {
        self.remote.post("/internal/billing/reserve").bearer(&self.service_token).json(&request).fetch().await
    }

    async fn settle(&self, request: SettleRequest) -> Result<Settlement, BillingError> {
        self.remote.post("/internal/billing/settle").bearer(&self.service_token).json(&request).fetch().await
    }

    async fn release(&self, hold_id: HoldId) -> Result<(), BillingError> {
        let path = format!("/internal/billing/holds/{hold_id}/release");
        self.remote.post(&path).bearer(&self.service_token).execute().await
    }

    async fn record_usage(&self, request: RecordUsageRequest) -> Result<Recorded, BillingError> {
        self.remote.post("/internal/billing/usage").bearer(&self.service_token).json(&request).fetch().await
    }

    async fn extend_lease(&self, request: ExtendLeaseRequest) -> Result<Hold, BillingError> {
        self.remote.post("/internal/billing/leases/extend").bearer(&self.service_token).json(&request).fetch().await
    }

    async fn commit_lease(&self, request: CommitLeaseRequest) -> Result<LeaseCommitted, BillingError> {
        self.remote.post("/internal/billing/leases/commit").bearer(&self.service_token).json(&request).fetch().await
    }

    async fn limits(&self, organization_id: OrganizationId) -> Result<PlanLimits, BillingError> {
        let path = format!("/internal/billing/limits/{organization_id}");
        self.remote.get(&path).bearer(&self.service_token).fetch().await
    }

    async fn plans(&self) -> Result<Vec<Plan>, BillingError> {
        self.remote.get("/v1/plans").fetch().await
    }

    async fn subscription(
        &self,
        principal: &Principal,
        organization_id: OrganizationId,
    ) -> Result<Subscription, BillingError> {
        let path = format!("/v1/organizations/{organization_id}/subscription");
        self.remote.get(&path).bearer(&principal.credential).fetch().await
    }

    async fn put_subscription(
        &self,
        principal: &Principal,
        organization_id: OrganizationId,
        request: PutSubscriptionRequest,
    ) -> Result<Subscription, BillingError> {
        let path = format!("/v1/organizations/{organization_id}/subscription");
        self.remote.put(&path).bearer(&principal.credential).json(&request).fetch().await
    }

    async fn grant_credit(
        &self,
        principal: &Principal,
        organization_id: OrganizationId,
        idempotency_key: &str,
        request: GrantCreditRequest,
    ) -> Result<CreditGrant, BillingError> {
        let path = format!("/v1/organizations/{organization_id}/billing/credits");
        let call = self.remote.post(&path).bearer(&principal.credential);
        call.header(crate::IDEMPOTENCY_KEY_HEADER, idempotency_key).json(&request).fetch().await
    }

    async fn budgets(&self, principal: &Principal, organization_id: OrganizationId) -> Result<Budgets, BillingError> {
        let path = format!("/v1/organizations/{organization_id}/billing/budgets");
        self.remote.get(&path).bearer(&principal.credential).fetch().await
    }

    async fn put_budget(
        &self,
        principal: &Principal,
        organization_id: OrganizationId,
        api_key_id: Option<ApiKeyId>,
        request: PutBudgetRequest,
    ) -> Result<Budget, BillingError> {
        let path = match api_key_id {
            None => format!("/v1/organizations/{organization_id}/billing/budgets"),
            Some(key) => format!("/v1/organizations/{organization_id}/billing/budgets/api-keys/{key}"),
        };
        self.remote.put(&path).bearer(&principal.credential).json(&request).fetch().await
    }

    async fn balance(&self, principal: &Principal, organization_id: OrganizationId) -> Result<Balance, BillingError> {
        let path = format!("/v1/organizations/{organization_id}/billing/balance");
        self.remote.get(&path).bearer(&principal.credential).fetch().await
    }

    async fn usage(
        &self,
        principal: &Principal,
        organization_id: OrganizationId,
        query: UsageQuery,
    ) -> Result<UsageReport, BillingError> {
        let path = format!("/v1/organizations/{organization_id}/billing/usage");
        self.remote.get(&path).bearer(&principal.credential).query(&query).fetch().await
    }

    async fn ledger(
        &self,
        principal: &Principal,
        organization_id: OrganizationId,
        page: PageRequest,
    ) -> Result<Page<LedgerEntry>, BillingError> {
        let path = format!("/v1/organizations/{organization_id}/billing/ledger");
        self.remote.get(&path).bearer(&principal.credential).query(&page).fetch().await
    }

    async fn invoices(
        &self,
        principal: &Principal,
        organization_id: OrganizationId,
        page: PageRequest,
    ) -> Result<Page<Invoice>, BillingError> {
        let path = format!("/v1/organizations/{organization_id}/billing/invoices");
        self.remote.get(&path).bearer(&principal.credential).query(&page).fetch().await
    }

    async fn invoice(
        &self,
        principal: &Principal,
        organization_id: OrganizationId,
        invoice_id: InvoiceId,
    ) -> Result<Invoice, BillingError> {
        let path = format!("/v1/organizations/{organization_id}/billing/invoices/{invoice_id}");
        self.remote.get(&path).bearer(&principal.credential).fetch().await
    }

    async fn ready(&self) -> Result<(), BillingError> {
        self.remote.get("/readyz").execute().await
    }
}
