//! Attributes of a vector-store file and OpenAI's attribute filters.
//!
//! Attributes are at most 16 keys of at most 64 characters, each a string (at most 512
//! characters), a number or a boolean. A filter is a comparison
//! (`{"type": "eq"|"ne"|"gt"|"gte"|"lt"|"lte"|"in"|"nin", "key": …, "value": …}`) or a compound
//! (`{"type": "and"|"or", "filters": […]}`). One evaluator, [`Filter::matches`], serves the keyword
//! and the in-process vector index, so both agree on every edge case:
//! - a comparison on a missing key is false, except `ne` and `nin`, which are true;
//! - numbers compare as numbers, strings by bytes, booleans only with `eq`/`ne`/`in`/`nin`;
//!   a comparison across types is false (`ne`, `nin`: true).

use std::cmp::Ordering;
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::{Result, SearchError};

/// OpenAI's limit on the number of attribute keys.
pub const MAX_ATTRIBUTES: usize = 16;
/// OpenAI's limit on an attribute key's length.
pub const MAX_KEY_CHARS: usize = 64;
/// OpenAI's limit on a string attribute's length.
pub const MAX_STRING_CHARS: usize = 512;
/// Keel's limit on the number of nodes in one filter (comparisons and compounds).
pub const MAX_FILTER_NODES: usize = 64;
/// Keel's limit on the nesting depth of compound filters.
pub const MAX_FILTER_DEPTH: usize = 8;

/// An attribute value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum AttributeValue {
    /// `true` or `false`.
    Bool(bool),
    /// A JSON number. Compared as a double; written back as an integer when it is one (within
    /// ±2⁵³, where doubles are exact), so `{"year": 2026}` comes back as sent, not `2026.0`.
    #[serde(serialize_with = "number")]
    Number(f64),
    /// A string.
    String(String),
}

/// Largest integer a double holds exactly.
const EXACT_INTEGER: f64 = 9_007_199_254_740_992.0;

fn number<S: serde::Serializer>(n: &f64, serializer: S) -> Result<S::Ok, S::Error> {
    if n.fract() == 0.0 && n.abs() <= EXACT_INTEGER {
        // Exact: |n| ≤ 2⁵³ and integral.
        serializer.serialize_i64(*n as i64)
    } else {
        serializer.serialize_f64(*n)
    }
}

impl From<&str> for AttributeValue {
    fn from(s: &str) -> Self {
        Self::String(s.to_owned())
    }
}

impl From<f64> for AttributeValue {
    fn from(n: f64) -> Self {
        Self::Number(n)
    }
}

impl From<bool> for AttributeValue {
    fn from(b: bool) -> Self {
        Self::Bool(b)
    }
}

/// A file's attributes.
pub type Attributes = BTreeMap<String, AttributeValue>;

/// Checks OpenAI's limits on attributes.
pub fn validate_attributes(attrs: &Attributes) -> Result<()> {
    if attrs.len() > MAX_ATTRIBUTES {
        return Err(SearchError::invalid("attributes", format!("at most {MAX_ATTRIBUTES} keys, got {}", attrs.len())));
    }
    for (key, value) in attrs {
        if key.is_empty() || key.chars().count() > MAX_KEY_CHARS {
            return Err(SearchError::invalid(
                "attributes",
                format!("keys must have 1 to {MAX_KEY_CHARS} characters: {key:?}"),
            ));
        }
        match value {
            AttributeValue::String(s) if s.chars().count() > MAX_STRING_CHARS => {
                return Err(SearchError::invalid(
                    "attributes",
                    format!("the value of {key:?} exceeds {MAX_STRING_CHARS} characters"),
                ));
            }
            AttributeValue::Number(n) if !n.is_finite() => {
                return Err(SearchError::invalid("attributes", format!("the value of {key:?} is not a finite number")));
            }
            _ => {}
        }
    }
    Ok(())
}

