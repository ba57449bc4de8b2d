//! Prometheus metrics shared by the controllers, served by the operator at `/metrics`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;
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

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReadinessLabels {
    pub kind: &'static str,
    /// The status of the `Ready` condition: `True`, `False` or `Unknown` (also when absent).
    pub ready: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PhaseLabels {
    pub phase: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TenantLabels {
    pub tenant: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    /// A stable category, e.g. `refused` or `unavailable`.
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// `get`, `list`, `watch`, `create`, `update`, `patch` or `delete`.
    pub verb: &'static str,
    /// The resource, with its subresource: `secrets`, `tenants/status`.
    pub resource: String,
    /// The HTTP status code, or `error` when no response came.
    pub code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VersionLabels {
    pub version: &'static str,
}

/// Reconcile counters and durations per controller, API writes per kind, the reads of
/// children that a watch could not vouch for, the watches held in tenant namespaces, the
/// operator's requests to the API server, and the standing of every object it manages.
pub struct Metrics {
    pub reconciles: Family<OutcomeLabels, Counter>,
    pub duration: Family<ControllerLabels, Histogram>,
    pub active: Family<ControllerLabels, Gauge>,
    pub retries: Family<ControllerLabels, Counter>,
    pub backlog: Family<ControllerLabels, Gauge>,
    pub writes: Family<WriteLabels, Counter>,
    pub child_reads: Family<ReadLabels, Counter>,
    pub namespace_watches: Family<KindLabels, Gauge>,
    pub watch_connections: Gauge,
    pub kube_requests: Family<RequestLabels, Counter>,
    pub leader: Gauge,
    pub objects: Family<ReadinessLabels, Gauge>,
    pub stalled: Family<KindLabels, Gauge>,
    pub oldest_not_ready: Family<KindLabels, Gauge<f64, AtomicU64>>,
    pub workflow_runs: Family<PhaseLabels, Gauge>,
    pub workflow_runs_finished: Family<PhaseLabels, Counter>,
    pub token_budgets: Family<TenantLabels, Gauge>,
    pub usage_exported: Family<TenantLabels, Counter>,
    pub usage_export_failures: Family<ReasonLabels, Counter>,
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
            active: Family::default(),
            retries: Family::default(),
            backlog: Family::default(),
            writes: Family::default(),
            child_reads: Family::default(),
            namespace_watches: Family::default(),
            watch_connections: Gauge::default(),
            kube_requests: Family::default(),
            leader: Gauge::default(),
            objects: Family::default(),
            stalled: Family::default(),
            oldest_not_ready: Family::default(),
            workflow_runs: Family::default(),
            workflow_runs_finished: Family::default(),
            token_budgets: Family::default(),
            usage_exported: Family::default(),
            usage_export_failures: Family::default(),
        };
        let sub = registry.sub_registry_with_prefix("bizosaas");
        let build_info = Family::<VersionLabels, Gauge>::default();
        build_info.get_or_create(&VersionLabels { version: env!("CARGO_PKG_VERSION") }).set(1);
        sub.register("build_info", "The operator's version; always 1", build_info);
        sub.register(
            "leader",
            "1 while this replica runs the controllers (it holds the Lease, or runs without leader election)",
            metrics.leader.clone(),
        );
        sub.register("reconciles", "Reconciles by controller and outcome", metrics.reconciles.clone());
        sub.register("reconcile_duration_seconds", "Time spent in one reconcile", metrics.duration.clone());
        sub.register("reconciles_active", "Reconciles running now", metrics.active.clone());
        sub.register("reconcile_retries", "Reconciles requeued after an error", metrics.retries.clone());
        sub.register(
            "reconcile_backlog",
            "Objects whose latest generation the controller has not reconciled yet",
            metrics.backlog.clone(),
        );
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
        sub.register(
            "kube_requests",
            "Requests to the Kubernetes API by verb, resource and status code",
            metrics.kube_requests.clone(),
        );
        sub.register("objects", "Objects by kind and the status of their Ready condition", metrics.objects.clone());
        sub.register(
            "objects_stalled",
            "Objects with Stalled=True: only a change of spec or platform helps",
            metrics.stalled.clone(),
        );
        sub.register(
            "objects_not_ready_oldest_seconds",
            "How long the object of the kind that has been not Ready the longest has been so (0 when all are Ready)",
            metrics.oldest_not_ready.clone(),
        );
        sub.register("workflow_runs", "WorkflowRuns by phase", metrics.workflow_runs.clone());
        sub.register(
            "workflow_runs_finished",
            "WorkflowRuns this operator saw to an end, by the phase they ended in",
            metrics.workflow_runs_finished.clone(),
        );
        sub.register(
            "tenant_token_budget",
            "The monthly token budget of each Tenant that has one (plan or override)",
            metrics.token_budgets.clone(),
        );
        sub.register(
            "usage_events_exported",
            "Usage events of each Tenant that Lago accepted (or already held)",
            metrics.usage_exported.clone(),
        );
        sub.register(
            "usage_export_failures",
            "Usage exports to Lago that failed, by reason",
            metrics.usage_export_failures.clone(),
        );
        // An `increase()` over a counter born at its first event misses that event.
        for reason in crate::lago::FAILURE_REASONS {
            metrics.usage_export_failures.get_or_create(&ReasonLabels { reason }).inc_by(0);
        }
        for phase in ["Succeeded", "Failed", "Cancelled"] {
            let _ = metrics.workflow_runs_finished.get_or_create(&PhaseLabels { phase });
        }
        for &controller in controllers {
            let labels = ControllerLabels { controller };
            metrics.reconciles.get_or_create(&OutcomeLabels { controller, outcome: "success" }).inc_by(0);
            let _ = metrics.duration.get_or_create(&labels);
            let _ = metrics.active.get_or_create(&labels);
            let _ = metrics.retries.get_or_create(&labels);
            let _ = metrics.backlog.get_or_create(&labels);
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

    /// Counts one request to the Kubernetes API and its response.
    pub fn kube_request(&self, verb: &'static str, resource: String, code: Option<u16>) {
        let code = code.map_or_else(|| "error".to_string(), |c| c.to_string());
        self.kube_requests.get_or_create(&RequestLabels { verb, resource, code }).inc();
    }

    /// Counts one reconcile requeued after an error.
    pub fn retry(&self, controller: &'static str) {
        self.retries.get_or_create(&ControllerLabels { controller }).inc();
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
        let active = self.active.get_or_create(&ControllerLabels { controller }).clone();
        active.inc();
        let _done = scopeguard(move || {
            active.dec();
        });
        let timer = self.start(controller);
        let result = work.await;
        timer.finish(result.as_ref().map_or_else(Categorized::category, |_| "success"));
        result
    }
}

/// Runs `f` when dropped: a reconcile cancelled at shutdown still leaves the active count.
fn scopeguard(f: impl FnOnce()) -> impl Drop {
    struct Guard<F: FnOnce()>(Option<F>);
    impl<F: FnOnce()> Drop for Guard<F> {
        fn drop(&mut self) {
            if let Some(f) = self.0.take() {
                f();
            }
        }
    }
    Guard(Some(f))
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
