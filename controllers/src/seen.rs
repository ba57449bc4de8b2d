//! Children the operator knows to be as it wants them, without reading them: the
//! resourceVersion at which it last wrote or checked each one, and a digest of what it wanted
//! then. A metadata watch of the kind says which resourceVersion is live. While the two agree
//! and the desired object is the same, a reconcile neither reads nor writes the child. Any
//! change to it (a hand edit, a deletion, another controller's write) gives it a new
//! resourceVersion, and the reconcile that the same watch event triggers reads and compares
//! it again.

use std::borrow::Cow;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Mutex;

/// The resourceVersion of a live object as a watch last saw it.
pub trait LiveVersions: Send + Sync {
    /// `None` when the watch has not seen the object (not yet, or it is gone).
    fn live_version(&self, kind: &str, namespace: Option<&str>, name: &str) -> Option<String>;
}

/// Where a child was last seen holding what the operator wanted. There is an entry for every
/// child of every tenant, so each is three digests: of the child's kind, namespace and name,
/// of the resourceVersion and of the desired object. Two children's keys would have to
/// collide and share a resourceVersion, which no two objects do, for either check to pass for
/// the wrong child.
#[derive(Default)]
pub struct Seen {
    entries: Mutex<HashMap<u64, Entry>>,
    /// Children with a write sent and its answer not recorded yet, and the versions of their
    /// watch events that arrived meanwhile, each with the tenant it would have reconciled.
    /// The watch may deliver a write's own event before the write's answer is processed.
    in_flight: Mutex<HashMap<u64, Vec<Held>>>,
    /// Where the tenants of held events that turn out not to be echoes are sent to be
    /// reconciled after all.
    wake: Option<tokio::sync::mpsc::UnboundedSender<String>>,
}

/// A watch event held during a write: the digest of its version, and the tenant it would
/// have reconciled.
type Held = (u64, Option<String>);

/// A write in flight for one child, from [`Seen::writing`]. Recording the child's new
/// version ends it; dropped without that (the write failed), every event held meanwhile is
/// let through.
pub struct InFlight<'a> {
    seen: &'a Seen,
    key: u64,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.seen.resolve(self.key, None);
    }
}

#[derive(Clone, Copy)]
struct Entry {
    namespace: u64,
    version: u64,
    desired: u64,
}

/// A child's kind, namespace and name.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ChildKey<'a> {
    pub kind: Cow<'static, str>,
    pub namespace: Option<&'a str>,
    pub name: &'a str,
}

impl<'a> ChildKey<'a> {
    /// The key of `object`.
    pub fn of<K: kube::Resource<DynamicType = ()>>(object: &'a K) -> ChildKey<'a> {
        let meta = object.meta();
        ChildKey { kind: K::kind(&()), namespace: meta.namespace.as_deref(), name: meta.name.as_deref().unwrap_or("") }
    }

    fn digest(&self) -> u64 {
        digest(self)
    }
}

fn digest<T: Hash + ?Sized>(value: &T) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    value.hash(&mut hasher);
    hasher.finish()
}

impl Seen {
    /// A `Seen` that sends the tenants of held events that were not echoes to `wake`.
    pub fn waking(wake: tokio::sync::mpsc::UnboundedSender<String>) -> Self {
        Seen { wake: Some(wake), ..Default::default() }
    }

    /// True when the child was last written or checked at `version`: a watch event at that
    /// version only echoes what the controller already knows, and needs no reconcile.
    pub fn is_current(&self, key: &ChildKey, version: &str) -> bool {
        let entries = self.entries.lock().expect("seen lock");
        entries.get(&key.digest()).is_some_and(|e| e.version == digest(version))
    }

    /// True when a watch event of the child at `version` needs no reconcile of its `tenant`
    /// (asked for only when the event is held): it echoes what is known, or it arrived while
    /// a write of the child was in flight and is held until that write's answer says whether
    /// it was the write's own event.
    pub fn is_echo(&self, key: &ChildKey, version: &str, tenant: impl FnOnce() -> Option<String>) -> bool {
        if self.is_current(key, version) {
            return true;
        }
        let mut in_flight = self.in_flight.lock().expect("in flight lock");
        match in_flight.get_mut(&key.digest()) {
            Some(held) => {
                held.push((digest(version), tenant()));
                true
            }
            None => false,
        }
    }

