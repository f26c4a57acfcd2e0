//! `BillingService`: the billing domain's business rules, in-process. Every movement of money is
//! one ledger transfer written in the transaction of the change that calls for it.

use crate::api::*;
use crate::config::BillingConfig;
use crate::error::BillingError;
use crate::store::{self, AVAILABLE, CreditGrantRow, HELD, HoldRow, ISSUED, IdempotencyRow, InvoiceRow, Leg, SPENT};
use async_trait::async_trait;
use auth::{AuthApi, PrincipalKind};
use chrono::{DateTime, Datelike, Duration as ChronoDuration, NaiveDate, NaiveDateTime, Utc};
use sha2::{Digest, Sha256};
use shared::cache::{Cache, CacheKey};
use shared::db::{Db, DbError};
use shared::jobs::Jobs;
use shared::metrics::{BillingMetrics, BillingOp, BillingOutcome, BillingPath};
use shared::module::Platform;
use shared::{Clock, Page, PageRequest};
use std::collections::BTreeMap;
use std::sync::Arc;

const MAX_KEY_CHARS: usize = 255;
const MAX_REASON_CHARS: usize = 500;
const MAX_MODEL_CHARS: usize = 200;
/// Holds the sweeper releases per transaction batch.
pub(crate) const SWEEP_BATCH: i64 = 500;

/// The billing service. Cheap to clone (one `Arc` inside): the job handlers hold clones.
#[derive(Clone)]
pub struct BillingService {
    inner: Arc<Inner>,
}

struct Inner {
    db: Db,
    config: BillingConfig,
    clock: Arc<dyn Clock>,
    auth: Arc<dyn AuthApi>,
    limits: Cache<PlanLimits>,
    jobs: Jobs,
    metrics: BillingMetrics,
}

impl std::fmt::Debug for BillingService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BillingService").field("db", &self.inner.db).finish_non_exhaustive()
    }
}

/// Why a transaction was given up: an error, or a concurrent writer that got there first (the
/// caller reads what it wrote and answers with that).
enum Abort {
    Error(BillingError),
    Raced,
}

impl From<BillingError> for Abort {
    fn from(e: BillingError) -> Self {
        Self::Error(e)
    }
}

impl From<DbError> for Abort {
    fn from(e: DbError) -> Self {
        Self::Error(e.into())
    }
}

impl From<diesel::result::Error> for Abort {
    fn from(e: diesel::result::Error) -> Self {
        Self::Error(e.into())
    }
}

/// What the ledger check found (see [`BillingService::check_invariants`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LedgerReport {
    pub transfers: usize,
    pub entries: usize,
    /// Per organization: (available, held, spent).
    pub balances: BTreeMap<String, (i64, i64, i64)>,
    /// Minus everything ever granted (the system `issued` account).
    pub issued: i64,
}

/// The first day of the month of `day`: the start of its billing period.
pub fn period_of(day: NaiveDate) -> NaiveDate {
    day.with_day(1).unwrap_or(day)
}

/// The first day of the next period.
pub fn next_period(start: NaiveDate) -> NaiveDate {
    let (y, m) = if start.month() == 12 { (start.year() + 1, 1) } else { (start.year(), start.month() + 1) };
    NaiveDate::from_ymd_opt(y, m, 1).unwrap_or(start)
}

fn midnight(day: NaiveDate) -> NaiveDateTime {
    day.and_hms_opt(0, 0, 0).unwrap_or_default()
}

fn utc(t: NaiveDateTime) -> DateTime<Utc> {
    DateTime::from_naive_utc_and_offset(t, Utc)
}

fn parse_id<T: std::str::FromStr>(s: &str) -> Result<T, BillingError> {
    s.parse().map_err(|_| BillingError::Internal(format!("malformed id {s:?} in the database")))
}

fn key_text(key: Option<ApiKeyId>) -> Option<String> {
    key.map(|k| k.to_string())
}

/// The metrics' outcome of a settle or release (neither refuses for budget).
fn outcome_of<T>(result: &Result<T, BillingError>) -> BillingOutcome {
    if result.is_ok() { BillingOutcome::Ok } else { BillingOutcome::Error }
}

fn tokens(n: u64) -> Result<i64, BillingError> {
    i64::try_from(n).map_err(|_| BillingError::validation("usage", "token counts must fit in 63 bits"))
}

impl BillingService {
    /// Applies the domain's pending migrations. Blocking.
    pub fn migrate(db: &Db) -> Result<usize, DbError> {
        db.migrate(store::POSTGRES_MIGRATIONS, store::SQLITE_MIGRATIONS)
    }

    /// Builds the service over its (migrated) database, its job queue included.
    pub fn new(db: Db, config: BillingConfig, platform: &Platform, auth: Arc<dyn AuthApi>) -> Self {
        let limits = Cache::new(
            "billing.limits",
            config.cache.clone(),
            platform.cache_backplane.clone(),
            platform.clock.clone(),
        )
        .observe(platform.metrics.cache());
        let jobs = Jobs::with_clock(db.clone(), db.settings(), platform.clock.clone());
        let metrics = platform.metrics.billing().clone();
        Self { inner: Arc::new(Inner { db, config, clock: platform.clock.clone(), auth, limits, jobs, metrics }) }
    }

    pub fn db(&self) -> &Db {
        &self.inner.db
    }

    pub fn config(&self) -> &BillingConfig {
        &self.inner.config
    }

    pub(crate) fn jobs(&self) -> &Jobs {
        &self.inner.jobs
    }

    fn now(&self) -> NaiveDateTime {
        self.inner.clock.now().naive_utc()
    }

    fn period_now(&self) -> NaiveDate {
        period_of(self.now().date())
    }

    fn plan_of(&self, plan: Option<&str>) -> Plan {
        let config = &self.inner.config;
        plan.and_then(|p| config.find_plan(p)).or_else(|| config.find_plan(&config.default_plan)).unwrap_or_else(|| {
            Plan {
                id: config.default_plan.clone(),
                name: config.default_plan.clone(),
                monthly_fee: Money::ZERO,
                included_credit: Money::ZERO,
                requests_per_minute: 0,
                tokens_per_minute: 0,
                allowed_models: Vec::new(),
                default: true,
            }
        })
    }

    /// Owners and admins of the organization; `OrganizationNotFound` for anyone else who is not
    /// a member, `PermissionDenied` for members.
    async fn require_manager(
        &self,
        principal: &Principal,
        organization_id: OrganizationId,
    ) -> Result<(), BillingError> {
        let role = self.inner.auth.organization_role(principal, organization_id).await?;
        if role.can_manage() { Ok(()) } else { Err(BillingError::PermissionDenied) }
    }

