//! The OpenAI chat-completions wire format, as OpenRouter and llama.cpp's server speak it.

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

/// One message of a conversation.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(tag = "role", rename_all = "lowercase")]
pub enum Message {
    System {
        content: String,
    },
    User {
        content: String,
    },
    Assistant {
        /// `null` when the assistant only calls tools.
        #[serde(default)]
        content: Option<String>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        tool_calls: Vec<ToolCall>,
    },
    Tool {
        tool_call_id: String,
        content: String,
    },
}

impl Message {
    pub fn system(content: impl Into<String>) -> Self {
        Self::System { content: content.into() }
    }
    pub fn user(content: impl Into<String>) -> Self {
        Self::User { content: content.into() }
    }
    pub fn tool(tool_call_id: impl Into<String>, content: impl Into<String>) -> Self {
        Self::Tool { tool_call_id: tool_call_id.into(), content: content.into() }
    }

    /// Characters of text in the message, for the prompt-size estimate of the budget.
    pub fn text_len(&self) -> usize {
        match self {
            Self::System { content } | Self::User { content } | Self::Tool { content, .. } => content.len(),
            Self::Assistant { content, tool_calls } => {
                content.as_deref().map_or(0, str::len)
                    + tool_calls.iter().map(|c| c.function.name.len() + c.function.arguments.len()).sum::<usize>()
            }
        }
    }
}

/// A tool call requested by the model. `arguments` is a JSON text.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct ToolCall {
    pub id: String,
    #[serde(rename = "type", default = "function_type")]
    pub kind: String,
    pub function: FunctionCall,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct FunctionCall {
    pub name: String,
    /// JSON text. Some servers send an object instead of a string; it is kept as its text.
    #[serde(default, deserialize_with = "string_or_json")]
    pub arguments: String,
}

fn function_type() -> String {
    "function".into()
}

fn string_or_json<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    Ok(match Value::deserialize(d)? {
        Value::String(s) => s,
        Value::Null => String::new(),
        other => other.to_string(),
    })
}

/// A tool offered to the model.
#[derive(Serialize, Clone, Debug, PartialEq)]
pub struct ToolDef {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub function: FunctionDef,
}

#[derive(Serialize, Clone, Debug, PartialEq)]
pub struct FunctionDef {
    pub name: String,
    pub description: String,
    /// JSON Schema of the arguments.
    pub parameters: Value,
}

impl ToolDef {
    pub fn function(name: impl Into<String>, description: impl Into<String>, parameters: Value) -> Self {
        Self {
            kind: "function",
            function: FunctionDef { name: name.into(), description: description.into(), parameters },
        }
    }
}

/// Whether the model may call tools in this request.
#[derive(Serialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ToolChoice {
    Auto,
    None,
}

/// The request body. Borrowed, so that a conversation is not copied for each call.
#[derive(Serialize, Debug)]
pub struct ChatRequest<'a> {
    pub model: &'a str,
    /// OpenRouter's fallback list: the models tried in order.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub models: Option<&'a [String]>,
    pub messages: &'a [Message],
    #[serde(skip_serializing_if = "<[ToolDef]>::is_empty")]
    pub tools: &'a [ToolDef],
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_choice: Option<ToolChoice>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub stream: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stream_options: Option<StreamOptions>,
}

#[derive(Serialize, Debug, Clone, Copy)]
pub struct StreamOptions {
    pub include_usage: bool,
}

/// Token counts as the server reports them, and the cost when the gateway reports one
/// (OpenRouter's `usage.cost`, in US dollars).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq)]
pub struct Usage {
    #[serde(default)]
    pub prompt_tokens: u64,
    #[serde(default)]
    pub completion_tokens: u64,
    #[serde(default)]
    pub total_tokens: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost: Option<f64>,
}

/// A non-streaming response (also the shape of an error body with `error`).
#[derive(Deserialize, Debug)]
pub struct ChatResponse {
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub choices: Vec<Choice>,
    #[serde(default)]
    pub usage: Option<Usage>,
    #[serde(default)]
    pub error: Option<ApiError>,
}

#[derive(Deserialize, Debug)]
pub struct Choice {
    #[serde(default)]
    pub message: ResponseMessage,
    #[serde(default)]
    pub finish_reason: Option<String>,
}

