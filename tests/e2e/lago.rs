//! Usage export to Lago in the real cluster: the operator installed by the chart with
//! `billing.lago` pointing at a stand-in for Lago's batch events API on the node's address
//! (Lago itself does not run here), which checks every request against Lago's documented
//! schema, behaves as Lago does, and fails some requests on purpose. A Tenant with
//! `billing.lago.externalSubscriptionId` runs WorkflowRuns on a crew whose runtime pod calls
//! the llama.cpp server; every model call its pod records in `usage_events` reaches Lago
//! exactly once:
//! - through a 503 and a batch Lago took whose answer was lost;
//! - across a restart of every operator pod (the cursor is in the tenant's database: nothing
//!   exported before the restart is sent again);
//! - through a refusal (a subscription Lago does not know), which the Tenant reports as
//!   `UsageExported=False, LagoRefused` with Lago's words, until the Tenant names the right one.
//!
//! The release is left installed with the Lago settings: the next test binary's install resets
//! them.

mod support;

#[path = "../common/lago.rs"]
mod lago;

use bizosaas_controllers::lago::TARGET;
use bizosaas_crds::common::find_condition;
use bizosaas_crds::workflow::RunPhase;
use bizosaas_crds::{Tenant, Workflow, WorkflowRun};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use lago::{Answer, Lago, Shared};
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::time::Duration;
use support::*;

const TENANT: &str = "e2e-lago";
const NS: &str = "tenant-e2e-lago";
const CREW: &str = "billed";
const WORKFLOW: &str = "billed";
const SUBSCRIPTION: &str = "sub_e2e_lago";
/// A subscription the stand-in does not know, as after a cancellation in Lago.
const CANCELLED: &str = "sub_e2e_lago_cancelled";
/// The chart's default billable metric.
const CODE: &str = "llm_tokens";
/// Lago's API key: only in the Secret the chart references, never in a log or on the Tenant.
const API_KEY: &str = "lago-e2e-key-5d2c8e1a9f";
const TIMEOUT: Duration = Duration::from_secs(180);

/// Runs the workflow once as `run`; waits until it succeeded.
async fn run_workflow(client: &kube::Client, run: &str) {
    let _: WorkflowRun = create_in(
        client,
        NS,
        json!({
            "apiVersion": "bizosaas.io/v1alpha1", "kind": "WorkflowRun", "metadata": {"name": run, "namespace": NS},
            "spec": {"workflow": WORKFLOW},
        }),
    )
    .await;
    let runs: Api<WorkflowRun> = Api::namespaced(client.clone(), NS);
    let status = wait_for(&format!("WorkflowRun {run} to finish"), TIMEOUT, || async {
        let status = runs.get(run).await.ok()?.status?;
        status.phase.filter(|p| p.is_finished())?;
        Some(status)
    })
    .await;
    assert_eq!(status.phase, Some(RunPhase::Succeeded), "{status:#?}");
}

/// The tenant's usage events as its runtime pods recorded them, read as its app role:
/// `(id, crew, agent, model, run_id, prompt_tokens, completion_tokens, Unix seconds)`.
type Recorded = (i64, String, String, String, String, i64, i64, i64);

async fn recorded(db: &tokio_postgres::Client) -> Vec<Recorded> {
    let rows = db
        .query(
            "SELECT id, crew, agent, model, run_id, prompt_tokens::bigint, completion_tokens::bigint, \
                    floor(extract(epoch FROM created_at))::bigint FROM usage_events ORDER BY id",
            &[],
        )
        .await
        .unwrap();
    rows.iter().map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4), r.get(5), r.get(6), r.get(7))).collect()
}

fn tokens(events: &[Recorded]) -> i64 {
    events.iter().map(|e| e.5 + e.6).sum()
}

/// The Tenant's `UsageExported` condition.
async fn usage_exported(tenants: &Api<Tenant>) -> Option<Condition> {
    find_condition(&tenants.get(TENANT).await.ok()?.status?.conditions, "UsageExported").cloned()
}

/// How far the export is, as the tenant may read it: the last usage event Lago accepted.
async fn cursor(db: &tokio_postgres::Client) -> i64 {
    db.query_opt("SELECT last_event_id FROM usage_exports WHERE target = $1", &[&TARGET])
        .await
        .unwrap()
        .map_or(0, |r| r.get(0))
}

