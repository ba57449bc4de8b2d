//! Connecting as the platform's database admin and creating, disabling or dropping a
//! tenant's database, roles and policies.

use super::ident::{TenantNames, quote_ident, quote_literal};
use super::{DatabaseError, TenantCredentials, schema};
use bizosaas_crds::tenant::{DatabaseIsolation, DeletionPolicy};
use rand::RngExt;
use std::sync::Arc;
use tokio::sync::Mutex;
use tokio_postgres::{Client, Config, NoTls};

/// Connection limit of a tenant's app role.
const APP_CONNECTION_LIMIT: u32 = 20;
/// Owner of the shared platform database's tables.
const PLATFORM_OWNER: &str = "bizosaas_platform_owner";

/// The operator's admin access to PostgreSQL.
#[derive(Clone)]
pub struct Admin {
    config: Config,
    platform_database: String,
    tenant_host: String,
    tenant_port: u16,
    /// Serialises changes to the shared platform database (concurrent GRANTs on one object
    /// fail in PostgreSQL) and remembers whether its tables were created.
    shared: Arc<Mutex<bool>>,
}

impl std::fmt::Debug for Admin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admin")
            .field("platform_database", &self.platform_database)
            .field("tenant_host", &self.tenant_host)
            .finish_non_exhaustive()
    }
}

impl Admin {
    /// Parses the admin URL. `tenant_host` (`host:port`) is what tenant workloads use to
    /// reach the server; by default the admin URL's host and port.
    pub fn new(url: &str, tenant_host: Option<&str>, platform_database: &str) -> Result<Self, DatabaseError> {
        let config: Config = url.parse().map_err(|_| DatabaseError::InvalidUrl("not a PostgreSQL URL".into()))?;
        let (default_host, default_port) = match (config.get_hosts().first(), config.get_ports().first()) {
            (Some(tokio_postgres::config::Host::Tcp(h)), port) => (h.clone(), port.copied().unwrap_or(5432)),
            _ => return Err(DatabaseError::InvalidUrl("the URL needs a TCP host".into())),
        };
        let (tenant_host, tenant_port) = match tenant_host {
            Some(hp) => {
                let (h, p) = hp.rsplit_once(':').unwrap_or((hp, "5432"));
                let port = p.parse().map_err(|_| DatabaseError::InvalidUrl(format!("bad tenant host port {p:?}")))?;
                (h.to_string(), port)
            }
            None => (default_host, default_port),
        };
        Ok(Self {
            config,
            platform_database: platform_database.to_string(),
            tenant_host,
            tenant_port,
            shared: Arc::default(),
        })
    }

    /// The `host` and `port` tenant workloads connect to: what their database egress allows.
    pub fn tenant_address(&self) -> (&str, u16) {
        (&self.tenant_host, self.tenant_port)
    }

