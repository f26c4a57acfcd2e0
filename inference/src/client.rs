//! `HttpInferenceClient`: `InferenceApi` over HTTP, for a gateway whose inference domain runs
//! elsewhere. Paths and types only: the shared remote client owns the rest (streams included).

use crate::api::*;
use crate::error::InferenceError;
use async_trait::async_trait;
use auth::{OrganizationId, Principal};
use futures_util::StreamExt;
use shared::Secret;
use shared::client::{RemoteClient, RemoteConfig};
use shared::error::{DomainError, ErrorEnvelope, WireError};
use std::time::{Duration, Instant};

/// The remote inference service.
#[derive(Debug, Clone)]
pub struct HttpInferenceClient {
    pub(crate) remote: RemoteClient,
}

impl HttpInferenceClient {
    pub fn new(base_url: &Secret, config: &RemoteConfig) -> Result<Self, String> {
        Ok(Self { remote: RemoteClient::new(crate::DOMAIN, base_url, config)? })
    }
}

/// The remote service's own overhead, from its header; the rest of the call was spent waiting.
fn upstream_of(started: Instant, response: &reqwest::Response) -> Duration {
    let overhead = response
        .headers()
        .get(crate::api::OVERHEAD_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<f64>().ok())
        .filter(|ms| ms.is_finite() && *ms >= 0.0)
        .map_or(Duration::ZERO, |ms| Duration::from_secs_f64(ms / 1000.0));
    started.elapsed().saturating_sub(overhead)
}

/// The remote service's `x-ratelimit-*` headers.
fn limits_of(response: &reqwest::Response) -> RateLimits {
    let get = |name: &str| response.headers().get(name).and_then(|v| v.to_str().ok());
    let state = |(limit, remaining, reset): (&str, &str, &str)| {
        Some(LimitState {
            limit: get(limit)?.parse().ok()?,
            remaining: get(remaining)?.parse().ok()?,
            reset: LimitState::parse_reset(get(reset)?)?,
        })
    };
    let [requests, tokens] = LIMIT_HEADERS;
    RateLimits { requests: state(requests), tokens: state(tokens) }
}

async fn json<T: serde::de::DeserializeOwned>(response: reqwest::Response) -> Result<T, InferenceError> {
    response.json().await.map_err(|e| InferenceError::internal(format!("unreadable answer: {}", e.without_url())))
}

#[async_trait]
impl InferenceApi for HttpInferenceClient {
    async fn chat(
        &self,
        caller: &Principal,
        request: ChatCompletionRequest,
    ) -> Result<Served<ChatCompletionResponse>, InferenceError> {
        let started = Instant::now();
        let mut call = self.remote.post("/v1/chat/completions").bearer(&caller.credential).json(&request);
        if let Some(value) = request.cache.header_value() {
            call = call.header(CACHE_HEADER, value);
        }
        let response = call.send().await?;
        let upstream = upstream_of(started, &response);
        let cache = response.headers().get(CACHE_HEADER).and_then(|v| v.to_str().ok()).and_then(CacheStatus::parse);
        let limits = limits_of(&response);
        let mut served = Served::new(json(response).await?, upstream);
        served.cache = cache;
        served.limits = limits;
        Ok(served)
    }

    async fn chat_stream(
        &self,
        caller: &Principal,
        mut request: ChatCompletionRequest,
    ) -> Result<Served<ChunkStream>, InferenceError> {
        let started = Instant::now();
        request.stream = Some(true);
        let mut call = self.remote.post("/v1/chat/completions").bearer(&caller.credential).json(&request);
        if let Some(value) = request.cache.header_value() {
            call = call.header(CACHE_HEADER, value);
        }
        // The remote service's `x-keel-cache` and `x-ratelimit-*` answer headers are not read
        // back on a stream.
        let events = call.events().await?;
        let chunks =
            events.take_while(|event| std::future::ready(!matches!(event, Ok(e) if e.data == "[DONE]"))).map(|event| {
                let event = event?;
                if let Ok(ErrorEnvelope { error }) = event.json::<ErrorEnvelope>() {
                    return Err(InferenceError::from_wire(WireError {
                        status: 503,
                        code: error.code,
                        message: error.message,
                        param: error.param,
                        retry_after_secs: None,
                    }));
                }
                event
                    .json::<ChatCompletionChunk>()
                    .map_err(|e| InferenceError::internal(format!("unreadable chunk: {e}")))
            });
        Ok(Served::new(Box::pin(chunks), started.elapsed()))
    }

    async fn embeddings(
        &self,
        caller: &Principal,
        request: EmbeddingRequest,
    ) -> Result<Served<EmbeddingResponse>, InferenceError> {
        let started = Instant::now();
        let response = self.remote.post("/v1/embeddings").bearer(&caller.credential).json(&request).send().await?;
        let upstream = upstream_of(started, &response);
        let limits = limits_of(&response);
        let mut served = Served::new(json(response).await?, upstream);
        served.limits = limits;
        Ok(served)
    }

    async fn models(&self, caller: &Principal) -> Result<ModelList, InferenceError> {
        self.remote.get("/v1/models").bearer(&caller.credential).fetch().await
    }

    async fn model(&self, caller: &Principal, id: &str) -> Result<Model, InferenceError> {
        if id.is_empty() || id.contains(['/', '?', '#', '%']) {
            return Err(InferenceError::ModelNotFound(id.to_owned()));
        }
        self.remote.get(&format!("/v1/models/{id}")).bearer(&caller.credential).fetch().await
    }

    async fn purge_response_cache(
        &self,
        caller: &Principal,
        organization_id: OrganizationId,
    ) -> Result<(), InferenceError> {
        let path = format!("/v1/organizations/{organization_id}/inference/cache");
        self.remote.delete(&path).bearer(&caller.credential).execute().await
    }

    async fn ready(&self) -> Result<(), InferenceError> {
        self.remote.get("/readyz").execute().await
    }
}
