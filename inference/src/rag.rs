//! Retrieval, in process: files, vector stores, ingestion jobs (in steps), the process's search index and
//! the `RagService` that implements `RagApi` over them (`docs/INFERENCE.md`, "Retrieval").

mod batches;
mod embedder;
mod expiry;
mod index;
mod ingest;
mod service;
mod store;
mod validate;

pub use expiry::PurgeExpiredStores;
pub use ingest::{EmbedBatch, IndexFile, IngestFile};
pub use service::RagService;
