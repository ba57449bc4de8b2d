//! The WorkflowRun controller. One reconcile: take the snapshot (first pass), observe running
//! attempts, plan, then write the status with the resourceVersion the decisions were made
//! from, and only after that write succeeds start the attempts it recorded. A conflict means
//! the decision was made from a stale copy: nothing has started, and the run is read again.

mod effects;
pub mod status;

use crate::conditions::{self, Observed};
use crate::context::Context;
use crate::egress::dial::Dialer;
use crate::scaffold::Scaffold;
use crate::tenant_namespaces::wanted_by;
use crate::workflow::plan::{self, Outcome};
use crate::workflow::steps::inflight::Inflight;
use crate::workflow::{names, outputs, snapshot};
use bizosaas_crds::workflow::{RunPhase, Step, WorkflowRunStatus, WorkflowSnapshot};
use bizosaas_crds::{LABEL_MANAGED_BY, MANAGED_BY, Workflow, WorkflowRun};
use effects::{Seen, Values};
use futures::StreamExt;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, Patch, PatchParams};
use kube::core::DeserializeGuard;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{self, reflector};
use kube::runtime::{PredicateConfig, WatchStreamExt, predicates, watcher};
use kube::{Resource, ResourceExt};
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Controller name used in metrics, logs and events.
pub const CONTROLLER: &str = "workflowrun";
/// Longest wait between two looks at a running run, whatever its timers say.
const MAX_WAIT: Duration = Duration::from_secs(60);

/// Why a reconcile failed: an API call, or an object that no longer deserialises.
pub use crate::scaffold::Error;

/// State the WorkflowRun controller keeps between reconciles.
pub struct RunContext {
    scaffold: Scaffold,
    inflight: Inflight,
    /// Calls the crews' run API for `agentTask` steps.
    crews: crate::workflow::steps::agent::Caller,
    /// Vets and dials the addresses of `http` steps.
    dialer: Arc<Dialer>,
    /// The tenant of each namespace runs were seen in (a tenant namespace's label never changes).
    tenants: Mutex<HashMap<String, String>>,
    /// The newest copy of each run this process wrote, so a reconcile started from an older
    /// cached copy decides from what was last written, never from before it.
    written: Mutex<HashMap<String, Arc<WorkflowRun>>>,
}

/// Runs the WorkflowRun controller until `shutdown` resolves.
pub async fn run(ctx: Arc<Context>, shutdown: impl Future<Output = ()> + Send + Sync + 'static) {
    let client = ctx.client.clone();
    let (wake, woken) = futures::channel::mpsc::unbounded();
    let http = reqwest::Client::builder()
        .user_agent(concat!("bizosaas-operator/", env!("CARGO_PKG_VERSION")))
        .timeout(Duration::from_secs(30))
        .build()
        .expect("the HTTP client builds once a rustls provider is installed");
    let token = crate::runtime_auth::RuntimeToken::new(client.clone(), ctx.config.runtime_token_source());
    let crews = crate::workflow::steps::agent::Caller { http, token: Arc::new(token) };
    let rc = Arc::new(RunContext {
        scaffold: Scaffold::new(CONTROLLER, ctx),
        inflight: Inflight::new(wake),
        crews,
        dialer: Arc::new(Dialer::new(client.clone())),
        tenants: Mutex::default(),
        written: Mutex::default(),
    });
    // A run's own status writes need no reconcile (the reconcile that wrote them already
    // planned the next one); a spec change (cancel) or deletion does.
    let (reader, writer) = reflector::store();
    let metrics = rc.scaffold.ctx.metrics.clone();
    let _census = crate::census::spawn(reader.clone(), CONTROLLER, metrics.clone(), move |runs| {
        status::publish_phases(&metrics, runs)
    });
    let events = reflector(
        writer,
        watcher(Api::<DeserializeGuard<WorkflowRun>>::all(client.clone()), watcher::Config::default()),
    )
    .default_backoff();
    // Jobs are watched only in the namespaces runs are in.
    let (events, run_namespaces) =
        wanted_by(events, |run: &DeserializeGuard<WorkflowRun>| run.meta().namespace.clone());
    let runs = events.applied_objects().predicate_filter(predicates::generation, PredicateConfig::default());
    let jobs = rc.scaffold.ctx.tenant_namespaces.watch::<Job>(
        watcher::Config::default().labels(&format!("{LABEL_MANAGED_BY}={MANAGED_BY}")),
        Some(run_namespaces),
    );
    Controller::for_stream(runs, reader)
        .owns_stream(jobs)
        .reconcile_on(woken)
        .with_config(crate::scaffold::controller_config())
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, rc)
        .for_each(|_| futures::future::ready(()))
        .await;
}

