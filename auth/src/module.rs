//! The auth domain as the gateway registers it.

use crate::api::{AuthApi, SCOPES};
use crate::client::HttpAuthClient;
use crate::config::AuthConfig;
use crate::service::AuthService;
use crate::store;
use actix_web::web;
use async_trait::async_trait;
use shared::Secret;
use shared::config::DatabaseOverride;
use shared::db::Db;
use shared::module::{BoxError, Component, Contract, Contracts, Migrations, Module, Platform};
use shared::scope::ScopeDef;
use std::sync::Arc;

/// The auth domain, configured (`[auth]`, `KEEL_AUTH__*`).
#[derive(Debug, Clone, Default)]
pub struct AuthModule {
    config: AuthConfig,
}

impl AuthModule {
    pub fn new(config: AuthConfig) -> Self {
        Self { config }
    }
}

fn contract(api: Arc<dyn AuthApi>) -> Arc<dyn Component> {
    Contract::new(api, |api| Box::pin(async move { api.ready().await.map_err(|e| e.to_string()) }))
}

#[async_trait]
impl Module for AuthModule {
    fn name(&self) -> &'static str {
        crate::DOMAIN
    }

    fn scopes(&self) -> &'static [ScopeDef] {
        SCOPES
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

    async fn build_local(&self, db: Db, platform: &Platform, _: &Contracts) -> Result<Arc<dyn Component>, BoxError> {
        let service = AuthService::new(db, self.config.clone(), platform).await?;
        Ok(contract(Arc::new(service)))
    }

    fn build_remote(&self, url: &Secret, platform: &Platform) -> Result<Arc<dyn Component>, BoxError> {
        Ok(contract(Arc::new(HttpAuthClient::new(url, &platform.remote)?)))
    }

    fn openapi(&self) -> utoipa::openapi::OpenApi {
        crate::http::document()
    }

    fn routes(&self, cfg: &mut web::ServiceConfig) {
        crate::http::configure(cfg);
    }
}
