//! The engine the inference domain drives: prepare a file (detect, parse, chunk, hash), index its
//! chunks by keyword and, when the caller has embeddings, by vector; search both and fuse.
//!
//! The engine holds no text and no database: the caller owns chunk ids, content and embeddings
//! (the database is the source of truth), and calls [`SearchEngine::index_file`] again after a
//! restart to rebuild. Embedding is the caller's business too (a provider over HTTP, or
//! [`crate::embed`]): a query with a vector is hybrid, a query without one is keyword-only.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::RwLock;
use uuid::Uuid;

use crate::chunk::{Chunk, Chunker, ChunkingStrategy, ContentHash};
use crate::error::{Result, SearchError};
use crate::filter::{Attributes, Filter, validate_attributes};
use crate::hybrid::{FusedHit, HybridWeights, reciprocal_rank_fusion};
use crate::keyword::{KeywordChunk, KeywordIndex};
use crate::parse::{Format, parse};
use crate::vector::{Scope, VectorIndex, VectorRecord};

/// OpenAI's bound on `max_num_results`.
pub const MAX_NUM_RESULTS: usize = 50;

/// A file ready to index: its chunks and the hash that identifies them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreparedFile {
    /// The detected format.
    pub format: Format,
    /// Hash of the bytes and the chunking parameters.
    pub hash: ContentHash,
    /// The chunks, in order.
    pub chunks: Vec<Chunk>,
}

/// A chunk handed to [`SearchEngine::index_file`].
#[derive(Debug, Clone, PartialEq)]
pub struct IndexChunk {
    /// The chunk's id (the caller's, stable).
    pub id: Uuid,
    /// Its text.
    pub text: String,
    /// Its embedding, when the store has an embedder.
    pub vector: Option<Vec<f32>>,
}

/// What [`SearchEngine::index_file`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IndexOutcome {
    /// The chunks were indexed (replacing any earlier version of the file).
    Indexed {
        /// Chunks indexed.
        chunks: usize,
    },
    /// The file was already indexed with this content hash and these attributes: nothing done.
    Unchanged,
}

/// Whether searches use vectors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SearchMode {
    /// BM25 only (no vector index configured).
    Keyword,
    /// BM25 and vectors, fused.
    Hybrid,
}

/// A search request.
#[derive(Debug, Clone, PartialEq)]
pub struct SearchRequest<'a> {
    /// The query text (for BM25).
    pub text: &'a str,
    /// The query's embedding; `None` searches by keyword only.
    pub vector: Option<&'a [f32]>,
    /// 1 to 50.
    pub max_num_results: usize,
    /// Attribute filter.
    pub filter: Option<&'a Filter>,
    /// Fusion weights.
    pub weights: HybridWeights,
    /// Drop results scoring below this (0 to 1).
    pub score_threshold: f32,
}

impl<'a> SearchRequest<'a> {
    /// A request with OpenAI's defaults (10 results, no filter, no threshold).
    pub fn new(text: &'a str) -> Self {
        Self {
            text,
            vector: None,
            max_num_results: 10,
            filter: None,
            weights: HybridWeights::default(),
            score_threshold: 0.0,
        }
    }
}

#[derive(Debug, Clone)]
struct FileState {
    hash: ContentHash,
    attributes: Arc<Attributes>,
    chunks: Vec<Uuid>,
}

/// The retrieval engine.
#[derive(Debug)]
pub struct SearchEngine {
    chunker: Chunker,
    keyword: KeywordIndex,
    vectors: Option<Arc<dyn VectorIndex>>,
    files: RwLock<HashMap<(Scope, String), FileState>>,
}

impl SearchEngine {
    /// An engine over a keyword index and, for hybrid search, a vector index.
    pub fn new(chunker: Chunker, keyword: KeywordIndex, vectors: Option<Arc<dyn VectorIndex>>) -> Self {
        Self { chunker, keyword, vectors, files: RwLock::new(HashMap::new()) }
    }

    /// Keyword-only or hybrid.
    pub fn mode(&self) -> SearchMode {
        if self.vectors.is_some() { SearchMode::Hybrid } else { SearchMode::Keyword }
    }

    /// The keyword index.
    pub fn keyword(&self) -> &KeywordIndex {
        &self.keyword
    }

    /// The vector index, if any.
    pub fn vectors(&self) -> Option<&Arc<dyn VectorIndex>> {
        self.vectors.as_ref()
    }

    /// The chunker.
    pub fn chunker(&self) -> &Chunker {
        &self.chunker
    }

    /// Detects the format, parses and chunks a file. Pure CPU work: run it off the async
    /// workers. Errors: `UnsupportedFormat`, `Corrupt`, `InvalidParameter`.
    pub fn prepare(
        &self,
        file_name: &str,
        content_type: Option<&str>,
        bytes: &[u8],
        strategy: &ChunkingStrategy,
    ) -> Result<PreparedFile> {
        let params = strategy.resolve()?;
        let format = Format::detect(file_name, content_type, bytes)?;
        let doc = parse(format, bytes)?;
        let chunks = self.chunker.chunk(&doc, &params)?;
        Ok(PreparedFile { format, hash: ContentHash::of_file(bytes, &params), chunks })
    }

