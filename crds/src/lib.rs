//! The BizOSaaS API, group `bizosaas.io`, version `v1alpha1`.
//!
//! This crate holds only types and data: the custom resources, their status
//! shapes, and the built-in agent catalog. It has no client code so that the
//! operator, the agent runtime and tests can share it cheaply.

// `#[kube(printcolumn(type_ = ...))]` repeats keys by design; clippy reads them as duplicates.
#![allow(clippy::duplicated_attributes)]

pub mod agent_crew;
pub mod catalog;
pub mod common;
pub mod crew_config;
pub mod generate;
pub mod integration;
pub mod tenant;
pub mod workflow;

pub use agent_crew::{AgentCrew, AgentCrewSpec, AgentCrewStatus};
pub use integration::{Integration, IntegrationSpec, IntegrationStatus};
pub use tenant::{Tenant, TenantSpec, TenantStatus};
pub use workflow::{Workflow, WorkflowRun, WorkflowRunSpec, WorkflowRunStatus, WorkflowSpec, WorkflowStatus};

/// The API group of every BizOSaaS resource.
pub const GROUP: &str = "bizosaas.io";
/// The served and stored version.
pub const VERSION: &str = "v1alpha1";
/// Label value that marks objects this operator manages.
pub const MANAGED_BY: &str = "bizosaas-operator";
/// Label key `app.kubernetes.io/managed-by`.
pub const LABEL_MANAGED_BY: &str = "app.kubernetes.io/managed-by";
/// Label key naming the tenant an object belongs to.
pub const LABEL_TENANT: &str = "bizosaas.io/tenant";