    /// Proves the ledger: every transfer balances, every cached balance equals the sum of its
    /// entries, every organization's `held` equals its open holds, no `available` balance is
    /// below `-overdraft_bound`, and all balances sum to zero. Reads everything: for tests and
    /// operators.
    pub async fn check_invariants(&self, overdraft_bound: Money) -> Result<LedgerReport, String> {
        let (accounts, entries, holds) = self
            .inner
            .db
            .run(|conn| store::dump_ledger(conn).map_err(BillingError::from))
            .await
            .map_err(|e| e.to_string())?;
        let mut per_transfer: BTreeMap<&str, (i128, usize)> = BTreeMap::new();
        let mut per_account: BTreeMap<&str, i128> = BTreeMap::new();
        for (transfer, account, amount) in &entries {
            let t = per_transfer.entry(transfer).or_default();
            t.0 += i128::from(*amount);
            t.1 += 1;
            *per_account.entry(account).or_default() += i128::from(*amount);
        }
        for (transfer, (sum, count)) in &per_transfer {
            if *sum != 0 || *count < 2 {
                return Err(format!("transfer {transfer} is unbalanced: {count} entries summing to {sum}"));
            }
        }
        let mut report = LedgerReport { transfers: per_transfer.len(), entries: entries.len(), ..Default::default() };
        let mut total: i128 = 0;
        for account in &accounts {
            let sum = per_account.get(account.id.as_str()).copied().unwrap_or(0);
            if sum != i128::from(account.balance) {
                return Err(format!(
                    "account {}: cached balance {} but entries sum to {sum}",
                    account.id, account.balance
                ));
            }
            total += sum;
            if account.organization_id.is_empty() {
                if account.kind == ISSUED {
                    report.issued = account.balance;
                }
                continue;
            }
            let b = report.balances.entry(account.organization_id.clone()).or_default();
            match account.kind.as_str() {
                AVAILABLE => b.0 = account.balance,
                HELD => b.1 = account.balance,
                SPENT => b.2 = account.balance,
                other => return Err(format!("unknown account kind {other}")),
            }
        }
        if per_account.keys().any(|id| !accounts.iter().any(|a| a.id == *id)) {
            return Err("an entry names an account that does not exist".into());
        }
        if total != 0 {
            return Err(format!("balances sum to {total}, not zero"));
        }
        let mut open: BTreeMap<&str, i64> = BTreeMap::new();
        for (org, amount) in &holds {
            *open.entry(org).or_default() += amount;
        }
        for (org, (available, held, _)) in &report.balances {
            let expected = open.get(org.as_str()).copied().unwrap_or(0);
            if *held != expected {
                return Err(format!("organization {org}: held {held} but open holds sum to {expected}"));
            }
            if *available < -overdraft_bound.0 {
                return Err(format!("organization {org}: available {available} is below -{}", overdraft_bound.0));
            }
        }
        Ok(report)
    }

    // --- the metering path ---

    fn validate_usage(usage: &UsageRecord) -> Result<(), BillingError> {
        if usage.request_id.is_empty() || usage.request_id.chars().count() > MAX_KEY_CHARS {
            return Err(BillingError::validation("request_id", "must be 1 to 255 characters"));
        }
        if usage.model.is_empty() || usage.model.chars().count() > MAX_MODEL_CHARS {
            return Err(BillingError::validation("model", "must be 1 to 200 characters"));
        }
        if usage.cost < Money::ZERO {
            return Err(BillingError::validation("cost", "must not be negative"));
        }
        tokens(usage.input_tokens)?;
        tokens(usage.output_tokens)?;
        Ok(())
    }

    /// Records the usage event and its rollup; false when the request id was recorded already.
    fn write_usage(
        conn: &mut shared::db::Conn,
        organization_id: &str,
        usage: &UsageRecord,
        hold_id: Option<&str>,
        now: NaiveDateTime,
    ) -> Result<bool, BillingError> {
        let key = key_text(usage.api_key_id);
        let row = store::UsageEventRow {
            request_id: usage.request_id.clone(),
            organization_id: organization_id.to_owned(),
            api_key_id: key.clone(),
            model: usage.model.clone(),
            input_tokens: tokens(usage.input_tokens)?,
            output_tokens: tokens(usage.output_tokens)?,
            cost: usage.cost.0,
            hold_id: hold_id.map(str::to_owned),
            created_at: now,
        };
        if !store::insert_usage_if_new(conn, &row)? {
            return Ok(false);
        }
        Ok(true)
    }

    /// Adds a recorded event to its day's rollup. Called after the transfer (lock order).
    fn roll_up(
        conn: &mut shared::db::Conn,
        organization_id: &str,
        usage: &UsageRecord,
        now: NaiveDateTime,
    ) -> Result<(), BillingError> {
        store::add_to_rollup(
            conn,
            &store::UsageDailyRow {
                organization_id: organization_id.to_owned(),
                day: now.date(),
                model: usage.model.clone(),
                api_key_id: key_text(usage.api_key_id).unwrap_or_default(),
                requests: 1,
                input_tokens: tokens(usage.input_tokens)?,
                output_tokens: tokens(usage.output_tokens)?,
                cost: usage.cost.0,
            },
        )?;
        Ok(())
    }

    fn check_ttl(&self, ttl: std::time::Duration) -> Result<i64, BillingError> {
        let max = self.inner.config.max_hold_ttl_ms;
        match u64::try_from(ttl.as_millis()) {
            Ok(ms) if ms > 0 && ms <= max => Ok(ms as i64),
            _ => Err(BillingError::validation("ttl_ms", format!("must be 1 to {max} ms"))),
        }
    }

    /// Takes `amount` for a hold: the budgets first (organization, then key: one lock order
    /// everywhere), each a conditional update, then available credit, a conditional update too.
    /// Any of them short: `BudgetExceeded` with by how much (the caller rolls back).
    #[allow(clippy::too_many_arguments)]
    fn take(
        conn: &mut shared::db::Conn,
        org: &str,
        key: Option<&str>,
        period: NaiveDate,
        amount: i64,
        hold_id: &str,
        kind: &str,
        now: NaiveDateTime,
    ) -> Result<(), BillingError> {
        for (scope, limit) in store::budget_limits(conn, org, key)? {
            if store::consumed(conn, org, &scope, period)?.is_none() {
                let scope_key = (!scope.is_empty()).then_some(scope.as_str());
                let initial = store::period_consumption(conn, org, scope_key, period, now.date())?;
                store::ensure_budget_usage(conn, org, &scope, period, initial)?;
            }
            if let Err(consumed) = store::consume_within(conn, org, &scope, period, amount, limit)? {
                let which = if scope.is_empty() { "organization_budget" } else { "api_key_budget" };
                let short_by = consumed.saturating_add(amount).saturating_sub(limit);
                return Err(BillingError::BudgetExceeded { limit: which.into(), short_by });
            }
        }
        let legs = [Leg::org(org, AVAILABLE, -amount).covered(), Leg::org(org, HELD, amount)];
        if let Err(short) = store::post(conn, org, kind, Some(hold_id), &legs, now)? {
            let short_by = short.needed - short.balance.max(0);
            return Err(BillingError::BudgetExceeded { limit: "credit".into(), short_by });
        }
        Ok(())
    }

