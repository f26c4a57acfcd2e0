//! The retrieval contract story against every implementation of `RagApi`, on every test
//! backend: the in-process `RagService` (with a worker running its ingestion jobs), and
//! `HttpInferenceClient` talking to a gateway that serves only inference.

use inference::{HttpInferenceClient, RagApi};
use shared::backend_tests;
use std::sync::Arc;
use tests::harness::{TestGateway, auth_service, database, fast_auth_config, gateway_config};
use tests::rag::{RagWorld, in_process, rag_contract};

backend_tests! {
    async fn in_process_service_keeps_the_contract(backend) {
        let database = database(&backend);
        let (api, auth, worker) = in_process(&database).await;
        rag_contract(api, &RagWorld { auth }, "local").await;
        worker.shutdown().await;
    }

    async fn http_client_against_an_inference_only_gateway_keeps_the_contract(backend) {
        let database = database(&backend);
        let mut config = gateway_config(&database);
        config.jobs.poll_interval_ms = 50;
        let gateway = TestGateway::start(config, Some(&[inference::DOMAIN])).await;
        let url = shared::Secret::new(gateway.url());
        let api: Arc<dyn RagApi> = Arc::new(HttpInferenceClient::new(&url, &Default::default()).unwrap());
        let world = RagWorld { auth: auth_service(&database, fast_auth_config()).await };
        rag_contract(api, &world, "remote").await;
        gateway.stop().await;
    }
}
