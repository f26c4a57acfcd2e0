//! What the platform reports in `/metrics` beyond the requests themselves: the job workers'
//! events, and a sampler for the values that are states rather than events (queue depths,
//! Redis up, the rate limiter's fallback).

use shared::jobs::stats::DepthState;
use shared::jobs::{Jobs, JobsObserver, Outcome};
use shared::metrics::{JobOutcome, JobState, Metrics};
use shared::ratelimit::Fallback;
use shared::redis::Redis;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

/// Records the workers' events in `keel_jobs_*`.
#[derive(Debug, Clone)]
pub struct JobsMetrics(pub Metrics);

impl JobsObserver for JobsMetrics {
    fn processed(&self, domain: &str, queue: &str, outcome: Outcome) {
        let outcome = match outcome {
            Outcome::Completed => JobOutcome::Completed,
            Outcome::Retried => JobOutcome::Retried,
            Outcome::Discarded => JobOutcome::Discarded,
        };
        self.0.jobs().queue(domain, queue).processed(outcome);
    }

    fn run_duration(&self, domain: &str, queue: &str, seconds: f64) {
        self.0.jobs().queue(domain, queue).observe_run(Duration::from_secs_f64(seconds.max(0.0)));
    }

    fn pickup_latency(&self, domain: &str, queue: &str, seconds: f64) {
        self.0.jobs().queue(domain, queue).observe_pickup(Duration::from_secs_f64(seconds.max(0.0)));
    }
}

/// How often the sampler reads the cheap states (Redis, the fallback flag) ...
const SAMPLE_EVERY: Duration = Duration::from_secs(1);
/// ... and the queue tables (one query per domain).
const QUEUES_EVERY: u32 = 10;

/// Starts the sampler in the current runtime; it stops when the handle is aborted.
pub fn spawn_sampler(
    metrics: Metrics,
    redis: Option<Redis>,
    fallback: Option<Arc<Fallback>>,
    queues: Vec<Jobs>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(SAMPLE_EVERY);
        let mut round = 0u32;
        // Every (domain, queue) seen, so that a queue that emptied reports 0, not its last depth.
        let mut seen: BTreeSet<(String, String)> = BTreeSet::new();
        loop {
            tick.tick().await;
            if let Some(redis) = &redis {
                metrics.redis().set_up(redis.is_up());
            }
            // Whether decisions fall back to the process now: while Redis is down (the limiter's
            // own flag only changes at its next decision, and would stay set after Redis is back).
            if let (Some(redis), Some(_)) = (&redis, &fallback) {
                metrics.ratelimit().set_fallback_active(!redis.is_up());
            }
            if round.is_multiple_of(QUEUES_EVERY) {
                for jobs in &queues {
                    sample_queues(&metrics, jobs, &mut seen).await;
                }
            }
            round = round.wrapping_add(1);
        }
    })
}

async fn sample_queues(metrics: &Metrics, jobs: &Jobs, seen: &mut BTreeSet<(String, String)>) {
    let stats = match jobs.stats().await {
        Ok(stats) => stats,
        Err(error) => {
            tracing::debug!(error.cause = %error, "cannot sample the job queues");
            return;
        }
    };
    for depth in &stats.depths {
        seen.insert((stats.domain.clone(), depth.queue.clone()));
    }
    for (domain, queue) in seen.iter().filter(|(domain, _)| *domain == stats.domain) {
        let handle = metrics.jobs().queue(domain, queue);
        for state in JobState::ALL {
            let count: u64 = stats
                .depths
                .iter()
                .filter(|d| d.queue == *queue && gauge_state(d.state) == Some(state))
                .map(|d| d.count)
                .sum();
            handle.set_depth(state, i64::try_from(count).unwrap_or(i64::MAX));
        }
        let age = stats.oldest_ready.iter().find(|o| o.queue == *queue).map_or(0.0, |o| o.seconds);
        handle.set_oldest_ready_age(Duration::from_secs_f64(age.max(0.0)));
    }
}

/// The gauge's state for a queue state; cancelled jobs are not a depth anyone scales on.
fn gauge_state(state: DepthState) -> Option<JobState> {
    match state {
        DepthState::Ready => Some(JobState::Ready),
        DepthState::Scheduled => Some(JobState::Scheduled),
        DepthState::Running => Some(JobState::Running),
        DepthState::Failed => Some(JobState::Failed),
        DepthState::Discarded => Some(JobState::Discarded),
        DepthState::Cancelled => None,
    }
}
