//! The AgentCrew controller: validates templates, models and Integrations, renders the crew
//! into a ConfigMap and runs the `bizosaas-agent` runtime as a Deployment with a Service, behind
//! an egress NetworkPolicy to the endpoints of its Integrations (and to the trace collector,
//! when the operator passes the runtimes one).

pub mod build;
pub mod network;
pub mod render;
mod traces;
mod triggers;

use crate::apply::Applier;
use crate::conditions::{self, Observed};
use crate::context::Context;
use crate::egress::resolve::{OnBehalfOf, ResolveError, Resolver, ServiceKey};
use crate::egress::{ResolvedEndpoint, Target};
use crate::integration;
use crate::scaffold::Scaffold;
use crate::tenant_namespaces::wanted_by;
use bizosaas_crds::agent_crew::AgentCrewStatus;
use bizosaas_crds::common::READY;
use bizosaas_crds::tenant::SecretsBackend;
use bizosaas_crds::{AgentCrew, Integration, LABEL_MANAGED_BY, LABEL_TENANT, MANAGED_BY, Tenant};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::ClusterRoleBinding;
use kube::api::{Api, ListParams};
use kube::core::DeserializeGuard;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::reflector::{self, reflector};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Resource, ResourceExt};
use render::IntegrationRef;
use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
pub use traces::TRACES_ALLOWED;
use traces::{resolve_collector, traces_condition};

/// Controller name used in metrics, logs and events.
pub const CONTROLLER: &str = "agentcrew";
pub const INTEGRATIONS_RESOLVED: &str = "IntegrationsResolved";
pub const EGRESS_ALLOWED: &str = "EgressAllowed";
pub const AVAILABLE: &str = "Available";

/// Why a reconcile failed: an API call, or an object that no longer deserialises.
pub use crate::scaffold::Error;

/// State the AgentCrew controller keeps between reconciles.
struct CrewContext {
    scaffold: Scaffold,
    services: Arc<triggers::ServiceDependencies>,
}

/// Runs the AgentCrew controller until `shutdown` resolves.
pub async fn run(ctx: Arc<Context>, shutdown: impl Future<Output = ()> + Send + Sync + 'static) {
    let client = ctx.client.clone();
    let ours = watcher::Config::default().labels(&format!("{LABEL_MANAGED_BY}={MANAGED_BY}"));
    let (reader, writer) = reflector::store();
    let events =
        reflector(writer, watcher(Api::<DeserializeGuard<AgentCrew>>::all(client.clone()), watcher::Config::default()))
            .default_backoff();
    // Deployments are watched only in the namespaces crews are in.
    let (events, crew_namespaces) =
        wanted_by(events, |crew: &DeserializeGuard<AgentCrew>| crew.meta().namespace.clone());
    let controller = Controller::for_stream(events.applied_objects(), reader);
    let crews = controller.store();
    let _census = crate::census::spawn(crews.clone(), CONTROLLER, ctx.metrics.clone(), |_| {});
    let tenant_crews = crews.clone();
    let services = Arc::new(triggers::ServiceDependencies::default());
    let dependents = services.clone();
    controller
        .owns(Api::<ConfigMap>::all(client.clone()), ours.clone())
        .owns_stream(ctx.tenant_namespaces.watch::<Deployment>(ours.clone(), Some(crew_namespaces)))
        .owns(Api::<Service>::all(client.clone()), ours.clone())
        .owns(Api::<PodDisruptionBudget>::all(client.clone()), ours.clone())
        .owns(Api::<NetworkPolicy>::all(client.clone()), ours)
        // A crew follows the Integrations it uses: creation, endpoint, rotation (content hash),
        // removal; not their health checks.
        .watches_stream(triggers::integration_changes(client.clone()), move |integration: Integration| {
            triggers::crews_using(&crews, &integration)
        })
        // Its tenant being suspended or resumed, or changing plan or token budget.
        .watches_stream(triggers::tenant_changes(client.clone()), move |tenant| {
            triggers::crews_of(&tenant_crews, &tenant)
        })
        // And the endpoints of the Services its egress policy allows.
        .watches_stream(triggers::endpoint_slice_changes(client), move |slice| {
            ServiceKey::of_slice(&slice).map(|service| dependents.dependents(&service)).unwrap_or_default()
        })
        .with_config(crate::scaffold::controller_config())
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, Arc::new(CrewContext { scaffold: Scaffold::new(CONTROLLER, ctx), services }))
        .for_each(|_| futures::future::ready(()))
        .await;
}

