//! A domain as the gateway composes it. Each domain crate exposes one [`Module`]: its name, its
//! scopes, its configuration section, how to build it in-process (over its database, with the
//! platform's parts and the contracts of the domains it depends on) or remotely (from a URL),
//! its migrations, routes, OpenAPI document and readiness. The gateway keeps a list of modules
//! and iterates it for composition, `--only`, `migrate`, `/readyz` and `/openapi.json`.

use crate::cache::CacheBackplane;
use crate::clock::Clock;
use crate::config::{DatabaseOverride, RemoteConfig};
use crate::db::Db;
use crate::ratelimit::{FailureLimiter, RateLimiter};
use crate::redis::Redis;
use crate::scope::{ScopeDef, Scopes};
use crate::secret::Secret;
use actix_web::web;
use async_trait::async_trait;
use diesel_migrations::EmbeddedMigrations;
use futures_util::future::BoxFuture;
use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::sync::Arc;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What the platform gives every domain it builds.
#[derive(Clone)]
pub struct Platform {
    pub clock: Arc<dyn Clock>,
    /// Login and other failure throttling.
    pub failure_limiter: Arc<dyn FailureLimiter>,
    /// The scopes every registered domain declares.
    pub scopes: Scopes,
    /// Timeouts of the clients of remote domains.
    pub remote: RemoteConfig,
    /// The process's Redis handle, when `redis.url` is configured.
    pub redis: Option<Redis>,
    /// Shared L2 and cross-process invalidation for caches (`shared::cache::Cache::new`), when
    /// Redis is configured; `None` keeps caches in-process.
    pub cache_backplane: Option<Arc<dyn CacheBackplane>>,
    /// Request rate limits (GCRA): in-process, or on Redis with an in-process fallback.
    pub rate_limiter: Arc<dyn RateLimiter>,
    /// Set while Redis is unreachable and the limiters decide in the process (Redis only).
    pub rate_limit_fallback: Option<Arc<crate::ratelimit::Fallback>>,
    /// The process's metrics registry (`/metrics`): domains register their own families in it.
    pub metrics: crate::metrics::Metrics,
    /// Whether this process serves the HTTP API; false for `gateway worker`, which only runs
    /// jobs. Domains skip what only request handling needs (retrieval's in-memory index).
    pub serving: bool,
}

impl std::fmt::Debug for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Platform")
            .field("scopes", &self.scopes)
            .field("redis", &self.redis.is_some())
            .finish_non_exhaustive()
    }
}

/// A domain's embedded migrations, one set per backend.
#[allow(missing_debug_implementations)]
pub struct Migrations {
    pub postgres: EmbeddedMigrations,
    pub sqlite: EmbeddedMigrations,
}

/// The contracts built so far, by type (`Arc<dyn AuthApi>`), for the domains that depend on
/// them.
#[derive(Default)]
pub struct Contracts(HashMap<TypeId, Box<dyn Any + Send + Sync>>);

impl std::fmt::Debug for Contracts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Contracts").field("count", &self.0.len()).finish()
    }
}

impl Contracts {
    pub fn provide<T: ?Sized + Send + Sync + 'static>(&mut self, contract: Arc<T>) {
        self.0.insert(TypeId::of::<Arc<T>>(), Box::new(contract));
    }

    pub fn get<T: ?Sized + Send + Sync + 'static>(&self) -> Option<Arc<T>> {
        self.0.get(&TypeId::of::<Arc<T>>()).and_then(|c| c.downcast_ref::<Arc<T>>()).cloned()
    }

    /// The contract `T`, or an error naming the domain that needs it.
    pub fn require<T: ?Sized + Send + Sync + 'static>(&self, needed_by: &str) -> Result<Arc<T>, BoxError> {
        self.get().ok_or_else(|| {
            format!("{needed_by} needs {}, which no domain registered before it provides", std::any::type_name::<T>())
                .into()
        })
    }
}

