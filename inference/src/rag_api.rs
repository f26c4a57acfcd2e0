//! The retrieval contract: `RagApi` (files, vector stores, search) and its OpenAI wire types.
//!
//! The shapes are OpenAI's (`/v1/files`, `/v1/vector_stores`, `…/files`, `…/search`) so that the
//! official SDKs work unmodified. Filters, attributes and chunking strategies travel as JSON here
//! and are checked by the service (the `search` crate parses them): the contract pulls in neither
//! diesel, actix nor the search engine. Always compiled.

use crate::error::InferenceError;
use async_trait::async_trait;
use auth::Principal;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::{IntoParams, ToSchema};

shared::define_id!(
    /// An uploaded file (`file_…`).
    FileId,
    "file"
);
shared::define_id!(
    /// A vector store (`vs_…`).
    VectorStoreId,
    "vs"
);

shared::define_id!(
    /// A batch of files attached to a vector store together (`vsfb_…`).
    FileBatchId,
    "vsfb"
);

/// The most files one batch may attach (OpenAI's bound).
pub const MAX_BATCH_FILES: usize = 500;

/// The purposes `POST /v1/files` accepts (OpenAI's list). Only the content matters to Keel; the
/// purpose is kept and listed.
pub const FILE_PURPOSES: &[&str] = &["assistants", "batch", "fine-tune", "vision", "user_data", "evals"];

/// A file being uploaded (the multipart form of `POST /v1/files`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileUpload {
    /// The client's file name (the multipart part's `filename`).
    pub filename: String,
    /// The part's content type, when the client sent one.
    pub content_type: Option<String>,
    /// One of [`FILE_PURPOSES`].
    pub purpose: String,
    pub bytes: Vec<u8>,
}

/// `object: "file"`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct FileObject {
    pub id: String,
    /// Always `file`.
    pub object: String,
    /// Size in bytes.
    pub bytes: u64,
    /// Unix seconds.
    pub created_at: i64,
    pub filename: String,
    pub purpose: String,
    /// Always `processed`: a file is stored whole before the upload is answered.
    pub status: String,
}

/// A file's stored content (`GET /v1/files/{id}/content`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileContent {
    pub filename: String,
    /// The content type given at upload, else `application/octet-stream`.
    pub content_type: String,
    pub bytes: Vec<u8>,
}

/// The answer to a delete: `{"id", "object": "file" | "vector_store.deleted" | …, "deleted": true}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Deleted {
    pub id: String,
    /// `file`, `vector_store.deleted` or `vector_store.file.deleted`, as OpenAI answers.
    pub object: String,
    pub deleted: bool,
}

/// OpenAI's cursor list: `{"object": "list", "data", "first_id", "last_id", "has_more"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ObjectList<T> {
    /// Always `list`.
    pub object: String,
    pub data: Vec<T>,
    pub first_id: Option<String>,
    pub last_id: Option<String>,
    pub has_more: bool,
}

/// The query of a list endpoint: `?limit=20&order=desc&after=<id>&before=<id>`, OpenAI's.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, IntoParams, ToSchema)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// 1 to 100, default 20.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
    /// `asc` or `desc` by creation time (default `desc`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order: Option<String>,
    /// Items after this id in the chosen order (the `last_id` of the previous page).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<String>,
    /// Items before this id in the chosen order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before: Option<String>,
    /// Files only: those of this purpose. Vector-store files only: `in_progress`, `completed`,
    /// `failed` or `cancelled`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<String>,
    /// Files only: those of this purpose.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub purpose: Option<String>,
}

/// `POST /v1/vector_stores`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CreateVectorStoreRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Files to attach at once (each as `POST /v1/vector_stores/{id}/files` would).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub file_ids: Vec<String>,
    /// OpenAI's `{"type": "auto"}` or `{"type": "static", "static": {...}}`, for `file_ids`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chunking_strategy: Option<Value>,
    /// `{"anchor": "last_active_at", "days": N}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_after: Option<ExpiresAfter>,
    /// Up to 16 string pairs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Map<String, Value>>,
}

