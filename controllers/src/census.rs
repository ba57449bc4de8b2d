//! The standing of every object a controller manages, counted from its reflector store for
//! dashboards and alerts: how many are Ready, not Ready or not yet judged, how many are
//! Stalled, how long the worst one has been not Ready, and how many carry a generation the
//! controller has not reconciled yet. Counts, not per-object series, so the label sets stay
//! bounded however many tenants there are.

use crate::background::Background;
use crate::conditions::STALLED;
use crate::metrics::{ControllerLabels, KindLabels, Metrics, ReadinessLabels};
use bizosaas_crds::common::{Condition, READY, find_condition};
use bizosaas_crds::workflow::RunPhase;
use bizosaas_crds::{AgentCrew, Integration, Tenant, Workflow, WorkflowRun};
use k8s_openapi::jiff::Timestamp;
use kube::Resource;
use kube::core::DeserializeGuard;
use kube::runtime::reflector::Store;
use std::sync::Arc;
use std::time::Duration;

/// How often the counts are refreshed: about a scrape interval, and cheap (one pass over
/// the store, no API request).
const EVERY: Duration = Duration::from_secs(10);

/// What a kind reports in its status.
pub trait Reported: Resource<DynamicType = ()> {
    /// `status.observedGeneration` and `status.conditions`.
    fn reported(&self) -> (Option<i64>, &[Condition]);

    /// True for an object whose story is over (a finished WorkflowRun): not being Ready is
    /// its outcome, not something waiting, so it does not count towards the oldest not Ready.
    fn settled(&self) -> bool {
        false
    }
}

macro_rules! reported {
    ($($kind:ty),*) => {$(
        impl Reported for $kind {
            fn reported(&self) -> (Option<i64>, &[Condition]) {
                match &self.status {
                    Some(status) => (status.observed_generation, &status.conditions),
                    None => (None, &[]),
                }
            }
        }
    )*};
}
reported!(Tenant, AgentCrew, Integration, Workflow);

impl Reported for WorkflowRun {
    fn reported(&self) -> (Option<i64>, &[Condition]) {
        match &self.status {
            Some(status) => (status.observed_generation, &status.conditions),
            None => (None, &[]),
        }
    }

    fn settled(&self) -> bool {
        self.status.as_ref().and_then(|s| s.phase).is_some_and(RunPhase::is_finished)
    }
}

/// The counts of one kind.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Census {
    pub ready: i64,
    pub not_ready: i64,
    /// No `Ready` condition yet, or `Unknown`.
    pub unknown: i64,
    pub stalled: i64,
    /// Objects whose `metadata.generation` is ahead of the generation their status reports.
    pub backlog: i64,
    /// Seconds since the longest-standing not-Ready object stopped being (or was created
    /// without being) Ready.
    pub oldest_not_ready: f64,
}

/// Counts the objects of a store. An object this operator cannot read counts as not Ready
/// and Stalled, which is what the controller reports on it.
pub fn count<K: Reported>(objects: &[Arc<DeserializeGuard<K>>], now: Timestamp) -> Census {
    let mut census = Census::default();
    for guard in objects {
        match &guard.0 {
            Ok(object) => add(&mut census, object, now),
            Err(_) => {
                census.not_ready += 1;
                census.stalled += 1;
            }
        }
    }
    census
}

fn add<K: Reported>(census: &mut Census, object: &K, now: Timestamp) {
    let (observed, conditions) = object.reported();
    let meta = object.meta();
    if meta.generation.is_some_and(|generation| observed.is_none_or(|seen| seen < generation)) {
        census.backlog += 1;
    }
    if find_condition(conditions, STALLED).is_some_and(|c| c.status == "True") {
        census.stalled += 1;
    }
    let ready = find_condition(conditions, READY);
    let since = match ready.map(|c| c.status.as_str()) {
        Some("True") => {
            census.ready += 1;
            return;
        }
        Some("False") => {
            census.not_ready += 1;
            ready.map(|c| c.last_transition_time.0)
        }
        _ => {
            census.unknown += 1;
            meta.creation_timestamp.as_ref().map(|t| t.0)
        }
    };
    if let Some(since) = since.filter(|_| !object.settled()) {
        let seconds = now.duration_since(since).as_secs_f64().max(0.0);
        census.oldest_not_ready = census.oldest_not_ready.max(seconds);
    }
}