    fn hold_of(row: &HoldRow) -> Result<Hold, BillingError> {
        Ok(Hold {
            id: parse_id(&row.id)?,
            organization_id: parse_id(&row.organization_id)?,
            api_key_id: row.api_key_id.as_deref().map(parse_id).transpose()?,
            amount: Money(row.amount),
            expires_at: utc(row.expires_at),
        })
    }

    /// Closes an open hold without usage (release or expiry): the amount goes back to
    /// available credit. `None` when it was not open, else whether it was a lease.
    async fn close_unused(&self, hold_id: HoldId, to: &'static str) -> Result<Option<bool>, BillingError> {
        let now = self.now();
        let id = hold_id.to_string();
        self.inner
            .db
            .transaction(move |conn| {
                let hold = store::lock_hold(conn, &id)?.ok_or(BillingError::HoldNotFound)?;
                // What is still held: the amount, less what a lease drew from it already.
                let rest = hold.amount - hold.charged;
                if hold.state != "open" || !store::close_hold(conn, &id, &["open"], to, hold.charged, rest, now)? {
                    return Ok(None);
                }
                let org = &hold.organization_id;
                let scopes: Vec<&str> = std::iter::once("").chain(hold.api_key_id.as_deref()).collect();
                store::add_consumed(conn, org, &scopes, hold.period_start, -rest)?;
                let legs = [Leg::org(org, HELD, -rest), Leg::org(org, AVAILABLE, rest)];
                store::post(conn, org, to, Some(&id), &legs, now)?
                    .map_err(|_| BillingError::Internal("uncovered release".into()))?;
                Ok(Some(is_lease_key(&hold.idempotency_key)))
            })
            .await
    }

    /// Releases every open hold past its expiry; returns how many. The sweeper job's body.
    pub async fn sweep_expired(&self) -> Result<usize, BillingError> {
        let mut released = 0;
        loop {
            let now = self.now();
            let ids = self
                .inner
                .db
                .run(move |conn| store::expired_holds(conn, now, SWEEP_BATCH).map_err(BillingError::from))
                .await?;
            let batch = ids.len();
            for id in ids {
                let id: HoldId = parse_id(&id)?;
                if let Some(lease) = self.close_unused(id, "expired").await? {
                    self.inner.metrics.expired(lease);
                    released += 1;
                }
            }
            if batch < SWEEP_BATCH as usize {
                return Ok(released);
            }
        }
    }

    // --- periods, invoices ---

    /// Opens the current period of every subscribed organization: grants its plan's included
    /// credit once per period. Returns how many credits were granted now. The period job's body.
    pub async fn open_periods(&self) -> Result<usize, BillingError> {
        let mut after = String::new();
        let mut granted = 0;
        loop {
            let cursor = after.clone();
            let page = self
                .inner
                .db
                .run(move |conn| store::subscriptions_page(conn, &cursor, 200).map_err(BillingError::from))
                .await?;
            for sub in &page {
                if self.open_period(&sub.organization_id, &sub.plan).await? {
                    granted += 1;
                }
            }
            match page.last() {
                Some(last) if page.len() == 200 => after = last.organization_id.clone(),
                _ => return Ok(granted),
            }
        }
    }

    /// Grants the plan's included credit for the current period, unless granted already.
    async fn open_period(&self, organization_id: &str, plan: &str) -> Result<bool, BillingError> {
        let plan = self.plan_of(Some(plan));
        if plan.included_credit <= Money::ZERO {
            return Ok(false);
        }
        let now = self.now();
        let period = period_of(now.date());
        let org = organization_id.to_owned();
        let result = self
            .inner
            .db
            .transaction(move |conn| {
                let row = CreditGrantRow {
                    id: GrantId::new().to_string(),
                    organization_id: org.clone(),
                    kind: "plan_credit".into(),
                    amount: plan.included_credit.0,
                    reason: format!("{} plan: included credit for the period from {period}", plan.name),
                    period_start: Some(period),
                    created_at: now,
                };
                if !store::insert_plan_credit_if_new(conn, &row)? {
                    return Ok(false);
                }
                store::ensure_accounts(conn, &org)?;
                let legs = [Leg::system(ISSUED, -row.amount), Leg::org(&org, AVAILABLE, row.amount)];
                store::post(conn, &org, "plan_credit", Some(&row.id), &legs, now)?
                    .map_err(|_| BillingError::Internal("uncovered plan credit".into()))?;
                Ok(true)
            })
            .await;
        match result {
            // Two processes opened the same period at once: the unique index kept one.
            Err(BillingError::Internal(m)) if m.contains("unique") || m.contains("UNIQUE") => Ok(false),
            other => other,
        }
    }

    /// Builds (without storing) the invoice of `organization_id` for the period starting at
    /// `period_start`: from the daily rollups, the grants and the plan. The same inputs always
    /// give the same lines and total.
    pub async fn build_invoice(
        &self,
        organization_id: OrganizationId,
        period_start: NaiveDate,
    ) -> Result<Invoice, BillingError> {
        let org = organization_id.to_string();
        let row = self.inner.db.run(move |conn| Self::compose_invoice_row(conn, &org, period_start)).await?;
        self.invoice_of(&row.0)
    }

    fn compose_invoice_row(
        conn: &mut shared::db::Conn,
        organization_id: &str,
        period_start: NaiveDate,
    ) -> Result<(InvoiceRow, String), BillingError> {
        // The plan and currency are filled in by the caller (`plan` here is the subscription's).
        let end = next_period(period_start);
        let plan = store::find_subscription(conn, organization_id)?.map(|s| s.plan);
        let rollups = store::rollups(conn, organization_id, period_start, end.pred_opt().unwrap_or(end))?;
        let grants = store::grants_between(conn, organization_id, midnight(period_start), midnight(end))?;
        let mut per_model: BTreeMap<String, (i64, i64, i64)> = BTreeMap::new();
        for r in &rollups {
            let m = per_model.entry(r.model.clone()).or_default();
            m.0 += r.input_tokens;
            m.1 += r.output_tokens;
            m.2 += r.cost;
        }
        let usage: Vec<InvoiceLine> = per_model
            .into_iter()
            .map(|(model, (input, output, cost))| InvoiceLine {
                kind: "usage".into(),
                description: format!("{model}: {input} input and {output} output tokens"),
                model: Some(model),
                input_tokens: u64::try_from(input).unwrap_or(0),
                output_tokens: u64::try_from(output).unwrap_or(0),
                amount_cents: Money(cost).to_cents(),
            })
            .collect();
        let credits: Vec<InvoiceLine> = grants
            .iter()
            .map(|g| InvoiceLine {
                kind: "credit".into(),
                description: g.reason.clone(),
                model: None,
                input_tokens: 0,
                output_tokens: 0,
                amount_cents: -Money(g.amount).to_cents(),
            })
            .collect();
        let lines = serde_json::to_string(&(usage, credits)).map_err(|e| BillingError::Internal(e.to_string()))?;
        let row = InvoiceRow {
            id: InvoiceId::new().to_string(),
            organization_id: organization_id.to_owned(),
            period_start,
            period_end: end,
            plan: plan.clone().unwrap_or_default(),
            currency: String::new(),
            lines,
            total_cents: 0,
            created_at: NaiveDateTime::default(),
        };
        Ok((row, plan.unwrap_or_default()))
    }

