//! A crew runs for real: its runtime pod on the real node passes its probes, a run POSTed
//! to the crew's Service from a pod in the tenant namespace completes against the llama.cpp
//! server with real token usage, the crew's memory and usage land in PostgreSQL under
//! row-level security through the `tenant-database` Secret, and a credential rotation rolls
//! the pod onto the new key. The LLM server is reached through the tenant's NetworkPolicies:
//! the crew's egress policy allows exactly its Integration's endpoint.
//!
//! The run API is attacked as a tenant owner would: without a token, with a token of another
//! tenant's ServiceAccount, with a token of the crew's own ServiceAccount issued for another
//! audience, and naming an agent the crew does not have. Only a token of the crew's namespace
//! for the runtime's audience (or the operator's, see workflow.rs) starts runs.

mod support;

use bizosaas_crds::common::find_condition;
use bizosaas_crds::{AgentCrew, Tenant};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::*;

const TENANT: &str = "e2e-crew-run";
const NS: &str = "tenant-e2e-crew-run";
const TIMEOUT: Duration = Duration::from_secs(120);

/// An HTTP forwarder on the node's address in front of the LLM server that records the
/// Authorization header of every request: the test's view of which key a crew pod sends.
async fn recording_gateway(upstream: String, seen: Arc<Mutex<Vec<String>>>) -> u16 {
    use axum::body::{Body, Bytes};
    use axum::http::{HeaderMap, Method, Uri};
    let forward = move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
        let (upstream, seen) = (upstream.clone(), seen.clone());
        async move {
            if let Some(auth) = headers.get("authorization") {
                seen.lock().unwrap().push(auth.to_str().unwrap_or_default().to_string());
            }
            // The upstream URL ends in /v1, as does the path the runtime calls.
            let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
            let url = format!("{}{}", upstream.trim_end_matches("/v1"), path);
            let mut request = http().request(method, url).body(body);
            if let Some(ct) = headers.get("content-type") {
                request = request.header("content-type", ct);
            }
            match request.send().await {
                Ok(response) => {
                    let status = response.status();
                    let ct = response.headers().get("content-type").cloned();
                    let bytes = response.bytes().await.unwrap_or_default();
                    let mut out = axum::response::Response::new(Body::from(bytes));
                    *out.status_mut() = status;
                    if let Some(ct) = ct {
                        out.headers_mut().insert("content-type", ct);
                    }
                    out
                }
                Err(e) => {
                    let mut out = axum::response::Response::new(Body::from(e.to_string()));
                    *out.status_mut() = axum::http::StatusCode::BAD_GATEWAY;
                    out
                }
            }
        }
    };
    let app = axum::Router::new().fallback(forward);
    let listener = tokio::net::TcpListener::bind((node_ip(), 0)).await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    port
}

/// The crew's runtime pod that is Ready, once there is exactly one and no other is left.
async fn runtime_pod(pods: &Api<Pod>) -> Option<Pod> {
    let list = pods.list(&ListParams::default().labels("bizosaas.io/crew=writers")).await.ok()?;
    let [pod] = list.items.as_slice() else { return None };
    let status = pod.status.as_ref()?;
    let ready = status.conditions.as_ref()?.iter().any(|c| c.type_ == "Ready" && c.status == "True");
    (ready && pod.metadata.deletion_timestamp.is_none()).then(|| pod.clone())
}

#[path = "../common/token_request.rs"]
mod token_request;
use token_request::token;

/// A request to the crew's Service from the caller pod: `(status line, body)`.
fn call_from_caller(
    method: &str,
    path: &str,
    token: Option<&str>,
    headers: &[&str],
    body: Option<&str>,
) -> (String, String) {
    let url = format!("http://crew-writers.{NS}.svc{path}");
    let authorization = token.map(|t| format!("Authorization: Bearer {t}"));
    let mut args = vec!["exec", "-n", NS, "caller", "--", "netcheck", "http", "-t", "115s", "-X", method];
    if let Some(header) = &authorization {
        args.extend(["-H", header.as_str()]);
    }
    for header in headers {
        args.extend(["-H", header]);
    }
    if let Some(body) = body {
        args.extend(["-H", "Content-Type: application/json", "-d", body]);
    }
    args.push(&url);
    let out = kubectl(&args, None);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    // The token is in the arguments: report only what the runtime answered.
    assert!(out.status.success(), "{method} {path} did not reach the runtime: {stdout}");
    let (status_line, json) = stdout.split_once('\n').unwrap_or((&stdout, ""));
    (status_line.trim().to_string(), json.to_string())
}

