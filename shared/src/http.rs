//! Actix helpers every domain's routes share: the error envelope as a response, extractor
//! configs whose errors use that envelope, bearer tokens, and the client's IP address.

use crate::error::{ErrorEnvelope, ErrorKind};
use crate::secret::Secret;
use actix_web::dev::Payload;
use actix_web::error::{JsonPayloadError, PathError, QueryPayloadError};
use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{FromRequest, HttpRequest, HttpResponse, web};
use std::future::{Ready, ready};
use std::net::IpAddr;

/// A domain error as the HTTP layer sees it.
pub trait ApiError: std::error::Error {
    fn kind(&self) -> ErrorKind;
    /// The stable, machine-readable code of the envelope.
    fn code(&self) -> &'static str;
    /// The request field the error is about.
    fn param(&self) -> Option<String> {
        None
    }
    /// Seconds until a retry may succeed, sent as `Retry-After`.
    fn retry_after_secs(&self) -> Option<u64> {
        None
    }
}

/// The response for a domain error. A 5xx body says nothing about its cause; the cause is
/// logged here, once.
pub fn error_response<E: ApiError>(error: &E) -> HttpResponse {
    let kind = error.kind();
    let message = if kind.is_server_error() {
        tracing::error!(error.code = error.code(), error.cause = %error, "request failed");
        match kind {
            ErrorKind::Unavailable => "The service is temporarily unavailable; retry later.".to_owned(),
            _ => "The server failed to handle the request.".to_owned(),
        }
    } else {
        error.to_string()
    };
    let mut response = envelope_response(kind, error.code(), message, error.param());
    if let Some(secs) = error.retry_after_secs()
        && let Ok(value) = HeaderValue::from_str(&secs.to_string())
    {
        response.headers_mut().insert(header::RETRY_AFTER, value);
    }
    response
}

