//! The API against the real kube-apiserver: CRDs install, samples are accepted, `kubectl
//! explain` shows the docs, the schema and CEL rules reject bad input with a message a user
//! can act on, and the local cluster schedules pods on its real node (kwok only for pods that tolerate it).

mod support;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, PostParams};
use std::time::Duration;
use support::*;

fn test_namespace(name: &str) -> String {
    kubectl(&["delete", "namespace", name, "--ignore-not-found", "--wait=true"], None);
    kubectl_ok(&["create", "namespace", name], None);
    name.to_string()
}

#[tokio::test]
async fn every_crd_is_established() {
    install_crds();
    let crds: Api<CustomResourceDefinition> = Api::all(client().await);
    for crd in bizosaas_crds::generate::crds() {
        let name = crd.metadata.name.unwrap();
        let live = crds.get(&name).await.unwrap();
        let established = live
            .status
            .and_then(|s| s.conditions)
            .unwrap_or_default()
            .into_iter()
            .any(|c| c.type_ == "Established" && c.status == "True");
        assert!(established, "{name} is not Established");
    }
    let names = kubectl_ok(&["api-resources", "--categories=bizosaas", "-o", "name"], None);
    for plural in ["tenants", "agentcrews", "workflows", "workflowruns", "integrations"] {
        assert!(names.contains(&format!("{plural}.bizosaas.io")), "{plural} missing from category bizosaas: {names}");
    }
}

#[tokio::test]
async fn every_sample_is_accepted_by_server_side_dry_run() {
    install_crds();
    let ns = test_namespace("bizosaas-samples-test");
    let dir = support::repo().join("manifests/samples");
    let mut files: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    assert!(files.len() >= 5, "samples cover every kind");
    let mut kinds = std::collections::BTreeSet::new();
    for file in files {
        let text =
            std::fs::read_to_string(&file).unwrap().replace("namespace: tenant-acme", &format!("namespace: {ns}"));
        for line in text.lines().filter(|l| l.starts_with("kind: ")) {
            kinds.insert(line.trim_start_matches("kind: ").to_string());
        }
        let out = kubectl(&["apply", "--dry-run=server", "-f", "-"], Some(&text));
        assert!(out.status.success(), "{} rejected: {}", file.display(), String::from_utf8_lossy(&out.stderr));
    }
    for kind in ["Tenant", "Integration", "AgentCrew", "Workflow", "WorkflowRun"] {
        assert!(kinds.contains(kind), "no sample of {kind}");
    }
    kubectl(&["delete", "namespace", &ns, "--wait=false"], None);
}

#[tokio::test]
async fn kubectl_explain_shows_the_field_docs() {
    install_crds();
    let text = kubectl_ok(&["explain", "tenant.spec.database"], None);
    assert!(text.contains("How the tenant's PostgreSQL data is held"), "{text}");
    assert!(text.contains("isolation"), "{text}");
    assert!(text.contains("`Dedicated` gives the tenant its own database"), "{text}");
    let crew = kubectl_ok(&["explain", "agentcrew.spec.process"], None);
    assert!(crew.contains("`Hierarchical` lets a manager model plan the work"), "{crew}");
}

