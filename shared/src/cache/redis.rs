//! The cache's shared layer over Redis: L2 entries, and invalidations through pub/sub.
//!
//! # Layout (prefix `P` = `redis.key_prefix`, cache name `C`)
//! - `P:cache:C:{NS}:e:ID`: a hash per entry, fields `val` (the JSON value), `ver` (the entry's
//!   version) and `nsv` (the namespace version it was written under). `{NS}` is a hash tag, so an
//!   entry and its namespace live in one cluster slot.
//! - `P:cache:C:{NS}:v`: the namespace's version (absent = `0`).
//! - Channel `P:cache:invalidations`: JSON messages `{"c":C,"k":KEY}`, `{"c":C,"n":NS}`, or
//!   `{"c":"*","f":true}` (drop everything).
//!
//! Versions are random (UUIDv7) rather than counters, so a version key that expired and was
//! recreated can never match a version read before. Reads and write-backs are one Lua script
//! each: a write-back succeeds only if neither the entry's nor the namespace's version moved
//! since the read that missed. An invalidation sets a new entry version, deletes the value and
//! publishes, in one script.

use super::{CacheBackplane, CacheKey, InvalidationSink, L2Read, L2Token, Namespace, SharedUnavailable};
use crate::redis::Redis;
use async_trait::async_trait;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock, Weak};
use std::time::Duration;

const GET: &str = r"
local nsv = redis.call('GET', KEYS[2]) or '0'
local r = redis.call('HMGET', KEYS[1], 'val', 'ver', 'nsv')
local ver = r[2] or '0'
if r[1] and r[3] == nsv then return {ver, nsv, r[1]} end
return {ver, nsv}
";

const PUT: &str = r"
local nsv = redis.call('GET', KEYS[2]) or '0'
local ver = redis.call('HGET', KEYS[1], 'ver') or '0'
if ver ~= ARGV[1] or nsv ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], 'val', ARGV[3], 'ver', ver, 'nsv', nsv)
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return 1
";

const INVALIDATE: &str = r"
redis.call('HSET', KEYS[1], 'ver', ARGV[1])
redis.call('HDEL', KEYS[1], 'val')
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('PUBLISH', ARGV[3], ARGV[4])
return 1
";

const BUMP_NAMESPACE: &str = r"
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('PUBLISH', ARGV[3], ARGV[4])
return 1
";

/// At most this many invalidations wait for Redis to come back; past it, the whole of every
/// cache's L2 is dropped on reconnection instead.
const MAX_PENDING: usize = 10_000;

#[derive(Debug, Serialize, Deserialize)]
struct Message {
    c: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    k: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    n: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    f: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum PendingOp {
    Key { cache: String, key: CacheKey, ttl: Duration },
    Namespace { cache: String, namespace: Namespace, ttl: Duration },
}

#[derive(Debug, Default)]
struct Pending {
    ops: HashSet<PendingOp>,
    overflowed: bool,
}

/// L2 and the invalidation bus over Redis. Start one per process and share it between caches.
pub struct RedisBackplane {
    redis: Redis,
    channel: String,
    epoch: AtomicU64,
    subscribed: AtomicBool,
    sinks: RwLock<HashMap<String, Vec<Weak<dyn InvalidationSink>>>>,
    pending: Mutex<Pending>,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
    get: ::redis::Script,
    put: ::redis::Script,
    invalidate: ::redis::Script,
    bump_namespace: ::redis::Script,
}

impl std::fmt::Debug for RedisBackplane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBackplane")
            .field("redis", &self.redis)
            .field("subscribed", &self.subscribed())
            .field("epoch", &self.epoch())
            .finish()
    }
}

impl Drop for RedisBackplane {
    fn drop(&mut self) {
        if let Some(task) = self.task.get_mut().ok().and_then(Option::take) {
            task.abort();
        }
    }
}

