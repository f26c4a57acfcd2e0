//! A two-layer cache: an in-process L1 (moka, bounded, with TTLs) in front of an optional shared
//! L2 in Redis, with single-flight loading and invalidation across processes.
//!
//! - [`Cache::get_or_load`] serves from L1, then L2, then the loader. Concurrent misses on one
//!   key in one process share one L2 read and one load (moka's `try_get_with` coalesces them).
//! - [`Cache::invalidate`] drops the key from this process's L1 at once, removes the L2 entry and
//!   publishes the key on the invalidation channel, so every other process drops it from its L1.
//!   [`Cache::invalidate_namespace`] does the same for every key of a [`Namespace`] (a version bump).
//! - Keys are [`CacheKey`]s: each belongs to a namespace that is either one organization's or
//!   explicitly global, and the organization is part of the key, so an entry loaded for one
//!   organization cannot be served to another.
//!
//! # Staleness bounds (see `docs/PLATFORM.md`, section "Cache")
//! An L1 entry is served only while all of these hold, checked on every read:
//! - it is younger than `l1_ttl_ms` (measured from the start of the load that produced it);
//! - no invalidation of its key or namespace arrived since its load started (a load racing an
//!   invalidation is never kept);
//! - the invalidation subscription has not been re-established since its load started (after a
//!   gap in the subscription, when messages may have been missed, all of L1 is dropped);
//! - while the subscription is down, it is younger than `l1_degraded_ttl_ms`.
//!
//! So a lost invalidation message leaves a stale L1 entry for at most `l1_ttl_ms`; a subscription
//! that is down for any reason bounds it by `l1_degraded_ttl_ms` plus the detection time
//! (`redis.health_interval_ms` + `redis.command_timeout_ms`). L2 writes are conditional on the
//! key's version being unchanged since the read that missed, so a load racing an invalidation
//! cannot put an old value back into L2.

pub mod redis;

use crate::clock::Clock;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::fmt;
use std::future::Future;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

pub use self::redis::RedisBackplane;

pub use crate::config::CacheConfig;

impl CacheConfig {
    fn l1_ttl(&self) -> Duration {
        Duration::from_millis(self.l1_ttl_ms.max(1))
    }

    fn l1_degraded_ttl(&self) -> Duration {
        Duration::from_millis(self.l1_degraded_ttl_ms.clamp(1, self.l1_ttl_ms.max(1)))
    }

    fn l2_ttl(&self) -> Duration {
        Duration::from_millis(self.l2_ttl_ms.max(1))
    }
}

/// Whose data a namespace holds.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Scope {
    /// Shared by every organization (say so explicitly: `Namespace::global`).
    Global,
    /// One organization's data, by its id.
    Organization(String),
}

/// A group of keys that can be invalidated together, within one scope.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Namespace {
    scope: Scope,
    name: String,
    encoded: String,
}

impl Namespace {
    /// A namespace shared by every organization.
    pub fn global(name: &str) -> Self {
        Self::new(Scope::Global, name)
    }

    /// A namespace of one organization's data.
    pub fn organization(org: impl fmt::Display, name: &str) -> Self {
        Self::new(Scope::Organization(org.to_string()), name)
    }

    fn new(scope: Scope, name: &str) -> Self {
        // Built in place: keys are made on every cached lookup of the request path.
        let mut encoded = String::with_capacity(name.len() + 40);
        match &scope {
            Scope::Global => encoded.push_str("g/"),
            Scope::Organization(org) => {
                encoded.push_str("o/");
                escape_into(&mut encoded, org);
                encoded.push('/');
            }
        }
        escape_into(&mut encoded, name);
        Self { scope, name: name.to_owned(), encoded }
    }

    /// The key `id` within this namespace.
    pub fn key(&self, id: impl AsRef<str>) -> CacheKey {
        self.clone().into_key(id)
    }

    /// The key `id` within this namespace, which it takes.
    pub fn into_key(self, id: impl AsRef<str>) -> CacheKey {
        let id = id.as_ref();
        let mut encoded = String::with_capacity(self.encoded.len() + 1 + id.len());
        encoded.push_str(&self.encoded);
        encoded.push('/');
        escape_into(&mut encoded, id);
        CacheKey { namespace: self, id: id.to_owned(), encoded }
    }

