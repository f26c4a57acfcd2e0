//! The exact-match response cache of chat completions, over the platform's two-layer cache
//! (`shared::cache`: moka in each process, Redis shared between them).
//!
//! Only deterministic requests are cached: `temperature` set to 0 (an absent temperature is the
//! provider's default, 1 for OpenAI, so it is not). A model caches them when it has
//! `cache_ttl_secs`; a request opts in with `x-keel-cache: on` (then `default_ttl_secs` if the
//! model has no TTL of its own) or out with `x-keel-cache: off`. The key is the organization
//! (a namespace of its own: no entry is ever served to another organization) and a SHA-256 of
//! the request body in canonical form (keys sorted), without `stream` and `stream_options`,
//! so that a streamed request hits a non-streamed answer and the other way round. An
//! organization's answers can be dropped together before their TTL ([`ResponseCache::purge`],
//! `DELETE /v1/organizations/{org_id}/inference/cache`).

use crate::api::*;
use crate::config::{CacheHitBilling, InferenceConfig};
use crate::router::ModelEntry;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use shared::cache::{Cache, CacheBackplane, CacheConfig, CacheKey, Namespace};
use shared::clock::Clock;
use shared::metrics::{CacheLookups, CacheMetrics};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// The name of the platform cache (its `cache` label in `keel_cache_*`, and in its Redis keys).
const NAME: &str = "inference_responses";

/// The namespace of an organization's answers (`Namespace::organization(org, NAMESPACE)`):
/// every entry of one organization is in it, so that [`ResponseCache::purge`] drops them all.
const NAMESPACE: &str = "chat";

/// One cached answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct CachedAnswer {
    pub response: ChatCompletionResponse,
    /// What the answer cost when it was generated, in nano-units (billed on a hit with
    /// `hit_billing = "full"`).
    pub cost_nanos: i64,
    /// Unix milliseconds after which the entry is not served.
    pub expires_at_ms: i64,
}

/// The response cache.
pub(crate) struct ResponseCache {
    cache: Cache<CachedAnswer>,
    clock: Arc<dyn Clock>,
    default_ttl: Duration,
    max_entry_bytes: usize,
    pub hit_billing: CacheHitBilling,
}

/// Where a cacheable request's answer goes: its key and TTL.
#[derive(Debug, Clone)]
pub(crate) struct Slot {
    pub key: CacheKey,
    pub ttl: Duration,
    /// The model's hit and miss counters.
    lookups: Option<CacheLookups>,
}

impl ResponseCache {
    pub fn new(
        config: &InferenceConfig,
        backplane: Option<Arc<dyn CacheBackplane>>,
        clock: Arc<dyn Clock>,
        metrics: &CacheMetrics,
    ) -> Self {
        let longest = config
            .models
            .values()
            .filter_map(|m| m.cache_ttl_secs)
            .chain([config.cache.default_ttl_secs])
            .max()
            .unwrap_or(config.cache.default_ttl_secs);
        let ttl_ms = longest.saturating_mul(1000);
        // Entries never change once stored (and expire by their own `expires_at_ms`), so the
        // layers keep them as long as the longest TTL, Redis outage or not.
        let layers = CacheConfig {
            l1_max_entries: config.cache.max_entries,
            l1_ttl_ms: ttl_ms,
            l1_degraded_ttl_ms: ttl_ms,
            l2_ttl_ms: ttl_ms,
        };
        Self {
            cache: Cache::new(NAME, layers, backplane, clock.clone()).observe(metrics),
            clock,
            default_ttl: Duration::from_secs(config.cache.default_ttl_secs),
            max_entry_bytes: config.cache.max_entry_bytes,
            hit_billing: config.cache.hit_billing,
        }
    }

    /// Where `request`'s answer is cached, if it is cacheable: deterministic, and the model or
    /// the request enables the cache.
    pub fn slot(&self, organization: &str, model: &ModelEntry, request: &ChatCompletionRequest) -> Option<Slot> {
        let ttl = match (request.cache, model.cache_ttl_secs) {
            (CacheDirective::Off, _) | (CacheDirective::Default, None) => return None,
            (_, Some(secs)) => Duration::from_secs(secs),
            (CacheDirective::On, None) => self.default_ttl,
        };
        if !deterministic(request) {
            return None;
        }
        Some(Slot {
            key: Namespace::organization(organization, NAMESPACE).key(request_hash(request)?),
            ttl,
            lookups: model.cache_lookups.clone(),
        })
    }

    /// Drops every answer of `organization`, here and in every other process: a version bump
    /// of its namespace (never fails; with Redis unreachable, the bump is sent when it is back,
    /// and this process's answers are dropped at once).
    pub async fn purge(&self, organization: &str) {
        self.cache.invalidate_namespace(&Namespace::organization(organization, NAMESPACE)).await;
    }

