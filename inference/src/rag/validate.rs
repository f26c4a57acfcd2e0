//! Checks of the retrieval requests: each failure is `invalid_request` naming the parameter,
//! in OpenAI's words where it has them.

use super::store::Keyset;
use crate::error::InferenceError;
use crate::rag_api::{ExpiresAfter, ListQuery};
use search::{Attributes, ChunkingStrategy, Filter, HybridWeights, StaticChunking};
use serde_json::{Map, Value};

/// OpenAI's bounds.
const MAX_METADATA_PAIRS: usize = 16;
const MAX_METADATA_KEY_CHARS: usize = 64;
const MAX_METADATA_VALUE_CHARS: usize = 512;
const MAX_NAME_CHARS: usize = 256;
const MAX_FILENAME_CHARS: usize = 512;
const MAX_EXPIRY_DAYS: u32 = 365;
const MAX_QUERIES: usize = 10;

pub(crate) fn invalid(param: &str, message: impl Into<String>) -> InferenceError {
    InferenceError::validation(param, message)
}

/// A search-crate parameter error, as the API names it.
pub(crate) fn from_search(error: search::SearchError, fallback: &str) -> InferenceError {
    match error {
        search::SearchError::InvalidParameter { param, reason } => {
            invalid(&param, format!("Invalid `{param}`: {reason}."))
        }
        other => invalid(fallback, other.to_string()),
    }
}

/// The `filter` of a list of vector-store files: one of the four statuses.
pub(crate) fn status_filter(filter: Option<&str>) -> Result<(), InferenceError> {
    match filter {
        Some(status) if !["in_progress", "completed", "failed", "cancelled"].contains(&status) => {
            Err(invalid("filter", "`filter` must be in_progress, completed, failed or cancelled."))
        }
        _ => Ok(()),
    }
}

pub(crate) fn filename(name: &str) -> Result<(), InferenceError> {
    if name.trim().is_empty() || name.chars().count() > MAX_FILENAME_CHARS || name.contains(['/', '\\', '\0']) {
        return Err(invalid(
            "file",
            format!("The file needs a name of 1 to {MAX_FILENAME_CHARS} characters, without path separators."),
        ));
    }
    Ok(())
}

pub(crate) fn name(name: Option<&str>) -> Result<(), InferenceError> {
    match name {
        Some(n) if n.chars().count() > MAX_NAME_CHARS => {
            Err(invalid("name", format!("`name` must have at most {MAX_NAME_CHARS} characters.")))
        }
        _ => Ok(()),
    }
}

pub(crate) fn metadata(metadata: &Map<String, Value>) -> Result<(), InferenceError> {
    if metadata.len() > MAX_METADATA_PAIRS {
        return Err(invalid("metadata", format!("`metadata` can have at most {MAX_METADATA_PAIRS} pairs.")));
    }
    for (key, value) in metadata {
        if key.chars().count() > MAX_METADATA_KEY_CHARS {
            return Err(invalid(
                "metadata",
                format!("Metadata keys have at most {MAX_METADATA_KEY_CHARS} characters."),
            ));
        }
        match value {
            Value::String(s) if s.chars().count() <= MAX_METADATA_VALUE_CHARS => {}
            _ => {
                return Err(invalid(
                    "metadata",
                    format!("Metadata values are strings of at most {MAX_METADATA_VALUE_CHARS} characters: `{key}`."),
                ));
            }
        }
    }
    Ok(())
}

/// The days of an `expires_after`.
pub(crate) fn expires_after(expiry: Option<&ExpiresAfter>) -> Result<Option<i32>, InferenceError> {
    let Some(e) = expiry else { return Ok(None) };
    if e.anchor != "last_active_at" {
        return Err(invalid("expires_after.anchor", "`expires_after.anchor` must be `last_active_at`."));
    }
    if !(1..=MAX_EXPIRY_DAYS).contains(&e.days) {
        return Err(invalid(
            "expires_after.days",
            format!("`expires_after.days` must be from 1 to {MAX_EXPIRY_DAYS}."),
        ));
    }
    Ok(Some(e.days as i32))
}