async fn reconcile(guard: Arc<DeserializeGuard<WorkflowRun>>, rc: Arc<RunContext>) -> Result<Action, Error> {
    rc.scaffold.reconcile(&guard, |run| reconcile_run(run, &rc)).await
}

fn error_policy(guard: Arc<DeserializeGuard<WorkflowRun>>, error: &Error, rc: Arc<RunContext>) -> Action {
    rc.scaffold.error_policy(&guard, error)
}

/// The copy of `run` to decide from: the one handed in, or the newer one this process wrote.
fn freshest(rc: &RunContext, run: &WorkflowRun) -> Arc<WorkflowRun> {
    let uid = run.uid().unwrap_or_default();
    let version = |r: &WorkflowRun| r.resource_version().and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    let written = rc.written.lock().expect("written lock");
    match written.get(&uid) {
        Some(mine) if version(mine) > version(run) => mine.clone(),
        _ => Arc::new(run.clone()),
    }
}

async fn reconcile_run(handed: &WorkflowRun, rc: &RunContext) -> Result<Action, Error> {
    let run = freshest(rc, handed);
    let run = run.as_ref();
    let previous = run.status.clone().unwrap_or_default();
    let over = previous.phase.is_some_and(RunPhase::is_finished);
    if run.meta().deletion_timestamp.is_some() || over {
        forget(rc, run, &previous);
        return Ok(Action::await_change());
    }
    let now = Timestamp::now();
    let mut status = previous.clone();
    let ns = run.namespace().unwrap_or_default();
    let client = rc.scaffold.ctx.client.clone();

    let Some(tenant) = tenant_of(rc, &ns).await? else {
        let message = format!("Namespace {ns} belongs to no tenant: workflows run only in tenant namespaces");
        return end_before_start(rc, run, status, "NoTenantNamespace", &message).await;
    };
    let snapshot = match status.snapshot.clone() {
        Some(snapshot) => snapshot,
        None => match first_pass(rc, run, &mut status, now).await? {
            FirstPass::Started(snapshot) => snapshot,
            FirstPass::Waiting => {
                write(rc, run, &previous, status).await?;
                return Ok(Action::requeue(Duration::from_secs(30)));
            }
            FirstPass::Refused => {
                write(rc, run, &previous, status).await?;
                return Ok(Action::await_change());
            }
        },
    };

    // Observe the attempts recorded as running.
    let config_maps = Api::<ConfigMap>::namespaced(client.clone(), &ns);
    let outputs_name = names::outputs(&run.name_any());
    let mut known: Option<BTreeMap<String, String>> = None;
    let mut new_outputs: BTreeMap<String, String> = BTreeMap::new();
    let mut finished_keys = Vec::new();
    let mut resumes = Vec::new();
    let mut kept_bytes: usize = status.steps.iter().filter_map(|s| s.output_bytes).map(|b| b as usize).sum();
    for step in &snapshot.steps {
        let Some(state) = status.steps.iter().find(|s| s.name == step.name && s.phase == RunPhase::Running) else {
            continue;
        };
        let Some(attempt) = state.attempts.last().cloned() else { continue };
        let outcome = match effects::observe(rc, run, step, &attempt).await? {
            Seen::Running => None,
            Seen::NotRunning => {
                resumes.push((step, attempt.clone()));
                None
            }
            Seen::Finished(outcome) => Some(outcome),
        };
        if attempt.reference.is_none()
            && let Some(reference) = rc.inflight.reference(&attempt.idempotency_key)
        {
            set_reference(&mut status, &step.name, reference);
        }
        let Some(mut outcome) = outcome else { continue };
        finished_keys.push(attempt.idempotency_key.clone());
        if let Outcome::Succeeded { output, .. } = &outcome {
            match outputs::too_large(output.len(), kept_bytes) {
                Some(message) => outcome = Outcome::Failed { message },
                None => {
                    kept_bytes += output.len();
                    new_outputs.insert(step.name.clone(), output.clone());
                }
            }
        }
        plan::finish_attempt(&mut status, snapshot.retry.as_ref(), &step.name, outcome, now);
    }

    // Plan: timeouts first, then what starts or whether the run is over.
    let mut decided = plan::plan(&snapshot, &mut status, now, run.spec.cancel);
    for name in std::mem::take(&mut decided.timed_out) {
        let step = snapshot.steps.iter().find(|s| s.name == name).expect("planned steps exist");
        if let Some(attempt) = last_attempt(&status, &name) {
            effects::stop(rc, run, step, &attempt).await?;
            finished_keys.push(attempt.idempotency_key.clone());
        }
        let message = format!("the attempt timed out after {}s", step.timeout_seconds.unwrap_or_default());
        plan::finish_attempt(&mut status, snapshot.retry.as_ref(), &name, Outcome::Failed { message }, now);
        decided = plan::plan(&snapshot, &mut status, now, run.spec.cancel);
    }
    let mut launches = Vec::new();
    if let Some((phase, reason, message)) = decided.finish.clone() {
        if phase != RunPhase::Succeeded {
            for step in &snapshot.steps {
                if let Some(attempt) = last_attempt(&status, &step.name).filter(|a| a.phase == RunPhase::Running) {
                    effects::stop(rc, run, step, &attempt).await?;
                    finished_keys.push(attempt.idempotency_key.clone());
                }
            }
        }
        plan::finish_run(&mut status, phase, &message, now);
        set_conditions(&mut status, run, status::observed(phase, reason, &message, false));
    } else {
        for name in &decided.start {
            let step = snapshot.steps.iter().find(|s| &s.name == name).expect("planned steps exist");
            let values = values(&config_maps, &outputs_name, &mut known, &new_outputs, step).await?;
            let attempt = plan::begin_attempt(&mut status, name, &run.uid().unwrap_or_default(), &run.name_any(), now);
            match effects::render(
                step,
                &attempt,
                &ns,
                &tenant,
                &Values { parameters: &snapshot.parameters, outputs: &values },
            ) {
                Ok(rendered) => {
                    if step.container.is_some() {
                        set_reference(&mut status, name, attempt.name.clone());
                    }
                    launches.push((step, attempt, rendered));
                }
                Err(message) => {
                    plan::finish_attempt(&mut status, snapshot.retry.as_ref(), name, Outcome::Failed { message }, now)
                }
            }
        }
        let (phase, reason, message) = status::progress(&status);
        set_conditions(&mut status, run, status::observed(phase, reason, &message, false));
    }
    status.total_tokens = total_tokens(&status);

    // Record, then act.
    if !new_outputs.is_empty() {
        outputs::store(&config_maps, run, &outputs_name, &new_outputs).await?;
        for _ in &new_outputs {
            rc.scaffold.ctx.metrics.write(CONTROLLER, "ConfigMap", "apply");
        }
        status.outputs = Some(outputs_name.clone());
    }
    if !write(rc, run, &previous, status.clone()).await? {
        return Ok(Action::requeue(Duration::from_millis(200)));
    }
    for key in finished_keys {
        rc.inflight.forget(&key);
    }
    for (step, attempt) in resumes {
        let values = values(&config_maps, &outputs_name, &mut known, &new_outputs, step).await?;
        let values = Values { parameters: &snapshot.parameters, outputs: &values };
        if let Ok(rendered) = effects::render(step, &attempt, &ns, &tenant, &values) {
            effects::launch(rc, run, step, &attempt, rendered).await?;
        }
    }
    for (step, attempt, rendered) in launches {
        effects::launch(rc, run, step, &attempt, rendered).await?;
    }
    if status.phase.is_some_and(RunPhase::is_finished) {
        forget(rc, run, &status);
        return Ok(Action::await_change());
    }
    let wait = decided
        .wake_at
        .map(|at| Duration::try_from(at.duration_since(Timestamp::now())).unwrap_or(Duration::ZERO))
        .unwrap_or(MAX_WAIT);
    Ok(Action::requeue(wait.clamp(Duration::from_millis(100), MAX_WAIT)))
}

