//! One trace across two gateways: a front gateway whose auth domain is remote continues the
//! caller's trace and sends it on to the auth gateway, whose request span joins it.
//!
//! Its own test binary: the servers' workers run on their own threads, so the subscriber with
//! the in-memory exporter is the process-wide default.

// The helpers below are test code too (clippy only exempts `#[test]` functions).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use gateway::{GatewayConfig, start};
use opentelemetry::trace::{SpanId, TraceId};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

const CALLER_TRACE: &str = "0af7651916cd43dd8448eb211c80319c";
const CALLER_SPAN: &str = "b7ad6b7169203331";

fn config(dir: &std::path::Path) -> GatewayConfig {
    let mut config = GatewayConfig::default();
    config.http.addr = "127.0.0.1:0".into();
    config.database.url = format!("sqlite://{}", dir.display()).into();
    config
}

#[tokio::test]
async fn a_request_through_a_remote_auth_service_is_one_trace() {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder().with_simple_exporter(exporter.clone()).build();
    tracing_subscriber::registry().with(shared::telemetry::otel_layer(&provider)).init();

    let dir = tempfile::tempdir().unwrap();
    let auth = start(config(dir.path()), Some(vec!["auth".to_owned()])).await.unwrap();
    let mut front_config = config(dir.path());
    front_config.auth.url = Some(auth.url().into());
    let front = start(front_config, None).await.unwrap();

    let response = reqwest::Client::new()
        .get(format!("{}/v1/auth/me", front.url()))
        .bearer_auth("sk-not-a-key")
        .header("traceparent", format!("00-{CALLER_TRACE}-{CALLER_SPAN}-01"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401, "the auth service's answer, through the front gateway");
    front.stop(true).await.unwrap();
    auth.stop(true).await.unwrap();
    provider.force_flush().unwrap();

    let spans = exporter.get_finished_spans().unwrap();
    let requests: Vec<_> = spans.iter().filter(|s| s.name == "http.request").collect();
    assert_eq!(requests.len(), 2, "one request span per gateway: {requests:#?}");
    let trace = TraceId::from_hex(CALLER_TRACE).unwrap();
    assert!(requests.iter().all(|s| s.span_context.trace_id() == trace), "{requests:#?}");

    // The front gateway's request span is the caller's child; the auth gateway's request span
    // descends from a span of the front gateway's request, not from the caller directly.
    let front_span = requests.iter().find(|s| s.parent_span_id == SpanId::from_hex(CALLER_SPAN).unwrap());
    let front_span = front_span.expect("the front gateway's span is the caller's child");
    let auth_span = requests.iter().find(|s| s.span_context.span_id() != front_span.span_context.span_id()).unwrap();
    assert!(auth_span.parent_span_is_remote);
    let mut ancestor = auth_span.parent_span_id;
    let mut steps = 0;
    while ancestor != front_span.span_context.span_id() {
        let parent = spans.iter().find(|s| s.span_context.span_id() == ancestor);
        ancestor = parent
            .unwrap_or_else(|| panic!("span {ancestor} is not part of the front request: {spans:#?}"))
            .parent_span_id;
        steps += 1;
        assert!(steps < 16);
    }
}
