//! What the Tenant controller knows of its children, from the same watches that trigger its
//! reconciles: which resourceVersion of each child is live (so that a converged reconcile reads
//! none of them), whose it is and which namespaces exist. Of a child's metadata only that is
//! kept, indexed by namespace, so a reconcile finds its tenant's children without scanning
//! every tenant's. ResourceQuotas are kept whole, annotations included (they are small):
//! whether the quota controller has recorded a quota is in its status, and a quota is compared
//! with its copy instead of read.

use super::build::LABEL_COMPONENT;
use crate::seen::LiveVersions;
use bizosaas_crds::{LABEL_MANAGED_BY, LABEL_TENANT, MANAGED_BY};
use futures::{Stream, TryStreamExt};
use k8s_openapi::api::core::v1::ResourceQuota;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::Api;
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource};
use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::{Arc, RwLock};

/// The children the watches have seen, one index per kind.
#[derive(Clone)]
pub struct ChildStores {
    pub namespaces: ChildIndex,
    pub quotas: Store<ResourceQuota>,
    pub limits: ChildIndex,
    pub policies: ChildIndex,
    pub accounts: ChildIndex,
    pub bindings: ChildIndex,
    pub services: ChildIndex,
    pub ingresses: ChildIndex,
}

impl ChildStores {
    /// Empty indexes, and `quotas` fed by the ResourceQuota watch.
    pub fn new(quotas: Store<ResourceQuota>) -> Self {
        let empty = ChildIndex::default;
        ChildStores {
            namespaces: empty(),
            quotas,
            limits: empty(),
            policies: empty(),
            accounts: empty(),
            bindings: empty(),
            services: empty(),
            ingresses: empty(),
        }
    }

    /// Namespace `name` as the watch last saw it.
    pub fn namespace(&self, name: &str) -> Option<KnownChild> {
        self.namespaces.get(name, name)
    }

    /// ResourceQuota `name` in `namespace`, spec and status, as the watch last saw it.
    pub fn quota(&self, namespace: &str, name: &str) -> Option<Arc<ResourceQuota>> {
        self.quotas.get(&ObjectRef::new(name).within(namespace))
    }
}

/// What a reconcile reads of a child's metadata.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KnownChild {
    pub name: String,
    pub resource_version: String,
    /// Labelled as managed by this operator.
    pub managed: bool,
    pub tenant: Option<String>,
    pub component: Option<String>,
    /// Being deleted.
    pub deleting: bool,
}

impl KnownChild {
    pub fn of(meta: &ObjectMeta) -> KnownChild {
        let label = |key: &str| meta.labels.as_ref().and_then(|l| l.get(key)).cloned();
        KnownChild {
            name: meta.name.clone().unwrap_or_default(),
            resource_version: meta.resource_version.clone().unwrap_or_default(),
            managed: label(LABEL_MANAGED_BY).as_deref() == Some(MANAGED_BY),
            tenant: label(LABEL_TENANT),
            component: label(LABEL_COMPONENT),
            deleting: meta.deletion_timestamp.is_some(),
        }
    }

    /// Managed by this operator for `tenant`: labels alone, never the name, say so.
    pub fn belongs_to(&self, tenant: &str) -> bool {
        self.managed && self.tenant.as_deref() == Some(tenant)
    }
}

/// The children of one kind a watch has seen, by namespace; a Namespace is filed under its
/// own name.
#[derive(Clone, Default)]
pub struct ChildIndex(Arc<RwLock<Indexed>>);

#[derive(Default)]
struct Indexed {
    live: HashMap<String, Vec<KnownChild>>,
    /// What a (re)list has delivered so far; it replaces `live` once the list is complete,
    /// so objects deleted while the watch was down are forgotten.
    listing: Option<HashMap<String, Vec<KnownChild>>>,
}

/// The namespace a child is filed under.
fn bucket(meta: &ObjectMeta) -> String {
    meta.namespace.clone().or_else(|| meta.name.clone()).unwrap_or_default()
}

