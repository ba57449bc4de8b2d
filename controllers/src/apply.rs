//! Writing desired objects with server-side apply, and only when they differ from the live
//! object: a converged resync sends no writes, while a child deleted or edited by hand is
//! restored on the next reconcile, and a field the desired object no longer has is removed.

use crate::FIELD_MANAGER;
use crate::metrics::Metrics;
use crate::seen::{ChildKey, LiveVersions, Seen, desired_digest};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::collections::BTreeSet;
use std::fmt::Debug;

/// Applies objects for one controller and counts its writes.
#[derive(Clone, Copy)]
pub struct Applier<'a> {
    pub metrics: &'a Metrics,
    pub controller: &'static str,
    /// Read the live object first and skip the write when nothing differs. Off only when
    /// the objects are known not to exist yet (a first provisioning), saving a read each.
    pub compare: bool,
    /// What the controller knows of its children without reading them; `None` reads each.
    pub known: Option<Known<'a>>,
}

/// The children a controller has seen as it wants them, and the watch that says whether they
/// changed since.
#[derive(Clone, Copy)]
pub struct Known<'a> {
    pub seen: &'a Seen,
    pub live: &'a dyn LiveVersions,
}

impl Applier<'_> {
    /// Server-side applies `desired` unless the live object already holds every field of it
    /// and was last applied with the same set of fields. Returns whether a write was sent.
    pub async fn ensure<K>(&self, api: &Api<K>, desired: &K) -> Result<bool, kube::Error>
    where
        K: Resource<DynamicType = ()> + Serialize + DeserializeOwned + Clone + Debug,
    {
        let desired = with_field_digest(desired);
        let value = to_value(&desired);
        if self.known_unchanged(&desired, &value) {
            return Ok(false);
        }
        let live = if self.compare {
            self.metrics.child_read(self.controller, &K::kind(&()));
            api.get_opt(&desired.name_any()).await?
        } else {
            None
        };
        self.apply_digested(api, &desired, &value, live.as_ref()).await
    }

    /// [`Applier::ensure`] with the live object the caller already has (read, or a watch's
    /// whole copy).
    pub async fn ensure_against<K>(&self, api: &Api<K>, desired: &K, live: Option<&K>) -> Result<bool, kube::Error>
    where
        K: Resource<DynamicType = ()> + Serialize + DeserializeOwned + Clone + Debug,
    {
        let desired = with_field_digest(desired);
        let value = to_value(&desired);
        if self.known_unchanged(&desired, &value) {
            return Ok(false);
        }
        self.apply_digested(api, &desired, &value, live).await
    }

    /// True when the watch shows the child where it was last seen holding `desired` (with its
    /// JSON `value`): nothing to compare or write.
    fn known_unchanged<K: Resource<DynamicType = ()>>(&self, desired: &K, value: &Value) -> bool {
        self.compare
            && self
                .known
                .is_some_and(|known| known.seen.unchanged(&ChildKey::of(desired), desired_digest(value), known.live))
    }

    /// [`Applier::ensure_against`] for a desired object that already carries its field
    /// digest, with its JSON, so neither is computed twice.
    async fn apply_digested<K>(
        &self,
        api: &Api<K>,
        desired: &K,
        value: &Value,
        live: Option<&K>,
    ) -> Result<bool, kube::Error>
    where
        K: Resource<DynamicType = ()> + Serialize + DeserializeOwned + Clone + Debug,
    {
        let remember = |version: Option<String>| {
            if let Some(known) = self.known {
                known.seen.record(&ChildKey::of(desired), version.as_deref(), desired_digest(value));
            }
        };
        if self.compare
            && let Some(live) = live
            && live.meta().deletion_timestamp.is_none()
            && is_subset(value, &to_value(live))
        {
            remember(live.meta().resource_version.clone());
            return Ok(false);
        }
        let name = desired.name_any();
        let applied = api.patch(&name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(desired)).await?;
        self.metrics.write(self.controller, &K::kind(&()), "apply");
        remember(applied.meta().resource_version.clone());
        Ok(true)
    }

    /// Deletes the objects matching `selector` whose names are not in `keep`: children that
    /// the spec no longer asks for.
    pub async fn prune<K>(&self, api: &Api<K>, selector: &str, keep: &BTreeSet<String>) -> Result<usize, kube::Error>
    where
        K: Resource<DynamicType = ()> + DeserializeOwned + Clone + Debug,
    {
        let listed = api.list_metadata(&ListParams::default().labels(selector)).await?;
        let existing: Vec<String> = listed
            .items
            .into_iter()
            .filter(|o| o.metadata.deletion_timestamp.is_none())
            .filter_map(|o| o.metadata.name)
            .collect();
        self.prune_known(api, &existing, keep).await
    }

    /// Deletes the `existing` objects (named as a watch knows them, none being deleted
    /// already) whose names are not in `keep`.
    pub async fn prune_known<K>(
        &self,
        api: &Api<K>,
        existing: &[String],
        keep: &BTreeSet<String>,
    ) -> Result<usize, kube::Error>
    where
        K: Resource<DynamicType = ()> + DeserializeOwned + Clone + Debug,
    {
        let mut deleted = 0;
        for name in existing {
            if !keep.contains(name) {
                match api.delete(name, &DeleteParams::background()).await {
                    Ok(_) => {}
                    // Already gone: the watch had not caught up.
                    Err(kube::Error::Api(e)) if e.code == 404 => continue,
                    Err(e) => return Err(e),
                }
                self.metrics.write(self.controller, &K::kind(&()), "delete");
                deleted += 1;
            }
        }
        Ok(deleted)
    }
}

