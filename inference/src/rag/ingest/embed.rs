//! The embed step of one batch: embed its staged chunks, write their vectors and, if it was the
//! last batch without them, enqueue the index step, in one transaction.

use super::{EmbedBatch, IndexFile, Outcome, SERVER_ERROR, abandon};
use crate::error::InferenceError;
use crate::rag::embedder::to_bytes;
use crate::rag::service::Inner;
use crate::rag::store::{self, Fail, StoreFileRow};
use crate::service::Payer;

enum Loaded {
    /// Detached or deleted, or another attachment of the file since this job was enqueued.
    Gone,
    /// Completed, failed or cancelled.
    Settled,
    /// The attachment and the batch's chunks still without a vector: (id, text).
    Ready(Box<StoreFileRow>, Vec<(String, String)>),
}

/// Embeds the batch, and enqueues the index job if it was the last one without vectors.
#[tracing::instrument(skip_all, fields(rag.store = %job.vector_store_id, rag.file = %job.file_id, rag.step = "embed", rag.batch = job.batch))]
pub(super) async fn run(inner: &Inner, job: &EmbedBatch) -> Result<(), Outcome> {
    let (s, f, attached_at, batch) = (job.vector_store_id.clone(), job.file_id.clone(), job.attached_at, job.batch);
    let loaded = store::run(&inner.db, move |conn| {
        let Some(row) = store::find_store_file(conn, &s, &f)? else { return Ok(Loaded::Gone) };
        if row.status != store::IN_PROGRESS {
            return Ok(Loaded::Settled);
        }
        if row.created_at != attached_at {
            return Ok(Loaded::Gone);
        }
        let texts = store::unembedded_batch(conn, &s, &f, batch)?;
        Ok::<_, Fail>(Loaded::Ready(Box::new(row), texts))
    })
    .await?;
    let (row, texts) = match loaded {
        Loaded::Ready(row, texts) => (*row, texts),
        Loaded::Gone => return Ok(()),
        Loaded::Settled => {
            abandon(inner, &job.vector_store_id, &job.file_id).await?;
            return Ok(());
        }
    };
    if texts.is_empty() {
        tracing::info!("batch embedded already: a second delivery does nothing");
        return Ok(());
    }
    let Some(embedder) = &inner.embedder else {
        return Err(Outcome::Fail(SERVER_ERROR, "No embedding model is configured any more.".into()));
    };
    let organization_id = row
        .organization_id
        .parse()
        .map_err(|_| Outcome::Fail(SERVER_ERROR, "The attachment's organization is malformed.".into()))?;
    let api_key_id = row.api_key_id.as_deref().and_then(|k| k.parse().ok());
    // The attachment's time tells a re-attachment (new work, billed) from a re-run.
    let key = format!("rag/{}/{}/{}/{}/{}", row.vector_store_id, row.file_id, row.created_at, job.content_hash, batch);
    let payer = Payer { organization_id, api_key_id, key };
    let (ids, texts): (Vec<String>, Vec<String>) = texts.into_iter().unzip();
    let n = ids.len();
    tracing::info!(rag.chunks = n, "embedding the batch");
    let vectors = embedder.embed(&payer, texts).await?;
    if vectors.len() != n {
        return Err(Outcome::Retry(InferenceError::Upstream(format!(
            "the embedder answered {} vectors for {n} texts",
            vectors.len()
        ))));
    }
    if let Some(expected) = inner.index.engine().vectors().map(|v| v.dimensions())
        && let Some(v) = vectors.iter().find(|v| v.len() != expected)
    {
        return Err(Outcome::Fail(
            SERVER_ERROR,
            format!("The embedding model returns {} dimensions; inference.rag.hnsw.dimensions is {expected}.", v.len()),
        ));
    }
    let index = IndexFile {
        vector_store_id: row.vector_store_id.clone(),
        file_id: row.file_id.clone(),
        attached_at: row.created_at,
        content_hash: job.content_hash.clone(),
        embedding_model: Some(embedder.model().to_owned()),
    };
    let jobs = inner.jobs.clone();
    let (s, f) = (row.vector_store_id, row.file_id);
    let written = store::transaction(&inner.db, move |conn| {
        // Held until the commit: of two batches that finish together, the second one to get
        // here counts after the first committed, so exactly one finds none left.
        if !store::hold_in_progress(conn, &s, &f, attached_at)? {
            return Ok(Written::NotInProgress);
        }
        for (id, vector) in ids.iter().zip(&vectors) {
            store::set_staged_embedding(conn, &s, &f, id, &to_bytes(vector))?;
        }
        if store::count_staged(conn, &s, &f, true)? > 0 {
            return Ok(Written::Batch);
        }
        index.enqueue(&jobs, conn)?;
        Ok::<_, Fail>(Written::Last)
    })
    .await?;
    match written {
        Written::Last => tracing::info!(rag.chunks = n, "batch embedded, the last one: the index step is next"),
        Written::Batch => tracing::info!(rag.chunks = n, "batch embedded"),
        Written::NotInProgress => tracing::info!("batch embedded, but the attachment is no longer in progress"),
    }
    Ok(())
}

enum Written {
    NotInProgress,
    Batch,
    /// No staged chunk is left without a vector: the index job was enqueued.
    Last,
}
