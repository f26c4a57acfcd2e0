//! `InferenceConfig`: providers, models and their deployments, resilience settings
//! (`[inference]`, `KEEL_INFERENCE__*`).
//!
//! ```toml
//! [inference.providers.openai]
//! kind = "openai"
//! base_url = "https://api.openai.com/v1"
//! api_key = "sk-…"
//! max_concurrency = 256
//!
//! [inference.models.gpt-4o-mini]
//! context_window = 128000
//! max_output_tokens = 16384
//! deployments = [
//!   { provider = "openai", model = "gpt-4o-mini", weight = 1,
//!     input_nanos_per_million = 150000000000, output_nanos_per_million = 600000000000 },
//! ]
//! ```

use serde::{Deserialize, Serialize};
use shared::Secret;
use shared::config::{DatabaseOverride, check_range};
use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct InferenceConfig {
    /// A remote inference service (`http://host:port`): the gateway then forwards to it.
    pub url: Option<Secret>,
    /// Overrides of the shared database settings for this domain (it keeps no tables today).
    pub database: DatabaseOverride,
    /// Upstream providers by name.
    pub providers: BTreeMap<String, ProviderConfig>,
    /// Public model names → deployments.
    pub models: BTreeMap<String, ModelConfig>,
    /// The built-in `echo` model: answers with the last user message, word by word, with no
    /// upstream. On in the default configuration (`cargo run`); turn it off in production with
    /// `KEEL_INFERENCE__ECHO__ENABLED=false`.
    pub echo: EchoConfig,
    pub retry: RetryConfig,
    pub circuit: CircuitConfig,
    /// Output tokens assumed for the budget hold when a request sets no `max_tokens` and its
    /// model has no `max_output_tokens`.
    pub default_max_output_tokens: u32,
    /// The largest request body accepted on the model routes (prompts can be long).
    pub max_body_bytes: usize,
    /// Model calls of one organization in flight at once in this process (streams until their
    /// end); past it a call is refused at once with `429 rate_limit_exceeded` and
    /// `Retry-After: 1`, so one tenant cannot take every bulkhead slot from the others.
    pub max_concurrency_per_organization: u32,
    /// The exact-match response cache of chat completions (`docs/INFERENCE.md`, "Response cache").
    pub cache: ResponseCacheConfig,
    /// Files, vector stores and their search (`[inference.rag]`, `docs/INFERENCE.md`, "Retrieval").
    pub rag: RagConfig,
}

/// `[inference.rag]`: files, vector stores, ingestion and search. With neither `embedding_model`
/// nor `local_model_dir` (the default), stores are searched by keyword alone
/// (`search_mode: "keyword"`); with one of them, by keyword and meaning (`hybrid`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RagConfig {
    /// The largest file `POST /v1/files` stores (413 `file_too_large` above it).
    pub max_file_bytes: u64,
    /// A public model of `[inference.models]` of kind `embedding`: chunks and queries are
    /// embedded through its providers, as `/v1/embeddings` does, and billed like it.
    pub embedding_model: Option<String>,
    /// A sentence-transformer directory (`config.json`, `tokenizer.json`, `model.safetensors`)
    /// run in process (needs the `local-embedder` feature). Its usage is recorded at no cost.
    pub local_model_dir: Option<std::path::PathBuf>,
    /// Texts embedded per call (provider request or local batch).
    pub embedding_batch_size: u32,
    /// Where the keyword index lives; None keeps it in memory. Either way it is rebuilt from the
    /// database at start.
    pub index_dir: Option<std::path::PathBuf>,
    /// How often each process reads the change log to bring its index up to date (a search
    /// also catches up first).
    pub sync_interval_ms: u64,
    /// The in-process vector index (HNSW), used when an embedder is configured.
    pub hnsw: HnswSettings,
}

impl Default for RagConfig {
    fn default() -> Self {
        Self {
            max_file_bytes: 32 * 1024 * 1024,
            embedding_model: None,
            local_model_dir: None,
            embedding_batch_size: 64,
            index_dir: None,
            sync_interval_ms: 1_000,
            hnsw: HnswSettings::default(),
        }
    }
}

impl RagConfig {
    /// Whether chunks get embeddings (and searches are hybrid).
    pub fn has_embedder(&self) -> bool {
        self.embedding_model.is_some() || self.local_model_dir.is_some()
    }
}

