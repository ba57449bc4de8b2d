//! Tenant databases for the tests on the harness's real PostgreSQL, provisioned by the
//! operator's own code (`bizosaas_controllers::postgres::Admin`): the tables, their owner,
//! forced row-level security and the app role's policies are exactly what a tenant gets.
//!
//! The admin URL comes from BIZOSAAS_TEST_DATABASE_URL, else from
//! `bash tests/harness/postgres.sh url`; start the server with `bash tests/harness/postgres.sh up`.
#![allow(dead_code)]

use bizosaas_controllers::postgres::{Admin, TenantCredentials, TenantNames};
use bizosaas_crds::tenant::{DatabaseIsolation, DeletionPolicy};
use futures::FutureExt;
use tokio_postgres::{Client, NoTls};

pub const HOW: &str =
    "start it with `bash tests/harness/postgres.sh up` (or set BIZOSAAS_TEST_DATABASE_URL to an admin URL)";

pub fn admin_url() -> String {
    if let Ok(url) = std::env::var("BIZOSAAS_TEST_DATABASE_URL")
        && !url.is_empty()
    {
        return url;
    }
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/harness/postgres.sh");
    let out = std::process::Command::new("bash")
        .args([script, "url"])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {script}: {e}; {HOW}"));
    assert!(
        out.status.success(),
        "the PostgreSQL harness has no URL ({}); {HOW}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

pub async fn connect(url: &str) -> Client {
    let (client, connection) = tokio_postgres::connect(url, NoTls)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to the test PostgreSQL: {e}; {HOW}"));
    tokio::spawn(connection);
    client
}

/// `url` with another database.
pub fn with_database(url: &str, database: &str) -> String {
    let mut url = reqwest::Url::parse(url).expect("database URL");
    url.set_path(&format!("/{database}"));
    url.to_string()
}

/// A provisioned tenant.
#[derive(Clone, Debug)]
pub struct TestTenant {
    /// The tenant's name: `tenant_id` of its rows, and the crew's `tenant`.
    pub name: String,
    pub names: TenantNames,
    pub credentials: TenantCredentials,
    /// The tenant's app role (LOGIN, NOBYPASSRLS, not the owner): what the runtime uses.
    pub app_url: String,
    /// The admin in the tenant's database (bypasses row-level security).
    pub admin_url: String,
}

impl TestTenant {
    pub async fn app(&self) -> Client {
        connect(&self.app_url).await
    }

    pub async fn admin(&self) -> Client {
        connect(&self.admin_url).await
    }
}

/// Provisions one tenant per prefix (names made unique), runs `scenario`, then removes the
/// tenants as the operator does on deletion, also when the scenario panicked. With `Shared`
/// isolation all tenants are in one platform database of this call's own.
pub async fn with_tenants<F>(isolation: DatabaseIsolation, prefixes: &[&str], scenario: F)
where
    F: AsyncFnOnce(Vec<TestTenant>),
{
    let url = admin_url();
    let suffix = format!("{:08x}", rand::random::<u32>());
    let platform = format!("agent_test_platform_{suffix}");
    let admin = Admin::new(&url, None, &platform).expect("admin URL");
    admin.ping().await.unwrap_or_else(|e| panic!("the test PostgreSQL does not answer: {e}; {HOW}"));
    let names: Vec<TenantNames> =
        prefixes.iter().map(|p| TenantNames::new(&format!("{p}-{suffix}")).expect("tenant name")).collect();
    let outcome = std::panic::AssertUnwindSafe(async {
        let mut tenants = Vec::new();
        for n in &names {
            let credentials = admin.ensure_tenant(n, isolation, None).await.expect("tenant provisioned");
            tenants.push(TestTenant {
                name: n.tenant_id.clone(),
                names: n.clone(),
                app_url: credentials.url(),
                admin_url: with_database(&url, &credentials.database),
                credentials,
            });
        }
        scenario(tenants).await
    })
    .catch_unwind()
    .await;
    for n in &names {
        if let Err(e) = admin.retire_tenant(n, isolation, DeletionPolicy::Delete).await {
            eprintln!("cleanup of tenant {}: {e}", n.tenant_id);
        }
    }
    if isolation == DatabaseIsolation::Shared {
        let client = connect(&url).await;
        let _ = client.batch_execute(&format!("DROP DATABASE IF EXISTS {platform} WITH (FORCE)")).await;
    }
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}
