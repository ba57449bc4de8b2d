//! The operator watches a kind in a tenant namespace only while something there needs it:
//! Secrets in every tenant namespace, Deployments where a Tenant runs business services or
//! crews are, Jobs where workflow runs are. In a binary of its own so that no other test's
//! objects come and go while the counts are compared.

mod support;

use bizosaas_crds::{AgentCrew, LABEL_MANAGED_BY, LABEL_TENANT, MANAGED_BY, Tenant, WorkflowRun};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::core::{DeserializeGuard, PartialObjectMeta};
use kube::{Client, ResourceExt};
use std::collections::BTreeSet;
use std::time::Duration;
use support::*;

const TENANT: &str = "e2e-watch-plain";

/// The watches the operator should hold per kind, from what is in the cluster.
async fn expected(client: &Client) -> [(&'static str, usize); 3] {
    let namespaces: Api<PartialObjectMeta<Namespace>> = Api::all(client.clone());
    let selector = format!("{LABEL_MANAGED_BY}={MANAGED_BY},{LABEL_TENANT}");
    let tenant_namespaces: BTreeSet<String> = namespaces
        .list_metadata(&ListParams::default().labels(&selector))
        .await
        .unwrap()
        .items
        .iter()
        .map(|ns| ns.name_any())
        .collect();
    // Read as the operator does: an object that does not deserialise still counts by its metadata.
    let tenants = Api::<DeserializeGuard<Tenant>>::all(client.clone()).list(&ListParams::default()).await.unwrap();
    let all = ListParams::default();
    let crews = Api::<PartialObjectMeta<AgentCrew>>::all(client.clone()).list_metadata(&all).await.unwrap();
    let runs = Api::<PartialObjectMeta<WorkflowRun>>::all(client.clone()).list_metadata(&all).await.unwrap();
    let in_tenant_namespaces = |names: BTreeSet<String>| names.intersection(&tenant_namespaces).count();
    let deployments = in_tenant_namespaces(
        tenants
            .iter()
            .filter_map(|guard| guard.0.as_ref().ok())
            .filter(|t| !t.spec.services.is_empty())
            .map(|t| format!("tenant-{}", t.name_any()))
            .chain(crews.iter().filter_map(|c| c.namespace()))
            .collect(),
    );
    let jobs = in_tenant_namespaces(runs.iter().filter_map(|r| r.namespace()).collect());
    [("Secret", tenant_namespaces.len()), ("Deployment", deployments), ("Job", jobs)]
}

/// The watches the operator holds per kind, from its metrics.
async fn held(op: &InCluster) -> [(&'static str, usize); 3] {
    let count = |kind: &'static str| async move {
        op.metric("bizosaas_tenant_namespace_watches", &[&format!("kind=\"{kind}\"")]).await as usize
    };
    [("Secret", count("Secret").await), ("Deployment", count("Deployment").await), ("Job", count("Job").await)]
}

async fn watches_match(op: &InCluster, client: &Client, what: &str) -> [(&'static str, usize); 3] {
    let last = std::sync::Mutex::new(None);
    wait_for_or_explain(
        what,
        Duration::from_secs(60),
        || async {
            let (want, have) = (expected(client).await, held(op).await);
            *last.lock().unwrap() = Some((want, have));
            (want == have).then_some(have)
        },
        || format!("expected, and held by the operator: {:?}", last.lock().unwrap()),
    )
    .await
}

#[tokio::test]
async fn a_kind_is_watched_only_where_something_needs_it() {
    install_crds();
    let op = operator();
    op.wait_ready().await;
    let client = client().await;
    drop_tenant_data(TENANT).await;
    let spec = serde_json::json!({"displayName": "Plain", "owners": [{"kind": "User", "name": "pat@plain.example"}],
                                  "database": {"deletionPolicy": "Delete"}});
    fresh_tenant(&client, TENANT, spec).await;
    let api: Api<Tenant> = Api::all(client.clone());
    // A tenant with no services, crews or runs: its Secrets are watched, nothing else.
    let plain = watches_match(op, &client, "the watches to match a plain tenant").await;

    // Business services need their Deployments watched there; dropping them ends the watch.
    let services = |list: serde_json::Value| serde_json::json!({"spec": {"services": list}});
    api.patch(TENANT, &PatchParams::default(), &Patch::Merge(services(serde_json::json!(["crm"])))).await.unwrap();
    let serving = watches_match(op, &client, "a Deployment watch for the tenant's services").await;
    assert_eq!(serving[1].1, plain[1].1 + 1, "adding services adds one Deployment watch: {plain:?} -> {serving:?}");
    assert_eq!(serving[0].1, plain[0].1, "{plain:?} -> {serving:?}");
    api.patch(TENANT, &PatchParams::default(), &Patch::Merge(services(serde_json::json!([])))).await.unwrap();
    let dropped = watches_match(op, &client, "the Deployment watch to end with the services").await;
    assert_eq!(dropped[1].1, plain[1].1, "{serving:?} -> {dropped:?}");

    api.delete(TENANT, &DeleteParams::default()).await.unwrap();
    let namespaces: Api<Namespace> = Api::all(client.clone());
    wait_for("e2e-watch-plain and its namespace to go", Duration::from_secs(120), || async {
        let tenant_gone = api.get_opt(TENANT).await.ok()?.is_none();
        (tenant_gone && namespaces.get_opt("tenant-e2e-watch-plain").await.ok()?.is_none()).then_some(())
    })
    .await;
    let gone = watches_match(op, &client, "the tenant's watches to end with its namespace").await;
    assert!(gone[0].1 < plain[0].1, "its Secret watch ended: {plain:?} -> {gone:?}");
}
