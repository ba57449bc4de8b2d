//! The runtime against a real model: llama.cpp's OpenAI-compatible server (llama-cpp-python)
//! serving Gemma 3 270M on loopback. A two-agent sequential crew completes a run and reports
//! the token usage the server counted, for both agents.
//!
//! The server comes from BIZOSAAS_TEST_LLM_URL / BIZOSAAS_TEST_LLM_MODEL, else from
//! `bash tests/harness/llm.sh url` / `model`. Start it with `bash tests/harness/llm.sh up`.
//! The test fails (it does not skip) when the server is not reachable.

mod support;

use bizosaas_agent::llm::{ChatClient, ChatInput, ClientOptions, Message, http_client};
use serde_json::json;
use std::time::Duration;
use support::{app_with, crew, options};

const HOW: &str = "start it with `bash tests/harness/llm.sh up` (the first start compiles llama.cpp, about 10 minutes), \
                   or set BIZOSAAS_TEST_LLM_URL and BIZOSAAS_TEST_LLM_MODEL";

fn harness(var: &str, command: &str) -> String {
    if let Ok(v) = std::env::var(var)
        && !v.is_empty()
    {
        return v;
    }
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/harness/llm.sh");
    let out = std::process::Command::new("bash")
        .args([script, command])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {script} {command}: {e}; {HOW}"));
    assert!(out.status.success(), "{script} {command} failed: {}; {HOW}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// The server's base URL and model, checked to answer.
async fn server() -> (String, String) {
    let (url, model) = (harness("BIZOSAAS_TEST_LLM_URL", "url"), harness("BIZOSAAS_TEST_LLM_MODEL", "model"));
    let probe = http_client().get(format!("{url}/models")).timeout(Duration::from_secs(10)).send().await;
    match probe {
        Ok(r) if r.status().is_success() => {}
        Ok(r) => panic!("the LLM server at {url} answered {} to /models; {HOW}", r.status()),
        Err(e) => panic!("the LLM server at {url} is not reachable ({e}); {HOW}"),
    }
    (url, model)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_two_agent_sequential_crew_completes_with_real_token_usage() {
    let (url, model) = server().await;
    let c = crew(
        &url,
        json!({
            "model": {"apiKeyEnv": "", "model": model, "temperature": 0.2, "maxTokens": 48},
            "agents": [
                {"name": "researcher", "role": "Market researcher", "goal": "Name facts about garden furniture", "maxIterations": 3},
                {"name": "writer", "role": "Copywriter", "goal": "Write short ad copy", "maxIterations": 3}
            ]
        }),
    );
    let mut o = options();
    o.client.request_timeout = Duration::from_secs(120);
    let app = app_with(c, &[], o).await;
    let (status, _, run) = app
        .post_run(
            &json!({"description": "Write one sentence about a spring sale of {product}.", "expectedOutput": "One sentence", "inputs": {"product": "garden chairs"}}),
            None,
            Some(280.0),
        )
        .await;
    assert_eq!(status, reqwest::StatusCode::CREATED);
    assert_eq!(run["status"], "succeeded", "{run:#}");
    let tasks = run["tasks"].as_array().unwrap();
    assert_eq!(tasks.len(), 2);
    assert_eq!((tasks[0]["agent"].as_str(), tasks[1]["agent"].as_str()), (Some("researcher"), Some("writer")));
    assert!(tasks.iter().all(|t| !t["output"].as_str().unwrap().trim().is_empty()), "{run:#}");
    for agent in ["researcher", "writer"] {
        let u = &run["usage"]["byAgent"][agent];
        assert!(u["promptTokens"].as_u64().unwrap() > 0, "{agent}: {u}");
        assert!(u["completionTokens"].as_u64().unwrap() > 0, "{agent}: {u}");
        assert!(u["llmCalls"].as_u64().unwrap() >= 1);
    }
    let total = &run["usage"];
    assert_eq!(
        total["totalTokens"].as_u64().unwrap(),
        total["promptTokens"].as_u64().unwrap() + total["completionTokens"].as_u64().unwrap()
    );
    // The writer's prompt carried the researcher's output.
    assert!(
        run["usage"]["byAgent"]["writer"]["promptTokens"].as_u64().unwrap()
            > tasks[0]["usage"]["completionTokens"].as_u64().unwrap()
    );
    eprintln!("usage: {}", run["usage"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_against_the_real_server_assembles_the_answer() {
    let (url, model) = server().await;
    let config = crew(&url, json!({"model": {"apiKeyEnv": "", "model": model, "maxTokens": 24}})).model;
    let options = ClientOptions { stream: true, request_timeout: Duration::from_secs(120), ..ClientOptions::default() };
    let client = ChatClient::new(http_client(), &config, None, options, None).unwrap();
    let messages = [Message::user("Say hello in five words.")];
    let out = client.chat(ChatInput::new(&messages)).await.unwrap();
    assert!(!out.content.trim().is_empty(), "{out:?}");
    assert!(out.usage.completion_tokens > 0);
    // llama-cpp-python sends no usage chunk: the runtime estimates and says so.
    eprintln!("streamed {:?}, usage {:?} (reported by the server: {})", out.content, out.usage, out.usage_reported);
}
