//! Watches of the kinds the operator may not list cluster-wide (Secrets, Deployments, Jobs):
//! one watch per tenant namespace, through the RoleBinding the operator creates there, merged
//! into one stream per kind. Controllers asking for the same kind and selector share those
//! watches: each is a connection to the API server, held for as long as the namespace lives.
//! The set of tenant namespaces follows a watch of the namespaces the operator labelled as a
//! tenant's.

use bizosaas_crds::{LABEL_MANAGED_BY, LABEL_TENANT, MANAGED_BY};
use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::Api;
use kube::core::PartialObjectMeta;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use std::any::{Any, TypeId};
use std::collections::{BTreeSet, HashMap};
use std::fmt::Debug;
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

/// The names of the tenant namespaces, as they change, and the watches already running per
/// kind and selector.
#[derive(Clone)]
pub struct TenantNamespaces {
    names: watch::Receiver<BTreeSet<String>>,
    shared: Arc<Mutex<HashMap<WatchKey, Box<dyn Any + Send>>>>,
}

/// A kind and the selectors of its watches.
type WatchKey = (TypeId, String);

/// A namespaced kind whose metadata can be watched from a background task.
pub trait NamespacedKind:
    Resource<DynamicType = (), Scope = kube::core::NamespaceResourceScope>
    + Clone
    + serde::de::DeserializeOwned
    + Debug
    + Send
    + Sync
    + 'static
{
}

impl<K> NamespacedKind for K where
    K: Resource<DynamicType = (), Scope = kube::core::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + Debug
        + Send
        + Sync
        + 'static
{
}

/// The streams one kind's watches feed: one per controller that asked for it.
type Subscribers<K> = Arc<Mutex<Vec<mpsc::Sender<PartialObjectMeta<K>>>>>;

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
        Self { names: rx, shared: Arc::default() }
    }

    /// True when `namespace` is a tenant namespace as far as the watch has seen.
    pub fn contains(&self, namespace: &str) -> bool {
        self.names.borrow().contains(namespace)
    }

    /// Changes to the objects of kind `K` (their metadata) matching `config` in every tenant
    /// namespace. A namespace's watch starts when it becomes a tenant namespace (retried with
    /// backoff until the operator's RoleBinding there takes effect) and stops when it goes.
    /// A second caller for the same kind and selector shares the first one's watches; it sees
    /// the changes from when it asks (its controller lists its own objects at start anyway).
    pub fn watch<K>(
        &self,
        client: Client,
        config: watcher::Config,
    ) -> impl Stream<Item = Result<PartialObjectMeta<K>, watcher::Error>> + Send + 'static
    where
        K: NamespacedKind,
    {
        let (tx, rx) = mpsc::channel(1024);
        let key = (TypeId::of::<K>(), format!("{:?}/{:?}", config.label_selector, config.field_selector));
        let mut shared = self.shared.lock().expect("shared watches lock");
        match shared.get(&key).and_then(|s| s.downcast_ref::<Subscribers<K>>()) {
            Some(subscribers) => subscribers.lock().expect("subscribers lock").push(tx),
            None => {
                let subscribers: Subscribers<K> = Arc::new(Mutex::new(vec![tx]));
                shared.insert(key, Box::new(subscribers.clone()));
                tokio::spawn(follow_namespaces(self.names.clone(), client, config, subscribers));
            }
        }
        futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|object| (Ok(object), rx)) })
    }
}

/// Keeps one watch of `K` running in each tenant namespace, feeding every subscriber, until
/// no subscriber is left.
async fn follow_namespaces<K>(
    mut namespaces: watch::Receiver<BTreeSet<String>>,
    client: Client,
    config: watcher::Config,
    subscribers: Subscribers<K>,
) where
    K: NamespacedKind,
{
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
            watches.insert(ns, tokio::spawn(fan_out(events, subscribers.clone())));
        }
        let gone = || subscribers.lock().expect("subscribers lock").iter().all(mpsc::Sender::is_closed);
        if namespaces.changed().await.is_err() || gone() {
            break;
        }
    }
    watches.values().for_each(JoinHandle::abort);
}

/// Sends each change to every subscriber. Errors (a RoleBinding not yet effective, a
/// dropped connection) are retried by the watcher's backoff and reach no controller.
async fn fan_out<K: Clone>(
    events: impl Stream<Item = Result<PartialObjectMeta<K>, watcher::Error>>,
    subscribers: Subscribers<K>,
) {
    let mut events = std::pin::pin!(events);
    while let Some(event) = events.next().await {
        let object = match event {
            Ok(object) => object,
            Err(e) => {
                tracing::debug!(error = %e, "watching a tenant namespace");
                continue;
            }
        };
        let senders = subscribers.lock().expect("subscribers lock").clone();
        for sender in &senders {
            // A closed subscriber (its controller stopped) is skipped; the others still get it.
            let _ = sender.send(object.clone()).await;
        }
        if senders.iter().all(mpsc::Sender::is_closed) {
            return;
        }
    }
}
