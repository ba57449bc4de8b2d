//! Tenants with `secrets.backend: Vault` against a real OpenBao whose Kubernetes auth is
//! configured against the local control plane: credentials land in KV v2, a policy and a
//! role bind them to the tenant's service account, a real service-account token logs in and
//! reads its own path but not another tenant's, and deletion removes what the operator
//! owns and nothing of the owners'. The operator runs with a token holding only the shipped
//! policy, which is thereby shown sufficient; a test shows it holds nothing more.

mod support;

use bizosaas_crds::common::{find_condition, is_ready};
use bizosaas_crds::{AgentCrew, Integration, Tenant};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Secret;
use kube::Client;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use std::sync::Arc;
use std::sync::atomic::AtomicU16;
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

/// Logs in to OpenBao with a fresh token of the tenant's workload service account, minted
/// for the audience the tenant roles require.
async fn login(role: &str, namespace: &str) -> (u16, Option<String>) {
    login_with(role, namespace, &["--audience", "bizosaas-vault"]).await
}

async fn login_with(role: &str, namespace: &str, extra: &[&str]) -> (u16, Option<String>) {
    let mut args = vec!["create", "token", "tenant-workload", "-n", namespace];
    args.extend_from_slice(extra);
    let jwt = kubectl_ok(&args, None);
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
    assert_eq!(role["data"]["audience"], "bizosaas-vault", "{role}");
    assert_eq!((role["data"]["token_ttl"].as_u64(), role["data"]["token_max_ttl"].as_u64()), (Some(3600), Some(14400)));

    // A token of A's service account for another audience (here the API server's) is refused.
    // (Kubernetes auth answers a claim mismatch with 400 or 403 depending on the version.)
    for extra in [&[][..], &["--audience", "vault"][..]] {
        let (status, token) = login_with("tenant-e2e-vault-a", "tenant-e2e-vault-a", extra).await;
        assert!(matches!(status, 400 | 403) && token.is_none(), "{extra:?}: {status}, must not log in");
    }

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

    // The owners keep their own Integration secrets under the tenant's prefix, also nested;
    // below the operator's `database` everything is the operator's.
    let owners = ["secret/data/tenants/e2e-vault-a/crm", "secret/data/tenants/e2e-vault-a/shop/payments/stripe"];
    let operators = ["secret/data/tenants/e2e-vault-a/database/rotated/previous"];
    for path in owners.iter().chain(&operators) {
        let (status, body) = vault("POST", path, &root, Some(serde_json::json!({"data": {"key": "v"}}))).await;
        assert_eq!(status, 200, "{path}: {body}");
    }

    // Deleting A removes what the operator owns there, its policy and role; the owners'
    // secrets stay; B keeps its own.
    Api::<Tenant>::all(client.clone()).delete(a, &DeleteParams::default()).await.unwrap();
    let tenants: Api<Tenant> = Api::all(client.clone());
    wait_for("tenant A to go", TIMEOUT, || async { tenants.get_opt(a).await.ok()?.is_none().then_some(()) }).await;
    assert_eq!(vault("GET", "secret/metadata/tenants/e2e-vault-a/database", &root, None).await.0, 404);
    for path in operators {
        assert_eq!(vault("GET", path, &root, None).await.0, 404, "{path} is the operator's and must go");
    }
    for path in owners {
        let (status, body) = vault("GET", path, &root, None).await;
        assert_eq!((status, &body["data"]["data"]["key"]), (200, &serde_json::json!("v")), "{path} is the owners'");
        vault("DELETE", &path.replace("/data/", "/metadata/"), &root, None).await;
    }
    assert_eq!(vault("GET", "sys/policies/acl/tenant-e2e-vault-a", &root, None).await.0, 404);
    assert_eq!(vault("GET", "auth/kubernetes/role/tenant-e2e-vault-a", &root, None).await.0, 404);
    assert_eq!(vault("GET", "secret/data/tenants/e2e-vault-b/database", &root, None).await.0, 200);

    tenants.delete(b, &DeleteParams::default()).await.unwrap();
    wait_for("tenant B to go", TIMEOUT, || async { tenants.get_opt(b).await.ok()?.is_none().then_some(()) }).await;
    assert_eq!(vault("GET", "secret/metadata/tenants/e2e-vault-b/database", &root, None).await.0, 404);
}

