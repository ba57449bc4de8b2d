//! The Argo CD health checks of manifests/argocd/health run in a real Lua 5.1 interpreter
//! (the dialect of Argo CD's gopher-lua), with only the libraries Argo CD offers a script,
//! on objects the operator in the local cluster wrote: Tenants, Integrations, AgentCrews,
//! Workflows and WorkflowRuns read back as JSON through the API. The first tests need no
//! cluster: the scripts on hand-written objects for the edge cases, and the generated
//! argocd-cm patch being current.

mod support;

use bizosaas_crds::{AgentCrew, Integration, Tenant, Workflow, WorkflowRun};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use kube::{Client, Resource};
use mlua::{Lua, LuaOptions, LuaSerdeExt, SerializeOptions, StdLib, Table};
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::AtomicU16;
use std::time::Duration;
use support::*;

const KINDS: [&str; 5] = ["Tenant", "AgentCrew", "Workflow", "WorkflowRun", "Integration"];
const TENANT: &str = "e2e-argocd";
const NS: &str = "tenant-e2e-argocd";
const TIMEOUT: Duration = Duration::from_secs(180);

fn script(kind: &str) -> String {
    let path = repo().join(format!("manifests/argocd/health/{kind}.lua"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// What Argo CD shows for `object`: its kind's script run with `object` as the global `obj`.
fn health(kind: &str, object: &Value) -> (String, String) {
    // Argo CD opens only the base, table, string and math libraries (and an os of its own
    // without anything that touches the machine): a script using io or os fails here too.
    let lua = Lua::new_with(StdLib::TABLE | StdLib::STRING | StdLib::MATH, LuaOptions::default()).unwrap();
    // JSON null is nil in Argo CD's conversion, and arrays are plain tables.
    let options =
        SerializeOptions::new().serialize_none_to_null(false).serialize_unit_to_null(false).set_array_metatable(false);
    let obj = lua.to_value_with(object, options).unwrap();
    lua.globals().set("obj", obj).unwrap();
    let hs: Table = lua
        .load(script(kind))
        .set_name(format!("{kind}.lua"))
        .eval()
        .unwrap_or_else(|e| panic!("{kind}.lua failed on {object:#}: {e}"));
    let status: String = hs.get("status").unwrap_or_else(|e| panic!("{kind}.lua returned no status: {e}"));
    let message: String = hs.get("message").unwrap_or_else(|e| panic!("{kind}.lua returned no message: {e}"));
    let known = ["Healthy", "Progressing", "Degraded", "Suspended", "Missing", "Unknown"];
    assert!(known.contains(&status.as_str()), "{kind}.lua returned status {status:?}");
    (status, message)
}

fn is(status: &str, message: &str) -> (String, String) {
    (status.to_string(), message.to_string())
}

// ---------------------------------------------------------------------------------------
// Without a cluster: hand-written objects.

fn condition(type_: &str, status: &str, reason: &str, message: &str, generation: i64) -> Value {
    json!({"type": type_, "status": status, "reason": reason, "message": message,
           "lastTransitionTime": "2026-01-01T00:00:00Z", "observedGeneration": generation})
}

fn object(kind: &str, generation: i64, spec: Value, status: Option<Value>) -> Value {
    let mut o = json!({"apiVersion": "bizosaas.io/v1alpha1", "kind": kind,
                       "metadata": {"name": "x", "namespace": "tenant-x", "generation": generation, "uid": "u"},
                       "spec": spec});
    if let Some(status) = status {
        o["status"] = status;
    }
    o
}

fn ready(generation: i64) -> Value {
    json!({"observedGeneration": generation, "conditions": [condition("Ready", "True", "Ready", "All good", generation)]})
}

#[test]
fn every_kind_waits_for_the_controller_and_for_its_generation() {
    for kind in KINDS {
        // Created, not yet seen by the controller: no status, or an empty one.
        assert_eq!(health(kind, &object(kind, 1, json!({}), None)), is("Progressing", "Waiting for the controller"));
        assert_eq!(
            health(kind, &object(kind, 1, json!({}), Some(json!({})))),
            is("Progressing", "Waiting for the controller"),
            "{kind}"
        );
        // Ready for generation 2, but the spec is at 3: not yet seen.
        let (status, message) = health(kind, &object(kind, 3, json!({}), Some(ready(2))));
        assert_eq!(status, "Progressing", "{kind}: {message}");
        assert!(message.contains("generation 3"), "{kind}: {message}");
        if kind != "WorkflowRun" {
            assert_eq!(health(kind, &object(kind, 2, json!({}), Some(ready(2)))), is("Healthy", "All good"), "{kind}");
        }
        // Being deleted.
        let mut deleting = object(kind, 2, json!({}), Some(ready(2)));
        deleting["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
        if kind != "WorkflowRun" {
            assert_eq!(health(kind, &deleting).0, "Progressing", "{kind}");
        }
    }
}

#[test]
fn stalled_is_degraded_and_reconciling_is_progressing() {
    for kind in KINDS.into_iter().filter(|k| *k != "WorkflowRun") {
        let stalled = json!({"observedGeneration": 4, "conditions": [
            condition("Ready", "False", "SecretNotFound", "Secret s does not exist", 4),
            condition("Stalled", "True", "SecretNotFound", "Secret s does not exist", 4),
        ]});
        assert_eq!(
            health(kind, &object(kind, 4, json!({}), Some(stalled.clone()))),
            is("Degraded", "Secret s does not exist"),
            "{kind}"
        );
        // Stalled for an older generation: the new spec may have fixed it.
        assert_eq!(health(kind, &object(kind, 5, json!({}), Some(stalled))).0, "Progressing", "{kind}");
        // The operator cannot read the object: it writes only the conditions, for the
        // object's generation, beside an older status.
        let unreadable = json!({"observedGeneration": 2, "conditions": [
            condition("Ready", "False", "InvalidObject", "This operator cannot read the object: bad", 3),
            condition("Stalled", "True", "InvalidObject", "This operator cannot read the object: bad", 3),
        ]});
        assert_eq!(
            health(kind, &object(kind, 3, json!({}), Some(unreadable))),
            is("Degraded", "This operator cannot read the object: bad"),
            "{kind}"
        );
        let reconciling = json!({"observedGeneration": 1, "conditions": [
            condition("Ready", "False", "Progressing", "0/1 runtime pods are ready", 1),
            condition("Reconciling", "True", "Progressing", "0/1 runtime pods are ready", 1),
        ]});
        assert_eq!(
            health(kind, &object(kind, 1, json!({}), Some(reconciling))),
            is("Progressing", "0/1 runtime pods are ready"),
            "{kind}"
        );
        // A message is optional; the reason stands in.
        let terse = json!({"observedGeneration": 1, "conditions": [
            condition("Ready", "False", "NoEndpoint", "", 1), condition("Stalled", "True", "NoEndpoint", "", 1),
        ]});
        assert_eq!(health(kind, &object(kind, 1, json!({}), Some(terse))), is("Degraded", "NoEndpoint"), "{kind}");
    }
}

#[test]
fn suspension_is_suspended() {
    let suspended = json!({"phase": "Suspended", "observedGeneration": 2, "conditions": [
        condition("NamespaceReady", "True", "Applied", "", 2),
        condition("Ready", "True", "Suspended", "The tenant is suspended", 2),
    ]});
    assert_eq!(
        health("Tenant", &object("Tenant", 2, json!({"suspended": true}), Some(suspended))),
        is("Suspended", "The tenant is suspended")
    );
    // Asked to suspend, not there yet.
    let suspending = json!({"phase": "Provisioning", "observedGeneration": 2, "conditions": [
        condition("Ready", "False", "DatabaseUnavailable", "cannot connect", 2),
        condition("Reconciling", "True", "DatabaseUnavailable", "cannot connect", 2),
    ]});
    assert_eq!(
        health("Tenant", &object("Tenant", 2, json!({"suspended": true}), Some(suspending))),
        is("Progressing", "cannot connect")
    );
    let terminating = json!({"phase": "Terminating", "observedGeneration": 2, "conditions": [
        condition("Ready", "False", "Terminating", "Removing the tenant", 2),
        condition("Reconciling", "True", "Terminating", "Removing the tenant", 2),
    ]});
    assert_eq!(
        health("Tenant", &object("Tenant", 3, json!({}), Some(terminating))),
        is("Progressing", "Removing the tenant")
    );

    let crew = json!({"observedGeneration": 1, "conditions": [
        condition("Available", "False", "TenantSuspended", "Tenant x is suspended", 1),
        condition("Ready", "False", "TenantSuspended", "Tenant x is suspended", 1),
    ]});
    assert_eq!(
        health("AgentCrew", &object("AgentCrew", 1, json!({}), Some(crew))),
        is("Suspended", "Tenant x is suspended")
    );

    let workflow = json!({"observedGeneration": 1, "conditions": [
        condition("Ready", "True", "Suspended", "The workflow is valid; its schedule is suspended", 1),
    ]});
    assert_eq!(
        health("Workflow", &object("Workflow", 1, json!({"suspend": true}), Some(workflow))),
        is("Suspended", "The workflow is valid; its schedule is suspended")
    );
}

fn run_status(phase: &str, generation: i64, conditions: Vec<Value>) -> Value {
    json!({"phase": phase, "observedGeneration": generation, "conditions": conditions})
}

#[test]
fn a_run_is_judged_by_its_phase_once_it_is_over() {
    let run =
        |generation: i64, status: Value| object("WorkflowRun", generation, json!({"workflow": "w"}), Some(status));
    let pending = run_status(
        "Pending",
        1,
        vec![
            condition("Ready", "False", "WorkflowNotFound", "Workflow w does not exist", 1),
            condition("Reconciling", "True", "WorkflowNotFound", "Workflow w does not exist", 1),
        ],
    );
    assert_eq!(health("WorkflowRun", &run(1, pending)), is("Progressing", "Workflow w does not exist"));
    let running = run_status(
        "Running",
        1,
        vec![
            condition("Ready", "False", "Running", "0/2 steps finished; running a", 1),
            condition("Reconciling", "True", "Running", "0/2 steps finished; running a", 1),
        ],
    );
    assert_eq!(health("WorkflowRun", &run(1, running.clone())), is("Progressing", "0/2 steps finished; running a"));
    // spec.cancel set, not yet seen.
    assert_eq!(health("WorkflowRun", &run(2, running)).0, "Progressing");

    let succeeded = run_status(
        "Succeeded",
        1,
        vec![
            condition("Ready", "True", "Succeeded", "All 2 steps succeeded", 1),
            condition("Succeeded", "True", "Succeeded", "All 2 steps succeeded", 1),
        ],
    );
    assert_eq!(health("WorkflowRun", &run(1, succeeded.clone())), is("Healthy", "All 2 steps succeeded"));
    // A finished run is not reconciled again: a later spec edit leaves its status behind.
    assert_eq!(health("WorkflowRun", &run(2, succeeded)), is("Healthy", "All 2 steps succeeded"));

    let failed = run_status(
        "Failed",
        1,
        vec![
            condition("Ready", "False", "StepFailed", "Step a failed", 1),
            condition("Failed", "True", "StepFailed", "Step a failed", 1),
        ],
    );
    assert_eq!(health("WorkflowRun", &run(1, failed)), is("Degraded", "Step a failed"));
    let refused = run_status(
        "Failed",
        1,
        vec![
            condition("Ready", "False", "UnknownParameter", "parameter \"p\" is not declared by the workflow", 1),
            condition("Failed", "True", "UnknownParameter", "parameter \"p\" is not declared by the workflow", 1),
            condition("Stalled", "True", "UnknownParameter", "parameter \"p\" is not declared by the workflow", 1),
        ],
    );
    assert_eq!(
        health("WorkflowRun", &run(1, refused)),
        is("Degraded", "parameter \"p\" is not declared by the workflow")
    );
    let cancelled = run_status(
        "Cancelled",
        2,
        vec![
            condition("Ready", "False", "Cancelled", "spec.cancel is true: the run was cancelled", 2),
            condition("Failed", "True", "Cancelled", "spec.cancel is true: the run was cancelled", 2),
        ],
    );
    assert_eq!(
        health("WorkflowRun", &run(2, cancelled)),
        is("Suspended", "spec.cancel is true: the run was cancelled")
    );
}

#[test]
fn the_argocd_cm_patch_is_generated_from_the_scripts() {
    let generator = repo().join("manifests/argocd/generate.sh");
    let out = std::process::Command::new("bash").arg(&generator).arg("--stdout").output().expect("bash runs");
    assert!(out.status.success(), "generate.sh failed: {}", String::from_utf8_lossy(&out.stderr));
    let shipped = std::fs::read_to_string(repo().join("manifests/argocd/argocd-cm.yaml")).unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout) == shipped,
        "manifests/argocd/argocd-cm.yaml is not current: run `bash manifests/argocd/generate.sh`"
    );
    // Argo CD reads each script back exactly as written.
    let cm: ConfigMap = serde_saphyr::from_str(&shipped).unwrap_or_else(|e| panic!("argocd-cm.yaml: {e}"));
    assert_eq!(cm.metadata.name.as_deref(), Some("argocd-cm"));
    let data = cm.data.unwrap_or_default();
    let mut keys: Vec<&str> = data.keys().map(String::as_str).collect();
    keys.sort();
    let mut wanted: Vec<String> =
        KINDS.iter().map(|k| format!("resource.customizations.health.bizosaas.io_{k}")).collect();
    wanted.sort();
    assert_eq!(keys, wanted);
    for kind in KINDS {
        assert_eq!(data[&format!("resource.customizations.health.bizosaas.io_{kind}")], script(kind), "{kind}");
    }
}

// ---------------------------------------------------------------------------------------
// On the local cluster: objects the operator wrote.

/// The object as the API server returns it, as JSON (an untyped read, so nothing is
/// dropped or defaulted on the way).
async fn live<K: Resource<DynamicType = ()>>(client: &Client, ns: Option<&str>, name: &str) -> Value {
    let resource = ApiResource::erase::<K>(&());
    let api: Api<DynamicObject> = match ns {
        Some(ns) => Api::namespaced_with(client.clone(), ns, &resource),
        None => Api::all_with(client.clone(), &resource),
    };
    serde_json::to_value(api.get(name).await.unwrap()).unwrap()
}

/// The condition `type_` of a JSON object, as (status, reason, message).
fn cond(object: &Value, type_: &str) -> Option<(String, String, String)> {
    let conditions = object["status"]["conditions"].as_array()?;
    let c = conditions.iter().find(|c| c["type"] == type_)?;
    let s = |k: &str| c[k].as_str().unwrap_or_default().to_string();
    Some((s("status"), s("reason"), s("message")))
}

fn message(object: &Value, type_: &str) -> String {
    cond(object, type_).unwrap_or_else(|| panic!("no {type_} condition in {object:#}")).2
}

/// Waits until `check` holds on the live object; returns it.
async fn wait_live<K: Resource<DynamicType = ()>>(
    client: &Client,
    ns: Option<&str>,
    name: &str,
    what: &str,
    check: impl Fn(&Value) -> bool,
) -> Value {
    let check = &check;
    wait_for_or_explain(
        &format!("{} {name}: {what}", K::kind(&())),
        TIMEOUT,
        || async move {
            let o = live::<K>(client, ns, name).await;
            check(&o).then_some(o)
        },
        || {
            let kind = K::kind(&()).to_lowercase();
            let mut args = vec!["get", kind.as_str(), name, "-o", "yaml"];
            if let Some(ns) = ns {
                args.extend(["-n", ns]);
            }
            String::from_utf8_lossy(&kubectl(&args, None).stdout).into_owned()
        },
    )
    .await
}

fn condition_is(type_: &str, status: &str, reason: Option<&str>) -> impl Fn(&Value) -> bool {
    move |o: &Value| {
        cond(o, type_).is_some_and(|(s, r, _)| s == status && reason.is_none_or(|want| r == want))
            && o["status"]["observedGeneration"] == o["metadata"]["generation"]
    }
}

/// The shared tenant (plan growth: room for the crews and workflows below), once per binary.
async fn shared_tenant(client: &Client) {
    static SETUP: tokio::sync::Mutex<bool> = tokio::sync::Mutex::const_new(false);
    let mut done = SETUP.lock().await;
    if !*done {
        fresh_tenant(
            client,
            TENANT,
            json!({"displayName": "Argo CD health", "plan": "growth",
                   "database": {"isolation": "Shared", "deletionPolicy": "Delete"}}),
        )
        .await;
        kubectl_ok(&["create", "secret", "generic", "token", "-n", NS, "--from-literal=token=argocd-test"], None);
        *done = true;
    }
}

async fn setup() -> Client {
    operator().wait_ready().await;
    let client = client().await;
    shared_tenant(&client).await;
    client
}

/// A Tenant (cluster-scoped) deleted with what an earlier run left, then created from `spec`.
async fn recreate_tenant(client: &Client, name: &str, spec: Value) {
    let tenants: Api<Tenant> = Api::all(client.clone());
    if tenants.get_opt(name).await.unwrap().is_some() {
        let _ = tenants.delete(name, &DeleteParams::default()).await;
        wait_for(&format!("the old {name} to go"), TIMEOUT, || async {
            tenants.get_opt(name).await.ok()?.is_none().then_some(())
        })
        .await;
    }
    drop_tenant_data(name).await;
    let tenant: Tenant = serde_json::from_value(json!({
        "apiVersion": "bizosaas.io/v1alpha1", "kind": "Tenant", "metadata": {"name": name}, "spec": spec,
    }))
    .unwrap();
    tenants.create(&PostParams::default(), &tenant).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_ready_stalled_and_unobserved() {
    let client = setup().await;

    // Ready: Healthy, with Ready's message.
    let tenant = wait_live::<Tenant>(&client, None, TENANT, "Ready", condition_is("Ready", "True", None)).await;
    assert_eq!(health("Tenant", &tenant), is("Healthy", &message(&tenant, "Ready")));

    // Before the controller acted. Built from the real object, since the operator writes a
    // status within moments of a create or an edit: once without its status (as created),
    // once with a generation the status does not describe yet (as edited).
    let mut created = tenant.clone();
    created.as_object_mut().unwrap().remove("status");
    assert_eq!(health("Tenant", &created), is("Progressing", "Waiting for the controller"));
    let mut edited = tenant.clone();
    let generation = edited["metadata"]["generation"].as_i64().unwrap();
    edited["metadata"]["generation"] = json!(generation + 1);
    let (status, why) = health("Tenant", &edited);
    assert_eq!(status, "Progressing");
    assert!(why.contains(&format!("generation {}", generation + 1)), "{why}");

    // A namespace of the Tenant's name that someone else made: NamespaceConflict, Stalled,
    // Degraded with the Stalled condition's message.
    let name = "e2e-argocd-conflict";
    let ns = format!("tenant-{name}");
    let namespaces: Api<Namespace> = Api::all(client.clone());
    if namespaces.get_opt(&ns).await.unwrap().is_none() {
        kubectl_ok(&["create", "namespace", &ns], None);
    }
    recreate_tenant(&client, name, json!({"displayName": "Conflict"})).await;
    let conflict = wait_live::<Tenant>(
        &client,
        None,
        name,
        "Stalled NamespaceConflict",
        condition_is("Stalled", "True", Some("NamespaceConflict")),
    )
    .await;
    let (status, why) = health("Tenant", &conflict);
    assert_eq!((status.as_str(), why.as_str()), ("Degraded", message(&conflict, "Stalled").as_str()));
    assert!(why.contains("already exists"), "{why}");

    let tenants: Api<Tenant> = Api::all(client.clone());
    tenants.delete(name, &DeleteParams::default()).await.unwrap();
    wait_for("the conflicting Tenant to go", TIMEOUT, || async {
        tenants.get_opt(name).await.ok()?.is_none().then_some(())
    })
    .await;
    namespaces.delete(&ns, &DeleteParams::default()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_suspended_tenant_and_its_crew_are_suspended() {
    operator().wait_ready().await;
    let client = client().await;
    let name = "e2e-argocd-suspended";
    let ns = format!("tenant-{name}");
    fresh_tenant(
        &client,
        name,
        json!({"displayName": "Suspended", "plan": "growth", "suspended": true,
               "database": {"isolation": "Shared", "deletionPolicy": "Delete"}}),
    )
    .await;
    let tenant = wait_live::<Tenant>(&client, None, name, "phase Suspended", |o| {
        o["status"]["phase"] == "Suspended" && condition_is("Ready", "True", None)(o)
    })
    .await;
    assert_eq!(health("Tenant", &tenant), is("Suspended", &message(&tenant, "Ready")));

    // Its crew is scaled to zero on purpose: Ready=False TenantSuspended, Suspended.
    let llm = http_server(Arc::new(AtomicU16::new(200)), Default::default()).await;
    kubectl_ok(&["create", "secret", "generic", "key", "-n", &ns, "--from-literal=apiKey=argocd-test"], None);
    let _: Integration = create_in(
        &client,
        &ns,
        json!({
            "apiVersion": "bizosaas.io/v1alpha1", "kind": "Integration", "metadata": {"name": "llm", "namespace": ns},
            "spec": {"type": "OpenAI", "endpoint": format!("http://{}:{llm}", node_ip()),
                     "credentials": {"secretRef": {"name": "key", "key": "apiKey"}}},
        }),
    )
    .await;
    let _: AgentCrew = create_in(
        &client,
        &ns,
        json!({
            "apiVersion": "bizosaas.io/v1alpha1", "kind": "AgentCrew", "metadata": {"name": "paused", "namespace": ns},
            "spec": {"process": "Sequential", "model": {"integration": "llm", "name": "m"},
                     "agents": [{"name": "writer", "template": "copywriting"}]},
        }),
    )
    .await;
    let crew = wait_live::<AgentCrew>(
        &client,
        Some(&ns),
        "paused",
        "Ready=False TenantSuspended",
        condition_is("Ready", "False", Some("TenantSuspended")),
    )
    .await;
    assert_eq!(health("AgentCrew", &crew), is("Suspended", &message(&crew, "Ready")));

    Api::<Tenant>::all(client.clone()).delete(name, &DeleteParams::default()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn integrations_and_crews_ready_and_failing() {
    let client = setup().await;
    let up = http_server(Arc::new(AtomicU16::new(200)), Default::default()).await;
    let down = http_server(Arc::new(AtomicU16::new(503)), Default::default()).await;
    let webhook = |name: &str, port: u16, secret: &str| {
        json!({"apiVersion": "bizosaas.io/v1alpha1", "kind": "Integration", "metadata": {"name": name, "namespace": NS},
               "spec": {"type": "Webhook", "endpoint": format!("http://{}:{port}", node_ip()),
                        "credentials": {"secretRef": {"name": secret, "key": "token"}},
                        "healthCheck": {"interval": "5s", "timeout": "2s"}}})
    };
    let _: Integration = create_in(&client, NS, webhook("up", up, "token")).await;
    let _: Integration = create_in(&client, NS, webhook("down", down, "token")).await;
    let _: Integration = create_in(&client, NS, webhook("no-secret", up, "missing")).await;
    let _: Integration = create_in(
        &client,
        NS,
        json!({
            "apiVersion": "bizosaas.io/v1alpha1", "kind": "Integration", "metadata": {"name": "llm", "namespace": NS},
            "spec": {"type": "OpenAI", "endpoint": format!("http://{}:{up}", node_ip()),
                     "credentials": {"secretRef": {"name": "token", "key": "token"}}},
        }),
    )
    .await;

    // Ready: Healthy.
    let ok = wait_live::<Integration>(&client, Some(NS), "up", "Ready", condition_is("Ready", "True", None)).await;
    assert_eq!(health("Integration", &ok), is("Healthy", &message(&ok, "Ready")));
    // An endpoint answering 503 may recover by itself: Reconciling, Progressing.
    let unreachable = wait_live::<Integration>(
        &client,
        Some(NS),
        "down",
        "Reconciling Unreachable",
        condition_is("Reconciling", "True", Some("Unreachable")),
    )
    .await;
    let (status, why) = health("Integration", &unreachable);
    assert_eq!((status.as_str(), why.as_str()), ("Progressing", message(&unreachable, "Reconciling").as_str()));
    assert!(why.contains("503"), "{why}");
    // A Secret that does not exist needs a change: Stalled, Degraded.
    let missing = wait_live::<Integration>(
        &client,
        Some(NS),
        "no-secret",
        "Stalled SecretNotFound",
        condition_is("Stalled", "True", Some("SecretNotFound")),
    )
    .await;
    assert_eq!(health("Integration", &missing), is("Degraded", &message(&missing, "Stalled")));

    // A crew scaled to zero needs no pod to be Ready: Healthy.
    let crew = |name: &str, integration: &str| {
        json!({"apiVersion": "bizosaas.io/v1alpha1", "kind": "AgentCrew", "metadata": {"name": name, "namespace": NS},
               "spec": {"process": "Sequential", "replicas": 0, "model": {"integration": integration, "name": "m"},
                        "agents": [{"name": "writer", "template": "copywriting"}]}})
    };
    let _: AgentCrew = create_in(&client, NS, crew("idle", "llm")).await;
    let _: AgentCrew = create_in(&client, NS, crew("lost", "nowhere")).await;
    let idle = wait_live::<AgentCrew>(&client, Some(NS), "idle", "Ready", condition_is("Ready", "True", None)).await;
    assert_eq!(health("AgentCrew", &idle), is("Healthy", &message(&idle, "Ready")));
    // A crew naming an Integration that does not exist: Stalled, Degraded.
    let lost = wait_live::<AgentCrew>(
        &client,
        Some(NS),
        "lost",
        "Stalled IntegrationNotFound",
        condition_is("Stalled", "True", Some("IntegrationNotFound")),
    )
    .await;
    let (status, why) = health("AgentCrew", &lost);
    assert_eq!((status.as_str(), why.as_str()), ("Degraded", message(&lost, "Stalled").as_str()));
    assert!(why.contains("nowhere"), "{why}");
}

fn shell_step(script: &str) -> Value {
    json!({"name": "main", "container": {"image": "docker.io/bizosaas/toolbox:harness",
                                         "command": ["/bin/sh", "-c", script]}})
}

fn workflow(name: &str, spec: Value) -> Value {
    json!({"apiVersion": "bizosaas.io/v1alpha1", "kind": "Workflow", "metadata": {"name": name, "namespace": NS},
           "spec": spec})
}

fn run(name: &str, workflow: &str, parameters: Value) -> Value {
    json!({"apiVersion": "bizosaas.io/v1alpha1", "kind": "WorkflowRun", "metadata": {"name": name, "namespace": NS},
           "spec": {"workflow": workflow, "parameters": parameters}})
}

fn phase_is(phase: &'static str) -> impl Fn(&Value) -> bool {
    move |o: &Value| o["status"]["phase"] == phase
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workflows_and_runs_by_outcome() {
    let client = setup().await;
    let _: Workflow = create_in(&client, NS, workflow("ok", json!({"steps": [shell_step("exit 0")]}))).await;
    let _: Workflow = create_in(&client, NS, workflow("fails", json!({"steps": [shell_step("exit 3")]}))).await;
    let _: Workflow = create_in(&client, NS, workflow("slow", json!({"steps": [shell_step("sleep 300")]}))).await;
    let _: Workflow = create_in(
        &client,
        NS,
        workflow("nonsense", json!({"schedule": "99 99 99 99 99", "steps": [shell_step("exit 0")]})),
    )
    .await;
    let _: Workflow = create_in(
        &client,
        NS,
        workflow("paused", json!({"schedule": "0 0 1 1 *", "suspend": true, "steps": [shell_step("exit 0")]})),
    )
    .await;

    // Workflows: valid is Healthy, an invalid schedule Degraded, a suspended one Suspended.
    let valid = wait_live::<Workflow>(&client, Some(NS), "ok", "Ready", condition_is("Ready", "True", None)).await;
    assert_eq!(health("Workflow", &valid), is("Healthy", &message(&valid, "Ready")));
    let invalid = wait_live::<Workflow>(
        &client,
        Some(NS),
        "nonsense",
        "Stalled InvalidSchedule",
        condition_is("Stalled", "True", Some("InvalidSchedule")),
    )
    .await;
    assert_eq!(health("Workflow", &invalid), is("Degraded", &message(&invalid, "Stalled")));
    let paused =
        wait_live::<Workflow>(&client, Some(NS), "paused", "Ready", condition_is("Ready", "True", Some("Suspended")))
            .await;
    assert_eq!(health("Workflow", &paused), is("Suspended", &message(&paused, "Ready")));

    // Runs.
    let _: WorkflowRun = create_in(&client, NS, run("ok-1", "ok", json!([]))).await;
    let _: WorkflowRun = create_in(&client, NS, run("fails-1", "fails", json!([]))).await;
    let _: WorkflowRun = create_in(&client, NS, run("typo-1", "ok", json!([{"name": "nope", "value": "1"}]))).await;
    let _: WorkflowRun = create_in(&client, NS, run("slow-1", "slow", json!([]))).await;

    let succeeded = wait_live::<WorkflowRun>(&client, Some(NS), "ok-1", "Succeeded", phase_is("Succeeded")).await;
    assert_eq!(health("WorkflowRun", &succeeded), is("Healthy", &message(&succeeded, "Succeeded")));
    let failed = wait_live::<WorkflowRun>(&client, Some(NS), "fails-1", "Failed", phase_is("Failed")).await;
    let (status, why) = health("WorkflowRun", &failed);
    assert_eq!((status.as_str(), why.as_str()), ("Degraded", message(&failed, "Failed").as_str()));
    assert!(why.contains("main"), "{why}");
    // Refused before it started: Failed and Stalled, with the same message.
    let refused = wait_live::<WorkflowRun>(&client, Some(NS), "typo-1", "Failed", phase_is("Failed")).await;
    assert_eq!(cond(&refused, "Stalled").map(|c| c.1), Some("UnknownParameter".to_string()));
    assert_eq!(health("WorkflowRun", &refused), is("Degraded", &message(&refused, "Stalled")));

    // Running: Progressing with what it is doing; cancelled: Suspended.
    let running = wait_live::<WorkflowRun>(&client, Some(NS), "slow-1", "running its step", |o| {
        o["status"]["phase"] == "Running" && cond(o, "Reconciling").is_some_and(|c| c.2.contains("running main"))
    })
    .await;
    assert_eq!(health("WorkflowRun", &running), is("Progressing", &message(&running, "Reconciling")));
    let runs: Api<WorkflowRun> = Api::namespaced(client.clone(), NS);
    runs.patch("slow-1", &PatchParams::default(), &Patch::Merge(json!({"spec": {"cancel": true}}))).await.unwrap();
    let cancelled = wait_live::<WorkflowRun>(&client, Some(NS), "slow-1", "Cancelled", phase_is("Cancelled")).await;
    assert_eq!(health("WorkflowRun", &cancelled), is("Suspended", &message(&cancelled, "Failed")));
}
