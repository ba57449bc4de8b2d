//! Business services run for real: a Tenant's `crm` comes from the service catalog (the
//! harness configures a storefront page built from the branding the operator passes in env),
//! its pod runs on the real node, and its Service serves the branded page, to the host and to
//! the tenant's own pods; suspending the tenant takes the pods away and resuming brings the
//! page back.

mod support;

use bizosaas_crds::Tenant;
use bizosaas_crds::common::is_ready;
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use std::time::Duration;
use support::*;

const TENANT: &str = "e2e-storefront";
const NS: &str = "tenant-e2e-storefront";
const TIMEOUT: Duration = Duration::from_secs(120);

async fn crm_pods(pods: &Api<Pod>) -> Vec<Pod> {
    let list = pods.list(&ListParams::default().labels("app.kubernetes.io/name=crm")).await.unwrap();
    list.items.into_iter().filter(|p| p.metadata.deletion_timestamp.is_none()).collect()
}

async fn page(cluster_ip: &str) -> Option<String> {
    let response = http().get(format!("http://{cluster_ip}/")).timeout(Duration::from_secs(3)).send().await.ok()?;
    (response.status() == 200).then_some(())?;
    response.text().await.ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_branded_service_page_is_served_and_follows_suspension() {
    operator().wait_ready().await;
    let client = client().await;
    fresh_tenant(
        &client,
        TENANT,
        serde_json::json!({
            "displayName": "Storefront Ltd", "services": ["crm"],
            "branding": {"displayName": "Sunny Storefront", "primaryColor": "#ff8800", "logoUrl": "https://sunny.example/logo.svg"},
            "database": {"isolation": "Shared", "deletionPolicy": "Delete"},
        }),
    )
    .await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    let running = crm_pods(&pods).await;
    assert_eq!(running.len(), 1);
    assert_eq!(running[0].spec.as_ref().unwrap().node_name.as_deref(), Some("bizosaas-node"));

    let service = Api::<Service>::namespaced(client.clone(), NS).get("crm").await.unwrap();
    let cluster_ip = service.spec.unwrap().cluster_ip.unwrap();
    let html = wait_for("the crm page", TIMEOUT, || page(&cluster_ip)).await;
    for expected in ["Sunny Storefront", "#ff8800", "https://sunny.example/logo.svg", "crm of e2e-storefront"] {
        assert!(html.contains(expected), "{expected:?} missing from:\n{html}");
    }
    // From the tenant's own workload, by name.
    toolbox_pod(&client, NS, "shopper", serde_json::json!({})).await;
    let inside = netcheck(NS, "shopper", &["http", &format!("http://crm.{NS}.svc.cluster.local/")]).unwrap();
    assert!(inside.starts_with("200") && inside.contains("Sunny Storefront"), "{inside}");

    // Suspended: no crm pods; resumed: the page is back.
    let tenants: Api<Tenant> = Api::all(client.clone());
    let suspend = |on: bool| serde_json::json!({"spec": {"suspended": on}});
    tenants.patch(TENANT, &PatchParams::default(), &Patch::Merge(suspend(true))).await.unwrap();
    wait_for("crm to scale to zero", TIMEOUT, || async { crm_pods(&pods).await.is_empty().then_some(()) }).await;
    // Terminating pods may answer for their grace period; then nothing does.
    wait_for("the suspended tenant's page to go", TIMEOUT, || async {
        page(&cluster_ip).await.is_none().then_some(())
    })
    .await;
    tenants.patch(TENANT, &PatchParams::default(), &Patch::Merge(suspend(false))).await.unwrap();
    wait_for("the tenant Ready again", TIMEOUT, || async {
        is_ready(&tenants.get(TENANT).await.ok()?.status?.conditions).then_some(())
    })
    .await;
    let html = wait_for("the crm page again", TIMEOUT, || page(&cluster_ip)).await;
    assert!(html.contains("Sunny Storefront"));

    tenants.delete(TENANT, &DeleteParams::default()).await.unwrap();
}
