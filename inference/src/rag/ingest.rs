//! Ingestion, a durable job per attachment (`inference.ingest_file`, queue `inference`):
//! parse → chunk → embed in batches → write the chunks, the attachment's `completed` and a
//! change row in one transaction.
//!
//! Idempotent: nothing is written before that one transaction, whose first statement is a
//! conditional update of the attachment from `in_progress`, and chunks are unique per
//! (store, file, ordinal); so a worker killed mid-way, or a job delivered twice, leaves exactly
//! one set of chunks. Embeddings are billed under keys derived from the attachment, its content
//! hash and the batch, so a re-run is not charged twice. An identical ingestion already done in
//! the organization (same content hash, chunking and embedder) is copied, not redone.
//!
//! A file that cannot be read (unknown format, corrupt) fails with a `last_error`; it never
//! fails the worker.

use super::embedder::{Embedder, to_bytes};
use super::service::{Inner, RagService};
use super::store::{self, ChunkRow, Fail, StoreFileRow};
use crate::error::InferenceError;
use crate::service::Payer;
use async_trait::async_trait;
use search::{ChunkingStrategy, ContentHash, SearchError, StaticChunking};
use serde::{Deserialize, Serialize};
use shared::jobs::{Handler, Job, JobContext, JobError, Registry, RegistryError};

/// Ingests one file attached to one store.
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

/// OpenAI's `last_error.code`s.
const UNSUPPORTED: &str = "unsupported_file";
const INVALID: &str = "invalid_file";
const SERVER_ERROR: &str = "server_error";

struct Ingester(RagService);

#[async_trait]
impl Handler<IngestFile> for Ingester {
    async fn handle(&self, job: IngestFile, ctx: &JobContext) -> Result<(), JobError> {
        let last_attempt = ctx.attempt >= ctx.max_attempts;
        match run(&self.0.inner, &job.vector_store_id, &job.file_id, last_attempt).await {
            Ok(()) => Ok(()),
            Err(e) => {
                tracing::warn!(rag.store = %job.vector_store_id, rag.file = %job.file_id, error = %e, "ingestion will be retried");
                Err(JobError::retry(e.to_string()))
            }
        }
    }
}

/// The domain's job handlers.
pub(crate) fn registry(service: &RagService) -> Result<Registry, RegistryError> {
    let mut registry = Registry::new();
    registry.register::<IngestFile>(Ingester(service.clone()))?;
    Ok(registry)
}

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

/// Runs the ingestion of `(store, file)` if it is still in progress. `last_attempt`: a
/// retryable failure fails the file instead of asking for another attempt.
#[tracing::instrument(skip_all, fields(rag.store = %store_id, rag.file = %file_id))]
pub(crate) async fn run(
    inner: &Inner,
    store_id: &str,
    file_id: &str,
    last_attempt: bool,
) -> Result<(), InferenceError> {
    let (s, f) = (store_id.to_owned(), file_id.to_owned());
    let loaded = store::run(&inner.db, move |conn| {
        let Some(row) = store::find_store_file(conn, &s, &f)? else { return Ok(None) };
        if row.status != store::IN_PROGRESS {
            return Ok(None);
        }
        let content = store::file_content(conn, &row.organization_id, &f)?;
        Ok::<_, Fail>(content.map(|c| (row, c)))
    })
    .await?;
    // Detached, deleted, or done already (a second delivery).
    let Some((row, (meta, bytes))) = loaded else { return Ok(()) };
    let outcome = match ingest(inner, &row, &meta.filename, meta.content_type.as_deref(), bytes).await {
        Ok(()) => return Ok(()),
        Err(outcome) => outcome,
    };
    let (code, message) = match outcome {
        Outcome::Fail(code, message) => (code, message),
        Outcome::Retry(e) if !last_attempt => return Err(e),
        Outcome::Retry(e) => (SERVER_ERROR, format!("The file could not be ingested: {e}")),
    };
    tracing::info!(rag.error = code, rag.reason = %message, "file ingestion failed");
    let (s, f) = (store_id.to_owned(), file_id.to_owned());
    store::run(&inner.db, move |conn| store::fail_store_file(conn, &s, &f, code, &message).map_err(Fail::from)).await?;
    Ok(())
}

