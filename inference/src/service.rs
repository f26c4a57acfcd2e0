//! `InferenceService`: validation, the choice of deployment, retries and fallback, streaming
//! and metering.
//!
//! One call goes: check the caller and the request (400 before any provider call) → for a
//! grounded chat (`file_search`), retrieval and the sources put into the prompt
//! (`grounding.rs`) → plan limits and budget hold → attempts over the model's deployments
//! (bulkhead, circuit breaker, backoff with jitter, `Retry-After`) until an answer's head (and
//! for a stream, its first event) arrives → the answer. From then on nothing is retried: a
//! failure in a stream is its last event. Every call is metered exactly once, when it ends
//! however it ends (a dropped stream included), by [`Meter`].

mod embedding;

pub(crate) use embedding::Payer;

use crate::api::*;
use crate::cache::{Assembler, CachedAnswer, ResponseCache, Slot};
use crate::config::{CacheHitBilling, InferenceConfig, ModelKind, RetryConfig};
use crate::error::InferenceError;
use crate::grounding;
use crate::inflight::{InFlight, InFlightSlot};
use crate::metrics::InferenceMetrics;
use crate::provider::{BodyReader, Echo, Endpoint, Failure, SseEvent, SseReader};
use crate::rag_api::{Citation, RagApi};
use crate::router::{Deployment, ModelEntry, Pass, Router, Upstream};
use crate::tokens;
use async_trait::async_trait;
use auth::{AuthApi, AuthError, Principal, PrincipalKind};
use billing::{BillingApi, BillingError, HoldId, Money, ReserveRequest, SettleRequest, UsageRecord};
use bytes::Bytes;
use futures_util::{StreamExt, stream};
use shared::cache::CacheBackplane;
use shared::clock::Clock;
use shared::ratelimit::{Quota, RateKey, RateLimiter, Subject};
use std::collections::VecDeque;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;

/// The largest non-streamed answer read from a provider.
const MAX_ANSWER_BYTES: usize = 64 * 1024 * 1024;

/// The in-process inference domain.
#[derive(Clone)]
pub struct InferenceService {
    inner: Arc<Inner>,
    /// The retrieval of grounded chat (`file_search`); None: such requests are refused.
    retrieval: Option<Arc<dyn RagApi>>,
    /// Who may administer an organization (`organization_role`); None: such calls are refused
    /// as `internal_error` (a service built without it is a wiring bug, never a caller's).
    auth: Option<Arc<dyn AuthApi>>,
}

impl std::fmt::Debug for InferenceService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InferenceService").field("models", &self.inner.router.models.len()).finish()
    }
}

struct Inner {
    router: Router,
    billing: Arc<dyn BillingApi>,
    limiter: Arc<dyn RateLimiter>,
    retry: RetryConfig,
    default_max_output_tokens: u32,
    /// How long a hold lives: the longest call, plus a minute for the settlement.
    hold_ttl: Duration,
    /// Unix seconds of the start: the `created` of configured models.
    created: i64,
    /// The exact-match response cache of chat completions.
    cache: Arc<ResponseCache>,
    /// Each organization's calls in flight (`max_concurrency_per_organization`).
    inflight: Arc<InFlight>,
    metrics: InferenceMetrics,
}

fn hold_ttl(config: &InferenceConfig) -> Duration {
    let longest = config.providers.values().map(|p| p.total_timeout_ms).max().unwrap_or(0);
    Duration::from_millis(longest) + Duration::from_secs(60)
}

fn billing_error(error: BillingError) -> InferenceError {
    match error {
        BillingError::BudgetExceeded { .. } => InferenceError::InsufficientQuota,
        BillingError::Unavailable(cause) => InferenceError::Unavailable(format!("billing: {cause}")),
        other => InferenceError::Internal(format!("billing: {other}")),
    }
}

/// Auth's answers about an organization as inference's: what a caller may see of an
/// organization is auth's to say.
fn auth_error(error: AuthError) -> InferenceError {
    match error {
        AuthError::OrganizationNotFound => InferenceError::OrganizationNotFound,
        AuthError::PermissionDenied | AuthError::InsufficientScope(_) | AuthError::SessionRequired => {
            InferenceError::PermissionDenied
        }
        AuthError::Unavailable(cause) => InferenceError::Unavailable(format!("auth: {cause}")),
        other => InferenceError::Internal(format!("auth: {other}")),
    }
}

/// A call admitted by billing: settles its hold with the usage exactly once, or releases it
/// when dropped unsettled (the call failed before any answer, or was cancelled).
struct Admission {
    billing: Arc<dyn BillingApi>,
    organization_id: auth::OrganizationId,
    api_key_id: Option<auth::ApiKeyId>,
    /// The public model name, as usage is reported.
    model: String,
    /// The idempotency key of the hold and the settlement.
    request_id: String,
    hold: Option<HoldId>,
    closed: bool,
    /// The organization's in-flight slot, given back when the call's admission is dropped (none
    /// for the embeddings of background work, which the job queue already bounds).
    _slot: Option<InFlightSlot>,
    /// The tokens per minute the call was admitted with (none: not counted, as for a cache hit
    /// or background work).
    tokens: Option<TokenGrant>,
    /// The plan's limits as the admission left them (the `x-ratelimit-*` headers).
    limits: RateLimits,
}

/// The tokens a call took from its key's and its organization's tokens per minute at admission
/// (its prompt's estimate plus its output cap), so that what it did not use goes back.
struct TokenGrant {
    limiter: Arc<dyn RateLimiter>,
    quota: Quota,
    keys: Vec<RateKey>,
    admitted: u32,
}

impl TokenGrant {
    /// Gives back what the call did not use of its grant, having used `used` tokens.
    async fn give_back(self, used: u64) {
        let unused = u64::from(self.admitted).saturating_sub(used);
        let unused = u32::try_from(unused).unwrap_or(u32::MAX);
        if unused == 0 {
            return;
        }
        for key in &self.keys {
            self.limiter.refund(key, self.quota, unused).await;
        }
    }
}

