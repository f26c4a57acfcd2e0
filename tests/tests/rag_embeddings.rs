//! Retrieval with a provider embedding model (`inference.rag.embedding_model`): chunks and
//! search queries are embedded through the fake upstream on the `/v1/embeddings` path, the
//! store searches in hybrid mode, and both embeddings are billed to the organization once.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use auth::{AuthApi, AuthModule};
use billing::{BillingApi, BillingConfig, BillingModule, PutSubscriptionRequest};
use inference::config::{DeploymentConfig, InferenceConfig, ModelConfig, ModelKind, ProviderConfig};
use inference::{CreateVectorStoreFileRequest, CreateVectorStoreRequest, InferenceModule, RagApi};
use serde_json::json;
use shared::backend_tests;
use shared::jobs::{JobsConfig, NoObserver, Worker};
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
