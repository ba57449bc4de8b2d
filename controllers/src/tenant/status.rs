//! The Tenant's status: one condition per concern, a phase and a `Ready` summary.

use super::build::{self, Children};
use super::controller::Error;
use crate::conditions::{self, Observed};
use crate::context::Context;
use crate::scaffold::Scaffold;
use bizosaas_crds::Tenant;
use bizosaas_crds::common::READY;
use bizosaas_crds::tenant::{BusinessService, TenantPhase, TenantStatus};
use k8s_openapi::api::apps::v1::Deployment;
use kube::ResourceExt;
use kube::api::Api;

pub const NAMESPACE_READY: &str = "NamespaceReady";
pub const QUOTA_READY: &str = "QuotaReady";
pub const NETWORK_READY: &str = "NetworkReady";
pub const RBAC_READY: &str = "RBACReady";
pub const DATABASE_READY: &str = "DatabaseReady";
pub const SECRETS_READY: &str = "SecretsReady";
pub const SERVICES_READY: &str = "ServicesReady";

/// Builds the next status from the conditions one reconcile observed. `Ready` is True only
/// when every other condition is; otherwise it carries the first permanent failure, or the
/// first failure when none is permanent.
pub fn next(tenant: &Tenant, observed: Vec<Observed>, database: Option<String>) -> TenantStatus {
    let previous = tenant.status.clone().unwrap_or_default();
    let failing = observed
        .iter()
        .find(|o| !o.status && is_permanent(&o.reason))
        .or_else(|| observed.iter().find(|o| !o.status))
        .cloned();
    let ready = if tenant.spec.suspended {
        Observed::ok(READY, "Suspended", "The tenant is suspended: its data is kept and no workloads run")
    } else {
        Observed::ok(READY, "Provisioned", "Every part of the tenant is provisioned")
    };
    let phase = match (&failing, tenant.spec.suspended) {
        (None, true) => TenantPhase::Suspended,
        (None, false) => TenantPhase::Ready,
        (Some(f), _) if is_permanent(&f.reason) => TenantPhase::Failed,
        (Some(_), _) => TenantPhase::Provisioning,
    };
    let mut all = observed;
    conditions::summarize(&mut all, ready, is_permanent, |_| false);
    let generation = tenant.metadata.generation;
    let mut conditions = conditions::merge(&previous.conditions, &all, generation);
    // The usage reporter's condition, which this reconcile does not observe.
    conditions.extend(previous.conditions.iter().filter(|c| c.type_ == super::usage::BUDGET_EXHAUSTED).cloned());
    // The usage exporter's, while the Tenant still asks for the export.
    if tenant.spec.billing.as_ref().is_some_and(|b| b.lago.is_some()) {
        conditions.extend(previous.conditions.iter().filter(|c| c.type_ == super::billing::USAGE_EXPORTED).cloned());
    }
    TenantStatus {
        phase: Some(phase),
        namespace: Some(super::build::namespace_name(&tenant.metadata.name.clone().unwrap_or_default())),
        database: database.or(previous.database),
        observed_generation: generation,
        // Written by the usage reporter; carried so that an idle reconcile changes nothing.
        usage: previous.usage,
        conditions,
    }
}

/// `ServicesReady` when the Tenant names services the operator's catalog lacks; `None` when
/// the catalog offers them all. Their Deployments cannot be built, so waiting would not help.
pub fn services_not_in_catalog(missing: &[BusinessService]) -> Option<Observed> {
    let (first, rest) = missing.split_first()?;
    let names = rest.iter().fold(first.as_str().to_string(), |names, s| format!("{names}, {}", s.as_str()));
    let (noun, verb, them) = if rest.is_empty() { ("Service", "is", "it") } else { ("Services", "are", "them") };
    Some(Observed::failed(
        SERVICES_READY,
        "ServiceNotInCatalog",
        format!(
            "{noun} {names} {verb} not in the operator's service catalog (--services-file): \
             add {them} to the catalog or remove {them} from spec.services"
        ),
    ))
}

/// Failures only a change of the spec or of the operator's configuration can fix.
pub fn is_permanent(reason: &str) -> bool {
    matches!(
        reason,
        "NamespaceConflict"
            | "DatabaseConflict"
            | "InvalidSpec"
            | "DatabaseNotConfigured"
            | "VaultNotConfigured"
            | "ServiceNotInCatalog"
            | "DomainConflict"
    )
}

