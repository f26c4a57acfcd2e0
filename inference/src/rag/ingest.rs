//! Ingestion, in steps, each a durable job of queue `inference`:
//!
//! 1. prepare (`inference.ingest_file`, enqueued in the attach transaction): parse and chunk, or
//!    copy the chunks of an identical completed ingestion of the organization (same content
//!    hash, chunking and embedder); stage them in `rag_staged_chunks` (not searchable, in no
//!    index, no change row) and enqueue an embed job per batch of `rag.embedding_batch_size`
//!    chunks, or the index step directly when there is nothing to embed (keyword only, or copied
//!    vectors);
//! 2. embed (`inference.embed_file_batch`, one job per batch): embed the batch's staged chunks,
//!    billed under a key derived from the attachment, its content hash and the batch, so that a
//!    re-run is not charged twice; write their vectors; the job that leaves no staged chunk
//!    without a vector enqueues the index step;
//! 3. index (`inference.index_file`): in one transaction, move the staged chunks to
//!    `rag_chunks`, set the attachment `completed` with its usage and log the change row that
//!    every process's index follows.
//!
//! A step's work is written in a transaction whose first statement holds the attachment's row
//! if, and only if, it is still the same attachment in progress ([`store::hold_in_progress`]).
//! So steps of one ingestion that write at the same moment take turns and each sees what the
//! other committed: the last embed job to commit is the one that finds nothing left to embed.
//! A detached, deleted, failed (or cancelled) attachment makes every later step a no-op; its
//! staged chunks go with the attachment's row (a foreign key), or with the failure. A step
//! delivered twice finds its work done (chunks staged, vectors written, attachment completed)
//! and does nothing, and a worker killed between steps leaves the next step's job queued in the
//! same commit as the step's work; so one set of chunks and one completion, whatever happens.
//!
//! A file that cannot be read (unknown format, corrupt) or embedded (quota, wrong dimensions)
//! fails with a `last_error` at once; a failure that may pass is retried with the jobs' backoff
//! and fails the file with `server_error` on the last attempt. The worker itself never fails.
//! Each step logs its start and end; the OpenAI file object has no progress field, so the wire
//! shows `in_progress` until the index step.

mod embed;
mod prepare;
mod publish;

use super::service::{Inner, RagService};
use super::store::{self, Fail, StoreFileRow};
use crate::error::InferenceError;
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use shared::db::{Conn, DbError};
use shared::jobs::{EnqueueOptions, Handler, Job, JobContext, JobError, Jobs, Registry, RegistryError};

/// The prepare step of one file attached to one store (the job's name predates the steps).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IngestFile {
    pub vector_store_id: String,
    pub file_id: String,
}

impl IngestFile {
    pub(crate) fn of(row: &StoreFileRow) -> Self {
        Self { vector_store_id: row.vector_store_id.clone(), file_id: row.file_id.clone() }
    }
}

impl Job for IngestFile {
    const KIND: &'static str = "inference.ingest_file";
    const QUEUE: &'static str = "inference";
    const MAX_ATTEMPTS: u32 = 8;
}

/// The embed step of one batch of an attachment's staged chunks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EmbedBatch {
    pub vector_store_id: String,
    pub file_id: String,
    /// The attachment's `created_at`: a job of an earlier attachment of the same file is a no-op.
    pub attached_at: i64,
    pub content_hash: String,
    pub batch: i32,
}

impl Job for EmbedBatch {
    const KIND: &'static str = "inference.embed_file_batch";
    const QUEUE: &'static str = "inference";
    const MAX_ATTEMPTS: u32 = 8;
}

/// The index step: the staged chunks go live and the attachment completes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexFile {
    pub vector_store_id: String,
    pub file_id: String,
    pub attached_at: i64,
    pub content_hash: String,
    /// The embedder of the staged vectors (None: keyword only).
    pub embedding_model: Option<String>,
}

impl Job for IndexFile {
    const KIND: &'static str = "inference.index_file";
    const QUEUE: &'static str = "inference";
    const MAX_ATTEMPTS: u32 = 8;
}

impl EmbedBatch {
    /// Enqueues the job once: a live job of the same batch makes this a no-op.
    fn enqueue(&self, jobs: &Jobs, conn: &mut Conn) -> Result<(), DbError> {
        let key = format!("rag-embed/{}/{}/{}/{}", self.vector_store_id, self.file_id, self.attached_at, self.batch);
        jobs.enqueue_with(conn, self, EnqueueOptions::default().unique(key)).map(drop)
    }
}

impl IndexFile {
    /// Enqueues the job once: a live index job of the attachment makes this a no-op.
    fn enqueue(&self, jobs: &Jobs, conn: &mut Conn) -> Result<(), DbError> {
        let key = format!("rag-index/{}/{}/{}", self.vector_store_id, self.file_id, self.attached_at);
        jobs.enqueue_with(conn, self, EnqueueOptions::default().unique(key)).map(drop)
    }
}

/// OpenAI's `last_error.code`s.
const UNSUPPORTED: &str = "unsupported_file";
const INVALID: &str = "invalid_file";
const SERVER_ERROR: &str = "server_error";

