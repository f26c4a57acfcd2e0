//! Billing across real gateway processes (the binary, twice) on one PostgreSQL database and
//! one Redis, with billing and inference in each process and the leased path on: the budget
//! race of issue 7 and what a `kill -9` of a process holding a lease can lose
//! (docs/BILLING.md, "Bounds").
//!
//! Every AI request is a chat completion of the echo model, priced so that its hold is exactly
//! $0.01: output 10⁻³ USD per token, input free, `max_tokens` 10, and a ten-word message (the
//! echo answers with its words, so the cost is exactly the hold too).
//!
//! PostgreSQL and Redis are needed; with `CI=true` their absence is a failure.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use auth::{AuthConfig, AuthService};
use billing::{BillingConfig, BillingService, Money};
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::{Api, Deployment, Process, time_until};

/// One output token: 10⁻³ USD, in nano-units per million tokens.
const OUTPUT_PRICE: &str = "1000000000000";
const CENT: i64 = 10_000_000;
const TEN_WORDS: &str = "one two three four five six seven eight nine ten";

/// The settings of every process of these tests: the priced echo model, and plan rate limits
/// out of the way (the default plan allows 60 requests a minute).
const PRICED: [(&str, &str); 3] = [
    ("KEEL_INFERENCE__ECHO__OUTPUT_NANOS_PER_MILLION", OUTPUT_PRICE),
    ("KEEL_BILLING__PLANS__FREE__REQUESTS_PER_MINUTE", "1000000"),
    ("KEEL_BILLING__PLANS__FREE__TOKENS_PER_MINUTE", "1000000000"),
];

/// The test's own view of the ledger: the billing service opened on the deployment's database,
/// as an operator would run the check.
struct Ledger {
    billing: BillingService,
}

impl Ledger {
    async fn open(deployment: &Deployment) -> Self {
        let modules = gateway::GatewayConfig::default().modules();
        let platform = shared::testing::platform(&modules);
        let database = &deployment.database;
        let auth = AuthService::new(database.open(auth::DOMAIN).await, AuthConfig::default(), &platform).await.unwrap();
        let billing = BillingService::new(
            database.open(billing::DOMAIN).await,
            BillingConfig::default(),
            &platform,
            Arc::new(auth),
        );
        Self { billing }
    }

    /// Checks every ledger invariant (no process may be writing) and returns the organization's
    /// (available, held, spent).
    async fn check(&self, org: &str) -> (i64, i64, i64) {
        let report =
            self.billing.check_invariants(Money::ZERO).await.unwrap_or_else(|e| panic!("ledger invariant broken: {e}"));
        report.balances.get(org).copied().unwrap_or_default()
    }
}