async fn reconcile(guard: Arc<DeserializeGuard<AgentCrew>>, cctx: Arc<CrewContext>) -> Result<Action, Error> {
    cctx.scaffold.reconcile(&guard, |crew| apply(crew, &cctx)).await
}

fn error_policy(guard: Arc<DeserializeGuard<AgentCrew>>, error: &Error, cctx: Arc<CrewContext>) -> Action {
    cctx.scaffold.error_policy(&guard, error)
}

async fn apply(crew: &AgentCrew, cctx: &CrewContext) -> Result<Action, Error> {
    let ctx = cctx.scaffold.ctx.as_ref();
    let crew_ref = ObjectRef::new(&crew.name_any()).within(&crew.namespace().unwrap_or_default());
    if crew.metadata.deletion_timestamp.is_some() {
        // Every child is owned by the crew; the garbage collector removes them.
        cctx.services.forget(&crew_ref);
        return Ok(Action::await_change());
    }
    let namespace = crew.namespace().unwrap_or_default();
    let name = crew.name_any();
    let agents: Vec<String> =
        crew.spec.agents.iter().map(render::resolve_agent).map(|a| format!("{} ({})", a.name, a.role)).collect();

    // Dereference: the Integrations the crew uses, and the tenant that owns the namespace.
    let integrations =
        Api::<Integration>::namespaced(ctx.client.clone(), &namespace).list(&ListParams::default()).await?;
    let refs: BTreeMap<String, IntegrationRef> = integrations
        .iter()
        .filter_map(|i| {
            let endpoint = integration::endpoint(&i.spec)?;
            Some((i.name_any(), IntegrationRef { type_: i.spec.type_, endpoint }))
        })
        .collect();
    let referenced = render::referenced_integrations(&crew.spec);
    let hashes: BTreeMap<String, String> = integrations
        .iter()
        .filter(|i| referenced.contains(&i.name_any()))
        .filter_map(|i| Some((i.name_any(), i.status.as_ref()?.content_hash.clone()?)))
        .collect();
    let namespace_object = Api::<Namespace>::all(ctx.client.clone()).get_opt(&namespace).await?;
    let tenant_label = namespace_object.as_ref().and_then(|ns| ns.labels().get(LABEL_TENANT).cloned());
    let Some(tenant) = tenant_label else {
        // Outside a tenant namespace there is no quota, no default-deny policy and no
        // `tenant-workload` ServiceAccount: nothing is created.
        let message = format!(
            "Namespace {namespace} belongs to no tenant: crews run only in a Tenant's namespace (tenant-<name>)"
        );
        let observed = vec![Observed::failed(AVAILABLE, "NoTenantNamespace", message)];
        write_status(crew, &cctx.scaffold, observed, agents, None).await?;
        return Ok(Action::requeue(Duration::from_secs(300)));
    };

    // A suspended tenant runs nothing: the runtime is scaled to zero, the rest is kept.
    let tenant_object = Api::<Tenant>::all(ctx.client.clone()).get_opt(&tenant).await?;
    let suspended = tenant_object.as_ref().is_some_and(|t| t.spec.suspended);
    // Memory lives in the tenant database, whose credentials a Vault-backed tenant keeps in
    // Vault only: the runtime would wait for a DATABASE_URL that never comes.
    let backend = tenant_object.as_ref().map(|t| t.spec.secrets.backend);
    if let Some(message) = memory_refusal(&crew.spec, &tenant, backend) {
        let observed = vec![Observed::failed(AVAILABLE, "MemoryNeedsDatabaseSecret", message)];
        write_status(crew, &cctx.scaffold, observed, agents, None).await?;
        return Ok(Action::requeue(Duration::from_secs(300)));
    }

    // Validate and render.
    let mut config = match render::crew_config(&name, &namespace, &tenant, &crew.spec, &refs) {
        Ok(config) => config,
        Err(e) => {
            let observed = vec![Observed::failed(INTEGRATIONS_RESOLVED, "IntegrationNotFound", e.to_string())];
            write_status(crew, &cctx.scaffold, observed, agents, None).await?;
            return Ok(Action::requeue(Duration::from_secs(300)));
        }
    };
    // The tenant's month, which every crew of the tenant spends from (0 is unlimited).
    config.tenant_monthly_tokens = tenant_object
        .as_ref()
        .map(|t| ctx.config.plans.effective(t.spec.plan, t.spec.quota.as_ref()).monthly_tokens)
        .filter(|budget| *budget > 0);
    let unresolved: Vec<&String> = referenced.iter().filter(|r| !hashes.contains_key(*r)).collect();
    if !unresolved.is_empty() {
        let message = format!(
            "Integration {} has no resolved credentials yet",
            unresolved.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
        );
        let observed = vec![Observed::failed(INTEGRATIONS_RESOLVED, "CredentialsNotResolved", message)];
        write_status(crew, &cctx.scaffold, observed, agents, None).await?;
        return Ok(Action::requeue(Duration::from_secs(60)));
    }

    // Dereference the endpoints the crew's egress policy allows.
    let a = Applier { metrics: &ctx.metrics, controller: CONTROLLER, compare: true, known: None };
    let client = ctx.client.clone();
    let policies = Api::<NetworkPolicy>::namespaced(client.clone(), &namespace);
    let (egress, traces) = {
        let on_behalf_of = OnBehalfOf { namespace: &namespace, tenant: &tenant };
        let mut resolved = resolve_endpoints(&referenced, &refs, on_behalf_of, ctx).await?;
        // The collector the runtime sends its traces to, when there is one.
        let collector = resolve_collector(ctx.config.crew_otlp_endpoint.as_deref(), ctx).await?;
        resolved.services.extend(collector.as_ref().and_then(|c| c.service.clone()));
        cctx.services.record(crew_ref, resolved.services);
        // The runtime reviews its callers' tokens with the API server.
        resolved.endpoints.push(ResolvedEndpoint { name: "the API server".into(), sockets: api_server(ctx).await? });
        let collector_sockets = collector.as_ref().and_then(|c| c.resolved.as_ref().ok());
        let built = network::egress_policy(crew, &resolved.endpoints, collector_sockets);
        a.ensure(&policies, &built.policy).await?;
        let mut problems = built.refused.iter().map(|r| r.to_string()).collect::<Vec<_>>();
        problems.extend(resolved.unresolved);
        let traces = collector.map(|c| traces_condition(&name, &c, &built.traces_refused));
        (egress_condition(&name, &referenced, !built.refused.is_empty(), &problems), traces)
    };

    // Build and apply.
    if let Some(ns) = &namespace_object {
        let bindings = Api::<ClusterRoleBinding>::all(client.clone());
        a.ensure(&bindings, &build::token_review_binding(ns)).await?;
    }
    let platform = ctx.config.platform_callers();
    let mut objects = build::objects(crew, &config, &hashes, &ctx.config.agent_image, &platform);
    build::with_traces(&mut objects, crew, ctx.config.crew_otlp_endpoint.as_deref());
    if suspended {
        build::scale_to_zero(&mut objects);
    }
    a.ensure(&Api::<ConfigMap>::namespaced(client.clone(), &namespace), &objects.config_map).await?;
    let deployments = Api::<Deployment>::namespaced(client.clone(), &namespace);
    a.ensure(&deployments, &objects.deployment).await?;
    a.ensure(&Api::<Service>::namespaced(client.clone(), &namespace), &objects.service).await?;
    let pdbs = Api::<PodDisruptionBudget>::namespaced(client, &namespace);
    let keep: BTreeSet<String> = match &objects.pdb {
        Some(pdb) => {
            a.ensure(&pdbs, pdb).await?;
            BTreeSet::from([build::object_name(&name)])
        }
        None => BTreeSet::new(),
    };
    a.prune(&pdbs, &build::crew_selector(crew), &keep).await?;

    // Status from the Deployment.
    let live = deployments.get_opt(&build::object_name(&name)).await?;
    let (available, ready_replicas) = if suspended {
        let message = format!("Tenant {tenant} is suspended: the runtime is scaled to zero until it resumes");
        (Observed::failed(AVAILABLE, "TenantSuspended", message), Some(0))
    } else {
        availability(crew, live.as_ref())
    };
    let mut observed = vec![
        Observed::ok(INTEGRATIONS_RESOLVED, "Resolved", format!("Integrations {} are resolved", referenced.join(", "))),
        egress,
        available,
    ];
    observed.extend(traces);
    // A refused collector changes only with the operator's configuration (a restart, which
    // reconciles every crew) or its DNS answers: no reason to look again every 30 s.
    let converged = observed.iter().all(|o| o.status || o.reason == "TracesEndpointRefused");
    write_status(crew, &cctx.scaffold, observed, agents, ready_replicas).await?;
    Ok(Action::requeue(Duration::from_secs(if converged { 600 } else { 30 })))
}

