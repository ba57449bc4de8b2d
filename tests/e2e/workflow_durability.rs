//! The durability contract, proven against the real parts: while 20 runs of a workflow with
//! an agent task, a container Job and two HTTP calls execute, the leading operator process is
//! killed with SIGKILL at random points 20 times and the API server is restarted once. Every
//! run finishes with the right outputs, no finished step runs again, no Job or crew run exists
//! twice for one attempt, and the HTTP endpoint sees no key the runs did not record.

mod support;

use bizosaas_crds::workflow::RunPhase;
use bizosaas_crds::{AgentCrew, Integration, Workflow, WorkflowRun};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, ListParams, PostParams};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::*;

const TENANT: &str = "e2e-wf-durable";
const NS: &str = "tenant-e2e-wf-durable";
const RUNS: usize = 20;
const KILLS: usize = 20;
const TIMEOUT: Duration = Duration::from_secs(180);

/// Requests by idempotency key, in arrival order, and the effect applied once per key.
#[derive(Default)]
struct Endpoint {
    deliveries: Vec<String>,
    effects: BTreeMap<String, String>,
}

/// The endpoint the HTTP steps call: it honours `Idempotency-Key` (a repeated key gets the
/// first answer and changes nothing). It serves from its own thread.
fn start_endpoint(state: Arc<Mutex<Endpoint>>) -> u16 {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async move {
            use axum::body::Bytes;
            use axum::http::{HeaderMap, StatusCode};
            let handler = move |headers: HeaderMap, body: Bytes| {
                let state = state.clone();
                async move {
                    let Some(key) = headers.get("idempotency-key").and_then(|v| v.to_str().ok()).map(String::from)
                    else {
                        return (StatusCode::BAD_REQUEST, "no Idempotency-Key".to_string());
                    };
                    let mut state = state.lock().unwrap();
                    state.deliveries.push(key.clone());
                    let answer = format!("done:{}", String::from_utf8_lossy(&body));
                    (StatusCode::OK, state.effects.entry(key).or_insert(answer).clone())
                }
            };
            let listener = tokio::net::TcpListener::bind((node_ip(), 0)).await.unwrap();
            tx.send(listener.local_addr().unwrap().port()).unwrap();
            axum::serve(listener, axum::Router::new().fallback(handler)).await.unwrap();
        })
    });
    rx.recv().unwrap()
}

/// The pid of the operator process running in pod `pod`, found through its environment.
fn operator_pid(pod: &str) -> Option<i32> {
    let wanted = format!("POD_NAME={pod}");
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else { continue };
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        if !String::from_utf8_lossy(&cmdline).contains("bizosaas-operator") {
            continue;
        }
        let environ = std::fs::read(entry.path().join("environ")).unwrap_or_default();
        if environ.split(|b| *b == 0).any(|e| e == wanted.as_bytes()) {
            return Some(pid);
        }
    }
    None
}

/// The pod holding the operator's Lease, Ready or not: a leader is killed as soon as it leads.
async fn lease_holder() -> Option<String> {
    use k8s_openapi::api::coordination::v1::Lease;
    let lease =
        Api::<Lease>::namespaced(client().await, OPERATOR_NAMESPACE).get_opt(OPERATOR_DEPLOYMENT).await.ok()??;
    lease.spec?.holder_identity
}

