//! What every controller shares, so a controller is its pipeline and nothing else: the
//! measured, traced reconcile wrapper (an object that no longer deserialises becomes an
//! error with its own category), `error_policy` with exponential backoff per object, and the
//! status patch that counts its write and records an event per flipped condition.

use crate::context::Context;
use crate::metrics::Categorized;
use bizosaas_crds::common::Condition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams};
use kube::core::DeserializeGuard;
use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::collections::HashMap;
use std::fmt::Debug;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tracing::{Instrument, warn};

/// Reconciles one controller runs at once: enough to keep the API server busy, few enough
/// that a burst of objects (a restart, a mass import) cannot exhaust PostgreSQL connections or
/// the client's rate limit.
pub const CONCURRENCY: u16 = 32;

/// The runtime configuration every controller uses: bounded concurrency.
pub fn controller_config() -> kube::runtime::controller::Config {
    kube::runtime::controller::Config::default().concurrency(CONCURRENCY)
}

/// First retry after a failed reconcile; each further failure doubles it.
const FIRST_RETRY: Duration = Duration::from_secs(1);
/// Longest wait between retries of an object that keeps failing.
const MAX_RETRY: Duration = Duration::from_secs(300);
/// Longest wait between retries while the API server refuses the operator (403). In a
/// tenant namespace that means the RoleBinding the Tenant controller just wrote has not
/// reached the authorizer yet, which takes seconds: a new tenant's first crew or
/// Integration must not wait minutes for it.
const MAX_FORBIDDEN_RETRY: Duration = Duration::from_secs(8);

/// The error of a controller: categorised for metrics, and able to say that the object
/// could not be read (it no longer matches the schema this operator knows).
pub trait ReconcileError: Categorized + std::fmt::Display {
    fn invalid_object(message: String) -> Self;

    /// The Kubernetes API error behind this failure, if it is one.
    fn api_error(&self) -> Option<&kube::Error>;

    /// True when the API server refused the operator's request as forbidden.
    fn is_forbidden(&self) -> bool {
        matches!(self.api_error(), Some(kube::Error::Api(status)) if status.code == 403)
    }
}

/// The error of a controller whose every failure is an API call or an unreadable object;
/// controllers with more kinds of failure (the Tenant's database and Vault) have their own.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API request failed: {0}")]
    Kube(#[from] kube::Error),
    #[error("the object could not be read: {0}")]
    InvalidObject(String),
}

impl Categorized for Error {
    fn category(&self) -> &'static str {
        match self {
            Error::Kube(_) => "kubernetes",
            Error::InvalidObject(_) => "invalid_object",
        }
    }
}

impl ReconcileError for Error {
    fn invalid_object(message: String) -> Self {
        Error::InvalidObject(message)
    }

    fn api_error(&self) -> Option<&kube::Error> {
        match self {
            Error::Kube(e) => Some(e),
            Error::InvalidObject(_) => None,
        }
    }
}

/// One controller's share of the scaffold: its name, the shared context and the failure
/// count of each object it is backing off.
pub struct Scaffold {
    pub controller: &'static str,
    pub ctx: Arc<Context>,
    /// Consecutive failures by object UID: an object deleted while failing and created again
    /// under its name starts afresh.
    failures: Mutex<HashMap<String, u32>>,
    /// The generation of each unreadable object whose condition has been written, so that
    /// retries write it once.
    unreadable: Mutex<HashMap<String, Option<i64>>>,
}

impl Scaffold {
    pub fn new(controller: &'static str, ctx: Arc<Context>) -> Self {
        Self { controller, ctx, failures: Mutex::default(), unreadable: Mutex::default() }
    }

