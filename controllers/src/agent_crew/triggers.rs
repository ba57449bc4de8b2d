//! What makes a crew reconcile besides its own changes and its children's: a change of an
//! Integration it uses, a change of the endpoints of a Service its egress policy allows, and
//! its tenant being suspended or resumed.

use crate::egress::resolve::ServiceKey;
use bizosaas_crds::{AgentCrew, Integration, Tenant};
use futures::{Stream, TryStreamExt};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::Api;
use kube::core::{DeserializeGuard, PartialObjectMeta};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;

/// A crew as the controller queues it.
pub type CrewRef = ObjectRef<DeserializeGuard<AgentCrew>>;

/// What of an Integration a crew depends on: its spec (type and endpoint: the crew file and
/// the egress policy) and its credentials' content hash (the pods roll). Health checks update
/// only the rest of the status, so they trigger nothing.
type Relevant = (Option<i64>, Option<String>);

fn relevant(integration: &Integration) -> Relevant {
    (integration.metadata.generation, integration.status.as_ref().and_then(|s| s.content_hash.clone()))
}

/// Passes an Integration event on when it changes what a crew depends on. Deletions always
/// pass; `seen` holds the last relevant state per uid.
fn filter(seen: &mut HashMap<String, Relevant>, event: watcher::Event<Integration>) -> Option<Integration> {
    match event {
        watcher::Event::Apply(i) | watcher::Event::InitApply(i) => {
            let now = relevant(&i);
            let before = seen.insert(i.uid().unwrap_or_default(), now.clone());
            (before.as_ref() != Some(&now)).then_some(i)
        }
        watcher::Event::Delete(i) => {
            seen.remove(&i.uid().unwrap_or_default());
            Some(i)
        }
        watcher::Event::Init | watcher::Event::InitDone => None,
    }
}

/// Integrations that were created, deleted, or changed in a way a crew depends on.
pub fn integration_changes(client: Client) -> impl Stream<Item = Result<Integration, watcher::Error>> + Send + 'static {
    let mut seen = HashMap::new();
    watcher(Api::<Integration>::all(client), watcher::Config::default())
        .default_backoff()
        .try_filter_map(move |event| futures::future::ready(Ok(filter(&mut seen, event))))
}

/// The crews in the Integration's namespace that use it.
pub fn crews_using(crews: &Store<DeserializeGuard<AgentCrew>>, integration: &Integration) -> Vec<CrewRef> {
    let namespace = integration.namespace();
    let name = integration.name_any();
    crews
        .state()
        .into_iter()
        .filter_map(|guard| guard.0.as_ref().ok().cloned())
        .filter(|crew| {
            crew.namespace() == namespace && super::render::referenced_integrations(&crew.spec).contains(&name)
        })
        .map(|crew| ObjectRef::new(&crew.name_any()).within(&crew.namespace().unwrap_or_default()))
        .collect()
}

/// What of a Tenant its crews follow: whether it is suspended (whether they run) and its plan
/// and token override (the month they spend from).
fn crews_follow(t: &Tenant) -> (bool, bizosaas_crds::tenant::Plan, Option<i64>) {
    (t.spec.suspended, t.spec.plan, t.spec.quota.as_ref().and_then(|q| q.monthly_tokens))
}

/// Tenants that were suspended or resumed, changed plan or token budget, appeared or went:
/// status changes and the rest of the spec trigger nothing.
pub fn tenant_changes(client: Client) -> impl Stream<Item = Result<Tenant, watcher::Error>> + Send + 'static {
    let mut seen = HashMap::new();
    watcher(Api::<Tenant>::all(client), watcher::Config::default()).default_backoff().try_filter_map(move |event| {
        let changed = match event {
            watcher::Event::Apply(t) | watcher::Event::InitApply(t) => {
                let now = crews_follow(&t);
                let before = seen.insert(t.name_any(), now);
                (before != Some(now)).then_some(t)
            }
            watcher::Event::Delete(t) => {
                seen.remove(&t.name_any());
                Some(t)
            }
            watcher::Event::Init | watcher::Event::InitDone => None,
        };
        futures::future::ready(Ok(changed))
    })
}

/// The crews in the tenant's namespace.
pub fn crews_of(crews: &Store<DeserializeGuard<AgentCrew>>, tenant: &Tenant) -> Vec<CrewRef> {
    let namespace = crate::tenant::build::namespace_name(&tenant.name_any());
    crews
        .state()
        .into_iter()
        .filter(|guard| guard.meta().namespace.as_deref() == Some(namespace.as_str()))
        .map(|guard| ObjectRef::new(&guard.name_any()).within(&namespace))
        .collect()
}

