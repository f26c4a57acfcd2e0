//! `RagService`: files, vector stores and search for an organization, in process. Rows are the
//! source of truth; the process's index (`RagIndex`) follows them through the change log;
//! ingestion runs as durable jobs, one per step (`ingest`).

use super::embedder::Embedder;
use super::expiry;
use super::index::{Load, Query, RagIndex, hnsw_config};
use super::ingest::IngestFile;
use super::store::{self, Fail, FileMeta, NewFileRow, StoreFileRow, StoreRow};
use super::validate;
use crate::config::InferenceConfig;
use crate::error::InferenceError;
use crate::rag_api::*;
use crate::service::{InferenceService, Payer};
use async_trait::async_trait;
use auth::{OrganizationId, Principal, PrincipalKind};
use billing::BillingApi;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use shared::clock::Clock;
use shared::db::Db;
use shared::jobs::Jobs;
use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

/// The in-process retrieval domain. Cheap to clone.
#[derive(Clone)]
pub struct RagService {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub db: Db,
    pub jobs: Jobs,
    pub index: RagIndex,
    pub embedder: Option<Embedder>,
    pub config: crate::config::RagConfig,
    pub clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for RagService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RagService")
            .field("index", &self.inner.index)
            .field("embedder", &self.inner.embedder)
            .finish_non_exhaustive()
    }
}

impl RagService {
    /// The service over the domain's (migrated) database. `inference` embeds through the
    /// providers when `inference.rag.embedding_model` is set; `billing` records a local
    /// embedder's usage. Call [`start`](Self::start) before serving searches; a service never
    /// started (in a process that only runs jobs) ingests, but keeps no index.
    pub fn new(
        db: Db,
        config: &InferenceConfig,
        clock: Arc<dyn Clock>,
        billing: Arc<dyn BillingApi>,
        inference: &InferenceService,
    ) -> Result<Self, String> {
        let rag = config.rag.clone();
        let embedder = match (&rag.embedding_model, &rag.local_model_dir) {
            (Some(model), _) => Some(Embedder::Provider { service: inference.clone(), model: model.clone() }),
            (None, Some(dir)) => Some(local_embedder(dir, rag.embedding_batch_size, billing)?),
            (None, None) => None,
        };
        let hnsw = embedder.as_ref().map(|e| hnsw_config(&rag, e.dimensions()));
        let index = RagIndex::new(db.clone(), &rag, hnsw)?;
        let jobs = Jobs::with_clock(db.clone(), db.settings(), clock.clone());
        Ok(Self { inner: Arc::new(Inner { db, jobs, index, embedder, config: rag, clock }) })
    }

    /// Starts loading the index from the database in the background (tried again with backoff
    /// while that fails), then following the change log every `inference.rag.sync_interval_ms`.
    ///
    /// Returns once the first load has succeeded or failed, or after [`START_WAIT`]: a small
    /// collection is searchable as soon as the gateway serves, and a large one (1M chunks take
    /// minutes) loads while every other route serves. Until it is loaded, searches answer 503
    /// and readiness reports it.
    pub async fn start(&self) {
        let mut load = self.inner.index.subscribe();
        let every = Duration::from_millis(self.inner.config.sync_interval_ms);
        tokio::spawn(load_then_follow(Arc::downgrade(&self.inner), every));
        let tried = load.wait_for(|l| *l == Load::Live || matches!(l, Load::Loading { failures } if *failures > 0));
        if tokio::time::timeout(START_WAIT, tried).await.is_err() {
            tracing::info!(wait_ms = START_WAIT.as_millis() as u64, "retrieval index still loading; serving meanwhile");
        }
    }

    /// Applies the changes other processes (and this one's jobs) wrote since the last catch-up;
    /// returns how many. Searches call it first.
    pub async fn catch_up(&self) -> Result<usize, InferenceError> {
        self.inner.index.catch_up().await
    }

    /// The last change of the log the index reflects.
    pub fn watermark(&self) -> i64 {
        self.inner.index.watermark()
    }

    /// The domain's job queue (ingestion jobs go there).
    pub fn jobs(&self) -> &Jobs {
        &self.inner.jobs
    }

    /// The job handlers of the domain (the ingestion's steps `inference.ingest_file`,
    /// `inference.embed_file_batch` and `inference.index_file`) and its periodic purge of
    /// expired stores (`inference.purge_expired_vector_stores`).
    pub fn registry(&self) -> Result<shared::jobs::Registry, shared::jobs::RegistryError> {
        let mut registry = super::ingest::registry(self)?;
        expiry::register(&mut registry, self)?;
        Ok(registry)
    }

