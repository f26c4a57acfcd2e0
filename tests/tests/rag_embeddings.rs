//! Retrieval with a provider embedding model (`inference.rag.embedding_model`): chunks and
//! search queries are embedded through the fake upstream on the `/v1/embeddings` path, the
//! store searches in hybrid mode, and both embeddings are billed to the organization once.
//! The ingestion's steps: one embed job per batch, a failed batch retried alone, a second
//! delivery of each step doing nothing, a file detached mid-way leaving nothing behind.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use auth::{AuthApi, AuthModule, Principal};
use billing::{BillingApi, BillingConfig, BillingModule, ModelPrice, Money, PutSubscriptionRequest};
use diesel::RunQueryDsl;
use inference::config::{DeploymentConfig, InferenceConfig, ModelConfig, ModelKind, ProviderConfig};
use inference::rag::{EmbedBatch, IndexFile, IngestFile};
use inference::{CreateVectorStoreFileRequest, CreateVectorStoreRequest, InferenceModule, RagApi};
use serde_json::json;
use shared::backend_tests;
use shared::jobs::{EnqueueOptions, Job, Jobs, JobsConfig, NoObserver, Registry, Worker, WorkerHandle};
use shared::module::Module;
use shared::testing::TestDatabase;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tests::billing::{TEST_PLAN, add_test_plan};
use tests::fake_openai::{Behavior, FakeOpenAi};
use tests::harness::fast_auth_config;

fn inference_config(fake: &FakeOpenAi) -> InferenceConfig {
    let mut config = InferenceConfig::default();
    config.providers.insert("fake".into(), ProviderConfig { base_url: fake.url.clone(), ..ProviderConfig::default() });
    config.models.insert(
        "embed".into(),
        ModelConfig {
            kind: ModelKind::Embedding,
            deployments: vec![DeploymentConfig {
                provider: "fake".into(),
                model: "text-embedding-3-small".into(),
                weight: 1,
                input_nanos_per_million: 1_000_000_000_000,
                output_nanos_per_million: 0,
            }],
            ..ModelConfig::default()
        },
    );
    config.rag.embedding_model = Some("embed".into());
    // The fake answers three-dimensional vectors.
    config.rag.hnsw.dimensions = 3;
    config
}

fn billing_config() -> BillingConfig {
    let mut config = BillingConfig::default();
    add_test_plan(&mut config);
    config
}

