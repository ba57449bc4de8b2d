//! The Workflow controller: validates the DAG, the schedule and what the steps name, creates
//! the scheduled runs under deterministic names (so a restart, a second replica or a missed
//! tick never creates one twice), applies the concurrency policy and the history limits, and
//! reports the last and next schedule times.

use super::names;
use super::schedule::{Due, Schedule};
use super::snapshot;
use crate::conditions::{self, Observed};
use crate::context::Context;
use crate::scaffold::Scaffold;
use bizosaas_crds::common::READY;
use bizosaas_crds::workflow::{ConcurrencyPolicy, RunPhase};
use bizosaas_crds::{AgentCrew, Integration, LABEL_MANAGED_BY, MANAGED_BY, Workflow, WorkflowRun, WorkflowRunSpec};
use futures::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::core::DeserializeGuard;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};
use std::collections::BTreeSet;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

/// Controller name used in metrics, logs and events.
pub const CONTROLLER: &str = "workflow";
/// Label on the runs a schedule created, naming their Workflow.
pub const LABEL_WORKFLOW: &str = "bizosaas.io/workflow";
/// Annotation on a scheduled run: the time it was scheduled for.
pub const SCHEDULED_AT: &str = "bizosaas.io/scheduled-at";
/// Longest wait between two looks at a Workflow.
const RESYNC: Duration = Duration::from_secs(300);

/// Why a reconcile failed: an API call, or an object that no longer deserialises.
pub use crate::scaffold::Error;

/// Runs the Workflow controller until `shutdown` resolves.
pub async fn run(ctx: Arc<Context>, shutdown: impl Future<Output = ()> + Send + Sync + 'static) {
    let client = ctx.client.clone();
    let ours = watcher::Config::default().labels(&format!("{LABEL_MANAGED_BY}={MANAGED_BY}"));
    let controller =
        Controller::new(Api::<DeserializeGuard<Workflow>>::all(client.clone()), watcher::Config::default());
    let _census = crate::census::spawn(controller.store(), CONTROLLER, ctx.metrics.clone(), |_| {});
    controller
        .owns(Api::<WorkflowRun>::all(client), ours)
        .with_config(crate::scaffold::controller_config())
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, Arc::new(Scaffold::new(CONTROLLER, ctx)))
        .for_each(|_| futures::future::ready(()))
        .await;
}

async fn reconcile(guard: Arc<DeserializeGuard<Workflow>>, s: Arc<Scaffold>) -> Result<Action, Error> {
    s.reconcile(&guard, |workflow| reconcile_workflow(workflow, &s)).await
}

fn error_policy(guard: Arc<DeserializeGuard<Workflow>>, error: &Error, s: Arc<Scaffold>) -> Action {
    s.error_policy(&guard, error)
}

