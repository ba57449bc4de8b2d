//! One connected trace across the operator, a crew's runtime and the model, in the real
//! cluster: the operator installed with its and the crews' OTLP endpoints pointing at a real
//! OpenTelemetry Collector (built by `bash tests/harness/build.sh otelcol`, given as
//! BIZOSAAS_TEST_OTELCOL) on the node's address, which writes the spans to a file as OTLP JSON
//! lines. The crew's pods reach the collector only because the crew's egress policy allows its
//! address and port (the tenant's policies allow no such path).
//!
//! A WorkflowRun with one agentTask step runs on a crew against the llama.cpp server. Its trace
//! must hold the operator's `workflow_step` span, the runtime's `POST /v1/runs` server span as
//! that span's child, the crew run under it, the agent's task under the run and each model call
//! (`chat <model>`, with the GenAI model and token counts) under the task. The exported file
//! holds neither the Integration's API key nor the word "Bearer".
//!
//! The release is left installed with the OTLP endpoints: the next test binary's install resets
//! them. The test fails (it does not skip) without the collector.

mod support;

use bizosaas_crds::common::{find_condition, is_ready};
use bizosaas_crds::workflow::RunPhase;
use bizosaas_crds::{AgentCrew, Integration, Workflow, WorkflowRun};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::Api;
use serde_json::Value;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use support::*;

const TENANT: &str = "e2e-traces";
const NS: &str = "tenant-e2e-traces";
const CREW: &str = "tracers";
const RUN: &str = "traced-1";
const STEP: &str = "research";
const TIMEOUT: Duration = Duration::from_secs(180);
/// The Integration's API key: it must not reach the collector.
const API_KEY: &str = "sk-e2e-traces-4c1f9a7d2b";

const HOW_COLLECTOR: &str = "build the collector with `bash tests/harness/build.sh otelcol` and set \
     BIZOSAAS_TEST_OTELCOL=$(bash tests/harness/build.sh path otelcol), or run `./dev test`, which does both";

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

/// Starts the collector: OTLP/HTTP on `ip` and a free port, spans to `out` as JSON lines.
fn start_collector(binary: &str, dir: &Path, out: &Path, ip: &str) -> (Collector, u16) {
    let port = std::net::TcpListener::bind((ip, 0))
        .unwrap_or_else(|e| panic!("cannot listen on the node's address {ip}: {e}"))
        .local_addr()
        .unwrap()
        .port();
    let config = dir.join("otelcol.yaml");
    std::fs::write(
        &config,
        format!(
            r#"receivers:
  otlp:
    protocols:
      http:
        endpoint: {ip}:{port}
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
    while std::net::TcpStream::connect((ip, port)).is_err() {
        if let Ok(Some(status)) = collector.child.try_wait() {
            panic!("the collector exited ({status}): {}", std::fs::read_to_string(&collector.log).unwrap_or_default());
        }
        assert!(Instant::now() < deadline, "the collector does not listen on {ip}:{port}");
        std::thread::sleep(Duration::from_millis(50));
    }
    (collector, port)
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
    resource: HashMap<String, Value>,
}

impl Span {
    fn attr(&self, key: &str) -> &Value {
        self.attrs.get(key).unwrap_or(&Value::Null)
    }

    fn int(&self, key: &str) -> i64 {
        self.attr(key).as_i64().unwrap_or_else(|| panic!("span {} has no integer {key}: {:?}", self.name, self.attrs))
    }

    fn service(&self) -> &str {
        self.resource.get("service.name").and_then(Value::as_str).unwrap_or_default()
    }
}

/// OTLP span kinds.
const SERVER: u64 = 2;
const CLIENT: u64 = 3;

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
            for ss in rs["scopeSpans"].as_array().into_iter().flatten() {
                for s in ss["spans"].as_array().into_iter().flatten() {
                    spans.push(Span {
                        trace: s["traceId"].as_str().unwrap_or_default().to_string(),
                        id: s["spanId"].as_str().unwrap_or_default().to_string(),
                        parent: s["parentSpanId"].as_str().unwrap_or_default().to_string(),
                        name: s["name"].as_str().unwrap_or_default().to_string(),
                        kind: s["kind"].as_u64().unwrap_or_default(),
                        attrs: attributes(&s["attributes"]),
                        resource: resource.clone(),
                    });
                }
            }
        }
    }
    spans
}

