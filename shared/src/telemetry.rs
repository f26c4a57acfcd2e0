//! Logging and tracing set-up: JSON lines when not on a terminal (or when configured), pretty
//! otherwise; OpenTelemetry spans for every `tracing` span, exported over OTLP when
//! `telemetry.otlp_endpoint` is set.
//!
//! The OpenTelemetry layer is installed whether or not traces are exported, so that every
//! request has a trace id: it continues the caller's `traceparent`, is sent on to remote domain
//! services (`crate::trace`), and is written as `trace_id` on each JSON log line emitted inside
//! a span. Without an endpoint, new traces are not sampled and no span leaves the process.

mod json;
mod otlp;

use crate::config::{LogFormat, TelemetryConfig};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{Sampler, SdkTracer, SdkTracerProvider};
use std::io::IsTerminal;
use tracing::Subscriber;
use tracing_opentelemetry::OpenTelemetryLayer;
use tracing_subscriber::filter::{FilterExt as _, LevelFilter, filter_fn};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer as _};

/// The running telemetry. Call [`Telemetry::shutdown`] before the process exits, so that the
/// spans still buffered reach the collector.
#[derive(Debug)]
pub struct Telemetry {
    provider: SdkTracerProvider,
    exporting: bool,
}

impl Telemetry {
    /// Whether spans are exported over OTLP.
    pub fn is_exporting(&self) -> bool {
        self.exporting
    }

    /// Exports the spans still buffered and stops the exporter (waits at most the exporter's
    /// timeout). Does nothing when traces are not exported.
    pub fn shutdown(self) -> Result<(), String> {
        if !self.exporting {
            return Ok(());
        }
        self.provider.shutdown().map_err(|e| format!("cannot flush traces: {e}"))
    }
}

/// Installs the global subscriber. `RUST_LOG`, when set, wins over the configured filter.
/// Returns an error if the filter does not parse, the OTLP endpoint is invalid, or a subscriber
/// is already installed.
pub fn init(config: &TelemetryConfig) -> Result<Telemetry, String> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(value) if !value.trim().is_empty() => EnvFilter::try_new(value),
        _ => EnvFilter::try_new(&config.filter),
    }
    .map_err(|e| format!("invalid log filter: {e}"))?;
    let json = match config.format {
        LogFormat::Json => true,
        LogFormat::Pretty => false,
        LogFormat::Auto => !std::io::stdout().is_terminal(),
    };
    let (provider, exporting) = match &config.otlp_endpoint {
        Some(endpoint) if !endpoint.trim().is_empty() => (otlp::provider(endpoint, resource(config))?, true),
        _ => (local_provider(resource(config)), false),
    };

    subscriber(config, filter, json, &provider, exporting)?.try_init().map_err(|e| e.to_string())?;
    if exporting {
        // The endpoint itself is not logged: it may carry credentials.
        tracing::info!(service.name = %config.service_name, "exporting traces over OTLP");
    }
    Ok(Telemetry { provider, exporting })
}

/// The subscriber [`init`] installs: the OpenTelemetry layer and the log lines, each behind its
/// own filter.
///
/// Every filter states the most verbose level it lets through, so the subscriber's own hint is
/// the most verbose of the two filters (`info` by default), and the `trace!` and `debug!` lines
/// of dependencies are skipped where they are written. A filter without a hint makes the hint
/// "any level": actix and hyper then offered some forty such lines per proxied call to every
/// layer at run time, about 3 % of the request path's instructions.
fn subscriber(
    config: &TelemetryConfig,
    filter: EnvFilter,
    json: bool,
    provider: &SdkTracerProvider,
    exporting: bool,
) -> Result<Box<dyn Subscriber + Send + Sync>, String> {
    // Spans reach the OpenTelemetry layer through their own filter, whatever the log filter: a
    // process logging at `warn` still continues, passes on and logs its callers' traces.
    // Without export, events are not recorded on spans (nobody would see them): the layer sees
    // spans only, which saves building an OpenTelemetry event per log call.
    let trace_filter = EnvFilter::try_new(&config.trace_filter).map_err(|e| format!("invalid trace filter: {e}"))?;
    let spans_only = filter_fn(move |metadata| exporting || metadata.is_span()).with_max_level_hint(LevelFilter::TRACE);
    let registry = tracing_subscriber::registry().with(otel_layer(provider).with_filter(trace_filter.and(spans_only)));
    Ok(if json {
        let (slot, format) = json::with_trace_id(
            tracing_subscriber::fmt::format()
                .json()
                .with_target(true)
                .flatten_event(true)
                .with_current_span(true)
                .with_span_list(false),
        );
        // The slot behind the log filter too: a layer without a filter would take an interest
        // in every line at every level.
        let fmt = slot.and_then(tracing_subscriber::fmt::layer().json().event_format(format)).with_filter(filter);
        Box::new(registry.with(fmt))
    } else {
        Box::new(registry.with(tracing_subscriber::fmt::layer().pretty().with_target(true).with_filter(filter)))
    })
}

