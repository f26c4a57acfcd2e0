//! The database layer: one r2d2 pool per domain over an enum connection (PostgreSQL or SQLite),
//! with every diesel call moved off the async workers onto the blocking pool.

use crate::config::{Backend, DomainDatabase, PoolConfig};
use crate::secret::Secret;
use diesel::connection::SimpleConnection;
use diesel::r2d2::{CustomizeConnection, ManageConnection, Pool, PooledConnection, R2D2Connection};
use diesel::{Connection, PgConnection, SqliteConnection};
use diesel_migrations::{EmbeddedMigrations, MigrationHarness};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

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
    /// No connection could be had in time, or the server is down: retry later.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    #[error(transparent)]
    Query(#[from] diesel::result::Error),
    #[error("migration failed: {0}")]
    Migration(String),
    #[error("database task failed: {0}")]
    Task(String),
}

impl DbError {
    /// Whether the error is a unique-constraint violation (the portable way to detect a duplicate).
    pub fn is_unique_violation(&self) -> bool {
        matches!(self, Self::Query(e) if is_unique_violation(e))
    }
}

/// Whether a diesel error is a unique-constraint violation, on either backend.
pub fn is_unique_violation(error: &diesel::result::Error) -> bool {
    matches!(error, diesel::result::Error::DatabaseError(diesel::result::DatabaseErrorKind::UniqueViolation, _))
}

/// A domain's database: its primary pool, an optional read-replica pool, and on SQLite a
/// write lock so that transactions queue in the process instead of failing with `SQLITE_BUSY`.
#[derive(Clone)]
pub struct Db {
    inner: Arc<Inner>,
}

struct Inner {
    domain: String,
    backend: Backend,
    primary: Pool<Manager>,
    replica: Option<Pool<Manager>>,
    sqlite_writer: Mutex<()>,
    /// Set by [`Db::observe`].
    metrics: OnceLock<metrics::Checkouts>,
}

impl Inner {
    /// A connection from the primary, or from the replica when asked and configured.
    fn connection(&self, replica: bool) -> Result<PooledConnection<Manager>, DbError> {
        let pool = if replica { self.replica.as_ref().unwrap_or(&self.primary) } else { &self.primary };
        self.checkout(pool, replica && self.replica.is_some()).map_err(|e| DbError::Unavailable(e.to_string()))
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
        let primary = build_pool(settings, settings.url.clone(), &settings.pool, format!("keel-{schema}"))?;
        let replica = match &settings.replica_url {
            Some(url) => Some(build_pool(settings, url.clone(), &settings.pool, format!("keel-{schema}-replica"))?),
            None => None,
        };
        Ok(Self {
            inner: Arc::new(Inner {
                domain: settings.domain.clone(),
                backend: settings.backend,
                primary,
                replica,
                sqlite_writer: Mutex::new(()),
                metrics: OnceLock::new(),
            }),
        })
    }

    pub fn backend(&self) -> Backend {
        self.inner.backend
    }

    /// Applies a domain's pending migrations (one set per backend); returns how many ran. Blocking.
    pub fn migrate(&self, postgres: EmbeddedMigrations, sqlite: EmbeddedMigrations) -> Result<usize, DbError> {
        let mut conn = self.inner.connection(false)?;
        let applied = match &mut *conn {
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
    /// after another writer committed fails at once, whatever the busy timeout. Serialising
    /// write transactions in the process avoids that; readers still run concurrently (WAL).
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
            let conn: &mut Conn = &mut pooled;
            conn.transaction(f)
        })
        .await
    }

    /// Checks that the primary answers a query.
    pub async fn ping(&self) -> Result<(), DbError> {
        self.run(|conn| conn.batch_execute("SELECT 1").map_err(DbError::from)).await
    }
}

async fn blocking<T, E, F>(f: F) -> Result<T, E>
where
    F: FnOnce() -> Result<T, E> + Send + 'static,
    T: Send + 'static,
    E: From<DbError> + Send + 'static,
{
    let span = tracing::Span::current();
    tokio::task::spawn_blocking(move || span.in_scope(f))
        .await
        .unwrap_or_else(|e| Err(DbError::Task(e.to_string()).into()))
}

/// `application_name` tells the pools apart in `pg_stat_activity`.
fn build_pool(
    settings: &DomainDatabase,
    url: Secret,
    pool: &PoolConfig,
    application_name: String,
) -> Result<Pool<Manager>, DbError> {
    let manager = Manager { backend: settings.backend, url };
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
        // A checkout test costs a round trip per request; broken connections are caught by
        // `has_broken` instead.
        .test_on_check_out(false)
        .connection_customizer(Box::new(customizer))
        .build(manager)
        .map_err(|e| DbError::Unavailable(e.to_string()))
}

/// Opens connections of the configured backend (the derive's own `establish` would try each
/// backend in turn and hide the real error).
struct Manager {
    backend: Backend,
    url: Secret,
}

impl ManageConnection for Manager {
    type Connection = Conn;
    type Error = diesel::r2d2::Error;

    fn connect(&self) -> Result<Conn, Self::Error> {
        let conn = match self.backend {
            Backend::Postgres => PgConnection::establish(self.url.expose()).map(Conn::Pg),
            Backend::Sqlite => SqliteConnection::establish(self.url.expose()).map(Conn::Sqlite),
        };
        conn.map_err(diesel::r2d2::Error::ConnectionError)
    }

    fn is_valid(&self, conn: &mut Conn) -> Result<(), Self::Error> {
        conn.batch_execute("SELECT 1").map_err(diesel::r2d2::Error::QueryError)
    }

    fn has_broken(&self, conn: &mut Conn) -> bool {
        match conn {
            Conn::Pg(c) => c.is_broken(),
            Conn::Sqlite(c) => c.is_broken(),
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

impl CustomizeConnection<Conn, diesel::r2d2::Error> for Customizer {
    fn on_acquire(&self, conn: &mut Conn) -> Result<(), diesel::r2d2::Error> {
        let sql = match conn {
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
        conn.batch_execute(&sql).map_err(diesel::r2d2::Error::QueryError)
    }
}
