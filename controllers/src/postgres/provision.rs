//! Connecting as the platform's database admin and creating, disabling or dropping a
//! tenant's database, roles and policies.

use super::claim::{self, Claim, Mark};
use super::ident::{TenantNames, quote_ident, quote_literal};
use super::schema::GATEWAY_ROLE;
use super::{DatabaseError, TenantCredentials, schema, tls};
use bizosaas_crds::tenant::{DatabaseIsolation, DeletionPolicy};
use rand::RngExt;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use tokio::sync::{Mutex, OnceCell, Semaphore, SemaphorePermit};
use tokio_postgres::{Client, Config, NoTls};

mod shared_access;
mod usage_export;
pub use usage_export::{UsageBatch, UsageEvent};

/// Connection limit of a tenant's app role.
const APP_CONNECTION_LIMIT: u32 = 20;
/// Connection limit of the gateway's role, over all its replicas.
const GATEWAY_CONNECTION_LIMIT: u32 = 100;
/// Owner of the shared platform database's tables.
const PLATFORM_OWNER: &str = "bizosaas_platform_owner";
/// Databases every role may connect to on a fresh server; tenant roles must not.
const MAINTENANCE_DATABASES: [&str; 2] = ["postgres", "template1"];
/// Database operations (provisioning, retiring, a ping) run at once. Each holds at most two
/// admin connections (the server's, and a tenant's or the platform's database). The
/// connections to the admin URL's database and the platform database are pooled, one per
/// slot, and a tenant's own database is connected to for one operation only, so however
/// many tenants reconcile together the operator holds at most 12.
pub const MAX_CONCURRENT_OPERATIONS: usize = 4;

/// The operator's admin access to PostgreSQL.
#[derive(Clone)]
pub struct Admin {
    config: Config,
    ssl_mode: tls::SslMode,
    /// The TLS connector `ssl_mode` asks for; `None` for unencrypted connections.
    tls: Option<tokio_postgres_rustls::MakeRustlsConnect>,
    platform_database: String,
    /// Holds every Shared tenant's privileges in the platform database.
    shared_tenants: String,
    tenant_host: String,
    tenant_port: u16,
    /// Serialises changes to the shared platform database (concurrent GRANTs on one object
    /// fail in PostgreSQL) and remembers whether its tables were created.
    shared: Arc<Mutex<bool>>,
    /// Set once CONNECT has been revoked from PUBLIC on the maintenance databases and the
    /// gateway's role exists (every tenant database grants it the audit log).
    server_prepared: Arc<OnceCell<()>>,
    /// Bounds the operations in flight, and with them the admin connections.
    operations: Arc<Semaphore>,
    /// Idle connections to the admin URL's database and to the platform database, reused:
    /// every tenant's provisioning needs both, and a new connection costs the server a
    /// backend and both sides a SCRAM exchange. A tenant's own database is connected to anew.
    pools: Pools,
}

#[derive(Clone)]
struct Pools {
    admin: deadpool_postgres::Pool,
    platform: deadpool_postgres::Pool,
}

impl Pools {
    /// At most one connection per operation slot to each database.
    fn new(
        config: &Config,
        platform_database: &str,
        tls: Option<&tokio_postgres_rustls::MakeRustlsConnect>,
    ) -> Result<Self, DatabaseError> {
        let pool = |config: Config| {
            // Each checkout resets the session (and fails, dropping the connection, inside a
            // transaction an earlier user left aborted).
            let recycling =
                deadpool_postgres::ManagerConfig { recycling_method: deadpool_postgres::RecyclingMethod::Clean };
            let manager = match tls {
                Some(tls) => deadpool_postgres::Manager::from_config(config, tls.clone(), recycling),
                None => deadpool_postgres::Manager::from_config(config, NoTls, recycling),
            };
            deadpool_postgres::Pool::builder(manager)
                .max_size(MAX_CONCURRENT_OPERATIONS)
                .build()
                .map_err(|e| DatabaseError::Connect(format!("cannot set up the connection pool: {e}")))
        };
        let mut platform = config.clone();
        platform.dbname(platform_database);
        Ok(Self { admin: pool(config.clone())?, platform: pool(platform)? })
    }
}

