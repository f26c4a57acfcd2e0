#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The billing contract story against every implementation of `BillingApi`, on every test
//! backend: the in-process `BillingService`, and `HttpBillingClient` talking to a gateway that
//! serves only billing. The budget race runs through both as well.

use auth::{AuthApi, AuthModule, AuthService};
use billing::{BillingApi, BillingConfig, BillingModule, BillingService, HttpBillingClient};
use shared::backend_tests;
use shared::module::Module;
use shared::testing::TestDatabase;
use std::sync::Arc;
use tests::billing::{BillingWorld, billing_contract, budget_race};
use tests::harness::{TestGateway, database, fast_auth_config, gateway_config};

const SERVICE_TOKEN: &str = "test-service-token";

fn billing_config() -> BillingConfig {
    BillingConfig { service_token: Some(shared::Secret::new(SERVICE_TOKEN)), ..BillingConfig::default() }
}

async fn world(database: &TestDatabase) -> BillingWorld {
    let modules: Vec<Arc<dyn Module>> =
        vec![Arc::new(AuthModule::new(fast_auth_config())), Arc::new(BillingModule::new(billing_config()))];
    let platform = shared::testing::platform(&modules);
    let auth_db = database.open(auth::DOMAIN).await;
    let auth: Arc<dyn AuthApi> =
        Arc::new(AuthService::new(auth_db.clone(), fast_auth_config(), &platform).await.unwrap());
    let checker = BillingService::new(database.open(billing::DOMAIN).await, billing_config(), &platform, auth.clone());
    BillingWorld { auth, auth_db, auth_config: fast_auth_config(), platform, checker }
}

async fn billing_only(database: &TestDatabase) -> (TestGateway, Arc<dyn BillingApi>) {
    let mut config = gateway_config(database);
    config.billing = billing_config();
    let gateway = TestGateway::start(config, Some(&[billing::DOMAIN])).await;
    let url = shared::Secret::new(gateway.url());
    let client = HttpBillingClient::new(&url, Some(shared::Secret::new(SERVICE_TOKEN)), &Default::default()).unwrap();
    (gateway, Arc::new(client))
}

backend_tests! {
    async fn in_process_service_keeps_the_contract(backend) {
        let database = database(&backend);
        let world = world(&database).await;
        billing_contract(Arc::new(world.checker.clone()), &world, "local").await;
        for seed in 0..3 {
            assert_eq!(budget_race(Arc::new(world.checker.clone()), &world, &format!("local{seed}")).await, 100);
        }
    }

    async fn http_client_against_a_billing_only_gateway_keeps_the_contract(backend) {
        let database = database(&backend);
        let world = world(&database).await;
        let (gateway, api) = billing_only(&database).await;
        billing_contract(api.clone(), &world, "remote").await;
        for seed in 0..3 {
            assert_eq!(budget_race(api.clone(), &world, &format!("remote{seed}")).await, 100);
        }
        gateway.stop().await;
    }

    async fn leased_clients_of_a_remote_billing_service_never_exceed_the_credit(backend) {
        // Two callers, each with its own leases over its own HTTP client: two inference
        // processes in front of one billing service.
        let database = database(&backend);
        let world = world(&database).await;
        let (gateway, api) = billing_only(&database).await;
        let url = shared::Secret::new(gateway.url());
        for seed in 0..3 {
            let callers: Vec<Arc<billing::LeasedBilling>> = (0..2)
                .map(|_| {
                    let client = HttpBillingClient::new(&url, Some(shared::Secret::new(SERVICE_TOKEN)), &Default::default()).unwrap();
                    Arc::new(billing::LeasedBilling::new(Arc::new(client), Default::default(), world.platform.metrics.billing().clone()))
                })
                .collect();
            let admin = world.platform_admin(&format!("lease-admin-{seed}@example.com")).await;
            let (_, org) = world.owner(&format!("lease-{seed}@example.com")).await;
            let grant = billing::GrantCreditRequest { amount: billing::Money::units(1), reason: "race".into() };
            api.grant_credit(&admin, org, "race", grant).await.unwrap();
            let tasks: Vec<_> = (0..200)
                .map(|i| {
                    let caller = callers[i % 2].clone();
                    tokio::spawn(async move {
                        let request = billing::ReserveRequest {
                            organization_id: org,
                            api_key_id: None,
                            amount: billing::Money::cents(1),
                            idempotency_key: format!("l-{i}"),
                            ttl: std::time::Duration::from_secs(60),
                        };
                        let hold = caller.reserve(request).await.ok()?;
                        let usage = billing::UsageRecord {
                            request_id: format!("lease-{seed}-{i}"),
                            model: "small".into(),
                            api_key_id: None,
                            input_tokens: 1,
                            output_tokens: 1,
                            cost: billing::Money::cents(1),
                        };
                        caller.settle(billing::SettleRequest { hold_id: hold.id, usage }).await.unwrap();
                        Some(())
                    })
                })
                .collect();
            let mut admitted = 0;
            for task in tasks {
                admitted += usize::from(task.await.unwrap().is_some());
            }
            for caller in &callers {
                caller.shutdown().await;
            }
            assert!(admitted <= 100 && admitted > 0, "seed {seed}: {admitted} admitted");
            let report = world.check(billing::Money::ZERO).await;
            let (available, held, spent) = report.balances[&org.to_string()];
            assert_eq!((held, spent), (0, admitted as i64 * billing::Money::cents(1).0), "seed {seed}");
            assert_eq!(available + spent, billing::Money::units(1).0);
        }
        gateway.stop().await;
    }

    async fn metering_routes_need_the_service_token(backend) {
        let database = database(&backend);
        let (gateway, _) = billing_only(&database).await;
        let url = shared::Secret::new(gateway.url());
        for token in [None, Some(shared::Secret::new("wrong"))] {
            let client: Arc<dyn BillingApi> = Arc::new(HttpBillingClient::new(&url, token, &Default::default()).unwrap());
            let request = billing::ReserveRequest {
                organization_id: auth::OrganizationId::new(),
                api_key_id: None,
                amount: billing::Money::cents(1),
                idempotency_key: "k".into(),
                ttl: std::time::Duration::from_secs(5),
            };
            assert_eq!(client.reserve(request).await, Err(billing::BillingError::Unauthenticated));
        }
        let body = serde_json::json!({
            "organization_id": auth::OrganizationId::new(), "api_key_id": null, "amount": 1,
            "idempotency_key": "k", "ttl_ms": 1000
        });
        let reply = gateway.client().post("/internal/billing/reserve", None, &body).await;
        reply.assert_error(401, "unauthenticated");
        gateway.stop().await;
    }
}
