#![allow(clippy::unwrap_used, clippy::expect_used)]
//! 1,000 jobs through worker processes killed with SIGKILL several times: every job completes,
//! none is lost, and a handler that is idempotent by key applies no effect twice.
//!
//! The worker processes are this test binary run again with `KEEL_TEST_JOBS_CHILD_URL` set: the
//! test function then runs a worker (with its own pool) until it is killed. SQLite runs one
//! worker process at a time; PostgreSQL two at once, so claims also race across processes.

use async_trait::async_trait;
use diesel::prelude::*;
use diesel::sql_types::BigInt;
use serde::{Deserialize, Serialize};
use shared::config::{DatabaseConfig, DatabaseOverride, PoolConfig};
use shared::db::{Conn, Db, DbError};
use shared::jobs::{
    EnqueueOptions, Handler, Job, JobContext, JobError, Jobs, JobsConfig, NoObserver, Registry, Worker,
};
use shared::testing::{TestBackend, TestDatabase, backends};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

const TEST_NAME: &str = "a_thousand_jobs_survive_worker_processes_killed_with_sigkill";
const CHILD_URL: &str = "KEEL_TEST_JOBS_CHILD_URL";
const JOBS: i64 = 1_000;
/// Kill a worker each time this many effects have been applied.
const KILL_AT: [i64; 4] = [150, 350, 550, 750];
const WAIT: Duration = Duration::from_secs(180);

#[derive(Debug, Serialize, Deserialize)]
struct Effect {
    key: i64,
}

impl Job for Effect {
    const KIND: &'static str = "test.effect";
    // Kills cost attempts (each expired lease counts one); none of these jobs may run out.
    const MAX_ATTEMPTS: u32 = 100;
}

/// Applies the effect of key `key` at most once (a unique key guards the counter), logs every
/// execution, and lingers after committing, so that kills often land between the effect and the
/// job's completion: exactly the window in which the job runs twice.
#[derive(Debug)]
struct EffectHandler {
    db: Db,
}

#[async_trait]
impl Handler<Effect> for EffectHandler {
    async fn handle(&self, job: Effect, _ctx: &JobContext) -> Result<(), JobError> {
        let key = job.key;
        let pid = std::process::id();
        self.db
            .transaction(move |conn| {
                diesel::sql_query(format!("INSERT INTO runs (key, pid) VALUES ({key}, {pid})")).execute(conn)?;
                let applied = diesel::sql_query(format!(
                    "INSERT INTO effects (key, pid) VALUES ({key}, {pid}) ON CONFLICT DO NOTHING"
                ))
                .execute(conn)?;
                if applied == 1 {
                    diesel::sql_query("UPDATE totals SET total = total + 1 WHERE id = 1").execute(conn)?;
                }
                Ok::<_, DbError>(())
            })
            .await?;
        tokio::time::sleep(Duration::from_millis(20)).await;
        Ok(())
    }
}

fn settings(url: &str) -> shared::config::DomainDatabase {
    let config = DatabaseConfig {
        url: url.into(),
        pool: PoolConfig { max_size: 10, min_idle: Some(0), ..PoolConfig::default() },
        ..DatabaseConfig::default()
    };
    config.for_domain("work", &DatabaseOverride::default()).unwrap()
}

/// The worker process: runs until killed.
fn run_worker(url: &str) {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(async {
        let settings = settings(url);
        let db = Db::connect(&settings).unwrap();
        let jobs = Jobs::new(db.clone(), &settings);
        let mut registry = Registry::new();
        registry.register::<Effect>(EffectHandler { db }).unwrap();
        let config = JobsConfig {
            poll_interval_ms: 100,
            lease_ms: 1_500,
            heartbeat_ms: 300,
            concurrency: 8,
            batch_size: 16,
            backoff_base_ms: 50,
            backoff_max_ms: 500,
            ..JobsConfig::default()
        };
        let _worker = Worker::start(&jobs, registry, &config, Arc::new(NoObserver)).unwrap();
        std::future::pending::<()>().await;
    });
}

/// Worker processes, killed when dropped (so that a failing test leaves none behind).
struct Workers {
    url: String,
    children: Vec<Child>,
    killed: usize,
}