/// The layer that turns `tracing` spans into OpenTelemetry spans of `provider`. Public so that
/// tests can build a subscriber over an in-memory exporter.
pub fn otel_layer<S>(provider: &SdkTracerProvider) -> OpenTelemetryLayer<S, SdkTracer>
where
    S: Subscriber + for<'span> LookupSpan<'span>,
{
    tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("keel"))
        .with_location(false)
        .with_threads(false)
        .with_tracked_inactivity(false)
        // Activating a span's context on each entry makes it `opentelemetry::Context::current()`
        // for instrumentation written against OpenTelemetry's own API; Keel has none, and reads
        // a span's context from the span itself (`crate::trace`). Activation cost a lock, a
        // clone and a thread-local push on every poll of every instrumented future.
        .with_context_activation(false)
}

/// A provider that exports nothing: new traces are not sampled, and a caller's sampled trace is
/// recorded but not sent anywhere. It still assigns trace and span ids, for propagation and logs.
pub fn local_provider(resource: Resource) -> SdkTracerProvider {
    SdkTracerProvider::builder().with_sampler(local_sampler()).with_resource(resource).build()
}

/// The sampler without export: a new trace is not sampled; a caller's decision is kept (and
/// passed on in `traceparent`).
pub fn local_sampler() -> Sampler {
    Sampler::ParentBased(Box::new(Sampler::AlwaysOff))
}

fn resource(config: &TelemetryConfig) -> Resource {
    Resource::builder().with_service_name(config.service_name.clone()).build()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing::Level;

    fn config(filter: &str, trace_filter: &str) -> TelemetryConfig {
        TelemetryConfig { filter: filter.into(), trace_filter: trace_filter.into(), ..TelemetryConfig::default() }
    }

    /// The most verbose of the two filters bounds the subscriber, in both formats, so that
    /// lines below it are dropped where they are written.
    #[test]
    fn the_subscriber_states_the_most_verbose_level_of_its_filters() {
        let provider = local_provider(Resource::builder_empty().build());
        for (filter, trace_filter, expected) in [
            ("warn", "info", LevelFilter::INFO),
            ("debug", "info", LevelFilter::DEBUG),
            ("warn", "off", LevelFilter::WARN),
        ] {
            for json in [true, false] {
                let config = config(filter, trace_filter);
                let subscriber = subscriber(&config, EnvFilter::new(filter), json, &provider, false).unwrap();
                assert_eq!(subscriber.max_level_hint(), Some(expected), "{filter} / {trace_filter}, json: {json}");
            }
        }
    }

    /// A line below both filters reaches no layer at all. Before each filter stated its level,
    /// the JSON format's unfiltered slot layer took every line, and this was enabled.
    #[test]
    fn a_line_below_both_filters_is_not_enabled() {
        let provider = local_provider(Resource::builder_empty().build());
        for json in [true, false] {
            let subscriber =
                subscriber(&config("warn", "info"), EnvFilter::new("warn"), json, &provider, false).unwrap();
            tracing::subscriber::with_default(subscriber, || {
                assert!(!tracing::enabled!(Level::TRACE), "json: {json}");
                assert!(!tracing::enabled!(Level::DEBUG), "json: {json}");
                assert!(tracing::enabled!(Level::WARN), "json: {json}");
            });
        }
    }
}
