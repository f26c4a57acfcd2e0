//! The prepare step: parse and chunk the file (or copy an identical completed ingestion), stage
//! the chunks and enqueue what comes next, in one transaction.

use super::{EmbedBatch, INVALID, IndexFile, IngestFile, Outcome, UNSUPPORTED, abandon};
use crate::error::InferenceError;
use crate::rag::service::Inner;
use crate::rag::store::{self, Fail, FileMeta, StagedChunkRow, StoreFileRow};
use search::{ChunkingStrategy, ContentHash, SearchError, StaticChunking};

/// The steps after this one: the embed jobs (none when there is nothing to embed) and the index
/// job, for a caller that runs them itself.
pub(super) struct Next {
    pub batches: Vec<EmbedBatch>,
    pub index: IndexFile,
}

enum Loaded {
    /// Detached or deleted (its staged chunks went with it).
    Gone,
    /// Completed, failed or cancelled.
    Settled,
    /// `staged`: by an earlier delivery of this job.
    Ready { row: Box<StoreFileRow>, meta: FileMeta, bytes: Vec<u8>, staged: bool },
}

/// Stages the attachment's chunks and enqueues its embed jobs (or its index job). The steps
/// that follow, also when an earlier delivery staged the chunks (and enqueued them); None when
/// the attachment is no longer in progress.
#[tracing::instrument(skip_all, fields(rag.store = %job.vector_store_id, rag.file = %job.file_id, rag.step = "prepare"))]
pub(super) async fn run(inner: &Inner, job: &IngestFile) -> Result<Option<Next>, Outcome> {
    let (s, f) = (job.vector_store_id.clone(), job.file_id.clone());
    let loaded = store::run(&inner.db, move |conn| {
        let Some(row) = store::find_store_file(conn, &s, &f)? else { return Ok(Loaded::Gone) };
        if row.status != store::IN_PROGRESS {
            return Ok(Loaded::Settled);
        }
        let staged = store::count_staged(conn, &s, &f, false)? > 0;
        Ok::<_, Fail>(match store::file_content(conn, &row.organization_id, &f)? {
            Some((meta, bytes)) => Loaded::Ready { row: Box::new(row), meta, bytes, staged },
            None => Loaded::Gone,
        })
    })
    .await?;
    let (row, meta, bytes, staged) = match loaded {
        Loaded::Ready { row, meta, bytes, staged } => (*row, meta, bytes, staged),
        Loaded::Gone => return Ok(None),
        Loaded::Settled => {
            abandon(inner, &job.vector_store_id, &job.file_id).await?;
            return Ok(None);
        }
    };
    let params = StaticChunking {
        max_chunk_size_tokens: u32::try_from(row.max_chunk_size_tokens).unwrap_or(0),
        chunk_overlap_tokens: u32::try_from(row.chunk_overlap_tokens).unwrap_or(0),
    };
    let hash = ContentHash::of_file(&bytes, &params).to_hex();
    let model = inner.embedder.as_ref().map(|e| e.model().to_owned());
    if staged {
        tracing::info!("file prepared already: a second delivery stages nothing");
        return resume(inner, &row, hash, model).await.map(Some);
    }
    tracing::info!(rag.bytes = bytes.len(), "preparing the file");
    let batch_size = inner.config.embedding_batch_size.max(1) as usize;
    let (chunks, copied) = match reusable(inner, &row, &hash, model.as_deref(), batch_size).await? {
        Some(chunks) => (chunks, true),
        None => (parse(inner, &row, &meta, bytes, params, batch_size).await?, false),
    };
    let batches = if copied || model.is_none() { 0 } else { chunks.len().div_ceil(batch_size) };
    let next = next(&row, &hash, model.clone(), 0..batches as i32);
    let n = chunks.len();
    let jobs = inner.jobs.clone();
    let (s, f, attached_at) = (row.vector_store_id.clone(), row.file_id.clone(), row.created_at);
    let staged = store::transaction(&inner.db, move |conn| {
        // Another delivery staged them while this one parsed, or the attachment went.
        if !store::hold_in_progress(conn, &s, &f, attached_at)? || store::count_staged(conn, &s, &f, false)? > 0 {
            return Ok(None);
        }
        store::stage_chunks(conn, &chunks)?;
        if next.batches.is_empty() {
            next.index.enqueue(&jobs, conn)?;
        }
        for batch in &next.batches {
            batch.enqueue(&jobs, conn)?;
        }
        Ok::<_, Fail>(Some(next))
    })
    .await?;
    match staged {
        Some(next) => {
            tracing::info!(rag.chunks = n, rag.batches = next.batches.len(), rag.copied = copied, "file prepared");
            Ok(Some(next))
        }
        None => {
            tracing::info!("file prepared by another delivery meanwhile, or no longer in progress");
            resume(inner, &row, hash, model).await.map(Some)
        }
    }
}

