//! Side effects of attempts: render a step's templates, start its effect (idempotently, so a
//! resume after a restart is the same call), observe it and stop it.

use super::RunContext;
use crate::workflow::plan::Outcome;
use crate::workflow::steps::{agent, container, http};
use crate::workflow::template::{self, Reference};
use bizosaas_crds::common::NameValue;
use bizosaas_crds::workflow::{Attempt, ContainerJob, Step};
use bizosaas_crds::{LABEL_TENANT, WorkflowRun};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::Api;
use kube::runtime::reflector::ObjectRef;
use kube::{Client, ResourceExt};
use std::collections::BTreeMap;
use std::time::Duration;
use tracing::Instrument as _;

/// A step with its templates filled in, ready to start.
pub enum Rendered {
    Agent(agent::Task),
    Http(http::Call),
    Container(ContainerJob),
}

/// What templates read: the run's parameters and the outputs of finished steps.
pub struct Values<'a> {
    pub parameters: &'a [NameValue],
    pub outputs: &'a BTreeMap<String, String>,
}

impl Values<'_> {
    fn render(&self, text: &str) -> Result<String, String> {
        template::render(text, |r| match r {
            Reference::Param(p) => self.parameters.iter().find(|v| &v.name == p).map(|v| v.value.as_str()),
            Reference::StepOutput(s) => self.outputs.get(s).map(String::as_str),
        })
        .map_err(|e| e.to_string())
    }

    fn render_opt(&self, text: Option<&String>) -> Result<Option<String>, String> {
        text.map(|t| self.render(t)).transpose()
    }
}

/// Fills in `step`'s templates for `attempt`.
pub fn render(
    step: &Step,
    attempt: &Attempt,
    namespace: &str,
    tenant: &str,
    values: &Values<'_>,
) -> Result<Rendered, String> {
    let timeout = step.timeout_seconds.map(|s| Duration::from_secs(s as u64));
    if let Some(task) = &step.agent_task {
        return Ok(Rendered::Agent(agent::Task {
            namespace: namespace.to_string(),
            crew: task.crew.clone(),
            agent: task.agent.clone(),
            description: values.render(&task.description)?,
            expected_output: values.render_opt(task.expected_output.as_ref())?,
            idempotency_key: attempt.idempotency_key.clone(),
        }));
    }
    if let Some(call) = &step.http {
        let headers =
            call.headers.iter().map(|(k, v)| Ok((k.clone(), values.render(v)?))).collect::<Result<_, String>>()?;
        return Ok(Rendered::Http(http::Call {
            namespace: namespace.to_string(),
            tenant: tenant.to_string(),
            integration: call.integration.clone(),
            method: call.method,
            path: values.render_opt(call.path.as_ref())?.unwrap_or_default(),
            headers,
            body: values.render_opt(call.body.as_ref())?,
            idempotency_key: attempt.idempotency_key.clone(),
            timeout: timeout.unwrap_or(http::DEFAULT_TIMEOUT),
        }));
    }
    if let Some(job) = &step.container {
        let mut job = job.clone();
        job.args = job.args.iter().map(|a| values.render(a)).collect::<Result<_, _>>()?;
        for env in &mut job.env {
            env.value = values.render(&env.value)?;
        }
        return Ok(Rendered::Container(job));
    }
    Err("the step has none of agentTask, http or container".into())
}

