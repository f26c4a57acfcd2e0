//! Billing metrics (`keel_billing_*`). Every label value is a fixed word, so every series is
//! created at 0 when the registry is built: dashboards and alerts see a rate of 0, never nothing.
//! The handles are resolved once, here; recording is an atomic add with no allocation.
//!
//! Who records what: the billing service records the direct path (one transaction per
//! `reserve`, `settle`, `release`), the sweeper and the invoices; the caller-side leases
//! (`billing::LeasedBilling`, in the process that holds them) record the leased path, lease
//! slices, group commits and what is acknowledged but not yet committed.

use super::LATENCY_BUCKETS;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::time::Duration;

/// Buckets for the records of one group commit: 1 to `max_batch` (50,000 by default).
pub const COMMIT_BATCH_BUCKETS: &[f64] =
    &[1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 25000.0, 50000.0];

/// A decision of the metering path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BillingOp {
    Reserve,
    Settle,
    Release,
}

/// Where a decision was taken: in memory against a lease, or in one transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BillingPath {
    Leased,
    Direct,
}

/// How a decision ended. `BudgetExceeded` is a reservation refused for lack of credit or budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BillingOutcome {
    Ok,
    BudgetExceeded,
    Error,
}

/// A lease request: its first slice or a top-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SliceKind {
    Open,
    TopUp,
}

/// How a lease request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SliceOutcome {
    Granted,
    /// `budget_exceeded`: less is spendable than the slice asked.
    Refused,
    Error,
}

const OPS: [(BillingOp, &str); 3] =
    [(BillingOp::Reserve, "reserve"), (BillingOp::Settle, "settle"), (BillingOp::Release, "release")];
const PATHS: [(BillingPath, &str); 2] = [(BillingPath::Leased, "leased"), (BillingPath::Direct, "direct")];
const OUTCOMES: [(BillingOutcome, &str); 3] =
    [(BillingOutcome::Ok, "ok"), (BillingOutcome::BudgetExceeded, "budget_exceeded"), (BillingOutcome::Error, "error")];
