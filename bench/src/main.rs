//! `bizosaas-bench`: measures the operator against a bare client doing the same work with
//! the same concurrency in the same run, and prints each figure beside its baseline.
//!
//! `bizosaas-bench tenants --count 100` provisions tenants twice: once as a bare kube client
//! creating the children the Tenant builders produce (and the same PostgreSQL provisioning),
//! once through Tenant objects reconciled by the operator binary. Each half starts on a cluster
//! without the other's tenants and on an idle machine.
//!
//! `bizosaas-bench workflows --runs 1000` executes a five-step HTTP chain 1,000 times at once:
//! once as a bare client recording each step around its call, once through WorkflowRuns.
//!
//! `bizosaas-bench gateway` reads one crew run straight from the crew and through the gateway,
//! in alternating rounds, and prints what the gateway adds (p50, p99) and its requests per core.

mod gateway;
mod operator_process;
mod proc_stats;
mod stats;
mod tenants;
mod workflows;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "bizosaas-bench", about = "BizOSaaS benchmarks (ratios against a same-run baseline)")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Tenant provisioning: throughput, time to Ready, writes, idle writes, RSS and CPU.
    Tenants(tenants::Args),
    /// Workflow execution: writes per step, step-to-dependent delay, RSS and CPU.
    Workflows(workflows::Args),
    /// The gateway: latency it adds to a crew run request, and requests per core.
    Gateway(gateway::Args),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Tenants(args) => tenants::run(args).await,
        Command::Workflows(args) => workflows::run(args).await,
        Command::Gateway(args) => gateway::run(args).await,
    }
}
