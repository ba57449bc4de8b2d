//! Tenants with `secrets.backend: Vault` against a real OpenBao whose Kubernetes auth is
//! configured against the local control plane: credentials land in KV v2, a policy and a
//! role bind them to the tenant's service account, a real service-account token logs in and
//! reads its own path but not another tenant's, and deletion removes all of it.

mod support;

use bizosaas_crds::Tenant;
use bizosaas_crds::common::{find_condition, is_ready};
use k8s_openapi::api::core::v1::Secret;
use kube::Client;
use kube::api::{Api, DeleteParams, PostParams};
use std::time::Duration;
use support::*;

const TIMEOUT: Duration = Duration::from_secs(120);

async fn create_vault_tenant(client: &Client, name: &str) {
    let api: Api<Tenant> = Api::all(client.clone());
    if api.get_opt(name).await.unwrap().is_some() {
        api.delete(name, &DeleteParams::default()).await.unwrap();
        wait_for("old tenant to go", TIMEOUT, || async { api.get_opt(name).await.ok()?.is_none().then_some(()) }).await;
    }
    let tenant: Tenant = serde_json::from_value(serde_json::json!({
        "apiVersion": "bizosaas.io/v1alpha1", "kind": "Tenant", "metadata": {"name": name},
        "spec": {"displayName": name, "secrets": {"backend": "Vault"}, "database": {"deletionPolicy": "Delete"}},
    }))
    .unwrap();
    api.create(&PostParams::default(), &tenant).await.unwrap();
}

async fn wait_ready(client: &Client, name: &str) -> Tenant {
    let api: Api<Tenant> = Api::all(client.clone());
    wait_for(&format!("Tenant {name} Ready"), TIMEOUT, || async {
        let t = api.get(name).await.ok()?;
        is_ready(&t.status.as_ref()?.conditions).then_some(t)
    })
    .await
}

async fn login(role: &str, namespace: &str) -> (u16, Option<String>) {
    let jwt = kubectl_ok(&["create", "token", "tenant-workload", "-n", namespace], None);
    let (status, body) =
        vault("POST", "auth/kubernetes/login", "", Some(serde_json::json!({"role": role, "jwt": jwt.trim()}))).await;
    (status, body["auth"]["client_token"].as_str().map(str::to_string))
}

#[tokio::test]
async fn vault_backed_tenants_can_read_only_their_own_path() {
    let _op = operator();
    _op.wait_ready().await;
    let client = client().await;
    let root = vault_token();
    let (a, b) = ("e2e-vault-a", "e2e-vault-b");
    create_vault_tenant(&client, a).await;
    create_vault_tenant(&client, b).await;
    let ta = wait_ready(&client, a).await;
    wait_ready(&client, b).await;

    let secrets_ready = find_condition(&ta.status.unwrap().conditions, "SecretsReady").unwrap().clone();
    assert!(secrets_ready.message.contains("secret/tenants/e2e-vault-a/database"), "{}", secrets_ready.message);
    let no_secret =
        Api::<Secret>::namespaced(client.clone(), "tenant-e2e-vault-a").get_opt("tenant-database").await.unwrap();
    assert!(no_secret.is_none(), "a Vault-backed tenant must not get a Kubernetes Secret");

    // The credentials in KV v2 are real: they log in to the tenant's database.
    let (status, body) = vault("GET", "secret/data/tenants/e2e-vault-a/database", &root, None).await;
    assert_eq!(status, 200, "{body}");
    let data = &body["data"]["data"];
    assert_eq!(data["username"], "tenant_e2e_vault_a_app");
    let url = data["url"].as_str().unwrap();
    let (pg, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await.expect("the Vault credentials log in");
    tokio::spawn(conn);
    pg.simple_query("SELECT 1").await.unwrap();

    // Policy and role.
    let (status, policy) = vault("GET", "sys/policies/acl/tenant-e2e-vault-a", &root, None).await;
    assert_eq!(status, 200);
    assert!(policy["data"]["policy"].as_str().unwrap().contains("secret/data/tenants/e2e-vault-a/*"));
    let (status, role) = vault("GET", "auth/kubernetes/role/tenant-e2e-vault-a", &root, None).await;
    assert_eq!(status, 200);
    assert_eq!(role["data"]["bound_service_account_names"], serde_json::json!(["tenant-workload"]));
    assert_eq!(role["data"]["bound_service_account_namespaces"], serde_json::json!(["tenant-e2e-vault-a"]));

    // A real token of A's service account logs in and reads A's path, not B's.
    let (status, token) = login("tenant-e2e-vault-a", "tenant-e2e-vault-a").await;
    assert_eq!(status, 200);
    let token = token.unwrap();
    let (own, _) = vault("GET", "secret/data/tenants/e2e-vault-a/database", &token, None).await;
    let (other, _) = vault("GET", "secret/data/tenants/e2e-vault-b/database", &token, None).await;
    assert_eq!((own, other), (200, 403));
    let (write, _) = vault(
        "POST",
        "secret/data/tenants/e2e-vault-a/database",
        &token,
        Some(serde_json::json!({"data": {"x": "y"}})),
    )
    .await;
    assert_eq!(write, 403, "the tenant's policy is read-only");
    // A's service account cannot use B's role.
    let (status, _) = login("tenant-e2e-vault-b", "tenant-e2e-vault-a").await;
    assert_eq!(status, 403);

    // Deleting A removes its path, policy and role; B keeps its own.
    Api::<Tenant>::all(client.clone()).delete(a, &DeleteParams::default()).await.unwrap();
    let tenants: Api<Tenant> = Api::all(client.clone());
    wait_for("tenant A to go", TIMEOUT, || async { tenants.get_opt(a).await.ok()?.is_none().then_some(()) }).await;
    assert_eq!(vault("GET", "secret/metadata/tenants/e2e-vault-a/database", &root, None).await.0, 404);
    assert_eq!(vault("GET", "sys/policies/acl/tenant-e2e-vault-a", &root, None).await.0, 404);
    assert_eq!(vault("GET", "auth/kubernetes/role/tenant-e2e-vault-a", &root, None).await.0, 404);
    assert_eq!(vault("GET", "secret/data/tenants/e2e-vault-b/database", &root, None).await.0, 200);

    tenants.delete(b, &DeleteParams::default()).await.unwrap();
    wait_for("tenant B to go", TIMEOUT, || async { tenants.get_opt(b).await.ok()?.is_none().then_some(()) }).await;
    assert_eq!(vault("GET", "secret/metadata/tenants/e2e-vault-b/database", &root, None).await.0, 404);
}
