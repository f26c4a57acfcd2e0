//! Models, their deployments, and the choice among them: weights and current load, a circuit
//! breaker and a concurrency limit (bulkhead) per deployment.

use crate::config::{CircuitConfig, InferenceConfig, ModelConfig, ModelKind};
use crate::metrics::DeploymentMetrics;
use crate::provider::{Echo, OpenAiProvider};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

/// Where a deployment's calls go.
#[derive(Debug)]
pub(crate) enum Upstream {
    OpenAi(Arc<OpenAiProvider>),
    Echo(Echo),
}

/// One deployment of a public model.
#[derive(Debug)]
pub(crate) struct Deployment {
    /// `provider/model`, the `deployment` metric label.
    pub label: String,
    pub upstream: Upstream,
    /// The provider's name for the model.
    pub upstream_model: String,
    pub weight: u32,
    pub input_nanos_per_million: u64,
    pub output_nanos_per_million: u64,
    max_concurrency: u32,
    permits: Arc<Semaphore>,
    pub circuit: Circuit,
    pub metrics: DeploymentMetrics,
}

impl Deployment {
    /// A slot in the bulkhead, at once or not at all.
    pub(crate) fn try_acquire(&self) -> Option<OwnedSemaphorePermit> {
        self.permits.clone().try_acquire_owned().ok()
    }

    fn in_flight(&self) -> u32 {
        self.max_concurrency.saturating_sub(self.permits.available_permits() as u32)
    }

    /// The deployment's prices, as billing computes costs with them.
    pub(crate) fn price(&self) -> billing::ModelPrice {
        billing::ModelPrice {
            input_price_per_mtok: billing::Money::nanos(
                i64::try_from(self.input_nanos_per_million).unwrap_or(i64::MAX),
            ),
            output_price_per_mtok: billing::Money::nanos(
                i64::try_from(self.output_nanos_per_million).unwrap_or(i64::MAX),
            ),
        }
    }
}

/// A public model.
#[derive(Debug)]
pub(crate) struct ModelEntry {
    pub name: String,
    pub kind: ModelKind,
    pub context_window: u32,
    pub max_output_tokens: Option<u32>,
    pub owned_by: String,
    pub deployments: Vec<Arc<Deployment>>,
    /// The response cache's TTL for this model's deterministic answers, if it caches them.
    pub cache_ttl_secs: Option<u64>,
    /// The response cache's hits and misses (chat models only: embeddings are not cached).
    pub cache_lookups: Option<shared::metrics::CacheLookups>,
}

impl ModelEntry {
    /// The deployments to try, in order: one chosen among the healthy ones by weight and free
    /// capacity, then the others by weight (the fallbacks). Deployments whose circuit is open
    /// come last, so that they are tried only if their circuit lets a probe through by then.
    pub(crate) fn plan(&self) -> Vec<Arc<Deployment>> {
        let mut order: Vec<Arc<Deployment>> = self.deployments.clone();
        if order.len() <= 1 {
            return order;
        }
        // Score: weight × free share of the bulkhead; open circuits score 0.
        let score = |d: &Deployment| -> u64 {
            if d.circuit.is_open() {
                return 0;
            }
            let free = u64::from(d.max_concurrency.saturating_sub(d.in_flight()));
            u64::from(d.weight) * (free * 1000 / u64::from(d.max_concurrency.max(1)) + 1)
        };
        let scores: Vec<u64> = order.iter().map(|d| score(d)).collect();
        let total: u64 = scores.iter().sum();
        if total > 0 {
            let mut pick = fastrand::u64(0..total);
            let chosen = scores
                .iter()
                .position(|s| {
                    if pick < *s {
                        true
                    } else {
                        pick -= s;
                        false
                    }
                })
                .unwrap_or(0);
            let first = order.remove(chosen);
            order.sort_by_key(|d| (d.circuit.is_open(), std::cmp::Reverse(d.weight)));
            order.insert(0, first);
        } else {
            order.sort_by_key(|d| std::cmp::Reverse(d.weight));
        }
        order
    }
}

