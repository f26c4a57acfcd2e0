//! The OpenAI-compatible routes, over `web::Data<dyn InferenceApi>`: the same handlers serve the
//! in-process service and, in a gateway that forwards, the remote client.
//!
//! Errors use OpenAI's envelope and types (`insufficient_quota` included), so the official SDKs
//! parse them and retry what they should. Every model call answers with `x-keel-overhead-ms`:
//! the gateway's own time, the whole handler minus the wait for the provider (for a stream, up
//! to its head).

use crate::api::*;
use crate::error::InferenceError;
use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::web::{self, Bytes, BytesMut};
use actix_web::{HttpResponse, ResponseError};
use auth::OrganizationId;
use auth::web::Caller;
use futures_util::StreamExt;
use serde::Serialize;
use shared::DomainError;
use shared::ErrorKind;
use shared::http::{Resource, WriteProgress};
use shared::metrics::Metrics;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Instant;
use utoipa::OpenApi;

type Api = web::Data<dyn InferenceApi>;

/// The largest body the model routes read (`inference.max_body_bytes`), as app data.
#[derive(Debug, Clone, Copy)]
pub struct BodyCap(pub usize);

/// Registers the routes. Expects `web::Data<dyn InferenceApi>` and `web::Data<BodyCap>`.
pub fn configure(cfg: &mut web::ServiceConfig) {
    Resource::new("/v1/chat/completions").post(chat_completions).register(cfg);
    Resource::new("/v1/embeddings").post(embeddings).register(cfg);
    Resource::new("/v1/models").get(list_models).register(cfg);
    Resource::new("/v1/models/{model}").get(get_model).register(cfg);
    Resource::new("/v1/organizations/{org_id}/inference/cache").delete(purge_response_cache).register(cfg);
}

/// The codes of `InferenceError` each operation can answer with, beyond the platform's.
pub const ROUTE_ERRORS: &[(&str, &[&str])] = &[
    (
        "create_chat_completion",
        &[
            "invalid_json",
            "payload_too_large",
            "invalid_request",
            "model_not_found",
            "model_not_allowed",
            "permission_denied",
            "rate_limit_exceeded",
            "insufficient_quota",
            "overloaded",
            "upstream_error",
            "upstream_timeout",
            "upstream_rejected",
            "vector_store_not_found",
            "vector_store_expired",
        ],
    ),
    (
        "create_embedding",
        &[
            "invalid_json",
            "payload_too_large",
            "invalid_request",
            "model_not_found",
            "model_not_allowed",
            "permission_denied",
            "rate_limit_exceeded",
            "insufficient_quota",
            "overloaded",
            "upstream_error",
            "upstream_timeout",
            "upstream_rejected",
        ],
    ),
    ("list_models", &["permission_denied"]),
    ("retrieve_model", &["permission_denied", "model_not_found"]),
    ("purge_response_cache", &["organization_not_found", "permission_denied"]),
];

/// The OpenAPI description of the routes, with their error codes.
pub fn document() -> utoipa::openapi::OpenApi {
    let mut doc = ApiDoc::openapi();
    let unresolved = shared::openapi::domain_errors::<InferenceError>(&mut doc, ROUTE_ERRORS);
    debug_assert!(unresolved.is_empty(), "{unresolved:?}");
    doc
}

#[derive(OpenApi)]
#[openapi(
    paths(chat_completions, embeddings, list_models, get_model, purge_response_cache),
    components(schemas(
        ChatCompletionRequest, ChatMessage, StreamOptions, ChatCompletionResponse, Choice, Usage,
        ChatCompletionChunk, ChunkChoice, Delta, EmbeddingRequest, EmbeddingResponse, EmbeddingUsage, Model, ModelList,
        crate::rag_api::FileSearchOptions, crate::rag_api::Citation
    )),
    tags((name = "inference", description = "OpenAI-compatible model calls"))
)]
#[derive(Debug)]
pub struct ApiDoc;

impl ResponseError for InferenceError {
    fn status_code(&self) -> StatusCode {
        shared::http::status_of(self.kind())
    }

