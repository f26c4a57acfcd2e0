//! The worker: per-queue claim loops, handler execution, batched outcome writes, lease
//! heartbeats, expired-lease recovery, periodic scheduling, `LISTEN` wake-ups, graceful stop.

use crate::config::Backend;
use crate::db::DbError;
use crate::db::listen::{ListenError, ListenEvent, ListenOptions, Listener};
use crate::jobs::backoff::backoff;
use crate::jobs::config::{JobsConfig, JobsConfigError};
use crate::jobs::job::{ErasedHandler, JobContext, JobError, Registry, Schedule};
use crate::jobs::queue::Jobs;
use crate::jobs::stats::{JobsObserver, Outcome};
use crate::jobs::store::{self, Claim, ClaimedRow};
use chrono::{DateTime, Utc};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, broadcast, mpsc, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

/// Why a worker could not start.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error(transparent)]
    Config(#[from] JobsConfigError),
    #[error(transparent)]
    Listen(#[from] ListenError),
}

/// What a graceful stop did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ShutdownReport {
    /// Jobs still running at the deadline, stopped and given back to their queue (the attempt
    /// does not count).
    pub released: usize,
    /// Outcomes that could not be written (the database was unreachable until the deadline):
    /// their leases expire and the jobs run again.
    pub unwritten: usize,
}

/// Starts workers for a domain's queues.
#[derive(Debug)]
pub struct Worker;

impl Worker {
    /// Starts the worker of `jobs`'s domain in the current tokio runtime: one claim loop per queue
    /// that a registered kind uses or that `config.queues` names (concurrency above 0), the
    /// periodic schedules of `registry`, and on PostgreSQL a `LISTEN` connection of its own.
    pub fn start(
        jobs: &Jobs,
        registry: Registry,
        config: &JobsConfig,
        observer: Arc<dyn JobsObserver>,
    ) -> Result<WorkerHandle, WorkerError> {
        config.validate()?;
        let mut queues: Vec<String> = registry.queues().into_iter().map(str::to_owned).collect();
        queues.extend(config.queues.keys().cloned());
        queues.sort_unstable();
        queues.dedup();
        queues.retain(|q| config.concurrency_of(q) > 0);
        let mut kinds: Vec<String> = registry.handlers.keys().map(|k| (*k).to_owned()).collect();
        kinds.sort_unstable();
        if kinds.is_empty() {
            queues.clear();
        }

        let (shutdown, _) = watch::channel(false);
        let (force_stop, _) = watch::channel(false);
        let (outcomes, outcomes_rx) = mpsc::unbounded_channel();
        let listen = jobs.inner.backend == Backend::Postgres && config.listen && !queues.is_empty();
        let (ready, _) =
            watch::channel(Readiness { runners: 0, listening: !listen, scheduling: registry.schedules.is_empty() });
        let shared = Arc::new(Shared {
            jobs: jobs.clone(),
            config: config.clone(),
            observer,
            worker_id: format!("{}-{}", std::process::id(), &uuid::Uuid::now_v7().simple().to_string()[20..]),
            handlers: registry.handlers.into_iter().map(|(kind, r)| (kind, r.handler)).collect(),
            held: Mutex::new(HashMap::new()),
            outcomes,
            shutdown,
            force_stop,
            ready,
            released: Counter::default(),
        });

        let wakers: HashMap<String, Arc<Notify>> =
            queues.iter().map(|q| (q.clone(), Arc::new(Notify::new()))).collect();
        {
            let mut registered = jobs.inner.wakers.write().unwrap_or_else(PoisonError::into_inner);
            registered.extend(wakers.iter().map(|(q, n)| (q.clone(), n.clone())));
        }

        let mut tasks = Vec::new();
        let listener = if listen {
            let channel = store::channel(&jobs.inner.domain);
            let options = ListenOptions {
                application_name: format!("keel-{}-jobs-listen", jobs.inner.domain),
                poll: Duration::from_millis(config.listen_poll_ms),
                ..ListenOptions::default()
            };
            let listener = Listener::start(jobs.inner.url.clone(), vec![channel.clone()], options)?;
            tasks.push(tokio::spawn(dispatch(shared.clone(), listener.subscribe(), channel, wakers.clone())));
            Some(listener)
        } else {
            None
        };
        let kinds: Arc<[String]> = kinds.into();
        let mut runners = Vec::new();
        for queue in &queues {
            let wake = wakers.get(queue).cloned().unwrap_or_default();
            let concurrency = config.concurrency_of(queue);
            runners.push(tokio::spawn(run_queue(
                shared.clone(),
                queue.as_str().into(),
                concurrency,
                kinds.clone(),
                wake,
            )));
        }
        if !registry.schedules.is_empty() {
            tasks.push(tokio::spawn(schedule(shared.clone(), registry.schedules)));
        }
        let completer = tokio::spawn(complete(shared.clone(), outcomes_rx));
        let (maintenance_stop, maintenance_rx) = watch::channel(false);
        let maintenance = tokio::spawn(maintain(shared.clone(), maintenance_rx));
        tracing::info!(
            domain = %jobs.inner.domain,
            worker.id = %shared.worker_id,
            queues = ?queues,
            listen,
            "job worker started"
        );
        Ok(WorkerHandle {
            shared,
            runner_count: queues.len(),
            queues,
            runners,
            tasks,
            completer: Some(completer),
            maintenance: Some((maintenance, maintenance_stop)),
            listener,
        })
    }
}

