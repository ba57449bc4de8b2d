//! What makes a Tenant reconcile when another Tenant's custom-domain claim changes: a domain
//! that is set, changed, dropped or freed by a deletion can grant or take away the hosts of
//! the Tenants it overlaps, which would otherwise wait for their next requeue.

use super::build::domains::{custom_domain, overlaps};
use super::status::SERVICES_READY;
use bizosaas_crds::Tenant;
use bizosaas_crds::common::find_condition;
use futures::{Stream, TryStreamExt};
use kube::api::Api;
use kube::core::DeserializeGuard;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use std::collections::HashMap;

/// Passes a Tenant event on when its custom domain changed, or when a Tenant that had one was
/// deleted. `seen` holds each Tenant's last domain.
fn filter(seen: &mut HashMap<String, Option<String>>, event: watcher::Event<Tenant>) -> Option<Tenant> {
    match event {
        watcher::Event::Apply(t) | watcher::Event::InitApply(t) => {
            let domain = custom_domain(&t);
            let before = seen.insert(t.name_any(), domain.clone());
            (before.is_some_and(|b| b != domain)).then_some(t)
        }
        watcher::Event::Delete(t) => seen.remove(&t.name_any()).flatten().map(|_| t),
        watcher::Event::Init | watcher::Event::InitDone => None,
    }
}

/// Tenants whose custom domain changed or that went away holding one.
pub fn domain_changes(client: Client) -> impl Stream<Item = Result<Tenant, watcher::Error>> + Send + 'static {
    let mut seen = HashMap::new();
    watcher(Api::<Tenant>::all(client), watcher::Config::default())
        .default_backoff()
        .try_filter_map(move |event| futures::future::ready(Ok(filter(&mut seen, event))))
}

/// The other Tenants the change may concern: those refused a domain (the claim that blocked
/// them may be gone) and those whose domain overlaps the changed Tenant's (an older claim
/// takes it from them).
pub fn affected(
    tenants: &Store<DeserializeGuard<Tenant>>,
    changed: &Tenant,
) -> Vec<ObjectRef<DeserializeGuard<Tenant>>> {
    let name = changed.name_any();
    let domain = custom_domain(changed);
    tenants
        .state()
        .iter()
        .filter_map(|guard| guard.0.as_ref().ok())
        .filter(|t| t.name_any() != name)
        .filter(|t| {
            let refused = t
                .status
                .as_ref()
                .and_then(|s| find_condition(&s.conditions, SERVICES_READY))
                .is_some_and(|c| c.reason == "DomainConflict");
            let overlapping = matches!((&domain, custom_domain(t)), (Some(d), Some(other)) if overlaps(d, &other));
            refused || overlapping
        })
        .map(|t| ObjectRef::new(&t.name_any()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant(name: &str, domain: Option<&str>) -> Tenant {
        let mut spec = serde_json::json!({"displayName": name, "owners": [{"kind": "User", "name": "o"}]});
        if let Some(d) = domain {
            spec["branding"] = serde_json::json!({"customDomain": d});
        }
        serde_json::from_value(serde_json::json!({"metadata": {"name": name}, "spec": spec})).unwrap()
    }

    #[test]
    fn only_domain_changes_and_deletions_of_claims_pass() {
        let mut seen = HashMap::new();
        let apply = |t| watcher::Event::Apply(t);
        assert!(filter(&mut seen, watcher::Event::InitApply(tenant("a", Some("a.example")))).is_none(), "first sight");
        assert!(filter(&mut seen, apply(tenant("a", Some("a.example")))).is_none(), "unchanged");
        assert!(filter(&mut seen, apply(tenant("a", Some("b.example")))).is_some(), "changed");
        assert!(filter(&mut seen, apply(tenant("a", None))).is_some(), "dropped");
        assert!(filter(&mut seen, watcher::Event::Delete(tenant("a", None))).is_none(), "gone without a claim");
        filter(&mut seen, apply(tenant("b", Some("b.example"))));
        assert!(filter(&mut seen, watcher::Event::Delete(tenant("b", Some("b.example")))).is_some(), "freed");
    }
}
