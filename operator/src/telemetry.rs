//! Logging through `tracing`: human-readable text by default, JSON for log pipelines; and,
//! when `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set,
//! OpenTelemetry traces of the operator's spans over OTLP/HTTP (protobuf): one per reconcile
//! (controller, object) and one per workflow step the WorkflowRun controller launches, whose
//! W3C trace context goes with the step's crew run request. Without an endpoint nothing is
//! exported and no OpenTelemetry layer or propagator is installed. The SDK reads the standard
//! `OTEL_*` variables itself; `OTEL_SERVICE_NAME` defaults to [`SERVICE_NAME`].

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer as _};

/// `service.name` when neither `OTEL_SERVICE_NAME` nor `OTEL_RESOURCE_ATTRIBUTES` names one.
pub const SERVICE_NAME: &str = "bizosaas-operator";

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// The trace pipeline: flushes and stops the exporter when dropped.
#[must_use = "dropping it stops exporting traces"]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take()
            && let Err(e) = provider.shutdown()
        {
            eprintln!("could not flush the remaining trace spans: {e}");
        }
    }
}

/// Installs the global subscriber. `RUST_LOG` filters the logs, defaulting to `info`; traces
/// are exported when the environment names an OTLP endpoint.
pub fn init(format: LogFormat) -> Telemetry {
    let filter = filter(std::env::var(EnvFilter::DEFAULT_ENV).ok().as_deref());
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let fmt = match format {
        LogFormat::Text => fmt.boxed(),
        LogFormat::Json => fmt.json().flatten_event(true).with_current_span(true).boxed(),
    };
    let env = |k: &str| std::env::var(k).ok();
    let (provider, failed) = match tracer_provider(&env) {
        Ok(p) => (p, None),
        Err(e) => (None, Some(e)),
    };
    let otel = provider.as_ref().map(|p| {
        opentelemetry::global::set_text_map_propagator(opentelemetry_sdk::propagation::TraceContextPropagator::new());
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer(SERVICE_NAME))
            .with_location(false)
            .with_threads(false)
            .with_target(false)
            .with_tracked_inactivity(false)
            .with_filter(otel_targets())
    });
    tracing_subscriber::registry().with(fmt.with_filter(filter)).with(otel).init();
    if let Some(e) = failed {
        tracing::warn!(error = %e, "traces are not exported");
    }
    Telemetry { provider }
}

/// The spans that become traces: the operator's and the controllers' own at `info`, not the
/// libraries' (the Kubernetes client's request spans would bury the reconciles).
fn otel_targets() -> Targets {
    Targets::new()
        .with_default(LevelFilter::OFF)
        .with_target("bizosaas_operator", LevelFilter::INFO)
        .with_target("bizosaas_controllers", LevelFilter::INFO)
}