/// The HNSW graph's parameters (`search::HnswConfig`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HnswSettings {
    /// The embedding model's vector length (384 for all-MiniLM-L6-v2, 1536 for
    /// text-embedding-3-small). A local model sets it from its own configuration.
    pub dimensions: usize,
    /// `M`: links per node.
    pub connectivity: usize,
    /// `ef_construction`.
    pub expansion_add: usize,
    /// `ef_search` (raised to the number of results asked when smaller).
    pub expansion_search: usize,
    /// Vector storage: `f32`, `f16` (default) or `i8`.
    pub quantization: String,
    /// A filtered search whose filter matches at most this many of the store's vectors scores
    /// them exactly instead of walking the graph; 0 always walks.
    pub exact_filter_max: usize,
    /// `ef_search` of the filtered graph walk. Unset (the default): it shrinks with the share of
    /// the store's vectors that the filter matches (`search::filtered_expansion`).
    pub filtered_expansion_search: Option<usize>,
}

impl Default for HnswSettings {
    fn default() -> Self {
        Self {
            dimensions: 384,
            connectivity: 16,
            expansion_add: 128,
            expansion_search: 64,
            quantization: "f16".into(),
            // search::EXACT_FILTER_MAX (this module builds without the search crate too).
            exact_filter_max: 50_000,
            filtered_expansion_search: None,
        }
    }
}

/// How a cache hit is billed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CacheHitBilling {
    /// Nothing is billed and no usage is recorded (only the request counts against the plan's
    /// requests per minute).
    Free,
    /// The cached answer's usage at the cost it had when it was generated, as a usage event.
    Full,
}

/// The exact-match response cache. A model enables it for its deterministic requests with
/// `cache_ttl_secs`; a request opts in (`x-keel-cache: on`, then with `default_ttl_secs` on a
/// model without its own) or out (`x-keel-cache: off`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ResponseCacheConfig {
    /// How hits are billed: `free` (the default) or `full`.
    pub hit_billing: CacheHitBilling,
    /// The TTL of an answer cached on a request's opt-in, for a model without `cache_ttl_secs`.
    pub default_ttl_secs: u64,
    /// Answers larger than this (as stored, JSON) are not cached.
    pub max_entry_bytes: usize,
    /// The most answers kept in each process's memory (L1); Redis (L2) holds them for their TTL.
    pub max_entries: u64,
}

impl Default for ResponseCacheConfig {
    fn default() -> Self {
        Self {
            hit_billing: CacheHitBilling::Free,
            default_ttl_secs: 300,
            max_entry_bytes: 256 * 1024,
            max_entries: 10_000,
        }
    }
}

impl Default for InferenceConfig {
    fn default() -> Self {
        Self {
            url: None,
            database: DatabaseOverride::default(),
            providers: BTreeMap::new(),
            models: BTreeMap::new(),
            echo: EchoConfig::default(),
            retry: RetryConfig::default(),
            circuit: CircuitConfig::default(),
            default_max_output_tokens: 4096,
            max_body_bytes: 16 * 1024 * 1024,
            max_concurrency_per_organization: 256,
            cache: ResponseCacheConfig::default(),
            rag: RagConfig::default(),
        }
    }
}

/// What a provider speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProviderKind {
    /// Any OpenAI-compatible server: OpenAI, vLLM, Ollama, llama.cpp, LM Studio, TGI, …
    Openai,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProviderConfig {
    pub kind: ProviderKind,
    /// The API root, with its version: `https://api.openai.com/v1`, `http://vllm:8000/v1`.
    pub base_url: String,
    /// Sent as `Authorization: Bearer`; never logged.
    pub api_key: Option<Secret>,
    /// Time to open a connection.
    pub connect_timeout_ms: u64,
    /// Time from sending the request to the answer's head and, for a stream, its first chunk.
    pub first_token_timeout_ms: u64,
    /// Longest silence between two chunks of a stream (or two reads of a body).
    pub idle_timeout_ms: u64,
    /// Longest whole call, retries included.
    pub total_timeout_ms: u64,
    /// Calls in flight at once per deployment on this provider (the bulkhead); past it a call
    /// goes to another deployment or is refused at once with `overloaded` (no queue).
    pub max_concurrency: u32,
    /// Idle keep-alive connections kept per host.
    pub pool_max_idle_per_host: usize,
}

impl Default for ProviderConfig {
    fn default() -> Self {
        Self {
            kind: ProviderKind::Openai,
            base_url: String::new(),
            api_key: None,
            connect_timeout_ms: 2_000,
            first_token_timeout_ms: 60_000,
            idle_timeout_ms: 30_000,
            total_timeout_ms: 600_000,
            max_concurrency: 256,
            pool_max_idle_per_host: 256,
        }
    }
}

