//! The delegation tools of CrewAI: `delegate_work` (hand a task to a coworker) and
//! `ask_question` (ask a coworker). Offered to the manager of a Hierarchical crew and to agents
//! with `allowDelegation`; the engine runs the coworker and returns its answer as the result.

use super::{ToolError, optional_str, required_str};
use crate::config::tool_names::{ASK_QUESTION, DELEGATE_WORK};
use crate::llm::ToolDef;
use serde_json::{Map, Value, json};

/// A coworker as the tools describe it.
#[derive(Clone, Debug)]
pub struct Coworker {
    pub name: String,
    pub role: String,
}

/// What the model asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delegation {
    /// The coworker's agent name.
    pub coworker: String,
    /// `true` for `ask_question`.
    pub question: bool,
    /// The task or the question.
    pub request: String,
    pub context: String,
}

fn roster(coworkers: &[Coworker]) -> String {
    coworkers.iter().map(|c| format!("{} ({})", c.name, c.role)).collect::<Vec<_>>().join(", ")
}

/// Both tool definitions for a set of coworkers.
pub fn specs(coworkers: &[Coworker]) -> [ToolDef; 2] {
    let names: Vec<&str> = coworkers.iter().map(|c| c.name.as_str()).collect();
    let roster = roster(coworkers);
    [
        ToolDef::function(
            DELEGATE_WORK,
            format!(
                "Delegate a specific task to one of the following coworkers: {roster}. Give the coworker, the task \
                 and ALL the context needed to do it: they know nothing about the task, so share everything you \
                 know and explain instead of referring to things."
            ),
            json!({
                "type": "object",
                "properties": {
                    "coworker": {"type": "string", "enum": names, "description": "Name of the coworker"},
                    "task": {"type": "string", "description": "The task to delegate"},
                    "context": {"type": "string", "description": "Everything the coworker needs to know"}
                },
                "required": ["coworker", "task", "context"],
                "additionalProperties": false
            }),
        ),
        ToolDef::function(
            ASK_QUESTION,
            format!(
                "Ask a specific question to one of the following coworkers: {roster}. Give the coworker, the \
                 question and ALL the context needed to answer it: they know nothing about it."
            ),
            json!({
                "type": "object",
                "properties": {
                    "coworker": {"type": "string", "enum": names, "description": "Name of the coworker"},
                    "question": {"type": "string", "description": "The question"},
                    "context": {"type": "string", "description": "Everything the coworker needs to know"}
                },
                "required": ["coworker", "question", "context"],
                "additionalProperties": false
            }),
        ),
    ]
}

/// Reads a delegation call. The coworker is matched by name, or by role as CrewAI does,
/// ignoring case and surrounding quotes.
pub fn parse(tool: &str, args: &Map<String, Value>, coworkers: &[Coworker]) -> Result<Delegation, ToolError> {
    let question = tool == ASK_QUESTION;
    let wanted = required_str(args, "coworker")?.trim().trim_matches('"').trim();
    let coworker = coworkers
        .iter()
        .find(|c| c.name.eq_ignore_ascii_case(wanted))
        .or_else(|| coworkers.iter().find(|c| c.role.eq_ignore_ascii_case(wanted)))
        .ok_or_else(|| {
            ToolError::InvalidArguments(format!(
                "there is no coworker {wanted:?}; choose one of: {}",
                coworkers.iter().map(|c| c.name.as_str()).collect::<Vec<_>>().join(", ")
            ))
        })?;
    let request = required_str(args, if question { "question" } else { "task" })?;
    let context = optional_str(args, "context")?.unwrap_or("");
    Ok(Delegation { coworker: coworker.name.clone(), question, request: request.into(), context: context.into() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coworkers_are_found_by_name_or_role() {
        let cw = vec![
            Coworker { name: "seo".into(), role: "Senior SEO strategist".into() },
            Coworker { name: "writer".into(), role: "Copywriter".into() },
        ];
        let args = |v: Value| v.as_object().unwrap().clone();
        let d = parse(DELEGATE_WORK, &args(json!({"coworker": "Writer", "task": "t", "context": "c"})), &cw).unwrap();
        assert_eq!(
            d,
            Delegation { coworker: "writer".into(), question: false, request: "t".into(), context: "c".into() }
        );
        let d = parse(ASK_QUESTION, &args(json!({"coworker": "senior seo strategist", "question": "q"})), &cw).unwrap();
        assert_eq!((d.coworker.as_str(), d.question), ("seo", true));
        let err = parse(DELEGATE_WORK, &args(json!({"coworker": "ceo", "task": "t"})), &cw).unwrap_err();
        assert!(err.to_string().contains("choose one of: seo, writer"));
        let [delegate, _ask] = specs(&cw);
        assert_eq!(delegate.function.parameters["properties"]["coworker"]["enum"], json!(["seo", "writer"]));
    }
}
