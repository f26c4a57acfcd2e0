//! Trace export over OTLP/HTTP (protobuf): a batch span processor running on its own Tokio
//! runtime thread, sending through the workspace's reqwest client.

use opentelemetry::context::FutureExt as _;
use opentelemetry_http::{Bytes, HttpClient, HttpError, Request, Response};
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::runtime::TokioCurrentThread;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor;
use std::time::Duration;

/// How long one export may take before it is abandoned (and logged by the SDK).
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// The largest collector answer read (an OTLP answer is a few bytes).
const MAX_RESPONSE_BYTES: usize = 1024 * 1024;

/// A provider exporting to `endpoint` (a base URL; `/v1/traces` is appended unless present).
///
/// The batch processor runs on `TokioCurrentThread`: a dedicated thread with its own
/// current-thread Tokio runtime. actix runs each worker on a current-thread runtime, where the
/// blocking `shutdown` flush would otherwise deadlock with the export task it waits for.
pub(super) fn provider(endpoint: &str, resource: Resource) -> Result<SdkTracerProvider, String> {
    let client = reqwest::Client::builder()
        .timeout(EXPORT_TIMEOUT)
        .build()
        .map_err(|e| format!("cannot build the OTLP http client: {e}"))?;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_http_client(ReqwestClient(client))
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(traces_url(endpoint))
        .with_timeout(EXPORT_TIMEOUT)
        .build()
        .map_err(|e| format!("invalid OTLP exporter configuration: {e}"))?;
    let processor = BatchSpanProcessor::builder(exporter, TokioCurrentThread).build();
    Ok(SdkTracerProvider::builder().with_span_processor(processor).with_resource(resource).build())
}

/// The OTLP/HTTP traces URL for a collector's base URL.
fn traces_url(endpoint: &str) -> String {
    let endpoint = endpoint.trim().trim_end_matches('/');
    if endpoint.ends_with("/v1/traces") { endpoint.to_owned() } else { format!("{endpoint}/v1/traces") }
}

/// `opentelemetry-http`'s client interface over the workspace's reqwest (0.12, rustls), so the
/// exporter brings no second HTTP stack.
#[derive(Debug)]
struct ReqwestClient(reqwest::Client);

#[async_trait::async_trait]
impl HttpClient for ReqwestClient {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        // Spans of the export itself (the HTTP client's, at debug level) must not be exported in
        // turn: run it with telemetry suppressed.
        let suppressed = opentelemetry::Context::current().with_telemetry_suppressed();
        async {
            let request = reqwest::Request::try_from(request)?;
            let mut response = self.0.execute(request).await?;
            let status = response.status();
            let headers = std::mem::take(response.headers_mut());
            let mut body = Vec::new();
            while let Some(chunk) = response.chunk().await? {
                if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
                    return Err("the OTLP collector's answer is too large".into());
                }
                body.extend_from_slice(&chunk);
            }
            let mut answer = Response::builder().status(status).body(Bytes::from(body))?;
            *answer.headers_mut() = headers;
            Ok(answer)
        }
        .with_context(suppressed)
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::otel_layer;
    use opentelemetry::trace::{TraceContextExt, TraceId};
    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::TcpListener;
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    use tracing_subscriber::layer::SubscriberExt;

    /// One OTLP request as a collector receives it: its request line, content type and body.
    struct Received {
        request_line: String,
        content_type: String,
        body: Vec<u8>,
    }

    /// A collector that answers one request with 200 and hands it over.
    fn collector() -> (String, std::thread::JoinHandle<Received>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let handle = std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut request_line = String::new();
            reader.read_line(&mut request_line).unwrap();
            let (mut length, mut content_type) = (0, String::new());
            loop {
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                let line = line.trim_end();
                if line.is_empty() {
                    break;
                }
                let (name, value) = line.split_once(':').unwrap();
                match name.to_ascii_lowercase().as_str() {
                    "content-length" => length = value.trim().parse().unwrap(),
                    "content-type" => content_type = value.trim().to_owned(),
                    _ => {}
                }
            }
            let mut body = vec![0; length];
            reader.read_exact(&mut body).unwrap();
            let mut stream = stream;
            stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n").unwrap();
            Received { request_line: request_line.trim_end().to_owned(), content_type, body }
        });
        (url, handle)
    }

    #[test]
    fn spans_are_batched_to_the_collector_and_flushed_at_shutdown() {
        let (url, received) = collector();
        let provider = provider(&url, Resource::builder_empty().with_service_name("keel-test").build()).unwrap();
        let subscriber = tracing_subscriber::registry().with(otel_layer(&provider));
        let trace_id: TraceId = tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("http.request", http.route = "/healthz");
            let _entered = span.enter();
            span.context().span().span_context().trace_id()
        });
        // Far sooner than the 5 s batch delay: shutdown exports what is buffered.
        provider.shutdown().unwrap();

        let received = received.join().unwrap();
        assert_eq!(received.request_line, "POST /v1/traces HTTP/1.1");
        assert_eq!(received.content_type, "application/x-protobuf");
        let body = &received.body;
        assert!(body.windows(16).any(|w| w == trace_id.to_bytes()), "the span's trace id is in the export");
        assert!(body.windows(12).any(|w| w == b"http.request"), "the span's name is in the export");
        assert!(body.windows(9).any(|w| w == b"keel-test"), "the service name is in the export");
    }

    #[test]
    fn the_traces_path_is_appended_once() {
        assert_eq!(traces_url("http://collector:4318"), "http://collector:4318/v1/traces");
        assert_eq!(traces_url("http://collector:4318/"), "http://collector:4318/v1/traces");
        assert_eq!(traces_url("https://x.example/otlp/v1/traces"), "https://x.example/otlp/v1/traces");
    }
}