/// A running worker. Stop it with [`WorkerHandle::shutdown`]; dropping it stops everything at
/// once, like a crash: the jobs it held run again when their leases expire.
#[derive(Debug)]
pub struct WorkerHandle {
    shared: Arc<Shared>,
    queues: Vec<String>,
    runner_count: usize,
    runners: Vec<JoinHandle<()>>,
    tasks: Vec<JoinHandle<()>>,
    completer: Option<JoinHandle<usize>>,
    maintenance: Option<(JoinHandle<()>, watch::Sender<bool>)>,
    listener: Option<Listener>,
}

#[derive(Debug, Clone, Copy)]
struct Readiness {
    runners: usize,
    listening: bool,
    scheduling: bool,
}

impl WorkerHandle {
    /// The queues this worker runs.
    pub fn queues(&self) -> &[String] {
        &self.queues
    }

    /// Resolves once every queue has looked for work once, the periodic schedules are armed, and
    /// on PostgreSQL the `LISTEN` connection is up: from then on an enqueue wakes the worker
    /// without waiting for a poll.
    pub async fn ready(&self) {
        let count = self.runner_count;
        let mut ready = self.shared.ready.subscribe();
        let _ = ready.wait_for(|r| r.runners >= count && r.listening && r.scheduling).await;
    }

    /// Stops claiming new jobs and scheduling periodic ones, without waiting: running jobs go
    /// on. [`WorkerHandle::shutdown`] then finishes the stop.
    pub fn begin_shutdown(&self) {
        let _ = self.shared.shutdown.send(true);
    }

    /// Whether the `LISTEN` connection is up (false on SQLite or with `listen = false`).
    pub fn is_listening(&self) -> bool {
        self.listener.as_ref().is_some_and(Listener::is_connected)
    }

    /// Stops claiming, waits up to `shutdown_timeout_secs` for running jobs, then stops the rest
    /// and gives them back to their queue; writes every outcome, and stops.
    pub async fn shutdown(mut self) -> ShutdownReport {
        let _ = self.shared.shutdown.send(true);
        for task in self.runners.drain(..).chain(self.tasks.drain(..)) {
            let _ = task.await;
        }
        let _ = self.shared.outcomes.send(Message::Stop);
        let unwritten = match self.completer.take() {
            Some(completer) => completer.await.unwrap_or(0),
            None => 0,
        };
        if let Some((maintenance, stop)) = self.maintenance.take() {
            let _ = stop.send(true);
            let _ = maintenance.await;
        }
        self.listener = None;
        self.unregister_wakers();
        let released = self.shared.released.load();
        tracing::info!(domain = %self.shared.jobs.inner.domain, released, unwritten, "job worker stopped");
        ShutdownReport { released, unwritten }
    }

    fn unregister_wakers(&self) {
        let mut wakers = self.shared.jobs.inner.wakers.write().unwrap_or_else(PoisonError::into_inner);
        for queue in &self.queues {
            wakers.remove(queue);
        }
    }
}