    /// Deletes the vector stores whose expiry has passed, as `DELETE /v1/vector_stores/{id}`
    /// does (chunks, attachments, a change row for every process); returns how many. The
    /// periodic job `inference.purge_expired_vector_stores` runs it.
    pub async fn purge_expired(&self) -> Result<usize, InferenceError> {
        let purged = expiry::purge(self, self.now()).await?;
        if purged > 0 {
            self.refresh().await;
        }
        Ok(purged)
    }

    /// Runs one attachment's ingestion now, every step in turn, as its jobs do (idempotent:
    /// the jobs queued meanwhile find the work done).
    pub async fn ingest(&self, vector_store_id: &str, file_id: &str) -> Result<(), InferenceError> {
        super::ingest::run(&self.inner, vector_store_id, file_id, true).await
    }

    /// Whether the domain's database answers and the retrieval index is loaded (a process that
    /// keeps none is ready without it).
    pub async fn ready(&self) -> Result<(), InferenceError> {
        self.inner.db.ping().await.map_err(shared::db::DbError::into_error)?;
        match self.inner.index.load() {
            Load::Loading { .. } => Err(InferenceError::Unavailable("the retrieval index is still loading".into())),
            Load::Live | Load::Idle => Ok(()),
        }
    }

    /// `hybrid` with an embedder, else `keyword`.
    pub fn search_mode(&self) -> &'static str {
        match self.inner.index.mode() {
            search::SearchMode::Hybrid => "hybrid",
            search::SearchMode::Keyword => "keyword",
        }
    }

    pub(super) fn now(&self) -> i64 {
        self.inner.clock.now().timestamp()
    }
}

#[cfg(feature = "local-embedder")]
fn local_embedder(dir: &std::path::Path, batch: u32, billing: Arc<dyn BillingApi>) -> Result<Embedder, String> {
    let model = search::LocalEmbedder::load(dir, batch as usize)
        .map_err(|e| format!("inference.rag.local_model_dir ({}): {e}", dir.display()))?;
    Ok(Embedder::Local { model: Arc::new(model), billing })
}

#[cfg(not(feature = "local-embedder"))]
fn local_embedder(dir: &std::path::Path, _batch: u32, _billing: Arc<dyn BillingApi>) -> Result<Embedder, String> {
    Err(format!("inference.rag.local_model_dir ({}) needs the `local-embedder` feature", dir.display()))
}

/// Follows the change log until the service is dropped.
/// How long [`RagService::start`] waits for the first load.
const START_WAIT: Duration = Duration::from_secs(10);
/// The longest pause between two attempts to load the index.
const LOAD_BACKOFF_MAX: Duration = Duration::from_secs(30);

/// Loads the index, retrying with doubling pauses until it succeeds, then follows the log.
async fn load_then_follow(inner: Weak<Inner>, every: Duration) {
    let mut pause = Duration::from_millis(250);
    loop {
        let Some(strong) = inner.upgrade() else { return };
        match strong.index.rebuild().await {
            Ok(_) => break,
            Err(e) => tracing::warn!(
                error = %e,
                retry_in_ms = pause.as_millis() as u64,
                "retrieval index could not be loaded; searches answer 503 until it is"
            ),
        }
        drop(strong);
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(LOAD_BACKOFF_MAX);
    }
    follow(inner, every).await;
}

async fn follow(inner: Weak<Inner>, every: Duration) {
    loop {
        tokio::time::sleep(every).await;
        let Some(inner) = inner.upgrade() else { return };
        if let Err(e) = inner.index.catch_up().await {
            tracing::warn!(error = %e, "retrieval index catch-up failed; retrying");
        }
    }
}

/// The caller's organization: retrieval needs an API key.
pub(super) fn organization(caller: &Principal) -> Result<OrganizationId, InferenceError> {
    match (&caller.kind, caller.organization_id) {
        (PrincipalKind::ApiKey, Some(org)) => Ok(org),
        _ => Err(InferenceError::ApiKeyRequired),
    }
}

fn file_object(meta: &FileMeta) -> FileObject {
    FileObject {
        id: meta.id.clone(),
        object: "file".into(),
        bytes: u64::try_from(meta.bytes).unwrap_or(0),
        created_at: meta.created_at,
        filename: meta.filename.clone(),
        purpose: meta.purpose.clone(),
        status: "processed".into(),
    }
}

