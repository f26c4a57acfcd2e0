#![allow(clippy::unwrap_used, clippy::expect_used)]
//! `HttpAuthClient` details that the contract suite cannot see: what it sends on the wire.

use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use auth::{AuthApi, HttpAuthClient};
use std::sync::{Arc, Mutex};

type Seen = Arc<Mutex<Vec<Option<String>>>>;

async fn record(req: HttpRequest, seen: web::Data<Seen>) -> HttpResponse {
    let id = req.headers().get("x-request-id").and_then(|v| v.to_str().ok()).map(str::to_owned);
    seen.lock().unwrap().push(id);
    HttpResponse::Ok().json(serde_json::json!({"status": "ok"}))
}

#[tokio::test]
async fn the_current_request_id_travels_to_the_remote_service() {
    let seen: Seen = Arc::default();
    let data = web::Data::new(seen.clone());
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server = HttpServer::new(move || App::new().app_data(data.clone()).route("/readyz", web::get().to(record)))
        .workers(1)
        .listen(listener)
        .unwrap()
        .run();
    let handle = server.handle();
    tokio::spawn(server);

    let client = HttpAuthClient::new(&format!("http://{addr}")).unwrap();
    shared::request_id::scope("req-42".into(), client.ready()).await.unwrap();
    client.ready().await.unwrap();
    handle.stop(false).await;

    assert_eq!(*seen.lock().unwrap(), vec![Some("req-42".to_owned()), None]);
}
