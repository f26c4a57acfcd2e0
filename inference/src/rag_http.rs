//! The retrieval routes in OpenAI's shapes (`/v1/files`, `/v1/vector_stores`, their files and
//! search), over `web::Data<dyn RagApi>`: the same handlers serve the in-process service and, in
//! a gateway that forwards, the remote client.
//!
//! Authentication, the error envelope (OpenAI's types) and JSON parsing are the model routes'
//! (`crate::http`). Uploads are read part by part as they arrive: the file's bytes are counted
//! on the way in and the upload is refused with 413 `file_too_large` as soon as they pass the
//! limit, so an oversized upload is never held whole in memory.

use crate::error::InferenceError;
use crate::http::{BodyCap, parse};
use crate::rag_api::*;
use actix_multipart::{Field, Multipart};
use actix_web::http::header::{self, ContentDisposition, DispositionParam, DispositionType, HeaderValue};
use actix_web::{HttpResponse, web};
use auth::web::Caller;
use futures_util::StreamExt;
use shared::http::{Query, Resource};
use utoipa::{OpenApi, ToSchema};

type Api = web::Data<dyn RagApi>;

/// The largest file `POST /v1/files` accepts (`inference.rag.max_file_bytes`), as app data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileLimit(pub u64);

/// What an upload may be without a [`FileLimit`] registered: the default of
/// `inference.rag.max_file_bytes`.
fn default_limit() -> u64 {
    crate::config::RagConfig::default().max_file_bytes
}

/// The most a form's other parts (`purpose`, and parts Keel does not know) may hold.
const SMALL_PART_BYTES: usize = 64 * 1024;

/// Registers the routes. Expects `web::Data<dyn RagApi>`, and reads `web::Data<FileLimit>` and
/// `web::Data<BodyCap>` when registered.
pub fn configure(cfg: &mut web::ServiceConfig) {
    Resource::new("/v1/files").post(create_file).get(list_files).register(cfg);
    Resource::new("/v1/files/{file_id}").get(retrieve_file).delete(delete_file).register(cfg);
    Resource::new("/v1/files/{file_id}/content").get(file_content).register(cfg);
    Resource::new("/v1/vector_stores").post(create_vector_store).get(list_vector_stores).register(cfg);
    Resource::new("/v1/vector_stores/{vector_store_id}")
        .get(retrieve_vector_store)
        .post(modify_vector_store)
        .delete(delete_vector_store)
        .register(cfg);
    Resource::new("/v1/vector_stores/{vector_store_id}/files")
        .post(create_vector_store_file)
        .get(list_vector_store_files)
        .register(cfg);
    Resource::new("/v1/vector_stores/{vector_store_id}/files/{file_id}")
        .get(retrieve_vector_store_file)
        .delete(delete_vector_store_file)
        .register(cfg);
    Resource::new("/v1/vector_stores/{vector_store_id}/file_batches")
        .post(create_vector_store_file_batch)
        .register(cfg);
    Resource::new("/v1/vector_stores/{vector_store_id}/file_batches/{batch_id}")
        .get(retrieve_vector_store_file_batch)
        .register(cfg);
    Resource::new("/v1/vector_stores/{vector_store_id}/file_batches/{batch_id}/cancel")
        .post(cancel_vector_store_file_batch)
        .register(cfg);
    Resource::new("/v1/vector_stores/{vector_store_id}/file_batches/{batch_id}/files")
        .get(list_files_in_vector_store_batch)
        .register(cfg);
    Resource::new("/v1/vector_stores/{vector_store_id}/search").post(search_vector_store).register(cfg);
}

