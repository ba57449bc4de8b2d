//! Workflows run for real: a DAG of an agent task on a crew pod (against the llama.cpp
//! server), a container Job on the real node and HTTP calls through an Integration to an
//! endpoint the test controls; retries, cancellation, bad input refused before anything
//! starts, a cron schedule, and an http step that may not dial what the tenant cannot reach.

mod support;

use bizosaas_crds::common::{find_condition, is_ready};
use bizosaas_crds::workflow::RunPhase;
use bizosaas_crds::{Integration, Workflow, WorkflowRun};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, Patch, PatchParams};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::*;

const TENANT: &str = "e2e-workflow";
const NS: &str = "tenant-e2e-workflow";
const TIMEOUT: Duration = Duration::from_secs(180);

/// One request the endpoint saw.
#[derive(Clone, Debug)]
struct Seen {
    path: String,
    key: Option<String>,
    authorization: Option<String>,
    body: String,
}

/// The endpoint every test of this file calls, with what it saw; it serves from a thread of
/// its own, so it outlives the runtime of whichever test started it.
fn shared_endpoint() -> &'static (u16, Arc<Mutex<Vec<Seen>>>) {
    static ENDPOINT: std::sync::OnceLock<(u16, Arc<Mutex<Vec<Seen>>>)> = std::sync::OnceLock::new();
    ENDPOINT.get_or_init(|| {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let recorder = seen.clone();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(async move {
                tx.send(endpoint(recorder).await).unwrap();
                std::future::pending::<()>().await
            })
        });
        (rx.recv().unwrap(), seen)
    })
}

/// The tenant, Integrations and crew, set up once for every test of this file.
async fn ready_tenant(client: &kube::Client) -> Arc<Mutex<Vec<Seen>>> {
    static SETUP: tokio::sync::Mutex<bool> = tokio::sync::Mutex::const_new(false);
    let mut done = SETUP.lock().await;
    let (port, seen) = shared_endpoint();
    if !*done {
        setup(client, *port).await;
        *done = true;
    }
    seen.clone()
}

/// An HTTP endpoint on the node's address that records every request and answers
/// `published:<body>`; `/flaky` fails its first request with 503.
async fn endpoint(seen: Arc<Mutex<Vec<Seen>>>) -> u16 {
    use axum::body::Bytes;
    use axum::http::{HeaderMap, StatusCode, Uri};
    let handler = move |uri: Uri, headers: HeaderMap, body: Bytes| {
        let seen = seen.clone();
        async move {
            let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
            let body = String::from_utf8_lossy(&body).into_owned();
            let path = uri.path().to_string();
            let mut all = seen.lock().unwrap();
            let earlier = all.iter().filter(|s| s.path == path).count();
            all.push(Seen {
                path: path.clone(),
                key: header("idempotency-key"),
                authorization: header("authorization"),
                body: body.clone(),
            });
            if path == "/flaky" && earlier == 0 {
                return (StatusCode::SERVICE_UNAVAILABLE, "not yet".to_string());
            }
            (StatusCode::OK, format!("published:{body}"))
        }
    };
    let app = axum::Router::new().fallback(handler);
    let listener = tokio::net::TcpListener::bind((node_ip(), 0)).await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    port
}

/// Waits until run `name` has finished; returns it.
async fn finished(runs: &Api<WorkflowRun>, name: &str) -> WorkflowRun {
    wait_for(&format!("WorkflowRun {name} to finish"), TIMEOUT, || async {
        let run = runs.get(name).await.ok()?;
        run.status.as_ref()?.phase.filter(|p| p.is_finished())?;
        Some(run)
    })
    .await
}

fn step_phase(run: &WorkflowRun, step: &str) -> Option<RunPhase> {
    run.status.as_ref()?.steps.iter().find(|s| s.name == step).map(|s| s.phase)
}

