//! Shared tenants in one platform database on the harness's real PostgreSQL: their
//! privileges and policies are held once, by the platform database's tenants group, so the
//! access lists and the policies do not grow with each tenant (PostgreSQL cannot move a
//! table's catalog row out of line: a grant per tenant stopped provisioning at about 2,400
//! tenants, and each session reloads every policy of a table after any change to them). Each
//! tenant still sees only its own rows, and becoming the group gains a tenant nothing.
//! Provisioning a tenant again writes nothing to the platform database's catalog, and a
//! policy of the tenant's own, left by an earlier version, is removed.
//!
//! The admin URL comes from BIZOSAAS_TEST_DATABASE_URL (`./dev test` sets it); start the
//! server with `bash tests/harness/postgres.sh up`.

mod support;

use bizosaas_controllers::postgres::{Admin, TenantNames};
use bizosaas_crds::tenant::{DatabaseIsolation, DeletionPolicy};
use std::collections::BTreeMap;
use support::{admin_url, admin_url_for, connect};

const PLATFORM: &str = "bizosaas_platform_shared";
const GROUP: &str = "bizosaas_platform_shared_tenants";

/// Entries in the access list of the database, of the schema and of each table and sequence
/// in it.
async fn access_list_lengths(platform: &tokio_postgres::Client) -> BTreeMap<String, i32> {
    let rows = platform
        .query(
            "SELECT relname::text, coalesce(cardinality(relacl), 0) FROM pg_class \
             WHERE relnamespace = 'public'::regnamespace AND relkind IN ('r', 'S') \
             UNION ALL SELECT 'schema public', coalesce(cardinality(nspacl), 0) FROM pg_namespace WHERE nspname = 'public' \
             UNION ALL SELECT 'database', coalesce(cardinality(datacl), 0) FROM pg_database WHERE datname = current_database()",
            &[],
        )
        .await
        .unwrap();
    rows.iter().map(|r| (r.get(0), r.get(1))).collect()
}

/// The row versions of the tables' catalog rows and of every policy on them: a write to any
/// of them (a grant, a revoke, a policy replaced) changes its `xmin`.
async fn catalog_versions(platform: &tokio_postgres::Client) -> Vec<(String, String)> {
    let rows = platform
        .query(
            "SELECT relname::text, xmin::text FROM pg_class WHERE relnamespace = 'public'::regnamespace \
             UNION ALL SELECT polname::text || ' on ' || polrelid::regclass::text, xmin::text FROM pg_policy \
             ORDER BY 1",
            &[],
        )
        .await
        .unwrap();
    rows.iter().map(|r| (r.get(0), r.get(1))).collect()
}

