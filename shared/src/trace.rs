//! W3C trace context (`traceparent`, `tracestate`) into and out of HTTP, carried by the
//! `tracing` spans.
//!
//! The OpenTelemetry layer that [`crate::telemetry::init`] installs gives every span a trace id,
//! whether or not traces are exported: an incoming `traceparent` becomes the parent of the
//! request's span, and an outgoing request sends the current span as the parent. So a request
//! that crosses processes (a gateway whose auth domain is remote) is one trace, and the logs of
//! both processes carry the same `trace_id`, even with export off.

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{TraceContextExt, TraceId};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The header carrying the caller's span.
pub const TRACEPARENT: &str = "traceparent";

/// The trace id of the current span, when it belongs to a trace (32 lowercase hex digits).
pub fn current_trace_id() -> Option<TraceId> {
    let context = tracing::Span::current().context();
    let span = context.span();
    let span_context = span.span_context();
    span_context.is_valid().then(|| span_context.trace_id())
}

#[cfg(feature = "client")]
pub use client::{inject_trace_context, with_trace_context};

#[cfg(feature = "client")]
mod client {
    use super::*;
    use opentelemetry::propagation::Injector;
    use reqwest::header::{HeaderMap, HeaderName, HeaderValue};

    struct Headers<'a>(&'a mut HeaderMap);

    impl Injector for Headers<'_> {
        fn set(&mut self, key: &str, value: String) {
            if let (Ok(name), Ok(value)) = (HeaderName::from_bytes(key.as_bytes()), HeaderValue::from_str(&value)) {
                self.0.insert(name, value);
            }
        }
    }

    /// Writes the current span's trace context (`traceparent`, and `tracestate` when there is
    /// one) into `headers`. Writes nothing outside a trace.
    pub fn inject_trace_context(headers: &mut HeaderMap) {
        let context = tracing::Span::current().context();
        TraceContextPropagator::new().inject_context(&context, &mut Headers(headers));
    }

    /// `builder` with the current span's trace context: every outgoing request of a remote
    /// client goes through this.
    pub fn with_trace_context(builder: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        let mut headers = HeaderMap::new();
        inject_trace_context(&mut headers);
        if headers.is_empty() { builder } else { builder.headers(headers) }
    }
}

#[cfg(feature = "server")]
pub use server::{extract_trace_context, set_remote_parent};

#[cfg(feature = "server")]
mod server {
    use super::*;
    use actix_web::http::header::HeaderMap;
    use opentelemetry::propagation::Extractor;

    struct Headers<'a>(&'a HeaderMap);

    impl Extractor for Headers<'_> {
        fn get(&self, key: &str) -> Option<&str> {
            self.0.get(key).and_then(|value| value.to_str().ok())
        }

        fn keys(&self) -> Vec<&str> {
            self.0.keys().map(|name| name.as_str()).collect()
        }
    }

    /// The caller's trace context from a request's headers (an empty context when there is
    /// none, or it does not parse).
    pub fn extract_trace_context(headers: &HeaderMap) -> opentelemetry::Context {
        TraceContextPropagator::new().extract(&Headers(headers))
    }

    /// Makes the caller's span (the request's `traceparent`) the parent of `span`, which must
    /// not have been entered yet. Without a valid `traceparent`, `span` starts a new trace.
    pub fn set_remote_parent(span: &tracing::Span, headers: &HeaderMap) {
        if !headers.contains_key(TRACEPARENT) {
            return;
        }
        let context = extract_trace_context(headers);
        if context.span().span_context().is_valid() {
            // Fails only without the OpenTelemetry layer (nothing to parent) or once the span
            // has started; both leave the span as it was.
            let _ = span.set_parent(context);
        }
    }
}
