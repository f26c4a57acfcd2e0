//! Configuration types shared by the gateway and the domains, and the loader.
//!
//! Sources, later ones winning: built-in defaults, an optional TOML file (`gateway --config FILE`),
//! then `KEEL_`-prefixed environment variables with `__` for nesting
//! (`KEEL_DATABASE__URL=postgres://…` sets `database.url`).

use crate::secret::Secret;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Where a domain's data lives, and how its pool behaves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseConfig {
    /// `postgres://…` moves every domain to PostgreSQL, one schema per domain.
    /// `sqlite://DIR` keeps one SQLite file per domain in DIR (`DIR/auth.db`);
    /// `sqlite://FILE.db` names the file itself (useful in a domain's own override).
    pub url: Secret,
    /// An optional read replica (PostgreSQL only) for read-only queries.
    pub replica_url: Option<Secret>,
    pub pool: PoolConfig,
    /// PostgreSQL `statement_timeout`, in milliseconds.
    pub statement_timeout_ms: u64,
    /// SQLite `busy_timeout`, in milliseconds.
    pub busy_timeout_ms: u64,
    /// Apply pending migrations when `gateway serve` starts.
    pub migrate_on_start: bool,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self {
            url: Secret::new("sqlite://data"),
            replica_url: None,
            pool: PoolConfig::default(),
            statement_timeout_ms: 10_000,
            busy_timeout_ms: 5_000,
            migrate_on_start: true,
        }
    }
}

/// A domain's own override of the shared database settings; unset fields inherit.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseOverride {
    pub url: Option<Secret>,
    pub replica_url: Option<Secret>,
    pub pool: Option<PoolConfig>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PoolConfig {
    pub max_size: u32,
    pub min_idle: Option<u32>,
    /// How long a request waits for a free connection before failing with `Unavailable`.
    pub connection_timeout_ms: u64,
    /// The same wait while the database refuses connections: an outage answers 503 this fast.
    pub connection_timeout_when_down_ms: u64,
    /// A connection idle for longer than this is checked (`SELECT 1`) when it is checked out,
    /// so that connections cut by a database restart are replaced before a request uses them.
    pub check_idle_after_ms: u64,
    pub idle_timeout_secs: Option<u64>,
    pub max_lifetime_secs: Option<u64>,
}

impl Default for PoolConfig {
    fn default() -> Self {
        Self {
            max_size: 16,
            min_idle: Some(1),
            connection_timeout_ms: 5_000,
            connection_timeout_when_down_ms: 250,
            check_idle_after_ms: 1_000,
            idle_timeout_secs: Some(600),
            max_lifetime_secs: Some(1_800),
        }
    }
}

/// The database engine behind a URL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Postgres,
    Sqlite,
}

/// The settings of one domain's database, resolved from the shared config and its override.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainDatabase {
    /// The domain's name: the PostgreSQL schema and the SQLite file stem.
    pub domain: String,
    pub backend: Backend,
    /// A PostgreSQL URL, or the SQLite file path.
    pub url: Secret,
    pub replica_url: Option<Secret>,
    pub pool: PoolConfig,
    pub statement_timeout_ms: u64,
    pub busy_timeout_ms: u64,
}

/// `KEEL_A__B_C` for the key `a.b_c`: how the environment spells a configuration key.
pub fn env_name(key: &str) -> String {
    format!("KEEL_{}", key.replace('.', "__").to_uppercase())
}

/// Checks that the value of `key` lies in `min..=max`; the message names the key both ways.
pub fn check_range(key: &str, value: u64, min: u64, max: u64) -> Result<(), String> {
    if (min..=max).contains(&value) {
        Ok(())
    } else {
        Err(format!("{key} ({}) must be from {min} to {max}; it is {value}", env_name(key)))
    }
}

/// An hour, in milliseconds: the upper bound of every timeout Keel waits on per request.
const HOUR_MS: u64 = 3_600_000;

