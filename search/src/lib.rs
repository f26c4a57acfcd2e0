//! Keel's retrieval engine: parsing, token-aware chunking, keyword (BM25) and vector search,
//! reciprocal rank fusion, and a local sentence-transformer embedder. No HTTP and no database:
//! the inference domain drives it and owns the storage. See the crate's README.

pub mod chunk;
pub mod embed;
pub mod engine;
pub mod error;
pub mod filter;
pub mod hnsw;
pub mod hybrid;
pub mod keyword;
pub mod parse;
mod scan;
pub mod vector;

pub use chunk::{Chunk, Chunker, ChunkingStrategy, ContentHash, StaticChunking};
pub use embed::Embedder;
#[cfg(feature = "local-embedder")]
pub use embed::LocalEmbedder;
pub use engine::{IndexChunk, IndexOutcome, PreparedFile, SearchEngine, SearchMode, SearchRequest};
pub use error::{Result, SearchError};
pub use filter::{AttributeValue, Attributes, Filter};
pub use hnsw::{
    EXACT_FILTER_MAX, FILTERED_EXPANSION_MIN, FilterPlan, HnswConfig, HnswIndex, Quantization, filtered_expansion,
};
pub use hybrid::{FusedHit, HybridWeights};
pub use keyword::{KeywordChunk, KeywordHit, KeywordIndex};
pub use parse::{Block, BlockKind, Document, Format};
pub use vector::{Scope, SnapshotInfo, VectorHit, VectorIndex, VectorRecord};
