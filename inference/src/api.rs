//! The inference contract: `InferenceApi` and the OpenAI wire types it speaks.
//!
//! The request types keep every field Keel does not read in `extra`, so tools, response
//! formats, logprobs and whatever the provider adds next reach it untouched. Always compiled:
//! neither diesel nor actix.

use crate::error::InferenceError;
use async_trait::async_trait;
use auth::{OrganizationId, Principal};
use futures_util::Stream;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use std::pin::Pin;
use std::time::Duration;
use utoipa::ToSchema;

/// The header that carries the gateway's own time for a model call, in milliseconds.
pub const OVERHEAD_HEADER: &str = "x-keel-overhead-ms";

/// The header of the response cache: on a request, `on` (cache this deterministic request) or
/// `off` (never serve it from, nor store it in, the cache); on an answer, `hit` or `miss`
/// (absent when the cache was not used).
pub const CACHE_HEADER: &str = "x-keel-cache";

/// OpenAI's rate-limit answer headers, (limit, remaining, reset) of the requests per minute
/// then of the tokens per minute: see [`RateLimits`].
pub const LIMIT_HEADERS: [(&str, &str, &str); 2] = [
    ("x-ratelimit-limit-requests", "x-ratelimit-remaining-requests", "x-ratelimit-reset-requests"),
    ("x-ratelimit-limit-tokens", "x-ratelimit-remaining-tokens", "x-ratelimit-reset-tokens"),
];

/// What a request asks of the response cache (its `x-keel-cache` header).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum CacheDirective {
    /// No header: the model's setting (`cache_ttl_secs`) decides.
    #[default]
    Default,
    On,
    Off,
}

impl CacheDirective {
    /// The directive of a header value: `on`/`true`/`1` or `off`/`false`/`0`, any case;
    /// anything else is [`Default`](Self::Default).
    pub fn parse(value: &str) -> Self {
        match value.trim().to_ascii_lowercase().as_str() {
            "on" | "true" | "1" => Self::On,
            "off" | "false" | "0" => Self::Off,
            _ => Self::Default,
        }
    }

    /// The header value that carries this directive, if any.
    pub fn header_value(self) -> Option<&'static str> {
        match self {
            Self::Default => None,
            Self::On => Some("on"),
            Self::Off => Some("off"),
        }
    }
}

/// Whether an answer came from the response cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheStatus {
    Hit,
    Miss,
}

impl CacheStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Hit => "hit",
            Self::Miss => "miss",
        }
    }

    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "hit" => Some(Self::Hit),
            "miss" => Some(Self::Miss),
            _ => None,
        }
    }
}

/// Unknown fields of a request or an answer, kept as they came.
pub type Extra = Map<String, Value>;

/// `POST /v1/chat/completions`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ChatCompletionRequest {
    /// The public model name (`GET /v1/models`).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub model: String,
    pub messages: Vec<ChatMessage>,
    /// Answer as server-sent events, chunk by chunk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_options: Option<StreamOptions>,
    /// The most tokens to generate (the older name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    /// The most tokens to generate (the newer name); wins over `max_tokens`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_completion_tokens: Option<u32>,
    /// Every other field (tools, response_format, temperature, …), passed to the provider as is.
    #[serde(flatten)]
    #[schema(value_type = Object)]
    pub extra: Extra,
    /// The request's `x-keel-cache` header (not part of the body).
    #[serde(skip)]
    pub cache: CacheDirective,
}

impl ChatCompletionRequest {
    pub fn is_stream(&self) -> bool {
        self.stream == Some(true)
    }

    /// The output cap the caller asked for, if any.
    pub fn output_cap(&self) -> Option<u32> {
        self.max_completion_tokens.or(self.max_tokens)
    }
}

/// One message of a conversation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ChatMessage {
    pub role: String,
    /// A string, an array of content parts, or null (an assistant message with tool calls).
    #[serde(default)]
    #[schema(value_type = Object)]
    pub content: Option<Value>,
    #[serde(flatten)]
    #[schema(value_type = Object)]
    pub extra: Extra,
}

