//! The billing domain as the gateway registers it.

use crate::api::BillingApi;
use crate::client::HttpBillingClient;
use crate::config::BillingConfig;
use crate::service::BillingService;
use crate::store;
use actix_web::web;
use async_trait::async_trait;
use auth::AuthApi;
use shared::Secret;
use shared::config::DatabaseOverride;
use shared::db::Db;
use shared::module::{BoxError, Component, Contracts, Migrations, Module, Platform};
use std::sync::Arc;

/// The billing domain, configured (`[billing]`, `KEEL_BILLING__*`).
#[derive(Debug, Clone, Default)]
pub struct BillingModule {
    config: BillingConfig,
}

impl BillingModule {
    pub fn new(config: BillingConfig) -> Self {
        Self { config }
    }
}

/// The built domain: its contract, the service token its metering routes accept, and, in
/// process, its job queue.
struct BillingComponent {
    /// What the routes serve: the service, or the remote client.
    api: Arc<dyn BillingApi>,
    /// What the other domains of this process call: `api`, behind leases when enabled.
    provided: Arc<dyn BillingApi>,
    /// The leases behind `provided`, flushed and returned on a graceful stop.
    leased: Option<Arc<crate::lease::LeasedBilling>>,
    service_token: ServiceToken,
    service: Option<BillingService>,
}

/// The token of the metering routes (`/internal/billing/…`), as app data.
#[derive(Debug, Clone, Default)]
pub struct ServiceToken(pub Option<Secret>);

#[async_trait]
impl Component for BillingComponent {
    fn provide(&self, contracts: &mut Contracts) {
        contracts.provide(self.provided.clone());
    }

    fn app_data(&self, cfg: &mut web::ServiceConfig) {
        cfg.app_data(web::Data::from(self.api.clone()));
        cfg.app_data(web::Data::new(self.service_token.clone()));
    }

    async fn ready(&self) -> Result<(), String> {
        self.api.ready().await.map_err(|e| e.to_string())
    }

    async fn shutdown(&self) {
        if let Some(leased) = &self.leased {
            leased.shutdown().await;
        }
    }

    fn jobs(&self) -> Option<(shared::jobs::Jobs, shared::jobs::Registry)> {
        let service = self.service.as_ref()?;
        match crate::jobs::registry(service) {
            Ok(registry) => Some((service.jobs().clone(), registry)),
            Err(e) => {
                tracing::error!(error = %e, "billing jobs could not be registered");
                None
            }
        }
    }
}

impl BillingModule {
    /// `api` behind caller-side leases when `billing.lease.enabled` (and a tokio runtime runs
    /// the flusher), else `api` itself; with the leases, to flush them on a graceful stop.
    fn leased(
        &self,
        api: Arc<dyn BillingApi>,
        platform: &Platform,
    ) -> (Arc<dyn BillingApi>, Option<Arc<crate::lease::LeasedBilling>>) {
        if self.config.lease.enabled && tokio::runtime::Handle::try_current().is_ok() {
            let metrics = platform.metrics.billing().clone();
            let leased = Arc::new(crate::lease::LeasedBilling::new(api, self.config.lease.clone(), metrics));
            (leased.clone(), Some(leased))
        } else {
            (api, None)
        }
    }
}

#[async_trait]
impl Module for BillingModule {
    fn name(&self) -> &'static str {
        crate::DOMAIN
    }

    fn remote_url(&self) -> Option<&Secret> {
        self.config.url.as_ref()
    }

    fn database(&self) -> &DatabaseOverride {
        &self.config.database
    }

    fn validate(&self) -> Result<(), String> {
        self.config.validate()
    }

    fn migrations(&self) -> Migrations {
        Migrations { postgres: store::POSTGRES_MIGRATIONS, sqlite: store::SQLITE_MIGRATIONS }
    }

    async fn build_local(
        &self,
        db: Db,
        platform: &Platform,
        contracts: &Contracts,
    ) -> Result<Arc<dyn Component>, BoxError> {
        let auth = contracts.require::<dyn AuthApi>(crate::DOMAIN)?;
        let service = BillingService::new(db, self.config.clone(), platform, auth);
        let api: Arc<dyn BillingApi> = Arc::new(service.clone());
        let (provided, leased) = self.leased(api.clone(), platform);
        Ok(Arc::new(BillingComponent {
            provided,
            leased,
            api,
            service_token: ServiceToken(self.config.service_token.clone()),
            service: Some(service),
        }))
    }

    fn build_remote(&self, url: &Secret, platform: &Platform) -> Result<Arc<dyn Component>, BoxError> {
        let client = HttpBillingClient::new(url, self.config.service_token.clone(), &platform.remote)?;
        let api: Arc<dyn BillingApi> = Arc::new(client);
        let (provided, leased) = self.leased(api.clone(), platform);
        Ok(Arc::new(BillingComponent {
            provided,
            leased,
            api,
            service_token: ServiceToken(self.config.service_token.clone()),
            service: None,
        }))
    }

    fn openapi(&self) -> utoipa::openapi::OpenApi {
        crate::http::document()
    }

    fn routes(&self, cfg: &mut web::ServiceConfig) {
        crate::http::configure(cfg);
    }
}