/// The codes of `InferenceError` each operation can answer with, beyond the platform's.
pub const ROUTE_ERRORS: &[(&str, &[&str])] = &[
    ("create_file", &["invalid_multipart", "invalid_request", "file_too_large", "permission_denied"]),
    ("list_files", &["invalid_request", "permission_denied"]),
    ("retrieve_file", &["file_not_found", "permission_denied"]),
    ("download_file", &["file_not_found", "permission_denied"]),
    ("delete_file", &["file_not_found", "permission_denied"]),
    ("create_vector_store", &["invalid_json", "invalid_request", "file_not_found", "permission_denied"]),
    ("list_vector_stores", &["invalid_request", "permission_denied"]),
    ("retrieve_vector_store", &["vector_store_not_found", "permission_denied"]),
    (
        "modify_vector_store",
        &["invalid_json", "invalid_request", "vector_store_not_found", "vector_store_expired", "permission_denied"],
    ),
    ("delete_vector_store", &["vector_store_not_found", "permission_denied"]),
    (
        "create_vector_store_file",
        &[
            "invalid_json",
            "invalid_request",
            "vector_store_not_found",
            "vector_store_expired",
            "file_not_found",
            "permission_denied",
        ],
    ),
    ("list_vector_store_files", &["invalid_request", "vector_store_not_found", "permission_denied"]),
    ("retrieve_vector_store_file", &["vector_store_not_found", "file_not_found", "permission_denied"]),
    ("delete_vector_store_file", &["vector_store_not_found", "file_not_found", "permission_denied"]),
    (
        "create_vector_store_file_batch",
        &[
            "invalid_json",
            "invalid_request",
            "vector_store_not_found",
            "vector_store_expired",
            "file_not_found",
            "permission_denied",
        ],
    ),
    ("retrieve_vector_store_file_batch", &["vector_store_not_found", "file_batch_not_found", "permission_denied"]),
    ("cancel_vector_store_file_batch", &["vector_store_not_found", "file_batch_not_found", "permission_denied"]),
    (
        "list_files_in_vector_store_batch",
        &["invalid_request", "vector_store_not_found", "file_batch_not_found", "permission_denied"],
    ),
    (
        "search_vector_store",
        &[
            "invalid_json",
            "invalid_request",
            "vector_store_not_found",
            "vector_store_expired",
            "insufficient_quota",
            "permission_denied",
        ],
    ),
];

/// The OpenAPI description of the routes, with their error codes.
pub fn document() -> utoipa::openapi::OpenApi {
    let mut doc = RagDoc::openapi();
    let unresolved = shared::openapi::domain_errors::<InferenceError>(&mut doc, ROUTE_ERRORS);
    debug_assert!(unresolved.is_empty(), "{unresolved:?}");
    doc
}

#[derive(OpenApi)]
#[openapi(
    paths(
        create_file, list_files, retrieve_file, file_content, delete_file,
        create_vector_store, list_vector_stores, retrieve_vector_store, modify_vector_store, delete_vector_store,
        create_vector_store_file, list_vector_store_files, retrieve_vector_store_file, delete_vector_store_file,
        create_vector_store_file_batch, retrieve_vector_store_file_batch, cancel_vector_store_file_batch,
        list_files_in_vector_store_batch, search_vector_store
    ),
    components(schemas(
        FileUploadForm, FileObject, Deleted, CreateVectorStoreRequest, UpdateVectorStoreRequest, ExpiresAfter,
        FileCounts, VectorStore, CreateVectorStoreFileRequest, LastError, VectorStoreFile, VectorStoreSearchRequest,
        ContentPart, SearchResult, SearchResultsPage, CreateFileBatchRequest, VectorStoreFileBatch
    )),
    tags((name = "retrieval", description = "Files, vector stores and search, in OpenAI's shapes"))
)]
#[derive(Debug)]
pub struct RagDoc;

/// The form of `POST /v1/files` (`multipart/form-data`). Described for the document only: the
/// handler reads the parts as they arrive.
#[derive(Debug, ToSchema)]
#[allow(dead_code)]
struct FileUploadForm {
    /// The file; its part's `filename` names it and its `Content-Type` is kept.
    #[schema(value_type = String, format = Binary)]
    file: Vec<u8>,
    /// `assistants`, `batch`, `fine-tune`, `vision`, `user_data` or `evals`.
    purpose: String,
}

