//! `bizosaas-agent`: the runtime that executes an AgentCrew.
//!
//! - `serve` reads the rendered crew and serves the run API, probes and metrics.
//! - `check` validates a crew file (and, with `--env`, that its credentials are set).
//! - `bench` measures what the runtime adds over calling the model server directly.
//! - `catalog` lists the built-in agents usable by name as template.

use bizosaas_agent::{bench, config, serve, telemetry};
use clap::{Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser)]
#[command(name = "bizosaas-agent", version, about = "BizOSaaS agent-crew runtime")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the run API for the crew in --config.
    Serve(Box<serve::ServeArgs>),
    /// Validate a crew file.
    Check {
        #[arg(long, env = "BIZOSAAS_CREW_CONFIG", default_value = "/etc/bizosaas/crew.json")]
        config: PathBuf,
        /// Also require the environment variables the crew names (API keys, credentials, DATABASE_URL).
        #[arg(long)]
        env: bool,
    },
    /// Measure the runtime's added latency per LLM call and per run, and its RSS.
    Bench(bench::BenchArgs),
    /// List the built-in agents.
    Catalog,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => {
            let mut telemetry = telemetry::init(args.log_format);
            let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            let served = runtime.block_on(serve::serve(*args));
            // The spans of the last runs are exported before the process exits.
            drop(runtime);
            telemetry.shutdown();
            served
        }
        Command::Check { config: path, env } => {
            let crew = config::load(&path)?;
            if env {
                let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
                runtime.block_on(async {
                    serve::build(crew.clone(), &|k| std::env::var(k).ok(), serve::RuntimeOptions::default()).map(|_| ())
                })?;
            }
            println!(
                "{}: crew {}/{} with {} agents is valid",
                path.display(),
                crew.namespace,
                crew.name,
                crew.agents.len()
            );
            Ok(())
        }
        Command::Bench(args) => {
            let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            runtime.block_on(bench::run(args))
        }
        Command::Catalog => {
            for (name, def) in bizosaas_crds::catalog::TEMPLATE_NAMES.iter().zip(bizosaas_crds::catalog::CATALOG.iter())
            {
                println!("{name:<22} {:<36} tools: {}", def.role, def.tools.join(", "));
            }
            Ok(())
        }
    }
}
