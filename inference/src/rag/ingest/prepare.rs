//! The prepare step: parse and chunk the file (or copy an identical completed ingestion), stage
//! the chunks and enqueue what comes next, in one transaction.

use super::{EmbedBatch, INVALID, IndexFile, IngestFile, Outcome, UNSUPPORTED, abandon};
use crate::error::InferenceError;
use crate::rag::service::Inner;
use crate::rag::store::{self, Fail, FileMeta, StagedChunkRow, StoreFileRow};
use search::{ChunkingStrategy, ContentHash, SearchError, StaticChunking};

/// What the step enqueued, for a caller that runs the steps itself.
pub(super) enum Next {
    Embed(Vec<EmbedBatch>),
    Index(IndexFile),
}

enum Loaded {
    /// Detached or deleted (its staged chunks went with it).
    Gone,
    /// Completed, failed or cancelled.
    Settled,
    /// Staged by an earlier delivery of this job.
    Staged,
    Ready(Box<StoreFileRow>, FileMeta, Vec<u8>),
}

/// Stages the attachment's chunks and enqueues its embed jobs (or its index job); None when
/// there was nothing to do.
#[tracing::instrument(skip_all, fields(rag.store = %job.vector_store_id, rag.file = %job.file_id, rag.step = "prepare"))]
pub(super) async fn run(inner: &Inner, job: &IngestFile) -> Result<Option<Next>, Outcome> {
    let (s, f) = (job.vector_store_id.clone(), job.file_id.clone());
    let loaded = store::run(&inner.db, move |conn| {
        let Some(row) = store::find_store_file(conn, &s, &f)? else { return Ok(Loaded::Gone) };
        if row.status != store::IN_PROGRESS {
            return Ok(Loaded::Settled);
        }
        if store::count_staged(conn, &s, &f, false)? > 0 {
            return Ok(Loaded::Staged);
        }
        Ok::<_, Fail>(match store::file_content(conn, &row.organization_id, &f)? {
            Some((meta, bytes)) => Loaded::Ready(Box::new(row), meta, bytes),
            None => Loaded::Gone,
        })
    })
    .await?;
    let (row, meta, bytes) = match loaded {
        Loaded::Ready(row, meta, bytes) => (*row, meta, bytes),
        Loaded::Gone => return Ok(None),
        Loaded::Settled => {
            abandon(inner, &job.vector_store_id, &job.file_id).await?;
            return Ok(None);
        }
        Loaded::Staged => {
            tracing::info!("file prepared already: a second delivery does nothing");
            return Ok(None);
        }
    };
    tracing::info!(rag.bytes = bytes.len(), "preparing the file");
    let params = StaticChunking {
        max_chunk_size_tokens: u32::try_from(row.max_chunk_size_tokens).unwrap_or(0),
        chunk_overlap_tokens: u32::try_from(row.chunk_overlap_tokens).unwrap_or(0),
    };
    let hash = ContentHash::of_file(&bytes, &params).to_hex();
    let model = inner.embedder.as_ref().map(|e| e.model().to_owned());
    let batch_size = inner.config.embedding_batch_size.max(1) as usize;
    let (chunks, copied) = match reusable(inner, &row, &hash, model.as_deref(), batch_size).await? {
        Some(chunks) => (chunks, true),
        None => (parse(inner, &row, &meta, bytes, params, batch_size).await?, false),
    };
    let next = if copied || model.is_none() {
        Next::Index(IndexFile {
            vector_store_id: row.vector_store_id.clone(),
            file_id: row.file_id.clone(),
            attached_at: row.created_at,
            content_hash: hash,
            embedding_model: model,
        })
    } else {
        let batches = chunks.len().div_ceil(batch_size);
        Next::Embed(
            (0..batches)
                .map(|n| EmbedBatch {
                    vector_store_id: row.vector_store_id.clone(),
                    file_id: row.file_id.clone(),
                    attached_at: row.created_at,
                    content_hash: hash.clone(),
                    batch: n as i32,
                })
                .collect(),
        )
    };
    let n = chunks.len();
    let jobs = inner.jobs.clone();
    let staged = store::transaction(&inner.db, move |conn| {
        let (s, f) = (&row.vector_store_id, &row.file_id);
        // Another delivery staged them while this one parsed, or the attachment went.
        if !store::hold_in_progress(conn, s, f, row.created_at)? || store::count_staged(conn, s, f, false)? > 0 {
            return Ok(None);
        }
        store::stage_chunks(conn, &chunks)?;
        match &next {
            Next::Embed(batches) => {
                for batch in batches {
                    batch.enqueue(&jobs, conn)?;
                }
            }
            Next::Index(index) => index.enqueue(&jobs, conn)?,
        }
        Ok::<_, Fail>(Some(next))
    })
    .await?;
    match &staged {
        Some(Next::Embed(batches)) => tracing::info!(rag.chunks = n, rag.batches = batches.len(), "file prepared"),
        Some(Next::Index(_)) => tracing::info!(rag.chunks = n, rag.copied = copied, "file prepared, nothing to embed"),
        None => tracing::info!("file prepared by another delivery, or no longer in progress"),
    }
    Ok(staged)
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