/// A part that does not parse, or a body that is not multipart at all.
fn malformed(error: actix_multipart::MultipartError) -> InferenceError {
    InferenceError::InvalidMultipart(error.to_string())
}

/// The client's name for the file: the UTF-8 `filename*` when given, else `filename`.
fn filename_of(field: &Field) -> String {
    let Some(disposition) = field.content_disposition() else { return String::new() };
    disposition
        .get_filename_ext()
        .and_then(|ext| String::from_utf8(ext.value.clone()).ok())
        .or_else(|| disposition.get_filename().map(str::to_owned))
        .unwrap_or_default()
}

/// Reads a small part whole, as text.
async fn small_part(field: &mut Field, name: &str) -> Result<String, InferenceError> {
    let mut bytes = Vec::new();
    while let Some(chunk) = field.next().await {
        let chunk = chunk.map_err(malformed)?;
        if bytes.len() + chunk.len() > SMALL_PART_BYTES {
            return Err(InferenceError::validation(name, format!("The part '{name}' is too long.")));
        }
        bytes.extend_from_slice(&chunk);
    }
    String::from_utf8(bytes).map_err(|_| InferenceError::validation(name, format!("The part '{name}' is not UTF-8.")))
}

/// Reads the form of an upload: the `file` part (at most `limit` bytes) and `purpose`, in
/// either order; other parts are read and dropped.
pub(crate) async fn read_upload(mut form: Multipart, limit: u64) -> Result<FileUpload, InferenceError> {
    let mut file: Option<(String, Option<String>, Vec<u8>)> = None;
    let mut purpose = None;
    while let Some(field) = form.next().await {
        let mut field = field.map_err(malformed)?;
        match field.name() {
            Some("file") => {
                if file.is_some() {
                    return Err(InferenceError::validation("file", "Send one file per upload."));
                }
                let filename = filename_of(&field);
                let content_type = field.content_type().map(ToString::to_string);
                let mut bytes = Vec::new();
                while let Some(chunk) = field.next().await {
                    let chunk = chunk.map_err(malformed)?;
                    // Refused at the first chunk past the limit: the rest is never read.
                    if (bytes.len() + chunk.len()) as u64 > limit {
                        return Err(InferenceError::FileTooLarge { limit_bytes: limit });
                    }
                    bytes.extend_from_slice(&chunk);
                }
                file = Some((filename, content_type, bytes));
            }
            Some("purpose") => purpose = Some(small_part(&mut field, "purpose").await?.trim().to_owned()),
            other => {
                let name = other.unwrap_or_default().to_owned();
                small_part(&mut field, &name).await?;
            }
        }
    }
    let missing = |name: &str| InferenceError::validation(name, format!("Missing required parameter: '{name}'."));
    let (filename, content_type, bytes) = file.ok_or_else(|| missing("file"))?;
    let purpose = purpose.ok_or_else(|| missing("purpose"))?;
    Ok(FileUpload { filename, content_type, purpose, bytes })
}

/// Upload a file (OpenAI's `POST /v1/files`).
#[utoipa::path(post, path = "/v1/files", tag = "retrieval", operation_id = "create_file",
    security(("bearer" = [])), request_body(content = FileUploadForm, content_type = "multipart/form-data"),
    responses((status = 200, description = "The file, stored.", body = FileObject)))]
async fn create_file(
    api: Api,
    caller: Caller,
    limit: Option<web::Data<FileLimit>>,
    form: Multipart,
) -> Result<HttpResponse, InferenceError> {
    let limit = limit.map_or_else(default_limit, |l| l.0);
    let upload = read_upload(form, limit).await?;
    Ok(HttpResponse::Ok().json(api.create_file(&caller.0, upload).await?))
}