/// Sets up the tenant, the LLM Integration and the crew; waits until the crew is Ready.
async fn setup(client: &kube::Client, model: &str, llm: &str) {
    fresh_tenant(
        client,
        TENANT,
        serde_json::json!({"displayName": "Traces", "database": {"isolation": "Shared", "deletionPolicy": "Delete"}}),
    )
    .await;
    kubectl_ok(
        &["create", "secret", "generic", "llm-key", "-n", NS, &format!("--from-literal=apiKey={API_KEY}")],
        None,
    );
    let _: Integration = create_in(client, NS, serde_json::json!({
        "apiVersion": "bizosaas.io/v1alpha1", "kind": "Integration", "metadata": {"name": "llm", "namespace": NS},
        "spec": {"type": "OpenAI", "endpoint": llm, "credentials": {"secretRef": {"name": "llm-key", "key": "apiKey"}}},
    }))
    .await;
    create_writer_crew(client, NS, CREW, model).await;
    let crews: Api<AgentCrew> = Api::namespaced(client.clone(), NS);
    wait_for("the crew Ready", TIMEOUT, || async {
        is_ready(&crews.get(CREW).await.ok()?.status?.conditions).then_some(())
    })
    .await;
}

/// `(port, [cidr])` of each rule of a NetworkPolicy's egress.
fn egress_rules(policy: &NetworkPolicy) -> Vec<(Option<i32>, Vec<String>)> {
    let egress = policy.spec.as_ref().and_then(|s| s.egress.clone()).unwrap_or_default();
    egress
        .iter()
        .map(|r| {
            let port = match r.ports.as_ref().and_then(|p| p.first()).and_then(|p| p.port.clone()) {
                Some(IntOrString::Int(port)) => Some(port),
                _ => None,
            };
            let cidrs = r.to.iter().flatten().filter_map(|p| Some(p.ip_block.as_ref()?.cidr.clone())).collect();
            (port, cidrs)
        })
        .collect()
}

