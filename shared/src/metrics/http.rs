//! HTTP metrics: an actix middleware recording `keel_http_requests_total` and
//! `keel_http_request_duration_seconds` by method, route template and status, and the
//! `/metrics` handler.

use super::{Format, HistogramFamily, LATENCY_BUCKETS, Metrics, histogram_family};
use actix_web::body::MessageBody;
use actix_web::dev::{Service, ServiceRequest, ServiceResponse, Transform, forward_ready};
use actix_web::http::{Method, header};
use actix_web::{HttpRequest, HttpResponse, web};
use futures_util::future::{LocalBoxFuture, Ready, ready};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::rc::Rc;
use std::time::{Duration, Instant};

/// The route label of a request that matched no route (the 404 fallback).
pub const UNMATCHED: &str = "unmatched";

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct HttpLabels {
    method: &'static str,
    route: String,
    status: u16,
}

/// `keel_http_requests_total` and `keel_http_request_duration_seconds`.
#[derive(Debug, Clone)]
pub struct HttpMetrics {
    requests: Family<HttpLabels, Counter>,
    duration: HistogramFamily<HttpLabels>,
}

impl HttpMetrics {
    pub(super) fn register(registry: &mut Registry) -> Self {
        let requests = Family::default();
        let duration = histogram_family(|| Histogram::new(LATENCY_BUCKETS.iter().copied()));
        registry.register(
            "keel_http_requests",
            "HTTP requests answered, by method, route template and status",
            requests.clone(),
        );
        registry.register(
            "keel_http_request_duration_seconds",
            "Time from receiving an HTTP request to its response head, by method, route template and status",
            duration.clone(),
        );
        Self { requests, duration }
    }

    /// Records one answered request. `route` is the matched route template
    /// (`HttpRequest::match_pattern`), `None` when no route matched: never the raw path, whose
    /// values are unbounded.
    pub fn record(&self, method: &Method, route: Option<String>, status: u16, elapsed: Duration) {
        self.record_labelled(method_label(method), route.as_deref(), status, elapsed);
    }

    fn record_labelled(&self, method: &'static str, route: Option<&str>, status: u16, elapsed: Duration) {
        let labels = HttpLabels { method, route: route.unwrap_or(UNMATCHED).to_owned(), status };
        self.requests.get_or_create(&labels).inc();
        self.duration.get_or_create(&labels).observe(elapsed.as_secs_f64());
    }

    /// The middleware: `App::wrap(metrics.http().middleware())`.
    pub fn middleware(&self) -> RecordHttpMetrics {
        RecordHttpMetrics { metrics: self.clone() }
    }
}

/// The standard methods by name; any other (an extension method a client made up) is `other`,
/// so that clients cannot grow the label set.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "other",
    }
}

/// The actix middleware factory returned by [`HttpMetrics::middleware`].
#[derive(Debug, Clone)]
pub struct RecordHttpMetrics {
    metrics: HttpMetrics,
}

impl<S, B> Transform<S, ServiceRequest> for RecordHttpMetrics
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error> + 'static,
    B: MessageBody + 'static,
{
    type Response = ServiceResponse<B>;
    type Error = actix_web::Error;
    type Transform = RecordHttpMetricsService<S>;
    type InitError = ();
    type Future = Ready<Result<Self::Transform, Self::InitError>>;

    fn new_transform(&self, service: S) -> Self::Future {
        ready(Ok(RecordHttpMetricsService { service: Rc::new(service), metrics: Rc::new(self.metrics.clone()) }))
    }
}

/// The per-worker service of [`RecordHttpMetrics`].
#[derive(Debug)]
pub struct RecordHttpMetricsService<S> {
    service: Rc<S>,
    metrics: Rc<HttpMetrics>,
}

impl<S, B> Service<ServiceRequest> for RecordHttpMetricsService<S>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error> + 'static,
    B: MessageBody + 'static,
{
    type Response = ServiceResponse<B>;
    type Error = actix_web::Error;
    type Future = LocalBoxFuture<'static, Result<ServiceResponse<B>, actix_web::Error>>;

    forward_ready!(service);

    fn call(&self, req: ServiceRequest) -> Self::Future {
        let started = Instant::now();
        let method = method_label(req.method());
        let route = crate::http::route_template(&req);
        let metrics = self.metrics.clone();
        let response = self.service.call(req);
        Box::pin(async move {
            let result = response.await;
            let status = match &result {
                Ok(response) => response.status().as_u16(),
                // An error that reaches this point is turned into a response by actix itself.
                Err(error) => error.as_response_error().status_code().as_u16(),
            };
            metrics.record_labelled(method, route.as_deref(), status, started.elapsed());
            result
        })
    }
}