/// The organization's files, newest first by default.
#[utoipa::path(get, path = "/v1/files", tag = "retrieval", operation_id = "list_files",
    security(("bearer" = [])), params(ListQuery),
    responses((status = 200, description = "A page of files.", body = ObjectList<FileObject>)))]
async fn list_files(api: Api, caller: Caller, query: Query<ListQuery>) -> Result<HttpResponse, InferenceError> {
    Ok(HttpResponse::Ok().json(api.list_files(&caller.0, query.into_inner()).await?))
}

/// One file.
#[utoipa::path(get, path = "/v1/files/{file_id}", tag = "retrieval", operation_id = "retrieve_file",
    security(("bearer" = [])), params(("file_id" = String, Path, description = "The file's id (`file_…`)")),
    responses((status = 200, description = "The file.", body = FileObject)))]
async fn retrieve_file(api: Api, caller: Caller, path: web::Path<String>) -> Result<HttpResponse, InferenceError> {
    Ok(HttpResponse::Ok().json(api.file(&caller.0, &path.into_inner()).await?))
}

/// `attachment`, with the name as an ASCII `filename` and, when it is not ASCII, as the UTF-8
/// `filename*` too (RFC 6266), since a header value is ASCII.
fn disposition(filename: &str) -> ContentDisposition {
    let ascii: String = filename.chars().map(|c| if c.is_ascii() && !c.is_ascii_control() { c } else { '_' }).collect();
    let mut parameters = vec![DispositionParam::Filename(ascii.clone())];
    if ascii != filename {
        parameters.push(DispositionParam::FilenameExt(header::ExtendedValue {
            charset: header::Charset::Ext("UTF-8".into()),
            language_tag: None,
            value: filename.as_bytes().to_vec(),
        }));
    }
    ContentDisposition { disposition: DispositionType::Attachment, parameters }
}

/// The file's bytes as uploaded, with its content type and name.
#[utoipa::path(get, path = "/v1/files/{file_id}/content", tag = "retrieval", operation_id = "download_file",
    security(("bearer" = [])), params(("file_id" = String, Path, description = "The file's id (`file_…`)")),
    responses((status = 200, description = "The bytes; `Content-Type` as uploaded (else `application/octet-stream`), \
        `Content-Disposition: attachment` with the file's name.", content_type = "application/octet-stream", body = Vec<u8>)))]
async fn file_content(api: Api, caller: Caller, path: web::Path<String>) -> Result<HttpResponse, InferenceError> {
    let content = api.file_content(&caller.0, &path.into_inner()).await?;
    let content_type =
        HeaderValue::from_str(&content.content_type).unwrap_or(HeaderValue::from_static("application/octet-stream"));
    // The type is the uploader's: a browser must neither sniff nor render it in place.
    Ok(HttpResponse::Ok()
        .insert_header((header::CONTENT_TYPE, content_type))
        .insert_header(disposition(&content.filename))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .body(content.bytes))
}

/// Delete a file: it is detached from every store and its chunks are removed.
#[utoipa::path(delete, path = "/v1/files/{file_id}", tag = "retrieval", operation_id = "delete_file",
    security(("bearer" = [])), params(("file_id" = String, Path, description = "The file's id (`file_…`)")),
    responses((status = 200, description = "`{\"id\", \"object\": \"file\", \"deleted\": true}`.", body = Deleted)))]
async fn delete_file(api: Api, caller: Caller, path: web::Path<String>) -> Result<HttpResponse, InferenceError> {
    Ok(HttpResponse::Ok().json(api.delete_file(&caller.0, &path.into_inner()).await?))
}

/// Create a vector store, attaching `file_ids` at once.
#[utoipa::path(post, path = "/v1/vector_stores", tag = "retrieval", operation_id = "create_vector_store",
    security(("bearer" = [])), request_body = CreateVectorStoreRequest,
    responses((status = 200, description = "The store.", body = VectorStore)))]