    pub fn scope(&self) -> &Scope {
        &self.scope
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The unambiguous string form (`g/NAME` or `o/ORG/NAME`, segments percent-escaped).
    pub fn encoded(&self) -> &str {
        &self.encoded
    }
}

/// A cache key: a namespace (with its scope) and an id within it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CacheKey {
    namespace: Namespace,
    id: String,
    encoded: String,
}

impl CacheKey {
    /// Shorthand for `Namespace::organization(org, namespace).key(id)`.
    pub fn organization(org: impl fmt::Display, namespace: &str, id: impl AsRef<str>) -> Self {
        Namespace::organization(org, namespace).into_key(id)
    }

    /// Shorthand for `Namespace::global(namespace).key(id)`.
    pub fn global(namespace: &str, id: impl AsRef<str>) -> Self {
        Namespace::global(namespace).into_key(id)
    }

    pub fn namespace(&self) -> &Namespace {
        &self.namespace
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// The unambiguous string form: the namespace's, then `/` and the escaped id.
    pub fn encoded(&self) -> &str {
        &self.encoded
    }

    /// The escaped id alone.
    pub(crate) fn id_encoded(&self) -> &str {
        self.encoded.get(self.namespace.encoded.len() + 1..).unwrap_or_default()
    }
}

/// Percent-escapes the characters that structure a key, so no segment can impersonate another.
fn escape_into(out: &mut String, segment: &str) {
    for c in segment.chars() {
        match c {
            '%' => out.push_str("%25"),
            '/' => out.push_str("%2F"),
            '{' => out.push_str("%7B"),
            '}' => out.push_str("%7D"),
            _ => out.push(c),
        }
    }
}

/// Counts of one cache, for `keel_cache_requests_total{cache,layer,result}`,
/// `keel_cache_loads_total{cache}` and `keel_cache_invalidations_total{cache}`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    pub l1_hits: u64,
    pub l1_misses: u64,
    /// L2 reads that found a value.
    pub l2_hits: u64,
    /// L2 reads that found nothing, and L2 reads that failed (Redis unreachable).
    pub l2_misses: u64,
    /// Loader calls.
    pub loads: u64,
    /// `invalidate` and `invalidate_namespace` calls in this process.
    pub invalidations: u64,
    /// Invalidations received from other processes (and this one's own, echoed by Redis).
    pub invalidations_received: u64,
}

#[derive(Debug, Default)]
struct Counters {
    l1_hits: AtomicU64,
    l1_misses: AtomicU64,
    l2_hits: AtomicU64,
    l2_misses: AtomicU64,
    loads: AtomicU64,
    invalidations: AtomicU64,
    invalidations_received: AtomicU64,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// What a cache counts (in `CacheStats`, and in the metrics once observed).
#[derive(Debug, Clone, Copy)]
enum Event {
    L1Hit,
    L1Miss,
    L2Hit,
    L2Miss,
    Load,
    Invalidation,
    InvalidationReceived,
}

impl<V> Inner<V> {
    fn note(&self, event: Event) {
        use crate::metrics::{CacheLayer, CacheResult};
        let c = &self.counters;
        let metrics = self.metrics.get();
        let (counter, request) = match event {
            Event::L1Hit => (&c.l1_hits, Some((CacheLayer::L1, CacheResult::Hit))),
            Event::L1Miss => (&c.l1_misses, Some((CacheLayer::L1, CacheResult::Miss))),
            Event::L2Hit => (&c.l2_hits, Some((CacheLayer::L2, CacheResult::Hit))),
            Event::L2Miss => (&c.l2_misses, Some((CacheLayer::L2, CacheResult::Miss))),
            Event::Load => {
                metrics.inspect(|m| m.load());
                (&c.loads, None)
            }
            Event::Invalidation => {
                metrics.inspect(|m| m.invalidation());
                (&c.invalidations, None)
            }
            Event::InvalidationReceived => (&c.invalidations_received, None),
        };
        bump(counter);
        if let (Some(metrics), Some((layer, result))) = (metrics, request) {
            metrics.request(layer, result);
        }
    }
}

/// The shared layer could not answer (Redis unreachable or timed out).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("shared cache layer unavailable: {0}")]
pub struct SharedUnavailable(pub String);

/// The version of a key in L2 when it was read; a write-back succeeds only if it is unchanged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct L2Token {
    pub entry_version: String,
    pub namespace_version: String,
}

