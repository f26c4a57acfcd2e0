//! The numbers behind the jobs metrics. Workers report events to a [`JobsObserver`]; gauges
//! (queue depth, oldest ready age) are read on demand with [`crate::jobs::Jobs::stats`].
//!
//! | Metric | Source |
//! | --- | --- |
//! | `keel_jobs_processed_total{domain,queue,outcome}` | [`JobsObserver::processed`] |
//! | `keel_jobs_run_duration_seconds{domain,queue}` | [`JobsObserver::run_duration`] |
//! | `keel_jobs_pickup_latency_seconds{domain,queue}` | [`JobsObserver::pickup_latency`] |
//! | `keel_jobs_queue_depth{domain,queue,state}` | [`QueueStats::depths`] |
//! | `keel_jobs_oldest_ready_age_seconds{domain,queue}` | [`QueueStats::oldest_ready`] |

use chrono::{DateTime, Utc};

/// How an attempt ended, as counted by `keel_jobs_processed_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    Completed,
    /// Failed; another attempt is scheduled.
    Retried,
    /// Failed for good: out of attempts, or refused by its handler.
    Discarded,
}

impl Outcome {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Completed => "completed",
            Self::Retried => "retried",
            Self::Discarded => "discarded",
        }
    }
}

/// Receives the worker's events; connect it to the metrics registry. Every method has an empty
/// default, so an implementation takes only what it needs. Calls come from async tasks: keep them
/// cheap and non-blocking.
pub trait JobsObserver: Send + Sync + std::fmt::Debug {
    /// An attempt's outcome was recorded. Jobs whose lease expired count here too, as seen by the
    /// worker that found them.
    fn processed(&self, _domain: &str, _queue: &str, _outcome: Outcome) {}
    /// A handler ran for `seconds`.
    fn run_duration(&self, _domain: &str, _queue: &str, _seconds: f64) {}
    /// From the later of `run_at` and the enqueue time to the start of the attempt.
    fn pickup_latency(&self, _domain: &str, _queue: &str, _seconds: f64) {}
    /// A scheduler handled `tick` of a periodic job; `enqueued` is false when another process
    /// had already enqueued it.
    fn schedule_fired(&self, _domain: &str, _schedule: &str, _tick: DateTime<Utc>, _enqueued: bool) {}
}

/// The observer of a worker whose events nobody collects.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoObserver;

impl JobsObserver for NoObserver {}

/// A queue state as the `keel_jobs_queue_depth` gauge labels it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DepthState {
    /// Due now, waiting for a worker.
    Ready,
    /// Waiting for its `run_at`.
    Scheduled,
    Running,
    /// Failed at least once, waiting for its retry.
    Failed,
    Discarded,
    Cancelled,
}

impl DepthState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ready => "ready",
            Self::Scheduled => "scheduled",
            Self::Running => "running",
            Self::Failed => "failed",
            Self::Discarded => "discarded",
            Self::Cancelled => "cancelled",
        }
    }

    pub(crate) fn parse(state: &str) -> Option<Self> {
        Some(match state {
            "ready" => Self::Ready,
            "scheduled" => Self::Scheduled,
            "running" => Self::Running,
            "failed" => Self::Failed,
            "discarded" => Self::Discarded,
            "cancelled" => Self::Cancelled,
            _ => return None,
        })
    }
}

/// Jobs of one queue in one state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueDepth {
    pub queue: String,
    pub state: DepthState,
    pub count: u64,
}

/// How long the oldest due job of a queue has waited.
#[derive(Debug, Clone, PartialEq)]
pub struct OldestReady {
    pub queue: String,
    pub seconds: f64,
}

/// A snapshot of a domain's queues, for the gauges.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueStats {
    pub domain: String,
    /// Only the (queue, state) pairs that have jobs; a missing pair is 0.
    pub depths: Vec<QueueDepth>,
    /// Only the queues that have due jobs; a missing queue is 0.
    pub oldest_ready: Vec<OldestReady>,
}