async fn create_vector_store(
    api: Api,
    caller: Caller,
    cap: Option<web::Data<BodyCap>>,
    payload: web::Payload,
) -> Result<HttpResponse, InferenceError> {
    let request = parse(cap, payload).await?;
    Ok(HttpResponse::Ok().json(api.create_vector_store(&caller.0, request).await?))
}

/// The organization's vector stores, newest first by default.
#[utoipa::path(get, path = "/v1/vector_stores", tag = "retrieval", operation_id = "list_vector_stores",
    security(("bearer" = [])), params(ListQuery),
    responses((status = 200, description = "A page of stores.", body = ObjectList<VectorStore>)))]
async fn list_vector_stores(api: Api, caller: Caller, query: Query<ListQuery>) -> Result<HttpResponse, InferenceError> {
    Ok(HttpResponse::Ok().json(api.list_vector_stores(&caller.0, query.into_inner()).await?))
}

/// One vector store, with its `file_counts`.
#[utoipa::path(get, path = "/v1/vector_stores/{vector_store_id}", tag = "retrieval",
    operation_id = "retrieve_vector_store", security(("bearer" = [])),
    params(("vector_store_id" = String, Path, description = "The store's id (`vs_…`)")),
    responses((status = 200, description = "The store.", body = VectorStore)))]
async fn retrieve_vector_store(
    api: Api,
    caller: Caller,
    path: web::Path<String>,
) -> Result<HttpResponse, InferenceError> {
    Ok(HttpResponse::Ok().json(api.vector_store(&caller.0, &path.into_inner()).await?))
}

/// Change a vector store's name, expiry or metadata.
#[utoipa::path(post, path = "/v1/vector_stores/{vector_store_id}", tag = "retrieval",
    operation_id = "modify_vector_store", security(("bearer" = [])), request_body = UpdateVectorStoreRequest,
    params(("vector_store_id" = String, Path, description = "The store's id (`vs_…`)")),
    responses((status = 200, description = "The store.", body = VectorStore)))]
async fn modify_vector_store(
    api: Api,
    caller: Caller,
    path: web::Path<String>,
    cap: Option<web::Data<BodyCap>>,
    payload: web::Payload,
) -> Result<HttpResponse, InferenceError> {
    let request = parse(cap, payload).await?;
    Ok(HttpResponse::Ok().json(api.update_vector_store(&caller.0, &path.into_inner(), request).await?))
}

/// Delete a vector store and its chunks (the files stay).
#[utoipa::path(delete, path = "/v1/vector_stores/{vector_store_id}", tag = "retrieval",
    operation_id = "delete_vector_store", security(("bearer" = [])),
    params(("vector_store_id" = String, Path, description = "The store's id (`vs_…`)")),
    responses((status = 200, description = "`{\"id\", \"object\": \"vector_store.deleted\", \"deleted\": true}`.", body = Deleted)))]
async fn delete_vector_store(
    api: Api,
    caller: Caller,
    path: web::Path<String>,
) -> Result<HttpResponse, InferenceError> {
    Ok(HttpResponse::Ok().json(api.delete_vector_store(&caller.0, &path.into_inner()).await?))
}

/// Attach a file to a vector store; its ingestion runs in the background (`in_progress`, then
/// `completed` or `failed` with `last_error`).
#[utoipa::path(post, path = "/v1/vector_stores/{vector_store_id}/files", tag = "retrieval",
    operation_id = "create_vector_store_file", security(("bearer" = [])), request_body = CreateVectorStoreFileRequest,
    params(("vector_store_id" = String, Path, description = "The store's id (`vs_…`)")),
    responses((status = 200, description = "The store's file.", body = VectorStoreFile)))]
async fn create_vector_store_file(
    api: Api,
    caller: Caller,
    path: web::Path<String>,
    cap: Option<web::Data<BodyCap>>,
    payload: web::Payload,
) -> Result<HttpResponse, InferenceError> {
    let request = parse(cap, payload).await?;
    Ok(HttpResponse::Ok().json(api.attach_file(&caller.0, &path.into_inner(), request).await?))
}

