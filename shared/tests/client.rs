#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The shared remote client against a real HTTP server: what it sends, and how answers and
//! failures come back as a domain's own errors.

use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use futures_util::StreamExt;
use shared::client::{RemoteClient, RemoteConfig};
use shared::error::DomainError;
use shared::{ErrorEnvelope, ErrorKind, Secret};
use std::sync::{Arc, Mutex};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, shared::DomainError)]
enum PetError {
    #[error("No pet named `{0}`.")]
    #[api(kind = NotFound, code = "pet_not_found")]
    NotFound(String),
    #[error("Slow down for {retry_after_secs} seconds.")]
    #[api(kind = RateLimited, code = "slow_down")]
    SlowDown {
        #[api(retry_after)]
        retry_after_secs: u64,
    },
    #[error("pets unavailable: {0}")]
    #[api(kind = Unavailable, code = "service_unavailable", fallback)]
    Unavailable(String),
    #[error("internal: {0}")]
    #[api(kind = Internal, code = "internal_error", fallback)]
    Internal(String),
}

type Seen = Arc<Mutex<Vec<(Option<String>, Option<String>, Option<String>)>>>;

fn header(req: &HttpRequest, name: &str) -> Option<String> {
    req.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_owned)
}

async fn pet(req: HttpRequest, seen: web::Data<Seen>, name: web::Path<String>) -> HttpResponse {
    seen.lock().unwrap().push((
        header(&req, "x-request-id"),
        header(&req, "authorization"),
        header(&req, "x-forwarded-for"),
    ));
    match name.as_str() {
        "rex" => HttpResponse::Ok().json(serde_json::json!({"name": "rex"})),
        "busy" => HttpResponse::TooManyRequests().insert_header(("retry-after", "7")).json(ErrorEnvelope::new(
            ErrorKind::RateLimited,
            "slow_down",
            "Slow down for 7 seconds.",
            None,
        )),
        "broken" => HttpResponse::BadGateway().body("<html>proxy error</html>"),
        other => HttpResponse::NotFound().json(ErrorEnvelope::new(
            ErrorKind::NotFound,
            "pet_not_found",
            format!("No pet named `{other}`."),
            None,
        )),
    }
}

async fn events() -> HttpResponse {
    HttpResponse::Ok().content_type("text/event-stream").body("data: {\"n\":1}\n\nevent: done\ndata: {\"n\":2}\n\n")
}

async fn start() -> (String, Seen, actix_web::dev::ServerHandle) {
    let seen: Seen = Arc::default();
    let data = web::Data::new(seen.clone());
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server = HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            .route("/pets/{name}", web::get().to(pet))
            .route("/events", web::get().to(events))
    })
    .workers(1)
    .listen(listener)
    .unwrap()
    .run();
    let handle = server.handle();
    tokio::spawn(server);
    (format!("http://{addr}"), seen, handle)
}

#[tokio::test]
async fn calls_carry_the_request_id_credentials_and_client_ip_and_errors_map_back() {
    let (url, seen, handle) = start().await;
    let client = RemoteClient::new("pets", &Secret::new(url), &RemoteConfig::default()).unwrap();

    let call = client.get("/pets/rex").bearer(&Secret::new("tok")).client_ip(Some("203.0.113.5".parse().unwrap()));
    let pet: serde_json::Value = shared::request_id::scope("req-42".into(), call.fetch::<_, PetError>()).await.unwrap();
    assert_eq!(pet["name"], "rex");
    client.get("/pets/rex").execute::<PetError>().await.unwrap();
    assert_eq!(
        *seen.lock().unwrap(),
        vec![(Some("req-42".into()), Some("Bearer tok".into()), Some("203.0.113.5".into())), (None, None, None),]
    );

    let missing = client.get("/pets/tom").execute::<PetError>().await.unwrap_err();
    assert_eq!(missing, PetError::NotFound("tom".into()));
    let busy = client.get("/pets/busy").execute::<PetError>().await.unwrap_err();
    assert_eq!(busy, PetError::SlowDown { retry_after_secs: 7 });
    // A 502 without an envelope (a proxy in between) is unavailability, not a bug.
    let broken = client.get("/pets/broken").execute::<PetError>().await.unwrap_err();
    assert_eq!(broken.kind(), ErrorKind::Unavailable);

    let events: Vec<_> = client.get("/events").events::<PetError>().await.unwrap().collect().await;
    let events: Vec<_> = events.into_iter().map(Result::unwrap).collect();
    assert_eq!(events.len(), 2);
    assert_eq!(
        (events[0].event.as_str(), events[0].json::<serde_json::Value>().unwrap()["n"].clone()),
        ("message", 1.into())
    );
    assert_eq!(events[1].event, "done");

    handle.stop(false).await;
    // Nobody listens any more: unavailable, quickly, and the URL is not in the message.
    let down = client.get("/pets/rex").execute::<PetError>().await.unwrap_err();
    assert!(matches!(&down, PetError::Unavailable(m) if !m.contains("127.0.0.1")), "{down:?}");
}

#[test]
fn only_http_urls_are_accepted() {
    let error = RemoteClient::new("pets", &Secret::new("ftp://x"), &RemoteConfig::default()).unwrap_err();
    assert!(error.contains("http://"), "{error}");
}