/// An admin connection: one from a pool (back to it when dropped) or one of its own.
enum Connection {
    Pooled(deadpool_postgres::Object),
    Own(Client),
}

impl std::ops::Deref for Connection {
    type Target = Client;

    fn deref(&self) -> &Client {
        match self {
            Connection::Pooled(pooled) => pooled,
            Connection::Own(client) => client,
        }
    }
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
    /// The URL's `sslmode` (up to `verify-full`) and `sslrootcert` choose how the server is
    /// reached; [`Admin::with_ca_file`] names the CA bundle instead.
    pub fn new(url: &str, tenant_host: Option<&str>, platform_database: &str) -> Result<Self, DatabaseError> {
        let split = tls::split_url(url)?;
        let mut config: Config =
            split.url.parse().map_err(|_| DatabaseError::InvalidUrl("not a PostgreSQL URL".into()))?;
        if split.url != url || split.mode != tls::SslMode::Disable {
            config.ssl_mode(split.mode.client_mode());
        }
        let tls = tls::connector(split.mode, split.root_cert.as_deref().map(Path::new))?;
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
        let pools = Pools::new(&config, platform_database, tls.as_ref())?;
        Ok(Self {
            pools,
            config,
            ssl_mode: split.mode,
            tls,
            platform_database: platform_database.to_string(),
            shared_tenants: super::ident::shared_tenants_role(platform_database)?,
            tenant_host,
            tenant_port,
            shared: Arc::default(),
            server_prepared: Arc::default(),
            operations: Arc::new(Semaphore::new(MAX_CONCURRENT_OPERATIONS)),
        })
    }

    /// Trusts the PEM bundle `ca_file` for the server's certificate (the URL's `sslmode`
    /// says whether the name is checked too).
    pub fn with_ca_file(mut self, ca_file: &Path) -> Result<Self, DatabaseError> {
        self.tls = tls::connector(self.ssl_mode, Some(ca_file))?;
        self.pools = Pools::new(&self.config, &self.platform_database, self.tls.as_ref())?;
        Ok(self)
    }

    /// The `host` and `port` tenant workloads connect to: what their database egress allows.
    pub fn tenant_address(&self) -> (&str, u16) {
        (&self.tenant_host, self.tenant_port)
    }

