//! The tenant's monthly token budget, for real: a crew of three runtime pods on the real node
//! takes many concurrent runs against the llama.cpp server until the Tenant's
//! `quota.monthlyTokens` is spent. Every model call is in `usage_events` (tenant, crew, agent,
//! model, run), the month overshoots by at most one call, new runs are refused with
//! `tenant_budget_exhausted`, and the Tenant reports its usage and `BudgetExhausted`. Raising
//! the override lets runs through again.

mod support;

use bizosaas_crds::common::{find_condition, is_ready};
use bizosaas_crds::{AgentCrew, Tenant};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use serde_json::json;
use std::time::Duration;
use support::*;

const TENANT: &str = "e2e-budget";
const NS: &str = "tenant-e2e-budget";
const TIMEOUT: Duration = Duration::from_secs(180);
const BUDGET: i64 = 1500;
const RUNS: usize = 12;

#[path = "../common/token_request.rs"]
mod token_request;
use token_request::token;

/// POSTs a run from the caller pod and waits for it: `(status line, body)`.
fn post_run(token: &str, n: usize) -> (String, serde_json::Value) {
    let body = json!({"tasks": [{"description": format!("Write one short line about spring flower number {n}."),
                                  "agent": "writer"}]})
    .to_string();
    let auth = format!("Authorization: Bearer {token}");
    let url = format!("http://crew-writers.{NS}.svc/v1/runs?wait=100");
    let args = [
        "exec",
        "-n",
        NS,
        "caller",
        "--",
        "netcheck",
        "http",
        "-t",
        "110s",
        "-X",
        "POST",
        "-H",
        &auth,
        "-H",
        "Content-Type: application/json",
        "-d",
        &body,
        &url,
    ];
    let out = kubectl(&args, None);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "run {n} did not reach the runtime: {stdout}");
    let (status, json) = stdout.split_once('\n').unwrap_or((&stdout, ""));
    (status.trim().to_string(), serde_json::from_str(json).unwrap_or_else(|_| json!({"raw": json})))
}

async fn ready_pods(pods: &Api<Pod>, want: usize) -> Option<Vec<String>> {
    let list = pods.list(&ListParams::default().labels("bizosaas.io/crew=writers")).await.ok()?;
    let ready: Vec<String> = list
        .items
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter(|p| {
            p.status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        })
        .filter_map(|p| p.metadata.name.clone())
        .collect();
    (ready.len() == want && list.items.len() == want).then_some(ready)
}

/// Where each run ended: `Ok(tokens)` when it succeeded, `Err(category)` when the budget
/// refused it (at admission, or at a model call once it was running).
fn outcome(n: usize, (status, run): &(String, serde_json::Value)) -> Result<u64, String> {
    if status.starts_with("429") {
        return Err(run["error"]["category"].as_str().unwrap_or_default().to_string());
    }
    assert!(status.starts_with("20"), "run {n}: {status}: {run}");
    match run["status"].as_str() {
        Some("succeeded") => Ok(run["usage"]["totalTokens"].as_u64().unwrap_or_default()),
        Some("failed") => Err(run["error"]["category"].as_str().unwrap_or_default().to_string()),
        other => panic!("run {n} ended {other:?}: {run}"),
    }
}

