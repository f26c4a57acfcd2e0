//! Keel's cross-crate suites: the auth contract story (written once over `Arc<dyn AuthApi>`) and
//! the helpers the end-to-end tests share: gateways spawned on `127.0.0.1:0`, a small HTTP
//! client, and a look at what the database stores.

// This crate is test code from end to end: a failed step should stop the test where it is.
#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod billing;
pub mod client;
pub mod contract;
pub mod fake_openai;
pub mod harness;
pub mod rag;

pub use client::{Client, Reply};
pub use harness::{TestGateway, database, fast_auth_config, gateway_config};