fn json_map(text: &str) -> Map<String, Value> {
    serde_json::from_str(text).unwrap_or_default()
}

pub(super) fn store_file_object(row: &StoreFileRow) -> VectorStoreFile {
    VectorStoreFile {
        id: row.file_id.clone(),
        object: "vector_store.file".into(),
        usage_bytes: u64::try_from(row.usage_bytes).unwrap_or(0),
        created_at: row.created_at,
        vector_store_id: row.vector_store_id.clone(),
        status: row.status.clone(),
        last_error: match (&row.last_error_code, &row.last_error_message) {
            (Some(code), Some(message)) => Some(LastError { code: code.clone(), message: message.clone() }),
            _ => None,
        },
        chunking_strategy: serde_json::json!({
            "type": "static",
            "static": {
                "max_chunk_size_tokens": row.max_chunk_size_tokens,
                "chunk_overlap_tokens": row.chunk_overlap_tokens,
            }
        }),
        attributes: json_map(&row.attributes),
    }
}

/// Adds `n` files of `status` to the counts (`cancelled` is any status not otherwise named).
pub(super) fn count(c: &mut FileCounts, status: &str, n: i64) {
    let n = u64::try_from(n).unwrap_or(0);
    match status {
        store::IN_PROGRESS => c.in_progress += n,
        store::COMPLETED => c.completed += n,
        store::FAILED => c.failed += n,
        _ => c.cancelled += n,
    }
    c.total += n;
}

/// The attach step every path shares (a file, a batch), in the caller's transaction: marks the
/// store active (a store deleted meanwhile is `vector_store_not_found`), inserts the
/// attachments not there yet and enqueues their ingestion. The activity is written first, so
/// the store's row stays locked until the commit and a purge running meanwhile keeps it.
pub(super) fn attach_rows(
    conn: &mut shared::db::Conn,
    jobs: &Jobs,
    store_id: &str,
    active: i64,
    rows: &[StoreFileRow],
) -> Result<(), Fail> {
    if !store::mark_active(conn, store_id, active)? {
        return Err(Fail(InferenceError::VectorStoreNotFound(store_id.to_owned())));
    }
    for row in rows {
        if store::insert_store_file_if_new(conn, row)? {
            jobs.enqueue(conn, &IngestFile::of(row))?;
        }
    }
    Ok(())
}

/// OpenAI's list from rows read in keyset order (one more than the page, to tell `has_more`).
pub(super) fn page<T>(mut rows: Vec<T>, reverse: bool, limit: usize, id: impl Fn(&T) -> String) -> ObjectList<T> {
    let has_more = rows.len() > limit;
    rows.truncate(limit);
    if reverse {
        rows.reverse();
    }
    ObjectList {
        object: "list".into(),
        first_id: rows.first().map(&id),
        last_id: rows.last().map(&id),
        data: rows,
        has_more,
    }
}

impl RagService {
    async fn file_meta(&self, org: OrganizationId, id: &str) -> Result<FileMeta, InferenceError> {
        let (org, owned) = (org.to_string(), id.to_owned());
        let found =
            store::run(&self.inner.db, move |conn| store::find_file(conn, &org, &owned).map_err(Fail::from)).await?;
        found.ok_or_else(|| InferenceError::FileNotFound(id.to_owned()))
    }

    pub(super) async fn store_row(&self, org: OrganizationId, id: &str) -> Result<StoreRow, InferenceError> {
        let (org, owned) = (org.to_string(), id.to_owned());
        let found =
            store::run(&self.inner.db, move |conn| store::find_store(conn, &org, &owned).map_err(Fail::from)).await?;
        found.ok_or_else(|| InferenceError::VectorStoreNotFound(id.to_owned()))
    }

