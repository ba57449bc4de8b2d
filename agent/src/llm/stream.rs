//! Streaming responses: a server-sent-events decoder that accepts bytes split anywhere, and
//! the assembly of chunks into one completion (content, tool calls whose `arguments` arrive
//! in fragments, usage from the final chunk).

use super::types::{ChatChunk, FunctionCall, ToolCall, Usage};

/// Splits a byte stream into SSE `data` payloads. Comment lines (`: OPENROUTER PROCESSING`)
/// and other fields are skipped; multi-line data is joined with `\n`.
#[derive(Default, Debug)]
pub struct SseDecoder {
    line: Vec<u8>,
    data: String,
    has_data: bool,
}

impl SseDecoder {
    /// Feeds bytes; complete events' data are appended to `out`.
    pub fn push(&mut self, bytes: &[u8], out: &mut Vec<String>) {
        for &b in bytes {
            if b == b'\n' {
                let mut line = std::mem::take(&mut self.line);
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                self.line_done(&line, out);
            } else {
                self.line.push(b);
            }
        }
    }

    /// Ends the stream: a last event without its blank line still counts.
    pub fn finish(&mut self, out: &mut Vec<String>) {
        if !self.line.is_empty() {
            let line = std::mem::take(&mut self.line);
            self.line_done(&line, out);
        }
        self.dispatch(out);
    }

    fn line_done(&mut self, line: &[u8], out: &mut Vec<String>) {
        if line.is_empty() {
            self.dispatch(out);
            return;
        }
        if line[0] == b':' {
            return;
        }
        let text = String::from_utf8_lossy(line);
        let (field, value) = match text.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (text.as_ref(), ""),
        };
        if field == "data" {
            if self.has_data {
                self.data.push('\n');
            }
            self.data.push_str(value);
            self.has_data = true;
        }
    }

    fn dispatch(&mut self, out: &mut Vec<String>) {
        if self.has_data {
            out.push(std::mem::take(&mut self.data));
            self.has_data = false;
        }
    }
}

#[derive(Default, Debug)]
struct PartialCall {
    id: String,
    name: String,
    arguments: String,
}

/// Outcome of one streamed event.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    More,
    /// `[DONE]`.
    Done,
}

/// An error event inside the stream.
#[derive(Debug, PartialEq, Eq)]
pub struct StreamError {
    pub status: Option<u16>,
    pub message: String,
}

/// Builds a completion from streamed chunks.
#[derive(Default, Debug)]
pub struct Assembler {
    pub model: Option<String>,
    pub content: String,
    calls: Vec<PartialCall>,
    pub finish_reason: Option<String>,
    pub usage: Option<Usage>,
}

impl Assembler {
    /// Applies one event's data.
    pub fn push(&mut self, data: &str) -> Result<Step, StreamError> {
        let data = data.trim();
        if data == "[DONE]" {
            return Ok(Step::Done);
        }
        if data.is_empty() {
            return Ok(Step::More);
        }
        let chunk: ChatChunk = serde_json::from_str(data)
            .map_err(|e| StreamError { status: None, message: format!("unparsable chunk: {e}") })?;
        if let Some(err) = chunk.error {
            return Err(StreamError {
                status: err.status(),
                message: err.message.unwrap_or_else(|| "error event in the stream".into()),
            });
        }
        if self.model.is_none() {
            self.model = chunk.model.filter(|m| !m.is_empty());
        }
        if let Some(usage) = chunk.usage {
            self.usage = Some(usage);
        }
        for choice in chunk.choices {
            if let Some(text) = choice.delta.content {
                self.content.push_str(&text);
            }
            for delta in choice.delta.tool_calls.unwrap_or_default() {
                let index = match delta.index {
                    Some(i) => i,
                    // Without an index: a new call when it brings an id, else the last one.
                    None if delta.id.as_deref().is_some_and(|id| !id.is_empty()) || self.calls.is_empty() => {
                        self.calls.len()
                    }
                    None => self.calls.len() - 1,
                };
                if index > self.calls.len() + 64 {
                    return Err(StreamError { status: None, message: format!("tool call index {index} out of range") });
                }
                while self.calls.len() <= index {
                    self.calls.push(PartialCall::default());
                }
                let call = &mut self.calls[index];
                if let Some(id) = delta.id.filter(|id| !id.is_empty()) {
                    call.id = id;
                }
                if let Some(f) = delta.function {
                    if let Some(name) = f.name {
                        call.name.push_str(&name);
                    }
                    if let Some(args) = f.arguments {
                        call.arguments.push_str(&args);
                    }
                }
            }
            if let Some(reason) = choice.finish_reason {
                self.finish_reason = Some(reason);
            }
        }
        Ok(Step::More)
    }

