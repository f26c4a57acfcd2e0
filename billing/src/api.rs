//! The billing contract: the `BillingApi` trait, money, its wire types and ids. Compiled without
//! diesel or actix, so any crate (inference, a remote client) can depend on it.
//!
//! # Money
//!
//! Every amount is a [`Money`]: a whole number of **nano-units** of the deployment's currency
//! (`billing.currency`, USD by default): 1 USD = 1,000,000,000 nano-USD, 1 cent = 10,000,000.
//! Request costs are computed in nano-units ([`cost_of`]), so per-request rounding is at most
//! one nano-unit. Amounts are rounded only where a statement is issued: each invoice line is
//! rounded to cents half away from zero ([`Money::to_cents`]), and the invoice total is the sum
//! of its rounded lines, so the lines always sum exactly to the total.

use crate::error::BillingError;
use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};
use shared::{Page, PageRequest};
use std::time::Duration;
use utoipa::ToSchema;

pub use auth::{ApiKeyId, OrganizationId, Principal};

shared::define_id!(
    /// A hold: credit reserved for one request until it is settled or released.
    HoldId,
    "hld"
);
shared::define_id!(
    /// One ledger transfer: a set of balanced entries written in one transaction.
    TransferId,
    "trf"
);
shared::define_id!(
    /// One ledger entry (one side of a transfer).
    EntryId,
    "ent"
);
shared::define_id!(
    /// A credit grant or top-up.
    GrantId,
    "crd"
);
shared::define_id!(
    /// An invoice.
    InvoiceId,
    "inv"
);

/// Nano-units of the deployment's currency per whole unit (1 USD = 10⁹ nano-USD).
pub const NANOS_PER_UNIT: i64 = 1_000_000_000;
/// Nano-units per cent, the unit statements are rounded to.
pub const NANOS_PER_CENT: i64 = 10_000_000;

/// The start of the idempotency key of a lease (`LeasedBilling` reserves each lease as a hold
/// with `lease:` and a fresh id): the sweeper and the metrics tell leases from holds by it.
pub const LEASE_KEY_PREFIX: &str = "lease:";

/// Whether a hold's idempotency key is a lease's.
pub fn is_lease_key(idempotency_key: &str) -> bool {
    idempotency_key.starts_with(LEASE_KEY_PREFIX)
}

/// An amount in nano-units of the deployment's currency (see the module documentation).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, ToSchema)]
#[serde(transparent)]
#[schema(value_type = i64, example = 1_000_000_000)]
pub struct Money(pub i64);

impl Money {
    pub const ZERO: Money = Money(0);

    pub const fn nanos(nanos: i64) -> Self {
        Self(nanos)
    }

    pub const fn cents(cents: i64) -> Self {
        Self(cents * NANOS_PER_CENT)
    }

    /// Whole units of the currency (dollars for USD).
    pub const fn units(units: i64) -> Self {
        Self(units * NANOS_PER_UNIT)
    }

    pub const fn as_nanos(self) -> i64 {
        self.0
    }

    /// The statement rounding rule: to the nearest cent, halves away from zero.
    pub fn to_cents(self) -> i64 {
        let q = self.0 / NANOS_PER_CENT;
        let r = self.0 % NANOS_PER_CENT;
        if r.abs() * 2 >= NANOS_PER_CENT { q + r.signum() } else { q }
    }

    pub fn checked_add(self, other: Money) -> Option<Money> {
        self.0.checked_add(other.0).map(Money)
    }

    pub fn checked_sub(self, other: Money) -> Option<Money> {
        self.0.checked_sub(other.0).map(Money)
    }
}

impl std::fmt::Display for Money {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::ops::Add for Money {
    type Output = Money;
    fn add(self, other: Money) -> Money {
        Money(self.0 + other.0)
    }
}

impl std::ops::Sub for Money {
    type Output = Money;
    fn sub(self, other: Money) -> Money {
        Money(self.0 - other.0)
    }
}

/// A model's prices: nano-units per million input tokens and per million output tokens.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ModelPrice {
    pub input_price_per_mtok: Money,
    pub output_price_per_mtok: Money,
}

