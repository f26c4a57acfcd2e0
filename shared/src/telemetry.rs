//! Logging set-up: JSON lines when not on a terminal (or when configured), pretty otherwise.

use crate::config::{LogFormat, TelemetryConfig};
use std::io::IsTerminal;
use tracing_subscriber::EnvFilter;

/// Installs the global subscriber. `RUST_LOG`, when set, wins over the configured filter.
/// Returns an error if the filter does not parse or a subscriber is already installed.
pub fn init(config: &TelemetryConfig) -> Result<(), String> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(value) if !value.trim().is_empty() => EnvFilter::try_new(value),
        _ => EnvFilter::try_new(&config.filter),
    }
    .map_err(|e| format!("invalid log filter: {e}"))?;
    let json = match config.format {
        LogFormat::Json => true,
        LogFormat::Pretty => false,
        LogFormat::Auto => !std::io::stdout().is_terminal(),
    };
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_target(true);
    let result = if json {
        builder.json().flatten_event(true).with_current_span(true).with_span_list(false).try_init()
    } else {
        builder.pretty().try_init()
    };
    result.map_err(|e| e.to_string())
}