impl Admission {
    /// Settles the hold with `usage` (or, with no hold, records the usage), in the background
    /// with retries: idempotent by the request id, so a retry never charges twice. The tokens
    /// per minute the call did not use go back to its limits.
    fn settle(&mut self, input_tokens: u64, output_tokens: u64, cost: Money) {
        if std::mem::replace(&mut self.closed, true) {
            return;
        }
        let unused = self.tokens.take().map(|grant| (grant, input_tokens.saturating_add(output_tokens)));
        let usage = UsageRecord {
            request_id: self.request_id.clone(),
            model: self.model.clone(),
            api_key_id: self.api_key_id,
            input_tokens,
            output_tokens,
            cost,
        };
        let billing = self.billing.clone();
        let hold = self.hold;
        let organization_id = self.organization_id;
        spawn_with_retries("settle", unused, move || {
            let billing = billing.clone();
            let usage = usage.clone();
            async move {
                match hold {
                    Some(hold_id) => billing.settle(SettleRequest { hold_id, usage }).await.map(drop),
                    None => {
                        billing.record_usage(billing::RecordUsageRequest { organization_id, usage }).await.map(drop)
                    }
                }
            }
        });
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        if std::mem::replace(&mut self.closed, true) {
            return;
        }
        // Nothing was used: the whole grant goes back.
        let unused = self.tokens.take().map(|grant| (grant, 0));
        match self.hold {
            Some(hold) => {
                let billing = self.billing.clone();
                spawn_with_retries("release", unused, move || {
                    let billing = billing.clone();
                    async move { billing.release(hold).await }
                });
            }
            None => {
                if let (Some((grant, used)), Ok(runtime)) = (unused, tokio::runtime::Handle::try_current()) {
                    runtime.spawn(grant.give_back(used));
                }
            }
        }
    }
}

/// Runs a billing call in the background, retrying while billing is unavailable (5 attempts,
/// backoff from 100 ms); other errors are logged.
fn spawn_with_retries<F, Fut>(what: &'static str, unused: Option<(TokenGrant, u64)>, call: F)
where
    F: Fn() -> Fut + Send + 'static,
    Fut: Future<Output = Result<(), BillingError>> + Send,
{
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        tracing::error!(billing.call = what, "no runtime to settle on");
        return;
    };
    runtime.spawn(async move {
        // In the same task as the billing call: no task of its own on the call's path.
        if let Some((grant, used)) = unused {
            grant.give_back(used).await;
        }
        for attempt in 0..5u32 {
            match call().await {
                Ok(()) => return,
                Err(BillingError::Unavailable(cause)) if attempt < 4 => {
                    tracing::warn!(billing.call = what, error.cause = %cause, "billing unavailable; retrying");
                    tokio::time::sleep(Duration::from_millis(100 << attempt)).await;
                }
                Err(error) => {
                    tracing::error!(billing.call = what, error.cause = %error, "billing call failed");
                    return;
                }
            }
        }
    });
}

fn now_secs() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

impl InferenceService {
    /// The service over `billing` (limits, holds, settlements) and the platform's `limiter`;
    /// the response cache over the platform's cache `backplane` (None: in-process only),
    /// counted in `cache_metrics`.
    pub fn new(
        config: &InferenceConfig,
        metrics: &InferenceMetrics,
        billing: Arc<dyn BillingApi>,
        limiter: Arc<dyn RateLimiter>,
        backplane: Option<Arc<dyn CacheBackplane>>,
        clock: Arc<dyn Clock>,
        cache_metrics: &shared::metrics::CacheMetrics,
    ) -> Result<Self, String> {
        let router = Router::new(config, metrics)?;
        Ok(Self {
            inner: Arc::new(Inner {
                router,
                billing,
                limiter,
                retry: config.retry.clone(),
                default_max_output_tokens: config.default_max_output_tokens,
                hold_ttl: hold_ttl(config),
                created: now_secs(),
                cache: Arc::new(ResponseCache::new(config, backplane, clock, cache_metrics)),
                inflight: InFlight::new(config.max_concurrency_per_organization),
                metrics: metrics.clone(),
            }),
            retrieval: None,
            auth: None,
        })
    }

    /// Enables the organization's administration ([`InferenceApi::purge_response_cache`]):
    /// `auth` says the caller's role in an organization, as it does for billing.
    pub fn with_auth(mut self, auth: Arc<dyn AuthApi>) -> Self {
        self.auth = Some(auth);
        self
    }

    /// Owners and admins of the organization (a session's role; an API key with the `admin`
    /// scope acts as an admin, without it as a member): `organization_not_found` for a caller
    /// who is not a member, `permission_denied` for a member.
    async fn require_manager(
        &self,
        caller: &Principal,
        organization_id: auth::OrganizationId,
    ) -> Result<(), InferenceError> {
        let Some(auth) = &self.auth else {
            return Err(InferenceError::Internal("the inference service was built without auth".into()));
        };
        let role = auth.organization_role(caller, organization_id).await.map_err(auth_error)?;
        if role.can_manage() { Ok(()) } else { Err(InferenceError::PermissionDenied) }
    }

    /// Enables grounded chat: a chat request's `file_search` is answered by searching `rag`
    /// (whose own metering bills the query's embedding).
    pub fn with_retrieval(mut self, rag: Arc<dyn RagApi>) -> Self {
        self.retrieval = Some(rag);
        self
    }

    /// Grounds a chat request that carries `file_search`: takes the field out (it never reaches
    /// the provider), searches each named store with the last user message, and puts the best
    /// sources into the prompt. Returns the answer's citations (None: not a grounded request).
    /// Runs before the admission, so that the hold covers the sources' tokens, and a refused
    /// request (invalid options, an unknown store) takes no hold and calls no provider.
    ///
    /// The sources are bounded by the model's context window: the best are kept while the
    /// prompt (by the hold's estimate) with them plus `output_cap` fit in it (`grounding::fit`);
    /// the others are neither sent nor cited.
    async fn ground(
        &self,
        caller: &Principal,
        model: &ModelEntry,
        output_cap: u32,
        request: &mut ChatCompletionRequest,
    ) -> Result<Option<Vec<Citation>>, InferenceError> {
        // Most calls carry no `file_search`: they make no span (a span is a few µs of a call).
        let Some(options) = grounding::take_options(&mut request.extra)? else { return Ok(None) };
        self.ground_with(caller, model, output_cap, request, options).await.map(Some)
    }

    #[tracing::instrument(skip_all, fields(inference.vector_stores, inference.sources, inference.sources_dropped))]
    async fn ground_with(
        &self,
        caller: &Principal,
        model: &ModelEntry,
        output_cap: u32,
        request: &mut ChatCompletionRequest,
        options: crate::rag_api::FileSearchOptions,
    ) -> Result<Vec<Citation>, InferenceError> {
        let Some(rag) = &self.retrieval else {
            return Err(InferenceError::validation(
                grounding::FIELD,
                "Retrieval is not enabled on this server: `file_search` cannot be used.",
            ));
        };
        let query = grounding::query(&request.messages)?;
        let search = grounding::search_request(&query, &options);
        let span = tracing::Span::current();
        span.record("inference.vector_stores", options.vector_store_ids.len());
        let pages = futures_util::future::try_join_all(
            options.vector_store_ids.iter().map(|store| rag.search(caller, store, search.clone())),
        )
        .await
        .map_err(grounding::search_error)?;
        let limit = options.max_num_results.unwrap_or(grounding::DEFAULT_RESULTS);
        let found = grounding::merge(options.vector_store_ids.into_iter().zip(pages).collect(), limit);
        let found_count = found.len();
        let budget = u64::from(model.context_window).saturating_sub(u64::from(output_cap));
        let sources = grounding::fit(found, tokens::estimate_messages(&request.messages), budget);
        let dropped = found_count - sources.len();
        span.record("inference.sources", sources.len());
        span.record("inference.sources_dropped", dropped);
        if dropped > 0 {
            tracing::debug!(
                inference.sources_dropped = dropped,
                inference.context_window = model.context_window,
                inference.output_cap = output_cap,
                "sources dropped: they do not fit in the model's context window"
            );
        }
        grounding::insert_sources(&mut request.messages, &sources, dropped);
        Ok(grounding::citations(&sources))
    }