    /// Runs one reconcile of `guard` inside a span named after the object, measuring its
    /// duration and outcome. Success clears the object's backoff.
    pub async fn reconcile<'a, K, E, F, Fut>(&self, guard: &'a DeserializeGuard<K>, work: F) -> Result<Action, E>
    where
        K: Resource<DynamicType = ()>,
        E: ReconcileError,
        F: FnOnce(&'a K) -> Fut,
        Fut: Future<Output = Result<Action, E>>,
    {
        let key = object_key(guard);
        let backoff_key = backoff_key(guard);
        // A trace per reconcile (OpenTelemetry, when the operator exports traces).
        let (namespace, name) = match &guard.0 {
            Ok(object) => (object.meta().namespace.clone(), object.meta().name.clone()),
            Err(invalid) => (invalid.metadata.namespace.clone(), invalid.metadata.name.clone()),
        };
        let span = tracing::info_span!(
            "reconcile",
            controller = self.controller,
            object = %key,
            otel.name = %format!("reconcile {}", self.controller),
            bizosaas.controller = self.controller,
            k8s.object.kind = %K::kind(&()),
            k8s.namespace.name = namespace.as_deref(),
            k8s.object.name = name.as_deref(),
            error.type = tracing::field::Empty,
            otel.status_code = tracing::field::Empty,
        );
        let work = async {
            match &guard.0 {
                Ok(object) => work(object).await,
                Err(invalid) => {
                    self.report_unreadable::<K>(&invalid.metadata, &invalid.error).await;
                    Err(E::invalid_object(invalid.to_string()))
                }
            }
        };
        let result = self.ctx.metrics.measure(self.controller, work).instrument(span.clone()).await;
        if let Err(e) = &result {
            span.record("error.type", e.category());
            span.record("otel.status_code", "ERROR");
        }
        if result.is_ok() {
            self.failures.lock().expect("backoff lock").remove(&backoff_key);
        }
        result
    }

    /// Says on an object that this operator cannot read it (`Ready=False` and `Stalled=True`,
    /// reason `InvalidObject`): only a change of the object or an operator that knows its
    /// schema helps, and GitOps tools should show that at once. Written once per generation,
    /// through an untyped client since the typed one cannot read the response either.
    async fn report_unreadable<K: Resource<DynamicType = ()>>(&self, meta: &ObjectMeta, error: &str) {
        let key =
            format!("{}/{}", meta.namespace.as_deref().unwrap_or_default(), meta.name.as_deref().unwrap_or_default());
        if self.unreadable.lock().expect("unreadable lock").get(&key) == Some(&meta.generation) {
            return;
        }
        let message = format!("This operator cannot read the object: {error}");
        let now = k8s_openapi::jiff::Timestamp::now().to_string();
        let condition = |type_: &str, status: &str| {
            serde_json::json!({"type": type_, "status": status, "reason": "InvalidObject", "message": message,
                               "lastTransitionTime": now, "observedGeneration": meta.generation})
        };
        let patch = serde_json::json!({"status": {"conditions": [
            condition(bizosaas_crds::common::READY, "False"),
            condition(crate::conditions::STALLED, "True"),
        ]}});
        let resource = ApiResource::erase::<K>(&());
        let api: Api<DynamicObject> = match &meta.namespace {
            Some(ns) => Api::namespaced_with(self.ctx.client.clone(), ns, &resource),
            None => Api::all_with(self.ctx.client.clone(), &resource),
        };
        let name = meta.name.as_deref().unwrap_or_default();
        match api.patch_status(name, &PatchParams::default(), &Patch::Merge(&patch)).await {
            Ok(_) => {
                self.ctx.metrics.write(self.controller, &K::kind(&()), "status");
                self.unreadable.lock().expect("unreadable lock").insert(key, meta.generation);
            }
            Err(e) => {
                warn!(controller = self.controller, object = %key, error = %e, "cannot report an unreadable object")
            }
        }
    }

    /// Requeues a failed object after a wait that doubles with each consecutive failure, so
    /// an object that cannot succeed costs little while a passing glitch is retried at once.
    pub fn error_policy<K: Resource<DynamicType = ()>, E: ReconcileError>(
        &self,
        guard: &DeserializeGuard<K>,
        error: &E,
    ) -> Action {
        let key = object_key(guard);
        let failures = {
            let mut all = self.failures.lock().expect("backoff lock");
            let count = all.entry(backoff_key(guard)).or_default();
            *count = count.saturating_add(1);
            *count
        };
        let retry = retry_after(failures, error.is_forbidden());
        self.ctx.metrics.retry(self.controller);
        warn!(
            controller = self.controller,
            object = %key,
            category = error.category(),
            failures,
            retry_seconds = retry.as_secs(),
            error = %error,
            "reconcile failed"
        );
        Action::requeue(retry)
    }

    /// Merge-patches `status` onto `object`, counts the write and records an event for each
    /// condition that flipped from `previous` to `next`.
    pub async fn patch_status<K, S>(
        &self,
        api: &Api<K>,
        object: &K,
        status: &S,
        previous: &[Condition],
        next: &[Condition],
    ) -> Result<(), kube::Error>
    where
        K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug,
        S: Serialize,
    {
        let patch = serde_json::json!({ "status": status });
        api.patch_status(&object.name_any(), &PatchParams::default(), &Patch::Merge(&patch)).await?;
        self.ctx.metrics.write(self.controller, &K::kind(&()), "status");
        self.ctx.record_transitions(&object.object_ref(&()), previous, next).await;
        Ok(())
    }
}

/// `namespace/name`, or `name` for a cluster-scoped object.
fn object_key<K: Resource>(object: &K) -> String {
    match object.meta().namespace.as_deref() {
        Some(ns) => format!("{ns}/{}", object.meta().name.as_deref().unwrap_or_default()),
        None => object.meta().name.clone().unwrap_or_default(),
    }
}

/// The object's UID, or its key for an object the API server has not given one.
fn backoff_key<K: Resource>(object: &K) -> String {
    object.meta().uid.clone().unwrap_or_else(|| object_key(object))
}

/// The wait before the retry that follows `failures` consecutive failures, the last one
/// `forbidden` or not.
pub fn retry_after(failures: u32, forbidden: bool) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    let ceiling = if forbidden { MAX_FORBIDDEN_RETRY } else { MAX_RETRY };
    FIRST_RETRY.saturating_mul(1 << doublings).min(ceiling)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_back_off_exponentially_up_to_a_ceiling() {
        let waits: Vec<u64> = (1..=12).map(|n| retry_after(n, false).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300, 300]);
        assert_eq!(retry_after(u32::MAX, false), MAX_RETRY);
        assert_eq!(retry_after(0, false), FIRST_RETRY);
    }

    #[test]
    fn a_forbidden_request_is_retried_within_seconds() {
        let waits: Vec<u64> = (1..=6).map(|n| retry_after(n, true).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 8, 8]);
        let forbidden = kube::Error::Api(kube::core::Status::failure("forbidden", "Forbidden").with_code(403).boxed());
        assert!(Error::Kube(forbidden).is_forbidden());
        let missing = kube::Error::Api(kube::core::Status::failure("not found", "NotFound").with_code(404).boxed());
        assert!(!Error::Kube(missing).is_forbidden());
        assert!(!Error::InvalidObject("x".into()).is_forbidden());
    }

    #[test]
    fn objects_are_keyed_by_namespace_and_name() {
        let mut cm = k8s_openapi::api::core::v1::ConfigMap::default();
        cm.metadata.name = Some("a".into());
        assert_eq!(object_key(&cm), "a");
        cm.metadata.namespace = Some("ns".into());
        assert_eq!(object_key(&cm), "ns/a");
    }
}
