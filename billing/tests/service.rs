#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Integration tests of `BillingService` against real databases: SQLite always, PostgreSQL when
//! `KEEL_TEST_DATABASE_URL` is set. Every test ends with the ledger check
//! (`BillingService::check_invariants`). The cross-crate contract story, run in-process and
//! remote, lives in the `tests` crate; these cover what needs a controlled clock or races.

use auth::config::Argon2Config;
use auth::{AuthApi, AuthConfig, AuthModule, AuthService, LoginRequest, RequestContext, SignupRequest};
use billing::config::PlanConfig;
use billing::*;
use chrono::{Duration as ChronoDuration, NaiveDate, TimeZone, Utc};
use shared::ManualClock;
use shared::backend_tests;
use shared::db::Db;
use shared::module::{Module, Platform};
use shared::testing::{TestBackend, TestDatabase};
use std::sync::Arc;
use std::time::Duration;

const FAST: Argon2Config = Argon2Config { memory_kib: 1024, iterations: 1, parallelism: 1 };
const PASSWORD: &str = "correct horse battery";

struct Fixture {
    _database: TestDatabase,
    auth: Arc<dyn AuthApi>,
    auth_db: Db,
    auth_config: AuthConfig,
    platform: Platform,
    clock: ManualClock,
    billing: BillingService,
}

fn config() -> BillingConfig {
    let mut config = BillingConfig::default();
    config.plans.insert(
        "pro".into(),
        PlanConfig {
            name: "Pro".into(),
            monthly_fee: Money::units(20),
            included_credit: Money::units(5),
            requests_per_minute: 600,
            tokens_per_minute: 1_000_000,
            allowed_models: vec!["small".into(), "large".into()],
        },
    );
    config
}

async fn fixture(backend: &TestBackend) -> Fixture {
    let auth_config = AuthConfig { argon2: FAST, ..AuthConfig::default() };
    let modules: Vec<Arc<dyn Module>> =
        vec![Arc::new(AuthModule::new(auth_config.clone())), Arc::new(BillingModule::new(config()))];
    let database = TestDatabase::migrated(backend, &modules);
    let clock = ManualClock::new(Utc.with_ymd_and_hms(2026, 10, 15, 12, 0, 0).unwrap());
    let platform = shared::testing::platform_with(&modules, Arc::new(clock.clone()));
    let auth_db = database.open(auth::DOMAIN).await;
    let auth: Arc<dyn AuthApi> =
        Arc::new(AuthService::new(auth_db.clone(), auth_config.clone(), &platform).await.unwrap());
    let db = database.open(billing::DOMAIN).await;
    let billing = BillingService::new(db, config(), &platform, auth.clone());
    Fixture { _database: database, auth, auth_db, auth_config, platform, clock, billing }
}

impl Fixture {
    /// A new account: its principal (a session) and its personal organization.
    async fn owner(&self, email: &str) -> (Principal, OrganizationId) {
        let request = SignupRequest { email: email.into(), password: PASSWORD.into(), name: None };
        let signup = self.auth.signup(request, RequestContext::default()).await.unwrap();
        (self.auth.authenticate(&signup.token).await.unwrap(), signup.organization.id)
    }

    /// A platform administrator's session.
    async fn platform_admin(&self) -> Principal {
        let email = format!("admin-{}@example.com", uuid_like());
        self.owner(&email).await;
        AuthService::set_platform_admin(&self.auth_db, &self.platform, &self.auth_config, &email, true).await.unwrap();
        let login = LoginRequest { email, password: PASSWORD.into() };
        let login = self.auth.login(login, RequestContext::default()).await.unwrap();
        self.auth.authenticate(&login.token).await.unwrap()
    }

    async fn grant(&self, admin: &Principal, org: OrganizationId, amount: Money) -> CreditGrant {
        let request = GrantCreditRequest { amount, reason: "test credit".into() };
        self.billing.grant_credit(admin, org, &format!("grant-{}", uuid_like()), request).await.unwrap()
    }

    async fn check(&self, overdraft_bound: Money) -> billing::service::LedgerReport {
        self.billing.check_invariants(overdraft_bound).await.unwrap_or_else(|e| panic!("ledger invariant broken: {e}"))
    }
}

