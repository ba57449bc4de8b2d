//! The tenant's PostgreSQL, reached as the tenant's app role (`DATABASE_URL`), so row-level
//! security limits every statement to the tenant's rows. One connection, re-established when
//! it breaks.

use crate::secret::Secret;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Mutex;
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

    /// Drops the connection (the next call opens a new one): after a timeout in the middle of
    /// a transaction, so the server rolls it back and releases its locks.
    pub async fn reset(&self) {
        self.client.lock().await.take();
    }

    /// `SELECT 1`, for readiness.
    pub async fn ping(&self) -> Result<(), DbError> {
        self.with(|c| async move { c.simple_query("SELECT 1").await.map(|_| ()) }).await
    }
}