/// What the first pass found.
enum FirstPass {
    Started(WorkflowSnapshot),
    /// The Workflow does not exist (yet); the status says so.
    Waiting,
    /// The run can never start; the status says why and the run is over.
    Refused,
}

/// The first pass: snapshot the Workflow into the status.
async fn first_pass(
    rc: &RunContext,
    run: &WorkflowRun,
    status: &mut WorkflowRunStatus,
    now: Timestamp,
) -> Result<FirstPass, Error> {
    let ns = run.namespace().unwrap_or_default();
    let workflows = Api::<Workflow>::namespaced(rc.scaffold.ctx.client.clone(), &ns);
    let Some(workflow) = workflows.get_opt(&run.spec.workflow).await? else {
        let message = format!("Workflow {} does not exist in namespace {ns}", run.spec.workflow);
        status.phase = Some(RunPhase::Pending);
        set_conditions(status, run, status::observed(RunPhase::Pending, "WorkflowNotFound", &message, false));
        return Ok(FirstPass::Waiting);
    };
    match snapshot::take(&workflow, run) {
        Ok(snapshot) => {
            status.phase = Some(RunPhase::Running);
            status.started_at = Some(Time(now));
            status.deadline = snapshot.active_deadline_seconds.map(|s| Time(now + SignedDuration::from_secs(s)));
            status.steps = plan::initial_steps(&snapshot);
            status.snapshot = Some(snapshot.clone());
            Ok(FirstPass::Started(snapshot))
        }
        Err(e) => {
            status.phase = Some(RunPhase::Failed);
            status.finished_at = Some(Time(now));
            set_conditions(status, run, status::observed(RunPhase::Failed, e.reason(), &e.to_string(), true));
            Ok(FirstPass::Refused)
        }
    }
}

