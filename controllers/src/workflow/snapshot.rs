//! A run's first pass: copy the Workflow it names, merge the run's parameters into the
//! defaults, and check everything that can be checked before a step starts (acyclic
//! `dependsOn`, known parameters, templates that only read upstream steps).

use super::template::{self, Reference, TemplateError};
use bizosaas_crds::common::NameValue;
use bizosaas_crds::workflow::{Step, Workflow, WorkflowRun, WorkflowSnapshot};
use std::collections::{BTreeMap, BTreeSet};

/// Largest snapshot kept in a run's status, so the status stays well under the API
/// server's object size limit with every step's attempts beside it.
pub const MAX_SNAPSHOT_BYTES: usize = 64 * 1024;

/// Why a run cannot start; each is permanent for this run.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SnapshotError {
    #[error("parameter {0:?} is not declared by the workflow")]
    UnknownParameter(String),
    #[error("steps {0} depend on each other in a cycle")]
    Cycle(String),
    #[error("step {step}: {error}")]
    Template { step: String, error: TemplateError },
    #[error("step {step} reads {{{{ params.{param} }}}}, which the workflow does not declare")]
    UndeclaredParameter { step: String, param: String },
    #[error(
        "step {step} reads {{{{ steps.{other}.output }}}}, but {other} is not upstream of it (add it to dependsOn)"
    )]
    NotUpstream { step: String, other: String },
    #[error("the workflow is {0} bytes, more than the {MAX_SNAPSHOT_BYTES} a run can hold")]
    TooLarge(usize),
}

impl SnapshotError {
    /// Condition reason.
    pub fn reason(&self) -> &'static str {
        match self {
            SnapshotError::UnknownParameter(_) => "UnknownParameter",
            SnapshotError::Cycle(_) => "DependencyCycle",
            SnapshotError::Template { .. } | SnapshotError::UndeclaredParameter { .. } => "InvalidTemplate",
            SnapshotError::NotUpstream { .. } => "InvalidTemplate",
            SnapshotError::TooLarge(_) => "WorkflowTooLarge",
        }
    }
}

/// The snapshot `run` executes, or why it cannot start.
pub fn take(workflow: &Workflow, run: &WorkflowRun) -> Result<WorkflowSnapshot, SnapshotError> {
    let spec = &workflow.spec;
    let mut parameters: BTreeMap<&str, &str> =
        spec.parameters.iter().map(|p| (p.name.as_str(), p.value.as_str())).collect();
    for p in &run.spec.parameters {
        let slot =
            parameters.get_mut(p.name.as_str()).ok_or_else(|| SnapshotError::UnknownParameter(p.name.clone()))?;
        *slot = p.value.as_str();
    }
    let upstream = upstream(&spec.steps)?;
    for step in &spec.steps {
        for text in template_fields(step) {
            let refs = template::references(text)
                .map_err(|error| SnapshotError::Template { step: step.name.clone(), error })?;
            for r in refs {
                match r {
                    Reference::Param(param) if !parameters.contains_key(param.as_str()) => {
                        return Err(SnapshotError::UndeclaredParameter { step: step.name.clone(), param });
                    }
                    Reference::StepOutput(other) if !upstream[step.name.as_str()].contains(other.as_str()) => {
                        return Err(SnapshotError::NotUpstream { step: step.name.clone(), other });
                    }
                    _ => {}
                }
            }
        }
    }
    let snapshot = WorkflowSnapshot {
        generation: workflow.metadata.generation.unwrap_or_default(),
        parameters: parameters
            .into_iter()
            .map(|(name, value)| NameValue { name: name.to_string(), value: value.to_string() })
            .collect(),
        retry: spec.retry.clone(),
        active_deadline_seconds: spec.active_deadline_seconds,
        parallelism: spec.parallelism.max(1),
        steps: spec.steps.clone(),
    };
    let size = serde_json::to_vec(&snapshot).map(|v| v.len()).unwrap_or(usize::MAX);
    if size > MAX_SNAPSHOT_BYTES {
        return Err(SnapshotError::TooLarge(size));
    }
    Ok(snapshot)
}

/// The fields of a step that may hold placeholders.
pub fn template_fields(step: &Step) -> Vec<&str> {
    let mut fields = Vec::new();
    if let Some(task) = &step.agent_task {
        fields.push(task.description.as_str());
        fields.extend(task.expected_output.as_deref());
    }
    if let Some(http) = &step.http {
        fields.extend(http.path.as_deref());
        fields.extend(http.body.as_deref());
        fields.extend(http.headers.values().map(String::as_str));
    }
    if let Some(container) = &step.container {
        fields.extend(container.args.iter().map(String::as_str));
        fields.extend(container.env.iter().map(|e| e.value.as_str()));
    }
    fields
}

