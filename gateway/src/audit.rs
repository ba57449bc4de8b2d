//! The audit trail of the gateway: every authenticated request (who, with which groups, on
//! which tenant, what, on which object, how it ended, its request id) is appended to that
//! tenant's `audit_log`, in the tenant's database, as the gateway's own role
//! (`bizosaas_gateway`, which may only append to and read the audit log).
//!
//! Requests do not wait for the database: a request takes a place in a bounded queue before
//! it is served (or is refused with 503 `audit_unavailable` when there is none) and one
//! writer appends what is queued in batches. A tenant whose database refuses its entries has
//! its requests refused the same way until the entries are written, so nothing a tenant does
//! goes unrecorded while the rest of the platform keeps working. Entries still queued when the
//! gateway stops (SIGTERM) are written before it exits.

use crate::cache::TtlCache;
use crate::error::ApiError;
use axum::http::StatusCode;
use bizosaas_controllers::postgres::TenantNames;
use bizosaas_crds::Tenant;
use bizosaas_crds::tenant::DatabaseIsolation;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use serde::Serialize;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_postgres::{Client, Config, NoTls};

/// Entries queued at most; beyond it requests are refused rather than left unrecorded.
const QUEUE: usize = 10_000;
/// Entries appended in one statement at most.
const BATCH: usize = 500;
/// Entries kept for a database that refuses them; beyond it the oldest are dropped (and
/// counted), which only happens if its tenant's refusals were not enough.
const PENDING_PER_DATABASE: usize = 20_000;
/// How long a tenant's requests are refused after its entries could not be written.
const REFUSE_FOR: Duration = Duration::from_secs(5);
/// How long the database a tenant's entries go to is remembered.
const DATABASE_TTL: Duration = Duration::from_secs(60);
/// How long a tenant found not to exist is remembered as such.
const MISSING_TTL: Duration = Duration::from_secs(5);

/// One request as the audit log keeps it.
#[derive(Clone, Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Entry {
    pub tenant: String,
    pub actor: String,
    pub groups: Vec<String>,
    pub action: &'static str,
    pub target: String,
    pub outcome: &'static str,
    pub request_id: String,
    pub detail: Value,
    /// RFC 3339, when the request arrived.
    pub time: String,
}

/// How a request ended, from its status code.
pub fn outcome(status: StatusCode) -> &'static str {
    match status.as_u16() {
        200..=399 => "success",
        401 | 403 => "denied",
        400..=499 => "refused",
        _ => "failed",
    }
}

/// A request's id: the caller's `X-Request-Id` when it is a plain token of at most 64
/// characters (it ends up in logs and the audit log), else a new random one.
pub fn request_id(given: Option<&str>) -> String {
    match given {
        Some(id)
            if !id.is_empty()
                && id.len() <= 64
                && id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':')) =>
        {
            id.to_string()
        }
        _ => {
            let bytes: [u8; 16] = rand::random();
            bytes.iter().map(|b| format!("{b:02x}")).collect()
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct ReasonLabels {
    reason: String,
}

struct AuditMetrics {
    written: Counter,
    failed: Family<ReasonLabels, Counter>,
    dropped: Family<ReasonLabels, Counter>,
}

/// The audit log: where requests are queued and the tenants' databases are read back.
pub struct AuditLog {
    queue: mpsc::Sender<Entry>,
    store: Arc<Store>,
}

/// A place taken in the queue for one request's entry.
pub struct Slot(mpsc::OwnedPermit<Entry>);

impl Slot {
    pub fn record(self, entry: Entry) {
        self.0.send(entry);
    }
}

impl AuditLog {
    /// The audit log on the server of `url` (the gateway's role, the platform database) and
    /// its writer, which ends once every [`AuditLog`] handle is dropped and the queue is empty.
    pub fn start(
        url: &str,
        kube: kube::Client,
        registry: &mut Registry,
    ) -> Result<(Self, tokio::task::JoinHandle<()>), String> {
        let mut config = Config::from_str(url).map_err(|_| "the gateway's database URL is not valid".to_string())?;
        config.connect_timeout(Duration::from_secs(5)).application_name("bizosaas-gateway");
        let platform_database = config.get_dbname().ok_or("the gateway's database URL names no database")?.to_string();
        let metrics =
            AuditMetrics { written: Counter::default(), failed: Family::default(), dropped: Family::default() };
        registry.register("bizosaas_gateway_audit_written", "Audit entries appended", metrics.written.clone());
        registry.register(
            "bizosaas_gateway_audit_failures",
            "Batches of audit entries a tenant database refused, by reason",
            metrics.failed.clone(),
        );
        registry.register(
            "bizosaas_gateway_audit_dropped",
            "Audit entries that could not be kept, by reason",
            metrics.dropped.clone(),
        );
        let store = Arc::new(Store {
            config,
            platform_database,
            kube,
            databases: Mutex::new(TtlCache::new(DATABASE_TTL, 100_000)),
            missing: Mutex::new(TtlCache::new(MISSING_TTL, 10_000)),
            clients: tokio::sync::Mutex::new(HashMap::new()),
            refused: Mutex::new(HashMap::new()),
            metrics,
        });
        let (queue, entries) = mpsc::channel(QUEUE);
        let writer = tokio::spawn(write(entries, store.clone()));
        Ok((Self { queue, store }, writer))
    }

    /// A place for the entry of a request to `tenant`, or the refusal to answer with.
    pub fn slot(&self, tenant: &str) -> Result<Slot, ApiError> {
        let refused_until = self.store.refused.lock().expect("refused lock").get(tenant).copied();
        if refused_until.is_some_and(|until| Instant::now() < until) {
            return Err(unavailable(format!("the audit log of tenant {tenant} cannot be written right now")));
        }
        match self.queue.clone().try_reserve_owned() {
            Ok(permit) => Ok(Slot(permit)),
            Err(_) => Err(unavailable("the gateway's audit log is behind")),
        }
    }

    /// The tenant's audit entries after id `after`, oldest first, at most `limit`.
    pub async fn read(&self, tenant: &str, after: i64, limit: i64) -> Result<Value, ApiError> {
        let database = self.store.database(tenant).await.map_err(|e| e.answer())?;
        let client = self.store.client(&database).await.map_err(|e| e.answer())?;
        let row = client
            .query_one(
                "SELECT COALESCE(json_agg(e ORDER BY e.id), '[]')::text FROM ( \
                   SELECT id, to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"') AS time, \
                          source, actor, groups, action, target, outcome, request_id AS \"requestId\", detail \
                   FROM audit_log WHERE tenant_id = $1 AND id > $2 ORDER BY id LIMIT $3) e",
                &[&tenant, &after, &limit],
            )
            .await;
        match row {
            Ok(row) => Ok(serde_json::from_str(row.get::<_, &str>(0)).unwrap_or(Value::Array(vec![]))),
            Err(e) => {
                self.store.forget(&database).await;
                tracing::warn!(error = %describe(&e), "cannot read an audit log");
                Err(unavailable(format!("the audit log of tenant {tenant} cannot be read right now")))
            }
        }
    }
}

/// The refusal of a request whose audit entry cannot be written or read.
pub fn unavailable(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "audit_unavailable", message)
}