/// Starts the attempt's effect unless it already runs. Safe to repeat: the Job has the
/// attempt's name, the crew run and the HTTP call carry its idempotency key.
pub async fn launch(
    rc: &RunContext,
    run: &WorkflowRun,
    step: &Step,
    attempt: &Attempt,
    rendered: Rendered,
) -> Result<(), kube::Error> {
    let client = rc.scaffold.ctx.client.clone();
    // The step's span, a child of the reconcile that launches it; it lasts as long as the
    // step's call, and a crew run the step starts joins its trace.
    let kind = match &rendered {
        Rendered::Container(_) => "container",
        Rendered::Http(_) => "http",
        Rendered::Agent(_) => "agentTask",
    };
    let span = tracing::info_span!(
        "step",
        otel.name = %format!("workflow_step {}", step.name),
        bizosaas.workflow.run = %run.name_any(),
        bizosaas.workflow.step = %step.name,
        bizosaas.workflow.step.kind = kind,
        bizosaas.workflow.attempt = %attempt.name,
        k8s.namespace.name = run.namespace().as_deref(),
    );
    let run_ref = ObjectRef::from_obj(run).erase();
    let run_ref = ObjectRef::new(&run_ref.name).within(run_ref.namespace.as_deref().unwrap_or_default());
    match rendered {
        Rendered::Container(spec) => {
            let jobs = Api::<Job>::namespaced(client, &run.namespace().unwrap_or_default());
            let job = container::job(run, &step.name, &attempt.name, &spec, step.timeout_seconds);
            if container::create(&jobs, &job).await? {
                rc.scaffold.ctx.metrics.write(super::CONTROLLER, "Job", "create");
            }
        }
        Rendered::Http(call) => {
            let dialer = rc.dialer.clone();
            rc.inflight
                .ensure(&attempt.idempotency_key, run_ref, |_| http::send(client, dialer, call).instrument(span));
        }
        Rendered::Agent(task) => {
            let caller = rc.crews.clone();
            rc.inflight.ensure(&attempt.idempotency_key, run_ref, |reporter| {
                agent::run(client, caller, task, reporter).instrument(span)
            });
        }
    }
    Ok(())
}

/// Where a recorded attempt stands.
pub enum Seen {
    Running,
    Finished(Outcome),
    /// Recorded, but its effect runs nowhere: the operator stopped between recording and
    /// starting it, or lost the in-process call. Started again under the same name and key.
    NotRunning,
}

pub async fn observe(rc: &RunContext, run: &WorkflowRun, step: &Step, attempt: &Attempt) -> Result<Seen, kube::Error> {
    if step.container.is_some() {
        let namespace = run.namespace().unwrap_or_default();
        let client = rc.scaffold.ctx.client.clone();
        let jobs = Api::<Job>::namespaced(client.clone(), &namespace);
        let pods = Api::<Pod>::namespaced(client, &namespace);
        return Ok(match container::observe(&jobs, &pods, &attempt.name).await? {
            container::Observed::Finished(outcome) => Seen::Finished(outcome),
            container::Observed::Running => Seen::Running,
            container::Observed::Missing => Seen::NotRunning,
        });
    }
    let key = &attempt.idempotency_key;
    Ok(match rc.inflight.outcome(key) {
        Some(outcome) => Seen::Finished(outcome),
        None if rc.inflight.knows(key) => Seen::Running,
        None => Seen::NotRunning,
    })
}

/// Stops a running attempt: deletes its Job, cancels its crew run, or drops its HTTP call.
pub async fn stop(rc: &RunContext, run: &WorkflowRun, step: &Step, attempt: &Attempt) -> Result<(), kube::Error> {
    let client = rc.scaffold.ctx.client.clone();
    let namespace = run.namespace().unwrap_or_default();
    if step.container.is_some() {
        container::stop(&Api::<Job>::namespaced(client, &namespace), &attempt.name).await?;
        rc.scaffold.ctx.metrics.write(super::CONTROLLER, "Job", "delete");
        return Ok(());
    }
    let reference = attempt.reference.clone().or_else(|| rc.inflight.reference(&attempt.idempotency_key));
    rc.inflight.forget(&attempt.idempotency_key);
    if let (Some(task), Some(run_id)) = (&step.agent_task, reference) {
        agent::cancel(&client, &rc.crews, &namespace, &task.crew, &run_id).await;
    }
    Ok(())
}

/// The tenant a namespace belongs to, from its label.
pub async fn tenant_of(client: &Client, namespace: &str) -> Result<Option<String>, kube::Error> {
    Ok(Api::<Namespace>::all(client.clone())
        .get_opt(namespace)
        .await?
        .and_then(|n| n.labels().get(LABEL_TENANT).cloned()))
}