/// The API server's addresses as its pods see them after kube-proxy (the endpoints of
/// `default/kubernetes`).
async fn api_server(ctx: &Context) -> Result<BTreeSet<std::net::SocketAddr>, Error> {
    let slices = Api::<EndpointSlice>::namespaced(ctx.client.clone(), "default")
        .list(&ListParams::default().labels("kubernetes.io/service-name=kubernetes"))
        .await?;
    let mut sockets = BTreeSet::new();
    for slice in &slices {
        let ports: Vec<u16> =
            slice.ports.iter().flatten().filter_map(|p| p.port.and_then(|p| u16::try_from(p).ok())).collect();
        for address in slice.endpoints.iter().flat_map(|e| &e.addresses) {
            let Ok(ip) = address.parse::<std::net::IpAddr>() else { continue };
            sockets.extend(ports.iter().map(|port| std::net::SocketAddr::new(ip, *port)));
        }
    }
    Ok(sockets)
}

/// Why a crew cannot run on its tenant, if it cannot: memory needs the tenant database,
/// and the runtime reads that database's credentials only from the operator's
/// `tenant-database` Secret, which a Vault-backed tenant does not have.
fn memory_refusal(
    spec: &bizosaas_crds::agent_crew::AgentCrewSpec,
    tenant: &str,
    backend: Option<SecretsBackend>,
) -> Option<String> {
    let memory = spec.memory.as_ref().is_some_and(|m| m.enabled);
    (memory && backend == Some(SecretsBackend::Vault)).then(|| {
        format!(
            "memory needs the tenant database, and Tenant {tenant} keeps its database credentials in Vault \
             (tenants/{tenant}/database), which crew runtimes do not read: set spec.memory.enabled to false \
             (runs are then kept in the runtime's memory) or use a Tenant with secrets.backend Kubernetes"
        )
    })
}

