//! Waiting for the quota controller to record a Tenant's ResourceQuota. Until it has, the API
//! server refuses every object the quota counts (crews, workflows) with "status unknown for
//! quota", so the Tenant is not Ready before. The reconcile that writes the quota waits for
//! the watch's copy to show it recorded; the quota's watch events that arrive meanwhile are
//! what it waits for, and are kept from reconciling the Tenant a second time.

use super::child_stores::ChildStores;
use crate::quantity;
use k8s_openapi::api::core::v1::ResourceQuota;
use kube::ResourceExt;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;

/// The namespaces whose quota a reconcile is looking at or waiting for now, each with the
/// number of holds on it and what wakes their waits.
#[derive(Default)]
pub struct AwaitedQuotas(Mutex<HashMap<String, (usize, Arc<Notify>)>>);

impl AwaitedQuotas {
    /// Marks `namespace`'s quota as awaited until the returned guard is dropped.
    pub fn hold(self: &Arc<Self>, namespace: &str) -> Awaiting {
        let mut held = self.0.lock().expect("awaited quotas lock");
        let (count, changed) = held.entry(namespace.to_string()).or_default();
        *count += 1;
        Awaiting { quotas: self.clone(), namespace: namespace.to_string(), changed: changed.clone() }
    }

    /// True while a reconcile holds `namespace`'s quota: a watch event of it has already
    /// reached the store that reconcile looks at, and needs no reconcile of its own. The
    /// reconciles waiting on it are woken to look.
    pub fn take_event(&self, namespace: &str) -> bool {
        match self.0.lock().expect("awaited quotas lock").get(namespace) {
            Some((_, changed)) => {
                changed.notify_waiters();
                true
            }
            None => false,
        }
    }
}

/// A reconcile's hold on its namespace's quota; released when dropped, on every path.
pub struct Awaiting {
    quotas: Arc<AwaitedQuotas>,
    namespace: String,
    /// Notified when a watch event of the quota has reached the store.
    changed: Arc<Notify>,
}

impl Drop for Awaiting {
    fn drop(&mut self) {
        let mut held = self.quotas.0.lock().expect("awaited quotas lock");
        if let Some((count, _)) = held.get_mut(&self.namespace) {
            *count -= 1;
            if *count == 0 {
                held.remove(&self.namespace);
            }
        }
    }
}

/// How long a reconcile that has just written the quota waits for the quota controller to
/// record it (usually well under a second): cheaper than a second pass over every child.
const QUOTA_WAIT: Duration = Duration::from_secs(3);
/// The longest a wait goes without looking at the store.
const RELOOK: Duration = Duration::from_millis(250);

/// Whether the live quota is enforced; after a write, waits up to [`QUOTA_WAIT`] for it. The
/// quota watch keeps the whole quota, status included, so this reads no quota from the API
/// server: it looks at the watch's copy, and after a write looks again each time the quota's
/// watch event reaches that copy, until the quota controller's status update has. Without a
/// write, a quota not enforced yet is looked at again when its watch event reconciles the
/// Tenant. `awaiting` is released before the last look, so a watch event it held back is in
/// that look.
pub(super) async fn enforced_quota(
    desired: &ResourceQuota,
    just_written: bool,
    stores: &ChildStores,
    awaiting: Awaiting,
) -> bool {
    let (namespace, name) = (desired.namespace().unwrap_or_default(), desired.name_any());
    let enforced = || stores.quota(&namespace, &name).is_some_and(|live| quota_enforced(&live, desired));
    let deadline = tokio::time::Instant::now() + QUOTA_WAIT;
    if just_written {
        loop {
            // Registered before the look, so an event landing between the two still wakes it.
            let changed = awaiting.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if enforced() || tokio::time::Instant::now() >= deadline {
                break;
            }
            // The store is looked at again after a while even without an event: a watch that
            // restarts relists instead of sending one.
            let _ = tokio::time::timeout_at(deadline.min(tokio::time::Instant::now() + RELOOK), changed).await;
        }
    }
    drop(awaiting);
    enforced()
}

