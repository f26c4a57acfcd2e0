//! Two gateway processes (the real binary, twice) sharing PostgreSQL and Redis, as replicas
//! behind a load balancer are: revocations, invalidations, login throttling and rate limits
//! hold across them.
//!
//! PostgreSQL and Redis are needed (several processes on one SQLite file are not supported);
//! with `CI=true` their absence is a failure.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use reqwest::StatusCode;
use serde_json::{Value, json};
use shared::testing::{DATABASE_URL_VAR, TestBackend, TestDatabase, redis_url, required_in_ci};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const PASSWORD: &str = "correct horse battery";

/// One gateway process; killed when dropped.
struct Process {
    child: Child,
    url: String,
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A deployment: its database, its Redis key prefix, and the settings every process shares.
struct Deployment {
    database: TestDatabase,
    redis_url: String,
    prefix: String,
    extra: Vec<(String, String)>,
}

impl Deployment {
    fn new(extra: &[(&str, &str)]) -> Option<Self> {
        let admin = required_in_ci(DATABASE_URL_VAR)?;
        let redis_url = redis_url()?;
        let modules = gateway::GatewayConfig::default().modules();
        let database = TestDatabase::migrated(&TestBackend::Postgres(admin), &modules);
        Some(Self {
            database,
            redis_url,
            prefix: format!("keel_test_{}", uuid::Uuid::now_v7().simple()),
            extra: extra.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        })
    }

    /// Starts one more process of the deployment and waits until it listens.
    fn start(&self) -> Process {
        let mut command = Command::new(env!("CARGO_BIN_EXE_gateway"));
        command
            .env_clear()
            .env("KEEL_TELEMETRY__FORMAT", "json")
            .env("RUST_LOG", "info")
            .env("KEEL_HTTP__ADDR", "127.0.0.1:0")
            .env("KEEL_HTTP__WORKERS", "2")
            .env("KEEL_HTTP__TRUSTED_PROXIES", r#"["127.0.0.1/32"]"#)
            .env("KEEL_DATABASE__URL", self.database.config().url.expose())
            .env("KEEL_DATABASE__POOL__MAX_SIZE", "4")
            .env("KEEL_REDIS__URL", &self.redis_url)
            .env("KEEL_REDIS__KEY_PREFIX", &self.prefix)
            .env("KEEL_REDIS__COMMAND_TIMEOUT_MS", "1000")
            .env("KEEL_AUTH__ARGON2__MEMORY_KIB", "1024")
            .env("KEEL_AUTH__ARGON2__ITERATIONS", "1")
            .args(["serve"])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for (key, value) in &self.extra {
            command.env(key, value);
        }
        let mut child = command.spawn().unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let addr = lines
            .by_ref()
            .map_while(Result::ok)
            .find_map(|line| {
                let event: Value = serde_json::from_str(&line).ok()?;
                (event["message"] == "gateway listening").then(|| event["http.addr"].as_str().unwrap().to_owned())
            })
            .expect("the gateway never said where it listens");
        // Keep reading its log so that the pipe never fills.
        std::thread::spawn(move || lines.for_each(drop));
        Process { child, url: format!("http://{addr}") }
    }
}

struct Api {
    http: reqwest::Client,
}

impl Api {
    fn new() -> Self {
        Self { http: reqwest::Client::new() }
    }