/// Business services count as ready when the catalog offers every one and every Deployment
/// has its replicas available.
pub async fn services(tenant: &Tenant, c: &Children, ctx: &Context) -> Result<Observed, Error> {
    if let Some(missing) = services_not_in_catalog(&c.services_not_in_catalog) {
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
pub async fn write(tenant: &Tenant, s: &Scaffold, next: TenantStatus) -> Result<(), Error> {
    let previous = tenant.status.clone().unwrap_or_default();
    if previous == next {
        return Ok(());
    }
    let api: Api<Tenant> = Api::all(s.ctx.client.clone());
    s.patch_status(&api, tenant, &next, &previous.conditions, &next.conditions).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tenant::build::fixtures;

    #[test]
    fn ready_summarises_the_first_failure() {
        let tenant = fixtures::tenant(fixtures::ACME);
        let status = next(
            &tenant,
            vec![
                Observed::ok(NAMESPACE_READY, "Applied", ""),
                Observed::failed(DATABASE_READY, "DatabaseUnavailable", "cannot connect"),
            ],
            None,
        );
        let ready = status.conditions.iter().find(|c| c.type_ == READY).unwrap();
        assert_eq!((ready.status.as_str(), ready.reason.as_str()), ("False", "DatabaseUnavailable"));
        assert_eq!(status.phase, Some(TenantPhase::Provisioning));
        assert_eq!(status.namespace.as_deref(), Some("tenant-acme"));
    }

    #[test]
    fn an_operator_without_a_database_stalls_the_tenant() {
        let tenant = fixtures::tenant(fixtures::ACME);
        let status =
            next(&tenant, vec![Observed::failed(DATABASE_READY, "DatabaseNotConfigured", "no --database-url")], None);
        let stalled = status.conditions.iter().find(|c| c.type_ == crate::conditions::STALLED).unwrap();
        assert_eq!((stalled.status.as_str(), stalled.reason.as_str()), ("True", "DatabaseNotConfigured"));
        assert_eq!(status.phase, Some(TenantPhase::Failed));
    }

    #[test]
    fn services_missing_from_the_catalog_fail_the_tenant_by_name() {
        assert_eq!(services_not_in_catalog(&[]), None);
        let one = services_not_in_catalog(&[BusinessService::Cms]).unwrap();
        assert_eq!((one.type_, one.status, one.reason.as_str()), (SERVICES_READY, false, "ServiceNotInCatalog"));
        assert!(one.message.starts_with("Service cms is not in the operator's service catalog"), "{}", one.message);
        let two = services_not_in_catalog(&[BusinessService::Cms, BusinessService::Gaming]).unwrap();
        assert!(two.message.starts_with("Services cms, gaming are not"), "{}", two.message);

        let tenant = fixtures::tenant(fixtures::ACME);
        let status = next(&tenant, vec![Observed::ok(NAMESPACE_READY, "Applied", ""), one], None);
        let ready = status.conditions.iter().find(|c| c.type_ == READY).unwrap();
        assert_eq!((ready.status.as_str(), ready.reason.as_str()), ("False", "ServiceNotInCatalog"));
        assert_eq!(status.phase, Some(TenantPhase::Failed));
    }

    #[test]
    fn a_conflict_is_a_failure_not_progress() {
        let tenant = fixtures::tenant(fixtures::ACME);
        let status = next(&tenant, vec![Observed::failed(NAMESPACE_READY, "NamespaceConflict", "")], None);
        assert_eq!(status.phase, Some(TenantPhase::Failed));
    }

    #[test]
    fn a_domain_conflict_stalls_the_tenant_while_its_database_is_still_provisioning() {
        let tenant = fixtures::tenant(fixtures::ACME);
        let observed = vec![
            Observed::failed(DATABASE_READY, "DatabaseUnavailable", "cannot connect"),
            Observed::failed(SERVICES_READY, "DomainConflict", "shop.example is claimed by tenant first"),
        ];
        let status = next(&tenant, observed, None);
        let reason = |type_: &str| status.conditions.iter().find(|c| c.type_ == type_).map(|c| c.reason.as_str());
        assert_eq!((reason(READY), reason(conditions::STALLED)), (Some("DomainConflict"), Some("DomainConflict")));
        assert_eq!(reason(conditions::RECONCILING), None);
        assert_eq!(status.phase, Some(TenantPhase::Failed));
    }

    #[test]
    fn the_usage_export_condition_survives_reconciles_while_billing_asks_for_it() {
        use bizosaas_crds::tenant::{BillingSpec, LagoBilling};
        let mut tenant = fixtures::tenant(fixtures::ACME);
        tenant.spec.billing =
            Some(BillingSpec { lago: Some(LagoBilling { external_subscription_id: "sub_acme".into() }) });
        let exported = conditions::merge(
            &[],
            &[Observed::failed(super::super::billing::USAGE_EXPORTED, "LagoRefused", "HTTP 401 Unauthorized")],
            Some(1),
        );
        tenant.status = Some(TenantStatus { conditions: exported.clone(), ..Default::default() });
        let status = next(&tenant, vec![Observed::ok(NAMESPACE_READY, "Applied", "")], None);
        let kept: Vec<_> = status.conditions.iter().filter(|c| c.type_ == "UsageExported").collect();
        assert_eq!(kept, [&exported[0]], "the exporter's condition is carried as it is");
        let ready = status.conditions.iter().find(|c| c.type_ == READY).unwrap();
        assert_eq!(ready.status, "True", "a billing failure does not make the tenant unready");

        tenant.spec.billing = None;
        let status = next(&tenant, vec![Observed::ok(NAMESPACE_READY, "Applied", "")], None);
        assert!(status.conditions.iter().all(|c| c.type_ != "UsageExported"), "dropped with billing.lago");
    }

    #[test]
    fn suspended_and_converged_is_ready_with_phase_suspended() {
        let mut tenant = fixtures::tenant(fixtures::ACME);
        tenant.spec.suspended = true;
        let status = next(&tenant, vec![Observed::ok(NAMESPACE_READY, "Applied", "")], Some("tenant_acme".into()));
        assert_eq!(status.phase, Some(TenantPhase::Suspended));
        assert!(bizosaas_crds::common::is_ready(&status.conditions));
        assert_eq!(status.database.as_deref(), Some("tenant_acme"));
    }
}