/// Each case: a manifest and the words the API server's rejection must contain.
const INVALID: &[(&str, &str, &str)] = &[
    (
        "integration with two credential sources",
        "apiVersion: bizosaas.io/v1alpha1\nkind: Integration\nmetadata: {name: two, namespace: NS}\nspec: {type: Stripe, credentials: {secretRef: {name: a, key: b}, vault: {path: a/b, key: c}}}",
        "credentials need exactly one source: secretRef or vault",
    ),
    (
        "integration without credentials",
        "apiVersion: bizosaas.io/v1alpha1\nkind: Integration\nmetadata: {name: none, namespace: NS}\nspec: {type: Stripe, credentials: {}}",
        "credentials need exactly one source",
    ),
    (
        "webhook integration without an endpoint",
        "apiVersion: bizosaas.io/v1alpha1\nkind: Integration\nmetadata: {name: hook, namespace: NS}\nspec: {type: Webhook, credentials: {secretRef: {name: a, key: b}}}",
        "a Webhook integration needs spec.endpoint",
    ),
    (
        "tenant quota that is not a quantity",
        "apiVersion: bizosaas.io/v1alpha1\nkind: Tenant\nmetadata: {name: bad-quota}\nspec: {displayName: Q, quota: {cpu: lots}}",
        "quota.cpu must be a positive quantity",
    ),
    (
        "tenant with an impossible pod quota",
        "apiVersion: bizosaas.io/v1alpha1\nkind: Tenant\nmetadata: {name: no-pods}\nspec: {displayName: Q, quota: {pods: 0}}",
        "spec.quota.pods",
    ),
    (
        "tenant with an unknown plan",
        "apiVersion: bizosaas.io/v1alpha1\nkind: Tenant\nmetadata: {name: platinum}\nspec: {displayName: Q, plan: platinum}",
        "Unsupported value: \"platinum\"",
    ),
    (
        "tenant whose name cannot become a database identifier",
        "apiVersion: bizosaas.io/v1alpha1\nkind: Tenant\nmetadata: {name: a.b}\nspec: {displayName: Q}",
        "metadata.name must be at most 40 characters",
    ),
    (
        "workflow step depending on a missing step",
        "apiVersion: bizosaas.io/v1alpha1\nkind: Workflow\nmetadata: {name: dangling, namespace: NS}\nspec: {steps: [{name: a, dependsOn: [zz], container: {image: busybox}}]}",
        "steps[].dependsOn may only name other steps",
    ),
    (
        "workflow step with two actions",
        "apiVersion: bizosaas.io/v1alpha1\nkind: Workflow\nmetadata: {name: twice, namespace: NS}\nspec: {steps: [{name: a, container: {image: busybox}, http: {integration: x}}]}",
        "a step needs exactly one of agentTask, http or container",
    ),
    // A cron expression is parsed by the Workflow controller (`Ready=False InvalidSchedule`,
    // tests/e2e/workflow.rs); its time zone's shape is checked here.
    (
        "workflow with a time zone that is no IANA name",
        "apiVersion: bizosaas.io/v1alpha1\nkind: Workflow\nmetadata: {name: cron, namespace: NS}\nspec: {schedule: '@daily', timeZone: 'Mars Base', steps: [{name: a, container: {image: busybox}}]}",
        "spec.timeZone in body should match",
    ),
    // A zero interval would probe (and reconcile) in a hot loop.
    (
        "integration health check every 0s",
        "apiVersion: bizosaas.io/v1alpha1\nkind: Integration\nmetadata: {name: spin, namespace: NS}\nspec: {type: Stripe, credentials: {secretRef: {name: a, key: b}}, healthCheck: {interval: 0s}}",
        "healthCheck.interval must be at least 1s",
    ),
    (
        "integration health check with a zero timeout",
        "apiVersion: bizosaas.io/v1alpha1\nkind: Integration\nmetadata: {name: rush, namespace: NS}\nspec: {type: Stripe, credentials: {secretRef: {name: a, key: b}}, healthCheck: {timeout: 0ms}}",
        "healthCheck.timeout must be between 100ms and 60s",
    ),
    (
        "hierarchical crew without a manager",
        "apiVersion: bizosaas.io/v1alpha1\nkind: AgentCrew\nmetadata: {name: boss, namespace: NS}\nspec: {process: Hierarchical, model: {integration: o, name: m}, agents: [{name: a, template: copywriting}]}",
        "a Hierarchical crew needs spec.manager",
    ),
    (
        "crew agent from an unknown template",
        "apiVersion: bizosaas.io/v1alpha1\nkind: AgentCrew\nmetadata: {name: astro, namespace: NS}\nspec: {model: {integration: o, name: m}, agents: [{name: a, template: astrologer}]}",
        "Unsupported value: \"astrologer\"",
    ),
    (
        "crew agent with neither template nor role",
        "apiVersion: bizosaas.io/v1alpha1\nkind: AgentCrew\nmetadata: {name: empty, namespace: NS}\nspec: {model: {integration: o, name: m}, agents: [{name: a}]}",
        "an agent needs either a catalog template or an inline role and goal",
    ),
    // The runtime refuses these at start-up; the crew would otherwise sit in Reconciling.
    (
        "crew agent with a tool the runtime lacks",
        "apiVersion: bizosaas.io/v1alpha1\nkind: AgentCrew\nmetadata: {name: shell, namespace: NS}\nspec: {model: {integration: o, name: m}, agents: [{name: a, template: copywriting, tools: [run_shell]}]}",
        "unknown tool: the runtime provides http_request, memory_search and memory_save",
    ),
    (
        "hierarchical crew with an agent named manager",
        "apiVersion: bizosaas.io/v1alpha1\nkind: AgentCrew\nmetadata: {name: boss2, namespace: NS}\nspec: {process: Hierarchical, manager: {model: {integration: o, name: m}}, model: {integration: o, name: m}, agents: [{name: manager, template: copywriting}]}",
        "in a Hierarchical crew no agent may be named manager",
    ),
    (
        "service-account owner without namespace",
        "apiVersion: bizosaas.io/v1alpha1\nkind: Tenant\nmetadata: {name: sa-owner}\nspec: {displayName: Q, owners: [{kind: ServiceAccount, name: ci}]}",
        "owners[].namespace is required for kind ServiceAccount",
    ),
];

