//! Deleting a Tenant: the finalizer holds it until its deletion policy has been applied to
//! its database and Vault paths, then its namespace is removed.

use super::controller::Error;
use super::{CONTROLLER, apply::is_ours, build};
use crate::context::Context;
use crate::postgres::TenantNames;
use bizosaas_crds::Tenant;
use bizosaas_crds::common::READY;
use bizosaas_crds::tenant::{DatabaseIsolation, DeletionPolicy, SecretsBackend};
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, Patch, PatchParams};
use kube::runtime::controller::Action;
use serde_json::{Value, json};
use tracing::{info, warn};

/// Finalizer that holds a Tenant until its deletion policy has been applied.
pub const FINALIZER: &str = "bizosaas.io/tenant-cleanup";

/// Replaces the Tenant's finalizers, conditional on the resourceVersion it was read at. A
/// Tenant already gone counts as done: the answer is false then.
pub(super) async fn set_finalizers(
    tenant: &Tenant,
    ctx: &Context,
    finalizers: serde_json::Value,
) -> Result<bool, Error> {
    let api: Api<Tenant> = Api::all(ctx.client.clone());
    let patch = serde_json::json!({
        "metadata": {"finalizers": finalizers, "resourceVersion": tenant.metadata.resource_version}
    });
    match api.patch(&tenant.name_any(), &PatchParams::default(), &Patch::Merge(&patch)).await {
        Ok(_) => {}
        Err(kube::Error::Api(status)) if status.code == 404 => return Ok(false),
        Err(e) => return Err(e.into()),
    }
    ctx.metrics.write(CONTROLLER, "Tenant", "finalizer");
    Ok(true)
}

/// Adds this operator's finalizer to the Tenant's; false when the Tenant is gone.
pub(super) async fn add_finalizer(tenant: &Tenant, ctx: &Context) -> Result<bool, Error> {
    let mut all: Vec<&str> = tenant.finalizers().iter().map(String::as_str).collect();
    all.push(FINALIZER);
    set_finalizers(tenant, ctx, serde_json::json!(all)).await
}

