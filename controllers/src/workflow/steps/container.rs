//! `container` steps: a Job in the tenant namespace named after the attempt, under the
//! restricted Pod Security Standard, counted against the tenant quota. Its output is the
//! container's termination message, or the tail of its stdout when it wrote none.

use crate::FIELD_MANAGER;
use crate::workflow::plan::Outcome;
use bizosaas_crds::workflow::ContainerJob;
use bizosaas_crds::{LABEL_MANAGED_BY, MANAGED_BY, WorkflowRun};
use k8s_openapi::api::batch::v1::{Job, JobSpec};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, EnvVar, Pod, PodSecurityContext, PodSpec, PodTemplateSpec, SeccompProfile, SecurityContext,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, DeleteParams, ListParams, LogParams, PostParams};
use kube::{Resource, ResourceExt};
use std::collections::BTreeMap;

/// Label naming the run a Job belongs to.
pub const LABEL_RUN: &str = "bizosaas.io/workflow-run";
/// Label naming the step a Job runs.
pub const LABEL_STEP: &str = "bizosaas.io/workflow-step";
/// Bytes of stdout kept as the output of a container that wrote no termination message.
const MAX_LOG_BYTES: i64 = 64 * 1024;
/// Lines of the log asked for: more than a step's output needs, few enough to read quickly.
const TAIL_LINES: i64 = 2000;
/// The unprivileged user every step runs as, whatever user its image names.
const RUN_AS: i64 = 65532;

/// The Job of one attempt: no retries of its own (the workflow retries), the step's timeout as
/// its deadline, no API token, nothing privileged.
pub fn job(run: &WorkflowRun, step: &str, name: &str, spec: &ContainerJob, timeout_seconds: Option<i64>) -> Job {
    let labels = BTreeMap::from([
        (LABEL_MANAGED_BY.to_string(), MANAGED_BY.to_string()),
        ("bizosaas.io/component".to_string(), "workflow".to_string()),
        (LABEL_RUN.to_string(), run.name_any()),
        (LABEL_STEP.to_string(), step.to_string()),
    ]);
    let container = Container {
        name: "step".into(),
        image: Some(spec.image.clone()),
        command: (!spec.command.is_empty()).then(|| spec.command.clone()),
        args: (!spec.args.is_empty()).then(|| spec.args.clone()),
        env: (!spec.env.is_empty()).then(|| {
            spec.env
                .iter()
                .map(|e| EnvVar { name: e.name.clone(), value: Some(e.value.clone()), ..Default::default() })
                .collect()
        }),
        termination_message_policy: Some("File".into()),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            capabilities: Some(Capabilities { drop: Some(vec!["ALL".into()]), ..Default::default() }),
            run_as_non_root: Some(true),
            ..Default::default()
        }),
        ..Default::default()
    };
    Job {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            namespace: run.namespace(),
            labels: Some(labels.clone()),
            owner_references: run.controller_owner_ref(&()).map(|o| vec![o]),
            ..Default::default()
        },
        spec: Some(JobSpec {
            backoff_limit: Some(0),
            active_deadline_seconds: timeout_seconds,
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta { labels: Some(labels), ..Default::default() }),
                spec: Some(PodSpec {
                    restart_policy: Some("Never".into()),
                    automount_service_account_token: Some(false),
                    enable_service_links: Some(false),
                    security_context: Some(PodSecurityContext {
                        run_as_non_root: Some(true),
                        run_as_user: Some(RUN_AS),
                        run_as_group: Some(RUN_AS),
                        seccomp_profile: Some(SeccompProfile { type_: "RuntimeDefault".into(), ..Default::default() }),
                        ..Default::default()
                    }),
                    containers: vec![container],
                    ..Default::default()
                }),
            },
            ..Default::default()
        }),
        status: None,
    }
}

/// What the Job of an attempt shows.
pub enum Observed {
    Missing,
    Running,
    Finished(Outcome),
}

/// Creates the Job; one that already exists (a create repeated after a crash) is kept.
pub async fn create(api: &Api<Job>, job: &Job) -> Result<bool, kube::Error> {
    let params = PostParams { field_manager: Some(FIELD_MANAGER.into()), ..Default::default() };
    match api.create(&params, job).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
        Err(e) => Err(e),
    }
}

