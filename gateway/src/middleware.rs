//! Request ids and the per-request span.
//!
//! Every request runs inside an `http.request` span carrying its method, route, path and id, and
//! ends with one `request completed` line with the status and `duration_ms`. Headers, query
//! strings and bodies are never logged: they carry tokens and passwords.

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::middleware::Next;
use std::time::Instant;
use tracing::Instrument;

/// The request and response header carrying the request id.
pub const REQUEST_ID_HEADER: HeaderName = HeaderName::from_static(shared::request_id::HEADER);

/// The longest request id taken from a client; a longer one is replaced.
pub const MAX_REQUEST_ID_LEN: usize = 128;

/// The caller's request id when it is sane (1 to 128 visible ASCII characters), otherwise a new
/// UUIDv7.
pub fn request_id_from(value: Option<&HeaderValue>) -> String {
    value
        .map(HeaderValue::as_bytes)
        .filter(|bytes| {
            !bytes.is_empty() && bytes.len() <= MAX_REQUEST_ID_LEN && bytes.iter().all(u8::is_ascii_graphic)
        })
        .and_then(|bytes| std::str::from_utf8(bytes).ok())
        .map_or_else(|| uuid::Uuid::now_v7().to_string(), str::to_owned)
}

/// The middleware: use with `App::wrap(actix_web::middleware::from_fn(request_id))`.
pub async fn request_id(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let started = Instant::now();
    let id = request_id_from(req.headers().get(REQUEST_ID_HEADER));
    let span = tracing::info_span!(
        "http.request",
        http.method = %req.method(),
        http.route = shared::http::route_template(&req).as_deref().unwrap_or("unmatched"),
        url.path = req.path(),
        request.id = %id,
    );
    // A caller's `traceparent` makes this request part of its trace.
    shared::trace::set_remote_parent(&span, req.headers());

    // The id also travels with the task, for calls to remote domain services.
    let result = shared::request_id::scope(id.clone(), next.call(req).instrument(span.clone())).await;
    let duration_ms = started.elapsed().as_secs_f64() * 1000.0;
    match result {
        Ok(mut response) => {
            if let Ok(value) = HeaderValue::from_str(&id) {
                response.headers_mut().insert(REQUEST_ID_HEADER, value);
            }
            let status = response.status().as_u16();
            span.in_scope(|| tracing::info!(http.status_code = status, duration_ms, "request completed"));
            Ok(response)
        }
        // Handlers and extractors turn their errors into responses before this point; an error
        // here comes from the framework itself, and actix answers it without the request.
        Err(error) => {
            let status = error.as_response_error().status_code().as_u16();
            span.in_scope(|| tracing::warn!(http.status_code = status, duration_ms, "request failed"));
            Err(error)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from(raw: &str) -> String {
        request_id_from(Some(&HeaderValue::from_str(raw).unwrap()))
    }

    fn is_uuid_v7(id: &str) -> bool {
        uuid::Uuid::parse_str(id).is_ok_and(|u| u.get_version_num() == 7)
    }

    #[test]
    fn sane_ids_are_kept() {
        assert_eq!(from("abc-123_XYZ:/.="), "abc-123_XYZ:/.=");
        let longest = "a".repeat(MAX_REQUEST_ID_LEN);
        assert_eq!(from(&longest), longest);
    }

    #[test]
    fn missing_empty_long_or_odd_ids_are_replaced_by_a_uuid_v7() {
        assert!(is_uuid_v7(&request_id_from(None)));
        assert!(is_uuid_v7(&from("")));
        assert!(is_uuid_v7(&from(&"a".repeat(MAX_REQUEST_ID_LEN + 1))));
        assert!(is_uuid_v7(&from("has space")));
        assert!(is_uuid_v7(&request_id_from(Some(&HeaderValue::from_bytes(b"caf\xc3\xa9").unwrap()))));
        assert_ne!(request_id_from(None), request_id_from(None));
    }
}
