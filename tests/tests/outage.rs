//! Real PostgreSQL outages, on the real server: a restart with warm pools, and a stop. The
//! server is always started again before a test ends (a guard does it even on panic). These
//! tests stop the server other tests use, so they live in their own test binary (cargo runs
//! test binaries one at a time) and take a lock among themselves.
//!
//! They need `pg_ctlcluster` (Debian's PostgreSQL) and the right to run it; with `CI=true`
//! their absence is a failure.
//!
//! Covered: auth's pools after a restart, auth during and after a stop, retrieval (search,
//! stores, uploads, ingestion) during and after a stop, and a Redis outage.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::json;
use shared::testing::{DATABASE_URL_VAR, TestBackend, in_ci, required_in_ci};
use std::process::Command;
use std::time::{Duration, Instant};
use tests::harness::{TestGateway, database, gateway_config};
use tests::{Client, Reply};

static SERVER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The local PostgreSQL cluster, controlled with `pg_ctlcluster`.
#[derive(Clone)]
struct Cluster {
    version: String,
}

impl Cluster {
    fn find() -> Option<Self> {
        required_in_ci(DATABASE_URL_VAR)?;
        let version = std::fs::read_dir("/etc/postgresql")
            .ok()
            .and_then(|dir| dir.filter_map(Result::ok).map(|e| e.file_name().to_string_lossy().into_owned()).max());
        let usable = version.is_some() && Command::new("pg_ctlcluster").arg("--help").output().is_ok();
        assert!(usable || !in_ci(), "the outage tests need pg_ctlcluster in CI");
        if !usable {
            eprintln!("skipped: no pg_ctlcluster here");
        }
        version.filter(|_| usable).map(|version| Self { version })
    }

    fn ctl(&self, action: &str) {
        let mut command = Command::new("pg_ctlcluster");
        command.args(["--skip-systemctl-redirect", &self.version, "main", action]);
        if action != "start" {
            command.args(["--", "-m", "fast"]);
        }
        let output = command.output().unwrap();
        assert!(output.status.success(), "pg_ctlcluster {action}: {}", String::from_utf8_lossy(&output.stderr));
    }

    fn accepting(&self) -> bool {
        Command::new("pg_isready").args(["-q", "-h", "127.0.0.1"]).status().is_ok_and(|s| s.success())
    }

