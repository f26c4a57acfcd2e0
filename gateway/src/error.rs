//! Why a gateway could not start, migrate or keep serving.

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("{domain} database settings: {source}")]
    DatabaseUrl { domain: &'static str, source: shared::config::DatabaseUrlError },
    #[error("{domain} database: {source}")]
    Database { domain: &'static str, source: shared::db::DbError },
    #[error("{domain} domain: {source}")]
    Domain { domain: &'static str, source: shared::module::BoxError },
    #[error("unknown domain {0:?}; the domains are {known}", known = crate::config::DOMAIN_NAMES.join(", "))]
    UnknownDomain(String),
    #[error("jobs: {0}")]
    Jobs(String),
    #[error("redis settings: {0}")]
    Redis(String),
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: String, source: std::io::Error },
    #[error("HTTP server: {0}")]
    Server(std::io::Error),
    #[error("OpenAPI document: {0}")]
    OpenApi(String),
    #[error("background task failed: {0}")]
    Task(String),
}
