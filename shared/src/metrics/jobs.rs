//! Background job metrics, per domain and queue.

use super::{HistogramFamily, JOB_PICKUP_BUCKETS, JOB_RUN_BUCKETS, histogram_family};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

/// The states a queue's depth is reported in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum JobState {
    Ready,
    Scheduled,
    Running,
    Failed,
    Discarded,
}

impl JobState {
    pub const ALL: [Self; 5] = [Self::Ready, Self::Scheduled, Self::Running, Self::Failed, Self::Discarded];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ready => "ready",
            Self::Scheduled => "scheduled",
            Self::Running => "running",
            Self::Failed => "failed",
            Self::Discarded => "discarded",
        }
    }
}

/// How a run of a job ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum JobOutcome {
    Completed,
    /// Failed, and will run again after a backoff.
    Retried,
    /// Failed its last attempt.
    Discarded,
}

impl JobOutcome {
    pub const ALL: [Self; 3] = [Self::Completed, Self::Retried, Self::Discarded];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Completed => "completed",
            Self::Retried => "retried",
            Self::Discarded => "discarded",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct QueueLabels {
    domain: String,
    queue: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct QueueStateLabels {
    domain: String,
    queue: String,
    state: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct QueueOutcomeLabels {
    domain: String,
    queue: String,
    outcome: &'static str,
}

type SecondsGauge = Gauge<f64, AtomicU64>;

/// `keel_jobs_*`.
#[derive(Debug, Clone)]
pub struct JobMetrics {
    depth: Family<QueueStateLabels, Gauge>,
    oldest_ready_age: Family<QueueLabels, SecondsGauge>,
    processed: Family<QueueOutcomeLabels, Counter>,
    run_duration: HistogramFamily<QueueLabels>,
    pickup_latency: HistogramFamily<QueueLabels>,
}

impl JobMetrics {
    pub(super) fn register(registry: &mut Registry) -> Self {
        let depth = Family::default();
        let oldest_ready_age = Family::default();
        let processed = Family::default();
        let run_duration = histogram_family(|| Histogram::new(JOB_RUN_BUCKETS.iter().copied()));
        let pickup_latency = histogram_family(|| Histogram::new(JOB_PICKUP_BUCKETS.iter().copied()));
        registry.register("keel_jobs_queue_depth", "Jobs in each queue, by state", depth.clone());
        registry.register(
            "keel_jobs_oldest_ready_age_seconds",
            "How long the oldest ready job of each queue has been waiting to start",
            oldest_ready_age.clone(),
        );
        registry.register("keel_jobs_processed", "Job runs finished, by outcome", processed.clone());
        registry.register("keel_jobs_run_duration_seconds", "Time a job's handler ran", run_duration.clone());
        registry.register(
            "keel_jobs_pickup_latency_seconds",
            "Time from a job becoming due (run_at, or enqueue) to a worker starting it",
            pickup_latency.clone(),
        );
        Self { depth, oldest_ready_age, processed, run_duration, pickup_latency }
    }

    /// The handles of one queue. Every state and outcome series exists from then on, at 0.
    pub fn queue(&self, domain: &str, queue: &str) -> QueueHandle {
        let labels = QueueLabels { domain: domain.to_owned(), queue: queue.to_owned() };
        let depth = JobState::ALL.map(|state| {
            self.depth.get_or_create_owned(&QueueStateLabels {
                domain: domain.to_owned(),
                queue: queue.to_owned(),
                state: state.as_str(),
            })
        });
        let processed = JobOutcome::ALL.map(|outcome| {
            self.processed.get_or_create_owned(&QueueOutcomeLabels {
                domain: domain.to_owned(),
                queue: queue.to_owned(),
                outcome: outcome.as_str(),
            })
        });
        QueueHandle {
            depth,
            oldest_ready_age: self.oldest_ready_age.get_or_create_owned(&labels),
            processed,
            run_duration: self.run_duration.get_or_create_owned(&labels),
            pickup_latency: self.pickup_latency.get_or_create_owned(&labels),
        }
    }
}

/// Records into one queue's series.
#[derive(Debug, Clone)]
pub struct QueueHandle {
    depth: [Gauge; 5],
    oldest_ready_age: SecondsGauge,
    processed: [Counter; 3],
    run_duration: Histogram,
    pickup_latency: Histogram,
}

impl QueueHandle {
    /// How many jobs are in `state` (a count sampled from the queue's table).
    pub fn set_depth(&self, state: JobState, jobs: i64) {
        self.depth[state as usize].set(jobs);
    }

    /// The age of the oldest ready job; zero when none is ready.
    pub fn set_oldest_ready_age(&self, age: Duration) {
        self.oldest_ready_age.set(age.as_secs_f64());
    }

    pub fn processed(&self, outcome: JobOutcome) {
        self.processed[outcome as usize].inc();
    }

    pub fn observe_run(&self, duration: Duration) {
        self.run_duration.observe(duration.as_secs_f64());
    }

    pub fn observe_pickup(&self, latency: Duration) {
        self.pickup_latency.observe(latency.as_secs_f64());
    }
}
