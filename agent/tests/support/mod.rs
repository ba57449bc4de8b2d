//! Shared helpers of the integration tests: crews pointing at the stub server, a runtime
//! serving its API on 127.0.0.1:0, and HTTP helpers.
#![allow(dead_code)]

pub mod cluster;

use bizosaas_agent::llm::{ClientOptions, RetryPolicy};
use bizosaas_agent::serve::{Runtime, RuntimeOptions, build};
use bizosaas_crds::crew_config::CrewConfig;
use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::time::Duration;

/// Options for tests: retries without real waiting, short timeouts.
pub fn options() -> RuntimeOptions {
    RuntimeOptions {
        client: ClientOptions {
            request_timeout: Duration::from_secs(10),
            retry: RetryPolicy {
                max_retries: 3,
                initial_backoff: Duration::from_millis(1),
                max_backoff: Duration::from_millis(5),
                max_retry_after: Duration::from_secs(5),
            },
            ..ClientOptions::default()
        },
        ..RuntimeOptions::default()
    }
}

/// Merges `patch` into `base` (objects key by key, everything else replaced).
pub fn merge(base: &mut Value, patch: Value) {
    match (base, patch) {
        (Value::Object(b), Value::Object(p)) => {
            for (k, v) in p {
                merge(b.entry(k).or_insert(Value::Null), v);
            }
        }
        (b, p) => *b = p,
    }
}

/// A Sequential crew of two agents (`researcher`, `writer`) on the given model server, with
/// `patch` merged in.
pub fn crew(base_url: &str, patch: Value) -> CrewConfig {
    let mut crew = json!({
        "name": "growth-team",
        "namespace": "tenant-acme",
        "tenant": "acme",
        "process": "Sequential",
        "agents": [
            {"name": "researcher", "role": "Market researcher", "goal": "Find the facts", "backstory": "Careful.", "maxIterations": 5},
            {"name": "writer", "role": "Copywriter", "goal": "Write clear copy", "backstory": "Concise.", "maxIterations": 5}
        ],
        "model": {"baseUrl": base_url, "apiKeyEnv": "TEST_LLM_KEY", "model": "agent-model"}
    });
    merge(&mut crew, patch);
    serde_json::from_value(crew).expect("test crew")
}

/// The API key the test crews use.
pub const LLM_KEY: &str = "sk-test-llm-key-0123456789";

/// The run API of a runtime at `base`, in this process or not.
#[derive(Clone)]
pub struct Api {
    pub base: String,
    pub http: reqwest::Client,
}

