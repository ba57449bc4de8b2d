//! Watches of the kinds the operator may not list cluster-wide (Secrets, Deployments, Jobs):
//! one watch per tenant namespace, through the RoleBinding the operator creates there, merged
//! into one stream per kind. Controllers asking for the same kind and selector share those
//! watches: each is a connection to the API server, held for as long as the namespace lives.
//! The set of tenant namespaces follows a watch of the namespaces the operator labelled as a
//! tenant's. A kind is watched only in the namespaces some controller needs it in (its
//! [`Wanted`] namespaces: Jobs where workflow runs are, for instance), and the watches share
//! HTTP/2 connections ([`WatchConnections`]).

use crate::metrics::{KindLabels, Metrics};
use crate::watch_connections::WatchConnections;
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
use tokio::sync::{Notify, mpsc, watch};
use tokio::task::JoinHandle;

/// The names of the tenant namespaces, as they change, and the watches already running per
/// kind and selector.
#[derive(Clone)]
pub struct TenantNamespaces {
    names: watch::Receiver<BTreeSet<String>>,
    shared: Arc<Mutex<HashMap<WatchKey, Box<dyn Any + Send>>>>,
    connections: Arc<WatchConnections>,
    metrics: Arc<Metrics>,
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

/// Where a controller needs a kind watched: every tenant namespace, or those in the set.
pub type Wanted = Option<watch::Receiver<BTreeSet<String>>>;

/// A controller fed by one kind's watches, and where it needs them.
struct Subscriber<K> {
    events: mpsc::Sender<PartialObjectMeta<K>>,
    wanted: Wanted,
}

/// The controllers one kind's watches feed, and a signal when another joins.
struct Fanout<K> {
    subscribers: Mutex<Vec<Subscriber<K>>>,
    joined: Notify,
}

type Subscribers<K> = Arc<Fanout<K>>;

impl<K> Fanout<K> {
    fn senders(&self) -> Vec<mpsc::Sender<PartialObjectMeta<K>>> {
        self.subscribers.lock().expect("subscribers lock").iter().map(|s| s.events.clone()).collect()
    }

    /// The tenant namespaces any subscriber wants the kind watched in, and the wanted sets to
    /// wait on for a change (each marked as seen).
    fn wanted(
        &self,
        tenant_namespaces: &BTreeSet<String>,
    ) -> (BTreeSet<String>, Vec<watch::Receiver<BTreeSet<String>>>) {
        let subscribers = self.subscribers.lock().expect("subscribers lock");
        if subscribers.iter().any(|s| s.wanted.is_none()) {
            return (tenant_namespaces.clone(), Vec::new());
        }
        let mut sets: Vec<_> = subscribers.iter().filter_map(|s| s.wanted.clone()).collect();
        let mut wanted = BTreeSet::new();
        for set in &mut sets {
            wanted.extend(set.borrow_and_update().iter().filter(|ns| tenant_namespaces.contains(*ns)).cloned());
        }
        // A set whose controller stopped changes no more (its last value still counts).
        sets.retain(|set| set.has_changed().is_ok());
        (wanted, sets)
    }
}

impl TenantNamespaces {
    /// Starts following the tenant namespaces with `client`; the watches in them go over
    /// `connections`. Must be called inside a Tokio runtime.
    pub fn start(client: Client, connections: WatchConnections, metrics: Arc<Metrics>) -> Self {
        let selector = format!("{LABEL_MANAGED_BY}={MANAGED_BY},{LABEL_TENANT}");
        let namespaces =
            watcher(Api::<PartialObjectMeta<Namespace>>::all(client), watcher::Config::default().labels(&selector));
        // A Namespace's namespace is itself.
        let (events, rx) =
            wanted_by(namespaces.default_backoff(), |ns: &PartialObjectMeta<Namespace>| Some(ns.name_any()));
        tokio::spawn(events.for_each(|event| async move {
            if let Err(e) = event {
                tracing::warn!(error = %e, "watching the tenant namespaces");
            }
        }));
        Self { names: rx, shared: Arc::default(), connections: Arc::new(connections), metrics }
    }

    /// True when `namespace` is a tenant namespace as far as the watch has seen.
    pub fn contains(&self, namespace: &str) -> bool {
        self.names.borrow().contains(namespace)
    }

