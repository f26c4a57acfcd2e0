//! The retrieval routes end to end: a real gateway over HTTP, with API keys, as an OpenAI SDK
//! would call it. Upload (multipart), attach, wait for `completed`, search finds the right
//! chunk by keyword; 413 past the size limit with nothing stored; a corrupt PDF fails cleanly;
//! another organization gets 404 everywhere; the error envelopes are pinned exactly; an
//! expired store is refused with `vector_store_expired`, also through a remote inference; file
//! batches as the SDKs drive them (create, poll, list, cancel).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use futures_util::StreamExt;
use reqwest::Method;
use reqwest::multipart::{Form, Part};
use serde_json::{Value, json};
use shared::testing::{TestBackend, TestDatabase};
use std::time::{Duration, Instant};
use tests::harness::{TestGateway, database, gateway_config};
use tests::rag::{ANIMALS, CORRUPT_PDF, field_notes, small_chunks};
use tests::{Client, Reply};

const PASSWORD: &str = "correct horse battery";
/// `inference.rag.max_file_bytes` of these tests.
const LIMIT: u64 = 64 * 1024;

/// Signs up and creates an API key: (session, API key).
async fn account(api: &Client) -> (String, String) {
    let email = format!("u{}@example.com", uuid::Uuid::now_v7().simple());
    let reply = api.post("/v1/auth/signup", None, &json!({"email": email, "password": PASSWORD})).await;
    assert_eq!(reply.status, 201, "{}", reply.body);
    let session = reply.body["token"].as_str().unwrap().to_owned();
    let org = reply.body["organization"]["id"].as_str().unwrap();
    let reply = api.post(&format!("/v1/organizations/{org}/api-keys"), Some(&session), &json!({"name": "k"})).await;
    assert_eq!(reply.status, 201, "{}", reply.body);
    (session, reply.body["key"].as_str().unwrap().to_owned())
}

/// `POST /v1/files` with `file` (named `filename`, of `content_type`) and `purpose`.
async fn upload(api: &Client, key: &str, filename: &str, content_type: &str, bytes: Vec<u8>) -> Reply {
    let file = Part::bytes(bytes).file_name(filename.to_owned()).mime_str(content_type).unwrap();
    let form = Form::new().text("purpose", "assistants").part("file", file);
    Client::send(api.request(Method::POST, "/v1/files", Some(key)).multipart(form)).await
}