/// What L2 holds for a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct L2Read {
    pub value: Option<Vec<u8>>,
    pub token: L2Token,
}

/// Receives invalidations published by any process (see [`CacheBackplane::register`]).
pub trait InvalidationSink: Send + Sync {
    /// The key with this encoded form changed.
    fn invalidate_key(&self, encoded_key: &str);
    /// Every key of the namespace with this encoded form changed.
    fn invalidate_namespace(&self, encoded_namespace: &str);
    /// Anything may have changed: drop every entry.
    fn flush(&self);
}

/// The shared layer behind L1: L2 storage and the invalidation bus between processes.
///
/// The in-process default is no backplane at all (`Cache::new(.., None, ..)`): L1 alone, and
/// invalidation is local. [`RedisBackplane`] is the implementation over Redis.
#[async_trait]
pub trait CacheBackplane: Send + Sync + fmt::Debug {
    /// Delivers the invalidations of cache `cache` to `sink` for as long as it lives.
    fn register(&self, cache: &str, sink: Weak<dyn InvalidationSink>);
    /// Changes whenever invalidations may have been missed (each time the subscription is
    /// established): L1 entries loaded under an older epoch are not served.
    fn epoch(&self) -> u64;
    /// Whether invalidations from other processes are being received right now.
    fn subscribed(&self) -> bool;
    /// Reads `key` from L2.
    async fn get(&self, cache: &str, key: &CacheKey) -> Result<L2Read, SharedUnavailable>;
    /// Stores `value` under `key` for `ttl` if the key's version is still `token`; `Ok(false)`
    /// when it changed (an invalidation came in between).
    async fn put(
        &self,
        cache: &str,
        key: &CacheKey,
        token: &L2Token,
        value: &[u8],
        ttl: Duration,
    ) -> Result<bool, SharedUnavailable>;
    /// Removes `key` from L2 and tells every process. Never fails: when the shared layer is
    /// unreachable it remembers the invalidation and delivers it when it is back.
    async fn invalidate(&self, cache: &str, key: &CacheKey, ttl: Duration);
    /// As `invalidate`, for every key of `namespace` (a version bump).
    async fn invalidate_namespace(&self, cache: &str, namespace: &Namespace, ttl: Duration);
}

/// Stripes of invalidation generations: an invalidation bumps its key's stripe, and an L1 entry
/// whose stripe moved since its load started is not served. Unrelated keys in the same stripe
/// only cost an extra miss after an invalidation.
const STRIPES: usize = 1024;

/// A typed cache of `V` values; clones share the same cache.
pub struct Cache<V> {
    inner: Arc<Inner<V>>,
}

impl<V> Clone for Cache<V> {
    fn clone(&self) -> Self {
        Self { inner: self.inner.clone() }
    }
}

impl<V> fmt::Debug for Cache<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cache")
            .field("name", &self.inner.name)
            .field("config", &self.inner.config)
            .field("shared", &self.inner.backplane.is_some())
            .finish()
    }
}

struct Inner<V> {
    name: String,
    config: CacheConfig,
    l1: moka::future::Cache<String, Arc<L1Entry<V>>, foldhash::fast::RandomState>,
    backplane: Option<Arc<dyn CacheBackplane>>,
    clock: Arc<dyn Clock>,
    hasher: foldhash::quality::RandomState,
    key_stripes: Box<[AtomicU64]>,
    namespace_stripes: Box<[AtomicU64]>,
    flushes: AtomicU64,
    counters: Counters,
    /// Set by [`Cache::observe`].
    metrics: std::sync::OnceLock<crate::metrics::CacheHandle>,
}

struct L1Entry<V> {
    value: V,
    stamp: Stamp,
}

/// The state an L1 entry was loaded under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    at: DateTime<Utc>,
    epoch: u64,
    flushes: u64,
    key_generation: u64,
    namespace_generation: u64,
}

