//! The inference domain: an OpenAI-compatible gateway to model providers (chat completions,
//! streaming, embeddings, models) with routing, retries, circuit breakers, bulkheads, budgets
//! and metering.
//!
//! `api`, `error` and `config` are the contract and always compile; `server` adds the service,
//! its providers and its routes; `client` the HTTP client implementing the same trait; with
//! both, `module` is what the gateway registers.

pub mod api;
pub mod config;
pub mod error;
pub mod rag_api;

#[cfg(feature = "server")]
mod cache;
#[cfg(feature = "client")]
pub mod client;
#[cfg(feature = "server")]
mod grounding;
#[cfg(feature = "server")]
pub mod http;
#[cfg(feature = "server")]
mod metrics;
#[cfg(all(feature = "server", feature = "client"))]
pub mod module;
#[cfg(feature = "server")]
mod provider;
#[cfg(feature = "server")]
pub mod rag;
#[cfg(feature = "client")]
mod rag_client;
#[cfg(feature = "server")]
pub mod rag_http;
#[cfg(feature = "server")]
mod router;
#[cfg(feature = "server")]
pub mod service;
#[cfg(feature = "server")]
mod tokens;

/// The domain's name: its config section, PostgreSQL schema, SQLite file and `--only` value.
pub const DOMAIN: &str = "inference";

pub use api::*;
#[cfg(feature = "client")]
pub use client::HttpInferenceClient;
pub use config::InferenceConfig;
pub use error::InferenceError;
#[cfg(all(feature = "server", feature = "client"))]
pub use module::InferenceModule;
#[cfg(feature = "server")]
pub use rag::RagService;
pub use rag_api::*;
#[cfg(feature = "server")]
pub use service::InferenceService;