/// The store's file once its ingestion has ended.
async fn settled(api: &Client, key: &str, store: &str, file: &str) -> Value {
    let started = Instant::now();
    loop {
        let reply = api.get(&format!("/v1/vector_stores/{store}/files/{file}"), Some(key)).await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        if reply.body["status"] != "in_progress" {
            return reply.body;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "still in progress: {}", reply.body);
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

async fn file_ids(api: &Client, key: &str) -> Vec<String> {
    let reply = api.get("/v1/files?limit=100", Some(key)).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    reply.body["data"].as_array().unwrap().iter().map(|f| f["id"].as_str().unwrap().to_owned()).collect()
}

/// Moves a store's last activity `secs` into the past, as if that much time had passed.
async fn age_store(database: &TestDatabase, store: &str, secs: i64) {
    use diesel::RunQueryDsl;
    let db = database.open(inference::DOMAIN).await;
    let store = store.to_owned();
    let aged = db
        .run(move |conn| {
            diesel::sql_query("UPDATE rag_vector_stores SET last_active_at = last_active_at - $1 WHERE id = $2")
                .bind::<diesel::sql_types::BigInt, _>(secs)
                .bind::<diesel::sql_types::Text, _>(store)
                .execute(conn)
                .map_err(shared::db::DbError::from)
        })
        .await
        .unwrap();
    assert_eq!(aged, 1);
}

#[tokio::test]
async fn upload_attach_search_and_isolation_over_http() {
    for backend in shared::testing::backends() {
        upload_attach_search_and_isolation_over_http_on(backend).await;
    }
}

async fn upload_attach_search_and_isolation_over_http_on(backend: TestBackend) {
    let database = database(&backend);
    let mut config = gateway_config(&database);
    config.inference.rag.max_file_bytes = LIMIT;
    config.jobs.poll_interval_ms = 50;
    let gateway = TestGateway::start(config, None).await;
    let api = gateway.client();
    let (session, key) = account(&api).await;
    let (_, stranger) = account(&api).await;

    // Upload: the file object, and the bytes back with their type and name.
    let notes = field_notes();
    let reply = upload(&api, &key, "notes.md", "text/markdown", notes.clone().into_bytes()).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let file = reply.body["id"].as_str().unwrap().to_owned();
    let created_at = reply.body["created_at"].clone();
    assert_eq!(
        reply.body,
        json!({"id": file, "object": "file", "bytes": notes.len(), "created_at": created_at,
            "filename": "notes.md", "purpose": "assistants", "status": "processed"})
    );
    let response = api.request(Method::GET, &format!("/v1/files/{file}/content"), Some(&key)).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/markdown");
    assert_eq!(response.headers()["content-disposition"], "attachment; filename=\"notes.md\"");
    assert_eq!(response.headers()["x-content-type-options"], "nosniff");
    assert_eq!(response.bytes().await.unwrap(), notes.as_bytes());

    // Attach, wait for `completed`, and search: each keyword finds its own paragraph.
    let reply = api.post("/v1/vector_stores", Some(&key), &json!({"name": "notes"})).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let store = reply.body["id"].as_str().unwrap().to_owned();
    let attach = json!({"file_id": file, "attributes": {"kind": "notes"}, "chunking_strategy": small_chunks()});
    let reply = api.post(&format!("/v1/vector_stores/{store}/files"), Some(&key), &attach).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.body["object"], "vector_store.file");
    let done = settled(&api, &key, &store, &file).await;
    assert_eq!((&done["status"], &done["last_error"]), (&json!("completed"), &Value::Null), "{done}");
    for animal in ANIMALS {
        let reply = api.post(&format!("/v1/vector_stores/{store}/search"), Some(&key), &json!({"query": animal})).await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        assert_eq!(reply.body["object"], "vector_store.search_results.page");
        let top = &reply.body["data"][0];
        assert_eq!((&top["file_id"], &top["filename"]), (&json!(file), &json!("notes.md")), "{}", reply.body);
        let text = top["content"][0]["text"].as_str().unwrap();
        assert!(text.contains(animal), "{animal}: {text}");
        assert_eq!(top["content"][0]["type"], "text");
        assert_eq!(top["attributes"], json!({"kind": "notes"}));
    }
    let reply = api.get(&format!("/v1/vector_stores/{store}"), Some(&key)).await;
    assert_eq!(reply.body["file_counts"]["completed"], 1, "{}", reply.body);

    // A corrupt PDF: that file fails with a reason, and nothing else does.
    let reply = upload(&api, &key, "broken.pdf", "application/pdf", CORRUPT_PDF.to_vec()).await;
    let pdf = reply.body["id"].as_str().unwrap().to_owned();
    let reply = api.post(&format!("/v1/vector_stores/{store}/files"), Some(&key), &json!({"file_id": pdf})).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let broken = settled(&api, &key, &store, &pdf).await;
    assert_eq!(broken["status"], "failed", "{broken}");
    assert!(["invalid_file", "unsupported_file"].contains(&broken["last_error"]["code"].as_str().unwrap()), "{broken}");
    assert!(!broken["last_error"]["message"].as_str().unwrap().is_empty());
    let reply = api.get(&format!("/v1/vector_stores/{store}"), Some(&key)).await;
    assert_eq!(
        reply.body["file_counts"],
        json!({"in_progress": 0, "completed": 1, "failed": 1, "cancelled": 0, "total": 2})
    );

    // 413 past the limit, at the limit's first byte over or far over; nothing is stored.
    let before = file_ids(&api, &key).await;
    let too_large = json!({"error": {"message": format!("The file is larger than the limit of {LIMIT} bytes."),
        "type": "invalid_request_error", "code": "file_too_large", "param": "file"}});
    for size in [LIMIT + 1, 64 * LIMIT] {
        let reply = upload(&api, &key, "big.txt", "text/plain", vec![b'a'; size as usize]).await;
        reply.assert_error(413, "file_too_large");
        assert_eq!(reply.body, too_large);
    }
    // An upload whose sender stalls past the limit, never finishing its body: answered at once.
    let past: Vec<Result<Vec<u8>, std::io::Error>> = (0..=LIMIT / 8192).map(|_| Ok(vec![b'a'; 8192])).collect();
    let stalled = futures_util::stream::iter(past).chain(futures_util::stream::pending());
    let part = Part::stream(reqwest::Body::wrap_stream(stalled)).file_name("stalled.txt");
    let form = Form::new().text("purpose", "assistants").part("file", part);
    let request = api.request(Method::POST, "/v1/files", Some(&key)).multipart(form);
    let reply = tokio::time::timeout(Duration::from_secs(10), Client::send(request)).await;
    let reply = reply.expect("the 413 waits for no end of the body");
    assert_eq!(reply.body, too_large);
    assert_eq!(upload(&api, &key, "edge.txt", "text/plain", vec![b'a'; LIMIT as usize]).await.status, 200);
    let after = file_ids(&api, &key).await;
    assert_eq!(after.len(), before.len() + 1, "only the file at the limit was stored");

    // Another organization: 404 on everything, in the same envelope as an unknown id.
    let file_not_found = json!({"error": {"message": format!("No file found with id `{file}`."),
        "type": "not_found_error", "code": "file_not_found", "param": null}});
    let store_not_found = json!({"error": {"message": format!("No vector store found with id `{store}`."),
        "type": "not_found_error", "code": "vector_store_not_found", "param": null}});
    for reply in [
        api.get(&format!("/v1/files/{file}"), Some(&stranger)).await,
        api.get(&format!("/v1/files/{file}/content"), Some(&stranger)).await,
        api.delete(&format!("/v1/files/{file}"), Some(&stranger)).await,
    ] {
        reply.assert_error(404, "file_not_found");
        assert_eq!(reply.body, file_not_found);
    }
    for reply in [
        api.get(&format!("/v1/vector_stores/{store}"), Some(&stranger)).await,
        api.post(&format!("/v1/vector_stores/{store}/search"), Some(&stranger), &json!({"query": "axolotl"})).await,
        api.get(&format!("/v1/vector_stores/{store}/files/{file}"), Some(&stranger)).await,
        api.delete(&format!("/v1/vector_stores/{store}"), Some(&stranger)).await,
    ] {
        reply.assert_error(404, "vector_store_not_found");
        assert_eq!(reply.body, store_not_found);
    }
    assert!(file_ids(&api, &stranger).await.is_empty());
    let reply = api.post(&format!("/v1/vector_stores/{store}/search"), Some(&key), &json!({"query": "axolotl"})).await;
    assert_eq!(reply.body["data"].as_array().unwrap().len(), 1, "the owner's file is intact: {}", reply.body);

    // Error envelopes of malformed requests, pinned.
    let raw = api
        .request(Method::POST, "/v1/vector_stores", Some(&key))
        .header("content-type", "application/json")
        .body("{not json");
    let reply = Client::send(raw).await;
    reply.assert_error(400, "invalid_json");
    assert_eq!(
        reply.body,
        json!({"error": {"message": "We could not parse the JSON body of your request: key must be a string at line 1 column 2",
            "type": "invalid_request_error", "code": "invalid_json", "param": null}})
    );
    let reply = api.post("/v1/files", Some(&key), &json!({"file": "notes.md"})).await;
    reply.assert_error(400, "invalid_multipart");
    assert_eq!(
        reply.body,
        json!({"error": {"message": "We could not parse the multipart body of your request: Parsed Content-Type did not have 'multipart' top-level media type",
            "type": "invalid_request_error", "code": "invalid_multipart", "param": null}})
    );
    let form = Form::new().part("file", Part::bytes(b"x".to_vec()).file_name("a.txt"));
    let reply = Client::send(api.request(Method::POST, "/v1/files", Some(&key)).multipart(form)).await;
    assert_eq!(
        reply.body,
        json!({"error": {"message": "Missing required parameter: 'purpose'.",
            "type": "invalid_request_error", "code": "invalid_request", "param": "purpose"}})
    );
    assert_eq!(reply.status, 400);
    let reply = api.post(&format!("/v1/vector_stores/{store}/files"), Some(&key), &json!({})).await;
    assert_eq!(
        reply.body,
        json!({"error": {"message": "Missing required parameter: 'file_id'.",
            "type": "invalid_request_error", "code": "invalid_request", "param": "file_id"}})
    );
    api.get("/v1/files?limit=many", Some(&key)).await.assert_error(400, "invalid_query");
    api.get("/v1/files", None).await.assert_error(401, "unauthenticated");
    let reply = api.get("/v1/files", Some(&session)).await;
    reply.assert_error(403, "permission_denied");
    assert_eq!(reply.body["error"]["type"], "permission_error");
    api.json(Method::PUT, "/v1/files", Some(&key), &json!({})).await.assert_error(405, "method_not_allowed");

    // Delete: the store, then the file.
    let reply = api.delete(&format!("/v1/vector_stores/{store}"), Some(&key)).await;
    assert_eq!(reply.body, json!({"id": store, "object": "vector_store.deleted", "deleted": true}));
    let reply = api.delete(&format!("/v1/files/{file}"), Some(&key)).await;
    assert_eq!(reply.body, json!({"id": file, "object": "file", "deleted": true}));
    api.get(&format!("/v1/files/{file}"), Some(&key)).await.assert_error(404, "file_not_found");

    // The document describes every route.
    let reply = api.get("/openapi.json", None).await;
    let paths = reply.body["paths"].as_object().unwrap();
    for path in [
        "/v1/files",
        "/v1/files/{file_id}",
        "/v1/files/{file_id}/content",
        "/v1/vector_stores",
        "/v1/vector_stores/{vector_store_id}",
        "/v1/vector_stores/{vector_store_id}/files",
        "/v1/vector_stores/{vector_store_id}/files/{file_id}",
        "/v1/vector_stores/{vector_store_id}/search",
    ] {
        assert!(paths.contains_key(path), "{path} is not documented");
    }
    assert!(paths["/v1/files"]["post"]["responses"]["413"]["description"].as_str().unwrap().contains("file_too_large"));
    gateway.stop().await;
}

#[tokio::test]
async fn a_gateway_whose_inference_is_remote_serves_retrieval_the_same() {
    let database = database(&TestBackend::Sqlite);
    let mut config = gateway_config(&database);
    config.inference.rag.max_file_bytes = LIMIT;
    config.jobs.poll_interval_ms = 50;
    let service = TestGateway::start(config.clone(), None).await;
    let mut front = config;
    front.inference.url = Some(shared::Secret::new(service.url()));
    let front = TestGateway::start(front, None).await;
    let api = front.client();
    let (_, key) = account(&api).await;
    let (_, stranger) = account(&api).await;

    // The upload goes on as multipart; the content comes back with its type and its name.
    let name = "résumé \"v2\".md";
    let reply = upload(&api, &key, name, "text/markdown", field_notes().into_bytes()).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.body["filename"], name);
    let file = reply.body["id"].as_str().unwrap().to_owned();
    let response = api.request(Method::GET, &format!("/v1/files/{file}/content"), Some(&key)).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/markdown");
    assert_eq!(
        response.headers()["content-disposition"],
        "attachment; filename=\"r_sum_ \\\"v2\\\".md\"; filename*=UTF-8''r%C3%A9sum%C3%A9%20%22v2%22.md"
    );
    assert_eq!(response.bytes().await.unwrap(), field_notes().as_bytes());

    let reply = api
        .post("/v1/vector_stores", Some(&key), &json!({"file_ids": [file], "chunking_strategy": small_chunks()}))
        .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let store = reply.body["id"].as_str().unwrap().to_owned();
    assert_eq!(settled(&api, &key, &store, &file).await["status"], "completed");
    let reply =
        api.post(&format!("/v1/vector_stores/{store}/search"), Some(&key), &json!({"query": "planarian"})).await;
    assert!(reply.body["data"][0]["content"][0]["text"].as_str().unwrap().contains("planarian"), "{}", reply.body);

    // Errors come back as the same variants, hence the same envelopes.
    let reply = upload(&api, &key, "big.txt", "text/plain", vec![b'a'; LIMIT as usize + 1]).await;
    reply.assert_error(413, "file_too_large");
    api.get(&format!("/v1/files/{file}"), Some(&stranger)).await.assert_error(404, "file_not_found");
    let reply = api.post(&format!("/v1/vector_stores/{store}/search"), Some(&stranger), &json!({"query": "x"})).await;
    reply.assert_error(404, "vector_store_not_found");
    let reply = api.post(&format!("/v1/vector_stores/{store}/files"), Some(&key), &json!({})).await;
    reply.assert_error(400, "invalid_request");
    assert_eq!(reply.body["error"]["param"], "file_id");

    // A store a day past its expiry: readable and deletable, refused for search and attach
    // with OpenAI's 400 `invalid_request_error`.
    let expiring = json!({"name": "brief", "expires_after": {"anchor": "last_active_at", "days": 1}});
    let reply = api.post("/v1/vector_stores", Some(&key), &expiring).await;
    assert_eq!((reply.status, &reply.body["status"]), (200, &json!("completed")), "{}", reply.body);
    let brief = reply.body["id"].as_str().unwrap().to_owned();
    age_store(&database, &brief, 2 * 86_400).await;
    let reply = api.get(&format!("/v1/vector_stores/{brief}"), Some(&key)).await;
    assert_eq!((reply.status, &reply.body["status"]), (200, &json!("expired")), "{}", reply.body);
    let expired = json!({"error": {"message": format!("The vector store `{brief}` has expired; it can no longer be used."),
        "type": "invalid_request_error", "code": "vector_store_expired", "param": null}});
    for reply in [
        api.post(&format!("/v1/vector_stores/{brief}/search"), Some(&key), &json!({"query": "planarian"})).await,
        api.post(&format!("/v1/vector_stores/{brief}/files"), Some(&key), &json!({"file_id": file})).await,
    ] {
        reply.assert_error(400, "vector_store_expired");
        assert_eq!(reply.body, expired);
    }
    let reply = api.delete(&format!("/v1/vector_stores/{brief}"), Some(&key)).await;
    assert_eq!(reply.body, json!({"id": brief, "object": "vector_store.deleted", "deleted": true}));

    let reply = api.delete(&format!("/v1/files/{file}"), Some(&key)).await;
    assert_eq!(reply.body, json!({"id": file, "object": "file", "deleted": true}));
    front.stop().await;
    service.stop().await;
}

