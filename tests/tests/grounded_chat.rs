//! Grounded chat (`file_search`) at the service: `InferenceService::with_retrieval` over a test
//! double of `RagApi` (stores with fixed search results, per organization) and the fake
//! upstream, with the real auth and billing domains. What the provider receives, the citations
//! of answers and streams, the response cache, and the refusals that take no hold and make no
//! provider call. Then once end to end through a gateway's HTTP API, with the real retrieval.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use async_trait::async_trait;
use auth::{AuthApi, AuthModule, OrganizationId, Principal};
use billing::{BillingApi, BillingConfig, BillingModule, PutSubscriptionRequest};
use futures_util::StreamExt;
use inference::config::{DeploymentConfig, ModelConfig, ProviderConfig};
use inference::*;
use serde_json::{Value, json};
use shared::DomainError;
use shared::module::Module;
use shared::page::PageRequest;
use shared::testing::{TestBackend, TestDatabase};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use tests::billing::{TEST_PLAN, add_test_plan};
use tests::fake_openai::{Behavior, FakeOpenAi, WORD};
use tests::harness::{TestGateway, fast_auth_config, gateway_config};
use tests::rag::RagWorld;
use tests::{Client, Reply};

/// One search the double answered: (store, query, max_num_results).
type Searched = (String, String, Option<u32>);

/// Vector stores with fixed search results, each owned by an organization; another
/// organization's store is `vector_store_not_found`, as `RagApi` promises.
#[derive(Default)]
struct Stores {
    stores: HashMap<String, (OrganizationId, Vec<SearchResult>)>,
    searched: Mutex<Vec<Searched>>,
}

impl Stores {
    fn searched(&self) -> Vec<Searched> {
        let mut searched = self.searched.lock().unwrap().clone();
        // The stores are searched at once: their order is not the call's.
        searched.sort();
        searched
    }
}

fn not_here(what: &str) -> InferenceError {
    InferenceError::Internal(format!("{what} is not part of the grounded-chat test double"))
}

#[async_trait]
impl RagApi for Stores {
    async fn create_file(&self, _: &Principal, _: FileUpload) -> Result<FileObject, InferenceError> {
        Err(not_here("create_file"))
    }
    async fn list_files(&self, _: &Principal, _: ListQuery) -> Result<ObjectList<FileObject>, InferenceError> {
        Err(not_here("list_files"))
    }
    async fn file(&self, _: &Principal, _: &str) -> Result<FileObject, InferenceError> {
        Err(not_here("file"))
    }
    async fn file_content(&self, _: &Principal, _: &str) -> Result<FileContent, InferenceError> {
        Err(not_here("file_content"))
    }
    async fn delete_file(&self, _: &Principal, _: &str) -> Result<Deleted, InferenceError> {
        Err(not_here("delete_file"))
    }
    async fn create_vector_store(
        &self,
        _: &Principal,
        _: CreateVectorStoreRequest,
    ) -> Result<VectorStore, InferenceError> {
        Err(not_here("create_vector_store"))
    }
    async fn list_vector_stores(&self, _: &Principal, _: ListQuery) -> Result<ObjectList<VectorStore>, InferenceError> {
        Err(not_here("list_vector_stores"))
    }
    async fn vector_store(&self, _: &Principal, _: &str) -> Result<VectorStore, InferenceError> {
        Err(not_here("vector_store"))
    }
    async fn update_vector_store(
        &self,
        _: &Principal,
        _: &str,
        _: UpdateVectorStoreRequest,
    ) -> Result<VectorStore, InferenceError> {
        Err(not_here("update_vector_store"))
    }
    async fn delete_vector_store(&self, _: &Principal, _: &str) -> Result<Deleted, InferenceError> {
        Err(not_here("delete_vector_store"))
    }
    async fn attach_file(
        &self,
        _: &Principal,
        _: &str,
        _: CreateVectorStoreFileRequest,
    ) -> Result<VectorStoreFile, InferenceError> {
        Err(not_here("attach_file"))
    }
    async fn list_vector_store_files(
        &self,
        _: &Principal,
        _: &str,
        _: ListQuery,
    ) -> Result<ObjectList<VectorStoreFile>, InferenceError> {
        Err(not_here("list_vector_store_files"))
    }
    async fn vector_store_file(&self, _: &Principal, _: &str, _: &str) -> Result<VectorStoreFile, InferenceError> {
        Err(not_here("vector_store_file"))
    }
    async fn detach_file(&self, _: &Principal, _: &str, _: &str) -> Result<Deleted, InferenceError> {
        Err(not_here("detach_file"))
    }
    async fn create_file_batch(
        &self,
        _: &Principal,
        _: &str,
        _: CreateFileBatchRequest,
    ) -> Result<VectorStoreFileBatch, InferenceError> {
        Err(not_here("create_file_batch"))
    }
    async fn file_batch(&self, _: &Principal, _: &str, _: &str) -> Result<VectorStoreFileBatch, InferenceError> {
        Err(not_here("file_batch"))
    }
    async fn cancel_file_batch(&self, _: &Principal, _: &str, _: &str) -> Result<VectorStoreFileBatch, InferenceError> {
        Err(not_here("cancel_file_batch"))
    }
    async fn list_file_batch_files(
        &self,
        _: &Principal,
        _: &str,
        _: &str,
        _: ListQuery,
    ) -> Result<ObjectList<VectorStoreFile>, InferenceError> {
        Err(not_here("list_file_batch_files"))
    }