/// Reads the attempt's Job and, once it finished, its output.
pub async fn observe(jobs: &Api<Job>, pods: &Api<Pod>, name: &str) -> Result<Observed, kube::Error> {
    let Some(job) = jobs.get_opt(name).await? else { return Ok(Observed::Missing) };
    let status = job.status.unwrap_or_default();
    let finished = |type_: &str| status.conditions.iter().flatten().find(|c| c.type_ == type_ && c.status == "True");
    if finished("Complete").is_some() {
        return Ok(Observed::Finished(Outcome::Succeeded { output: output(pods, name).await?, tokens: None }));
    }
    if let Some(failed) = finished("Failed") {
        let why = failed.message.clone().unwrap_or_else(|| failed.reason.clone().unwrap_or_default());
        let detail = termination(pods, name).await?.map(|(code, message)| {
            let start: String = message.chars().take(200).collect();
            format!("; exit code {code}: {start}")
        });
        return Ok(Observed::Finished(Outcome::Failed {
            message: format!("Job {name} failed: {why}{}", detail.unwrap_or_default()),
        }));
    }
    Ok(Observed::Running)
}

/// Stops an attempt's Job and its pod.
pub async fn stop(api: &Api<Job>, name: &str) -> Result<(), kube::Error> {
    match api.delete(name, &DeleteParams::background()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(e),
    }
}

/// The termination message, or the tail of stdout when the container wrote none.
async fn output(pods: &Api<Pod>, job: &str) -> Result<String, kube::Error> {
    if let Some((_, message)) = termination(pods, job).await?
        && !message.is_empty()
    {
        return Ok(message);
    }
    let Some(pod) = pod_of(pods, job).await? else { return Ok(String::new()) };
    // The API server cuts `limitBytes` from the start of what it sends, so ask for the last
    // lines (bounded in bytes too, against one endless line) and keep their end here.
    let params =
        LogParams { tail_lines: Some(TAIL_LINES), limit_bytes: Some(16 * MAX_LOG_BYTES), ..Default::default() };
    Ok(tail(&pods.logs(&pod.name_any(), &params).await?, MAX_LOG_BYTES as usize).to_string())
}

/// The last `max` bytes of `text`, starting on a character boundary.
fn tail(text: &str, max: usize) -> &str {
    let mut start = text.len().saturating_sub(max);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    &text[start..]
}

/// Exit code and termination message of the Job's container.
async fn termination(pods: &Api<Pod>, job: &str) -> Result<Option<(i32, String)>, kube::Error> {
    let Some(pod) = pod_of(pods, job).await? else { return Ok(None) };
    let statuses = pod.status.and_then(|s| s.container_statuses).unwrap_or_default();
    Ok(statuses.into_iter().find_map(|c| c.state?.terminated).map(|t| (t.exit_code, t.message.unwrap_or_default())))
}

async fn pod_of(pods: &Api<Pod>, job: &str) -> Result<Option<Pod>, kube::Error> {
    let selector = ListParams::default().labels(&format!("batch.kubernetes.io/job-name={job}"));
    Ok(pods.list(&selector).await?.items.into_iter().next())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_output_is_the_end_of_the_log() {
        assert_eq!(tail("first\nlast\n", 5), "last\n");
        assert_eq!(tail("short", 64), "short");
        // Never in the middle of a character.
        assert_eq!(tail("aé", 1), "");
        assert_eq!(tail("aéb", 2), "b");
    }

    #[test]
    fn a_step_job_is_restricted_owned_and_retried_by_the_workflow() {
        let mut run = WorkflowRun::new(
            "nightly-1",
            bizosaas_crds::WorkflowRunSpec { workflow: "nightly".into(), parameters: vec![], cancel: false },
        );
        run.metadata.namespace = Some("tenant-acme".into());
        run.metadata.uid = Some("uid-1".into());
        let spec: ContainerJob =
            serde_json::from_value(serde_json::json!({"image": "busybox", "args": ["echo", "hi"]})).unwrap();
        let job = job(&run, "report", "nightly-1-report-1", &spec, Some(60));
        let js = job.spec.as_ref().unwrap();
        assert_eq!((js.backoff_limit, js.active_deadline_seconds), (Some(0), Some(60)));
        assert_eq!(job.metadata.owner_references.as_ref().unwrap()[0].uid, "uid-1");
        let pod = js.template.spec.as_ref().unwrap();
        assert_eq!(pod.automount_service_account_token, Some(false));
        assert_eq!(pod.security_context.as_ref().unwrap().run_as_non_root, Some(true));
        let sc = pod.containers[0].security_context.as_ref().unwrap();
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        assert_eq!(sc.capabilities.as_ref().unwrap().drop.as_deref(), Some(&["ALL".to_string()][..]));
        assert_eq!(job.labels()[LABEL_RUN], "nightly-1");
    }
}