impl RedisBackplane {
    /// Starts the subscription task (which keeps resubscribing whenever the subscription drops).
    /// Must be called inside a tokio runtime.
    pub fn start(redis: Redis) -> Arc<Self> {
        let this = Arc::new(Self {
            channel: redis.key("cache:invalidations"),
            redis,
            epoch: AtomicU64::new(0),
            subscribed: AtomicBool::new(false),
            sinks: RwLock::new(HashMap::new()),
            pending: Mutex::new(Pending::default()),
            task: Mutex::new(None),
            get: ::redis::Script::new(GET),
            put: ::redis::Script::new(PUT),
            invalidate: ::redis::Script::new(INVALIDATE),
            bump_namespace: ::redis::Script::new(BUMP_NAMESPACE),
        });
        let task = tokio::spawn(subscription_loop(Arc::downgrade(&this)));
        *this.task.lock().unwrap_or_else(PoisonError::into_inner) = Some(task);
        this
    }

    /// Waits until the subscription is established (for start-up and tests); false on timeout.
    pub async fn wait_subscribed(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        while !self.subscribed() {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        true
    }

    /// Invalidations waiting for Redis to come back.
    pub fn pending_invalidations(&self) -> usize {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner).ops.len()
    }

    fn entry_key(&self, cache: &str, key: &CacheKey) -> String {
        self.redis.key(&format!("cache:{cache}:{{{}}}:e:{}", key.namespace().encoded(), key.id_encoded()))
    }

    fn namespace_key(&self, cache: &str, namespace: &Namespace) -> String {
        self.redis.key(&format!("cache:{cache}:{{{}}}:v", namespace.encoded()))
    }

    fn remember(&self, op: PendingOp) {
        let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        if pending.ops.len() >= MAX_PENDING {
            pending.overflowed = true;
            pending.ops.clear();
        }
        if !pending.overflowed {
            pending.ops.insert(op);
        }
    }

    async fn send_key(&self, cache: &str, key: &CacheKey, ttl: Duration) -> Result<(), SharedUnavailable> {
        let message = encode(&Message { c: cache.into(), k: Some(key.encoded().into()), n: None, f: false });
        let entry = self.entry_key(cache, key);
        let version = uuid::Uuid::now_v7().simple().to_string();
        let script = &self.invalidate;
        let channel = &self.channel;
        self.redis
            .run(|mut conn| async move {
                script
                    .key(entry)
                    .arg(version)
                    .arg(millis(ttl))
                    .arg(channel)
                    .arg(message)
                    .invoke_async::<i64>(&mut conn)
                    .await
            })
            .await
            .map(drop)
            .map_err(|e| SharedUnavailable(e.0))
    }

    async fn send_namespace(&self, cache: &str, namespace: &Namespace, ttl: Duration) -> Result<(), SharedUnavailable> {
        let message = encode(&Message { c: cache.into(), k: None, n: Some(namespace.encoded().into()), f: false });
        let key = self.namespace_key(cache, namespace);
        let version = uuid::Uuid::now_v7().simple().to_string();
        let script = &self.bump_namespace;
        let channel = &self.channel;
        self.redis
            .run(|mut conn| async move {
                script
                    .key(key)
                    .arg(version)
                    .arg(millis(ttl))
                    .arg(channel)
                    .arg(message)
                    .invoke_async::<i64>(&mut conn)
                    .await
            })
            .await
            .map(drop)
            .map_err(|e| SharedUnavailable(e.0))
    }

    /// Delivers the invalidations that could not be sent while Redis was unreachable. After an
    /// overflow, drops every cache's L2 entries and tells every process to drop its L1.
    async fn replay(&self) {
        let (ops, overflowed) = {
            let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
            (std::mem::take(&mut pending.ops), std::mem::take(&mut pending.overflowed))
        };
        if overflowed && self.flush_all().await.is_err() {
            self.pending.lock().unwrap_or_else(PoisonError::into_inner).overflowed = true;
            return;
        }
        let count = ops.len();
        for op in ops {
            let sent = match &op {
                PendingOp::Key { cache, key, ttl } => self.send_key(cache, key, *ttl).await,
                PendingOp::Namespace { cache, namespace, ttl } => self.send_namespace(cache, namespace, *ttl).await,
            };
            if sent.is_err() {
                self.remember(op);
            }
        }
        if count > 0 || overflowed {
            tracing::info!(count, overflowed, "delivered the cache invalidations held while redis was unreachable");
        }
    }