    async fn search(
        &self,
        caller: &Principal,
        store_id: &str,
        request: VectorStoreSearchRequest,
    ) -> Result<SearchResultsPage, InferenceError> {
        let query = request.query.as_str().unwrap_or_default().to_owned();
        self.searched.lock().unwrap().push((store_id.to_owned(), query.clone(), request.max_num_results));
        let (_, results) = self
            .stores
            .get(store_id)
            .filter(|(owner, _)| Some(*owner) == caller.organization_id)
            .ok_or_else(|| InferenceError::VectorStoreNotFound(store_id.to_owned()))?;
        let mut data = results.clone();
        data.truncate(request.max_num_results.unwrap_or(10) as usize);
        Ok(SearchResultsPage {
            object: "vector_store.search_results.page".into(),
            search_query: vec![query],
            data,
            has_more: false,
            next_page: None,
        })
    }
}

fn chunk(file: &str, filename: &str, chunk: &str, score: f64, text: &str) -> SearchResult {
    SearchResult {
        file_id: file.into(),
        filename: filename.into(),
        score,
        attributes: Default::default(),
        content: vec![ContentPart { kind: "text".into(), text: text.into() }],
        chunk_id: chunk.into(),
    }
}

/// The context window of the `small` model.
const SMALL_WINDOW: u32 = 200;

struct Fixture {
    _database: TestDatabase,
    fake: FakeOpenAi,
    billing: Arc<dyn BillingApi>,
    /// The organization's owner (a session) and its API key.
    owner: Principal,
    key: Principal,
    org: OrganizationId,
    /// A store of the organization, one of another's, and the service over them.
    ours: String,
    theirs: String,
    stores: Arc<Stores>,
    service: InferenceService,
    /// The same service without retrieval.
    plain: InferenceService,
}

/// A new organization subscribed to the `test` plan: its owner's session, an API key, its id.
async fn signup(auth: &Arc<dyn AuthApi>, billing: &Arc<dyn BillingApi>) -> (Principal, Principal, OrganizationId) {
    let email = format!("u{}@example.com", uuid::Uuid::now_v7().simple());
    let (key, owner) = RagWorld { auth: auth.clone() }.organization(&email).await;
    let org = key.organization_id.unwrap();
    billing.put_subscription(&owner, org, PutSubscriptionRequest { plan: TEST_PLAN.into() }).await.unwrap();
    (owner, key, org)
}