impl<V> Cache<V>
where
    V: Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
{
    /// A cache named `name` (the `cache` label of its metrics, and part of its L2 keys: two
    /// processes share entries and invalidations of caches with the same name).
    /// With `backplane` None, the cache is L1 only.
    pub fn new(
        name: &str,
        config: CacheConfig,
        backplane: Option<Arc<dyn CacheBackplane>>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        let l1 = moka::future::Cache::builder()
            .name(name)
            .max_capacity(config.l1_max_entries)
            .time_to_live(config.l1_ttl())
            .build_with_hasher(foldhash::fast::RandomState::default());
        let inner = Arc::new(Inner {
            name: name.to_owned(),
            config,
            l1,
            backplane,
            clock,
            hasher: foldhash::quality::RandomState::default(),
            key_stripes: (0..STRIPES).map(|_| AtomicU64::new(0)).collect(),
            namespace_stripes: (0..STRIPES).map(|_| AtomicU64::new(0)).collect(),
            flushes: AtomicU64::new(0),
            counters: Counters::default(),
            metrics: std::sync::OnceLock::new(),
        });
        if let Some(backplane) = &inner.backplane {
            let sink: Arc<dyn InvalidationSink> = inner.clone();
            backplane.register(name, Arc::downgrade(&sink));
        }
        Self { inner }
    }

    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// Records this cache's hits, misses, loads and invalidations in the process's metrics
    /// (`keel_cache_*{cache="NAME"}`). Call once; later calls do nothing.
    pub fn observe(self, metrics: &crate::metrics::CacheMetrics) -> Self {
        let _ = self.inner.metrics.set(metrics.cache(&self.inner.name));
        self
    }

    /// The value of `key`: from L1, else from L2, else from `load` (and then stored in both).
    /// Concurrent calls for one key in this process share one L2 read and one `load`; they all
    /// get its result, errors included. Errors come only from `load`: an unreachable L2 counts as
    /// a miss.
    pub async fn get_or_load<F, Fut, E>(&self, key: &CacheKey, load: F) -> Result<V, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<V, E>>,
        E: Clone + Send + Sync + 'static,
    {
        let inner = &self.inner;
        if let Some(value) = inner.l1_fresh(key).await {
            return Ok(value);
        }
        let entry = inner
            .l1
            .try_get_with_by_ref(key.encoded(), async {
                let stamp = inner.stamp(key);
                let token = match inner.read_l2(key).await {
                    L2Outcome::Hit(value) => return Ok(Arc::new(L1Entry { value, stamp })),
                    L2Outcome::Miss(token) => Some(token),
                    L2Outcome::Unavailable => None,
                };
                inner.note(Event::Load);
                let value = load().await?;
                if let Some(token) = token {
                    inner.write_l2(key, &token, &value).await;
                }
                Ok(Arc::new(L1Entry { value, stamp }))
            })
            .await
            .map_err(|e: Arc<E>| E::clone(&e))?;
        Ok(entry.value.clone())
    }

    /// The value of `key` if L1 or L2 holds it (an L2 hit is kept in L1); never loads. For
    /// values that are computed by the caller rather than by a loader (stored with
    /// [`insert`](Self::insert)), such as answers that are streamed while they are produced.
    pub async fn get(&self, key: &CacheKey) -> Option<V> {
        let inner = &self.inner;
        if let Some(value) = inner.l1_fresh(key).await {
            return Some(value);
        }
        let stamp = inner.stamp(key);
        match inner.read_l2(key).await {
            L2Outcome::Hit(value) => {
                inner.l1.insert(key.encoded().to_owned(), Arc::new(L1Entry { value: value.clone(), stamp })).await;
                Some(value)
            }
            L2Outcome::Miss(_) | L2Outcome::Unavailable => None,
        }
    }

    /// Stores `value` under `key` in L1 and L2 (L2 unless an invalidation of the key comes in
    /// between its version read and the write; an unreachable L2 is skipped).
    pub async fn insert(&self, key: &CacheKey, value: V) {
        let inner = &self.inner;
        let stamp = inner.stamp(key);
        if let Some(backplane) = &inner.backplane
            && let Ok(read) = backplane.get(&inner.name, key).await
        {
            inner.write_l2(key, &read.token, &value).await;
        }
        inner.l1.insert(key.encoded().to_owned(), Arc::new(L1Entry { value, stamp })).await;
    }

    /// Drops `key` here at once, removes it from L2 and tells every other process to drop it.
    /// Never fails: with Redis unreachable, the L2 removal and the message are sent when it is back.
    pub async fn invalidate(&self, key: &CacheKey) {
        let inner = &self.inner;
        inner.note(Event::Invalidation);
        inner.bump_key(key.encoded());
        inner.l1.invalidate(key.encoded()).await;
        if let Some(backplane) = &inner.backplane {
            backplane.invalidate(&inner.name, key, inner.config.l2_ttl()).await;
        }
    }

    /// Invalidates every key of `namespace`, here and in every other process.
    pub async fn invalidate_namespace(&self, namespace: &Namespace) {
        let inner = &self.inner;
        inner.note(Event::Invalidation);
        inner.bump_namespace(namespace.encoded());
        if let Some(backplane) = &inner.backplane {
            // Namespace versions outlive every entry written under them (see the L2 layout).
            backplane.invalidate_namespace(&inner.name, namespace, inner.config.l2_ttl() * 2).await;
        }
    }

    /// Drops every L1 entry of this process (L2 is untouched).
    pub fn clear_local(&self) {
        self.inner.flush();
    }

    pub fn stats(&self) -> CacheStats {
        let c = &self.inner.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        CacheStats {
            l1_hits: get(&c.l1_hits),
            l1_misses: get(&c.l1_misses),
            l2_hits: get(&c.l2_hits),
            l2_misses: get(&c.l2_misses),
            loads: get(&c.loads),
            invalidations: get(&c.invalidations),
            invalidations_received: get(&c.invalidations_received),
        }
    }

    /// How many entries L1 holds (approximately: moka applies removals lazily).
    pub fn l1_len(&self) -> u64 {
        self.inner.l1.entry_count()
    }
}