/// Every configured model by public name.
#[derive(Debug, Default)]
pub(crate) struct Router {
    pub models: HashMap<String, Arc<ModelEntry>>,
}

impl Router {
    pub(crate) fn new(config: &InferenceConfig, metrics: &crate::metrics::InferenceMetrics) -> Result<Self, String> {
        let mut providers = HashMap::new();
        for (name, p) in &config.providers {
            providers.insert(name.clone(), (Arc::new(OpenAiProvider::new(name, p)?), p.max_concurrency));
        }
        let mut models = HashMap::new();
        for (name, m) in &config.models {
            let deployments = m
                .deployments
                .iter()
                .map(|d| {
                    let (provider, max_concurrency) = providers
                        .get(&d.provider)
                        .cloned()
                        .ok_or_else(|| format!("inference.models.{name}: no provider `{}`", d.provider))?;
                    let label = format!("{}/{}", d.provider, d.model);
                    Ok(watched(
                        metrics,
                        name,
                        Deployment {
                            metrics: metrics.deployment(name, &label),
                            label,
                            upstream: Upstream::OpenAi(provider),
                            upstream_model: d.model.clone(),
                            weight: d.weight,
                            input_nanos_per_million: d.input_nanos_per_million,
                            output_nanos_per_million: d.output_nanos_per_million,
                            max_concurrency,
                            permits: Arc::new(Semaphore::new(max_concurrency as usize)),
                            circuit: Circuit::new(&config.circuit),
                        },
                    ))
                })
                .collect::<Result<Vec<_>, String>>()?;
            models.insert(name.clone(), Arc::new(model(metrics, name, m, deployments)));
        }
        if config.echo.enabled {
            let echo = &config.echo;
            let label = "echo/echo".to_owned();
            let deployment = watched(
                metrics,
                &echo.model,
                Deployment {
                    metrics: metrics.deployment(&echo.model, &label),
                    label,
                    upstream: Upstream::Echo(Echo { config: echo.clone() }),
                    upstream_model: echo.model.clone(),
                    weight: 1,
                    input_nanos_per_million: echo.input_nanos_per_million,
                    output_nanos_per_million: echo.output_nanos_per_million,
                    max_concurrency: 100_000,
                    permits: Arc::new(Semaphore::new(100_000)),
                    circuit: Circuit::new(&config.circuit),
                },
            );
            let config = ModelConfig { owned_by: "keel".into(), max_output_tokens: Some(4096), ..Default::default() };
            models.insert(echo.model.clone(), Arc::new(model(metrics, &echo.model, &config, vec![deployment])));
        }
        Ok(Self { models })
    }
}

impl shared::metrics::DeploymentState for Deployment {
    fn slots(&self) -> (u32, u32) {
        (self.in_flight(), self.max_concurrency)
    }

    fn circuit(&self) -> i64 {
        self.circuit.gauge()
    }
}

/// The deployment, its bulkhead and circuit sampled by the metrics at each scrape.
fn watched(metrics: &crate::metrics::InferenceMetrics, model: &str, deployment: Deployment) -> Arc<Deployment> {
    let deployment = Arc::new(deployment);
    let weak: std::sync::Weak<Deployment> = Arc::downgrade(&deployment);
    metrics.watch_deployment(model, &deployment.label, weak);
    deployment
}

fn model(
    metrics: &crate::metrics::InferenceMetrics,
    name: &str,
    m: &ModelConfig,
    deployments: Vec<Arc<Deployment>>,
) -> ModelEntry {
    ModelEntry {
        name: name.to_owned(),
        kind: m.kind,
        context_window: m.context_window,
        max_output_tokens: m.max_output_tokens,
        owned_by: m.owned_by.clone(),
        deployments,
        cache_ttl_secs: m.cache_ttl_secs,
        cache_lookups: (m.kind == ModelKind::Chat).then(|| metrics.cache_lookups(name)),
    }
}

/// A circuit breaker: `failure_threshold` consecutive failures open it for `open_ms`; then one
/// probe is let through (half-open), whose success closes it and whose failure opens it again.
#[derive(Debug)]
pub(crate) struct Circuit {
    threshold: u32,
    open_for: Duration,
    failures: AtomicU32,
    state: Mutex<CircuitState>,
}

