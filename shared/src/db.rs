//! The database layer: one r2d2 pool per domain over an enum connection (PostgreSQL or SQLite),
//! with every diesel call moved off the async workers onto the blocking pool.
//!
//! # Failures
//! A lost, refused or timed-out connection is [`DbError::Unavailable`], which every domain maps
//! to its `Unavailable` variant (503 with `Retry-After`), never to an internal error:
//! - each connection watches its own queries (diesel instrumentation); one that failed because
//!   the connection died is marked broken and dropped when it goes back to the pool, so the next
//!   checkout gets a fresh one;
//! - a connection that sat idle longer than `pool.check_idle_after_ms` is checked with `SELECT 1`
//!   when it is checked out, so the first requests after a database restart get live
//!   connections instead of the dead ones the pool kept;
//! - while the database refuses connections, a checkout waits at most
//!   `pool.connection_timeout_when_down_ms` instead of the full `pool.connection_timeout_ms`, so an
//!   outage answers quickly.
//!
//! # SQL that differs per engine
//! The query DSL, transactions, `Binary` (bytea/BLOB) and aggregates work on [`Conn`] for both
//! engines; `RETURNING`, `ON CONFLICT` and row locks do not compile against the enum. A store
//! function that needs them matches on the variant and calls the typed DSL on the inner
//! connection (`Conn::Pg(c) => query.for_update().load(c)`), keeping one function per
//! operation with both arms side by side. Row locks have no SQLite arm to write: SQLite write
//! transactions are serialised in the process (see [`Db::transaction`]). Every such function is
//! covered by a test that runs on both backends (`shared::backend_tests!`).

pub mod listen;

use crate::config::{Backend, DomainDatabase, PoolConfig};
use crate::secret::Secret;
use diesel::connection::{
    AnsiTransactionManager, Instrumentation, InstrumentationEvent, SimpleConnection, TransactionManager,
};
use diesel::r2d2::{CustomizeConnection, HandleError, ManageConnection, Pool, PooledConnection};
use diesel::result::{DatabaseErrorKind, Error as DieselError};
use diesel::{Connection, PgConnection, SqliteConnection};
use diesel_migrations::{EmbeddedMigrations, MigrationHarness};
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

mod metrics;

/// A connection to either backend. The query DSL, transactions and r2d2 work on it directly;
/// the few statements that differ per engine match on the variant.
#[derive(diesel::MultiConnection)]
#[allow(missing_debug_implementations)]
pub enum Conn {
    Pg(PgConnection),
    Sqlite(SqliteConnection),
}

/// A failure of the database layer itself. Domains map it once, in their service.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// No connection could be had in time, the server is down or the connection was lost:
    /// retry later.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    #[error(transparent)]
    Query(diesel::result::Error),
    #[error("migration failed: {0}")]
    Migration(String),
    #[error("database task failed: {0}")]
    Task(String),
}

impl From<DieselError> for DbError {
    /// Lost connections, statement timeouts and a locked SQLite file are unavailability, not bugs.
    fn from(error: DieselError) -> Self {
        if is_transient(&error) { Self::Unavailable(error.to_string()) } else { Self::Query(error) }
    }
}

impl DbError {
    /// Whether the error is a unique-constraint violation (the portable way to detect a duplicate).
    pub fn is_unique_violation(&self) -> bool {
        matches!(self, Self::Query(e) if is_unique_violation(e))
    }

    /// The domain error this stands for: its `Unavailable` variant or its `Internal` one.
    pub fn into_error<E: crate::error::DomainError>(self) -> E {
        match self {
            Self::Unavailable(detail) => E::unavailable(detail),
            other => E::internal(other.to_string()),
        }
    }
}

/// Implements `From<DbError>` and `From<diesel::result::Error>` for a domain error, through
/// [`DbError::into_error`].
#[macro_export]
macro_rules! impl_from_db_errors {
    ($error:ty) => {
        impl ::core::convert::From<$crate::db::DbError> for $error {
            fn from(error: $crate::db::DbError) -> Self {
                error.into_error()
            }
        }

        impl ::core::convert::From<$crate::db::__private::DieselError> for $error {
            fn from(error: $crate::db::__private::DieselError) -> Self {
                $crate::db::DbError::from(error).into_error()
            }
        }
    };
}

#[doc(hidden)]
pub mod __private {
    pub use diesel::result::Error as DieselError;
}

