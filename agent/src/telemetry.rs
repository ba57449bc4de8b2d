//! Logging through `tracing`: human-readable text by default, JSON for log pipelines; and,
//! when `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set,
//! OpenTelemetry traces of the runtime's spans exported over OTLP/HTTP (protobuf).
//!
//! Without an endpoint no exporter, propagator or OpenTelemetry layer is installed: the spans
//! are the plain `tracing` spans the logs already have. The SDK reads the standard `OTEL_*`
//! variables itself (`OTEL_EXPORTER_OTLP_HEADERS`, `_TIMEOUT`, `_COMPRESSION`,
//! `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER`, `OTEL_BSP_*`, ...); `OTEL_SERVICE_NAME`
//! defaults to [`SERVICE_NAME`].
//!
//! Spans (all of target `bizosaas_agent`, at `info`) follow the OpenTelemetry semantic
//! conventions where there are some: the run API request (`{method} {route}`, server), the
//! crew run, each agent's work on a task (`invoke_agent {agent}`), each model call
//! (`chat {model}`, client, GenAI conventions) and each tool call (`execute_tool {tool}`).
//! Their attributes are chosen field by field: no header, credential, prompt, completion or
//! tool argument is ever an attribute.

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use std::sync::OnceLock;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer as _};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// `service.name` when neither `OTEL_SERVICE_NAME` nor `OTEL_RESOURCE_ATTRIBUTES` names one.
pub const SERVICE_NAME: &str = "bizosaas-agent";

/// The propagator of incoming and outgoing requests, set once traces are exported.
static PROPAGATOR: OnceLock<TraceContextPropagator> = OnceLock::new();

