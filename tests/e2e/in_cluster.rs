//! The operator as the chart runs it: two replicas with leader election fail over within the
//! Lease's duration without ever reconciling at the same time, `helm upgrade` with a changed
//! value rolls the pods, `helm test` passes, and `helm uninstall` keeps the CRDs handed to the
//! release and leaves Tenants and their data where their deletion policy says until the
//! operator is back.

mod support;

use bizosaas_crds::Tenant;
use bizosaas_crds::common::is_ready;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use std::collections::BTreeSet;
use std::time::{Duration, Instant};
use support::*;

const TENANT: &str = "e2e-ha";
const TIMEOUT: Duration = Duration::from_secs(120);

async fn operator_pods(client: &Client) -> Vec<Pod> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), OPERATOR_NAMESPACE);
    let list = pods
        .list(&ListParams::default().labels("app.kubernetes.io/instance=bizosaas,app.kubernetes.io/component=operator"))
        .await
        .unwrap();
    list.items.into_iter().filter(|p| p.metadata.deletion_timestamp.is_none()).collect()
}

fn ready(pod: &Pod) -> bool {
    let conditions = pod.status.as_ref().and_then(|s| s.conditions.clone()).unwrap_or_default();
    conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True")
}

fn names(pods: &[Pod]) -> BTreeSet<String> {
    pods.iter().filter_map(|p| p.metadata.name.clone()).collect()
}

async fn lease(client: &Client) -> LeaseSpec {
    Api::<Lease>::namespaced(client.clone(), OPERATOR_NAMESPACE).get(OPERATOR_DEPLOYMENT).await.unwrap().spec.unwrap()
}

/// Reconciles a pod has run, from its own metrics.
async fn reconciles(pod: &Pod) -> f64 {
    let ip = pod.status.as_ref().and_then(|s| s.pod_ip.clone()).expect("a pod IP");
    let (_, text) = get_pod(&ip, "/metrics").await.expect("the pod serves metrics");
    sum_metric(&text, "bizosaas_reconciles_total", &[])
}

/// Two Ready operator pods, one of them holding the Lease: (leader, standby).
async fn leader_and_standby(client: &Client) -> (Pod, Pod) {
    wait_for("two Ready operator pods and a leader", TIMEOUT, || async {
        let pods = operator_pods(client).await;
        let (holder, _) = operator().leader().await?;
        let [a, b] = pods.as_slice() else { return None };
        if !(ready(a) && ready(b)) {
            return None;
        }
        match (a.metadata.name.as_deref() == Some(&holder), b.metadata.name.as_deref() == Some(&holder)) {
            (true, false) => Some((a.clone(), b.clone())),
            (false, true) => Some((b.clone(), a.clone())),
            _ => None,
        }
    })
    .await
}

async fn tenant_ready(api: &Api<Tenant>) {
    wait_for("Tenant e2e-ha Ready", TIMEOUT, || async {
        is_ready(&api.get(TENANT).await.ok()?.status?.conditions).then_some(())
    })
    .await;
}

