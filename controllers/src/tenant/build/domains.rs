//! Who may serve a custom domain. Hosts are `<service>.<customDomain>`, so two tenants with
//! the same domain would share hosts at the ingress controller, and a domain nested in
//! another's (or in the platform's base domain) could set cookies for it. The first Tenant
//! to claim a domain keeps it; a later one is refused.

use bizosaas_crds::Tenant;
use kube::ResourceExt;

/// Why a Tenant may not use its custom domain.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DomainRefusal {
    #[error("customDomain {domain} is inside the platform's base domain {base}, where tenant hosts are assigned")]
    UnderBaseDomain { domain: String, base: String },
    #[error("customDomain {domain} overlaps {claimed}, claimed earlier by Tenant {tenant}")]
    Claimed { domain: String, claimed: String, tenant: String },
}

/// The Tenant's custom domain, lower-cased.
pub fn custom_domain(tenant: &Tenant) -> Option<String> {
    tenant.spec.branding.as_ref()?.custom_domain.as_ref().map(|d| d.trim_end_matches('.').to_ascii_lowercase())
}

/// True when one domain is the other or lies inside it.
pub fn overlaps(a: &str, b: &str) -> bool {
    a == b || a.ends_with(&format!(".{b}")) || b.ends_with(&format!(".{a}"))
}

/// Checks `tenant`'s custom domain against the platform's base domain and every other
/// Tenant's. Claims are granted oldest Tenant first (then by name), each unless it overlaps
/// one granted before it, so the answer does not depend on which Tenant reconciles first and
/// a refused claim blocks nobody.
pub fn check<'a>(
    tenant: &Tenant,
    others: impl IntoIterator<Item = &'a Tenant>,
    base: &str,
) -> Result<(), DomainRefusal> {
    let Some(domain) = custom_domain(tenant) else { return Ok(()) };
    let base = base.trim_end_matches('.').to_ascii_lowercase();
    if overlaps(&domain, &base) {
        return Err(DomainRefusal::UnderBaseDomain { domain, base });
    }
    let rank = |t: &Tenant| (t.metadata.creation_timestamp.as_ref().map(|c| c.0), t.name_any());
    let ours = rank(tenant);
    let mut earlier: Vec<_> = others
        .into_iter()
        .filter(|other| rank(other) < ours)
        .filter_map(|other| Some((rank(other), custom_domain(other)?)))
        .filter(|(_, claimed)| !overlaps(claimed, &base))
        .collect();
    earlier.sort();
    let mut granted: Vec<(String, String)> = Vec::new();
    for ((_, name), claimed) in earlier {
        if !granted.iter().any(|(g, _)| overlaps(g, &claimed)) {
            granted.push((claimed, name));
        }
    }
    match granted.into_iter().find(|(claimed, _)| overlaps(&domain, claimed)) {
        Some((claimed, tenant)) => Err(DomainRefusal::Claimed { domain, claimed, tenant }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn tenant(name: &str, created: i64, domain: Option<&str>) -> Tenant {
        let mut t: Tenant = serde_json::from_value(serde_json::json!({
            "apiVersion": "bizosaas.io/v1alpha1", "kind": "Tenant", "metadata": {"name": name},
            "spec": {"displayName": name, "branding": {"customDomain": domain}},
        }))
        .unwrap();
        t.metadata.creation_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::from_second(created).unwrap()));
        t
    }

    #[test]
    fn the_first_claim_keeps_the_domain() {
        let acme = tenant("acme", 100, Some("app.acme.example"));
        let thief = tenant("thief", 200, Some("APP.acme.example"));
        let all = [acme.clone(), thief.clone()];
        assert_eq!(check(&acme, &all, "bizosaas.local"), Ok(()));
        let refused = check(&thief, &all, "bizosaas.local").unwrap_err();
        assert_eq!(
            refused,
            DomainRefusal::Claimed {
                domain: "app.acme.example".into(),
                claimed: "app.acme.example".into(),
                tenant: "acme".into()
            }
        );
        assert!(refused.to_string().contains("Tenant acme"));
    }

    #[test]
    fn nested_domains_overlap_both_ways() {
        let acme = tenant("acme", 100, Some("acme.example"));
        let inner = tenant("inner", 200, Some("shop.acme.example"));
        let outer_later = tenant("outer", 300, Some("example"));
        let all = [acme.clone(), inner.clone(), outer_later.clone()];
        assert!(check(&inner, &all, "bizosaas.local").is_err(), "inside an earlier claim");
        assert!(check(&outer_later, &all, "bizosaas.local").is_err(), "around an earlier claim");
        assert!(!overlaps("notacme.example", "acme.example"), "only at a label boundary");
        // `outer` was refused, so its claim blocks nobody.
        assert_eq!(check(&tenant("other", 400, Some("notacme.example")), &all, "bizosaas.local"), Ok(()));
    }

    #[test]
    fn the_base_domain_is_the_platforms() {
        let t = tenant("evil", 100, Some("acme.bizosaas.local"));
        assert!(matches!(check(&t, [], "bizosaas.local"), Err(DomainRefusal::UnderBaseDomain { .. })));
        assert_eq!(check(&tenant("plain", 100, None), [], "bizosaas.local"), Ok(()));
    }

    #[test]
    fn ties_go_to_the_lower_name() {
        let a = tenant("a", 100, Some("same.example"));
        let b = tenant("b", 100, Some("same.example"));
        let all = [a.clone(), b.clone()];
        assert_eq!(check(&a, &all, "x.local"), Ok(()));
        assert!(check(&b, &all, "x.local").is_err());
    }
}