    /// Changes to the objects of kind `K` (their metadata) matching `config` in the tenant
    /// namespaces `wanted` names (`None`: all of them). A namespace's watch starts when it is
    /// both (retried with backoff until the operator's RoleBinding there takes effect) and
    /// stops when no caller wants it any more; its first list reports every object already
    /// there. A second caller for the same kind and selector shares the first one's watches
    /// and may be sent changes from namespaces only the first wants.
    pub fn watch<K>(
        &self,
        config: watcher::Config,
        wanted: Wanted,
    ) -> impl Stream<Item = Result<PartialObjectMeta<K>, watcher::Error>> + Send + 'static
    where
        K: NamespacedKind,
    {
        let (tx, rx) = mpsc::channel(1024);
        let key = (TypeId::of::<K>(), format!("{:?}/{:?}", config.label_selector, config.field_selector));
        let mut shared = self.shared.lock().expect("shared watches lock");
        let subscriber = Subscriber { events: tx, wanted };
        match shared.get(&key).and_then(|s| s.downcast_ref::<Subscribers<K>>()) {
            Some(fanout) => {
                fanout.subscribers.lock().expect("subscribers lock").push(subscriber);
                fanout.joined.notify_one();
            }
            None => {
                let subscribers: Subscribers<K> =
                    Arc::new(Fanout { subscribers: Mutex::new(vec![subscriber]), joined: Notify::new() });
                shared.insert(key, Box::new(subscribers.clone()));
                tokio::spawn(follow_namespaces(
                    self.names.clone(),
                    self.connections.clone(),
                    self.metrics.clone(),
                    config,
                    subscribers,
                ));
            }
        }
        futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|object| (Ok(object), rx)) })
    }
}

/// Follows a watch of `K`, keeping the set of namespaces `namespace_of` names for the objects
/// it holds: the [`Wanted`] namespaces of a kind those objects need watched.
pub fn wanted_by<K, S>(
    events: S,
    namespace_of: impl Fn(&K) -> Option<String> + Send + 'static,
) -> (impl Stream<Item = S::Item> + Send, watch::Receiver<BTreeSet<String>>)
where
    K: Resource + Send,
    S: Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send,
{
    let (tx, rx) = watch::channel(BTreeSet::new());
    let key =
        |o: &K| format!("{}/{}", o.meta().namespace.as_deref().unwrap_or(""), o.meta().name.as_deref().unwrap_or(""));
    let mut held: HashMap<String, String> = HashMap::new();
    let mut initial: HashMap<String, String> = HashMap::new();
    let events = events.inspect(move |event| {
        let changed = match event {
            Ok(watcher::Event::Apply(o)) => match namespace_of(o) {
                Some(ns) => held.insert(key(o), ns.clone()).as_ref() != Some(&ns),
                None => held.remove(&key(o)).is_some(),
            },
            Ok(watcher::Event::Delete(o)) => held.remove(&key(o)).is_some(),
            Ok(watcher::Event::Init) => {
                initial.clear();
                false
            }
            Ok(watcher::Event::InitApply(o)) => {
                if let Some(ns) = namespace_of(o) {
                    initial.insert(key(o), ns);
                }
                false
            }
            Ok(watcher::Event::InitDone) => {
                held = std::mem::take(&mut initial);
                true
            }
            Err(_) => false,
        };
        if changed {
            let now: BTreeSet<String> = held.values().cloned().collect();
            tx.send_if_modified(|set| {
                let modified = *set != now;
                *set = now;
                modified
            });
        }
    });
    (events, rx)
}

/// Keeps one watch of `K` running in each tenant namespace a subscriber wants, feeding every
/// subscriber, until no subscriber is left.
async fn follow_namespaces<K>(
    mut namespaces: watch::Receiver<BTreeSet<String>>,
    connections: Arc<WatchConnections>,
    metrics: Arc<Metrics>,
    config: watcher::Config,
    subscribers: Subscribers<K>,
) where
    K: NamespacedKind,
{
    let mut watches: HashMap<String, JoinHandle<()>> = HashMap::new();
    loop {
        let (wanted, mut sets) = subscribers.wanted(&namespaces.borrow_and_update());
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
            let lease = connections.lease();
            let api = Api::<PartialObjectMeta<K>>::namespaced(lease.client.clone(), &ns);
            // Boxed: a stream moved into an async fn by value is held there twice (the
            // argument and its pinned copy), and there is one per tenant namespace.
            let events = Box::pin(watcher(api, config.clone()).default_backoff().touched_objects());
            let subscribers = subscribers.clone();
            watches.insert(
                ns,
                tokio::spawn(async move {
                    let _slot = lease;
                    fan_out(events, subscribers).await
                }),
            );
        }
        metrics
            .namespace_watches
            .get_or_create(&KindLabels { kind: K::kind(&()).into_owned() })
            .set(watches.len() as i64);
        metrics.watch_connections.set(connections.connections() as i64);
        let gone = || subscribers.senders().iter().all(mpsc::Sender::is_closed);
        let wanted_changed = async {
            if sets.is_empty() {
                return futures::future::pending().await;
            }
            let changes = sets.iter_mut().map(|set| Box::pin(set.changed()));
            let _ = futures::future::select_all(changes).await;
        };
        let stopped = tokio::select! {
            changed = namespaces.changed() => changed.is_err(),
            () = subscribers.joined.notified() => false,
            () = wanted_changed => false,
        };
        if stopped || gone() {
            break;
        }
    }
    watches.values().for_each(JoinHandle::abort);
    metrics.namespace_watches.get_or_create(&KindLabels { kind: K::kind(&()).into_owned() }).set(0);
}

