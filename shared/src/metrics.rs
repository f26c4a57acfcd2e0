//! Prometheus metrics: one registry per process, created at start-up and passed down by value
//! (no global recorder), with a typed handle for each family of the metric-name contract
//! (`docs/OBSERVABILITY.md`).
//!
//! Built on `prometheus-client`, the Prometheus project's own Rust client: its `Registry` is a
//! plain value, its metrics are cheap atomic handles that can be cloned into the code that
//! records them, and a [`Collector`](prometheus_client::collector::Collector) can sample a value
//! at scrape time (the database pools' sizes). It encodes both the Prometheus text format
//! (0.0.4) and OpenMetrics.
//!
//! Recording into a resolved handle ([`QueueHandle`], [`CacheHandle`], [`PoolHandle`], …) is an
//! atomic add; resolve handles once (at construction) rather than per event.

mod billing;
mod cache;
mod db;
mod http;
mod inference;
mod jobs;
mod ratelimit;

pub use billing::{
    BUDGET_LIMITS, BillingMetrics, BillingOp, BillingOutcome, BillingPath, COMMIT_BATCH_BUCKETS, SliceKind,
    SliceOutcome,
};
pub use cache::{CacheHandle, CacheLayer, CacheMetrics, CacheResult};
pub use db::{DbMetrics, PoolHandle, PoolRole, PoolSample, PoolSource};
pub use http::{HttpMetrics, RecordHttpMetrics, metrics_endpoint};
pub use inference::{CacheLookups, DeploymentState, InferenceHandle, InferenceMetrics};
pub use jobs::{JobMetrics, JobOutcome, JobState, QueueHandle};
pub use ratelimit::{RateLimitHandle, RateLimitMetrics, RedisMetrics};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::sync::Arc;

/// Buckets for request-scale latencies: 0.5 ms to 10 s.
pub const LATENCY_BUCKETS: &[f64] =
    &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// Buckets for connection checkouts: most take microseconds, a starved pool waits up to its
/// `connection_timeout_ms` (5 s by default).
pub const POOL_WAIT_BUCKETS: &[f64] =
    &[0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// Buckets for job run times: 1 ms to 5 min.
pub const JOB_RUN_BUCKETS: &[f64] =
    &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0];

/// Buckets for job pickup latency (run_at or enqueue to start): 1 ms to 5 min.
pub const JOB_PICKUP_BUCKETS: &[f64] = JOB_RUN_BUCKETS;

/// A histogram family whose histograms share fixed buckets.
pub(crate) type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// What `keel_build_info` reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildInfo {
    pub version: String,
    /// The source commit, or `unknown`.
    pub commit: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct BuildLabels {
    version: String,
    commit: String,
}

/// The exposition formats `/metrics` can answer in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// The Prometheus text format, version 0.0.4 (the default).
    Prometheus,
    /// OpenMetrics 1.0 text, for scrapers that ask for it in `Accept`.
    OpenMetrics,
}

impl Format {
    /// OpenMetrics when the `Accept` header lists it, otherwise the Prometheus text format.
    pub fn from_accept(accept: Option<&str>) -> Self {
        match accept {
            Some(accept) if accept.contains("application/openmetrics-text") => Self::OpenMetrics,
            _ => Self::Prometheus,
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Self::Prometheus => prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
            Self::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        }
    }
}

/// The process's metrics. Cloning is cheap (one `Arc`); every clone records into the same
/// registry.
#[derive(Debug, Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    registry: Registry,
    http: HttpMetrics,
    db: DbMetrics,
    jobs: JobMetrics,
    cache: CacheMetrics,
    ratelimit: RateLimitMetrics,
    redis: RedisMetrics,
    inference: InferenceMetrics,
    billing: BillingMetrics,
}

impl Metrics {
    /// A registry with every family of the contract registered.
    pub fn new(build: &BuildInfo) -> Self {
        let mut registry = Registry::default();
        let http = HttpMetrics::register(&mut registry);
        let db = DbMetrics::register(&mut registry);
        let jobs = JobMetrics::register(&mut registry);
        let cache = CacheMetrics::register(&mut registry);
        let ratelimit = RateLimitMetrics::register(&mut registry);
        let redis = RedisMetrics::register(&mut registry);
        let inference = InferenceMetrics::register(&mut registry);
        let billing = BillingMetrics::register(&mut registry);

        let build_info = Family::<BuildLabels, Gauge>::default();
        build_info.get_or_create(&BuildLabels { version: build.version.clone(), commit: build.commit.clone() }).set(1);
        registry.register("keel_build_info", "The running build: its version and source commit (value 1)", build_info);

        Self { inner: Arc::new(Inner { registry, http, db, jobs, cache, ratelimit, redis, inference, billing }) }
    }