impl DatabaseConfig {
    /// Checks every value at start-up; the message names the key.
    pub fn validate(&self, prefix: &str) -> Result<(), String> {
        let key = |name: &str| format!("{prefix}.{name}");
        // PostgreSQL's statement_timeout is a 32-bit number of milliseconds.
        check_range(&key("statement_timeout_ms"), self.statement_timeout_ms, 0, i32::MAX as u64)?;
        check_range(&key("busy_timeout_ms"), self.busy_timeout_ms, 0, i32::MAX as u64)?;
        self.pool.validate(&key("pool"))
    }
}

impl PoolConfig {
    pub fn validate(&self, prefix: &str) -> Result<(), String> {
        let key = |name: &str| format!("{prefix}.{name}");
        check_range(&key("max_size"), u64::from(self.max_size), 1, 10_000)?;
        if let Some(min_idle) = self.min_idle {
            check_range(&key("min_idle"), u64::from(min_idle), 0, u64::from(self.max_size))?;
        }
        check_range(&key("connection_timeout_ms"), self.connection_timeout_ms, 1, HOUR_MS)?;
        check_range(&key("connection_timeout_when_down_ms"), self.connection_timeout_when_down_ms, 1, HOUR_MS)?;
        check_range(&key("check_idle_after_ms"), self.check_idle_after_ms, 0, HOUR_MS)?;
        if let Some(secs) = self.idle_timeout_secs {
            check_range(&key("idle_timeout_secs"), secs, 1, 7 * 24 * 3600)?;
        }
        if let Some(secs) = self.max_lifetime_secs {
            check_range(&key("max_lifetime_secs"), secs, 1, 7 * 24 * 3600)?;
        }
        Ok(())
    }
}

/// A database URL that Keel cannot use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct DatabaseUrlError(String);

impl DatabaseConfig {
    /// Resolves the settings of `domain`, applying its override.
    pub fn for_domain(&self, domain: &str, over: &DatabaseOverride) -> Result<DomainDatabase, DatabaseUrlError> {
        if domain.is_empty() || !domain.chars().all(|c| c.is_ascii_lowercase() || c == '_') {
            return Err(DatabaseUrlError(format!("invalid domain name {domain:?}")));
        }
        let raw = over.url.as_ref().unwrap_or(&self.url);
        let (backend, url) = resolve_url(raw.expose(), domain)?;
        let replica_url = over.replica_url.clone().or_else(|| self.replica_url.clone());
        if backend == Backend::Sqlite && replica_url.is_some() {
            return Err(DatabaseUrlError("a read replica needs PostgreSQL".into()));
        }
        Ok(DomainDatabase {
            domain: domain.to_owned(),
            backend,
            url: Secret::new(url),
            replica_url,
            pool: over.pool.clone().unwrap_or_else(|| self.pool.clone()),
            statement_timeout_ms: self.statement_timeout_ms,
            busy_timeout_ms: self.busy_timeout_ms,
        })
    }
}

fn resolve_url(raw: &str, domain: &str) -> Result<(Backend, String), DatabaseUrlError> {
    if raw.starts_with("postgres://") || raw.starts_with("postgresql://") {
        return Ok((Backend::Postgres, raw.to_owned()));
    }
    let path = raw.strip_prefix("sqlite://").or_else(|| raw.strip_prefix("sqlite:")).ok_or_else(|| {
        DatabaseUrlError("database url must start with postgres://, postgresql:// or sqlite://".into())
    })?;
    if path.is_empty() {
        return Err(DatabaseUrlError("sqlite url names no path".into()));
    }
    let path = PathBuf::from(path);
    let file = match path.extension().and_then(|e| e.to_str()) {
        Some("db" | "sqlite" | "sqlite3") => path,
        _ => path.join(format!("{domain}.db")),
    };
    Ok((Backend::Sqlite, file.to_string_lossy().into_owned()))
}