    /// The unexpired answer stored under `slot`, if any (a hit or a miss of its model).
    pub async fn get(&self, slot: &Slot) -> Option<CachedAnswer> {
        let now = self.clock.now().timestamp_millis();
        let answer = self.cache.get(&slot.key).await.filter(|answer| answer.expires_at_ms > now);
        if let Some(lookups) = &slot.lookups {
            lookups.record(answer.is_some());
        }
        answer
    }

    /// Stores `response` under `slot`, unless it is larger than `max_entry_bytes`. Awaited
    /// before the answer ends (a Redis write at most), so the next identical request hits.
    pub async fn put(&self, slot: Slot, response: ChatCompletionResponse, cost_nanos: i64) {
        let ttl_ms = i64::try_from(slot.ttl.as_millis()).unwrap_or(i64::MAX);
        let answer = CachedAnswer {
            response,
            cost_nanos,
            expires_at_ms: self.clock.now().timestamp_millis().saturating_add(ttl_ms),
        };
        match serde_json::to_vec(&answer) {
            Ok(bytes) if bytes.len() <= self.max_entry_bytes => {}
            Ok(bytes) => {
                tracing::debug!(cache.entry_bytes = bytes.len(), "answer too large to cache");
                return;
            }
            Err(_) => return,
        }
        self.cache.insert(&slot.key, answer).await;
    }
}

/// Whether the request asks for a deterministic answer: `temperature` is 0.
pub(crate) fn deterministic(request: &ChatCompletionRequest) -> bool {
    request.extra.get("temperature").and_then(Value::as_f64) == Some(0.0)
}

/// SHA-256, in hex, of the request body in canonical form, without `stream` and
/// `stream_options`.
fn request_hash(request: &ChatCompletionRequest) -> Option<String> {
    let mut body = serde_json::to_value(request).ok()?;
    if let Value::Object(fields) = &mut body {
        fields.remove("stream");
        fields.remove("stream_options");
    }
    let canonical = serde_json::to_vec(&canonical(body)).ok()?;
    let digest = Sha256::digest(&canonical);
    Some(digest.iter().map(|b| format!("{b:02x}")).collect())
}

/// The value with every object's keys sorted (serde_json may keep insertion order).
fn canonical(value: Value) -> Value {
    match value {
        Value::Object(fields) => {
            let sorted: BTreeMap<String, Value> = fields.into_iter().map(|(k, v)| (k, canonical(v))).collect();
            Value::Object(sorted.into_iter().collect())
        }
        Value::Array(items) => Value::Array(items.into_iter().map(canonical).collect()),
        other => other,
    }
}

/// A cached answer replayed as a stream: per choice, one chunk with its whole message and its
/// finish reason; then, if asked, the usage chunk.
pub(crate) fn replay(response: &ChatCompletionResponse, include_usage: bool) -> Vec<ChatCompletionChunk> {
    let chunk = |choices: Vec<ChunkChoice>, usage: Option<Usage>| ChatCompletionChunk {
        id: response.id.clone(),
        object: "chat.completion.chunk".into(),
        created: response.created,
        model: response.model.clone(),
        choices,
        usage,
        extra: response.extra.clone(),
    };
    let mut chunks: Vec<ChatCompletionChunk> = response
        .choices
        .iter()
        .map(|choice| {
            let mut extra = choice.message.extra.clone();
            // In a stream, each tool call carries its index.
            if let Some(Value::Array(calls)) = extra.get_mut("tool_calls") {
                for (i, call) in calls.iter_mut().enumerate() {
                    if let Value::Object(call) = call {
                        call.entry("index").or_insert(Value::from(i));
                    }
                }
            }
            let content = match &choice.message.content {
                Some(Value::String(text)) => Some(text.clone()),
                _ => None,
            };
            let delta = Delta { role: Some(choice.message.role.clone()), content, extra };
            chunk(
                vec![ChunkChoice {
                    index: choice.index,
                    delta,
                    finish_reason: choice.finish_reason.clone(),
                    extra: choice.extra.clone(),
                }],
                None,
            )
        })
        .collect();
    if include_usage {
        chunks.push(chunk(Vec::new(), Some(response.usage.clone().unwrap_or_default())));
    }
    chunks
}

/// Builds the answer of a stream from its chunks, for the cache. Only plain text answers are
/// assembled: a chunk with anything else that is not null (tool call deltas, logprobs) makes
/// the answer uncacheable.
#[derive(Debug, Default)]
pub(crate) struct Assembler {
    head: Option<(String, i64, String, Extra)>,
    choices: BTreeMap<u32, (String, String, Option<String>)>,
    uncacheable: bool,
}

fn plain(extra: &Extra) -> bool {
    extra.values().all(Value::is_null)
}

