//! Who may write and read a tenant's audit log, on the harness's real PostgreSQL: the tenant's
//! app role may append its own entries and read none; the gateway's role may append its
//! requests and read every tenant's log, and nothing else; the operator appends each of its
//! actions once. Nobody rewrites or deletes an entry, and nobody passes for another writer.
//!
//! The admin URL comes from BIZOSAAS_TEST_DATABASE_URL (`./dev test` sets it); start the
//! server with `bash tests/harness/postgres.sh up`.

mod support;

use bizosaas_controllers::postgres::{Admin, GATEWAY_ROLE, TenantNames};
use bizosaas_crds::tenant::{DatabaseIsolation, DeletionPolicy};
use support::{admin_url, admin_url_for, connect};
use tokio_postgres::error::SqlState;

const PLATFORM: &str = "bizosaas_platform_audit";

/// A session in `database` that acts as the gateway's role (its password is the operator's).
async fn as_gateway(database: &str) -> tokio_postgres::Client {
    let client = connect(&admin_url_for(database)).await;
    client.batch_execute(&format!("SET ROLE {GATEWAY_ROLE}")).await.unwrap();
    client
}

fn refused(result: Result<u64, tokio_postgres::Error>, code: &SqlState, what: &str) {
    let err = result.err().unwrap_or_else(|| panic!("{what} was allowed"));
    assert_eq!(err.code(), Some(code), "{what}: {err}");
}