    pub fn http(&self) -> &HttpMetrics {
        &self.inner.http
    }

    pub fn db(&self) -> &DbMetrics {
        &self.inner.db
    }

    pub fn jobs(&self) -> &JobMetrics {
        &self.inner.jobs
    }

    pub fn cache(&self) -> &CacheMetrics {
        &self.inner.cache
    }

    pub fn ratelimit(&self) -> &RateLimitMetrics {
        &self.inner.ratelimit
    }

    pub fn redis(&self) -> &RedisMetrics {
        &self.inner.redis
    }

    pub fn inference(&self) -> &InferenceMetrics {
        &self.inner.inference
    }

    pub fn billing(&self) -> &BillingMetrics {
        &self.inner.billing
    }

    /// Every metric, in `format`.
    pub fn encode(&self, format: Format) -> Result<String, std::fmt::Error> {
        let mut out = String::with_capacity(8 * 1024);
        match format {
            Format::Prometheus => prometheus_client::encoding::prometheus_text::encode(&mut out, &self.inner.registry)?,
            Format::OpenMetrics => prometheus_client::encoding::text::encode(&mut out, &self.inner.registry)?,
        }
        Ok(out)
    }
}

/// A histogram family with the given fixed buckets.
pub(crate) fn histogram_family<L: Clone + std::hash::Hash + Eq>(buckets: fn() -> Histogram) -> HistogramFamily<L> {
    Family::new_with_constructor(buckets)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::time::Duration;

    fn build() -> BuildInfo {
        BuildInfo { version: "1.2.3".into(), commit: "abc123".into() }
    }

    type Series = (String, BTreeMap<String, String>, f64);

    /// Parses the Prometheus text format with a grammar-based parser: every family, label set
    /// and value (a histogram's value is its count).
    fn samples(text: &str) -> Vec<Series> {
        use openmetrics_parser::PrometheusValue;
        let exposition = openmetrics_parser::prometheus::parse_prometheus(text)
            .unwrap_or_else(|e| panic!("invalid Prometheus text: {e:?}\n{text}"));
        let mut out = Vec::new();
        for (name, family) in &exposition.families {
            for sample in family.iter_samples() {
                let labels = sample.get_labelset().unwrap().iter().map(|(k, v)| (k.clone(), v.clone())).collect();
                let value = match &sample.value {
                    PrometheusValue::Unknown(n) | PrometheusValue::Gauge(n) => n.as_f64(),
                    PrometheusValue::Counter(c) => c.value.as_f64(),
                    PrometheusValue::Histogram(h) => h.count.map_or(f64::NAN, |c| c as f64),
                    PrometheusValue::Summary(_) => f64::NAN,
                };
                out.push((name.clone(), labels, value));
            }
        }
        out
    }

    fn value(samples: &[Series], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let want: BTreeMap<String, String> = labels.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        samples.iter().find(|(n, l, _)| n == name && *l == want).map(|(_, _, v)| *v)
    }

    /// Every family of the contract, used once, then rendered and parsed back.
    #[test]
    fn every_family_renders_as_valid_prometheus_text() {
        let metrics = Metrics::new(&build());
        metrics.http().record(
            &actix_web::http::Method::GET,
            Some("/v1/things/{id}".into()),
            200,
            Duration::from_millis(3),
        );
        let pool = metrics.db().pool("auth", PoolRole::Primary);
        pool.record_checkout(true, Duration::from_micros(300), true);
        pool.record_checkout(true, Duration::from_secs(5), false);
        let queue = metrics.jobs().queue("auth", "emails");
        queue.set_depth(JobState::Ready, 7);
        queue.set_oldest_ready_age(Duration::from_millis(1500));
        queue.processed(JobOutcome::Completed);
        queue.observe_run(Duration::from_millis(20));
        queue.observe_pickup(Duration::from_millis(4));
        let cache = metrics.cache().cache("sessions");
        cache.request(CacheLayer::L1, CacheResult::Hit);
        cache.request(CacheLayer::L2, CacheResult::Miss);
        cache.load();
        cache.invalidation();
        metrics.ratelimit().class("login").record(false);
        metrics.ratelimit().set_fallback_active(true);
        metrics.redis().set_up(false);

        let text = metrics.encode(Format::Prometheus).unwrap();
        let s = samples(&text);
        let get = |name: &str, labels: &[(&str, &str)]| {
            value(&s, name, labels).unwrap_or_else(|| panic!("{name} {labels:?} missing from\n{text}"))
        };

        assert_eq!(get("keel_build_info", &[("version", "1.2.3"), ("commit", "abc123")]), 1.0);
        let http = [("method", "GET"), ("route", "/v1/things/{id}"), ("status", "200")];
        assert_eq!(get("keel_http_requests_total", &http), 1.0);
        assert_eq!(get("keel_http_request_duration_seconds", &http), 1.0);
        assert_eq!(get("keel_db_pool_waits_total", &[("domain", "auth"), ("pool", "primary")]), 2.0);
        assert_eq!(get("keel_db_pool_wait_duration_seconds", &[("domain", "auth"), ("pool", "primary")]), 2.0);
        assert_eq!(get("keel_db_unavailable_total", &[("domain", "auth")]), 1.0);
        assert_eq!(get("keel_jobs_queue_depth", &[("domain", "auth"), ("queue", "emails"), ("state", "ready")]), 7.0);
        assert_eq!(
            get("keel_jobs_queue_depth", &[("domain", "auth"), ("queue", "emails"), ("state", "discarded")]),
            0.0
        );
        assert_eq!(get("keel_jobs_oldest_ready_age_seconds", &[("domain", "auth"), ("queue", "emails")]), 1.5);
        let outcome = [("domain", "auth"), ("queue", "emails"), ("outcome", "completed")];
        assert_eq!(get("keel_jobs_processed_total", &outcome), 1.0);
        assert_eq!(get("keel_jobs_run_duration_seconds", &[("domain", "auth"), ("queue", "emails")]), 1.0);
        assert_eq!(get("keel_jobs_pickup_latency_seconds", &[("domain", "auth"), ("queue", "emails")]), 1.0);
        assert_eq!(get("keel_cache_requests_total", &[("cache", "sessions"), ("layer", "l1"), ("result", "hit")]), 1.0);
        assert_eq!(
            get("keel_cache_requests_total", &[("cache", "sessions"), ("layer", "l2"), ("result", "miss")]),
            1.0
        );
        assert_eq!(get("keel_cache_loads_total", &[("cache", "sessions")]), 1.0);
        assert_eq!(get("keel_cache_invalidations_total", &[("cache", "sessions")]), 1.0);
        assert_eq!(get("keel_ratelimit_decisions_total", &[("class", "login"), ("result", "rejected")]), 1.0);
        assert_eq!(get("keel_ratelimit_decisions_total", &[("class", "login"), ("result", "allowed")]), 0.0);
        assert_eq!(get("keel_ratelimit_fallback_active", &[]), 1.0);
        assert_eq!(get("keel_redis_up", &[]), 0.0);

        // The TYPE lines name each family with its Prometheus type.
        for (family, kind) in [
            ("keel_http_requests_total", "counter"),
            ("keel_http_request_duration_seconds", "histogram"),
            ("keel_db_pool_waits_total", "counter"),
            ("keel_db_pool_wait_duration_seconds", "histogram"),
            ("keel_db_unavailable_total", "counter"),
            ("keel_jobs_queue_depth", "gauge"),
            ("keel_jobs_oldest_ready_age_seconds", "gauge"),
            ("keel_jobs_processed_total", "counter"),
            ("keel_jobs_run_duration_seconds", "histogram"),
            ("keel_jobs_pickup_latency_seconds", "histogram"),
            ("keel_cache_requests_total", "counter"),
            ("keel_cache_loads_total", "counter"),
            ("keel_cache_invalidations_total", "counter"),
            ("keel_ratelimit_decisions_total", "counter"),
            ("keel_ratelimit_fallback_active", "gauge"),
            ("keel_redis_up", "gauge"),
            ("keel_build_info", "gauge"),
        ] {
            assert!(text.contains(&format!("# TYPE {family} {kind}\n")), "no TYPE line for {family} in\n{text}");
        }
    }

    struct State(std::sync::atomic::AtomicU32, u32, std::sync::atomic::AtomicI64);

    impl DeploymentState for State {
        fn slots(&self) -> (u32, u32) {
            (self.0.load(std::sync::atomic::Ordering::Relaxed), self.1)
        }
        fn circuit(&self) -> i64 {
            self.2.load(std::sync::atomic::Ordering::Relaxed)
        }
    }

    /// A watched deployment is sampled at each scrape, and forgotten once dropped.
    #[test]
    fn deployments_are_sampled_at_scrape_time_while_they_live() {
        use std::sync::atomic::{AtomicI64, AtomicU32, Ordering::Relaxed};
        let metrics = Metrics::new(&build());
        let text = metrics.encode(Format::Prometheus).unwrap();
        assert!(!text.contains("keel_inference_bulkhead"), "no deployment yet, no family:\n{text}");
        assert!(!text.contains("keel_inference_circuit_state"), "no deployment yet, no family:\n{text}");

        let state = Arc::new(State(AtomicU32::new(3), 8, AtomicI64::new(0)));
        let weak: std::sync::Weak<State> = Arc::downgrade(&state);
        metrics.inference().watch_deployment("gpt-4o", "openai/gpt-4o", weak);
        let labels = [("model", "gpt-4o"), ("deployment", "openai/gpt-4o")];
        let s = samples(&metrics.encode(Format::Prometheus).unwrap());
        assert_eq!(value(&s, "keel_inference_bulkhead_in_flight", &labels), Some(3.0));
        assert_eq!(value(&s, "keel_inference_bulkhead_capacity", &labels), Some(8.0));
        assert_eq!(value(&s, "keel_inference_circuit_state", &labels), Some(0.0));

        state.0.store(5, Relaxed);
        state.2.store(2, Relaxed);
        let s = samples(&metrics.encode(Format::Prometheus).unwrap());
        assert_eq!(value(&s, "keel_inference_bulkhead_in_flight", &labels), Some(5.0));
        assert_eq!(value(&s, "keel_inference_circuit_state", &labels), Some(2.0));

        drop(state);
        let text = metrics.encode(Format::Prometheus).unwrap();
        assert!(!text.contains("keel_inference_bulkhead"), "a dropped deployment is not reported:\n{text}");
        assert!(!text.contains("keel_inference_circuit_state"), "a dropped deployment is not reported:\n{text}");
    }

    /// A model's cache lookups exist at 0 once asked for, and each record moves its own series.
    #[test]
    fn cache_lookups_count_hits_and_misses_per_model() {
        let metrics = Metrics::new(&build());
        let lookups = metrics.inference().cache_lookups("gpt-4o");
        let hit = [("model", "gpt-4o"), ("result", "hit")];
        let miss = [("model", "gpt-4o"), ("result", "miss")];
        let s = samples(&metrics.encode(Format::Prometheus).unwrap());
        assert_eq!(value(&s, "keel_inference_cache_lookups_total", &hit), Some(0.0));
        assert_eq!(value(&s, "keel_inference_cache_lookups_total", &miss), Some(0.0));
        lookups.record(false);
        lookups.record(true);
        lookups.record(true);
        let s = samples(&metrics.encode(Format::Prometheus).unwrap());
        assert_eq!(value(&s, "keel_inference_cache_lookups_total", &hit), Some(2.0));
        assert_eq!(value(&s, "keel_inference_cache_lookups_total", &miss), Some(1.0));
    }

    /// Every `keel_billing_*` series exists at 0 before anything is recorded, and each record
    /// moves its own series only.
    #[test]
    fn billing_series_exist_at_zero_and_move_one_by_one() {
        let metrics = Metrics::new(&build());
        let text = metrics.encode(Format::Prometheus).unwrap();
        let s = samples(&text);
        let get = |s: &[Series], name: &str, labels: &[(&str, &str)]| {
            value(s, name, labels).unwrap_or_else(|| panic!("{name} {labels:?} missing from\n{text}"))
        };
        for op in ["reserve", "settle", "release"] {
            for path in ["leased", "direct"] {
                for outcome in ["ok", "budget_exceeded", "error"] {
                    let labels = [("op", op), ("path", path), ("outcome", outcome)];
                    assert_eq!(get(&s, "keel_billing_decisions_total", &labels), 0.0);
                }
            }
        }
        for limit in BUDGET_LIMITS {
            assert_eq!(get(&s, "keel_billing_budget_exceeded_total", &[("limit", limit)]), 0.0);
        }
        for kind in ["open", "topup"] {
            for outcome in ["granted", "refused", "error"] {
                assert_eq!(get(&s, "keel_billing_lease_slices_total", &[("kind", kind), ("outcome", outcome)]), 0.0);
            }
        }
        for (name, labels) in [
            ("keel_billing_leases", &[][..]),
            ("keel_billing_leased_credit_nanos", &[]),
            ("keel_billing_lease_commits_total", &[("outcome", "ok")]),
            ("keel_billing_lease_commits_total", &[("outcome", "error")]),
            ("keel_billing_lease_commit_batch_size", &[]),
            ("keel_billing_lease_commit_duration_seconds", &[]),
            ("keel_billing_settlements_unflushed", &[]),
            ("keel_billing_usage_unrecorded_total", &[]),
            ("keel_billing_holds_expired_total", &[("kind", "hold")]),
            ("keel_billing_holds_expired_total", &[("kind", "lease")]),
            ("keel_billing_invoices_finalized_total", &[]),
        ] {
            assert_eq!(get(&s, name, labels), 0.0, "{name} {labels:?}");
        }

        let billing = metrics.billing();
        billing.decision(BillingOp::Reserve, BillingPath::Leased, BillingOutcome::Ok);
        billing.decision(BillingOp::Reserve, BillingPath::Direct, BillingOutcome::BudgetExceeded);
        billing.budget_exceeded("api_key_budget");
        billing.budget_exceeded("not a limit");
        billing.slice(SliceKind::TopUp, SliceOutcome::Refused);
        billing.acknowledged();
        billing.acknowledged();
        billing.flushed(1);
        billing.commit(true, 1, Duration::from_millis(2));
        billing.set_leases(2, 5_000_000);
        billing.expired(true);
        billing.invoices_finalized(3);
        let text = metrics.encode(Format::Prometheus).unwrap();
        let s = samples(&text);
        let decision = |op, path, outcome| {
            value(&s, "keel_billing_decisions_total", &[("op", op), ("path", path), ("outcome", outcome)]).unwrap()
        };
        assert_eq!(decision("reserve", "leased", "ok"), 1.0);
        assert_eq!(decision("reserve", "direct", "budget_exceeded"), 1.0);
        assert_eq!(decision("reserve", "direct", "ok"), 0.0);
        assert_eq!(decision("settle", "leased", "ok"), 0.0);
        assert_eq!(get(&s, "keel_billing_budget_exceeded_total", &[("limit", "api_key_budget")]), 1.0);
        assert_eq!(get(&s, "keel_billing_budget_exceeded_total", &[("limit", "credit")]), 0.0);
        assert_eq!(get(&s, "keel_billing_lease_slices_total", &[("kind", "topup"), ("outcome", "refused")]), 1.0);
        assert_eq!(get(&s, "keel_billing_settlements_unflushed", &[]), 1.0);
        assert_eq!(get(&s, "keel_billing_lease_commits_total", &[("outcome", "ok")]), 1.0);
        assert_eq!(get(&s, "keel_billing_lease_commit_batch_size", &[]), 1.0);
        assert_eq!(get(&s, "keel_billing_leases", &[]), 2.0);
        assert_eq!(get(&s, "keel_billing_leased_credit_nanos", &[]), 5_000_000.0);
        assert_eq!(get(&s, "keel_billing_holds_expired_total", &[("kind", "lease")]), 1.0);
        assert_eq!(get(&s, "keel_billing_holds_expired_total", &[("kind", "hold")]), 0.0);
        assert_eq!(get(&s, "keel_billing_invoices_finalized_total", &[]), 3.0);
    }

    #[test]
    fn histograms_use_the_documented_buckets() {
        let metrics = Metrics::new(&build());
        metrics.http().record(&actix_web::http::Method::POST, None, 503, Duration::from_micros(700));
        let text = metrics.encode(Format::Prometheus).unwrap();
        let labels = r#"method="POST",route="unmatched",status="503""#;
        for (le, count) in [("0.0005", 0), ("0.001", 1), ("10", 1), ("+Inf", 1)] {
            let line = format!("keel_http_request_duration_seconds_bucket{{{labels},le=\"{le}\"}} {count}");
            assert!(text.contains(&line), "{line} missing from\n{text}");
        }
    }

    #[test]
    fn openmetrics_is_served_on_request_and_ends_with_eof() {
        let metrics = Metrics::new(&build());
        let text = metrics.encode(Format::OpenMetrics).unwrap();
        assert!(text.ends_with("# EOF\n"), "{text}");
        assert!(text.contains("keel_build_info{"), "{text}");
        assert_eq!(Format::from_accept(None), Format::Prometheus);
        assert_eq!(Format::from_accept(Some("text/plain")), Format::Prometheus);
        let prometheus_accept =
            "application/openmetrics-text;version=1.0.0;q=0.5,text/plain;version=0.0.4;q=0.3,*/*;q=0.1";
        assert_eq!(Format::from_accept(Some(prometheus_accept)), Format::OpenMetrics);
        assert_eq!(Format::Prometheus.content_type(), "text/plain; version=0.0.4; charset=utf-8");
    }
}
