//! Test support: a fresh database per test, on SQLite always and on PostgreSQL when
//! `KEEL_TEST_DATABASE_URL` is set; a Redis handle when `KEEL_TEST_REDIS_URL` is set. With
//! `CI=true`, a missing PostgreSQL or Redis URL fails the run instead of silently testing less.

use crate::config::{DatabaseConfig, DatabaseOverride, DomainDatabase};
use crate::secret::Secret;
use diesel::connection::SimpleConnection;
use diesel::{Connection, PgConnection};

pub const DATABASE_URL_VAR: &str = "KEEL_TEST_DATABASE_URL";
pub const REDIS_URL_VAR: &str = "KEEL_TEST_REDIS_URL";

/// A database engine a test runs against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TestBackend {
    Sqlite,
    /// An admin URL of a PostgreSQL server where the test may create databases.
    Postgres(String),
}

fn in_ci() -> bool {
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
        ..Default::default()
    };
    let redis = crate::redis::Redis::from_config(&config)
        .await
        .unwrap_or_else(|e| panic!("{REDIS_URL_VAR}: {e}"))
        .unwrap_or_else(|| panic!("{REDIS_URL_VAR}: no url"));
    assert!(redis.is_up(), "cannot reach {REDIS_URL_VAR}");
    Some(redis)
}

/// A fresh, empty database, removed when dropped.
#[derive(Debug)]
pub struct TestDatabase {
    config: DatabaseConfig,
    _dir: Option<tempfile::TempDir>,
    postgres: Option<(String, String)>,
}

impl TestDatabase {
    pub fn new(backend: &TestBackend) -> Self {
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
                let mut admin = PgConnection::establish(admin_url)
                    .unwrap_or_else(|e| panic!("cannot reach {DATABASE_URL_VAR}: {e}"));
                admin
                    .batch_execute(&format!("CREATE DATABASE \"{name}\""))
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

fn small_pool() -> crate::config::PoolConfig {
    crate::config::PoolConfig { max_size: 4, min_idle: Some(0), ..Default::default() }
}

/// The same server URL with another database name.
fn with_database(url: &str, database: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) => {
            parsed.set_path(&format!("/{database}"));
            parsed.to_string()
        }
        Err(e) => panic!("{DATABASE_URL_VAR} is not a URL: {e}"),
    }
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
