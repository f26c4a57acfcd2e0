//! The inference routes end to end: a real gateway in front of the scriptable fake upstream
//! (`tests::fake_openai`), over HTTP, with an API key. The wire format, validation before any
//! upstream call, every fault of the fake (each a well-formed error within its deadline, with
//! bounded retries), fallback and the circuit breaker, the bulkhead, client disconnects, and
//! the latency of the other routes while the upstream is slow.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use billing::Money;
use futures_util::StreamExt;
use gateway::GatewayConfig;
use inference::config::{DeploymentConfig, ModelConfig, ModelKind, ProviderConfig};
use serde_json::{Value, json};
use shared::testing::{TestBackend, TestDatabase};
use std::time::{Duration, Instant};
use tests::billing::{TEST_PLAN, add_test_plan};
use tests::fake_openai::{Behavior, FakeOpenAi, WORD};
use tests::harness::{TestGateway, database, gateway_config};
use tests::{Client, Reply};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const PASSWORD: &str = "correct horse battery";

fn provider(fake: &FakeOpenAi) -> ProviderConfig {
    ProviderConfig {
        base_url: fake.url.clone(),
        first_token_timeout_ms: 1_000,
        idle_timeout_ms: 500,
        total_timeout_ms: 4_000,
        max_concurrency: 8,
        ..ProviderConfig::default()
    }
}

fn deployment(provider: &str, model: &str) -> DeploymentConfig {
    DeploymentConfig {
        provider: provider.into(),
        model: model.into(),
        weight: 1,
        input_nanos_per_million: 1_000_000_000,
        output_nanos_per_million: 2_000_000_000,
    }
}

/// A gateway with the chat model `gpt-4o-mini` and the embedding model `embed` on `fake`.
fn config(database: &TestDatabase, fake: &FakeOpenAi) -> GatewayConfig {
    let mut config = gateway_config(database);
    let inference = &mut config.inference;
    inference.providers.insert("fake".into(), provider(fake));
    inference.models.insert(
        "gpt-4o-mini".into(),
        ModelConfig {
            max_output_tokens: Some(1_000),
            deployments: vec![deployment("fake", "gpt-4o-mini")],
            ..ModelConfig::default()
        },
    );
    inference.models.insert(
        "embed".into(),
        ModelConfig {
            kind: ModelKind::Embedding,
            deployments: vec![deployment("fake", "text-embedding-3-small")],
            ..ModelConfig::default()
        },
    );
    inference.retry.base_backoff_ms = 10;
    inference.retry.max_backoff_ms = 50;
    // The plan every test organization subscribes to.
    add_test_plan(&mut config.billing);
    config
}

/// Signs up, subscribes the organization to the `test` plan (its credit is granted then) and
/// creates an API key: (session token, API key, organization id).
async fn credentials(api: &Client) -> (String, String, String) {
    let email = format!("u{}@example.com", uuid::Uuid::now_v7().simple());
    let reply = api.post("/v1/auth/signup", None, &json!({"email": email, "password": PASSWORD})).await;
    assert_eq!(reply.status, 201, "{}", reply.body);
    let session = reply.body["token"].as_str().unwrap().to_owned();
    let org = reply.body["organization"]["id"].as_str().unwrap().to_owned();
    let path = format!("/v1/organizations/{org}/subscription");
    let reply = api.json(reqwest::Method::PUT, &path, Some(&session), &json!({"plan": TEST_PLAN})).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let reply = api.post(&format!("/v1/organizations/{org}/api-keys"), Some(&session), &json!({"name": "k"})).await;
    assert_eq!(reply.status, 201, "{}", reply.body);
    (session, reply.body["key"].as_str().unwrap().to_owned(), org)
}

/// The organization's balance: (available, held, spent) in nano-units.
async fn balance(api: &Client, session: &str, org: &str) -> (i64, i64, i64) {
    let reply = api.get(&format!("/v1/organizations/{org}/billing/balance"), Some(session)).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let field = |name: &str| reply.body[name].as_i64().unwrap();
    (field("available"), field("held"), field("spent"))
}

async fn start(config: GatewayConfig) -> (TestGateway, Client, String, String) {
    let gateway = TestGateway::start(config, None).await;
    let api = gateway.client();
    let (session, key, _) = credentials(&api).await;
    (gateway, api, session, key)
}

fn chat(stream: bool) -> Value {
    json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Say something"}], "stream": stream})
}

/// A streamed answer read to its end: the `data` of each event.
async fn events(api: &Client, key: &str, body: &Value) -> (u16, Vec<String>) {
    let response =
        api.request(reqwest::Method::POST, "/v1/chat/completions", Some(key)).json(body).send().await.unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    let data = text.split("\n\n").filter_map(|event| event.strip_prefix("data: ")).map(str::to_owned).collect();
    (status, data)
}

fn backend() -> TestBackend {
    TestBackend::Sqlite
}