    /// Opens a connection to `database` (the admin URL's database when `None`).
    async fn connect(&self, database: Option<&str>) -> Result<Client, DatabaseError> {
        let mut config = self.config.clone();
        if let Some(db) = database {
            config.dbname(db);
        }
        let (client, connection) = config.connect(NoTls).await.map_err(|e| DatabaseError::Connect(e.to_string()))?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "admin connection closed");
            }
        });
        Ok(client)
    }

    /// Checks that the server answers.
    pub async fn ping(&self) -> Result<(), DatabaseError> {
        self.connect(None).await?.simple_query("SELECT 1").await.map_err(DatabaseError::statement("a ping"))?;
        Ok(())
    }

    /// Creates or repairs everything a tenant needs and returns its app role's credentials.
    /// `password` is the one already handed out (from the tenant's Secret); without it a new
    /// one is generated and set.
    pub async fn ensure_tenant(
        &self,
        names: &TenantNames,
        isolation: DatabaseIsolation,
        password: Option<&str>,
    ) -> Result<TenantCredentials, DatabaseError> {
        let admin = self.connect(None).await?;
        let password = match password {
            Some(p) if p.chars().all(|c| c.is_ascii_alphanumeric()) && p.len() >= 24 => p.to_string(),
            _ => generate_password(),
        };
        match isolation {
            DatabaseIsolation::Dedicated => {
                ensure_role(&admin, &names.owner_role, "NOLOGIN NOINHERIT").await?;
                ensure_app_role(&admin, &names.app_role, &password).await?;
                ensure_database(&admin, &names.database, &names.owner_role).await?;
                let db = quote_ident(&names.database);
                let app = quote_ident(&names.app_role);
                run(
                    &admin,
                    "database grants",
                    &format!(
                        "REVOKE ALL ON DATABASE {db} FROM PUBLIC; GRANT CONNECT, TEMPORARY ON DATABASE {db} TO {app};"
                    ),
                )
                .await?;
                let tenant_db = self.connect(Some(&names.database)).await?;
                run(&tenant_db, "tenant tables", &schema::tables(&names.owner_role)).await?;
                run(&tenant_db, "tenant policies", &schema::tenant_access(names)?).await?;
            }
            DatabaseIsolation::Shared => {
                let mut platform_ready = self.shared.lock().await;
                if !*platform_ready {
                    self.ensure_platform_database(&admin).await?;
                    *platform_ready = true;
                }
                ensure_app_role(&admin, &names.app_role, &password).await?;
                let db = quote_ident(&self.platform_database);
                run(
                    &admin,
                    "platform grants",
                    &format!("GRANT CONNECT ON DATABASE {db} TO {};", quote_ident(&names.app_role)),
                )
                .await?;
                let platform = self.connect(Some(&self.platform_database)).await?;
                run(&platform, "tenant policies", &schema::tenant_access(names)?).await?;
            }
        }
        Ok(self.credentials(names, isolation, password))
    }

    /// The credentials of a tenant whose database is known to be in place.
    pub fn credentials(
        &self,
        names: &TenantNames,
        isolation: DatabaseIsolation,
        password: String,
    ) -> TenantCredentials {
        let database = match isolation {
            DatabaseIsolation::Dedicated => names.database.clone(),
            DatabaseIsolation::Shared => self.platform_database.clone(),
        };
        TenantCredentials {
            host: self.tenant_host.clone(),
            port: self.tenant_port,
            database,
            username: names.app_role.clone(),
            password,
        }
    }

    /// Creates the shared platform database and its RLS-guarded tables.
    async fn ensure_platform_database(&self, admin: &Client) -> Result<(), DatabaseError> {
        ensure_role(admin, PLATFORM_OWNER, "NOLOGIN NOINHERIT").await?;
        ensure_database(admin, &self.platform_database, PLATFORM_OWNER).await?;
        run(
            admin,
            "platform database grants",
            &format!("REVOKE ALL ON DATABASE {} FROM PUBLIC;", quote_ident(&self.platform_database)),
        )
        .await?;
        let platform = self.connect(Some(&self.platform_database)).await?;
        run(&platform, "platform tables", &schema::tables(PLATFORM_OWNER)).await
    }

    /// Applies a Tenant's deletion policy: `Delete` drops its data and roles, `Retain` keeps
    /// the data and disables the app role's login. Sessions of the app role are ended either way.
    pub async fn retire_tenant(
        &self,
        names: &TenantNames,
        isolation: DatabaseIsolation,
        policy: DeletionPolicy,
    ) -> Result<(), DatabaseError> {
        let admin = self.connect(None).await?;
        let app = quote_ident(&names.app_role);
        if role_exists(&admin, &names.app_role).await?.is_some() {
            run(&admin, "disabling login", &format!("ALTER ROLE {app} NOLOGIN;")).await?;
        }
        admin
            .execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1", &[&names.app_role])
            .await
            .map_err(DatabaseError::statement("ending sessions"))?;
        if policy == DeletionPolicy::Retain {
            return Ok(());
        }
        match isolation {
            DatabaseIsolation::Dedicated => {
                run(
                    &admin,
                    "dropping the database",
                    &format!("DROP DATABASE IF EXISTS {} WITH (FORCE);", quote_ident(&names.database)),
                )
                .await?;
            }
            DatabaseIsolation::Shared => {
                let _serialised = self.shared.lock().await;
                if database_exists(&admin, &self.platform_database).await? {
                    // Idempotent: a second cleanup after the role is gone only deletes rows.
                    let role_left = role_exists(&admin, &names.app_role).await?.is_some();
                    let platform = self.connect(Some(&self.platform_database)).await?;
                    run(&platform, "removing tenant rows", &schema::remove_tenant(names, role_left)?).await?;
                }
            }
        }
        // Privileges and policies the app role still holds elsewhere (another operator's
        // platform database, say) would refuse the DROP ROLE and wedge the deletion.
        let elsewhere = admin
            .query(
                "SELECT DISTINCT d.datname FROM pg_shdepend s JOIN pg_database d ON d.oid = s.dbid \
                 WHERE s.refobjid = (SELECT oid FROM pg_roles WHERE rolname = $1)",
                &[&names.app_role],
            )
            .await
            .map_err(DatabaseError::statement("finding what a role holds"))?;
        for row in elsewhere {
            let database: String = row.get(0);
            let client = self.connect(Some(&database)).await?;
            run(&client, "revoking what a role holds", &format!("DROP OWNED BY {app};")).await?;
        }
        for role in [&names.app_role, &names.owner_role] {
            run(&admin, "dropping a role", &format!("DROP ROLE IF EXISTS {};", quote_ident(role))).await?;
        }
        Ok(())
    }
}

