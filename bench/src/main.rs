//! `bizosaas-bench`: measures the operator against a bare client doing the same work with
//! the same concurrency in the same run, and prints each figure beside its baseline.
//!
//! `bizosaas-bench tenants --count 100` provisions tenants twice: once as a bare kube client
//! creating the children the Tenant builders produce (and the same PostgreSQL provisioning),
//! once through Tenant objects reconciled by the operator binary.

mod proc_stats;
mod tenants;

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
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Tenants(args) => tenants::run(args).await,
    }
}
