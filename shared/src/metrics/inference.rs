//! Inference metrics, per public model and deployment (`provider/upstream-model`): both label
//! values come from the configuration, so they stay bounded.

use super::{HistogramFamily, histogram_family};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

/// Every `kind` of `keel_inference_upstream_errors_total`: each deployment's series exist from
/// the start at 0, so dashboards and alerts see a rate of 0 rather than nothing.
pub const UPSTREAM_ERROR_KINDS: &[&str] =
    &["connect", "timeout", "rate_limited", "server_error", "client_error", "malformed", "broken"];

/// Buckets for the gateway's own overhead: 25 µs to 100 ms.
pub const OVERHEAD_BUCKETS: &[f64] =
    &[0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1];

/// Buckets for time to first token and whole calls: 10 ms to 10 min.
pub const GENERATION_BUCKETS: &[f64] =
    &[0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0];

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct DeploymentLabels {
    model: String,
    deployment: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct OutcomeLabels {
    model: String,
    deployment: String,
    outcome: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct TokenLabels {
    model: String,
    deployment: String,
    direction: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ErrorLabels {
    model: String,
    deployment: String,
    kind: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RefusedLabels {
    model: String,
    reason: &'static str,
}

/// Every `reason` of `keel_inference_refused_total`.
pub const REFUSED_REASONS: &[&str] = &["organization_concurrency", "overloaded"];

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct CacheLabels {
    model: String,
    result: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RouteLabels {
    route: &'static str,
}

/// The `keel_inference_*` families.
#[derive(Debug, Clone)]
pub struct InferenceMetrics {
    requests: Family<OutcomeLabels, Counter>,
    tokens: Family<TokenLabels, Counter>,
    cost: Family<DeploymentLabels, Counter>,
    ttft: HistogramFamily<DeploymentLabels>,
    duration: HistogramFamily<DeploymentLabels>,
    upstream_errors: Family<ErrorLabels, Counter>,
    retries: Family<DeploymentLabels, Counter>,
    overhead: HistogramFamily<RouteLabels>,
    refused: Family<RefusedLabels, Counter>,
    cache_lookups: Family<CacheLabels, Counter>,
    deployments: Watched,
}

/// A deployment's state, read at scrape time (nothing on the call's path).
pub trait DeploymentState: Send + Sync {
    /// The calls in flight and the most the bulkhead admits.
    fn slots(&self) -> (u32, u32);
    /// The circuit breaker: 0 closed, 1 open, 2 half-open (a probe is out, or the open period
    /// is over and the next call will be the probe).
    fn circuit(&self) -> i64;
}

type Watched = Arc<Mutex<Vec<(DeploymentLabels, Weak<dyn DeploymentState>)>>>;

impl InferenceMetrics {
    pub(super) fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            requests: Family::default(),
            tokens: Family::default(),
            cost: Family::default(),
            ttft: histogram_family(|| Histogram::new(GENERATION_BUCKETS.iter().copied())),
            duration: histogram_family(|| Histogram::new(GENERATION_BUCKETS.iter().copied())),
            upstream_errors: Family::default(),
            retries: Family::default(),
            overhead: histogram_family(|| Histogram::new(OVERHEAD_BUCKETS.iter().copied())),
            refused: Family::default(),
            cache_lookups: Family::default(),
            deployments: Watched::default(),
        };
        registry.register(
            "keel_inference_requests",
            "Model calls answered, by model, deployment and outcome (ok or error)",
            metrics.requests.clone(),
        );
        registry.register(
            "keel_inference_tokens",
            "Tokens billed, by model, deployment and direction (input or output)",
            metrics.tokens.clone(),
        );
        registry.register(
            "keel_inference_cost_nanos",
            "Cost billed, in nano-units of the billing currency, by model and deployment",
            metrics.cost.clone(),
        );
        registry.register(
            "keel_inference_time_to_first_token_seconds",
            "Time from the request to the provider's first token (the whole answer when not streamed)",
            metrics.ttft.clone(),
        );
        registry.register(
            "keel_inference_request_duration_seconds",
            "Time from the request to the end of the provider's answer",
            metrics.duration.clone(),
        );
        registry.register(
            "keel_inference_upstream_errors",
            "Failed provider attempts, by kind (connect, timeout, rate_limited, server_error, client_error, malformed, broken)",
            metrics.upstream_errors.clone(),
        );
        registry.register("keel_inference_retries", "Provider attempts after the first", metrics.retries.clone());
        registry.register(
            "keel_inference_overhead_seconds",
            "The gateway's own time per model call (the whole call minus the wait for the provider), by route",
            metrics.overhead.clone(),
        );
        registry.register(
            "keel_inference_refused",
            "Model calls refused before any provider attempt, by model and reason: organization_concurrency (the organization's calls in flight in this process are at inference.max_concurrency_per_organization; 429) or overloaded (every deployment's bulkhead full or circuit open; 503)",
            metrics.refused.clone(),
        );
        registry.register(
            "keel_inference_cache_lookups",
            "Response-cache lookups of cacheable chat calls, by model and result (hit or miss)",
            metrics.cache_lookups.clone(),
        );
        registry.register_collector(Box::new(DeploymentCollector { deployments: metrics.deployments.clone() }));
        metrics
    }

    /// A model call refused for `reason` (one of [`REFUSED_REASONS`]) before any attempt.
    pub fn refused(&self, model: &str, reason: &'static str) {
        self.refused.get_or_create(&RefusedLabels { model: model.to_owned(), reason }).inc();
    }

    /// Samples `state`, that of `deployment` of `model`, at every scrape until it is dropped
    /// (`keel_inference_bulkhead_in_flight`, `keel_inference_bulkhead_capacity` and
    /// `keel_inference_circuit_state`).
    pub fn watch_deployment(&self, model: &str, deployment: &str, state: Weak<dyn DeploymentState>) {
        let labels = DeploymentLabels { model: model.to_owned(), deployment: deployment.to_owned() };
        self.deployments.lock().unwrap_or_else(PoisonError::into_inner).push((labels, state));
    }

    /// The response cache's hit and miss counters of `model` (both series exist from then on).
    pub fn cache_lookups(&self, model: &str) -> CacheLookups {
        let counter = |result| self.cache_lookups.get_or_create_owned(&CacheLabels { model: model.to_owned(), result });
        CacheLookups { hit: counter("hit"), miss: counter("miss") }
    }

    /// The handles of one deployment of one model (labels from the configuration only).
    pub fn deployment(&self, model: &str, deployment: &str) -> InferenceHandle {
        let labels = DeploymentLabels { model: model.to_owned(), deployment: deployment.to_owned() };
        let outcome = |outcome| {
            self.requests.get_or_create_owned(&OutcomeLabels {
                model: model.to_owned(),
                deployment: deployment.to_owned(),
                outcome,
            })
        };
        let tokens = |direction| {
            self.tokens.get_or_create_owned(&TokenLabels {
                model: model.to_owned(),
                deployment: deployment.to_owned(),
                direction,
            })
        };
        for kind in UPSTREAM_ERROR_KINDS {
            // Creating the series is the point; the guard it returns is not needed.
            drop(self.upstream_errors.get_or_create(&ErrorLabels {
                model: model.to_owned(),
                deployment: deployment.to_owned(),
                kind,
            }));
        }
        for reason in REFUSED_REASONS {
            drop(self.refused.get_or_create(&RefusedLabels { model: model.to_owned(), reason }));
        }
        InferenceHandle {
            ok: outcome("ok"),
            error: outcome("error"),
            input_tokens: tokens("input"),
            output_tokens: tokens("output"),
            cost: self.cost.get_or_create_owned(&labels),
            ttft: self.ttft.get_or_create_owned(&labels),
            duration: self.duration.get_or_create_owned(&labels),
            retries: self.retries.get_or_create_owned(&labels),
            errors: self.upstream_errors.clone(),
            labels,
        }
    }

    /// Records the gateway's own overhead on `route` (`chat`, `chat_stream`, `embeddings`).
    pub fn overhead(&self, route: &'static str, overhead: Duration) {
        self.overhead.get_or_create(&RouteLabels { route }).observe(overhead.as_secs_f64());
    }
}

/// Records the calls of one deployment.
#[derive(Debug, Clone)]
pub struct InferenceHandle {
    ok: Counter,
    error: Counter,
    input_tokens: Counter,
    output_tokens: Counter,
    cost: Counter,
    ttft: Histogram,
    duration: Histogram,
    retries: Counter,
    errors: Family<ErrorLabels, Counter>,
    labels: DeploymentLabels,
}

impl InferenceHandle {
    /// A call that ended: its outcome, usage, cost in nano-units and duration.
    pub fn finished(&self, ok: bool, input_tokens: u64, output_tokens: u64, cost_nanos: u64, duration: Duration) {
        if ok { &self.ok } else { &self.error }.inc();
        self.input_tokens.inc_by(input_tokens);
        self.output_tokens.inc_by(output_tokens);
        self.cost.inc_by(cost_nanos);
        self.duration.observe(duration.as_secs_f64());
    }

    pub fn first_token(&self, after: Duration) {
        self.ttft.observe(after.as_secs_f64());
    }

    pub fn retry(&self) {
        self.retries.inc();
    }

    /// A failed attempt, by kind (one of [`UPSTREAM_ERROR_KINDS`]).
    pub fn upstream_error(&self, kind: &'static str) {
        self.errors
            .get_or_create(&ErrorLabels {
                model: self.labels.model.clone(),
                deployment: self.labels.deployment.clone(),
                kind,
            })
            .inc();
    }
}

/// The response cache's lookups of one model.
#[derive(Debug, Clone)]
pub struct CacheLookups {
    hit: Counter,
    miss: Counter,
}

impl CacheLookups {
    pub fn record(&self, hit: bool) {
        if hit { &self.hit } else { &self.miss }.inc();
    }
}

/// Encodes the deployments' bulkheads and circuits at scrape time.
struct DeploymentCollector {
    deployments: Watched,
}

impl std::fmt::Debug for DeploymentCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeploymentCollector").finish_non_exhaustive()
    }
}

impl Collector for DeploymentCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let in_flight = Family::<DeploymentLabels, Gauge>::default();
        let capacity = Family::<DeploymentLabels, Gauge>::default();
        let circuit = Family::<DeploymentLabels, Gauge>::default();
        {
            let mut deployments = self.deployments.lock().unwrap_or_else(PoisonError::into_inner);
            deployments.retain(|(labels, state)| match state.upgrade() {
                Some(state) => {
                    let (used, max) = state.slots();
                    in_flight.get_or_create(labels).set(i64::from(used));
                    capacity.get_or_create(labels).set(i64::from(max));
                    circuit.get_or_create(labels).set(state.circuit());
                    true
                }
                None => false,
            });
            if deployments.is_empty() {
                return Ok(());
            }
        }
        let metric = encoder.encode_descriptor(
            "keel_inference_bulkhead_in_flight",
            "Calls holding a slot of the deployment's bulkhead, sampled at scrape time",
            None,
            MetricType::Gauge,
        )?;
        in_flight.encode(metric)?;
        let metric = encoder.encode_descriptor(
            "keel_inference_bulkhead_capacity",
            "The most calls the deployment's bulkhead admits at once (its provider's max_concurrency)",
            None,
            MetricType::Gauge,
        )?;
        capacity.encode(metric)?;
        let metric = encoder.encode_descriptor(
            "keel_inference_circuit_state",
            "The deployment's circuit breaker, sampled at scrape time: 0 closed, 1 open, 2 half-open (a probe is out, or the open period is over and the next call is the probe)",
            None,
            MetricType::Gauge,
        )?;
        circuit.encode(metric)
    }
}