impl ChatMessage {
    /// The text of the message: the string, or the text parts joined.
    pub fn text(&self) -> String {
        match &self.content {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Array(parts)) => {
                parts.iter().filter_map(|p| p.get("text").and_then(Value::as_str)).collect::<Vec<_>>().join(" ")
            }
            _ => String::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct StreamOptions {
    /// Send a last chunk with the usage of the whole request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub include_usage: Option<bool>,
    #[serde(flatten)]
    #[schema(value_type = Object)]
    pub extra: Extra,
}

/// Token counts of one request.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Usage {
    #[serde(default)]
    pub prompt_tokens: u64,
    #[serde(default)]
    pub completion_tokens: u64,
    #[serde(default)]
    pub total_tokens: u64,
    #[serde(flatten)]
    #[schema(value_type = Object)]
    pub extra: Extra,
}

impl Usage {
    pub fn new(prompt_tokens: u64, completion_tokens: u64) -> Self {
        Self { prompt_tokens, completion_tokens, total_tokens: prompt_tokens + completion_tokens, extra: Extra::new() }
    }
}

/// The answer of a chat completion.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ChatCompletionResponse {
    pub id: String,
    pub object: String,
    pub created: i64,
    pub model: String,
    pub choices: Vec<Choice>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
    #[serde(flatten)]
    #[schema(value_type = Object)]
    pub extra: Extra,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Choice {
    pub index: u32,
    pub message: ChatMessage,
    #[serde(default)]
    pub finish_reason: Option<String>,
    #[serde(flatten)]
    #[schema(value_type = Object)]
    pub extra: Extra,
}

/// One chunk of a streamed chat completion (`data: {…}` of a server-sent event).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ChatCompletionChunk {
    pub id: String,
    pub object: String,
    pub created: i64,
    pub model: String,
    #[serde(default)]
    pub choices: Vec<ChunkChoice>,
    /// Only on the last chunk, when `stream_options.include_usage` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
    #[serde(flatten)]
    #[schema(value_type = Object)]
    pub extra: Extra,
}

impl ChatCompletionChunk {
    /// The text this chunk adds, over all its choices.
    pub fn text(&self) -> impl Iterator<Item = &str> {
        self.choices.iter().filter_map(|c| c.delta.content.as_deref())
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ChunkChoice {
    pub index: u32,
    pub delta: Delta,
    #[serde(default)]
    pub finish_reason: Option<String>,
    #[serde(flatten)]
    #[schema(value_type = Object)]
    pub extra: Extra,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Delta {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    #[serde(flatten)]
    #[schema(value_type = Object)]
    pub extra: Extra,
}

/// `POST /v1/embeddings`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct EmbeddingRequest {
    #[serde(skip_serializing_if = "String::is_empty")]
    pub model: String,
    /// A string, an array of strings, or arrays of token ids.
    #[schema(value_type = Object)]
    pub input: Value,
    #[serde(flatten)]
    #[schema(value_type = Object)]
    pub extra: Extra,
}

impl EmbeddingRequest {
    /// The text of the inputs (token-id inputs count as their length in tokens, see
    /// `input_token_ids`).
    pub fn texts(&self) -> Vec<&str> {
        match &self.input {
            Value::String(s) => vec![s.as_str()],
            Value::Array(items) => items.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        }
    }

    /// The number of token ids given directly (`[1, 2, 3]` or `[[1, 2], [3]]`).
    pub fn input_token_ids(&self) -> u64 {
        match &self.input {
            Value::Array(items) => items
                .iter()
                .map(|item| match item {
                    Value::Number(_) => 1,
                    Value::Array(ids) => ids.len() as u64,
                    _ => 0,
                })
                .sum(),
            _ => 0,
        }
    }
}

/// The answer of `POST /v1/embeddings`. The vectors are kept as the provider wrote them (never
/// parsed into floats and written again).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct EmbeddingResponse {
    pub object: String,
    /// The list of `{"object": "embedding", "index": 0, "embedding": [...]}`.
    #[schema(value_type = Vec<Object>)]
    pub data: Box<RawValue>,
    pub model: String,
    #[serde(default)]
    pub usage: EmbeddingUsage,
}

impl PartialEq for EmbeddingResponse {
    fn eq(&self, other: &Self) -> bool {
        self.object == other.object
            && self.data.get() == other.data.get()
            && self.model == other.model
            && self.usage == other.usage
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct EmbeddingUsage {
    #[serde(default)]
    pub prompt_tokens: u64,
    #[serde(default)]
    pub total_tokens: u64,
}

/// A model the caller may use.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Model {
    pub id: String,
    /// Always `model`.
    pub object: String,
    /// Unix seconds (the gateway's start, for configured models).
    pub created: i64,
    pub owned_by: String,
}

/// `GET /v1/models`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ModelList {
    /// Always `list`.
    pub object: String,
    pub data: Vec<Model>,
}

/// One limit of a call's plan as the call left it when admitted: the tighter of its key's and
/// its organization's buckets (OpenAI's `x-ratelimit-{limit,remaining,reset}-*` headers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitState {
    pub limit: u32,
    pub remaining: u32,
    /// Until the bucket is full again.
    pub reset: Duration,
}