/// `POST /v1/vector_stores/{id}`: each field present replaces the stored one.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct UpdateVectorStoreRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_after: Option<ExpiresAfter>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Map<String, Value>>,
}

/// When a vector store expires: `days` after its `anchor` (only `last_active_at`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ExpiresAfter {
    pub anchor: String,
    pub days: u32,
}

/// How many of a store's files are in each state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct FileCounts {
    pub in_progress: u64,
    pub completed: u64,
    pub failed: u64,
    pub cancelled: u64,
    pub total: u64,
}

/// `object: "vector_store"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct VectorStore {
    pub id: String,
    /// Always `vector_store`.
    pub object: String,
    pub created_at: i64,
    pub name: Option<String>,
    /// Bytes of the store's chunks (text and vectors).
    pub usage_bytes: u64,
    pub file_counts: FileCounts,
    /// `in_progress` while a file is being ingested, `completed` otherwise, `expired` past
    /// `expires_at`.
    pub status: String,
    pub expires_after: Option<ExpiresAfter>,
    pub expires_at: Option<i64>,
    pub last_active_at: Option<i64>,
    pub metadata: Map<String, Value>,
    /// Keel's extension: `hybrid` (BM25 and vectors, fused) when an embedder is configured,
    /// else `keyword` (BM25 alone).
    pub search_mode: String,
}

/// `POST /v1/vector_stores/{id}/files`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CreateVectorStoreFileRequest {
    pub file_id: String,
    /// Up to 16 keys; values are strings (≤ 512 characters), numbers or booleans.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attributes: Option<Map<String, Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chunking_strategy: Option<Value>,
}

/// `POST /v1/vector_stores/{id}/file_batches`: either `file_ids` (all with the same
/// `attributes` and `chunking_strategy`) or `files`, each with its own; not both.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CreateFileBatchRequest {
    /// 1 to 500 files of the organization.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub file_ids: Vec<String>,
    /// OpenAI's newer form: 1 to 500 files, each with its own attributes and chunking.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<CreateVectorStoreFileRequest>,
    /// For `file_ids`: the attributes of every file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attributes: Option<Map<String, Value>>,
    /// For `file_ids`: the chunking of every file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chunking_strategy: Option<Value>,
}

/// `object: "vector_store.files_batch"`: files attached together. `status` and `file_counts`
/// are those of its files now: `in_progress` while any is; then `cancelled` if any was
/// cancelled, `failed` if every one failed, else `completed`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct VectorStoreFileBatch {
    pub id: String,
    /// Always `vector_store.files_batch`.
    pub object: String,
    pub created_at: i64,
    pub vector_store_id: String,
    /// `in_progress`, `completed`, `cancelled` or `failed`.
    pub status: String,
    pub file_counts: FileCounts,
}

/// Why a vector-store file failed: `code` is `server_error`, `unsupported_file` or
/// `invalid_file`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct LastError {
    pub code: String,
    pub message: String,
}

/// `object: "vector_store.file"`: a file attached to a store, and its ingestion.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct VectorStoreFile {
    /// The file's id.
    pub id: String,
    /// Always `vector_store.file`.
    pub object: String,
    pub usage_bytes: u64,
    pub created_at: i64,
    pub vector_store_id: String,
    /// `in_progress`, `completed`, `failed` or `cancelled`.
    pub status: String,
    pub last_error: Option<LastError>,
    /// The strategy used: `{"type": "static", "static": {"max_chunk_size_tokens", "chunk_overlap_tokens"}}`.
    pub chunking_strategy: Value,
    pub attributes: Map<String, Value>,
}