/// Annotation holding a digest of the field paths the operator last applied (names only, never
/// values). The subset check alone cannot see a field that left the desired object: the live
/// object still holds it. A changed digest forces the apply, and server-side apply then removes
/// the fields this manager no longer sets.
pub const APPLIED_FIELDS: &str = "bizosaas.io/applied-fields";

/// `desired` with [`APPLIED_FIELDS`] set to the digest of its field paths.
fn with_field_digest<K: Resource + Serialize + Clone>(desired: &K) -> K {
    let digest = field_digest(&to_value(desired));
    let mut desired = desired.clone();
    desired.meta_mut().annotations.get_or_insert_default().insert(APPLIED_FIELDS.to_string(), digest);
    desired
}

/// A short digest of every path to a non-empty leaf of `value` (object keys and list
/// indices). Values do not enter it, so a Secret's digest says nothing about its data.
pub fn field_digest(value: &Value) -> String {
    fn walk(value: &Value, path: &mut String, out: &mut Vec<String>) {
        let len = path.len();
        match value {
            Value::Object(map) => {
                for (key, child) in map.iter().filter(|(_, v)| !is_empty(v)) {
                    path.push('.');
                    path.push_str(key);
                    walk(child, path, out);
                    path.truncate(len);
                }
            }
            Value::Array(items) => {
                for (i, child) in items.iter().enumerate() {
                    path.push_str(&format!("[{i}]"));
                    walk(child, path, out);
                    path.truncate(len);
                }
            }
            Value::Null => {}
            _ => out.push(path.clone()),
        }
    }
    let mut paths = Vec::new();
    walk(value, &mut String::new(), &mut paths);
    paths.sort();
    let mut hasher = Sha256::new();
    for p in &paths {
        hasher.update(p.as_bytes());
        hasher.update(b"\n");
    }
    hasher.finalize().iter().take(8).map(|b| format!("{b:02x}")).collect()
}

fn to_value<T: Serialize>(value: &T) -> Value {
    serde_json::to_value(value).unwrap_or(Value::Null)
}

/// Maps whose values are quantities, which the API server rewrites into canonical form
/// (`1024Mi` → `1Gi`): `hard`, `requests`, `limits`, a LimitRange's `default`, `max`, ….
const QUANTITY_MAPS: [&str; 8] = ["hard", "requests", "limits", "default", "defaultRequest", "max", "min", "capacity"];