impl LimitState {
    /// `reset` as OpenAI writes it (Go's duration syntax): `0s`, `120ms`, `1.5s`, `6m0s`.
    pub fn reset_text(&self) -> String {
        let ms = self.reset.as_millis();
        if ms < 1_000 {
            return if ms == 0 { "0s".into() } else { format!("{ms}ms") };
        }
        let (minutes, ms) = (ms / 60_000, ms % 60_000);
        let seconds = match ms % 1_000 {
            0 => (ms / 1_000).to_string(),
            frac => format!("{}.{frac:03}", ms / 1_000).trim_end_matches('0').to_owned(),
        };
        if minutes > 0 { format!("{minutes}m{seconds}s") } else { format!("{seconds}s") }
    }

    /// The inverse of [`reset_text`](Self::reset_text) (whole minutes, seconds with a fraction,
    /// or milliseconds).
    pub fn parse_reset(text: &str) -> Option<Duration> {
        if let Some(ms) = text.strip_suffix("ms") {
            return ms.parse().ok().map(Duration::from_millis);
        }
        let text = text.strip_suffix('s')?;
        let (minutes, seconds) = match text.split_once('m') {
            Some((m, s)) => (m.parse::<u64>().ok()?, s),
            None => (0, text),
        };
        let (whole, fraction) = seconds.split_once('.').unwrap_or((seconds, ""));
        if fraction.len() > 9 || !fraction.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let nanos: u64 = if fraction.is_empty() { 0 } else { format!("{fraction:0<9}").parse().ok()? };
        let seconds = minutes.checked_mul(60)?.checked_add(whole.parse().ok()?)?;
        Some(Duration::from_secs(seconds) + Duration::from_nanos(nanos))
    }
}

/// Where a call left its plan's limits: requests per minute, and tokens per minute when they
/// were counted (not for a cache hit). Empty for an answer that was not admitted this way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RateLimits {
    pub requests: Option<LimitState>,
    pub tokens: Option<LimitState>,
}

/// An answer and how long of it was spent waiting for the provider, so that the route can
/// report the gateway's own overhead (`x-keel-overhead-ms`).
#[derive(Debug)]
pub struct Served<T> {
    pub value: T,
    /// Time spent waiting for the provider (until its answer's head, for a stream).
    pub upstream: Duration,
    /// Whether the answer came from the response cache (None: the cache was not used).
    pub cache: Option<CacheStatus>,
    /// The plan's limits as the call left them.
    pub limits: RateLimits,
}

impl<T> Served<T> {
    pub fn new(value: T, upstream: Duration) -> Self {
        Self { value, upstream, cache: None, limits: RateLimits::default() }
    }
}

/// The chunks of a streamed completion, as they arrive. An `Err` item ends the stream: the
/// provider failed after the answer had begun.
pub type ChunkStream = Pin<Box<dyn Stream<Item = Result<ChatCompletionChunk, InferenceError>> + Send>>;

