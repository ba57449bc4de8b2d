//! `Workflow` and `WorkflowRun`: durable DAGs of agent tasks, HTTP calls and container jobs.

use crate::common::{Condition, NameValue};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

const DURATION_RULE: &str = "self.matches('^([0-9]+(ms|s|m|h))+$')";

/// A DAG of steps: agent tasks on a crew, HTTP calls through an Integration, and container
/// jobs, run on a cron schedule or on demand. Each execution is a WorkflowRun.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "bizosaas.io",
    version = "v1alpha1",
    kind = "Workflow",
    namespaced,
    shortname = "wf",
    category = "bizosaas",
    status = "WorkflowStatus",
    derive = "PartialEq",
    doc = "A durable DAG of agent tasks, HTTP calls and container jobs, run on a schedule or on demand.",
    printcolumn(name = "Schedule", type_ = "string", json_path = ".spec.schedule"),
    printcolumn(name = "Suspend", type_ = "boolean", json_path = ".spec.suspend"),
    printcolumn(name = "Last Run", type_ = "string", json_path = ".status.lastRun"),
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].status"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[x_kube(validation = Rule::new("self.steps.all(s, !has(s.dependsOn) || s.dependsOn.all(d, d != s.name && self.steps.exists(t, t.name == d)))")
    .message("steps[].dependsOn may only name other steps of this workflow"))]
#[serde(rename_all = "camelCase")]
pub struct WorkflowSpec {
    /// Cron schedule in five fields (minute hour day-of-month month day-of-week) or a macro
    /// such as `@daily`. Without it the workflow runs only when a WorkflowRun names it. The
    /// controller parses it and reports a bad one in the `Ready` condition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 128))]
    pub schedule: Option<String>,

    /// IANA time zone the schedule is read in, e.g. `Europe/Berlin`; UTC when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64), regex(pattern = r"^[A-Za-z0-9_+/-]+$"))]
    pub time_zone: Option<String>,

    /// A scheduled time missed by more than this many seconds (the operator was down) is
    /// skipped instead of run late.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub starting_deadline_seconds: Option<i64>,

    /// Steps of one run that may execute at the same time.
    #[serde(default = "default_parallelism")]
    #[schemars(range(min = 1, max = 32))]
    pub parallelism: i32,

    /// What a scheduled run does while the previous one is still running.
    #[serde(default)]
    pub concurrency_policy: ConcurrencyPolicy,

    /// Stops scheduling new runs; running ones finish.
    #[serde(default)]
    pub suspend: bool,

    /// Default parameters, referenced as `{{ params.<name> }}`; a WorkflowRun may override them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub parameters: Vec<NameValue>,

    /// Retries of a failed step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetryPolicy>,

    /// Deadline of a whole run in seconds; a run still going then fails.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub active_deadline_seconds: Option<i64>,

    /// Finished successful runs to keep.
    #[serde(default = "default_successful_history")]
    #[schemars(range(min = 0, max = 100))]
    pub successful_runs_history_limit: i32,

    /// Finished failed runs to keep.
    #[serde(default = "default_failed_history")]
    #[schemars(range(min = 0, max = 100))]
    pub failed_runs_history_limit: i32,

    /// The steps of the DAG. A step starts when every step in its `dependsOn` succeeded.
    #[schemars(length(min = 1, max = 32))]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub steps: Vec<Step>,
}

fn default_parallelism() -> i32 {
    4
}

fn default_successful_history() -> i32 {
    3
}

fn default_failed_history() -> i32 {
    1
}

/// What a scheduled run does while another run is active.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, schemars::JsonSchema)]
pub enum ConcurrencyPolicy {
    /// Runs may overlap.
    #[default]
    Allow,
    /// The new run is skipped.
    Forbid,
    /// The active run is cancelled and the new one starts.
    Replace,
}

/// Retry policy of failed steps.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RetryPolicy {
    /// Retries after the first attempt.
    #[schemars(range(min = 0, max = 20))]
    pub limit: i32,
    /// Wait between attempts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff: Option<Backoff>,
}

/// Exponential backoff.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Backoff {
    /// First wait, e.g. `10s`.
    #[schemars(length(max = 32))]
    #[x_kube(validation = Rule::new(DURATION_RULE).message("backoff.duration must be a duration such as 500ms, 10s, 5m or 1h"))]
    pub duration: String,
    /// Multiplier applied to each further wait.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1.0, max = 10.0))]
    pub factor: Option<f64>,
    /// Longest wait.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    #[x_kube(validation = Rule::new(DURATION_RULE).message("backoff.maxDuration must be a duration such as 30s, 5m or 1h"))]
    pub max_duration: Option<String>,
}

/// One step of a workflow: exactly one of `agentTask`, `http` or `container`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new("[has(self.agentTask), has(self.http), has(self.container)].filter(x, x).size() == 1")
    .message("a step needs exactly one of agentTask, http or container"))]
#[serde(rename_all = "camelCase")]
pub struct Step {
    /// Name of the step, referenced as `{{ steps.<name>.output }}`.
    #[schemars(length(min = 1, max = 63), regex(pattern = r"^[a-z]([a-z0-9-]*[a-z0-9])?$"))]
    pub name: String,
    /// Steps that must succeed before this one starts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16), inner(length(min = 1, max = 63)))]
    pub depends_on: Vec<String>,
    /// Deadline of one attempt in seconds; an attempt still going then fails (and may be retried).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 86400))]
    pub timeout_seconds: Option<i64>,
    /// A task for an agent of a crew in the same namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_task: Option<AgentTask>,
    /// An HTTP request through an Integration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpCall>,
    /// A container run as a Kubernetes Job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<ContainerJob>,
}

