//! What the tests that start the real gateway binary share: a deployment on PostgreSQL and
//! Redis (a fresh database, a Redis key prefix), its processes, and a small HTTP client.
//!
//! A module directory (`support/mod.rs`) rather than `support.rs`, so that Cargo does not build
//! it as a test target of its own.

// Each test target uses a part of these helpers.
#![allow(dead_code)]

use reqwest::StatusCode;
use serde_json::{Value, json};
use shared::testing::{DATABASE_URL_VAR, REDIS_URL_VAR, TestBackend, TestDatabase, redis_url, required_in_ci};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

pub const PASSWORD: &str = "correct horse battery";

/// One gateway process; killed when dropped.
pub struct Process {
    child: Child,
    pub url: String,
}

impl Process {
    /// A graceful stop: SIGTERM, then waits for the process to exit.
    pub fn terminate(mut self) -> ExitStatus {
        let status = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status().unwrap();
        assert!(status.success(), "kill -TERM failed");
        self.child.wait().unwrap()
    }

    /// `kill -9`: the process and its memory are gone at once.
    pub fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A deployment: its database, its Redis key prefix, and the settings every process shares.
pub struct Deployment {
    pub database: TestDatabase,
    redis_url: String,
    prefix: String,
    extra: Vec<(String, String)>,
}

impl Deployment {
    /// `None` (the test is skipped, with a message) without PostgreSQL or Redis; a failure
    /// under `CI=true`.
    pub fn new(extra: &[(&str, &str)]) -> Option<Self> {
        let (Some(admin), Some(redis_url)) = (required_in_ci(DATABASE_URL_VAR), redis_url()) else {
            eprintln!("skipped: needs {DATABASE_URL_VAR} and {REDIS_URL_VAR} (PostgreSQL and Redis)");
            return None;
        };
        let modules = gateway::GatewayConfig::default().modules();
        let database = TestDatabase::migrated(&TestBackend::Postgres(admin), &modules);
        Some(Self {
            database,
            redis_url,
            prefix: format!("keel_test_{}", uuid::Uuid::now_v7().simple()),
            extra: extra.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        })
    }

    /// The binary with the deployment's environment (and nothing of the developer's).
    pub fn command(&self) -> Command {
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
            .env("KEEL_AUTH__ARGON2__ITERATIONS", "1");
        for (key, value) in &self.extra {
            command.env(key, value);
        }
        command
    }

    /// Starts one more process of the deployment and waits until it listens.
    pub fn start(&self) -> Process {
        let mut command = self.command();
        command.args(["serve"]).stdout(Stdio::piped()).stderr(Stdio::inherit());
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

    /// `gateway admin grant-admin EMAIL` on the deployment's database.
    pub fn grant_admin(&self, email: &str) {
        let output = self.command().args(["admin", "grant-admin", email]).output().unwrap();
        assert!(output.status.success(), "grant-admin failed: {}", String::from_utf8_lossy(&output.stdout));
    }
}

pub struct Api {
    pub http: reqwest::Client,
}

impl Api {
    pub fn new() -> Self {
        Self { http: reqwest::Client::new() }
    }

    pub async fn call(
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

    pub async fn get(&self, at: &Process, path: &str, token: &str) -> (StatusCode, Value) {
        self.call(reqwest::Method::GET, format!("{}{path}", at.url), Some(token), None).await
    }

    pub async fn post(&self, at: &Process, path: &str, token: Option<&str>, body: Value) -> (StatusCode, Value) {
        self.call(reqwest::Method::POST, format!("{}{path}", at.url), token, Some(body)).await
    }

    pub async fn delete(&self, at: &Process, path: &str, token: &str) -> StatusCode {
        self.call(reqwest::Method::DELETE, format!("{}{path}", at.url), Some(token), None).await.0
    }

    /// Signs up through `at`; returns (session token, user id, organization id).
    pub async fn signup(&self, at: &Process, email: &str) -> (String, String, String) {
        let (status, body) =
            self.post(at, "/v1/auth/signup", None, json!({"email": email, "password": PASSWORD})).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        let s = |p: &str| body.pointer(p).unwrap().as_str().unwrap().to_owned();
        (s("/token"), s("/user/id"), s("/organization/id"))
    }

    /// Logs in through `at`; returns a fresh session token.
    pub async fn login(&self, at: &Process, email: &str) -> String {
        let (status, body) = self.post(at, "/v1/auth/login", None, json!({"email": email, "password": PASSWORD})).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body["token"].as_str().unwrap().to_owned()
    }
}

/// How long until `check` holds, trying every 2 ms for up to `within`; `None` if it never did.
pub async fn time_until<F, Fut>(within: Duration, check: F) -> Option<Duration>
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
