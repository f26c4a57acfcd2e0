//! The composition root: builds every registered domain, in-process over its own database or
//! remote through its client, and hands each one the contracts of the domains before it.

use crate::config::GatewayConfig;
use crate::error::GatewayError;
use shared::SystemClock;
use shared::cache::{CacheBackplane, RedisBackplane};
use shared::db::Db;
use shared::metrics::Metrics;
use shared::module::{Component, Contracts, Module, Platform};
use shared::ratelimit::{
    FailureLimiter, Fallback, InMemoryFailureLimiter, LocalRateLimiter, RateLimiter, RedisFailureLimiter,
    RedisRateLimiter,
};
use shared::redis::Redis;
use shared::scope::Scopes;
use std::sync::Arc;

/// A built domain.
#[derive(Clone)]
pub struct Built {
    pub module: Arc<dyn Module>,
    pub component: Arc<dyn Component>,
}

impl std::fmt::Debug for Built {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Built").field("domain", &self.module.name()).finish_non_exhaustive()
    }
}

/// What the platform gives the domains of this process. With `redis.url` set, throttling, rate
/// limits and cache invalidation are shared through Redis (each with an in-process fallback
/// while Redis is unreachable); without it, everything stays in the process.
pub async fn platform(
    config: &GatewayConfig,
    modules: &[Arc<dyn Module>],
    metrics: &Metrics,
    serving: bool,
) -> Result<Platform, GatewayError> {
    let clock = Arc::new(SystemClock);
    let redis = Redis::from_config(&config.redis).await.map_err(|e| GatewayError::Redis(e.to_string()))?;
    let local_failures: Arc<dyn FailureLimiter> = Arc::new(InMemoryFailureLimiter::new(clock.clone()));
    let (failure_limiter, rate_limiter, cache_backplane, fallback): (_, Arc<dyn RateLimiter>, _, _) = match &redis {
        Some(redis) => {
            let fallback = Fallback::new();
            let failures: Arc<dyn FailureLimiter> =
                Arc::new(RedisFailureLimiter::new(redis.clone(), local_failures, fallback.clone()));
            let backplane: Arc<dyn CacheBackplane> = RedisBackplane::start(redis.clone());
            let limiter = Arc::new(RedisRateLimiter::new(redis.clone(), fallback.clone()));
            (failures, limiter, Some(backplane), Some(fallback))
        }
        None => (local_failures, Arc::new(LocalRateLimiter::new()), None, None),
    };
    Ok(Platform {
        clock,
        failure_limiter,
        scopes: Scopes::new(modules.iter().flat_map(|m| m.scopes().iter().copied()).collect()),
        remote: config.remote.clone(),
        redis,
        cache_backplane,
        rate_limiter,
        rate_limit_fallback: fallback,
        metrics: metrics.clone(),
        serving,
    })
}

/// Builds every domain: remote when its `url` is configured, otherwise in-process over its own
/// database (migrated first when `database.migrate_on_start` is set).
/// The domains of a process and the platform they were built with.
#[derive(Debug)]
pub struct Composition {
    pub built: Vec<Built>,
    pub platform: Platform,
}

/// In-process domains report their database pools (and their own figures) in `metrics`;
/// `serving` is false in a process that only runs jobs ([`Platform::serving`]).
pub async fn build(config: &GatewayConfig, metrics: &Metrics, serving: bool) -> Result<Composition, GatewayError> {
    let modules = config.modules();
    let platform = platform(config, &modules, metrics, serving).await?;
    let mut contracts = Contracts::default();
    let mut built = Vec::with_capacity(modules.len());
    for module in modules {
        let name = module.name();
        let component = match module.remote_url() {
            Some(url) => {
                // The URL itself is not logged: it may carry credentials.
                tracing::info!(domain = name, "using the remote service");
                module.build_remote(url, &platform).map_err(|source| GatewayError::Domain { domain: name, source })?
            }
            None => {
                let db = open(config, module.as_ref()).await?;
                db.observe(metrics.db());
                if config.database.migrate_on_start {
                    migrate(module.as_ref(), &db).await?;
                }
                module
                    .build_local(db, &platform, &contracts)
                    .await
                    .map_err(|source| GatewayError::Domain { domain: name, source })?
            }
        };
        component.provide(&mut contracts);
        built.push(Built { module, component });
    }
    Ok(Composition { built, platform })
}

/// Applies the pending migrations of every in-process domain; returns how many ran per domain.
/// A domain reached over HTTP is migrated by the process that serves it.
pub async fn migrate_all(config: &GatewayConfig) -> Result<Vec<(&'static str, usize)>, GatewayError> {
    let mut applied = Vec::new();
    for module in config.modules().iter().filter(|m| m.remote_url().is_none()) {
        let db = open(config, module.as_ref()).await?;
        applied.push((module.name(), migrate(module.as_ref(), &db).await?));
    }
    Ok(applied)
}

/// Flags (or unflags) an account as a platform administrator, on the auth domain's database
/// (migrated first). Refused when auth runs elsewhere: the command runs where its data is.
pub async fn set_platform_admin(config: &GatewayConfig, email: &str, admin: bool) -> Result<auth::User, GatewayError> {
    let modules = config.modules();
    let Some(module) = modules.iter().find(|m| m.name() == auth::DOMAIN) else {
        return Err(GatewayError::UnknownDomain(auth::DOMAIN.into()));
    };
    if module.remote_url().is_some() {
        let message = "auth.url is set: run this command where the auth domain runs";
        return Err(GatewayError::Domain { domain: auth::DOMAIN, source: message.into() });
    }
    let db = open(config, module.as_ref()).await?;
    migrate(module.as_ref(), &db).await?;
    let platform = platform(config, &modules, &crate::metrics::registry(), false).await?;
    auth::AuthService::set_platform_admin(&db, &platform, &config.auth, email, admin)
        .await
        .map_err(|e| GatewayError::Domain { domain: auth::DOMAIN, source: Box::new(e) })
}

pub(crate) async fn open(config: &GatewayConfig, module: &dyn Module) -> Result<Db, GatewayError> {
    let domain = module.name();
    let settings = config
        .database
        .for_domain(domain, module.database())
        .map_err(|source| GatewayError::DatabaseUrl { domain, source })?;
    blocking(move || Db::connect(&settings)).await?.map_err(|source| GatewayError::Database { domain, source })
}

async fn migrate(module: &dyn Module, db: &Db) -> Result<usize, GatewayError> {
    let domain = module.name();
    let migrations = module.migrations();
    let db = db.clone();
    // Every domain's schema (or file) holds its own job queue, next to its tables.
    let applied =
        blocking(move || Ok(db.migrate(migrations.postgres, migrations.sqlite)? + shared::jobs::migrate(&db)?))
            .await?
            .map_err(|source| GatewayError::Database { domain, source })?;
    tracing::info!(domain, migrations.applied = applied, "database migrated");
    Ok(applied)
}

/// Runs blocking start-up work (opening pools, migrating) off the async thread.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, GatewayError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| GatewayError::Task(e.to_string()))
}