fn upsert(into: &mut HashMap<String, Vec<KnownChild>>, meta: &ObjectMeta) {
    let known = KnownChild::of(meta);
    let children = into.entry(bucket(meta)).or_default();
    match children.iter_mut().find(|c| c.name == known.name) {
        Some(held) => *held = known,
        None => children.push(known),
    }
}

impl ChildIndex {
    /// Applies one watch event.
    pub fn apply<K: Resource>(&self, event: &watcher::Event<K>) {
        let mut index = self.0.write().expect("child index lock");
        match event {
            watcher::Event::Apply(o) => upsert(&mut index.live, o.meta()),
            watcher::Event::Delete(o) => {
                let bucket = bucket(o.meta());
                let name = o.meta().name.as_deref().unwrap_or_default();
                if let Some(children) = index.live.get_mut(&bucket) {
                    children.retain(|c| c.name != name);
                    if children.is_empty() {
                        index.live.remove(&bucket);
                    }
                }
            }
            watcher::Event::Init => index.listing = Some(HashMap::new()),
            watcher::Event::InitApply(o) => upsert(index.listing.get_or_insert_default(), o.meta()),
            watcher::Event::InitDone => {
                let mut listed = index.listing.take().unwrap_or_default();
                listed.shrink_to_fit();
                index.live = listed;
            }
        }
    }

    /// Child `name` filed under `namespace`.
    pub fn get(&self, namespace: &str, name: &str) -> Option<KnownChild> {
        self.find(namespace, name, KnownChild::clone)
    }

    /// What `read` takes from child `name` filed under `namespace`.
    fn find<T>(&self, namespace: &str, name: &str, read: impl FnOnce(&KnownChild) -> T) -> Option<T> {
        let index = self.0.read().expect("child index lock");
        index.live.get(namespace)?.iter().find(|c| c.name == name).map(read)
    }

    /// The children in `namespace` that `tenant`'s `component` manages.
    pub fn components_in(&self, namespace: &str, tenant: &str, component: &str) -> Vec<KnownChild> {
        let index = self.0.read().expect("child index lock");
        let children = index.live.get(namespace).map(Vec::as_slice).unwrap_or_default();
        children.iter().filter(|c| c.belongs_to(tenant) && c.component.as_deref() == Some(component)).cloned().collect()
    }

    fn version(&self, namespace: &str, name: &str) -> Option<String> {
        self.find(namespace, name, |c| c.resource_version.clone())
    }
}

impl LiveVersions for ChildStores {
    fn live_version(&self, kind: &str, namespace: Option<&str>, name: &str) -> Option<String> {
        let index = match kind {
            "Namespace" => return self.namespaces.version(name, name),
            "ResourceQuota" => {
                return namespace.and_then(|ns| self.quota(ns, name)).and_then(|q| q.metadata.resource_version.clone());
            }
            "LimitRange" => &self.limits,
            "NetworkPolicy" => &self.policies,
            "ServiceAccount" => &self.accounts,
            "RoleBinding" => &self.bindings,
            "Service" => &self.services,
            "Ingress" => &self.ingresses,
            _ => return None,
        };
        index.version(namespace?, name)
    }
}

/// A watch of whole objects of kind `K` matching `config`, without their managed fields (their
/// annotations stay: the applied-fields digest is compared with the copy), feeding `writer`
/// before it yields each changed object.
pub fn reflect_whole<K>(
    client: &Client,
    config: &watcher::Config,
    writer: reflector::store::Writer<K>,
) -> impl Stream<Item = Result<K, watcher::Error>> + Send + 'static
where
    K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + Debug + Send + Sync + 'static,
{
    let changes = watcher(Api::<K>::all(client.clone()), config.clone()).default_backoff().modify(|object| {
        object.meta_mut().managed_fields = None;
    });
    reflector::reflector(writer, changes).touched_objects()
}