/// Whether a diesel error is a unique-constraint violation, on either backend.
pub fn is_unique_violation(error: &DieselError) -> bool {
    matches!(error, DieselError::DatabaseError(DatabaseErrorKind::UniqueViolation, _))
}

/// Whether the connection died under the query (PostgreSQL restarted, the backend was
/// terminated, the network dropped).
fn is_connection_lost(error: &DieselError) -> bool {
    matches!(
        error,
        DieselError::DatabaseError(DatabaseErrorKind::ClosedConnection | DatabaseErrorKind::UnableToSendCommand, _)
    )
}

/// Errors that say "not now" rather than "never": a lost connection, PostgreSQL's
/// `statement_timeout` and an SQLite file locked beyond `busy_timeout`. Diesel does not expose
/// SQLSTATE for the last two, so they are recognised by the server's (English) message.
fn is_transient(error: &DieselError) -> bool {
    if is_connection_lost(error) {
        return true;
    }
    match error {
        DieselError::DatabaseError(DatabaseErrorKind::Unknown, info) => {
            let message = info.message();
            message.contains("statement timeout") || message.contains("database is locked")
        }
        _ => false,
    }
}

/// A domain's database: its primary pool, an optional read-replica pool, and on SQLite a
/// write lock so that transactions queue in the process instead of failing with `SQLITE_BUSY`.
#[derive(Clone)]
pub struct Db {
    inner: Arc<Inner>,
}

struct Inner {
    settings: DomainDatabase,
    domain: String,
    backend: Backend,
    primary: Pool<Manager>,
    replica: Option<Pool<Manager>>,
    sqlite_writer: Mutex<()>,
    timeouts: Timeouts,
    health: Arc<Health>,
    /// Set by [`Db::observe`].
    metrics: OnceLock<metrics::Checkouts>,
}

#[derive(Debug, Clone, Copy)]
struct Timeouts {
    normal: Duration,
    when_down: Duration,
}

/// What the pools know of the server: whether the last attempt to connect failed, and how
/// many queries ran (for tests and metrics).
#[derive(Debug, Default)]
struct Health {
    connect_failing: AtomicBool,
    queries: AtomicU64,
}

impl Inner {
    /// A connection from the primary, or from the replica when asked and configured.
    ///
    /// The wait is cut in slices of `connection_timeout_when_down`: as soon as an attempt to
    /// connect has failed (the database refuses or is unreachable), the checkout gives up
    /// instead of waiting out the full timeout; a pool that is merely busy is waited for.
    fn connection(&self, replica: bool) -> Result<PooledConnection<Manager>, DbError> {
        let pool = if replica { self.replica.as_ref().unwrap_or(&self.primary) } else { &self.primary };
        let replica = replica && self.replica.is_some();
        let started = Instant::now();
        // An idle connection at once: no wait to count.
        if let Some(conn) = pool.try_get() {
            self.record_checkout(replica, false, started.elapsed(), true);
            return Ok(conn);
        }
        let deadline = started + self.timeouts.normal;
        loop {
            let slice = self.timeouts.when_down.min(deadline.saturating_duration_since(Instant::now()));
            match pool.get_timeout(slice.max(Duration::from_millis(1))) {
                Ok(conn) => {
                    self.record_checkout(replica, true, started.elapsed(), true);
                    return Ok(conn);
                }
                Err(e) if self.health.connect_failing.load(Ordering::Relaxed) || Instant::now() >= deadline => {
                    self.record_checkout(replica, true, started.elapsed(), false);
                    return Err(DbError::Unavailable(e.to_string()));
                }
                Err(_) => {}
            }
        }
    }
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db")
            .field("domain", &self.inner.domain)
            .field("backend", &self.inner.backend)
            .field("replica", &self.inner.replica.is_some())
            .finish()
    }
}

