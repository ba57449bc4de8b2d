//! BizOSaaS reconcilers.
//!
//! Every controller follows one pipeline: `dereference → validate → build (pure) → apply
//! (server-side apply, one field manager) → status`. The `build` modules need no client and
//! are unit-tested from fixtures; `apply` and `status` talk to the API server.

pub mod agent_crew;
pub mod apply;
pub mod background;
pub mod census;
pub mod conditions;
pub mod context;
pub mod duration;
pub mod egress;
pub mod gateway_database;
pub mod integration;
pub mod kube_requests;
pub mod lago;
pub mod metrics;
pub mod postgres;
pub mod quantity;
pub mod runtime_auth;
pub mod scaffold;
pub mod seen;
pub mod tenant;
pub mod tenant_namespaces;
pub mod trace_context;
pub mod vault;
pub mod watch_connections;
pub mod workflow;

pub use context::{Config, Context};

/// Field manager used for every server-side apply by the operator.
pub const FIELD_MANAGER: &str = "bizosaas-operator";