/// The `limit` of a `budget_exceeded` answer (`BillingError::BudgetExceeded`'s `param`).
pub const BUDGET_LIMITS: [&str; 3] = ["credit", "organization_budget", "api_key_budget"];

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct DecisionLabels {
    op: &'static str,
    path: &'static str,
    outcome: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct LimitLabels {
    limit: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct SliceLabels {
    kind: &'static str,
    outcome: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct HoldKindLabels {
    kind: &'static str,
}

/// The `keel_billing_*` families, with every series resolved.
#[derive(Debug, Clone)]
pub struct BillingMetrics {
    /// `[op][path][outcome]`, in the order of `OPS`, `PATHS`, `OUTCOMES`.
    decisions: [[[Counter; 3]; 2]; 3],
    /// In the order of `BUDGET_LIMITS`.
    budget_exceeded: [Counter; 3],
    leases: Gauge,
    leased_credit: Gauge,
    /// `[kind][outcome]`: open, top-up × granted, refused, error.
    slices: [[Counter; 3]; 2],
    commits_ok: Counter,
    commits_failed: Counter,
    batch_size: Histogram,
    commit_duration: Histogram,
    unflushed: Gauge,
    unrecorded: Counter,
    expired_holds: Counter,
    expired_leases: Counter,
    invoices: Counter,
}

impl BillingMetrics {
    pub(super) fn register(registry: &mut Registry) -> Self {
        let decisions = Family::<DecisionLabels, Counter>::default();
        let budget_exceeded = Family::<LimitLabels, Counter>::default();
        let slices = Family::<SliceLabels, Counter>::default();
        let commits = Family::<OutcomeLabels, Counter>::default();
        let expired = Family::<HoldKindLabels, Counter>::default();
        let batch = Histogram::new(COMMIT_BATCH_BUCKETS.iter().copied());
        let duration = Histogram::new(LATENCY_BUCKETS.iter().copied());
        let (leases, leased_credit, unflushed) = (Gauge::default(), Gauge::default(), Gauge::default());
        let (unrecorded, invoices) = (Counter::default(), Counter::default());

        let metrics = Self {
            decisions: OPS.map(|(_, op)| {
                PATHS.map(|(_, path)| {
                    OUTCOMES.map(|(_, outcome)| decisions.get_or_create_owned(&DecisionLabels { op, path, outcome }))
                })
            }),
            budget_exceeded: BUDGET_LIMITS.map(|limit| budget_exceeded.get_or_create_owned(&LimitLabels { limit })),
            leases: leases.clone(),
            leased_credit: leased_credit.clone(),
            slices: ["open", "topup"].map(|kind| {
                ["granted", "refused", "error"]
                    .map(|outcome| slices.get_or_create_owned(&SliceLabels { kind, outcome }))
            }),
            commits_ok: commits.get_or_create_owned(&OutcomeLabels { outcome: "ok" }),
            commits_failed: commits.get_or_create_owned(&OutcomeLabels { outcome: "error" }),
            batch_size: batch.clone(),
            commit_duration: duration.clone(),
            unflushed: unflushed.clone(),
            unrecorded: unrecorded.clone(),
            expired_holds: expired.get_or_create_owned(&HoldKindLabels { kind: "hold" }),
            expired_leases: expired.get_or_create_owned(&HoldKindLabels { kind: "lease" }),
            invoices: invoices.clone(),
        };
        registry.register(
            "keel_billing_decisions",
            "Metering decisions, by op (reserve, settle, release), path (leased: in memory against a lease; direct: one transaction) and outcome (ok, budget_exceeded, error)",
            decisions,
        );
        registry.register(
            "keel_billing_budget_exceeded",
            "Reservations refused, by the limit that refused them (credit, organization_budget, api_key_budget)",
            budget_exceeded,
        );
        registry.register("keel_billing_leases", "Leases held by this process", leases);
        registry.register(
            "keel_billing_leased_credit_nanos",
            "Credit held by this process's leases, in nano-units of the billing currency: not yet authorized, authorized and unsettled, settled and not yet committed",
            leased_credit,
        );
        registry.register(
            "keel_billing_lease_slices",
            "Lease requests of this process, by kind (open, topup) and outcome (granted, refused: less is spendable than asked, error)",
            slices,
        );
        registry.register(
            "keel_billing_lease_commits",
            "Group commits of this process's settlements (one transaction per lease), by outcome (ok, error)",
            commits,
        );
        registry.register("keel_billing_lease_commit_batch_size", "Settlements written by one group commit", batch);
        registry.register(
            "keel_billing_lease_commit_duration_seconds",
            "Time to write one group commit, failed ones included",
            duration,
        );
        registry.register(
            "keel_billing_settlements_unflushed",
            "Settlements this process acknowledged and has not committed yet: what a kill -9 would not charge",
            unflushed,
        );
        registry.register(
            "keel_billing_usage_unrecorded",
            "Settled usage this process gave up recording after its lease vanished and a retry failed (not charged)",
            unrecorded,
        );
        registry.register(
            "keel_billing_holds_expired",
            "Holds the sweeper released past their TTL, by kind (hold; lease: its process stopped without returning it)",
            expired,
        );
        registry.register("keel_billing_invoices_finalized", "Invoices finalized by the invoice job", invoices);
        metrics
    }

    /// One decision of the metering path.
    pub fn decision(&self, op: BillingOp, path: BillingPath, outcome: BillingOutcome) {
        let op = match op {
            BillingOp::Reserve => 0,
            BillingOp::Settle => 1,
            BillingOp::Release => 2,
        };
        let path = match path {
            BillingPath::Leased => 0,
            BillingPath::Direct => 1,
        };
        let outcome = match outcome {
            BillingOutcome::Ok => 0,
            BillingOutcome::BudgetExceeded => 1,
            BillingOutcome::Error => 2,
        };
        self.decisions[op][path][outcome].inc();
    }

    /// A reservation refused by `limit` (one of [`BUDGET_LIMITS`]; anything else is not counted
    /// here, only as a decision).
    pub fn budget_exceeded(&self, limit: &str) {
        if let Some(i) = BUDGET_LIMITS.iter().position(|l| *l == limit) {
            self.budget_exceeded[i].inc();
        }
    }

    /// This process's leases and the credit they hold, in nano-units.
    pub fn set_leases(&self, leases: usize, credit_nanos: i64) {
        self.leases.set(i64::try_from(leases).unwrap_or(i64::MAX));
        self.leased_credit.set(credit_nanos);
    }

    pub fn slice(&self, kind: SliceKind, outcome: SliceOutcome) {
        let kind = match kind {
            SliceKind::Open => 0,
            SliceKind::TopUp => 1,
        };
        let outcome = match outcome {
            SliceOutcome::Granted => 0,
            SliceOutcome::Refused => 1,
            SliceOutcome::Error => 2,
        };
        self.slices[kind][outcome].inc();
    }

    /// A group commit of `records` settlements that took `duration`.
    pub fn commit(&self, ok: bool, records: usize, duration: Duration) {
        if ok { &self.commits_ok } else { &self.commits_failed }.inc();
        self.batch_size.observe(records as f64);
        self.commit_duration.observe(duration.as_secs_f64());
    }

    /// A settlement acknowledged from memory, to be committed.
    pub fn acknowledged(&self) {
        self.unflushed.inc();
    }

    /// Acknowledged settlements that left memory: committed, recorded one by one, or given up.
    pub fn flushed(&self, records: usize) {
        self.unflushed.dec_by(i64::try_from(records).unwrap_or(i64::MAX));
    }

    /// A settlement whose usage could not be recorded at all.
    pub fn unrecorded(&self) {
        self.unrecorded.inc();
    }

    /// A hold released by the sweeper; `lease`: it was a lease.
    pub fn expired(&self, lease: bool) {
        if lease { &self.expired_leases } else { &self.expired_holds }.inc();
    }

    pub fn invoices_finalized(&self, count: usize) {
        self.invoices.inc_by(count as u64);
    }
}