/// Waits until the operator knows Lago holds every recorded event (its cursor is at the
/// last), Lago does hold them, and the Tenant says they are exported.
async fn wait_exported(lago: &Shared, db: &tokio_postgres::Client, tenants: &Api<Tenant>, what: &str) -> Vec<Recorded> {
    let last = std::sync::Mutex::new(String::new());
    wait_for_or_explain(
        what,
        TIMEOUT,
        || async {
            let events = recorded(db).await;
            let (count, held_tokens, _) = lago.lock().unwrap().totals(TENANT);
            let condition = usage_exported(tenants).await;
            let (cursor, newest) = (cursor(db).await, events.last().map_or(0, |e| e.0));
            *last.lock().unwrap() = format!(
                "Lago holds {count} events ({held_tokens} tokens) of {} recorded ({} tokens); the cursor is at \
                 {cursor} of {newest}; UsageExported: {condition:?}",
                events.len(),
                tokens(&events)
            );
            let exported = condition.is_some_and(|c| c.status == "True") && cursor == newest;
            (exported && count == events.len() && held_tokens == tokens(&events)).then_some(events)
        },
        || last.lock().unwrap().clone(),
    )
    .await
}

async fn setup(client: &kube::Client, llm: &str, model: &str) {
    fresh_tenant(
        client,
        TENANT,
        json!({"displayName": "Lago", "database": {"isolation": "Shared", "deletionPolicy": "Delete"},
               "billing": {"lago": {"externalSubscriptionId": SUBSCRIPTION}}}),
    )
    .await;
    llm_integration(client, NS, llm, "sk-e2e-lago-llm").await;
    create_writer_crew(client, NS, CREW, model).await;
    wait_crew_ready(client, NS, CREW, TIMEOUT).await;
    let _: Workflow = create_in(
        client,
        NS,
        json!({
            "apiVersion": "bizosaas.io/v1alpha1", "kind": "Workflow", "metadata": {"name": WORKFLOW, "namespace": NS},
            "spec": {"steps": [{"name": "write", "agentTask": {"crew": CREW, "agent": "writer",
                                                               "description": "Say one word about winter."}}]}
        }),
    )
    .await;
}

