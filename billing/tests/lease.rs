#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The leased path (`LeasedBilling`) against real databases: its bounds, as docs/BILLING.md
//! states them. Each `LeasedBilling` stands for one process; several over one database are
//! several processes sharing the ledger.

use auth::config::Argon2Config;
use auth::{AuthApi, AuthConfig, AuthModule, AuthService, RequestContext, SignupRequest};
use billing::config::LeaseConfig;
use billing::*;
use chrono::{Duration as ChronoDuration, TimeZone, Utc};
use shared::ManualClock;
use shared::backend_tests;
use shared::module::Module;
use shared::testing::{TestBackend, TestDatabase};
use std::sync::Arc;
use std::time::Duration;

const FAST: Argon2Config = Argon2Config { memory_kib: 1024, iterations: 1, parallelism: 1 };

struct Fixture {
    _database: TestDatabase,
    auth: Arc<dyn AuthApi>,
    clock: ManualClock,
    billing: BillingService,
    /// The registry the service and the leases record into.
    metrics: shared::metrics::Metrics,
}

async fn fixture(backend: &TestBackend) -> Fixture {
    let auth_config = AuthConfig { argon2: FAST, ..AuthConfig::default() };
    let modules: Vec<Arc<dyn Module>> =
        vec![Arc::new(AuthModule::new(auth_config.clone())), Arc::new(BillingModule::new(BillingConfig::default()))];
    let database = TestDatabase::migrated(backend, &modules);
    let clock = ManualClock::new(Utc.with_ymd_and_hms(2026, 10, 15, 12, 0, 0).unwrap());
    let platform = shared::testing::platform_with(&modules, Arc::new(clock.clone()));
    let auth_db = database.open(auth::DOMAIN).await;
    let auth: Arc<dyn AuthApi> = Arc::new(AuthService::new(auth_db, auth_config, &platform).await.unwrap());
    let billing =
        BillingService::new(database.open(billing::DOMAIN).await, BillingConfig::default(), &platform, auth.clone());
    Fixture { _database: database, auth, clock, billing, metrics: platform.metrics.clone() }
}

impl Fixture {
    /// An organization with `credit` granted (through `record_usage`'s opposite: a platform
    /// grant by a flagged principal, built here directly since only billing is under test).
    async fn funded(&self, email: &str, credit: Money) -> OrganizationId {
        let signup = self
            .auth
            .signup(
                SignupRequest { email: email.into(), password: "correct horse battery".into(), name: None },
                RequestContext::default(),
            )
            .await
            .unwrap();
        let mut admin = self.auth.authenticate(&signup.token).await.unwrap();
        admin.platform_admin = true;
        let org = signup.organization.id;
        self.billing
            .grant_credit(&admin, org, "fund", GrantCreditRequest { amount: credit, reason: "test".into() })
            .await
            .unwrap();
        org
    }

    fn leased(&self, config: LeaseConfig) -> Arc<LeasedBilling> {
        Arc::new(LeasedBilling::new(Arc::new(self.billing.clone()), config, self.metrics.billing().clone()))
    }

    /// The value of one series of `/metrics` (Prometheus text), e.g.
    /// `keel_billing_decisions_total{op="reserve",path="leased",outcome="ok"}`.
    fn metric(&self, series: &str) -> f64 {
        let text = self.metrics.encode(shared::metrics::Format::Prometheus).unwrap();
        let line = text.lines().find(|l| l.strip_prefix(series).is_some_and(|rest| rest.starts_with(' ')));
        let line = line.unwrap_or_else(|| panic!("{series} missing from\n{text}"));
        line.rsplit(' ').next().unwrap().parse().unwrap()
    }

