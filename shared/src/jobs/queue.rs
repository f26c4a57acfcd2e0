//! [`Jobs`]: a domain's job queue. Enqueue (inside the domain's own transactions), cancel, and
//! the admin view.

use crate::clock::{Clock, SystemClock};
use crate::config::{Backend, DomainDatabase};
use crate::db::{Conn, Db, DbError};
use crate::jobs::config::valid_queue_name;
use crate::jobs::job::{EnqueueOptions, Enqueued, Job, JobId};
use crate::jobs::stats::{DepthState, OldestReady, QueueDepth, QueueStats};
use crate::jobs::store::{self, NewJobRow};
use crate::page::{Page, PageRequest};
use crate::secret::Secret;
use chrono::{DateTime, NaiveDateTime, Utc};
use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};
use tokio::sync::Notify;

/// Applies the jobs tables' migrations in the domain's schema or file; returns how many ran.
/// Their versions (`jobs0001`, …) never collide with a domain's own. Blocking.
pub fn migrate(db: &Db) -> Result<usize, DbError> {
    db.migrate(store::POSTGRES_MIGRATIONS, store::SQLITE_MIGRATIONS)
}

/// A domain's job queue: cheap to clone; the worker of the same process shares it.
#[derive(Clone)]
pub struct Jobs {
    pub(crate) inner: Arc<JobsInner>,
}

pub(crate) struct JobsInner {
    pub db: Db,
    pub domain: String,
    pub backend: Backend,
    pub url: Secret,
    pub clock: Arc<dyn Clock>,
    /// The idle queues of this process's worker, woken by an enqueue on SQLite (where there is no
    /// `NOTIFY`).
    pub wakers: RwLock<HashMap<String, Arc<Notify>>>,
}

impl std::fmt::Debug for Jobs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Jobs").field("domain", &self.inner.domain).field("backend", &self.inner.backend).finish()
    }
}

/// A job as the admin API shows it. The payload is left out: it may hold personal data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobSummary {
    pub id: JobId,
    pub queue: String,
    pub kind: String,
    /// `available`, `running`, `failed`, `discarded` or `cancelled`.
    pub state: String,
    pub attempt: u32,
    pub max_attempts: u32,
    pub run_at: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
    pub dedupe_key: Option<String>,
    pub attempted_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
}

/// The states the admin API lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListState {
    /// Failed at least once and waiting for a retry.
    Failed,
    Discarded,
    Cancelled,
}

impl ListState {
    fn as_str(self) -> &'static str {
        match self {
            Self::Failed => store::FAILED,
            Self::Discarded => store::DISCARDED,
            Self::Cancelled => store::CANCELLED,
        }
    }
}

/// The answer to [`Jobs::retry`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RetryOutcome {
    /// Back in its queue with a fresh set of attempts.
    Retried,
    NotFound,
    /// Only discarded and cancelled jobs can be retried; this one is in the given state.
    NotRetryable(String),
    /// A live job holds the same dedupe key.
    Duplicate,
}

impl Jobs {
    /// The queue of the domain whose database is `db` (opened from `settings`).
    pub fn new(db: Db, settings: &DomainDatabase) -> Self {
        Self::with_clock(db, settings, Arc::new(SystemClock))
    }

    /// Like [`Jobs::new`], with a clock that tests can move (run_at, leases, backoff, ages).
    pub fn with_clock(db: Db, settings: &DomainDatabase, clock: Arc<dyn Clock>) -> Self {
        Self {
            inner: Arc::new(JobsInner {
                db,
                domain: settings.domain.clone(),
                backend: settings.backend,
                url: settings.url.clone(),
                clock,
                wakers: RwLock::new(HashMap::new()),
            }),
        }
    }

    pub fn domain(&self) -> &str {
        &self.inner.domain
    }

    pub fn db(&self) -> &Db {
        &self.inner.db
    }

    pub(crate) fn now(&self) -> NaiveDateTime {
        self.inner.clock.now().naive_utc()
    }

    /// Enqueues `job` with its type's defaults. Synchronous: call it inside the transaction that
    /// makes the business change (`db.transaction(|conn| …)`), so that the job exists if and only
    /// if the change commits. On PostgreSQL the idle workers are notified on commit.
    pub fn enqueue<J: Job>(&self, conn: &mut Conn, job: &J) -> Result<Enqueued, DbError> {
        self.enqueue_with(conn, job, EnqueueOptions::default())
    }

    /// Enqueues `job` with options: a `run_at`, a dedupe key, another queue or attempt limit.
    pub fn enqueue_with<J: Job>(&self, conn: &mut Conn, job: &J, options: EnqueueOptions) -> Result<Enqueued, DbError> {
        let id = JobId::new();
        let row = self.row(id, job, &options)?;
        if store::insert(conn, std::slice::from_ref(&row))? == 0 {
            return Ok(Enqueued::Duplicate);
        }
        self.wake(&row.queue);
        Ok(Enqueued::Created(id))
    }