async fn reconcile_workflow(workflow: &Workflow, s: &Scaffold) -> Result<Action, Error> {
    if workflow.meta().deletion_timestamp.is_some() {
        // Its scheduled runs are owned by it; the garbage collector removes them.
        return Ok(Action::await_change());
    }
    let ns = workflow.namespace().unwrap_or_default();
    let name = workflow.name_any();
    let client = s.ctx.client.clone();
    let runs_api = Api::<WorkflowRun>::namespaced(client.clone(), &ns);
    let previous = workflow.status.clone().unwrap_or_default();
    let mut next = previous.clone();
    let now = Timestamp::now();

    let runs: Vec<WorkflowRun> =
        runs_api.list(&ListParams::default()).await?.items.into_iter().filter(|r| r.spec.workflow == name).collect();
    let active: Vec<&WorkflowRun> = runs.iter().filter(|r| !phase(r).is_some_and(RunPhase::is_finished)).collect();

    // Validate: the DAG and templates, what the steps name, the schedule.
    let mut observed = validate(workflow, &client).await?;
    let schedule = match workflow.spec.schedule.as_deref() {
        None => None,
        Some(text) => match Schedule::parse(text, workflow.spec.time_zone.as_deref()) {
            Ok(schedule) => Some(schedule),
            Err(e) => {
                observed.push(Observed::failed("ScheduleValid", e.reason(), e.to_string()));
                None
            }
        },
    };

    // Schedule.
    let mut requeue = RESYNC;
    if let Some(schedule) = &schedule
        && !workflow.spec.suspend
        && observed.iter().all(|o| o.status)
    {
        let since = previous
            .last_schedule_time
            .as_ref()
            .map(|t| t.0)
            .or(workflow.metadata.creation_timestamp.as_ref().map(|t| t.0))
            .unwrap_or(now);
        match schedule.due(since, now, workflow.spec.starting_deadline_seconds) {
            Due::Run(at) => {
                let created = start_scheduled(workflow, &runs_api, &active, at, s).await?;
                next.last_schedule_time = Some(Time(at));
                if let Some(run) = created {
                    next.last_run = Some(run);
                }
            }
            Due::Missed(at) => {
                tracing::info!(workflow = %name, scheduled = %at, "scheduled time missed by more than startingDeadlineSeconds");
                next.last_schedule_time = Some(Time(at));
            }
            Due::Nothing => {}
        }
        next.next_schedule_time = schedule.next_after(now).map(Time);
        if let Some(at) = &next.next_schedule_time {
            let wait = Duration::try_from(at.0.duration_since(Timestamp::now())).unwrap_or(Duration::ZERO);
            requeue = wait.clamp(Duration::from_millis(200), RESYNC);
        }
    } else {
        next.next_schedule_time = None;
    }

    // History and status.
    prune_history(workflow, &runs, &runs_api, s).await?;
    let newest = runs.iter().max_by_key(|r| r.metadata.creation_timestamp.as_ref().map(|t| t.0));
    next.last_run = next.last_run.clone().or(newest.map(|r| r.name_any()));
    next.active = {
        let mut names: Vec<String> =
            runs.iter().filter(|r| !phase(r).is_some_and(RunPhase::is_finished)).map(|r| r.name_any()).collect();
        names.sort();
        names
    };
    let ready = if workflow.spec.suspend {
        Observed::ok(READY, "Suspended", "The workflow is valid; its schedule is suspended")
    } else {
        Observed::ok(READY, "Valid", "The workflow's steps, crews, integrations and schedule are valid")
    };
    // Every way a Workflow can be invalid needs its spec or a reference to change.
    conditions::summarize(&mut observed, ready, |_| true, |_| false);
    next.observed_generation = workflow.metadata.generation;
    next.conditions = conditions::merge(&previous.conditions, &observed, workflow.metadata.generation);
    if next != previous {
        let api = Api::<Workflow>::namespaced(client, &ns);
        s.patch_status(&api, workflow, &next, &previous.conditions, &next.conditions).await?;
    }
    Ok(Action::requeue(requeue))
}

/// Conditions on what the Workflow names: a DAG that a run can snapshot, and crews and
/// Integrations that exist.
async fn validate(workflow: &Workflow, client: &kube::Client) -> Result<Vec<Observed>, Error> {
    let probe = WorkflowRun::new(
        "validation",
        WorkflowRunSpec { workflow: workflow.name_any(), parameters: vec![], cancel: false },
    );
    let dag = match snapshot::take(workflow, &probe) {
        Ok(_) => Observed::ok("StepsValid", "Valid", format!("{} steps form a valid DAG", workflow.spec.steps.len())),
        Err(e) => Observed::failed("StepsValid", e.reason(), e.to_string()),
    };
    let ns = workflow.namespace().unwrap_or_default();
    let crews: BTreeSet<&str> =
        workflow.spec.steps.iter().filter_map(|s| s.agent_task.as_ref()).map(|t| t.crew.as_str()).collect();
    let integrations: BTreeSet<&str> =
        workflow.spec.steps.iter().filter_map(|s| s.http.as_ref()).map(|h| h.integration.as_str()).collect();
    let mut missing = Vec::new();
    let crew_api = Api::<AgentCrew>::namespaced(client.clone(), &ns);
    for crew in crews {
        if crew_api.get_metadata_opt(crew).await?.is_none() {
            missing.push(format!("AgentCrew {crew}"));
        }
    }
    let integration_api = Api::<Integration>::namespaced(client.clone(), &ns);
    for integration in integrations {
        if integration_api.get_metadata_opt(integration).await?.is_none() {
            missing.push(format!("Integration {integration}"));
        }
    }
    let refs = if missing.is_empty() {
        Observed::ok("ReferencesResolved", "Resolved", "Every crew and Integration the steps name exists")
    } else {
        Observed::failed("ReferencesResolved", "ReferenceNotFound", format!("{} do not exist", missing.join(", ")))
    };
    Ok(vec![dag, refs])
}

