//! The Tenant controller's wiring: what it watches, the reconcile entry point and the
//! finalizer dispatch into `apply` or `finalize`.

use super::build::BuildError;
use super::child_stores::{ChildStores, index, reflect_whole};
use super::finalize::{self, FINALIZER};
use super::quota_wait::AwaitedQuotas;
use super::{CONTROLLER, apply, claims, database_egress};
use crate::census;
use crate::context::Context;
use crate::egress::resolve::SERVICE_NAME_LABEL;
use crate::metrics::{Categorized, TenantLabels};
use crate::postgres::DatabaseError;
use crate::scaffold::{ReconcileError, Scaffold};
use crate::seen::{ChildKey, Seen};
use crate::tenant_namespaces::wanted_by;
use crate::vault::VaultError;
use bizosaas_crds::{LABEL_MANAGED_BY, LABEL_TENANT, MANAGED_BY, Tenant};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{LimitRange, Namespace, ResourceQuota, Secret, Service, ServiceAccount};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{Ingress, NetworkPolicy};
use k8s_openapi::api::rbac::v1::RoleBinding;
use kube::api::Api;
use kube::core::DeserializeGuard;
use kube::core::PartialObjectMeta;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::reflector::{self, Store, reflector};
use kube::runtime::{PredicateConfig, WatchStreamExt, watcher};
use kube::{Resource, ResourceExt};
use std::future::Future;
use std::sync::Arc;

