//! Test support: a fresh database per test, on SQLite always and on PostgreSQL when
//! `KEEL_TEST_DATABASE_URL` is set; a Redis handle when `KEEL_TEST_REDIS_URL` is set. With
//! `CI=true`, a missing PostgreSQL or Redis URL fails the run instead of silently testing less.
//!
//! [`backend_tests!`](crate::backend_tests) turns one test body into one test per backend,
//! named `<test>::sqlite` and `<test>::postgres`, so a test log shows what ran where.
//! On PostgreSQL, [`TestDatabase::migrated`] clones each test's database from a template that
//! was migrated once per test process, instead of running every migration for every test.

use crate::config::{DatabaseConfig, DatabaseOverride, DomainDatabase};
use crate::db::Db;
use crate::module::{Component, Contracts, Module, Platform};
use crate::ratelimit::InMemoryFailureLimiter;
use crate::scope::Scopes;
use crate::secret::Secret;
use crate::{Clock, SystemClock};
use diesel::connection::SimpleConnection;
use diesel::{Connection, PgConnection};
use std::collections::HashMap;
use std::process::Command;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

pub const DATABASE_URL_VAR: &str = "KEEL_TEST_DATABASE_URL";
pub const REDIS_URL_VAR: &str = "KEEL_TEST_REDIS_URL";

/// A database engine a test runs against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TestBackend {
    Sqlite,
    /// An admin URL of a PostgreSQL server where the test may create databases.
    Postgres(String),
}

pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// Reads an environment variable a suite needs; in CI its absence is a failure.
pub fn required_in_ci(var: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(value) if !value.trim().is_empty() => Some(value),
        _ => {
            assert!(!in_ci(), "{var} must be set when CI=true: the suite must also run against the real service");
            None
        }
    }
}

/// The PostgreSQL backend, when configured (in CI it must be). Without it a `::postgres` test
/// says so on stderr and passes without running, which only happens outside CI.
pub fn postgres() -> Option<TestBackend> {
    let url = required_in_ci(DATABASE_URL_VAR).map(TestBackend::Postgres);
    if url.is_none() {
        eprintln!("skipped: {DATABASE_URL_VAR} is not set");
    }
    url
}

/// The backends every database test runs against.
pub fn backends() -> Vec<TestBackend> {
    let mut backends = vec![TestBackend::Sqlite];
    if let Some(url) = required_in_ci(DATABASE_URL_VAR) {
        backends.push(TestBackend::Postgres(url));
    }
    backends
}

/// The Redis server the Redis suites run against (`KEEL_TEST_REDIS_URL`); in CI its absence is
/// a failure, elsewhere those suites are skipped.
pub fn redis_url() -> Option<String> {
    required_in_ci(REDIS_URL_VAR)
}

/// A Redis handle for one test: a key prefix of its own so tests (and test runs) never see each
/// other's keys or messages, a quick health check, and a command timeout generous enough that a
/// busy CI machine does not look like a Redis outage. `None` when no Redis is configured.
pub async fn test_redis() -> Option<crate::redis::Redis> {
    let url = redis_url()?;
    let config = crate::redis::RedisConfig {
        url: Some(Secret::new(url)),
        health_interval_ms: 100,
        command_timeout_ms: 1_000,
        connect_timeout_ms: 1_000,
        key_prefix: format!("keel_test_{}", uuid::Uuid::now_v7().simple()),
    };
    let redis = crate::redis::Redis::from_config(&config)
        .await
        .unwrap_or_else(|e| panic!("{REDIS_URL_VAR}: {e}"))
        .unwrap_or_else(|| panic!("{REDIS_URL_VAR}: no url"));
    assert!(redis.is_up(), "cannot reach {REDIS_URL_VAR}");
    Some(redis)
}

/// The local Redis server, stopped on demand and started again when asked or when dropped
/// (even on panic).
#[derive(Debug)]
pub struct LocalRedis {
    port: u16,
}

