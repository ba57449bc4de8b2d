//! Pure builders: a Tenant's spec and the operator configuration in, the desired child
//! objects out. Nothing here talks to a server, so every builder is unit-tested from fixtures.

pub mod domains;
mod namespace;
mod network;
mod quota;
mod rbac;
mod secret;
mod services;
mod workload;

pub use namespace::namespace;
pub use network::{DATABASE_POLICY, database_client, database_policy, network_policies};
pub use quota::{limit_range, resource_quota};
pub use rbac::{OPERATOR_BINDING, operator_binding, role_bindings, service_account};
pub use secret::{database_fields, database_secret};
pub use services::{ServiceWorkload, ServiceWorkloads, service_workloads};
pub use workload::{http_service, restricted_container, restricted_pod, tmp_mount, tmp_volume};

use crate::context::Config;
use bizosaas_crds::tenant::BusinessService;
use bizosaas_crds::{LABEL_MANAGED_BY, LABEL_TENANT, MANAGED_BY, Tenant};
use k8s_openapi::api::core::v1::{LimitRange, Namespace, ResourceQuota, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::rbac::v1::RoleBinding;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::{Resource, ResourceExt};
use std::collections::BTreeMap;

/// Name of the ServiceAccount tenant workloads run as.
pub const WORKLOAD_SERVICE_ACCOUNT: &str = "tenant-workload";
/// Name of the Secret with the tenant's database credentials.
pub const DATABASE_SECRET: &str = "tenant-database";
/// Label naming which part of the tenant an object belongs to.
pub const LABEL_COMPONENT: &str = "bizosaas.io/component";
/// Label (`"true"`) of pods that connect to the tenant database: the `allow-database`
/// NetworkPolicy selects them.
pub const LABEL_DATABASE_CLIENT: &str = "bizosaas.io/database-client";

/// A tenant spec the builders cannot turn into objects. The API server's schema rejects most
/// bad input first; this catches what slips past it (e.g. objects created before a CRD update).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BuildError {
    #[error(
        "tenant name {0:?} cannot name a namespace and a database: use at most 40 lower-case letters, digits and '-', starting with a letter"
    )]
    InvalidName(String),
    #[error("the Tenant has no uid yet")]
    MissingUid,
}

/// Everything a Tenant reconciles into, except what needs the database first.
#[derive(Clone, Debug)]
pub struct Children {
    pub namespace: Namespace,
    pub resource_quota: ResourceQuota,
    pub limit_range: LimitRange,
    pub network_policies: Vec<NetworkPolicy>,
    pub service_account: ServiceAccount,
    pub role_bindings: Vec<RoleBinding>,
    /// The operator's own RoleBinding: written right after the namespace, before anything it
    /// grants the right to write.
    pub operator_binding: RoleBinding,
    pub services: Vec<ServiceWorkload>,
    /// Services the Tenant names that the operator's service catalog lacks.
    pub services_not_in_catalog: Vec<BusinessService>,
}

/// The container ports the tenant's business services serve on.
fn serving_ports(workloads: &[ServiceWorkload]) -> Vec<i32> {
    workloads
        .iter()
        .filter_map(|w| w.deployment.spec.as_ref()?.template.spec.as_ref())
        .flat_map(|pod| pod.containers.iter().flat_map(|c| c.ports.iter().flatten().map(|p| p.container_port)))
        .collect()
}

/// Builds the desired children of a Tenant.
pub fn children(tenant: &Tenant, config: &Config) -> Result<Children, BuildError> {
    let owner = Owner::of(tenant)?;
    let quota = config.plans.effective(tenant.spec.plan, tenant.spec.quota.as_ref());
    let services = service_workloads(&owner, &tenant.spec, config);
    Ok(Children {
        namespace: namespace(&owner),
        resource_quota: resource_quota(&owner, &quota, tenant.spec.suspended),
        limit_range: limit_range(&owner),
        network_policies: network_policies(
            &owner,
            tenant.spec.network_isolation,
            &serving_ports(&services.workloads),
            config,
        ),
        service_account: service_account(&owner),
        role_bindings: role_bindings(&owner, &tenant.spec.owners),
        operator_binding: {
            let (namespace, account) = config.operator_account();
            operator_binding(&owner, &namespace, &account)
        },
        services: services.workloads,
        services_not_in_catalog: services.not_in_catalog,
    })
}

/// The namespace of a tenant.
pub fn namespace_name(tenant_name: &str) -> String {
    format!("tenant-{tenant_name}")
}

/// Checks a tenant name the way the CRD's CEL rule does.
pub fn validate_name(name: &str) -> Result<(), BuildError> {
    let valid = !name.is_empty()
        && name.len() <= 40
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && !name.ends_with('-')
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if valid { Ok(()) } else { Err(BuildError::InvalidName(name.to_string())) }
}

/// The owning Tenant as the builders need it: name, namespace and owner reference.
#[derive(Clone, Debug)]
pub struct Owner {
    pub name: String,
    pub namespace: String,
    pub display_name: String,
    reference: k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference,
}

impl Owner {
    pub fn of(tenant: &Tenant) -> Result<Self, BuildError> {
        let name = tenant.name_any();
        validate_name(&name)?;
        let reference = tenant.controller_owner_ref(&()).ok_or(BuildError::MissingUid)?;
        if reference.uid.is_empty() {
            return Err(BuildError::MissingUid);
        }
        Ok(Self { namespace: namespace_name(&name), display_name: tenant.spec.display_name.clone(), name, reference })
    }

