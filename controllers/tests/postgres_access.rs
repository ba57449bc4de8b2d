//! What a tenant's app role can do on the harness's real PostgreSQL: it logs in with the
//! password it was given (stored only as a SCRAM-SHA-256 verifier), reaches its own database,
//! and is refused at the maintenance databases and at another tenant's database.
//!
//! The admin URL comes from BIZOSAAS_TEST_DATABASE_URL (`./dev test` sets it); start the
//! server with `bash tests/harness/postgres.sh up`.

use bizosaas_controllers::postgres::{Admin, TenantCredentials, TenantNames};
use bizosaas_crds::tenant::{DatabaseIsolation, DeletionPolicy};
use tokio_postgres::error::SqlState;

fn admin_url() -> String {
    std::env::var("BIZOSAAS_TEST_DATABASE_URL").ok().filter(|u| !u.is_empty()).expect(
        "no test PostgreSQL: start it with `bash tests/harness/postgres.sh up` and set BIZOSAAS_TEST_DATABASE_URL \
         to `bash tests/harness/postgres.sh url` (or run `./dev test`)",
    )
}

async fn connect(url: &str) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    Ok(client)
}

/// The app role's URL pointed at `database`.
fn url_for(creds: &TenantCredentials, database: &str) -> String {
    TenantCredentials { database: database.to_string(), ..creds.clone() }.url()
}

#[tokio::test]
async fn an_app_role_logs_in_with_its_verifier_and_reaches_only_its_own_database() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let url = admin_url();
    let db = connect(&url).await.unwrap();
    let admin = Admin::new(&url, None, "bizosaas_platform_access").unwrap();
    let (a, b) = (TenantNames::new("access-a").unwrap(), TenantNames::new("access-b").unwrap());
    for names in [&a, &b] {
        admin.retire_tenant(names, DatabaseIsolation::Dedicated, DeletionPolicy::Delete).await.unwrap();
    }
    let creds = admin.ensure_tenant(&a, DatabaseIsolation::Dedicated, None).await.unwrap();
    admin.ensure_tenant(&b, DatabaseIsolation::Dedicated, None).await.unwrap();

    let stored: String =
        db.query_one("SELECT rolpassword FROM pg_authid WHERE rolname = $1", &[&a.app_role]).await.unwrap().get(0);
    assert!(stored.starts_with("SCRAM-SHA-256$4096:"), "the server holds {stored:.16}..., not a SCRAM verifier");
    assert!(!stored.contains(&creds.password), "the server holds the password itself");

    let own = connect(&creds.url()).await.unwrap_or_else(|e| panic!("the app role cannot log in: {e}"));
    let one: i32 = own.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1);

    for database in ["postgres", "template1", b.database.as_str()] {
        let Err(err) = connect(&url_for(&creds, database)).await else {
            panic!("{} connected to {database}", a.app_role)
        };
        assert_eq!(err.code(), Some(&SqlState::INSUFFICIENT_PRIVILEGE), "{database}: {err}");
    }
    let wrong = TenantCredentials { password: "not-the-password-at-all-0".into(), ..creds.clone() };
    let Err(err) = connect(&wrong.url()).await else { panic!("a wrong password logged in") };
    assert_eq!(err.code(), Some(&SqlState::INVALID_PASSWORD), "{err}");

    for names in [&a, &b] {
        admin.retire_tenant(names, DatabaseIsolation::Dedicated, DeletionPolicy::Delete).await.unwrap();
    }
}