    /// The assembled tool calls (calls without a name are dropped; missing ids are made up).
    pub fn tool_calls(&mut self) -> Vec<ToolCall> {
        std::mem::take(&mut self.calls)
            .into_iter()
            .enumerate()
            .filter(|(_, c)| !c.name.is_empty())
            .map(|(i, c)| ToolCall {
                id: if c.id.is_empty() { format!("call_{i}") } else { c.id },
                kind: "function".into(),
                function: FunctionCall { name: c.name, arguments: c.arguments },
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn decode_all(input: &[u8], split_every: usize) -> Vec<String> {
        let mut d = SseDecoder::default();
        let mut out = Vec::new();
        for part in input.chunks(split_every) {
            d.push(part, &mut out);
        }
        d.finish(&mut out);
        out
    }

    #[test]
    fn decodes_events_split_at_any_byte() {
        let input =
            ": OPENROUTER PROCESSING\n\ndata: {\"a\":\"é\"}\r\n\r\nevent: x\ndata: l1\ndata: l2\n\ndata: [DONE]";
        for split in 1..input.len() {
            assert_eq!(decode_all(input.as_bytes(), split), vec!["{\"a\":\"é\"}", "l1\nl2", "[DONE]"], "split {split}");
        }
    }

    #[test]
    fn assembles_fragmented_tool_call_arguments() {
        let chunks = [
            json!({"model": "m-1", "choices": [{"delta": {"role": "assistant", "content": ""}}]}),
            json!({"choices": [{"delta": {"tool_calls": [{"index": 0, "id": "call_a", "type": "function", "function": {"name": "http_", "arguments": ""}}]}}]}),
            json!({"choices": [{"delta": {"tool_calls": [{"index": 0, "function": {"name": "request", "arguments": "{\"pa"}}]}}]}),
            json!({"choices": [{"delta": {"tool_calls": [{"index": 1, "id": "call_b", "function": {"name": "memory_search", "arguments": "{\"query\""}}]}}]}),
            json!({"choices": [{"delta": {"tool_calls": [{"index": 0, "function": {"arguments": "th\":\"/x\"}"}}]}}]}),
            json!({"choices": [{"delta": {"tool_calls": [{"index": 1, "function": {"arguments": ":\"q\"}"}}]}, "finish_reason": "tool_calls"}]}),
            json!({"choices": [], "usage": {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}}),
        ];
        let mut a = Assembler::default();
        for c in &chunks {
            assert_eq!(a.push(&c.to_string()).unwrap(), Step::More);
        }
        assert_eq!(a.push("[DONE]").unwrap(), Step::Done);
        let calls = a.tool_calls();
        assert_eq!(calls.len(), 2);
        assert_eq!((calls[0].id.as_str(), calls[0].function.name.as_str()), ("call_a", "http_request"));
        assert_eq!(calls[0].function.arguments, "{\"path\":\"/x\"}");
        assert_eq!(calls[1].function.arguments, "{\"query\":\"q\"}");
        assert_eq!(a.usage.unwrap().total_tokens, 18);
        assert_eq!(a.model.as_deref(), Some("m-1"));
        assert_eq!(a.finish_reason.as_deref(), Some("tool_calls"));
    }

    #[test]
    fn an_error_event_fails_the_stream() {
        let mut a = Assembler::default();
        let err = a.push(r#"{"error": {"code": 502, "message": "provider down"}}"#).unwrap_err();
        assert_eq!(err, StreamError { status: Some(502), message: "provider down".into() });
    }
}