    /// Fills in the plan fee, currency and total of a composed invoice row.
    fn finish_invoice_row(&self, mut row: InvoiceRow, now: NaiveDateTime) -> Result<InvoiceRow, BillingError> {
        let plan = self.plan_of(Some(&row.plan).filter(|p| !p.is_empty()).map(String::as_str));
        let (usage, credits): (Vec<InvoiceLine>, Vec<InvoiceLine>) =
            serde_json::from_str(&row.lines).map_err(|e| BillingError::Internal(e.to_string()))?;
        let mut lines = Vec::new();
        if plan.monthly_fee > Money::ZERO {
            lines.push(InvoiceLine {
                kind: "plan_fee".into(),
                description: format!("{} plan, monthly fee", plan.name),
                model: None,
                input_tokens: 0,
                output_tokens: 0,
                amount_cents: plan.monthly_fee.to_cents(),
            });
        }
        lines.extend(usage);
        lines.extend(credits);
        row.total_cents = lines.iter().map(|l| l.amount_cents).sum();
        row.lines = serde_json::to_string(&lines).map_err(|e| BillingError::Internal(e.to_string()))?;
        row.plan = plan.id;
        row.currency = self.inner.config.currency.clone();
        row.created_at = now;
        Ok(row)
    }

    fn invoice_of(&self, row: &InvoiceRow) -> Result<Invoice, BillingError> {
        let row = if row.currency.is_empty() { self.finish_invoice_row(row.clone(), self.now())? } else { row.clone() };
        let lines: Vec<InvoiceLine> =
            serde_json::from_str(&row.lines).map_err(|e| BillingError::Internal(e.to_string()))?;
        Ok(Invoice {
            id: parse_id(&row.id)?,
            organization_id: parse_id(&row.organization_id)?,
            currency: row.currency.clone(),
            period_start: utc(midnight(row.period_start)),
            period_end: utc(midnight(row.period_end)),
            plan: row.plan.clone(),
            lines,
            total_cents: row.total_cents,
            created_at: utc(row.created_at),
        })
    }

    /// Finalizes the invoice of every organization with a subscription, usage or grants in
    /// the period before the current one, unless it exists. Returns how many were written.
    /// The invoice job's body.
    pub async fn close_previous_period(&self) -> Result<usize, BillingError> {
        let current = self.period_now();
        let previous = period_of(current.pred_opt().unwrap_or(current));
        self.finalize_period(previous).await
    }

    /// Finalizes the invoices of the period starting at `period_start` (which must have ended).
    pub async fn finalize_period(&self, period_start: NaiveDate) -> Result<usize, BillingError> {
        let end = next_period(period_start);
        if end > self.now().date() {
            return Err(BillingError::validation("period_start", "the period has not ended"));
        }
        let mut orgs = self
            .inner
            .db
            .run(move |conn| store::active_organizations(conn, period_start, end).map_err(BillingError::from))
            .await?;
        let mut after = String::new();
        loop {
            let cursor = after.clone();
            let page = self
                .inner
                .db
                .run(move |conn| store::subscriptions_page(conn, &cursor, 500).map_err(BillingError::from))
                .await?;
            orgs.extend(page.iter().map(|s| s.organization_id.clone()));
            match page.last() {
                Some(last) if page.len() == 500 => after = last.organization_id.clone(),
                _ => break,
            }
        }
        orgs.sort();
        orgs.dedup();
        let mut written = 0;
        for org in orgs {
            let now = self.now();
            let this = self.clone();
            let wrote = self
                .inner
                .db
                .transaction(move |conn| {
                    if store::find_invoice_for(conn, &org, period_start)?.is_some() {
                        return Ok(false);
                    }
                    let (row, _) = Self::compose_invoice_row(conn, &org, period_start)?;
                    let row = this.finish_invoice_row(row, now)?;
                    Ok::<_, BillingError>(store::insert_invoice_if_new(conn, &row)?)
                })
                .await?;
            written += usize::from(wrote);
            self.inner.metrics.invoices_finalized(usize::from(wrote));
        }
        Ok(written)
    }

    /// Deletes credit-grant idempotency keys older than the retention. The purge job's body.
    pub async fn purge_idempotency_keys(&self) -> Result<usize, BillingError> {
        let hours = i64::try_from(self.inner.config.idempotency_retention_hours).unwrap_or(i64::MAX / 3_600_000);
        let before = self.now() - ChronoDuration::hours(hours);
        self.inner.db.run(move |conn| store::purge_idempotency(conn, before).map_err(BillingError::from)).await
    }

    async fn load_limits(&self, organization_id: OrganizationId) -> Result<PlanLimits, BillingError> {
        let org = organization_id.to_string();
        let sub =
            self.inner.db.run(move |conn| store::find_subscription(conn, &org).map_err(BillingError::from)).await?;
        let plan = self.plan_of(sub.as_ref().map(|s| s.plan.as_str()));
        Ok(PlanLimits {
            plan: plan.id,
            requests_per_minute: plan.requests_per_minute,
            tokens_per_minute: plan.tokens_per_minute,
            allowed_models: plan.allowed_models,
        })
    }

    fn limits_key(organization_id: OrganizationId) -> CacheKey {
        CacheKey::organization(organization_id, "limits", "plan")
    }

    fn subscription_of(&self, organization_id: OrganizationId, plan: Option<String>) -> Subscription {
        let start = self.period_now();
        Subscription {
            organization_id,
            plan: self.plan_of(plan.as_deref()).id,
            subscribed: plan.is_some(),
            current_period_start: utc(midnight(start)),
            current_period_end: utc(midnight(next_period(start))),
        }
    }
}