/// A small deterministic generator for the kill times, so a failure can be replayed.
fn next_random(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

/// Kills the leader with SIGKILL `KILLS` times at random points, restarting the API server
/// once halfway; returns how many kills landed.
async fn killer(seed: u64) -> usize {
    let mut state = seed;
    let mut kills = 0;
    while kills < KILLS {
        tokio::time::sleep(Duration::from_millis(500 + next_random(&mut state) % 3500)).await;
        let Some(leader) = lease_holder().await else { continue };
        let Some(pid) = operator_pid(&leader) else { continue };
        // SAFETY: kill(2) with a pid read from /proc; the worst case is a stale pid.
        if unsafe { libc::kill(pid, libc::SIGKILL) } == 0 {
            kills += 1;
            eprintln!("kill {kills}: SIGKILL to {leader} (pid {pid})");
        }
        if kills == KILLS / 2 {
            let out = tokio::task::spawn_blocking(|| {
                std::process::Command::new("bash")
                    .arg(repo().join("tests/harness/cluster.sh"))
                    .arg("restart-apiserver")
                    .output()
                    .unwrap()
            })
            .await
            .unwrap();
            assert!(out.status.success(), "restarting the API server failed: {}", String::from_utf8_lossy(&out.stderr));
            eprintln!("API server restarted");
        }
    }
    kills
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn runs_survive_sigkills_of_the_operator_and_an_api_server_restart() {
    let (llm, model) = llm_server();
    operator().wait_ready().await;
    let client = client().await;
    fresh_tenant(
        &client,
        TENANT,
        serde_json::json!({"displayName": "Durable", "plan": "growth",
                           "database": {"isolation": "Shared", "deletionPolicy": "Delete"}}),
    )
    .await;
    let endpoint = Arc::new(Mutex::new(Endpoint::default()));
    let port = start_endpoint(endpoint.clone());
    kubectl_ok(&["create", "secret", "generic", "hook-token", "-n", NS, "--from-literal=token=t"], None);
    let _: Integration = create_in(
        &client,
        NS,
        serde_json::json!({
            "apiVersion": "bizosaas.io/v1alpha1", "kind": "Integration", "metadata": {"name": "hook", "namespace": NS},
            "spec": {"type": "Webhook", "endpoint": format!("http://{}:{port}", node_ip()),
                     "credentials": {"secretRef": {"name": "hook-token", "key": "token"}}},
        }),
    )
    .await;
    llm_integration(&client, NS, &llm, "k").await;
    // Memory on: the crew keeps its runs in the tenant database, where the test counts them.
    let _: AgentCrew = create_in(
        &client,
        NS,
        serde_json::json!({
            "apiVersion": "bizosaas.io/v1alpha1", "kind": "AgentCrew", "metadata": {"name": "writers", "namespace": NS},
            "spec": {"process": "Sequential", "model": {"integration": "llm", "name": model, "maxTokens": 8},
                     "agents": [{"name": "writer", "template": "copywriting", "maxIterations": 1}],
                     "memory": {"enabled": true}},
        }),
    )
    .await;
    wait_crew_ready(&client, NS, "writers", TIMEOUT).await;
    let _: Workflow = create_in(&client, NS, serde_json::json!({
        "apiVersion": "bizosaas.io/v1alpha1", "kind": "Workflow", "metadata": {"name": "durable", "namespace": NS},
        "spec": {
            "parameters": [{"name": "n", "value": "0"}],
            "retry": {"limit": 5, "backoff": {"duration": "1s", "factor": 2, "maxDuration": "10s"}},
            "steps": [
                {"name": "research", "agentTask": {"crew": "writers", "agent": "writer", "description": "Say the number {{ params.n }}."}},
                {"name": "count", "container": {"image": "docker.io/bizosaas/toolbox:harness",
                    "command": ["/bin/sh", "-c"], "args": ["sleep 2; echo n={{ params.n }}"]}},
                {"name": "notify", "dependsOn": ["count"],
                 "http": {"integration": "hook", "method": "POST", "path": "/notify", "body": "{{ steps.count.output }}"}},
                {"name": "publish", "dependsOn": ["research", "notify"],
                 "http": {"integration": "hook", "method": "POST", "path": "/publish", "body": "{{ steps.notify.output }}"}},
            ]}
    }))
    .await;

    // Runs start over the first part of the kills, so kills land at every stage of a run.
    let seed = std::env::var("BIZOSAAS_TEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(0x5eed_2026_u64);
    eprintln!("kill schedule seed {seed} (BIZOSAAS_TEST_SEED replays it)");
    let kills = tokio::spawn(killer(seed));
    let runs: Api<WorkflowRun> = Api::namespaced(client.clone(), NS);
    for i in 0..RUNS {
        let run: WorkflowRun = serde_json::from_value(serde_json::json!({
            "apiVersion": "bizosaas.io/v1alpha1", "kind": "WorkflowRun", "metadata": {"name": format!("durable-{i}"), "namespace": NS},
            "spec": {"workflow": "durable", "parameters": [{"name": "n", "value": i.to_string()}]},
        }))
        .unwrap();
        // The API server may be restarting: retry the create until it answers.
        let started = Instant::now();
        loop {
            match runs.create(&PostParams::default(), &run).await {
                Ok(_) => break,
                Err(kube::Error::Api(e)) if e.code == 409 => break,
                Err(e) if started.elapsed() < TIMEOUT => {
                    eprintln!("creating durable-{i}: {e}; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Err(e) => panic!("creating durable-{i}: {e}"),
            }
        }
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    let landed = kills.await.unwrap();
    assert_eq!(landed, KILLS);

    let all: Vec<WorkflowRun> = wait_for("every run to finish", Duration::from_secs(600), || async {
        let list = runs.list(&ListParams::default()).await.ok()?;
        let finished =
            list.items.iter().filter(|r| r.status.as_ref().and_then(|s| s.phase).is_some_and(|p| p.is_finished()));
        (finished.count() == RUNS).then_some(list.items)
    })
    .await;

    // The crew runs, as the tenant's app role sees them.
    let db = tenant_database(&client, NS).await;
    let crew_runs: Vec<(String, i64)> = db
        .query("SELECT idempotency_key, count(*) FROM agent_runs WHERE crew = 'writers' GROUP BY 1", &[])
        .await
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    assert!(crew_runs.iter().all(|(_, n)| *n == 1), "a crew run exists twice for one key: {crew_runs:?}");
    let crew_keys: BTreeSet<String> = crew_runs.into_iter().map(|(k, _)| k).collect();

    let (deliveries, effects) = {
        let endpoint = endpoint.lock().unwrap();
        (endpoint.deliveries.clone(), endpoint.effects.clone())
    };
    let delivered: BTreeSet<&String> = deliveries.iter().collect();
    let jobs = Api::<Job>::namespaced(client.clone(), NS);
    let config_maps = Api::<ConfigMap>::namespaced(client.clone(), NS);
    let mut recorded_http = BTreeSet::new();
    let mut attempts_total = 0;
    for run in &all {
        let name = run.metadata.name.clone().unwrap();
        let status = run.status.clone().unwrap();
        let uid = run.metadata.uid.clone().unwrap();
        assert_eq!(status.phase, Some(RunPhase::Succeeded), "{name}: {status:#?}");
        let i: usize = name.trim_start_matches("durable-").parse().unwrap();
        let outputs = config_maps.get(status.outputs.as_deref().unwrap()).await.unwrap().data.unwrap();
        assert_eq!(outputs["count"].trim(), format!("n={i}"), "{name}");
        assert_eq!(outputs["notify"], format!("done:{}", outputs["count"]), "{name}");
        assert_eq!(outputs["publish"], format!("done:{}", outputs["notify"]), "{name}");
        for step in &status.steps {
            attempts_total += step.attempts.len();
            // A finished step has exactly one successful attempt, its last: nothing ran after it.
            let succeeded: Vec<i32> =
                step.attempts.iter().filter(|a| a.phase == RunPhase::Succeeded).map(|a| a.number).collect();
            assert_eq!(succeeded, [step.attempts.last().unwrap().number], "{name}/{}: {step:#?}", step.name);
            let keys: BTreeSet<String> = step.attempts.iter().map(|a| a.idempotency_key.clone()).collect();
            match step.name.as_str() {
                "research" => {
                    let crew: BTreeSet<String> =
                        crew_keys.iter().filter(|k| k.starts_with(&format!("{uid}/research/"))).cloned().collect();
                    assert_eq!(crew, keys, "{name}: one crew run per recorded attempt, none other");
                }
                "count" => {
                    let selector = ListParams::default().labels(&format!("bizosaas.io/workflow-run={name}"));
                    let names: BTreeSet<String> =
                        jobs.list(&selector).await.unwrap().items.into_iter().filter_map(|j| j.metadata.name).collect();
                    let attempts: BTreeSet<String> = step.attempts.iter().map(|a| a.name.clone()).collect();
                    assert!(names.is_subset(&attempts), "{name}: Jobs {names:?} for attempts {attempts:?}");
                    assert!(names.contains(&step.attempts.last().unwrap().name), "{name}: the successful Job exists");
                }
                _ => {
                    let last = &step.attempts.last().unwrap().idempotency_key;
                    assert!(effects.contains_key(last), "{name}/{}: the successful call happened", step.name);
                    recorded_http.extend(keys);
                }
            }
        }
    }
    let unknown: Vec<&&String> = delivered.iter().filter(|k| !recorded_http.contains(**k)).collect();
    assert!(unknown.is_empty(), "the endpoint saw keys no run recorded: {unknown:?}");
    let redelivered = deliveries.len() - delivered.len();
    eprintln!(
        "{RUNS} runs, {attempts_total} attempts, {KILLS} SIGKILLs and an API server restart: \
         {} HTTP deliveries for {} keys ({redelivered} repeated after a kill, answered from the key)",
        deliveries.len(),
        delivered.len()
    );
}
