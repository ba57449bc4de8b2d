//! The Tenant controller: a Tenant becomes a namespace with quotas, network policies, RBAC,
//! a PostgreSQL database with row-level security, credentials and business services.

mod apply;
pub mod billing;
pub mod build;
mod child_stores;
mod claims;
mod controller;
mod database;
mod database_egress;
mod finalize;
pub mod plans;
mod quota_wait;
pub mod service_catalog;
mod status;
pub mod usage;

pub use controller::{Error, run};
pub use finalize::FINALIZER;
pub use quota_wait::quota_enforced;

/// Controller name used in metrics, logs and events.
pub const CONTROLLER: &str = "tenant";