/// A vector store's files; `filter` picks a status.
#[utoipa::path(get, path = "/v1/vector_stores/{vector_store_id}/files", tag = "retrieval",
    operation_id = "list_vector_store_files", security(("bearer" = [])),
    params(("vector_store_id" = String, Path, description = "The store's id (`vs_…`)"), ListQuery),
    responses((status = 200, description = "A page of the store's files.", body = ObjectList<VectorStoreFile>)))]
async fn list_vector_store_files(
    api: Api,
    caller: Caller,
    path: web::Path<String>,
    query: Query<ListQuery>,
) -> Result<HttpResponse, InferenceError> {
    Ok(HttpResponse::Ok().json(api.list_vector_store_files(&caller.0, &path.into_inner(), query.into_inner()).await?))
}

/// One file of a vector store, with its ingestion status.
#[utoipa::path(get, path = "/v1/vector_stores/{vector_store_id}/files/{file_id}", tag = "retrieval",
    operation_id = "retrieve_vector_store_file", security(("bearer" = [])),
    params(
        ("vector_store_id" = String, Path, description = "The store's id (`vs_…`)"),
        ("file_id" = String, Path, description = "The file's id (`file_…`)"),
    ),
    responses((status = 200, description = "The store's file.", body = VectorStoreFile)))]
async fn retrieve_vector_store_file(
    api: Api,
    caller: Caller,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, InferenceError> {
    let (store, file) = path.into_inner();
    Ok(HttpResponse::Ok().json(api.vector_store_file(&caller.0, &store, &file).await?))
}

/// Detach a file from a vector store and remove its chunks there (the file stays).
#[utoipa::path(delete, path = "/v1/vector_stores/{vector_store_id}/files/{file_id}", tag = "retrieval",
    operation_id = "delete_vector_store_file", security(("bearer" = [])),
    params(
        ("vector_store_id" = String, Path, description = "The store's id (`vs_…`)"),
        ("file_id" = String, Path, description = "The file's id (`file_…`)"),
    ),
    responses((status = 200, description = "`{\"id\", \"object\": \"vector_store.file.deleted\", \"deleted\": true}`.", body = Deleted)))]
async fn delete_vector_store_file(
    api: Api,
    caller: Caller,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, InferenceError> {
    let (store, file) = path.into_inner();
    Ok(HttpResponse::Ok().json(api.detach_file(&caller.0, &store, &file).await?))
}

/// Attach files together as a batch; each is ingested in the background. All or none: every
/// file is checked before anything is stored.
#[utoipa::path(post, path = "/v1/vector_stores/{vector_store_id}/file_batches", tag = "retrieval",
    operation_id = "create_vector_store_file_batch", security(("bearer" = [])), request_body = CreateFileBatchRequest,
    params(("vector_store_id" = String, Path, description = "The store's id (`vs_…`)")),
    responses((status = 200, description = "The batch.", body = VectorStoreFileBatch)))]
async fn create_vector_store_file_batch(
    api: Api,
    caller: Caller,
    path: web::Path<String>,
    cap: Option<web::Data<BodyCap>>,
    payload: web::Payload,
) -> Result<HttpResponse, InferenceError> {
    let request = parse(cap, payload).await?;
    Ok(HttpResponse::Ok().json(api.create_file_batch(&caller.0, &path.into_inner(), request).await?))
}

/// One batch, with its status and `file_counts` as its files are now.
#[utoipa::path(get, path = "/v1/vector_stores/{vector_store_id}/file_batches/{batch_id}", tag = "retrieval",
    operation_id = "retrieve_vector_store_file_batch", security(("bearer" = [])),
    params(
        ("vector_store_id" = String, Path, description = "The store's id (`vs_…`)"),
        ("batch_id" = String, Path, description = "The batch's id (`vsfb_…`)"),
    ),
    responses((status = 200, description = "The batch.", body = VectorStoreFileBatch)))]