/// Drops what a Retain tenant of an earlier run left behind.
async fn drop_retained() {
    let (db, conn) = tokio_postgres::connect(&database_url(), tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    for statement in [
        "DROP DATABASE IF EXISTS tenant_e2e_ha WITH (FORCE)",
        "DROP ROLE IF EXISTS tenant_e2e_ha_app",
        "DROP ROLE IF EXISTS tenant_e2e_ha_owner",
    ] {
        db.batch_execute(statement).await.unwrap();
    }
}

async fn database_exists(name: &str) -> bool {
    let (db, conn) = tokio_postgres::connect(&database_url(), tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    db.query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&name]).await.unwrap().is_some()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_fail_over_upgrades_roll_and_uninstall_keeps_tenants() {
    let op = operator();
    op.wait_ready().await;
    let client = client().await;
    let tenants: Api<Tenant> = Api::all(client.clone());
    if tenants.get_opt(TENANT).await.unwrap().is_some() {
        tenants.delete(TENANT, &DeleteParams::default()).await.unwrap();
        wait_for("the old e2e-ha to go", TIMEOUT, || async {
            tenants.get_opt(TENANT).await.ok()?.is_none().then_some(())
        })
        .await;
    }
    drop_retained().await;
    let tenant: Tenant = serde_json::from_value(serde_json::json!({
        "apiVersion": "bizosaas.io/v1alpha1", "kind": "Tenant", "metadata": {"name": TENANT},
        "spec": {"displayName": "HA", "database": {"isolation": "Dedicated", "deletionPolicy": "Retain"}},
    }))
    .unwrap();
    tenants.create(&PostParams::default(), &tenant).await.unwrap();
    tenant_ready(&tenants).await;

    // One leader reconciles; the standby has reconciled nothing.
    let (leader, standby) = leader_and_standby(&client).await;
    assert!(reconciles(&leader).await > 0.0, "the leader reconciles");
    assert_eq!(reconciles(&standby).await, 0.0, "the standby reconciled while another replica led");
    let before = lease(&client).await;
    let duration = before.lease_duration_seconds.expect("the Lease has a duration") as u64;

    // The leader's pod goes; another replica (the standby, or the pod that replaces the old
    // leader, whichever renews first) takes over within the Lease's duration, and only after
    // the old holder's last renewal expired: never two leaders at once.
    let leader_name = leader.metadata.name.clone().unwrap();
    let started = Instant::now();
    Api::<Pod>::namespaced(client.clone(), OPERATOR_NAMESPACE)
        .delete(&leader_name, &DeleteParams::default())
        .await
        .unwrap();
    // The new holder takes the Lease, then counts the hand-over in a second write: waited for
    // too, so the count is read once written.
    let after = wait_for("another replica to take the Lease", Duration::from_secs(duration * 3), || async {
        let spec = lease(&client).await;
        let holder = spec.holder_identity.clone()?;
        (holder != leader_name && spec.lease_transitions != before.lease_transitions).then_some(spec)
    })
    .await;
    let took = started.elapsed();
    eprintln!("takeover after {took:?} (Lease duration {duration}s)");
    assert!(took <= Duration::from_secs(duration + 5), "takeover took {took:?}, the Lease lasts {duration}s");
    assert_eq!(after.lease_transitions, before.lease_transitions.map(|t| t + 1), "one hand-over");
    let last_renewal = before.renew_time.map(|t| t.0).unwrap();
    let acquired = after.acquire_time.map(|t| t.0).unwrap();
    assert!(acquired > last_renewal, "the new holder acquired the Lease before the old one's last renewal");
    let new_leader = after.holder_identity.clone().unwrap();
    // The new leader works: a spec change is reconciled.
    let patch = serde_json::json!({"spec": {"quota": {"pods": 12}}});
    tenants.patch(TENANT, &PatchParams::default(), &Patch::Merge(patch)).await.unwrap();
    wait_for("the new leader to apply the quota", TIMEOUT, || async {
        let quota = kubectl(
            &["get", "resourcequota", "-n", "tenant-e2e-ha", "tenant-quota", "-o", "jsonpath={.spec.hard.pods}"],
            None,
        );
        (String::from_utf8_lossy(&quota.stdout) == "12").then_some(())
    })
    .await;
    // Two replicas again; the one that does not lead reconciles nothing.
    let (leader, standby) = leader_and_standby(&client).await;
    assert_eq!(leader.metadata.name.as_deref(), Some(new_leader.as_str()));
    assert_eq!(reconciles(&standby).await, 0.0, "the standby reconciled");
    assert_eq!(lease(&client).await.lease_transitions, after.lease_transitions, "the Lease changed hands again");

    // `helm upgrade` with a changed value rolls every operator pod.
    let old = names(&operator_pods(&client).await);
    InCluster::install(&["--set", "logFormat=text"]);
    let rolled = wait_for("the upgrade to roll the pods", TIMEOUT, || async {
        let pods = operator_pods(&client).await;
        (pods.len() == 2 && pods.iter().all(ready) && names(&pods).is_disjoint(&old)).then_some(pods)
    })
    .await;
    let env = &rolled[0].spec.as_ref().unwrap().containers[0].env.clone().unwrap();
    let format = env.iter().find(|e| e.name == "BIZOSAAS_LOG_FORMAT").and_then(|e| e.value.clone());
    assert_eq!(format.as_deref(), Some("text"));
    op.wait_ready().await;

    // `helm test`: its Pod reaches the operator through the Service and passes.
    let out =
        std::process::Command::new("bash").arg(repo().join("tests/harness/operator.sh")).arg("test").output().unwrap();
    let printed = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "helm test failed: {printed}");
    assert!(printed.contains("ready, metrics served") && printed.contains("Succeeded"), "{printed}");

    // The CRDs handed to the release as docs/installation.md says (the harness applied them
    // with kubectl): the release then renders them, with the keep policy.
    for crd in bizosaas_crds::generate::crds() {
        let name = crd.metadata.name.unwrap();
        let release = ["meta.helm.sh/release-name=bizosaas", "meta.helm.sh/release-namespace=bizosaas-system"];
        kubectl_ok(&[&["annotate", "crd", name.as_str(), "--overwrite"][..], &release[..]].concat(), None);
        kubectl_ok(&["label", "crd", &name, "--overwrite", "app.kubernetes.io/managed-by=Helm"], None);
    }
    InCluster::install(&["--set", "crds.enabled=true"]);
    op.wait_ready().await;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let owned = crds.get("tenants.bizosaas.io").await.unwrap();
    assert_eq!(owned.annotations().get("helm.sh/resource-policy").map(String::as_str), Some("keep"));
    assert!(owned.labels().contains_key("helm.sh/chart"), "the release did not render the CRD");

    // `helm uninstall`: the operator goes, the CRDs (kept) and the Tenant stay (with its
    // finalizer) and so do its namespace and database, until an operator handles its deletion.
    let out = std::process::Command::new("bash")
        .arg(repo().join("tests/harness/operator.sh"))
        .arg("uninstall")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    wait_for("the operator pods to go", TIMEOUT, || async { operator_pods(&client).await.is_empty().then_some(()) })
        .await;
    for crd in bizosaas_crds::generate::crds() {
        let name = crd.metadata.name.unwrap();
        assert!(crds.get_opt(&name).await.unwrap().is_some(), "helm uninstall deleted {name}");
    }
    let kept = tenants.get(TENANT).await.unwrap();
    assert!(kept.metadata.finalizers.unwrap_or_default().iter().any(|f| f.starts_with("bizosaas.io/")));
    assert!(kubectl(&["get", "namespace", "tenant-e2e-ha"], None).status.success());
    assert!(database_exists("tenant_e2e_ha").await, "the tenant's database went with the operator");

    // Installed again, the operator picks the Tenant up where it was.
    InCluster::install(&[]);
    op.wait_ready().await;
    tenant_ready(&tenants).await;
    tenants.delete(TENANT, &DeleteParams::default()).await.unwrap();
    wait_for("e2e-ha to be deleted", TIMEOUT, || async { tenants.get_opt(TENANT).await.ok()?.is_none().then_some(()) })
        .await;
    // Retain: the data outlives the Tenant.
    assert!(database_exists("tenant_e2e_ha").await, "Retain dropped the database");
    drop_retained().await;
}
