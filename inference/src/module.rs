//! The inference domain as the gateway registers it.

use crate::api::InferenceApi;
use crate::client::HttpInferenceClient;
use crate::config::InferenceConfig;
use crate::rag::RagService;
use crate::rag_api::RagApi;
use crate::service::InferenceService;
use actix_web::web;
use async_trait::async_trait;
use auth::AuthApi;
use billing::BillingApi;
use diesel_migrations::{EmbeddedMigrations, embed_migrations};
use shared::Secret;
use shared::config::DatabaseOverride;
use shared::db::Db;
use shared::module::{BoxError, Component, Contracts, Migrations, Module, Platform};
use std::sync::Arc;

/// The retrieval tables (files, vector stores, chunks, the change log); usage and money live
/// in billing.
const POSTGRES_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/postgres");
const SQLITE_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/sqlite");

/// The inference domain, configured (`[inference]`, `KEEL_INFERENCE__*`).
#[derive(Debug, Clone, Default)]
pub struct InferenceModule {
    config: InferenceConfig,
}

impl InferenceModule {
    pub fn new(config: InferenceConfig) -> Self {
        Self { config }
    }
}

/// The built domain: both contracts and, in process, the retrieval service whose ingestion
/// jobs the workers run.
struct InferenceComponent {
    api: Arc<dyn InferenceApi>,
    rag: Arc<dyn RagApi>,
    service: Option<RagService>,
}

#[async_trait]
impl Component for InferenceComponent {
    fn provide(&self, contracts: &mut Contracts) {
        contracts.provide(self.api.clone());
        contracts.provide(self.rag.clone());
    }

    fn app_data(&self, cfg: &mut web::ServiceConfig) {
        cfg.app_data(web::Data::from(self.api.clone()));
        cfg.app_data(web::Data::from(self.rag.clone()));
    }

    async fn ready(&self) -> Result<(), String> {
        self.api.ready().await.map_err(|e| e.to_string())?;
        match &self.service {
            Some(service) => service.ready().await.map_err(|e| e.to_string()),
            None => Ok(()),
        }
    }

    fn jobs(&self) -> Option<(shared::jobs::Jobs, shared::jobs::Registry)> {
        let service = self.service.as_ref()?;
        match service.registry() {
            Ok(registry) => Some((service.jobs().clone(), registry)),
            Err(e) => {
                tracing::error!(error = %e, "inference jobs could not be registered");
                None
            }
        }
    }
}

#[async_trait]
impl Module for InferenceModule {
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
        Migrations { postgres: POSTGRES_MIGRATIONS, sqlite: SQLITE_MIGRATIONS }
    }

    async fn build_local(
        &self,
        db: Db,
        platform: &Platform,
        contracts: &Contracts,
    ) -> Result<Arc<dyn Component>, BoxError> {
        let billing = contracts.require::<dyn BillingApi>(crate::DOMAIN)?;
        // Auth says who administers an organization (`purge_response_cache`).
        let auth = contracts.require::<dyn AuthApi>(crate::DOMAIN)?;
        let service = InferenceService::new(
            &self.config,
            platform.metrics.inference(),
            billing.clone(),
            platform.rate_limiter.clone(),
            platform.cache_backplane.clone(),
            platform.clock.clone(),
            platform.metrics.cache(),
        )?
        .with_auth(auth);
        // Retrieval embeds through the service's providers; grounded chat searches retrieval.
        let rag = RagService::new(db, &self.config, platform.clock.clone(), billing, &service)?;
        // A process that only runs jobs ingests but never searches: no index to hold there.
        if platform.serving {
            rag.start().await;
        }
        let shared: Arc<dyn RagApi> = Arc::new(rag.clone());
        let service = service.with_retrieval(shared.clone());
        Ok(Arc::new(InferenceComponent { api: Arc::new(service), rag: shared, service: Some(rag) }))
    }

    fn build_remote(&self, url: &Secret, platform: &Platform) -> Result<Arc<dyn Component>, BoxError> {
        let client = Arc::new(HttpInferenceClient::new(url, &platform.remote)?);
        Ok(Arc::new(InferenceComponent { api: client.clone(), rag: client, service: None }))
    }

    fn openapi(&self) -> utoipa::openapi::OpenApi {
        let mut document = crate::http::document();
        document.merge(crate::rag_http::document());
        document
    }

    fn routes(&self, cfg: &mut web::ServiceConfig) {
        cfg.app_data(web::Data::new(crate::http::BodyCap(self.config.max_body_bytes)));
        cfg.app_data(web::Data::new(crate::rag_http::FileLimit(self.config.rag.max_file_bytes)));
        crate::http::configure(cfg);
        crate::rag_http::configure(cfg);
    }
}