/// The crew's Integration endpoints after the dereference step.
struct ResolvedEndpoints {
    endpoints: Vec<ResolvedEndpoint>,
    /// Why an endpoint has no addresses, one sentence each.
    unresolved: Vec<String>,
    /// The Services named by endpoints, resolved or not: a change of their endpoints (or their
    /// creation) re-derives the policy.
    services: BTreeSet<ServiceKey>,
}

/// Resolves the endpoint of every Integration the crew uses, all at once: IP literals as they
/// are, Services through their EndpointSlices, other names through DNS.
async fn resolve_endpoints(
    referenced: &[String],
    refs: &BTreeMap<String, IntegrationRef>,
    on_behalf_of: OnBehalfOf<'_>,
    ctx: &Context,
) -> Result<ResolvedEndpoints, Error> {
    let resolver = &Resolver::new(ctx.client.clone());
    let mut resolved = ResolvedEndpoints { endpoints: Vec::new(), unresolved: Vec::new(), services: BTreeSet::new() };
    let mut lookups = Vec::new();
    for name in referenced {
        let Some(integration) = refs.get(name) else { continue };
        match Target::from_url(&integration.endpoint) {
            Ok(target) => {
                resolved.services.extend(ServiceKey::of(&target));
                lookups.push(async move { (name, resolver.resolve(&target, Some(on_behalf_of)).await) });
            }
            Err(e) => resolved.unresolved.push(format!("Integration {name}: {e}")),
        }
    }
    for (name, result) in futures::future::join_all(lookups).await {
        match result {
            Ok(sockets) => resolved.endpoints.push(ResolvedEndpoint { name: format!("Integration {name}"), sockets }),
            Err(ResolveError::Kube(e)) => return Err(e.into()),
            Err(e) => resolved.unresolved.push(format!("Integration {name}: {e}")),
        }
    }
    Ok(resolved)
}