async fn retrieve_vector_store_file_batch(
    api: Api,
    caller: Caller,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, InferenceError> {
    let (store, batch) = path.into_inner();
    Ok(HttpResponse::Ok().json(api.file_batch(&caller.0, &store, &batch).await?))
}

/// Cancel the batch's files still in progress (those done stay as they are).
#[utoipa::path(post, path = "/v1/vector_stores/{vector_store_id}/file_batches/{batch_id}/cancel", tag = "retrieval",
    operation_id = "cancel_vector_store_file_batch", security(("bearer" = [])),
    params(
        ("vector_store_id" = String, Path, description = "The store's id (`vs_…`)"),
        ("batch_id" = String, Path, description = "The batch's id (`vsfb_…`)"),
    ),
    responses((status = 200, description = "The batch after the cancel.", body = VectorStoreFileBatch)))]
async fn cancel_vector_store_file_batch(
    api: Api,
    caller: Caller,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, InferenceError> {
    let (store, batch) = path.into_inner();
    Ok(HttpResponse::Ok().json(api.cancel_file_batch(&caller.0, &store, &batch).await?))
}

/// The batch's files; `filter` picks a status.
#[utoipa::path(get, path = "/v1/vector_stores/{vector_store_id}/file_batches/{batch_id}/files", tag = "retrieval",
    operation_id = "list_files_in_vector_store_batch", security(("bearer" = [])),
    params(
        ("vector_store_id" = String, Path, description = "The store's id (`vs_…`)"),
        ("batch_id" = String, Path, description = "The batch's id (`vsfb_…`)"),
        ListQuery,
    ),
    responses((status = 200, description = "A page of the batch's files.", body = ObjectList<VectorStoreFile>)))]
async fn list_files_in_vector_store_batch(
    api: Api,
    caller: Caller,
    path: web::Path<(String, String)>,
    query: Query<ListQuery>,
) -> Result<HttpResponse, InferenceError> {
    let (store, batch) = path.into_inner();
    Ok(HttpResponse::Ok().json(api.list_file_batch_files(&caller.0, &store, &batch, query.into_inner()).await?))
}

/// Search a vector store: BM25, plus vectors when an embedder is configured, fused by
/// reciprocal rank; `filters` on the files' attributes.
#[utoipa::path(post, path = "/v1/vector_stores/{vector_store_id}/search", tag = "retrieval",
    operation_id = "search_vector_store", security(("bearer" = [])), request_body = VectorStoreSearchRequest,
    params(("vector_store_id" = String, Path, description = "The store's id (`vs_…`)")),
    responses((status = 200, description = "The chunks found, best first.", body = SearchResultsPage)))]