#[tokio::test]
async fn shared_tenants_share_one_grant_and_still_see_only_their_own_rows() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let admin = Admin::new(&admin_url(), None, PLATFORM).unwrap();
    let names: Vec<TenantNames> = ["shared-a", "shared-b", "shared-c", "shared-d", "shared-e-app"]
        .iter()
        .map(|n| TenantNames::new(n).unwrap())
        .collect();
    for n in &names {
        admin.retire_tenant(n, DatabaseIsolation::Shared, DeletionPolicy::Delete).await.unwrap();
    }

    let mut creds = Vec::new();
    for n in &names[..2] {
        creds.push(admin.ensure_tenant(n, DatabaseIsolation::Shared, None).await.unwrap());
    }
    let platform = connect(&admin_url_for(PLATFORM)).await;
    let before = access_list_lengths(&platform).await;
    let policies_before: i64 = platform.query_one("SELECT count(*) FROM pg_policy", &[]).await.unwrap().get(0);
    assert!(before.contains_key("agent_memory"), "the platform tables exist: {before:?}");
    for n in &names[2..] {
        creds.push(admin.ensure_tenant(n, DatabaseIsolation::Shared, None).await.unwrap());
    }
    let after = access_list_lengths(&platform).await;
    assert_eq!(before, after, "three more Shared tenants grew the platform tables' access lists");
    let policies: i64 = platform.query_one("SELECT count(*) FROM pg_policy", &[]).await.unwrap().get(0);
    assert_eq!(policies, policies_before, "three more Shared tenants added policies");
    let grantees: Vec<String> = platform
        .query(
            "SELECT DISTINCT a.grantee::regrole::text FROM pg_class c, aclexplode(c.relacl) a \
             WHERE c.relnamespace = 'public'::regnamespace AND a.grantee <> 0",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(grantees.iter().any(|g| g == GROUP), "the tenants group holds the privileges: {grantees:?}");
    assert!(!grantees.iter().any(|g| g.starts_with("tenant_shared_")), "an app role is granted directly: {grantees:?}");

    // Each tenant reads and writes its own rows only.
    let (a, b) = (connect(&creds[0].url()).await, connect(&creds[1].url()).await);
    a.execute("INSERT INTO agent_memory (tenant_id, crew, content) VALUES ('shared-a', 'writers', 'a note')", &[])
        .await
        .unwrap_or_else(|e| panic!("tenant a cannot write its own memory: {e}"));
    let own: i64 = a.query_one("SELECT count(*) FROM agent_memory", &[]).await.unwrap().get(0);
    assert_eq!(own, 1, "tenant a sees its own row");
    let seen: i64 = b.query_one("SELECT count(*) FROM agent_memory", &[]).await.unwrap().get(0);
    assert_eq!(seen, 0, "tenant b sees tenant a's memory");
    let forged =
        b.execute("INSERT INTO agent_memory (tenant_id, crew, content) VALUES ('shared-a', 'x', 'forged')", &[]);
    assert!(forged.await.is_err(), "tenant b wrote a row as tenant a");

    // Becoming the group, which holds every Shared tenant's privileges, reaches no row.
    // The policy takes the tenant from the session's role: b cannot become a's role.
    let become_a = b.batch_execute(&format!("SET ROLE {}", names[0].app_role)).await;
    assert!(become_a.is_err(), "tenant b became tenant a's role");
    let authorization = b.batch_execute(&format!("SET SESSION AUTHORIZATION {}", names[0].app_role)).await;
    assert!(authorization.is_err(), "tenant b took tenant a's session authorization");
    b.batch_execute(&format!("SET ROLE {GROUP}")).await.unwrap_or_else(|e| panic!("SET ROLE: {e}"));
    let as_group: i64 = b.query_one("SELECT count(*) FROM agent_memory", &[]).await.unwrap().get(0);
    assert_eq!(as_group, 0, "as the tenants group, tenant b sees rows");
    let forged =
        b.execute("INSERT INTO agent_memory (tenant_id, crew, content) VALUES ('shared-a', 'x', 'forged')", &[]);
    assert!(forged.await.is_err(), "as the tenants group, tenant b wrote a row");
    drop((a, b));

    // Provisioning a converged tenant again (each resync does) touches no catalog row of the
    // platform database, so no session has to reload the tables' policies.
    let versions = catalog_versions(&platform).await;
    let b_creds = admin.ensure_tenant(&names[1], DatabaseIsolation::Shared, None).await.unwrap();
    assert_eq!(catalog_versions(&platform).await, versions, "a converged tenant's provisioning wrote to the catalog");

    // A policy of the tenant's own, as earlier versions made, here widened, goes at the next
    // provisioning.
    platform
        .batch_execute(&format!(
            "CREATE POLICY {} ON agent_memory AS PERMISSIVE FOR ALL TO {} USING (true)",
            names[1].policy, names[1].app_role
        ))
        .await
        .unwrap();
    let b = connect(&b_creds.url()).await;
    let widened: i64 = b.query_one("SELECT count(*) FROM agent_memory", &[]).await.unwrap().get(0);
    assert_eq!(widened, 1, "the widened policy lets tenant b see tenant a's row");
    drop(b);
    let b_creds = admin.ensure_tenant(&names[1], DatabaseIsolation::Shared, None).await.unwrap();
    let b = connect(&b_creds.url()).await;
    let seen: i64 = b.query_one("SELECT count(*) FROM agent_memory", &[]).await.unwrap().get(0);
    assert_eq!(seen, 0, "after provisioning again, tenant b still sees tenant a's memory");
    drop(b);

    // The tenant is worked out from the role's name: one whose name ends in "-app" too.
    let e = connect(&creds[4].url()).await;
    e.execute("INSERT INTO agent_memory (tenant_id, crew, content) VALUES ('shared-e-app', 'writers', 'e note')", &[])
        .await
        .unwrap_or_else(|err| panic!("tenant shared-e-app cannot write its own memory: {err}"));
    let own: i64 = e.query_one("SELECT count(*) FROM agent_memory", &[]).await.unwrap().get(0);
    assert_eq!(own, 1, "tenant shared-e-app sees exactly its own row");
    drop(e);

    // Grants an earlier version made to the app role itself go at the next provisioning.
    platform
        .batch_execute(&format!(
            "GRANT SELECT ON agent_memory TO {role}; GRANT CONNECT ON DATABASE {PLATFORM} TO {role}",
            role = names[0].app_role
        ))
        .await
        .unwrap();
    assert_ne!(access_list_lengths(&platform).await, after, "the direct grants were not made");
    admin.ensure_tenant(&names[0], DatabaseIsolation::Shared, None).await.unwrap();
    assert_eq!(access_list_lengths(&platform).await, after, "the direct grants stayed");

    for n in &names {
        admin.retire_tenant(n, DatabaseIsolation::Shared, DeletionPolicy::Delete).await.unwrap();
    }
    let left: i64 = platform
        .query_one("SELECT count(*) FROM pg_roles WHERE rolname LIKE 'tenant\\_shared\\_%'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 0, "retiring left app roles behind");
}
