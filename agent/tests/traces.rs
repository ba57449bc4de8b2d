//! Traces: with OTEL_EXPORTER_OTLP_ENDPOINT set, the runtime exports its spans over OTLP/HTTP
//! to a real OpenTelemetry Collector (built by `bash tests/harness/build.sh otelcol`, given as
//! BIZOSAAS_TEST_OTELCOL) that writes them to a file as OTLP JSON lines. Two runs carry a
//! caller's `traceparent`:
//!
//! - a two-agent crew on the real model (BIZOSAAS_TEST_LLM_URL / BIZOSAAS_TEST_LLM_MODEL, else
//!   `bash tests/harness/llm.sh url` / `model`);
//! - a crew on the scripted stub server whose model calls the `http_request` tool once.
//!
//! Each run must give one connected trace in the caller's trace: the run API's server span
//! (a child of the caller's span), the crew run under it, each agent's task under the run,
//! each model call (GenAI attributes, token counts) and tool call under its agent. The model
//! requests carry the model call span's `traceparent`. The exported file holds no credential,
//! no "Bearer" and no prompt text. The process's telemetry is shut down (flushing the spans)
//! before the file is read, as `bizosaas-agent serve` does at exit.
//!
//! The test fails (it does not skip) without the collector or the model server.

mod support;

use bizosaas_agent::stub::{Reply, StubServer};
use bizosaas_agent::telemetry::{self, LogFormat};
use serde_json::{Value, json};
use std::collections::{HashMap, HashSet};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use support::{Api, LLM_KEY, app_with, crew, options};

const HOW_COLLECTOR: &str = "build the collector with `bash tests/harness/build.sh otelcol` and set \
     BIZOSAAS_TEST_OTELCOL=$(bash tests/harness/build.sh path otelcol), or run `./dev test`, which does both";
const HOW_LLM: &str =
    "start it with `bash tests/harness/llm.sh up`, or set BIZOSAAS_TEST_LLM_URL and BIZOSAAS_TEST_LLM_MODEL";

const INTEGRATION_SECRET: &str = "cms-token-5e1d0c9b8a";
/// Words of the task descriptions, which must not reach the trace.
const PROMPT_MARKER: &str = "zanzibar-umbrella";

/// The callers' spans: `(trace id, span id)` of each run's `traceparent`.
const CALLER_REAL: (&str, &str) = ("0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331");
const CALLER_STUB: (&str, &str) = ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7");

fn traceparent((trace, span): (&str, &str)) -> String {
    format!("00-{trace}-{span}-01")
}

/// The collector process, stopped when dropped.
struct Collector {
    child: Child,
    log: PathBuf,
}

