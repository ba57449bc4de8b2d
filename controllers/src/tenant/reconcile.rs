//! The Tenant reconcile pipeline: validate → build → apply → database → status, and the
//! finalizer that applies the deletion policy.

use super::CONTROLLER;
use super::build::{self, BuildError, Children, DATABASE_POLICY, DATABASE_SECRET, Owner};
use super::database_egress;
use super::status::{self, *};
use crate::apply::Applier;
use crate::conditions::Observed;
use crate::context::Context;
use crate::egress::resolve::SERVICE_NAME_LABEL;
use crate::metrics::Categorized;
use crate::postgres::{DatabaseError, TenantCredentials, TenantNames};
use crate::vault::{Vault, VaultError};
use bizosaas_crds::tenant::{DatabaseIsolation, SecretsBackend, TenantStatus};
use bizosaas_crds::{LABEL_MANAGED_BY, LABEL_TENANT, MANAGED_BY, Tenant};
use futures::StreamExt;
use futures::future::BoxFuture;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{LimitRange, Namespace, ResourceQuota, Secret, Service, ServiceAccount};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{Ingress, NetworkPolicy};
use k8s_openapi::api::rbac::v1::RoleBinding;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::core::DeserializeGuard;
use kube::core::PartialObjectMeta;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::reflector::{self, reflector};
use kube::runtime::{PredicateConfig, WatchStreamExt, watcher};
use kube::{Resource, ResourceExt};
use std::collections::BTreeSet;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tracing::{debug, info, instrument, warn};

/// Finalizer that holds a Tenant until its deletion policy has been applied.
pub const FINALIZER: &str = "bizosaas.io/tenant-cleanup";

/// How often a converged Tenant is checked again even without changes.
const RESYNC: Duration = Duration::from_secs(600);
/// How soon a Tenant waiting for something outside the cluster is retried.
const RETRY: Duration = Duration::from_secs(15);

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
    let tenants =
        reflector(writer, watcher(Api::<DeserializeGuard<Tenant>>::all(client.clone()), watcher::Config::default()))
            .default_backoff()
            .applied_objects()
            .predicate_filter(user_change, PredicateConfig::default());
    let mut controller = Controller::for_stream(tenants, reader)
        .watches_stream(children::<Namespace>(&client, &ours), tenant_of)
        .watches_stream(children::<ResourceQuota>(&client, &ours), tenant_of)
        .watches_stream(children::<LimitRange>(&client, &ours), tenant_of)
        .watches_stream(children::<NetworkPolicy>(&client, &ours), tenant_of)
        .watches_stream(children::<ServiceAccount>(&client, &ours), tenant_of)
        .watches_stream(children::<RoleBinding>(&client, &ours), tenant_of)
        .watches_stream(children::<Secret>(&client, &ours), tenant_of)
        .watches_stream(children::<Deployment>(&client, &ours), tenant_of)
        .watches_stream(children::<Service>(&client, &ours), tenant_of)
        .watches_stream(children::<Ingress>(&client, &ours), tenant_of);
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
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|_| futures::future::ready(()))
        .await;
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

/// Changes to one kind of child, as metadata only: the label is all the mapping needs, and
/// the API server then sends far less than whole Secrets and Deployments.
fn children<K>(
    client: &kube::Client,
    config: &watcher::Config,
) -> impl futures::Stream<Item = Result<PartialObjectMeta<K>, watcher::Error>> + Send + 'static
where
    K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
{
    watcher(Api::<PartialObjectMeta<K>>::all(client.clone()), config.clone()).default_backoff().touched_objects()
}

/// The Tenant a child belongs to, from its `bizosaas.io/tenant` label.
fn tenant_of<K: Resource>(child: K) -> Option<ObjectRef<DeserializeGuard<Tenant>>> {
    child.labels().get(LABEL_TENANT).map(|name| ObjectRef::new(name))
}

