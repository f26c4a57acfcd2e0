//! Keel's gateway: the binary's library half and the composition root.
//!
//! It is the only crate that knows the concrete types behind each domain's contract: it builds
//! each domain in-process (over its own database) or remote (an HTTP client), registers it as
//! `web::Data<dyn …Api>`, and mounts the domain's routes next to its own `/healthz`, `/readyz`
//! and `/openapi.json`.

pub mod app;
pub mod compose;
pub mod config;
pub mod domains;
pub mod error;
pub mod guard;
pub mod jobs;
pub mod limits;
pub mod metrics;
pub mod middleware;
pub mod monitor;
pub mod openapi;
pub mod server;

pub use app::{AppState, app, select};
pub use config::{DOMAIN_NAMES, GatewayConfig};
pub use error::GatewayError;
pub use server::{RunningGateway, start, start_worker};