impl Drop for WorkerHandle {
    fn drop(&mut self) {
        let _ = self.shared.shutdown.send(true);
        let _ = self.shared.force_stop.send(true);
        for task in self.runners.iter().chain(&self.tasks) {
            task.abort();
        }
        if let Some(completer) = &self.completer {
            completer.abort();
        }
        if let Some((maintenance, _)) = &self.maintenance {
            maintenance.abort();
        }
        self.unregister_wakers();
    }
}

struct Shared {
    jobs: Jobs,
    config: JobsConfig,
    observer: Arc<dyn JobsObserver>,
    worker_id: String,
    handlers: HashMap<&'static str, Arc<dyn ErasedHandler>>,
    /// Running jobs per lease token (until their outcome is written): what the heartbeat extends.
    held: Mutex<HashMap<Arc<str>, usize>>,
    outcomes: mpsc::UnboundedSender<Message>,
    /// True once shutdown starts: stop claiming.
    shutdown: watch::Sender<bool>,
    /// True at the shutdown deadline: stop the handlers still running.
    force_stop: watch::Sender<bool>,
    ready: watch::Sender<Readiness>,
    released: Counter,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker").field("domain", &self.jobs.inner.domain).field("id", &self.worker_id).finish()
    }
}

impl Shared {
    fn domain(&self) -> &str {
        &self.jobs.inner.domain
    }

    fn hold(&self, token: &Arc<str>, count: usize) {
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        *held.entry(token.clone()).or_default() += count;
    }

    fn unhold(&self, token: &Arc<str>, count: usize) {
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = held.get_mut(token) {
            *n = n.saturating_sub(count);
            if *n == 0 {
                held.remove(token);
            }
        }
    }

    fn held_tokens(&self) -> Vec<String> {
        let held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        held.keys().map(|t| t.to_string()).collect()
    }
}

/// A counter shared between tasks.
#[derive(Debug, Default)]
struct Counter(std::sync::atomic::AtomicUsize);

impl Counter {
    fn add(&self, n: usize) {
        self.0.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
    }

