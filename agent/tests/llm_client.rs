//! The chat-completions client against the scripted stub server: headers, OpenRouter's
//! `models` list, client-side fallbacks, retries (429 with Retry-After, 5xx), no retry on
//! 400/401/402/403, timeouts, streaming assembly.

mod support;

use bizosaas_agent::llm::{
    ChatClient, ChatInput, ClientOptions, LlmError, Message, RetryPolicy, ToolChoice, ToolDef, http_client,
};
use bizosaas_agent::secret::Secret;
use bizosaas_agent::stub::{Reply, StubServer};
use bizosaas_crds::crew_config::ModelConfig;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

const KEY: &str = "sk-or-v1-test-key-abcdef";

fn model(base_url: &str, openrouter: bool, fallbacks: &[&str]) -> ModelConfig {
    ModelConfig {
        base_url: base_url.into(),
        api_key_env: "KEY".into(),
        model: "primary/model".into(),
        fallbacks: fallbacks.iter().map(|f| f.to_string()).collect(),
        temperature: Some(0.3),
        max_tokens: Some(512),
        openrouter,
    }
}

fn options(stream: bool) -> ClientOptions {
    ClientOptions {
        stream,
        request_timeout: Duration::from_secs(10),
        retry: RetryPolicy {
            max_retries: 3,
            initial_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(5),
            max_retry_after: Duration::from_secs(5),
        },
        ..ClientOptions::default()
    }
}

fn client(stub: &StubServer, openrouter: bool, fallbacks: &[&str], options: ClientOptions) -> ChatClient {
    ChatClient::new(
        http_client(),
        &model(&stub.base_url(), openrouter, fallbacks),
        Some(Secret::new(KEY)),
        options,
        None,
    )
    .unwrap()
}

fn hello() -> Vec<Message> {
    vec![Message::system("You are terse."), Message::user("Say hello.")]
}