    /// Marks a write of the child as sent, until the returned guard is dropped or the child's
    /// new version is recorded.
    pub fn writing(&self, key: &ChildKey) -> InFlight<'_> {
        let key = key.digest();
        self.in_flight.lock().expect("in flight lock").entry(key).or_default();
        InFlight { seen: self, key }
    }

    /// Ends a write in flight: the events held meanwhile at another `version` than the one
    /// written (all of them without one) reconcile their tenants after all.
    fn resolve(&self, key: u64, version: Option<u64>) {
        let Some(held) = self.in_flight.lock().expect("in flight lock").remove(&key) else { return };
        for (_, tenant) in held.into_iter().filter(|(v, _)| Some(*v) != version) {
            if let (Some(wake), Some(tenant)) = (&self.wake, tenant) {
                let _ = wake.send(tenant);
            }
        }
    }

    /// True when the watch shows the child at the resourceVersion it was last seen at, for
    /// the same desired object.
    pub fn unchanged(&self, key: &ChildKey, desired: u64, live: &dyn LiveVersions) -> bool {
        live.live_version(&key.kind, key.namespace, key.name).is_some_and(|version| self.holds(key, &version, desired))
    }

    /// True when the child was last seen holding `desired` at `version`.
    fn holds(&self, key: &ChildKey, version: &str, desired: u64) -> bool {
        let entries = self.entries.lock().expect("seen lock");
        entries.get(&key.digest()).is_some_and(|e| e.version == digest(version) && e.desired == desired)
    }

    /// Records that the child holds `desired` at `version`, ending a write in flight.
    pub fn record(&self, key: &ChildKey, version: Option<&str>, desired: u64) {
        {
            let mut entries = self.entries.lock().expect("seen lock");
            match version {
                Some(version) => {
                    let namespace = digest(key.namespace.unwrap_or(key.name));
                    entries.insert(key.digest(), Entry { namespace, version: digest(version), desired })
                }
                None => entries.remove(&key.digest()),
            };
        }
        self.resolve(key.digest(), version.map(digest));
    }

    /// Forgets every child in `namespace`, and the Namespace itself (its tenant is gone).
    pub fn forget_namespace(&self, namespace: &str) {
        let mut entries = self.entries.lock().expect("seen lock");
        let namespace = digest(namespace);
        entries.retain(|_, e| e.namespace != namespace);
    }

    pub fn len(&self) -> usize {
        self.entries.lock().expect("seen lock").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A digest of a whole desired object, values included (unlike the applied-fields digest):
/// any change to what the operator wants must be compared with the live object again.
pub fn desired_digest(desired: &serde_json::Value) -> u64 {
    digest(&desired.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    struct Live(Option<&'static str>);
    impl LiveVersions for Live {
        fn live_version(&self, _: &str, _: Option<&str>, _: &str) -> Option<String> {
            self.0.map(str::to_string)
        }
    }

    fn key<'a>(namespace: &'a str, name: &'a str) -> ChildKey<'a> {
        ChildKey { kind: "ResourceQuota".into(), namespace: Some(namespace), name }
    }

    #[test]
    fn a_child_is_unchanged_only_at_the_version_and_desired_object_it_was_seen_with() {
        let seen = Seen::default();
        let desired = desired_digest(&json!({"spec": {"hard": {"pods": "20"}}}));
        assert!(!seen.unchanged(&key("t", "q"), desired, &Live(Some("7"))), "never seen");
        seen.record(&key("t", "q"), Some("7"), desired);
        assert!(seen.unchanged(&key("t", "q"), desired, &Live(Some("7"))));
        assert!(!seen.unchanged(&key("t", "q"), desired, &Live(Some("8"))), "edited since");
        assert!(!seen.unchanged(&key("t", "q"), desired, &Live(None)), "deleted, or not watched yet");
        let other = desired_digest(&json!({"spec": {"hard": {"pods": "30"}}}));
        assert!(!seen.unchanged(&key("t", "q"), other, &Live(Some("7"))), "the spec asks for something else");
        assert!(seen.is_current(&key("t", "q"), "7"), "the watch event of the write itself");
        assert!(!seen.is_current(&key("t", "q"), "8"), "a change since");
        assert!(!seen.is_current(&key("t", "other"), "7"), "another child");
    }

    #[test]
    fn an_event_during_a_write_is_held_until_the_answer_says_whose_it_is() {
        let (wake, mut woken) = tokio::sync::mpsc::unbounded_channel();
        let seen = Seen::waking(wake);
        assert!(!seen.is_echo(&key("t", "q"), "5", || Some("t".into())), "no write in flight");
        // The write's own event arrives before its answer: held, then dropped.
        let write = seen.writing(&key("t", "q"));
        assert!(seen.is_echo(&key("t", "q"), "7", || Some("t".into())));
        seen.record(&key("t", "q"), Some("7"), 1);
        drop(write);
        assert!(woken.try_recv().is_err(), "the write's own event woke the tenant");
        assert!(seen.is_echo(&key("t", "q"), "7", || Some("t".into())), "the echo after the answer");
        // Someone else's change arrives during the write: it wakes the tenant at the answer.
        let write = seen.writing(&key("t", "q"));
        assert!(seen.is_echo(&key("t", "q"), "8", || Some("t".into())));
        assert!(seen.is_echo(&key("t", "q"), "9", || Some("t".into())));
        seen.record(&key("t", "q"), Some("9"), 1);
        drop(write);
        assert_eq!(woken.try_recv().ok().as_deref(), Some("t"));
        assert!(woken.try_recv().is_err(), "woken once per held event that was not the echo");
        // A write that fails lets every held event through.
        let write = seen.writing(&key("t", "q"));
        assert!(seen.is_echo(&key("t", "q"), "10", || Some("t".into())));
        drop(write);
        assert_eq!(woken.try_recv().ok().as_deref(), Some("t"));
        assert!(!seen.is_echo(&key("t", "q"), "11", || Some("t".into())), "nothing in flight any more");
    }

    #[test]
    fn a_namespace_is_forgotten_with_its_children() {
        let seen = Seen::default();
        seen.record(&key("tenant-a", "q"), Some("1"), 1);
        seen.record(&key("tenant-b", "q"), Some("1"), 1);
        let namespace = ChildKey { kind: "Namespace".into(), namespace: None, name: "tenant-a" };
        seen.record(&namespace, Some("1"), 1);
        seen.forget_namespace("tenant-a");
        assert_eq!(seen.len(), 1);
        assert!(seen.unchanged(&key("tenant-b", "q"), 1, &Live(Some("1"))));
    }
}