enum L2Outcome<V> {
    Hit(V),
    Miss(L2Token),
    Unavailable,
}

impl<V> Inner<V>
where
    V: Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
{
    fn stripe(&self, s: &str) -> usize {
        (self.hasher.hash_one(s) as usize) % STRIPES
    }

    fn bump_key(&self, encoded: &str) {
        self.key_stripes[self.stripe(encoded)].fetch_add(1, Ordering::AcqRel);
    }

    fn bump_namespace(&self, encoded: &str) {
        self.namespace_stripes[self.stripe(encoded)].fetch_add(1, Ordering::AcqRel);
    }

    /// The current state, taken before a load starts.
    fn stamp(&self, key: &CacheKey) -> Stamp {
        Stamp {
            at: self.clock.now(),
            epoch: self.backplane.as_ref().map_or(0, |b| b.epoch()),
            flushes: self.flushes.load(Ordering::Acquire),
            key_generation: self.key_stripes[self.stripe(key.encoded())].load(Ordering::Acquire),
            namespace_generation: self.namespace_stripes[self.stripe(key.namespace().encoded())]
                .load(Ordering::Acquire),
        }
    }

    fn is_fresh(&self, key: &CacheKey, stamp: &Stamp) -> bool {
        let now = self.stamp(key);
        let ttl = match &self.backplane {
            Some(backplane) if !backplane.subscribed() => self.config.l1_degraded_ttl(),
            _ => self.config.l1_ttl(),
        };
        let age = (now.at - stamp.at).to_std().unwrap_or(Duration::ZERO);
        age < ttl
            && now.epoch == stamp.epoch
            && now.flushes == stamp.flushes
            && now.key_generation == stamp.key_generation
            && now.namespace_generation == stamp.namespace_generation
    }

    /// The L1 value of `key` if it is fresh (a stale one is removed); counts the hit or miss.
    async fn l1_fresh(&self, key: &CacheKey) -> Option<V> {
        if let Some(entry) = self.l1.get(key.encoded()).await {
            if self.is_fresh(key, &entry.stamp) {
                self.note(Event::L1Hit);
                return Some(entry.value.clone());
            }
            self.remove_if_stale(key).await;
        }
        self.note(Event::L1Miss);
        None
    }

    /// Removes the L1 entry of `key` if it is (still) stale, atomically with respect to other
    /// writers of the key, so a fresh entry a concurrent load just stored is kept.
    async fn remove_if_stale(&self, key: &CacheKey) {
        self.l1
            .entry_by_ref(key.encoded())
            .and_compute_with(|current| {
                let op = match current {
                    Some(entry) if self.is_fresh(key, &entry.value().stamp) => moka::ops::compute::Op::Nop,
                    Some(_) => moka::ops::compute::Op::Remove,
                    None => moka::ops::compute::Op::Nop,
                };
                std::future::ready(op)
            })
            .await;
    }

    async fn read_l2(&self, key: &CacheKey) -> L2Outcome<V> {
        let Some(backplane) = &self.backplane else { return L2Outcome::Unavailable };
        match backplane.get(&self.name, key).await {
            Ok(L2Read { value: Some(bytes), token }) => match serde_json::from_slice(&bytes) {
                Ok(value) => {
                    self.note(Event::L2Hit);
                    L2Outcome::Hit(value)
                }
                Err(e) => {
                    // Written by another version of the code, most likely: load and overwrite.
                    tracing::warn!(cache = %self.name, error = %e, "undecodable L2 entry, reloading");
                    self.note(Event::L2Miss);
                    L2Outcome::Miss(token)
                }
            },
            Ok(L2Read { value: None, token }) => {
                self.note(Event::L2Miss);
                L2Outcome::Miss(token)
            }
            Err(_) => {
                self.note(Event::L2Miss);
                L2Outcome::Unavailable
            }
        }
    }

    async fn write_l2(&self, key: &CacheKey, token: &L2Token, value: &V) {
        let Some(backplane) = &self.backplane else { return };
        match serde_json::to_vec(value) {
            Ok(bytes) => {
                // A refused or failed write-back only costs a later miss.
                let _ = backplane.put(&self.name, key, token, &bytes, self.config.l2_ttl()).await;
            }
            Err(e) => tracing::warn!(cache = %self.name, error = %e, "cache value does not serialize"),
        }
    }
}

