//! The chat-completions client: one model configuration (endpoint, key, model, fallbacks),
//! retries with backoff and `Retry-After`, fallbacks, streaming, OpenRouter's attribution
//! headers and `models` list.

use super::error::LlmError;
use super::stream::{Assembler, SseDecoder, Step};
use super::types::{ChatRequest, ChatResponse, Completion, Message, StreamOptions, ToolChoice, ToolDef, Usage};
use crate::metrics::Metrics;
use crate::secret::{Redactor, Secret};
use bizosaas_crds::crew_config::ModelConfig;
use futures::StreamExt;
use reqwest::header::{self, HeaderMap, HeaderName, HeaderValue};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tracing::Instrument as _;

/// How failed requests are retried.
#[derive(Clone, Debug)]
pub struct RetryPolicy {
    /// Retries after the first attempt (per model).
    pub max_retries: u32,
    /// Delay before the first retry; doubles each time, with ±20 % jitter.
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    /// A `Retry-After` longer than this fails the request instead of waiting.
    pub max_retry_after: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_retries: 3,
            initial_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(20),
            max_retry_after: Duration::from_secs(60),
        }
    }
}

/// OpenRouter's app attribution (`HTTP-Referer`, `X-Title`).
#[derive(Clone, Debug)]
pub struct Attribution {
    pub referer: String,
    pub title: String,
}

impl Default for Attribution {
    fn default() -> Self {
        Self { referer: "https://bizosaas.io".into(), title: "BizOSaaS".into() }
    }
}

/// Settings shared by the clients of a runtime.
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// Whole request without streaming; time to the response headers and between chunks
    /// with streaming.
    pub request_timeout: Duration,
    pub retry: RetryPolicy,
    /// Ask for streamed responses (with usage in the last chunk).
    pub stream: bool,
    pub attribution: Attribution,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            request_timeout: Duration::from_secs(120),
            retry: RetryPolicy::default(),
            stream: false,
            attribution: Attribution::default(),
        }
    }
}

/// The HTTP client for model gateways: pooled connections, TCP_NODELAY, a connect timeout.
pub fn http_client() -> reqwest::Client {
    crate::install_crypto_provider();
    reqwest::Client::builder()
        .user_agent(concat!("bizosaas-agent/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(Duration::from_secs(10))
        .tcp_nodelay(true)
        .pool_idle_timeout(Duration::from_secs(60))
        .build()
        .expect("the HTTP client configuration is static")
}

/// One call's input.
#[derive(Clone, Copy, Debug)]
pub struct ChatInput<'a> {
    pub messages: &'a [Message],
    pub tools: &'a [ToolDef],
    pub tool_choice: Option<ToolChoice>,
    /// Lower bound on `max_tokens` besides the model's own (the remaining run budget).
    pub max_tokens_cap: Option<u32>,
}

impl<'a> ChatInput<'a> {
    pub fn new(messages: &'a [Message]) -> Self {
        Self { messages, tools: &[], tool_choice: None, max_tokens_cap: None }
    }
}

/// A client for one model configuration.
#[derive(Clone)]
pub struct ChatClient {
    http: reqwest::Client,
    endpoint: String,
    headers: HeaderMap,
    model: String,
    /// `model` followed by the fallbacks.
    candidates: Vec<String>,
    openrouter: bool,
    temperature: Option<f64>,
    max_tokens: Option<u32>,
    options: ClientOptions,
    redactor: Redactor,
    metrics: Option<Arc<Metrics>>,
    /// `server.address` / `server.port` of the endpoint, for the model call spans.
    server: (String, Option<u16>),
}

impl std::fmt::Debug for ChatClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatClient").field("endpoint", &self.endpoint).field("model", &self.model).finish()
    }
}