    async fn call(
        &self,
        method: reqwest::Method,
        url: String,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut request = self.http.request(method, url);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        let text = response.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    async fn get(&self, at: &Process, path: &str, token: &str) -> (StatusCode, Value) {
        self.call(reqwest::Method::GET, format!("{}{path}", at.url), Some(token), None).await
    }

    async fn post(&self, at: &Process, path: &str, token: Option<&str>, body: Value) -> (StatusCode, Value) {
        self.call(reqwest::Method::POST, format!("{}{path}", at.url), token, Some(body)).await
    }

    async fn delete(&self, at: &Process, path: &str, token: &str) -> StatusCode {
        self.call(reqwest::Method::DELETE, format!("{}{path}", at.url), Some(token), None).await.0
    }

    /// Signs up through `at`; returns (session token, user id, organization id).
    async fn signup(&self, at: &Process, email: &str) -> (String, String, String) {
        let (status, body) =
            self.post(at, "/v1/auth/signup", None, json!({"email": email, "password": PASSWORD})).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        let s = |p: &str| body.pointer(p).unwrap().as_str().unwrap().to_owned();
        (s("/token"), s("/user/id"), s("/organization/id"))
    }
}

/// How long until `check` holds, trying every 2 ms for up to `within`; `None` if it never did.
async fn time_until<F, Fut>(within: Duration, check: F) -> Option<Duration>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    while started.elapsed() < within {
        if check().await {
            return Some(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_on_one_process_is_refused_by_the_other_within_a_second() {
    let Some(deployment) = Deployment::new(&[]) else { return };
    let (a, b) = (deployment.start(), deployment.start());
    let api = Api::new();
    let (session, _, org) = api.signup(&a, "ada@example.com").await;
    let (_, key) =
        api.post(&a, &format!("/v1/organizations/{org}/api-keys"), Some(&session), json!({"name": "k"})).await;
    let (key_id, key) = (key["id"].as_str().unwrap().to_owned(), key["key"].as_str().unwrap().to_owned());
    // B has the key (and the session) in its cache.
    assert_eq!(api.get(&b, "/v1/auth/me", &key).await.0, StatusCode::OK);
    assert_eq!(api.get(&b, "/v1/auth/me", &session).await.0, StatusCode::OK);

    assert_eq!(
        api.delete(&a, &format!("/v1/organizations/{org}/api-keys/{key_id}"), &session).await,
        StatusCode::NO_CONTENT
    );
    assert_eq!(api.get(&a, "/v1/auth/me", &key).await.0, StatusCode::UNAUTHORIZED, "refused at once where revoked");
    let refused = time_until(Duration::from_secs(1), || async {
        api.get(&b, "/v1/auth/me", &key).await.0 == StatusCode::UNAUTHORIZED
    })
    .await;
    let delay = refused.expect("process B still accepts the revoked key after 1 s");
    eprintln!("key revocation reached the other process in {delay:?}");

    // Logout too: the other process stops accepting the session.
    let (status, _) = api.post(&a, "/v1/auth/logout", Some(&session), json!({})).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let refused = time_until(Duration::from_secs(1), || async {
        api.get(&b, "/v1/auth/me", &session).await.0 == StatusCode::UNAUTHORIZED
    })
    .await;
    assert!(refused.is_some(), "process B still accepts the logged-out session after 1 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_through_one_process_is_read_fresh_through_the_other() {
    let Some(deployment) = Deployment::new(&[]) else { return };
    let (a, b) = (deployment.start(), deployment.start());
    let api = Api::new();
    let (ada, _, org) = api.signup(&a, "ada@example.com").await;
    let (bob, bob_id, _) = api.signup(&a, "bob@example.com").await;
    let (status, _) = api
        .post(
            &a,
            &format!("/v1/organizations/{org}/members"),
            Some(&ada),
            json!({"email": "bob@example.com", "role": "admin"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let (_, key) = api
        .post(&b, &format!("/v1/organizations/{org}/api-keys"), Some(&bob), json!({"name": "bob", "scopes": ["admin"]}))
        .await;
    let key = key["key"].as_str().unwrap().to_owned();
    let scopes = |at: &Process| {
        let (api, key, at_url) = (&api, key.clone(), at.url.clone());
        async move {
            let (_, me) = api.call(reqwest::Method::GET, format!("{at_url}/v1/auth/me"), Some(&key), None).await;
            me["api_key"]["scopes"].clone()
        }
    };
    assert_eq!(scopes(&b).await, json!(["admin"]));
    // Removing Bob through A takes admin away from his key as seen through B.
    assert_eq!(
        api.delete(&a, &format!("/v1/organizations/{org}/members/{bob_id}"), &ada).await,
        StatusCode::NO_CONTENT
    );
    let fresh = time_until(Duration::from_secs(1), || async { scopes(&b).await == json!([]) }).await;
    assert!(fresh.is_some(), "process B still serves the old scopes after 1 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_throttling_holds_across_processes() {
    let extra =
        [("KEEL_AUTH__THROTTLE__MAX_FAILURES_PER_ACCOUNT", "10"), ("KEEL_AUTH__THROTTLE__MAX_FAILURES_PER_IP", "1000")];
    let Some(deployment) = Deployment::new(&extra) else { return };
    let (a, b) = (deployment.start(), deployment.start());
    let api = Api::new();
    api.signup(&a, "ada@example.com").await;
    // 40 wrong passwords and the right one, at once, half through each process.
    let mut attempts: Vec<String> = (0..40).map(|n| format!("wrong password {n}")).collect();
    attempts.insert(20, PASSWORD.to_owned());
    let tasks: Vec<_> = attempts
        .into_iter()
        .enumerate()
        .map(|(n, password)| {
            let url = if n % 2 == 0 { a.url.clone() } else { b.url.clone() };
            let http = api.http.clone();
            tokio::spawn(async move {
                let body = json!({"email": "ada@example.com", "password": password});
                http.post(format!("{url}/v1/auth/login")).json(&body).send().await.unwrap().status()
            })
        })
        .collect();
    let mut checked = 0;
    let mut refused = 0;
    for task in tasks {
        match task.await.unwrap() {
            StatusCode::OK | StatusCode::UNAUTHORIZED => checked += 1,
            StatusCode::TOO_MANY_REQUESTS => refused += 1,
            other => panic!("unexpected {other}"),
        }
    }
    assert!(checked <= 10, "{checked} passwords checked across two processes, limit 10");
    assert_eq!(checked + refused, 41);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limit_admits_exactly_its_quota_across_processes() {
    let extra =
        [("KEEL_RATE_LIMITS__CLASSES__AUTH__LIMIT", "25"), ("KEEL_RATE_LIMITS__CLASSES__AUTH__PERIOD_SECS", "3600")];
    let Some(deployment) = Deployment::new(&extra) else { return };
    let (a, b) = (deployment.start(), deployment.start());
    let api = Api::new();
    let (session, _, org) = api.signup(&a, "ada@example.com").await;
    let (_, key) =
        api.post(&a, &format!("/v1/organizations/{org}/api-keys"), Some(&session), json!({"name": "k"})).await;
    let key = key["key"].as_str().unwrap().to_owned();
    // 80 requests with one key at once, alternating processes: exactly 25 pass.
    let tasks: Vec<_> = (0..80)
        .map(|n| {
            let url = if n % 2 == 0 { a.url.clone() } else { b.url.clone() };
            let (http, key) = (api.http.clone(), key.clone());
            tokio::spawn(async move {
                let response = http.get(format!("{url}/v1/auth/me")).bearer_auth(key).send().await.unwrap();
                let status = response.status();
                let policy = response.headers().get("ratelimit-policy").map(|v| v.to_str().unwrap().to_owned());
                let retry_after = response.headers().get("retry-after").is_some();
                let body: Value = response.json().await.unwrap_or(Value::Null);
                (status, policy, retry_after, body)
            })
        })
        .collect();
    let mut admitted = 0;
    for task in tasks {
        let (status, policy, retry_after, body) = task.await.unwrap();
        assert_eq!(policy.as_deref(), Some(r#""auth";q=25;w=3600"#));
        match status {
            StatusCode::OK => admitted += 1,
            StatusCode::TOO_MANY_REQUESTS => {
                assert!(retry_after);
                assert_eq!(body["error"]["code"], "rate_limited");
                assert_eq!(body["error"]["type"], "rate_limit_error");
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert_eq!(admitted, 25);
}
