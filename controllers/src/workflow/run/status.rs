//! The conditions of a WorkflowRun, kstatus-style: `Ready` True once it succeeded,
//! `Reconciling` while it runs, `Succeeded` or `Failed` when it is over, and `Stalled` when it
//! failed for a reason retrying cannot fix.

use crate::conditions::Observed;
use crate::metrics::{Metrics, PhaseLabels};
use bizosaas_crds::WorkflowRun;
use bizosaas_crds::common::READY;
use bizosaas_crds::workflow::{RunPhase, WorkflowRunStatus};
use kube::core::DeserializeGuard;
use std::sync::Arc;

pub use crate::conditions::{RECONCILING, STALLED};
pub const SUCCEEDED: &str = "Succeeded";
pub const FAILED: &str = "Failed";

/// The conditions for a run in `phase`, with the reason and message of what it is doing or
/// why it ended.
pub fn observed(phase: RunPhase, reason: &str, message: &str, permanent: bool) -> Vec<Observed> {
    match phase {
        RunPhase::Pending | RunPhase::Running => {
            vec![Observed::failed(READY, reason, message), Observed::ok(RECONCILING, reason, message)]
        }
        RunPhase::Succeeded => {
            vec![Observed::ok(READY, reason, message), Observed::ok(SUCCEEDED, reason, message)]
        }
        RunPhase::Failed | RunPhase::Cancelled | RunPhase::Skipped => {
            let mut c = vec![Observed::failed(READY, reason, message), Observed::ok(FAILED, reason, message)];
            if permanent {
                c.push(Observed::ok(STALLED, reason, message));
            }
            c
        }
    }
}

/// The phases a run as a whole can be in (`Skipped` is a step's).
const RUN_PHASES: [RunPhase; 5] =
    [RunPhase::Pending, RunPhase::Running, RunPhase::Succeeded, RunPhase::Failed, RunPhase::Cancelled];

/// The metric labels of a phase.
pub fn phase_labels(phase: RunPhase) -> PhaseLabels {
    let phase = match phase {
        RunPhase::Pending => "Pending",
        RunPhase::Running => "Running",
        RunPhase::Succeeded => "Succeeded",
        RunPhase::Failed => "Failed",
        RunPhase::Cancelled => "Cancelled",
        RunPhase::Skipped => "Skipped",
    };
    PhaseLabels { phase }
}

/// Publishes how many runs are in each phase; a run without a status yet is `Pending`.
pub fn publish_phases(metrics: &Metrics, runs: &[Arc<DeserializeGuard<WorkflowRun>>]) {
    let phase_of = |run: &WorkflowRun| run.status.as_ref().and_then(|s| s.phase).unwrap_or(RunPhase::Pending);
    for phase in RUN_PHASES {
        let count = runs.iter().filter_map(|guard| guard.0.as_ref().ok()).filter(|run| phase_of(run) == phase).count();
        metrics.workflow_runs.get_or_create(&phase_labels(phase)).set(count as i64);
    }
}

/// `Running` with how far the DAG got.
pub fn progress(status: &WorkflowRunStatus) -> (RunPhase, &'static str, String) {
    let total = status.steps.len();
    let done = status.steps.iter().filter(|s| s.phase.is_finished()).count();
    let running: Vec<&str> =
        status.steps.iter().filter(|s| s.phase == RunPhase::Running).map(|s| s.name.as_str()).collect();
    let message = if running.is_empty() {
        format!("{done}/{total} steps finished")
    } else {
        format!("{done}/{total} steps finished; running {}", running.join(", "))
    };
    (RunPhase::Running, "Running", message)
}
