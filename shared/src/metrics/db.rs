//! Database pool metrics. Sizes (`keel_db_pool_connections`, `keel_db_pool_max_connections`) are
//! sampled from the pools at scrape time; checkouts are recorded by `shared::db` as they happen.

use super::{HistogramFamily, POOL_WAIT_BUCKETS, histogram_family};
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

/// Which of a domain's pools.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PoolRole {
    Primary,
    Replica,
}

impl PoolRole {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Primary => "primary",
            Self::Replica => "replica",
        }
    }
}

/// One pool's state at scrape time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolSample {
    pub domain: String,
    pub role: PoolRole,
    /// Open connections, idle or in use.
    pub connections: u32,
    pub idle: u32,
    pub max_size: u32,
}

/// Something that owns pools and can report their state (implemented by `shared::db::Db`).
pub trait PoolSource: Send + Sync {
    fn sample(&self, out: &mut Vec<PoolSample>);
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct PoolLabels {
    domain: String,
    pool: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct PoolStateLabels {
    domain: String,
    pool: &'static str,
    state: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct DomainLabels {
    domain: String,
}

type Sources = Arc<Mutex<Vec<Weak<dyn PoolSource>>>>;

/// `keel_db_pool_*` and `keel_db_unavailable_total`.
#[derive(Clone)]
pub struct DbMetrics {
    sources: Sources,
    waits: Family<PoolLabels, Counter>,
    wait_duration: HistogramFamily<PoolLabels>,
    unavailable: Family<DomainLabels, Counter>,
}

impl std::fmt::Debug for DbMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DbMetrics").finish_non_exhaustive()
    }
}

impl DbMetrics {
    pub(super) fn register(registry: &mut Registry) -> Self {
        let sources: Sources = Arc::default();
        let waits = Family::default();
        let wait_duration = histogram_family(|| Histogram::new(POOL_WAIT_BUCKETS.iter().copied()));
        let unavailable = Family::default();
        registry.register(
            "keel_db_pool_waits",
            "Connection checkouts that found no idle connection and had to wait for one",
            waits.clone(),
        );
        registry.register(
            "keel_db_pool_wait_duration_seconds",
            "Time spent getting a connection from the pool, for every checkout",
            wait_duration.clone(),
        );
        registry.register(
            "keel_db_unavailable",
            "Checkouts that failed: no connection within the pool's timeout, or the database refused one",
            unavailable.clone(),
        );
        registry.register_collector(Box::new(PoolCollector { sources: sources.clone() }));
        Self { sources, waits, wait_duration, unavailable }
    }

    /// The handles that record checkouts of one pool.
    pub fn pool(&self, domain: &str, role: PoolRole) -> PoolHandle {
        let labels = PoolLabels { domain: domain.to_owned(), pool: role.as_str() };
        PoolHandle {
            waits: self.waits.get_or_create_owned(&labels),
            wait_duration: self.wait_duration.get_or_create_owned(&labels),
            unavailable: self.unavailable.get_or_create_owned(&DomainLabels { domain: domain.to_owned() }),
        }
    }

    /// Samples `source` at every scrape until it is dropped.
    pub fn watch(&self, source: Weak<dyn PoolSource>) {
        self.sources.lock().unwrap_or_else(PoisonError::into_inner).push(source);
    }
}

/// Records the checkouts of one pool.
#[derive(Debug, Clone)]
pub struct PoolHandle {
    waits: Counter,
    wait_duration: Histogram,
    unavailable: Counter,
}

impl PoolHandle {
    /// One checkout: whether it had to wait (no idle connection), how long it took, and whether
    /// it got a connection.
    pub fn record_checkout(&self, waited: bool, elapsed: Duration, ok: bool) {
        if waited {
            self.waits.inc();
        }
        self.wait_duration.observe(elapsed.as_secs_f64());
        if !ok {
            self.unavailable.inc();
        }
    }
}

/// Encodes the pools' sizes at scrape time.
struct PoolCollector {
    sources: Sources,
}

impl std::fmt::Debug for PoolCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PoolCollector").finish_non_exhaustive()
    }
}

impl Collector for PoolCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut samples = Vec::new();
        {
            let mut sources = self.sources.lock().unwrap_or_else(PoisonError::into_inner);
            sources.retain(|source| match source.upgrade() {
                Some(source) => {
                    source.sample(&mut samples);
                    true
                }
                None => false,
            });
        }
        if samples.is_empty() {
            return Ok(());
        }
        let connections = Family::<PoolStateLabels, Gauge>::default();
        let max = Family::<PoolLabels, Gauge>::default();
        for sample in samples {
            let pool = sample.role.as_str();
            let idle = sample.idle.min(sample.connections);
            let state = |state| PoolStateLabels { domain: sample.domain.clone(), pool, state };
            connections.get_or_create(&state("idle")).set(i64::from(idle));
            connections.get_or_create(&state("in_use")).set(i64::from(sample.connections - idle));
            max.get_or_create(&PoolLabels { domain: sample.domain.clone(), pool }).set(i64::from(sample.max_size));
        }
        let metric = encoder.encode_descriptor(
            "keel_db_pool_connections",
            "Open connections of each pool, idle or in use, sampled at scrape time",
            None,
            MetricType::Gauge,
        )?;
        connections.encode(metric)?;
        let metric = encoder.encode_descriptor(
            "keel_db_pool_max_connections",
            "The most connections each pool may open",
            None,
            MetricType::Gauge,
        )?;
        max.encode(metric)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{BuildInfo, Format, Metrics};

    struct FixedPools(Vec<PoolSample>);

    impl PoolSource for FixedPools {
        fn sample(&self, out: &mut Vec<PoolSample>) {
            out.extend(self.0.iter().cloned());
        }
    }

    #[test]
    fn pool_sizes_are_sampled_at_scrape_time_until_the_source_is_dropped() {
        let metrics = Metrics::new(&BuildInfo { version: "0".into(), commit: "unknown".into() });
        let sample =
            |role, connections, idle| PoolSample { domain: "auth".into(), role, connections, idle, max_size: 16 };
        let pools: Arc<dyn PoolSource> =
            Arc::new(FixedPools(vec![sample(PoolRole::Primary, 5, 2), sample(PoolRole::Replica, 1, 1)]));
        metrics.db().watch(Arc::downgrade(&pools));

        let text = metrics.encode(Format::Prometheus).unwrap();
        for line in [
            "# TYPE keel_db_pool_connections gauge",
            r#"keel_db_pool_connections{domain="auth",pool="primary",state="idle"} 2"#,
            r#"keel_db_pool_connections{domain="auth",pool="primary",state="in_use"} 3"#,
            r#"keel_db_pool_connections{domain="auth",pool="replica",state="in_use"} 0"#,
            r#"keel_db_pool_max_connections{domain="auth",pool="primary"} 16"#,
        ] {
            assert!(text.contains(line), "{line:?} missing from\n{text}");
        }

        drop(pools);
        let text = metrics.encode(Format::Prometheus).unwrap();
        assert!(!text.contains("keel_db_pool_connections{"), "{text}");
    }
}