#[tokio::test]
async fn the_audit_log_is_appended_to_by_its_writers_and_read_by_the_gateway_only() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let admin = Admin::new(&admin_url(), None, PLATFORM).unwrap();
    let (dedicated, shared, other) = (
        TenantNames::new("audit-a").unwrap(),
        TenantNames::new("audit-b").unwrap(),
        TenantNames::new("audit-c").unwrap(),
    );
    let cases = [
        (&dedicated, DatabaseIsolation::Dedicated),
        (&shared, DatabaseIsolation::Shared),
        (&other, DatabaseIsolation::Shared),
    ];
    for (names, isolation) in cases {
        admin.retire_tenant(names, isolation, DeletionPolicy::Delete).await.unwrap();
    }
    let creds = admin.ensure_tenant(&shared, DatabaseIsolation::Shared, None).await.unwrap();
    admin.ensure_tenant(&other, DatabaseIsolation::Shared, None).await.unwrap();
    admin.ensure_tenant(&dedicated, DatabaseIsolation::Dedicated, None).await.unwrap();

    // The tenant's app role: appends its own entries, reads none, forges nobody's.
    let app = connect(&creds.url()).await;
    app.execute(
        "INSERT INTO audit_log (tenant_id, actor, action) VALUES ('audit-b', 'billing-job', 'invoice.sent')",
        &[],
    )
    .await
    .unwrap();
    let forged = app
        .execute(
            "INSERT INTO audit_log (tenant_id, source, actor, action) VALUES ('audit-b', 'gateway', 'oidc:alice', 'crewrun.create')",
            &[],
        )
        .await;
    refused(forged, &SqlState::INSUFFICIENT_PRIVILEGE, "the app role writing a gateway entry");
    let into_other =
        app.execute("INSERT INTO audit_log (tenant_id, actor, action) VALUES ('audit-c', 'spy', 'x')", &[]).await;
    refused(into_other, &SqlState::INSUFFICIENT_PRIVILEGE, "the app role writing another tenant's log");
    let read = app.query("SELECT * FROM audit_log", &[]).await.expect_err("the app role read the audit log");
    assert_eq!(read.code(), Some(&SqlState::INSUFFICIENT_PRIVILEGE), "{read}");
    refused(
        app.execute("DELETE FROM audit_log", &[]).await,
        &SqlState::INSUFFICIENT_PRIVILEGE,
        "the app role deleting",
    );

    // The gateway's role: appends as the gateway and reads any tenant's log, in the shared
    // database and in a Dedicated one; touches nothing else and rewrites nothing.
    for database in [PLATFORM, dedicated.database.as_str()] {
        let gateway = as_gateway(database).await;
        let tenant = if database == PLATFORM { "audit-b" } else { "audit-a" };
        gateway
            .execute(
                "INSERT INTO audit_log (tenant_id, source, actor, groups, action, target, outcome, request_id) \
                 VALUES ($1, 'gateway', 'oidc:alice', '{oidc:acme-admins}', 'crewrun.create', 'agentcrews/w/runs', 'success', 'r1')",
                &[&tenant],
            )
            .await
            .unwrap_or_else(|e| panic!("the gateway cannot append in {database}: {e}"));
        let posing = gateway
            .execute(
                "INSERT INTO audit_log (tenant_id, source, actor, action) VALUES ($1, 'operator', 'x', 'database.provisioned')",
                &[&tenant],
            )
            .await;
        refused(posing, &SqlState::INSUFFICIENT_PRIVILEGE, "the gateway writing an operator entry");
        let seen: i64 = gateway
            .query_one("SELECT count(*) FROM audit_log WHERE tenant_id = $1 AND request_id = 'r1'", &[&tenant])
            .await
            .unwrap()
            .get(0);
        assert_eq!(seen, 1, "the gateway reads back what it wrote in {database}");
        for statement in ["UPDATE audit_log SET outcome = 'success'", "DELETE FROM audit_log"] {
            refused(gateway.execute(statement, &[]).await, &SqlState::INSUFFICIENT_PRIVILEGE, statement);
        }
        for table in ["agent_memory", "usage_events", "agent_runs", "token_budgets", "token_reservations"] {
            let read = gateway.query(&format!("SELECT * FROM {table}"), &[]).await.err();
            let err = read.unwrap_or_else(|| panic!("the gateway read {table}"));
            assert_eq!(err.code(), Some(&SqlState::INSUFFICIENT_PRIVILEGE), "{table}: {err}");
        }
    }
    let tenant_entries: i64 = as_gateway(PLATFORM)
        .await
        .query_one("SELECT count(*) FROM audit_log WHERE tenant_id = 'audit-b' AND source = 'tenant'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(tenant_entries, 1, "the tenant's own entry is marked as its own");

    // The operator: one entry per action and key, however often a reconcile repeats it.
    for _ in 0..3 {
        admin
            .record_action(
                &shared,
                DatabaseIsolation::Shared,
                "tenant.suspended",
                "uid-1/4",
                serde_json::json!({"generation": 4}),
            )
            .await
            .unwrap();
    }
    admin
        .record_action(&shared, DatabaseIsolation::Shared, "tenant.resumed", "uid-1/5", serde_json::json!({}))
        .await
        .unwrap();
    admin
        .record_action(&dedicated, DatabaseIsolation::Dedicated, "database.provisioned", "uid-2", serde_json::json!({}))
        .await
        .unwrap();
    let platform = as_gateway(PLATFORM).await;
    let rows = platform
        .query(
            "SELECT action, actor, target FROM audit_log WHERE tenant_id = 'audit-b' AND source = 'operator' ORDER BY id",
            &[],
        )
        .await
        .unwrap();
    let got: Vec<(String, String, String)> = rows.iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect();
    let want = |a: &str| (a.to_string(), "bizosaas-operator".to_string(), "tenants/audit-b".to_string());
    assert_eq!(got, [want("tenant.suspended"), want("tenant.resumed")]);
    let in_dedicated: i64 = as_gateway(&dedicated.database)
        .await
        .query_one("SELECT count(*) FROM audit_log WHERE source = 'operator' AND action = 'database.provisioned'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(in_dedicated, 1, "the operator's entry goes to the Dedicated tenant's own database");

    for (names, isolation) in cases {
        admin.retire_tenant(names, isolation, DeletionPolicy::Delete).await.unwrap();
    }
}