impl Db {
    /// Opens the domain's pools. Blocking: call it at start-up (or inside `spawn_blocking`).
    /// Creates the SQLite file's directory, or the PostgreSQL schema, when missing.
    pub fn connect(settings: &DomainDatabase) -> Result<Self, DbError> {
        let schema = &settings.domain;
        match settings.backend {
            Backend::Sqlite => {
                if let Some(dir) = std::path::Path::new(settings.url.expose()).parent()
                    && !dir.as_os_str().is_empty()
                {
                    std::fs::create_dir_all(dir)
                        .map_err(|e| DbError::Unavailable(format!("cannot create {}: {e}", dir.display())))?;
                }
            }
            Backend::Postgres => {
                let mut conn =
                    PgConnection::establish(settings.url.expose()).map_err(|e| DbError::Unavailable(e.to_string()))?;
                conn.batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS \"{schema}\""))?;
            }
        }
        let health = Arc::new(Health::default());
        let primary = build_pool(settings, settings.url.clone(), format!("keel-{schema}"), &health)?;
        let replica = match &settings.replica_url {
            Some(url) => Some(build_pool(settings, url.clone(), format!("keel-{schema}-replica"), &health)?),
            None => None,
        };
        let pool = &settings.pool;
        Ok(Self {
            inner: Arc::new(Inner {
                settings: settings.clone(),
                domain: settings.domain.clone(),
                backend: settings.backend,
                primary,
                replica,
                sqlite_writer: Mutex::new(()),
                timeouts: Timeouts {
                    normal: Duration::from_millis(pool.connection_timeout_ms.max(1)),
                    when_down: Duration::from_millis(pool.connection_timeout_when_down_ms.max(1)),
                },
                health,
                metrics: OnceLock::new(),
            }),
        })
    }

    pub fn backend(&self) -> Backend {
        self.inner.backend
    }

    /// The domain this database belongs to.
    pub fn domain(&self) -> &str {
        &self.inner.domain
    }

    /// The settings the pools were opened with (a job queue's `LISTEN` connection uses them).
    pub fn settings(&self) -> &DomainDatabase {
        &self.inner.settings
    }

    /// How many queries this database's connections have run since it was opened.
    pub fn query_count(&self) -> u64 {
        self.inner.health.queries.load(Ordering::Relaxed)
    }

    /// Applies a domain's pending migrations (one set per backend); returns how many ran. Blocking.
    pub fn migrate(&self, postgres: EmbeddedMigrations, sqlite: EmbeddedMigrations) -> Result<usize, DbError> {
        let mut conn = self.inner.connection(false)?;
        let applied = match &mut **conn {
            Conn::Pg(c) => c.run_pending_migrations(postgres).map(|v| v.len()),
            Conn::Sqlite(c) => c.run_pending_migrations(sqlite).map(|v| v.len()),
        };
        applied.map_err(|e| DbError::Migration(e.to_string()))
    }

    /// Runs `f` with a primary connection on the blocking pool, inside the caller's span.
    pub async fn run<T, E, F>(&self, f: F) -> Result<T, E>
    where
        F: FnOnce(&mut Conn) -> Result<T, E> + Send + 'static,
        T: Send + 'static,
        E: From<DbError> + Send + 'static,
    {
        self.with_connection(false, f).await
    }

    /// Like [`Db::run`], on the read replica when there is one. For queries that tolerate lag.
    pub async fn run_read<T, E, F>(&self, f: F) -> Result<T, E>
    where
        F: FnOnce(&mut Conn) -> Result<T, E> + Send + 'static,
        T: Send + 'static,
        E: From<DbError> + Send + 'static,
    {
        self.with_connection(true, f).await
    }

    async fn with_connection<T, E, F>(&self, replica: bool, f: F) -> Result<T, E>
    where
        F: FnOnce(&mut Conn) -> Result<T, E> + Send + 'static,
        T: Send + 'static,
        E: From<DbError> + Send + 'static,
    {
        let inner = self.inner.clone();
        blocking(move || {
            let mut conn = inner.connection(replica)?;
            f(&mut conn)
        })
        .await
    }

    /// Runs `f` in a transaction on the primary; rolled back when `f` fails.
    ///
    /// SQLite allows one writer at a time, and a deferred transaction that upgrades to a write
    /// after another connection committed fails at once, whatever the busy timeout
    /// (`SQLITE_BUSY_SNAPSHOT`). So on SQLite a transaction starts with `BEGIN IMMEDIATE`: it
    /// takes the write lock first, waiting up to the busy timeout for a writer outside any
    /// transaction (a background `UPDATE`, another process). Transactions of this process also
    /// queue on a mutex, so they do not spin on the busy handler; readers still run
    /// concurrently (WAL).
    pub async fn transaction<T, E, F>(&self, f: F) -> Result<T, E>
    where
        F: FnOnce(&mut Conn) -> Result<T, E> + Send + 'static,
        T: Send + 'static,
        E: From<DbError> + From<diesel::result::Error> + Send + 'static,
    {
        let inner = self.inner.clone();
        blocking(move || {
            let _guard = match inner.backend {
                Backend::Sqlite => Some(inner.sqlite_writer.lock().unwrap_or_else(PoisonError::into_inner)),
                Backend::Postgres => None,
            };
            let mut pooled = inner.connection(false)?;
            in_transaction(&mut pooled, f)
        })
        .await
    }

    /// Checks that the primary answers a query.
    pub async fn ping(&self) -> Result<(), DbError> {
        self.run(|conn| conn.batch_execute("SELECT 1").map_err(DbError::from)).await
    }
}

