//! The composition root: the one place that knows the concrete types behind each domain's
//! contract, and picks in-process or remote for each from the configuration.

use crate::config::GatewayConfig;
use crate::domain::Domain;
use crate::error::GatewayError;
use auth::{AuthApi, AuthService, HttpAuthClient};
use shared::SystemClock;
use shared::db::Db;
use shared::metrics::Metrics;
use shared::ratelimit::InMemoryFailureLimiter;
use std::sync::Arc;

/// Every domain's contract, ready to serve.
#[derive(Clone)]
pub struct Services {
    pub auth: Arc<dyn AuthApi>,
}

impl std::fmt::Debug for Services {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Services").finish_non_exhaustive()
    }
}

/// Builds every domain: remote when its `url` is configured, otherwise in-process over its own
/// database (migrated first when `database.migrate_on_start` is set).
/// In-process domains report their database pools in `metrics`.
pub async fn build(config: &GatewayConfig, metrics: &Metrics) -> Result<Services, GatewayError> {
    let auth: Arc<dyn AuthApi> = match &config.auth.url {
        Some(url) => {
            // The URL itself is not logged: it may carry credentials.
            tracing::info!(domain = auth::DOMAIN, "using the remote auth service");
            Arc::new(HttpAuthClient::new(url).map_err(|e| domain_error(Domain::Auth, e))?)
        }
        None => {
            let db = open_auth_db(config).await?;
            db.observe(metrics.db());
            if config.database.migrate_on_start {
                migrate_auth(&db).await?;
            }
            let clock = Arc::new(SystemClock);
            let limiter = Arc::new(InMemoryFailureLimiter::new(clock.clone()));
            Arc::new(
                AuthService::new(db, config.auth.clone(), clock, limiter).map_err(|e| domain_error(Domain::Auth, e))?,
            )
        }
    };
    Ok(Services { auth })
}

/// Applies the pending migrations of every in-process domain; returns how many ran per domain.
/// A domain reached over HTTP is migrated by the process that serves it.
pub async fn migrate(config: &GatewayConfig) -> Result<Vec<(Domain, usize)>, GatewayError> {
    let mut applied = Vec::new();
    if config.auth.url.is_none() {
        let db = open_auth_db(config).await?;
        applied.push((Domain::Auth, migrate_auth(&db).await?));
    }
    Ok(applied)
}

async fn open_auth_db(config: &GatewayConfig) -> Result<Db, GatewayError> {
    let settings = config
        .database
        .for_domain(auth::DOMAIN, &config.auth.database)
        .map_err(|source| GatewayError::DatabaseUrl { domain: Domain::Auth, source })?;
    blocking(move || Db::connect(&settings))
        .await?
        .map_err(|source| GatewayError::Database { domain: Domain::Auth, source })
}

async fn migrate_auth(db: &Db) -> Result<usize, GatewayError> {
    let db = db.clone();
    let applied = blocking(move || AuthService::migrate(&db))
        .await?
        .map_err(|source| GatewayError::Database { domain: Domain::Auth, source })?;
    tracing::info!(domain = auth::DOMAIN, migrations.applied = applied, "database migrated");
    Ok(applied)
}

fn domain_error(domain: Domain, error: impl std::error::Error + Send + Sync + 'static) -> GatewayError {
    GatewayError::Domain { domain, source: Box::new(error) }
}

/// Runs blocking start-up work (opening pools, migrating) off the async thread.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, GatewayError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| GatewayError::Task(e.to_string()))
}