/// Every step's transitive upstream, or the steps of a cycle.
fn upstream(steps: &[Step]) -> Result<BTreeMap<&str, BTreeSet<&str>>, SnapshotError> {
    let deps: BTreeMap<&str, Vec<&str>> =
        steps.iter().map(|s| (s.name.as_str(), s.depends_on.iter().map(String::as_str).collect())).collect();
    let mut done: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    // Kahn's order: a step is resolved once all its dependencies are.
    while done.len() < deps.len() {
        let before = done.len();
        for (&step, ds) in &deps {
            if done.contains_key(step) || !ds.iter().all(|d| done.contains_key(d) || !deps.contains_key(d)) {
                continue;
            }
            let mut all = BTreeSet::new();
            for d in ds {
                all.insert(*d);
                all.extend(done.get(d).into_iter().flatten().copied());
            }
            done.insert(step, all);
        }
        if done.len() == before {
            let cycle: Vec<&str> = deps.keys().filter(|s| !done.contains_key(*s)).copied().collect();
            return Err(SnapshotError::Cycle(cycle.join(", ")));
        }
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn workflow(yaml: &str) -> Workflow {
        let mut w: Workflow = serde_saphyr::from_str(yaml).unwrap();
        w.metadata.generation = Some(7);
        w
    }

    fn run(params: &[(&str, &str)]) -> WorkflowRun {
        let params: Vec<NameValue> =
            params.iter().map(|(n, v)| NameValue { name: n.to_string(), value: v.to_string() }).collect();
        WorkflowRun::new(
            "r",
            bizosaas_crds::WorkflowRunSpec { workflow: "w".into(), parameters: params, cancel: false },
        )
    }

    const BLOG: &str = r#"
apiVersion: bizosaas.io/v1alpha1
kind: Workflow
metadata: {name: weekly-blog, namespace: tenant-acme}
spec:
  parameters: [{name: topic, value: spring sale}, {name: tone, value: warm}]
  steps:
  - name: research
    agentTask: {crew: growth-team, description: "Keywords for {{ params.topic }}"}
  - name: draft
    dependsOn: [research]
    agentTask: {crew: growth-team, description: "Post using {{ steps.research.output }}"}
  - name: publish
    dependsOn: [draft]
    http: {integration: wagtail, method: POST, path: /api/v2/pages/, body: "{{ steps.research.output }} {{ steps.draft.output }}"}
"#;

    #[test]
    fn run_parameters_override_defaults_and_the_generation_is_kept() {
        let snapshot = take(&workflow(BLOG), &run(&[("topic", "summer sale")])).unwrap();
        assert_eq!(snapshot.generation, 7);
        let params: Vec<(&str, &str)> =
            snapshot.parameters.iter().map(|p| (p.name.as_str(), p.value.as_str())).collect();
        assert_eq!(params, [("tone", "warm"), ("topic", "summer sale")]);
        assert_eq!(snapshot.steps.len(), 3);
        assert_eq!(snapshot.parallelism, 4);
    }

    #[test]
    fn an_unknown_parameter_is_refused() {
        let e = take(&workflow(BLOG), &run(&[("topik", "x")])).unwrap_err();
        assert_eq!(e, SnapshotError::UnknownParameter("topik".into()));
        assert_eq!(e.reason(), "UnknownParameter");
    }

    #[test]
    fn a_template_may_read_only_upstream_steps() {
        let bad = BLOG.replace("Keywords for {{ params.topic }}", "Keywords for {{ steps.publish.output }}");
        let e = take(&workflow(&bad), &run(&[])).unwrap_err();
        assert_eq!(e, SnapshotError::NotUpstream { step: "research".into(), other: "publish".into() });
        let undeclared = BLOG.replace("params.topic", "params.audience");
        let e = take(&workflow(&undeclared), &run(&[])).unwrap_err();
        assert!(matches!(e, SnapshotError::UndeclaredParameter { .. }), "{e}");
        let broken = BLOG.replace("{{ params.topic }}", "{{ params.topic");
        assert_eq!(take(&workflow(&broken), &run(&[])).unwrap_err().reason(), "InvalidTemplate");
    }

    #[test]
    fn a_dependency_cycle_is_refused() {
        let cyclic = BLOG.replace("  - name: research\n", "  - name: research\n    dependsOn: [publish]\n");
        let e = take(&workflow(&cyclic), &run(&[])).unwrap_err();
        assert_eq!(e, SnapshotError::Cycle("draft, publish, research".into()));
    }

    #[test]
    fn a_huge_workflow_is_refused() {
        let body = "x".repeat(MAX_SNAPSHOT_BYTES);
        let huge =
            BLOG.replace("body: \"{{ steps.research.output }} {{ steps.draft.output }}\"", &format!("body: {body}"));
        assert_eq!(take(&workflow(&huge), &run(&[])).unwrap_err().reason(), "WorkflowTooLarge");
    }
}
