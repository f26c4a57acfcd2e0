//! The auth domain: accounts, sessions, organizations and roles, API keys, login throttling.
//!
//! `api` and `error` are the contract and always compile; `web` adds the `Caller` extractor that
//! any domain's routes use to authenticate; `server` adds the in-process service, its store and
//! its routes; `client` adds the HTTP client implementing the same trait; with both, `module`
//! is what the gateway registers.

pub mod api;
pub mod config;
pub mod error;

#[cfg(feature = "client")]
pub mod client;
#[cfg(feature = "server")]
mod credentials;
#[cfg(feature = "server")]
pub mod http;
#[cfg(all(feature = "server", feature = "client"))]
pub mod module;
#[cfg(feature = "server")]
mod password;
#[cfg(feature = "server")]
pub mod service;
#[cfg(feature = "server")]
mod store;
#[cfg(feature = "server")]
mod token;
#[cfg(feature = "web")]
pub mod web;

/// The domain's name: its PostgreSQL schema, its SQLite file, its `--only` name.
pub const DOMAIN: &str = "auth";

pub use api::*;
#[cfg(feature = "client")]
pub use client::HttpAuthClient;
pub use config::AuthConfig;
pub use error::AuthError;
#[cfg(all(feature = "server", feature = "client"))]
pub use module::AuthModule;
#[cfg(feature = "server")]
pub use service::AuthService;