#[tokio::test]
async fn sends_the_key_attribution_headers_and_openrouters_models_list() {
    let stub = StubServer::with_script([Reply::text("hello", 12, 3)]).await;
    let c = client(&stub, true, &["fallback/a", "fallback/b"], options(false));
    let msgs = hello();
    let out = c.chat(ChatInput::new(&msgs)).await.unwrap();
    assert_eq!(out.content, "hello");
    assert_eq!((out.usage.prompt_tokens, out.usage.completion_tokens, out.usage.total_tokens), (12, 3, 15));
    assert!(out.usage_reported);
    assert_eq!(out.model, "stub-model");
    let req = &stub.chat_requests()[0];
    assert_eq!(req.path, "/v1/chat/completions");
    assert_eq!(req.header("authorization"), Some(format!("Bearer {KEY}").as_str()));
    assert_eq!(req.header("http-referer"), Some("https://bizosaas.io"));
    assert_eq!(req.header("x-title"), Some("BizOSaaS"));
    assert_eq!(req.header("content-type"), Some("application/json"));
    assert_eq!(req.body["model"], "primary/model");
    assert_eq!(req.body["models"], json!(["primary/model", "fallback/a", "fallback/b"]));
    assert_eq!(req.body["temperature"], 0.3);
    assert_eq!(req.body["max_tokens"], 512);
    assert_eq!(
        req.body["messages"],
        json!([{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Say hello."}])
    );
    assert!(req.body.get("stream").is_none() && req.body.get("tools").is_none());
}

#[tokio::test]
async fn without_openrouter_no_attribution_and_fallbacks_are_tried_by_the_client() {
    // The primary model is unknown (404, not retried), the first fallback keeps failing with
    // 500 until the retries are used up, the second answers.
    let stub = StubServer::with_script([
        Reply::error(404, "no such model"),
        Reply::error(500, "boom"),
        Reply::error(500, "boom"),
        Reply::error(500, "boom"),
        Reply::error(500, "boom"),
        Reply::text("from b", 5, 2),
    ])
    .await;
    let c = client(&stub, false, &["fallback/a", "fallback/b"], options(false));
    let msgs = hello();
    let out = c.chat(ChatInput::new(&msgs)).await.unwrap();
    assert_eq!(out.content, "from b");
    assert_eq!(out.attempts, 6);
    let reqs = stub.chat_requests();
    let models: Vec<&str> = reqs.iter().map(|r| r.body["model"].as_str().unwrap()).collect();
    assert_eq!(models, ["primary/model", "fallback/a", "fallback/a", "fallback/a", "fallback/a", "fallback/b"]);
    assert!(reqs.iter().all(|r| r.body.get("models").is_none()));
    assert!(reqs[0].header("http-referer").is_none() && reqs[0].header("x-title").is_none());
}

#[tokio::test]
async fn rate_limit_then_success_waits_for_retry_after() {
    let stub = StubServer::with_script([Reply::rate_limited("1"), Reply::text("ok", 1, 1)]).await;
    let c = client(&stub, true, &[], options(false));
    let msgs = hello();
    let started = Instant::now();
    let out = c.chat(ChatInput::new(&msgs)).await.unwrap();
    assert_eq!((out.content.as_str(), out.attempts), ("ok", 2));
    // Retry-After: 1 was honoured (the policy's own backoff is a millisecond).
    assert!(started.elapsed() >= Duration::from_millis(950), "{:?}", started.elapsed());
    assert_eq!(stub.chat_requests().len(), 2);
}

#[tokio::test]
async fn server_errors_are_retried_until_the_limit() {
    let stub =
        StubServer::with_script([Reply::error(502, "upstream"), Reply::error(503, "busy"), Reply::text("ok", 1, 1)])
            .await;
    let c = client(&stub, true, &[], options(false));
    let msgs = hello();
    assert_eq!(c.chat(ChatInput::new(&msgs)).await.unwrap().attempts, 3);

    let stub = StubServer::start().await;
    stub.repeat(Reply::error(500, "down"));
    let c = client(&stub, true, &[], options(false));
    let err = c.chat(ChatInput::new(&msgs)).await.unwrap_err();
    assert_eq!(err.category(), "llm_server_error");
    assert_eq!(stub.chat_requests().len(), 4, "one attempt and three retries");
}

#[tokio::test]
async fn account_errors_are_neither_retried_nor_fallen_back_from() {
    for (status, category) in
        [(400, "llm_bad_request"), (401, "llm_unauthorized"), (402, "llm_payment_required"), (403, "llm_forbidden")]
    {
        let stub =
            StubServer::with_script([Reply::error(status, "Insufficient credits"), Reply::text("never", 1, 1)]).await;
        // 400 may be model-specific, so only it moves on to the fallback.
        let c = client(&stub, false, &["fallback/a"], options(false));
        let msgs = hello();
        let result = c.chat(ChatInput::new(&msgs)).await;
        let requests = stub.chat_requests().len();
        if status == 400 {
            assert_eq!(result.unwrap().content, "never");
            assert_eq!(requests, 2);
            continue;
        }
        let err = result.unwrap_err();
        assert_eq!(err.category(), category);
        assert_eq!(requests, 1, "{status} must not be retried");
        assert!(err.to_string().contains("not retried"), "{err}");
        if status == 402 {
            assert!(
                err.to_string().contains("402 Payment Required") && err.to_string().contains("Insufficient credits")
            );
        }
    }
}

#[tokio::test]
async fn a_retry_after_beyond_the_limit_fails_at_once() {
    let stub = StubServer::with_script([Reply::rate_limited("3600"), Reply::text("ok", 1, 1)]).await;
    let c = client(&stub, true, &[], options(false));
    let msgs = hello();
    let err = c.chat(ChatInput::new(&msgs)).await.unwrap_err();
    assert_eq!(err.category(), "llm_rate_limited");
    assert_eq!(err.retry_after(), Some(Duration::from_secs(3600)));
    assert_eq!(stub.chat_requests().len(), 1);
}

#[tokio::test]
async fn requests_time_out() {
    let stub = StubServer::with_script([Reply::text("late", 1, 1).delayed(Duration::from_secs(3))]).await;
    let mut o = options(false);
    o.request_timeout = Duration::from_millis(200);
    o.retry.max_retries = 0;
    let c = client(&stub, true, &[], o);
    let msgs = hello();
    let err = c.chat(ChatInput::new(&msgs)).await.unwrap_err();
    assert!(matches!(err, LlmError::Timeout { .. }), "{err:?}");
    assert_eq!(err.category(), "llm_timeout");
}

#[tokio::test]
async fn the_key_never_appears_in_errors() {
    let stub = StubServer::with_script([Reply::error(401, &format!("invalid key {KEY}"))]).await;
    let c = client(&stub, true, &[], options(false));
    let msgs = hello();
    let err = c.chat(ChatInput::new(&msgs)).await.unwrap_err();
    let text = format!("{err} {err:?}");
    assert!(!text.contains(KEY), "{text}");
    assert!(text.contains("[REDACTED]"), "{text}");
}

#[tokio::test]
async fn streaming_assembles_fragmented_tool_call_arguments() {
    let args = json!({"integration": "cms", "method": "POST", "path": "/api/v2/pages/", "body": {"title": "Spring sale ☀", "tags": ["a", "b"]}});
    // 9 argument fragments, and the SSE text itself cut every 7 bytes.
    let stub = StubServer::with_script([Reply::stream_tool_call("call_42", "http_request", &args, 9, 7, 40, 25)]).await;
    let c = client(&stub, true, &[], options(true));
    let msgs = hello();
    let tools = [ToolDef::function("http_request", "call", json!({"type": "object"}))];
    let input = ChatInput { messages: &msgs, tools: &tools, tool_choice: Some(ToolChoice::Auto), max_tokens_cap: None };
    let out = c.chat(input).await.unwrap();
    assert_eq!(out.tool_calls.len(), 1);
    let call = &out.tool_calls[0];
    assert_eq!((call.id.as_str(), call.function.name.as_str()), ("call_42", "http_request"));
    assert_eq!(serde_json::from_str::<Value>(&call.function.arguments).unwrap(), args);
    assert_eq!((out.usage.prompt_tokens, out.usage.completion_tokens), (40, 25));
    assert!(out.usage_reported);
    assert_eq!(out.finish_reason.as_deref(), Some("tool_calls"));
    let req = &stub.chat_requests()[0];
    assert_eq!(req.body["stream"], true);
    assert_eq!(req.body["stream_options"], json!({"include_usage": true}));
    assert_eq!(req.body["tool_choice"], "auto");
    assert_eq!(req.header("accept"), Some("text/event-stream"));
}

#[tokio::test]
async fn streaming_text_and_stream_failures() {
    let stub = StubServer::with_script([
        // A stream that breaks off with an error event is retried.
        Reply::sse(
            &[
                json!({"choices": [{"delta": {"content": "par"}}]}),
                json!({"error": {"code": 502, "message": "provider dropped"}}),
            ],
            0,
        ),
        Reply::stream_text("Hello, streaming world!", 5, 9, 6),
    ])
    .await;
    let c = client(&stub, true, &[], options(true));
    let msgs = hello();
    let out = c.chat(ChatInput::new(&msgs)).await.unwrap();
    assert_eq!(out.content, "Hello, streaming world!");
    assert_eq!((out.usage.total_tokens, out.attempts), (15, 2));

    // Without usage in the stream it is estimated and flagged.
    let stub = StubServer::with_script([Reply::sse(
        &[json!({"choices": [{"delta": {"content": "abcdefgh"}, "finish_reason": "stop"}]})],
        0,
    )])
    .await;
    let c = client(&stub, true, &[], options(true));
    let out = c.chat(ChatInput::new(&msgs)).await.unwrap();
    assert!(!out.usage_reported);
    assert_eq!(out.usage.completion_tokens, 2);
}

#[tokio::test]
async fn an_error_in_a_200_body_is_an_error() {
    let stub = StubServer::with_script([Reply::Json {
        status: 200,
        body: json!({"error": {"code": 402, "message": "out of credits"}}),
        headers: vec![],
    }])
    .await;
    let c = client(&stub, true, &[], options(false));
    let msgs = hello();
    assert_eq!(c.chat(ChatInput::new(&msgs)).await.unwrap_err().category(), "llm_payment_required");
    assert_eq!(stub.chat_requests().len(), 1);
}