/// `POST /v1/vector_stores/{id}/search`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct VectorStoreSearchRequest {
    /// A string, or several (their results are merged).
    pub query: Value,
    /// 1 to 50, default 10.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_num_results: Option<u32>,
    /// OpenAI's comparison (`eq ne gt gte lt lte in nin`) and compound (`and or`) filters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filters: Option<Value>,
    /// `{"ranker", "score_threshold", "hybrid_search": {"embedding_weight", "text_weight"}}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ranking_options: Option<Value>,
    /// Accepted for compatibility; Keel does not rewrite queries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rewrite_query: Option<bool>,
}

/// One part of a result's content: `{"type": "text", "text"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ContentPart {
    #[serde(rename = "type")]
    pub kind: String,
    pub text: String,
}

/// One chunk found.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SearchResult {
    pub file_id: String,
    pub filename: String,
    /// In (0, 1], higher is better.
    pub score: f64,
    pub attributes: Map<String, Value>,
    pub content: Vec<ContentPart>,
    /// Keel's extension: the chunk's id, which citations name.
    pub chunk_id: String,
}

/// `object: "vector_store.search_results.page"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SearchResultsPage {
    pub object: String,
    pub search_query: Vec<String>,
    pub data: Vec<SearchResult>,
    pub has_more: bool,
    pub next_page: Option<String>,
}

/// Keel's extension field of a chat completion request, `file_search` (with an SDK:
/// `extra_body={"file_search": {...}}`): retrieve from these stores and ground the answer.
/// It is removed before the request reaches the provider.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct FileSearchOptions {
    pub vector_store_ids: Vec<String>,
    /// 1 to 50, default 5.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_num_results: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filters: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ranking_options: Option<Value>,
}

/// One source of a grounded answer (the response's `citations`, Keel's extension).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Citation {
    /// `[n]` in the prompt's numbered sources.
    pub index: u32,
    pub vector_store_id: String,
    pub file_id: String,
    pub filename: String,
    pub chunk_id: String,
    pub score: f64,
}

/// Files, vector stores and search for an organization. Every method acts for `caller`, an API
/// key of the organization that owns the resources; another organization's file or store is
/// `*_not_found`, never `permission_denied`, so that ids do not leak.
///
/// Common errors: `permission_denied` (a session, not an API key), `service_unavailable`
/// (the domain's database), `internal_error`.
#[async_trait]
pub trait RagApi: Send + Sync {
    /// Stores a file. Errors: `invalid_request` (purpose, empty file or name),
    /// `file_too_large` (over `inference.rag.max_file_bytes`).
    async fn create_file(&self, caller: &Principal, upload: FileUpload) -> Result<FileObject, InferenceError>;

    /// The organization's files. Errors: `invalid_request` (limit, order, cursor, purpose).
    async fn list_files(&self, caller: &Principal, query: ListQuery) -> Result<ObjectList<FileObject>, InferenceError>;

    /// Errors: `file_not_found`.
    async fn file(&self, caller: &Principal, id: &str) -> Result<FileObject, InferenceError>;

    /// Errors: `file_not_found`.
    async fn file_content(&self, caller: &Principal, id: &str) -> Result<FileContent, InferenceError>;

    /// Deletes the file, detaches it from every store and removes its chunks and vectors.
    /// Errors: `file_not_found`.
    async fn delete_file(&self, caller: &Principal, id: &str) -> Result<Deleted, InferenceError>;

    /// Errors: `invalid_request` (name, metadata, expiry, chunking strategy), `file_not_found`
    /// (one of `file_ids`).
    async fn create_vector_store(
        &self,
        caller: &Principal,
        request: CreateVectorStoreRequest,
    ) -> Result<VectorStore, InferenceError>;

    /// Errors: `invalid_request` (limit, order, cursor).
    async fn list_vector_stores(
        &self,
        caller: &Principal,
        query: ListQuery,
    ) -> Result<ObjectList<VectorStore>, InferenceError>;

    /// Errors: `vector_store_not_found`.
    async fn vector_store(&self, caller: &Principal, id: &str) -> Result<VectorStore, InferenceError>;