    /// Labels on every child.
    pub fn labels(&self, component: &str) -> BTreeMap<String, String> {
        BTreeMap::from([
            (LABEL_MANAGED_BY.to_string(), MANAGED_BY.to_string()),
            (LABEL_TENANT.to_string(), self.name.clone()),
            (LABEL_COMPONENT.to_string(), component.to_string()),
        ])
    }

    /// Metadata of a child in the tenant namespace (or cluster-scoped when `namespaced` is false).
    pub fn meta(&self, name: &str, component: &str, namespaced: bool) -> ObjectMeta {
        ObjectMeta {
            name: Some(name.to_string()),
            namespace: namespaced.then(|| self.namespace.clone()),
            labels: Some(self.labels(component)),
            owner_references: Some(vec![self.reference.clone()]),
            ..Default::default()
        }
    }

    /// Label selector of this tenant's children of one component.
    pub fn selector(&self, component: &str) -> String {
        format!("{LABEL_TENANT}={},{LABEL_COMPONENT}={component}", self.name)
    }
}

#[cfg(test)]
pub(crate) mod fixtures {
    use bizosaas_crds::Tenant;

    /// Parses a Tenant fixture and gives it the uid the API server would.
    pub fn tenant(yaml: &str) -> Tenant {
        let mut tenant: Tenant = serde_saphyr::from_str(yaml).expect("fixture parses");
        tenant.metadata.uid = Some("6b1c1f9e-0000-4000-8000-000000000001".into());
        tenant
    }

    pub const ACME: &str = r##"
apiVersion: bizosaas.io/v1alpha1
kind: Tenant
metadata: {name: acme}
spec:
  displayName: Acme Corp
  plan: growth
  owners:
  - {kind: User, name: alice@acme.example}
  - {kind: Group, name: acme-admins}
  quota: {cpu: "4", memory: 8Gi, storage: 50Gi, pods: 40, agentCrews: 5, workflows: 20, monthlyTokens: 2000000}
  database: {isolation: Dedicated, deletionPolicy: Retain}
  secrets: {backend: Kubernetes}
  services: [crm, cms]
  branding: {logoUrl: "https://acme.example/logo.svg", primaryColor: "#0a7cff", customDomain: app.acme.example}
  networkIsolation: Strict
  suspended: false
"##;

    pub const MINIMAL: &str = r#"
apiVersion: bizosaas.io/v1alpha1
kind: Tenant
metadata: {name: corner-shop}
spec:
  displayName: Corner Shop
"#;
}

#[cfg(test)]
mod tests {
    use super::*;
    use bizosaas_crds::tenant::SecretsBackend;

    #[test]
    fn every_child_is_labelled_and_owned_by_the_tenant() {
        let tenant = fixtures::tenant(fixtures::ACME);
        let c = children(&tenant, &Config::default()).unwrap();
        let mut metas = vec![&c.namespace.metadata, &c.resource_quota.metadata, &c.limit_range.metadata];
        metas.push(&c.service_account.metadata);
        metas.extend(c.network_policies.iter().map(|n| &n.metadata));
        metas.extend(c.role_bindings.iter().map(|n| &n.metadata));
        for s in &c.services {
            metas.extend([&s.deployment.metadata, &s.service.metadata]);
            metas.extend(s.ingress.iter().map(|i| &i.metadata));
        }
        for meta in metas {
            let labels = meta.labels.as_ref().unwrap();
            assert_eq!(labels[LABEL_MANAGED_BY], "bizosaas-operator");
            assert_eq!(labels[LABEL_TENANT], "acme");
            let owner = &meta.owner_references.as_ref().unwrap()[0];
            assert_eq!((owner.kind.as_str(), owner.name.as_str()), ("Tenant", "acme"));
            assert_eq!(owner.controller, Some(true));
            if meta.name.as_deref() != Some("tenant-acme") {
                assert_eq!(meta.namespace.as_deref(), Some("tenant-acme"));
            }
        }
    }

    #[test]
    fn business_service_pods_are_database_clients_whatever_the_secrets_backend() {
        for backend in [SecretsBackend::Kubernetes, SecretsBackend::Vault] {
            let mut tenant = fixtures::tenant(fixtures::ACME);
            tenant.spec.secrets.backend = backend;
            for s in children(&tenant, &Config::default()).unwrap().services {
                let spec = s.deployment.spec.unwrap();
                let labels = spec.template.metadata.unwrap().labels.unwrap();
                assert_eq!(labels[LABEL_DATABASE_CLIENT], "true", "{backend:?}: allow-database selects it");
                let selector = spec.selector.match_labels.unwrap();
                assert!(!selector.contains_key(LABEL_DATABASE_CLIENT), "the Deployment's selector is unchanged");
            }
        }
    }

    #[test]
    fn names_that_would_break_identifiers_are_rejected() {
        for bad in ["", "Acme", "1acme", "acme-", "acme_corp", &"a".repeat(41)] {
            assert!(validate_name(bad).is_err(), "{bad:?} accepted");
        }
        validate_name("acme-2").unwrap();
    }

    #[test]
    fn a_tenant_without_uid_is_not_built() {
        let mut tenant = fixtures::tenant(fixtures::MINIMAL);
        tenant.metadata.uid = None;
        assert_eq!(children(&tenant, &Config::default()).unwrap_err(), BuildError::MissingUid);
    }
}