/// Sets up the tenant once: the endpoint's and the LLM's Integrations, and a crew.
async fn setup(client: &kube::Client, port: u16) {
    let (llm, model) = llm_server();
    fresh_tenant(
        client,
        TENANT,
        serde_json::json!({"displayName": "Workflows", "database": {"isolation": "Shared", "deletionPolicy": "Delete"}}),
    )
    .await;
    kubectl_ok(&["create", "secret", "generic", "hook-token", "-n", NS, "--from-literal=token=s3cret-hook"], None);
    let _: Integration = create_in(
        client,
        NS,
        serde_json::json!({
            "apiVersion": "bizosaas.io/v1alpha1", "kind": "Integration", "metadata": {"name": "hook", "namespace": NS},
            "spec": {"type": "Webhook", "endpoint": format!("http://{}:{port}", node_ip()),
                     "credentials": {"secretRef": {"name": "hook-token", "key": "token"}}},
        }),
    )
    .await;
    llm_integration(client, NS, &llm, "llm-key").await;
    create_writer_crew(client, NS, "writers", &model).await;
    wait_crew_ready(client, NS, "writers", TIMEOUT).await;
}

fn toolbox_step(name: &str, deps: &[&str], command: &[&str], args: &[&str]) -> serde_json::Value {
    serde_json::json!({"name": name, "dependsOn": deps,
        "container": {"image": "docker.io/bizosaas/toolbox:harness", "command": command, "args": args}})
}

