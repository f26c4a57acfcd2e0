//! `RagApi` for `HttpInferenceClient`: paths and types over the shared remote client, which
//! maps the error envelope back to the same `InferenceError` variants. An upload goes as the
//! same multipart form a client of the routes sends; a file's content comes back as raw bytes
//! with its type and name from the answer's headers.

use crate::client::HttpInferenceClient;
use crate::error::InferenceError;
use crate::rag_api::*;
use async_trait::async_trait;
use auth::Principal;
use reqwest::multipart::{Form, Part};

/// `id` as one path segment. An id that would leave its segment names nothing: the answer the
/// service would give for an unknown id, without a request.
fn segment(id: &str, not_found: fn(String) -> InferenceError) -> Result<&str, InferenceError> {
    if id.is_empty() || id.contains(['/', '?', '#', '%']) {
        return Err(not_found(id.to_owned()));
    }
    Ok(id)
}

fn file_path(id: &str) -> Result<String, InferenceError> {
    Ok(format!("/v1/files/{}", segment(id, InferenceError::FileNotFound)?))
}

fn store_path(id: &str) -> Result<String, InferenceError> {
    Ok(format!("/v1/vector_stores/{}", segment(id, InferenceError::VectorStoreNotFound)?))
}

fn store_file_path(store: &str, file: &str) -> Result<String, InferenceError> {
    Ok(format!("{}/files/{}", store_path(store)?, segment(file, InferenceError::FileNotFound)?))
}

fn batch_path(store: &str, batch: &str) -> Result<String, InferenceError> {
    Ok(format!("{}/file_batches/{}", store_path(store)?, segment(batch, InferenceError::FileBatchNotFound)?))
}

/// Percent-decodes `value` (RFC 3986); `None` when an escape is broken.
fn percent_decode(value: &str) -> Option<Vec<u8>> {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Some(out)
}

/// The file name of a `Content-Disposition` value as the routes write it: the UTF-8
/// `filename*=UTF-8''…` when present, else the quoted `filename="…"`.
fn filename_of(disposition: &str) -> Option<String> {
    let params = || disposition.split(';').map(str::trim).filter_map(|p| p.split_once('='));
    let extended = params().find(|(k, _)| k.eq_ignore_ascii_case("filename*")).and_then(|(_, v)| {
        let (charset, rest) = v.split_once('\'')?;
        let (_, encoded) = rest.split_once('\'')?;
        charset.eq_ignore_ascii_case("utf-8").then(|| String::from_utf8(percent_decode(encoded)?).ok())?
    });
    extended.or_else(|| {
        // The quoted form may hold `;`: read it from the parameter's start to its closing quote.
        let start = disposition.find("filename=\"")? + "filename=\"".len();
        let mut name = String::new();
        let mut chars = disposition[start..].chars();
        while let Some(c) = chars.next() {
            match c {
                '\\' => name.push(chars.next()?),
                '"' => return Some(name),
                c => name.push(c),
            }
        }
        None
    })
}

#[async_trait]
impl RagApi for HttpInferenceClient {
    async fn create_file(&self, caller: &Principal, upload: FileUpload) -> Result<FileObject, InferenceError> {
        let mut file = Part::bytes(upload.bytes).file_name(upload.filename);
        if let Some(content_type) = &upload.content_type {
            file = file
                .mime_str(content_type)
                .map_err(|_| InferenceError::validation("file", format!("`{content_type}` is not a content type.")))?;
        }
        let form = Form::new().text("purpose", upload.purpose).part("file", file);
        self.remote.post("/v1/files").bearer(&caller.credential).multipart(form).fetch().await
    }

    async fn list_files(&self, caller: &Principal, query: ListQuery) -> Result<ObjectList<FileObject>, InferenceError> {
        self.remote.get("/v1/files").bearer(&caller.credential).query(&query).fetch().await
    }

    async fn file(&self, caller: &Principal, id: &str) -> Result<FileObject, InferenceError> {
        self.remote.get(&file_path(id)?).bearer(&caller.credential).fetch().await
    }

    async fn file_content(&self, caller: &Principal, id: &str) -> Result<FileContent, InferenceError> {
        let path = format!("{}/content", file_path(id)?);
        let response = self.remote.get(&path).bearer(&caller.credential).send::<InferenceError>().await?;
        let header = |name| response.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
        let content_type = header(reqwest::header::CONTENT_TYPE).unwrap_or_else(|| "application/octet-stream".into());
        let filename = header(reqwest::header::CONTENT_DISPOSITION).and_then(|d| filename_of(&d)).unwrap_or_default();
        let bytes = response
            .bytes()
            .await
            .map_err(|e| InferenceError::Unavailable(format!("the file's content was cut: {}", e.without_url())))?;
        Ok(FileContent { filename, content_type, bytes: bytes.to_vec() })
    }

    async fn delete_file(&self, caller: &Principal, id: &str) -> Result<Deleted, InferenceError> {
        self.remote.delete(&file_path(id)?).bearer(&caller.credential).fetch().await
    }

    async fn create_vector_store(
        &self,
        caller: &Principal,
        request: CreateVectorStoreRequest,
    ) -> Result<VectorStore, InferenceError> {
        self.remote.post("/v1/vector_stores").bearer(&caller.credential).json(&request).fetch().await
    }