/// An OpenAI attribute filter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum Filter {
    /// The attribute equals the value.
    Eq {
        /// Attribute key.
        key: String,
        /// Value to compare with.
        value: AttributeValue,
    },
    /// The attribute is missing or differs from the value.
    Ne {
        /// Attribute key.
        key: String,
        /// Value to compare with.
        value: AttributeValue,
    },
    /// The attribute is greater than the value.
    Gt {
        /// Attribute key.
        key: String,
        /// Value to compare with.
        value: AttributeValue,
    },
    /// The attribute is greater than or equal to the value.
    Gte {
        /// Attribute key.
        key: String,
        /// Value to compare with.
        value: AttributeValue,
    },
    /// The attribute is less than the value.
    Lt {
        /// Attribute key.
        key: String,
        /// Value to compare with.
        value: AttributeValue,
    },
    /// The attribute is less than or equal to the value.
    Lte {
        /// Attribute key.
        key: String,
        /// Value to compare with.
        value: AttributeValue,
    },
    /// The attribute equals one of the values.
    In {
        /// Attribute key.
        key: String,
        /// Values to compare with.
        value: Vec<AttributeValue>,
    },
    /// The attribute is missing or equals none of the values.
    Nin {
        /// Attribute key.
        key: String,
        /// Values to compare with.
        value: Vec<AttributeValue>,
    },
    /// Every sub-filter matches (true when empty).
    And {
        /// Sub-filters.
        filters: Vec<Filter>,
    },
    /// At least one sub-filter matches (false when empty).
    Or {
        /// Sub-filters.
        filters: Vec<Filter>,
    },
}

fn compare(a: &AttributeValue, b: &AttributeValue) -> Option<Ordering> {
    match (a, b) {
        (AttributeValue::Number(x), AttributeValue::Number(y)) => x.partial_cmp(y),
        (AttributeValue::String(x), AttributeValue::String(y)) => Some(x.cmp(y)),
        (AttributeValue::Bool(x), AttributeValue::Bool(y)) => Some(x.cmp(y)),
        _ => None,
    }
}

fn equal(a: &AttributeValue, b: &AttributeValue) -> bool {
    compare(a, b) == Some(Ordering::Equal)
}

impl Filter {
    /// Whether a file with these attributes passes the filter.
    pub fn matches(&self, attrs: &Attributes) -> bool {
        let ordered = |key: &str, value: &AttributeValue, ok: fn(Ordering) -> bool| {
            if matches!(value, AttributeValue::Bool(_)) {
                return false;
            }
            attrs.get(key).and_then(|a| compare(a, value)).is_some_and(ok)
        };
        match self {
            Self::Eq { key, value } => attrs.get(key).is_some_and(|a| equal(a, value)),
            Self::Ne { key, value } => !attrs.get(key).is_some_and(|a| equal(a, value)),
            Self::Gt { key, value } => ordered(key, value, |o| o == Ordering::Greater),
            Self::Gte { key, value } => ordered(key, value, |o| o != Ordering::Less),
            Self::Lt { key, value } => ordered(key, value, |o| o == Ordering::Less),
            Self::Lte { key, value } => ordered(key, value, |o| o != Ordering::Greater),
            Self::In { key, value } => attrs.get(key).is_some_and(|a| value.iter().any(|v| equal(a, v))),
            Self::Nin { key, value } => !attrs.get(key).is_some_and(|a| value.iter().any(|v| equal(a, v))),
            Self::And { filters } => filters.iter().all(|f| f.matches(attrs)),
            Self::Or { filters } => filters.iter().any(|f| f.matches(attrs)),
        }
    }

    /// Checks Keel's limits on size and depth (a filter runs once per candidate, so it must stay
    /// small).
    pub fn validate(&self) -> Result<()> {
        let mut nodes = 0usize;
        self.walk(1, &mut nodes)?;
        if nodes > MAX_FILTER_NODES {
            return Err(SearchError::invalid("filters", format!("at most {MAX_FILTER_NODES} conditions, got {nodes}")));
        }
        Ok(())
    }