/// The cost of a request: `(input_tokens × input price + output_tokens × output price) / 10⁶`,
/// rounded up to the next nano-unit (at most one nano-unit per request, in the deployment's
/// favour, so that a cost is never zero for a request that used priced tokens). Saturates at
/// `i64::MAX` instead of overflowing. Negative prices count as zero.
pub fn cost_of(price: &ModelPrice, input_tokens: u64, output_tokens: u64) -> Money {
    let part = |price: Money, tokens: u64| i128::from(price.0.max(0)).saturating_mul(i128::from(tokens));
    let total =
        part(price.input_price_per_mtok, input_tokens).saturating_add(part(price.output_price_per_mtok, output_tokens));
    let nanos = total.saturating_add(999_999) / 1_000_000;
    Money(i64::try_from(nanos).unwrap_or(i64::MAX))
}

/// What inference asks for before running a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ReserveRequest {
    pub organization_id: OrganizationId,
    /// The key the request came through, when it came through one: its budget applies too.
    pub api_key_id: Option<ApiKeyId>,
    /// The most the request may cost; must be positive.
    pub amount: Money,
    /// The same key (per organization) returns the same hold instead of reserving twice.
    pub idempotency_key: String,
    /// How long the hold lives before the sweeper releases it.
    #[serde(with = "duration_ms", rename = "ttl_ms")]
    #[schema(value_type = u64, rename = "ttl_ms")]
    pub ttl: Duration,
}

/// Credit set aside for one request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Hold {
    pub id: HoldId,
    pub organization_id: OrganizationId,
    pub api_key_id: Option<ApiKeyId>,
    pub amount: Money,
    pub expires_at: DateTime<Utc>,
}

/// One request's metered usage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct UsageRecord {
    /// Unique per request: a second record with the same id is not counted again.
    pub request_id: String,
    pub model: String,
    pub api_key_id: Option<ApiKeyId>,
    pub input_tokens: u64,
    pub output_tokens: u64,
    /// What the request costs (usually [`cost_of`] with the deployment's prices).
    pub cost: Money,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SettleRequest {
    pub hold_id: HoldId,
    pub usage: UsageRecord,
}

/// The outcome of a settlement: the same answer however many times it is retried.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Settlement {
    pub hold_id: HoldId,
    /// What was charged (the usage's cost, even above the hold).
    pub charged: Money,
    /// What went back to available credit (the hold minus the cost, or zero).
    pub returned: Money,
}

/// Tops a lease up: a lease is a hold that a caller (`LeasedBilling`) draws many requests from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ExtendLeaseRequest {
    pub hold_id: HoldId,
    /// Moved from available credit to the hold (positive); zero only pushes the expiry.
    pub amount: Money,
    /// The hold's new expiry, from now.
    #[serde(with = "duration_ms", rename = "ttl_ms")]
    #[schema(value_type = u64, rename = "ttl_ms")]
    pub ttl: Duration,
}

/// Charges a batch of usage to a lease (a group commit), optionally closing it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CommitLeaseRequest {
    pub hold_id: HoldId,
    /// Usage records; a request id recorded before is not charged again.
    pub usage: Vec<UsageRecord>,
    /// Return what is left of the lease to available credit and close it.
    pub close: bool,
    /// The lease's new expiry, from now, when it stays open.
    #[serde(with = "duration_ms", rename = "ttl_ms")]
    #[schema(value_type = u64, rename = "ttl_ms")]
    pub ttl: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct LeaseCommitted {
    pub hold_id: HoldId,
    /// Charged by this commit (records seen before count zero).
    pub charged: Money,
    /// What is left of the lease (zero once closed).
    pub remaining: Money,
    /// Whether the lease is closed now (asked for, or it had expired: then the batch was
    /// charged from available credit).
    pub closed: bool,
}

/// Usage without a hold (internal jobs): charged straight from available credit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RecordUsageRequest {
    pub organization_id: OrganizationId,
    pub usage: UsageRecord,
}

/// Whether a usage record was counted now or had been already.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Recorded {
    Recorded,
    Duplicate,
}

/// A plan's limits, as the platform limiter and inference apply them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PlanLimits {
    pub plan: String,
    pub requests_per_minute: u32,
    pub tokens_per_minute: u64,
    /// The models the plan may use; empty means every model.
    pub allowed_models: Vec<String>,
}

impl PlanLimits {
    pub fn allows_model(&self, model: &str) -> bool {
        self.allowed_models.is_empty() || self.allowed_models.iter().any(|m| m == model)
    }
}

