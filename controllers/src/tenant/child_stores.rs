//! The metadata of every Tenant child the operator may watch cluster-wide, from the same
//! watches that trigger reconciles: which resourceVersion of each child is live (so that a
//! converged reconcile reads none of them) and which namespaces exist with which labels.
//! Managed fields and annotations are dropped before they are stored. ResourceQuotas are kept
//! whole, annotations included (they are small): whether the quota controller has recorded a
//! quota is in its status, and a quota is compared with its copy instead of read.

use crate::seen::LiveVersions;
use futures::Stream;
use k8s_openapi::api::core::v1::{LimitRange, Namespace, ResourceQuota, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::{Ingress, NetworkPolicy};
use k8s_openapi::api::rbac::v1::RoleBinding;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::Api;
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource};
use std::fmt::Debug;

/// One store per kind.
#[derive(Clone)]
pub struct ChildStores {
    pub namespaces: Store<PartialObjectMeta<Namespace>>,
    pub quotas: Store<ResourceQuota>,
    pub limits: Store<PartialObjectMeta<LimitRange>>,
    pub policies: Store<PartialObjectMeta<NetworkPolicy>>,
    pub accounts: Store<PartialObjectMeta<ServiceAccount>>,
    pub bindings: Store<PartialObjectMeta<RoleBinding>>,
    pub services: Store<PartialObjectMeta<Service>>,
    pub ingresses: Store<PartialObjectMeta<Ingress>>,
}

impl ChildStores {
    /// The metadata of namespace `name` as the watch last saw it.
    pub fn namespace(&self, name: &str) -> Option<ObjectMeta> {
        self.namespaces.get(&ObjectRef::new(name)).map(|ns| ns.metadata.clone())
    }

    /// ResourceQuota `name` in `namespace`, spec and status, as the watch last saw it.
    pub fn quota(&self, namespace: &str, name: &str) -> Option<std::sync::Arc<ResourceQuota>> {
        self.quotas.get(&ObjectRef::new(name).within(namespace))
    }
}

/// The metadata of the children in `store` that live in `namespace` and carry `labels`.
pub fn children_in<K>(store: &Store<PartialObjectMeta<K>>, namespace: &str, labels: &[(&str, &str)]) -> Vec<ObjectMeta>
where
    K: Resource<DynamicType = ()> + Clone,
{
    let matches = |meta: &ObjectMeta| {
        let has = |(key, value): &(&str, &str)| {
            meta.labels.as_ref().and_then(|l| l.get(*key)).map(String::as_str) == Some(*value)
        };
        meta.namespace.as_deref() == Some(namespace) && labels.iter().all(has)
    };
    store.state().iter().filter(|o| matches(&o.metadata)).map(|o| o.metadata.clone()).collect()
}

impl LiveVersions for ChildStores {
    fn live_version(&self, kind: &str, namespace: Option<&str>, name: &str) -> Option<String> {
        fn version<K: Resource<DynamicType = ()> + Clone>(
            store: &Store<PartialObjectMeta<K>>,
            namespace: Option<&str>,
            name: &str,
        ) -> Option<String> {
            let key = match namespace {
                Some(ns) => ObjectRef::new(name).within(ns),
                None => ObjectRef::new(name),
            };
            store.get(&key).and_then(|o| o.metadata.resource_version.clone())
        }
        match kind {
            "Namespace" => version(&self.namespaces, None, name),
            "ResourceQuota" => {
                namespace.and_then(|ns| self.quota(ns, name)).and_then(|q| q.metadata.resource_version.clone())
            }
            "LimitRange" => version(&self.limits, namespace, name),
            "NetworkPolicy" => version(&self.policies, namespace, name),
            "ServiceAccount" => version(&self.accounts, namespace, name),
            "RoleBinding" => version(&self.bindings, namespace, name),
            "Service" => version(&self.services, namespace, name),
            "Ingress" => version(&self.ingresses, namespace, name),
            _ => None,
        }
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

/// A metadata watch of kind `K` matching `config`, feeding `writer` before it yields each
/// changed object.
pub fn reflect<K>(
    client: &Client,
    config: &watcher::Config,
    writer: reflector::store::Writer<PartialObjectMeta<K>>,
) -> impl Stream<Item = Result<PartialObjectMeta<K>, watcher::Error>> + Send + 'static
where
    K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + Debug + Send + Sync + 'static,
{
    let changes =
        watcher(Api::<PartialObjectMeta<K>>::all(client.clone()), config.clone()).default_backoff().modify(|object| {
            object.metadata.managed_fields = None;
            object.metadata.annotations = None;
        });
    reflector::reflector(writer, changes).touched_objects()
}
