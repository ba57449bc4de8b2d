//! Watches of the kinds the operator may not list cluster-wide (Secrets, Deployments, Jobs):
//! one watch per tenant namespace, through the RoleBinding the operator creates there, merged
//! into one stream per kind. The set of tenant namespaces follows a watch of the namespaces
//! the operator labelled as a tenant's.

use bizosaas_crds::{LABEL_MANAGED_BY, LABEL_TENANT, MANAGED_BY};
use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::Api;
use kube::core::PartialObjectMeta;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use std::collections::{BTreeSet, HashMap};
use std::fmt::Debug;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

/// The names of the tenant namespaces, as they change.
#[derive(Clone)]
pub struct TenantNamespaces(watch::Receiver<BTreeSet<String>>);

impl TenantNamespaces {
    /// Starts following the tenant namespaces. Must be called inside a Tokio runtime.
    pub fn start(client: Client) -> Self {
        let (tx, rx) = watch::channel(BTreeSet::new());
        let selector = format!("{LABEL_MANAGED_BY}={MANAGED_BY},{LABEL_TENANT}");
        let namespaces =
            watcher(Api::<PartialObjectMeta<Namespace>>::all(client), watcher::Config::default().labels(&selector));
        tokio::spawn(async move {
            let mut names = BTreeSet::new();
            let mut initial = BTreeSet::new();
            let mut events = std::pin::pin!(namespaces.default_backoff());
            while let Some(event) = events.next().await {
                let changed = match event {
                    Ok(watcher::Event::Apply(ns)) => names.insert(ns.name_any()),
                    Ok(watcher::Event::Delete(ns)) => names.remove(&ns.name_any()),
                    Ok(watcher::Event::Init) => {
                        initial.clear();
                        false
                    }
                    Ok(watcher::Event::InitApply(ns)) => {
                        initial.insert(ns.name_any());
                        false
                    }
                    Ok(watcher::Event::InitDone) => {
                        let changed = initial != names;
                        names = std::mem::take(&mut initial);
                        changed
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "watching the tenant namespaces");
                        false
                    }
                };
                if changed && tx.send(names.clone()).is_err() {
                    return;
                }
            }
        });
        Self(rx)
    }

    /// True when `namespace` is a tenant namespace as far as the watch has seen.
    pub fn contains(&self, namespace: &str) -> bool {
        self.0.borrow().contains(namespace)
    }

    /// Changes to the objects of kind `K` (their metadata) matching `config` in every tenant
    /// namespace. A namespace's watch starts when it becomes a tenant namespace (retried with
    /// backoff until the operator's RoleBinding there takes effect) and stops when it goes.
    pub fn watch<K>(
        &self,
        client: Client,
        config: watcher::Config,
    ) -> impl Stream<Item = Result<PartialObjectMeta<K>, watcher::Error>> + Send + 'static
    where
        K: Resource<DynamicType = (), Scope = kube::core::NamespaceResourceScope>
            + Clone
            + serde::de::DeserializeOwned
            + Debug
            + Send
            + Sync
            + 'static,
    {
        let (tx, rx) = mpsc::channel(1024);
        let mut namespaces = self.0.clone();
        tokio::spawn(async move {
            let mut watches: HashMap<String, JoinHandle<()>> = HashMap::new();
            loop {
                let wanted = namespaces.borrow_and_update().clone();
                watches.retain(|ns, task| {
                    let keep = wanted.contains(ns);
                    if !keep {
                        task.abort();
                    }
                    keep
                });
                for ns in wanted {
                    if watches.contains_key(&ns) {
                        continue;
                    }
                    let api = Api::<PartialObjectMeta<K>>::namespaced(client.clone(), &ns);
                    let events = watcher(api, config.clone()).default_backoff().touched_objects();
                    let tx = tx.clone();
                    watches.insert(
                        ns,
                        tokio::spawn(async move {
                            let mut events = std::pin::pin!(events);
                            while let Some(event) = events.next().await {
                                if tx.send(event).await.is_err() {
                                    return;
                                }
                            }
                        }),
                    );
                }
                if namespaces.changed().await.is_err() || tx.is_closed() {
                    break;
                }
            }
            watches.values().for_each(JoinHandle::abort);
        });
        futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|event| (event, rx)) })
    }
}