backend_tests! {
    async fn chunks_and_queries_are_embedded_through_the_provider_and_billed(backend) {
        let fake = FakeOpenAi::start(Behavior::answer(5)).await;
        let modules: Vec<Arc<dyn Module>> = vec![
            Arc::new(AuthModule::new(fast_auth_config())),
            Arc::new(BillingModule::new(billing_config())),
            Arc::new(InferenceModule::new(inference_config(&fake))),
        ];
        let database = TestDatabase::migrated(&backend, &modules);
        let platform = shared::testing::platform(&modules);
        let (contracts, components) = shared::testing::build_components(&modules, &database, &platform).await;
        let auth = contracts.get::<dyn AuthApi>().unwrap();
        let billing = contracts.get::<dyn BillingApi>().unwrap();
        let rag = contracts.get::<dyn RagApi>().unwrap();
        let (jobs, registry) = components[2].jobs().expect("the inference domain has jobs");
        let config = JobsConfig { poll_interval_ms: 20, ..JobsConfig::default() };
        let _worker = Worker::start(&jobs, registry, &config, Arc::new(NoObserver)).unwrap();

        let world = tests::rag::RagWorld { auth: auth.clone() };
        let (key, owner) = world.organization("rag@example.com").await;
        let org = key.organization_id.unwrap();
        billing.put_subscription(&owner, org, PutSubscriptionRequest { plan: TEST_PLAN.into() }).await.unwrap();
        let spent = || async { billing.balance(&owner, org).await.unwrap().spent };
        let before = spent().await;

        let text = "# Runbook\n\nThe zebra cluster is backed up nightly to cold storage.\n";
        let upload = tests::rag::upload("runbook.md", Some("text/markdown"), text.as_bytes());
        let file = rag.create_file(&key, upload).await.unwrap();
        let store = rag.create_vector_store(&key, CreateVectorStoreRequest::default()).await.unwrap();
        assert_eq!(store.search_mode, "hybrid");
        let attach = CreateVectorStoreFileRequest { file_id: file.id.clone(), attributes: None, chunking_strategy: None };
        rag.attach_file(&key, &store.id, attach).await.unwrap();
        let done = tests::rag::settled(rag.as_ref(), &key, &store.id, &file.id).await;
        assert_eq!(done.status, "completed", "{done:?}");
        let embedded = fake.bodies();
        assert_eq!(embedded.len(), 1, "one batch");
        assert_eq!(embedded[0]["model"], "text-embedding-3-small");
        assert!(embedded[0]["input"][0].as_str().unwrap().contains("zebra"));

        // The settlement runs in the background: wait for the charge.
        let deadline = Instant::now() + Duration::from_secs(10);
        while spent().await == before {
            assert!(Instant::now() < deadline, "the ingestion's embedding was not billed");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let after_ingest = spent().await;

        let query = serde_json::from_value(json!({"query": "zebra backups"})).unwrap();
        let page = rag.search(&key, &store.id, query).await.unwrap();
        assert!(page.data[0].content[0].text.contains("zebra"), "{page:?}");
        assert_eq!(fake.requests(), 2, "the query was embedded");
        let deadline = Instant::now() + Duration::from_secs(10);
        while spent().await == after_ingest {
            assert!(Instant::now() < deadline, "the query's embedding was not billed");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// The ingestion's steps with a provider embedder: the domain built as the gateway builds it,
/// its jobs queue, and the organization that attaches.
struct Steps {
    fake: FakeOpenAi,
    database: TestDatabase,
    rag: Arc<dyn RagApi>,
    billing: Arc<dyn BillingApi>,
    jobs: Jobs,
    registry: Option<Registry>,
    key: Principal,
    owner: Principal,
}

/// The chunk batch of these tests: [`tests::rag::field_notes`] with `small_chunks` makes six
/// chunks or so, three batches or more.
const BATCH: usize = 2;

/// The fake's `usage.prompt_tokens` per embedding answer.
const TOKENS_PER_ANSWER: usize = 5;

async fn steps(backend: &shared::testing::TestBackend) -> Steps {
    steps_with(backend, |_| {}).await
}

/// [`steps`] with a change to the inference configuration.
async fn steps_with(backend: &shared::testing::TestBackend, change: impl FnOnce(&mut InferenceConfig)) -> Steps {
    let fake = FakeOpenAi::start(Behavior::answer(TOKENS_PER_ANSWER)).await;
    let mut config = inference_config(&fake);
    change(&mut config);
    config.rag.embedding_batch_size = BATCH as u32;
    // A failed provider call fails the step's attempt, not a retry inside the call; and the
    // circuit stays closed however many fail.
    config.retry.max_attempts = 1;
    config.circuit.failure_threshold = 1_000;
    let modules: Vec<Arc<dyn Module>> = vec![
        Arc::new(AuthModule::new(fast_auth_config())),
        Arc::new(BillingModule::new(billing_config())),
        Arc::new(InferenceModule::new(config)),
    ];
    let database = TestDatabase::migrated(backend, &modules);
    let platform = shared::testing::platform(&modules);
    let (contracts, components) = shared::testing::build_components(&modules, &database, &platform).await;
    let auth = contracts.get::<dyn AuthApi>().unwrap();
    let billing = contracts.get::<dyn BillingApi>().unwrap();
    let rag = contracts.get::<dyn RagApi>().unwrap();
    let (jobs, registry) = components[2].jobs().expect("the inference domain has jobs");
    let world = tests::rag::RagWorld { auth };
    let (key, owner) = world.organization("steps@example.com").await;
    let org = key.organization_id.unwrap();
    billing.put_subscription(&owner, org, PutSubscriptionRequest { plan: TEST_PLAN.into() }).await.unwrap();
    Steps { fake, database, rag, billing, jobs, registry: Some(registry), key, owner }
}

impl Steps {
    /// Starts the worker (once): quick polls and retries.
    fn worker(&mut self) -> WorkerHandle {
        let config =
            JobsConfig { poll_interval_ms: 20, backoff_base_ms: 50, backoff_max_ms: 200, ..JobsConfig::default() };
        let registry = self.registry.take().expect("one worker");
        Worker::start(&self.jobs, registry, &config, Arc::new(NoObserver)).unwrap()
    }

    /// Uploads the field notes and attaches them to a new store: (store, file).
    async fn attach(&self) -> (String, String) {
        let upload = tests::rag::upload("notes.md", Some("text/markdown"), tests::rag::field_notes().as_bytes());
        let file = self.rag.create_file(&self.key, upload).await.unwrap().id;
        let store = self.rag.create_vector_store(&self.key, CreateVectorStoreRequest::default()).await.unwrap().id;
        let attach = CreateVectorStoreFileRequest {
            file_id: file.clone(),
            attributes: None,
            chunking_strategy: Some(tests::rag::small_chunks()),
        };
        self.rag.attach_file(&self.key, &store, attach).await.unwrap();
        (store, file)
    }

    async fn settled(&self, store: &str, file: &str) -> inference::VectorStoreFile {
        tests::rag::settled(self.rag.as_ref(), &self.key, store, file).await
    }

    /// Runs a query that counts (`n`) over the inference database, `$1` bound to `arg`.
    async fn count(&self, sql: &'static str, arg: &str) -> i64 {
        let db = self.database.open(inference::DOMAIN).await;
        let arg = arg.to_owned();
        db.run(move |conn| {
            diesel::sql_query(sql)
                .bind::<diesel::sql_types::Text, _>(arg)
                .get_result::<Count>(conn)
                .map(|c| c.n)
                .map_err(shared::db::DbError::from)
        })
        .await
        .unwrap()
    }

    async fn chunks(&self, file: &str) -> i64 {
        self.count("SELECT COUNT(*) AS n FROM rag_chunks WHERE file_id = $1", file).await
    }

    async fn staged(&self, file: &str) -> i64 {
        self.count("SELECT COUNT(*) AS n FROM rag_staged_chunks WHERE file_id = $1", file).await
    }

    /// Ingestion jobs of these kinds not finished yet (finished jobs are deleted).
    async fn live_jobs(&self, kind: &str) -> i64 {
        self.count(
            "SELECT COUNT(*) AS n FROM keel_jobs WHERE kind = $1 AND state IN ('available', 'running', 'failed')",
            kind,
        )
        .await
    }

    async fn no_live_ingestion_jobs(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        for kind in [IngestFile::KIND, EmbedBatch::KIND, IndexFile::KIND] {
            while self.live_jobs(kind).await > 0 {
                assert!(Instant::now() < deadline, "{kind} jobs still live");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }

    async fn spent(&self) -> Money {
        let org = self.key.organization_id.unwrap();
        self.billing.balance(&self.owner, org).await.unwrap().spent
    }

    /// Waits for the settlements to reach `expected`, then checks that nothing more comes.
    async fn spent_exactly(&self, expected: Money) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.spent().await != expected {
            assert!(Instant::now() < deadline, "spent {} instead of {expected}", self.spent().await);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(self.spent().await, expected, "charged more than once");
    }

    /// The inputs of each embedding request, in order.
    fn batches_sent(&self) -> Vec<Vec<String>> {
        self.fake
            .bodies()
            .iter()
            .map(|b| b["input"].as_array().unwrap().iter().map(|t| t.as_str().unwrap().to_owned()).collect())
            .collect()
    }
}

#[derive(diesel::QueryableByName)]
struct Count {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    n: i64,
}

/// What a batch of the fake's answer costs: its usage at the deployment's price.
fn batch_cost() -> Money {
    let price = ModelPrice { input_price_per_mtok: Money(1_000_000_000_000), output_price_per_mtok: Money(0) };
    billing::cost_of(&price, TOKENS_PER_ANSWER as u64, 0)
}

fn times(cost: Money, n: usize) -> Money {
    (0..n).fold(Money(0), |sum, _| sum + cost)
}

backend_tests! {
    async fn a_file_of_several_batches_is_embedded_one_job_per_batch(backend) {
        let mut steps = steps(&backend).await;
        let before = steps.spent().await;
        // The embedder is down at first: the file is prepared, and its embed jobs wait, retried.
        steps.fake.set_default(Behavior::Status { status: 503, retry_after: None });
        let (store, file) = steps.attach().await;
        let _worker = steps.worker();
        let deadline = Instant::now() + Duration::from_secs(30);
        while steps.fake.requests() < 3 {
            assert!(Instant::now() < deadline, "the batches were not tried");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let staged = steps.staged(&file).await;
        let batches = (staged as usize).div_ceil(BATCH);
        assert!(batches >= 3, "{staged} chunks staged");
        // One embed job per batch, and each batch of at most BATCH chunks is a request of its own.
        assert_eq!(steps.live_jobs(EmbedBatch::KIND).await, batches as i64, "one embed job per batch");
        assert_eq!(steps.live_jobs(IngestFile::KIND).await, 0, "prepared");
        assert_eq!(steps.chunks(&file).await, 0, "nothing is live yet");
        assert_eq!(steps.rag.vector_store_file(&steps.key, &store, &file).await.unwrap().status, "in_progress");

        steps.fake.set_default(Behavior::answer(TOKENS_PER_ANSWER));
        let done = steps.settled(&store, &file).await;
        assert_eq!(done.status, "completed", "{done:?}");
        assert!(done.usage_bytes > 0);
        assert_eq!((steps.chunks(&file).await, steps.staged(&file).await), (staged, 0));
        let sent = steps.batches_sent();
        assert!(sent.iter().all(|b| !b.is_empty() && b.len() <= BATCH), "{sent:?}");
        let mut texts: Vec<&String> = sent.iter().flatten().collect();
        texts.sort();
        texts.dedup();
        assert_eq!(texts.len() as i64, staged, "every chunk was sent");
        // Each answer reports the same usage: one charge per batch means one answered call each.
        steps.spent_exactly(before + times(batch_cost(), batches)).await;
        steps.no_live_ingestion_jobs().await;
        let query = serde_json::from_value(json!({"query": "axolotl"})).unwrap();
        let page = steps.rag.search(&steps.key, &store, query).await.unwrap();
        assert!(page.data[0].content[0].text.contains("axolotl"), "{page:?}");
    }

    async fn a_batch_that_fails_transiently_is_retried_alone(backend) {
        let mut steps = steps(&backend).await;
        let before = steps.spent().await;
        // The second embedding request answers garbage: that batch's attempt fails.
        steps.fake.script([Behavior::answer(TOKENS_PER_ANSWER), Behavior::Malformed]);
        let (store, file) = steps.attach().await;
        let _worker = steps.worker();
        let done = steps.settled(&store, &file).await;
        assert_eq!(done.status, "completed", "{done:?}");
        let chunks = steps.chunks(&file).await;
        let batches = (chunks as usize).div_ceil(BATCH);
        assert!(batches >= 3, "{chunks} chunks");
        let ordinals = steps.count("SELECT COUNT(DISTINCT ordinal) AS n FROM rag_chunks WHERE file_id = $1", &file).await;
        assert_eq!((ordinals, steps.staged(&file).await), (chunks, 0), "no duplicate chunk");
        // One request per batch, plus the failed one again: only its batch was sent twice.
        let sent = steps.batches_sent();
        assert_eq!(sent.len(), batches + 1, "{sent:?}");
        let failed = &sent[1];
        assert_eq!(sent.iter().filter(|b| *b == failed).count(), 2, "{sent:?}");
        let mut distinct = sent.clone();
        distinct.sort();
        distinct.dedup();
        assert_eq!(distinct.len(), batches, "no other batch embedded twice: {sent:?}");
        // Billed once per batch: the failed attempt charged nothing.
        steps.spent_exactly(before + times(batch_cost(), batches)).await;
        steps.no_live_ingestion_jobs().await;
    }

    async fn a_second_delivery_of_each_step_does_nothing(backend) {
        let mut steps = steps(&backend).await;
        let (store, file) = steps.attach().await;
        // The prepare job twice, before any worker runs: they may run at once.
        let prepare = IngestFile { vector_store_id: store.clone(), file_id: file.clone() };
        steps.jobs.push(prepare.clone(), EnqueueOptions::default()).await.unwrap();
        assert_eq!(steps.live_jobs(IngestFile::KIND).await, 2);
        let _worker = steps.worker();
        let done = steps.settled(&store, &file).await;
        assert_eq!(done.status, "completed", "{done:?}");
        steps.no_live_ingestion_jobs().await;
        let chunks = steps.chunks(&file).await;
        let batches = (chunks as usize).div_ceil(BATCH);
        assert_eq!(steps.fake.requests(), batches, "each batch embedded once");
        let changes = || steps.count("SELECT COUNT(*) AS n FROM rag_changes WHERE file_id = $1", &file);
        assert_eq!(changes().await, 1, "one completion");
        let spent = steps.spent().await;

        // Then every step again, as after a lost acknowledgement.
        let db = steps.database.open(inference::DOMAIN).await;
        let (s, f) = (store.clone(), file.clone());
        let (attached_at, content_hash) = db
            .run(move |conn| {
                diesel::sql_query("SELECT created_at, content_hash FROM rag_store_files WHERE vector_store_id = $1 AND file_id = $2")
                    .bind::<diesel::sql_types::Text, _>(s)
                    .bind::<diesel::sql_types::Text, _>(f)
                    .get_result::<Attachment>(conn)
                    .map(|a| (a.created_at, a.content_hash))
                    .map_err(shared::db::DbError::from)
            })
            .await
            .unwrap();
        steps.jobs.push(prepare, EnqueueOptions::default()).await.unwrap();
        for batch in 0..batches as i32 {
            let job = EmbedBatch {
                vector_store_id: store.clone(),
                file_id: file.clone(),
                attached_at,
                content_hash: content_hash.clone(),
                batch,
            };
            steps.jobs.push(job, EnqueueOptions::default()).await.unwrap();
        }
        let index = IndexFile {
            vector_store_id: store.clone(),
            file_id: file.clone(),
            attached_at,
            content_hash,
            embedding_model: Some("embed".into()),
        };
        steps.jobs.push(index, EnqueueOptions::default()).await.unwrap();
        steps.no_live_ingestion_jobs().await;
        let again = steps.rag.vector_store_file(&steps.key, &store, &file).await.unwrap();
        assert_eq!((again.status.as_str(), again.usage_bytes), ("completed", done.usage_bytes));
        assert_eq!((steps.chunks(&file).await, steps.staged(&file).await), (chunks, 0));
        assert_eq!(changes().await, 1, "no second completion");
        assert_eq!(steps.fake.requests(), batches, "nothing embedded again");
        steps.spent_exactly(spent).await;
    }

    async fn a_file_detached_mid_pipeline_leaves_nothing_behind(backend) {
        let mut steps = steps(&backend).await;
        // The first batch is embedded; the others fail until the file is detached.
        steps.fake.set_default(Behavior::Status { status: 503, retry_after: None });
        steps.fake.script([Behavior::answer(TOKENS_PER_ANSWER)]);
        let (store, file) = steps.attach().await;
        let _worker = steps.worker();
        let deadline = Instant::now() + Duration::from_secs(30);
        while steps.fake.requests() < 3 {
            assert!(Instant::now() < deadline, "the batches were not tried");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let embedded = "SELECT COUNT(*) AS n FROM rag_staged_chunks WHERE file_id = $1 AND embedding IS NOT NULL";
        while steps.count(embedded, &file).await == 0 {
            assert!(Instant::now() < deadline, "no batch was embedded");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(steps.staged(&file).await > steps.count(embedded, &file).await, "others are not");
        assert_eq!(steps.chunks(&file).await, 0);
        assert_eq!(steps.rag.vector_store_file(&steps.key, &store, &file).await.unwrap().status, "in_progress");

        steps.rag.detach_file(&steps.key, &store, &file).await.unwrap();
        assert_eq!((steps.staged(&file).await, steps.chunks(&file).await), (0, 0));
        // The embedder is back: the retried batches find the file detached and do nothing.
        steps.fake.set_default(Behavior::answer(TOKENS_PER_ANSWER));
        steps.no_live_ingestion_jobs().await;
        assert_eq!((steps.staged(&file).await, steps.chunks(&file).await), (0, 0));
        let changes = steps.count("SELECT COUNT(*) AS n FROM rag_changes WHERE file_id = $1 AND kind = 'file_indexed'", &file).await;
        assert_eq!(changes, 0, "never completed");
        let query = serde_json::from_value(json!({"query": "axolotl"})).unwrap();
        assert!(steps.rag.search(&steps.key, &store, query).await.unwrap().data.is_empty());
    }
}

backend_tests! {
    async fn a_batch_that_fails_for_good_fails_the_file_and_leaves_no_staged_rows(backend) {
        // The index expects four dimensions; the fake answers three: a permanent failure.
        let mut steps = steps_with(&backend, |config| config.rag.hnsw.dimensions = 4).await;
        let (store, file) = steps.attach().await;
        let _worker = steps.worker();
        let failed = steps.settled(&store, &file).await;
        assert_eq!(failed.status, "failed", "{failed:?}");
        let error = failed.last_error.unwrap();
        assert_eq!(error.code, "server_error");
        assert!(error.message.contains("dimensions"), "{error:?}");
        steps.no_live_ingestion_jobs().await;
        assert_eq!((steps.staged(&file).await, steps.chunks(&file).await), (0, 0));
        let changes = steps.count("SELECT COUNT(*) AS n FROM rag_changes WHERE file_id = $1", &file).await;
        assert_eq!(changes, 0, "never indexed");
    }
}

#[derive(diesel::QueryableByName)]
struct Attachment {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    created_at: i64,
    #[diesel(sql_type = diesel::sql_types::Text)]
    content_hash: String,
}