    /// The caller's organization: model calls need an API key.
    fn organization(caller: &Principal) -> Result<auth::OrganizationId, InferenceError> {
        match (&caller.kind, caller.organization_id) {
            (PrincipalKind::ApiKey, Some(org)) => Ok(org),
            _ => Err(InferenceError::ApiKeyRequired),
        }
    }

    fn model(&self, name: &str, kind: ModelKind) -> Result<Arc<ModelEntry>, InferenceError> {
        let model = self.inner.router.models.get(name).ok_or_else(|| InferenceError::ModelNotFound(name.to_owned()))?;
        if model.kind != kind {
            let what = match model.kind {
                ModelKind::Chat => "a chat model: use /v1/chat/completions",
                ModelKind::Embedding => "an embedding model: use /v1/embeddings",
            };
            return Err(InferenceError::validation("model", format!("`{name}` is {what}.")));
        }
        Ok(model.clone())
    }

    /// Admits a call before any provider is asked: the plan allows the model, the plan's
    /// requests and tokens per minute (per key and per organization, through the platform
    /// limiter) have room, and a hold covers the estimated cost (`insufficient_quota` if not).
    async fn admit(
        &self,
        caller: &Principal,
        model: &ModelEntry,
        prompt_estimate: u64,
        output_cap: u64,
    ) -> Result<Admission, InferenceError> {
        let amount = model
            .deployments
            .iter()
            .map(|d| billing::cost_of(&d.price(), prompt_estimate, output_cap))
            .max()
            .unwrap_or(Money::ZERO);
        self.admit_for(caller, model, Some(prompt_estimate + output_cap), amount).await
    }

    /// Admits a call of `tokens` (None: the tokens per minute are not checked, as for a cache
    /// hit) with a hold of `amount` (none if zero).
    async fn admit_for(
        &self,
        caller: &Principal,
        model: &ModelEntry,
        tokens: Option<u64>,
        amount: Money,
    ) -> Result<Admission, InferenceError> {
        let org = Self::organization(caller)?;
        // First, before the limiter counts the call: a call refused here costs nothing.
        let Some(slot) = self.inner.inflight.try_enter(org) else {
            self.inner.metrics.refused(&model.name, "organization_concurrency");
            return Err(InferenceError::RateLimited {
                limit: "concurrent requests per organization".into(),
                retry_after_secs: 1,
            });
        };
        let billing = &self.inner.billing;
        let limits = billing.limits(org).await.map_err(billing_error)?;
        if !limits.allows_model(&model.name) {
            return Err(InferenceError::ModelNotAllowed(model.name.clone()));
        }
        let key = caller.api_key_id.map(|k| k.to_string()).unwrap_or_default();
        let mut limited = vec![("inference_requests", "requests per minute", limits.requests_per_minute, 1)];
        if let Some(tokens) = tokens {
            let limit = u32::try_from(limits.tokens_per_minute).unwrap_or(u32::MAX);
            limited.push(("inference_tokens", "tokens per minute", limit, tokens));
        }
        // Each limit per key and per organization, all or none: a refused call counts against
        // none of them (and with Redis, one round trip for all).
        let mut checks = Vec::with_capacity(4);
        for (class, _, limit, cost) in &limited {
            let quota = Quota { limit: *limit, period_secs: 60 };
            let cost = u32::try_from(*cost).unwrap_or(u32::MAX);
            for subject in [Subject::ApiKey(key.clone()), Subject::Organization(org.to_string())] {
                checks.push((RateKey::new(*class, subject), quota, cost));
            }
        }
        let limiter = &self.inner.limiter;
        let decisions = limiter.check_all(&checks).await;
        let mut limits = RateLimits::default();
        for (i, decision) in decisions.iter().enumerate() {
            let (class, what, limit, _) = limited[i / 2];
            if !decision.allowed {
                let retry_after_secs = decision.retry_after.map_or(60, |d| d.as_secs_f64().ceil() as u64).max(1);
                return Err(InferenceError::RateLimited { limit: what.into(), retry_after_secs });
            }
            // The tighter of the key's and the organization's buckets.
            let state = LimitState { limit, remaining: decision.remaining, reset: decision.reset };
            let shown = if class == "inference_tokens" { &mut limits.tokens } else { &mut limits.requests };
            if shown.is_none_or(|s| state.remaining < s.remaining) {
                *shown = Some(state);
            }
        }
        let grant = tokens.map(|_| {
            let tokens = &checks[2..];
            TokenGrant {
                limiter: limiter.clone(),
                quota: tokens[0].1,
                keys: tokens.iter().map(|(key, ..)| key.clone()).collect(),
                admitted: tokens[0].2,
            }
        });
        // The billing key of this call (the hold's idempotency key and the usage's request id):
        // unique per admitted call. The client's request id alone (kept in front, to trace it)
        // would not do: a retried HTTP request runs the model again and must be charged again,
        // and usage is keyed by this id across organizations, so a key the client chooses would
        // let it replay one id for free answers.
        let request_id = match shared::request_id::current() {
            Some(id) => format!("{id}/{}", new_id("call")),
            None => new_id("req"),
        };
        let mut admission = Admission {
            billing: billing.clone(),
            organization_id: org,
            api_key_id: caller.api_key_id,
            model: model.name.clone(),
            request_id,
            hold: None,
            closed: false,
            _slot: Some(slot),
            tokens: grant,
            limits,
        };
        if amount > Money::ZERO {
            let hold = billing
                .reserve(ReserveRequest {
                    organization_id: org,
                    api_key_id: caller.api_key_id,
                    amount,
                    idempotency_key: admission.request_id.clone(),
                    ttl: self.inner.hold_ttl,
                })
                .await
                .map_err(billing_error)?;
            admission.hold = Some(hold.id);
        }
        Ok(admission)
    }

