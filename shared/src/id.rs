//! Typed, prefixed identifiers with a UUIDv7 inside: `usr_01936c1f8e7a7b3c9d2e4f5a6b7c8d9e`.
//!
//! The prefix tells a reader what an id names, the UUIDv7 makes ids sortable by creation time
//! (so keyset pagination by id follows creation order), and the newtype stops a `UserId` from
//! being passed where an `OrganizationId` is expected.

/// The reason a string is not a valid id of a given type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a valid {expected} id")]
pub struct ParseIdError {
    pub expected: &'static str,
}

/// Defines a prefixed id newtype: `define_id!(UserId, "usr");`.
#[macro_export]
macro_rules! define_id {
    ($(#[$meta:meta])* $name:ident, $prefix:literal) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name($crate::__uuid::Uuid);

        impl $name {
            pub const PREFIX: &'static str = $prefix;

            /// A new id, ordered after every id generated before it in this process.
            pub fn new() -> Self {
                Self($crate::__uuid::Uuid::now_v7())
            }

            pub fn uuid(&self) -> $crate::__uuid::Uuid {
                self.0
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "{}_{}", $prefix, self.0.simple())
            }
        }

        impl std::str::FromStr for $name {
            type Err = $crate::id::ParseIdError;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                let err = $crate::id::ParseIdError { expected: $prefix };
                let rest = s
                    .strip_prefix($prefix)
                    .and_then(|r| r.strip_prefix('_'))
                    .ok_or_else(|| err.clone())?;
                if rest.len() != 32 {
                    return Err(err);
                }
                $crate::__uuid::Uuid::try_parse(rest).map(Self).map_err(|_| err)
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.collect_str(self)
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str> as serde::Deserialize>::deserialize(deserializer)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }

        impl $crate::__utoipa::PartialSchema for $name {
            fn schema() -> $crate::__utoipa::openapi::RefOr<$crate::__utoipa::openapi::schema::Schema> {
                $crate::__utoipa::openapi::ObjectBuilder::new()
                    .schema_type($crate::__utoipa::openapi::schema::Type::String)
                    .pattern(Some(concat!("^", $prefix, "_[0-9a-f]{32}$")))
                    .examples([concat!($prefix, "_0193a5b2c4d07e8f9a0b1c2d3e4f5a6b")])
                    .into()
            }
        }

        impl $crate::__utoipa::ToSchema for $name {}
    };
}

#[cfg(test)]
mod tests {
    define_id!(ThingId, "thg");

    #[test]
    fn display_and_parse_round_trip() {
        let id = ThingId::new();
        let text = id.to_string();
        assert!(text.starts_with(&format!("{}_", ThingId::PREFIX)));
        assert_eq!(text[4..], id.uuid().simple().to_string());
        assert_eq!(text.len(), 4 + 32);
        assert_eq!(text.parse::<ThingId>().unwrap(), id);
    }

    #[test]
    fn rejects_wrong_prefix_and_garbage() {
        let id = ThingId::new().to_string();
        assert!(id.replacen("thg", "usr", 1).parse::<ThingId>().is_err());
        assert!("thg_nothex".parse::<ThingId>().is_err());
        assert!("thg".parse::<ThingId>().is_err());
        assert!(format!("{id}0").parse::<ThingId>().is_err());
    }

    #[test]
    fn ids_sort_by_creation() {
        let a = ThingId::new();
        let b = ThingId::new();
        assert!(a.to_string() < b.to_string());
    }

    #[test]
    fn serde_uses_the_prefixed_form() {
        let id = ThingId::new();
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(json, format!("\"{id}\""));
        assert_eq!(serde_json::from_str::<ThingId>(&json).unwrap(), id);
        assert!(serde_json::from_str::<ThingId>("\"usr_x\"").is_err());
    }
}
