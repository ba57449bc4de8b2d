//! What the tests against the harness's real PostgreSQL share: the admin URL, and a session.

/// The admin URL from BIZOSAAS_TEST_DATABASE_URL (`./dev test` sets it).
pub fn admin_url() -> String {
    std::env::var("BIZOSAAS_TEST_DATABASE_URL").ok().filter(|u| !u.is_empty()).expect(
        "no test PostgreSQL: start it with `bash tests/harness/postgres.sh up` and set BIZOSAAS_TEST_DATABASE_URL \
         to `bash tests/harness/postgres.sh url` (or run `./dev test`)",
    )
}

/// The admin URL pointed at `database`, its query (TLS settings) kept.
pub fn admin_url_for(database: &str) -> String {
    let mut url = reqwest::Url::parse(&admin_url()).expect("the admin URL is a URL");
    url.set_path(&format!("/{database}"));
    url.to_string()
}

/// A session at `url`, driven in the background.
pub async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to {}: {e}", url.split('@').next_back().unwrap_or_default()));
    tokio::spawn(conn);
    client
}
