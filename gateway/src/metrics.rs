//! The gateway's metrics registry: created once at start-up, handed to the domains (their
//! database pools) and to the app (`/metrics` and the HTTP middleware).

use shared::metrics::{BuildInfo, Metrics};

/// This binary's version and source commit (captured by `build.rs`).
pub fn build_info() -> BuildInfo {
    BuildInfo { version: env!("CARGO_PKG_VERSION").to_owned(), commit: env!("GATEWAY_GIT_COMMIT").to_owned() }
}

/// A fresh registry reporting this build.
pub fn registry() -> Metrics {
    Metrics::new(&build_info())
}
