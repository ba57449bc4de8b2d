//! Runs: what the API shows of them and where they are kept.
//!
//! - [`handle`]: one run this replica executes, live: state, outputs, usage, events, stop signal.
//! - [`memory`]: the bounded in-memory map of those runs (the cache and live view).
//! - [`persist`]: the `agent_runs` rows in the tenant database, shared by every replica.
//! - [`runs`]: the two together, which is what the API uses.
//!
//! Without a tenant database runs live only in memory and die with the process. With one,
//! every run is a row that any replica (and a restarted pod) finds by id or Idempotency-Key;
//! events stay in the memory of the replica that executes the run.

pub mod handle;
pub mod memory;
pub mod persist;
pub mod runs;

pub use handle::{MAX_EVENTS, Progress, RunHandle};
pub use memory::{Created, RunStore, StoreError};
pub use persist::{PersistError, RunRecords, RunTiming, StoredRun};
pub use runs::{Admitted, CancelOutcome, Found, Runs, RunsError};

use crate::engine::task::RunRequest;
use crate::usage::{RunUsage, TokenUsage};
use serde::{Deserialize, Serialize};

/// Why a stopped run stopped, as its error says.
pub const INTERRUPTED_MESSAGE: &str = "the runtime pod stopped while the run was in flight";
pub const CANCELLED_MESSAGE: &str = "the run was cancelled by a DELETE request";

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum RunStatus {
    Queued,
    Running,
    Succeeded,
    Failed,
    /// Stopped by `DELETE /v1/runs/{id}`.
    Cancelled,
    /// Its pod stopped (or was killed) while the run was in flight; never restarted.
    Interrupted,
}

impl RunStatus {
    pub const ALL: [RunStatus; 6] =
        [Self::Queued, Self::Running, Self::Succeeded, Self::Failed, Self::Cancelled, Self::Interrupted];

    pub fn is_finished(self) -> bool {
        !matches!(self, Self::Queued | Self::Running)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
            Self::Interrupted => "interrupted",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|v| v.as_str() == s)
    }
}

/// Why a run was stopped before it ended by itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopReason {
    Cancelled,
    Interrupted,
}

impl StopReason {
    pub fn status(self) -> RunStatus {
        match self {
            Self::Cancelled => RunStatus::Cancelled,
            Self::Interrupted => RunStatus::Interrupted,
        }
    }

    /// The error the run ends with: the category equals the status.
    pub fn error(self) -> RunErrorView {
        let message = match self {
            Self::Cancelled => CANCELLED_MESSAGE,
            Self::Interrupted => INTERRUPTED_MESSAGE,
        };
        RunErrorView { category: self.status().as_str().into(), message: message.into() }
    }
}

/// The output of one finished task.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TaskOutput {
    pub index: usize,
    /// The agent that produced the output (`manager` in a Hierarchical crew).
    pub agent: String,
    pub description: String,
    pub output: String,
    /// Tokens spent on this task, delegations included.
    pub usage: TokenUsage,
}

/// Why a run failed or stopped.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct RunErrorView {
    /// Stable: `llm_payment_required`, `budget_exceeded`, `max_iterations`, `cancelled`,
    /// `interrupted`, …
    pub category: String,
    pub message: String,
}

/// A run as `GET /v1/runs/{id}` shows it.
#[derive(Serialize, Clone, Debug)]
#[serde(rename_all = "camelCase")]
pub struct RunView {
    pub id: String,
    pub status: RunStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    pub request: RunRequest,
    pub created_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    /// Outputs of the finished tasks, in order.
    pub tasks: Vec<TaskOutput>,
    /// The last task's output once the run succeeded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
    pub usage: RunUsage,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<RunErrorView>,
    /// A `DELETE` asked the run to stop (it stops within a poll interval on its replica).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub cancel_requested: bool,
    /// Events recorded so far (see `/events`); only on the replica that executes the run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub events: Option<u64>,
}

/// The output a run shows: the last task's, once it succeeded.
pub fn final_output(status: RunStatus, tasks: &[TaskOutput]) -> Option<String> {
    (status == RunStatus::Succeeded).then(|| tasks.last().map(|t| t.output.clone())).flatten()
}

/// A run in the list.
#[derive(Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RunSummary {
    pub id: String,
    pub status: RunStatus,
    pub created_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    pub total_tokens: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<RunErrorView>,
}

impl From<RunView> for RunSummary {
    fn from(v: RunView) -> Self {
        Self {
            id: v.id,
            status: v.status,
            created_at: v.created_at,
            finished_at: v.finished_at,
            total_tokens: v.usage.total.total_tokens,
            error: v.error,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_round_trip_and_stopped_ones_are_finished() {
        for s in RunStatus::ALL {
            assert_eq!(RunStatus::parse(s.as_str()), Some(s));
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
        }
        assert_eq!(RunStatus::parse("lost"), None);
        let finished: Vec<_> = RunStatus::ALL.into_iter().filter(|s| s.is_finished()).map(RunStatus::as_str).collect();
        assert_eq!(finished, ["succeeded", "failed", "cancelled", "interrupted"]);
    }

    #[test]
    fn stop_reasons_name_their_status() {
        assert_eq!(StopReason::Cancelled.status(), RunStatus::Cancelled);
        let e = StopReason::Interrupted.error();
        assert_eq!((e.category.as_str(), e.message.as_str()), ("interrupted", INTERRUPTED_MESSAGE));
        assert_eq!(StopReason::Cancelled.error().category, "cancelled");
    }

    #[test]
    fn only_a_succeeded_run_has_an_output() {
        let task = TaskOutput {
            index: 0,
            agent: "a".into(),
            description: "d".into(),
            output: "o".into(),
            usage: TokenUsage::default(),
        };
        assert_eq!(final_output(RunStatus::Succeeded, std::slice::from_ref(&task)).as_deref(), Some("o"));
        assert_eq!(final_output(RunStatus::Cancelled, &[task]), None);
        assert_eq!(final_output(RunStatus::Succeeded, &[]), None);
    }
}
