//! Tenants end to end: the operator in the local cluster against the control plane and a real
//! PostgreSQL. Each test uses its own tenant names, so they run in parallel against one
//! operator.

mod support;

use bizosaas_crds::Tenant;
use bizosaas_crds::common::{find_condition, is_ready};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{LimitRange, Namespace, ResourceQuota, Secret, ServiceAccount};
use k8s_openapi::api::networking::v1::{Ingress, NetworkPolicy};
use k8s_openapi::api::rbac::v1::RoleBinding;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use std::time::Duration;
use support::*;
use tokio_postgres::NoTls;

const READY_TIMEOUT: Duration = Duration::from_secs(120);

async fn setup() -> (Client, &'static InCluster) {
    let op = operator();
    op.wait_ready().await;
    (client().await, op)
}

fn tenant(name: &str, spec: serde_json::Value) -> Tenant {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "bizosaas.io/v1alpha1",
        "kind": "Tenant",
        "metadata": {"name": name},
        "spec": spec,
    }))
    .unwrap()
}

/// Deletes leftovers of an earlier run, then creates the tenant.
async fn create(client: &Client, t: &Tenant) {
    let api: Api<Tenant> = Api::all(client.clone());
    let name = t.name_any();
    if api.get_opt(&name).await.unwrap().is_some() {
        let _ = api.delete(&name, &DeleteParams::default()).await;
        wait_gone(client, &name).await;
    }
    // What an earlier run retained under this name would be refused, rightly, as another
    // Tenant's data.
    drop_tenant_data(&name).await;
    api.create(&PostParams::default(), t).await.unwrap();
}

async fn wait_ready(client: &Client, name: &str) -> Tenant {
    let api: Api<Tenant> = Api::all(client.clone());
    wait_for(&format!("Tenant {name} Ready"), READY_TIMEOUT, || async {
        let t = api.get(name).await.ok()?;
        let status = t.status.as_ref()?;
        (is_ready(&status.conditions) && status.observed_generation == t.metadata.generation).then_some(t)
    })
    .await
}

async fn wait_gone(client: &Client, name: &str) {
    let api: Api<Tenant> = Api::all(client.clone());
    wait_for(&format!("Tenant {name} to be deleted"), READY_TIMEOUT, || async {
        api.get_opt(name).await.ok()?.is_none().then_some(())
    })
    .await;
}

async fn pg(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, NoTls).await.unwrap_or_else(|e| panic!("connect: {e:?}"));
    tokio::spawn(conn);
    client
}

/// The server's message of a database error.
fn db_message(e: &tokio_postgres::Error) -> String {
    e.as_db_error().map(|d| d.message().to_string()).unwrap_or_else(|| e.to_string())
}

/// The admin URL pointed at another database.
fn admin_url_for(database: &str) -> String {
    let url = database_url();
    let (base, _) = url.rsplit_once('/').expect("the admin URL names a database");
    format!("{base}/{database}")
}

async fn admin_pg() -> tokio_postgres::Client {
    pg(&database_url()).await
}

/// The app role's URL from the tenant's Secret, pointed at `database`.
async fn app_url(client: &Client, tenant: &str, database: Option<&str>) -> String {
    let secret =
        Api::<Secret>::namespaced(client.clone(), &format!("tenant-{tenant}")).get("tenant-database").await.unwrap();
    let data = secret.data.unwrap();
    let get = |k: &str| String::from_utf8(data[k].0.clone()).unwrap();
    format!(
        "postgres://{}:{}@{}:{}/{}",
        get("username"),
        get("password"),
        get("host"),
        get("port"),
        database.map(str::to_string).unwrap_or_else(|| get("database"))
    )
}

