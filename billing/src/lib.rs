//! The billing domain: plans, prepaid credits on a double-entry ledger, budget holds,
//! idempotent usage metering, invoices.
//!
//! `api` and `error` are the contract and always compile (no diesel, no actix): inference
//! depends on them for `BillingApi`, `Money` and `cost_of`. `server` adds the in-process
//! service, its store, jobs and routes; `client` adds the HTTP client implementing the same
//! trait; with both, `module` is what the gateway registers.

pub mod api;
pub mod config;
pub mod error;

#[cfg(feature = "client")]
pub mod client;
#[cfg(feature = "server")]
pub mod http;
#[cfg(feature = "server")]
pub mod jobs;
#[cfg(all(feature = "server", feature = "client"))]
pub mod lease;
#[cfg(all(feature = "server", feature = "client"))]
pub mod module;
#[cfg(feature = "server")]
pub mod service;
#[cfg(feature = "server")]
mod store;

/// The domain's name: its PostgreSQL schema, its SQLite file, its `--only` name.
pub const DOMAIN: &str = "billing";

/// The header that makes a credit grant idempotent.
pub const IDEMPOTENCY_KEY_HEADER: &str = "Idempotency-Key";

pub use api::*;
#[cfg(feature = "client")]
pub use client::HttpBillingClient;
pub use config::BillingConfig;
pub use error::BillingError;
#[cfg(all(feature = "server", feature = "client"))]
pub use lease::LeasedBilling;
#[cfg(all(feature = "server", feature = "client"))]
pub use module::BillingModule;
#[cfg(feature = "server")]
pub use service::BillingService;