async fn ingest(
    inner: &Inner,
    row: &StoreFileRow,
    filename: &str,
    content_type: Option<&str>,
    bytes: Vec<u8>,
) -> Result<(), Outcome> {
    let params = StaticChunking {
        max_chunk_size_tokens: u32::try_from(row.max_chunk_size_tokens).unwrap_or(0),
        chunk_overlap_tokens: u32::try_from(row.chunk_overlap_tokens).unwrap_or(0),
    };
    let hash = ContentHash::of_file(&bytes, &params).to_hex();
    let model = inner.embedder.as_ref().map(|e| e.model().to_owned());
    if let Some(chunks) = reusable(inner, row, &hash, model.as_deref()).await? {
        tracing::info!(rag.chunks = chunks.len(), "identical ingestion found: chunks copied");
        return write(inner, row, &hash, model.as_deref(), chunks).await;
    }
    let engine = inner.index.engine().clone();
    let (name, kind) = (filename.to_owned(), content_type.map(str::to_owned));
    let prepared = tokio::task::spawn_blocking(move || {
        engine.prepare(&name, kind.as_deref(), &bytes, &ChunkingStrategy::Static { params })
    })
    .await
    .map_err(|e| Outcome::Retry(InferenceError::Internal(format!("parser task: {e}"))))?;
    let prepared = prepared.map_err(|e| match e {
        SearchError::UnsupportedFormat(what) => Outcome::Fail(UNSUPPORTED, format!("Unsupported file format: {what}.")),
        SearchError::Corrupt { format, reason } => {
            Outcome::Fail(INVALID, format!("The {format} file could not be parsed: {reason}"))
        }
        SearchError::InvalidParameter { param, reason } => Outcome::Fail(INVALID, format!("Invalid {param}: {reason}")),
        other => Outcome::Retry(InferenceError::Internal(other.to_string())),
    })?;
    if prepared.chunks.is_empty() {
        return Err(Outcome::Fail(INVALID, "The file has no text to index.".into()));
    }
    let texts: Vec<String> = prepared.chunks.iter().map(|c| c.text.clone()).collect();
    let vectors = match &inner.embedder {
        Some(embedder) => Some(embed(inner, embedder, row, &hash, texts).await?),
        None => None,
    };
    let chunks = prepared
        .chunks
        .into_iter()
        .enumerate()
        .map(|(n, chunk)| ChunkRow {
            id: uuid::Uuid::now_v7().to_string(),
            organization_id: row.organization_id.clone(),
            vector_store_id: row.vector_store_id.clone(),
            file_id: row.file_id.clone(),
            ordinal: n as i32,
            tokens: chunk.tokens as i32,
            content_hash: chunk.hash.to_hex(),
            text: chunk.text,
            embedding: vectors.as_ref().and_then(|v| v.get(n)).map(|v| to_bytes(v)),
        })
        .collect();
    write(inner, row, &hash, model.as_deref(), chunks).await
}

/// The chunks of an identical completed ingestion of the organization, re-keyed for this
/// attachment.
async fn reusable(
    inner: &Inner,
    row: &StoreFileRow,
    hash: &str,
    model: Option<&str>,
) -> Result<Option<Vec<ChunkRow>>, Outcome> {
    let (org, hash, model) = (row.organization_id.clone(), hash.to_owned(), model.map(str::to_owned));
    let source = store::run(&inner.db, move |conn| {
        let Some((store, file)) = store::completed_with_hash(conn, &org, &hash, model.as_deref())? else {
            return Ok(None);
        };
        // A source deleted since it was found has no chunks left: do the work instead.
        let chunks = store::chunks_of(conn, &store, &file)?;
        Ok(if chunks.is_empty() { None } else { Some(chunks) })
    })
    .await?;
    Ok(source.map(|chunks| {
        chunks
            .into_iter()
            .map(|c| ChunkRow {
                id: uuid::Uuid::now_v7().to_string(),
                vector_store_id: row.vector_store_id.clone(),
                file_id: row.file_id.clone(),
                ..c
            })
            .collect()
    }))
}

/// Embeds the chunk texts in batches, each billed under a key of its own.
async fn embed(
    inner: &Inner,
    embedder: &Embedder,
    row: &StoreFileRow,
    hash: &str,
    texts: Vec<String>,
) -> Result<Vec<Vec<f32>>, Outcome> {
    let organization_id = row
        .organization_id
        .parse()
        .map_err(|_| Outcome::Fail(SERVER_ERROR, "The attachment's organization is malformed.".into()))?;
    let api_key_id = row.api_key_id.as_deref().and_then(|k| k.parse().ok());
    let batch = inner.config.embedding_batch_size.max(1) as usize;
    let expected = inner.index.engine().vectors().map(|v| v.dimensions());
    let mut vectors = Vec::with_capacity(texts.len());
    for (n, texts) in texts.chunks(batch).enumerate() {
        // The attachment's time tells a re-attachment (new work, billed) from a re-run.
        let key = format!("rag/{}/{}/{}/{hash}/{n}", row.vector_store_id, row.file_id, row.created_at);
        let payer = Payer { organization_id, api_key_id, key };
        let got = embedder.embed(&payer, texts.to_vec()).await?;
        if let Some(expected) = expected
            && let Some(v) = got.iter().find(|v| v.len() != expected)
        {
            return Err(Outcome::Fail(
                SERVER_ERROR,
                format!(
                    "The embedding model returns {} dimensions; inference.rag.hnsw.dimensions is {expected}.",
                    v.len()
                ),
            ));
        }
        vectors.extend(got);
    }
    Ok(vectors)
}

/// The one transaction: the attachment moves from `in_progress` to `completed` (or nothing is
/// written: it was detached, or another delivery finished it), its chunks replace any, and a
/// change row tells every process's index.
async fn write(
    inner: &Inner,
    row: &StoreFileRow,
    hash: &str,
    model: Option<&str>,
    chunks: Vec<ChunkRow>,
) -> Result<(), Outcome> {
    let usage: i64 = chunks.iter().map(|c| (c.text.len() + c.embedding.as_ref().map_or(0, Vec::len)) as i64).sum();
    let n = chunks.len();
    let (row, hash, model) = (row.clone(), hash.to_owned(), model.map(str::to_owned));
    let now = inner.clock.now().timestamp();
    let written = store::transaction(&inner.db, move |conn| {
        let (s, f) = (&row.vector_store_id, &row.file_id);
        if !store::complete_store_file(conn, s, f, &hash, model.as_deref(), usage)? {
            return Ok(false);
        }
        store::delete_chunks(conn, s, f)?;
        store::insert_chunks(conn, &chunks)?;
        store::log_change(conn, &row.organization_id, s, Some(f), store::FILE_INDEXED, now)?;
        Ok::<_, Fail>(true)
    })
    .await?;
    if written {
        tracing::info!(rag.chunks = n, rag.usage_bytes = usage, "file ingested");
        if let Err(e) = inner.index.catch_up().await {
            tracing::warn!(error = %e, "retrieval index catch-up failed after an ingestion");
        }
    }
    Ok(())
}