impl LocalRedis {
    /// The Redis of `url`, which must be on this machine: tests that stop it stop it for real.
    pub fn new(url: &str) -> Option<Self> {
        let rest = url.strip_prefix("redis://")?;
        let host_port = rest.split(['/', '?']).next()?.rsplit('@').next()?;
        let (host, port) = host_port.rsplit_once(':').unwrap_or((host_port, "6379"));
        let loopback = matches!(host, "127.0.0.1" | "localhost" | "[::1]");
        assert!(loopback, "the outage tests stop Redis: KEEL_TEST_REDIS_URL must point at this machine");
        Some(Self { port: port.parse().ok()? })
    }

    pub fn answers(&self) -> bool {
        Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "ping"])
            .output()
            .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).trim() == "PONG")
    }

    /// `SHUTDOWN NOSAVE`, then waits until it no longer answers.
    pub fn stop(&self) {
        let _ = Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "shutdown", "nosave"])
            .output();
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.answers() {
            assert!(Instant::now() < deadline, "redis did not stop");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts it the way the machine's set-up does, and waits until it answers.
    pub fn start(&self) {
        if self.answers() {
            return;
        }
        let status = Command::new("redis-server")
            .args(["--daemonize", "yes", "--bind", "127.0.0.1", "-::1", "--port", &self.port.to_string()])
            .args(["--save", "", "--appendonly", "no", "--dir", "/var/lib/redis", "--logfile", "/var/log/redis/ci.log"])
            .status();
        if !matches!(status, Ok(s) if s.success()) {
            eprintln!("could not start redis-server: {status:?}");
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.answers() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for LocalRedis {
    fn drop(&mut self) {
        self.start();
    }
}

/// One test per backend from one body: `backend_tests! { async fn name(backend) { … } }`
/// defines the tests `name::sqlite` and `name::postgres`, each with `backend: TestBackend`.
#[macro_export]
macro_rules! backend_tests {
    ($($(#[$meta:meta])* async fn $name:ident($backend:ident) $body:block)*) => {
        $(
            $(#[$meta])*
            mod $name {
                #[allow(unused_imports)]
                use super::*;

                #[tokio::test]
                async fn sqlite() {
                    let $backend = $crate::testing::TestBackend::Sqlite;
                    $body
                }

                #[tokio::test]
                async fn postgres() {
                    let Some($backend) = $crate::testing::postgres() else { return };
                    $body
                }
            }
        )*
    };
}

/// A fresh database, removed when dropped.
#[derive(Debug)]
pub struct TestDatabase {
    config: DatabaseConfig,
    _dir: Option<tempfile::TempDir>,
    postgres: Option<(String, String)>,
}

impl TestDatabase {
    /// An empty database.
    pub fn new(backend: &TestBackend) -> Self {
        Self::create(backend, None)
    }

    /// A database where every domain of `modules` is migrated. On PostgreSQL it is a copy of a
    /// template migrated once per test process (and per set of domains).
    pub fn migrated(backend: &TestBackend, modules: &[Arc<dyn Module>]) -> Self {
        match backend {
            TestBackend::Sqlite => {
                let database = Self::create(backend, None);
                migrate(&database.config, modules);
                database
            }
            TestBackend::Postgres(admin_url) => {
                let template = template(admin_url, modules);
                Self::create(backend, Some(&template))
            }
        }
    }

    fn create(backend: &TestBackend, template: Option<&str>) -> Self {
        match backend {
            TestBackend::Sqlite => {
                let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("temp dir: {e}"));
                let config = DatabaseConfig {
                    url: Secret::new(format!("sqlite://{}", dir.path().display())),
                    pool: small_pool(),
                    ..DatabaseConfig::default()
                };
                Self { config, _dir: Some(dir), postgres: None }
            }
            TestBackend::Postgres(admin_url) => {
                let name = format!("keel_test_{}", uuid::Uuid::now_v7().simple());
                let template = template.map(|t| format!(" TEMPLATE \"{t}\"")).unwrap_or_default();
                admin(admin_url)
                    .batch_execute(&format!("CREATE DATABASE \"{name}\"{template}"))
                    .unwrap_or_else(|e| panic!("create test database: {e}"));
                let config = DatabaseConfig {
                    url: Secret::new(with_database(admin_url, &name)),
                    pool: small_pool(),
                    ..DatabaseConfig::default()
                };
                Self { config, _dir: None, postgres: Some((admin_url.clone(), name)) }
            }
        }
    }

    /// The shared database config pointing at this database.
    pub fn config(&self) -> DatabaseConfig {
        self.config.clone()
    }

    /// The resolved settings of one domain in this database.
    pub fn domain(&self, domain: &str) -> DomainDatabase {
        self.config
            .for_domain(domain, &DatabaseOverride::default())
            .unwrap_or_else(|e| panic!("test database config: {e}"))
    }

    pub fn is_postgres(&self) -> bool {
        self.postgres.is_some()
    }

    /// The name of the PostgreSQL database, if it is one.
    pub fn postgres_name(&self) -> Option<&str> {
        self.postgres.as_ref().map(|(_, name)| name.as_str())
    }

    /// Opens `domain`'s pools on this database (blocking work done off the runtime's thread).
    pub async fn open(&self, domain: &str) -> Db {
        let settings = self.domain(domain);
        tokio::task::spawn_blocking(move || Db::connect(&settings))
            .await
            .unwrap_or_else(|e| panic!("open {e}"))
            .unwrap_or_else(|e| panic!("open the test database: {e}"))
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        if let Some((admin_url, name)) = &self.postgres
            && let Ok(mut admin) = PgConnection::establish(admin_url)
        {
            let _ = admin.batch_execute(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"));
        }
    }
}

fn admin(admin_url: &str) -> PgConnection {
    PgConnection::establish(admin_url).unwrap_or_else(|e| panic!("cannot reach {DATABASE_URL_VAR}: {e}"))
}

/// Applies every module's migrations to its domain in `config`.
fn migrate(config: &DatabaseConfig, modules: &[Arc<dyn Module>]) {
    for module in modules {
        let settings = config
            .for_domain(module.name(), &DatabaseOverride::default())
            .unwrap_or_else(|e| panic!("test database config: {e}"));
        let db = Db::connect(&settings).unwrap_or_else(|e| panic!("open {}: {e}", module.name()));
        let migrations = module.migrations();
        db.migrate(migrations.postgres, migrations.sqlite).unwrap_or_else(|e| panic!("migrate {}: {e}", module.name()));
        crate::jobs::migrate(&db).unwrap_or_else(|e| panic!("migrate {}'s job queue: {e}", module.name()));
    }
}

/// The template of this process for these domains: built on first use, named after the process
/// so that concurrent test processes never share one; templates of processes that are gone are
/// dropped when a new one is built.
fn template(admin_url: &str, modules: &[Arc<dyn Module>]) -> String {
    static TEMPLATES: OnceLock<Mutex<HashMap<String, String>>> = OnceLock::new();
    let mut names: Vec<&str> = modules.iter().map(|m| m.name()).collect();
    names.sort_unstable();
    let key = names.join("_");
    let templates = TEMPLATES.get_or_init(Default::default);
    let mut templates = templates.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(name) = templates.get(&key) {
        return name.clone();
    }
    drop_orphan_templates(admin_url);
    let name = format!("keel_tpl_{}_{}", std::process::id(), uuid::Uuid::now_v7().simple());
    admin(admin_url)
        .batch_execute(&format!("CREATE DATABASE \"{name}\""))
        .unwrap_or_else(|e| panic!("create template database: {e}"));
    // No idle connections kept (`min_idle = 0`), and the pools close when `migrate` returns: a
    // template must have no open connection when it is copied.
    let config = DatabaseConfig {
        url: Secret::new(with_database(admin_url, &name)),
        pool: small_pool(),
        ..DatabaseConfig::default()
    };
    migrate(&config, modules);
    templates.insert(key, name.clone());
    name
}

/// Drops the templates whose process has exited (Linux: no `/proc/<pid>`).
fn drop_orphan_templates(admin_url: &str) {
    use diesel::prelude::*;
    use diesel::sql_types::Text;

    #[derive(QueryableByName)]
    struct Name {
        #[diesel(sql_type = Text)]
        datname: String,
    }

    let mut conn = admin(admin_url);
    let Ok(names) =
        diesel::sql_query("SELECT datname::text AS datname FROM pg_database WHERE datname LIKE 'keel_tpl_%'")
            .load::<Name>(&mut conn)
    else {
        return;
    };
    for Name { datname } in names {
        let pid = datname.strip_prefix("keel_tpl_").and_then(|rest| rest.split('_').next());
        if let Some(pid) = pid
            && !std::path::Path::new(&format!("/proc/{pid}")).exists()
        {
            let _ = conn.batch_execute(&format!("DROP DATABASE IF EXISTS \"{datname}\" WITH (FORCE)"));
        }
    }
}

fn small_pool() -> crate::config::PoolConfig {
    crate::config::PoolConfig { max_size: 4, min_idle: Some(0), ..Default::default() }
}

/// The same server URL with another database name.
pub fn with_database(url: &str, database: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) => {
            parsed.set_path(&format!("/{database}"));
            parsed.to_string()
        }
        Err(e) => panic!("{DATABASE_URL_VAR} is not a URL: {e}"),
    }
}

/// The platform a test builds domains with: the system clock, an in-process failure limiter,
/// and the scopes of `modules`.
pub fn platform(modules: &[Arc<dyn Module>]) -> Platform {
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    platform_with(modules, clock)
}

/// Like [`platform`], with the given clock.
pub fn platform_with(modules: &[Arc<dyn Module>], clock: Arc<dyn Clock>) -> Platform {
    Platform {
        clock: clock.clone(),
        failure_limiter: Arc::new(InMemoryFailureLimiter::new(clock)),
        scopes: Scopes::new(modules.iter().flat_map(|m| m.scopes().iter().copied()).collect()),
        remote: Default::default(),
        redis: None,
        cache_backplane: None,
        rate_limiter: Arc::new(crate::ratelimit::LocalRateLimiter::new()),
        rate_limit_fallback: None,
        metrics: crate::metrics::Metrics::new(&crate::metrics::BuildInfo {
            version: "test".into(),
            commit: "test".into(),
        }),
        serving: true,
    }
}

/// Builds `modules` in-process on `database` the way the gateway does (each with the contracts
/// of the ones before it) and returns every contract they provide.
pub async fn build(modules: &[Arc<dyn Module>], database: &TestDatabase, platform: &Platform) -> Contracts {
    build_components(modules, database, platform).await.0
}

/// Like [`build`], with each module's component too (in the order of `modules`), for a test
/// that runs a domain's jobs.
pub async fn build_components(
    modules: &[Arc<dyn Module>],
    database: &TestDatabase,
    platform: &Platform,
) -> (Contracts, Vec<Arc<dyn Component>>) {
    let mut contracts = Contracts::default();
    let mut components = Vec::with_capacity(modules.len());
    for module in modules {
        let component: Arc<dyn Component> = module
            .build_local(database.open(module.name()).await, platform, &contracts)
            .await
            .unwrap_or_else(|e| panic!("build {}: {e}", module.name()));
        component.provide(&mut contracts);
        components.push(component);
    }
    (contracts, components)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn with_database_swaps_only_the_path() {
        assert_eq!(
            with_database("postgres://root@127.0.0.1:5432/test?sslmode=disable", "x"),
            "postgres://root@127.0.0.1:5432/x?sslmode=disable"
        );
        assert_eq!(with_database("postgres://root@localhost", "x"), "postgres://root@localhost/x");
    }
}
