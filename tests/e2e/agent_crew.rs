//! AgentCrews end to end: in a tenant namespace a crew becomes Ready with its runtime
//! Deployment Available on the real node, behind an egress policy to its Integration's
//! endpoint; config changes and credential rotation roll it; a missing Integration is
//! reported; the tenant's quotas are respected; deleting it removes its children.

mod support;

use bizosaas_crds::common::find_condition;
use bizosaas_crds::{AgentCrew, Integration, Tenant};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::Client;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use std::sync::Arc;
use std::sync::atomic::AtomicU16;
use std::time::Duration;
use support::*;

const TENANT: &str = "e2e-crews";
const NS: &str = "tenant-e2e-crews";
const TIMEOUT: Duration = Duration::from_secs(90);

fn crew(name: &str, spec: serde_json::Value) -> AgentCrew {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "bizosaas.io/v1alpha1", "kind": "AgentCrew",
        "metadata": {"name": name, "namespace": NS}, "spec": spec,
    }))
    .unwrap()
}

fn basic_spec(integration: &str) -> serde_json::Value {
    serde_json::json!({
        "process": "Sequential",
        "model": {"integration": integration, "name": "gemma3-270m", "temperature": 0.2},
        "agents": [{"name": "seo", "template": "seo-optimization"}, {"name": "writer", "template": "copywriting"}],
        "memory": {"enabled": true},
    })
}

async fn condition(api: &Api<AgentCrew>, name: &str, type_: &str) -> Option<(String, String, String)> {
    let c = api.get(name).await.ok()?;
    let cond = find_condition(&c.status?.conditions, type_)?.clone();
    Some((cond.status, cond.reason, cond.message))
}

async fn wait_condition(api: &Api<AgentCrew>, name: &str, type_: &str, status: &str) -> (String, String) {
    wait_for(&format!("{name} {type_}={status}"), TIMEOUT, || async {
        let (s, reason, message) = condition(api, name, type_).await?;
        (s == status).then_some((reason, message))
    })
    .await
}

async fn template_hash(deployments: &Api<Deployment>, name: &str) -> Option<String> {
    let d = deployments.get_opt(&format!("crew-{name}")).await.ok()??;
    d.spec?.template.metadata?.annotations?.get("bizosaas.io/config-hash").cloned()
}