/// `EgressAllowed`: every endpoint allowed, or which were refused or unresolved.
fn egress_condition(crew: &str, referenced: &[String], refused: bool, problems: &[String]) -> Observed {
    let policy = network::policy_name(crew);
    if problems.is_empty() {
        let message = format!("NetworkPolicy {policy} allows the endpoints of Integrations {}", referenced.join(", "));
        return Observed::ok(EGRESS_ALLOWED, "Allowed", message);
    }
    let reason = if refused { "EndpointRefused" } else { "EndpointUnresolved" };
    let message = format!("NetworkPolicy {policy} allows the other endpoints; {}", problems.join("; "));
    Observed::failed(EGRESS_ALLOWED, reason, message)
}

/// Whether the runtime is available, and why not: a quota that refuses the pods is named.
fn availability(crew: &AgentCrew, live: Option<&Deployment>) -> (Observed, Option<i32>) {
    let status = live.and_then(|d| d.status.clone()).unwrap_or_default();
    let ready = status.ready_replicas.unwrap_or(0);
    let wanted = crew.spec.replicas;
    let quota_failure = status.conditions.iter().flatten().find(|c| {
        c.type_ == "ReplicaFailure"
            && c.status == "True"
            && c.message.as_deref().is_some_and(|m| m.contains("exceeded quota"))
    });
    let current = live.is_some_and(|d| status.observed_generation >= d.metadata.generation);
    let observed = if let Some(failure) = quota_failure {
        Observed::failed(AVAILABLE, "QuotaExceeded", failure.message.clone().unwrap_or_default())
    } else if wanted == 0 {
        Observed::ok(AVAILABLE, "ScaledToZero", "spec.replicas is 0")
    } else if current
        && status.available_replicas.unwrap_or(0) >= wanted
        && status.updated_replicas.unwrap_or(0) >= wanted
    {
        Observed::ok(AVAILABLE, "Available", format!("{ready}/{wanted} runtime pods are ready"))
    } else {
        Observed::failed(AVAILABLE, "Progressing", format!("{ready}/{wanted} runtime pods are ready"))
    };
    (observed, Some(ready))
}

/// Failures that need a change of the crew, its references or the tenant's quota.
fn is_permanent(reason: &str) -> bool {
    matches!(
        reason,
        "NoTenantNamespace" | "IntegrationNotFound" | "EndpointRefused" | "QuotaExceeded" | "MemoryNeedsDatabaseSecret"
    )
}

/// `observed` with the `Ready` summary (and `Reconciling` or `Stalled`) of every condition but
/// `TracesAllowed`, which only reports.
fn summarized(observed: Vec<Observed>) -> Vec<Observed> {
    let ready = Observed::ok(READY, "Ready", "The crew's runtime is available");
    let (mut observed, reported): (Vec<Observed>, Vec<Observed>) =
        observed.into_iter().partition(|o| o.type_ != TRACES_ALLOWED);
    conditions::summarize(&mut observed, ready, is_permanent, |reason| reason == "TenantSuspended");
    observed.extend(reported);
    observed
}