impl ChatClient {
    pub fn new(
        http: reqwest::Client,
        config: &ModelConfig,
        api_key: Option<Secret>,
        options: ClientOptions,
        metrics: Option<Arc<Metrics>>,
    ) -> Result<Self, String> {
        let endpoint = format!("{}/chat/completions", config.base_url.trim_end_matches('/'));
        reqwest::Url::parse(&endpoint).map_err(|e| format!("invalid base URL: {e}"))?;
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if options.stream {
            headers.insert(header::ACCEPT, HeaderValue::from_static("text/event-stream"));
        }
        if let Some(key) = &api_key {
            let mut value = HeaderValue::from_str(&format!("Bearer {}", key.expose()))
                .map_err(|_| "the API key contains characters not allowed in a header".to_string())?;
            value.set_sensitive(true);
            headers.insert(header::AUTHORIZATION, value);
        }
        if config.openrouter {
            let a = &options.attribution;
            let referer =
                HeaderValue::from_str(&a.referer).map_err(|_| "the attribution referer is not a header value")?;
            let title = HeaderValue::from_str(&a.title).map_err(|_| "the attribution title is not a header value")?;
            headers.insert(HeaderName::from_static("http-referer"), referer);
            headers.insert(HeaderName::from_static("x-title"), title);
        }
        let mut candidates = vec![config.model.clone()];
        candidates.extend(config.fallbacks.iter().filter(|f| **f != config.model).cloned());
        Ok(Self {
            http,
            headers,
            model: config.model.clone(),
            candidates,
            openrouter: config.openrouter,
            temperature: config.temperature,
            max_tokens: config.max_tokens.and_then(|t| u32::try_from(t).ok()),
            options,
            redactor: Redactor::new(api_key),
            metrics,
            server: crate::telemetry::server_of(&endpoint),
            endpoint,
        })
    }

    /// The primary model.
    pub fn model(&self) -> &str {
        &self.model
    }

    /// The model configuration's `maxTokens`.
    pub fn max_tokens(&self) -> Option<u32> {
        self.max_tokens
    }

