//! Vector-store file batches (OpenAI's `file_batches`): files attached together through the
//! same path as one attach (`attach_rows`), checked all together before anything is stored,
//! and cancelled together.
//!
//! A batch stores only its members: its `status` and `file_counts` are read from the
//! attachments, so they can never disagree with them. The cancel moves each member still
//! `in_progress` to `cancelled` by a conditional update; an ingestion then finds the file not in
//! progress (before starting, or at its one writing transaction, whose first statement is the
//! conditional update to `completed`) and writes nothing.

use super::expiry;
use super::service::{RagService, attach_rows, count, is_id, organization, page, store_file_object};
use super::store::{self, BatchRow, Fail};
use super::validate;
use crate::error::InferenceError;
use crate::rag_api::*;
use auth::Principal;
use std::collections::HashSet;

/// The files a batch request names, each as a single attach's request, in order, each file
/// once (the first mention wins). Errors: `invalid_request` (none, too many, both forms).
fn requests(request: CreateFileBatchRequest) -> Result<Vec<CreateVectorStoreFileRequest>, InferenceError> {
    let CreateFileBatchRequest { file_ids, files, attributes, chunking_strategy } = request;
    let param = if file_ids.is_empty() { "files" } else { "file_ids" };
    let all = match (file_ids.is_empty(), files.is_empty()) {
        (false, false) => {
            return Err(InferenceError::validation("files", "Give either `file_ids` or `files`, not both."));
        }
        (true, true) => {
            return Err(InferenceError::validation("file_ids", "Missing required parameter: 'file_ids'."));
        }
        (false, true) => file_ids
            .into_iter()
            .map(|file_id| CreateVectorStoreFileRequest {
                file_id,
                attributes: attributes.clone(),
                chunking_strategy: chunking_strategy.clone(),
            })
            .collect(),
        (true, false) => {
            if attributes.is_some() || chunking_strategy.is_some() {
                return Err(InferenceError::validation(
                    "files",
                    "With `files`, give `attributes` and `chunking_strategy` per file.",
                ));
            }
            files
        }
    };
    if all.len() > MAX_BATCH_FILES {
        return Err(InferenceError::validation(param, format!("A batch has at most {MAX_BATCH_FILES} files.")));
    }
    let mut seen = HashSet::new();
    Ok(all.into_iter().filter(|r| seen.insert(r.file_id.clone())).collect())
}

/// A batch's status from its files' counts: `in_progress` while any file is; then `cancelled`
/// when a file was cancelled, `failed` when every file failed (nothing of it is searchable),
/// else `completed` (failed files, if some, are in `file_counts.failed`).
pub(crate) fn status(counts: &FileCounts) -> &'static str {
    if counts.in_progress > 0 {
        "in_progress"
    } else if counts.cancelled > 0 {
        "cancelled"
    } else if counts.total > 0 && counts.failed == counts.total {
        "failed"
    } else {
        "completed"
    }
}

impl RagService {
    pub(super) async fn create_batch(
        &self,
        caller: &Principal,
        store_id: &str,
        request: CreateFileBatchRequest,
    ) -> Result<VectorStoreFileBatch, InferenceError> {
        let org = organization(caller)?;
        let requests = requests(request)?;
        let now = self.now();
        let vs = self.store_row(org, store_id).await?;
        expiry::usable(&vs, now)?;
        // Every file checked in one query, before anything is stored: all or none.
        let ids: Vec<String> = requests.iter().map(|r| r.file_id.clone()).collect();
        let (o, wanted) = (org.to_string(), ids.clone());
        let owned: HashSet<String> =
            store::run(&self.inner.db, move |conn| store::owned_file_ids(conn, &o, &wanted).map_err(Fail::from))
                .await?
                .into_iter()
                .collect();
        if let Some(missing) = ids.iter().find(|id| !owned.contains(*id)) {
            return Err(InferenceError::FileNotFound(missing.clone()));
        }
        let rows =
            requests.iter().map(|r| self.attachment_for(caller, org, store_id, r)).collect::<Result<Vec<_>, _>>()?;
        let batch = BatchRow {
            id: FileBatchId::new().to_string(),
            vector_store_id: store_id.to_owned(),
            organization_id: org.to_string(),
            created_at: now,
        };
        let (jobs, inserted) = (self.inner.jobs.clone(), batch.clone());
        // Attaching is activity.
        let active = now.max(vs.last_active_at);
        store::transaction(&self.inner.db, move |conn| {
            attach_rows(conn, &jobs, &inserted.vector_store_id, active, &rows)?;
            store::insert_batch(conn, &inserted, &ids)?;
            Ok::<_, Fail>(())
        })
        .await?;
        tracing::info!(rag.batch = %batch.id, rag.files = owned.len(), "file batch created");
        self.batch_object(batch).await
    }

    /// The batch, if it is one of this store of the caller's organization. Errors:
    /// `vector_store_not_found`, `file_batch_not_found`.
    pub(super) async fn batch_row(
        &self,
        caller: &Principal,
        store_id: &str,
        batch_id: &str,
    ) -> Result<BatchRow, InferenceError> {
        let org = organization(caller)?;
        self.store_row(org, store_id).await?;
        let (org, store, batch) = (org.to_string(), store_id.to_owned(), batch_id.to_owned());
        let found =
            store::run(&self.inner.db, move |conn| store::find_batch(conn, &org, &store, &batch).map_err(Fail::from))
                .await?;
        found.ok_or_else(|| InferenceError::FileBatchNotFound(batch_id.to_owned()))
    }