#[instrument(skip_all, fields(tenant = %guard.0.as_ref().map(|t| t.name_any()).unwrap_or_default()))]
async fn reconcile(guard: Arc<DeserializeGuard<Tenant>>, ctx: Arc<Context>) -> Result<Action, Error> {
    let work = async {
        match &guard.0 {
            Ok(tenant) => reconcile_tenant(tenant, &ctx).await,
            Err(invalid) => Err(Error::InvalidObject(invalid.to_string())),
        }
    };
    ctx.metrics.measure(CONTROLLER, work).await
}

fn error_policy(_guard: Arc<DeserializeGuard<Tenant>>, error: &Error, _ctx: Arc<Context>) -> Action {
    warn!(category = error.category(), error = %error, "tenant reconcile failed");
    Action::requeue(RETRY)
}

/// Holds a Tenant with a finalizer until its deletion policy has run. The finalizer is added
/// in the same reconcile that provisions the Tenant, saving a round trip through the watch.
async fn reconcile_tenant(tenant: &Tenant, ctx: &Context) -> Result<Action, Error> {
    let has_finalizer = tenant.finalizers().iter().any(|f| f == FINALIZER);
    match (tenant.metadata.deletion_timestamp.is_some(), has_finalizer) {
        (true, false) => Ok(Action::await_change()),
        (true, true) => {
            let action = cleanup(tenant, ctx).await?;
            let rest: Vec<&String> = tenant.finalizers().iter().filter(|f| *f != FINALIZER).collect();
            set_finalizers(tenant, ctx, serde_json::json!(rest)).await?;
            Ok(action)
        }
        (false, false) => {
            let mut all: Vec<&String> = tenant.finalizers().iter().collect();
            let ours = FINALIZER.to_string();
            all.push(&ours);
            set_finalizers(tenant, ctx, serde_json::json!(all)).await?;
            apply(tenant, ctx).await
        }
        (false, true) => apply(tenant, ctx).await,
    }
}

/// Replaces the Tenant's finalizers, conditional on the resourceVersion it was read at. A
/// Tenant already gone counts as done.
async fn set_finalizers(tenant: &Tenant, ctx: &Context, finalizers: serde_json::Value) -> Result<(), Error> {
    let api: Api<Tenant> = Api::all(ctx.client.clone());
    let patch = serde_json::json!({
        "metadata": {"finalizers": finalizers, "resourceVersion": tenant.metadata.resource_version}
    });
    match api.patch(&tenant.name_any(), &PatchParams::default(), &Patch::Merge(&patch)).await {
        Ok(_) => {}
        Err(kube::Error::Api(status)) if status.code == 404 => return Ok(()),
        Err(e) => return Err(e.into()),
    }
    ctx.metrics.write(CONTROLLER, "Tenant", "finalizer");
    Ok(())
}

/// The applier of one reconcile. A Tenant never reconciled before has no children yet, so
/// its first pass writes without reading each child first. The process remembers which
/// Tenants it applied, because a reconcile right after the first may still see a cached copy
/// without status.
fn applier<'a>(tenant: &Tenant, ctx: &'a Context) -> Applier<'a> {
    let uid = tenant.metadata.uid.clone().unwrap_or_default();
    let first_time = ctx.applied_tenants.lock().expect("applied tenants lock").insert(uid);
    Applier { metrics: &ctx.metrics, controller: CONTROLLER, compare: tenant.status.is_some() || !first_time }
}

/// True when the namespace was created by this operator for this tenant.
fn is_ours(namespace: &Namespace, tenant: &str) -> bool {
    let labels = namespace.labels();
    labels.get(LABEL_MANAGED_BY).map(String::as_str) == Some(MANAGED_BY)
        && labels.get(LABEL_TENANT).map(String::as_str) == Some(tenant)
}

