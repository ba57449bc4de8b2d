//! A converged Tenant causes no API writes when it is reconciled again. In a binary of its
//! own so that no other test's tenants write while the counter is read.

mod support;

use bizosaas_crds::Tenant;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use std::time::Duration;
use support::*;

#[tokio::test]
async fn a_converged_tenant_causes_no_writes() {
    install_crds();
    let op = operator();
    op.wait_ready().await;
    let client = client().await;
    let api: Api<Tenant> = Api::all(client.clone());
    let name = "e2e-idle";
    drop_tenant_data(name).await;
    let spec = serde_json::json!({"displayName": "Idle", "services": ["crm"], "owners": [{"kind": "User", "name": "ida@idle.example"}],
                                  "database": {"deletionPolicy": "Delete"}});
    fresh_tenant(&client, name, spec).await;
    // Wait until the operator has stopped writing (other tenants in the cluster settle too),
    // then force reconciles by touching the Tenant.
    let tenant_writes = ["controller=\"tenant\""];
    let mut writes_before = op.metric("bizosaas_api_writes_total", &tenant_writes).await;
    let mut quiet_since = std::time::Instant::now();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while quiet_since.elapsed() < Duration::from_secs(5) {
        assert!(std::time::Instant::now() < deadline, "the tenant controller never stopped writing");
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = op.metric("bizosaas_api_writes_total", &tenant_writes).await;
        if now != writes_before {
            (writes_before, quiet_since) = (now, std::time::Instant::now());
        }
    }
    // Each touch is waited for on its own: touches close together may be coalesced into one
    // reconcile, and only the tenant controller's reconciles count.
    let tenant_reconciles = ["controller=\"tenant\",outcome=\"success\""];
    let reads = |kind: &'static str| async move {
        op.metric("bizosaas_child_reads_total", &["controller=\"tenant\"", &format!("kind=\"{kind}\"")]).await
    };
    // Kinds the operator watches cluster-wide: a converged reconcile knows them unchanged from
    // the watch and reads none. (Not the ResourceQuota: the quota controller rewrites its
    // status whenever usage moves, and a new resourceVersion is rightly read again.)
    let watched = ["Namespace", "LimitRange", "NetworkPolicy", "ServiceAccount", "RoleBinding", "Service"];
    let mut reads_before = Vec::new();
    for kind in watched {
        reads_before.push(reads(kind).await);
    }
    // The database Secret is read each time for the password it holds (once, and compared
    // with that copy), which shows the counter counts.
    let secret_reads_before = reads("Secret").await;
    for i in 0..3 {
        let before = op.metric("bizosaas_reconciles_total", &tenant_reconciles).await;
        let patch = serde_json::json!({"metadata": {"annotations": {"example.com/touch": i.to_string()}}});
        api.patch(name, &PatchParams::default(), &Patch::Merge(patch)).await.unwrap();
        wait_for("the touched Tenant to be reconciled", Duration::from_secs(30), || async {
            (op.metric("bizosaas_reconciles_total", &tenant_reconciles).await > before).then_some(())
        })
        .await;
    }
    let writes_after = op.metric("bizosaas_api_writes_total", &tenant_writes).await;
    assert!(writes_before > 0.0, "the counter counts nothing");
    assert_eq!(writes_after, writes_before, "a converged tenant was written to");
    assert!(reads("Secret").await >= secret_reads_before + 3.0, "the read counter counts nothing");
    for (kind, before) in watched.iter().zip(reads_before) {
        assert_eq!(reads(kind).await, before, "a converged tenant's {kind} was read, not known from the watch");
    }
    api.delete(name, &DeleteParams::default()).await.unwrap();
    wait_for("e2e-idle to go", Duration::from_secs(120), || async {
        api.get_opt(name).await.ok()?.is_none().then_some(())
    })
    .await;
}