    fn load(&self) -> usize {
        self.0.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// The wait after `failures` consecutive database errors: 100 ms doubling up to 5 s.
fn error_pause(failures: u32) -> Duration {
    Duration::from_millis(100u64.saturating_mul(1 << failures.min(6))).min(Duration::from_secs(5))
}

/// One queue's claim loop: claims up to a batch when enough slots are free, runs each job in a
/// task, and sleeps when the queue is empty until woken, the poll interval, or shutdown.
async fn run_queue(shared: Arc<Shared>, queue: Arc<str>, concurrency: u32, kinds: Arc<[String]>, wake: Arc<Notify>) {
    let concurrency = concurrency as usize;
    let semaphore = Arc::new(Semaphore::new(concurrency));
    let batch = (shared.config.batch_size as usize).min(concurrency).max(1);
    // Claim when half a batch of slots is free: fewer, larger claims under load.
    let refill = (batch / 2).max(1);
    let poll = shared.config.poll_interval();
    let mut tasks = JoinSet::new();
    let mut shutdown = shared.shutdown.subscribe();
    let mut failures = 0u32;
    let mut first = true;
    loop {
        while tasks.try_join_next().is_some() {}
        if *shutdown.borrow() {
            break;
        }
        let acquired = tokio::select! {
            permits = semaphore.clone().acquire_many_owned(refill as u32) => permits,
            _ = shutdown.wait_for(|stop| *stop) => break,
        };
        let Ok(mut permits) = acquired else { break };
        let extra = (batch - refill).min(semaphore.available_permits());
        if extra > 0
            && let Ok(more) = semaphore.clone().try_acquire_many_owned(extra as u32)
        {
            permits.merge(more);
        }
        let limit = permits.num_permits();
        let token: Arc<str> = uuid::Uuid::now_v7().simple().to_string().into();
        match claim(&shared, &queue, &kinds, limit, &token).await {
            Ok(rows) => {
                failures = 0;
                if first {
                    first = false;
                    shared.ready.send_modify(|r| r.runners += 1);
                }
                let claimed = rows.len();
                if claimed > 0 {
                    shared.hold(&token, claimed);
                }
                for row in rows {
                    // `limit` permits for at most `limit` rows: a split always succeeds.
                    let permit = permits.split(1);
                    tasks.spawn(execute(shared.clone(), queue.clone(), token.clone(), row, permit));
                }
                drop(permits);
                if claimed < limit {
                    tokio::select! {
                        _ = wake.notified() => {}
                        _ = tokio::time::sleep(poll) => {}
                        _ = shutdown.wait_for(|stop| *stop) => break,
                    }
                }
            }
            Err(error) => {
                drop(permits);
                failures += 1;
                if failures == 1 || failures.is_multiple_of(20) {
                    tracing::warn!(domain = %shared.domain(), queue = %queue, error = %error, failures, "cannot claim jobs");
                }
                tokio::select! {
                    _ = tokio::time::sleep(error_pause(failures)) => {}
                    _ = shutdown.wait_for(|stop| *stop) => break,
                }
            }
        }
    }
    // Shutdown: no more claims. Let running jobs finish until the deadline, then stop them.
    let deadline = Instant::now() + shared.config.shutdown_timeout();
    let drained = tokio::time::timeout_at(deadline, async { while tasks.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        let _ = shared.force_stop.send(true);
        while tasks.join_next().await.is_some() {}
    }
}

async fn claim(
    shared: &Arc<Shared>,
    queue: &Arc<str>,
    kinds: &Arc<[String]>,
    limit: usize,
    token: &Arc<str>,
) -> Result<Vec<ClaimedRow>, DbError> {
    let now = shared.jobs.inner.clock.now();
    let lease_until = now + shared.config.lease();
    let (queue, kinds, token, worker) = (queue.clone(), kinds.clone(), token.clone(), shared.worker_id.clone());
    // On PostgreSQL the claim is one statement that sets its own asynchronous commit; on SQLite
    // `write` takes the process's write lock.
    shared
        .jobs
        .write(move |conn| {
            let claim = Claim {
                queue: &queue,
                kinds: &kinds,
                limit: u32::try_from(limit).unwrap_or(u32::MAX),
                token: &token,
                worker: &worker,
                now: now.naive_utc(),
                lease_until: lease_until.naive_utc(),
            };
            Ok(store::claim(conn, &claim)?)
        })
        .await
}

/// How an attempt ended, on its way to the completer.
enum Message {
    Outcome(Finished),
    /// Everything sent before this is all there will be.
    Stop,
}

struct Finished {
    id: String,
    kind: String,
    token: Arc<str>,
    queue: Arc<str>,
    attempt: i32,
    max_attempts: i32,
    /// None: stopped at the shutdown deadline, to be released.
    result: Option<Result<(), JobError>>,
}

/// Runs one job's handler in a task of its own (a panic becomes a retryable error), bounded by
/// the shutdown deadline, and sends the outcome to the completer.
async fn execute(
    shared: Arc<Shared>,
    queue: Arc<str>,
    token: Arc<str>,
    mut row: ClaimedRow,
    permit: Option<OwnedSemaphorePermit>,
) {
    let clock = &shared.jobs.inner.clock;
    let due = row.run_at.max(row.created_at).and_utc();
    shared.observer.pickup_latency(shared.domain(), &queue, seconds_between(due, clock.now()));
    let result = match (row.id.parse(), shared.handlers.get(row.kind.as_str())) {
        (Ok(id), Some(handler)) => {
            let ctx = JobContext {
                id,
                kind: row.kind.clone(),
                queue: queue.to_string(),
                attempt: u32::try_from(row.attempt).unwrap_or(0),
                max_attempts: u32::try_from(row.max_attempts).unwrap_or(0),
                enqueued_at: row.created_at.and_utc(),
                run_at: row.run_at.and_utc(),
                shutdown: shared.shutdown.subscribe(),
            };
            let handler = handler.clone();
            let payload = std::mem::take(&mut row.payload);
            let mut force_stop = shared.force_stop.subscribe();
            let started = Instant::now();
            let task = tokio::spawn(async move {
                tokio::select! {
                    result = handler.run(&payload, &ctx) => Some(result),
                    _ = force_stop.wait_for(|stop| *stop) => None,
                }
            });
            let result = match task.await {
                Ok(result) => result,
                Err(error) => Some(Err(JobError::retry(format!("handler panicked: {}", panic_message(error))))),
            };
            if result.is_some() {
                shared.observer.run_duration(shared.domain(), &queue, started.elapsed().as_secs_f64());
            }
            result
        }
        (Err(_), _) => Some(Err(JobError::discard(format!("malformed job id {:?}", row.id)))),
        (_, None) => Some(Err(JobError::retry(format!("no handler for job kind {:?} in this process", row.kind)))),
    };
    drop(permit);
    let finished = Finished {
        id: row.id,
        kind: row.kind,
        token,
        queue,
        attempt: row.attempt,
        max_attempts: row.max_attempts,
        result,
    };
    // The completer outlives every job task; if it is gone, the lease expires and the job reruns.
    let _ = shared.outcomes.send(Message::Outcome(finished));
}

fn panic_message(error: tokio::task::JoinError) -> String {
    match error.try_into_panic() {
        Ok(panic) => panic
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "non-string panic".to_owned()),
        Err(error) => error.to_string(),
    }
}

fn seconds_between(from: DateTime<Utc>, to: DateTime<Utc>) -> f64 {
    ((to - from).num_microseconds().unwrap_or(i64::MAX) as f64 / 1e6).max(0.0)
}

/// Writes outcomes in batches: one transaction per batch, one `DELETE` per lease token for the
/// completed jobs. Retries while the database is unreachable; after `Stop`, only until the
/// shutdown deadline. Returns how many outcomes it could not write.
async fn complete(shared: Arc<Shared>, mut outcomes: mpsc::UnboundedReceiver<Message>) -> usize {
    const MAX_BATCH: usize = 1024;
    let mut stop_received = false;
    loop {
        let mut batch = Vec::new();
        if !stop_received {
            match outcomes.recv().await {
                Some(Message::Outcome(f)) => batch.push(f),
                Some(Message::Stop) | None => stop_received = true,
            }
        }
        while batch.len() < MAX_BATCH {
            match outcomes.try_recv() {
                Ok(Message::Outcome(f)) => batch.push(f),
                Ok(Message::Stop) => stop_received = true,
                Err(_) => break,
            }
        }
        if batch.is_empty() {
            if stop_received {
                return 0;
            }
            continue;
        }
        let mut failures = 0u32;
        // Set once shutdown has begun: from then on, retries are bounded.
        let mut give_up_at: Option<Instant> = None;
        while let Err(error) = write_outcomes(&shared, &batch).await {
            failures += 1;
            if failures == 1 || failures.is_multiple_of(20) {
                tracing::warn!(domain = %shared.domain(), error = %error, outcomes = batch.len(), failures, "cannot record job outcomes; retrying");
            }
            if give_up_at.is_none() && (stop_received || *shared.shutdown.borrow()) {
                give_up_at = Some(Instant::now() + shared.config.shutdown_timeout());
            }
            if give_up_at.is_some_and(|at| Instant::now() >= at) {
                let mut unwritten = batch.len();
                while let Ok(message) = outcomes.try_recv() {
                    if let Message::Outcome(_) = message {
                        unwritten += 1;
                    }
                }
                tracing::error!(domain = %shared.domain(), unwritten, "giving up on job outcomes at shutdown; those jobs run again when their leases expire");
                return unwritten;
            }
            tokio::time::sleep(error_pause(failures)).await;
        }
    }
}

async fn write_outcomes(shared: &Arc<Shared>, batch: &[Finished]) -> Result<(), DbError> {
    let now = shared.jobs.inner.clock.now();
    let config = &shared.config;
    // Completed jobs grouped by lease token (one claim of one queue).
    let mut completed: HashMap<Arc<str>, Vec<String>> = HashMap::new();
    let mut released: HashMap<Arc<str>, Vec<String>> = HashMap::new();
    let mut failed = Vec::new();
    for f in batch {
        match &f.result {
            Some(Ok(())) => completed.entry(f.token.clone()).or_default().push(f.id.clone()),
            None => released.entry(f.token.clone()).or_default().push(f.id.clone()),
            Some(Err(error)) => {
                let (discard, after) = match error {
                    JobError::Discard { .. } => (true, Duration::ZERO),
                    JobError::Retry { after, .. } => (
                        f.attempt >= f.max_attempts,
                        after.unwrap_or_else(|| {
                            let attempt = u32::try_from(f.attempt).unwrap_or(1);
                            backoff(attempt, config.backoff_base_ms, config.backoff_max_ms)
                        }),
                    ),
                };
                let run_at = now + after;
                failed.push((f.id.clone(), f.token.clone(), discard, run_at.naive_utc(), error.message().to_owned()));
            }
        }
    }
    let now = now.naive_utc();
    let (completed_counts, failed_counts, released_count) = shared
        .jobs
        .bookkeeping(move |conn| {
            let mut completed_counts = Vec::new();
            for (token, ids) in &completed {
                completed_counts.push((token.clone(), ids.len(), store::complete(conn, token, ids)?));
            }
            let mut failed_counts = Vec::new();
            for (id, token, discard, run_at, error) in &failed {
                failed_counts.push((
                    id.clone(),
                    *discard,
                    store::fail(conn, id, token, *discard, *run_at, error, now)?,
                ));
            }
            let mut released_count = 0;
            for (token, ids) in &released {
                released_count += store::release(conn, token, ids, now)?;
            }
            Ok::<_, DbError>((completed_counts, failed_counts, released_count))
        })
        .await?;

    let domain = shared.domain();
    for f in batch {
        shared.unhold(&f.token, 1);
    }
    let queue_of_token: HashMap<&Arc<str>, &Arc<str>> = batch.iter().map(|f| (&f.token, &f.queue)).collect();
    for (token, expected, deleted) in &completed_counts {
        if let Some(queue) = queue_of_token.get(token) {
            for _ in 0..*deleted {
                shared.observer.processed(domain, queue, Outcome::Completed);
            }
        }
        if deleted < expected {
            tracing::warn!(
                domain,
                fenced = expected - deleted,
                "completed jobs had lost their lease; their outcome is ignored"
            );
        }
    }
    let by_id: HashMap<&str, &Finished> = batch.iter().map(|f| (f.id.as_str(), f)).collect();
    for (id, discard, updated) in &failed_counts {
        let Some(f) = by_id.get(id.as_str()) else { continue };
        let message = f.result.as_ref().and_then(|r| r.as_ref().err()).map(JobError::message).unwrap_or_default();
        if *updated == 0 {
            tracing::warn!(domain, job.id = %id, job.kind = %f.kind, "failed job had lost its lease; its outcome is ignored");
        } else if *discard {
            shared.observer.processed(domain, &f.queue, Outcome::Discarded);
            tracing::warn!(domain, job.id = %id, job.kind = %f.kind, job.attempt = f.attempt, error = %message, "job discarded");
        } else {
            shared.observer.processed(domain, &f.queue, Outcome::Retried);
            tracing::info!(domain, job.id = %id, job.kind = %f.kind, job.attempt = f.attempt, error = %message, "job failed; will retry");
        }
    }
    shared.released.add(released_count);
    Ok(())
}

/// Extends held leases every `heartbeat_ms`, recovers jobs whose lease expired, and purges old
/// discarded and cancelled jobs once a minute.
async fn maintain(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    const PURGE_EVERY: Duration = Duration::from_secs(60);
    let mut ticker = tokio::time::interval(shared.config.heartbeat());
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_purge = Instant::now();
    let domain = shared.domain().to_owned();
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.wait_for(|stop| *stop) => return,
        }
        let now = shared.jobs.inner.clock.now();
        let tokens = shared.held_tokens();
        if !tokens.is_empty() {
            let until = (now + shared.config.lease()).naive_utc();
            if let Err(error) = shared.jobs.bookkeeping(move |conn| Ok(store::heartbeat(conn, &tokens, until)?)).await {
                tracing::warn!(domain, error = %error, "cannot extend job leases");
            }
        }
        let naive_now = now.naive_utc();
        match shared.jobs.bookkeeping(move |conn| Ok(store::reap(conn, naive_now)?)).await {
            Ok(reaped) => {
                for row in &reaped {
                    let outcome = if row.state == store::DISCARDED { Outcome::Discarded } else { Outcome::Retried };
                    shared.observer.processed(&domain, &row.queue, outcome);
                }
                if !reaped.is_empty() {
                    tracing::warn!(
                        domain,
                        jobs = reaped.len(),
                        "recovered jobs whose worker stopped renewing its lease"
                    );
                }
            }
            Err(error) => tracing::warn!(domain, error = %error, "cannot recover expired job leases"),
        }
        if last_purge.elapsed() >= PURGE_EVERY {
            last_purge = Instant::now();
            let retention = chrono::Duration::seconds(i64::try_from(shared.config.retention_secs).unwrap_or(i64::MAX));
            let before = now.checked_sub_signed(retention).unwrap_or(now).naive_utc();
            if let Err(error) = shared.jobs.bookkeeping(move |conn| Ok(store::purge(conn, before)?)).await {
                tracing::warn!(domain, error = %error, "cannot purge old jobs");
            }
        }
    }
}

