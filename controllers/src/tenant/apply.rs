//! Provisioning a Tenant: build its children, apply them, provision its database and write
//! its status.

use super::CONTROLLER;
use super::build::{self, BuildError, Children, DATABASE_POLICY, Owner};
use super::child_stores::{ChildIndex, KnownChild};
use super::controller::{Error, TenantContext};
use super::status::{self, *};
use super::{database, database_egress};
use crate::apply::{Applier, Known};
use crate::conditions::Observed;
use crate::context::Context;
use crate::quantity;
use bizosaas_crds::Tenant;
use futures::future::BoxFuture;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{LimitRange, Namespace, ResourceQuota, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::{Ingress, NetworkPolicy};
use k8s_openapi::api::rbac::v1::RoleBinding;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::controller::Action;
use std::collections::BTreeSet;
use std::time::Duration;
use tracing::debug;

/// How often a converged Tenant is checked again even without changes.
pub(super) const RESYNC: Duration = Duration::from_secs(600);
/// How soon a Tenant waiting for something outside the cluster is retried.
const RETRY: Duration = Duration::from_secs(15);

/// True when this process has not applied the Tenant before (and now records that it has).
/// The process remembers, because a reconcile right after the first may still see a cached
/// copy without status.
fn first_pass_here(tenant: &Tenant, ctx: &Context) -> bool {
    let uid = tenant.metadata.uid.clone().unwrap_or_default();
    ctx.applied_tenants.lock().expect("applied tenants lock").insert(uid)
}

/// The applier of one reconcile. A Tenant never reconciled before has no children yet, so
/// its first pass writes without reading each child first.
fn applier<'a>(tenant: &Tenant, first_pass_here: bool, t: &'a TenantContext) -> Applier<'a> {
    Applier {
        metrics: &t.scaffold.ctx.metrics,
        controller: CONTROLLER,
        compare: tenant.status.is_some() || !first_pass_here,
        known: Some(Known { seen: &t.seen, live: &t.children }),
    }
}

/// True when the namespace (its metadata) was created by this operator for this tenant.
pub(super) fn is_ours(namespace: &ObjectMeta, tenant: &str) -> bool {
    KnownChild::of(namespace).belongs_to(tenant)
}

