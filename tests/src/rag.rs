//! The retrieval contract, told once as a story over `Arc<dyn RagApi>`: the in-process service
//! (its ingestion jobs run by a worker in the test) and the HTTP client in front of a gateway
//! serving only inference must pass it alike, with the same results and error variants. Also
//! what the retrieval tests share: the documents they upload and the wait for an ingestion.

use auth::{AuthApi, CreateApiKeyRequest, Principal, RequestContext, SignupRequest};
use inference::{
    CreateFileBatchRequest, CreateVectorStoreFileRequest, CreateVectorStoreRequest, FileCounts, FileUpload,
    InferenceError, ListQuery, RagApi, UpdateVectorStoreRequest, VectorStoreFile, VectorStoreSearchRequest,
};
use serde_json::{Map, Value, json};
use shared::DomainError;
use shared::jobs::{JobsConfig, NoObserver, Worker, WorkerHandle};
use shared::testing::TestDatabase;
use std::sync::Arc;
use std::time::{Duration, Instant};

const PASSWORD: &str = "correct horse battery";

/// The animals of [`field_notes`], one to a paragraph: a search for one finds its paragraph only.
pub const ANIMALS: [&str; 6] = ["zebrafish", "axolotl", "planarian", "starfish", "salamander", "hydra"];

/// A Markdown document of one paragraph per animal, each long enough (about 130 tokens) to be
/// a chunk of its own with [`small_chunks`].
pub fn field_notes() -> String {
    let mut text = String::from("# Field notes on regeneration\n\n");
    for animal in ANIMALS {
        // One paragraph per animal and no headings: a chunk of 200 tokens holds one paragraph
        // (two would not fit), so each animal is in one chunk only.
        text.push_str(&format!("The {animal} is the subject of this paragraph. "));
        for _ in 0..8 {
            text.push_str("Researchers study how the tissue grows back after an injury, cell by cell. ");
        }
        text.push_str("\n\n");
    }
    text
}

/// `{"type": "static"}` with chunks of at most 200 tokens and no overlap.
pub fn small_chunks() -> Value {
    json!({"type": "static", "static": {"max_chunk_size_tokens": 200, "chunk_overlap_tokens": 0}})
}

/// A PDF header followed by garbage: a parser must reject it.
pub const CORRUPT_PDF: &[u8] = b"%PDF-1.7\n1 0 obj << /Type /Catalog /Pages 2 0 R >>\nthis is not a pdf at all\n%%EOF";

pub fn upload(filename: &str, content_type: Option<&str>, bytes: &[u8]) -> FileUpload {
    FileUpload {
        filename: filename.into(),
        content_type: content_type.map(Into::into),
        purpose: "assistants".into(),
        bytes: bytes.to_vec(),
    }
}

/// The inference domain in process over `database`, built with the default configuration by
/// the modules the gateway uses, and a worker running its ingestion jobs (stopped on drop).
pub async fn in_process(database: &TestDatabase) -> (Arc<dyn RagApi>, Arc<dyn AuthApi>, WorkerHandle) {
    let modules = crate::harness::modules();
    let platform = shared::testing::platform(&modules);
    let (contracts, components) = shared::testing::build_components(&modules, database, &platform).await;
    let at = modules.iter().position(|m| m.name() == inference::DOMAIN).unwrap();
    let (jobs, registry) = components[at].jobs().expect("the inference domain has ingestion jobs");
    let config = JobsConfig { poll_interval_ms: 50, ..JobsConfig::default() };
    let worker = Worker::start(&jobs, registry, &config, Arc::new(NoObserver)).unwrap();
    (contracts.get::<dyn RagApi>().unwrap(), contracts.get::<dyn AuthApi>().unwrap(), worker)
}

/// What the story needs besides the contract under test: accounts.
#[derive(Clone)]
pub struct RagWorld {
    pub auth: Arc<dyn AuthApi>,
}

impl std::fmt::Debug for RagWorld {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RagWorld").finish_non_exhaustive()
    }
}