    /// Waits for a free operation slot; every public operation holds one throughout, and
    /// nested calls use the private forms so one operation never waits for a second slot.
    async fn slot(&self) -> SemaphorePermit<'_> {
        self.operations.acquire().await.expect("the operations semaphore is never closed")
    }

    /// A connection to `database` (the admin URL's database when `None`): from a pool for
    /// the admin and platform databases, else a new one.
    async fn connect(&self, database: Option<&str>) -> Result<Connection, DatabaseError> {
        let pool = match database {
            None => Some(&self.pools.admin),
            Some(db) if db == self.platform_database => Some(&self.pools.platform),
            Some(_) => None,
        };
        match pool {
            Some(pool) => pool.get().await.map(Connection::Pooled).map_err(|e| match e {
                deadpool_postgres::PoolError::Backend(e) => connect_error(e),
                other => DatabaseError::Connect(other.to_string()),
            }),
            None => self.open(database).await.map(Connection::Own),
        }
    }

    /// Opens a connection of its own to `database`.
    async fn open(&self, database: Option<&str>) -> Result<Client, DatabaseError> {
        let mut config = self.config.clone();
        if let Some(db) = database {
            config.dbname(db);
        }
        match &self.tls {
            Some(tls) => {
                let (client, connection) = config.connect(tls.clone()).await.map_err(connect_error)?;
                tokio::spawn(drive(connection));
                Ok(client)
            }
            None => {
                let (client, connection) = config.connect(NoTls).await.map_err(connect_error)?;
                tokio::spawn(drive(connection));
                Ok(client)
            }
        }
    }

    /// Checks that the server answers.
    pub async fn ping(&self) -> Result<(), DatabaseError> {
        let _slot = self.slot().await;
        self.connect(None).await?.simple_query("SELECT 1").await.map_err(DatabaseError::statement("a ping"))?;
        Ok(())
    }

    /// Whether the server sees this operator's connection as encrypted.
    pub async fn encrypted(&self) -> Result<bool, DatabaseError> {
        let _slot = self.slot().await;
        let client = self.connect(None).await?;
        let row = client
            .query_one("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()", &[])
            .await
            .map_err(DatabaseError::statement("reading the connection's TLS state"))?;
        Ok(row.get(0))
    }

    /// Creates or repairs everything a tenant needs and returns its app role's credentials.
    /// `password` is the one already handed out (from the tenant's Secret); without it a new
    /// one is generated and set. Objects are neither checked nor marked as a Tenant's: for
    /// callers that own the names outright (benchmarks, tests).
    pub async fn ensure_tenant(
        &self,
        names: &TenantNames,
        isolation: DatabaseIsolation,
        password: Option<&str>,
    ) -> Result<TenantCredentials, DatabaseError> {
        let _slot = self.slot().await;
        self.provision(names, isolation, password, None).await
    }

    /// [`Admin::ensure_tenant`] for a Tenant object: a database or role of its name that is
    /// not its own fails with [`DatabaseError::Conflict`] before anything is changed, and
    /// what it creates is marked with its uid.
    pub async fn ensure_claimed_tenant(
        &self,
        names: &TenantNames,
        isolation: DatabaseIsolation,
        password: Option<&str>,
        claim: &Claim,
    ) -> Result<TenantCredentials, DatabaseError> {
        let _slot = self.slot().await;
        self.provision(names, isolation, password, Some(claim)).await
    }

    async fn provision(
        &self,
        names: &TenantNames,
        isolation: DatabaseIsolation,
        password: Option<&str>,
        claim: Option<&Claim>,
    ) -> Result<TenantCredentials, DatabaseError> {
        let admin = self.connect(None).await?;
        self.server_prepared.get_or_try_init(|| self.prepare_server(&admin)).await?;
        if let Some(claim) = claim {
            check_claim(&admin, names, isolation, claim).await?;
        }
        let marker = claim.map(Claim::marker);
        let marker = marker.as_deref();
        let password = usable_password(password);
        match isolation {
            DatabaseIsolation::Dedicated => {
                ensure_role(&admin, &names.owner_role, "NOLOGIN NOINHERIT", marker).await?;
                ensure_app_role(&admin, &names.app_role, &password, marker).await?;
                ensure_database(&admin, &names.database, &names.owner_role).await?;
                let db = quote_ident(&names.database);
                let app = quote_ident(&names.app_role);
                let comment = match marker {
                    Some(m) => format!("COMMENT ON DATABASE {db} IS {};", quote_literal(m)?),
                    None => String::new(),
                };
                run(
                    &admin,
                    "database grants",
                    &format!(
                        "REVOKE ALL ON DATABASE {db} FROM PUBLIC; GRANT CONNECT, TEMPORARY ON DATABASE {db} TO {app};\
                         GRANT CONNECT ON DATABASE {db} TO {};{comment}",
                        quote_ident(GATEWAY_ROLE)
                    ),
                )
                .await?;
                let tenant_db = self.connect(Some(&names.database)).await?;
                run(&tenant_db, "tenant tables", &schema::tables(&names.owner_role)).await?;
                run(&tenant_db, "operator policies", &schema::operator_access()).await?;
                run(&tenant_db, "gateway policies", &schema::gateway_access()).await?;
                run(&tenant_db, "tenant policies", &schema::tenant_access(names)?).await?;
            }
            DatabaseIsolation::Shared => {
                // Held to the end: concurrent GRANTs on the platform database fail.
                let _serialised = self.platform_lock(&admin).await?;
                ensure_app_role(&admin, &names.app_role, &password, marker).await?;
                let platform = self.connect(Some(&self.platform_database)).await?;
                let found = shared_access::read(&platform, names, &self.shared_tenants).await?;
                let changes =
                    schema::shared_tenant_changes(names, &self.shared_tenants, &self.platform_database, &found);
                if !changes.is_empty() {
                    run(&platform, "tenant policies", &changes).await?;
                }
            }
        }
        Ok(self.credentials(names, isolation, password))
    }

    /// The current month (`YYYY-MM`, UTC) and the tokens each tenant spent in it, from
    /// `token_budgets` in the tenant's database (`Some`, Dedicated) or in the platform
    /// database (`None`, every Shared tenant).
    pub async fn month_usage(
        &self,
        tenant: Option<&TenantNames>,
    ) -> Result<(String, BTreeMap<String, i64>), DatabaseError> {
        let _slot = self.slot().await;
        let database = tenant.map_or(self.platform_database.as_str(), |n| n.database.as_str());
        let client = self.connect(Some(database)).await?;
        let month: String = client
            .query_one("SELECT to_char(date_trunc('month', now() AT TIME ZONE 'UTC'), 'YYYY-MM')", &[])
            .await
            .map_err(DatabaseError::statement("reading the month"))?
            .get(0);
        let rows = client
            .query(
                "SELECT tenant_id, used FROM token_budgets \
                 WHERE scope = '' AND month = date_trunc('month', now() AT TIME ZONE 'UTC')::date",
                &[],
            )
            .await
            .map_err(DatabaseError::statement("reading token usage"))?;
        Ok((month, rows.iter().map(|r| (r.get(0), r.get(1))).collect()))
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

    /// What every tenant's provisioning needs of the server first.
    async fn prepare_server(&self, admin: &Client) -> Result<(), DatabaseError> {
        self.close_maintenance_databases(admin).await?;
        ensure_role(admin, GATEWAY_ROLE, "NOLOGIN NOINHERIT", None).await
    }

    /// Lets the gateway's role log in with `password` (a new one when `None` or unusable) and
    /// returns its credentials for the platform database; its grants in each tenant database
    /// come with that tenant's provisioning.
    pub async fn ensure_gateway_login(&self, password: Option<&str>) -> Result<TenantCredentials, DatabaseError> {
        let _slot = self.slot().await;
        let admin = self.connect(None).await?;
        self.server_prepared.get_or_try_init(|| self.prepare_server(&admin)).await?;
        let password = usable_password(password);
        let login = login_role_sql(GATEWAY_ROLE, true, &password, GATEWAY_CONNECTION_LIMIT)?;
        run(&admin, "letting the gateway log in", &login).await?;
        drop(self.platform_lock(&admin).await?);
        Ok(TenantCredentials {
            host: self.tenant_host.clone(),
            port: self.tenant_port,
            database: self.platform_database.clone(),
            username: GATEWAY_ROLE.to_string(),
            password,
        })
    }

    /// Appends the operator's own action on a tenant's data to the tenant's audit log, once
    /// per `key`: a reconcile that repeats the action (after a failed status write) does not
    /// record it twice.
    pub async fn record_action(
        &self,
        names: &TenantNames,
        isolation: DatabaseIsolation,
        action: &str,
        key: &str,
        detail: serde_json::Value,
    ) -> Result<(), DatabaseError> {
        let _slot = self.slot().await;
        let database = match isolation {
            DatabaseIsolation::Dedicated => names.database.as_str(),
            DatabaseIsolation::Shared => self.platform_database.as_str(),
        };
        let client = self.connect(Some(database)).await?;
        let detail = serde_json::json!({"key": key, "detail": detail}).to_string();
        client
            .execute(
                "INSERT INTO audit_log (tenant_id, source, actor, action, target, outcome, detail) \
                 SELECT $1, 'operator', 'bizosaas-operator', $2, $3, 'done', $4::text::jsonb \
                 WHERE NOT EXISTS (SELECT 1 FROM audit_log WHERE tenant_id = $1 AND source = 'operator' \
                                   AND action = $2 AND detail->>'key' = $5)",
                &[&names.tenant_id, &action, &format!("tenants/{}", names.tenant_id), &detail, &key],
            )
            .await
            .map_err(DatabaseError::statement("recording an action in the audit log"))?;
        Ok(())
    }

    /// Revokes CONNECT (and TEMPORARY) from PUBLIC on `postgres`, `template1` and the admin
    /// URL's database, so a tenant's app role can reach only the databases granted to it. The
    /// owner and superusers keep their access. A database the operator's role may not change
    /// (it neither owns it nor is superuser) is left as it is, with a warning.
    async fn close_maintenance_databases(&self, admin: &Client) -> Result<(), DatabaseError> {
        let mut databases: Vec<String> = MAINTENANCE_DATABASES.iter().map(|d| d.to_string()).collect();
        if let Some(own) = self.config.get_dbname()
            && !databases.iter().any(|d| d == own)
        {
            databases.push(own.to_string());
        }
        let rows = admin
            .query(
                "SELECT d.datname, pg_has_role(d.datdba, 'USAGE') OR r.rolsuper \
                 FROM pg_database d, pg_roles r WHERE d.datname = ANY($1) AND r.rolname = current_user",
                &[&databases],
            )
            .await
            .map_err(DatabaseError::statement("looking up the maintenance databases"))?;
        for row in rows {
            let (database, may_change): (String, bool) = (row.get(0), row.get(1));
            if !may_change {
                tracing::warn!(
                    database,
                    "the operator's role neither owns this database nor is superuser: \
                     PUBLIC keeps CONNECT on it, so tenant roles can connect to it"
                );
                continue;
            }
            if !open_to_public(admin, &database).await? {
                continue;
            }
            let sql = format!("REVOKE CONNECT, TEMPORARY ON DATABASE {} FROM PUBLIC;", quote_ident(&database));
            if let Err(e) = run(admin, "revoking CONNECT on a maintenance database", &sql).await {
                // Two sessions revoking at the same moment (another operator process, say):
                // PostgreSQL refuses one ("tuple concurrently updated"), and the other's
                // revoke did the work.
                if open_to_public(admin, &database).await? {
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    /// The lock that serialises changes to the shared platform database, taken once the
    /// database is in place (created on the first call in this process).
    async fn platform_lock(&self, admin: &Client) -> Result<tokio::sync::MutexGuard<'_, bool>, DatabaseError> {
        let mut platform_ready = self.shared.lock().await;
        if !*platform_ready {
            self.ensure_platform_database(admin).await?;
            *platform_ready = true;
        }
        Ok(platform_ready)
    }

    /// Creates the shared platform database and its RLS-guarded tables. CONNECT and the
    /// tables' privileges go to the Shared tenants' group, once: an entry per tenant in the
    /// database's ACL would be read on every connection to it and rewritten by every grant.
    async fn ensure_platform_database(&self, admin: &Client) -> Result<(), DatabaseError> {
        ensure_role(admin, PLATFORM_OWNER, "NOLOGIN NOINHERIT", None).await?;
        ensure_database(admin, &self.platform_database, PLATFORM_OWNER).await?;
        ensure_role(admin, &self.shared_tenants, "NOLOGIN NOINHERIT", None).await?;
        run(
            admin,
            "platform database grants",
            &format!(
                "REVOKE ALL ON DATABASE {db} FROM PUBLIC; GRANT CONNECT ON DATABASE {db} TO {}, {};",
                quote_ident(GATEWAY_ROLE),
                quote_ident(&self.shared_tenants),
                db = quote_ident(&self.platform_database)
            ),
        )
        .await?;
        let platform = self.connect(Some(&self.platform_database)).await?;
        run(&platform, "platform tables", &schema::tables(PLATFORM_OWNER)).await?;
        run(&platform, "operator policies", &schema::operator_access()).await?;
        run(&platform, "gateway policies", &schema::gateway_access()).await?;
        run(&platform, "Shared tenants' access", &schema::shared_tenants_access(&self.shared_tenants)).await
    }

    /// [`Admin::retire_tenant`] for a Tenant object: when a database or role of its name is
    /// not its own (a conflict it never provisioned past), nothing is touched and the result
    /// is `false`.
    pub async fn retire_claimed_tenant(
        &self,
        names: &TenantNames,
        isolation: DatabaseIsolation,
        policy: DeletionPolicy,
        claim: &Claim,
    ) -> Result<bool, DatabaseError> {
        let _slot = self.slot().await;
        let admin = self.connect(None).await?;
        match check_claim(&admin, names, isolation, claim).await {
            Ok(()) => {}
            Err(DatabaseError::Conflict(_)) => return Ok(false),
            Err(e) => return Err(e),
        }
        drop(admin);
        self.retire(names, isolation, policy).await?;
        Ok(true)
    }

    /// Applies a Tenant's deletion policy: `Delete` drops its data and roles, `Retain` keeps
    /// the data and disables the app role's login. Sessions of the app role are ended either way.
    pub async fn retire_tenant(
        &self,
        names: &TenantNames,
        isolation: DatabaseIsolation,
        policy: DeletionPolicy,
    ) -> Result<(), DatabaseError> {
        let _slot = self.slot().await;
        self.retire(names, isolation, policy).await
    }

    async fn retire(
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

/// Whether PUBLIC (every role) may still connect to `database` or create temporary tables in it.
async fn open_to_public(admin: &Client, database: &str) -> Result<bool, DatabaseError> {
    let row = admin
        .query_one(
            "SELECT has_database_privilege('public'::name, $1::text, 'CONNECT') \
             OR has_database_privilege('public'::name, $1::text, 'TEMPORARY')",
            &[&database],
        )
        .await
        .map_err(DatabaseError::statement("reading a database's privileges"))?;
    Ok(row.get(0))
}

async fn drive<F: std::future::Future<Output = Result<(), tokio_postgres::Error>>>(connection: F) {
    if let Err(e) = connection.await {
        tracing::debug!(error = %e, "admin connection closed");
    }
}

/// The connection error, with what to check when the server's certificate was refused.
fn connect_error(e: tokio_postgres::Error) -> DatabaseError {
    // The client library's Display leaves out the cause (the TLS error that says why).
    let mut message = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(cause) = source {
        message = format!("{message}: {cause}");
        source = cause.source();
    }
    if message.contains("certificate") {
        message.push_str(
            " (the server's certificate must be signed by the CA in --database-ca-file or the URL's sslrootcert, \
             and with sslmode=verify-full name the URL's host)",
        );
    }
    DatabaseError::Connect(message)
}

/// `password` when it is one this operator would have generated, else a new one.
fn usable_password(password: Option<&str>) -> String {
    match password {
        Some(p) if p.chars().all(|c| c.is_ascii_alphanumeric()) && p.len() >= 24 => p.to_string(),
        _ => generate_password(),
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

/// Fails with [`DatabaseError::Conflict`] when a database or role of the tenant's name is
/// not the claiming Tenant's.
async fn check_claim(
    admin: &Client,
    names: &TenantNames,
    isolation: DatabaseIsolation,
    claim: &Claim,
) -> Result<(), DatabaseError> {
    let role_comment = async |role: &str| {
        let row = admin
            .query_opt("SELECT shobj_description(oid, 'pg_authid') FROM pg_roles WHERE rolname = $1", &[&role])
            .await
            .map_err(DatabaseError::statement("looking up a role's owner"))?;
        Ok::<_, DatabaseError>(row.map(|r| r.get::<_, Option<String>>(0)))
    };
    let app = Mark::of(role_comment(&names.app_role).await?, claim);
    let mut objects = vec![(format!("Role {}", names.app_role), app)];
    if isolation == DatabaseIsolation::Dedicated {
        let owner = Mark::of(role_comment(&names.owner_role).await?, claim);
        let row = admin
            .query_opt(
                "SELECT shobj_description(oid, 'pg_database'), pg_get_userbyid(datdba) FROM pg_database \
                 WHERE datname = $1",
                &[&names.database],
            )
            .await
            .map_err(DatabaseError::statement("looking up a database's owner"))?;
        let db_owner: Option<String> = row.as_ref().map(|r| r.get(1));
        let mut database = Mark::of(row.map(|r| r.get::<_, Option<String>>(0)), claim);
        // CREATE DATABASE cannot share a transaction with its COMMENT: a database left
        // unmarked in between is known by its owner, a role marked in the same statement
        // that created it.
        if database == Mark::Unmarked && owner == Mark::Ours && db_owner.as_deref() == Some(names.owner_role.as_str()) {
            database = Mark::Ours;
        }
        objects.push((format!("Role {}", names.owner_role), owner));
        objects.push((format!("Database {}", names.database), database));
    }
    claim::check(&objects, claim)
}

/// `COMMENT ON ROLE` with the marker, or nothing.
fn role_comment_sql(role: &str, marker: Option<&str>) -> Result<String, DatabaseError> {
    Ok(match marker {
        Some(m) => format!(" COMMENT ON ROLE {} IS {};", quote_ident(role), quote_literal(m)?),
        None => String::new(),
    })
}

/// Creates a role with its marker in one transaction (a multi-statement query), or marks
/// the existing one. Roles are server-wide: another connection (another operator process,
/// another tenant's provisioning) may create the same one at the same moment, and a role that
/// exists once the creation failed is taken as existing.
async fn ensure_role(client: &Client, role: &str, attributes: &str, marker: Option<&str>) -> Result<(), DatabaseError> {
    let comment = role_comment_sql(role, marker)?;
    if role_exists(client, role).await?.is_none() {
        let sql = format!("CREATE ROLE {} {attributes};{comment}", quote_ident(role));
        match run(client, "creating a role", &sql).await {
            Ok(()) => return Ok(()),
            Err(e) if role_exists(client, role).await?.is_none() => return Err(e),
            Err(_) => {}
        }
    }
    if !comment.is_empty() {
        run(client, "marking a role", &comment).await?;
    }
    Ok(())
}

/// The app role: LOGIN, never superuser, never BYPASSRLS, with a connection limit.
async fn ensure_app_role(
    client: &Client,
    role: &str,
    password: &str,
    marker: Option<&str>,
) -> Result<(), DatabaseError> {
    let exists = role_exists(client, role).await?.is_some();
    let sql =
        format!("{}{}", login_role_sql(role, exists, password, APP_CONNECTION_LIMIT)?, role_comment_sql(role, marker)?);
    run(client, "creating the app role", &sql).await
}

/// The statement that creates or updates a login role (a tenant's app role, the gateway's):
/// never superuser, never BYPASSRLS, at most `connection_limit` sessions. It inherits the
/// privileges of the roles it is a member of: only a Shared tenant's is one, of its platform
/// database's tenants group. The password travels
/// as a SCRAM-SHA-256 verifier computed here, so the plain text never reaches the server, its
/// logs (`log_statement`) or `pg_stat_activity`.
fn login_role_sql(role: &str, exists: bool, password: &str, connection_limit: u32) -> Result<String, DatabaseError> {
    let verb = if exists { "ALTER" } else { "CREATE" };
    let verifier = postgres_protocol::password::scram_sha_256(password.as_bytes());
    Ok(format!(
        "{verb} ROLE {} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS INHERIT \
         CONNECTION LIMIT {connection_limit} PASSWORD {};",
        quote_ident(role),
        quote_literal(&verifier)?
    ))
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
    fn the_role_statement_holds_a_verifier_not_the_password() {
        let password = generate_password();
        let sql = login_role_sql("tenant_a_app", false, &password, APP_CONNECTION_LIMIT).unwrap();
        assert!(!sql.contains(&password), "the password itself is in the statement");
        assert!(sql.starts_with("CREATE ROLE \"tenant_a_app\" LOGIN"), "{sql}");
        assert!(sql.contains("PASSWORD 'SCRAM-SHA-256$4096:"), "{sql}");
        assert!(
            login_role_sql("tenant_a_app", true, &password, APP_CONNECTION_LIMIT).unwrap().starts_with("ALTER ROLE")
        );
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
