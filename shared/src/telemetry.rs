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
use tracing_subscriber::filter::{FilterExt as _, filter_fn};
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

    // Spans reach the OpenTelemetry layer through their own filter, whatever the log filter: a
    // process logging at `warn` still continues, passes on and logs its callers' traces.
    // Without export, events are not recorded on spans (nobody would see them): the layer sees
    // spans only, which saves building an OpenTelemetry event per log call.
    let trace_filter = EnvFilter::try_new(&config.trace_filter).map_err(|e| format!("invalid trace filter: {e}"))?;
    let spans_only = filter_fn(move |metadata| exporting || metadata.is_span());
    let registry = tracing_subscriber::registry().with(otel_layer(&provider).with_filter(trace_filter.and(spans_only)));
    let result = if json {
        let (slot, format) = json::with_trace_id(
            tracing_subscriber::fmt::format()
                .json()
                .with_target(true)
                .flatten_event(true)
                .with_current_span(true)
                .with_span_list(false),
        );
        let fmt = tracing_subscriber::fmt::layer().json().event_format(format).with_filter(filter);
        registry.with(slot).with(fmt).try_init()
    } else {
        registry.with(tracing_subscriber::fmt::layer().pretty().with_target(true).with_filter(filter)).try_init()
    };
    result.map_err(|e| e.to_string())?;
    if exporting {
        // The endpoint itself is not logged: it may carry credentials.
        tracing::info!(service.name = %config.service_name, "exporting traces over OTLP");
    }
    Ok(Telemetry { provider, exporting })
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