/// True when every field set in `desired` has the same value in `live`. Fields the server
/// adds (defaults, status, managed fields) are ignored; lists must match element by element;
/// quantities are compared by value.
pub fn is_subset(desired: &Value, live: &Value) -> bool {
    subset(desired, live, false)
}

/// `quantities`: `desired` is a value of a quantity map.
fn subset(desired: &Value, live: &Value, quantities: bool) -> bool {
    match (desired, live) {
        (Value::Null, _) => true,
        // A string directly in a quantity map is a quantity; a nested map is one if its key says so.
        (Value::Object(d), Value::Object(l)) => d.iter().all(|(k, dv)| {
            let child = if dv.is_string() { quantities } else { QUANTITY_MAPS.contains(&k.as_str()) };
            l.get(k).map_or(is_empty(dv), |lv| subset(dv, lv, child))
        }),
        (Value::Array(d), Value::Array(l)) => {
            d.len() == l.len() && d.iter().zip(l).all(|(dv, lv)| subset(dv, lv, false))
        }
        (d, Value::Null) => is_empty(d),
        (Value::String(d), Value::String(l)) if quantities => crate::quantity::same(d, l),
        (d, l) => d == l,
    }
}

/// Null, `{}` and `[]`: values the API server drops, so their absence is no drift.
fn is_empty(value: &Value) -> bool {
    match value {
        Value::Null => true,
        Value::Object(o) => o.is_empty(),
        Value::Array(a) => a.is_empty(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::{field_digest, is_subset};
    use serde_json::json;

    #[test]
    fn the_field_digest_changes_with_the_fields_not_their_values() {
        let limits = json!({"spec": {"resources": {"limits": {"cpu": "1", "memory": "1Gi"}}, "env": [{"name": "A"}]}});
        let other_values =
            json!({"spec": {"resources": {"limits": {"cpu": "2", "memory": "2Gi"}}, "env": [{"name": "B"}]}});
        let fewer = json!({"spec": {"resources": {"limits": {"cpu": "1"}}, "env": [{"name": "A"}]}});
        assert_eq!(field_digest(&limits), field_digest(&other_values));
        assert_ne!(field_digest(&limits), field_digest(&fewer));
        assert_eq!(field_digest(&json!({"a": {"b": null, "c": {}}, "d": 1})), field_digest(&json!({"d": 2})));
        assert_eq!(field_digest(&limits).len(), 16);
    }

    #[test]
    fn server_defaults_do_not_count_as_drift() {
        let desired = json!({"metadata": {"name": "a", "labels": {"x": "1"}}, "spec": {"hard": {"pods": "20"}}});
        let live = json!({
            "metadata": {"name": "a", "uid": "u", "labels": {"x": "1", "y": "2"}},
            "spec": {"hard": {"pods": "20"}, "scopes": null},
            "status": {"used": {"pods": "0"}}
        });
        assert!(is_subset(&desired, &live));
    }

    #[test]
    fn quantities_in_canonical_form_are_no_drift() {
        let desired = json!({"spec": {"hard": {"memory": "1024Mi", "cpu": "0.5"}}});
        let live = json!({"spec": {"hard": {"memory": "1Gi", "cpu": "500m"}}});
        assert!(is_subset(&desired, &live));
        assert!(!is_subset(&desired, &json!({"spec": {"hard": {"memory": "2Gi", "cpu": "500m"}}})));
        assert!(!is_subset(&json!({"image": "app:1.10"}), &json!({"image": "app:1.1"})), "only quantity maps");
    }

    #[test]
    fn a_hand_edit_is_drift() {
        let desired = json!({"spec": {"hard": {"pods": "20"}}});
        let live = json!({"spec": {"hard": {"pods": "200"}}});
        assert!(!is_subset(&desired, &live));
    }

    #[test]
    fn a_removed_list_element_is_drift() {
        let desired = json!({"subjects": [{"name": "a"}, {"name": "b"}]});
        let live = json!({"subjects": [{"name": "a"}]});
        assert!(!is_subset(&desired, &live));
        assert!(is_subset(&json!({"items": []}), &json!({})));
    }
}