/// A public model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelConfig {
    /// `chat` or `embedding`: which route serves it.
    pub kind: ModelKind,
    /// Prompt plus output tokens the model accepts.
    pub context_window: u32,
    /// The largest `max_tokens` accepted, and the hold's output estimate when none is given.
    pub max_output_tokens: Option<u32>,
    pub owned_by: String,
    pub deployments: Vec<DeploymentConfig>,
    /// Caches this model's deterministic answers (`temperature` 0) for this long, unless a
    /// request says `x-keel-cache: off`. None: only requests that opt in are cached.
    pub cache_ttl_secs: Option<u64>,
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self {
            kind: ModelKind::Chat,
            context_window: 128_000,
            max_output_tokens: None,
            owned_by: "keel".into(),
            deployments: Vec::new(),
            cache_ttl_secs: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelKind {
    Chat,
    Embedding,
}

/// One place a model runs: a provider and its name for the model, with prices.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DeploymentConfig {
    /// A key of `providers`.
    pub provider: String,
    /// The provider's name for the model.
    pub model: String,
    /// Relative share of traffic among healthy deployments (0 = only as a fallback).
    pub weight: u32,
    /// Price of a million prompt tokens, in nano-units of the billing currency.
    pub input_nanos_per_million: u64,
    /// Price of a million output tokens, in nano-units.
    pub output_nanos_per_million: u64,
}

impl Default for DeploymentConfig {
    fn default() -> Self {
        Self {
            provider: String::new(),
            model: String::new(),
            weight: 1,
            input_nanos_per_million: 0,
            output_nanos_per_million: 0,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EchoConfig {
    pub enabled: bool,
    /// The public model name of the echo model.
    pub model: String,
    /// Pause between streamed words (0: none).
    pub chunk_delay_ms: u64,
    /// Prices, as for a deployment, so that metering can be tried end to end.
    pub input_nanos_per_million: u64,
    pub output_nanos_per_million: u64,
}

impl Default for EchoConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            model: "echo".into(),
            chunk_delay_ms: 0,
            input_nanos_per_million: 0,
            output_nanos_per_million: 0,
        }
    }
}

/// Retries of one call across attempts and deployments.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetryConfig {
    /// Attempts in all, the first included, across deployments.
    pub max_attempts: u32,
    /// First backoff; doubled per attempt, with full jitter.
    pub base_backoff_ms: u64,
    pub max_backoff_ms: u64,
    /// A `Retry-After` longer than this is not waited for: the next deployment is tried, or the
    /// 429 is passed on.
    pub max_retry_after_ms: u64,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self { max_attempts: 3, base_backoff_ms: 50, max_backoff_ms: 2_000, max_retry_after_ms: 5_000 }
    }
}

/// The circuit breaker of each deployment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CircuitConfig {
    /// Consecutive failures that open the circuit.
    pub failure_threshold: u32,
    /// How long an open circuit refuses calls before one probe is let through.
    pub open_ms: u64,
}

impl Default for CircuitConfig {
    fn default() -> Self {
        Self { failure_threshold: 5, open_ms: 10_000 }
    }
}

const HOUR_MS: u64 = 3_600_000;