pub(super) async fn apply(tenant: &Tenant, t: &TenantContext) -> Result<Action, Error> {
    let s = &t.scaffold;
    let ctx = s.ctx.as_ref();
    let name = tenant.name_any();
    let mut children = match build::children(tenant, &ctx.config) {
        Ok(children) => children,
        Err(e @ BuildError::InvalidName(_)) => {
            let observed = vec![Observed::failed(NAMESPACE_READY, "InvalidSpec", e.to_string())];
            status::write(tenant, s, status::next(tenant, observed, None)).await?;
            return Ok(Action::await_change());
        }
        Err(e) => return Err(e.into()),
    };

    // The namespace as the watch knows it; read only when the watch has not seen it.
    let namespaces: Api<Namespace> = Api::all(ctx.client.clone());
    let namespace_name = children.namespace.name_any();
    let known_namespace = t.children.namespace(&namespace_name);
    let live_namespace = match &known_namespace {
        Some(_) => None,
        None => namespaces.get_opt(&namespace_name).await?,
    };
    let existing = known_namespace.or_else(|| live_namespace.as_ref().map(|n| KnownChild::of(&n.metadata)));
    if let Some(existing) = &existing
        && !existing.belongs_to(&name)
    {
        let message = format!(
            "Namespace {namespace_name} already exists and is not managed by bizosaas-operator for this tenant; \
             it is left untouched. Rename the Tenant or remove the namespace."
        );
        let observed = vec![Observed::failed(NAMESPACE_READY, "NamespaceConflict", message)];
        status::write(tenant, s, status::next(tenant, observed, None)).await?;
        return Ok(Action::requeue(RESYNC));
    }

    // A custom domain another Tenant claimed first is refused: its services run, unexposed.
    let domain_refused = build::domains::custom_domain(tenant).and_then(|_| {
        let all = t.tenants.state();
        let others = all.iter().filter_map(|g| g.0.as_ref().ok());
        build::domains::check(tenant, others, &ctx.config.base_domain).err()
    });
    if domain_refused.is_some() {
        for w in &mut children.services {
            w.ingress = None;
        }
    }

    let owner = Owner::of(tenant)?;
    let db_egress = database_egress::database_egress(&owner, ctx).await?;
    children.network_policies.extend(db_egress.policy);
    let retained: BTreeSet<String> = db_egress.keep_live.then(|| DATABASE_POLICY.to_string()).into_iter().collect();
    let observed_generation = tenant.status.as_ref().and_then(|s| s.observed_generation);
    let first_pass = first_pass_here(tenant, ctx);
    let spec_changed = first_pass || observed_generation != tenant.metadata.generation;
    let applier = applier(tenant, first_pass, t);
    let started = std::time::Instant::now();
    // A namespace that did not exist before this reconcile holds no credentials handed out
    // earlier: the database is provisioned meanwhile, without reading the Secret first.
    let fresh_namespace = existing.is_none();
    let client = ctx.client.clone();
    let ns = owner.namespace.as_str();
    let (grant, granted_here) = Grant::new();
    // The namespace, then the operator's RoleBinding in it. What the operator may write in
    // any namespace goes at once; what needs that RoleBinding (Deployments, the database
    // Secret) waits, meanwhile, until the authorizer knows it.
    let namespaced = async {
        match &live_namespace {
            Some(live) => applier.ensure_against(&namespaces, &children.namespace, Some(live)).await?,
            None => applier.ensure(&namespaces, &children.namespace).await?,
        };
        let bindings = Api::<RoleBinding>::namespaced(client.clone(), ns);
        let binding_written = applier.ensure(&bindings, &children.operator_binding).await?;
        let needs_binding = async {
            if binding_written {
                granted(ns, ctx).await?;
            }
            grant.open();
            let deployments = Api::<Deployment>::namespaced(client.clone(), ns);
            let writes = children.services.iter().map(|w| applier.ensure(&deployments, &w.deployment));
            futures::future::try_join_all(writes).await?;
            Ok::<_, Error>(binding_written)
        };
        futures::try_join!(apply_children(&owner, &children, applier, t), needs_binding)
    };
    let ((mut observed, binding_written), (database_condition, database)) =
        futures::try_join!(namespaced, database::ensure(tenant, &owner, fresh_namespace, &granted_here, applier, ctx))?;
    if applier.compare {
        prune_children(&owner, &children, &retained, spec_changed, applier, t).await?;
    }
    if let Some(failure) = db_egress.failure
        && let Some(network) = observed.iter_mut().find(|o| o.type_ == NETWORK_READY)
    {
        *network = failure;
    }
    debug!(ms = started.elapsed().as_millis(), granted_wait = binding_written, fresh_namespace, "tenant applied");
    let database_failed = !database_condition.0.status;
    observed.push(database_condition.0);
    observed.push(database_condition.1);
    observed.push(match &domain_refused {
        Some(refusal) => Observed::failed(SERVICES_READY, "DomainConflict", refusal.to_string()),
        None => status::services(tenant, &children, ctx).await?,
    });

    // The quota controller usually records the quota within a second; its update event
    // triggers a reconcile, and a short requeue covers a missed one.
    let quota_pending = observed.iter().any(|o| o.reason == "QuotaPending");
    let next = status::next(tenant, observed, database);
    let waiting = !bizosaas_crds::common::is_ready(&next.conditions);
    status::write(tenant, s, next).await?;
    Ok(if quota_pending {
        Action::requeue(Duration::from_secs(1))
    } else if domain_refused.is_some() {
        // Checked again soon: the earlier claim may go away.
        Action::requeue(Duration::from_secs(60))
    } else if database_failed {
        Action::requeue(RETRY)
    } else if waiting {
        Action::requeue(Duration::from_secs(30))
    } else {
        Action::requeue(RESYNC)
    })
}