#[tokio::test]
async fn a_dedicated_tenant_gets_every_child_and_follows_its_spec() {
    let (client, _op) = setup().await;
    let name = "e2e-acme";
    let ns = format!("tenant-{name}");
    create(
        &client,
        &tenant(
            name,
            serde_json::json!({
                "displayName": "Acme E2E",
                "plan": "growth",
                "owners": [{"kind": "User", "name": "alice@acme.example"}, {"kind": "Group", "name": "acme-admins"}],
                "database": {"isolation": "Dedicated", "deletionPolicy": "Delete"},
                "services": ["crm", "cms"],
                "branding": {"primaryColor": "#0a7cff", "customDomain": "app.acme-e2e.example"},
            }),
        ),
    )
    .await;
    let t = wait_ready(&client, name).await;

    // Status: phase, namespace, database and every condition True with a reason.
    let status = t.status.unwrap();
    assert_eq!(status.namespace.as_deref(), Some(ns.as_str()));
    assert_eq!(status.database.as_deref(), Some("tenant_e2e_acme"));
    assert_eq!(serde_json::to_value(status.phase).unwrap(), "Ready");
    for ty in [
        "NamespaceReady",
        "QuotaReady",
        "NetworkReady",
        "RBACReady",
        "DatabaseReady",
        "SecretsReady",
        "ServicesReady",
        "Ready",
    ] {
        let c = find_condition(&status.conditions, ty).unwrap_or_else(|| panic!("no {ty}"));
        assert_eq!(c.status, "True", "{ty}: {} {}", c.reason, c.message);
        assert!(!c.reason.is_empty());
    }
    for ty in ["Reconciling", "Stalled"] {
        assert!(find_condition(&status.conditions, ty).is_none(), "a Ready tenant has no {ty} condition");
    }

    // Children.
    let namespace = Api::<Namespace>::all(client.clone()).get(&ns).await.unwrap();
    assert_eq!(namespace.labels()["bizosaas.io/tenant"], name);
    assert_eq!(namespace.labels()["app.kubernetes.io/managed-by"], "bizosaas-operator");
    assert_eq!(namespace.owner_references()[0].name, name);
    let rq = Api::<ResourceQuota>::namespaced(client.clone(), &ns).get("tenant-quota").await.unwrap();
    let hard = rq.spec.unwrap().hard.unwrap();
    assert_eq!(hard["requests.cpu"].0, "4");
    assert_eq!(hard["count/agentcrews.bizosaas.io"].0, "5");
    Api::<LimitRange>::namespaced(client.clone(), &ns).get("tenant-limits").await.unwrap();
    let policies = Api::<NetworkPolicy>::namespaced(client.clone(), &ns).list(&ListParams::default()).await.unwrap();
    let mut names: Vec<_> = policies.iter().map(|p| p.name_any()).collect();
    names.sort();
    assert_eq!(
        names,
        [
            "allow-agent-https-egress",
            "allow-database",
            "allow-dns",
            "allow-ingress-controller",
            // The harness names a namespace Prometheus scrapes from (metrics.scrapeNamespace).
            "allow-metrics-scrape",
            "allow-platform",
            "allow-same-namespace",
            "default-deny"
        ]
    );
    Api::<ServiceAccount>::namespaced(client.clone(), &ns).get("tenant-workload").await.unwrap();
    let rb = Api::<RoleBinding>::namespaced(client.clone(), &ns).get("tenant-admins").await.unwrap();
    assert_eq!(rb.role_ref.name, "bizosaas-tenant-admin");
    assert_eq!(rb.subjects.unwrap().len(), 2);
    let secret = Api::<Secret>::namespaced(client.clone(), &ns).get("tenant-database").await.unwrap();
    let keys: Vec<_> = secret.data.unwrap().into_keys().collect();
    assert_eq!(keys, ["database", "host", "password", "port", "url", "username"]);
    for svc in ["crm", "cms"] {
        let d = Api::<Deployment>::namespaced(client.clone(), &ns).get(svc).await.unwrap();
        assert_eq!(d.status.unwrap().available_replicas, Some(1), "{svc} not available");
        let ing = Api::<Ingress>::namespaced(client.clone(), &ns).get(svc).await.unwrap();
        assert_eq!(
            ing.spec.unwrap().rules.unwrap()[0].host.as_deref(),
            Some(format!("{svc}.app.acme-e2e.example").as_str())
        );
    }

    // The database: owner role NOLOGIN, app role LOGIN without superuser or BYPASSRLS, not owner.
    let admin = admin_pg().await;
    let row = admin
        .query_one(
            "SELECT d.datname, pg_get_userbyid(d.datdba) FROM pg_database d WHERE d.datname = 'tenant_e2e_acme'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(1), "tenant_e2e_acme_owner");
    let app = admin
        .query_one(
            "SELECT rolcanlogin, rolsuper, rolbypassrls, rolconnlimit FROM pg_roles WHERE rolname = 'tenant_e2e_acme_app'",
            &[],
        )
        .await
        .unwrap();
    assert!(app.get::<_, bool>(0) && !app.get::<_, bool>(1) && !app.get::<_, bool>(2));
    assert!(app.get::<_, i32>(3) > 0);
    let owner_login: bool = admin
        .query_one("SELECT rolcanlogin FROM pg_roles WHERE rolname = 'tenant_e2e_acme_owner'", &[])
        .await
        .unwrap()
        .get(0);
    assert!(!owner_login);
    // The app role can use its own tables.
    let app_db = pg(&app_url(&client, name, None).await).await;
    app_db
        .execute("INSERT INTO agent_memory (tenant_id, crew, content) VALUES ('e2e-acme', 'growth', 'hello')", &[])
        .await
        .unwrap();

    // A plan change moves the quota.
    let api: Api<Tenant> = Api::all(client.clone());
    api.patch(name, &PatchParams::default(), &Patch::Merge(serde_json::json!({"spec": {"plan": "enterprise"}})))
        .await
        .unwrap();
    let rqs = Api::<ResourceQuota>::namespaced(client.clone(), &ns);
    wait_for("quota to follow the enterprise plan", READY_TIMEOUT, || async {
        let hard = rqs.get("tenant-quota").await.ok()?.spec?.hard?;
        (hard["requests.memory"].0 == "32Gi" && hard["count/workflows.bizosaas.io"].0 == "200").then_some(())
    })
    .await;

    // A deleted child comes back; a hand edit is undone.
    let nps = Api::<NetworkPolicy>::namespaced(client.clone(), &ns);
    nps.delete("default-deny", &DeleteParams::default()).await.unwrap();
    rqs.patch(
        "tenant-quota",
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"spec": {"hard": {"pods": "999"}}})),
    )
    .await
    .unwrap();
    wait_for("deleted NetworkPolicy to be restored", READY_TIMEOUT, || async {
        nps.get_opt("default-deny").await.ok()?.map(|_| ())
    })
    .await;
    wait_for("edited quota to be restored", READY_TIMEOUT, || async {
        (rqs.get("tenant-quota").await.ok()?.spec?.hard?["pods"].0 == "200").then_some(())
    })
    .await;
    // A deleted database Secret comes back, through the operator's watch in the tenant
    // namespace, with credentials that work.
    let secrets = Api::<Secret>::namespaced(client.clone(), &ns);
    let before = secrets.get("tenant-database").await.unwrap();
    secrets.delete("tenant-database", &DeleteParams::default()).await.unwrap();
    wait_for("deleted database Secret to be restored", READY_TIMEOUT, || async {
        let restored = secrets.get_opt("tenant-database").await.ok()??;
        (restored.uid() != before.uid()).then_some(())
    })
    .await;
    let app_db = pg(&app_url(&client, name, None).await).await;
    let role: String = app_db.query_one("SELECT current_user::text", &[]).await.unwrap().get(0);
    assert_eq!(role, "tenant_e2e_acme_app", "the restored credentials log in as the app role");

    // Suspend: services scale to zero, no pods allowed, data kept; resume brings them back.
    api.patch(name, &PatchParams::default(), &Patch::Merge(serde_json::json!({"spec": {"suspended": true}})))
        .await
        .unwrap();
    let suspended = wait_ready(&client, name).await;
    assert_eq!(serde_json::to_value(suspended.status.unwrap().phase).unwrap(), "Suspended");
    let deployments = Api::<Deployment>::namespaced(client.clone(), &ns);
    assert_eq!(deployments.get("crm").await.unwrap().spec.unwrap().replicas, Some(0));
    assert_eq!(rqs.get("tenant-quota").await.unwrap().spec.unwrap().hard.unwrap()["pods"].0, "0");
    let tenant_db = pg(&admin_url_for("tenant_e2e_acme")).await;
    let kept: i64 = tenant_db.query_one("SELECT count(*) FROM agent_memory", &[]).await.unwrap().get(0);
    assert_eq!(kept, 1, "suspending must keep the data");
    drop(tenant_db);
    api.patch(name, &PatchParams::default(), &Patch::Merge(serde_json::json!({"spec": {"suspended": false}})))
        .await
        .unwrap();
    let resumed = wait_ready(&client, name).await;
    assert_eq!(serde_json::to_value(resumed.status.unwrap().phase).unwrap(), "Ready");
    assert_eq!(deployments.get("crm").await.unwrap().spec.unwrap().replicas, Some(1));

    // Delete with deletionPolicy Delete: database, roles and namespace go.
    drop(app_db);
    api.delete(name, &DeleteParams::default()).await.unwrap();
    wait_gone(&client, name).await;
    let admin = admin_pg().await;
    let dbs = admin.query("SELECT 1 FROM pg_database WHERE datname = 'tenant_e2e_acme'", &[]).await.unwrap();
    assert!(dbs.is_empty(), "database survived deletionPolicy Delete");
    let roles = admin.query("SELECT rolname FROM pg_roles WHERE rolname LIKE 'tenant_e2e_acme_%'", &[]).await.unwrap();
    assert!(roles.is_empty(), "roles survived deletionPolicy Delete");
    wait_for("namespace to go", READY_TIMEOUT, || async {
        match Api::<Namespace>::all(client.clone()).get_opt(&ns).await.ok()? {
            None => Some(()),
            Some(n) => n.metadata.deletion_timestamp.map(|_| ()),
        }
    })
    .await;
}