    /// Admits and bills a cache hit: the plan must allow the model and have room for one more
    /// request (no tokens are counted); `hit_billing = "full"` bills the answer's usage at the
    /// cost it had (a hold, then its settlement), `free` records nothing.
    async fn serve_hit(
        &self,
        caller: &Principal,
        model: &ModelEntry,
        hit: &CachedAnswer,
    ) -> Result<RateLimits, InferenceError> {
        let cost = match self.inner.cache.hit_billing {
            CacheHitBilling::Free => None,
            CacheHitBilling::Full => Some(Money::nanos(hit.cost_nanos)),
        };
        let mut admission = self.admit_for(caller, model, None, cost.unwrap_or(Money::ZERO)).await?;
        match cost {
            None => admission.closed = true,
            Some(cost) => {
                let usage = hit.response.usage.clone().unwrap_or_default();
                admission.settle(usage.prompt_tokens, usage.completion_tokens, cost);
            }
        }
        tracing::info!(inference.model = %model.name, inference.cache = "hit", "answered from the response cache");
        Ok(admission.limits)
    }

    /// Checks what Keel relies on; returns the output cap used for the estimate.
    fn validate_chat(&self, model: &ModelEntry, request: &ChatCompletionRequest) -> Result<u32, InferenceError> {
        if request.messages.is_empty() {
            return Err(InferenceError::validation("messages", "`messages` must not be empty."));
        }
        const ROLES: &[&str] = &["system", "developer", "user", "assistant", "tool", "function"];
        for (i, m) in request.messages.iter().enumerate() {
            if !ROLES.contains(&m.role.as_str()) {
                return Err(InferenceError::validation(
                    &format!("messages[{i}].role"),
                    format!("`{}` is not a valid role.", m.role),
                ));
            }
        }
        let field = if request.max_completion_tokens.is_some() { "max_completion_tokens" } else { "max_tokens" };
        let limit = model.max_output_tokens.unwrap_or(model.context_window).min(model.context_window);
        match request.output_cap() {
            Some(0) => Err(InferenceError::validation(field, format!("`{field}` must be at least 1."))),
            Some(n) if n > limit => Err(InferenceError::validation(
                field,
                format!("`{field}` is too large: {n}. This model supports at most {limit} output tokens."),
            )),
            Some(n) => Ok(n),
            None => Ok(model.max_output_tokens.unwrap_or(self.inner.default_max_output_tokens).min(limit)),
        }
    }

    /// Runs `attempt` over the model's deployments until one answers: each attempt holds a slot
    /// of its deployment's bulkhead (a full one is skipped, never waited for) and passes its
    /// circuit breaker; a retryable failure is retried after a backoff with full jitter (or the
    /// provider's `Retry-After`), on the next deployment when there is one. Returns the answer,
    /// its deployment and slot, and the time spent waiting: on the provider (what a successful
    /// attempt says it waited; a failed one counts whole) and in backoff. Keel's own work in an
    /// attempt (encoding the request, parsing the answer) is not waiting: `x-keel-overhead-ms`
    /// counts it.
    async fn attempts<T, F, Fut>(
        &self,
        model: &ModelEntry,
        started: Instant,
        mut attempt: F,
    ) -> Result<(T, Arc<Deployment>, OwnedSemaphorePermit, Duration), InferenceError>
    where
        F: FnMut(Arc<Deployment>, Instant) -> Fut,
        Fut: Future<Output = Result<(T, Duration), Failure>>,
    {
        let retry = &self.inner.retry;
        let plan = model.plan();
        let mut waited = Duration::ZERO;
        let mut last: Option<Failure> = None;
        let mut next = 0;
        for n in 0..retry.max_attempts {
            let mut picked = None;
            for _ in 0..plan.len() {
                let deployment = &plan[next % plan.len()];
                next += 1;
                let Some(permit) = deployment.try_acquire() else { continue };
                if deployment.circuit.allow() == Pass::Refused {
                    continue;
                }
                picked = Some((deployment.clone(), permit));
                break;
            }
            let Some((deployment, permit)) = picked else { break };
            if n > 0 {
                deployment.metrics.retry();
            }
            let deadline = started + total_timeout(&deployment);
            let t0 = Instant::now();
            let result = attempt(deployment.clone(), deadline).await;
            let failure = match result {
                Ok((value, on_provider)) => {
                    waited += on_provider;
                    if deployment.circuit.success() {
                        tracing::info!(
                            inference.model = %model.name,
                            inference.deployment = %deployment.label,
                            "circuit closed: the probe succeeded"
                        );
                    }
                    return Ok((value, deployment, permit, waited));
                }
                Err(failure) => {
                    waited += t0.elapsed();
                    failure
                }
            };
            drop(permit);
            deployment.metrics.upstream_error(failure.label());
            tracing::warn!(
                inference.model = %model.name,
                inference.deployment = %deployment.label,
                inference.attempt = n + 1,
                error.kind = failure.label(),
                error.cause = ?failure,
                "provider attempt failed"
            );
            let counts_for_circuit = !matches!(failure, Failure::Status { status, .. } if status < 500);
            if counts_for_circuit && deployment.circuit.failure() {
                tracing::warn!(
                    inference.model = %model.name,
                    inference.deployment = %deployment.label,
                    "circuit opened: calls skip this deployment until the open period is over"
                );
            }
            if !failure.retryable() || n + 1 >= retry.max_attempts {
                last = Some(failure);
                break;
            }
            let wait = match &failure {
                Failure::Status { status: 429, retry_after: Some(after), .. } => {
                    if *after > Duration::from_millis(retry.max_retry_after_ms) {
                        if plan.len() > 1 {
                            Duration::ZERO
                        } else {
                            last = Some(failure);
                            break;
                        }
                    } else {
                        *after
                    }
                }
                _ => backoff(retry, n),
            };
            if Instant::now() + wait >= deadline {
                last = Some(failure);
                break;
            }
            tokio::time::sleep(wait).await;
            waited += wait;
            last = Some(failure);
        }
        match last {
            Some(failure) => Err(failure.into_error()),
            None => {
                self.inner.metrics.refused(&model.name, "overloaded");
                Err(InferenceError::Overloaded { retry_after_secs: 1 })
            }
        }
    }