/// The trace pipeline of the process: flushes and stops the exporter when shut down or
/// dropped.
#[must_use = "dropping it stops exporting traces"]
#[derive(Default)]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Whether spans are exported.
    pub fn exporting(&self) -> bool {
        self.provider.is_some()
    }

    /// Exports the spans still buffered and stops the exporter. Blocks (at most the export
    /// timeout): call it outside async code, or accept a short block at exit.
    pub fn shutdown(&mut self) {
        if let Some(provider) = self.provider.take()
            && let Err(e) = provider.shutdown()
        {
            eprintln!("could not flush the remaining trace spans: {e}");
        }
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Installs the global subscriber. `RUST_LOG` filters the logs, defaulting to `info`; traces
/// are exported when the environment names an OTLP endpoint.
pub fn init(format: LogFormat) -> Telemetry {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,tokio_postgres=warn"));
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let fmt = match format {
        LogFormat::Text => fmt.boxed(),
        LogFormat::Json => fmt.json().flatten_event(true).with_current_span(true).boxed(),
    };
    let env = |k: &str| std::env::var(k).ok();
    let (provider, failed) = match tracer_provider(&env, SERVICE_NAME) {
        Ok(p) => (p, None),
        Err(e) => (None, Some(e)),
    };
    let otel = provider.as_ref().map(layer);
    tracing_subscriber::registry().with(fmt.with_filter(filter)).with(otel).init();
    if let Some(e) = failed {
        tracing::warn!(error = %e, "traces are not exported");
    }
    Telemetry { provider }
}

/// The OpenTelemetry layer for `provider`: this crate's spans at `info` and above (the
/// libraries' own spans, e.g. of the Kubernetes client, stay out of the traces). It also
/// turns on the propagation of W3C trace context ([`extract`], [`inject`]).
pub fn layer<S>(provider: &SdkTracerProvider) -> impl tracing_subscriber::Layer<S> + Send + Sync + 'static
where
    S: tracing::Subscriber + for<'span> tracing_subscriber::registry::LookupSpan<'span> + Send + Sync,
{
    let _ = PROPAGATOR.set(TraceContextPropagator::new());
    tracing_opentelemetry::layer()
        .with_tracer(provider.tracer(SERVICE_NAME))
        .with_location(false)
        .with_threads(false)
        .with_target(false)
        .with_tracked_inactivity(false)
        .with_filter(Targets::new().with_default(LevelFilter::OFF).with_target("bizosaas_agent", LevelFilter::INFO))
}

/// Whether the environment asks for traces: an OTLP endpoint is set, and neither
/// `OTEL_SDK_DISABLED=true` nor `OTEL_TRACES_EXPORTER=none` turns them off.
pub fn traces_requested(env: &dyn Fn(&str) -> Option<String>) -> bool {
    let set = |k: &str| env(k).is_some_and(|v| !v.trim().is_empty());
    let disabled = env("OTEL_SDK_DISABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("true"));
    let no_exporter = env("OTEL_TRACES_EXPORTER").is_some_and(|v| v.trim().eq_ignore_ascii_case("none"));
    !disabled && !no_exporter && (set("OTEL_EXPORTER_OTLP_ENDPOINT") || set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
}

/// `service.name` to set, unless `OTEL_SERVICE_NAME` or `OTEL_RESOURCE_ATTRIBUTES` names it
/// (the SDK reads those itself).
pub fn default_service_name(env: &dyn Fn(&str) -> Option<String>, default: &str) -> Option<String> {
    let named = env("OTEL_SERVICE_NAME").is_some_and(|v| !v.trim().is_empty())
        || env("OTEL_RESOURCE_ATTRIBUTES").is_some_and(|attrs| {
            attrs.split(',').any(|kv| kv.split_once('=').is_some_and(|(k, _)| k.trim() == "service.name"))
        });
    (!named).then(|| default.to_string())
}

/// The tracer provider exporting to the OTLP endpoint of `env`, `None` when no traces are
/// asked for.
pub fn tracer_provider(
    env: &dyn Fn(&str) -> Option<String>,
    service_name: &str,
) -> Result<Option<SdkTracerProvider>, String> {
    if !traces_requested(env) {
        return Ok(None);
    }
    // The exporter's blocking client starts a runtime of its own, which cannot be done from
    // inside one: build it on a thread of its own. Its rustls has no provider built in.
    crate::install_crypto_provider();
    let exporter = std::thread::spawn(|| opentelemetry_otlp::SpanExporter::builder().with_http().build())
        .join()
        .map_err(|_| "building the OTLP exporter panicked".to_string())?
        .map_err(|e| format!("the OTLP exporter cannot be built: {e}"))?;
    let mut resource = opentelemetry_sdk::Resource::builder()
        .with_attribute(opentelemetry::KeyValue::new("service.version", env!("CARGO_PKG_VERSION")));
    if let Some(name) = default_service_name(env, service_name) {
        resource = resource.with_service_name(name);
    }
    Ok(Some(SdkTracerProvider::builder().with_batch_exporter(exporter).with_resource(resource.build()).build()))
}

/// Whether trace context is propagated (traces are exported).
pub fn enabled() -> bool {
    PROPAGATOR.get().is_some()
}

/// Makes the caller's trace (`traceparent` / `tracestate` of `headers`) the parent of `span`.
/// Does nothing when traces are not exported or the headers carry no valid trace context.
pub fn set_parent_from(span: &tracing::Span, headers: &HeaderMap) {
    if let Some(propagator) = PROPAGATOR.get() {
        let cx = extract(propagator, headers);
        if opentelemetry::trace::TraceContextExt::span(&cx).span_context().is_valid() {
            let _ = span.set_parent(cx);
        }
    }
}

/// Adds the `traceparent` (and `tracestate`) of `span` to outgoing `headers`. Does nothing
/// when traces are not exported.
pub fn inject_from(span: &tracing::Span, headers: &mut HeaderMap) {
    if let Some(propagator) = PROPAGATOR.get() {
        inject(propagator, &span.context(), headers);
    }
}

/// The trace context of `headers` (W3C `traceparent` / `tracestate`).
pub fn extract(propagator: &impl TextMapPropagator, headers: &HeaderMap) -> opentelemetry::Context {
    propagator.extract(&HeaderExtractor(headers))
}

/// Writes the trace context of `cx` into `headers`; only the propagator's own fields
/// (`traceparent`, `tracestate`) are touched, and nothing when `cx` has no valid span.
pub fn inject(propagator: &impl TextMapPropagator, cx: &opentelemetry::Context, headers: &mut HeaderMap) {
    propagator.inject_context(cx, &mut HeaderInjector(headers));
}

struct HeaderExtractor<'a>(&'a HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(HeaderName::as_str).collect()
    }
}

struct HeaderInjector<'a>(&'a mut HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        // An empty `tracestate` says nothing: leave it out.
        if value.is_empty() {
            return;
        }
        if let (Ok(name), Ok(value)) = (HeaderName::from_bytes(key.as_bytes()), HeaderValue::from_str(&value)) {
            self.0.insert(name, value);
        }
    }
}

/// An integer as a span attribute: OpenTelemetry's integers are `i64`, and `tracing`'s
/// unsigned values would be recorded as text.
pub fn int<T: TryInto<i64>>(value: T) -> i64 {
    value.try_into().unwrap_or(i64::MAX)
}

