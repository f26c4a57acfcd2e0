//! What a domain declares: typed jobs, their handlers, periodic schedules.

use crate::jobs::config::valid_queue_name;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

crate::define_id!(
    /// A background job: `job_…`.
    JobId,
    "job"
);

/// The queue a job goes to unless it names another.
pub const DEFAULT_QUEUE: &str = "default";

/// A kind of background job. The value itself is the payload, stored as JSON, so that a job
/// enqueued by one release can be read by the next: add fields with `#[serde(default)]`.
///
/// ```ignore
/// #[derive(Serialize, Deserialize)]
/// struct SendWelcome { user_id: UserId }
/// impl Job for SendWelcome {
///     const KIND: &'static str = "auth.send_welcome";
///     const QUEUE: &'static str = "email";
/// }
/// ```
pub trait Job: Serialize + DeserializeOwned + Send + Sync + 'static {
    /// The stable name that finds the handler; prefix it with the domain (`auth.send_welcome`).
    const KIND: &'static str;
    /// The queue it runs on; each queue has its own concurrency.
    const QUEUE: &'static str = DEFAULT_QUEUE;
    /// Attempts before the job is discarded (at least 1).
    const MAX_ATTEMPTS: u32 = 20;
}

/// How one job is enqueued, beyond its type's defaults.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EnqueueOptions {
    /// Not before this time (a scheduled job). Default: now.
    pub run_at: Option<DateTime<Utc>>,
    /// Makes the job unique: while a live (waiting, running or retrying) job has this key, another
    /// enqueue with it is a no-op answered with [`Enqueued::Duplicate`].
    pub dedupe_key: Option<String>,
    pub max_attempts: Option<u32>,
    pub queue: Option<String>,
}

impl EnqueueOptions {
    pub fn run_at(mut self, at: DateTime<Utc>) -> Self {
        self.run_at = Some(at);
        self
    }

    pub fn unique(mut self, key: impl Into<String>) -> Self {
        self.dedupe_key = Some(key.into());
        self
    }

    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = Some(attempts);
        self
    }

    pub fn queue(mut self, queue: impl Into<String>) -> Self {
        self.queue = Some(queue.into());
        self
    }
}

/// The answer to an enqueue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enqueued {
    Created(JobId),
    /// A live job already holds the dedupe key: nothing was written.
    Duplicate,
}

impl Enqueued {
    pub fn id(&self) -> Option<JobId> {
        match self {
            Self::Created(id) => Some(*id),
            Self::Duplicate => None,
        }
    }
}

/// Why a handler did not finish its job. Any error converts into a retryable failure, so `?`
/// works in handlers; [`JobError::discard`] gives up at once.
#[derive(Debug)]
pub enum JobError {
    /// Try again later: after `after` if given, otherwise after the exponential backoff.
    Retry { message: String, after: Option<Duration> },
    /// Never try again (a malformed payload, a target that no longer exists).
    Discard { message: String },
}

impl JobError {
    pub fn retry(message: impl Into<String>) -> Self {
        Self::Retry { message: message.into(), after: None }
    }

    pub fn retry_after(message: impl Into<String>, after: Duration) -> Self {
        Self::Retry { message: message.into(), after: Some(after) }
    }

    pub fn discard(message: impl Into<String>) -> Self {
        Self::Discard { message: message.into() }
    }

    pub fn message(&self) -> &str {
        match self {
            Self::Retry { message, .. } | Self::Discard { message } => message,
        }
    }
}

impl std::fmt::Display for JobError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.message())
    }
}

// Not `std::error::Error` itself, so that every error type converts (as with `anyhow::Error`).
impl<E: std::error::Error> From<E> for JobError {
    fn from(error: E) -> Self {
        Self::retry(error.to_string())
    }
}

/// What a handler knows about the attempt it runs.
#[derive(Debug, Clone)]
pub struct JobContext {
    pub id: JobId,
    pub kind: String,
    pub queue: String,
    /// 1 on the first attempt.
    pub attempt: u32,
    pub max_attempts: u32,
    pub enqueued_at: DateTime<Utc>,
    pub run_at: DateTime<Utc>,
    pub(crate) shutdown: watch::Receiver<bool>,
}

impl JobContext {
    pub fn is_last_attempt(&self) -> bool {
        self.attempt >= self.max_attempts
    }

    /// Whether the worker is shutting down: a long handler may stop early and return a retry.
    pub fn is_shutting_down(&self) -> bool {
        *self.shutdown.borrow()
    }

    /// Resolves when the worker starts shutting down.
    pub async fn shutdown_requested(&self) {
        let mut shutdown = self.shutdown.clone();
        // An error means the worker is gone, which is a shutdown too.
        let _ = shutdown.wait_for(|stop| *stop).await;
    }
}