    /// The stream of a checked (and, if asked, grounded) chat request: from the response cache,
    /// or from a deployment, admitted and metered.
    async fn open_stream(
        &self,
        caller: &Principal,
        org: auth::OrganizationId,
        started: Instant,
        model: &ModelEntry,
        output_cap: u32,
        mut request: ChatCompletionRequest,
    ) -> Result<Served<ChunkStream>, InferenceError> {
        let include_usage = request.stream_options.as_ref().and_then(|o| o.include_usage) == Some(true);
        let slot = self.inner.cache.slot(&org.to_string(), model, &request);
        if let Some(slot) = &slot
            && let Some(hit) = self.inner.cache.get(slot).await
        {
            let limits = self.serve_hit(caller, model, &hit).await?;
            let chunks = crate::cache::replay(&hit.response, include_usage);
            let mut served: Served<ChunkStream> =
                Served::new(Box::pin(stream::iter(chunks.into_iter().map(Ok))), Duration::ZERO);
            served.cache = Some(CacheStatus::Hit);
            served.limits = limits;
            return Ok(served);
        }
        let cache_status = slot.as_ref().map(|_| CacheStatus::Miss);
        let store = slot.map(|slot| Store { cache: self.inner.cache.clone(), slot, answer: Assembler::default() });
        let admission =
            self.admit(caller, model, tokens::estimate_messages(&request.messages), output_cap.into()).await?;
        let limits = admission.limits;
        request.stream = Some(true);
        // Always ask the provider for usage; the caller sees it only if it asked.
        let mut options =
            request.stream_options.take().unwrap_or(StreamOptions { include_usage: None, extra: Extra::new() });
        options.include_usage = Some(true);
        request.stream_options = Some(options);
        let public = std::mem::take(&mut request.model);
        let (opened, deployment, permit, waited) = self
            .attempts(model, started, |deployment, deadline| {
                let request = &request;
                async move {
                    let Upstream::OpenAi(provider) = &deployment.upstream else {
                        return Ok((Opened::Echo, Duration::ZERO));
                    };
                    let body = body_for(&WithModel { model: &deployment.upstream_model, request })?;
                    let sent = Instant::now();
                    let first_by = deadline.min(sent + provider.timeouts.first_token);
                    let answer = provider.post(Endpoint::ChatCompletions, body, deadline).await?;
                    let mut reader = SseReader::new(BodyReader::new(answer, provider.timeouts.first_token, deadline));
                    // The first event is read before the answer is committed to the client, so
                    // that a provider that fails before it can still be retried.
                    let first = tokio::time::timeout_at(first_by, reader.next()).await;
                    let on_provider = sent.elapsed();
                    let first = match first {
                        Err(_) => return Err(Failure::Timeout("first_token")),
                        Ok(Err(failure)) => return Err(failure),
                        Ok(Ok(SseEvent::Data(data))) => Some(
                            serde_json::from_str::<ChatCompletionChunk>(&data)
                                .map_err(|e| Failure::Malformed(format!("a chunk is not a completion chunk: {e}")))?,
                        ),
                        Ok(Ok(SseEvent::Done)) => None,
                        Ok(Ok(SseEvent::End)) => {
                            return Err(Failure::Broken("the stream ended before its first event".into()));
                        }
                    };
                    reader.body_mut().set_idle(provider.timeouts.idle);
                    Ok((Opened::Provider(Box::new((reader, first))), on_provider))
                }
            })
            .await?;
        let messages = std::mem::take(&mut request.messages);
        let (source, pending) = match opened {
            Opened::Provider(opened) => {
                let (reader, first) = *opened;
                (Source::Provider { reader, include_usage }, first)
            }
            Opened::Echo => {
                let (words, finish) = echo_words(&messages, output_cap);
                let words: VecDeque<String> = words.into();
                let usage = Usage::new(tokens::estimate_messages(&messages), words.len() as u64);
                let source = Source::Echo {
                    id: new_id("chatcmpl"),
                    model: public.clone(),
                    created: now_secs(),
                    delay: Self::echo_delay(&deployment),
                    usage: include_usage.then_some(usage.clone()),
                    words,
                    finish,
                };
                // The echo bills its exact counts: the prompt's estimate, and one token per word
                // delivered (counted as they are, see `Forward::confirm`).
                let mut meter = Meter::new(deployment.clone(), messages, started, admission);
                meter.usage = Some(Usage::new(usage.prompt_tokens, 0));
                let forward = Forward::new(source, None, meter, permit, store);
                let mut served = Served::new(into_stream(forward), waited);
                served.cache = cache_status;
                served.limits = limits;
                return Ok(served);
            }
        };
        let forward =
            Forward::new(source, pending, Meter::new(deployment, messages, started, admission), permit, store);
        let mut served = Served::new(into_stream(forward), waited);
        served.cache = cache_status;
        served.limits = limits;
        Ok(served)
    }

    /// `/embeddings` of the model's deployments (through [`attempts`](Self::attempts)): the
    /// answer, its deployment and slot, and the time spent waiting. `request.model` is replaced
    /// by each deployment's upstream model.
    async fn embed_attempts(
        &self,
        model: &ModelEntry,
        started: Instant,
        request: &EmbeddingRequest,
    ) -> Result<(EmbeddingResponse, Arc<Deployment>, OwnedSemaphorePermit, Duration), InferenceError> {
        self.attempts(model, started, |deployment, deadline| async move {
            let Upstream::OpenAi(provider) = &deployment.upstream else {
                return Err(Failure::Status {
                    status: 400,
                    retry_after: None,
                    message: "not an embedding model".into(),
                });
            };
            let body = body_for(&WithModel { model: &deployment.upstream_model, request })?;
            let sent = Instant::now();
            let answer = provider.post(Endpoint::Embeddings, body, deadline).await?;
            let bytes = BodyReader::new(answer, provider.timeouts.idle, deadline).read_all(MAX_ANSWER_BYTES).await?;
            let on_provider = sent.elapsed();
            serde_json::from_slice::<EmbeddingResponse>(&bytes)
                .map(|answer| (answer, on_provider))
                .map_err(|e| Failure::Malformed(format!("not an embedding answer: {e}")))
        })
        .await
    }

    fn echo_delay(deployment: &Deployment) -> Duration {
        match &deployment.upstream {
            Upstream::Echo(echo) => Duration::from_millis(echo.config.chunk_delay_ms),
            Upstream::OpenAi(_) => Duration::ZERO,
        }
    }
}

fn total_timeout(deployment: &Deployment) -> Duration {
    match &deployment.upstream {
        Upstream::OpenAi(p) => p.timeouts.total,
        Upstream::Echo(_) => Duration::from_secs(3600),
    }
}

/// Exponential backoff with full jitter: uniform in [0, min(max, base × 2^n)].
fn backoff(retry: &RetryConfig, attempt: u32) -> Duration {
    let cap = retry.base_backoff_ms.saturating_mul(1 << attempt.min(20)).min(retry.max_backoff_ms);
    Duration::from_millis(fastrand::u64(0..=cap))
}

/// The request body for one deployment: the caller's request with the provider's model name.
fn body_for<T: serde::Serialize>(request: &T) -> Result<Bytes, Failure> {
    serde_json::to_vec(request).map(Bytes::from).map_err(|e| Failure::Malformed(format!("request body: {e}")))
}

