//! PostgreSQL provisioning for tenants: databases, roles, and row-level security.
//!
//! Identifiers come from tenant names that the CRD already restricts, and are still checked
//! and quoted here: no statement is built from user input without [`ident::quote_ident`] or
//! [`ident::quote_literal`].

mod claim;
pub mod ident;
mod provision;
mod schema;
pub mod tls;

pub use claim::Claim;
pub use ident::TenantNames;
pub use provision::{Admin, MAX_CONCURRENT_OPERATIONS};
pub use provision::{UsageBatch, UsageEvent};
pub use schema::GATEWAY_ROLE;

/// Credentials of a tenant's app role, as written to the tenant's Secret.
#[derive(Clone, PartialEq, Eq)]
pub struct TenantCredentials {
    pub host: String,
    pub port: u16,
    pub database: String,
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for TenantCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TenantCredentials")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("database", &self.database)
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

impl TenantCredentials {
    /// `postgres://user:password@host:port/database`. Passwords are alphanumeric, so they
    /// need no escaping.
    pub fn url(&self) -> String {
        format!("postgres://{}:{}@{}:{}/{}", self.username, self.password, self.host, self.port, self.database)
    }
}

/// Why database provisioning failed. Messages never contain credentials.
#[derive(Debug, thiserror::Error)]
pub enum DatabaseError {
    #[error("cannot connect to PostgreSQL: {0}")]
    Connect(String),
    #[error("PostgreSQL refused {action}: {message}")]
    Statement { action: &'static str, message: String },
    #[error("invalid database identifier {0:?}")]
    InvalidIdentifier(String),
    #[error("invalid database URL: {0}")]
    InvalidUrl(String),
    /// A database or role of the tenant's name that is not the Tenant's own.
    #[error("{0}")]
    Conflict(String),
}

impl DatabaseError {
    pub(crate) fn statement(action: &'static str) -> impl FnOnce(tokio_postgres::Error) -> Self {
        move |e| DatabaseError::Statement {
            action,
            message: e.as_db_error().map(|d| d.message().to_string()).unwrap_or_else(|| e.to_string()),
        }
    }
}
