//! Tracing set-up (one place for every service) and W3C trace context
//! carried in NATS headers, so one trace spans ingress, responder, sender
//! and logger.
//!
//! Spans always get real OpenTelemetry ids (so `traceparent` headers are
//! always sent); they are exported over OTLP/HTTP only when a collector is
//! configured (`OTEL_EXPORTER_OTLP_ENDPOINT`).

use async_nats::HeaderMap;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

use crate::config::{LogFormat, TelemetrySettings};
use crate::events::v1::TraceContext;

/// Flushes exported spans when dropped.
pub struct TelemetryGuard {
    provider: SdkTracerProvider,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        let _ = self.provider.shutdown();
    }
}

/// Installs the global subscriber: logs to stderr (text or JSON, filtered
/// by `settings.filter`), plus the OpenTelemetry layer, exporting over
/// OTLP/HTTP when `settings.otlp_endpoint` is set.
pub fn init(service: &'static str, settings: &TelemetrySettings) -> TelemetryGuard {
    let mut builder = SdkTracerProvider::builder();
    let mut export_error = None;
    if let Some(base) = &settings.otlp_endpoint {
        // OTLP/HTTP's traces path under the collector's base URL, as the
        // exporter itself derives it from OTEL_EXPORTER_OTLP_ENDPOINT.
        let endpoint = format!("{}/v1/traces", base.trim_end_matches('/'));
        match opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_endpoint(endpoint)
            .build()
        {
            Ok(exporter) => builder = builder.with_batch_exporter(exporter),
            Err(e) => export_error = Some(e),
        }
    }
    let provider = builder
        .with_resource(
            opentelemetry_sdk::Resource::builder()
                .with_service_name(service)
                .build(),
        )
        .build();
    let tracer = provider.tracer("alphadome");
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());

    let filter = EnvFilter::try_new(&settings.filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .with_target(false);
    let registry = tracing_subscriber::registry()
        .with(filter)
        .with(tracing_opentelemetry::layer().with_tracer(tracer));
    let installed = match settings.format {
        LogFormat::Json => registry.with(fmt.json()).try_init(),
        LogFormat::Text => registry.with(fmt).try_init(),
    };
    if installed.is_ok() {
        if let Some(e) = export_error {
            tracing::warn!(error = %crate::Report(&e), "OTLP exporter could not be created; spans are not exported");
        }
    }
    TelemetryGuard { provider }
}

struct HeaderInjector<'a>(&'a mut HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key, value.as_str());
    }
}

struct HeaderExtractor<'a>(&'a HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(|v| v.as_str())
    }
    fn keys(&self) -> Vec<&str> {
        Vec::new()
    }
}

/// Writes the current span's context as `traceparent`/`tracestate` headers.
pub fn inject(headers: &mut HeaderMap) {
    let cx = tracing::Span::current().context();
    TraceContextPropagator::new().inject_context(&cx, &mut HeaderInjector(headers));
}

/// The current span's context as the protobuf `TraceContext`.
pub fn current_trace() -> TraceContext {
    let mut headers = HeaderMap::new();
    inject(&mut headers);
    TraceContext {
        traceparent: headers
            .get("traceparent")
            .map(|v| v.to_string())
            .unwrap_or_default(),
        tracestate: headers
            .get("tracestate")
            .map(|v| v.to_string())
            .unwrap_or_default(),
    }
}

/// Makes `span` a child of the trace context in `headers` (if any).
pub fn set_parent_from_headers(span: &tracing::Span, headers: Option<&HeaderMap>) {
    if let Some(h) = headers {
        let cx = TraceContextPropagator::new().extract(&HeaderExtractor(h));
        let _ = span.set_parent(cx);
    }
}