/// A runtime serving its API on loopback.
pub struct App {
    pub api: Api,
    pub runtime: Runtime,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for App {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl std::ops::Deref for App {
    type Target = Api;
    fn deref(&self) -> &Api {
        &self.api
    }
}

/// Builds and serves a runtime. `env` holds the environment the crew reads (the model key
/// is added).
pub async fn app_with(crew: CrewConfig, env: &[(&str, &str)], options: RuntimeOptions) -> App {
    let mut vars: HashMap<String, String> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    vars.entry("TEST_LLM_KEY".into()).or_insert_with(|| LLM_KEY.into());
    let runtime = build(crew, &|k| vars.get(k).cloned(), options).expect("runtime builds");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let router = bizosaas_agent::api::router(runtime.state.clone());
    let server = tokio::spawn(async move {
        axum::serve(listener, router).await.unwrap();
    });
    App { api: Api { base, http: bizosaas_agent::llm::http_client() }, runtime, server }
}

pub async fn app(crew: CrewConfig) -> App {
    app_with(crew, &[], options()).await
}

impl Api {
    pub fn new(base: String) -> Self {
        Self { base, http: bizosaas_agent::llm::http_client() }
    }

    /// An API whose requests carry `token` as their bearer credential.
    pub fn with_token(base: String, token: &str) -> Self {
        let mut headers = HeaderMap::new();
        let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}")).unwrap();
        value.set_sensitive(true);
        headers.insert(reqwest::header::AUTHORIZATION, value);
        let http = reqwest::Client::builder().default_headers(headers).build().unwrap();
        Self { base, http }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// `POST /v1/runs` (with `?wait=`), returning status, headers and body.
    pub async fn post_run(&self, body: &Value, key: Option<&str>, wait: Option<f64>) -> (StatusCode, HeaderMap, Value) {
        let mut url = self.url("/v1/runs");
        if let Some(w) = wait {
            url.push_str(&format!("?wait={w}"));
        }
        let mut req = self.http.post(url).json(body);
        if let Some(k) = key {
            req = req.header("Idempotency-Key", k);
        }
        let resp = req.send().await.unwrap();
        let (status, headers) = (resp.status(), resp.headers().clone());
        (status, headers, resp.json().await.unwrap())
    }

    /// Starts a run and waits for its end; returns the run.
    pub async fn run(&self, body: Value) -> Value {
        let (status, _, view) = self.post_run(&body, None, Some(30.0)).await;
        assert_eq!(status, StatusCode::CREATED, "{view}");
        assert!(matches!(view["status"].as_str(), Some("succeeded" | "failed")), "run did not finish: {view}");
        view
    }

    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        let resp = self.http.get(self.url(path)).send().await.unwrap();
        let status = resp.status();
        let text = resp.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    pub async fn delete(&self, path: &str) -> (StatusCode, Value) {
        let resp = self.http.delete(self.url(path)).send().await.unwrap();
        let status = resp.status();
        (status, resp.json().await.unwrap())
    }

    /// `GET /v1/runs/{id}` until `done` holds for the run (or `timeout` passed); the last view.
    pub async fn wait_for(&self, id: &str, timeout: Duration, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let (status, view) = self.get(&format!("/v1/runs/{id}")).await;
            assert_eq!(status, StatusCode::OK, "{view}");
            if done(&view) || std::time::Instant::now() > deadline {
                return view;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The run's events, read from the SSE endpoint until it closes.
    pub async fn events(&self, id: &str, last_event_id: Option<u64>) -> Vec<(String, u64, Value)> {
        let mut req = self.http.get(self.url(&format!("/v1/runs/{id}/events")));
        if let Some(l) = last_event_id {
            req = req.header("Last-Event-ID", l.to_string());
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.headers()["content-type"], "text/event-stream");
        let text = tokio::time::timeout(Duration::from_secs(30), resp.text()).await.expect("events end").unwrap();
        parse_sse(&text)
    }
}

/// Waits until `f` holds (checked every 20 ms), at most `timeout`; whether it held.
pub async fn eventually(timeout: Duration, f: impl Fn() -> bool) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    while !f() {
        if std::time::Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    true
}

/// (event, id, data) of an SSE text.
pub fn parse_sse(text: &str) -> Vec<(String, u64, Value)> {
    text.split("\n\n")
        .filter_map(|block| {
            let (mut event, mut id, mut data) = (None, None, String::new());
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("event: ") {
                    event = Some(v.to_string());
                } else if let Some(v) = line.strip_prefix("id: ") {
                    id = v.parse().ok();
                } else if let Some(v) = line.strip_prefix("data: ") {
                    data.push_str(v);
                }
            }
            Some((event?, id?, serde_json::from_str(&data).ok()?))
        })
        .collect()
}

/// The messages of a recorded chat request.
pub fn messages(body: &Value) -> &Vec<Value> {
    body["messages"].as_array().expect("messages")
}

/// The content of the message with `role` (the first one).
pub fn content_of<'a>(body: &'a Value, role: &str) -> &'a str {
    messages(body).iter().find(|m| m["role"] == role).and_then(|m| m["content"].as_str()).unwrap_or("")
}

/// Names of the tools offered in a recorded chat request.
pub fn tool_names(body: &Value) -> Vec<String> {
    body["tools"]
        .as_array()
        .map(|t| t.iter().map(|t| t["function"]["name"].as_str().unwrap().to_string()).collect())
        .unwrap_or_default()
}