/// Turns `LISTEN` notifications into wake-ups of the idle queues.
async fn dispatch(
    shared: Arc<Shared>,
    mut events: broadcast::Receiver<ListenEvent>,
    channel: String,
    wakers: HashMap<String, Arc<Notify>>,
) {
    let mut shutdown = shared.shutdown.subscribe();
    let wake_all = || wakers.values().for_each(|w| w.notify_one());
    loop {
        let event = tokio::select! {
            event = events.recv() => event,
            _ = shutdown.wait_for(|stop| *stop) => return,
        };
        match event {
            Ok(ListenEvent::Notification { channel: c, payload }) if c == channel => {
                if let Some(waker) = wakers.get(&payload) {
                    waker.notify_one();
                }
            }
            Ok(ListenEvent::Notification { .. }) => {}
            // Notifications sent while disconnected are lost: look at every queue.
            Ok(ListenEvent::Connected) => {
                wake_all();
                shared.ready.send_modify(|r| r.listening = true);
            }
            Err(broadcast::error::RecvError::Lagged(_)) => wake_all(),
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

/// Enqueues each periodic job once per tick. Every process runs this; the conditional write in
/// `store::claim_tick` lets exactly one of them enqueue a given tick.
async fn schedule(shared: Arc<Shared>, schedules: Vec<Schedule>) {
    let clock = shared.jobs.inner.clock.clone();
    let poll = shared.config.poll_interval();
    let mut shutdown = shared.shutdown.subscribe();
    let start = clock.now();
    let mut next: Vec<Option<DateTime<Utc>>> =
        schedules.iter().map(|s| s.cron.find_next_occurrence(&start, false).ok()).collect();
    shared.ready.send_modify(|r| r.scheduling = true);
    loop {
        if *shutdown.borrow() {
            return;
        }
        let now = clock.now();
        for (schedule, next) in schedules.iter().zip(next.iter_mut()) {
            let Some(due) = *next else { continue };
            if now < due {
                continue;
            }
            // The latest tick at or before now: ticks missed while asleep are not made up.
            let tick = schedule.cron.find_previous_occurrence(&now, true).unwrap_or(due).max(due);
            match fire(&shared, schedule, tick).await {
                Ok(enqueued) => {
                    shared.observer.schedule_fired(shared.domain(), &schedule.name, tick, enqueued);
                    *next = schedule.cron.find_next_occurrence(&now, false).ok();
                }
                Err(error) => {
                    tracing::warn!(domain = %shared.domain(), schedule = %schedule.name, error = %error, "cannot enqueue a periodic job; retrying");
                }
            }
        }
        let now = clock.now();
        let wait = next.iter().flatten().min().map_or(poll, |due| (*due - now).to_std().unwrap_or_default().min(poll));
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
    }
}

async fn fire(shared: &Arc<Shared>, schedule: &Schedule, tick: DateTime<Utc>) -> Result<bool, DbError> {
    let payload =
        (schedule.make)(tick).map_err(|e| DbError::Query(diesel::result::Error::SerializationError(e.into())))?;
    let jobs = shared.jobs.clone();
    let (name, kind, queue, max_attempts) =
        (schedule.name.clone(), schedule.kind, schedule.queue, schedule.max_attempts);
    let enqueued = shared
        .jobs
        .inner
        .db
        .transaction(move |conn| {
            if !store::claim_tick(conn, &name, tick.naive_utc())? {
                return Ok::<_, DbError>(false);
            }
            jobs.enqueue_raw(conn, kind, queue, payload, max_attempts, tick)?;
            Ok(true)
        })
        .await?;
    Ok(enqueued)
}