/// What a failed step means for the file.
enum Outcome {
    /// The file is done for (a `last_error`), whatever attempt this is.
    Fail(&'static str, String),
    /// Worth another attempt; on the last one the file fails with `server_error`.
    Retry(InferenceError),
}

impl From<InferenceError> for Outcome {
    fn from(e: InferenceError) -> Self {
        match e {
            InferenceError::Unavailable(_)
            | InferenceError::Internal(_)
            | InferenceError::Upstream(_)
            | InferenceError::UpstreamTimeout(_)
            | InferenceError::Overloaded { .. }
            | InferenceError::RateLimited { .. } => Self::Retry(e),
            InferenceError::InsufficientQuota => {
                Self::Fail(SERVER_ERROR, "The organization's quota does not cover the file's embeddings.".into())
            }
            other => Self::Fail(SERVER_ERROR, format!("The file could not be embedded: {other}")),
        }
    }
}

/// One handler for the three steps.
struct Steps(RagService);

#[async_trait]
impl Handler<IngestFile> for Steps {
    async fn handle(&self, job: IngestFile, ctx: &JobContext) -> Result<(), JobError> {
        let inner = &self.0.inner;
        let result = prepare::run(inner, &job).await.map(drop);
        settle(inner, &job.vector_store_id, &job.file_id, None, result, ctx.is_last_attempt()).await
    }
}

#[async_trait]
impl Handler<EmbedBatch> for Steps {
    async fn handle(&self, job: EmbedBatch, ctx: &JobContext) -> Result<(), JobError> {
        let inner = &self.0.inner;
        let result = embed::run(inner, &job).await;
        settle(inner, &job.vector_store_id, &job.file_id, Some(job.attached_at), result, ctx.is_last_attempt()).await
    }
}

#[async_trait]
impl Handler<IndexFile> for Steps {
    async fn handle(&self, job: IndexFile, ctx: &JobContext) -> Result<(), JobError> {
        let inner = &self.0.inner;
        let result = publish::run(inner, &job).await;
        settle(inner, &job.vector_store_id, &job.file_id, Some(job.attached_at), result, ctx.is_last_attempt()).await
    }
}

/// The domain's ingestion handlers.
pub(crate) fn registry(service: &RagService) -> Result<Registry, RegistryError> {
    let mut registry = Registry::new();
    registry.register::<IngestFile>(Steps(service.clone()))?;
    registry.register::<EmbedBatch>(Steps(service.clone()))?;
    registry.register::<IndexFile>(Steps(service.clone()))?;
    Ok(registry)
}

/// What a step's result means for its job: done (the file may have failed for good), or
/// another attempt. `attached_at`: the attachment the step belongs to, when the job names it.
async fn settle(
    inner: &Inner,
    store_id: &str,
    file_id: &str,
    attached_at: Option<i64>,
    result: Result<(), Outcome>,
    last_attempt: bool,
) -> Result<(), JobError> {
    match finish(inner, store_id, file_id, attached_at, result, last_attempt).await {
        Ok(()) => Ok(()),
        Err(e) => {
            tracing::warn!(rag.store = %store_id, rag.file = %file_id, error = %e, "ingestion step will be retried");
            Err(JobError::retry(e.to_string()))
        }
    }
}

/// Fails the file (only the attachment `attached_at`, when given) on a permanent failure, or a
/// retryable one on the last attempt; returns the error that asks for another attempt.
async fn finish(
    inner: &Inner,
    store_id: &str,
    file_id: &str,
    attached_at: Option<i64>,
    result: Result<(), Outcome>,
    last_attempt: bool,
) -> Result<(), InferenceError> {
    let (code, message) = match result {
        Ok(()) => return Ok(()),
        Err(Outcome::Fail(code, message)) => (code, message),
        Err(Outcome::Retry(e)) if !last_attempt => return Err(e),
        Err(Outcome::Retry(e)) => (SERVER_ERROR, format!("The file could not be ingested: {e}")),
    };
    tracing::info!(rag.store = %store_id, rag.file = %file_id, rag.error = code, rag.reason = %message, "file ingestion failed");
    let (s, f) = (store_id.to_owned(), file_id.to_owned());
    store::transaction(&inner.db, move |conn| {
        if store::fail_store_file(conn, &s, &f, attached_at, code, &message)? {
            store::delete_staged(conn, &s, &f)?;
        }
        Ok::<_, Fail>(())
    })
    .await
}

/// Deletes the staged chunks of an attachment that is no longer in progress (failed, or
/// cancelled: a detached or deleted one took them with its row). A step that finds its
/// attachment so calls it, so that none linger.
async fn abandon(inner: &Inner, store_id: &str, file_id: &str) -> Result<(), InferenceError> {
    let (s, f) = (store_id.to_owned(), file_id.to_owned());
    let deleted = store::transaction(&inner.db, move |conn| match store::find_store_file(conn, &s, &f)? {
        Some(row) if row.status == store::IN_PROGRESS => Ok::<_, Fail>(0),
        _ => Ok(store::delete_staged(conn, &s, &f)?),
    })
    .await?;
    if deleted > 0 {
        tracing::info!(rag.chunks = deleted, "staged chunks of an attachment no longer in progress deleted");
    }
    Ok(())
}

/// Runs the whole ingestion of `(store, file)` now, step after step, as its jobs would
/// (idempotent: the queued jobs find the work done). `last_attempt`: a retryable failure fails
/// the file instead of returning.
pub(crate) async fn run(
    inner: &Inner,
    store_id: &str,
    file_id: &str,
    last_attempt: bool,
) -> Result<(), InferenceError> {
    let job = IngestFile { vector_store_id: store_id.to_owned(), file_id: file_id.to_owned() };
    let result = steps(inner, &job).await;
    finish(inner, store_id, file_id, None, result, last_attempt).await
}

async fn steps(inner: &Inner, job: &IngestFile) -> Result<(), Outcome> {
    let Some(next) = prepare::run(inner, job).await? else { return Ok(()) };
    for batch in &next.batches {
        embed::run(inner, batch).await?;
    }
    // Every batch has its vectors now (embedded here or by its job): the index step is due,
    // whoever enqueued it.
    publish::run(inner, &next.index).await
}
