//! The auth contract story against every implementation of `AuthApi`, on every test backend:
//! the in-process `AuthService`, and `HttpAuthClient` talking to a gateway serving only auth.

use auth::{AuthApi, HttpAuthClient};
use shared::backend_tests;
use std::sync::Arc;
use tests::contract::auth_contract;
use tests::harness::{TestGateway, auth_service, database, fast_auth_config};

backend_tests! {
    async fn in_process_service_keeps_the_contract(backend) {
        let database = database(&backend);
        let api = auth_service(&database, fast_auth_config()).await;
        auth_contract(api).await;
    }

    async fn http_client_against_an_auth_only_gateway_keeps_the_contract(backend) {
        let database = database(&backend);
        let gateway = TestGateway::auth_only(&database).await;
        let url = shared::Secret::new(gateway.url());
        let api: Arc<dyn AuthApi> = Arc::new(HttpAuthClient::new(&url, &Default::default()).unwrap());
        auth_contract(api).await;
        gateway.stop().await;
    }
}