/// The API server stores `1024Mi` as `1Gi` and `0.5` as `500m`: the Tenant still converges,
/// and its ResourceQuota is not rewritten on every reconcile.
#[tokio::test]
async fn a_quota_in_any_unit_converges() {
    let (client, _op) = setup().await;
    let name = "e2e-quota-units";
    let t = tenant(
        name,
        serde_json::json!({"displayName": "Units", "quota": {"memory": "1024Mi", "cpu": "0.5"},
                           "database": {"isolation": "Shared", "deletionPolicy": "Delete"}}),
    );
    create(&client, &t).await;
    wait_ready(&client, name).await;
    let rqs: Api<ResourceQuota> = Api::namespaced(client.clone(), &format!("tenant-{name}"));
    let before = rqs.get("tenant-quota").await.unwrap();
    let hard = before.spec.as_ref().unwrap().hard.clone().unwrap();
    assert_eq!((hard["requests.memory"].0.as_str(), hard["requests.cpu"].0.as_str()), ("1Gi", "500m"));
    // A reconcile (a label change triggers one) leaves the quota as it is.
    let touch = serde_json::json!({"metadata": {"labels": {"bizosaas.io/e2e-touch": "1"}}});
    Api::<Tenant>::all(client.clone()).patch(name, &PatchParams::default(), &Patch::Merge(&touch)).await.unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    // The operator's last apply (its managedFields entry), not the quota controller's status.
    let applied = |rq: &ResourceQuota| {
        let fields = rq.metadata.managed_fields.clone().unwrap_or_default();
        fields.into_iter().find(|f| f.manager.as_deref() == Some("bizosaas-operator")).and_then(|f| f.time)
    };
    let after = rqs.get("tenant-quota").await.unwrap();
    assert!(applied(&before).is_some());
    assert_eq!(applied(&after), applied(&before), "the quota was rewritten");
    wait_ready(&client, name).await;
    Api::<Tenant>::all(client.clone()).delete(name, &DeleteParams::default()).await.unwrap();
}

