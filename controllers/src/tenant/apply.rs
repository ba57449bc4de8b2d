//! Provisioning a Tenant: build its children, apply them, provision its database and write
//! its status.

use super::CONTROLLER;
use super::build::{self, BuildError, Children, DATABASE_POLICY, Owner};
use super::child_stores::{ChildIndex, KnownChild};
use super::controller::{Error, TenantContext};
use super::quota_wait::enforced_quota;
use super::status::{self, *};
use super::{database, database_egress};
use crate::apply::{Applier, Known};
use crate::conditions::Observed;
use crate::context::Context;
use bizosaas_crds::Tenant;
use futures::TryFutureExt;
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
use std::future::Future;
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

/// Provisions `tenant`. With `add_finalizer` (the Tenant has none yet) the finalizer is added
/// alongside the namespace's create and before everything else, and a Tenant found gone is left.
pub(super) async fn apply(tenant: &Tenant, t: &TenantContext, add_finalizer: bool) -> Result<Action, Error> {
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

    let first_pass = first_pass_here(tenant, ctx);
    let applier = applier(tenant, first_pass, t);
    // The namespace as the watch knows it; read only when the watch has not seen it. A first
    // provisioning creates it at once instead, before anything else, and reads it only when
    // it exists already: a create never takes over a namespace someone else made.
    let namespaces: Api<Namespace> = Api::all(ctx.client.clone());
    let namespace_name = children.namespace.name_any();
    let known_namespace = t.children.namespace(&namespace_name);
    let namespace = async {
        Ok::<_, Error>(match &known_namespace {
            Some(_) => (None, false),
            None if !applier.compare && applier.create(&namespaces, &children.namespace).await? => (None, true),
            None => (namespaces.get_opt(&namespace_name).await?, false),
        })
    };
    let finalizer = async { if add_finalizer { super::finalize::add_finalizer(tenant, ctx).await } else { Ok(true) } };
    let (still_here, (live_namespace, namespace_created)) = futures::try_join!(finalizer, namespace)?;
    if !still_here {
        return Ok(Action::await_change());
    }
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
    let spec_changed = first_pass || observed_generation != tenant.metadata.generation;
    let started = std::time::Instant::now();
    // A namespace that did not exist before this reconcile holds no credentials handed out
    // earlier: the database is provisioned meanwhile, without reading the Secret first.
    let fresh_namespace = existing.is_none();
    let client = ctx.client.clone();
    let ns = owner.namespace.as_str();
    let (grant, granted_here) = Grant::new();
    // The namespace, then the operator's RoleBinding in it (through which the operator writes
    // everything else there), then all the rest at once.
    let namespaced = async {
        match &live_namespace {
            _ if namespace_created => false,
            Some(live) => applier.ensure_against(&namespaces, &children.namespace, Some(live)).await?,
            None => applier.ensure(&namespaces, &children.namespace).await?,
        };
        let bindings = Api::<RoleBinding>::namespaced(client.clone(), ns);
        let binding_written = applier.ensure(&bindings, &children.operator_binding).await?;
        grant.open(binding_written);
        let deployments = Api::<Deployment>::namespaced(client.clone(), ns);
        let writes =
            children.services.iter().map(|w| ensure_granted(applier, binding_written, &deployments, &w.deployment));
        let (observed, _) = futures::try_join!(
            apply_children(&owner, &children, binding_written, applier, t),
            futures::future::try_join_all(writes).map_err(Error::from)
        )?;
        Ok::<_, Error>((observed, binding_written))
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
    debug!(ms = started.elapsed().as_millis(), fresh_binding = binding_written, fresh_namespace, "tenant applied");
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

/// Applies the children, all at once (the namespace and the operator's RoleBinding are
/// applied already; `fresh_binding`: that RoleBinding was written just now), and says whether
/// the quota is enforced yet.
async fn apply_children(
    owner: &Owner,
    c: &Children,
    fresh_binding: bool,
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

    // Held from before the quota is written until it has been looked at for the last time:
    // the quota's watch events meanwhile show up in that look, not in a reconcile of their own.
    let awaiting = t.awaited_quotas.hold(ns);
    // The quota watch keeps whole quotas: one it has seen is compared with that copy, not read.
    let live_quota = t.children.quota(ns, &c.resource_quota.name_any()).filter(|_| a.compare);
    let quota: BoxFuture<'_, Result<bool, kube::Error>> = match live_quota {
        Some(live) => {
            let quotas = &quotas;
            Box::pin(until_granted(fresh_binding, move || {
                let live = live.clone();
                async move { a.ensure_against(quotas, &c.resource_quota, Some(live.as_ref())).await }
            }))
        }
        None => Box::pin(until_granted(fresh_binding, || a.ensure(&quotas, &c.resource_quota))),
    };
    let mut writes = vec![
        quota,
        ensure_granted(a, fresh_binding, &limits, &c.limit_range),
        ensure_granted(a, fresh_binding, &accounts, &c.service_account),
    ];
    writes.extend(c.network_policies.iter().map(|p| ensure_granted(a, fresh_binding, &policies, p)));
    // RoleBindings are written with the operator's own rights, not through its RoleBinding.
    writes.extend(c.role_bindings.iter().map(|b| Box::pin(a.ensure(&bindings, b)) as BoxFuture<'_, _>));
    for w in &c.services {
        writes.push(ensure_granted(a, fresh_binding, &services, &w.service));
        if let Some(ingress) = &w.ingress {
            writes.push(ensure_granted(a, fresh_binding, &ingresses, ingress));
        }
    }
    let written = futures::future::try_join_all(writes).await?;

    // Until the quota controller has recorded the quota, the API server refuses every counted
    // object (crews, workflows) with "status unknown for quota": not ready before that.
    let quota_written = written.first().copied().unwrap_or(false);
    let quota = if enforced_quota(&c.resource_quota, quota_written, &t.children, awaiting).await {
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

/// Opens once the operator's RoleBinding in the tenant namespace is written: what reads or
/// writes Secrets there waits for it.
pub(super) struct Grant(tokio::sync::watch::Sender<Option<bool>>);

/// The waiting side of a [`Grant`].
pub(super) struct Granted(tokio::sync::watch::Receiver<Option<bool>>);

impl Grant {
    fn new() -> (Grant, Granted) {
        let (open, opened) = tokio::sync::watch::channel(None);
        (Grant(open), Granted(opened))
    }

    /// Opens the grant; `fresh`: the RoleBinding was written just now.
    fn open(&self, fresh: bool) {
        self.0.send_replace(Some(fresh));
    }
}

impl Granted {
    /// Sends `request` once the grant is open (or once its side is gone: the reconcile is
    /// failing), through [`until_granted`].
    pub(super) async fn when<T, F, Fut>(&self, request: F) -> Result<T, kube::Error>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, kube::Error>>,
    {
        let fresh = self.0.clone().wait_for(Option::is_some).await.ok().and_then(|open| *open).unwrap_or(false);
        until_granted(fresh, request).await
    }
}

/// `a.ensure(api, desired)` through [`until_granted`].
fn ensure_granted<'a, K>(
    a: Applier<'a>,
    fresh_binding: bool,
    api: &'a Api<K>,
    desired: &'a K,
) -> BoxFuture<'a, Result<bool, kube::Error>>
where
    K: kube::Resource<DynamicType = ()>
        + serde::Serialize
        + serde::de::DeserializeOwned
        + Clone
        + std::fmt::Debug
        + Send
        + Sync,
{
    Box::pin(until_granted(fresh_binding, move || async move { a.ensure(api, desired).await }))
}

/// How long a request refused right after the operator's RoleBinding was written is retried.
const GRANT_WAIT: Duration = Duration::from_secs(5);

/// Sends `request`, and while the API server refuses it (403) after the operator's
/// RoleBinding in the namespace was written just now (`fresh_binding`), sends it again, for up
/// to [`GRANT_WAIT`]: the authorizer learns of a new RoleBinding a few milliseconds after it
/// is written. Retries start after 5 ms and double up to 100 ms. An operator with wider rights
/// is never refused, and sends each request once.
pub(super) async fn until_granted<T, F, Fut>(fresh_binding: bool, mut request: F) -> Result<T, kube::Error>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, kube::Error>>,
{
    let deadline = std::time::Instant::now() + GRANT_WAIT;
    let mut pause = Duration::from_millis(5);
    loop {
        match request().await {
            Err(kube::Error::Api(e)) if fresh_binding && e.code == 403 && std::time::Instant::now() < deadline => {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_millis(100));
            }
            answer => return answer,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bizosaas_crds::{LABEL_MANAGED_BY, LABEL_TENANT, MANAGED_BY};

    #[tokio::test]
    async fn a_request_refused_right_after_the_binding_was_written_is_sent_again() {
        let forbidden =
            || kube::Error::Api(kube::core::Status::failure("forbidden", "Forbidden").with_code(403).boxed());
        let sent = std::sync::atomic::AtomicU32::new(0);
        let refused_twice = || async {
            match sent.fetch_add(1, std::sync::atomic::Ordering::SeqCst) {
                0 | 1 => Err(forbidden()),
                n => Ok(n),
            }
        };
        assert_eq!(until_granted(true, refused_twice).await.unwrap(), 2);
        assert_eq!(sent.load(std::sync::atomic::Ordering::SeqCst), 3);

        // Without a fresh RoleBinding, a refusal is an answer: sent once.
        sent.store(0, std::sync::atomic::Ordering::SeqCst);
        assert!(until_granted(false, refused_twice).await.is_err());
        assert_eq!(sent.load(std::sync::atomic::Ordering::SeqCst), 1);

        // Another error is never retried.
        let missing = || async {
            sent.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Err::<(), _>(kube::Error::Api(kube::core::Status::failure("gone", "NotFound").with_code(404).boxed()))
        };
        sent.store(0, std::sync::atomic::Ordering::SeqCst);
        assert!(until_granted(true, missing).await.is_err());
        assert_eq!(sent.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

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
}