/// A task for a crew.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AgentTask {
    /// AgentCrew in the same namespace.
    #[schemars(length(min = 1, max = 253))]
    pub crew: String,
    /// Agent of the crew; a hierarchical crew's manager chooses when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    /// What to do; may use `{{ params.<name> }}` and `{{ steps.<name>.output }}`.
    #[schemars(length(min = 1, max = 16384))]
    pub description: String,
    /// What a good answer looks like.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_output: Option<String>,
}

/// An HTTP request through an Integration, which supplies the base address and credentials.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HttpCall {
    /// Integration in the same namespace.
    #[schemars(length(min = 1, max = 253))]
    pub integration: String,
    /// HTTP method.
    #[serde(default)]
    pub method: HttpMethod,
    /// Path appended to the Integration's endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048), regex(pattern = r"^/"))]
    pub path: Option<String>,
    /// Request body; may use templates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 65536))]
    pub body: Option<String>,
    /// Extra request headers. `Authorization` and `Idempotency-Key` are set by the operator.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 32))]
    pub headers: BTreeMap<String, String>,
}

/// HTTP method.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, schemars::JsonSchema)]
pub enum HttpMethod {
    #[default]
    GET,
    POST,
    PUT,
    PATCH,
    DELETE,
}

/// A container run to completion as a Job in the tenant namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ContainerJob {
    /// Container image.
    #[schemars(length(min = 1, max = 512))]
    pub image: String,
    /// Entrypoint.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    /// Arguments; may use templates.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    /// Environment variables.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<NameValue>,
}

/// Observed state of a Workflow.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkflowStatus {
    /// Name of the newest WorkflowRun.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_run: Option<String>,
    /// When the schedule last fired.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_schedule_time: Option<Time>,
    /// When the schedule fires next.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_schedule_time: Option<Time>,
    /// Runs that have not finished.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub active: Vec<String>,
    /// The generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready` (the DAG is valid and its crews and integrations exist) and its reasons.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}

/// One execution of a Workflow.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "bizosaas.io",
    version = "v1alpha1",
    kind = "WorkflowRun",
    namespaced,
    shortname = "wfr",
    category = "bizosaas",
    status = "WorkflowRunStatus",
    derive = "PartialEq",
    doc = "One durable execution of a Workflow, with the status of every step and attempt.",
    printcolumn(name = "Workflow", type_ = "string", json_path = ".spec.workflow"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].status"),
    printcolumn(name = "Started", type_ = "date", json_path = ".status.startedAt"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct WorkflowRunSpec {
    /// The Workflow to run, in the same namespace.
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("spec.workflow is immutable; create a new run instead"))]
    pub workflow: String,
    /// Parameter values that override the Workflow's defaults.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("spec.parameters is immutable; create a new run instead"))]
    pub parameters: Vec<NameValue>,
    /// Set to true to cancel the run: its Jobs and crew runs are stopped and no step starts.
    #[serde(default)]
    #[x_kube(validation = Rule::new("self || !oldSelf").message("a cancelled run cannot be resumed: spec.cancel may only go from false to true"))]
    pub cancel: bool,
}

/// Observed state of a WorkflowRun.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkflowRunStatus {
    /// `Pending`, `Running`, `Succeeded`, `Failed` or `Cancelled`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<RunPhase>,
    /// When the run started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Time>,
    /// When the run finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<Time>,
    /// Absolute deadline of the run, from `activeDeadlineSeconds`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline: Option<Time>,
    /// The Workflow as it was when the run started: later edits don't change the run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<WorkflowSnapshot>,
    /// ConfigMap (owned by the run) holding each step's full output under the step's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outputs: Option<String>,
    /// Tokens the run's agent tasks used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_tokens: Option<i64>,
    /// The status of each step.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub steps: Vec<StepStatus>,
    /// The generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready` (True once the run succeeded) and its reasons.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}

/// What a run executes, copied from its Workflow when it started.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkflowSnapshot {
    /// `metadata.generation` of the Workflow that was copied.
    pub generation: i64,
    /// The Workflow's defaults merged with the run's parameters.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub parameters: Vec<NameValue>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetryPolicy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_deadline_seconds: Option<i64>,
    pub parallelism: i32,
    #[schemars(length(max = 32))]
    pub steps: Vec<Step>,
}

/// Phase of a run, step or attempt.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, schemars::JsonSchema)]
pub enum RunPhase {
    Pending,
    Running,
    Succeeded,
    Failed,
    Cancelled,
    /// A step that never ran because a step it depends on failed or the run ended.
    Skipped,
}

impl RunPhase {
    pub fn is_finished(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed | Self::Cancelled | Self::Skipped)
    }
}

/// Status of one step.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StepStatus {
    /// Step name.
    pub name: String,
    /// Step phase.
    pub phase: RunPhase,
    /// The latest attempts in order (older ones are dropped beyond three); an attempt is
    /// recorded before it starts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attempts: Vec<Attempt>,
    /// When the next attempt may start (absolute, so a restart keeps the timer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_attempt_at: Option<Time>,
    /// The start of the step's output (the whole output is in the run's outputs ConfigMap).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
    /// Size of the whole output in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_bytes: Option<i64>,
    /// Why the step is in its phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// One attempt of a step.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Attempt {
    /// 1-based attempt number.
    pub number: i32,
    /// Deterministic name of what the attempt created (Job, agent run).
    pub name: String,
    /// Key that makes a repeated start of the same attempt a no-op.
    pub idempotency_key: String,
    /// Attempt phase.
    pub phase: RunPhase,
    /// When it started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Time>,
    /// When it finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<Time>,
    /// What it runs as: the Job's name, or the crew runtime's run id once it answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
    /// Tokens an agent task used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens: Option<i64>,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}
