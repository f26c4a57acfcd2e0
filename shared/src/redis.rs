//! The process's one Redis handle: a multiplexed connection that reconnects by itself, a health
//! flag, and commands that fail fast.
//!
//! Redis is optional: without `redis.url` every platform mechanism uses its in-process
//! implementation. With it, the cache's L2, the invalidation bus and the shared rate limiters run
//! over the handle built here. A Redis outage must never hang a request, so:
//! - every command runs under `command_timeout_ms`;
//! - a command that times out or loses its connection marks Redis **down**, and while it is down
//!   commands fail at once ([`RedisUnavailable`]) without touching the network: callers take their
//!   fallback path immediately;
//! - a background task pings every `health_interval_ms` and marks Redis **up** again as soon as a
//!   ping answers (the connection manager reconnects by itself underneath).
//!
//! [`Redis::is_up`] is the `keel_redis_up` gauge.

use crate::secret::Secret;
use serde::{Deserialize, Serialize};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::sync::watch;

/// Where Redis is and how patient to be with it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedisConfig {
    /// `redis://[user:password@]host:port[/db]`. Unset: no Redis, every mechanism in-process.
    pub url: Option<Secret>,
    /// Longest wait for a new connection (also bounds each reconnection attempt).
    pub connect_timeout_ms: u64,
    /// Longest wait for one command's answer; past it the command fails and Redis is marked down.
    pub command_timeout_ms: u64,
    /// How often the health task pings (and, while down, tries to reconnect). It also bounds how
    /// long a lost invalidation subscription goes unnoticed (see `docs/PLATFORM.md`).
    pub health_interval_ms: u64,
    /// Prefix of every key and channel Keel uses, so several deployments can share one Redis.
    pub key_prefix: String,
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            url: None,
            connect_timeout_ms: 250,
            command_timeout_ms: 250,
            health_interval_ms: 500,
            key_prefix: "keel".into(),
        }
    }
}

impl RedisConfig {
    fn command_timeout(&self) -> Duration {
        Duration::from_millis(self.command_timeout_ms.max(1))
    }

    fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms.max(1))
    }

    fn health_interval(&self) -> Duration {
        Duration::from_millis(self.health_interval_ms.max(10))
    }
}

/// Redis could not answer in time (down, unreachable, timed out, or marked down).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("redis is unavailable: {0}")]
pub struct RedisUnavailable(pub String);

/// The configuration cannot be used (for example an unparsable URL).
#[derive(Debug, thiserror::Error)]
#[error("invalid redis configuration: {0}")]
pub struct RedisSetupError(String);

/// A cloneable handle over one multiplexed connection to Redis, shared by the whole process.
#[derive(Clone)]
pub struct Redis {
    inner: Arc<Inner>,
}

struct Inner {
    client: ::redis::Client,
    manager: ::redis::aio::ConnectionManager,
    config: RedisConfig,
    up: AtomicBool,
    up_tx: watch::Sender<bool>,
    health_task: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl std::fmt::Debug for Redis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redis").field("up", &self.is_up()).field("key_prefix", &self.inner.config.key_prefix).finish()
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(task) = self.health_task.get_mut().ok().and_then(Option::take) {
            task.abort();
        }
    }
}

impl Redis {
    /// Builds the handle from `config` when it names a URL (`Ok(None)` otherwise), pings once so
    /// the health flag is right from the start, and starts the health task. Redis being down at
    /// start is not an error: the handle starts down and comes up when Redis answers.
    /// Must be called inside a tokio runtime.
    pub async fn from_config(config: &RedisConfig) -> Result<Option<Self>, RedisSetupError> {
        let Some(url) = &config.url else { return Ok(None) };
        Self::connect(url, config).await.map(Some)
    }