    /// Enqueues many jobs of one type in a few statements; jobs whose dedupe key is taken are
    /// skipped. Returns how many were enqueued.
    pub fn enqueue_many<J: Job>(&self, conn: &mut Conn, jobs: &[J], options: EnqueueOptions) -> Result<usize, DbError> {
        let rows = jobs.iter().map(|job| self.row(JobId::new(), job, &options)).collect::<Result<Vec<_>, _>>()?;
        let inserted = store::insert(conn, &rows)?;
        if inserted > 0 {
            self.wake(options.queue.as_deref().unwrap_or(J::QUEUE));
        }
        Ok(inserted)
    }

    /// Enqueues `job` in a transaction of its own.
    pub async fn push<J: Job>(&self, job: J, options: EnqueueOptions) -> Result<Enqueued, DbError> {
        let jobs = self.clone();
        self.inner.db.transaction(move |conn| jobs.enqueue_with(conn, &job, options)).await
    }

    fn row<J: Job>(&self, id: JobId, job: &J, options: &EnqueueOptions) -> Result<NewJobRow, DbError> {
        let queue = options.queue.clone().unwrap_or_else(|| J::QUEUE.to_owned());
        if !valid_queue_name(&queue) {
            return Err(serialization(format!("invalid queue name {queue:?}")));
        }
        let payload = serde_json::to_string(job).map_err(|e| serialization(e.to_string()))?;
        let now = self.now();
        let max_attempts = options.max_attempts.unwrap_or(J::MAX_ATTEMPTS).max(1);
        Ok(NewJobRow {
            id: id.to_string(),
            queue,
            kind: J::KIND.to_owned(),
            payload,
            state: store::AVAILABLE,
            attempt: 0,
            max_attempts: i32::try_from(max_attempts).unwrap_or(i32::MAX),
            run_at: options.run_at.map_or(now, |at| at.naive_utc()),
            created_at: now,
            dedupe_key: options.dedupe_key.clone(),
        })
    }

    /// Enqueues an already serialised job (a periodic job's tick).
    pub(crate) fn enqueue_raw(
        &self,
        conn: &mut Conn,
        kind: &str,
        queue: &str,
        payload: String,
        max_attempts: u32,
        run_at: DateTime<Utc>,
    ) -> Result<Enqueued, DbError> {
        let id = JobId::new();
        let row = NewJobRow {
            id: id.to_string(),
            queue: queue.to_owned(),
            kind: kind.to_owned(),
            payload,
            state: store::AVAILABLE,
            attempt: 0,
            max_attempts: i32::try_from(max_attempts.max(1)).unwrap_or(i32::MAX),
            run_at: run_at.naive_utc(),
            created_at: self.now(),
            dedupe_key: None,
        };
        if store::insert(conn, std::slice::from_ref(&row))? == 0 {
            return Ok(Enqueued::Duplicate);
        }
        self.wake(queue);
        Ok(Enqueued::Created(id))
    }

    /// Runs one write: outside a transaction on PostgreSQL (for a single statement, atomic
    /// anyway), and on SQLite inside `Db::transaction`, which holds the process's write lock
    /// (SQLite has one writer at a time).
    pub(crate) async fn write<T, F>(&self, f: F) -> Result<T, DbError>
    where
        F: FnOnce(&mut Conn) -> Result<T, DbError> + Send + 'static,
        T: Send + 'static,
    {
        match self.inner.backend {
            Backend::Postgres => self.inner.db.run(f).await,
            Backend::Sqlite => self.inner.db.transaction(f).await,
        }
    }

    /// Runs a worker's own bookkeeping (claims, outcomes, heartbeats, lease recovery) in one
    /// transaction. On PostgreSQL it commits with `synchronous_commit = off`: the commit does
    /// not wait for the WAL flush (about 5 ms on this project's machines), and a server crash
    /// can lose at most the last fraction of a second of such commits, never reorder them. Losing
    /// one only makes a job run again (a lost claim or outcome) or recovers its lease earlier
    /// (a lost heartbeat): the at-least-once contract holds. Enqueues, cancels and retries stay
    /// synchronous. On SQLite, `Db::transaction` also takes the process's write lock.
    pub(crate) async fn bookkeeping<T, F>(&self, f: F) -> Result<T, DbError>
    where
        F: FnOnce(&mut Conn) -> Result<T, DbError> + Send + 'static,
        T: Send + 'static,
    {
        match self.inner.backend {
            Backend::Postgres => {
                self.inner
                    .db
                    .transaction(move |conn| {
                        diesel::connection::SimpleConnection::batch_execute(
                            conn,
                            "SET LOCAL synchronous_commit = off",
                        )?;
                        f(conn)
                    })
                    .await
            }
            Backend::Sqlite => self.inner.db.transaction(f).await,
        }
    }

