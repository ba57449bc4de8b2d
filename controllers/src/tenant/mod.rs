//! The Tenant controller: a Tenant becomes a namespace with quotas, network policies, RBAC,
//! a PostgreSQL database with row-level security, credentials and business services.

pub mod build;
mod database_egress;
pub mod plans;
mod reconcile;
pub mod service_catalog;
mod status;

pub use reconcile::{Error, FINALIZER, run};

/// Controller name used in metrics, logs and events.
pub const CONTROLLER: &str = "tenant";