async fn setup_tenant(client: &Client) {
    let tenants: Api<Tenant> = Api::all(client.clone());
    if tenants.get_opt(TENANT).await.unwrap().is_some() {
        tenants.delete(TENANT, &DeleteParams::default()).await.unwrap();
        wait_for("old tenant to go", TIMEOUT, || async { tenants.get_opt(TENANT).await.ok()?.is_none().then_some(()) })
            .await;
        wait_for("old namespace to go", TIMEOUT, || async {
            (!kubectl(&["get", "namespace", NS], None).status.success()).then_some(())
        })
        .await;
    }
    let tenant: Tenant = serde_json::from_value(serde_json::json!({
        "apiVersion": "bizosaas.io/v1alpha1", "kind": "Tenant", "metadata": {"name": TENANT},
        "spec": {"displayName": "Crews", "database": {"isolation": "Shared", "deletionPolicy": "Delete"},
                 "quota": {"cpu": "1", "agentCrews": 3}},
    }))
    .unwrap();
    tenants.create(&PostParams::default(), &tenant).await.unwrap();
    wait_for("tenant Ready", TIMEOUT, || async {
        let t = tenants.get(TENANT).await.ok()?;
        bizosaas_crds::common::is_ready(&t.status?.conditions).then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_crew_runs_rolls_reports_and_respects_quota() {
    let op = operator();
    op.wait_ready().await;
    let client = client().await;
    setup_tenant(&client).await;
    let crews: Api<AgentCrew> = Api::namespaced(client.clone(), NS);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), NS);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), NS);

    // The LLM gateway Integration.
    // The gateway only has to answer the Integration's health check.
    let port = http_server(Arc::new(AtomicU16::new(200)), Arc::default()).await;
    kubectl_ok(&["create", "secret", "generic", "llm-key", "-n", NS, "--from-literal=apiKey=first-key"], None);
    let integration: Integration = serde_json::from_value(serde_json::json!({
        "apiVersion": "bizosaas.io/v1alpha1", "kind": "Integration", "metadata": {"name": "llm", "namespace": NS},
        "spec": {"type": "OpenAI", "endpoint": format!("http://{}:{port}/v1", node_ip()),
                 "credentials": {"secretRef": {"name": "llm-key", "key": "apiKey"}},
                 "healthCheck": {"interval": "1s", "timeout": "1s"}},
    }))
    .unwrap();
    Api::<Integration>::namespaced(client.clone(), NS).create(&PostParams::default(), &integration).await.unwrap();

    // Ready, with its Deployment Available on the real node (the runtime pod passes its probes).
    crews.create(&PostParams::default(), &crew("team", basic_spec("llm"))).await.unwrap();
    wait_condition(&crews, "team", "Ready", "True").await;
    let status = crews.get("team").await.unwrap().status.unwrap();
    assert_eq!(status.ready_replicas, Some(1));
    assert_eq!(status.endpoint.as_deref(), Some("http://crew-team.tenant-e2e-crews.svc:80"));
    assert_eq!(status.agents, ["seo (Senior SEO strategist)", "writer (Conversion copywriter)"]);
    let d = deployments.get("crew-team").await.unwrap();
    assert_eq!(d.status.as_ref().unwrap().available_replicas, Some(1));
    let pod = d.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
    let sc = pod.containers[0].security_context.as_ref().unwrap();
    assert_eq!((sc.read_only_root_filesystem, sc.run_as_non_root), (Some(true), Some(true)));
    let config = Api::<ConfigMap>::namespaced(client.clone(), NS).get("crew-team").await.unwrap();
    let crew_json: serde_json::Value = serde_json::from_str(&config.data.unwrap()["crew.json"]).unwrap();
    assert_eq!(crew_json["tenant"], TENANT);
    assert_eq!(crew_json["model"]["baseUrl"], format!("http://{}:{port}/v1", node_ip()));
    assert_eq!(crew_json["model"]["apiKeyEnv"], "BIZOSAAS_INTEGRATION_LLM");
    Api::<Service>::namespaced(client.clone(), NS).get("crew-team").await.unwrap();
    // Egress to exactly the gateway's address and port and the API server (which reviews the
    // callers' tokens), for exactly the crew's pods.
    let egress = Api::<NetworkPolicy>::namespaced(client.clone(), NS).get("crew-team-egress").await.unwrap();
    let spec = egress.spec.unwrap();
    assert_eq!(spec.pod_selector, Some(d.spec.as_ref().unwrap().selector.clone()));
    let rules: Vec<(Vec<String>, Option<IntOrString>)> = spec
        .egress
        .unwrap()
        .iter()
        .map(|r| {
            let cidrs = r.to.iter().flatten().map(|p| p.ip_block.as_ref().unwrap().cidr.clone()).collect();
            (cidrs, r.ports.as_ref().unwrap()[0].port.clone())
        })
        .collect();
    let api_server = kube::Api::<k8s_openapi::api::core::v1::Endpoints>::namespaced(client.clone(), "default")
        .get("kubernetes")
        .await
        .unwrap();
    let api_port = api_server.subsets.unwrap()[0].ports.as_ref().unwrap()[0].port;
    let mut expected = vec![
        (vec![format!("{}/32", node_ip())], Some(IntOrString::Int(port.into()))),
        (vec![format!("{}/32", node_ip())], Some(IntOrString::Int(api_port))),
    ];
    expected.sort_by_key(|(_, p)| format!("{p:?}"));
    let mut rules = rules;
    rules.sort_by_key(|(_, p)| format!("{p:?}"));
    assert_eq!(rules, expected);
    let egress_allowed = find_condition(&status.conditions, "EgressAllowed").unwrap();
    assert_eq!(egress_allowed.status, "True", "{}", egress_allowed.message);

    // A config change rolls the pods.
    let first = template_hash(&deployments, "team").await.unwrap();
    let patch = serde_json::json!({"spec": {"model": {"temperature": 0.9}}});
    crews.patch("team", &PatchParams::default(), &Patch::Merge(patch)).await.unwrap();
    let second = wait_for("the config change to roll", TIMEOUT, || async {
        let h = template_hash(&deployments, "team").await?;
        (h != first).then_some(h)
    })
    .await;
    // Rotated credentials roll it too.
    let patch = serde_json::json!({"stringData": {"apiKey": "second-key"}});
    secrets.patch("llm-key", &PatchParams::default(), &Patch::Merge(patch)).await.unwrap();
    wait_for("the credential rotation to roll", TIMEOUT, || async {
        (template_hash(&deployments, "team").await? != second).then_some(())
    })
    .await;
    wait_condition(&crews, "team", "Ready", "True").await;

    // More than one replica adds a PodDisruptionBudget; back to one removes it.
    let pdbs: Api<PodDisruptionBudget> = Api::namespaced(client.clone(), NS);
    crews
        .patch("team", &PatchParams::default(), &Patch::Merge(serde_json::json!({"spec": {"replicas": 2}})))
        .await
        .unwrap();
    wait_for("a PDB", TIMEOUT, || async { pdbs.get_opt("crew-team").await.ok()?.map(|_| ()) }).await;
    crews
        .patch("team", &PatchParams::default(), &Patch::Merge(serde_json::json!({"spec": {"replicas": 1}})))
        .await
        .unwrap();
    wait_for("the PDB to go", TIMEOUT, || async { pdbs.get_opt("crew-team").await.ok()?.is_none().then_some(()) })
        .await;

    // A field the crew stops setting leaves its Deployment too (server-side apply removes it).
    let container_limits = || async {
        let d = deployments.get("crew-team").await.ok()?;
        d.spec?.template.spec?.containers[0].resources.clone()?.limits
    };
    let resources = |storage: Option<&str>| {
        serde_json::json!({"spec": {"resources": {"requests": {"cpu": "100m", "memory": "64Mi"},
            "limits": {"cpu": "300m", "memory": "200Mi", "ephemeral-storage": storage}}}})
    };
    crews.patch("team", &PatchParams::default(), &Patch::Merge(resources(Some("100Mi")))).await.unwrap();
    wait_for("the storage limit to be applied", TIMEOUT, || async {
        container_limits().await?.contains_key("ephemeral-storage").then_some(())
    })
    .await;
    crews.patch("team", &PatchParams::default(), &Patch::Merge(resources(None))).await.unwrap();
    let limits = wait_for("the dropped storage limit to be removed", TIMEOUT, || async {
        let limits = container_limits().await?;
        (!limits.contains_key("ephemeral-storage")).then_some(limits)
    })
    .await;
    assert_eq!(limits["memory"].0, "200Mi");
    wait_condition(&crews, "team", "Ready", "True").await;

    // A missing Integration is reported, Stalled for kstatus, and nothing is deployed for it.
    crews.create(&PostParams::default(), &crew("orphan", basic_spec("nope"))).await.unwrap();
    let (reason, message) = wait_condition(&crews, "orphan", "Ready", "False").await;
    assert_eq!(reason, "IntegrationNotFound");
    assert!(message.contains("\"nope\""), "{message}");
    assert!(deployments.get_opt("crew-orphan").await.unwrap().is_none());
    let (stalled, _) = wait_condition(&crews, "orphan", "Stalled", "True").await;
    assert_eq!(stalled, "IntegrationNotFound");

    // Compute quota: pods that would exceed the tenant's CPU are refused, and said so.
    let mut greedy = basic_spec("llm");
    greedy["resources"] =
        serde_json::json!({"requests": {"cpu": "2", "memory": "64Mi"}, "limits": {"cpu": "2", "memory": "64Mi"}});
    crews.create(&PostParams::default(), &crew("greedy", greedy)).await.unwrap();
    let message = wait_for("greedy to report QuotaExceeded", TIMEOUT, || async {
        let (s, r, m) = condition(&crews, "greedy", "Ready").await?;
        (s == "False" && r == "QuotaExceeded").then_some(m)
    })
    .await;
    assert!(message.contains("exceeded quota"), "{message}");

    // Object-count quota: the fourth crew is refused by the API server.
    let err = crews.create(&PostParams::default(), &crew("one-too-many", basic_spec("llm"))).await.unwrap_err();
    assert!(err.to_string().contains("exceeded quota"), "{err}");

    // Suspending the tenant stops its crews (no pods, said why) and resuming starts them again.
    let tenants: Api<Tenant> = Api::all(client.clone());
    let suspend = |on: bool| serde_json::json!({"spec": {"suspended": on}});
    tenants.patch(TENANT, &PatchParams::default(), &Patch::Merge(suspend(true))).await.unwrap();
    let (_, message) = wait_condition(&crews, "team", "Available", "False").await;
    assert!(message.contains("suspended"), "{message}");
    let (reason, _) = wait_condition(&crews, "team", "Ready", "False").await;
    assert_eq!(reason, "TenantSuspended");
    wait_for("the runtime to scale to zero", TIMEOUT, || async {
        let d = deployments.get("crew-team").await.ok()?;
        (d.spec?.replicas == Some(0) && d.status?.replicas.unwrap_or(0) == 0).then_some(())
    })
    .await;
    let status = crews.get("team").await.unwrap().status.unwrap();
    assert!(find_condition(&status.conditions, "Reconciling").is_none(), "a suspended crew is at rest");
    assert!(find_condition(&status.conditions, "Stalled").is_none(), "a suspended crew is at rest");
    tenants.patch(TENANT, &PatchParams::default(), &Patch::Merge(suspend(false))).await.unwrap();
    wait_condition(&crews, "team", "Ready", "True").await;
    assert_eq!(deployments.get("crew-team").await.unwrap().status.unwrap().available_replicas, Some(1));

    // Deleting a crew removes its children.
    crews.delete("team", &DeleteParams::default()).await.unwrap();
    wait_for("the crew's Deployment to go", TIMEOUT, || async {
        deployments.get_opt("crew-team").await.ok()?.is_none().then_some(())
    })
    .await;
    wait_for("the crew's ConfigMap to go", TIMEOUT, || async {
        Api::<ConfigMap>::namespaced(client.clone(), NS).get_opt("crew-team").await.ok()?.is_none().then_some(())
    })
    .await;
    for name in ["orphan", "greedy"] {
        crews.delete(name, &DeleteParams::default()).await.unwrap();
    }
    tenants.delete(TENANT, &DeleteParams::default()).await.unwrap();
    wait_for("the tenant to go", TIMEOUT, || async { tenants.get_opt(TENANT).await.ok()?.is_none().then_some(()) })
        .await;
}