fn generate_password() -> String {
    rand::rng().sample_iter(rand::distr::Alphanumeric).take(32).map(char::from).collect()
}

async fn run(client: &Client, action: &'static str, sql: &str) -> Result<(), DatabaseError> {
    client.batch_execute(sql).await.map_err(DatabaseError::statement(action))
}

/// `Some(can_login)` when the role exists.
async fn role_exists(client: &Client, role: &str) -> Result<Option<bool>, DatabaseError> {
    let row = client
        .query_opt("SELECT rolcanlogin FROM pg_roles WHERE rolname = $1", &[&role])
        .await
        .map_err(DatabaseError::statement("looking up a role"))?;
    Ok(row.map(|r| r.get(0)))
}

async fn database_exists(client: &Client, database: &str) -> Result<bool, DatabaseError> {
    let row = client
        .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&database])
        .await
        .map_err(DatabaseError::statement("looking up a database"))?;
    Ok(row.is_some())
}

async fn ensure_role(client: &Client, role: &str, attributes: &str) -> Result<(), DatabaseError> {
    if role_exists(client, role).await?.is_none() {
        run(client, "creating a role", &format!("CREATE ROLE {} {attributes};", quote_ident(role))).await?;
    }
    Ok(())
}

/// The app role: LOGIN, never superuser, never BYPASSRLS, with a connection limit.
async fn ensure_app_role(client: &Client, role: &str, password: &str) -> Result<(), DatabaseError> {
    let verb = if role_exists(client, role).await?.is_some() { "ALTER" } else { "CREATE" };
    let sql = format!(
        "{verb} ROLE {} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS NOINHERIT \
         CONNECTION LIMIT {APP_CONNECTION_LIMIT} PASSWORD {};",
        quote_ident(role),
        quote_literal(password)?
    );
    run(client, "creating the app role", &sql).await
}

async fn ensure_database(client: &Client, database: &str, owner: &str) -> Result<(), DatabaseError> {
    if !database_exists(client, database).await? {
        let sql = format!("CREATE DATABASE {} OWNER {};", quote_ident(database), quote_ident(owner));
        match client.batch_execute(&sql).await {
            Ok(()) => {}
            // Another reconcile created it a moment ago.
            Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::DUPLICATE_DATABASE) => {}
            Err(e) => return Err(DatabaseError::statement("creating the database")(e)),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_long_and_alphanumeric() {
        let a = generate_password();
        assert_eq!(a.len(), 32);
        assert!(a.chars().all(|c| c.is_ascii_alphanumeric()));
        assert_ne!(a, generate_password());
    }

    #[test]
    fn tenant_host_defaults_to_the_admin_url() {
        let admin = Admin::new("postgres://admin:pw@db.internal:6543/postgres", None, "bizosaas_platform").unwrap();
        assert_eq!((admin.tenant_host.as_str(), admin.tenant_port), ("db.internal", 6543));
        let admin =
            Admin::new("postgres://admin:pw@127.0.0.1:6543/postgres", Some("pg.bizosaas-system:5432"), "p").unwrap();
        assert_eq!(admin.tenant_address(), ("pg.bizosaas-system", 5432));
        assert!(Admin::new("not a url", None, "p").is_err());
    }
}