#[derive(Deserialize, Debug, Default)]
pub struct ResponseMessage {
    #[serde(default)]
    pub content: Option<String>,
    #[serde(default)]
    pub tool_calls: Option<Vec<ToolCall>>,
}

/// `{"error": {"message": ..., "code": ...}}` as OpenAI and OpenRouter send it.
#[derive(Deserialize, Debug, Default)]
pub struct ApiError {
    #[serde(default)]
    pub message: Option<String>,
    /// A number (OpenRouter: the HTTP status) or a string (OpenAI: `rate_limit_exceeded`).
    #[serde(default)]
    pub code: Option<Value>,
}

impl ApiError {
    /// The HTTP status the error stands for, when the code is one.
    pub fn status(&self) -> Option<u16> {
        match &self.code {
            Some(Value::Number(n)) => n.as_u64().and_then(|n| u16::try_from(n).ok()),
            Some(Value::String(s)) => s.parse().ok(),
            _ => None,
        }
    }
}

/// A streamed chunk.
#[derive(Deserialize, Debug)]
pub struct ChatChunk {
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub choices: Vec<ChunkChoice>,
    #[serde(default)]
    pub usage: Option<Usage>,
    #[serde(default)]
    pub error: Option<ApiError>,
}

#[derive(Deserialize, Debug)]
pub struct ChunkChoice {
    #[serde(default)]
    pub delta: Delta,
    #[serde(default)]
    pub finish_reason: Option<String>,
}

#[derive(Deserialize, Debug, Default)]
pub struct Delta {
    #[serde(default)]
    pub content: Option<String>,
    #[serde(default)]
    pub tool_calls: Option<Vec<ToolCallDelta>>,
}

#[derive(Deserialize, Debug)]
pub struct ToolCallDelta {
    #[serde(default)]
    pub index: Option<usize>,
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub function: Option<FunctionDelta>,
}

#[derive(Deserialize, Debug, Default)]
pub struct FunctionDelta {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default, deserialize_with = "opt_string_or_json")]
    pub arguments: Option<String>,
}

fn opt_string_or_json<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(match Value::deserialize(d)? {
        Value::String(s) => Some(s),
        Value::Null => None,
        other => Some(other.to_string()),
    })
}

/// What one chat call produced.
#[derive(Clone, Debug, PartialEq)]
pub struct Completion {
    /// The model that answered (as reported by the server, else the one requested).
    pub model: String,
    pub content: String,
    pub tool_calls: Vec<ToolCall>,
    pub finish_reason: Option<String>,
    pub usage: Usage,
    /// False when the server reported no usage and it was estimated from text length.
    pub usage_reported: bool,
    /// HTTP requests made, including retries and fallbacks.
    pub attempts: u32,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn messages_serialize_as_openai_expects() {
        let msgs = vec![
            Message::system("s"),
            Message::Assistant {
                content: None,
                tool_calls: vec![ToolCall {
                    id: "c1".into(),
                    kind: "function".into(),
                    function: FunctionCall { name: "f".into(), arguments: "{\"a\":1}".into() },
                }],
            },
            Message::tool("c1", "r"),
        ];
        assert_eq!(
            serde_json::to_value(&msgs).unwrap(),
            json!([
                {"role": "system", "content": "s"},
                {"role": "assistant", "content": null, "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{\"a\":1}"}}
                ]},
                {"role": "tool", "tool_call_id": "c1", "content": "r"}
            ])
        );
    }

    #[test]
    fn tool_arguments_given_as_an_object_are_kept_as_text() {
        let call: ToolCall =
            serde_json::from_value(json!({"id": "x", "function": {"name": "f", "arguments": {"a": 1}}})).unwrap();
        assert_eq!(call.function.arguments, "{\"a\":1}");
        assert_eq!(call.kind, "function");
    }

    #[test]
    fn request_omits_what_is_unset() {
        let msgs = [Message::user("hi")];
        let req = ChatRequest {
            model: "m",
            models: None,
            messages: &msgs,
            tools: &[],
            tool_choice: None,
            temperature: None,
            max_tokens: None,
            stream: false,
            stream_options: None,
        };
        assert_eq!(
            serde_json::to_value(&req).unwrap(),
            json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]})
        );
    }
}