impl InferenceConfig {
    /// Checks every value at start-up; the message names the key.
    pub fn validate(&self) -> Result<(), String> {
        for (name, p) in &self.providers {
            let key = |field: &str| format!("inference.providers.{name}.{field}");
            if !(p.base_url.starts_with("http://") || p.base_url.starts_with("https://")) {
                return Err(format!("{} must start with http:// or https://", key("base_url")));
            }
            check_range(&key("connect_timeout_ms"), p.connect_timeout_ms, 1, HOUR_MS)?;
            check_range(&key("first_token_timeout_ms"), p.first_token_timeout_ms, 1, HOUR_MS)?;
            check_range(&key("idle_timeout_ms"), p.idle_timeout_ms, 1, HOUR_MS)?;
            check_range(&key("total_timeout_ms"), p.total_timeout_ms, 1, 24 * HOUR_MS)?;
            check_range(&key("max_concurrency"), u64::from(p.max_concurrency), 1, 1_000_000)?;
        }
        check_range("inference.cache.default_ttl_secs", self.cache.default_ttl_secs, 1, 30 * 24 * 3600)?;
        for (name, m) in &self.models {
            let key = |field: &str| format!("inference.models.{name}.{field}");
            if self.echo.enabled && *name == self.echo.model {
                return Err(format!("inference.models.{name} has the name of the echo model"));
            }
            if m.deployments.is_empty() {
                return Err(format!("{} must list at least one deployment", key("deployments")));
            }
            check_range(&key("context_window"), u64::from(m.context_window), 1, 100_000_000)?;
            if let Some(ttl) = m.cache_ttl_secs {
                check_range(&key("cache_ttl_secs"), ttl, 1, 30 * 24 * 3600)?;
            }
            for (i, d) in m.deployments.iter().enumerate() {
                if !self.providers.contains_key(&d.provider) {
                    return Err(format!("{}[{i}].provider: no provider named `{}`", key("deployments"), d.provider));
                }
                if d.model.is_empty() {
                    return Err(format!("{}[{i}].model must not be empty", key("deployments")));
                }
            }
            if m.deployments.iter().all(|d| d.weight == 0) {
                return Err(format!("{}: at least one deployment needs a weight above 0", key("deployments")));
            }
        }
        check_range("inference.retry.max_attempts", u64::from(self.retry.max_attempts), 1, 10)?;
        check_range("inference.retry.max_backoff_ms", self.retry.max_backoff_ms, 1, HOUR_MS)?;
        check_range("inference.circuit.failure_threshold", u64::from(self.circuit.failure_threshold), 1, 1000)?;
        check_range("inference.max_body_bytes", self.max_body_bytes as u64, 1024, 1 << 30)?;
        check_range(
            "inference.max_concurrency_per_organization",
            u64::from(self.max_concurrency_per_organization),
            1,
            1_000_000,
        )?;
        check_range("inference.default_max_output_tokens", u64::from(self.default_max_output_tokens), 1, 10_000_000)?;
        self.validate_rag()
    }

    fn validate_rag(&self) -> Result<(), String> {
        let rag = &self.rag;
        check_range("inference.rag.max_file_bytes", rag.max_file_bytes, 1, 1 << 32)?;
        check_range("inference.rag.embedding_batch_size", u64::from(rag.embedding_batch_size), 1, 2048)?;
        check_range("inference.rag.sync_interval_ms", rag.sync_interval_ms, 10, HOUR_MS)?;
        if rag.embedding_model.is_some() && rag.local_model_dir.is_some() {
            return Err("inference.rag: set embedding_model or local_model_dir, not both".into());
        }
        if let Some(name) = &rag.embedding_model {
            match self.models.get(name) {
                Some(m) if m.kind == ModelKind::Embedding => {}
                Some(_) => return Err(format!("inference.rag.embedding_model: `{name}` is not an embedding model")),
                None => return Err(format!("inference.rag.embedding_model: no model `{name}` in inference.models")),
            }
        }
        if rag.local_model_dir.is_some() && !cfg!(feature = "local-embedder") {
            return Err("inference.rag.local_model_dir needs a build with the `local-embedder` feature".into());
        }
        let h = &rag.hnsw;
        check_range("inference.rag.hnsw.dimensions", h.dimensions as u64, 1, 8192)?;
        check_range("inference.rag.hnsw.connectivity", h.connectivity as u64, 2, 128)?;
        check_range("inference.rag.hnsw.expansion_add", h.expansion_add as u64, 1, 4096)?;
        check_range("inference.rag.hnsw.expansion_search", h.expansion_search as u64, 1, 4096)?;
        check_range("inference.rag.hnsw.exact_filter_max", h.exact_filter_max as u64, 0, 100_000_000)?;
        if let Some(ef) = h.filtered_expansion_search {
            check_range("inference.rag.hnsw.filtered_expansion_search", ef as u64, 1, 4096)?;
        }
        if !["f32", "f16", "i8"].contains(&h.quantization.as_str()) {
            return Err("inference.rag.hnsw.quantization must be f32, f16 or i8".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_a_deployment_needs_its_provider() {
        assert_eq!(InferenceConfig::default().validate(), Ok(()));
        let mut config = InferenceConfig::default();
        config.models.insert(
            "m".into(),
            ModelConfig {
                deployments: vec![DeploymentConfig {
                    provider: "nope".into(),
                    model: "x".into(),
                    ..Default::default()
                }],
                ..Default::default()
            },
        );
        let error = config.validate().unwrap_err();
        assert!(error.contains("inference.models.m.deployments[0].provider"), "{error}");
    }
}
