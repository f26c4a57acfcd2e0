//! The process's index: a `search::SearchEngine` (BM25, and HNSW behind the `VectorIndex`
//! trait when an embedder is configured) loaded from the database at start, in the background,
//! and kept current by reading the change log (`rag_changes`) in sequence order. Several
//! processes each follow the log, so a file ingested by any worker becomes searchable in every
//! gateway.
//!
//! A change names a file (or a store), not its chunks: applying it reloads the file's current
//! state from the database, so changes are idempotent and applying one twice, or late, is
//! harmless.

use super::embedder::from_bytes;
use super::store::{self, COMPLETED, ChangeRow, FILE_INDEXED, FILE_REMOVED, Fail, STORE_REMOVED, StoreFileRow};
use crate::config::RagConfig;
use crate::error::InferenceError;
use search::{
    Chunker, ContentHash, FusedHit, HnswConfig, HnswIndex, IndexChunk, KeywordIndex, Quantization, Scope, SearchEngine,
    SearchMode, SearchRequest, VectorIndex,
};
use shared::db::{Conn, Db};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Instant;
use tokio::sync::watch;

/// Changes read per query while catching up.
const CHANGES_PER_READ: i64 = 500;
/// Attachments read per query while rebuilding.
const FILES_PER_READ: i64 = 200;

/// The in-process index and how far into the change log it is.
pub(crate) struct RagIndex {
    db: Db,
    engine: Arc<SearchEngine>,
    /// The last change applied.
    watermark: Arc<AtomicI64>,
    /// One catch-up at a time; a search waits for the one running.
    syncing: tokio::sync::Mutex<()>,
    /// Until the first rebuild succeeds the index is not live: catching up does nothing, and
    /// searches answer 503. A process that only runs jobs never loads: it never holds the
    /// collection.
    load: watch::Sender<Load>,
}

/// How far the index is in loading the database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Load {
    /// Never asked to (a process that only runs jobs).
    Idle,
    /// Loading; `failures` attempts have failed so far.
    Loading { failures: u32 },
    /// Loaded, and following the change log.
    Live,
}

impl std::fmt::Debug for RagIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RagIndex").field("watermark", &self.watermark()).finish_non_exhaustive()
    }
}

fn index_error(e: search::SearchError) -> InferenceError {
    InferenceError::Internal(format!("search index: {e}"))
}

/// The HNSW parameters of the configuration; `dimensions` from the embedder when it knows them.
pub(crate) fn hnsw_config(config: &RagConfig, dimensions: Option<usize>) -> HnswConfig {
    let h = &config.hnsw;
    HnswConfig {
        dimensions: dimensions.unwrap_or(h.dimensions),
        connectivity: h.connectivity,
        expansion_add: h.expansion_add,
        expansion_search: h.expansion_search,
        quantization: match h.quantization.as_str() {
            "f32" => Quantization::F32,
            "i8" => Quantization::I8,
            _ => Quantization::F16,
        },
        exact_filter_max: h.exact_filter_max,
        filtered_expansion_search: h.filtered_expansion_search,
        ..HnswConfig::default()
    }
}

impl RagIndex {
    /// An empty index: keyword only, or hybrid with an HNSW graph of `hnsw`.
    pub(crate) fn new(db: Db, config: &RagConfig, hnsw: Option<HnswConfig>) -> Result<Self, String> {
        let chunker = Chunker::new();
        let keyword = match &config.index_dir {
            Some(dir) => KeywordIndex::open_in_dir(dir),
            None => KeywordIndex::in_ram(),
        }
        .map_err(|e| format!("inference.rag.index_dir: {e}"))?;
        let vectors: Option<Arc<dyn VectorIndex>> = match hnsw {
            Some(h) => Some(Arc::new(HnswIndex::new(h).map_err(|e| format!("inference.rag.hnsw: {e}"))?)),
            None => None,
        };
        Ok(Self {
            db,
            engine: Arc::new(SearchEngine::new(chunker, keyword, vectors)),
            watermark: Arc::new(AtomicI64::new(0)),
            syncing: tokio::sync::Mutex::new(()),
            load: watch::Sender::new(Load::Idle),
        })
    }

    pub(crate) fn engine(&self) -> &Arc<SearchEngine> {
        &self.engine
    }

    pub(crate) fn mode(&self) -> SearchMode {
        self.engine.mode()
    }