    /// Wakes this process's idle worker of `queue` on SQLite. Called inside the enqueueing
    /// transaction: the worker's claim needs the same in-process SQLite write lock, so it reads the
    /// job only once the transaction is over. PostgreSQL wakes workers with `NOTIFY` on commit.
    fn wake(&self, queue: &str) {
        if self.inner.backend != Backend::Sqlite {
            return;
        }
        let wakers = self.inner.wakers.read().unwrap_or_else(PoisonError::into_inner);
        if let Some(notify) = wakers.get(queue) {
            notify.notify_one();
        }
    }

    /// Cancels a job that has not finished, inside the caller's transaction: it will not run
    /// again, and the outcome of an attempt running now is ignored. False when the job does not
    /// exist or already finished.
    pub fn cancel_in(&self, conn: &mut Conn, id: JobId) -> Result<bool, DbError> {
        Ok(store::cancel(conn, &id.to_string(), self.now())?)
    }

    /// Like [`Jobs::cancel_in`], for the live job holding a dedupe key.
    pub fn cancel_by_key_in(&self, conn: &mut Conn, key: &str) -> Result<bool, DbError> {
        Ok(store::cancel_by_key(conn, key, self.now())?)
    }

    /// [`Jobs::cancel_in`] in a transaction of its own.
    pub async fn cancel(&self, id: JobId) -> Result<bool, DbError> {
        let jobs = self.clone();
        self.write(move |conn| jobs.cancel_in(conn, id)).await
    }

    /// One job, without its payload.
    pub async fn get(&self, id: JobId) -> Result<Option<JobSummary>, DbError> {
        let row = self.inner.db.run(move |conn| Ok::<_, DbError>(store::find(conn, &id.to_string())?)).await?;
        row.map(summary).transpose()
    }

    /// Failed, discarded or cancelled jobs, oldest first, paginated by keyset (`after` = the last
    /// id of the previous page).
    pub async fn list(&self, state: ListState, page: &PageRequest) -> Result<Page<JobSummary>, DbError> {
        let limit = page.limit();
        let after = page.after.clone();
        let rows = self
            .inner
            .db
            .run_read(move |conn| Ok::<_, DbError>(store::list(conn, state.as_str(), after.as_deref(), limit)?))
            .await?;
        Page::from_overfetch(rows, limit, |row| row.id.clone()).try_map(summary)
    }

    /// Puts a discarded or cancelled job back in its queue, with its attempts reset.
    pub async fn retry(&self, id: JobId) -> Result<RetryOutcome, DbError> {
        let now = self.now();
        let id = id.to_string();
        // Not in a transaction on PostgreSQL: a unique violation would abort it.
        self.write(move |conn| {
            match store::retry(conn, &id, now) {
                Ok(1) => return Ok(RetryOutcome::Retried),
                Ok(_) => {}
                Err(e) if crate::db::is_unique_violation(&e) => return Ok(RetryOutcome::Duplicate),
                Err(e) => return Err(e.into()),
            }
            Ok(match store::find(conn, &id)? {
                Some(row) => RetryOutcome::NotRetryable(row.state),
                None => RetryOutcome::NotFound,
            })
        })
        .await
    }

    /// Queue depth per queue and state, and the age of the oldest due job per queue.
    pub async fn stats(&self) -> Result<QueueStats, DbError> {
        let now = self.now();
        let (depths, oldest) = self
            .inner
            .db
            .run_read(move |conn| Ok::<_, DbError>((store::depths(conn, now)?, store::oldest_due(conn, now)?)))
            .await?;
        let depths = depths
            .into_iter()
            .filter_map(|row| {
                let state = DepthState::parse(&row.state)?;
                Some(QueueDepth { queue: row.queue, state, count: u64::try_from(row.count).unwrap_or(0) })
            })
            .collect();
        let oldest_ready = oldest
            .into_iter()
            .filter_map(|row| {
                let oldest = row.oldest?;
                let seconds = (now - oldest).num_microseconds().unwrap_or(i64::MAX) as f64 / 1e6;
                Some(OldestReady { queue: row.queue, seconds: seconds.max(0.0) })
            })
            .collect();
        Ok(QueueStats { domain: self.inner.domain.clone(), depths, oldest_ready })
    }
}

fn summary(row: store::JobRow) -> Result<JobSummary, DbError> {
    Ok(JobSummary {
        id: row.id.parse().map_err(|e| serialization(format!("stored job id {:?}: {e}", row.id)))?,
        queue: row.queue,
        kind: row.kind,
        state: row.state,
        attempt: u32::try_from(row.attempt).unwrap_or(0),
        max_attempts: u32::try_from(row.max_attempts).unwrap_or(0),
        run_at: row.run_at.and_utc(),
        created_at: row.created_at.and_utc(),
        dedupe_key: row.dedupe_key,
        attempted_at: row.attempted_at.map(|t| t.and_utc()),
        finished_at: row.finished_at.map(|t| t.and_utc()),
        last_error: row.last_error,
    })
}

/// A value that cannot be written or read as a job (diesel's own error for that case).
fn serialization(message: String) -> DbError {
    DbError::Query(diesel::result::Error::SerializationError(message.into()))
}
