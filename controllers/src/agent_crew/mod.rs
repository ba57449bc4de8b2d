//! The AgentCrew controller: validates templates, models and Integrations, renders the crew
//! into a ConfigMap and runs the `bizosaas-agent` runtime as a Deployment with a Service.

pub mod build;
pub mod render;

use crate::apply::Applier;
use crate::conditions::{self, Observed};
use crate::context::Context;
use crate::integration;
use crate::metrics::Categorized;
use bizosaas_crds::agent_crew::AgentCrewStatus;
use bizosaas_crds::common::READY;
use bizosaas_crds::{AgentCrew, Integration, LABEL_MANAGED_BY, LABEL_TENANT, MANAGED_BY};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::core::DeserializeGuard;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};
use render::IntegrationRef;
use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tracing::{instrument, warn};

/// Controller name used in metrics, logs and events.
pub const CONTROLLER: &str = "agentcrew";
pub const INTEGRATIONS_RESOLVED: &str = "IntegrationsResolved";
pub const AVAILABLE: &str = "Available";

/// Why a reconcile failed, with a stable category for metrics.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API request failed: {0}")]
    Kube(#[from] kube::Error),
    #[error("the AgentCrew could not be read: {0}")]
    InvalidObject(String),
}

impl Categorized for Error {
    fn category(&self) -> &'static str {
        match self {
            Error::Kube(_) => "kubernetes",
            Error::InvalidObject(_) => "invalid_object",
        }
    }
}

/// Runs the AgentCrew controller until `shutdown` resolves.
pub async fn run(ctx: Arc<Context>, shutdown: impl Future<Output = ()> + Send + Sync + 'static) {
    let client = ctx.client.clone();
    let ours = watcher::Config::default().labels(&format!("{LABEL_MANAGED_BY}={MANAGED_BY}"));
    let controller =
        Controller::new(Api::<DeserializeGuard<AgentCrew>>::all(client.clone()), watcher::Config::default());
    let crews = controller.store();
    controller
        .owns(Api::<ConfigMap>::all(client.clone()), ours.clone())
        .owns(Api::<Deployment>::all(client.clone()), ours.clone())
        .owns(Api::<Service>::all(client.clone()), ours.clone())
        .owns(Api::<PodDisruptionBudget>::all(client.clone()), ours)
        // A crew follows the Integrations it uses: creation, rotation (content hash), removal.
        .watches(Api::<Integration>::all(client), watcher::Config::default(), move |integration: Integration| {
            let namespace = integration.namespace();
            let name = integration.name_any();
            crews
                .state()
                .into_iter()
                .filter_map(|guard| guard.0.as_ref().ok().cloned())
                .filter(|crew| {
                    crew.namespace() == namespace && render::referenced_integrations(&crew.spec).contains(&name)
                })
                .map(|crew| ObjectRef::new(&crew.name_any()).within(&crew.namespace().unwrap_or_default()))
                .collect::<Vec<ObjectRef<DeserializeGuard<AgentCrew>>>>()
        })
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|_| futures::future::ready(()))
        .await;
}

#[instrument(skip_all, fields(crew = %guard.0.as_ref().map(|c| c.name_any()).unwrap_or_default()))]
async fn reconcile(guard: Arc<DeserializeGuard<AgentCrew>>, ctx: Arc<Context>) -> Result<Action, Error> {
    let work = async {
        match &guard.0 {
            Ok(crew) => apply(crew, &ctx).await,
            Err(invalid) => Err(Error::InvalidObject(invalid.to_string())),
        }
    };
    ctx.metrics.measure(CONTROLLER, work).await
}

fn error_policy(_guard: Arc<DeserializeGuard<AgentCrew>>, error: &Error, _ctx: Arc<Context>) -> Action {
    warn!(category = error.category(), error = %error, "agent crew reconcile failed");
    Action::requeue(Duration::from_secs(15))
}

async fn apply(crew: &AgentCrew, ctx: &Context) -> Result<Action, Error> {
    if crew.metadata.deletion_timestamp.is_some() {
        // Every child is owned by the crew; the garbage collector removes them.
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
    let tenant = Api::<Namespace>::all(ctx.client.clone())
        .get_opt(&namespace)
        .await?
        .and_then(|ns| ns.labels().get(LABEL_TENANT).cloned())
        .unwrap_or_else(|| namespace.clone());

    // Validate and render.
    let config = match render::crew_config(&name, &namespace, &tenant, &crew.spec, &refs) {
        Ok(config) => config,
        Err(e) => {
            let observed = vec![Observed::failed(INTEGRATIONS_RESOLVED, "IntegrationNotFound", e.to_string())];
            write_status(crew, ctx, observed, agents, None).await?;
            return Ok(Action::requeue(Duration::from_secs(300)));
        }
    };
    let unresolved: Vec<&String> = referenced.iter().filter(|r| !hashes.contains_key(*r)).collect();
    if !unresolved.is_empty() {
        let message = format!(
            "Integration {} has no resolved credentials yet",
            unresolved.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
        );
        let observed = vec![Observed::failed(INTEGRATIONS_RESOLVED, "CredentialsNotResolved", message)];
        write_status(crew, ctx, observed, agents, None).await?;
        return Ok(Action::requeue(Duration::from_secs(60)));
    }

    // Build and apply.
    let objects = build::objects(crew, &config, &hashes, &ctx.config.agent_image);
    let a = Applier { metrics: &ctx.metrics, controller: CONTROLLER, compare: true };
    let client = ctx.client.clone();
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
    let (available, ready_replicas) = availability(crew, live.as_ref());
    let observed = vec![
        Observed::ok(INTEGRATIONS_RESOLVED, "Resolved", format!("Integrations {} are resolved", referenced.join(", "))),
        available,
    ];
    let converged = observed.iter().all(|o| o.status);
    write_status(crew, ctx, observed, agents, ready_replicas).await?;
    Ok(Action::requeue(Duration::from_secs(if converged { 600 } else { 30 })))
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

async fn write_status(
    crew: &AgentCrew,
    ctx: &Context,
    mut observed: Vec<Observed>,
    agents: Vec<String>,
    ready_replicas: Option<i32>,
) -> Result<(), Error> {
    let failing = observed.iter().find(|o| !o.status).cloned();
    observed.push(match failing {
        None => Observed::ok(READY, "Ready", "The crew's runtime is available"),
        Some(f) => Observed::failed(READY, f.reason, f.message),
    });
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
    let api: Api<AgentCrew> = Api::namespaced(ctx.client.clone(), &crew.namespace().unwrap_or_default());
    api.patch_status(&crew.name_any(), &PatchParams::default(), &Patch::Merge(serde_json::json!({"status": next})))
        .await?;
    ctx.metrics.write(CONTROLLER, "AgentCrew", "status");
    ctx.record_transitions(&crew.object_ref(&()), &previous.conditions, &next.conditions).await;
    Ok(())
}