/// Applies the deletion policy to the tenant's data, then removes the namespace.
pub(super) async fn cleanup(tenant: &Tenant, ctx: &Context) -> Result<Action, Error> {
    let name = tenant.name_any();
    let policy = tenant.spec.database.deletion_policy;
    if let Some(admin) = &ctx.postgres {
        if build::validate_name(&name).is_ok() {
            let names = TenantNames::new(&name)?;
            let claim = super::database::claim(tenant);
            let isolation = tenant.spec.database.isolation;
            if !admin.retire_claimed_tenant(&names, isolation, policy, &claim).await? {
                warn!("the database and roles of this name are not this Tenant's: they are left as they are");
            } else if policy == DeletionPolicy::Retain && claim.provisioned_before {
                // The kept data says why its login stopped working (with Delete the log goes
                // too; a Tenant that never had its database has no log).
                let detail = json!({"loginDisabled": names.app_role});
                admin.record_action(&names, isolation, "database.retained", &claim.uid, detail).await?;
            }
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
        && is_ours(&ns.metadata, &name)
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

/// Reports `Terminating` (phase, `Ready=False`, `Reconciling=True`) while the finalizer runs,
/// once: a Tenant already reported so is left alone. Returns the resourceVersion the write
/// produced, which the finalizer's removal is then conditional on.
pub(super) async fn report_terminating(
    name: &str,
    phase: Option<&str>,
    message: &str,
    ctx: &Context,
) -> Result<Option<String>, Error> {
    if phase == Some("Terminating") {
        return Ok(None);
    }
    let now = Timestamp::now().to_string();
    let condition = |type_: &str, status: &str| json!({"type": type_, "status": status, "reason": "Terminating", "message": message, "lastTransitionTime": now});
    let patch = json!({"status": {"phase": "Terminating", "conditions": [condition(READY, "False"), condition(crate::conditions::RECONCILING, "True")]}});
    let api: Api<Tenant> = Api::all(ctx.client.clone());
    let written = match api.patch_status(name, &PatchParams::default(), &Patch::Merge(&patch)).await {
        Ok(tenant) => tenant.metadata.resource_version,
        Err(kube::Error::Api(status)) if status.code == 404 => None,
        Err(e) => return Err(e.into()),
    };
    ctx.metrics.write(CONTROLLER, "Tenant", "status");
    Ok(written)
}

/// Deletes a Tenant this operator cannot read (written under a CRD version it does not know,
/// say): its finalizer still runs, from what can be read of the raw object. A deletion policy
/// or isolation that cannot be read means `Retain`, so a guess never drops data.
pub(super) async fn cleanup_unreadable(meta: &ObjectMeta, error: &str, ctx: &Context) -> Result<Action, Error> {
    let name = meta.name.clone().unwrap_or_default();
    let api: Api<DynamicObject> = Api::all_with(ctx.client.clone(), &ApiResource::erase::<Tenant>(&()));
    let Some(raw) = api.get_opt(&name).await? else { return Ok(Action::await_change()) };
    let raw = serde_json::to_value(&raw).unwrap_or(Value::Null);
    let tenant = salvage(&raw);
    let message = format!(
        "The Tenant is being deleted with deletionPolicy {:?}; this operator cannot read its spec ({error})",
        tenant.spec.database.deletion_policy
    );
    let mut tenant = tenant;
    let phase = raw.pointer("/status/phase").and_then(Value::as_str);
    if let Some(version) = report_terminating(&name, phase, &message, ctx).await? {
        tenant.metadata.resource_version = Some(version);
    }
    warn!(tenant = %name, error, "deleting a Tenant whose spec cannot be read");
    let action = cleanup(&tenant, ctx).await?;
    let rest: Vec<&String> = tenant.finalizers().iter().filter(|f| *f != FINALIZER).collect();
    set_finalizers(&tenant, ctx, json!(rest)).await?;
    Ok(action)
}

/// The parts of a raw Tenant that its cleanup needs, each read on its own: metadata, the
/// database's isolation and deletion policy (`Retain` unless both read cleanly) and the secrets
/// backend (Vault if it cannot be read, so the tenant's Vault access is revoked).
pub fn salvage(raw: &Value) -> Tenant {
    fn field<T: serde::de::DeserializeOwned>(raw: &Value, pointer: &str) -> Option<T> {
        raw.pointer(pointer).and_then(|v| serde_json::from_value(v.clone()).ok())
    }
    let metadata: ObjectMeta = field(raw, "/metadata").unwrap_or_default();
    let isolation: Option<DatabaseIsolation> = field(raw, "/spec/database/isolation");
    let policy: Option<DeletionPolicy> = field(raw, "/spec/database/deletionPolicy");
    let backend: SecretsBackend = field(raw, "/spec/secrets/backend").unwrap_or(SecretsBackend::Vault);
    let mut tenant = Tenant::new(&metadata.name.clone().unwrap_or_default(), Default::default());
    tenant.metadata = metadata;
    tenant.spec.database.isolation = isolation.unwrap_or_default();
    tenant.spec.database.deletion_policy = match (isolation, policy) {
        (Some(_), Some(policy)) => policy,
        _ => DeletionPolicy::Retain,
    };
    tenant.spec.secrets.backend = backend;
    tenant
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(spec: Value) -> Value {
        json!({"metadata": {"name": "acme", "uid": "u1", "finalizers": [FINALIZER, "other"]}, "spec": spec})
    }

    #[test]
    fn an_unreadable_tenant_keeps_what_can_be_read() {
        let spec = json!({"plan": "platinum", "database": {"isolation": "Dedicated", "deletionPolicy": "Delete"},
                          "secrets": {"backend": "Kubernetes"}});
        let t = salvage(&raw(spec));
        assert_eq!(t.name_any(), "acme");
        assert_eq!(t.metadata.uid.as_deref(), Some("u1"));
        assert_eq!(t.finalizers(), [FINALIZER, "other"]);
        assert_eq!(t.spec.database.deletion_policy, DeletionPolicy::Delete);
        assert_eq!(t.spec.database.isolation, DatabaseIsolation::Dedicated);
        assert_eq!(t.spec.secrets.backend, SecretsBackend::Kubernetes);
    }

    #[test]
    fn a_guess_never_drops_data() {
        let unreadable_policy = json!({"database": {"isolation": "Dedicated", "deletionPolicy": "Shred"}});
        assert_eq!(salvage(&raw(unreadable_policy)).spec.database.deletion_policy, DeletionPolicy::Retain);
        let unreadable_isolation = json!({"database": {"isolation": "Sharded", "deletionPolicy": "Delete"}});
        assert_eq!(salvage(&raw(unreadable_isolation)).spec.database.deletion_policy, DeletionPolicy::Retain);
        let nothing = salvage(&raw(json!("not an object")));
        assert_eq!(nothing.spec.database.deletion_policy, DeletionPolicy::Retain);
        assert_eq!(nothing.spec.secrets.backend, SecretsBackend::Vault, "Vault access is revoked when unsure");
    }
}