/// The inference domain. Every model call acts for `caller`, an API key (a session is refused
/// with `permission_denied`: model calls are billed to an organization's key). The
/// organization's administration ([`purge_response_cache`](Self::purge_response_cache)) takes a
/// session or an API key, as auth's and billing's organization routes do, and answers
/// `organization_not_found` for an organization the caller cannot see.
#[async_trait]
pub trait InferenceApi: Send + Sync {
    /// A chat completion in one answer (`stream` must not be true). With Keel's `file_search`
    /// field (see `FileSearchOptions`), grounded in the stores' sources, with `citations`.
    ///
    /// Errors: `invalid_request` (validation, before any provider call; `file_search.…`),
    /// `vector_store_not_found`, `vector_store_expired` (a `file_search` store), `model_not_found`,
    /// `model_not_allowed`, `permission_denied`, `rate_limit_exceeded`, `insufficient_quota`,
    /// `overloaded`, `upstream_error`, `upstream_timeout`, `upstream_rejected`,
    /// `service_unavailable`, `internal_error`.
    async fn chat(
        &self,
        caller: &Principal,
        request: ChatCompletionRequest,
    ) -> Result<Served<ChatCompletionResponse>, InferenceError>;

    /// A chat completion as a stream of chunks. The errors of [`chat`](Self::chat) come before
    /// the stream starts; after it starts, a failure is the stream's last item.
    async fn chat_stream(
        &self,
        caller: &Principal,
        request: ChatCompletionRequest,
    ) -> Result<Served<ChunkStream>, InferenceError>;

    /// Embeddings of the inputs. Errors as [`chat`](Self::chat).
    async fn embeddings(
        &self,
        caller: &Principal,
        request: EmbeddingRequest,
    ) -> Result<Served<EmbeddingResponse>, InferenceError>;

    /// The models the caller's plan allows. Errors: `permission_denied`, `service_unavailable`.
    async fn models(&self, caller: &Principal) -> Result<ModelList, InferenceError>;

    /// One model the caller's plan allows. Errors: `model_not_found` (unknown or not allowed),
    /// `permission_denied`, `service_unavailable`.
    async fn model(&self, caller: &Principal, id: &str) -> Result<Model, InferenceError>;

    /// Drops every answer the response cache holds for the organization, before its TTL, in
    /// every process (a namespace version bump, shared through Redis when configured): the
    /// next identical request is a miss that calls a provider. Succeeds with nothing cached.
    /// Owners and admins only: a session's role, or an API key with the `admin` scope.
    ///
    /// Errors: `organization_not_found` (not a member, or another organization's key),
    /// `permission_denied` (a member, or a key without the `admin` scope), `service_unavailable`.
    async fn purge_response_cache(
        &self,
        caller: &Principal,
        organization_id: OrganizationId,
    ) -> Result<(), InferenceError>;

    /// Whether the domain can serve (for `/readyz`).
    async fn ready(&self) -> Result<(), InferenceError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_fields_survive_a_round_trip() {
        let body = serde_json::json!({
            "model": "gpt", "messages": [{"role": "user", "content": "hi", "name": "ada"}],
            "tools": [{"type": "function"}], "temperature": 0.2, "stream": true,
            "stream_options": {"include_usage": true, "future": 1}
        });
        let request: ChatCompletionRequest = serde_json::from_value(body.clone()).unwrap();
        assert!(request.is_stream());
        assert_eq!(request.extra["tools"], serde_json::json!([{"type": "function"}]));
        assert_eq!(serde_json::to_value(&request).unwrap(), body);
    }

    #[test]
    fn embedding_vectors_are_kept_verbatim() {
        let text = r#"{"object":"list","data":[{"object":"embedding","index":0,"embedding":[0.1,-2.5e-3]}],"model":"e","usage":{"prompt_tokens":2,"total_tokens":2}}"#;
        let response: EmbeddingResponse = serde_json::from_str(text).unwrap();
        assert_eq!(serde_json::to_string(&response).unwrap(), text);
    }

    #[test]
    fn resets_are_written_as_openai_writes_them_and_read_back() {
        let state = |ms| LimitState { limit: 1, remaining: 0, reset: Duration::from_millis(ms) };
        for (ms, text) in [
            (0, "0s"),
            (120, "120ms"),
            (1_000, "1s"),
            (1_500, "1.5s"),
            (59_220, "59.22s"),
            (60_000, "1m0s"),
            (61_005, "1m1.005s"),
        ] {
            assert_eq!(state(ms).reset_text(), text);
            assert_eq!(LimitState::parse_reset(text), Some(Duration::from_millis(ms)), "{text}");
        }
        for bad in ["", "s", "1", "-1s", "1h", "xms", "NaNs", "1.-5s", "1m-1s"] {
            assert_eq!(LimitState::parse_reset(bad), None, "{bad}");
        }
    }
}
