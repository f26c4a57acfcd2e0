//! The billing contract, told once as a story over `Arc<dyn BillingApi>`: the in-process
//! service and the HTTP client in front of a billing-only gateway must pass it alike, with the
//! same results and error variants. Each step ends with the ledger check.

use auth::{AuthApi, AuthConfig, AuthService, LoginRequest, RequestContext, SignupRequest};
use billing::config::PlanConfig;
use billing::service::LedgerReport;
use billing::*;
use shared::db::Db;
use shared::module::Platform;
use std::sync::Arc;
use std::time::Duration;

const PASSWORD: &str = "correct horse battery";

/// The plan the end-to-end suites subscribe their organizations to.
pub const TEST_PLAN: &str = "test";

/// Adds the `test` plan to `config`: credit and limits with room enough for any suite's traffic,
/// so that a test meets a limit only when it sets one itself.
pub fn add_test_plan(config: &mut BillingConfig) {
    config.plans.insert(
        TEST_PLAN.into(),
        PlanConfig {
            name: "Test".into(),
            included_credit: Money::units(1_000),
            requests_per_minute: 100_000,
            tokens_per_minute: 100_000_000,
            ..PlanConfig::default()
        },
    );
}

/// What the story needs besides the contract under test.
#[derive(Clone)]
pub struct BillingWorld {
    pub auth: Arc<dyn AuthApi>,
    pub auth_db: Db,
    pub auth_config: AuthConfig,
    pub platform: Platform,
    /// An in-process service over the same database, for the ledger check (it only reads).
    pub checker: BillingService,
}

impl std::fmt::Debug for BillingWorld {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BillingWorld").finish_non_exhaustive()
    }
}

impl BillingWorld {
    /// A new account: its session principal and its personal organization.
    pub async fn owner(&self, email: &str) -> (Principal, OrganizationId) {
        let request = SignupRequest { email: email.into(), password: PASSWORD.into(), name: None };
        let signup = self.auth.signup(request, RequestContext::default()).await.unwrap();
        (self.auth.authenticate(&signup.token).await.unwrap(), signup.organization.id)
    }

    /// A platform administrator's session (`gateway admin grant-admin`).
    pub async fn platform_admin(&self, email: &str) -> Principal {
        self.owner(email).await;
        AuthService::set_platform_admin(&self.auth_db, &self.platform, &self.auth_config, email, true).await.unwrap();
        let login =
            self.auth.login(LoginRequest { email: email.into(), password: PASSWORD.into() }, RequestContext::default());
        self.auth.authenticate(&login.await.unwrap().token).await.unwrap()
    }

    pub async fn check(&self, overdraft_bound: Money) -> LedgerReport {
        self.checker.check_invariants(overdraft_bound).await.unwrap_or_else(|e| panic!("ledger invariant broken: {e}"))
    }
}

fn reserve(org: OrganizationId, amount: Money, key: &str) -> ReserveRequest {
    ReserveRequest {
        organization_id: org,
        api_key_id: None,
        amount,
        idempotency_key: key.into(),
        ttl: Duration::from_secs(60),
    }
}

fn usage(request_id: &str, cost: Money) -> UsageRecord {
    UsageRecord {
        request_id: request_id.into(),
        model: "small".into(),
        api_key_id: None,
        input_tokens: 10,
        output_tokens: 5,
        cost,
    }
}