/// `GET /metrics`: every metric in the Prometheus text format, or OpenMetrics when the scraper
/// asks for it. Needs `web::Data<Metrics>` in the app.
pub async fn metrics_endpoint(req: HttpRequest, metrics: web::Data<Metrics>) -> HttpResponse {
    let format = Format::from_accept(req.headers().get(header::ACCEPT).and_then(|v| v.to_str().ok()));
    match metrics.encode(format) {
        Ok(body) => HttpResponse::Ok().content_type(format.content_type()).body(body),
        Err(error) => {
            tracing::error!(error = %error, "cannot encode the metrics");
            HttpResponse::InternalServerError().finish()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::BuildInfo;
    use actix_web::test::{TestRequest, call_service, init_service, read_body};
    use actix_web::{App, HttpResponse, web};

    fn metrics() -> Metrics {
        Metrics::new(&BuildInfo { version: "0.0.0".into(), commit: "unknown".into() })
    }

    #[actix_web::test]
    async fn the_middleware_records_the_route_template_and_the_status() {
        let metrics = metrics();
        let app = App::new()
            .app_data(web::Data::new(metrics.clone()))
            .route("/metrics", web::get().to(metrics_endpoint))
            .route("/v1/orgs/{org_id}/members", web::get().to(|| async { HttpResponse::Ok().finish() }))
            .route("/v1/orgs/{org_id}/members", web::post().to(|| async { HttpResponse::Conflict().finish() }))
            .default_service(web::to(|| async { HttpResponse::NotFound().finish() }))
            .wrap(metrics.http().middleware());
        let service = init_service(app).await;

        for uri in ["/v1/orgs/org_1/members", "/v1/orgs/org_2/members"] {
            let response = call_service(&service, TestRequest::get().uri(uri).to_request()).await;
            assert_eq!(response.status(), 200);
        }
        let response = call_service(&service, TestRequest::post().uri("/v1/orgs/org_1/members").to_request()).await;
        assert_eq!(response.status(), 409);
        let response = call_service(&service, TestRequest::get().uri("/secret/path/abc").to_request()).await;
        assert_eq!(response.status(), 404);
        let odd = Method::from_bytes(b"BREW").unwrap();
        call_service(&service, TestRequest::default().method(odd).uri("/v1/orgs/org_1/members").to_request()).await;

        let response = call_service(&service, TestRequest::get().uri("/metrics").to_request()).await;
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers().get("content-type").unwrap(), "text/plain; version=0.0.4; charset=utf-8");
        let text = String::from_utf8(read_body(response).await.to_vec()).unwrap();
        let has = |line: &str| assert!(text.contains(line), "{line:?} missing from\n{text}");
        has(r#"keel_http_requests_total{method="GET",route="/v1/orgs/{org_id}/members",status="200"} 2"#);
        has(r#"keel_http_requests_total{method="POST",route="/v1/orgs/{org_id}/members",status="409"} 1"#);
        has(r#"keel_http_requests_total{method="GET",route="unmatched",status="404"} 1"#);
        has(
            r#"keel_http_request_duration_seconds_count{method="GET",route="/v1/orgs/{org_id}/members",status="200"} 2"#,
        );
        has(r#"method="other""#);
        assert!(!text.contains("org_1") && !text.contains("/secret/path"), "raw paths must not become labels:\n{text}");
    }

    #[actix_web::test]
    async fn metrics_answers_openmetrics_when_asked() {
        let metrics = metrics();
        let app =
            App::new().app_data(web::Data::new(metrics.clone())).route("/metrics", web::get().to(metrics_endpoint));
        let service = init_service(app).await;
        let request = TestRequest::get()
            .uri("/metrics")
            .insert_header(("accept", "application/openmetrics-text;version=1.0.0,text/plain;q=0.5"))
            .to_request();
        let response = call_service(&service, request).await;
        assert_eq!(
            response.headers().get("content-type").unwrap(),
            "application/openmetrics-text; version=1.0.0; charset=utf-8"
        );
        let body = String::from_utf8(read_body(response).await.to_vec()).unwrap();
        assert!(body.ends_with("# EOF\n"), "{body}");
    }
}
