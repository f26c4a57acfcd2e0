//! `GatewayConfig`: the whole configuration tree of a gateway process, loaded once at start-up
//! (defaults, then `--config FILE`, then `KEEL_*` environment variables), checked, and passed
//! down by value. Its domain sections come from the registration in `domains.rs`.

pub use crate::domains::{DOMAIN_NAMES, GatewayConfig};
use std::path::Path;

/// Declares the registered domains: each becomes a section of [`GatewayConfig`] and a module
/// the gateway composes, in order (a domain after the domains it depends on).
macro_rules! register_domains {
    ($($(#[$doc:meta])* $name:ident: $config:ty => $module:ty),* $(,)?) => {
        #[derive(Debug, Clone, Default, PartialEq, Eq, ::serde::Serialize, ::serde::Deserialize)]
        #[serde(default, deny_unknown_fields)]
        pub struct GatewayConfig {
            /// `[http]`, `KEEL_HTTP__*`: listen address, limits, trusted proxies, workers, shutdown.
            pub http: ::shared::config::HttpConfig,
            /// `[telemetry]`, `KEEL_TELEMETRY__*`: log format and filter.
            pub telemetry: ::shared::config::TelemetryConfig,
            /// `[database]`, `KEEL_DATABASE__*`: the storage shared by every in-process domain.
            pub database: ::shared::config::DatabaseConfig,
            /// `[remote]`, `KEEL_REMOTE__*`: timeouts of the clients of remote domains.
            pub remote: ::shared::config::RemoteConfig,
            /// `[redis]`, `KEEL_REDIS__*`: shared cache, limits and invalidation across processes.
            pub redis: ::shared::redis::RedisConfig,
            /// `[rate_limits]`, `KEEL_RATE_LIMITS__*`: request quotas per route class and subject.
            pub rate_limits: ::shared::ratelimit::RateLimitConfig,
            /// `[jobs]`, `KEEL_JOBS__*`: the background workers (`enabled` runs them in `serve`).
            pub jobs: ::shared::jobs::JobsConfig,
            $($(#[$doc])* pub $name: $config,)*
        }

        impl GatewayConfig {
            /// Every registered domain, configured, in registration order.
            pub fn modules(&self) -> Vec<::std::sync::Arc<dyn ::shared::module::Module>> {
                vec![$(::std::sync::Arc::new(<$module>::new(self.$name.clone())),)*]
            }
        }

        /// The names of the registered domains, for `--only`.
        pub const DOMAIN_NAMES: &[&str] = &[$(stringify!($name)),*];
    };
}

pub(crate) use register_domains;

/// A configuration Keel cannot run with.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {0} does not exist")]
    MissingFile(String),
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

impl GatewayConfig {
    /// Loads the configuration: defaults, then `file` if given, then `KEEL_*` variables; then
    /// checks every value.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        let config: Self = shared::config::load(file).map_err(|e| match e {
            shared::config::ConfigError::MissingFile(path) => ConfigError::MissingFile(path),
            shared::config::ConfigError::Invalid(message) => ConfigError::Invalid(message),
        })?;
        config.validate().map_err(ConfigError::Invalid)?;
        Ok(config)
    }

    /// Checks every value of every section; the message names the key (`http.addr` and
    /// `KEEL_HTTP__ADDR`).
    pub fn validate(&self) -> Result<(), String> {
        self.http.validate()?;
        self.database.validate("database")?;
        self.remote.validate()?;
        self.rate_limits.validate()?;
        self.jobs.validate().map_err(|e| format!("jobs: {e}"))?;
        for module in self.modules() {
            module.validate()?;
            if module.remote_url().is_none() {
                self.database
                    .for_domain(module.name(), module.database())
                    .map_err(|e| format!("{} database settings: {e}", module.name()))?;
            }
            if let Some(pool) = &module.database().pool {
                pool.validate(&format!("{}.database.pool", module.name()))?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared::config::DatabaseConfig;
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
        assert_eq!(config.auth.url.as_ref().map(|u| u.expose()), Some("http://auth:8080"));
        assert_eq!(config.auth.argon2.memory_kib, 1024);
        assert_eq!(config.auth.argon2.iterations, 2, "unset keys keep their defaults");
        assert_eq!(config.database, DatabaseConfig::default());

        let mut bad = tempfile::NamedTempFile::new().unwrap();
        writeln!(bad, "[http]\nadress = \"0.0.0.0:9000\"").unwrap();
        let error = GatewayConfig::load(Some(bad.path())).unwrap_err().to_string();
        assert!(error.contains("http.adress") && error.contains("unknown key"), "{error}");
    }

    #[test]
    fn a_missing_config_file_is_an_error() {
        let err = GatewayConfig::load(Some(Path::new("/nonexistent/keel.toml"))).unwrap_err();
        assert!(matches!(err, ConfigError::MissingFile(_)), "{err}");
    }

    #[test]
    fn values_out_of_range_are_refused_with_the_key_named_both_ways() {
        let mut config = GatewayConfig::default();
        config.auth.session_ttl_secs = u64::MAX;
        let error = config.validate().unwrap_err();
        assert!(error.contains("auth.session_ttl_secs (KEEL_AUTH__SESSION_TTL_SECS)"), "{error}");
        let mut config = GatewayConfig::default();
        config.database.pool.connection_timeout_ms = u64::MAX;
        assert!(config.validate().unwrap_err().contains("KEEL_DATABASE__POOL__CONNECTION_TIMEOUT_MS"));
        assert_eq!(GatewayConfig::default().validate(), Ok(()));
    }

    #[test]
    fn every_module_is_named_after_its_section() {
        let names: Vec<&str> = GatewayConfig::default().modules().iter().map(|m| m.name()).collect();
        assert_eq!(names, DOMAIN_NAMES);
    }
}
