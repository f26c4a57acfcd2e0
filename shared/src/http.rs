//! Actix helpers every domain's routes share: domain errors as enveloped responses, JSON and
//! query extractors whose every rejection uses the envelope (with `param` when the field is
//! known), resources that answer 405 with `Allow`, bearer tokens, and the client's IP address.

use crate::error::{DomainError, ErrorEnvelope, ErrorKind};
use crate::secret::Secret;
use actix_web::dev::Payload;
use actix_web::error::PathError;
use actix_web::http::header::{self, HeaderValue};
use actix_web::http::{Method, StatusCode};
use actix_web::web::{self, Bytes, BytesMut};
use actix_web::{FromRequest, Handler, HttpMessage, HttpRequest, HttpResponse, Responder};
use futures_util::StreamExt;
use futures_util::future::LocalBoxFuture;
use serde::de::DeserializeOwned;
use std::cell::RefCell;
use std::collections::HashMap;
use std::future::{Ready, ready};
use std::net::IpAddr;
use std::rc::Rc;

/// How far the writes of one client connection have got: the number of times everything
/// actix had buffered for the connection was accepted by the socket (written into the kernel's
/// send buffer) and flushed. The gateway's connection wrapper counts, and puts one of these in
/// the connection's data (`HttpRequest::conn_data::<Arc<WriteProgress>>()`), so a streamed
/// response can tell whether what it handed to actix has actually been written.
///
/// "Written" is the most a server can know: the bytes are in the socket's send buffer, and the
/// peer's TCP stack or application may still not have read them.
#[derive(Debug, Default)]
pub struct WriteProgress {
    flushes: std::sync::atomic::AtomicU64,
    waker: futures_util::task::AtomicWaker,
}