/// The story. `tag` keeps emails apart when it runs twice on one database.
pub async fn billing_contract(api: Arc<dyn BillingApi>, world: &BillingWorld, tag: &str) {
    let admin = world.platform_admin(&format!("admin-{tag}@example.com")).await;
    let (owner, org) = world.owner(&format!("owner-{tag}@example.com")).await;
    let (stranger, _) = world.owner(&format!("stranger-{tag}@example.com")).await;

    // Plans and the default subscription.
    let plans = api.plans().await.unwrap();
    assert!(plans.iter().any(|p| p.default));
    let sub = api.subscription(&owner, org).await.unwrap();
    assert!(!sub.subscribed);
    assert_eq!(api.subscription(&stranger, org).await, Err(BillingError::OrganizationNotFound));
    assert_eq!(api.limits(org).await.unwrap().plan, sub.plan);

    // Credit: platform administrators only, idempotent by key, 422 on a different body.
    let request = GrantCreditRequest { amount: Money::units(1), reason: "welcome".into() };
    assert_eq!(api.grant_credit(&owner, org, "g1", request.clone()).await, Err(BillingError::PlatformAdminRequired));
    let grant = api.grant_credit(&admin, org, "g1", request.clone()).await.unwrap();
    assert_eq!(api.grant_credit(&admin, org, "g1", request.clone()).await.unwrap(), grant);
    let other = GrantCreditRequest { amount: Money::units(2), ..request };
    assert_eq!(api.grant_credit(&admin, org, "g1", other).await, Err(BillingError::IdempotencyKeyReused));
    world.check(Money::ZERO).await;

    // Hold, settle (retried), release.
    let hold = api.reserve(reserve(org, Money::cents(10), "r1")).await.unwrap();
    assert_eq!(api.reserve(reserve(org, Money::cents(10), "r1")).await.unwrap().id, hold.id);
    let settle = SettleRequest { hold_id: hold.id, usage: usage(&format!("{tag}-1"), Money::cents(4)) };
    let settled = api.settle(settle.clone()).await.unwrap();
    assert_eq!(api.settle(settle).await.unwrap(), settled);
    assert_eq!((settled.charged, settled.returned), (Money::cents(4), Money::cents(6)));
    let second = api.reserve(reserve(org, Money::cents(20), "r2")).await.unwrap();
    api.release(second.id).await.unwrap();
    assert_eq!(api.release(HoldId::new()).await, Err(BillingError::HoldNotFound));
    assert_eq!(
        api.reserve(reserve(org, Money::units(5), "r3")).await,
        Err(BillingError::BudgetExceeded { limit: "credit".into(), short_by: Money::cents(404).0 })
    );
    assert!(matches!(api.reserve(reserve(org, Money::ZERO, "r4")).await, Err(BillingError::Validation { .. })));
    let record = RecordUsageRequest { organization_id: org, usage: usage(&format!("{tag}-job"), Money::cents(1)) };
    assert_eq!(api.record_usage(record.clone()).await.unwrap(), Recorded::Recorded);
    assert_eq!(api.record_usage(record).await.unwrap(), Recorded::Duplicate);

    let balance = api.balance(&owner, org).await.unwrap();
    assert_eq!((balance.available, balance.held, balance.spent), (Money::cents(95), Money::ZERO, Money::cents(5)));
    assert_eq!(api.balance(&stranger, org).await, Err(BillingError::OrganizationNotFound));
    world.check(Money::ZERO).await;

    // Budgets.
    let budget = api.put_budget(&owner, org, None, PutBudgetRequest { limit: Some(Money::cents(6)) }).await.unwrap();
    assert_eq!(budget.consumed, Money::cents(5));
    assert_eq!(
        api.reserve(reserve(org, Money::cents(2), "r5")).await,
        Err(BillingError::BudgetExceeded { limit: "organization_budget".into(), short_by: Money::cents(1).0 })
    );
    assert_eq!(api.budgets(&owner, org).await.unwrap().organization.limit, Some(Money::cents(6)));
    api.put_budget(&owner, org, None, PutBudgetRequest { limit: None }).await.unwrap();

    // Usage, ledger, invoices (none yet: the period is open).
    let today = chrono::Utc::now().date_naive();
    let report =
        api.usage(&owner, org, UsageQuery { from: today, to: today, group_by: UsageGroupBy::Model }).await.unwrap();
    assert_eq!(report.rows.len(), 1);
    assert_eq!((report.rows[0].requests, report.rows[0].cost), (2, Money::cents(5)));
    let ledger = api.ledger(&owner, org, shared::PageRequest { limit: Some(2), after: None }).await.unwrap();
    assert_eq!(ledger.data.len(), 2);
    assert!(ledger.has_more);
    assert!(api.invoices(&owner, org, Default::default()).await.unwrap().data.is_empty());
    assert_eq!(api.invoice(&owner, org, InvoiceId::new()).await, Err(BillingError::InvoiceNotFound));

    world.check(Money::ZERO).await;
}

/// The budget race through `api`: $1.00 of credit, 200 reservations of $0.01 at once; returns
/// how many were admitted. Checks the ledger after.
pub async fn budget_race(api: Arc<dyn BillingApi>, world: &BillingWorld, tag: &str) -> usize {
    let admin = world.platform_admin(&format!("race-admin-{tag}@example.com")).await;
    let (_, org) = world.owner(&format!("race-{tag}@example.com")).await;
    let request = GrantCreditRequest { amount: Money::units(1), reason: "race".into() };
    api.grant_credit(&admin, org, "race", request).await.unwrap();
    let tasks: Vec<_> = (0..200)
        .map(|i| {
            let api = api.clone();
            tokio::spawn(async move {
                // A 503 on a loaded machine is retried with the same reservation key.
                loop {
                    match api.reserve(reserve(org, Money::cents(1), &format!("race-{i}"))).await {
                        Err(BillingError::Unavailable(_)) => tokio::time::sleep(Duration::from_millis(20)).await,
                        other => return other,
                    }
                }
            })
        })
        .collect();
    let mut admitted = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(_) => admitted += 1,
            Err(BillingError::BudgetExceeded { .. }) => {}
            Err(e) => panic!("unexpected {e}"),
        }
    }
    let report = world.check(Money::ZERO).await;
    assert_eq!(
        report.balances[&org.to_string()],
        (Money::units(1).0 - admitted as i64 * Money::cents(1).0, admitted as i64 * Money::cents(1).0, 0)
    );
    admitted
}