fn new_id(prefix: &str) -> String {
    format!("{prefix}-{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..))
}

/// The metering of one call: records its usage exactly once, when it is finished or, at the
/// latest, when it is dropped (a client that went away mid-stream).
struct Meter {
    deployment: Arc<Deployment>,
    /// The provider's model name, for counting tokens.
    count_model: String,
    messages: Vec<ChatMessage>,
    started: Instant,
    /// The text generated so far (streams), counted when the provider reports no usage.
    generated: String,
    usage: Option<Usage>,
    admission: Admission,
    done: bool,
}

impl Meter {
    fn new(deployment: Arc<Deployment>, messages: Vec<ChatMessage>, started: Instant, admission: Admission) -> Self {
        let count_model = deployment.upstream_model.clone();
        Self {
            deployment,
            count_model,
            messages,
            started,
            generated: String::new(),
            usage: None,
            admission,
            done: false,
        }
    }

    /// The usage to bill: the provider's, else counted from the prompt and what was generated.
    fn usage(&self) -> Usage {
        match &self.usage {
            Some(usage) if usage.prompt_tokens + usage.completion_tokens > 0 => usage.clone(),
            _ => Usage::new(
                tokens::count_messages(&self.count_model, &self.messages),
                tokens::count(&self.count_model, &self.generated),
            ),
        }
    }

    /// Records the call's end; a second call does nothing.
    fn finish(&mut self, ok: bool) -> Usage {
        let usage = self.usage();
        if self.done {
            return usage;
        }
        self.done = true;
        let d = &self.deployment;
        let cost = billing::cost_of(&d.price(), usage.prompt_tokens, usage.completion_tokens);
        self.admission.settle(usage.prompt_tokens, usage.completion_tokens, cost);
        let cost = u64::try_from(cost.as_nanos()).unwrap_or(0);
        d.metrics.finished(ok, usage.prompt_tokens, usage.completion_tokens, cost, self.started.elapsed());
        tracing::info!(
            inference.deployment = %d.label,
            inference.input_tokens = usage.prompt_tokens,
            inference.output_tokens = usage.completion_tokens,
            inference.cost_nanos = cost,
            inference.ok = ok,
            duration_ms = self.started.elapsed().as_millis() as u64,
            "model call metered"
        );
        usage
    }
}

impl Drop for Meter {
    fn drop(&mut self) {
        if !self.done {
            self.finish(false);
        }
    }
}

/// Where the chunks of a stream come from.
enum Source {
    Provider {
        reader: SseReader,
        include_usage: bool,
    },
    Echo {
        id: String,
        model: String,
        created: i64,
        words: VecDeque<String>,
        delay: Duration,
        usage: Option<Usage>,
        /// `stop`, or `length` when the answer was cut at the output cap.
        finish: &'static str,
    },
}

/// The state of a stream being forwarded.
struct Forward {
    source: Source,
    /// The first chunk, read before the stream was handed out.
    pending: Option<ChatCompletionChunk>,
    meter: Meter,
    /// Whether a chunk said how the answer finished (then a missing `[DONE]` is forgiven).
    finished: bool,
    first_token_seen: bool,
    ended: bool,
    /// The text of the chunk handed out last, and for the echo model its word count: counted
    /// only when the next chunk is asked for (the consumer delivered this one; see
    /// `docs/INFERENCE.md`, "Client disconnects"), never if the stream is dropped first.
    in_flight: String,
    in_flight_words: u64,
    /// Where the whole answer goes when the stream ends well, for a cacheable request.
    store: Option<Store>,
    _permit: OwnedSemaphorePermit,
}

/// A cacheable stream's answer being assembled.
struct Store {
    cache: Arc<ResponseCache>,
    slot: Slot,
    answer: Assembler,
}

impl Forward {
    fn new(
        source: Source,
        pending: Option<ChatCompletionChunk>,
        meter: Meter,
        permit: OwnedSemaphorePermit,
        store: Option<Store>,
    ) -> Self {
        Self {
            source,
            pending,
            meter,
            finished: false,
            first_token_seen: false,
            ended: false,
            in_flight: String::new(),
            in_flight_words: 0,
            store,
            _permit: permit,
        }
    }

    /// Counts the chunk handed out last: it was delivered, since the next one is asked for.
    fn confirm(&mut self) {
        self.meter.generated.push_str(&self.in_flight);
        self.in_flight.clear();
        let words = std::mem::take(&mut self.in_flight_words);
        if words > 0
            && let Some(usage) = &mut self.meter.usage
        {
            usage.completion_tokens += words;
            usage.total_tokens += words;
        }
    }

    /// Notes a chunk: its text and usage. Returns whether the caller should see it (a usage
    /// chunk the caller did not ask for is dropped, and `usage` removed from the others).
    fn note(&mut self, chunk: &mut ChatCompletionChunk, include_usage: bool) -> bool {
        if let Some(store) = &mut self.store {
            store.answer.push(chunk);
        }
        for text in chunk.text() {
            self.in_flight.push_str(text);
        }
        if !self.first_token_seen && chunk.text().next().is_some() {
            self.first_token_seen = true;
            self.meter.deployment.metrics.first_token(self.meter.started.elapsed());
        }
        if chunk.choices.iter().any(|c| c.finish_reason.is_some()) {
            self.finished = true;
        }
        if let Some(usage) = &chunk.usage {
            self.meter.usage = Some(usage.clone());
        }
        if include_usage {
            return true;
        }
        if chunk.usage.is_some() && chunk.choices.is_empty() {
            return false;
        }
        chunk.usage = None;
        true
    }

    async fn next(&mut self) -> Option<Result<ChatCompletionChunk, InferenceError>> {
        self.confirm();
        if self.ended {
            return None;
        }
        if let Some(mut chunk) = self.pending.take() {
            let include = self.include_usage();
            if self.note(&mut chunk, include) {
                return Some(Ok(chunk));
            }
        }
        loop {
            let item = match &mut self.source {
                Source::Provider { reader, include_usage } => {
                    let include = *include_usage;
                    match reader.next().await {
                        Ok(SseEvent::Data(data)) => match serde_json::from_str::<ChatCompletionChunk>(&data) {
                            Ok(mut chunk) => {
                                if self.note(&mut chunk, include) {
                                    return Some(Ok(chunk));
                                }
                                continue;
                            }
                            Err(e) => Err(Failure::Malformed(format!("a chunk is not a completion chunk: {e}"))),
                        },
                        Ok(SseEvent::Done) => Ok(()),
                        Ok(SseEvent::End) if self.finished => Ok(()),
                        Ok(SseEvent::End) => Err(Failure::Broken("the stream ended before the answer finished".into())),
                        Err(failure) => Err(failure),
                    }
                }
                Source::Echo { id, model, created, words, delay, usage, finish } => {
                    if let Some(word) = words.pop_front() {
                        if !delay.is_zero() {
                            tokio::time::sleep(*delay).await;
                        }
                        let last = words.is_empty();
                        let mut chunk = echo_chunk(id, model, *created, Some(word), last.then(|| (*finish).to_owned()));
                        self.in_flight_words = 1;
                        if self.note(&mut chunk, true) {
                            return Some(Ok(chunk));
                        }
                        continue;
                    }
                    match usage.take() {
                        Some(usage) => {
                            let mut chunk = echo_chunk(id, model, *created, None, None);
                            chunk.choices.clear();
                            chunk.usage = Some(usage);
                            self.meter.usage = chunk.usage.clone();
                            return Some(Ok(chunk));
                        }
                        None => Ok(()),
                    }
                }
            };
            self.ended = true;
            return match item {
                Ok(()) => {
                    let usage = self.meter.finish(true);
                    if let Some(Store { cache, slot, answer }) = self.store.take()
                        && let Some(response) = answer.finish(usage.clone())
                    {
                        let price = self.meter.deployment.price();
                        let cost = billing::cost_of(&price, usage.prompt_tokens, usage.completion_tokens);
                        cache.put(slot, response, cost.as_nanos()).await;
                    }
                    None
                }
                Err(failure) => {
                    self.meter.deployment.metrics.upstream_error(failure.label());
                    tracing::warn!(
                        inference.deployment = %self.meter.deployment.label,
                        error.kind = failure.label(),
                        error.cause = ?failure,
                        "stream failed after it started"
                    );
                    self.meter.finish(false);
                    Some(Err(failure.into_error()))
                }
            };
        }
    }

    fn include_usage(&self) -> bool {
        match &self.source {
            Source::Provider { include_usage, .. } => *include_usage,
            Source::Echo { .. } => true,
        }
    }
}

fn echo_chunk(
    id: &str,
    model: &str,
    created: i64,
    word: Option<String>,
    finish: Option<String>,
) -> ChatCompletionChunk {
    ChatCompletionChunk {
        id: id.to_owned(),
        object: "chat.completion.chunk".into(),
        created,
        model: model.to_owned(),
        choices: vec![ChunkChoice {
            index: 0,
            delta: Delta { role: Some("assistant".into()), content: word, extra: Extra::new() },
            finish_reason: finish,
            extra: Extra::new(),
        }],
        usage: None,
        extra: Extra::new(),
    }
}

/// The echo model's answer: the last user message.
fn echo_text(messages: &[ChatMessage]) -> String {
    messages.iter().rev().find(|m| m.role == "user").map(ChatMessage::text).unwrap_or_default()
}

/// The echo's words (one token each), at most `output_cap` of them as a model stops at
/// `max_tokens`, so that its cost never exceeds its hold; and its finish reason.
fn echo_words(messages: &[ChatMessage], output_cap: u32) -> (Vec<String>, &'static str) {
    let mut words = Echo::words(&echo_text(messages));
    let cap = usize::try_from(output_cap).unwrap_or(usize::MAX);
    if words.len() > cap {
        words.truncate(cap);
        (words, "length")
    } else {
        (words, "stop")
    }
}

/// What a stream's attempt got before the stream was handed out.
enum Opened {
    Provider(Box<(SseReader, Option<ChatCompletionChunk>)>),
    Echo,
}

#[async_trait]
impl InferenceApi for InferenceService {
    #[tracing::instrument(skip_all, fields(inference.model = %request.model))]
    async fn chat(
        &self,
        caller: &Principal,
        mut request: ChatCompletionRequest,
    ) -> Result<Served<ChatCompletionResponse>, InferenceError> {
        let started = Instant::now();
        let org = Self::organization(caller)?;
        if request.is_stream() {
            return Err(InferenceError::validation("stream", "Use chat_stream for a streamed answer."));
        }
        let model = self.model(&request.model, ModelKind::Chat)?;
        let output_cap = self.validate_chat(&model, &request)?;
        let citations = self.ground(caller, &model, output_cap, &mut request).await?;
        let slot = self.inner.cache.slot(&org.to_string(), &model, &request);
        if let Some(slot) = &slot
            && let Some(hit) = self.inner.cache.get(slot).await
        {
            let limits = self.serve_hit(caller, &model, &hit).await?;
            let mut served = Served::new(hit.response, Duration::ZERO);
            served.cache = Some(CacheStatus::Hit);
            served.limits = limits;
            if let Some(citations) = &citations {
                grounding::attach(&mut served.value.extra, citations);
            }
            return Ok(served);
        }
        let admission =
            self.admit(caller, &model, tokens::estimate_messages(&request.messages), output_cap.into()).await?;
        let limits = admission.limits;
        let public = std::mem::take(&mut request.model);
        let public = &public;
        let (response, deployment, _permit, waited) = self
            .attempts(&model, started, |deployment, deadline| {
                let request = &request;
                async move {
                    match &deployment.upstream {
                        // The echo stands in for a provider: its time is the provider's.
                        Upstream::Echo(_) => {
                            let generating = Instant::now();
                            let answer = echo_response(public, &request.messages, output_cap);
                            Ok((answer, generating.elapsed()))
                        }
                        Upstream::OpenAi(provider) => {
                            let body = body_for(&WithModel { model: &deployment.upstream_model, request })?;
                            let sent = Instant::now();
                            let answer = provider.post(Endpoint::ChatCompletions, body, deadline).await?;
                            let bytes = BodyReader::new(answer, provider.timeouts.idle, deadline)
                                .read_all(MAX_ANSWER_BYTES)
                                .await?;
                            let on_provider = sent.elapsed();
                            serde_json::from_slice::<ChatCompletionResponse>(&bytes)
                                .map(|answer| (answer, on_provider))
                                .map_err(|e| Failure::Malformed(format!("not a chat completion: {e}")))
                        }
                    }
                }
            })
            .await?;
        let mut meter = Meter::new(deployment.clone(), std::mem::take(&mut request.messages), started, admission);
        meter.deployment.metrics.first_token(started.elapsed());
        meter.usage = response.usage.clone();
        if meter.usage.as_ref().is_none_or(|u| u.prompt_tokens + u.completion_tokens == 0) {
            for choice in &response.choices {
                meter.generated.push_str(&choice.message.text());
            }
        }
        let usage = meter.finish(true);
        let mut served = Served::new(response, waited);
        served.limits = limits;
        if let Some(slot) = slot {
            let mut answer = served.value.clone();
            answer.usage.get_or_insert(usage.clone());
            let cost = billing::cost_of(&deployment.price(), usage.prompt_tokens, usage.completion_tokens);
            self.inner.cache.put(slot, answer, cost.as_nanos()).await;
            served.cache = Some(CacheStatus::Miss);
        }
        // After the cache's copy: an entry holds the provider's answer, and each hit carries
        // the citations of its own retrieval (the same sources, since they are in the key).
        if let Some(citations) = &citations {
            grounding::attach(&mut served.value.extra, citations);
        }
        Ok(served)
    }

    #[tracing::instrument(skip_all, fields(inference.model = %request.model))]
    async fn chat_stream(
        &self,
        caller: &Principal,
        mut request: ChatCompletionRequest,
    ) -> Result<Served<ChunkStream>, InferenceError> {
        let started = Instant::now();
        let org = Self::organization(caller)?;
        let model = self.model(&request.model, ModelKind::Chat)?;
        let output_cap = self.validate_chat(&model, &request)?;
        let citations = self.ground(caller, &model, output_cap, &mut request).await?;
        let served = self.open_stream(caller, org, started, &model, output_cap, request).await?;
        Ok(match citations {
            Some(citations) => Served { value: with_citations(served.value, citations), ..served },
            None => served,
        })
    }

    #[tracing::instrument(skip_all, fields(inference.model = %request.model))]
    async fn embeddings(
        &self,
        caller: &Principal,
        mut request: EmbeddingRequest,
    ) -> Result<Served<EmbeddingResponse>, InferenceError> {
        let started = Instant::now();
        Self::organization(caller)?;
        let model = self.model(&request.model, ModelKind::Embedding)?;
        let empty = match &request.input {
            serde_json::Value::String(s) => s.is_empty(),
            serde_json::Value::Array(items) => items.is_empty(),
            _ => return Err(InferenceError::validation("input", "`input` must be a string or an array.")),
        };
        if empty {
            return Err(InferenceError::validation("input", "`input` must not be empty."));
        }
        let estimate = request.texts().iter().map(|t| tokens::estimate(t)).sum::<u64>() + request.input_token_ids();
        let admission = self.admit(caller, &model, estimate, 0).await?;
        let limits = admission.limits;
        request.model.clear();
        let (response, deployment, _permit, waited) = self.embed_attempts(&model, started, &request).await?;
        let mut meter = Meter::new(deployment.clone(), Vec::new(), started, admission);
        let prompt = if response.usage.prompt_tokens > 0 {
            response.usage.prompt_tokens
        } else {
            request.texts().iter().map(|t| tokens::count(&deployment.upstream_model, t)).sum::<u64>()
                + request.input_token_ids()
        };
        meter.usage = Some(Usage::new(prompt, 0));
        meter.finish(true);
        let mut served = Served::new(response, waited);
        served.limits = limits;
        Ok(served)
    }

    async fn models(&self, caller: &Principal) -> Result<ModelList, InferenceError> {
        let org = Self::organization(caller)?;
        let limits = self.inner.billing.limits(org).await.map_err(billing_error)?;
        let mut data: Vec<Model> = self
            .inner
            .router
            .models
            .values()
            .filter(|m| limits.allows_model(&m.name))
            .map(|m| self.describe(m))
            .collect();
        data.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(ModelList { object: "list".into(), data })
    }

    async fn model(&self, caller: &Principal, id: &str) -> Result<Model, InferenceError> {
        let org = Self::organization(caller)?;
        let limits = self.inner.billing.limits(org).await.map_err(billing_error)?;
        let model = self
            .inner
            .router
            .models
            .get(id)
            .filter(|m| limits.allows_model(&m.name))
            .ok_or_else(|| InferenceError::ModelNotFound(id.to_owned()))?;
        Ok(self.describe(model))
    }

    #[tracing::instrument(skip_all, fields(organization.id = %organization_id))]
    async fn purge_response_cache(
        &self,
        caller: &Principal,
        organization_id: auth::OrganizationId,
    ) -> Result<(), InferenceError> {
        self.require_manager(caller, organization_id).await?;
        self.inner.cache.purge(&organization_id.to_string()).await;
        tracing::info!("response cache purged");
        Ok(())
    }

    async fn ready(&self) -> Result<(), InferenceError> {
        Ok(())
    }
}

impl InferenceService {
    fn describe(&self, model: &ModelEntry) -> Model {
        Model {
            id: model.name.clone(),
            object: "model".into(),
            created: self.inner.created,
            owned_by: model.owned_by.clone(),
        }
    }
}

/// A request with the provider's model name in place of the public one.
#[derive(serde::Serialize)]
struct WithModel<'a, T> {
    model: &'a str,
    #[serde(flatten)]
    request: &'a T,
}