impl WriteProgress {
    /// Completed flushes so far.
    pub fn flushes(&self) -> u64 {
        self.flushes.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Called by the connection after a flush completed: every byte written before it is in
    /// the socket. Wakes the task waiting in [`poll_flushed_after`](Self::poll_flushed_after).
    pub fn flushed(&self) {
        self.flushes.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        self.waker.wake();
    }

    /// Ready once a flush completed after `mark` (a value of [`flushes`](Self::flushes) read
    /// when something was handed to actix): everything handed over before `mark` was taken has
    /// then been written to the socket.
    pub fn poll_flushed_after(&self, mark: u64, cx: &mut std::task::Context<'_>) -> std::task::Poll<()> {
        if self.flushes() > mark {
            return std::task::Poll::Ready(());
        }
        self.waker.register(cx.waker());
        if self.flushes() > mark { std::task::Poll::Ready(()) } else { std::task::Poll::Pending }
    }
}

#[doc(hidden)]
pub mod __private {
    pub use actix_web;
}

/// Implements actix's `ResponseError` for a domain error type, through [`error_response`].
#[macro_export]
macro_rules! impl_response_error {
    ($error:ty) => {
        impl $crate::http::__private::actix_web::ResponseError for $error {
            fn status_code(&self) -> $crate::http::__private::actix_web::http::StatusCode {
                $crate::http::status_of(<$error as $crate::error::DomainError>::kind(self))
            }

            fn error_response(&self) -> $crate::http::__private::actix_web::HttpResponse {
                $crate::http::error_response(self)
            }
        }
    };
}

pub fn status_of(kind: ErrorKind) -> StatusCode {
    StatusCode::from_u16(kind.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

/// The response for a domain error. A 5xx body says nothing about its cause; the cause is
/// logged here, once: an unavailable dependency as a warning, anything else as an error.
pub fn error_response<E: DomainError>(error: &E) -> HttpResponse {
    let kind = error.kind();
    match kind {
        ErrorKind::Unavailable => {
            tracing::warn!(error.code = error.code(), error.cause = %error, "dependency unavailable")
        }
        _ if kind.is_server_error() => {
            tracing::error!(error.code = error.code(), error.cause = %error, "request failed")
        }
        _ => {}
    }
    let mut response = envelope_response_of(kind, error.envelope());
    if let Some(secs) = error.retry_after() {
        response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    if kind == ErrorKind::Unauthenticated {
        response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
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
    envelope_response_of(kind, ErrorEnvelope::new(kind, code, message, param))
}

fn envelope_response_of(kind: ErrorKind, envelope: ErrorEnvelope) -> HttpResponse {
    let mut response = HttpResponse::build(status_of(kind)).json(envelope);
    if kind == ErrorKind::Unavailable {
        response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(crate::error::DEFAULT_RETRY_AFTER_SECS));
    }
    response
}

/// A request rejected before it reached a handler (bad body, bad query string, ...).
#[derive(Debug)]
pub struct Rejection {
    kind: ErrorKind,
    code: &'static str,
    message: String,
    param: Option<String>,
}

impl Rejection {
    pub fn new(kind: ErrorKind, code: &'static str, message: impl Into<String>, param: Option<String>) -> Self {
        Self { kind, code, message: message.into(), param }
    }
}

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl actix_web::ResponseError for Rejection {
    fn status_code(&self) -> StatusCode {
        status_of(self.kind)
    }

    fn error_response(&self) -> HttpResponse {
        envelope_response(self.kind, self.code, self.message.clone(), self.param.clone())
    }
}

/// The largest request body accepted, in bytes; registered as app data by the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyLimit(pub usize);

impl Default for BodyLimit {
    fn default() -> Self {
        Self(64 * 1024)
    }
}

/// A JSON request body. Unlike actix's `web::Json`, a body that does not fit the type names the
/// offending field in the envelope's `param` (`invalid_body`), and every rejection is enveloped:
/// 400 `invalid_json`, 413 `payload_too_large`, 415 `unsupported_media_type`, 422 `invalid_body`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Json<T>(pub T);

impl<T> Json<T> {
    pub fn into_inner(self) -> T {
        self.0
    }
}

impl<T: DeserializeOwned + 'static> FromRequest for Json<T> {
    type Error = Rejection;
    type Future = LocalBoxFuture<'static, Result<Self, Rejection>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let limit = req.app_data::<web::Data<BodyLimit>>().map_or_else(BodyLimit::default, |l| *l.get_ref());
        let json = is_json(req);
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok());
        let payload = payload.take();
        Box::pin(async move {
            if !json {
                return Err(Rejection::new(
                    ErrorKind::UnsupportedMediaType,
                    "unsupported_media_type",
                    "The request body must be JSON (Content-Type: application/json).",
                    None,
                ));
            }
            if declared.is_some_and(|n| n > limit.0) {
                return Err(too_large());
            }
            let body = read_body(payload, limit.0).await?;
            parse_json(&body).map(Json)
        })
    }
}

fn too_large() -> Rejection {
    Rejection::new(ErrorKind::PayloadTooLarge, "payload_too_large", "The request body is too large.", None)
}

fn is_json(req: &HttpRequest) -> bool {
    let Some(value) = req.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let essence = value.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
    essence == "application/json" || (essence.starts_with("application/") && essence.ends_with("+json"))
}

async fn read_body(mut payload: Payload, limit: usize) -> Result<Bytes, Rejection> {
    let mut body = BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|_| {
            Rejection::new(ErrorKind::InvalidRequest, "invalid_body", "The request body could not be read.", None)
        })?;
        if body.len() + chunk.len() > limit {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

/// Parses a JSON body into `T`, naming the failing field.
pub fn parse_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, Rejection> {
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    let value = serde_path_to_error::deserialize(&mut deserializer).map_err(|error| {
        let param = field_of(error.path(), &error.inner().to_string());
        json_rejection(error.into_inner(), param)
    })?;
    deserializer.end().map_err(|e| json_rejection(e, None))?;
    Ok(value)
}

fn json_rejection(error: serde_json::Error, param: Option<String>) -> Rejection {
    if error.is_data() {
        Rejection::new(ErrorKind::Unprocessable, "invalid_body", format!("Invalid request body: {error}"), param)
    } else {
        Rejection::new(ErrorKind::InvalidRequest, "invalid_json", format!("Malformed JSON: {error}"), None)
    }
}

/// The field a deserialization error is about: the path to it, or for a missing field (which
/// serde reports at its parent) the parent's path joined with the field's name.
fn field_of(path: &serde_path_to_error::Path, message: &str) -> Option<String> {
    let at = path.to_string();
    let at = if at == "." { None } else { Some(at) };
    let missing = message.strip_prefix("missing field `").and_then(|rest| rest.split('`').next()).map(str::to_owned);
    match (at, missing) {
        (Some(at), Some(field)) => Some(format!("{at}.{field}")),
        (None, Some(field)) => Some(field),
        (at, None) => at,
    }
}

/// A query string. Every rejection is a 400 `invalid_query` naming the parameter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query<T>(pub T);

impl<T> Query<T> {
    pub fn into_inner(self) -> T {
        self.0
    }
}

impl<T: DeserializeOwned> FromRequest for Query<T> {
    type Error = Rejection;
    type Future = Ready<Result<Self, Rejection>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(parse_query(req.query_string()).map(Query))
    }
}

/// Parses a query string into `T`, naming the failing parameter.
pub fn parse_query<T: DeserializeOwned>(query: &str) -> Result<T, Rejection> {
    let deserializer = serde_urlencoded::Deserializer::new(form_urlencoded::parse(query.as_bytes()));
    serde_path_to_error::deserialize(deserializer).map_err(|error| {
        let param = field_of(error.path(), &error.inner().to_string());
        let message = match &param {
            Some(name) => format!("Invalid query parameter `{name}`: {}", error.inner()),
            None => format!("Invalid query string: {}", error.inner()),
        };
        Rejection::new(ErrorKind::InvalidRequest, "invalid_query", message, param)
    })
}

/// Path segments that do not parse (an id of the wrong shape) name nothing: 404.
pub fn path_config() -> web::PathConfig {
    web::PathConfig::default().error_handler(|_err: PathError, _req| {
        Rejection::new(ErrorKind::NotFound, "not_found", "No such resource.", None).into()
    })
}

/// The answer for a route that does not exist.
pub async fn not_found() -> HttpResponse {
    envelope_response(ErrorKind::NotFound, "not_found", "No such route.", None)
}

/// The route template a request matched (`/v1/organizations/{org_id}/members`), `None` when no
/// route did. Before routing, actix finds it by walking the routes in order, with a regular
/// expression per dynamic one; the middlewares that label or classify requests by route share
/// one walk through the request's extensions, and an application that has [`StaticRoutes`] as
/// app data skips the walk for its static routes.
pub fn route_template(req: &actix_web::dev::ServiceRequest) -> Option<Rc<str>> {
    #[derive(Clone)]
    struct RouteTemplate(Option<Rc<str>>);
    if let Some(found) = req.extensions().get::<RouteTemplate>() {
        return found.0.clone();
    }
    let known = req.app_data::<StaticRoutes>();
    let template = known.and_then(|k| k.get(req.path())).or_else(|| {
        let template: Rc<str> = req.match_pattern()?.into();
        if let Some(known) = known {
            known.learn(req.path(), &template);
        }
        Some(template)
    });
    req.extensions_mut().insert(RouteTemplate(template.clone()));
    template
}

/// The paths that are a static route's template (`/v1/chat/completions`), with that template:
/// app data of one application instance (one per worker), for [`route_template`]. With every
/// domain's routes registered, the walk cost up to 5 % of a chat call's CPU.
///
/// Only a path that is itself the template it matched is kept, so the map is bounded by the
/// number of static routes whatever paths clients send, and it never goes stale: the same
/// application always matches a path the same way.
#[derive(Debug, Default)]
pub struct StaticRoutes(RefCell<HashMap<Box<str>, Rc<str>>>);

impl StaticRoutes {
    fn get(&self, path: &str) -> Option<Rc<str>> {
        self.0.borrow().get(path).cloned()
    }