/// A metadata watch of kind `K` matching `config`, filing each change in `index` before it
/// yields the changed object.
pub fn index<K>(
    client: &Client,
    config: &watcher::Config,
    index: ChildIndex,
) -> impl Stream<Item = Result<PartialObjectMeta<K>, watcher::Error>> + Send + 'static
where
    K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + Debug + Send + Sync + 'static,
{
    watcher(Api::<PartialObjectMeta<K>>::all(client.clone()), config.clone())
        .default_backoff()
        .inspect_ok(move |event| index.apply(event))
        .touched_objects()
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ConfigMap;
    use watcher::Event;

    fn child(namespace: &str, name: &str, version: &str, component: &str) -> ConfigMap {
        let mut o = ConfigMap::default();
        o.metadata.namespace = Some(namespace.into());
        o.metadata.name = Some(name.into());
        o.metadata.resource_version = Some(version.into());
        o.metadata.labels = Some(
            [(LABEL_MANAGED_BY, MANAGED_BY), (LABEL_TENANT, "acme"), (LABEL_COMPONENT, component)]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        );
        o
    }

    fn names(known: Vec<KnownChild>) -> Vec<String> {
        known.into_iter().map(|k| k.name).collect()
    }

    #[test]
    fn children_are_found_by_namespace_tenant_and_component() {
        let index = ChildIndex::default();
        index.apply(&Event::Apply(child("tenant-acme", "deny-all", "1", "network")));
        index.apply(&Event::Apply(child("tenant-acme", "owner", "2", "rbac")));
        index.apply(&Event::Apply(child("tenant-other", "deny-all", "3", "network")));
        let mut foreign = child("tenant-acme", "by-hand", "4", "network");
        foreign.metadata.labels.as_mut().unwrap().remove(LABEL_MANAGED_BY);
        index.apply(&Event::Apply(foreign));
        assert_eq!(names(index.components_in("tenant-acme", "acme", "network")), ["deny-all"]);
        assert_eq!(index.get("tenant-other", "deny-all").map(|k| k.resource_version), Some("3".into()));
        index.apply(&Event::Apply(child("tenant-acme", "deny-all", "5", "network")));
        assert_eq!(index.version("tenant-acme", "deny-all"), Some("5".into()), "a change replaces the child");
        index.apply(&Event::Delete(child("tenant-acme", "deny-all", "5", "network")));
        assert!(index.components_in("tenant-acme", "acme", "network").is_empty());
        assert_eq!(index.version("tenant-acme", "owner"), Some("2".into()));
    }

    #[test]
    fn a_relist_replaces_what_was_known_once_it_completes() {
        let index = ChildIndex::default();
        index.apply(&Event::Apply(child("tenant-acme", "gone", "1", "network")));
        index.apply(&Event::<ConfigMap>::Init);
        index.apply(&Event::InitApply(child("tenant-acme", "kept", "2", "network")));
        assert!(index.get("tenant-acme", "gone").is_some(), "the old state holds until the list completes");
        index.apply(&Event::<ConfigMap>::InitDone);
        assert!(index.get("tenant-acme", "gone").is_none(), "deleted while the watch was down");
        assert!(index.get("tenant-acme", "kept").is_some());
    }

    #[test]
    fn a_namespace_is_filed_under_its_own_name() {
        let index = ChildIndex::default();
        let mut ns = child("", "tenant-acme", "7", "namespace");
        ns.metadata.namespace = None;
        index.apply(&Event::Apply(ns));
        let stores = ChildStores { namespaces: index, ..ChildStores::new(reflector::store::<ResourceQuota>().0) };
        let known = stores.namespace("tenant-acme").expect("known");
        assert!(known.belongs_to("acme") && !known.belongs_to("other"));
        assert_eq!(stores.live_version("Namespace", None, "tenant-acme"), Some("7".into()));
    }
}