/// The operator's token (read from the Secret the chart hands the operator) holds only the
/// shipped policy: it cannot read or write outside the tenants' prefix, touch other policies
/// or roles, or reach sys/ paths. The other tests here run the operator with it.
#[tokio::test]
async fn the_operators_vault_token_holds_only_its_policy() {
    let _op = operator();
    _op.wait_ready().await;
    let client = client().await;
    let secret =
        Api::<Secret>::namespaced(client.clone(), OPERATOR_NAMESPACE).get("bizosaas-vault-token").await.unwrap();
    let token = String::from_utf8(secret.data.unwrap()["token"].0.clone()).unwrap();
    assert_eq!(token.trim(), vault_operator_token(), "the operator runs with the harness's operator token");
    let token = token.trim();
    let root = vault_token();
    assert_ne!(token, root);

    let (status, me) = vault("GET", "auth/token/lookup-self", token, None).await;
    assert_eq!(status, 200, "{me}");
    assert_eq!(me["data"]["policies"], serde_json::json!(["bizosaas-operator"]), "no default or root policy");
    let (status, policy) = vault("GET", "sys/policies/acl/bizosaas-operator", &root, None).await;
    assert_eq!(status, 200);
    let shipped = std::fs::read_to_string(repo().join("manifests/vault/operator-policy.hcl")).unwrap();
    assert_eq!(policy["data"]["policy"].as_str().unwrap().trim(), shipped.trim(), "the shipped policy");

    let (status, _) =
        vault("POST", "secret/data/platform/outside", &root, Some(serde_json::json!({"data": {"k": "v"}}))).await;
    assert_eq!(status, 200);
    let body = || Some(serde_json::json!({"data": {"k": "stolen"}}));
    let policy = || Some(serde_json::json!({"policy": "path \"*\" { capabilities = [\"sudo\", \"read\"] }"}));
    let role = || {
        Some(
            serde_json::json!({"bound_service_account_names": ["default"], "bound_service_account_namespaces": ["kube-system"], "token_policies": ["root"]}),
        )
    };
    let attempts: Vec<(&str, &str, Option<serde_json::Value>)> = vec![
        ("GET", "secret/data/platform/outside", None),
        ("POST", "secret/data/platform/outside", body()),
        ("LIST", "secret/metadata/platform", None),
        ("LIST", "secret/metadata", None),
        ("DELETE", "secret/metadata/platform/outside", None),
        ("GET", "sys/policies/acl/bizosaas-operator", None),
        ("PUT", "sys/policies/acl/bizosaas-operator", policy()),
        ("PUT", "sys/policies/acl/admin", policy()),
        ("PUT", "sys/policy/bizosaas-operator", policy()),
        ("PUT", "sys/policy/admin", policy()),
        ("LIST", "sys/policies/acl", None),
        ("GET", "sys/mounts", None),
        ("POST", "sys/mounts/stolen", Some(serde_json::json!({"type": "kv"}))),
        ("GET", "sys/auth", None),
        ("POST", "auth/token/create", Some(serde_json::json!({"policies": ["bizosaas-operator"]}))),
        ("GET", "auth/kubernetes/config", None),
        ("POST", "auth/kubernetes/role/bizosaas-operator", role()),
        ("POST", "auth/kubernetes/role/admin", role()),
        ("LIST", "auth/kubernetes/role", None),
        ("GET", "cubbyhole/x", None),
    ];
    for (method, path, body) in attempts {
        let (status, answer) = vault(method, path, token, body).await;
        assert_eq!(status, 403, "the operator's token must not {method} {path}: {answer}");
    }
    vault("DELETE", "secret/metadata/platform/outside", &root, None).await;
}