    /// The API objects of stores, with their file counts read in one query.
    async fn describe(&self, rows: Vec<StoreRow>) -> Result<Vec<VectorStore>, InferenceError> {
        let ids: Vec<String> = rows.iter().map(|r| r.id.clone()).collect();
        let counts = store::run(&self.inner.db, move |conn| store::file_counts(conn, &ids).map_err(Fail::from)).await?;
        let mut per_store: HashMap<String, (FileCounts, u64)> = HashMap::new();
        for (store_id, status, n, bytes) in counts {
            let (c, usage) = per_store.entry(store_id).or_default();
            count(c, &status, n);
            *usage += u64::try_from(bytes).unwrap_or(0);
        }
        let now = self.now();
        Ok(rows
            .into_iter()
            .map(|row| {
                let (file_counts, usage_bytes) = per_store.remove(&row.id).unwrap_or_default();
                let expires_at = expiry::expires_at(&row);
                let status = if expires_at.is_some_and(|t| t <= now) {
                    "expired"
                } else if file_counts.in_progress > 0 {
                    "in_progress"
                } else {
                    "completed"
                };
                VectorStore {
                    id: row.id,
                    object: "vector_store".into(),
                    created_at: row.created_at,
                    name: row.name,
                    usage_bytes,
                    file_counts,
                    status: status.into(),
                    expires_after: row
                        .expires_after_days
                        .map(|d| ExpiresAfter { anchor: "last_active_at".into(), days: u32::try_from(d).unwrap_or(0) }),
                    expires_at,
                    last_active_at: Some(row.last_active_at),
                    metadata: json_map(&row.metadata),
                    search_mode: self.search_mode().into(),
                }
            })
            .collect())
    }

    async fn describe_one(&self, row: StoreRow) -> Result<VectorStore, InferenceError> {
        let id = row.id.clone();
        self.describe(vec![row]).await?.pop().ok_or(InferenceError::VectorStoreNotFound(id))
    }

    /// A new attachment row, `in_progress`.
    fn attachment(
        &self,
        caller: &Principal,
        org: OrganizationId,
        store_id: &str,
        file_id: &str,
        attributes: &search::Attributes,
        chunking: search::StaticChunking,
    ) -> Result<StoreFileRow, InferenceError> {
        Ok(StoreFileRow {
            vector_store_id: store_id.to_owned(),
            file_id: file_id.to_owned(),
            organization_id: org.to_string(),
            api_key_id: caller.api_key_id.map(|k| k.to_string()),
            status: store::IN_PROGRESS.into(),
            last_error_code: None,
            last_error_message: None,
            attributes: serde_json::to_string(attributes).map_err(|e| InferenceError::Internal(e.to_string()))?,
            max_chunk_size_tokens: chunking.max_chunk_size_tokens as i32,
            chunk_overlap_tokens: chunking.chunk_overlap_tokens as i32,
            content_hash: None,
            embedding_model: None,
            usage_bytes: 0,
            created_at: self.now(),
        })
    }

    /// The attachment of `request`'s file, its attributes and chunking checked (the file's
    /// ownership is checked by the caller).
    pub(super) fn attachment_for(
        &self,
        caller: &Principal,
        org: OrganizationId,
        store_id: &str,
        request: &CreateVectorStoreFileRequest,
    ) -> Result<StoreFileRow, InferenceError> {
        let attributes = validate::attributes(request.attributes.as_ref())?;
        let chunking = validate::chunking(request.chunking_strategy.as_ref())?;
        self.attachment(caller, org, store_id, &request.file_id, &attributes, chunking)
    }

    /// Brings this process's index up to date after a change it made (other processes follow
    /// the log); a failure is logged, the next catch-up repairs it.
    pub(super) async fn refresh(&self) {
        if let Err(e) = self.inner.index.catch_up().await {
            tracing::warn!(error = %e, "retrieval index catch-up failed after a change");
        }
    }
}

pub(super) fn is_id<T: std::str::FromStr>(s: &str) -> bool {
    s.parse::<T>().is_ok()
}

#[async_trait]
impl RagApi for RagService {
    #[tracing::instrument(skip_all, fields(rag.bytes = upload.bytes.len()))]
    async fn create_file(&self, caller: &Principal, upload: FileUpload) -> Result<FileObject, InferenceError> {
        let org = organization(caller)?;
        if !FILE_PURPOSES.contains(&upload.purpose.as_str()) {
            return Err(InferenceError::validation(
                "purpose",
                format!("`purpose` must be one of {}.", FILE_PURPOSES.join(", ")),
            ));
        }
        validate::filename(&upload.filename)?;
        let limit = self.inner.config.max_file_bytes;
        if upload.bytes.len() as u64 > limit {
            return Err(InferenceError::FileTooLarge { limit_bytes: limit });
        }
        if upload.bytes.is_empty() {
            return Err(InferenceError::validation("file", "The file is empty."));
        }
        let row = NewFileRow {
            id: FileId::new().to_string(),
            organization_id: org.to_string(),
            filename: upload.filename,
            purpose: upload.purpose,
            content_type: upload.content_type,
            bytes: upload.bytes.len() as i64,
            sha256: hex::encode(Sha256::digest(&upload.bytes)),
            content: upload.bytes,
            created_at: self.now(),
        };
        let meta = FileMeta {
            id: row.id.clone(),
            filename: row.filename.clone(),
            purpose: row.purpose.clone(),
            content_type: row.content_type.clone(),
            bytes: row.bytes,
            created_at: row.created_at,
        };
        store::run(&self.inner.db, move |conn| store::insert_file(conn, &row).map_err(Fail::from)).await?;
        tracing::info!(rag.file = %meta.id, "file stored");
        Ok(file_object(&meta))
    }