    fn wait_accepting(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !self.accepting() {
            assert!(Instant::now() < deadline, "PostgreSQL did not come back");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Starts the server again whatever happens to the test.
struct Restore(Cluster);

impl Drop for Restore {
    fn drop(&mut self) {
        if !self.0.accepting() {
            let _ = Command::new("pg_ctlcluster")
                .args(["--skip-systemctl-redirect", &self.0.version, "main", "start"])
                .status();
        }
        self.0.wait_accepting();
    }
}

async fn signup(api: &Client) -> String {
    let body = json!({"email": "ada@example.com", "password": "correct horse battery"});
    let reply = api.post("/v1/auth/signup", None, &body).await;
    assert_eq!(reply.status, 201, "{}", reply.body);
    reply.body["token"].as_str().unwrap().to_owned()
}

/// Fills the pool: enough requests at once that every connection is in use.
async fn warm(api: &Client, token: &str) {
    let requests = (0..16).map(|_| api.get("/v1/auth/me", Some(token)));
    for reply in futures_util::future::join_all(requests).await {
        assert_eq!(reply.status, 200, "{}", reply.body);
    }
}

#[track_caller]
fn assert_unavailable(reply: &Reply) {
    reply.assert_error(503, "service_unavailable");
    assert_eq!(reply.body["error"]["message"], "The service is temporarily unavailable; retry later.");
    assert!(reply.header("retry-after").is_some_and(|v| v.parse::<u64>().is_ok()), "{:?}", reply.headers);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pools_heal_by_themselves_after_a_postgresql_restart() {
    let _lock = SERVER.lock().await;
    let Some(cluster) = Cluster::find() else { return };
    let backend = TestBackend::Postgres(std::env::var(DATABASE_URL_VAR).unwrap());
    let database = database(&backend);
    // Dropped before the database, so that the server is up to drop it.
    let _restore = Restore(cluster.clone());
    let mut config = gateway_config(&database);
    config.database.pool.check_idle_after_ms = 200;
    let gateway = TestGateway::start(config, None).await;
    let api = gateway.client();
    let token = signup(&api).await;
    warm(&api, &token).await;

    tokio::task::spawn_blocking(move || {
        cluster.ctl("restart");
        cluster.wait_accepting();
    })
    .await
    .unwrap();
    // Idle a little longer than `check_idle_after_ms`, as a pool does between bursts.
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Every connection the pool held died with the server; none of them reaches a request.
    for n in 0..20 {
        let reply = api.get("/v1/auth/me", Some(&token)).await;
        assert_eq!(reply.status, 200, "request {n} after the restart: {}", reply.body);
    }
    warm(&api, &token).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_answers_503_with_retry_after_quickly_and_then_heals() {
    let _lock = SERVER.lock().await;
    let Some(cluster) = Cluster::find() else { return };
    let backend = TestBackend::Postgres(std::env::var(DATABASE_URL_VAR).unwrap());
    let database = database(&backend);
    // Dropped before the database, so that the server is up to drop it.
    let _restore = Restore(cluster.clone());
    let config = gateway_config(&database);
    let pool_timeout = Duration::from_millis(config.database.pool.connection_timeout_ms);
    let gateway = TestGateway::start(config, None).await;
    let api = gateway.client();
    let token = signup(&api).await;
    warm(&api, &token).await;

    let stopping = cluster.clone();
    tokio::task::spawn_blocking(move || stopping.ctl("stop")).await.unwrap();

    // Lost connections first, then refused ones: all answer 503 with Retry-After, none 500,
    // and none waits for the pool's full checkout timeout.
    for n in 0..12 {
        let started = Instant::now();
        let reply = api.get("/v1/auth/me", Some(&token)).await;
        assert_unavailable(&reply);
        assert!(started.elapsed() < pool_timeout, "request {n} waited {:?}", started.elapsed());
    }
    let login = json!({"email": "ada@example.com", "password": "correct horse battery"});
    assert_unavailable(&api.post("/v1/auth/login", None, &login).await);
    api.get("/readyz", None).await.assert_error(503, "not_ready");
    assert_eq!(api.get("/healthz", None).await.status, 200, "the process itself is alive");

    // Back up: the pool reconnects by itself.
    tokio::task::spawn_blocking(move || {
        cluster.ctl("start");
        cluster.wait_accepting();
    })
    .await
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let reply = api.get("/v1/auth/me", Some(&token)).await;
        if reply.status == 200 {
            break;
        }
        assert_unavailable(&reply);
        assert!(Instant::now() < deadline, "the pool did not heal");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for _ in 0..10 {
        assert_eq!(api.get("/v1/auth/me", Some(&token)).await.status, 200);
    }
    assert_eq!(api.get("/readyz", None).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_outage_fails_no_request_and_sharing_resumes_when_it_is_back() {
    let _lock = SERVER.lock().await;
    let Some(url) = shared::testing::redis_url() else { return };
    let Some(redis) = shared::testing::LocalRedis::new(&url) else { return };
    let backend = TestBackend::Postgres(std::env::var(DATABASE_URL_VAR).unwrap());
    let database = database(&backend);
    let mut config = gateway_config(&database);
    config.rate_limits.classes.insert("auth".into(), shared::ratelimit::Quota::new(1_000, 60));
    let gateway = TestGateway::start(config, None).await;
    let api = gateway.client();
    let token = signup(&api).await;
    warm(&api, &token).await;

    redis.stop();
    // Cached and uncached credentials, rate-limited routes and logins: all still answer.
    for _ in 0..20 {
        let reply = api.get("/v1/auth/me", Some(&token)).await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        assert!(reply.header("ratelimit").is_some(), "the in-process fallback still limits");
    }
    let login = json!({"email": "ada@example.com", "password": "correct horse battery"});
    let reply = api.post("/v1/auth/login", None, &login).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let fresh = reply.body["token"].as_str().unwrap().to_owned();
    assert_eq!(api.get("/v1/auth/me", Some(&fresh)).await.status, 200);
    // The metrics say so (sampled every second).
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let text = api.get("/metrics", None).await.body.as_str().unwrap_or_default().to_owned();
        if text.contains("keel_redis_up 0") && text.contains("keel_ratelimit_fallback_active 1") {
            break;
        }
        assert!(Instant::now() < deadline, "the metrics do not show the outage:\n{text}");
        assert_eq!(api.get("/v1/auth/me", Some(&token)).await.status, 200);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    redis.start();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = api.get("/metrics", None).await.body.as_str().unwrap_or_default().to_owned();
        if text.contains("keel_redis_up 1") && text.contains("keel_ratelimit_fallback_active 0") {
            break;
        }
        assert!(Instant::now() < deadline, "the gateway did not notice Redis came back:\n{text}");
        // The fallback flag clears with the next decision made on Redis.
        assert_eq!(api.get("/v1/auth/me", Some(&token)).await.status, 200);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(api.get("/v1/auth/me", Some(&token)).await.status, 200);
}

/// An API key of a new organization: retrieval's routes take API keys.
async fn api_key(api: &Client) -> String {
    let body = json!({"email": "ada@example.com", "password": "correct horse battery"});
    let reply = api.post("/v1/auth/signup", None, &body).await;
    assert_eq!(reply.status, 201, "{}", reply.body);
    let (session, org) = (reply.body["token"].as_str().unwrap(), reply.body["organization"]["id"].as_str().unwrap());
    let reply = api.post(&format!("/v1/organizations/{org}/api-keys"), Some(session), &json!({"name": "rag"})).await;
    assert_eq!(reply.status, 201, "{}", reply.body);
    reply.body["key"].as_str().unwrap().to_owned()
}

async fn upload(api: &Client, key: &str, text: &str) -> Reply {
    let part = reqwest::multipart::Part::text(text.to_owned()).file_name("handbook.md").mime_str("text/markdown");
    let form = reqwest::multipart::Form::new().text("purpose", "assistants").part("file", part.unwrap());
    Client::send(api.request(reqwest::Method::POST, "/v1/files", Some(key)).multipart(form)).await
}

/// Attaches `file` to `store` and waits for the end of its ingestion: its last status.
async fn ingested(api: &Client, key: &str, store: &str, file: &str) -> String {
    let reply = api.post(&format!("/v1/vector_stores/{store}/files"), Some(key), &json!({"file_id": file})).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let reply = api.get(&format!("/v1/vector_stores/{store}/files/{file}"), Some(key)).await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        if reply.body["status"] != "in_progress" || Instant::now() > deadline {
            return reply.body["status"].as_str().unwrap_or_default().to_owned();
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Searches the store, reads it and uploads a file: each answer, with how long it took. A call
/// that hangs fails the test rather than stall it.
async fn retrieval_calls(api: &Client, key: &str, store: &str) -> Vec<(&'static str, Reply, Duration)> {
    let search = format!("/v1/vector_stores/{store}/search");
    let retrieve = format!("/v1/vector_stores/{store}");
    let query = json!({"query": "refunds paid"});
    let mut answers = Vec::new();
    for what in ["search", "retrieve", "upload"] {
        let started = Instant::now();
        let call = async {
            match what {
                "search" => api.post(&search, Some(key), &query).await,
                "retrieve" => api.get(&retrieve, Some(key)).await,
                _ => upload(api, key, "# Shipping\n\nShipping is free.\n").await,
            }
        };
        let reply = tokio::time::timeout(Duration::from_secs(30), call).await.unwrap_or_else(|_| panic!("{what} hung"));
        answers.push((what, reply, started.elapsed()));
    }
    answers
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retrieval_answers_503_in_an_outage_and_serves_again_after_it() {
    let _lock = SERVER.lock().await;
    let Some(cluster) = Cluster::find() else { return };
    let backend = TestBackend::Postgres(std::env::var(DATABASE_URL_VAR).unwrap());
    let database = database(&backend);
    // Dropped before the database, so that the server is up to drop it.
    let _restore = Restore(cluster.clone());
    let mut config = gateway_config(&database);
    config.jobs.poll_interval_ms = 50;
    // The API key stays authenticated from the warm credential cache through the outage, so
    // that the answers below are retrieval's own, not authentication's.
    config.auth.cache.l1_ttl_ms = 600_000;
    config.auth.cache.l1_degraded_ttl_ms = 600_000;
    let pool_timeout = Duration::from_millis(config.database.pool.connection_timeout_ms);
    let gateway = TestGateway::start(config, None).await;
    let api = gateway.client();
    let key = api_key(&api).await;
    let reply = api.post("/v1/vector_stores", Some(&key), &json!({"name": "docs"})).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let store = reply.body["id"].as_str().unwrap().to_owned();
    let reply = upload(&api, &key, "# Returns\n\nRefunds are paid within fourteen days of the return.\n").await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let file = reply.body["id"].as_str().unwrap().to_owned();
    assert_eq!(ingested(&api, &key, &store, &file).await, "completed");
    for (what, reply, _) in retrieval_calls(&api, &key, &store).await {
        assert_eq!(reply.status, 200, "{what} before the outage: {}", reply.body);
    }

    let stopping = cluster.clone();
    tokio::task::spawn_blocking(move || stopping.ctl("stop")).await.unwrap();

    // The store's index is in process, but a search first checks in the database that the
    // store is the caller's: without the database no answer is known to be the caller's to
    // see, so 503 is the answer, as for reading the store and recording an upload. Lost
    // connections first, then refused ones; none waits for the pool's checkout timeout.
    for round in 0..4 {
        for (what, reply, took) in retrieval_calls(&api, &key, &store).await {
            assert_eq!(reply.status, 503, "{what} in round {round} of the outage: {}", reply.body);
            assert_unavailable(&reply);
            assert!(took < pool_timeout, "{what} in round {round} waited {took:?}");
        }
    }

    // Back up: the same gateway serves again once its pools have reconnected.
    tokio::task::spawn_blocking(move || {
        cluster.ctl("start");
        cluster.wait_accepting();
    })
    .await
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let uploaded = loop {
        let answers = retrieval_calls(&api, &key, &store).await;
        if answers.iter().all(|(_, reply, _)| reply.status == 200) {
            let (_, search, _) = &answers[0];
            let found: Vec<&str> =
                search.body["data"].as_array().unwrap().iter().map(|r| r["file_id"].as_str().unwrap()).collect();
            assert_eq!(found, [file.as_str()], "{}", search.body);
            let (_, retrieved, _) = &answers[1];
            assert_eq!(retrieved.body["file_counts"]["completed"], 1, "{}", retrieved.body);
            let (_, uploaded, _) = &answers[2];
            break uploaded.body["id"].as_str().unwrap().to_owned();
        }
        for (what, reply, _) in &answers {
            if reply.status != 200 {
                assert_eq!(reply.status, 503, "{what} while healing: {}", reply.body);
                assert_unavailable(reply);
            }
        }
        assert!(Instant::now() < deadline, "retrieval did not heal");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // Ingestion, a background job, resumed too: a file uploaded after the outage is searchable.
    assert_eq!(ingested(&api, &key, &store, &uploaded).await, "completed");
    let reply = api.post(&format!("/v1/vector_stores/{store}/search"), Some(&key), &json!({"query": "shipping"})).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.body["data"][0]["file_id"], uploaded.as_str(), "{}", reply.body);
    assert_eq!(api.get("/readyz", None).await.status, 200);
}