/// Sends each change to every subscriber. Errors (a RoleBinding not yet effective, a
/// dropped connection) are retried by the watcher's backoff and reach no controller.
async fn fan_out<K: Clone>(
    mut events: impl Stream<Item = Result<PartialObjectMeta<K>, watcher::Error>> + Unpin,
    subscribers: Subscribers<K>,
) {
    while let Some(event) = events.next().await {
        let object = match event {
            Ok(object) => object,
            Err(e) => {
                tracing::debug!(error = %e, "watching a tenant namespace");
                continue;
            }
        };
        // Boxed: a watch spends its life waiting for the next change, one per tenant
        // namespace, and while it waits its task holds the stream and nothing more.
        if !Box::pin(send_to_all(&subscribers, object)).await {
            return;
        }
    }
}

/// Sends `object` to every subscriber; false once none is left.
async fn send_to_all<K: Clone>(subscribers: &Fanout<K>, object: PartialObjectMeta<K>) -> bool {
    let senders = subscribers.senders();
    for sender in &senders {
        // A closed subscriber (its controller stopped) is skipped; the others still get it.
        let _ = sender.send(object.clone()).await;
    }
    !senders.iter().all(mpsc::Sender::is_closed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ConfigMap;
    use watcher::Event;

    fn object(namespace: &str, name: &str) -> ConfigMap {
        let mut o = ConfigMap::default();
        o.metadata.namespace = Some(namespace.into());
        o.metadata.name = Some(name.into());
        o
    }

    fn set(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|n| n.to_string()).collect()
    }

    #[tokio::test]
    async fn a_namespace_is_wanted_while_an_object_needing_it_is_there() {
        let events = futures::stream::iter([
            Ok(Event::Init),
            Ok(Event::InitApply(object("a", "one"))),
            Ok(Event::InitApply(object("b", "two"))),
            Ok(Event::InitDone),
            Ok(Event::Apply(object("a", "three"))),
            Ok(Event::Delete(object("a", "one"))),
            Ok(Event::Delete(object("b", "two"))),
        ]);
        let (events, wanted) = wanted_by(events, |o: &ConfigMap| o.metadata.namespace.clone());
        let mut events = std::pin::pin!(events);
        let mut seen = Vec::new();
        while events.next().await.is_some() {
            seen.push(wanted.borrow().clone());
        }
        let expected = [&[][..], &[], &[], &["a", "b"], &["a", "b"], &["a", "b"], &["a"]];
        assert_eq!(seen, expected.iter().map(|n| set(n)).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn a_relist_forgets_objects_deleted_while_the_watch_was_down() {
        let events = futures::stream::iter([
            Ok(Event::Apply(object("a", "one"))),
            Ok(Event::Init),
            Ok(Event::InitApply(object("b", "two"))),
            Ok(Event::InitDone),
        ]);
        let (events, wanted) = wanted_by(events, |o: &ConfigMap| o.metadata.namespace.clone());
        events.for_each(|_| async {}).await;
        assert_eq!(*wanted.borrow(), set(&["b"]));
    }

    #[tokio::test]
    async fn an_object_that_needs_nothing_leaves_its_namespace_out() {
        let needing = |namespace: &str, name: &str| {
            let mut o = object(namespace, name);
            o.data = Some(Default::default());
            o
        };
        let events = futures::stream::iter([
            Ok(Event::Apply(needing("a", "one"))),
            Ok(Event::Apply(object("b", "two"))),
            Ok(Event::Apply(needing("c", "three"))),
            // The first no longer needs its namespace.
            Ok(Event::Apply(object("a", "one"))),
        ]);
        let (events, wanted) = wanted_by(events, |o: &ConfigMap| o.data.as_ref().and(o.metadata.namespace.clone()));
        events.for_each(|_| async {}).await;
        assert_eq!(*wanted.borrow(), set(&["c"]));
    }
}
