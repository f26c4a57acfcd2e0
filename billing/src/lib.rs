//! The billing domain: plans, prepaid credits on a double-entry ledger, budget holds,
//! idempotent usage metering, invoices.
//!
//! `api` and `error` are the contract and always compile (no diesel, no actix): inference
//! depends on them for `BillingApi`, `Money` and `cost_of`. `server` adds the in-process
//! service, its store and routes; `client` adds the HTTP client implementing the same trait;
//! with both, `module` is what the gateway registers.

pub mod api;
pub mod config;
pub mod error;

/// The domain's name: its PostgreSQL schema, its SQLite file, its `--only` name.
pub const DOMAIN: &str = "billing";

pub use api::*;
pub use config::BillingConfig;
pub use error::BillingError;