async fn apply(tenant: &Tenant, ctx: &Context) -> Result<Action, Error> {
    let name = tenant.name_any();
    let mut children = match build::children(tenant, &ctx.config) {
        Ok(children) => children,
        Err(e @ BuildError::InvalidName(_)) => {
            let observed = vec![Observed::failed(NAMESPACE_READY, "InvalidSpec", e.to_string())];
            write_status(tenant, ctx, status::next(tenant, observed, None)).await?;
            return Ok(Action::await_change());
        }
        Err(e) => return Err(e.into()),
    };

    let namespaces: Api<Namespace> = Api::all(ctx.client.clone());
    let live_namespace = namespaces.get_opt(&children.namespace.name_any()).await?;
    if let Some(existing) = &live_namespace
        && !is_ours(existing, &name)
    {
        let message = format!(
            "Namespace {} already exists and is not managed by bizosaas-operator for this tenant; \
             it is left untouched. Rename the Tenant or remove the namespace.",
            existing.name_any()
        );
        let observed = vec![Observed::failed(NAMESPACE_READY, "NamespaceConflict", message)];
        write_status(tenant, ctx, status::next(tenant, observed, None)).await?;
        return Ok(Action::requeue(RESYNC));
    }

    let owner = Owner::of(tenant)?;
    let db_egress = database_egress::database_egress(&owner, ctx).await?;
    children.network_policies.extend(db_egress.policy);
    let retained: BTreeSet<String> = db_egress.keep_live.then(|| DATABASE_POLICY.to_string()).into_iter().collect();
    let applier = applier(tenant, ctx);
    let started = std::time::Instant::now();
    let mut observed = apply_children(&owner, &children, live_namespace.as_ref(), &retained, applier, ctx).await?;
    if let Some(failure) = db_egress.failure
        && let Some(network) = observed.iter_mut().find(|o| o.type_ == NETWORK_READY)
    {
        *network = failure;
    }
    let children_ms = started.elapsed().as_millis();
    let (database_condition, database) = ensure_database(tenant, &owner, applier, ctx).await?;
    debug!(children_ms, database_ms = started.elapsed().as_millis() - children_ms, "tenant applied");
    let database_failed = !database_condition.0.status;
    observed.push(database_condition.0);
    observed.push(database_condition.1);
    observed.push(services_condition(tenant, &children, ctx).await?);

    // The quota controller usually records the quota within a second; its update event
    // triggers a reconcile, and a short requeue covers a missed one.
    let quota_pending = observed.iter().any(|o| o.reason == "QuotaPending");
    let next = status::next(tenant, observed, database);
    let waiting = !bizosaas_crds::common::is_ready(&next.conditions);
    write_status(tenant, ctx, next).await?;
    Ok(if quota_pending {
        Action::requeue(Duration::from_secs(1))
    } else if database_failed {
        Action::requeue(RETRY)
    } else if waiting {
        Action::requeue(Duration::from_secs(30))
    } else {
        Action::requeue(RESYNC)
    })
}

