//! Tools the agents may call: `http_request` through an Integration ([`http`]),
//! `memory_save` / `memory_search` in the tenant database ([`memory`]), and the delegation
//! tools ([`delegation`], executed by the engine because they run other agents).
//!
//! A tool error is not a run error: its message goes back to the model as the tool result,
//! so that the model can correct its call.

pub mod delegation;
pub mod http;
pub mod memory;

use serde_json::Value;

#[derive(Debug, Clone, thiserror::Error)]
pub enum ToolError {
    #[error("invalid arguments: {0}")]
    InvalidArguments(String),
    #[error("unknown tool {0:?}")]
    UnknownTool(String),
    #[error("{0}")]
    NotAllowed(String),
    #[error("request failed: {0}")]
    Http(String),
    #[error("memory is unavailable: {0}")]
    Database(String),
}

impl ToolError {
    pub fn category(&self) -> &'static str {
        match self {
            Self::InvalidArguments(_) => "invalid_arguments",
            Self::UnknownTool(_) => "unknown_tool",
            Self::NotAllowed(_) => "not_allowed",
            Self::Http(_) => "http_error",
            Self::Database(_) => "database_error",
        }
    }
}

/// Parses a tool call's JSON arguments into an object (an empty text counts as `{}`).
pub fn parse_arguments(arguments: &str) -> Result<serde_json::Map<String, Value>, ToolError> {
    if arguments.trim().is_empty() {
        return Ok(serde_json::Map::new());
    }
    match serde_json::from_str::<Value>(arguments) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(ToolError::InvalidArguments("the arguments must be a JSON object".into())),
        Err(e) => Err(ToolError::InvalidArguments(format!("the arguments are not valid JSON ({e})"))),
    }
}

/// A required string argument.
pub fn required_str<'a>(args: &'a serde_json::Map<String, Value>, name: &str) -> Result<&'a str, ToolError> {
    match args.get(name) {
        Some(Value::String(s)) if !s.trim().is_empty() => Ok(s),
        Some(Value::String(_)) | None => Err(ToolError::InvalidArguments(format!("{name:?} is required"))),
        Some(_) => Err(ToolError::InvalidArguments(format!("{name:?} must be a string"))),
    }
}

/// An optional string argument.
pub fn optional_str<'a>(args: &'a serde_json::Map<String, Value>, name: &str) -> Result<Option<&'a str>, ToolError> {
    match args.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(ToolError::InvalidArguments(format!("{name:?} must be a string"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_must_be_an_object() {
        assert!(parse_arguments("").unwrap().is_empty());
        assert!(parse_arguments("{\"a\":1}").unwrap().contains_key("a"));
        assert_eq!(parse_arguments("[1]").unwrap_err().category(), "invalid_arguments");
        assert!(parse_arguments("{\"a\":").unwrap_err().to_string().contains("not valid JSON"));
        let args = parse_arguments("{\"a\":\"x\",\"b\":1,\"c\":\" \"}").unwrap();
        assert_eq!(required_str(&args, "a").unwrap(), "x");
        assert!(required_str(&args, "b").is_err());
        assert!(required_str(&args, "c").is_err());
        assert!(required_str(&args, "d").is_err());
    }
}