// Multi-threaded: kubectl blocks a thread now and then.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workflow_step_the_crew_run_and_its_model_calls_are_one_trace() {
    let otelcol = std::env::var("BIZOSAAS_TEST_OTELCOL")
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| panic!("BIZOSAAS_TEST_OTELCOL is not set: {HOW_COLLECTOR}"));
    assert!(Path::new(&otelcol).is_file(), "BIZOSAAS_TEST_OTELCOL={otelcol} is not a file: {HOW_COLLECTOR}");
    let (llm, model) = llm_server();
    let ip = node_ip();
    let dir = std::env::temp_dir().join(format!("bizosaas-e2e-traces-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join("traces.jsonl");
    let (collector, port) = start_collector(&otelcol, &dir, &out, &ip);

    // The operator and the crews' runtimes export to the collector.
    let endpoint = format!("http://{ip}:{port}");
    install_crds();
    let (operator_endpoint, crew_endpoint) =
        (format!("otel.endpoint={endpoint}"), format!("otel.crewEndpoint={endpoint}"));
    InCluster::install(&["--set", &operator_endpoint, "--set", "otel.crews=true", "--set", &crew_endpoint]);
    InCluster.wait_ready().await;
    let client = client().await;
    setup(&client, &model, &llm).await;

    // The crew's egress policy allows the collector, on its port exactly its address.
    let crews: Api<AgentCrew> = Api::namespaced(client.clone(), NS);
    let crew = crews.get(CREW).await.unwrap();
    let conditions = crew.status.unwrap().conditions;
    let traces = find_condition(&conditions, "TracesAllowed").expect("a TracesAllowed condition").clone();
    assert_eq!((traces.status.as_str(), traces.reason.as_str()), ("True", "Allowed"), "{traces:?}");
    let policy =
        Api::<NetworkPolicy>::namespaced(client.clone(), NS).get(&format!("crew-{CREW}-egress")).await.unwrap();
    let rules = egress_rules(&policy);
    let to_collector: Vec<&Vec<String>> =
        rules.iter().filter(|(p, _)| *p == Some(i32::from(port))).map(|(_, cidrs)| cidrs).collect();
    assert_eq!(to_collector, [&vec![format!("{ip}/32")]], "the collector's rule: {rules:?}");

    // The workflow: one agentTask step on the crew.
    let workflows: Api<Workflow> = Api::namespaced(client.clone(), NS);
    let _: Workflow = create_in(
        &client,
        NS,
        serde_json::json!({
            "apiVersion": "bizosaas.io/v1alpha1", "kind": "Workflow", "metadata": {"name": "traced", "namespace": NS},
            "spec": {"steps": [{"name": STEP, "agentTask": {"crew": CREW, "agent": "writer",
                                                            "description": "Say one word about autumn."}}]}
        }),
    )
    .await;
    wait_for("the Workflow Ready", TIMEOUT, || async {
        is_ready(&workflows.get("traced").await.ok()?.status?.conditions).then_some(())
    })
    .await;
    let _: WorkflowRun = create_in(
        &client,
        NS,
        serde_json::json!({
            "apiVersion": "bizosaas.io/v1alpha1", "kind": "WorkflowRun", "metadata": {"name": RUN, "namespace": NS},
            "spec": {"workflow": "traced"},
        }),
    )
    .await;
    let runs: Api<WorkflowRun> = Api::namespaced(client.clone(), NS);
    let run = wait_for(&format!("WorkflowRun {RUN} to finish"), TIMEOUT, || async {
        let run = runs.get(RUN).await.ok()?;
        run.status.as_ref()?.phase.filter(|p| p.is_finished())?;
        Some(run)
    })
    .await;
    let status = run.status.unwrap();
    assert_eq!(status.phase, Some(RunPhase::Succeeded), "{status:#?}");
    let step = status.steps.iter().find(|s| s.name == STEP).unwrap();
    let crew_run_id = step.attempts[0].reference.clone().expect("the crew run's id is recorded");
    let total_tokens = status.total_tokens.expect("the run's token usage");

    // The spans arrive within the exporters' batch delays.
    let deadline = Instant::now() + Duration::from_secs(90);
    let (text, spans) = loop {
        let text = std::fs::read_to_string(&out).unwrap_or_default();
        let spans = parse(&text);
        let step_span =
            spans.iter().any(|s| s.name == format!("workflow_step {STEP}") && s.attr("bizosaas.workflow.run") == RUN);
        let run_span = spans.iter().any(|s| s.attr("bizosaas.run.id") == crew_run_id.as_str());
        if (step_span && run_span) || Instant::now() > deadline {
            break (text, spans);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let log = std::fs::read_to_string(&collector.log).unwrap_or_default();
    drop(collector);
    assert!(!spans.is_empty(), "the collector wrote no spans to {}; its log: {log}", out.display());

    // The crew run's span, the runtime's, with the resource attributes the operator set.
    let crew_run = spans
        .iter()
        .find(|s| s.attr("bizosaas.run.id") == crew_run_id.as_str())
        .unwrap_or_else(|| panic!("no crew run span for run {crew_run_id}; spans: {:#?}", names(&spans)));
    let trace = crew_run.trace.as_str();
    let in_trace: Vec<&Span> = spans.iter().filter(|s| s.trace == trace).collect();
    let describe = || names(&in_trace.iter().copied().cloned().collect::<Vec<_>>());
    assert_eq!(crew_run.name, format!("crew_run {CREW}"));
    assert_eq!(crew_run.service(), "bizosaas-agent");
    assert_eq!(crew_run.resource.get("k8s.namespace.name"), Some(&Value::from(NS)), "{:?}", crew_run.resource);
    assert_eq!(crew_run.resource.get("bizosaas.crew.name"), Some(&Value::from(CREW)), "{:?}", crew_run.resource);
    assert_eq!(crew_run.attr("bizosaas.run.status"), "succeeded");
    assert_eq!(crew_run.attr("bizosaas.crew.namespace"), NS);

    // Its parent: the server span of the operator's POST.
    let server = in_trace
        .iter()
        .find(|s| s.id == crew_run.parent)
        .unwrap_or_else(|| panic!("the crew run's parent is not in its trace: {:#?}", describe()));
    assert_eq!(server.name, "POST /v1/runs");
    assert_eq!((server.kind, server.service()), (SERVER, "bizosaas-agent"));
    assert_eq!(server.attr("http.route"), "/v1/runs");
    assert!((200..300).contains(&server.int("http.response.status_code")), "{server:?}");

    // The server span's parent: the operator's span of the step, in the same trace.
    let step_span = spans
        .iter()
        .find(|s| s.id == server.parent)
        .unwrap_or_else(|| panic!("the server span's parent {} was not exported: {:#?}", server.parent, describe()));
    assert_eq!(step_span.trace, trace, "the step and the crew run are one trace");
    assert_eq!(step_span.name, format!("workflow_step {STEP}"));
    assert_eq!(step_span.service(), "bizosaas-operator");
    assert_eq!(step_span.attr("bizosaas.workflow.run"), RUN);
    assert_eq!(step_span.attr("bizosaas.workflow.step"), STEP);
    assert_eq!(step_span.attr("bizosaas.workflow.step.kind"), "agentTask");
    assert_eq!(step_span.attr("k8s.namespace.name"), NS);
    // And the step's parent: the reconcile that launched it.
    let reconcile = in_trace
        .iter()
        .find(|s| s.id == step_span.parent)
        .unwrap_or_else(|| panic!("the step span's parent is not in the trace: {:#?}", describe()));
    assert_eq!(reconcile.name, "reconcile workflowrun");
    assert_eq!(reconcile.attr("k8s.object.name"), RUN);

    // The agent's task under the run, the model calls under the task.
    let agents: Vec<&Span> = in_trace.iter().copied().filter(|s| s.parent == crew_run.id).collect();
    assert_eq!(agents.len(), 1, "one task: {:#?}", describe());
    assert_eq!(agents[0].name, "invoke_agent writer");
    assert_eq!(agents[0].attr("gen_ai.agent.name"), "writer");
    let chats: Vec<&Span> = in_trace.iter().copied().filter(|s| s.parent == agents[0].id).collect();
    assert!(!chats.is_empty(), "no model call under the task: {:#?}", describe());
    let mut tokens = 0;
    for chat in &chats {
        assert_eq!(chat.name, format!("chat {model}"), "{chat:?}");
        assert_eq!(chat.kind, CLIENT);
        assert_eq!(chat.attr("gen_ai.operation.name"), "chat");
        assert_eq!(chat.attr("gen_ai.request.model"), model.as_str());
        assert!(chat.int("gen_ai.usage.input_tokens") > 0, "{chat:?}");
        assert!(chat.int("gen_ai.usage.output_tokens") > 0, "{chat:?}");
        tokens += chat.int("gen_ai.usage.input_tokens") + chat.int("gen_ai.usage.output_tokens");
    }
    assert_eq!(tokens, total_tokens, "the model calls' tokens add up to the WorkflowRun's");
    let run_tokens = crew_run.int("gen_ai.usage.input_tokens") + crew_run.int("gen_ai.usage.output_tokens");
    assert_eq!(run_tokens, total_tokens, "the crew run's tokens are the WorkflowRun's");
    // Only the operator's and the runtime's spans are in the trace.
    let services: HashSet<&str> = in_trace.iter().map(|s| s.service()).collect();
    assert_eq!(services, HashSet::from(["bizosaas-operator", "bizosaas-agent"]), "{:#?}", describe());

    // No credential and no authorization header reached the collector.
    for secret in [API_KEY, "Bearer"] {
        assert!(!text.contains(secret), "the exported spans contain {secret:?}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// `name id <- parent (service)` of each span, for messages.
fn names(spans: &[Span]) -> Vec<String> {
    spans.iter().map(|s| format!("{} {} <- {} ({})", s.name, s.id, s.parent, s.service())).collect()
}
