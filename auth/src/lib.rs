//! The auth domain: accounts, sessions, organizations and roles, API keys, login throttling.
//!
//! `api` and `error` are the contract and always compile; `server` adds the in-process service,
//! its store and its routes; `client` adds the HTTP client implementing the same trait.

pub mod api;
pub mod config;
pub mod error;

#[cfg(feature = "client")]
pub mod client;
#[cfg(feature = "server")]
pub mod http;
#[cfg(feature = "server")]
mod password;
#[cfg(feature = "server")]
pub mod service;
#[cfg(feature = "server")]
mod store;
#[cfg(feature = "server")]
mod token;

/// The domain's name: its PostgreSQL schema, its SQLite file, its `--only` name.
pub const DOMAIN: &str = "auth";

pub use api::*;
#[cfg(feature = "client")]
pub use client::HttpAuthClient;
pub use config::AuthConfig;
pub use error::AuthError;
#[cfg(feature = "server")]
pub use service::AuthService;