    /// As [`Redis::from_config`], with the URL given apart.
    pub async fn connect(url: &Secret, config: &RedisConfig) -> Result<Self, RedisSetupError> {
        // The parse error may quote the URL, and so its password: keep only its kind.
        let client = ::redis::Client::open(url.expose())
            .map_err(|e| RedisSetupError(format!("unparsable redis url ({:?})", e.kind())))?;
        let manager_config = ::redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(config.connect_timeout()))
            .set_response_timeout(Some(config.command_timeout()))
            // Few quick retries per reconnection: the health task starts the next one anyway.
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(20))
            .set_max_delay(config.connect_timeout());
        let manager = ::redis::aio::ConnectionManager::new_lazy_with_config(client.clone(), manager_config)
            .map_err(|e| RedisSetupError(format!("connection manager: {:?}", e.kind())))?;
        let (up_tx, _) = watch::channel(false);
        let redis = Self {
            inner: Arc::new(Inner {
                client,
                manager,
                config: config.clone(),
                up: AtomicBool::new(false),
                up_tx,
                health_task: std::sync::Mutex::new(None),
            }),
        };
        redis.ping_once().await;
        let task = tokio::spawn(health_loop(Arc::downgrade(&redis.inner), config.health_interval()));
        if let Ok(mut slot) = redis.inner.health_task.lock() {
            *slot = Some(task);
        }
        Ok(redis)
    }

    /// Whether the last command or ping succeeded: the `keel_redis_up` gauge.
    pub fn is_up(&self) -> bool {
        self.inner.up.load(Ordering::Acquire)
    }

    /// A receiver that sees every change of the health flag.
    pub fn watch_up(&self) -> watch::Receiver<bool> {
        self.inner.up_tx.subscribe()
    }

    pub fn config(&self) -> &RedisConfig {
        &self.inner.config
    }

    /// `{key_prefix}:{rest}`.
    pub fn key(&self, rest: &str) -> String {
        format!("{}:{rest}", self.inner.config.key_prefix)
    }

    /// The client, for connections the manager cannot multiplex (pub/sub).
    pub(crate) fn client(&self) -> &::redis::Client {
        &self.inner.client
    }

    pub(crate) fn command_timeout(&self) -> Duration {
        self.inner.config.command_timeout()
    }

    pub(crate) fn connect_timeout(&self) -> Duration {
        self.inner.config.connect_timeout()
    }

    pub(crate) fn health_interval(&self) -> Duration {
        self.inner.config.health_interval()
    }

    /// Runs one command (or pipeline, or script) over the shared connection, under the command
    /// timeout. Fails at once while Redis is marked down. A timeout or a connection error marks it
    /// down; an error Redis answered with (a script error, a wrong type) does not.
    pub async fn run<T, F, Fut>(&self, f: F) -> Result<T, RedisUnavailable>
    where
        F: FnOnce(::redis::aio::ConnectionManager) -> Fut,
        Fut: Future<Output = ::redis::RedisResult<T>>,
    {
        if !self.is_up() {
            return Err(RedisUnavailable("marked down".into()));
        }
        match tokio::time::timeout(self.command_timeout(), f(self.inner.manager.clone())).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => {
                if is_connection_error(&e) {
                    self.inner.set_up(false);
                }
                Err(RedisUnavailable(format!("{:?}", e.kind())))
            }
            Err(_) => {
                self.inner.set_up(false);
                Err(RedisUnavailable("command timed out".into()))
            }
        }
    }

    async fn ping_once(&self) -> bool {
        self.inner.ping().await
    }
}

impl Inner {
    fn set_up(&self, up: bool) {
        let was = self.up.swap(up, Ordering::AcqRel);
        if was != up {
            if up {
                tracing::info!("redis is reachable again");
            } else {
                tracing::warn!("redis is unreachable; shared caches and limiters fall back to in-process");
            }
            self.up_tx.send_replace(up);
        }
    }

    async fn ping(&self) -> bool {
        let mut conn = self.manager.clone();
        let timeout = self.config.command_timeout().max(self.config.connect_timeout());
        let ok = matches!(
            tokio::time::timeout(timeout, ::redis::cmd("PING").query_async::<String>(&mut conn)).await,
            Ok(Ok(_))
        );
        self.set_up(ok);
        ok
    }
}

async fn health_loop(inner: std::sync::Weak<Inner>, interval: Duration) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let Some(inner) = inner.upgrade() else { return };
        inner.ping().await;
    }
}

/// Whether an error means the connection (not the command) failed.
pub(crate) fn is_connection_error(e: &::redis::RedisError) -> bool {
    e.is_io_error()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_unrecoverable_error()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_defaults_and_unknown_fields() {
        let config: RedisConfig = serde_json::from_str(r#"{"url": "redis://127.0.0.1:6379"}"#).unwrap();
        assert_eq!(config.url.as_ref().map(Secret::expose), Some("redis://127.0.0.1:6379"));
        assert_eq!(config.command_timeout_ms, 250);
        assert_eq!(config.key_prefix, "keel");
        assert!(serde_json::from_str::<RedisConfig>(r#"{"uri": "x"}"#).is_err());
        assert_eq!(format!("{:?}", config.url), "Some([REDACTED])");
    }

    #[tokio::test]
    async fn no_url_means_no_redis() {
        assert!(Redis::from_config(&RedisConfig::default()).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn unreachable_redis_starts_down_and_fails_fast() {
        // Port 1 on loopback: connection refused at once.
        let config = RedisConfig { url: Some("redis://127.0.0.1:1".into()), ..Default::default() };
        let redis = Redis::from_config(&config).await.unwrap().unwrap();
        assert!(!redis.is_up());
        let result = redis
            .run(|mut conn| async move { ::redis::cmd("GET").arg("x").query_async::<Option<String>>(&mut conn).await })
            .await;
        // Refused without touching the network: a down Redis is not waited for.
        assert_eq!(result, Err(RedisUnavailable("marked down".into())));
    }
}