/// POSTs a run from the caller pod and waits for its end; returns the run as JSON.
fn run_from_caller(key: &str, token: &str) -> serde_json::Value {
    let body = serde_json::json!({
        "tasks": [{"description": "Write one short line about spring flowers.", "agent": "writer"}],
    })
    .to_string();
    let key = format!("Idempotency-Key: {key}");
    let (status_line, json) = call_from_caller("POST", "/v1/runs?wait=110", Some(token), &[&key], Some(&body));
    assert!(status_line.starts_with("20"), "the runtime answered {status_line}: {json}");
    serde_json::from_str(&json).unwrap_or_else(|e| panic!("not a run ({e}): {json}"))
}

/// The error category of a refused request, after checking its status line.
fn refused(what: &str, (status_line, json): (String, String), status: &str) -> String {
    assert!(status_line.starts_with(status), "{what}: expected {status}, the runtime answered {status_line}: {json}");
    let body: serde_json::Value =
        serde_json::from_str(&json).unwrap_or_else(|e| panic!("{what}: not JSON ({e}): {json}"));
    body["error"]["category"].as_str().unwrap_or_default().to_string()
}

// Multi-threaded: the recording gateway keeps serving while kubectl exec blocks a thread.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crew_pod_runs_against_the_llm_remembers_and_rotates_its_key() {
    let (llm, model) = llm_server();
    operator().wait_ready().await;
    let client = client().await;
    fresh_tenant(
        &client,
        TENANT,
        serde_json::json!({"displayName": "Crew run", "database": {"isolation": "Shared", "deletionPolicy": "Delete"}}),
    )
    .await;
    let seen = Arc::new(Mutex::new(Vec::new()));
    let port = recording_gateway(llm, seen.clone()).await;

    llm_integration(&client, NS, &format!("http://{}:{port}/v1", node_ip()), "first-key").await;
    let crew: AgentCrew = serde_json::from_value(serde_json::json!({
        "apiVersion": "bizosaas.io/v1alpha1", "kind": "AgentCrew", "metadata": {"name": "writers", "namespace": NS},
        "spec": {"process": "Sequential", "model": {"integration": "llm", "name": model, "maxTokens": 24},
                 "agents": [{"name": "writer", "template": "copywriting", "maxIterations": 1}],
                 "memory": {"enabled": true}},
    }))
    .unwrap();
    let crews: Api<AgentCrew> = Api::namespaced(client.clone(), NS);
    crews.create(&PostParams::default(), &crew).await.unwrap();

    // Ready only once the runtime pod really is (its readiness probe passes on the node).
    wait_crew_ready(&client, NS, "writers", TIMEOUT).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    let first_pod = wait_for("one Ready runtime pod", TIMEOUT, || runtime_pod(&pods)).await;
    assert_eq!(first_pod.spec.as_ref().unwrap().node_name.as_deref(), Some("bizosaas-node"));

    // A caller in the tenant namespace: the same-namespace policy lets it reach the crew.
    toolbox_pod(&client, NS, "caller", serde_json::json!({})).await;
    wait_reachable(NS, "caller", &format!("http://crew-writers.{NS}.svc/healthz"), Duration::from_secs(60)).await;

    // The run API, attacked as a tenant owner would.
    const AUDIENCE: &str = "bizosaas-agent";
    let own = token(&client, NS, "tenant-workload", AUDIENCE).await;
    let body = r#"{"description": "Write one line."}"#;
    let post = |token: Option<&str>| call_from_caller("POST", "/v1/runs", token, &[], Some(body));
    assert_eq!(refused("no token", post(None), "401"), "unauthenticated");
    assert_eq!(refused("a made-up token", post(Some("not-a-token")), "401"), "unauthenticated");
    // The token every pod of the namespace has (the API server's audience) is not for crews.
    let api_audience = token(&client, NS, "tenant-workload", "").await;
    assert_eq!(refused("the API server's audience", post(Some(&api_audience)), "401"), "unauthenticated");
    let vault_audience = token(&client, NS, "tenant-workload", "vault").await;
    assert_eq!(refused("another service's audience", post(Some(&vault_audience)), "401"), "unauthenticated");
    // Another tenant's ServiceAccount, with the right audience.
    let other = format!("{NS}-other");
    let manifest = kubectl_ok(&["create", "namespace", &other, "--dry-run=client", "-o", "yaml"], None);
    kubectl_ok(&["apply", "-f", "-"], Some(&manifest));
    let manifest = kubectl_ok(
        &["create", "serviceaccount", "tenant-workload", "-n", &other, "--dry-run=client", "-o", "yaml"],
        None,
    );
    kubectl_ok(&["apply", "-f", "-"], Some(&manifest));
    let foreign = token(&client, &other, "tenant-workload", AUDIENCE).await;
    assert_eq!(refused("another tenant's ServiceAccount", post(Some(&foreign)), "403"), "forbidden");
    let list = call_from_caller("GET", "/v1/runs", Some(&foreign), &[], None);
    assert_eq!(refused("another tenant listing runs", list, "403"), "forbidden");
    assert_eq!(
        refused("listing runs without a token", call_from_caller("GET", "/v1/runs", None, &[], None), "401"),
        "unauthenticated"
    );
    let crew_view = call_from_caller("GET", "/v1/crew", None, &[], None);
    assert_eq!(refused("the crew without a token", crew_view, "401"), "unauthenticated");
    // The probes stay open.
    let (health, _) = call_from_caller("GET", "/healthz", None, &[], None);
    assert!(health.starts_with("200"), "{health}");
    // Only the crew's own agents run, even for its own ServiceAccount.
    let template = r#"{"description": "x", "agent": "copywriting"}"#;
    let outside = call_from_caller("POST", "/v1/runs", Some(&own), &[], Some(template));
    assert_eq!(refused("a catalog agent outside the crew", outside, "422"), "unknown_agent");
    let (listed, runs) = call_from_caller("GET", "/v1/runs", Some(&own), &[], None);
    assert!(listed.starts_with("200"), "{listed}: {runs}");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&runs).unwrap()["runs"],
        serde_json::json!([]),
        "a refused request started a run"
    );

    let run = run_from_caller("e2e-crew-run-1", &own);
    assert_eq!(run["status"], "succeeded", "{run}");
    let usage = &run["usage"];
    assert!(usage["promptTokens"].as_u64().unwrap() > 0 && usage["completionTokens"].as_u64().unwrap() > 0, "{run}");
    let output = run["tasks"][0]["output"].as_str().unwrap();
    assert!(!output.trim().is_empty(), "{run}");
    assert_eq!(seen.lock().unwrap().last().map(String::as_str), Some("Bearer first-key"));

    // Memory and usage, written by the pod as the tenant's app role.
    let db = tenant_database(&client, NS).await;
    let memories: i64 = db
        .query_one(
            "SELECT count(*) FROM agent_memory WHERE crew = 'writers' AND metadata->>'run' = $1",
            &[&run["id"].as_str().unwrap()],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(memories, 1, "the task's output is in the crew's memory");
    let tokens: i64 = db
        .query_one("SELECT coalesce(sum(prompt_tokens + completion_tokens), 0)::bigint FROM usage_events WHERE crew = 'writers'", &[])
        .await
        .unwrap()
        .get(0);
    assert!(tokens > 0, "usage is recorded");
    // Row-level security: the app role sees its own tenant's rows only.
    let foreign: i64 =
        db.query_one("SELECT count(*) FROM agent_memory WHERE tenant_id <> $1", &[&TENANT]).await.unwrap().get(0);
    assert_eq!(foreign, 0, "another tenant's memories are visible");

    // Rotation: the pod is replaced and the new one sends the new key.
    let patch = serde_json::json!({"stringData": {"apiKey": "second-key"}});
    Api::<Secret>::namespaced(client.clone(), NS)
        .patch("llm-key", &PatchParams::default(), &Patch::Merge(patch))
        .await
        .unwrap();
    let first_name = first_pod.metadata.name.clone().unwrap();
    wait_for("a new runtime pod after the rotation", TIMEOUT, || async {
        let pod = runtime_pod(&pods).await?;
        (pod.metadata.name.as_deref() != Some(first_name.as_str())).then_some(())
    })
    .await;
    // The new pod's Service endpoint and policy rules are programmed a moment after it is Ready.
    wait_reachable(NS, "caller", &format!("http://crew-writers.{NS}.svc/healthz"), Duration::from_secs(60)).await;
    let run = run_from_caller("e2e-crew-run-2", &own);
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(seen.lock().unwrap().last().map(String::as_str), Some("Bearer second-key"));
    let d = Api::<Deployment>::namespaced(client.clone(), NS).get("crew-writers").await.unwrap();
    assert_eq!(d.status.unwrap().ready_replicas, Some(1));
    let crew = crews.get("writers").await.unwrap();
    let egress = find_condition(&crew.status.unwrap().conditions, "EgressAllowed").cloned().unwrap();
    assert_eq!(egress.status, "True", "{}", egress.message);

    Api::<Tenant>::all(client).delete(TENANT, &DeleteParams::default()).await.unwrap();
    kubectl_ok(&["delete", "namespace", &other, "--wait=false"], None);
}
