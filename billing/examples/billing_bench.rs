//! Reserve+settle pairs through `BillingApi`, in-process, at a given concurrency: the direct
//! path (`BillingService`, a transaction per call) and the leased path (`LeasedBilling` over
//! it). Prints pairs/s, p50/p99 of one `reserve`, and database work per 1,000 pairs: the
//! domain pool's statements (`Db::query_count`) and, on PostgreSQL, committed transactions
//! (`pg_stat_database.xact_commit` of the scratch database, which only this run uses).
//!
//! `KEEL_TEST_DATABASE_URL` set: PostgreSQL (a scratch database, dropped at the end); unset:
//! SQLite. Run through `bench/billing.sh`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use auth::{AuthApi, AuthConfig, AuthModule, AuthService, RequestContext, SignupRequest};
use billing::*;
use diesel::prelude::*;
use shared::module::Module;
use shared::testing::{TestBackend, TestDatabase};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(QueryableByName)]
struct Commits {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    n: i64,
}

fn commits(database: &TestDatabase) -> Option<i64> {
    let name = database.postgres_name()?;
    let url = database.domain(billing::DOMAIN).url.expose().to_owned();
    let mut conn = PgConnection::establish(&url).ok()?;
    let row: Commits = diesel::sql_query("SELECT xact_commit AS n FROM pg_stat_database WHERE datname = $1")
        .bind::<diesel::sql_types::Text, _>(name)
        .get_result(&mut conn)
        .ok()?;
    Some(row.n)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

async fn run(
    label: &str,
    api: Arc<dyn BillingApi>,
    org: OrganizationId,
    concurrency: usize,
    seconds: u64,
) -> (u64, Vec<Duration>, Duration) {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let tasks: Vec<_> = (0..concurrency)
        .map(|t| {
            let api = api.clone();
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut pairs = 0u64;
                let mut i = 0u64;
                let mut errors = 0u64;
                while Instant::now() < deadline {
                    i += 1;
                    let id = format!("{t}-{i}-{}", HoldId::new());
                    let request = ReserveRequest {
                        organization_id: org,
                        api_key_id: None,
                        amount: Money::cents(1),
                        idempotency_key: id.clone(),
                        ttl: Duration::from_secs(60),
                    };
                    let t0 = Instant::now();
                    let hold = match api.reserve(request).await {
                        Ok(hold) => hold,
                        Err(e) => {
                            errors += 1;
                            if errors == 1 {
                                eprintln!("reserve failed: {e}");
                            }
                            continue;
                        }
                    };
                    latencies.push(t0.elapsed());
                    let usage = UsageRecord {
                        request_id: id,
                        model: "bench".into(),
                        api_key_id: None,
                        input_tokens: 100,
                        output_tokens: 50,
                        cost: Money::nanos(3_000_000),
                    };
                    api.settle(SettleRequest { hold_id: hold.id, usage }).await.expect("settle");
                    pairs += 1;
                    // A real request does I/O between the two calls; without an await point
                    // that yields, 64 tasks would starve the runtime's other tasks (the
                    // flusher, lease top-ups, database completions).
                    tokio::task::yield_now().await;
                }
                (pairs, latencies, errors)
            })
        })
        .collect();
    let mut total = 0;
    let mut errors = 0;
    let mut latencies = Vec::new();
    for task in tasks {
        let (pairs, mut l, e) = task.await.unwrap();
        total += pairs;
        errors += e;
        latencies.append(&mut l);
    }
    if errors > 0 {
        println!("{label}: {errors} reservations failed (see stderr)");
    }
    let elapsed = started.elapsed();
    latencies.sort();
    (total, latencies, elapsed)
}