    /// The API object of a batch, its counts read now in one query.
    pub(super) async fn batch_object(&self, row: BatchRow) -> Result<VectorStoreFileBatch, InferenceError> {
        let id = row.id.clone();
        let counts = store::run(&self.inner.db, move |conn| store::batch_counts(conn, &id).map_err(Fail::from)).await?;
        let mut file_counts = FileCounts::default();
        for (status, n) in counts {
            count(&mut file_counts, &status, n);
        }
        Ok(VectorStoreFileBatch {
            id: row.id,
            object: "vector_store.files_batch".into(),
            created_at: row.created_at,
            vector_store_id: row.vector_store_id,
            status: status(&file_counts).into(),
            file_counts,
        })
    }

    pub(super) async fn cancel_batch(
        &self,
        caller: &Principal,
        store_id: &str,
        batch_id: &str,
    ) -> Result<VectorStoreFileBatch, InferenceError> {
        let batch = self.batch_row(caller, store_id, batch_id).await?;
        let (org, id, now) = (batch.organization_id.clone(), batch.id.clone(), self.now());
        let cancelled = store::transaction(&self.inner.db, move |conn| {
            store::cancel_batch(conn, &org, &id, now).map_err(Fail::from)
        })
        .await?;
        if cancelled > 0 {
            tracing::info!(rag.cancelled = cancelled, "file batch cancelled");
            self.refresh().await;
        }
        self.batch_object(batch).await
    }

    pub(super) async fn batch_files(
        &self,
        caller: &Principal,
        store_id: &str,
        batch_id: &str,
        query: ListQuery,
    ) -> Result<ObjectList<VectorStoreFile>, InferenceError> {
        let batch = self.batch_row(caller, store_id, batch_id).await?;
        let (keyset, reverse, limit) = validate::keyset(&query, is_id::<FileId>)?;
        validate::status_filter(query.filter.as_deref())?;
        let status = query.filter.clone();
        let rows = store::run(&self.inner.db, move |conn| {
            store::batch_files_page(conn, &batch.id, status.as_deref(), &keyset).map_err(Fail::from)
        })
        .await?;
        let rows: Vec<VectorStoreFile> = rows.iter().map(store_file_object).collect();
        Ok(page(rows, reverse, limit, |f| f.id.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn counts(in_progress: u64, completed: u64, failed: u64, cancelled: u64) -> FileCounts {
        FileCounts { in_progress, completed, failed, cancelled, total: in_progress + completed + failed + cancelled }
    }

    #[test]
    fn the_status_follows_the_files() {
        assert_eq!(status(&counts(1, 2, 1, 1)), "in_progress");
        assert_eq!(status(&counts(0, 2, 1, 1)), "cancelled");
        assert_eq!(status(&counts(0, 0, 3, 0)), "failed");
        assert_eq!(status(&counts(0, 2, 1, 0)), "completed");
        assert_eq!(status(&counts(0, 3, 0, 0)), "completed");
        assert_eq!(status(&counts(0, 0, 0, 0)), "completed", "every file detached");
    }

    fn request(body: serde_json::Value) -> CreateFileBatchRequest {
        serde_json::from_value(body).unwrap()
    }

    fn param(error: InferenceError) -> String {
        match error {
            InferenceError::Validation { field, .. } => field,
            other => panic!("not a validation error: {other:?}"),
        }
    }

    #[test]
    fn both_forms_give_one_request_per_file() {
        let chunking = json!({"type": "auto"});
        let got = requests(request(json!({"file_ids": ["a", "b", "a"], "attributes": {"k": "v"},
            "chunking_strategy": chunking})))
        .unwrap();
        assert_eq!(got.iter().map(|r| r.file_id.as_str()).collect::<Vec<_>>(), ["a", "b"]);
        assert!(got.iter().all(|r| r.attributes == Some(json!({"k": "v"}).as_object().unwrap().clone())));
        assert!(got.iter().all(|r| r.chunking_strategy == Some(chunking.clone())));
        let got =
            requests(request(json!({"files": [{"file_id": "a", "attributes": {"n": 1}}, {"file_id": "b"}]}))).unwrap();
        assert_eq!(got[0].attributes, Some(json!({"n": 1}).as_object().unwrap().clone()));
        assert_eq!(got[1].attributes, None);
    }

    #[test]
    fn a_batch_names_its_files_one_way_and_not_too_many() {
        assert_eq!(param(requests(request(json!({}))).unwrap_err()), "file_ids");
        let both = json!({"file_ids": ["a"], "files": [{"file_id": "b"}]});
        assert_eq!(param(requests(request(both)).unwrap_err()), "files");
        let shared = json!({"files": [{"file_id": "b"}], "attributes": {"k": "v"}});
        assert_eq!(param(requests(request(shared)).unwrap_err()), "files");
        let many: Vec<String> = (0..=MAX_BATCH_FILES).map(|n| format!("file_{n}")).collect();
        assert_eq!(param(requests(request(json!({"file_ids": many}))).unwrap_err()), "file_ids");
        let most: Vec<String> = (0..MAX_BATCH_FILES).map(|n| format!("file_{n}")).collect();
        assert_eq!(requests(request(json!({"file_ids": most}))).unwrap().len(), MAX_BATCH_FILES);
    }
}