    async fn list_files(&self, caller: &Principal, query: ListQuery) -> Result<ObjectList<FileObject>, InferenceError> {
        let org = organization(caller)?.to_string();
        let (keyset, reverse, limit) = validate::keyset(&query, is_id::<FileId>)?;
        let purpose = query.purpose.clone().or(query.filter.clone());
        if let Some(p) = &purpose
            && !FILE_PURPOSES.contains(&p.as_str())
        {
            return Err(InferenceError::validation(
                "purpose",
                format!("`purpose` must be one of {}.", FILE_PURPOSES.join(", ")),
            ));
        }
        let rows = store::run(&self.inner.db, move |conn| {
            store::files_page(conn, &org, purpose.as_deref(), &keyset).map_err(Fail::from)
        })
        .await?;
        let rows: Vec<FileObject> = rows.iter().map(file_object).collect();
        Ok(page(rows, reverse, limit, |f| f.id.clone()))
    }

    async fn file(&self, caller: &Principal, id: &str) -> Result<FileObject, InferenceError> {
        let org = organization(caller)?;
        Ok(file_object(&self.file_meta(org, id).await?))
    }

    async fn file_content(&self, caller: &Principal, id: &str) -> Result<FileContent, InferenceError> {
        let (org, owned) = (organization(caller)?.to_string(), id.to_owned());
        let found =
            store::run(&self.inner.db, move |conn| store::file_content(conn, &org, &owned).map_err(Fail::from)).await?;
        let (meta, bytes) = found.ok_or_else(|| InferenceError::FileNotFound(id.to_owned()))?;
        Ok(FileContent {
            filename: meta.filename,
            content_type: meta.content_type.unwrap_or_else(|| "application/octet-stream".into()),
            bytes,
        })
    }

    #[tracing::instrument(skip_all, fields(rag.file = %id))]
    async fn delete_file(&self, caller: &Principal, id: &str) -> Result<Deleted, InferenceError> {
        let (org, owned, now) = (organization(caller)?.to_string(), id.to_owned(), self.now());
        let deleted = store::transaction(&self.inner.db, move |conn| {
            store::delete_file(conn, &org, &owned, now).map_err(Fail::from)
        })
        .await?;
        if !deleted {
            return Err(InferenceError::FileNotFound(id.to_owned()));
        }
        self.refresh().await;
        Ok(Deleted { id: id.to_owned(), object: "file".into(), deleted: true })
    }

    #[tracing::instrument(skip_all)]
    async fn create_vector_store(
        &self,
        caller: &Principal,
        request: CreateVectorStoreRequest,
    ) -> Result<VectorStore, InferenceError> {
        let org = organization(caller)?;
        validate::name(request.name.as_deref())?;
        let metadata = request.metadata.unwrap_or_default();
        validate::metadata(&metadata)?;
        let days = validate::expires_after(request.expires_after.as_ref())?;
        let chunking = validate::chunking(request.chunking_strategy.as_ref())?;
        for file_id in &request.file_ids {
            self.file_meta(org, file_id).await?;
        }
        let now = self.now();
        let row = StoreRow {
            id: VectorStoreId::new().to_string(),
            organization_id: org.to_string(),
            name: request.name,
            metadata: Value::Object(metadata).to_string(),
            expires_after_days: days,
            last_active_at: now,
            created_at: now,
        };
        let attachments = request
            .file_ids
            .iter()
            .map(|f| self.attachment(caller, org, &row.id, f, &search::Attributes::new(), chunking))
            .collect::<Result<Vec<_>, _>>()?;
        let (jobs, inserted) = (self.inner.jobs.clone(), row.clone());
        store::transaction(&self.inner.db, move |conn| {
            store::insert_store(conn, &inserted)?;
            for attachment in &attachments {
                if store::insert_store_file_if_new(conn, attachment)? {
                    jobs.enqueue(conn, &IngestFile::of(attachment))?;
                }
            }
            Ok::<_, Fail>(())
        })
        .await?;
        tracing::info!(rag.store = %row.id, "vector store created");
        self.describe_one(row).await
    }