impl RagWorld {
    /// A new organization: an API key of it, and its owner's session.
    pub async fn organization(&self, email: &str) -> (Principal, Principal) {
        let request = SignupRequest { email: email.into(), password: PASSWORD.into(), name: None };
        let signup = self.auth.signup(request, RequestContext::default()).await.unwrap();
        let session = self.auth.authenticate(&signup.token).await.unwrap();
        let key = CreateApiKeyRequest { name: "rag".into(), scopes: None, expires_at: None };
        let created = self.auth.create_api_key(&session, signup.organization.id, key).await.unwrap();
        (self.auth.authenticate(&created.key).await.unwrap(), session)
    }
}

/// The attachment once its ingestion has ended (`completed`, `failed` or `cancelled`); panics
/// after 60 s.
pub async fn settled(api: &dyn RagApi, caller: &Principal, store: &str, file: &str) -> VectorStoreFile {
    let started = Instant::now();
    loop {
        let current = api.vector_store_file(caller, store, file).await.unwrap();
        if current.status != "in_progress" {
            return current;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "{file} still in progress: {current:?}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

fn search(query: &str) -> VectorStoreSearchRequest {
    VectorStoreSearchRequest {
        query: json!(query),
        max_num_results: None,
        filters: None,
        ranking_options: None,
        rewrite_query: None,
    }
}

fn map(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        other => panic!("not an object: {other}"),
    }
}

#[track_caller]
fn assert_invalid<T: std::fmt::Debug>(result: Result<T, InferenceError>, param: &str) {
    let error = result.unwrap_err();
    assert_eq!(error.code(), "invalid_request", "{error:?}");
    assert_eq!(error.envelope().error.param.as_deref(), Some(param), "{error:?}");
}

/// The whole story. `tag` keeps emails apart when it runs twice on one database.
pub async fn rag_contract(api: Arc<dyn RagApi>, world: &RagWorld, tag: &str) {
    let api = api.as_ref();
    let (key, session) = world.organization(&format!("rag-{tag}@example.com")).await;
    let (stranger, _) = world.organization(&format!("rag-stranger-{tag}@example.com")).await;

    // --- Only an API key acts for an organization.
    assert_eq!(api.list_files(&session, ListQuery::default()).await.unwrap_err(), InferenceError::ApiKeyRequired);

    // --- Files: stored whole, listed, read back as uploaded.
    let notes = field_notes();
    let file = api.create_file(&key, upload("notes.md", Some("text/markdown"), notes.as_bytes())).await.unwrap();
    assert!(file.id.starts_with("file_"), "{}", file.id);
    assert_eq!((file.object.as_str(), file.status.as_str()), ("file", "processed"));
    assert_eq!(
        (file.bytes, file.filename.as_str(), file.purpose.as_str()),
        (notes.len() as u64, "notes.md", "assistants")
    );
    assert_eq!(api.file(&key, &file.id).await.unwrap(), file);
    let content = api.file_content(&key, &file.id).await.unwrap();
    assert_eq!((content.filename.as_str(), content.content_type.as_str()), ("notes.md", "text/markdown"));
    assert_eq!(content.bytes, notes.as_bytes());
    let name = "résumé; \"final\".txt";
    let odd = api.create_file(&key, upload(name, None, b"plain words")).await.unwrap();
    let content = api.file_content(&key, &odd.id).await.unwrap();
    assert_eq!((content.filename.as_str(), content.content_type.as_str()), (name, "application/octet-stream"));

    let mut bad = upload("a.txt", None, b"x");
    bad.purpose = "gossip".into();
    assert_invalid(api.create_file(&key, bad).await, "purpose");
    assert_invalid(api.create_file(&key, upload("a.txt", None, b"")).await, "file");

    // Newest first, a page at a time.
    let page = api.list_files(&key, ListQuery { limit: Some(1), ..ListQuery::default() }).await.unwrap();
    assert_eq!((page.object.as_str(), page.data.len(), page.has_more), ("list", 1, true));
    assert_eq!(page.data[0].id, odd.id);
    let next = ListQuery { limit: Some(1), after: page.last_id.clone(), ..ListQuery::default() };
    let page = api.list_files(&key, next).await.unwrap();
    assert_eq!(page.data.iter().map(|f| f.id.as_str()).collect::<Vec<_>>(), [file.id.as_str()]);
    assert!(!page.has_more);
    assert_invalid(api.list_files(&key, ListQuery { limit: Some(0), ..ListQuery::default() }).await, "limit");

    // --- Vector stores.
    let request = CreateVectorStoreRequest {
        name: Some("notes".into()),
        metadata: Some(map(json!({"team": "biology"}))),
        ..CreateVectorStoreRequest::default()
    };
    let store = api.create_vector_store(&key, request).await.unwrap();
    assert!(store.id.starts_with("vs_"), "{}", store.id);
    assert_eq!((store.object.as_str(), store.name.as_deref()), ("vector_store", Some("notes")));
    assert_eq!(store.file_counts, inference::FileCounts::default());
    assert_eq!(store.metadata, map(json!({"team": "biology"})));
    assert!(["keyword", "hybrid"].contains(&store.search_mode.as_str()), "{}", store.search_mode);
    let renamed = UpdateVectorStoreRequest { name: Some("field notes".into()), ..UpdateVectorStoreRequest::default() };
    let store = api.update_vector_store(&key, &store.id, renamed).await.unwrap();
    assert_eq!(store.name.as_deref(), Some("field notes"));
    assert_eq!(api.vector_store(&key, &store.id).await.unwrap().name.as_deref(), Some("field notes"));
    let listed = api.list_vector_stores(&key, ListQuery::default()).await.unwrap();
    assert_eq!(listed.data.iter().map(|s| s.id.as_str()).collect::<Vec<_>>(), [store.id.as_str()]);

    // --- Attach: answered at once, ingested in the background; attaching again is harmless.
    let attach = CreateVectorStoreFileRequest {
        file_id: file.id.clone(),
        attributes: Some(map(json!({"kind": "notes", "weight": 0.5, "year": 2026}))),
        chunking_strategy: Some(small_chunks()),
    };
    let attached = api.attach_file(&key, &store.id, attach.clone()).await.unwrap();
    assert_eq!((attached.id.as_str(), attached.vector_store_id.as_str()), (file.id.as_str(), store.id.as_str()));
    assert_eq!(attached.object, "vector_store.file");
    assert!(["in_progress", "completed"].contains(&attached.status.as_str()), "{attached:?}");
    assert_eq!(attached.attributes, map(json!({"kind": "notes", "weight": 0.5, "year": 2026})));
    assert_eq!(attached.chunking_strategy, small_chunks());
    let done = settled(api, &key, &store.id, &file.id).await;
    assert_eq!((done.status.as_str(), done.last_error.as_ref()), ("completed", None), "{done:?}");
    assert!(done.usage_bytes > 0);
    assert_eq!(api.attach_file(&key, &store.id, attach).await.unwrap(), done, "attaching again changes nothing");
    let counted = api.vector_store(&key, &store.id).await.unwrap();
    assert_eq!((counted.file_counts.completed, counted.file_counts.total), (1, 1));
    assert_eq!(counted.status, "completed");
    let files = api.list_vector_store_files(&key, &store.id, ListQuery::default()).await.unwrap();
    assert_eq!(files.data, std::slice::from_ref(&done));
    let failed = ListQuery { filter: Some("failed".into()), ..ListQuery::default() };
    assert!(api.list_vector_store_files(&key, &store.id, failed).await.unwrap().data.is_empty());

    // --- Search: each animal's own paragraph, with the file's name and attributes.
    for animal in ANIMALS {
        let found = api.search(&key, &store.id, search(animal)).await.unwrap();
        assert_eq!(found.object, "vector_store.search_results.page");
        assert_eq!(found.search_query, [animal]);
        let top = found.data.first().unwrap_or_else(|| panic!("nothing found for {animal}"));
        assert_eq!((top.file_id.as_str(), top.filename.as_str()), (file.id.as_str(), "notes.md"));
        assert!(top.content[0].text.contains(animal), "{animal}: {:?}", top.content);
        let others = ANIMALS.iter().filter(|a| **a != animal);
        assert!(others.clone().all(|a| !top.content[0].text.contains(a)), "{animal}: one paragraph per chunk");
        assert!(top.score > 0.0 && top.score <= 1.0, "{}", top.score);
        assert_eq!(top.attributes, map(json!({"kind": "notes", "weight": 0.5, "year": 2026})));
        assert!(!top.chunk_id.is_empty());
    }
    let mut filtered = search("axolotl");
    filtered.filters = Some(json!({"type": "eq", "key": "kind", "value": "recipes"}));
    assert!(api.search(&key, &store.id, filtered.clone()).await.unwrap().data.is_empty());
    filtered.filters = Some(json!({"type": "and", "filters": [
        {"type": "eq", "key": "kind", "value": "notes"}, {"type": "gte", "key": "weight", "value": 0.25}]}));
    assert!(!api.search(&key, &store.id, filtered).await.unwrap().data.is_empty());
    let mut nonsense = search("axolotl");
    nonsense.filters = Some(json!({"type": "near", "key": "kind"}));
    assert_invalid(api.search(&key, &store.id, nonsense).await, "filters");
    assert_invalid(api.search(&key, &store.id, search(" ")).await, "query");

    // --- A corrupt PDF fails that file, with a reason; the store goes on.
    let pdf = api.create_file(&key, upload("broken.pdf", Some("application/pdf"), CORRUPT_PDF)).await.unwrap();
    let request = CreateVectorStoreFileRequest { file_id: pdf.id.clone(), attributes: None, chunking_strategy: None };
    api.attach_file(&key, &store.id, request).await.unwrap();
    let broken = settled(api, &key, &store.id, &pdf.id).await;
    assert_eq!(broken.status, "failed", "{broken:?}");
    let reason = broken.last_error.expect("a failed file says why");
    assert!(["invalid_file", "unsupported_file"].contains(&reason.code.as_str()), "{reason:?}");
    assert!(!reason.message.is_empty());
    let counted = api.vector_store(&key, &store.id).await.unwrap();
    assert_eq!((counted.file_counts.completed, counted.file_counts.failed, counted.file_counts.total), (1, 1, 2));

    // --- Another organization sees nothing of it: not found, never forbidden.
    let file_gone = InferenceError::FileNotFound(file.id.clone());
    let store_gone = InferenceError::VectorStoreNotFound(store.id.clone());
    assert_eq!(api.file(&stranger, &file.id).await.unwrap_err(), file_gone);
    assert_eq!(api.file_content(&stranger, &file.id).await.unwrap_err(), file_gone);
    assert_eq!(api.delete_file(&stranger, &file.id).await.unwrap_err(), file_gone);
    assert!(api.list_files(&stranger, ListQuery::default()).await.unwrap().data.is_empty());
    assert_eq!(api.vector_store(&stranger, &store.id).await.unwrap_err(), store_gone);
    assert_eq!(api.search(&stranger, &store.id, search("axolotl")).await.unwrap_err(), store_gone);
    assert_eq!(api.vector_store_file(&stranger, &store.id, &file.id).await.unwrap_err(), store_gone);
    assert_eq!(api.delete_vector_store(&stranger, &store.id).await.unwrap_err(), store_gone);
    let theirs = api.create_vector_store(&stranger, CreateVectorStoreRequest::default()).await.unwrap();
    let steal = CreateVectorStoreFileRequest { file_id: file.id.clone(), attributes: None, chunking_strategy: None };
    assert_eq!(api.attach_file(&stranger, &theirs.id, steal).await.unwrap_err(), file_gone);
    assert!(api.search(&stranger, &theirs.id, search("axolotl")).await.unwrap().data.is_empty());
    assert_eq!(api.file(&key, &file.id).await.unwrap(), file, "their attempts changed nothing");

    // --- Detach: the store no longer finds it; the file stays.
    let detached = api.detach_file(&key, &store.id, &file.id).await.unwrap();
    assert_eq!((detached.object.as_str(), detached.deleted), ("vector_store.file.deleted", true));
    assert_eq!(api.vector_store_file(&key, &store.id, &file.id).await.unwrap_err(), file_gone);
    assert!(api.search(&key, &store.id, search("axolotl")).await.unwrap().data.is_empty());
    assert_eq!(api.detach_file(&key, &store.id, &file.id).await.unwrap_err(), file_gone);
    assert_eq!(api.file(&key, &file.id).await.unwrap(), file);

    // --- Deleting a file removes its chunks from every store it was in.
    let second = api.create_vector_store(
        &key,
        CreateVectorStoreRequest {
            file_ids: vec![file.id.clone()],
            chunking_strategy: Some(small_chunks()),
            ..CreateVectorStoreRequest::default()
        },
    );
    let second = second.await.unwrap();
    assert_eq!(settled(api, &key, &second.id, &file.id).await.status, "completed");
    assert!(!api.search(&key, &second.id, search("hydra")).await.unwrap().data.is_empty());
    let deleted = api.delete_file(&key, &file.id).await.unwrap();
    assert_eq!((deleted.id.as_str(), deleted.object.as_str(), deleted.deleted), (file.id.as_str(), "file", true));
    assert_eq!(api.file(&key, &file.id).await.unwrap_err(), file_gone);
    assert_eq!(api.file_content(&key, &file.id).await.unwrap_err(), file_gone);
    assert!(api.search(&key, &second.id, search("hydra")).await.unwrap().data.is_empty());

    batches(api, &key, &stranger, &store.id).await;

    // --- Deleting a store.
    let deleted = api.delete_vector_store(&key, &store.id).await.unwrap();
    assert_eq!((deleted.object.as_str(), deleted.deleted), ("vector_store.deleted", true));
    assert_eq!(api.vector_store(&key, &store.id).await.unwrap_err(), store_gone);
    assert_eq!(api.search(&key, &store.id, search("axolotl")).await.unwrap_err(), store_gone);
    assert_eq!(api.file(&key, &pdf.id).await.unwrap().id, pdf.id, "the store's files stay");
}

/// The batch part of the story, on `store` of `key`'s organization: three files attached
/// together, all checked before any is stored; retrieved, listed, counted; a cancel after they
/// finished changes nothing; another organization finds nothing.
async fn batches(api: &dyn RagApi, key: &Principal, stranger: &Principal, store: &str) {
    let before = api.vector_store(key, store).await.unwrap().file_counts;
    let mut ids = Vec::new();
    for (n, animal) in ["lynx", "ocelot", "caracal"].iter().enumerate() {
        let text = format!("Batch document {n} is about the {animal}, a wild cat.");
        ids.push(api.create_file(key, upload(&format!("{animal}.txt"), None, text.as_bytes())).await.unwrap().id);
    }
    ids.sort();

    // All or none: an unknown file (or another organization's) stores nothing.
    let theirs = api.create_file(stranger, upload("theirs.txt", None, b"not yours")).await.unwrap();
    let mixed = CreateFileBatchRequest {
        file_ids: vec![ids[0].clone(), theirs.id.clone()],
        ..CreateFileBatchRequest::default()
    };
    assert_eq!(
        api.create_file_batch(key, store, mixed).await.unwrap_err(),
        InferenceError::FileNotFound(theirs.id.clone())
    );
    let attributes = CreateFileBatchRequest {
        file_ids: ids.clone(),
        attributes: Some(map(json!({"kind": ["not", "scalar"]}))),
        ..CreateFileBatchRequest::default()
    };
    assert_invalid(api.create_file_batch(key, store, attributes).await, "attributes");
    assert_invalid(api.create_file_batch(key, store, CreateFileBatchRequest::default()).await, "file_ids");
    assert_eq!(api.vector_store(key, store).await.unwrap().file_counts, before, "nothing was attached");

    // Three files, each with the batch's attributes, as one attach would do.
    let request = CreateFileBatchRequest {
        file_ids: ids.clone(),
        attributes: Some(map(json!({"kind": "cats"}))),
        chunking_strategy: Some(small_chunks()),
        ..CreateFileBatchRequest::default()
    };
    let batch = api.create_file_batch(key, store, request).await.unwrap();
    assert!(batch.id.starts_with("vsfb_"), "{}", batch.id);
    assert_eq!((batch.object.as_str(), batch.vector_store_id.as_str()), ("vector_store.files_batch", store));
    assert_eq!(batch.file_counts.total, 3, "{batch:?}");
    for id in &ids {
        let done = settled(api, key, store, id).await;
        assert_eq!(done.status, "completed", "{done:?}");
        assert_eq!(done.attributes, map(json!({"kind": "cats"})));
    }
    let done = api.file_batch(key, store, &batch.id).await.unwrap();
    let three = FileCounts { completed: 3, total: 3, ..FileCounts::default() };
    assert_eq!((done.status.as_str(), &done.file_counts, done.created_at), ("completed", &three, batch.created_at));
    let counts = api.vector_store(key, store).await.unwrap().file_counts;
    assert_eq!((counts.completed, counts.total), (before.completed + 3, before.total + 3));
    let found = api.search(key, store, search("ocelot")).await.unwrap();
    assert!(found.data[0].content[0].text.contains("ocelot"), "{found:?}");

    // The batch's files, a page at a time by file id, and by status.
    let first = ListQuery { limit: Some(2), order: Some("asc".into()), ..ListQuery::default() };
    let page = api.list_file_batch_files(key, store, &batch.id, first).await.unwrap();
    assert_eq!(page.data.iter().map(|f| f.id.as_str()).collect::<Vec<_>>(), [ids[0].as_str(), ids[1].as_str()]);
    assert!(page.has_more);
    let next = ListQuery { limit: Some(2), order: Some("asc".into()), after: page.last_id, ..ListQuery::default() };
    let page = api.list_file_batch_files(key, store, &batch.id, next).await.unwrap();
    assert_eq!(page.data.iter().map(|f| f.id.as_str()).collect::<Vec<_>>(), [ids[2].as_str()]);
    assert!(!page.has_more);
    let completed = ListQuery { filter: Some("completed".into()), ..ListQuery::default() };
    assert_eq!(api.list_file_batch_files(key, store, &batch.id, completed).await.unwrap().data.len(), 3);
    let cancelled = ListQuery { filter: Some("cancelled".into()), ..ListQuery::default() };
    assert!(api.list_file_batch_files(key, store, &batch.id, cancelled.clone()).await.unwrap().data.is_empty());
    let nonsense = ListQuery { filter: Some("paused".into()), ..ListQuery::default() };
    assert_invalid(api.list_file_batch_files(key, store, &batch.id, nonsense).await, "filter");

    // A cancel once every file finished changes nothing: completed files stay completed.
    let after = api.cancel_file_batch(key, store, &batch.id).await.unwrap();
    assert_eq!((after.status.as_str(), &after.file_counts), ("completed", &three));
    assert!(api.list_file_batch_files(key, store, &batch.id, cancelled).await.unwrap().data.is_empty());
    assert!(!api.search(key, store, search("caracal")).await.unwrap().data.is_empty());

    // The newer form, `files`, each with its own attributes; a file attached already joins the
    // batch as it is.
    let per_file = CreateFileBatchRequest {
        files: vec![CreateVectorStoreFileRequest {
            file_id: ids[0].clone(),
            attributes: Some(map(json!({"kind": "ignored: attached already"}))),
            chunking_strategy: None,
        }],
        ..CreateFileBatchRequest::default()
    };
    let again = api.create_file_batch(key, store, per_file).await.unwrap();
    assert_ne!(again.id, batch.id);
    assert_eq!((again.status.as_str(), again.file_counts.completed, again.file_counts.total), ("completed", 1, 1));

    // Another organization, an unknown batch, a batch of another store: not found.
    let store_gone = InferenceError::VectorStoreNotFound(store.to_owned());
    assert_eq!(api.file_batch(stranger, store, &batch.id).await.unwrap_err(), store_gone);
    assert_eq!(api.cancel_file_batch(stranger, store, &batch.id).await.unwrap_err(), store_gone);
    let listed = api.list_file_batch_files(stranger, store, &batch.id, ListQuery::default()).await;
    assert_eq!(listed.unwrap_err(), store_gone);
    let elsewhere = api.create_vector_store(stranger, CreateVectorStoreRequest::default()).await.unwrap();
    let batch_gone = InferenceError::FileBatchNotFound(batch.id.clone());
    assert_eq!(api.file_batch(stranger, &elsewhere.id, &batch.id).await.unwrap_err(), batch_gone);
    assert_eq!(api.cancel_file_batch(stranger, &elsewhere.id, &batch.id).await.unwrap_err(), batch_gone);
    let unknown = "vsfb_0000000000000000000000000000000";
    let unknown_gone = InferenceError::FileBatchNotFound(unknown.to_owned());
    assert_eq!(api.file_batch(key, store, unknown).await.unwrap_err(), unknown_gone);
    assert_eq!(
        api.file_batch(key, store, &batch.id).await.unwrap().file_counts,
        three,
        "their attempts changed nothing"
    );

    // Detaching a file takes it out of its batches.
    api.detach_file(key, store, &ids[2]).await.unwrap();
    let counted = api.file_batch(key, store, &batch.id).await.unwrap().file_counts;
    assert_eq!((counted.completed, counted.total), (2, 2));
}
