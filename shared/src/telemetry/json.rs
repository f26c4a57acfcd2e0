//! JSON log lines with the trace id: tracing-subscriber's own JSON format (the shape log
//! pipelines and tests already read: flattened event fields, the current span under `span`)
//! with a leading `"trace_id"` field on every line emitted inside a span of a trace.

use opentelemetry::trace::{TraceContextExt, TraceId};
use std::sync::{Arc, OnceLock};
use tracing::dispatcher::WeakDispatch;
use tracing::{Dispatch, Event, Subscriber};
use tracing_subscriber::Layer;
use tracing_subscriber::fmt::format::{Format, Json, Writer};
use tracing_subscriber::fmt::time::SystemTime;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// `format` with the trace id, and the layer that lets it find each span's trace (install both).
pub(super) fn with_trace_id(format: Format<Json, SystemTime>) -> (DispatchSlot, JsonWithTraceId) {
    let dispatch = Arc::new(OnceLock::new());
    (DispatchSlot(dispatch.clone()), JsonWithTraceId { inner: format, dispatch })
}

/// Remembers the subscriber it is installed in: reading a span's OpenTelemetry context needs it.
#[derive(Debug)]
pub(super) struct DispatchSlot(Arc<OnceLock<WeakDispatch>>);

impl<S: Subscriber> Layer<S> for DispatchSlot {
    fn on_register_dispatch(&self, subscriber: &Dispatch) {
        let _ = self.0.set(subscriber.downgrade());
    }
}

#[derive(Debug)]
pub(super) struct JsonWithTraceId {
    inner: Format<Json, SystemTime>,
    dispatch: Arc<OnceLock<WeakDispatch>>,
}

impl JsonWithTraceId {
    /// The trace of the span the event belongs to. The span is looked up in the whole
    /// subscriber, not through this layer's filter: a `warn` line inside an `info` request span
    /// still carries the request's trace id when the log filter hides the span itself.
    fn trace_id(&self, event: &Event<'_>) -> Option<TraceId> {
        let dispatch = self.dispatch.get()?.upgrade()?;
        let span = match event.parent() {
            Some(parent) => parent.clone(),
            None if event.is_contextual() => dispatch.current_span().id()?.clone(),
            None => return None,
        };
        let context = tracing_opentelemetry::get_otel_context(&span, &dispatch)?;
        let otel_span = context.span();
        let span_context = otel_span.span_context();
        span_context.is_valid().then(|| span_context.trace_id())
    }
}

impl<S, N> FormatEvent<S, N> for JsonWithTraceId
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(&self, ctx: &FmtContext<'_, S, N>, mut writer: Writer<'_>, event: &Event<'_>) -> std::fmt::Result {
        let Some(trace_id) = self.trace_id(event) else {
            return self.inner.format_event(ctx, writer, event);
        };
        let mut line = String::with_capacity(256);
        self.inner.format_event(ctx, Writer::new(&mut line), event)?;
        // The JSON format writes one object per line: open it with the trace id.
        match line.strip_prefix('{') {
            Some(rest) => {
                let separator = if rest.starts_with('}') { "" } else { "," };
                write!(writer, "{{\"trace_id\":\"{trace_id}\"{separator}{rest}")
            }
            None => writer.write_str(&line),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::{local_provider, otel_layer};
    use opentelemetry_sdk::Resource;
    use serde_json::Value;
    use std::io::Write;
    use std::sync::Mutex;
    use tracing_subscriber::layer::SubscriberExt;

    /// Collects what the fmt layer writes.
    #[derive(Clone, Default)]
    struct Lines(Arc<Mutex<Vec<u8>>>);

    impl Write for Lines {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn lines_inside_a_trace_carry_its_trace_id_and_keep_the_usual_shape() {
        let provider = local_provider(Resource::builder_empty().build());
        let lines = Lines::default();
        let (slot, format) = with_trace_id(
            tracing_subscriber::fmt::format().json().flatten_event(true).with_current_span(true).with_span_list(false),
        );
        let writer = lines.clone();
        let subscriber = tracing_subscriber::registry()
            .with(otel_layer(&provider))
            .with(slot)
            .with(tracing_subscriber::fmt::layer().json().event_format(format).with_writer(move || writer.clone()));

        let trace_id = tracing::subscriber::with_default(subscriber, || {
            tracing::info!("outside any span");
            let span = tracing::info_span!("http.request", request.id = "r-1");
            span.in_scope(|| {
                tracing::info!(answer = 42, "inside");
                tracing::info_span!("child").in_scope(|| tracing::info!("nested"));
                crate::trace::current_trace_id().unwrap()
            })
        });

        let text = String::from_utf8(lines.0.lock().unwrap().clone()).unwrap();
        let events: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(events.len(), 3, "{text}");
        assert!(events[0].get("trace_id").is_none(), "{text}");
        assert_eq!(events[1]["trace_id"], trace_id.to_string());
        assert_eq!(events[1]["answer"], 42);
        assert_eq!(events[1]["message"], "inside");
        assert_eq!(events[1]["span"]["request.id"], "r-1");
        assert_eq!(events[2]["trace_id"], trace_id.to_string(), "a nested span shares the trace");
        assert_eq!(trace_id.to_string().len(), 32);
    }

    #[test]
    fn a_warning_inside_a_span_hidden_by_the_log_filter_still_carries_the_trace_id() {
        use tracing_subscriber::Layer as _;
        use tracing_subscriber::filter::LevelFilter;

        let provider = local_provider(Resource::builder_empty().build());
        let lines = Lines::default();
        let (slot, format) = with_trace_id(tracing_subscriber::fmt::format().json().flatten_event(true));
        let writer = lines.clone();
        // Composed as `telemetry::init` does: the slot behind the log filter with the lines.
        let fmt = slot
            .and_then(tracing_subscriber::fmt::layer().json().event_format(format).with_writer(move || writer.clone()))
            .with_filter(LevelFilter::WARN);
        let subscriber =
            tracing_subscriber::registry().with(otel_layer(&provider).with_filter(LevelFilter::INFO)).with(fmt);

        let trace_id = tracing::subscriber::with_default(subscriber, || {
            tracing::info_span!("http.request").in_scope(|| {
                tracing::info!("filtered out");
                tracing::warn!("kept");
                crate::trace::current_trace_id().unwrap()
            })
        });

        let text = String::from_utf8(lines.0.lock().unwrap().clone()).unwrap();
        let events: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(events.len(), 1, "{text}");
        assert_eq!(events[0]["message"], "kept");
        assert_eq!(events[0]["trace_id"], trace_id.to_string());
    }
}