impl Drop for Collector {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Starts the collector: OTLP/HTTP on loopback, spans to `out` as JSON lines.
fn start_collector(binary: &str, dir: &Path, out: &Path) -> (Collector, u16) {
    let port = free_port();
    let config = dir.join("otelcol.yaml");
    std::fs::write(
        &config,
        format!(
            r#"receivers:
  otlp:
    protocols:
      http:
        endpoint: 127.0.0.1:{port}
processors:
  batch:
    timeout: 100ms
exporters:
  file:
    path: {out}
    format: json
    flush_interval: 100ms
service:
  telemetry:
    logs:
      level: warn
    metrics:
      level: none
  pipelines:
    traces:
      receivers: [otlp]
      processors: [batch]
      exporters: [file]
"#,
            out = out.display()
        ),
    )
    .unwrap();
    let log = dir.join("otelcol.log");
    let log_file = std::fs::File::create(&log).unwrap();
    let child = Command::new(binary)
        .arg("--config")
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(log_file.try_clone().unwrap())
        .stderr(log_file)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start the collector {binary}: {e}; {HOW_COLLECTOR}"));
    let mut collector = Collector { child, log };
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Ok(Some(status)) = collector.child.try_wait() {
            panic!("the collector exited ({status}): {}", std::fs::read_to_string(&collector.log).unwrap_or_default());
        }
        assert!(Instant::now() < deadline, "the collector does not listen on {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
    (collector, port)
}

fn harness(var: &str, command: &str) -> String {
    if let Ok(v) = std::env::var(var)
        && !v.is_empty()
    {
        return v;
    }
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/harness/llm.sh");
    let out = Command::new("bash")
        .args([script, command])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {script} {command}: {e}; {HOW_LLM}"));
    assert!(out.status.success(), "{script} {command} failed: {}; {HOW_LLM}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// An API client whose requests all carry the caller's `traceparent`.
fn traced(base: &str, caller: (&str, &str)) -> Api {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert("traceparent", traceparent(caller).parse().unwrap());
    headers.insert("tracestate", "caller=test".parse().unwrap());
    let http = reqwest::Client::builder().default_headers(headers).build().unwrap();
    Api { base: base.to_string(), http }
}

/// What the runs did, as the API reported it.
struct Ran {
    real_run: Value,
    real_tool_calls: usize,
    stub_run: Value,
    /// `traceparent` headers of the stub's chat requests.
    stub_traceparents: Vec<String>,
    model: String,
    llm_host: String,
}

async fn scenario() -> Ran {
    // The real model.
    let (url, model) = (harness("BIZOSAAS_TEST_LLM_URL", "url"), harness("BIZOSAAS_TEST_LLM_MODEL", "model"));
    let probe =
        bizosaas_agent::llm::http_client().get(format!("{url}/models")).timeout(Duration::from_secs(10)).send().await;
    assert!(probe.is_ok_and(|r| r.status().is_success()), "the LLM server at {url} does not answer; {HOW_LLM}");
    let c = crew(
        &url,
        json!({
            "model": {"model": model, "temperature": 0.2, "maxTokens": 32},
            "agents": [
                {"name": "researcher", "role": "Market researcher", "goal": "Name facts about garden furniture", "maxIterations": 2},
                {"name": "writer", "role": "Copywriter", "goal": "Write short ad copy", "maxIterations": 2}
            ]
        }),
    );
    let mut o = options();
    o.client.request_timeout = Duration::from_secs(120);
    let app = app_with(c, &[], o).await;
    let api = traced(&app.base, CALLER_REAL);
    let body = json!({"description": format!("Write one sentence about a {PROMPT_MARKER} sale."), "expectedOutput": "One sentence"});
    let (status, _, real_run) = api.post_run(&body, None, Some(280.0)).await;
    assert_eq!(status, reqwest::StatusCode::CREATED, "{real_run}");
    assert_eq!(real_run["status"], "succeeded", "{real_run:#}");
    let events = api.events(real_run["id"].as_str().unwrap(), None).await;
    let real_tool_calls = events.iter().filter(|(kind, _, _)| kind == "tool_started").count();

    // The stub, whose model calls a tool.
    let stub = StubServer::with_script([
        Reply::tool_calls(&[("call_1", "http_request", json!({"integration": "cms", "path": "/pages/"}))], 50, 10),
        Reply::text("There are pages.", 80, 8),
    ])
    .await;
    let mut c = crew(
        &stub.base_url(),
        json!({"integrations": [{"name": "cms", "baseUrl": stub.url("/cms"), "credentialEnv": "CMS_TOKEN"}]}),
    );
    c.agents[0].tools = vec!["http_request".into()];
    let app = app_with(c, &[("CMS_TOKEN", INTEGRATION_SECRET)], options()).await;
    let api = traced(&app.base, CALLER_STUB);
    let body = json!({"description": format!("Find pages about {PROMPT_MARKER}"), "agent": "researcher"});
    let (status, _, stub_run) = api.post_run(&body, None, Some(30.0)).await;
    assert_eq!(status, reqwest::StatusCode::CREATED, "{stub_run}");
    assert_eq!(stub_run["status"], "succeeded", "{stub_run:#}");
    let stub_traceparents =
        stub.chat_requests().iter().map(|r| r.header("traceparent").unwrap_or_default().to_string()).collect();
    let llm_host = reqwest::Url::parse(&url).unwrap().host_str().unwrap().to_string();
    Ran { real_run, real_tool_calls, stub_run, stub_traceparents, model, llm_host }
}

/// One exported span.
#[derive(Debug, Clone)]
struct Span {
    trace: String,
    id: String,
    parent: String,
    name: String,
    kind: u64,
    attrs: HashMap<String, Value>,
    service: String,
}

impl Span {
    fn attr(&self, key: &str) -> &Value {
        self.attrs.get(key).unwrap_or(&Value::Null)
    }

    fn int(&self, key: &str) -> i64 {
        self.attr(key).as_i64().unwrap_or_else(|| panic!("span {} has no integer {key}: {:?}", self.name, self.attrs))
    }
}

/// An OTLP JSON attribute value as plain JSON (`intValue` is a string in OTLP JSON).
fn value(v: &Value) -> Value {
    if let Some(s) = v.get("stringValue") {
        s.clone()
    } else if let Some(i) = v.get("intValue") {
        i.as_str().and_then(|s| s.parse::<i64>().ok()).map(Value::from).unwrap_or_else(|| i.clone())
    } else if let Some(b) = v.get("boolValue") {
        b.clone()
    } else if let Some(d) = v.get("doubleValue") {
        d.clone()
    } else {
        v.clone()
    }
}

fn attributes(list: &Value) -> HashMap<String, Value> {
    list.as_array()
        .into_iter()
        .flatten()
        .filter_map(|kv| Some((kv["key"].as_str()?.to_string(), value(&kv["value"]))))
        .collect()
}

fn parse(text: &str) -> Vec<Span> {
    let mut spans = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let doc: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("not OTLP JSON ({e}): {line}"));
        for rs in doc["resourceSpans"].as_array().into_iter().flatten() {
            let resource = attributes(&rs["resource"]["attributes"]);
            let service = resource.get("service.name").and_then(Value::as_str).unwrap_or_default().to_string();
            for ss in rs["scopeSpans"].as_array().into_iter().flatten() {
                for s in ss["spans"].as_array().into_iter().flatten() {
                    spans.push(Span {
                        trace: s["traceId"].as_str().unwrap_or_default().to_string(),
                        id: s["spanId"].as_str().unwrap_or_default().to_string(),
                        parent: s["parentSpanId"].as_str().unwrap_or_default().to_string(),
                        name: s["name"].as_str().unwrap_or_default().to_string(),
                        kind: s["kind"].as_u64().unwrap_or_default(),
                        attrs: attributes(&s["attributes"]),
                        service: service.clone(),
                    });
                }
            }
        }
    }
    spans
}

/// OTLP span kinds.
const SERVER: u64 = 2;
const CLIENT: u64 = 3;

/// Checks the trace of one run; returns its spans by name prefix.
fn check_run_trace<'a>(
    spans: &'a [Span],
    caller: (&str, &str),
    run: &Value,
    model: &str,
) -> (Vec<&'a Span>, Vec<&'a Span>) {
    let (trace, caller_span) = caller;
    let in_trace: Vec<&Span> = spans.iter().filter(|s| s.trace == trace).collect();
    let describe = || in_trace.iter().map(|s| format!("{} {} <- {}", s.name, s.id, s.parent)).collect::<Vec<_>>();
    let run_id = run["id"].as_str().unwrap();
    let crew_run = in_trace
        .iter()
        .find(|s| s.attr("bizosaas.run.id") == run_id)
        .unwrap_or_else(|| panic!("no crew run span for run {run_id} in trace {trace}: {:#?}", describe()));
    assert_eq!(crew_run.name, "crew_run growth-team");
    assert_eq!(crew_run.attr("bizosaas.run.status"), "succeeded");
    assert_eq!(crew_run.attr("bizosaas.crew.namespace"), "tenant-acme");
    assert_eq!(crew_run.int("gen_ai.usage.input_tokens"), run["usage"]["promptTokens"].as_i64().unwrap());
    // The server span of the POST, a child of the caller's span.
    let server = in_trace
        .iter()
        .find(|s| s.id == crew_run.parent)
        .unwrap_or_else(|| panic!("the crew run's parent is not in the trace: {:#?}", describe()));
    assert_eq!(server.name, "POST /v1/runs");
    assert_eq!(server.kind, SERVER);
    assert_eq!(server.parent, caller_span, "the server span's parent is the caller's span");
    assert_eq!(server.attr("http.request.method"), "POST");
    assert_eq!(server.attr("http.route"), "/v1/runs");
    assert_eq!(server.int("http.response.status_code"), 201);
    // Every span of the trace is the runtime's.
    assert!(in_trace.iter().all(|s| s.service == "bizosaas-agent"), "{in_trace:#?}");
    // Agents' tasks under the run, model calls under the agents.
    let agents: Vec<&Span> = in_trace.iter().copied().filter(|s| s.name.starts_with("invoke_agent ")).collect();
    let tasks = run["tasks"].as_array().unwrap();
    assert_eq!(agents.len(), tasks.len(), "one agent span per task: {:#?}", describe());
    for agent in &agents {
        assert_eq!(agent.parent, crew_run.id, "{agent:?}");
        assert_eq!(agent.attr("gen_ai.operation.name"), "invoke_agent");
        assert!(tasks.iter().any(|t| t["agent"] == *agent.attr("gen_ai.agent.name")), "{agent:?}");
    }
    let agent_ids: HashSet<&str> = agents.iter().map(|s| s.id.as_str()).collect();
    let llm: Vec<&Span> = in_trace.iter().copied().filter(|s| s.attr("gen_ai.operation.name") == "chat").collect();
    let calls: u64 = tasks.iter().map(|t| t["usage"]["llmCalls"].as_u64().unwrap()).sum();
    assert_eq!(llm.len() as u64, calls, "one model call span per call: {:#?}", describe());
    let (mut input, mut output) = (0, 0);
    for s in &llm {
        assert!(agent_ids.contains(s.parent.as_str()), "a model call outside the agents' spans: {s:?}");
        assert_eq!(s.kind, CLIENT);
        assert_eq!(s.name, format!("chat {model}"));
        assert_eq!(s.attr("gen_ai.request.model"), model);
        assert!(s.attr("server.address").as_str().is_some_and(|a| !a.is_empty()), "{s:?}");
        assert!(s.attr("server.port").is_i64(), "{s:?}");
        assert!(s.attr("gen_ai.response.model").is_string(), "{s:?}");
        assert!(s.int("gen_ai.usage.output_tokens") > 0, "{s:?}");
        input += s.int("gen_ai.usage.input_tokens");
        output += s.int("gen_ai.usage.output_tokens");
    }
    assert_eq!(input, run["usage"]["promptTokens"].as_i64().unwrap(), "the calls' input tokens add up to the run's");
    assert_eq!(output, run["usage"]["completionTokens"].as_i64().unwrap());
    let tools: Vec<&Span> =
        in_trace.iter().copied().filter(|s| s.attr("gen_ai.operation.name") == "execute_tool").collect();
    for t in &tools {
        assert!(agent_ids.contains(t.parent.as_str()), "a tool call outside the agents' spans: {t:?}");
        assert!(t.attr("gen_ai.tool.name").is_string(), "{t:?}");
    }
    (llm, tools)
}

#[test]
fn runs_export_one_connected_trace_in_the_callers_trace() {
    let otelcol = std::env::var("BIZOSAAS_TEST_OTELCOL")
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| panic!("BIZOSAAS_TEST_OTELCOL is not set: {HOW_COLLECTOR}"));
    assert!(Path::new(&otelcol).is_file(), "BIZOSAAS_TEST_OTELCOL={otelcol} is not a file: {HOW_COLLECTOR}");
    let dir = std::env::temp_dir().join(format!("bizosaas-traces-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join("traces.jsonl");
    let (collector, port) = start_collector(&otelcol, &dir, &out);

    // The process's telemetry, as `bizosaas-agent serve` sets it up: before any other thread
    // of this test binary (its only test) reads the environment.
    // SAFETY: no other thread reads or writes the environment at this point.
    unsafe {
        std::env::set_var("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://127.0.0.1:{port}"));
        std::env::set_var("OTEL_BSP_SCHEDULE_DELAY", "200");
        std::env::remove_var("OTEL_SERVICE_NAME");
        std::env::remove_var("OTEL_SDK_DISABLED");
        if std::env::var_os("RUST_LOG").is_none() {
            std::env::set_var("RUST_LOG", "warn");
        }
    }
    let mut telemetry = telemetry::init(LogFormat::Text);
    assert!(telemetry.exporting());
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let ran = runtime.block_on(scenario());
    drop(runtime);
    // Flushes the spans still buffered.
    telemetry.shutdown();

    // The collector writes what it received within its batch and flush intervals.
    let expected_runs = [ran.real_run["id"].as_str().unwrap(), ran.stub_run["id"].as_str().unwrap()];
    let deadline = Instant::now() + Duration::from_secs(30);
    let (text, spans) = loop {
        let text = std::fs::read_to_string(&out).unwrap_or_default();
        let spans = parse(&text);
        let done = expected_runs.iter().all(|id| spans.iter().any(|s| s.attr("bizosaas.run.id") == *id));
        if done || Instant::now() > deadline {
            break (text, spans);
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let log = std::fs::read_to_string(&collector.log).unwrap_or_default();
    drop(collector);
    assert!(!spans.is_empty(), "the collector wrote no spans to {}; its log: {log}", out.display());
    let mut saved = std::fs::File::create(dir.join("summary.txt")).unwrap();
    for s in &spans {
        writeln!(saved, "{} {} <- {} {}", s.trace, s.id, s.parent, s.name).unwrap();
    }

    // Every span belongs to one of the callers' traces.
    let traces: HashSet<&str> = spans.iter().map(|s| s.trace.as_str()).collect();
    assert_eq!(traces, HashSet::from([CALLER_REAL.0, CALLER_STUB.0]), "{spans:#?}");

    let (llm, tools) = check_run_trace(&spans, CALLER_REAL, &ran.real_run, &ran.model);
    assert!(llm.iter().all(|s| s.attr("server.address") == ran.llm_host.as_str()), "{llm:#?}");
    assert_eq!(tools.len(), ran.real_tool_calls, "one tool span per tool call of the real model");

    let (llm, tools) = check_run_trace(&spans, CALLER_STUB, &ran.stub_run, "agent-model");
    assert_eq!(tools.len(), 1, "{tools:#?}");
    assert_eq!(tools[0].name, "execute_tool http_request");
    assert_eq!(tools[0].attr("gen_ai.tool.name"), "http_request");
    assert_eq!(tools[0].attr("gen_ai.tool.call.id"), "call_1");
    assert_eq!(llm[0].int("gen_ai.usage.input_tokens"), 50);
    assert_eq!(llm[0].int("gen_ai.usage.output_tokens"), 10);
    // The model requests carried the model call spans' context.
    let sent: Vec<String> = llm.iter().map(|s| format!("00-{}-{}-01", s.trace, s.id)).collect();
    assert_eq!(ran.stub_traceparents, sent, "traceparent of the model requests");

    // No credential, authorization header or prompt text was exported.
    for secret in [LLM_KEY, INTEGRATION_SECRET, "Bearer", PROMPT_MARKER] {
        assert!(!text.contains(secret), "the exported spans contain {secret:?}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
