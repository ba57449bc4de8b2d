//! Workflow runs through the gateway: a WorkflowRun created and read *as the caller*, through
//! impersonation, so the API server authorizes it against the caller's RBAC, counts it in the
//! tenant's quota and writes the caller into its own audit log and the object's managed
//! fields. The gateway adds only what the API server cannot know: the annotation naming the
//! caller, and a name derived from the caller's `Idempotency-Key`, so a retried start finds
//! the run it created instead of starting another.

use crate::authn::Identity;
use crate::error::ApiError;
use axum::http::StatusCode;
use bizosaas_crds::WorkflowRun;
use bizosaas_crds::workflow::WorkflowRunSpec;
use kube::Resource;
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// The annotation that names who started a run through the gateway.
pub const REQUESTED_BY: &str = "bizosaas.io/requested-by";
/// Longest run name: the run's Jobs are `<run>-<step>-<attempt>` and must stay label-sized.
const MAX_RUN_NAME: usize = 40;

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StartRequest {
    #[serde(default)]
    pub parameters: Vec<bizosaas_crds::common::NameValue>,
}

/// The run's name for an `Idempotency-Key`: `<workflow>-<10 hex of the caller and key>`, or
/// none (the API server generates one) without a key.
pub fn run_name(workflow: &str, who: &Identity, key: Option<&str>) -> Option<String> {
    let key = key?;
    let digest: String = Sha256::digest(format!("{}\n{key}", who.username).as_bytes())
        .iter()
        .take(5)
        .map(|b| format!("{b:02x}"))
        .collect();
    let stem = &workflow[..workflow.len().min(MAX_RUN_NAME - digest.len() - 1)];
    Some(format!("{}-{digest}", stem.trim_end_matches('-')))
}

/// The WorkflowRun to create.
pub fn build_run(
    namespace: &str,
    workflow: &str,
    who: &Identity,
    name: Option<String>,
    start: StartRequest,
) -> WorkflowRun {
    let mut run = WorkflowRun::new(
        "",
        WorkflowRunSpec { workflow: workflow.into(), parameters: start.parameters, cancel: false },
    );
    let meta = run.meta_mut();
    meta.namespace = Some(namespace.into());
    match name {
        Some(name) => meta.name = Some(name),
        None => {
            meta.name = None;
            let stem = &workflow[..workflow.len().min(MAX_RUN_NAME - 6)];
            meta.generate_name = Some(format!("{}-", stem.trim_end_matches('-')));
        }
    }
    meta.annotations = Some([(REQUESTED_BY.to_string(), who.username.clone())].into());
    run
}

/// A run as the gateway shows it: its name, workflow, phase, steps and who started it.
pub fn view(run: &WorkflowRun) -> Value {
    let meta = run.meta();
    json!({
        "name": meta.name,
        "namespace": meta.namespace,
        "workflow": run.spec.workflow,
        "requestedBy": meta.annotations.as_ref().and_then(|a| a.get(REQUESTED_BY)),
        "createdAt": meta.creation_timestamp.as_ref().map(|t| t.0.to_string()),
        "status": run.status,
    })
}

/// An API server refusal as the gateway's error, keeping its reason (names, not secrets).
pub fn api_error(e: kube::Error) -> ApiError {
    match e {
        kube::Error::Api(status) => {
            let (code, category) = match status.code {
                401 | 403 => (StatusCode::FORBIDDEN, "forbidden"),
                404 => (StatusCode::NOT_FOUND, "not_found"),
                409 => (StatusCode::CONFLICT, "conflict"),
                422 | 400 => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_request"),
                429 => (StatusCode::TOO_MANY_REQUESTS, "rate_limited"),
                _ => (StatusCode::BAD_GATEWAY, "upstream_unavailable"),
            };
            ApiError::new(code, category, status.message)
        }
        other => ApiError::upstream(format!("the API server could not be reached: {}", crate::kube_reason(&other))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn who(name: &str) -> Identity {
        Identity { username: name.into(), groups: vec![], uid: None }
    }

    #[test]
    fn a_key_names_the_run_per_caller() {
        let a = run_name("weekly-blog", &who("oidc:alice"), Some("k1")).unwrap();
        assert!(a.starts_with("weekly-blog-") && a.len() == "weekly-blog-".len() + 10, "{a}");
        assert_eq!(Some(a.clone()), run_name("weekly-blog", &who("oidc:alice"), Some("k1")));
        assert_ne!(Some(a), run_name("weekly-blog", &who("oidc:bob"), Some("k1")));
        assert_eq!(run_name("weekly-blog", &who("oidc:alice"), None), None);
        let long = run_name(&"w".repeat(200), &who("oidc:alice"), Some("k")).unwrap();
        assert!(long.len() <= MAX_RUN_NAME);
    }

    #[test]
    fn the_run_records_its_caller() {
        let run = build_run("tenant-acme", "weekly-blog", &who("oidc:alice"), None, StartRequest::default());
        assert_eq!(run.metadata.generate_name.as_deref(), Some("weekly-blog-"));
        assert_eq!(run.metadata.name, None);
        assert_eq!(run.metadata.annotations.unwrap()[REQUESTED_BY], "oidc:alice");
        assert_eq!(run.spec.workflow, "weekly-blog");
    }
}
