//! Deleting a Tenant: the finalizer holds it until its deletion policy has been applied to
//! its database and Vault paths, then its namespace is removed.

use super::controller::Error;
use super::{CONTROLLER, apply::is_ours, build};
use crate::context::Context;
use crate::postgres::TenantNames;
use bizosaas_crds::Tenant;
use bizosaas_crds::tenant::SecretsBackend;
use k8s_openapi::api::core::v1::Namespace;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use tracing::{info, warn};

/// Finalizer that holds a Tenant until its deletion policy has been applied.
pub const FINALIZER: &str = "bizosaas.io/tenant-cleanup";

/// Replaces the Tenant's finalizers, conditional on the resourceVersion it was read at. A
/// Tenant already gone counts as done.
pub(super) async fn set_finalizers(tenant: &Tenant, ctx: &Context, finalizers: serde_json::Value) -> Result<(), Error> {
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

/// Applies the deletion policy to the tenant's data, then removes the namespace.
pub(super) async fn cleanup(tenant: &Tenant, ctx: &Context) -> Result<Action, Error> {
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