/// [`Connection::transaction`], except that SQLite begins with `BEGIN IMMEDIATE` (see
/// [`Db::transaction`]).
fn in_transaction<T, E, F>(conn: &mut Conn, f: F) -> Result<T, E>
where
    F: FnOnce(&mut Conn) -> Result<T, E>,
    E: From<diesel::result::Error>,
{
    let Conn::Sqlite(sqlite) = conn else {
        return conn.transaction(f);
    };
    AnsiTransactionManager::begin_transaction_sql(sqlite, "BEGIN IMMEDIATE")?;
    // From here as in diesel's `TransactionManager::transaction`: the state lives on the inner
    // connection, which `Conn`'s manager delegates to.
    type Manager = <Conn as Connection>::TransactionManager;
    match f(conn) {
        Ok(value) => {
            Manager::commit_transaction(conn)?;
            Ok(value)
        }
        Err(error) => match Manager::rollback_transaction(conn) {
            Ok(()) | Err(DieselError::BrokenTransactionManager) => Err(error),
            Err(rollback_error) => Err(rollback_error.into()),
        },
    }
}

async fn blocking<T, E, F>(f: F) -> Result<T, E>
where
    F: FnOnce() -> Result<T, E> + Send + 'static,
    T: Send + 'static,
    E: From<DbError> + Send + 'static,
{
    let span = tracing::Span::current();
    let work = move || span.in_scope(f);
    let task = match BACKGROUND.try_with(|_| ()).ok().and_then(|()| background_runtime()) {
        Some(pool) => pool.spawn_blocking(work),
        None => tokio::task::spawn_blocking(work),
    };
    task.await.unwrap_or_else(|e| Err(DbError::Task(e.to_string()).into()))
}

tokio::task_local! {
    static BACKGROUND: ();
}

/// How much nicer than the process the background threads are (Linux; nice values go up to 19).
pub const BACKGROUND_NICE: i32 = 10;

/// Runs `work` with the database calls it makes on the background pool: threads of their own
/// at a lower priority (Linux: `SCHED_BATCH` at [`BACKGROUND_NICE`]), for work that no request
/// waits on, such as the billing flusher's group commits.
///
/// Why: on a core shared with the HTTP worker, a commit woken on the ordinary blocking pool
/// takes the core for a whole scheduler slice (milliseconds, with SQLite's checkpoint), and the
/// calls that arrive meanwhile queue behind it. A nice value alone is not enough: a thread that
/// wakes takes the core from the running one when the scheduler deems it due, whatever their
/// weights, and the worker, which runs the most, is the one it takes it from. A `SCHED_BATCH`
/// thread never preempts at its wake-up; it runs when the worker waits (or at the next tick),
/// and a nice of 10 gives it about a tenth of the core's weight when both want it. Unlike
/// `SCHED_IDLE`, which a busy worker starves, the background work always gets that share, so
/// it never holds a lock that a request waits on for long.
pub async fn in_background<F: std::future::Future>(work: F) -> F::Output {
    BACKGROUND.scope((), work).await
}

/// Spawns `work` on the background runtime: a thread of its own (`keel-background`) at the
/// background priority, whose database calls go to the background pool. For loops that do
/// only background work, such as the billing flusher: their own wake-ups (a timer, the end of
/// each commit) then do not take the core from a request worker either. Without a background
/// runtime (it could not be built), on the current runtime.
pub fn spawn_background<F>(work: F) -> tokio::task::JoinHandle<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    match background_runtime() {
        Some(runtime) => runtime.spawn(work),
        None => tokio::spawn(work),
    }
}