    async fn list_vector_stores(
        &self,
        caller: &Principal,
        query: ListQuery,
    ) -> Result<ObjectList<VectorStore>, InferenceError> {
        let org = organization(caller)?.to_string();
        let (keyset, reverse, limit) = validate::keyset(&query, is_id::<VectorStoreId>)?;
        let rows =
            store::run(&self.inner.db, move |conn| store::stores_page(conn, &org, &keyset).map_err(Fail::from)).await?;
        Ok(page(self.describe(rows).await?, reverse, limit, |s| s.id.clone()))
    }

    async fn vector_store(&self, caller: &Principal, id: &str) -> Result<VectorStore, InferenceError> {
        let row = self.store_row(organization(caller)?, id).await?;
        self.describe_one(row).await
    }

    async fn update_vector_store(
        &self,
        caller: &Principal,
        id: &str,
        request: UpdateVectorStoreRequest,
    ) -> Result<VectorStore, InferenceError> {
        let mut row = self.store_row(organization(caller)?, id).await?;
        expiry::usable(&row, self.now())?;
        if let Some(name) = request.name {
            validate::name(Some(&name))?;
            row.name = Some(name);
        }
        if let Some(metadata) = request.metadata {
            validate::metadata(&metadata)?;
            row.metadata = Value::Object(metadata).to_string();
        }
        if let Some(expiry) = request.expires_after {
            row.expires_after_days = validate::expires_after(Some(&expiry))?;
        }
        let updated = row.clone();
        store::run(&self.inner.db, move |conn| store::update_store(conn, &updated).map_err(Fail::from)).await?;
        self.describe_one(row).await
    }

    #[tracing::instrument(skip_all, fields(rag.store = %id))]
    async fn delete_vector_store(&self, caller: &Principal, id: &str) -> Result<Deleted, InferenceError> {
        let (org, owned, now) = (organization(caller)?.to_string(), id.to_owned(), self.now());
        let deleted = store::transaction(&self.inner.db, move |conn| {
            store::delete_store(conn, &org, &owned, now).map_err(Fail::from)
        })
        .await?;
        if !deleted {
            return Err(InferenceError::VectorStoreNotFound(id.to_owned()));
        }
        self.refresh().await;
        Ok(Deleted { id: id.to_owned(), object: "vector_store.deleted".into(), deleted: true })
    }

    #[tracing::instrument(skip_all, fields(rag.store = %store_id, rag.file = %request.file_id))]
    async fn attach_file(
        &self,
        caller: &Principal,
        store_id: &str,
        request: CreateVectorStoreFileRequest,
    ) -> Result<VectorStoreFile, InferenceError> {
        let org = organization(caller)?;
        let now = self.now();
        let vs = self.store_row(org, store_id).await?;
        expiry::usable(&vs, now)?;
        self.file_meta(org, &request.file_id).await?;
        let row = self.attachment_for(caller, org, store_id, &request)?;
        let jobs = self.inner.jobs.clone();
        // Attaching is activity.
        let active = now.max(vs.last_active_at);
        let current = store::transaction(&self.inner.db, move |conn| {
            attach_rows(conn, &jobs, &row.vector_store_id, active, std::slice::from_ref(&row))?;
            let current = store::find_store_file(conn, &row.vector_store_id, &row.file_id)?;
            Ok::<_, Fail>(current)
        })
        .await?;
        let current = current.ok_or_else(|| InferenceError::FileNotFound(request.file_id.clone()))?;
        Ok(store_file_object(&current))
    }

    async fn list_vector_store_files(
        &self,
        caller: &Principal,
        store_id: &str,
        query: ListQuery,
    ) -> Result<ObjectList<VectorStoreFile>, InferenceError> {
        self.store_row(organization(caller)?, store_id).await?;
        let (keyset, reverse, limit) = validate::keyset(&query, is_id::<FileId>)?;
        validate::status_filter(query.filter.as_deref())?;
        let (store_id, status) = (store_id.to_owned(), query.filter.clone());
        let rows = store::run(&self.inner.db, move |conn| {
            store::store_files_page(conn, &store_id, status.as_deref(), &keyset).map_err(Fail::from)
        })
        .await?;
        let Some(rows) = rows else {
            let param = if reverse { "before" } else { "after" };
            return Err(validate::invalid(param, format!("`{param}` is not a file of this vector store.")));
        };
        let rows: Vec<VectorStoreFile> = rows.iter().map(store_file_object).collect();
        Ok(page(rows, reverse, limit, |f| f.id.clone()))
    }