/// What an SDK's `file_batches.create_and_poll` does: create, then read the batch until it is
/// no longer `in_progress`.
async fn batch_settled(api: &Client, key: &str, store: &str, batch: &str) -> Value {
    let started = Instant::now();
    loop {
        let reply = api.get(&format!("/v1/vector_stores/{store}/file_batches/{batch}"), Some(key)).await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        if reply.body["status"] != "in_progress" {
            return reply.body;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "still in progress: {}", reply.body);
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test]
async fn file_batches_over_http() {
    for backend in shared::testing::backends() {
        file_batches_over_http_on(backend).await;
    }
}

async fn file_batches_over_http_on(backend: TestBackend) {
    let database = database(&backend);
    let mut config = gateway_config(&database);
    config.jobs.poll_interval_ms = 50;
    let gateway = TestGateway::start(config, None).await;
    let api = gateway.client();
    let (_, key) = account(&api).await;
    let (_, stranger) = account(&api).await;
    let mut files = Vec::new();
    for animal in ["lynx", "ocelot", "caracal"] {
        let text = format!("The {animal} is a wild cat of the field notes.");
        let reply = upload(&api, &key, &format!("{animal}.txt"), "text/plain", text.into_bytes()).await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        files.push(reply.body["id"].as_str().unwrap().to_owned());
    }
    files.sort();
    let reply = api.post("/v1/vector_stores", Some(&key), &json!({"name": "cats"})).await;
    let store = reply.body["id"].as_str().unwrap().to_owned();
    let batches = format!("/v1/vector_stores/{store}/file_batches");

    // Create: OpenAI's object, its counts those of the files.
    let create = json!({"file_ids": files, "attributes": {"kind": "cats"}, "chunking_strategy": {"type": "auto"}});
    let reply = api.post(&batches, Some(&key), &create).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let batch = reply.body["id"].as_str().unwrap().to_owned();
    assert!(batch.starts_with("vsfb_"), "{batch}");
    let mut keys: Vec<&String> = reply.body.as_object().unwrap().keys().collect();
    keys.sort();
    assert_eq!(keys, ["created_at", "file_counts", "id", "object", "status", "vector_store_id"]);
    assert_eq!(
        (&reply.body["object"], &reply.body["vector_store_id"]),
        (&json!("vector_store.files_batch"), &json!(store))
    );
    assert_eq!(reply.body["file_counts"]["total"], 3);

    let done = batch_settled(&api, &key, &store, &batch).await;
    assert_eq!(
        done,
        json!({"id": batch, "object": "vector_store.files_batch", "created_at": reply.body["created_at"],
            "vector_store_id": store, "status": "completed",
            "file_counts": {"in_progress": 0, "completed": 3, "failed": 0, "cancelled": 0, "total": 3}})
    );
    let reply = api.post(&format!("/v1/vector_stores/{store}/search"), Some(&key), &json!({"query": "ocelot"})).await;
    assert_eq!(reply.body["data"][0]["attributes"], json!({"kind": "cats"}), "{}", reply.body);

    // The batch's files, a page at a time.
    let reply = api.get(&format!("{batches}/{batch}/files?limit=2&order=asc"), Some(&key)).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let ids: Vec<&str> = reply.body["data"].as_array().unwrap().iter().map(|f| f["id"].as_str().unwrap()).collect();
    assert_eq!((ids, &reply.body["has_more"]), (vec![files[0].as_str(), files[1].as_str()], &json!(true)));
    assert_eq!(reply.body["data"][0]["object"], "vector_store.file");
    let last = reply.body["last_id"].as_str().unwrap();
    let reply = api.get(&format!("{batches}/{batch}/files?limit=2&order=asc&after={last}"), Some(&key)).await;
    assert_eq!(reply.body["data"].as_array().unwrap().len(), 1, "{}", reply.body);
    let reply = api.get(&format!("{batches}/{batch}/files?filter=cancelled"), Some(&key)).await;
    assert!(reply.body["data"].as_array().unwrap().is_empty(), "{}", reply.body);

    // Cancel (no body, as the SDKs send it) once done: nothing changes.
    let reply = Client::send(api.request(Method::POST, &format!("{batches}/{batch}/cancel"), Some(&key))).await;
    assert_eq!((reply.status, &reply.body["status"]), (200, &json!("completed")), "{}", reply.body);
    assert_eq!(reply.body["file_counts"]["completed"], 3);

    // The newer `files` form.
    let reply =
        api.post(&batches, Some(&key), &json!({"files": [{"file_id": files[0], "attributes": {"n": 1}}]})).await;
    assert_eq!((reply.status, &reply.body["file_counts"]["total"]), (200, &json!(1)), "{}", reply.body);

    // Errors, pinned: all or none; another organization; an unknown batch.
    let reply = api.post(&batches, Some(&key), &json!({"file_ids": [files[0], "file_nope"]})).await;
    assert_eq!(
        reply.body,
        json!({"error": {"message": "No file found with id `file_nope`.",
            "type": "not_found_error", "code": "file_not_found", "param": null}})
    );
    let reply =
        api.post(&batches, Some(&key), &json!({"file_ids": [files[0]], "files": [{"file_id": files[1]}]})).await;
    assert_eq!(
        reply.body,
        json!({"error": {"message": "Give either `file_ids` or `files`, not both.",
            "type": "invalid_request_error", "code": "invalid_request", "param": "files"}})
    );
    let store_not_found = json!({"error": {"message": format!("No vector store found with id `{store}`."),
        "type": "not_found_error", "code": "vector_store_not_found", "param": null}});
    for reply in [
        api.post(&batches, Some(&stranger), &json!({"file_ids": files})).await,
        api.get(&format!("{batches}/{batch}"), Some(&stranger)).await,
        api.post(&format!("{batches}/{batch}/cancel"), Some(&stranger), &json!({})).await,
        api.get(&format!("{batches}/{batch}/files"), Some(&stranger)).await,
    ] {
        reply.assert_error(404, "vector_store_not_found");
        assert_eq!(reply.body, store_not_found);
    }
    let unknown = "vsfb_0196f0e4c3b27c11a5e0000000000000";
    let reply = api.get(&format!("{batches}/{unknown}"), Some(&key)).await;
    reply.assert_error(404, "file_batch_not_found");
    assert_eq!(
        reply.body,
        json!({"error": {"message": format!("No vector store file batch found with id `{unknown}`."),
            "type": "not_found_error", "code": "file_batch_not_found", "param": null}})
    );
    assert_eq!(batch_settled(&api, &key, &store, &batch).await["file_counts"]["completed"], 3);

    let reply = api.get("/openapi.json", None).await;
    let paths = reply.body["paths"].as_object().unwrap();
    for path in [
        "/v1/vector_stores/{vector_store_id}/file_batches",
        "/v1/vector_stores/{vector_store_id}/file_batches/{batch_id}",
        "/v1/vector_stores/{vector_store_id}/file_batches/{batch_id}/cancel",
        "/v1/vector_stores/{vector_store_id}/file_batches/{batch_id}/files",
    ] {
        assert!(paths.contains_key(path), "{path} is not documented");
    }
    gateway.stop().await;
}