    /// OpenAI's envelope with OpenAI's type; the cause of a 5xx is logged here, once.
    fn error_response(&self) -> HttpResponse {
        let kind = self.kind();
        match kind {
            ErrorKind::Unavailable => {
                tracing::warn!(error.code = self.code(), error.cause = %self, "model call failed")
            }
            _ if kind.is_server_error() => {
                tracing::error!(error.code = self.code(), error.cause = %self, "model call failed")
            }
            _ => {}
        }
        let mut response = HttpResponse::build(self.status_code()).json(envelope(self));
        if let Some(secs) = self.retry_after() {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

/// The error envelope of `error`, with OpenAI's type.
fn envelope(error: &InferenceError) -> shared::ErrorEnvelope {
    let mut envelope = error.envelope();
    error.error_type().clone_into(&mut envelope.error.error_type);
    envelope
}

/// Reads the body, up to the cap, and parses it.
pub(crate) async fn parse<T: serde::de::DeserializeOwned>(
    cap: Option<web::Data<BodyCap>>,
    mut payload: web::Payload,
) -> Result<T, InferenceError> {
    let cap = cap.map_or(16 * 1024 * 1024, |c| c.0);
    let mut body = BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|_| InferenceError::InvalidBody("the body could not be read".into()))?;
        if body.len() + chunk.len() > cap {
            return Err(InferenceError::BodyTooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    serde_json::from_slice(&body).map_err(|e| {
        let message = e.to_string();
        match message.strip_prefix("missing field `").and_then(|rest| rest.split('`').next()) {
            Some(field) => InferenceError::validation(field, format!("Missing required parameter: '{field}'.")),
            None if e.is_data() => InferenceError::validation("body", format!("Invalid request body: {message}")),
            None => InferenceError::InvalidBody(message),
        }
    })
}

fn overhead_header(
    response: &mut HttpResponse,
    started: Instant,
    upstream: std::time::Duration,
) -> std::time::Duration {
    let overhead = started.elapsed().saturating_sub(upstream);
    // Milliseconds with three decimals, from integer microseconds (cheaper than a float's
    // rounding, on every call).
    let micros = overhead.as_micros();
    let text = format!("{}.{:03}", micros / 1000, micros % 1000);
    if let Ok(value) = HeaderValue::from_str(&text) {
        response.headers_mut().insert(header::HeaderName::from_static(OVERHEAD_HEADER), value);
    }
    overhead
}

/// `x-keel-cache: hit|miss` when the response cache was used.
fn cache_header(response: &mut HttpResponse, cache: Option<CacheStatus>) {
    if let Some(status) = cache {
        response
            .headers_mut()
            .insert(header::HeaderName::from_static(CACHE_HEADER), HeaderValue::from_static(status.as_str()));
    }
}

/// OpenAI's `x-ratelimit-*` headers, from the plan's limits as the call left them.
fn limit_headers(response: &mut HttpResponse, limits: &RateLimits) {
    let headers = response.headers_mut();
    for (state, (limit, remaining, reset)) in [limits.requests, limits.tokens].iter().zip(LIMIT_HEADERS) {
        let Some(state) = state else { continue };
        headers.insert(header::HeaderName::from_static(limit), HeaderValue::from(state.limit));
        headers.insert(header::HeaderName::from_static(remaining), HeaderValue::from(state.remaining));
        if let Ok(value) = HeaderValue::from_str(&state.reset_text()) {
            headers.insert(header::HeaderName::from_static(reset), value);
        }
    }
}

fn record_overhead(metrics: Option<&web::Data<Metrics>>, route: &'static str, overhead: std::time::Duration) {
    if let Some(metrics) = metrics {
        metrics.inference().overhead(route, overhead);
    }
}

/// One server-sent event: `data: JSON\n\n`.
fn event<T: Serialize>(value: &T) -> Bytes {
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(b"data: ");
    if serde_json::to_writer(&mut out, value).is_err() {
        out.truncate(6);
        out.extend_from_slice(
            br#"{"error":{"message":"unserializable chunk","type":"api_error","code":"internal_error","param":null}}"#,
        );
    }
    out.extend_from_slice(b"\n\n");
    Bytes::from(out)
}

/// The chunks as server-sent events, each sent as it comes; `data: [DONE]` after the last, or
/// an error event (and no `[DONE]`) when the stream failed.
///
/// One event in flight: the next chunk is asked of `chunks` only once the previous event has
/// been written to the client's socket (the connection's [`WriteProgress`] counted a flush
/// since it was handed to actix). The service counts a chunk as delivered, and bills it, when
/// the next one is asked for; so a client that goes away pays for the events written to its
/// connection and for nothing actix held in its buffer. Without a `WriteProgress` (a server
/// other than the gateway's), an event counts as written once actix asks for the next one.
struct Sse {
    chunks: Option<ChunkStream>,
    progress: Option<Arc<WriteProgress>>,
    /// The connection's flush count when the last event was handed to actix.
    mark: Option<u64>,
}

impl Sse {
    fn new(chunks: ChunkStream, progress: Option<Arc<WriteProgress>>) -> Self {
        Self { chunks: Some(chunks), progress, mark: None }
    }
}

impl futures_util::Stream for Sse {
    type Item = Result<Bytes, actix_web::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if let (Some(progress), Some(mark)) = (&this.progress, this.mark) {
            ready!(progress.poll_flushed_after(mark, cx));
            this.mark = None;
        }
        let Some(chunks) = this.chunks.as_mut() else { return Poll::Ready(None) };
        let bytes = match ready!(chunks.as_mut().poll_next(cx)) {
            Some(Ok(chunk)) => event(&chunk),
            Some(Err(error)) => {
                tracing::warn!(error.code = error.code(), error.cause = %error, "stream ended with an error");
                this.chunks = None;
                event(&envelope(&error))
            }
            None => {
                this.chunks = None;
                Bytes::from_static(b"data: [DONE]\n\n")
            }
        };
        this.mark = this.progress.as_ref().map(|p| p.flushes());
        Poll::Ready(Some(Ok(bytes)))
    }
}

/// Create a chat completion (OpenAI's `POST /v1/chat/completions`); `stream: true` answers
/// with server-sent events.
#[utoipa::path(post, path = "/v1/chat/completions", tag = "inference", operation_id = "create_chat_completion",
    security(("bearer" = [])), request_body = ChatCompletionRequest, responses(
    (status = 200, description = "The completion; with `stream: true`, `text/event-stream` of `ChatCompletionChunk` ending in `data: [DONE]`. Keel's extension field `file_search` (`FileSearchOptions`) grounds the answer in the caller's vector stores: the answer then has a top-level `citations` array (`Citation`; for a stream, in its first chunk).", body = ChatCompletionResponse,
        headers(
            ("x-keel-cache" = String, description = "`hit` or `miss` when the response cache was used for this request (a deterministic request, `temperature` 0, to a model that caches or with `x-keel-cache: on`); absent otherwise."),
            ("x-keel-overhead-ms" = String, description = "The gateway's own time for the call, in milliseconds."),
            ("x-ratelimit-limit-requests" = String, description = "The plan's requests per minute (as OpenAI sends it; the tighter of the key's and the organization's buckets for the remaining and reset headers)."),
            ("x-ratelimit-remaining-requests" = String, description = "Requests left in the bucket once this one was admitted."),
            ("x-ratelimit-reset-requests" = String, description = "Until the requests bucket is full again, in Go's duration syntax (`1s`, `120ms`, `6m0s`)."),
            ("x-ratelimit-limit-tokens" = String, description = "The plan's tokens per minute; absent on a cache hit (tokens are not counted)."),
            ("x-ratelimit-remaining-tokens" = String, description = "Tokens left once this call's estimate (prompt plus output cap) was taken; what it does not use comes back when it ends."),
            ("x-ratelimit-reset-tokens" = String, description = "Until the tokens bucket is full again."),
        )),
), params(
    ("x-keel-cache" = Option<String>, Header, description = "`on`: cache this deterministic request's answer (and serve it from the cache); `off`: never use the cache for it. Absent: the model's `cache_ttl_secs` decides."),
))]
async fn chat_completions(
    http: actix_web::HttpRequest,
    api: Api,
    caller: Caller,
    cap: Option<web::Data<BodyCap>>,
    metrics: Option<web::Data<Metrics>>,
    payload: web::Payload,
) -> Result<HttpResponse, InferenceError> {
    let started = Instant::now();
    let mut request: ChatCompletionRequest = parse(cap, payload).await?;
    if let Some(value) = http.headers().get(CACHE_HEADER).and_then(|v| v.to_str().ok()) {
        request.cache = CacheDirective::parse(value);
    }
    if request.is_stream() {
        let served = api.chat_stream(&caller.0, request).await?;
        let (cache, limits) = (served.cache, served.limits);
        let mut response = HttpResponse::Ok()
            .content_type("text/event-stream")
            .insert_header((header::CACHE_CONTROL, "no-cache"))
            .insert_header(("x-accel-buffering", "no"))
            .streaming(Sse::new(served.value, http.conn_data::<Arc<WriteProgress>>().cloned()));
        cache_header(&mut response, cache);
        limit_headers(&mut response, &limits);
        let overhead = overhead_header(&mut response, started, served.upstream);
        record_overhead(metrics.as_ref(), "chat_stream", overhead);
        return Ok(response);
    }
    let served = api.chat(&caller.0, request).await?;
    let mut response = HttpResponse::Ok().json(&served.value);
    cache_header(&mut response, served.cache);
    limit_headers(&mut response, &served.limits);
    let overhead = overhead_header(&mut response, started, served.upstream);
    record_overhead(metrics.as_ref(), "chat", overhead);
    Ok(response)
}

/// Create embeddings (OpenAI's `POST /v1/embeddings`).
#[utoipa::path(post, path = "/v1/embeddings", tag = "inference", operation_id = "create_embedding",
    security(("bearer" = [])), request_body = EmbeddingRequest, responses(
    (status = 200, description = "The embeddings.", body = EmbeddingResponse,
        headers(
            ("x-keel-overhead-ms" = String, description = "The gateway's own time for the call, in milliseconds."),
            ("x-ratelimit-remaining-requests" = String, description = "As for chat completions, with the other `x-ratelimit-*` headers; the tokens are the input's estimate."),
        )),
))]
async fn embeddings(
    api: Api,
    caller: Caller,
    cap: Option<web::Data<BodyCap>>,
    metrics: Option<web::Data<Metrics>>,
    payload: web::Payload,
) -> Result<HttpResponse, InferenceError> {
    let started = Instant::now();
    let request: EmbeddingRequest = parse(cap, payload).await?;
    let served = api.embeddings(&caller.0, request).await?;
    let mut response = HttpResponse::Ok().json(&served.value);
    limit_headers(&mut response, &served.limits);
    let overhead = overhead_header(&mut response, started, served.upstream);
    record_overhead(metrics.as_ref(), "embeddings", overhead);
    Ok(response)
}

