//! The conditions of a WorkflowRun, kstatus-style: `Ready` True once it succeeded,
//! `Reconciling` while it runs, `Succeeded` or `Failed` when it is over, and `Stalled` when it
//! failed for a reason retrying cannot fix.

use crate::conditions::Observed;
use bizosaas_crds::common::READY;
use bizosaas_crds::workflow::{RunPhase, WorkflowRunStatus};

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
