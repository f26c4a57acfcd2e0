//! The vector index contract. Implementations: [`crate::hnsw::HnswIndex`] (in process, usearch);
//! a later PostgreSQL/pgvector backend implements the same trait.
//!
//! The trait is written so that nothing above it can assume the index lives in this process:
//! every call is fallible ([`SearchError::Index`] for a backend that cannot be reached), ids are the
//! caller's stable chunk ids (UUIDs, not internal slots), results are owned values, filters are
//! the declarative [`Filter`] (translatable to SQL), and the scope is an argument of every call (a
//! table's `WHERE organization = … AND store = …`). The methods are synchronous, like Keel's diesel
//! store functions: call them from a blocking context (`Db::run` or `spawn_blocking`); an
//! in-process search takes about a millisecond.

use std::fmt::Debug;
use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::Result;
use crate::filter::{Attributes, Filter};

/// The unit of isolation: one organization's one vector store. No call on one scope can read or
/// change another's vectors.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Scope {
    /// The owning organization's id.
    pub organization: String,
    /// The vector store's id.
    pub store: String,
}

impl Scope {
    /// A scope from its two ids.
    pub fn new(organization: impl Into<String>, store: impl Into<String>) -> Self {
        Self { organization: organization.into(), store: store.into() }
    }
}

/// A vector to index: the chunk's id, its embedding and its file's attributes (shared by the
/// file's chunks, hence the `Arc`).
#[derive(Debug, Clone, PartialEq)]
pub struct VectorRecord {
    /// The chunk's id.
    pub id: Uuid,
    /// The embedding; its length must equal the index's dimensions.
    pub vector: Vec<f32>,
    /// The attributes filters test.
    pub attributes: Arc<Attributes>,
}

/// A search result.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct VectorHit {
    /// The chunk's id.
    pub id: Uuid,
    /// Cosine similarity with the query, from -1 to 1.
    pub score: f32,
}

/// What a snapshot wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotInfo {
    /// Scopes written.
    pub scopes: usize,
    /// Vectors written.
    pub vectors: usize,
    /// The caller's watermark stored with it.
    pub watermark: u64,
}

/// An approximate nearest-neighbour index over cosine similarity, partitioned by [`Scope`].
pub trait VectorIndex: Send + Sync + Debug {
    /// The length of every vector.
    fn dimensions(&self) -> usize;

    /// Adds vectors to a scope; a record whose id is already there replaces it.
    /// Errors: `DimensionMismatch`, `Index`.
    fn add(&self, scope: &Scope, records: Vec<VectorRecord>) -> Result<()>;

    /// Deletes vectors by id; returns how many were there. Unknown ids are ignored.
    /// Errors: `Index`.
    fn delete(&self, scope: &Scope, ids: &[Uuid]) -> Result<usize>;

    /// Deletes a whole scope (a deleted vector store); returns how many vectors it held.
    /// Errors: `Index`.
    fn delete_scope(&self, scope: &Scope) -> Result<usize>;

    /// The `k` nearest vectors of the scope to `query` among those whose attributes pass
    /// `filter`, best first. An unknown scope has no vectors.
    /// Errors: `DimensionMismatch`, `InvalidParameter` (a filter over the limits), `Index`.
    fn search(&self, scope: &Scope, query: &[f32], k: usize, filter: Option<&Filter>) -> Result<Vec<VectorHit>>;

    /// The number of vectors in a scope. Errors: `Index`.
    fn len(&self, scope: &Scope) -> Result<usize>;

    /// Writes every scope to `dir` (replaced atomically) with the caller's `watermark` (for
    /// example the highest chunk sequence number indexed), so that a restart can
    /// [`restore`](Self::restore) and catch up from the database instead of rebuilding. A backend
    /// whose data is durable by itself writes nothing and returns zero counts.
    /// Errors: `Snapshot`.
    fn snapshot(&self, dir: &Path, watermark: u64) -> Result<SnapshotInfo>;

    /// Replaces the index's content with the snapshot in `dir` and returns its watermark; `None`
    /// when `dir` holds no snapshot. Errors: `Snapshot` (corrupt or of other dimensions).
    fn restore(&self, dir: &Path) -> Result<Option<u64>>;
}