impl BillingService {
    /// `reserve` in one transaction (the direct path).
    async fn reserve_hold(&self, request: ReserveRequest) -> Result<Hold, BillingError> {
        if request.amount <= Money::ZERO {
            return Err(BillingError::validation("amount", "must be positive"));
        }
        if request.idempotency_key.is_empty() || request.idempotency_key.chars().count() > MAX_KEY_CHARS {
            return Err(BillingError::validation("idempotency_key", "must be 1 to 255 characters"));
        }
        let ttl_ms = self.check_ttl(request.ttl)?;
        let now = self.now();
        let period = period_of(now.date());
        let org = request.organization_id.to_string();
        let key = key_text(request.api_key_id);
        let amount = request.amount.0;
        let row = HoldRow {
            id: HoldId::new().to_string(),
            organization_id: org.clone(),
            api_key_id: key.clone(),
            amount,
            idempotency_key: request.idempotency_key.clone(),
            state: "open".into(),
            period_start: period,
            charged: 0,
            returned: 0,
            created_at: now,
            expires_at: now + ChronoDuration::milliseconds(ttl_ms),
            closed_at: None,
        };
        let outcome = self
            .inner
            .db
            .transaction(move |conn| {
                if let Some(existing) = store::find_hold_by_key(conn, &org, &row.idempotency_key)? {
                    return Ok(existing);
                }
                Self::take(conn, &org, key.as_deref(), period, amount, &row.id, "reserve", now)?;
                if !store::insert_hold_if_new(conn, &row)? {
                    // The same key reserved concurrently: roll back, answer with that hold.
                    return Err(Abort::Raced);
                }
                Ok(row)
            })
            .await;
        let row = match outcome {
            Ok(row) => row,
            Err(Abort::Error(e)) => return Err(e),
            Err(Abort::Raced) => {
                let (org, key) = (request.organization_id.to_string(), request.idempotency_key.clone());
                self.inner
                    .db
                    .run(move |conn| store::find_hold_by_key(conn, &org, &key).map_err(BillingError::from))
                    .await?
                    .ok_or_else(|| BillingError::Internal("a hold raced and then vanished".into()))?
            }
        };
        Self::hold_of(&row)
    }

    /// `settle` in one transaction (the direct path).
    async fn settle_hold(&self, request: SettleRequest) -> Result<Settlement, BillingError> {
        Self::validate_usage(&request.usage)?;
        // A concurrent settle or release may close the hold between our read and our
        // conditional update: then read again and answer from what it wrote.
        for _ in 0..3 {
            let now = self.now();
            let id = request.hold_id.to_string();
            let usage = request.usage.clone();
            let outcome = self
                .inner
                .db
                .transaction(move |conn| {
                    let hold = store::lock_hold(conn, &id)?.ok_or(BillingError::HoldNotFound)?;
                    if hold.state == "settled" {
                        return Ok((hold.charged, hold.returned));
                    }
                    let org = hold.organization_id.clone();
                    let scopes: Vec<&str> = std::iter::once("").chain(hold.api_key_id.as_deref()).collect();
                    let open = hold.state == "open";
                    let already = store::usage_exists(conn, &usage.request_id)?;
                    // What is charged: the cost, unless this request's usage was recorded before.
                    let cost = if already { 0 } else { usage.cost.0 };
                    let held = hold.amount - hold.charged;
                    let returned = if open { (held - cost).max(0) } else { 0 };
                    if !store::close_hold(conn, &id, &[hold.state.as_str()], "settled", cost, returned, now)? {
                        return Err(Abort::Raced);
                    }
                    let legs: Vec<Leg> = if open {
                        // The hold leaves `held`; the cost goes to `spent`; the difference comes
                        // back to (or, above the hold, out of) `available`.
                        vec![
                            Leg::org(&org, HELD, -held),
                            Leg::org(&org, SPENT, cost),
                            Leg::org(&org, AVAILABLE, held - cost),
                        ]
                    } else {
                        // The hold was released or expired already: charge available directly.
                        vec![Leg::org(&org, AVAILABLE, -cost), Leg::org(&org, SPENT, cost)]
                    };
                    let consumed_delta = if open { cost - held } else { cost };
                    store::add_consumed(conn, &org, &scopes, hold.period_start, consumed_delta)?;
                    if legs.iter().any(|l| l.amount != 0) {
                        store::post(conn, &org, "settle", Some(&id), &legs, now)?
                            .map_err(|_| BillingError::Internal("uncovered settle".into()))?;
                    }
                    if !already && Self::write_usage(conn, &org, &usage, Some(&id), now)? {
                        Self::roll_up(conn, &org, &usage, now)?;
                    }
                    Ok((cost, returned))
                })
                .await;
            match outcome {
                Ok((charged, returned)) => {
                    return Ok(Settlement {
                        hold_id: request.hold_id,
                        charged: Money(charged),
                        returned: Money(returned),
                    });
                }
                Err(Abort::Error(e)) => return Err(e),
                Err(Abort::Raced) => continue,
            }
        }
        Err(BillingError::Unavailable("the hold kept changing under the settlement; retry".into()))
    }
}

#[async_trait]
impl BillingApi for BillingService {
    #[tracing::instrument(skip_all, fields(organization.id = %request.organization_id))]
    async fn reserve(&self, request: ReserveRequest) -> Result<Hold, BillingError> {
        // A lease's own reservation is counted by its holder (`keel_billing_lease_slices`).
        let lease = is_lease_key(&request.idempotency_key);
        let result = self.reserve_hold(request).await;
        if !lease {
            let metrics = &self.inner.metrics;
            let outcome = match &result {
                Ok(_) => BillingOutcome::Ok,
                Err(BillingError::BudgetExceeded { limit, .. }) => {
                    metrics.budget_exceeded(limit);
                    BillingOutcome::BudgetExceeded
                }
                Err(_) => BillingOutcome::Error,
            };
            metrics.decision(BillingOp::Reserve, BillingPath::Direct, outcome);
        }
        result
    }

    #[tracing::instrument(skip_all, fields(hold.id = %request.hold_id))]
    async fn settle(&self, request: SettleRequest) -> Result<Settlement, BillingError> {
        let result = self.settle_hold(request).await;
        self.inner.metrics.decision(BillingOp::Settle, BillingPath::Direct, outcome_of(&result));
        result
    }

    #[tracing::instrument(skip_all, fields(hold.id = %hold_id))]
    async fn release(&self, hold_id: HoldId) -> Result<(), BillingError> {
        let result = self.close_unused(hold_id, "released").await.map(drop);
        self.inner.metrics.decision(BillingOp::Release, BillingPath::Direct, outcome_of(&result));
        result
    }