/// Outside a tenant namespace there is no quota, default deny or workload identity: a crew
/// there says so and gets nothing.
#[tokio::test]
async fn a_crew_outside_a_tenant_namespace_gets_nothing() {
    operator().wait_ready().await;
    let client = client().await;
    let ns = "e2e-not-a-tenant";
    if !kubectl(&["get", "namespace", ns], None).status.success() {
        kubectl_ok(&["create", "namespace", ns], None);
    }
    let mut stray = crew("stray", basic_spec("llm"));
    stray.metadata.namespace = Some(ns.into());
    let crews: Api<AgentCrew> = Api::namespaced(client.clone(), ns);
    let _ = crews.delete("stray", &Default::default()).await;
    wait_for("an old stray crew to go", TIMEOUT, || async {
        crews.get_opt("stray").await.ok()?.is_none().then_some(())
    })
    .await;
    crews.create(&PostParams::default(), &stray).await.unwrap();
    let (reason, message) = wait_condition(&crews, "stray", "Ready", "False").await;
    assert_eq!(reason, "NoTenantNamespace", "{message}");
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    assert!(deployments.get_opt("crew-stray").await.unwrap().is_none(), "a runtime was created outside a tenant");
    assert!(Api::<ConfigMap>::namespaced(client.clone(), ns).get_opt("crew-stray").await.unwrap().is_none());
    crews.delete("stray", &Default::default()).await.unwrap();
}
