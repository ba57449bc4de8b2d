//! Deleting a tenant's roles on the harness's real PostgreSQL when the app role also holds
//! privileges and policies in another platform database (a second operator's, a benchmark's):
//! the deletion must not wedge on `DROP ROLE`.
//!
//! The admin URL comes from BIZOSAAS_TEST_DATABASE_URL (`./dev test` sets it); start the
//! server with `bash tests/harness/postgres.sh up`.

use bizosaas_controllers::postgres::{Admin, TenantNames};
use bizosaas_crds::tenant::{DatabaseIsolation, DeletionPolicy};

fn admin_url() -> String {
    std::env::var("BIZOSAAS_TEST_DATABASE_URL").ok().filter(|u| !u.is_empty()).expect(
        "no test PostgreSQL: start it with `bash tests/harness/postgres.sh up` and set BIZOSAAS_TEST_DATABASE_URL \
         to `bash tests/harness/postgres.sh url` (or run `./dev test`)",
    )
}

#[tokio::test]
async fn a_shared_tenant_is_removed_even_when_another_platform_database_names_its_role() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let url = admin_url();
    let (db, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    let platforms = ["bizosaas_platform_retire_a", "bizosaas_platform_retire_b"];
    let drop_platforms = async || {
        for platform in platforms {
            db.batch_execute(&format!("DROP DATABASE IF EXISTS {platform} WITH (FORCE)")).await.unwrap();
        }
    };
    drop_platforms().await;
    let names = TenantNames::new("retire-elsewhere").unwrap();
    let ours = Admin::new(&url, None, platforms[0]).unwrap();
    let theirs = Admin::new(&url, None, platforms[1]).unwrap();
    ours.ensure_tenant(&names, DatabaseIsolation::Shared, None).await.unwrap();
    theirs.ensure_tenant(&names, DatabaseIsolation::Shared, None).await.unwrap();

    ours.retire_tenant(&names, DatabaseIsolation::Shared, DeletionPolicy::Delete).await.unwrap();

    let roles = vec![names.app_role.clone(), names.owner_role.clone()];
    let left: i64 =
        db.query_one("SELECT count(*) FROM pg_roles WHERE rolname = ANY($1)", &[&roles]).await.unwrap().get(0);
    assert_eq!(left, 0, "the tenant's roles are gone");
    drop_platforms().await;
}