/// Ends a run that never started, with a permanent reason.
async fn end_before_start(
    rc: &RunContext,
    run: &WorkflowRun,
    mut status: WorkflowRunStatus,
    reason: &str,
    message: &str,
) -> Result<Action, Error> {
    let previous = status.clone();
    status.phase = Some(RunPhase::Failed);
    status.finished_at = Some(Time(Timestamp::now()));
    set_conditions(&mut status, run, status::observed(RunPhase::Failed, reason, message, true));
    write(rc, run, &previous, status).await?;
    Ok(Action::await_change())
}

/// Writes `next` as the run's status unless it equals `previous`, conditional on the
/// resourceVersion the run was read at (a merge patch carrying `metadata.resourceVersion`
/// fails with a conflict when the run changed since). Returns false on a conflict: the decision was made
/// from a stale copy and nothing may act on it.
async fn write(
    rc: &RunContext,
    run: &WorkflowRun,
    previous: &WorkflowRunStatus,
    next: WorkflowRunStatus,
) -> Result<bool, Error> {
    if &next == previous {
        return Ok(true);
    }
    let api = Api::<WorkflowRun>::namespaced(rc.scaffold.ctx.client.clone(), &run.namespace().unwrap_or_default());
    // Only the fields that changed, conditional on the resourceVersion read: the snapshot is
    // sent once, not with every step.
    let patch = serde_json::json!({
        "metadata": {"resourceVersion": run.resource_version()},
        "status": changed_fields(previous, &next),
    });
    match api.patch_status(&run.name_any(), &PatchParams::default(), &Patch::Merge(&patch)).await {
        Ok(written) => {
            rc.scaffold.ctx.metrics.write(CONTROLLER, "WorkflowRun", "status");
            let next = written.status.clone().unwrap_or_default();
            if let Some(phase) =
                next.phase.filter(|p| p.is_finished() && !previous.phase.is_some_and(RunPhase::is_finished))
            {
                rc.scaffold.ctx.metrics.workflow_runs_finished.get_or_create(&status::phase_labels(phase)).inc();
            }
            rc.written.lock().expect("written lock").insert(run.uid().unwrap_or_default(), Arc::new(written.clone()));
            rc.scaffold.ctx.record_transitions(&written.object_ref(&()), &previous.conditions, &next.conditions).await;
            Ok(true)
        }
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// The tenant namespace `ns` belongs to, remembered once known.
async fn tenant_of(rc: &RunContext, ns: &str) -> Result<Option<String>, Error> {
    if let Some(tenant) = rc.tenants.lock().expect("tenants lock").get(ns) {
        return Ok(Some(tenant.clone()));
    }
    let tenant = effects::tenant_of(&rc.scaffold.ctx.client, ns).await?;
    if let Some(tenant) = &tenant {
        rc.tenants.lock().expect("tenants lock").insert(ns.to_string(), tenant.clone());
    }
    Ok(tenant)
}

/// The top-level status fields that differ between `previous` and `next`, as a merge patch
/// (a field that went away is `null`).
fn changed_fields(previous: &WorkflowRunStatus, next: &WorkflowRunStatus) -> serde_json::Value {
    let (serde_json::Value::Object(before), serde_json::Value::Object(after)) =
        (serde_json::to_value(previous).unwrap_or_default(), serde_json::to_value(next).unwrap_or_default())
    else {
        return serde_json::to_value(next).unwrap_or_default();
    };
    let mut patch = serde_json::Map::new();
    for (key, value) in &after {
        if before.get(key) != Some(value) {
            patch.insert(key.clone(), value.clone());
        }
    }
    for key in before.keys().filter(|k| !after.contains_key(*k)) {
        patch.insert(key.clone(), serde_json::Value::Null);
    }
    serde_json::Value::Object(patch)
}

/// Drops what this process keeps for a run that is over or gone.
fn forget(rc: &RunContext, run: &WorkflowRun, status: &WorkflowRunStatus) {
    for attempt in status.steps.iter().flat_map(|s| &s.attempts) {
        rc.inflight.forget(&attempt.idempotency_key);
    }
    rc.written.lock().expect("written lock").remove(&run.uid().unwrap_or_default());
}

fn set_conditions(status: &mut WorkflowRunStatus, run: &WorkflowRun, observed: Vec<Observed>) {
    status.observed_generation = run.metadata.generation;
    status.conditions = conditions::merge(&status.conditions, &observed, run.metadata.generation);
}

fn set_reference(status: &mut WorkflowRunStatus, step: &str, reference: String) {
    if let Some(a) = status.steps.iter_mut().find(|s| s.name == step).and_then(|s| s.attempts.last_mut()) {
        a.reference = Some(reference);
    }
}

fn last_attempt(status: &WorkflowRunStatus, step: &str) -> Option<bizosaas_crds::workflow::Attempt> {
    status.steps.iter().find(|s| s.name == step).and_then(|s| s.attempts.last().cloned())
}

fn total_tokens(status: &WorkflowRunStatus) -> Option<i64> {
    let sum: i64 = status.steps.iter().flat_map(|s| &s.attempts).filter_map(|a| a.tokens).sum();
    (sum > 0).then_some(sum)
}

/// Outputs `step`'s templates may read: those stored (read once per reconcile, and only for
/// a step that reads any) and those found now.
async fn values(
    api: &Api<ConfigMap>,
    name: &str,
    known: &mut Option<BTreeMap<String, String>>,
    new: &BTreeMap<String, String>,
    step: &Step,
) -> Result<BTreeMap<String, String>, Error> {
    let reads_outputs = snapshot::template_fields(step).iter().any(|f| f.contains("steps."));
    if known.is_none() && reads_outputs {
        *known = Some(outputs::read(api, name).await?);
    }
    let mut all = known.clone().unwrap_or_default();
    all.extend(new.iter().map(|(k, v)| (k.clone(), v.clone())));
    Ok(all)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_status_write_carries_only_what_changed() {
        let before = WorkflowRunStatus { phase: Some(RunPhase::Running), total_tokens: Some(3), ..Default::default() };
        let after = WorkflowRunStatus { phase: Some(RunPhase::Succeeded), ..before.clone() };
        assert_eq!(changed_fields(&before, &after), serde_json::json!({"phase": "Succeeded"}));
        let dropped = WorkflowRunStatus { total_tokens: None, ..before.clone() };
        assert_eq!(changed_fields(&before, &dropped), serde_json::json!({"totalTokens": null}));
    }
}