/// Why a tenant's audit log cannot be reached.
#[derive(Debug)]
enum StoreError {
    NoTenant,
    Kube(String),
    Database(String),
}

impl StoreError {
    fn reason(&self) -> &'static str {
        match self {
            StoreError::NoTenant => "no_tenant",
            StoreError::Kube(_) => "kubernetes",
            StoreError::Database(_) => "database",
        }
    }

    fn answer(self) -> ApiError {
        match self {
            StoreError::NoTenant => ApiError::not_found("no such tenant"),
            StoreError::Kube(e) | StoreError::Database(e) => {
                tracing::warn!(error = %e, "cannot reach an audit log");
                unavailable("the tenant's audit log cannot be reached right now")
            }
        }
    }
}

struct Store {
    config: Config,
    platform_database: String,
    kube: kube::Client,
    /// Tenant → the database its rows live in.
    databases: Mutex<TtlCache<String, String>>,
    /// Tenants found not to exist, for a few seconds, so that requests naming made-up tenants
    /// do not each cost a read of the API server.
    missing: Mutex<TtlCache<String, ()>>,
    clients: tokio::sync::Mutex<HashMap<String, Arc<Client>>>,
    /// Tenants whose entries were refused, until when their requests are.
    refused: Mutex<HashMap<String, Instant>>,
    metrics: AuditMetrics,
}

impl Store {
    /// The database of the tenant's rows: its own (Dedicated) or the platform's (Shared).
    async fn database(&self, tenant: &str) -> Result<String, StoreError> {
        let key = tenant.to_string();
        if let Some(known) = self.databases.lock().expect("databases lock").get(&key) {
            return Ok(known);
        }
        if self.missing.lock().expect("missing lock").get(&key).is_some() {
            return Err(StoreError::NoTenant);
        }
        let found = kube::Api::<Tenant>::all(self.kube.clone())
            .get_opt(tenant)
            .await
            .map_err(|e| StoreError::Kube(e.to_string()))?;
        let database = found.and_then(|t| match t.spec.database.isolation {
            DatabaseIsolation::Dedicated => TenantNames::new(tenant).ok().map(|n| n.database),
            DatabaseIsolation::Shared => Some(self.platform_database.clone()),
        });
        match database {
            Some(database) => {
                self.databases.lock().expect("databases lock").put(key, database.clone());
                Ok(database)
            }
            None => {
                self.missing.lock().expect("missing lock").put(key, ());
                Err(StoreError::NoTenant)
            }
        }
    }