#[tokio::test]
async fn the_openai_routes_answer_in_openais_format() {
    let fake = FakeOpenAi::start(Behavior::answer(3)).await;
    let database = database(&backend());
    let (gateway, api, session, key) = start(config(&database, &fake)).await;

    // Non-streamed: the provider's answer, unknown fields passed through, the provider's model
    // name sent upstream, the overhead and request id headers.
    let mut body = chat(false);
    body["tools"] = json!([{"type": "function", "function": {"name": "f"}}]);
    body["temperature"] = json!(0.5);
    let reply = api.post("/v1/chat/completions", Some(&key), &body).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.body["object"], "chat.completion");
    assert_eq!(reply.body["choices"][0]["message"]["content"], WORD.repeat(3));
    assert_eq!(reply.body["usage"], json!({"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}));
    assert_eq!(reply.body["system_fingerprint"], "fp_fake", "unknown answer fields pass through");
    let overhead: f64 = reply.header("x-keel-overhead-ms").unwrap().parse().unwrap();
    assert!((0.0..1_000.0).contains(&overhead), "{overhead}");
    assert!(reply.header("x-request-id").is_some());
    let sent = fake.bodies().pop().unwrap();
    assert_eq!(sent["tools"], body["tools"]);
    assert_eq!(sent["temperature"], 0.5);
    assert_eq!(sent["model"], "gpt-4o-mini");

    // Streamed with usage: word chunks, a usage chunk, [DONE]; upstream was asked for usage.
    let mut body = chat(true);
    body["stream_options"] = json!({"include_usage": true});
    let (status, data) = events(&api, &key, &body).await;
    assert_eq!(status, 200);
    assert_eq!(data.len(), 5, "{data:?}");
    for chunk in &data[..3] {
        let chunk: Value = serde_json::from_str(chunk).unwrap();
        assert_eq!(chunk["choices"][0]["delta"]["content"], WORD);
        assert!(chunk.get("usage").is_none());
    }
    let usage: Value = serde_json::from_str(&data[3]).unwrap();
    assert_eq!(usage["usage"]["completion_tokens"], 3);
    assert_eq!(data[4], "[DONE]");

    // Streamed without usage: upstream is still asked (for metering); the caller sees none.
    let (status, data) = events(&api, &key, &chat(true)).await;
    assert_eq!(status, 200);
    assert_eq!(data.len(), 4, "{data:?}");
    assert_eq!(data[3], "[DONE]");
    assert_eq!(fake.bodies().pop().unwrap()["stream_options"]["include_usage"], true);

    // Embeddings: the vectors verbatim.
    let reply = api.post("/v1/embeddings", Some(&key), &json!({"model": "embed", "input": ["a", "b"]})).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.body["data"][1], json!({"object": "embedding", "index": 1, "embedding": [0.5, -0.25, 0.125]}));
    assert_eq!(fake.bodies().pop().unwrap()["model"], "text-embedding-3-small");

    // Models.
    let reply = api.get("/v1/models", Some(&key)).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let ids: Vec<&str> = reply.body["data"].as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["echo", "embed", "gpt-4o-mini"]);
    let reply = api.get("/v1/models/gpt-4o-mini", Some(&key)).await;
    assert_eq!(reply.body["object"], "model");
    let reply = api.get("/v1/models/gpt-9", Some(&key)).await;
    assert_eq!(
        reply.body,
        json!({"error": {"message": "The model `gpt-9` does not exist or you do not have access to it.",
            "type": "not_found_error", "code": "model_not_found", "param": "model"}})
    );
    assert_eq!(reply.status, 404);

    // Validation: 400 before any upstream call.
    let before = fake.requests();
    let reply = api.post("/v1/chat/completions", Some(&key), &json!({"model": "gpt-4o-mini", "messages": []})).await;
    reply.assert_error(400, "invalid_request");
    assert_eq!(reply.body["error"]["type"], "invalid_request_error");
    assert_eq!(reply.body["error"]["param"], "messages");
    let mut too_long = chat(false);
    too_long["max_tokens"] = json!(1_001);
    let reply = api.post("/v1/chat/completions", Some(&key), &too_long).await;
    reply.assert_error(400, "invalid_request");
    assert_eq!(reply.body["error"]["param"], "max_tokens");
    let reply = api.post("/v1/chat/completions", Some(&key), &json!({"messages": [{"role": "user"}]})).await;
    reply.assert_error(400, "invalid_request");
    assert_eq!(reply.body["error"]["param"], "model");
    let reply =
        api.post("/v1/chat/completions", Some(&key), &json!({"model": "nope", "messages": [{"role": "user"}]})).await;
    reply.assert_error(404, "model_not_found");
    let reply = api.post("/v1/embeddings", Some(&key), &json!({"model": "gpt-4o-mini", "input": "x"})).await;
    reply.assert_error(400, "invalid_request");
    let raw = api
        .request(reqwest::Method::POST, "/v1/chat/completions", Some(&key))
        .header("content-type", "application/json")
        .body("{not json");
    Client::send(raw).await.assert_error(400, "invalid_json");
    assert_eq!(fake.requests(), before, "no invalid request reached the provider");

    // Credentials: none → 401; a session instead of an API key → 403.
    api.post("/v1/chat/completions", None, &chat(false)).await.assert_error(401, "unauthenticated");
    let reply = api.post("/v1/chat/completions", Some(&session), &chat(false)).await;
    reply.assert_error(403, "permission_denied");
    assert_eq!(reply.body["error"]["type"], "permission_error");
    assert_eq!(fake.requests(), before);

    // The echo model needs no upstream: the last user message, word by word.
    let echo = json!({"model": "echo", "messages": [{"role": "user", "content": "hello big world"}]});
    let reply = api.post("/v1/chat/completions", Some(&key), &echo).await;
    assert_eq!(reply.body["choices"][0]["message"]["content"], "hello big world");
    assert_eq!(reply.body["usage"]["completion_tokens"], 3);
    let mut echo_stream = echo.clone();
    echo_stream["stream"] = json!(true);
    let (_, data) = events(&api, &key, &echo_stream).await;
    let words: Vec<String> = data[..3]
        .iter()
        .map(|d| {
            serde_json::from_str::<Value>(d).unwrap()["choices"][0]["delta"]["content"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(words, ["hello", " big", " world"]);
    assert_eq!(fake.requests(), before);
    gateway.stop().await;
}

#[tokio::test]
async fn every_fault_of_the_upstream_is_a_clean_error_within_its_deadline() {
    let fake = FakeOpenAi::start(Behavior::answer(2)).await;
    let database = database(&backend());
    let mut config = config(&database, &fake);
    // Faults follow one another here: the breaker is tested on its own.
    config.inference.circuit.failure_threshold = 1_000;
    let (gateway, api, _, key) = start(config).await;

    // 429 with Retry-After, then success: retried after the wait, answered 200.
    fake.script([Behavior::Status { status: 429, retry_after: Some(1) }]);
    let t0 = Instant::now();
    let before = fake.requests();
    let reply = api.post("/v1/chat/completions", Some(&key), &chat(false)).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert!(t0.elapsed() >= Duration::from_secs(1), "Retry-After was honoured");
    assert_eq!(fake.requests() - before, 2);

    // 500 every time: three attempts (retry.max_attempts), then 503 upstream_error.
    fake.script(vec![Behavior::Status { status: 500, retry_after: None }; 3]);
    let before = fake.requests();
    let reply = api.post("/v1/chat/completions", Some(&key), &chat(false)).await;
    reply.assert_error(503, "upstream_error");
    assert_eq!(reply.header("retry-after"), Some("1"));
    assert_eq!(fake.requests() - before, 3, "retries are bounded");

    // 400 from the provider: passed on at once, never retried.
    fake.script([Behavior::Status { status: 400, retry_after: None }]);
    let before = fake.requests();
    let reply = api.post("/v1/chat/completions", Some(&key), &chat(false)).await;
    reply.assert_error(400, "upstream_rejected");
    assert_eq!(reply.body["error"]["message"], "fake says 400");
    assert_eq!(fake.requests() - before, 1);

    // Malformed JSON every time: 503 after the bounded retries.
    fake.script([Behavior::Malformed, Behavior::Malformed, Behavior::Malformed]);
    let reply = api.post("/v1/chat/completions", Some(&key), &chat(false)).await;
    reply.assert_error(503, "upstream_error");

    // A hang: 503 upstream_timeout, within the total deadline (4 s) plus a margin.
    fake.script([Behavior::Hang, Behavior::Hang, Behavior::Hang]);
    let t0 = Instant::now();
    let reply = api.post("/v1/chat/completions", Some(&key), &chat(false)).await;
    reply.assert_error(503, "upstream_timeout");
    assert!(t0.elapsed() < Duration::from_millis(4_500), "{:?}", t0.elapsed());

    // A streamed hang: the same error before the stream starts (nothing committed yet).
    fake.script([Behavior::Hang, Behavior::Hang, Behavior::Hang]);
    let t0 = Instant::now();
    let (status, data) = events(&api, &key, &chat(true)).await;
    assert_eq!(status, 503, "{data:?}");
    assert!(t0.elapsed() < Duration::from_millis(4_500), "{:?}", t0.elapsed());

    // A stream cut in the middle: the chunks so far, then an error event, and no [DONE].
    fake.script([Behavior::CutAfter(2)]);
    let before = fake.requests();
    let (status, data) = events(&api, &key, &chat(true)).await;
    assert_eq!(status, 200);
    assert_eq!(data.len(), 3, "{data:?}");
    let error: Value = serde_json::from_str(&data[2]).unwrap();
    assert_eq!(error["error"]["code"], "upstream_error");
    assert_eq!(error["error"]["type"], "service_unavailable_error");
    assert_eq!(fake.requests() - before, 1, "never retried after the first byte");

    // An answer 300 ms late: the wait is the provider's, not in the gateway's overhead.
    fake.script([Behavior::Answer { words: 5, delay: Duration::from_millis(300), usage: true }]);
    let reply = api.post("/v1/chat/completions", Some(&key), &chat(false)).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let overhead: f64 = reply.header("x-keel-overhead-ms").unwrap().parse().unwrap();
    assert!(overhead < 250.0, "the provider's 300 ms counted as overhead: {overhead} ms");

    // Chunks 300 ms apart (within the idle deadline of 500 ms): the whole answer.
    fake.script([Behavior::Answer { words: 5, delay: Duration::from_millis(300), usage: true }]);
    let (status, data) = events(&api, &key, &chat(true)).await;
    assert_eq!(status, 200);
    assert_eq!(data.len(), 6, "{data:?}");
    assert_eq!(data[5], "[DONE]");

    // Trickling, 700 ms apart: the first chunk is in time (first-token deadline 1 s), the next
    // is past the idle deadline: an error event, well before the trickle would have ended.
    fake.script([Behavior::Answer { words: 4, delay: Duration::from_millis(700), usage: true }]);
    let t0 = Instant::now();
    let (status, data) = events(&api, &key, &chat(true)).await;
    assert_eq!(status, 200);
    assert_eq!(data.len(), 2, "{data:?}");
    let error: Value = serde_json::from_str(&data[1]).unwrap();
    assert_eq!(error["error"]["code"], "upstream_timeout");
    assert!(t0.elapsed() < Duration::from_millis(2_000), "{:?}", t0.elapsed());

    // A malformed chunk in a stream: retried before anything was sent, then a clean 503.
    fake.script([Behavior::Malformed, Behavior::Malformed, Behavior::Malformed]);
    let (status, _) = events(&api, &key, &chat(true)).await;
    assert_eq!(status, 503);
    gateway.stop().await;
}

/// The price of `input` and `output` tokens at the test deployments' prices (1 and 2 units per
/// million tokens), in nano-units.
fn cost(input: i64, output: i64) -> i64 {
    input * 1_000 + output * 2_000
}

#[tokio::test]
async fn a_budget_race_never_spends_beyond_the_bound_and_rejected_calls_never_reach_the_provider() {
    let fake = FakeOpenAi::start(Behavior::Answer { words: 3, delay: Duration::from_millis(50), usage: true }).await;
    let database = database(&backend());
    let mut config = config(&database, &fake);
    // Credit for a few holds only: a hold is 10 prompt tokens (estimated) + max_tokens 10.
    config.billing.plans.get_mut(TEST_PLAN).unwrap().included_credit = Money::nanos(100_000);
    let gateway = TestGateway::start(config, None).await;
    let api = gateway.client();
    let (session, key, org) = credentials(&api).await;

    let mut body = chat(false);
    body["max_tokens"] = json!(10);
    let hold = cost(10, 10);
    let calls = (0..200).map(|_| {
        let (api, key, body) = (api.clone(), key.clone(), body.clone());
        tokio::spawn(async move { api.post("/v1/chat/completions", Some(&key), &body).await })
    });
    let replies = futures_util::future::join_all(calls).await;
    let mut ok = 0;
    for reply in replies {
        let reply = reply.unwrap();
        match reply.status {
            200 => ok += 1,
            _ => {
                reply.assert_error(429, "insufficient_quota");
                assert_eq!(reply.body["error"]["type"], "insufficient_quota");
            }
        }
    }
    assert!(ok >= 1, "some calls fit the budget");
    assert_eq!(fake.requests(), ok, "a refused call never reaches the provider");

    // Every call settles with the provider's usage (7 + 3 tokens); nothing stays held.
    let settled = async {
        loop {
            let (_, held, spent) = balance(&api, &session, &org).await;
            if held == 0 && spent == ok as i64 * cost(7, 3) {
                return spent;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let spent = tokio::time::timeout(Duration::from_secs(10), settled).await.expect("every hold settled");
    assert!(spent <= 100_000 + hold, "spent {spent} beyond the credit and one hold");
    gateway.stop().await;
}

/// Waits until the organization has nothing held and has spent more than `before`; returns
/// what the call cost.
async fn billed_since(api: &Client, session: &str, org: &str, before: i64) -> i64 {
    let billed = async {
        loop {
            let (_, held, spent) = balance(api, session, org).await;
            if held == 0 && spent > before {
                return spent - before;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), billed).await.expect("the call was settled")
}

/// On SQLite, and on PostgreSQL when `KEEL_TEST_DATABASE_URL` is set.
#[tokio::test]
async fn a_client_that_goes_away_cancels_the_upstream_and_pays_exactly_for_what_it_got() {
    for backend in shared::testing::backends() {
        a_client_that_goes_away_cancels_the_upstream_and_pays_exactly_for_what_it_got_on(backend).await;
    }
}

async fn a_client_that_goes_away_cancels_the_upstream_and_pays_exactly_for_what_it_got_on(backend: TestBackend) {
    // Three chunks, then the provider pauses until its client (the gateway) goes away: it goes
    // on generating only if the gateway did not notice that its own client left.
    let fake = FakeOpenAi::start(Behavior::PauseAfter { words: 30, first: 3, delay: Duration::ZERO }).await;
    let database = database(&backend);
    let mut config = config(&database, &fake);
    // No deadline of the gateway's own may end the provider's pause: only the client leaving.
    let provider = config.inference.providers.get_mut("fake").unwrap();
    provider.idle_timeout_ms = 60_000;
    provider.total_timeout_ms = 60_000;
    let gateway = TestGateway::start(config, None).await;
    let api = gateway.client();
    let (session, key, org) = credentials(&api).await;
    let (_, _, spent_before) = balance(&api, &session, &org).await;

    let response =
        api.request(reqwest::Method::POST, "/v1/chat/completions", Some(&key)).json(&chat(true)).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let mut body = response.bytes_stream();
    let mut text = String::new();
    while text.matches("\n\n").count() < 3 {
        text.push_str(std::str::from_utf8(&body.next().await.unwrap().unwrap()).unwrap());
    }
    let received = text.matches(WORD).count();
    assert_eq!(received, 3, "{text}");
    drop(body);

    // The gateway sees its client close (without having to write to it) and drops the
    // provider's request: the provider, paused, sees that and generates nothing more.
    let cancelled = async {
        while fake.cancelled() == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let waited = tokio::time::timeout(Duration::from_secs(8), cancelled).await;
    assert!(waited.is_ok(), "the upstream request was not cancelled: {} chunks sent", fake.chunks_sent());
    assert_eq!(fake.chunks_sent(), 3);

    // Billed: the prompt (8 tokens with the chat format, counted by tiktoken: the provider's
    // usage never came) and exactly the 3 chunks the client received.
    let billed = billed_since(&api, &session, &org, spent_before).await;
    assert_eq!(billed, cost(8, 3), "billed {billed}: {} output tokens", (billed - cost(8, 0)) / 2_000);
    let metrics = api.get("/metrics", None).await;
    let line =
        "keel_inference_tokens_total{model=\"gpt-4o-mini\",deployment=\"fake/gpt-4o-mini\",direction=\"output\"} 3";
    assert!(metrics.body.as_str().unwrap().contains(line), "{line}");

    // A client that closes with a FIN and nothing unread (the socket's write side shut, no
    // reset): the same, though no write to it fails.
    let (_, _, spent_before) = balance(&api, &session, &org).await;
    let cancelled_before = fake.cancelled();
    let address = gateway.url().trim_start_matches("http://").to_owned();
    let mut socket = tokio::net::TcpStream::connect(&address).await.unwrap();
    let body = chat(true).to_string();
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: {address}\r\nauthorization: Bearer {key}\r\n\
         content-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    socket.write_all(head.as_bytes()).await.unwrap();
    let mut text = String::new();
    while text.matches("\n\n").count() < 3 {
        let mut buffer = [0u8; 4096];
        let n = socket.read(&mut buffer).await.unwrap();
        assert!(n > 0, "{text}");
        text.push_str(std::str::from_utf8(&buffer[..n]).unwrap());
    }
    assert_eq!(text.matches(WORD).count(), 3, "{text}");
    socket.shutdown().await.unwrap();
    let cancelled = async {
        while fake.cancelled() == cancelled_before {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let waited = tokio::time::timeout(Duration::from_secs(8), cancelled).await;
    assert!(waited.is_ok(), "the upstream request was not cancelled after the client's FIN");
    assert_eq!(billed_since(&api, &session, &org, spent_before).await, cost(8, 3));
    drop(socket);

    // The provider dies after 2 chunks: the client gets them and an error event; the call is
    // billed for the 2 chunks generated and delivered.
    fake.script([Behavior::CutAfter(2)]);
    let (_, _, spent_before) = balance(&api, &session, &org).await;
    let (status, data) = events(&api, &key, &chat(true)).await;
    assert_eq!(status, 200);
    assert_eq!(data.len(), 3, "{data:?}");
    let error: Value = serde_json::from_str(&data[2]).unwrap();
    assert_eq!(error["error"]["code"], "upstream_error");
    assert_eq!(billed_since(&api, &session, &org, spent_before).await, cost(8, 2));

    gateway.stop().await;
}

/// gpt-4o-mini on two deployments: `first` (provider `name`, weight 100) before `fallback`'s,
/// each circuit opening after `failure_threshold` consecutive failures for `open_ms`.
fn first_then_fallback(
    database: &TestDatabase,
    fallback: &FakeOpenAi,
    name: &str,
    first: ProviderConfig,
    failure_threshold: u32,
    open_ms: u64,
) -> GatewayConfig {
    let mut config = config(database, fallback);
    config.inference.providers.insert(name.into(), first);
    let model = config.inference.models.get_mut("gpt-4o-mini").unwrap();
    model.deployments = vec![deployment(name, "gpt-4o-mini"), deployment("fake", "gpt-4o-mini")];
    // The fallback has weight 0: never chosen first, so which deployment a call tries first is
    // not left to chance (at 100 to 1, one call in 101 skipped the first and a test waiting
    // for the first's probe waited forever).
    model.deployments[1].weight = 0;
    config.inference.circuit.failure_threshold = failure_threshold;
    config.inference.circuit.open_ms = open_ms;
    config
}

#[tokio::test]
async fn a_failing_deployment_falls_back_then_its_circuit_opens() {
    let broken = FakeOpenAi::start(Behavior::Status { status: 500, retry_after: None }).await;
    let healthy = FakeOpenAi::start(Behavior::answer(1)).await;
    let database = database(&backend());
    let config = first_then_fallback(&database, &healthy, "broken", provider(&broken), 3, 60_000);
    let (gateway, api, _, key) = start(config).await;

    for _ in 0..20 {
        let reply = api.post("/v1/chat/completions", Some(&key), &chat(false)).await;
        assert_eq!(reply.status, 200, "{}", reply.body);
    }
    assert_eq!(broken.requests(), 3, "the circuit opened after 3 failures and stays open");
    assert_eq!(healthy.requests(), 20);
    let metrics = api.get("/metrics", None).await;
    let text = metrics.body.as_str().unwrap();
    assert!(
        text.contains("keel_inference_circuit_state{model=\"gpt-4o-mini\",deployment=\"broken/gpt-4o-mini\"} 1"),
        "{text}"
    );
    gateway.stop().await;
}

/// The value of `keel_inference_circuit_state` for the `flaky` deployment of gpt-4o-mini.
async fn circuit_gauge(api: &Client) -> String {
    let metrics = api.get("/metrics", None).await;
    let text = metrics.body.as_str().unwrap().to_owned();
    let prefix = "keel_inference_circuit_state{model=\"gpt-4o-mini\",deployment=\"flaky/gpt-4o-mini\"} ";
    text.lines().find_map(|l| l.strip_prefix(prefix)).map(str::to_owned).unwrap_or_else(|| panic!("{text}"))
}

#[tokio::test]
async fn the_circuit_gauge_shows_a_half_open_circuit_while_its_probe_is_out() {
    let flaky = FakeOpenAi::start(Behavior::Status { status: 500, retry_after: None }).await;
    let healthy = FakeOpenAi::start(Behavior::answer(1)).await;
    let database = database(&backend());
    let mut flaky_provider = provider(&flaky);
    flaky_provider.first_token_timeout_ms = 5_000;
    let config = first_then_fallback(&database, &healthy, "flaky", flaky_provider, 1, 300);
    let (gateway, api, _, key) = start(config).await;

    // One failure opens the circuit; the call falls back to the healthy deployment.
    let reply = api.post("/v1/chat/completions", Some(&key), &chat(false)).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(flaky.requests(), 1);
    assert_eq!(circuit_gauge(&api).await, "1");

    // After the open period the circuit is half-open before any call (the next one is the
    // probe), still half-open while the probe is out, and closed once it succeeds.
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(circuit_gauge(&api).await, "2");
    flaky.script([Behavior::Answer { words: 1, delay: Duration::from_millis(1_500), usage: true }]);
    let probe = {
        let (api, key) = (api.clone(), key.clone());
        tokio::spawn(async move { api.post("/v1/chat/completions", Some(&key), &chat(false)).await })
    };
    while flaky.requests() < 2 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(circuit_gauge(&api).await, "2");
    let reply = probe.await.unwrap();
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(circuit_gauge(&api).await, "0");
    gateway.stop().await;
}

#[tokio::test]
async fn a_full_bulkhead_refuses_at_once_and_other_routes_keep_their_latency() {
    let fake = FakeOpenAi::start(Behavior::Answer { words: 1, delay: Duration::from_millis(1_500), usage: true }).await;
    let database = database(&backend());
    let mut config = config(&database, &fake);
    config.inference.providers.get_mut("fake").unwrap().max_concurrency = 4;
    config.inference.providers.get_mut("fake").unwrap().first_token_timeout_ms = 5_000;
    let (gateway, api, _, key) = start(config).await;

    let slow: Vec<_> = (0..4)
        .map(|_| {
            let (api, key) = (api.clone(), key.clone());
            tokio::spawn(async move { api.post("/v1/chat/completions", Some(&key), &chat(false)).await })
        })
        .collect();
    while fake.requests() < 4 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The fifth call finds the bulkhead full: 503 overloaded with Retry-After, at once.
    let t0 = Instant::now();
    let reply = api.post("/v1/chat/completions", Some(&key), &chat(false)).await;
    reply.assert_error(503, "overloaded");
    assert_eq!(reply.header("retry-after"), Some("1"));
    assert!(t0.elapsed() < Duration::from_millis(500), "{:?}", t0.elapsed());
    assert_eq!(fake.requests(), 4);
    let metrics = api.get("/metrics", None).await;
    let text = metrics.body.as_str().unwrap();
    assert!(text.contains("keel_inference_refused_total{model=\"gpt-4o-mini\",reason=\"overloaded\"} 1\n"), "{text}");
    let slots = |text: &str, family: &str| {
        let series =
            format!("keel_inference_bulkhead_{family}{{model=\"gpt-4o-mini\",deployment=\"fake/gpt-4o-mini\"}} ");
        let line = text.lines().find(|l| l.starts_with(&series)).unwrap_or_else(|| panic!("{series} in {text}"));
        line[series.len()..].to_owned()
    };
    assert_eq!(slots(text, "in_flight"), "4", "the bulkhead's four slots are taken");
    assert_eq!(slots(text, "capacity"), "4");

    // The other routes answer as fast as ever while the provider is slow.
    let mut slowest = Duration::ZERO;
    for _ in 0..20 {
        let t0 = Instant::now();
        let reply = api.get("/v1/auth/me", Some(&key)).await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        slowest = slowest.max(t0.elapsed());
    }
    assert!(slowest < Duration::from_millis(250), "{slowest:?}");
    for call in slow {
        assert_eq!(call.await.unwrap().status, 200);
    }
    let metrics = api.get("/metrics", None).await;
    assert_eq!(slots(metrics.body.as_str().unwrap(), "in_flight"), "0", "the slots are given back");
    gateway.stop().await;
}

#[tokio::test]
async fn an_organization_at_its_concurrency_limit_is_refused_at_once_and_others_are_not() {
    let fake = FakeOpenAi::start(Behavior::Answer { words: 1, delay: Duration::from_millis(1_500), usage: true }).await;
    let database = database(&backend());
    let mut config = config(&database, &fake);
    config.inference.max_concurrency_per_organization = 2;
    config.inference.providers.get_mut("fake").unwrap().first_token_timeout_ms = 5_000;
    let (gateway, api, _, key) = start(config).await;
    let (_, other_key, _) = credentials(&api).await;

    let slow: Vec<_> = (0..2)
        .map(|_| {
            let (api, key) = (api.clone(), key.clone());
            tokio::spawn(async move { api.post("/v1/chat/completions", Some(&key), &chat(false)).await })
        })
        .collect();
    while fake.requests() < 2 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The organization's third call is refused at once, before the limiter, billing or the
    // provider: 429 with Retry-After, so SDKs back off and retry.
    let t0 = Instant::now();
    let reply = api.post("/v1/chat/completions", Some(&key), &chat(false)).await;
    reply.assert_error(429, "rate_limit_exceeded");
    assert_eq!(reply.header("retry-after"), Some("1"));
    assert!(t0.elapsed() < Duration::from_millis(500), "{:?}", t0.elapsed());
    assert_eq!(fake.requests(), 2);
    // Another organization's call goes through meanwhile.
    let other = api.post("/v1/chat/completions", Some(&other_key), &chat(false)).await;
    assert_eq!(other.status, 200, "{}", other.body);
    for call in slow {
        assert_eq!(call.await.unwrap().status, 200);
    }
    // The slots came back with the answers.
    let reply = api.post("/v1/chat/completions", Some(&key), &chat(false)).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let metrics = api.get("/metrics", None).await;
    let text = metrics.body.as_str().unwrap();
    let refused = |reason: &str| format!("keel_inference_refused_total{{model=\"gpt-4o-mini\",reason=\"{reason}\"}}");
    assert!(text.contains(&format!("{} 1\n", refused("organization_concurrency"))), "{text}");
    assert!(text.contains(&format!("{} 0\n", refused("overloaded"))), "{text}");
    gateway.stop().await;
}

#[tokio::test]
async fn a_plan_sees_and_calls_only_its_models() {
    let fake = FakeOpenAi::start(Behavior::answer(1)).await;
    let database = database(&backend());
    let mut config = config(&database, &fake);
    config.billing.plans.get_mut(TEST_PLAN).unwrap().allowed_models = vec!["echo".into()];
    let (gateway, api, _, key) = start(config).await;
    let reply = api.get("/v1/models", Some(&key)).await;
    assert_eq!(reply.body["data"].as_array().unwrap().len(), 1, "{}", reply.body);
    assert_eq!(reply.body["data"][0]["id"], "echo");
    api.get("/v1/models/gpt-4o-mini", Some(&key)).await.assert_error(404, "model_not_found");
    let reply = api.post("/v1/chat/completions", Some(&key), &chat(false)).await;
    reply.assert_error(403, "model_not_allowed");
    assert_eq!(reply.body["error"]["param"], "model");
    assert_eq!(fake.requests(), 0);
    gateway.stop().await;
}

#[tokio::test]
async fn a_gateway_whose_inference_is_remote_answers_the_same() {
    let fake = FakeOpenAi::start(Behavior::answer(2)).await;
    let database = database(&backend());
    let service = TestGateway::start(config(&database, &fake), None).await;
    let mut front = config(&database, &fake);
    front.inference.url = Some(shared::Secret::new(service.url()));
    let front = TestGateway::start(front, None).await;
    let api = front.client();
    let (session, key, _) = credentials(&api).await;

    let reply = api.post("/v1/chat/completions", Some(&key), &chat(false)).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.body["choices"][0]["message"]["content"], WORD.repeat(2));
    assert!(reply.header("x-keel-overhead-ms").is_some());
    let mut body = chat(true);
    body["stream_options"] = json!({"include_usage": true});
    let (status, data) = events(&api, &key, &body).await;
    assert_eq!(status, 200);
    assert_eq!(data.len(), 4, "{data:?}");
    assert_eq!(data[3], "[DONE]");
    let reply = api.post("/v1/embeddings", Some(&key), &json!({"model": "embed", "input": "x"})).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let reply = api.get("/v1/models", Some(&key)).await;
    assert_eq!(reply.body["data"].as_array().unwrap().len(), 3, "{}", reply.body);

    // The response cache through the front: the opt-in goes to the service, the status comes back.
    let cached = json!({"model": "gpt-4o-mini", "temperature": 0, "messages": [{"role": "user", "content": "remote"}]});
    let before = fake.requests();
    assert_eq!(chat_with(&api, &key, &cached, Some("on")).await.header("x-keel-cache"), Some("miss"));
    let hit = chat_with(&api, &key, &cached, Some("on")).await;
    assert_eq!(hit.header("x-keel-cache"), Some("hit"));
    assert_eq!(hit.body["choices"][0]["message"]["content"], WORD.repeat(2));
    assert_eq!(fake.requests(), before + 1);
    assert_eq!(chat_with(&api, &key, &cached, None).await.header("x-keel-cache"), None, "no TTL, no opt-in");

    // Errors come back as the same variants, hence the same envelopes.
    api.get("/v1/models/gpt-9", Some(&key)).await.assert_error(404, "model_not_found");
    let reply = api.post("/v1/chat/completions", Some(&key), &json!({"model": "gpt-4o-mini", "messages": []})).await;
    reply.assert_error(400, "invalid_request");
    assert_eq!(reply.body["error"]["param"], "messages");
    api.post("/v1/chat/completions", Some(&session), &chat(false)).await.assert_error(403, "permission_denied");
    fake.script(vec![Behavior::Status { status: 500, retry_after: None }; 3]);
    api.post("/v1/chat/completions", Some(&key), &chat(false)).await.assert_error(503, "service_unavailable");
    fake.script([Behavior::CutAfter(1)]);
    let (status, data) = events(&api, &key, &chat(true)).await;
    assert_eq!(status, 200);
    assert_eq!(data.len(), 2, "{data:?}");
    assert!(data[1].contains("\"error\""), "{data:?}");
    front.stop().await;
    service.stop().await;
}

/// A chat request whose answer may be cached (`temperature` 0), with `content` as its prompt.
fn deterministic(content: &str, stream: bool) -> Value {
    json!({"model": "gpt-4o-mini", "temperature": 0, "stream": stream,
        "messages": [{"role": "user", "content": content}]})
}

async fn chat_with(api: &Client, key: &str, body: &Value, cache: Option<&str>) -> Reply {
    let mut request = api.request(reqwest::Method::POST, "/v1/chat/completions", Some(key)).json(body);
    if let Some(value) = cache {
        request = request.header("x-keel-cache", value);
    }
    Client::send(request).await
}

/// A gateway whose `gpt-4o-mini` caches deterministic answers for a minute and `short` for a
/// second, both on `fake`.
fn caching_config(database: &TestDatabase, fake: &FakeOpenAi) -> GatewayConfig {
    let mut config = config(database, fake);
    let inference = &mut config.inference;
    inference.models.get_mut("gpt-4o-mini").unwrap().cache_ttl_secs = Some(60);
    let mut short = inference.models["gpt-4o-mini"].clone();
    short.cache_ttl_secs = Some(1);
    inference.models.insert("short".into(), short);
    inference.cache.max_entry_bytes = 4_000;
    config
}

/// On SQLite, and on PostgreSQL when `KEEL_TEST_DATABASE_URL` is set.
#[tokio::test]
async fn the_response_cache_replays_deterministic_answers_within_an_organization_only() {
    for backend in shared::testing::backends() {
        the_response_cache_replays_deterministic_answers_within_an_organization_only_on(backend).await;
    }
}

async fn the_response_cache_replays_deterministic_answers_within_an_organization_only_on(backend: TestBackend) {
    let fake = FakeOpenAi::start(Behavior::answer(3)).await;
    let database = database(&backend);
    let gateway = TestGateway::start(caching_config(&database, &fake), None).await;
    let api = gateway.client();
    let (session, key, org) = credentials(&api).await;

    // A miss calls the provider; the same request then hits, with the same answer.
    let body = deterministic("Say something", false);
    let miss = chat_with(&api, &key, &body, None).await;
    assert_eq!(miss.status, 200, "{}", miss.body);
    assert_eq!(miss.header("x-keel-cache"), Some("miss"));
    assert_eq!(fake.requests(), 1);
    let hit = chat_with(&api, &key, &body, None).await;
    assert_eq!(hit.status, 200, "{}", hit.body);
    assert_eq!(hit.header("x-keel-cache"), Some("hit"));
    assert_eq!(hit.body, miss.body);
    assert_eq!(fake.requests(), 1, "a hit does not call the provider");

    // The same request streamed, with usage: the cached answer replayed as a valid stream.
    let mut streamed = deterministic("Say something", true);
    streamed["stream_options"] = json!({"include_usage": true});
    let response =
        api.request(reqwest::Method::POST, "/v1/chat/completions", Some(&key)).json(&streamed).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-keel-cache"], "hit");
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let text = response.text().await.unwrap();
    let data: Vec<&str> = text.split("\n\n").filter_map(|e| e.strip_prefix("data: ")).collect();
    assert_eq!(data.len(), 3, "{text}");
    let chunk: Value = serde_json::from_str(data[0]).unwrap();
    assert_eq!(chunk["object"], "chat.completion.chunk");
    assert_eq!(chunk["choices"][0]["delta"]["content"], WORD.repeat(3));
    assert_eq!(chunk["choices"][0]["finish_reason"], "stop");
    let usage: Value = serde_json::from_str(data[1]).unwrap();
    assert_eq!(usage["usage"], json!({"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}));
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(data[2], "[DONE]");
    assert_eq!(fake.requests(), 1);

    // A streamed miss is stored whole and served to a non-streamed request.
    let (status, _) = events(&api, &key, &deterministic("Streamed first", true)).await;
    assert_eq!(status, 200);
    assert_eq!(fake.requests(), 2);
    let hit = chat_with(&api, &key, &deterministic("Streamed first", false), None).await;
    assert_eq!(hit.header("x-keel-cache"), Some("hit"));
    assert_eq!(hit.body["choices"][0]["message"]["content"], WORD.repeat(3));
    assert_eq!(hit.body["usage"]["completion_tokens"], 3);
    assert_eq!(fake.requests(), 2);

    // Another organization never gets this one's answers.
    let (_, other_key, _) = credentials(&api).await;
    let other = chat_with(&api, &other_key, &body, None).await;
    assert_eq!(other.header("x-keel-cache"), Some("miss"));
    assert_eq!(fake.requests(), 3);

    // Not deterministic (temperature above 0, or absent): never cached, no header.
    let mut warm = body.clone();
    warm["temperature"] = json!(0.7);
    let mut unset = body.clone();
    unset.as_object_mut().unwrap().remove("temperature");
    for request in [&warm, &warm, &unset, &unset] {
        let reply = chat_with(&api, &key, request, None).await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        assert_eq!(reply.header("x-keel-cache"), None);
    }
    assert_eq!(fake.requests(), 7);

    // `x-keel-cache: off` bypasses the cache.
    let reply = chat_with(&api, &key, &body, Some("off")).await;
    assert_eq!(reply.header("x-keel-cache"), None);
    assert_eq!(fake.requests(), 8);

    // An answer above `inference.cache.max_entry_bytes` is not stored.
    fake.set_default(Behavior::answer(2_000));
    for _ in 0..2 {
        let reply = chat_with(&api, &key, &deterministic("Say a lot", false), None).await;
        assert_eq!(reply.header("x-keel-cache"), Some("miss"));
    }
    assert_eq!(fake.requests(), 10);
    fake.set_default(Behavior::answer(3));

    // A model with no TTL caches only on the request's opt-in (the echo model here).
    let echo = json!({"model": "echo", "temperature": 0, "messages": [{"role": "user", "content": "hello there"}]});
    assert_eq!(chat_with(&api, &key, &echo, None).await.header("x-keel-cache"), None);
    assert_eq!(chat_with(&api, &key, &echo, Some("on")).await.header("x-keel-cache"), Some("miss"));
    let hit = chat_with(&api, &key, &echo, Some("on")).await;
    assert_eq!(hit.header("x-keel-cache"), Some("hit"));
    assert_eq!(hit.body["choices"][0]["message"]["content"], "hello there");

    // TTL: `short` keeps answers for a second.
    let mut short = deterministic("Briefly", false);
    short["model"] = json!("short");
    assert_eq!(chat_with(&api, &key, &short, None).await.header("x-keel-cache"), Some("miss"));
    assert_eq!(chat_with(&api, &key, &short, None).await.header("x-keel-cache"), Some("hit"));
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert_eq!(chat_with(&api, &key, &short, None).await.header("x-keel-cache"), Some("miss"));

    // Each model's lookups, as the headers said: only cacheable calls look up.
    let metrics = api.get("/metrics", None).await;
    let text = metrics.body.as_str().unwrap();
    for (model, hits, misses) in [("gpt-4o-mini", 3, 5), ("echo", 1, 1), ("short", 1, 2)] {
        for (result, n) in [("hit", hits), ("miss", misses)] {
            let line = format!("keel_inference_cache_lookups_total{{model=\"{model}\",result=\"{result}\"}} {n}\n");
            assert!(text.contains(&line), "no `{}` in\n{text}", line.trim_end());
        }
    }

    // Hits are free by default: the organization paid for its misses only: 9 of 7 + 3 tokens
    // (2 misses, 4 uncached calls and the bypass on gpt-4o-mini, 2 misses on short) and the 2
    // answers too large to cache (the echo model is free).
    let expected = 9 * cost(7, 3) + 2 * cost(7, 2_000);
    let settled = async {
        loop {
            let (_, held, spent) = balance(&api, &session, &org).await;
            if held == 0 && spent >= expected {
                return spent;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let spent = tokio::time::timeout(Duration::from_secs(10), settled).await.expect("every call settled");
    assert_eq!(spent, expected);
    gateway.stop().await;
}

/// On SQLite, and on PostgreSQL when `KEEL_TEST_DATABASE_URL` is set.
#[tokio::test]
async fn cache_hits_count_as_requests_but_not_tokens_and_are_billed_in_full_when_configured() {
    for backend in shared::testing::backends() {
        cache_hits_count_as_requests_but_not_tokens_and_are_billed_in_full_when_configured_on(backend).await;
    }
}

async fn cache_hits_count_as_requests_but_not_tokens_and_are_billed_in_full_when_configured_on(backend: TestBackend) {
    let fake = FakeOpenAi::start(Behavior::answer(1_000)).await;
    let database = database(&backend);
    let mut config = caching_config(&database, &fake);
    config.inference.cache.hit_billing = inference::config::CacheHitBilling::Full;
    config.inference.cache.max_entry_bytes = 16_000;
    // Room for one call's estimated tokens a minute (prompt ~10 + max_tokens 1,000), which the
    // miss then uses (7 + 1,000): what is left does not cover another call's estimate.
    config.billing.plans.get_mut(TEST_PLAN).unwrap().tokens_per_minute = 1_500;
    let gateway = TestGateway::start(config, None).await;
    let api = gateway.client();
    let (session, key, org) = credentials(&api).await;

    let body = deterministic("Say something", false);
    assert_eq!(chat_with(&api, &key, &body, None).await.header("x-keel-cache"), Some("miss"));
    for _ in 0..3 {
        let hit = chat_with(&api, &key, &body, None).await;
        assert_eq!(hit.status, 200, "{}", hit.body);
        assert_eq!(hit.header("x-keel-cache"), Some("hit"));
    }
    assert_eq!(fake.requests(), 1);
    // The tokens of the one call are spent: an uncached call is refused, the hits were not.
    let mut warm = body.clone();
    warm["temperature"] = json!(0.7);
    chat_with(&api, &key, &warm, None).await.assert_error(429, "rate_limit_exceeded");
    assert_eq!(fake.requests(), 1);

    // Billed in full: the miss and the three hits, each 7 + 1,000 tokens.
    let billed = billed_since(&api, &session, &org, 0).await;
    let settled = async {
        let mut spent = billed;
        while spent < 4 * cost(7, 1_000) {
            tokio::time::sleep(Duration::from_millis(50)).await;
            spent = balance(&api, &session, &org).await.2;
        }
        spent
    };
    let spent = tokio::time::timeout(Duration::from_secs(10), settled).await.expect("every hit billed");
    assert_eq!(spent, 4 * cost(7, 1_000));
    gateway.stop().await;
}

/// Waits until the organization has spent `spent` and holds nothing: every call so far settled
/// (and, in the same task, what it did not use of its tokens per minute given back).
async fn settled(api: &Client, session: &str, org: &str, spent: i64) {
    let wait = async {
        loop {
            let (_, held, so_far) = balance(api, session, org).await;
            if (held, so_far) == (0, spent) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), wait).await.expect("every call settled");
}

/// A gateway whose plan's tokens per minute (1,800) hold one call's estimate (prompt ~10 + the
/// output cap 1,000) and not two.
async fn one_estimate_a_minute(database: &TestDatabase, fake: &FakeOpenAi) -> (TestGateway, Client) {
    let mut config = config(database, fake);
    config.billing.plans.get_mut(TEST_PLAN).unwrap().tokens_per_minute = 1_800;
    let gateway = TestGateway::start(config, None).await;
    let api = gateway.client();
    (gateway, api)
}

/// A call with `key` whose answer takes half a second, once the provider has it.
async fn slow_call(api: &Client, key: &str, fake: &FakeOpenAi) -> tokio::task::JoinHandle<Reply> {
    let before = fake.requests();
    fake.script([Behavior::Answer { words: 3, delay: Duration::from_millis(500), usage: true }]);
    let (api, key) = (api.clone(), key.to_owned());
    let call = tokio::spawn(async move { api.post("/v1/chat/completions", Some(&key), &chat(false)).await });
    while fake.requests() == before {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    call
}

/// Tokens per minute count a call's estimate (prompt ~10 + the output cap 1,000) while it is in
/// flight; once it ends, what it did not use (it used 7 + 3) goes back to the key and the
/// organization.
#[tokio::test]
async fn tokens_per_minute_get_back_what_a_call_did_not_use() {
    let fake = FakeOpenAi::start(Behavior::answer(3)).await;
    let database = database(&backend());
    let (gateway, api) = one_estimate_a_minute(&database, &fake).await;
    let (session, key, org) = credentials(&api).await;

    // One estimate at a time fits; without the give-back the second call would be refused.
    // OpenAI's headers say where each call left the limits: its whole estimate taken, the
    // earlier calls' unused tokens back.
    let mut after_first = None;
    for n in 1..=6 {
        let reply = api.post("/v1/chat/completions", Some(&key), &chat(false)).await;
        assert_eq!(reply.status, 200, "call {n}: {}", reply.body);
        let number = |name: &str| reply.header(name).unwrap_or_else(|| panic!("no {name}")).parse::<u32>().unwrap();
        assert_eq!(number("x-ratelimit-limit-requests"), 100_000);
        // 100,000 a minute come back at one every 0.6 ms: full again between these calls.
        assert_eq!(number("x-ratelimit-remaining-requests"), 99_999);
        assert_eq!(number("x-ratelimit-limit-tokens"), 1_800);
        let remaining = number("x-ratelimit-remaining-tokens");
        let first = *after_first.get_or_insert(remaining);
        assert!((700..800).contains(&first), "1,800 less one estimate of ~1,010: {first}");
        assert!(remaining >= first - 10 * (n as u32 - 1), "call {n}: {remaining} (first {first})");
        let reset = reply.header("x-ratelimit-reset-tokens").unwrap();
        assert!(reset.ends_with('s') && reset.len() > 1, "{reset}");
        settled(&api, &session, &org, n * cost(7, 3)).await;
    }

    // While a call is in flight its whole estimate is taken: a second one is refused.
    let slow = slow_call(&api, &key, &fake).await;
    api.post("/v1/chat/completions", Some(&key), &chat(false)).await.assert_error(429, "rate_limit_exceeded");
    assert_eq!(slow.await.unwrap().status, 200);
    settled(&api, &session, &org, 7 * cost(7, 3)).await;
    let reply = api.post("/v1/chat/completions", Some(&key), &chat(false)).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(fake.requests(), 8, "the refused call never reached the provider");
    gateway.stop().await;
}

/// A call refused by its organization's tokens per minute gets back what its key's check took:
/// it counts against none of the limits.
#[tokio::test]
async fn a_call_refused_by_the_organizations_limit_takes_nothing_from_its_keys() {
    let fake = FakeOpenAi::start(Behavior::answer(3)).await;
    let database = database(&backend());
    let (gateway, api) = one_estimate_a_minute(&database, &fake).await;
    let (session, key_a, org) = credentials(&api).await;
    let reply = api.post(&format!("/v1/organizations/{org}/api-keys"), Some(&session), &json!({"name": "b"})).await;
    assert_eq!(reply.status, 201, "{}", reply.body);
    let key_b = reply.body["key"].as_str().unwrap().to_owned();

    // Key A's call in flight holds ~1,010 of the organization's 1,800.
    let slow = slow_call(&api, &key_a, &fake).await;
    // Key B's own bucket is full, the organization's lacks room: refused, and key B keeps its
    // 1,800.
    api.post("/v1/chat/completions", Some(&key_b), &chat(false)).await.assert_error(429, "rate_limit_exceeded");
    assert_eq!(slow.await.unwrap().status, 200);
    settled(&api, &session, &org, cost(7, 3)).await;
    // Had key B's check kept its ~1,010, key B would hold ~800 (plus 30 a second) and refuse.
    let reply = api.post("/v1/chat/completions", Some(&key_b), &chat(false)).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(fake.requests(), 2);
    gateway.stop().await;
}

/// Asks `body` once more with `key`: its `x-keel-cache` answer, and whether it reached the
/// provider.
async fn ask(api: &Client, key: &str, body: &Value, fake: &FakeOpenAi) -> (String, bool) {
    let before = fake.requests();
    let reply = chat_with(api, key, body, None).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    // Through a remote inference service too: its limits headers are passed on.
    assert_eq!(reply.header("x-ratelimit-limit-requests"), Some("100000"), "{:?}", reply.headers);
    (reply.header("x-keel-cache").unwrap_or("absent").to_owned(), fake.requests() > before)
}

/// A new account, not subscribed to anything: (email, session token).
async fn account(api: &Client) -> (String, String) {
    let email = format!("u{}@example.com", uuid::Uuid::now_v7().simple());
    let reply = api.post("/v1/auth/signup", None, &json!({"email": email, "password": PASSWORD})).await;
    assert_eq!(reply.status, 201, "{}", reply.body);
    (email, reply.body["token"].as_str().unwrap().to_owned())
}

/// The purge of an organization's cached answers, over HTTP through `api` (a gateway whose
/// `gpt-4o-mini` caches them, in process or remote): who may purge, what it drops, what not.
async fn purge_story(api: &Client, fake: &FakeOpenAi) {
    let (session, key, org) = credentials(api).await;
    let purge = |org: &str| format!("/v1/organizations/{org}/inference/cache");

    // Nothing cached yet: nothing to purge, and it succeeds.
    let reply = api.delete(&purge(&org), Some(&session)).await;
    assert_eq!((reply.status, &reply.body), (204, &Value::Null));

    let body = deterministic("Purge me", false);
    assert_eq!(ask(api, &key, &body, fake).await, ("miss".into(), true));
    assert_eq!(ask(api, &key, &body, fake).await, ("hit".into(), false));

    // Another organization purges its own answers: they go, this one's stay. (Without Redis,
    // L1 tracks namespace versions in 1,024 stripes: when the two organizations share one, one
    // time in 1,024, the other's purge costs this one a miss, never a stale answer. With Redis,
    // as in CI, the L2 read settles it exactly.)
    let (other_session, other_key, other_org) = credentials(api).await;
    assert_eq!(ask(api, &other_key, &body, fake).await, ("miss".into(), true));
    assert_eq!(ask(api, &other_key, &body, fake).await, ("hit".into(), false));
    assert_eq!(api.delete(&purge(&other_org), Some(&other_session)).await.status, 204);
    assert_eq!(ask(api, &other_key, &body, fake).await, ("miss".into(), true));
    match ask(api, &key, &body, fake).await {
        (status, false) if status == "hit" => {}
        (status, true) if status == "miss" && shared::testing::redis_url().is_none() => {}
        other => panic!("another organization's purge changed this one's cache: {other:?}"),
    }

    // Another organization's owner, on this organization: 404 as for one that does not exist.
    let not_found = json!({"error": {"message": "No such organization.", "type": "not_found_error",
        "code": "organization_not_found", "param": null}});
    let reply = api.delete(&purge(&org), Some(&other_session)).await;
    assert_eq!((reply.status, &reply.body), (404, &not_found));
    let reply = api.delete(&purge(&auth::OrganizationId::new().to_string()), Some(&session)).await;
    assert_eq!((reply.status, &reply.body), (404, &not_found));
    // Another organization's key too.
    let reply = api.delete(&purge(&org), Some(&other_key)).await;
    assert_eq!((reply.status, &reply.body), (404, &not_found));
    // An id of the wrong shape names nothing; no credential at all is refused first.
    api.delete(&purge("not-an-id"), Some(&session)).await.assert_error(404, "not_found");
    api.delete(&purge(&org), None).await.assert_error(401, "unauthenticated");

    // A member who is not an owner or admin, and a key without the `admin` scope (it acts as
    // a member): 403.
    let (member_email, member) = account(api).await;
    let members = format!("/v1/organizations/{org}/members");
    let reply = api.post(&members, Some(&session), &json!({"email": member_email, "role": "member"})).await;
    assert_eq!(reply.status, 201, "{}", reply.body);
    let forbidden = json!({"error": {"message": "Only the organization's owners and admins manage its response cache.",
        "type": "permission_error", "code": "permission_denied", "param": null}});
    let reply = api.delete(&purge(&org), Some(&member)).await;
    assert_eq!((reply.status, &reply.body), (403, &forbidden));
    let reply = api.delete(&purge(&org), Some(&key)).await;
    assert_eq!((reply.status, &reply.body), (403, &forbidden));
    assert_eq!(ask(api, &key, &body, fake).await, ("hit".into(), false), "refused purges drop nothing");

    // The owner purges: the next identical request is a miss that reaches the provider, and
    // its answer is cached again.
    let reply = api.delete(&purge(&org), Some(&session)).await;
    assert_eq!((reply.status, &reply.body), (204, &Value::Null));
    assert_eq!(ask(api, &key, &body, fake).await, ("miss".into(), true));
    assert_eq!(ask(api, &key, &body, fake).await, ("hit".into(), false));

    // An admin (a session) and a key with the `admin` scope purge as well.
    let (admin_email, admin) = account(api).await;
    let reply = api.post(&members, Some(&session), &json!({"email": admin_email, "role": "admin"})).await;
    assert_eq!(reply.status, 201, "{}", reply.body);
    assert_eq!(api.delete(&purge(&org), Some(&admin)).await.status, 204);
    assert_eq!(ask(api, &key, &body, fake).await, ("miss".into(), true));
    let keys = format!("/v1/organizations/{org}/api-keys");
    let reply = api.post(&keys, Some(&session), &json!({"name": "ops", "scopes": ["admin"]})).await;
    assert_eq!(reply.status, 201, "{}", reply.body);
    let admin_key = reply.body["key"].as_str().unwrap().to_owned();
    assert_eq!(api.delete(&purge(&org), Some(&admin_key)).await.status, 204);
    assert_eq!(ask(api, &key, &body, fake).await, ("miss".into(), true));
    assert_eq!(ask(api, &key, &body, fake).await, ("hit".into(), false));
}

/// On SQLite, and on PostgreSQL when `KEEL_TEST_DATABASE_URL` is set.
#[tokio::test]
async fn an_owner_or_admin_purges_the_organizations_cached_answers() {
    for backend in shared::testing::backends() {
        let fake = FakeOpenAi::start(Behavior::answer(3)).await;
        let database = database(&backend);
        let gateway = TestGateway::start(caching_config(&database, &fake), None).await;
        purge_story(&gateway.client(), &fake).await;
        gateway.stop().await;
    }
}

/// The same story through a front gateway whose inference domain is remote
/// (`HttpInferenceClient`): the purge reaches the service that holds the cache, and its
/// refusals come back as the same envelopes. On every test backend.
#[tokio::test]
async fn an_owner_or_admin_purges_the_organizations_cached_answers_through_a_remote_inference_service() {
    for backend in shared::testing::backends() {
        let fake = FakeOpenAi::start(Behavior::answer(3)).await;
        let database = database(&backend);
        let service = TestGateway::start(caching_config(&database, &fake), None).await;
        // The front's own cache settings play no part: the cache is the service's.
        let mut front = config(&database, &fake);
        front.inference.url = Some(shared::Secret::new(service.url()));
        let front = TestGateway::start(front, None).await;
        purge_story(&front.client(), &fake).await;
        front.stop().await;
        service.stop().await;
    }
}