    #[tracing::instrument(skip_all, fields(organization.id = %request.organization_id))]
    async fn record_usage(&self, request: RecordUsageRequest) -> Result<Recorded, BillingError> {
        Self::validate_usage(&request.usage)?;
        let now = self.now();
        let period = period_of(now.date());
        let org = request.organization_id.to_string();
        let usage = request.usage;
        self.inner
            .db
            .transaction(move |conn| {
                store::ensure_accounts(conn, &org)?;
                if !Self::write_usage(conn, &org, &usage, None, now)? {
                    return Ok(Recorded::Duplicate);
                }
                let cost = usage.cost.0;
                if cost > 0 {
                    let key = key_text(usage.api_key_id);
                    let scopes: Vec<&str> = std::iter::once("").chain(key.as_deref()).collect();
                    store::add_consumed(conn, &org, &scopes, period, cost)?;
                    let legs = [Leg::org(&org, AVAILABLE, -cost), Leg::org(&org, SPENT, cost)];
                    store::post(conn, &org, "usage", Some(&usage.request_id), &legs, now)?
                        .map_err(|_| BillingError::Internal("uncovered usage".into()))?;
                }
                Self::roll_up(conn, &org, &usage, now)?;
                Ok(Recorded::Recorded)
            })
            .await
    }

    #[tracing::instrument(skip_all, fields(hold.id = %request.hold_id))]
    async fn extend_lease(&self, request: ExtendLeaseRequest) -> Result<Hold, BillingError> {
        if request.amount < Money::ZERO {
            return Err(BillingError::validation("amount", "must not be negative"));
        }
        let ttl_ms = self.check_ttl(request.ttl)?;
        for _ in 0..3 {
            let now = self.now();
            let until = now + ChronoDuration::milliseconds(ttl_ms);
            let id = request.hold_id.to_string();
            let amount = request.amount.0;
            let outcome = self
                .inner
                .db
                .transaction(move |conn| {
                    let hold = store::lock_hold(conn, &id)?.ok_or(BillingError::HoldNotFound)?;
                    if hold.state != "open" {
                        return Err(Abort::Error(BillingError::HoldNotFound));
                    }
                    let org = hold.organization_id.clone();
                    if amount > 0 {
                        Self::take(
                            conn,
                            &org,
                            hold.api_key_id.as_deref(),
                            hold.period_start,
                            amount,
                            &id,
                            "lease",
                            now,
                        )?;
                    }
                    if !store::grow_hold(conn, &id, amount, until)? {
                        return Err(Abort::Raced);
                    }
                    Ok(HoldRow { amount: hold.amount + amount, expires_at: until, ..hold })
                })
                .await;
            match outcome {
                Ok(row) => return Self::hold_of(&row),
                Err(Abort::Error(e)) => return Err(e),
                Err(Abort::Raced) => continue,
            }
        }
        Err(BillingError::Unavailable("the lease kept changing; retry".into()))
    }

    #[tracing::instrument(skip_all, fields(hold.id = %request.hold_id, usage.count = request.usage.len()))]
    async fn commit_lease(&self, request: CommitLeaseRequest) -> Result<LeaseCommitted, BillingError> {
        for usage in &request.usage {
            Self::validate_usage(usage)?;
        }
        let ttl_ms = self.check_ttl(request.ttl)?;
        for _ in 0..3 {
            let now = self.now();
            let until = now + ChronoDuration::milliseconds(ttl_ms);
            let id = request.hold_id.to_string();
            let usages = request.usage.clone();
            let close = request.close;
            let outcome = self
                .inner
                .db
                .transaction(move |conn| {
                    let hold = store::lock_hold(conn, &id)?.ok_or(BillingError::HoldNotFound)?;
                    let org = hold.organization_id.clone();
                    // Records seen before (a retried commit) are not charged again; within the
                    // batch, the first of a repeated id counts.
                    let ids: Vec<String> = usages.iter().map(|u| u.request_id.clone()).collect();
                    let seen: std::collections::HashSet<String> =
                        store::existing_usage(conn, &ids)?.into_iter().collect();
                    let mut fresh = Vec::new();
                    let mut batch = std::collections::HashSet::new();
                    for u in &usages {
                        if !seen.contains(&u.request_id) && batch.insert(u.request_id.clone()) {
                            fresh.push(u.clone());
                        }
                    }
                    let total: i64 = fresh.iter().map(|u| u.cost.0).sum();
                    let open = hold.state == "open";
                    let remaining = hold.amount - hold.charged;
                    let from_held = if open { total.min(remaining) } else { 0 };
                    let excess = total - from_held;
                    let returned = if open && close { remaining - from_held } else { 0 };
                    let scopes: Vec<&str> = std::iter::once("").chain(hold.api_key_id.as_deref()).collect();
                    let period = if open { hold.period_start } else { period_of(now.date()) };
                    if open {
                        let moved = if close {
                            store::close_hold(conn, &id, &["open"], "settled", hold.charged + from_held, returned, now)?
                        } else {
                            store::draw_from_hold(conn, &id, from_held, until)?
                        };
                        if !moved {
                            return Err(Abort::Raced);
                        }
                    }
                    // Budgets already count what was held; only the excess and the return move them.
                    store::add_consumed(conn, &org, &scopes, period, excess - returned)?;
                    let legs = [
                        Leg::org(&org, AVAILABLE, returned - excess),
                        Leg::org(&org, HELD, -(from_held + returned)),
                        Leg::org(&org, SPENT, total),
                    ];
                    if legs.iter().any(|l| l.amount != 0) {
                        store::post(conn, &org, "lease_commit", Some(&id), &legs, now)?
                            .map_err(|_| BillingError::Internal("uncovered lease commit".into()))?;
                    }
                    // The events in one statement, the rollups one upsert per (model, key).
                    let mut rows = Vec::with_capacity(fresh.len());
                    let mut rollups: BTreeMap<(String, String), store::UsageDailyRow> = BTreeMap::new();
                    for u in &fresh {
                        let key = key_text(u.api_key_id).unwrap_or_default();
                        let (input, output) = (tokens(u.input_tokens)?, tokens(u.output_tokens)?);
                        rows.push(store::UsageEventRow {
                            request_id: u.request_id.clone(),
                            organization_id: org.clone(),
                            api_key_id: u.api_key_id.map(|k| k.to_string()),
                            model: u.model.clone(),
                            input_tokens: input,
                            output_tokens: output,
                            cost: u.cost.0,
                            hold_id: Some(id.clone()),
                            created_at: now,
                        });
                        let r = rollups.entry((u.model.clone(), key.clone())).or_insert_with(|| store::UsageDailyRow {
                            organization_id: org.clone(),
                            day: now.date(),
                            model: u.model.clone(),
                            api_key_id: key,
                            requests: 0,
                            input_tokens: 0,
                            output_tokens: 0,
                            cost: 0,
                        });
                        r.requests += 1;
                        r.input_tokens += input;
                        r.output_tokens += output;
                        r.cost += u.cost.0;
                    }
                    if store::insert_usage_batch(conn, &rows)? != rows.len() {
                        return Err(Abort::Raced);
                    }
                    for r in rollups.values() {
                        store::add_to_rollup(conn, r)?;
                    }
                    let left = if open && !close { remaining - from_held } else { 0 };
                    Ok((total, left, !open || close))
                })
                .await;
            match outcome {
                Ok((charged, remaining, closed)) => {
                    return Ok(LeaseCommitted {
                        hold_id: request.hold_id,
                        charged: Money(charged),
                        remaining: Money(remaining),
                        closed,
                    });
                }
                Err(Abort::Error(e)) => return Err(e),
                Err(Abort::Raced) => continue,
            }
        }
        Err(BillingError::Unavailable("the lease kept changing; retry".into()))
    }