    /// The last change of the log this index reflects.
    pub(crate) fn watermark(&self) -> i64 {
        self.watermark.load(Ordering::Acquire)
    }

    /// Loads every completed file from the database. The log position is read first, so a
    /// change committed during the rebuild is applied again by the next catch-up (harmless).
    /// The index is live once this has succeeded; a failure is counted in [`Load::Loading`].
    pub(crate) async fn rebuild(&self) -> Result<usize, InferenceError> {
        let _guard = self.syncing.lock().await;
        self.load.send_if_modified(|load| {
            let idle = *load == Load::Idle;
            if idle {
                *load = Load::Loading { failures: 0 };
            }
            idle
        });
        let started = Instant::now();
        let engine = self.engine.clone();
        let watermark = self.watermark.clone();
        let indexed = store::run(&self.db, move |conn| {
            let start = store::last_change(conn)?;
            let mut indexed = 0;
            let mut after: Option<(String, String)> = None;
            loop {
                let page = store::completed_after(
                    conn,
                    after.as_ref().map(|(s, f)| (s.as_str(), f.as_str())),
                    FILES_PER_READ,
                )?;
                let Some(last) = page.last() else { break };
                after = Some((last.vector_store_id.clone(), last.file_id.clone()));
                for row in &page {
                    indexed += usize::from(index_file(conn, &engine, row)?);
                }
            }
            watermark.store(start, Ordering::Release);
            Ok(indexed)
        })
        .await;
        match indexed {
            Ok(indexed) => {
                let duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
                tracing::info!(
                    rag.files = indexed,
                    rag.watermark = self.watermark(),
                    duration_ms,
                    "retrieval index loaded"
                );
                self.load.send_replace(Load::Live);
                Ok(indexed)
            }
            Err(e) => {
                self.load.send_modify(|load| {
                    if let Load::Loading { failures } = load {
                        *failures = failures.saturating_add(1);
                    }
                });
                Err(e)
            }
        }
    }

    /// Whether the index is kept (loaded once, then following the change log).
    pub(crate) fn is_live(&self) -> bool {
        *self.load.borrow() == Load::Live
    }

    /// How far loading is.
    pub(crate) fn load(&self) -> Load {
        *self.load.borrow()
    }

    /// Tells of every change of [`Load`].
    pub(crate) fn subscribe(&self) -> watch::Receiver<Load> {
        self.load.subscribe()
    }

    /// Ok when the index can answer a search; a 503 while it is loading.
    pub(crate) fn ensure_live(&self) -> Result<(), InferenceError> {
        match self.load() {
            Load::Live => Ok(()),
            Load::Loading { .. } => {
                Err(InferenceError::Unavailable("the retrieval index is still loading from the database".into()))
            }
            Load::Idle => Err(InferenceError::Unavailable("this process keeps no retrieval index".into())),
        }
    }

    /// Applies the changes written since the watermark; returns how many.
    pub(crate) async fn catch_up(&self) -> Result<usize, InferenceError> {
        if !self.is_live() {
            return Ok(0);
        }
        let _guard = self.syncing.lock().await;
        let engine = self.engine.clone();
        let watermark = self.watermark.clone();
        store::run(&self.db, move |conn| {
            let mut applied = 0;
            loop {
                let from = watermark.load(Ordering::Acquire);
                let changes = store::changes_after(conn, from, CHANGES_PER_READ)?;
                let Some(last) = changes.last().map(|c| c.seq) else { break };
                for change in &changes {
                    apply(conn, &engine, change)?;
                }
                applied += changes.len();
                watermark.store(last, Ordering::Release);
            }
            Ok(applied)
        })
        .await
    }

    /// Searches a store's scope, off the async workers.
    pub(crate) async fn search(&self, scope: Scope, query: Query) -> Result<Vec<FusedHit>, search::SearchError> {
        let engine = self.engine.clone();
        tokio::task::spawn_blocking(move || {
            let request = SearchRequest {
                text: &query.text,
                vector: query.vector.as_deref(),
                max_num_results: query.max_num_results,
                filter: query.filter.as_ref(),
                weights: query.weights,
                score_threshold: query.score_threshold,
            };
            engine.search(&scope, &request)
        })
        .await
        .map_err(|e| search::SearchError::Index(format!("search task: {e}")))?
    }
}