/// Why a reconcile failed, with a stable category for metrics.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API request failed: {0}")]
    Kube(#[from] kube::Error),
    #[error(transparent)]
    Build(#[from] BuildError),
    #[error(transparent)]
    Database(#[from] DatabaseError),
    #[error(transparent)]
    Vault(#[from] VaultError),
    #[error("the Tenant could not be read: {0}")]
    InvalidObject(String),
}

impl Categorized for Error {
    fn category(&self) -> &'static str {
        match self {
            Error::Kube(_) => "kubernetes",
            Error::Build(_) => "invalid_spec",
            Error::Database(_) => "database",
            Error::Vault(_) => "vault",
            Error::InvalidObject(_) => "invalid_object",
        }
    }
}

impl ReconcileError for Error {
    fn invalid_object(message: String) -> Self {
        Error::InvalidObject(message)
    }

    fn api_error(&self) -> Option<&kube::Error> {
        match self {
            Error::Kube(e) => Some(e),
            _ => None,
        }
    }
}

/// Runs the Tenant controller until `shutdown` resolves.
pub async fn run(ctx: Arc<Context>, shutdown: impl Future<Output = ()> + Send + Sync + 'static) {
    let client = ctx.client.clone();
    let ours = watcher::Config::default().labels(&format!("{LABEL_MANAGED_BY}={MANAGED_BY}"));
    // Children point back by label rather than owner reference: kube-runtime's `owns` would
    // give a cluster-scoped Tenant the child's namespace and so reconcile it twice at once.
    // The Tenant's own status and finalizer writes come back through the watch; only a change
    // a user makes (spec, labels, annotations, deletion) needs a reconcile.
    let (reader, writer) = reflector::store();
    let store = reader.clone();
    let every_tenant = reader.clone();
    let claimants = reader.clone();
    let _census = census::spawn(reader.clone(), CONTROLLER, ctx.metrics.clone(), token_budgets(&ctx));
    let _usage = super::usage::spawn(ctx.clone(), reader.clone());
    let _billing = super::billing::spawn(ctx.clone(), reader.clone());
    // Managed fields are dropped: nothing reads them, and they are a good part of each Tenant.
    let watched = watcher(Api::<DeserializeGuard<Tenant>>::all(client.clone()), watcher::Config::default())
        .modify(|guard| guard.meta_mut().managed_fields = None);
    let events = reflector(writer, watched).default_backoff();
    // Deployments are watched only where a Tenant runs business services.
    let (events, with_services) = wanted_by(events, |guard: &DeserializeGuard<Tenant>| {
        let tenant = guard.0.as_ref().ok().filter(|t| !t.spec.services.is_empty())?;
        Some(super::build::namespace_name(&tenant.name_any()))
    });
    let tenants = events.applied_objects().predicate_filter(user_change, PredicateConfig::default());
    // The children's metadata is kept, from the same watches, so that a converged reconcile
    // reads none of them.
    let (quotas, quotas_writer) = reflector::store();
    let children = ChildStores::new(quotas);
    // A child's watch event at the version this controller last wrote or checked echoes its
    // own write: only other changes (hand edits, deletions, the quota controller) reconcile.
    // Events held while a write was in flight that were someone else's change come back here.
    let (wake, woken) = tokio::sync::mpsc::unbounded_channel::<String>();
    let seen = Arc::new(Seen::waking(wake));
    let woken = futures::stream::unfold(woken, |mut woken| async move {
        woken.recv().await.map(|tenant| (ObjectRef::new(&tenant), woken))
    });
    let awaited_quotas = Arc::new(AwaitedQuotas::default());
    let quotas = unless_awaited(
        unless_echo(reflect_whole::<ResourceQuota>(&client, &ours, quotas_writer), &seen),
        &awaited_quotas,
    );
    let mut controller = Controller::for_stream(tenants, reader)
        .reconcile_on(woken)
        .watches_stream(unless_echo(index::<Namespace>(&client, &ours, children.namespaces.clone()), &seen), tenant_of)
        .watches_stream(quotas, tenant_of)
        .watches_stream(unless_echo(index::<LimitRange>(&client, &ours, children.limits.clone()), &seen), tenant_of)
        .watches_stream(
            unless_echo(index::<NetworkPolicy>(&client, &ours, children.policies.clone()), &seen),
            tenant_of,
        )
        .watches_stream(
            unless_echo(index::<ServiceAccount>(&client, &ours, children.accounts.clone()), &seen),
            tenant_of,
        )
        .watches_stream(unless_echo(index::<RoleBinding>(&client, &ours, children.bindings.clone()), &seen), tenant_of)
        // Secrets and Deployments only where the operator may read them: tenant namespaces.
        .watches_stream(unless_echo(ctx.tenant_namespaces.watch::<Secret>(ours.clone(), None), &seen), tenant_of)
        .watches_stream(
            unless_echo(ctx.tenant_namespaces.watch::<Deployment>(ours.clone(), Some(with_services)), &seen),
            tenant_of,
        )
        .watches_stream(unless_echo(index::<Service>(&client, &ours, children.services.clone()), &seen), tenant_of)
        .watches_stream(unless_echo(index::<Ingress>(&client, &ours, children.ingresses.clone()), &seen), tenant_of)
        .watches_stream(claims::domain_changes(client.clone()), move |changed| claims::affected(&claimants, &changed));
    if let Some(service) = database_egress::database_service(&ctx) {
        // The database Service's endpoints are what `allow-database` allows: when its pods
        // move, every tenant's policy follows.
        let api = Api::<PartialObjectMeta<EndpointSlice>>::namespaced(client.clone(), &service.namespace);
        let slices = watcher::Config::default().labels(&format!("{SERVICE_NAME_LABEL}={}", service.name));
        let changes = watcher(api, slices).default_backoff().touched_objects();
        controller = controller.watches_stream(changes, move |_| {
            store.state().iter().map(|t| ObjectRef::new(&t.name_any())).collect::<Vec<_>>()
        });
    }
    controller
        .with_config(crate::scaffold::controller_config())
        .graceful_shutdown_on(shutdown)
        .run(
            reconcile,
            error_policy,
            Arc::new(TenantContext {
                scaffold: Scaffold::new(CONTROLLER, ctx),
                tenants: every_tenant,
                children,
                seen,
                awaited_quotas,
            }),
        )
        .for_each(|_| futures::future::ready(()))
        .await;
}

/// Publishes each Tenant's monthly token budget (its plan's, or its override) and drops the
/// series of Tenants that are gone.
fn token_budgets(ctx: &Arc<Context>) -> impl Fn(&[Arc<DeserializeGuard<Tenant>>]) + Send + 'static {
    let (ctx, published) = (ctx.clone(), std::sync::Mutex::new(std::collections::BTreeSet::<String>::new()));
    move |tenants| {
        let mut now = std::collections::BTreeSet::new();
        for tenant in tenants.iter().filter_map(|guard| guard.0.as_ref().ok()) {
            let budget = ctx.config.plans.effective(tenant.spec.plan, tenant.spec.quota.as_ref()).monthly_tokens;
            if budget > 0 {
                let name = tenant.name_any();
                ctx.metrics.token_budgets.get_or_create(&TenantLabels { tenant: name.clone() }).set(budget);
                now.insert(name);
            }
        }
        let mut published = published.lock().expect("budgets lock");
        for gone in published.difference(&now) {
            ctx.metrics.token_budgets.remove(&TenantLabels { tenant: gone.clone() });
        }
        *published = now;
    }
}

/// Hash of what a user changes on a Tenant: generation (spec and deletion), labels and
/// annotations. Status and finalizer updates hash the same and are filtered out.
fn user_change(tenant: &DeserializeGuard<Tenant>) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    let meta = tenant.meta();
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    (meta.generation, &meta.labels, &meta.annotations, meta.deletion_timestamp.is_some()).hash(&mut hasher);
    Some(hasher.finish())
}