    /// Errors: `vector_store_not_found`, `vector_store_expired`, `invalid_request`.
    async fn update_vector_store(
        &self,
        caller: &Principal,
        id: &str,
        request: UpdateVectorStoreRequest,
    ) -> Result<VectorStore, InferenceError>;

    /// Deletes the store and its chunks and vectors (the files stay). Errors:
    /// `vector_store_not_found`.
    async fn delete_vector_store(&self, caller: &Principal, id: &str) -> Result<Deleted, InferenceError>;

    /// Attaches a file and starts its ingestion (answers at once, `in_progress`); it is the
    /// store's activity (`last_active_at`). Attaching a file already attached answers its
    /// current state. Errors: `vector_store_not_found`, `vector_store_expired`,
    /// `file_not_found`, `invalid_request` (attributes, chunking strategy).
    async fn attach_file(
        &self,
        caller: &Principal,
        store_id: &str,
        request: CreateVectorStoreFileRequest,
    ) -> Result<VectorStoreFile, InferenceError>;

    /// Errors: `vector_store_not_found`, `invalid_request`.
    async fn list_vector_store_files(
        &self,
        caller: &Principal,
        store_id: &str,
        query: ListQuery,
    ) -> Result<ObjectList<VectorStoreFile>, InferenceError>;

    /// Errors: `vector_store_not_found`, `file_not_found` (not attached to this store).
    async fn vector_store_file(
        &self,
        caller: &Principal,
        store_id: &str,
        file_id: &str,
    ) -> Result<VectorStoreFile, InferenceError>;

    /// Detaches the file from the store and removes its chunks and vectors there (the file
    /// stays). Errors: `vector_store_not_found`, `file_not_found`.
    async fn detach_file(&self, caller: &Principal, store_id: &str, file_id: &str) -> Result<Deleted, InferenceError>;

    /// Attaches files together, each as [`attach_file`](Self::attach_file) does (a file
    /// attached already keeps its state and joins the batch), all or none: every file is
    /// checked before anything is stored. Errors: `vector_store_not_found`,
    /// `vector_store_expired`, `file_not_found` (the first file of another organization or
    /// unknown), `invalid_request` (no files, too many, both forms, attributes, chunking).
    async fn create_file_batch(
        &self,
        caller: &Principal,
        store_id: &str,
        request: CreateFileBatchRequest,
    ) -> Result<VectorStoreFileBatch, InferenceError>;

    /// Errors: `vector_store_not_found`, `file_batch_not_found`.
    async fn file_batch(
        &self,
        caller: &Principal,
        store_id: &str,
        batch_id: &str,
    ) -> Result<VectorStoreFileBatch, InferenceError>;

    /// Cancels the batch's files still `in_progress` (a file that finished stays as it is);
    /// a cancelled file is never searchable. Answers the batch after the cancel. Errors:
    /// `vector_store_not_found`, `file_batch_not_found`.
    async fn cancel_file_batch(
        &self,
        caller: &Principal,
        store_id: &str,
        batch_id: &str,
    ) -> Result<VectorStoreFileBatch, InferenceError>;

    /// The batch's files, by file id; `filter` picks a status. Errors:
    /// `vector_store_not_found`, `file_batch_not_found`, `invalid_request`.
    async fn list_file_batch_files(
        &self,
        caller: &Principal,
        store_id: &str,
        batch_id: &str,
        query: ListQuery,
    ) -> Result<ObjectList<VectorStoreFile>, InferenceError>;

    /// Searches the store: BM25, plus vectors when an embedder is configured, fused by
    /// reciprocal rank; it is the store's activity (`last_active_at`, to 5 minutes). Errors:
    /// `vector_store_not_found`, `vector_store_expired`, `invalid_request` (query, filters,
    /// ranking options, max_num_results), `insufficient_quota` (the query's embedding).
    async fn search(
        &self,
        caller: &Principal,
        store_id: &str,
        request: VectorStoreSearchRequest,
    ) -> Result<SearchResultsPage, InferenceError>;
}
