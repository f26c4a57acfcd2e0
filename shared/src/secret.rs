//! A string that must never reach a log: passwords, tokens, keys, database URLs with passwords.

use serde::{Deserialize, Serialize};
use utoipa::{PartialSchema, ToSchema, openapi};

/// A secret string. `Debug` prints `[REDACTED]` and there is no `Display`, so it cannot end up in
/// a log line or an error message by accident; `expose()` is the one, greppable, way to read it.
/// Serde is transparent because secrets travel in request bodies (a password at signup) and
/// configuration files.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Self(value)
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Self {
        Self(value.to_owned())
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[REDACTED]")
    }
}

impl PartialSchema for Secret {
    fn schema() -> openapi::RefOr<openapi::schema::Schema> {
        openapi::ObjectBuilder::new()
            .schema_type(openapi::schema::Type::String)
            .format(Some(openapi::SchemaFormat::KnownFormat(openapi::KnownFormat::Password)))
            .into()
    }
}

impl ToSchema for Secret {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_is_redacted_and_serde_is_transparent() {
        let secret = Secret::new("hunter22");
        assert_eq!(format!("{secret:?}"), "[REDACTED]");
        assert_eq!(serde_json::to_string(&secret).unwrap(), "\"hunter22\"");
        let back: Secret = serde_json::from_str("\"hunter22\"").unwrap();
        assert_eq!(back.expose(), "hunter22");
    }
}