/// The background runtime: driven by a thread of its own at the background priority, with a
/// blocking pool whose threads take that priority when they start. None if it could not be
/// built (the work then runs on the ordinary pool and runtime).
fn background_runtime() -> Option<&'static tokio::runtime::Handle> {
    static RUNTIME: OnceLock<Option<tokio::runtime::Handle>> = OnceLock::new();
    RUNTIME
        .get_or_init(|| {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .thread_name("keel-db-background")
                // As many as a domain pool has connections by default.
                .max_blocking_threads(16)
                .on_thread_start(lower_priority)
                .build()
                .inspect_err(|error| tracing::warn!(%error, "no background runtime"))
                .ok()?;
            let handle = runtime.handle().clone();
            std::thread::Builder::new()
                .name("keel-background".into())
                .spawn(move || {
                    lower_priority();
                    runtime.block_on(std::future::pending::<()>());
                })
                .inspect_err(|error| tracing::warn!(%error, "no background runtime"))
                .ok()?;
            Some(handle)
        })
        .as_ref()
}

/// Makes the calling thread a background one (Linux): the `SCHED_BATCH` policy at
/// [`BACKGROUND_NICE`] more than the main thread's nice value, or that nice value alone where
/// the policy is refused. Elsewhere the priority is left alone (a nice value would be the whole
/// process's).
fn lower_priority() {
    #[cfg(target_os = "linux")]
    {
        use rustix::process::{getpid, getpriority_process, setpriority_process};
        use thread_priority::{NormalThreadSchedulePolicy, ThreadPriority, ThreadPriorityValue, ThreadSchedulePolicy};
        // Relative to the process's main thread (whose id is the process's): a process started
        // with `nice` keeps its place, and a thread started by a background one, which inherits
        // its priority, does not go lower still.
        let nice = getpriority_process(Some(getpid())).map_or(BACKGROUND_NICE, |own| (own + BACKGROUND_NICE).min(19));
        let batch = ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Batch);
        // The crate takes a normal policy's nice value on a 0..=99 scale (99 the highest
        // priority, nice -20): the highest step whose nice value is `nice` or more, since an
        // unprivileged thread may raise its nice value but not lower it.
        let priority = (0..=99u8)
            .rev()
            .filter_map(|step| ThreadPriorityValue::try_from(step).ok().map(ThreadPriority::Crossplatform))
            .find(|priority| priority.to_posix(batch).is_ok_and(|value| value >= nice));
        let batched = priority.is_some_and(|priority| {
            thread_priority::set_thread_priority_and_policy(thread_priority::thread_native_id(), priority, batch)
                .is_ok()
        });
        if batched && thread_priority::thread_schedule_policy().is_ok_and(|policy| policy == batch) {
            return;
        }
        if let Err(error) = setpriority_process(None, nice) {
            tracing::debug!(%error, "the background threads keep their priority");
        }
    }
}

/// `application_name` tells the pools apart in `pg_stat_activity`.
fn build_pool(
    settings: &DomainDatabase,
    url: Secret,
    application_name: String,
    health: &Arc<Health>,
) -> Result<Pool<Manager>, DbError> {
    let pool: &PoolConfig = &settings.pool;
    let manager = Manager {
        backend: settings.backend,
        url,
        health: health.clone(),
        check_idle_after: Duration::from_millis(pool.check_idle_after_ms),
    };
    let customizer = Customizer {
        application_name,
        schema: settings.domain.clone(),
        statement_timeout_ms: settings.statement_timeout_ms,
        busy_timeout_ms: settings.busy_timeout_ms,
    };
    Pool::builder()
        .max_size(pool.max_size.max(1))
        .min_idle(pool.min_idle)
        .connection_timeout(Duration::from_millis(pool.connection_timeout_ms.max(1)))
        .idle_timeout(pool.idle_timeout_secs.map(Duration::from_secs))
        .max_lifetime(pool.max_lifetime_secs.map(Duration::from_secs))
        // Cheap: `is_valid` only costs a round trip for connections idle past the threshold.
        .test_on_check_out(true)
        .connection_customizer(Box::new(customizer))
        .error_handler(Box::new(ConnectErrors { domain: settings.domain.clone() }))
        .build(manager)
        .map_err(|e| DbError::Unavailable(e.to_string()))
}

/// Logs the pool's failed attempts to connect (r2d2 reports them through the `log` crate
/// otherwise, which Keel does not collect).
#[derive(Debug)]
struct ConnectErrors {
    domain: String,
}

impl HandleError<diesel::r2d2::Error> for ConnectErrors {
    fn handle_error(&self, error: diesel::r2d2::Error) {
        tracing::warn!(db.domain = %self.domain, error = %error, "cannot open a database connection");
    }
}