fn echo_response(model: &str, messages: &[ChatMessage], output_cap: u32) -> ChatCompletionResponse {
    let (words, finish) = echo_words(messages, output_cap);
    let usage = Usage::new(tokens::estimate_messages(messages), words.len() as u64);
    ChatCompletionResponse {
        id: new_id("chatcmpl"),
        object: "chat.completion".into(),
        created: now_secs(),
        model: model.to_owned(),
        choices: vec![Choice {
            index: 0,
            message: ChatMessage {
                role: "assistant".into(),
                content: Some(serde_json::Value::String(words.concat())),
                extra: Extra::new(),
            },
            finish_reason: Some(finish.into()),
            extra: Extra::new(),
        }],
        usage: Some(usage),
        extra: Extra::new(),
    }
}

/// The stream with the answer's citations in its first chunk.
fn with_citations(chunks: ChunkStream, citations: Vec<Citation>) -> ChunkStream {
    let mut citations = Some(citations);
    Box::pin(chunks.map(move |mut item| {
        if let Ok(chunk) = &mut item
            && let Some(citations) = citations.take()
        {
            grounding::attach(&mut chunk.extra, &citations);
        }
        item
    }))
}

fn into_stream(forward: Forward) -> ChunkStream {
    Box::pin(stream::unfold(forward, |mut forward| async move { forward.next().await.map(|item| (item, forward)) }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(text: &str) -> Vec<ChatMessage> {
        vec![ChatMessage { role: "user".into(), content: Some(text.into()), extra: Extra::new() }]
    }

    #[test]
    fn the_echo_stops_at_the_output_cap_so_its_cost_stays_within_its_hold() {
        let answer = echo_response("echo", &user("one two three four five"), 3);
        assert_eq!(answer.choices[0].message.content, Some("one two three".into()));
        assert_eq!(answer.choices[0].finish_reason.as_deref(), Some("length"));
        assert_eq!(answer.usage.as_ref().map(|u| u.completion_tokens), Some(3));
        let answer = echo_response("echo", &user("one two"), 3);
        assert_eq!(answer.choices[0].message.content, Some("one two".into()));
        assert_eq!(answer.choices[0].finish_reason.as_deref(), Some("stop"));
        assert_eq!(echo_words(&user("a b c d"), 2), (vec!["a".to_owned(), " b".to_owned()], "length"));
    }
}
