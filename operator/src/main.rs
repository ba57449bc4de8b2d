//! `bizosaas-operator`: the BizOSaaS control plane.
//!
//! - `run` reconciles BizOSaaS resources against the cluster in the kubeconfig or the pod's
//!   in-cluster configuration, serving `/healthz`, `/readyz` and `/metrics`.
//! - `crd` prints (or writes) the CustomResourceDefinitions.
//! - `catalog` lists the built-in agents.
//! - `check` checks a running operator (what `helm test` runs).

mod catalog;
mod check;
mod http;
mod run;
mod telemetry;

use clap::{Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser)]
#[command(name = "bizosaas-operator", version, about = "BizOSaaS Kubernetes operator")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the controllers.
    Run(Box<run::RunArgs>),
    /// Print the CustomResourceDefinitions as YAML, or write one file per CRD into each --out-dir.
    Crd {
        /// Directory to write `<plural>.bizosaas.io.yaml` files and a kustomization.yaml into; repeatable.
        #[arg(long)]
        out_dir: Vec<PathBuf>,
    },
    /// Check that the operator served at URL (`http://host:port`) is ready and serves metrics.
    Check { url: String },
    /// List the built-in agent catalog.
    Catalog {
        /// Print the full entries as YAML instead of a table.
        #[arg(long)]
        yaml: bool,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Run(args) => {
            bound_malloc_arenas();
            let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            runtime.block_on(run::run(*args))
        }
        Command::Crd { out_dir } => write_crds(&out_dir),
        Command::Check { url } => {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            runtime.block_on(check::check(&url))
        }
        Command::Catalog { yaml } => {
            print!("{}", if yaml { catalog::yaml() } else { catalog::table() });
            Ok(())
        }
    }
}

fn write_crds(out_dirs: &[PathBuf]) -> anyhow::Result<()> {
    use bizosaas_crds::generate;
    if out_dirs.is_empty() {
        print!("{}", generate::all_yaml());
        return Ok(());
    }
    for dir in out_dirs {
        std::fs::create_dir_all(dir)?;
        for crd in generate::crds() {
            std::fs::write(dir.join(generate::file_name(&crd)), generate::to_yaml(&crd))?;
        }
        std::fs::write(dir.join("kustomization.yaml"), generate::kustomization())?;
    }
    Ok(())
}

/// glibc gives each thread that allocates an arena of its own, up to eight per core: memory a
/// reconcile freed on one thread is not reused by the next allocation on another, and the
/// operator's resident memory grows with the threads the runtime ever ran (its workers and the
/// blocking pool). Two arenas keep it close to what is live, and an operator that mostly waits
/// on the API server seldom allocates on many threads at once. An explicit `MALLOC_ARENA_MAX`
/// is left alone.
fn bound_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt only sets an allocator parameter; it runs before any other thread
        // is started.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 2);
        }
    }
}
