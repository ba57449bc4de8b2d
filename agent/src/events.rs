//! What happens during a run, as streamed by `GET /v1/runs/{id}/events` (one server-sent
//! event per [`Event`], `event:` = its `type`, `id:` = its `seq`). Events carry no
//! credentials: tool output is redacted before it is recorded.

use crate::usage::{RunUsage, TokenUsage};
use serde::Serialize;
use serde_json::Value;

/// One event of a run.
#[derive(Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Event {
    /// 1, 2, 3, … within the run.
    pub seq: u64,
    pub time: String,
    #[serde(flatten)]
    pub kind: EventKind,
}

#[derive(Serialize, Clone, Debug, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case", rename_all_fields = "camelCase")]
pub enum EventKind {
    RunStarted {
        process: String,
        tasks: usize,
    },
    TaskStarted {
        task: usize,
        agent: String,
        description: String,
    },
    /// A model call returned (after any retries).
    LlmCall {
        task: usize,
        agent: String,
        iteration: u32,
        model: String,
        usage: TokenUsage,
        /// Names of the tools the model called.
        tool_calls: Vec<String>,
        attempts: u32,
        duration_ms: u64,
        /// The model's text when it called tools (its reasoning), shortened.
        #[serde(skip_serializing_if = "Option::is_none")]
        thought: Option<String>,
    },
    ToolStarted {
        task: usize,
        agent: String,
        tool: String,
        call_id: String,
        arguments: Value,
    },
    ToolFinished {
        task: usize,
        agent: String,
        tool: String,
        call_id: String,
        ok: bool,
        /// The result fed back to the model, shortened.
        output: String,
    },
    DelegationStarted {
        task: usize,
        from: String,
        to: String,
        /// `delegate_work` or `ask_question`.
        tool: String,
        request: String,
    },
    DelegationFinished {
        task: usize,
        from: String,
        to: String,
        ok: bool,
    },
    TaskFinished {
        task: usize,
        agent: String,
        output: String,
        usage: TokenUsage,
    },
    RunFinished {
        status: String,
        usage: RunUsage,
        #[serde(skip_serializing_if = "Option::is_none")]
        error: Option<crate::store::RunErrorView>,
    },
}

impl EventKind {
    /// The `type` tag, used as the SSE event name.
    pub fn name(&self) -> &'static str {
        match self {
            Self::RunStarted { .. } => "run_started",
            Self::TaskStarted { .. } => "task_started",
            Self::LlmCall { .. } => "llm_call",
            Self::ToolStarted { .. } => "tool_started",
            Self::ToolFinished { .. } => "tool_finished",
            Self::DelegationStarted { .. } => "delegation_started",
            Self::DelegationFinished { .. } => "delegation_finished",
            Self::TaskFinished { .. } => "task_finished",
            Self::RunFinished { .. } => "run_finished",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_serialize_with_type_and_camel_case_fields() {
        let e = Event {
            seq: 3,
            time: "t".into(),
            kind: EventKind::ToolStarted {
                task: 0,
                agent: "a".into(),
                tool: "http_request".into(),
                call_id: "c".into(),
                arguments: serde_json::json!({"path": "/"}),
            },
        };
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(v["type"], "tool_started");
        assert_eq!(v["callId"], "c");
        assert_eq!(v["seq"], 3);
        assert_eq!(e.kind.name(), "tool_started");
    }
}