async fn fixture() -> Fixture {
    let mut billing_config = BillingConfig::default();
    // Every hold is its own ledger transaction, so the tests can see whether one was taken.
    billing_config.lease.enabled = false;
    add_test_plan(&mut billing_config);
    let modules: Vec<Arc<dyn Module>> =
        vec![Arc::new(AuthModule::new(fast_auth_config())), Arc::new(BillingModule::new(billing_config))];
    let database = tests::database(&TestBackend::Sqlite);
    let platform = shared::testing::platform(&tests::harness::modules());
    let contracts = shared::testing::build(&modules, &database, &platform).await;
    let auth = contracts.get::<dyn AuthApi>().unwrap();
    let billing = contracts.get::<dyn BillingApi>().unwrap();
    let (owner, key, org) = signup(&auth, &billing).await;
    let (_, _, other) = signup(&auth, &billing).await;

    let fake = FakeOpenAi::start(Behavior::answer(3)).await;
    let mut config = InferenceConfig::default();
    config.providers.insert("fake".into(), ProviderConfig { base_url: fake.url.clone(), ..ProviderConfig::default() });
    config.models.insert(
        "gpt-4o-mini".into(),
        ModelConfig {
            max_output_tokens: Some(1_000),
            deployments: vec![DeploymentConfig {
                provider: "fake".into(),
                model: "gpt-4o-mini".into(),
                weight: 1,
                input_nanos_per_million: 1_000_000_000,
                output_nanos_per_million: 2_000_000_000,
            }],
            ..ModelConfig::default()
        },
    );
    // A model of a small context window, as a small local model has: the sources are bounded
    // by it (`a_small_context_window_keeps_only_the_sources_that_fit`).
    config.models.insert(
        "small".into(),
        ModelConfig {
            context_window: SMALL_WINDOW,
            deployments: vec![DeploymentConfig {
                provider: "fake".into(),
                model: "small-upstream".into(),
                weight: 1,
                input_nanos_per_million: 1_000_000_000,
                output_nanos_per_million: 2_000_000_000,
            }],
            ..ModelConfig::default()
        },
    );
    let ours = VectorStoreId::new().to_string();
    let theirs = VectorStoreId::new().to_string();
    let mut stores = Stores::default();
    stores.stores.insert(
        ours.clone(),
        (
            org,
            vec![
                chunk("file_handbook", "handbook.md", "chunk_1", 0.9, "Refunds take 14 days."),
                chunk("file_faq", "faq.txt", "chunk_2", 0.6, "Write to support for a refund."),
                chunk("file_faq", "faq.txt", "chunk_3", 0.2, "Shipping is free."),
            ],
        ),
    );
    stores.stores.insert(theirs.clone(), (other, vec![chunk("file_secret", "secret.md", "chunk_9", 1.0, "Secret.")]));
    let stores = Arc::new(stores);
    let plain = InferenceService::new(
        &config,
        platform.metrics.inference(),
        billing.clone(),
        platform.rate_limiter.clone(),
        None,
        platform.clock.clone(),
        platform.metrics.cache(),
    )
    .unwrap();
    let service = plain.clone().with_retrieval(stores.clone());
    Fixture { _database: database, fake, billing, owner, key, org, ours, theirs, stores, service, plain }
}

impl Fixture {
    /// The organization's holds so far (ledger transfers of kind `reserve`, two entries each).
    async fn holds(&self) -> usize {
        let page = PageRequest { limit: Some(100), after: None };
        let ledger = self.billing.ledger(&self.owner, self.org, page).await.unwrap();
        let transfers: HashSet<_> = ledger.data.iter().filter(|e| e.kind == "reserve").map(|e| e.transfer_id).collect();
        transfers.len()
    }
}

fn request(body: Value) -> ChatCompletionRequest {
    serde_json::from_value(body).unwrap()
}

fn grounded(stores: &[&str], stream: bool) -> ChatCompletionRequest {
    request(json!({
        "model": "gpt-4o-mini",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hello"},
            {"role": "assistant", "content": "Hi."},
            {"role": "user", "content": "How long do refunds take?"}
        ],
        "temperature": 0.3,
        "stream": stream,
        "file_search": {"vector_store_ids": stores, "max_num_results": 2}
    }))
}

async fn chunks(stream: ChunkStream) -> Vec<Value> {
    stream.map(|chunk| serde_json::to_value(chunk.unwrap()).unwrap()).collect().await
}