/// Retries an operation while it answers `Unavailable` (a pool timeout on a loaded machine), as a
/// client honouring 503 would: safe here because every retried call is idempotent (the same
/// reservation key, the same hold).
async fn retrying<T, F, Fut>(mut op: F) -> Result<T, BillingError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, BillingError>>,
{
    loop {
        match op().await {
            Err(BillingError::Unavailable(_)) => tokio::time::sleep(Duration::from_millis(20)).await,
            other => return other,
        }
    }
}

fn uuid_like() -> String {
    HoldId::new().to_string()[4..].to_owned()
}

fn reserve_request(org: OrganizationId, amount: Money, key: &str) -> ReserveRequest {
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
        input_tokens: 100,
        output_tokens: 20,
        cost,
    }
}

backend_tests! {
    async fn a_lease_commit_of_more_records_than_one_statement_binds_is_charged_once(backend) {
        let f = fixture(&backend).await;
        let admin = f.platform_admin().await;
        let (_owner, org) = f.owner("owner@example.com").await;
        f.grant(&admin, org, Money::units(100)).await;
        let lease = f.billing.reserve(reserve_request(org, Money::units(50), "lease")).await.unwrap();
        // More request ids than one SQLite statement binds (32,766): the commit used to fail
        // there, and its retries with it, for ever.
        let records: Vec<UsageRecord> = (0..70_000).map(|i| usage(&format!("req-{i}"), Money(1_000))).collect();
        let commit = |usage: Vec<UsageRecord>| CommitLeaseRequest {
            hold_id: lease.id,
            usage,
            close: false,
            ttl: Duration::from_secs(60),
        };
        let committed = f.billing.commit_lease(commit(records.clone())).await.unwrap();
        assert_eq!(committed.charged, Money(70_000_000));
        assert_eq!(committed.remaining, Money(Money::units(50).0 - 70_000_000));
        // A retry of the same batch charges nothing.
        let again = f.billing.commit_lease(commit(records)).await.unwrap();
        assert_eq!((again.charged, again.remaining), (Money(0), committed.remaining));
    }

    async fn reserve_settle_and_release_move_money_through_the_ledger(backend) {
        let f = fixture(&backend).await;
        let admin = f.platform_admin().await;
        let (owner, org) = f.owner("owner@example.com").await;
        f.grant(&admin, org, Money::units(1)).await;

        let hold = f.billing.reserve(reserve_request(org, Money::cents(10), "r1")).await.unwrap();
        let balance = f.billing.balance(&owner, org).await.unwrap();
        assert_eq!((balance.available, balance.held, balance.spent), (Money::cents(90), Money::cents(10), Money::ZERO));
        assert_eq!(balance.currency, "USD");

        // The same idempotency key gives the same hold, and takes nothing more.
        let again = f.billing.reserve(reserve_request(org, Money::cents(10), "r1")).await.unwrap();
        assert_eq!(again.id, hold.id);

        let settled = f.billing.settle(SettleRequest { hold_id: hold.id, usage: usage("req-1", Money::cents(3)) }).await.unwrap();
        assert_eq!((settled.charged, settled.returned), (Money::cents(3), Money::cents(7)));
        let balance = f.billing.balance(&owner, org).await.unwrap();
        assert_eq!((balance.available, balance.held, balance.spent), (Money::cents(97), Money::ZERO, Money::cents(3)));

        let other = f.billing.reserve(reserve_request(org, Money::cents(50), "r2")).await.unwrap();
        f.billing.release(other.id).await.unwrap();
        f.billing.release(other.id).await.unwrap();
        let balance = f.billing.balance(&owner, org).await.unwrap();
        assert_eq!((balance.available, balance.held), (Money::cents(97), Money::ZERO));
        assert_eq!(f.billing.release(HoldId::new()).await, Err(BillingError::HoldNotFound));

        // Too much: refused with what was short, and nothing moves.
        let refused = f.billing.reserve(reserve_request(org, Money::units(2), "r3")).await.unwrap_err();
        assert_eq!(refused, BillingError::BudgetExceeded { limit: "credit".into(), short_by: Money::cents(103).0 });
        // An organization that never had credit.
        let (_, empty) = f.owner("empty@example.com").await;
        let refused = f.billing.reserve(reserve_request(empty, Money::cents(1), "r1")).await.unwrap_err();
        assert_eq!(refused, BillingError::BudgetExceeded { limit: "credit".into(), short_by: Money::cents(1).0 });

        let report = f.check(Money::ZERO).await;
        assert_eq!(report.balances[&org.to_string()], (Money::cents(97).0, 0, Money::cents(3).0));
        assert_eq!(report.issued, -Money::units(1).0);
    }

    async fn the_budget_race_admits_no_more_than_the_credit(backend) {
        let f = fixture(&backend).await;
        let admin = f.platform_admin().await;
        for seed in [1_u64, 2, 3] {
            let (_, org) = f.owner(&format!("race{seed}@example.com")).await;
            f.grant(&admin, org, Money::units(1)).await;
            let mut rng = fastrand::Rng::with_seed(seed);
            let costs: Vec<Money> = (0..200).map(|_| Money::nanos(rng.i64(0..=Money::cents(1).0))).collect();
            let tasks: Vec<_> = (0..200)
                .map(|i| {
                    let billing = f.billing.clone();
                    let cost = costs[i];
                    tokio::spawn(async move {
                        let key = format!("race-{i}");
                        let hold = retrying(|| billing.reserve(reserve_request(org, Money::cents(1), &key))).await;
                        match hold {
                            Ok(hold) => {
                                let usage = usage(&format!("race-{seed}-{i}"), cost);
                                let request = SettleRequest { hold_id: hold.id, usage };
                                retrying(|| billing.settle(request.clone())).await.unwrap();
                                Some(cost)
                            }
                            Err(BillingError::BudgetExceeded { .. }) => None,
                            Err(e) => panic!("unexpected {e}"),
                        }
                    })
                })
                .collect();
            let mut admitted = 0;
            let mut spent = Money::ZERO;
            for task in tasks {
                if let Some(cost) = task.await.unwrap() {
                    admitted += 1;
                    spent = spent + cost;
                }
            }
            // Reservations are of $0.01 against $1.00, settled at most at the hold: at least 100
            // fit, and more only as settlements return what they did not use.
            assert!(admitted >= 100, "seed {seed}: only {admitted} admitted");
            let report = f.check(Money::ZERO).await;
            let (available, held, total_spent) = report.balances[&org.to_string()];
            assert_eq!(held, 0);
            assert_eq!(total_spent, spent.0, "seed {seed}");
            assert!(total_spent <= Money::units(1).0, "seed {seed}: spent {total_spent}");
            assert_eq!(available + total_spent, Money::units(1).0);
        }
    }

    async fn concurrent_reservations_never_take_more_than_is_spendable(backend) {
        let f = fixture(&backend).await;
        let admin = f.platform_admin().await;
        for seed in [7_u64, 8] {
            let (_, org) = f.owner(&format!("strict{seed}@example.com")).await;
            f.grant(&admin, org, Money::units(1)).await;
            let mut order: Vec<usize> = (0..200).collect();
            fastrand::Rng::with_seed(seed).shuffle(&mut order);
            let tasks: Vec<_> = order
                .into_iter()
                .map(|i| {
                    let billing = f.billing.clone();
                    tokio::spawn(async move {
                        let key = format!("s-{i}");
                        retrying(|| billing.reserve(reserve_request(org, Money::cents(1), &key))).await
                    })
                })
                .collect();
            let results = futures_util::future::join_all(tasks).await;
            let admitted = results.iter().filter(|r| r.as_ref().unwrap().is_ok()).count();
            assert_eq!(admitted, 100, "seed {seed}: held, never settled: exactly what the credit covers");
            let report = f.check(Money::ZERO).await;
            assert_eq!(report.balances[&org.to_string()], (0, Money::units(1).0, 0));
        }
    }

    async fn a_settle_retried_concurrently_applies_once(backend) {
        let f = fixture(&backend).await;
        let admin = f.platform_admin().await;
        let (owner, org) = f.owner("retry@example.com").await;
        f.grant(&admin, org, Money::units(1)).await;
        let hold = f.billing.reserve(reserve_request(org, Money::cents(10), "h")).await.unwrap();
        let tasks: Vec<_> = (0..10)
            .map(|_| {
                let billing = f.billing.clone();
                let request = SettleRequest { hold_id: hold.id, usage: usage("retried", Money::cents(4)) };
                tokio::spawn(async move { retrying(|| billing.settle(request.clone())).await })
            })
            .collect();
        for result in futures_util::future::join_all(tasks).await {
            let settlement = result.unwrap().unwrap();
            assert_eq!((settlement.charged, settlement.returned), (Money::cents(4), Money::cents(6)));
        }
        let balance = f.billing.balance(&owner, org).await.unwrap();
        assert_eq!((balance.available, balance.held, balance.spent), (Money::cents(96), Money::ZERO, Money::cents(4)));
        // A release after the settlement changes nothing.
        f.billing.release(hold.id).await.unwrap();
        assert_eq!(f.billing.balance(&owner, org).await.unwrap().available, Money::cents(96));
        f.check(Money::ZERO).await;
    }

    async fn a_cost_above_the_hold_is_charged_and_the_overshoot_is_one_request(backend) {
        let f = fixture(&backend).await;
        let admin = f.platform_admin().await;
        let (owner, org) = f.owner("over@example.com").await;
        f.grant(&admin, org, Money::cents(10)).await;
        let hold = f.billing.reserve(reserve_request(org, Money::cents(10), "h")).await.unwrap();
        let settled = f.billing.settle(SettleRequest { hold_id: hold.id, usage: usage("big", Money::cents(13)) }).await.unwrap();
        assert_eq!((settled.charged, settled.returned), (Money::cents(13), Money::ZERO));
        let balance = f.billing.balance(&owner, org).await.unwrap();
        assert_eq!((balance.available, balance.spent), (Money::cents(-3), Money::cents(13)));
        // Nothing more can be reserved while available is below zero.
        assert!(matches!(
            f.billing.reserve(reserve_request(org, Money::nanos(1), "next")).await,
            Err(BillingError::BudgetExceeded { .. })
        ));
        f.check(Money::cents(3)).await;
        assert!(f.billing.check_invariants(Money::cents(2)).await.is_err(), "the check sees an overdraft past its bound");
    }

    async fn expired_holds_are_released_by_the_sweeper_and_a_late_settle_still_charges_once(backend) {
        let f = fixture(&backend).await;
        let admin = f.platform_admin().await;
        let (owner, org) = f.owner("ttl@example.com").await;
        f.grant(&admin, org, Money::units(1)).await;
        let hold = f.billing.reserve(reserve_request(org, Money::cents(30), "h")).await.unwrap();
        let kept = f.billing.reserve(ReserveRequest { ttl: Duration::from_secs(600), ..reserve_request(org, Money::cents(5), "k") }).await.unwrap();
        assert_eq!(f.billing.sweep_expired().await.unwrap(), 0);
        f.clock.advance(ChronoDuration::seconds(61));
        assert_eq!(f.billing.sweep_expired().await.unwrap(), 1);
        assert_eq!(f.billing.sweep_expired().await.unwrap(), 0);
        let balance = f.billing.balance(&owner, org).await.unwrap();
        assert_eq!((balance.available, balance.held), (Money::cents(95), Money::cents(5)));
        f.check(Money::ZERO).await;
        // The request finished after all: its usage is charged from available, once.
        for _ in 0..3 {
            let late = f.billing.settle(SettleRequest { hold_id: hold.id, usage: usage("late", Money::cents(2)) }).await.unwrap();
            assert_eq!((late.charged, late.returned), (Money::cents(2), Money::ZERO));
        }
        f.billing.release(kept.id).await.unwrap();
        let balance = f.billing.balance(&owner, org).await.unwrap();
        assert_eq!((balance.available, balance.held, balance.spent), (Money::cents(98), Money::ZERO, Money::cents(2)));
        f.check(Money::ZERO).await;
    }

    async fn record_usage_is_idempotent_by_request_id_and_rolls_up_per_day(backend) {
        let f = fixture(&backend).await;
        let admin = f.platform_admin().await;
        let (owner, org) = f.owner("usage@example.com").await;
        f.grant(&admin, org, Money::units(1)).await;
        let request = RecordUsageRequest { organization_id: org, usage: usage("job-1", Money::cents(5)) };
        assert_eq!(f.billing.record_usage(request.clone()).await.unwrap(), Recorded::Recorded);
        assert_eq!(f.billing.record_usage(request).await.unwrap(), Recorded::Duplicate);
        let mut large = usage("job-2", Money::cents(7));
        large.model = "large".into();
        f.billing.record_usage(RecordUsageRequest { organization_id: org, usage: large }).await.unwrap();
        f.clock.advance(ChronoDuration::days(1));
        f.billing.record_usage(RecordUsageRequest { organization_id: org, usage: usage("job-3", Money::cents(1)) }).await.unwrap();

        let day = |d| NaiveDate::from_ymd_opt(2026, 10, d).unwrap();
        let query = |group_by| UsageQuery { from: day(1), to: day(31), group_by };
        let by_day = f.billing.usage(&owner, org, query(UsageGroupBy::Day)).await.unwrap();
        let days: Vec<_> = by_day.rows.iter().map(|r| (r.day.unwrap(), r.requests, r.cost)).collect();
        assert_eq!(days, vec![(day(15), 2, Money::cents(12)), (day(16), 1, Money::cents(1))]);
        let by_model = f.billing.usage(&owner, org, query(UsageGroupBy::Model)).await.unwrap();
        let models: Vec<_> = by_model.rows.iter().map(|r| (r.model.clone().unwrap(), r.input_tokens, r.cost)).collect();
        assert_eq!(models, vec![("large".into(), 100, Money::cents(7)), ("small".into(), 200, Money::cents(6))]);
        let by_key = f.billing.usage(&owner, org, query(UsageGroupBy::ApiKey)).await.unwrap();
        assert_eq!(by_key.rows.len(), 1);
        assert_eq!((by_key.rows[0].api_key_id, by_key.rows[0].requests), (None, 3));
        let bad = UsageQuery { from: day(2), to: day(1), group_by: UsageGroupBy::Day };
        assert!(matches!(f.billing.usage(&owner, org, bad).await, Err(BillingError::Validation { .. })));
        let balance = f.billing.balance(&owner, org).await.unwrap();
        assert_eq!((balance.available, balance.spent), (Money::cents(87), Money::cents(13)));
        f.check(Money::ZERO).await;
    }

    async fn concurrent_identical_grants_with_one_key_grant_once(backend) {
        let f = fixture(&backend).await;
        let admin = f.platform_admin().await;
        let (owner, org) = f.owner("grants@example.com").await;
        let request = GrantCreditRequest { amount: Money::units(3), reason: "top-up".into() };
        let tasks: Vec<_> = (0..50)
            .map(|_| {
                let (billing, admin, request) = (f.billing.clone(), admin.clone(), request.clone());
                tokio::spawn(async move { retrying(|| billing.grant_credit(&admin, org, "key-1", request.clone())).await })
            })
            .collect();
        let grants: Vec<CreditGrant> =
            futures_util::future::join_all(tasks).await.into_iter().map(|r| r.unwrap().unwrap()).collect();
        assert!(grants.iter().all(|g| g == &grants[0]), "every replay answers with the first grant");
        assert_eq!(f.billing.balance(&owner, org).await.unwrap().available, Money::units(3));

        let different = GrantCreditRequest { amount: Money::units(4), reason: "top-up".into() };
        assert_eq!(f.billing.grant_credit(&admin, org, "key-1", different).await, Err(BillingError::IdempotencyKeyReused));
        // Keys are scoped per organization.
        let (_, other) = f.owner("grants2@example.com").await;
        let elsewhere = f.billing.grant_credit(&admin, other, "key-1", request.clone()).await.unwrap();
        assert_ne!(elsewhere.id, grants[0].id);
        // Kept at least 24 hours; purged after the retention (48 h by default).
        f.clock.advance(ChronoDuration::hours(25));
        assert_eq!(f.billing.purge_idempotency_keys().await.unwrap(), 0);
        assert_eq!(f.billing.grant_credit(&admin, org, "key-1", request.clone()).await.unwrap(), grants[0]);
        f.clock.advance(ChronoDuration::hours(24));
        assert_eq!(f.billing.purge_idempotency_keys().await.unwrap(), 2);

        // Only platform administrators grant; the key is required.
        assert_eq!(f.billing.grant_credit(&owner, org, "k", request.clone()).await, Err(BillingError::PlatformAdminRequired));
        assert!(matches!(f.billing.grant_credit(&admin, org, "", request).await, Err(BillingError::Validation { .. })));
        let report = f.check(Money::ZERO).await;
        assert_eq!(report.issued, -Money::units(6).0);
    }

    async fn budgets_cap_the_organization_and_each_key(backend) {
        let f = fixture(&backend).await;
        let admin = f.platform_admin().await;
        let (owner, org) = f.owner("budget@example.com").await;
        f.grant(&admin, org, Money::units(1)).await;
        // Spending before the cap counts against it.
        let first = f.billing.reserve(reserve_request(org, Money::cents(2), "before")).await.unwrap();
        f.billing.settle(SettleRequest { hold_id: first.id, usage: usage("before", Money::cents(2)) }).await.unwrap();
        let budget = f.billing.put_budget(&owner, org, None, PutBudgetRequest { limit: Some(Money::cents(5)) }).await.unwrap();
        assert_eq!(budget.consumed, Money::cents(2));
        let key = ApiKeyId::new();
        f.billing.put_budget(&owner, org, Some(key), PutBudgetRequest { limit: Some(Money::cents(1)) }).await.unwrap();

        let with_key = |k: &str| ReserveRequest { api_key_id: Some(key), ..reserve_request(org, Money::cents(1), k) };
        let keyed = f.billing.reserve(with_key("k1")).await.unwrap();
        assert_eq!(
            f.billing.reserve(with_key("k2")).await,
            Err(BillingError::BudgetExceeded { limit: "api_key_budget".into(), short_by: Money::cents(1).0 })
        );
        f.billing.release(keyed.id).await.unwrap();
        f.billing.reserve(with_key("k3")).await.unwrap();
        f.billing.reserve(reserve_request(org, Money::cents(2), "o1")).await.unwrap();
        assert_eq!(
            f.billing.reserve(reserve_request(org, Money::cents(1), "o2")).await,
            Err(BillingError::BudgetExceeded { limit: "organization_budget".into(), short_by: Money::cents(1).0 })
        );
        let budgets = f.billing.budgets(&owner, org).await.unwrap();
        assert_eq!((budgets.organization.limit, budgets.organization.consumed), (Some(Money::cents(5)), Money::cents(5)));
        assert_eq!(budgets.api_keys.len(), 1);
        assert_eq!((budgets.api_keys[0].api_key_id, budgets.api_keys[0].consumed), (Some(key), Money::cents(1)));
        // Removing the cap lifts it.
        f.billing.put_budget(&owner, org, None, PutBudgetRequest { limit: None }).await.unwrap();
        f.billing.reserve(reserve_request(org, Money::cents(1), "o3")).await.unwrap();
        // A new period starts from zero.
        f.billing.put_budget(&owner, org, None, PutBudgetRequest { limit: Some(Money::cents(5)) }).await.unwrap();
        f.clock.advance(ChronoDuration::days(20));
        f.billing.reserve(reserve_request(org, Money::cents(5), "next-month")).await.unwrap();
        f.check(Money::ZERO).await;
    }

    async fn concurrent_reservations_never_exceed_a_budget(backend) {
        let f = fixture(&backend).await;
        let admin = f.platform_admin().await;
        let (owner, org) = f.owner("budget-race@example.com").await;
        f.grant(&admin, org, Money::units(10)).await;
        f.billing.put_budget(&owner, org, None, PutBudgetRequest { limit: Some(Money::units(1)) }).await.unwrap();
        let tasks: Vec<_> = (0..200)
            .map(|i| {
                let billing = f.billing.clone();
                tokio::spawn(async move {
                    let key = format!("b-{i}");
                    retrying(|| billing.reserve(reserve_request(org, Money::cents(1), &key))).await
                })
            })
            .collect();
        let admitted = futures_util::future::join_all(tasks).await.into_iter().filter(|r| r.as_ref().unwrap().is_ok()).count();
        assert_eq!(admitted, 100);
        f.check(Money::ZERO).await;
    }

    async fn only_owners_and_admins_see_billing_and_other_organizations_get_404(backend) {
        let f = fixture(&backend).await;
        let (owner, org) = f.owner("boss@example.com").await;
        let (stranger, _) = f.owner("stranger@example.com").await;
        let member_signup = f.owner("member@example.com").await;
        f.auth
            .add_member(&owner, org, auth::AddMemberRequest { email: "member@example.com".into(), role: auth::Role::Member })
            .await
            .unwrap();
        let member = member_signup.0;
        assert!(f.billing.balance(&owner, org).await.is_ok());
        assert_eq!(f.billing.balance(&member, org).await, Err(BillingError::PermissionDenied));
        assert_eq!(f.billing.balance(&stranger, org).await, Err(BillingError::OrganizationNotFound));
        assert_eq!(f.billing.subscription(&stranger, org).await, Err(BillingError::OrganizationNotFound));
        assert_eq!(
            f.billing.put_budget(&stranger, org, None, PutBudgetRequest { limit: None }).await,
            Err(BillingError::OrganizationNotFound)
        );
        assert_eq!(f.billing.ledger(&member, org, Default::default()).await, Err(BillingError::PermissionDenied));
        assert_eq!(f.billing.invoices(&stranger, org, Default::default()).await, Err(BillingError::OrganizationNotFound));
        f.check(Money::ZERO).await;
    }

    async fn subscriptions_grant_included_credit_once_per_period_and_set_limits(backend) {
        let f = fixture(&backend).await;
        let (owner, org) = f.owner("sub@example.com").await;
        let limits = f.billing.limits(org).await.unwrap();
        assert_eq!(limits.plan, "free");
        let sub = f.billing.subscription(&owner, org).await.unwrap();
        assert!(!sub.subscribed);
        assert_eq!(sub.current_period_start, Utc.with_ymd_and_hms(2026, 10, 1, 0, 0, 0).unwrap());
        assert_eq!(sub.current_period_end, Utc.with_ymd_and_hms(2026, 11, 1, 0, 0, 0).unwrap());
        assert_eq!(
            f.billing.put_subscription(&owner, org, PutSubscriptionRequest { plan: "gold".into() }).await,
            Err(BillingError::UnknownPlan)
        );
        let sub = f.billing.put_subscription(&owner, org, PutSubscriptionRequest { plan: "pro".into() }).await.unwrap();
        assert!(sub.subscribed);
        // The limits cache is invalidated by the change.
        let limits = f.billing.limits(org).await.unwrap();
        assert_eq!((limits.plan.as_str(), limits.requests_per_minute), ("pro", 600));
        assert!(limits.allows_model("large") && !limits.allows_model("huge"));
        assert_eq!(f.billing.balance(&owner, org).await.unwrap().available, Money::units(5));
        // The job, or a second PUT, does not grant again in the same period.
        assert_eq!(f.billing.open_periods().await.unwrap(), 0);
        f.billing.put_subscription(&owner, org, PutSubscriptionRequest { plan: "pro".into() }).await.unwrap();
        assert_eq!(f.billing.balance(&owner, org).await.unwrap().available, Money::units(5));
        // Next period: once more.
        f.clock.advance(ChronoDuration::days(31));
        assert_eq!(f.billing.open_periods().await.unwrap(), 1);
        assert_eq!(f.billing.open_periods().await.unwrap(), 0);
        assert_eq!(f.billing.balance(&owner, org).await.unwrap().available, Money::units(10));
        let plans = f.billing.plans().await.unwrap();
        assert_eq!(plans.iter().map(|p| (p.id.as_str(), p.default)).collect::<Vec<_>>(), vec![("free", true), ("pro", false)]);
        f.check(Money::ZERO).await;
    }

    async fn invoices_put_a_boundary_event_in_one_period_and_regenerate_identically(backend) {
        let f = fixture(&backend).await;
        let admin = f.platform_admin().await;
        let (owner, org) = f.owner("invoice@example.com").await;
        f.billing.put_subscription(&owner, org, PutSubscriptionRequest { plan: "pro".into() }).await.unwrap();
        f.grant(&admin, org, Money::units(1)).await;
        let record = |id: &str, cost: Money| {
            let billing = f.billing.clone();
            let request = RecordUsageRequest { organization_id: org, usage: usage(id, cost) };
            async move { billing.record_usage(request).await.unwrap() }
        };
        // 2026-10-15 12:00: usage in October; the last nanosecond-free instant of October; and
        // exactly midnight of November 1st, which belongs to November only.
        record("oct-1", Money::nanos(12_345_678)).await;
        f.clock.advance(Utc.with_ymd_and_hms(2026, 10, 31, 23, 59, 59).unwrap() - f.clock_now());
        record("oct-last", Money::cents(1)).await;
        f.clock.advance(ChronoDuration::seconds(1));
        record("nov-first", Money::cents(50)).await;

        let october = NaiveDate::from_ymd_opt(2026, 10, 1).unwrap();
        let november = NaiveDate::from_ymd_opt(2026, 11, 1).unwrap();
        assert!(matches!(f.billing.finalize_period(november).await, Err(BillingError::Validation { .. })));
        assert_eq!(f.billing.close_previous_period().await.unwrap(), 1);
        assert_eq!(f.billing.close_previous_period().await.unwrap(), 0, "finalized once");
        let page = f.billing.invoices(&owner, org, Default::default()).await.unwrap();
        assert_eq!(page.data.len(), 1);
        let invoice = &page.data[0];
        assert_eq!(invoice.period_start, Utc.with_ymd_and_hms(2026, 10, 1, 0, 0, 0).unwrap());
        assert_eq!(invoice.total_cents, invoice.lines.iter().map(|l| l.amount_cents).sum::<i64>());
        let kinds: Vec<(&str, i64)> = invoice.lines.iter().map(|l| (l.kind.as_str(), l.amount_cents)).collect();
        // Fee $20; usage 0.012345678 + 0.01 = 2.2345678 cents → 2; credits: $5 plan + $1 grant.
        assert_eq!(kinds, vec![("plan_fee", 2000), ("usage", 2), ("credit", -500), ("credit", -100)]);
        assert_eq!(f.billing.invoice(&owner, org, invoice.id).await.unwrap(), *invoice);
        assert_eq!(f.billing.invoice(&owner, org, InvoiceId::new()).await, Err(BillingError::InvoiceNotFound));

        // Regenerating gives the same lines and total.
        let again = f.billing.build_invoice(org, october).await.unwrap();
        assert_eq!((&again.lines, again.total_cents), (&invoice.lines, invoice.total_cents));

        // November's invoice has the midnight event, and only it.
        f.clock.advance(ChronoDuration::days(30));
        assert_eq!(f.billing.close_previous_period().await.unwrap(), 1);
        let page = f.billing.invoices(&owner, org, Default::default()).await.unwrap();
        let nov = page.data.iter().find(|i| i.period_start == Utc.with_ymd_and_hms(2026, 11, 1, 0, 0, 0).unwrap()).unwrap();
        let usage_lines: Vec<i64> = nov.lines.iter().filter(|l| l.kind == "usage").map(|l| l.amount_cents).collect();
        assert_eq!(usage_lines, vec![50]);
        f.check(Money::ZERO).await;
    }

    async fn the_ledger_pages_newest_first(backend) {
        let f = fixture(&backend).await;
        let admin = f.platform_admin().await;
        let (owner, org) = f.owner("ledger@example.com").await;
        f.grant(&admin, org, Money::units(1)).await;
        let hold = f.billing.reserve(reserve_request(org, Money::cents(10), "h")).await.unwrap();
        f.billing.settle(SettleRequest { hold_id: hold.id, usage: usage("l", Money::cents(4)) }).await.unwrap();
        // grant: 1 org entry; reserve: 2; settle: 3.
        let first = f.billing.ledger(&owner, org, shared::PageRequest { limit: Some(4), after: None }).await.unwrap();
        assert_eq!(first.data.len(), 4);
        assert!(first.has_more);
        assert!(first.data.iter().take(3).all(|e| e.kind == "settle"));
        let rest = f.billing.ledger(&owner, org, shared::PageRequest { limit: Some(4), after: first.next_after.clone() }).await.unwrap();
        assert_eq!(rest.data.len(), 2);
        assert!(!rest.has_more);
        assert_eq!(rest.data.last().unwrap().kind, "grant");
        let bad = shared::PageRequest { limit: None, after: Some("nope".into()) };
        assert!(matches!(f.billing.ledger(&owner, org, bad).await, Err(BillingError::Validation { .. })));
        let total: i64 = first.data.iter().chain(rest.data.iter()).map(|e| e.amount.0).sum();
        assert_eq!(total, Money::units(1).0, "the organization's entries sum to what came in");
        f.check(Money::ZERO).await;
    }

    async fn bad_requests_are_refused_before_anything_moves(backend) {
        let f = fixture(&backend).await;
        let (_, org) = f.owner("bad@example.com").await;
        let zero = reserve_request(org, Money::ZERO, "z");
        assert!(matches!(f.billing.reserve(zero).await, Err(BillingError::Validation { .. })));
        let long = ReserveRequest { ttl: Duration::from_secs(3600), ..reserve_request(org, Money::cents(1), "t") };
        assert!(matches!(f.billing.reserve(long).await, Err(BillingError::Validation { .. })));
        let negative = RecordUsageRequest { organization_id: org, usage: usage("neg", Money::nanos(-1)) };
        assert!(matches!(f.billing.record_usage(negative).await, Err(BillingError::Validation { .. })));
        let hold = SettleRequest { hold_id: HoldId::new(), usage: usage("x", Money::ZERO) };
        assert_eq!(f.billing.settle(hold).await, Err(BillingError::HoldNotFound));
        f.check(Money::ZERO).await;
    }
}

impl Fixture {
    fn clock_now(&self) -> chrono::DateTime<Utc> {
        use shared::Clock;
        self.clock.now()
    }
}