/// A pooled connection and what the pool needs to know about it.
pub struct Pooled {
    conn: Conn,
    /// Set by the connection's instrumentation when a query found the connection dead.
    lost: Arc<AtomicBool>,
    /// When the connection last went back to the pool.
    returned_at: Instant,
}

impl std::fmt::Debug for Pooled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pooled")
            .field("lost", &self.lost)
            .field("returned_at", &self.returned_at)
            .finish_non_exhaustive()
    }
}

impl Deref for Pooled {
    type Target = Conn;

    fn deref(&self) -> &Conn {
        &self.conn
    }
}

impl DerefMut for Pooled {
    fn deref_mut(&mut self) -> &mut Conn {
        &mut self.conn
    }
}

/// Watches every query of one connection: counts them, and flags the connection when the
/// server went away under it.
struct Watch {
    lost: Arc<AtomicBool>,
    health: Arc<Health>,
}

impl Instrumentation for Watch {
    fn on_connection_event(&mut self, event: InstrumentationEvent<'_>) {
        if let InstrumentationEvent::FinishQuery { error, .. } = event {
            self.health.queries.fetch_add(1, Ordering::Relaxed);
            if error.is_some_and(is_connection_lost) {
                self.lost.store(true, Ordering::Relaxed);
            }
        }
    }
}

/// Opens connections of the configured backend (the derive's own `establish` would try each
/// backend in turn and hide the real error).
struct Manager {
    backend: Backend,
    url: Secret,
    health: Arc<Health>,
    check_idle_after: Duration,
}

impl ManageConnection for Manager {
    type Connection = Pooled;
    type Error = diesel::r2d2::Error;

    fn connect(&self) -> Result<Pooled, Self::Error> {
        let conn = match self.backend {
            Backend::Postgres => PgConnection::establish(self.url.expose()).map(Conn::Pg),
            Backend::Sqlite => SqliteConnection::establish(self.url.expose()).map(Conn::Sqlite),
        };
        self.health.connect_failing.store(conn.is_err(), Ordering::Relaxed);
        let mut conn = conn.map_err(diesel::r2d2::Error::ConnectionError)?;
        let lost = Arc::new(AtomicBool::new(false));
        conn.set_instrumentation(Watch { lost: lost.clone(), health: self.health.clone() });
        Ok(Pooled { conn, lost, returned_at: Instant::now() })
    }

    /// Called at checkout: a connection used recently is trusted; one idle for longer may have
    /// been cut by a restart or a firewall and costs one round trip to check.
    fn is_valid(&self, conn: &mut Pooled) -> Result<(), Self::Error> {
        if conn.returned_at.elapsed() < self.check_idle_after {
            return Ok(());
        }
        conn.conn.batch_execute("SELECT 1").map_err(diesel::r2d2::Error::QueryError)
    }

    /// Called when the connection goes back to the pool.
    fn has_broken(&self, conn: &mut Pooled) -> bool {
        conn.returned_at = Instant::now();
        let lost = conn.lost.load(Ordering::Relaxed);
        lost || match &mut conn.conn {
            Conn::Pg(c) => diesel::r2d2::R2D2Connection::is_broken(c),
            Conn::Sqlite(c) => diesel::r2d2::R2D2Connection::is_broken(c),
        }
    }
}

/// Per-connection session settings: the domain's schema on PostgreSQL, WAL and timeouts on SQLite.
#[derive(Debug)]
struct Customizer {
    application_name: String,
    schema: String,
    statement_timeout_ms: u64,
    busy_timeout_ms: u64,
}

impl CustomizeConnection<Pooled, diesel::r2d2::Error> for Customizer {
    fn on_acquire(&self, conn: &mut Pooled) -> Result<(), diesel::r2d2::Error> {
        let sql = match &conn.conn {
            Conn::Pg(_) => format!(
                "SET search_path TO \"{schema}\"; SET statement_timeout = {timeout}; \
                 SET application_name = '{application_name}';",
                schema = self.schema,
                application_name = self.application_name,
                timeout = self.statement_timeout_ms,
            ),
            Conn::Sqlite(_) => format!(
                "PRAGMA journal_mode = WAL; PRAGMA busy_timeout = {}; PRAGMA foreign_keys = ON; \
                 PRAGMA synchronous = NORMAL;",
                self.busy_timeout_ms
            ),
        };
        conn.conn.batch_execute(&sql).map_err(diesel::r2d2::Error::QueryError)
    }
}