    async fn limits(&self, organization_id: OrganizationId) -> Result<PlanLimits, BillingError> {
        let key = Self::limits_key(organization_id);
        self.inner.limits.get_or_load(&key, || self.load_limits(organization_id)).await
    }

    async fn plans(&self) -> Result<Vec<Plan>, BillingError> {
        Ok(self.inner.config.plan_list())
    }

    #[tracing::instrument(skip_all, fields(organization.id = %organization_id))]
    async fn subscription(
        &self,
        principal: &Principal,
        organization_id: OrganizationId,
    ) -> Result<Subscription, BillingError> {
        self.require_manager(principal, organization_id).await?;
        let org = organization_id.to_string();
        let sub =
            self.inner.db.run(move |conn| store::find_subscription(conn, &org).map_err(BillingError::from)).await?;
        Ok(self.subscription_of(organization_id, sub.map(|s| s.plan)))
    }

    #[tracing::instrument(skip_all, fields(organization.id = %organization_id))]
    async fn put_subscription(
        &self,
        principal: &Principal,
        organization_id: OrganizationId,
        request: PutSubscriptionRequest,
    ) -> Result<Subscription, BillingError> {
        self.require_manager(principal, organization_id).await?;
        let plan = self.inner.config.find_plan(&request.plan).ok_or(BillingError::UnknownPlan)?;
        let now = self.now();
        let org = organization_id.to_string();
        let plan_id = plan.id.clone();
        self.inner
            .db
            .transaction(move |conn| store::put_subscription(conn, &org, &plan_id, now).map_err(BillingError::from))
            .await?;
        self.inner.limits.invalidate(&Self::limits_key(organization_id)).await;
        self.open_period(&organization_id.to_string(), &plan.id).await?;
        tracing::info!(plan = %plan.id, "subscription changed");
        Ok(self.subscription_of(organization_id, Some(plan.id)))
    }

    #[tracing::instrument(skip_all, fields(organization.id = %organization_id))]
    async fn grant_credit(
        &self,
        principal: &Principal,
        organization_id: OrganizationId,
        idempotency_key: &str,
        request: GrantCreditRequest,
    ) -> Result<CreditGrant, BillingError> {
        if principal.kind != PrincipalKind::Session || !principal.platform_admin {
            return Err(BillingError::PlatformAdminRequired);
        }
        if idempotency_key.is_empty() || idempotency_key.chars().count() > MAX_KEY_CHARS {
            return Err(BillingError::validation("Idempotency-Key", "a header of 1 to 255 characters is required"));
        }
        if request.amount <= Money::ZERO {
            return Err(BillingError::validation("amount", "must be positive"));
        }
        let reason = request.reason.trim().to_owned();
        if reason.is_empty() || reason.chars().count() > MAX_REASON_CHARS {
            return Err(BillingError::validation("reason", "must be 1 to 500 characters"));
        }
        let body = serde_json::to_vec(&request).map_err(|e| BillingError::Internal(e.to_string()))?;
        let digest = hex::encode(Sha256::digest(&body));
        let now = self.now();
        let grant =
            CreditGrant { id: GrantId::new(), organization_id, amount: request.amount, reason, created_at: utc(now) };
        let response = serde_json::to_string(&grant).map_err(|e| BillingError::Internal(e.to_string()))?;
        let org = organization_id.to_string();
        let key = idempotency_key.to_owned();
        let answer = grant.clone();
        let stored = self
            .inner
            .db
            .transaction(move |conn| {
                let claim = IdempotencyRow {
                    organization_id: org.clone(),
                    key: key.clone(),
                    request_digest: digest.clone(),
                    response,
                    created_at: now,
                };
                if !store::claim_idempotency(conn, &claim)? {
                    let first = store::find_idempotency(conn, &org, &key)?
                        .ok_or_else(|| BillingError::Internal("idempotency key vanished".into()))?;
                    if first.request_digest != digest {
                        return Err(BillingError::IdempotencyKeyReused);
                    }
                    return Ok(Some(first.response));
                }
                let id = grant.id.to_string();
                store::ensure_accounts(conn, &org)?;
                store::insert_grant(
                    conn,
                    &CreditGrantRow {
                        id: id.clone(),
                        organization_id: org.clone(),
                        kind: "grant".into(),
                        amount: grant.amount.0,
                        reason: grant.reason.clone(),
                        period_start: None,
                        created_at: now,
                    },
                )?;
                let legs = [Leg::system(ISSUED, -grant.amount.0), Leg::org(&org, AVAILABLE, grant.amount.0)];
                store::post(conn, &org, "grant", Some(&id), &legs, now)?
                    .map_err(|_| BillingError::Internal("uncovered grant".into()))?;
                Ok(None)
            })
            .await?;
        match stored {
            Some(first) => serde_json::from_str(&first).map_err(|e| BillingError::Internal(e.to_string())),
            None => {
                tracing::info!(amount = answer.amount.0, "credit granted");
                Ok(answer)
            }
        }
    }

    async fn budgets(&self, principal: &Principal, organization_id: OrganizationId) -> Result<Budgets, BillingError> {
        self.require_manager(principal, organization_id).await?;
        let org = organization_id.to_string();
        let period = self.period_now();
        let rows = self
            .inner
            .db
            .run(move |conn| {
                let mut out = Vec::new();
                for (scope, limit) in store::all_budgets(conn, &org)? {
                    let consumed = store::consumed(conn, &org, &scope, period)?.unwrap_or(0);
                    out.push((scope, limit, consumed));
                }
                Ok::<_, BillingError>(out)
            })
            .await?;
        let mut budgets =
            Budgets { organization: Budget { api_key_id: None, limit: None, consumed: Money::ZERO }, api_keys: vec![] };
        for (scope, limit, consumed) in rows {
            if scope.is_empty() {
                budgets.organization =
                    Budget { api_key_id: None, limit: Some(Money(limit)), consumed: Money(consumed) };
            } else {
                budgets.api_keys.push(Budget {
                    api_key_id: Some(parse_id(&scope)?),
                    limit: Some(Money(limit)),
                    consumed: Money(consumed),
                });
            }
        }
        Ok(budgets)
    }

