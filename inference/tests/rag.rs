#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Retrieval over the in-process service (`RagService`) on real databases: upload → attach →
//! the ingestion job → search; deletes; corrupt files; tenant isolation; a worker killed
//! mid-job; two processes following one change log; expiry and the purge, on a manual clock.
//! The HTTP routes are tested end to end in
//! `tests/` (rag-http).

use async_trait::async_trait;
use auth::{ApiKeyId, AuthConfig, AuthModule, OrganizationId, Principal, PrincipalKind};
use billing::{BillingApi, BillingConfig, BillingModule};
use diesel::prelude::*;
use inference::config::InferenceConfig;
use inference::rag::IngestFile;
use inference::*;
use serde_json::json;
use shared::backend_tests;
use shared::clock::{Clock, ManualClock};
use shared::jobs::{Handler, JobContext, JobError, JobsConfig, NoObserver, Registry, Worker, WorkerHandle};
use shared::module::Module;
use shared::testing::{TestBackend, TestDatabase};
use shared::{DomainError, Secret};
use std::sync::Arc;
use std::time::{Duration, Instant};

struct Fixture {
    database: TestDatabase,
    config: InferenceConfig,
    billing: Arc<dyn BillingApi>,
    platform: shared::module::Platform,
}

async fn fixture(backend: &TestBackend, config: InferenceConfig) -> Fixture {
    fixture_on(backend, config, Arc::new(shared::clock::SystemClock)).await
}

/// A fixture whose services read the time from `clock`.
async fn fixture_on(backend: &TestBackend, config: InferenceConfig, clock: Arc<dyn Clock>) -> Fixture {
    let base: Vec<Arc<dyn Module>> =
        vec![Arc::new(AuthModule::new(AuthConfig::default())), Arc::new(BillingModule::new(BillingConfig::default()))];
    let mut all = base.clone();
    all.push(Arc::new(InferenceModule::new(config.clone())));
    let database = TestDatabase::migrated(backend, &all);
    let platform = shared::testing::platform_with(&all, clock);
    let contracts = shared::testing::build(&base, &database, &platform).await;
    let billing = contracts.get::<dyn BillingApi>().unwrap();
    Fixture { database, config, billing, platform }
}

impl Fixture {
    /// A started service over the fixture's database: one gateway process.
    async fn service(&self) -> RagService {
        self.services().await.0
    }

    /// The retrieval service, started, and the inference service whose grounded chat searches it.
    async fn services(&self) -> (RagService, InferenceService) {
        let (rag, inference) = self.built().await;
        rag.start().await;
        let grounded = inference.with_retrieval(Arc::new(rag.clone()));
        (rag, grounded)
    }

    /// A service never started: what a process that only runs jobs (`gateway worker`) has.
    async fn unstarted(&self) -> RagService {
        self.built().await.0
    }

    async fn built(&self) -> (RagService, InferenceService) {
        let inference = InferenceService::new(
            &self.config,
            self.platform.metrics.inference(),
            self.billing.clone(),
            self.platform.rate_limiter.clone(),
            None,
            self.platform.clock.clone(),
            self.platform.metrics.cache(),
        )
        .unwrap();
        let db = self.database.open(inference::DOMAIN).await;
        let rag =
            RagService::new(db, &self.config, self.platform.clock.clone(), self.billing.clone(), &inference).unwrap();
        (rag, inference)
    }

    /// Counts rows of the inference database (chunks of a file, here).
    async fn chunk_rows(&self, file_id: &str) -> i64 {
        self.rows("rag_chunks", file_id).await
    }

    /// Runs one statement on the inference database.
    async fn execute(&self, sql: &'static str) {
        let db = self.database.open(inference::DOMAIN).await;
        db.run(move |conn| diesel::sql_query(sql).execute(conn).map_err(shared::db::DbError::from)).await.unwrap();
    }

    /// Counts the rows of `table` (a table with a `file_id`) of a file.
    async fn rows(&self, table: &'static str, file_id: &str) -> i64 {
        let db = self.database.open(inference::DOMAIN).await;
        let file = file_id.to_owned();
        db.run(move |conn| {
            #[derive(QueryableByName)]
            struct Count {
                #[diesel(sql_type = diesel::sql_types::BigInt)]
                n: i64,
            }
            diesel::sql_query(format!("SELECT COUNT(*) AS n FROM {table} WHERE file_id = $1"))
                .bind::<diesel::sql_types::Text, _>(file)
                .get_result::<Count>(conn)
                .map(|c| c.n)
                .map_err(shared::db::DbError::from)
        })
        .await
        .unwrap()
    }
}

fn jobs_config() -> JobsConfig {
    JobsConfig { poll_interval_ms: 20, lease_ms: 400, heartbeat_ms: 100, ..JobsConfig::default() }
}

fn worker(rag: &RagService) -> WorkerHandle {
    Worker::start(rag.jobs(), rag.registry().unwrap(), &jobs_config(), Arc::new(NoObserver)).unwrap()
}

/// An organization's API key.
fn api_key(org: OrganizationId) -> Principal {
    Principal {
        kind: PrincipalKind::ApiKey,
        user_id: None,
        session_id: None,
        organization_id: Some(org),
        api_key_id: Some(ApiKeyId::new()),
        scopes: Vec::new(),
        key_created_by: None,
        platform_admin: false,
        credential: Secret::new("keel_sk_test"),
    }
}

fn upload(name: &str, bytes: &[u8]) -> FileUpload {
    FileUpload { filename: name.into(), content_type: None, purpose: "assistants".into(), bytes: bytes.to_vec() }
}

const GUIDE: &str = "# Keel operations guide\n\n\
The gateway answers health checks on the readiness route.\n\n\
## Backups\n\n\
Nightly snapshots of the zebra cluster are copied to cold storage and kept for ninety days.\n\n\
## Alerts\n\n\
A pager rotation handles alerts raised by the monitoring stack.\n";