/// A domain, configured, before it is built.
#[async_trait]
pub trait Module: Send + Sync + 'static {
    /// The domain's name: its config section, PostgreSQL schema, SQLite file and `--only` value.
    fn name(&self) -> &'static str;

    /// The API key scopes the domain's routes check.
    fn scopes(&self) -> &'static [ScopeDef] {
        &[]
    }

    /// The remote service to reach instead of running the domain in this process.
    fn remote_url(&self) -> Option<&Secret>;

    /// The domain's overrides of the shared database settings.
    fn database(&self) -> &DatabaseOverride;

    /// Checks the domain's configuration; the message names the bad key.
    fn validate(&self) -> Result<(), String> {
        Ok(())
    }

    fn migrations(&self) -> Migrations;

    /// Builds the in-process domain over its (migrated) database.
    async fn build_local(
        &self,
        db: Db,
        platform: &Platform,
        contracts: &Contracts,
    ) -> Result<Arc<dyn Component>, BoxError>;

    /// Builds the client of the remote domain at `url`.
    fn build_remote(&self, url: &Secret, platform: &Platform) -> Result<Arc<dyn Component>, BoxError>;

    /// The OpenAPI document of the domain's routes.
    fn openapi(&self) -> utoipa::openapi::OpenApi;

    /// Mounts the domain's routes; their handlers find the contract in the app data that
    /// [`Component::app_data`] registers.
    fn routes(&self, cfg: &mut web::ServiceConfig);
}

/// A built domain, in-process or remote: what it provides to others and to the routes.
#[async_trait]
pub trait Component: Send + Sync {
    /// Publishes the domain's contract for the domains built after it.
    fn provide(&self, contracts: &mut Contracts);
    /// Registers the contract as app data (`web::Data<dyn …Api>`).
    fn app_data(&self, cfg: &mut web::ServiceConfig);
    /// Whether the domain can serve (its database or its remote service answers).
    async fn ready(&self) -> Result<(), String>;

    /// The domain's job queue and its handlers, for the workers of `gateway serve` and
    /// `gateway worker`; `None` for a domain without background jobs, or a remote one.
    fn jobs(&self) -> Option<(crate::jobs::Jobs, crate::jobs::Registry)> {
        None
    }

    /// Called once on a graceful stop, after the HTTP server has drained and before the
    /// workers stop: write what the domain buffers in memory (billing's leased settlements).
    async fn shutdown(&self) {}
}

type ReadyFn<T> = dyn Fn(Arc<T>) -> BoxFuture<'static, Result<(), String>> + Send + Sync;

/// The usual component: one contract, shared as `Arc<T>` and `web::Data<T>`.
pub struct Contract<T: ?Sized + Send + Sync + 'static> {
    api: Arc<T>,
    ready: Box<ReadyFn<T>>,
}

impl<T: ?Sized + Send + Sync + 'static> Contract<T> {
    /// `ready` checks the contract's readiness (its `ready()` method).
    pub fn new(
        api: Arc<T>,
        ready: impl Fn(Arc<T>) -> BoxFuture<'static, Result<(), String>> + Send + Sync + 'static,
    ) -> Arc<Self> {
        Arc::new(Self { api, ready: Box::new(ready) })
    }
}

impl<T: ?Sized + Send + Sync + 'static> std::fmt::Debug for Contract<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Contract").field("type", &std::any::type_name::<T>()).finish()
    }
}

#[async_trait]
impl<T: ?Sized + Send + Sync + 'static> Component for Contract<T> {
    fn provide(&self, contracts: &mut Contracts) {
        contracts.provide(self.api.clone());
    }

    fn app_data(&self, cfg: &mut web::ServiceConfig) {
        cfg.app_data(web::Data::from(self.api.clone()));
    }

    async fn ready(&self) -> Result<(), String> {
        (self.ready)(self.api.clone()).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    trait Greeter: Send + Sync {
        fn hello(&self) -> &'static str;
    }

    struct English;

    impl Greeter for English {
        fn hello(&self) -> &'static str {
            "hello"
        }
    }

    #[test]
    fn contracts_are_found_by_their_trait_object_type() {
        let mut contracts = Contracts::default();
        assert!(contracts.get::<dyn Greeter>().is_none());
        let missing = contracts.require::<dyn Greeter>("billing").map(drop).unwrap_err();
        assert!(missing.to_string().contains("billing needs"), "{missing}");
        contracts.provide::<dyn Greeter>(Arc::new(English));
        assert_eq!(contracts.get::<dyn Greeter>().unwrap().hello(), "hello");
    }
}