async fn search_vector_store(
    api: Api,
    caller: Caller,
    path: web::Path<String>,
    cap: Option<web::Data<BodyCap>>,
    payload: web::Payload,
) -> Result<HttpResponse, InferenceError> {
    let request = parse(cap, payload).await?;
    Ok(HttpResponse::Ok().json(api.search(&caller.0, &path.into_inner(), request).await?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_multipart::test::{
        TestFormField, create_form_data_payload_and_headers, create_form_data_payload_and_headers_from_fields,
    };
    use actix_web::http::header::HeaderMap;

    #[test]
    fn the_document_resolves_every_error_code() {
        let mut doc = RagDoc::openapi();
        assert_eq!(shared::openapi::domain_errors::<InferenceError>(&mut doc, ROUTE_ERRORS), Vec::<String>::new());
    }

    /// A form of `parts` (name, filename, bytes) as a client would send it, arriving in small
    /// chunks as from a socket; a part with a filename is `text/plain`.
    fn form(parts: &[(&str, Option<&str>, &[u8])]) -> Multipart {
        let fields = parts.iter().map(|(name, filename, bytes)| {
            let field = TestFormField::new(*name, web::Bytes::copy_from_slice(bytes));
            match filename {
                Some(filename) => field.filename(*filename).content_type(actix_web::mime::TEXT_PLAIN),
                None => field,
            }
        });
        let (body, headers) = create_form_data_payload_and_headers_from_fields(fields);
        let chunks: Vec<_> = body.chunks(7).map(|c| Ok(web::Bytes::copy_from_slice(c))).collect();
        Multipart::new(&headers, futures_util::stream::iter(chunks))
    }

    #[actix_web::test]
    async fn an_upload_is_read_in_either_order_with_its_name_and_type() {
        for parts in [
            vec![("purpose", None, &b" assistants "[..]), ("file", Some("notes.md"), b"# Title\nbody")],
            vec![
                ("file", Some("notes.md"), &b"# Title\nbody"[..]),
                ("extra", None, b"x"),
                ("purpose", None, b"assistants"),
            ],
        ] {
            let upload = read_upload(form(&parts), 100).await.unwrap();
            assert_eq!(
                upload,
                FileUpload {
                    filename: "notes.md".into(),
                    content_type: Some("text/plain".into()),
                    purpose: "assistants".into(),
                    bytes: b"# Title\nbody".to_vec(),
                }
            );
        }
        // Exactly at the limit is accepted.
        let upload = read_upload(form(&[("file", Some("a"), b"12345"), ("purpose", None, b"x")]), 5).await.unwrap();
        assert_eq!(upload.bytes, b"12345");
    }

    #[actix_web::test]
    async fn a_file_past_the_limit_is_refused_before_the_rest_is_read() {
        let big = vec![b'x'; 1_000];
        let error = read_upload(form(&[("file", Some("a"), &big), ("purpose", None, b"x")]), 999).await.unwrap_err();
        assert_eq!(error, InferenceError::FileTooLarge { limit_bytes: 999 });
    }

    #[actix_web::test]
    async fn missing_parts_and_broken_bodies_are_named() {
        let error = read_upload(form(&[("purpose", None, b"assistants")]), 10).await.unwrap_err();
        assert_eq!(error, InferenceError::validation("file", "Missing required parameter: 'file'."));
        let error = read_upload(form(&[("file", Some("a"), b"x")]), 10).await.unwrap_err();
        assert_eq!(error, InferenceError::validation("purpose", "Missing required parameter: 'purpose'."));
        let two = read_upload(form(&[("file", Some("a"), b"x"), ("file", Some("b"), b"y")]), 10).await.unwrap_err();
        assert_eq!(two, InferenceError::validation("file", "Send one file per upload."));

        // Not multipart at all.
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        let body = futures_util::stream::iter([Ok(web::Bytes::from_static(b"{}"))]);
        let error = read_upload(Multipart::new(&headers, body), 10).await.unwrap_err();
        assert!(matches!(error, InferenceError::InvalidMultipart(_)), "{error:?}");
        // Cut in the middle of the file part.
        let (body, headers) = create_form_data_payload_and_headers("file", Some("a.txt".into()), None, "abc".into());
        let cut = body.slice(..body.len() - 10);
        let error = read_upload(Multipart::new(&headers, futures_util::stream::iter([Ok(cut)])), 10).await.unwrap_err();
        assert!(matches!(error, InferenceError::InvalidMultipart(_)), "{error:?}");
    }

    #[test]
    fn a_name_that_is_not_ascii_is_also_sent_as_utf8() {
        assert_eq!(disposition("report.pdf").to_string(), "attachment; filename=\"report.pdf\"");
        assert_eq!(
            disposition("résumé \"v2\".txt").to_string(),
            "attachment; filename=\"r_sum_ \\\"v2\\\".txt\"; filename*=UTF-8''r%C3%A9sum%C3%A9%20%22v2%22.txt"
        );
    }
}