#[tokio::test]
async fn invalid_objects_are_rejected_with_the_rule_message() {
    install_crds();
    let ns = test_namespace("bizosaas-invalid-test");
    for (case, manifest, expected) in INVALID {
        let out = kubectl(&["create", "--dry-run=server", "-f", "-"], Some(&manifest.replace("NS", &ns)));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{case}: accepted");
        assert!(stderr.contains(expected), "{case}: expected {expected:?} in {stderr}");
    }
    kubectl(&["delete", "namespace", &ns, "--wait=false"], None);
}

#[tokio::test]
async fn database_isolation_is_immutable() {
    install_crds();
    let name = "immutable-isolation";
    kubectl(&["delete", "tenant", name, "--ignore-not-found"], None);
    let tenant = format!(
        "apiVersion: bizosaas.io/v1alpha1\nkind: Tenant\nmetadata: {{name: {name}, finalizers: []}}\nspec: {{displayName: I, database: {{isolation: Dedicated}}}}"
    );
    kubectl_ok(&["create", "-f", "-"], Some(&tenant));
    let out = kubectl(
        &["patch", "tenant", name, "--type=merge", "-p", r#"{"spec":{"database":{"isolation":"Shared"}}}"#],
        None,
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    kubectl(&["delete", "tenant", name, "--wait=false"], None);
    assert!(!out.status.success(), "isolation changed");
    assert!(stderr.contains("database.isolation is immutable"), "{stderr}");
}

/// The kwok node carries a NoSchedule taint: only pods that tolerate it (the scale
/// benchmark's) land there; everything else runs on the real node.
#[tokio::test]
async fn tolerating_pods_land_on_the_kwok_node_and_the_rest_on_the_real_one() {
    use k8s_openapi::api::core::v1::Pod;
    let client = client().await;
    let ns = test_namespace("bizosaas-kwok-test");
    let deployment = |name: &str, tolerate: bool| -> Deployment {
        let tolerations = if tolerate {
            serde_json::json!([{"key": "kwok.x-k8s.io/node", "operator": "Exists", "effect": "NoSchedule"}])
        } else {
            serde_json::json!([])
        };
        serde_json::from_value(serde_json::json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": name, "namespace": ns},
            "spec": {
                "replicas": 2,
                "selector": {"matchLabels": {"app": name}},
                "template": {
                    "metadata": {"labels": {"app": name}},
                    "spec": {
                        "nodeSelector": if tolerate { serde_json::json!({"type": "kwok"}) } else { serde_json::json!({}) },
                        "tolerations": tolerations,
                        "securityContext": {"runAsNonRoot": true, "seccompProfile": {"type": "RuntimeDefault"}},
                        "containers": [{
                            "name": "web", "image": "docker.io/bizosaas/toolbox:harness",
                            "command": ["/bin/sleep", "3600"],
                            "securityContext": {"allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true,
                                                "capabilities": {"drop": ["ALL"]}},
                        }],
                    }
                }
            }
        }))
        .unwrap()
    };
    let api: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    api.create(&PostParams::default(), &deployment("fake", true)).await.unwrap();
    api.create(&PostParams::default(), &deployment("real", false)).await.unwrap();
    for name in ["fake", "real"] {
        let available = wait_for(&format!("Deployment {name} Available"), Duration::from_secs(90), || async {
            let d = api.get(name).await.ok()?;
            let status = d.status?;
            (status.available_replicas == Some(2)).then_some(status)
        })
        .await;
        assert_eq!(available.ready_replicas, Some(2));
    }
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    for (app, node) in [("fake", "kwok-node-0"), ("real", "bizosaas-node")] {
        let list = pods.list(&kube::api::ListParams::default().labels(&format!("app={app}"))).await.unwrap();
        let nodes: Vec<_> = list.items.iter().filter_map(|p| p.spec.as_ref()?.node_name.clone()).collect();
        assert_eq!(nodes, [node, node], "pods of {app}");
    }
    Api::<Namespace>::all(client).delete(&ns, &DeleteParams::background()).await.unwrap();
}