#[tokio::test]
async fn retain_keeps_the_data_and_disables_login() {
    let (client, _op) = setup().await;
    let name = "e2e-retain";
    let admin = admin_pg().await;
    // Leftovers of an earlier run would make the assertions meaningless.
    for sql in [
        "DROP DATABASE IF EXISTS tenant_e2e_retain WITH (FORCE)",
        "DROP ROLE IF EXISTS tenant_e2e_retain_app",
        "DROP ROLE IF EXISTS tenant_e2e_retain_owner",
    ] {
        admin.batch_execute(sql).await.unwrap();
    }
    create(
        &client,
        &tenant(name, serde_json::json!({"displayName": "Retain", "database": {"deletionPolicy": "Retain"}})),
    )
    .await;
    wait_ready(&client, name).await;
    let url = app_url(&client, name, None).await;
    pg(&url)
        .await
        .execute("INSERT INTO audit_log (tenant_id, actor, action) VALUES ('e2e-retain', 'test', 'kept')", &[])
        .await
        .unwrap();

    Api::<Tenant>::all(client.clone()).delete(name, &DeleteParams::default()).await.unwrap();
    wait_gone(&client, name).await;

    let tenant_db = pg(&admin_url_for("tenant_e2e_retain")).await;
    let kept: i64 =
        tenant_db.query_one("SELECT count(*) FROM audit_log WHERE source = 'tenant'", &[]).await.unwrap().get(0);
    assert_eq!(kept, 1, "Retain must keep the rows");
    // The operator's own entries say what happened to the data, in the data.
    let operator: Vec<String> = tenant_db
        .query("SELECT action FROM audit_log WHERE source = 'operator' ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(operator, ["database.provisioned", "database.retained"]);
    let can_login: bool = admin
        .query_one("SELECT rolcanlogin FROM pg_roles WHERE rolname = 'tenant_e2e_retain_app'", &[])
        .await
        .unwrap()
        .get(0);
    assert!(!can_login, "Retain must disable the app role's login");
    let err = tokio_postgres::connect(&url, NoTls).await.err().expect("login still works after Retain");
    assert!(db_message(&err).contains("not permitted to log in"), "{err:?}");

    // A new Tenant of the same name is not handed the retained data: it reports the conflict
    // and the database, the rows and the disabled role stay as they were.
    let api: Api<Tenant> = Api::all(client.clone());
    api.create(&PostParams::default(), &tenant(name, serde_json::json!({"displayName": "Retain again"})))
        .await
        .unwrap();
    let t = wait_for("DatabaseConflict", READY_TIMEOUT, || async {
        let t = api.get(name).await.ok()?;
        let ready = find_condition(&t.status.as_ref()?.conditions, "Ready")?.clone();
        (ready.reason == "DatabaseConflict").then_some(t)
    })
    .await;
    let status = t.status.unwrap();
    assert_eq!(serde_json::to_value(status.phase).unwrap(), "Failed");
    let database = find_condition(&status.conditions, "DatabaseReady").unwrap();
    assert_eq!((database.status.as_str(), database.reason.as_str()), ("False", "DatabaseConflict"));
    assert!(database.message.contains("adoptRetained"), "{}", database.message);
    let secrets = Api::<Secret>::namespaced(client.clone(), &format!("tenant-{name}"));
    let secret = secrets.get_opt("tenant-database").await.unwrap();
    assert!(secret.is_none(), "the new Tenant was given credentials to the retained data");
    let can_login: bool = admin
        .query_one("SELECT rolcanlogin FROM pg_roles WHERE rolname = 'tenant_e2e_retain_app'", &[])
        .await
        .unwrap()
        .get(0);
    assert!(!can_login, "the conflict re-enabled the retained role's login");
    let kept: i64 =
        tenant_db.query_one("SELECT count(*) FROM audit_log WHERE source = 'tenant'", &[]).await.unwrap().get(0);
    assert_eq!(kept, 1, "the conflict changed the retained rows");

    // Adopting it explicitly gives the data back, under new credentials.
    let adopt = serde_json::json!({"spec": {"database": {"adoptRetained": true}}});
    api.patch(name, &PatchParams::default(), &Patch::Merge(&adopt)).await.unwrap();
    wait_ready(&client, name).await;
    let adopted = app_url(&client, name, None).await;
    assert!(adopted != url, "adoption kept the old password");
    // The audit log is its owners' to read (through the gateway), not the app role's.
    let rows = pg(&adopted).await.query("SELECT action FROM audit_log", &[]).await;
    assert!(rows.is_err(), "the app role read the audit log");
    pg(&adopted)
        .await
        .execute("INSERT INTO audit_log (tenant_id, actor, action) VALUES ('e2e-retain', 'test', 'adopted')", &[])
        .await
        .expect("the adopted tenant appends to its retained log");
    let rows = tenant_db.query("SELECT action FROM audit_log WHERE source = 'tenant' ORDER BY id", &[]).await.unwrap();
    let actions: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
    assert_eq!(actions, ["kept", "adopted"], "the adopted tenant writes on in its retained rows");

    api.delete(name, &DeleteParams::default()).await.unwrap();
    wait_gone(&client, name).await;
}

#[tokio::test]
async fn shared_tenants_cannot_touch_each_other() {
    let (client, _op) = setup().await;
    let (a, b, c) = ("e2e-iso-a", "e2e-iso-b", "e2e-iso-c");
    create(
        &client,
        &tenant(
            a,
            serde_json::json!({"displayName": "A", "database": {"isolation": "Shared", "deletionPolicy": "Delete"}}),
        ),
    )
    .await;
    create(
        &client,
        &tenant(
            b,
            serde_json::json!({"displayName": "B", "database": {"isolation": "Shared", "deletionPolicy": "Delete"}}),
        ),
    )
    .await;
    create(
        &client,
        &tenant(
            c,
            serde_json::json!({"displayName": "C", "database": {"isolation": "Dedicated", "deletionPolicy": "Delete"}}),
        ),
    )
    .await;
    for t in [a, b, c] {
        wait_ready(&client, t).await;
    }
    let a_db = pg(&app_url(&client, a, None).await).await;
    let b_db = pg(&app_url(&client, b, None).await).await;

    // Each writes its own rows.
    a_db.execute("INSERT INTO agent_memory (tenant_id, crew, content) VALUES ('e2e-iso-a', 'crew', 'a secret')", &[])
        .await
        .unwrap();
    b_db.execute("INSERT INTO agent_memory (tenant_id, crew, content) VALUES ('e2e-iso-b', 'crew', 'b secret')", &[])
        .await
        .unwrap();

    // A sees only its rows, cannot write, change or delete B's.
    let seen: Vec<String> =
        a_db.query("SELECT tenant_id FROM agent_memory", &[]).await.unwrap().iter().map(|r| r.get(0)).collect();
    assert!(!seen.is_empty() && seen.iter().all(|t| t == a), "A saw {seen:?}");
    let err = a_db
        .execute("INSERT INTO agent_memory (tenant_id, crew, content) VALUES ('e2e-iso-b', 'crew', 'forged')", &[])
        .await
        .unwrap_err();
    assert!(err.as_db_error().unwrap().message().contains("row-level security"), "{err}");
    let updated =
        a_db.execute("UPDATE agent_memory SET content = 'pwned' WHERE tenant_id = 'e2e-iso-b'", &[]).await.unwrap();
    let deleted = a_db.execute("DELETE FROM agent_memory WHERE tenant_id = 'e2e-iso-b'", &[]).await.unwrap();
    assert_eq!((updated, deleted), (0, 0));
    let moved = a_db.execute("UPDATE agent_memory SET tenant_id = 'e2e-iso-b'", &[]).await;
    assert!(moved.is_err(), "A moved its rows to B");

    // Session tricks gain nothing.
    let err = a_db.batch_execute("SET ROLE tenant_e2e_iso_b_app").await.unwrap_err();
    assert!(err.as_db_error().unwrap().message().contains("permission denied"), "{err}");
    a_db.batch_execute("SELECT set_config('app.tenant_id', 'e2e-iso-b', false)").await.unwrap();
    let b_rows: i64 =
        a_db.query_one("SELECT count(*) FROM agent_memory WHERE tenant_id = 'e2e-iso-b'", &[]).await.unwrap().get(0);
    assert_eq!(b_rows, 0);
    let b_still: String =
        b_db.query_one("SELECT content FROM agent_memory WHERE tenant_id = 'e2e-iso-b'", &[]).await.unwrap().get(0);
    assert_eq!(b_still, "b secret");

    // A cannot even connect to C's dedicated database.
    let err = tokio_postgres::connect(&app_url(&client, a, Some("tenant_e2e_iso_c")).await, NoTls)
        .await
        .err()
        .expect("A connected to C's database");
    assert!(db_message(&err).contains("permission denied for database"), "{err:?}");

    // In Kubernetes, A's workload identity cannot read B's Secrets; owners only act in their namespace.
    let can = |args: &[&str]| kubectl(&[&["auth", "can-i"][..], args].concat(), None).stdout;
    let sa_a = "--as=system:serviceaccount:tenant-e2e-iso-a:tenant-workload";
    assert_eq!(String::from_utf8_lossy(&can(&["get", "secrets", "-n", "tenant-e2e-iso-b", sa_a])).trim(), "no");
    assert_eq!(
        String::from_utf8_lossy(&can(&["get", "secret/tenant-database", "-n", "tenant-e2e-iso-b", sa_a])).trim(),
        "no"
    );

    for t in [a, b, c] {
        Api::<Tenant>::all(client.clone()).delete(t, &DeleteParams::default()).await.unwrap();
    }
    drop((a_db, b_db));
    for t in [a, b, c] {
        wait_gone(&client, t).await;
    }
    let admin = admin_pg().await;
    let roles = admin.query("SELECT rolname FROM pg_roles WHERE rolname LIKE 'tenant_e2e_iso_%'", &[]).await.unwrap();
    assert!(roles.is_empty(), "roles left behind");
    let platform = pg(&admin_url_for("bizosaas_platform")).await;
    let rows: i64 = platform
        .query_one("SELECT count(*) FROM agent_memory WHERE tenant_id IN ('e2e-iso-a', 'e2e-iso-b')", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(rows, 0, "deletionPolicy Delete left rows in the shared database");
}

#[tokio::test]
async fn owners_administer_only_their_own_tenant() {
    let (client, _op) = setup().await;
    let name = "e2e-owners";
    create(
        &client,
        &tenant(
            name,
            serde_json::json!({"displayName": "Owners", "owners": [{"kind": "User", "name": "olivia@owners.example"}]}),
        ),
    )
    .await;
    wait_ready(&client, name).await;
    let can = |args: &[&str]| {
        String::from_utf8_lossy(&kubectl(&[&["auth", "can-i"][..], args].concat(), None).stdout).trim().to_string()
    };
    assert_eq!(
        can(&["create", "agentcrews.bizosaas.io", "-n", "tenant-e2e-owners", "--as=olivia@owners.example"]),
        "yes"
    );
    assert_eq!(can(&["create", "agentcrews.bizosaas.io", "-n", "default", "--as=olivia@owners.example"]), "no");
    assert_eq!(can(&["delete", "resourcequotas", "-n", "tenant-e2e-owners", "--as=olivia@owners.example"]), "no");

    // Attacks on Secrets, as the owner: RBAC lets them write Secrets (their credentials), the
    // admission policy keeps them off the operator's and off never-expiring tokens.
    let as_owner = |args: &[&str], stdin: Option<&str>| {
        kubectl(&[args, &["-n", "tenant-e2e-owners", "--as=olivia@owners.example"][..]].concat(), stdin)
    };
    // A PATCH answer carries the whole object: with the owner's write access that would read
    // the operator's database credentials.
    let owner = client_as("olivia@owners.example").await;
    let owner_secrets: Api<Secret> = Api::namespaced(owner, "tenant-e2e-owners");
    let label = Patch::Merge(serde_json::json!({"metadata": {"labels": {"x": "y"}}}));
    match owner_secrets.patch("tenant-database", &PatchParams::default(), &label).await {
        Ok(secret) => panic!("the owner patched the operator's Secret and got {:?}", secret.data.map(|d| d.len())),
        Err(kube::Error::Api(e)) => {
            assert_eq!(e.code, 403, "{e:?}");
            assert!(e.message.contains("written only by the operator"), "{}", e.message);
        }
        Err(e) => panic!("{e}"),
    }
    let token = "apiVersion: v1\nkind: Secret\nmetadata:\n  name: forever\n  annotations: {kubernetes.io/service-account.name: tenant-workload}\ntype: kubernetes.io/service-account-token\n";
    let minted = as_owner(&["create", "-f", "-"], Some(token));
    assert!(!minted.status.success(), "the owner created a service-account-token Secret");
    assert!(String::from_utf8_lossy(&minted.stderr).contains("accept no service-account-token Secrets"));
    let forged = "apiVersion: v1\nkind: Secret\nmetadata:\n  name: integration-forged\n  labels: {app.kubernetes.io/managed-by: bizosaas-operator}\nstringData: {credential: x}\n";
    assert!(!as_owner(&["create", "-f", "-"], Some(forged)).status.success(), "the owner forged an operator Secret");
    let own = as_owner(&["create", "secret", "generic", "my-api-key", "--from-literal=apiKey=k"], None);
    assert!(own.status.success(), "an owner's own credential is refused: {}", String::from_utf8_lossy(&own.stderr));

    Api::<Tenant>::all(client.clone()).delete(name, &DeleteParams::default()).await.unwrap();
    wait_gone(&client, name).await;
}

#[tokio::test]
async fn a_foreign_namespace_is_never_adopted() {
    let (client, _op) = setup().await;
    let name = "e2e-conflict";
    let ns = "tenant-e2e-conflict";
    let namespaces: Api<Namespace> = Api::all(client.clone());
    if namespaces.get_opt(ns).await.unwrap().is_none() {
        kubectl_ok(&["create", "namespace", ns], None);
    }
    create(&client, &tenant(name, serde_json::json!({"displayName": "Conflict"}))).await;
    let api: Api<Tenant> = Api::all(client.clone());
    let t = wait_for("NamespaceConflict", READY_TIMEOUT, || async {
        let t = api.get(name).await.ok()?;
        let ready = find_condition(&t.status.as_ref()?.conditions, "Ready")?.clone();
        (ready.reason == "NamespaceConflict").then_some(t)
    })
    .await;
    let status = t.status.unwrap();
    assert_eq!(serde_json::to_value(status.phase).unwrap(), "Failed");
    assert!(find_condition(&status.conditions, "Ready").unwrap().message.contains("already exists"));
    // kstatus: a failure retrying cannot fix is Stalled, so GitOps tools report it at once.
    let stalled = find_condition(&status.conditions, "Stalled").expect("a Stalled condition");
    assert_eq!((stalled.status.as_str(), stalled.reason.as_str()), ("True", "NamespaceConflict"));
    assert!(find_condition(&status.conditions, "Reconciling").is_none());
    let foreign = namespaces.get(ns).await.unwrap();
    assert!(!foreign.labels().contains_key("bizosaas.io/tenant"), "the namespace was adopted");
    let quotas = Api::<ResourceQuota>::namespaced(client.clone(), ns).list(&ListParams::default()).await.unwrap();
    assert!(quotas.items.is_empty(), "children were created in a foreign namespace");

    api.delete(name, &DeleteParams::default()).await.unwrap();
    wait_gone(&client, name).await;
    let still = namespaces.get(ns).await.unwrap();
    assert!(still.metadata.deletion_timestamp.is_none(), "the foreign namespace was deleted with the Tenant");
    namespaces.delete(ns, &DeleteParams::default()).await.unwrap();
}

/// Every host is served over TLS; a custom domain belongs to the Tenant that claimed it first,
/// and neither a later Tenant nor an owner writing an Ingress of their own can take it.
#[tokio::test]
async fn a_custom_domain_belongs_to_its_first_tenant() {
    let (client, _op) = setup().await;
    let (first, second, nested) = ("e2e-domain-first", "e2e-domain-second", "e2e-domain-nested");
    // Claims left by an earlier run would be older than this run's first tenant.
    let api: Api<Tenant> = Api::all(client.clone());
    for name in [second, nested] {
        if api.get_opt(name).await.unwrap().is_some() {
            api.delete(name, &DeleteParams::default()).await.unwrap();
            wait_gone(&client, name).await;
        }
    }
    let spec = |domain: &str, owner: &str| {
        serde_json::json!({"displayName": "Domains", "services": ["crm"], "branding": {"customDomain": domain},
                           "owners": [{"kind": "User", "name": owner}],
                           "database": {"isolation": "Shared", "deletionPolicy": "Delete"}})
    };
    create(&client, &tenant(first, spec("shop.e2e-domains.example", "first@domains.example"))).await;
    wait_ready(&client, first).await;
    let ingress = Api::<Ingress>::namespaced(client.clone(), &format!("tenant-{first}")).get("crm").await.unwrap();
    let tls = ingress.spec.unwrap().tls.unwrap();
    assert_eq!(tls[0].hosts.as_deref().unwrap(), ["crm.shop.e2e-domains.example"]);
    assert_eq!(tls[0].secret_name.as_deref(), Some("crm-tls"));

    // The same domain, and one inside it, later: refused, Stalled, services running unexposed.
    create(&client, &tenant(second, spec("shop.e2e-domains.example", "second@domains.example"))).await;
    // Creation times have a resolution of a second, and the older claim wins.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    create(&client, &tenant(nested, spec("a.shop.e2e-domains.example", "nested@domains.example"))).await;
    for (name, claimed) in [(second, "shop.e2e-domains.example"), (nested, "shop.e2e-domains.example")] {
        let status = wait_for(&format!("{name} DomainConflict"), READY_TIMEOUT, || async {
            let status = api.get(name).await.ok()?.status?;
            let services = find_condition(&status.conditions, "ServicesReady")?;
            (services.reason == "DomainConflict").then_some(status)
        })
        .await;
        let message = &find_condition(&status.conditions, "ServicesReady").unwrap().message;
        assert!(message.contains(claimed) && message.contains(first), "{message}");
        let stalled = find_condition(&status.conditions, "Stalled").expect("Stalled");
        assert_eq!((stalled.status.as_str(), stalled.reason.as_str()), ("True", "DomainConflict"));
        let ns = format!("tenant-{name}");
        let ingresses = Api::<Ingress>::namespaced(client.clone(), &ns).list(&ListParams::default()).await.unwrap();
        assert!(ingresses.items.is_empty(), "{name} got an Ingress for a domain it may not serve");
        Api::<Deployment>::namespaced(client.clone(), &ns).get("crm").await.unwrap();
    }

    // The second tenant's owner cannot write an Ingress for the first tenant's host either.
    let owner = client_as("second@domains.example").await;
    let stolen: Ingress = serde_json::from_value(serde_json::json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "metadata": {"name": "steal"},
        "spec": {"rules": [{"host": "crm.shop.e2e-domains.example", "http": {"paths": [{"path": "/", "pathType": "Prefix",
                 "backend": {"service": {"name": "crm", "port": {"number": 80}}}}]}}]},
    }))
    .unwrap();
    let err = Api::<Ingress>::namespaced(owner, &format!("tenant-{second}"))
        .create(&PostParams::default(), &stolen)
        .await
        .expect_err("an owner created an Ingress");
    assert!(matches!(&err, kube::Error::Api(s) if s.code == 403), "{err}");

    // Once the first tenant is gone, the earliest remaining claim gets the domain.
    api.delete(first, &DeleteParams::default()).await.unwrap();
    wait_gone(&client, first).await;
    wait_ready(&client, second).await;
    let ingress = Api::<Ingress>::namespaced(client.clone(), &format!("tenant-{second}")).get("crm").await.unwrap();
    assert_eq!(ingress.spec.unwrap().rules.unwrap()[0].host.as_deref(), Some("crm.shop.e2e-domains.example"));
    // The nested domain is now refused for the second tenant's claim: told without waiting
    // for a resync, since a freed claim reconciles the tenants it refused.
    wait_for(&format!("{nested} refused for {second}'s claim"), Duration::from_secs(20), || async {
        let status = api.get(nested).await.ok()?.status?;
        find_condition(&status.conditions, "ServicesReady")?.message.contains(second).then_some(())
    })
    .await;
    for name in [second, nested] {
        api.delete(name, &DeleteParams::default()).await.unwrap();
    }
}

