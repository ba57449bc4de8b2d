//! The operator's admin connections to PostgreSQL are bounded: however many tenants are
//! provisioned and retired at once, the server never sees more than three connections per
//! operation slot from one `Admin`: its pooled connections to the admin URL's and the
//! platform database, and an operation's own connection to a tenant's database.
//!
//! The admin URL comes from BIZOSAAS_TEST_DATABASE_URL (`./dev test` sets it); start the
//! server with `bash tests/harness/postgres.sh up`.

use bizosaas_controllers::postgres::{Admin, MAX_CONCURRENT_OPERATIONS, TenantNames};
use bizosaas_crds::tenant::{DatabaseIsolation, DeletionPolicy};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};

const APPLICATION: &str = "bizosaas-bound-test";
const TENANTS: usize = 12;

fn admin_url() -> String {
    std::env::var("BIZOSAAS_TEST_DATABASE_URL").ok().filter(|u| !u.is_empty()).expect(
        "no test PostgreSQL: start it with `bash tests/harness/postgres.sh up` and set BIZOSAAS_TEST_DATABASE_URL \
         to `bash tests/harness/postgres.sh url` (or run `./dev test`)",
    )
}

/// Samples the server's count of the admin's connections until `stop`; the highest seen.
async fn sample(url: String, stop: Arc<AtomicBool>, peak: Arc<AtomicI64>) {
    let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    while !stop.load(Ordering::Relaxed) {
        let row = client
            .query_one("SELECT count(*) FROM pg_stat_activity WHERE application_name = $1", &[&APPLICATION])
            .await
            .unwrap();
        peak.fetch_max(row.get(0), Ordering::Relaxed);
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_provisioning_holds_at_most_three_connections_per_operation_slot() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let url = admin_url();
    let tagged = format!("{url}{}application_name={APPLICATION}", if url.contains('?') { '&' } else { '?' });
    let admin = Admin::new(&tagged, None, "bizosaas_platform_bound").unwrap();
    let names: Vec<TenantNames> = (0..TENANTS).map(|i| TenantNames::new(&format!("bound-{i}")).unwrap()).collect();
    // Half of each so both pools fill while tenants' own databases are connected to.
    let isolation =
        |i: usize| if i.is_multiple_of(2) { DatabaseIsolation::Dedicated } else { DatabaseIsolation::Shared };

    let (stop, peak) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicI64::new(0)));
    let sampler = tokio::spawn(sample(url.clone(), stop.clone(), peak.clone()));
    let provisioned = futures::future::join_all(names.iter().enumerate().map(|(i, n)| {
        let admin = admin.clone();
        async move { admin.ensure_tenant(n, isolation(i), None).await }
    }))
    .await;
    let retired = futures::future::join_all(names.iter().enumerate().map(|(i, n)| {
        let admin = admin.clone();
        async move { admin.retire_tenant(n, isolation(i), DeletionPolicy::Delete).await }
    }))
    .await;
    stop.store(true, Ordering::Relaxed);
    sampler.await.unwrap();

    for result in provisioned {
        result.expect("every tenant is provisioned");
    }
    for result in retired {
        result.expect("every tenant is retired");
    }
    let peak = peak.load(Ordering::Relaxed);
    let bound = 3 * MAX_CONCURRENT_OPERATIONS as i64;
    assert!(peak <= bound, "{peak} admin connections at once, more than {bound}");
    assert!(peak >= 2, "the sampler saw {peak} admin connections: the operations did not overlap");

    // What stays open is the pools' idle connections for the next operations, none to a
    // tenant's database (all of them are gone).
    let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    let left: Vec<String> = client
        .query("SELECT datname::text FROM pg_stat_activity WHERE application_name = $1", &[&APPLICATION])
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert!(!left.is_empty(), "no admin connection was kept for reuse");
    assert!(left.len() <= 2 * MAX_CONCURRENT_OPERATIONS, "{} idle admin connections kept: {left:?}", left.len());
    assert!(left.iter().all(|db| !db.starts_with("tenant_")), "connections to tenant databases stayed open: {left:?}");
}