async fn write_status(
    crew: &AgentCrew,
    scaffold: &Scaffold,
    observed: Vec<Observed>,
    agents: Vec<String>,
    ready_replicas: Option<i32>,
) -> Result<(), Error> {
    let observed = summarized(observed);
    let previous = crew.status.clone().unwrap_or_default();
    let generation = crew.metadata.generation;
    let next = AgentCrewStatus {
        ready_replicas: ready_replicas.or(previous.ready_replicas),
        endpoint: Some(build::endpoint(crew)),
        agents,
        tokens_used_this_month: previous.tokens_used_this_month,
        observed_generation: generation,
        conditions: conditions::merge(&previous.conditions, &observed, generation),
    };
    if next == previous {
        return Ok(());
    }
    let api: Api<AgentCrew> = Api::namespaced(scaffold.ctx.client.clone(), &crew.namespace().unwrap_or_default());
    scaffold.patch_status(&api, crew, &next, &previous.conditions, &next.conditions).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use traces::Collector;

    #[test]
    fn memory_on_a_vault_backed_tenant_is_refused_with_the_way_out() {
        let mut spec: bizosaas_crds::agent_crew::AgentCrewSpec = serde_json::from_value(serde_json::json!({
            "model": {"integration": "llm", "name": "m"},
            "agents": [{"name": "a", "role": "r", "goal": "g"}],
            "memory": {"enabled": true},
        }))
        .unwrap();
        let message = memory_refusal(&spec, "acme", Some(SecretsBackend::Vault)).unwrap();
        assert!(message.contains("tenants/acme/database") && message.contains("spec.memory.enabled"), "{message}");
        assert_eq!(memory_refusal(&spec, "acme", Some(SecretsBackend::Kubernetes)), None);
        assert_eq!(memory_refusal(&spec, "acme", None), None, "no Tenant: the namespace check speaks");
        spec.memory = None;
        assert_eq!(memory_refusal(&spec, "acme", Some(SecretsBackend::Vault)), None);
    }

    fn collector(resolved: Result<&[&str], &str>) -> Collector {
        Collector {
            target: "otel-collector.observability:4318".into(),
            service: None,
            resolved: match resolved {
                Ok(sockets) => {
                    Ok(crate::egress::tests::endpoint("the trace collector otel-collector.observability:4318", sockets))
                }
                Err(e) => Err(e.into()),
            },
        }
    }

    #[test]
    fn the_trace_collector_is_reported_without_holding_the_crew_back() {
        let allowed = traces_condition("growth-team", &collector(Ok(&["10.244.3.4:4318"])), &[]);
        assert_eq!((allowed.status, allowed.reason.as_str()), (true, "Allowed"));
        assert_eq!(
            allowed.message,
            "NetworkPolicy crew-growth-team-egress allows the trace collector otel-collector.observability:4318"
        );

        let metadata = collector(Ok(&["169.254.169.254:4318"]));
        let refused = crate::egress::admit(std::slice::from_ref(metadata.resolved.as_ref().unwrap())).refused;
        let refused = traces_condition("growth-team", &metadata, &refused);
        assert_eq!((refused.status, refused.reason.as_str()), (false, "TracesEndpointRefused"));
        assert!(refused.message.starts_with(
            "the trace collector otel-collector.observability:4318 resolves to 169.254.169.254, which is link-local"
        ));
        assert!(refused.message.contains("traces are dropped") && refused.message.contains("otel.crewEndpoint"));

        let unresolved = traces_condition(
            "growth-team",
            &collector(Err("Service observability/otel-collector has no endpoints")),
            &[],
        );
        assert_eq!((unresolved.status, unresolved.reason.as_str()), (false, "TracesEndpointUnresolved"));
        assert!(unresolved.message.contains("has no endpoints"), "{}", unresolved.message);

        // Ready and kstatus follow the other conditions only.
        let available = Observed::ok(AVAILABLE, "Available", "1/1 runtime pods are ready");
        let status = summarized(vec![available.clone(), refused.clone()]);
        let types: Vec<(&str, bool, &str)> = status.iter().map(|o| (o.type_, o.status, o.reason.as_str())).collect();
        assert_eq!(
            types,
            [(AVAILABLE, true, "Available"), (READY, true, "Ready"), (TRACES_ALLOWED, false, "TracesEndpointRefused")]
        );
        let starting = Observed::failed(AVAILABLE, "Progressing", "0/1 runtime pods are ready");
        let status = summarized(vec![starting, refused]);
        let ready = status.iter().find(|o| o.type_ == READY).unwrap();
        assert_eq!((ready.status, ready.reason.as_str()), (false, "Progressing"));
        assert!(status.iter().any(|o| o.type_ == conditions::RECONCILING && o.reason == "Progressing"));
    }
}
