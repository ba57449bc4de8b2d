//! What a run is asked to do: the body of `POST /v1/runs`, and the tasks it stands for with
//! `{input}` placeholders filled in.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Most tasks one run may have.
pub const MAX_TASKS: usize = 32;
/// Longest task description accepted (characters).
pub const MAX_DESCRIPTION: usize = 100_000;

/// Used when a task names no expected output.
pub const DEFAULT_EXPECTED_OUTPUT: &str = "A complete, well-structured answer to the task.";

/// The body of `POST /v1/runs`: one task (`description`, `expectedOutput`, `agent`) or a list
/// of `tasks`, and `inputs` for `{placeholders}` in them.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RunRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_output: Option<String>,
    /// One of the crew's agents (no other is run).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tasks: Vec<TaskRequest>,
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub inputs: Map<String, Value>,
}

/// One task of a run.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TaskRequest {
    pub description: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_output: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
}

/// A task ready to run: placeholders filled.
#[derive(Clone, Debug, PartialEq)]
pub struct Task {
    pub description: String,
    pub expected_output: String,
    pub agent: Option<String>,
}

impl RunRequest {
    /// The tasks, checked and with `{input}` placeholders replaced.
    pub fn tasks(&self) -> Result<Vec<Task>, String> {
        let listed = match (&self.description, self.tasks.is_empty()) {
            (Some(_), false) => return Err("give either description (one task) or tasks, not both".into()),
            (None, true) => return Err("a run needs a description or tasks".into()),
            (Some(description), true) => vec![TaskRequest {
                description: description.clone(),
                expected_output: self.expected_output.clone(),
                agent: self.agent.clone(),
            }],
            (None, false) => {
                if self.expected_output.is_some() || self.agent.is_some() {
                    return Err("expectedOutput and agent belong inside each of tasks".into());
                }
                self.tasks.clone()
            }
        };
        if listed.len() > MAX_TASKS {
            return Err(format!("at most {MAX_TASKS} tasks per run"));
        }
        listed
            .into_iter()
            .enumerate()
            .map(|(i, t)| {
                if t.description.trim().is_empty() {
                    return Err(format!("task {i}: the description is empty"));
                }
                if t.description.len() > MAX_DESCRIPTION {
                    return Err(format!("task {i}: the description is longer than {MAX_DESCRIPTION} characters"));
                }
                Ok(Task {
                    description: interpolate(&t.description, &self.inputs),
                    expected_output: interpolate(
                        t.expected_output
                            .as_deref()
                            .filter(|e| !e.trim().is_empty())
                            .unwrap_or(DEFAULT_EXPECTED_OUTPUT),
                        &self.inputs,
                    ),
                    agent: t.agent.filter(|a| !a.is_empty()),
                })
            })
            .collect()
    }
}

/// Replaces `{name}` for each input `name` (CrewAI's kickoff inputs). Strings go in as they
/// are, other values as JSON; braces around anything else are left alone.
pub fn interpolate(text: &str, inputs: &Map<String, Value>) -> String {
    if inputs.is_empty() || !text.contains('{') {
        return text.to_string();
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let replaced = after.find('}').and_then(|close| {
            let key = &after[..close];
            inputs.get(key).map(|v| (close, v))
        });
        match replaced {
            Some((close, value)) => {
                match value {
                    Value::String(s) => out.push_str(s),
                    other => out.push_str(&other.to_string()),
                }
                rest = &after[close + 1..];
            }
            None => {
                out.push('{');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn fills_known_placeholders_only() {
        let inputs = json!({"topic": "spring sale", "n": 3}).as_object().unwrap().clone();
        assert_eq!(
            interpolate("Write {n} posts on {topic} as {\"json\": true} {unknown}", &inputs),
            "Write 3 posts on spring sale as {\"json\": true} {unknown}"
        );
    }

    #[test]
    fn one_task_or_a_list() {
        let one: RunRequest =
            serde_json::from_value(json!({"description": "d {x}", "agent": "a", "inputs": {"x": "y"}})).unwrap();
        let tasks = one.tasks().unwrap();
        assert_eq!(tasks.len(), 1);
        assert_eq!(tasks[0].description, "d y");
        assert_eq!(tasks[0].expected_output, DEFAULT_EXPECTED_OUTPUT);
        assert_eq!(tasks[0].agent.as_deref(), Some("a"));

        let list: RunRequest = serde_json::from_value(
            json!({"tasks": [{"description": "a"}, {"description": "b", "expectedOutput": "e"}]}),
        )
        .unwrap();
        assert_eq!(list.tasks().unwrap()[1].expected_output, "e");

        let both: RunRequest =
            serde_json::from_value(json!({"description": "x", "tasks": [{"description": "a"}]})).unwrap();
        assert!(both.tasks().is_err());
        assert!(RunRequest::default().tasks().is_err());
        assert!(serde_json::from_value::<RunRequest>(json!({"expected_output": "x"})).is_err());
    }
}
