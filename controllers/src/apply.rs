//! Writing desired objects with server-side apply, and only when they differ from the live
//! object: a converged resync sends no writes, while a child deleted or edited by hand is
//! restored on the next reconcile, and a field the desired object no longer has is removed.

use crate::FIELD_MANAGER;
use crate::metrics::Metrics;
use crate::seen::{ChildKey, LiveVersions, Seen, desired_digest};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{FieldsV1, ManagedFieldsEntry};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
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
        // The watch may bring the write's own event before its answer: held meanwhile.
        let _in_flight = self.known.map(|known| known.seen.writing(&ChildKey::of(desired)));
        // Known not to exist yet: a create costs the API server much less than an apply. One
        // there after all (an earlier attempt got this far) is applied below.
        if !self.compare && self.create_digested(api, desired, value).await? {
            return Ok(true);
        }
        let name = desired.name_any();
        if let Some(live) = live {
            self.adopt_created(api, &name, live).await?;
        }
        let applied = api.patch(&name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(desired)).await?;
        self.metrics.write(self.controller, &K::kind(&()), "apply");
        remember(applied.meta().resource_version.clone());
        Ok(true)
    }

    /// Creates `desired`, which carries its field digest; false when an object of its name
    /// exists already, which is left as it is.
    pub async fn create<K>(&self, api: &Api<K>, desired: &K) -> Result<bool, kube::Error>
    where
        K: Resource<DynamicType = ()> + Serialize + DeserializeOwned + Clone + Debug,
    {
        let desired = with_field_digest(desired);
        let value = to_value(&desired);
        let _in_flight = self.known.map(|known| known.seen.writing(&ChildKey::of(&desired)));
        self.create_digested(api, &desired, &value).await
    }

    /// [`Applier::create`] for a desired object that already carries its field digest.
    async fn create_digested<K>(&self, api: &Api<K>, desired: &K, value: &Value) -> Result<bool, kube::Error>
    where
        K: Resource<DynamicType = ()> + Serialize + DeserializeOwned + Clone + Debug,
    {
        let params = PostParams { field_manager: Some(FIELD_MANAGER.into()), ..Default::default() };
        match api.create(&params, desired).await {
            Ok(created) => {
                self.metrics.write(self.controller, &K::kind(&()), "create");
                if let Some(known) = self.known {
                    let version = created.meta().resource_version.as_deref();
                    known.seen.record(&ChildKey::of(desired), version, desired_digest(value));
                }
                Ok(true)
            }
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Before the first apply to an object this operator created: the fields a create sets
    /// belong to the manager's `Update` entry, and server-side apply never removes fields
    /// another entry owns. That entry becomes part of the manager's `Apply` entry, so the
    /// apply that follows removes whatever the desired object no longer sets. A `live` copy
    /// without managed fields (a watch's, which drops them) is read again first.
    async fn adopt_created<K>(&self, api: &Api<K>, name: &str, live: &K) -> Result<(), kube::Error>
    where
        K: Resource<DynamicType = ()> + DeserializeOwned + Clone + Debug,
    {
        let read;
        let live = match live.meta().managed_fields {
            Some(_) => live,
            None => match api.get_opt(name).await? {
                Some(object) => {
                    self.metrics.child_read(self.controller, &K::kind(&()));
                    read = object;
                    &read
                }
                None => return Ok(()),
            },
        };
        let Some(adopted) = adopted_fields(live.meta().managed_fields.as_deref().unwrap_or_default()) else {
            return Ok(());
        };
        // Conditional on the version read, so no other manager's entry written meanwhile is lost.
        let patch = serde_json::json!({"metadata": {
            "resourceVersion": live.meta().resource_version,
            "managedFields": adopted,
        }});
        api.patch(name, &PatchParams::default(), &Patch::Merge(&patch)).await?;
        self.metrics.write(self.controller, &K::kind(&()), "adopt");
        Ok(())
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

/// `entries` with this operator's `Update` entry (from a create) merged into its `Apply`
/// entry, or turned into one; `None` when there is no such entry.
pub fn adopted_fields(entries: &[ManagedFieldsEntry]) -> Option<Vec<ManagedFieldsEntry>> {
    let ours = |e: &ManagedFieldsEntry, operation: &str| {
        e.manager.as_deref() == Some(FIELD_MANAGER)
            && e.operation.as_deref() == Some(operation)
            && e.subresource.as_deref().unwrap_or_default().is_empty()
    };
    let created = entries.iter().position(|e| ours(e, "Update"))?;
    let mut entries = entries.to_vec();
    let created = entries.remove(created);
    match entries.iter_mut().find(|e| ours(e, "Apply") && e.api_version == created.api_version) {
        Some(applied) => {
            let mut fields = applied.fields_v1.take().map_or(Value::Null, |f| f.0);
            union(&mut fields, created.fields_v1.map_or(Value::Null, |f| f.0));
            applied.fields_v1 = Some(FieldsV1(fields));
        }
        None => entries.push(ManagedFieldsEntry { operation: Some("Apply".into()), ..created }),
    }
    Some(entries)
}

/// Adds every field of the field set `more` to `into` (both in the `FieldsV1` form: nested
/// objects whose keys name fields).
fn union(into: &mut Value, more: Value) {
    match (into, more) {
        (Value::Object(into), Value::Object(more)) => {
            for (key, value) in more {
                union(into.entry(key).or_insert(Value::Object(Default::default())), value);
            }
        }
        (into @ Value::Null, more) => *into = more,
        _ => {}
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
    use super::{FIELD_MANAGER, adopted_fields, field_digest, is_subset};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{FieldsV1, ManagedFieldsEntry};
    use serde_json::json;

    fn entry(manager: &str, operation: &str, fields: serde_json::Value) -> ManagedFieldsEntry {
        ManagedFieldsEntry {
            manager: Some(manager.into()),
            operation: Some(operation.into()),
            api_version: Some("v1".into()),
            fields_type: Some("FieldsV1".into()),
            fields_v1: Some(FieldsV1(fields)),
            ..Default::default()
        }
    }

    #[test]
    fn a_created_object_is_adopted_into_the_apply_entry() {
        let quota = entry("kube-controller-manager", "Update", json!({"f:status": {"f:used": {}}}));
        let created = entry(FIELD_MANAGER, "Update", json!({"f:metadata": {"f:labels": {"f:a": {}, "f:b": {}}}}));
        assert_eq!(adopted_fields(std::slice::from_ref(&quota)), None, "nothing of ours to adopt");
        let adopted = adopted_fields(&[quota.clone(), created.clone()]).unwrap();
        assert_eq!(adopted, [quota.clone(), ManagedFieldsEntry { operation: Some("Apply".into()), ..created.clone() }]);

        let applied =
            entry(FIELD_MANAGER, "Apply", json!({"f:metadata": {"f:labels": {"f:a": {}}}, "f:data": {"f:x": {}}}));
        let adopted = adopted_fields(&[created, quota.clone(), applied]).unwrap();
        let fields = json!({"f:metadata": {"f:labels": {"f:a": {}, "f:b": {}}}, "f:data": {"f:x": {}}});
        assert_eq!(adopted, [quota, entry(FIELD_MANAGER, "Apply", fields)], "the two entries become one");
    }

    #[test]
    fn a_status_entry_of_ours_is_left_alone() {
        let status = ManagedFieldsEntry {
            subresource: Some("status".into()),
            ..entry(FIELD_MANAGER, "Update", json!({"f:status": {}}))
        };
        assert_eq!(adopted_fields(&[status]), None);
    }

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