/// True when the quota controller has recorded the desired limits and the usage of every
/// limited resource; before that the API server's quota admission answers "status unknown".
pub fn quota_enforced(live: &ResourceQuota, desired: &ResourceQuota) -> bool {
    let wanted = desired.spec.as_ref().and_then(|s| s.hard.as_ref());
    let status = live.status.as_ref();
    let (recorded, used) = (status.and_then(|s| s.hard.as_ref()), status.and_then(|s| s.used.as_ref()));
    match (wanted, recorded, used) {
        (Some(wanted), Some(recorded), Some(used)) => wanted
            .iter()
            .all(|(k, v)| recorded.get(k).is_some_and(|r| quantity::same(&r.0, &v.0)) && used.contains_key(k)),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_quota_is_awaited_until_every_hold_is_released() {
        let quotas = Arc::new(AwaitedQuotas::default());
        let first = quotas.hold("tenant-a");
        let second = quotas.hold("tenant-a");
        assert!(quotas.take_event("tenant-a"));
        assert!(!quotas.take_event("tenant-b"));
        drop(first);
        assert!(quotas.take_event("tenant-a"), "one hold is left");
        drop(second);
        assert!(!quotas.take_event("tenant-a"));
    }

    #[test]
    fn a_quota_counts_as_enforced_once_its_status_matches() {
        use k8s_openapi::api::core::v1::{ResourceQuotaSpec, ResourceQuotaStatus};
        use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
        let hard = |pods: &str| Some([("pods".to_string(), Quantity(pods.into()))].into());
        let desired = ResourceQuota {
            spec: Some(ResourceQuotaSpec { hard: hard("20"), ..Default::default() }),
            ..Default::default()
        };
        let mut live = desired.clone();
        assert!(!quota_enforced(&live, &desired), "no status yet");
        live.status = Some(ResourceQuotaStatus { hard: hard("10"), used: hard("0") });
        assert!(!quota_enforced(&live, &desired), "old limits");
        live.status = Some(ResourceQuotaStatus { hard: hard("20"), used: None });
        assert!(!quota_enforced(&live, &desired), "usage not counted yet");
        live.status = Some(ResourceQuotaStatus { hard: hard("20"), used: hard("0") });
        assert!(quota_enforced(&live, &desired));
        let memory = |m: &str| Some([("memory".to_string(), Quantity(m.into()))].into());
        let desired = ResourceQuota {
            spec: Some(ResourceQuotaSpec { hard: memory("1024Mi"), ..Default::default() }),
            ..Default::default()
        };
        live.status = Some(ResourceQuotaStatus { hard: memory("1Gi"), used: memory("0") });
        assert!(quota_enforced(&live, &desired), "1024Mi is recorded as 1Gi");
    }

    #[tokio::test(start_paused = true)]
    async fn a_wait_ends_when_the_recorded_quota_reaches_the_store() {
        use k8s_openapi::api::core::v1::{ResourceQuotaSpec, ResourceQuotaStatus};
        use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
        use kube::runtime::watcher::Event;
        let hard = || Some([("pods".to_string(), Quantity("20".into()))].into());
        let mut desired = ResourceQuota {
            spec: Some(ResourceQuotaSpec { hard: hard(), ..Default::default() }),
            ..Default::default()
        };
        desired.metadata.name = Some("tenant-quota".into());
        desired.metadata.namespace = Some("tenant-a".into());
        let (reader, mut writer) = kube::runtime::reflector::store::<ResourceQuota>();
        writer.apply_watcher_event(&Event::Apply(desired.clone()));
        let stores = ChildStores::new(reader);
        let quotas = Arc::new(AwaitedQuotas::default());
        let awaiting = quotas.hold("tenant-a");
        let started = tokio::time::Instant::now();
        let wait = tokio::spawn({
            let desired = desired.clone();
            async move { enforced_quota(&desired, true, &stores, awaiting).await }
        });
        // The wait has looked once and found no status.
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert!(!wait.is_finished(), "nothing is recorded yet");
        let mut recorded = desired.clone();
        recorded.status =
            Some(ResourceQuotaStatus { hard: hard(), used: Some([("pods".into(), Quantity("0".into()))].into()) });
        writer.apply_watcher_event(&Event::Apply(recorded));
        assert!(quotas.take_event("tenant-a"), "the event is the waiting reconcile's");
        assert!(wait.await.expect("the wait ends"), "the recorded quota is enforced");
        assert_eq!(started.elapsed(), Duration::ZERO, "woken by the event, not by its next look");
        assert!(!quotas.take_event("tenant-a"), "the hold is released");
    }
}
