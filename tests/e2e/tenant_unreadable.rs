//! A Tenant this operator cannot read (stored under a CRD version it does not know) is said
//! to be so, Stalled, and when deleted its finalizer still runs with what can be read. This
//! test widens the Tenant CRD for a while, so it is a test binary of its own.

mod support;

use bizosaas_crds::Tenant;
use futures::StreamExt;
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::*;

const NAME: &str = "e2e-unreadable";
const TIMEOUT: Duration = Duration::from_secs(120);

/// Puts the Tenant CRD back as the repository has it, whatever the test did.
struct RestoreCrd;

impl Drop for RestoreCrd {
    fn drop(&mut self) {
        let crd = repo().join("manifests/crds/tenants.bizosaas.io.yaml");
        kubectl(&["apply", "--server-side", "--force-conflicts", "-f", crd.to_str().unwrap()], None);
    }
}

fn condition(tenant: &DynamicObject, type_: &str) -> Option<(String, String, String)> {
    let c = tenant.data.pointer("/status/conditions")?.as_array()?.iter().find(|c| c["type"] == type_)?;
    let s = |k: &str| c[k].as_str().unwrap_or_default().to_string();
    Some((s("status"), s("reason"), s("message")))
}

#[tokio::test]
async fn an_unreadable_tenant_is_reported_and_its_deletion_still_runs() {
    let op = operator();
    op.wait_ready().await;
    let client = client().await;
    let typed: Api<Tenant> = Api::all(client.clone());
    let raw: Api<DynamicObject> = Api::all_with(client.clone(), &ApiResource::erase::<Tenant>(&()));
    if typed.get_opt(NAME).await.unwrap().is_some() {
        typed.delete(NAME, &DeleteParams::default()).await.unwrap();
        wait_for("the old tenant to go", TIMEOUT, || async { raw.get_opt(NAME).await.ok()?.is_none().then_some(()) })
            .await;
    }
    let tenant: Tenant = serde_json::from_value(serde_json::json!({
        "apiVersion": "bizosaas.io/v1alpha1", "kind": "Tenant", "metadata": {"name": NAME},
        "spec": {"displayName": "Unreadable", "database": {"isolation": "Dedicated", "deletionPolicy": "Delete"}},
    }))
    .unwrap();
    typed.create(&PostParams::default(), &tenant).await.unwrap();
    wait_for("the tenant to be Ready", TIMEOUT, || async {
        let t = raw.get(NAME).await.ok()?;
        (condition(&t, "Ready")?.0 == "True").then_some(())
    })
    .await;
    let admin = {
        let (c, conn) = tokio_postgres::connect(&database_url(), tokio_postgres::NoTls).await.unwrap();
        tokio::spawn(conn);
        c
    };
    let database_exists = || async {
        !admin.query("SELECT 1 FROM pg_database WHERE datname = 'tenant_e2e_unreadable'", &[]).await.unwrap().is_empty()
    };
    assert!(database_exists().await, "the dedicated database was provisioned");

    // A newer CRD knows a plan this operator does not: the Tenant no longer deserialises.
    let _restore = RestoreCrd;
    let widen = r#"[{"op": "add", "path": "/spec/versions/0/schema/openAPIV3Schema/properties/spec/properties/plan/enum/-", "value": "platinum"}]"#;
    kubectl_ok(&["patch", "crd", "tenants.bizosaas.io", "--type", "json", "-p", widen], None);
    wait_for("the API server to accept the new plan", TIMEOUT, || async {
        let patch = serde_json::json!({"spec": {"plan": "platinum"}});
        raw.patch(NAME, &PatchParams::default(), &Patch::Merge(&patch)).await.ok().map(|_| ())
    })
    .await;
    let (_, message) = wait_for("Stalled=True InvalidObject", TIMEOUT, || async {
        let t = raw.get(NAME).await.ok()?;
        let (status, reason, message) = condition(&t, "Stalled")?;
        (status == "True" && reason == "InvalidObject").then_some(((), message))
    })
    .await;
    assert!(message.contains("platinum"), "the condition says what cannot be read: {message}");
    let t = raw.get(NAME).await.unwrap();
    assert_eq!(condition(&t, "Ready").map(|c| (c.0, c.1)), Some(("False".into(), "InvalidObject".into())));

    // Deleting it still applies its deletion policy (Delete, readable) and reports Terminating.
    let phases = Arc::new(Mutex::new(Vec::<String>::new()));
    let seen = phases.clone();
    let config = watcher::Config::default().fields(&format!("metadata.name={NAME}"));
    let watch = tokio::spawn(watcher(raw.clone(), config).applied_objects().for_each(move |t| {
        if let Some(phase) =
            t.ok().and_then(|t| t.data.pointer("/status/phase").and_then(|p| p.as_str()).map(String::from))
        {
            seen.lock().unwrap().push(phase);
        }
        futures::future::ready(())
    }));
    tokio::time::sleep(Duration::from_secs(1)).await;
    raw.delete(NAME, &DeleteParams::default()).await.unwrap();
    wait_for("the unreadable tenant to be deleted", TIMEOUT, || async {
        raw.get_opt(NAME).await.ok()?.is_none().then_some(())
    })
    .await;
    watch.abort();
    assert!(phases.lock().unwrap().iter().any(|p| p == "Terminating"), "phases seen: {:?}", phases.lock().unwrap());
    assert!(!database_exists().await, "deletionPolicy Delete was not applied");
}