    /// Whether the file is indexed in the scope with this content hash.
    pub fn is_indexed(&self, scope: &Scope, file: &str, hash: &ContentHash) -> bool {
        self.files.read().get(&(scope.clone(), file.to_owned())).is_some_and(|f| f.hash == *hash)
    }

    /// Indexes a file's chunks in a scope, replacing its earlier version. The same hash and
    /// attributes again do nothing ([`IndexOutcome::Unchanged`]). With a vector index every chunk
    /// must carry a vector. Errors: `InvalidParameter`, `DimensionMismatch`, `Index`.
    pub fn index_file(
        &self,
        scope: &Scope,
        file: &str,
        hash: ContentHash,
        attributes: Attributes,
        chunks: Vec<IndexChunk>,
    ) -> Result<IndexOutcome> {
        validate_attributes(&attributes)?;
        let key = (scope.clone(), file.to_owned());
        if let Some(old) = self.files.read().get(&key)
            && old.hash == hash
            && *old.attributes == attributes
        {
            return Ok(IndexOutcome::Unchanged);
        }
        if self.vectors.is_some() && chunks.iter().any(|c| c.vector.is_none()) {
            return Err(SearchError::invalid(
                "chunks",
                "the engine has a vector index: every chunk needs its embedding",
            ));
        }
        let attributes = Arc::new(attributes);
        let previous = self.files.read().get(&key).cloned();
        if let Some(vectors) = &self.vectors {
            if let Some(prev) = &previous {
                vectors.delete(scope, &prev.chunks)?;
            }
            let records = chunks
                .iter()
                .filter_map(|c| {
                    c.vector.as_ref().map(|v| VectorRecord {
                        id: c.id,
                        vector: v.clone(),
                        attributes: attributes.clone(),
                    })
                })
                .collect();
            vectors.add(scope, records)?;
        }
        let kw: Vec<KeywordChunk<'_>> = chunks.iter().map(|c| KeywordChunk { id: c.id, text: &c.text }).collect();
        self.keyword.add_file(scope, file, &kw, attributes.clone())?;
        self.keyword.commit()?;
        let n = chunks.len();
        self.files
            .write()
            .insert(key, FileState { hash, attributes, chunks: chunks.into_iter().map(|c| c.id).collect() });
        Ok(IndexOutcome::Indexed { chunks: n })
    }

    /// Removes a file's chunks from both indexes; returns whether it was indexed.
    /// Errors: `Index`.
    pub fn delete_file(&self, scope: &Scope, file: &str) -> Result<bool> {
        let Some(state) = self.files.write().remove(&(scope.clone(), file.to_owned())) else {
            return Ok(false);
        };
        if let Some(vectors) = &self.vectors {
            vectors.delete(scope, &state.chunks)?;
        }
        self.keyword.delete_file(scope, file)?;
        self.keyword.commit()?;
        Ok(true)
    }

    /// Removes a whole scope (a deleted vector store). Errors: `Index`.
    pub fn delete_scope(&self, scope: &Scope) -> Result<()> {
        self.files.write().retain(|(s, _), _| s != scope);
        if let Some(vectors) = &self.vectors {
            vectors.delete_scope(scope)?;
        }
        self.keyword.delete_scope(scope)?;
        self.keyword.commit()
    }

    /// Searches a scope: BM25 always, vectors when the request has a query vector and the engine
    /// a vector index, fused by RRF. Errors: `InvalidParameter` (`max_num_results`,
    /// `filters`, `ranking_options`), `DimensionMismatch`, `Index`.
    pub fn search(&self, scope: &Scope, req: &SearchRequest<'_>) -> Result<Vec<FusedHit>> {
        if !(1..=MAX_NUM_RESULTS).contains(&req.max_num_results) {
            return Err(SearchError::invalid(
                "max_num_results",
                format!("must be between 1 and {MAX_NUM_RESULTS}, got {}", req.max_num_results),
            ));
        }
        if !(0.0..=1.0).contains(&req.score_threshold) {
            return Err(SearchError::invalid("ranking_options.score_threshold", "must be between 0 and 1"));
        }
        req.weights.validate()?;
        if let Some(f) = req.filter {
            f.validate()?;
        }
        // Each list contributes more candidates than asked, so that fusion can promote a chunk
        // ranked lower by one list and higher by the other.
        let depth = (req.max_num_results * 4).clamp(20, 200);
        let text = self.keyword.search(scope, req.text, depth, req.filter)?;
        let vector = match (&self.vectors, req.vector) {
            (Some(index), Some(q)) => index.search(scope, q, depth, req.filter)?,
            _ => Vec::new(),
        };
        let mut hits = reciprocal_rank_fusion(&text, &vector, &req.weights, req.max_num_results);
        hits.retain(|h| h.score >= req.score_threshold);
        Ok(hits)
    }
}