    fn learn(&self, path: &str, template: &Rc<str>) {
        if **template == *path {
            self.0.borrow_mut().insert(path.into(), template.clone());
        }
    }
}

/// One path with one handler per method. Any other method gets 405 `method_not_allowed` with
/// an `Allow` header listing the methods the path has.
#[must_use = "call `register`"]
pub struct Resource {
    resource: actix_web::Resource,
    allow: Vec<Method>,
}

impl std::fmt::Debug for Resource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resource").field("allow", &self.allow).finish_non_exhaustive()
    }
}

macro_rules! method {
    ($name:ident, $method:ident) => {
        pub fn $name<F, Args>(self, handler: F) -> Self
        where
            F: Handler<Args>,
            Args: FromRequest + 'static,
            F::Output: Responder + 'static,
        {
            self.route(Method::$method, handler)
        }
    };
}

impl Resource {
    pub fn new(path: &str) -> Self {
        Self { resource: web::resource(path), allow: Vec::new() }
    }

    fn route<F, Args>(mut self, method: Method, handler: F) -> Self
    where
        F: Handler<Args>,
        Args: FromRequest + 'static,
        F::Output: Responder + 'static,
    {
        self.resource = self.resource.route(web::method(method.clone()).to(handler));
        self.allow.push(method);
        self
    }

    method!(get, GET);
    method!(post, POST);
    method!(put, PUT);
    method!(patch, PATCH);
    method!(delete, DELETE);