    async fn vector_store_file(
        &self,
        caller: &Principal,
        store_id: &str,
        file_id: &str,
    ) -> Result<VectorStoreFile, InferenceError> {
        self.store_row(organization(caller)?, store_id).await?;
        let (store_id, owned) = (store_id.to_owned(), file_id.to_owned());
        let row =
            store::run(&self.inner.db, move |conn| store::find_store_file(conn, &store_id, &owned).map_err(Fail::from))
                .await?;
        row.map(|r| store_file_object(&r)).ok_or_else(|| InferenceError::FileNotFound(file_id.to_owned()))
    }

    #[tracing::instrument(skip_all, fields(rag.store = %store_id, rag.file = %file_id))]
    async fn detach_file(&self, caller: &Principal, store_id: &str, file_id: &str) -> Result<Deleted, InferenceError> {
        let org = organization(caller)?;
        self.store_row(org, store_id).await?;
        let (org, store, file, now) = (org.to_string(), store_id.to_owned(), file_id.to_owned(), self.now());
        let detached = store::transaction(&self.inner.db, move |conn| {
            store::detach(conn, &org, &store, &file, now).map_err(Fail::from)
        })
        .await?;
        if !detached {
            return Err(InferenceError::FileNotFound(file_id.to_owned()));
        }
        self.refresh().await;
        Ok(Deleted { id: file_id.to_owned(), object: "vector_store.file.deleted".into(), deleted: true })
    }

    #[tracing::instrument(skip_all, fields(rag.store = %store_id, rag.files = request.file_ids.len() + request.files.len()))]
    async fn create_file_batch(
        &self,
        caller: &Principal,
        store_id: &str,
        request: CreateFileBatchRequest,
    ) -> Result<VectorStoreFileBatch, InferenceError> {
        self.create_batch(caller, store_id, request).await
    }

    async fn file_batch(
        &self,
        caller: &Principal,
        store_id: &str,
        batch_id: &str,
    ) -> Result<VectorStoreFileBatch, InferenceError> {
        let batch = self.batch_row(caller, store_id, batch_id).await?;
        self.batch_object(batch).await
    }

    #[tracing::instrument(skip_all, fields(rag.store = %store_id, rag.batch = %batch_id))]
    async fn cancel_file_batch(
        &self,
        caller: &Principal,
        store_id: &str,
        batch_id: &str,
    ) -> Result<VectorStoreFileBatch, InferenceError> {
        self.cancel_batch(caller, store_id, batch_id).await
    }

    async fn list_file_batch_files(
        &self,
        caller: &Principal,
        store_id: &str,
        batch_id: &str,
        query: ListQuery,
    ) -> Result<ObjectList<VectorStoreFile>, InferenceError> {
        self.batch_files(caller, store_id, batch_id, query).await
    }

    #[tracing::instrument(skip_all, fields(rag.store = %store_id))]
    async fn search(
        &self,
        caller: &Principal,
        store_id: &str,
        request: VectorStoreSearchRequest,
    ) -> Result<SearchResultsPage, InferenceError> {
        let org = organization(caller)?;
        let now = self.now();
        // The ownership check's row tells the expiry and how fresh `last_active_at` is.
        let vs = self.store_row(org, store_id).await?;
        expiry::usable(&vs, now)?;
        let queries = validate::queries(&request.query)?;
        let max = validate::max_num_results(request.max_num_results, 10)?;
        let filter = validate::filter(request.filters.as_ref())?;
        let (weights, threshold) = validate::ranking(request.ranking_options.as_ref())?;
        let ranking = async {
            self.inner.index.ensure_live()?;
            self.inner.index.catch_up().await?;
            let vectors = self.query_vectors(caller, org, &queries).await?;
            let scope = search::Scope::new(org.to_string(), store_id);
            let mut best: HashMap<uuid::Uuid, f32> = HashMap::new();
            for (i, text) in queries.iter().enumerate() {
                let vector = vectors.as_ref().and_then(|v| v.get(i).cloned());
                let query = Query {
                    text: text.clone(),
                    vector,
                    max_num_results: max,
                    filter: filter.clone(),
                    weights,
                    score_threshold: threshold,
                };
                let hits = self
                    .inner
                    .index
                    .search(scope.clone(), query)
                    .await
                    .map_err(|e| validate::from_search(e, "query"))?;
                for hit in hits {
                    let score = best.entry(hit.id).or_insert(hit.score);
                    *score = score.max(hit.score);
                }
            }
            Ok::<_, InferenceError>(best)
        };
        // The activity write (when due) runs beside the search rather than after it: it adds no
        // latency, and is done by the time the answer is, so a read that follows sees it.
        let (best, ()) = tokio::join!(ranking, self.record_activity(&vs, now));
        let mut ranked: Vec<(uuid::Uuid, f32)> = best?.into_iter().collect();
        ranked.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        ranked.truncate(max);
        let data = self.results(store_id, &ranked).await?;
        Ok(SearchResultsPage {
            object: "vector_store.search_results.page".into(),
            search_query: queries,
            data,
            has_more: false,
            next_page: None,
        })
    }
}

