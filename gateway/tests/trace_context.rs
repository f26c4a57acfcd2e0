//! Trace context through the gateway's request span: a `traceparent` continues the caller's
//! trace, and outgoing calls send it on.

// The helpers below are test code too (clippy only exempts `#[test]` functions).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use actix_web::middleware::from_fn;
use actix_web::test::{TestRequest, call_service, init_service, read_body};
use actix_web::{App, HttpResponse, web};
use gateway::middleware::request_id;
use opentelemetry::trace::{SpanId, TraceId};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use tracing_subscriber::layer::SubscriberExt;

const CALLER_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";

/// Answers with the trace context an outgoing call made from this handler would carry.
async fn outgoing() -> HttpResponse {
    let mut headers = reqwest::header::HeaderMap::new();
    shared::trace::inject_trace_context(&mut headers);
    let traceparent = headers.get("traceparent").map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
    HttpResponse::Ok().body(traceparent)
}

fn traced_app() -> App<
    impl actix_web::dev::ServiceFactory<
        actix_web::dev::ServiceRequest,
        Config = (),
        Response = actix_web::dev::ServiceResponse<impl actix_web::body::MessageBody>,
        Error = actix_web::Error,
        InitError = (),
    >,
> {
    App::new().route("/outgoing", web::get().to(outgoing)).wrap(from_fn(request_id))
}

fn request_spans(exporter: &InMemorySpanExporter) -> Vec<SpanData> {
    exporter.get_finished_spans().unwrap().into_iter().filter(|s| s.name == "http.request").collect()
}

#[actix_web::test]
async fn a_caller_traceparent_parents_the_request_span_and_is_sent_on() {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder().with_simple_exporter(exporter.clone()).build();
    let subscriber = tracing_subscriber::registry().with(shared::telemetry::otel_layer(&provider));
    let _guard = tracing::subscriber::set_default(subscriber);
    let service = init_service(traced_app()).await;

    let request = TestRequest::get()
        .uri("/outgoing")
        .insert_header(("traceparent", format!("00-{CALLER_TRACE}-{CALLER_SPAN}-01")))
        .to_request();
    let response = call_service(&service, request).await;
    assert_eq!(response.status(), 200);
    let sent = String::from_utf8(read_body(response).await.to_vec()).unwrap();
    provider.force_flush().unwrap();

    let spans = request_spans(&exporter);
    assert_eq!(spans.len(), 1, "{spans:?}");
    let span = &spans[0];
    assert_eq!(span.span_context.trace_id(), TraceId::from_hex(CALLER_TRACE).unwrap());
    assert_eq!(span.parent_span_id, SpanId::from_hex(CALLER_SPAN).unwrap());
    assert!(span.parent_span_is_remote);

    // The outgoing call continues the same trace, with this request's span as its parent.
    let parts: Vec<&str> = sent.split('-').collect();
    assert_eq!(parts.len(), 4, "{sent:?}");
    assert_eq!(parts[0], "00");
    assert_eq!(parts[1], CALLER_TRACE);
    assert_eq!(parts[2], span.span_context.span_id().to_string());
    assert_eq!(parts[3], "01", "the caller's sampling decision is kept");
}

#[actix_web::test]
async fn without_export_nothing_is_sampled_yet_ids_still_propagate() {
    // The sampler of a process without an OTLP endpoint, with an exporter attached to observe
    // that nothing would reach it.
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_sampler(shared::telemetry::local_sampler())
        .with_simple_exporter(exporter.clone())
        .build();
    let subscriber = tracing_subscriber::registry().with(shared::telemetry::otel_layer(&provider));
    let _guard = tracing::subscriber::set_default(subscriber);
    let service = init_service(traced_app()).await;

    let response = call_service(&service, TestRequest::get().uri("/outgoing").to_request()).await;
    let sent = String::from_utf8(read_body(response).await.to_vec()).unwrap();
    let parts: Vec<&str> = sent.split('-').collect();
    assert_eq!(parts.len(), 4, "a new trace id is sent on even without export: {sent:?}");
    assert_eq!(parts[3], "00", "not sampled");
    assert_ne!(TraceId::from_hex(parts[1]).unwrap(), TraceId::INVALID);

    // A caller's unsampled trace is continued, unsampled.
    let request = TestRequest::get()
        .uri("/outgoing")
        .insert_header(("traceparent", format!("00-{CALLER_TRACE}-{CALLER_SPAN}-00")))
        .to_request();
    let sent = String::from_utf8(read_body(call_service(&service, request).await).await.to_vec()).unwrap();
    assert!(sent.starts_with(&format!("00-{CALLER_TRACE}-")) && sent.ends_with("-00"), "{sent}");

    provider.force_flush().unwrap();
    assert!(exporter.get_finished_spans().unwrap().is_empty(), "nothing is exported");
}

#[actix_web::test]
async fn a_malformed_traceparent_starts_a_new_trace() {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder().with_simple_exporter(exporter.clone()).build();
    let subscriber = tracing_subscriber::registry().with(shared::telemetry::otel_layer(&provider));
    let _guard = tracing::subscriber::set_default(subscriber);
    let service = init_service(traced_app()).await;
    let request = TestRequest::get().uri("/outgoing").insert_header(("traceparent", "00-zzzz-1234-01")).to_request();
    assert_eq!(call_service(&service, request).await.status(), 200);
    provider.force_flush().unwrap();
    let spans = request_spans(&exporter);
    assert_eq!(spans.len(), 1);
    assert_eq!(spans[0].parent_span_id, SpanId::INVALID);
    assert_ne!(spans[0].span_context.trace_id(), TraceId::INVALID);
}
