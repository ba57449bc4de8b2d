//! Durable workflows. A WorkflowRun snapshots its Workflow, then runs the DAG: each attempt
//! is recorded in status (with the resourceVersion the decision was made from) before its
//! side effect starts, named deterministically, and looked up rather than repeated after a
//! restart. The Workflow controller creates runs from a cron schedule.
//!
//! - [`template`], [`snapshot`], [`plan`], [`names`], [`schedule`]: pure, unit-tested.
//! - [`run`]: the WorkflowRun controller; [`steps`]: the three kinds of step;
//!   [`outputs`]: the ConfigMap of full outputs; [`scheduler`]: the Workflow controller.

pub mod names;
pub mod outputs;
pub mod plan;
pub mod run;
pub mod schedule;
pub mod scheduler;
pub mod snapshot;
pub mod steps;
pub mod template;
