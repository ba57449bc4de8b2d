//! The tenant namespace.

use super::Owner;
use k8s_openapi::api::core::v1::Namespace;

/// Namespace `tenant-<name>`, labelled for the restricted Pod Security Standard so that no
/// tenant workload can run privileged.
pub fn namespace(owner: &Owner) -> Namespace {
    let mut metadata = owner.meta(&owner.namespace, "namespace", false);
    let labels = metadata.labels.get_or_insert_default();
    for mode in ["enforce", "audit", "warn"] {
        labels.insert(format!("pod-security.kubernetes.io/{mode}"), "restricted".into());
    }
    Namespace { metadata, ..Default::default() }
}

#[cfg(test)]
mod tests {
    use super::super::{Owner, fixtures};

    #[test]
    fn namespace_enforces_restricted_pod_security() {
        let ns = super::namespace(&Owner::of(&fixtures::tenant(fixtures::ACME)).unwrap());
        assert_eq!(ns.metadata.name.as_deref(), Some("tenant-acme"));
        let labels = ns.metadata.labels.unwrap();
        assert_eq!(labels["pod-security.kubernetes.io/enforce"], "restricted");
    }
}