/// A search of one query, owned (it moves to the blocking pool).
#[derive(Debug, Clone)]
pub(crate) struct Query {
    pub text: String,
    pub vector: Option<Vec<f32>>,
    pub max_num_results: usize,
    pub filter: Option<search::Filter>,
    pub weights: search::HybridWeights,
    pub score_threshold: f32,
}

/// Applies one change: reloads the file (indexed if completed, removed otherwise), or removes
/// the file or the store.
fn apply(conn: &mut Conn, engine: &SearchEngine, change: &ChangeRow) -> Result<(), Fail> {
    let scope = Scope::new(&change.organization_id, &change.vector_store_id);
    match (change.kind.as_str(), &change.file_id) {
        (FILE_INDEXED, Some(file)) => match store::find_store_file(conn, &change.vector_store_id, file)? {
            Some(row) if row.status == COMPLETED => {
                index_file(conn, engine, &row)?;
            }
            _ => {
                engine.delete_file(&scope, file).map_err(index_error)?;
            }
        },
        (FILE_REMOVED, Some(file)) => {
            engine.delete_file(&scope, file).map_err(index_error)?;
        }
        (STORE_REMOVED, _) => engine.delete_scope(&scope).map_err(index_error)?,
        (kind, _) => tracing::warn!(rag.change = change.seq, rag.kind = kind, "unknown change kind ignored"),
    }
    Ok(())
}

/// Indexes one completed attachment from its stored chunks; false when it cannot be (its
/// chunks lack the vectors this index needs, or its row is malformed: logged).
fn index_file(conn: &mut Conn, engine: &SearchEngine, row: &StoreFileRow) -> Result<bool, Fail> {
    let scope = Scope::new(&row.organization_id, &row.vector_store_id);
    let hash = row.content_hash.as_deref().and_then(|h| hex::decode(h).ok()).and_then(|b| <[u8; 32]>::try_from(b).ok());
    let attributes = serde_json::from_str::<search::Attributes>(&row.attributes).ok();
    let (Some(hash), Some(attributes)) = (hash, attributes) else {
        tracing::error!(rag.store = %row.vector_store_id, rag.file = %row.file_id, "malformed attachment row not indexed");
        return Ok(false);
    };
    let hybrid = engine.mode() == SearchMode::Hybrid;
    let mut chunks = Vec::new();
    for chunk in store::chunks_of(conn, &row.vector_store_id, &row.file_id)? {
        let Ok(id) = uuid::Uuid::parse_str(&chunk.id) else {
            tracing::error!(rag.chunk = %chunk.id, "malformed chunk id not indexed");
            continue;
        };
        let vector = if hybrid { chunk.embedding.as_deref().and_then(from_bytes) } else { None };
        chunks.push(IndexChunk { id, text: chunk.text, vector });
    }
    if hybrid && chunks.iter().any(|c| c.vector.is_none()) {
        tracing::warn!(
            rag.store = %row.vector_store_id,
            rag.file = %row.file_id,
            "file ingested without embeddings is not searchable in hybrid mode: attach it again"
        );
        engine.delete_file(&scope, &row.file_id).map_err(index_error)?;
        return Ok(false);
    }
    match engine.index_file(&scope, &row.file_id, ContentHash(hash), attributes, chunks) {
        Ok(_) => Ok(true),
        Err(search::SearchError::DimensionMismatch { expected, got }) => {
            tracing::error!(
                rag.store = %row.vector_store_id,
                rag.file = %row.file_id,
                expected,
                got,
                "stored vectors do not fit inference.rag.hnsw.dimensions: file not indexed"
            );
            Ok(false)
        }
        Err(e) => Err(index_error(e).into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_filter_planner_settings_reach_the_index() {
        let mut config = RagConfig::default();
        assert_eq!(hnsw_config(&config, None).exact_filter_max, search::EXACT_FILTER_MAX, "the same default");
        assert_eq!(hnsw_config(&config, None).filtered_expansion_search, None);
        config.hnsw.exact_filter_max = 0;
        config.hnsw.filtered_expansion_search = Some(40);
        let hnsw = hnsw_config(&config, Some(8));
        assert_eq!((hnsw.exact_filter_max, hnsw.filtered_expansion_search, hnsw.dimensions), (0, Some(40), 8));
        hnsw.validate().unwrap();
    }
}