/// A plan, from configuration (`GET /v1/plans`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Plan {
    pub id: String,
    pub name: String,
    /// The monthly fee.
    pub monthly_fee: Money,
    /// Credit granted at the start of each monthly period.
    pub included_credit: Money,
    pub requests_per_minute: u32,
    pub tokens_per_minute: u64,
    /// Empty means every model.
    pub allowed_models: Vec<String>,
    /// Whether organizations without a subscription are on this plan.
    pub default: bool,
}

/// An organization's subscription. Periods are calendar months in UTC.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Subscription {
    pub organization_id: OrganizationId,
    pub plan: String,
    /// False for an organization on the default plan without a subscription.
    pub subscribed: bool,
    pub current_period_start: DateTime<Utc>,
    pub current_period_end: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PutSubscriptionRequest {
    pub plan: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct GrantCreditRequest {
    /// Positive, in nano-units.
    pub amount: Money,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CreditGrant {
    pub id: GrantId,
    pub organization_id: OrganizationId,
    pub amount: Money,
    pub reason: String,
    pub created_at: DateTime<Utc>,
}

/// A spend cap per period (the calendar month, UTC): holds and spending in the period count.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Budget {
    /// `None` for the organization's own budget.
    pub api_key_id: Option<ApiKeyId>,
    /// `None`: no cap.
    pub limit: Option<Money>,
    /// Held and spent against the cap in the current period.
    pub consumed: Money,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Budgets {
    pub organization: Budget,
    pub api_keys: Vec<Budget>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PutBudgetRequest {
    /// `null` removes the cap.
    pub limit: Option<Money>,
}

/// An organization's balances, from the ledger's cached balances.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Balance {
    pub organization_id: OrganizationId,
    pub currency: String,
    /// Credit that can be reserved (may be below zero by at most the documented overshoot).
    pub available: Money,
    /// Reserved by open holds.
    pub held: Money,
    /// Spent since the organization's first grant.
    pub spent: Money,
}

/// How usage is grouped in a usage report.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum UsageGroupBy {
    #[default]
    Day,
    Model,
    ApiKey,
}

/// `GET …/billing/usage?from=&to=&group_by=`: days `from` to `to`, both included (UTC).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct UsageQuery {
    pub from: NaiveDate,
    pub to: NaiveDate,
    #[serde(default)]
    pub group_by: UsageGroupBy,
}

/// One group of a usage report; only the grouped-by field is set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct UsageRow {
    pub day: Option<NaiveDate>,
    pub model: Option<String>,
    /// With `group_by=api_key`: the key, or `None` for usage without a key.
    pub api_key_id: Option<ApiKeyId>,
    pub requests: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cost: Money,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct UsageReport {
    pub organization_id: OrganizationId,
    pub from: NaiveDate,
    pub to: NaiveDate,
    pub group_by: UsageGroupBy,
    pub rows: Vec<UsageRow>,
}

/// One of an organization's ledger accounts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AccountKind {
    Available,
    Held,
    Spent,
}

