//! The tenant boundary, proven with packets on the real node (kube-router enforces the
//! NetworkPolicies): from a workload of tenant A, what another tenant, the platform and the
//! host's services expose is out of reach, while DNS, A's own services, A's database (for
//! pods that use it) and a crew's own Integrations work.

mod support;

use bizosaas_crds::common::is_ready;
use bizosaas_crds::{AgentCrew, Integration, Tenant};
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use std::sync::Arc;
use std::sync::atomic::AtomicU16;
use std::time::Duration;
use support::*;

const A: &str = "e2e-wall-a";
const B: &str = "e2e-wall-b";
const NS_A: &str = "tenant-e2e-wall-a";
const NS_B: &str = "tenant-e2e-wall-b";

fn refused(ns: &str, pod: &str, target: &str, what: &str) {
    if let Ok(out) = netcheck(ns, pod, &["tcp", target]) {
        panic!("{pod} in {ns} reached {what} at {target}: {out}");
    }
}

fn reached(ns: &str, pod: &str, target: &str, what: &str) {
    if let Err(e) = netcheck(ns, pod, &["tcp", target]) {
        panic!("{pod} in {ns} could not reach {what} at {target}: {e}");
    }
}

// Multi-threaded: the test's HTTP server answers while kubectl exec blocks a thread.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_workload_reaches_only_what_its_policies_allow() {
    operator().wait_ready().await;
    let client = client().await;
    let spec = serde_json::json!({"displayName": "Isolation", "services": ["crm"],
                                  "database": {"isolation": "Shared", "deletionPolicy": "Delete"}});
    fresh_tenant(&client, A, spec.clone()).await;
    fresh_tenant(&client, B, spec).await;
    let node = node_ip();

    // A crew in A whose only Integration is a gateway on the node's address.
    let gateway = http_server(Arc::new(AtomicU16::new(200)), Arc::default()).await;
    kubectl_ok(&["create", "secret", "generic", "gw-key", "-n", NS_A, "--from-literal=apiKey=k"], None);
    let integration: Integration = serde_json::from_value(serde_json::json!({
        "apiVersion": "bizosaas.io/v1alpha1", "kind": "Integration", "metadata": {"name": "gw", "namespace": NS_A},
        "spec": {"type": "OpenAI", "endpoint": format!("http://{node}:{gateway}/v1"),
                 "credentials": {"secretRef": {"name": "gw-key", "key": "apiKey"}}},
    }))
    .unwrap();
    Api::<Integration>::namespaced(client.clone(), NS_A).create(&PostParams::default(), &integration).await.unwrap();
    let crew: AgentCrew = serde_json::from_value(serde_json::json!({
        "apiVersion": "bizosaas.io/v1alpha1", "kind": "AgentCrew", "metadata": {"name": "iso", "namespace": NS_A},
        "spec": {"process": "Sequential", "model": {"integration": "gw", "name": "m"},
                 "agents": [{"name": "seo", "template": "seo-optimization"}]},
    }))
    .unwrap();
    let crews: Api<AgentCrew> = Api::namespaced(client.clone(), NS_A);
    crews.create(&PostParams::default(), &crew).await.unwrap();
    wait_for("the crew Ready", Duration::from_secs(120), || async {
        is_ready(&crews.get("iso").await.ok()?.status?.conditions).then_some(())
    })
    .await;

    // Workloads of A: a plain pod, a database client, and a pod labelled as the crew's pods.
    toolbox_pod(&client, NS_A, "plain", serde_json::json!({})).await;
    toolbox_pod(&client, NS_A, "dbclient", serde_json::json!({"bizosaas.io/database-client": "true"})).await;
    toolbox_pod(
        &client,
        NS_A,
        "crewlike",
        serde_json::json!({"bizosaas.io/component": "agent", "bizosaas.io/crew": "iso"}),
    )
    .await;

    // DNS and A's own service work (the probe itself works).
    let page = netcheck(NS_A, "plain", &["http", &format!("http://crm.{NS_A}.svc.cluster.local/")])
        .unwrap_or_else(|e| panic!("A's own crm by name: {e}"));
    assert!(page.starts_with("200"), "{page}");

    // Tenant B: its pod, its Service by ClusterIP and by name.
    let b_pods = Api::<Pod>::namespaced(client.clone(), NS_B)
        .list(&ListParams::default().labels("app.kubernetes.io/name=crm"))
        .await
        .unwrap();
    let b_pod_ip = b_pods.items[0].status.as_ref().unwrap().pod_ip.clone().unwrap();
    let b_service = Api::<Service>::namespaced(client.clone(), NS_B).get("crm").await.unwrap();
    let b_cluster_ip = b_service.spec.unwrap().cluster_ip.unwrap();
    refused(NS_A, "plain", &format!("{b_pod_ip}:8080"), "tenant B's pod");
    refused(NS_A, "plain", &format!("{b_cluster_ip}:80"), "tenant B's Service");
    refused(NS_A, "plain", &format!("crm.{NS_B}.svc.cluster.local:80"), "tenant B's Service by name");
    // The host reaches B's page, so the refusal above is the policy, not a dead pod.
    let page = http().get(format!("http://{b_cluster_ip}/")).send().await.unwrap();
    assert_eq!(page.status(), 200);

    // The platform: the operator's metrics port, the API server.
    let (_, operator_ip) = operator().leader().await.unwrap();
    refused(NS_A, "plain", &format!("{operator_ip}:8080"), "the operator's metrics");
    refused(NS_A, "plain", "10.96.0.1:443", "the API server's Service");
    refused(NS_A, "plain", &format!("{node}:16443"), "the API server");

    // The host's services: none from a plain pod; PostgreSQL (only) for database clients.
    let pg_port = database_url().rsplit(':').next().unwrap().split('/').next().unwrap().to_string();
    let bao_port = vault_addr().rsplit(':').next().unwrap().to_string();
    refused(NS_A, "plain", &format!("{node}:{pg_port}"), "PostgreSQL");
    refused(NS_A, "plain", &format!("{node}:{bao_port}"), "OpenBao");
    reached(NS_A, "dbclient", &format!("{node}:{pg_port}"), "PostgreSQL");
    refused(NS_A, "dbclient", &format!("{node}:{bao_port}"), "OpenBao");
    if let Ok(llm) = std::env::var("BIZOSAAS_TEST_LLM_URL") {
        let llm_port = llm.trim_end_matches("/v1").rsplit(':').next().unwrap().to_string();
        refused(NS_A, "plain", &format!("{node}:{llm_port}"), "the LLM server");
    }

    // Cloud metadata.
    refused(NS_A, "plain", "169.254.169.254:80", "the metadata address");
    refused(NS_A, "crewlike", "169.254.169.254:80", "the metadata address");

    // The crew's Integration: its pods reach it, nothing else in A does.
    reached(NS_A, "crewlike", &format!("{node}:{gateway}"), "the crew's Integration");
    refused(NS_A, "plain", &format!("{node}:{gateway}"), "another workload's Integration");

    // From the platform and the ingress controller only the ports tenant pods serve on: A's
    // business service, not another port one of A's pods happens to listen on.
    kubectl_ok(&["exec", "-n", NS_A, "plain", "--", "/bin/httpd", "-p", "9099", "-h", "/tmp"], None);
    let plain_ip =
        Api::<Pod>::namespaced(client.clone(), NS_A).get("plain").await.unwrap().status.unwrap().pod_ip.unwrap();
    let a_crm = Api::<Pod>::namespaced(client.clone(), NS_A)
        .list(&ListParams::default().labels("app.kubernetes.io/name=crm"))
        .await
        .unwrap();
    let crm_ip = a_crm.items[0].status.as_ref().unwrap().pod_ip.clone().unwrap();
    reached(NS_A, "crewlike", &format!("{plain_ip}:9099"), "a listener in its own namespace");
    for ns in ["bizosaas-system", "ingress-nginx"] {
        kubectl(&["create", "namespace", ns], None);
        let _ = Api::<Pod>::namespaced(client.clone(), ns).delete("e2e-wall-probe", &DeleteParams::default()).await;
        wait_for("the old probe pod to go", Duration::from_secs(60), || async {
            Api::<Pod>::namespaced(client.clone(), ns).get_opt("e2e-wall-probe").await.ok()?.is_none().then_some(())
        })
        .await;
        toolbox_pod(&client, ns, "e2e-wall-probe", serde_json::json!({})).await;
        reached(ns, "e2e-wall-probe", &format!("{crm_ip}:8080"), "A's business service");
        refused(ns, "e2e-wall-probe", &format!("{plain_ip}:9099"), "a port no tenant service serves on");
        Api::<Pod>::namespaced(client.clone(), ns).delete("e2e-wall-probe", &DeleteParams::default()).await.unwrap();
    }

    // The namespace Prometheus scrapes from (the harness sets metrics.scrapeNamespace) reaches
    // the crew runtime's port and nothing else of A; any other namespace not even that.
    let crew_pods = Api::<Pod>::namespaced(client.clone(), NS_A)
        .list(&ListParams::default().labels("bizosaas.io/crew=iso,app.kubernetes.io/managed-by=bizosaas-operator"))
        .await
        .unwrap();
    let crew_ip = crew_pods.items.iter().find_map(|p| p.status.as_ref()?.pod_ip.clone()).expect("the crew's pod");
    for (ns, scrapes) in [("bizosaas-monitoring", true), ("e2e-wall-elsewhere", false)] {
        kubectl(&["create", "namespace", ns], None);
        let _ = Api::<Pod>::namespaced(client.clone(), ns).delete("e2e-wall-scraper", &DeleteParams::default()).await;
        wait_for("the old scraper pod to go", Duration::from_secs(60), || async {
            Api::<Pod>::namespaced(client.clone(), ns).get_opt("e2e-wall-scraper").await.ok()?.is_none().then_some(())
        })
        .await;
        toolbox_pod(&client, ns, "e2e-wall-scraper", serde_json::json!({})).await;
        if scrapes {
            let metrics = netcheck(ns, "e2e-wall-scraper", &["http", &format!("http://{crew_ip}:8080/metrics")])
                .unwrap_or_else(|e| panic!("the scrape namespace could not read the runtime's metrics: {e}"));
            assert!(metrics.contains("bizosaas_agent_build_info"), "{metrics}");
        } else {
            refused(ns, "e2e-wall-scraper", &format!("{crew_ip}:8080"), "a crew runtime");
        }
        refused(ns, "e2e-wall-scraper", &format!("{crm_ip}:8080"), "A's business service");
        refused(ns, "e2e-wall-scraper", &format!("{plain_ip}:9099"), "another port of A");
        Api::<Pod>::namespaced(client.clone(), ns).delete("e2e-wall-scraper", &DeleteParams::default()).await.unwrap();
    }

    let tenants: Api<Tenant> = Api::all(client);
    for name in [A, B] {
        tenants.delete(name, &DeleteParams::default()).await.unwrap();
    }
}