    async fn list_vector_stores(
        &self,
        caller: &Principal,
        query: ListQuery,
    ) -> Result<ObjectList<VectorStore>, InferenceError> {
        self.remote.get("/v1/vector_stores").bearer(&caller.credential).query(&query).fetch().await
    }

    async fn vector_store(&self, caller: &Principal, id: &str) -> Result<VectorStore, InferenceError> {
        self.remote.get(&store_path(id)?).bearer(&caller.credential).fetch().await
    }

    async fn update_vector_store(
        &self,
        caller: &Principal,
        id: &str,
        request: UpdateVectorStoreRequest,
    ) -> Result<VectorStore, InferenceError> {
        self.remote.post(&store_path(id)?).bearer(&caller.credential).json(&request).fetch().await
    }

    async fn delete_vector_store(&self, caller: &Principal, id: &str) -> Result<Deleted, InferenceError> {
        self.remote.delete(&store_path(id)?).bearer(&caller.credential).fetch().await
    }

    async fn attach_file(
        &self,
        caller: &Principal,
        store_id: &str,
        request: CreateVectorStoreFileRequest,
    ) -> Result<VectorStoreFile, InferenceError> {
        let path = format!("{}/files", store_path(store_id)?);
        self.remote.post(&path).bearer(&caller.credential).json(&request).fetch().await
    }

    async fn list_vector_store_files(
        &self,
        caller: &Principal,
        store_id: &str,
        query: ListQuery,
    ) -> Result<ObjectList<VectorStoreFile>, InferenceError> {
        let path = format!("{}/files", store_path(store_id)?);
        self.remote.get(&path).bearer(&caller.credential).query(&query).fetch().await
    }

    async fn vector_store_file(
        &self,
        caller: &Principal,
        store_id: &str,
        file_id: &str,
    ) -> Result<VectorStoreFile, InferenceError> {
        self.remote.get(&store_file_path(store_id, file_id)?).bearer(&caller.credential).fetch().await
    }

    async fn detach_file(&self, caller: &Principal, store_id: &str, file_id: &str) -> Result<Deleted, InferenceError> {
        self.remote.delete(&store_file_path(store_id, file_id)?).bearer(&caller.credential).fetch().await
    }

    async fn create_file_batch(
        &self,
        caller: &Principal,
        store_id: &str,
        request: CreateFileBatchRequest,
    ) -> Result<VectorStoreFileBatch, InferenceError> {
        let path = format!("{}/file_batches", store_path(store_id)?);
        self.remote.post(&path).bearer(&caller.credential).json(&request).fetch().await
    }

    async fn file_batch(
        &self,
        caller: &Principal,
        store_id: &str,
        batch_id: &str,
    ) -> Result<VectorStoreFileBatch, InferenceError> {
        self.remote.get(&batch_path(store_id, batch_id)?).bearer(&caller.credential).fetch().await
    }

    async fn cancel_file_batch(
        &self,
        caller: &Principal,
        store_id: &str,
        batch_id: &str,
    ) -> Result<VectorStoreFileBatch, InferenceError> {
        let path = format!("{}/cancel", batch_path(store_id, batch_id)?);
        self.remote.post(&path).bearer(&caller.credential).fetch().await
    }

    async fn list_file_batch_files(
        &self,
        caller: &Principal,
        store_id: &str,
        batch_id: &str,
        query: ListQuery,
    ) -> Result<ObjectList<VectorStoreFile>, InferenceError> {
        let path = format!("{}/files", batch_path(store_id, batch_id)?);
        self.remote.get(&path).bearer(&caller.credential).query(&query).fetch().await
    }

    async fn search(
        &self,
        caller: &Principal,
        store_id: &str,
        request: VectorStoreSearchRequest,
    ) -> Result<SearchResultsPage, InferenceError> {
        let path = format!("{}/search", store_path(store_id)?);
        self.remote.post(&path).bearer(&caller.credential).json(&request).fetch().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_name_is_read_back_as_the_routes_write_it() {
        assert_eq!(filename_of("attachment; filename=\"report.pdf\"").as_deref(), Some("report.pdf"));
        assert_eq!(filename_of("attachment; filename=\"a; b \\\"c\\\".txt\"").as_deref(), Some("a; b \"c\".txt"));
        assert_eq!(
            filename_of("attachment; filename=\"r_sum_.txt\"; filename*=UTF-8''r%C3%A9sum%C3%A9.txt").as_deref(),
            Some("résumé.txt")
        );
        assert_eq!(filename_of("attachment").as_deref(), None);
        assert_eq!(percent_decode("%zz"), None);
    }

    #[test]
    fn an_id_that_would_leave_its_segment_is_not_found_without_a_request() {
        assert_eq!(file_path("file_1").unwrap(), "/v1/files/file_1");
        assert_eq!(file_path("../x"), Err(InferenceError::FileNotFound("../x".into())));
        assert_eq!(store_file_path("vs_1", "file_1").unwrap(), "/v1/vector_stores/vs_1/files/file_1");
        assert_eq!(store_file_path("", "file_1"), Err(InferenceError::VectorStoreNotFound(String::new())));
        assert_eq!(store_file_path("vs_1", "a?b"), Err(InferenceError::FileNotFound("a?b".into())));
        assert_eq!(batch_path("vs_1", "vsfb_1").unwrap(), "/v1/vector_stores/vs_1/file_batches/vsfb_1");
        assert_eq!(batch_path("vs_1", "a/b"), Err(InferenceError::FileBatchNotFound("a/b".into())));
    }
}