/// One entry of the organization's ledger: one side of a transfer on one of its accounts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct LedgerEntry {
    pub id: EntryId,
    pub transfer_id: TransferId,
    pub account: AccountKind,
    /// Positive: the account's balance went up.
    pub amount: Money,
    /// `grant`, `plan_credit`, `reserve`, `settle`, `release`, `usage`.
    pub kind: String,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct InvoiceLine {
    /// `plan_fee`, `usage` or `credit`.
    pub kind: String,
    pub description: String,
    pub model: Option<String>,
    pub input_tokens: u64,
    pub output_tokens: u64,
    /// In cents, rounded by the statement rule; credits are negative.
    pub amount_cents: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Invoice {
    pub id: InvoiceId,
    pub organization_id: OrganizationId,
    pub currency: String,
    pub period_start: DateTime<Utc>,
    pub period_end: DateTime<Utc>,
    pub plan: String,
    pub lines: Vec<InvoiceLine>,
    /// The sum of the lines' `amount_cents`, exactly.
    pub total_cents: i64,
    pub created_at: DateTime<Utc>,
}

/// The billing domain's contract. Implemented in-process by `BillingService` and remotely by
/// `HttpBillingClient`; callers cannot tell which one they hold.
///
/// The first five methods are the metering path inference calls on every request; they act
/// for the platform, not for a caller, and over HTTP they need the service token
/// (`billing.service_token`). The others act for a caller: another organization's member gets
/// `OrganizationNotFound`, members who are not owners or admins get `PermissionDenied`.
#[async_trait]
pub trait BillingApi: Send + Sync {
    /// Moves `amount` from available credit to held, atomically against every concurrent
    /// reservation. The same `idempotency_key` (per organization) returns the same hold.
    /// Errors: `BudgetExceeded` (credit or a budget short, with by how much), `Validation`.
    async fn reserve(&self, request: ReserveRequest) -> Result<Hold, BillingError>;

    /// Charges the usage against the hold exactly once, whatever the retries: records the usage
    /// event, moves the cost to spent and returns the rest of the hold. A cost above the hold is
    /// still charged (the overshoot, bounded by one request). A hold already released or expired
    /// is charged from available credit instead. Errors: `HoldNotFound`, `Validation`.
    async fn settle(&self, request: SettleRequest) -> Result<Settlement, BillingError>;

    /// Returns an open hold to available credit; a no-op for a hold already closed.
    /// Errors: `HoldNotFound`.
    async fn release(&self, hold_id: HoldId) -> Result<(), BillingError>;

    /// Charges usage without a hold, idempotent by `request_id`. Errors: `Validation`.
    async fn record_usage(&self, request: RecordUsageRequest) -> Result<Recorded, BillingError>;

    /// Adds `amount` to an open hold used as a lease (same budget and credit checks as
    /// `reserve`) and pushes its expiry. Errors: `HoldNotFound` (unknown or closed),
    /// `BudgetExceeded`, `Validation`.
    async fn extend_lease(&self, request: ExtendLeaseRequest) -> Result<Hold, BillingError>;

    /// Charges a batch of usage to a lease in one transaction (idempotent by request id),
    /// pushes its expiry or closes it. A lease already closed (expired) is charged from
    /// available credit instead. Errors: `HoldNotFound`, `Validation`.
    async fn commit_lease(&self, request: CommitLeaseRequest) -> Result<LeaseCommitted, BillingError>;

    /// The organization's plan limits (cached; invalidated when its plan changes).
    /// Errors: none beyond `Unavailable`/`Internal`.
    async fn limits(&self, organization_id: OrganizationId) -> Result<PlanLimits, BillingError>;

    /// The configured plans. Errors: none beyond `Unavailable`/`Internal`.
    async fn plans(&self) -> Result<Vec<Plan>, BillingError>;

    /// Errors: `OrganizationNotFound`, `PermissionDenied`.
    async fn subscription(
        &self,
        principal: &Principal,
        organization_id: OrganizationId,
    ) -> Result<Subscription, BillingError>;

    /// Subscribes to a plan; the current period's included credit is granted once.
    /// Errors: `OrganizationNotFound`, `PermissionDenied`, `UnknownPlan`.
    async fn put_subscription(
        &self,
        principal: &Principal,
        organization_id: OrganizationId,
        request: PutSubscriptionRequest,
    ) -> Result<Subscription, BillingError>;

    /// Grants credit. Platform administrators only. The same `idempotency_key` with the same body
    /// returns the first answer (kept at least 24 h, per organization).
    /// Errors: `PlatformAdminRequired`, `IdempotencyKeyReused` (same key, different body),
    /// `Validation`.
    async fn grant_credit(
        &self,
        principal: &Principal,
        organization_id: OrganizationId,
        idempotency_key: &str,
        request: GrantCreditRequest,
    ) -> Result<CreditGrant, BillingError>;

    /// Errors: `OrganizationNotFound`, `PermissionDenied`.
    async fn budgets(&self, principal: &Principal, organization_id: OrganizationId) -> Result<Budgets, BillingError>;

    /// Sets or removes the organization's cap (`api_key_id` `None`) or a key's cap.
    /// Errors: `OrganizationNotFound`, `PermissionDenied`, `Validation`.
    async fn put_budget(
        &self,
        principal: &Principal,
        organization_id: OrganizationId,
        api_key_id: Option<ApiKeyId>,
        request: PutBudgetRequest,
    ) -> Result<Budget, BillingError>;

    /// Errors: `OrganizationNotFound`, `PermissionDenied`.
    async fn balance(&self, principal: &Principal, organization_id: OrganizationId) -> Result<Balance, BillingError>;

    /// Usage from the daily rollups. Errors: `OrganizationNotFound`, `PermissionDenied`, `Validation`.
    async fn usage(
        &self,
        principal: &Principal,
        organization_id: OrganizationId,
        query: UsageQuery,
    ) -> Result<UsageReport, BillingError>;

    /// The organization's ledger entries, newest first, keyset-paginated.
    /// Errors: `OrganizationNotFound`, `PermissionDenied`, `Validation` (bad cursor).
    async fn ledger(
        &self,
        principal: &Principal,
        organization_id: OrganizationId,
        page: PageRequest,
    ) -> Result<Page<LedgerEntry>, BillingError>;

    /// Errors: `OrganizationNotFound`, `PermissionDenied`, `Validation` (bad cursor).
    async fn invoices(
        &self,
        principal: &Principal,
        organization_id: OrganizationId,
        page: PageRequest,
    ) -> Result<Page<Invoice>, BillingError>;

    /// Errors: `OrganizationNotFound`, `PermissionDenied`, `InvoiceNotFound`.
    async fn invoice(
        &self,
        principal: &Principal,
        organization_id: OrganizationId,
        invoice_id: InvoiceId,
    ) -> Result<Invoice, BillingError>;

    /// Whether the service can serve requests. Errors: `Unavailable`.
    async fn ready(&self) -> Result<(), BillingError>;
}

/// Where payments will come from (Stripe checkout and webhooks, later): a provider turns a
/// confirmed payment into a credit grant. No implementation yet.
#[async_trait]
pub trait PaymentProvider: Send + Sync {
    /// The provider's name (`stripe`).
    fn name(&self) -> &'static str;
}

mod duration_ms {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_millis(u64::deserialize(d)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cost_is_computed_per_million_tokens_and_rounded_up_to_a_nano_unit() {
        // $3 / M input, $15 / M output.
        let price = ModelPrice { input_price_per_mtok: Money::units(3), output_price_per_mtok: Money::units(15) };
        assert_eq!(cost_of(&price, 1_000_000, 0), Money::units(3));
        assert_eq!(cost_of(&price, 0, 1_000_000), Money::units(15));
        // 1,000 in + 500 out = $0.003 + $0.0075.
        assert_eq!(cost_of(&price, 1_000, 500), Money::nanos(10_500_000));
        // One token at $3/M is 3,000 nanos exactly; at 1 nano/M it rounds up to 1.
        assert_eq!(cost_of(&price, 1, 0), Money::nanos(3_000));
        let tiny = ModelPrice { input_price_per_mtok: Money::nanos(1), output_price_per_mtok: Money::ZERO };
        assert_eq!(cost_of(&tiny, 1, 0), Money::nanos(1));
        assert_eq!(cost_of(&tiny, 0, 0), Money::ZERO);
        let huge = ModelPrice { input_price_per_mtok: Money(i64::MAX), output_price_per_mtok: Money(i64::MAX) };
        assert_eq!(cost_of(&huge, u64::MAX, u64::MAX), Money(i64::MAX));
    }

    #[test]
    fn statements_round_to_cents_half_away_from_zero() {
        assert_eq!(Money::nanos(4_999_999).to_cents(), 0);
        assert_eq!(Money::nanos(5_000_000).to_cents(), 1);
        assert_eq!(Money::nanos(15_000_000).to_cents(), 2);
        assert_eq!(Money::nanos(-5_000_000).to_cents(), -1);
        assert_eq!(Money::nanos(-4_999_999).to_cents(), 0);
        assert_eq!(Money::units(2).to_cents(), 200);
    }

    #[test]
    fn money_travels_as_a_bare_number_and_ttl_in_milliseconds() {
        let request = ReserveRequest {
            organization_id: OrganizationId::new(),
            api_key_id: None,
            amount: Money::cents(1),
            idempotency_key: "r1".into(),
            ttl: Duration::from_secs(30),
        };
        let json = serde_json::to_value(&request).unwrap();
        assert_eq!(json["amount"], 10_000_000);
        assert_eq!(json["ttl_ms"], 30_000);
        assert_eq!(serde_json::from_value::<ReserveRequest>(json).unwrap(), request);
    }
}