#[tokio::main]
async fn main() {
    let concurrency: usize = std::env::var("KEEL_BENCH_CONCURRENCY").ok().and_then(|v| v.parse().ok()).unwrap_or(64);
    let seconds: u64 = std::env::var("KEEL_BENCH_SECONDS").ok().and_then(|v| v.parse().ok()).unwrap_or(10);
    let backend = shared::testing::postgres().unwrap_or(TestBackend::Sqlite);
    let auth_config = AuthConfig {
        argon2: auth::config::Argon2Config { memory_kib: 1024, iterations: 1, parallelism: 1 },
        ..AuthConfig::default()
    };
    let modules: Vec<Arc<dyn Module>> =
        vec![Arc::new(AuthModule::new(auth_config.clone())), Arc::new(BillingModule::new(BillingConfig::default()))];
    let database = TestDatabase::migrated(&backend, &modules);
    let platform = shared::testing::platform(&modules);
    let auth: Arc<dyn AuthApi> =
        Arc::new(AuthService::new(database.open(auth::DOMAIN).await, auth_config, &platform).await.unwrap());
    let db = database.open(billing::DOMAIN).await;
    let service = BillingService::new(db.clone(), BillingConfig::default(), &platform, auth.clone());

    println!(
        "# billing: reserve+settle pairs, concurrency {concurrency}, {seconds} s per run, {}",
        if database.is_postgres() { "PostgreSQL" } else { "SQLite" }
    );
    let modes: Vec<bool> = match std::env::var("KEEL_BENCH_MODES").as_deref() {
        Ok("leased") => vec![true],
        Ok("direct") => vec![false],
        _ => vec![false, true],
    };
    for (i, leased) in modes.into_iter().enumerate() {
        let signup = auth
            .signup(
                SignupRequest {
                    email: format!("bench{i}@example.com"),
                    password: "correct horse battery".into(),
                    name: None,
                },
                RequestContext::default(),
            )
            .await
            .unwrap();
        let mut admin = auth.authenticate(&signup.token).await.unwrap();
        admin.platform_admin = true;
        let org = signup.organization.id;
        service
            .grant_credit(
                &admin,
                org,
                "bench",
                GrantCreditRequest { amount: Money::units(1_000_000), reason: "bench".into() },
            )
            .await
            .unwrap();
        let lease = leased.then(|| {
            Arc::new(LeasedBilling::new(
                Arc::new(service.clone()),
                Default::default(),
                platform.metrics.billing().clone(),
            ))
        });
        let api: Arc<dyn BillingApi> = match &lease {
            Some(l) => l.clone(),
            None => Arc::new(service.clone()),
        };
        let (q0, c0) = (db.query_count(), commits(&database));
        let (pairs, latencies, elapsed) =
            run(if leased { "leased" } else { "direct" }, api, org, concurrency, seconds).await;
        if let Some(l) = &lease {
            l.shutdown().await;
        }
        let (q1, c1) = (db.query_count(), commits(&database));
        let per_k = |n: u64| n as f64 * 1000.0 / pairs.max(1) as f64;
        let xacts = match (c0, c1) {
            (Some(a), Some(b)) => format!("{:.1}", per_k((b - a).max(0) as u64)),
            _ => "n/a (SQLite)".into(),
        };
        println!(
            "{:<7} pairs {:>8}  pairs/s {:>9.0}  reserve p50 {:>8.3} ms  p99 {:>8.3} ms  statements/1k pairs {:>8.1}  transactions/1k pairs {}",
            if leased { "leased" } else { "direct" },
            pairs,
            pairs as f64 / elapsed.as_secs_f64(),
            percentile(&latencies, 0.5).as_secs_f64() * 1000.0,
            percentile(&latencies, 0.99).as_secs_f64() * 1000.0,
            per_k(q1 - q0),
            xacts,
        );
        if let Some(l) = &lease {
            println!("        {:?}", l.stats());
        }
        let report = service.check_invariants(Money::ZERO).await.expect("ledger invariants");
        let (_, held, spent) = report.balances[&org.to_string()];
        assert_eq!((held, spent), (0, pairs as i64 * 3_000_000), "every acknowledged settlement charged once");
    }
    let report = service.check_invariants(Money::ZERO).await.expect("ledger invariants");
    println!("ledger check: ok ({} transfers, {} entries)", report.transfers, report.entries);
}