    /// Sends one chat completion: retried on 429/5xx/timeouts, then (without OpenRouter, which
    /// falls back itself from the `models` list) the fallback models in order.
    pub async fn chat(&self, input: ChatInput<'_>) -> Result<Completion, LlmError> {
        let mut attempts = 0;
        let tried: &[String] = if self.openrouter { &self.candidates[..1] } else { &self.candidates };
        let mut last = None;
        for (i, model) in tried.iter().enumerate() {
            match self.chat_with_retries(model, &input, &mut attempts).await {
                Ok(mut completion) => {
                    completion.attempts = attempts;
                    return Ok(completion);
                }
                Err(e) if e.allows_fallback() && i + 1 < tried.len() => {
                    tracing::warn!(model, next = %tried[i + 1], category = e.category(), "model failed; trying the next fallback");
                    if let Some(m) = &self.metrics {
                        m.llm_fallback(model);
                    }
                    last = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        Err(last.expect("at least one model is tried"))
    }

    /// One model's chat completion with its retries, as a client span following the GenAI
    /// semantic conventions: model, server, token usage and finish reason; never the
    /// messages, the completion or a header.
    async fn chat_with_retries(
        &self,
        model: &str,
        input: &ChatInput<'_>,
        attempts: &mut u32,
    ) -> Result<Completion, LlmError> {
        let span = tracing::info_span!(
            "llm",
            otel.name = %format!("chat {model}"),
            otel.kind = "client",
            gen_ai.operation.name = "chat",
            gen_ai.provider.name = if self.openrouter { "openrouter" } else { "openai" },
            gen_ai.request.model = %model,
            gen_ai.request.temperature = self.temperature,
            gen_ai.request.max_tokens = tracing::field::Empty,
            server.address = %self.server.0,
            server.port = self.server.1.map(i64::from),
            gen_ai.response.model = tracing::field::Empty,
            gen_ai.response.finish_reasons = tracing::field::Empty,
            gen_ai.usage.input_tokens = tracing::field::Empty,
            gen_ai.usage.output_tokens = tracing::field::Empty,
            bizosaas.llm.attempts = tracing::field::Empty,
            error.type = tracing::field::Empty,
            otel.status_code = tracing::field::Empty,
        );
        let before = *attempts;
        let result = self.chat_with_retries_in_span(model, input, attempts, &span).instrument(span.clone()).await;
        span.record("bizosaas.llm.attempts", i64::from(*attempts - before));
        match &result {
            Ok(c) => {
                span.record("gen_ai.response.model", c.model.as_str());
                span.record("gen_ai.usage.input_tokens", crate::telemetry::int(c.usage.prompt_tokens));
                span.record("gen_ai.usage.output_tokens", crate::telemetry::int(c.usage.completion_tokens));
                if let Some(reason) = &c.finish_reason {
                    span.record("gen_ai.response.finish_reasons", reason.as_str());
                }
            }
            Err(e) => {
                span.record("error.type", e.category());
                span.record("otel.status_code", "ERROR");
            }
        }
        result
    }

    async fn chat_with_retries_in_span(
        &self,
        model: &str,
        input: &ChatInput<'_>,
        attempts: &mut u32,
        span: &tracing::Span,
    ) -> Result<Completion, LlmError> {
        let max_tokens = match (self.max_tokens, input.max_tokens_cap) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let models = (self.openrouter && self.candidates.len() > 1).then_some(self.candidates.as_slice());
        let request = ChatRequest {
            model,
            models,
            messages: input.messages,
            tools: input.tools,
            tool_choice: if input.tools.is_empty() { None } else { input.tool_choice },
            temperature: self.temperature,
            max_tokens,
            stream: self.options.stream,
            stream_options: self.options.stream.then_some(StreamOptions { include_usage: true }),
        };
        if let Some(max) = max_tokens {
            span.record("gen_ai.request.max_tokens", i64::from(max));
        }
        let body = serde_json::to_vec(&request).map_err(|e| LlmError::InvalidResponse {
            model: model.into(),
            message: format!("request encoding: {e}"),
        })?;
        let prompt_chars: usize = input.messages.iter().map(Message::text_len).sum();
        let policy = &self.options.retry;
        let mut retry = 0;
        loop {
            *attempts += 1;
            let started = Instant::now();
            let result = self.send_once(model, body.clone(), prompt_chars).await;
            if let Some(m) = &self.metrics {
                let outcome = result.as_ref().map_or_else(|e| e.category(), |_| "ok");
                m.llm_request(model, outcome, started.elapsed());
            }
            let err = match result {
                Ok(completion) => return Ok(completion),
                Err(e) => e,
            };
            if !err.is_retryable() || retry >= policy.max_retries {
                return Err(err);
            }
            let delay = match err.retry_after() {
                Some(after) if after > policy.max_retry_after => return Err(err),
                Some(after) => after,
                None => backoff(policy, retry),
            };
            retry += 1;
            tracing::info!(
                model,
                category = err.category(),
                retry,
                delay_ms = delay.as_millis() as u64,
                "retrying the model request"
            );
            if let Some(m) = &self.metrics {
                m.llm_retry(model, err.category());
            }
            tokio::time::sleep(delay).await;
        }
    }

    async fn send_once(&self, model: &str, body: Vec<u8>, prompt_chars: usize) -> Result<Completion, LlmError> {
        let timeout = self.options.request_timeout;
        let mut headers = self.headers.clone();
        // W3C trace context of the model call's span, so the gateway's spans join the trace.
        crate::telemetry::inject_from(&tracing::Span::current(), &mut headers);
        let mut request = self.http.post(&self.endpoint).headers(headers).body(body);
        if !self.options.stream {
            request = request.timeout(timeout);
        }
        let response = match tokio::time::timeout(timeout, request.send()).await {
            Err(_) => return Err(LlmError::Timeout { model: model.into(), after: timeout }),
            Ok(Err(e)) => return Err(self.transport_error(model, e)),
            Ok(Ok(r)) => r,
        };
        let status = response.status();
        if !status.is_success() {
            let retry_after = retry_after(response.headers(), SystemTime::now());
            let body = match tokio::time::timeout(timeout, response.bytes()).await {
                Ok(Ok(b)) => b.to_vec(),
                _ => Vec::new(),
            };
            return Err(LlmError::Status {
                status: status.as_u16(),
                model: model.into(),
                message: self.error_message(&body),
                retry_after,
            });
        }
        let is_stream = response
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream"));
        if is_stream {
            self.read_stream(model, response, prompt_chars).await
        } else {
            let bytes = match tokio::time::timeout(timeout, response.bytes()).await {
                Err(_) => return Err(LlmError::Timeout { model: model.into(), after: timeout }),
                Ok(Err(e)) => return Err(self.transport_error(model, e)),
                Ok(Ok(b)) => b,
            };
            self.parse_response(model, &bytes, prompt_chars)
        }
    }

    fn parse_response(&self, model: &str, bytes: &[u8], prompt_chars: usize) -> Result<Completion, LlmError> {
        let invalid = |m: String| LlmError::InvalidResponse { model: model.into(), message: m };
        let parsed: ChatResponse =
            serde_json::from_slice(bytes).map_err(|e| invalid(format!("not a chat completion ({e})")))?;
        if let Some(err) = parsed.error {
            return Err(LlmError::Status {
                status: err.status().unwrap_or(502),
                model: model.into(),
                message: self.redactor.redact(&clip(err.message.as_deref().unwrap_or(""), 500)),
                retry_after: None,
            });
        }
        let choice = parsed.choices.into_iter().next().ok_or_else(|| invalid("no choices".into()))?;
        let content = choice.message.content.unwrap_or_default();
        let tool_calls = choice.message.tool_calls.unwrap_or_default();
        let (usage, usage_reported) = match parsed.usage {
            Some(u) => (complete(u), true),
            None => (estimate(prompt_chars, &content, &tool_calls), false),
        };
        Ok(Completion {
            model: parsed.model.filter(|m| !m.is_empty()).unwrap_or_else(|| model.into()),
            content,
            tool_calls,
            finish_reason: choice.finish_reason,
            usage,
            usage_reported,
            attempts: 0,
        })
    }

    async fn read_stream(
        &self,
        model: &str,
        response: reqwest::Response,
        prompt_chars: usize,
    ) -> Result<Completion, LlmError> {
        let timeout = self.options.request_timeout;
        let stream_err = |m: String| LlmError::Stream { model: model.into(), message: m };
        let mut body = response.bytes_stream();
        let mut decoder = SseDecoder::default();
        let mut assembler = Assembler::default();
        let mut events = Vec::new();
        let mut done = false;
        while !done {
            let chunk = match tokio::time::timeout(timeout, body.next()).await {
                Err(_) => return Err(LlmError::Timeout { model: model.into(), after: timeout }),
                Ok(None) => {
                    decoder.finish(&mut events);
                    done = true;
                    None
                }
                Ok(Some(Err(e))) => return Err(stream_err(error_chain(&e.without_url()))),
                Ok(Some(Ok(bytes))) => Some(bytes),
            };
            if let Some(bytes) = chunk {
                decoder.push(&bytes, &mut events);
            }
            for data in events.drain(..) {
                match assembler.push(&data) {
                    Ok(Step::More) => {}
                    Ok(Step::Done) => done = true,
                    Err(e) => {
                        let message = self.redactor.redact(&clip(&e.message, 500));
                        return Err(match e.status {
                            Some(status) if (400..500).contains(&status) => {
                                LlmError::Status { status, model: model.into(), message, retry_after: None }
                            }
                            _ => stream_err(message),
                        });
                    }
                }
            }
        }
        let tool_calls = assembler.tool_calls();
        if assembler.content.is_empty() && tool_calls.is_empty() && assembler.finish_reason.is_none() {
            return Err(stream_err("the stream ended without a message".into()));
        }
        let (usage, usage_reported) = match assembler.usage {
            Some(u) => (complete(u), true),
            None => {
                tracing::warn!(model, "the stream carried no usage; estimating it from the text length");
                (estimate(prompt_chars, &assembler.content, &tool_calls), false)
            }
        };
        Ok(Completion {
            model: assembler.model.take().unwrap_or_else(|| model.into()),
            content: std::mem::take(&mut assembler.content),
            tool_calls,
            finish_reason: assembler.finish_reason.take(),
            usage,
            usage_reported,
            attempts: 0,
        })
    }

    fn transport_error(&self, model: &str, e: reqwest::Error) -> LlmError {
        if e.is_timeout() {
            return LlmError::Timeout { model: model.into(), after: self.options.request_timeout };
        }
        LlmError::Unreachable { model: model.into(), message: error_chain(&e.without_url()) }
    }

    /// The server's error message, shortened and with the API key removed.
    fn error_message(&self, body: &[u8]) -> String {
        let text = match serde_json::from_slice::<ChatResponse>(body) {
            Ok(ChatResponse { error: Some(err), .. }) => err.message.unwrap_or_default(),
            _ => String::from_utf8_lossy(body).split_whitespace().collect::<Vec<_>>().join(" "),
        };
        self.redactor.redact(&clip(&text, 500))
    }
}

fn complete(mut u: Usage) -> Usage {
    if u.total_tokens == 0 {
        u.total_tokens = u.prompt_tokens + u.completion_tokens;
    }
    u
}

/// About four characters per token.
fn estimate(prompt_chars: usize, content: &str, calls: &[super::types::ToolCall]) -> Usage {
    let completion_chars = content.len() + calls.iter().map(|c| c.function.arguments.len()).sum::<usize>();
    let prompt_tokens = prompt_chars.div_ceil(4) as u64;
    let completion_tokens = completion_chars.div_ceil(4) as u64;
    Usage { prompt_tokens, completion_tokens, total_tokens: prompt_tokens + completion_tokens, cost: None }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// At most `max` characters of `text`.
pub fn clip(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &text[..i]),
        None => text.to_string(),
    }
}

fn backoff(policy: &RetryPolicy, retry: u32) -> Duration {
    let base = policy.initial_backoff.saturating_mul(1u32 << retry.min(16)).min(policy.max_backoff);
    base.mul_f64(rand::random_range(0.8..1.2))
}

/// `Retry-After` as seconds or an HTTP date.
pub fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let value = headers.get(header::RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = value.parse::<f64>() {
        return (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs.min(86_400.0)));
    }
    let at = parse_http_date(value)?;
    Some(at.duration_since(now).unwrap_or_default())
}

/// IMF-fixdate, e.g. `Sun, 06 Nov 1994 08:49:37 GMT`.
fn parse_http_date(s: &str) -> Option<SystemTime> {
    let mut parts = s.split_whitespace();
    let _weekday = parts.next()?;
    let day: i64 = parts.next()?.parse().ok()?;
    let month_name = parts.next()?;
    let month = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
        .iter()
        .position(|m| *m == month_name)? as i64
        + 1;
    let year: i64 = parts.next()?.parse().ok()?;
    let mut hms = parts.next()?.split(':').map(|p| p.parse::<i64>().ok());
    let (h, m, sec) = (hms.next()??, hms.next()??, hms.next()??);
    if parts.next()? != "GMT" {
        return None;
    }
    // days_from_civil (Howard Hinnant)
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + h * 3600 + m * 60 + sec;
    Some(SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_accepts_seconds_and_dates() {
        let mut h = HeaderMap::new();
        h.insert(header::RETRY_AFTER, HeaderValue::from_static("2"));
        assert_eq!(retry_after(&h, SystemTime::now()), Some(Duration::from_secs(2)));
        h.insert(header::RETRY_AFTER, HeaderValue::from_static("Sun, 06 Nov 1994 08:49:37 GMT"));
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_777);
        assert_eq!(retry_after(&h, at - Duration::from_secs(5)), Some(Duration::from_secs(5)));
        assert_eq!(retry_after(&h, at + Duration::from_secs(5)), Some(Duration::ZERO));
        h.insert(header::RETRY_AFTER, HeaderValue::from_static("soon"));
        assert_eq!(retry_after(&h, at), None);
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let p = RetryPolicy {
            max_retries: 5,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(300),
            max_retry_after: Duration::from_secs(1),
        };
        let b0 = backoff(&p, 0);
        assert!(b0 >= Duration::from_millis(80) && b0 <= Duration::from_millis(120), "{b0:?}");
        let b4 = backoff(&p, 4);
        assert!(b4 <= Duration::from_millis(360), "{b4:?}");
    }

    #[test]
    fn clip_respects_char_boundaries() {
        assert_eq!(clip("héllo", 2), "hé…");
        assert_eq!(clip("hi", 5), "hi");
    }

    #[test]
    fn headers_never_show_the_key_in_debug() {
        let config = ModelConfig {
            base_url: "https://gateway.example/api/v1".into(),
            api_key_env: "K".into(),
            model: "m".into(),
            fallbacks: vec!["f".into()],
            temperature: None,
            max_tokens: None,
            openrouter: true,
        };
        let client =
            ChatClient::new(http_client(), &config, Some(Secret::new("sk-secret-123")), ClientOptions::default(), None)
                .unwrap();
        assert!(!format!("{client:?} {:?}", client.headers).contains("sk-secret-123"));
        assert_eq!(client.endpoint, "https://gateway.example/api/v1/chat/completions");
        assert_eq!(client.candidates, ["m", "f"]);
    }
}