/// A child the operator creates on a first pass (a plain create, cheaper than an apply) is
/// applied like any other afterwards: a field it stops setting leaves the live object, and
/// the operator holds one managed-fields entry for it. A first pass over an object that exists
/// after all applies instead of failing.
#[tokio::test]
async fn a_created_child_loses_the_fields_it_stops_setting() {
    use bizosaas_controllers::FIELD_MANAGER;
    use bizosaas_controllers::apply::Applier;
    use bizosaas_controllers::metrics::Metrics;
    use k8s_openapi::api::core::v1::ConfigMap;
    let client = client().await;
    let ns = test_namespace("e2e-apply-adopt");
    let metrics = Metrics::new(&mut prometheus_client::registry::Registry::default(), &[]);
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let config_map = |labels: &[&str], data: &[&str]| {
        let mut cm = ConfigMap::default();
        cm.metadata.name = Some("child".into());
        cm.metadata.labels = Some(labels.iter().map(|l| (l.to_string(), "1".to_string())).collect());
        cm.data = Some(data.iter().map(|d| (d.to_string(), "1".to_string())).collect());
        cm
    };
    let ours = |cm: &ConfigMap| -> Vec<String> {
        let entries = cm.metadata.managed_fields.iter().flatten();
        entries.filter(|e| e.manager.as_deref() == Some(FIELD_MANAGER)).filter_map(|e| e.operation.clone()).collect()
    };
    let keys = |map: Option<std::collections::BTreeMap<String, String>>| -> Vec<String> {
        map.unwrap_or_default().into_keys().filter(|k| !k.starts_with("bizosaas.io/")).collect()
    };

    let first_pass = Applier { metrics: &metrics, controller: "e2e", compare: false, known: None };
    assert!(first_pass.ensure(&api, &config_map(&["a", "b"], &["x", "y"])).await.unwrap());
    let created = api.get("child").await.unwrap();
    assert_eq!(ours(&created), ["Update"], "a first pass creates the child");

    let later = Applier { compare: true, ..first_pass };
    assert!(later.ensure(&api, &config_map(&["a"], &["x"])).await.unwrap());
    let applied = api.get("child").await.unwrap();
    assert_eq!(keys(applied.metadata.labels.clone()), ["a"], "a label the operator stopped setting stayed");
    assert_eq!(keys(applied.data.clone()), ["x"], "a key the operator stopped setting stayed");
    assert_eq!(ours(&applied), ["Apply"]);
    assert!(!later.ensure(&api, &config_map(&["a"], &["x"])).await.unwrap(), "a converged child is written again");

    // A first pass that finds the child there (an earlier attempt created it) applies it.
    assert!(first_pass.ensure(&api, &config_map(&["a", "c"], &["x"])).await.unwrap());
    let reapplied = api.get("child").await.unwrap();
    assert_eq!(keys(reapplied.metadata.labels.clone()), ["a", "c"]);
    assert_eq!(ours(&reapplied), ["Apply"]);
    Api::<Namespace>::all(client).delete(&ns, &DeleteParams::background()).await.unwrap();
}