/// Waits for the attachment to leave `in_progress`.
async fn settled(rag: &RagService, key: &Principal, store: &str, file: &str) -> VectorStoreFile {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let f = rag.vector_store_file(key, store, file).await.unwrap();
        if f.status != "in_progress" {
            return f;
        }
        if Instant::now() > deadline {
            let stats = rag.jobs().stats().await.unwrap();
            let failed = rag.jobs().list(shared::jobs::ListState::Failed, &Default::default()).await.unwrap();
            panic!("ingestion did not finish: {f:?}\njobs: {stats:?}\nfailed: {failed:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A list query: `limit` items in `order` (`asc`/`desc`), after or before a cursor.
fn list(limit: u32, order: &str, after: Option<&String>, before: Option<&String>) -> ListQuery {
    ListQuery {
        limit: Some(limit),
        order: Some(order.into()),
        after: after.cloned(),
        before: before.cloned(),
        ..ListQuery::default()
    }
}

/// The default configuration without the background catch-up: the test drives it.
fn driven() -> InferenceConfig {
    let mut config = InferenceConfig::default();
    config.rag.sync_interval_ms = 3_600_000;
    config
}

/// The guide uploaded and ingested into a new store named `name`: (file id, store id).
async fn guide_ingested(rag: &RagService, key: &Principal, name: &str) -> (String, String) {
    let file = rag.create_file(key, upload("guide.md", GUIDE.as_bytes())).await.unwrap();
    let vs = store(rag, key, name).await;
    attach(rag, key, &vs, &file.id, json!({})).await;
    assert_eq!(settled(rag, key, &vs, &file.id).await.status, "completed");
    (file.id, vs)
}

async fn search(rag: &RagService, key: &Principal, store: &str, body: serde_json::Value) -> SearchResultsPage {
    rag.search(key, store, serde_json::from_value(body).unwrap()).await.unwrap()
}

async fn store(rag: &RagService, key: &Principal, name: &str) -> String {
    let request = CreateVectorStoreRequest { name: Some(name.into()), ..CreateVectorStoreRequest::default() };
    rag.create_vector_store(key, request).await.unwrap().id
}

async fn attach(rag: &RagService, key: &Principal, store: &str, file: &str, attributes: serde_json::Value) {
    let request = CreateVectorStoreFileRequest {
        file_id: file.into(),
        attributes: attributes.as_object().cloned(),
        chunking_strategy: Some(
            json!({"type": "static", "static": {"max_chunk_size_tokens": 100, "chunk_overlap_tokens": 20}}),
        ),
    };
    let attached = rag.attach_file(key, store, request).await.unwrap();
    assert_eq!((attached.status.as_str(), attached.vector_store_id.as_str()), ("in_progress", store));
}

backend_tests! {
    async fn upload_attach_ingest_search_and_delete(backend) {
        let f = fixture(&backend, InferenceConfig::default()).await;
        let rag = f.service().await;
        let _worker = worker(&rag);
        let key = api_key(OrganizationId::new());
        let file = rag.create_file(&key, upload("guide.md", GUIDE.as_bytes())).await.unwrap();
        assert_eq!((file.object.as_str(), file.bytes, file.status.as_str()), ("file", GUIDE.len() as u64, "processed"));
        assert_eq!(rag.file_content(&key, &file.id).await.unwrap().bytes, GUIDE.as_bytes());
        let vs = store(&rag, &key, "docs").await;
        attach(&rag, &key, &vs, &file.id, json!({"team": "ops", "year": 2026})).await;
        let done = settled(&rag, &key, &vs, &file.id).await;
        assert_eq!(done.status, "completed", "{done:?}");
        assert!(done.usage_bytes > 0 && done.last_error.is_none());
        assert_eq!(done.chunking_strategy["static"]["max_chunk_size_tokens"], 100);

        let described = rag.vector_store(&key, &vs).await.unwrap();
        assert_eq!((described.file_counts.completed, described.file_counts.total), (1, 1));
        assert_eq!((described.status.as_str(), described.search_mode.as_str()), ("completed", "keyword"));
        assert_eq!(described.usage_bytes, done.usage_bytes);

        let page = search(&rag, &key, &vs, json!({"query": "zebra snapshots"})).await;
        assert_eq!(page.object, "vector_store.search_results.page");
        let top = &page.data[0];
        assert!(top.content[0].text.contains("zebra cluster"), "{page:?}");
        assert_eq!((top.file_id.as_str(), top.filename.as_str()), (file.id.as_str(), "guide.md"));
        assert_eq!(top.attributes["team"], "ops");
        assert!(top.score > 0.0 && top.score <= 1.0 && !top.chunk_id.is_empty());

        // Filters on attributes, a list of queries, and the bounds.
        let kept = search(&rag, &key, &vs, json!({"query": "zebra", "filters": {"type": "gte", "key": "year", "value": 2026}})).await;
        assert!(!kept.data.is_empty());
        let dropped = search(&rag, &key, &vs, json!({"query": "zebra", "filters": {"type": "eq", "key": "team", "value": "sales"}})).await;
        assert!(dropped.data.is_empty());
        let both = search(&rag, &key, &vs, json!({"query": ["zebra", "pager rotation"], "max_num_results": 5})).await;
        assert!(both.data.iter().any(|r| r.content[0].text.contains("pager")), "{both:?}");
        let bad: VectorStoreSearchRequest = serde_json::from_value(json!({"query": "x", "max_num_results": 51})).unwrap();
        let err = rag.search(&key, &vs, bad).await.unwrap_err();
        assert!(matches!(&err, InferenceError::Validation { field, .. } if field == "max_num_results"), "{err:?}");
        let bad: VectorStoreSearchRequest = serde_json::from_value(json!({"query": "x", "filters": {"type": "like"}})).unwrap();
        let err = rag.search(&key, &vs, bad).await.unwrap_err();
        assert!(matches!(&err, InferenceError::Validation { field, .. } if field == "filters"), "{err:?}");

        // Attaching again answers the current state and does nothing more.
        let again = rag
            .attach_file(&key, &vs, CreateVectorStoreFileRequest { file_id: file.id.clone(), attributes: None, chunking_strategy: None })
            .await
            .unwrap();
        assert_eq!(again.status, "completed");

        // Deleting the file detaches it and removes its chunks from the database and the index.
        let deleted = rag.delete_file(&key, &file.id).await.unwrap();
        assert_eq!((deleted.object.as_str(), deleted.deleted), ("file", true));
        assert!(search(&rag, &key, &vs, json!({"query": "zebra"})).await.data.is_empty());
        assert_eq!(f.chunk_rows(&file.id).await, 0);
        assert_eq!(rag.vector_store(&key, &vs).await.unwrap().file_counts.total, 0);
        assert!(matches!(rag.file(&key, &file.id).await, Err(InferenceError::FileNotFound(_))));
        assert!(matches!(rag.vector_store_file(&key, &vs, &file.id).await, Err(InferenceError::FileNotFound(_))));

        // Deleting the store removes its chunks.
        let other = rag.create_file(&key, upload("again.md", GUIDE.as_bytes())).await.unwrap();
        attach(&rag, &key, &vs, &other.id, json!({})).await;
        assert_eq!(settled(&rag, &key, &vs, &other.id).await.status, "completed");
        assert!(f.chunk_rows(&other.id).await > 0);
        assert_eq!(rag.delete_vector_store(&key, &vs).await.unwrap().object, "vector_store.deleted");
        assert_eq!(f.chunk_rows(&other.id).await, 0);
        assert!(matches!(rag.vector_store(&key, &vs).await, Err(InferenceError::VectorStoreNotFound(_))));
        assert!(rag.file(&key, &other.id).await.is_ok(), "the file stays");
    }

    async fn lists_page_by_keyset_both_ways(backend) {
        let f = fixture(&backend, InferenceConfig::default()).await;
        let rag = f.service().await;
        let key = api_key(OrganizationId::new());
        let mut ids = Vec::new();
        for n in 0..5 {
            ids.push(rag.create_file(&key, upload(&format!("f{n}.txt"), b"some text")).await.unwrap().id);
        }
        let first = rag.list_files(&key, list(2, "desc", None, None)).await.unwrap();
        assert_eq!(first.data.iter().map(|f| &f.id).collect::<Vec<_>>(), vec![&ids[4], &ids[3]]);
        assert!(first.has_more);
        let next = rag.list_files(&key, list(2, "desc", first.last_id.as_ref(), None)).await.unwrap();
        assert_eq!(next.data.iter().map(|f| &f.id).collect::<Vec<_>>(), vec![&ids[2], &ids[1]]);
        let back = rag.list_files(&key, list(2, "desc", None, next.first_id.as_ref())).await.unwrap();
        assert_eq!(back.data.iter().map(|f| &f.id).collect::<Vec<_>>(), vec![&ids[4], &ids[3]]);
        let asc = rag.list_files(&key, list(10, "asc", Some(&ids[2]), None)).await.unwrap();
        assert_eq!(asc.data.iter().map(|f| &f.id).collect::<Vec<_>>(), vec![&ids[3], &ids[4]]);
        assert!(!asc.has_more);
        let err = rag.list_files(&key, list(2, "desc", Some(&"vs_nope".to_owned()), None)).await.unwrap_err();
        assert!(matches!(&err, InferenceError::Validation { field, .. } if field == "after"), "{err:?}");
        let other = api_key(OrganizationId::new());
        assert!(rag.list_files(&other, ListQuery::default()).await.unwrap().data.is_empty());
    }

    async fn a_stores_files_are_listed_by_attachment_time(backend) {
        let clock = ManualClock::default();
        let f = fixture_on(&backend, InferenceConfig::default(), Arc::new(clock.clone())).await;
        let rag = f.service().await;
        let key = api_key(OrganizationId::new());
        let mut files = Vec::new();
        for n in 0..4 {
            files.push(rag.create_file(&key, upload(&format!("f{n}.txt"), b"some text")).await.unwrap().id);
        }
        let vs = store(&rag, &key, "ordered").await;
        // Attached in the order 2, 0 (the same second: the file id breaks the tie), 3, 1.
        for (n, step) in [(2, 0), (0, 0), (3, 1), (1, 1)] {
            clock.advance(chrono::Duration::seconds(step));
            attach(&rag, &key, &vs, &files[n], json!({})).await;
        }
        let ids = |page: &ObjectList<VectorStoreFile>| page.data.iter().map(|f| f.id.clone()).collect::<Vec<_>>();
        let want = |ns: &[usize]| ns.iter().map(|&n| files[n].clone()).collect::<Vec<_>>();
        let first = rag.list_vector_store_files(&key, &vs, list(2, "desc", None, None)).await.unwrap();
        assert_eq!((ids(&first), first.has_more), (want(&[1, 3]), true));
        let next = rag.list_vector_store_files(&key, &vs, list(2, "desc", first.last_id.as_ref(), None)).await.unwrap();
        assert_eq!((ids(&next), next.has_more), (want(&[2, 0]), false));
        let back = rag.list_vector_store_files(&key, &vs, list(2, "desc", None, next.first_id.as_ref())).await.unwrap();
        assert_eq!(ids(&back), want(&[1, 3]));
        let asc = rag.list_vector_store_files(&key, &vs, list(10, "asc", Some(&files[2]), None)).await.unwrap();
        assert_eq!(ids(&asc), want(&[3, 1]));
        let in_progress = ListQuery { filter: Some("in_progress".into()), ..list(10, "asc", None, None) };
        assert_eq!(ids(&rag.list_vector_store_files(&key, &vs, in_progress).await.unwrap()), want(&[0, 2, 3, 1]));
        // A cursor no longer attached stood for a position nobody knows: a clear 400.
        rag.detach_file(&key, &vs, &files[3]).await.unwrap();
        for (after, before, param) in [(Some(&files[3]), None, "after"), (None, Some(&files[3]), "before")] {
            let err = rag.list_vector_store_files(&key, &vs, list(2, "desc", after, before)).await.unwrap_err();
            assert!(matches!(&err, InferenceError::Validation { field, .. } if field == param), "{err:?}");
        }
    }

    async fn uploads_and_requests_are_validated(backend) {
        let mut config = InferenceConfig::default();
        config.rag.max_file_bytes = 1024;
        let f = fixture(&backend, config).await;
        let rag = f.service().await;
        let key = api_key(OrganizationId::new());
        let err = rag.create_file(&key, upload("big.txt", &[b'a'; 1025])).await.unwrap_err();
        assert_eq!(err, InferenceError::FileTooLarge { limit_bytes: 1024 });
        let mut wrong = upload("a.txt", b"x");
        wrong.purpose = "nonsense".into();
        assert!(matches!(rag.create_file(&key, wrong).await, Err(InferenceError::Validation { field, .. }) if field == "purpose"));
        assert!(matches!(rag.create_file(&key, upload("a.txt", b"")).await, Err(InferenceError::Validation { field, .. }) if field == "file"));
        let mut session = key.clone();
        session.kind = PrincipalKind::Session;
        assert_eq!(rag.list_files(&session, ListQuery::default()).await.unwrap_err(), InferenceError::ApiKeyRequired);
        let file = rag.create_file(&key, upload("a.txt", b"hello")).await.unwrap();
        let vs = store(&rag, &key, "v").await;
        let bad = CreateVectorStoreFileRequest {
            file_id: file.id.clone(),
            attributes: None,
            chunking_strategy: Some(json!({"type": "static", "static": {"max_chunk_size_tokens": 50, "chunk_overlap_tokens": 0}})),
        };
        let err = rag.attach_file(&key, &vs, bad).await.unwrap_err();
        assert!(matches!(&err, InferenceError::Validation { field, .. } if field.starts_with("chunking_strategy")), "{err:?}");
        let many: serde_json::Map<String, serde_json::Value> = (0..17).map(|n| (format!("k{n}"), json!("v"))).collect();
        let err = rag
            .create_vector_store(&key, CreateVectorStoreRequest { metadata: Some(many), ..CreateVectorStoreRequest::default() })
            .await
            .unwrap_err();
        assert!(matches!(&err, InferenceError::Validation { field, .. } if field == "metadata"), "{err:?}");
    }

    async fn unreadable_files_fail_cleanly_and_the_worker_goes_on(backend) {
        let f = fixture(&backend, InferenceConfig::default()).await;
        let rag = f.service().await;
        let _worker = worker(&rag);
        let key = api_key(OrganizationId::new());
        let vs = store(&rag, &key, "mixed").await;
        let pdf = rag.create_file(&key, upload("report.pdf", b"%PDF-1.7\n1 0 obj << /Type /Catalog /Pages 9 0 R >> endobj\ntrailer garbage")).await.unwrap();
        let blob = rag.create_file(&key, upload("image.bin", &[0u8, 159, 146, 150, 255, 0, 1, 2])).await.unwrap();
        let good = rag.create_file(&key, upload("guide.md", GUIDE.as_bytes())).await.unwrap();
        for file in [&pdf, &blob, &good] {
            attach(&rag, &key, &vs, &file.id, json!({})).await;
        }
        let failed = settled(&rag, &key, &vs, &pdf.id).await;
        assert_eq!(failed.status, "failed");
        let error = failed.last_error.unwrap();
        assert_eq!(error.code, "invalid_file", "{error:?}");
        assert!(error.message.contains("pdf"), "{error:?}");
        let unsupported = settled(&rag, &key, &vs, &blob.id).await;
        assert_eq!(unsupported.last_error.unwrap().code, "unsupported_file");
        assert_eq!(settled(&rag, &key, &vs, &good.id).await.status, "completed");
        let counts = rag.vector_store(&key, &vs).await.unwrap().file_counts;
        assert_eq!((counts.failed, counts.completed, counts.total), (2, 1, 3));
        let filtered = rag
            .list_vector_store_files(&key, &vs, ListQuery { filter: Some("failed".into()), ..ListQuery::default() })
            .await
            .unwrap();
        assert_eq!(filtered.data.len(), 2);
        assert_eq!(f.chunk_rows(&pdf.id).await, 0);
    }

    async fn another_organization_sees_nothing(backend) {
        let f = fixture(&backend, InferenceConfig::default()).await;
        let rag = f.service().await;
        let _worker = worker(&rag);
        let (alice, mallory) = (api_key(OrganizationId::new()), api_key(OrganizationId::new()));
        let file = rag.create_file(&alice, upload("guide.md", GUIDE.as_bytes())).await.unwrap();
        let vs = store(&rag, &alice, "private").await;
        attach(&rag, &alice, &vs, &file.id, json!({})).await;
        assert_eq!(settled(&rag, &alice, &vs, &file.id).await.status, "completed");

        assert!(matches!(rag.file(&mallory, &file.id).await, Err(InferenceError::FileNotFound(_))));
        assert!(matches!(rag.file_content(&mallory, &file.id).await, Err(InferenceError::FileNotFound(_))));
        assert!(matches!(rag.delete_file(&mallory, &file.id).await, Err(InferenceError::FileNotFound(_))));
        assert!(matches!(rag.vector_store(&mallory, &vs).await, Err(InferenceError::VectorStoreNotFound(_))));
        assert!(matches!(rag.delete_vector_store(&mallory, &vs).await, Err(InferenceError::VectorStoreNotFound(_))));
        assert!(matches!(rag.detach_file(&mallory, &vs, &file.id).await, Err(InferenceError::VectorStoreNotFound(_))));
        let query: VectorStoreSearchRequest = serde_json::from_value(json!({"query": "zebra"})).unwrap();
        assert!(matches!(rag.search(&mallory, &vs, query).await, Err(InferenceError::VectorStoreNotFound(_))));
        assert!(rag.list_vector_stores(&mallory, ListQuery::default()).await.unwrap().data.is_empty());
        // Mallory's own store cannot take Alice's file, nor find her chunks.
        let theirs = store(&rag, &mallory, "theirs").await;
        let steal = CreateVectorStoreFileRequest { file_id: file.id.clone(), attributes: None, chunking_strategy: None };
        assert!(matches!(rag.attach_file(&mallory, &theirs, steal).await, Err(InferenceError::FileNotFound(_))));
        assert!(search(&rag, &mallory, &theirs, json!({"query": "zebra"})).await.data.is_empty());
        // Alice's store is intact.
        assert!(!search(&rag, &alice, &vs, json!({"query": "zebra"})).await.data.is_empty());
    }

    async fn a_worker_killed_mid_ingestion_leaves_no_duplicate_chunks(backend) {
        let f = fixture(&backend, InferenceConfig::default()).await;
        let rag = f.service().await;
        let key = api_key(OrganizationId::new());
        let file = rag.create_file(&key, upload("guide.md", GUIDE.as_bytes())).await.unwrap();
        let vs = store(&rag, &key, "crash").await;
        attach(&rag, &key, &vs, &file.id, json!({})).await;

        // A worker claims the job and hangs in it; then the process dies (the handle dropped
        // without a graceful stop).
        let claimed = Arc::new(tokio::sync::Notify::new());
        let mut registry = Registry::new();
        registry.register::<IngestFile>(Hang(claimed.clone())).unwrap();
        let doomed = Worker::start(rag.jobs(), registry, &jobs_config(), Arc::new(NoObserver)).unwrap();
        tokio::time::timeout(Duration::from_secs(30), claimed.notified()).await.expect("the job is claimed");
        drop(doomed);
        assert_eq!(rag.vector_store_file(&key, &vs, &file.id).await.unwrap().status, "in_progress");

        // After the lease expires, another worker runs the job to completion.
        let _worker = worker(&rag);
        assert_eq!(settled(&rag, &key, &vs, &file.id).await.status, "completed");
        let chunks = f.chunk_rows(&file.id).await;
        assert!(chunks > 0);

        // A second delivery of the same job (its outcome lost in a crash) writes nothing more.
        rag.ingest(&vs, &file.id).await.unwrap();
        assert_eq!(f.chunk_rows(&file.id).await, chunks);
        let hits = search(&rag, &key, &vs, json!({"query": "zebra", "max_num_results": 50})).await;
        let zebra = hits.data.iter().filter(|r| r.content[0].text.contains("zebra cluster")).count();
        assert_eq!(zebra, 1, "{hits:?}");

        // The same content with the same chunking in another store is copied, not parsed again.
        let second = store(&rag, &key, "copy").await;
        attach(&rag, &key, &second, &file.id, json!({})).await;
        rag.ingest(&second, &file.id).await.unwrap();
        assert_eq!(rag.vector_store_file(&key, &second, &file.id).await.unwrap().status, "completed");
        assert_eq!(f.chunk_rows(&file.id).await, 2 * chunks);
        assert!(!search(&rag, &key, &second, json!({"query": "zebra"})).await.data.is_empty());
    }

    async fn steps_run_at_once_by_callers_and_jobs_complete_the_file_once(backend) {
        let f = fixture(&backend, InferenceConfig::default()).await;
        let rag = f.service().await;
        let key = api_key(OrganizationId::new());
        let file = rag.create_file(&key, upload("guide.md", GUIDE.as_bytes())).await.unwrap();
        let vs = store(&rag, &key, "race").await;
        attach(&rag, &key, &vs, &file.id, json!({})).await;
        // The jobs and three direct runs, all at once: each run returns with the file
        // completed, by itself or by another.
        let _worker = worker(&rag);
        let (a, b, c) = tokio::join!(rag.ingest(&vs, &file.id), rag.ingest(&vs, &file.id), rag.ingest(&vs, &file.id));
        for run in [a, b, c] {
            run.unwrap();
        }
        let done = rag.vector_store_file(&key, &vs, &file.id).await.unwrap();
        assert_eq!(done.status, "completed", "{done:?}");
        let deadline = Instant::now() + Duration::from_secs(20);
        let live = |d: &&shared::jobs::stats::QueueDepth| {
            use shared::jobs::stats::DepthState::*;
            d.count > 0 && matches!(d.state, Ready | Running | Failed | Discarded)
        };
        while rag.jobs().stats().await.unwrap().depths.iter().any(|d| live(&d)) {
            assert!(Instant::now() < deadline, "the ingestion jobs did not finish");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let chunks = f.chunk_rows(&file.id).await;
        assert!(chunks > 0);
        assert_eq!(f.rows("rag_staged_chunks", &file.id).await, 0);
        assert_eq!(f.rows("rag_changes", &file.id).await, 1, "one completion");
        let hits = search(&rag, &key, &vs, json!({"query": "zebra", "max_num_results": 50})).await;
        let zebra = hits.data.iter().filter(|r| r.content[0].text.contains("zebra cluster")).count();
        assert_eq!(zebra, 1, "{hits:?}");
        assert_eq!(rag.vector_store_file(&key, &vs, &file.id).await.unwrap().usage_bytes, done.usage_bytes);
    }

    async fn a_second_process_follows_the_change_log(backend) {
        // No background catch-up: the test drives it.
        let f = fixture(&backend, driven()).await;
        let first = f.service().await;
        let second = f.service().await;
        let _worker = worker(&first);
        let key = api_key(OrganizationId::new());
        let (file, vs) = guide_ingested(&first, &key, "shared").await;

        let before = second.watermark();
        assert!(second.catch_up().await.unwrap() > 0);
        assert!(second.watermark() > before);
        assert!(!search(&second, &key, &vs, json!({"query": "zebra"})).await.data.is_empty());

        // A process started now rebuilds from the database.
        let third = f.service().await;
        assert_eq!(third.watermark(), second.watermark());
        assert!(!search(&third, &key, &vs, json!({"query": "zebra"})).await.data.is_empty());

        // A detach in one process reaches the others.
        first.detach_file(&key, &vs, &file).await.unwrap();
        second.catch_up().await.unwrap();
        assert!(search(&second, &key, &vs, json!({"query": "zebra"})).await.data.is_empty());
        assert!(search(&third, &key, &vs, json!({"query": "zebra"})).await.data.is_empty());
    }

    async fn a_process_that_cannot_load_its_index_answers_503_to_searches_until_it_has(backend) {
        let f = fixture(&backend, driven()).await;
        let first = f.service().await;
        let _worker = worker(&first);
        let key = api_key(OrganizationId::new());
        let (file, vs) = guide_ingested(&first, &key, "docs").await;

        // With the change log unreadable, a new process cannot load its index: it starts anyway.
        f.execute("ALTER TABLE rag_changes RENAME TO rag_changes_hidden").await;
        let second = f.service().await;
        let zebra = || serde_json::from_value::<VectorStoreSearchRequest>(json!({"query": "zebra"})).unwrap();
        assert!(matches!(second.search(&key, &vs, zebra()).await, Err(InferenceError::Unavailable(_))));
        assert!(matches!(second.ready().await, Err(InferenceError::Unavailable(_))));
        // Everything but search answers.
        assert_eq!(second.vector_store_file(&key, &vs, &file).await.unwrap().status, "completed");

        // Once the database lets it, it loads by itself (backing off meanwhile).
        f.execute("ALTER TABLE rag_changes_hidden RENAME TO rag_changes").await;
        let deadline = Instant::now() + Duration::from_secs(30);
        let found = loop {
            match second.search(&key, &vs, zebra()).await {
                Ok(page) => break page,
                Err(InferenceError::Unavailable(_)) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("{e}"),
            }
        };
        assert!(found.data.iter().any(|r| r.file_id == file), "{found:?}");
        second.ready().await.unwrap();
    }

    async fn a_job_only_process_ingests_without_keeping_an_index(backend) {
        let f = fixture(&backend, driven()).await;
        let jobs_only = f.unstarted().await;
        let _worker = worker(&jobs_only);
        let key = api_key(OrganizationId::new());
        let (file, vs) = guide_ingested(&jobs_only, &key, "docs").await;
        assert!(f.chunk_rows(&file).await > 0);
        // It wrote the chunks and the change, but applies nothing to an index of its own.
        assert_eq!(jobs_only.catch_up().await.unwrap(), 0);
        assert_eq!(jobs_only.watermark(), 0);

        let serving = f.service().await;
        assert!(serving.watermark() > 0);
        assert!(!search(&serving, &key, &vs, json!({"query": "zebra"})).await.data.is_empty());
    }
}

impl Fixture {
    /// Writes a chunk of `file` in `store` straight into the database, as a half-done ingestion
    /// could have left one.
    async fn stray_chunk(&self, org: &str, store: &str, file: &str) {
        let db = self.database.open(inference::DOMAIN).await;
        let (org, store, file) = (org.to_owned(), store.to_owned(), file.to_owned());
        db.run(move |conn| {
            diesel::sql_query(
                "INSERT INTO rag_chunks (id, organization_id, vector_store_id, file_id, ordinal, text, tokens, content_hash) \
                 VALUES ($1, $2, $3, $4, 0, 'zebra leftovers', 2, 'x')",
            )
            .bind::<diesel::sql_types::Text, _>(format!("stray-{file}"))
            .bind::<diesel::sql_types::Text, _>(org)
            .bind::<diesel::sql_types::Text, _>(store)
            .bind::<diesel::sql_types::Text, _>(file)
            .execute(conn)
            .map_err(shared::db::DbError::from)
        })
        .await
        .unwrap();
    }
}

backend_tests! {
    async fn a_cancelled_batch_leaves_nothing_searchable(backend) {
        // No worker: the ingestions wait until the test runs them.
        let f = fixture(&backend, InferenceConfig::default()).await;
        let rag = f.service().await;
        let key = api_key(OrganizationId::new());
        let org = key.organization_id.unwrap().to_string();
        let vs = store(&rag, &key, "batch").await;
        let mut ids = Vec::new();
        for n in 0..3 {
            ids.push(rag.create_file(&key, upload(&format!("guide{n}.md"), GUIDE.as_bytes())).await.unwrap().id);
        }
        let request = CreateFileBatchRequest { file_ids: ids.clone(), ..CreateFileBatchRequest::default() };
        let batch = rag.create_file_batch(&key, &vs, request).await.unwrap();
        let three = FileCounts { in_progress: 3, total: 3, ..FileCounts::default() };
        assert_eq!((batch.status.as_str(), &batch.file_counts), ("in_progress", &three));
        assert_eq!(rag.file_batch(&key, &vs, &batch.id).await.unwrap(), batch);

        // One file finishes before the cancel; another has a chunk left by a half-done run.
        rag.ingest(&vs, &ids[0]).await.unwrap();
        let done_chunks = f.chunk_rows(&ids[0]).await;
        assert!(done_chunks > 0);
        f.stray_chunk(&org, &vs, &ids[1]).await;

        let cancelled = rag.cancel_file_batch(&key, &vs, &batch.id).await.unwrap();
        let counts = FileCounts { completed: 1, cancelled: 2, total: 3, ..FileCounts::default() };
        assert_eq!((cancelled.status.as_str(), &cancelled.file_counts), ("cancelled", &counts));
        assert_eq!(rag.vector_store_file(&key, &vs, &ids[0]).await.unwrap().status, "completed");
        for id in &ids[1..] {
            assert_eq!(rag.vector_store_file(&key, &vs, id).await.unwrap().status, "cancelled");
            assert_eq!(f.chunk_rows(id).await, 0, "the cancel removed what a run had left");
        }
        let described = rag.vector_store(&key, &vs).await.unwrap();
        assert_eq!((described.status.as_str(), &described.file_counts), ("completed", &counts));

        // The queued ingestions run now: each finds its file cancelled and writes nothing.
        for id in &ids[1..] {
            rag.ingest(&vs, id).await.unwrap();
            assert_eq!(rag.vector_store_file(&key, &vs, id).await.unwrap().status, "cancelled");
            assert_eq!(f.chunk_rows(id).await, 0);
        }
        let hits = search(&rag, &key, &vs, json!({"query": "zebra", "max_num_results": 50})).await;
        assert!(!hits.data.is_empty());
        assert!(hits.data.iter().all(|r| r.file_id == ids[0]), "only the completed file is searchable: {hits:?}");
        let listed = rag.list_file_batch_files(&key, &vs, &batch.id, ListQuery { filter: Some("cancelled".into()), ..ListQuery::default() });
        let listed: Vec<String> = listed.await.unwrap().data.into_iter().map(|f| f.id).collect();
        let mut expected = ids[1..].to_vec();
        expected.sort_by(|a, b| b.cmp(a));
        assert_eq!(listed, expected, "newest first");

        // A second cancel finds nothing more to cancel; another organization finds no batch.
        assert_eq!(rag.cancel_file_batch(&key, &vs, &batch.id).await.unwrap().file_counts, counts);
        let mallory = api_key(OrganizationId::new());
        assert!(matches!(rag.file_batch(&mallory, &vs, &batch.id).await, Err(InferenceError::VectorStoreNotFound(_))));
        assert!(matches!(rag.cancel_file_batch(&mallory, &vs, &batch.id).await, Err(InferenceError::VectorStoreNotFound(_))));
        let theirs = store(&rag, &mallory, "theirs").await;
        assert!(matches!(rag.file_batch(&mallory, &theirs, &batch.id).await, Err(InferenceError::FileBatchNotFound(_))));

        // Deleting the store deletes its batches.
        rag.delete_vector_store(&key, &vs).await.unwrap();
        assert!(matches!(rag.file_batch(&key, &vs, &batch.id).await, Err(InferenceError::VectorStoreNotFound(_))));
    }

    async fn a_batch_is_all_or_nothing(backend) {
        let f = fixture(&backend, InferenceConfig::default()).await;
        let rag = f.service().await;
        let (key, mallory) = (api_key(OrganizationId::new()), api_key(OrganizationId::new()));
        let vs = store(&rag, &key, "batch").await;
        let mine = rag.create_file(&key, upload("guide.md", GUIDE.as_bytes())).await.unwrap().id;
        let theirs = rag.create_file(&mallory, upload("theirs.md", GUIDE.as_bytes())).await.unwrap().id;
        for (files, error) in [
            (vec![mine.clone(), theirs.clone()], InferenceError::FileNotFound(theirs.clone())),
            (vec![mine.clone(), "file_nope".into()], InferenceError::FileNotFound("file_nope".into())),
        ] {
            let request = CreateFileBatchRequest { file_ids: files, ..CreateFileBatchRequest::default() };
            assert_eq!(rag.create_file_batch(&key, &vs, request).await.unwrap_err(), error);
        }
        let bad_chunking = CreateFileBatchRequest {
            files: vec![
                CreateVectorStoreFileRequest { file_id: mine.clone(), attributes: None, chunking_strategy: None },
                CreateVectorStoreFileRequest { file_id: mine.clone(), attributes: None, chunking_strategy: Some(json!({"type": "static", "static": {"max_chunk_size_tokens": 10, "chunk_overlap_tokens": 0}})) },
            ],
            ..CreateFileBatchRequest::default()
        };
        // The second mention of a file is dropped (the first wins), so this one is accepted.
        let batch = rag.create_file_batch(&key, &vs, bad_chunking).await.unwrap();
        assert_eq!(batch.file_counts.total, 1);
        let other = rag.create_file(&key, upload("other.md", GUIDE.as_bytes())).await.unwrap().id;
        let refused = CreateFileBatchRequest {
            files: vec![
                CreateVectorStoreFileRequest { file_id: other.clone(), attributes: None, chunking_strategy: None },
                CreateVectorStoreFileRequest { file_id: mine.clone(), attributes: None, chunking_strategy: Some(json!({"type": "static", "static": {"max_chunk_size_tokens": 10, "chunk_overlap_tokens": 0}})) },
            ],
            ..CreateFileBatchRequest::default()
        };
        let err = rag.create_file_batch(&key, &vs, refused).await.unwrap_err();
        assert!(matches!(&err, InferenceError::Validation { field, .. } if field.starts_with("chunking_strategy")), "{err:?}");
        assert!(matches!(rag.vector_store_file(&key, &vs, &other).await, Err(InferenceError::FileNotFound(_))), "nothing of a refused batch is stored");
        assert_eq!(rag.vector_store(&key, &vs).await.unwrap().file_counts.total, 1);
        // Mallory cannot batch into Alice's store.
        let request = CreateFileBatchRequest { file_ids: vec![theirs.clone()], ..CreateFileBatchRequest::default() };
        assert!(matches!(rag.create_file_batch(&mallory, &vs, request).await, Err(InferenceError::VectorStoreNotFound(_))));
    }
}

backend_tests! {
    async fn an_expired_store_is_refused_then_purged(backend) {
        // No background catch-up: the test counts the changes a second process reads.
        let config = driven();
        let clock = ManualClock::default();
        let f = fixture_on(&backend, config, Arc::new(clock.clone())).await;
        let (rag, chat) = f.services().await;
        let key = api_key(OrganizationId::new());
        let day = chrono::Duration::days(1);
        let file = rag.create_file(&key, upload("guide.md", GUIDE.as_bytes())).await.unwrap();
        let late = rag.create_file(&key, upload("late.md", b"Attached later, to a store in use.")).await.unwrap();
        let request = CreateVectorStoreRequest {
            name: Some("short-lived".into()),
            file_ids: vec![file.id.clone()],
            expires_after: Some(ExpiresAfter { anchor: "last_active_at".into(), days: 1 }),
            ..CreateVectorStoreRequest::default()
        };
        let created = rag.create_vector_store(&key, request).await.unwrap();
        let vs = created.id.clone();
        let created_at = created.last_active_at.unwrap();
        assert_eq!(created.expires_at, Some(created_at + 86_400));
        rag.ingest(&vs, &file.id).await.unwrap();
        // A store without expiry, with its own copy of the text, lives on.
        let kept_file = rag.create_file(&key, upload("kept.md", GUIDE.as_bytes())).await.unwrap();
        let kept = store(&rag, &key, "forever").await;
        attach(&rag, &key, &kept, &kept_file.id, json!({})).await;
        rag.ingest(&kept, &kept_file.id).await.unwrap();

        // A search 12 hours on is activity: the expiry moves 12 hours later.
        clock.advance(chrono::Duration::hours(12));
        assert!(!search(&rag, &key, &vs, json!({"query": "zebra"})).await.data.is_empty());
        let searched = rag.vector_store(&key, &vs).await.unwrap();
        assert_eq!(searched.last_active_at, Some(created_at + 12 * 3600));
        assert_eq!(searched.expires_at, Some(created_at + 12 * 3600 + 86_400));
        assert_eq!(searched.status, "completed");
        // Another search within the granularity (5 minutes) writes nothing.
        clock.advance(chrono::Duration::seconds(60));
        search(&rag, &key, &vs, json!({"query": "zebra"})).await;
        assert_eq!(rag.vector_store(&key, &vs).await.unwrap().last_active_at, searched.last_active_at);

        // Attaching a file 20 hours later is activity too.
        clock.advance(chrono::Duration::hours(20));
        attach(&rag, &key, &vs, &late.id, json!({})).await;
        let attached = rag.vector_store(&key, &vs).await.unwrap();
        let now = clock.now().timestamp();
        assert_eq!((attached.last_active_at, attached.expires_at), (Some(now), Some(now + 86_400)));
        rag.ingest(&vs, &late.id).await.unwrap();

        // A day without activity: expired. Reads answer it; uses are refused.
        clock.advance(day);
        let expired = rag.vector_store(&key, &vs).await.unwrap();
        assert_eq!((expired.status.as_str(), expired.expires_at), ("expired", Some(now + 86_400)));
        let query: VectorStoreSearchRequest = serde_json::from_value(json!({"query": "zebra"})).unwrap();
        let err = rag.search(&key, &vs, query).await.unwrap_err();
        assert_eq!(err, InferenceError::VectorStoreExpired(vs.clone()));
        assert_eq!((err.code(), err.kind().status(), err.error_type()), ("vector_store_expired", 400, "invalid_request_error"));
        let again = CreateVectorStoreFileRequest { file_id: late.id.clone(), attributes: None, chunking_strategy: None };
        assert_eq!(rag.attach_file(&key, &vs, again).await.unwrap_err(), InferenceError::VectorStoreExpired(vs.clone()));
        // Grounded chat searches the store through the same path: refused before any model call.
        let grounded: ChatCompletionRequest = serde_json::from_value(json!({
            "model": "echo",
            "messages": [{"role": "user", "content": "Where are the zebra snapshots?"}],
            "file_search": {"vector_store_ids": [vs]},
        }))
        .unwrap();
        assert_eq!(chat.chat(&key, grounded).await.unwrap_err(), InferenceError::VectorStoreExpired(vs.clone()));
        let revive = UpdateVectorStoreRequest { name: Some("revived".into()), ..UpdateVectorStoreRequest::default() };
        assert_eq!(rag.update_vector_store(&key, &vs, revive).await.unwrap_err(), InferenceError::VectorStoreExpired(vs.clone()));
        let listed = rag.list_vector_stores(&key, ListQuery::default()).await.unwrap();
        let statuses: Vec<(&str, &str)> = listed.data.iter().map(|s| (s.id.as_str(), s.status.as_str())).collect();
        assert!(statuses.contains(&(vs.as_str(), "expired")) && statuses.contains(&(kept.as_str(), "completed")), "{statuses:?}");
        assert_eq!(rag.list_vector_store_files(&key, &vs, ListQuery::default()).await.unwrap().data.len(), 2);
        // The refused uses moved nothing.
        assert_eq!(rag.vector_store(&key, &vs).await.unwrap().last_active_at, expired.last_active_at);

        // The purge deletes the expired store as a DELETE does: chunks gone, a change row for
        // every process; the files and the store without expiry stay.
        let other = f.service().await;
        assert!(f.chunk_rows(&file.id).await > 0 && f.chunk_rows(&late.id).await > 0);
        assert_eq!(rag.purge_expired().await.unwrap(), 1);
        assert_eq!((f.chunk_rows(&file.id).await, f.chunk_rows(&late.id).await), (0, 0));
        assert!(matches!(rag.vector_store(&key, &vs).await, Err(InferenceError::VectorStoreNotFound(_))));
        assert_eq!(other.catch_up().await.unwrap(), 1, "the store_removed change");
        assert!(rag.file(&key, &file.id).await.is_ok(), "the file stays");
        assert!(f.chunk_rows(&kept_file.id).await > 0);
        assert!(!search(&rag, &key, &kept, json!({"query": "zebra"})).await.data.is_empty());
        assert_eq!(rag.purge_expired().await.unwrap(), 0);
        // Time alone never expires a store without `expires_after`.
        clock.advance(day * 400);
        assert_eq!(rag.purge_expired().await.unwrap(), 0);
        assert_eq!(rag.vector_store(&key, &kept).await.unwrap().status, "completed");
    }

    async fn each_store_expires_after_its_own_days(backend) {
        let clock = ManualClock::default();
        let f = fixture_on(&backend, InferenceConfig::default(), Arc::new(clock.clone())).await;
        let rag = f.service().await;
        let key = api_key(OrganizationId::new());
        let expiring = |name: &str, days| CreateVectorStoreRequest {
            name: Some(name.into()),
            expires_after: Some(ExpiresAfter { anchor: "last_active_at".into(), days }),
            ..CreateVectorStoreRequest::default()
        };
        let one = rag.create_vector_store(&key, expiring("one day", 1)).await.unwrap().id;
        let three = rag.create_vector_store(&key, expiring("three days", 3)).await.unwrap().id;
        clock.advance(chrono::Duration::days(2));
        // Each store's own expiry counts: after two days only the one-day store goes.
        assert_eq!(rag.purge_expired().await.unwrap(), 1);
        assert!(matches!(rag.vector_store(&key, &one).await, Err(InferenceError::VectorStoreNotFound(_))));
        assert_eq!(rag.vector_store(&key, &three).await.unwrap().status, "completed");
        // The registry schedules the purge.
        let registry = format!("{:?}", rag.registry().unwrap());
        assert!(registry.contains("inference.purge_expired_vector_stores"), "{registry}");
    }
}

/// A handler that signals its claim and never returns: the worker dies holding the job.
struct Hang(Arc<tokio::sync::Notify>);

#[async_trait]
impl Handler<IngestFile> for Hang {
    async fn handle(&self, _: IngestFile, _: &JobContext) -> Result<(), JobError> {
        self.0.notify_one();
        std::future::pending().await
    }
}

#[cfg(feature = "local-embedder")]
mod meaning {
    use super::*;

    fn model_dir() -> Option<std::path::PathBuf> {
        let dir = std::env::var_os("KEEL_TEST_EMBED_MODEL").map(std::path::PathBuf::from).unwrap_or_else(|| {
            std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/models/all-minilm-l6-v2")
        });
        if dir.join("model.safetensors").exists() {
            return Some(dir);
        }
        assert!(!shared::testing::in_ci(), "CI: run search/scripts/fetch-test-model.sh");
        None
    }

    backend_tests! {
        async fn the_local_embedder_finds_chunks_by_meaning(backend) {
            let Some(dir) = model_dir() else { return };
            let mut config = InferenceConfig::default();
            config.rag.local_model_dir = Some(dir);
            let f = fixture(&backend, config).await;
            let rag = f.service().await;
            assert_eq!(rag.search_mode(), "hybrid");
            let _worker = worker(&rag);
            let key = api_key(OrganizationId::new());
            let text = "# Notes\n\nOur kitten purrs on the sofa and chases yarn all afternoon. She naps in the \
                        sun by the window, then begs for her dinner of fish. At night she curls up on the bed \
                        and sleeps until the morning, when she wakes everyone for breakfast again.\n\n\
                        ## Finance\n\nQuarterly revenue grew while operating margins tightened. The board \
                        approved a dividend, and analysts raised their forecasts for earnings per share after \
                        the results. Cash flow from operations covered the capital spending of the year.\n";
            let file = rag.create_file(&key, upload("notes.md", text.as_bytes())).await.unwrap();
            let vs = store(&rag, &key, "meaning").await;
            let request = CreateVectorStoreFileRequest {
                file_id: file.id.clone(),
                attributes: None,
                chunking_strategy: Some(json!({"type": "static", "static": {"max_chunk_size_tokens": 100, "chunk_overlap_tokens": 0}})),
            };
            rag.attach_file(&key, &vs, request).await.unwrap();
            assert_eq!(settled(&rag, &key, &vs, &file.id).await.status, "completed");
            assert_eq!(rag.vector_store(&key, &vs).await.unwrap().search_mode, "hybrid");
            // No word of the query is in the text: only the vectors can find it.
            let page = search(&rag, &key, &vs, json!({"query": "pet cat", "max_num_results": 1})).await;
            assert!(page.data[0].content[0].text.contains("kitten"), "{page:?}");
            let page = search(&rag, &key, &vs, json!({"query": "company profits", "max_num_results": 1})).await;
            assert!(page.data[0].content[0].text.contains("revenue"), "{page:?}");
        }
    }
}