/// How the gateway's HTTP server listens and treats requests.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    pub addr: String,
    /// The largest request body accepted, in bytes; larger ones get 413.
    pub body_limit_bytes: usize,
    /// Proxies whose `X-Forwarded-For` is believed, as CIDRs (`10.0.0.0/8`). Empty: use the socket.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Worker threads; 0 means one per core.
    pub workers: usize,
    /// How long a graceful shutdown waits for in-flight requests.
    pub shutdown_timeout_secs: u64,
    /// How long a client may take to send a request's line and headers (then 408).
    pub request_head_timeout_ms: u64,
    /// The largest request line plus headers accepted, in bytes (then 431).
    pub max_head_bytes: usize,
    /// Let the process's heap use transparent huge pages (Linux). Off by default: the allocator
    /// asks for them on its arenas, and a gateway's small, scattered heap then holds about 20 MiB
    /// more resident memory for no measurable speed (bench/inference-results.md). Turn it on for
    /// a process whose heap is large and randomly accessed.
    pub transparent_huge_pages: bool,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            addr: "127.0.0.1:8080".into(),
            body_limit_bytes: 64 * 1024,
            trusted_proxies: Vec::new(),
            workers: 0,
            shutdown_timeout_secs: 30,
            request_head_timeout_ms: 5_000,
            max_head_bytes: 32 * 1024,
            transparent_huge_pages: false,
        }
    }
}

impl HttpConfig {
    pub fn validate(&self) -> Result<(), String> {
        check_range("http.body_limit_bytes", self.body_limit_bytes as u64, 1, 1 << 30)?;
        check_range("http.workers", self.workers as u64, 0, 1024)?;
        check_range("http.shutdown_timeout_secs", self.shutdown_timeout_secs, 0, 3600)?;
        check_range("http.request_head_timeout_ms", self.request_head_timeout_ms, 1, HOUR_MS)?;
        // Below 1 KiB no real client gets through; actix itself stops at 128 KiB.
        check_range("http.max_head_bytes", self.max_head_bytes as u64, 1024, 96 * 1024)
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Pretty on a terminal, JSON otherwise.
    #[default]
    Auto,
    Json,
    Pretty,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TelemetryConfig {
    pub format: LogFormat,
    /// A `RUST_LOG`-style filter; `RUST_LOG` itself wins when set.
    pub filter: String,
    /// Where to export traces over OTLP/HTTP (protobuf), e.g. `http://otel-collector:4318`
    /// (`/v1/traces` is appended unless given). Unset (the default): no trace is exported.
    /// Sampling follows `OTEL_TRACES_SAMPLER` / `OTEL_TRACES_SAMPLER_ARG` (default: every new
    /// trace, and a caller's decision when its `traceparent` carries one).
    pub otlp_endpoint: Option<String>,
    /// The `service.name` of exported spans.
    pub service_name: String,
    /// Which spans become OpenTelemetry spans (a `RUST_LOG`-style filter), independent of the
    /// log filter: trace context is continued and propagated by these spans.
    pub trace_filter: String,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Auto,
            filter: "info".into(),
            otlp_endpoint: None,
            service_name: "keel".into(),
            trace_filter: "info".into(),
        }
    }
}

/// Timeouts of the clients that reach remote domain services (`[remote]`, `KEEL_REMOTE__*`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RemoteConfig {
    /// Time to open a connection, in milliseconds.
    pub connect_timeout_ms: u64,
    /// Time for a whole request and its answer, in milliseconds (streams: until the headers).
    pub request_timeout_ms: u64,
    /// How long an idle pooled connection is kept, in seconds.
    pub pool_idle_timeout_secs: u64,
}

impl RemoteConfig {
    pub fn validate(&self) -> Result<(), String> {
        check_range("remote.connect_timeout_ms", self.connect_timeout_ms, 1, HOUR_MS)?;
        check_range("remote.request_timeout_ms", self.request_timeout_ms, 1, HOUR_MS)?;
        check_range("remote.pool_idle_timeout_secs", self.pool_idle_timeout_secs, 0, 24 * 3600)
    }
}

impl Default for RemoteConfig {
    fn default() -> Self {
        Self { connect_timeout_ms: 2_000, request_timeout_ms: 30_000, pool_idle_timeout_secs: 60 }
    }
}

/// The settings of one cache.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CacheConfig {
    /// The most entries L1 holds; past it the least useful are evicted.
    pub l1_max_entries: u64,
    /// How long an L1 entry is served at most. Also the bound on staleness after a lost
    /// invalidation message.
    pub l1_ttl_ms: u64,
    /// While the invalidation subscription is down (Redis unreachable), L1 entries older than
    /// this are not served.
    pub l1_degraded_ttl_ms: u64,
    /// How long an L2 entry lives in Redis.
    pub l2_ttl_ms: u64,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self { l1_max_entries: 100_000, l1_ttl_ms: 30_000, l1_degraded_ttl_ms: 1_000, l2_ttl_ms: 300_000 }
    }
}