    pub fn register(self, cfg: &mut web::ServiceConfig) {
        let allow = self.allow.iter().map(Method::as_str).collect::<Vec<_>>().join(", ");
        cfg.service(self.resource.default_service(web::to(move || {
            let allow = allow.clone();
            async move {
                let mut response = envelope_response(
                    ErrorKind::MethodNotAllowed,
                    "method_not_allowed",
                    format!("This route accepts {allow}."),
                    None,
                );
                if let Ok(value) = HeaderValue::from_str(&allow) {
                    response.headers_mut().insert(header::ALLOW, value);
                }
                response
            }
        })));
    }
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
    use serde::Deserialize;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[actix_web::test]
    async fn static_routes_are_remembered_and_nothing_else() {
        use actix_web::middleware::{Next, from_fn};
        use actix_web::test::{call_service, init_service};

        // Answers with the template the middleware saw and how many paths are remembered.
        async fn show(
            req: actix_web::dev::ServiceRequest,
            next: Next<impl actix_web::body::MessageBody + 'static>,
        ) -> Result<actix_web::dev::ServiceResponse<impl actix_web::body::MessageBody>, actix_web::Error> {
            let known = req.app_data::<StaticRoutes>().map_or(0, |k| k.0.borrow().len());
            let template = route_template(&req).map_or("unmatched".to_owned(), |t| t.to_string());
            let mut response = next.call(req).await?;
            let headers = response.headers_mut();
            headers.insert(header::HeaderName::from_static("x-template"), template.parse().unwrap());
            headers.insert(header::HeaderName::from_static("x-known"), known.to_string().parse().unwrap());
            Ok(response)
        }
        let ok = || async { HttpResponse::Ok().finish() };
        let app = actix_web::App::new()
            .app_data(StaticRoutes::default())
            // A dynamic route registered first shadows the static one below it.
            .route("/v1/items/{id}", web::get().to(ok))
            .route("/v1/items/new", web::get().to(ok))
            .route("/v1/static", web::get().to(ok))
            .wrap(from_fn(show));
        let service = init_service(app).await;
        let get = |uri: &'static str| {
            let service = &service;
            async move {
                let response = call_service(service, TestRequest::get().uri(uri).to_request()).await;
                let header = |name: &str| response.headers().get(name).unwrap().to_str().unwrap().to_owned();
                (header("x-template"), header("x-known"))
            }
        };
        // Each answer: the template, and what was remembered before this request.
        assert_eq!(get("/v1/static").await, ("/v1/static".to_owned(), "0".to_owned()));
        assert_eq!(get("/v1/static").await, ("/v1/static".to_owned(), "1".to_owned()));
        assert_eq!(get("/v1/items/new").await, ("/v1/items/{id}".to_owned(), "1".to_owned()));
        assert_eq!(get("/v1/items/new").await, ("/v1/items/{id}".to_owned(), "1".to_owned()));
        assert_eq!(get("/v1/items/item_1").await, ("/v1/items/{id}".to_owned(), "1".to_owned()));
        assert_eq!(get("/no/such/route").await, ("unmatched".to_owned(), "1".to_owned()));
        assert_eq!(get("/no/such/route").await, ("unmatched".to_owned(), "1".to_owned()));
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

    #[derive(Debug, Deserialize)]
    #[allow(dead_code)]
    struct Body {
        email: String,
        inner: Inner,
    }

    #[derive(Debug, Deserialize)]
    #[allow(dead_code)]
    struct Inner {
        count: u32,
        tags: Vec<String>,
    }

    fn rejection(body: &str) -> (u16, &'static str, Option<String>) {
        let r = parse_json::<Body>(body.as_bytes()).unwrap_err();
        (r.kind.status(), r.code, r.param)
    }

    #[test]
    fn json_rejections_name_the_field() {
        assert_eq!(rejection(r#"{"inner": {"count": 1, "tags": []}}"#), (422, "invalid_body", Some("email".into())));
        assert_eq!(rejection(r#"{"email": 7, "inner": {}}"#), (422, "invalid_body", Some("email".into())));
        assert_eq!(
            rejection(r#"{"email": "a", "inner": {"tags": []}}"#),
            (422, "invalid_body", Some("inner.count".into()))
        );
        assert_eq!(
            rejection(r#"{"email": "a", "inner": {"count": 1, "tags": [3]}}"#),
            (422, "invalid_body", Some("inner.tags[0]".into()))
        );
        assert_eq!(rejection(r#"{"email": "a""#), (400, "invalid_json", None));
        assert_eq!(
            rejection(r#"{"email": "a", "inner": {"count": 1, "tags": []}} trailing"#),
            (400, "invalid_json", None)
        );
        assert_eq!(rejection("[]"), (422, "invalid_body", None));
    }

    #[derive(Debug, Deserialize)]
    #[allow(dead_code)]
    struct Page {
        limit: Option<u32>,
        after: Option<String>,
    }

    #[test]
    fn query_rejections_name_the_parameter_in_keels_words() {
        let r = parse_query::<Page>("limit=-1").unwrap_err();
        assert_eq!((r.kind.status(), r.code, r.param.as_deref()), (400, "invalid_query", Some("limit")));
        assert!(r.message.starts_with("Invalid query parameter `limit`: "), "{}", r.message);
        assert!(!r.message.contains("Query deserialize error"), "{}", r.message);
        assert!(parse_query::<Page>("limit=5&after=x").is_ok());
    }
}
