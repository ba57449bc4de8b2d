//! The tenant's PostgreSQL, reached as the tenant's app role (`DATABASE_URL`), so row-level
//! security limits every statement to the tenant's rows. One connection, re-established when
//! it breaks; usage events are written off the request path by a background task.

use crate::metrics::Metrics;
use crate::secret::Secret;
use crate::usage::MonthlyLedger;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Mutex, mpsc};
use tokio_postgres::{Client, Config, NoTls};

#[derive(Debug, Clone, thiserror::Error)]
pub enum DbError {
    #[error("DATABASE_URL is not a valid PostgreSQL connection string")]
    InvalidUrl,
    #[error("cannot connect to the tenant database: {0}")]
    Connect(String),
    #[error("tenant database query failed: {0}")]
    Query(String),
    #[error("the tenant database did not answer within {0:?}")]
    Timeout(Duration),
}

impl DbError {
    pub fn category(&self) -> &'static str {
        match self {
            Self::InvalidUrl => "db_config",
            Self::Connect(_) => "db_connect",
            Self::Query(_) => "db_query",
            Self::Timeout(_) => "db_timeout",
        }
    }
}

/// Error text of tokio-postgres with its cause (the database's own message).
pub fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {}", db.code().code(), db.message()),
        None => {
            let mut text = e.to_string();
            if let Some(source) = std::error::Error::source(e) {
                text = format!("{text}: {source}");
            }
            text
        }
    }
}

/// A lazily (re)connected client of the tenant database.
pub struct Db {
    config: Config,
    client: Mutex<Option<Arc<Client>>>,
    timeout: Duration,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db").field("host", &self.config.get_hosts()).finish_non_exhaustive()
    }
}

impl Db {
    pub fn new(url: &Secret) -> Result<Self, DbError> {
        let mut config = Config::from_str(url.expose()).map_err(|_| DbError::InvalidUrl)?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(5));
        }
        if config.get_application_name().is_none() {
            config.application_name("bizosaas-agent");
        }
        Ok(Self { config, client: Mutex::new(None), timeout: Duration::from_secs(10) })
    }

    /// The connected client, connecting first if needed.
    pub async fn client(&self) -> Result<Arc<Client>, DbError> {
        let mut slot = self.client.lock().await;
        if let Some(c) = slot.as_ref()
            && !c.is_closed()
        {
            return Ok(c.clone());
        }
        let connect = self.config.connect(NoTls);
        let (client, connection) = tokio::time::timeout(self.timeout, connect)
            .await
            .map_err(|_| DbError::Timeout(self.timeout))?
            .map_err(|e| DbError::Connect(describe(&e)))?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::warn!(error = %describe(&e), "tenant database connection closed");
            }
        });
        let client = Arc::new(client);
        *slot = Some(client.clone());
        Ok(client)
    }

    /// Runs `f` with a client, bounded by the timeout.
    pub async fn with<T, F, Fut>(&self, f: F) -> Result<T, DbError>
    where
        F: FnOnce(Arc<Client>) -> Fut,
        Fut: Future<Output = Result<T, tokio_postgres::Error>>,
    {
        let client = self.client().await?;
        tokio::time::timeout(self.timeout, f(client))
            .await
            .map_err(|_| DbError::Timeout(self.timeout))?
            .map_err(|e| DbError::Query(describe(&e)))
    }

    /// `SELECT 1`, for readiness.
    pub async fn ping(&self) -> Result<(), DbError> {
        self.with(|c| async move { c.simple_query("SELECT 1").await.map(|_| ()) }).await
    }

    /// Tokens the crew used this calendar month (UTC), from `usage_events`.
    pub async fn month_usage(&self, crew: &str) -> Result<u64, DbError> {
        let crew = crew.to_string();
        let total: i64 = self
            .with(|c| async move {
                let row = c
                    .query_one(
                        "SELECT COALESCE(SUM(prompt_tokens + completion_tokens), 0)::bigint FROM usage_events \
                         WHERE crew = $1 AND created_at >= date_trunc('month', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'",
                        &[&crew],
                    )
                    .await?;
                Ok(row.get(0))
            })
            .await?;
        Ok(total.max(0) as u64)
    }
}

/// One row of `usage_events`.
#[derive(Debug, Clone)]
pub struct UsageEvent {
    pub model: String,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

/// Sends usage events to a background writer; never blocks the caller.
#[derive(Clone, Debug)]
pub struct UsageRecorder {
    tx: mpsc::Sender<UsageEvent>,
}

impl UsageRecorder {
    /// Starts the writer. Events are inserted as the tenant's app role with the tenant's id,
    /// which the RLS policy checks. With a monthly ledger, the writer first reads the month's
    /// usage (retrying until the database answers; events wait in the queue meanwhile) and
    /// seeds the ledger with it, before it writes anything itself.
    pub fn start(
        db: Arc<Db>,
        tenant: String,
        crew: String,
        monthly: Option<Arc<MonthlyLedger>>,
        metrics: Option<Arc<Metrics>>,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        let (tx, mut rx) = mpsc::channel::<UsageEvent>(4096);
        let task = tokio::spawn(async move {
            if let Some(ledger) = monthly {
                loop {
                    match db.month_usage(&crew).await {
                        Ok(recorded) => {
                            ledger.seed(recorded);
                            tracing::info!(recorded, "this month's token usage loaded from the tenant database");
                            break;
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "cannot load this month's token usage yet; retrying in 5s");
                            tokio::time::sleep(Duration::from_secs(5)).await;
                        }
                    }
                }
            }
            while let Some(event) = rx.recv().await {
                let (tenant, crew) = (tenant.clone(), crew.clone());
                let result = db
                    .with(|c| async move {
                        c.execute(
                            "INSERT INTO usage_events (tenant_id, crew, model, prompt_tokens, completion_tokens, created_at) \
                             VALUES ($1, $2, $3, $4::bigint, $5::bigint, now())",
                            &[
                                &tenant,
                                &crew,
                                &event.model,
                                &(event.prompt_tokens.min(i64::MAX as u64) as i64),
                                &(event.completion_tokens.min(i64::MAX as u64) as i64),
                            ],
                        )
                        .await
                    })
                    .await;
                if let Err(e) = result {
                    tracing::warn!(error = %e, "could not record a usage event");
                    if let Some(m) = &metrics {
                        m.usage_write_errors.inc();
                    }
                }
            }
        });
        (Self { tx }, task)
    }

    pub fn record(&self, event: UsageEvent) {
        if self.tx.try_send(event).is_err() {
            tracing::warn!("usage event queue is full; an event was dropped");
        }
    }
}
