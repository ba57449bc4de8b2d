//! What every reconcile gets: the client, the operator's configuration, metrics, events and
//! the PostgreSQL admin connection.

use crate::conditions;
use crate::metrics::Metrics;
use crate::postgres::Admin;
use crate::tenant::plans::PlanCatalog;
use crate::tenant::service_catalog::ServiceCatalog;
use crate::tenant_namespaces::TenantNamespaces;
use crate::vault::Vault;
use bizosaas_crds::common::{Condition, READY};
use k8s_openapi::api::core::v1::ObjectReference;
use kube::Client;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use std::sync::Arc;

/// Operator configuration, from flags and environment.
#[derive(Clone, Debug)]
pub struct Config {
    /// Namespace the operator runs in; tenant workloads may reach it.
    pub platform_namespace: String,
    /// Namespace of the ingress controller; tenant services accept traffic from it.
    pub ingress_namespace: String,
    /// Namespace of the Prometheus that scrapes the crews' runtimes; it may reach their
    /// port, nothing else of a tenant.
    pub scrape_namespace: Option<String>,
    /// Business services are served at `<service>.<tenant>.<baseDomain>`.
    pub base_domain: String,
    /// `ingressClassName` of the tenants' Ingresses; the cluster's default class when unset.
    pub ingress_class: Option<String>,
    /// cert-manager ClusterIssuer that issues each host's certificate (`cert-manager.io/cluster-issuer`).
    pub ingress_cluster_issuer: Option<String>,
    /// Default quotas per plan.
    pub plans: PlanCatalog,
    /// How each business service runs: image, port, probes, extra env, resources, command.
    pub services: ServiceCatalog,
    /// `host:port` tenant workloads use to reach PostgreSQL; defaults to the admin URL's.
    pub database_tenant_host: Option<String>,
    /// Mount of Vault's KV v2 engine that holds `tenants/<name>/...`.
    pub vault_kv_mount: String,
    /// Image of the `bizosaas-agent` runtime that AgentCrews run.
    pub agent_image: String,
    /// The operator's ServiceAccount (`namespace/name`): the crews' runtimes admit it.
    pub operator_service_account: Option<String>,
    /// The gateway's ServiceAccount (`namespace/name`): the crews' runtimes admit it too.
    pub gateway_service_account: Option<String>,
    /// Projected token file with the runtime audience; without it the operator asks the
    /// TokenRequest API for a token of `operator_service_account`.
    pub runtime_token_file: Option<std::path::PathBuf>,
    /// OTLP/HTTP endpoint the crews' runtimes export their traces to; none without it.
    pub crew_otlp_endpoint: Option<String>,
    /// Lago, where the usage of Tenants with `billing.lago` is exported; none without it.
    pub lago: Option<crate::lago::LagoConfig>,
}

impl Config {
    /// The ServiceAccounts a crew's runtime admits besides its own namespace's: the operator's
    /// and the gateway's, where configured.
    pub fn platform_callers(&self) -> Vec<String> {
        self.operator_service_account.iter().chain(&self.gateway_service_account).cloned().collect()
    }

    /// The operator's ServiceAccount as (namespace, name): `operator_service_account`, or
    /// `bizosaas-operator` in the platform namespace. Each tenant namespace binds it.
    pub fn operator_account(&self) -> (String, String) {
        self.operator_service_account
            .as_deref()
            .and_then(crate::runtime_auth::service_account)
            .unwrap_or_else(|| (self.platform_namespace.clone(), "bizosaas-operator".into()))
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            platform_namespace: "bizosaas-system".into(),
            ingress_namespace: "ingress-nginx".into(),
            scrape_namespace: None,
            base_domain: "bizosaas.local".into(),
            ingress_class: None,
            ingress_cluster_issuer: None,
            plans: PlanCatalog::default(),
            services: ServiceCatalog::default(),
            database_tenant_host: None,
            vault_kv_mount: "secret".into(),
            agent_image: concat!("bizosaas/bizosaas-agent:", env!("CARGO_PKG_VERSION")).into(),
            operator_service_account: None,
            gateway_service_account: None,
            runtime_token_file: None,
            crew_otlp_endpoint: None,
            lago: None,
        }
    }
}

/// Shared state of all reconciles.
pub struct Context {
    pub client: Client,
    pub config: Config,
    pub metrics: Arc<Metrics>,
    pub recorder: Recorder,
    /// `None` when the operator runs without a database: tenants then report it.
    pub postgres: Option<Admin>,
    /// `None` without a Vault connection: Vault-backed tenants and credentials report it.
    pub vault: Option<Arc<Vault>>,
    /// The tenant namespaces: where the operator may write, and watch what it may not list
    /// cluster-wide.
    pub tenant_namespaces: TenantNamespaces,
    /// Uids of the Tenants this process has applied at least once. A Tenant outside it and
    /// without status is new, so its children are written without being read first.
    pub applied_tenants: std::sync::Mutex<std::collections::HashSet<String>>,
    /// When each Tenant's database was last provisioned, and for which generation. Reconciles
    /// in between (triggered by its children) skip the DDL; a resync or a spec change redoes it.
    pub provisioned_databases: std::sync::Mutex<std::collections::HashMap<String, (Option<i64>, std::time::Instant)>>,
}

impl Config {
    /// Where the operator's token for the crews' run API comes from.
    pub fn runtime_token_source(&self) -> crate::runtime_auth::TokenSource {
        use crate::runtime_auth::{TokenSource, service_account};
        match (&self.runtime_token_file, self.operator_service_account.as_deref().and_then(service_account)) {
            (Some(path), _) => TokenSource::File(path.clone()),
            (None, Some((namespace, name))) => TokenSource::Request { namespace, name },
            (None, None) => TokenSource::None,
        }
    }
}

impl Context {
    /// Records an event for each condition that flipped: every failure, and `Ready` turning
    /// True. Successful sub-conditions stay quiet, so a healthy provisioning costs one event.
    pub async fn record_transitions(&self, object: &ObjectReference, previous: &[Condition], next: &[Condition]) {
        for condition in conditions::transitions(previous, next) {
            if condition.type_ != READY && condition.status == "True" {
                continue;
            }
            let event = Event {
                type_: if condition.status == "True" { EventType::Normal } else { EventType::Warning },
                reason: condition.reason.clone(),
                note: Some(condition.message.chars().take(1000).collect()),
                action: condition.type_.clone(),
                secondary: None,
            };
            if let Err(e) = self.recorder.publish(&event, object).await {
                tracing::warn!(error = %e, "could not record an event");
            }
        }
    }

    /// Builds the context and starts following the tenant namespaces (inside a Tokio runtime).
    pub fn new(
        client: Client,
        config: Config,
        metrics: Arc<Metrics>,
        postgres: Option<Admin>,
        vault: Option<Arc<Vault>>,
        watch_connections: crate::watch_connections::WatchConnections,
    ) -> Self {
        let reporter = Reporter { controller: crate::FIELD_MANAGER.into(), instance: std::env::var("POD_NAME").ok() };
        let recorder = Recorder::new(client.clone(), reporter);
        let tenant_namespaces = TenantNamespaces::start(client.clone(), watch_connections, metrics.clone());
        Self {
            tenant_namespaces,
            client,
            config,
            metrics,
            recorder,
            postgres,
            vault,
            applied_tenants: Default::default(),
            provisioned_databases: Default::default(),
        }
    }
}
