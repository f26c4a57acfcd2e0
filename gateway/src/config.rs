//! `GatewayConfig`: the whole configuration tree of a gateway process, loaded once at start-up
//! (defaults, then `--config FILE`, then `KEEL_*` environment variables) and passed down by value.

use auth::AuthConfig;
use serde::{Deserialize, Serialize};
use shared::config::{DatabaseConfig, HttpConfig, TelemetryConfig};
use std::path::Path;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GatewayConfig {
    /// `[http]`, `KEEL_HTTP__*`: listen address, body limit, trusted proxies, workers, shutdown.
    pub http: HttpConfig,
    /// `[telemetry]`, `KEEL_TELEMETRY__*`: log format and filter.
    pub telemetry: TelemetryConfig,
    /// `[database]`, `KEEL_DATABASE__*`: the storage shared by every in-process domain.
    pub database: DatabaseConfig,
    /// `[auth]`, `KEEL_AUTH__*`: the auth domain, in-process or remote (`url`).
    pub auth: AuthConfig,
}

impl GatewayConfig {
    /// Loads the configuration: defaults, then `file` if given, then `KEEL_*` variables.
    pub fn load(file: Option<&Path>) -> Result<Self, shared::config::ConfigError> {
        shared::config::load(file)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn a_toml_file_overrides_the_defaults_and_unknown_keys_are_refused() {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        writeln!(
            file,
            "[http]\naddr = \"0.0.0.0:9000\"\ntrusted_proxies = [\"10.0.0.0/8\"]\n\n\
             [auth]\nurl = \"http://auth:8080\"\n\n[auth.argon2]\nmemory_kib = 1024"
        )
        .unwrap();
        let config = GatewayConfig::load(Some(file.path())).unwrap();
        assert_eq!(config.http.addr, "0.0.0.0:9000");
        assert_eq!(config.http.trusted_proxies, vec!["10.0.0.0/8".parse().unwrap()]);
        assert_eq!(config.auth.url.as_deref(), Some("http://auth:8080"));
        assert_eq!(config.auth.argon2.memory_kib, 1024);
        assert_eq!(config.auth.argon2.iterations, 2, "unset keys keep their defaults");
        assert_eq!(config.database, DatabaseConfig::default());

        let mut bad = tempfile::NamedTempFile::new().unwrap();
        writeln!(bad, "[http]\nadress = \"0.0.0.0:9000\"").unwrap();
        assert!(GatewayConfig::load(Some(bad.path())).is_err());
    }

    #[test]
    fn a_missing_config_file_is_an_error() {
        let err = GatewayConfig::load(Some(Path::new("/nonexistent/keel.toml"))).unwrap_err();
        assert!(matches!(err, shared::config::ConfigError::MissingFile(_)), "{err}");
    }
}
