//! Two gateway processes (the real binary, twice) sharing PostgreSQL and Redis, as replicas
//! behind a load balancer are: revocations, invalidations, login throttling and rate limits
//! hold across them.
//!
//! PostgreSQL and Redis are needed (several processes on one SQLite file are not supported);
//! with `CI=true` their absence is a failure.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use reqwest::StatusCode;
use serde_json::{Value, json};
use std::time::Duration;
use support::{Api, Deployment, PASSWORD, Process, time_until};

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
    // 40 wrong passwords at once, half through each process. (Not the right one among them: a
    // success forgets the account's failures, so the attempts that reach a process after it
    // would start a new count, however the two processes share it.)
    let attempts: Vec<String> = (0..40).map(|n| format!("wrong password {n}")).collect();
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
    assert_eq!(checked + refused, 40);
    // The account is locked in both: even the right password is not checked.
    for process in [&a, &b] {
        let body = json!({"email": "ada@example.com", "password": PASSWORD});
        let (status, answer) = api.post(process, "/v1/auth/login", None, body).await;
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{answer}");
        assert_eq!(answer["error"]["code"], "too_many_attempts", "{answer}");
    }
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