impl Assembler {
    pub fn push(&mut self, chunk: &ChatCompletionChunk) {
        if self.uncacheable {
            return;
        }
        let mut extra = chunk.extra.clone();
        extra.remove("obfuscation");
        self.head = Some((chunk.id.clone(), chunk.created, chunk.model.clone(), extra));
        for choice in &chunk.choices {
            if !plain(&choice.extra) || !plain(&choice.delta.extra) {
                self.uncacheable = true;
                return;
            }
            let entry = self.choices.entry(choice.index).or_insert_with(|| ("assistant".into(), String::new(), None));
            if let Some(role) = &choice.delta.role {
                entry.0.clone_from(role);
            }
            if let Some(text) = &choice.delta.content {
                entry.1.push_str(text);
            }
            if choice.finish_reason.is_some() {
                entry.2.clone_from(&choice.finish_reason);
            }
        }
    }

    /// The whole answer, with `usage`; None if it cannot be cached.
    pub fn finish(self, usage: Usage) -> Option<ChatCompletionResponse> {
        if self.uncacheable || self.choices.is_empty() {
            return None;
        }
        let (id, created, model, extra) = self.head?;
        let choices = self
            .choices
            .into_iter()
            .map(|(index, (role, content, finish_reason))| Choice {
                index,
                message: ChatMessage { role, content: Some(Value::String(content)), extra: Extra::new() },
                finish_reason,
                extra: Extra::new(),
            })
            .collect();
        Some(ChatCompletionResponse {
            id,
            object: "chat.completion".into(),
            created,
            model,
            choices,
            usage: Some(usage),
            extra,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn request(body: Value) -> ChatCompletionRequest {
        serde_json::from_value(body).unwrap()
    }

    #[test]
    fn the_key_ignores_streaming_and_field_order_but_nothing_else() {
        let a = request(json!({"model": "m", "temperature": 0, "messages": [{"role": "user", "content": "hi"}]}));
        let b = request(json!({"messages": [{"content": "hi", "role": "user"}], "stream": true,
            "stream_options": {"include_usage": true}, "temperature": 0, "model": "m"}));
        assert_eq!(request_hash(&a), request_hash(&b));
        let other_text =
            request(json!({"model": "m", "temperature": 0, "messages": [{"role": "user", "content": "ho"}]}));
        let other_model =
            request(json!({"model": "n", "temperature": 0, "messages": [{"role": "user", "content": "hi"}]}));
        let other_field = request(
            json!({"model": "m", "temperature": 0, "seed": 1, "messages": [{"role": "user", "content": "hi"}]}),
        );
        for other in [other_text, other_model, other_field] {
            assert_ne!(request_hash(&a), request_hash(&other));
        }
    }

    #[test]
    fn only_temperature_zero_is_deterministic() {
        let with = |t: Value| {
            let mut body = json!({"model": "m", "messages": []});
            if !t.is_null() {
                body["temperature"] = t;
            }
            deterministic(&request(body))
        };
        assert!(with(json!(0)));
        assert!(with(json!(0.0)));
        assert!(!with(json!(0.2)));
        assert!(!with(Value::Null), "an absent temperature is the provider's default");
    }

    #[test]
    fn a_streamed_answer_is_assembled_and_replayed() {
        let chunk = |content: Option<&str>, finish: Option<&str>| -> ChatCompletionChunk {
            serde_json::from_value(json!({"id": "c", "object": "chat.completion.chunk", "created": 5, "model": "m",
                "system_fingerprint": "fp", "choices": [{"index": 0, "delta": {"content": content}, "logprobs": null,
                "finish_reason": finish}]}))
            .unwrap()
        };
        let mut assembler = Assembler::default();
        assembler.push(&chunk(Some("a"), None));
        assembler.push(&chunk(Some(" b"), Some("stop")));
        let response = assembler.finish(Usage::new(3, 2)).unwrap();
        assert_eq!(response.choices[0].message.text(), "a b");
        assert_eq!(response.choices[0].finish_reason.as_deref(), Some("stop"));
        assert_eq!(response.extra["system_fingerprint"], "fp");
        let chunks = replay(&response, true);
        assert_eq!(chunks.len(), 2);
        assert_eq!(chunks[0].choices[0].delta.content.as_deref(), Some("a b"));
        assert_eq!(chunks[1].usage, Some(Usage::new(3, 2)));
        assert!(chunks[1].choices.is_empty());
        assert_eq!(replay(&response, false).len(), 1);

        let mut tools = Assembler::default();
        tools.push(
            &serde_json::from_value(json!({"id": "c", "object": "x", "created": 5, "model": "m",
            "choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0}]}}]}))
            .unwrap(),
        );
        assert!(tools.finish(Usage::new(1, 1)).is_none(), "tool call deltas are not assembled");
    }
}