/// Publishes the census of `store` as the metrics of `kind` every few seconds, calling
/// `also` with the same snapshot for a kind's own figures, until the task is dropped.
pub async fn publish<K: Reported + Clone + 'static>(
    store: Store<DeserializeGuard<K>>,
    controller: &'static str,
    metrics: Arc<Metrics>,
    also: impl Fn(&[Arc<DeserializeGuard<K>>]),
) {
    let kind: &'static str = match K::kind(&()) {
        std::borrow::Cow::Borrowed(kind) => kind,
        std::borrow::Cow::Owned(kind) => Box::leak(kind.into_boxed_str()),
    };
    // Asked again every second: the store's readiness wakes only the last task that waited
    // on it (its controller also waits), so one wait alone could sleep forever.
    loop {
        match tokio::time::timeout(Duration::from_secs(1), store.wait_until_ready()).await {
            Ok(Ok(())) => break,
            Ok(Err(_writer_dropped)) => return,
            Err(_not_yet) => {}
        }
    }
    let mut tick = tokio::time::interval(EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let objects = store.state();
        let census = count(&objects, Timestamp::now());
        let readiness = |ready| ReadinessLabels { kind, ready };
        metrics.objects.get_or_create(&readiness("True")).set(census.ready);
        metrics.objects.get_or_create(&readiness("False")).set(census.not_ready);
        metrics.objects.get_or_create(&readiness("Unknown")).set(census.unknown);
        let labels = KindLabels { kind: kind.to_string() };
        metrics.stalled.get_or_create(&labels).set(census.stalled);
        metrics.oldest_not_ready.get_or_create(&labels).set(census.oldest_not_ready);
        metrics.backlog.get_or_create(&ControllerLabels { controller }).set(census.backlog);
        also(&objects);
    }
}

/// Starts [`publish`] for a controller's store.
pub fn spawn<K: Reported + Clone + Send + Sync + 'static>(
    store: Store<DeserializeGuard<K>>,
    controller: &'static str,
    metrics: Arc<Metrics>,
    also: impl Fn(&[Arc<DeserializeGuard<K>>]) + Send + 'static,
) -> Background {
    Background::spawn(publish(store, controller, metrics, also))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bizosaas_crds::tenant::{TenantSpec, TenantStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn at(text: &str) -> Timestamp {
        text.parse().expect("a timestamp")
    }

    fn condition(type_: &str, status: &str, since: &str) -> Condition {
        Condition {
            type_: type_.into(),
            status: status.into(),
            reason: "Because".into(),
            message: String::new(),
            last_transition_time: Time(at(since)),
            observed_generation: None,
        }
    }

    fn tenant(generation: i64, observed: Option<i64>, conditions: Vec<Condition>) -> Arc<DeserializeGuard<Tenant>> {
        let spec: TenantSpec =
            serde_json::from_value(serde_json::json!({"displayName": "T", "plan": "starter"})).expect("a minimal spec");
        let mut tenant = Tenant::new("t", spec);
        tenant.metadata.generation = Some(generation);
        tenant.metadata.creation_timestamp = Some(Time(at("2026-01-01T00:00:00Z")));
        tenant.status = Some(TenantStatus { observed_generation: observed, conditions, ..TenantStatus::default() });
        Arc::new(DeserializeGuard(Ok(tenant)))
    }

    #[test]
    fn objects_are_counted_by_readiness_and_the_worst_age_is_kept() {
        let now = at("2026-01-01T01:00:00Z");
        let objects = vec![
            tenant(1, Some(1), vec![condition(READY, "True", "2026-01-01T00:10:00Z")]),
            tenant(2, Some(2), vec![condition(READY, "False", "2026-01-01T00:50:00Z")]),
            tenant(
                3,
                Some(3),
                vec![
                    condition(READY, "False", "2026-01-01T00:30:00Z"),
                    condition(STALLED, "True", "2026-01-01T00:30:00Z"),
                ],
            ),
            // Never judged: its age counts from its creation.
            tenant(1, None, vec![]),
        ];
        let census = count(&objects, now);
        assert_eq!(
            census,
            Census { ready: 1, not_ready: 2, unknown: 1, stalled: 1, backlog: 1, oldest_not_ready: 3600.0 }
        );
    }

    #[test]
    fn a_spec_change_not_yet_reconciled_is_backlog_even_when_ready() {
        let now = at("2026-01-01T01:00:00Z");
        let objects = vec![tenant(4, Some(3), vec![condition(READY, "True", "2026-01-01T00:10:00Z")])];
        let census = count(&objects, now);
        assert_eq!((census.ready, census.backlog, census.oldest_not_ready), (1, 1, 0.0));
    }
}

#[cfg(test)]
mod publish_tests {
    //! The publishing task against a store another task waits on too.
    use super::*;
    use kube::runtime::reflector;
    use kube::runtime::watcher::Event;
    use prometheus_client::registry::Registry;

    #[tokio::test]
    async fn a_ready_store_is_published() {
        let mut registry = Registry::default();
        let metrics = Arc::new(Metrics::new(&mut registry, &["tenant"]));
        let (reader, mut writer) = reflector::store::<DeserializeGuard<Tenant>>();
        let running = spawn(reader.clone(), "tenant", metrics.clone(), |_| {});
        tokio::time::sleep(Duration::from_millis(50)).await;
        // The controller waits on the same store after the census did.
        let controller = tokio::spawn(async move { reader.wait_until_ready().await.is_ok() });
        tokio::time::sleep(Duration::from_millis(50)).await;
        writer.apply_watcher_event(&Event::Init);
        writer.apply_watcher_event(&Event::InitDone);
        assert!(controller.await.unwrap());
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        drop(running);
        assert!(text.contains(r#"bizosaas_objects{kind="Tenant",ready="True"} 0"#), "{text}");
    }
}