/// The operator's own rights: nothing on Secrets, Deployments or Jobs outside tenant
/// namespaces; inside one, what its RoleBinding there grants. An Integration outside a tenant
/// namespace is told so and gets no Secret.
#[tokio::test]
async fn the_operator_writes_only_inside_tenant_namespaces() {
    let (client, _op) = setup().await;
    let deployment =
        Api::<Deployment>::namespaced(client.clone(), OPERATOR_NAMESPACE).get(OPERATOR_DEPLOYMENT).await.unwrap();
    let account = deployment.spec.unwrap().template.spec.unwrap().service_account_name.unwrap();
    let operator = format!("system:serviceaccount:{OPERATOR_NAMESPACE}:{account}");
    let can = |args: &[&str]| {
        let mut all = vec!["auth", "can-i"];
        all.extend_from_slice(args);
        all.extend(["--as", operator.as_str()]);
        String::from_utf8(kubectl(&all, None).stdout).unwrap().trim().to_string()
    };
    for (verb, resource) in [("list", "secrets"), ("watch", "deployments.apps"), ("create", "jobs.batch")] {
        assert_eq!(can(&[verb, resource, "--all-namespaces"]), "no", "{verb} {resource} cluster-wide");
    }
    for (verb, resource, ns) in [
        ("get", "secrets", "kube-system"),
        ("create", "deployments.apps", "default"),
        ("create", "configmaps", "default"),
    ] {
        assert_eq!(can(&[verb, resource, "-n", ns]), "no", "{verb} {resource} in {ns}");
    }
    assert_eq!(can(&["update", "namespaces"]), "no", "an unused verb");

    let name = "e2e-rights";
    let ns = format!("tenant-{name}");
    create(&client, &tenant(name, serde_json::json!({"displayName": "Rights"}))).await;
    wait_ready(&client, name).await;
    let binding = Api::<RoleBinding>::namespaced(client.clone(), &ns).get("bizosaas-operator").await.unwrap();
    assert_eq!(binding.role_ref.name, "bizosaas-operator-tenant");
    for (verb, resource) in [("create", "secrets"), ("patch", "deployments.apps"), ("delete", "jobs.batch")] {
        assert_eq!(can(&[verb, resource, "-n", &ns]), "yes", "{verb} {resource} in {ns}");
    }

    // An Integration in a namespace no tenant owns.
    let plain = "e2e-not-a-tenant";
    kubectl(&["create", "namespace", plain], None);
    kubectl(&["create", "secret", "generic", "key", "-n", plain, "--from-literal=apiKey=k"], None);
    let integration: bizosaas_crds::Integration = serde_json::from_value(serde_json::json!({
        "apiVersion": "bizosaas.io/v1alpha1", "kind": "Integration", "metadata": {"name": "llm", "namespace": plain},
        "spec": {"type": "OpenAI", "endpoint": "https://llm.example/v1",
                 "credentials": {"secretRef": {"name": "key", "key": "apiKey"}}},
    }))
    .unwrap();
    let integrations: Api<bizosaas_crds::Integration> = Api::namespaced(client.clone(), plain);
    let _ = integrations.delete("llm", &DeleteParams::default()).await;
    wait_for("the old Integration to go", READY_TIMEOUT, || async {
        integrations.get_opt("llm").await.ok()?.is_none().then_some(())
    })
    .await;
    integrations.create(&PostParams::default(), &integration).await.unwrap();
    let status = wait_for("NoTenantNamespace", READY_TIMEOUT, || async {
        let status = integrations.get("llm").await.ok()?.status?;
        let stalled = find_condition(&status.conditions, "Stalled")?;
        (stalled.reason == "NoTenantNamespace").then_some(status)
    })
    .await;
    assert!(find_condition(&status.conditions, "Ready").unwrap().message.contains("belongs to no tenant"));
    assert!(Api::<Secret>::namespaced(client.clone(), plain).get_opt("integration-llm").await.unwrap().is_none());
    integrations.delete("llm", &DeleteParams::default()).await.unwrap();
    Api::<Tenant>::all(client.clone()).delete(name, &DeleteParams::default()).await.unwrap();
}
