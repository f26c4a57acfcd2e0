//! `gateway jobs …`: the operator's view of the background job queues of the in-process
//! domains, read from each domain's own database.

use crate::compose;
use crate::config::GatewayConfig;
use crate::error::GatewayError;
use serde_json::{Value, json};
use shared::PageRequest;
use shared::jobs::{JobId, Jobs, ListState, RetryOutcome};

/// The job queue of every in-process domain.
pub async fn all(config: &GatewayConfig) -> Result<Vec<(&'static str, Jobs)>, GatewayError> {
    let mut all = Vec::new();
    for module in config.modules().iter().filter(|m| m.remote_url().is_none()) {
        let db = compose::open(config, module.as_ref()).await?;
        all.push((module.name(), Jobs::new(db.clone(), db.settings())));
    }
    Ok(all)
}

/// The job queue of one in-process domain.
pub async fn domain(config: &GatewayConfig, name: &str) -> Result<Jobs, GatewayError> {
    all(config)
        .await?
        .into_iter()
        .find(|(domain, _)| *domain == name)
        .map(|(_, jobs)| jobs)
        .ok_or_else(|| GatewayError::Jobs(format!("{name} is not an in-process domain here")))
}

fn db(domain: &'static str) -> impl Fn(shared::db::DbError) -> GatewayError {
    move |source| GatewayError::Database { domain, source }
}

/// Depth per queue and state, and the oldest ready job's age, per domain.
pub async fn stats(all: Vec<(&'static str, Jobs)>) -> Result<Value, GatewayError> {
    let mut out = serde_json::Map::new();
    for (domain, jobs) in all {
        let stats = jobs.stats().await.map_err(db(domain))?;
        let depths: Vec<Value> = stats
            .depths
            .iter()
            .map(|d| json!({"queue": d.queue, "state": d.state.as_str(), "count": d.count}))
            .collect();
        let oldest: Vec<Value> =
            stats.oldest_ready.iter().map(|o| json!({"queue": o.queue, "age_seconds": o.seconds})).collect();
        out.insert(domain.to_owned(), json!({"depths": depths, "oldest_ready": oldest}));
    }
    Ok(out.into())
}

/// One page of the jobs in `state`, without payloads.
pub async fn list(jobs: &Jobs, state: ListState, after: Option<String>) -> Result<Value, GatewayError> {
    let page = jobs.list(state, &PageRequest { limit: Some(100), after }).await.map_err(db("jobs"))?;
    let data: Vec<Value> = page
        .data
        .iter()
        .map(|j| {
            json!({
                "id": j.id.to_string(), "queue": j.queue, "kind": j.kind, "state": j.state,
                "attempt": j.attempt, "max_attempts": j.max_attempts, "run_at": j.run_at,
                "created_at": j.created_at, "dedupe_key": j.dedupe_key, "attempted_at": j.attempted_at,
                "finished_at": j.finished_at, "last_error": j.last_error,
            })
        })
        .collect();
    Ok(json!({"data": data, "has_more": page.has_more, "next_after": page.next_after}))
}

/// Puts a discarded or cancelled job back in its queue.
pub async fn retry(jobs: &Jobs, id: JobId) -> Result<Value, GatewayError> {
    let outcome = match jobs.retry(id).await.map_err(db("jobs"))? {
        RetryOutcome::Retried => json!({"outcome": "retried"}),
        RetryOutcome::NotFound => return Err(GatewayError::Jobs(format!("no job {id}"))),
        RetryOutcome::NotRetryable(state) => {
            return Err(GatewayError::Jobs(format!(
                "job {id} is {state}: only discarded or cancelled jobs are retried"
            )));
        }
        RetryOutcome::Duplicate => {
            return Err(GatewayError::Jobs(format!("a live job holds the dedupe key of job {id}")));
        }
    };
    Ok(outcome)
}