impl RagService {
    /// Moves the store's `last_active_at` to `now` when it is older than the granularity
    /// ([`expiry::ACTIVITY_GRANULARITY_SECS`]); most searches of a busy store write nothing. A
    /// failure is logged: the search it belongs to has its answer.
    async fn record_activity(&self, vs: &StoreRow, now: i64) {
        if !expiry::stale(vs, now) {
            return;
        }
        let id = vs.id.clone();
        let touched =
            store::run(&self.inner.db, move |conn| store::touch_store(conn, &id, now).map_err(Fail::from)).await;
        if let Err(e) = touched {
            tracing::warn!(error = %e, "vector store activity not recorded");
        }
    }

    /// The queries' embeddings (one call for all), when the index is hybrid.
    async fn query_vectors(
        &self,
        caller: &Principal,
        org: OrganizationId,
        queries: &[String],
    ) -> Result<Option<Vec<Vec<f32>>>, InferenceError> {
        let Some(embedder) = &self.inner.embedder else { return Ok(None) };
        if self.inner.index.mode() != search::SearchMode::Hybrid {
            return Ok(None);
        }
        // Unique per search: a retried HTTP request searches, and is billed, again.
        let call = uuid::Uuid::now_v7().simple().to_string();
        let key = match shared::request_id::current() {
            Some(id) => format!("{id}/rag-query-{call}"),
            None => format!("rag-query-{call}"),
        };
        let payer = Payer { organization_id: org, api_key_id: caller.api_key_id, key };
        embedder.embed(&payer, queries.to_vec()).await.map(Some)
    }

    /// The results of ranked chunk ids, with their text, file name and attributes (chunks
    /// deleted since the index saw them are left out).
    async fn results(&self, store_id: &str, ranked: &[(uuid::Uuid, f32)]) -> Result<Vec<SearchResult>, InferenceError> {
        if ranked.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<String> = ranked.iter().map(|(id, _)| id.to_string()).collect();
        let store_id = store_id.to_owned();
        let (chunks, attributes) = store::run(&self.inner.db, move |conn| {
            let chunks = store::chunks_by_id(conn, &store_id, &ids)?;
            let mut files: Vec<String> = chunks.iter().map(|(c, _)| c.file_id.clone()).collect();
            files.sort();
            files.dedup();
            let attributes = store::attributes_of(conn, &store_id, &files)?;
            Ok::<_, Fail>((chunks, attributes))
        })
        .await?;
        let attributes: HashMap<String, Map<String, Value>> =
            attributes.into_iter().map(|(file, a)| (file, json_map(&a))).collect();
        let by_id: HashMap<String, (store::ChunkRow, String)> =
            chunks.into_iter().map(|(c, name)| (c.id.clone(), (c, name))).collect();
        Ok(ranked
            .iter()
            .filter_map(|(id, score)| {
                let (chunk, filename) = by_id.get(&id.to_string())?;
                Some(SearchResult {
                    file_id: chunk.file_id.clone(),
                    filename: filename.clone(),
                    score: f64::from(*score),
                    attributes: attributes.get(&chunk.file_id).cloned().unwrap_or_default(),
                    content: vec![ContentPart { kind: "text".into(), text: chunk.text.clone() }],
                    chunk_id: chunk.id.clone(),
                })
            })
            .collect())
    }
}
