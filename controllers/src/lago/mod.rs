//! Usage export to Lago: each model call recorded in a tenant's `usage_events` becomes one
//! Lago usage event of the tenant's subscription, sent in batches to Lago's events API.
//!
//! Every event's `transaction_id` is derived from the usage event's id, and the cursor (the
//! last id Lago accepted) lives in the tenant's database and moves only after Lago answered
//! 2xx. A batch whose acceptance was not recorded is sent again with the same transaction ids;
//! Lago ingests a transaction id once, and a batch it refuses because it already holds some of
//! them is sent again without those.

mod batch;
mod client;
mod export;

pub use batch::{BATCH_LIMIT, Verdict, build, classify, transaction_id};
pub use client::{ApiKey, LagoClient, LagoConfig, LagoError};
pub use export::{End, ExportTarget, Outcome, TARGET, export_once};

/// The `reason` labels of `bizosaas_usage_export_failures_total`.
pub const FAILURE_REASONS: [&str; 4] = ["refused", "unavailable", "database", "in_flight"];
