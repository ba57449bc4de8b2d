//! A scripted OpenAI-compatible server on loopback, for the tests and the benchmark.
//!
//! `POST …/chat/completions` answers with the next [`Reply`] of the script (then the repeated
//! reply, else a 500 saying the script ran out); every other request is echoed back as JSON
//! (method, path, query, headers, body), which makes the server an Integration target too.
//! Requests are recorded so that tests can check headers, bodies and message histories.

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// One scripted answer.
#[derive(Clone, Debug)]
pub enum Reply {
    /// A JSON body with a status and extra headers.
    Json { status: u16, body: Value, headers: Vec<(String, String)> },
    /// `text/event-stream`: the pieces are written as they are, one body chunk each (so a
    /// piece may end in the middle of an event or a line), `delay` apart.
    Stream { pieces: Vec<String>, delay: Duration },
    /// Waits before answering.
    Delay { delay: Duration, reply: Box<Reply> },
}

fn usage(prompt: u64, completion: u64) -> Value {
    json!({"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion})
}

impl Reply {
    /// A chat completion with text.
    pub fn text(content: &str, prompt_tokens: u64, completion_tokens: u64) -> Self {
        Self::completion(json!({"role": "assistant", "content": content}), "stop", prompt_tokens, completion_tokens)
    }

    /// A chat completion calling tools: `(id, name, arguments)`.
    pub fn tool_calls(calls: &[(&str, &str, Value)], prompt_tokens: u64, completion_tokens: u64) -> Self {
        let calls: Vec<Value> = calls
            .iter()
            .map(|(id, name, args)| {
                json!({"id": id, "type": "function", "function": {"name": name, "arguments": args.to_string()}})
            })
            .collect();
        Self::completion(
            json!({"role": "assistant", "content": null, "tool_calls": calls}),
            "tool_calls",
            prompt_tokens,
            completion_tokens,
        )
    }

    fn completion(message: Value, finish_reason: &str, prompt: u64, completion: u64) -> Self {
        Self::Json {
            status: 200,
            body: json!({
                "id": "chatcmpl-stub",
                "object": "chat.completion",
                "model": "stub-model",
                "choices": [{"index": 0, "message": message, "finish_reason": finish_reason}],
                "usage": usage(prompt, completion),
            }),
            headers: Vec::new(),
        }
    }

    /// An error status with an OpenAI-style error body.
    pub fn error(status: u16, message: &str) -> Self {
        Self::Json { status, body: json!({"error": {"message": message, "code": status}}), headers: Vec::new() }
    }

    /// 429 with `Retry-After`.
    pub fn rate_limited(retry_after: &str) -> Self {
        Self::error(429, "rate limited").with_header("retry-after", retry_after)
    }

    /// Streamed text in `parts` deltas, usage in a final chunk, `[DONE]`.
    pub fn stream_text(content: &str, parts: usize, prompt_tokens: u64, completion_tokens: u64) -> Self {
        let mut events =
            vec![json!({"model": "stub-model", "choices": [{"index": 0, "delta": {"role": "assistant"}}]})];
        for piece in split(content, parts) {
            events.push(json!({"choices": [{"index": 0, "delta": {"content": piece}}]}));
        }
        events.push(json!({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}));
        events.push(json!({"choices": [], "usage": usage(prompt_tokens, completion_tokens)}));
        Self::sse(&events, 0)
    }

    /// A streamed tool call whose arguments arrive in `parts` fragments, with the SSE text
    /// itself cut into pieces of `cut` bytes (0: one piece per event).
    pub fn stream_tool_call(
        id: &str,
        name: &str,
        arguments: &Value,
        parts: usize,
        cut: usize,
        prompt_tokens: u64,
        completion_tokens: u64,
    ) -> Self {
        let args = arguments.to_string();
        let mut events = vec![
            json!({"model": "stub-model", "choices": [{"index": 0, "delta": {"role": "assistant", "content": null,
            "tool_calls": [{"index": 0, "id": id, "type": "function", "function": {"name": name, "arguments": ""}}]}}]}),
        ];
        for piece in split(&args, parts) {
            events.push(json!({"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}}]}));
        }
        events.push(json!({"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]}));
        events.push(json!({"choices": [], "usage": usage(prompt_tokens, completion_tokens)}));
        Self::sse(&events, cut)
    }

    /// SSE text of `events` and `[DONE]`, with an OpenRouter-style comment first, in pieces of
    /// about `cut` bytes (on character boundaries; 0: one piece per event).
    pub fn sse(events: &[Value], cut: usize) -> Self {
        let mut text = String::from(": OPENROUTER PROCESSING\n\n");
        for e in events {
            text.push_str(&format!("data: {e}\n\n"));
        }
        text.push_str("data: [DONE]\n\n");
        let pieces = if cut == 0 {
            text.split_inclusive("\n\n").map(str::to_string).collect()
        } else {
            let mut pieces = vec![String::new()];
            for c in text.chars() {
                if pieces.last().is_some_and(|p| p.len() >= cut) {
                    pieces.push(String::new());
                }
                pieces.last_mut().expect("not empty").push(c);
            }
            pieces
        };
        Self::Stream { pieces, delay: Duration::ZERO }
    }

    pub fn with_header(mut self, name: &str, value: &str) -> Self {
        if let Self::Json { headers, .. } = &mut self {
            headers.push((name.into(), value.into()));
        }
        self
    }

    pub fn delayed(self, delay: Duration) -> Self {
        Self::Delay { delay, reply: Box::new(self) }
    }
}

/// `text` in `parts` pieces of about equal length (on char boundaries).
fn split(text: &str, parts: usize) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    let size = chars.len().div_ceil(parts.max(1)).max(1);
    chars.chunks(size).map(|c| c.iter().collect()).collect()
}

/// A recorded request.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    pub headers: HeaderMap,
    /// The body as JSON, or as a JSON string when it is not JSON.
    pub body: Value,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

type Responder = Box<dyn Fn(&Recorded) -> Reply + Send + Sync>;

#[derive(Default)]
struct StubState {
    script: VecDeque<Reply>,
    repeat: Option<Reply>,
    responder: Option<Responder>,
    recording: bool,
    requests: Vec<Recorded>,
}

/// The running stub server; stops when dropped.
pub struct StubServer {
    addr: SocketAddr,
    state: Arc<Mutex<StubState>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for StubServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl StubServer {
    /// Starts on 127.0.0.1 with an empty script, recording requests.
    pub async fn start() -> Self {
        let state = Arc::new(Mutex::new(StubState { recording: true, ..Default::default() }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local address");
        let app = {
            let state = state.clone();
            axum::Router::new().fallback(move |req: Request| handle(state.clone(), req))
        };
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { addr, state, task }
    }

    /// Starts with a script.
    pub async fn with_script(replies: impl IntoIterator<Item = Reply>) -> Self {
        let stub = Self::start().await;
        for r in replies {
            stub.push(r);
        }
        stub
    }

    fn state(&self) -> std::sync::MutexGuard<'_, StubState> {
        self.state.lock().expect("stub state lock")
    }

    pub fn push(&self, reply: Reply) {
        self.state().script.push_back(reply);
    }

    /// The reply once the script is used up.
    pub fn repeat(&self, reply: Reply) {
        self.state().repeat = Some(reply);
    }

    /// Decides replies by request (after the script is used up, before `repeat`).
    pub fn respond_with(&self, f: impl Fn(&Recorded) -> Reply + Send + Sync + 'static) {
        self.state().responder = Some(Box::new(f));
    }

    pub fn set_recording(&self, on: bool) {
        self.state().recording = on;
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The OpenAI base URL, `http://127.0.0.1:<port>/v1`.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.state().requests.clone()
    }

    /// Recorded chat-completion requests.
    pub fn chat_requests(&self) -> Vec<Recorded> {
        self.requests().into_iter().filter(|r| r.path.ends_with("/chat/completions")).collect()
    }

    /// Replies of the script not used yet.
    pub fn remaining(&self) -> usize {
        self.state().script.len()
    }
}

async fn handle(state: Arc<Mutex<StubState>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let bytes = axum::body::to_bytes(body, 16 << 20).await.unwrap_or_default();
    let body = serde_json::from_slice(&bytes).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()));
    let recorded = Recorded {
        method: parts.method.to_string(),
        path: parts.uri.path().to_string(),
        query: parts.uri.query().map(str::to_string),
        headers: parts.headers,
        body,
    };
    let is_chat = recorded.method == "POST" && recorded.path.ends_with("/chat/completions");
    let reply = {
        let mut s = state.lock().expect("stub state lock");
        let reply = if is_chat {
            s.script
                .pop_front()
                .or_else(|| s.responder.as_ref().map(|f| f(&recorded)))
                .or_else(|| s.repeat.clone())
                .unwrap_or_else(|| Reply::error(500, "stub script exhausted"))
        } else {
            echo(&recorded)
        };
        if s.recording {
            s.requests.push(recorded);
        }
        reply
    };
    respond(reply).await
}

fn echo(r: &Recorded) -> Reply {
    let headers: serde_json::Map<String, Value> =
        r.headers.iter().map(|(k, v)| (k.to_string(), Value::String(v.to_str().unwrap_or("").to_string()))).collect();
    Reply::Json {
        status: 200,
        body: json!({"method": r.method, "path": r.path, "query": r.query, "headers": headers, "body": r.body}),
        headers: Vec::new(),
    }
}

async fn respond(reply: Reply) -> Response {
    let mut reply = reply;
    while let Reply::Delay { delay, reply: inner } = reply {
        tokio::time::sleep(delay).await;
        reply = *inner;
    }
    match reply {
        Reply::Json { status, body, headers } => {
            let mut response =
                (StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR), axum::Json(body))
                    .into_response();
            for (k, v) in headers {
                if let (Ok(name), Ok(value)) =
                    (axum::http::HeaderName::from_bytes(k.as_bytes()), HeaderValue::from_str(&v))
                {
                    response.headers_mut().insert(name, value);
                }
            }
            response
        }
        Reply::Stream { pieces, delay } => {
            let stream = futures::stream::unfold(pieces.into_iter(), move |mut it| async move {
                let piece = it.next()?;
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                Some((Ok::<_, std::convert::Infallible>(piece), it))
            });
            Response::builder()
                .header("content-type", "text/event-stream")
                .header("cache-control", "no-cache")
                .body(Body::from_stream(stream))
                .expect("static response parts")
        }
        Reply::Delay { .. } => unreachable!("unwrapped above"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_keeps_everything() {
        assert_eq!(split("abcdefg", 3), ["abc", "def", "g"]);
        assert_eq!(split("", 3), Vec::<String>::new());
        assert_eq!(split("héllo", 10).concat(), "héllo");
    }
}