/// The steps after this one as they are now: the batches still without vectors (their jobs
/// were enqueued with the chunks).
async fn resume(inner: &Inner, row: &StoreFileRow, hash: String, model: Option<String>) -> Result<Next, Outcome> {
    let (s, f) = (row.vector_store_id.clone(), row.file_id.clone());
    let batches = match model {
        Some(_) => store::run(&inner.db, move |conn| Ok::<_, Fail>(store::unembedded_batches(conn, &s, &f)?)).await?,
        None => Vec::new(),
    };
    Ok(next(row, &hash, model, batches))
}

fn next(row: &StoreFileRow, hash: &str, model: Option<String>, batches: impl IntoIterator<Item = i32>) -> Next {
    let batches = batches
        .into_iter()
        .map(|batch| EmbedBatch {
            vector_store_id: row.vector_store_id.clone(),
            file_id: row.file_id.clone(),
            attached_at: row.created_at,
            content_hash: hash.to_owned(),
            batch,
        })
        .collect();
    let index = IndexFile {
        vector_store_id: row.vector_store_id.clone(),
        file_id: row.file_id.clone(),
        attached_at: row.created_at,
        content_hash: hash.to_owned(),
        embedding_model: model,
    };
    Next { batches, index }
}

/// A staged chunk of `row` at `ordinal`.
fn staged(row: &StoreFileRow, ordinal: usize, batch_size: usize) -> StagedChunkRow {
    StagedChunkRow {
        vector_store_id: row.vector_store_id.clone(),
        file_id: row.file_id.clone(),
        ordinal: ordinal as i32,
        embed_batch: (ordinal / batch_size) as i32,
        id: uuid::Uuid::now_v7().to_string(),
        organization_id: row.organization_id.clone(),
        text: String::new(),
        tokens: 0,
        embedding: None,
        content_hash: String::new(),
    }
}

/// Parses and chunks the file.
async fn parse(
    inner: &Inner,
    row: &StoreFileRow,
    meta: &FileMeta,
    bytes: Vec<u8>,
    params: StaticChunking,
    batch_size: usize,
) -> Result<Vec<StagedChunkRow>, Outcome> {
    let engine = inner.index.engine().clone();
    let (name, kind) = (meta.filename.clone(), meta.content_type.clone());
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
    Ok(prepared
        .chunks
        .into_iter()
        .enumerate()
        .map(|(n, chunk)| StagedChunkRow {
            tokens: chunk.tokens as i32,
            content_hash: chunk.hash.to_hex(),
            text: chunk.text,
            ..staged(row, n, batch_size)
        })
        .collect())
}

/// The chunks of an identical completed ingestion of the organization, re-keyed for this
/// attachment, vectors included.
async fn reusable(
    inner: &Inner,
    row: &StoreFileRow,
    hash: &str,
    model: Option<&str>,
    batch_size: usize,
) -> Result<Option<Vec<StagedChunkRow>>, Outcome> {
    let (org, hash, model) = (row.organization_id.clone(), hash.to_owned(), model.map(str::to_owned));
    let embedded = model.is_some();
    let source = store::run(&inner.db, move |conn| {
        let Some((store, file)) = store::completed_with_hash(conn, &org, &hash, model.as_deref())? else {
            return Ok(None);
        };
        // A source deleted since it was found has no chunks left: do the work instead; so too
        // one whose vectors are missing.
        let chunks = store::chunks_of(conn, &store, &file)?;
        let whole = !chunks.is_empty() && (!embedded || chunks.iter().all(|c| c.embedding.is_some()));
        Ok::<_, Fail>(whole.then_some(chunks))
    })
    .await?;
    let Some(chunks) = source else { return Ok(None) };
    tracing::info!(rag.chunks = chunks.len(), "identical ingestion found: its chunks are copied");
    Ok(Some(
        chunks
            .into_iter()
            .enumerate()
            .map(|(n, c)| StagedChunkRow {
                ordinal: c.ordinal,
                embed_batch: (c.ordinal.max(0) as usize / batch_size) as i32,
                text: c.text,
                tokens: c.tokens,
                embedding: c.embedding,
                content_hash: c.content_hash,
                ..staged(row, n, batch_size)
            })
            .collect(),
    ))
}