/// `server.address` and `server.port` of an endpoint URL: host and port only, never the
/// user information, path or query (which may carry credentials).
pub fn server_of(endpoint: &str) -> (String, Option<u16>) {
    match reqwest::Url::parse(endpoint) {
        Ok(url) => (url.host_str().unwrap_or_default().to_string(), url.port_or_known_default()),
        Err(_) => (String::new(), None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
    use std::collections::HashMap;

    const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let vars: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |k| vars.get(k).cloned()
    }

    #[test]
    fn traces_need_an_endpoint_and_can_be_turned_off() {
        assert!(!traces_requested(&env(&[])));
        assert!(!traces_requested(&env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", " ")])));
        assert!(traces_requested(&env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318")])));
        assert!(traces_requested(&env(&[("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://c:4318/v1/traces")])));
        let on = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318");
        assert!(!traces_requested(&env(&[on, ("OTEL_SDK_DISABLED", "TRUE")])));
        assert!(!traces_requested(&env(&[on, ("OTEL_TRACES_EXPORTER", "none")])));
        assert!(traces_requested(&env(&[on, ("OTEL_SDK_DISABLED", "false"), ("OTEL_TRACES_EXPORTER", "otlp")])));
        assert!(tracer_provider(&env(&[]), SERVICE_NAME).unwrap().is_none());
    }

    #[test]
    fn the_service_name_defaults_unless_the_environment_names_one() {
        assert_eq!(default_service_name(&env(&[]), SERVICE_NAME).as_deref(), Some("bizosaas-agent"));
        assert_eq!(default_service_name(&env(&[("OTEL_SERVICE_NAME", "crew-a")]), SERVICE_NAME), None);
        let attrs = ("OTEL_RESOURCE_ATTRIBUTES", "k8s.namespace.name=t, service.name=x");
        assert_eq!(default_service_name(&env(&[attrs]), SERVICE_NAME), None);
        let other = ("OTEL_RESOURCE_ATTRIBUTES", "service.namespace=bizosaas");
        assert_eq!(default_service_name(&env(&[other]), SERVICE_NAME).as_deref(), Some("bizosaas-agent"));
    }

    #[test]
    fn the_callers_trace_context_is_read_from_traceparent() {
        let mut headers = HeaderMap::new();
        headers.insert("traceparent", HeaderValue::from_static(PARENT));
        headers.insert("tracestate", HeaderValue::from_static("vendor=1"));
        let cx = extract(&TraceContextPropagator::new(), &headers);
        let sc = cx.span().span_context().clone();
        assert!(sc.is_valid() && sc.is_remote() && sc.is_sampled());
        assert_eq!(sc.trace_id(), TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap());
        assert_eq!(sc.span_id(), SpanId::from_hex("00f067aa0ba902b7").unwrap());
        assert_eq!(sc.trace_state().get("vendor"), Some("1"));
        // Malformed or missing context gives no parent.
        for bad in ["00-00000000000000000000000000000000-00f067aa0ba902b7-01", "garbage", ""] {
            let mut h = HeaderMap::new();
            h.insert("traceparent", HeaderValue::from_str(bad).unwrap());
            assert!(!extract(&TraceContextPropagator::new(), &h).span().span_context().is_valid(), "{bad:?}");
        }
        assert!(!extract(&TraceContextPropagator::new(), &HeaderMap::new()).span().span_context().is_valid());
    }

    #[test]
    fn only_the_trace_context_is_added_to_outgoing_requests() {
        let sc = SpanContext::new(
            TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap(),
            SpanId::from_hex("00f067aa0ba902b7").unwrap(),
            TraceFlags::SAMPLED,
            false,
            TraceState::default(),
        );
        let cx = opentelemetry::Context::new().with_remote_span_context(sc);
        let mut headers = HeaderMap::new();
        headers.insert("authorization", HeaderValue::from_static("Bearer sk-secret"));
        inject(&TraceContextPropagator::new(), &cx, &mut headers);
        assert_eq!(headers.get("traceparent").unwrap(), PARENT);
        assert_eq!(headers.get("authorization").unwrap(), "Bearer sk-secret");
        assert_eq!(headers.len(), 2, "{headers:?}");
        // Without a span nothing is added.
        let mut empty = HeaderMap::new();
        inject(&TraceContextPropagator::new(), &opentelemetry::Context::new(), &mut empty);
        assert!(empty.is_empty());
    }

    #[test]
    fn the_server_address_never_carries_credentials() {
        assert_eq!(server_of("https://openrouter.ai/api/v1/chat/completions"), ("openrouter.ai".into(), Some(443)));
        assert_eq!(
            server_of("http://user:s3cret@10.0.0.1:8081/v1/chat/completions?key=k"),
            ("10.0.0.1".into(), Some(8081))
        );
        assert_eq!(server_of("not a url"), (String::new(), None));
    }
}