    async fn flush_all(&self) -> Result<(), SharedUnavailable> {
        let pattern = self.redis.key("cache:*");
        let mut cursor: u64 = 0;
        loop {
            let pattern = pattern.clone();
            let (next, keys): (u64, Vec<String>) = self
                .redis
                .run(|mut conn| async move {
                    ::redis::cmd("SCAN")
                        .arg(cursor)
                        .arg("MATCH")
                        .arg(pattern)
                        .arg("COUNT")
                        .arg(1000)
                        .query_async(&mut conn)
                        .await
                })
                .await
                .map_err(|e| SharedUnavailable(e.0))?;
            if !keys.is_empty() {
                self.redis
                    .run(|mut conn| async move { ::redis::cmd("UNLINK").arg(keys).query_async::<i64>(&mut conn).await })
                    .await
                    .map_err(|e| SharedUnavailable(e.0))?;
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
        let message = encode(&Message { c: "*".into(), k: None, n: None, f: true });
        let channel = self.channel.clone();
        self.redis
            .run(|mut conn| async move {
                ::redis::cmd("PUBLISH").arg(channel).arg(message).query_async::<i64>(&mut conn).await
            })
            .await
            .map(drop)
            .map_err(|e| SharedUnavailable(e.0))
    }

    fn dispatch(&self, payload: &[u8]) {
        let message: Message = match serde_json::from_slice(payload) {
            Ok(message) => message,
            Err(e) => {
                tracing::warn!(error = %e, "undecodable cache invalidation message; dropping every L1 entry");
                self.for_each_sink(None, |sink| sink.flush());
                return;
            }
        };
        let cache = (message.c != "*").then_some(message.c.as_str());
        if message.f {
            self.for_each_sink(cache, |sink| sink.flush());
        } else if let Some(key) = &message.k {
            self.for_each_sink(cache, |sink| sink.invalidate_key(key));
        } else if let Some(namespace) = &message.n {
            self.for_each_sink(cache, |sink| sink.invalidate_namespace(namespace));
        }
    }

    fn for_each_sink(&self, cache: Option<&str>, f: impl Fn(&dyn InvalidationSink)) {
        let sinks = self.sinks.read().unwrap_or_else(PoisonError::into_inner);
        let lists: Vec<&Vec<Weak<dyn InvalidationSink>>> = match cache {
            Some(cache) => sinks.get(cache).into_iter().collect(),
            None => sinks.values().collect(),
        };
        for sink in lists.into_iter().flatten().filter_map(Weak::upgrade) {
            f(sink.as_ref());
        }
    }
}

fn encode(message: &Message) -> String {
    serde_json::to_string(message).unwrap_or_default()
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

#[async_trait]
impl CacheBackplane for RedisBackplane {
    fn register(&self, cache: &str, sink: Weak<dyn InvalidationSink>) {
        let mut sinks = self.sinks.write().unwrap_or_else(PoisonError::into_inner);
        let list = sinks.entry(cache.to_owned()).or_default();
        list.retain(|s| s.strong_count() > 0);
        list.push(sink);
    }

    fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    fn subscribed(&self) -> bool {
        self.subscribed.load(Ordering::Acquire)
    }

    async fn get(&self, cache: &str, key: &CacheKey) -> Result<L2Read, SharedUnavailable> {
        let entry = self.entry_key(cache, key);
        let namespace = self.namespace_key(cache, key.namespace());
        let script = &self.get;
        let mut parts: Vec<Vec<u8>> = self
            .redis
            .run(|mut conn| async move { script.key(entry).key(namespace).invoke_async(&mut conn).await })
            .await
            .map_err(|e| SharedUnavailable(e.0))?;
        let value = (parts.len() == 3).then(|| parts.pop()).flatten();
        let mut parts = parts.into_iter().map(|p| String::from_utf8_lossy(&p).into_owned());
        let token = L2Token {
            entry_version: parts.next().unwrap_or_default(),
            namespace_version: parts.next().unwrap_or_default(),
        };
        Ok(L2Read { value, token })
    }

    async fn put(
        &self,
        cache: &str,
        key: &CacheKey,
        token: &L2Token,
        value: &[u8],
        ttl: Duration,
    ) -> Result<bool, SharedUnavailable> {
        let entry = self.entry_key(cache, key);
        let namespace = self.namespace_key(cache, key.namespace());
        let script = &self.put;
        self.redis
            .run(|mut conn| async move {
                script
                    .key(entry)
                    .key(namespace)
                    .arg(&token.entry_version)
                    .arg(&token.namespace_version)
                    .arg(value)
                    .arg(millis(ttl))
                    .invoke_async::<i64>(&mut conn)
                    .await
            })
            .await
            .map(|stored| stored == 1)
            .map_err(|e| SharedUnavailable(e.0))
    }

    async fn invalidate(&self, cache: &str, key: &CacheKey, ttl: Duration) {
        if self.send_key(cache, key, ttl).await.is_err() {
            self.remember(PendingOp::Key { cache: cache.into(), key: key.clone(), ttl });
        }
    }

    async fn invalidate_namespace(&self, cache: &str, namespace: &Namespace, ttl: Duration) {
        if self.send_namespace(cache, namespace, ttl).await.is_err() {
            self.remember(PendingOp::Namespace { cache: cache.into(), namespace: namespace.clone(), ttl });
        }
    }
}

/// Keeps one subscription alive: subscribe, bump the epoch (every L1 entry loaded before is
/// dropped, since messages may have been missed), deliver messages, ping; on any failure mark the
/// subscription down and start over after `health_interval_ms`.
async fn subscription_loop(this: Weak<RedisBackplane>) {
    let mut was_lost = false;
    loop {
        let Some(redis) = this.upgrade().map(|s| s.redis.clone()) else { return };
        let channel = redis.key("cache:invalidations");
        let connected = tokio::time::timeout(redis.connect_timeout() + redis.command_timeout(), async {
            let (mut sink, stream) = redis.client().get_async_pubsub().await?.split();
            sink.subscribe(&channel).await?;
            Ok::<_, ::redis::RedisError>((sink, stream))
        })
        .await;
        if let Ok(Ok((mut sink, mut stream))) = connected {
            {
                let Some(this) = this.upgrade() else { return };
                this.epoch.fetch_add(1, Ordering::AcqRel);
                this.subscribed.store(true, Ordering::Release);
                if was_lost {
                    tracing::info!(
                        "cache invalidation subscription re-established; L1 entries loaded before are dropped"
                    );
                }
                this.replay().await;
            }
            let mut ticker = tokio::time::interval(redis.health_interval());
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticker.tick().await;
            loop {
                tokio::select! {
                    message = stream.next() => {
                        let Some(message) = message else { break };
                        let Some(this) = this.upgrade() else { return };
                        this.dispatch(message.get_payload_bytes());
                    }
                    _ = ticker.tick() => {
                        let ping = tokio::time::timeout(redis.command_timeout(), sink.ping::<::redis::Value>()).await;
                        if !matches!(ping, Ok(Ok(_))) {
                            break;
                        }
                        let Some(this) = this.upgrade() else { return };
                        if this.pending_invalidations() > 0 || this.pending.lock().unwrap_or_else(PoisonError::into_inner).overflowed {
                            this.replay().await;
                        }
                    }
                }
            }
        }
        if let Some(this) = this.upgrade()
            && this.subscribed.swap(false, Ordering::AcqRel)
        {
            tracing::warn!(
                "cache invalidation subscription lost; L1 serves only entries younger than l1_degraded_ttl_ms"
            );
        }
        was_lost = true;
        tokio::time::sleep(redis.health_interval()).await;
    }
}