#[cfg(feature = "server")]
pub use loader::{ConfigError, load};

#[cfg(feature = "server")]
mod loader {
    use figment::Figment;
    use figment::error::Kind;
    use figment::providers::{Env, Format, Serialized, Toml};
    use serde::Serialize;
    use serde::de::DeserializeOwned;
    use std::path::Path;

    #[derive(Debug, thiserror::Error)]
    pub enum ConfigError {
        #[error("config file {0} does not exist")]
        MissingFile(String),
        /// Every problem found, one per line, each naming its key as its source spells it.
        #[error("invalid configuration: {0}")]
        Invalid(String),
    }

    /// Loads a config tree: defaults, then `file` if given, then `KEEL_*` environment variables.
    pub fn load<T: Serialize + DeserializeOwned + Default>(file: Option<&Path>) -> Result<T, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(T::default()));
        if let Some(file) = file {
            if !file.is_file() {
                return Err(ConfigError::MissingFile(file.display().to_string()));
            }
            figment = figment.merge(Toml::file_exact(file));
        }
        // `KEEL_TEST_*` configure the test suites, not a process.
        let env = Env::prefixed("KEEL_").filter(|key| !key.starts_with("test_")).split("__");
        figment.merge(env).extract().map_err(|e| ConfigError::Invalid(describe(e)))
    }

    /// One line per error: `KEEL_HTTP__ADRESS: unknown key; …` for a variable,
    /// `http.adress in keel.toml: …` for a file key, `http.adress: …` otherwise.
    fn describe(errors: figment::Error) -> String {
        errors
            .into_iter()
            .map(|error| {
                // The path already ends with the offending key.
                let path = &error.path;
                let message = match &error.kind {
                    Kind::UnknownField(_, expected) => {
                        format!("unknown key; the keys here are {}", expected.join(", "))
                    }
                    Kind::MissingField(_) => "missing".to_owned(),
                    other => other.to_string(),
                };
                let key = path.join(".");
                let from_env = error.metadata.as_ref().is_some_and(|m| m.name.contains("environment"));
                let file = error.metadata.as_ref().and_then(|m| m.source.as_ref()).and_then(|s| s.file_path());
                match (from_env, file) {
                    (true, _) => format!("{}: {message}", super::env_name(&key)),
                    (false, Some(file)) => format!("{key} in {}: {message}", file.display()),
                    (false, None) => format!("{key}: {message}"),
                }
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_directory_gets_one_file_per_domain() {
        let db = DatabaseConfig::default().for_domain("auth", &DatabaseOverride::default()).unwrap();
        assert_eq!(db.backend, Backend::Sqlite);
        assert_eq!(db.url.expose(), "data/auth.db");
    }

    #[test]
    fn sqlite_file_is_taken_as_is_and_postgres_is_shared() {
        let over = DatabaseOverride { url: Some("sqlite:///tmp/x/auth.sqlite".into()), ..Default::default() };
        let db = DatabaseConfig::default().for_domain("auth", &over).unwrap();
        assert_eq!(db.url.expose(), "/tmp/x/auth.sqlite");

        let config = DatabaseConfig { url: "postgres://root@127.0.0.1/test".into(), ..Default::default() };
        let db = config.for_domain("auth", &DatabaseOverride::default()).unwrap();
        assert_eq!(db.backend, Backend::Postgres);
        assert_eq!(db.url.expose(), "postgres://root@127.0.0.1/test");
    }

    #[test]
    fn rejects_unknown_schemes_and_sqlite_replicas() {
        let bad = DatabaseConfig { url: "mysql://x".into(), ..Default::default() };
        assert!(bad.for_domain("auth", &DatabaseOverride::default()).is_err());
        let replica = DatabaseConfig { replica_url: Some("postgres://r".into()), ..Default::default() };
        assert!(replica.for_domain("auth", &DatabaseOverride::default()).is_err());
        assert!(DatabaseConfig::default().for_domain("Auth; drop", &DatabaseOverride::default()).is_err());
    }
}
