#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Background jobs against real databases: SQLite always, PostgreSQL when
//! `KEEL_TEST_DATABASE_URL` is set. Workers run in this process; a second pool on the same
//! database plays another process. Tests wait for events (handler starts, observer reports),
//! never for fixed times; a `ManualClock` makes run_at, backoff and ages exact.

#[path = "support/jobs.rs"]
mod support;

use chrono::Duration as ChronoDuration;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Text};
use shared::db::{Conn, DbError};
use shared::jobs::stats::DepthState;
use shared::jobs::{
    EnqueueOptions, Enqueued, Jobs, JobsConfig, ListState, NoObserver, Outcome, Registry, RetryOutcome, Worker,
};
use shared::testing::{TestBackend, TestDatabase, backends};
use shared::{Clock, ManualClock, PageRequest, SystemClock};
use std::sync::Arc;
use support::*;
use tokio::sync::watch;

fn registry(
    worker: &'static str,
    started: &Arc<Events<Started>>,
    gate: &watch::Receiver<bool>,
    clock: Arc<dyn Clock>,
) -> Registry {
    let mut registry = Registry::new();
    registry.register::<Task>(TaskHandler { worker, started: started.clone(), gate: gate.clone(), clock }).unwrap();
    registry
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

async fn count(jobs: &Jobs, sql: &'static str) -> i64 {
    jobs.db()
        .run(move |conn: &mut Conn| Ok::<_, DbError>(diesel::sql_query(sql).get_result::<Count>(conn)?.n))
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_enqueued_in_a_rolled_back_transaction_never_runs() {
    for backend in backends() {
        let database = TestDatabase::new(&backend);
        let (settings, db) = domain(&database);
        db.run(|conn| {
            diesel::sql_query("CREATE TABLE accounts (id TEXT PRIMARY KEY)").execute(conn).map_err(DbError::from)
        })
        .await
        .unwrap();
        let jobs = Jobs::new(db.clone(), &settings);

        // The business write and its job, rolled back together.
        let rolled_back = jobs.clone();
        let result: Result<(), DbError> = db
            .transaction(move |conn| {
                diesel::sql_query("INSERT INTO accounts (id) VALUES ('a')").execute(conn)?;
                rolled_back.enqueue(conn, &Task::new("rolled-back", Behavior::Succeed))?;
                Err(DbError::Unavailable("the business rule failed".into()))
            })
            .await;
        assert!(result.is_err());
        // The same, committed.
        let committed = jobs.clone();
        let id = db
            .transaction(move |conn| {
                diesel::sql_query("INSERT INTO accounts (id) VALUES ('b')").execute(conn)?;
                committed.enqueue(conn, &Task::new("committed", Behavior::Succeed))
            })
            .await
            .unwrap()
            .id()
            .unwrap();
        assert_eq!(count(&jobs, "SELECT COUNT(*) AS n FROM keel_jobs").await, 1, "{backend:?}");

        let started = Arc::new(Events::default());
        let (_gate, gate_rx) = watch::channel(true);
        let recorder = Arc::new(Recorder::default());
        let worker = Worker::start(
            &jobs,
            registry("w", &started, &gate_rx, Arc::new(SystemClock)),
            &fast_config(),
            recorder.clone(),
        )
        .unwrap();
        recorder.events.wait_until("the committed job", |e| Recorder::count(e, Outcome::Completed) == 1).await;
        worker.shutdown().await;

        let keys: Vec<_> = started.snapshot().into_iter().map(|s| s.key).collect();
        assert_eq!(keys, vec!["committed"], "{backend:?}");
        assert_eq!(jobs.get(id).await.unwrap(), None, "a completed job is deleted");
        assert_eq!(count(&jobs, "SELECT COUNT(*) AS n FROM keel_jobs").await, 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_job_backs_off_then_is_discarded_with_its_last_error_while_other_jobs_flow() {
    for backend in backends() {
        let database = TestDatabase::new(&backend);
        let (settings, db) = domain(&database);
        let clock = ManualClock::default();
        let jobs = Jobs::with_clock(db, &settings, Arc::new(clock.clone()));
        let started = Arc::new(Events::default());
        let (_gate, gate_rx) = watch::channel(true);
        let recorder = Arc::new(Recorder::default());
        // One job at a time: if the failing job held the queue, nothing else would run.
        let config = JobsConfig { concurrency: 1, backoff_base_ms: 10_000, backoff_max_ms: 60_000, ..fast_config() };
        let worker =
            Worker::start(&jobs, registry("w", &started, &gate_rx, Arc::new(clock.clone())), &config, recorder.clone())
                .unwrap();

        let poison =
            jobs.push(Task::new("poison", Behavior::Fail), EnqueueOptions::default()).await.unwrap().id().unwrap();
        recorder.events.wait_until("the first failure", |e| Recorder::count(e, Outcome::Retried) == 1).await;
        let after_first = jobs.get(poison).await.unwrap().unwrap();
        assert_eq!(after_first.state, "failed");
        assert_eq!(after_first.attempt, 1);
        assert_eq!(after_first.last_error.as_deref(), Some("boom on attempt 1"));
        let wait = after_first.run_at - after_first.attempted_at.unwrap();
        assert!(
            (ChronoDuration::seconds(5)..=ChronoDuration::seconds(10)).contains(&wait),
            "first retry after {wait} (base 10 s, jitter in the upper half)"
        );

        // The clock stands still, so the retry is not due: other jobs run meanwhile.
        for i in 0..20 {
            jobs.push(Task::new(format!("good-{i}"), Behavior::Succeed), EnqueueOptions::default()).await.unwrap();
        }
        recorder.events.wait_until("20 good jobs", |e| Recorder::count(e, Outcome::Completed) == 20).await;
        assert_eq!(jobs.get(poison).await.unwrap().unwrap().attempt, 1, "not retried before its time");

        // Second attempt once due; its backoff doubles.
        clock.advance(ChronoDuration::seconds(10));
        recorder.events.wait_until("the second failure", |e| Recorder::count(e, Outcome::Retried) == 2).await;
        let after_second = jobs.get(poison).await.unwrap().unwrap();
        let wait = after_second.run_at - after_second.attempted_at.unwrap();
        assert!(
            (ChronoDuration::seconds(10)..=ChronoDuration::seconds(20)).contains(&wait),
            "second retry after {wait}"
        );

        clock.advance(ChronoDuration::seconds(20));
        recorder.events.wait_until("the discard", |e| Recorder::count(e, Outcome::Discarded) == 1).await;
        let discarded = jobs.get(poison).await.unwrap().unwrap();
        assert_eq!(discarded.state, "discarded", "{backend:?}");
        assert_eq!(discarded.attempt, 3);
        assert_eq!(discarded.max_attempts, 3);
        assert_eq!(discarded.last_error.as_deref(), Some("boom on attempt 3"));
        assert!(discarded.finished_at.is_some());
        let poison_starts: Vec<_> =
            started.snapshot().into_iter().filter(|s| s.key == "poison").map(|s| s.attempt).collect();
        assert_eq!(poison_starts, vec![1, 2, 3]);

        // A refused job is discarded at once.
        let refused = jobs.push(Task::new("refused", Behavior::Refuse), EnqueueOptions::default()).await.unwrap();
        recorder.events.wait_until("the refusal", |e| Recorder::count(e, Outcome::Discarded) == 2).await;
        let refused = jobs.get(refused.id().unwrap()).await.unwrap().unwrap();
        assert_eq!((refused.state.as_str(), refused.attempt), ("discarded", 1));
        worker.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduled_unique_and_cancelled_jobs() {
    for backend in backends() {
        let database = TestDatabase::new(&backend);
        let (settings, db) = domain(&database);
        let clock = ManualClock::default();
        let jobs = Jobs::with_clock(db, &settings, Arc::new(clock.clone()));
        let started = Arc::new(Events::default());
        let (_gate, gate_rx) = watch::channel(true);
        let recorder = Arc::new(Recorder::default());
        let worker = Worker::start(
            &jobs,
            registry("w", &started, &gate_rx, Arc::new(clock.clone())),
            &fast_config(),
            recorder.clone(),
        )
        .unwrap();
        let in_an_hour = clock.now() + ChronoDuration::hours(1);

        // Unique: a second enqueue with a live key is a no-op that says so.
        let first =
            jobs.push(Task::new("later", Behavior::Succeed), EnqueueOptions::default().run_at(in_an_hour).unique("k"));
        let first = first.await.unwrap();
        assert!(matches!(first, Enqueued::Created(_)));
        let again = jobs.push(Task::new("later-again", Behavior::Succeed), EnqueueOptions::default().unique("k")).await;
        assert_eq!(again.unwrap(), Enqueued::Duplicate, "{backend:?}");
        // Cancelled jobs do not run; cancelling twice finds nothing to cancel.
        let doomed = jobs.push(Task::new("doomed", Behavior::Succeed), EnqueueOptions::default().run_at(in_an_hour));
        let doomed = doomed.await.unwrap().id().unwrap();
        assert!(jobs.cancel(doomed).await.unwrap());
        assert!(!jobs.cancel(doomed).await.unwrap());
        let by_key =
            jobs.push(Task::new("by-key", Behavior::Succeed), EnqueueOptions::default().run_at(in_an_hour).unique("c"));
        by_key.await.unwrap();
        let cancelled = jobs.clone();
        assert!(jobs.db().transaction(move |conn| cancelled.cancel_by_key_in(conn, "c")).await.unwrap());

        jobs.push(Task::new("now", Behavior::Succeed), EnqueueOptions::default()).await.unwrap();
        recorder.events.wait_until("the immediate job", |e| Recorder::count(e, Outcome::Completed) == 1).await;
        let stats = jobs.stats().await.unwrap();
        let depth = |state| stats.depths.iter().filter(|d| d.state == state).map(|d| d.count).sum::<u64>();
        assert_eq!(depth(DepthState::Scheduled), 1, "{stats:?}");
        assert_eq!(depth(DepthState::Cancelled), 2, "{stats:?}");
        assert_eq!(depth(DepthState::Ready), 0, "{stats:?}");

        // Due: it runs, and the key is free again.
        clock.advance(ChronoDuration::hours(1));
        recorder.events.wait_until("the scheduled job", |e| Recorder::count(e, Outcome::Completed) == 2).await;
        let reused = jobs.push(Task::new("key-reused", Behavior::Succeed), EnqueueOptions::default().unique("k")).await;
        assert!(matches!(reused.unwrap(), Enqueued::Created(_)));
        recorder.events.wait_until("the reused key", |e| Recorder::count(e, Outcome::Completed) == 3).await;
        worker.shutdown().await;

        let keys: Vec<_> = started.snapshot().into_iter().map(|s| s.key).collect();
        assert_eq!(keys, vec!["now", "later", "key-reused"], "{backend:?}");
        let later = started.snapshot().into_iter().find(|s| s.key == "later").unwrap();
        assert!(later.at >= in_an_hour, "ran at {} before its run_at {in_an_hour}", later.at);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_schedulers_enqueue_each_periodic_tick_exactly_once() {
    #[derive(Debug, serde::Serialize, serde::Deserialize)]
    struct Tick {
        at: chrono::DateTime<chrono::Utc>,
    }
    impl shared::jobs::Job for Tick {
        const KIND: &'static str = "test.tick";
        const QUEUE: &'static str = "ticks";
    }

    for backend in backends() {
        let database = TestDatabase::new(&backend);
        let (settings, db) = domain(&database);
        let clock = ManualClock::default();
        let process_a = Jobs::with_clock(db, &settings, Arc::new(clock.clone()));
        let process_b = other_process(&settings, Arc::new(clock.clone()));
        let mut observers = Vec::new();
        let mut workers = Vec::new();
        for jobs in [&process_a, &process_b] {
            let mut registry = Registry::new();
            registry.periodic::<Tick>("every-second", "* * * * * *", |at| Tick { at }).unwrap();
            let recorder = Arc::new(Recorder::default());
            workers.push(Worker::start(jobs, registry, &fast_config(), recorder.clone()).unwrap());
            observers.push(recorder);
        }
        let fired = |events: &[Event]| -> Vec<(chrono::DateTime<chrono::Utc>, bool)> {
            events
                .iter()
                .filter_map(|e| match e {
                    Event::Fired { tick, enqueued, .. } => Some((*tick, *enqueued)),
                    _ => None,
                })
                .collect()
        };
        for worker in &workers {
            worker.ready().await;
        }
        for round in 1..=4 {
            clock.advance(ChronoDuration::seconds(1));
            for observer in &observers {
                observer.events.wait_until("both schedulers at the tick", |e| fired(e).len() == round).await;
            }
        }
        for worker in workers {
            worker.shutdown().await;
        }

        let a = fired(&observers[0].events.snapshot());
        let b = fired(&observers[1].events.snapshot());
        for (round, (tick_a, tick_b)) in a.iter().zip(&b).enumerate() {
            assert_eq!(tick_a.0, tick_b.0, "both saw the same tick in round {round}");
            assert!(tick_a.1 ^ tick_b.1, "exactly one of them enqueued tick {} ({backend:?})", tick_a.0);
        }
        assert_eq!(count(&process_a, "SELECT COUNT(*) AS n FROM keel_jobs").await, 4);
        assert_eq!(count(&process_a, "SELECT COUNT(DISTINCT run_at) AS n FROM keel_jobs").await, 4);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_lost_its_lease_cannot_overwrite_the_new_state() {
    for backend in backends() {
        let database = TestDatabase::new(&backend);
        let (settings, db) = domain(&database);
        // Process A's clock stands still, like a process frozen in a long pause: its heartbeats
        // renew leases that, on process B's clock (ten minutes ahead), have long expired.
        let clock_a = ManualClock::default();
        let clock_b = ManualClock::new(clock_a.now() + ChronoDuration::minutes(10));
        let jobs_a = Jobs::with_clock(db, &settings, Arc::new(clock_a.clone()));
        let jobs_b = other_process(&settings, Arc::new(clock_b.clone()));
        let started = Arc::new(Events::default());
        let (open_a, gate_a) = watch::channel(false);
        let (open_b, gate_b) = watch::channel(false);

        let completes =
            jobs_a.push(Task::new("completes", Behavior::WaitForGate { succeed: true }), Default::default());
        let completes = completes.await.unwrap().id().unwrap();
        let fails = jobs_a.push(Task::new("fails", Behavior::WaitForGate { succeed: false }), Default::default());
        let fails = fails.await.unwrap().id().unwrap();

        let recorder_a = Arc::new(Recorder::default());
        let worker_a = Worker::start(
            &jobs_a,
            registry("a", &started, &gate_a, Arc::new(clock_a.clone())),
            &fast_config(),
            recorder_a.clone(),
        )
        .unwrap();
        started.wait_until("A runs both", |s| s.iter().filter(|s| s.worker == "a").count() == 2).await;

        let recorder_b = Arc::new(Recorder::default());
        let worker_b = Worker::start(
            &jobs_b,
            registry("b", &started, &gate_b, Arc::new(clock_b.clone())),
            &fast_config(),
            recorder_b.clone(),
        )
        .unwrap();
        started.wait_until("B runs both again", |s| s.iter().filter(|s| s.worker == "b").count() == 2).await;
        for id in [completes, fails] {
            let job = jobs_b.get(id).await.unwrap().unwrap();
            assert_eq!((job.state.as_str(), job.attempt), ("running", 2), "{backend:?}");
            assert!(job.last_error.unwrap().starts_with("lease expired"));
        }

        // A finishes both (one success, one failure) and writes its outcomes.
        open_a.send(true).unwrap();
        let report = worker_a.shutdown().await;
        assert_eq!(report.unwritten, 0);
        assert!(
            recorder_a.events.snapshot().iter().all(|e| !matches!(e, Event::Processed { .. })),
            "A's outcomes were fenced"
        );
        for id in [completes, fails] {
            let job = jobs_b.get(id).await.unwrap().unwrap();
            assert_eq!((job.state.as_str(), job.attempt), ("running", 2), "A overwrote B's state ({backend:?})");
        }

        // B's outcomes land. B also counted the two expired leases it recovered as retries.
        open_b.send(true).unwrap();
        recorder_b
            .events
            .wait_until("B's outcomes", |e| {
                Recorder::count(e, Outcome::Completed) == 1 && Recorder::count(e, Outcome::Retried) == 3
            })
            .await;
        worker_b.shutdown().await;
        assert_eq!(jobs_b.get(completes).await.unwrap(), None);
        let failed = jobs_b.get(fails).await.unwrap().unwrap();
        assert_eq!((failed.state.as_str(), failed.attempt), ("failed", 2));
        assert_eq!(failed.last_error.as_deref(), Some("failed after the gate"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_enqueue_wakes_an_idle_worker_without_waiting_for_the_poll() {
    for backend in backends() {
        let database = TestDatabase::new(&backend);
        let (settings, db) = domain(&database);
        let jobs = Jobs::new(db, &settings);
        let started = Arc::new(Events::default());
        let (_gate, gate_rx) = watch::channel(true);
        // A minute between polls: only a wake-up can start the job within the test's wait.
        let config = JobsConfig { poll_interval_ms: 60_000, ..fast_config() };
        let worker = Worker::start(
            &jobs,
            registry("w", &started, &gate_rx, Arc::new(SystemClock)),
            &config,
            Arc::new(NoObserver),
        )
        .unwrap();
        worker.ready().await;
        // On PostgreSQL, enqueue from another pool: only NOTIFY can reach the worker. On SQLite, the
        // in-process wake-up of the same queue handle does.
        let enqueuer = match backend {
            TestBackend::Postgres(_) => other_process(&settings, Arc::new(SystemClock)),
            TestBackend::Sqlite => jobs.clone(),
        };
        enqueuer.push(Task::new("first", Behavior::Succeed), EnqueueOptions::default()).await.unwrap();
        started.wait_until("the woken worker", |s| s.len() == 1).await;

        if let TestBackend::Postgres(_) = backend {
            assert!(worker.is_listening());
            // The server drops the LISTEN connection; the listener reconnects by itself.
            let before = listener_pids(&jobs).await;
            assert_eq!(before.len(), 1, "one LISTEN connection");
            assert_eq!(kill_listener(&jobs).await, 1);
            let deadline = tokio::time::Instant::now() + WAIT;
            while !listener_pids(&jobs).await.iter().any(|pid| !before.contains(pid)) {
                assert!(tokio::time::Instant::now() < deadline, "the listener did not reconnect");
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            enqueuer.push(Task::new("after-reconnect", Behavior::Succeed), EnqueueOptions::default()).await.unwrap();
            started.wait_until("the worker woken after the reconnect", |s| s.len() == 2).await;
        }
        worker.shutdown().await;
    }
}

async fn listener_pids(jobs: &Jobs) -> Vec<i64> {
    #[derive(QueryableByName)]
    struct Pid {
        #[diesel(sql_type = BigInt)]
        pid: i64,
    }
    jobs.db()
        .run(|conn: &mut Conn| {
            let rows: Vec<Pid> = diesel::sql_query(
                "SELECT pid::bigint AS pid FROM pg_stat_activity \
                 WHERE application_name = 'keel-work-jobs-listen' AND datname = current_database()",
            )
            .load(conn)?;
            Ok::<_, DbError>(rows.into_iter().map(|r| r.pid).collect())
        })
        .await
        .unwrap()
}

async fn kill_listener(jobs: &Jobs) -> i64 {
    jobs.db()
        .run(|conn: &mut Conn| {
            let killed: Count = diesel::sql_query(
                "SELECT COUNT(pg_terminate_backend(pid))::bigint AS n FROM pg_stat_activity \
                 WHERE application_name = 'keel-work-jobs-listen' AND datname = current_database()",
            )
            .get_result(conn)?;
            Ok::<_, DbError>(killed.n)
        })
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_finishes_running_jobs_and_releases_those_past_the_deadline() {
    for backend in backends() {
        let database = TestDatabase::new(&backend);
        let (settings, db) = domain(&database);
        let jobs = Jobs::new(db, &settings);
        let started = Arc::new(Events::default());
        let (open, gate_rx) = watch::channel(false);
        let recorder = Arc::new(Recorder::default());
        let config = JobsConfig { shutdown_timeout_secs: 1, ..fast_config() };
        let worker =
            Worker::start(&jobs, registry("w", &started, &gate_rx, Arc::new(SystemClock)), &config, recorder.clone())
                .unwrap();
        let finishing = jobs.push(Task::new("finishing", Behavior::WaitForGate { succeed: true }), Default::default());
        let finishing = finishing.await.unwrap().id().unwrap();
        let hanging = jobs.push(Task::new("hanging", Behavior::Hang), Default::default()).await.unwrap().id().unwrap();
        started.wait_until("both running", |s| s.len() == 2).await;

        worker.begin_shutdown();
        // Claims have stopped: a job enqueued now stays queued.
        let queued = jobs.push(Task::new("queued", Behavior::Succeed), Default::default()).await.unwrap().id().unwrap();
        open.send(true).unwrap();
        let report = worker.shutdown().await;
        assert_eq!(report, shared::jobs::ShutdownReport { released: 1, unwritten: 0 }, "{backend:?}");

        assert_eq!(jobs.get(finishing).await.unwrap(), None, "finished within the deadline");
        let released = jobs.get(hanging).await.unwrap().unwrap();
        assert_eq!((released.state.as_str(), released.attempt), ("available", 0), "given back, attempt not counted");
        assert_eq!(jobs.get(queued).await.unwrap().unwrap().state, "available");
        assert_eq!(started.snapshot().len(), 2);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_view_depths_ages_pages_and_retry() {
    for backend in backends() {
        let database = TestDatabase::new(&backend);
        let (settings, db) = domain(&database);
        let clock = ManualClock::default();
        let jobs = Jobs::with_clock(db, &settings, Arc::new(clock.clone()));
        let started = Arc::new(Events::default());
        let (_gate, gate_rx) = watch::channel(true);
        let recorder = Arc::new(Recorder::default());
        let worker = Worker::start(
            &jobs,
            registry("w", &started, &gate_rx, Arc::new(clock.clone())),
            &fast_config(),
            recorder.clone(),
        )
        .unwrap();
        let mut refused = Vec::new();
        for i in 0..3 {
            let id = jobs.push(
                Task::new(format!("refused-{i}"), Behavior::Refuse),
                EnqueueOptions::default().unique(format!("r{i}")),
            );
            refused.push(id.await.unwrap().id().unwrap());
        }
        recorder.events.wait_until("three discards", |e| Recorder::count(e, Outcome::Discarded) == 3).await;
        worker.shutdown().await;

        // The worker is gone: these stay in the "parked" queue.
        jobs.push(Task::new("parked-1", Behavior::Succeed), EnqueueOptions::default().queue("parked")).await.unwrap();
        clock.advance(ChronoDuration::seconds(30));
        jobs.push(Task::new("parked-2", Behavior::Succeed), EnqueueOptions::default().queue("parked")).await.unwrap();
        jobs.push(
            Task::new("future", Behavior::Succeed),
            EnqueueOptions::default().queue("parked").run_at(clock.now() + ChronoDuration::hours(1)),
        )
        .await
        .unwrap();
        clock.advance(ChronoDuration::seconds(12));

        let stats = jobs.stats().await.unwrap();
        assert_eq!(stats.domain, "work");
        let depth = |queue: &str, state| {
            stats.depths.iter().find(|d| d.queue == queue && d.state == state).map_or(0, |d| d.count)
        };
        assert_eq!(depth("default", DepthState::Discarded), 3, "{stats:?}");
        assert_eq!(depth("parked", DepthState::Ready), 2, "{stats:?}");
        assert_eq!(depth("parked", DepthState::Scheduled), 1, "{stats:?}");
        assert_eq!(stats.oldest_ready.len(), 1, "{stats:?}");
        assert_eq!(stats.oldest_ready[0].queue, "parked");
        assert!((stats.oldest_ready[0].seconds - 42.0).abs() < 1e-6, "{stats:?}");

        // Keyset pages over the discarded jobs, oldest first.
        let first = jobs.list(ListState::Discarded, &PageRequest { limit: Some(2), after: None }).await.unwrap();
        assert_eq!(first.data.iter().map(|j| j.id).collect::<Vec<_>>(), refused[..2]);
        assert!(first.has_more);
        let second =
            jobs.list(ListState::Discarded, &PageRequest { limit: Some(2), after: first.next_after }).await.unwrap();
        assert_eq!(second.data.iter().map(|j| j.id).collect::<Vec<_>>(), refused[2..]);
        assert!(!second.has_more);
        assert_eq!(second.data[0].last_error.as_deref(), Some("refused"));
        assert!(jobs.list(ListState::Failed, &PageRequest::default()).await.unwrap().data.is_empty());

        // Retry: back in the queue with fresh attempts; not twice; not while the key is taken.
        assert_eq!(jobs.retry(refused[0]).await.unwrap(), RetryOutcome::Retried, "{backend:?}");
        let retried = jobs.get(refused[0]).await.unwrap().unwrap();
        assert_eq!((retried.state.as_str(), retried.attempt), ("available", 0));
        assert_eq!(jobs.retry(refused[0]).await.unwrap(), RetryOutcome::NotRetryable("available".into()));
        assert_eq!(jobs.retry(shared::jobs::JobId::new()).await.unwrap(), RetryOutcome::NotFound);
        jobs.push(Task::new("holder", Behavior::Succeed), EnqueueOptions::default().unique("r1")).await.unwrap();
        assert_eq!(jobs.retry(refused[1]).await.unwrap(), RetryOutcome::Duplicate);
    }
}

#[tokio::test]
async fn migrations_live_beside_a_domains_own_and_run_once() {
    for backend in backends() {
        let database = TestDatabase::new(&backend);
        let settings = database.domain("work");
        let db = shared::db::Db::connect(&settings).unwrap();
        assert_eq!(shared::jobs::migrate(&db).unwrap(), 1);
        assert_eq!(shared::jobs::migrate(&db).unwrap(), 0);
        #[derive(QueryableByName)]
        struct Version {
            #[diesel(sql_type = Text)]
            version: String,
        }
        let versions = db
            .run(|conn: &mut Conn| {
                Ok::<_, DbError>(
                    diesel::sql_query("SELECT version FROM __diesel_schema_migrations ORDER BY version")
                        .load::<Version>(conn)?
                        .into_iter()
                        .map(|v| v.version)
                        .collect::<Vec<_>>(),
                )
            })
            .await
            .unwrap();
        assert_eq!(versions, vec!["jobs0001"]);
    }
}