// Multi-threaded: the endpoint keeps serving while kubectl blocks a thread.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workflows_run_agent_container_and_http_steps_durably() {
    operator().wait_ready().await;
    let client = client().await;
    let seen = ready_tenant(&client).await;
    let workflows: Api<Workflow> = Api::namespaced(client.clone(), NS);
    let runs: Api<WorkflowRun> = Api::namespaced(client.clone(), NS);

    // The DAG: research (agent) and count (container) in parallel, then publish (HTTP) with
    // both outputs, and a flaky HTTP step that succeeds on its retry.
    let workflow: Workflow = create_in(&client, NS, serde_json::json!({
        "apiVersion": "bizosaas.io/v1alpha1", "kind": "Workflow", "metadata": {"name": "blog", "namespace": NS},
        "spec": {
            "parameters": [{"name": "topic", "value": "spring"}],
            "retry": {"limit": 2, "backoff": {"duration": "1s", "factor": 2}},
            "activeDeadlineSeconds": 600,
            "steps": [
                {"name": "research", "agentTask": {"crew": "writers", "agent": "writer",
                    "description": "Say one word about {{ params.topic }}."}},
                toolbox_step("count", &[], &["/bin/echo"], &["words:{{ params.topic }}"]),
                {"name": "publish", "dependsOn": ["research", "count"],
                 "http": {"integration": "hook", "method": "POST", "path": "/publish",
                          "body": "{{ steps.count.output }}|{{ steps.research.output }}"}},
                {"name": "flaky", "dependsOn": ["count"], "http": {"integration": "hook", "method": "POST", "path": "/flaky"}},
            ]}
    }))
    .await;
    wait_for("the Workflow Ready", TIMEOUT, || async {
        is_ready(&workflows.get("blog").await.ok()?.status?.conditions).then_some(())
    })
    .await;
    let run: WorkflowRun = create_in(&client, NS, serde_json::json!({
        "apiVersion": "bizosaas.io/v1alpha1", "kind": "WorkflowRun", "metadata": {"name": "blog-manual-1", "namespace": NS},
        "spec": {"workflow": "blog", "parameters": [{"name": "topic", "value": "summer"}]},
    }))
    .await;
    let uid = run.metadata.uid.clone().unwrap();
    let run = finished(&runs, "blog-manual-1").await;
    let status = run.status.clone().unwrap();
    assert_eq!(status.phase, Some(RunPhase::Succeeded), "{status:#?}");
    assert!(is_ready(&status.conditions), "{:?}", status.conditions);
    assert_eq!(find_condition(&status.conditions, "Succeeded").map(|c| c.status.as_str()), Some("True"));
    let snapshot = status.snapshot.as_ref().unwrap();
    assert_eq!(snapshot.generation, workflow.metadata.generation.unwrap());
    assert_eq!(snapshot.parameters[0].value, "summer");

    // Each step's outcome, attempts and what they ran as.
    let step = |name: &str| status.steps.iter().find(|s| s.name == name).unwrap().clone();
    let count = step("count");
    assert_eq!(count.attempts[0].reference.as_deref(), Some("blog-manual-1-count-1"));
    assert_eq!(count.output.as_deref().map(str::trim), Some("words:summer"));
    let research = step("research");
    assert!(research.attempts[0].reference.as_ref().is_some_and(|r| !r.is_empty()), "the crew run's id is recorded");
    assert!(status.total_tokens.unwrap_or(0) > 0, "token usage is recorded: {status:#?}");
    let flaky = step("flaky");
    assert_eq!(flaky.attempts.len(), 2, "{flaky:#?}");
    assert_eq!(flaky.attempts[0].phase, RunPhase::Failed);
    assert!(flaky.attempts[0].message.as_ref().unwrap().contains("503"), "{flaky:#?}");
    assert_eq!(flaky.phase, RunPhase::Succeeded);

    // Full outputs in the run's ConfigMap, the preview in status.
    let outputs =
        Api::<ConfigMap>::namespaced(client.clone(), NS).get(status.outputs.as_deref().unwrap()).await.unwrap();
    let data: BTreeMap<String, String> = outputs.data.unwrap();
    assert_eq!(data.keys().collect::<Vec<_>>(), ["count", "flaky", "publish", "research"]);
    assert_eq!(data["publish"], format!("published:{}|{}", data["count"], data["research"]));

    // What the endpoint saw: the credential, each attempt's key exactly once.
    let seen = seen.lock().unwrap().clone();
    let publish: Vec<&Seen> = seen.iter().filter(|s| s.path == "/publish").collect();
    assert_eq!(publish.len(), 1, "{seen:#?}");
    assert_eq!(publish[0].key.as_deref(), Some(format!("{uid}/publish/1").as_str()));
    assert_eq!(publish[0].authorization.as_deref(), Some("Bearer s3cret-hook"));
    assert!(publish[0].body.starts_with("words:summer"), "{:?}", publish[0].body);
    let flaky_keys: Vec<Option<&str>> = seen.iter().filter(|s| s.path == "/flaky").map(|s| s.key.as_deref()).collect();
    assert_eq!(flaky_keys, [Some(format!("{uid}/flaky/1").as_str()), Some(format!("{uid}/flaky/2").as_str())]);

    // The credential stays out of status and events.
    let dump = kubectl_ok(&["get", "workflowrun,events", "-n", NS, "-o", "yaml"], None);
    assert!(!dump.contains("s3cret-hook"), "the credential leaked");

    // The Job ran restricted, owned by the run.
    let job = Api::<Job>::namespaced(client.clone(), NS).get("blog-manual-1-count-1").await.unwrap();
    assert_eq!(job.metadata.owner_references.unwrap()[0].uid, uid);
    let pod = job.spec.unwrap().template.spec.unwrap();
    assert_eq!(pod.automount_service_account_token, Some(false));

    // A run's spec is fixed except for cancelling, which cannot be undone.
    let change = Patch::Merge(serde_json::json!({"spec": {"workflow": "other"}}));
    let refused = runs.patch("blog-manual-1", &PatchParams::default(), &change).await.unwrap_err();
    assert!(refused.to_string().contains("spec.workflow is immutable"), "{refused}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_runs_are_refused_before_anything_starts_and_cancel_stops_a_job() {
    operator().wait_ready().await;
    let client = client().await;
    ready_tenant(&client).await;
    let runs: Api<WorkflowRun> = Api::namespaced(client.clone(), NS);
    let _: Workflow = create_in(
        &client,
        NS,
        serde_json::json!({
            "apiVersion": "bizosaas.io/v1alpha1", "kind": "Workflow", "metadata": {"name": "slow", "namespace": NS},
            "spec": {"parameters": [{"name": "seconds", "value": "300"}],
                     "steps": [toolbox_step("wait", &[], &["/bin/sleep"], &["{{ params.seconds }}"])]}
        }),
    )
    .await;

    // A Workflow that does not exist: waiting, with the reason.
    let _: WorkflowRun = create_in(&client, NS, serde_json::json!({
        "apiVersion": "bizosaas.io/v1alpha1", "kind": "WorkflowRun", "metadata": {"name": "ghost-1", "namespace": NS},
        "spec": {"workflow": "ghost"},
    }))
    .await;
    wait_for("ghost-1 to say its Workflow is missing", TIMEOUT, || async {
        let c = runs.get("ghost-1").await.ok()?.status?.conditions;
        (find_condition(&c, "Ready")?.reason == "WorkflowNotFound").then_some(())
    })
    .await;

    // An unknown parameter: failed for good, nothing started.
    let _: WorkflowRun = create_in(&client, NS, serde_json::json!({
        "apiVersion": "bizosaas.io/v1alpha1", "kind": "WorkflowRun", "metadata": {"name": "slow-typo", "namespace": NS},
        "spec": {"workflow": "slow", "parameters": [{"name": "secnds", "value": "1"}]},
    }))
    .await;
    let typo = finished(&runs, "slow-typo").await.status.unwrap();
    assert_eq!(typo.phase, Some(RunPhase::Failed));
    let stalled = find_condition(&typo.conditions, "Stalled").unwrap();
    assert_eq!((stalled.status.as_str(), stalled.reason.as_str()), ("True", "UnknownParameter"));
    let jobs: Api<Job> = Api::namespaced(client.clone(), NS);
    assert!(jobs.get_opt("slow-typo-wait-1").await.unwrap().is_none(), "a refused run started a Job");

    // Cancelling stops the Job; cancelling cannot be undone.
    let _: WorkflowRun = create_in(&client, NS, serde_json::json!({
        "apiVersion": "bizosaas.io/v1alpha1", "kind": "WorkflowRun", "metadata": {"name": "slow-1", "namespace": NS},
        "spec": {"workflow": "slow"},
    }))
    .await;
    wait_for("the Job of slow-1 to run", TIMEOUT, || async {
        jobs.get_opt("slow-1-wait-1").await.ok()?.and_then(|j| j.status?.active).filter(|a| *a > 0)
    })
    .await;
    let cancel = Patch::Merge(serde_json::json!({"spec": {"cancel": true}}));
    runs.patch("slow-1", &PatchParams::default(), &cancel).await.unwrap();
    let cancelled = finished(&runs, "slow-1").await;
    assert_eq!(cancelled.status.as_ref().unwrap().phase, Some(RunPhase::Cancelled));
    assert_eq!(step_phase(&cancelled, "wait"), Some(RunPhase::Cancelled));
    wait_for("the Job of slow-1 to go", TIMEOUT, || async {
        let job = jobs.get_opt("slow-1-wait-1").await.ok()?;
        job.is_none_or(|j| j.metadata.deletion_timestamp.is_some()).then_some(())
    })
    .await;
    let resume = Patch::Merge(serde_json::json!({"spec": {"cancel": false}}));
    let refused = runs.patch("slow-1", &PatchParams::default(), &resume).await.unwrap_err();
    assert!(refused.to_string().contains("may only go from false to true"), "{refused}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_step_cannot_dial_what_the_tenant_cannot_reach() {
    operator().wait_ready().await;
    let client = client().await;
    ready_tenant(&client).await;
    // The API server, and the operator's own pod (which every tenant pod admits).
    let api_server = api_server_address();
    let (leader, _) = operator().leader().await.expect("an operator leader");
    let operator_ip =
        kubectl_ok(&["get", "pod", "-n", OPERATOR_NAMESPACE, &leader, "-o", "jsonpath={.status.podIP}"], None);
    let targets = [
        ("apiserver", format!("https://{}", api_server.trim()), "the Kubernetes API server"),
        ("platform", format!("http://{}:8080", operator_ip.trim()), "a pod of namespace bizosaas-system"),
        ("metadata", "http://169.254.169.254".to_string(), "link-local"),
        ("loopback", "http://127.0.0.1:8080".to_string(), "loopback"),
    ];
    for (name, url, _) in &targets {
        let _: Integration = create_in(&client, NS, serde_json::json!({
            "apiVersion": "bizosaas.io/v1alpha1", "kind": "Integration",
            "metadata": {"name": format!("steal-{name}"), "namespace": NS},
            "spec": {"type": "Webhook", "endpoint": url, "credentials": {"secretRef": {"name": "hook-token", "key": "token"}}},
        }))
        .await;
    }
    let steps: Vec<serde_json::Value> = targets
        .iter()
        .map(|(name, _, _)| serde_json::json!({"name": name, "http": {"integration": format!("steal-{name}"), "path": "/"}}))
        .collect();
    let _: Workflow = create_in(
        &client,
        NS,
        serde_json::json!({
            "apiVersion": "bizosaas.io/v1alpha1", "kind": "Workflow", "metadata": {"name": "steal", "namespace": NS},
            "spec": {"steps": steps}
        }),
    )
    .await;
    let _: WorkflowRun = create_in(&client, NS, serde_json::json!({
        "apiVersion": "bizosaas.io/v1alpha1", "kind": "WorkflowRun", "metadata": {"name": "steal-1", "namespace": NS},
        "spec": {"workflow": "steal"},
    }))
    .await;
    let runs: Api<WorkflowRun> = Api::namespaced(client.clone(), NS);
    let run = finished(&runs, "steal-1").await;
    for (name, _, why) in targets {
        let step = run.status.as_ref().unwrap().steps.iter().find(|s| s.name == name).unwrap();
        assert_eq!(step.phase, RunPhase::Failed, "{step:#?}");
        let message = step.message.as_deref().unwrap_or_default();
        assert!(message.contains("refused to connect") && message.contains(why), "{name}: {message}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schedule_creates_one_run_per_tick_and_a_bad_one_is_reported() {
    operator().wait_ready().await;
    let client = client().await;
    ready_tenant(&client).await;
    let workflows: Api<Workflow> = Api::namespaced(client.clone(), NS);
    let _: Workflow = create_in(&client, NS, serde_json::json!({
        "apiVersion": "bizosaas.io/v1alpha1", "kind": "Workflow", "metadata": {"name": "nonsense", "namespace": NS},
        "spec": {"schedule": "99 99 99 99 99", "steps": [{"name": "ping", "http": {"integration": "hook", "path": "/ping"}}]}
    }))
    .await;
    wait_for("the bad schedule reported", TIMEOUT, || async {
        let c = workflows.get("nonsense").await.ok()?.status?.conditions;
        (find_condition(&c, "Ready")?.reason == "InvalidSchedule").then_some(())
    })
    .await;

    let _: Workflow = create_in(
        &client,
        NS,
        serde_json::json!({
            "apiVersion": "bizosaas.io/v1alpha1", "kind": "Workflow", "metadata": {"name": "minutely", "namespace": NS},
            "spec": {"schedule": "* * * * *", "timeZone": "Europe/Berlin", "concurrencyPolicy": "Forbid",
                     "successfulRunsHistoryLimit": 1,
                     "steps": [{"name": "ping", "http": {"integration": "hook", "path": "/ping"}}]}
        }),
    )
    .await;
    let runs: Api<WorkflowRun> = Api::namespaced(client.clone(), NS);
    let scheduled = wait_for("a scheduled run", Duration::from_secs(90), || async {
        let status = workflows.get("minutely").await.ok()?.status?;
        let name = status.last_run?;
        status.next_schedule_time?;
        Some(name)
    })
    .await;
    let at = workflows.get("minutely").await.unwrap().status.unwrap().last_schedule_time.unwrap().0;
    assert_eq!(scheduled, format!("minutely-{}", at.as_second() / 60), "the run is named after its scheduled minute");
    let run = finished(&runs, &scheduled).await;
    assert_eq!(run.status.unwrap().phase, Some(RunPhase::Succeeded));
    let owned = runs.get(&scheduled).await.unwrap().metadata.owner_references.unwrap();
    assert_eq!(owned[0].kind, "Workflow");
    // Suspended: no further runs.
    let suspend = Patch::Merge(serde_json::json!({"spec": {"suspend": true}}));
    workflows.patch("minutely", &PatchParams::default(), &suspend).await.unwrap();
}