    fn decisions(&self, op: &str, path: &str, outcome: &str) -> f64 {
        self.metric(&format!(r#"keel_billing_decisions_total{{op="{op}",path="{path}",outcome="{outcome}"}}"#))
    }

    async fn check(&self) -> billing::service::LedgerReport {
        self.billing.check_invariants(Money::ZERO).await.unwrap_or_else(|e| panic!("ledger invariant broken: {e}"))
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
        input_tokens: 1,
        output_tokens: 1,
        cost,
    }
}

/// Fires 200 reservations of $0.01 split over `processes`, all at once; returns the admitted holds.
async fn race(processes: &[Arc<LeasedBilling>], org: OrganizationId, tag: &str) -> Vec<(usize, Hold)> {
    let n = processes.len();
    let tasks: Vec<_> = (0..200)
        .map(|i| {
            let api = processes[i % n].clone();
            let key = format!("{tag}-{i}");
            tokio::spawn(async move {
                // A pool timeout on a loaded machine is retried, as a client honouring 503 would
                // (the same reservation key).
                loop {
                    match api.reserve(reserve(org, Money::cents(1), &key)).await {
                        Err(BillingError::Unavailable(_)) => tokio::time::sleep(Duration::from_millis(20)).await,
                        other => return (i % n, other),
                    }
                }
            })
        })
        .collect();
    let mut admitted = Vec::new();
    for task in tasks {
        match task.await.unwrap() {
            (p, Ok(hold)) => admitted.push((p, hold)),
            (_, Err(BillingError::BudgetExceeded { .. })) => {}
            (_, Err(e)) => panic!("unexpected {e}"),
        }
    }
    admitted
}

backend_tests! {
    async fn leased_reservations_of_two_processes_never_exceed_the_credit(backend) {
        let f = fixture(&backend).await;
        for seed in 0..3 {
            let org = f.funded(&format!("two{seed}@example.com"), Money::units(1)).await;
            let processes = [f.leased(LeaseConfig::default()), f.leased(LeaseConfig::default())];
            let admitted = race(&processes, org, &format!("s{seed}")).await;
            assert!(admitted.len() <= 100, "seed {seed}: {} admitted", admitted.len());
            assert!(!admitted.is_empty());
            // Settle every admitted request at its full hold, from the process that took it.
            for (i, (p, hold)) in admitted.iter().enumerate() {
                let request = SettleRequest { hold_id: hold.id, usage: usage(&format!("s{seed}-{i}"), Money::cents(1)) };
                processes[*p].settle(request).await.unwrap();
            }
            for p in &processes {
                p.shutdown().await;
            }
            let report = f.check().await;
            let (available, held, spent) = report.balances[&org.to_string()];
            assert_eq!(held, 0, "every lease returned");
            assert_eq!(spent, admitted.len() as i64 * Money::cents(1).0, "every acknowledged settlement charged once");
            assert!(spent <= Money::units(1).0);
            assert_eq!(available + spent, Money::units(1).0);
        }
    }

    async fn settlements_are_group_committed(backend) {
        let f = fixture(&backend).await;
        let org = f.funded("group@example.com", Money::units(100)).await;
        let api = f.leased(LeaseConfig::default());
        let before = f.billing.db().query_count();
        let tasks: Vec<_> = (0..64)
            .map(|t| {
                let api = api.clone();
                tokio::spawn(async move {
                    for i in 0..20 {
                        let id = format!("g-{t}-{i}");
                        let hold = api.reserve(reserve(org, Money::cents(1), &id)).await.unwrap();
                        let settled = api.settle(SettleRequest { hold_id: hold.id, usage: usage(&id, Money::nanos(3_000_000)) }).await.unwrap();
                        assert_eq!(settled.charged, Money::nanos(3_000_000));
                        // A retried settle answers the same, and charges nothing more.
                        assert_eq!(api.settle(SettleRequest { hold_id: hold.id, usage: usage(&id, Money::nanos(3_000_000)) }).await.unwrap(), settled);
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
        api.flush().await;
        let stats = api.stats();
        assert_eq!(stats.leased + stats.direct, 1280);
        // The first reservations take the direct path while the first lease is being opened.
        assert!(stats.leased >= 1000, "{stats:?}");
        assert!(stats.commits * 10 < stats.leased, "many settlements per commit: {stats:?}");
        let queries = f.billing.db().query_count() - before;
        api.shutdown().await;
        let report = f.check().await;
        let (_, held, spent) = report.balances[&org.to_string()];
        assert_eq!((held, spent), (0, 1280 * 3_000_000));
        eprintln!("1,280 leased pairs: {stats:?}, {queries} queries");
    }

    async fn an_idle_flusher_sleeps_until_a_reservation_wakes_it(backend) {
        let f = fixture(&backend).await;
        let org = f.funded("idle@example.com", Money::units(10)).await;
        let config =
            LeaseConfig { flush_interval_ms: 5, idle_release_ms: 50, settle_replay_ms: 50, ..LeaseConfig::default() };
        let api = f.leased(config);
        let within = |secs| std::time::Instant::now() + Duration::from_secs(secs);
        // Nothing to look after from the start: one pass, then none (at 5 ms, 40 would be due).
        let deadline = within(10);
        while api.stats().passes == 0 {
            assert!(std::time::Instant::now() < deadline, "the flusher never ran");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let asleep = api.stats().passes;
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(api.stats().passes, asleep, "passes while idle");
        // A reservation wakes it: the settlement is committed and, once the lease is idle (50
        // ms), the lease returned, without an explicit flush.
        let hold = api.reserve(reserve(org, Money::cents(1), "idle-1")).await.unwrap();
        api.settle(SettleRequest { hold_id: hold.id, usage: usage("idle-1", Money::cents(1)) }).await.unwrap();
        let deadline = within(10);
        loop {
            let (available, held, spent) = f.check().await.balances[&org.to_string()];
            if held == 0 && spent > 0 {
                assert_eq!((available, spent), (Money::units(10).0 - Money::cents(1).0, Money::cents(1).0));
                break;
            }
            assert!(std::time::Instant::now() < deadline, "not committed and returned: {:?}", api.stats());
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // Once the settle answer is forgotten too (after 50 to 100 ms), it sleeps again.
        let deadline = within(10);
        let mut last = api.stats().passes;
        loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let now = api.stats().passes;
            if now == last {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "the flusher never went back to sleep: {:?}", api.stats());
            last = now;
        }
        api.shutdown().await;
    }

    async fn a_settle_retried_after_its_replay_window_is_refused_and_charges_nothing_more(backend) {
        let f = fixture(&backend).await;
        let org = f.funded("replay@example.com", Money::units(10)).await;
        let api = f.leased(LeaseConfig { settle_replay_ms: 50, ..LeaseConfig::default() });
        let hold = api.reserve(reserve(org, Money::cents(1), "r")).await.unwrap();
        let settle = || SettleRequest { hold_id: hold.id, usage: usage("r", Money::nanos(4_000_000)) };
        let settled = api.settle(settle()).await.unwrap();
        assert_eq!(api.settle(settle()).await.unwrap(), settled, "within the window the answer is replayed");
        // Past the window (the flusher forgets answers on its ticks), the retry reaches the
        // service, which never saw this local hold.
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let refused = loop {
            match api.settle(settle()).await {
                Ok(replayed) => assert_eq!(replayed, settled),
                Err(error) => break error,
            }
            assert!(std::time::Instant::now() < deadline, "the answer is never forgotten");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert_eq!(refused, BillingError::HoldNotFound);
        api.shutdown().await;
        let report = f.check().await;
        let (_, held, spent) = report.balances[&org.to_string()];
        assert_eq!((held, spent), (0, 4_000_000), "charged once");
    }

    async fn a_settle_whose_lease_went_back_is_remembered_only_once_recorded(backend) {
        let f = fixture(&backend).await;
        let org = f.funded("orphan@example.com", Money::units(10)).await;
        let api = f.leased(LeaseConfig::default());
        let hold = api.reserve(reserve(org, Money::cents(1), "o")).await.unwrap();
        // The lease goes back while the request runs: its settlement is charged on its own.
        api.shutdown().await;
        let cost = Money::nanos(4_000_000);
        // The service refuses this usage (a request id over 255 characters): the settle fails,
        // and a retry is not told that it was settled.
        let refused = SettleRequest { hold_id: hold.id, usage: usage(&"x".repeat(300), cost) };
        assert!(api.settle(refused.clone()).await.is_err());
        assert!(api.settle(refused).await.is_err(), "a failed charge is not remembered as settled");
        let settled = api.settle(SettleRequest { hold_id: hold.id, usage: usage("o", cost) }).await.unwrap();
        assert_eq!(settled.charged, cost);
        let report = f.check().await;
        let (_, held, spent) = report.balances[&org.to_string()];
        assert_eq!((held, spent), (0, cost.0));
    }

    async fn a_backlog_of_unflushed_settlements_sends_new_reservations_to_the_direct_path(backend) {
        let f = fixture(&backend).await;
        let org = f.funded("backlog@example.com", Money::units(10)).await;
        // No flush on a timer: the backlog only grows, as when the database falls behind.
        let api = f.leased(LeaseConfig { flush_interval_ms: 3_600_000, max_unflushed: 5, ..LeaseConfig::default() });
        for i in 0..20 {
            let id = format!("backlog-{i}");
            let hold = api.reserve(reserve(org, Money::cents(1), &id)).await.unwrap();
            api.settle(SettleRequest { hold_id: hold.id, usage: usage(&id, Money::nanos(2_000_000)) }).await.unwrap();
        }
        let stats = api.stats();
        // Only the flusher's first pass, at start, may have committed some: past 5 waiting,
        // every reservation went direct.
        assert_eq!(stats.leased + stats.direct, 20);
        assert!(stats.leased as usize <= 5 + stats.committed_records as usize, "{stats:?}");
        assert!(stats.direct >= 5, "{stats:?}");
        api.shutdown().await;
        let report = f.check().await;
        let (_, held, spent) = report.balances[&org.to_string()];
        assert_eq!((held, spent), (0, 20 * 2_000_000), "every settlement charged once, leased or direct");
    }

    async fn a_graceful_stop_writes_the_buffered_settlements_and_returns_the_lease(backend) {
        let f = fixture(&backend).await;
        let org = f.funded("stop@example.com", Money::units(10)).await;
        // Nothing is flushed on a timer during the test: only the gateway's shutdown hook writes.
        let lease = LeaseConfig { flush_interval_ms: 3_600_000, idle_release_ms: 3_600_000, ..LeaseConfig::default() };
        let config = BillingConfig { lease, ..BillingConfig::default() };
        let mut contracts = shared::module::Contracts::default();
        contracts.provide(f.auth.clone());
        let platform = shared::testing::platform(&[]);
        let component = BillingModule::new(config)
            .build_local(f.billing.db().clone(), &platform, &contracts)
            .await
            .unwrap();
        component.provide(&mut contracts);
        let api = contracts.get::<dyn BillingApi>().expect("billing provides its contract");
        for i in 0..50 {
            let id = format!("stop-{i}");
            let hold = api.reserve(reserve(org, Money::cents(1), &id)).await.unwrap();
            api.settle(SettleRequest { hold_id: hold.id, usage: usage(&id, Money::nanos(2_000_000)) }).await.unwrap();
        }
        component.shutdown().await;
        let report = f.check().await;
        let (available, held, spent) = report.balances[&org.to_string()];
        assert_eq!((held, spent), (0, 50 * 2_000_000), "every acknowledged settlement is written");
        assert_eq!(available, 10_000_000_000 - 50 * 2_000_000, "the unused lease is back");
    }

    async fn a_killed_process_loses_only_unflushed_settlements_and_its_lease_returns_by_expiry(backend) {
        let f = fixture(&backend).await;
        let org = f.funded("crash@example.com", Money::units(1)).await;
        // A flush interval long enough that nothing is written before the "kill".
        let config = LeaseConfig { flush_interval_ms: 60_000, ..LeaseConfig::default() };
        let api = LeasedBilling::new(Arc::new(f.billing.clone()), config, f.metrics.billing().clone());
        let hold = api.reserve(reserve(org, Money::cents(5), "a")).await.unwrap();
        api.settle(SettleRequest { hold_id: hold.id, usage: usage("a", Money::cents(5)) }).await.unwrap();
        let open = api.reserve(reserve(org, Money::cents(5), "b")).await.unwrap();
        assert_eq!(api.stats().leased, 2);
        assert_eq!(f.metric("keel_billing_settlements_unflushed"), 1.0, "the exposure of a kill -9");
        // kill -9: the process and its memory are gone.
        drop(api);
        let _ = open;
        let report = f.check().await;
        let (available, held, spent) = report.balances[&org.to_string()];
        assert!(held > 0, "the lease is still held");
        assert_eq!(spent, 0, "the unflushed settlement was lost: not charged");
        assert_eq!(available + held, Money::units(1).0);
        // Past the lease's TTL the sweeper gives everything back.
        f.clock.advance(ChronoDuration::milliseconds(LeaseConfig::default().lease_ttl_ms as i64 + 1));
        assert_eq!(f.billing.sweep_expired().await.unwrap(), 1);
        assert_eq!(f.metric(r#"keel_billing_holds_expired_total{kind="lease"}"#), 1.0);
        assert_eq!(f.metric(r#"keel_billing_holds_expired_total{kind="hold"}"#), 0.0);
        let report = f.check().await;
        assert_eq!(report.balances[&org.to_string()], (Money::units(1).0, 0, 0));
    }

    async fn the_billing_metrics_start_at_zero_and_follow_reservations_settlements_and_commits(backend) {
        let f = fixture(&backend).await;
        // Twice the first lease (`min_slice`), so that the direct path has credit too.
        let org = f.funded("metrics@example.com", Money::units(2)).await;
        for op in ["reserve", "settle", "release"] {
            for path in ["leased", "direct"] {
                for outcome in ["ok", "budget_exceeded", "error"] {
                    assert_eq!(f.decisions(op, path, outcome), 0.0, "{op} {path} {outcome}");
                }
            }
        }
        for series in [
            r#"keel_billing_lease_slices_total{kind="open",outcome="granted"}"#,
            r#"keel_billing_lease_commits_total{outcome="ok"}"#,
            "keel_billing_lease_commit_batch_size_count",
            "keel_billing_settlements_unflushed",
            "keel_billing_leases",
            "keel_billing_leased_credit_nanos",
            r#"keel_billing_budget_exceeded_total{limit="credit"}"#,
        ] {
            assert_eq!(f.metric(series), 0.0, "{series}");
        }

        // Commits only when asked (flush), so every step can be observed.
        let api = f.leased(LeaseConfig { flush_interval_ms: 60_000, ..LeaseConfig::default() });
        let hold = api.reserve(reserve(org, Money::cents(2), "m-1")).await.unwrap();
        assert_eq!(f.decisions("reserve", "leased", "ok"), 1.0);
        assert_eq!(f.decisions("reserve", "direct", "ok"), 0.0, "the lease's own hold is not a decision");
        assert_eq!(f.metric(r#"keel_billing_lease_slices_total{kind="open",outcome="granted"}"#), 1.0);
        api.settle(SettleRequest { hold_id: hold.id, usage: usage("m-1", Money::cents(1)) }).await.unwrap();
        assert_eq!(f.decisions("settle", "leased", "ok"), 1.0);
        assert_eq!(f.metric("keel_billing_settlements_unflushed"), 1.0, "acknowledged, not committed");
        let other = api.reserve(reserve(org, Money::cents(2), "m-2")).await.unwrap();
        api.release(other.id).await.unwrap();
        assert_eq!(f.decisions("release", "leased", "ok"), 1.0);

        api.flush().await;
        assert_eq!(f.metric("keel_billing_settlements_unflushed"), 0.0);
        assert_eq!(f.metric(r#"keel_billing_lease_commits_total{outcome="ok"}"#), 1.0);
        assert_eq!(f.metric(r#"keel_billing_lease_commits_total{outcome="error"}"#), 0.0);
        assert_eq!(f.metric("keel_billing_lease_commit_batch_size_count"), 1.0);
        assert_eq!(f.metric("keel_billing_lease_commit_batch_size_sum"), 1.0);
        assert_eq!(f.metric("keel_billing_lease_commit_duration_seconds_count"), 1.0);
        assert_eq!(f.metric("keel_billing_leases"), 1.0);
        // The gauges are sampled by each flush pass: the next one sees the commit landed.
        api.flush().await;
        let (_, held, _) = f.check().await.balances[&org.to_string()];
        assert_eq!(f.metric("keel_billing_leased_credit_nanos"), held as f64, "what the lease still holds");

        // The direct path, refused: more than the organization has.
        let refused = f.billing.reserve(reserve(org, Money::units(5), "m-3")).await;
        assert!(matches!(refused, Err(BillingError::BudgetExceeded { .. })), "{refused:?}");
        assert_eq!(f.decisions("reserve", "direct", "budget_exceeded"), 1.0);
        assert_eq!(f.metric(r#"keel_billing_budget_exceeded_total{limit="credit"}"#), 1.0);
        let direct = f.billing.reserve(reserve(org, Money::cents(1), "m-4")).await.unwrap();
        f.billing.release(direct.id).await.unwrap();
        assert_eq!(f.decisions("reserve", "direct", "ok"), 1.0);
        assert_eq!(f.decisions("release", "direct", "ok"), 1.0);

        let commits = f.metric(r#"keel_billing_lease_commits_total{outcome="ok"}"#);
        api.shutdown().await;
        assert_eq!(f.metric("keel_billing_leases"), 0.0);
        assert_eq!(f.metric("keel_billing_leased_credit_nanos"), 0.0);
        assert_eq!(f.metric(r#"keel_billing_lease_commits_total{outcome="ok"}"#), commits + 1.0, "the closing commit");
        f.check().await;
    }

    async fn small_balances_get_small_slices_or_the_direct_path(backend) {
        let f = fixture(&backend).await;
        // $0.03: the default minimum slice ($0.10) does not fit; half of what is spendable is
        // below four requests' worth, so every request takes the direct path, exactly.
        let org = f.funded("small@example.com", Money::cents(3)).await;
        let api = f.leased(LeaseConfig::default());
        let mut admitted = 0;
        for i in 0..5 {
            if api.reserve(reserve(org, Money::cents(1), &format!("d{i}"))).await.is_ok() {
                admitted += 1;
            }
        }
        assert_eq!(admitted, 3);
        assert_eq!(api.stats().leased, 0);
        api.shutdown().await;
        let report = f.check().await;
        assert_eq!(report.balances[&org.to_string()], (0, Money::cents(3).0, 0));
    }

    async fn an_organization_budget_holds_on_the_leased_path(backend) {
        let f = fixture(&backend).await;
        let org = f.funded("capped@example.com", Money::units(10)).await;
        let signup = f.auth.login(auth::LoginRequest { email: "capped@example.com".into(), password: "correct horse battery".into() }, RequestContext::default()).await.unwrap();
        let owner = f.auth.authenticate(&signup.token).await.unwrap();
        f.billing.put_budget(&owner, org, None, PutBudgetRequest { limit: Some(Money::units(1)) }).await.unwrap();
        let processes = [f.leased(LeaseConfig::default()), f.leased(LeaseConfig::default())];
        let admitted = race(&processes, org, "cap").await;
        assert!(admitted.len() <= 100, "{} admitted", admitted.len());
        for p in &processes {
            p.shutdown().await;
        }
        f.check().await;
    }
}

/// The billing service behind a gate on `commit_lease`, like a remote billing service that is
/// slow to answer: a commit in flight can be held there.
struct Gated {
    inner: BillingService,
    gate: tokio::sync::Semaphore,
    commits_entered: std::sync::atomic::AtomicUsize,
}

impl Gated {
    fn new(inner: BillingService) -> Self {
        Self { inner, gate: tokio::sync::Semaphore::new(0), commits_entered: Default::default() }
    }

    fn open(&self) {
        self.gate.add_permits(tokio::sync::Semaphore::MAX_PERMITS / 2);
    }
}

#[async_trait::async_trait]
impl BillingApi for Gated {
    async fn reserve(&self, request: ReserveRequest) -> Result<Hold, BillingError> {
        self.inner.reserve(request).await
    }
    async fn settle(&self, request: SettleRequest) -> Result<Settlement, BillingError> {
        self.inner.settle(request).await
    }
    async fn release(&self, hold_id: HoldId) -> Result<(), BillingError> {
        self.inner.release(hold_id).await
    }
    async fn record_usage(&self, request: RecordUsageRequest) -> Result<Recorded, BillingError> {
        self.inner.record_usage(request).await
    }
    async fn extend_lease(&self, request: ExtendLeaseRequest) -> Result<Hold, BillingError> {
        self.inner.extend_lease(request).await
    }
    async fn commit_lease(&self, request: CommitLeaseRequest) -> Result<LeaseCommitted, BillingError> {
        self.commits_entered.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let _pass = self.gate.acquire().await.unwrap();
        self.inner.commit_lease(request).await
    }
    async fn limits(&self, organization_id: OrganizationId) -> Result<PlanLimits, BillingError> {
        self.inner.limits(organization_id).await
    }
    async fn plans(&self) -> Result<Vec<Plan>, BillingError> {
        self.inner.plans().await
    }
    async fn subscription(&self, p: &Principal, org: OrganizationId) -> Result<Subscription, BillingError> {
        self.inner.subscription(p, org).await
    }
    async fn put_subscription(
        &self,
        p: &Principal,
        org: OrganizationId,
        request: PutSubscriptionRequest,
    ) -> Result<Subscription, BillingError> {
        self.inner.put_subscription(p, org, request).await
    }
    async fn grant_credit(
        &self,
        p: &Principal,
        org: OrganizationId,
        key: &str,
        request: GrantCreditRequest,
    ) -> Result<CreditGrant, BillingError> {
        self.inner.grant_credit(p, org, key, request).await
    }
    async fn budgets(&self, p: &Principal, org: OrganizationId) -> Result<Budgets, BillingError> {
        self.inner.budgets(p, org).await
    }
    async fn put_budget(
        &self,
        p: &Principal,
        org: OrganizationId,
        key: Option<ApiKeyId>,
        request: PutBudgetRequest,
    ) -> Result<Budget, BillingError> {
        self.inner.put_budget(p, org, key, request).await
    }
    async fn balance(&self, p: &Principal, org: OrganizationId) -> Result<Balance, BillingError> {
        self.inner.balance(p, org).await
    }
    async fn usage(&self, p: &Principal, org: OrganizationId, query: UsageQuery) -> Result<UsageReport, BillingError> {
        self.inner.usage(p, org, query).await
    }
    async fn ledger(
        &self,
        p: &Principal,
        org: OrganizationId,
        page: shared::PageRequest,
    ) -> Result<shared::Page<LedgerEntry>, BillingError> {
        self.inner.ledger(p, org, page).await
    }
    async fn invoices(
        &self,
        p: &Principal,
        org: OrganizationId,
        page: shared::PageRequest,
    ) -> Result<shared::Page<Invoice>, BillingError> {
        self.inner.invoices(p, org, page).await
    }
    async fn invoice(&self, p: &Principal, org: OrganizationId, id: InvoiceId) -> Result<Invoice, BillingError> {
        self.inner.invoice(p, org, id).await
    }
    async fn ready(&self) -> Result<(), BillingError> {
        self.inner.ready().await
    }
}

backend_tests! {
    async fn a_graceful_stop_waits_for_the_commit_in_flight(backend) {
        let f = fixture(&backend).await;
        let org = f.funded("inflight@example.com", Money::units(10)).await;
        let gated = Arc::new(Gated::new(f.billing.clone()));
        let api = LeasedBilling::new(gated.clone(), LeaseConfig::default(), f.metrics.billing().clone());
        for i in 0..10 {
            let id = format!("inflight-{i}");
            let hold = api.reserve(reserve(org, Money::cents(1), &id)).await.unwrap();
            api.settle(SettleRequest { hold_id: hold.id, usage: usage(&id, Money::nanos(2_000_000)) }).await.unwrap();
        }
        // The flusher has taken settlements off the queue and its commit is held in flight.
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while gated.commits_entered.load(std::sync::atomic::Ordering::SeqCst) == 0 {
            assert!(std::time::Instant::now() < deadline, "the flusher never committed");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // The stop begins while that commit is in flight; then billing answers.
        tokio::join!(api.shutdown(), async { gated.open() });
        let stats = api.stats();
        assert_eq!(stats.committed_records, 10, "every acknowledged record counted as committed: {stats:?}");
        let report = f.check().await;
        let (available, held, spent) = report.balances[&org.to_string()];
        assert_eq!((held, spent), (0, 10 * 2_000_000), "the commit in flight was not dropped");
        assert_eq!(available + spent, Money::units(10).0);
    }
}

backend_tests! {
    async fn the_ledger_check_reads_one_snapshot_while_money_moves(backend) {
        let f = fixture(&backend).await;
        let org = f.funded("live@example.com", Money::units(100)).await;
        // Writers on the direct path: every pair is two transfers.
        let writers: Vec<_> = (0..4)
            .map(|t| {
                let billing = f.billing.clone();
                tokio::spawn(async move {
                    for i in 0..40 {
                        let id = format!("live-{t}-{i}");
                        let Ok(hold) = billing.reserve(reserve(org, Money::cents(1), &id)).await else { continue };
                        let _ = billing.settle(SettleRequest { hold_id: hold.id, usage: usage(&id, Money::cents(1)) }).await;
                    }
                })
            })
            .collect();
        // The check, run again and again while they write, never sees half a transfer.
        let mut checks = 0;
        loop {
            let done = writers.iter().all(|w| w.is_finished());
            if let Err(e) = f.billing.check_invariants(Money::ZERO).await {
                panic!("check {checks} saw a ledger being written as broken: {e}");
            }
            checks += 1;
            if done {
                break;
            }
        }
        for w in writers {
            w.await.unwrap();
        }
        eprintln!("{checks} checks while 4 writers moved money");
        let report = f.check().await;
        let (available, held, spent) = report.balances[&org.to_string()];
        assert_eq!((held, available + spent), (0, Money::units(100).0));
    }
}

backend_tests! {
    async fn the_watch_catches_up_when_the_background_flusher_falls_behind(backend) {
        let f = fixture(&backend).await;
        let org = f.funded("behind@example.com", Money::units(10)).await;
        let gated = Arc::new(Gated::new(f.billing.clone()));
        let config = LeaseConfig { flush_interval_ms: 20, ..LeaseConfig::default() };
        assert!(config.background_commits);
        let api = LeasedBilling::new(gated.clone(), config, f.metrics.billing().clone());
        let settle = |i: usize| {
            let api = &api;
            async move {
                let id = format!("behind-{i}");
                let hold = api.reserve(reserve(org, Money::cents(1), &id)).await.unwrap();
                api.settle(SettleRequest { hold_id: hold.id, usage: usage(&id, Money::nanos(2_000_000)) }).await.unwrap();
            }
        };
        let entered = |n: usize| {
            let gated = gated.clone();
            async move {
                let deadline = std::time::Instant::now() + Duration::from_secs(30);
                while gated.commits_entered.load(std::sync::atomic::Ordering::SeqCst) < n {
                    assert!(std::time::Instant::now() < deadline, "{n} commits never began");
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        };
        // The flusher's first commit is held at the gate: it has fallen behind, as a background
        // flusher does on a core that ordinary threads keep busy.
        settle(0).await;
        entered(1).await;
        // What is settled meanwhile is committed by the watch's own pass, with no further call,
        // while the flusher's commit is still held.
        settle(1).await;
        entered(2).await;
        assert_eq!(api.stats().catch_ups, 1, "one catch-up pass at a time");
        settle(2).await;
        gated.open();
        api.shutdown().await;
        let stats = api.stats();
        assert_eq!(stats.committed_records, 3, "{stats:?}");
        let (_, held, spent) = f.check().await.balances[&org.to_string()];
        assert_eq!((held, spent), (0, 3 * 2_000_000));
    }
}