/// Whether the environment asks for traces: an OTLP endpoint is set, and neither
/// `OTEL_SDK_DISABLED=true` nor `OTEL_TRACES_EXPORTER=none` turns them off.
fn traces_requested(env: &dyn Fn(&str) -> Option<String>) -> bool {
    let set = |k: &str| env(k).is_some_and(|v| !v.trim().is_empty());
    let disabled = env("OTEL_SDK_DISABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("true"));
    let no_exporter = env("OTEL_TRACES_EXPORTER").is_some_and(|v| v.trim().eq_ignore_ascii_case("none"));
    !disabled && !no_exporter && (set("OTEL_EXPORTER_OTLP_ENDPOINT") || set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
}

/// Whether `service.name` must be set here: neither `OTEL_SERVICE_NAME` nor
/// `OTEL_RESOURCE_ATTRIBUTES` names it (the SDK reads those itself).
fn needs_service_name(env: &dyn Fn(&str) -> Option<String>) -> bool {
    let named = env("OTEL_SERVICE_NAME").is_some_and(|v| !v.trim().is_empty())
        || env("OTEL_RESOURCE_ATTRIBUTES").is_some_and(|attrs| {
            attrs.split(',').any(|kv| kv.split_once('=').is_some_and(|(k, _)| k.trim() == "service.name"))
        });
    !named
}

fn tracer_provider(env: &dyn Fn(&str) -> Option<String>) -> Result<Option<SdkTracerProvider>, String> {
    if !traces_requested(env) {
        return Ok(None);
    }
    // The exporter's blocking client starts a runtime of its own, which cannot be done from
    // inside one (`run` is async): build it on a thread of its own, with the operator's TLS
    // provider installed first.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let exporter = std::thread::spawn(|| opentelemetry_otlp::SpanExporter::builder().with_http().build())
        .join()
        .map_err(|_| "building the OTLP exporter panicked".to_string())?
        .map_err(|e| format!("the OTLP exporter cannot be built: {e}"))?;
    let mut resource = opentelemetry_sdk::Resource::builder()
        .with_attribute(opentelemetry::KeyValue::new("service.version", env!("CARGO_PKG_VERSION")));
    if needs_service_name(env) {
        resource = resource.with_service_name(SERVICE_NAME);
    }
    Ok(Some(SdkTracerProvider::builder().with_batch_exporter(exporter).with_resource(resource.build()).build()))
}

/// The log filter from `RUST_LOG` (`info` when unset or invalid). The PostgreSQL client is
/// capped at `warn` whatever `RUST_LOG` says: at `debug` it logs every statement's text, and
/// role statements carry password verifiers. The Vault client's own logs are off: it logs
/// every answer that is not a success as an error, a secret not written yet (404) included,
/// while the operator reports each failure itself, as a condition and a log line of its own.
fn filter(rust_log: Option<&str>) -> EnvFilter {
    let filter = rust_log.and_then(|s| EnvFilter::try_new(s).ok()).unwrap_or_else(|| EnvFilter::new("info"));
    ["tokio_postgres=warn", "vaultrs=off", "rustify=off"]
        .into_iter()
        .fold(filter, |filter, directive| filter.add_directive(directive.parse().expect("a valid directive")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(vars: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |k| vars.iter().find(|(name, _)| *name == k).map(|(_, v)| v.to_string())
    }

    #[test]
    fn traces_are_exported_only_with_an_endpoint() {
        assert!(!traces_requested(&env(&[])));
        assert!(tracer_provider(&env(&[])).unwrap().is_none());
        assert!(traces_requested(&env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://otel:4318")])));
        assert!(!traces_requested(&env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://otel:4318"),
            ("OTEL_SDK_DISABLED", "true")
        ])));
        assert!(!traces_requested(&env(&[
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://o"),
            ("OTEL_TRACES_EXPORTER", "none")
        ])));
        assert!(needs_service_name(&env(&[])));
        assert!(!needs_service_name(&env(&[("OTEL_SERVICE_NAME", "operator-eu")])));
        assert!(!needs_service_name(&env(&[("OTEL_RESOURCE_ATTRIBUTES", "service.name=x")])));
    }

    #[test]
    fn traces_hold_only_the_operators_own_spans() {
        let targets = otel_targets();
        assert!(targets.would_enable("bizosaas_controllers::scaffold", &tracing::Level::INFO));
        assert!(targets.would_enable("bizosaas_operator::run", &tracing::Level::INFO));
        assert!(!targets.would_enable("bizosaas_controllers::scaffold", &tracing::Level::DEBUG));
        assert!(!targets.would_enable("kube_client::client", &tracing::Level::INFO));
        assert!(!targets.would_enable("tokio_postgres::query", &tracing::Level::INFO));
    }

    #[test]
    fn statements_are_never_logged_even_at_debug() {
        for rust_log in
            [None, Some("debug"), Some("trace"), Some("tokio_postgres=trace"), Some("info,tokio_postgres=debug")]
        {
            let directives = filter(rust_log).to_string();
            let postgres: Vec<_> = directives.split(',').filter(|d| d.starts_with("tokio_postgres")).collect();
            assert_eq!(postgres, ["tokio_postgres=warn"], "RUST_LOG={rust_log:?} gives {directives}");
        }
    }

    #[test]
    fn the_vault_client_does_not_log_a_missing_secret_as_an_error() {
        for rust_log in [None, Some("debug"), Some("vaultrs=trace,rustify=error")] {
            let directives = filter(rust_log).to_string();
            for client in ["vaultrs", "rustify"] {
                let set: Vec<_> = directives.split(',').filter(|d| d.starts_with(client)).collect();
                assert_eq!(set, [format!("{client}=off")], "RUST_LOG={rust_log:?} gives {directives}");
            }
        }
    }
}