/// Creates the run for scheduled time `at`, applying the concurrency policy. Returns its name
/// when a run exists for `at` afterwards.
async fn start_scheduled(
    workflow: &Workflow,
    api: &Api<WorkflowRun>,
    active: &[&WorkflowRun],
    at: Timestamp,
    s: &Scaffold,
) -> Result<Option<String>, Error> {
    let name = names::scheduled_run(&workflow.name_any(), at.as_second().div_euclid(60));
    if active.iter().any(|r| r.name_any() == name) {
        return Ok(Some(name));
    }
    match workflow.spec.concurrency_policy {
        ConcurrencyPolicy::Forbid if !active.is_empty() => {
            tracing::info!(workflow = %workflow.name_any(), scheduled = %at, "skipped: a run is still active (Forbid)");
            return Ok(None);
        }
        ConcurrencyPolicy::Replace => {
            for run in active.iter().filter(|r| !r.spec.cancel) {
                let patch = serde_json::json!({"spec": {"cancel": true}});
                api.patch(&run.name_any(), &PatchParams::default(), &Patch::Merge(&patch)).await?;
                s.ctx.metrics.write(CONTROLLER, "WorkflowRun", "cancel");
            }
        }
        _ => {}
    }
    let mut run =
        WorkflowRun::new(&name, WorkflowRunSpec { workflow: workflow.name_any(), parameters: vec![], cancel: false });
    run.metadata.namespace = workflow.namespace();
    run.metadata.labels = Some(
        [(LABEL_MANAGED_BY.to_string(), MANAGED_BY.to_string()), (LABEL_WORKFLOW.to_string(), workflow.name_any())]
            .into(),
    );
    run.metadata.annotations = Some([(SCHEDULED_AT.to_string(), at.to_string())].into());
    run.metadata.owner_references = workflow.controller_owner_ref(&()).map(|o| vec![o]);
    match api.create(&PostParams::default(), &run).await {
        Ok(_) => s.ctx.metrics.write(CONTROLLER, "WorkflowRun", "create"),
        Err(kube::Error::Api(e)) if e.code == 409 => {}
        Err(e) => return Err(e.into()),
    }
    Ok(Some(name))
}

/// Deletes the oldest finished scheduled runs beyond the history limits. Runs a user created
/// are theirs to keep.
async fn prune_history(
    workflow: &Workflow,
    runs: &[WorkflowRun],
    api: &Api<WorkflowRun>,
    s: &Scaffold,
) -> Result<(), Error> {
    let scheduled = |r: &&WorkflowRun| r.labels().get(LABEL_WORKFLOW) == Some(&workflow.name_any());
    let finished_at = |r: &&WorkflowRun| r.status.as_ref().and_then(|st| st.finished_at.as_ref()).map(|t| t.0);
    for (succeeded, limit) in
        [(true, workflow.spec.successful_runs_history_limit), (false, workflow.spec.failed_runs_history_limit)]
    {
        let mut finished: Vec<&WorkflowRun> = runs
            .iter()
            .filter(scheduled)
            .filter(|r| match phase(r) {
                Some(RunPhase::Succeeded) => succeeded,
                Some(p) if p.is_finished() => !succeeded,
                _ => false,
            })
            .collect();
        finished.sort_by_key(|r| std::cmp::Reverse(finished_at(r)));
        for run in finished.into_iter().skip(limit.max(0) as usize) {
            match api.delete(&run.name_any(), &DeleteParams::background()).await {
                Ok(_) => s.ctx.metrics.write(CONTROLLER, "WorkflowRun", "delete"),
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(())
}

fn phase(run: &WorkflowRun) -> Option<RunPhase> {
    run.status.as_ref().and_then(|s| s.phase)
}