pub(crate) fn chunking(strategy: Option<&Value>) -> Result<StaticChunking, InferenceError> {
    let Some(value) = strategy else { return Ok(StaticChunking::default()) };
    let strategy: ChunkingStrategy = serde_json::from_value(value.clone()).map_err(|e| {
        invalid(
            "chunking_strategy",
            format!(
                "`chunking_strategy` must be {{\"type\": \"auto\"}} or {{\"type\": \"static\", \"static\": {{…}}}}: {e}"
            ),
        )
    })?;
    strategy.resolve().map_err(|e| from_search(e, "chunking_strategy"))
}

pub(crate) fn attributes(attributes: Option<&Map<String, Value>>) -> Result<Attributes, InferenceError> {
    let Some(map) = attributes else { return Ok(Attributes::new()) };
    let parsed: Attributes = serde_json::from_value(Value::Object(map.clone()))
        .map_err(|_| invalid("attributes", "Attribute values must be strings, numbers or booleans."))?;
    search::filter::validate_attributes(&parsed).map_err(|e| from_search(e, "attributes"))?;
    Ok(parsed)
}

/// The queries of a search: a string, or a list of 1 to 10 strings, none empty.
pub(crate) fn queries(query: &Value) -> Result<Vec<String>, InferenceError> {
    let list = match query {
        Value::String(s) => vec![s.clone()],
        Value::Array(items) => items
            .iter()
            .map(|v| v.as_str().map(str::to_owned))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| invalid("query", "`query` must be a string or a list of strings."))?,
        _ => return Err(invalid("query", "`query` must be a string or a list of strings.")),
    };
    if list.is_empty() || list.len() > MAX_QUERIES || list.iter().any(|q| q.trim().is_empty()) {
        return Err(invalid("query", format!("`query` needs 1 to {MAX_QUERIES} non-empty strings.")));
    }
    Ok(list)
}

pub(crate) fn max_num_results(n: Option<u32>, default: u32) -> Result<usize, InferenceError> {
    let n = n.unwrap_or(default);
    if !(1..=50).contains(&n) {
        return Err(invalid("max_num_results", "`max_num_results` must be from 1 to 50."));
    }
    Ok(n as usize)
}

pub(crate) fn filter(filters: Option<&Value>) -> Result<Option<Filter>, InferenceError> {
    let Some(value) = filters else { return Ok(None) };
    let filter: Filter = serde_json::from_value(value.clone())
        .map_err(|e| invalid("filters", format!("`filters` is not a comparison or compound filter: {e}")))?;
    filter.validate().map_err(|e| from_search(e, "filters"))?;
    Ok(Some(filter))
}

/// `ranking_options`: `{"ranker", "score_threshold", "hybrid_search": {"embedding_weight", "text_weight"}}`.
pub(crate) fn ranking(options: Option<&Value>) -> Result<(HybridWeights, f32), InferenceError> {
    let Some(value) = options else { return Ok((HybridWeights::default(), 0.0)) };
    let Some(map) = value.as_object() else {
        return Err(invalid("ranking_options", "`ranking_options` must be an object."));
    };
    let mut weights = HybridWeights::default();
    let mut threshold = 0.0;
    for (key, v) in map {
        match key.as_str() {
            "ranker" => match v.as_str() {
                Some("auto" | "default-2024-11-15" | "default_2024_08_21" | "none") => {}
                _ => return Err(invalid("ranking_options.ranker", "Unknown `ranking_options.ranker`.")),
            },
            "score_threshold" => {
                threshold = v.as_f64().filter(|t| (0.0..=1.0).contains(t)).ok_or_else(|| {
                    invalid("ranking_options.score_threshold", "`score_threshold` must be from 0 to 1.")
                })? as f32;
            }
            "hybrid_search" => {
                weights = serde_json::from_value(v.clone()).map_err(|e| {
                    invalid(
                        "ranking_options.hybrid_search",
                        format!("`hybrid_search` takes embedding_weight and text_weight: {e}"),
                    )
                })?;
                weights.validate().map_err(|e| from_search(e, "ranking_options.hybrid_search"))?;
            }
            other => {
                return Err(invalid(&format!("ranking_options.{other}"), format!("Unknown parameter `{other}`.")));
            }
        }
    }
    Ok((weights, threshold))
}

