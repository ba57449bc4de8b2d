//! Prometheus metrics shared by the controllers, served by the operator at `/metrics`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::time::Instant;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ControllerLabels {
    pub controller: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub controller: &'static str,
    /// `success` or the stable error category.
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WriteLabels {
    pub controller: &'static str,
    pub kind: String,
    /// `apply`, `delete` or `status`.
    pub verb: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReadLabels {
    pub controller: &'static str,
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: String,
}

/// Reconcile counters and durations per controller, API writes per kind, the reads of
/// children that a watch could not vouch for, and the watches held in tenant namespaces.
pub struct Metrics {
    pub reconciles: Family<OutcomeLabels, Counter>,
    pub duration: Family<ControllerLabels, Histogram>,
    pub writes: Family<WriteLabels, Counter>,
    pub child_reads: Family<ReadLabels, Counter>,
    pub namespace_watches: Family<KindLabels, Gauge>,
    pub watch_connections: Gauge,
}

impl Metrics {
    /// Creates the metrics and registers them under the `bizosaas` prefix. The series of
    /// `controllers` start at zero, so dashboards see them before the first reconcile.
    pub fn new(registry: &mut Registry, controllers: &[&'static str]) -> Self {
        let metrics = Self {
            reconciles: Family::default(),
            duration: Family::new_with_constructor(|| {
                Histogram::new([0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0])
            }),
            writes: Family::default(),
            child_reads: Family::default(),
            namespace_watches: Family::default(),
            watch_connections: Gauge::default(),
        };
        let sub = registry.sub_registry_with_prefix("bizosaas");
        sub.register("reconciles", "Reconciles by controller and outcome", metrics.reconciles.clone());
        sub.register("reconcile_duration_seconds", "Time spent in one reconcile", metrics.duration.clone());
        sub.register("api_writes", "Writes sent to the Kubernetes API", metrics.writes.clone());
        sub.register(
            "child_reads",
            "Children read from the Kubernetes API before applying them (not known unchanged from a watch)",
            metrics.child_reads.clone(),
        );
        sub.register(
            "tenant_namespace_watches",
            "Watches held open in tenant namespaces, by kind (one per namespace that needs the kind)",
            metrics.namespace_watches.clone(),
        );
        sub.register(
            "watch_connections",
            "HTTP/2 connections to the API server carrying the tenant-namespace watches",
            metrics.watch_connections.clone(),
        );
        for &controller in controllers {
            metrics.reconciles.get_or_create(&OutcomeLabels { controller, outcome: "success" }).inc_by(0);
            let _ = metrics.duration.get_or_create(&ControllerLabels { controller });
        }
        metrics
    }

    /// Starts timing a reconcile; the outcome is recorded by [`ReconcileTimer::finish`].
    pub fn start(&self, controller: &'static str) -> ReconcileTimer<'_> {
        ReconcileTimer { metrics: self, controller, started: Instant::now() }
    }

    /// Counts one read of a child before applying it.
    pub fn child_read(&self, controller: &'static str, kind: &str) {
        self.child_reads.get_or_create(&ReadLabels { controller, kind: kind.to_string() }).inc();
    }

    /// Counts one API write.
    pub fn write(&self, controller: &'static str, kind: &str, verb: &'static str) {
        self.writes.get_or_create(&WriteLabels { controller, kind: kind.to_string(), verb }).inc();
    }
}

/// Errors with a stable category, the `outcome` label of a failed reconcile.
pub trait Categorized {
    fn category(&self) -> &'static str;
}

impl Metrics {
    /// Runs one reconcile, recording its duration and outcome.
    pub async fn measure<T, E: Categorized>(
        &self,
        controller: &'static str,
        work: impl std::future::Future<Output = Result<T, E>>,
    ) -> Result<T, E> {
        let timer = self.start(controller);
        let result = work.await;
        timer.finish(result.as_ref().map_or_else(Categorized::category, |_| "success"));
        result
    }
}

/// Measures one reconcile.
pub struct ReconcileTimer<'a> {
    metrics: &'a Metrics,
    controller: &'static str,
    started: Instant,
}

impl ReconcileTimer<'_> {
    /// Records the duration and the outcome (`success` or an error category).
    pub fn finish(self, outcome: &'static str) {
        let labels = ControllerLabels { controller: self.controller };
        self.metrics.duration.get_or_create(&labels).observe(self.started.elapsed().as_secs_f64());
        self.metrics.reconciles.get_or_create(&OutcomeLabels { controller: self.controller, outcome }).inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconcile_outcomes_are_exported() {
        let mut registry = Registry::default();
        let metrics = Metrics::new(&mut registry, &["tenant", "integration"]);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(text.contains(r#"bizosaas_reconciles_total{controller="integration",outcome="success"} 0"#), "{text}");
        metrics.start("tenant").finish("success");
        metrics.start("tenant").finish("database");
        metrics.write("tenant", "Namespace", "apply");
        metrics.child_read("tenant", "Secret");
        text.clear();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(text.contains(r#"bizosaas_reconciles_total{controller="tenant",outcome="success"} 1"#), "{text}");
        assert!(text.contains(r#"bizosaas_reconciles_total{controller="tenant",outcome="database"} 1"#));
        assert!(text.contains(r#"bizosaas_api_writes_total{controller="tenant",kind="Namespace",verb="apply"} 1"#));
        assert!(text.contains(r#"bizosaas_child_reads_total{controller="tenant",kind="Secret"} 1"#), "{text}");
        assert!(text.contains("bizosaas_reconcile_duration_seconds_count{controller=\"tenant\"} 2"));
    }
}