/// A crew with memory on a Vault-backed tenant does not sit at "0/1 runtime pods are ready"
/// waiting for a database Secret that never comes: it says why, with nothing created, and
/// without memory the same crew runs as a real pod.
#[tokio::test]
async fn a_crew_with_memory_on_a_vault_backed_tenant_says_why_not() {
    let _op = operator();
    _op.wait_ready().await;
    let client = client().await;
    let (tenant, ns) = ("e2e-vault-crew", "tenant-e2e-vault-crew");
    create_vault_tenant(&client, tenant).await;
    wait_ready(&client, tenant).await;

    let port = http_server(Arc::new(AtomicU16::new(200)), Arc::default()).await;
    kubectl_ok(&["create", "secret", "generic", "llm-key", "-n", ns, "--from-literal=apiKey=k"], None);
    let integration: Integration = serde_json::from_value(serde_json::json!({
        "apiVersion": "bizosaas.io/v1alpha1", "kind": "Integration", "metadata": {"name": "llm", "namespace": ns},
        "spec": {"type": "OpenAI", "endpoint": format!("http://{}:{port}/v1", node_ip()),
                 "credentials": {"secretRef": {"name": "llm-key", "key": "apiKey"}},
                 "healthCheck": {"interval": "5s", "timeout": "1s"}},
    }))
    .unwrap();
    Api::<Integration>::namespaced(client.clone(), ns).create(&PostParams::default(), &integration).await.unwrap();
    let crew: AgentCrew = serde_json::from_value(serde_json::json!({
        "apiVersion": "bizosaas.io/v1alpha1", "kind": "AgentCrew", "metadata": {"name": "team", "namespace": ns},
        "spec": {"model": {"integration": "llm", "name": "gemma3-270m"},
                 "agents": [{"name": "seo", "template": "seo-optimization"}], "memory": {"enabled": true}},
    }))
    .unwrap();
    let crews: Api<AgentCrew> = Api::namespaced(client.clone(), ns);
    crews.create(&PostParams::default(), &crew).await.unwrap();
    let condition = |want: &'static str| {
        let crews = crews.clone();
        async move {
            let explain = || {
                let crew = String::from_utf8_lossy(
                    &kubectl(&["get", "agentcrew", "team", "-n", ns, "-o", "yaml"], None).stdout,
                )
                .into_owned();
                let logs = lines_mentioning(&_op.logs(), &format!("{ns}/team"), 40);
                format!("the crew:\n{crew}\nthe operator on it:\n{logs}")
            };
            wait_for_or_explain(
                &format!("crew Ready={want}"),
                TIMEOUT,
                || async {
                    let c = crews.get("team").await.ok()?;
                    let ready = find_condition(&c.status?.conditions, "Ready")?.clone();
                    (ready.status == want).then_some(ready)
                },
                explain,
            )
            .await
        }
    };
    let refused = condition("False").await;
    assert_eq!(refused.reason, "MemoryNeedsDatabaseSecret", "{}", refused.message);
    assert!(refused.message.contains("spec.memory.enabled"), "says the way out: {}", refused.message);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    assert!(deployments.get_opt("crew-team").await.unwrap().is_none(), "nothing is created for a crew that cannot run");

    // Without memory the crew runs (its runs kept in the runtime's memory) as a real pod.
    let patch = serde_json::json!({"spec": {"memory": {"enabled": false}}});
    crews.patch("team", &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
    let ready = condition("True").await;
    assert_eq!(ready.reason, "Ready", "{}", ready.message);
    let d = deployments.get("crew-team").await.unwrap();
    assert_eq!(d.status.and_then(|s| s.available_replicas), Some(1));

    let tenants: Api<Tenant> = Api::all(client.clone());
    tenants.delete(tenant, &DeleteParams::default()).await.unwrap();
    wait_for("the tenant to go", TIMEOUT, || async { tenants.get_opt(tenant).await.ok()?.is_none().then_some(()) })
        .await;
}
