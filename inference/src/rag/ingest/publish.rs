//! The index step: the staged chunks go live (`rag_chunks`), the attachment completes and a
//! change row tells every process's index, in one transaction.

use super::{IndexFile, Outcome, abandon};
use crate::rag::service::Inner;
use crate::rag::store::{self, ChunkRow, Fail};

enum Published {
    /// Detached, deleted, settled, or another attachment of the file.
    NotInProgress,
    /// Nothing staged: another attachment's stale job.
    Nothing,
    /// A batch still has no vectors: its own job enqueues the index step when it is done.
    NotReady,
    Done {
        chunks: usize,
        usage_bytes: i64,
    },
}

#[tracing::instrument(skip_all, fields(rag.store = %job.vector_store_id, rag.file = %job.file_id, rag.step = "index"))]
pub(super) async fn run(inner: &Inner, job: &IndexFile) -> Result<(), Outcome> {
    let job2 = job.clone();
    let now = inner.clock.now().timestamp();
    let published = store::transaction(&inner.db, move |conn| {
        let IndexFile { vector_store_id: s, file_id: f, attached_at, content_hash, embedding_model } = job2;
        if !store::hold_in_progress(conn, &s, &f, attached_at)? {
            return Ok(Published::NotInProgress);
        }
        let staged = store::staged_chunks(conn, &s, &f)?;
        let Some(organization_id) = staged.first().map(|c| c.organization_id.clone()) else {
            return Ok(Published::Nothing);
        };
        if embedding_model.is_some() && staged.iter().any(|c| c.embedding.is_none()) {
            return Ok(Published::NotReady);
        }
        let usage_bytes: i64 =
            staged.iter().map(|c| (c.text.len() + c.embedding.as_ref().map_or(0, Vec::len)) as i64).sum();
        let chunks: Vec<ChunkRow> = staged.into_iter().map(ChunkRow::from).collect();
        store::complete_store_file(conn, &s, &f, &content_hash, embedding_model.as_deref(), usage_bytes)?;
        store::delete_chunks(conn, &s, &f)?;
        store::insert_chunks(conn, &chunks)?;
        store::delete_staged(conn, &s, &f)?;
        store::log_change(conn, &organization_id, &s, Some(&f), store::FILE_INDEXED, now)?;
        Ok::<_, Fail>(Published::Done { chunks: chunks.len(), usage_bytes })
    })
    .await?;
    match published {
        Published::Done { chunks, usage_bytes } => {
            tracing::info!(rag.chunks = chunks, rag.usage_bytes = usage_bytes, "file ingested");
            if let Err(e) = inner.index.catch_up().await {
                tracing::warn!(error = %e, "retrieval index catch-up failed after an ingestion");
            }
        }
        Published::NotInProgress => {
            tracing::info!("indexed already, or no longer in progress: nothing to do");
            abandon(inner, &job.vector_store_id, &job.file_id).await?;
        }
        Published::Nothing => tracing::info!("nothing staged: nothing to do"),
        Published::NotReady => tracing::info!("a batch is still being embedded: its job comes back here"),
    }
    Ok(())
}
