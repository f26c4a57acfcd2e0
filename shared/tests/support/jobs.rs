//! Shared pieces of the jobs test suites: a test job whose handler does what its payload says,
//! an observer that records events, and a way to wait for events without sleeping.

#![allow(dead_code)]

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use shared::config::DomainDatabase;
use shared::db::Db;
use shared::jobs::{Handler, Job, JobContext, JobError, Jobs, JobsConfig, JobsObserver, Outcome};
use shared::testing::TestDatabase;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Notify, watch};

/// Long enough for a loaded 2-core machine; reaching it fails the test, never passes it.
pub const WAIT: Duration = Duration::from_secs(60);

/// An append-only list of events that tests wait on.
#[derive(Debug)]
pub struct Events<T> {
    items: Mutex<Vec<T>>,
    changed: Notify,
}

impl<T> Default for Events<T> {
    fn default() -> Self {
        Self { items: Mutex::new(Vec::new()), changed: Notify::new() }
    }
}

impl<T: Clone> Events<T> {
    pub fn push(&self, item: T) {
        self.items.lock().unwrap().push(item);
        self.changed.notify_waiters();
    }

    pub fn snapshot(&self) -> Vec<T> {
        self.items.lock().unwrap().clone()
    }

    /// Waits until `done` holds for the events so far; panics after [`WAIT`].
    pub async fn wait_until(&self, what: &str, done: impl Fn(&[T]) -> bool) -> Vec<T> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let items = self.items.lock().unwrap();
                if done(&items) {
                    return items.clone();
                }
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                panic!("timed out waiting for {what}");
            }
        }
    }
}

/// What the test job's handler does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Behavior {
    Succeed,
    /// Fails every attempt with "boom on attempt N".
    Fail,
    /// Refuses the job: no retry.
    Refuse,
    /// Waits until the handler's gate opens, then succeeds or fails.
    WaitForGate {
        succeed: bool,
    },
    /// Never returns on its own.
    Hang,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Task {
    pub key: String,
    pub behavior: Behavior,
}

impl Task {
    pub fn new(key: impl Into<String>, behavior: Behavior) -> Self {
        Self { key: key.into(), behavior }
    }
}

impl Job for Task {
    const KIND: &'static str = "test.task";
    const MAX_ATTEMPTS: u32 = 3;
}

/// One handler start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Started {
    pub key: String,
    pub attempt: u32,
    pub worker: &'static str,
    pub at: DateTime<Utc>,
}

/// Handles [`Task`]s, recording each start.
#[derive(Debug, Clone)]
pub struct TaskHandler {
    pub worker: &'static str,
    pub started: Arc<Events<Started>>,
    pub gate: watch::Receiver<bool>,
    pub clock: Arc<dyn shared::Clock>,
}

#[async_trait]
impl Handler<Task> for TaskHandler {
    async fn handle(&self, task: Task, ctx: &JobContext) -> Result<(), JobError> {
        self.started.push(Started {
            key: task.key.clone(),
            attempt: ctx.attempt,
            worker: self.worker,
            at: self.clock.now(),
        });
        match task.behavior {
            Behavior::Succeed => Ok(()),
            Behavior::Fail => Err(JobError::retry(format!("boom on attempt {}", ctx.attempt))),
            Behavior::Refuse => Err(JobError::discard("refused")),
            Behavior::WaitForGate { succeed } => {
                let mut gate = self.gate.clone();
                gate.wait_for(|open| *open).await.map_err(|e| JobError::retry(e.to_string()))?;
                if succeed { Ok(()) } else { Err(JobError::retry("failed after the gate")) }
            }
            Behavior::Hang => {
                std::future::pending::<()>().await;
                Ok(())
            }
        }
    }
}

/// An observed worker event.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Processed { queue: String, outcome: Outcome },
    Fired { schedule: String, tick: DateTime<Utc>, enqueued: bool },
}

/// Records what a worker reports.
#[derive(Debug, Default)]
pub struct Recorder {
    pub events: Events<Event>,
    pub pickups: Events<f64>,
}

impl JobsObserver for Recorder {
    fn processed(&self, _domain: &str, queue: &str, outcome: Outcome) {
        self.events.push(Event::Processed { queue: queue.to_owned(), outcome });
    }

    fn pickup_latency(&self, _domain: &str, _queue: &str, seconds: f64) {
        self.pickups.push(seconds);
    }

    fn schedule_fired(&self, _domain: &str, schedule: &str, tick: DateTime<Utc>, enqueued: bool) {
        self.events.push(Event::Fired { schedule: schedule.to_owned(), tick, enqueued });
    }
}

impl Recorder {
    pub fn count(events: &[Event], wanted: Outcome) -> usize {
        events.iter().filter(|e| matches!(e, Event::Processed { outcome, .. } if *outcome == wanted)).count()
    }
}

/// Worker settings that keep tests short: frequent polls and heartbeats, short backoff.
pub fn fast_config() -> JobsConfig {
    JobsConfig {
        poll_interval_ms: 50,
        lease_ms: 2_000,
        heartbeat_ms: 200,
        backoff_base_ms: 100,
        backoff_max_ms: 1_000,
        shutdown_timeout_secs: 10,
        concurrency: 4,
        ..JobsConfig::default()
    }
}

/// A domain `work` in a fresh database, with the jobs tables.
pub fn domain(database: &TestDatabase) -> (DomainDatabase, Db) {
    let settings = database.domain("work");
    let db = Db::connect(&settings).unwrap();
    shared::jobs::migrate(&db).unwrap();
    (settings, db)
}

/// A second, independent connection pool to the same domain: what another process would have.
pub fn other_process(settings: &DomainDatabase, clock: Arc<dyn shared::Clock>) -> Jobs {
    Jobs::with_clock(Db::connect(settings).unwrap(), settings, clock)
}
