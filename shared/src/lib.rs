//! Keel's platform layer, shared by every domain crate and the gateway.
//!
//! The always-compiled modules (errors, ids, clock, secrets, pagination, config types) carry no
//! database or web-framework dependency, so a domain's contract can use them and still build
//! without diesel and actix. Everything a server process needs sits behind the `server` feature.

// The derive macros name `::shared::…`, which must resolve inside this crate too.
extern crate self as shared;

pub mod clock;
pub mod config;
pub mod error;
pub mod id;
pub mod jobs;
pub mod page;
pub mod scope;
pub mod secret;
pub mod text;

#[cfg(feature = "server")]
pub mod cache;
#[cfg(feature = "client")]
pub mod client;
#[cfg(feature = "server")]
pub mod db;
#[cfg(feature = "web")]
pub mod http;
#[cfg(feature = "server")]
pub mod metrics;
#[cfg(feature = "server")]
pub mod module;
#[cfg(feature = "web")]
pub mod openapi;
#[cfg(feature = "server")]
pub mod ratelimit;
#[cfg(feature = "server")]
pub mod redis;
#[cfg(any(feature = "web", feature = "client"))]
pub mod request_id;
#[cfg(feature = "server")]
pub mod telemetry;
#[cfg(feature = "testing")]
pub mod testing;
#[cfg(any(feature = "server", feature = "client"))]
pub mod trace;

pub use clock::{Clock, ManualClock, SystemClock};
pub use error::{DomainError, ErrorBody, ErrorEnvelope, ErrorKind};
pub use macros::DomainError;
pub use page::{Page, PageRequest};
pub use secret::Secret;

// Re-exported so that `define_id!` works in crates that do not depend on uuid or utoipa directly.
#[doc(hidden)]
pub use {utoipa as __utoipa, uuid as __uuid};