    async fn put_budget(
        &self,
        principal: &Principal,
        organization_id: OrganizationId,
        api_key_id: Option<ApiKeyId>,
        request: PutBudgetRequest,
    ) -> Result<Budget, BillingError> {
        self.require_manager(principal, organization_id).await?;
        if request.limit.is_some_and(|l| l < Money::ZERO) {
            return Err(BillingError::validation("limit", "must not be negative"));
        }
        let now = self.now();
        let period = period_of(now.date());
        let org = organization_id.to_string();
        let scope = key_text(api_key_id).unwrap_or_default();
        let limit = request.limit.map(|l| l.0);
        let consumed = self
            .inner
            .db
            .transaction(move |conn| {
                store::put_budget(conn, &org, &scope, limit, now)?;
                if limit.is_some() && store::consumed(conn, &org, &scope, period)?.is_none() {
                    let key = (!scope.is_empty()).then_some(scope.as_str());
                    let initial = store::period_consumption(conn, &org, key, period, now.date())?;
                    store::ensure_budget_usage(conn, &org, &scope, period, initial)?;
                }
                Ok::<_, BillingError>(store::consumed(conn, &org, &scope, period)?.unwrap_or(0))
            })
            .await?;
        Ok(Budget { api_key_id, limit: request.limit, consumed: Money(consumed) })
    }

    async fn balance(&self, principal: &Principal, organization_id: OrganizationId) -> Result<Balance, BillingError> {
        self.require_manager(principal, organization_id).await?;
        let org = organization_id.to_string();
        let (available, held, spent) =
            self.inner.db.run(move |conn| store::balances(conn, &org).map_err(BillingError::from)).await?;
        Ok(Balance {
            organization_id,
            currency: self.inner.config.currency.clone(),
            available: Money(available),
            held: Money(held),
            spent: Money(spent),
        })
    }

    async fn usage(
        &self,
        principal: &Principal,
        organization_id: OrganizationId,
        query: UsageQuery,
    ) -> Result<UsageReport, BillingError> {
        self.require_manager(principal, organization_id).await?;
        if query.to < query.from {
            return Err(BillingError::validation("to", "must not be before `from`"));
        }
        if (query.to - query.from).num_days() > 366 {
            return Err(BillingError::validation("to", "a report covers at most 366 days"));
        }
        let org = organization_id.to_string();
        let (from, to) = (query.from, query.to);
        let rollups = self
            .inner
            .db
            .run_read(move |conn| store::rollups(conn, &org, from, to).map_err(BillingError::from))
            .await?;
        let mut groups: BTreeMap<(Option<NaiveDate>, Option<String>, Option<String>), UsageRow> = BTreeMap::new();
        for r in rollups {
            let group = match query.group_by {
                UsageGroupBy::Day => (Some(r.day), None, None),
                UsageGroupBy::Model => (None, Some(r.model.clone()), None),
                UsageGroupBy::ApiKey => (None, None, Some(r.api_key_id.clone())),
            };
            let api_key_id = match &group.2 {
                Some(k) if !k.is_empty() => Some(parse_id(k)?),
                _ => None,
            };
            let row = groups.entry(group.clone()).or_insert_with(|| UsageRow {
                day: group.0,
                model: group.1.clone(),
                api_key_id,
                requests: 0,
                input_tokens: 0,
                output_tokens: 0,
                cost: Money::ZERO,
            });
            row.requests += u64::try_from(r.requests).unwrap_or(0);
            row.input_tokens += u64::try_from(r.input_tokens).unwrap_or(0);
            row.output_tokens += u64::try_from(r.output_tokens).unwrap_or(0);
            row.cost = row.cost + Money(r.cost);
        }
        Ok(UsageReport { organization_id, from, to, group_by: query.group_by, rows: groups.into_values().collect() })
    }

    async fn ledger(
        &self,
        principal: &Principal,
        organization_id: OrganizationId,
        page: PageRequest,
    ) -> Result<Page<LedgerEntry>, BillingError> {
        self.require_manager(principal, organization_id).await?;
        let after = page.after_id::<EntryId>().map_err(|e| BillingError::validation("after", e.to_string()))?;
        let limit = page.limit();
        let org = organization_id.to_string();
        let rows = self
            .inner
            .db
            .run_read(move |conn| {
                store::ledger_page(conn, &org, after.as_deref(), i64::from(limit) + 1).map_err(BillingError::from)
            })
            .await?;
        Page::from_overfetch(rows, limit, |r| r.id.clone()).try_map(|r| {
            let account = match r.account_kind.as_str() {
                AVAILABLE => AccountKind::Available,
                HELD => AccountKind::Held,
                SPENT => AccountKind::Spent,
                other => return Err(BillingError::Internal(format!("unknown account kind {other}"))),
            };
            Ok(LedgerEntry {
                id: parse_id(&r.id)?,
                transfer_id: parse_id(&r.transfer_id)?,
                account,
                amount: Money(r.amount),
                kind: r.transfer_kind,
                created_at: utc(r.created_at),
            })
        })
    }

    async fn invoices(
        &self,
        principal: &Principal,
        organization_id: OrganizationId,
        page: PageRequest,
    ) -> Result<Page<Invoice>, BillingError> {
        self.require_manager(principal, organization_id).await?;
        let after = page.after_id::<InvoiceId>().map_err(|e| BillingError::validation("after", e.to_string()))?;
        let limit = page.limit();
        let org = organization_id.to_string();
        let rows = self
            .inner
            .db
            .run_read(move |conn| {
                store::invoices_page(conn, &org, after.as_deref(), i64::from(limit) + 1).map_err(BillingError::from)
            })
            .await?;
        Page::from_overfetch(rows, limit, |r| r.id.clone()).try_map(|r| self.invoice_of(&r))
    }

    async fn invoice(
        &self,
        principal: &Principal,
        organization_id: OrganizationId,
        invoice_id: InvoiceId,
    ) -> Result<Invoice, BillingError> {
        self.require_manager(principal, organization_id).await?;
        let (org, id) = (organization_id.to_string(), invoice_id.to_string());
        let row = self
            .inner
            .db
            .run_read(move |conn| store::find_invoice(conn, &org, &id).map_err(BillingError::from))
            .await?
            .ok_or(BillingError::InvoiceNotFound)?;
        self.invoice_of(&row)
    }

    async fn ready(&self) -> Result<(), BillingError> {
        self.inner.db.ping().await.map_err(BillingError::from)
    }
}