/// An organization with an API key and `credit` granted by a platform administrator (made with
/// `gateway admin grant-admin`) through the HTTP API; returns (organization id, API key,
/// owner's session).
async fn funded(
    deployment: &Deployment,
    at: &Process,
    api: &Api,
    email: &str,
    credit: i64,
) -> (String, String, String) {
    let (session, _, org) = api.signup(at, email).await;
    let (status, key) =
        api.post(at, &format!("/v1/organizations/{org}/api-keys"), Some(&session), json!({"name": "k"})).await;
    assert_eq!(status, StatusCode::CREATED, "{key}");
    let key = key["key"].as_str().unwrap().to_owned();
    let admin = format!("admin-{email}");
    api.signup(at, &admin).await;
    deployment.grant_admin(&admin);
    let admin = api.login(at, &admin).await;
    let response = api
        .http
        .post(format!("{}/v1/organizations/{org}/billing/credits", at.url))
        .bearer_auth(&admin)
        .header("idempotency-key", format!("fund-{org}"))
        .json(&json!({"amount": credit, "reason": "test"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED, "{:?}", response.text().await);
    (org, key, session)
}

/// The outcome of one chat completion.
#[derive(Debug)]
enum Outcome {
    /// 200, with the cost of its usage (nano-units).
    Admitted(i64),
    /// 429 insufficient_quota.
    Refused,
}

/// One chat completion with the given request id (the hold's idempotency key and the usage's
/// request id); a 503 is retried with the same id, as a client honouring it would.
async fn complete(http: &reqwest::Client, url: &str, key: &str, request_id: &str, text: &str) -> Outcome {
    let body = json!({"model": "echo", "max_tokens": 10, "messages": [{"role": "user", "content": text}]});
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let response = http
            .post(format!("{url}/v1/chat/completions"))
            .bearer_auth(key)
            .header("x-request-id", request_id)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = response.status();
        let answer: Value = response.json().await.unwrap_or(Value::Null);
        match status {
            StatusCode::OK => {
                // Input is free; each output token costs 10⁻³ USD = 10⁶ nano-units.
                return Outcome::Admitted(answer["usage"]["completion_tokens"].as_i64().unwrap() * 1_000_000);
            }
            StatusCode::TOO_MANY_REQUESTS => {
                assert_eq!(answer["error"]["code"], "insufficient_quota", "{answer}");
                return Outcome::Refused;
            }
            StatusCode::SERVICE_UNAVAILABLE if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            other => panic!("request {request_id}: unexpected {other}: {answer}"),
        }
    }
}

/// `requests` chat completions fired at once, alternating between `processes`; returns the
/// costs of the admitted ones and how many were refused.
async fn fire(api: &Api, processes: &[&Process], key: &str, tag: &str, requests: usize) -> (Vec<i64>, usize) {
    let tasks: Vec<_> = (0..requests)
        .map(|i| {
            let (http, key) = (api.http.clone(), key.to_owned());
            let url = processes[i % processes.len()].url.clone();
            let request_id = format!("{tag}-{i}");
            tokio::spawn(async move { complete(&http, &url, &key, &request_id, TEN_WORDS).await })
        })
        .collect();
    let (mut admitted, mut refused) = (Vec::new(), 0);
    for task in tasks {
        match task.await.unwrap() {
            Outcome::Admitted(cost) => admitted.push(cost),
            Outcome::Refused => refused += 1,
        }
    }
    (admitted, refused)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_budget_race_across_two_gateway_processes_admits_at_most_the_credit() {
    let Some(deployment) = Deployment::new(&PRICED) else { return };
    let ledger = Ledger::open(&deployment).await;
    let api = Api::new();
    for seed in 0..3 {
        let (a, b) = (deployment.start(), deployment.start());
        let email = format!("race{seed}@example.com");
        let (org, key, _) = funded(&deployment, &a, &api, &email, 100 * CENT).await;
        // Both processes know the key before the race (its first use reads the database).
        for p in [&a, &b] {
            assert_eq!(api.get(p, "/v1/models", &key).await.0, StatusCode::OK);
        }
        // 200 reservations of $0.01 against $1.00, at once, half through each process.
        let (admitted, refused) = fire(&api, &[&a, &b], &key, &format!("race{seed}"), 200).await;
        assert!(admitted.len() <= 100, "seed {seed}: {} admitted against $1.00", admitted.len());
        assert!(!admitted.is_empty(), "seed {seed}: nothing admitted");
        assert_eq!(admitted.len() + refused, 200);
        assert!(admitted.iter().all(|cost| *cost == CENT), "each admitted request costs its hold: {admitted:?}");
        // A graceful stop writes every acknowledged settlement and returns every lease.
        assert!(a.terminate().success());
        assert!(b.terminate().success());
        let (available, held, spent) = ledger.check(&org).await;
        let charged: i64 = admitted.iter().sum();
        eprintln!("seed {seed}: {} admitted, {refused} refused, spent {spent} nano-USD", admitted.len());
        assert_eq!(held, 0, "seed {seed}: every lease returned");
        assert_eq!(spent, charged, "seed {seed}: every admitted request charged once, nothing else");
        assert!(spent <= 100 * CENT);
        assert_eq!(available + spent, 100 * CENT, "seed {seed}: no money created or lost");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_process_charges_only_committed_usage_and_its_lease_returns_by_expiry() {
    let ttl_ms = 2_000;
    let extra: Vec<(&str, &str)> = PRICED
        .into_iter()
        .chain([
            ("KEEL_BILLING__LEASE__LEASE_TTL_MS", "2000"),
            ("KEEL_BILLING__LEASE__IDLE_RELEASE_MS", "1000"),
            ("KEEL_BILLING__SWEEP_INTERVAL_SECS", "1"),
            // A streamed answer takes seconds: the process is killed in the middle of one.
            ("KEEL_INFERENCE__ECHO__CHUNK_DELAY_MS", "1000"),
        ])
        .collect();
    let Some(deployment) = Deployment::new(&extra) else { return };
    let ledger = Ledger::open(&deployment).await;
    let api = Api::new();
    let (a, b) = (deployment.start(), deployment.start());
    let granted = 1_000 * CENT;
    let (org, key, owner) = funded(&deployment, &a, &api, "crash@example.com", granted).await;
    let balance = |at: &Process| {
        let (api, url, owner) = (&api, format!("{}/v1/organizations/{org}/billing/balance", at.url), owner.clone());
        async move {
            let (status, body) = api.call(reqwest::Method::GET, url, Some(&owner), None).await;
            assert_eq!(status, StatusCode::OK, "{body}");
            let n = |k: &str| body[k].as_i64().unwrap();
            (n("available"), n("held"), n("spent"))
        }
    };

    // 20 requests through A, and their settlements committed (A holds a lease).
    let (first, _) = fire(&api, &[&a], &key, "crash", 20).await;
    assert_eq!(first.len(), 20);
    let committed = time_until(Duration::from_secs(30), || async { balance(&b).await.2 == 20 * CENT }).await;
    assert!(committed.is_some(), "A's settlements were never committed: {:?}", balance(&b).await);

    // A stream in flight (admitted: its hold is in A's lease, and its words take seconds), ten
    // more requests answered, then kill -9 at once.
    let stream = api
        .http
        .post(format!("{}/v1/chat/completions", a.url))
        .bearer_auth(&key)
        .header("x-request-id", "crash-stream")
        .json(&json!({"model": "echo", "stream": true, "max_tokens": 10,
                      "messages": [{"role": "user", "content": "seven words that are never fully streamed"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), StatusCode::OK);
    let tasks: Vec<_> = (20..30)
        .map(|i| {
            let (http, key, url) = (api.http.clone(), key.clone(), a.url.clone());
            tokio::spawn(async move {
                let outcome = complete(&http, &url, &key, &format!("crash-{i}"), TEN_WORDS).await;
                (outcome, Instant::now())
            })
        })
        .collect();
    let mut answered = Vec::new();
    for task in tasks {
        let (outcome, at) = task.await.unwrap();
        assert!(matches!(outcome, Outcome::Admitted(CENT)));
        answered.push(at);
    }
    a.kill();
    let killed = Instant::now();
    let mut ages: Vec<Duration> = answered.iter().map(|at| killed - *at).collect();
    ages.sort();
    drop(stream);

    // The lease is still held: the dead process cannot return it.
    let (available, held, spent) = balance(&b).await;
    assert!(held > 0, "A's lease is held until it expires");
    assert!((20 * CENT..=30 * CENT).contains(&spent), "spent {spent}");
    assert_eq!(available + held + spent, granted);
    // The sweeper (in B) returns it once its TTL (pushed by A's last commit) has passed.
    let returned = time_until(Duration::from_secs(60), || async { balance(&b).await.1 == 0 }).await;
    assert!(returned.is_some(), "the dead process's lease never came back: {:?}", balance(&b).await);
    let returned = killed.elapsed();
    let (available, held, spent) = balance(&b).await;
    assert_eq!(held, 0);
    assert_eq!(available + spent, granted, "the crash charged nothing that was not used");
    // Only whole cents: the stream A was killed in the middle of ($0.007 of usage) is not charged.
    assert_eq!(spent % CENT, 0, "spent {spent}");
    let kept = spent / CENT;
    assert!((20..=30).contains(&kept), "{kept} of 30 answered requests charged");
    eprintln!(
        "kill -9: {kept} of 30 answered requests were committed ({} lost with the process; the last \
         10 were answered {ages:?} before the kill); the lease came back {returned:?} \
         after the kill (TTL {ttl_ms} ms, sweeper every second)",
        30 - kept
    );

    // The client repeats every request id through B: each repeat is answered (the model runs
    // again), so it is charged, once; what A committed is not charged again and what it lost
    // stays lost.
    let tasks: Vec<_> = (0..30)
        .map(|i| {
            let (http, key, url) = (api.http.clone(), key.clone(), b.url.clone());
            tokio::spawn(async move { complete(&http, &url, &key, &format!("crash-{i}"), TEN_WORDS).await })
        })
        .collect();
    for task in tasks {
        assert!(matches!(task.await.unwrap(), Outcome::Admitted(CENT)));
    }
    assert!(b.terminate().success());
    let (available, held, spent) = ledger.check(&org).await;
    assert_eq!((held, spent), (0, (kept + 30) * CENT), "each answered call charged once");
    assert_eq!(available + spent, granted);
}
