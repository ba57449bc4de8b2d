//! The tenant's ServiceAccount, the RoleBinding of its owners, and the operator's own
//! RoleBinding: the operator holds no cluster-wide rights on Secrets, Deployments or Jobs,
//! only these, in each tenant namespace.

use super::{Owner, WORKLOAD_SERVICE_ACCOUNT};
use bizosaas_crds::tenant::{Owner as TenantOwner, OwnerKind};
use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::{RoleBinding, RoleRef, Subject};

/// ClusterRole bound to a tenant's owners inside its namespace; ships with the manifests.
pub const TENANT_ADMIN_ROLE: &str = "bizosaas-tenant-admin";

/// ClusterRole holding what the operator does inside a tenant namespace; ships with the chart
/// and bound only by [`operator_binding`].
pub const OPERATOR_TENANT_ROLE: &str = "bizosaas-operator-tenant";
/// Name of the operator's RoleBinding in each tenant namespace.
pub const OPERATOR_BINDING: &str = "bizosaas-operator";

/// Binds the operator's ServiceAccount to [`OPERATOR_TENANT_ROLE`] in the tenant namespace.
pub fn operator_binding(owner: &Owner, operator_namespace: &str, operator_account: &str) -> RoleBinding {
    RoleBinding {
        metadata: owner.meta(OPERATOR_BINDING, "rbac", true),
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".into(),
            kind: "ClusterRole".into(),
            name: OPERATOR_TENANT_ROLE.into(),
        },
        subjects: Some(vec![Subject {
            api_group: None,
            kind: "ServiceAccount".into(),
            name: operator_account.into(),
            namespace: Some(operator_namespace.into()),
        }]),
    }
}

/// `tenant-workload`, the identity of the tenant's services and agents (and of its Vault role).
pub fn service_account(owner: &Owner) -> ServiceAccount {
    ServiceAccount { metadata: owner.meta(WORKLOAD_SERVICE_ACCOUNT, "rbac", true), ..Default::default() }
}

/// One RoleBinding of every owner to the tenant admin ClusterRole, none without owners.
pub fn role_bindings(owner: &Owner, owners: &[TenantOwner]) -> Vec<RoleBinding> {
    if owners.is_empty() {
        return Vec::new();
    }
    let subjects = owners
        .iter()
        .map(|o| match o.kind {
            OwnerKind::User | OwnerKind::Group => Subject {
                api_group: Some("rbac.authorization.k8s.io".into()),
                kind: format!("{:?}", o.kind),
                name: o.name.clone(),
                namespace: None,
            },
            OwnerKind::ServiceAccount => Subject {
                api_group: None,
                kind: "ServiceAccount".into(),
                name: o.name.clone(),
                namespace: o.namespace.clone(),
            },
        })
        .collect();
    vec![RoleBinding {
        metadata: owner.meta("tenant-admins", "rbac", true),
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".into(),
            kind: "ClusterRole".into(),
            name: TENANT_ADMIN_ROLE.into(),
        },
        subjects: Some(subjects),
    }]
}

#[cfg(test)]
mod tests {
    use super::super::{Owner, fixtures};
    use super::*;

    #[test]
    fn the_operator_is_bound_to_its_tenant_role_only_here() {
        let owner = Owner::of(&fixtures::tenant(fixtures::ACME)).unwrap();
        let rb = operator_binding(&owner, "bizosaas-system", "bizosaas-operator");
        assert_eq!(rb.metadata.namespace.as_deref(), Some("tenant-acme"));
        assert_eq!((rb.role_ref.kind.as_str(), rb.role_ref.name.as_str()), ("ClusterRole", OPERATOR_TENANT_ROLE));
        let subject = &rb.subjects.as_ref().unwrap()[0];
        assert_eq!((subject.kind.as_str(), subject.name.as_str()), ("ServiceAccount", "bizosaas-operator"));
        assert_eq!(subject.namespace.as_deref(), Some("bizosaas-system"));
    }

    #[test]
    fn owners_are_bound_to_the_admin_cluster_role() {
        let tenant = fixtures::tenant(fixtures::ACME);
        let rbs = role_bindings(&Owner::of(&tenant).unwrap(), &tenant.spec.owners);
        assert_eq!(rbs.len(), 1);
        assert_eq!(rbs[0].role_ref.name, TENANT_ADMIN_ROLE);
        let subjects = rbs[0].subjects.as_ref().unwrap();
        assert_eq!((subjects[0].kind.as_str(), subjects[0].name.as_str()), ("User", "alice@acme.example"));
        assert_eq!((subjects[1].kind.as_str(), subjects[1].name.as_str()), ("Group", "acme-admins"));
    }

    #[test]
    fn service_account_owners_keep_their_namespace() {
        let tenant = fixtures::tenant(fixtures::MINIMAL);
        let owners =
            vec![TenantOwner { kind: OwnerKind::ServiceAccount, name: "ci".into(), namespace: Some("ci".into()) }];
        let rbs = role_bindings(&Owner::of(&tenant).unwrap(), &owners);
        let s = &rbs[0].subjects.as_ref().unwrap()[0];
        assert_eq!((s.api_group.as_deref(), s.namespace.as_deref()), (None, Some("ci")));
        assert!(role_bindings(&Owner::of(&tenant).unwrap(), &[]).is_empty());
    }
}
