//! Which Vault paths an Integration may name. The operator reads them with its own token, so
//! an Integration may name only its tenant's own subtree: otherwise an owner of tenant A
//! could have tenant B's secrets projected into A's namespace.

/// Why an Integration in a namespace of `tenant` may not read `path`, if it may not.
pub fn refusal(path: &str, tenant: Option<&str>) -> Option<String> {
    let Some(tenant) = tenant else {
        return Some("Vault credentials are read only for Integrations in a Tenant's namespace".into());
    };
    let segments: Vec<&str> = path.split('/').collect();
    if segments.iter().any(|s| s.is_empty() || *s == "." || *s == "..") {
        return Some(format!("credentials.vault.path {path:?} is not a plain path (no empty, . or .. segments)"));
    }
    match segments.as_slice() {
        ["tenants", t, owned, ..] if *t == tenant && crate::vault::OPERATOR_OWNED.contains(owned) => {
            Some(format!("credentials.vault.path may not name tenants/{tenant}/{owned}: the operator writes it"))
        }
        ["tenants", t, _, ..] if *t == tenant => None,
        _ => Some(format!("credentials.vault.path must be under tenants/{tenant}/, the tenant's own Vault path")),
    }
}

#[cfg(test)]
mod tests {
    use super::refusal;

    #[test]
    fn only_the_tenants_own_subtree_is_read() {
        assert_eq!(refusal("tenants/acme/openrouter", Some("acme")), None);
        assert_eq!(refusal("tenants/acme/a/b", Some("acme")), None);
        for stolen in [
            "tenants/globex/openrouter",
            "tenants/acme",
            "tenants/acmex/key",
            "platform/root",
            "tenants/acme/../globex/k",
            // The operator's own: the tenant's database credentials.
            "tenants/acme/database",
            "tenants/acme/database/old",
        ] {
            assert!(refusal(stolen, Some("acme")).is_some(), "{stolen}");
        }
        assert!(refusal("tenants//acme/x", Some("acme")).is_some());
        assert!(refusal("tenants/acme/x", None).is_some(), "no tenant, no Vault");
    }
}