/// What [`Circuit::allow`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pass {
    /// Open, or half-open with its probe already out.
    Refused,
    Closed,
    /// The one call let through a half-open circuit.
    Probe,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CircuitState {
    Closed,
    Open {
        until: Instant,
    },
    /// One probe is in flight since `since`; another is let through after `open_for`.
    HalfOpen {
        since: Instant,
    },
}

impl Circuit {
    pub(crate) fn new(config: &CircuitConfig) -> Self {
        Self {
            threshold: config.failure_threshold,
            open_for: Duration::from_millis(config.open_ms),
            failures: AtomicU32::new(0),
            state: Mutex::new(CircuitState::Closed),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, CircuitState> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(crate) fn is_open(&self) -> bool {
        matches!(*self.lock(), CircuitState::Open { until } if Instant::now() < until)
    }

    /// Whether a call may go through now; `Pass::Probe` when it took the probe slot of a
    /// half-open circuit (the state, and so the gauge, changed).
    pub(crate) fn allow(&self) -> Pass {
        let mut state = self.lock();
        let now = Instant::now();
        match *state {
            CircuitState::Closed => Pass::Closed,
            CircuitState::Open { until } | CircuitState::HalfOpen { since: until } if now < until => Pass::Refused,
            CircuitState::Open { .. } | CircuitState::HalfOpen { .. } => {
                *state = CircuitState::HalfOpen { since: now + self.open_for };
                Pass::Probe
            }
        }
    }

    /// Records a success; returns whether the state changed.
    pub(crate) fn success(&self) -> bool {
        self.failures.store(0, Ordering::Relaxed);
        let mut state = self.lock();
        let changed = *state != CircuitState::Closed;
        *state = CircuitState::Closed;
        changed
    }

    /// Records a failure; returns whether it opened the circuit.
    pub(crate) fn failure(&self) -> bool {
        let failures = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        let mut state = self.lock();
        let open = match *state {
            CircuitState::HalfOpen { .. } => true,
            CircuitState::Closed => failures >= self.threshold,
            CircuitState::Open { .. } => false,
        };
        if open {
            *state = CircuitState::Open { until: Instant::now() + self.open_for };
        }
        open
    }

    /// 0 closed, 1 open, 2 half-open (the `keel_inference_circuit_state` gauge, read at each
    /// scrape): an open circuit whose open period is over counts as half-open, since the next
    /// call will be its probe.
    pub(crate) fn gauge(&self) -> i64 {
        match *self.lock() {
            CircuitState::Closed => 0,
            CircuitState::Open { until } if Instant::now() < until => 1,
            CircuitState::Open { .. } | CircuitState::HalfOpen { .. } => 2,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_circuit_opens_after_the_threshold_and_probes_once() {
        let circuit = Circuit::new(&CircuitConfig { failure_threshold: 2, open_ms: 1_000 });
        assert_eq!(circuit.allow(), Pass::Closed);
        assert!(!circuit.failure());
        assert!(circuit.failure(), "the second consecutive failure opens it");
        assert_eq!((circuit.allow(), circuit.gauge()), (Pass::Refused, 1));
        tokio::time::advance(Duration::from_millis(1_001)).await;
        assert_eq!(circuit.gauge(), 2, "half-open once the open period is over, before any call");
        assert_eq!(circuit.allow(), Pass::Probe, "one probe after the open period");
        assert_eq!(circuit.gauge(), 2, "half-open while the probe is out");
        assert_eq!(circuit.allow(), Pass::Refused, "only one");
        assert!(circuit.failure(), "a failed probe opens it again");
        assert_eq!(circuit.gauge(), 1);
        tokio::time::advance(Duration::from_millis(1_001)).await;
        assert_eq!(circuit.allow(), Pass::Probe);
        assert!(circuit.success());
        assert_eq!(circuit.gauge(), 0);
        assert_eq!((circuit.allow(), circuit.allow()), (Pass::Closed, Pass::Closed));
    }
}