/// A list query as a keyset, with the flag telling whether the rows read must be reversed to
/// be in the requested order. `parse` checks that a cursor is an id of the listed kind.
pub(crate) fn keyset(query: &ListQuery, parse: impl Fn(&str) -> bool) -> Result<(Keyset, bool, usize), InferenceError> {
    let limit = query.limit.unwrap_or(20);
    if !(1..=100).contains(&limit) {
        return Err(invalid("limit", "`limit` must be from 1 to 100."));
    }
    let descending = match query.order.as_deref() {
        None | Some("desc") => true,
        Some("asc") => false,
        Some(_) => return Err(invalid("order", "`order` must be `asc` or `desc`.")),
    };
    for (param, cursor) in [("after", &query.after), ("before", &query.before)] {
        if let Some(c) = cursor
            && !parse(c)
        {
            return Err(invalid(param, format!("`{param}` is not an id of this list: {c}")));
        }
    }
    if query.after.is_some() && query.before.is_some() {
        return Err(invalid("before", "Use `after` or `before`, not both."));
    }
    // `before` pages backwards: read the other way from the cursor, then reverse.
    let (ascending, from, reverse) = match &query.before {
        Some(before) => (descending, Some(before.clone()), true),
        None => (!descending, query.after.clone(), false),
    };
    Ok((Keyset { ascending, from, limit: i64::from(limit) + 1 }, reverse, limit as usize))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_queries_become_keysets() {
        let q = ListQuery { after: Some("file_x".into()), ..ListQuery::default() };
        let (k, reverse, n) = keyset(&q, |_| true).unwrap();
        assert_eq!((k.ascending, k.from.as_deref(), k.limit, reverse, n), (false, Some("file_x"), 21, false, 20));
        let q = ListQuery {
            before: Some("file_x".into()),
            order: Some("asc".into()),
            limit: Some(5),
            ..ListQuery::default()
        };
        let (k, reverse, _) = keyset(&q, |_| true).unwrap();
        assert_eq!((k.ascending, reverse, k.limit), (false, true, 6));
        let bad = ListQuery { limit: Some(0), ..ListQuery::default() };
        assert!(matches!(keyset(&bad, |_| true), Err(InferenceError::Validation { field, .. }) if field == "limit"));
        let bad = ListQuery { after: Some("vs_1".into()), ..ListQuery::default() };
        assert!(matches!(keyset(&bad, |_| false), Err(InferenceError::Validation { field, .. }) if field == "after"));
    }

    #[test]
    fn ranking_options_and_queries_are_checked() {
        let (w, t) = ranking(Some(
            &serde_json::json!({"score_threshold": 0.5, "hybrid_search": {"embedding_weight": 2, "text_weight": 1}}),
        ))
        .unwrap();
        assert_eq!((w.embedding_weight, w.text_weight, t), (2.0, 1.0, 0.5));
        assert!(ranking(Some(&serde_json::json!({"score_threshold": 2}))).is_err());
        assert_eq!(queries(&serde_json::json!(["a", "b"])).unwrap(), vec!["a", "b"]);
        assert!(queries(&serde_json::json!([])).is_err());
        assert!(max_num_results(Some(51), 10).is_err());
        assert_eq!(max_num_results(None, 10).unwrap(), 10);
    }
}