/// Changes to any EndpointSlice, as metadata: its Service label is all the mapping needs.
pub fn endpoint_slice_changes(
    client: Client,
) -> impl Stream<Item = Result<PartialObjectMeta<EndpointSlice>, watcher::Error>> + Send + 'static {
    watcher(Api::<PartialObjectMeta<EndpointSlice>>::all(client), watcher::Config::default())
        .default_backoff()
        .touched_objects()
}

/// The Services each crew's egress policy was last built from, so that a change of their
/// endpoints re-derives exactly the crews that allow them.
#[derive(Debug, Default)]
pub struct ServiceDependencies(Mutex<HashMap<CrewRef, BTreeSet<ServiceKey>>>);

impl ServiceDependencies {
    pub fn record(&self, crew: CrewRef, services: BTreeSet<ServiceKey>) {
        let mut map = self.0.lock().expect("service dependencies lock");
        if services.is_empty() {
            map.remove(&crew);
        } else {
            map.insert(crew, services);
        }
    }

    pub fn forget(&self, crew: &CrewRef) {
        self.0.lock().expect("service dependencies lock").remove(crew);
    }

    /// The crews whose policy allows `service`'s endpoints.
    pub fn dependents(&self, service: &ServiceKey) -> Vec<CrewRef> {
        let map = self.0.lock().expect("service dependencies lock");
        map.iter().filter(|(_, services)| services.contains(service)).map(|(crew, _)| crew.clone()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bizosaas_crds::integration::IntegrationStatus;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use k8s_openapi::jiff::Timestamp;

    fn integration(generation: i64, hash: &str) -> Integration {
        let yaml = r#"
apiVersion: bizosaas.io/v1alpha1
kind: Integration
metadata: {name: llm, namespace: tenant-acme, uid: u1}
spec: {type: OpenAI, credentials: {secretRef: {name: k, key: apiKey}}}
"#;
        let mut i: Integration = serde_saphyr::from_str(yaml).unwrap();
        i.metadata.generation = Some(generation);
        i.status = Some(IntegrationStatus { content_hash: Some(hash.into()), ..Default::default() });
        i
    }

    #[test]
    fn health_checks_trigger_nothing_but_spec_credentials_and_deletion_do() {
        let mut seen = HashMap::new();
        assert!(filter(&mut seen, watcher::Event::InitApply(integration(1, "h1"))).is_some(), "first sight");
        let mut heartbeat = integration(1, "h1");
        let status = heartbeat.status.as_mut().unwrap();
        status.last_check_time = Some(Time(Timestamp::now()));
        status.latency_ms = Some(12);
        assert!(filter(&mut seen, watcher::Event::Apply(heartbeat)).is_none(), "a health check");
        assert!(filter(&mut seen, watcher::Event::Apply(integration(1, "h2"))).is_some(), "rotated credentials");
        assert!(filter(&mut seen, watcher::Event::Apply(integration(2, "h2"))).is_some(), "a new endpoint");
        assert!(filter(&mut seen, watcher::Event::InitApply(integration(2, "h2"))).is_none(), "a relist");
        assert!(filter(&mut seen, watcher::Event::Delete(integration(2, "h2"))).is_some(), "deletion");
        assert!(filter(&mut seen, watcher::Event::Apply(integration(2, "h2"))).is_some(), "recreated");
        assert!(filter(&mut seen, watcher::Event::<Integration>::InitDone).is_none());
    }

    #[test]
    fn endpoint_changes_reach_the_crews_that_allow_the_service() {
        let deps = ServiceDependencies::default();
        let service = |ns: &str, name: &str| ServiceKey { namespace: ns.into(), name: name.into() };
        let crew = |name: &str| CrewRef::new(name).within("tenant-acme");
        deps.record(crew("a"), BTreeSet::from([service("tenant-acme", "wagtail"), service("llm", "gateway")]));
        deps.record(crew("b"), BTreeSet::from([service("llm", "gateway")]));
        assert_eq!(deps.dependents(&service("tenant-acme", "wagtail")), [crew("a")]);
        let mut both = deps.dependents(&service("llm", "gateway"));
        both.sort_by_key(|c| c.name.clone());
        assert_eq!(both, [crew("a"), crew("b")]);
        deps.record(crew("a"), BTreeSet::new());
        deps.forget(&crew("b"));
        assert!(deps.dependents(&service("llm", "gateway")).is_empty());
    }
}