/// Applies the children the operator may write in any namespace, all at once (the namespace
/// and the operator's RoleBinding are already applied), and says whether the quota is
/// enforced yet.
async fn apply_children(
    owner: &Owner,
    c: &Children,
    a: Applier<'_>,
    t: &TenantContext,
) -> Result<Vec<Observed>, Error> {
    let client = t.scaffold.ctx.client.clone();
    let ns = owner.namespace.as_str();
    let bindings = Api::<RoleBinding>::namespaced(client.clone(), ns);
    let policies = Api::<NetworkPolicy>::namespaced(client.clone(), ns);
    let services = Api::<Service>::namespaced(client.clone(), ns);
    let ingresses = Api::<Ingress>::namespaced(client.clone(), ns);
    let quotas = Api::<ResourceQuota>::namespaced(client.clone(), ns);
    let limits = Api::<LimitRange>::namespaced(client.clone(), ns);
    let accounts = Api::<ServiceAccount>::namespaced(client.clone(), ns);

    // The quota watch keeps whole quotas: one it has seen is compared with that copy, not read.
    let live_quota = t.children.quota(ns, &c.resource_quota.name_any()).filter(|_| a.compare);
    let quota: BoxFuture<'_, Result<bool, kube::Error>> = match live_quota {
        Some(live) => Box::pin(async move { a.ensure_against(&quotas, &c.resource_quota, Some(live.as_ref())).await }),
        None => Box::pin(a.ensure(&quotas, &c.resource_quota)),
    };
    let mut writes: Vec<BoxFuture<'_, Result<bool, kube::Error>>> =
        vec![quota, Box::pin(a.ensure(&limits, &c.limit_range)), Box::pin(a.ensure(&accounts, &c.service_account))];
    writes.extend(c.network_policies.iter().map(|p| Box::pin(a.ensure(&policies, p)) as BoxFuture<'_, _>));
    writes.extend(c.role_bindings.iter().map(|b| Box::pin(a.ensure(&bindings, b)) as BoxFuture<'_, _>));
    for w in &c.services {
        writes.push(Box::pin(a.ensure(&services, &w.service)));
        if let Some(ingress) = &w.ingress {
            writes.push(Box::pin(a.ensure(&ingresses, ingress)));
        }
    }
    let written = futures::future::try_join_all(writes).await?;

    // Until the quota controller has recorded the quota, the API server refuses every counted
    // object (crews, workflows) with "status unknown for quota": not ready before that.
    let quota_written = written.first().copied().unwrap_or(false);
    let quota = if enforced_quota(&c.resource_quota, quota_written, t).await {
        Observed::ok(
            QUOTA_READY,
            "Enforced",
            "ResourceQuota tenant-quota is enforced; LimitRange tenant-limits is applied",
        )
    } else {
        Observed::failed(
            QUOTA_READY,
            "QuotaPending",
            "Waiting for the quota controller to record ResourceQuota tenant-quota",
        )
    };
    Ok(vec![
        Observed::ok(NAMESPACE_READY, "Applied", format!("Namespace {ns} is ready")),
        quota,
        Observed::ok(NETWORK_READY, "Applied", format!("{} NetworkPolicies are applied", c.network_policies.len())),
        Observed::ok(RBAC_READY, "Applied", "ServiceAccount tenant-workload and owner RoleBindings are applied"),
    ])
}

/// Deletes the children the spec dropped, except the `retained` NetworkPolicies: only
/// possible once the tenant was provisioned before.
async fn prune_children(
    owner: &Owner,
    c: &Children,
    retained: &BTreeSet<String>,
    spec_changed: bool,
    a: Applier<'_>,
    t: &TenantContext,
) -> Result<(), Error> {
    let client = t.scaffold.ctx.client.clone();
    let ns = owner.namespace.as_str();
    let names = |items: &mut dyn Iterator<Item = String>| items.collect::<BTreeSet<String>>();
    let keep_policies = names(&mut c.network_policies.iter().map(|p| p.name_any()).chain(retained.iter().cloned()));
    let keep_bindings = names(&mut c.role_bindings.iter().chain([&c.operator_binding]).map(|b| b.name_any()));
    // A service the catalog lacks keeps whatever objects it has until the catalog offers it
    // again or the Tenant drops it.
    let keep_services = names(
        &mut c
            .services
            .iter()
            .map(|w| w.service_name)
            .chain(c.services_not_in_catalog.iter().copied())
            .map(|s| s.as_str().to_string()),
    );
    // Of the services with objects, those whose host the tenant may serve keep their Ingress.
    let keep_ingresses = names(
        &mut c
            .services
            .iter()
            .filter(|w| w.ingress.is_some())
            .map(|w| w.service_name)
            .chain(c.services_not_in_catalog.iter().copied())
            .map(|s| s.as_str().to_string()),
    );
    // The watches' stores say which children exist; a child they have not seen yet arrives
    // with a watch event of its own, and that event's reconcile prunes it.
    let stores = &t.children;
    let policies = Api::<NetworkPolicy>::namespaced(client.clone(), ns);
    let bindings = Api::<RoleBinding>::namespaced(client.clone(), ns);
    let deployments = Api::<Deployment>::namespaced(client.clone(), ns);
    let services = Api::<Service>::namespaced(client.clone(), ns);
    let ingresses = Api::<Ingress>::namespaced(client, ns);
    let known = |index: &ChildIndex, component: &str| -> Vec<String> {
        let children = index.components_in(ns, &owner.name, component);
        children.into_iter().filter(|c| !c.deleting).map(|c| c.name).collect()
    };
    let known_policies = known(&stores.policies, "network");
    let known_bindings = known(&stores.bindings, "rbac");
    let known_services = known(&stores.services, "service");
    let known_ingresses = known(&stores.ingresses, "service");
    // Deployments have no store: they are listed when the spec changed or this process has
    // not provisioned the Tenant before (a catalog that changed across a restart).
    let list_deployments = async {
        if !spec_changed {
            return Ok(0);
        }
        a.prune(&deployments, &owner.selector("service"), &keep_services).await
    };
    futures::try_join!(
        a.prune_known(&policies, &known_policies, &keep_policies),
        a.prune_known(&bindings, &known_bindings, &keep_bindings),
        list_deployments,
        a.prune_known(&services, &known_services, &keep_services),
        a.prune_known(&ingresses, &known_ingresses, &keep_ingresses),
    )?;
    Ok(())
}

/// Opens once the API server's authorizer knows the operator's RoleBinding in the tenant
/// namespace: what reads or writes Secrets there waits for it.
pub(super) struct Grant(tokio::sync::watch::Sender<bool>);

/// The waiting side of a [`Grant`].
pub(super) struct Granted(tokio::sync::watch::Receiver<bool>);

impl Grant {
    fn new() -> (Grant, Granted) {
        let (open, opened) = tokio::sync::watch::channel(false);
        (Grant(open), Granted(opened))
    }

    fn open(&self) {
        self.0.send_replace(true);
    }
}

impl Granted {
    /// Returns once the grant is open, or once its side is gone (the reconcile is failing).
    pub(super) async fn wait(&self) {
        let _ = self.0.clone().wait_for(|open| *open).await;
    }
}

/// Waits (briefly) until the API server's authorizer knows the operator's fresh RoleBinding in
/// `ns`, so the children written next are not refused while it catches up. It usually takes
/// a few milliseconds: the first checks come quickly, later ones every 100 ms.
async fn granted(ns: &str, ctx: &Context) -> Result<(), Error> {
    use k8s_openapi::api::authorization::v1::{
        ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
    };
    let review = SelfSubjectAccessReview {
        spec: SelfSubjectAccessReviewSpec {
            resource_attributes: Some(ResourceAttributes {
                namespace: Some(ns.into()),
                verb: Some("create".into()),
                resource: Some("secrets".into()),
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    let api: Api<SelfSubjectAccessReview> = Api::all(ctx.client.clone());
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let mut pause = Duration::from_millis(5);
    while std::time::Instant::now() < deadline {
        let answer = api.create(&Default::default(), &review).await?;
        if answer.status.is_some_and(|s| s.allowed) {
            return Ok(());
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(100));
    }
    // Not granted within 5 s: the writes that follow report what is refused.
    Ok(())
}

/// How long a reconcile that has just written the quota waits for the quota controller to
/// record it (usually well under a second): cheaper than a second pass over every child.
const QUOTA_WAIT: Duration = Duration::from_secs(3);

/// Whether the live quota is enforced; after a write, waits up to [`QUOTA_WAIT`] for it. The
/// quota watch keeps the whole quota, status included, so this reads no quota from the API
/// server: it looks at the watch's copy, and after a write polls that copy until the quota
/// controller's status update arrives. Without a write, a quota not enforced yet is looked at
/// again when its watch event reconciles the Tenant.
async fn enforced_quota(desired: &ResourceQuota, just_written: bool, t: &TenantContext) -> bool {
    let (namespace, name) = (desired.namespace().unwrap_or_default(), desired.name_any());
    let deadline = std::time::Instant::now() + QUOTA_WAIT;
    loop {
        if t.children.quota(&namespace, &name).is_some_and(|live| quota_enforced(&live, desired)) {
            return true;
        }
        if !just_written || std::time::Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// True when the quota controller has recorded the desired limits and the usage of every
/// limited resource; before that the API server's quota admission answers "status unknown".
pub fn quota_enforced(live: &ResourceQuota, desired: &ResourceQuota) -> bool {
    let wanted = desired.spec.as_ref().and_then(|s| s.hard.as_ref());
    let status = live.status.as_ref();
    let (recorded, used) = (status.and_then(|s| s.hard.as_ref()), status.and_then(|s| s.used.as_ref()));
    match (wanted, recorded, used) {
        (Some(wanted), Some(recorded), Some(used)) => wanted
            .iter()
            .all(|(k, v)| recorded.get(k).is_some_and(|r| quantity::same(&r.0, &v.0)) && used.contains_key(k)),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bizosaas_crds::{LABEL_MANAGED_BY, LABEL_TENANT, MANAGED_BY};

    #[test]
    fn foreign_namespaces_are_not_ours() {
        let mut ns = Namespace::default();
        ns.metadata.name = Some("tenant-acme".into());
        assert!(!is_ours(&ns.metadata, "acme"));
        ns.metadata.labels = Some([(LABEL_MANAGED_BY.to_string(), MANAGED_BY.to_string())].into());
        assert!(!is_ours(&ns.metadata, "acme"), "our label for another tenant is not enough");
        ns.labels_mut().insert(LABEL_TENANT.into(), "acme".into());
        assert!(is_ours(&ns.metadata, "acme"));
    }

    #[test]
    fn a_quota_counts_as_enforced_once_its_status_matches() {
        use k8s_openapi::api::core::v1::{ResourceQuotaSpec, ResourceQuotaStatus};
        use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
        let hard = |pods: &str| Some([("pods".to_string(), Quantity(pods.into()))].into());
        let desired = ResourceQuota {
            spec: Some(ResourceQuotaSpec { hard: hard("20"), ..Default::default() }),
            ..Default::default()
        };
        let mut live = desired.clone();
        assert!(!quota_enforced(&live, &desired), "no status yet");
        live.status = Some(ResourceQuotaStatus { hard: hard("10"), used: hard("0") });
        assert!(!quota_enforced(&live, &desired), "old limits");
        live.status = Some(ResourceQuotaStatus { hard: hard("20"), used: None });
        assert!(!quota_enforced(&live, &desired), "usage not counted yet");
        live.status = Some(ResourceQuotaStatus { hard: hard("20"), used: hard("0") });
        assert!(quota_enforced(&live, &desired));
        let memory = |m: &str| Some([("memory".to_string(), Quantity(m.into()))].into());
        let desired = ResourceQuota {
            spec: Some(ResourceQuotaSpec { hard: memory("1024Mi"), ..Default::default() }),
            ..Default::default()
        };
        live.status = Some(ResourceQuotaStatus { hard: memory("1Gi"), used: memory("0") });
        assert!(quota_enforced(&live, &desired), "1024Mi is recorded as 1Gi");
    }
}
