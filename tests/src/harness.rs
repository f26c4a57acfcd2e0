//! Gateways and services for tests: in-process, auth-only, or remote, on a given test database.

use auth::config::Argon2Config;
use auth::{AuthApi, AuthConfig, AuthModule};
use gateway::{GatewayConfig, RunningGateway};
use shared::Secret;
use shared::module::Module;
use shared::redis::RedisConfig;
use shared::testing::{TestBackend, TestDatabase};
use std::sync::Arc;

/// argon2 parameters that make a hash take about a millisecond.
pub const FAST_ARGON2: Argon2Config = Argon2Config { memory_kib: 1024, iterations: 1, parallelism: 1 };

/// The default auth settings with cheap password hashing.
pub fn fast_auth_config() -> AuthConfig {
    AuthConfig { argon2: FAST_ARGON2, ..AuthConfig::default() }
}

/// A gateway on `127.0.0.1:0` over `database`, with cheap hashing and two workers.
/// A gateway on `127.0.0.1:0` over `database`, with cheap hashing, two workers, and Redis when
/// `KEEL_TEST_REDIS_URL` is set (required in CI), under a key prefix of its own: gateways made
/// from one config share their Redis state like processes of one deployment; others do not.
pub fn gateway_config(database: &TestDatabase) -> GatewayConfig {
    let mut config = GatewayConfig { database: database.config(), auth: fast_auth_config(), ..Default::default() };
    config.http.addr = "127.0.0.1:0".into();
    config.http.workers = 2;
    config.redis = redis_config();
    config
}

/// Redis settings for one test deployment: `KEEL_TEST_REDIS_URL` and a fresh key prefix; no URL
/// (in-process everything) when the variable is not set outside CI.
pub fn redis_config() -> RedisConfig {
    RedisConfig {
        url: shared::testing::redis_url().map(Secret::new),
        key_prefix: format!("keel_test_{}", uuid::Uuid::now_v7().simple()),
        // A busy CI machine must not look like a Redis outage.
        command_timeout_ms: 1_000,
        ..RedisConfig::default()
    }
}

/// Every registered domain with its default configuration: what a test database is migrated for.
pub fn modules() -> Vec<Arc<dyn Module>> {
    GatewayConfig::default().modules()
}

/// A fresh database with every registered domain migrated.
pub fn database(backend: &TestBackend) -> TestDatabase {
    TestDatabase::migrated(backend, &modules())
}

/// The in-process auth service over `database`, built by its module as the gateway builds it.
pub async fn auth_service(database: &TestDatabase, config: AuthConfig) -> Arc<dyn AuthApi> {
    let modules: Vec<Arc<dyn Module>> = vec![Arc::new(AuthModule::new(config))];
    let platform = shared::testing::platform(&self::modules());
    shared::testing::build(&modules, database, &platform).await.get::<dyn AuthApi>().unwrap()
}

/// A gateway serving in the background; stopped when dropped.
#[derive(Debug)]
pub struct TestGateway {
    pub running: RunningGateway,
}

impl TestGateway {
    /// Starts a gateway with `config`, serving `only` (every domain when `None`).
    pub async fn start(config: GatewayConfig, only: Option<&[&str]>) -> Self {
        let only = only.map(|names| names.iter().map(|n| n.to_string()).collect());
        Self { running: gateway::start(config, only).await.unwrap() }
    }

    /// Every domain in-process over `database`.
    pub async fn in_process(database: &TestDatabase) -> Self {
        Self::start(gateway_config(database), None).await
    }

    /// Only the auth domain, in-process over `database` (`gateway serve --only auth`).
    pub async fn auth_only(database: &TestDatabase) -> Self {
        Self::start(gateway_config(database), Some(&[auth::DOMAIN])).await
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        self.running.url()
    }

    pub fn client(&self) -> crate::Client {
        crate::Client::new(self.url())
    }

    /// Stops gracefully and waits for the server to finish.
    pub async fn stop(self) {
        self.running.stop(true).await.unwrap();
    }
}

/// Everything the auth domain stored, as bytes: on SQLite the database file with its `-wal`
/// and `-shm` files; on PostgreSQL every row of every table of the `auth` schema, as text.
pub fn stored_bytes(database: &TestDatabase) -> Vec<u8> {
    let settings = database.domain(auth::DOMAIN);
    if database.is_postgres() {
        postgres_dump(settings.url.expose(), auth::DOMAIN)
    } else {
        let path = settings.url.expose();
        let mut bytes = std::fs::read(path).unwrap();
        for suffix in ["-wal", "-shm", "-journal"] {
            if let Ok(more) = std::fs::read(format!("{path}{suffix}")) {
                bytes.extend(more);
            }
        }
        bytes
    }
}

fn postgres_dump(url: &str, schema: &str) -> Vec<u8> {
    use diesel::prelude::*;
    use diesel::sql_types::Text;

    #[derive(QueryableByName)]
    struct Name {
        #[diesel(sql_type = Text)]
        name: String,
    }

    #[derive(QueryableByName)]
    struct Row {
        #[diesel(sql_type = Text)]
        row: String,
    }

    let mut conn = PgConnection::establish(url).unwrap();
    let tables: Vec<Name> = diesel::sql_query(
        "SELECT table_name::text AS name FROM information_schema.tables \
         WHERE table_schema = $1 AND table_type = 'BASE TABLE'",
    )
    .bind::<Text, _>(schema)
    .load(&mut conn)
    .unwrap();
    assert!(tables.iter().any(|t| t.name == "api_keys"), "no auth tables in schema {schema}");
    let mut dump = Vec::new();
    for table in tables {
        // A whole row as text covers every column, whatever its type.
        let rows: Vec<Row> = diesel::sql_query(format!("SELECT t::text AS row FROM \"{schema}\".\"{}\" t", table.name))
            .load(&mut conn)
            .unwrap();
        for row in rows {
            dump.extend_from_slice(row.row.as_bytes());
            dump.push(b'\n');
        }
    }
    dump
}

/// Whether `needle` occurs anywhere in `haystack`.
pub fn contains(haystack: &[u8], needle: &str) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle.as_bytes())
}

/// The PostgreSQL server's log file, when `database` is on PostgreSQL and the log can be read:
/// `pg_current_logfile()` with a logging collector, else Debian's
/// `/var/log/postgresql/postgresql-<cluster_name with - for />.log`. In CI it must be found.
pub fn postgres_log(database: &TestDatabase) -> Option<std::path::PathBuf> {
    use diesel::prelude::*;
    use diesel::sql_types::{Nullable, Text};

    #[derive(QueryableByName)]
    struct Setting {
        #[diesel(sql_type = Nullable<Text>)]
        value: Option<String>,
    }

    if !database.is_postgres() {
        return None;
    }
    let mut conn = PgConnection::establish(database.domain(auth::DOMAIN).url.expose()).unwrap();
    let mut setting = |sql: &str| diesel::sql_query(sql).get_result::<Setting>(&mut conn).unwrap().value;
    let data_directory = setting("SELECT current_setting('data_directory') AS value");
    let candidates = [
        setting("SELECT pg_current_logfile() AS value")
            .map(|f| std::path::Path::new(&data_directory.unwrap_or_default()).join(f)),
        setting("SELECT current_setting('cluster_name') AS value")
            .filter(|c| !c.is_empty())
            .map(|c| format!("/var/log/postgresql/postgresql-{}.log", c.replace('/', "-")).into()),
    ];
    let found = candidates.into_iter().flatten().find(|path| std::fs::File::open(path).is_ok());
    assert!(found.is_some() || !shared::testing::in_ci(), "the PostgreSQL server log cannot be read");
    found
}