async fn set_subscription(tenants: &Api<Tenant>, subscription: &str) {
    let patch = json!({"spec": {"billing": {"lago": {"externalSubscriptionId": subscription}}}});
    tenants.patch(TENANT, &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
}

// Multi-threaded: kubectl blocks a thread now and then.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_model_call_reaches_lago_once_through_failures_a_restart_and_a_refusal() {
    let (llm, model) = llm_server();
    let lago = Lago::shared(API_KEY, CODE, &[SUBSCRIPTION]);
    // The first pass meets a 503; the second's batch is taken but its answer is lost.
    lago.lock().unwrap().script.extend([Answer::Unavailable, Answer::IngestThenUnavailable]);
    let ip = node_ip();
    let base = lago::serve(lago.clone(), ip.parse().expect("the node's address is an IP")).await;

    install_crds();
    // The release namespace may not exist yet: the Secret the chart references goes in first.
    let secret = json!({"apiVersion": "v1", "kind": "List", "items": [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": OPERATOR_NAMESPACE}},
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "bizosaas-lago", "namespace": OPERATOR_NAMESPACE},
         "stringData": {"api-key": API_KEY}},
    ]});
    kubectl_ok(&["apply", "--server-side", "--force-conflicts", "-f", "-"], Some(&secret.to_string()));
    let url = format!("billing.lago.url={base}");
    InCluster::install(&["--set", &url, "--set", "billing.lago.apiKeySecret.name=bizosaas-lago"]);
    InCluster.wait_ready().await;
    let client = client().await;
    let tenants: Api<Tenant> = Api::all(client.clone());
    setup(&client, &llm, &model).await;
    let db = tenant_database(&client, NS).await;

    // Through a 503 and a lost answer: once each.
    run_workflow(&client, "billed-1").await;
    let first = wait_exported(&lago, &db, &tenants, "the first run's usage in Lago").await;
    assert!(!first.is_empty(), "the run's model calls were not recorded");
    {
        let lago = lago.lock().unwrap();
        assert!(lago.requests.len() >= 3, "the 503 and the lost answer were retried: {:?}", lago.requests);
        assert!(lago.ingested_twice().is_empty(), "billed twice: {:?}", lago.ingested_twice());
    }

    // Every operator pod restarts while the next run records usage.
    let exported_before: BTreeSet<String> = lago.lock().unwrap().ingested.keys().cloned().collect();
    let requests_before = lago.lock().unwrap().requests.len();
    kubectl_ok(
        &["delete", "pods", "-n", OPERATOR_NAMESPACE, "-l", "app.kubernetes.io/component=operator", "--wait=false"],
        None,
    );
    run_workflow(&client, "billed-2").await;
    let second = wait_exported(&lago, &db, &tenants, "the second run's usage in Lago after the restart").await;
    assert!(second.len() > first.len(), "the second run recorded no usage");
    {
        let lago = lago.lock().unwrap();
        let sent_again: Vec<&String> =
            lago.requests[requests_before..].iter().flatten().filter(|id| exported_before.contains(*id)).collect();
        assert!(sent_again.is_empty(), "sent again after the restart: {sent_again:?}");
        assert!(lago.ingested_twice().is_empty(), "billed twice: {:?}", lago.ingested_twice());
    }

    // A subscription Lago does not know: refused with Lago's words on the Tenant, nothing
    // ingested, and nothing lost once the Tenant names the right one again.
    set_subscription(&tenants, CANCELLED).await;
    let held = lago.lock().unwrap().totals(TENANT);
    run_workflow(&client, "billed-3").await;
    let refused = wait_for("UsageExported=False, LagoRefused", TIMEOUT, || async {
        usage_exported(&tenants).await.filter(|c| c.status == "False" && c.reason == "LagoRefused")
    })
    .await;
    assert!(refused.message.contains("subscription_not_found"), "{refused:?}");
    assert!(!refused.message.contains(API_KEY), "the API key is on the Tenant: {refused:?}");
    assert_eq!(lago.lock().unwrap().totals(TENANT), held, "Lago ingested events of an unknown subscription");
    set_subscription(&tenants, SUBSCRIPTION).await;
    let all = wait_exported(&lago, &db, &tenants, "the third run's usage in Lago once the subscription is right").await;
    assert!(all.len() > second.len(), "the third run recorded no usage");

    // Each recorded call is in Lago once, with what the pod recorded, under the Tenant's
    // subscription and the chart's metric; no request broke Lago's schema.
    let lago = lago.lock().unwrap().clone();
    assert!(lago.violations.is_empty(), "requests Lago would refuse: {:?}", lago.violations);
    assert!(lago.ingested_twice().is_empty(), "billed twice: {:?}", lago.ingested_twice());
    assert_eq!(lago.events_of(TENANT).len(), all.len());
    for (id, crew, agent, model_name, run_id, prompt, completion, at) in &all {
        let (event, _) = &lago.ingested[&format!("bizosaas:{TENANT}:{id}")];
        assert_eq!(event["external_subscription_id"], SUBSCRIPTION, "{event}");
        assert_eq!(event["code"], CODE, "{event}");
        assert_eq!(event["timestamp"], *at, "{event}");
        let properties = &event["properties"];
        assert_eq!(
            (&properties["crew"], &properties["agent"], &properties["model"], &properties["run_id"]),
            (&json!(crew), &json!(agent), &json!(model_name), &json!(run_id)),
            "{event}"
        );
        assert_eq!(
            (&properties["prompt_tokens"], &properties["completion_tokens"], &properties["tokens"]),
            (&json!(prompt), &json!(completion), &json!(prompt + completion)),
            "{event}"
        );
    }
    assert!(all.iter().all(|e| e.1 == CREW && e.2 == "writer"), "{all:?}");
    eprintln!(
        "{} model calls ({} tokens) of 3 runs are in Lago once each, over {} batch requests",
        all.len(),
        tokens(&all),
        lago.requests.len()
    );
    let logs = InCluster.logs();
    assert!(!logs.contains(API_KEY), "Lago's API key is in the operator's log");
    let events: Value = serde_json::to_value(
        kube::Api::<k8s_openapi::api::core::v1::Event>::namespaced(client.clone(), "default")
            .list(&Default::default())
            .await
            .unwrap()
            .items,
    )
    .unwrap();
    assert!(!events.to_string().contains(API_KEY), "Lago's API key is in an Event");

    tenants.delete(TENANT, &DeleteParams::default()).await.unwrap();
}