/// Applies the Kubernetes children, all at once after the namespace (already read for the
/// conflict check), and prunes those the spec no longer asks for, except the `retained`
/// NetworkPolicies.
async fn apply_children(
    owner: &Owner,
    c: &Children,
    live_namespace: Option<&Namespace>,
    retained: &BTreeSet<String>,
    a: Applier<'_>,
    ctx: &Context,
) -> Result<Vec<Observed>, Error> {
    let client = ctx.client.clone();
    let ns = owner.namespace.as_str();
    a.ensure_against(&Api::<Namespace>::all(client.clone()), &c.namespace, live_namespace).await?;

    let policies = Api::<NetworkPolicy>::namespaced(client.clone(), ns);
    let bindings = Api::<RoleBinding>::namespaced(client.clone(), ns);
    let deployments = Api::<Deployment>::namespaced(client.clone(), ns);
    let services = Api::<Service>::namespaced(client.clone(), ns);
    let ingresses = Api::<Ingress>::namespaced(client.clone(), ns);
    let quotas = Api::<ResourceQuota>::namespaced(client.clone(), ns);
    let limits = Api::<LimitRange>::namespaced(client.clone(), ns);
    let accounts = Api::<ServiceAccount>::namespaced(client.clone(), ns);

    let mut writes: Vec<BoxFuture<'_, Result<bool, kube::Error>>> = vec![
        Box::pin(a.ensure(&quotas, &c.resource_quota)),
        Box::pin(a.ensure(&limits, &c.limit_range)),
        Box::pin(a.ensure(&accounts, &c.service_account)),
    ];
    writes.extend(c.network_policies.iter().map(|p| Box::pin(a.ensure(&policies, p)) as BoxFuture<'_, _>));
    writes.extend(c.role_bindings.iter().map(|b| Box::pin(a.ensure(&bindings, b)) as BoxFuture<'_, _>));
    for w in &c.services {
        writes.push(Box::pin(a.ensure(&deployments, &w.deployment)));
        writes.push(Box::pin(a.ensure(&services, &w.service)));
        writes.push(Box::pin(a.ensure(&ingresses, &w.ingress)));
    }
    futures::future::try_join_all(writes).await?;

    // Children the spec dropped: only possible once the tenant was provisioned before.
    if a.compare {
        let names = |items: &mut dyn Iterator<Item = String>| items.collect::<BTreeSet<String>>();
        let keep_policies = names(&mut c.network_policies.iter().map(|p| p.name_any()).chain(retained.iter().cloned()));
        let keep_bindings = names(&mut c.role_bindings.iter().map(|b| b.name_any()));
        // A service the catalog lacks keeps whatever objects it has until the catalog offers
        // it again or the Tenant drops it.
        let keep_services = names(
            &mut c
                .services
                .iter()
                .map(|w| w.service_name)
                .chain(c.services_not_in_catalog.iter().copied())
                .map(|s| s.as_str().to_string()),
        );
        let (network_selector, rbac_selector) = (owner.selector("network"), owner.selector("rbac"));
        let service_selector = owner.selector("service");
        futures::try_join!(
            a.prune(&policies, &network_selector, &keep_policies),
            a.prune(&bindings, &rbac_selector, &keep_bindings),
            a.prune(&deployments, &service_selector, &keep_services),
            a.prune(&services, &service_selector, &keep_services),
            a.prune(&ingresses, &service_selector, &keep_services),
        )?;
    }
    // Until the quota controller has recorded the quota, the API server refuses every counted
    // object (crews, workflows) with "status unknown for quota": not ready before that.
    let quota = match quotas.get_opt(&c.resource_quota.name_any()).await? {
        Some(live) if quota_enforced(&live, &c.resource_quota) => Observed::ok(
            QUOTA_READY,
            "Enforced",
            "ResourceQuota tenant-quota is enforced; LimitRange tenant-limits is applied",
        ),
        _ => Observed::failed(
            QUOTA_READY,
            "QuotaPending",
            "Waiting for the quota controller to record ResourceQuota tenant-quota",
        ),
    };
    Ok(vec![
        Observed::ok(NAMESPACE_READY, "Applied", format!("Namespace {ns} is ready")),
        quota,
        Observed::ok(NETWORK_READY, "Applied", format!("{} NetworkPolicies are applied", c.network_policies.len())),
        Observed::ok(RBAC_READY, "Applied", "ServiceAccount tenant-workload and owner RoleBindings are applied"),
    ])
}

/// True when the quota controller has recorded the desired limits and the usage of every
/// limited resource; before that the API server's quota admission answers "status unknown".
fn quota_enforced(live: &ResourceQuota, desired: &ResourceQuota) -> bool {
    let wanted = desired.spec.as_ref().and_then(|s| s.hard.as_ref());
    let status = live.status.as_ref();
    let (recorded, used) = (status.and_then(|s| s.hard.as_ref()), status.and_then(|s| s.used.as_ref()));
    match (wanted, recorded, used) {
        (Some(wanted), Some(recorded), Some(used)) => {
            wanted.iter().all(|(k, v)| recorded.get(k).is_some_and(|r| r.0 == v.0) && used.contains_key(k))
        }
        _ => false,
    }
}

/// Provisions the database and stores the app role's credentials (Secret or Vault). Problems
/// outside the cluster become conditions (and a retry), not reconcile errors, so the status
/// always says what is wrong.
async fn ensure_database(
    tenant: &Tenant,
    owner: &Owner,
    applier: Applier<'_>,
    ctx: &Context,
) -> Result<((Observed, Observed), Option<String>), Error> {
    let failed = |reason: &str, msg: String| {
        Ok((
            (Observed::failed(DATABASE_READY, reason, msg.clone()), Observed::failed(SECRETS_READY, reason, msg)),
            None,
        ))
    };
    let Some(admin) = &ctx.postgres else {
        return failed("DatabaseNotConfigured", "The operator has no database configured (--database-url)".into());
    };
    let store = match tenant.spec.secrets.backend {
        SecretsBackend::Kubernetes => {
            CredentialStore::Secret(Box::new(Api::namespaced(ctx.client.clone(), &owner.namespace)))
        }
        SecretsBackend::Vault => match &ctx.vault {
            Some(vault) => CredentialStore::Vault(vault),
            None => {
                let msg = "secrets.backend Vault needs the operator's Vault connection (--vault-addr), which is not configured";
                return failed("VaultNotConfigured", msg.into());
            }
        },
    };
    let names = TenantNames::new(&owner.name)?;
    let password = match store.handed_out_password(&owner.name).await {
        Ok(password) => password,
        Err(StoreError::Vault(e)) => return failed(vault_reason(&e), e.to_string()),
        Err(StoreError::Kube(e)) => return Err(e.into()),
    };
    if password.is_none() {
        info!(role = %names.app_role, "no credentials handed out yet: a new password will be set");
    }
    let uid = tenant.metadata.uid.clone().unwrap_or_default();
    let recently_provisioned = {
        let provisioned = ctx.provisioned_databases.lock().expect("provisioned databases lock");
        provisioned
            .get(&uid)
            .is_some_and(|(generation, at)| *generation == tenant.metadata.generation && at.elapsed() < RESYNC)
    };
    let ensured = match password {
        Some(password) if recently_provisioned => {
            Ok(admin.credentials(&names, tenant.spec.database.isolation, password))
        }
        password => admin.ensure_tenant(&names, tenant.spec.database.isolation, password.as_deref()).await,
    };
    let creds = match ensured {
        Ok(creds) => {
            if !recently_provisioned {
                let mut provisioned = ctx.provisioned_databases.lock().expect("provisioned databases lock");
                provisioned.insert(uid, (tenant.metadata.generation, std::time::Instant::now()));
            }
            creds
        }
        Err(e) => {
            let reason = if matches!(e, DatabaseError::Connect(_)) {
                "DatabaseUnavailable"
            } else {
                "DatabaseProvisioningFailed"
            };
            let msg = e.to_string();
            return Ok((
                (
                    Observed::failed(DATABASE_READY, reason, msg.clone()),
                    Observed::failed(SECRETS_READY, "WaitingForDatabase", msg),
                ),
                None,
            ));
        }
    };
    let database = creds.database.clone();
    let db_msg = match tenant.spec.database.isolation {
        DatabaseIsolation::Dedicated => {
            format!("Database {database} with roles {} and {}", names.owner_role, names.app_role)
        }
        DatabaseIsolation::Shared => {
            format!("Rows in {database} behind row-level security for role {}", names.app_role)
        }
    };
    let database_ok = Observed::ok(DATABASE_READY, "Provisioned", db_msg);
    let secrets_ok = match store.store(owner, &creds, applier, &ctx.config).await {
        Ok(message) => Observed::ok(SECRETS_READY, "Stored", message),
        Err(StoreError::Vault(e)) => Observed::failed(SECRETS_READY, vault_reason(&e), e.to_string()),
        Err(StoreError::Kube(e)) => return Err(e.into()),
    };
    Ok(((database_ok, secrets_ok), Some(database)))
}

fn vault_reason(e: &VaultError) -> &'static str {
    match e {
        VaultError::Unreachable(_) => "VaultUnavailable",
        VaultError::Denied(_) => "VaultDenied",
        _ => "VaultFailed",
    }
}

/// Where a tenant's database credentials are handed out.
enum CredentialStore<'a> {
    /// The Secret `tenant-database` in the tenant namespace.
    Secret(Box<Api<Secret>>),
    /// `tenants/<name>/database` in Vault, read by the tenant's Kubernetes-auth role.
    Vault(&'a Vault),
}

enum StoreError {
    Kube(kube::Error),
    Vault(VaultError),
}

impl CredentialStore<'_> {
    /// The password already handed out, so reconciles never rotate it by accident.
    async fn handed_out_password(&self, tenant: &str) -> Result<Option<String>, StoreError> {
        match self {
            CredentialStore::Secret(api) => {
                let secret = api.get_opt(DATABASE_SECRET).await.map_err(StoreError::Kube)?;
                Ok(secret
                    .and_then(|s| s.data)
                    .and_then(|d| d.get("password").cloned())
                    .and_then(|p| String::from_utf8(p.0).ok()))
            }
            CredentialStore::Vault(vault) => {
                let data = vault.read(&Vault::tenant_database_path(tenant)).await.map_err(StoreError::Vault)?;
                Ok(data.and_then(|d| d.get("password").cloned()))
            }
        }
    }

    /// Stores the credentials; returns what the `SecretsReady` condition says.
    async fn store(
        &self,
        owner: &Owner,
        creds: &TenantCredentials,
        applier: Applier<'_>,
        config: &crate::Config,
    ) -> Result<String, StoreError> {
        match self {
            CredentialStore::Secret(api) => {
                applier.ensure(api, &build::database_secret(owner, creds)).await.map_err(StoreError::Kube)?;
                Ok(format!("Secret {DATABASE_SECRET} holds the credentials of {}", creds.username))
            }
            CredentialStore::Vault(vault) => {
                let path = Vault::tenant_database_path(&owner.name);
                vault.write(&path, &build::database_fields(creds)).await.map_err(StoreError::Vault)?;
                vault
                    .ensure_tenant_access(&owner.name, &owner.namespace, build::WORKLOAD_SERVICE_ACCOUNT)
                    .await
                    .map_err(StoreError::Vault)?;
                Ok(format!(
                    "Vault path {}/{path} holds the credentials of {}; role and policy {} let {} read it",
                    config.vault_kv_mount,
                    creds.username,
                    Vault::tenant_policy(&owner.name),
                    build::WORKLOAD_SERVICE_ACCOUNT
                ))
            }
        }
    }
}

/// Business services count as ready when the catalog offers every one and every Deployment
/// has its replicas available.
async fn services_condition(tenant: &Tenant, c: &Children, ctx: &Context) -> Result<Observed, Error> {
    if let Some(missing) = status::services_not_in_catalog(&c.services_not_in_catalog) {
        return Ok(missing);
    }
    if c.services.is_empty() {
        return Ok(Observed::ok(SERVICES_READY, "NoServices", "The tenant runs no business services"));
    }
    if tenant.spec.suspended {
        return Ok(Observed::ok(SERVICES_READY, "Suspended", "Business services are scaled to zero"));
    }
    let api: Api<Deployment> = Api::namespaced(ctx.client.clone(), &build::namespace_name(&tenant.name_any()));
    let mut waiting = Vec::new();
    for w in &c.services {
        let name = w.service_name.as_str();
        let available = api.get_opt(name).await?.is_some_and(|d| {
            let current = d.status.as_ref().is_some_and(|s| s.observed_generation >= d.metadata.generation);
            let replicas = d.status.as_ref().and_then(|s| s.available_replicas).unwrap_or(0);
            current && replicas >= 1
        });
        if !available {
            waiting.push(name);
        }
    }
    Ok(if waiting.is_empty() {
        Observed::ok(SERVICES_READY, "Available", format!("{} business services are available", c.services.len()))
    } else {
        Observed::failed(
            SERVICES_READY,
            "ServicesUnavailable",
            format!("Waiting for {} to become available", waiting.join(", ")),
        )
    })
}

/// Writes the status only when it changed, and records an event for each condition that
/// flipped.
async fn write_status(tenant: &Tenant, ctx: &Context, next: TenantStatus) -> Result<(), Error> {
    let previous = tenant.status.clone().unwrap_or_default();
    if previous == next {
        return Ok(());
    }
    let api: Api<Tenant> = Api::all(ctx.client.clone());
    let patch = serde_json::json!({ "status": next });
    api.patch_status(&tenant.name_any(), &PatchParams::default(), &Patch::Merge(&patch)).await?;
    ctx.metrics.write(CONTROLLER, "Tenant", "status");
    ctx.record_transitions(&tenant.object_ref(&()), &previous.conditions, &next.conditions).await;
    Ok(())
}

/// Applies the deletion policy to the tenant's data, then removes the namespace.
async fn cleanup(tenant: &Tenant, ctx: &Context) -> Result<Action, Error> {
    let name = tenant.name_any();
    let policy = tenant.spec.database.deletion_policy;
    if let Some(admin) = &ctx.postgres {
        if build::validate_name(&name).is_ok() {
            let names = TenantNames::new(&name)?;
            admin.retire_tenant(&names, tenant.spec.database.isolation, policy).await?;
        }
    } else {
        warn!("no database configured: the tenant's database is left as it is");
    }
    if tenant.spec.secrets.backend == SecretsBackend::Vault {
        match &ctx.vault {
            Some(vault) => vault.remove_tenant(&name).await?,
            None => warn!("no Vault configured: the tenant's Vault path, policy and role are left as they are"),
        }
    }
    let namespaces: Api<Namespace> = Api::all(ctx.client.clone());
    let ns_name = build::namespace_name(&name);
    if let Some(ns) = namespaces.get_opt(&ns_name).await?
        && is_ours(&ns, &name)
        && ns.metadata.deletion_timestamp.is_none()
    {
        namespaces.delete(&ns_name, &DeleteParams::background()).await?;
        ctx.metrics.write(CONTROLLER, "Namespace", "delete");
    }
    if let Some(uid) = &tenant.metadata.uid {
        ctx.applied_tenants.lock().expect("applied tenants lock").remove(uid);
        ctx.provisioned_databases.lock().expect("provisioned databases lock").remove(uid);
    }
    info!(deletion_policy = ?policy, "tenant removed");
    Ok(Action::await_change())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn foreign_namespaces_are_not_ours() {
        let mut ns = Namespace::default();
        ns.metadata.name = Some("tenant-acme".into());
        assert!(!is_ours(&ns, "acme"));
        ns.metadata.labels = Some([(LABEL_MANAGED_BY.to_string(), MANAGED_BY.to_string())].into());
        assert!(!is_ours(&ns, "acme"), "our label for another tenant is not enough");
        ns.labels_mut().insert(LABEL_TENANT.into(), "acme".into());
        assert!(is_ours(&ns, "acme"));
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
    }

    #[test]
    fn error_categories_are_stable() {
        assert_eq!(Error::Build(BuildError::MissingUid).category(), "invalid_spec");
        assert_eq!(Error::Database(DatabaseError::Connect("x".into())).category(), "database");
    }
}
