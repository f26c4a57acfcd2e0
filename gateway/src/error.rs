//! `GatewayError`: why a gateway could not start, migrate or keep serving.

use crate::domain::Domain;

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error(transparent)]
    Config(#[from] shared::config::ConfigError),
    #[error("{domain} database settings: {source}")]
    DatabaseUrl { domain: Domain, source: shared::config::DatabaseUrlError },
    #[error("{domain} database: {source}")]
    Database { domain: Domain, source: shared::db::DbError },
    #[error("{domain} domain: {source}")]
    Domain { domain: Domain, source: Box<dyn std::error::Error + Send + Sync> },
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: String, source: std::io::Error },
    #[error("HTTP server: {0}")]
    Server(std::io::Error),
    #[error("OpenAPI document: {0}")]
    OpenApi(String),
    #[error("background task failed: {0}")]
    Task(String),
}
