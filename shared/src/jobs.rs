//! Durable background jobs in the database of the domain that enqueues them.
//!
//! Each domain has its own `keel_jobs` table (in its PostgreSQL schema or its SQLite file,
//! created by [`migrate`]), so a job is enqueued inside the same transaction as the business
//! write: a rolled-back transaction never runs its job. Workers claim jobs in batches under a
//! lease that a heartbeat renews; a worker that dies leaves leases that expire, and the jobs run
//! again. Every change a worker makes to a job it claimed checks the claim's lease token, so a
//! worker that lost its lease cannot overwrite the job's new state. Delivery is at least once:
//! handlers make their effects idempotent.
//!
//! ```ignore
//! // At start-up: the domain's jobs and their handlers.
//! shared::jobs::migrate(&db)?;
//! let jobs = Jobs::new(db.clone(), &settings);
//! let mut registry = Registry::new();
//! registry.register::<SendWelcome>(WelcomeSender { mailer })?;
//! let worker = Worker::start(&jobs, registry, &config.jobs, Arc::new(NoObserver))?;
//!
//! // In a service method: the job exists if and only if the user does.
//! db.transaction(move |conn| {
//!     store::insert_user(conn, &user)?;
//!     jobs.enqueue(conn, &SendWelcome { user_id })?;
//!     Ok(())
//! }).await?;
//!
//! // On SIGTERM.
//! worker.shutdown().await;
//! ```
//!
//! See `docs/JOBS.md` for the design, the guarantees and the configuration keys.

pub mod config;

#[cfg(feature = "server")]
mod backoff;
#[cfg(feature = "server")]
mod job;
#[cfg(feature = "server")]
mod queue;
#[cfg(feature = "server")]
pub mod stats;
#[cfg(feature = "server")]
mod store;
#[cfg(feature = "server")]
mod worker;

pub use config::{JobsConfig, JobsConfigError, QueueConfig};
#[cfg(feature = "server")]
pub use job::{
    DEFAULT_QUEUE, EnqueueOptions, Enqueued, Handler, Job, JobContext, JobError, JobId, Registry, RegistryError,
};
#[cfg(feature = "server")]
pub use queue::{JobSummary, Jobs, ListState, RetryOutcome, migrate};
#[cfg(feature = "server")]
pub use stats::{JobsObserver, NoObserver, Outcome, QueueStats};
#[cfg(feature = "server")]
pub use worker::{ShutdownReport, Worker, WorkerError, WorkerHandle};