/// Runs jobs of type `J`. Delivery is at least once: a job can run again after a crash or a
/// lost lease, so make the effect idempotent (a unique key, a conditional update).
#[async_trait]
pub trait Handler<J: Job>: Send + Sync + 'static {
    /// Runs one attempt. An error schedules a retry (or discards the job after its last
    /// attempt, or at once for [`JobError::Discard`]); a panic counts as a retryable error.
    async fn handle(&self, job: J, ctx: &JobContext) -> Result<(), JobError>;
}

/// A handler with its payload type erased, so that the registry holds handlers of all types.
#[async_trait]
pub(crate) trait ErasedHandler: Send + Sync {
    async fn run(&self, payload: &str, ctx: &JobContext) -> Result<(), JobError>;
}

struct Typed<J, H> {
    handler: H,
    _job: PhantomData<fn() -> J>,
}

#[async_trait]
impl<J: Job, H: Handler<J>> ErasedHandler for Typed<J, H> {
    async fn run(&self, payload: &str, ctx: &JobContext) -> Result<(), JobError> {
        let job: J = serde_json::from_str(payload)
            .map_err(|e| JobError::discard(format!("payload of {} does not decode: {e}", J::KIND)))?;
        self.handler.handle(job, ctx).await
    }
}

/// A periodic job: `make(tick)` is enqueued once per cron tick across all processes.
pub(crate) struct Schedule {
    pub name: String,
    pub cron: croner::Cron,
    pub kind: &'static str,
    pub queue: &'static str,
    pub max_attempts: u32,
    pub make: Box<dyn Fn(DateTime<Utc>) -> Result<String, serde_json::Error> + Send + Sync>,
}

pub(crate) struct Registered {
    pub queue: &'static str,
    pub handler: Arc<dyn ErasedHandler>,
}

/// A mistake in what a domain registers.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    #[error("job kind {0:?} is registered twice")]
    DuplicateKind(String),
    #[error("schedule {0:?} is registered twice")]
    DuplicateSchedule(String),
    #[error("invalid queue name {0:?}")]
    InvalidQueue(String),
    #[error("invalid cron expression {expression:?} for schedule {name:?}: {reason}")]
    InvalidCron { name: String, expression: String, reason: String },
}

/// The job kinds a worker runs and the periodic jobs it schedules.
#[derive(Default)]
pub struct Registry {
    pub(crate) handlers: HashMap<&'static str, Registered>,
    pub(crate) schedules: Vec<Schedule>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut kinds: Vec<_> = self.handlers.keys().collect();
        kinds.sort();
        let schedules: Vec<_> = self.schedules.iter().map(|s| &s.name).collect();
        f.debug_struct("Registry").field("kinds", &kinds).field("schedules", &schedules).finish()
    }
}

impl Registry {
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers the handler of `J`.
    pub fn register<J: Job>(&mut self, handler: impl Handler<J>) -> Result<&mut Self, RegistryError> {
        if !valid_queue_name(J::QUEUE) {
            return Err(RegistryError::InvalidQueue(J::QUEUE.into()));
        }
        if self.handlers.contains_key(J::KIND) {
            return Err(RegistryError::DuplicateKind(J::KIND.into()));
        }
        let handler = Typed { handler, _job: PhantomData::<fn() -> J> };
        self.handlers.insert(J::KIND, Registered { queue: J::QUEUE, handler: Arc::new(handler) });
        Ok(self)
    }

    /// Enqueues `make(tick)` at each tick of `cron` (UTC; 5 fields, or 6 with seconds first),
    /// exactly once per tick across every process that registers the same `name`. A tick that
    /// passes while no worker runs is not made up for later.
    pub fn periodic<J: Job>(
        &mut self,
        name: &str,
        cron: &str,
        make: impl Fn(DateTime<Utc>) -> J + Send + Sync + 'static,
    ) -> Result<&mut Self, RegistryError> {
        if self.schedules.iter().any(|s| s.name == name) {
            return Err(RegistryError::DuplicateSchedule(name.into()));
        }
        if !valid_queue_name(J::QUEUE) {
            return Err(RegistryError::InvalidQueue(J::QUEUE.into()));
        }
        let parsed = croner::parser::CronParser::builder()
            .seconds(croner::parser::Seconds::Optional)
            .build()
            .parse(cron)
            .map_err(|e| RegistryError::InvalidCron {
                name: name.into(),
                expression: cron.into(),
                reason: e.to_string(),
            })?;
        self.schedules.push(Schedule {
            name: name.into(),
            cron: parsed,
            kind: J::KIND,
            queue: J::QUEUE,
            max_attempts: J::MAX_ATTEMPTS.max(1),
            make: Box::new(move |tick| serde_json::to_string(&make(tick))),
        });
        Ok(self)
    }

    /// The queues the registered kinds run on.
    pub fn queues(&self) -> Vec<&'static str> {
        let mut queues: Vec<_> = self.handlers.values().map(|r| r.queue).collect();
        queues.sort_unstable();
        queues.dedup();
        queues
    }
}