// Multi-threaded: the runs are posted from threads of their own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tenant_budget_holds_across_replicas_and_is_reported_on_the_tenant() {
    let (llm, model) = llm_server();
    operator().wait_ready().await;
    let client = client().await;
    fresh_tenant(
        &client,
        TENANT,
        json!({"displayName": "Budget", "quota": {"monthlyTokens": BUDGET},
               "database": {"isolation": "Shared", "deletionPolicy": "Delete"}}),
    )
    .await;
    llm_integration(&client, NS, &llm, "budget-key").await;
    let _: AgentCrew = create_in(
        &client,
        NS,
        json!({
            "apiVersion": "bizosaas.io/v1alpha1", "kind": "AgentCrew", "metadata": {"name": "writers", "namespace": NS},
            "spec": {"process": "Sequential", "replicas": 3,
                     "model": {"integration": "llm", "name": model, "maxTokens": 16},
                     "agents": [{"name": "writer", "template": "copywriting", "maxIterations": 1}]},
        }),
    )
    .await;
    wait_crew_ready(&client, NS, "writers", TIMEOUT).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    wait_for("three Ready runtime pods", TIMEOUT, || ready_pods(&pods, 3)).await;
    toolbox_pod(&client, NS, "caller", json!({})).await;
    wait_reachable(NS, "caller", &format!("http://crew-writers.{NS}.svc/healthz"), Duration::from_secs(60)).await;
    let own = token(&client, NS, "tenant-workload", "bizosaas-agent").await;

    // Many runs at once, spread over the replicas by the Service.
    let threads: Vec<_> = (0..RUNS)
        .map(|n| {
            let own = own.clone();
            std::thread::spawn(move || post_run(&own, n))
        })
        .collect();
    let answers: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let outcomes: Vec<Result<u64, String>> = answers.iter().enumerate().map(|(n, a)| outcome(n, a)).collect();
    let succeeded = outcomes.iter().filter(|o| o.is_ok()).count();
    let refused: Vec<&String> = outcomes.iter().filter_map(|o| o.as_ref().err()).collect();
    assert!(succeeded >= 1, "no run got through: {outcomes:?}");
    assert!(!refused.is_empty(), "the budget refused nothing: {outcomes:?}");
    assert!(refused.iter().all(|c| *c == "tenant_budget_exhausted"), "{outcomes:?}");
    // Runs still in flight when the others were refused may have left a little of the month:
    // one after another, runs go on until the budget refuses one at the door.
    let (mut status, mut body) = (String::new(), json!(null));
    for n in RUNS..RUNS + 10 {
        (status, body) = post_run(&own, n);
        if status.starts_with("429") {
            break;
        }
        match outcome(n, &(status.clone(), body.clone())) {
            Ok(_) => {}
            Err(category) => assert_eq!(category, "tenant_budget_exhausted", "{body}"),
        }
    }
    // The new run was refused before it started, with a clear error.
    assert!(status.starts_with("429"), "{status}: {body}");
    assert_eq!(body["error"]["category"], "tenant_budget_exhausted", "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("quota.monthlyTokens 1500"), "{body}");

    // What the pods recorded, read as the tenant's app role.
    let db = tenant_database(&client, NS).await;
    let row = db
        .query_one(
            "SELECT COALESCE(SUM(prompt_tokens + completion_tokens), 0)::bigint, \
                    COALESCE(MAX(prompt_tokens + completion_tokens), 0)::bigint, count(*), \
                    count(*) FILTER (WHERE crew = 'writers' AND agent = 'writer' AND model IS NOT NULL AND run_id IS NOT NULL) \
             FROM usage_events",
            &[],
        )
        .await
        .unwrap();
    let (used, largest_call, events, complete): (i64, i64, i64, i64) = (row.get(0), row.get(1), row.get(2), row.get(3));
    eprintln!(
        "{succeeded} of {RUNS} runs succeeded, {} refused; {events} model calls spent {used} tokens of {BUDGET} \
         (largest call {largest_call})",
        refused.len()
    );
    assert_eq!(events, complete, "every usage event names its crew, agent, model and run");
    assert!(used >= BUDGET, "runs were refused before the budget was spent: {used} of {BUDGET}");
    assert!(used <= BUDGET + largest_call, "{used} tokens spent of {BUDGET}: more than one call over");
    let replicas: i64 =
        db.query_one("SELECT count(DISTINCT owner) FROM agent_runs WHERE crew = 'writers'", &[]).await.unwrap().get(0);
    assert!(replicas >= 2, "the runs all went to one replica: the test proves nothing about several");

    // The Tenant says so.
    let tenants: Api<Tenant> = Api::all(client.clone());
    let status = wait_for("the Tenant's usage reported", Duration::from_secs(60), || async {
        let status = tenants.get(TENANT).await.ok()?.status?;
        (status.usage.as_ref()?.tokens_used == used).then_some(status)
    })
    .await;
    let usage = status.usage.clone().unwrap();
    assert_eq!(usage.monthly_tokens, Some(BUDGET));
    assert_eq!(usage.month.len(), 7, "{usage:?}");
    let exhausted = find_condition(&status.conditions, "BudgetExhausted").cloned().expect("BudgetExhausted");
    assert_eq!((exhausted.status.as_str(), exhausted.reason.as_str()), ("True", "MonthlyTokensUsed"), "{exhausted:?}");
    assert!(is_ready(&status.conditions), "an exhausted budget does not make the tenant unready");

    // The platform raises the override; the crews follow, and runs get through again.
    let patch = json!({"spec": {"quota": {"monthlyTokens": BUDGET * 100}}});
    tenants.patch(TENANT, &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
    wait_for("the budget no longer exhausted", Duration::from_secs(60), || async {
        let status = tenants.get(TENANT).await.ok()?.status?;
        (find_condition(&status.conditions, "BudgetExhausted")?.status == "False").then_some(())
    })
    .await;
    let run = wait_for("a run after the raise", TIMEOUT, || async {
        let (status, run) = post_run(&own, RUNS + 20);
        (status.starts_with("20") && run["status"] == "succeeded").then_some(run)
    })
    .await;
    assert!(run["usage"]["totalTokens"].as_u64().unwrap() > 0, "{run}");

    tenants.delete(TENANT, &DeleteParams::default()).await.unwrap();
}