/// The models the key's plan allows.
#[utoipa::path(get, path = "/v1/models", tag = "inference", operation_id = "list_models",
    security(("bearer" = [])), responses(
    (status = 200, description = "The models.", body = ModelList),
))]
async fn list_models(api: Api, caller: Caller) -> Result<HttpResponse, InferenceError> {
    Ok(HttpResponse::Ok().json(api.models(&caller.0).await?))
}

/// One model, if the key's plan allows it.
#[utoipa::path(get, path = "/v1/models/{model}", tag = "inference", operation_id = "retrieve_model",
    security(("bearer" = [])), params(("model" = String, Path, description = "The model's id")), responses(
    (status = 200, description = "The model.", body = Model),
))]
async fn get_model(api: Api, caller: Caller, path: web::Path<String>) -> Result<HttpResponse, InferenceError> {
    Ok(HttpResponse::Ok().json(api.model(&caller.0, &path.into_inner()).await?))
}

/// Drop every answer the response cache holds for the organization, before their TTL
/// (owners and admins: a session, or an API key with the `admin` scope).
#[utoipa::path(delete, path = "/v1/organizations/{org_id}/inference/cache", tag = "inference",
    operation_id = "purge_response_cache", security(("bearer" = [])),
    params(("org_id" = OrganizationId, Path, description = "The organization's id")), responses(
    (status = 204, description = "Purged, in every process of the deployment: the next identical request is a miss. Also with nothing cached."),
))]
async fn purge_response_cache(
    api: Api,
    caller: Caller,
    path: web::Path<OrganizationId>,
) -> Result<HttpResponse, InferenceError> {
    api.purge_response_cache(&caller.0, path.into_inner()).await?;
    Ok(HttpResponse::NoContent().finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_document_resolves_every_error_code() {
        let mut doc = ApiDoc::openapi();
        assert_eq!(shared::openapi::domain_errors::<InferenceError>(&mut doc, ROUTE_ERRORS), Vec::<String>::new());
    }

    fn chunk() -> ChatCompletionChunk {
        serde_json::from_value(serde_json::json!({
            "id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
            "choices": [{"index": 0, "delta": {"content": " tok"}, "finish_reason": null}]
        }))
        .unwrap()
    }

    #[test]
    fn an_event_is_asked_for_only_once_the_previous_one_was_written() {
        use futures_util::Stream;
        let taken = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = taken.clone();
        let chunks: ChunkStream = Box::pin(futures_util::stream::iter(0..2).map(move |_| {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Ok(chunk())
        }));
        let progress = Arc::new(WriteProgress::default());
        let mut sse = Sse::new(chunks, Some(progress.clone()));
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        let taken = || taken.load(std::sync::atomic::Ordering::SeqCst);
        let mut poll = || match Pin::new(&mut sse).poll_next(&mut cx) {
            Poll::Ready(Some(Ok(bytes))) => Some(String::from_utf8(bytes.to_vec()).unwrap()),
            Poll::Ready(other) => panic!("{other:?}"),
            Poll::Pending => None,
        };
        assert!(poll().unwrap().starts_with("data: {"));
        assert_eq!(taken(), 1);
        // actix asks for the next event before it wrote this one: the chunk stream is not asked.
        assert_eq!(poll(), None);
        assert_eq!(taken(), 1);
        progress.flushed();
        assert!(poll().unwrap().starts_with("data: {"));
        assert_eq!(taken(), 2);
        assert_eq!(poll(), None);
        progress.flushed();
        assert_eq!(poll().unwrap(), "data: [DONE]\n\n");
    }

    #[test]
    fn insufficient_quota_has_openais_type() {
        let envelope = serde_json::to_value(envelope(&InferenceError::InsufficientQuota)).unwrap();
        assert_eq!(
            envelope,
            serde_json::json!({"error": {
                "message": "You exceeded your current quota; check your plan and billing details.",
                "type": "insufficient_quota", "code": "insufficient_quota", "param": null
            }})
        );
        assert_eq!(InferenceError::InsufficientQuota.status_code(), StatusCode::TOO_MANY_REQUESTS);
    }
}