/// A response with the error envelope.
pub fn envelope_response(
    kind: ErrorKind,
    code: &str,
    message: impl Into<String>,
    param: Option<String>,
) -> HttpResponse {
    let status = StatusCode::from_u16(kind.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    HttpResponse::build(status).json(ErrorEnvelope::new(kind, code, message, param))
}

fn to_actix_error(response: HttpResponse) -> actix_web::Error {
    actix_web::error::InternalError::from_response("request rejected", response).into()
}

/// JSON bodies up to `limit` bytes; every rejection in the error envelope.
pub fn json_config(limit: usize) -> web::JsonConfig {
    web::JsonConfig::default().limit(limit).error_handler(|err, _req| {
        let response = match &err {
            JsonPayloadError::OverflowKnownLength { .. } | JsonPayloadError::Overflow { .. } => envelope_response(
                ErrorKind::PayloadTooLarge,
                "payload_too_large",
                "The request body is too large.",
                None,
            ),
            JsonPayloadError::ContentType => envelope_response(
                ErrorKind::UnsupportedMediaType,
                "unsupported_media_type",
                "The request body must be JSON (Content-Type: application/json).",
                None,
            ),
            JsonPayloadError::Deserialize(e) if e.is_data() => {
                envelope_response(ErrorKind::Unprocessable, "invalid_body", format!("Invalid request body: {e}"), None)
            }
            JsonPayloadError::Deserialize(e) => {
                envelope_response(ErrorKind::InvalidRequest, "invalid_json", format!("Malformed JSON: {e}"), None)
            }
            _ => envelope_response(
                ErrorKind::InvalidRequest,
                "invalid_body",
                "The request body could not be read.",
                None,
            ),
        };
        to_actix_error(response)
    })
}

/// Raw payload limit for non-JSON bodies.
pub fn payload_config(limit: usize) -> web::PayloadConfig {
    web::PayloadConfig::default().limit(limit)
}

/// Path segments that do not parse (an id of the wrong shape) name nothing: 404.
pub fn path_config() -> web::PathConfig {
    web::PathConfig::default().error_handler(|_err: PathError, _req| {
        to_actix_error(envelope_response(ErrorKind::NotFound, "not_found", "No such resource.", None))
    })
}

pub fn query_config() -> web::QueryConfig {
    web::QueryConfig::default().error_handler(|err: QueryPayloadError, _req| {
        to_actix_error(envelope_response(
            ErrorKind::InvalidRequest,
            "invalid_query",
            format!("Invalid query string: {err}"),
            None,
        ))
    })
}

/// The answer for a route that does not exist.
pub async fn not_found() -> HttpResponse {
    envelope_response(ErrorKind::NotFound, "not_found", "No such route.", None)
}

/// The `Authorization: Bearer …` token of a request, if any.
pub fn bearer_token(req: &HttpRequest) -> Option<Secret> {
    let value = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then(|| Secret::new(token))
}

/// The proxies whose `X-Forwarded-For` is believed; registered as app data by the gateway.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies(pub Vec<ipnet::IpNet>);

impl TrustedProxies {
    fn contains(&self, ip: &IpAddr) -> bool {
        self.0.iter().any(|net| net.contains(ip))
    }

    /// The client address: the socket peer, unless the peer is a trusted proxy, in which case the
    /// right-most `X-Forwarded-For` entry that is not itself a trusted proxy.
    pub fn client_ip(&self, peer: Option<IpAddr>, forwarded_for: Option<&str>) -> Option<IpAddr> {
        let peer = peer?;
        if !self.contains(&peer) {
            return Some(peer);
        }
        let mut client = peer;
        for hop in forwarded_for.unwrap_or_default().rsplit(',') {
            match hop.trim().parse::<IpAddr>() {
                Ok(ip) => {
                    client = ip;
                    if !self.contains(&ip) {
                        break;
                    }
                }
                // A hop we cannot read ends what we can vouch for.
                Err(_) => break,
            }
        }
        Some(client)
    }
}

/// The client's IP address, as far as the gateway can tell (see [`TrustedProxies`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientIp(pub Option<IpAddr>);

impl FromRequest for ClientIp {
    type Error = actix_web::Error;
    type Future = Ready<Result<Self, Self::Error>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let peer = req.peer_addr().map(|a| a.ip());
        let forwarded = req.headers().get("x-forwarded-for").and_then(|v| v.to_str().ok());
        let ip = match req.app_data::<web::Data<TrustedProxies>>() {
            Some(trusted) => trusted.client_ip(peer, forwarded),
            None => peer,
        };
        ready(Ok(ClientIp(ip)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::test::TestRequest;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn untrusted_peer_is_the_client_whatever_the_header_says() {
        let trusted = TrustedProxies(vec!["10.0.0.0/8".parse().unwrap()]);
        assert_eq!(trusted.client_ip(Some(ip("203.0.113.9")), Some("1.2.3.4")), Some(ip("203.0.113.9")));
    }

    #[test]
    fn trusted_proxy_chain_yields_the_first_untrusted_hop_from_the_right() {
        let trusted = TrustedProxies(vec!["10.0.0.0/8".parse().unwrap()]);
        let got = trusted.client_ip(Some(ip("10.0.0.2")), Some("6.6.6.6, 198.51.100.7, 10.0.0.5"));
        assert_eq!(got, Some(ip("198.51.100.7")));
        assert_eq!(trusted.client_ip(Some(ip("10.0.0.2")), None), Some(ip("10.0.0.2")));
        assert_eq!(trusted.client_ip(Some(ip("10.0.0.2")), Some("garbage")), Some(ip("10.0.0.2")));
    }

    #[test]
    fn bearer_token_parsing() {
        let req = TestRequest::default().insert_header(("Authorization", "Bearer abc")).to_http_request();
        assert_eq!(bearer_token(&req).unwrap().expose(), "abc");
        let req = TestRequest::default().insert_header(("Authorization", "bearer  abc ")).to_http_request();
        assert_eq!(bearer_token(&req).unwrap().expose(), "abc");
        let req = TestRequest::default().insert_header(("Authorization", "Basic abc")).to_http_request();
        assert!(bearer_token(&req).is_none());
        let req = TestRequest::default().insert_header(("Authorization", "Bearer ")).to_http_request();
        assert!(bearer_token(&req).is_none());
        assert!(bearer_token(&TestRequest::default().to_http_request()).is_none());
    }
}