/// `children` without the changes that are this controller's own writes coming back, also
/// when one comes back before its write's answer (held until then, see [`Seen::is_echo`]).
fn unless_echo<K, S>(children: S, seen: &Arc<Seen>) -> impl futures::Stream<Item = S::Item> + Send + 'static
where
    K: Resource<DynamicType = ()> + Send + 'static,
    S: futures::Stream<Item = Result<K, watcher::Error>> + Send + 'static,
{
    let seen = seen.clone();
    children.try_filter(move |child| {
        let version = child.meta().resource_version.as_deref();
        let tenant = || child.labels().get(LABEL_TENANT).cloned();
        let echo = version.is_some_and(|v| seen.is_echo(&ChildKey::of(child), v, tenant));
        futures::future::ready(!echo)
    })
}

/// `quotas` without the changes a reconcile is waiting for: that reconcile sees them in the
/// quota store, which the watch has updated before they get here.
fn unless_awaited<S>(quotas: S, awaited: &Arc<AwaitedQuotas>) -> impl futures::Stream<Item = S::Item> + Send + 'static
where
    S: futures::Stream<Item = Result<ResourceQuota, watcher::Error>> + Send + 'static,
{
    let awaited = awaited.clone();
    quotas.try_filter(move |quota| {
        let held = quota.namespace().is_some_and(|ns| awaited.take_event(&ns));
        futures::future::ready(!held)
    })
}

/// The Tenant a child belongs to, from its `bizosaas.io/tenant` label.
fn tenant_of<K: Resource>(child: K) -> Option<ObjectRef<DeserializeGuard<Tenant>>> {
    child.labels().get(LABEL_TENANT).map(|name| ObjectRef::new(name))
}

/// What the Tenant controller's reconciles share: the scaffold, every Tenant for the claims
/// that span tenants (custom domains), the children's metadata, what was last seen of them
/// and which quotas are awaited.
pub(super) struct TenantContext {
    pub scaffold: Scaffold,
    pub tenants: Store<DeserializeGuard<Tenant>>,
    pub children: ChildStores,
    pub seen: Arc<Seen>,
    /// The quotas reconciles are waiting for, whose watch events need no reconcile.
    pub awaited_quotas: Arc<AwaitedQuotas>,
}

async fn reconcile(guard: Arc<DeserializeGuard<Tenant>>, t: Arc<TenantContext>) -> Result<Action, Error> {
    let s = &t.scaffold;
    if let Err(invalid) = &guard.0
        && invalid.metadata.deletion_timestamp.is_some()
        && invalid.metadata.finalizers.iter().flatten().any(|f| f == FINALIZER)
    {
        // Unreadable and being deleted: the finalizer must still run.
        let cleanup = finalize::cleanup_unreadable(&invalid.metadata, &invalid.error, &s.ctx);
        return s.ctx.metrics.measure(CONTROLLER, cleanup).await;
    }
    s.reconcile(&guard, |tenant| reconcile_tenant(tenant, &t)).await
}

fn error_policy(guard: Arc<DeserializeGuard<Tenant>>, error: &Error, t: Arc<TenantContext>) -> Action {
    t.scaffold.error_policy(&guard, error)
}

/// Holds a Tenant with a finalizer until its deletion policy has run. The finalizer is added
/// in the same reconcile that provisions the Tenant, while its namespace is created: nothing
/// that outlives a Tenant deleted meanwhile is written before the finalizer is on (the
/// namespace goes with its owner reference).
async fn reconcile_tenant(tenant: &Tenant, t: &TenantContext) -> Result<Action, Error> {
    let s = &t.scaffold;
    let has_finalizer = tenant.finalizers().iter().any(|f| f == FINALIZER);
    match (tenant.metadata.deletion_timestamp.is_some(), has_finalizer) {
        (true, false) => Ok(Action::await_change()),
        (true, true) => {
            let phase = tenant.status.as_ref().and_then(|s| s.phase).map(|p| format!("{p:?}"));
            let message = format!(
                "The Tenant is being deleted: applying deletionPolicy {:?} to its data",
                tenant.spec.database.deletion_policy
            );
            let mut tenant = tenant.clone();
            if let Some(version) =
                finalize::report_terminating(&tenant.name_any(), phase.as_deref(), &message, &s.ctx).await?
            {
                tenant.metadata.resource_version = Some(version);
            }
            let action = finalize::cleanup(&tenant, &s.ctx).await?;
            t.seen.forget_namespace(&super::build::namespace_name(&tenant.name_any()));
            let rest: Vec<&String> = tenant.finalizers().iter().filter(|f| *f != FINALIZER).collect();
            finalize::set_finalizers(&tenant, &s.ctx, serde_json::json!(rest)).await?;
            Ok(action)
        }
        (false, false) => apply::apply(tenant, t, true).await,
        (false, true) => apply::apply(tenant, t, false).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_categories_are_stable() {
        assert_eq!(Error::Build(BuildError::MissingUid).category(), "invalid_spec");
        assert_eq!(Error::Database(DatabaseError::Connect("x".into())).category(), "database");
    }
}