    async fn client(&self, database: &str) -> Result<Arc<Client>, StoreError> {
        let mut clients = self.clients.lock().await;
        if let Some(c) = clients.get(database)
            && !c.is_closed()
        {
            return Ok(c.clone());
        }
        let mut config = self.config.clone();
        config.dbname(database);
        let (client, connection) = config.connect(NoTls).await.map_err(|e| StoreError::Database(describe(&e)))?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::warn!(error = %describe(&e), "an audit log connection closed");
            }
        });
        let client = Arc::new(client);
        clients.insert(database.to_string(), client.clone());
        Ok(client)
    }

    async fn forget(&self, database: &str) {
        self.clients.lock().await.remove(database);
    }

    async fn append(&self, database: &str, entries: &[Entry]) -> Result<(), StoreError> {
        let client = self.client(database).await?;
        let rows = serde_json::to_string(entries).expect("entries serialise");
        let appended = client
            .execute(
                "INSERT INTO audit_log (tenant_id, source, actor, groups, action, target, outcome, request_id, detail, created_at) \
                 SELECT r->>'tenant', 'gateway', r->>'actor', ARRAY(SELECT jsonb_array_elements_text(r->'groups')), \
                        r->>'action', r->>'target', r->>'outcome', r->>'requestId', r->'detail', (r->>'time')::timestamptz \
                 FROM jsonb_array_elements($1::text::jsonb) r",
                &[&rows],
            )
            .await;
        match appended {
            Ok(_) => Ok(()),
            Err(e) => {
                self.forget(database).await;
                Err(StoreError::Database(describe(&e)))
            }
        }
    }
}

/// The writer: appends queued entries per database, keeps those a database refused and
/// retries them, and refuses the requests of their tenants meanwhile.
async fn write(mut entries: mpsc::Receiver<Entry>, store: Arc<Store>) {
    let mut pending: BTreeMap<String, Vec<Entry>> = BTreeMap::new();
    // Entries whose tenant's database is not known yet (the API server did not answer).
    let mut unresolved: Vec<Entry> = Vec::new();
    let mut closed = false;
    let mut backoff = Duration::from_millis(200);
    loop {
        if pending.is_empty() && unresolved.is_empty() {
            if closed {
                return;
            }
            match entries.recv().await {
                Some(first) => unresolved.push(first),
                None => return,
            }
        }
        while !closed && unresolved.len() < QUEUE {
            match entries.try_recv() {
                Ok(entry) => unresolved.push(entry),
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => closed = true,
            }
        }
        let mut failed = false;
        for entry in std::mem::take(&mut unresolved) {
            match store.database(&entry.tenant).await {
                Ok(database) => pending.entry(database).or_default().push(entry),
                Err(StoreError::NoTenant) => {
                    store.metrics.dropped.get_or_create(&ReasonLabels { reason: "no_tenant".into() }).inc();
                }
                Err(e) => {
                    if !failed {
                        tracing::warn!(error = ?e, "cannot tell where a tenant's audit log is; retrying");
                    }
                    failed = true;
                    unresolved.push(entry);
                }
            }
        }
        for (database, queued) in pending.iter_mut() {
            while !queued.is_empty() {
                let n = queued.len().min(BATCH);
                match store.append(database, &queued[..n]).await {
                    Ok(()) => {
                        store.metrics.written.inc_by(n as u64);
                        queued.drain(..n);
                    }
                    Err(e) => {
                        failed = true;
                        store.metrics.failed.get_or_create(&ReasonLabels { reason: e.reason().into() }).inc();
                        tracing::warn!(database, entries = queued.len(), error = ?e, "cannot append to an audit log; retrying");
                        let until = Instant::now() + REFUSE_FOR;
                        let mut refused = store.refused.lock().expect("refused lock");
                        for entry in queued.iter() {
                            refused.insert(entry.tenant.clone(), until);
                        }
                        if queued.len() > PENDING_PER_DATABASE {
                            let over = queued.len() - PENDING_PER_DATABASE;
                            queued.drain(..over);
                            store
                                .metrics
                                .dropped
                                .get_or_create(&ReasonLabels { reason: "overflow".into() })
                                .inc_by(over as u64);
                            tracing::error!(
                                database,
                                dropped = over,
                                "audit entries dropped: the database refuses them"
                            );
                        }
                        break;
                    }
                }
            }
        }
        pending.retain(|_, queued| !queued.is_empty());
        if failed {
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(1));
        } else {
            backoff = Duration::from_millis(200);
        }
    }
}

fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {}", db.code().code(), db.message()),
        None => match std::error::Error::source(e) {
            Some(source) => format!("{e}: {source}"),
            None => e.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_follow_the_status() {
        assert_eq!(outcome(StatusCode::CREATED), "success");
        assert_eq!(outcome(StatusCode::FORBIDDEN), "denied");
        assert_eq!(outcome(StatusCode::UNPROCESSABLE_ENTITY), "refused");
        assert_eq!(outcome(StatusCode::BAD_GATEWAY), "failed");
    }

    #[test]
    fn a_caller_s_request_id_is_kept_only_when_it_is_a_plain_token() {
        assert_eq!(request_id(Some("req-42.a_b:c")), "req-42.a_b:c");
        for bad in ["", "has space", "a\nb", "x'; DROP", &"a".repeat(65)] {
            let id = request_id(Some(bad));
            assert_ne!(id, bad);
            assert_eq!(id.len(), 32, "a new id instead of {bad:?}");
        }
        assert_ne!(request_id(None), request_id(None));
    }
}