impl<V: Send + Sync + 'static> Inner<V> {
    fn flush(&self) {
        self.flushes.fetch_add(1, Ordering::AcqRel);
        self.l1.invalidate_all();
    }
}

impl<V> InvalidationSink for Inner<V>
where
    V: Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
{
    fn invalidate_key(&self, encoded_key: &str) {
        self.note(Event::InvalidationReceived);
        self.bump_key(encoded_key);
    }

    fn invalidate_namespace(&self, encoded_namespace: &str) {
        self.note(Event::InvalidationReceived);
        self.bump_namespace(encoded_namespace);
    }

    fn flush(&self) {
        self.note(Event::InvalidationReceived);
        Inner::flush(self);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use std::sync::atomic::AtomicUsize;

    fn local(clock: &ManualClock) -> Cache<String> {
        Cache::new("test", CacheConfig::default(), None, Arc::new(clock.clone()))
    }

    #[test]
    fn keys_are_unambiguous_and_carry_the_organization() {
        let a = CacheKey::organization("org_a", "sessions", "s1");
        let b = CacheKey::organization("org_b", "sessions", "s1");
        let global = CacheKey::global("sessions", "s1");
        assert_ne!(a.encoded(), b.encoded());
        assert_ne!(a.encoded(), global.encoded());
        assert_eq!(a.encoded(), "o/org_a/sessions/s1");
        assert_eq!(global.encoded(), "g/sessions/s1");
        // A slash in an id or an organization cannot forge another key.
        let forged = CacheKey::organization("org_a/sessions", "x", "s1");
        let tricky = CacheKey::organization("org_a", "sessions/x", "s1");
        assert_ne!(forged.encoded(), tricky.encoded());
        assert_eq!(CacheKey::global("n", "a/b{c}%").encoded(), "g/n/a%2Fb%7Bc%7D%25");
    }

    #[tokio::test]
    async fn serves_from_l1_until_the_ttl() {
        let clock = ManualClock::default();
        let cache = local(&clock);
        let key = CacheKey::global("n", "k");
        let loads = AtomicUsize::new(0);
        let load = || async {
            loads.fetch_add(1, Ordering::SeqCst);
            Ok::<_, String>("v".to_owned())
        };
        assert_eq!(cache.get_or_load(&key, load).await.unwrap(), "v");
        assert_eq!(cache.get_or_load(&key, load).await.unwrap(), "v");
        assert_eq!(loads.load(Ordering::SeqCst), 1);
        clock.advance(chrono::Duration::milliseconds(30_000));
        cache.get_or_load(&key, load).await.unwrap();
        assert_eq!(loads.load(Ordering::SeqCst), 2, "an entry as old as l1_ttl is not served");
        let stats = cache.stats();
        assert_eq!((stats.l1_hits, stats.l1_misses, stats.loads), (1, 2, 2));
    }

    #[tokio::test]
    async fn inserted_values_are_got_per_key_until_invalidated() {
        let cache = local(&ManualClock::default());
        let a = CacheKey::organization("org_a", "n", "same");
        let b = CacheKey::organization("org_b", "n", "same");
        assert_eq!(cache.get(&a).await, None);
        cache.insert(&a, "answer".to_owned()).await;
        assert_eq!(cache.get(&a).await.as_deref(), Some("answer"));
        assert_eq!(cache.get(&b).await, None, "another organization's key misses");
        cache.invalidate(&a).await;
        assert_eq!(cache.get(&a).await, None);
    }

    #[tokio::test]
    async fn organizations_do_not_share_entries() {
        let cache = local(&ManualClock::default());
        let a = CacheKey::organization("org_a", "n", "same");
        let b = CacheKey::organization("org_b", "n", "same");
        cache.get_or_load(&a, || async { Ok::<_, String>("a".to_owned()) }).await.unwrap();
        let got = cache.get_or_load(&b, || async { Ok::<_, String>("b".to_owned()) }).await.unwrap();
        assert_eq!(got, "b");
    }

    #[tokio::test]
    async fn invalidation_and_namespace_bumps_force_a_reload() {
        let cache = local(&ManualClock::default());
        let ns = Namespace::organization("org_a", "members");
        let (k1, k2) = (ns.key("1"), ns.key("2"));
        let other = CacheKey::organization("org_b", "members", "1");
        for key in [&k1, &k2, &other] {
            cache.get_or_load(key, || async { Ok::<_, String>("old".to_owned()) }).await.unwrap();
        }
        cache.invalidate(&k1).await;
        let new = || async { Ok::<_, String>("new".to_owned()) };
        assert_eq!(cache.get_or_load(&k1, new).await.unwrap(), "new");
        cache.invalidate_namespace(&ns).await;
        assert_eq!(cache.get_or_load(&k2, new).await.unwrap(), "new");
        assert_eq!(cache.stats().invalidations, 2);
    }

    #[tokio::test]
    async fn a_load_racing_an_invalidation_is_not_kept() {
        let cache = local(&ManualClock::default());
        let key = CacheKey::global("n", "k");
        let (started_tx, started_rx) = tokio::sync::oneshot::channel();
        let (finish_tx, finish_rx) = tokio::sync::oneshot::channel::<()>();
        let loader = {
            let cache = cache.clone();
            let key = key.clone();
            tokio::spawn(async move {
                cache
                    .get_or_load(&key, || async move {
                        let _ = started_tx.send(());
                        let _ = finish_rx.await;
                        Ok::<_, String>("read before the write".to_owned())
                    })
                    .await
            })
        };
        started_rx.await.unwrap();
        cache.invalidate(&key).await;
        finish_tx.send(()).unwrap();
        assert_eq!(loader.await.unwrap().unwrap(), "read before the write");
        let got = cache.get_or_load(&key, || async { Ok::<_, String>("fresh".to_owned()) }).await.unwrap();
        assert_eq!(got, "fresh");
    }

    #[tokio::test]
    async fn loader_errors_reach_every_waiter_and_are_not_cached() {
        let cache = local(&ManualClock::default());
        let key = CacheKey::global("n", "k");
        let err = cache.get_or_load(&key, || async { Err::<String, _>("db down".to_owned()) }).await;
        assert_eq!(err, Err("db down".to_owned()));
        let ok = cache.get_or_load(&key, || async { Ok::<_, String>("v".to_owned()) }).await;
        assert_eq!(ok, Ok("v".to_owned()));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_thousand_concurrent_misses_cause_one_load() {
        let cache = local(&ManualClock::default());
        let key = CacheKey::global("n", "hot");
        let loads = Arc::new(AtomicUsize::new(0));
        let barrier = Arc::new(tokio::sync::Barrier::new(1000));
        let tasks: Vec<_> = (0..1000)
            .map(|_| {
                let (cache, key, loads, barrier) = (cache.clone(), key.clone(), loads.clone(), barrier.clone());
                tokio::spawn(async move {
                    barrier.wait().await;
                    cache
                        .get_or_load(&key, || async {
                            loads.fetch_add(1, Ordering::SeqCst);
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            Ok::<_, String>("v".to_owned())
                        })
                        .await
                })
            })
            .collect();
        for task in tasks {
            assert_eq!(task.await.unwrap().unwrap(), "v");
        }
        assert_eq!(loads.load(Ordering::SeqCst), 1);
    }
}