    fn walk(&self, depth: usize, nodes: &mut usize) -> Result<()> {
        *nodes += 1;
        if depth > MAX_FILTER_DEPTH {
            return Err(SearchError::invalid("filters", format!("nested deeper than {MAX_FILTER_DEPTH} levels")));
        }
        match self {
            Self::And { filters } | Self::Or { filters } => {
                for f in filters {
                    f.walk(depth + 1, nodes)?;
                }
            }
            Self::In { value, .. } | Self::Nin { value, .. } => *nodes += value.len(),
            _ => {}
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn numbers_come_back_as_they_were_sent() {
        let sent = json!({"year": 2026, "weight": 0.5, "neg": -3, "big": 1e300, "flag": true, "s": "x"});
        let parsed: Attributes = serde_json::from_value(sent.clone()).unwrap();
        assert_eq!(serde_json::to_value(&parsed).unwrap(), sent);
        assert_eq!(serde_json::to_string(&parsed["year"]).unwrap(), "2026");
    }

    fn attrs(v: serde_json::Value) -> Attributes {
        serde_json::from_value(v).unwrap()
    }

    fn filter(v: serde_json::Value) -> Filter {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn comparisons() {
        let a = attrs(json!({"author": "ann", "year": 2021, "draft": false}));
        let cases = [
            (json!({"type": "eq", "key": "author", "value": "ann"}), true),
            (json!({"type": "eq", "key": "author", "value": "bob"}), false),
            (json!({"type": "eq", "key": "year", "value": 2021.0}), true),
            (json!({"type": "eq", "key": "draft", "value": false}), true),
            (json!({"type": "eq", "key": "year", "value": "2021"}), false),
            (json!({"type": "ne", "key": "author", "value": "bob"}), true),
            (json!({"type": "ne", "key": "missing", "value": "x"}), true),
            (json!({"type": "ne", "key": "year", "value": "2021"}), true),
            (json!({"type": "gt", "key": "year", "value": 2020}), true),
            (json!({"type": "gt", "key": "year", "value": 2021}), false),
            (json!({"type": "gte", "key": "year", "value": 2021}), true),
            (json!({"type": "lt", "key": "year", "value": 2021}), false),
            (json!({"type": "lte", "key": "year", "value": 2021}), true),
            (json!({"type": "lt", "key": "author", "value": "bob"}), true),
            (json!({"type": "gt", "key": "missing", "value": 1}), false),
            (json!({"type": "gt", "key": "draft", "value": true}), false),
            (json!({"type": "in", "key": "author", "value": ["bob", "ann"]}), true),
            (json!({"type": "nin", "key": "author", "value": ["bob", "ann"]}), false),
            (json!({"type": "nin", "key": "missing", "value": ["x"]}), true),
        ];
        for (f, want) in cases {
            assert_eq!(filter(f.clone()).matches(&a), want, "{f}");
        }
    }

    #[test]
    fn compounds() {
        let a = attrs(json!({"author": "ann", "year": 2021}));
        let f = filter(json!({"type": "and", "filters": [
            {"type": "eq", "key": "author", "value": "ann"},
            {"type": "or", "filters": [
                {"type": "lt", "key": "year", "value": 2000},
                {"type": "gte", "key": "year", "value": 2020}
            ]}
        ]}));
        assert!(f.matches(&a));
        assert!(!f.matches(&attrs(json!({"author": "ann", "year": 2010}))));
        assert!(filter(json!({"type": "and", "filters": []})).matches(&a));
        assert!(!filter(json!({"type": "or", "filters": []})).matches(&a));
    }

    #[test]
    fn wire_shape_round_trips_and_rejects_unknown_types() {
        let v = json!({"type": "gte", "key": "n", "value": 3.5});
        assert_eq!(serde_json::to_value(filter(v.clone())).unwrap(), v);
        assert!(serde_json::from_value::<Filter>(json!({"type": "like", "key": "a", "value": "b"})).is_err());
        assert!(serde_json::from_value::<Filter>(json!({"type": "eq", "key": "a", "value": {"x": 1}})).is_err());
    }

    #[test]
    fn limits() {
        let mut deep = filter(json!({"type": "eq", "key": "a", "value": 1}));
        for _ in 0..MAX_FILTER_DEPTH {
            deep = Filter::And { filters: vec![deep] };
        }
        assert!(deep.validate().is_err());
        let wide = Filter::Or {
            filters: (0..MAX_FILTER_NODES).map(|i| Filter::Eq { key: "k".into(), value: (i as f64).into() }).collect(),
        };
        assert!(wide.validate().is_err());

        let many: Attributes = (0..17).map(|i| (format!("k{i}"), AttributeValue::Bool(true))).collect();
        assert!(validate_attributes(&many).is_err());
        assert!(validate_attributes(&attrs(json!({"k": "x".repeat(513)}))).is_err());
        assert!(validate_attributes(&attrs(json!({"k".repeat(65): 1}))).is_err());
        assert!(validate_attributes(&attrs(json!({"k": "x".repeat(512), "n": 1.5, "b": true}))).is_ok());
    }
}