#[tokio::test]
async fn a_grounded_answer_cites_its_sources_and_the_provider_sees_them_but_never_file_search() {
    let f = fixture().await;
    let citations = json!([
        {"index": 1, "vector_store_id": f.ours, "file_id": "file_handbook", "filename": "handbook.md",
            "chunk_id": "chunk_1", "score": 0.9},
        {"index": 2, "vector_store_id": f.ours, "file_id": "file_faq", "filename": "faq.txt",
            "chunk_id": "chunk_2", "score": 0.6},
    ]);

    let answer = f.service.chat(&f.key, grounded(&[&f.ours], false)).await.unwrap().value;
    let answer = serde_json::to_value(&answer).unwrap();
    assert_eq!(answer["citations"], citations);
    assert_eq!(answer["choices"][0]["message"]["content"], WORD.repeat(3));
    assert_eq!(answer["system_fingerprint"], "fp_fake", "the provider's own fields pass through");
    assert_eq!(f.stores.searched(), [(f.ours.clone(), "How long do refunds take?".to_owned(), Some(2))]);

    let sent = f.fake.bodies().pop().unwrap();
    assert!(sent.get("file_search").is_none(), "{sent}");
    assert_eq!(sent["temperature"], 0.3, "the other fields pass through");
    let roles: Vec<&str> = sent["messages"].as_array().unwrap().iter().map(|m| m["role"].as_str().unwrap()).collect();
    assert_eq!(roles, ["system", "system", "user", "assistant", "user"]);
    assert_eq!(sent["messages"][0]["content"], "Be brief.");
    let sources = sent["messages"][1]["content"].as_str().unwrap();
    assert!(sources.starts_with("Answer using the sources below"), "{sources}");
    assert!(
        sources.ends_with("\n\n[1] handbook.md\nRefunds take 14 days.\n\n[2] faq.txt\nWrite to support for a refund."),
        "{sources}"
    );
    assert_eq!(sent["messages"][4]["content"], "How long do refunds take?");

    // Streamed: the citations in the first chunk only; the provider's request as before.
    let stream = f.service.chat_stream(&f.key, grounded(&[&f.ours], true)).await.unwrap().value;
    let streamed = chunks(stream).await;
    assert_eq!(streamed.len(), 3, "{streamed:?}");
    assert_eq!(streamed[0]["citations"], citations);
    assert_eq!(streamed[0]["choices"][0]["delta"]["content"], WORD);
    assert!(streamed[1..].iter().all(|c| c.get("citations").is_none()), "{streamed:?}");
    let sent = f.fake.bodies().pop().unwrap();
    assert!(sent.get("file_search").is_none(), "{sent}");
    assert_eq!(sent["messages"][1]["content"].as_str().unwrap(), sources);

    // The echo model (no provider) is grounded the same way.
    let mut echo = grounded(&[&f.ours], true);
    echo.model = "echo".into();
    let streamed = chunks(f.service.chat_stream(&f.key, echo).await.unwrap().value).await;
    assert_eq!(streamed[0]["citations"], citations);
    assert_eq!(streamed[0]["choices"][0]["delta"]["content"], "How");

    // No file_search: no retrieval, no citations, the request unchanged.
    let before = f.stores.searched().len();
    let plain = request(json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hi"}]}));
    let answer = serde_json::to_value(f.service.chat(&f.key, plain).await.unwrap().value).unwrap();
    assert!(answer.get("citations").is_none(), "{answer}");
    assert_eq!(f.fake.bodies().pop().unwrap()["messages"], json!([{"role": "user", "content": "Hi"}]));
    assert_eq!(f.stores.searched().len(), before);
}

#[tokio::test]
async fn sources_of_several_stores_compete_and_a_cached_answer_keeps_its_citations() {
    let f = fixture().await;
    let mut two = grounded(&[&f.ours, &f.ours], false);
    two.extra["file_search"]["max_num_results"] = json!(3);
    two.extra.insert("temperature".into(), json!(0));
    two.cache = CacheDirective::On;
    let before = f.fake.requests();
    let first = f.service.chat(&f.key, two.clone()).await.unwrap();
    assert_eq!(first.cache, Some(CacheStatus::Miss));
    let first = serde_json::to_value(first.value).unwrap();
    let indexes: Vec<(u64, &str)> = first["citations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["index"].as_u64().unwrap(), c["chunk_id"].as_str().unwrap()))
        .collect();
    assert_eq!(indexes, [(1, "chunk_1"), (2, "chunk_2"), (3, "chunk_3")], "a store named twice is searched once");
    assert_eq!(f.stores.searched().len(), 1);

    // The same question again: answered from the cache, with the citations of its retrieval.
    let second = f.service.chat(&f.key, two.clone()).await.unwrap();
    assert_eq!(second.cache, Some(CacheStatus::Hit));
    assert_eq!(serde_json::to_value(second.value).unwrap()["citations"], first["citations"]);
    let mut streamed = two;
    streamed.stream = Some(true);
    let served = f.service.chat_stream(&f.key, streamed).await.unwrap();
    assert_eq!(served.cache, Some(CacheStatus::Hit));
    assert_eq!(chunks(served.value).await[0]["citations"], first["citations"]);
    assert_eq!(f.fake.requests() - before, 1, "one provider call for the three answers");
}

#[tokio::test]
async fn a_refused_grounded_request_takes_no_hold_and_calls_no_provider() {
    let f = fixture().await;
    let unknown = VectorStoreId::new().to_string();
    let error = |result: Result<Served<ChatCompletionResponse>, InferenceError>| result.unwrap_err();

    // Unknown, another organization's, or not a store id at all: 404.
    for store in [unknown.as_str(), f.theirs.as_str(), "vs_nope"] {
        let e = error(f.service.chat(&f.key, grounded(&[&f.ours, store], false)).await);
        assert_eq!(e, InferenceError::VectorStoreNotFound(store.to_owned()));
        assert_eq!(e.kind().status(), 404);
        let e = f.service.chat_stream(&f.key, grounded(&[store], true)).await.err().unwrap();
        assert_eq!(e.code(), "vector_store_not_found");
    }

    // Invalid options: 400 naming the field.
    let cases = [
        (json!({"vector_store_ids": [f.ours], "max_num_results": 51}), "file_search.max_num_results"),
        (json!({"vector_store_ids": []}), "file_search.vector_store_ids"),
        (json!({"vector_store_id": [f.ours]}), "file_search.vector_store_id"),
        (json!("all"), "file_search"),
    ];
    for (options, param) in cases {
        let mut bad = grounded(&[&f.ours], false);
        bad.extra.insert("file_search".into(), options.clone());
        let e = error(f.service.chat(&f.key, bad).await);
        assert_eq!(e.code(), "invalid_request", "{options}");
        assert_eq!(e.envelope().error.param.as_deref(), Some(param), "{options}");
    }
    // No user message to search with.
    let mut silent = grounded(&[&f.ours], false);
    silent.messages.retain(|m| m.role != "user");
    let e = error(f.service.chat(&f.key, silent).await);
    assert_eq!(e.envelope().error.param.as_deref(), Some("messages"));
    // A service without retrieval refuses the field rather than ignore it.
    let e = error(f.plain.chat(&f.key, grounded(&[&f.ours], false)).await);
    assert_eq!(e.envelope().error.param.as_deref(), Some("file_search"));
    assert_eq!(e.to_string(), "Retrieval is not enabled on this server: `file_search` cannot be used.");

    assert_eq!(f.fake.requests(), 0, "no refused request reached the provider");
    assert_eq!(f.holds().await, 0, "no refused request took a hold");
    // The checks above can fail: a grounded request that is served takes its hold.
    f.service.chat(&f.key, grounded(&[&f.ours], false)).await.unwrap();
    assert_eq!(f.holds().await, 1);
    assert_eq!(f.fake.requests(), 1);
}

#[tokio::test]
async fn a_small_context_window_keeps_only_the_sources_that_fit() {
    let f = fixture().await;
    // The hold's estimate (bytes / 4 rounded up, plus 3 per message and 3 for the reply) of
    // `grounded`'s conversation: 6 + 5 + 4 + 10 + 3 = 28 tokens. With the sources' message
    // (3 + its text: the 277-byte instruction, then each source), 110 tokens with the first
    // source, 121 with two, 129 with all three.
    let ask = |max_tokens: Option<u32>, stream: bool| {
        let mut request = grounded(&[&f.ours], stream);
        request.model = "small".into();
        request.max_tokens = max_tokens;
        request.extra["file_search"]["max_num_results"] = json!(3);
        request
    };
    let cited = |answer: &Value| -> Vec<(u64, String)> {
        answer["citations"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| (c["index"].as_u64().unwrap(), c["chunk_id"].as_str().unwrap().to_owned()))
            .collect()
    };
    let sent_sources = || -> String {
        let sent = f.fake.bodies().pop().unwrap();
        assert_eq!(sent["model"], "small-upstream");
        sent["messages"][1]["content"].as_str().unwrap().to_owned()
    };
    let cite = |index: u64, chunk_id: &str| (index, chunk_id.to_owned());
    let (first, second, third) = (
        "\n\n[1] handbook.md\nRefunds take 14 days.",
        "\n\n[2] faq.txt\nWrite to support for a refund.",
        "\n\n[3] faq.txt\nShipping is free.",
    );

    // 129 + 71 = 200: all three fit exactly.
    let answer = serde_json::to_value(f.service.chat(&f.key, ask(Some(71), false)).await.unwrap().value).unwrap();
    assert_eq!(cited(&answer), [cite(1, "chunk_1"), cite(2, "chunk_2"), cite(3, "chunk_3")]);
    assert!(sent_sources().ends_with(&format!("{first}{second}{third}")));

    // One token more for the answer: the worst source is neither sent nor cited.
    let answer = serde_json::to_value(f.service.chat(&f.key, ask(Some(72), false)).await.unwrap().value).unwrap();
    assert_eq!(cited(&answer), [cite(1, "chunk_1"), cite(2, "chunk_2")]);
    let sources = sent_sources();
    assert!(sources.ends_with(&format!("{first}{second}")), "{sources}");
    assert!(!sources.contains("Shipping"), "{sources}");
    assert_eq!(answer["choices"][0]["message"]["content"], WORD.repeat(3));

    // 121 + 80 = 201: only the best one; streamed the same way.
    let stream = f.service.chat_stream(&f.key, ask(Some(80), true)).await.unwrap().value;
    let streamed = chunks(stream).await;
    assert_eq!(cited(&streamed[0]), [cite(1, "chunk_1")]);
    let sources = sent_sources();
    assert!(sources.ends_with(first), "{sources}");
    assert!(!sources.contains("\n\n[2]"), "{sources}");

    // No `max_tokens`: the reservation is the model's default output cap, here the whole
    // window, so no source fits; the model is told so rather than that none was found.
    let answer = serde_json::to_value(f.service.chat(&f.key, ask(None, false)).await.unwrap().value).unwrap();
    assert!(cited(&answer).is_empty(), "{answer}");
    let sources = sent_sources();
    assert!(sources.contains("too long to be given to you"), "{sources}");
    assert!(!sources.contains("[1]"), "{sources}");

    // A large window keeps them all, as before.
    let mut large = ask(Some(80), false);
    large.model = "gpt-4o-mini".into();
    let answer = serde_json::to_value(f.service.chat(&f.key, large).await.unwrap().value).unwrap();
    assert_eq!(cited(&answer).len(), 3);

    // Usage and billing are the provider's answer's (7 prompt and 3 output tokens a call), the
    // sources dropped or not; every hold settled.
    assert_eq!(answer["usage"]["prompt_tokens"], 7);
    assert_eq!(answer["usage"]["completion_tokens"], 3);
    assert_eq!(f.fake.requests(), 5);
    let price = billing::ModelPrice {
        input_price_per_mtok: billing::Money::nanos(1_000_000_000),
        output_price_per_mtok: billing::Money::nanos(2_000_000_000),
    };
    let expected = billing::cost_of(&price, 7, 3).as_nanos() * 5;
    let settled = async {
        loop {
            let balance = f.billing.balance(&f.owner, f.org).await.unwrap();
            if balance.held == billing::Money::ZERO && balance.spent.as_nanos() == expected {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(25)).await;
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(10), settled).await.expect("five calls settled at their usage");
    assert_eq!(f.holds().await, 5, "one hold a call");
}

/// `data` of each event of a streamed chat completion.
async fn events(api: &Client, key: &str, body: &Value) -> Vec<String> {
    let response = api.request(reqwest::Method::POST, "/v1/chat/completions", Some(key)).json(body).send().await;
    let text = response.unwrap().text().await.unwrap();
    text.split("\n\n").filter_map(|e| e.strip_prefix("data: ")).map(str::to_owned).collect()
}

shared::backend_tests! {
async fn over_http_an_answer_cites_the_uploaded_file_it_was_grounded_in(backend) {
    let database = tests::database(&backend);
    let mut config = gateway_config(&database);
    config.jobs.poll_interval_ms = 50;
    let gateway = TestGateway::start(config, None).await;
    let api = gateway.client();
    let mut keys = Vec::new();
    for _ in 0..2 {
        let email = format!("u{}@example.com", uuid::Uuid::now_v7().simple());
        let reply =
            api.post("/v1/auth/signup", None, &json!({"email": email, "password": "correct horse battery"})).await;
        let (session, org) =
            (reply.body["token"].as_str().unwrap(), reply.body["organization"]["id"].as_str().unwrap());
        let reply =
            api.post(&format!("/v1/organizations/{org}/api-keys"), Some(session), &json!({"name": "rag"})).await;
        assert_eq!(reply.status, 201, "{}", reply.body);
        keys.push(reply.body["key"].as_str().unwrap().to_owned());
    }
    let (key, stranger) = (&keys[0], &keys[1]);

    // Upload a document, put it in a store, wait for its ingestion.
    let text = "# Returns\n\nRefunds are paid within fourteen days of the return.\n";
    let part = reqwest::multipart::Part::text(text).file_name("handbook.md").mime_str("text/markdown").unwrap();
    let form = reqwest::multipart::Form::new().text("purpose", "assistants").part("file", part);
    let reply = Client::send(api.request(reqwest::Method::POST, "/v1/files", Some(key)).multipart(form)).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let file = reply.body["id"].as_str().unwrap().to_owned();
    let reply = api.post("/v1/vector_stores", Some(key), &json!({"name": "docs", "file_ids": [file]})).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let store = reply.body["id"].as_str().unwrap().to_owned();
    let started = std::time::Instant::now();
    let status = loop {
        let reply: Reply = api.get(&format!("/v1/vector_stores/{store}/files/{file}"), Some(key)).await;
        if reply.body["status"] != "in_progress" || started.elapsed().as_secs() > 60 {
            break reply.body["status"].clone();
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    };
    assert_eq!(status, "completed");

    // The echo model answers with the question; the answer cites the file it was grounded in.
    let body = json!({
        "model": "echo",
        "messages": [{"role": "user", "content": "How fast are refunds paid?"}],
        "file_search": {"vector_store_ids": [store]}
    });
    let reply = api.post("/v1/chat/completions", Some(key), &body).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.body["choices"][0]["message"]["content"], "How fast are refunds paid?");
    let citations = reply.body["citations"].as_array().unwrap();
    assert_eq!(citations.len(), 1, "{}", reply.body);
    assert_eq!(citations[0]["index"], 1);
    assert_eq!(citations[0]["filename"], "handbook.md");
    assert_eq!(citations[0]["file_id"], file.as_str());
    assert_eq!(citations[0]["vector_store_id"], store.as_str());
    assert!(citations[0]["chunk_id"].as_str().is_some_and(|c| !c.is_empty()), "{}", reply.body);
    // The source is in the prompt: the echo counts its prompt, which is longer than the question.
    let mut ungrounded = body.clone();
    ungrounded.as_object_mut().unwrap().remove("file_search");
    let plain = api.post("/v1/chat/completions", Some(key), &ungrounded).await;
    assert!(plain.body.get("citations").is_none(), "{}", plain.body);
    let prompt = |reply: &Reply| reply.body["usage"]["prompt_tokens"].as_u64().unwrap();
    assert!(prompt(&reply) > prompt(&plain) + 10, "{} vs {}", reply.body["usage"], plain.body["usage"]);

    // Streamed: the same citations in the first event.
    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    let data = events(&api, key, &streamed).await;
    let first: Value = serde_json::from_str(&data[0]).unwrap();
    assert_eq!(first["citations"], reply.body["citations"]);
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));

    // Another organization cannot ground an answer in the store.
    let reply = api.post("/v1/chat/completions", Some(stranger), &body).await;
    assert_eq!(reply.status, 404, "{}", reply.body);
    assert_eq!(
        reply.body,
        json!({"error": {"message": format!("No vector store found with id `{store}`."),
            "type": "not_found_error", "code": "vector_store_not_found", "param": null}})
    );
    gateway.stop().await;
}
}
