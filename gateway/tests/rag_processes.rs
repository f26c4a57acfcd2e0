//! Ingestion across real gateway processes (the binary) on one PostgreSQL database: a process
//! killed with `kill -9` in the middle of ingesting a store's files, a new process started, and
//! every file completes, each chunk indexed once.
//!
//! PostgreSQL and Redis are needed; with `CI=true` their absence is a failure.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use reqwest::StatusCode;
use serde_json::{Value, json};
use std::time::Duration;
use support::{Api, Deployment, Process, time_until};

const FILES: usize = 24;
const SECTIONS: usize = 20;

/// A word found in one section of one file only: letters for two-digit numbers, so that no
/// tokenizer splits it, and a final `q`, so that no stemmer shortens it into another.
fn marker(file: usize, section: usize) -> String {
    let letters = |n: usize| format!("{n:02}").bytes().map(|d| char::from(b'a' + (d - b'0'))).collect::<String>();
    format!("kw{}x{}q", letters(file), letters(section))
}

/// A document of `SECTIONS` sections of about 150 tokens, each with its own marker.
fn document(file: usize) -> String {
    let mut text = format!("# Report {file}\n\n");
    for section in 0..SECTIONS {
        text.push_str(&format!("## Part {section}\n\nThis part is about {}. ", marker(file, section)));
        for _ in 0..8 {
            text.push_str("The committee reviewed the numbers again and found them consistent. ");
        }
        text.push_str("\n\n");
    }
    text
}

async fn upload(api: &Api, at: &Process, key: &str, name: &str, text: String) -> String {
    let file = reqwest::multipart::Part::bytes(text.into_bytes()).file_name(name.to_owned());
    let form = reqwest::multipart::Form::new().text("purpose", "assistants").part("file", file);
    let response = api.http.post(format!("{}/v1/files", at.url)).bearer_auth(key).multipart(form).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    body["id"].as_str().unwrap().to_owned()
}

async fn file_counts(api: &Api, at: &Process, key: &str, store: &str) -> Value {
    let (status, body) = api.get(at, &format!("/v1/vector_stores/{store}"), key).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["file_counts"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_being_ingested_when_its_process_is_killed_completes_after_a_restart_without_duplicates() {
    // A short job lease, so that the jobs the dead process held are taken up again soon.
    let settings =
        [("KEEL_JOBS__LEASE_MS", "2000"), ("KEEL_JOBS__HEARTBEAT_MS", "500"), ("KEEL_JOBS__POLL_INTERVAL_MS", "100")];
    let Some(deployment) = Deployment::new(&settings) else { return };
    let api = Api::new();
    let a = deployment.start();
    let (session, _, org) = api.signup(&a, "ingest@example.com").await;
    let (status, key) =
        api.post(&a, &format!("/v1/organizations/{org}/api-keys"), Some(&session), json!({"name": "k"})).await;
    assert_eq!(status, StatusCode::CREATED, "{key}");
    let key = key["key"].as_str().unwrap().to_owned();

    let mut files = Vec::new();
    for i in 0..FILES {
        files.push(upload(&api, &a, &key, &format!("report-{i}.md"), document(i)).await);
    }
    let chunking = json!({"type": "static", "static": {"max_chunk_size_tokens": 200, "chunk_overlap_tokens": 0}});
    let (status, store) = api
        .post(
            &a,
            "/v1/vector_stores",
            Some(&key),
            json!({"name": "reports", "file_ids": files, "chunking_strategy": chunking}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{store}");
    let store = store["id"].as_str().unwrap().to_owned();

    // Killed once some files are done and others are not.
    let midway = time_until(Duration::from_secs(60), || async {
        let counts = file_counts(&api, &a, &key, &store).await;
        counts["completed"].as_u64().unwrap() > 0 && counts["in_progress"].as_u64().unwrap() > 0
    })
    .await;
    assert!(midway.is_some(), "never caught in the middle: {}", file_counts(&api, &a, &key, &store).await);
    a.kill();
    let b = deployment.start();
    let at_kill = file_counts(&api, &b, &key, &store).await;
    eprintln!("kill -9 with file counts {at_kill}");
    assert!(at_kill["in_progress"].as_u64().unwrap() > 0, "{at_kill}");

    // The new process takes the dead one's jobs up again and finishes them.
    let finished = time_until(Duration::from_secs(120), || async {
        file_counts(&api, &b, &key, &store).await["in_progress"] == 0
    })
    .await;
    let counts = file_counts(&api, &b, &key, &store).await;
    assert!(finished.is_some(), "ingestion never finished after the restart: {counts}");
    assert_eq!(counts, json!({"in_progress": 0, "completed": FILES, "failed": 0, "cancelled": 0, "total": FILES}));

    // Every section of every file is found, once: no chunk was written or indexed twice.
    for (i, file) in files.iter().enumerate() {
        for section in 0..SECTIONS {
            let word = marker(i, section);
            let (status, found) = api
                .post(
                    &b,
                    &format!("/v1/vector_stores/{store}/search"),
                    Some(&key),
                    json!({"query": word, "max_num_results": 50}),
                )
                .await;
            assert_eq!(status, StatusCode::OK, "{found}");
            let data = found["data"].as_array().unwrap();
            assert_eq!(data.len(), 1, "{word}: {found}");
            assert_eq!(data[0]["file_id"], json!(file));
            assert!(data[0]["content"][0]["text"].as_str().unwrap().contains(&word), "{found}");
        }
    }
    assert!(b.terminate().success());
}