impl Workers {
    fn spawn(&mut self) {
        let child = Command::new(std::env::current_exe().unwrap())
            .args([TEST_NAME, "--exact", "--nocapture", "--test-threads=1"])
            .env(CHILD_URL, &self.url)
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        self.children.push(child);
    }

    fn kill_oldest(&mut self) {
        let mut child = self.children.remove(0);
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        self.killed += 1;
    }

    fn check_alive(&mut self) {
        for child in &mut self.children {
            if let Some(status) = child.try_wait().unwrap() {
                panic!("a worker process exited by itself: {status}");
            }
        }
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

fn count(runtime: &tokio::runtime::Runtime, db: &Db, sql: &'static str) -> i64 {
    runtime
        .block_on(db.run(move |conn: &mut Conn| Ok::<_, DbError>(diesel::sql_query(sql).get_result::<Count>(conn)?.n)))
        .unwrap()
}

/// Polls the database until `done` (a wait for an event in another process, bounded by `WAIT`).
fn wait_for(workers: &mut Workers, what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !done() {
        workers.check_alive();
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_thousand_jobs_survive_worker_processes_killed_with_sigkill() {
    if let Ok(url) = std::env::var(CHILD_URL) {
        run_worker(&url);
        return;
    }
    for backend in backends() {
        let database = TestDatabase::new(&backend);
        let (url, processes) = match &backend {
            TestBackend::Postgres(_) => (database.domain("work").url.expose().to_owned(), 2),
            TestBackend::Sqlite => (format!("sqlite://{}", database.domain("work").url.expose()), 1),
        };
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let settings = settings(&url);
        let db = Db::connect(&settings).unwrap();
        shared::jobs::migrate(&db).unwrap();
        let jobs = Jobs::new(db.clone(), &settings);
        runtime
            .block_on(db.transaction(move |conn| {
                diesel::sql_query("CREATE TABLE effects (key BIGINT PRIMARY KEY, pid BIGINT NOT NULL)")
                    .execute(conn)?;
                diesel::sql_query("CREATE TABLE runs (key BIGINT NOT NULL, pid BIGINT NOT NULL)").execute(conn)?;
                diesel::sql_query("CREATE TABLE totals (id INTEGER PRIMARY KEY, total BIGINT NOT NULL)")
                    .execute(conn)?;
                diesel::sql_query("INSERT INTO totals (id, total) VALUES (1, 0)").execute(conn)?;
                let all: Vec<Effect> = (0..JOBS).map(|key| Effect { key }).collect();
                jobs.enqueue_many(conn, &all, EnqueueOptions::default())
            }))
            .unwrap();

        let mut workers = Workers { url, children: Vec::new(), killed: 0 };
        for _ in 0..processes {
            workers.spawn();
        }
        for threshold in KILL_AT {
            wait_for(&mut workers, &format!("{threshold} effects"), || {
                count(&runtime, &db, "SELECT COUNT(*) AS n FROM effects") >= threshold
            });
            workers.kill_oldest();
            workers.spawn();
        }
        wait_for(&mut workers, "every job to complete", || {
            count(&runtime, &db, "SELECT COUNT(*) AS n FROM keel_jobs") == 0
        });
        drop(workers);

        let effects = count(&runtime, &db, "SELECT COUNT(*) AS n FROM effects");
        let distinct = count(&runtime, &db, "SELECT COUNT(DISTINCT key) AS n FROM effects");
        let total = count(&runtime, &db, "SELECT total AS n FROM totals WHERE id = 1");
        let runs = count(&runtime, &db, "SELECT COUNT(*) AS n FROM runs");
        let killers = count(&runtime, &db, "SELECT COUNT(DISTINCT pid) AS n FROM runs");
        eprintln!(
            "{backend:?}: {JOBS} jobs, {} kills, {killers} worker processes ran jobs, {runs} executions ({} re-runs)",
            KILL_AT.len(),
            runs - JOBS
        );
        assert_eq!(effects, JOBS, "every job's effect is there ({backend:?})");
        assert_eq!(distinct, JOBS);
        assert_eq!(total, JOBS, "no effect applied twice ({backend:?})");
        assert!(runs >= JOBS);
        assert!(killers >= 2, "jobs ran in more than one process");
    }
}
