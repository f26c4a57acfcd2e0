//! The auth contract story against every implementation of `AuthApi`, on every test backend:
//! the in-process `AuthService`, and `HttpAuthClient` talking to a gateway serving only auth.

use auth::{AuthApi, HttpAuthClient};
use shared::testing::{TestDatabase, backends};
use std::sync::Arc;
use tests::contract::auth_contract;
use tests::harness::{TestGateway, auth_service, fast_auth_config};

#[tokio::test]
async fn in_process_service_keeps_the_contract() {
    for backend in backends() {
        let database = TestDatabase::new(&backend);
        let api = auth_service(&database, fast_auth_config()).await;
        auth_contract(api).await;
    }
}

#[tokio::test]
async fn http_client_against_an_auth_only_gateway_keeps_the_contract() {
    for backend in backends() {
        let database = TestDatabase::new(&backend);
        let gateway = TestGateway::auth_only(&database).await;
        let api: Arc<dyn AuthApi> = Arc::new(HttpAuthClient::new(&gateway.url()).unwrap());
        auth_contract(api).await;
        gateway.stop().await;
    }
}
